//! The plain HTTP routes and the CORS allowlist.

use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn health_and_info_answer() {
    let app = spawn_app().await;
    let http = reqwest::Client::new();
    let health = http.get(format!("http://{}/health", app.addr)).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let body: Value = health.json().await.unwrap();
    assert_eq!(body["status"], "ok");

    let _client = app.client(&user()).await;
    let info: Value = http.get(format!("http://{}/", app.addr)).send().await.unwrap().json().await.unwrap();
    assert_eq!(info, json!({ "name": "chatwire", "version": env!("CARGO_PKG_VERSION") }));
    let status: Value =
        http.get(format!("http://{}/v1/status", app.addr)).bearer_auth(token("ops")).send().await.unwrap().json().await.unwrap();
    assert_eq!(status, json!({ "connections": 1, "generations": 0 }));
}

#[tokio::test]
async fn cors_allows_only_listed_origins_with_credentials() {
    let app = spawn_app_with(&[("CORS_ORIGIN", "http://app.test,https://other.test")]).await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/socket.io/?EIO=4&transport=polling", app.addr);
    let allowed = http.get(&url).header("origin", "https://other.test").send().await.unwrap();
    assert_eq!(allowed.headers()["access-control-allow-origin"], "https://other.test");
    assert_eq!(allowed.headers()["access-control-allow-credentials"], "true");
    let denied = http.get(&url).header("origin", "http://evil.test").send().await.unwrap();
    assert!(denied.headers().get("access-control-allow-origin").is_none());
    let preflight = http
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "http://app.test")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.headers()["access-control-allow-origin"], "http://app.test");
}

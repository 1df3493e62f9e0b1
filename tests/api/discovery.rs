//! Discovery: `chat:providers` on `/ai` and `GET /v1/models`, listed models and models
//! discovered from a provider's `GET /models`, kept for `models_ttl_secs`.

use serde_json::{Value, json};

use crate::{
    helpers::*,
    providers::three,
    quirky_upstream::{Quirks, QuirkyUpstream},
};

async fn models_over_http(app: &TestApp, token: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new().get(format!("http://{}/v1/models", app.addr));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn chat_providers_lists_every_provider_with_its_bare_models_and_the_default() {
    let t = three("", &[]).await;
    let mut client = t.app.client(&user()).await;
    let ack = client.emit_with_ack("chat:providers", json!({})).await;
    let ids = |models: &[&str]| models.iter().map(|m| json!({ "id": m })).collect::<Vec<_>>();
    assert_eq!(
        ack,
        json!({ "ok": true, "providers": [
            { "id": "gem", "name": "Gemini-like", "default": false, "models": ids(&["gem-pro", "fail-503"]) },
            { "id": "mis", "name": "mis", "default": false, "models": ids(&["mis-large", "fail-503", "cut-after-2"]) },
            { "id": "orr", "name": "orr", "default": true, "models": ids(&["orr-1", "error-mid", "no-finish", "plain", "x-groq"]) },
        ]})
    );
    // Asked again within models_ttl_secs: the discovered list comes from the cache.
    client.emit_with_ack("chat:providers", json!({})).await;
    assert_eq!(t.gem.model_lists(), 1, "one discovery request");
    assert_eq!(t.mis.model_lists(), 0, "a listed provider is not asked");
}

#[tokio::test]
async fn a_discovered_list_is_asked_again_once_its_ttl_passed_and_an_unreachable_provider_lists_nothing() {
    let fresh = QuirkyUpstream::start("fresh", Quirks::default(), Some(vec!["f-1"])).await;
    let extra = format!(
        "[[providers]]\nname = \"fresh\"\nbase_url = \"{}\"\nmodels_ttl_secs = 0\n[[providers]]\nname = \"down\"\nbase_url = \"http://127.0.0.1:9/v1\"\n",
        fresh.base_url()
    );
    let t = three(&extra, &[]).await;
    let mut client = t.app.client(&user()).await;
    let ack = client.emit_with_ack("chat:providers", json!({})).await;
    assert_eq!(ack["providers"][3], json!({ "id": "fresh", "name": "fresh", "default": false, "models": [{ "id": "f-1" }] }));
    assert_eq!(ack["providers"][4], json!({ "id": "down", "name": "down", "default": false, "models": [] }));
    client.emit_with_ack("chat:providers", json!({})).await;
    assert_eq!((fresh.model_lists(), t.gem.model_lists()), (2, 1), "a TTL of 0 asks each time; 300 s keeps the list");
}

#[tokio::test]
async fn get_v1_models_is_the_openai_list_with_provider_prefixed_ids_behind_the_token() {
    let t = three("", &[]).await;
    assert_eq!(models_over_http(&t.app, None).await.0, 401);
    assert_eq!(models_over_http(&t.app, Some("not-a-token")).await.0, 401);
    let (status, body) = models_over_http(&t.app, Some(&token(&user()))).await;
    assert_eq!(status, 200);
    assert_eq!(body["object"], json!("list"));
    let ids: Vec<&str> = body["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "gem/gem-pro",
            "gem/fail-503",
            "mis/mis-large",
            "mis/fail-503",
            "mis/cut-after-2",
            "orr/orr-1",
            "orr/error-mid",
            "orr/no-finish",
            "orr/plain",
            "orr/x-groq"
        ]
    );
    assert_eq!(body["data"][0], json!({ "id": "gem/gem-pro", "object": "model", "created": 0, "owned_by": "gem" }));
}

#[tokio::test]
async fn the_built_in_mock_is_the_default_provider_with_nothing_configured() {
    let app = spawn_app().await;
    let mut client = app.client(&user()).await;
    let ack = client.emit_with_ack("chat:providers", json!({})).await;
    assert_eq!(ack, json!({ "ok": true, "providers": [{ "id": "mock", "name": "Mock", "default": true, "models": [{ "id": "gpt-4" }] }] }));
    let mut client = app.client(&user()).await;
    let started = client.emit_with_ack("chat:start", json!({ "message": "hi" })).await;
    let answer = read_answer(&mut client).await;
    assert_eq!((answer.final_data.get("provider"), answer.final_data["model"].as_str()), (None, Some("gpt-4")));
    let row = app.message(started["messageId"].as_str().unwrap()).await;
    assert_eq!((row.provider.as_deref(), row.model.as_deref()), (Some("mock"), Some("gpt-4")));
}

//! Database faults (PostgreSQL runs only): with the database cut off, clients get
//! `UNAVAILABLE`, the process keeps serving, and it recovers when the database returns.
//! A TCP proxy in front of PostgreSQL plays the failing network.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use serde_json::json;
use tokio::{net::TcpListener, task::JoinHandle};

use crate::helpers::*;

/// Forwards to PostgreSQL while up; when cut, drops every connection and refuses new ones.
pub struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Self { addr: listener.local_addr().unwrap(), up: Arc::new(AtomicBool::new(true)), links: Arc::default() };
        let (up, links) = (proxy.up.clone(), proxy.links.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused
                }
                let target = target.clone();
                links.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }));
            }
        });
        proxy
    }

    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// A server whose database connection goes through a proxy, or `None` on SQLite runs.
pub async fn app_behind_proxy(vars: &[(&str, &str)]) -> Option<(TestApp, Proxy)> {
    let url = fresh_postgres_database().await?;
    let rest = url.split_once("://").unwrap().1;
    let (credentials_host, path) = rest.split_once('/').unwrap();
    let (credentials, host) = credentials_host.rsplit_once('@').map_or(("", credentials_host), |(c, h)| (c, h));
    let proxy = Proxy::start(host.to_owned()).await;
    let at = if credentials.is_empty() { String::new() } else { format!("{credentials}@") };
    let proxied = format!("postgres://{at}{}/{path}", proxy.addr);
    let mut all = vec![("DATABASE_URL", proxied.as_str())];
    all.extend_from_slice(vars);
    Some((spawn_app_with(&all).await, proxy))
}

#[tokio::test]
async fn an_unreachable_database_is_unavailable_and_the_server_recovers() {
    let Some((app, proxy)) = app_behind_proxy(&[]).await else {
        eprintln!("skipped: needs DATABASE_URL=postgres://...");
        return;
    };
    let http = reqwest::Client::new();
    let mut client = app.client(&user()).await;
    client.emit("chat:start", json!({ "message": "before" })).await;
    assert_eq!(read_answer(&mut client).await.final_name, "chat:end");

    proxy.cut();
    let ack = client.emit_with_ack("chat:start", json!({ "message": "during" })).await;
    assert_eq!(ack["error"]["code"], "UNAVAILABLE");
    assert_eq!(client.next_event().await.1["code"], "UNAVAILABLE");
    let health = http.get(format!("http://{}/health", app.addr)).send().await.unwrap();
    assert_eq!(health.status(), 200, "liveness: restarting the process would not bring the database back");

    proxy.restore();
    let ack = client.emit_with_ack("chat:start", json!({ "message": "after" })).await;
    assert_eq!(ack["ok"], json!(true));
    let answer = read_answer(&mut client).await;
    assert_eq!(answer.final_name, "chat:end");
    let rows = app.messages(ack["conversationId"].as_str().unwrap()).await;
    assert_eq!((rows.len(), rows[1].content.as_str()), (2, ANSWER));
    let health = http.get(format!("http://{}/health", app.addr)).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn an_answer_whose_final_write_meets_a_short_outage_is_stored_when_the_database_returns() {
    let Some((app, proxy)) = app_behind_proxy(&[("MOCK_TOKEN_DELAY_MS", "30"), ("CHECKPOINT_INTERVAL_MS", "60000")]).await else {
        eprintln!("skipped: needs DATABASE_URL=postgres://...");
        return;
    };
    let mut client = app.client(&user()).await;
    let ack = client.emit_with_ack("chat:start", json!({ "message": "long" })).await;
    client.until("chat:message").await;
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(800)).await;
    proxy.restore();
    let answer = read_answer(&mut client).await;
    assert_eq!(answer.final_name, "chat:end");
    let row = app.message(ack["messageId"].as_str().unwrap()).await;
    assert_eq!((row.status.as_str(), row.content.as_str()), ("complete", ANSWER));
}

//! `GET /metrics`, scraped before and after what a test does and read with a Prometheus
//! text parser: each counter and histogram moves by exactly what happened, the gauges
//! count what is open now, and `METRICS_TOKEN` guards the scrape.

use std::time::Duration;

use prometheus_parse::{Sample, Scrape, Value as Metric};
use serde_json::{Value, json};

use crate::{
    fake_upstream::{FakeUpstream, Reply, TOKENS},
    helpers::*,
};

/// One parsed scrape.
pub(crate) struct Scraped(Scrape);

/// A histogram's count and sum (its buckets checked when read).
struct Histogram {
    count: f64,
    sum: f64,
}

impl Scraped {
    fn sample(&self, name: &str, labels: &[(&str, &str)]) -> Option<&Sample> {
        self.0.samples.iter().find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
    }

    /// A counter's or gauge's value; a labelled series not made yet is 0.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match self.sample(name, labels).map(|s| &s.value) {
            None => 0.0,
            Some(Metric::Counter(v) | Metric::Gauge(v) | Metric::Untyped(v)) => *v,
            Some(other) => panic!("{name} is not a counter or gauge: {other:?}"),
        }
    }

    pub(crate) fn counter(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        if let Some(s) = self.sample(name, labels) {
            assert!(matches!(s.value, Metric::Counter(_)), "{name} is typed counter: {:?}", s.value);
        }
        self.value(name, labels)
    }

    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let s = self.sample(name, labels).unwrap_or_else(|| panic!("{name} {labels:?} is in the scrape"));
        let Metric::Gauge(v) = s.value else { panic!("{name} is typed gauge: {:?}", s.value) };
        v
    }

    /// A real histogram (buckets, not quantiles), checked for consistency.
    fn histogram(&self, name: &str) -> Histogram {
        let s = self.sample(name, &[]).unwrap_or_else(|| panic!("{name} is in the scrape"));
        let Metric::Histogram(buckets) = &s.value else { panic!("{name} is a histogram: {:?}", s.value) };
        let mut buckets: Vec<(f64, f64)> = buckets.iter().map(|b| (b.less_than, b.count)).collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let count = self.value(&format!("{name}_count"), &[]);
        assert!(buckets.len() >= 8, "{name} has real buckets: {buckets:?}");
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{name}'s buckets are cumulative: {buckets:?}");
        assert_eq!(buckets.last().copied(), Some((f64::INFINITY, count)), "{name}: the +Inf bucket holds every observation");
        Histogram { count, sum: self.value(&format!("{name}_sum"), &[]) }
    }
}

pub(crate) async fn scrape(app: &TestApp) -> Scraped {
    let response = reqwest::get(format!("http://{}/metrics", app.addr)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    let text = response.text().await.unwrap();
    Scraped(Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("a Prometheus text scrape"))
}

/// Scrapes until `done` holds (the server counts what it sees a moment after the client).
async fn scrape_until(app: &TestApp, done: impl Fn(&Scraped) -> bool) -> Scraped {
    for _ in 0..200 {
        let scraped = scrape(app).await;
        if done(&scraped) {
            return scraped;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the metrics never got there");
}

/// The text of a scrape after one test chat, for the report: `cargo test --test api metrics -- --nocapture`.
async fn print_excerpt(app: &TestApp) {
    let text = reqwest::get(format!("http://{}/metrics", app.addr)).await.unwrap().text().await.unwrap();
    let excerpt: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && (!l.contains("_bucket") || l.contains("le=\"+Inf\"") || l.contains("le=\"0.1\"")))
        .collect();
    println!("--- /metrics after the test chats ---\n{}", excerpt.join("\n"));
}

/// The tokens of a slow answer, each its own word.
fn slow_tokens(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("w{i} ")).collect()
}

#[tokio::test]
async fn a_chat_a_stop_an_error_and_refusals_move_each_metric_by_exactly_what_happened() {
    let fake = FakeUpstream::start(vec![
        Reply::Answer(TOKENS.to_vec()),
        Reply::Slow(slow_tokens(200), 20),
        Reply::Status(500, "a"),
        Reply::Status(502, "b"),
        Reply::Status(500, "c"),
    ])
    .await;
    let app = spawn_app_with(&[
        ("OPENAI_BASE_URL", &fake.base_url()),
        ("OPENAI_API_KEY", "sk-test"),
        ("UPSTREAM_ATTEMPTS", "3"),
        ("UPSTREAM_RETRY_BASE_MS", "1"),
    ])
    .await;
    // Counted by the provider's id: OPENAI_BASE_URL is the `openai` shortcut.
    let upstream_errors = [("provider", "openai"), ("code", "UPSTREAM_ERROR")];
    let mut client = app.client(&user()).await;
    let before = scrape(&app).await;
    let (ttft, duration, queries) = (
        before.histogram("chatwire_ttft_seconds"),
        before.histogram("chatwire_answer_duration_seconds"),
        before.histogram("chatwire_db_query_seconds"),
    );

    // A whole answer of 4 tokens.
    client.emit("chat:start", json!({ "message": "hello" })).await;
    let answer = read_answer(&mut client).await;
    assert_eq!((answer.final_name.as_str(), answer.text()), ("chat:end", TOKENS.concat()));

    // A stopped one: its tokens are those of its stored partial text.
    let ack = client.emit_with_ack("chat:start", json!({ "message": "long" })).await;
    client.until("chat:message").await;
    let running = scrape(&app).await;
    assert_eq!(running.gauge("chatwire_answers_running", &[]), 1.0);
    let stop = client.emit_with_ack("chat:stop", json!({ "messageId": ack["messageId"] })).await;
    assert_eq!(stop["stopped"], json!(true));
    let stopped = read_answer(&mut client).await;
    assert_eq!(stopped.final_name, "chat:stopped");
    let partial_tokens = stopped.final_data["content"].as_str().unwrap().split_whitespace().count();
    assert!((1..200).contains(&partial_tokens), "{partial_tokens}");

    // A failed one: three failed attempts, one UPSTREAM_ERROR told.
    client.emit("chat:start", json!({ "message": "fail" })).await;
    let failed = read_answer(&mut client).await;
    assert_eq!((failed.final_name.as_str(), &failed.final_data["code"]), ("chat:error", &json!("UPSTREAM_ERROR")));
    assert_eq!(fake.hits(), 5);

    // Two refusals, one on each wire.
    let refused = client.emit_with_ack("chat:start", json!({ "message": "" })).await;
    assert_eq!(refused["error"]["code"], "INVALID_PAYLOAD");
    let sse = reqwest::Client::new()
        .post(format!("http://{}/v1/chat", app.addr))
        .bearer_auth(token(&user()))
        .json(&json!({ "message": 42 }))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 400);

    let after = scrape_until(&app, |s| s.gauge("chatwire_answers_running", &[]) == 0.0).await;
    let moved = |name: &str, labels: &[(&str, &str)]| after.counter(name, labels) - before.counter(name, labels);
    assert_eq!(moved("chatwire_answers_total", &[("status", "complete")]), 1.0);
    assert_eq!(moved("chatwire_answers_total", &[("status", "stopped")]), 1.0);
    assert_eq!(moved("chatwire_answers_total", &[("status", "error")]), 1.0);
    assert_eq!(moved("chatwire_tokens_streamed_total", &[]), (TOKENS.len() + partial_tokens) as f64);
    assert_eq!(moved("chatwire_upstream_errors_total", &upstream_errors), 3.0, "two retried attempts and the last");
    assert_eq!(moved("chatwire_chat_errors_total", &[("code", "UPSTREAM_ERROR")]), 1.0);
    assert_eq!(moved("chatwire_chat_errors_total", &[("code", "INVALID_PAYLOAD")]), 2.0, "the /ai refusal and the SSE one");
    assert_eq!(after.counter("chatwire_redis_commands_total", &[]), 0.0, "no cluster mode");

    let (ttft_after, duration_after) = (after.histogram("chatwire_ttft_seconds"), after.histogram("chatwire_answer_duration_seconds"));
    assert_eq!(ttft_after.count - ttft.count, 2.0, "the complete and the stopped answer had a first token");
    assert_eq!(duration_after.count - duration.count, 3.0, "every answer has a duration, stopped and failed ones too");
    assert!(ttft_after.sum > ttft.sum && duration_after.sum - duration.sum >= ttft_after.sum - ttft.sum);
    let queries_after = after.histogram("chatwire_db_query_seconds");
    assert!(queries_after.count - queries.count >= 6.0, "each answer's turn and final row are timed");
    assert!(queries_after.sum > queries.sum);
    print_excerpt(&app).await;
}

#[tokio::test]
async fn gauges_count_open_connections_by_wire_and_running_answers() {
    let app = spawn_app_with(&[("MOCK_TOKEN_DELAY_MS", "50")]).await;
    let idle = scrape(&app).await;
    assert_eq!(idle.gauge("chatwire_connections", &[("wire", "socketio")]), 0.0);
    assert_eq!(idle.gauge("chatwire_connections", &[("wire", "sse")]), 0.0);
    assert_eq!(idle.gauge("chatwire_answers_running", &[]), 0.0);

    let mut client = app.client(&user()).await;
    let ack = client.emit_with_ack("chat:start", json!({ "message": "socket" })).await;
    client.until("chat:message").await;
    let sse_user = user();
    let mut sse = reqwest::Client::new()
        .post(format!("http://{}/v1/chat", app.addr))
        .bearer_auth(token(&sse_user))
        .json(&json!({ "message": "sse" }))
        .send()
        .await
        .unwrap();
    let mut head = String::new();
    while !head.contains("event: chat:message") {
        head.push_str(&String::from_utf8_lossy(&sse.chunk().await.unwrap().expect("the SSE answer streams")));
    }
    let busy = scrape(&app).await;
    assert_eq!(busy.gauge("chatwire_connections", &[("wire", "socketio")]), 1.0);
    assert_eq!(busy.gauge("chatwire_connections", &[("wire", "sse")]), 1.0);
    assert_eq!(busy.gauge("chatwire_answers_running", &[]), 2.0);

    let ack_data: Value = serde_json::from_str(head.lines().find_map(|l| l.strip_prefix("data: ")).unwrap()).unwrap();
    let stop = reqwest::Client::new()
        .post(format!("http://{}/v1/answers/{}/stop", app.addr, ack_data["messageId"].as_str().unwrap()))
        .bearer_auth(token(&sse_user))
        .send()
        .await
        .unwrap();
    assert_eq!(stop.status(), 200);
    while sse.chunk().await.unwrap().is_some() {}
    client.emit_with_ack("chat:stop", json!({ "messageId": ack["messageId"] })).await;
    assert_eq!(read_answer(&mut client).await.final_name, "chat:stopped");
    client.close().await;
    let quiet = |s: &Scraped| {
        s.gauge("chatwire_connections", &[("wire", "socketio")]) == 0.0
            && s.gauge("chatwire_connections", &[("wire", "sse")]) == 0.0
            && s.gauge("chatwire_answers_running", &[]) == 0.0
    };
    scrape_until(&app, quiet).await;
    // The runtime-lag probe wakes four times a second.
    let lag = scrape_until(&app, |s| s.histogram("chatwire_runtime_lag_seconds").count >= 1.0).await;
    assert!(lag.histogram("chatwire_runtime_lag_seconds").sum >= 0.0);
}

#[tokio::test]
async fn with_metrics_token_set_only_its_bearer_may_scrape() {
    let app = spawn_app_with(&[("METRICS_TOKEN", "scrape-me-0123456789")]).await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/metrics", app.addr);
    let refusals = [
        http.get(&url).send().await.unwrap(),
        http.get(&url).bearer_auth("scrape-me-012345678").send().await.unwrap(),
        http.get(&url).bearer_auth("scrape-me-0123456789x").send().await.unwrap(),
        http.get(&url).header("authorization", "Basic scrape-me-0123456789").send().await.unwrap(),
        http.get(&url).bearer_auth(token("ops")).send().await.unwrap(),
    ];
    for refused in refusals {
        assert_eq!(refused.status(), 401);
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body, json!({ "ok": false, "error": { "code": "UNAUTHORIZED", "message": "unauthorized" } }));
    }
    let allowed = http.get(&url).bearer_auth("scrape-me-0123456789").send().await.unwrap();
    assert_eq!(allowed.status(), 200);
    assert!(allowed.text().await.unwrap().contains("# TYPE chatwire_answers_total counter"));
    let any_case = http.get(&url).header("authorization", "bearer scrape-me-0123456789").send().await.unwrap();
    assert_eq!(any_case.status(), 200);
}

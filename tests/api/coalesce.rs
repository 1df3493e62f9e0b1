//! Adaptive coalescing, by frame counts against the text: on an idle node each delta
//! is its own `chat:message`; while the node is busy (here: half of
//! `OVERLOAD_MAX_RUNNING` answers run) an answer's deltas within `STREAM_COALESCE_MAX_MS`
//! leave as one frame, and the text is the same.

use serde_json::json;

use crate::{
    fake_upstream::{FakeUpstream, Reply},
    helpers::*,
};

fn words(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("w{i} ")).collect()
}

#[tokio::test]
async fn idle_each_delta_is_a_frame_and_busy_the_deltas_of_a_window_are_one() {
    let (few, many) = (words(10), words(60));
    let script = vec![Reply::Slow(few.clone(), 25), Reply::SilentAfter(vec!["held "]), Reply::Slow(many.clone(), 2)];
    let fake = FakeUpstream::start(script).await;
    let app = spawn_app_with(&[
        ("OPENAI_BASE_URL", &fake.base_url()),
        ("OPENAI_API_KEY", "sk-test"),
        ("OVERLOAD_MAX_RUNNING", "4"),
        ("STREAM_COALESCE_MAX_MS", "300"),
        // Busy by the running answers alone: a loaded test machine's lag does not count.
        ("OVERLOAD_LAG_MS", "0"),
    ])
    .await;
    let mut client = app.client(&user()).await;

    // Idle (one answer runs): ten deltas, ten frames.
    let ack = client.emit_with_ack("chat:start", json!({ "message": "few" })).await;
    let idle = read_answer(&mut client).await;
    assert_chunks_consistent(&idle.chunks, &ack["messageId"], &ack["conversationId"]);
    assert_eq!((idle.text(), idle.chunks.len()), (few.concat(), 10));

    // Busy: another answer is held running, so two of the four run.
    let mut holder = app.client(&user()).await;
    holder.emit_with_ack("chat:start", json!({ "message": "hold" })).await;
    let (held, _) = holder.until("chat:message").await;
    assert_eq!(held["content"], "held ");
    let ack = client.emit_with_ack("chat:start", json!({ "message": "many" })).await;
    let busy = read_answer(&mut client).await;
    assert_chunks_consistent(&busy.chunks, &ack["messageId"], &ack["conversationId"]);
    assert_eq!((busy.final_name.as_str(), busy.text()), ("chat:end", many.concat()));
    assert_eq!(app.message(ack["messageId"].as_str().unwrap()).await.content, many.concat());
    eprintln!("60 deltas 2 ms apart while busy: {} frames", busy.chunks.len());
    assert!(busy.chunks.len() <= 10, "60 deltas 2 ms apart in 300 ms windows: {} frames", busy.chunks.len());
}

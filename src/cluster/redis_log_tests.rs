//! The Redis log against a real Redis (`TEST_REDIS_URL`, default the local one): the
//! behaviours every log shares, with the writer on one node and the readers on another,
//! then what only the cluster's log does. Without Redis these are skipped, except under
//! `CI=true`, where a missing Redis fails them.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::*;
use crate::cluster::log_contract_tests::{self as contract, ending, read_to_end, settled};

/// Two nodes' logs on one Redis, or `None` (skip) when no Redis answers outside CI.
async fn two_nodes() -> Option<(Arc<RedisLogs>, Arc<RedisLogs>, Redis, CancellationToken)> {
    let url = std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let redis = Redis::open(&url).expect("a redis URL");
    if !redis.reachable().await {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI needs Redis at {url}");
        eprintln!("skipped: no Redis at {url}");
        return None;
    }
    let shutdown = CancellationToken::new();
    let node = |_| Arc::new(RedisLogs::new(redis.clone(), 1024, Duration::from_millis(20), shutdown.clone()).unwrap());
    Some((node(1), node(2), redis, shutdown))
}

#[tokio::test]
async fn every_reader_reads_its_rest_then_the_final_entry_on_its_own_node_and_on_another() {
    let Some((a, b, _, _stop)) = two_nodes().await else {
        return;
    };
    contract::every_reader_reads_its_rest_then_the_final_entry(a.as_ref(), b.as_ref()).await;
    contract::every_reader_reads_its_rest_then_the_final_entry(a.as_ref(), a.as_ref()).await;
}

#[tokio::test]
async fn a_reader_on_another_node_attached_mid_answer_sees_no_gap_and_no_duplicate() {
    let Some((a, b, _, _stop)) = two_nodes().await else {
        return;
    };
    contract::a_reader_attached_mid_answer_sees_no_gap_and_no_duplicate(a.clone(), b.as_ref()).await;
    contract::a_reader_attached_mid_answer_sees_no_gap_and_no_duplicate(a.clone(), a.as_ref()).await;
}

#[tokio::test]
async fn the_length_is_what_readers_on_another_node_can_read() {
    let Some((a, b, _, _stop)) = two_nodes().await else {
        return;
    };
    contract::the_length_is_what_readers_can_read(a.as_ref(), b.as_ref()).await;
}

#[tokio::test]
async fn appends_are_batched_so_redis_sees_far_fewer_commands_than_tokens() {
    let Some((a, b, _, _stop)) = two_nodes().await else {
        return;
    };
    let id = Uuid::now_v7();
    let mut writer = a.create(id);
    let mut remote = b.open(id, 0).await.unwrap();
    let before = a.appends();
    let tokens = 1000;
    let mut whole = String::new();
    for i in 0..tokens {
        let token = format!("t{i} ");
        whole.push_str(&token);
        writer.append(&token);
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    writer.finish(ending(&whole, Final::Stopped));
    let (read, end) = read_to_end(remote.as_mut(), 0).await;
    assert_eq!((read.as_str(), end.content.as_str()), (whole.as_str(), whole.as_str()));
    let appends = a.appends() - before;
    eprintln!("{tokens} tokens, {appends} appends: {:.3} per token", appends as f64 / tokens as f64);
    assert!(appends * 4 < tokens, "{appends} appends for {tokens} tokens");
}

/// Runs the append script as a writer would.
async fn append(redis: &Redis, id: Uuid, from: u64, text: &str, last: Option<&Final>) -> (i64, u64) {
    let script = redis::Script::new(APPEND);
    let mut call = script.key(keys::log(id));
    let end = from + text::utf16_len(text);
    call.arg(from).arg(end).arg(text).arg(last.map(encode_final).unwrap_or_default()).arg(1024).arg(60_000).arg(3_600_000);
    call.invoke_async(&mut redis.conn()).await.unwrap()
}

#[tokio::test]
async fn an_append_at_any_other_offset_than_the_end_is_refused() {
    let Some((_, _, redis, _stop)) = two_nodes().await else {
        return;
    };
    let id = Uuid::now_v7();
    assert_eq!(append(&redis, id, 0, "abc", None).await, (1, 3));
    assert_eq!(append(&redis, id, 0, "abc", None).await, (0, 3), "a duplicate");
    assert_eq!(append(&redis, id, 5, "xyz", None).await, (0, 3), "a gap");
    assert_eq!(append(&redis, id, 3, "d", Some(&Final::Stopped)).await, (1, 4));
    assert_eq!(append(&redis, id, 4, "e", None).await, (-1, 4), "after the final entry");
    let entries: i64 = redis.query(redis::cmd("XLEN").arg(keys::log(id))).await.unwrap();
    assert_eq!(entries, 2);
    let ttl: i64 = redis.query(redis::cmd("PTTL").arg(keys::log(id))).await.unwrap();
    assert!(ttl > 0 && ttl <= 60_000, "an ended stream expires: {ttl}");
}

#[tokio::test]
async fn another_node_ends_a_dead_nodes_answer_with_all_the_text_in_redis() {
    let Some((a, b, redis, _stop)) = two_nodes().await else {
        return;
    };
    let id = Uuid::now_v7();
    // What a node that died mid-answer left behind.
    append(&redis, id, 0, "half an ", None).await;
    append(&redis, id, 8, "answer 😀", None).await;
    let mut waiting = a.open(id, 3).await.unwrap();
    let mut adopted = b.adopt(id).await.expect("a log without its final entry is adopted");
    assert_eq!(adopted.text(), "half an answer 😀");
    let failed = Final::Failed(ChatError::new(ErrorCode::Unavailable, "gone"));
    adopted.finish(ending("half an answer 😀", failed.clone()));
    drop(adopted);
    let (read, end) = read_to_end(waiting.as_mut(), 3).await;
    assert_eq!(read, "f an answer 😀", "a reader waiting elsewhere reads on to the end");
    assert_eq!((end.outcome.clone(), end.content.as_str()), (failed, "half an answer 😀"));
    settled(a.as_ref(), id, 17).await;
    assert!(b.adopt(id).await.is_none(), "an ended log is not adopted again");
}

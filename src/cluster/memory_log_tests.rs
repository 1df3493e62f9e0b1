//! The log's hard cases, under tokio's paused time.

use std::{sync::Arc, time::Duration};

use uuid::Uuid;

use super::*;
use crate::chat::{ChatError, ErrorCode, Final};

fn ending(content: &str, outcome: Final) -> Ending {
    Ending { outcome, content: content.to_owned(), length: text::utf16_len(content) }
}

async fn text_of(entry: Option<Entry>) -> (String, u64, u64) {
    match entry {
        Some(Entry::Text { text, offset, end }) => (text, offset, end),
        other => panic!("expected text, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn readers_at_different_offsets_read_their_own_rest() {
    let logs = MemoryLogs::default();
    let id = Uuid::now_v7();
    let mut writer = logs.create(id);
    assert_eq!(writer.append("Hello, "), 7);
    assert_eq!(writer.append("world"), 12);
    let mut from_start = logs.open(id, 0).await.unwrap();
    let mut from_middle = logs.open(id, 7).await.unwrap();
    let mut at_end = logs.open(id, 12).await.unwrap();
    assert_eq!(text_of(from_start.next(1024).await).await, ("Hello, world".into(), 0, 12));
    assert_eq!(text_of(from_middle.next(1024).await).await, ("world".into(), 7, 12));
    assert!(at_end.try_next(1024).is_none(), "nothing to read yet at the end");
    writer.append("!");
    assert_eq!(text_of(at_end.next(1024).await).await, ("!".into(), 12, 13));
    assert_eq!(logs.length(id).await, Some(13));
}

#[tokio::test(start_paused = true)]
async fn a_reader_that_stalls_catches_up_with_the_joined_text() {
    let logs = MemoryLogs::default();
    let id = Uuid::now_v7();
    let mut writer = logs.create(id);
    let mut reader = logs.open(id, 0).await.unwrap();
    writer.append("a");
    assert_eq!(text_of(reader.next(1024).await).await, ("a".into(), 0, 1));
    for word in ["b", "c", "d", "e"] {
        writer.append(word);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(text_of(reader.next(1024).await).await, ("bcde".into(), 1, 5), "one read, everything since, joined");
    // A frame limit splits the joined text on character boundaries, in order.
    writer.append("fg😀h");
    assert_eq!(text_of(reader.next(3).await).await, ("fg".into(), 5, 7));
    assert_eq!(text_of(reader.next(3).await).await, ("😀".into(), 7, 9), "never half a character");
    assert_eq!(text_of(reader.next(3).await).await, ("h".into(), 9, 10));
}

#[tokio::test(start_paused = true)]
async fn an_offset_inside_a_surrogate_pair_moves_back_to_its_start() {
    let logs = MemoryLogs::default();
    let id = Uuid::now_v7();
    let mut writer = logs.create(id);
    writer.append("a😀b");
    let mut reader = logs.open(id, 2).await.unwrap();
    assert_eq!(reader.offset(), 1, "offset 2 is inside the emoji's surrogate pair");
    assert_eq!(text_of(reader.next(1024).await).await, ("😀b".into(), 1, 4));
    let past = logs.open(id, 99).await.unwrap();
    assert_eq!(past.offset(), 4, "clamped to the text");
}

#[tokio::test(start_paused = true)]
async fn the_final_entry_comes_after_all_text_and_ends_the_reader() {
    let logs = MemoryLogs::default();
    let id = Uuid::now_v7();
    let mut writer = logs.create(id);
    let mut reader = logs.open(id, 0).await.unwrap();
    writer.append("partial");
    let stopped = ending("partial", Final::Stopped);
    writer.finish(stopped.clone());
    assert_eq!(writer.append(" more"), 7, "appends after the end are ignored");
    writer.finish(ending("other", Final::Failed(ChatError::code(ErrorCode::Internal))));
    assert_eq!(text_of(reader.next(1024).await).await, ("partial".into(), 0, 7));
    match reader.next(1024).await {
        Some(Entry::Final(e)) => assert_eq!(*e, stopped, "exactly one final entry, the first"),
        other => panic!("expected the final entry, got {other:?}"),
    }
    assert!(reader.next(1024).await.is_none());
    // A reader attached after the end, while the log is still open, reads it whole.
    let mut late = logs.open(id, 3).await.unwrap();
    assert_eq!(text_of(late.next(1024).await).await, ("tial".into(), 3, 7));
    assert!(matches!(late.next(1024).await, Some(Entry::Final(_))));
}

#[tokio::test(start_paused = true)]
async fn a_waiting_reader_can_be_cancelled_and_others_go_on() {
    let logs = Arc::new(MemoryLogs::default());
    let id = Uuid::now_v7();
    let mut writer = logs.create(id);
    let mut waiting = logs.open(id, 0).await.unwrap();
    let waiter = tokio::spawn(async move { waiting.next(1024).await });
    tokio::time::sleep(Duration::from_millis(5)).await;
    waiter.abort();
    assert!(waiter.await.unwrap_err().is_cancelled());
    let mut other = logs.open(id, 0).await.unwrap();
    writer.append("x");
    assert_eq!(text_of(other.next(1024).await).await, ("x".into(), 0, 1));
}

#[tokio::test(start_paused = true)]
async fn memory_is_released_when_the_generation_and_the_last_reader_are_gone() {
    let logs = MemoryLogs::default();
    let id = Uuid::now_v7();
    let mut writer = logs.create(id);
    let mut reader = logs.open(id, 0).await.unwrap();
    writer.append("text");
    writer.finish(ending("text", Final::Stopped));
    drop(writer);
    assert_eq!(logs.open_logs(), 0, "the log leaves the directory with its writer");
    assert!(logs.open(id, 0).await.is_none(), "later readers read the stored row instead");
    assert_eq!(text_of(reader.next(1024).await).await, ("text".into(), 0, 4), "a reader already attached reads on");
    let Some(Entry::Final(e)) = reader.next(1024).await else { panic!("expected the final entry") };
    let weak = Arc::downgrade(&e);
    drop(e);
    assert!(weak.upgrade().is_some(), "the reader still holds the log");
    drop(reader);
    assert!(weak.upgrade().is_none(), "the last reader gone, the text is freed");
}

#[tokio::test(start_paused = true)]
async fn a_generation_that_dies_without_a_final_entry_fails_its_readers() {
    let logs = MemoryLogs::default();
    let id = Uuid::now_v7();
    let mut writer = logs.create(id);
    let mut reader = logs.open(id, 0).await.unwrap();
    writer.append("half");
    drop(writer);
    assert_eq!(text_of(reader.next(1024).await).await, ("half".into(), 0, 4));
    match reader.next(1024).await {
        Some(Entry::Final(e)) => {
            assert_eq!(e.outcome, Final::Failed(ChatError::code(ErrorCode::Internal)));
            assert_eq!(e.content, "half");
        }
        other => panic!("expected a failed final entry, got {other:?}"),
    }
}

mod contract {
    //! The behaviours every log implementation shares, on one node.
    use std::sync::Arc;

    use super::MemoryLogs;
    use crate::cluster::log_contract_tests as contract;

    #[tokio::test(start_paused = true)]
    async fn every_reader_reads_its_rest_then_the_final_entry() {
        let logs = MemoryLogs::default();
        contract::every_reader_reads_its_rest_then_the_final_entry(&logs, &logs).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_attached_mid_answer_sees_no_gap_and_no_duplicate() {
        let logs = Arc::new(MemoryLogs::default());
        contract::a_reader_attached_mid_answer_sees_no_gap_and_no_duplicate(logs.clone(), logs.as_ref()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_length_is_what_readers_can_read() {
        let logs = MemoryLogs::default();
        contract::the_length_is_what_readers_can_read(&logs, &logs).await;
    }
}

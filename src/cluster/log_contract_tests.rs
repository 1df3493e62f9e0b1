//! What every implementation of the answer log must do, written once: each function
//! takes the logs a writer appends to and the logs a reader reads from (the same ones on
//! one node; two nodes' in a cluster).

use std::{sync::Arc, time::Duration};

use uuid::Uuid;

use super::log::{AnswerLogs, Ending, Entry, LogReader};
use crate::chat::{ChatError, ErrorCode, Final, text};

pub(super) fn ending(content: &str, outcome: Final) -> Ending {
    Ending { outcome, content: content.to_owned(), length: text::utf16_len(content) }
}

/// Reads to the final entry: the text read (checked for no gap, no overlap) and the ending.
pub(super) async fn read_to_end(reader: &mut dyn LogReader, from: u64) -> (String, Arc<Ending>) {
    let mut read = String::new();
    let mut expected = from;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), reader.next(1024)).await.expect("the log went silent") {
            Some(Entry::Text { text, offset, end }) => {
                assert_eq!(offset, expected, "no gap, no overlap");
                assert_eq!(end, offset + text::utf16_len(&text));
                expected = end;
                read.push_str(&text);
            }
            Some(Entry::Final(e)) => return (read, e),
            None => panic!("the log ended without its final entry"),
        }
    }
}

/// Readers at any offset (inside a surrogate pair, past the end) read exactly their rest,
/// then the one final entry, whose content is the whole answer.
pub(super) async fn every_reader_reads_its_rest_then_the_final_entry(w: &dyn AnswerLogs, r: &dyn AnswerLogs) {
    let id = Uuid::now_v7();
    let mut writer = w.create(id);
    assert_eq!(writer.append("Hello, "), 7);
    assert_eq!(writer.append("world 😀"), 15);
    settled(r, id, 15).await;
    let mut from_start = r.open(id, 0).await.expect("a running log opens");
    let mut in_pair = r.open(id, 14).await.unwrap();
    let mut past = r.open(id, 99).await.unwrap();
    assert_eq!(in_pair.offset(), 13, "offset 14 is inside the emoji: moved back to its start");
    assert!(past.offset() <= 15, "clamped to the text");
    writer.append("!");
    let whole = "Hello, world 😀!";
    let stopped = ending(whole, Final::Stopped);
    writer.finish(stopped.clone());
    assert_eq!(writer.append(" more"), 16, "appends after the end are ignored");
    assert_eq!(writer.text(), whole, "the writer still gives the whole text");
    writer.finish(ending("other", Final::Failed(ChatError::code(ErrorCode::Internal))));
    let (read, end) = read_to_end(from_start.as_mut(), 0).await;
    assert_eq!((read.as_str(), &*end), (whole, &stopped), "the whole text, then exactly one final entry, the first");
    assert!(from_start.next(1024).await.is_none(), "nothing after the final entry");
    assert_eq!(read_to_end(in_pair.as_mut(), 13).await.0, "😀!");
    let at = past.offset();
    let rest = String::from_utf16_lossy(&whole.encode_utf16().skip(at as usize).collect::<Vec<_>>());
    assert_eq!(read_to_end(past.as_mut(), at).await.0, rest);
}

/// Waits until readers of `r` can read `length` units of the answer (at once in memory;
/// once the append reached Redis in a cluster).
pub(super) async fn settled(r: &dyn AnswerLogs, id: Uuid, length: u64) {
    for _ in 0..1000 {
        if r.length(id).await == Some(length) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the log never reached {length}");
}

/// A reader that attaches while appends are under way reads exactly the rest.
pub(super) async fn a_reader_attached_mid_answer_sees_no_gap_and_no_duplicate(w: Arc<dyn AnswerLogs>, r: &dyn AnswerLogs) {
    let id = Uuid::now_v7();
    let mut writer = w.create(id);
    let words: Vec<String> = (0..200).map(|i| format!("w{i} ")).collect();
    let whole = words.concat();
    let appending = tokio::spawn({
        let words = words.clone();
        async move {
            for word in &words {
                writer.append(word);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            writer.finish(ending(&words.concat(), Final::Stopped));
        }
    });
    tokio::time::sleep(Duration::from_millis(57)).await;
    let attach_at = r.length(id).await.expect("the running answer's length");
    let mut reader = r.open(id, attach_at).await.unwrap();
    assert_eq!(reader.offset(), attach_at);
    let (read, end) = read_to_end(reader.as_mut(), attach_at).await;
    assert_eq!(end.content, whole);
    assert_eq!(read, whole[attach_at as usize..], "exactly the rest");
    appending.await.unwrap();
}

/// The length of a running answer follows its appends as readers see them.
pub(super) async fn the_length_is_what_readers_can_read(w: &dyn AnswerLogs, r: &dyn AnswerLogs) {
    let id = Uuid::now_v7();
    let mut writer = w.create(id);
    writer.append("abc");
    settled(r, id, 3).await;
    let mut reader = r.open(id, 0).await.unwrap();
    let mut read = String::new();
    while read.len() < 3 {
        if let Some(Entry::Text { text, .. }) = reader.next(1024).await {
            read.push_str(&text);
        }
    }
    assert_eq!(r.length(id).await, Some(3));
    writer.finish(ending("abc", Final::Stopped));
    assert!(matches!(reader.next(1024).await, Some(Entry::Final(_))));
}

//! Answer logs in this process's memory: one `watch` channel per answer holding the
//! text. Appending wakes the readers; each copies out what it has not read yet.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use async_trait::async_trait;
use tokio::sync::watch;
use uuid::Uuid;

use super::log::{AnswerLogs, Ending, Entry, LogReader, LogWriter};
use crate::chat::{ChatError, ErrorCode, Final, text};

/// One answer's log (also what a node mirrors of an answer running on another node).
#[derive(Default)]
pub(super) struct LogState {
    pub(super) text: String,
    /// UTF-16 length of `text`.
    pub(super) length: u64,
    pub(super) ending: Option<Arc<Ending>>,
}

/// The running answers' logs, by message id. A log leaves the map when its writer is
/// dropped; the memory goes when the last reader is gone too.
#[derive(Default)]
pub struct MemoryLogs {
    logs: Arc<Mutex<HashMap<Uuid, watch::Receiver<LogState>>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Entries are inserted and removed whole; a poisoned map is still consistent.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MemoryLogs {
    /// How many logs are open (for tests: it empties when answers end).
    pub fn open_logs(&self) -> usize {
        lock(&self.logs).len()
    }

    fn receiver(&self, message_id: Uuid) -> Option<watch::Receiver<LogState>> {
        lock(&self.logs).get(&message_id).cloned()
    }
}

#[async_trait]
impl AnswerLogs for MemoryLogs {
    fn create(&self, message_id: Uuid) -> Box<dyn LogWriter> {
        let (tx, rx) = watch::channel(LogState::default());
        lock(&self.logs).insert(message_id, rx);
        Box::new(MemoryWriter { tx, message_id, logs: self.logs.clone() })
    }

    async fn open(&self, message_id: Uuid, offset: u64) -> Option<Box<dyn LogReader>> {
        Some(Box::new(MemoryReader::new(self.receiver(message_id)?, offset)))
    }

    async fn length(&self, message_id: Uuid) -> Option<u64> {
        self.receiver(message_id).map(|rx| rx.borrow().length)
    }
}

struct MemoryWriter {
    tx: watch::Sender<LogState>,
    message_id: Uuid,
    logs: Arc<Mutex<HashMap<Uuid, watch::Receiver<LogState>>>>,
}

impl LogWriter for MemoryWriter {
    fn append(&mut self, delta: &str) -> u64 {
        let mut length = 0;
        self.tx.send_if_modified(|log| {
            if log.ending.is_some() || delta.is_empty() {
                length = log.length;
                return false;
            }
            log.text.push_str(delta);
            log.length += text::utf16_len(delta);
            length = log.length;
            true
        });
        length
    }

    fn length(&self) -> u64 {
        self.tx.borrow().length
    }

    fn text(&self) -> String {
        current_text(&self.tx.borrow()).to_owned()
    }

    fn finish(&mut self, ending: Ending) {
        self.tx.send_if_modified(|log| {
            if log.ending.is_some() {
                return false;
            }
            // The text lives on in the ending only.
            log.text = String::new();
            log.ending = Some(Arc::new(ending));
            true
        });
    }
}

impl Drop for MemoryWriter {
    fn drop(&mut self) {
        lock(&self.logs).remove(&self.message_id);
    }
}

/// A reader's place in one log.
pub(super) struct MemoryReader {
    rx: watch::Receiver<LogState>,
    /// Bytes of the text already read.
    byte: usize,
    /// The same in UTF-16 units.
    offset: u64,
    done: bool,
}

impl MemoryReader {
    pub(super) fn new(rx: watch::Receiver<LogState>, offset: u64) -> Self {
        let (byte, offset) = {
            let log = rx.borrow();
            text::byte_index(current_text(&log), offset)
        };
        Self { rx, byte, offset, done: false }
    }

    /// What is there to read now, if anything.
    fn read(&mut self, max_bytes: usize) -> Option<Entry> {
        if self.done {
            return None;
        }
        let log = self.rx.borrow_and_update();
        let text = current_text(&log);
        if text.len() > self.byte {
            let chunk = text::prefix_within(&text[self.byte..], max_bytes).to_owned();
            let offset = self.offset;
            self.byte += chunk.len();
            self.offset += text::utf16_len(&chunk);
            return Some(Entry::Text { text: chunk, offset, end: self.offset });
        }
        let ending = log.ending.clone()?;
        drop(log);
        self.done = true;
        Some(Entry::Final(ending))
    }
}

/// The log's text: once ended, it lives in the ending.
fn current_text(log: &LogState) -> &str {
    log.ending.as_ref().map_or(&log.text, |e| &e.content)
}

#[async_trait]
impl LogReader for MemoryReader {
    async fn next(&mut self, max_bytes: usize) -> Option<Entry> {
        loop {
            if let Some(entry) = self.read(max_bytes) {
                return Some(entry);
            }
            if self.done {
                return None;
            }
            if self.rx.changed().await.is_err() {
                // The writer is gone. Whatever it appended last is still to be read.
                if let Some(entry) = self.read(max_bytes) {
                    return Some(entry);
                }
                if self.done {
                    return None;
                }
                // Gone without a final entry: its generation died (a panic).
                self.done = true;
                let content = current_text(&self.rx.borrow()).to_owned();
                let length = text::utf16_len(&content);
                let outcome = Final::Failed(ChatError::code(ErrorCode::Internal));
                return Some(Entry::Final(Arc::new(Ending { outcome, content, length })));
            }
        }
    }

    fn try_next(&mut self, max_bytes: usize) -> Option<Entry> {
        self.read(max_bytes)
    }

    fn offset(&self) -> u64 {
        self.offset
    }
}

#[cfg(test)]
#[path = "memory_log_tests.rs"]
mod tests;

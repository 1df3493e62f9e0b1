//! The answer as an ordered log: deltas, then exactly one final entry. Readers read at
//! their own offset (UTF-16 units); one that fell behind gets the joined text on its next
//! read, so the generation never waits for a reader and the text is held once.

use std::sync::Arc;

use async_trait::async_trait;
use uuid::Uuid;

use crate::chat::Final;

/// How an answer ended, with the whole answer: the log's last entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ending {
    pub outcome: Final,
    /// The whole answer, exactly as stored.
    pub content: String,
    /// Its UTF-16 length.
    pub length: u64,
}

/// What a reader reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// Text from UTF-16 offset `offset` up to `end`.
    Text { text: String, offset: u64, end: u64 },
    /// The last entry; nothing follows.
    Final(Arc<Ending>),
}

/// The one writer of an answer's log: its generation.
pub trait LogWriter: Send + Sync {
    /// Appends a delta and returns the answer's UTF-16 length after it.
    fn append(&mut self, delta: &str) -> u64;
    /// The answer's UTF-16 length so far.
    fn length(&self) -> u64;
    /// A copy of the whole text so far (for checkpoints and the final row).
    fn text(&self) -> String;
    /// Appends the final entry. Later appends are ignored.
    fn finish(&mut self, ending: Ending);
}

/// One reader of one answer, at its own offset.
#[async_trait]
pub trait LogReader: Send + Sync {
    /// Waits for the next entry: the text since the last read, joined, of at most
    /// `max_bytes` (at least one character), or, once caught up, the final entry. `None`
    /// after the final entry, or when the log ended without one and nothing more exists.
    async fn next(&mut self, max_bytes: usize) -> Option<Entry>;
    /// The same without waiting: `None` when nothing is there yet.
    fn try_next(&mut self, max_bytes: usize) -> Option<Entry>;
    /// The UTF-16 offset of the next read.
    fn offset(&self) -> u64;
}

/// The logs of the answers running now.
#[async_trait]
pub trait AnswerLogs: Send + Sync {
    /// Creates the log of a new answer and gives its writer. The log is readable until
    /// the writer is dropped; readers already attached keep reading to its end.
    fn create(&self, message_id: Uuid) -> Box<dyn LogWriter>;
    /// A reader of a running answer from `offset` (clamped to the text and to a character
    /// boundary; see [`LogReader::offset`]). `None` when no log of that answer is running.
    async fn open(&self, message_id: Uuid, offset: u64) -> Option<Box<dyn LogReader>>;
    /// The UTF-16 length of a running answer so far.
    async fn length(&self, message_id: Uuid) -> Option<u64>;
    /// A writer that goes on with the log of an answer whose node died, holding the text
    /// that reached the log, so another node can end it. `None` when the log has ended
    /// already, or cannot be read (and always in one process).
    async fn adopt(&self, _message_id: Uuid) -> Option<Box<dyn LogWriter>> {
        None
    }
}

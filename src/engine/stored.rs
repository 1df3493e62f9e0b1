//! A reader over a stored answer: what comes after its end reads the row, through the
//! same [`LogReader`] as a running answer's log, so its events are built the same way.

use std::sync::Arc;

use async_trait::async_trait;

use crate::{
    chat::text,
    cluster::{Ending, Entry, LogReader},
    store::StoredAnswer,
};

/// The rest of a stored answer from an offset, then its final entry.
pub struct StoredReader {
    content: String,
    /// Bytes already read, and the same in UTF-16 units.
    byte: usize,
    offset: u64,
    /// `None` for a row still `streaming`: its checkpointed text is all there is. The
    /// engine gives such a row, one no generation here runs, the interrupted ending.
    ending: Option<Arc<Ending>>,
}

impl StoredReader {
    /// Reads `answer` from `offset`, clamped to its text and to a character boundary.
    pub fn new(answer: StoredAnswer, offset: u64) -> Self {
        let (byte, offset) = text::byte_index(&answer.content, offset);
        let ending = answer.ending.map(|outcome| {
            let length = text::utf16_len(&answer.content);
            Arc::new(Ending { outcome, content: answer.content.clone(), length })
        });
        Self { content: answer.content, byte, offset, ending }
    }
}

#[async_trait]
impl LogReader for StoredReader {
    async fn next(&mut self, max_bytes: usize) -> Option<Entry> {
        self.try_next(max_bytes)
    }

    fn try_next(&mut self, max_bytes: usize) -> Option<Entry> {
        if self.byte < self.content.len() {
            let chunk = text::prefix_within(&self.content[self.byte..], max_bytes).to_owned();
            let offset = self.offset;
            self.byte += chunk.len();
            self.offset += text::utf16_len(&chunk);
            return Some(Entry::Text { text: chunk, offset, end: self.offset });
        }
        self.ending.take().map(Entry::Final)
    }

    fn offset(&self) -> u64 {
        self.offset
    }
}

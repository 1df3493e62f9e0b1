//! The domain, with no I/O: error codes, the start command, what an answer is and how
//! it ends, the text offsets every wire counts in, and how a title is asked for.

pub mod answer;
pub mod attachments;
pub mod command;
pub mod embed;
pub mod error;
pub mod json;
pub mod text;
pub mod title;

pub use answer::{AnswerIds, ConnectionId, Final, HistoryMessage, Status, StopReason, Usage};
pub use command::{Branch, StartCommand};
pub use error::{ChatError, ErrorCode};

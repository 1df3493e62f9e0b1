//! The domain, with no I/O: error codes, the start command, what an answer is and how
//! it ends, and the text offsets every wire counts in.

pub mod answer;
pub mod command;
pub mod embed;
pub mod error;
pub mod json;
pub mod text;

pub use answer::{AnswerIds, ConnectionId, Final, HistoryMessage, Status, StopReason, Usage};
pub use command::{Branch, StartCommand};
pub use error::{ChatError, ErrorCode};

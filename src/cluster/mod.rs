//! Where running answers live: each answer's ordered log, and the directory of running
//! answers (who runs what, the per-connection and per-user claims, stop requests).
//!
//! Both sit behind traits so that another implementation (Redis Streams, pub/sub and
//! node leases in cluster mode) drops in: an append returns its offset, a reader starts
//! at any offset, and nothing assumes that a reader and its generation share a process.
//! The in-memory implementations serve one node.

mod directory;
mod log;
mod memory_directory;
mod memory_log;

pub use directory::{Claim, ClaimRefused, Directory, Registration, RunningAnswer, StopHandle};
pub use log::{AnswerLogs, Ending, Entry, LogReader, LogWriter};
pub use memory_directory::MemoryDirectory;
pub use memory_log::MemoryLogs;

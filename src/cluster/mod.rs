//! Where running answers live: each answer's ordered log, and the directory of running
//! answers (who runs what, the per-connection and per-user claims, stop requests).
//!
//! Both sit behind traits so that another implementation (Redis Streams, pub/sub and
//! node leases in cluster mode) drops in: an append returns its offset, a reader starts
//! at any offset, and nothing assumes that a reader and its generation share a process.
//! The in-memory implementations serve one node; the Redis ones (`redis_*`) a cluster.

mod directory;
mod log;
#[cfg(test)]
mod log_contract_tests;
mod memory_directory;
mod memory_log;
mod redis_conn;
mod redis_directory;
mod redis_log;
mod redis_mirror;
mod redis_nodes;

pub use directory::{Claim, ClaimRefused, Directory, Orphan, Registration, RunningAnswer, StopHandle};
pub use log::{AnswerLogs, Ending, Entry, LogReader, LogWriter};
pub use memory_directory::MemoryDirectory;
pub use memory_log::MemoryLogs;
pub use redis_conn::{Redis, instance_name};
pub use redis_directory::RedisDirectory;
pub use redis_log::RedisLogs;

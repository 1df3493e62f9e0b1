//! The directory of running answers: which answers run, whose they are, which
//! connection started them, and the claims that enforce one answer per connection and
//! a per-user limit. Stop requests go through it to wherever the answer runs.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use futures::stream::BoxStream;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::chat::{AnswerIds, ConnectionId, StopReason};

/// A running answer, as the directory lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningAnswer {
    pub ids: AnswerIds,
    pub user_id: String,
    /// The connection that started it.
    pub connection: ConnectionId,
}

/// How a generation is told to stop; the first reason given wins.
#[derive(Debug, Default)]
pub struct StopHandle {
    cancel: CancellationToken,
    reason: OnceLock<StopReason>,
}

impl StopHandle {
    /// Asks the generation to stop.
    pub fn stop(&self, reason: StopReason) {
        let _ = self.reason.set(reason);
        self.cancel.cancel();
    }

    /// Resolves once a stop was asked for.
    pub fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }

    /// Why it was stopped (`User` if no reason was recorded).
    pub fn reason(&self) -> StopReason {
        self.reason.get().copied().unwrap_or(StopReason::User)
    }
}

/// Why a claim was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimRefused {
    /// This connection already runs an answer (or is storing its start).
    Busy,
    /// The user runs as many answers as allowed.
    UserLimit,
    /// The cluster's shared state cannot be reached.
    Unavailable,
}

/// An answer whose node died: the node that adopted it ends it, then drops `done`, which
/// takes it out of the directory.
pub struct Orphan {
    pub answer: RunningAnswer,
    pub done: Guard,
}

/// A guard that undoes something in the directory when dropped, whatever ends its
/// owner: a normal end, an early return, or a panic unwinding its task.
pub struct Guard(Option<Box<dyn FnOnce() + Send + Sync>>);

impl Guard {
    /// Runs `release` when dropped.
    pub fn new(release: impl FnOnce() + Send + Sync + 'static) -> Self {
        Self(Some(Box::new(release)))
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(release) = self.0.take() {
            release();
        }
    }
}

/// A connection's right to run one answer, counted against its user's limit.
pub type Claim = Guard;
/// An answer's place in the directory; dropping it removes the answer.
pub type Registration = Guard;

/// The answers `starts` hears of that start in `conversation_id` (a follower that fell
/// behind skips some: it re-lists on its next follow).
pub(super) fn started_in(
    starts: tokio::sync::broadcast::Receiver<RunningAnswer>,
    conversation_id: Uuid,
) -> BoxStream<'static, RunningAnswer> {
    use futures::StreamExt;
    use tokio::sync::broadcast::error::RecvError;
    futures::stream::unfold(starts, |mut starts| async move {
        loop {
            match starts.recv().await {
                Ok(answer) => return Some((answer, starts)),
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return None,
            }
        }
    })
    .filter(move |a| std::future::ready(a.ids.conversation_id == conversation_id))
    .boxed()
}

/// The directory of running answers.
#[async_trait]
pub trait Directory: Send + Sync {
    /// Claims `connection` for a new answer of `user`, who may run at most `limit` at once.
    async fn claim(&self, connection: &ConnectionId, user: &str, limit: usize) -> Result<Claim, ClaimRefused>;
    /// Lists a running answer until the returned registration is dropped.
    async fn register(&self, answer: RunningAnswer, stop: Arc<StopHandle>) -> Registration;
    /// A running answer by message id.
    async fn get(&self, message_id: Uuid) -> Option<RunningAnswer>;
    /// The running answers of `user`, oldest first.
    async fn of_user(&self, user: &str) -> Vec<RunningAnswer>;
    /// The answer a connection is running, if any.
    async fn of_connection(&self, connection: &ConnectionId) -> Option<RunningAnswer>;
    /// Asks a running answer to stop. False when it does not run.
    async fn stop(&self, message_id: Uuid, reason: StopReason) -> bool;
    /// The conversation's running answer(s), then each answer started in it later.
    fn follow(&self, conversation_id: Uuid) -> BoxStream<'static, RunningAnswer>;
    /// Answers running in this process.
    fn local_count(&self) -> usize;
    /// Users holding a claim in this process (for tests: it empties when they finish).
    fn local_users(&self) -> usize;
    /// Stops every answer running in this process.
    fn stop_local(&self, reason: StopReason);
    /// Waits until no answer runs in this process, or `limit` passes. True when none runs.
    async fn wait_local_empty(&self, limit: std::time::Duration) -> bool;
    /// Takes one of `user`'s `per_minute` starts from the bucket all nodes share (0: no
    /// limit). Always true in one process, whose engine keeps its own bucket.
    async fn allow_start(&self, _user: &str, _per_minute: u32) -> Result<bool, ClaimRefused> {
        Ok(true)
    }
    /// Answers of dead nodes for this node to end, as they are found. `None` in one process.
    fn orphans(&self) -> Option<BoxStream<'static, Orphan>> {
        None
    }
    /// Whether the shared state answers now; `None` in one process.
    async fn shared_state_ok(&self) -> Option<bool> {
        None
    }

    /// Publishes this node's summary (JSON, for operators' views) to the other nodes.
    async fn publish_node_summary(&self, _summary: String) {}

    /// The summaries other nodes published within `fresh` (this node's excluded); none in
    /// one process.
    async fn node_summaries(&self, _fresh: std::time::Duration) -> Vec<String> {
        Vec::new()
    }
}

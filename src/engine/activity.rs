//! What the engine counts for operators: tokens streamed, answers that failed and starts
//! it refused since start-up, and each running answer's progress. The admin view lists
//! the running answers, samples the counters every second and stops answers through
//! [`Engine::stop_as_operator`].
//!
//! A running answer costs one map entry; a token, two relaxed atomic additions.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use uuid::Uuid;

use super::Engine;
use crate::chat::{AnswerIds, StopReason};

/// The counters since start-up, and the answers running now.
#[derive(Default)]
pub(crate) struct Activity {
    tokens: AtomicU64,
    failed: AtomicU64,
    refused: AtomicU64,
    running: Mutex<HashMap<Uuid, Arc<Progress>>>,
}

/// One running answer, shared by its generation and the listing.
struct Progress {
    ids: AnswerIds,
    user_id: String,
    model: String,
    started_at: SystemTime,
    started: Instant,
    tokens: AtomicU64,
}

/// The engine's counters since start-up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Text pieces streamed by the upstream (a token each, as OpenAI-compatible servers send them).
    pub tokens: u64,
    /// Answers that ended with an error.
    pub failed: u64,
    /// Starts the engine refused (limits, bad ids, the database).
    pub refused: u64,
}

/// A running answer as operators see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningAnswerInfo {
    pub ids: AnswerIds,
    pub user_id: String,
    pub model: String,
    /// Tokens streamed so far.
    pub tokens: u64,
    pub started_at: SystemTime,
    pub age: Duration,
}

impl Activity {
    fn answers(&self) -> MutexGuard<'_, HashMap<Uuid, Arc<Progress>>> {
        // Entries go in and out whole; a poisoned map is still consistent.
        self.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Lists an answer until the returned guard is dropped.
    pub(super) fn track(self: &Arc<Self>, ids: AnswerIds, user_id: &str, model: &str) -> Tracked {
        let progress = Arc::new(Progress {
            ids,
            user_id: user_id.to_owned(),
            model: model.to_owned(),
            started_at: SystemTime::now(),
            started: Instant::now(),
            tokens: AtomicU64::new(0),
        });
        self.answers().insert(ids.message_id, progress.clone());
        Tracked { activity: self.clone(), progress }
    }

    pub(super) fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }
}

/// A running answer's place in the listing; dropping it removes the answer.
pub(super) struct Tracked {
    activity: Arc<Activity>,
    progress: Arc<Progress>,
}

impl Tracked {
    /// Counts tokens the answer received.
    pub(super) fn add_tokens(&self, tokens: u64) {
        if tokens > 0 {
            self.progress.tokens.fetch_add(tokens, Ordering::Relaxed);
            self.activity.tokens.fetch_add(tokens, Ordering::Relaxed);
        }
    }

    /// Takes the answer off the listing (its row is final); dropping does it too.
    pub(super) fn end(&self) {
        self.activity.answers().remove(&self.progress.ids.message_id);
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.end();
    }
}

impl Engine {
    /// The counters since start-up.
    pub fn totals(&self) -> Totals {
        let activity = &self.0.activity;
        Totals {
            tokens: activity.tokens.load(Ordering::Relaxed),
            failed: activity.failed.load(Ordering::Relaxed),
            refused: activity.refused.load(Ordering::Relaxed),
        }
    }

    /// Every answer running in this process, oldest first.
    pub fn running_answers(&self) -> Vec<RunningAnswerInfo> {
        let mut answers: Vec<_> = self
            .0
            .activity
            .answers()
            .values()
            .map(|p| RunningAnswerInfo {
                ids: p.ids,
                user_id: p.user_id.clone(),
                model: p.model.clone(),
                tokens: p.tokens.load(Ordering::Relaxed),
                started_at: p.started_at,
                age: p.started.elapsed(),
            })
            .collect();
        answers.sort_by_key(|a| (a.started_at, a.ids.message_id));
        answers
    }

    /// Stops an answer whoever it belongs to, as its owner's `chat:stop` would: stored as
    /// `stopped`, its readers get `chat:stopped`. False when it does not run.
    pub async fn stop_as_operator(&self, message_id: Uuid) -> bool {
        self.0.directory.stop(message_id, StopReason::User).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_listed_with_its_tokens_until_its_guard_drops() {
        let activity = Arc::new(Activity::default());
        let ids = AnswerIds { message_id: Uuid::now_v7(), conversation_id: Uuid::now_v7() };
        let tracked = activity.track(ids, "u", "gpt-4");
        tracked.add_tokens(3);
        tracked.add_tokens(0);
        let listed = activity.answers().get(&ids.message_id).map(|p| p.tokens.load(Ordering::Relaxed));
        assert_eq!(listed, Some(3));
        drop(tracked);
        assert!(activity.answers().is_empty());
        assert_eq!(activity.tokens.load(Ordering::Relaxed), 3, "the total keeps what the answer streamed");
    }
}

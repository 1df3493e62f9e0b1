//! The directory of running answers for one process.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use async_trait::async_trait;
use futures::{StreamExt, stream::BoxStream};
use tokio::sync::{Notify, broadcast};
use uuid::Uuid;

use super::directory::{Claim, ClaimRefused, Directory, Guard, Registration, RunningAnswer, StopHandle};
use crate::chat::{ConnectionId, StopReason};

/// Answer starts queued for slow followers before they skip some (they re-list then).
const STARTS_BUFFER: usize = 256;

/// Every running answer of this process, and which connection runs which.
pub struct MemoryDirectory {
    inner: Arc<Mutex<Inner>>,
    /// Notified whenever an answer ends, for shutdown to wait on.
    ended: Arc<Notify>,
    /// Each registered answer, for followers.
    starts: broadcast::Sender<RunningAnswer>,
}

#[derive(Default)]
struct Inner {
    answers: HashMap<Uuid, (RunningAnswer, Arc<StopHandle>)>,
    /// A connection's running answer; `None` while its start is being stored.
    connections: HashMap<ConnectionId, Option<Uuid>>,
    /// Claims held per user; users with none are removed.
    per_user: HashMap<String, usize>,
}

impl Default for MemoryDirectory {
    fn default() -> Self {
        Self { inner: Arc::default(), ended: Arc::default(), starts: broadcast::channel(STARTS_BUFFER).0 }
    }
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // A panic while holding this lock cannot leave the maps inconsistent; keep serving.
    inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MemoryDirectory {
    /// Every answer running here, and the claims each user holds here (for a cluster
    /// node to list them again in a Redis that lost them).
    pub(super) fn snapshot(&self) -> (Vec<RunningAnswer>, Vec<(String, usize)>) {
        let inner = lock(&self.inner);
        let answers = inner.answers.values().map(|(a, _)| a.clone()).collect();
        (answers, inner.per_user.iter().map(|(u, n)| (u.clone(), *n)).collect())
    }

    fn running_in(&self, conversation_id: Uuid) -> Vec<RunningAnswer> {
        let mut found: Vec<_> =
            lock(&self.inner).answers.values().map(|(a, _)| a.clone()).filter(|a| a.ids.conversation_id == conversation_id).collect();
        found.sort_by_key(|a| a.ids.message_id);
        found
    }
}

#[async_trait]
impl Directory for MemoryDirectory {
    async fn claim(&self, connection: &ConnectionId, user: &str, limit: usize) -> Result<Claim, ClaimRefused> {
        let mut inner = lock(&self.inner);
        if inner.connections.contains_key(connection) {
            return Err(ClaimRefused::Busy);
        }
        let running = inner.per_user.get(user).copied().unwrap_or(0);
        if running >= limit {
            return Err(ClaimRefused::UserLimit);
        }
        inner.per_user.insert(user.to_owned(), running + 1);
        inner.connections.insert(connection.clone(), None);
        let (map, connection, user) = (self.inner.clone(), connection.clone(), user.to_owned());
        Ok(Guard::new(move || {
            let mut inner = lock(&map);
            inner.connections.remove(&connection);
            if let Some(n) = inner.per_user.get_mut(&user) {
                *n -= 1;
                if *n == 0 {
                    inner.per_user.remove(&user);
                }
            }
        }))
    }

    async fn register(&self, answer: RunningAnswer, stop: Arc<StopHandle>) -> Registration {
        let message_id = answer.ids.message_id;
        {
            let mut inner = lock(&self.inner);
            if let Some(slot) = inner.connections.get_mut(&answer.connection) {
                *slot = Some(message_id);
            }
            inner.answers.insert(message_id, (answer.clone(), stop));
        }
        // Nobody following is fine.
        let _ = self.starts.send(answer);
        let (map, ended) = (self.inner.clone(), self.ended.clone());
        Guard::new(move || {
            lock(&map).answers.remove(&message_id);
            ended.notify_waiters();
        })
    }

    async fn get(&self, message_id: Uuid) -> Option<RunningAnswer> {
        lock(&self.inner).answers.get(&message_id).map(|(a, _)| a.clone())
    }

    async fn of_user(&self, user: &str) -> Vec<RunningAnswer> {
        let mut found: Vec<_> = lock(&self.inner).answers.values().map(|(a, _)| a).filter(|a| a.user_id == user).cloned().collect();
        found.sort_by_key(|a| a.ids.message_id);
        found
    }

    async fn of_connection(&self, connection: &ConnectionId) -> Option<RunningAnswer> {
        let inner = lock(&self.inner);
        let id = (*inner.connections.get(connection)?)?;
        inner.answers.get(&id).map(|(a, _)| a.clone())
    }

    async fn stop(&self, message_id: Uuid, reason: StopReason) -> bool {
        let handle = lock(&self.inner).answers.get(&message_id).map(|(_, h)| h.clone());
        handle.map(|h| h.stop(reason)).is_some()
    }

    fn follow(&self, conversation_id: Uuid) -> BoxStream<'static, RunningAnswer> {
        // Subscribed before listing: an answer registered in between is seen (twice at
        // worst), never missed.
        let starts = self.starts.subscribe();
        let now = self.running_in(conversation_id);
        let later = super::directory::started_in(starts, conversation_id);
        futures::stream::iter(now).chain(later).boxed()
    }

    fn local_count(&self) -> usize {
        lock(&self.inner).answers.len()
    }

    fn local_users(&self) -> usize {
        lock(&self.inner).per_user.len()
    }

    fn stop_local(&self, reason: StopReason) {
        for (_, handle) in lock(&self.inner).answers.values() {
            handle.stop(reason);
        }
    }

    async fn wait_local_empty(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let ended = self.ended.notified();
            if self.local_count() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                return self.local_count() == 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::AnswerIds;

    fn answer(conversation_id: Uuid, connection: &ConnectionId) -> RunningAnswer {
        RunningAnswer {
            ids: AnswerIds { message_id: Uuid::now_v7(), conversation_id },
            user_id: "u".into(),
            connection: connection.clone(),
        }
    }

    #[tokio::test]
    async fn a_generation_that_panics_still_leaves_the_directory() {
        let directory = Arc::new(MemoryDirectory::default());
        let connection = ConnectionId::new("test", 1);
        let claim = directory.claim(&connection, "u", 3).await.unwrap();
        let registration = directory.register(answer(Uuid::now_v7(), &connection), Arc::default()).await;
        assert_eq!((directory.local_count(), directory.local_users()), (1, 1));
        let task = tokio::spawn(async move {
            let _held = (claim, registration);
            panic!("a bug in a generation");
        });
        assert!(task.await.unwrap_err().is_panic());
        assert_eq!((directory.local_count(), directory.local_users()), (0, 0));
        assert!(directory.of_connection(&connection).await.is_none());
        assert!(directory.claim(&connection, "u", 1).await.is_ok(), "the connection is free again");
    }

    #[tokio::test]
    async fn claims_are_one_per_connection_and_limited_per_user() {
        let directory = MemoryDirectory::default();
        let (a, b, c) = (ConnectionId::new("t", "a"), ConnectionId::new("t", "b"), ConnectionId::new("t", "c"));
        let _first = directory.claim(&a, "u", 2).await.unwrap();
        assert_eq!(directory.claim(&a, "u", 2).await.err(), Some(ClaimRefused::Busy));
        let _second = directory.claim(&b, "u", 2).await.unwrap();
        assert_eq!(directory.claim(&c, "u", 2).await.err(), Some(ClaimRefused::UserLimit));
        assert!(directory.claim(&c, "someone else", 2).await.is_ok());
    }

    #[tokio::test]
    async fn followers_see_the_running_answer_then_later_ones_of_that_conversation_only() {
        let directory = MemoryDirectory::default();
        let (conversation, other) = (Uuid::now_v7(), Uuid::now_v7());
        let connection = ConnectionId::new("t", 1);
        let first = answer(conversation, &connection);
        let _r1 = directory.register(first.clone(), Arc::default()).await;
        let mut follow = directory.follow(conversation);
        let _r2 = directory.register(answer(other, &connection), Arc::default()).await;
        let third = answer(conversation, &connection);
        let _r3 = directory.register(third.clone(), Arc::default()).await;
        assert_eq!(follow.next().await, Some(first));
        assert_eq!(follow.next().await, Some(third));
    }
}

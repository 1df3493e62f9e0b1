//! Checkpoints of streaming answers, written together.
//!
//! Every running generation offers its text four times per `CHECKPOINT_INTERVAL_MS`
//! (an offer replaces the last one, so that costs a copy of the text, no write); one
//! writer, once per interval, stores the newest text of each answer in one transaction.
//! A text is thus stored at most 1¼ intervals (plus the write) after it arrived. With
//! hundreds of answers streaming that is one commit per interval instead of hundreds,
//! and `chat:start`s are not kept waiting behind them for the database.
//!
//! A batch the database refuses is written again row by row, so one text it will not
//! take (a permanent error) is dropped alone and every other answer's is stored.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::store;

/// How often a generation offers its text: a quarter of the writer's interval.
pub(crate) fn offer_every(interval: Duration) -> Duration {
    (interval / 4).max(Duration::from_millis(1))
}

/// Texts waiting for the next round, the newest per answer.
#[derive(Default)]
pub struct Checkpoints {
    pending: Mutex<HashMap<Uuid, String>>,
}

impl Checkpoints {
    fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, String>> {
        // Only whole entries are ever inserted or taken; a poisoned map is still consistent.
        self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `text` as the answer's checkpoint, replacing an older one not yet written.
    pub fn offer(&self, message_id: Uuid, text: String) {
        self.lock().insert(message_id, text);
    }

    /// Drops the answer's pending checkpoint: its final row is being written.
    pub fn forget(&self, message_id: Uuid) {
        self.lock().remove(&message_id);
    }

    /// Answers with a checkpoint waiting (for tests).
    pub fn pending(&self) -> usize {
        self.lock().len()
    }

    /// Writes what is pending now in one transaction and gives how many texts were
    /// stored. When the database cannot be reached the batch is put back (unless a newer
    /// text came meanwhile) for the next round, and the error returned. When it refuses
    /// the batch otherwise, each text is written on its own: the ones it refuses for good
    /// are dropped (and logged), the others stored.
    pub async fn write_pending(&self, db: &DatabaseConnection) -> Result<usize, sea_orm::DbErr> {
        let batch: Vec<(Uuid, String)> = std::mem::take(&mut *self.lock()).into_iter().collect();
        if batch.is_empty() {
            return Ok(0);
        }
        let refused = match store::checkpoint_answers(db, &batch).await {
            Ok(()) => return Ok(batch.len()),
            Err(e) if store::is_transient(&e) => {
                self.put_back(batch);
                return Err(e);
            }
            Err(e) => e,
        };
        tracing::warn!(error = %refused, answers = batch.len(), "a checkpoint batch was refused; writing it row by row");
        let mut written = 0;
        let mut unreachable = None;
        let mut retry = Vec::new();
        for (id, text) in batch {
            let one = [(id, text)];
            match store::checkpoint_answers(db, &one).await {
                Ok(()) => written += 1,
                Err(e) if store::is_transient(&e) => {
                    retry.extend(one);
                    unreachable = Some(e);
                }
                Err(e) => {
                    tracing::error!(message_id = %id, error = %e, "the database refused an answer's checkpoint; dropped")
                }
            }
        }
        self.put_back(retry);
        match unreachable {
            Some(e) if written == 0 => Err(e),
            _ => Ok(written),
        }
    }

    /// Queues texts again for the next round, unless a newer one came meanwhile.
    fn put_back(&self, texts: Vec<(Uuid, String)>) {
        let mut pending = self.lock();
        for (id, text) in texts {
            pending.entry(id).or_insert(text);
        }
    }

    /// Runs the writer: a round every `interval`, until `shutdown`.
    pub fn spawn_writer(self: &Arc<Self>, db: DatabaseConnection, interval: Duration, shutdown: CancellationToken) {
        let checkpoints = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut rounds = tokio::time::interval(interval);
            rounds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = rounds.tick() => {}
                    _ = shutdown.cancelled() => return,
                }
                let Some(checkpoints) = checkpoints.upgrade() else {
                    return;
                };
                if let Err(e) = checkpoints.write_pending(&db).await {
                    tracing::warn!(error = %e, "writing checkpoints failed; retrying next round");
                }
            }
        });
    }
}

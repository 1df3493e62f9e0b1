//! Checkpoints of streaming answers, written together.
//!
//! Every running generation offers its text once per `CHECKPOINT_INTERVAL_MS`; one
//! writer stores all the texts offered since its last round in one transaction. With
//! hundreds of answers streaming that is one commit per interval instead of hundreds,
//! and `chat:start`s are not kept waiting behind them for the database.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::store;

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

    /// Writes what is pending now in one transaction. A batch that fails is put back
    /// (unless a newer text came meanwhile), so the next round tries it again.
    pub async fn write_pending(&self, db: &DatabaseConnection) -> Result<usize, sea_orm::DbErr> {
        let batch: Vec<(Uuid, String)> = std::mem::take(&mut *self.lock()).into_iter().collect();
        if batch.is_empty() {
            return Ok(0);
        }
        match store::checkpoint_answers(db, &batch).await {
            Ok(()) => Ok(batch.len()),
            Err(e) => {
                let mut pending = self.lock();
                for (id, text) in batch {
                    pending.entry(id).or_insert(text);
                }
                Err(e)
            }
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
                let Some(checkpoints) = checkpoints.upgrade() else { return };
                if let Err(e) = checkpoints.write_pending(&db).await {
                    tracing::warn!(error = %e, "writing checkpoints failed; retrying next round");
                }
            }
        });
    }
}

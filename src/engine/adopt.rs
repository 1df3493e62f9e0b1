//! Answers of a node that died, ended by this one: the text that reached the answer's
//! log is stored with status `error` and `UNAVAILABLE`, then the final entry is
//! appended, so its readers on every node end exactly as the row reads.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::Parts;
use crate::{
    chat::{ChatError, ErrorCode, Final, text},
    cluster::{Ending, Orphan},
    store,
};

/// How often storing an adopted answer is tried before it is left to the stale sweep.
const ATTEMPTS: u32 = 5;

/// Ends the orphans the directory finds, until `shutdown` (in a cluster only).
pub(super) fn spawn(parts: Arc<Parts>, shutdown: CancellationToken) {
    let Some(mut orphans) = parts.directory.orphans() else { return };
    tokio::spawn(async move {
        loop {
            let orphan = tokio::select! {
                o = orphans.next() => o,
                _ = shutdown.cancelled() => return,
            };
            let Some(orphan) = orphan else { return };
            let parts = parts.clone();
            tokio::spawn(async move { close(&parts, orphan).await });
        }
    });
}

async fn close(parts: &Parts, orphan: Orphan) {
    let id = orphan.answer.ids.message_id;
    // `None`: its log has ended already (or cannot be read; the next round tries again).
    let Some(mut writer) = parts.logs.adopt(id).await else { return drop(orphan.done) };
    let content = writer.text();
    for attempt in 0..ATTEMPTS {
        match store::fail_interrupted(&parts.db, id, &content).await {
            Ok(_) => break,
            // Past the last attempt the stale sweep stores it from its last checkpoint.
            Err(e) => {
                tracing::error!(message_id = %id, attempt, error = %e, "storing an adopted answer failed");
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
        }
    }
    let outcome =
        Final::Failed(ChatError::new(ErrorCode::Unavailable, "the node running this answer stopped; the partial answer is stored"));
    let length = text::utf16_len(&content);
    tracing::warn!(message_id = %id, length, "an answer of a dead node was closed");
    writer.finish(Ending { outcome, content, length });
    drop(writer);
    drop(orphan.done);
}

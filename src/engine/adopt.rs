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
    let Some(mut orphans) = parts.directory.orphans() else {
        return;
    };
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
    let Some(mut writer) = parts.logs.adopt(id).await else {
        return drop(orphan.done);
    };
    let content = writer.text();
    let mut failed_here = true;
    for attempt in 0..ATTEMPTS {
        match store::fail_interrupted(&parts.db, id, &content).await {
            Ok(rows) => {
                failed_here = rows > 0;
                break;
            }
            // Past the last attempt the stale sweep stores it from its last checkpoint.
            Err(e) => {
                tracing::error!(message_id = %id, attempt, error = %e, "storing an adopted answer failed");
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
        }
    }
    if !failed_here {
        // The row ended before this node got to it (its node finished it, then was cut
        // off from Redis before the log's final entry got there): the log ends as the row.
        return end_as_stored(parts, writer, orphan).await;
    }
    let outcome =
        Final::Failed(ChatError::new(ErrorCode::Unavailable, "the node running this answer stopped; the partial answer is stored"));
    let length = text::utf16_len(&content);
    tracing::warn!(message_id = %id, length, "an answer of a dead node was closed");
    writer.finish(Ending { outcome, content, length });
    drop(writer);
    drop(orphan.done);
}

/// Ends an adopted log with its row's own ending and text, when the row has one.
async fn end_as_stored(parts: &Parts, mut writer: Box<dyn crate::cluster::LogWriter>, orphan: Orphan) {
    let id = orphan.answer.ids.message_id;
    match store::find_answer_by_id(&parts.db, id).await {
        Ok(Some(store::StoredAnswer { ending: Some(outcome), content, .. })) => {
            // The log holds a prefix of the row's text: it gets the rest first.
            if let Some(rest) = content.strip_prefix(writer.text().as_str()) {
                writer.append(rest);
            }
            let length = text::utf16_len(&content);
            tracing::info!(message_id = %id, length, "an adopted answer had ended in its row; its log ends the same way");
            writer.finish(Ending { outcome, content, length });
        }
        Ok(_) => {
            tracing::warn!(message_id = %id, "an adopted answer's row is gone or still streaming; its log is left open")
        }
        Err(e) => {
            tracing::error!(message_id = %id, error = %e, "reading an adopted answer's row failed")
        }
    }
    drop(writer);
    drop(orphan.done);
}

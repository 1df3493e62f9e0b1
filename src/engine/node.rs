//! This node as the rest of the server sees it: its id, its drain at shutdown, and the
//! cluster's shared state (Redis) it reads and publishes to.

use std::time::Duration;

use super::Engine;

impl Engine {
    /// Shutdown began: from now on new starts are refused with `UNAVAILABLE` (a repeated
    /// `clientMessageId` still gets its first ack), while running answers go on.
    pub fn begin_drain(&self) {
        self.0.draining.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// This node's `NODE_ID`.
    pub fn node_id(&self) -> &str {
        &self.0.config.node_id
    }

    /// Whether the cluster's shared state (Redis) answers now; `None` on one node alone.
    pub async fn shared_state_ok(&self) -> Option<bool> {
        self.0.directory.shared_state_ok().await
    }

    /// Shares this node's summary for operators' views with the other nodes (cluster mode).
    pub async fn publish_node_summary(&self, summary: String) {
        self.0.directory.publish_node_summary(summary).await;
    }

    /// The other nodes' summaries published within `fresh` (none on one node).
    pub async fn node_summaries(&self, fresh: Duration) -> Vec<String> {
        self.0.directory.node_summaries(fresh).await
    }
}

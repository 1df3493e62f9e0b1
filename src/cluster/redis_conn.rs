//! The Redis side of cluster mode: one shared connection that reconnects by itself, a
//! bound on every call (so a Redis that went away costs a client at most
//! [`CALL_TIMEOUT`], never a hang), the key names, and how a log's final entry is written.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use redis::{
    Client, ProtocolVersion, RedisResult,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::chat::{ChatError, ErrorCode, Final, Usage};

/// The longest any one Redis call may take before it counts as unreachable.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(500);

/// Why a Redis call failed. The cause goes to the log; clients get `UNAVAILABLE`.
#[derive(Debug, thiserror::Error)]
pub enum RedisFailure {
    #[error("redis did not answer within {CALL_TIMEOUT:?}")]
    Timeout,
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// The shared connection, cheap to clone. Commands on it are multiplexed; a broken
/// connection is replaced by the next call.
#[derive(Clone)]
pub struct Redis {
    conn: ConnectionManager,
    client: Client,
    /// Round trips to Redis, for `chatwire_redis_commands_total`.
    commands: Counter,
}

impl Redis {
    /// Connects lazily: a node starts while Redis is down and reports it as unreachable.
    pub fn open(url: &str) -> RedisResult<Self> {
        let client = Client::open(url)?;
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager_config(CALL_TIMEOUT))?;
        Ok(Self { conn, client, commands: Counter::default() })
    }

    /// Counts this node's round trips into `commands` (the metrics registry's counter).
    pub fn counting_into(mut self, commands: Counter) -> Self {
        self.commands = commands;
        self
    }

    /// One more round trip, for calls made on a connection of their own.
    pub fn count(&self) {
        self.commands.inc();
    }

    /// A connection of its own with a longer response timeout, for blocking reads.
    pub fn dedicated(&self, response_timeout: Duration) -> RedisResult<ConnectionManager> {
        ConnectionManager::new_lazy_with_config(self.client.clone(), manager_config(response_timeout))
    }

    /// A RESP3 connection that delivers pub/sub messages to `sender` and subscribes again
    /// after each reconnect.
    pub fn subscriber(&self, sender: tokio::sync::mpsc::UnboundedSender<redis::PushInfo>) -> RedisResult<ConnectionManager> {
        let info = self.client.get_connection_info().clone();
        let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
        let client = Client::open(info.set_redis_settings(settings))?;
        let config = manager_config(CALL_TIMEOUT).set_push_sender(sender).set_automatic_resubscription();
        ConnectionManager::new_lazy_with_config(client, config)
    }

    /// The shared connection, for pipelines and scripts.
    pub fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Runs one command within [`CALL_TIMEOUT`].
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, RedisFailure> {
        let mut conn = self.conn.clone();
        self.count();
        bounded(cmd.query_async(&mut conn)).await
    }

    /// Runs a pipeline within [`CALL_TIMEOUT`].
    pub async fn pipe<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, RedisFailure> {
        let mut conn = self.conn.clone();
        self.count();
        bounded(pipe.query_async(&mut conn)).await
    }

    /// True when Redis answers a PING now.
    pub async fn reachable(&self) -> bool {
        self.query::<String>(&redis::cmd("PING")).await.is_ok()
    }
}

fn manager_config(response_timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CALL_TIMEOUT))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500))
}

/// `future` within [`CALL_TIMEOUT`].
pub async fn bounded<T>(future: impl Future<Output = RedisResult<T>>) -> Result<T, RedisFailure> {
    match tokio::time::timeout(CALL_TIMEOUT, future).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(RedisFailure::Timeout),
    }
}

/// Key and channel names, all under `chatwire:`.
pub mod keys {
    use uuid::Uuid;

    /// A hash of node name to its latest summary for operators (`{ "at": ms, "node": .. }`).
    pub const NODE_SUMMARIES: &str = "chatwire:node-summaries";

    /// An answer's log: a stream of `o` (offset), `e` (end), `t` (text), and `f` on the final entry.
    pub fn log(message_id: Uuid) -> String {
        format!("chatwire:log:{message_id}")
    }
    /// A running answer: a hash of its ids, user, connection and node.
    pub fn answer(message_id: Uuid) -> String {
        format!("chatwire:answer:{message_id}")
    }
    /// The running answers of a user (a set of message ids).
    pub fn user_answers(user: &str) -> String {
        format!("chatwire:user:{user}:answers")
    }
    /// A user's claims, a hash of node -> count.
    pub fn user_claims(user: &str) -> String {
        format!("chatwire:user:{user}:claims")
    }
    /// A user's start bucket.
    pub fn user_starts(user: &str) -> String {
        format!("chatwire:user:{user}:starts")
    }
    /// The running answers of a conversation (a set of message ids).
    pub fn conversation(conversation_id: Uuid) -> String {
        format!("chatwire:conversation:{conversation_id}:answers")
    }
    /// The answers a node runs (a set of message ids).
    pub fn node_answers(node: &str) -> String {
        format!("chatwire:node:{node}:answers")
    }
    /// A node's lease: present while the node lives.
    pub fn lease(node: &str) -> String {
        format!("chatwire:node:{node}:lease")
    }
    /// Who closes a dead node's answers.
    pub fn takeover(node: &str) -> String {
        format!("chatwire:node:{node}:takeover")
    }
    /// Every node that ever held a lease and was not yet taken over.
    pub const NODES: &str = "chatwire:nodes";
    /// Where a node hears the stops of its answers.
    pub fn stops(node: &str) -> String {
        format!("chatwire:node:{node}:stop")
    }
    /// Where every node hears answers registered anywhere.
    pub const STARTS: &str = "chatwire:starts";
}

/// The final entry's `f` field: how the answer ended (its text is the log's text).
pub fn encode_final(outcome: &Final) -> String {
    match outcome {
        Final::Complete { provider, model, finish_reason, usage } => json!({
            "kind": "complete", "provider": provider, "model": model, "finishReason": finish_reason,
            "usage": usage.map(|u| [u.prompt_tokens, u.completion_tokens, u.total_tokens]),
        }),
        Final::Stopped => json!({ "kind": "stopped" }),
        Final::Failed(e) => {
            json!({ "kind": "failed", "code": e.code.as_str(), "message": e.message })
        }
    }
    .to_string()
}

/// Reads an `f` field back; anything unreadable is an `INTERNAL` failure.
pub fn decode_final(raw: &str) -> Final {
    let v: Value = serde_json::from_str(raw).unwrap_or_default();
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
    match v["kind"].as_str() {
        Some("complete") => {
            let n = |i: usize| v["usage"][i].as_u64().and_then(|n| u32::try_from(n).ok()).unwrap_or_default();
            let usage = v["usage"].is_array().then(|| Usage { prompt_tokens: n(0), completion_tokens: n(1), total_tokens: n(2) });
            Final::Complete { provider: s("provider"), model: s("model"), finish_reason: s("finishReason"), usage }
        }
        Some("stopped") => Final::Stopped,
        Some("failed") => match ErrorCode::parse(&s("code")) {
            Some(code) => Final::Failed(ChatError::new(code, s("message"))),
            None => Final::Failed(ChatError::code(ErrorCode::Internal)),
        },
        _ => Final::Failed(ChatError::code(ErrorCode::Internal)),
    }
}

/// A node's name in Redis: its `NODE_ID` and an epoch of this start, so a restarted
/// node with the same `NODE_ID` is a new node and the old one's answers get closed.
pub fn instance_name(node_id: &str) -> String {
    format!("{node_id}@{}", &Uuid::new_v4().simple().to_string()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_entries_read_back_as_written() {
        let usage = Usage { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 };
        for outcome in [
            Final::Complete { provider: "groq".into(), model: "gpt-4".into(), finish_reason: "stop".into(), usage: Some(usage) },
            Final::Complete { provider: "mock".into(), model: "m".into(), finish_reason: "stop".into(), usage: None },
            Final::Stopped,
            Final::Failed(ChatError::new(ErrorCode::Unavailable, "the node running it stopped")),
        ] {
            assert_eq!(decode_final(&encode_final(&outcome)), outcome);
        }
        assert_eq!(decode_final("nonsense"), Final::Failed(ChatError::code(ErrorCode::Internal)));
    }
}

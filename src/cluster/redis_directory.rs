//! The directory of running answers for a cluster: this node's answers and connections
//! in memory (a connection lives on one node, so `BUSY` stays per connection), and in
//! Redis what every node must see: each running answer (a hash, and sets per user,
//! conversation and node), each user's claims counted per node, each user's start
//! bucket. A stop for another node's answer is published to that node. Node leases and
//! the closing of dead nodes' answers are in `redis_nodes`.

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use futures::{StreamExt, stream::BoxStream};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    directory::{Claim, ClaimRefused, Directory, Guard, Orphan, Registration, RunningAnswer, StopHandle},
    memory_directory::MemoryDirectory,
    redis_conn::{Redis, keys},
    redis_nodes::{self, Cleanups},
};
use crate::chat::{AnswerIds, ConnectionId, StopReason};

/// Counts a claim unless the user holds `limit` on live nodes; claims of nodes whose
/// lease is gone are dropped on the way.
const CLAIM: &str = r"
local total = 0
local h = redis.call('HGETALL', KEYS[1])
for i = 1, #h, 2 do
  if h[i] == ARGV[1] or redis.call('EXISTS', 'chatwire:node:' .. h[i] .. ':lease') == 1 then
    total = total + tonumber(h[i + 1])
  else
    redis.call('HDEL', KEYS[1], h[i])
  end
end
if total >= tonumber(ARGV[2]) then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
return 1
";

/// Gives a claim back.
const RELEASE: &str = r"
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if n <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return n
";

/// A token bucket of `ARGV[1]` starts a minute, refilled continuously, on Redis's clock.
const BUCKET: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cap = tonumber(ARGV[1])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1]) or cap
local at = tonumber(b[2]) or now
tokens = math.min(cap, tokens + (now - at) * cap / 60000)
local allowed = 0
if tokens >= 1 then tokens = tokens - 1; allowed = 1 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], 60000)
return allowed
";

/// Starts queued for slow followers before they skip some.
const STARTS_BUFFER: usize = 256;

/// The cluster's directory.
pub struct RedisDirectory {
    local: MemoryDirectory,
    redis: Redis,
    /// This node's name in Redis (`NODE_ID` and an epoch).
    node: String,
    /// Answers registered on any node, for followers here.
    starts: broadcast::Sender<RunningAnswer>,
    cleanups: Cleanups,
    orphans: std::sync::Mutex<Option<mpsc::Receiver<Orphan>>>,
    claim: redis::Script,
    bucket: redis::Script,
}

impl RedisDirectory {
    /// Joins the cluster as `node`: starts the lease, the stop and start listener and the
    /// search for dead nodes, until `shutdown`.
    pub fn start(redis: Redis, node: String, lease: Duration, shutdown: CancellationToken) -> redis::RedisResult<Arc<Self>> {
        let (orphans_tx, orphans_rx) = mpsc::channel(1024);
        let this = Arc::new(Self {
            local: MemoryDirectory::default(),
            redis,
            node,
            starts: broadcast::channel(STARTS_BUFFER).0,
            cleanups: Cleanups::default(),
            orphans: std::sync::Mutex::new(Some(orphans_rx)),
            claim: redis::Script::new(CLAIM),
            bucket: redis::Script::new(BUCKET),
        });
        redis_nodes::spawn(this.clone(), lease, orphans_tx, shutdown)?;
        Ok(this)
    }

    pub(super) fn redis(&self) -> &Redis {
        &self.redis
    }

    pub(super) fn node(&self) -> &str {
        &self.node
    }

    pub(super) fn cleanups(&self) -> &Cleanups {
        &self.cleanups
    }

    pub(super) fn local(&self) -> &MemoryDirectory {
        &self.local
    }

    /// An answer registered on another node, heard from Redis.
    pub(super) fn heard_start(&self, answer: RunningAnswer) {
        let _ = self.starts.send(answer);
    }

    /// The running answers of these ids, as Redis lists them.
    pub(super) async fn answers(&self, ids: &[String]) -> Option<Vec<(RunningAnswer, String)>> {
        answers(&self.redis, ids).await
    }
}

/// The running answers of these ids, as Redis lists them, with the node running each.
async fn answers(redis: &Redis, ids: &[String]) -> Option<Vec<(RunningAnswer, String)>> {
    if ids.is_empty() {
        return Some(Vec::new());
    }
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.cmd("HGETALL").arg(format!("chatwire:answer:{id}"));
    }
    let hashes: Vec<HashMap<String, String>> = redis.pipe(&pipe).await.ok()?;
    Some(hashes.iter().filter_map(from_hash).collect())
}

/// The running answers listed in the set `key`, oldest first.
async fn listed(redis: &Redis, key: String) -> Option<Vec<RunningAnswer>> {
    let ids: Vec<String> = redis.query(redis::cmd("SMEMBERS").arg(key)).await.ok()?;
    let mut found: Vec<_> = answers(redis, &ids).await?.into_iter().map(|(a, _)| a).collect();
    found.sort_by_key(|a| a.ids.message_id);
    Some(found)
}

/// What lists a running answer in Redis (one transaction).
pub(super) fn listing(answer: &RunningAnswer, node: &str) -> redis::Pipeline {
    let id = answer.ids.message_id.to_string();
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("HSET")
        .arg(keys::answer(answer.ids.message_id))
        .arg("m")
        .arg(&id)
        .arg("c")
        .arg(answer.ids.conversation_id.to_string())
        .arg("u")
        .arg(&answer.user_id)
        .arg("k")
        .arg(answer.connection.to_string())
        .arg("n")
        .arg(node)
        .ignore();
    for set in [keys::user_answers(&answer.user_id), keys::conversation(answer.ids.conversation_id), keys::node_answers(node)] {
        pipe.cmd("SADD").arg(set).arg(&id).ignore();
    }
    pipe
}

/// What takes a running answer out of Redis.
pub(super) fn removal(answer: &RunningAnswer, node: &str) -> redis::Pipeline {
    let id = answer.ids.message_id.to_string();
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("DEL")
        .arg(keys::answer(answer.ids.message_id))
        .cmd("SREM")
        .arg(keys::user_answers(&answer.user_id))
        .arg(&id)
        .cmd("SREM")
        .arg(keys::conversation(answer.ids.conversation_id))
        .arg(&id)
        .cmd("SREM")
        .arg(keys::node_answers(node))
        .arg(&id);
    pipe
}

/// A running answer from its hash, with the node that runs it.
fn from_hash(h: &HashMap<String, String>) -> Option<(RunningAnswer, String)> {
    let message_id = Uuid::parse_str(h.get("m")?).ok()?;
    let conversation_id = Uuid::parse_str(h.get("c")?).ok()?;
    let (wire, id) = h.get("k")?.split_once(':')?;
    let answer = RunningAnswer {
        ids: AnswerIds { message_id, conversation_id },
        user_id: h.get("u")?.clone(),
        connection: ConnectionId::new(wire, id),
    };
    Some((answer, h.get("n")?.clone()))
}

/// The start announcement other nodes hear.
pub(super) fn announce(answer: &RunningAnswer, node: &str) -> String {
    serde_json::json!({
        "m": answer.ids.message_id, "c": answer.ids.conversation_id, "u": answer.user_id,
        "k": answer.connection.to_string(), "n": node,
    })
    .to_string()
}

/// A heard start announcement.
pub(super) fn heard(raw: &str) -> Option<(RunningAnswer, String)> {
    let map: HashMap<String, String> = serde_json::from_str(raw).ok()?;
    from_hash(&map)
}

#[async_trait]
impl Directory for RedisDirectory {
    async fn claim(&self, connection: &ConnectionId, user: &str, limit: usize) -> Result<Claim, ClaimRefused> {
        // This node's part: one answer per connection.
        let local = self.local.claim(connection, user, usize::MAX).await?;
        let mut invocation = self.claim.key(keys::user_claims(user));
        invocation.arg(&self.node).arg(limit);
        let mut conn = self.redis.conn();
        self.redis.count();
        match super::redis_conn::bounded(invocation.invoke_async::<i64>(&mut conn)).await {
            Ok(1) => {}
            Ok(_) => return Err(ClaimRefused::UserLimit),
            Err(e) => {
                tracing::warn!(error = %e, "claiming a start in redis failed");
                return Err(ClaimRefused::Unavailable);
            }
        }
        let (redis, cleanups, node, user) = (self.redis.clone(), self.cleanups.clone(), self.node.clone(), user.to_owned());
        Ok(Guard::new(move || {
            drop(local);
            let mut pipe = redis::pipe();
            pipe.cmd("EVAL").arg(RELEASE).arg(1).arg(keys::user_claims(&user)).arg(&node);
            cleanups.run(redis, pipe);
        }))
    }

    async fn register(&self, answer: RunningAnswer, stop: Arc<StopHandle>) -> Registration {
        let local = self.local.register(answer.clone(), stop).await;
        let id = answer.ids.message_id;
        let mut pipe = listing(&answer, &self.node);
        pipe.cmd("PUBLISH").arg(keys::STARTS).arg(announce(&answer, &self.node)).ignore();
        if let Err(e) = self.redis.pipe::<()>(&pipe).await {
            // It runs and is stored; only other nodes' readers miss it.
            tracing::warn!(message_id = %id, error = %e, "registering an answer in redis failed; other nodes will not see it run");
        }
        let _ = self.starts.send(answer.clone());
        let (redis, cleanups, node) = (self.redis.clone(), self.cleanups.clone(), self.node.clone());
        Guard::new(move || {
            drop(local);
            cleanups.run(redis, removal(&answer, &node));
        })
    }

    async fn get(&self, message_id: Uuid) -> Option<RunningAnswer> {
        if let Some(a) = self.local.get(message_id).await {
            return Some(a);
        }
        let mut found = self.answers(&[message_id.to_string()]).await?;
        found.pop().map(|(a, _)| a)
    }

    async fn of_user(&self, user: &str) -> Vec<RunningAnswer> {
        match listed(&self.redis, keys::user_answers(user)).await {
            Some(all) => all,
            None => self.local.of_user(user).await,
        }
    }

    async fn of_connection(&self, connection: &ConnectionId) -> Option<RunningAnswer> {
        self.local.of_connection(connection).await
    }

    async fn stop(&self, message_id: Uuid, reason: StopReason) -> bool {
        if self.local.stop(message_id, reason).await {
            return true;
        }
        let Some(mut found) = self.answers(&[message_id.to_string()]).await else { return false };
        let Some((_, node)) = found.pop() else { return false };
        let publish = redis::cmd("PUBLISH").arg(keys::stops(&node)).arg(message_id.to_string()).to_owned();
        // Heard by the node running it, whose lease is still alive.
        self.redis.query::<i64>(&publish).await.is_ok_and(|heard| heard > 0)
    }

    fn follow(&self, conversation_id: Uuid) -> BoxStream<'static, RunningAnswer> {
        // Subscribed before listing: an answer registered in between is seen (twice at
        // worst), never missed.
        let starts = self.starts.subscribe();
        let redis = self.redis.clone();
        let now = futures::stream::once(async move { listed(&redis, keys::conversation(conversation_id)).await })
            // Redis down: only the answers started from now on are heard.
            .flat_map(|found| futures::stream::iter(found.unwrap_or_default()));
        let later = super::directory::started_in(starts, conversation_id);
        now.chain(later).boxed()
    }

    fn local_count(&self) -> usize {
        self.local.local_count()
    }

    fn local_users(&self) -> usize {
        self.local.local_users()
    }

    fn stop_local(&self, reason: StopReason) {
        self.local.stop_local(reason);
    }

    async fn wait_local_empty(&self, limit: Duration) -> bool {
        self.local.wait_local_empty(limit).await
    }

    async fn allow_start(&self, user: &str, per_minute: u32) -> Result<bool, ClaimRefused> {
        if per_minute == 0 {
            return Ok(true);
        }
        let mut invocation = self.bucket.key(keys::user_starts(user));
        invocation.arg(per_minute);
        let mut conn = self.redis.conn();
        self.redis.count();
        match super::redis_conn::bounded(invocation.invoke_async::<i64>(&mut conn)).await {
            Ok(allowed) => Ok(allowed == 1),
            Err(e) => {
                tracing::warn!(error = %e, "the shared start bucket cannot be read");
                Err(ClaimRefused::Unavailable)
            }
        }
    }

    fn orphans(&self) -> Option<BoxStream<'static, Orphan>> {
        let rx = self.orphans.lock().unwrap_or_else(|p| p.into_inner()).take()?;
        Some(tokio_stream_from(rx))
    }

    async fn shared_state_ok(&self) -> Option<bool> {
        Some(self.redis.reachable().await)
    }

    async fn publish_node_summary(&self, summary: String) {
        let at = chrono::Utc::now().timestamp_millis();
        let entry = serde_json::json!({ "at": at, "summary": summary }).to_string();
        let cmd = redis::cmd("HSET").arg(keys::NODE_SUMMARIES).arg(&self.node).arg(entry).to_owned();
        if let Err(e) = self.redis.query::<i64>(&cmd).await {
            tracing::debug!(error = %e, "publishing this node's summary failed");
        }
    }

    async fn node_summaries(&self, fresh: std::time::Duration) -> Vec<String> {
        let all: std::collections::HashMap<String, String> = match self.redis.query(redis::cmd("HGETALL").arg(keys::NODE_SUMMARIES)).await {
            Ok(all) => all,
            Err(e) => {
                tracing::debug!(error = %e, "reading the nodes' summaries failed");
                return Vec::new();
            }
        };
        let oldest = chrono::Utc::now().timestamp_millis() - i64::try_from(fresh.as_millis()).unwrap_or(i64::MAX);
        let mut summaries = Vec::new();
        let mut gone = Vec::new();
        for (node, entry) in all {
            let parsed: Option<(i64, String)> = serde_json::from_str::<serde_json::Value>(&entry)
                .ok()
                .and_then(|v| Some((v["at"].as_i64()?, v["summary"].as_str()?.to_owned())));
            match parsed {
                Some((at, summary)) if at >= oldest => {
                    if node != self.node {
                        summaries.push(summary);
                    }
                }
                _ => gone.push(node),
            }
        }
        if !gone.is_empty() {
            let _ = self.redis.query::<i64>(redis::cmd("HDEL").arg(keys::NODE_SUMMARIES).arg(&gone)).await;
        }
        summaries
    }
}

fn tokio_stream_from(mut rx: mpsc::Receiver<Orphan>) -> BoxStream<'static, Orphan> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

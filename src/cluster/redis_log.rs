//! Answer logs in Redis Streams, for cluster mode: each running answer is a stream of
//! entries `o` (UTF-16 offset), `e` (end), `t` (text), the last one with `f` (how it
//! ended). Readers on the answer's own node read its memory log; readers elsewhere read
//! a mirror of the stream (`redis_mirror`).
//!
//! [`LogWriter::append`] is synchronous: it buffers, and one flush task per answer sends
//! what gathered, with at most one append in flight and, after the first, at most one
//! per window (`CLUSTER_APPEND_MS`), so Redis sees far fewer appends than tokens at
//! high rates. An append is one script: it checks the expected offset against the
//! stream's last entry, so a duplicate or out-of-order append cannot happen. The stream
//! is capped and expires [`ENDED_TTL`] after its final entry.
//!
//! Text reaches this node's readers once Redis has it, so whatever a client read is in
//! Redis, and a node that dies loses nothing a client saw. While Redis fails, the text
//! goes to this node's readers at once and Redis is caught up when it answers again.

use std::{
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use redis::streams::StreamRangeReply;
use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    log::{AnswerLogs, Ending, LogReader, LogWriter},
    memory_log::{MemoryLogs, MemoryReader},
    redis_conn::{Redis, RedisFailure, encode_final, keys},
    redis_mirror::{Mirrors, apply},
};
use crate::chat::{ChatError, ErrorCode, Final, text};

/// How long an ended answer's stream stays for late readers (then its row serves them).
pub const ENDED_TTL: Duration = Duration::from_secs(60);
/// A running answer's stream expires this long after its last append (a safety net).
const RUNNING_TTL: Duration = Duration::from_secs(24 * 3600);
/// How often appends are tried again while Redis fails.
const RETRY: Duration = Duration::from_millis(250);
/// How long an ended answer's flush task keeps trying to reach Redis.
const GIVE_UP_AFTER: Duration = Duration::from_secs(30);

/// The append: checks the offset, adds the entry, sets the expiry. Returns `{1, end}`,
/// `{0, current end}` when the offset does not match, `{-1, end}` when the log ended.
const APPEND: &str = r"
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local cur, ended = 0, false
if #last > 0 then
  local f = last[1][2]
  for i = 1, #f, 2 do
    if f[i] == 'e' then cur = tonumber(f[i + 1]) end
    if f[i] == 'f' then ended = true end
  end
end
if ended then return {-1, cur} end
if cur ~= tonumber(ARGV[1]) then return {0, cur} end
if ARGV[4] == '' then
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], '*', 'o', ARGV[1], 'e', ARGV[2], 't', ARGV[3])
  if cur == 0 then redis.call('PEXPIRE', KEYS[1], ARGV[7]) end
else
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], '*', 'o', ARGV[1], 'e', ARGV[2], 't', ARGV[3], 'f', ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
end
return {1, tonumber(ARGV[2])}
";

/// The logs of cluster mode.
pub struct RedisLogs {
    inner: Arc<Inner>,
    mirrors: Arc<Mirrors>,
}

struct Inner {
    redis: Redis,
    script: redis::Script,
    /// This node's readers of its own answers.
    local: MemoryLogs,
    /// Entries a stream keeps at most: above any answer's number of appends.
    max_entries: usize,
    /// After an append, how long later text gathers before the next one.
    window: Duration,
    /// Appends sent to Redis since start-up (for the commands-per-token figure).
    appends: AtomicU64,
}

impl RedisLogs {
    /// Logs over `redis`; `max_entries` caps each stream; appends after the first come at
    /// most once per `window`. The node's poller runs until `shutdown`.
    pub fn new(redis: Redis, max_entries: usize, window: Duration, shutdown: CancellationToken) -> redis::RedisResult<Self> {
        let mirrors = Mirrors::start(redis.clone(), shutdown)?;
        let inner = Inner {
            redis,
            script: redis::Script::new(APPEND),
            local: MemoryLogs::default(),
            max_entries: max_entries.max(1024),
            window,
            appends: AtomicU64::new(0),
        };
        Ok(Self { inner: Arc::new(inner), mirrors })
    }

    /// Appends sent to Redis since start-up.
    pub fn appends(&self) -> u64 {
        self.inner.appends.load(Ordering::Relaxed)
    }

    fn writer(&self, message_id: Uuid, text: String) -> Box<dyn LogWriter> {
        let length = text::utf16_len(&text);
        let mut local = self.inner.local.create(message_id);
        local.append(&text);
        let feed = Arc::new(Feed::default());
        let flusher = Flusher {
            inner: self.inner.clone(),
            key: keys::log(message_id),
            local,
            feed: feed.clone(),
            in_redis: length,
            in_redis_bytes: text.len(),
            behind: false,
            abandoned: false,
            final_json: None,
        };
        tokio::spawn(flusher.run());
        Box::new(RedisWriter { text, length, finished: false, feed })
    }
}

#[async_trait]
impl AnswerLogs for RedisLogs {
    fn create(&self, message_id: Uuid) -> Box<dyn LogWriter> {
        self.writer(message_id, String::new())
    }

    async fn open(&self, message_id: Uuid, offset: u64) -> Option<Box<dyn LogReader>> {
        if let Some(local) = self.inner.local.open(message_id, offset).await {
            return Some(local);
        }
        let rx = self.mirrors.attach(message_id).await?;
        Some(Box::new(MemoryReader::new(rx, offset)))
    }

    async fn length(&self, message_id: Uuid) -> Option<u64> {
        if let Some(length) = self.inner.local.length(message_id).await.or_else(|| self.mirrors.length(message_id)) {
            return Some(length);
        }
        let cmd = redis::cmd("XREVRANGE").arg(keys::log(message_id)).arg("+").arg("-").arg("COUNT").arg(1).to_owned();
        let last: StreamRangeReply = self.inner.redis.query(&cmd).await.ok()?;
        // No stream yet: the answer has no text so far.
        Some(last.ids.first().and_then(|e| e.get::<String>("e")).and_then(|e| e.parse().ok()).unwrap_or(0))
    }

    async fn adopt(&self, message_id: Uuid) -> Option<Box<dyn LogWriter>> {
        let cmd = redis::cmd("XRANGE").arg(keys::log(message_id)).arg("-").arg("+").to_owned();
        let range: StreamRangeReply = self.inner.redis.query(&cmd).await.ok()?;
        let mut state = super::memory_log::LogState::default();
        for entry in &range.ids {
            let _ = apply(&mut state, entry);
        }
        if state.ending.is_some() {
            return None;
        }
        Some(self.writer(message_id, state.text))
    }
}

/// What the generation appended and the flush task has not taken yet.
#[derive(Default)]
struct Feed {
    pending: Mutex<(String, Option<Ending>)>,
    wake: Notify,
}

impl Feed {
    fn lock(&self) -> MutexGuard<'_, (String, Option<Ending>)> {
        // Text is pushed and taken whole; a poisoned buffer is still consistent.
        self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn take(&self) -> (String, Option<Ending>) {
        std::mem::take(&mut *self.lock())
    }
}

struct RedisWriter {
    /// The whole text, for checkpoints and the final row.
    text: String,
    length: u64,
    finished: bool,
    feed: Arc<Feed>,
}

impl LogWriter for RedisWriter {
    fn append(&mut self, delta: &str) -> u64 {
        if self.finished || delta.is_empty() {
            return self.length;
        }
        self.text.push_str(delta);
        self.length += text::utf16_len(delta);
        self.feed.lock().0.push_str(delta);
        self.feed.wake.notify_one();
        self.length
    }

    fn length(&self) -> u64 {
        self.length
    }

    fn text(&self) -> String {
        self.text.clone()
    }

    fn finish(&mut self, ending: Ending) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.feed.lock().1 = Some(ending);
        self.feed.wake.notify_one();
    }
}

impl Drop for RedisWriter {
    fn drop(&mut self) {
        // Gone without a final entry: its generation died (a panic).
        let content = std::mem::take(&mut self.text);
        let outcome = Final::Failed(ChatError::code(ErrorCode::Internal));
        self.finish(Ending { outcome, length: self.length, content });
    }
}

/// One answer's flush task: Redis first, then this node's readers.
struct Flusher {
    inner: Arc<Inner>,
    key: String,
    /// This node's log of the answer: all the text taken so far.
    local: Box<dyn LogWriter>,
    feed: Arc<Feed>,
    /// UTF-16 units (and bytes) of the text Redis holds.
    in_redis: u64,
    in_redis_bytes: usize,
    /// Redis failed: the local log is ahead and Redis is caught up on retries.
    behind: bool,
    /// The stream was ended by another node (this one was taken for dead): no more appends.
    abandoned: bool,
    /// The final entry, once the generation gave it.
    final_json: Option<String>,
}

/// How an append went.
enum Appended {
    Done,
    Failed,
}

impl Flusher {
    async fn run(mut self) {
        let mut last_append: Option<Instant> = None;
        let mut ended_at: Option<Instant> = None;
        loop {
            let feed = self.feed.clone();
            let wake = feed.wake.notified();
            let (mut batch, mut ending) = self.feed.take();
            if batch.is_empty() && ending.is_none() {
                let redis_done = !self.behind || self.abandoned || ended_at.is_some_and(|t| t.elapsed() > GIVE_UP_AFTER);
                if ended_at.is_some() && redis_done {
                    if self.behind && !self.abandoned {
                        tracing::warn!(key = %self.key, "redis stayed unreachable; the answer's end is stored but not in its stream");
                    }
                    return;
                }
                if self.behind && !self.abandoned {
                    tokio::select! { _ = wake => {}, _ = tokio::time::sleep(RETRY) => {} }
                    self.catch_up().await;
                } else {
                    wake.await;
                }
                continue;
            }
            // Under load, text gathers for a window after each append.
            if let Some(at) = last_append
                && ending.is_none()
                && !self.behind
                && at.elapsed() < self.inner.window
            {
                tokio::time::sleep_until(at + self.inner.window).await;
                let (more, later) = self.feed.take();
                batch.push_str(&more);
                ending = later;
            }
            if let Some(e) = &ending {
                self.final_json = Some(encode_final(&e.outcome));
                ended_at = Some(Instant::now());
            }
            if !self.behind && !self.abandoned {
                last_append = Some(Instant::now());
                let final_json = self.final_json.clone();
                if let Appended::Failed = self.append(&batch, final_json.as_deref()).await {
                    self.behind = true;
                }
            }
            self.local.append(&batch);
            if let Some(e) = ending {
                self.local.finish(e);
            }
            if self.behind && !self.abandoned {
                self.catch_up().await;
            }
        }
    }

    /// Sends Redis what the local log holds beyond it.
    async fn catch_up(&mut self) {
        let all = self.local.text();
        let backlog = all.get(self.in_redis_bytes..).unwrap_or_default().to_owned();
        let final_json = self.final_json.clone();
        if let Appended::Done = self.append(&backlog, final_json.as_deref()).await {
            if self.behind {
                tracing::info!(key = %self.key, "redis caught up with the answer");
            }
            self.behind = false;
        }
    }

    /// One append of `text` (and the final entry) at the offset Redis holds.
    async fn append(&mut self, text: &str, final_json: Option<&str>) -> Appended {
        if text.is_empty() && final_json.is_none() {
            return Appended::Done;
        }
        let end = self.in_redis + text::utf16_len(text);
        self.inner.appends.fetch_add(1, Ordering::Relaxed);
        let mut invocation = self.inner.script.key(&self.key);
        invocation
            .arg(self.in_redis)
            .arg(end)
            .arg(text)
            .arg(final_json.unwrap_or_default())
            .arg(self.inner.max_entries)
            .arg(ENDED_TTL.as_millis() as u64)
            .arg(RUNNING_TTL.as_millis() as u64);
        let mut conn = self.inner.redis.conn();
        self.inner.redis.count();
        let result: Result<(i64, u64), RedisFailure> = super::redis_conn::bounded(invocation.invoke_async(&mut conn)).await;
        match result {
            Ok((1, _)) => {}
            // A reply lost after the append landed: Redis already holds exactly this.
            Ok((0, current)) if current == end && final_json.is_none() => {}
            Ok((0, 0)) => {
                // The stream is gone (Redis lost its data): it is written again from the start.
                tracing::warn!(key = %self.key, "an answer's stream was lost; writing it again");
                (self.in_redis, self.in_redis_bytes) = (0, 0);
                return Appended::Failed;
            }
            Ok((status, current)) => {
                tracing::warn!(key = %self.key, status, current, expected = self.in_redis, "another node ended this answer's stream; no more appends");
                self.abandoned = true;
                return Appended::Failed;
            }
            Err(e) => {
                tracing::warn!(key = %self.key, error = %e, "appending to an answer's stream failed; retrying");
                return Appended::Failed;
            }
        }
        self.in_redis = end;
        self.in_redis_bytes += text.len();
        Appended::Done
    }
}

#[cfg(test)]
#[path = "redis_log_tests.rs"]
mod tests;

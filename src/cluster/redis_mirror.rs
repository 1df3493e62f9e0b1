//! Answers running on other nodes, as this node reads them: one mirror per answer with a
//! reader here, fed from its Redis stream, and read by the same readers as a local log.
//!
//! A mirror starts with the stream's whole range (the catch-up), then one poller per
//! node reads every mirrored stream with a single `XREAD BLOCK` on a connection of its
//! own, so a node holds two Redis connections however many readers it serves. A new
//! mirror wakes the poller (`CLIENT UNBLOCK`) so it joins the read at once. Each entry
//! carries its UTF-16 range: one already held is skipped, one that would leave a gap
//! makes the mirror read the stream again, so readers see no gap and no duplicate.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    log::Ending,
    memory_log::LogState,
    redis_conn::{Redis, decode_final, keys},
};
use crate::chat::text;

/// How long one `XREAD` blocks; new mirrors cut it short.
const BLOCK: Duration = Duration::from_secs(5);
/// Entries read per stream per round.
const READ_COUNT: usize = 512;
/// Pause after a failed read before the next one.
const RETRY: Duration = Duration::from_millis(250);

/// The mirrors of this node.
pub(super) struct Mirrors {
    redis: Redis,
    map: Mutex<HashMap<Uuid, Mirror>>,
    wake: Notify,
    /// The poller connection's client id, 0 while unknown.
    poller: AtomicI64,
}

struct Mirror {
    tx: watch::Sender<LogState>,
    /// The id of the last stream entry applied.
    last_id: String,
}

fn lock(m: &Mutex<HashMap<Uuid, Mirror>>) -> MutexGuard<'_, HashMap<Uuid, Mirror>> {
    // Entries are inserted and removed whole; a poisoned map is still consistent.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Mirrors {
    /// Starts the node's poller, which runs until `shutdown`.
    pub(super) fn start(redis: Redis, shutdown: CancellationToken) -> redis::RedisResult<Arc<Self>> {
        let conn = redis.dedicated(BLOCK + Duration::from_secs(2))?;
        let this = Arc::new(Self { redis, map: Mutex::default(), wake: Notify::new(), poller: AtomicI64::new(0) });
        tokio::spawn(this.clone().poll(conn, shutdown));
        Ok(this)
    }

    /// A receiver of the answer's mirror, made from its stream when there is none yet.
    /// A stream not written yet (the answer has no text so far) mirrors as empty. `None`
    /// when Redis cannot be read.
    pub(super) async fn attach(&self, message_id: Uuid) -> Option<watch::Receiver<LogState>> {
        if let Some(m) = lock(&self.map).get(&message_id) {
            return Some(m.tx.subscribe());
        }
        let (state, last_id) = self.read_whole(message_id).await?;
        let ended = state.ending.is_some();
        let (tx, rx) = watch::channel(state);
        if ended {
            // Nothing more will come: the receiver reads it to its end alone.
            return Some(rx);
        }
        let mut map = lock(&self.map);
        if let Some(m) = map.get(&message_id) {
            return Some(m.tx.subscribe());
        }
        map.insert(message_id, Mirror { tx, last_id });
        drop(map);
        self.wake.notify_one();
        self.unblock_poller();
        Some(rx)
    }

    /// The UTF-16 length the mirror holds, if this node mirrors the answer.
    pub(super) fn length(&self, message_id: Uuid) -> Option<u64> {
        lock(&self.map).get(&message_id).map(|m| m.tx.borrow().length)
    }

    /// The whole stream as a log state, and the last entry's id.
    async fn read_whole(&self, message_id: Uuid) -> Option<(LogState, String)> {
        let cmd = redis::cmd("XRANGE").arg(keys::log(message_id)).arg("-").arg("+").to_owned();
        let range: StreamRangeReply = match self.redis.query(&cmd).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%message_id, error = %e, "reading an answer's stream failed");
                return None;
            }
        };
        let mut state = LogState::default();
        let mut last_id = "0-0".to_owned();
        for entry in &range.ids {
            if apply(&mut state, entry).is_err() {
                // Entries are appended in order from offset 0: a gap means the stream was cut.
                tracing::warn!(%message_id, "an answer's stream does not start at offset 0");
            }
            last_id.clone_from(&entry.id);
        }
        Some((state, last_id))
    }

    /// Asks the poller to start its next read now, so a new mirror joins it.
    fn unblock_poller(&self) {
        let id = self.poller.load(Ordering::Relaxed);
        if id == 0 {
            return;
        }
        let redis = self.redis.clone();
        tokio::spawn(async move {
            let _ = redis.query::<i64>(redis::cmd("CLIENT").arg("UNBLOCK").arg(id)).await;
        });
    }

    async fn poll(self: Arc<Self>, mut conn: redis::aio::ConnectionManager, shutdown: CancellationToken) {
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let watched: Vec<(Uuid, String)> = {
                let mut map = lock(&self.map);
                // A mirror nobody reads any more is dropped.
                map.retain(|_, m| m.tx.receiver_count() > 0);
                map.iter().map(|(id, m)| (*id, m.last_id.clone())).collect()
            };
            if watched.is_empty() {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = shutdown.cancelled() => return,
                }
                continue;
            }
            if self.poller.load(Ordering::Relaxed) == 0 {
                self.redis.count();
                match tokio::time::timeout(RETRY * 4, redis::cmd("CLIENT").arg("ID").query_async::<i64>(&mut conn)).await {
                    Ok(Ok(id)) => self.poller.store(id, Ordering::Relaxed),
                    _ => {
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                }
            }
            let mut read = redis::cmd("XREAD");
            read.arg("COUNT").arg(READ_COUNT).arg("BLOCK").arg(BLOCK.as_millis() as u64).arg("STREAMS");
            for (id, _) in &watched {
                read.arg(keys::log(*id));
            }
            for (_, last) in &watched {
                read.arg(last);
            }
            self.redis.count();
            let reply = tokio::select! {
                r = tokio::time::timeout(BLOCK + Duration::from_secs(2), read.query_async::<Option<StreamReadReply>>(&mut conn)) => r,
                _ = shutdown.cancelled() => return,
            };
            match reply {
                Ok(Ok(Some(reply))) => self.apply_read(reply).await,
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "reading answers' streams failed; retrying");
                    self.poller.store(0, Ordering::Relaxed);
                    tokio::time::sleep(RETRY).await;
                }
                Err(_) => {
                    self.poller.store(0, Ordering::Relaxed);
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }

    async fn apply_read(&self, reply: StreamReadReply) {
        let mut resync = Vec::new();
        {
            let mut map = lock(&self.map);
            for stream in reply.keys {
                let Some(id) = stream.key.rsplit(':').next().and_then(|s| Uuid::parse_str(s).ok()) else {
                    continue;
                };
                let Some(mirror) = map.get_mut(&id) else {
                    continue;
                };
                let mut gap = false;
                mirror.tx.send_modify(|state| {
                    for entry in &stream.ids {
                        gap |= apply(state, entry).is_err();
                    }
                });
                if let Some(last) = stream.ids.last() {
                    mirror.last_id.clone_from(&last.id);
                }
                if gap {
                    resync.push(id);
                } else if mirror.tx.borrow().ending.is_some() {
                    // Ended: its readers read on alone.
                    map.remove(&id);
                }
            }
        }
        for id in resync {
            tracing::warn!(message_id = %id, "an answer's stream skipped ahead; reading it again");
            let Some((state, last_id)) = self.read_whole(id).await else {
                continue;
            };
            let mut map = lock(&self.map);
            if let Some(mirror) = map.get_mut(&id) {
                mirror.tx.send_modify(|s| {
                    // The stream's text extends what readers already read.
                    if state.length >= s.length {
                        *s = state;
                    }
                });
                mirror.last_id = last_id;
            }
        }
    }
}

/// A stream entry that starts beyond what the mirror holds.
#[derive(Debug)]
pub(super) struct Gap;

/// Applies one stream entry: text beyond what `state` holds is added, text already held
/// skipped; a final entry ends the log.
pub(super) fn apply(state: &mut LogState, entry: &StreamId) -> Result<(), Gap> {
    if state.ending.is_some() {
        return Ok(());
    }
    let offset: u64 = entry.get::<String>("o").and_then(|o| o.parse().ok()).unwrap_or_default();
    let end: u64 = entry.get::<String>("e").and_then(|o| o.parse().ok()).unwrap_or_default();
    if offset > state.length {
        return Err(Gap);
    }
    if end > state.length {
        let piece: String = entry.get("t").unwrap_or_default();
        let (skip, _) = text::byte_index(&piece, state.length - offset);
        state.text.push_str(&piece[skip..]);
        state.length += text::utf16_len(&piece[skip..]);
    }
    if let Some(outcome) = entry.get::<String>("f") {
        let content = std::mem::take(&mut state.text);
        state.ending = Some(Arc::new(Ending { outcome: decode_final(&outcome), length: state.length, content }));
    }
    Ok(())
}

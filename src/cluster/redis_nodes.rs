//! The nodes of a cluster: each holds a lease in Redis (`NODE_LEASE_MS`), renewed three
//! times per lease, and listens for stops of its answers and for answers started
//! elsewhere (one pub/sub connection that subscribes again after each reconnect).
//!
//! The lease is renewed by a task that does nothing else. Another, at the same pace,
//! looks for nodes whose lease is missing on two checks in a row. The first to take a
//! dead node over hands each of its answers to the engine, which ends it (the final
//! entry `UNAVAILABLE`, the row with all the text in the log), so a dead node's answers
//! are closed within about 1⅔ leases.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use redis::{Pipeline, PushKind, aio::ConnectionManager};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    directory::{Directory, Guard, Orphan},
    redis_conn::{Redis, bounded, keys},
    redis_directory::{RedisDirectory, heard},
};
use crate::chat::StopReason;

/// How long a node that takes a dead one over has to hand on its answers before another may.
const TAKEOVER_FOR: u32 = 3;
/// Pause before subscribing again when Redis does not answer.
const RETRY: Duration = Duration::from_millis(250);

/// Redis writes that failed, tried again on each renewal.
#[derive(Clone, Default)]
pub(super) struct Cleanups(Arc<Mutex<Vec<Pipeline>>>);

impl Cleanups {
    fn lock(&self) -> MutexGuard<'_, Vec<Pipeline>> {
        // Pipelines are pushed and taken whole; a poisoned list is still consistent.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `pipe` now, in the background; kept for later if Redis fails.
    pub(super) fn run(&self, redis: Redis, pipe: Pipeline) {
        let this = self.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if redis.pipe::<redis::Value>(&pipe).await.is_err() {
                        this.lock().push(pipe);
                    }
                });
            }
            Err(_) => this.lock().push(pipe),
        }
    }

    async fn retry(&self, redis: &Redis) {
        let pending = std::mem::take(&mut *self.lock());
        for pipe in pending {
            if redis.pipe::<redis::Value>(&pipe).await.is_err() {
                self.lock().push(pipe);
            }
        }
    }
}

/// Starts the node's lease and listener.
pub(super) fn spawn(
    directory: Arc<RedisDirectory>,
    lease: Duration,
    orphans: mpsc::Sender<Orphan>,
    shutdown: CancellationToken,
) -> redis::RedisResult<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    let subscriber = directory.redis().subscriber(tx)?;
    tokio::spawn(listen(directory.clone(), subscriber.clone(), rx, shutdown.clone()));
    tokio::spawn(renew(directory.clone(), lease, shutdown.clone()));
    tokio::spawn(look_after(directory, subscriber, lease, orphans, shutdown));
    Ok(())
}

async fn listen(
    directory: Arc<RedisDirectory>,
    mut subscriber: ConnectionManager,
    mut messages: mpsc::UnboundedReceiver<redis::PushInfo>,
    shutdown: CancellationToken,
) {
    let stops = keys::stops(directory.node());
    loop {
        let subscribed = async {
            bounded(subscriber.subscribe(&stops)).await?;
            bounded(subscriber.subscribe(keys::STARTS)).await
        };
        match subscribed.await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, "subscribing to the cluster's channels failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
    loop {
        let message = tokio::select! {
            m = messages.recv() => m,
            _ = shutdown.cancelled() => return,
        };
        let Some(message) = message else { return };
        if message.kind != PushKind::Message || message.data.len() < 2 {
            continue;
        }
        let channel: String = redis::from_redis_value_ref(&message.data[0]).unwrap_or_default();
        let payload: String = redis::from_redis_value_ref(&message.data[1]).unwrap_or_default();
        if channel == stops {
            if let Ok(id) = Uuid::parse_str(&payload) {
                directory.local().stop(id, StopReason::User).await;
            }
        } else if let Some((answer, node)) = heard(&payload)
            && node != directory.node()
        {
            directory.heard_start(answer);
        }
    }
}

/// Renews this node's lease every third of a lease, and nothing else, so that no other
/// Redis work (however slow after a reconnect) delays it.
async fn renew(directory: Arc<RedisDirectory>, lease: Duration, shutdown: CancellationToken) {
    let redis = directory.redis().clone();
    let node = directory.node().to_owned();
    let mut renewals: u64 = 0;
    let mut tick = tokio::time::interval(lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => {
                // Every answer here has ended by now: the node leaves at once.
                let mut pipe = redis::pipe();
                pipe.cmd("DEL").arg(keys::lease(&node)).cmd("SREM").arg(keys::NODES).arg(&node);
                let _ = redis.pipe::<redis::Value>(&pipe).await;
                return;
            }
        }
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(keys::lease(&node)).arg(1).arg("PX").arg(lease.as_millis() as u64).arg("GET");
        pipe.cmd("SADD").arg(keys::NODES).arg(&node).ignore();
        let held = match redis.pipe::<(Option<String>,)>(&pipe).await {
            Ok((held,)) => held.is_some(),
            Err(e) => {
                tracing::warn!(error = %e, "renewing this node's lease in redis failed");
                continue;
            }
        };
        if !held && renewals > 0 {
            // The lease was gone (Redis restarted empty, or this node was cut off for a
            // lease): list this node's answers and claims again.
            relist(&directory).await;
        }
        renewals += 1;
    }
}

/// Every third of a lease: keeps the listener's connection alive, retries failed
/// cleanups, and takes over the nodes whose lease is missing on two checks in a row
/// (one late renewal of a live node is not taken for its death).
async fn look_after(
    directory: Arc<RedisDirectory>,
    mut subscriber: ConnectionManager,
    lease: Duration,
    orphans: mpsc::Sender<Orphan>,
    shutdown: CancellationToken,
) {
    let redis = directory.redis().clone();
    let adopting: Arc<Mutex<HashSet<Uuid>>> = Arc::default();
    let mut suspects = HashSet::new();
    let mut tick = tokio::time::interval(lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        // Keeps the listener's connection alive, reconnecting it after Redis came back.
        let _ = bounded(redis::cmd("PING").query_async::<redis::Value>(&mut subscriber)).await;
        directory.cleanups().retry(&redis).await;
        match take_over_dead(&directory, lease, &orphans, &adopting, &suspects).await {
            Ok(missing) => suspects = missing,
            Err(e) => tracing::warn!(error = %e, "looking for dead nodes failed"),
        }
    }
}

/// Lists this node's running answers and claims in Redis again.
async fn relist(directory: &RedisDirectory) {
    let (answers, claims) = directory.local().snapshot();
    let node = directory.node();
    let mut all = redis::pipe();
    for answer in &answers {
        let listed = super::redis_directory::listing(answer, node);
        for cmd in listed.cmd_iter() {
            all.add_command(cmd.clone()).ignore();
        }
    }
    for (user, n) in &claims {
        all.cmd("HSET").arg(keys::user_claims(user)).arg(node).arg(*n).ignore();
    }
    match directory.redis().pipe::<()>(&all).await {
        Ok(()) => tracing::warn!(answers = answers.len(), "this node's lease was gone; its answers are listed in redis again"),
        Err(e) => tracing::warn!(error = %e, "listing this node's answers in redis again failed"),
    }
}

/// Hands the answers of every node whose lease is missing now and was missing on the
/// last check (`suspects`) to the engine, once. Returns the nodes missing now.
async fn take_over_dead(
    directory: &RedisDirectory,
    lease: Duration,
    orphans: &mpsc::Sender<Orphan>,
    adopting: &Arc<Mutex<HashSet<Uuid>>>,
    suspects: &HashSet<String>,
) -> Result<HashSet<String>, super::redis_conn::RedisFailure> {
    let redis = directory.redis();
    let node = directory.node();
    let nodes: Vec<String> = redis.query(redis::cmd("SMEMBERS").arg(keys::NODES)).await?;
    let others: Vec<&String> = nodes.iter().filter(|n| n.as_str() != node).collect();
    if others.is_empty() {
        return Ok(HashSet::new());
    }
    let mut pipe = redis::pipe();
    for other in &others {
        pipe.cmd("EXISTS").arg(keys::lease(other));
    }
    let alive: Vec<bool> = redis.pipe(&pipe).await?;
    let missing: HashSet<String> = others.into_iter().zip(alive).filter(|(_, alive)| !alive).map(|(n, _)| n.clone()).collect();
    for dead in missing.iter().filter(|n| suspects.contains(*n)) {
        let take = redis::cmd("SET")
            .arg(keys::takeover(dead))
            .arg(node)
            .arg("NX")
            .arg("PX")
            .arg(lease.as_millis() as u64 * u64::from(TAKEOVER_FOR))
            .to_owned();
        if redis.query::<Option<String>>(&take).await?.is_none() {
            continue;
        }
        let ids: Vec<String> = redis.query(redis::cmd("SMEMBERS").arg(keys::node_answers(dead))).await?;
        if ids.is_empty() {
            let mut pipe = redis::pipe();
            pipe.cmd("SREM").arg(keys::NODES).arg(dead).cmd("DEL").arg(keys::node_answers(dead));
            redis.pipe::<redis::Value>(&pipe).await?;
            tracing::info!(node = %dead, "a dead node had no running answers left");
            continue;
        }
        let found = directory.answers(&ids).await.unwrap_or_default();
        let known: HashSet<String> = found.iter().map(|(a, _)| a.ids.message_id.to_string()).collect();
        let gone: Vec<&String> = ids.iter().filter(|id| !known.contains(*id)).collect();
        if !gone.is_empty() {
            redis.query::<i64>(redis::cmd("SREM").arg(keys::node_answers(dead)).arg(gone)).await?;
        }
        tracing::warn!(node = %dead, answers = found.len(), "a node's lease lapsed; closing its answers");
        for (answer, _) in found {
            let id = answer.ids.message_id;
            if !adopting.lock().unwrap_or_else(|p| p.into_inner()).insert(id) {
                continue;
            }
            let done = {
                let (directory_answer, dead, adopting) = (answer.clone(), dead.clone(), adopting.clone());
                let (redis, cleanups) = (redis.clone(), directory.cleanups().clone());
                Guard::new(move || {
                    adopting.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                    cleanups.run(redis, super::redis_directory::removal(&directory_answer, &dead));
                })
            };
            if orphans.send(Orphan { answer, done }).await.is_err() {
                return Ok(missing);
            }
        }
    }
    Ok(missing)
}

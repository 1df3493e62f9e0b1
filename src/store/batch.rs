//! Group commit: the turns of `chat:start`s that arrive together are written in one
//! transaction. One writer task per engine takes turns from a queue; when the database
//! is idle the first turn is written at once, alone (no timer: an idle start waits for
//! nothing), and the turns that arrive while writes are in flight wait for a place at
//! the [`WriteGate`], then go together, up to [`MAX_BATCH`] (and [`MAX_BATCH_BYTES`]) in
//! one transaction.
//!
//! A batch that fails as a whole (a repeated `clientMessageId`, a row the database
//! refuses) is written again turn by turn, each in its own transaction, so a bad turn
//! fails only itself, with the error it would have had alone. A batch that cannot reach
//! the database fails every turn with that error at once: trying each again would only
//! wait for the pool once per turn.
//!
//! Nothing in a batch waits for a second pooled connection: every statement runs on
//! the batch's own transaction, and the callers hold no connection while they wait, so a
//! pool of one (SQLite's) cannot deadlock.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicUsize, Ordering},
    },
    time::Duration,
};

use sea_orm::{DatabaseConnection, DbErr, TransactionTrait};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::{
    StoreError, is_transient,
    turns::{ChatBegun, NewIds, NewTurn, begin_chat_with, write_turns},
};

/// Most turns written in one transaction.
pub const MAX_BATCH: usize = 32;

/// Most bytes a batch's rows may weigh, as [`turn_bytes`] estimates them. PostgreSQL's
/// driver does not set `TCP_NODELAY`, so a statement longer than a TCP segment (64 KiB
/// on loopback) may wait for a delayed ACK, about 40 ms each time: the insert of 48
/// short turns took 90 ms where 40 took 9 ms. A turn longer than that goes alone.
pub const MAX_BATCH_BYTES: usize = 56_000;

/// A turn's share of its batch's statements: about 1.5 KB of placeholders, parameter
/// types and values for its two rows (measured), plus its text and its images.
fn turn_bytes((turn, _): &(NewTurn, NewIds)) -> usize {
    let keys = turn.client_message_id.as_ref().map_or(0, String::len) + turn.preset.as_ref().map_or(0, String::len);
    let images = turn.attachments.as_ref().map_or(0, String::len);
    1_500 + turn.message.len() + turn.model.len() + keys + images
}

/// The database's places for writes, and the queue in front of them: what the engine's
/// headroom watches (`OVERLOAD_DB_QUEUE`, `OVERLOAD_DB_WAIT_MS`). A batch, whatever its
/// size, holds one place.
#[derive(Clone, Debug)]
pub struct WriteGate {
    places: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    max_waiting: usize,
    max_wait: Duration,
}

impl WriteGate {
    /// `places` writes at once (the pool's size); at most `max_waiting` jobs wait (0: no
    /// bound), each at most `max_wait`.
    pub fn new(places: usize, max_waiting: usize, max_wait: Duration) -> Self {
        let places = Arc::new(Semaphore::new(places.max(1)));
        Self { places, waiting: Arc::default(), max_waiting, max_wait }
    }

    /// Jobs waiting for a place now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// True when `max_waiting` jobs wait already.
    pub fn full(&self) -> bool {
        self.max_waiting > 0 && self.waiting() >= self.max_waiting
    }

    /// Counts one more waiting job, unless the queue is full.
    fn enter(&self) -> bool {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting && self.max_waiting > 0 {
            self.leave();
            return false;
        }
        true
    }

    fn leave(&self) {
        self.waiting.fetch_sub(1, Ordering::AcqRel);
    }

    /// A place for one write of its own (not batched), or `None` when the queue is full
    /// or none frees within `max_wait`.
    pub async fn place(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = self.places.clone().try_acquire_owned() {
            return Some(permit);
        }
        if !self.enter() {
            return None;
        }
        let waited = tokio::time::timeout(self.max_wait, self.places.clone().acquire_owned()).await;
        self.leave();
        waited.ok().and_then(Result::ok)
    }
}

/// Why a job was not written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refused {
    /// The queue was full: refused at once.
    Full,
    /// No batch took it within the gate's `max_wait`; it will not be written.
    TimedOut,
    /// The writer task is gone.
    Stopped,
}

const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const ABANDONED: u8 = 2;

/// A job's place in the queue: taken by a batch, or abandoned by its caller (a timeout,
/// a dropped future), whichever comes first; only the first counts it out.
struct Place {
    state: Arc<AtomicU8>,
    gate: WriteGate,
}

impl Place {
    fn settle(state: &AtomicU8, gate: &WriteGate, to: u8) -> bool {
        let settled = state.compare_exchange(QUEUED, to, Ordering::AcqRel, Ordering::Acquire).is_ok();
        if settled {
            gate.leave();
        }
        settled
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        Self::settle(&self.state, &self.gate, ABANDONED);
    }
}

struct Job<T, R> {
    item: T,
    state: Arc<AtomicU8>,
    reply: oneshot::Sender<R>,
}

/// Gathers jobs into batches and hands each batch to `write`, one place of the gate per
/// batch: the general part, with no database in it.
struct Batcher<T, R> {
    jobs: mpsc::UnboundedSender<Job<T, R>>,
    gate: WriteGate,
}

/// How much one batch may take: `items` at most, weighing `weight` at most by `weigh`
/// (the first item goes whatever it weighs).
struct Bounds<T> {
    items: usize,
    weight: usize,
    weigh: fn(&T) -> usize,
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// Starts the task; it ends when the batcher is dropped. `write` gives one result
    /// per item, in order.
    fn spawn<W, F>(gate: WriteGate, bounds: Bounds<T>, write: W) -> Self
    where
        W: Fn(Vec<T>) -> F + Send + 'static,
        F: Future<Output = Vec<R>> + Send + 'static,
    {
        let (jobs, mut queue) = mpsc::unbounded_channel::<Job<T, R>>();
        let places = gate.clone();
        tokio::spawn(async move {
            // The job that did not fit in the last batch: the first of the next.
            let mut carried = None;
            loop {
                let Some(first) = (match carried.take() {
                    Some(job) => Some(job),
                    None => queue.recv().await,
                }) else {
                    return;
                };
                let Ok(permit) = places.places.clone().acquire_owned().await else { return };
                // Whatever queued while no place was free goes together.
                let (mut taken, mut weight) = (Vec::new(), 0);
                let mut next = Some(first);
                while let Some(job) = next.take() {
                    let w = (bounds.weigh)(&job.item);
                    if !taken.is_empty() && weight + w > bounds.weight {
                        carried = Some(job);
                        break;
                    }
                    if Place::settle(&job.state, &places, TAKEN) {
                        weight += w;
                        taken.push(job);
                    }
                    if taken.len() < bounds.items.max(1) {
                        next = queue.try_recv().ok();
                    }
                }
                if taken.is_empty() {
                    continue;
                }
                let (items, replies): (Vec<T>, Vec<_>) = taken.into_iter().map(|j| (j.item, j.reply)).unzip();
                let written = write(items);
                tokio::spawn(async move {
                    let results = written.await;
                    drop(permit);
                    for (reply, result) in replies.into_iter().zip(results) {
                        // A caller that went away: its turn is stored, its answer row
                        // left `streaming` is swept as any interrupted one.
                        let _ = reply.send(result);
                    }
                });
            }
        });
        Self { jobs, gate }
    }

    /// Queues `item` and waits for its result.
    async fn submit(&self, item: T) -> Result<R, Refused> {
        if !self.gate.enter() {
            return Err(Refused::Full);
        }
        let place = Place { state: Arc::new(AtomicU8::new(QUEUED)), gate: self.gate.clone() };
        let (reply, mut answer) = oneshot::channel();
        if self.jobs.send(Job { item, state: place.state.clone(), reply }).is_err() {
            return Err(Refused::Stopped);
        }
        match tokio::time::timeout(self.gate.max_wait, &mut answer).await {
            Ok(result) => result.map_err(|_| Refused::Stopped),
            Err(_) if Place::settle(&place.state, &place.gate, ABANDONED) => Err(Refused::TimedOut),
            // Taken just now: its write has begun, so its result is awaited.
            Err(_) => answer.await.map_err(|_| Refused::Stopped),
        }
    }
}

type TurnResult = Result<ChatBegun, StoreError>;

/// The engine's writer of `chat:start` turns (group commit); cheap to share.
pub struct TurnWriter(Batcher<(NewTurn, NewIds), TurnResult>);

impl TurnWriter {
    /// Starts the writer over `db`, at most `max_batch` turns a transaction (and at most
    /// [`MAX_BATCH_BYTES`]); `observe`
    /// is told the size of each batch (its metrics). It stops when dropped.
    pub fn spawn(db: DatabaseConnection, gate: WriteGate, max_batch: usize, observe: impl Fn(usize) + Send + Sync + 'static) -> Self {
        let observe = Arc::new(observe);
        let bounds = Bounds { items: max_batch, weight: MAX_BATCH_BYTES, weigh: turn_bytes };
        Self(Batcher::spawn(gate, bounds, move |turns: Vec<(NewTurn, NewIds)>| {
            observe(turns.len());
            let db = db.clone();
            async move { write_batch(&db, &turns).await }
        }))
    }

    /// Stores the turn, with the turns queued beside it. [`StoreError::Overloaded`] when
    /// the queue is full or no batch took it in time: nothing of it is written then.
    pub async fn write(&self, turn: NewTurn, ids: NewIds) -> TurnResult {
        match self.0.submit((turn, ids)).await {
            Ok(result) => result,
            Err(Refused::Full | Refused::TimedOut) => Err(StoreError::Overloaded),
            Err(Refused::Stopped) => Err(DbErr::Custom("the turn writer stopped".into()).into()),
        }
    }
}

/// Writes `turns` in one transaction; when that fails, each in its own (see the module).
async fn write_batch(db: &DatabaseConnection, turns: &[(NewTurn, NewIds)]) -> Vec<TurnResult> {
    if let [(turn, ids)] = turns {
        return vec![begin_chat_with(db, turn, *ids).await];
    }
    let refs: Vec<(&NewTurn, NewIds)> = turns.iter().map(|(turn, ids)| (turn, *ids)).collect();
    let together = async {
        let txn = db.begin().await?;
        let results = write_turns(&txn, &refs).await?;
        txn.commit().await?;
        Ok::<_, StoreError>(results)
    };
    match together.await {
        Ok(results) => results,
        Err(StoreError::Db(e)) if is_transient(&e) => turns.iter().map(|_| Err(StoreError::Db(e.clone()))).collect(),
        Err(_) => {
            let mut results = Vec::with_capacity(turns.len());
            for (turn, ids) in turns {
                results.push(begin_chat_with(db, turn, *ids).await);
            }
            results
        }
    }
}

#[cfg(test)]
#[path = "batch_tests.rs"]
mod tests;

//! Delivery to one socket: one task per socket and answer reads the answer's log at its
//! own offset and emits what it reads.
//!
//! socketioxide's `emit` does not wait: a full buffer returns an error and the packet is
//! gone. The task then keeps that one frame, waits a little and sends it again; the log
//! goes on growing meanwhile, and its next read returns everything since, joined. So a
//! slow socket gets fewer, larger frames, never a gap, and holds up nobody else.
//! Frames carry at most `SOCKET_BUFFER_BYTES / SOCKET_BUFFER_PACKETS` bytes of text, and
//! a socket has at most one reader per answer.
//!
//! What has gone out on a socket stays counted: a connection is reliable and ordered,
//! so text sent again on the same socket is a replay. A socket may replay at most
//! `SOCKET_BUFFER_BYTES` in its life (`RATE_LIMIT` beyond), so a client that asks for the
//! same answer again and again without reading cannot make the server queue copy after
//! copy (the transport below moves queued packets on into buffers it does not bound).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use socketioxide::{SendError, SocketError, extract::SocketRef};
use tokio::{task::AbortHandle, time::Instant};
use uuid::Uuid;

use super::observer::Observer;
use crate::{
    chat::AnswerIds,
    cluster::{Entry, LogReader},
    transport::Wire,
    transport::events::{Chunk, final_event},
};

/// How soon a frame that met a full buffer is tried again, at first.
const FULL_BUFFER_RETRY: Duration = Duration::from_millis(10);
/// The longest wait between two tries.
const FULL_BUFFER_RETRY_MAX: Duration = Duration::from_millis(100);
/// How long a socket may refuse frames before its reader gives up (it can resume later).
const STALL_LIMIT: Duration = Duration::from_secs(30);

/// What a socket reads: one reader per answer, and the conversations it follows.
#[derive(Clone, Default)]
pub struct Subscriptions(Arc<Mutex<Inner>>);

#[derive(Default)]
struct Inner {
    /// Per answer: the reader's number, its task, and the followed conversation it came from.
    readers: HashMap<Uuid, (u64, AbortHandle, Option<Uuid>)>,
    follows: HashMap<Uuid, AbortHandle>,
    numbers: u64,
    /// Per answer: how far it has gone out on this socket (UTF-16), and the final
    /// event's size once that went out too.
    sent: HashMap<Uuid, (u64, Option<u64>)>,
    /// UTF-16 units replayed so far.
    replayed: u64,
}

/// Answers whose progress a socket remembers; past this, the oldest memory is dropped.
const SENT_REMEMBERED: usize = 1024;

impl Subscriptions {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Entries are inserted and removed whole; a poisoned map is still consistent.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The socket's subscriptions.
    pub fn of(socket: &SocketRef) -> Self {
        socket.extensions.get::<Self>().unwrap_or_default()
    }

    /// True when the socket already reads this answer.
    pub fn reads(&self, message_id: Uuid) -> bool {
        self.lock().readers.contains_key(&message_id)
    }

    /// Counts a replay of `message_id` from `offset` against the socket's `budget`.
    /// False when the replay would exceed it.
    pub fn allow_replay(&self, message_id: Uuid, offset: u64, budget: u64) -> bool {
        let mut inner = self.lock();
        let Some(&(sent, final_len)) = inner.sent.get(&message_id) else { return true };
        let again = sent.saturating_sub(offset) + final_len.unwrap_or(0);
        if inner.replayed + again > budget {
            return false;
        }
        inner.replayed += again;
        true
    }

    fn record(&self, message_id: Uuid, end: u64, final_len: Option<u64>) {
        let mut inner = self.lock();
        if inner.sent.len() >= SENT_REMEMBERED && !inner.sent.contains_key(&message_id) {
            inner.sent.clear();
        }
        let entry = inner.sent.entry(message_id).or_default();
        entry.0 = entry.0.max(end);
        if final_len.is_some() {
            entry.1 = final_len;
        }
    }

    /// Ends the socket's reader of this answer, if any.
    pub fn stop_reading(&self, message_id: Uuid) {
        if let Some((_, task, _)) = self.lock().readers.remove(&message_id) {
            task.abort();
        }
    }

    /// Records a follow task of `conversation_id`, replacing (ending) an earlier one.
    pub fn follow(&self, conversation_id: Uuid, task: AbortHandle) {
        if let Some(old) = self.lock().follows.insert(conversation_id, task) {
            old.abort();
        }
    }

    /// Stops following a conversation, and reading the answers the follow brought.
    pub fn leave(&self, conversation_id: Uuid) {
        let mut inner = self.lock();
        if let Some(task) = inner.follows.remove(&conversation_id) {
            task.abort();
        }
        inner.readers.retain(|_, (_, task, via)| {
            let keep = *via != Some(conversation_id);
            if !keep {
                task.abort();
            }
            keep
        });
    }

    /// Ends every task of the socket (it disconnected).
    pub fn close(&self) {
        let mut inner = self.lock();
        for (_, (_, task, _)) in inner.readers.drain() {
            task.abort();
        }
        for (_, task) in inner.follows.drain() {
            task.abort();
        }
    }
}

/// Starts delivering `reader` to `socket`, replacing the socket's earlier reader of the
/// same answer. `via` is the followed conversation that brought it, if any.
pub fn deliver(wire: &Wire, socket: &SocketRef, ids: AnswerIds, reader: Box<dyn LogReader>, via: Option<Uuid>) {
    let frame_max = wire.config.frame_max_bytes();
    let subscriptions = Subscriptions::of(socket);
    let observer = Observer::of(socket);
    // Spawned under the lock, so the task cannot end (and remove itself) before it is listed.
    let mut inner = subscriptions.lock();
    inner.numbers += 1;
    let number = inner.numbers;
    let task = wire.deliveries.spawn({
        let (socket, subscriptions) = (socket.clone(), subscriptions.clone());
        async move {
            run(&socket, &subscriptions, ids, reader, frame_max, observer).await;
            let mut inner = subscriptions.lock();
            if inner.readers.get(&ids.message_id).is_some_and(|(n, _, _)| *n == number) {
                inner.readers.remove(&ids.message_id);
            }
        }
    });
    if let Some((_, old, _)) = inner.readers.insert(ids.message_id, (number, task.abort_handle(), via)) {
        old.abort();
    }
}

/// Reads and emits until the final event is out, the socket is gone, or it stalls.
async fn run(
    socket: &SocketRef,
    subscriptions: &Subscriptions,
    ids: AnswerIds,
    mut reader: Box<dyn LogReader>,
    frame_max: usize,
    observer: Option<Observer>,
) {
    let mut seq = 0;
    let mut held: Option<Entry> = None;
    let mut stalled_since: Option<Instant> = None;
    let mut retry = FULL_BUFFER_RETRY;
    loop {
        let entry = match held.take() {
            Some(entry) => entry,
            None => match reader.next(frame_max).await {
                Some(entry) => entry,
                None => return,
            },
        };
        let sent = match &entry {
            Entry::Text { text, offset, .. } => {
                let chunk = Chunk::new(ids, text, *offset, seq);
                socket.emit("chat:message", &chunk).inspect(|()| {
                    if let Some(o) = &observer {
                        o.sent(socket.id, "chat:message", &chunk);
                    }
                })
            }
            Entry::Final(ending) => {
                let (name, payload) = final_event(ids, ending);
                socket.emit(name, &payload).inspect(|()| {
                    if let Some(o) = &observer {
                        o.sent(socket.id, name, &payload);
                    }
                })
            }
        };
        match sent {
            Ok(()) => {
                match &entry {
                    Entry::Text { end, .. } => subscriptions.record(ids.message_id, *end, None),
                    Entry::Final(ending) => {
                        return subscriptions.record(ids.message_id, ending.length, Some(ending.length));
                    }
                }
                seq += 1;
                stalled_since = None;
                retry = FULL_BUFFER_RETRY;
            }
            Err(SendError::Socket(SocketError::InternalChannelFull)) => {
                let since = *stalled_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= STALL_LIMIT {
                    tracing::warn!(sid = %socket.id, message_id = %ids.message_id, "socket too slow; its reader gives up");
                    return;
                }
                held = Some(entry);
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(FULL_BUFFER_RETRY_MAX);
            }
            Err(e) => {
                tracing::debug!(sid = %socket.id, error = %e, "socket gone; delivery ends");
                return;
            }
        }
    }
}

//! Generations: one model answer each, owned by the [`Registry`] (keyed by message
//! id), not by the socket that asked for it.
//!
//! A generation reads the upstream stream, keeps the whole text, and delivers it to
//! the sockets in the room `conversation:<id>`. Each socket has its own cursor: when
//! socketioxide's `emit` fails because a socket's buffer is full, the text stays
//! pending and goes out joined into that socket's next chunk, so nothing is dropped
//! and order holds (one task emits). The database is written at the start, at
//! periodic checkpoints and once at the end.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::FutureExt;
use serde::Serialize;
use socketioxide::{SendError, SocketError, SocketIo, extract::SocketRef, socket::Sid};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    app::AppState,
    error::{ChatError, ErrorCode},
    gateway::NAMESPACE,
    protocol::{Chunk, End, ErrorEvent, Stopped, utf16_len},
    store::{self, AnswerEnd, Usage, status},
    upstream::{OpeningStream, Piece, UpstreamError},
};

/// How soon text that met a full socket buffer is tried again.
const FULL_BUFFER_RETRY: Duration = Duration::from_millis(10);
/// Most upstream pieces joined into one chunk, so one busy answer yields to the others.
const MAX_PIECES_PER_CHUNK: usize = 64;
/// How long a final event keeps being retried into a full socket buffer.
const FINAL_DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a generation was cut short.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// `chat:stop`.
    User,
    /// The starting socket left and `ON_DISCONNECT=cancel`.
    Disconnect,
    /// The server is shutting down and the grace period is over.
    Shutdown,
}

/// The registry's view of a running generation: enough to find and stop it.
pub struct GenerationHandle {
    pub message_id: Uuid,
    pub conversation_id: Uuid,
    pub user_id: String,
    /// The socket that started it.
    pub origin: Sid,
    cancel: CancellationToken,
    reason: OnceLock<StopReason>,
    /// The answer's length so far in UTF-16 units, for `chat:active`.
    offset: AtomicU64,
    /// Requests to the generation's task (attaching a socket at an offset).
    commands: mpsc::UnboundedSender<Attach>,
}

/// Asks a running generation to deliver to `socket` from `offset` (UTF-16 units) on.
pub struct Attach {
    pub socket: SocketRef,
    pub offset: u64,
    /// Answered once the socket is attached and the missed text has been sent, with the
    /// offset really used (clamped to the text and to a character boundary).
    pub done: oneshot::Sender<u64>,
}

impl GenerationHandle {
    /// The answer's length so far, in UTF-16 units.
    pub fn offset(&self) -> u64 {
        self.offset.load(Ordering::Relaxed)
    }

    /// Attaches `socket` from `offset`: it gets the text it missed as one chunk, then
    /// the live ones. Gives the offset used, or `None` when the generation has already
    /// finished (read the row).
    pub async fn attach(&self, socket: SocketRef, offset: u64) -> Option<u64> {
        let (done, attached) = oneshot::channel();
        self.commands.send(Attach { socket, offset, done }).ok()?;
        attached.await.ok()
    }

    /// Asks the generation to stop; the first reason given wins.
    pub fn stop(&self, reason: StopReason) {
        let _ = self.reason.set(reason);
        self.cancel.cancel();
    }
}

/// Every running generation on this node, and which socket runs which.
#[derive(Default)]
pub struct Registry {
    inner: Mutex<RegistryInner>,
    /// Notified whenever a generation ends, for shutdown to wait on.
    ended: tokio::sync::Notify,
}

#[derive(Default)]
struct RegistryInner {
    generations: HashMap<Uuid, Arc<GenerationHandle>>,
    /// A socket's running generation; `None` while its `chat:start` is being stored.
    sockets: HashMap<Sid, Option<Uuid>>,
    /// Claims held per user; users with none are removed.
    per_user: HashMap<String, usize>,
}

/// A socket's right to run one generation. Released when dropped.
pub struct SocketClaim {
    registry: Arc<Registry>,
    sid: Sid,
    user: String,
}

impl Drop for SocketClaim {
    fn drop(&mut self) {
        let mut inner = self.registry.lock();
        inner.sockets.remove(&self.sid);
        if let Some(n) = inner.per_user.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                inner.per_user.remove(&self.user);
            }
        }
    }
}

/// Why a claim was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimRefused {
    /// This socket already runs a generation.
    Busy,
    /// The user runs as many generations as allowed.
    UserLimit,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, RegistryInner> {
        // A panic while holding this lock cannot leave the maps inconsistent; keep serving.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Claims `sid` for a new generation of `user`, who may run at most `per_user_limit` at once.
    pub fn claim_socket(self: &Arc<Self>, sid: Sid, user: &str, per_user_limit: usize) -> Result<SocketClaim, ClaimRefused> {
        let mut inner = self.lock();
        if inner.sockets.contains_key(&sid) {
            return Err(ClaimRefused::Busy);
        }
        let running = inner.per_user.get(user).copied().unwrap_or(0);
        if running >= per_user_limit {
            return Err(ClaimRefused::UserLimit);
        }
        inner.per_user.insert(user.to_owned(), running + 1);
        inner.sockets.insert(sid, None);
        Ok(SocketClaim { registry: self.clone(), sid, user: user.to_owned() })
    }

    /// Users holding a claim now (for tests: it empties when they finish).
    pub fn users_tracked(&self) -> usize {
        self.lock().per_user.len()
    }

    fn insert(&self, handle: Arc<GenerationHandle>) {
        let mut inner = self.lock();
        inner.sockets.insert(handle.origin, Some(handle.message_id));
        inner.generations.insert(handle.message_id, handle);
    }

    fn remove(&self, message_id: Uuid) {
        self.lock().generations.remove(&message_id);
        self.ended.notify_waiters();
    }

    /// A running generation by message id.
    pub fn get(&self, message_id: Uuid) -> Option<Arc<GenerationHandle>> {
        self.lock().generations.get(&message_id).cloned()
    }

    /// The generation a socket is running, if any.
    pub fn by_socket(&self, sid: Sid) -> Option<Arc<GenerationHandle>> {
        let inner = self.lock();
        let id = (*inner.sockets.get(&sid)?)?;
        inner.generations.get(&id).cloned()
    }

    /// The running generations of `user`, oldest first.
    pub fn of_user(&self, user: &str) -> Vec<Arc<GenerationHandle>> {
        let mut found: Vec<_> = self.lock().generations.values().filter(|g| g.user_id == user).cloned().collect();
        found.sort_by_key(|g| g.message_id);
        found
    }

    /// The running generation of a conversation, if any.
    pub fn in_conversation(&self, conversation_id: Uuid) -> Option<Arc<GenerationHandle>> {
        self.lock().generations.values().find(|g| g.conversation_id == conversation_id).cloned()
    }

    /// How many generations run now.
    pub fn len(&self) -> usize {
        self.lock().generations.len()
    }

    /// True when nothing runs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops every running generation.
    pub fn stop_all(&self, reason: StopReason) {
        for handle in self.lock().generations.values() {
            handle.stop(reason);
        }
    }

    /// Waits until no generation runs, or `limit` passes. True when empty.
    pub async fn wait_empty(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let ended = self.ended.notified();
            if self.is_empty() {
                return true;
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                return self.is_empty();
            }
        }
    }
}

/// The room a conversation's answers are delivered to.
pub fn room(conversation_id: Uuid) -> String {
    format!("conversation:{conversation_id}")
}

/// Everything a generation needs to run, fixed at `chat:start`.
pub struct GenerationSpec {
    pub message_id: Uuid,
    pub conversation_id: Uuid,
    pub user_id: String,
    pub origin: Sid,
    pub model: String,
    /// The upstream request, started while the turn was being stored.
    pub upstream: OpeningStream,
}

/// Registers and spawns a generation; the claim is released when it ends.
pub fn spawn(app: AppState, io: SocketIo, spec: GenerationSpec, claim: SocketClaim) {
    let (commands, attach_requests) = mpsc::unbounded_channel();
    let handle = Arc::new(GenerationHandle {
        message_id: spec.message_id,
        conversation_id: spec.conversation_id,
        user_id: spec.user_id,
        origin: spec.origin,
        cancel: CancellationToken::new(),
        reason: OnceLock::new(),
        offset: AtomicU64::new(0),
        commands,
    });
    app.registry.insert(handle.clone());
    let generation = Generation {
        room: room(spec.conversation_id),
        model: spec.model,
        handle,
        app,
        io,
        text: String::new(),
        text_utf16: 0,
        cursors: HashMap::new(),
        attach_requests,
    };
    tokio::spawn(generation.run(spec.upstream, claim));
}

/// Where one socket is in the answer.
#[derive(Default)]
struct Cursor {
    /// Bytes of the text already delivered.
    sent: usize,
    /// The same, in UTF-16 units (the wire's `offset`).
    sent_utf16: u64,
    /// Next `seq`.
    seq: u64,
}

/// What the upstream said about the end of its answer.
#[derive(Default)]
struct StreamEnd {
    finish_reason: Option<String>,
    usage: Option<Usage>,
    /// The stream is over.
    done: bool,
}

/// How the upstream part of a generation ended.
enum Outcome {
    Complete { finish_reason: String, usage: Option<Usage> },
    Stopped(StopReason),
    Failed(UpstreamError),
}

struct Generation {
    handle: Arc<GenerationHandle>,
    app: AppState,
    io: SocketIo,
    room: String,
    model: String,
    /// The whole answer so far: what is stored and what every socket ends with.
    text: String,
    text_utf16: u64,
    cursors: HashMap<Sid, Cursor>,
    attach_requests: mpsc::UnboundedReceiver<Attach>,
}

impl Generation {
    async fn run(mut self, upstream: OpeningStream, claim: SocketClaim) {
        let outcome = self.stream(upstream).await;
        let (status, finish_reason, usage) = match &outcome {
            Outcome::Complete { finish_reason, usage } => (status::COMPLETE, finish_reason.as_str(), *usage),
            Outcome::Stopped(StopReason::User | StopReason::Disconnect) => (status::STOPPED, "stopped", None),
            Outcome::Stopped(StopReason::Shutdown) => (status::ERROR, "shutdown", None),
            Outcome::Failed(_) => (status::ERROR, "error", None),
        };
        let error_code = match &outcome {
            Outcome::Complete { .. } | Outcome::Stopped(StopReason::User | StopReason::Disconnect) => None,
            Outcome::Stopped(StopReason::Shutdown) => Some(ErrorCode::Unavailable),
            Outcome::Failed(cause) => Some(cause.to_chat_error().code),
        };
        let end = AnswerEnd { content: &self.text, status, finish_reason, model: &self.model, usage, error_code };
        self.app.checkpoints.forget(self.handle.message_id);
        let stored = self.store_end(&end).await;

        // The socket is free before the final event leaves, so the next chat:start never sees BUSY.
        self.app.registry.remove(self.handle.message_id);
        drop(claim);
        // Sockets that asked to attach until now get the end too; later ones read the stored row.
        while let Ok(request) = self.attach_requests.try_recv() {
            self.attach(request);
        }
        self.attach_requests.close();

        let ids = (self.handle.message_id, self.handle.conversation_id);
        match (stored, &outcome) {
            (false, _) => {
                let error = ChatError::code(ErrorCode::Unavailable);
                self.finish_with("chat:error", &error_event(&error, ids)).await;
            }
            (true, Outcome::Complete { finish_reason, usage }) => {
                let usage = usage.unwrap_or_default();
                let end = End {
                    message_id: ids.0,
                    conversation_id: ids.1,
                    total_tokens: usage.total_tokens,
                    model: &self.model,
                    finish_reason,
                    prompt_tokens: usage.prompt_tokens,
                    completion_tokens: usage.completion_tokens,
                    content: &self.text,
                };
                let end = to_value(&end);
                self.finish_with("chat:end", &end).await;
            }
            (true, Outcome::Stopped(StopReason::User | StopReason::Disconnect)) => {
                let stopped = to_value(&Stopped { message_id: ids.0, conversation_id: ids.1, content: &self.text });
                self.finish_with("chat:stopped", &stopped).await;
            }
            (true, Outcome::Stopped(StopReason::Shutdown)) => {
                let error = ChatError::new(ErrorCode::Unavailable, "the server is restarting; the partial answer is stored");
                self.finish_with("chat:error", &error_event(&error, ids)).await;
            }
            (true, Outcome::Failed(cause)) => {
                tracing::warn!(message_id = %ids.0, error = %cause, "upstream failed");
                self.finish_with("chat:error", &error_event(&cause.to_chat_error(), ids)).await;
            }
        }
    }

    /// Reads the upstream until it ends, fails or the generation is stopped.
    async fn stream(&mut self, mut opening: OpeningStream) -> Outcome {
        let handle = self.handle.clone();
        let stopped = || Outcome::Stopped(handle.reason.get().copied().unwrap_or(StopReason::User));
        // One cancellation future for the whole answer: making one per token costs a
        // lock and a waiter registration each time.
        let cancelled = handle.cancel.cancelled();
        tokio::pin!(cancelled);
        let mut upstream = tokio::select! {
            _ = &mut cancelled => return stopped(),
            opened = opening.opened() => match opened {
                Ok(s) => s,
                Err(e) => return Outcome::Failed(e),
            },
        };
        let mut checkpoint = tokio::time::interval(self.app.config.checkpoint_interval);
        checkpoint.tick().await;
        let mut checkpointed = 0;
        let mut end = StreamEnd::default();
        let window = self.app.config.stream_coalesce;
        // When pending text goes out next: after the coalescing window, or soon again
        // for a socket whose buffer was full (the upstream may pause for long).
        let mut flush_at: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                biased;
                _ = &mut cancelled => return stopped(),
                Some(request) = self.attach_requests.recv() => self.attach(request),
                _ = tokio::time::sleep_until(flush_at.unwrap_or_else(tokio::time::Instant::now)), if flush_at.is_some() => {
                    flush_at = (!self.deliver()).then(|| tokio::time::Instant::now() + FULL_BUFFER_RETRY);
                }
                _ = checkpoint.tick() => {
                    if self.text.len() != checkpointed {
                        checkpointed = self.text.len();
                        self.app.checkpoints.offer(self.handle.message_id, self.text.clone());
                    }
                }
                piece = upstream.next() => {
                    let before = self.text.len();
                    let mut next = Some(piece);
                    let mut taken = 0;
                    // Pieces that are already waiting join this chunk: when the server
                    // falls behind it sends fewer, larger frames, and never waits for more.
                    while let Some(piece) = next.take() {
                        match piece {
                            Ok(Some(piece)) => self.add_piece(piece, &mut end),
                            Ok(None) => end.done = true,
                            Err(e) => return Outcome::Failed(e),
                        }
                        taken += 1;
                        if !end.done && taken < MAX_PIECES_PER_CHUNK {
                            next = upstream.next().now_or_never();
                        }
                    }
                    if self.text.len() != before {
                        if window.is_zero() {
                            if !self.deliver() && flush_at.is_none() {
                                flush_at = Some(tokio::time::Instant::now() + FULL_BUFFER_RETRY);
                            }
                        } else if flush_at.is_none() {
                            flush_at = Some(tokio::time::Instant::now() + window);
                        }
                    }
                    if end.done {
                        break;
                    }
                }
            }
        }
        match end.finish_reason {
            Some(finish_reason) => Outcome::Complete { finish_reason, usage: end.usage },
            // Every OpenAI-compatible server ends an answer with a reason; a stream without one was cut.
            None => Outcome::Failed(UpstreamError::Failed("the stream ended without a finish reason".into())),
        }
    }

    /// Adds one upstream piece to the answer.
    fn add_piece(&mut self, piece: Piece, end: &mut StreamEnd) {
        if let Some(delta) = piece.delta {
            self.text.push_str(&delta);
            self.text_utf16 += utf16_len(&delta);
            self.handle.offset.store(self.text_utf16, Ordering::Relaxed);
        }
        end.finish_reason = piece.finish_reason.or(end.finish_reason.take());
        end.usage = piece.usage.or(end.usage);
    }

    /// Sets the socket's cursor at the requested offset, puts it in the room and sends
    /// what it missed at once.
    fn attach(&mut self, Attach { socket, offset, done }: Attach) {
        let (sent, sent_utf16) = byte_index(&self.text, offset);
        self.cursors.insert(socket.id, Cursor { sent, sent_utf16, seq: 0 });
        socket.join(self.room.clone());
        if let Err(e) = self.deliver_to(&socket) {
            tracing::debug!(sid = %socket.id, error = %e, "catch-up not delivered");
        }
        let _ = done.send(sent_utf16);
    }

    /// Writes the end of the answer, retrying briefly through a database blip.
    async fn store_end(&self, end: &AnswerEnd<'_>) -> bool {
        for attempt in 0..5u32 {
            match store::finish_answer(&self.app.db, self.handle.message_id, end).await {
                Ok(()) => return true,
                Err(e) => {
                    tracing::error!(message_id = %self.handle.message_id, attempt, error = %e, "storing the answer failed");
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
            }
        }
        false
    }

    fn sockets(&self) -> Vec<SocketRef> {
        self.io.of(NAMESPACE).map(|ns| ns.within(self.room.clone()).sockets()).unwrap_or_default()
    }

    /// Sends each socket in the room the text it has not had yet, without waiting.
    /// False when some socket's buffer was full and text is still pending for it.
    fn deliver(&mut self) -> bool {
        let mut all_sent = true;
        for socket in self.sockets() {
            match self.deliver_to(&socket) {
                Ok(sent) => all_sent &= sent,
                Err(e) => tracing::debug!(sid = %socket.id, error = %e, "chunk not delivered"),
            }
        }
        all_sent
    }

    /// One socket's pending text as one chunk. `Ok(true)` when nothing is pending any more.
    fn deliver_to(&mut self, socket: &SocketRef) -> Result<bool, SendError> {
        let cursor = self.cursors.entry(socket.id).or_default();
        if cursor.sent == self.text.len() {
            return Ok(true);
        }
        let chunk = Chunk {
            content: &self.text[cursor.sent..],
            is_complete: false,
            message_id: self.handle.message_id,
            conversation_id: self.handle.conversation_id,
            seq: cursor.seq,
            offset: cursor.sent_utf16,
        };
        match socket.emit("chat:message", &chunk) {
            Ok(()) => {
                cursor.sent = self.text.len();
                cursor.sent_utf16 = self.text_utf16;
                cursor.seq += 1;
                Ok(true)
            }
            // Full buffer: the text stays pending and joins the next chunk.
            Err(SendError::Socket(SocketError::InternalChannelFull)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Delivers the rest of the text and then the final event to every socket in the
    /// room, waiting out full buffers (bounded) since nothing may follow to carry them.
    async fn finish_with(&mut self, event: &str, payload: &serde_json::Value) {
        let deadline = tokio::time::Instant::now() + FINAL_DELIVERY_TIMEOUT;
        for socket in self.sockets() {
            let mut delay = Duration::from_millis(2);
            loop {
                let done = match self.deliver_to(&socket) {
                    Ok(true) => match socket.emit(event, payload) {
                        Ok(()) => true,
                        Err(SendError::Socket(SocketError::InternalChannelFull)) => false,
                        Err(e) => {
                            tracing::debug!(sid = %socket.id, error = %e, "final event not delivered");
                            true
                        }
                    },
                    Ok(false) => false,
                    Err(e) => {
                        tracing::debug!(sid = %socket.id, error = %e, "chunk not delivered");
                        true
                    }
                };
                if done {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    tracing::warn!(sid = %socket.id, message_id = %self.handle.message_id, "socket too slow; final event dropped");
                    break;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(100));
            }
        }
    }
}

/// The byte index of a UTF-16 offset in `text`, and the offset it really is: clamped to
/// the text's length and moved back to a character boundary.
pub fn byte_index(text: &str, offset: u64) -> (usize, u64) {
    let mut units = 0u64;
    for (i, c) in text.char_indices() {
        let next = units + c.len_utf16() as u64;
        if next > offset {
            return (i, units);
        }
        units = next;
    }
    (text.len(), units)
}

fn to_value<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

fn error_event(error: &ChatError, (message_id, conversation_id): (Uuid, Uuid)) -> serde_json::Value {
    to_value(&ErrorEvent {
        message: &error.message,
        code: error.code,
        message_id: Some(message_id),
        conversation_id: Some(conversation_id),
    })
}

#[cfg(test)]
mod tests {
    use super::byte_index;

    #[test]
    fn utf16_offsets_map_to_char_boundaries() {
        let text = "a😀é";
        assert_eq!(byte_index(text, 0), (0, 0));
        assert_eq!(byte_index(text, 1), (1, 1));
        assert_eq!(byte_index(text, 2), (1, 1), "inside a surrogate pair: back to its start");
        assert_eq!(byte_index(text, 3), (5, 3));
        assert_eq!(byte_index(text, 4), (7, 4));
        assert_eq!(byte_index(text, 99), (7, 4));
    }
}

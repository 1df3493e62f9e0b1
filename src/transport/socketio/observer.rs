//! What the `/ai` namespace lets a monitor (the admin view) see: its sockets' connects
//! and disconnects, and the events they receive and are sent.
//!
//! Off (no [`Observer`] given to [`super::layer`]) this costs one extension lookup per
//! event and nothing per chunk; on while nobody watches ([`Observer::watch`]), one atomic
//! load more. Watched, each notice is one `try_send` into a bounded channel: when the
//! monitor falls behind, notices are dropped and counted, so watching never holds up
//! the chat path.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::SystemTime,
};

use serde::Serialize;
use serde_json::Value;
use socketioxide::{
    extract::SocketRef,
    socket::{DisconnectReason, Sid},
};
use tokio::sync::mpsc;

/// Something that happened on an `/ai` socket.
#[derive(Debug)]
pub enum Notice {
    /// The socket passed authentication (it is connecting; its handlers are registered).
    Connected {
        socket: SocketRef,
        at: SystemTime,
    },
    Disconnected {
        sid: Sid,
        reason: DisconnectReason,
        at: SystemTime,
    },
    /// An event from the client, with its argument (`None`: none, or one that did not parse).
    Received {
        sid: Sid,
        event: &'static str,
        data: Option<Value>,
        at: SystemTime,
    },
    /// An event queued for the client.
    Sent {
        sid: Sid,
        event: &'static str,
        data: Value,
        at: SystemTime,
    },
}

/// The sending side of the monitor's channel; cheap to clone.
#[derive(Clone, Debug)]
pub struct Observer {
    notices: mpsc::Sender<Notice>,
    dropped: Arc<AtomicU64>,
    /// Live [`Watching`] guards: with none, nothing is reported.
    watchers: Arc<AtomicUsize>,
}

/// Someone watches while this lives (an admin socket holds one).
#[derive(Debug)]
pub struct Watching(Arc<AtomicUsize>);

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Observer {
    /// An observer whose channel holds `capacity` notices, and the monitor's end of it.
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<Notice>) {
        let (notices, receiver) = mpsc::channel(capacity.max(1));
        (Self { notices, dropped: Arc::default(), watchers: Arc::default() }, receiver)
    }

    /// Notices are sent while the returned guard lives (and any other).
    pub fn watch(&self) -> Watching {
        self.watchers.fetch_add(1, Ordering::Relaxed);
        Watching(self.watchers.clone())
    }

    fn watched(&self) -> bool {
        self.watchers.load(Ordering::Relaxed) > 0
    }

    /// Notices dropped because the monitor was behind (or gone).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn notify(&self, notice: Notice) {
        if self.watched() && self.notices.try_send(notice).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An event queued for socket `sid`.
    pub(super) fn sent<T: Serialize + ?Sized>(&self, sid: Sid, event: &'static str, data: &T) {
        if !self.watched() {
            return;
        }
        match serde_json::to_value(data) {
            Ok(data) => self.notify(Notice::Sent { sid, event, data, at: SystemTime::now() }),
            Err(e) => tracing::debug!(%sid, event, error = %e, "event not serializable for the monitor"),
        }
    }

    /// The observer of `socket`, when one watches.
    pub(super) fn of(socket: &SocketRef) -> Option<Self> {
        socket.extensions.get::<Self>()
    }
}

/// The namespace's observer, as socketioxide state (`None`: nobody watches).
#[derive(Clone, Default)]
pub(super) struct Watch(pub Option<Observer>);

/// When a watched socket connected (an extension of the socket).
#[derive(Clone, Copy, Debug)]
pub struct ConnectedAt(pub SystemTime);

/// A socket passed authentication: it is watched from now on.
pub(super) fn connected(socket: &SocketRef, watch: &Watch) {
    if let Some(observer) = &watch.0 {
        let at = SystemTime::now();
        socket.extensions.insert(observer.clone());
        socket.extensions.insert(ConnectedAt(at));
        observer.notify(Notice::Connected { socket: socket.clone(), at });
    }
}

/// An event arrived from the client.
pub(super) fn received(socket: &SocketRef, event: &'static str, data: Option<&Value>) {
    if let Some(observer) = Observer::of(socket) {
        let data = data.cloned();
        observer.notify(Notice::Received { sid: socket.id, event, data, at: SystemTime::now() });
    }
}

/// An event was queued for the client.
pub(super) fn sent<T: Serialize + ?Sized>(socket: &SocketRef, event: &'static str, data: &T) {
    if let Some(observer) = Observer::of(socket) {
        observer.sent(socket.id, event, data);
    }
}

/// The socket left.
pub(super) fn disconnected(socket: &SocketRef, reason: DisconnectReason) {
    if let Some(observer) = Observer::of(socket) {
        observer.notify(Notice::Disconnected { sid: socket.id, reason, at: SystemTime::now() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_channel_drops_and_counts_instead_of_waiting() {
        let (observer, mut receiver) = Observer::channel(2);
        let sid = Sid::new();
        observer.sent(sid, "chat:message", &1);
        assert!(receiver.try_recv().is_err(), "nobody watches: nothing is sent");
        let _watching = observer.watch();
        for _ in 0..5 {
            observer.sent(sid, "chat:message", &serde_json::json!({ "content": "x" }));
        }
        assert_eq!(observer.dropped(), 3);
        assert!(matches!(receiver.recv().await, Some(Notice::Sent { event: "chat:message", .. })));
        drop(receiver);
        observer.sent(sid, "chat:end", &1);
        assert_eq!(observer.dropped(), 4, "a monitor that is gone counts as dropped too");
    }
}

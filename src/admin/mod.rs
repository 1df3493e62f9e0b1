//! The admin view, on when `ADMIN_USERNAME` and `ADMIN_PASSWORD` are set (absent
//! otherwise: no `/admin` namespace, `/admin` is a 404):
//!
//! - [`namespace`]: the `@socket.io/admin-ui` server protocol on the `/admin` Socket.IO
//!   namespace, so the official UI shows the `/ai` sockets, their rooms and events;
//! - [`feed`]: what the `/ai` namespace's observer reports, forwarded to the admin
//!   sockets, with `server_stats` every two seconds;
//! - [`page`]: chatwire's own page at `/admin` (HTTP Basic): running answers with a stop
//!   button, tokens/s and errors over the last ten minutes ([`stats`]), the nodes.
//!
//! Everything here reads the engine and the Socket.IO handle; the chat path only pays
//! for the observer's `try_send`s.

mod feed;
mod login;
mod namespace;
mod page;
mod serialize;
mod stats;

use std::{
    sync::{Arc, atomic::AtomicU64},
    time::{Instant, SystemTime},
};

use axum::Router;
use socketioxide::SocketIo;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    config::Config,
    engine::Engine,
    transport::socketio::{Notice, Observer},
};

pub use login::ATTEMPTS_PER_MINUTE;

/// The Socket.IO namespace the admin UI connects to.
pub const NAMESPACE: &str = "/admin";
/// Notices the feed may have waiting before the observer drops new ones.
const FEED_CAPACITY: usize = 4096;

/// This process, as the admin view names it.
struct Node {
    id: String,
    hostname: String,
    pid: u32,
    started: Instant,
    started_at: SystemTime,
}

impl Node {
    fn this(config: &Config) -> Self {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
        Self { id: config.node_id.clone(), hostname, pid: std::process::id(), started: Instant::now(), started_at: SystemTime::now() }
    }
}

/// What the namespace, the feed and the page share.
struct Shared {
    login: login::Login,
    engine: Engine,
    io: SocketIo,
    node: Node,
    ring: Arc<stats::Ring>,
    observer: Observer,
    /// Admin events lost because an admin socket's buffer was full.
    undelivered: AtomicU64,
}

/// The admin view before it is started: the observer to give the `/ai` namespace.
pub struct Admin {
    login: login::Login,
    node: Node,
    observer: Observer,
    notices: mpsc::Receiver<Notice>,
}

impl Admin {
    /// The admin view, when the configuration turns it on.
    pub fn new(config: &Config) -> Option<Self> {
        let admin = config.admin.as_ref()?;
        let (observer, notices) = Observer::channel(FEED_CAPACITY);
        Some(Self { login: login::Login::new(admin), node: Node::this(config), observer, notices })
    }

    /// What the `/ai` namespace reports to.
    pub fn observer(&self) -> Observer {
        self.observer.clone()
    }

    /// Adds the `/admin` namespace to `io`, starts the feed, the sampler and (cluster mode)
    /// the publisher of this node's row (until
    /// `shutdown`), and gives the page's routes.
    pub fn start(self, io: &SocketIo, engine: Engine, shutdown: CancellationToken) -> Router {
        let Self { login, node, observer, notices } = self;
        login.spawn_sweeper(shutdown.clone());
        let ring = Arc::new(stats::Ring::default());
        stats::spawn_sampler(ring.clone(), engine.clone(), shutdown.clone());
        let shared = Arc::new(Shared { login, engine, io: io.clone(), node, ring, observer, undelivered: AtomicU64::new(0) });
        namespace::register(&shared);
        page::spawn_publisher(shared.clone(), shutdown.clone());
        tokio::spawn(feed::run(shared.clone(), notices, shutdown));
        page::router(shared)
    }
}

//! Start-up and shutdown: [`Application::build`] binds and connects everything,
//! [`Application::run_until`] serves until a shutdown future resolves. `main` and
//! the integration tests start the server the same way.

use std::{future::Future, io, net::SocketAddr, sync::Arc};

use axum::{Router, serve::ListenerExt};
use sea_orm::DatabaseConnection;
use socketioxide::{SocketIo, handler::ConnectHandler};
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

use crate::{
    auth::{self, Authenticator},
    checkpoint::Checkpoints,
    config::{Config, UpstreamConfig},
    gateway::{self, NAMESPACE},
    generation::{Registry, StopReason},
    http,
    limits::StartRateLimiter,
    mock_upstream::MockUpstream,
    store,
    upstream::Provider,
};

/// Connections waiting to be accepted; tokio's default of 128 drops SYNs in reconnect bursts.
const LISTEN_BACKLOG: u32 = 4096;
/// Initial WebSocket read buffer per connection (the default, 4 KiB, is mostly idle).
const WS_READ_BUFFER: usize = 1024;
/// Largest packet accepted from a client, as Node's Socket.IO (`maxHttpBufferSize`).
const MAX_PAYLOAD: u64 = 1_000_000;

/// What every handler shares; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: DatabaseConnection,
    pub provider: Provider,
    /// Running generations, keyed by message id.
    pub registry: Arc<Registry>,
    pub auth: Arc<Authenticator>,
    /// The per-user `chat:start` token bucket.
    pub start_limiter: StartRateLimiter,
    /// Partial answers waiting to be written together.
    pub checkpoints: Arc<Checkpoints>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot open the database: {0}")]
    Database(#[from] sea_orm::DbErr),
    #[error("cannot start the mock upstream: {0}")]
    Mock(io::Error),
}

/// A bound, connected server, ready to run.
pub struct Application {
    listener: TcpListener,
    router: Router,
    io: SocketIo,
    state: AppState,
    mock: Option<MockUpstream>,
}

impl Application {
    /// Binds the listener, opens and migrates the database, and wires the routes.
    pub async fn build(config: Config) -> Result<Self, StartError> {
        crate::install_crypto_provider();
        let addr = SocketAddr::new(config.host, config.port);
        let listener = bind(addr).map_err(|source| StartError::Bind { addr, source })?;
        let db = store::connect(&config.database_url, config.database_max_connections).await?;
        store::spawn_wal_checkpointer(&config.database_url).await?;

        let (mock, provider) = match &config.upstream {
            UpstreamConfig::Mock(mock_config) => {
                let mock = MockUpstream::start(mock_config.clone()).await.map_err(StartError::Mock)?;
                let provider = Provider::new(&mock.base_url(), "mock", config.upstream_timeouts(), config.upstream_retry);
                (Some(mock), provider)
            }
            UpstreamConfig::OpenAi { base_url, api_key } => {
                let provider = Provider::new(base_url, api_key.expose(), config.upstream_timeouts(), config.upstream_retry);
                (None, provider)
            }
        };
        let config_rate = config.rate_limit_per_minute;
        let state = AppState {
            auth: Arc::new(Authenticator::new(&config.auth)),
            config: Arc::new(config),
            db,
            provider,
            registry: Arc::new(Registry::default()),
            start_limiter: StartRateLimiter::new(config_rate),
            checkpoints: Arc::new(Checkpoints::default()),
        };
        state.checkpoints.spawn_writer(state.db.clone(), state.config.checkpoint_interval);
        state.start_limiter.spawn_sweeper(std::time::Duration::from_secs(60));
        spawn_stale_answer_sweeper(state.db.clone(), state.config.stale_answer_after());

        let (layer, io) = SocketIo::builder()
            .ping_interval(state.config.ping_interval)
            .ping_timeout(state.config.ping_timeout)
            .max_buffer_size(state.config.socket_buffer_packets)
            // Client frames are small; a large message still grows the buffer as needed.
            .ws_read_buffer_size(WS_READ_BUFFER)
            .max_payload(MAX_PAYLOAD)
            .ws_max_message_size(MAX_PAYLOAD as usize)
            .with_state(state.clone())
            .build_layer();
        io.ns(NAMESPACE, gateway::on_connect.with(auth::authenticate));
        // Nothing happens on `/`, but socket.io-client 2.x must be able to join it first.
        io.ns("/", (async |_: socketioxide::extract::SocketRef| {}).with(auth::authenticate_root));
        let router = http::router(io.clone(), state.clone())
            .layer(layer)
            .layer(http::cors(&state.config))
            .layer(axum::middleware::map_request(http::detach_from_read_buffer));
        Ok(Self { listener, router, io, state, mock })
    }

    /// The bound address (the real port when `PORT=0`).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.local_addr().map(|a| a.port()).unwrap_or_default()
    }

    /// The shared state (database, registry), for tests and tools.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The built-in mock upstream, when no upstream is configured.
    pub fn mock_upstream(&self) -> Option<&MockUpstream> {
        self.mock.as_ref()
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets running
    /// generations finish within the grace period, cuts the rest and closes every socket.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> io::Result<()> {
        let Self { listener, router, io, state, mock: _mock } = self;
        let stop_accepting = CancellationToken::new();
        let drained = CancellationToken::new();
        let drain = tokio::spawn({
            let (stop_accepting, drained) = (stop_accepting.clone(), drained.clone());
            async move {
                shutdown.await;
                tracing::info!(running = state.registry.len(), "shutting down");
                stop_accepting.cancel();
                let grace = state.config.shutdown_grace;
                if !state.registry.wait_empty(grace).await {
                    tracing::warn!(running = state.registry.len(), "grace period over; cutting running answers");
                    state.registry.stop_all(StopReason::Shutdown);
                    state.registry.wait_empty(std::time::Duration::from_secs(10)).await;
                }
                io.close().await;
                drained.cancel();
            }
        });
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop_accepting.cancelled().await })
            .await;
        // Connections may all be gone before generations are; finish draining either way.
        if served.is_ok() {
            drained.cancelled().await;
        }
        drain.abort();
        served
    }
}

/// Marks answers whose process died as failed: once at start-up, then periodically.
fn spawn_stale_answer_sweeper(db: DatabaseConnection, stale_after: std::time::Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(stale_after.max(std::time::Duration::from_secs(1)));
        loop {
            tick.tick().await;
            match store::fail_stale_answers(&db, stale_after).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(answers = n, "answers interrupted by a dead process marked as failed"),
                Err(e) => tracing::warn!(error = %e, "sweeping interrupted answers failed"),
            }
        }
    });
}

/// Binds with a large listen backlog, so reconnect bursts after a deploy are not dropped.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

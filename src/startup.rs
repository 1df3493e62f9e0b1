//! The composition root: configuration in, the engine and every wire built and bound,
//! one shutdown token for all of them. [`Application::build`] binds and connects;
//! [`Application::run_until`] serves until a shutdown future resolves. `main` and the
//! integration tests start the server the same way.

use std::{future::Future, io, net::SocketAddr, sync::Arc, time::Duration};

use axum::Router;
use sea_orm::DatabaseConnection;
use socketioxide::SocketIo;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    admin::Admin,
    auth::Authenticator,
    chat::StopReason,
    cluster::{self, AnswerLogs, Directory, MemoryDirectory, MemoryLogs, Redis, RedisDirectory, RedisLogs},
    config::{Config, UpstreamConfig},
    engine::Engine,
    http::{self, ready::Readiness},
    metrics::Metrics,
    providers::{Registry, UpstreamProbe, mock::MockUpstream},
    store,
    transport::{Wire, socketio, sse, ws},
};

/// How long shutdown waits for the last events to reach slow sockets.
const DELIVERY_DRAIN: Duration = Duration::from_secs(5);
/// After the answers have drained, how long sockets get to close before they are cut.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections waiting to be accepted; tokio's default of 128 drops SYNs in reconnect bursts.
const LISTEN_BACKLOG: u32 = 4096;

/// What tests and tools reach into; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: DatabaseConnection,
    pub engine: Engine,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    /// Already without the URL's password.
    #[error("DATABASE_URL: cannot open the database: {0}")]
    Database(String),
    #[error("cannot start the mock upstream: {0}")]
    Mock(io::Error),
    #[error("REDIS_URL: {0}")]
    Redis(String),
}

/// A bound, connected server, ready to run.
pub struct Application {
    listener: TcpListener,
    router: Router,
    io: SocketIo,
    state: AppState,
    mock: Option<MockUpstream>,
    /// Stops every background task once the wires are drained.
    shutdown: CancellationToken,
    /// Cancelled when shutdown begins: `/ready` answers 503 from then on.
    draining: CancellationToken,
    deliveries: TaskTracker,
    /// Closes the raw WebSockets once their answers are delivered.
    closing: CancellationToken,
}

impl Application {
    /// Binds the listener, opens and migrates the database, builds the engine and wires.
    pub async fn build(config: Config) -> Result<Self, StartError> {
        crate::install_crypto_provider();
        let addr = SocketAddr::new(config.host, config.port);
        let listener = bind(addr).map_err(|source| StartError::Bind { addr, source })?;
        let shutdown = CancellationToken::new();
        let db_error = |e: sea_orm::DbErr| StartError::Database(redacted(&config.database_url, &e.to_string()));
        let mut db =
            store::connect(&config.database_url, config.database_max_connections, &config.database_schema).await.map_err(db_error)?;
        let metrics = Metrics::new();
        let timed = metrics.clone();
        store::time_statements(&mut db, move |elapsed| timed.db_query(elapsed));
        store::spawn_wal_checkpointer(&config.database_url, shutdown.clone()).await.map_err(db_error)?;
        if config.allowed_models.is_empty() && matches!(config.upstream, UpstreamConfig::Providers(_)) {
            tracing::warn!(
                "ALLOWED_MODELS is unset: clients may ask the upstream for any model it serves, on your key; \
                 set ALLOWED_MODELS to the models you mean to pay for"
            );
        }

        let (mock, providers) = match &config.upstream {
            UpstreamConfig::Mock(mock_config) => {
                let mock = MockUpstream::start(mock_config.clone()).await.map_err(StartError::Mock)?;
                let providers = crate::providers::mock_providers(&config, &mock.base_url());
                (Some(mock), providers)
            }
            UpstreamConfig::Providers(providers) => (None, providers.clone()),
        };
        let registry = Registry::new(&providers, &metrics);
        // Readiness asks the default provider: the one every bare model name may reach.
        let probe = match providers.providers.iter().find(|p| p.id == providers.default) {
            Some(p) => UpstreamProbe::new(&p.base_url, p.api_key.expose()),
            None => UpstreamProbe::new("http://127.0.0.1:9", "none"),
        };
        let config = Arc::new(config);
        let (directory, logs) = cluster_parts(&config, &shutdown, metrics.redis_commands())?;
        let engine = Engine::new(config.clone(), db.clone(), registry, directory, logs, metrics.clone());
        engine.spawn_background(shutdown.clone());
        metrics.spawn_lag_probe(shutdown.clone());
        spawn_stale_answer_sweeper(db.clone(), config.stale_answer_after(), shutdown.clone());

        let deliveries = TaskTracker::new();
        let auth = Arc::new(Authenticator::new(&config.auth));
        auth.spawn_jwks(shutdown.clone());
        let connections = crate::transport::connections::UserConnections::new(config.max_connections_per_user);
        let closing = CancellationToken::new();
        let wire = Wire {
            engine: engine.clone(),
            config: config.clone(),
            auth,
            deliveries: deliveries.clone(),
            connections,
            closing: closing.clone(),
        };
        let admin = Admin::new(&config);
        let (layer, io) = socketio::layer(wire.clone(), admin.as_ref().map(Admin::observer));
        socketio::spawn_titles(&io, &engine, shutdown.clone());
        let counted = io.clone();
        let connections: http::ConnectionCount = Arc::new(move || socketio::connections(&counted));
        let draining = CancellationToken::new();
        let mut router = http::router(engine.clone(), wire.auth.clone(), connections.clone())
            .merge(http::ready::router(Readiness::new(engine.clone(), probe, draining.clone(), config.redis_url.is_some())))
            .merge(http::scrape::router(engine.clone(), connections, config.metrics_token.as_ref()))
            .merge(sse::router(wire.clone()))
            .merge(ws::router(wire.clone()));
        if let Some(admin) = admin {
            router = router.merge(admin.start(&io, engine.clone(), shutdown.clone()));
        }
        // Outside the routes, so REALTIME_PATH may be any path, `/` included.
        let router = router.layer(axum::middleware::from_fn_with_state(ws::realtime::Realtime::new(wire.clone()), ws::realtime::intercept));
        let router = router.layer(layer).layer(http::cors(&config)).layer(axum::middleware::map_request(http::detach_from_read_buffer));
        let state = AppState { config, db, engine };
        Ok(Self { listener, router, io, state, mock, shutdown, draining, deliveries, closing })
    }

    /// The bound address (the real port when `PORT=0`).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.local_addr().map(|a| a.port()).unwrap_or_default()
    }

    /// The shared state (database, engine), for tests and tools.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The start-up summary: where to connect, auth, database, upstream, origins, node.
    pub fn summary(&self) -> Vec<(&'static str, String)> {
        let mut config = (*self.state.config).clone();
        config.port = self.port();
        let mock_url = self.mock.as_ref().map(MockUpstream::base_url);
        crate::summary::lines(&config, &Authenticator::new(&config.auth), mock_url.as_deref())
    }

    /// The built-in mock upstream, when no upstream is configured.
    pub fn mock_upstream(&self) -> Option<&MockUpstream> {
        self.mock.as_ref()
    }

    /// Serves until `shutdown` resolves, then drains: `/ready` answers 503 at once, so
    /// load balancers stop sending traffic, while running answers finish within the grace
    /// period (everything is still served meanwhile). Then it cuts the answers left, stops
    /// accepting, closes every socket and stops the background tasks.
    pub async fn run_until(self, signal: impl Future<Output = ()> + Send + 'static) -> io::Result<()> {
        let Self { listener, router, io, state, mock: _mock, shutdown, draining, deliveries, closing } = self;
        let stop_accepting = CancellationToken::new();
        let force_close = CancellationToken::new();
        let drained = CancellationToken::new();
        let config = state.config.clone();
        let drain = tokio::spawn({
            let (stop_accepting, force_close, drained, shutdown) =
                (stop_accepting.clone(), force_close.clone(), drained.clone(), shutdown.clone());
            async move {
                signal.await;
                let engine = &state.engine;
                tracing::info!(running = engine.running(), "shutting down");
                draining.cancel();
                engine.begin_drain();
                if !engine.wait_idle(state.config.shutdown_grace).await {
                    tracing::warn!(running = engine.running(), "grace period over; cutting running answers");
                    engine.stop_all(StopReason::Shutdown);
                    engine.wait_idle(Duration::from_secs(10)).await;
                }
                stop_accepting.cancel();
                // Final events still on their way to sockets go out before they close.
                deliveries.close();
                if tokio::time::timeout(DELIVERY_DRAIN, deliveries.wait()).await.is_err() {
                    tracing::warn!(left = deliveries.len(), "some final events were not delivered before shutdown");
                }
                closing.cancel();
                // A socket whose client does not read never finishes closing: bounded.
                if tokio::time::timeout(CLOSE_TIMEOUT, io.close()).await.is_err() {
                    tracing::warn!("some sockets did not close in time; cutting them");
                }
                shutdown.cancel();
                drained.cancel();
                // HTTP requests still running (a response nobody reads) get as long, then are cut.
                tokio::time::sleep(CLOSE_TIMEOUT).await;
                force_close.cancel();
            }
        });
        let limits = http::limits::Limits {
            max_connections: config.max_connections,
            max_connections_per_ip: config.max_connections_per_ip,
            header_read_timeout: config.header_read_timeout,
            idle_timeout: config.http_idle_timeout,
        }
        .within_fd_limit();
        http::limits::serve(listener, router, limits, stop_accepting, force_close.clone()).await;
        // Connections may all be gone before answers are; finish draining either way.
        drained.cancelled().await;
        force_close.cancel();
        drain.abort();
        shutdown.cancel();
        Ok(())
    }
}

/// Where running answers are found, and their logs.
type ClusterParts = (Arc<dyn Directory>, Arc<dyn AnswerLogs>);

/// The directory and logs: in memory on one node, in Redis with `REDIS_URL`.
fn cluster_parts(
    config: &Config,
    shutdown: &CancellationToken,
    commands: prometheus_client::metrics::counter::Counter,
) -> Result<ClusterParts, StartError> {
    let Some(url) = &config.redis_url else {
        return Ok((Arc::new(MemoryDirectory::default()), Arc::new(MemoryLogs::default())));
    };
    let failed = |e: redis::RedisError| StartError::Redis(e.to_string());
    let redis = Redis::open(url).map_err(failed)?.counting_into(commands);
    let node = cluster::instance_name(&config.node_id);
    tracing::info!(%node, "cluster mode: answers are shared through redis");
    // An answer appends at most once per upstream piece, so a stream never needs more entries.
    let max_entries = config.max_tokens_limit as usize + 16;
    let logs = RedisLogs::new(redis.clone(), max_entries, config.cluster_append_window, shutdown.clone()).map_err(failed)?;
    let directory = RedisDirectory::start(redis, node, config.node_lease, shutdown.clone()).map_err(failed)?;
    Ok((directory, Arc::new(logs)))
}

/// A driver's message about `url` with the URL's password nowhere in it (as written, or
/// percent-decoded).
fn redacted(url: &str, message: &str) -> String {
    let mut message = message.replace(url, &crate::config::redact_url(url));
    let password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split(['/', '?', '#']).next())
        .and_then(|authority| authority.rsplit_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, password)| password)
        .filter(|p| !p.is_empty());
    if let Some(password) = password {
        let decoded: String = form_urlencoded::parse(format!("p={password}").as_bytes()).map(|(_, v)| v.into_owned()).collect();
        for secret in [password, decoded.as_str()] {
            if !secret.is_empty() {
                message = message.replace(secret, "***");
            }
        }
    }
    message
}

/// Marks answers whose process died as failed: once at start-up, then periodically.
fn spawn_stale_answer_sweeper(db: DatabaseConnection, stale_after: Duration, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(stale_after.max(Duration::from_secs(1)));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
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

#[cfg(test)]
mod tests {
    #[test]
    fn database_errors_never_show_the_password() {
        let url = "postgres://app:s%3Dcret@db.internal:5432/chat";
        let said = super::redacted(url, &format!("cannot reach {url}: password s=cret refused, s%3Dcret"));
        assert_eq!(said, "cannot reach postgres://app:***@db.internal:5432/chat: password *** refused, ***");
    }
}

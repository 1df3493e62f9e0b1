//! The HTTP server's accept loop, with the limits `axum::serve` does not have: a cap on
//! connections in total and per client IP (counted before any authentication, for as
//! long as the socket lives, WebSocket upgrades included), a deadline for a request
//! head, an idle deadline for connections with no request in flight, accept errors
//! (`EMFILE`) logged once per interval, and a shutdown that can cut what will not drain.

use std::{
    collections::HashMap,
    convert::Infallible,
    io,
    net::{IpAddr, SocketAddr},
    pin::{Pin, pin},
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    extract::{ConnectInfo, Request},
};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto::Builder,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::throttle::LogThrottle;
use tower::ServiceExt;

/// Pause after an accept error such as `EMFILE`, so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// HTTP/2 pings, so a vanished peer's connection does not stay.
const H2_KEEPALIVE: Duration = Duration::from_secs(20);
/// File descriptors kept out of `MAX_CONNECTIONS` for the database, the upstream and logs.
const FD_RESERVE: usize = 64;

/// The connection limits (`MAX_CONNECTIONS`, `MAX_CONNECTIONS_PER_IP`,
/// `HEADER_READ_TIMEOUT_MS`, `HTTP_IDLE_TIMEOUT_MS`).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// A connection's first request head, and any later one on HTTP/1, must arrive within this.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
}

impl Limits {
    /// `MAX_CONNECTIONS`, lowered below the process's open-file limit when it is higher:
    /// past that limit `accept` fails and nobody, `/health` included, gets in.
    pub fn within_fd_limit(mut self) -> Self {
        if let Some(files) = open_file_limit() {
            let room = files.saturating_sub(FD_RESERVE).max(1);
            if self.max_connections > room {
                tracing::warn!(
                    max_connections = self.max_connections,
                    open_file_limit = files,
                    using = room,
                    "MAX_CONNECTIONS is above the open-file limit (ulimit -n); using less"
                );
                self.max_connections = room;
            }
        }
        self
    }
}

/// The soft `RLIMIT_NOFILE`, from `/proc/self/limits` (Linux); `None` elsewhere or unlimited.
fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files").split_whitespace().next()?.parse().ok()
}

/// Serves `router` on `listener` until `stop`; then stops accepting, lets every HTTP
/// connection finish its request, and returns once all are closed. `force_close`
/// drops the ones still open.
pub async fn serve(listener: TcpListener, router: Router, limits: Limits, stop: CancellationToken, force_close: CancellationToken) {
    let registry = Arc::new(Registry { limits, counts: Mutex::default() });
    let builder = Arc::new(builder(&limits));
    let tasks = TaskTracker::new();
    let accept_errors = LogThrottle::new();
    let refusals = LogThrottle::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                if let Some(suppressed) = accept_errors.hit() {
                    tracing::error!(error = %e, suppressed, "accept error; retrying (logged at most every 30 s)");
                }
                tokio::select! {
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    () = stop.cancelled() => break,
                }
            }
        };
        let _ = tcp.set_nodelay(true);
        let ip = peer.ip().to_canonical();
        let slot = match registry.acquire(ip) {
            Ok(slot) => slot,
            Err(limit) => {
                if let Some(suppressed) = refusals.hit() {
                    tracing::warn!(%ip, limit, suppressed, "connection refused: over a connection limit (logged at most every 30 s)");
                }
                refuse(tcp);
                continue;
            }
        };
        let io = TokioIo::new(Counted { io: tcp, _slot: slot });
        let (activity, idle) = watch::channel(Activity::default());
        let service = Tracked::service(router.clone(), Arc::new(activity), peer);
        let (builder, stop, force_close) = (builder.clone(), stop.clone(), force_close.clone());
        tasks.spawn(async move {
            let mut conn = pin!(builder.serve_connection_with_upgrades(io, service));
            let mut idle = pin!(idle_too_long(idle, limits));
            let mut draining = false;
            loop {
                tokio::select! {
                    served = conn.as_mut() => {
                        if let Err(e) = served {
                            tracing::debug!(%ip, error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    () = stop.cancelled(), if !draining => {
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    () = &mut idle => {
                        tracing::debug!(%ip, "closing a connection with no request in flight");
                        break;
                    }
                    () = force_close.cancelled() => break,
                }
            }
        });
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
}

fn builder(limits: &Limits) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        // CONNECT protocol: WebSockets over HTTP/2, as axum::serve offers.
        .enable_connect_protocol()
        .keep_alive_interval(H2_KEEPALIVE)
        .keep_alive_timeout(H2_KEEPALIVE);
    builder
}

/// Resolves once the connection has had no request in flight for too long: the header
/// read timeout before its first request (a silent or slow client, whatever protocol it
/// claims), the idle timeout after. Requests in flight (long-polls, SSE) never expire.
async fn idle_too_long(mut activity: watch::Receiver<Activity>, limits: Limits) {
    loop {
        let now = *activity.borrow_and_update();
        let changed = if now.in_flight > 0 {
            activity.changed().await
        } else {
            let allowed = if now.started == 0 { limits.header_read_timeout } else { limits.idle_timeout };
            match tokio::time::timeout(allowed, activity.changed()).await {
                Ok(changed) => changed,
                Err(_) => return,
            }
        };
        if changed.is_err() {
            // The service is gone (upgraded or closed): the connection ends on its own.
            std::future::pending::<()>().await;
        }
    }
}

/// A connection's requests: how many were started, how many are still running.
#[derive(Clone, Copy, Default)]
struct Activity {
    started: u64,
    in_flight: usize,
}

/// Tells a refused client so if its socket has room, then closes.
fn refuse(tcp: TcpStream) {
    let _ = tcp.try_write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\nretry-after: 1\r\n\r\n");
    drop(tcp);
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset)
}

/// Open connections, in total and per client IP.
struct Registry {
    limits: Limits,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

impl Registry {
    /// A slot for one more connection from `ip`, or the limit it would break.
    fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, &'static str> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.total >= self.limits.max_connections {
            return Err("MAX_CONNECTIONS");
        }
        let from_ip = counts.per_ip.entry(ip).or_default();
        if *from_ip >= self.limits.max_connections_per_ip {
            return Err("MAX_CONNECTIONS_PER_IP");
        }
        *from_ip += 1;
        counts.total += 1;
        Ok(Slot { registry: self.clone(), ip })
    }
}

/// One counted connection; dropping it frees the place.
struct Slot {
    registry: Arc<Registry>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.registry.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
    }
}

/// The socket with its slot: an upgraded WebSocket keeps it until the socket is dropped.
struct Counted {
    io: TcpStream,
    _slot: Slot,
}

impl AsyncRead for Counted {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A response body that counts as a request in flight until it is finished or dropped.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl Tracked {
    /// The router as a hyper service whose requests are counted in `activity`, each with
    /// the client's address (`ConnectInfo`).
    fn service(
        router: Router,
        activity: Arc<watch::Sender<Activity>>,
        peer: SocketAddr,
    ) -> impl hyper::service::Service<Request<Incoming>, Response = http::Response<Tracked>, Error = Infallible, Future: Send> + Clone {
        hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let in_flight = InFlight::start(activity.clone());
            let router = router.clone();
            async move {
                let Ok(response) = router.oneshot(request.map(Body::new)).await;
                Ok(response.map(|body| Tracked { body, _in_flight: in_flight }))
            }
        })
    }
}

impl HttpBody for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// One request in flight on a connection.
struct InFlight(Arc<watch::Sender<Activity>>);

impl InFlight {
    fn start(activity: Arc<watch::Sender<Activity>>) -> Self {
        activity.send_modify(|a| {
            a.started += 1;
            a.in_flight += 1;
        });
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|a| a.in_flight = a.in_flight.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_ip: usize) -> Limits {
        Limits {
            max_connections: total,
            max_connections_per_ip: per_ip,
            header_read_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn slots_count_per_address_and_in_total_and_are_given_back_on_drop() {
        let registry = Arc::new(Registry { limits: limits(3, 2), counts: Mutex::default() });
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let first = registry.acquire(a).ok();
        let _second = registry.acquire(a).ok();
        assert_eq!(registry.acquire(a).err(), Some("MAX_CONNECTIONS_PER_IP"));
        let _third = registry.acquire(b).ok();
        assert_eq!(registry.acquire(b).err(), Some("MAX_CONNECTIONS"));
        drop(first);
        assert!(registry.acquire(a).is_ok());
        assert!(registry.counts.lock().map(|c| c.per_ip.len()).unwrap_or_default() <= 2);
    }
}

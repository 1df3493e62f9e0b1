//! `GET /ready`: whether this node should get traffic. 200 when every check passes,
//! 503 when one fails or the server is draining at shutdown (it keeps serving what
//! runs meanwhile, so load balancers take it out before its connections close).
//!
//! Each check names itself in the body, `{ status, checks: { database: "ok", upstream:
//! "down" } }`, and keeps its result a moment, so a storm of probes costs the
//! database and the provider one call per moment. Another check (Redis, in cluster mode)
//! is one more [`Check`] in [`Readiness::new`]'s list. Why a check fails goes to the log (once per
//! change), never into the body: `/ready` needs no credentials.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use sea_orm::DatabaseConnection;
use serde_json::{Map, Value, json};
use tokio::{sync::Mutex, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::providers::UpstreamProbe;

/// How long the database check may take before it counts as failed.
const DATABASE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a database result is kept.
const DATABASE_TTL: Duration = Duration::from_secs(1);
/// How long an upstream result is kept: a provider is not asked more often than this.
const UPSTREAM_TTL: Duration = Duration::from_secs(5);

/// One thing the node needs to serve.
#[async_trait]
pub trait Check: Send + Sync {
    /// The key in the body.
    fn name(&self) -> &'static str;
    /// `Err` with the reason (for the log) when it is not usable now.
    async fn check(&self) -> Result<(), String>;
}

/// The database answers a ping.
pub struct DatabaseCheck(pub DatabaseConnection);

#[async_trait]
impl Check for DatabaseCheck {
    fn name(&self) -> &'static str {
        "database"
    }

    async fn check(&self) -> Result<(), String> {
        match tokio::time::timeout(DATABASE_TIMEOUT, self.0.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {DATABASE_TIMEOUT:?}")),
        }
    }
}

/// Cluster mode: the node reaches Redis (running answers, stops and limits go through it).
pub struct RedisCheck(pub crate::engine::Engine);

#[async_trait]
impl Check for RedisCheck {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn check(&self) -> Result<(), String> {
        match self.0.shared_state_ok().await {
            Some(false) => Err("Redis does not answer".into()),
            _ => Ok(()),
        }
    }
}

/// The node has headroom: no `OVERLOAD_*` limit is passed (see the engine's headroom).
pub struct LoadCheck(pub crate::engine::Engine);

#[async_trait]
impl Check for LoadCheck {
    fn name(&self) -> &'static str {
        "load"
    }

    async fn check(&self) -> Result<(), String> {
        match self.0.pressure() {
            Some(pressure) => Err(format!("overloaded: {}", pressure.as_str())),
            None => Ok(()),
        }
    }
}

/// The upstream (the built-in mock too) answers `GET /models`.
pub struct UpstreamCheck(pub UpstreamProbe);

#[async_trait]
impl Check for UpstreamCheck {
    fn name(&self) -> &'static str {
        "upstream"
    }

    async fn check(&self) -> Result<(), String> {
        self.0.check().await.map_err(|e| e.to_string())
    }
}

/// A check whose result is kept for `ttl`; callers that come while it runs wait for
/// that one run instead of starting their own.
struct Cached {
    inner: Box<dyn Check>,
    ttl: Duration,
    last: Mutex<Option<(Instant, bool)>>,
    /// The state last logged, so a failing check is logged when it starts and stops failing.
    logged_ok: AtomicBool,
}

impl Cached {
    fn new(inner: impl Check + 'static, ttl: Duration) -> Self {
        Self { inner: Box::new(inner), ttl, last: Mutex::new(None), logged_ok: AtomicBool::new(true) }
    }

    async fn ok(&self) -> bool {
        let mut last = self.last.lock().await;
        if let Some((at, ok)) = *last
            && at.elapsed() < self.ttl
        {
            return ok;
        }
        let result = self.inner.check().await;
        let ok = result.is_ok();
        if self.logged_ok.swap(ok, Ordering::Relaxed) != ok {
            match result {
                Ok(()) => tracing::info!(check = self.inner.name(), "readiness check passes again"),
                Err(reason) => {
                    tracing::warn!(check = self.inner.name(), %reason, "readiness check failing")
                }
            }
        }
        *last = Some((Instant::now(), ok));
        ok
    }
}

/// The checks and the draining flag; cheap to clone.
#[derive(Clone)]
pub struct Readiness(Arc<Parts>);

struct Parts {
    checks: Vec<Cached>,
    /// Cancelled when shutdown begins.
    draining: CancellationToken,
}

impl Readiness {
    /// The checks of `engine`'s node (its database, its headroom) and of `upstream`;
    /// `draining` is cancelled at shutdown. With `cluster`, Redis is checked too.
    pub fn new(engine: crate::engine::Engine, upstream: UpstreamProbe, draining: CancellationToken, cluster: bool) -> Self {
        let mut checks = vec![
            Cached::new(DatabaseCheck(engine.db().clone()), DATABASE_TTL),
            Cached::new(UpstreamCheck(upstream), UPSTREAM_TTL),
            // Read afresh on every probe: it is a few atomics.
            Cached::new(LoadCheck(engine.clone()), Duration::ZERO),
        ];
        if cluster {
            checks.push(Cached::new(RedisCheck(engine), DATABASE_TTL));
        }
        Self(Arc::new(Parts { checks, draining }))
    }

    /// Runs every check (at once) and says whether the node is ready, with each check's state.
    pub async fn state(&self) -> (bool, Value) {
        let results = futures::future::join_all(self.0.checks.iter().map(|c| c.ok())).await;
        let mut checks = Map::new();
        for (check, ok) in self.0.checks.iter().zip(&results) {
            checks.insert(check.inner.name().to_owned(), json!(if *ok { "ok" } else { "down" }));
        }
        let draining = self.0.draining.is_cancelled();
        let ready = !draining && results.iter().all(|ok| *ok);
        let status = if draining {
            "draining"
        } else if ready {
            "ready"
        } else {
            "unready"
        };
        (ready, json!({ "status": status, "checks": checks }))
    }
}

/// The `/ready` route.
pub fn router(readiness: Readiness) -> Router {
    Router::new().route("/ready", get(ready)).with_state(readiness)
}

async fn ready(State(readiness): State<Readiness>) -> (StatusCode, Json<Value>) {
    let (ready, body) = readiness.state().await;
    (if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(body))
}

//! The wires: each decodes its clients' messages into engine calls and encodes log
//! entries into its own frames. `events` holds the `/ai` event payloads, which the SSE
//! wire sends too.

pub mod connections;
pub mod events;
pub mod socketio;
pub mod sse;
pub mod ws;

use std::sync::Arc;

use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{auth::Authenticator, config::Config, engine::Engine};
use connections::UserConnections;

/// What every wire's handlers share; cheap to clone.
#[derive(Clone)]
pub struct Wire {
    pub engine: Engine,
    pub config: Arc<Config>,
    pub auth: Arc<Authenticator>,
    /// The tasks delivering answers to connections, so shutdown lets their final events out.
    pub deliveries: TaskTracker,
    /// Every wire's open connections by user, capped by `MAX_CONNECTIONS_PER_USER`.
    pub connections: UserConnections,
    /// Cancelled when shutdown closes the connections: the raw WebSockets close with 1001.
    pub closing: CancellationToken,
}

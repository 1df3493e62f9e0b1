//! chatwire: a Socket.IO gateway that streams LLM answers to existing
//! socket.io-client chat apps and stores every conversation.
//!
//! `main.rs` only parses the configuration and calls [`app::Application`];
//! integration tests start the server through the same entry points.

pub mod app;
pub mod auth;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod gateway;
pub mod generation;
pub mod http;
pub mod limits;
pub mod mock_upstream;
pub mod protocol;
pub mod resume;
pub mod store;
pub mod telemetry;
pub mod upstream;

pub use app::{AppState, Application};
pub use config::Config;

/// Installs rustls' process-wide crypto provider (ring). reqwest, built without a
/// default provider, needs one before the first client is made; calling twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

//! chatwire: streams LLM answers to the chat clients teams already have, over several
//! wires, and stores every conversation.
//!
//! The shape is one engine and thin wires; imports point one way:
//! `transport`, `http` -> `engine` -> `store`, `providers`, `cluster` -> `chat`.
//! `main.rs` only parses the configuration and calls [`startup::Application`];
//! integration tests start the server through the same entry points.

pub mod admin;
pub mod auth;
pub mod chat;
pub mod cluster;
pub mod config;
pub mod engine;
pub mod http;
pub mod import;
pub mod metrics;
pub mod providers;
pub mod startup;
pub mod store;
pub mod summary;
pub mod telemetry;
pub mod throttle;
pub mod transport;

pub use config::Config;
pub use startup::{AppState, Application};

/// Installs rustls' process-wide crypto provider (ring). reqwest, built without a
/// default provider, needs one before the first client is made; calling twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

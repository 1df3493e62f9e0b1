//! chatwire's integration tests: one binary, the real server on port 0.

mod auth;
mod binary;
mod chat;
mod checkpoints;
mod client;
mod database;
mod delivery;
mod fake_upstream;
mod flood;
mod faults;
mod hardening_auth;
mod hardening_http;
mod hardening_store;
mod helpers;
mod http;
mod import;
mod lifecycle;
mod limits;
mod malformed;
mod resume;
mod routing;
mod schema;
mod sse;
mod sqlite;
mod startup;
mod transport;

//! chatwire's load generator: a Socket.IO 5 client over tokio-tungstenite, the bench
//! scenarios (`idle` with its reconnect storm, `stream` with its saturation search, `ttft`, `cpu`, `flood`), the raw WebSocket
//! ceiling server, and the report that joins a run's results.

pub mod ceiling;
pub mod client;
pub mod cpu;
pub mod flood;
pub mod idle;
pub mod report;
pub mod stats;
pub mod storm;
pub mod stream;
pub mod sys;
pub mod ttft;
pub mod wire;

pub use client::{Conn, Target};

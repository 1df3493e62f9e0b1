//! The model side: one client for any OpenAI-compatible upstream (async-openai), the
//! built-in mock model served over real HTTP and SSE, and the readiness probe of either.

pub mod mock;
mod openai;
mod probe;

pub use openai::{ChatCall, OpeningStream, Piece, Provider, RetryPolicy, UpstreamError, UpstreamStream};
pub use probe::{ProbeError, UpstreamProbe};

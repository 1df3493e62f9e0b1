//! The model side: one client for any OpenAI-compatible upstream (async-openai), and the
//! built-in mock model served over real HTTP and SSE.

pub mod mock;
mod openai;

pub use openai::{ChatCall, OpeningStream, Piece, Provider, RetryPolicy, UpstreamError, UpstreamStream};

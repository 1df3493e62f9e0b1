//! What an answer is: its ids, its stored status, its token counts, and the one final
//! entry that ends it (complete, stopped, or failed with its code).

use std::fmt;

use uuid::Uuid;

use super::error::{ChatError, ErrorCode};

/// A wire's own name for one client connection (a Socket.IO socket, an SSE response):
/// what "this connection's answer" and the per-connection claim refer to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConnectionId(String);

impl ConnectionId {
    /// A connection id made of the wire's name and its own id for the connection.
    pub fn new(wire: &str, id: impl fmt::Display) -> Self {
        Self(format!("{wire}:{id}"))
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The two ids every event about an answer carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AnswerIds {
    pub message_id: Uuid,
    pub conversation_id: Uuid,
}

/// A message's status as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Streaming,
    Complete,
    Stopped,
    Error,
}

impl Status {
    /// The stored (and `chat:resume` ack) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Streaming => "streaming",
            Self::Complete => "complete",
            Self::Stopped => "stopped",
            Self::Error => "error",
        }
    }

    /// Reads a stored status; anything unknown is taken as an error.
    pub fn parse(s: &str) -> Self {
        match s {
            "streaming" => Self::Streaming,
            "complete" => Self::Complete,
            "stopped" => Self::Stopped,
            _ => Self::Error,
        }
    }
}

/// One message of the conversation as the model sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
    /// A question's image URLs (http(s) or data URLs), sent as image parts after its text.
    pub images: Vec<String>,
}

impl HistoryMessage {
    /// A message of text only.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into(), images: Vec::new() }
    }
}

/// Token counts from the upstream's usage chunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

/// Why a generation was cut short.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// A client asked (`chat:stop`, `POST .../stop`).
    User,
    /// The starting connection left and `ON_DISCONNECT=cancel`.
    Disconnect,
    /// The server is shutting down and the grace period is over.
    Shutdown,
}

/// How an answer ended: the last entry of its log, and what its final event says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Final {
    /// `model` is the bare name the answering `provider` knows; `usage` is `None` when
    /// the provider sent no counts.
    Complete {
        provider: String,
        model: String,
        finish_reason: String,
        usage: Option<Usage>,
    },
    Stopped,
    Failed(ChatError),
}

impl Final {
    /// The status stored for this ending.
    pub fn status(&self) -> Status {
        match self {
            Self::Complete { .. } => Status::Complete,
            Self::Stopped => Status::Stopped,
            Self::Failed(_) => Status::Error,
        }
    }

    /// The ending of an answer cut by the server's shutdown.
    pub fn shutdown() -> Self {
        Self::Failed(ChatError::new(ErrorCode::Unavailable, "the server is restarting; the partial answer is stored"))
    }
}

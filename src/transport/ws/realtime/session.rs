//! One voice session's task: it owns the upstream connection, forwards the client's
//! events to it and its events to the client, keeps the transcript, and ends the
//! session on a limit (length, idleness, tokens), a fault or shutdown.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::{
    sync::{mpsc, oneshot},
    time::{Instant, sleep_until},
};
use tokio_tungstenite::tungstenite::Message;

use super::{
    frames::{self, Code, Problem},
    transcript::Transcript,
    upstream::{self, Upstream},
};
use crate::{
    chat::Status,
    config::RealtimeConfig,
    engine::Engine,
    transport::{
        connections::ConnectionSlot,
        ws::link::{Outbox, close},
    },
};

/// How long the upstream has to answer our close frame.
const UPSTREAM_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the connection's dialect hands the session.
#[derive(Debug)]
pub enum Command {
    /// Events for the upstream, in order; `user_text` goes to the transcript first.
    Upstream { events: Vec<String>, user_text: Option<String>, answer_due: bool },
    /// The server is shutting down: say so, store, and answer when done.
    Shutdown(oneshot::Sender<()>),
}

/// Everything a session's task needs.
pub struct Session {
    pub config: RealtimeConfig,
    pub engine: Engine,
    pub user: String,
    /// The conversation's id, which is the session's id on the wire.
    pub id: String,
    pub instructions: String,
    pub outbox: Outbox,
    pub transcript: Transcript,
    /// The user's place among `REALTIME_MAX_SESSIONS_PER_USER`, given back as the session ends.
    pub slot: Option<ConnectionSlot>,
    /// When the client's token expires.
    pub token_expires: Option<Instant>,
}

/// Why a session ended.
enum End {
    ClientGone,
    Shutdown(oneshot::Sender<()>),
    Idle,
    SessionLimit,
    TokenExpired,
    Quota,
    UpstreamGone,
    UpstreamSilent,
}

impl Session {
    /// Runs the session until it ends; the transcript is stored before the upstream closes.
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let started = Instant::now();
        let mut upstream = match upstream::connect(&self.config).await {
            Ok(upstream) => upstream,
            Err(problem) => return self.fail(&problem, close::INTERNAL).await,
        };
        let update = upstream::session_update(&self.config, &self.instructions);
        if upstream.send(Message::Text(update.into())).await.is_err() {
            return self.fail(&Problem::new(Code::UpstreamError, "the voice upstream closed the session"), close::INTERNAL).await;
        }
        let end_at = started + self.config.max_session;
        let warning = (self.config.max_session / 2).min(Duration::from_secs(60));
        let mut warned = false;
        let mut idle_at = Instant::now() + self.config.idle_timeout;
        // While an answer is due, the upstream must not go silent for longer than this.
        let mut due: Option<Instant> = None;
        let silence = self.config.upstream_idle_timeout;
        let end = loop {
            tokio::select! {
                command = commands.recv() => match command {
                    None => break End::ClientGone,
                    Some(Command::Shutdown(done)) => break End::Shutdown(done),
                    Some(Command::Upstream { events, user_text, answer_due }) => {
                        idle_at = Instant::now() + self.config.idle_timeout;
                        if let Some(text) = user_text {
                            self.transcript.user_said(&text).await;
                        }
                        if !send_all(&mut upstream, events).await {
                            break End::UpstreamGone;
                        }
                        if answer_due {
                            due = Some(Instant::now() + silence);
                        }
                    }
                },
                received = upstream.next() => match received {
                    Some(Ok(Message::Text(text))) => {
                        let Ok(event) = serde_json::from_str::<Value>(&text) else {
                            tracing::warn!(session = %self.id, "the upstream sent an event that is not JSON; dropped");
                            continue;
                        };
                        // Stored before it is forwarded: a client that sees `response.done`
                        // finds the answer's row.
                        let finished = self.transcript.upstream_event(&event).await.is_some();
                        if !self.outbox.send_text(frames::openai_event(&text, &self.id)).await {
                            break End::ClientGone;
                        }
                        due = match event.get("type").and_then(Value::as_str) {
                            Some("response.done") => None,
                            Some("response.created" | "input_audio_buffer.committed") => Some(Instant::now() + silence),
                            _ => due.map(|_| Instant::now() + silence),
                        };
                        if finished && self.engine.check_voice_quota(&self.user).await.is_err() {
                            break End::Quota;
                        }
                    }
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break End::UpstreamGone,
                    Some(Ok(_)) => {}
                },
                () = sleep_until(idle_at) => break End::Idle,
                () = sleep_until(end_at - warning), if !warned => {
                    warned = true;
                    if !self.outbox.send_text(frames::session_expiring(&self.id, warning.as_secs())).await {
                        break End::ClientGone;
                    }
                }
                () = sleep_until(end_at) => break End::SessionLimit,
                () = sleep_until(self.token_expires.unwrap_or(end_at)), if self.token_expires.is_some() => break End::TokenExpired,
                () = sleep_until(due.unwrap_or(end_at)), if due.is_some() => break End::UpstreamSilent,
            }
        };
        self.end(end, upstream).await;
    }

    /// Stores what was being said, closes the upstream, then tells the client why.
    async fn end(mut self, end: End, mut upstream: Upstream) {
        let (status, reason, problem, code) = match &end {
            End::ClientGone => (Status::Stopped, "client_closed", None, close::NORMAL),
            End::Shutdown(_) => {
                (Status::Stopped, "shutdown", Some(Problem::new(Code::Shutdown, "the server is shutting down")), close::GOING_AWAY)
            }
            End::Idle => {
                (Status::Stopped, "idle_timeout", Some(Problem::new(Code::IdleTimeout, "the session was idle too long")), close::NORMAL)
            }
            End::SessionLimit => (
                Status::Stopped,
                "session_limit",
                Some(
                    Problem::new(Code::SessionLimit, "the session reached its maximum length")
                        .with(json!({ "maxSeconds": self.config.max_session.as_secs() })),
                ),
                close::NORMAL,
            ),
            End::TokenExpired => {
                (Status::Stopped, "token_expired", Some(Problem::new(Code::TokenExpired, "the token expired")), close::POLICY)
            }
            End::Quota => {
                (Status::Stopped, "quota", Some(Problem::new(Code::QuotaExceeded, "the daily voice token quota is used up")), close::NORMAL)
            }
            End::UpstreamGone => {
                (Status::Error, "error", Some(Problem::new(Code::UpstreamError, "the voice upstream closed the session")), close::INTERNAL)
            }
            End::UpstreamSilent => (
                Status::Error,
                "timeout",
                Some(Problem::new(Code::UpstreamTimeout, "the voice upstream stopped answering")),
                close::INTERNAL,
            ),
        };
        self.transcript.cut(status, reason, problem.as_ref().map(|p| p.code.as_str())).await;
        self.slot = None;
        if !matches!(end, End::UpstreamGone) {
            let _ = tokio::time::timeout(UPSTREAM_CLOSE_TIMEOUT, upstream.close(None)).await;
        }
        drop(upstream);
        tracing::info!(session = %self.id, reason, "voice session ended");
        match (end, problem) {
            (End::Shutdown(done), Some(problem)) => {
                self.outbox.send_text(frames::error(&problem, Some(&self.id))).await;
                let _ = done.send(());
            }
            (_, Some(problem)) => self.fail(&problem, code).await,
            (_, None) => {}
        }
    }

    /// Tells the client and closes its connection.
    async fn fail(&self, problem: &Problem, code: u16) {
        if self.outbox.send_text(frames::error(problem, Some(&self.id))).await {
            self.outbox.close(code, "voice session ended").await;
        }
    }
}

async fn send_all(upstream: &mut Upstream, events: Vec<String>) -> bool {
    for event in events {
        if upstream.send(Message::Text(event.into())).await.is_err() {
            return false;
        }
    }
    true
}

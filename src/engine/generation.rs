//! A generation: one model answer, from the upstream's stream into the answer's log.
//!
//! It appends deltas (pieces already waiting upstream are joined into one append;
//! while the node is busy a window of up to `STREAM_COALESCE_MAX_MS` is joined, and
//! `STREAM_COALESCE_MS` forces a fixed one) and never waits for a reader. The
//! database is written at the start (by the engine), at periodic checkpoints, and once
//! at the end, before the final entry is appended: whoever reads the final entry, live
//! or later from the row, reads the same stored text.

use std::{sync::Arc, time::Duration};

use futures::FutureExt;
use tokio::time::Instant;
use tracing::{Instrument, Span, field};

use super::{Parts, activity::Tracked, titles};
use crate::{
    chat::{AnswerIds, ChatError, ErrorCode, Final, StopReason, Usage, text},
    cluster::{Claim, Ending, LogWriter, Registration, StopHandle},
    config::Target,
    providers::{OpenFailed, OpeningRoute, Piece, UpstreamError},
    store::{self, AnswerEnd},
};

/// Most upstream pieces joined into one append, so one busy answer yields to the others.
const MAX_PIECES_PER_APPEND: usize = 64;

/// Everything a generation needs, fixed at its start.
pub(super) struct Spec {
    pub ids: AnswerIds,
    pub user_id: String,
    /// Who answers: the route's first target until the stream opens, then the one that
    /// opened it (or, when all failed, the last one tried).
    pub answering: Target,
    /// The upstream request, started while the turn was being stored.
    pub upstream: OpeningRoute,
    pub writer: Box<dyn LogWriter>,
    pub stop: Arc<StopHandle>,
    /// When its `chat:start` reached the engine: time to first token and duration count from here.
    pub received: Instant,
    /// Its place in the operators' listing, with its token count.
    pub tracked: Tracked,
    /// The conversation's title to make once it ends, for the first answer of a new one.
    pub title: Option<titles::TitleJob>,
}

/// The span every line of one answer is logged in (both log formats show its fields):
/// the ids are recorded by [`name_span`] as soon as they are made.
pub(super) fn span(user: &str, node: &str) -> Span {
    tracing::info_span!("answer", messageId = field::Empty, conversationId = field::Empty, user = %user, node = %node)
}

/// Names the answer and its conversation in the current (answer) span, before the upstream opens.
pub(super) fn name_span(ids: AnswerIds) {
    let span = Span::current();
    span.record("messageId", field::display(ids.message_id));
    span.record("conversationId", field::display(ids.conversation_id));
}

/// Spawns the generation, logging in the caller's (answer) span. Its claim and its place
/// in the directory are released when it ends, however it ends (a panic included).
pub(super) fn spawn(parts: Arc<Parts>, spec: Spec, held: (Claim, Registration)) {
    tokio::spawn(run(parts, spec, held, Span::current()));
}

/// What the upstream said about the end of its answer.
#[derive(Default)]
struct StreamEnd {
    finish_reason: Option<String>,
    usage: Option<Usage>,
    done: bool,
}

/// How the upstream part ended.
enum Outcome {
    Complete { finish_reason: String, usage: Option<Usage> },
    Stopped(StopReason),
    Failed(UpstreamError),
}

/// What the generation saw of the upstream so far, for the log line and a cut answer.
#[derive(Default)]
struct Seen {
    first_token: Option<Instant>,
    /// Pieces of text received.
    pieces: u32,
    /// The upstream's usage chunk, when it sent one.
    usage: Option<Usage>,
}

/// The streaming loop runs outside the answer's span: a span is entered on every poll,
/// which takes a lock in the log filter, per token. The loop logs nothing; all that comes
/// after it logs in the span.
async fn run(parts: Arc<Parts>, mut spec: Spec, held: (Claim, Registration), span: Span) {
    let mut seen = Seen::default();
    let outcome = stream(&parts, &mut spec, &mut seen).await;
    end(parts, spec, held, seen, outcome).instrument(span).await;
}

/// Stores, logs, counts and announces the end of the answer.
async fn end(parts: Arc<Parts>, mut spec: Spec, held: (Claim, Registration), seen: Seen, outcome: Outcome) {
    let started = spec.received;
    let (ending, cut_reason) = match outcome {
        Outcome::Complete { finish_reason, usage } => {
            let Target { provider, model } = spec.answering.clone();
            (Final::Complete { provider, model, finish_reason, usage }, "")
        }
        Outcome::Stopped(StopReason::User | StopReason::Disconnect) => (Final::Stopped, "stopped"),
        Outcome::Stopped(StopReason::Shutdown) => (Final::shutdown(), "shutdown"),
        Outcome::Failed(cause) => {
            tracing::warn!(message_id = %spec.ids.message_id, error = %cause, "upstream failed");
            parts.providers.record_error(&spec.answering.provider, &cause);
            (Final::Failed(cause.to_chat_error()), "error")
        }
    };
    let content = spec.writer.text();
    parts.checkpoints.forget(spec.ids.message_id);
    // An answer cut by the shutdown keeps the upstream's counts, else the pieces received.
    let partial_usage = (cut_reason == "shutdown")
        .then(|| seen.usage.unwrap_or(Usage { completion_tokens: seen.pieces, total_tokens: seen.pieces, prompt_tokens: 0 }));
    let end = AnswerEnd {
        user_id: &spec.user_id,
        provider: &spec.answering.provider,
        content: &content,
        ending: &ending,
        model: &spec.answering.model,
        partial_usage,
        cut_reason,
    };
    let ending = match store_end(&parts, spec.ids, &end).await {
        Ok(()) => ending,
        Err(error) => Final::Failed(error),
    };
    log_answer(&spec, &ending, started, &seen);
    let ttft = seen.first_token.map(|t| t.duration_since(started));
    parts.metrics.answer_ended(ending.status(), started.elapsed(), ttft);
    if let Final::Failed(error) = &ending {
        parts.activity.failed();
        parts.metrics.chat_error(error.code);
    }

    // The connection is free before the final entry is read, so its next start never
    // sees BUSY. The answer leaves the directory once its final entry is in the log:
    // readers that come later read the stored row.
    let (claim, registration) = held;
    drop(claim);
    let length = text::utf16_len(&content);
    let title = spec.title.take().filter(|_| titles::deserved(&ending, &content));
    let title_answer = title.as_ref().map(|_| content.clone());
    // Off the operators' listing before anyone reads the end, so none lists it after.
    spec.tracked.end();
    spec.writer.finish(Ending { outcome: ending, content, length });
    drop(registration);
    // After the final entry: the title never holds up the answer's end.
    if let (Some(job), Some(answer)) = (title, title_answer) {
        titles::spawn(&parts, spec.ids, &spec.user_id, &spec.answering, job, &answer);
    }
}

/// One INFO line per answer, at its end.
fn log_answer(spec: &Spec, ending: &Final, started: Instant, seen: &Seen) {
    let usage = match ending {
        Final::Complete { usage, .. } => usage.unwrap_or_default(),
        _ => seen.usage.unwrap_or_default(),
    };
    tracing::info!(
        message_id = %spec.ids.message_id,
        conversation_id = %spec.ids.conversation_id,
        user_id = %spec.user_id,
        provider = %spec.answering.provider,
        model = %spec.answering.model,
        prompt_tokens = usage.prompt_tokens,
        completion_tokens = usage.completion_tokens,
        ttft_ms = seen.first_token.map(|t| t.duration_since(started).as_millis() as u64),
        duration_ms = started.elapsed().as_millis() as u64,
        status = ending.status().as_str(),
        "answer ended"
    );
}

/// Reads the upstream into the log until it ends, fails or the generation is stopped.
async fn stream(parts: &Parts, spec: &mut Spec, seen: &mut Seen) -> Outcome {
    let stop = spec.stop.clone();
    let stopped = || Outcome::Stopped(stop.reason());
    // One cancellation future for the whole answer: making one per token costs a lock
    // and a waiter registration each time.
    let cancelled = stop.cancelled();
    tokio::pin!(cancelled);
    let mut upstream = tokio::select! {
        _ = &mut cancelled => return stopped(),
        opened = spec.upstream.opened(&spec.answering) => match opened {
            Ok(opened) => {
                spec.answering = opened.target;
                opened.stream
            }
            Err(OpenFailed { error, target }) => {
                spec.answering = target;
                // Counted where it failed (each target's failures are), not again at the end.
                return Outcome::Failed(error);
            }
        },
    };
    // Offered four times per interval, so the writer's round, once per interval, finds a
    // text at most a quarter interval old: a crash loses at most 1¼ intervals.
    let mut checkpoint = tokio::time::interval(super::checkpoint::offer_every(parts.config.checkpoint_interval));
    checkpoint.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    checkpoint.tick().await;
    let mut checkpointed = 0;
    let mut end = StreamEnd::default();
    // STREAM_COALESCE_MS forces a window; else it adapts: joined while the node is busy.
    let (fixed, bound) = (parts.config.stream_coalesce, parts.config.stream_coalesce_max);
    // Text held back for the coalescing window, and whether its timer is armed. One
    // timer for the whole answer, moved when armed: a select! evaluates every branch's
    // expression on each wake, so a timer made there would be made (and the clock read)
    // once per token even while nothing is held.
    let mut held = String::new();
    let mut flush_armed = false;
    let flush = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(flush);
    loop {
        tokio::select! {
            biased;
            _ = &mut cancelled => {
                spec.writer.append(&held);
                return stopped();
            }
            _ = &mut flush, if flush_armed => {
                spec.writer.append(&std::mem::take(&mut held));
                flush_armed = false;
            }
            _ = checkpoint.tick() => {
                let length = spec.writer.length();
                if length != checkpointed {
                    checkpointed = length;
                    parts.checkpoints.offer(spec.ids.message_id, spec.writer.text());
                }
            }
            piece = upstream.next() => {
                let mut next = Some(piece);
                let (mut taken, pieces_before) = (0, seen.pieces);
                // Pieces already waiting join this append: when the server falls behind
                // it appends less often, in larger pieces, and never waits for more.
                while let Some(piece) = next.take() {
                    match piece {
                        Ok(Some(piece)) => {
                            let token = u32::from(piece.delta.is_some());
                            seen.pieces += token;
                            spec.tracked.add_tokens(token.into());
                            add_piece(piece, &mut held, &mut end);
                            seen.usage = end.usage;
                        }
                        Ok(None) => end.done = true,
                        Err(e) => {
                            spec.writer.append(&held);
                            parts.metrics.tokens_streamed(u64::from(seen.pieces - pieces_before));
                            return Outcome::Failed(e);
                        }
                    }
                    taken += 1;
                    if !end.done && taken < MAX_PIECES_PER_APPEND {
                        next = upstream.next().now_or_never();
                    }
                }
                parts.metrics.tokens_streamed(u64::from(seen.pieces - pieces_before));
                if !held.is_empty() {
                    seen.first_token.get_or_insert_with(Instant::now);
                    let window = match fixed.is_zero() {
                        false => fixed,
                        true => parts.headroom.coalesce_window(parts.directory.local_count(), bound),
                    };
                    if window.is_zero() || end.done {
                        spec.writer.append(&std::mem::take(&mut held));
                        flush_armed = false;
                    } else if !flush_armed {
                        flush.as_mut().reset(Instant::now() + window);
                        flush_armed = true;
                    }
                }
                if end.done {
                    break;
                }
            }
        }
    }
    match end.finish_reason {
        Some(finish_reason) => Outcome::Complete { finish_reason, usage: end.usage },
        // Every OpenAI-compatible server ends an answer with a reason; a stream without one was cut.
        None => Outcome::Failed(UpstreamError::Failed("the stream ended without a finish reason".into())),
    }
}

fn add_piece(piece: Piece, held: &mut String, end: &mut StreamEnd) {
    if let Some(delta) = piece.delta {
        // The text as it will be stored, so every reader reads what the row holds.
        held.push_str(&text::storable(&delta));
    }
    end.finish_reason = piece.finish_reason.or(end.finish_reason.take());
    end.usage = piece.usage.or(end.usage);
}

/// Writes the end of the answer, retrying briefly through a database blip. A statement
/// the database refuses is not retried. The error is what the client is told.
async fn store_end(parts: &Parts, ids: AnswerIds, end: &AnswerEnd<'_>) -> Result<(), ChatError> {
    const ATTEMPTS: u32 = 5;
    for attempt in 0..ATTEMPTS {
        match store::finish_answer(&parts.db, ids.message_id, end).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::error!(message_id = %ids.message_id, attempt, error = %e, "storing the answer failed");
                if !store::is_transient(&e) || attempt + 1 >= ATTEMPTS {
                    return Err(store::db_error(&e));
                }
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
        }
    }
    Err(ChatError::code(ErrorCode::Internal))
}

//! The HTTP/SSE wire, for clients that cannot use Socket.IO (curl, serverless front
//! ends, AI SDKs, proxies that break WebSockets). Same JWTs, as a Bearer header (or
//! `?token=`, which browsers' `EventSource` needs); same payloads as `/ai`.
//!
//! - `POST /v1/chat`: a `chat:start` payload in; `text/event-stream` out: `chat:ack`,
//!   then the `/ai` events in the `/ai` order. Each `chat:message` has `id:` set to the
//!   answer's UTF-16 offset after it; the final event's is the whole length.
//! - `GET /v1/answers/{messageId}/events`: resumes from `Last-Event-ID` (or `?offset=`).
//! - `POST /v1/answers/{messageId}/stop`: `{ ok: true, stopped }`.
//!
//! A refusal before anything starts is an HTTP error whose JSON body is the `/ai`
//! refusal ack; a failure after `chat:ack` ends the stream with `chat:error`.

use std::convert::Infallible;

use async_stream::stream;
use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, Uri},
    response::{
        IntoResponse, Response, Sse,
        sse::{Event, KeepAlive},
    },
    routing::{get, post},
};
use futures::Stream;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::{
    chat::{AnswerIds, ChatError, ConnectionId, ErrorCode, StartCommand},
    cluster::{Entry, LogReader},
    engine::{Engine, StartOutcome},
    http::api::{self, ApiError, WireErrors},
    metrics::OpenConnection,
    transport::{
        Wire,
        connections::ConnectionSlot,
        events::{ConversationCreated, StartAck, StopAck, UserMessageStored, final_event},
    },
};

/// Most bytes of answer text in one `chat:message` event (hyper pulls the stream only as
/// fast as the client reads, so nothing queues behind a slow one).
const FRAME_MAX_BYTES: usize = 64 * 1024;

/// The SSE routes.
pub fn router(wire: Wire) -> Router {
    // A start with `MAX_ATTACHMENTS` images of 5 MiB as data URLs; never less than axum's 2 MiB.
    let body_limit = crate::chat::attachments::max_start_bytes(wire.config.conversations.max_attachments).max(2 << 20);
    Router::new()
        .route("/v1/chat", post(chat).layer(axum::extract::DefaultBodyLimit::max(body_limit)))
        .route("/v1/answers/{message_id}/events", get(events))
        .route("/v1/answers/{message_id}/stop", post(stop))
        .layer(axum::middleware::map_response_with_state(wire.clone(), count_refusal))
        .with_state(wire)
}

/// A refusal: the `/ai` refusal ack as a JSON body, with the code's HTTP status.
/// The code of a refusal, on its response, for [`count_refusal`].
#[derive(Clone, Copy)]
struct Refused(ErrorCode);

/// Counts every refusal, wherever a handler made it, as `chat:error`s are counted on `/ai`.
async fn count_refusal(State(wire): State<Wire>, response: Response) -> Response {
    if let Some(Refused(code)) = response.extensions().get::<Refused>() {
        wire.engine.metrics().chat_error(*code);
    }
    response
}

/// A refusal before anything starts: the one error body, counted.
fn refusal(error: ChatError) -> Response {
    let code = error.code;
    let mut response = ApiError::from(error).into_response();
    response.extensions_mut().insert(Refused(code));
    response
}

/// The request's user: the verified token's, or in open mode the one it names.
async fn authenticate(wire: &Wire, headers: &HeaderMap, uri: &Uri, claimed: Option<&Value>) -> Result<String, Box<Response>> {
    api::caller(&wire.auth, headers, uri, claimed).await.map_err(|refused| Box::new(refused.into_response()))
}

/// The user of a request about one answer, and the answer's id from the path.
/// In open mode `?userId=` names the user.
async fn answer_of(wire: &Wire, headers: &HeaderMap, uri: &Uri, id: &str) -> Result<(String, Uuid), Box<Response>> {
    let claimed = api::query_value(uri, "userId").map(Value::String);
    let user = authenticate(wire, headers, uri, claimed.as_ref()).await?;
    let message_id =
        Uuid::try_parse(id).map_err(|_| Box::new(refusal(ChatError::new(ErrorCode::InvalidParams, "messageId is not a UUID"))))?;
    Ok((user, message_id))
}

/// Starts an answer: the `chat:start` payload in, the `/ai` events out as
/// `text/event-stream` (`chat:ack`, `chat:conversation`, `chat:user-message`,
/// `chat:message`..., then `chat:end`, `chat:stopped` or `chat:error`).
#[utoipa::path(
    post, path = "/v1/chat", tag = "sse",
    request_body = crate::http::openapi::ChatStart,
    responses((status = 200, content_type = "text/event-stream", body = crate::http::openapi::SseEvent, description = "The answer's events"), WireErrors),
    security(("bearer" = []))
)]
pub(crate) async fn chat(State(wire): State<Wire>, headers: HeaderMap, uri: Uri, body: Bytes) -> Response {
    let payload: Option<Value> = crate::chat::json::parse_lenient_bytes(&body).ok();
    let user = match authenticate(&wire, &headers, &uri, payload.as_ref().and_then(|p| p.get("userId"))).await {
        Ok(user) => user,
        Err(refused) => return *refused,
    };
    let Some(slot) = wire.connections.acquire(&user) else {
        return refusal(too_many_connections());
    };
    let Some(payload) = payload else {
        return refusal(ChatError::new(ErrorCode::InvalidPayload, "the body must be a JSON object"));
    };
    let command = match StartCommand::parse(&payload, &user, &wire.config) {
        Ok(c) => c,
        Err(e) => return refusal(e),
    };
    let message = command.message.clone();
    let connection = ConnectionId::new("sse", Uuid::new_v4());
    let (ids, user_message_id, parent_message_id, mut preamble, reader) = match wire.engine.start(&connection, &user, command).await {
        Ok(StartOutcome::Started(s)) => {
            let mut preamble = Vec::new();
            if s.created {
                preamble.push(event("chat:conversation", &ConversationCreated { conversation_id: s.ids.conversation_id }));
            }
            let stored = UserMessageStored {
                message_id: s.user_message_id,
                content: &message,
                conversation_id: s.ids.conversation_id,
                parent_message_id: s.parent_message_id,
            };
            preamble.push(event("chat:user-message", &stored));
            (s.ids, s.user_message_id, s.parent_message_id, preamble, s.reader)
        }
        // A repeat of an earlier start: its ack, then its answer from the start.
        Ok(StartOutcome::Repeated { ids, user_message_id, parent_message_id }) => {
            match wire.engine.subscribe(&user, ids.message_id, 0).await {
                Ok(s) => (ids, user_message_id, parent_message_id, Vec::new(), s.reader),
                Err(e) => return refusal(e),
            }
        }
        Err(e) => return refusal(e),
    };
    preamble.insert(0, event("chat:ack", &StartAck::ok(ids, user_message_id, parent_message_id)));
    let closed = ClosedGuard { engine: wire.engine.clone(), connection };
    respond(&wire, preamble, ids, reader, (slot, Some(closed)))
}

/// An answer's events from an offset: live while it runs, else from the stored row.
#[utoipa::path(
    get, path = "/v1/answers/{messageId}/events", tag = "sse",
    params(
        ("messageId" = String, Path, format = Uuid, description = "The answer's id"),
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this UTF-16 offset (the last event's `id:`)"),
        ("offset" = Option<u64>, Query, description = "The same, for clients that cannot set headers"),
    ),
    responses((status = 200, content_type = "text/event-stream", body = crate::http::openapi::SseEvent, description = "The answer's events"), WireErrors),
    security(("bearer" = []))
)]
pub(crate) async fn events(State(wire): State<Wire>, Path(message_id): Path<String>, headers: HeaderMap, uri: Uri) -> Response {
    let (user, message_id) = match answer_of(&wire, &headers, &uri, &message_id).await {
        Ok(found) => found,
        Err(refused) => return *refused,
    };
    let last_event_id = headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let offset = match last_event_id.or_else(|| api::query_value(&uri, "offset")).as_deref().map(str::trim) {
        None | Some("") => 0,
        Some(raw) => match raw.parse::<u64>() {
            Ok(n) => n,
            Err(_) => {
                return refusal(ChatError::new(ErrorCode::InvalidParams, "offset must be a whole number"));
            }
        },
    };
    let Some(slot) = wire.connections.acquire(&user) else {
        return refusal(too_many_connections());
    };
    match wire.engine.subscribe(&user, message_id, offset).await {
        Ok(s) => respond(&wire, Vec::new(), s.ids, s.reader, (slot, None)),
        Err(e) => refusal(e),
    }
}

/// Stops a running answer; its stream ends with `chat:stopped`.
#[utoipa::path(
    post, path = "/v1/answers/{messageId}/stop", tag = "sse",
    params(("messageId" = String, Path, format = Uuid, description = "The answer's id")),
    responses((status = 200, body = StopAck, description = "`stopped` is false when it had already ended"), WireErrors),
    security(("bearer" = []))
)]
pub(crate) async fn stop(State(wire): State<Wire>, Path(message_id): Path<String>, headers: HeaderMap, uri: Uri) -> Response {
    let (user, message_id) = match answer_of(&wire, &headers, &uri, &message_id).await {
        Ok(found) => found,
        Err(refused) => return *refused,
    };
    match wire.engine.stop(&user, message_id).await {
        Ok(stopped) => Json(StopAck { ok: true, stopped }).into_response(),
        Err(e) => refusal(e),
    }
}

/// Tells the engine when a `POST /v1/chat` response is gone (the client left, or it ended).
struct ClosedGuard {
    engine: Engine,
    connection: ConnectionId,
}

impl Drop for ClosedGuard {
    fn drop(&mut self) {
        let (engine, connection) = (self.engine.clone(), self.connection.clone());
        tokio::spawn(async move { engine.connection_closed(&connection).await });
    }
}

/// A user at `MAX_CONNECTIONS_PER_USER`: 429, as a socket's refused connect.
fn too_many_connections() -> ChatError {
    ChatError::new(ErrorCode::RateLimit, "too many open connections for this user")
}

/// What a stream holds until it ends: its place among the user's connections, for
/// `POST /v1/chat` the guard that tells the engine it is gone, and its count as an open
/// SSE connection.
type Held = (ConnectionSlot, Option<ClosedGuard>, OpenConnection);

/// The event stream: `preamble`, then the answer's log until its final event.
fn respond(
    wire: &Wire,
    preamble: Vec<Event>,
    ids: AnswerIds,
    reader: Box<dyn LogReader>,
    held: (ConnectionSlot, Option<ClosedGuard>),
) -> Response {
    let keep_alive = KeepAlive::new().interval(wire.config.sse_keepalive).text("keep-alive");
    let held = (held.0, held.1, wire.engine.metrics().sse_connection());
    Sse::new(answer_events(preamble, ids, reader, held)).keep_alive(keep_alive).into_response()
}

fn answer_events(
    preamble: Vec<Event>,
    ids: AnswerIds,
    mut reader: Box<dyn LogReader>,
    held: Held,
) -> impl Stream<Item = Result<Event, Infallible>> {
    stream! {
        let _held = held;
        for e in preamble {
            yield Ok(e);
        }
        let mut seq = 0;
        while let Some(entry) = reader.next(FRAME_MAX_BYTES).await {
            match entry {
                Entry::Text { text, offset, end } => {
                    let chunk = crate::transport::events::Chunk::new(ids, &text, offset, seq);
                    seq += 1;
                    yield Ok(event("chat:message", &chunk).id(end.to_string()));
                }
                Entry::Final(ending) => {
                    let (name, payload) = final_event(ids, &ending);
                    yield Ok(event(name, &payload).id(ending.length.to_string()));
                    break;
                }
            }
        }
    }
}

/// One named event with a JSON payload.
fn event<T: Serialize>(name: &str, data: &T) -> Event {
    let data = serde_json::to_string(data).unwrap_or_else(|_| "null".into());
    Event::default().event(name).data(data)
}

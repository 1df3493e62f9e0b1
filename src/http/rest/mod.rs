//! The REST routes over the caller's own history and usage, behind the same JWTs as the
//! wires (a Bearer header, or `?token=`; in open mode `?userId=` names the user):
//!
//! - `GET /v1/conversations?limit=&cursor=`: most recently updated first, a page at a time;
//! - `GET`, `PATCH` (`{ title }`), `DELETE /v1/conversations/{id}`;
//! - `GET /v1/messages/{id}`;
//! - `GET /v1/usage?from=&to=`.
//!
//! Another user's id, a missing one and a malformed one are the same 404 `NOT_FOUND`.

pub mod views;

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, Uri},
    routing::get,
};
use chrono::NaiveDate;
use serde_json::Value;
use uuid::Uuid;

use super::api::{ApiError, HistoryErrors, caller, query_value};
use crate::{
    auth::Authenticator,
    chat::{ErrorCode, text},
    engine::Engine,
};
use views::{ConversationItem, ConversationList, ConversationView, MessageView, UsageItem, UsageList};

/// Conversations a page holds when `limit` is not given, and at most.
const DEFAULT_PAGE: u64 = 20;
const MAX_PAGE: u64 = 100;
/// Longest title, in UTF-16 units.
const MAX_TITLE_UNITS: u64 = 200;

/// What the REST handlers share.
#[derive(Clone)]
pub(crate) struct RestState {
    engine: Engine,
    auth: Arc<Authenticator>,
}

/// The REST routes.
pub fn router(engine: Engine, auth: Arc<Authenticator>) -> Router {
    Router::new()
        .route("/v1/conversations", get(list_conversations))
        .route("/v1/conversations/{id}", get(get_conversation).patch(rename_conversation).delete(delete_conversation))
        .route("/v1/messages/{id}", get(get_message))
        .route("/v1/usage", get(get_usage))
        .with_state(RestState { engine, auth })
}

/// The caller, from the token (or, in open mode, `?userId=`).
fn user(s: &RestState, headers: &HeaderMap, uri: &Uri) -> Result<String, ApiError> {
    caller(&s.auth, headers, uri, query_value(uri, "userId").map(Value::String).as_ref())
}

/// An id from the path; a malformed one is `NOT_FOUND`, as a missing one is.
fn path_id(raw: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(raw).map_err(|_| ApiError::new(ErrorCode::NotFound, format!("{what} not found")))
}

fn invalid(message: &str) -> ApiError {
    ApiError::new(ErrorCode::InvalidParams, message)
}

/// The caller's conversations, most recently updated first.
#[utoipa::path(
    get, path = "/v1/conversations", tag = "history",
    params(
        ("limit" = Option<u64>, Query, minimum = 1, maximum = 100, description = "Conversations per page (default 20)"),
        ("cursor" = Option<String>, Query, description = "The previous page's `nextCursor`"),
    ),
    responses(
        (status = 200, body = ConversationList, description = "One page", links(
            ("read" = (operation_id = "get_conversation", parameters(("id" = "$response.body#/items/0/id")))),
            ("rename" = (operation_id = "rename_conversation", parameters(("id" = "$response.body#/items/0/id")))),
            ("delete" = (operation_id = "delete_conversation", parameters(("id" = "$response.body#/items/0/id")))),
        )),
        HistoryErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_conversations(
    State(s): State<RestState>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Json<ConversationList>, ApiError> {
    let user = user(&s, &headers, &uri)?;
    let limit = match query_value(&uri, "limit") {
        None => DEFAULT_PAGE,
        Some(raw) => match raw.parse::<u64>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => return Err(invalid("limit must be a whole number from 1 to 100")),
        },
    };
    let after = match query_value(&uri, "cursor") {
        None => None,
        Some(raw) => Some(views::page_key(&raw).ok_or_else(|| invalid("cursor is not one this server gave"))?),
    };
    let page = s.engine.conversations(&user, after, limit).await?;
    let next_cursor = page.next.map(views::cursor);
    Ok(Json(ConversationList { items: page.items.into_iter().map(ConversationItem::from).collect(), next_cursor }))
}

/// One of the caller's conversations, with its messages in order.
#[utoipa::path(
    get, path = "/v1/conversations/{id}", tag = "history",
    params(("id" = String, Path, format = Uuid, description = "The conversation's id")),
    responses(
        (status = 200, body = ConversationView, description = "The conversation and its messages", links(
            ("question" = (operation_id = "get_message", parameters(("id" = "$response.body#/messages/0/id")))),
            ("answer events" = (operation_id = "events", parameters(("messageId" = "$response.body#/messages/1/id")))),
            ("stop the answer" = (operation_id = "stop", parameters(("messageId" = "$response.body#/messages/1/id")))),
        )),
        HistoryErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_conversation(
    State(s): State<RestState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Json<ConversationView>, ApiError> {
    let user = user(&s, &headers, &uri)?;
    let id = path_id(&id, "conversation")?;
    Ok(Json(s.engine.conversation(&user, id).await?.into()))
}

/// Sets a conversation's title (stored trimmed). Its place in the list does not move.
#[utoipa::path(
    patch, path = "/v1/conversations/{id}", tag = "history",
    params(("id" = String, Path, format = Uuid, description = "The conversation's id")),
    request_body = views::RenameBody,
    responses((status = 200, body = ConversationItem, description = "The renamed conversation (`lastMessage` is `null`)"), HistoryErrors),
    security(("bearer" = []))
)]
pub(crate) async fn rename_conversation(
    State(s): State<RestState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Result<Json<ConversationItem>, ApiError> {
    let user = user(&s, &headers, &uri)?;
    let id = path_id(&id, "conversation")?;
    let title = title(&body)?;
    Ok(Json(s.engine.rename_conversation(&user, id, &title).await?.into()))
}

/// A new title from a PATCH body: a JSON object whose `title` is a string
/// (`INVALID_PAYLOAD` otherwise), not empty once trimmed and at most 200 UTF-16 units
/// (`INVALID_PARAMS` otherwise). U+0000 is stored as U+FFFD, as in messages.
fn title(body: &[u8]) -> Result<String, ApiError> {
    let payload = |m: &str| ApiError::new(ErrorCode::InvalidPayload, m);
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(body) else {
        return Err(payload("the body must be a JSON object"));
    };
    let Some(Value::String(title)) = body.get("title") else {
        return Err(payload("title must be a string"));
    };
    let title = title.trim();
    if title.is_empty() {
        return Err(invalid("title must not be empty"));
    }
    if text::utf16_len(title) > MAX_TITLE_UNITS {
        return Err(invalid("title is longer than 200 characters"));
    }
    Ok(text::storable(title).into_owned())
}

/// Deletes a conversation and its messages. Answers running in it are stopped first
/// (their clients get `chat:stopped`) and stored before the rows go.
#[utoipa::path(
    delete, path = "/v1/conversations/{id}", tag = "history",
    params(("id" = String, Path, format = Uuid, description = "The conversation's id")),
    responses((status = 204, description = "Deleted"), HistoryErrors),
    security(("bearer" = []))
)]
pub(crate) async fn delete_conversation(
    State(s): State<RestState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<StatusCode, ApiError> {
    let user = user(&s, &headers, &uri)?;
    let id = path_id(&id, "conversation")?;
    s.engine.delete_conversation(&user, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// One of the caller's messages, a question or an answer.
#[utoipa::path(
    get, path = "/v1/messages/{id}", tag = "history",
    params(("id" = String, Path, format = Uuid, description = "The message's id")),
    responses((status = 200, body = MessageView, description = "The message"), HistoryErrors),
    security(("bearer" = []))
)]
pub(crate) async fn get_message(
    State(s): State<RestState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Json<MessageView>, ApiError> {
    let user = user(&s, &headers, &uri)?;
    let id = path_id(&id, "message")?;
    Ok(Json(s.engine.message(&user, id).await?.into()))
}

/// The caller's token usage per UTC day and model, by day then model.
#[utoipa::path(
    get, path = "/v1/usage", tag = "usage",
    params(
        ("from" = Option<String>, Query, format = Date, description = "First day, `YYYY-MM-DD` (UTC), inclusive"),
        ("to" = Option<String>, Query, format = Date, description = "Last day, `YYYY-MM-DD` (UTC), inclusive"),
    ),
    responses((status = 200, body = UsageList, description = "The caller's usage rows"), HistoryErrors),
    security(("bearer" = []))
)]
pub(crate) async fn get_usage(State(s): State<RestState>, headers: HeaderMap, uri: Uri) -> Result<Json<UsageList>, ApiError> {
    let user = user(&s, &headers, &uri)?;
    let day = |name: &str| -> Result<Option<String>, ApiError> {
        let Some(raw) = query_value(&uri, name) else { return Ok(None) };
        match NaiveDate::parse_from_str(&raw, "%Y-%m-%d") {
            Ok(d) => Ok(Some(d.format("%Y-%m-%d").to_string())),
            Err(_) => Err(invalid(&format!("{name} must be a day, YYYY-MM-DD"))),
        }
    };
    let (from, to) = (day("from")?, day("to")?);
    if let (Some(from), Some(to)) = (&from, &to)
        && from > to
    {
        return Err(invalid("from is after to"));
    }
    let rows = s.engine.usage(&user, from.as_deref(), to.as_deref()).await?;
    Ok(Json(UsageList { usage: rows.into_iter().map(UsageItem::from).collect() }))
}

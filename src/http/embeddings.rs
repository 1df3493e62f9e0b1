//! `POST /v1/embeddings` in the OpenAI shape, behind the same tokens as the other
//! routes, through the engine's shared batching queue.

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, Uri},
    routing::post,
};
use serde::Serialize;
use serde_json::Value;
use utoipa::{IntoResponses, ToSchema};

use super::api::{ApiError, ErrorBody, caller};
use crate::{
    auth::Authenticator,
    chat::{ChatError, ErrorCode, json::parse_lenient_bytes},
    engine::Engine,
};

#[derive(Clone)]
pub(crate) struct EmbeddingsState {
    engine: Engine,
    auth: Arc<Authenticator>,
}

pub fn router(engine: Engine, auth: Arc<Authenticator>) -> Router {
    Router::new().route("/v1/embeddings", post(create)).with_state(EmbeddingsState { engine, auth })
}

/// The request: OpenAI's, with text inputs.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct EmbeddingRequest {
    /// A string, or an array of at most 2048 strings; none empty, each at most
    /// `MAX_MESSAGE_CHARS` UTF-16 units.
    input: EmbeddingInput,
    /// `EMBEDDING_MODEL` when given; any other is `INVALID_MODEL`.
    model: Option<String>,
    /// Only `float`.
    encoding_format: Option<String>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
pub enum EmbeddingInput {
    One(String),
    Many(Vec<String>),
}

/// OpenAI's `list` of embeddings.
#[derive(Serialize, ToSchema)]
pub struct EmbeddingList {
    #[schema(example = "list")]
    object: &'static str,
    data: Vec<EmbeddingItem>,
    model: String,
    usage: EmbeddingUsage,
}

#[derive(Serialize, ToSchema)]
pub struct EmbeddingItem {
    #[schema(example = "embedding")]
    object: &'static str,
    /// The input's place in the request.
    index: usize,
    embedding: Vec<f64>,
}

#[derive(Serialize, ToSchema)]
pub struct EmbeddingUsage {
    prompt_tokens: u64,
    total_tokens: u64,
}

/// The error responses of `POST /v1/embeddings`.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum EmbeddingErrors {
    /// `INVALID_PAYLOAD`, `INVALID_PARAMS`, `INVALID_MODEL` or `MESSAGE_TOO_LONG`.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// `UNAUTHORIZED`: no token, or a bad one.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// `RATE_LIMIT`: the queue of waiting inputs is full, or the upstream's limit was met.
    #[response(status = 429)]
    TooMany(ErrorBody),
    /// `INTERNAL`.
    #[response(status = 500)]
    Internal(ErrorBody),
    /// `UPSTREAM_ERROR`.
    #[response(status = 502)]
    Upstream(ErrorBody),
    /// `UNAVAILABLE`.
    #[response(status = 503)]
    Unavailable(ErrorBody),
    /// `UPSTREAM_TIMEOUT`.
    #[response(status = 504)]
    UpstreamTimeout(ErrorBody),
}

/// Vectors for the inputs, in order; concurrent requests share upstream calls.
#[utoipa::path(
    post, path = "/v1/embeddings", tag = "models",
    request_body = EmbeddingRequest,
    responses((status = 200, body = EmbeddingList, description = "One vector per input, in order"), EmbeddingErrors),
    security(("bearer" = []))
)]
pub(crate) async fn create(
    State(s): State<EmbeddingsState>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Result<Json<EmbeddingList>, ApiError> {
    let payload: Option<Value> = parse_lenient_bytes(&body).ok();
    let user = caller(&s.auth, &headers, &uri, payload.as_ref().and_then(|p| p.get("user"))).await?;
    let payload =
        payload.filter(Value::is_object).ok_or_else(|| ApiError::new(ErrorCode::InvalidPayload, "the body must be a JSON object"))?;
    let configured = s.engine.embedding_model();
    match payload.get("model") {
        None | Some(Value::Null) => {}
        Some(Value::String(m)) if m == configured => {}
        Some(_) => return Err(ApiError::new(ErrorCode::InvalidModel, format!("the embedding model is {configured}"))),
    }
    match payload.get("encoding_format") {
        None | Some(Value::Null) => {}
        Some(Value::String(f)) if f == "float" => {}
        Some(_) => return Err(ApiError::new(ErrorCode::InvalidParams, "encoding_format must be float")),
    }
    if payload.get("dimensions").is_some_and(|d| !d.is_null()) {
        return Err(ChatError::new(ErrorCode::InvalidParams, "dimensions cannot be chosen").into());
    }
    let done = s.engine.embed(&user, payload.get("input")).await?;
    let data =
        done.vectors.into_iter().enumerate().map(|(index, embedding)| EmbeddingItem { object: "embedding", index, embedding }).collect();
    let usage = EmbeddingUsage { prompt_tokens: done.prompt_tokens, total_tokens: done.prompt_tokens };
    Ok(Json(EmbeddingList { object: "list", data, model: done.model, usage }))
}

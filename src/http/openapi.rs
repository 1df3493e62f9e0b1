//! The OpenAPI 3.1 document of every HTTP route, generated from the handlers'
//! annotations, at `/openapi.json`; and an interactive page over it at `/docs`, whose
//! script is served from this binary (no CDN: it works with no internet access).

use axum::{
    Json, Router,
    http::header,
    response::{Html, IntoResponse},
    routing::get,
};
use serde_json::json;
use utoipa::{
    Modify, OpenApi, ToSchema,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(title = "chatwire", description = "chatwire's HTTP routes: the SSE wire, the caller's history and usage, health. \
The Socket.IO wire (`/ai`) is described in docs/PROTOCOL.md."),
    paths(
        super::info, super::health, super::status,
        crate::transport::sse::chat, crate::transport::sse::events, crate::transport::sse::stop,
        super::rest::list_conversations, super::rest::get_conversation, super::rest::rename_conversation,
        super::rest::delete_conversation, super::rest::get_message, super::rest::get_usage,
        super::models::list, super::embeddings::create,
    ),
    components(schemas(super::api::ErrorBody, ChatStart)),
    modifiers(&BearerAuth),
    tags(
        (name = "sse", description = "The SSE wire: the `/ai` events over `text/event-stream`"),
        (name = "history", description = "The caller's conversations and messages"),
        (name = "usage", description = "The caller's token usage"),
        (name = "models", description = "Every provider's models, and embeddings (the OpenAI shapes)"),
        (name = "service", description = "Health and identity"),
    )
)]
pub struct ApiDoc;

/// The `bearer` scheme the protected routes name: the same JWTs as the wires.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build();
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// The `chat:start` payload, as `POST /v1/chat` takes it (docs/PROTOCOL.md has the rules).
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct ChatStart {
    /// Not empty; at most `MAX_MESSAGE_CHARS` UTF-16 units.
    #[schema(min_length = 1)]
    message: String,
    /// One of the caller's conversations; absent starts a new one.
    #[schema(format = Uuid)]
    conversation_id: Option<String>,
    model: Option<String>,
    /// At most `MAX_TOKENS_LIMIT` (16384 unless configured).
    #[schema(minimum = 1)]
    max_tokens: Option<u32>,
    #[schema(minimum = 0, maximum = 2)]
    temperature: Option<f32>,
    /// Must be the token's user when given (open mode: names the user).
    user_id: Option<String>,
    /// Idempotency key.
    #[schema(max_length = 64)]
    client_message_id: Option<String>,
    system_prompt: Option<String>,
    /// Images of the question: at most `MAX_ATTACHMENTS` (4), each `{ type: "image", url }`
    /// with an http(s) URL or a `data:image/<png|jpeg|gif|webp>;base64,...` URL of at most 5 MiB.
    attachments: Option<Vec<super::rest::views::AttachmentView>>,
}

/// One event of an SSE response: its name, and its payload as JSON text (the `/ai`
/// event's payload, docs/PROTOCOL.md).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct SseEvent {
    event: SseEventName,
    #[schema(content_media_type = "application/json")]
    data: String,
    /// On `chat:message` and final events: the answer's UTF-16 length after it (resume from there).
    id: Option<String>,
}

/// The events an SSE response carries, in this order.
#[derive(ToSchema)]
#[allow(dead_code)]
pub enum SseEventName {
    #[serde(rename = "chat:ack")]
    Ack,
    #[serde(rename = "chat:conversation")]
    Conversation,
    #[serde(rename = "chat:user-message")]
    UserMessage,
    #[serde(rename = "chat:message")]
    Message,
    #[serde(rename = "chat:end")]
    End,
    #[serde(rename = "chat:stopped")]
    Stopped,
    #[serde(rename = "chat:error")]
    Error,
}

/// `/openapi.json` and the `/docs` page.
pub fn router() -> Router {
    Router::new()
        .route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
        .route("/docs", get(docs))
        .route("/docs/scalar.js", get(script))
}

async fn docs() -> Html<String> {
    // No fonts from the network: the page renders with the system's.
    let config = json!({ "url": "/openapi.json", "withDefaultFonts": false, "hideClientButton": true });
    Html(scalar_api_reference::scalar_html(&config, Some("/docs/scalar.js")))
}

async fn script() -> impl IntoResponse {
    match scalar_api_reference::get_asset("scalar.js") {
        Some(js) => ([(header::CONTENT_TYPE, "application/javascript; charset=utf-8")], js).into_response(),
        None => axum::http::StatusCode::NOT_FOUND.into_response(),
    }
}

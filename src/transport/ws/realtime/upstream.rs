//! The Realtime API over WebSocket: one connection per client session, opened with
//! `?model=` and the server's key, whose first message is the server's GA
//! `session.update` (instructions, model, voice, turn detection, output limit).

use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{self, client::IntoClientRequest, http::HeaderValue},
};

use super::frames::{Code, Problem};
use crate::config::RealtimeConfig;

/// An open upstream connection.
pub type Upstream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Largest event the upstream may send (audio deltas are well under it).
const MAX_UPSTREAM_MESSAGE: usize = 16 << 20;

/// Connects to `OPENAI_REALTIME_URL?model=`; a refusal becomes what the client is told.
pub async fn connect(config: &RealtimeConfig) -> Result<Upstream, Problem> {
    let url = format!("{}?model={}", config.url, form_urlencoded::byte_serialize(config.model.as_bytes()).collect::<String>());
    let mut request = url.into_client_request().map_err(|e| {
        tracing::error!(error = %e, "OPENAI_REALTIME_URL cannot be requested");
        Problem::new(Code::UpstreamError, "the voice upstream cannot be reached")
    })?;
    if let Some(key) = &config.api_key
        && let Ok(value) = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
    {
        request.headers_mut().insert(http::header::AUTHORIZATION, value);
    }
    let limits = tungstenite::protocol::WebSocketConfig::default().max_message_size(Some(MAX_UPSTREAM_MESSAGE));
    match tokio_tungstenite::connect_async_with_config(request, Some(limits), false).await {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            tracing::warn!(status, "the Realtime upstream refused the session");
            Err(match status {
                401 | 403 => Problem::new(Code::UpstreamUnauthorized, "the voice upstream refused the server's key"),
                429 => Problem::new(Code::UpstreamRateLimit, "the voice upstream is rate limiting; try again later"),
                _ => Problem::new(Code::UpstreamError, "the voice upstream refused the session"),
            }
            .with(json!({ "status": status })))
        }
        Err(e) => {
            tracing::warn!(error = %e, "the Realtime upstream cannot be reached");
            Err(Problem::new(Code::UpstreamError, "the voice upstream cannot be reached"))
        }
    }
}

/// The server's `session.update`, in the GA shape.
pub fn session_update(config: &RealtimeConfig, instructions: &str) -> String {
    let turn_detection = match config.turn_detection.as_str() {
        "none" => Value::Null,
        "server_vad" => json!({ "type": "server_vad", "silence_duration_ms": config.vad_silence_ms }),
        other => json!({ "type": other }),
    };
    let mut input = json!({ "format": { "type": "audio/pcm", "rate": 24000 }, "turn_detection": turn_detection });
    if !config.transcription_model.is_empty() {
        input["transcription"] = json!({ "model": config.transcription_model });
    }
    let mut session = json!({
        "type": "realtime",
        "model": config.model,
        "instructions": instructions,
        "output_modalities": ["audio"],
        "audio": {
            "input": input,
            "output": { "format": { "type": "audio/pcm", "rate": 24000 }, "voice": config.voice },
        },
        "max_output_tokens": config.max_output_tokens,
    });
    if let Some(t) = config.temperature {
        session["temperature"] = json!(t);
    }
    json!({ "type": "session.update", "session": session }).to_string()
}

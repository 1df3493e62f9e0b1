//! The voice proxy's settings (`REALTIME_*`): where the Realtime upstream is, what the
//! server tells it (model, voice, turn detection, output limit, the presets'
//! instructions), what a client may change, and the limits of a session.

use std::{collections::BTreeMap, time::Duration};

use super::{ConfigError, Secret, bad, vars::Vars};

/// The voice proxy's settings.
#[derive(Clone, Debug)]
pub struct RealtimeConfig {
    /// Where clients connect (`REALTIME_PATH`, default `/realtime`; `/` serves old clients).
    pub path: String,
    /// The Realtime API's WebSocket URL (`OPENAI_REALTIME_URL`); `?model=` is added.
    pub url: String,
    /// Sent as `Authorization: Bearer` upstream (`REALTIME_API_KEY`, else `OPENAI_API_KEY`).
    pub api_key: Option<Secret>,
    pub model: String,
    pub voice: String,
    /// `server_vad`, `semantic_vad` or `none` (`REALTIME_TURN_DETECTION`).
    pub turn_detection: String,
    pub vad_silence_ms: u32,
    /// The model that transcribes the user's audio, so it can be stored; empty turns it off.
    pub transcription_model: String,
    /// Sent as `temperature` when set (`REALTIME_TEMPERATURE`), as written (an `f64`, so 0.7
    /// stays 0.7 in JSON); the GA API may ignore it.
    pub temperature: Option<f64>,
    pub max_output_tokens: u32,
    /// Instructions by preset name (`REALTIME_PRESETS_FILE`, else neutral built-ins).
    pub presets: BTreeMap<String, String>,
    /// The `session` fields a client's `session.update` may set, as dotted paths.
    pub client_fields: Vec<String>,
    /// Longest session (`REALTIME_MAX_SESSION_SECONDS`, at most the upstream's 60 minutes).
    pub max_session: Duration,
    /// Sessions one user may hold at once on this node.
    pub max_sessions_per_user: usize,
    /// How long a client may send nothing before its session ends.
    pub idle_timeout: Duration,
    /// Tokens a user's sessions may spend per UTC day (0: no cap).
    pub daily_tokens: u64,
    /// How long the upstream may stay silent while an answer is due.
    pub upstream_idle_timeout: Duration,
}

/// The built-in presets: neutral examples, replaced by `REALTIME_PRESETS_FILE`.
const BUILT_IN_PRESETS: [(&str, &str); 3] = [
    ("default", "You are a helpful voice assistant. Answer clearly and warmly, in the language the user speaks."),
    ("brief", "You are a helpful voice assistant. Answer in one or two short sentences."),
    ("philosophical", "You are a thoughtful voice companion. Explore the question's ideas and ask one question back."),
];

/// The `session` fields a client may change when `REALTIME_CLIENT_SESSION_FIELDS` is unset.
const DEFAULT_CLIENT_FIELDS: &str = "audio.output.voice,audio.input.turn_detection,audio.input.transcription";

pub(super) fn realtime_config(env: &Vars) -> Result<RealtimeConfig, ConfigError> {
    let path = env.get("REALTIME_PATH").unwrap_or("/realtime").to_owned();
    if !path.starts_with('/') || path.contains(['{', '}', '*', '?', '#']) {
        return Err(bad("REALTIME_PATH", format!("{path:?} is not a plain path like /realtime")));
    }
    if path == env.get("WS_PATH").unwrap_or("/ws") {
        return Err(bad("REALTIME_PATH", format!("{path:?} is WS_PATH too; the two wires need their own paths")));
    }
    let url = env.get("OPENAI_REALTIME_URL").unwrap_or("wss://api.openai.com/v1/realtime").to_owned();
    if !(url.starts_with("ws://") || url.starts_with("wss://")) || url.contains('?') {
        return Err(bad("OPENAI_REALTIME_URL", format!("{url:?} is not a ws:// or wss:// URL without a query")));
    }
    let turn_detection = env.get("REALTIME_TURN_DETECTION").unwrap_or("server_vad").to_owned();
    if !matches!(turn_detection.as_str(), "server_vad" | "semantic_vad" | "none") {
        return Err(bad("REALTIME_TURN_DETECTION", format!("{turn_detection:?} is not server_vad, semantic_vad or none")));
    }
    let temperature = match env.get("REALTIME_TEMPERATURE") {
        None => None,
        Some(_) => match env.parse("REALTIME_TEMPERATURE", 0.8f64)? {
            t if (0.6..=1.2).contains(&t) => Some(t),
            _ => return Err(bad("REALTIME_TEMPERATURE", "must be between 0.6 and 1.2")),
        },
    };
    let max_session = match env.parse("REALTIME_MAX_SESSION_SECONDS", 1800u64)? {
        n if (1..=3600).contains(&n) => Duration::from_secs(n),
        _ => return Err(bad("REALTIME_MAX_SESSION_SECONDS", "must be between 1 and 3600 (the upstream ends sessions at 60 minutes)")),
    };
    Ok(RealtimeConfig {
        path,
        url,
        api_key: env.get("REALTIME_API_KEY").or_else(|| env.get("OPENAI_API_KEY")).map(Secret::new),
        model: env.get("REALTIME_MODEL").unwrap_or("gpt-realtime").to_owned(),
        voice: env.get("REALTIME_VOICE").unwrap_or("alloy").to_owned(),
        turn_detection,
        vad_silence_ms: env.parse("REALTIME_VAD_SILENCE_MS", 500u32)?,
        transcription_model: env.get("REALTIME_TRANSCRIPTION_MODEL").unwrap_or("gpt-4o-mini-transcribe").to_owned(),
        temperature,
        max_output_tokens: match env.parse("REALTIME_MAX_OUTPUT_TOKENS", 4096u32)? {
            n if (1..=4096).contains(&n) => n,
            _ => return Err(bad("REALTIME_MAX_OUTPUT_TOKENS", "must be between 1 and 4096")),
        },
        presets: presets(env)?,
        client_fields: env
            .list("REALTIME_CLIENT_SESSION_FIELDS")
            .unwrap_or_else(|| DEFAULT_CLIENT_FIELDS.split(',').map(str::to_owned).collect()),
        max_session,
        max_sessions_per_user: match env.parse("REALTIME_MAX_SESSIONS_PER_USER", 2usize)? {
            0 => return Err(bad("REALTIME_MAX_SESSIONS_PER_USER", "must be at least 1")),
            n => n,
        },
        idle_timeout: match env.parse("REALTIME_IDLE_TIMEOUT_SECONDS", 300u64)? {
            0 => return Err(bad("REALTIME_IDLE_TIMEOUT_SECONDS", "must be at least 1")),
            n => Duration::from_secs(n),
        },
        daily_tokens: env.parse("REALTIME_DAILY_TOKENS", 0u64)?,
        upstream_idle_timeout: match env.parse("REALTIME_UPSTREAM_IDLE_TIMEOUT_MS", 30_000u64)? {
            0 => return Err(bad("REALTIME_UPSTREAM_IDLE_TIMEOUT_MS", "must be above 0")),
            n => Duration::from_millis(n),
        },
    })
}

/// `REALTIME_PRESETS_FILE`: a JSON object of preset names to instructions, with a `default`.
fn presets(env: &Vars) -> Result<BTreeMap<String, String>, ConfigError> {
    const VAR: &str = "REALTIME_PRESETS_FILE";
    let Some(file) = env.get(VAR) else {
        return Ok(BUILT_IN_PRESETS.iter().map(|(name, text)| ((*name).to_owned(), (*text).to_owned())).collect());
    };
    let text = std::fs::read_to_string(file).map_err(|e| bad(VAR, format!("cannot read {file:?}: {e}")))?;
    let presets: BTreeMap<String, String> =
        serde_json::from_str(&text).map_err(|e| bad(VAR, format!("{file:?} is not a JSON object of strings: {e}")))?;
    if !presets.contains_key("default") {
        return Err(bad(VAR, format!("{file:?} has no \"default\" preset")));
    }
    Ok(presets)
}

//! The start command: a `chat:start` payload (the same JSON on every wire) validated
//! into a typed command for the token's user. Never panics, whatever the JSON.

use serde_json::Value;
use uuid::Uuid;

use super::error::{ChatError, ErrorCode};
use crate::config::Config;

/// Longest accepted `clientMessageId`.
pub const MAX_CLIENT_MESSAGE_ID: usize = 64;
/// Longest accepted model name.
const MAX_MODEL_NAME: usize = 128;

/// A validated `chat:start`.
#[derive(Clone, Debug, PartialEq)]
pub struct StartCommand {
    pub message: String,
    /// `None` starts a new conversation.
    pub conversation_id: Option<Uuid>,
    pub model: String,
    /// The provider the client named (`provider`); `None` routes by the model name.
    pub provider: Option<String>,
    pub max_tokens: u32,
    pub temperature: f32,
    pub client_message_id: Option<String>,
    pub system_prompt: Option<String>,
    /// A named system prompt of `SYSTEM_PROMPT_PRESETS`; for a conversation started with
    /// one, the stored one when the start names none.
    pub preset: Option<String>,
    /// The context the client sent itself (canyon's `history`), used instead of the
    /// stored conversation's; `None` on wires that send none.
    pub history: Option<Vec<super::HistoryMessage>>,
    /// Where in the conversation's tree the new messages go.
    pub branch: Branch,
    /// The question's images (`attachments`), at most `MAX_ATTACHMENTS`.
    pub attachments: Vec<super::attachments::Attachment>,
}

/// Where a start puts its messages in the conversation's tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Branch {
    /// A new question after this message (`parentMessageId`), or after the active leaf.
    Continue(Option<Uuid>),
    /// A new question beside this stored one (`chat:edit`).
    Edit(Uuid),
    /// A new answer beside this stored one, to the same question (`chat:regenerate`).
    Regenerate(Uuid),
}

impl StartCommand {
    /// Validates a raw payload for the token's `user`. Never panics, whatever the JSON.
    pub fn parse(payload: &Value, user: &str, config: &Config) -> Result<Self, ChatError> {
        let Value::Object(obj) = payload else {
            return Err(ChatError::new(ErrorCode::InvalidPayload, "payload must be an object"));
        };
        let field = |name: &str| obj.get(name).filter(|v| !v.is_null());

        match field("userId") {
            None => {}
            Some(Value::String(s)) if s == user => {}
            Some(Value::Number(n)) if n.to_string() == user => {}
            Some(Value::String(_) | Value::Number(_)) => {
                return Err(ChatError::new(ErrorCode::Forbidden, "userId does not match the authenticated user"));
            }
            Some(_) => return Err(wrong_type("userId", "a string")),
        }

        let message = match field("message") {
            Some(Value::String(s)) if !s.trim().is_empty() => s,
            Some(Value::String(_)) | None => {
                return Err(ChatError::new(ErrorCode::InvalidPayload, "message is required"));
            }
            Some(_) => return Err(wrong_type("message", "a string")),
        };
        if too_long(message, config) {
            return Err(ChatError::new(
                ErrorCode::MessageTooLong,
                format!("message is longer than {} characters", config.max_message_chars),
            ));
        }

        let conversation_id = match field("conversationId") {
            None => None,
            Some(Value::String(s)) => {
                Some(Uuid::try_parse(s).map_err(|_| ChatError::new(ErrorCode::InvalidParams, "conversationId is not a UUID"))?)
            }
            Some(_) => return Err(wrong_type("conversationId", "a string")),
        };

        let parent = match field("parentMessageId") {
            None => None,
            Some(Value::String(s)) => {
                Some(Uuid::try_parse(s).map_err(|_| ChatError::new(ErrorCode::InvalidParams, "parentMessageId is not a UUID"))?)
            }
            Some(_) => return Err(wrong_type("parentMessageId", "a string")),
        };
        if parent.is_some() && conversation_id.is_none() {
            return Err(ChatError::new(ErrorCode::InvalidParams, "parentMessageId needs a conversationId"));
        }

        let model = match field("model") {
            None => config.default_model.clone(),
            Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_MODEL_NAME => s.clone(),
            Some(Value::String(_)) => {
                return Err(ChatError::new(ErrorCode::InvalidModel, "model name is empty or too long"));
            }
            Some(_) => return Err(wrong_type("model", "a string")),
        };
        let provider = match field("provider") {
            None => None,
            Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_MODEL_NAME => Some(s.clone()),
            Some(Value::String(_)) => {
                return Err(ChatError::new(ErrorCode::InvalidModel, "provider name is empty or too long"));
            }
            Some(_) => return Err(wrong_type("provider", "a string")),
        };
        // `{ provider, model }` is checked as the `provider/model` it stands for.
        let asked = provider.as_ref().map_or_else(|| model.clone(), |p| format!("{p}/{model}"));
        if !config.allowed_models.is_empty() && !config.allowed_models.contains(&asked) {
            return Err(ChatError::new(ErrorCode::InvalidModel, "model is not allowed"));
        }

        let max_tokens = match field("maxTokens") {
            None => config.default_max_tokens,
            Some(Value::Number(n)) => n
                .as_u64()
                .filter(|&t| t >= 1 && t <= u64::from(config.max_tokens_limit))
                .and_then(|t| u32::try_from(t).ok())
                .ok_or_else(|| {
                    ChatError::new(ErrorCode::InvalidParams, format!("maxTokens must be an integer from 1 to {}", config.max_tokens_limit))
                })?,
            Some(_) => return Err(wrong_type("maxTokens", "a number")),
        };

        let temperature = match field("temperature") {
            None => config.default_temperature,
            Some(Value::Number(n)) => n
                .as_f64()
                .filter(|t| (0.0..=2.0).contains(t))
                .map(|t| t as f32)
                .ok_or_else(|| ChatError::new(ErrorCode::InvalidParams, "temperature must be from 0 to 2"))?,
            Some(_) => return Err(wrong_type("temperature", "a number")),
        };

        let client_message_id = match field("clientMessageId") {
            None => None,
            Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_CLIENT_MESSAGE_ID => Some(super::text::storable(s).into_owned()),
            Some(Value::String(_)) => {
                return Err(ChatError::new(
                    ErrorCode::InvalidParams,
                    format!("clientMessageId must be 1 to {MAX_CLIENT_MESSAGE_ID} characters"),
                ));
            }
            Some(_) => return Err(wrong_type("clientMessageId", "a string")),
        };

        let system_prompt = match field("systemPrompt") {
            None => None,
            Some(_) if !config.allow_client_system_prompt => {
                return Err(ChatError::new(ErrorCode::Forbidden, "systemPrompt is not allowed on this server"));
            }
            Some(Value::String(s)) if !too_long(s, config) => Some(s.clone()).filter(|s| !s.trim().is_empty()),
            Some(Value::String(_)) => {
                return Err(ChatError::new(ErrorCode::MessageTooLong, "systemPrompt is too long"));
            }
            Some(_) => return Err(wrong_type("systemPrompt", "a string")),
        };

        let attachments = super::attachments::parse(field("attachments"), config.conversations.max_attachments)?;

        let preset = match field("preset") {
            None => None,
            Some(Value::String(s)) if config.system_prompt_presets.contains_key(s) => Some(s.clone()),
            Some(Value::String(_)) => return Err(ChatError::new(ErrorCode::InvalidParams, "unknown preset")),
            Some(_) => return Err(wrong_type("preset", "a string")),
        };

        Ok(Self {
            // Stored, echoed in `chat:user-message` and sent upstream as stored.
            message: super::text::storable(message).into_owned(),
            conversation_id,
            model,
            provider,
            max_tokens,
            temperature,
            client_message_id,
            system_prompt,
            preset,
            history: None,
            branch: Branch::Continue(parent),
            attachments,
        })
    }
}

/// Over `MAX_MESSAGE_CHARS`, counted as JavaScript's `string.length` (UTF-16 units),
/// so an emoji counts two, as in the client's own counter.
fn too_long(text: &str, config: &Config) -> bool {
    super::text::utf16_len(text) > config.max_message_chars as u64
}

/// A field of the wrong JSON type.
pub(crate) fn wrong_type(field: &str, expected: &str) -> ChatError {
    ChatError::new(ErrorCode::InvalidPayload, format!("{field} must be {expected}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> Config {
        Config::from_vars(Default::default()).unwrap()
    }

    fn code(v: Value) -> ErrorCode {
        StartCommand::parse(&v, "u1", &config()).unwrap_err().code
    }

    #[test]
    fn defaults_fill_what_the_client_left_out() {
        let r = StartCommand::parse(&json!({"message": "hi", "conversationId": null, "userId": "u1"}), "u1", &config()).unwrap();
        assert_eq!(r.model, "gpt-4");
        assert_eq!(r.max_tokens, 4096);
        assert_eq!(r.temperature, 0.7);
        assert_eq!(r.conversation_id, None);
    }

    #[test]
    fn each_mistake_has_its_code() {
        assert_eq!(code(json!("hi")), ErrorCode::InvalidPayload);
        assert_eq!(code(json!({})), ErrorCode::InvalidPayload);
        assert_eq!(code(json!({"message": "  "})), ErrorCode::InvalidPayload);
        assert_eq!(code(json!({"message": 3})), ErrorCode::InvalidPayload);
        assert_eq!(code(json!({"message": "x".repeat(32_001)})), ErrorCode::MessageTooLong);
        assert_eq!(code(json!({"message": "hi", "conversationId": "nope"})), ErrorCode::InvalidParams);
        assert_eq!(code(json!({"message": "hi", "temperature": 2.5})), ErrorCode::InvalidParams);
        assert_eq!(code(json!({"message": "hi", "temperature": "hot"})), ErrorCode::InvalidPayload);
        assert_eq!(code(json!({"message": "hi", "maxTokens": 0})), ErrorCode::InvalidParams);
        assert_eq!(code(json!({"message": "hi", "maxTokens": 1.5})), ErrorCode::InvalidParams);
        assert_eq!(code(json!({"message": "hi", "userId": "u2"})), ErrorCode::Forbidden);
        assert_eq!(code(json!({"message": "hi", "userId": {}})), ErrorCode::InvalidPayload);
        assert_eq!(code(json!({"message": "hi", "clientMessageId": "k".repeat(65)})), ErrorCode::InvalidParams);
    }

    #[test]
    fn a_client_system_prompt_is_forbidden_when_switched_off() {
        let mut off = config();
        off.allow_client_system_prompt = false;
        let e = StartCommand::parse(&json!({"message": "hi", "systemPrompt": "be a pirate"}), "u1", &off).unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden);
        assert!(StartCommand::parse(&json!({"message": "hi"}), "u1", &off).is_ok());
        assert_eq!(
            StartCommand::parse(&json!({"message": "hi", "systemPrompt": "x"}), "u1", &config()).unwrap().system_prompt.as_deref(),
            Some("x")
        );
    }

    #[test]
    fn the_length_limits_count_utf16_units() {
        let mut small = config();
        small.max_message_chars = 4;
        let parse = |v: Value| StartCommand::parse(&v, "u1", &small).map(|_| ()).map_err(|e| e.code);
        assert_eq!(parse(json!({"message": "😀😀"})), Ok(()));
        assert_eq!(parse(json!({"message": "😀😀x"})), Err(ErrorCode::MessageTooLong));
        assert_eq!(parse(json!({"message": "hi", "systemPrompt": "😀😀"})), Ok(()));
        assert_eq!(parse(json!({"message": "hi", "systemPrompt": "😀😀x"})), Err(ErrorCode::MessageTooLong));
    }

    #[test]
    fn numeric_user_ids_match_their_string_form() {
        assert!(StartCommand::parse(&json!({"message": "hi", "userId": 42}), "42", &config()).is_ok());
    }

    #[test]
    fn temperature_reaches_the_upstream_as_written() {
        let r = StartCommand::parse(&json!({"message": "hi", "temperature": 0.3}), "u1", &config()).unwrap();
        assert_eq!(serde_json::to_string(&r.temperature).unwrap(), "0.3");
    }
}

#[cfg(test)]
pub(crate) mod fuzz {
    //! Arbitrary JSON into the payload parsers: never a panic, always a protocol code.

    use super::*;
    use proptest::prelude::*;
    use serde_json::{Map, json};

    /// Arbitrary JSON, mostly objects with the protocol's own field names.
    pub(crate) fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|f| json!(f)),
            ".{0,40}".prop_map(Value::String),
            Just(json!("01a2011e-ad51-71af-af86-f2c345ea9909")),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::vec((field_name(), inner), 0..8).prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
            ]
        })
    }

    /// Mostly the protocol's own field names, so the parsers' branches are reached.
    fn field_name() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "message",
                "userId",
                "conversationId",
                "model",
                "maxTokens",
                "temperature",
                "clientMessageId",
                "systemPrompt",
                "messageId",
                "offset",
                "provider",
                "parentMessageId",
                "preset",
                "attachments",
            ])
            .prop_map(str::to_owned),
            ".{0,12}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn start_payloads_never_panic(payload in any_json()) {
            let config = Config::from_vars(Default::default()).unwrap();
            match StartCommand::parse(&payload, "u1", &config) {
                Ok(r) => {
                    prop_assert!(!r.message.trim().is_empty());
                    prop_assert!((0.0..=2.0).contains(&r.temperature));
                    prop_assert!(r.max_tokens >= 1);
                }
                Err(e) => prop_assert!(matches!(
                    e.code,
                    ErrorCode::InvalidPayload | ErrorCode::MessageTooLong | ErrorCode::InvalidParams
                        | ErrorCode::InvalidModel | ErrorCode::Forbidden
                )),
            }
        }

    }
}

//! What conversations get beyond their answers: a title made by the model after the
//! first answer (`TITLE_MODEL`) and the images a question may carry (`MAX_ATTACHMENTS`).

use super::{ConfigError, UpstreamConfig, Vars, bad};

/// Which model makes a new conversation's title.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TitleModel {
    /// No titles are made.
    Off,
    /// The model (and provider) that gave the first answer: unset `TITLE_MODEL` with the
    /// built-in mock.
    Answering,
    /// This name, routed like a chat model (`provider/model`, a bare name, an alias).
    Named(String),
}

/// The conversation features' settings.
#[derive(Clone, Debug)]
pub struct ConversationsConfig {
    /// `TITLE_MODEL`: unset is off with a real provider and on with the mock; `off` is off.
    pub title_model: TitleModel,
    /// Most images one question may carry (`MAX_ATTACHMENTS`).
    pub max_attachments: usize,
}

/// The longest model name `TITLE_MODEL` may hold, as `chat:start`'s `model`.
const MAX_MODEL_NAME: usize = 128;
/// The most `MAX_ATTACHMENTS` may be: each image may be 5 MiB, and the largest packet a
/// socket may send grows with it.
pub const MAX_ATTACHMENTS_LIMIT: usize = 16;

pub(super) fn conversations_config(env: &Vars, upstream: &UpstreamConfig) -> Result<ConversationsConfig, ConfigError> {
    let title_model = match env.get("TITLE_MODEL") {
        None if matches!(upstream, UpstreamConfig::Mock(_)) => TitleModel::Answering,
        None => TitleModel::Off,
        Some(off) if off.eq_ignore_ascii_case("off") => TitleModel::Off,
        Some(name) if name.len() <= MAX_MODEL_NAME && !name.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            TitleModel::Named(name.to_owned())
        }
        Some(name) => {
            return Err(bad(
                "TITLE_MODEL",
                format!("{name:?} is not a model name (at most {MAX_MODEL_NAME} characters, no spaces); name a model or set `off`"),
            ));
        }
    };
    let max_attachments = match env.parse("MAX_ATTACHMENTS", 4usize)? {
        n if n > MAX_ATTACHMENTS_LIMIT => return Err(bad("MAX_ATTACHMENTS", format!("must be at most {MAX_ATTACHMENTS_LIMIT}"))),
        n => n,
    };
    Ok(ConversationsConfig { title_model, max_attachments })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::TitleModel;
    use crate::config::Config;

    fn parse(pairs: &[(&str, &str)]) -> Result<Config, crate::config::ConfigError> {
        Config::from_vars(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<HashMap<_, _>>())
    }

    #[test]
    fn titles_are_on_with_the_mock_and_off_with_a_real_provider_unless_told() {
        let title = |pairs: &[(&str, &str)]| parse(pairs).unwrap().conversations.title_model;
        assert_eq!(title(&[]), TitleModel::Answering);
        assert_eq!(title(&[("TITLE_MODEL", "off")]), TitleModel::Off);
        assert_eq!(title(&[("OPENAI_API_KEY", "k")]), TitleModel::Off);
        assert_eq!(
            title(&[("OPENAI_API_KEY", "k"), ("TITLE_MODEL", "groq/llama-3.1-8b-instant")]),
            TitleModel::Named("groq/llama-3.1-8b-instant".into())
        );
        assert_eq!(title(&[("TITLE_MODEL", "OFF")]), TitleModel::Off);
        for bad in ["two words", &"m".repeat(129)] {
            assert_eq!(parse(&[("TITLE_MODEL", bad)]).unwrap_err().var, "TITLE_MODEL");
        }
    }

    #[test]
    fn max_attachments_defaults_to_4_and_is_bounded() {
        assert_eq!(parse(&[]).unwrap().conversations.max_attachments, 4);
        assert_eq!(parse(&[("MAX_ATTACHMENTS", "0")]).unwrap().conversations.max_attachments, 0);
        for bad in ["17", "-1", "many"] {
            assert_eq!(parse(&[("MAX_ATTACHMENTS", bad)]).unwrap_err().var, "MAX_ATTACHMENTS");
        }
    }
}

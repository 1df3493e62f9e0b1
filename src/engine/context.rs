//! Context that fits the model: the messages sent upstream are the system prompt(s),
//! as many of the branch's most recent messages as fit, and the new question. The prompt
//! is counted with the model's tokenizer when tiktoken knows the model (OpenAI's
//! encodings), else at 4 characters a token, and it must leave `maxTokens` of the
//! model's context length for the answer.

use tiktoken_rs::CoreBPE;

use super::Parts;
use crate::{
    chat::{ChatError, ErrorCode, HistoryMessage, StartCommand},
    config::{Config, Target},
};

/// What each message costs beyond its text (its role and separators), as OpenAI counts
/// chat prompts.
const PER_MESSAGE: usize = 4;
/// What priming the answer costs.
const REPLY_PRIMER: usize = 3;
/// What one image of a question is counted as: an estimate (a provider's own count
/// depends on the image's size and detail, which chatwire does not look at).
pub const IMAGE_TOKENS: usize = 1_000;

/// How a model's prompt is counted.
pub(super) enum Counter {
    Bpe(&'static CoreBPE),
    /// About 4 characters a token, rounded up.
    Chars,
}

impl Counter {
    /// tiktoken's encoding of `model`, else the character estimate.
    pub fn for_model(model: &str) -> Self {
        tiktoken_rs::bpe_for_model(model).map_or(Self::Chars, Self::Bpe)
    }

    pub fn tokens(&self, text: &str) -> usize {
        match self {
            Self::Bpe(bpe) => bpe.encode_ordinary(text).len(),
            Self::Chars => text.chars().count().div_ceil(4),
        }
    }

    fn message(&self, m: &HistoryMessage) -> usize {
        PER_MESSAGE + self.tokens(&m.content) + IMAGE_TOKENS * m.images.len()
    }
}

/// The messages sent upstream, and how many of them are earlier messages of the branch.
pub(super) struct Fitted {
    pub messages: Vec<HistoryMessage>,
    pub context_messages: usize,
}

/// The prompt of `command` for `target`'s model: its context length from the provider
/// registry, else `MODEL_CONTEXT_TOKENS`, and its tokenizer.
pub(super) fn prompt(parts: &Parts, target: &Target, command: &StartCommand, history: Vec<HistoryMessage>) -> Result<Fitted, ChatError> {
    let context_tokens = parts.providers.context_tokens(target).unwrap_or(parts.config.model_context_tokens);
    fit(&parts.config, command, history, &Counter::for_model(&target.model), context_tokens)
}

/// Fits the prompt of `command` into `context_tokens`: the system prompt(s) (the
/// server's, the preset's, the client's, in that order) and the new
/// question always go, then the branch's messages newest first while they fit. Older
/// ones are dropped. `MESSAGE_TOO_LONG` when the system prompt and the question alone,
/// with `maxTokens`, do not fit.
pub(super) fn fit(
    config: &Config,
    command: &StartCommand,
    history: Vec<HistoryMessage>,
    counter: &Counter,
    context_tokens: u32,
) -> Result<Fitted, ChatError> {
    let preset = command.preset.as_ref().and_then(|name| config.system_prompt_presets.get(name));
    let system: Vec<HistoryMessage> = config
        .system_prompt
        .iter()
        .chain(preset)
        .chain(command.system_prompt.iter())
        .map(|content| HistoryMessage::new("system", content.clone()))
        .collect();
    let images = command.attachments.iter().map(|a| a.url.clone()).collect();
    let question = HistoryMessage { role: "user".into(), content: command.message.clone(), images };
    let budget = usize::try_from(context_tokens.saturating_sub(command.max_tokens)).unwrap_or(usize::MAX);
    let mut used = REPLY_PRIMER + counter.message(&question) + system.iter().map(|m| counter.message(m)).sum::<usize>();
    if used > budget {
        return Err(ChatError::new(
            ErrorCode::MessageTooLong,
            format!("the message does not fit the model's context of {context_tokens} tokens with maxTokens {}", command.max_tokens),
        ));
    }
    let mut kept = 0;
    for m in history.iter().rev() {
        let cost = counter.message(m);
        if used + cost > budget {
            break;
        }
        used += cost;
        kept += 1;
    }
    let dropped = history.len() - kept;
    let messages = system.into_iter().chain(history.into_iter().skip(dropped)).chain(std::iter::once(question)).collect();
    Ok(Fitted { messages, context_messages: kept })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::from_vars(Default::default()).unwrap()
    }

    fn command(message: &str, max_tokens: u32) -> StartCommand {
        let mut c = StartCommand::parse(&serde_json::json!({ "message": message }), "u1", &config()).unwrap();
        c.max_tokens = max_tokens;
        c
    }

    fn said(role: &str, content: &str) -> HistoryMessage {
        HistoryMessage::new(role, content)
    }

    #[test]
    fn openai_models_are_counted_with_their_encoding_and_others_by_characters() {
        // cl100k_base (gpt-4) and o200k_base (gpt-4o) both read "hello world" as 2 tokens.
        assert_eq!(Counter::for_model("gpt-4").tokens("hello world"), 2);
        assert_eq!(Counter::for_model("gpt-4o").tokens("hello world"), 2);
        assert!(matches!(Counter::for_model("llama3.1"), Counter::Chars));
        assert_eq!(Counter::for_model("llama3.1").tokens("hello world"), 3);
    }

    #[test]
    fn the_newest_turns_that_fit_go_and_the_oldest_are_dropped() {
        let counter = Counter::Chars;
        let history = vec![said("user", &"a".repeat(40)), said("assistant", &"b".repeat(40)), said("user", &"c".repeat(40))];
        // Question: 4 + 1 token, primer 3: 8. Each earlier message: 4 + 10 = 14.
        let fitted = |context| fit(&config(), &command("hi", 10), history.clone(), &counter, context).map(|f| f.context_messages);
        assert_eq!(fitted(10 + 8 + 42).ok(), Some(3));
        assert_eq!(fitted(10 + 8 + 41).ok(), Some(2));
        assert_eq!(fitted(10 + 8 + 14).ok(), Some(1));
        assert_eq!(fitted(10 + 8).ok(), Some(0));
        assert_eq!(fitted(10 + 7).unwrap_err().code, ErrorCode::MessageTooLong);
        let kept = fit(&config(), &command("hi", 10), history.clone(), &counter, 10 + 8 + 28).unwrap();
        let contents: Vec<&str> = kept.messages.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(contents, [&"b".repeat(40), &"c".repeat(40), "hi"]);
    }

    #[test]
    fn each_image_counts_its_estimate_in_the_question_and_in_earlier_messages() {
        let counter = Counter::Chars;
        let mut earlier = said("user", &"a".repeat(40));
        earlier.images = vec!["https://x.io/a.png".into()];
        // The question with one image: 4 + 1 + 1000, primer 3: 1008. The earlier one: 4 + 10 + 1000.
        let mut question = command("hi", 10);
        question.attachments = vec![crate::chat::attachments::Attachment { url: "https://x.io/b.png".into() }];
        let fitted = |context| fit(&config(), &question, vec![earlier.clone()], &counter, context);
        assert_eq!(fitted(10 + 1008 + 1014).unwrap().context_messages, 1);
        assert_eq!(fitted(10 + 1008 + 1013).unwrap().context_messages, 0);
        assert_eq!(fitted(10 + 1007).err().map(|e| e.code), Some(ErrorCode::MessageTooLong));
        let sent = fitted(10 + 1008 + 1014).unwrap().messages;
        assert_eq!(
            sent.iter().map(|m| m.images.clone()).collect::<Vec<_>>(),
            [vec!["https://x.io/a.png".to_owned()], vec!["https://x.io/b.png".to_owned()]]
        );
    }
}

//! A conversation's title, made by the model after its first answer: the request (a
//! fixed instruction, the first question and its answer) and the cleaning of what the
//! model said into a title of at most [`MAX_CHARS`] characters.

use super::{HistoryMessage, text};

/// The most characters (Unicode scalar values) a made title has.
pub const MAX_CHARS: usize = 80;
/// The system message of every title request: what the mock recognizes one by.
pub const INSTRUCTION: &str = "Write a title of at most 80 characters for this conversation. \
Reply with the title only: no quotes, no trailing period.";
/// The most characters of the question, and of the answer, a title request carries.
const MAX_PROMPT_CHARS: usize = 2_000;
/// What comes before the question in the request's user message.
const QUESTION: &str = "Question:\n";
/// What comes between the question and the answer.
const ANSWER: &str = "\n\nAnswer:\n";
/// Quotes and marks a model puts around a title, trimmed from both ends.
const WRAPPERS: &[char] = &['"', '\'', '`', '*', '“', '”', '‘', '’', '«', '»'];

/// The messages of a title request for a conversation that began with `question`,
/// answered with `answer` (each cut to its first 2,000 characters).
pub fn request(question: &str, answer: &str) -> Vec<HistoryMessage> {
    let content = format!("{QUESTION}{}{ANSWER}{}", first_chars(question, MAX_PROMPT_CHARS), first_chars(answer, MAX_PROMPT_CHARS));
    vec![HistoryMessage::new("system", INSTRUCTION), HistoryMessage::new("user", content)]
}

/// The question a title request's user message carries, if it is one.
pub fn question_of(user_content: &str) -> Option<&str> {
    let rest = user_content.strip_prefix(QUESTION)?;
    Some(rest.split_once(ANSWER).map_or(rest, |(question, _)| question))
}

/// What the model said as a title: whitespace (newlines included) folded into single
/// spaces, quotes around it trimmed, U+0000 stored as elsewhere, at most [`MAX_CHARS`]
/// characters. `None` when nothing is left.
pub fn clean(said: &str) -> Option<String> {
    let folded = text::storable(said).split_whitespace().collect::<Vec<_>>().join(" ");
    let unwrapped = folded.trim_matches(|c: char| c.is_whitespace() || WRAPPERS.contains(&c));
    let title = first_chars(unwrapped, MAX_CHARS).trim_end();
    (!title.is_empty()).then(|| title.to_owned())
}

/// The first `max` characters of `text`, cut on a character boundary.
fn first_chars(text: &str, max: usize) -> &str {
    text.char_indices().nth(max).map_or(text, |(end, _)| &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_title_is_trimmed_unquoted_folded_and_cut_to_80_characters() {
        assert_eq!(clean("  \"Qubits, explained\"\n").as_deref(), Some("Qubits, explained"));
        assert_eq!(clean("“Line one\nline two”").as_deref(), Some("Line one line two"));
        assert_eq!(clean("nul\0here").as_deref(), Some("nul\u{FFFD}here"));
        assert_eq!(clean(" \n\"\" ** "), None);
        let long = "😀".repeat(100);
        assert_eq!(clean(&long), Some("😀".repeat(80)));
        // A cut that ends on a space leaves none at the end.
        let spaced = format!("{} tail", "a".repeat(79));
        assert_eq!(clean(&spaced), Some("a".repeat(79)));
    }

    #[test]
    fn a_request_carries_the_instruction_the_question_and_the_answer() {
        let asked = request("What is a qubit?", "A bit that can be both.");
        assert_eq!(asked[0].role, "system");
        assert_eq!(asked[0].content, INSTRUCTION);
        assert_eq!(asked[1].role, "user");
        assert_eq!(asked[1].content, "Question:\nWhat is a qubit?\n\nAnswer:\nA bit that can be both.");
        assert_eq!(question_of(&asked[1].content), Some("What is a qubit?"));
        assert_eq!(question_of("What is a qubit?"), None);
        let long = request(&"q".repeat(3000), "a");
        assert_eq!(question_of(&long[1].content).map(str::len), Some(2000));
    }
}

//! What an embedding request asks for: `input` as a string or an array of strings, the
//! same rules on every wire (`embed` on `/ai`, `POST /v1/embeddings`).

use serde_json::Value;

use super::{ChatError, ErrorCode, text::utf16_len};

/// Most inputs in one request, as the OpenAI API takes them.
pub const MAX_INPUTS: usize = 2048;

/// The inputs of `input`, in order: each a non-empty string of at most `max_chars`
/// UTF-16 units (`MESSAGE_TOO_LONG` past it), at most [`MAX_INPUTS`] of them.
pub fn inputs(input: Option<&Value>, max_chars: usize) -> Result<Vec<String>, ChatError> {
    let invalid = || ChatError::new(ErrorCode::InvalidParams, "input must be a non-empty string or an array of non-empty strings");
    let inputs: Vec<String> = match input {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if !items.is_empty() => {
            if items.len() > MAX_INPUTS {
                return Err(ChatError::new(ErrorCode::InvalidParams, format!("input holds more than {MAX_INPUTS} strings")));
            }
            items.iter().map(|i| i.as_str().map(str::to_owned).ok_or_else(invalid)).collect::<Result<_, _>>()?
        }
        _ => return Err(invalid()),
    };
    if inputs.iter().any(String::is_empty) {
        return Err(invalid());
    }
    if inputs.iter().any(|i| utf16_len(i) > max_chars as u64) {
        return Err(ChatError::new(ErrorCode::MessageTooLong, format!("each input must be at most {max_chars} characters")));
    }
    Ok(inputs)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn code(input: Value) -> ErrorCode {
        inputs(Some(&input), 10).map(|_| ()).map_err(|e| e.code).err().unwrap_or(ErrorCode::Internal)
    }

    #[test]
    fn a_string_or_an_array_of_strings_is_read_in_order() {
        assert_eq!(inputs(Some(&json!("one")), 10).ok(), Some(vec!["one".to_owned()]));
        assert_eq!(inputs(Some(&json!(["a", "b"])), 10).ok(), Some(vec!["a".to_owned(), "b".to_owned()]));
    }

    #[test]
    fn anything_else_is_refused_with_its_code() {
        assert_eq!(inputs(None, 10).err().map(|e| e.code), Some(ErrorCode::InvalidParams));
        for bad in [json!(""), json!([]), json!([1, 2]), json!(["a", ""]), json!({"a": 1}), json!(7)] {
            assert_eq!(code(bad), ErrorCode::InvalidParams);
        }
        assert_eq!(code(json!("x".repeat(11))), ErrorCode::MessageTooLong);
        // UTF-16 units, as the client counts: five emoji are ten units.
        assert_eq!(inputs(Some(&json!("😀".repeat(5))), 10).map(|v| v.len()).ok(), Some(1));
        assert_eq!(code(json!(vec!["a"; MAX_INPUTS + 1])), ErrorCode::InvalidParams);
    }
}

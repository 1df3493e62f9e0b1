//! JSON from clients, read the way JavaScript writes it.
//!
//! Two things a JavaScript client sends that strict JSON readers refuse:
//! - lone UTF-16 surrogates (`"\ud83d"`): `JSON.stringify` writes them when a string was
//!   cut inside an emoji, and Node's Socket.IO passes them on. They are read as U+FFFD,
//!   one UTF-16 unit for one, so offsets do not move.
//! - numbers beyond `f64` (`1e400`): read as the largest finite number of their sign, so
//!   the field's own range check refuses them with `INVALID_PARAMS` and its name.
//!
//! Everything else is left to `serde_json`: the repair runs only when a strict read fails.

use std::borrow::Cow;

use serde_json::Value;

/// Reads `text` as JSON, repairing lone surrogates and out-of-range numbers first when a
/// strict read fails. Never panics.
pub fn parse_lenient(text: &str) -> Result<Value, serde_json::Error> {
    match serde_json::from_str(text) {
        Ok(v) => Ok(v),
        Err(strict) => match repair(text) {
            Cow::Owned(repaired) => serde_json::from_str(&repaired),
            Cow::Borrowed(_) => Err(strict),
        },
    }
}

/// [`parse_lenient`] for a request body; bytes that are not UTF-8 are an error.
pub fn parse_lenient_bytes(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    match std::str::from_utf8(bytes) {
        Ok(text) => parse_lenient(text),
        Err(_) => serde_json::from_slice(bytes),
    }
}

/// `text` with every unpaired `\uD800`-`\uDFFF` escape replaced by `\uFFFD` and every
/// number token that overflows `f64` replaced by `±f64::MAX`; borrowed when nothing changed.
fn repair(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0; // bytes of `text` already accounted for in `out`
    let mut i = 0;
    let mut in_string = false;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'"' => {
                    in_string = false;
                    i += 1;
                }
                b'\\' if bytes.get(i + 1) == Some(&b'u') => {
                    let Some(unit) = hex4(bytes, i + 2) else {
                        i += 2;
                        continue;
                    };
                    let paired = (0xD800..0xDC00).contains(&unit)
                        && bytes.get(i + 6) == Some(&b'\\')
                        && bytes.get(i + 7) == Some(&b'u')
                        && hex4(bytes, i + 8).is_some_and(|low| (0xDC00..0xE000).contains(&low));
                    if paired {
                        i += 12;
                    } else if (0xD800..0xE000).contains(&unit) {
                        let s = out.get_or_insert_with(|| String::with_capacity(text.len()));
                        s.push_str(&text[copied..i]);
                        s.push_str("\\uFFFD");
                        i += 6;
                        copied = i;
                    } else {
                        i += 6;
                    }
                }
                b'\\' => i += 2,
                _ => i += 1,
            }
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len() && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
                    i += 1;
                }
                let token = &text[start..i];
                if token.parse::<f64>().is_ok_and(f64::is_infinite) {
                    let s = out.get_or_insert_with(|| String::with_capacity(text.len()));
                    s.push_str(&text[copied..start]);
                    s.push_str(if token.starts_with('-') { "-1.7976931348623157e308" } else { "1.7976931348623157e308" });
                    copied = i;
                }
            }
            _ => i += 1,
        }
    }
    match out {
        None => Cow::Borrowed(text),
        Some(mut s) => {
            s.push_str(&text[copied..]);
            Cow::Owned(s)
        }
    }
}

/// The four hex digits at `at`, as a number.
fn hex4(bytes: &[u8], at: usize) -> Option<u32> {
    let digits = bytes.get(at..at + 4)?;
    let text = std::str::from_utf8(digits).ok()?;
    u32::from_str_radix(text, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn lone_surrogates_read_as_the_replacement_character() {
        assert_eq!(parse_lenient(r#"{"message":"cut \ud83d"}"#).unwrap(), json!({"message": "cut \u{FFFD}"}));
        assert_eq!(parse_lenient(r#"["\ude00x", "\ud83d\ud83d"]"#).unwrap(), json!(["\u{FFFD}x", "\u{FFFD}\u{FFFD}"]));
        // A whole pair stays the character it encodes.
        assert_eq!(parse_lenient(r#"["\ud83d\ude00", "\ud83d"]"#).unwrap(), json!(["😀", "\u{FFFD}"]));
        // An escaped backslash before `u` is not an escape.
        assert_eq!(parse_lenient(r#"["\\ud83d", "\ud83d"]"#).unwrap(), json!(["\\ud83d", "\u{FFFD}"]));
    }

    #[test]
    fn numbers_beyond_f64_read_as_the_largest_finite_ones() {
        assert_eq!(parse_lenient(r#"{"temperature":1e400,"t":"1e400"}"#).unwrap(), json!({"temperature": f64::MAX, "t": "1e400"}));
        assert_eq!(parse_lenient(r#"[-1E+400]"#).unwrap(), json!([f64::MIN]));
        assert_eq!(parse_lenient(&format!("[{}]", "9".repeat(400))).unwrap(), json!([f64::MAX]));
    }

    #[test]
    fn other_mistakes_stay_mistakes() {
        for bad in ["{", r#"{"a":}"#, r#"["\ud83d"#, "[1e]", r#"["\u12"]"#, "", "nul"] {
            assert!(parse_lenient(bad).is_err(), "{bad}");
        }
        assert!(parse_lenient_bytes(b"[\"\xff\"]").is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Never a panic; whatever strict JSON reads, the lenient read reads alike.
        #[test]
        fn lenient_reads_agree_with_strict_ones(text in r#"[\[\]{}",:0-9eE+\-.\\u dDa-fA-F8]{0,40}"#) {
            let lenient = parse_lenient(&text);
            if let Ok(strict) = serde_json::from_str::<Value>(&text) {
                prop_assert_eq!(lenient.ok(), Some(strict));
            }
        }
    }
}

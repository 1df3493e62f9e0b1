//! Offsets into an answer, in UTF-16 code units: JavaScript's `string.length`, the unit
//! every wire's `offset` counts in.

/// UTF-16 length of `s`.
pub fn utf16_len(s: &str) -> u64 {
    s.chars().map(|c| c.len_utf16() as u64).sum()
}

/// The byte index of a UTF-16 offset in `text`, and the offset it really is: clamped to
/// the text's length and moved back to a character boundary (never inside a surrogate pair).
pub fn byte_index(text: &str, offset: u64) -> (usize, u64) {
    let mut units = 0u64;
    for (i, c) in text.char_indices() {
        let next = units + c.len_utf16() as u64;
        if next > offset {
            return (i, units);
        }
        units = next;
    }
    (text.len(), units)
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary
/// (at least one character, so a frame always makes progress).
pub fn prefix_within(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    if end == 0 {
        end = text.chars().next().map_or(0, char::len_utf8);
    }
    &text[..end]
}

/// What stands for U+0000 wherever text enters: PostgreSQL cannot store NUL in `text`,
/// so it is replaced on every database alike. One UTF-16 unit for one: offsets do not move.
pub const NUL_REPLACEMENT: char = '\u{FFFD}';

/// `text` as it is stored: every U+0000 replaced by [`NUL_REPLACEMENT`].
pub fn storable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') { text.replace('\0', "\u{FFFD}").into() } else { text.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_is_replaced_one_unit_for_one() {
        assert_eq!(storable("a\0b\0"), "a\u{FFFD}b\u{FFFD}");
        assert!(matches!(storable("plain"), std::borrow::Cow::Borrowed("plain")));
        assert_eq!(utf16_len(&storable("a\0b")), utf16_len("a\0b"));
    }

    #[test]
    fn utf16_offsets_count_like_javascript() {
        assert_eq!(utf16_len("héllo"), 5);
        assert_eq!(utf16_len("😀a"), 3);
    }

    #[test]
    fn utf16_offsets_map_to_char_boundaries() {
        let text = "a😀é";
        assert_eq!(byte_index(text, 0), (0, 0));
        assert_eq!(byte_index(text, 1), (1, 1));
        assert_eq!(byte_index(text, 2), (1, 1), "inside a surrogate pair: back to its start");
        assert_eq!(byte_index(text, 3), (5, 3));
        assert_eq!(byte_index(text, 4), (7, 4));
        assert_eq!(byte_index(text, 99), (7, 4));
    }

    #[test]
    fn prefixes_end_on_character_boundaries() {
        assert_eq!(prefix_within("abc", 8), "abc");
        assert_eq!(prefix_within("a😀b", 3), "a");
        assert_eq!(prefix_within("😀b", 2), "😀", "one whole character at least");
        assert_eq!(prefix_within("ab😀", 6), "ab😀");
    }
}

//! Each dialect's decoder under arbitrary JSON: never a panic, always a decoded message
//! or a protocol code.

use proptest::prelude::*;
use serde_json::{Value, json};

use crate::chat::{ErrorCode, command::fuzz::any_json};

/// Arbitrary JSON, often shaped like the dialects' own messages.
fn frames() -> impl Strategy<Value = Value> {
    let kinds = prop::sample::select(vec![
        "auth",
        "message",
        "stop",
        "chat_message",
        "ping",
        "authenticate",
        "provider_list",
        "provider_models",
        "provider_request",
        "provider_resume",
        "dance",
    ]);
    prop_oneof![
        any_json(),
        (kinds.clone(), any_json()).prop_map(|(kind, payload)| json!({ "type": kind, "payload": payload })),
        (kinds, any_json(), any_json())
            .prop_map(|(kind, message, history)| json!({ "type": kind, "message": message, "history": history, "content": message })),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn void_decodes_every_frame_or_refuses_it_as_invalid_payload(frame in frames()) {
        match super::void::decode_for_tests(&frame) {
            Ok((kind, request_id)) => {
                prop_assert_eq!(Some(kind.as_str()), frame["type"].as_str());
                if let Some(id) = request_id {
                    prop_assert!(id.is_number() || id.as_str().is_some_and(|s| s.len() <= 128));
                }
            }
            Err(e) => prop_assert_eq!(e.code, ErrorCode::InvalidPayload),
        }
    }

    #[test]
    fn canyon_history_is_valid_or_refused_with_a_code(history in any_json()) {
        match super::canyon::history(Some(&history), 40, 3) {
            Ok(messages) => {
                prop_assert!(messages.len() <= 3);
                prop_assert!(messages.iter().all(|m| matches!(m.role.as_str(), "user" | "assistant" | "system")));
            }
            Err(e) => prop_assert!(matches!(e.code, ErrorCode::InvalidPayload | ErrorCode::MessageTooLong)),
        }
    }

    #[test]
    fn wadi_reads_a_type_only_from_an_object_with_a_string_type(frame in frames()) {
        let typed = super::wadi::typed(&frame);
        prop_assert_eq!(typed.map(|(kind, _)| kind), frame.as_object().and_then(|o| o.get("type")).and_then(Value::as_str));
    }

    #[test]
    fn a_watchers_offset_never_splits_a_character(text in ".{0,20}", offset in 0u64..10, skip in 0u64..40) {
        let rest = super::after(&text, offset, skip);
        prop_assert!(text.ends_with(rest));
    }
}

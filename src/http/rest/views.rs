//! The REST routes' JSON, camelCase, built from the engine's rows; and the opaque
//! cursor of the conversation list.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, SecondsFormat, Utc};
use entity::{conversation, message};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    chat::{attachments, text},
    engine::{ConversationDetail, ConversationSummary, PageKey, UsageRow},
};

/// Longest last-message preview, in UTF-16 units (JavaScript's `string.length`).
pub const PREVIEW_UNITS: u64 = 120;

/// A page of the caller's conversations, most recently updated first.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConversationList {
    pub items: Vec<ConversationItem>,
    /// Pass as `?cursor=` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// A conversation as a sidebar lists it.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConversationItem {
    pub id: Uuid,
    pub title: String,
    pub created_at: DateTime<Utc>,
    /// Moves with every new message; the list's order.
    pub updated_at: DateTime<Utc>,
    /// `null` for a conversation with no message.
    pub last_message: Option<LastMessage>,
}

/// The start of a conversation's latest message.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastMessage {
    /// `user` or `assistant`.
    pub role: String,
    /// At most 120 UTF-16 units of its text, never half a surrogate pair.
    pub preview: String,
    pub created_at: DateTime<Utc>,
}

/// A conversation with all its messages, in order.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConversationView {
    pub id: Uuid,
    pub title: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The end of the active branch: the conversation is a tree through `parentId`.
    pub active_leaf_id: Option<Uuid>,
    /// Every message of the tree, oldest first.
    pub messages: Vec<MessageView>,
}

/// One stored message: a question, or an answer and how it ended.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageView {
    pub id: Uuid,
    pub conversation_id: Uuid,
    /// The message it follows in the conversation's tree; `null` for a first question.
    pub parent_id: Option<Uuid>,
    /// In a conversation's messages: whether it is on the active branch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
    /// `user` or `assistant`.
    pub role: String,
    /// The whole text; for an answer still streaming, its last checkpoint.
    pub content: String,
    /// A question's images, as the client sent them; `[]` for none.
    pub attachments: Vec<AttachmentView>,
    /// The model that answered (answers only).
    pub model: Option<String>,
    /// The upstream that answered: `mock`, or the host of `OPENAI_BASE_URL`.
    pub provider: Option<String>,
    /// `complete` for questions; `streaming`, `complete`, `stopped` or `error` for answers.
    pub status: String,
    /// The upstream's reason (`stop`, `length`, ...) or chatwire's (`stopped`, `error`, `shutdown`, `interrupted`).
    pub finish_reason: Option<String>,
    pub prompt_tokens: Option<i32>,
    pub completion_tokens: Option<i32>,
    pub total_tokens: Option<i32>,
    /// The code a failed answer's client was given (`UPSTREAM_ERROR`, ...).
    pub error_code: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// An image of a question: an http(s) URL (never fetched) or a data URL.
#[derive(Serialize, ToSchema)]
pub struct AttachmentView {
    /// Always `image`.
    #[serde(rename = "type")]
    pub kind: String,
    pub url: String,
}

/// `PATCH /v1/conversations/{id}`'s body.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct RenameBody {
    /// Not empty once trimmed (it is stored trimmed), at most 200 UTF-16 units.
    pub title: String,
}

/// The caller's token usage.
#[derive(Serialize, ToSchema)]
pub struct UsageList {
    pub usage: Vec<UsageItem>,
}

/// The caller's usage of one model on one UTC day.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageItem {
    /// `YYYY-MM-DD`, UTC.
    #[schema(format = Date)]
    pub day: String,
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Answers that ended: complete, stopped or failed.
    pub answers: u64,
}

impl From<ConversationSummary> for ConversationItem {
    fn from(s: ConversationSummary) -> Self {
        let c = s.conversation;
        let last_message = s.last_message.map(|m| {
            let (end, _) = text::byte_index(&m.content, PREVIEW_UNITS);
            LastMessage { role: m.role, preview: m.content[..end].to_owned(), created_at: m.created_at }
        });
        Self { id: c.id, title: c.title, created_at: c.created_at, updated_at: c.updated_at, last_message }
    }
}

impl From<conversation::Model> for ConversationItem {
    fn from(c: conversation::Model) -> Self {
        Self { id: c.id, title: c.title, created_at: c.created_at, updated_at: c.updated_at, last_message: None }
    }
}

impl From<ConversationDetail> for ConversationView {
    fn from(d: ConversationDetail) -> Self {
        let (active, active_leaf_id) = (d.active_branch(), d.active_leaf());
        let c = d.conversation;
        let messages = d
            .messages
            .into_iter()
            .map(|m| {
                let on_branch = active.contains(&m.id);
                MessageView { active: Some(on_branch), ..MessageView::from(m) }
            })
            .collect();
        Self { id: c.id, title: c.title, created_at: c.created_at, updated_at: c.updated_at, active_leaf_id, messages }
    }
}

impl From<message::Model> for MessageView {
    fn from(m: message::Model) -> Self {
        Self {
            id: m.id,
            conversation_id: m.conversation_id,
            parent_id: m.parent_id,
            active: None,
            role: m.role,
            content: m.content,
            attachments: attachments::stored(m.attachments.as_deref())
                .into_iter()
                .map(|a| AttachmentView { kind: "image".into(), url: a.url })
                .collect(),
            model: m.model,
            provider: m.provider,
            status: m.status,
            finish_reason: m.finish_reason,
            prompt_tokens: m.prompt_tokens,
            completion_tokens: m.completion_tokens,
            total_tokens: m.total_tokens,
            error_code: m.error_code,
            created_at: m.created_at,
        }
    }
}

impl From<UsageRow> for UsageItem {
    fn from(r: UsageRow) -> Self {
        Self { day: r.day, model: r.model, prompt_tokens: r.prompt_tokens, completion_tokens: r.completion_tokens, answers: r.answers }
    }
}

/// The cursor after `key`: opaque to clients (base64url of the key's time, to the
/// nanosecond as stored, and id), so the list can change how it pages.
pub fn cursor(key: PageKey) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}|{}", key.updated_at.to_rfc3339_opts(SecondsFormat::Nanos, true), key.id))
}

/// The key a cursor of [`cursor`] holds; `None` for anything else.
pub fn page_key(cursor: &str) -> Option<PageKey> {
    let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
    let (time, id) = raw.split_once('|')?;
    let updated_at = DateTime::parse_from_rfc3339(time).ok()?.with_timezone(&Utc);
    Some(PageKey { updated_at, id: Uuid::try_parse(id).ok()? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_as_its_key_and_nothing_else_does() {
        let key = PageKey { updated_at: DateTime::from_timestamp(1_765_000_000, 123_456_789).unwrap(), id: Uuid::now_v7() };
        assert_eq!(page_key(&cursor(key)), Some(key));
        for bad in ["", "x", "!!!", &URL_SAFE_NO_PAD.encode("no separator"), &URL_SAFE_NO_PAD.encode("2026-01-01T00:00:00Z|nope")] {
            assert_eq!(page_key(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn previews_stop_before_a_split_surrogate_pair() {
        let mut m = message::Model {
            id: Uuid::now_v7(),
            conversation_id: Uuid::now_v7(),
            user_id: "u".into(),
            role: "assistant".into(),
            content: format!("{}😀tail", "a".repeat(119)),
            model: None,
            provider: None,
            prompt_tokens: None,
            completion_tokens: None,
            total_tokens: None,
            finish_reason: None,
            status: "complete".into(),
            error_code: None,
            client_message_id: None,
            parent_id: None,
            attachments: None,
            context_messages: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        };
        let conversation = conversation::Model {
            id: m.conversation_id,
            user_id: "u".into(),
            title: "t".into(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
            active_leaf_id: None,
            preset: None,
        };
        let preview = |m: &message::Model| {
            let summary = ConversationSummary { conversation: conversation.clone(), last_message: Some(m.clone()) };
            ConversationItem::from(summary).last_message.map(|l| l.preview)
        };
        assert_eq!(preview(&m), Some("a".repeat(119)), "the emoji's two units would make 121");
        m.content = format!("{}😀tail", "a".repeat(118));
        assert_eq!(preview(&m), Some(format!("{}😀", "a".repeat(118))));
        m.content = "short".into();
        assert_eq!(preview(&m), Some("short".into()));
    }
}

//! Messages brought in from another system (`chatwire import`): checked against what is
//! stored, then written in one transaction, each at most once.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use entity::{conversation, message};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, DatabaseTransaction, DbErr, EntityTrait, QueryFilter, QuerySelect, Set,
    TransactionTrait, sea_query::OnConflict,
};
use uuid::Uuid;

use crate::chat::{Status, text::storable};

/// Rows per `IN (...)` lookup and per multi-row insert: well under the bind-parameter
/// limits of SQLite (32,766) and PostgreSQL (65,535) at 15 columns a row.
const CHUNK: usize = 500;

/// One message to import, its ids already chatwire's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportedMessage {
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub user_id: String,
    /// `user`, `assistant` or `system`.
    pub role: String,
    pub content: String,
    pub model: Option<String>,
    pub prompt_tokens: Option<i32>,
    pub completion_tokens: Option<i32>,
    pub total_tokens: Option<i32>,
    pub created_at: DateTime<Utc>,
}

/// Why a message cannot be imported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Its conversation is stored, or came earlier in the batch, with another user.
    ConversationOfAnotherUser,
    /// Its id is stored, or came earlier in the batch, in another conversation.
    IdInAnotherConversation,
}

/// What to do when some messages are refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportMode {
    /// Write the others.
    SkipRefused,
    /// Write nothing.
    AllOrNothing,
    /// Check only; write nothing in any case.
    CheckOnly,
}

/// What [`import_messages`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportResult {
    /// Messages written now.
    pub imported: usize,
    /// Messages whose id was stored already in the same conversation (an earlier run),
    /// or came earlier in the batch: not written again.
    pub already_present: usize,
    /// The refused messages, by their index in the batch, in batch order.
    pub refused: Vec<(usize, Refusal)>,
    /// False when nothing was written (a refusal under `AllOrNothing`, or `CheckOnly`).
    pub written: bool,
}

/// Imports `messages` in one transaction. A conversation belongs to the user it is
/// stored with, or else to the user of its first message in the batch; a message of
/// another user is refused. Ids already stored in the same conversation are skipped, so
/// a second run of the same batch writes nothing. New conversations get the first 80
/// characters of their earliest user message as title, and the earliest and latest
/// message times; a stored conversation's times widen to include the new messages.
pub async fn import_messages(db: &DatabaseConnection, messages: &[ImportedMessage], mode: ImportMode) -> Result<ImportResult, DbErr> {
    let txn = db.begin().await?;
    let conversation_ids: Vec<Uuid> = unique(messages.iter().map(|m| m.conversation_id));
    let stored_conversations = conversations_by_id(&txn, &conversation_ids).await?;
    let stored_messages = message_conversations(&txn, &unique(messages.iter().map(|m| m.id))).await?;

    let mut result = ImportResult::default();
    let mut owners: HashMap<Uuid, &str> = stored_conversations.iter().map(|(id, c)| (*id, c.user_id.as_str())).collect();
    let mut seen: HashMap<Uuid, Uuid> = HashMap::new();
    let mut new: Vec<&ImportedMessage> = Vec::new();
    for (index, m) in messages.iter().enumerate() {
        let owner = *owners.entry(m.conversation_id).or_insert(m.user_id.as_str());
        if owner != m.user_id {
            result.refused.push((index, Refusal::ConversationOfAnotherUser));
            continue;
        }
        let earlier = stored_messages.get(&m.id).copied().or_else(|| seen.get(&m.id).copied());
        match earlier {
            Some(conversation) if conversation == m.conversation_id => result.already_present += 1,
            Some(_) => result.refused.push((index, Refusal::IdInAnotherConversation)),
            None => {
                seen.insert(m.id, m.conversation_id);
                new.push(m);
            }
        }
    }
    let write = match mode {
        ImportMode::SkipRefused => true,
        ImportMode::AllOrNothing => result.refused.is_empty(),
        ImportMode::CheckOnly => false,
    };
    if !write {
        txn.rollback().await?;
        return Ok(result);
    }

    let links = chain(&new, &stored_conversations);
    write_conversations(&txn, &new, &stored_conversations, &links.leaves).await?;
    let mut inserted = 0;
    for chunk in new.chunks(CHUNK) {
        inserted += message::Entity::insert_many(chunk.iter().map(|m| message_row(m, links.parents.get(&m.id).copied().flatten())))
            .on_conflict(OnConflict::column(message::Column::Id).do_nothing().to_owned())
            .exec_without_returning(&txn)
            .await?;
    }
    txn.commit().await?;
    // Rows another writer stored between the check and the insert count as present.
    let inserted = usize::try_from(inserted).unwrap_or(new.len()).min(new.len());
    result.imported = inserted;
    result.already_present += new.len() - inserted;
    result.written = true;
    Ok(result)
}

/// Where imported messages go in their conversations' trees.
struct Links {
    /// Each new message's parent.
    parents: HashMap<Uuid, Option<Uuid>>,
    /// Each conversation's new active leaf: its last imported message.
    leaves: HashMap<Uuid, Uuid>,
}

/// Imported messages form one branch per conversation, in time order (then by id), after
/// a stored conversation's active leaf.
fn chain(new: &[&ImportedMessage], stored: &HashMap<Uuid, conversation::Model>) -> Links {
    let mut ordered: Vec<&ImportedMessage> = new.to_vec();
    ordered.sort_by_key(|m| (m.conversation_id, m.created_at, m.id));
    let mut links = Links { parents: HashMap::new(), leaves: HashMap::new() };
    for m in ordered {
        let parent = match links.leaves.get(&m.conversation_id) {
            Some(previous) => Some(*previous),
            None => stored.get(&m.conversation_id).and_then(|c| c.active_leaf_id),
        };
        links.parents.insert(m.id, parent);
        links.leaves.insert(m.conversation_id, m.id);
    }
    links
}

/// Creates the conversations the new messages open, and widens the times of stored ones.
async fn write_conversations(
    txn: &DatabaseTransaction,
    new: &[&ImportedMessage],
    stored: &HashMap<Uuid, conversation::Model>,
    leaves: &HashMap<Uuid, Uuid>,
) -> Result<(), DbErr> {
    struct Span<'a> {
        user_id: &'a str,
        first: DateTime<Utc>,
        last: DateTime<Utc>,
        /// The earliest user message, for the title.
        first_question: Option<&'a ImportedMessage>,
    }
    let mut spans: Vec<(Uuid, Span)> = Vec::new();
    let mut at: HashMap<Uuid, usize> = HashMap::new();
    for m in new {
        let index = *at.entry(m.conversation_id).or_insert_with(|| {
            spans.push((m.conversation_id, Span { user_id: &m.user_id, first: m.created_at, last: m.created_at, first_question: None }));
            spans.len() - 1
        });
        let span = &mut spans[index].1;
        span.first = span.first.min(m.created_at);
        span.last = span.last.max(m.created_at);
        if m.role == "user" && span.first_question.is_none_or(|q| m.created_at < q.created_at) {
            span.first_question = Some(m);
        }
    }
    let title = |span: &Span| span.first_question.map(|q| storable(&q.content).chars().take(80).collect::<String>());
    let mut created = Vec::new();
    for (id, span) in &spans {
        match stored.get(id) {
            None => created.push(conversation::ActiveModel {
                id: Set(*id),
                user_id: Set(span.user_id.to_owned()),
                title: Set(title(span).unwrap_or_default()),
                created_at: Set(span.first),
                updated_at: Set(span.last),
                active_leaf_id: Set(leaves.get(id).copied()),
                preset: Set(None),
            }),
            Some(row) => {
                let title = match title(span) {
                    Some(t) if row.title.is_empty() => t,
                    _ => row.title.clone(),
                };
                let widened = (row.created_at.min(span.first), row.updated_at.max(span.last), title);
                let leaf = leaves.get(id).copied().or(row.active_leaf_id);
                if widened != (row.created_at, row.updated_at, row.title.clone()) || leaf != row.active_leaf_id {
                    conversation::ActiveModel {
                        id: Set(*id),
                        created_at: Set(widened.0),
                        updated_at: Set(widened.1),
                        title: Set(widened.2),
                        active_leaf_id: Set(leaf),
                        ..Default::default()
                    }
                    .update(txn)
                    .await?;
                }
            }
        }
    }
    for chunk in created.chunks(CHUNK) {
        conversation::Entity::insert_many(chunk.iter().cloned())
            .on_conflict(OnConflict::column(conversation::Column::Id).do_nothing().to_owned())
            .exec_without_returning(txn)
            .await?;
    }
    Ok(())
}

fn message_row(m: &ImportedMessage, parent_id: Option<Uuid>) -> message::ActiveModel {
    message::ActiveModel {
        id: Set(m.id),
        conversation_id: Set(m.conversation_id),
        user_id: Set(m.user_id.clone()),
        role: Set(m.role.clone()),
        // U+0000 as chat:start stores it (PostgreSQL cannot store it at all).
        content: Set(storable(&m.content).into_owned()),
        model: Set(m.model.clone()),
        provider: Set(None),
        prompt_tokens: Set(m.prompt_tokens),
        completion_tokens: Set(m.completion_tokens),
        total_tokens: Set(m.total_tokens),
        // An imported answer is a finished one; nothing says how it ended.
        finish_reason: Set(None),
        status: Set(Status::Complete.as_str().to_owned()),
        error_code: Set(None),
        client_message_id: Set(None),
        created_at: Set(m.created_at),
        updated_at: Set(m.created_at),
        parent_id: Set(parent_id),
        attachments: Set(None),
        context_messages: Set(None),
    }
}

fn unique(ids: impl Iterator<Item = Uuid>) -> Vec<Uuid> {
    let mut seen = HashSet::new();
    ids.filter(|id| seen.insert(*id)).collect()
}

async fn conversations_by_id(txn: &DatabaseTransaction, ids: &[Uuid]) -> Result<HashMap<Uuid, conversation::Model>, DbErr> {
    let mut found = HashMap::new();
    for chunk in ids.chunks(CHUNK) {
        for row in conversation::Entity::find().filter(conversation::Column::Id.is_in(chunk.iter().copied())).all(txn).await? {
            found.insert(row.id, row);
        }
    }
    Ok(found)
}

/// The conversation of each stored message among `ids`.
async fn message_conversations(txn: &DatabaseTransaction, ids: &[Uuid]) -> Result<HashMap<Uuid, Uuid>, DbErr> {
    let mut found = HashMap::new();
    for chunk in ids.chunks(CHUNK) {
        let rows = message::Entity::find()
            .select_only()
            .column(message::Column::Id)
            .column(message::Column::ConversationId)
            .filter(message::Column::Id.is_in(chunk.iter().copied()))
            .into_tuple::<(Uuid, Uuid)>()
            .all(txn)
            .await?;
        found.extend(rows);
    }
    Ok(found)
}

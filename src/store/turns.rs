//! A chat turn: the user message and the answer's `streaming` row stored together (the
//! statements one turn and a batch of them share, over any connection or transaction),
//! and the turn a repeated key refers to.

use chrono::Utc;
use entity::{conversation, message};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder, Set, TransactionTrait,
    sea_query::{CaseStatement, Condition, Expr, Query},
};
use uuid::Uuid;

use super::StoreError;
use crate::chat::Status;

/// What [`begin_chat`] stored.
#[derive(Clone, Copy, Debug)]
pub struct ChatBegun {
    pub conversation_id: Uuid,
    /// True when the conversation was created by this call.
    pub created: bool,
    pub user_message_id: Uuid,
    pub assistant_message_id: Uuid,
}

/// The ids of a turn, made before it is stored, so that what is logged meanwhile (the
/// upstream request opens while the turn is stored) can name the answer already.
#[derive(Clone, Copy, Debug)]
pub struct NewIds {
    /// Used only when the turn starts a conversation.
    pub conversation_id: Uuid,
    pub user_message_id: Uuid,
    pub assistant_message_id: Uuid,
}

impl NewIds {
    /// Time-ordered ids, in the order of the rows: a conversation's messages sort by id.
    pub fn generate() -> Self {
        let conversation_id = Uuid::now_v7();
        let user_message_id = Uuid::now_v7();
        Self { conversation_id, user_message_id, assistant_message_id: Uuid::now_v7() }
    }
}

/// What a chat turn stores before the model is called. Owned, so that it can wait in the
/// turn writer's queue ([`super::TurnWriter`]).
#[derive(Clone, Debug)]
pub struct NewTurn {
    pub user_id: String,
    pub conversation_id: Option<Uuid>,
    pub message: String,
    pub model: String,
    pub client_message_id: Option<String>,
    /// The message the question follows (the branch's leaf, or the edited message's
    /// parent); `None` for a conversation's first question.
    pub parent_id: Option<Uuid>,
    /// How many earlier messages go to the model with the question.
    pub context_messages: usize,
    /// The system-prompt preset used, stored on the conversation.
    pub preset: Option<String>,
    /// The question's images as stored (`[{ "type": "image", "url" }]`), if any.
    pub attachments: Option<String>,
}

/// The title a conversation is created with: its first question's first 80 characters
/// (until the model's title, if any, replaces it).
pub fn first_title(question: &str) -> String {
    question.chars().take(80).collect()
}

/// Stores the user message and the assistant's `streaming` row in one transaction,
/// creating the conversation when none is given. Four statements in all (begin, the
/// conversation, both messages, commit): each is a round trip to the database.
pub async fn begin_chat(db: &DatabaseConnection, turn: NewTurn) -> Result<ChatBegun, StoreError> {
    begin_chat_with(db, &turn, NewIds::generate()).await
}

/// [`begin_chat`] with ids made beforehand: one turn in a transaction of its own.
pub async fn begin_chat_with(db: &DatabaseConnection, turn: &NewTurn, ids: NewIds) -> Result<ChatBegun, StoreError> {
    let txn = db.begin().await?;
    let begun = write_turns(&txn, &[(turn, ids)]).await?.pop().ok_or_else(|| DbErr::Custom("a turn without its result".into()))??;
    txn.commit().await?;
    Ok(begun)
}

/// Writes turns on `c` (a transaction: the caller commits), in three statements at most
/// however many turns there are: one insert of the new conversations, one update of the
/// continued ones (which also checks that each is its turn's user's), one insert of
/// every question and answer row. A conversation that is not the user's fails only its
/// turn (`NotFound`, nothing of it written); an error of a statement fails them all (the
/// caller rolls back), a unique violation as [`StoreError::DuplicateKey`] (only a
/// question's `clientMessageId` can repeat).
pub(super) async fn write_turns<C: ConnectionTrait>(
    c: &C,
    turns: &[(&NewTurn, NewIds)],
) -> Result<Vec<Result<ChatBegun, StoreError>>, StoreError> {
    let now = Utc::now();
    let created: Vec<conversation::ActiveModel> = turns
        .iter()
        .filter(|(turn, _)| turn.conversation_id.is_none())
        .map(|(turn, ids)| conversation::ActiveModel {
            id: Set(ids.conversation_id),
            user_id: Set(turn.user_id.clone()),
            title: Set(first_title(&turn.message)),
            created_at: Set(now),
            updated_at: Set(now),
            active_leaf_id: Set(Some(ids.assistant_message_id)),
            preset: Set(turn.preset.clone()),
        })
        .collect();
    if !created.is_empty() {
        conversation::Entity::insert_many(created).exec_without_returning(c).await?;
    }
    let continued: Vec<(&NewTurn, Uuid, Uuid)> =
        turns.iter().filter_map(|(turn, ids)| turn.conversation_id.map(|id| (*turn, id, ids.assistant_message_id))).collect();
    let touched = touch_conversations(c, &continued, now).await?;
    let mut results = Vec::with_capacity(turns.len());
    let mut rows = Vec::with_capacity(2 * turns.len());
    for (turn, ids) in turns {
        let begun = match turn.conversation_id {
            Some(id) if !touched.iter().any(|(t, user)| *t == id && *user == turn.user_id) => Err(StoreError::NotFound),
            Some(id) => Ok(begun(id, false, ids)),
            None => Ok(begun(ids.conversation_id, true, ids)),
        };
        if let Ok(b) = &begun {
            rows.extend(turn_rows(turn, b, now));
        }
        results.push(begun);
    }
    if !rows.is_empty()
        && let Err(e) = message::Entity::insert_many(rows).exec_without_returning(c).await
    {
        return Err(match e.sql_err() {
            Some(sea_orm::SqlErr::UniqueConstraintViolation(_)) => StoreError::DuplicateKey,
            _ => e.into(),
        });
    }
    Ok(results)
}

/// Moves each continued conversation's active leaf to its turn's answer, and sets the
/// turn's preset when it has one, in one `UPDATE ... RETURNING`; gives the (conversation,
/// user) pairs it touched. A turn whose pair is missing continues a conversation that is
/// not its user's (or none). Of two turns in one conversation the later wins, as if they
/// were written one after the other.
async fn touch_conversations<C: ConnectionTrait>(
    c: &C,
    continued: &[(&NewTurn, Uuid, Uuid)],
    now: chrono::DateTime<Utc>,
) -> Result<Vec<(Uuid, String)>, DbErr> {
    use conversation::Column;
    if continued.is_empty() {
        return Ok(Vec::new());
    }
    let owned = |id: Uuid, user: &str| Condition::all().add(Column::Id.eq(id)).add(Column::UserId.eq(user));
    let (mut leaf, mut preset, mut presets) = (CaseStatement::new(), CaseStatement::new(), false);
    for (turn, id, answer) in continued.iter().rev() {
        leaf = leaf.case(owned(*id, &turn.user_id), Expr::value(*answer));
        if let Some(p) = &turn.preset {
            preset = preset.case(owned(*id, &turn.user_id), Expr::value(p.clone()));
            presets = true;
        }
    }
    let mut update = Query::update();
    update
        .table(conversation::Entity)
        .value(Column::UpdatedAt, now)
        .value(Column::ActiveLeafId, leaf.finally(Expr::col(Column::ActiveLeafId)));
    if presets {
        update.value(Column::Preset, preset.finally(Expr::col(Column::Preset)));
    }
    let mut any = Condition::any();
    for (turn, id, _) in continued {
        any = any.add(owned(*id, &turn.user_id));
    }
    update.cond_where(any).returning(Query::returning().columns([Column::Id, Column::UserId]));
    let rows = c.query_all_raw(c.get_database_backend().build(&update)).await?;
    rows.iter().map(|row| Ok((row.try_get::<Uuid>("", "id")?, row.try_get::<String>("", "user_id")?))).collect()
}

fn begun(conversation_id: Uuid, created: bool, ids: &NewIds) -> ChatBegun {
    ChatBegun { conversation_id, created, user_message_id: ids.user_message_id, assistant_message_id: ids.assistant_message_id }
}

/// The question and its answer's `streaming` row.
fn turn_rows(turn: &NewTurn, b: &ChatBegun, now: chrono::DateTime<Utc>) -> [message::ActiveModel; 2] {
    let mut question = new_message(b.conversation_id, b.user_message_id, &turn.user_id, "user", now);
    question.content = Set(turn.message.clone());
    question.status = Set(Status::Complete.as_str().to_owned());
    question.client_message_id = Set(turn.client_message_id.clone());
    question.parent_id = Set(turn.parent_id);
    question.attachments = Set(turn.attachments.clone());
    let mut answer = new_message(b.conversation_id, b.assistant_message_id, &turn.user_id, "assistant", now);
    answer.content = Set(String::new());
    answer.status = Set(Status::Streaming.as_str().to_owned());
    answer.model = Set(Some(turn.model.clone()));
    answer.parent_id = Set(Some(b.user_message_id));
    answer.context_messages = Set(Some(i32::try_from(turn.context_messages).unwrap_or(i32::MAX)));
    [question, answer]
}

pub(super) fn new_message(conversation_id: Uuid, id: Uuid, user_id: &str, role: &str, now: chrono::DateTime<Utc>) -> message::ActiveModel {
    message::ActiveModel {
        id: Set(id),
        conversation_id: Set(conversation_id),
        user_id: Set(user_id.to_owned()),
        role: Set(role.to_owned()),
        created_at: Set(now),
        updated_at: Set(now),
        model: Set(None),
        provider: Set(None),
        prompt_tokens: Set(None),
        completion_tokens: Set(None),
        total_tokens: Set(None),
        finish_reason: Set(None),
        client_message_id: Set(None),
        error_code: Set(None),
        content: Set(String::new()),
        status: Set(String::new()),
        parent_id: Set(None),
        attachments: Set(None),
        context_messages: Set(None),
    }
}

/// The ids of an earlier `chat:start` of `user` with this `clientMessageId`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TurnIds {
    pub conversation_id: Uuid,
    pub user_message_id: Uuid,
    pub assistant_message_id: Uuid,
    /// The question's parent.
    pub parent_id: Option<Uuid>,
}

/// Finds the turn a repeated `clientMessageId` refers to, if it was stored.
pub async fn find_turn(db: &DatabaseConnection, user_id: &str, client_message_id: &str) -> Result<Option<TurnIds>, DbErr> {
    let Some(question) = message::Entity::find()
        .filter(message::Column::UserId.eq(user_id))
        .filter(message::Column::ClientMessageId.eq(client_message_id))
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    // The answer row is inserted right after the question, in the same transaction.
    let answer = message::Entity::find()
        .filter(message::Column::ConversationId.eq(question.conversation_id))
        .filter(message::Column::Id.gt(question.id))
        .filter(message::Column::Role.eq("assistant"))
        .order_by_asc(message::Column::Id)
        .one(db)
        .await?;
    Ok(answer.map(|a| TurnIds {
        conversation_id: question.conversation_id,
        user_message_id: question.id,
        assistant_message_id: a.id,
        parent_id: question.parent_id,
    }))
}

/// True when the conversation exists and belongs to `user`.
pub async fn owns_conversation(db: &DatabaseConnection, user_id: &str, id: Uuid) -> Result<bool, DbErr> {
    Ok(conversation::Entity::find_by_id(id).filter(conversation::Column::UserId.eq(user_id)).one(db).await?.is_some())
}

/// Whose a conversation with a client-chosen id is, after [`claim_conversation`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConversationClaim {
    /// It was `user`'s already.
    Owned,
    /// It did not exist; it is now `user`'s.
    Created,
    /// It is another user's.
    Foreign,
}

/// Makes sure the conversation `id` exists, creating it for `user` when it does not (a
/// wire whose clients name their conversations: WADI's path, canyon's client id).
pub async fn claim_conversation(db: &DatabaseConnection, user_id: &str, id: Uuid, title: &str) -> Result<ConversationClaim, DbErr> {
    let now = Utc::now();
    let conversation = conversation::ActiveModel {
        id: Set(id),
        user_id: Set(user_id.to_owned()),
        title: Set(title.chars().take(80).collect()),
        created_at: Set(now),
        updated_at: Set(now),
        active_leaf_id: Set(None),
        preset: Set(None),
    };
    // Two connections may claim the same new id at once: the first insert wins.
    let inserted =
        conversation::Entity::insert(conversation).on_conflict_do_nothing_on([conversation::Column::Id]).exec_without_returning(db).await?;
    if matches!(inserted, sea_orm::TryInsertResult::Inserted(n) if n > 0) {
        return Ok(ConversationClaim::Created);
    }
    Ok(if owns_conversation(db, user_id, id).await? { ConversationClaim::Owned } else { ConversationClaim::Foreign })
}

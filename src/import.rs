//! `chatwire import --jsonl FILE [--strict]`: conversations and messages from JSON lines,
//! one message a line (the format is in docs/IMPORT.md). Lines are read and checked
//! here; [`store::import_messages`] checks them against the database and writes them.

use std::{
    fmt,
    io::{BufRead, Write},
    path::Path,
};

use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::{
    Config,
    store::{self, ImportMode, ImportedMessage, Refusal},
};

/// Ids that are not UUIDs become the UUIDv5 of this namespace and the id's text, so
/// every run maps an id to the same UUID.
pub const ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2a9e_4b7d_4e25_9a61_3c0f_d5e8_b417);
/// A message without an id gets the UUIDv5 of this namespace and its conversation,
/// time, role and content (so an unchanged line maps to the same id on every run).
pub const CONTENT_NAMESPACE: Uuid = Uuid::from_u128(0x2d84_e7b3_91f6_4c0a_8e52_7ab9_06c3_f1d8);

/// What a run did, in lines of the file (blank lines are not counted).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Lines written now.
    pub imported: usize,
    /// Lines whose message was stored already (by an earlier run) or came earlier in the file.
    pub already_present: usize,
    /// Bad lines, each reported as `line N: <reason>`.
    pub skipped: usize,
    /// False when nothing was written: `--strict` with a bad line.
    pub written: bool,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.written {
            write!(f, "imported {} lines, {} already present, skipped {}", self.imported, self.already_present, self.skipped)
        } else {
            write!(f, "nothing imported: {} bad lines (--strict)", self.skipped)
        }
    }
}

/// Why a run could not finish.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read line {line} of the input: {source}")]
    Read { line: usize, source: std::io::Error },
    #[error("cannot write the report of bad lines: {0}")]
    Report(std::io::Error),
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
}

/// The command: opens and migrates the database, imports the file, prints each bad line
/// on stderr and the summary on stdout. `Err` (exit code 1) when the file cannot be
/// read, the database fails, or `strict` found a bad line.
pub async fn run_cli(config: &Config, path: &Path, strict: bool) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let db = store::connect(&config.database_url, config.database_max_connections, &config.database_schema)
        .await
        .map_err(|e| format!("cannot open the database: {e}"))?;
    let summary = import(&db, std::io::BufReader::new(file), strict, &mut std::io::stderr().lock())
        .await
        .map_err(|e| format!("importing {}: {e}", path.display()))?;
    if !summary.written {
        return Err(summary.to_string());
    }
    println!("{summary}");
    Ok(())
}

/// Imports the lines of `input`, writing `line N: <reason>` to `report` for each bad
/// one. Bad lines are skipped; with `strict`, one bad line means nothing is written.
pub async fn import(
    db: &DatabaseConnection,
    mut input: impl BufRead,
    strict: bool,
    report: &mut impl Write,
) -> Result<Summary, ImportError> {
    let mut bad: Vec<(usize, String)> = Vec::new();
    let mut messages = Vec::new();
    // Per message: its line number and its ids as the file spelled them.
    let mut origins = Vec::new();
    let mut raw = Vec::new();
    for number in 1.. {
        raw.clear();
        match input.read_until(b'\n', &mut raw) {
            Ok(0) => break,
            Ok(_) => {}
            Err(source) => return Err(ImportError::Read { line: number, source }),
        }
        let Ok(text) = std::str::from_utf8(&raw) else {
            bad.push((number, "not UTF-8 text".into()));
            continue;
        };
        if text.trim().is_empty() {
            continue;
        }
        match parse_line(text) {
            Ok(parsed) => {
                messages.push(parsed.message);
                origins.push((number, parsed.source_id, parsed.source_conversation));
            }
            Err(reason) => bad.push((number, reason)),
        }
    }
    let mode = match (strict, bad.is_empty()) {
        (false, _) => ImportMode::SkipRefused,
        (true, true) => ImportMode::AllOrNothing,
        // Still checked against the database, so one run reports every bad line.
        (true, false) => ImportMode::CheckOnly,
    };
    let result = store::import_messages(db, &messages, mode).await?;
    for (index, refusal) in &result.refused {
        let (Some((line, source_id, source_conversation)), Some(m)) = (origins.get(*index), messages.get(*index)) else {
            continue;
        };
        let reason = match refusal {
            Refusal::ConversationOfAnotherUser => {
                format!("conversation {source_conversation:?} belongs to another user than {:?}", m.user_id)
            }
            Refusal::IdInAnotherConversation => {
                format!("message id {source_id:?} is already used in another conversation")
            }
        };
        bad.push((*line, reason));
    }
    bad.sort_by_key(|(line, _)| *line);
    for (line, reason) in &bad {
        writeln!(report, "line {line}: {reason}").map_err(ImportError::Report)?;
    }
    Ok(Summary { imported: result.imported, already_present: result.already_present, skipped: bad.len(), written: result.written })
}

/// A checked line: the message to store, and its ids as the file spelled them (for reports).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedLine {
    pub message: ImportedMessage,
    pub source_id: String,
    pub source_conversation: String,
}

/// Checks one line and maps its ids; `Err` is the reason it is bad.
pub fn parse_line(text: &str) -> Result<ParsedLine, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let Value::Object(fields) = value else { return Err("not a JSON object".into()) };
    let user_id = id_field(&fields, "userId")?.ok_or("missing userId")?;
    let source_conversation = id_field(&fields, "conversationId")?.ok_or("missing conversationId")?;
    let role = match fields.get("role") {
        None => return Err("missing role".into()),
        Some(Value::String(r)) if ["user", "assistant", "system"].contains(&r.as_str()) => r.clone(),
        Some(other) => return Err(format!("role must be \"user\", \"assistant\" or \"system\", not {other}")),
    };
    let content = match fields.get("content") {
        None => return Err("missing content".into()),
        Some(Value::String(c)) => c.clone(),
        Some(_) => return Err("content must be a string".into()),
    };
    let created_at = match fields.get("createdAt") {
        None => return Err("missing createdAt".into()),
        Some(Value::String(t)) => DateTime::parse_from_rfc3339(t)
            .map_err(|e| format!("createdAt {t:?} is not an ISO 8601 time with a zone, such as 2025-01-31T09:30:00.000Z: {e}"))?
            .with_timezone(&Utc),
        Some(_) => return Err("createdAt must be a string".into()),
    };
    let model = match fields.get("model") {
        None | Some(Value::Null) => None,
        Some(Value::String(m)) => Some(m.clone()),
        Some(_) => return Err("model must be a string or null".into()),
    };
    let conversation_id = mapped(&source_conversation);
    let (id, source_id) = match id_field(&fields, "id")? {
        Some(source) => (mapped(&source), source),
        None => {
            let name = format!("{conversation_id}\n{}\n{role}\n{content}", created_at.to_rfc3339());
            let id = Uuid::new_v5(&CONTENT_NAMESPACE, name.as_bytes());
            (id, id.to_string())
        }
    };
    Ok(ParsedLine {
        message: ImportedMessage {
            id,
            conversation_id,
            user_id,
            role,
            content,
            model,
            prompt_tokens: count(&fields, "promptTokens")?,
            completion_tokens: count(&fields, "completionTokens")?,
            total_tokens: count(&fields, "totalTokens")?,
            created_at,
        },
        source_id,
        source_conversation,
    })
}

/// chatwire's UUID for an id of the file: the id itself when it is a UUID, else a UUIDv5.
pub fn mapped(source: &str) -> Uuid {
    Uuid::try_parse(source).unwrap_or_else(|_| Uuid::new_v5(&ID_NAMESPACE, source.as_bytes()))
}

/// An id: a non-empty string, or an integer taken as its decimal text (as JWT user
/// claims are). `None` when absent or null.
fn id_field(fields: &Map<String, Value>, name: &str) -> Result<Option<String>, String> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.clone())),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(Some(n.to_string())),
        Some(_) => Err(format!("{name} must be a non-empty string or an integer")),
    }
}

/// A token count: absent, null, or a whole number that fits the column.
fn count(fields: &Map<String, Value>, name: &str) -> Result<Option<i32>, String> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64().and_then(|n| i32::try_from(n).ok()) {
            Some(n) => Ok(Some(n)),
            None => Err(format!("{name} must be a whole number from 0 to {}, not {n}", i32::MAX)),
        },
        Some(other) => Err(format!("{name} must be a number or null, not {other}")),
    }
}

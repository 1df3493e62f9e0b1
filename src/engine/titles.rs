//! Titles: after the first answer of a conversation a start created, one short upstream
//! call (the route of `TITLE_MODEL`, or the answering model with the mock) makes a title
//! of at most 80 characters, stored on the conversation and announced to the wires
//! ([`Engine::titles`]). It runs after the answer's final entry, in a task of its own,
//! bounded by [`TIMEOUT`]: a failure is a WARN line, never the answer's or the client's
//! business. Only an answer that completed, or was stopped with some text, gets one.

use std::{sync::Arc, time::Duration};

use tokio::sync::broadcast;
use tracing::Instrument;
use uuid::Uuid;

use super::{Engine, Parts};
use crate::{
    chat::{AnswerIds, Final, title},
    config::{Target, TitleModel},
    providers::{ChatCall, Route, UpstreamError},
    store,
};

/// The longest a title may take, from the request to the last piece of its answer.
pub(super) const TIMEOUT: Duration = Duration::from_secs(10);
/// The title call's `max_tokens`: 80 characters are about 20 tokens in English.
const MAX_TOKENS: u32 = 60;
/// The title call's temperature: a plain, steady title.
const TEMPERATURE: f32 = 0.2;
/// The most bytes of the model's reply read for a title (the rest is not waited for).
const MAX_REPLY_BYTES: usize = 4096;
/// Titles the wires have not taken yet; past it, the slowest wire misses some (logged).
pub(super) const CHANNEL: usize = 256;

/// What became of one conversation's title.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Titled {
    pub user_id: String,
    pub conversation_id: Uuid,
    /// The title stored; `None` when none was (the call failed or said nothing, or the
    /// conversation was renamed or deleted meanwhile).
    pub title: Option<String>,
}

/// A title to make once the answer ends, decided when its turn was stored.
pub(super) struct TitleJob {
    question: String,
    /// The conversation's title until this one replaces it.
    created_with: String,
}

/// The title job of a start: only for a conversation it created, with titles on.
pub(super) fn job(parts: &Parts, created: bool, question: &str) -> Option<TitleJob> {
    let on = parts.config.conversations.title_model != TitleModel::Off;
    (created && on).then(|| TitleJob { question: question.to_owned(), created_with: store::first_title(question) })
}

/// Whether an answer that ended so gets a title: complete, or stopped with some text.
pub(super) fn deserved(ending: &Final, content: &str) -> bool {
    matches!(ending, Final::Complete { .. } | Final::Stopped) && !content.trim().is_empty()
}

impl Engine {
    /// Every title made from now on (and every one that failed, as `title: None`), for
    /// the wires that announce them.
    pub fn titles(&self) -> broadcast::Receiver<Titled> {
        self.0.titles.subscribe()
    }
}

/// Makes, stores and announces the title of the conversation `ids` names, in the
/// caller's (answer) span, without holding up anything.
pub(super) fn spawn(parts: &Arc<Parts>, ids: AnswerIds, user_id: &str, answering: &Target, job: TitleJob, answer: &str) {
    let (parts, user_id, answering) = (parts.clone(), user_id.to_owned(), answering.clone());
    let messages = title::request(&job.question, answer);
    tokio::spawn(
        async move {
            let conversation_id = ids.conversation_id;
            let title = match tokio::time::timeout(TIMEOUT, ask(&parts, &answering, messages)).await {
                Ok(Ok(said)) => title::clean(&said).ok_or_else(|| "the model's title was empty".to_owned()),
                Ok(Err(why)) => Err(why),
                Err(_) => Err(format!("no title within {} s", TIMEOUT.as_secs())),
            };
            let stored = match title {
                Ok(title) => match store::set_made_title(&parts.db, &user_id, conversation_id, &job.created_with, &title).await {
                    Ok(true) => Some(title),
                    Ok(false) => {
                        tracing::debug!(%conversation_id, "conversation renamed or deleted before its title came; kept as it is");
                        None
                    }
                    Err(e) => {
                        tracing::warn!(%conversation_id, error = %e, "storing the conversation's title failed");
                        None
                    }
                },
                Err(why) => {
                    tracing::warn!(%conversation_id, error = %why, "no title for the conversation");
                    None
                }
            };
            // Nobody listening (no wire announces titles) is no failure.
            let _ = parts.titles.send(Titled { user_id, conversation_id, title: stored });
        }
        .in_current_span(),
    );
}

/// The model's reply to the title request, up to [`MAX_REPLY_BYTES`].
async fn ask(parts: &Parts, answering: &Target, messages: Vec<crate::chat::HistoryMessage>) -> Result<String, String> {
    let route = match &parts.config.conversations.title_model {
        TitleModel::Named(name) => parts.providers.resolve(None, name).await.map_err(|e| format!("TITLE_MODEL {name:?}: {}", e.message))?,
        TitleModel::Answering | TitleModel::Off => Route { targets: vec![answering.clone()] },
    };
    let primary = route.primary().clone();
    let call = ChatCall { model: primary.model.clone(), max_tokens: MAX_TOKENS, temperature: TEMPERATURE, messages };
    let failed = |e: UpstreamError| format!("{}/{}: {e}", primary.provider, primary.model);
    let opened = parts.providers.start_open(route, call).opened(&primary).await;
    let mut stream = opened
        .map_err(|f| {
            parts.providers.record_error(&f.target.provider, &f.error);
            failed(f.error)
        })?
        .stream;
    let mut said = String::new();
    while let Some(piece) = stream.next().await.map_err(failed)? {
        said.push_str(piece.delta.as_deref().unwrap_or_default());
        if piece.finish_reason.is_some() || said.len() >= MAX_REPLY_BYTES {
            break;
        }
    }
    Ok(said)
}

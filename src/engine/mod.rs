//! The engine: the only API the wires call. `start`, `stop`, `subscribe(message,
//! offset)`, `follow(conversation)` and `active(user)`. It owns idempotent replays of a
//! `clientMessageId`, the rate limit, the claims, the history, the upstream call, the
//! stored rows and the generation task. It knows no wire: a connection is the wire's
//! own [`ConnectionId`], and what a reader reads is a log [`Entry`].

mod activity;
mod adopt;
mod branches;
mod checkpoint;
mod context;
mod embed;
mod generation;
mod headroom;
mod history;
mod limits;
mod lookups;
mod node;
mod readers;
mod stored;
mod titles;
mod usage;
mod voice;

use std::{sync::Arc, time::Duration};

use sea_orm::DatabaseConnection;
use tracing::Instrument;
use uuid::Uuid;

pub use activity::{RunningAnswerInfo, Totals};
pub use branches::Deleted;
pub use checkpoint::Checkpoints;
pub use headroom::Pressure;
pub use history::{ConversationDetail, ConversationPage, ConversationSummary, PageKey};
pub use limits::StartRateLimiter;
pub use titles::Titled;
pub use usage::UsageRow;

pub use crate::cluster::{Ending, Entry};
use crate::{
    chat::{AnswerIds, ChatError, ConnectionId, ErrorCode, StartCommand, Status, StopReason},
    cluster::{AnswerLogs, ClaimRefused, Directory, LogReader, RunningAnswer, StopHandle},
    config::{Config, OnDisconnect},
    metrics::Metrics,
    providers::{ChatCall, Registry},
    store::{self, NewTurn, StoreError},
    throttle::LogThrottle,
};

/// What a started answer gives its wire.
pub struct Started {
    pub ids: AnswerIds,
    pub user_message_id: Uuid,
    /// The new question's parent; for a regenerate, the question answered again.
    pub parent_message_id: Option<Uuid>,
    /// False for a regenerate: no new question was stored (`user_message_id` is the old one).
    pub new_question: bool,
    /// True when this start created the conversation.
    pub created: bool,
    /// The answer's log from its first delta, attached before the generation began.
    pub reader: Box<dyn LogReader>,
}

/// How many times (20 ms apart) `subscribe` looks again for the generation of a row
/// found `streaming` before it reads the row as interrupted.
const REGISTER_CHECKS: usize = 5;

/// The result of a `start`.
pub enum StartOutcome {
    Started(Started),
    /// A repeat of an earlier start with the same `clientMessageId`: nothing new runs.
    Repeated {
        ids: AnswerIds,
        user_message_id: Uuid,
        parent_message_id: Option<Uuid>,
    },
}

/// A reader of one answer from an offset, running or stored.
pub struct Subscription {
    pub ids: AnswerIds,
    /// `streaming` while it runs, else its stored status.
    pub status: Status,
    /// The offset really used: clamped to the text and to a character boundary.
    pub offset: u64,
    pub reader: Box<dyn LogReader>,
}

/// A running answer as `chat:active` lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActiveAnswer {
    pub ids: AnswerIds,
    /// Its UTF-16 length so far.
    pub offset: u64,
}

/// The engine; cheap to clone.
#[derive(Clone)]
pub struct Engine(Arc<Parts>);

/// Everything the engine and its generations share.
pub(crate) struct Parts {
    pub config: Arc<Config>,
    pub db: DatabaseConnection,
    pub providers: Registry,
    pub directory: Arc<dyn Directory>,
    pub logs: Arc<dyn AnswerLogs>,
    pub limiter: StartRateLimiter,
    /// The per-user bucket of lookups: resumes, joins and repeated keys.
    pub lookups: StartRateLimiter,
    pub checkpoints: Arc<Checkpoints>,
    /// Readers handed out by `subscribe` since start-up (resumes and watchers).
    pub subscriptions: std::sync::atomic::AtomicU64,
    pub metrics: Metrics,
    /// Counters and running answers, for operators.
    pub activity: Arc<activity::Activity>,
    /// Set when shutdown begins: new starts are refused, running answers finish.
    pub draining: std::sync::atomic::AtomicBool,
    /// The embedding requests' shared queue.
    pub embedder: crate::providers::Embedder,
    /// What this node has left: past a limit, new starts are refused at once.
    pub headroom: Arc<headroom::Headroom>,
    /// Where made titles go, for the wires that announce them.
    pub titles: tokio::sync::broadcast::Sender<Titled>,
    /// Stores the turns of starts arriving together in one transaction.
    pub turns: store::TurnWriter,
    /// Starts being stored in existing conversations, not yet running.
    pub starting: branches::Starting,
}

impl Engine {
    /// An engine over these parts. Its background writers are started by the caller
    /// ([`Engine::spawn_background`]).
    pub fn new(
        config: Arc<Config>,
        db: DatabaseConnection,
        providers: Registry,
        directory: Arc<dyn Directory>,
        logs: Arc<dyn AnswerLogs>,
        metrics: Metrics,
    ) -> Self {
        let limiter = StartRateLimiter::new(config.rate_limit_per_minute);
        let lookups = StartRateLimiter::new(config.lookups_per_minute);
        let (checkpoints, subscriptions, activity) = (Arc::default(), Default::default(), Arc::default());
        let embedder = crate::providers::Embedder::spawn(config.embeddings.clone(), providers.clone());
        let writers = store::pool_size(&config.database_url, config.database_max_connections) as usize;
        let headroom = Arc::new(headroom::Headroom::new(config.overload.clone(), writers));
        let batches = metrics.clone();
        let turns = store::TurnWriter::spawn(db.clone(), headroom.gate().clone(), store::MAX_BATCH, move |n| batches.store_batch(n));
        Self(Arc::new(Parts {
            config,
            db,
            providers,
            directory,
            logs,
            limiter,
            lookups,
            checkpoints,
            subscriptions,
            metrics,
            activity,
            draining: Default::default(),
            embedder,
            headroom,
            titles: tokio::sync::broadcast::channel(titles::CHANNEL).0,
            turns,
            starting: Default::default(),
        }))
    }

    /// Runs the checkpoint writer and the rate limiter's sweeper until `shutdown`.
    pub fn spawn_background(&self, shutdown: tokio_util::sync::CancellationToken) {
        self.0.checkpoints.spawn_writer(self.0.db.clone(), self.0.config.checkpoint_interval, shutdown.clone());
        self.0.limiter.spawn_sweeper(Duration::from_secs(60), shutdown.clone());
        self.0.lookups.spawn_sweeper(Duration::from_secs(60), shutdown.clone());
        self.0.headroom.spawn_ticker(shutdown.clone());
        adopt::spawn(self.0.clone(), shutdown);
    }

    /// The database (for health checks and tools).
    pub fn db(&self) -> &DatabaseConnection {
        &self.0.db
    }

    /// Partial answers waiting to be written.
    pub fn checkpoints(&self) -> &Checkpoints {
        &self.0.checkpoints
    }

    /// This server's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// The model providers: what a model picker lists, on any wire.
    pub fn providers(&self) -> &Registry {
        &self.0.providers
    }

    /// Starts an answer for `user` on `connection`. Everything it logs, the upstream
    /// request and the generation included, is in one `answer` span naming the answer,
    /// its conversation, the user and this node.
    pub async fn start(&self, connection: &ConnectionId, user: &str, command: StartCommand) -> Result<StartOutcome, ChatError> {
        let span = generation::span(user, &self.0.config.node_id);
        let started = self.start_in_span(connection, user, command).instrument(span).await;
        if started.is_err() {
            self.0.activity.refused();
        }
        started
    }

    async fn start_in_span(&self, connection: &ConnectionId, user: &str, mut command: StartCommand) -> Result<StartOutcome, ChatError> {
        let received = tokio::time::Instant::now();
        let parts = &self.0;
        // Past a headroom limit, refused before anything costs the database.
        self.headroom_left()?;
        let key = command.client_message_id.clone();
        let key = key.as_deref();
        if let Some(key) = key {
            // The repeat lookup comes before the start's own limit, so it counts as a lookup.
            self.allow_lookup(user)?;
            if let Some(repeated) = self.repeated(user, key, false).await? {
                return Ok(repeated);
            }
        }
        if parts.draining.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(ChatError::new(ErrorCode::Unavailable, "the server is shutting down; start again"));
        }
        let too_many = || ChatError::new(ErrorCode::RateLimit, "too many chats started; try again shortly");
        if !parts.limiter.allow(user) {
            return Err(too_many());
        }
        // In a cluster, the bucket every node shares (a node's own is never the stricter).
        match parts.directory.allow_start(user, parts.config.rate_limit_per_minute).await {
            Ok(true) => {}
            Ok(false) => return Err(too_many()),
            Err(_) => return Err(ChatError::code(ErrorCode::Unavailable)),
        }
        usage::check_quota(parts, user).await?;
        // Before any upstream call: an unknown provider or model is INVALID_MODEL here.
        let route = parts.providers.resolve(command.provider.as_deref(), &command.model).await?;
        let primary = route.primary().clone();
        let claim = match parts.directory.claim(connection, user, parts.config.max_concurrent_streams_per_user).await {
            Ok(claim) => claim,
            Err(ClaimRefused::UserLimit) => return Err(ChatError::new(ErrorCode::RateLimit, "too many answers streaming at once")),
            Err(ClaimRefused::Unavailable) => return Err(ChatError::code(ErrorCode::Unavailable)),
            Err(ClaimRefused::Busy) => {
                // A retry of the start still being stored on this connection is not BUSY.
                if let Some(key) = key
                    && let Ok(Some(repeated)) = self.repeated(user, key, true).await
                {
                    return Ok(repeated);
                }
                return Err(ChatError::code(ErrorCode::Busy));
            }
        };
        let mut placed = branches::place(parts, user, &mut command).await?;
        let fitted = context::prompt(parts, &primary, &command, std::mem::take(&mut placed.history))?;
        let context_messages = fitted.context_messages;
        let call = ChatCall {
            messages: fitted.messages,
            model: primary.model.clone(),
            max_tokens: command.max_tokens,
            temperature: command.temperature,
        };
        let new_ids = store::NewIds::generate();
        let conversation_id = command.conversation_id.unwrap_or(new_ids.conversation_id);
        generation::name_span(AnswerIds { message_id: new_ids.assistant_message_id, conversation_id });
        // The model starts on the answer while the turn is stored: its time to first token
        // and the database's writes overlap. A start refused below drops (aborts) the request.
        let upstream = parts.providers.start_open(route, call);
        let attachments = crate::chat::attachments::to_stored(&command.attachments);
        // Only a conversation this start creates gets a title made of its question.
        let title_question = command.conversation_id.is_none().then(|| command.message.clone());
        let turn = NewTurn {
            user_id: user.to_owned(),
            conversation_id: command.conversation_id,
            message: command.message,
            model: primary.model.clone(),
            client_message_id: command.client_message_id,
            parent_id: placed.parent_id,
            context_messages,
            preset: command.preset,
            attachments,
        };
        let begun = match branches::store(parts, turn, new_ids, &placed).await {
            Ok(b) => b,
            Err(StoreError::Overloaded) => return Err(parts.headroom.refusal()),
            Err(StoreError::DuplicateKey) => {
                // Another connection stored the same key first: answer with its ids.
                drop((claim, upstream));
                return self.repeated(user, key.unwrap_or_default(), true).await?.ok_or_else(|| ChatError::code(ErrorCode::Internal));
            }
            Err(e) => return Err(refused_by_store(connection, e)),
        };
        let ids = AnswerIds { message_id: begun.assistant_message_id, conversation_id: begun.conversation_id };
        let writer = parts.logs.create(ids.message_id);
        let reader = parts.logs.open(ids.message_id, 0).await.ok_or_else(|| ChatError::code(ErrorCode::Internal))?;
        let stop = Arc::new(StopHandle::default());
        let running = RunningAnswer { ids, user_id: user.to_owned(), connection: connection.clone() };
        let registration = parts.directory.register(running, stop.clone()).await;
        let tracked = parts.activity.track(ids, user, &primary.model);
        let title = title_question.and_then(|question| titles::job(parts, begun.created, &question));
        let spec = generation::Spec { ids, user_id: user.to_owned(), answering: primary, upstream, writer, stop, received, tracked, title };
        generation::spawn(self.0.clone(), spec, (claim, registration));
        Ok(StartOutcome::Started(Started {
            ids,
            user_message_id: begun.user_message_id,
            parent_message_id: placed.parent_id,
            new_question: !placed.regenerate,
            created: begun.created,
            reader,
        }))
    }

    /// Stops `user`'s answer. `Ok(false)` when it is theirs but no longer runs;
    /// `NOT_FOUND` when it is not theirs or does not exist.
    pub async fn stop(&self, user: &str, message_id: Uuid) -> Result<bool, ChatError> {
        let directory = &self.0.directory;
        if directory.get(message_id).await.is_some_and(|a| a.user_id == user) {
            return Ok(directory.stop(message_id, StopReason::User).await);
        }
        match store::find_answer(&self.0.db, user, message_id).await {
            Ok(Some(_)) => Ok(false),
            Ok(None) => Err(ChatError::new(ErrorCode::NotFound, "message not found")),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Stops the answer `connection` is running, if any.
    pub async fn stop_connection(&self, connection: &ConnectionId) -> bool {
        match self.0.directory.of_connection(connection).await {
            Some(a) => self.0.directory.stop(a.ids.message_id, StopReason::User).await,
            None => false,
        }
    }

    /// A connection has gone: with `ON_DISCONNECT=cancel`, its answer stops.
    pub async fn connection_closed(&self, connection: &ConnectionId) {
        if self.0.config.on_disconnect == OnDisconnect::Cancel
            && let Some(a) = self.0.directory.of_connection(connection).await
        {
            self.0.directory.stop(a.ids.message_id, StopReason::Disconnect).await;
        }
    }

    /// How many readers `subscribe` has handed out since start-up.
    pub fn subscriptions(&self) -> u64 {
        self.0.subscriptions.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Answers running in this process.
    pub fn running(&self) -> usize {
        self.0.directory.local_count()
    }

    /// Users holding a claim in this process.
    pub fn users_tracked(&self) -> usize {
        self.0.directory.local_users()
    }

    /// Waits until no answer runs here, or `limit` passes. True when none runs.
    pub async fn wait_idle(&self, limit: Duration) -> bool {
        self.0.directory.wait_local_empty(limit).await
    }

    /// Cuts every answer running here.
    pub fn stop_all(&self, reason: StopReason) {
        self.0.directory.stop_local(reason);
    }
}

/// A start the database refused; the cause goes to the log.
fn refused_by_store(connection: &ConnectionId, error: StoreError) -> ChatError {
    static LOG: LogThrottle = LogThrottle::new();
    if !matches!(error, StoreError::NotFound)
        && let Some(suppressed) = LOG.hit()
    {
        tracing::error!(%connection, error = %error, suppressed, "storing chat:start failed (logged at most every 30 s)");
    }
    error.to_chat_error()
}

/// A failed read: `UNAVAILABLE` when the database cannot be reached, else `INTERNAL`.
fn unavailable(e: sea_orm::DbErr) -> ChatError {
    static LOG: LogThrottle = LogThrottle::new();
    if let Some(suppressed) = LOG.hit() {
        tracing::error!(error = %e, suppressed, "database read failed (logged at most every 30 s)");
    }
    store::db_error(&e)
}

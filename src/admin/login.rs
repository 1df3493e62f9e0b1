//! Checking the admin's credentials: `ADMIN_USERNAME` and the bcrypt hash
//! `ADMIN_PASSWORD`, for the `/admin` namespace and the page's HTTP Basic alike.
//!
//! bcrypt is slow on purpose (about 100 ms at cost 10), so a check runs on the blocking
//! pool, at most [`VERIFYING_AT_ONCE`] at a time, and costs its address one of
//! [`ATTEMPTS_PER_MINUTE`]; a success is remembered for [`REMEMBERED`], so the page's
//! polling costs no bcrypt at all. What is remembered is a keyed hash of the
//! credentials, never the password. The admin UI's sessions (its `sessionId`) live
//! here too.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    net::IpAddr,
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{AdminConfig, Secret},
    engine::StartRateLimiter,
};

/// bcrypt checks (successful or not) one client address may ask for per minute.
pub const ATTEMPTS_PER_MINUTE: u32 = 10;
/// bcrypt checks running at once, whoever asks: a flood from many addresses waits here.
const VERIFYING_AT_ONCE: usize = 2;
/// How long a successful check is remembered.
const REMEMBERED: Duration = Duration::from_secs(30);
/// How long an admin UI session lasts.
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Remembered successes and sessions at most (the oldest go first).
const MAX_REMEMBERED: usize = 256;

/// The admin's credentials and what is remembered about them.
pub struct Login {
    username: String,
    hash: Secret,
    keys: RandomState,
    /// Keyed hashes of credentials that passed, until when.
    passed: Mutex<HashMap<u64, Instant>>,
    /// The admin UI's session ids, until when.
    sessions: Mutex<HashMap<String, Instant>>,
    attempts: StartRateLimiter,
    verifying: Semaphore,
}

/// Why a login was refused (for the log; the client is told only `unauthorized`).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("wrong username or password")]
    Wrong,
    #[error("too many attempts from this address")]
    TooMany,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Entries go in and out whole; a poisoned map is still consistent.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Keeps at most `MAX_REMEMBERED` entries, dropping expired ones, then the oldest.
fn insert_bounded<K: std::hash::Hash + Eq + Clone>(map: &mut HashMap<K, Instant>, key: K, until: Instant) {
    let now = Instant::now();
    map.retain(|_, t| *t > now);
    if map.len() >= MAX_REMEMBERED
        && let Some(oldest) = map.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone())
    {
        map.remove(&oldest);
    }
    map.insert(key, until);
}

impl Login {
    pub fn new(config: &AdminConfig) -> Self {
        Self {
            username: config.username.clone(),
            hash: config.password_hash.clone(),
            keys: RandomState::new(),
            passed: Mutex::default(),
            sessions: Mutex::default(),
            attempts: StartRateLimiter::new(ATTEMPTS_PER_MINUTE),
            verifying: Semaphore::new(VERIFYING_AT_ONCE),
        }
    }

    /// Forgets idle addresses' attempt counts until `shutdown`.
    pub fn spawn_sweeper(&self, shutdown: CancellationToken) {
        self.attempts.spawn_sweeper(Duration::from_secs(60), shutdown);
    }

    /// Checks `username` and `password` from `ip`.
    pub async fn check(&self, ip: IpAddr, username: &str, password: &str) -> Result<(), Refused> {
        let key = self.keys.hash_one((username, password));
        let now = Instant::now();
        if lock(&self.passed).get(&key).is_some_and(|until| *until > now) {
            return Ok(());
        }
        if !self.attempts.allow(&ip.to_string()) {
            return Err(Refused::TooMany);
        }
        // The hash is checked whatever the username, so timing tells nothing about it.
        let same_user = username.as_bytes() == self.username.as_bytes();
        let (password, hash) = (password.to_owned(), self.hash.clone());
        let Ok(_permit) = self.verifying.acquire().await else {
            return Err(Refused::Wrong);
        };
        let verified = tokio::task::spawn_blocking(move || bcrypt::verify(password, hash.expose()))
            .await
            .map_err(|e| tracing::error!(error = %e, "admin password check panicked"))
            .and_then(|r| r.map_err(|e| tracing::error!(error = %e, "ADMIN_PASSWORD cannot be checked")));
        if same_user && verified == Ok(true) {
            insert_bounded(&mut lock(&self.passed), key, Instant::now() + REMEMBERED);
            return Ok(());
        }
        Err(Refused::Wrong)
    }

    /// A new admin UI session.
    pub fn open_session(&self) -> String {
        let id: String = rand::random::<[u8; 16]>().iter().map(|b| format!("{b:02x}")).collect();
        insert_bounded(&mut lock(&self.sessions), id.clone(), Instant::now() + SESSION_LIFETIME);
        id
    }

    /// True when `id` is a live session.
    pub fn has_session(&self, id: &str) -> bool {
        lock(&self.sessions).get(id).is_some_and(|until| *until > Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(password: &str) -> Login {
        let hash = bcrypt::hash(password, 4).unwrap();
        let vars = [("ADMIN_USERNAME", "ops"), ("ADMIN_PASSWORD", hash.as_str())].map(|(k, v)| (k.to_owned(), v.to_owned()));
        Login::new(&crate::Config::from_vars(vars.into()).unwrap().admin.unwrap())
    }

    #[tokio::test]
    async fn only_the_right_pair_passes_and_an_address_gets_a_few_tries_a_minute() {
        let login = login("s3cret");
        let (ip, other) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        assert_eq!(login.check(ip, "ops", "s3cret").await, Ok(()));
        assert_eq!(login.check(ip, "root", "s3cret").await, Err(Refused::Wrong));
        for _ in 2..ATTEMPTS_PER_MINUTE {
            assert_eq!(login.check(ip, "ops", "guess").await, Err(Refused::Wrong));
        }
        assert_eq!(login.check(ip, "ops", "guess").await, Err(Refused::TooMany));
        assert_eq!(login.check(other, "ops", "guess").await, Err(Refused::Wrong), "each address has its own count");
        // A success is remembered: no bcrypt, no attempt counted.
        assert_eq!(login.check(ip, "ops", "s3cret").await, Ok(()));
    }

    #[test]
    fn sessions_are_random_and_known() {
        let login = login("x");
        let (a, b) = (login.open_session(), login.open_session());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(login.has_session(&a) && login.has_session(&b));
        assert!(!login.has_session("0123"));
    }
}

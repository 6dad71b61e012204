//! [`AuthHub`]: one member's view of auth, shared by its state machine (which writes it as
//! it applies entries) and its services (which read it for every request): the auth store as
//! last applied, and the member's table of tokens.
//!
//! Tokens are etcd's "simple tokens": a member that checks a password makes a random token
//! and proposes it through the log; every member learns it when the entry applies, so the
//! token works on any member. Whether a token has expired is member-local bookkeeping, kept
//! here and never in the replicated state: a token unused on this member for
//! [`AuthConfig::token_ttl`] is forgotten (each use refreshes it), and the table holds at most
//! [`AuthConfig::max_tokens`] tokens (the least recently used goes first). Tokens are not in
//! snapshots: a member that installs a snapshot knows only the tokens it learned itself, and
//! clients that get "invalid auth token" authenticate again (etcd clients do so by
//! themselves).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, MutexGuard, RwLock};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::AuthStore;
use super::password::DEFAULT_PASSWORD_ITERATIONS;
use crate::error::KvError;
use crate::proto::dengine::kv::v1::Authenticate;

/// etcd's simple-token TTL: 5 minutes without use.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(300);

/// Default bound on the tokens a member keeps.
pub const DEFAULT_MAX_TOKENS: usize = 10_000;

/// Settings of a member's auth machinery.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// A token unused on this member for this long is forgotten (default
    /// [`DEFAULT_TOKEN_TTL`]).
    pub token_ttl: Duration,
    /// Most tokens kept; beyond it, expired tokens go first, then the least recently used
    /// (default [`DEFAULT_MAX_TOKENS`]).
    pub max_tokens: usize,
    /// PBKDF2 iterations for passwords set through this member (default
    /// [`DEFAULT_PASSWORD_ITERATIONS`]).
    pub password_iterations: u32,
    /// Most password hashes or checks computed at once on this member (each takes a core for
    /// a fraction of a second); further Authenticate calls wait.
    pub max_concurrent_password_checks: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            token_ttl: DEFAULT_TOKEN_TTL,
            max_tokens: DEFAULT_MAX_TOKENS,
            password_iterations: DEFAULT_PASSWORD_ITERATIONS,
            max_concurrent_password_checks: 2,
        }
    }
}

#[derive(Debug)]
struct TokenEntry {
    user: String,
    /// The user's credential revision when the token was issued: a later password change
    /// (or the user's deletion) voids the token.
    credential_revision: u64,
    last_used: Instant,
}

/// Token → user, with the member-local expiry bookkeeping.
#[derive(Debug, Default)]
struct TokenTable {
    entries: HashMap<String, TokenEntry>,
}

impl TokenTable {
    /// Adds a token, making room first if the table is full: expired tokens go, then the
    /// least recently used. O(tokens) when full, which authentication (a slow password check
    /// per token) makes rare.
    fn insert(
        &mut self,
        token: String,
        entry: TokenEntry,
        now: Instant,
        ttl: Duration,
        max: usize,
    ) {
        if self.entries.len() >= max.max(1) && !self.entries.contains_key(&token) {
            self.entries
                .retain(|_, e| now.saturating_duration_since(e.last_used) < ttl);
            while self.entries.len() >= max.max(1) {
                let oldest = self
                    .entries
                    .iter()
                    .min_by_key(|(_, e)| e.last_used)
                    .map(|(t, _)| t.clone());
                match oldest {
                    Some(t) => self.entries.remove(&t),
                    None => break,
                };
            }
        }
        self.entries.insert(token, entry);
    }

    /// The live entry of `token`, refreshed; an expired one is removed.
    fn lookup(&mut self, token: &str, now: Instant, ttl: Duration) -> Option<&TokenEntry> {
        let expired = now.saturating_duration_since(self.entries.get(token)?.last_used) >= ttl;
        if expired {
            self.entries.remove(token);
            return None;
        }
        let entry = self.entries.get_mut(token)?;
        entry.last_used = now;
        Some(entry)
    }
}

#[derive(Debug)]
struct Inner {
    config: AuthConfig,
    store: RwLock<Arc<AuthStore>>,
    tokens: Mutex<TokenTable>,
    password_checks: Arc<Semaphore>,
}

/// One member's auth view, shared by its [`KvStateMachine`](crate::KvStateMachine) and its
/// services (see the module documentation). Cheap to clone; clones share everything.
#[derive(Clone, Debug)]
pub struct AuthHub {
    inner: Arc<Inner>,
}

impl Default for AuthHub {
    fn default() -> Self {
        AuthHub::new(AuthConfig::default())
    }
}

impl AuthHub {
    /// An empty hub (auth disabled, no users, no tokens).
    pub fn new(config: AuthConfig) -> Self {
        let checks = config.max_concurrent_password_checks.max(1);
        AuthHub {
            inner: Arc::new(Inner {
                config,
                store: RwLock::new(Arc::new(AuthStore::default())),
                tokens: Mutex::new(TokenTable::default()),
                password_checks: Arc::new(Semaphore::new(checks)),
            }),
        }
    }

    /// The settings the hub was made with.
    pub fn config(&self) -> &AuthConfig {
        &self.inner.config
    }

    /// Whether authentication is enabled, as of the last entry this member applied.
    pub fn is_enabled(&self) -> bool {
        self.store().is_enabled()
    }

    /// How many tokens this member holds (expired ones included until they are looked up or
    /// pushed out).
    pub fn token_count(&self) -> usize {
        self.tokens().entries.len()
    }

    fn tokens(&self) -> MutexGuard<'_, TokenTable> {
        self.inner.tokens.lock()
    }

    /// The auth store as of the last entry this member applied.
    pub(crate) fn store(&self) -> Arc<AuthStore> {
        self.inner.store.read().clone()
    }

    /// Publishes the state machine's store after a change (or a snapshot install).
    pub(crate) fn publish(&self, store: Arc<AuthStore>) {
        *self.inner.store.write() = store;
    }

    /// Learns a token from an applied Authenticate entry. Its age (from the issuing member's
    /// clock) counts against the TTL, so that replaying old entries after a restart does not
    /// bring expired tokens back.
    pub(crate) fn learn_token(&self, cmd: &Authenticate) {
        let ttl = self.inner.config.token_ttl;
        let age = Duration::from_millis(
            u64::try_from(unix_millis().saturating_sub(cmd.issued_unix_ms)).unwrap_or(0),
        );
        if age >= ttl {
            return;
        }
        let now = Instant::now();
        let entry = TokenEntry {
            user: cmd.name.clone(),
            credential_revision: cmd.credential_revision,
            last_used: now.checked_sub(age).unwrap_or(now),
        };
        self.tokens().insert(
            cmd.token.clone(),
            entry,
            now,
            ttl,
            self.inner.config.max_tokens,
        );
    }

    /// Forgets every token (auth was disabled).
    pub(crate) fn forget_tokens(&self) {
        self.tokens().entries.clear();
    }

    /// Forgets the tokens of `user` (deleted, or its password changed).
    pub(crate) fn forget_tokens_of(&self, user: &str) {
        self.tokens().entries.retain(|_, e| e.user != user);
    }

    /// The user `token` stands for, if the token is live on this member and its user's
    /// password has not changed since it was issued. Refreshes the token.
    pub fn user_of_token(&self, token: &str) -> Option<String> {
        let store = self.store();
        let mut tokens = self.tokens();
        let entry = tokens.lookup(token, Instant::now(), self.inner.config.token_ttl)?;
        let valid = store
            .user(&entry.user)
            .is_some_and(|u| u.credential_revision() == entry.credential_revision);
        if valid {
            Some(entry.user.clone())
        } else {
            tokens.entries.remove(token);
            None
        }
    }

    /// Waits for the right to compute a password hash (see
    /// [`AuthConfig::max_concurrent_password_checks`]). The permit is owned so that it can go
    /// with the computation: a client that gives up does not free it before the work ends.
    pub(crate) async fn password_permit(&self) -> Result<OwnedSemaphorePermit, KvError> {
        self.inner
            .password_checks
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| KvError::Internal("the password check queue is closed".into()))
    }
}

/// This member's wall clock in Unix milliseconds (0 if the clock is before 1970).
pub(crate) fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(user: &str, last_used: Instant) -> TokenEntry {
        TokenEntry {
            user: user.into(),
            credential_revision: 1,
            last_used,
        }
    }

    #[test]
    fn tokens_expire_after_the_ttl_without_use_and_each_use_refreshes() {
        let ttl = Duration::from_secs(300);
        let t0 = Instant::now();
        let mut table = TokenTable::default();
        table.insert("a".into(), entry("alice", t0), t0, ttl, 10);
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(
            table.lookup("a", at(299), ttl).map(|e| e.user.as_str()),
            Some("alice")
        );
        // Used at 299 s: alive until 598 s.
        assert!(table.lookup("a", at(597), ttl).is_some());
        assert!(table.lookup("a", at(597 + 300), ttl).is_none());
        assert!(table.entries.is_empty(), "an expired token is removed");
        assert!(table.lookup("never", t0, ttl).is_none());
    }

    #[test]
    fn a_full_table_drops_expired_tokens_then_the_least_recently_used() {
        let ttl = Duration::from_secs(300);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut table = TokenTable::default();
        table.insert("old".into(), entry("u", t0), t0, ttl, 3);
        table.insert("b".into(), entry("u", at(100)), at(100), ttl, 3);
        table.insert("c".into(), entry("u", at(200)), at(200), ttl, 3);
        // At 350 s "old" has expired: it makes room.
        table.insert("d".into(), entry("u", at(350)), at(350), ttl, 3);
        let mut live: Vec<_> = table.entries.keys().cloned().collect();
        live.sort();
        assert_eq!(live, ["b", "c", "d"]);
        // "b" used recently; "c" is now the least recently used.
        assert!(table.lookup("b", at(360), ttl).is_some());
        table.insert("e".into(), entry("u", at(370)), at(370), ttl, 3);
        let mut live: Vec<_> = table.entries.keys().cloned().collect();
        live.sort();
        assert_eq!(live, ["b", "d", "e"]);
    }

    #[test]
    fn replayed_tokens_older_than_the_ttl_are_not_learned() {
        let hub = AuthHub::default();
        let fresh = Authenticate {
            name: "alice".into(),
            token: "t1".into(),
            credential_revision: 1,
            issued_unix_ms: unix_millis() - 1_000,
        };
        hub.learn_token(&fresh);
        let old = Authenticate {
            token: "t2".into(),
            issued_unix_ms: unix_millis() - 301_000,
            ..fresh.clone()
        };
        hub.learn_token(&old);
        assert_eq!(hub.token_count(), 1);
        // No user alice in the (empty) store: the token stands for no one.
        assert_eq!(hub.user_of_token("t1"), None);
        assert_eq!(hub.token_count(), 0, "a void token is removed");
    }
}

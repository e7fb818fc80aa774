//! The abuse tables as the rest of the module sees them: [`AbuseRows`], implemented by both
//! store backends (`store::abuse` for SQLite, `store::postgres::abuse` for PostgreSQL) with
//! the same rules, and by [`Store`]. Times are unix milliseconds passed in by the caller, so
//! tests can move time and every backend does the same arithmetic; replicas are expected to
//! run NTP (a few seconds of skew moves a lock's end by as much, nothing more).

use crate::store::{Store, StoreError};

/// Where a counter applies. Webhooks have a realm of their own: a forged delivery says
/// nothing about the API, and GitHub's shared delivery addresses must never be locked out
/// of the API by someone else's hook (see `docs/abuse.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Realm {
    Api,
    Webhook,
}

impl Realm {
    pub fn as_str(self) -> &'static str {
        match self {
            Realm::Api => "api",
            Realm::Webhook => "webhook",
        }
    }
    pub fn parse(s: &str) -> Option<Realm> {
        match s {
            "api" => Some(Realm::Api),
            "webhook" => Some(Realm::Webhook),
            _ => None,
        }
    }
}

/// What a counter counts: a source address (its /32 or /64 key) or an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Address,
    Account,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Address => "address",
            Scope::Account => "account",
        }
    }
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "address" => Some(Scope::Address),
            "account" => Some(Scope::Account),
            _ => None,
        }
    }
}

/// One counter: realm, scope and key (`203.0.113.7/32`, `user:42`, `token:tok_abc`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subject {
    pub realm: Realm,
    pub scope: Scope,
    pub key: String,
}

/// The lockout rule of one kind of counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Failures inside `window_ms` that start a lock.
    pub threshold: u32,
    /// The sliding window failures are counted in.
    pub window_ms: i64,
    /// The first lock's length; each further lock within `memory_ms` of the previous one
    /// lasts twice as long, up to `max_lock_ms`.
    pub base_lock_ms: i64,
    pub max_lock_ms: i64,
    /// How long a lock is remembered for the doubling.
    pub memory_ms: i64,
}

impl Policy {
    /// The lock that a failure bringing the window's count to `count` starts, given the
    /// previous lock's level and start: `None` below the threshold. Returns (level, until).
    pub fn lock_for(
        &self,
        count: i64,
        level: i64,
        last_lock_at: Option<i64>,
        now: i64,
    ) -> Option<(i64, i64)> {
        if count < i64::from(self.threshold.max(1)) {
            return None;
        }
        let level = match last_lock_at {
            Some(at) if now - at < self.memory_ms => level.saturating_add(1),
            _ => 0,
        };
        let shift = level.clamp(0, 40) as u32;
        let length = self
            .base_lock_ms
            .max(1)
            .saturating_mul(1i64 << shift)
            .min(self.max_lock_ms.max(self.base_lock_ms.max(1)));
        Some((level, now.saturating_add(length)))
    }
}

/// What recording one failure did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The subject was already locked: the attempt is refused and not counted (so a
    /// locked flood adds no rows).
    Locked { until_ms: i64 },
    /// Counted: `count` failures in the window now; `locked_until` when this failure
    /// started a lock (exactly one caller sees that for each lock).
    Counted {
        count: i64,
        locked_until: Option<i64>,
        level: i64,
    },
}

/// A rate limiter's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    Allowed,
    /// Over the rate: try again in this many milliseconds.
    Denied {
        retry_after_ms: i64,
    },
}

/// A network first seen for an owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// The network was not known for the owner before this call (one caller sees it).
    pub new: bool,
    /// The owner was known from at least one other network before.
    pub known_elsewhere: bool,
}

/// One counter as `telbase abuse list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectRow {
    pub subject: Subject,
    /// Failures still stored (those inside the longest window).
    pub failures: i64,
    pub locked_until_ms: i64,
    pub level: i64,
    pub lockouts: i64,
    pub last_failure_ms: i64,
}

/// What pruning removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub failures: usize,
    pub subjects: usize,
    pub buckets: usize,
    pub seen: usize,
}

/// The abuse tables. Every method is one transaction; `record_failure` serialises the
/// failures of one subject (SQLite: an IMMEDIATE transaction; PostgreSQL: the subject row
/// locked `FOR UPDATE`), so counts are exact across threads and replicas.
pub trait AbuseRows {
    /// Count a failure of `subject` at `now_ms` under `policy`, starting a lock when the
    /// window's count reaches the threshold.
    fn record_failure(
        &mut self,
        subject: &Subject,
        now_ms: i64,
        policy: &Policy,
    ) -> Result<Failure, StoreError>;
    /// The latest lock end among `subjects` still in force at `now_ms`, and whose it is.
    fn locked(
        &mut self,
        subjects: &[Subject],
        now_ms: i64,
    ) -> Result<Option<(Subject, i64)>, StoreError>;
    /// A proven success of an account: forget its failures and its backoff level.
    fn clear_account(&mut self, realm: Realm, key: &str) -> Result<(), StoreError>;
    /// Operator unlock: clear the lock, level and failures of `key` in `scope`, in every
    /// realm. Returns how many counters changed.
    fn unlock(&mut self, scope: Scope, key: &str) -> Result<usize, StoreError>;
    /// Every counter, locked ones first.
    fn subjects(&mut self, now_ms: i64) -> Result<Vec<SubjectRow>, StoreError>;
    /// A token bucket (GCRA): one request at `now_ms` costs `interval_ms`; up to `burst`
    /// requests may come at once. One atomic statement.
    fn take(
        &mut self,
        bucket: &str,
        now_ms: i64,
        interval_ms: i64,
        burst: u32,
    ) -> Result<Take, StoreError>;
    /// Note that `owner` (`user:42`, `token:tok_abc`) was seen from `network` at `now_ms`.
    fn seen(&mut self, owner: &str, network: &str, now_ms: i64) -> Result<Seen, StoreError>;
    /// Delete failures older than `failures_before`, counters with nothing left to remember
    /// (no failure, no lock in force, no lock newer than `locks_before`), buckets that are
    /// full again, and networks not seen since `seen_before`.
    fn prune(
        &mut self,
        now_ms: i64,
        failures_before: i64,
        locks_before: i64,
        seen_before: i64,
    ) -> Result<Pruned, StoreError>;
}

/// Forwards to the backend.
macro_rules! both {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            Store::Sqlite($s) => $call,
            Store::Postgres($s) => $call,
        }
    };
}

impl AbuseRows for Store {
    fn record_failure(
        &mut self,
        subject: &Subject,
        now_ms: i64,
        policy: &Policy,
    ) -> Result<Failure, StoreError> {
        both!(self, s => s.record_failure(subject, now_ms, policy))
    }
    fn locked(
        &mut self,
        subjects: &[Subject],
        now_ms: i64,
    ) -> Result<Option<(Subject, i64)>, StoreError> {
        both!(self, s => s.locked(subjects, now_ms))
    }
    fn clear_account(&mut self, realm: Realm, key: &str) -> Result<(), StoreError> {
        both!(self, s => s.clear_account(realm, key))
    }
    fn unlock(&mut self, scope: Scope, key: &str) -> Result<usize, StoreError> {
        both!(self, s => s.unlock(scope, key))
    }
    fn subjects(&mut self, now_ms: i64) -> Result<Vec<SubjectRow>, StoreError> {
        both!(self, s => s.subjects(now_ms))
    }
    fn take(
        &mut self,
        bucket: &str,
        now_ms: i64,
        interval_ms: i64,
        burst: u32,
    ) -> Result<Take, StoreError> {
        both!(self, s => s.take(bucket, now_ms, interval_ms, burst))
    }
    fn seen(&mut self, owner: &str, network: &str, now_ms: i64) -> Result<Seen, StoreError> {
        both!(self, s => s.seen(owner, network, now_ms))
    }
    fn prune(
        &mut self,
        now_ms: i64,
        failures_before: i64,
        locks_before: i64,
        seen_before: i64,
    ) -> Result<Pruned, StoreError> {
        both!(self, s => s.prune(now_ms, failures_before, locks_before, seen_before))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_double_up_to_the_cap_and_restart_after_the_memory() {
        let p = Policy {
            threshold: 3,
            window_ms: 1000,
            base_lock_ms: 10,
            max_lock_ms: 50,
            memory_ms: 10_000,
        };
        assert_eq!(p.lock_for(2, 0, None, 0), None);
        assert_eq!(p.lock_for(3, 0, None, 0), Some((0, 10)));
        assert_eq!(p.lock_for(3, 0, Some(0), 100), Some((1, 120)));
        assert_eq!(p.lock_for(3, 1, Some(0), 100), Some((2, 140)));
        assert_eq!(p.lock_for(3, 2, Some(0), 100), Some((3, 150)));
        assert_eq!(p.lock_for(3, 500, Some(0), 100), Some((501, 150)));
        assert_eq!(p.lock_for(3, 5, Some(0), 20_000), Some((0, 20_010)));
    }
}

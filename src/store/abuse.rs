//! The abuse tables (brute-force counters, lockouts, rate-limit buckets, networks seen), their
//! migration for both backends, and the SQLite side of [`crate::abuse::AbuseRows`]. The
//! PostgreSQL side runs the same statements (`postgres::abuse`). Plain SQL both run: times
//! are unix ms in INTEGER/BIGINT columns; nothing in these rows is secret (addresses, account
//! and token *ids*, counts), so nothing here needs hashing.

use rusqlite::{OptionalExtension as _, TransactionBehavior, params};

use super::{SqliteStore, StoreError};
use crate::abuse::rows::{
    AbuseRows, Failure, Policy, Pruned, Realm, Scope, Seen, Subject, SubjectRow, Take,
};

/// The SQLite migration (PostgreSQL's is [`PG_MIGRATION`]: the same tables and meaning).
pub const MIGRATION: &str = "
    -- One row per counter: a source address (its /32 or /64) or an account, in a realm
    -- (api, webhook). `locked_until` (unix ms, 0 = never) refuses the subject until then;
    -- `level` is how many locks in a row it had (the next one lasts base * 2^level), and
    -- `last_lock_at` when the last began. Kept shared in the store so every replica sees
    -- the same counts and locks.
    CREATE TABLE abuse_subjects (
        id           INTEGER PRIMARY KEY,
        realm        TEXT NOT NULL,
        scope        TEXT NOT NULL CHECK (scope IN ('address', 'account')),
        key          TEXT NOT NULL,
        locked_until INTEGER NOT NULL DEFAULT 0,
        level        INTEGER NOT NULL DEFAULT 0,
        last_lock_at INTEGER,
        lockouts     INTEGER NOT NULL DEFAULT 0,
        last_failure INTEGER NOT NULL DEFAULT 0,
        UNIQUE (realm, scope, key)
    );
    -- The failures inside the sliding window, one row each (pruned past the window).
    CREATE TABLE abuse_failures (
        subject_id INTEGER NOT NULL REFERENCES abuse_subjects(id) ON DELETE CASCADE,
        at_ms      INTEGER NOT NULL
    );
    CREATE INDEX abuse_failures_by_subject ON abuse_failures(subject_id, at_ms);
    CREATE INDEX abuse_failures_by_age ON abuse_failures(at_ms);
    -- Rate-limit buckets (GCRA): when the bucket is full again, in unix ms.
    CREATE TABLE abuse_buckets (
        bucket TEXT PRIMARY KEY,
        tat_ms INTEGER NOT NULL
    );
    -- The networks each user (/24, /48) and each token (/32, /64) was seen from, for the
    -- new-network and new-address anomalies.
    CREATE TABLE abuse_seen (
        owner    TEXT NOT NULL,
        network  TEXT NOT NULL,
        first_ms INTEGER NOT NULL,
        last_ms  INTEGER NOT NULL,
        PRIMARY KEY (owner, network)
    );
    CREATE INDEX abuse_seen_by_age ON abuse_seen(last_ms);
";

/// The PostgreSQL migration.
pub const PG_MIGRATION: &str = "
    CREATE TABLE abuse_subjects (
        id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        realm        TEXT NOT NULL,
        scope        TEXT NOT NULL CHECK (scope IN ('address', 'account')),
        key          TEXT NOT NULL,
        locked_until BIGINT NOT NULL DEFAULT 0,
        level        BIGINT NOT NULL DEFAULT 0,
        last_lock_at BIGINT,
        lockouts     BIGINT NOT NULL DEFAULT 0,
        last_failure BIGINT NOT NULL DEFAULT 0,
        UNIQUE (realm, scope, key)
    );
    CREATE TABLE abuse_failures (
        subject_id BIGINT NOT NULL REFERENCES abuse_subjects(id) ON DELETE CASCADE,
        at_ms      BIGINT NOT NULL
    );
    CREATE INDEX abuse_failures_by_subject ON abuse_failures(subject_id, at_ms);
    CREATE INDEX abuse_failures_by_age ON abuse_failures(at_ms);
    CREATE TABLE abuse_buckets (
        bucket TEXT PRIMARY KEY,
        tat_ms BIGINT NOT NULL
    );
    CREATE TABLE abuse_seen (
        owner    TEXT NOT NULL,
        network  TEXT NOT NULL,
        first_ms BIGINT NOT NULL,
        last_ms  BIGINT NOT NULL,
        PRIMARY KEY (owner, network)
    );
    CREATE INDEX abuse_seen_by_age ON abuse_seen(last_ms);
";

/// `subjects()`'s query (both backends).
pub(super) const LIST: &str =
    "SELECT s.realm, s.scope, s.key, s.locked_until, s.level, s.lockouts, s.last_failure,
            (SELECT COUNT(*) FROM abuse_failures f WHERE f.subject_id = s.id)
     FROM abuse_subjects s
     ORDER BY (s.locked_until > $1) DESC, s.last_failure DESC, s.realm, s.scope, s.key";

/// A listed row from its text columns (both backends).
pub(super) fn subject_row(
    realm: &str,
    scope: &str,
    key: String,
    nums: [i64; 5],
) -> Option<SubjectRow> {
    Some(SubjectRow {
        subject: Subject {
            realm: Realm::parse(realm)?,
            scope: Scope::parse(scope)?,
            key,
        },
        locked_until_ms: nums[0],
        level: nums[1],
        lockouts: nums[2],
        last_failure_ms: nums[3],
        failures: nums[4],
    })
}

impl AbuseRows for SqliteStore {
    fn record_failure(
        &mut self,
        s: &Subject,
        now: i64,
        policy: &Policy,
    ) -> Result<Failure, StoreError> {
        let path = self.path.display().to_string();
        let err = |error| StoreError::Sqlite {
            path: path.clone(),
            error,
        };
        // IMMEDIATE: the write lock first, so two processes' failures of one subject are
        // counted one after the other, never both from the same old count.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        tx.execute(
            "INSERT INTO abuse_subjects (realm, scope, key) VALUES (?1, ?2, ?3)
             ON CONFLICT (realm, scope, key) DO NOTHING",
            params![s.realm.as_str(), s.scope.as_str(), s.key],
        )
        .map_err(err)?;
        let (id, locked_until, level, last_lock_at): (i64, i64, i64, Option<i64>) = tx
            .query_row(
                "SELECT id, locked_until, level, last_lock_at FROM abuse_subjects
                 WHERE realm = ?1 AND scope = ?2 AND key = ?3",
                params![s.realm.as_str(), s.scope.as_str(), s.key],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .map_err(err)?;
        if locked_until > now {
            tx.commit().map_err(err)?;
            return Ok(Failure::Locked {
                until_ms: locked_until,
            });
        }
        tx.execute(
            "INSERT INTO abuse_failures (subject_id, at_ms) VALUES (?1, ?2)",
            params![id, now],
        )
        .map_err(err)?;
        let count: i64 = tx
            .query_row(
                "SELECT COUNT(*) FROM abuse_failures WHERE subject_id = ?1 AND at_ms > ?2",
                params![id, now - policy.window_ms],
                |r| r.get(0),
            )
            .map_err(err)?;
        let lock = policy.lock_for(count, level, last_lock_at, now);
        match lock {
            Some((level, until)) => tx.execute(
                "UPDATE abuse_subjects SET last_failure = ?2, locked_until = ?3, level = ?4,
                        last_lock_at = ?2, lockouts = lockouts + 1
                 WHERE id = ?1",
                params![id, now, until, level],
            ),
            None => tx.execute(
                "UPDATE abuse_subjects SET last_failure = ?2 WHERE id = ?1",
                params![id, now],
            ),
        }
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Failure::Counted {
            count,
            locked_until: lock.map(|l| l.1),
            level: lock.map_or(level, |l| l.0),
        })
    }

    fn locked(
        &mut self,
        subjects: &[Subject],
        now: i64,
    ) -> Result<Option<(Subject, i64)>, StoreError> {
        let mut worst: Option<(Subject, i64)> = None;
        for s in subjects {
            let until: Option<i64> = self
                .conn
                .query_row(
                    "SELECT locked_until FROM abuse_subjects
                     WHERE realm = ?1 AND scope = ?2 AND key = ?3 AND locked_until > ?4",
                    params![s.realm.as_str(), s.scope.as_str(), s.key, now],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|e| self.err(e))?;
            if let Some(u) = until
                && worst.as_ref().is_none_or(|w| u > w.1)
            {
                worst = Some((s.clone(), u));
            }
        }
        Ok(worst)
    }

    fn clear_account(&mut self, realm: Realm, key: &str) -> Result<(), StoreError> {
        let path = self.path.display().to_string();
        let err = |error| StoreError::Sqlite {
            path: path.clone(),
            error,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        tx.execute(
            "DELETE FROM abuse_failures WHERE subject_id IN (SELECT id FROM abuse_subjects
                 WHERE realm = ?1 AND scope = 'account' AND key = ?2)",
            params![realm.as_str(), key],
        )
        .map_err(err)?;
        tx.execute(
            "UPDATE abuse_subjects SET level = 0, last_lock_at = NULL
             WHERE realm = ?1 AND scope = 'account' AND key = ?2",
            params![realm.as_str(), key],
        )
        .map_err(err)?;
        tx.commit().map_err(err)
    }

    fn unlock(&mut self, scope: Scope, key: &str) -> Result<usize, StoreError> {
        let path = self.path.display().to_string();
        let err = |error| StoreError::Sqlite {
            path: path.clone(),
            error,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        tx.execute(
            "DELETE FROM abuse_failures WHERE subject_id IN (SELECT id FROM abuse_subjects
                 WHERE scope = ?1 AND key = ?2)",
            params![scope.as_str(), key],
        )
        .map_err(err)?;
        let n = tx
            .execute(
                "UPDATE abuse_subjects SET locked_until = 0, level = 0, last_lock_at = NULL
                 WHERE scope = ?1 AND key = ?2",
                params![scope.as_str(), key],
            )
            .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(n)
    }

    fn subjects(&mut self, now: i64) -> Result<Vec<SubjectRow>, StoreError> {
        let sql = LIST.replace("$1", "?1");
        let mut stmt = self.conn.prepare(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([now], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    [r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?],
                ))
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>());
        drop(stmt);
        let rows = rows.map_err(|e| self.err(e))?;
        Ok(rows
            .into_iter()
            .filter_map(|(realm, scope, key, nums)| subject_row(&realm, &scope, key, nums))
            .collect())
    }

    fn take(
        &mut self,
        bucket: &str,
        now: i64,
        interval: i64,
        burst: u32,
    ) -> Result<Take, StoreError> {
        let interval = interval.max(1);
        let tolerance = interval.saturating_mul(i64::from(burst.max(1)));
        // GCRA in one statement: the bucket's "theoretical arrival time" moves one interval
        // on per request, and a request is allowed while it stays within the burst
        // tolerance of now. Refused requests leave the row alone.
        let got: Option<i64> = self
            .conn
            .query_row(
                "INSERT INTO abuse_buckets (bucket, tat_ms) VALUES (?1, ?2 + ?3)
                 ON CONFLICT (bucket) DO UPDATE
                    SET tat_ms = MAX(abuse_buckets.tat_ms, ?2) + ?3
                    WHERE MAX(abuse_buckets.tat_ms, ?2) + ?3 - ?2 <= ?4
                 RETURNING tat_ms",
                params![bucket, now, interval, tolerance],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        if got.is_some() {
            return Ok(Take::Allowed);
        }
        let tat: i64 = self
            .conn
            .query_row(
                "SELECT tat_ms FROM abuse_buckets WHERE bucket = ?1",
                [bucket],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?
            .unwrap_or(now);
        Ok(Take::Denied {
            retry_after_ms: (tat.max(now) + interval - now - tolerance).max(1),
        })
    }

    fn seen(&mut self, owner: &str, network: &str, now: i64) -> Result<Seen, StoreError> {
        let path = self.path.display().to_string();
        let err = |error| StoreError::Sqlite {
            path: path.clone(),
            error,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let new = tx
            .execute(
                "INSERT INTO abuse_seen (owner, network, first_ms, last_ms) VALUES (?1, ?2, ?3, ?3)
                 ON CONFLICT (owner, network) DO NOTHING",
                params![owner, network, now],
            )
            .map_err(err)?
            == 1;
        let known_elsewhere = if new {
            tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM abuse_seen WHERE owner = ?1 AND network <> ?2)",
                params![owner, network],
                |r| r.get(0),
            )
            .map_err(err)?
        } else {
            tx.execute(
                "UPDATE abuse_seen SET last_ms = MAX(last_ms, ?3) WHERE owner = ?1 AND network = ?2",
                params![owner, network, now],
            )
            .map_err(err)?;
            true
        };
        tx.commit().map_err(err)?;
        Ok(Seen {
            new,
            known_elsewhere,
        })
    }

    fn prune(
        &mut self,
        now: i64,
        failures_before: i64,
        locks_before: i64,
        seen_before: i64,
    ) -> Result<Pruned, StoreError> {
        let path = self.path.display().to_string();
        let err = |error| StoreError::Sqlite {
            path: path.clone(),
            error,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let failures = tx
            .execute(
                "DELETE FROM abuse_failures WHERE at_ms < ?1",
                [failures_before],
            )
            .map_err(err)?;
        let subjects = tx
            .execute(PRUNE_SUBJECTS, params![now, locks_before])
            .map_err(err)?;
        let buckets = tx
            .execute("DELETE FROM abuse_buckets WHERE tat_ms < ?1", [now])
            .map_err(err)?;
        let seen = tx
            .execute("DELETE FROM abuse_seen WHERE last_ms < ?1", [seen_before])
            .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Pruned {
            failures,
            subjects,
            buckets,
            seen,
        })
    }
}

/// Counters with nothing left to remember (SQLite placeholders; PostgreSQL's are `$n`).
const PRUNE_SUBJECTS: &str = "DELETE FROM abuse_subjects
     WHERE locked_until <= ?1
       AND (last_lock_at IS NULL OR last_lock_at < ?2)
       AND NOT EXISTS (SELECT 1 FROM abuse_failures f WHERE f.subject_id = abuse_subjects.id)";

/// [`PRUNE_SUBJECTS`] for PostgreSQL.
pub(super) fn prune_subjects_pg() -> String {
    PRUNE_SUBJECTS.replace("?1", "$1").replace("?2", "$2")
}

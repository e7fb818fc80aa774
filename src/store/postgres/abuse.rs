//! The PostgreSQL side of [`crate::abuse::AbuseRows`]: SQLite's statements (`store::abuse`),
//! with the failures of one subject serialised by locking its row `FOR UPDATE` (READ
//! COMMITTED: the count taken after the lock sees every failure committed before it), so
//! replicas counting the same address at once never both start from the same count.

use super::{PostgresStore, wait};
use crate::abuse::rows::{
    AbuseRows, Failure, Policy, Pruned, Realm, Scope, Seen, Subject, SubjectRow, Take,
};
use crate::store::StoreError;
use crate::store::abuse::{LIST, prune_subjects_pg, subject_row};

impl AbuseRows for PostgresStore {
    fn record_failure(
        &mut self,
        s: &Subject,
        now: i64,
        policy: &Policy,
    ) -> Result<Failure, StoreError> {
        let mut c = self.conn()?;
        let tx = wait(c.transaction()).map_err(|e| self.err(e))?;
        let (realm, scope) = (s.realm.as_str(), s.scope.as_str());
        wait(tx.execute(
            "INSERT INTO abuse_subjects (realm, scope, key) VALUES ($1, $2, $3)
             ON CONFLICT (realm, scope, key) DO NOTHING",
            &[&realm, &scope, &s.key],
        ))
        .map_err(|e| self.err(e))?;
        let row = wait(tx.query_one(
            "SELECT id, locked_until, level, last_lock_at FROM abuse_subjects
             WHERE realm = $1 AND scope = $2 AND key = $3 FOR UPDATE",
            &[&realm, &scope, &s.key],
        ))
        .map_err(|e| self.err(e))?;
        let (id, locked_until, level, last_lock_at): (i64, i64, i64, Option<i64>) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        if locked_until > now {
            wait(tx.commit()).map_err(|e| self.err(e))?;
            return Ok(Failure::Locked {
                until_ms: locked_until,
            });
        }
        wait(tx.execute(
            "INSERT INTO abuse_failures (subject_id, at_ms) VALUES ($1, $2)",
            &[&id, &now],
        ))
        .map_err(|e| self.err(e))?;
        let count: i64 = wait(tx.query_one(
            "SELECT COUNT(*) FROM abuse_failures WHERE subject_id = $1 AND at_ms > $2",
            &[&id, &(now - policy.window_ms)],
        ))
        .map_err(|e| self.err(e))?
        .get(0);
        let lock = policy.lock_for(count, level, last_lock_at, now);
        match lock {
            Some((level, until)) => wait(tx.execute(
                "UPDATE abuse_subjects SET last_failure = $2, locked_until = $3, level = $4,
                        last_lock_at = $2, lockouts = lockouts + 1
                 WHERE id = $1",
                &[&id, &now, &until, &level],
            )),
            None => wait(tx.execute(
                "UPDATE abuse_subjects SET last_failure = $2 WHERE id = $1",
                &[&id, &now],
            )),
        }
        .map_err(|e| self.err(e))?;
        wait(tx.commit()).map_err(|e| self.err(e))?;
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
            let row = self.query_opt(
                "SELECT locked_until FROM abuse_subjects
                 WHERE realm = $1 AND scope = $2 AND key = $3 AND locked_until > $4",
                &[&s.realm.as_str(), &s.scope.as_str(), &s.key, &now],
            )?;
            if let Some(u) = row.map(|r| r.get::<_, i64>(0))
                && worst.as_ref().is_none_or(|w| u > w.1)
            {
                worst = Some((s.clone(), u));
            }
        }
        Ok(worst)
    }

    fn clear_account(&mut self, realm: Realm, key: &str) -> Result<(), StoreError> {
        let mut c = self.conn()?;
        let tx = wait(c.transaction()).map_err(|e| self.err(e))?;
        wait(tx.execute(
            "DELETE FROM abuse_failures WHERE subject_id IN (SELECT id FROM abuse_subjects
                 WHERE realm = $1 AND scope = 'account' AND key = $2)",
            &[&realm.as_str(), &key],
        ))
        .map_err(|e| self.err(e))?;
        wait(tx.execute(
            "UPDATE abuse_subjects SET level = 0, last_lock_at = NULL
             WHERE realm = $1 AND scope = 'account' AND key = $2",
            &[&realm.as_str(), &key],
        ))
        .map_err(|e| self.err(e))?;
        wait(tx.commit()).map_err(|e| self.err(e))
    }

    fn unlock(&mut self, scope: Scope, key: &str) -> Result<usize, StoreError> {
        let mut c = self.conn()?;
        let tx = wait(c.transaction()).map_err(|e| self.err(e))?;
        wait(tx.execute(
            "DELETE FROM abuse_failures WHERE subject_id IN (SELECT id FROM abuse_subjects
                 WHERE scope = $1 AND key = $2)",
            &[&scope.as_str(), &key],
        ))
        .map_err(|e| self.err(e))?;
        let n = wait(tx.execute(
            "UPDATE abuse_subjects SET locked_until = 0, level = 0, last_lock_at = NULL
             WHERE scope = $1 AND key = $2",
            &[&scope.as_str(), &key],
        ))
        .map_err(|e| self.err(e))?;
        wait(tx.commit()).map_err(|e| self.err(e))?;
        Ok(n as usize)
    }

    fn subjects(&mut self, now: i64) -> Result<Vec<SubjectRow>, StoreError> {
        let rows = self.query(LIST, &[&now])?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                subject_row(
                    r.get::<_, &str>(0),
                    r.get::<_, &str>(1),
                    r.get(2),
                    [r.get(3), r.get(4), r.get(5), r.get(6), r.get(7)],
                )
            })
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
        // One statement: ON CONFLICT DO UPDATE locks the row, so concurrent takes of one
        // bucket apply one after the other.
        let got = self.query_opt(
            "INSERT INTO abuse_buckets (bucket, tat_ms) VALUES ($1, $2::BIGINT + $3::BIGINT)
             ON CONFLICT (bucket) DO UPDATE
                SET tat_ms = GREATEST(abuse_buckets.tat_ms, $2::BIGINT) + $3::BIGINT
                WHERE GREATEST(abuse_buckets.tat_ms, $2::BIGINT) + $3::BIGINT - $2::BIGINT
                      <= $4::BIGINT
             RETURNING tat_ms",
            &[&bucket, &now, &interval, &tolerance],
        )?;
        if got.is_some() {
            return Ok(Take::Allowed);
        }
        let tat = self
            .query_opt(
                "SELECT tat_ms FROM abuse_buckets WHERE bucket = $1",
                &[&bucket],
            )?
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(now);
        Ok(Take::Denied {
            retry_after_ms: (tat.max(now) + interval - now - tolerance).max(1),
        })
    }

    fn seen(&mut self, owner: &str, network: &str, now: i64) -> Result<Seen, StoreError> {
        let mut c = self.conn()?;
        let tx = wait(c.transaction()).map_err(|e| self.err(e))?;
        // The primary key decides which of two racing replicas saw the network first.
        let new = wait(tx.execute(
            "INSERT INTO abuse_seen (owner, network, first_ms, last_ms) VALUES ($1, $2, $3, $3)
             ON CONFLICT (owner, network) DO NOTHING",
            &[&owner, &network, &now],
        ))
        .map_err(|e| self.err(e))?
            == 1;
        let known_elsewhere = if new {
            wait(tx.query_one(
                "SELECT EXISTS (SELECT 1 FROM abuse_seen WHERE owner = $1 AND network <> $2)",
                &[&owner, &network],
            ))
            .map_err(|e| self.err(e))?
            .get(0)
        } else {
            wait(tx.execute(
                "UPDATE abuse_seen SET last_ms = GREATEST(last_ms, $3::BIGINT)
                 WHERE owner = $1 AND network = $2",
                &[&owner, &network, &now],
            ))
            .map_err(|e| self.err(e))?;
            true
        };
        wait(tx.commit()).map_err(|e| self.err(e))?;
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
        let mut c = self.conn()?;
        let tx = wait(c.transaction()).map_err(|e| self.err(e))?;
        let failures = wait(tx.execute(
            "DELETE FROM abuse_failures WHERE at_ms < $1",
            &[&failures_before],
        ))
        .map_err(|e| self.err(e))?;
        let subjects = wait(tx.execute(&prune_subjects_pg(), &[&now, &locks_before]))
            .map_err(|e| self.err(e))?;
        let buckets = wait(tx.execute("DELETE FROM abuse_buckets WHERE tat_ms < $1", &[&now]))
            .map_err(|e| self.err(e))?;
        let seen = wait(tx.execute("DELETE FROM abuse_seen WHERE last_ms < $1", &[&seen_before]))
            .map_err(|e| self.err(e))?;
        wait(tx.commit()).map_err(|e| self.err(e))?;
        Ok(Pruned {
            failures: failures as usize,
            subjects: subjects as usize,
            buckets: buckets as usize,
            seen: seen as usize,
        })
    }
}

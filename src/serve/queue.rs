//! The store as the server's inbox and queue: `Inbox` and `Jobs` over the store's delivery
//! and job tables ([`QueueRows`]). SQLite: one connection behind a mutex per server process;
//! several processes (replicas on one host, or workers) share the file safely because every
//! write is an IMMEDIATE transaction. PostgreSQL: a pool shared without a mutex, so workers
//! do not wait on each other, and replicas on several hosts share the queue.

use std::sync::Mutex;
use std::time::Duration;

use crate::github::webhook::Intent;
use crate::store::{JobEnd, PostgresStore, QueueRows, SqliteStore, Store, StoreError};

use super::worker::{Job, Jobs};
use super::{Inbox, IncomingDelivery, Recorded};

/// The store, shared by the handlers and the workers of one process.
pub struct StoreQueue(Backend);

enum Backend {
    Sqlite(Mutex<SqliteStore>),
    /// Clones share one pool; each call takes a connection of its own.
    Postgres(PostgresStore),
}

impl StoreQueue {
    pub fn new(store: Store) -> Self {
        StoreQueue(match store {
            Store::Sqlite(s) => Backend::Sqlite(Mutex::new(s)),
            Store::Postgres(p) => Backend::Postgres(p),
        })
    }

    /// Runs `f` on the store (blocking: call it from a blocking thread).
    pub fn with<T>(
        &self,
        f: impl FnOnce(&mut dyn QueueRows) -> Result<T, StoreError>,
    ) -> Result<T, String> {
        match &self.0 {
            Backend::Sqlite(m) => {
                let mut s = m.lock().unwrap_or_else(|e| e.into_inner());
                f(&mut *s).map_err(|e| e.to_string())
            }
            Backend::Postgres(p) => f(&mut p.clone()).map_err(|e| e.to_string()),
        }
    }

    /// Runs `f` on the abuse counters of the same store (`crate::abuse`): SQLite under the
    /// queue's mutex, PostgreSQL on its pool.
    pub fn with_abuse(
        &self,
        f: &mut dyn FnMut(&mut dyn crate::abuse::AbuseRows) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        match &self.0 {
            Backend::Sqlite(m) => f(&mut *m.lock().unwrap_or_else(|e| e.into_inner())),
            Backend::Postgres(p) => f(&mut p.clone()),
        }
    }

    /// Runs `f` on the store's audit rows (blocking: call it from a blocking thread).
    pub fn with_audit<T>(
        &self,
        f: impl FnOnce(&mut dyn crate::audit::AuditRows) -> Result<T, crate::audit::AuditError>,
    ) -> Result<T, crate::audit::AuditError> {
        match &self.0 {
            Backend::Sqlite(m) => f(&mut *m.lock().unwrap_or_else(|e| e.into_inner())),
            Backend::Postgres(p) => f(&mut p.clone()),
        }
    }

    /// Whether this process runs the periodic tasks (polling, drift schedules, key
    /// rotation). SQLite: always (its tasks are idempotent through their delivery ids, and
    /// rotation has its own lock). PostgreSQL: only the replica holding the leader lock.
    pub fn lead(&self) -> Result<bool, String> {
        match &self.0 {
            Backend::Sqlite(_) => Ok(true),
            Backend::Postgres(p) => p.lead().map_err(|e| e.to_string()),
        }
    }

    /// Gives leadership up (on shutdown), so another replica takes the periodic tasks at once.
    pub fn resign(&self) {
        if let Backend::Postgres(p) = &self.0 {
            p.resign();
        }
    }
}

impl Inbox for StoreQueue {
    fn record(&self, d: &IncomingDelivery) -> Result<Recorded, String> {
        let jobs: Vec<(String, String, String)> = d
            .intents
            .iter()
            .map(|i| {
                let (repo, key) = i.serial_key();
                serde_json::to_string(i)
                    .map(|json| (repo, key, json))
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<_, _>>()?;
        let ignored = d.ignored.join("; ");
        for i in &d.intents {
            if let (Some(inst), (repo, _)) = (installation_of(i), i.serial_key())
                && !repo.is_empty()
            {
                self.with(|s| s.remember_repository(&repo, inst))?;
            }
        }
        match self.with(|s| s.record_delivery(&d.id, &d.event, &ignored, &jobs))? {
            Some(n) => Ok(Recorded::New { jobs: n }),
            None => Ok(Recorded::Duplicate),
        }
    }

    fn depth(&self) -> Result<u64, String> {
        self.with(|s| s.queue_depth())
    }

    fn record_failed(&self, id: &str, event: &str, error: &str) -> Result<(), String> {
        self.with(|s| {
            s.record_delivery(id, event, &format!("failed: {error}"), &[])
                .map(|_| ())
        })
    }
}

fn installation_of(i: &Intent) -> Option<u64> {
    match i {
        Intent::Push { installation, .. }
        | Intent::Drift { installation, .. }
        | Intent::Preview { installation, .. }
        | Intent::Teardown { installation, .. } => Some(*installation),
        _ => None,
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Jobs for StoreQueue {
    fn claim(&self, owner: &str, lease: Duration) -> Result<Option<Job>, String> {
        let Some(c) = self.with(|s| s.claim_job(owner, ms(lease)))? else {
            return Ok(None);
        };
        match serde_json::from_str::<Intent>(&c.intent) {
            Ok(intent) => Ok(Some(Job {
                id: c.id,
                intent,
                attempts: c.attempts,
            })),
            Err(e) => {
                // Written by another version of Telbase: fail it visibly, never loop on it.
                let msg = format!("the queued job cannot be read by this version: {e}");
                self.with(|s| s.end_job(c.id, owner, JobEnd::Failed(&msg)))?;
                Ok(None)
            }
        }
    }

    fn renew(&self, id: i64, owner: &str, lease: Duration) -> Result<bool, String> {
        self.with(|s| s.renew_job(id, owner, ms(lease)))
    }

    fn finish(&self, id: i64, owner: &str, summary: &str) -> Result<(), String> {
        self.with(|s| s.end_job(id, owner, JobEnd::Done(summary)))
    }

    fn retry(&self, id: i64, owner: &str, after: Duration, error: &str) -> Result<(), String> {
        self.with(|s| {
            s.end_job(
                id,
                owner,
                JobEnd::Retry {
                    error,
                    after_ms: ms(after),
                },
            )
        })
    }

    fn fail(&self, id: i64, owner: &str, error: &str) -> Result<(), String> {
        self.with(|s| s.end_job(id, owner, JobEnd::Failed(error)))
    }

    fn reconciled(&self, p: &super::worker::Production) -> Result<(), String> {
        self.with(|s| {
            s.record_reconciled(&p.repo, p.installation, &p.branch, &p.sha, &p.drift_cron)
        })
    }
}

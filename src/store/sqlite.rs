//! The SQLite backend of the store, and every SQL statement Telbase runs against it.
//!
//! The database is one file, created with mode 0600 (in a 0700 directory when Telbase creates
//! the directory); SQLite gives its `-wal` and `-shm` files the same mode. It runs in WAL mode
//! (readers never block the writer), with `synchronous=FULL` (a value reported stored survives
//! a power cut), foreign keys on, and a busy timeout so concurrent Telbase processes wait for
//! each other instead of failing. The schema is versioned: [`MIGRATIONS`] are applied in order,
//! each in its own transaction together with its row in `schema_migrations`, and a database
//! from a newer Telbase is refused rather than written to.

use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension as _, TransactionBehavior, params};

use super::{
    RowRef, SealedValue, SecretName, SecretRows, StoreError, StoredSecret, WrappedFingerprintKey,
    WrappedRow,
};

/// How long a statement waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The schema, one migration per entry: (version, name, SQL). Append only; never edit a
/// released migration (databases in the field have already run it).
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "stored secrets",
    "
    -- One row per secret name ever set. Kept after `env unset` so versions are never
    -- reused: the ciphertext's additional data includes the version.
    CREATE TABLE secret_names (
        id           INTEGER PRIMARY KEY,
        project      TEXT NOT NULL,
        environment  TEXT NOT NULL,
        name         TEXT NOT NULL,
        last_version INTEGER NOT NULL,
        UNIQUE (project, environment, name)
    );
    -- The current value of a name: only the newest version is kept, so a replaced secret
    -- leaves no ciphertext behind.
    CREATE TABLE secret_values (
        name_id     INTEGER PRIMARY KEY REFERENCES secret_names(id) ON DELETE CASCADE,
        version     INTEGER NOT NULL,
        key_id      TEXT NOT NULL,
        wrapped_key BLOB NOT NULL,
        ciphertext  BLOB NOT NULL,
        fingerprint TEXT NOT NULL,
        updated_at  TEXT NOT NULL
    );
    CREATE INDEX secret_values_key_id ON secret_values(key_id);
    -- The HMAC key of value fingerprints: created once, wrapped like a data key.
    CREATE TABLE fingerprint_keys (
        id          INTEGER PRIMARY KEY CHECK (id = 1),
        key_id      TEXT NOT NULL,
        wrapped_key BLOB NOT NULL,
        created_at  TEXT NOT NULL
    );
    ",
    ),
    (
        2,
        "github app deliveries and reconcile queue",
        "
    -- Every webhook delivery recorded, by GitHub's delivery id: a redelivery finds its row
    -- and is acknowledged without queueing anything again.
    CREATE TABLE deliveries (
        id          TEXT PRIMARY KEY,
        event       TEXT NOT NULL,
        received_at TEXT NOT NULL,
        jobs        INTEGER NOT NULL,
        ignored     TEXT NOT NULL
    );
    -- The reconcile queue. `serial_repo`/`serial_key` name what may not run twice at once;
    -- a claim takes the newest queued job of a key and marks older queued ones superseded.
    -- `lease_until` (unix ms) hands a job whose worker died to another one.
    CREATE TABLE jobs (
        id          INTEGER PRIMARY KEY,
        delivery_id TEXT NOT NULL REFERENCES deliveries(id),
        serial_repo TEXT NOT NULL,
        serial_key  TEXT NOT NULL,
        intent      TEXT NOT NULL,
        state       TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'superseded')),
        attempts    INTEGER NOT NULL DEFAULT 0,
        run_after   INTEGER NOT NULL,
        lease_owner TEXT,
        lease_until INTEGER,
        summary     TEXT,
        error       TEXT,
        created_at  TEXT NOT NULL,
        updated_at  TEXT NOT NULL
    );
    CREATE INDEX jobs_runnable ON jobs(state, run_after);
    CREATE INDEX jobs_serial ON jobs(serial_repo, serial_key, state);
    ",
    ),
    (
        3,
        "repositories and their reconciled production commit",
        "
    -- What the App has seen of each repository, for the polling fallback: GitHub does not
    -- redeliver failed webhooks, so the server compares the production branch's head with
    -- the last commit it reconciled there.
    CREATE TABLE repositories (
        repo              TEXT PRIMARY KEY,
        installation      INTEGER NOT NULL,
        production_branch TEXT,
        reconciled_sha    TEXT,
        updated_at        TEXT NOT NULL
    );
    ",
    ),
    (
        4,
        "drift schedule of each repository",
        "
    -- The file's `reconcile.drift` cron at the reconciled commit, and when its schedule was
    -- last looked at (unix ms): the next check is the cron's next time after that.
    ALTER TABLE repositories ADD COLUMN drift_cron TEXT;
    ALTER TABLE repositories ADD COLUMN drift_checked_at INTEGER;
    ",
    ),
    (5, "run records", super::runs::MIGRATION),
    (6, "abuse counters", super::abuse::MIGRATION),
    (7, "audit log", super::audit::SQLITE_MIGRATION),
    (8, "control plane identity", crate::control::db::MIGRATION),
    (9, "control plane projects", crate::control::projects::MIGRATION),
    (10, "dashboard sign-in flows", crate::web::oidc::MIGRATION),
    (11, "repositories granted to teams", crate::control::projects::REPOS_MIGRATION),
];

/// The newest schema version this Telbase knows.
pub fn latest_version() -> i64 {
    MIGRATIONS.last().map(|m| m.0).unwrap_or(0)
}

/// An open SQLite store.
pub struct SqliteStore {
    pub(crate) conn: Connection,
    pub(super) path: PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let shown = path.display().to_string();
        let io = |source| StoreError::Io {
            path: shown.clone(),
            error: source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.exists()
        {
            // Only directories Telbase creates get 0700; an existing one is the operator's.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io)?;
        }
        // Create the file ourselves, 0600, before SQLite opens it (SQLite would use the
        // umask, typically 0644), and refuse an existing file others can read.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        let mode = file.metadata().map_err(io)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(StoreError::Permissions { path: shown, mode });
        }
        drop(file);
        let conn = Connection::open(path).map_err(|source| StoreError::Sqlite {
            path: shown.clone(),
            error: source,
        })?;
        let mut store = SqliteStore {
            conn,
            path: path.to_owned(),
        };
        store.configure()?;
        store.migrate()?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    pub(crate) fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.display().to_string(),
            error: source,
        }
    }

    fn configure(&mut self) -> Result<(), StoreError> {
        self.conn
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| self.err(e))?;
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Corrupt {
                path: self.path.display().to_string(),
                what: format!("SQLite refused WAL mode (journal mode is {mode})"),
            });
        }
        self.conn
            .execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
            .map_err(|e| self.err(e))
    }

    /// Applies every migration the database has not run, each in its own transaction with
    /// its `schema_migrations` row, so a crash leaves the schema at a whole version.
    fn migrate(&mut self) -> Result<(), StoreError> {
        self.conn
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                    version    INTEGER PRIMARY KEY,
                    name       TEXT NOT NULL,
                    applied_at TEXT NOT NULL
                )",
            )
            .map_err(|e| self.err(e))?;
        let path = self.path.display().to_string();
        let found = self.schema_version()?;
        if found > latest_version() {
            return Err(StoreError::NewerSchema {
                path,
                found,
                known: latest_version(),
            });
        }
        for &(version, name, sql) in MIGRATIONS {
            let fail = |source| StoreError::Migration {
                path: path.clone(),
                version,
                name,
                error: source,
            };
            // IMMEDIATE takes the write lock first, so two processes opening a fresh
            // database do not both run a migration: the second waits, then sees it done.
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(fail)?;
            let done: bool = tx
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = ?1)",
                    [version],
                    |r| r.get(0),
                )
                .map_err(fail)?;
            if done {
                continue;
            }
            tx.execute_batch(sql).map_err(fail)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
                params![version, name, now()],
            )
            .map_err(fail)?;
            tx.commit().map_err(fail)?;
        }
        Ok(())
    }
}

/// The current time as RFC 3339 UTC, seconds precision.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn row_to_secret(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredSecret> {
    Ok(StoredSecret {
        name: SecretName {
            project: r.get(0)?,
            environment: r.get(1)?,
            name: r.get(2)?,
        },
        value: SealedValue {
            version: r.get(3)?,
            key_id: r.get(4)?,
            wrapped_key: r.get(5)?,
            ciphertext: r.get(6)?,
            fingerprint: r.get(7)?,
            updated_at: r.get(8)?,
        },
    })
}

const SELECT_SECRET: &str = "SELECT n.project, n.environment, n.name, v.version, v.key_id, \
     v.wrapped_key, v.ciphertext, v.fingerprint, v.updated_at \
     FROM secret_values v JOIN secret_names n ON n.id = v.name_id";

impl SecretRows for SqliteStore {
    fn reserve_version(&mut self, name: &SecretName) -> Result<i64, StoreError> {
        self.conn
            .query_row(
                "INSERT INTO secret_names (project, environment, name, last_version)
                 VALUES (?1, ?2, ?3, 1)
                 ON CONFLICT (project, environment, name)
                 DO UPDATE SET last_version = last_version + 1
                 RETURNING last_version",
                params![name.project, name.environment, name.name],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    fn put_value(&mut self, name: &SecretName, value: &SealedValue) -> Result<bool, StoreError> {
        let n = self
            .conn
            .execute(
                "INSERT INTO secret_values
                     (name_id, version, key_id, wrapped_key, ciphertext, fingerprint, updated_at)
                 SELECT id, ?4, ?5, ?6, ?7, ?8, ?9 FROM secret_names
                 WHERE project = ?1 AND environment = ?2 AND name = ?3 AND last_version >= ?4
                 ON CONFLICT (name_id) DO UPDATE SET
                     version = excluded.version, key_id = excluded.key_id,
                     wrapped_key = excluded.wrapped_key, ciphertext = excluded.ciphertext,
                     fingerprint = excluded.fingerprint, updated_at = excluded.updated_at
                 WHERE excluded.version > secret_values.version",
                params![
                    name.project,
                    name.environment,
                    name.name,
                    value.version,
                    value.key_id,
                    value.wrapped_key,
                    value.ciphertext,
                    value.fingerprint,
                    value.updated_at
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(n == 1)
    }

    fn get_value(&mut self, name: &SecretName) -> Result<Option<StoredSecret>, StoreError> {
        self.conn
            .query_row(
                &format!(
                    "{SELECT_SECRET} WHERE n.project = ?1 AND n.environment = ?2 AND n.name = ?3"
                ),
                params![name.project, name.environment, name.name],
                row_to_secret,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    fn list_values(
        &mut self,
        project: &str,
        environment: Option<&str>,
    ) -> Result<Vec<StoredSecret>, StoreError> {
        let sql = format!(
            "{SELECT_SECRET} WHERE n.project = ?1 AND (?2 IS NULL OR n.environment = ?2)
             ORDER BY n.environment, n.name"
        );
        let mut stmt = self.conn.prepare(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![project, environment], row_to_secret)
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>());
        drop(stmt);
        rows.map_err(|e| self.err(e))
    }

    fn delete_value(&mut self, name: &SecretName) -> Result<bool, StoreError> {
        let n = self
            .conn
            .execute(
                "DELETE FROM secret_values WHERE name_id = (SELECT id FROM secret_names
                 WHERE project = ?1 AND environment = ?2 AND name = ?3)",
                params![name.project, name.environment, name.name],
            )
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    fn fingerprint_key(&mut self) -> Result<Option<WrappedFingerprintKey>, StoreError> {
        self.conn
            .query_row(
                "SELECT key_id, wrapped_key FROM fingerprint_keys WHERE id = 1",
                [],
                |r| {
                    Ok(WrappedFingerprintKey {
                        key_id: r.get(0)?,
                        wrapped_key: r.get(1)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    fn create_fingerprint_key(
        &mut self,
        key: &WrappedFingerprintKey,
    ) -> Result<WrappedFingerprintKey, StoreError> {
        self.conn
            .execute(
                "INSERT INTO fingerprint_keys (id, key_id, wrapped_key, created_at)
                 VALUES (1, ?1, ?2, ?3) ON CONFLICT (id) DO NOTHING",
                params![key.key_id, key.wrapped_key, now()],
            )
            .map_err(|e| self.err(e))?;
        self.fingerprint_key()?.ok_or_else(|| StoreError::Corrupt {
            path: self.path.display().to_string(),
            what: "the fingerprint key vanished right after it was stored".into(),
        })
    }

    fn key_usage(&mut self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT key_id, COUNT(*) FROM (
                     SELECT key_id FROM secret_values
                     UNION ALL SELECT key_id FROM fingerprint_keys
                 ) GROUP BY key_id ORDER BY key_id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>());
        drop(stmt);
        rows.map_err(|e| self.err(e))
    }

    fn rows_not_under(
        &mut self,
        key_id: &str,
        limit: usize,
    ) -> Result<Vec<WrappedRow>, StoreError> {
        let mut out = Vec::new();
        if let Some(fk) = self.fingerprint_key()?
            && fk.key_id != key_id
        {
            out.push(WrappedRow {
                row: RowRef::FingerprintKey,
                key_id: fk.key_id,
                wrapped_key: fk.wrapped_key,
            });
        }
        let mut stmt = self
            .conn
            // `<` or `>` rather than `<>`: SQLite answers each half from the key_id index,
            // so a batch costs the rows it returns, not a scan of every row already moved.
            .prepare(
                "SELECT n.project, n.environment, n.name, v.version, v.key_id, v.wrapped_key
                 FROM secret_values v JOIN secret_names n ON n.id = v.name_id
                 WHERE v.key_id < ?1 OR v.key_id > ?1 LIMIT ?2",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![key_id, limit as i64], |r| {
                Ok(WrappedRow {
                    row: RowRef::Value {
                        name: SecretName {
                            project: r.get(0)?,
                            environment: r.get(1)?,
                            name: r.get(2)?,
                        },
                        version: r.get(3)?,
                    },
                    key_id: r.get(4)?,
                    wrapped_key: r.get(5)?,
                })
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>());
        drop(stmt);
        out.extend(rows.map_err(|e| self.err(e))?);
        out.truncate(limit.max(1));
        Ok(out)
    }

    fn rewrap(&mut self, rows: &[(WrappedRow, String, Vec<u8>)]) -> Result<usize, StoreError> {
        let path = self.path.display().to_string();
        let fail = |source| StoreError::Sqlite {
            path: path.clone(),
            error: source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(fail)?;
        let mut changed = 0;
        for (old, new_key_id, new_wrapped) in rows {
            // Compare-and-swap on the wrapped bytes: if anything rewrote the row since it
            // was read, this update does nothing and the row is seen again next round.
            changed += match &old.row {
                RowRef::FingerprintKey => tx.execute(
                    "UPDATE fingerprint_keys SET key_id = ?1, wrapped_key = ?2
                     WHERE id = 1 AND key_id = ?3 AND wrapped_key = ?4",
                    params![new_key_id, new_wrapped, old.key_id, old.wrapped_key],
                ),
                RowRef::Value { name, version } => tx.execute(
                    "UPDATE secret_values SET key_id = ?1, wrapped_key = ?2
                     WHERE version = ?3 AND key_id = ?4 AND wrapped_key = ?5
                       AND name_id = (SELECT id FROM secret_names
                                      WHERE project = ?6 AND environment = ?7 AND name = ?8)",
                    params![
                        new_key_id,
                        new_wrapped,
                        version,
                        old.key_id,
                        old.wrapped_key,
                        name.project,
                        name.environment,
                        name.name
                    ],
                ),
            }
            .map_err(fail)?;
        }
        tx.commit().map_err(fail)?;
        Ok(changed)
    }
}

/// A job taken from the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedJob {
    pub id: i64,
    /// The serialized `github::webhook::Intent`.
    pub intent: String,
    pub attempts: u32,
}

/// One job's row, for run pages and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    pub id: i64,
    pub delivery_id: String,
    pub state: String,
    pub attempts: u32,
    pub summary: Option<String>,
    pub error: Option<String>,
}

/// Attempts before a job that keeps failing is given up (about 40 minutes of backoff).
pub const MAX_ATTEMPTS: u32 = 8;

fn unix_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The GitHub App's deliveries and reconcile queue. Every write is one IMMEDIATE
/// transaction, so a webhook answered 202 has its jobs on disk, and two workers (or
/// replicas sharing the file) never claim the same job.
impl SqliteStore {
    /// Record a delivery and queue its jobs (`(serial_repo, serial_key, intent JSON)`);
    /// `Ok(None)` when the delivery id was recorded before.
    pub fn record_delivery(
        &mut self,
        id: &str,
        event: &str,
        ignored: &str,
        jobs: &[(String, String, String)],
    ) -> Result<Option<usize>, StoreError> {
        let path = self.path.display().to_string();
        let fail = |error| StoreError::Sqlite {
            path: path.clone(),
            error,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(fail)?;
        let at = now();
        let inserted = tx
            .execute(
                // A delivery recorded as failed (unreadable) may come again and be read, after
                // an upgrade that reads it: that is not a duplicate.
                "INSERT INTO deliveries (id, event, received_at, jobs, ignored) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (id) DO UPDATE SET event = excluded.event,
                        received_at = excluded.received_at, jobs = excluded.jobs,
                        ignored = excluded.ignored
                 WHERE deliveries.jobs = 0 AND deliveries.ignored LIKE 'failed:%'",
                params![id, event, at, jobs.len() as i64, ignored],
            )
            .map_err(fail)?;
        if inserted == 0 {
            return Ok(None);
        }
        let ms = unix_ms();
        for (repo, key, intent) in jobs {
            tx.execute(
                "INSERT INTO jobs (delivery_id, serial_repo, serial_key, intent, state, run_after, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?6, ?6)",
                params![id, repo, key, intent, ms, at],
            )
            .map_err(fail)?;
        }
        tx.commit().map_err(fail)?;
        Ok(Some(jobs.len()))
    }

    /// Jobs queued or running.
    pub fn queue_depth(&self) -> Result<u64, StoreError> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }

    /// Take the next runnable job for `owner`: due, and no job of the same serial key
    /// running under a live lease. A running job whose lease expired (its worker died) is
    /// runnable again. Of a key's queued jobs only the newest runs; older ones are marked
    /// superseded in the same transaction.
    pub fn claim_job(
        &mut self,
        owner: &str,
        lease_ms: i64,
    ) -> Result<Option<ClaimedJob>, StoreError> {
        let path = self.path.display().to_string();
        let fail = |error| StoreError::Sqlite {
            path: path.clone(),
            error,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(fail)?;
        let ms = unix_ms();
        let found = tx
            .query_row(
                "SELECT j.id, j.serial_repo, j.serial_key, j.intent, j.attempts FROM jobs j
                 WHERE ((j.state = 'queued' AND j.run_after <= ?1)
                        OR (j.state = 'running' AND j.lease_until <= ?1))
                   AND NOT EXISTS (
                       SELECT 1 FROM jobs r
                       WHERE r.serial_repo = j.serial_repo AND r.serial_key = j.serial_key
                         AND r.id <> j.id AND r.state = 'running' AND r.lease_until > ?1)
                 ORDER BY j.id LIMIT 1",
                params![ms],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, i64>(4)?,
                    ))
                },
            )
            .optional()
            .map_err(fail)?;
        let Some((first, repo, key, _, _)) = found else {
            return Ok(None);
        };
        // The newest queued job of the key carries the latest commit: run that one.
        let (id, intent, attempts): (i64, String, i64) = tx
            .query_row(
                "SELECT id, intent, attempts FROM jobs
                 WHERE serial_repo = ?1 AND serial_key = ?2
                   AND (id = ?3 OR (state = 'queued' AND id > ?3))
                 ORDER BY id DESC LIMIT 1",
                params![repo, key, first],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(fail)?;
        let at = now();
        // Older queued jobs, and an older one whose worker died mid-run, would only apply
        // an older commit after this one: superseded.
        tx.execute(
            "UPDATE jobs SET state = 'superseded', updated_at = ?4, lease_owner = NULL,
                    summary = 'superseded by job ' || ?3
             WHERE serial_repo = ?1 AND serial_key = ?2 AND id < ?3
               AND (state = 'queued' OR (state = 'running' AND lease_until <= ?5))",
            params![repo, key, id, at, ms],
        )
        .map_err(fail)?;
        tx.execute(
            "UPDATE jobs SET state = 'running', lease_owner = ?2, lease_until = ?3, updated_at = ?4
             WHERE id = ?1",
            params![id, owner, ms + lease_ms, at],
        )
        .map_err(fail)?;
        tx.commit().map_err(fail)?;
        Ok(Some(ClaimedJob {
            id,
            intent,
            attempts: attempts.max(0) as u32,
        }))
    }

    /// Extend a running job's lease if `owner` still holds it.
    pub fn renew_job(&mut self, id: i64, owner: &str, lease_ms: i64) -> Result<bool, StoreError> {
        self.conn
            .execute(
                "UPDATE jobs SET lease_until = ?3 WHERE id = ?1 AND lease_owner = ?2 AND state = 'running'",
                params![id, owner, unix_ms() + lease_ms],
            )
            .map(|n| n == 1)
            .map_err(|e| self.err(e))
    }

    /// Record a job's end: `done` with a summary, `failed` with an error, or back to
    /// `queued` after `retry_ms` (given up as `failed` after [`MAX_ATTEMPTS`]). Only the
    /// lease holder can end a job, so a worker whose lease was taken over cannot overwrite
    /// the newer run's result.
    pub fn end_job(&mut self, id: i64, owner: &str, outcome: JobEnd<'_>) -> Result<(), StoreError> {
        let at = now();
        let (sql, text, delay): (&str, &str, i64) = match outcome {
            JobEnd::Done(summary) => (
                "UPDATE jobs SET state = 'done', summary = ?3, error = NULL, lease_owner = NULL,
                        attempts = attempts + 1, updated_at = ?4
                 WHERE id = ?1 AND lease_owner = ?2 AND state = 'running'",
                summary,
                0,
            ),
            JobEnd::Failed(error) => (
                "UPDATE jobs SET state = 'failed', error = ?3, lease_owner = NULL,
                        attempts = attempts + 1, updated_at = ?4
                 WHERE id = ?1 AND lease_owner = ?2 AND state = 'running'",
                error,
                0,
            ),
            JobEnd::Retry { error, after_ms } => (
                "UPDATE jobs SET
                        state = CASE WHEN attempts + 1 >= ?6 THEN 'failed' ELSE 'queued' END,
                        error = ?3, lease_owner = NULL, lease_until = NULL,
                        attempts = attempts + 1, run_after = ?5, updated_at = ?4
                 WHERE id = ?1 AND lease_owner = ?2 AND state = 'running'",
                error,
                after_ms,
            ),
        };
        let n = if matches!(outcome, JobEnd::Retry { .. }) {
            self.conn.execute(
                sql,
                params![id, owner, text, at, unix_ms() + delay, MAX_ATTEMPTS as i64],
            )
        } else {
            self.conn.execute(sql, params![id, owner, text, at])
        }
        .map_err(|e| self.err(e))?;
        if n == 0 {
            tracing::warn!(
                job = id,
                "a job's result was not recorded: its lease had passed to another worker"
            );
        }
        Ok(())
    }

    /// Every job, oldest first.
    pub fn jobs(&self) -> Result<Vec<JobRow>, StoreError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT id, delivery_id, state, attempts, summary, error FROM jobs ORDER BY id",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| {
                Ok(JobRow {
                    id: r.get(0)?,
                    delivery_id: r.get(1)?,
                    state: r.get(2)?,
                    attempts: r.get::<_, i64>(3)?.max(0) as u32,
                    summary: r.get(4)?,
                    error: r.get(5)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Note that `installation` can see `repo` (kept current from every delivery).
    pub fn remember_repository(&mut self, repo: &str, installation: u64) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO repositories (repo, installation, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (repo) DO UPDATE SET installation = ?2, updated_at = ?3",
                params![repo, installation as i64, now()],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Production of `repo` now runs `sha` from `branch`, whose file asks for drift checks
    /// on `drift_cron`; the drift schedule starts from now.
    pub fn record_reconciled(
        &mut self,
        repo: &str,
        installation: u64,
        branch: &str,
        sha: &str,
        drift_cron: &str,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO repositories (repo, installation, production_branch, reconciled_sha,
                        drift_cron, drift_checked_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (repo) DO UPDATE SET installation = ?2, production_branch = ?3,
                        reconciled_sha = ?4, drift_cron = ?5, drift_checked_at = ?6, updated_at = ?7",
                params![repo, installation as i64, branch, sha, drift_cron, unix_ms(), now()],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Repositories whose production branch is known.
    pub fn production_repositories(&self) -> Result<Vec<ProductionRepo>, StoreError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT repo, installation, production_branch, reconciled_sha, drift_cron,
                        drift_checked_at
                 FROM repositories WHERE production_branch IS NOT NULL ORDER BY repo",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| {
                Ok(ProductionRepo {
                    repo: r.get(0)?,
                    installation: r.get::<_, i64>(1)?.max(0) as u64,
                    branch: r.get(2)?,
                    reconciled: r.get(3)?,
                    drift_cron: r.get(4)?,
                    drift_checked_at: r.get(5)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Whether a delivery id was recorded (the polling fallback asks before redelivering).
    pub fn has_delivery(&self, id: &str) -> Result<bool, StoreError> {
        self.conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM deliveries WHERE id = ?1)",
                [id],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }
}

/// A repository whose production branch is known, and the commit last reconciled there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductionRepo {
    pub repo: String,
    pub installation: u64,
    pub branch: String,
    pub reconciled: Option<String>,
    pub drift_cron: Option<String>,
    /// Unix ms.
    pub drift_checked_at: Option<i64>,
}

impl SqliteStore {
    /// The drift schedule of `repo` was looked at `at_ms`: its next check comes after.
    pub fn drift_checked(&mut self, repo: &str, at_ms: i64) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE repositories SET drift_checked_at = ?2 WHERE repo = ?1",
                params![repo, at_ms],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }
}

/// The queue's methods above, behind the backend-neutral trait.
impl super::QueueRows for SqliteStore {
    fn record_delivery(
        &mut self,
        id: &str,
        event: &str,
        ignored: &str,
        jobs: &[(String, String, String)],
    ) -> Result<Option<usize>, StoreError> {
        SqliteStore::record_delivery(self, id, event, ignored, jobs)
    }
    fn queue_depth(&mut self) -> Result<u64, StoreError> {
        SqliteStore::queue_depth(self)
    }
    fn claim_job(&mut self, owner: &str, lease_ms: i64) -> Result<Option<ClaimedJob>, StoreError> {
        SqliteStore::claim_job(self, owner, lease_ms)
    }
    fn renew_job(&mut self, id: i64, owner: &str, lease_ms: i64) -> Result<bool, StoreError> {
        SqliteStore::renew_job(self, id, owner, lease_ms)
    }
    fn end_job(&mut self, id: i64, owner: &str, outcome: JobEnd<'_>) -> Result<(), StoreError> {
        SqliteStore::end_job(self, id, owner, outcome)
    }
    fn jobs(&mut self) -> Result<Vec<JobRow>, StoreError> {
        SqliteStore::jobs(self)
    }
    fn remember_repository(&mut self, repo: &str, installation: u64) -> Result<(), StoreError> {
        SqliteStore::remember_repository(self, repo, installation)
    }
    fn record_reconciled(
        &mut self,
        repo: &str,
        installation: u64,
        branch: &str,
        sha: &str,
        drift_cron: &str,
    ) -> Result<(), StoreError> {
        SqliteStore::record_reconciled(self, repo, installation, branch, sha, drift_cron)
    }
    fn production_repositories(&mut self) -> Result<Vec<ProductionRepo>, StoreError> {
        SqliteStore::production_repositories(self)
    }
    fn has_delivery(&mut self, id: &str) -> Result<bool, StoreError> {
        SqliteStore::has_delivery(self, id)
    }
    fn drift_checked(&mut self, repo: &str, at_ms: i64) -> Result<(), StoreError> {
        SqliteStore::drift_checked(self, repo, at_ms)
    }
}

/// How a job ended.
#[derive(Debug, Clone, Copy)]
pub enum JobEnd<'a> {
    Done(&'a str),
    Failed(&'a str),
    Retry { error: &'a str, after_ms: i64 },
}

/// An exclusive lock held through an SQLite transaction on a small side file: the operating
/// system releases it when the process exits in any way (kill -9 included), so a killed
/// holder never leaves a stale lock behind. Used to keep two `keys rotate` apart.
pub struct FileLock {
    _conn: Connection,
}

impl FileLock {
    /// Takes the lock at `path` (created 0600 if missing) without waiting; `None` when
    /// another process holds it.
    pub fn try_acquire(path: &Path) -> Result<Option<FileLock>, StoreError> {
        let shown = path.display().to_string();
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|source| StoreError::Io {
                path: shown.clone(),
                error: source,
            })?;
        let sqlite = |source| StoreError::Sqlite {
            path: shown.clone(),
            error: source,
        };
        let conn = Connection::open(path).map_err(sqlite)?;
        conn.busy_timeout(Duration::ZERO).map_err(sqlite)?;
        match conn.execute_batch("BEGIN EXCLUSIVE") {
            Ok(()) => Ok(Some(FileLock { _conn: conn })),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    || e.code == rusqlite::ErrorCode::DatabaseLocked =>
            {
                Ok(None)
            }
            Err(e) => Err(sqlite(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_from_one() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.0, i as i64 + 1, "migration {} is out of order", m.1);
        }
    }
}

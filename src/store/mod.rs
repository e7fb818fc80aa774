//! The store: Telbase's own durable state, starting with stored secrets (the envelope-encrypted
//! env values of `telbase env set` and the wrapped fingerprint key), and later the GitHub
//! App's queue, deliveries, sessions and audit log (issues 6 and 8).
//!
//! This module owns where the store lives (`TELBASE_DATABASE_URL`, default a file in the
//! user's data directory), the backend-neutral row types, the [`SecretRows`] trait the
//! secrets code is written against and the [`QueueRows`] trait `telbase serve`'s queue is
//! written against. Every SQL statement lives in a backend: [`sqlite`] (the embedded default)
//! or [`postgres`] (several replicas); [`Store`] is whichever one [`open`] found. The store never
//! sees a plaintext or a master key: it holds ciphertexts, wrapped keys, key ids and keyed
//! fingerprints only. The API is synchronous; async callers use `spawn_blocking`.

use std::path::{Path, PathBuf};

pub mod abuse;
pub mod audit;
pub mod postgres;
pub mod runs;
pub mod sqlite;
pub mod tx;

pub use postgres::{PgUrl, PostgresStore};
pub use sqlite::SqliteStore;
pub use sqlite::{ClaimedJob, JobEnd, JobRow, MAX_ATTEMPTS, ProductionRepo};

/// Where the store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// An SQLite database file.
    Sqlite(PathBuf),
    /// A PostgreSQL database (`postgres://…`), for several `telbase serve` replicas.
    Postgres(PgUrl),
}

/// Why the store could not be opened or used. Messages name the database file and never
/// contain a value (the store holds no plaintext to leak, but row contents stay out too).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A PostgreSQL URL that cannot be used; the text never repeats the URL (it may hold a
    /// password).
    #[error("TELBASE_DATABASE_URL: not a usable PostgreSQL URL: {0}")]
    PostgresUrl(String),
    #[error(
        "{database}: refusing to connect without TLS to a host that is not this machine; remove `sslmode=disable` (Telbase then requires TLS 1.2 or newer, verified against the public roots plus TELBASE_DATABASE_CA_FILE), or reach the database over loopback or a unix socket"
    )]
    PostgresNeedsTls { database: String },
    #[error("{database}: {}", with_causes(error))]
    Postgres {
        database: String,
        error: tokio_postgres::Error,
    },
    #[error(
        "{database}: migration {version} ({name}) failed: {}",
        with_causes(error)
    )]
    PostgresMigration {
        database: String,
        version: i64,
        name: &'static str,
        error: tokio_postgres::Error,
    },
    #[error("{database}: {what}")]
    PostgresPool { database: String, what: String },
    #[error("TELBASE_DATABASE_URL `{0}` is neither `sqlite:PATH`, a file path, nor `postgres://…`")]
    BadUrl(String),
    #[error(
        "no place for the store: set TELBASE_DATABASE_URL, XDG_DATA_HOME or HOME (the default is $XDG_DATA_HOME/telbase/telbase.db)"
    )]
    NoDefault,
    #[error(
        "{path}: the database is at schema version {found}, newer than this Telbase knows ({known}); it was written by a newer Telbase. Upgrade Telbase (a downgrade would lose data)"
    )]
    NewerSchema {
        path: String,
        found: i64,
        known: i64,
    },
    #[error(
        "{path}: the database file is readable or writable by other users (mode {mode:o}); run `chmod 600 {path}`"
    )]
    Permissions { path: String, mode: u32 },
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("{path}: {error}")]
    Sqlite {
        path: String,
        error: rusqlite::Error,
    },
    #[error("{path}: migration {version} ({name}) failed: {error}")]
    Migration {
        path: String,
        version: i64,
        name: &'static str,
        error: rusqlite::Error,
    },
    #[error("{path}: the store is damaged: {what}")]
    Corrupt { path: String, what: String },
}

/// An error and its causes, `: `-separated: tokio-postgres's own text leaves out why, e.g.
/// "error performing TLS handshake" without the certificate problem. (Causes are I/O, TLS
/// and server errors; none of them carries the URL.)
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

impl Location {
    /// The location from `TELBASE_DATABASE_URL`, else the default file under the user's data
    /// directory. `var` reads an environment variable (a parameter so tests need not change
    /// the process environment).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Location, StoreError> {
        let nonempty = |name: &str| var(name).filter(|v| !v.is_empty());
        if let Some(url) = nonempty("TELBASE_DATABASE_URL") {
            let mut location = Location::parse(&url)?;
            if let Location::Postgres(pg) = &mut location {
                if let Some(n) = nonempty("TELBASE_DATABASE_POOL_SIZE") {
                    pg.pool_size = n.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        StoreError::PostgresUrl(
                            "TELBASE_DATABASE_POOL_SIZE must be a positive number".into(),
                        )
                    })?;
                }
                pg.ca_file = nonempty("TELBASE_DATABASE_CA_FILE").map(PathBuf::from);
            }
            return Ok(location);
        }
        if let Some(data) = nonempty("XDG_DATA_HOME") {
            return Ok(Location::Sqlite(
                Path::new(&data).join("telbase").join("telbase.db"),
            ));
        }
        if let Some(home) = nonempty("HOME") {
            return Ok(Location::Sqlite(
                Path::new(&home).join(".local/share/telbase/telbase.db"),
            ));
        }
        Err(StoreError::NoDefault)
    }

    /// The location from the process environment.
    pub fn from_env() -> Result<Location, StoreError> {
        Location::from_vars(|k| std::env::var(k).ok())
    }

    /// `sqlite:PATH`, `sqlite://PATH`, a plain path, or `postgres://…`/`postgresql://…`.
    pub fn parse(url: &str) -> Result<Location, StoreError> {
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            return PgUrl::parse(url).map(Location::Postgres);
        }
        let path = if let Some(rest) = url.strip_prefix("sqlite://") {
            rest
        } else if let Some(rest) = url.strip_prefix("sqlite:") {
            rest
        } else if url.contains("://") {
            return Err(StoreError::BadUrl(url.to_owned()));
        } else {
            url
        };
        if path.is_empty() || path == ":memory:" {
            // An in-memory store would silently forget every secret set through it.
            return Err(StoreError::BadUrl(url.to_owned()));
        }
        Ok(Location::Sqlite(PathBuf::from(path)))
    }
}

/// Opens the store at `location`, creating and migrating it as needed.
pub fn open(location: &Location) -> Result<Store, StoreError> {
    match location {
        Location::Sqlite(path) => SqliteStore::open(path).map(Store::Sqlite),
        Location::Postgres(url) => PostgresStore::open(url).map(Store::Postgres),
    }
}

/// An open store, of either backend: what `telbase env`, `telbase keys` and `telbase serve`
/// work with.
#[derive(Debug)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

/// Forwards a trait method to the backend.
macro_rules! both {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            Store::Sqlite($s) => $call,
            Store::Postgres($s) => $call,
        }
    };
}

impl SecretRows for Store {
    fn reserve_version(&mut self, name: &SecretName) -> Result<i64, StoreError> {
        both!(self, s => s.reserve_version(name))
    }
    fn put_value(&mut self, name: &SecretName, value: &SealedValue) -> Result<bool, StoreError> {
        both!(self, s => s.put_value(name, value))
    }
    fn get_value(&mut self, name: &SecretName) -> Result<Option<StoredSecret>, StoreError> {
        both!(self, s => s.get_value(name))
    }
    fn list_values(
        &mut self,
        project: &str,
        environment: Option<&str>,
    ) -> Result<Vec<StoredSecret>, StoreError> {
        both!(self, s => s.list_values(project, environment))
    }
    fn delete_value(&mut self, name: &SecretName) -> Result<bool, StoreError> {
        both!(self, s => s.delete_value(name))
    }
    fn fingerprint_key(&mut self) -> Result<Option<WrappedFingerprintKey>, StoreError> {
        both!(self, s => s.fingerprint_key())
    }
    fn create_fingerprint_key(
        &mut self,
        key: &WrappedFingerprintKey,
    ) -> Result<WrappedFingerprintKey, StoreError> {
        both!(self, s => s.create_fingerprint_key(key))
    }
    fn key_usage(&mut self) -> Result<Vec<(String, u64)>, StoreError> {
        both!(self, s => s.key_usage())
    }
    fn rows_not_under(
        &mut self,
        key_id: &str,
        limit: usize,
    ) -> Result<Vec<WrappedRow>, StoreError> {
        both!(self, s => s.rows_not_under(key_id, limit))
    }
    fn rewrap(&mut self, rows: &[(WrappedRow, String, Vec<u8>)]) -> Result<usize, StoreError> {
        both!(self, s => s.rewrap(rows))
    }
    fn rotation_lock(&mut self) -> Result<Option<Box<dyn Send>>, StoreError> {
        both!(self, s => s.rotation_lock())
    }
}

impl RunRows for Store {
    fn save_run(&mut self, run: &runs::RunRecord) -> Result<(), StoreError> {
        both!(self, s => s.save_run(run))
    }
    fn run(&mut self, id: &str) -> Result<Option<runs::RunRecord>, StoreError> {
        both!(self, s => s.run(id))
    }
    fn runs_of(
        &mut self,
        repo: &str,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<runs::RunRecord>, StoreError> {
        both!(self, s => s.runs_of(repo, limit, offset))
    }
    fn has_preview_run(&mut self, repo: &str, pr: u64, sha: &str) -> Result<bool, StoreError> {
        both!(self, s => s.has_preview_run(repo, pr, sha))
    }
    fn held_previews(&mut self) -> Result<Vec<runs::RunRecord>, StoreError> {
        both!(self, s => s.held_previews())
    }
    fn job_event(&mut self, job_id: i64) -> Result<Option<String>, StoreError> {
        both!(self, s => s.job_event(job_id))
    }
    fn prune_runs(&mut self, before_ms: i64) -> Result<usize, StoreError> {
        both!(self, s => s.prune_runs(before_ms))
    }
}

impl QueueRows for Store {
    fn record_delivery(
        &mut self,
        id: &str,
        event: &str,
        ignored: &str,
        jobs: &[(String, String, String)],
    ) -> Result<Option<usize>, StoreError> {
        both!(self, s => QueueRows::record_delivery(s, id, event, ignored, jobs))
    }
    fn queue_depth(&mut self) -> Result<u64, StoreError> {
        both!(self, s => QueueRows::queue_depth(s))
    }
    fn claim_job(&mut self, owner: &str, lease_ms: i64) -> Result<Option<ClaimedJob>, StoreError> {
        both!(self, s => QueueRows::claim_job(s, owner, lease_ms))
    }
    fn renew_job(&mut self, id: i64, owner: &str, lease_ms: i64) -> Result<bool, StoreError> {
        both!(self, s => QueueRows::renew_job(s, id, owner, lease_ms))
    }
    fn end_job(&mut self, id: i64, owner: &str, outcome: JobEnd<'_>) -> Result<(), StoreError> {
        both!(self, s => QueueRows::end_job(s, id, owner, outcome))
    }
    fn jobs(&mut self) -> Result<Vec<JobRow>, StoreError> {
        both!(self, s => QueueRows::jobs(s))
    }
    fn remember_repository(&mut self, repo: &str, installation: u64) -> Result<(), StoreError> {
        both!(self, s => QueueRows::remember_repository(s, repo, installation))
    }
    fn record_reconciled(
        &mut self,
        repo: &str,
        installation: u64,
        branch: &str,
        sha: &str,
        drift_cron: &str,
    ) -> Result<(), StoreError> {
        both!(self, s => QueueRows::record_reconciled(s, repo, installation, branch, sha, drift_cron))
    }
    fn production_repositories(&mut self) -> Result<Vec<ProductionRepo>, StoreError> {
        both!(self, s => QueueRows::production_repositories(s))
    }
    fn has_delivery(&mut self, id: &str) -> Result<bool, StoreError> {
        both!(self, s => QueueRows::has_delivery(s, id))
    }
    fn drift_checked(&mut self, repo: &str, at_ms: i64) -> Result<(), StoreError> {
        both!(self, s => QueueRows::drift_checked(s, repo, at_ms))
    }
}

/// The GitHub App's deliveries, reconcile queue and repositories, as `telbase serve` needs
/// them. Implemented by [`SqliteStore`] and [`PostgresStore`] with the same rules (see
/// `SqliteStore::claim_job` for them); PostgreSQL keeps them across processes. The run
/// records come with it: whoever holds the queue records runs.
pub trait QueueRows: RunRows {
    /// Record a delivery and queue its jobs (`(serial_repo, serial_key, intent JSON)`);
    /// `Ok(None)` when the delivery id was recorded before.
    fn record_delivery(
        &mut self,
        id: &str,
        event: &str,
        ignored: &str,
        jobs: &[(String, String, String)],
    ) -> Result<Option<usize>, StoreError>;
    /// Jobs queued or running.
    fn queue_depth(&mut self) -> Result<u64, StoreError>;
    /// Take the next runnable job for `owner` (newest commit of its key, at most one running
    /// per key, expired leases taken over).
    fn claim_job(&mut self, owner: &str, lease_ms: i64) -> Result<Option<ClaimedJob>, StoreError>;
    /// Extend a running job's lease if `owner` still holds it.
    fn renew_job(&mut self, id: i64, owner: &str, lease_ms: i64) -> Result<bool, StoreError>;
    /// Record a job's end (only the lease holder can).
    fn end_job(&mut self, id: i64, owner: &str, outcome: JobEnd<'_>) -> Result<(), StoreError>;
    /// Every job, oldest first.
    fn jobs(&mut self) -> Result<Vec<JobRow>, StoreError>;
    /// Note that `installation` can see `repo`.
    fn remember_repository(&mut self, repo: &str, installation: u64) -> Result<(), StoreError>;
    /// Production of `repo` now runs `sha` from `branch`.
    fn record_reconciled(
        &mut self,
        repo: &str,
        installation: u64,
        branch: &str,
        sha: &str,
        drift_cron: &str,
    ) -> Result<(), StoreError>;
    /// Repositories whose production branch is known.
    fn production_repositories(&mut self) -> Result<Vec<ProductionRepo>, StoreError>;
    /// Whether a delivery id was recorded.
    fn has_delivery(&mut self, id: &str) -> Result<bool, StoreError>;
    /// The drift schedule of `repo` was looked at `at_ms`.
    fn drift_checked(&mut self, repo: &str, at_ms: i64) -> Result<(), StoreError>;
}

/// The identity of one stored secret: the additional data of its ciphertext is built from
/// these, so a record is bound to exactly one of them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretName {
    pub project: String,
    pub environment: String,
    pub name: String,
}

/// The envelope of one stored value, as it sits in a row: nothing in it is secret without a
/// master key. `Debug` shows lengths only, so a logged record is no help to an attacker.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedValue {
    pub version: i64,
    /// Id of the master key that wrapped `wrapped_key`.
    pub key_id: String,
    /// The data key, encrypted under the master key (`secrets::envelope` format).
    pub wrapped_key: Vec<u8>,
    /// The value, encrypted under the data key.
    pub ciphertext: Vec<u8>,
    /// Keyed fingerprint of the plaintext (`hmac-sha256:…`).
    pub fingerprint: String,
    /// RFC 3339, UTC.
    pub updated_at: String,
}

impl std::fmt::Debug for SealedValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedValue")
            .field("version", &self.version)
            .field("key_id", &self.key_id)
            .field(
                "wrapped_key",
                &format_args!("[{} bytes]", self.wrapped_key.len()),
            )
            .field(
                "ciphertext",
                &format_args!("[{} bytes]", self.ciphertext.len()),
            )
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

/// A stored secret's name and its current envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSecret {
    pub name: SecretName,
    pub value: SealedValue,
}

/// A wrapped key somewhere in the store, as key rotation sees it: which row, under which
/// master key. Rotation re-wraps these one by one and never touches a value's ciphertext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedRow {
    pub row: RowRef,
    pub key_id: String,
    pub wrapped_key: Vec<u8>,
}

/// Which row holds a wrapped key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowRef {
    /// A stored value's data key (bound to its name and version).
    Value { name: SecretName, version: i64 },
    /// The store's fingerprint key (there is one).
    FingerprintKey,
}

/// The store's fingerprint key, wrapped under a master key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedFingerprintKey {
    pub key_id: String,
    pub wrapped_key: Vec<u8>,
}

/// The stored-secret rows, as the secrets code needs them. Implemented by [`SqliteStore`];
/// a PostgreSQL backend implements the same trait.
pub trait SecretRows {
    /// Reserves the next version number of `name` (durably: a version is never handed out
    /// twice, even after `unset`, so an old row can never pass for a new one).
    fn reserve_version(&mut self, name: &SecretName) -> Result<i64, StoreError>;
    /// Stores `value` as the current value of `name`, unless a newer version is already
    /// stored (two concurrent `env set`s: the later reservation wins). True if stored.
    fn put_value(&mut self, name: &SecretName, value: &SealedValue) -> Result<bool, StoreError>;
    /// The current value of `name`.
    fn get_value(&mut self, name: &SecretName) -> Result<Option<StoredSecret>, StoreError>;
    /// Every current value of `project` (one environment, or all), sorted by environment
    /// and name.
    fn list_values(
        &mut self,
        project: &str,
        environment: Option<&str>,
    ) -> Result<Vec<StoredSecret>, StoreError>;
    /// Deletes the value of `name`; true if there was one.
    fn delete_value(&mut self, name: &SecretName) -> Result<bool, StoreError>;
    /// The wrapped fingerprint key, if one was created.
    fn fingerprint_key(&mut self) -> Result<Option<WrappedFingerprintKey>, StoreError>;
    /// Stores `key` as the fingerprint key unless one exists; returns the one that is stored
    /// afterwards (so two racing creators agree on one key).
    fn create_fingerprint_key(
        &mut self,
        key: &WrappedFingerprintKey,
    ) -> Result<WrappedFingerprintKey, StoreError>;
    /// How many wrapped keys (values and the fingerprint key) each master key id wraps.
    fn key_usage(&mut self) -> Result<Vec<(String, u64)>, StoreError>;
    /// Up to `limit` wrapped keys under any master key other than `key_id`.
    fn rows_not_under(&mut self, key_id: &str, limit: usize)
    -> Result<Vec<WrappedRow>, StoreError>;
    /// Replaces the wrapped key of each row, in one transaction, but only where the row is
    /// still wrapped exactly as read (a concurrent `env set` or rotation wins, and its row
    /// is picked up again). Returns how many rows changed.
    fn rewrap(&mut self, rows: &[(WrappedRow, String, Vec<u8>)]) -> Result<usize, StoreError>;
    /// Keeps every other key rotation of this store out while the returned guard lives;
    /// `None` when another one holds it. The default holds nothing: an SQLite store is one
    /// machine's file, and `rotate_keyring`'s lock beside the keyring file covers it. A
    /// database that several machines reach (PostgreSQL) needs a lock of its own.
    fn rotation_lock(&mut self) -> Result<Option<Box<dyn Send>>, StoreError> {
        Ok(Some(Box::new(())))
    }
}

/// The run records behind the server's run pages, the polling of open pull requests and the
/// preview sweep. Implemented by [`SqliteStore`] in [`runs`] and by [`PostgresStore`] (the
/// same statements, in `postgres`).
pub trait RunRows {
    /// Insert the run, or update its end, outcome, summary, plan and report.
    fn save_run(&mut self, run: &runs::RunRecord) -> Result<(), StoreError>;
    /// One run by its id.
    fn run(&mut self, id: &str) -> Result<Option<runs::RunRecord>, StoreError>;
    /// A repository's runs, newest first.
    fn runs_of(
        &mut self,
        repo: &str,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<runs::RunRecord>, StoreError>;
    /// Whether the preview of pull request `pr` was applied at `sha` (whatever the outcome).
    fn has_preview_run(&mut self, repo: &str, pr: u64, sha: &str) -> Result<bool, StoreError>;
    /// The newest run of every preview that was not torn down since.
    fn held_previews(&mut self) -> Result<Vec<runs::RunRecord>, StoreError>;
    /// The event of the delivery that queued job `job_id` (push, pull_request, poll, …).
    fn job_event(&mut self, job_id: i64) -> Result<Option<String>, StoreError>;
    /// Delete runs started before `before_ms` (unix ms); how many went.
    fn prune_runs(&mut self, before_ms: i64) -> Result<usize, StoreError>;
}

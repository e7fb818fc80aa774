//! The store: Telbase's own durable state, starting with stored secrets (the envelope-encrypted
//! env values of `telbase env set` and the wrapped fingerprint key), and later the GitHub
//! App's queue, deliveries, sessions and audit log (issues 6 and 8).
//!
//! This module owns where the store lives (`TELBASE_DATABASE_URL`, default a file in the
//! user's data directory), the backend-neutral row types and the [`SecretRows`] trait the
//! secrets code is written against. Every SQL statement lives in [`sqlite`], so a PostgreSQL
//! backend can follow behind the same trait without touching its callers. The store never
//! sees a plaintext or a master key: it holds ciphertexts, wrapped keys, key ids and keyed
//! fingerprints only. The API is synchronous; async callers use `spawn_blocking`.

use std::path::{Path, PathBuf};

pub mod runs;
pub mod sqlite;

pub use sqlite::SqliteStore;

/// Where the store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// An SQLite database file.
    Sqlite(PathBuf),
    /// A PostgreSQL URL (not served yet: it comes with `telbase serve`).
    Postgres,
}

/// Why the store could not be opened or used. Messages name the database file and never
/// contain a value (the store holds no plaintext to leak, but row contents stay out too).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "TELBASE_DATABASE_URL names a PostgreSQL database; PostgreSQL comes with `telbase serve` (issue 6). Use `sqlite:PATH` or a file path for now"
    )]
    PostgresNotYet,
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

impl Location {
    /// The location from `TELBASE_DATABASE_URL`, else the default file under the user's data
    /// directory. `var` reads an environment variable (a parameter so tests need not change
    /// the process environment).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Location, StoreError> {
        let nonempty = |name: &str| var(name).filter(|v| !v.is_empty());
        if let Some(url) = nonempty("TELBASE_DATABASE_URL") {
            return Location::parse(&url);
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
            return Err(StoreError::PostgresNotYet);
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
pub fn open(location: &Location) -> Result<SqliteStore, StoreError> {
    match location {
        Location::Sqlite(path) => SqliteStore::open(path),
        Location::Postgres => Err(StoreError::PostgresNotYet),
    }
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
}

/// The run records behind the server's run pages, the polling of open pull requests and the
/// preview sweep. Implemented by [`SqliteStore`] in [`runs`], where every statement of it is.
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

//! The PostgreSQL backend of the store, for several `telbase serve` replicas sharing one
//! queue, and every SQL statement Telbase runs against PostgreSQL.
//!
//! It owns the connection (URL parsing, the TLS rule, a small pool), the PostgreSQL schema
//! ([`MIGRATIONS`], the same tables and meaning as SQLite's, applied under an advisory lock so
//! replicas starting together do not both migrate), and the queue's cross-process rules: a
//! claim is one transaction that locks its candidate row (`FOR UPDATE SKIP LOCKED`) and the
//! candidate's repository+environment key (a transaction-scoped advisory lock), so two
//! replicas never run one key at once and a newer commit is never overtaken. Times that
//! decide leases come from the database's clock, so replicas with skewed clocks agree.
//!
//! Client: `tokio-postgres` driven from synchronous code. The store API is synchronous (its
//! callers use `spawn_blocking`); the sync `postgres` wrapper would fit that, but it gives
//! every connection its own runtime and panics when a connection is used or dropped on an
//! async thread (a store dropped at server shutdown, or opened inside a reconcile). Here the
//! connections run on one small runtime owned by the store, and a caller waits for a
//! `tokio_postgres::Client` future (which only talks to its connection task over channels)
//! by parking its own thread: safe from any thread. Pool: hand-rolled (a mutex, a condvar,
//! a cap) because r2d2's PostgreSQL manager is for the sync wrapper above, and deadpool or
//! bb8 are async pools that need async callers.
//!
//! PORTING A TABLE FROM SQLITE: append its migration to [`MIGRATIONS`] with the SAME version
//! number as SQLite's (BIGINT for integers, BYTEA for blobs, TEXT for RFC 3339 times, as the
//! row types carry them), and implement its methods on [`PostgresStore`] below the queue.

mod audit;
pub(crate) mod tx;
pub(crate) use audit::append_on as append_audit_on;
pub(crate) use tx::in_transaction;

use std::future::Future;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, NoTls};

mod abuse;

use super::runs::RunRecord;
use super::sqlite::{ClaimedJob, JobEnd, JobRow, MAX_ATTEMPTS, ProductionRepo, now};
use super::{
    QueueRows, RowRef, RunRows, SealedValue, SecretName, SecretRows, StoreError, StoredSecret,
    WrappedFingerprintKey, WrappedRow,
};

/// The PostgreSQL schema: (version, name, SQL), numbered like SQLite's [`super::sqlite::MIGRATIONS`]
/// (a version means the same tables on both). Append only.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "stored secrets",
        "
    CREATE TABLE secret_names (
        id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        project      TEXT NOT NULL,
        environment  TEXT NOT NULL,
        name         TEXT NOT NULL,
        last_version BIGINT NOT NULL,
        UNIQUE (project, environment, name)
    );
    CREATE TABLE secret_values (
        name_id     BIGINT PRIMARY KEY REFERENCES secret_names(id) ON DELETE CASCADE,
        version     BIGINT NOT NULL,
        key_id      TEXT NOT NULL,
        wrapped_key BYTEA NOT NULL,
        ciphertext  BYTEA NOT NULL,
        fingerprint TEXT NOT NULL,
        updated_at  TEXT NOT NULL
    );
    CREATE INDEX secret_values_key_id ON secret_values(key_id);
    CREATE TABLE fingerprint_keys (
        id          BIGINT PRIMARY KEY CHECK (id = 1),
        key_id      TEXT NOT NULL,
        wrapped_key BYTEA NOT NULL,
        created_at  TEXT NOT NULL
    );
    ",
    ),
    (
        2,
        "github app deliveries and reconcile queue",
        "
    CREATE TABLE deliveries (
        id          TEXT PRIMARY KEY,
        event       TEXT NOT NULL,
        received_at TEXT NOT NULL,
        jobs        BIGINT NOT NULL,
        ignored     TEXT NOT NULL
    );
    CREATE TABLE jobs (
        id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        delivery_id TEXT NOT NULL REFERENCES deliveries(id),
        serial_repo TEXT NOT NULL,
        serial_key  TEXT NOT NULL,
        intent      TEXT NOT NULL,
        state       TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'superseded')),
        attempts    BIGINT NOT NULL DEFAULT 0,
        run_after   BIGINT NOT NULL,
        lease_owner TEXT,
        lease_until BIGINT,
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
    CREATE TABLE repositories (
        repo              TEXT PRIMARY KEY,
        installation      BIGINT NOT NULL,
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
    ALTER TABLE repositories ADD COLUMN drift_cron TEXT;
    ALTER TABLE repositories ADD COLUMN drift_checked_at BIGINT;
    ",
    ),
    (
        5,
        "run records",
        "
    CREATE TABLE runs (
        id                  TEXT PRIMARY KEY,
        repo                TEXT NOT NULL,
        environment         TEXT NOT NULL,
        pull_request        BIGINT,
        sha                 TEXT NOT NULL,
        branch              TEXT NOT NULL,
        trigger_kind        TEXT NOT NULL,
        mode                TEXT NOT NULL,
        job_id              BIGINT,
        started_at          BIGINT NOT NULL,
        ended_at            BIGINT,
        outcome             TEXT NOT NULL,
        summary             TEXT NOT NULL,
        plan                TEXT NOT NULL,
        report              TEXT NOT NULL,
        preview_ttl_seconds BIGINT
    );
    CREATE INDEX runs_by_repo ON runs(repo, started_at);
    CREATE INDEX runs_by_preview ON runs(repo, pull_request, started_at);
    CREATE INDEX runs_by_age ON runs(started_at);
    ",
    ),
    (6, "abuse counters", super::abuse::PG_MIGRATION),
    (7, "audit log", super::audit::POSTGRES_MIGRATION),
    (8, "control plane identity", crate::control::db::MIGRATION),
    (9, "control plane projects", crate::control::projects::MIGRATION),
    (10, "dashboard sign-in flows", crate::web::oidc::MIGRATION),
    (11, "repositories granted to teams", crate::control::projects::REPOS_MIGRATION),
];

/// The newest PostgreSQL schema version this Telbase knows.
pub fn latest_version() -> i64 {
    MIGRATIONS.last().map(|m| m.0).unwrap_or(0)
}

/// Connections kept by default (`TELBASE_DATABASE_POOL_SIZE`): two workers, the webhook
/// handlers and the periodic tasks of one replica without waiting on each other.
pub const DEFAULT_POOL_SIZE: usize = 8;

/// How long a caller waits for a free pooled connection before giving up.
const POOL_WAIT: Duration = Duration::from_secs(30);

/// Advisory lock classes (the first key of PostgreSQL's two-key form), so Telbase's locks do
/// not collide with each other or with another application's single-key locks.
const LOCK_MIGRATE: i32 = 0x7e1b_0001;
const LOCK_JOB_KEY: i32 = 0x7e1b_0002;
const LOCK_LEADER: i32 = 0x7e1b_0003;
const LOCK_ROTATE: i32 = 0x7e1b_0004;

/// A PostgreSQL URL, kept secret (it may hold a password), with what may be shown of it.
#[derive(Clone)]
pub struct PgUrl {
    url: SecretString,
    /// `host:port/database`: what errors and logs name.
    shown: String,
    pub pool_size: usize,
    /// Extra trusted roots (PEM), for a server whose certificate a private CA signed.
    pub ca_file: Option<std::path::PathBuf>,
}

impl PartialEq for PgUrl {
    fn eq(&self, other: &Self) -> bool {
        self.url.expose_secret() == other.url.expose_secret()
            && self.pool_size == other.pool_size
            && self.ca_file == other.ca_file
    }
}
impl Eq for PgUrl {}

impl std::fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgUrl({})", self.shown)
    }
}

impl PgUrl {
    /// Parses a `postgres://` or `postgresql://` URL. Errors say what is wrong without
    /// repeating the URL.
    pub fn parse(url: &str) -> Result<PgUrl, StoreError> {
        // tokio-postgres splits the credentials at the first `@`: with a second one (an
        // unencoded `@` in the password) the rest of the password would be taken for the
        // host and shown in every message that names the database.
        let authority = url
            .split_once("://")
            .map_or(url, |(_, rest)| rest)
            .split(['/', '?'])
            .next()
            .unwrap_or("");
        if authority.matches('@').count() > 1 {
            return Err(StoreError::PostgresUrl(
                "more than one `@` before the host: percent-encode `@` in the user or password as %40".into(),
            ));
        }
        let config: Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| StoreError::PostgresUrl(e.to_string()))?;
        if config.get_hosts().is_empty() {
            return Err(StoreError::PostgresUrl(
                "it names no host (postgres://USER:PASSWORD@HOST:PORT/DATABASE)".into(),
            ));
        }
        Ok(PgUrl {
            url: SecretString::from(url.to_owned()),
            shown: shown(&config),
            pool_size: DEFAULT_POOL_SIZE,
            ca_file: None,
        })
    }

    /// `host:port/database`, never the user's password.
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

fn shown(config: &Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "?".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    format!("postgres {host}:{port}/{db}")
}

fn is_local(config: &Config) -> bool {
    let hosts_local = config.get_hosts().iter().all(|h| match h {
        tokio_postgres::config::Host::Tcp(name) => {
            name.eq_ignore_ascii_case("localhost")
                || name
                    .trim_matches(|c| c == '[' || c == ']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        tokio_postgres::config::Host::Unix(_) => true,
    });
    hosts_local && config.get_hostaddrs().iter().all(|a| a.is_loopback())
}

/// Waits for `fut` on the calling thread by parking it. Only for futures that need no
/// runtime of their own: a `tokio_postgres::Client`'s requests travel over channels to the
/// connection task, which runs on the store's runtime; a `JoinHandle` likewise.
fn wait<F: Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

struct Pool {
    idle: Vec<Client>,
    /// Connections open, idle or lent out.
    open: usize,
}

struct Inner {
    /// Runs the connections' I/O. Shut down in the background on drop, which is allowed on
    /// any thread (a plain drop of a runtime on an async thread would panic).
    rt: Option<tokio::runtime::Runtime>,
    config: Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    shown: String,
    pool: Mutex<Pool>,
    freed: Condvar,
    max: usize,
    /// The connection holding the leader lock, when this process leads.
    leader: Mutex<Option<Client>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// An open PostgreSQL store: a pool of connections. Cheap to clone (clones share the pool),
/// and usable from several threads at once through clones.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("database", &self.inner.shown)
            .finish()
    }
}

/// A pooled connection, returned to the pool when dropped (unless it broke).
struct Conn<'a> {
    client: Option<Client>,
    store: &'a Inner,
}

impl std::ops::Deref for Conn<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("present until drop")
    }
}
impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("present until drop")
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        let mut pool = self.store.pool.lock().unwrap_or_else(|e| e.into_inner());
        match self.client.take() {
            Some(c) if !c.is_closed() => pool.idle.push(c),
            _ => pool.open = pool.open.saturating_sub(1),
        }
        drop(pool);
        self.store.freed.notify_one();
    }
}

pub(crate) type Params<'a> = [&'a (dyn ToSql + Sync)];

impl PostgresStore {
    /// Connects to `url` (TLS as [`PgUrl`]'s rule says), and brings the schema up to date.
    pub fn open(url: &PgUrl) -> Result<PostgresStore, StoreError> {
        let mut config: Config = url
            .url
            .expose_secret()
            .parse()
            .map_err(|e: tokio_postgres::Error| StoreError::PostgresUrl(e.to_string()))?;
        let shown = url.shown.clone();
        let explicit_sslmode = url.url.expose_secret().contains("sslmode=");
        let tls = if is_local(&config) {
            // Loopback and unix sockets never leave the machine. Without an explicit
            // sslmode, plain: a local server's certificate is typically self-signed.
            if !explicit_sslmode {
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
            }
            Some(tls_connector(url)?)
        } else {
            if config.get_ssl_mode() == tokio_postgres::config::SslMode::Disable {
                return Err(StoreError::PostgresNeedsTls { database: shown });
            }
            // `prefer` would fall back to plain text if a server (or an attacker in the
            // middle) declines TLS: a remote database is TLS or nothing.
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
            Some(tls_connector(url)?)
        };
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("telbase");
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("telbase-postgres")
            .enable_all()
            .build()
            .map_err(|error| StoreError::Io {
                path: shown.clone(),
                error,
            })?;
        let store = PostgresStore {
            inner: Arc::new(Inner {
                rt: Some(rt),
                config,
                tls,
                shown,
                pool: Mutex::new(Pool {
                    idle: Vec::new(),
                    open: 0,
                }),
                freed: Condvar::new(),
                max: url.pool_size.max(1),
                leader: Mutex::new(None),
            }),
        };
        store.migrate()?;
        Ok(store)
    }

    /// `postgres host:port/database`.
    pub fn shown(&self) -> &str {
        &self.inner.shown
    }

    fn err(&self, error: tokio_postgres::Error) -> StoreError {
        StoreError::Postgres {
            database: self.inner.shown.clone(),
            error,
        }
    }

    /// A new connection, outside the pool.
    fn connect(&self) -> Result<Client, StoreError> {
        let config = self.inner.config.clone();
        let tls = self.inner.tls.clone();
        let rt = self.inner.rt.as_ref().expect("present until drop").handle();
        let task = rt.spawn(async move {
            let log = |e: tokio_postgres::Error| {
                tracing::debug!(error = %e, "a PostgreSQL connection ended with an error");
            };
            // The TLS connector is used only when the sslmode asks for TLS.
            match tls {
                Some(tls) => {
                    let (client, conn) = config.connect(tls).await?;
                    tokio::spawn(async move { conn.await.map_err(log) });
                    Ok(client)
                }
                None => {
                    let (client, conn) = config.connect(NoTls).await?;
                    tokio::spawn(async move { conn.await.map_err(log) });
                    Ok(client)
                }
            }
        });
        match wait(task) {
            Ok(r) => r.map_err(|e| self.err(e)),
            Err(_) => Err(StoreError::PostgresPool {
                database: self.inner.shown.clone(),
                what: "the connection task failed".into(),
            }),
        }
    }

    /// A pooled connection: an idle one, a new one while under the cap, or the next one
    /// returned.
    fn conn(&self) -> Result<Conn<'_>, StoreError> {
        let inner = &*self.inner;
        let deadline = std::time::Instant::now() + POOL_WAIT;
        let mut pool = inner.pool.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            while let Some(c) = pool.idle.pop() {
                if c.is_closed() {
                    pool.open = pool.open.saturating_sub(1);
                    continue;
                }
                return Ok(Conn {
                    client: Some(c),
                    store: inner,
                });
            }
            if pool.open < inner.max {
                pool.open += 1;
                drop(pool);
                return match self.connect() {
                    Ok(c) => Ok(Conn {
                        client: Some(c),
                        store: inner,
                    }),
                    Err(e) => {
                        let mut pool = inner.pool.lock().unwrap_or_else(|e| e.into_inner());
                        pool.open = pool.open.saturating_sub(1);
                        drop(pool);
                        inner.freed.notify_one();
                        Err(e)
                    }
                };
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(StoreError::PostgresPool {
                    database: inner.shown.clone(),
                    what: format!(
                        "all {} connections stayed busy for {}s (raise TELBASE_DATABASE_POOL_SIZE)",
                        inner.max,
                        POOL_WAIT.as_secs()
                    ),
                });
            }
            pool = inner
                .freed
                .wait_timeout(pool, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    pub(crate) fn execute(&self, sql: &str, params: &Params<'_>) -> Result<u64, StoreError> {
        let c = self.conn()?;
        wait(c.execute(sql, params)).map_err(|e| self.err(e))
    }

    pub(crate) fn query(
        &self,
        sql: &str,
        params: &Params<'_>,
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let c = self.conn()?;
        wait(c.query(sql, params)).map_err(|e| self.err(e))
    }

    fn query_opt(
        &self,
        sql: &str,
        params: &Params<'_>,
    ) -> Result<Option<tokio_postgres::Row>, StoreError> {
        let c = self.conn()?;
        wait(c.query_opt(sql, params)).map_err(|e| self.err(e))
    }

    /// The schema version of the database.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        let row = self.query_opt(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )?;
        Ok(row.map(|r| r.get::<_, i64>(0)).unwrap_or(0))
    }

    /// Applies the migrations the database has not run, under an advisory lock (a replica
    /// starting at the same time waits, then finds them done), each in a transaction with
    /// its `schema_migrations` row. A dedicated connection: closing it releases the lock
    /// whatever happens.
    fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.connect()?;
        let database = self.inner.shown.clone();
        wait(client.execute("SELECT pg_advisory_lock($1, 0)", &[&LOCK_MIGRATE]))
            .map_err(|e| self.err(e))?;
        wait(client.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    BIGINT PRIMARY KEY,
                 name       TEXT NOT NULL,
                 applied_at TEXT NOT NULL
             )",
        ))
        .map_err(|e| self.err(e))?;
        let found: i64 = wait(client.query_one(
            "SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_migrations",
            &[],
        ))
        .map_err(|e| self.err(e))?
        .get(0);
        if found > latest_version() {
            return Err(StoreError::NewerSchema {
                path: database,
                found,
                known: latest_version(),
            });
        }
        for &(version, name, sql) in MIGRATIONS {
            let fail = |error| StoreError::PostgresMigration {
                database: database.clone(),
                version,
                name,
                error,
            };
            let done = wait(client.query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[&version],
            ))
            .map_err(fail)?
            .is_some();
            if done {
                continue;
            }
            let tx = wait(client.transaction()).map_err(fail)?;
            wait(tx.batch_execute(sql)).map_err(fail)?;
            wait(tx.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                &[&version, &name, &now()],
            ))
            .map_err(fail)?;
            wait(tx.commit()).map_err(fail)?;
        }
        let _ = wait(client.execute("SELECT pg_advisory_unlock($1, 0)", &[&LOCK_MIGRATE]));
        Ok(())
    }

    /// Whether this process leads the replicas sharing the database: the one that runs the
    /// periodic tasks (polling GitHub, drift schedules, key rotation). Leadership is a
    /// session advisory lock on a connection of its own, kept while the connection lives:
    /// when the leader dies or loses the database, PostgreSQL frees the lock and the next
    /// replica to ask takes over.
    pub fn lead(&self) -> Result<bool, StoreError> {
        let mut held = self.inner.leader.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = held.as_ref() {
            if !c.is_closed() && wait(c.simple_query("SELECT 1")).is_ok() {
                return Ok(true);
            }
            *held = None;
        }
        let client = self.connect()?;
        let got: bool =
            wait(client.query_one("SELECT pg_try_advisory_lock($1, 0)", &[&LOCK_LEADER]))
                .map_err(|e| self.err(e))?
                .get(0);
        if got {
            *held = Some(client);
        }
        Ok(got)
    }

    /// Gives leadership up (on shutdown), so another replica takes it at once.
    pub fn resign(&self) {
        let mut held = self.inner.leader.lock().unwrap_or_else(|e| e.into_inner());
        *held = None;
    }
}

/// rustls with ring, TLS 1.2 and 1.3 only, Mozilla's roots plus `ca_file`'s.
fn tls_connector(url: &PgUrl) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    use rustls::pki_types::{CertificateDer, pem::PemObject as _};
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = &url.ca_file {
        let shown = path.display().to_string();
        let bad = |what: String| StoreError::Corrupt {
            path: shown.clone(),
            what,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(format!("cannot read the CA file: {e}")))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("not a PEM certificate file: {e}")))?;
        if certs.is_empty() {
            return Err(bad("no certificate in the CA file".into()));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| bad(format!("unusable CA certificate: {e}")))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    .map_err(|e| StoreError::PostgresUrl(format!("TLS setup: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

fn row_to_secret(r: &tokio_postgres::Row) -> StoredSecret {
    StoredSecret {
        name: SecretName {
            project: r.get(0),
            environment: r.get(1),
            name: r.get(2),
        },
        value: SealedValue {
            version: r.get(3),
            key_id: r.get(4),
            wrapped_key: r.get(5),
            ciphertext: r.get(6),
            fingerprint: r.get(7),
            updated_at: r.get(8),
        },
    }
}

const SELECT_SECRET: &str = "SELECT n.project, n.environment, n.name, v.version, v.key_id, \
     v.wrapped_key, v.ciphertext, v.fingerprint, v.updated_at \
     FROM secret_values v JOIN secret_names n ON n.id = v.name_id";

impl SecretRows for PostgresStore {
    fn reserve_version(&mut self, name: &SecretName) -> Result<i64, StoreError> {
        let rows = self.query(
            "INSERT INTO secret_names (project, environment, name, last_version)
             VALUES ($1, $2, $3, 1)
             ON CONFLICT (project, environment, name)
             DO UPDATE SET last_version = secret_names.last_version + 1
             RETURNING last_version",
            &[&name.project, &name.environment, &name.name],
        )?;
        Ok(rows.first().map(|r| r.get(0)).unwrap_or(1))
    }

    fn put_value(&mut self, name: &SecretName, value: &SealedValue) -> Result<bool, StoreError> {
        let n = self.execute(
            "INSERT INTO secret_values
                 (name_id, version, key_id, wrapped_key, ciphertext, fingerprint, updated_at)
             SELECT id, $4, $5, $6, $7, $8, $9 FROM secret_names
             WHERE project = $1 AND environment = $2 AND name = $3 AND last_version >= $4
             ON CONFLICT (name_id) DO UPDATE SET
                 version = excluded.version, key_id = excluded.key_id,
                 wrapped_key = excluded.wrapped_key, ciphertext = excluded.ciphertext,
                 fingerprint = excluded.fingerprint, updated_at = excluded.updated_at
             WHERE excluded.version > secret_values.version",
            &[
                &name.project,
                &name.environment,
                &name.name,
                &value.version,
                &value.key_id,
                &value.wrapped_key,
                &value.ciphertext,
                &value.fingerprint,
                &value.updated_at,
            ],
        )?;
        Ok(n == 1)
    }

    fn get_value(&mut self, name: &SecretName) -> Result<Option<StoredSecret>, StoreError> {
        Ok(self
            .query_opt(
                &format!(
                    "{SELECT_SECRET} WHERE n.project = $1 AND n.environment = $2 AND n.name = $3"
                ),
                &[&name.project, &name.environment, &name.name],
            )?
            .as_ref()
            .map(row_to_secret))
    }

    fn list_values(
        &mut self,
        project: &str,
        environment: Option<&str>,
    ) -> Result<Vec<StoredSecret>, StoreError> {
        Ok(self
            .query(
                &format!(
                    "{SELECT_SECRET} WHERE n.project = $1 AND ($2::TEXT IS NULL OR n.environment = $2)
                     ORDER BY n.environment COLLATE \"C\", n.name COLLATE \"C\""
                ),
                &[&project, &environment],
            )?
            .iter()
            .map(row_to_secret)
            .collect())
    }

    fn delete_value(&mut self, name: &SecretName) -> Result<bool, StoreError> {
        let n = self.execute(
            "DELETE FROM secret_values WHERE name_id = (SELECT id FROM secret_names
             WHERE project = $1 AND environment = $2 AND name = $3)",
            &[&name.project, &name.environment, &name.name],
        )?;
        Ok(n > 0)
    }

    fn fingerprint_key(&mut self) -> Result<Option<WrappedFingerprintKey>, StoreError> {
        Ok(self
            .query_opt(
                "SELECT key_id, wrapped_key FROM fingerprint_keys WHERE id = 1",
                &[],
            )?
            .map(|r| WrappedFingerprintKey {
                key_id: r.get(0),
                wrapped_key: r.get(1),
            }))
    }

    fn create_fingerprint_key(
        &mut self,
        key: &WrappedFingerprintKey,
    ) -> Result<WrappedFingerprintKey, StoreError> {
        self.execute(
            "INSERT INTO fingerprint_keys (id, key_id, wrapped_key, created_at)
             VALUES (1, $1, $2, $3) ON CONFLICT (id) DO NOTHING",
            &[&key.key_id, &key.wrapped_key, &now()],
        )?;
        self.fingerprint_key()?.ok_or_else(|| StoreError::Corrupt {
            path: self.inner.shown.clone(),
            what: "the fingerprint key vanished right after it was stored".into(),
        })
    }

    fn key_usage(&mut self) -> Result<Vec<(String, u64)>, StoreError> {
        Ok(self
            .query(
                "SELECT key_id, COUNT(*) FROM (
                     SELECT key_id FROM secret_values
                     UNION ALL SELECT key_id FROM fingerprint_keys
                 ) AS k GROUP BY key_id ORDER BY key_id COLLATE \"C\"",
                &[],
            )?
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1).max(0) as u64))
            .collect())
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
        let rows = self.query(
            "SELECT n.project, n.environment, n.name, v.version, v.key_id, v.wrapped_key
             FROM secret_values v JOIN secret_names n ON n.id = v.name_id
             WHERE v.key_id <> $1 LIMIT $2",
            &[&key_id, &(limit as i64)],
        )?;
        out.extend(rows.iter().map(|r| WrappedRow {
            row: RowRef::Value {
                name: SecretName {
                    project: r.get(0),
                    environment: r.get(1),
                    name: r.get(2),
                },
                version: r.get(3),
            },
            key_id: r.get(4),
            wrapped_key: r.get(5),
        }));
        out.truncate(limit.max(1));
        Ok(out)
    }

    fn rewrap(&mut self, rows: &[(WrappedRow, String, Vec<u8>)]) -> Result<usize, StoreError> {
        let mut c = self.conn()?;
        let tx = wait(c.transaction()).map_err(|e| self.err(e))?;
        let mut changed = 0;
        for (old, new_key_id, new_wrapped) in rows {
            // Compare-and-swap on the wrapped bytes, as in SQLite.
            changed += match &old.row {
                RowRef::FingerprintKey => wait(tx.execute(
                    "UPDATE fingerprint_keys SET key_id = $1, wrapped_key = $2
                     WHERE id = 1 AND key_id = $3 AND wrapped_key = $4",
                    &[new_key_id, new_wrapped, &old.key_id, &old.wrapped_key],
                )),
                RowRef::Value { name, version } => wait(tx.execute(
                    "UPDATE secret_values SET key_id = $1, wrapped_key = $2
                     WHERE version = $3 AND key_id = $4 AND wrapped_key = $5
                       AND name_id = (SELECT id FROM secret_names
                                      WHERE project = $6 AND environment = $7 AND name = $8)",
                    &[
                        new_key_id,
                        new_wrapped,
                        version,
                        &old.key_id,
                        &old.wrapped_key,
                        &name.project,
                        &name.environment,
                        &name.name,
                    ],
                )),
            }
            .map_err(|e| self.err(e))? as usize;
        }
        wait(tx.commit()).map_err(|e| self.err(e))?;
        Ok(changed)
    }

    /// A session advisory lock on a connection of its own, held by the guard: dropping it
    /// (or the process dying) closes the connection, and PostgreSQL frees the lock.
    fn rotation_lock(&mut self) -> Result<Option<Box<dyn Send>>, StoreError> {
        let client = self.connect()?;
        let got: bool =
            wait(client.query_one("SELECT pg_try_advisory_lock($1, 0)", &[&LOCK_ROTATE]))
                .map_err(|e| self.err(e))?
                .get(0);
        Ok(got.then(|| Box::new(client) as Box<dyn Send>))
    }
}

/// The database's clock in unix ms: leases are compared across replicas, whose own clocks
/// may disagree.
const DB_NOW_MS: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";

/// How many candidates one claim looks at before reporting nothing runnable this round
/// (each skipped one has its key claimed by another replica at that moment).
const CLAIM_TRIES: usize = 16;

impl QueueRows for PostgresStore {
    fn record_delivery(
        &mut self,
        id: &str,
        event: &str,
        ignored: &str,
        jobs: &[(String, String, String)],
    ) -> Result<Option<usize>, StoreError> {
        let mut c = self.conn()?;
        let tx = wait(c.transaction()).map_err(|e| self.err(e))?;
        let at = now();
        // Two replicas given the same delivery: the unique key makes the second wait for the
        // first's commit, then find the row and insert nothing.
        let inserted = wait(tx.execute(
            "INSERT INTO deliveries (id, event, received_at, jobs, ignored) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO UPDATE SET event = excluded.event,
                    received_at = excluded.received_at, jobs = excluded.jobs,
                    ignored = excluded.ignored
             WHERE deliveries.jobs = 0 AND deliveries.ignored LIKE 'failed:%'",
            &[&id, &event, &at, &(jobs.len() as i64), &ignored],
        ))
        .map_err(|e| self.err(e))?;
        if inserted == 0 {
            return Ok(None);
        }
        for (repo, key, intent) in jobs {
            wait(tx.execute(
                &format!(
                    "INSERT INTO jobs (delivery_id, serial_repo, serial_key, intent, state, run_after, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, 'queued', {DB_NOW_MS}, $5, $5)"
                ),
                &[&id, repo, key, intent, &at],
            ))
            .map_err(|e| self.err(e))?;
        }
        wait(tx.commit()).map_err(|e| self.err(e))?;
        Ok(Some(jobs.len()))
    }

    fn queue_depth(&mut self) -> Result<u64, StoreError> {
        let r = self.query_opt(
            "SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')",
            &[],
        )?;
        Ok(r.map(|r| r.get::<_, i64>(0).max(0) as u64).unwrap_or(0))
    }

    /// As SQLite's claim, safe across processes: each try is a transaction that locks the
    /// oldest runnable row nobody else holds (`FOR UPDATE SKIP LOCKED`), then its key with
    /// a transaction advisory lock taken without waiting. A key another replica is claiming
    /// at that moment is skipped (the try rolls back, freeing the row) and the next
    /// candidate is looked at. Holding the key lock, the transaction sees every committed
    /// claim of the key, so the live-lease check and the newest-commit pick are exact.
    fn claim_job(&mut self, owner: &str, lease_ms: i64) -> Result<Option<ClaimedJob>, StoreError> {
        let mut busy: Vec<String> = Vec::new();
        let mut c = self.conn()?;
        for _ in 0..CLAIM_TRIES {
            let tx = wait(c.transaction()).map_err(|e| self.err(e))?;
            let found = wait(tx.query_opt(
                &format!(
                    "SELECT j.id, j.serial_repo, j.serial_key FROM jobs j
                     WHERE ((j.state = 'queued' AND j.run_after <= {DB_NOW_MS})
                            OR (j.state = 'running' AND j.lease_until <= {DB_NOW_MS}))
                       AND NOT (j.serial_repo || E'\\n' || j.serial_key = ANY($1))
                       AND NOT EXISTS (
                           SELECT 1 FROM jobs r
                           WHERE r.serial_repo = j.serial_repo AND r.serial_key = j.serial_key
                             AND r.id <> j.id AND r.state = 'running'
                             AND r.lease_until > {DB_NOW_MS})
                     ORDER BY j.id LIMIT 1
                     FOR UPDATE OF j SKIP LOCKED"
                ),
                &[&busy],
            ))
            .map_err(|e| self.err(e))?;
            let Some(found) = found else {
                return Ok(None);
            };
            let (first, repo, key): (i64, String, String) =
                (found.get(0), found.get(1), found.get(2));
            let serial = format!("{repo}\n{key}");
            let locked: bool = wait(tx.query_one(
                "SELECT pg_try_advisory_xact_lock($1, hashtext($2))",
                &[&LOCK_JOB_KEY, &serial],
            ))
            .map_err(|e| self.err(e))?
            .get(0);
            if !locked {
                // Another replica is claiming this key right now; dropping the transaction
                // rolls it back and frees the row.
                drop(tx);
                busy.push(serial);
                continue;
            }
            // With the key locked, every claim of it that committed is visible: check again
            // that none of its jobs runs under a live lease.
            let live = wait(tx.query_opt(
                &format!(
                    "SELECT 1 FROM jobs WHERE serial_repo = $1 AND serial_key = $2 AND id <> $3
                       AND state = 'running' AND lease_until > {DB_NOW_MS}"
                ),
                &[&repo, &key, &first],
            ))
            .map_err(|e| self.err(e))?;
            if live.is_some() {
                drop(tx);
                busy.push(serial);
                continue;
            }
            // The newest queued job of the key carries the latest commit: run that one.
            let newest = wait(tx.query_one(
                "SELECT id, intent, attempts FROM jobs
                 WHERE serial_repo = $1 AND serial_key = $2
                   AND (id = $3 OR (state = 'queued' AND id > $3))
                 ORDER BY id DESC LIMIT 1",
                &[&repo, &key, &first],
            ))
            .map_err(|e| self.err(e))?;
            let (id, intent, attempts): (i64, String, i64) =
                (newest.get(0), newest.get(1), newest.get(2));
            let at = now();
            wait(tx.execute(
                &format!(
                    "UPDATE jobs SET state = 'superseded', updated_at = $4, lease_owner = NULL,
                            summary = 'superseded by job ' || $3::BIGINT
                     WHERE serial_repo = $1 AND serial_key = $2 AND id < $3
                       AND (state = 'queued' OR (state = 'running' AND lease_until <= {DB_NOW_MS}))"
                ),
                &[&repo, &key, &id, &at],
            ))
            .map_err(|e| self.err(e))?;
            wait(tx.execute(
                &format!(
                    "UPDATE jobs SET state = 'running', lease_owner = $2,
                            lease_until = {DB_NOW_MS} + $3, updated_at = $4
                     WHERE id = $1"
                ),
                &[&id, &owner, &lease_ms, &at],
            ))
            .map_err(|e| self.err(e))?;
            wait(tx.commit()).map_err(|e| self.err(e))?;
            return Ok(Some(ClaimedJob {
                id,
                intent,
                attempts: attempts.max(0) as u32,
            }));
        }
        Ok(None)
    }

    fn renew_job(&mut self, id: i64, owner: &str, lease_ms: i64) -> Result<bool, StoreError> {
        Ok(self.execute(
            &format!(
                "UPDATE jobs SET lease_until = {DB_NOW_MS} + $3
                 WHERE id = $1 AND lease_owner = $2 AND state = 'running'"
            ),
            &[&id, &owner, &lease_ms],
        )? == 1)
    }

    fn end_job(&mut self, id: i64, owner: &str, outcome: JobEnd<'_>) -> Result<(), StoreError> {
        let at = now();
        let n = match outcome {
            JobEnd::Done(summary) => self.execute(
                "UPDATE jobs SET state = 'done', summary = $3, error = NULL, lease_owner = NULL,
                        attempts = attempts + 1, updated_at = $4
                 WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
                &[&id, &owner, &summary, &at],
            )?,
            JobEnd::Failed(error) => self.execute(
                "UPDATE jobs SET state = 'failed', error = $3, lease_owner = NULL,
                        attempts = attempts + 1, updated_at = $4
                 WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
                &[&id, &owner, &error, &at],
            )?,
            JobEnd::Retry { error, after_ms } => self.execute(
                &format!(
                    "UPDATE jobs SET
                        state = CASE WHEN attempts + 1 >= $6 THEN 'failed' ELSE 'queued' END,
                        error = $3, lease_owner = NULL, lease_until = NULL,
                        attempts = attempts + 1, run_after = {DB_NOW_MS} + $5, updated_at = $4
                     WHERE id = $1 AND lease_owner = $2 AND state = 'running'"
                ),
                &[&id, &owner, &error, &at, &after_ms, &(MAX_ATTEMPTS as i64)],
            )?,
        };
        if n == 0 {
            tracing::warn!(
                job = id,
                "a job's result was not recorded: its lease had passed to another worker"
            );
        }
        Ok(())
    }

    fn jobs(&mut self) -> Result<Vec<JobRow>, StoreError> {
        Ok(self
            .query(
                "SELECT id, delivery_id, state, attempts, summary, error FROM jobs ORDER BY id",
                &[],
            )?
            .iter()
            .map(|r| JobRow {
                id: r.get(0),
                delivery_id: r.get(1),
                state: r.get(2),
                attempts: r.get::<_, i64>(3).max(0) as u32,
                summary: r.get(4),
                error: r.get(5),
            })
            .collect())
    }

    fn remember_repository(&mut self, repo: &str, installation: u64) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO repositories (repo, installation, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (repo) DO UPDATE SET installation = $2, updated_at = $3",
            &[&repo, &(installation as i64), &now()],
        )
        .map(|_| ())
    }

    fn record_reconciled(
        &mut self,
        repo: &str,
        installation: u64,
        branch: &str,
        sha: &str,
        drift_cron: &str,
    ) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO repositories (repo, installation, production_branch, reconciled_sha,
                    drift_cron, drift_checked_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (repo) DO UPDATE SET installation = $2, production_branch = $3,
                    reconciled_sha = $4, drift_cron = $5, drift_checked_at = $6, updated_at = $7",
            &[
                &repo,
                &(installation as i64),
                &branch,
                &sha,
                &drift_cron,
                &chrono::Utc::now().timestamp_millis(),
                &now(),
            ],
        )
        .map(|_| ())
    }

    fn production_repositories(&mut self) -> Result<Vec<ProductionRepo>, StoreError> {
        Ok(self
            .query(
                "SELECT repo, installation, production_branch, reconciled_sha, drift_cron,
                        drift_checked_at
                 FROM repositories WHERE production_branch IS NOT NULL ORDER BY repo COLLATE \"C\"",
                &[],
            )?
            .iter()
            .map(|r| ProductionRepo {
                repo: r.get(0),
                installation: r.get::<_, i64>(1).max(0) as u64,
                branch: r.get(2),
                reconciled: r.get(3),
                drift_cron: r.get(4),
                drift_checked_at: r.get(5),
            })
            .collect())
    }

    fn has_delivery(&mut self, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .query_opt("SELECT 1 FROM deliveries WHERE id = $1", &[&id])?
            .is_some())
    }

    fn drift_checked(&mut self, repo: &str, at_ms: i64) -> Result<(), StoreError> {
        self.execute(
            "UPDATE repositories SET drift_checked_at = $2 WHERE repo = $1",
            &[&repo, &at_ms],
        )
        .map(|_| ())
    }
}

const RUN_COLUMNS: &str = "id, repo, environment, pull_request, sha, branch, trigger_kind, mode, \
     job_id, started_at, ended_at, outcome, summary, plan, report, preview_ttl_seconds";

fn run_row(r: &tokio_postgres::Row) -> RunRecord {
    RunRecord {
        id: r.get(0),
        repo: r.get(1),
        environment: r.get(2),
        pull_request: r.get::<_, Option<i64>>(3).map(|n| n.max(0) as u64),
        sha: r.get(4),
        branch: r.get(5),
        trigger: r.get(6),
        mode: r.get(7),
        job_id: r.get(8),
        started_at: r.get(9),
        ended_at: r.get(10),
        outcome: r.get(11),
        summary: r.get(12),
        plan: r.get(13),
        report: r.get(14),
        preview_ttl_seconds: r.get::<_, Option<i64>>(15).map(|n| n.max(0) as u64),
    }
}

fn opt_i64(n: Option<u64>) -> Option<i64> {
    n.map(|n| i64::try_from(n).unwrap_or(i64::MAX))
}

/// The run records (migration 5): the same statements as SQLite's in `store::runs`.
impl RunRows for PostgresStore {
    fn save_run(&mut self, r: &RunRecord) -> Result<(), StoreError> {
        let (pr, ttl) = (opt_i64(r.pull_request), opt_i64(r.preview_ttl_seconds));
        self.execute(
            "INSERT INTO runs (id, repo, environment, pull_request, sha, branch, trigger_kind,
                    mode, job_id, started_at, ended_at, outcome, summary, plan, report,
                    preview_ttl_seconds)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
             ON CONFLICT (id) DO UPDATE SET ended_at = excluded.ended_at,
                    outcome = excluded.outcome, summary = excluded.summary,
                    plan = excluded.plan, report = excluded.report,
                    preview_ttl_seconds = excluded.preview_ttl_seconds",
            &[
                &r.id,
                &r.repo,
                &r.environment,
                &pr,
                &r.sha,
                &r.branch,
                &r.trigger,
                &r.mode,
                &r.job_id,
                &r.started_at,
                &r.ended_at,
                &r.outcome,
                &r.summary,
                &r.plan,
                &r.report,
                &ttl,
            ],
        )
        .map(|_| ())
    }

    fn run(&mut self, id: &str) -> Result<Option<RunRecord>, StoreError> {
        Ok(self
            .query_opt(
                &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1"),
                &[&id],
            )?
            .as_ref()
            .map(run_row))
    }

    fn runs_of(
        &mut self,
        repo: &str,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let (limit, offset) = (limit as i64, offset as i64);
        Ok(self
            .query(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE repo = $1
                     ORDER BY started_at DESC, id COLLATE \"C\" DESC LIMIT $2 OFFSET $3"
                ),
                &[&repo, &limit, &offset],
            )?
            .iter()
            .map(run_row)
            .collect())
    }

    fn has_preview_run(&mut self, repo: &str, pr: u64, sha: &str) -> Result<bool, StoreError> {
        let pr = opt_i64(Some(pr));
        Ok(self
            .query_opt(
                "SELECT 1 FROM runs
                 WHERE repo = $1 AND pull_request = $2 AND sha = $3 AND mode = 'apply' LIMIT 1",
                &[&repo, &pr, &sha],
            )?
            .is_some())
    }

    fn held_previews(&mut self) -> Result<Vec<RunRecord>, StoreError> {
        let mut out: Vec<RunRecord> = self
            .query(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM runs r
                     WHERE r.pull_request IS NOT NULL
                       AND r.started_at = (SELECT MAX(x.started_at) FROM runs x
                                           WHERE x.repo = r.repo
                                             AND x.pull_request = r.pull_request)
                       AND NOT (r.mode = 'teardown' AND r.outcome = 'success')
                     ORDER BY r.repo COLLATE \"C\", r.pull_request, r.id COLLATE \"C\""
                ),
                &[],
            )?
            .iter()
            .map(run_row)
            .collect();
        out.dedup_by(|a, b| a.repo == b.repo && a.pull_request == b.pull_request);
        Ok(out)
    }

    fn job_event(&mut self, job_id: i64) -> Result<Option<String>, StoreError> {
        Ok(self
            .query_opt(
                "SELECT d.event FROM jobs j JOIN deliveries d ON d.id = j.delivery_id
                 WHERE j.id = $1",
                &[&job_id],
            )?
            .map(|r| r.get(0)))
    }

    fn prune_runs(&mut self, before_ms: i64) -> Result<usize, StoreError> {
        // Never the newest run of a preview still held (see the SQLite statement).
        self.execute(
            "DELETE FROM runs WHERE started_at < $1
               AND NOT (pull_request IS NOT NULL
                    AND started_at = (SELECT MAX(x.started_at) FROM runs x
                                      WHERE x.repo = runs.repo
                                        AND x.pull_request = runs.pull_request)
                    AND NOT (mode = 'teardown' AND outcome = 'success'))",
            &[&before_ms],
        )
        .map(|n| n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_match_sqlite_versions() {
        for (pg, lite) in MIGRATIONS.iter().zip(super::super::sqlite::MIGRATIONS) {
            assert_eq!((pg.0, pg.1), (lite.0, lite.1), "same version, same meaning");
        }
    }

    #[test]
    fn an_unencoded_at_in_the_password_is_refused_without_showing_it() {
        let e = PgUrl::parse("postgres://app:p@ss@db.example.com/x").unwrap_err();
        assert!(!e.to_string().contains("ss@db"), "{e}");
        assert!(e.to_string().contains("%40"), "{e}");
        let ok = PgUrl::parse("postgres://app:p%40ss@db.example.com/x").unwrap();
        assert_eq!(ok.shown(), "postgres db.example.com:5432/x");
    }

    #[test]
    fn urls_never_show_the_password() {
        let u = PgUrl::parse("postgres://app:hunter2@db.example.com:6543/telbase").unwrap();
        assert_eq!(u.shown(), "postgres db.example.com:6543/telbase");
        assert!(!format!("{u:?}").contains("hunter2"));
        let e = PgUrl::parse("postgres://app:hunter2@db.example.com:notaport/x").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn remote_hosts_without_tls_are_refused_before_connecting() {
        let u =
            PgUrl::parse("postgres://app:hunter2@db.example.com/telbase?sslmode=disable").unwrap();
        let e = PostgresStore::open(&u).unwrap_err();
        assert!(matches!(e, StoreError::PostgresNeedsTls { .. }), "{e}");
        assert!(!e.to_string().contains("hunter2"));
        assert!(e.to_string().contains("sslmode"), "{e}");
    }

    #[test]
    fn loopback_and_sockets_are_local() {
        for (url, local) in [
            ("postgres://u@127.0.0.1/x", true),
            ("postgres://u@localhost/x", true),
            ("postgres://u@[::1]/x", true),
            ("postgres://u@%2Fvar%2Frun%2Fpostgresql/x", true),
            ("postgres://u@10.0.0.5/x", false),
            ("postgres://u@db.example.com/x", false),
        ] {
            let c: Config = url.parse().unwrap();
            assert_eq!(is_local(&c), local, "{url}");
        }
    }
}

//! Store tests on both backends. `TELBASE_TEST_POSTGRES_URL` is an admin URL (a role that may
//! create databases, e.g. `postgres://telbase_test:PASSWORD@127.0.0.1:5432/postgres`); each
//! PostgreSQL test gets a fresh, uniquely named database, dropped afterwards. Unset: the
//! PostgreSQL variant is skipped with a reason on a laptop, and fails under `CI`.

use std::sync::atomic::{AtomicU32, Ordering};

use telbase::store::{self, Location, PgUrl, Store};

/// A fresh database on the test server, dropped (with its connections) on drop.
pub struct TestDb {
    pub url: String,
    admin: String,
    name: String,
}

/// Runs `sql` (one or more statements) at `url`, on a thread and runtime of its own
/// (callers may be inside an async test).
fn admin(url: &str, sql: String) -> Result<(), String> {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .map_err(|e| format!("connect to TELBASE_TEST_POSTGRES_URL: {e}"))?;
            let task = tokio::spawn(conn);
            let out = client.batch_execute(&sql).await.map_err(|e| e.to_string());
            drop(client);
            let _ = task.await;
            out
        })
    })
    .join()
    .map_err(|_| "admin thread panicked".to_owned())?
}

/// `url` with its database replaced by `db` (query string kept).
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let authority_end = base[start..]
        .find('/')
        .map(|i| start + i)
        .unwrap_or(base.len());
    format!("{}/{db}{query}", &base[..authority_end])
}

/// The admin URL, or `None` (after saying why) when PostgreSQL tests cannot run here.
pub fn admin_url() -> Option<String> {
    match std::env::var("TELBASE_TEST_POSTGRES_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "TELBASE_TEST_POSTGRES_URL is not set: CI must run the PostgreSQL tests (.ci/run starts PostgreSQL and sets it)"
            );
            eprintln!(
                "skipping: TELBASE_TEST_POSTGRES_URL not set (an admin URL such as postgres://USER:PASSWORD@127.0.0.1:5432/postgres; see README)"
            );
            None
        }
    }
}

impl TestDb {
    /// A fresh database, or `None` when the tests cannot run here (see [`admin_url`]).
    pub fn new() -> Option<TestDb> {
        static N: AtomicU32 = AtomicU32::new(0);
        let admin_url = admin_url()?;
        let name = format!(
            "telbase_test_{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            chrono::Utc::now().timestamp_micros() % 1_000_000
        );
        admin(&admin_url, format!("CREATE DATABASE {name}")).unwrap();
        Some(TestDb {
            url: with_database(&admin_url, &name),
            admin: admin_url,
            name,
        })
    }

    pub fn location(&self) -> Location {
        Location::Postgres(PgUrl::parse(&self.url).unwrap())
    }

    /// The rows of `sql` in this database, every value as text (`None` for NULL).
    pub fn rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        rows_at(&self.url, sql)
    }

    /// Runs one statement as the admin, in this database.
    pub fn sql(&self, sql: &str) {
        admin(&self.url, sql.to_owned()).unwrap();
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Never panics: a failing test is unwinding through here.
        let _ = admin(
            &self.admin,
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// One store under test: an SQLite file, or a fresh PostgreSQL database.
pub enum TestStore {
    Sqlite(tempfile::TempDir),
    Postgres(TestDb),
}

impl TestStore {
    pub fn name(&self) -> &'static str {
        match self {
            TestStore::Sqlite(_) => "sqlite",
            TestStore::Postgres(_) => "postgres",
        }
    }

    pub fn location(&self) -> Location {
        match self {
            TestStore::Sqlite(dir) => Location::Sqlite(dir.path().join("telbase.db")),
            TestStore::Postgres(db) => db.location(),
        }
    }

    /// Opens (again) the store under test.
    pub fn open(&self) -> Store {
        store::open(&self.location()).unwrap()
    }
}

/// SQLite, then PostgreSQL when `TELBASE_TEST_POSTGRES_URL` is set (see [`admin_url`]).
pub fn stores() -> Vec<TestStore> {
    let mut out = vec![TestStore::Sqlite(tempfile::tempdir().unwrap())];
    out.extend(TestDb::new().map(TestStore::Postgres));
    out
}

/// The rows of `sql` at `url`, every value as text (`None` for NULL), on a thread and
/// runtime of its own.
pub fn rows_at(url: &str, sql: &str) -> Vec<Vec<Option<String>>> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            let task = tokio::spawn(conn);
            let mut out = Vec::new();
            for m in client.simple_query(&sql).await.unwrap() {
                if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                    out.push((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect());
                }
            }
            drop(client);
            let _ = task.await;
            out
        })
    })
    .join()
    .unwrap()
}

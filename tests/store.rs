//! The store: where it lives, how it is created (modes, WAL, migrations), and refusals (a
//! database from a newer Telbase, a world-readable file, PostgreSQL before `telbase serve`).

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;

use telbase::store::{self, Location, SecretName, SqliteStore, StoreError};

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn fresh_database_is_private_wal_and_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new/telbase/telbase.db");
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    assert_eq!(mode(path.parent().unwrap().parent().unwrap()), 0o700);
    assert_eq!(s.schema_version().unwrap(), store::sqlite::latest_version());
    drop(s);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let jm: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(jm, "wal");
    let applied: i64 = conn
        .query_row("SELECT COUNT(*) FROM schema_migrations", [], |r| r.get(0))
        .unwrap();
    assert_eq!(applied as usize, store::sqlite::MIGRATIONS.len());
}

#[test]
fn reopening_runs_no_migration_twice_and_keeps_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let name = SecretName {
        project: "p".into(),
        environment: "production".into(),
        name: "K".into(),
    };
    {
        let mut s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.reserve_version(&name).unwrap(), 1);
    }
    for _ in 0..3 {
        let mut s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), store::sqlite::latest_version());
        s.reserve_version(&name).unwrap();
    }
    let mut s = SqliteStore::open(&path).unwrap();
    // 1 + 3 reservations: the names table survived every reopen.
    assert_eq!(s.reserve_version(&name).unwrap(), 5);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let applied: i64 = conn
        .query_row("SELECT COUNT(*) FROM schema_migrations", [], |r| r.get(0))
        .unwrap();
    assert_eq!(applied as usize, store::sqlite::MIGRATIONS.len());
}

#[test]
fn database_from_a_newer_telbase_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    drop(SqliteStore::open(&path).unwrap());
    let newer = store::sqlite::latest_version() + 1;
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, 'future', 'x')",
            [newer],
        )
        .unwrap();
        conn.execute_batch("CREATE TABLE from_the_future (x)")
            .unwrap();
    }
    let err = SqliteStore::open(&path).unwrap_err();
    match &err {
        StoreError::NewerSchema { found, known, .. } => {
            assert_eq!(*found, newer);
            assert_eq!(*known, newer - 1);
        }
        other => panic!("expected NewerSchema, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("newer Telbase"), "{msg}");
    assert!(msg.contains("t.db"), "{msg}");
}

#[test]
fn world_readable_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    drop(SqliteStore::open(&path).unwrap());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(
        matches!(err, StoreError::Permissions { mode: 0o644, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("chmod 600"));
}

#[test]
fn location_from_url_and_defaults() {
    let vars = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    };
    assert_eq!(
        Location::from_vars(vars(&[("TELBASE_DATABASE_URL", "sqlite:/x/t.db")])).unwrap(),
        Location::Sqlite(PathBuf::from("/x/t.db"))
    );
    assert_eq!(
        Location::from_vars(vars(&[("TELBASE_DATABASE_URL", "rel/t.db")])).unwrap(),
        Location::Sqlite(PathBuf::from("rel/t.db"))
    );
    assert_eq!(
        Location::from_vars(vars(&[("XDG_DATA_HOME", "/d"), ("HOME", "/h")])).unwrap(),
        Location::Sqlite(PathBuf::from("/d/telbase/telbase.db"))
    );
    assert_eq!(
        Location::from_vars(vars(&[("HOME", "/h")])).unwrap(),
        Location::Sqlite(PathBuf::from("/h/.local/share/telbase/telbase.db"))
    );
    assert!(matches!(
        Location::from_vars(vars(&[])),
        Err(StoreError::NoDefault)
    ));
    let Location::Postgres(pg) = Location::from_vars(vars(&[
        ("TELBASE_DATABASE_URL", "postgresql://u:secret@h:6000/db"),
        ("TELBASE_DATABASE_POOL_SIZE", "3"),
    ]))
    .unwrap() else {
        panic!("a PostgreSQL URL is a PostgreSQL location")
    };
    assert_eq!((pg.shown(), pg.pool_size), ("postgres h:6000/db", 3));
    assert!(!format!("{pg:?}").contains("secret"));
    let bad = Location::from_vars(vars(&[
        ("TELBASE_DATABASE_URL", "postgres://u:secret@h/db"),
        ("TELBASE_DATABASE_POOL_SIZE", "none"),
    ]))
    .unwrap_err();
    assert!(matches!(bad, StoreError::PostgresUrl(_)), "{bad}");
    assert!(matches!(
        Location::parse("mysql://h/db"),
        Err(StoreError::BadUrl(_))
    ));
    assert!(matches!(
        Location::parse("sqlite::memory:"),
        Err(StoreError::BadUrl(_))
    ));
}

#[test]
fn put_value_keeps_the_newest_version() {
    for t in common::pg::stores() {
        eprintln!("backend: {}", t.name());
        put_value_keeps_the_newest_version_on(t.open());
    }
}

fn put_value_keeps_the_newest_version_on(mut s: store::Store) {
    let name = SecretName {
        project: "p".into(),
        environment: "production".into(),
        name: "K".into(),
    };
    let v1 = s.reserve_version(&name).unwrap();
    let v2 = s.reserve_version(&name).unwrap();
    let value = |version| store::SealedValue {
        version,
        key_id: "k".into(),
        wrapped_key: vec![1; 61],
        ciphertext: vec![2; 30],
        fingerprint: format!("f{version}"),
        updated_at: store::sqlite::now(),
    };
    assert!(s.put_value(&name, &value(v2)).unwrap());
    // The older reservation finishing later must not overwrite the newer value.
    assert!(!s.put_value(&name, &value(v1)).unwrap());
    // A version never reserved cannot be stored.
    assert!(!s.put_value(&name, &value(v2 + 7)).unwrap());
    assert_eq!(s.get_value(&name).unwrap().unwrap().value.version, v2);
    assert!(s.delete_value(&name).unwrap());
    assert!(s.get_value(&name).unwrap().is_none());
    // Versions keep counting after unset: an old row can never pass for a new one.
    assert_eq!(s.reserve_version(&name).unwrap(), v2 + 1);
}

// ---------------------------------------------------------------------------------------
// Through the real binary: `env set/list/unset` and `keys rotate`, with kill -9.
// ---------------------------------------------------------------------------------------

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use telbase::secrets::{envelope, stored};
use telbase::store::SecretRows;

const CONFIG: &str = "version: 1\nproject: notes\napps:\n  web:\n    framework: nextjs\n";

/// A project directory with telbase.yaml, a database path and a keyring path; its store is
/// the SQLite file `db()` unless given a PostgreSQL database.
struct Project {
    dir: tempfile::TempDir,
    pg: Option<common::pg::TestDb>,
}

impl Project {
    fn new() -> Project {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("telbase.yaml"), CONFIG).unwrap();
        Project { dir, pg: None }
    }
    /// The same on each backend under test (SQLite, then PostgreSQL when available).
    fn each() -> Vec<Project> {
        common::pg::stores()
            .into_iter()
            .map(|t| {
                let mut p = Project::new();
                if let common::pg::TestStore::Postgres(db) = t {
                    eprintln!("backend: postgres");
                    p.pg = Some(db);
                } else {
                    eprintln!("backend: sqlite");
                }
                p
            })
            .collect()
    }
    fn url(&self) -> String {
        match &self.pg {
            Some(db) => db.url.clone(),
            None => format!("sqlite:{}", self.db().display()),
        }
    }
    fn store(&self) -> store::Store {
        store::open(&Location::parse(&self.url()).unwrap()).unwrap()
    }
    fn db(&self) -> PathBuf {
        self.dir.path().join("data/telbase.db")
    }
    fn keys(&self) -> PathBuf {
        self.dir.path().join("master.keys")
    }
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_telbase"));
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("TELBASE_DATABASE_URL", self.url())
            .env("TELBASE_MASTER_KEY_FILE", self.keys())
            .env_remove("TELBASE_MASTER_KEY")
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }
    fn run(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = self.command(args).spawn().unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    }
    fn ok(&self, args: &[&str], stdin: &[u8]) -> String {
        let o = self.run(args, stdin);
        assert!(
            o.status.success(),
            "telbase {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }
    fn name(&self, env: &str, n: &str) -> SecretName {
        SecretName {
            project: "notes".into(),
            environment: env.into(),
            name: n.into(),
        }
    }
}

/// Every file of the database (main, WAL, shared memory), as raw bytes.
fn database_bytes(db: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{suffix}", db.display()));
        if let Ok(b) = std::fs::read(&p) {
            all.extend(b);
        }
    }
    all
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn env_set_list_unset_through_the_binary_never_show_the_value() {
    let p = Project::new();
    // No master key yet: a clear error saying how to make one.
    let o = p.run(&["env", "set", "API_KEY"], b"x");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("keys rotate --generate"), "{err}");
    let out = p.ok(&["keys", "rotate", "--generate"], b"");
    assert!(out.contains("generated master key mk-"), "{out}");

    let secrets = [
        (
            "production",
            "API_KEY",
            "sk_live_9f8e7d6c5b4a3210-plaintext",
        ),
        ("production", "SHORT", "1234"),
        ("preview", "API_KEY", "sk_test_0123456789abcdef-plaintext"),
    ];
    for (env, name, value) in secrets {
        let out = p.ok(&["env", "set", name, "--env", env], value.as_bytes());
        assert!(
            out.contains(&format!("stored {env}/{name} version 1")),
            "{out}"
        );
        assert!(!out.contains(value));
    }
    // A second set makes version 2.
    let out = p.ok(&["env", "set", "SHORT"], b"5678");
    assert!(out.contains("version 2"), "{out}");

    let list = p.ok(&["env", "list"], b"");
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 4, "{list}");
    assert!(lines[0].starts_with("ENVIRONMENT"));
    assert!(lines[1].starts_with("preview") && lines[1].contains("API_KEY"));
    assert!(
        lines[3].contains("SHORT") && lines[3].contains(" 2 "),
        "{list}"
    );
    for line in &lines[1..] {
        assert!(line.contains("•••••••• hmac:"), "{line}");
        assert!(line.contains("mk-"), "{line}");
    }
    let only_preview = p.ok(&["env", "list", "--env", "preview"], b"");
    assert_eq!(only_preview.lines().count(), 2, "{only_preview}");

    let raw = database_bytes(&p.db());
    assert!(!raw.is_empty());
    for (_, _, value) in secrets {
        assert!(!list.contains(value), "env list shows {value}");
        assert!(
            !contains(&raw, value.as_bytes()),
            "the database holds {value}"
        );
    }
    assert!(!contains(&raw, b"5678"));

    // The values open with the library and the same keyring.
    let keys = envelope::read_keyring_file(&p.keys()).unwrap();
    let mut store = SqliteStore::open(&p.db()).unwrap();
    let (plain, _) = stored::open(&mut store, &keys, &p.name("production", "SHORT"))
        .unwrap()
        .unwrap();
    assert_eq!(&plain[..], b"5678");

    p.ok(&["env", "unset", "SHORT"], b"");
    assert!(
        store
            .get_value(&p.name("production", "SHORT"))
            .unwrap()
            .is_none()
    );
    let o = p.run(&["env", "unset", "SHORT"], b"");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not set"));
    // Empty input (an unset shell variable, usually) is refused.
    let o = p.run(&["env", "set", "EMPTY"], b"");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("standard input was empty"));
    // Names that are not env var names never reach the store.
    let o = p.run(&["env", "set", "NOT-A-NAME"], b"x");
    assert!(!o.status.success());
}

#[test]
fn a_second_rotation_waits_for_the_first() {
    let p = Project::new();
    p.ok(&["keys", "rotate", "--generate"], b"");
    let lock =
        telbase::store::sqlite::FileLock::try_acquire(&p.dir.path().join(".master.keys.lock"))
            .unwrap()
            .expect("the lock is free");
    let o = p.run(&["keys", "rotate", "--generate"], b"");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("another `telbase keys rotate` is running"),
        "{err}"
    );
    drop(lock);
    p.ok(&["keys", "rotate", "--generate"], b"");
}

#[test]
fn rotation_without_a_new_key_or_keyring_file_is_refused() {
    let p = Project::new();
    p.ok(&["keys", "rotate", "--generate"], b"");
    let o = p.run(&["keys", "rotate"], b"");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("nothing to rotate to"));
    let o = p
        .command(&["keys", "rotate", "--generate"])
        .env_remove("TELBASE_MASTER_KEY_FILE")
        .env(
            "TELBASE_MASTER_KEY",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        )
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("needs TELBASE_MASTER_KEY_FILE"));
}

#[test]
fn rotation_killed_at_random_moments_finishes_on_rerun_with_every_value_intact() {
    const N: usize = 2000;
    let p = Project::new();
    p.ok(&["keys", "rotate", "--generate"], b"");
    let keys = envelope::read_keyring_file(&p.keys()).unwrap();
    let original = keys.current().unwrap().id.clone();
    let mut store = SqliteStore::open(&p.db()).unwrap();
    let value = |i: usize| format!("value-{i}-{}", i * 7919 % 1000);
    let names: Vec<SecretName> = (0..N)
        .map(|i| {
            p.name(
                if i % 3 == 0 { "preview" } else { "production" },
                &format!("VAR_{i}"),
            )
        })
        .collect();
    for (i, n) in names.iter().enumerate() {
        stored::set(&mut store, &keys, n, value(i).as_bytes()).unwrap();
    }

    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let moved = |store: &mut SqliteStore| -> u64 {
        store
            .key_usage()
            .unwrap()
            .iter()
            .filter(|(id, _)| *id != original)
            .map(|(_, n)| n)
            .sum()
    };
    // Kill moments: one by time, early (before or while the new key is written), then at
    // random amounts of progress, watched through the database while the child runs.
    let mut thresholds: Vec<u64> = (0..5).map(|_| rng.u64(1..N as u64)).collect();
    thresholds.sort_unstable();
    let mut kills = 0;
    let mut split_states = 0;
    for (round, threshold) in std::iter::once(None)
        .chain(thresholds.into_iter().map(Some))
        .enumerate()
    {
        let mut child = p
            .command(&["keys", "rotate", "--generate", "--batch", "10"])
            .spawn()
            .unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        let mut finished = false;
        match threshold {
            None => std::thread::sleep(std::time::Duration::from_millis(rng.u64(0..30))),
            Some(t) => loop {
                if child.try_wait().unwrap().is_some() {
                    finished = true;
                    break;
                }
                if moved(&mut store) >= t || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            },
        }
        finished |= child.try_wait().unwrap().is_some();
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        if !finished {
            kills += 1;
        }
        // Whatever the moment: the keyring file is whole, and a retired key wraps nothing.
        let ring = envelope::read_keyring_file(&p.keys())
            .unwrap_or_else(|e| panic!("round {round}: keyring unreadable after kill: {e}"));
        let usage = store.key_usage().unwrap();
        for k in ring.keys().iter().filter(|k| k.retired) {
            assert!(
                !usage.iter().any(|(id, n)| *id == k.id && *n > 0),
                "round {round}: {} retired while rows still use it: {usage:?}",
                k.id
            );
        }
        if usage.len() > 1 {
            split_states += 1;
            // Mid-rotation the original key is still active.
            assert!(ring.keys().iter().any(|k| k.id == original && !k.retired));
        }
    }
    assert!(
        kills >= 3,
        "only {kills} runs were killed before they finished"
    );
    assert!(
        split_states >= 2,
        "only {split_states} kills landed mid-rotation (rows split across two keys)"
    );
    // Finish the job.
    let out = p.ok(&["keys", "rotate", "--generate", "--batch", "10"], b"");
    let ring = envelope::read_keyring_file(&p.keys()).unwrap();
    let current = ring.current().unwrap().id.clone();
    assert_ne!(current, original);
    assert!(
        ring.keys().iter().all(|k| k.id == current || k.retired),
        "{out}"
    );
    assert!(ring.keys().iter().any(|k| k.id == original && k.retired));
    // Interrupted runs resumed instead of piling up new keys: the original, the one new key
    // (plus one more only when a kill came after the rotation had already finished).
    assert!(ring.keys().len() <= 3, "{:?}", ring.keys());
    assert_eq!(store.key_usage().unwrap(), vec![(current, N as u64 + 1)]);
    for (i, n) in names.iter().enumerate() {
        let (plain, _) = stored::open(&mut store, &ring, n).unwrap().unwrap();
        assert_eq!(&plain[..], value(i).as_bytes(), "{n:?}");
    }
    eprintln!("rotation of {N} values: {kills} kills, {split_states} left rows split across keys");
}

// ---------------------------------------------------------------------------------------
// Apply: a `stored: true` variable lands at Vercel as a sensitive env var.
// ---------------------------------------------------------------------------------------

use std::sync::{Arc, Mutex};

use common::emu;
use secrecy::{ExposeSecret as _, SecretString};
use telbase::apply::{self, Opener};
use telbase::model::{EnvSource, ResourceSpec};

const SHA: &str = "4f2a9c1e0b7d3a5f6e8c9b0a1d2e3f4a5b6c7d8e";

/// The store opener, noting every value it hands out (to check what reached the provider).
struct Watching {
    inner: stored::StoreOpener<SqliteStore>,
    opened: Mutex<Vec<(String, String)>>,
}

impl Opener for Watching {
    fn open(&self, armor: &str) -> Result<SecretString, String> {
        self.inner.open(armor)
    }
    fn open_sops(&self, file: &std::path::Path) -> Result<telbase::apply::EnvFileValues, String> {
        self.inner.open_sops(file)
    }
    fn open_stored(
        &self,
        project: &str,
        environment: &str,
        name: &str,
        fingerprint: Option<&str>,
    ) -> Result<SecretString, String> {
        let v = self
            .inner
            .open_stored(project, environment, name, fingerprint)?;
        self.opened
            .lock()
            .unwrap()
            .push((name.to_owned(), v.expose_secret().to_owned()));
        Ok(v)
    }
}

fn stored_config() -> String {
    emu::quickstart("notes").replace(
        "      SITE: notes\n",
        "      SITE: notes\n      API_KEY: { stored: true }\n",
    )
}

async fn apply_with(run: &emu::Run, opener: Arc<dyn Opener>) -> apply::Report {
    let (plan, actual) = run.plan().await.unwrap();
    apply::execute(
        Arc::new(plan),
        Arc::new(run.desired.clone()),
        Arc::new(actual),
        Arc::new(run.registry.clone()),
        Arc::new(run.scope.clone()),
        opener,
        apply::Options::default(),
    )
    .await
}

fn observed_api_key(actual: &telbase::model::ActualState) -> EnvSource {
    actual
        .resources
        .values()
        .find_map(|o| match &o.spec {
            ResourceSpec::VercelProject(p) => p
                .env
                .iter()
                .find(|v| v.name == "API_KEY")
                .map(|v| v.source.clone()),
            _ => None,
        })
        .expect("API_KEY at Vercel")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_variable_is_applied_as_a_vercel_sensitive_env_var() {
    const FIRST: &str = "sk_live_first-plaintext-0a1b2c";
    const SECOND: &str = "sk_live_second-plaintext-3d4e5f";
    let dir = tempfile::tempdir().unwrap();
    let recording = dir.path().join("emulator.jsonl");
    let emu = emu::start(telbase::emulator::Config {
        record: Some(recording.clone()),
        ..Default::default()
    })
    .await;
    let src = stored_config();
    let mut run = emu::run(&src, &emu.url(), SHA, emu::http_config());
    assert!(stored::uses_stored(&run.desired));
    assert!(!stored::uses_stored(
        &emu::run(
            &emu::quickstart("notes"),
            &emu.url(),
            SHA,
            emu::http_config()
        )
        .desired
    ));

    let db = dir.path().join("t.db");
    let keyfile = dir.path().join("keys");
    let mut store = SqliteStore::open(&db).unwrap();
    stored::rotate_keyring(&mut store, &keyfile, true, 100, |_| {}).unwrap();
    let keys = || envelope::read_keyring_file(&keyfile).unwrap();
    let api_key = SecretName {
        project: "notes".into(),
        environment: "production".into(),
        name: "API_KEY".into(),
    };

    // Not set yet: a plan-time error naming the command.
    let err = stored::read_fingerprints(&mut run.desired.clone(), &mut store).unwrap_err();
    assert!(
        err.contains("apps.web") && err.contains("`telbase env set API_KEY --env production`"),
        "{err}"
    );

    let first = stored::set(&mut store, &keys(), &api_key, FIRST.as_bytes()).unwrap();
    stored::read_fingerprints(&mut run.desired, &mut store).unwrap();
    let (plan, _) = run.plan().await.unwrap();
    let text = telbase::plan::render_text(&plan);
    let json = telbase::plan::render_json(&plan);
    let md = telbase::plan::render_markdown(&plan, 100_000);
    for r in [&text, &json, &md] {
        assert!(!r.contains(FIRST));
    }

    let watching = Arc::new(Watching {
        inner: stored::StoreOpener::new(
            Arc::new(apply::NoIdentity),
            SqliteStore::open(&db).unwrap(),
            keys(),
        ),
        opened: Mutex::new(Vec::new()),
    });
    let report = apply_with(&run, watching.clone()).await;
    assert!(report.succeeded(), "{report:?}");
    assert_eq!(
        watching.opened.lock().unwrap().as_slice(),
        &[("API_KEY".to_owned(), FIRST.to_owned())]
    );
    // Observed back by its recorded fingerprint, so the next plan is empty.
    let (plan, actual) = run.plan().await.unwrap();
    assert!(!plan.has_changes(), "{}", telbase::plan::render_text(&plan));
    assert_eq!(
        observed_api_key(&actual),
        EnvSource::Stored {
            name: "API_KEY".into(),
            fingerprint: Some(first.fingerprint.clone()),
        }
    );

    // A new value: the plan shows a change (by fingerprint only), apply writes it.
    let second = stored::set(&mut store, &keys(), &api_key, SECOND.as_bytes()).unwrap();
    assert_ne!(second.fingerprint, first.fingerprint);
    stored::read_fingerprints(&mut run.desired, &mut store).unwrap();
    let (plan, _) = run.plan().await.unwrap();
    assert!(plan.has_changes());
    let text = telbase::plan::render_text(&plan);
    let json = telbase::plan::render_json(&plan);
    // The change is shown by keyed fingerprint, old and new.
    assert!(json.contains(&second.fingerprint), "{json}");
    for r in [&text, &json] {
        assert!(!r.contains(SECOND) && !r.contains(FIRST), "{r}");
    }

    // Changed again after that plan: apply refuses to write a value the plan did not show.
    stored::set(&mut store, &keys(), &api_key, b"third-value-after-the-plan").unwrap();
    let report = apply_with(&run, watching.clone()).await;
    assert!(!report.succeeded());
    let failed = format!("{report:?}");
    assert!(failed.contains("changed since the plan"), "{failed}");
    assert!(!failed.contains("third-value-after-the-plan"));
    stored::read_fingerprints(&mut run.desired, &mut store).unwrap();
    let report = apply_with(&run, watching.clone()).await;
    assert!(report.succeeded(), "{report:?}");
    let (plan, _) = run.plan().await.unwrap();
    assert!(!plan.has_changes());
    emu.stop().await;

    // On the wire: written as `sensitive` with the fingerprint comment; the recording
    // (redacted) holds no plaintext.
    let rec = std::fs::read_to_string(&recording).unwrap();
    let writes: Vec<serde_json::Value> = rec
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|x| x.to_string().contains("telbase stored API_KEY"))
        .collect();
    assert!(!writes.is_empty(), "no API_KEY write recorded");
    assert!(
        writes
            .iter()
            .any(|w| w.to_string().contains("\"sensitive\"")),
        "{writes:?}"
    );
    for v in [FIRST, SECOND, "third-value-after-the-plan"] {
        assert!(!rec.contains(v), "the recording holds {v}");
    }
}

#[test]
fn stored_is_one_of_the_value_forms_and_false_is_refused() {
    let ok = telbase::config::check_str(&stored_config());
    assert!(ok.is_valid(), "{:?}", ok.diagnostics);
    let (desired, _) =
        telbase::config::load_str(&stored_config(), telbase::model::Environment::Production)
            .unwrap();
    assert!(stored::uses_stored(&desired));
    for (form, want) in [
        (
            "{ stored: true, value: x }",
            "exactly one of `value`, `sealed`, `from` or `stored`, found 2",
        ),
        ("{ stored: false }", "`stored: false` gives no value"),
    ] {
        let src = stored_config().replace("{ stored: true }", form);
        let checked = telbase::config::check_str(&src);
        assert!(!checked.is_valid());
        let msgs: Vec<String> = checked
            .diagnostics
            .iter()
            .map(|d| d.message.clone())
            .collect();
        assert!(msgs.iter().any(|m| m.contains(want)), "{form}: {msgs:?}");
    }
}

#[test]
fn plan_without_the_stored_value_names_the_command_and_plain_configs_need_no_store() {
    let p = Project::new();
    std::fs::write(p.dir.path().join("telbase.yaml"), stored_config()).unwrap();
    let o = p.run(&["plan"], b"");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("`telbase env set API_KEY --env production`"),
        "{err}"
    );
    // A config without `stored:` never opens (or creates) the store.
    let q = Project::new();
    std::fs::write(q.dir.path().join("telbase.yaml"), emu::quickstart("notes")).unwrap();
    let _ = q.run(&["plan"], b"");
    assert!(!q.db().exists());
    assert!(!q.db().parent().unwrap().exists());
}

/// A container app on Cloud Run (examples/go-turso, with a Neon database) with one stored
/// variable.
fn cloud_run_config() -> String {
    r#"version: 1
project: links
environments:
  production:
    branch: main
apps:
  api:
    runtime: go
    image: us-east1-docker.pkg.dev/links-prod/containers/api:${git.short_sha}
    region: us-east1
    port: 8080
    access: public
    env:
      DATABASE_URL: { from: databases.main.url }
      API_KEY: { stored: true }
databases:
  main:
    engine: postgres
    region: aws-us-east-2
    version: 17
"#
    .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_variable_of_a_cloud_run_app_lands_in_secret_manager() {
    use base64::Engine as _;
    const VALUE: &str = "sk_live_cloud-run-plaintext-77";
    let dir = tempfile::tempdir().unwrap();
    let emu = emu::start(telbase::emulator::Config::default()).await;
    let url = emu.url();
    let mut run = emu::run(&cloud_run_config(), &url, SHA, emu::http_config());
    let db = dir.path().join("t.db");
    let keyfile = dir.path().join("keys");
    let mut store = SqliteStore::open(&db).unwrap();
    stored::rotate_keyring(&mut store, &keyfile, true, 100, |_| {}).unwrap();
    let keys = envelope::read_keyring_file(&keyfile).unwrap();
    let name = SecretName {
        project: "links".into(),
        environment: "production".into(),
        name: "API_KEY".into(),
    };
    stored::set(&mut store, &keys, &name, VALUE.as_bytes()).unwrap();
    stored::read_fingerprints(&mut run.desired, &mut store).unwrap();
    let opener = Arc::new(stored::StoreOpener::new(
        Arc::new(apply::NoIdentity),
        SqliteStore::open(&db).unwrap(),
        envelope::read_keyring_file(&keyfile).unwrap(),
    ));
    let report = apply_with(&run, opener).await;
    assert!(report.succeeded(), "{report:?}");
    let (again, _) = run.plan().await.unwrap();
    assert!(
        !again.has_changes(),
        "{}",
        telbase::plan::render_text(&again)
    );

    let r = reqwest::Client::new()
        .get(format!(
            "{url}/secret-manager/v1/projects/telbase-emulator/secrets/links-api-API_KEY/versions/latest:access"
        ))
        .bearer_auth(telbase::emulator::EMULATOR_TOKEN)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let body: serde_json::Value = r.json().await.unwrap();
    let data = body["payload"]["data"].as_str().unwrap();
    let plain = base64::engine::general_purpose::STANDARD
        .decode(data)
        .unwrap();
    assert_eq!(plain, VALUE.as_bytes());
    emu.stop().await;
}

#[test]
fn the_cli_applies_a_stored_variable_with_verbose_logs_and_leaks_it_nowhere() {
    const VALUE: &str = "sk_live_cli-leak-check-plaintext-4242";
    let rt = tokio::runtime::Runtime::new().unwrap();
    let p = Project::new();
    std::fs::write(p.dir.path().join("telbase.yaml"), stored_config()).unwrap();
    let recording = p.dir.path().join("emulator.jsonl");
    let emu = rt.block_on(emu::start(telbase::emulator::Config {
        record: Some(recording.clone()),
        ..Default::default()
    }));
    let url = emu.url();
    let mut seen = String::new();
    let mut run = |args: &[&str], stdin: &[u8]| {
        let mut child = p
            .command(args)
            .env("RUST_LOG", "trace")
            .env("NO_COLOR", "1")
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let o = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        seen.push_str(&text);
        (o.status.success(), text)
    };
    assert!(run(&["keys", "rotate", "--generate"], b"").0);
    assert!(run(&["env", "set", "API_KEY"], VALUE.as_bytes()).0);
    let (ok, plan_json) = run(&["plan", "--emulator", &url, "--format", "json"], b"");
    assert!(ok, "{plan_json}");
    let (ok, applied) = run(&["apply", "--emulator", &url, "--auto-approve"], b"");
    assert!(ok, "{applied}");
    assert!(applied.contains("Apply complete"), "{applied}");
    let (ok, again) = run(&["plan", "--emulator", &url, "--detailed-exitcode"], b"");
    assert!(ok, "a second plan has changes: {again}");
    let (ok, list) = run(&["env", "list"], b"");
    assert!(ok && list.contains("API_KEY"), "{list}");
    // Nothing to write: apply needs no master key (plans read fingerprints only).
    let o = p
        .command(&["apply", "--emulator", &url, "--auto-approve"])
        .env_remove("TELBASE_MASTER_KEY_FILE")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A changed value with no master key: the step fails and says why.
    assert!(run(&["env", "set", "API_KEY"], b"a-newer-value").0);
    let o = p
        .command(&["apply", "--emulator", &url, "--auto-approve"])
        .env_remove("TELBASE_MASTER_KEY_FILE")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let out = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(out.contains("no master key"), "{out}");
    rt.block_on(emu.stop());

    let rec = std::fs::read_to_string(&recording).unwrap();
    assert!(
        rec.lines()
            .any(|l| l.contains("telbase stored API_KEY hmac:") && l.contains("\"sensitive\"")),
        "no sensitive API_KEY write in the recording"
    );
    // The most verbose tracing really was on (so the check below covers logs too).
    assert!(
        seen.contains("TRACE") || seen.contains("DEBUG"),
        "no verbose logs seen"
    );
    assert!(
        !seen.contains(VALUE),
        "a command printed or logged the value"
    );
    assert!(
        !rec.contains(VALUE),
        "the emulator recording holds the value"
    );
    assert!(!contains(&database_bytes(&p.db()), VALUE.as_bytes()));
}

#[test]
fn writers_during_a_rotation_lose_nothing() {
    for p in Project::each() {
        writers_during_a_rotation_lose_nothing_in(p);
    }
}

fn writers_during_a_rotation_lose_nothing_in(p: Project) {
    const EXISTING: usize = 300;
    const DURING: usize = 150;
    p.ok(&["keys", "rotate", "--generate"], b"");
    // A long-running process that loaded the keyring file before the rotation: it follows
    // the file, so it wraps under the new key once that is written, and opens rows the
    // rotation re-wrapped. (Writes that raced the switch land under the old key.)
    let loaded = envelope::read_keyring_file(&p.keys()).unwrap();
    let original = loaded.current().unwrap().id.clone();
    let stale = Arc::new(envelope::KeyringFile::open(&p.keys()).unwrap());
    let mut store = p.store();
    for i in 0..EXISTING {
        let n = p.name("production", &format!("OLD_{i}"));
        stored::set(&mut store, &loaded, &n, format!("old-{i}").as_bytes()).unwrap();
    }
    let rotation = p
        .command(&["keys", "rotate", "--generate", "--batch", "5"])
        .spawn()
        .unwrap();
    // Writes go on for the whole rotation (and at least DURING of them).
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let mut store = p.store();
        let done = done.clone();
        let name = p.name("production", "X");
        std::thread::spawn(move || {
            let mut written = Vec::new();
            let mut i = 0;
            while i < DURING || !done.load(std::sync::atomic::Ordering::SeqCst) {
                let n = SecretName {
                    name: format!("NEW_{i}"),
                    ..name.clone()
                };
                stored::set(
                    &mut store,
                    stale.as_ref(),
                    &n,
                    format!("new-{i}").as_bytes(),
                )
                .unwrap();
                written.push(n);
                i += 1;
            }
            written
        })
    };
    let o = rotation.wait_with_output().unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let names = writer.join().unwrap();
    if !o.status.success() {
        // Allowed only for the stated reason: something kept writing under the old key.
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("still in use"), "{err}");
    }
    // Whatever happened, every value opens with the current keyring (retired keys unwrap).
    let ring = envelope::read_keyring_file(&p.keys()).unwrap();
    for i in 0..EXISTING {
        let n = p.name("production", &format!("OLD_{i}"));
        let (plain, _) = stored::open(&mut store, &ring, &n).unwrap().unwrap();
        assert_eq!(&plain[..], format!("old-{i}").as_bytes());
    }
    // The next rotation (no new key needed) moves the stragglers and retires the old key.
    let usage = store.key_usage().unwrap();
    eprintln!(
        "rotation {}; {} writes during it; rows by key afterwards: {usage:?}",
        if o.status.success() {
            "finished"
        } else {
            "stopped"
        },
        names.len()
    );
    if usage.len() > 1 {
        p.ok(&["keys", "rotate"], b"");
    }
    let ring = envelope::read_keyring_file(&p.keys()).unwrap();
    let current = ring.current().unwrap().id.clone();
    assert_ne!(current, original);
    assert!(ring.keys().iter().any(|k| k.id == original && k.retired));
    assert_eq!(
        store.key_usage().unwrap(),
        vec![(current, (EXISTING + names.len()) as u64 + 1)]
    );
    for (i, n) in names.iter().enumerate() {
        let (plain, _) = stored::open(&mut store, &ring, n).unwrap().unwrap();
        assert_eq!(&plain[..], format!("new-{i}").as_bytes());
    }
}

#[test]
fn previews_read_the_preview_value() {
    for t in common::pg::stores() {
        eprintln!("backend: {}", t.name());
        previews_read_the_preview_value_on(t.open());
    }
}

fn previews_read_the_preview_value_on(mut store: store::Store) {
    let keys = envelope::Keyring::parse("k AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n", "test")
        .unwrap();
    let key = |env: &str| SecretName {
        project: "notes".into(),
        environment: env.into(),
        name: "API_KEY".into(),
    };
    let prod = stored::set(&mut store, &keys, &key("production"), b"live").unwrap();
    let (mut preview, _) = telbase::config::load_str(
        &stored_config(),
        telbase::model::Environment::Preview { pull_request: 12 },
    )
    .unwrap();
    // Only a production value: the preview plan says which command sets the preview one.
    let err = stored::read_fingerprints(&mut preview, &mut store).unwrap_err();
    assert!(err.contains("--env preview"), "{err}");
    let test = stored::set(&mut store, &keys, &key("preview"), b"test").unwrap();
    stored::read_fingerprints(&mut preview, &mut store).unwrap();
    let json = serde_json::to_string(&preview).unwrap();
    assert!(json.contains(&test.fingerprint), "{json}");
    assert!(!json.contains(&prod.fingerprint));
}

#[test]
fn keys_list_shows_status_and_usage_and_flags_missing_keys() {
    for p in Project::each() {
        keys_list_shows_status_and_usage_and_flags_missing_keys_in(p);
    }
}

fn keys_list_shows_status_and_usage_and_flags_missing_keys_in(p: Project) {
    p.ok(&["keys", "rotate", "--generate"], b"");
    p.ok(&["env", "set", "A"], b"a");
    p.ok(&["keys", "rotate", "--generate"], b"");
    let out = p.ok(&["keys", "list"], b"");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[1].contains("retired") && lines[1].trim_end().ends_with(" 0"),
        "{out}"
    );
    // One value plus the fingerprint key.
    assert!(
        lines[2].contains("current") && lines[2].trim_end().ends_with(" 2"),
        "{out}"
    );
    // A value wrapped under a key the keyring does not have.
    let gone = envelope::Keyring::parse("gone AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n", "t")
        .unwrap();
    let mut store = p.store();
    let n = p.name("production", "B");
    let v = store.reserve_version(&n).unwrap();
    let e = envelope::seal(&gone, &n, v, b"b").unwrap();
    store
        .put_value(
            &n,
            &store::SealedValue {
                version: v,
                key_id: e.key_id,
                wrapped_key: e.wrapped_key,
                ciphertext: e.ciphertext,
                fingerprint: "hmac:0000000000000000".into(),
                updated_at: store::sqlite::now(),
            },
        )
        .unwrap();
    let o = p.run(&["keys", "list"], b"");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("MISSING"));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot be opened"));
}

/// The run records behind the run pages and the preview sweep, on both backends: saved and
/// updated in place, listed newest first a page at a time, held previews (the newest run of
/// each pull request unless it is a successful teardown), and pruning by age.
#[test]
fn run_records_behave_alike_on_both_backends() {
    for t in common::pg::stores() {
        eprintln!("backend: {}", t.name());
        run_records_on(t.open());
    }
}

fn run_records_on(mut s: store::Store) {
    use store::RunRows as _;
    use store::runs::RunRecord;
    let run =
        |id: &str, pr: Option<u64>, sha: &str, mode: &str, outcome: &str, at: i64| RunRecord {
            id: id.into(),
            repo: "acme/notes".into(),
            environment: pr.map_or("production".into(), |n| format!("preview-{n}")),
            pull_request: pr,
            sha: sha.into(),
            branch: "feature".into(),
            trigger: "pr".into(),
            mode: mode.into(),
            job_id: None,
            started_at: at,
            ended_at: None,
            outcome: outcome.into(),
            summary: String::new(),
            plan: String::new(),
            report: "[]".into(),
            preview_ttl_seconds: pr.map(|_| 3600),
        };
    s.save_run(&run("p1", None, "a", "apply", "running", 10))
        .unwrap();
    // The end of a run updates the same row.
    let mut done = run("p1", None, "a", "apply", "success", 10);
    done.ended_at = Some(15);
    done.summary = "Applied 3 changes".into();
    done.plan = "notes: 3 to create".into();
    s.save_run(&done).unwrap();
    assert_eq!(s.run("p1").unwrap(), Some(done.clone()));
    assert_eq!(s.run("nope").unwrap(), None);

    s.save_run(&run("a1", Some(1), "b", "apply", "success", 20))
        .unwrap();
    s.save_run(&run("t1", Some(1), "b", "teardown", "success", 30))
        .unwrap();
    s.save_run(&run("a2", Some(2), "c", "apply", "success", 40))
        .unwrap();
    s.save_run(&run("t2", Some(2), "c", "teardown", "failure", 50))
        .unwrap();
    s.save_run(&run("a3", Some(3), "d", "apply", "running", 60))
        .unwrap();
    let held: Vec<String> = s
        .held_previews()
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(
        held,
        ["t2", "a3"],
        "a failed teardown still holds its preview"
    );
    assert!(s.has_preview_run("acme/notes", 1, "b").unwrap());
    assert!(!s.has_preview_run("acme/notes", 1, "c").unwrap());
    assert!(!s.has_preview_run("other/repo", 1, "b").unwrap());
    // Saving again updates the end and outcome, never the identity.
    let mut moved = run("a3", Some(3), "d", "apply", "success", 60);
    moved.repo = "other/repo".into();
    s.save_run(&moved).unwrap();
    let got = s.run("a3").unwrap().unwrap();
    assert_eq!(
        (got.outcome.as_str(), got.repo.as_str()),
        ("success", "acme/notes")
    );

    let page = |s: &mut store::Store, limit, offset| -> Vec<String> {
        s.runs_of("acme/notes", limit, offset)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect()
    };
    assert_eq!(page(&mut s, 2, 0), ["a3", "t2"], "newest first");
    assert_eq!(page(&mut s, 2, 2), ["a2", "t1"]);
    assert_eq!(page(&mut s, 10, 5), ["p1"]);
    assert_eq!(s.job_event(12345).unwrap(), None);

    assert_eq!(s.prune_runs(35).unwrap(), 3, "p1, a1 and t1 are older");
    assert_eq!(page(&mut s, 10, 0), ["a3", "t2", "a2"]);
    // A preview still held keeps its newest run however old: the sweep finds it through it.
    assert_eq!(s.prune_runs(55).unwrap(), 1, "a2 goes, t2 stays");
    assert_eq!(page(&mut s, 10, 0), ["a3", "t2"]);
    assert_eq!(s.held_previews().unwrap().len(), 2);
}

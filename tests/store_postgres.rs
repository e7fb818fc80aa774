//! The PostgreSQL store on its own: migrations under concurrent starts and a refused newer
//! schema, errors that never show the URL's password, and the queue's rules under real
//! concurrency (several stores, each with its own pool, as several replicas have): at most
//! one running job per repository+environment, the newest commit wins, nothing claimed
//! twice, and a dead worker's lease is taken over.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::pg::TestDb;
use telbase::store::{self, JobEnd, PgUrl, PostgresStore, QueueRows as _, StoreError};

fn open(db: &TestDb) -> PostgresStore {
    PostgresStore::open(&PgUrl::parse(&db.url).unwrap()).unwrap()
}

#[test]
fn replicas_starting_together_migrate_once() {
    let Some(db) = TestDb::new() else { return };
    let url = PgUrl::parse(&db.url).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || PostgresStore::open(&url).map(|s| s.schema_version()))
        })
        .collect();
    for t in threads {
        let v = t.join().unwrap().unwrap().unwrap();
        assert_eq!(v, store::postgres::latest_version());
    }
    // Each migration ran once: one row per version, and opening again changes nothing.
    let s = open(&db);
    assert_eq!(
        s.schema_version().unwrap(),
        store::postgres::latest_version()
    );
    db.sql(
        "DO $$ BEGIN IF (SELECT COUNT(*) FROM schema_migrations) <> (SELECT COUNT(DISTINCT version) FROM schema_migrations) THEN RAISE EXCEPTION 'migrated twice'; END IF; END $$",
    );
}

#[test]
fn a_database_from_a_newer_telbase_is_refused() {
    let Some(db) = TestDb::new() else { return };
    drop(open(&db));
    db.sql("INSERT INTO schema_migrations (version, name, applied_at) VALUES (999, 'future', 'x')");
    let err = PostgresStore::open(&PgUrl::parse(&db.url).unwrap()).unwrap_err();
    assert!(
        matches!(err, StoreError::NewerSchema { found: 999, .. }),
        "{err}"
    );
}

#[test]
fn connection_errors_name_the_database_but_never_the_password() {
    let Some(db) = TestDb::new() else { return };
    // The same server and database with a wrong password.
    let (scheme_user, rest) = db.url.split_once('@').unwrap();
    let user = scheme_user.rsplit_once(':').unwrap().0;
    let wrong = format!("{user}:Wr0ng-Passw0rd-xyz@{rest}");
    let err = PostgresStore::open(&PgUrl::parse(&wrong).unwrap()).unwrap_err();
    let text = err.to_string();
    assert!(!text.contains("Wr0ng-Passw0rd-xyz"), "{text}");
    assert!(
        text.contains("127.0.0.1") || text.contains("localhost"),
        "{text}"
    );
    assert!(matches!(err, StoreError::Postgres { .. }), "{err:?}");
    let debug = format!("{err:?} {:?}", PgUrl::parse(&wrong).unwrap());
    assert!(!debug.contains("Wr0ng-Passw0rd-xyz"), "{debug}");
}

fn push(repo: &str, sha: &str) -> (String, String, String) {
    (
        repo.to_owned(),
        "push:main".to_owned(),
        format!(
            r#"{{"kind":"push","installation":7,"repo":"{repo}","branch":"main","sha":"{sha}"}}"#
        ),
    )
}

/// Four "replicas" (each its own store and pool) with two workers each drain a queue of 10
/// repositories × 6 pushes while more pushes arrive. No key ever has two jobs running, each
/// repository ends at its newest commit, and no job runs twice.
#[test]
fn concurrent_replicas_keep_the_queue_rules() {
    let Some(db) = TestDb::new() else { return };
    let repos: Vec<String> = (0..10).map(|n| format!("acme/r{n}")).collect();
    let mut s = open(&db);
    for round in 0..3 {
        for r in &repos {
            s.record_delivery(
                &format!("{r}-{round}"),
                "push",
                "",
                &[push(r, &round.to_string())],
            )
            .unwrap();
        }
    }
    let running: Arc<Mutex<HashSet<String>>> = Arc::default();
    let ran: Arc<Mutex<Vec<(i64, String)>>> = Arc::default();
    let violations: Arc<Mutex<Vec<String>>> = Arc::default();
    let url = PgUrl::parse(&db.url).unwrap();
    let mut threads = Vec::new();
    for replica in 0..4 {
        let store = PostgresStore::open(&url).unwrap();
        for worker in 0..2 {
            let mut store = store.clone();
            let (running, ran, violations) = (running.clone(), ran.clone(), violations.clone());
            let owner = format!("replica{replica}:w{worker}");
            threads.push(std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut idle = 0;
                while Instant::now() < deadline && idle < 40 {
                    let Some(job) = store.claim_job(&owner, 30_000).unwrap() else {
                        idle += 1;
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    };
                    idle = 0;
                    let v: serde_json::Value = serde_json::from_str(&job.intent).unwrap();
                    let repo = v["repo"].as_str().unwrap().to_owned();
                    if !running.lock().unwrap().insert(repo.clone()) {
                        violations
                            .lock()
                            .unwrap()
                            .push(format!("{repo} ran twice at once"));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                    running.lock().unwrap().remove(&repo);
                    ran.lock().unwrap().push((job.id, job.intent.clone()));
                    store.end_job(job.id, &owner, JobEnd::Done("ok")).unwrap();
                }
            }));
        }
    }
    // More pushes while the replicas work: each may supersede a queued one.
    for round in 3..6 {
        for r in &repos {
            s.record_delivery(
                &format!("{r}-{round}"),
                "push",
                "",
                &[push(r, &round.to_string())],
            )
            .unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for t in threads {
        t.join().unwrap();
    }
    assert!(
        violations.lock().unwrap().is_empty(),
        "{:?}",
        violations.lock().unwrap()
    );
    let ran = ran.lock().unwrap();
    let ids: HashSet<i64> = ran.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), ran.len(), "a job ran twice: {ran:?}");
    let jobs = s.jobs().unwrap();
    assert_eq!(s.queue_depth().unwrap(), 0, "{jobs:?}");
    assert_eq!(jobs.len(), 60);
    // Every repository's newest push ran, and an older one never ran after a newer one.
    let mut last: HashMap<String, u32> = HashMap::new();
    for (_, intent) in ran.iter() {
        let v: serde_json::Value = serde_json::from_str(intent).unwrap();
        let repo = v["repo"].as_str().unwrap().to_owned();
        let sha: u32 = v["sha"].as_str().unwrap().parse().unwrap();
        if let Some(prev) = last.insert(repo.clone(), sha) {
            assert!(sha > prev, "{repo}: commit {sha} ran after {prev}");
        }
    }
    for r in &repos {
        assert_eq!(
            last.get(r),
            Some(&5),
            "{r} did not end at its newest commit"
        );
    }
    let done = jobs.iter().filter(|j| j.state == "done").count();
    let superseded = jobs.iter().filter(|j| j.state == "superseded").count();
    assert_eq!(done, ran.len());
    assert_eq!(done + superseded, 60, "{jobs:?}");
}

/// A worker that dies keeps its lease until it runs out; then another replica takes the
/// job, and the dead one's late result is not recorded.
#[test]
fn an_expired_lease_passes_to_another_replica() {
    let Some(db) = TestDb::new() else { return };
    let (mut a, mut b) = (open(&db), open(&db));
    a.record_delivery("d1", "push", "", &[push("acme/x", "1")])
        .unwrap();
    let job = a.claim_job("a", 300).unwrap().unwrap();
    assert_eq!(b.claim_job("b", 60_000).unwrap(), None, "held by a");
    std::thread::sleep(Duration::from_millis(400));
    let again = b.claim_job("b", 60_000).unwrap().unwrap();
    assert_eq!(again.id, job.id);
    a.end_job(job.id, "a", JobEnd::Done("late")).unwrap();
    b.end_job(job.id, "b", JobEnd::Done("b's run")).unwrap();
    let row = b.jobs().unwrap().pop().unwrap();
    assert_eq!(
        (row.state.as_str(), row.summary.as_deref()),
        ("done", Some("b's run"))
    );
}

/// Leadership of the periodic tasks: one replica at a time, taken over when it resigns or
/// its process ends.
#[test]
fn one_replica_leads_at_a_time() {
    let Some(db) = TestDb::new() else { return };
    let (a, b) = (open(&db), open(&db));
    assert!(a.lead().unwrap());
    assert!(a.lead().unwrap(), "still leading");
    assert!(!b.lead().unwrap());
    a.resign();
    assert!(b.lead().unwrap());
    assert!(!a.lead().unwrap());
    drop(b);
    // The dropped store's connections close; PostgreSQL frees its lock.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !a.lead().unwrap() {
        assert!(Instant::now() < deadline, "leadership was not freed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Many threads on one small pool: everyone gets a connection in turn.
#[test]
fn a_small_pool_serves_many_threads() {
    let Some(db) = TestDb::new() else { return };
    let mut url = PgUrl::parse(&db.url).unwrap();
    url.pool_size = 2;
    let s = PostgresStore::open(&url).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|n| {
            let mut s = s.clone();
            std::thread::spawn(move || {
                for i in 0..10 {
                    s.record_delivery(&format!("t{n}-{i}"), "push", "", &[])
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut s = s;
    assert!(s.has_delivery("t7-9").unwrap());
}

/// `telbase env` and `telbase keys` against a PostgreSQL `TELBASE_DATABASE_URL`: the value
/// goes in, is listed masked, and no row of any table holds it (plain or hex).
#[test]
fn env_set_list_unset_through_the_binary_on_postgres() {
    let Some(db) = TestDb::new() else { return };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("telbase.yaml"),
        "version: 1\nproject: notes\napps:\n  web:\n    framework: nextjs\n",
    )
    .unwrap();
    let run = |args: &[&str], stdin: &[u8]| {
        use std::io::Write as _;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_telbase"))
            .args(args)
            .current_dir(dir.path())
            .env("TELBASE_DATABASE_URL", &db.url)
            .env("TELBASE_MASTER_KEY_FILE", dir.path().join("master.keys"))
            .env_remove("TELBASE_MASTER_KEY")
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "telbase {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    };
    const VALUE: &str = "sk_live_postgres_Zq81xW";
    run(&["keys", "rotate", "--generate"], b"");
    run(&["env", "set", "API_KEY"], VALUE.as_bytes());
    let list = run(&["env", "list"], b"");
    assert!(list.contains("API_KEY"), "{list}");
    assert!(!list.contains(VALUE), "{list}");
    let hex: String = VALUE.bytes().map(|b| format!("{b:02x}")).collect();
    for table in ["secret_names", "secret_values", "fingerprint_keys"] {
        let dump = db.rows(&format!("SELECT t::text FROM {table} t"));
        assert!(!dump.is_empty(), "{table} is empty");
        let text = format!("{dump:?}");
        assert!(!text.contains(VALUE) && !text.contains(&hex), "{table}");
    }
    let mut s = open(&db);
    let name = telbase::store::SecretName {
        project: "notes".into(),
        environment: "production".into(),
        name: "API_KEY".into(),
    };
    use telbase::store::SecretRows as _;
    assert_eq!(s.get_value(&name).unwrap().unwrap().value.version, 1);
    run(&["env", "unset", "API_KEY"], b"");
    assert!(s.get_value(&name).unwrap().is_none());
}

/// TLS is verified, not merely attempted: asking for TLS on the local server, whose
/// certificate no trusted root signed (Debian's self-signed one, or no TLS at all), fails
/// with an error naming the database and not the password.
#[test]
fn tls_to_an_untrusted_certificate_is_refused() {
    let Some(db) = TestDb::new() else { return };
    let url = format!("{}?sslmode=require", db.url);
    let err = PostgresStore::open(&PgUrl::parse(&url).unwrap()).unwrap_err();
    let text = err.to_string();
    eprintln!("{text}");
    assert!(matches!(err, StoreError::Postgres { .. }), "{err:?}");
    assert!(
        text.contains("127.0.0.1") || text.contains("localhost"),
        "{text}"
    );
    assert!(!text.contains("telbase-test"), "{text}");
    assert!(
        text.to_lowercase().contains("tls"),
        "says it is about TLS: {text}"
    );
}

/// Two rotations of one PostgreSQL store from different machines (different keyring files,
/// so the file lock beside each keyring cannot see the other): the store's own lock keeps
/// the second out while the first holds it.
#[test]
fn a_rotation_on_another_machine_waits_for_the_store_lock() {
    use telbase::store::SecretRows as _;
    let Some(db) = TestDb::new() else { return };
    let mut first = open(&db);
    let held = first.rotation_lock().unwrap().expect("free at first");
    let mut other = open(&db);
    assert!(
        other.rotation_lock().unwrap().is_none(),
        "held by the first"
    );
    let dir = tempfile::tempdir().unwrap();
    let err = telbase::secrets::stored::rotate_keyring(
        &mut other,
        &dir.path().join("master.keys"),
        true,
        10,
        |_| {},
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("another `telbase keys rotate`"),
        "{err}"
    );
    drop(held);
    assert!(
        other.rotation_lock().unwrap().is_some(),
        "freed with the guard"
    );
}

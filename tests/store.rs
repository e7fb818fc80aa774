//! The store: where it lives, how it is created (modes, WAL, migrations), and refusals (a
//! database from a newer Telbase, a world-readable file, PostgreSQL before `telbase serve`).

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;

use telbase::store::{self, Location, SecretName, SecretRows as _, SqliteStore, StoreError};

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
    let pg =
        Location::from_vars(vars(&[("TELBASE_DATABASE_URL", "postgres://u@h/db")])).unwrap_err();
    assert!(matches!(pg, StoreError::PostgresNotYet));
    assert!(pg.to_string().contains("telbase serve"));
    assert!(pg.to_string().contains("issue 6"));
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
    let dir = tempfile::tempdir().unwrap();
    let mut s = SqliteStore::open(&dir.path().join("t.db")).unwrap();
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

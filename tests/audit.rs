//! The tamper-evident audit log on both stores: an intact log verifies; each kind of
//! tampering (an edited field, a deleted record, swapped records, a truncated tail, a record
//! forged by SQL without the key, a moved head, a replaced or removed checkpoint) is found at
//! its first bad seq; pruning keeps verification passing and removes only old records;
//! concurrent writers (threads, and several PostgreSQL pools as replicas) make one gap-free
//! chain; details never carry a secret; `telbase audit verify|list|prune` through the binary;
//! and a property test: random appends plus one random tampering are always reported.

mod common;

use std::net::IpAddr;
use std::process::Command;

use chrono::{Duration, Utc};
use common::pg::{TestStore, stores};
use proptest::prelude::*;
use secrecy::SecretString;
use telbase::audit::{
    Action, Actor, AuditError, AuditEvent, AuditFilter, AuditKeys, AuditLog, AuditRows as _,
    Details, FindingKind, Outcome,
};
use telbase::store::Store;

const SECRET: [u8; 32] = [7; 32];

fn log() -> AuditLog {
    AuditLog::new(AuditKeys::from_secret(&SECRET))
}

fn event(i: i64) -> AuditEvent {
    let ip: IpAddr = format!("203.0.113.{}", i % 250).parse().unwrap();
    let (action, outcome) = match i % 4 {
        0 => (Action::AUTH_LOGIN, Outcome::Success),
        1 => (Action::AUTH_LOGIN_FAILED, Outcome::Failure),
        2 => (Action::CONFIG_ENV_SET, Outcome::Success),
        _ => (Action::ADMIN_MEMBER_ROLE_CHANGED, Outcome::Denied),
    };
    AuditEvent::new(
        Actor::user(format!("u{}", i % 3), format!("User {}", i % 3)),
        action,
        outcome,
    )
    .from(ip)
    .on("project", format!("acme-{i}"))
    .with(Details::new().text("role", "member").number("n", i))
}

fn append(store: &mut Store, n: i64) {
    for i in 0..n {
        log().record(store, &event(i)).unwrap();
    }
}

/// Runs raw SQL on the store under test, as someone with database access but no key would.
fn sql(ts: &TestStore, text: &str) {
    match ts {
        TestStore::Sqlite(dir) => rusqlite::Connection::open(dir.path().join("telbase.db"))
            .unwrap()
            .execute_batch(text)
            .unwrap(),
        TestStore::Postgres(db) => db.sql(text),
    }
}

fn finding(store: &mut Store) -> Option<(Option<i64>, FindingKind)> {
    log()
        .verify(store)
        .unwrap()
        .finding
        .map(|f| (f.seq, f.kind))
}

#[test]
fn an_intact_log_verifies_and_lists() {
    for ts in stores() {
        let mut s = ts.open();
        let v = log().verify(&mut s).unwrap();
        assert_eq!((v.records, v.finding), (0, None), "{}: empty", ts.name());
        append(&mut s, 12);
        let v = log().verify(&mut s).unwrap();
        assert_eq!(v.finding, None, "{}", ts.name());
        assert_eq!((v.records, v.first_seq, v.head_seq), (12, 1, 12));
        // Filters: action exact and by category prefix, actor, limit, newest first.
        let all = AuditLog::list(&mut s, &AuditFilter::default()).unwrap();
        assert_eq!(all.len(), 12);
        assert_eq!(all[0].seq, 12, "newest first");
        let logins = AuditLog::list(
            &mut s,
            &AuditFilter {
                action: Some("auth.login".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(logins.len(), 3, "{}", ts.name());
        let auth = AuditLog::list(
            &mut s,
            &AuditFilter {
                action: Some("auth.*".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            auth.len(),
            6,
            "{}: auth.login and auth.login_failed",
            ts.name()
        );
        let u1 = AuditLog::list(
            &mut s,
            &AuditFilter {
                actor: Some("u1".into()),
                limit: 2,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(u1.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![11, 8]);
        let page2 = AuditLog::list(
            &mut s,
            &AuditFilter {
                before_seq: Some(3),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(page2.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2, 1]);
        let future = AuditLog::list(
            &mut s,
            &AuditFilter {
                since: Some(Utc::now() + Duration::hours(1)),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(future.is_empty());
        let view = all[0].view();
        assert_eq!(view["category"], "administrative");
        assert_eq!(view["source"], "203.0.113.11");
        assert_eq!(view["details"]["role"], "member");
    }
}

#[test]
fn an_edited_field_is_found() {
    for ts in stores() {
        let mut s = ts.open();
        append(&mut s, 6);
        sql(
            &ts,
            "UPDATE audit_records SET outcome = 'success' WHERE seq = 4",
        );
        assert_eq!(
            finding(&mut s),
            Some((Some(4), FindingKind::Edited)),
            "{}",
            ts.name()
        );
    }
}

#[test]
fn an_edited_time_or_details_is_found() {
    for ts in stores() {
        let mut s = ts.open();
        append(&mut s, 5);
        sql(
            &ts,
            "UPDATE audit_records SET at_ms = at_ms - 1 WHERE seq = 2",
        );
        assert_eq!(finding(&mut s), Some((Some(2), FindingKind::Edited)));
        sql(
            &ts,
            "UPDATE audit_records SET at_ms = at_ms + 1 WHERE seq = 2",
        );
        assert_eq!(finding(&mut s), None, "{}: restored", ts.name());
        sql(
            &ts,
            "UPDATE audit_records SET details = '{\"n\":2,\"role\":\"owner\"}' WHERE seq = 3",
        );
        assert_eq!(finding(&mut s), Some((Some(3), FindingKind::Edited)));
    }
}

#[test]
fn a_deleted_middle_record_is_found() {
    for ts in stores() {
        let mut s = ts.open();
        append(&mut s, 7);
        sql(&ts, "DELETE FROM audit_records WHERE seq = 3");
        assert_eq!(
            finding(&mut s),
            Some((Some(3), FindingKind::Deleted)),
            "{}",
            ts.name()
        );
    }
}

#[test]
fn swapped_records_are_found() {
    for ts in stores() {
        let mut s = ts.open();
        append(&mut s, 6);
        sql(
            &ts,
            "UPDATE audit_records SET seq = -1 WHERE seq = 3;
             UPDATE audit_records SET seq = 3 WHERE seq = 4;
             UPDATE audit_records SET seq = 4 WHERE seq = -1;",
        );
        assert_eq!(
            finding(&mut s),
            Some((Some(3), FindingKind::Reordered)),
            "{}",
            ts.name()
        );
    }
}

#[test]
fn a_truncated_tail_is_found() {
    for ts in stores() {
        let mut s = ts.open();
        append(&mut s, 8);
        sql(&ts, "DELETE FROM audit_records WHERE seq >= 7");
        assert_eq!(
            finding(&mut s),
            Some((Some(7), FindingKind::Truncated)),
            "{}",
            ts.name()
        );
        // Moving the head back to the new last record (values copied from it) does not
        // hide it: the head's MAC needs the key.
        sql(
            &ts,
            "UPDATE audit_head SET seq = 6, mac = (SELECT mac FROM audit_records WHERE seq = 6)",
        );
        assert_eq!(finding(&mut s), Some((None, FindingKind::HeadAltered)));
        // And appending onto a moved head is refused rather than laundering it.
        let e = log().record(&mut s, &event(1)).unwrap_err();
        assert!(matches!(e, AuditError::Damaged(_)), "{e}");
    }
}

#[test]
fn a_record_forged_without_the_key_is_found() {
    for ts in stores() {
        let mut s = ts.open();
        append(&mut s, 4);
        // A plausible row: right seq, right prev link, a made-up MAC.
        sql(
            &ts,
            "INSERT INTO audit_records (seq, at_ms, actor_kind, actor_id, actor_display, action,
                 source, target_type, target_id, outcome, details, key_id, prev_mac, mac)
             SELECT 5, at_ms + 1, 'user', 'u0', 'User 0', 'auth.logout', NULL, NULL, NULL,
                 'success', '{}', key_id, mac,
                 'ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12'
             FROM audit_records WHERE seq = 4",
        );
        assert_eq!(
            finding(&mut s),
            Some((Some(5), FindingKind::Forged)),
            "{}",
            ts.name()
        );
        // Moving the head onto it as well is the head's own finding.
        sql(
            &ts,
            "UPDATE audit_head SET seq = 5, mac = 'ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12'",
        );
        assert_eq!(finding(&mut s), Some((None, FindingKind::HeadAltered)));
    }
}

#[test]
fn another_key_cannot_verify_or_forge() {
    for ts in stores() {
        let mut s = ts.open();
        append(&mut s, 3);
        let other = AuditLog::new(AuditKeys::from_secret(&[8; 32]));
        let f = other.verify(&mut s).unwrap().finding.unwrap();
        assert_eq!(f.kind, FindingKind::WrongKey, "{f}");
        assert!(
            f.to_string().contains(AuditKeys::from_secret(&SECRET).id()),
            "{f}"
        );
        // A record sealed by another key onto a forged head is still found by the real one.
        let e = other.record(&mut s, &event(9)).unwrap_err();
        assert!(matches!(e, AuditError::Damaged(_)), "{e}");
        assert_eq!(finding(&mut s), None, "nothing was written");
    }
}

fn old_event(i: i64, days_ago: i64) -> AuditEvent {
    event(i).at(Utc::now() - Duration::days(days_ago))
}

#[test]
fn pruning_keeps_verification_and_removes_only_old_records() {
    for ts in stores() {
        let mut s = ts.open();
        for i in 0..5 {
            log().record(&mut s, &old_event(i, 120)).unwrap();
        }
        for i in 5..8 {
            log().record(&mut s, &old_event(i, 10)).unwrap();
        }
        let report = log().prune(&mut s, Utc::now()).unwrap();
        assert_eq!(report.pruned, 5, "{}", ts.name());
        let cp = report.checkpoint.unwrap();
        assert_eq!((cp.number, cp.first_kept), (1, 6));
        let v = log().verify(&mut s).unwrap();
        assert_eq!(v.finding, None, "{}: {:?}", ts.name(), v.finding);
        assert_eq!(
            (v.records, v.first_seq, v.head_seq, v.checkpoints),
            (3, 6, 8, 1)
        );
        // Nothing more to prune; appends continue the chain after the checkpoint.
        assert_eq!(log().prune(&mut s, Utc::now()).unwrap().pruned, 0);
        append(&mut s, 2);
        assert_eq!(finding(&mut s), None);
        // A second prune (everything older than a day from "now + 30 days") chains a second
        // checkpoint, and an empty chain still verifies against its checkpoint.
        let report = log()
            .prune(&mut s, Utc::now() + Duration::days(100))
            .unwrap();
        assert_eq!(report.pruned, 5);
        let v = log().verify(&mut s).unwrap();
        assert_eq!(v.finding, None, "{:?}", v.finding);
        assert_eq!((v.records, v.checkpoints, v.head_seq), (0, 2, 10));
        append(&mut s, 1);
        let v = log().verify(&mut s).unwrap();
        assert_eq!((v.finding, v.first_seq, v.head_seq), (None, 11, 11));
    }
}

#[test]
fn a_replaced_or_removed_checkpoint_is_found() {
    for ts in stores() {
        let mut s = ts.open();
        for i in 0..4 {
            log().record(&mut s, &old_event(i, 200)).unwrap();
        }
        log().prune(&mut s, Utc::now()).unwrap();
        for i in 4..8 {
            log().record(&mut s, &old_event(i, 150)).unwrap();
        }
        append(&mut s, 2);
        log().prune(&mut s, Utc::now()).unwrap();
        assert_eq!(finding(&mut s), None, "{}", ts.name());
        // Hiding a deletion by moving the checkpoint's first kept record: its signature
        // no longer verifies.
        sql(
            &ts,
            "UPDATE audit_checkpoints SET first_kept = 10, pruned = 5 WHERE number = 2",
        );
        assert_eq!(
            finding(&mut s),
            Some((Some(2), FindingKind::CheckpointForged)),
            "{}",
            ts.name()
        );
        sql(
            &ts,
            "UPDATE audit_checkpoints SET first_kept = 9, pruned = 4 WHERE number = 2",
        );
        assert_eq!(finding(&mut s), None);
        // Removing the newest checkpoint (so the older one governs) is counted by the head.
        sql(&ts, "DELETE FROM audit_checkpoints WHERE number = 2");
        assert_eq!(
            finding(&mut s),
            Some((Some(2), FindingKind::CheckpointMissing))
        );
    }
}

#[test]
fn a_forged_checkpoint_row_is_found() {
    for ts in stores() {
        let mut s = ts.open();
        for i in 0..4 {
            log().record(&mut s, &old_event(i, 200)).unwrap();
        }
        append(&mut s, 2);
        log().prune(&mut s, Utc::now()).unwrap();
        // Replace the checkpoint by one claiming more was pruned, signed with another key.
        let other = AuditLog::new(AuditKeys::from_secret(&[9; 32]));
        let ts2 = stores().remove(0);
        let mut s2 = ts2.open();
        for i in 0..5 {
            other.record(&mut s2, &old_event(i, 200)).unwrap();
        }
        other.prune(&mut s2, Utc::now()).unwrap();
        let sig = s2.audit_checkpoints().unwrap()[0].signature.clone();
        sql(
            &ts,
            &format!(
                "UPDATE audit_checkpoints SET first_kept = 6, pruned = 5, signature = '{sig}' WHERE number = 1;
                 DELETE FROM audit_records WHERE seq = 5;"
            ),
        );
        assert_eq!(
            finding(&mut s),
            Some((Some(1), FindingKind::CheckpointForged)),
            "{}",
            ts.name()
        );
    }
}

#[test]
fn pruning_refuses_a_tampered_log() {
    for ts in stores() {
        let mut s = ts.open();
        for i in 0..4 {
            log().record(&mut s, &old_event(i, 200)).unwrap();
        }
        sql(
            &ts,
            "UPDATE audit_records SET actor_id = 'someone' WHERE seq = 2",
        );
        let e = log().prune(&mut s, Utc::now()).unwrap_err();
        assert!(matches!(e, AuditError::PruneRefused(_)), "{e}");
        assert_eq!(
            finding(&mut s),
            Some((Some(2), FindingKind::Edited)),
            "evidence kept"
        );
    }
}

#[test]
fn concurrent_writers_make_one_gap_free_chain() {
    for ts in stores() {
        // Each thread opens its own store: its own SQLite connection, or its own PostgreSQL
        // pool (as separate replicas would).
        let location = ts.location();
        let threads: Vec<_> = (0..6)
            .map(|t| {
                let location = location.clone();
                std::thread::spawn(move || {
                    let mut s = telbase::store::open(&location).unwrap();
                    (0..15)
                        .map(|i| log().record(&mut s, &event(t * 100 + i)).unwrap())
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        let mut seqs: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        seqs.sort();
        assert_eq!(seqs, (1..=90).collect::<Vec<u64>>(), "{}", ts.name());
        let mut s = ts.open();
        let v = log().verify(&mut s).unwrap();
        assert_eq!(
            (v.records, v.head_seq, v.finding),
            (90, 90, None),
            "{}",
            ts.name()
        );
    }
}

#[test]
fn records_never_hold_a_secret() {
    for ts in stores() {
        let mut s = ts.open();
        let token = SecretString::from("tbt_live_9fQ2xZ7LmN4pR8sT1vW3yB6cD0eF5gH".to_owned());
        // Refused: the token itself in the details, under any key, or as the actor id.
        for bad in [
            Details::new().text("token", "tbt_live_9fQ2xZ7LmN4pR8sT1vW3yB6cD0eF5gH"),
            Details::new().text("note", "tbt_live_9fQ2xZ7LmN4pR8sT1vW3yB6cD0eF5gH"),
            Details::new().text("session", "abc"),
        ] {
            let e = log().record(&mut s, &event(0).with(bad)).unwrap_err();
            assert!(matches!(e, AuditError::SecretInDetails { .. }), "{e}");
            assert!(!e.to_string().contains("9fQ2xZ7L"), "{e}");
        }
        let e = log()
            .record(
                &mut s,
                &AuditEvent::new(
                    Actor::token("tbt_live_9fQ2xZ7LmN4pR8sT1vW3yB6cD0eF5gH", "ci"),
                    Action::API_ACCESS,
                    Outcome::Success,
                ),
            )
            .unwrap_err();
        assert!(matches!(e, AuditError::SecretInDetails { .. }), "{e}");
        // Accepted: its keyed fingerprint, stable for the same value and purpose.
        let fp = log().fingerprint("api_token", &token).unwrap();
        assert_eq!(fp, log().fingerprint("api_token", &token).unwrap());
        assert_ne!(fp, log().fingerprint("session", &token).unwrap());
        log()
            .record(
                &mut s,
                &AuditEvent::new(
                    Actor::token("tok_42", "ci deploy token"),
                    Action::ACCESS_TOKEN_REVOKED,
                    Outcome::Success,
                )
                .on("token", "tok_42")
                .with(Details::new().fingerprint("token", &fp)),
            )
            .unwrap();
        let stored = AuditLog::list(&mut s, &AuditFilter::default()).unwrap();
        assert_eq!(stored.len(), 1, "refused events wrote nothing");
        let text = format!("{stored:?}");
        assert!(!text.contains("9fQ2xZ7L"), "{text}");
        assert!(stored[0].details.contains("hmac-sha256:"));
        assert_eq!(finding(&mut s), None);
    }
}

#[test]
fn without_a_key_nothing_is_recorded() {
    let ts = stores().remove(0);
    let mut s = ts.open();
    let e = AuditLog::without_key()
        .record(&mut s, &event(0))
        .unwrap_err();
    assert!(matches!(e, AuditError::NoKey), "{e}");
    assert!(e.to_string().contains("TELBASE_AUDIT_KEY"), "{e}");
    assert!(
        AuditLog::list(&mut s, &AuditFilter::default())
            .unwrap()
            .is_empty()
    );
    // A key that is set but unusable is an error, not "no key".
    let e =
        AuditLog::from_vars(|k| (k == "TELBASE_AUDIT_KEY").then(|| "c2hvcnQ=".into())).unwrap_err();
    assert!(e.to_string().contains("32 bytes"), "{e}");
}

// ---- the binary --------------------------------------------------------------------------

fn telbase(ts: &TestStore, key_file: &std::path::Path, args: &[&str]) -> std::process::Output {
    let url = match ts {
        TestStore::Sqlite(dir) => dir.path().join("telbase.db").display().to_string(),
        TestStore::Postgres(db) => db.url.clone(),
    };
    Command::new(env!("CARGO_BIN_EXE_telbase"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TELBASE_DATABASE_URL", url)
        .env("TELBASE_AUDIT_KEY_FILE", key_file)
        .output()
        .unwrap()
}

#[test]
fn the_cli_verifies_lists_and_prunes_with_exit_codes() {
    for ts in stores() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("audit.key");
        let out = Command::new(env!("CARGO_BIN_EXE_telbase"))
            .args(["audit", "keygen", "--out"])
            .arg(&key)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let keys = AuditKeys::read_file(&key).unwrap();
        let cli_log = AuditLog::new(keys);
        let mut s = ts.open();
        for i in 0..3 {
            cli_log.record(&mut s, &old_event(i, 100)).unwrap();
        }
        for i in 3..6 {
            cli_log.record(&mut s, &event(i)).unwrap();
        }
        let out = telbase(&ts, &key, &["audit", "verify"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {stdout}{}",
            ts.name(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("intact: 6 records"), "{stdout}");

        let out = telbase(
            &ts,
            &key,
            &["audit", "list", "--action", "auth.*", "--format", "json"],
        );
        assert_eq!(out.status.code(), Some(0));
        let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let seqs: Vec<i64> = listed
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["seq"].as_i64().unwrap())
            .collect();
        assert_eq!(seqs, vec![6, 5, 2, 1], "{}", ts.name());
        let out = telbase(
            &ts,
            &key,
            &["audit", "list", "--since", "30d", "--actor", "u0"],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.contains("auth.login_failed") || text.contains("admin.member_role_changed"),
            "{text}"
        );
        let out = telbase(&ts, &key, &["audit", "list", "--action", "nope"]);
        assert_eq!(out.status.code(), Some(2));

        let out = telbase(&ts, &key, &["audit", "prune"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("pruned 3 records"));
        assert_eq!(
            telbase(&ts, &key, &["audit", "verify"]).status.code(),
            Some(0)
        );

        sql(
            &ts,
            "UPDATE audit_records SET action = 'auth.logout' WHERE seq = 5",
        );
        let out = telbase(&ts, &key, &["audit", "verify"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{stdout}");
        assert!(stdout.contains("seq 5: edited"), "{stdout}");
        assert_eq!(
            telbase(&ts, &key, &["audit", "prune", "--older-than", "90d"])
                .status
                .code(),
            Some(1)
        );
        // Less than the promised 90 days is refused before anything is read.
        let out = telbase(&ts, &key, &["audit", "prune", "--older-than", "89d"]);
        assert_eq!(out.status.code(), Some(2));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("at least 90d"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        // Could not run: no key, or a key file others can read.
        let out = telbase(&ts, &dir.path().join("missing.key"), &["audit", "verify"]);
        assert_eq!(out.status.code(), Some(2));
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let out = telbase(&ts, &key, &["audit", "verify"]);
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
    }
}

// ---- property --------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Tamper {
    Edit { at: usize, column: usize },
    Delete { at: usize },
    Swap { at: usize },
    Truncate { keep: usize },
    Forge,
}

fn tamper() -> impl Strategy<Value = Tamper> {
    prop_oneof![
        (0usize..100, 0usize..9).prop_map(|(at, column)| Tamper::Edit { at, column }),
        (0usize..100).prop_map(|at| Tamper::Delete { at }),
        (0usize..100).prop_map(|at| Tamper::Swap { at }),
        (0usize..100).prop_map(|keep| Tamper::Truncate { keep }),
        Just(Tamper::Forge),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random appends (and sometimes a prune first), then one random tampering by SQL: verify
    /// always reports it, at or before the first record it touched.
    #[test]
    fn any_tampering_is_reported(
        n in 2i64..14,
        old in 0i64..4,
        kinds in proptest::collection::vec(0i64..4, 14),
        t in tamper(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let ts = TestStore::Sqlite(dir);
        let mut s = ts.open();
        for i in 0..old {
            log().record(&mut s, &old_event(i, 100)).unwrap();
        }
        for i in 0..n {
            log().record(&mut s, &event(kinds[i as usize] + 4 * i)).unwrap();
        }
        if old > 0 {
            log().prune(&mut s, Utc::now()).unwrap();
        }
        prop_assert_eq!(finding(&mut s), None);
        let first = old + 1;
        let last = old + n;
        let pick = |x: usize| first + (x as i64 % n);
        let statement = match t {
            Tamper::Edit { at, column } => {
                let col = ["at_ms = at_ms + 1", "actor_kind = 'system'", "actor_id = 'x'",
                    "actor_display = 'x'", "action = 'auth.logout'", "source = '198.51.100.1'",
                    "target_id = 'other'", "outcome = outcome || 'x'", "details = '{}'"][column];
                format!("UPDATE audit_records SET {col} WHERE seq = {}", pick(at))
            }
            Tamper::Delete { at } => format!("DELETE FROM audit_records WHERE seq = {}", pick(at)),
            Tamper::Swap { at } => {
                let a = first + (at as i64 % (n - 1));
                format!("UPDATE audit_records SET seq = -1 WHERE seq = {a};
                         UPDATE audit_records SET seq = {a} WHERE seq = {};
                         UPDATE audit_records SET seq = {} WHERE seq = -1;", a + 1, a + 1)
            }
            Tamper::Truncate { keep } => {
                format!("DELETE FROM audit_records WHERE seq > {}", first - 1 + (keep as i64 % n))
            }
            Tamper::Forge => format!(
                "INSERT INTO audit_records SELECT {} , at_ms, actor_kind, actor_id, actor_display,
                    action, source, target_type, target_id, outcome, details, key_id, mac, mac
                 FROM audit_records WHERE seq = {last}", last + 1),
        };
        sql(&ts, &statement);
        let f = log().verify(&mut s).unwrap().finding;
        prop_assert!(f.is_some(), "not found: {:?} ({})", t, statement);
    }
}

/// As the server shares one PostgreSQL pool between its handlers: clones of one store, each
/// append on whichever pooled connection is free, and a second store as another replica.
#[test]
fn a_shared_postgres_pool_and_a_second_replica_make_one_chain() {
    let Some(db) = common::pg::TestDb::new() else {
        return;
    };
    let url = telbase::store::PgUrl::parse(&db.url).unwrap();
    let replicas = [
        telbase::store::PostgresStore::open(&url).unwrap(),
        telbase::store::PostgresStore::open(&url).unwrap(),
    ];
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let mut s = replicas[t % 2].clone();
            std::thread::spawn(move || {
                for i in 0..10 {
                    log().record(&mut s, &event(i)).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut s = replicas[0].clone();
    let v = log().verify(&mut s).unwrap();
    assert_eq!((v.records, v.head_seq, v.finding), (80, 80, None));
}

/// `telbase audit verify` on a live server: appends (and a prune) while verifying are not
/// findings.
#[test]
fn verifying_while_others_append_and_prune_finds_nothing() {
    for ts in stores() {
        let mut s = ts.open();
        for i in 0..40 {
            log().record(&mut s, &old_event(i, 200)).unwrap();
        }
        let location = ts.location();
        let writer = std::thread::spawn(move || {
            let mut s = telbase::store::open(&location).unwrap();
            for i in 0..60 {
                log().record(&mut s, &event(i)).unwrap();
                if i == 30 {
                    assert_eq!(log().prune(&mut s, Utc::now()).unwrap().pruned, 40);
                }
            }
        });
        let mut rounds = 0;
        while !writer.is_finished() || rounds == 0 {
            let v = log().verify(&mut s).unwrap();
            assert_eq!(v.finding, None, "{}: round {rounds}", ts.name());
            rounds += 1;
        }
        writer.join().unwrap();
        let v = log().verify(&mut s).unwrap();
        assert_eq!(
            (v.finding, v.head_seq, v.records),
            (None, 100, 60),
            "{}",
            ts.name()
        );
    }
}

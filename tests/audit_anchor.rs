//! The audit head anchor, on SQLite and PostgreSQL: cutting off the newest records and
//! putting back an older, genuine head row (as restoring it from a backup would) passes the
//! chain's own verification, and is found with an anchor taken before; an intact log and a
//! longer one pass the anchor; a wrong MAC is reported; `telbase audit head` and `verify
//! --expect-seq/--expect-mac` do this from the command line with their exit codes.

mod common;

use std::net::IpAddr;

use base64::Engine as _;
use telbase::audit::anchor::{self, AnchorCheck};
use telbase::audit::{Action, Actor, AuditEvent, AuditKeys, AuditLog, Outcome};
use telbase::control::db::Db;
use telbase::store::Store;

use common::pg::stores;

const SECRET: [u8; 32] = [5; 32];

fn log() -> AuditLog {
    AuditLog::new(AuditKeys::from_secret(&SECRET))
}

fn append(s: &mut Store, n: i64) {
    for i in 0..n {
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        let e = AuditEvent::new(
            Actor::user(format!("u{i}"), "User"),
            Action::AUTH_LOGIN,
            Outcome::Success,
        )
        .from(ip);
        log().record(s, &e).unwrap();
    }
}

/// The head row as it is now (what a backup of it holds).
fn head_row(s: &mut Store) -> (i64, String, i64, String) {
    let r = s
        .row(
            "SELECT seq, mac, checkpoints, head_mac FROM audit_head WHERE id = 1",
            &[],
        )
        .unwrap()
        .unwrap();
    (r[0].int(), r[1].text(), r[2].int(), r[3].text())
}

fn check(s: &mut Store, seq: i64, mac: &str) -> AnchorCheck {
    let v = log().verify(s).unwrap();
    assert!(v.finding.is_none(), "{:?}", v.finding);
    anchor::check(s, &v, seq, mac).unwrap()
}

#[test]
fn a_truncation_behind_a_restored_head_is_found_with_an_anchor() {
    for ts in stores() {
        let mut s = ts.open();
        append(&mut s, 5);
        let backup = head_row(&mut s);
        append(&mut s, 3);
        let a = anchor::head(&log(), &mut s).unwrap().unwrap();
        assert_eq!(a.seq, 8, "{}", ts.name());
        assert_eq!(
            check(&mut s, a.seq, &a.mac),
            AnchorCheck::Holds,
            "{}",
            ts.name()
        );
        // A longer log still reaches the anchor; the MAC may be typed in capitals.
        append(&mut s, 2);
        assert_eq!(
            check(&mut s, a.seq, &a.mac.to_ascii_uppercase()),
            AnchorCheck::Holds
        );
        // A wrong MAC for that record.
        let wrong = format!("{}0", &a.mac[..63]);
        let wrong = if wrong == a.mac {
            format!("{}1", &a.mac[..63])
        } else {
            wrong
        };
        assert_eq!(
            check(&mut s, a.seq, &wrong),
            AnchorCheck::Differs { seq: a.seq },
            "{}",
            ts.name()
        );
        // Cut the newest records off and put back the head row of seq 5.
        s.exec("DELETE FROM audit_records WHERE seq > 5", &[])
            .unwrap();
        s.exec(
            "UPDATE audit_head SET seq = $1, mac = $2, checkpoints = $3, head_mac = $4 WHERE id = 1",
            &[
                backup.0.into(),
                backup.1.clone().into(),
                backup.2.into(),
                backup.3.clone().into(),
            ],
        )
        .unwrap();
        // The chain alone cannot tell...
        let v = log().verify(&mut s).unwrap();
        assert!(v.finding.is_none(), "{}: {:?}", ts.name(), v.finding);
        assert_eq!(v.head_seq, 5);
        // ...the anchor can.
        assert_eq!(
            anchor::check(&mut s, &v, a.seq, &a.mac).unwrap(),
            AnchorCheck::Truncated { head_seq: 5 },
            "{}",
            ts.name()
        );
        // Refilled past the anchor with new records: the anchored one differs.
        append(&mut s, 6);
        assert_eq!(
            check(&mut s, a.seq, &a.mac),
            AnchorCheck::Differs { seq: a.seq },
            "{}",
            ts.name()
        );
    }
}

#[test]
fn an_empty_or_tampered_log_gives_no_anchor() {
    let dir = tempfile::tempdir().unwrap();
    let mut s =
        telbase::store::open(&telbase::store::Location::Sqlite(dir.path().join("db"))).unwrap();
    assert!(anchor::head(&log(), &mut s).unwrap().is_none());
    append(&mut s, 3);
    s.exec(
        "UPDATE audit_records SET actor_id = 'mallory' WHERE seq = 2",
        &[],
    )
    .unwrap();
    assert!(anchor::head(&log(), &mut s).is_err());
}

#[test]
fn head_and_anchored_verify_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("telbase.db");
    let mut s = telbase::store::open(&telbase::store::Location::Sqlite(db.clone())).unwrap();
    append(&mut s, 4);
    let key = base64::engine::general_purpose::STANDARD.encode(SECRET);
    let telbase = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_telbase"))
            .args(args)
            .env("TELBASE_DATABASE_URL", format!("sqlite:{}", db.display()))
            .env("TELBASE_AUDIT_KEY", &key)
            .env_remove("TELBASE_AUDIT_KEY_FILE")
            .output()
            .unwrap()
    };
    let out = telbase(&["audit", "head", "--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(head["seq"], 4);
    let mac = head["mac"].as_str().unwrap().to_owned();
    assert_eq!(
        head["verify"],
        format!("telbase audit verify --expect-seq 4 --expect-mac {mac}")
    );
    let text = telbase(&["audit", "head"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains(&format!("mac {mac}")));
    let ok = telbase(&["audit", "verify", "--expect-seq", "4", "--expect-mac", &mac]);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("anchor holds"));
    // Truncate behind a restored head: plain verify passes, the anchored one fails (1).
    let backup = head_row(&mut s);
    append(&mut s, 2);
    let later = anchor::head(&log(), &mut s).unwrap().unwrap();
    s.exec("DELETE FROM audit_records WHERE seq > 4", &[])
        .unwrap();
    s.exec(
        "UPDATE audit_head SET seq = $1, mac = $2, checkpoints = $3, head_mac = $4 WHERE id = 1",
        &[
            backup.0.into(),
            backup.1.into(),
            backup.2.into(),
            backup.3.into(),
        ],
    )
    .unwrap();
    assert_eq!(telbase(&["audit", "verify"]).status.code(), Some(0));
    let seq = later.seq.to_string();
    let bad = telbase(&[
        "audit",
        "verify",
        "--expect-seq",
        &seq,
        "--expect-mac",
        &later.mac,
    ]);
    assert_eq!(
        bad.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&bad.stdout)
    );
    assert!(String::from_utf8_lossy(&bad.stdout).contains("TAMPERED: truncated"));
    // Half an anchor, or a malformed MAC, is a usage error.
    assert_eq!(
        telbase(&["audit", "verify", "--expect-seq", "4"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        telbase(&[
            "audit",
            "verify",
            "--expect-seq",
            "4",
            "--expect-mac",
            "xyz"
        ])
        .status
        .code(),
        Some(2)
    );
}

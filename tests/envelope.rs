//! The AES-256-GCM envelope of stored secrets: round trips, tampering, records moved onto
//! other records, master key rotation, keyring parsing and fingerprints. Property tests draw
//! plaintexts, names and the bit to flip.

use proptest::prelude::*;
use secrecy::ExposeSecret as _;
use telbase::secrets::envelope::{
    self, Envelope, EnvelopeError, KeyProvider as _, Keyring, keyring_from_vars,
};
use telbase::secrets::stored;
use telbase::store::{RowRef, SecretName, SecretRows as _, SqliteStore};

const K1: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="; // bytes 0..32
const K2: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="; // bytes 32..64

fn keyring() -> Keyring {
    Keyring::parse(&format!("old {K1} retired\nnew {K2}\n"), "test").unwrap()
}

fn name(project: &str, environment: &str, n: &str) -> SecretName {
    SecretName {
        project: project.into(),
        environment: environment.into(),
        name: n.into(),
    }
}

fn arb_name() -> impl Strategy<Value = SecretName> {
    (
        "[a-z]{1,8}",
        prop_oneof![Just("production"), Just("preview")],
        "[A-Z_]{1,12}",
    )
        .prop_map(|(p, e, n)| name(&p, e, &n))
}

fn open(
    keys: &Keyring,
    n: &SecretName,
    version: i64,
    e: &Envelope,
) -> Result<Vec<u8>, EnvelopeError> {
    envelope::open(keys, n, version, e).map(|p| p.to_vec())
}

fn copy(e: &Envelope) -> Envelope {
    Envelope {
        key_id: e.key_id.clone(),
        wrapped_key: e.wrapped_key.clone(),
        ciphertext: e.ciphertext.clone(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn seal_then_open_round_trips(n in arb_name(), version in 1i64..1000, plain in proptest::collection::vec(any::<u8>(), 0..300)) {
        let keys = keyring();
        let e = envelope::seal(&keys, &n, version, &plain).unwrap();
        prop_assert_eq!(&e.key_id, "new");
        prop_assert_eq!(e.wrapped_key.len(), envelope::WRAPPED_LEN);
        // Format byte, nonce, ciphertext, tag: nothing else, and not the plaintext.
        prop_assert_eq!(e.ciphertext.len(), 1 + 12 + plain.len() + 16);
        prop_assert_eq!(open(&keys, &n, version, &e).unwrap(), plain);
    }

    #[test]
    fn a_flipped_bit_anywhere_fails(n in arb_name(), plain in proptest::collection::vec(any::<u8>(), 1..100), pos in any::<prop::sample::Index>(), bit in 0u8..8, in_wrapped in any::<bool>()) {
        let keys = keyring();
        let e = envelope::seal(&keys, &n, 3, &plain).unwrap();
        let mut bad = copy(&e);
        let blob = if in_wrapped { &mut bad.wrapped_key } else { &mut bad.ciphertext };
        let i = pos.index(blob.len());
        blob[i] ^= 1 << bit;
        prop_assert!(open(&keys, &n, 3, &bad).is_err(), "flipping bit {} of byte {} went unnoticed", bit, i);
    }

    #[test]
    fn a_record_moved_to_another_record_fails(a in arb_name(), b in arb_name(), va in 1i64..50, vb in 1i64..50, plain in proptest::collection::vec(any::<u8>(), 0..64)) {
        prop_assume!(a != b || va != vb);
        let keys = keyring();
        let ea = envelope::seal(&keys, &a, va, &plain).unwrap();
        let eb = envelope::seal(&keys, &b, vb, b"the other value").unwrap();
        // The whole row (wrapped key and ciphertext) copied onto b's identity.
        prop_assert!(open(&keys, &b, vb, &ea).is_err());
        // Only the ciphertext moved, with b's own (valid) wrapped key.
        let mixed = Envelope { key_id: eb.key_id.clone(), wrapped_key: eb.wrapped_key.clone(), ciphertext: ea.ciphertext.clone() };
        prop_assert!(open(&keys, &b, vb, &mixed).is_err());
        // Only the wrapped key moved.
        let mixed = Envelope { key_id: ea.key_id.clone(), wrapped_key: ea.wrapped_key.clone(), ciphertext: eb.ciphertext.clone() };
        prop_assert!(open(&keys, &b, vb, &mixed).is_err());
        // Each still opens in its own place.
        prop_assert_eq!(open(&keys, &a, va, &ea).unwrap(), plain);
    }

    #[test]
    fn rotation_keeps_every_value_readable(values in proptest::collection::btree_map("[A-Z]{1,6}", proptest::collection::vec(any::<u8>(), 0..40), 1..20), rotations in 1usize..4, batch in 1usize..7) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        let keyfile = dir.path().join("keys");
        let first = stored::rotate_keyring(&mut store, &keyfile, true, batch, |_| {}).unwrap();
        let keys = envelope::read_keyring_file(&keyfile).unwrap();
        for (k, v) in &values {
            stored::set(&mut store, &keys, &name("p", "production", k), v).unwrap();
        }
        let mut previous = first.target;
        for _ in 0..rotations {
            let r = stored::rotate_keyring(&mut store, &keyfile, true, batch, |_| {}).unwrap();
            // Every value's data key plus the fingerprint key.
            prop_assert_eq!(r.rewrapped, values.len() + 1);
            prop_assert_eq!(&r.retired, &vec![previous.clone()]);
            previous = r.target;
        }
        let keys = envelope::read_keyring_file(&keyfile).unwrap();
        prop_assert_eq!(keys.keys().len(), rotations + 1);
        prop_assert_eq!(keys.keys().iter().filter(|k| !k.retired).count(), 1);
        prop_assert_eq!(store.key_usage().unwrap(), vec![(previous.clone(), values.len() as u64 + 1)]);
        for (k, v) in &values {
            let (plain, _) = stored::open(&mut store, &keys, &name("p", "production", k)).unwrap().unwrap();
            prop_assert_eq!(&plain[..], &v[..]);
        }
    }
}

#[test]
fn a_wrapped_key_relabelled_with_another_key_id_fails_even_for_equal_key_bytes() {
    // Two ids holding the same bytes: only the key id in the additional data tells them
    // apart, and it must.
    let keys = Keyring::parse(&format!("a {K1}\nb {K1}\n"), "test").unwrap();
    let n = name("p", "production", "K");
    let e = envelope::seal(&keys, &n, 1, b"v").unwrap();
    assert_eq!(e.key_id, "b");
    let mut relabelled = copy(&e);
    relabelled.key_id = "a".into();
    let err = open(&keys, &n, 1, &relabelled).unwrap_err();
    assert!(
        matches!(err, EnvelopeError::Authentication { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("production/K"), "{err}");
}

#[test]
fn an_unknown_key_id_names_the_key() {
    let keys = keyring();
    let n = name("p", "production", "K");
    let mut e = envelope::seal(&keys, &n, 1, b"v").unwrap();
    e.key_id = "gone".into();
    let err = open(&keys, &n, 1, &e).unwrap_err();
    assert!(matches!(&err, EnvelopeError::UnknownKey { key_id, .. } if key_id == "gone"));
}

#[test]
fn retired_keys_still_open_but_never_wrap() {
    let keys = keyring();
    let n = name("p", "production", "K");
    let mut e = envelope::seal(&keys, &n, 1, b"v").unwrap();
    assert_eq!(e.key_id, "new");
    // A row wrapped under the retired key (as in a restored backup) still opens.
    let row = RowRef::Value {
        name: n.clone(),
        version: 1,
    };
    let dk = envelope::unwrap_for(&keys, &row, "new", &e.wrapped_key).unwrap();
    e.wrapped_key = envelope::wrap_for(&keys, &row, "old", &dk).unwrap();
    e.key_id = "old".into();
    assert_eq!(open(&keys, &n, 1, &e).unwrap(), b"v");
    let all_retired = Keyring::parse(&format!("old {K1} retired\n"), "f").unwrap();
    assert!(matches!(
        all_retired.current_key_id(),
        Err(EnvelopeError::NoActiveKey(_))
    ));
    assert!(matches!(
        Keyring::parse("", "f").unwrap().current_key_id(),
        Err(EnvelopeError::NoMasterKey)
    ));
}

#[test]
fn same_plaintext_twice_gives_unrelated_ciphertexts() {
    let keys = keyring();
    let n = name("p", "production", "K");
    let a = envelope::seal(&keys, &n, 1, b"same").unwrap();
    let b = envelope::seal(&keys, &n, 1, b"same").unwrap();
    assert_ne!(a.ciphertext, b.ciphertext);
    assert_ne!(a.wrapped_key, b.wrapped_key);
}

#[test]
fn keyring_file_lines_are_checked_with_line_numbers() {
    let cases = [
        (format!("k {K1} extra"), ":1: only `retired`"),
        (
            format!("# c\n\nk {K1}\nk {K2}"),
            ":4: this key id appears twice",
        ),
        (
            "k bm90IDMyIGJ5dGVz".to_owned(),
            ":1: the key is not base64 of exactly 32 bytes",
        ),
        (format!("bad/id {K1}"), ":1: a key id is"),
        ("lonely".to_owned(), ":1: expected"),
    ];
    for (text, want) in cases {
        let err = Keyring::parse(&text, "keys.txt").unwrap_err().to_string();
        assert!(err.contains(want), "{text:?}: {err}");
        // A malformed line never echoes key material.
        assert!(!err.contains(K1) && !err.contains(K2), "{err}");
    }
    let ring = Keyring::parse(&format!("a {K1} retired\nb {K2}\n"), "f").unwrap();
    let reparsed = Keyring::parse(&ring.render(), "f").unwrap();
    assert_eq!(reparsed.keys().len(), 2);
    assert!(reparsed.keys()[0].retired && !reparsed.keys()[1].retired);
    assert_eq!(reparsed.current().unwrap().id, "b");
}

#[test]
fn debug_never_shows_key_bytes() {
    let ring = keyring();
    let shown = format!("{ring:?}");
    assert!(shown.contains("redacted"), "{shown}");
    for b64 in [K1, K2] {
        assert!(!shown.contains(b64));
    }
    // Nor the raw bytes as a Debug array would print them.
    assert!(!shown.contains("[0, 1, 2, 3"), "{shown}");
    assert!(!shown.contains("32, 33, 34"), "{shown}");
}

#[test]
fn master_key_from_the_environment() {
    let vars = |pairs: Vec<(&'static str, String)>| {
        move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
    };
    let (ring, path) =
        keyring_from_vars(vars(vec![("TELBASE_MASTER_KEY", K1.to_owned())])).unwrap();
    assert!(path.is_none());
    let id = ring.current_key_id().unwrap();
    assert!(id.starts_with("env-") && id.len() == 16, "{id}");
    // The derived id is stable and differs per key.
    let (again, _) = keyring_from_vars(vars(vec![("TELBASE_MASTER_KEY", K1.to_owned())])).unwrap();
    assert_eq!(again.current_key_id().unwrap(), id);
    let (other, _) = keyring_from_vars(vars(vec![("TELBASE_MASTER_KEY", K2.to_owned())])).unwrap();
    assert_ne!(other.current_key_id().unwrap(), id);
    let (named, _) =
        keyring_from_vars(vars(vec![("TELBASE_MASTER_KEY", format!("prod-1:{K2}"))])).unwrap();
    assert_eq!(named.current_key_id().unwrap(), "prod-1");
    let bad =
        keyring_from_vars(vars(vec![("TELBASE_MASTER_KEY", "short".to_owned())])).unwrap_err();
    assert!(bad.to_string().contains("TELBASE_MASTER_KEY"), "{bad}");
    assert!(matches!(
        keyring_from_vars(vars(vec![])),
        Err(EnvelopeError::NoMasterKey)
    ));
    let both = keyring_from_vars(vars(vec![
        ("TELBASE_MASTER_KEY", K1.to_owned()),
        ("TELBASE_MASTER_KEY_FILE", "/nonexistent".to_owned()),
    ]))
    .unwrap_err();
    assert!(both.to_string().contains("set only one"), "{both}");
}

#[test]
fn keyring_file_must_be_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys");
    envelope::write_keyring_file(&path, &keyring()).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(envelope::read_keyring_file(&path).unwrap().keys().len(), 2);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = envelope::read_keyring_file(&path).unwrap_err();
    assert!(
        matches!(err, EnvelopeError::Permissions { mode: 0o644, .. }),
        "{err:?}"
    );
}

#[test]
fn fingerprints_are_keyed_and_bound_to_the_name() {
    let k1 = [1u8; 32];
    let k2 = [2u8; 32];
    let a = name("p", "production", "A");
    let b = name("p", "production", "B");
    let f = envelope::fingerprint(&k1, &a, b"1234");
    assert!(f.starts_with("hmac:") && f.len() == 5 + 16, "{f}");
    assert_eq!(f, envelope::fingerprint(&k1, &a, b"1234"));
    assert_ne!(f, envelope::fingerprint(&k1, &a, b"1235"));
    assert_ne!(f, envelope::fingerprint(&k1, &b, b"1234"));
    assert_ne!(f, envelope::fingerprint(&k2, &a, b"1234"));
    // Not a plain hash of the value: without the key, a guess cannot be checked.
    use sha2::Digest as _;
    let plain_hash: String = sha2::Sha256::digest(b"1234")
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(!f.contains(&plain_hash));
}

#[test]
fn set_open_and_fingerprint_through_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SqliteStore::open(&dir.path().join("t.db")).unwrap();
    let keys = keyring();
    let n = name("notes", "production", "API_KEY");
    assert!(stored::open(&mut store, &keys, &n).unwrap().is_none());
    let v1 = stored::set(&mut store, &keys, &n, b"first").unwrap();
    let v2 = stored::set(&mut store, &keys, &n, b"second").unwrap();
    assert_eq!((v1.version, v2.version), (1, 2));
    assert_ne!(v1.fingerprint, v2.fingerprint);
    let (plain, fp) = stored::open(&mut store, &keys, &n).unwrap().unwrap();
    assert_eq!(&plain[..], b"second");
    assert_eq!(fp, v2.fingerprint);
    // Setting the same value again gives the same fingerprint (the plan shows no change).
    let v3 = stored::set(&mut store, &keys, &n, b"second").unwrap();
    assert_eq!(v3.fingerprint, v2.fingerprint);
    assert_eq!(
        stored::open_text(&mut store, &keys, &n)
            .unwrap()
            .unwrap()
            .expose_secret(),
        "second"
    );
    // The fingerprint key is created once and reused.
    let fk = store.fingerprint_key().unwrap().unwrap();
    stored::set(&mut store, &keys, &name("notes", "preview", "X"), b"x").unwrap();
    assert_eq!(store.fingerprint_key().unwrap().unwrap(), fk);
    // A different master key cannot open anything.
    let stranger = Keyring::parse(&format!("new {K1}\n"), "other").unwrap();
    let err = stored::open(&mut store, &stranger, &n).unwrap_err();
    assert!(err.to_string().contains("does not decrypt"), "{err}");
}

#[test]
fn an_edited_fingerprint_column_is_caught_when_the_value_is_opened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let mut store = SqliteStore::open(&path).unwrap();
    let keys = keyring();
    let n = name("notes", "production", "API_KEY");
    let a = stored::set(&mut store, &keys, &n, b"one").unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "UPDATE secret_values SET fingerprint = ?1",
        ["hmac:0000000000000000"],
    )
    .unwrap();
    let err = stored::open(&mut store, &keys, &n).unwrap_err();
    assert!(err.to_string().contains("fingerprint recorded"), "{err}");
    conn.execute(
        "UPDATE secret_values SET fingerprint = ?1",
        [&a.fingerprint],
    )
    .unwrap();
    assert!(stored::open(&mut store, &keys, &n).unwrap().is_some());
}

#[test]
fn a_row_copied_onto_another_row_in_the_database_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let mut store = SqliteStore::open(&path).unwrap();
    let keys = keyring();
    let a = name("notes", "production", "A");
    let b = name("notes", "production", "B");
    stored::set(&mut store, &keys, &a, b"value of a").unwrap();
    stored::set(&mut store, &keys, &b, b"value of b").unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    // Every column of A's row (including its fingerprint) copied onto B's.
    conn.execute_batch(
        "UPDATE secret_values SET (version, key_id, wrapped_key, ciphertext, fingerprint) =
           (SELECT v.version, v.key_id, v.wrapped_key, v.ciphertext, v.fingerprint
              FROM secret_values v JOIN secret_names n ON n.id = v.name_id WHERE n.name = 'A')
         WHERE name_id = (SELECT id FROM secret_names WHERE name = 'B')",
    )
    .unwrap();
    let err = stored::open(&mut store, &keys, &b).unwrap_err();
    assert!(err.to_string().contains("does not decrypt"), "{err}");
    assert_eq!(
        &stored::open(&mut store, &keys, &a).unwrap().unwrap().0[..],
        b"value of a"
    );
}

#[test]
fn a_keyring_file_provider_follows_the_file_across_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys");
    envelope::write_keyring_file(&path, &Keyring::parse(&format!("a {K1}\n"), "f").unwrap())
        .unwrap();
    let provider = envelope::KeyringFile::open(&path).unwrap();
    assert_eq!(provider.current_key_id().unwrap(), "a");
    let n = name("p", "production", "K");
    let e = envelope::seal(&provider, &n, 1, b"v").unwrap();
    // Another process rotates: new key b, a retired, the row re-wrapped under b.
    envelope::write_keyring_file(
        &path,
        &Keyring::parse(&format!("a {K1} retired\nb {K2}\n"), "f").unwrap(),
    )
    .unwrap();
    let row = RowRef::Value {
        name: n.clone(),
        version: 1,
    };
    let full = envelope::read_keyring_file(&path).unwrap();
    let dk = envelope::unwrap_for(&full, &row, "a", &e.wrapped_key).unwrap();
    let moved = Envelope {
        key_id: "b".into(),
        wrapped_key: envelope::wrap_for(&full, &row, "b", &dk).unwrap(),
        ciphertext: e.ciphertext.clone(),
    };
    // The provider loaded before the rotation opens the re-wrapped row and wraps under b.
    assert_eq!(open_with(&provider, &n, 1, &moved), b"v");
    assert_eq!(provider.current_key_id().unwrap(), "b");
}

fn open_with(
    keys: &dyn envelope::KeyProvider,
    n: &SecretName,
    version: i64,
    e: &Envelope,
) -> Vec<u8> {
    envelope::open(keys, n, version, e).unwrap().to_vec()
}

//! `telbase secrets`: keys, sealing and revealing through the real binary, and interop both
//! ways with the reference Go implementation (`age`, `age-keygen`). Interop tests skip with a
//! printed reason when the Go tools are missing, and fail under `CI` (where .ci/run installs
//! them), so a green CI run always means interop was checked.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use secrecy::ExposeSecret as _;

const VALUE: &str = "s3cret-value"; // 12 bytes: one short payload chunk of 28 bytes

/// Runs `telbase` with `args`, `stdin` piped in, TELBASE_IDENTITY_FILE cleared unless given.
fn telbase(args: &[&str], stdin: &[u8], env_identity: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_telbase"));
    cmd.args(args)
        .env_remove("TELBASE_IDENTITY_FILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(p) = env_identity {
        cmd.env("TELBASE_IDENTITY_FILE", p);
    }
    let mut child = cmd.spawn().expect("spawn telbase");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    child.wait_with_output().expect("telbase output")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// True when the Go `age` and `age-keygen` are installed; otherwise prints why the caller
/// skips, and panics under CI where skipping would hide a missing check.
fn go_age(test: &str) -> bool {
    let ok = ["age", "age-keygen"].iter().all(|tool| {
        Command::new(tool)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    });
    if !ok {
        // A green CI run that checked nothing would be a lie: .ci/run installs age.
        assert!(
            std::env::var_os("CI").is_none(),
            "the Go `age` and `age-keygen` are needed for interop tests, and CI must have them"
        );
        eprintln!("SKIPPED {test}: the Go `age`/`age-keygen` tools are not installed");
    }
    ok
}

/// A fresh identity file written by `telbase secrets keygen`, and its recipient.
fn telbase_identity(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let o = telbase(
        &["secrets", "keygen", "--output", path.to_str().unwrap()],
        b"",
        None,
    );
    assert!(o.status.success(), "keygen failed: {}", stderr(&o));
    let text = std::fs::read_to_string(&path).unwrap();
    let recipient = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .expect("public key comment")
        .to_owned();
    (path, recipient)
}

/// A fresh identity file written by the Go `age-keygen`, and its recipient.
fn go_identity(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let o = Command::new("age-keygen")
        .args(["-o", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success());
    let y = Command::new("age-keygen")
        .args(["-y", path.to_str().unwrap()])
        .output()
        .unwrap();
    (path, String::from_utf8(y.stdout).unwrap().trim().to_owned())
}

fn go_encrypt(dir: &Path, recipient: &str, armor: bool, name: &str) -> PathBuf {
    let out = dir.join(name);
    let plain = dir.join(format!("{name}.plain"));
    std::fs::write(&plain, VALUE).unwrap();
    let mut args = vec!["-r", recipient, "-o", out.to_str().unwrap()];
    if armor {
        args.push("-a");
    }
    args.push(plain.to_str().unwrap());
    let o = Command::new("age").args(&args).output().unwrap();
    assert!(o.status.success(), "age failed: {}", stderr(&o));
    out
}

fn go_decrypt(identity: &Path, file: &Path) -> Output {
    Command::new("age")
        .args([
            "-d",
            "-i",
            identity.to_str().unwrap(),
            file.to_str().unwrap(),
        ])
        .output()
        .unwrap()
}

/// A binary age file of VALUE to `recipient`, written with the age crate.
fn binary_sealed(recipient: &str) -> Vec<u8> {
    let r: age::x25519::Recipient = recipient.parse().unwrap();
    let enc = age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient)).unwrap();
    let mut out = Vec::new();
    let mut w = enc.wrap_output(&mut out).unwrap();
    w.write_all(VALUE.as_bytes()).unwrap();
    w.finish().unwrap();
    out
}

#[test]
fn keygen_writes_a_private_file_in_age_keygen_format_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key.txt");
    let o = telbase(
        &["secrets", "keygen", "--output", path.to_str().unwrap()],
        b"",
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(o.stdout.is_empty(), "the key went to the file, not stdout");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "identity file mode");
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("# created: 20"), "{}", lines[0]);
    let public = lines[1]
        .strip_prefix("# public key: age1")
        .expect("public key line");
    assert!(lines[2].starts_with("AGE-SECRET-KEY-1"));
    assert!(
        stderr(&o).contains(&format!("Public key: age1{public}")),
        "recipient on stderr: {}",
        stderr(&o)
    );
    // No temporary file is left beside it.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    let again = telbase(
        &["secrets", "keygen", "--output", path.to_str().unwrap()],
        b"",
        None,
    );
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        text,
        "file untouched"
    );

    // Without --output (stdout not a terminal here) the identity goes to stdout and the
    // recipient to stderr, as age-keygen does.
    let o = telbase(&["secrets", "keygen"], b"", None);
    assert!(o.status.success());
    let out = String::from_utf8(o.stdout.clone()).unwrap();
    assert!(out.lines().any(|l| l.starts_with("AGE-SECRET-KEY-1")));
    assert!(stderr(&o).starts_with("Public key: age1"));
}

#[test]
fn recipient_prints_the_public_key_of_the_identity_file_and_env_default() {
    let dir = tempfile::tempdir().unwrap();
    let (path, public) = telbase_identity(dir.path(), "id.txt");
    let o = telbase(
        &["secrets", "recipient", "--identity", path.to_str().unwrap()],
        b"",
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8(o.stdout).unwrap(), format!("{public}\n"));
    let o = telbase(&["secrets", "recipient"], b"", Some(&path));
    assert_eq!(String::from_utf8(o.stdout).unwrap(), format!("{public}\n"));
    let o = telbase(&["secrets", "recipient"], b"", None);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("TELBASE_IDENTITY_FILE"));
}

#[test]
fn recipient_matches_go_age_keygen_y() {
    if !go_age("recipient_matches_go_age_keygen_y") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (path, _) in [
        telbase_identity(dir.path(), "ours.txt"),
        go_identity(dir.path(), "theirs.txt"),
    ] {
        let ours = telbase(
            &["secrets", "recipient", "-i", path.to_str().unwrap()],
            b"",
            None,
        );
        let theirs = Command::new("age-keygen")
            .args(["-y", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(ours.status.success() && theirs.status.success());
        assert_eq!(ours.stdout, theirs.stdout);
    }
}

#[test]
fn values_sealed_by_go_age_armored_and_binary_open_with_reveal() {
    if !go_age("values_sealed_by_go_age_armored_and_binary_open_with_reveal") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (id, recipient) = go_identity(dir.path(), "id.txt");
    for armor in [true, false] {
        let file = go_encrypt(dir.path(), &recipient, armor, &format!("v{armor}.age"));
        let o = telbase(
            &[
                "secrets",
                "reveal",
                "-i",
                id.to_str().unwrap(),
                file.to_str().unwrap(),
            ],
            b"",
            None,
        );
        assert!(o.status.success(), "armor={armor}: {}", stderr(&o));
        assert_eq!(o.stdout, VALUE.as_bytes());
        // The same from stdin (`-`) with the identity from the environment.
        let o = telbase(
            &["secrets", "reveal", "-"],
            &std::fs::read(&file).unwrap(),
            Some(&id),
        );
        assert!(o.status.success(), "armor={armor}: {}", stderr(&o));
        assert_eq!(o.stdout, VALUE.as_bytes());
    }
}

#[test]
fn values_sealed_by_telbase_open_with_go_age() {
    if !go_age("values_sealed_by_telbase_open_with_go_age") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (id, recipient) = go_identity(dir.path(), "id.txt");
    let o = telbase(
        &["secrets", "seal", "-r", &recipient],
        VALUE.as_bytes(),
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(
        text.starts_with("-----BEGIN AGE ENCRYPTED FILE-----\n"),
        "{text}"
    );
    assert!(
        text.ends_with("-----END AGE ENCRYPTED FILE-----\n"),
        "{text}"
    );
    assert!(!text.contains(VALUE));
    let file = dir.path().join("sealed.age");
    std::fs::write(&file, &text).unwrap();
    let d = go_decrypt(&id, &file);
    assert!(d.status.success(), "{}", stderr(&d));
    assert_eq!(d.stdout, VALUE.as_bytes());
}

#[test]
fn multi_recipient_seal_from_the_default_recipients_file_opens_with_each_identity() {
    let dir = tempfile::tempdir().unwrap();
    let (a, ra) = telbase_identity(dir.path(), "a.txt");
    let (b, rb) = telbase_identity(dir.path(), "b.txt");
    let (other, _) = telbase_identity(dir.path(), "other.txt");
    std::fs::write(
        dir.path().join(".telbase-recipients"),
        format!("# the project\n{ra}\n\n  # a team member\n{rb}\n"),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_telbase"))
        .args(["secrets", "seal"])
        .current_dir(dir.path())
        .env_remove("TELBASE_IDENTITY_FILE")
        .stdin(std::fs::File::open(write(dir.path(), "plain", VALUE.as_bytes())).unwrap())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let sealed = write(dir.path(), "sealed.age", &o.stdout);
    for id in [&a, &b] {
        let r = telbase(
            &[
                "secrets",
                "reveal",
                "-i",
                id.to_str().unwrap(),
                sealed.to_str().unwrap(),
            ],
            b"",
            None,
        );
        assert!(r.status.success(), "{}", stderr(&r));
        assert_eq!(r.stdout, VALUE.as_bytes());
    }
    let r = telbase(
        &[
            "secrets",
            "reveal",
            "-i",
            other.to_str().unwrap(),
            sealed.to_str().unwrap(),
        ],
        b"",
        None,
    );
    assert!(!r.status.success());
    if go_age("multi_recipient_seal_…: the Go half") {
        for id in [&a, &b] {
            let d = go_decrypt(id, &sealed);
            assert!(d.status.success(), "{}", stderr(&d));
            assert_eq!(d.stdout, VALUE.as_bytes());
        }
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Each way a file can be unopenable has its own message, so the user knows which fix applies.
#[test]
fn each_failure_has_its_own_message() {
    let dir = tempfile::tempdir().unwrap();
    let (id, recipient) = telbase_identity(dir.path(), "id.txt");
    let (_, other_recipient) = telbase_identity(dir.path(), "other.txt");
    let good = binary_sealed(&recipient);

    let header_end = good.windows(5).position(|w| w == b"\n--- ").unwrap() + 5;
    let mut bad_header = good.clone();
    // A different base64 character inside the header MAC.
    bad_header[header_end + 3] = if bad_header[header_end + 3] == b'A' {
        b'B'
    } else {
        b'A'
    };
    let mut bad_payload = good.clone();
    *bad_payload.last_mut().unwrap() ^= 0x01;
    let cut_payload = good[..good.len() - 20].to_vec();
    let cut_header = good[..header_end - 20].to_vec();
    let armored = telbase(
        &["secrets", "seal", "-r", &recipient],
        VALUE.as_bytes(),
        None,
    )
    .stdout;
    let armored_text = String::from_utf8(armored.clone()).unwrap();
    let cut_armor = armored_text.lines().take(2).collect::<Vec<_>>().join("\n");

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "wrong key",
            binary_sealed(&other_recipient),
            "no identity matches",
        ),
        ("flipped header byte", bad_header, "header is corrupted"),
        ("flipped payload byte", bad_payload, "payload is damaged"),
        ("truncated payload", cut_payload, "truncated"),
        ("truncated header", cut_header, "truncated"),
        ("truncated armor", cut_armor.into_bytes(), "truncated"),
        (
            "garbage",
            b"this is not an age file at all\n".to_vec(),
            "not an age file",
        ),
    ];
    let mut messages = Vec::new();
    for (what, bytes, expect) in cases {
        let file = write(dir.path(), "case.age", &bytes);
        let o = telbase(
            &[
                "secrets",
                "reveal",
                "-i",
                id.to_str().unwrap(),
                file.to_str().unwrap(),
            ],
            b"",
            None,
        );
        assert!(!o.status.success(), "{what} opened");
        assert!(o.stdout.is_empty(), "{what}: no partial plaintext");
        let msg = stderr(&o);
        assert!(
            msg.contains(expect),
            "{what}: expected `{expect}` in: {msg}"
        );
        assert!(!msg.contains(VALUE));
        messages.push((expect, msg));
    }
    // Distinct problems, distinct messages (the three truncations share one).
    for (i, (e1, m1)) in messages.iter().enumerate() {
        for (e2, m2) in &messages[i + 1..] {
            if e1 != e2 {
                assert_ne!(m1, m2);
            }
        }
    }
    // The untouched files still open, so the failures above are the edits' doing.
    for bytes in [good, armored] {
        let file = write(dir.path(), "ok.age", &bytes);
        let o = telbase(
            &[
                "secrets",
                "reveal",
                "-i",
                id.to_str().unwrap(),
                file.to_str().unwrap(),
            ],
            b"",
            None,
        );
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(o.stdout, VALUE.as_bytes());
    }
}

#[test]
fn post_quantum_and_malformed_recipients_are_refused_with_where_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let (_, recipient) = telbase_identity(dir.path(), "id.txt");
    let pq = "age1pq1qzx8lsn7kkv6zxyq9w3ps0ndn9jsfcqdxuwl3qqs5h3fd3yznx5qrnsye3";
    let o = telbase(&["secrets", "seal", "-r", pq], VALUE.as_bytes(), None);
    assert!(!o.status.success());
    assert!(o.stdout.is_empty());
    let msg = stderr(&o);
    assert!(msg.contains("post-quantum"), "{msg}");
    assert!(msg.contains("cannot encrypt"), "{msg}");

    let file = write(
        dir.path(),
        "recipients",
        format!("# team\n{recipient}\nage1notarecipient\n").as_bytes(),
    );
    let o = telbase(
        &["secrets", "seal", "-R", file.to_str().unwrap()],
        VALUE.as_bytes(),
        None,
    );
    assert!(!o.status.success());
    let msg = stderr(&o);
    assert!(msg.contains(&format!("{}:3", file.display())), "{msg}");
    assert!(msg.contains("not an X25519 age recipient"), "{msg}");

    let file = write(dir.path(), "pq", format!("{recipient}\n{pq}\n").as_bytes());
    let o = telbase(
        &["secrets", "seal", "-R", file.to_str().unwrap()],
        VALUE.as_bytes(),
        None,
    );
    assert!(stderr(&o).contains(&format!("{}:2", file.display())));
    assert!(stderr(&o).contains("post-quantum"));

    // No recipients file at all: a hint, not a sealed value to nobody.
    let o = Command::new(env!("CARGO_BIN_EXE_telbase"))
        .args(["secrets", "seal"])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains(".telbase-recipients"), "{}", stderr(&o));
}

/// The library round-trip the CLI rests on, with several identities in one file.
#[test]
fn library_seal_open_round_trip_and_identity_file_format() {
    let a = telbase::secrets::generate();
    let b = telbase::secrets::generate();
    let text = telbase::secrets::identity_file(&a, "2026-01-01T00:00:00Z");
    let mut both = text.expose_secret().to_owned();
    both.push_str(&format!("{}\n", b.to_string().expose_secret()));
    let ids = telbase::secrets::parse_identities(&both).unwrap();
    assert_eq!(ids.len(), 2);
    let mut sealed = Vec::new();
    telbase::secrets::seal(b"x\ny", &[b.to_public()], &mut sealed).unwrap();
    assert_eq!(&*telbase::secrets::open(&sealed, &ids).unwrap(), b"x\ny");
    assert!(matches!(
        telbase::secrets::open(&sealed, &ids[..1]),
        Err(telbase::secrets::OpenError::NoMatchingIdentity)
    ));
    assert!(matches!(
        telbase::secrets::parse_identities("# nothing\n"),
        Err(telbase::secrets::IdentityError::Empty)
    ));
    assert!(matches!(
        telbase::secrets::seal(b"x", &[], Vec::new()),
        Err(telbase::secrets::SealError::NoRecipients)
    ));
}

/// The causes the CLI test above cannot make without a terminal or hand-edited armor.
#[test]
fn library_reports_passphrase_and_damaged_armor_distinctly() {
    use telbase::secrets::{OpenError, open, seal};
    let id = telbase::secrets::generate();
    let enc = age::Encryptor::with_user_passphrase(secrecy::SecretString::from("pw".to_owned()));
    let mut scrypt = Vec::new();
    let mut w = enc.wrap_output(&mut scrypt).unwrap();
    w.write_all(b"v").unwrap();
    w.finish().unwrap();
    let got = open(&scrypt, std::slice::from_ref(&id));
    assert!(matches!(got, Err(OpenError::Passphrase)), "{got:?}");

    let mut armored = Vec::new();
    seal(b"v", &[id.to_public()], &mut armored).unwrap();
    let text = String::from_utf8(armored).unwrap();
    // A character outside base64 in the body, end line intact.
    let damaged = text.replacen("\n", "\n*", 1);
    let got = open(damaged.as_bytes(), std::slice::from_ref(&id));
    assert!(matches!(got, Err(OpenError::Armor(_))), "{got:?}");
    assert!(open(text.as_bytes(), std::slice::from_ref(&id)).is_ok());
}

/// Multi-chunk values (age encrypts in 64 KiB chunks): an exact-chunk value round-trips, and a
/// file cut exactly at a chunk boundary or inside a tag is reported as truncated, not damaged.
#[test]
fn library_truncation_at_chunk_boundaries_is_recognised() {
    use telbase::secrets::{OpenError, open};
    const CHUNK: usize = 64 * 1024 + 16;
    let id = telbase::secrets::generate();
    let ids = std::slice::from_ref(&id);
    let seal_binary = |plain: &[u8]| {
        let r = id.to_public();
        let enc =
            age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient)).unwrap();
        let mut out = Vec::new();
        let mut w = enc.wrap_output(&mut out).unwrap();
        w.write_all(plain).unwrap();
        w.finish().unwrap();
        out
    };
    let exact = vec![7u8; 64 * 1024];
    assert_eq!(&*open(&seal_binary(&exact), ids).unwrap(), &exact[..]);

    let big = vec![9u8; 2 * 64 * 1024 + 5];
    let file = seal_binary(&big);
    assert_eq!(&*open(&file, ids).unwrap(), &big[..]);
    // Two full chunks of 64 KiB + 16 and a last one of 5 + 16 bytes follow the header+nonce.
    let payload_start = file.len() - (2 * CHUNK + 21);
    for cut in [
        payload_start,
        payload_start + CHUNK,
        payload_start + 2 * CHUNK + 10,
    ] {
        let got = open(&file[..cut], ids);
        assert!(
            matches!(got, Err(OpenError::Truncated)),
            "cut at {cut}: {got:?}"
        );
    }
    let mut flipped = file.clone();
    flipped[payload_start + CHUNK + 100] ^= 0x80;
    let got = open(&flipped, ids);
    assert!(matches!(got, Err(OpenError::BadPayload)), "{got:?}");
}

#[test]
fn read_plaintext_keeps_every_byte_across_growth_and_caps_the_size() {
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let got = telbase::secrets::read_plaintext(&data[..]).unwrap();
    assert_eq!(&got[..], &data[..]);
    let huge = std::io::repeat(1).take(telbase::secrets::MAX_SEALED_BYTES as u64 + 1);
    assert!(matches!(
        telbase::secrets::read_plaintext(huge),
        Err(telbase::secrets::ReadError::TooLarge)
    ));
}

/// `apply` opens sealed config values through the same code, so it reports the same causes.
#[test]
fn apply_opener_shares_the_opening_and_its_messages() {
    use telbase::apply::Opener as _;
    let id = telbase::secrets::generate();
    let other = telbase::secrets::generate();
    let mut sealed = Vec::new();
    telbase::secrets::seal(b"postgres://u:p@h/db", &[id.to_public()], &mut sealed).unwrap();
    let sealed = String::from_utf8(sealed).unwrap();
    let opener = telbase::apply::AgeOpener(vec![other, id]);
    assert_eq!(
        opener.open(&sealed).unwrap().expose_secret(),
        "postgres://u:p@h/db"
    );
    let err = opener.open("garbage").unwrap_err();
    assert!(err.contains("not an age file"), "{err}");
    let wrong = telbase::apply::AgeOpener(vec![telbase::secrets::generate()]);
    let err = wrong.open(&sealed).unwrap_err();
    assert!(err.contains("no identity matches"), "{err}");
    assert!(!err.contains("postgres"));
}

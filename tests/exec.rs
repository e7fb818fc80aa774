//! `telbase exec` through the real binary: sealed values in both forms reach the command as
//! plaintext, plain values and the identity variable are handled as documented, the exit
//! status and signals pass straight through (the command *is* the telbase process), failures
//! stop everything before the command starts and name the variable but never its value, and
//! values sealed by the Go `age` open (skipped with a reason when it is missing; a failure
//! under `CI`, where .ci/run installs it). Also the identity precedence shared by `secrets
//! reveal`/`recipient` and `apply`, and `secrets seal --single-line`.

mod common;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use secrecy::ExposeSecret as _;
use telbase::secrets::inject;

/// A fresh identity: (the identity file's text, the recipient).
fn new_key() -> (String, age::x25519::Recipient) {
    let id = age::x25519::Identity::generate();
    let text = format!("# a test key\n{}\n", id.to_string().expose_secret());
    (text, id.to_public())
}

fn armored(plain: &str, r: &age::x25519::Recipient) -> String {
    let mut out = Vec::new();
    telbase::secrets::seal(plain.as_bytes(), std::slice::from_ref(r), &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn single(plain: &str, r: &age::x25519::Recipient) -> String {
    inject::seal_single_line(plain.as_bytes(), std::slice::from_ref(r)).unwrap()
}

/// `telbase ARGS…` with no identity variables inherited from whoever runs the tests.
fn telbase(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_telbase"));
    cmd.args(args)
        .env_remove("TELBASE_IDENTITY")
        .env_remove("TELBASE_IDENTITY_FILE")
        .stdin(Stdio::null());
    cmd
}

/// `telbase exec -- sh -c SCRIPT` (extra telbase flags before `--`).
fn exec_sh(flags: &[&str], script: &str) -> Command {
    let mut args = vec!["exec"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    telbase(&args)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// True when the Go `age` is installed; otherwise prints why the caller skips, and panics
/// under CI where skipping would hide a missing check.
fn go_age(test: &str) -> bool {
    let ok = Command::new("age")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "the Go `age` is needed for interop tests, and CI must have it"
        );
        eprintln!("SKIPPED {test}: the Go `age` tool is not installed");
    }
    ok
}

#[test]
fn both_forms_are_opened_and_plain_values_and_the_key_are_handled() {
    let (key, r) = new_key();
    let o = exec_sh(
        &[],
        r#"printf '%s|%s|%s|%s' "$MULTI" "$ONE" "$PLAIN" "${TELBASE_IDENTITY-removed}""#,
    )
    .env("TELBASE_IDENTITY", &key)
    .env("MULTI", armored("two\nlines", &r))
    .env("ONE", single("p@ss word=", &r))
    .env("PLAIN", "age:42")
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "two\nlines|p@ss word=|age:42|removed");
    assert_eq!(stderr(&o), "");
}

#[test]
fn identity_precedence_flag_then_contents_then_file() {
    let dir = tempfile::tempdir().unwrap();
    let (right, r) = new_key();
    let (wrong, _) = new_key();
    let right_file = dir.path().join("right");
    let wrong_file = dir.path().join("wrong");
    std::fs::write(&right_file, &right).unwrap();
    std::fs::write(&wrong_file, &wrong).unwrap();
    let value = single("v", &r);
    let show = r#"printf %s "$V""#;

    // --identity beats TELBASE_IDENTITY.
    let o = exec_sh(&["--identity", right_file.to_str().unwrap()], show)
        .env("TELBASE_IDENTITY", &wrong)
        .env("V", &value)
        .output()
        .unwrap();
    assert_eq!((o.status.code(), stdout(&o)), (Some(0), "v".into()));
    // TELBASE_IDENTITY beats TELBASE_IDENTITY_FILE...
    let o = exec_sh(&[], show)
        .env("TELBASE_IDENTITY", &right)
        .env("TELBASE_IDENTITY_FILE", &wrong_file)
        .env("V", &value)
        .output()
        .unwrap();
    assert_eq!((o.status.code(), stdout(&o)), (Some(0), "v".into()));
    // ...and is used even when that means failing: no silent fall-through to another key.
    let o = exec_sh(&[], show)
        .env("TELBASE_IDENTITY", &wrong)
        .env("TELBASE_IDENTITY_FILE", &right_file)
        .env("V", &value)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("V: no identity matches"),
        "{}",
        stderr(&o)
    );
    // TELBASE_IDENTITY_FILE alone; the path (not a secret) stays visible to the command.
    let o = exec_sh(
        &[],
        r#"printf %s "$V" "${TELBASE_IDENTITY_FILE:+ has-path}""#,
    )
    .env("TELBASE_IDENTITY_FILE", &right_file)
    .env("V", &value)
    .output()
    .unwrap();
    assert_eq!(
        (o.status.code(), stdout(&o)),
        (Some(0), "v has-path".into())
    );
    // A malformed TELBASE_IDENTITY is named, its contents are not shown.
    let o = exec_sh(&[], show)
        .env("TELBASE_IDENTITY", "AGE-SECRET-KEY-1NOTAKEY")
        .env("V", &value)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("TELBASE_IDENTITY: line 1: a malformed age identity"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("NOTAKEY"), "{}", stderr(&o));
}

#[test]
fn the_exit_code_passes_through() {
    for code in [0, 7, 255] {
        let o = exec_sh(&[], &format!("exit {code}")).output().unwrap();
        assert_eq!(o.status.code(), Some(code));
    }
}

#[test]
fn death_by_a_signal_passes_through() {
    let (key, r) = new_key();
    let o = exec_sh(&[], "kill -TERM $$")
        .env("TELBASE_IDENTITY", &key)
        .env("S", single("x", &r))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), None, "{}", stderr(&o));
    assert_eq!(o.status.signal(), Some(15), "killed by SIGTERM");
}

#[test]
fn the_command_is_the_telbase_process_so_signals_reach_it() {
    let (key, r) = new_key();
    // Sets its trap, then prints its pid and the opened value (so the signal cannot arrive
    // before the trap), then waits (at most ~10 s) for SIGTERM.
    let script = r#"trap 'echo got-term; exit 42' TERM; echo "$$ $S"
        i=0; while [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; exit 3"#;
    let mut child = exec_sh(&[], script)
        .env("TELBASE_IDENTITY", &key)
        .env("S", single("opened", &r))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert_eq!(
        first,
        format!("{} opened\n", child.id()),
        "same pid: exec, no fork"
    );
    let k = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(k.success());
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(rest, "got-term\n");
    assert_eq!(
        status.code(),
        Some(42),
        "the command's trap handled the signal"
    );
}

#[test]
fn stdin_and_stdout_pass_through() {
    let mut child = telbase(&["exec", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(b"line one\nline two\n").unwrap();
    drop(input);
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    assert_eq!(stdout(&o), "line one\nline two\n");
}

#[test]
fn a_value_that_does_not_open_stops_everything_before_the_command_runs() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let script = format!("touch '{}'", marker.display());
    let (key, r) = new_key();
    let (_, other) = new_key();
    let good = single("good-plaintext", &r);
    let wrong_key = single("wrong-key-plaintext", &other);
    // Change the first character of the last armor line: it encodes the last 48 bytes of
    // the file, all nonce or payload (49 bytes for this plaintext), so the payload's
    // authentication fails; and 'A'/'B' are whole base64 digits, so the armor stays valid.
    let mut lines: Vec<String> = armored("damaged-plaintext", &r)
        .lines()
        .map(str::to_owned)
        .collect();
    let last = lines.len() - 2;
    let first = if lines[last].starts_with('A') {
        "B"
    } else {
        "A"
    };
    lines[last].replace_range(..1, first);
    let damaged = lines.join("\n") + "\n";
    let cut = &good[..good.len() - 10];
    let o = exec_sh(&[], &script)
        .env("TELBASE_IDENTITY", &key)
        .env("A_GOOD", &good)
        .env("B_WRONG_KEY", &wrong_key)
        .env("C_DAMAGED", &damaged)
        .env("D_CUT", cut)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(!marker.exists(), "the command ran although a value failed");
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(
        lines[0].starts_with("error: cannot open B_WRONG_KEY: no identity matches"),
        "{err}"
    );
    assert!(
        lines[1].starts_with("error: cannot open C_DAMAGED: the payload is damaged"),
        "{err}"
    );
    assert!(lines[2].starts_with("error: cannot open D_CUT: "), "{err}");
    assert!(!err.contains("A_GOOD"), "{err}");
    // Neither values nor plaintexts appear: not even a piece of a ciphertext.
    for secret in ["good-plaintext", "wrong-key", "damaged-plaintext"] {
        assert!(!err.contains(secret), "{err}");
    }
    for value in [&good, &wrong_key, &damaged] {
        for piece in value.as_bytes().chunks(16).skip(2) {
            let piece = String::from_utf8_lossy(piece);
            assert!(!err.contains(piece.as_ref()), "{piece} in {err}");
        }
    }
}

#[test]
fn sealed_values_without_an_identity_are_named() {
    let (_, r) = new_key();
    let o = exec_sh(&[], "echo ran")
        .env("ZED", single("z", &r))
        .env("ALPHA", armored("a", &r))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "");
    assert!(
        stderr(&o).starts_with(
            "error: ALPHA, ZED are sealed, but there is no identity to open them: pass --identity FILE, or set TELBASE_IDENTITY"
        ),
        "{}",
        stderr(&o)
    );
}

#[test]
fn nothing_sealed_needs_no_identity() {
    let o = exec_sh(&[], r#"printf %s "$P""#)
        .env("P", "plain")
        .output()
        .unwrap();
    assert_eq!((o.status.code(), stdout(&o)), (Some(0), "plain".into()));
}

#[test]
fn an_armor_flattened_onto_one_line_gets_a_hint() {
    let (key, r) = new_key();
    let o = exec_sh(&[], "echo ran")
        .env("TELBASE_IDENTITY", &key)
        .env("FLAT", armored("x", &r).replace('\n', "\\n"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("FLAT: an armored age value on a single line")
            && stderr(&o).contains("--single-line"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_missing_command_exits_127_and_a_non_executable_one_126() {
    let dir = tempfile::tempdir().unwrap();
    let o = telbase(&["exec", "--", "telbase-no-such-command"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(127));
    assert!(
        stderr(&o).contains("cannot run telbase-no-such-command: command not found"),
        "{}",
        stderr(&o)
    );
    let file = dir.path().join("not-executable");
    std::fs::write(&file, "#!/bin/sh\necho hi\n").unwrap();
    let o = telbase(&["exec", "--", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(126));
    assert!(stderr(&o).contains("permission denied"), "{}", stderr(&o));
    // No command at all is a usage error.
    let o = telbase(&["exec"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn an_env_file_that_cannot_be_opened_stops_before_the_command() {
    let (key, _) = new_key();
    let o = exec_sh(&["--env-file", "no-such.sops.yaml"], "echo ran")
        .env("TELBASE_IDENTITY", &key)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "");
    assert!(
        stderr(&o).starts_with("error: no-such.sops.yaml: "),
        "{}",
        stderr(&o)
    );
}

#[test]
fn seal_single_line_and_reveal_and_recipient_use_the_shared_identity_rules() {
    let dir = tempfile::tempdir().unwrap();
    let (key, r) = new_key();
    let mut child = telbase(&["secrets", "seal", "--single-line", "-r", &r.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from stdin")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let line = stdout(&o);
    assert!(line.starts_with("age:YWdlLWVuY3J5cHRpb24ub3Jn") && line.ends_with('\n'));
    assert_eq!(line.lines().count(), 1);
    let file = dir.path().join("value");
    std::fs::write(&file, &line).unwrap();

    let o = telbase(&["secrets", "reveal", file.to_str().unwrap()])
        .env("TELBASE_IDENTITY", &key)
        .output()
        .unwrap();
    assert_eq!(
        (stdout(&o), o.status.code()),
        ("from stdin".into(), Some(0))
    );
    let o = exec_sh(&[], r#"printf %s "$V""#)
        .env("TELBASE_IDENTITY", &key)
        .env("V", line.trim_end())
        .output()
        .unwrap();
    assert_eq!(stdout(&o), "from stdin");

    let o = telbase(&["secrets", "recipient"])
        .env("TELBASE_IDENTITY", &key)
        .output()
        .unwrap();
    assert_eq!(stdout(&o), format!("{r}\n"));
    let o = telbase(&["secrets", "recipient"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no identity: pass --identity FILE, or set TELBASE_IDENTITY"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn apply_opens_sealed_config_values_with_telbase_identity() {
    use common::emu;
    let (key, r) = new_key();
    let indented: String = armored("api-token-plaintext", &r)
        .lines()
        .map(|l| format!("          {l}\n"))
        .collect();
    let config = emu::quickstart("sealedapp").replace(
        "      SITE: sealedapp\n",
        &format!("      SITE: sealedapp\n      TOKEN:\n        sealed: |\n{indented}"),
    );
    assert!(config.contains("sealed: |"), "{config}");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("telbase.yaml");
    std::fs::write(&cfg, config).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let emu = rt.block_on(emu::start(telbase::emulator::Config::default()));
    let url = emu.url();
    let apply = |identity: Option<&str>| {
        let mut cmd = telbase(&[
            "apply",
            "--config",
            cfg.to_str().unwrap(),
            "--emulator",
            &url,
            "--auto-approve",
        ]);
        cmd.current_dir(dir.path()).env("NO_COLOR", "1");
        if let Some(k) = identity {
            cmd.env("TELBASE_IDENTITY", k);
        }
        cmd.output().unwrap()
    };
    let o = apply(None);
    assert!(!o.status.success());
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert!(
        all.contains("set TELBASE_IDENTITY (the identity itself)"),
        "{all}"
    );
    let o = apply(Some(&key));
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert!(o.status.success(), "{all}");
    assert!(all.contains("Apply complete"), "{all}");
    assert!(!all.contains("api-token-plaintext"), "{all}");
}

#[test]
fn values_sealed_by_go_age_open_in_both_forms() {
    if !go_age("values_sealed_by_go_age_open_in_both_forms") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (key, r) = new_key();
    let plain = dir.path().join("plain");
    std::fs::write(&plain, "go-sealed").unwrap();
    let o = Command::new("age")
        .args(["-r", &r.to_string(), "-a", plain.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let go_armored = stdout(&o);
    // The single-line recipe from docs/secrets.md, with the Go tool and coreutils.
    let o = Command::new("sh")
        .args([
            "-c",
            r#"printf 'age:%s' "$(age -r "$R" < "$F" | base64 -w0)""#,
        ])
        .env("R", r.to_string())
        .env("F", &plain)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let go_single = stdout(&o);
    assert!(
        go_single.starts_with("age:YWdlLWVuY3J5cHRpb24ub3Jn"),
        "{go_single}"
    );
    let o = exec_sh(&[], r#"printf '%s|%s' "$A" "$S""#)
        .env("TELBASE_IDENTITY", &key)
        .env("A", go_armored)
        .env("S", go_single)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "go-sealed|go-sealed");
}

#[test]
fn single_line_values_sealed_by_telbase_open_with_go_age() {
    if !go_age("single_line_values_sealed_by_telbase_open_with_go_age") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (key, r) = new_key();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, &key).unwrap();
    let line = single("for-go", &r);
    let binary = dir.path().join("value.age");
    write_decoded(&binary, line.strip_prefix("age:").unwrap());
    let o = Command::new("age")
        .args([
            "-d",
            "-i",
            key_file.to_str().unwrap(),
            binary.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "for-go");
}

fn write_decoded(path: &Path, b64: &str) {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn the_command_starts_with_sigpipe_at_its_default() {
    // Rust ignores SIGPIPE in its own process; if that leaked into the command, `yes` would
    // see EPIPE and exit 1 instead of dying by SIGPIPE when its reader goes away.
    let mut child = telbase(&["exec", "--", "yes"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 2];
    out.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"y\n");
    drop(out);
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(13), "{status:?}");
}

/// `--env-file` with the real SOPS file Flux's tests use: its values reach the command, and
/// the tampered copy stops everything before the command runs.
#[test]
fn a_sops_env_file_from_flux_reaches_the_command_and_tampering_stops_it() {
    let dir =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/test-vectors/sops");
    if !dir.is_dir() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide ../shared"
        );
        eprintln!("skipping: ../shared/test-vectors/sops not found");
        return;
    }
    let key = std::fs::read_to_string(dir.join("flux-age.key.txt")).unwrap();
    let good = dir.join("flux-age.sops.yaml");
    let o = exec_sh(
        &["--env-file", good.to_str().unwrap()],
        r#"printf %s "$key""#,
    )
    .env("TELBASE_IDENTITY", &key)
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "value");

    let bad = dir.join("flux-age.tampered-cleartext.sops.yaml");
    let o = exec_sh(&["--env-file", bad.to_str().unwrap()], "echo ran")
        .env("TELBASE_IDENTITY", &key)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "", "the command never ran");
    assert!(stderr(&o).contains("MAC"), "{}", stderr(&o));
}

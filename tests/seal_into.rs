//! `telbase secrets seal --into` and `telbase secrets reseal`: sealed values written into
//! telbase.yaml with every other byte kept.
//!
//! Golden before/after files in tests/golden/seal_into show each kind of edit on a fixed
//! sealed value (fixture.age, sealed to the test-only identity.txt beside it); regenerate them
//! with `UPDATE_GOLDEN=1 cargo test --test seal_into` after a deliberate change. The
//! command-line tests use fresh keys, and check interop with the Go `age` tools when they are
//! installed (skipping with a printed reason otherwise, failing under `CI` where .ci/run
//! installs them). A property test edits generated configs and checks that only the target's
//! lines change.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use proptest::prelude::*;
use telbase::config::edit::{Document, EditError, parse_key_path};

const GOLDEN: &str = "tests/golden/seal_into";

fn golden(name: &str) -> String {
    std::fs::read_to_string(format!("{GOLDEN}/{name}")).unwrap()
}

fn fixture() -> String {
    golden("fixture.age")
}

fn path(p: &str) -> Vec<String> {
    parse_key_path(p).unwrap()
}

/// Seals the fixture into `src` at `key` with the library.
fn set(src: &str, key: &str) -> Result<String, EditError> {
    Document::parse(src)?.set_sealed(&path(key), &fixture())
}

/// Compares with the golden after-file, or writes it under UPDATE_GOLDEN.
fn check_golden(case: &str, key: &str) {
    let before = golden(&format!("{case}.before.yaml"));
    let after = set(&before, key).unwrap_or_else(|e| panic!("{case}: {e}"));
    let file = format!("{GOLDEN}/{case}.after.yaml");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&file, &after).unwrap();
    }
    let expected = std::fs::read_to_string(&file).unwrap_or_default();
    assert_eq!(after, expected, "{case}: output differs from {file}");
    // The value reads back as exactly the sealed text, and the file is a valid config.
    let checked = telbase::config::check_str(&after);
    assert!(checked.is_valid(), "{case}: {:?}", checked.diagnostics);
    let root = telbase::config::yaml::parse(&after).unwrap();
    let segs = path(key);
    let mut p: Vec<&str> = segs.iter().map(String::as_str).collect();
    p.push("sealed");
    assert_eq!(
        root.lookup(&p).value,
        telbase::config::yaml::Value::Str(fixture()),
        "{case}"
    );
}

#[test]
fn golden_replace_plain_value_keeps_the_key_comment_and_neighbours() {
    check_golden("replace_plain", "apps.web.env.API_KEY");
}

#[test]
fn golden_replace_sealed_value_keeps_only_and_comments_inside() {
    check_golden("replace_sealed", "apps.web.env.API_KEY");
}

#[test]
fn golden_insert_into_existing_env_goes_after_the_last_entry() {
    check_golden("insert_into_env", "apps.web.env.API_KEY");
}

#[test]
fn golden_create_env_under_an_app_without_one() {
    check_golden("create_env", "apps.web.env.API_KEY");
}

#[test]
fn golden_four_space_indent_and_indented_sequences_are_kept() {
    check_golden("odd_indent", "apps.web.env.M_MIDDLE");
}

#[test]
fn golden_replace_flow_map_value_keeps_only() {
    check_golden("replace_flow_value", "apps.web.env.API_KEY");
}

#[test]
fn indent_unit_is_detected() {
    let two = golden("insert_into_env.before.yaml");
    assert_eq!(Document::parse(&two).unwrap().indent_unit(), 2);
    let four = golden("odd_indent.before.yaml");
    assert_eq!(Document::parse(&four).unwrap().indent_unit(), 4);
}

#[test]
fn crlf_file_stays_crlf_throughout() {
    let before = golden("insert_into_env.before.yaml").replace('\n', "\r\n");
    let after = set(&before, "apps.web.env.API_KEY").unwrap();
    let expected = golden("insert_into_env.after.yaml").replace('\n', "\r\n");
    assert_eq!(after, expected);
    assert!(!after.replace("\r\n", "").contains('\n'), "a bare LF");
    // Replacing a value in a CRLF file, too.
    let before = golden("replace_plain.before.yaml").replace('\n', "\r\n");
    let after = set(&before, "apps.web.env.API_KEY").unwrap();
    assert_eq!(
        after,
        golden("replace_plain.after.yaml").replace('\n', "\r\n")
    );
}

#[test]
fn a_last_line_without_a_newline_gets_one_only_when_something_follows() {
    let before =
        "version: 1\nproject: notes\napps:\n  web:\n    framework: nextjs\n    env:\n      A: b";
    let after = set(before, "apps.web.env.API_KEY").unwrap();
    assert!(after.starts_with(&format!("{before}\n      API_KEY:\n        sealed: |\n")));
    let after = set(before, "apps.web.env.A").unwrap();
    assert!(after.starts_with("version: 1\nproject: notes\napps:\n  web:\n    framework: nextjs\n    env:\n      A:\n        sealed: |\n"));
}

/// Every refusal: (config, key path, words the message must contain).
#[test]
fn refusals_name_the_problem_and_change_nothing() {
    let base = "version: 1\nproject: notes\n";
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "apps:\n  web:\n    framework: nextjs\n    env: { A: b }\n",
            "apps.web.env.API_KEY",
            &["line 6", "apps.web.env", "flow style"],
        ),
        (
            "apps: { web: { framework: nextjs } }\n",
            "apps.web.env.API_KEY",
            &["flow style"],
        ),
        (
            "apps:\n  web: &web\n    framework: nextjs\n    env:\n      A: b\n",
            "apps.web.env.API_KEY",
            &["line 4", "`apps.web`", "anchor"],
        ),
        (
            "x-base: &base\n  framework: nextjs\n  env:\n    A: b\napps:\n  web: *base\n",
            "apps.web.env.API_KEY",
            &["`apps.web`", "alias"],
        ),
        (
            "apps:\n  web:\n    framework: nextjs\n    env:\n      A: &a b\n  api:\n    framework: nextjs\n    env:\n      B: *a\n",
            "apps.web.env.A",
            &["line 7", "`apps.web.env.A`", "anchor"],
        ),
        (
            "apps:\n  web:\n    framework: nextjs\n",
            "apps.wbe.env.API_KEY",
            &["`apps` has no `wbe` (did you mean `web`?)"],
        ),
        (
            "apps:\n  website:\n    framework: nextjs\n  api:\n    framework: nextjs\n",
            "apps.webiste.env.API_KEY",
            &["did you mean `website`?"],
        ),
        (
            "apps:\n  web:\n    framework: nextjs\n",
            "apps.web.build.env.API_KEY",
            &["`apps.web` has no `build`"],
        ),
        (
            "apps:\n  web:\n    framework: nextjs\n    domains: [a.example.com]\n",
            "apps.web.domains.API_KEY",
            &["`apps.web.domains` is a list, not a map"],
        ),
        (
            "apps:\n  web:\n    framework: nextjs\n    env:\n      A: b\n",
            "apps.web.env.A.B",
            &["`apps.web.env.A` is a string, not a map"],
        ),
        (
            "apps:\n  web:\n    framework: nextjs\n",
            "apps.web.framework.X",
            &["not a map"],
        ),
        (
            "apps:\n  web:\n    framework: nextjs\n",
            "apps.web.framework.x.y.z",
            &[
                "line 5",
                "`apps.web.framework` is a string, not a map, so `x` cannot be set",
            ],
        ),
        (
            "apps:\n  web:\n    framework: nextjs\n",
            "project",
            &["not be the same config", "config loader refuses it"],
        ),
        (
            "apps:\n  web:\n    framework: nextjs\n    access: nobody\n",
            "apps.web.env.API_KEY",
            &["not valid as it is", "line 6", "fix it first"],
        ),
    ];
    for (yaml, key, words) in cases {
        let src = format!("{base}{yaml}");
        let err = match set(&src, key) {
            Ok(out) => panic!("{key} in\n{src}\nwas accepted:\n{out}"),
            Err(e) => e.to_string(),
        };
        for w in *words {
            assert!(err.contains(w), "{key}: `{err}` lacks `{w}`\n{src}");
        }
        assert!(!err.contains("BEGIN AGE"), "the value leaked into: {err}");
    }
}

#[test]
fn key_paths_escape_dots_and_backslashes() {
    assert_eq!(path("apps.web.env.A"), ["apps", "web", "env", "A"]);
    assert_eq!(path(r"a\.b.c\\d"), ["a.b", r"c\d"]);
    for bad in ["", ".a", "a.", "a..b", r"a\b", "a\\"] {
        assert!(
            matches!(parse_key_path(bad), Err(EditError::BadPath { .. })),
            "{bad:?}"
        );
    }
    assert_eq!(
        telbase::config::edit::display_path(&path(r"a\.b.c\\d")),
        r"a\.b.c\\d"
    );
}

// ---------------------------------------------------------------- the command line

fn telbase(args: &[&str], stdin: &[u8], cwd: &Path) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_telbase"))
        .args(args)
        .current_dir(cwd)
        .env_remove("TELBASE_IDENTITY_FILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn telbase");
    // A refusal exits before reading standard input: a broken pipe then is expected.
    match child.stdin.take().expect("stdin").write_all(stdin) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => panic!("write stdin: {e}"),
        _ => {}
    }
    child.wait_with_output().expect("telbase output")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let p = dir.join(name);
    let o = telbase(&["secrets", "keygen", "-o", p.to_str().unwrap()], b"", dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&p).unwrap();
    let r = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .unwrap()
        .to_owned();
    (p, r)
}

/// True when the Go tools are installed; otherwise prints why the caller skips, and fails
/// under CI, where a skipped interop check would make a green run a lie.
fn go_age(test: &str) -> bool {
    let ok = ["age", "age-keygen"].iter().all(|tool| {
        Command::new(tool)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    });
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "the Go `age` and `age-keygen` are needed for interop tests, and CI must have them"
        );
        eprintln!("SKIPPED {test}: the Go `age`/`age-keygen` tools are not installed");
    }
    ok
}

fn go_keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let p = dir.join(name);
    let o = Command::new("age-keygen")
        .args(["-o", p.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success());
    let y = Command::new("age-keygen")
        .args(["-y", p.to_str().unwrap()])
        .output()
        .unwrap();
    (p, String::from_utf8(y.stdout).unwrap().trim().to_owned())
}

/// The `sealed:` text at `key` in the config file.
fn sealed_at(file: &Path, key: &str) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let root = telbase::config::yaml::parse(&text).unwrap();
    let segs = path(key);
    let mut p: Vec<&str> = segs.iter().map(String::as_str).collect();
    p.push("sealed");
    match &root.lookup(&p).value {
        telbase::config::yaml::Value::Str(s) => s.clone(),
        other => panic!("{key}: {other:?}"),
    }
}

fn open_with(identity: &Path, sealed: &str) -> Result<Vec<u8>, telbase::secrets::OpenError> {
    let ids =
        telbase::secrets::parse_identities(&std::fs::read_to_string(identity).unwrap()).unwrap();
    telbase::secrets::open(sealed.as_bytes(), &ids).map(|z| z.to_vec())
}

const CONFIG: &str = "# the project\nversion: 1\nproject: notes\n\napps:\n  web:\n    framework: nextjs\n    env:\n      PLAIN: hello   # stays\n\n  api:\n    framework: nextjs\n";

#[test]
fn seal_into_writes_atomically_keeps_the_mode_and_uses_the_recipients_beside_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (id, r) = keygen(dir.path(), "id.txt");
    let cfg_dir = dir.path().join("project");
    std::fs::create_dir(&cfg_dir).unwrap();
    std::fs::write(cfg_dir.join(".telbase-recipients"), format!("{r}\n")).unwrap();
    let file = cfg_dir.join("telbase.yaml");
    std::fs::write(&file, CONFIG).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let o = telbase(
        &[
            "secrets",
            "seal",
            "--into",
            file.to_str().unwrap(),
            "--key",
            "apps.api.env.TOKEN",
        ],
        b"tok-123",
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(o.stdout.is_empty(), "nothing on stdout with --into");
    assert!(
        stderr(&o).contains("sealed apps.api.env.TOKEN into"),
        "{}",
        stderr(&o)
    );
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "the file's mode is kept");
    let names: Vec<_> = std::fs::read_dir(&cfg_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.starts_with(CONFIG),
        "everything before is kept:\n{text}"
    );
    assert!(text[CONFIG.len()..].starts_with("    env:\n      TOKEN:\n        sealed: |\n"));
    assert!(!text.contains("tok-123"));
    assert_eq!(
        open_with(&id, &sealed_at(&file, "apps.api.env.TOKEN")).unwrap(),
        b"tok-123"
    );
}

#[test]
fn seal_into_refuses_before_reading_the_value_and_leaves_the_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (_, r) = keygen(dir.path(), "id.txt");
    let file = dir.path().join("telbase.yaml");
    std::fs::write(&file, CONFIG).unwrap();
    for (key, words) in [
        ("apps.wbe.env.X", "`apps` has no `wbe`"),
        ("apps..env", "bad key path"),
        ("apps.web.env.PLAIN.X", "not a map"),
    ] {
        let o = telbase(
            &[
                "secrets",
                "seal",
                "-r",
                &r,
                "--into",
                "telbase.yaml",
                "--key",
                key,
            ],
            b"value",
            dir.path(),
        );
        assert!(!o.status.success(), "{key}");
        assert!(stderr(&o).contains(words), "{key}: {}", stderr(&o));
        assert!(!stderr(&o).contains("value"), "{}", stderr(&o));
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), CONFIG);
    // --key without --into is a usage error.
    let o = telbase(
        &["secrets", "seal", "-r", &r, "--key", "a.b"],
        b"v",
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn go_age_opens_a_value_written_by_seal_into() {
    if !go_age("go_age_opens_a_value_written_by_seal_into") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (id, r) = go_keygen(dir.path(), "go.txt");
    let file = dir.path().join("telbase.yaml");
    std::fs::write(&file, CONFIG).unwrap();
    let o = telbase(
        &[
            "secrets",
            "seal",
            "-r",
            &r,
            "--into",
            "telbase.yaml",
            "--key",
            "apps.web.env.PLAIN",
        ],
        b"from-telbase",
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let sealed = dir.path().join("v.age");
    std::fs::write(&sealed, sealed_at(&file, "apps.web.env.PLAIN")).unwrap();
    let d = Command::new("age")
        .args(["-d", "-i", id.to_str().unwrap(), sealed.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(d.status.success(), "{}", String::from_utf8_lossy(&d.stderr));
    assert_eq!(d.stdout, b"from-telbase");
    // The trailing comment on the replaced key survives.
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("      PLAIN: # stays\n        sealed: |\n"),
        "{text}"
    );
}

#[test]
fn reseal_moves_every_value_from_two_to_three_recipients_in_one_write() {
    let dir = tempfile::tempdir().unwrap();
    let (a, ra) = keygen(dir.path(), "a.txt");
    let (b, rb) = keygen(dir.path(), "b.txt");
    let have_go = go_age("reseal_moves_every_value_from_two_to_three_recipients_in_one_write");
    let (c, rc) = if have_go {
        go_keygen(dir.path(), "c.txt")
    } else {
        keygen(dir.path(), "c.txt")
    };
    let (d, rd) = keygen(dir.path(), "d.txt");
    let recipients = dir.path().join(".telbase-recipients");
    std::fs::write(&recipients, format!("# Ada\n{ra}\n# Bob\n{rb}\n")).unwrap();
    let file = dir.path().join("telbase.yaml");
    std::fs::write(&file, CONFIG).unwrap();
    for (key, value) in [
        ("apps.web.env.PLAIN", "one"),
        ("apps.web.env.SECOND", "two"),
        ("apps.api.env.THIRD", "three"),
    ] {
        let o = telbase(
            &["secrets", "seal", "--into", "telbase.yaml", "--key", key],
            value.as_bytes(),
            dir.path(),
        );
        assert!(o.status.success(), "{key}: {}", stderr(&o));
    }
    let before = std::fs::read_to_string(&file).unwrap();
    for key in ["apps.web.env.PLAIN", "apps.api.env.THIRD"] {
        assert!(
            open_with(&b, &sealed_at(&file, key)).is_ok(),
            "Bob can open before"
        );
        assert!(
            open_with(&c, &sealed_at(&file, key)).is_err(),
            "Cleo cannot yet"
        );
    }

    // Bob leaves; Cleo and Dan join: three recipients.
    std::fs::write(
        &recipients,
        format!("# Ada\n{ra}\n# Cleo\n{rc}\n# Dan\n{rd}\n"),
    )
    .unwrap();
    let o = telbase(
        &["secrets", "reseal", "--identity", a.to_str().unwrap()],
        b"",
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let summary = String::from_utf8(o.stdout.clone()).unwrap();
    assert_eq!(
        summary,
        "3 values resealed to 3 recipients in telbase.yaml\n"
    );
    let after = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        non_armor_lines(&before),
        non_armor_lines(&after),
        "only the armor's base64 lines changed"
    );
    for (key, value) in [
        ("apps.web.env.PLAIN", "one"),
        ("apps.web.env.SECOND", "two"),
        ("apps.api.env.THIRD", "three"),
    ] {
        let s = sealed_at(&file, key);
        assert_eq!(
            open_with(&c, &s).unwrap(),
            value.as_bytes(),
            "Cleo opens {key}"
        );
        assert_eq!(
            open_with(&d, &s).unwrap(),
            value.as_bytes(),
            "Dan opens {key}"
        );
        assert_eq!(
            open_with(&a, &s).unwrap(),
            value.as_bytes(),
            "Ada opens {key}"
        );
        assert!(
            matches!(
                open_with(&b, &s),
                Err(telbase::secrets::OpenError::NoMatchingIdentity)
            ),
            "Bob no longer opens {key}"
        );
        if have_go {
            let f = dir.path().join("x.age");
            std::fs::write(&f, &s).unwrap();
            let out = Command::new("age")
                .args(["-d", "-i", c.to_str().unwrap(), f.to_str().unwrap()])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                out.stdout,
                value.as_bytes(),
                "Go age with Cleo's key opens {key}"
            );
        }
    }
    assert!(!summary.contains("one") && !stderr(&o).contains("two"));
}

#[test]
fn reseal_stops_at_a_value_it_cannot_open_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (a, ra) = keygen(dir.path(), "a.txt");
    let (_, rx) = keygen(dir.path(), "stranger.txt");
    std::fs::write(dir.path().join("r.txt"), format!("{ra}\n")).unwrap();
    let file = dir.path().join("telbase.yaml");
    std::fs::write(&file, CONFIG).unwrap();
    for (key, r) in [("apps.web.env.MINE", &ra), ("apps.api.env.THEIRS", &rx)] {
        let o = telbase(
            &[
                "secrets",
                "seal",
                "-r",
                r,
                "--into",
                "telbase.yaml",
                "--key",
                key,
            ],
            b"v",
            dir.path(),
        );
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let before = std::fs::read_to_string(&file).unwrap();
    let line = before.lines().position(|l| l.trim() == "THEIRS:").unwrap() + 2;
    let o = telbase(
        &[
            "secrets",
            "reseal",
            "-c",
            "telbase.yaml",
            "-i",
            a.to_str().unwrap(),
            "-R",
            "r.txt",
        ],
        b"",
        dir.path(),
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains(&format!("line {line} (`apps.api.env.THEIRS`)")),
        "{err}"
    );
    assert!(err.contains("no identity matches"), "{err}");
    assert!(err.contains("nothing was written"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), before);
}

#[test]
fn reseal_with_no_sealed_values_says_so_and_leaves_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (a, ra) = keygen(dir.path(), "a.txt");
    std::fs::write(dir.path().join(".telbase-recipients"), format!("{ra}\n")).unwrap();
    std::fs::write(dir.path().join("telbase.yaml"), CONFIG).unwrap();
    let o = telbase(
        &["secrets", "reseal", "-i", a.to_str().unwrap()],
        b"",
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        String::from_utf8(o.stdout).unwrap(),
        "0 values resealed to 1 recipient in telbase.yaml\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("telbase.yaml")).unwrap(),
        CONFIG
    );
}

#[test]
fn reseal_library_keeps_layout_around_each_value() {
    let id = telbase::secrets::parse_identities(&golden("identity.txt")).unwrap();
    let src = golden("replace_sealed.after.yaml");
    let new = telbase::secrets::generate();
    let done = telbase::secrets::reseal::reseal(&src, &id, &[new.to_public()]).expect("reseal");
    assert_eq!(done.count, 1);
    assert_eq!(non_armor_lines(&src), non_armor_lines(&done.text));
    assert_ne!(src, done.text, "the value was sealed again");
    let root = telbase::config::yaml::parse(&done.text).unwrap();
    let telbase::config::yaml::Value::Str(s) = &root
        .lookup(&["apps", "web", "env", "API_KEY", "sealed"])
        .value
    else {
        panic!()
    };
    assert_eq!(
        &*telbase::secrets::open(s.as_bytes(), &[new]).unwrap(),
        b"fixture-secret"
    );
    assert!(
        done.text
            .contains("        # sealed for production only\n        sealed: |\n")
    );
    assert!(
        done.text
            .contains("        only: production\n      OTHER: x\n")
    );
}

/// The lines of a file other than the base64 body lines of armored values.
fn non_armor_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| {
            let t = l.trim();
            t.is_empty()
                || !t
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c))
        })
        .collect()
}

// ---------------------------------------------------------------- property test

/// A generated config: its text, the line range of every env entry, and which apps have
/// an env map.
#[derive(Debug, Clone)]
struct Generated {
    text: String,
    /// (app, name, first line, last line), 0-based, inclusive.
    entries: Vec<(String, String, usize, usize)>,
    apps: Vec<(String, bool)>,
}

#[derive(Debug, Clone)]
enum Val {
    Plain,
    Commented,
    Quoted,
    Flow,
    Sealed,
    BlockMap,
}

fn val() -> impl Strategy<Value = Val> {
    prop_oneof![
        Just(Val::Plain),
        Just(Val::Commented),
        Just(Val::Quoted),
        Just(Val::Flow),
        Just(Val::Sealed),
        Just(Val::BlockMap),
    ]
}

/// Per app: whether it has a build map, layout flags (1: a domains list, 2: the list
/// indented under its key, 4: env names quoted), and its env entries (None: no env map),
/// each with a value kind and whether a comment and a blank line precede it.
type AppSpec = (bool, u8, Option<Vec<(Val, bool, bool)>>);

fn generated() -> impl Strategy<Value = Generated> {
    let app = (
        any::<bool>(),
        any::<u8>(),
        proptest::option::weighted(
            0.8,
            proptest::collection::vec((val(), any::<bool>(), any::<bool>()), 1..4),
        ),
    );
    (
        prop_oneof![Just(2usize), Just(3usize), Just(4usize)],
        proptest::collection::vec(app, 1..4),
        any::<bool>(),
    )
        .prop_map(|(u, apps, trailing): (usize, Vec<AppSpec>, bool)| {
            let names = ["web", "api", "worker"];
            let sealed = fixture();
            let mut lines: Vec<String> = vec![
                "# generated".into(),
                "version: 1".into(),
                "project: notes".into(),
                String::new(),
                "edge:".into(),
                format!("{}zone: example.com", " ".repeat(u)),
                "apps:".into(),
            ];
            let mut entries = Vec::new();
            let mut out_apps = Vec::new();
            let s = |n: usize| " ".repeat(n);
            for (i, (build, flags, env)) in apps.iter().enumerate() {
                let name = names[i];
                lines.push(format!("{}{name}:", s(u)));
                lines.push(format!("{}framework: nextjs", s(2 * u)));
                if *build {
                    lines.push(format!("{}build:", s(2 * u)));
                    lines.push(format!("{}node: 22  # LTS", s(3 * u)));
                }
                if flags & 1 != 0 {
                    let item = if flags & 2 != 0 { 3 * u } else { 2 * u };
                    lines.push(format!("{}domains:", s(2 * u)));
                    lines.push(format!("{}- {name}.example.com   # first", s(item)));
                    lines.push(format!("{}# between items", s(item)));
                    lines.push(format!("{}- {name}2.example.com", s(item)));
                }
                out_apps.push((name.to_owned(), env.is_some()));
                if let Some(vars) = env {
                    lines.push(format!("{}env:", s(2 * u)));
                    for (j, (v, comment, blank)) in vars.iter().enumerate() {
                        if *blank {
                            lines.push(String::new());
                        }
                        if *comment {
                            lines.push(format!("{}# about VAR_{j}", s(3 * u)));
                        }
                        let first = lines.len();
                        let k = if flags & 4 != 0 {
                            format!("{}\"VAR_{j}\":", s(3 * u))
                        } else {
                            format!("{}VAR_{j}:", s(3 * u))
                        };
                        match v {
                            Val::Plain => lines.push(format!("{k} value-{j}")),
                            Val::Commented => lines.push(format!("{k} value-{j}   # note")),
                            Val::Quoted => lines.push(format!("{k} \"a: b # c\"")),
                            Val::Flow => lines.push(format!("{k} {{ value: x, only: preview }}")),
                            Val::BlockMap => {
                                lines.push(k);
                                lines.push(format!("{}value: x   # inside", s(4 * u)));
                                lines.push(format!("{}# a comment inside the value", s(4 * u)));
                                lines.push(format!("{}only: production", s(4 * u)));
                            }
                            Val::Sealed => {
                                lines.push(k);
                                lines.push(format!("{}sealed: |", s(4 * u)));
                                for l in sealed.lines() {
                                    lines.push(format!("{}{l}", s(5 * u)));
                                }
                            }
                        }
                        entries.push((name.to_owned(), format!("VAR_{j}"), first, lines.len() - 1));
                    }
                }
                if trailing {
                    lines.push(format!("{}# end of {name}", s(2 * u)));
                    lines.push(String::new());
                }
            }
            lines.push("# the end".into());
            Generated {
                text: lines.join("\n") + "\n",
                entries,
                apps: out_apps,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// An edit changes exactly the target entry's lines (none for an insertion), every other
    /// line is kept byte for byte, and the result is a valid config holding the new value.
    #[test]
    fn edits_change_only_the_target_lines(g in generated(), pick in 0usize..100, new_app in any::<bool>()) {
        // Choose: an existing entry (replace), a new name in an existing app (insert or
        // create env), or an unknown app (refused).
        let choices = g.entries.len() + g.apps.len() + 1;
        let c = pick % choices;
        let (key, replaced): (String, Option<(usize, usize)>) = if c < g.entries.len() {
            let (app, name, a, b) = &g.entries[c];
            (format!("apps.{app}.env.{name}"), Some((*a, *b)))
        } else if c < g.entries.len() + g.apps.len() {
            let (app, _) = &g.apps[c - g.entries.len()];
            (format!("apps.{app}.env.NEW_ONE"), None)
        } else {
            let app = if new_app { "nope" } else { "wbe" };
            (format!("apps.{app}.env.X"), None)
        };
        prop_assert!(telbase::config::check_str(&g.text).is_valid(), "generator: {}", g.text);
        let result = set(&g.text, &key);
        if key.contains("nope") || key.contains("wbe") {
            prop_assert!(matches!(result, Err(EditError::Missing { .. })), "{key}: {result:?}");
            return Ok(());
        }
        let out = result.map_err(|e| TestCaseError::fail(format!("{key}: {e}\n{}", g.text)))?;
        let old: Vec<&str> = g.text.split_inclusive('\n').collect();
        let new: Vec<&str> = out.split_inclusive('\n').collect();
        let prefix = old.iter().zip(&new).take_while(|(a, b)| a == b).count();
        let max_suffix = old.len().min(new.len()) - prefix;
        let suffix = old.iter().rev().zip(new.iter().rev()).take(max_suffix).take_while(|(a, b)| a == b).count();
        let removed = prefix..old.len() - suffix;
        match replaced {
            Some((a, b)) => {
                // The key line is rewritten too (its value moves below it); the removed
                // lines lie within the entry and include its last line unless that was
                // identical (a sealed value's END line); resealing the fixture over itself
                // changes nothing at all.
                prop_assert!(removed.is_empty() || (removed.start >= a && removed.end <= b + 1),
                    "{key}: removed {removed:?}, entry {a}..={b}\n{}\n---\n{out}", g.text);
            }
            None => prop_assert!(removed.is_empty(), "{key}: removed {removed:?}\n{}\n---\n{out}", g.text),
        }
        prop_assert!(telbase::config::check_str(&out).is_valid());
        let root = telbase::config::yaml::parse(&out).unwrap();
        let segs = path(&key);
        let mut p: Vec<&str> = segs.iter().map(String::as_str).collect();
        p.push("sealed");
        prop_assert_eq!(&root.lookup(&p).value, &telbase::config::yaml::Value::Str(fixture()));
    }
}

#[test]
fn reseal_refuses_a_sealed_value_in_a_flow_map_with_its_line() {
    let id = telbase::secrets::parse_identities(&golden("identity.txt")).unwrap();
    let armor = serde_json::to_string(&fixture()).unwrap();
    let src = format!(
        "version: 1\nproject: notes\napps:\n  web:\n    framework: nextjs\n    env:\n      A: {{ sealed: {armor} }}\n"
    );
    assert!(telbase::config::check_str(&src).is_valid());
    let err =
        telbase::secrets::reseal::reseal(&src, &id, &[telbase::secrets::generate().to_public()])
            .unwrap_err()
            .to_string();
    assert!(
        err.contains("line 7") && err.contains("flow style"),
        "{err}"
    );
    assert!(err.contains("apps.web.env.A.sealed"), "{err}");
}

#[test]
fn names_from_a_hostile_file_are_sanitized_in_messages() {
    let src = "version: 1\nproject: notes\napps:\n  \"we\\e[31mb\":\n    framework: nextjs\n";
    let err = set(src, "apps.x.env.A").unwrap_err().to_string();
    assert!(err.contains("`apps` has no `x` (it has: we"), "{err:?}");
    assert!(!err.contains('\u{1b}'), "{err:?}");
}

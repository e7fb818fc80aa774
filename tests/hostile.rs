//! Hostile and broken input: every case must end in a clear diagnostic (exit 1), never a
//! panic, a hang or unbounded memory. Each case runs the real binary as a child process; the
//! kernel's accounting of the children's peak resident memory (`getrusage(RUSAGE_CHILDREN)`)
//! must stay under 64 MiB. Wall time is only bounded loosely here (a hang catcher on a shared
//! machine); the per-case speed is measured by `cargo bench --bench config` (`hostile/*`).

mod common;
#[path = "common/hostile_cases.rs"]
mod hostile_cases;

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::root;

const PEAK_LIMIT_KIB: i64 = 64 * 1024;

fn peak_children_kib() -> i64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .expect("getrusage")
        .max_rss()
}

fn run_file(path: &Path) -> (Option<i32>, String, Duration) {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_telbase"))
        .args(["validate", "--format", "json"])
        .arg(path)
        .output()
        .expect("run telbase");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        start.elapsed(),
    )
}

fn check_outcome(name: &str, code: Option<i32>, stdout: &str, took: Duration, expected: &str) {
    assert_eq!(
        code,
        Some(1),
        "{name}: exit {code:?} (a crash or kill has no code)\n{stdout}"
    );
    let diags: Vec<serde_json::Value> =
        serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {stdout}"));
    assert!(
        diags.iter().any(|d| d["code"] == expected),
        "{name}: expected {expected}, got {stdout}"
    );
    assert!(
        stdout.len() < 64 * 1024,
        "{name}: {} bytes of output",
        stdout.len()
    );
    assert!(
        !stdout.contains('\u{1b}'),
        "{name}: raw escape character in output"
    );
    assert!(took < Duration::from_secs(5), "{name}: took {took:?}");
    println!(
        "{name:<24} {expected}  {:>7.1} ms",
        took.as_secs_f64() * 1000.0
    );
}

#[test]
fn hostile_inputs_are_rejected_within_bounds() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes, expected) in hostile_cases::generated() {
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, &bytes).unwrap();
        let (code, stdout, took) = run_file(&path);
        check_outcome(&name, code, &stdout, took, expected);
    }
    // Committed cases, each named after the code it must produce: `<code>-<what>.yaml`.
    let mut committed: Vec<_> = std::fs::read_dir(root().join("tests/hostile"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    committed.sort();
    for path in committed {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let expected = name.split('-').next().unwrap().to_owned();
        let (code, stdout, took) = run_file(&path);
        check_outcome(
            &name,
            code,
            &stdout,
            took,
            Box::leak(expected.into_boxed_str()),
        );
    }
    let peak = peak_children_kib();
    println!("peak resident memory of any run: {} KiB", peak);
    assert!(peak < PEAK_LIMIT_KIB, "a run peaked at {peak} KiB");
}

#[test]
fn a_100_mb_file_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.yaml");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(100 * 1024 * 1024).unwrap();
    let (code, stdout, took) = run_file(&path);
    check_outcome("100mb-file", code, &stdout, took, "E0002");

    // The same through a pipe, where the size is unknown up front: reading stops at the cap.
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_telbase"))
        .args(["validate", "--format", "json", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'a'; 1024 * 1024];
        for _ in 0..100 {
            // The reader hangs up after the cap; a broken pipe is the expected end.
            if stdin.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    check_outcome(
        "100mb-stdin",
        out.status.code(),
        &String::from_utf8_lossy(&out.stdout),
        start.elapsed(),
        "E0002",
    );
    let peak = peak_children_kib();
    assert!(peak < PEAK_LIMIT_KIB, "a run peaked at {peak} KiB");
}

#[test]
fn a_leading_bom_is_accepted() {
    // YAML 1.2 allows a byte-order mark as the first character; Windows editors write one.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bom.yaml");
    std::fs::write(&path, "\u{feff}version: 1\nproject: acme\n").unwrap();
    let (code, stdout, _) = run_file(&path);
    assert_eq!(code, Some(0), "{stdout}");
}

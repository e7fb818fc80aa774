//! The CLI's reconcile commands as a user runs them: `telbase demo` (the README's first
//! quickstart command, pinned by a golden of its output), and `plan`/`apply` against an
//! emulator, with their exit codes, confirmation rules, saved plans and credential errors.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{assert_golden, emu, root};
use serde_json::json;
use telbase::emulator::Config;

fn telbase(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_telbase"))
        .args(args)
        .current_dir(cwd)
        .env_remove("TELBASE_EMULATOR")
        .env_remove("VERCEL_TOKEN")
        .env_remove("VERCEL_TEAM_ID")
        .env_remove("NEON_API_KEY")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run telbase")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Replace what changes from run to run (ports, temp paths, timings, generated ids) and
/// put concurrent progress lines in a fixed order.
fn normalize(s: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut block: Vec<String> = Vec::new();
    for line in s.lines() {
        let mut l = line.to_owned();
        for (pat, rep) in [
            ("http://127.0.0.1:", "http://127.0.0.1:PORT"),
            ("/telbase-demo-", "/telbase-demo-PID"),
        ] {
            if let Some(i) = l.find(pat) {
                let end = l[i + pat.len()..]
                    .find(|c: char| !c.is_ascii_digit())
                    .map(|e| i + pat.len() + e)
                    .unwrap_or(l.len());
                l.replace_range(i..end, rep);
            }
        }
        if let Some(i) = l.find(" (")
            && let Some(j) = l[i..].find("s)")
            && l[i + 2..i + j].parse::<f64>().is_ok()
        {
            l.replace_range(i..i + j + 2, " (T)");
        }
        if let Some(i) = l.find("https://notes-web-") {
            l.replace_range(i.., "https://notes-web-ID.vercel.app");
        }
        if let Some(rest) = l.trim_start().strip_prefix('[')
            && let Some((_, after)) = rest.split_once("] ")
        {
            block.push(format!("  [*] {after}"));
            continue;
        }
        if !block.is_empty() {
            block.sort();
            out.append(&mut block);
        }
        out.push(l);
    }
    block.sort();
    out.append(&mut block);
    out.join("\n") + "\n"
}

#[test]
fn demo_runs_to_convergence() {
    let o = telbase(&["demo"], &root());
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("\nConverged."), "{t}");
    assert_golden(
        &root().join("tests/golden/cli/demo.txt"),
        &normalize(&String::from_utf8_lossy(&o.stdout)),
    );
}

/// Every example converges under `telbase demo --example NAME`, with drift injected at each
/// provider it uses detected and corrected, and nothing duplicated (the demo checks the
/// inventory itself and fails otherwise).
#[test]
fn every_example_converges_in_the_demo() {
    let mut names: Vec<String> = std::fs::read_dir(root().join("examples"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("telbase.yaml").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 5, "{names:?}");
    for name in names {
        let o = telbase(&["demo", "--example", &name], &root());
        let t = text(&o);
        assert!(o.status.success(), "{name}: {t}");
        assert!(t.contains("━━ 6/8 plan: drift detected"), "{name}: {t}");
        assert!(t.contains("\nConverged."), "{name}: {t}");
        assert!(t.contains("nothing duplicated"), "{name}: {t}");
    }
    let o = telbase(&["demo", "--example", "nope"], &root());
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("there is no example `nope`; the demo can run: quickstart, nextjs-neon"),
        "{}",
        text(&o)
    );
}

fn write_config(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("telbase.yaml");
    std::fs::write(&p, emu::quickstart("notes")).unwrap();
    p
}

#[test]
fn plan_and_apply_against_the_emulator() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let emu = rt.block_on(emu::start(Config::default()));
    let url = emu.url();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path());
    let cfg = cfg.to_str().unwrap();

    let o = telbase(
        &[
            "plan",
            "--config",
            cfg,
            "--emulator",
            &url,
            "--detailed-exitcode",
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o)
            .contains("Plan: 3 to create, 0 to update, 0 to replace, 0 to delete, 0 unchanged."),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("not in a git repository"), "{}", text(&o));

    let o = telbase(
        &[
            "plan",
            "--config",
            cfg,
            "--emulator",
            &url,
            "--format",
            "json",
        ],
        dir.path(),
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["format_version"], 1);

    // No terminal, no --auto-approve: refused, nothing written.
    let o = telbase(&["apply", "--config", cfg, "--emulator", &url], dir.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("refusing to apply without a terminal"),
        "{}",
        text(&o)
    );
    assert_eq!(emu.counters().writes, 0);

    let o = telbase(
        &[
            "apply",
            "--config",
            cfg,
            "--emulator",
            &url,
            "--auto-approve",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("Apply complete: 3 done."), "{}", text(&o));

    let o = telbase(
        &[
            "plan",
            "--config",
            cfg,
            "--emulator",
            &url,
            "--detailed-exitcode",
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("no changes"), "{}", text(&o));

    // A saved plan applies only while the providers still look as they did.
    let saved = dir.path().join("plan.json");
    emu.drift(
        &json!({"provider": "vercel", "project": "notes-web", "set": {"buildCommand": "make"}}),
    )
    .unwrap();
    let o = telbase(
        &[
            "plan",
            "--config",
            cfg,
            "--emulator",
            &url,
            "--out",
            saved.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    emu.drift(
        &json!({"provider": "vercel", "project": "notes-web", "set": {"buildCommand": "make all"}}),
    )
    .unwrap();
    let o = telbase(
        &[
            "apply",
            "--config",
            cfg,
            "--emulator",
            &url,
            "--plan",
            saved.to_str().unwrap(),
            "--auto-approve",
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("changed since the plan was made"),
        "{}",
        text(&o)
    );
    let o = telbase(
        &[
            "plan",
            "--config",
            cfg,
            "--emulator",
            &url,
            "--out",
            saved.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(o.status.success());
    let o = telbase(
        &[
            "apply",
            "--config",
            cfg,
            "--emulator",
            &url,
            "--plan",
            saved.to_str().unwrap(),
            "--auto-approve",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("Apply complete: 1 done."), "{}", text(&o));
    rt.block_on(emu.stop());
}

#[test]
fn without_credentials_the_error_says_what_to_set() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path());
    let o = telbase(&["plan", "--config", cfg.to_str().unwrap()], dir.path());
    assert_eq!(o.status.code(), Some(1));
    let t = text(&o);
    assert!(
        t.contains("vercel needs credentials: set VERCEL_TOKEN"),
        "{t}"
    );
    assert!(t.contains("TELBASE_EMULATOR"), "{t}");
}

#[test]
fn an_emulator_url_that_is_not_loopback_http_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path());
    let o = telbase(
        &[
            "plan",
            "--config",
            cfg.to_str().unwrap(),
            "--emulator",
            "http://example.com:4010",
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("is not a URL Telbase can use"),
        "{}",
        text(&o)
    );
}

#[test]
fn kill_9_in_the_middle_of_an_apply_then_apply_again_finishes_without_duplicates() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    for kill_after_writes in [1u64, 3, 5] {
        let emu = rt.block_on(emu::start(Config {
            faults: telbase::emulator::Faults {
                latency: std::time::Duration::from_millis(40),
                ..Default::default()
            },
            ..Config::default()
        }));
        let url = emu.url();
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config(dir.path());
        let mut child = Command::new(env!("CARGO_BIN_EXE_telbase"))
            .args([
                "apply",
                "--config",
                cfg.to_str().unwrap(),
                "--emulator",
                &url,
                "--auto-approve",
            ])
            .env_remove("TELBASE_EMULATOR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while emu.counters().writes < kill_after_writes {
            assert!(
                std::time::Instant::now() < deadline,
                "the apply never wrote"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        child.kill().unwrap(); // SIGKILL: no cleanup, no goodbye.
        let _ = child.wait();
        let killed_at = emu.counters().writes;

        let o = telbase(
            &[
                "apply",
                "--config",
                cfg.to_str().unwrap(),
                "--emulator",
                &url,
                "--auto-approve",
            ],
            dir.path(),
        );
        assert!(
            o.status.success(),
            "after kill at {killed_at} writes: {}",
            text(&o)
        );
        let o = telbase(
            &[
                "plan",
                "--config",
                cfg.to_str().unwrap(),
                "--emulator",
                &url,
                "--detailed-exitcode",
            ],
            dir.path(),
        );
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let inv = emu.inventory();
        for k in ["vercel.projects", "neon.projects", "neon.databases"] {
            assert_eq!(inv[k], 1, "{k} after a kill at {killed_at} writes: {inv:?}");
        }
        rt.block_on(emu.stop());
    }
}

#[test]
fn emulate_refuses_bad_settings_with_a_clear_message() {
    let o = telbase(&["emulate", "--listen", "0.0.0.0:0"], &root());
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("listens on loopback only"),
        "{}",
        text(&o)
    );
    let o = telbase(
        &[
            "emulate",
            "--listen",
            "127.0.0.1:0",
            "--rate-5xx",
            "0.8",
            "--rate-429",
            "0.5",
        ],
        &root(),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("must add up to 1 or less"),
        "{}",
        text(&o)
    );
    let o = telbase(
        &["emulate", "--listen", "127.0.0.1:0", "--rate-reset", "1.5"],
        &root(),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("between 0 and 1"), "{}", text(&o));
}

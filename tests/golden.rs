//! Golden tests over the invalid corpus (`tests/invalid/*.yaml`): `telbase validate` must
//! print exactly the diagnostics kept beside each file and exit 1, in every output format.

mod common;

use common::{assert_golden, root, telbase};

fn corpus() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root().join("tests/invalid"))
        .expect("tests/invalid")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    assert!(names.len() >= 15, "the invalid corpus shrank: {names:?}");
    names
}

#[test]
fn invalid_corpus_matches_golden_text() {
    let dir = root().join("tests/invalid");
    for name in corpus() {
        let out = telbase(&["validate", &name], &dir);
        let stdout = String::from_utf8(out.stdout).expect("utf-8 output");
        assert_eq!(
            out.status.code(),
            Some(1),
            "{name} should be invalid:\n{stdout}"
        );
        assert!(out.stderr.is_empty(), "{name}: unexpected stderr");
        assert_golden(&dir.join(name.replace(".yaml", ".out")), &stdout);
    }
}

#[test]
fn invalid_corpus_matches_golden_json_and_github() {
    let dir = root().join("tests/invalid");
    for name in corpus() {
        let out = telbase(&["validate", "--format", "json", &name], &dir);
        assert_eq!(out.status.code(), Some(1));
        let stdout = String::from_utf8(out.stdout).unwrap();
        let parsed: Vec<serde_json::Value> = serde_json::from_str(&stdout).expect("json array");
        assert!(!parsed.is_empty());
        for d in &parsed {
            for field in ["file", "line", "column", "code", "message"] {
                assert!(
                    d.get(field).is_some(),
                    "{name}: diagnostic without {field}: {d}"
                );
            }
        }
        assert_golden(&dir.join(name.replace(".yaml", ".json")), &stdout);

        let out = telbase(&["validate", "--format", "github", &name], &dir);
        let stdout = String::from_utf8(out.stdout).unwrap();
        for line in stdout.lines() {
            assert!(
                line.starts_with("::error file=") || line.starts_with("::warning file="),
                "{name}: not an annotation: {line}"
            );
        }
    }
}

#[test]
fn all_files_in_one_run_and_exit_codes() {
    let dir = root().join("tests/invalid");
    // Several files: every one is reported, the exit code is the worst.
    let out = telbase(&["validate", "cycle.yaml", "tabs.yaml"], &dir);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("cycle.yaml: invalid"));
    assert!(stdout.contains("tabs.yaml: invalid"));
    assert_eq!(out.status.code(), Some(1));
    // An unreadable file means the check could not run: exit 2.
    let out = telbase(&["validate", "does-not-exist.yaml"], &dir);
    assert_eq!(out.status.code(), Some(2));
    // A usage error is also 2.
    let out = telbase(&["validate", "--format", "xml"], &dir);
    assert_eq!(out.status.code(), Some(2));
}

//! Every example validates with no diagnostic at all, its lowered resources match the golden
//! listing (production and a preview), and the committed JSON Schema is the one the code
//! generates.

mod common;

use common::{assert_golden, root, telbase};

fn examples() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root().join("examples"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("telbase.yaml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(
        names.len() >= 4,
        "expected at least four examples: {names:?}"
    );
    names
}

#[test]
fn every_example_is_valid_without_warnings() {
    for name in examples() {
        let dir = root().join("examples").join(&name);
        let out = telbase(&["validate", "--format", "json", "telbase.yaml"], &dir);
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_eq!(out.status.code(), Some(0), "{name}: {stdout}");
        assert_eq!(stdout.trim(), "[]", "{name} has diagnostics: {stdout}");
    }
}

#[test]
fn example_resources_match_golden() {
    for name in examples() {
        let dir = root().join("examples").join(&name);
        for (suffix, args) in [
            (
                "production",
                vec!["validate", "--show-resources", "telbase.yaml"],
            ),
            (
                "preview",
                vec![
                    "validate",
                    "--show-resources",
                    "--preview",
                    "42",
                    "telbase.yaml",
                ],
            ),
        ] {
            let out = telbase(&args, &dir);
            assert_eq!(out.status.code(), Some(0));
            let stdout = String::from_utf8(out.stdout).unwrap();
            assert_golden(
                &root().join(format!("tests/golden/{name}.{suffix}.txt")),
                &stdout,
            );
        }
    }
}

#[test]
fn committed_schema_is_current() {
    let out = telbase(&["schema"], &root());
    assert_eq!(out.status.code(), Some(0));
    let generated = String::from_utf8(out.stdout).unwrap();
    let committed = std::fs::read_to_string(root().join("schemas/telbase.schema.json")).unwrap();
    assert!(
        generated == committed,
        "schemas/telbase.schema.json is stale: run `cargo run -- schema > schemas/telbase.schema.json`"
    );
}

#[test]
fn show_resources_json_is_the_desired_state() {
    let dir = root().join("examples/monorepo");
    let out = telbase(
        &[
            "validate",
            "--show-resources",
            "--format",
            "json",
            "telbase.yaml",
        ],
        &dir,
    );
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let state = &v[0]["desired_state"];
    assert_eq!(state["project"], "acme");
    let resources = state["resources"].as_array().unwrap();
    assert!(resources.len() > 10);
    // Sealed values never leave as text, not even as ciphertext.
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        !text.contains("AGE ENCRYPTED"),
        "sealed armor leaked into output"
    );
}

#[path = "common/generate.rs"]
mod generate;

#[test]
fn a_project_with_1000_apps_and_1000_databases_fits_the_budgets() {
    // The parser's node budget must leave room for the largest project we benchmark.
    let big = generate::large_config(1000, 1000);
    let checked = telbase::config::check_str(&big);
    assert!(
        checked.is_valid(),
        "{:?}",
        &checked.diagnostics[..checked.diagnostics.len().min(5)]
    );
    let state = telbase::config::lower::lower(
        checked.config.as_ref().unwrap(),
        telbase::model::Environment::Production,
    );
    assert!(state.resources.len() > 4000, "{}", state.resources.len());
}

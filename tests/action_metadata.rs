//! The metadata check of `action.yml`: the rules of GitHub's action metadata syntax that a
//! typo would break silently (required fields, a composite `runs`, a shell on every run
//! step, the inputs and step outputs that expressions name), the security rule that no
//! `${{ … }}` appears inside a `run:` script (script injection: values reach the scripts
//! through `env:`), and that every input and output is documented in docs/github-action.md.
//! Each rule is also run on a broken copy, so a rule that can no longer fail is noticed.

#[path = "common/action_yml.rs"]
mod action_yml;

use std::collections::BTreeSet;

use action_yml::{Action, expressions};
use regex::Regex;

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn action_src() -> String {
    std::fs::read_to_string(root().join("action.yml")).expect("action.yml")
}

fn docs_src() -> String {
    std::fs::read_to_string(root().join("docs/github-action.md")).expect("docs/github-action.md")
}

/// GitHub: an input or output id starts with a letter or `_` and holds only alphanumerics,
/// `-` and `_`; step ids follow the same rule.
fn valid_id(id: &str) -> bool {
    Regex::new(r"^[A-Za-z_][A-Za-z0-9_-]*$")
        .unwrap()
        .is_match(id)
}

/// Every problem with the metadata in `src` (and its documentation `docs`), one line each.
fn check(src: &str, docs: &str) -> Vec<String> {
    let action: Action = match action_yml::parse(src) {
        Ok(a) => a,
        Err(e) => return vec![format!("not valid action metadata: {e}")],
    };
    let mut problems = Vec::new();
    if action.name.as_deref().is_none_or(|n| n.trim().is_empty()) {
        problems.push("missing required `name`".to_owned());
    }
    if action
        .description
        .as_deref()
        .is_none_or(|d| d.trim().is_empty())
    {
        problems.push("missing required `description`".to_owned());
    }
    for name in action.inputs.keys() {
        if !valid_id(name) {
            problems.push(format!("input name `{name}` is not a valid id"));
        }
    }
    for name in action.outputs.keys() {
        if !valid_id(name) {
            problems.push(format!("output name `{name}` is not a valid id"));
        }
    }
    let Some(runs) = &action.runs else {
        problems.push("missing required `runs`".to_owned());
        return problems;
    };
    if runs.using.as_deref() != Some("composite") {
        problems.push(format!(
            "runs.using is {:?}, expected composite",
            runs.using
        ));
    }
    if runs.steps.is_empty() {
        problems.push("runs.steps is empty".to_owned());
    }

    let input_ref = Regex::new(r"\binputs\.([A-Za-z0-9_-]+)").unwrap();
    let step_ref = Regex::new(r"\bsteps\.([A-Za-z0-9_-]+)\.outputs\.([A-Za-z0-9_-]+)").unwrap();
    // Every expression in the file with where it is, for the reference rules below.
    let mut exprs: Vec<(String, String)> = Vec::new();
    fn collect(
        exprs: &mut Vec<(String, String)>,
        problems: &mut Vec<String>,
        place: String,
        text: &str,
    ) {
        match expressions(text) {
            Ok(found) => exprs.extend(found.into_iter().map(|e| (place.clone(), e))),
            Err(e) => problems.push(format!("{place}: {e}")),
        }
    }
    for (name, input) in &action.inputs {
        if let Some(d) = &input.default {
            collect(
                &mut exprs,
                &mut problems,
                format!("inputs.{name}.default"),
                d,
            );
        }
    }
    let mut ids_so_far: BTreeSet<String> = BTreeSet::new();
    let mut step_exprs: Vec<(usize, String, String)> = Vec::new();
    for (i, step) in runs.steps.iter().enumerate() {
        let place = format!(
            "step {} ({})",
            i + 1,
            step.id.as_deref().or(step.name.as_deref()).unwrap_or("?")
        );
        match (&step.run, &step.uses) {
            (Some(run), None) => {
                if step.shell.is_none() {
                    problems.push(format!("{place}: a run step needs `shell`"));
                }
                if run.contains("${{") {
                    problems.push(format!(
                        "{place}: `${{{{` inside run: (pass the value through env: instead)"
                    ));
                }
            }
            (None, Some(_)) => {}
            _ => problems.push(format!("{place}: needs exactly one of `run` and `uses`")),
        }
        if let Some(id) = &step.id {
            if !valid_id(id) {
                problems.push(format!("{place}: step id `{id}` is not a valid id"));
            }
            if !ids_so_far.insert(id.clone()) {
                problems.push(format!("{place}: duplicate step id `{id}`"));
            }
        }
        let mut texts: Vec<(String, &str)> = Vec::new();
        for (k, v) in &step.env {
            texts.push((format!("{place} env.{k}"), v));
        }
        for (k, v) in &step.with {
            texts.push((format!("{place} with.{k}"), v));
        }
        if let Some(w) = &step.working_directory {
            texts.push((format!("{place} working-directory"), w));
        }
        if let Some(c) = &step.if_ {
            // `if:` may be written without `${{ }}`: the whole value is the expression.
            let e = if c.contains("${{") {
                c.clone()
            } else {
                format!("${{{{ {c} }}}}")
            };
            match expressions(&e) {
                Ok(found) => {
                    for x in found {
                        step_exprs.push((i, format!("{place} if"), x));
                    }
                }
                Err(err) => problems.push(format!("{place} if: {err}")),
            }
        }
        for (p, t) in texts {
            match expressions(t) {
                Ok(found) => {
                    for x in found {
                        step_exprs.push((i, p.clone(), x));
                    }
                }
                Err(err) => problems.push(format!("{p}: {err}")),
            }
        }
    }
    // A step may only read the outputs of a step before it.
    let ids_before = |i: usize| -> BTreeSet<&str> {
        runs.steps[..i]
            .iter()
            .filter_map(|s| s.id.as_deref())
            .collect()
    };
    for (i, place, e) in &step_exprs {
        for c in step_ref.captures_iter(e) {
            if !ids_before(*i).contains(&c[1]) {
                problems.push(format!(
                    "{place}: `{e}` reads step `{}`, which is not an earlier step",
                    &c[1]
                ));
            }
        }
    }
    exprs.extend(step_exprs.into_iter().map(|(_, p, e)| (p, e)));
    let whole = Regex::new(r"^\$\{\{\s*steps\.([A-Za-z0-9_-]+)\.outputs\.([A-Za-z0-9_-]+)\s*\}\}$")
        .unwrap();
    for (name, output) in &action.outputs {
        let place = format!("outputs.{name}.value");
        let Some(value) = &output.value else {
            problems.push(format!(
                "{place}: a composite action's output needs `value`"
            ));
            continue;
        };
        match whole.captures(value.trim()) {
            Some(c) if ids_so_far.contains(&c[1]) => {}
            Some(c) => problems.push(format!(
                "{place}: refers to step `{}`, which has no such id",
                &c[1]
            )),
            None => problems.push(format!(
                "{place}: should be ${{{{ steps.ID.outputs.NAME }}}}, is {value:?}"
            )),
        }
        collect(&mut exprs, &mut problems, place, value);
    }
    for (place, e) in &exprs {
        for c in input_ref.captures_iter(e) {
            if !action.inputs.contains_key(&c[1]) {
                problems.push(format!(
                    "{place}: `{e}` names input `{}`, which is not declared",
                    &c[1]
                ));
            }
        }
    }
    // Documented: each input and output named in backticks in docs/github-action.md.
    for name in action.inputs.keys() {
        if !docs.contains(&format!("`{name}`")) {
            problems.push(format!(
                "input `{name}` is not documented in docs/github-action.md"
            ));
        }
    }
    for name in action.outputs.keys() {
        if !docs.contains(&format!("`{name}`")) {
            problems.push(format!(
                "output `{name}` is not documented in docs/github-action.md"
            ));
        }
    }
    problems
}

#[test]
fn action_yml_passes_the_metadata_check() {
    let problems = check(&action_src(), &docs_src());
    assert!(problems.is_empty(), "action.yml:\n{}", problems.join("\n"));
    // And it is the action the docs describe: the four commands' inputs and outputs.
    let a = action_yml::read();
    for input in [
        "command",
        "config",
        "environment",
        "version",
        "comment",
        "github-token",
        "working-directory",
        "fail-on-drift",
        "workload-identity-provider",
        "service-account",
    ] {
        assert!(a.inputs.contains_key(input), "input {input} missing");
    }
    assert!(a.inputs["command"].required);
    assert_eq!(
        a.inputs["github-token"].default.as_deref(),
        Some("${{ github.token }}")
    );
    for output in ["has-changes", "plan-json", "summary", "exit-code"] {
        assert!(a.outputs.contains_key(output), "output {output} missing");
    }
}

/// `src` with `from` replaced by `to` (which must occur), checked: the problems found.
fn broken(from: &str, to: &str) -> Vec<String> {
    let src = action_src();
    assert!(src.contains(from), "action.yml no longer contains {from:?}");
    check(&src.replacen(from, to, 1), &docs_src())
}

fn assert_caught(problems: &[String], needle: &str) {
    assert!(
        problems.iter().any(|p| p.contains(needle)),
        "expected a problem containing {needle:?}, got {problems:#?}"
    );
}

#[test]
fn each_rule_fails_on_a_broken_copy() {
    assert_caught(&broken("name: Telbase\n", ""), "missing required `name`");
    assert_caught(
        &broken("description: Validate, plan", "descriptio: Validate, plan"),
        "not valid action metadata",
    );
    assert_caught(
        &broken(
            "description: Validate, plan and apply telbase.yaml from a workflow, with a plan comment on pull requests, job summaries and keyless Google auth.\n",
            "",
        ),
        "missing required `description`",
    );
    assert_caught(
        &broken("using: composite", "using: node20"),
        "expected composite",
    );
    assert_caught(
        &broken(
            "runs:\n  using: composite\n  steps:",
            "runz:\n  using: composite\n  steps:",
        ),
        "not valid action metadata",
    );
    assert_caught(
        &broken("      id: setup\n      shell: bash\n", "      id: setup\n"),
        "needs `shell`",
    );
    assert_caught(
        &broken("${{ inputs.config }}", "${{ inputs.configuration }}"),
        "names input `configuration`, which is not declared",
    );
    assert_caught(
        &broken(
            "${{ steps.run.outputs.summary }}",
            "${{ steps.runner.outputs.summary }}",
        ),
        "refers to step `runner`",
    );
    assert_caught(
        &broken("${{ steps.run.outputs.summary }}", "${{ inputs.command }}"),
        "should be ${{ steps.ID.outputs.NAME }}",
    );
    assert_caught(
        &broken("\n  fail-on-drift:\n", "\n  fail on drift:\n"),
        "is not a valid id",
    );
    assert_caught(
        &broken(
            r#"run: bash "$GITHUB_ACTION_PATH/scripts/action/run.sh""#,
            r#"run: bash "$GITHUB_ACTION_PATH/scripts/action/run.sh" "${{ inputs.command }}""#,
        ),
        "inside run:",
    );
    assert_caught(
        &broken(
            "TELBASE_VERSION: ${{ steps.setup.outputs.version }}",
            "TELBASE_VERSION: ${{ steps.run.outputs.version }}",
        ),
        "not an earlier step",
    );
    assert_caught(&broken("id: install\n", "id: setup\n"), "duplicate step id");
    assert_caught(
        &broken(
            "${{ steps.setup.outputs.target }}",
            "${{ steps.setup.outputs.target }",
        ),
        "unclosed",
    );
    // An input that is not documented.
    let src = action_src().replacen(
        "inputs:\n",
        "inputs:\n  undocumented-knob:\n    description: x\n    required: false\n",
        1,
    );
    assert_caught(
        &check(&src, &docs_src()),
        "input `undocumented-knob` is not documented",
    );
    let docs = docs_src().replace("`plan-json`", "plan json");
    assert_caught(
        &check(&action_src(), &docs),
        "output `plan-json` is not documented",
    );
}

/// The release workflow builds, and names, exactly what the action downloads: one archive
/// per target that scripts/action/setup.sh maps a runner to.
#[test]
fn the_release_builds_every_target_the_action_installs() {
    let read = |p: &str| std::fs::read_to_string(root().join(p)).expect(p);
    let wf: serde_json::Value =
        serde_saphyr::from_str(&read(".github/workflows/release.yml")).expect("release.yml");
    let built: BTreeSet<String> = wf["jobs"]["build"]["strategy"]["matrix"]["include"]
        .as_array()
        .expect("a build matrix")
        .iter()
        .map(|m| m["target"].as_str().expect("target").to_owned())
        .collect();
    let setup = read("scripts/action/setup.sh");
    let installed: BTreeSet<String> = Regex::new(r"\) target=([a-z0-9_]+-[a-z0-9_-]+) ;;")
        .unwrap()
        .captures_iter(&setup)
        .map(|c| c[1].to_owned())
        .collect();
    assert_eq!(installed.len(), 5, "{installed:?}");
    assert_eq!(built, installed);
    let release = read(".github/workflows/release.yml");
    let install = read("scripts/action/install.sh");
    assert!(release.contains(r#"stem="telbase-$TAG-$TARGET""#));
    assert!(release.contains(r#""$stem.zip""#) && release.contains(r#""dist/$stem.tar.gz""#));
    assert!(release.contains("sha256sum telbase-* > SHA256SUMS"));
    assert!(install.contains(r#"stem="telbase-$version-$target""#));
    assert!(install.contains(r#"asset="$stem.$ext""#));
}

/// The example workflows and the README's use the action as documented: only inputs that
/// action.yml declares (actionlint cannot check a remote action's inputs), a valid command,
/// one placeholder reference, and the least permissions: nothing at the top, `id-token:
/// write` exactly in jobs that use keyless auth, `pull-requests: write` only where a plan
/// can comment, and applies that never cancel one another.
#[test]
fn the_example_workflows_use_the_action_as_documented() {
    let action = action_yml::read();
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = readme
        .split("\n## GitHub Action\n")
        .nth(1)
        .expect("README has a GitHub Action section");
    let readme_workflow = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("a yaml block in the README's GitHub Action section");
    let mut workflows = vec![("README.md".to_owned(), readme_workflow.to_owned())];
    for name in ["plan-apply.yml", "drift.yml"] {
        let p = format!("examples/workflows/{name}");
        workflows.push((
            p.clone(),
            std::fs::read_to_string(root().join(&p)).expect(&p),
        ));
    }
    let mut uses_seen = 0;
    for (file, src) in &workflows {
        let wf: serde_json::Value = serde_saphyr::from_str(src).expect(file);
        assert_eq!(
            wf["permissions"],
            serde_json::json!({}),
            "{file}: top-level permissions"
        );
        for (job_name, job) in wf["jobs"].as_object().expect("jobs") {
            let at = format!("{file} job {job_name}");
            let perms = job["permissions"]
                .as_object()
                .unwrap_or_else(|| panic!("{at}: no permissions"));
            let mut keyless = false;
            let mut commands = Vec::new();
            for step in job["steps"].as_array().expect("steps") {
                let Some(uses) = step["uses"].as_str() else {
                    continue;
                };
                if !uses.contains("/telbase@") {
                    continue;
                }
                uses_seen += 1;
                assert_eq!(uses, "telbase-dev/telbase@v1", "{at}");
                let with = step["with"]
                    .as_object()
                    .unwrap_or_else(|| panic!("{at}: no with"));
                for key in with.keys() {
                    assert!(
                        action.inputs.contains_key(key),
                        "{at}: `{key}` is not an input of action.yml"
                    );
                }
                keyless |= with.contains_key("workload-identity-provider");
                let command = with["command"].as_str().expect("command");
                commands.push(command.to_owned());
                assert!(
                    ["validate", "plan", "apply", "drift"].contains(&command)
                        || command.contains("${{"),
                    "{at}: command {command}"
                );
            }
            assert_eq!(
                perms.get("contents").and_then(|v| v.as_str()),
                Some("read"),
                "{at}"
            );
            assert_eq!(
                perms.get("id-token").and_then(|v| v.as_str()) == Some("write"),
                keyless,
                "{at}: id-token: write exactly where keyless auth is used"
            );
            if perms.contains_key("pull-requests") {
                assert!(
                    commands.iter().any(|c| c.contains("plan")),
                    "{at}: pull-requests without a plan"
                );
            }
            if commands.iter().any(|c| c.contains("apply")) {
                assert_eq!(
                    job["concurrency"]["cancel-in-progress"], false,
                    "{at}: an apply may be cancelled"
                );
                assert!(
                    job["concurrency"]["group"].is_string(),
                    "{at}: no concurrency group"
                );
            }
        }
    }
    assert!(uses_seen >= 4, "{uses_seen}");
}

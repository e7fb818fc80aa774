//! `telbase ci` as a workflow step runs it: the real binary with an environment like the
//! runner's (GITHUB_* variables, real webhook payloads as GITHUB_EVENT_PATH, temporary files
//! for GITHUB_OUTPUT and GITHUB_STEP_SUMMARY), the emulator for the providers and for GitHub
//! (the workflow token, the comment), and everything read back as GitHub reads it: outputs
//! through the runner's heredoc parsing, annotations through its command parsing, the
//! comment through the API, every GitHub exchange checked against GitHub's description.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};
use telbase::conformance::{ApiDescription, Exchange};
use telbase::emulator::{Config, Handle};
use telbase::gha::command::parse_command;
use telbase::gha::files::parse_file_commands;

use common::{assert_golden, emu, root};

const REPO: &str = "Codertocat/Hello-World";
/// The head of the pull request in GitHub's sample payload.
const HEAD: &str = "ec26c3e57ca3a959ca5aad62de7213c562f8c821";
/// The merge commit GitHub would make for the run (GITHUB_SHA on pull_request events).
const MERGE: &str = "9999999999999999999999999999999999999999";
const MAIN: &str = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";
const TOKEN: &str = "ghs_workflowtoken000000000000000000001";
const READ_ONLY: &str = "ghs_forktoken00000000000000000000000002";

/// A real webhook payload from the shared provider descriptions (skipped with a reason
/// where they are missing, except in CI).
fn payload(name: &str) -> Option<Value> {
    let dir = common::provider_apis()?;
    let p = dir.join(format!("github/webhooks/{name}.payload.json"));
    Some(serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
}

/// One workflow step's world: a workspace, the runner's files, the variables.
struct Gha {
    dir: tempfile::TempDir,
    vars: Vec<(String, String)>,
}

impl Gha {
    fn new() -> Gha {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("work/infra")).unwrap();
        std::fs::create_dir_all(dir.path().join("temp")).unwrap();
        let p = |s: &str| dir.path().join(s).to_str().unwrap().to_owned();
        let vars = vec![
            ("GITHUB_ACTIONS", "true".to_owned()),
            ("CI", "true".to_owned()),
            ("GITHUB_REPOSITORY", REPO.to_owned()),
            ("GITHUB_SERVER_URL", "https://github.com".to_owned()),
            ("GITHUB_RUN_ID", "4242".to_owned()),
            ("GITHUB_RUN_ATTEMPT", "1".to_owned()),
            ("GITHUB_WORKSPACE", p("work")),
            ("GITHUB_OUTPUT", p("output")),
            ("GITHUB_STEP_SUMMARY", p("summary.md")),
            ("RUNNER_TEMP", p("temp")),
            ("NO_COLOR", "1".to_owned()),
        ];
        Gha {
            vars: vars.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            dir,
        }
    }

    fn set(&mut self, k: &str, v: &str) {
        self.vars.retain(|(n, _)| n != k);
        self.vars.push((k.to_owned(), v.to_owned()));
    }

    fn unset(&mut self, k: &str) {
        self.vars.retain(|(n, _)| n != k);
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn config(&self, text: &str) {
        std::fs::write(self.path("work/infra/telbase.yaml"), text).unwrap();
    }

    /// The event of the run: its name, and its payload written where GITHUB_EVENT_PATH
    /// points.
    fn event(&mut self, name: &str, payload: &Value) {
        let p = self.path("event.json");
        std::fs::write(&p, serde_json::to_vec(payload).unwrap()).unwrap();
        self.set("GITHUB_EVENT_NAME", name);
        self.set("GITHUB_EVENT_PATH", p.to_str().unwrap());
    }

    fn pull_request(&mut self, payload: &Value) {
        self.event("pull_request", payload);
        self.set("GITHUB_SHA", MERGE);
        let n = payload["number"].as_u64().unwrap();
        self.set("GITHUB_REF", &format!("refs/pull/{n}/merge"));
    }

    fn push(&mut self, branch: &str, sha: &str) {
        let mut p = payload("push.create-default-branch.with-installation")
            .unwrap_or_else(|| json!({"ref": "", "after": "", "repository": {"full_name": REPO}}));
        p["ref"] = format!("refs/heads/{branch}").into();
        p["after"] = sha.into();
        self.event("push", &p);
        self.set("GITHUB_SHA", sha);
        self.set("GITHUB_REF", &format!("refs/heads/{branch}"));
    }

    /// Run `telbase ci ARGS` in the workspace, with only this world's variables (a test
    /// run inside GitHub Actions must not leak the real run's into it). The runner's files
    /// start empty for each step, as the runner makes a fresh pair per step.
    fn run(&self, args: &[&str]) -> Step {
        let _ = std::fs::remove_file(self.path("output"));
        let _ = std::fs::remove_file(self.path("summary.md"));
        let out = Command::new(env!("CARGO_BIN_EXE_telbase"))
            .arg("ci")
            .args(args)
            .args(["--config", "infra/telbase.yaml"])
            .current_dir(self.path("work"))
            .env_clear()
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .expect("run telbase");
        Step {
            outputs: std::fs::read_to_string(self.path("output"))
                .map(|t| parse_file_commands(&t).expect("the runner can read GITHUB_OUTPUT"))
                .unwrap_or_default(),
            summary: std::fs::read_to_string(self.path("summary.md")).unwrap_or_default(),
            out,
        }
    }
}

struct Step {
    out: Output,
    outputs: Vec<(String, String)>,
    summary: String,
}

impl Step {
    fn code(&self) -> Option<i32> {
        self.out.status.code()
    }
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    fn all(&self) -> String {
        format!("--- stdout\n{}--- stderr\n{}", self.stdout(), self.stderr())
    }
    fn output(&self, name: &str) -> &str {
        self.outputs
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no output {name}: {:?}", self.outputs))
    }
    /// The workflow commands on standard output, parsed as the runner parses them.
    fn commands(&self) -> Vec<telbase::gha::command::Parsed> {
        self.stdout().lines().filter_map(parse_command).collect()
    }
    fn last_stderr_line(&self) -> String {
        self.stderr().lines().last().unwrap_or_default().to_owned()
    }
}

fn quickstart() -> String {
    emu::quickstart("notes")
}

/// The quickstart with a database branch per preview (as tests/serve.rs uses it).
fn preview_config(project: &str) -> String {
    emu::quickstart(project).replace(
        "    version: 17\n",
        "    version: 17\n    branch_per_preview: true\n",
    )
}

async fn github(emu: &Handle) {
    emu.github_seed(&json!({
        "installations": [{"id": 1, "account": "Codertocat", "repos": [REPO]}],
        "workflow_tokens": [
            {"token": TOKEN, "installation": 1},
            {"token": READ_ONLY, "installation": 1, "read_only": true}
        ],
    }))
    .unwrap();
}

/// The comments on pull request `n`, through GitHub's API.
async fn comments(emu: &Handle, n: u64) -> Vec<Value> {
    let v: Value = reqwest::Client::new()
        .get(format!(
            "{}/github/repos/{REPO}/issues/{n}/comments?per_page=100",
            emu.url()
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v.as_array().unwrap().clone()
}

fn with_emulator(g: &mut Gha, emu: &Handle) {
    g.set("TELBASE_EMULATOR", &emu.url());
    g.set("GITHUB_API_URL", &format!("{}/github", emu.url()));
}

#[test]
fn validate_puts_each_problem_on_its_line_and_fails_the_step() {
    let mut g = Gha::new();
    let invalid = root().join("tests/invalid");
    for name in ["unknown-keys", "wrong-types", "bad-references"] {
        std::fs::copy(
            invalid.join(format!("{name}.yaml")),
            g.path("work/infra/telbase.yaml"),
        )
        .unwrap();
        let expected: Vec<Value> = serde_json::from_str(
            &std::fs::read_to_string(invalid.join(format!("{name}.json"))).unwrap(),
        )
        .unwrap();
        let s = g.run(&["validate"]);
        assert_eq!(s.code(), Some(1), "{name}: {}", s.all());
        let annotations: Vec<_> = s
            .commands()
            .into_iter()
            .filter(|(n, _, _)| n == "error" || n == "warning")
            .collect();
        assert_eq!(annotations.len(), expected.len(), "{name}: {}", s.all());
        for ((level, props, message), want) in annotations.iter().zip(&expected) {
            let prop = |k: &str| {
                props
                    .iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            assert_eq!(level, want["severity"].as_str().unwrap());
            // Relative to the workspace, so the annotation lands on the pull request's diff.
            assert_eq!(prop("file"), "infra/telbase.yaml");
            assert_eq!(prop("line"), want["line"].to_string(), "{name}");
            assert_eq!(prop("col"), want["column"].to_string(), "{name}");
            assert_eq!(
                prop("title"),
                format!("telbase {}", want["code"].as_str().unwrap())
            );
            assert!(
                message.starts_with(want["message"].as_str().unwrap()),
                "{message}"
            );
        }
        assert_eq!(s.output("has-changes"), "false");
        assert_eq!(s.output("plan-json"), "");
        assert!(
            s.output("summary").starts_with("invalid: "),
            "{:?}",
            s.outputs
        );
        let last = s.last_stderr_line();
        assert!(
            last.starts_with("error: infra/telbase.yaml is invalid: ")
                && last.ends_with("(annotated on the file)"),
            "{last}"
        );
        assert!(
            s.summary
                .contains("### Telbase validate: `infra/telbase.yaml`")
        );
        assert!(s.summary.contains("| line "), "{}", s.summary);
    }

    g.config(&quickstart());
    let s = g.run(&["validate"]);
    assert_eq!(s.code(), Some(0), "{}", s.all());
    assert_eq!(s.output("summary"), "valid");
    assert!(s.commands().is_empty(), "{}", s.all());

    // A missing file: one annotation, one line on stderr.
    std::fs::remove_file(g.path("work/infra/telbase.yaml")).unwrap();
    let s = g.run(&["validate"]);
    assert_eq!(s.code(), Some(1), "{}", s.all());
    assert!(
        s.last_stderr_line()
            .starts_with("error: infra/telbase.yaml: "),
        "{}",
        s.all()
    );
    assert_eq!(s.commands().len(), 1, "{}", s.all());

    // Outside Actions: no workflow commands, outputs on stdout.
    g.config(&quickstart());
    g.unset("GITHUB_ACTIONS");
    g.unset("GITHUB_OUTPUT");
    g.unset("GITHUB_STEP_SUMMARY");
    let s = g.run(&["validate"]);
    assert_eq!(s.code(), Some(0), "{}", s.all());
    assert!(s.stdout().contains("summary=valid\n"), "{}", s.all());
    assert!(s.stdout().contains("### Telbase validate"), "{}", s.all());
    assert!(s.commands().is_empty());
}

#[test]
fn a_broken_actions_environment_fails_with_one_line_and_still_sets_outputs() {
    let mut g = Gha::new();
    g.config(&quickstart());
    g.set("GITHUB_EVENT_NAME", "pull_request");
    g.set(
        "GITHUB_EVENT_PATH",
        g.path("missing.json").to_str().unwrap(),
    );
    let s = g.run(&["plan"]);
    assert_eq!(s.code(), Some(1), "{}", s.all());
    assert_eq!(s.stderr().lines().count(), 1, "{}", s.all());
    assert!(
        s.last_stderr_line()
            .contains("cannot read the event payload"),
        "{}",
        s.all()
    );
    assert!(s.output("summary").starts_with("error: GITHUB_EVENT_PATH"));
    assert_eq!(s.output("has-changes"), "false");

    // A preview needs a pull request.
    g.event("workflow_dispatch", &json!({"inputs": {}}));
    let s = g.run(&["plan", "--environment", "preview"]);
    assert_eq!(s.code(), Some(1), "{}", s.all());
    assert!(
        s.last_stderr_line()
            .contains("--environment preview needs a pull_request"),
        "{}",
        s.all()
    );
    assert!(
        s.commands()
            .iter()
            .any(|(n, _, d)| n == "error" && d.contains("needs a pull_request")),
        "{}",
        s.all()
    );
}

#[test]
fn an_unknown_command_lists_the_valid_ones() {
    let g = Gha::new();
    let s = g.run(&["deploy"]);
    assert_eq!(s.code(), Some(2), "{}", s.all());
    assert!(
        s.stderr()
            .contains("[possible values: validate, plan, apply, drift]"),
        "{}",
        s.all()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_request_gets_its_preview_planned_and_one_comment_updated_in_place() {
    let Some(opened) = payload("pull_request.opened") else {
        return;
    };
    let emu = emu::start(Config {
        capture: true,
        ..Config::default()
    })
    .await;
    github(&emu).await;
    let mut g = Gha::new();
    with_emulator(&mut g, &emu);
    g.set("GITHUB_TOKEN", TOKEN);
    g.config(&preview_config("notes"));
    // Production first: a preview branches its database.
    g.push("main", MAIN);
    let s = tokio::task::block_in_place(|| g.run(&["apply"]));
    assert_eq!(s.code(), Some(0), "{}", s.all());
    assert_eq!(
        emu.inventory()["github/comment"],
        0,
        "no pull request, no comment"
    );

    g.pull_request(&opened);
    let s = tokio::task::block_in_place(|| g.run(&["plan"]));
    assert_eq!(s.code(), Some(0), "{}", s.all());
    assert_eq!(s.output("has-changes"), "true");
    assert_eq!(s.output("summary"), "1 to create, 1 to update, 0 to delete");
    let plan: Value =
        serde_json::from_str(&std::fs::read_to_string(s.output("plan-json")).unwrap()).unwrap();
    assert_eq!(plan["format_version"], 1);
    assert_eq!(plan["has_changes"], true);
    assert!(Path::new(s.output("plan-json")).starts_with(g.path("temp/telbase")));
    // The preview of #2, at the pull request's head, not the merge commit.
    assert!(s.summary.contains("preview of #2"), "{}", s.summary);
    assert!(
        s.summary.contains(&format!("commit `{}`", &HEAD[..7])),
        "{}",
        s.summary
    );
    assert!(!s.summary.contains("9999999"), "{}", s.summary);
    assert!(
        s.stdout().contains("Updated the pull request comment: "),
        "{}",
        s.all()
    );
    let first = comments(&emu, 2).await;
    assert_eq!(first.len(), 1);
    let body = first[0]["body"].as_str().unwrap().to_owned();
    assert!(
        body.starts_with("<!-- telbase:action config=infra/telbase.yaml -->\n"),
        "{body}"
    );
    assert!(body.contains("<details>"), "{body}");
    assert!(body.contains("https://github.com/Codertocat/Hello-World/actions/runs/4242"));
    assert_golden(&root().join("tests/golden/ci/pr-comment.md"), &body);
    assert_golden(&root().join("tests/golden/ci/pr-summary.md"), &s.summary);

    // The preview applied: the same comment now shows the results.
    let s = tokio::task::block_in_place(|| g.run(&["apply"]));
    assert_eq!(s.code(), Some(0), "{}", s.all());
    assert_eq!(s.output("summary"), "1 created, 1 updated, 0 deleted");
    let applied = comments(&emu, 2).await;
    assert_eq!(applied.len(), 1, "never a second comment");
    assert_eq!(applied[0]["id"], first[0]["id"], "the same comment");
    assert!(
        applied[0]["body"]
            .as_str()
            .unwrap()
            .contains("Telbase apply for `notes`: ✅ done"),
        "{}",
        applied[0]["body"]
    );

    // A new push to the pull request, with a changed config: the same comment, edited.
    let mut synced = opened.clone();
    synced["action"] = "synchronize".into();
    synced["pull_request"]["head"]["sha"] = "abcdef0123456789abcdef0123456789abcdef01".into();
    g.pull_request(&synced);
    g.config(&preview_config("notes").replace("SITE: notes", "SITE: notes-v2"));
    let s = tokio::task::block_in_place(|| g.run(&["plan"]));
    assert_eq!(s.code(), Some(0), "{}", s.all());
    let second = comments(&emu, 2).await;
    assert_eq!(second.len(), 1, "never a second comment");
    assert_eq!(second[0]["id"], first[0]["id"], "the same comment");
    let body2 = second[0]["body"].as_str().unwrap();
    assert_ne!(body2, body);
    assert!(body2.contains("commit `abcdef0`"), "{body2}");
    assert!(body2.contains("notes-v2"), "{body2}");
    assert_eq!(emu.inventory()["github/comment"], 1);

    // A broken config: the step fails, and the comment says so instead of showing a stale
    // plan.
    g.config(
        "version: 1\nproject: notes\napps:\n  web:\n    framework: nextjs\n    colour: blue\n",
    );
    let s = tokio::task::block_in_place(|| g.run(&["plan"]));
    assert_eq!(s.code(), Some(1), "{}", s.all());
    assert!(
        s.commands()
            .iter()
            .any(|(n, p, _)| n == "error" && p.contains(&("line".to_owned(), "6".to_owned()))),
        "{}",
        s.all()
    );
    let failed = comments(&emu, 2).await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["id"], first[0]["id"]);
    let text = failed[0]["body"].as_str().unwrap();
    assert!(
        text.contains("**Failed**: infra/telbase.yaml is invalid: "),
        "{text}"
    );
    g.config(&preview_config("notes"));

    // Closing the pull request tears its preview down: its database branch goes, the
    // production database stays; the same comment says so.
    let branches = emu.inventory()["neon.branches"];
    let mut closed = synced.clone();
    closed["action"] = "closed".into();
    closed["pull_request"]["state"] = "closed".into();
    g.pull_request(&closed);
    let s = tokio::task::block_in_place(|| g.run(&["apply"]));
    assert_eq!(s.code(), Some(0), "{}", s.all());
    assert!(s.output("summary").contains("1 deleted"), "{}", s.all());
    assert_eq!(emu.inventory()["neon.branches"], branches - 1);
    assert_eq!(emu.inventory()["neon.projects"], 1);
    let torn = comments(&emu, 2).await;
    assert_eq!(torn.len(), 1);
    assert!(
        torn[0]["body"]
            .as_str()
            .unwrap()
            .contains("its preview was torn down"),
        "{}",
        torn[0]["body"]
    );
    g.pull_request(&synced);

    // Another config in the same repository keeps its own comment.
    std::fs::create_dir_all(g.path("work/other")).unwrap();
    std::fs::write(g.path("work/other/telbase.yaml"), preview_config("notes")).unwrap();
    let out = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_telbase"))
            .args(["ci", "plan", "--config", "other/telbase.yaml"])
            .current_dir(g.path("work"))
            .env_clear()
            .envs(g.vars.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap()
    });
    assert!(out.status.success());
    assert_eq!(comments(&emu, 2).await.len(), 2);

    // Every exchange with GitHub is one GitHub's description allows.
    if let Some(apis) = common::provider_apis() {
        let desc =
            ApiDescription::from_file(&apis.join("github/github-openapi.subset.json")).unwrap();
        let exchanges: Vec<_> = emu
            .exchanges()
            .into_iter()
            .filter(|x| x.provider == "github")
            .collect();
        assert!(exchanges.len() >= 5, "{}", exchanges.len());
        let mut violations = Vec::new();
        for x in &exchanges {
            for v in desc.check(&Exchange::from(x)) {
                violations.push(format!("{}: {}", v.operation, v.message));
            }
        }
        assert!(violations.is_empty(), "{}", violations.join("\n"));
    }
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_or_with_a_read_only_one_the_plan_still_reaches_the_summary() {
    let Some(opened) = payload("pull_request.opened") else {
        return;
    };
    let emu = emu::start(Config::default()).await;
    github(&emu).await;
    let mut g = Gha::new();
    with_emulator(&mut g, &emu);
    g.pull_request(&opened);
    g.config(&quickstart());

    let s = tokio::task::block_in_place(|| g.run(&["plan"]));
    assert_eq!(s.code(), Some(0), "{}", s.all());
    assert!(
        s.summary.contains("Telbase plan for `notes`"),
        "{}",
        s.summary
    );
    let notice = s
        .commands()
        .into_iter()
        .find(|(n, _, _)| n == "notice")
        .unwrap_or_else(|| panic!("no notice: {}", s.all()));
    assert!(
        notice
            .2
            .contains("no pull request comment was posted: no GITHUB_TOKEN"),
        "{}",
        notice.2
    );
    assert!(notice.2.contains("pull-requests: write"), "{}", notice.2);

    // A fork's pull request: the token may only read.
    g.set("GITHUB_TOKEN", READ_ONLY);
    let s = tokio::task::block_in_place(|| g.run(&["plan"]));
    assert_eq!(s.code(), Some(0), "{}", s.all());
    let warning = s
        .commands()
        .into_iter()
        .find(|(n, _, _)| n == "warning")
        .unwrap_or_else(|| panic!("no warning: {}", s.all()));
    assert!(warning.2.contains("(403)"), "{}", warning.2);
    assert!(warning.2.contains("forks"), "{}", warning.2);
    assert_eq!(emu.inventory()["github/comment"], 0);
    assert_eq!(s.output("has-changes"), "true");

    // --comment never: not even a notice.
    g.unset("GITHUB_TOKEN");
    let s = tokio::task::block_in_place(|| g.run(&["plan", "--comment", "never"]));
    assert_eq!(s.code(), Some(0), "{}", s.all());
    let names: Vec<String> = s.commands().into_iter().map(|c| c.0).collect();
    assert_eq!(names, ["group", "endgroup"], "{}", s.all());
    emu.stop().await;
}

/// A config whose app has `n` variables with long values, all set to `fill`.
fn many_vars(n: usize, fill: char) -> String {
    let mut env = String::new();
    for i in 0..n {
        env.push_str(&format!(
            "      VAR_{i:03}: {}\n",
            fill.to_string().repeat(900)
        ));
    }
    quickstart().replace("      SITE: notes\n", &format!("      SITE: notes\n{env}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_on_the_production_branch_masks_secrets_and_reports_each_resource() {
    let emu = emu::start(Config::default()).await;
    github(&emu).await;
    let mut g = Gha::new();
    with_emulator(&mut g, &emu);
    g.config(&quickstart());

    // Not the production branch: nothing is applied, and the step says why.
    g.push("feature", MAIN);
    let s = tokio::task::block_in_place(|| g.run(&["apply"]));
    assert_eq!(s.code(), Some(0), "{}", s.all());
    assert!(
        s.output("summary").starts_with("skipped: "),
        "{:?}",
        s.outputs
    );
    assert!(
        s.commands()
            .iter()
            .any(|(n, _, d)| n == "notice" && d.contains("branch `main`")),
        "{}",
        s.all()
    );
    assert_eq!(emu.counters().writes, 0);

    g.push("main", MAIN);
    let s = tokio::task::block_in_place(|| g.run(&["apply"]));
    assert_eq!(s.code(), Some(0), "{}", s.all());
    assert_eq!(s.output("has-changes"), "true");
    assert_eq!(s.output("summary"), "3 created, 0 updated, 0 deleted");
    assert!(s.summary.contains("| `"), "{}", s.summary);
    assert!(s.summary.contains("✅ done"), "{}", s.summary);
    // The database URL passed through Telbase (Neon to Vercel): masked before anything else.
    let masks: Vec<String> = s
        .commands()
        .into_iter()
        .filter(|(n, _, _)| n == "add-mask")
        .map(|(_, _, d)| d)
        .collect();
    let url = masks
        .iter()
        .find(|m| m.starts_with("postgres"))
        .unwrap_or_else(|| panic!("the connection string was not masked: {}", s.all()))
        .clone();
    let first_mask = s.stdout().find("::add-mask::").unwrap();
    assert_eq!(s.stdout().matches(&url).count(), 1, "only in its mask");
    assert!(s.stdout().find(&url).unwrap() >= first_mask);
    assert!(!s.stderr().contains(&url));
    assert!(!s.summary.contains(&url));

    let again = tokio::task::block_in_place(|| g.run(&["apply"]));
    assert_eq!(again.code(), Some(0), "{}", again.all());
    assert_eq!(again.output("has-changes"), "false");
    assert_eq!(again.output("summary"), "0 created, 0 updated, 0 deleted");

    // Drift: found, named in a warning, and a failure only when asked.
    emu.drift(
        &json!({"provider": "vercel", "project": "notes-web", "set": {"buildCommand": "make"}}),
    )
    .unwrap();
    g.event("schedule", &json!({"schedule": "0 6 * * *"}));
    g.set("GITHUB_REF", "refs/heads/main");
    let s = tokio::task::block_in_place(|| g.run(&["drift"]));
    assert_eq!(s.code(), Some(0), "{}", s.all());
    assert_eq!(s.output("has-changes"), "true");
    let warning = s
        .commands()
        .into_iter()
        .find(|(n, _, _)| n == "warning")
        .unwrap_or_else(|| panic!("no drift warning: {}", s.all()));
    assert!(warning.2.contains("vercel"), "{}", warning.2);
    assert!(warning.2.contains("notes-web"), "{}", warning.2);
    let s = tokio::task::block_in_place(|| g.run(&["drift", "--fail-on-drift"]));
    assert_eq!(s.code(), Some(1), "{}", s.all());
    assert!(
        s.last_stderr_line().contains("--fail-on-drift"),
        "{}",
        s.all()
    );
    assert_eq!(s.output("has-changes"), "true");
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_larger_than_a_comment_is_cut_there_and_whole_in_the_summary() {
    let Some(opened) = payload("pull_request.opened") else {
        return;
    };
    let emu = emu::start(Config::default()).await;
    github(&emu).await;
    let mut g = Gha::new();
    with_emulator(&mut g, &emu);
    g.set("GITHUB_TOKEN", TOKEN);
    g.config(&many_vars(80, 'a'));
    g.push("main", MAIN);
    let s = tokio::task::block_in_place(|| g.run(&["apply"]));
    assert_eq!(s.code(), Some(0), "{}", s.all());

    // Every value changes: an update far larger than a comment.
    g.config(&many_vars(80, 'b'));
    g.pull_request(&opened);
    let s = tokio::task::block_in_place(|| g.run(&["plan", "--environment", "production"]));
    assert_eq!(s.code(), Some(0), "{}", s.all());
    let c = comments(&emu, 2).await;
    assert_eq!(c.len(), 1);
    let body = c[0]["body"].as_str().unwrap();
    assert!(body.chars().count() <= 65_536, "{}", body.chars().count());
    assert!(
        body.contains("not shown: the comment would exceed GitHub's size limit. The full plan is in the [job summary](https://github.com/Codertocat/Hello-World/actions/runs/4242)"),
        "{}",
        &body[body.len().saturating_sub(600)..]
    );
    // The summary has every variable's change.
    for i in [0, 40, 79] {
        assert!(s.summary.contains(&format!("VAR_{i:03}")), "VAR_{i:03}");
    }
    assert!(s.summary.len() > 65_536);
    emu.stop().await;
}

/// The plaintexts of the monorepo example's sealed values (its identity is published for
/// the demo).
fn monorepo_sealed() -> Vec<String> {
    let dir = root().join("examples/monorepo");
    let ids = telbase::secrets::parse_identities(
        &std::fs::read_to_string(dir.join("demo-identity.txt")).unwrap(),
    )
    .unwrap();
    let text = std::fs::read_to_string(dir.join("telbase.yaml")).unwrap();
    let (begin, end) = (
        "-----BEGIN AGE ENCRYPTED FILE-----",
        "-----END AGE ENCRYPTED FILE-----",
    );
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find(begin) {
        let j = rest[i..].find(end).unwrap() + i + end.len();
        let armor: Vec<&str> = rest[i..j].lines().map(str::trim).collect();
        let plain = telbase::secrets::open(armor.join("\n").as_bytes(), &ids).unwrap();
        out.push(String::from_utf8(plain.to_vec()).unwrap());
        rest = &rest[j..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sealed_value_is_masked_before_anything_else_and_printed_nowhere_else() {
    let secrets = monorepo_sealed();
    assert!(!secrets.is_empty(), "the example has sealed values");
    let emu = emu::start(Config::default()).await;
    let mut g = Gha::new();
    with_emulator(&mut g, &emu);
    let src = root().join("examples/monorepo");
    for f in ["telbase.yaml", ".telbase-recipients"] {
        if src.join(f).exists() {
            std::fs::copy(src.join(f), g.path("work/infra").join(f)).unwrap();
        }
    }
    g.set(
        "TELBASE_IDENTITY_FILE",
        src.join("demo-identity.txt").to_str().unwrap(),
    );
    g.set("RUST_LOG", "trace");
    g.push("main", MAIN);
    let s = tokio::task::block_in_place(|| g.run(&["apply"]));
    assert_eq!(s.code(), Some(0), "{}", s.all());
    assert!(s.stderr().contains("TRACE") || s.stderr().contains("DEBUG"));
    let stdout = s.stdout();
    let outputs = format!("{:?}", s.outputs);
    for secret in &secrets {
        for line in secret.lines().filter(|l| !l.trim().is_empty()) {
            let mask = format!("::add-mask::{}", line.replace('%', "%25"));
            let at = stdout
                .find(&mask)
                .unwrap_or_else(|| panic!("a sealed value was not masked:\n{}", s.all()));
            // Its mask is the only place it is printed, so nothing before the mask can have
            // shown it either.
            assert_eq!(stdout.matches(line).count(), 1, "printed outside its mask");
            assert!(stdout.find(line).unwrap() >= at);
            for (what, text) in [
                ("stderr", s.stderr()),
                ("the job summary", s.summary.clone()),
                ("the outputs", outputs.clone()),
            ] {
                assert!(!text.contains(line), "a sealed value in {what}");
            }
        }
    }
    emu.stop().await;
}

/// `pull_request_target` runs with the base branch's GITHUB_REF and this repository's
/// secrets, so it is where a pull request's code could reach production: production is
/// planned at the base commit and never applied from a pull-request event, and a fork's
/// pull request is never deployed, not even as a preview.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_request_target_never_puts_unmerged_or_forked_code_anywhere() {
    let Some(mut p) = payload("pull_request.opened") else {
        return;
    };
    let base = p["pull_request"]["base"]["sha"]
        .as_str()
        .unwrap()
        .to_owned();
    let emu = emu::start(Config::default()).await;
    github(&emu).await;
    let mut g = Gha::new();
    with_emulator(&mut g, &emu);
    g.config(&preview_config("notes"));
    g.event("pull_request_target", &p);
    // What GitHub sets for pull_request_target: the base branch and its commit.
    g.set("GITHUB_REF", "refs/heads/main");
    g.set("GITHUB_SHA", &base);

    let s = tokio::task::block_in_place(|| {
        g.run(&["plan", "--environment", "production", "--comment", "never"])
    });
    assert_eq!(s.code(), Some(0), "{}", s.all());
    assert!(s.summary.contains(&base[..7]), "{}", s.summary);
    assert!(!s.summary.contains(&HEAD[..7]), "{}", s.summary);

    let s = tokio::task::block_in_place(|| {
        g.run(&["apply", "--environment", "production", "--comment", "never"])
    });
    assert!(s.output("summary").starts_with("skipped: "), "{}", s.all());
    assert!(
        s.all().contains("never applied from a pull-request event"),
        "{}",
        s.all()
    );
    assert_eq!(emu.counters().writes, 0, "nothing was deployed");

    // The same pull request from a fork: its preview is not deployed either.
    p["pull_request"]["head"]["repo"]["full_name"] = "mallory/Hello-World".into();
    g.event("pull_request_target", &p);
    let s = tokio::task::block_in_place(|| g.run(&["apply", "--comment", "never"]));
    assert!(s.output("summary").starts_with("skipped: "), "{}", s.all());
    assert!(
        s.all().contains("the fork `mallory/Hello-World`"),
        "{}",
        s.all()
    );
    assert_eq!(emu.counters().writes, 0, "nothing was deployed");

    // From this repository, the preview's apply goes ahead (here it stops at Neon,
    // because production, whose project the preview branches from, was never applied).
    p["pull_request"]["head"]["repo"]["full_name"] = REPO.into();
    g.event("pull_request_target", &p);
    let s = tokio::task::block_in_place(|| g.run(&["apply", "--comment", "never"]));
    assert!(!s.output("summary").starts_with("skipped: "), "{}", s.all());
    assert!(
        s.stdout().contains("neon/branch/notes-main/pr-2"),
        "{}",
        s.all()
    );
    emu.stop().await;
}

/// The marker is public, so a comment that merely contains it is not Telbase's: someone
/// posting it first (on a busy pull request, past the first page of comments) must neither
/// get the plan written into their comment nor stop Telbase from keeping its own one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_marker_is_not_taken_for_telbases_comment() {
    let Some(p) = payload("pull_request.opened") else {
        return;
    };
    let n = p["number"].as_u64().unwrap();
    let emu = emu::start(Config::default()).await;
    github(&emu).await;
    let marker = telbase::gha::comment::marker("infra/telbase.yaml");
    let spoof = format!("{marker}\n### Telbase plan\n\nNo changes. (not really)");
    let mut planted = vec![
        json!({"repo": REPO, "issue": n, "body": spoof, "login": "mallory",
                                  "type": "User", "author_association": "CONTRIBUTOR"}),
    ];
    for i in 0..120 {
        planted.push(
            json!({"repo": REPO, "issue": n, "body": format!("lgtm {i}"),
                            "login": "reviewer", "type": "User", "author_association": "MEMBER"}),
        );
    }
    emu.github_seed(&json!({ "comments": planted })).unwrap();
    let mut g = Gha::new();
    with_emulator(&mut g, &emu);
    g.set("GITHUB_TOKEN", TOKEN);
    g.config(&preview_config("notes"));
    g.pull_request(&p);
    for round in 0..2 {
        let s = tokio::task::block_in_place(|| g.run(&["plan"]));
        assert_eq!(s.code(), Some(0), "round {round}: {}", s.all());
    }
    let all = comments_all(&emu, n).await;
    assert_eq!(
        all.len(),
        122,
        "the planted ones and exactly one of Telbase's"
    );
    assert_eq!(all[0]["body"].as_str(), Some(spoof.as_str()), "left alone");
    let ours: Vec<&Value> = all.iter().filter(|c| c["user"]["type"] == "Bot").collect();
    assert_eq!(ours.len(), 1, "one comment, updated in place");
    let body = ours[0]["body"].as_str().unwrap();
    assert!(body.starts_with(&marker), "{body}");
    assert!(body.contains("to create"), "{body}");
    emu.stop().await;
}

/// Every comment on pull request `n`, following GitHub's pages.
async fn comments_all(emu: &Handle, n: u64) -> Vec<Value> {
    let mut all = Vec::new();
    for page in 1.. {
        let v: Value = reqwest::Client::new()
            .get(format!(
                "{}/github/repos/{REPO}/issues/{n}/comments?per_page=100&page={page}",
                emu.url()
            ))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let batch = v.as_array().unwrap().clone();
        let done = batch.len() < 100;
        all.extend(batch);
        if done {
            break;
        }
    }
    all
}

//! The composite action (`action.yml`) run as GitHub's runner runs it, on this machine.
//!
//! A small runner below executes the action's steps in order: it evaluates the expressions
//! the action uses (`inputs.*`, `github.*`, `runner.*`, `steps.ID.outputs.*`, `env.*`, and
//! `==` / `!=` against a string in `if:`) and refuses any other expression, so a new one
//! cannot pass untested; it runs each `run:` with `bash --noprofile --norc -eo pipefail` (the
//! runner's `shell: bash`) and the step's environment; it gives each step fresh
//! GITHUB_OUTPUT, GITHUB_ENV, GITHUB_PATH and GITHUB_STEP_SUMMARY files and applies them as
//! the runner does (outputs to `steps.ID.outputs`, env and PATH to later steps, the step
//! summaries appended to the job summary); a failed step skips the rest. `uses:
//! actions/cache@…` is a cache miss (no cache exists on a fresh runner, and a miss is the
//! path that installs); any other `uses:` is an error.
//!
//! Around it: a loopback HTTP server plays the release (a tar.gz of the test-built
//! `telbase` and its SHA256SUMS) through TELBASE_RELEASES_URL; the emulator plays the
//! providers (TELBASE_EMULATOR) and GitHub's API (GITHUB_API_URL, with a workflow token);
//! GITHUB_EVENT_PATH is one of GitHub's real webhook payloads from ../shared.

#[path = "common/action_yml.rs"]
mod action_yml;
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use action_yml::{Action, Step, expressions};

// ---------------------------------------------------------------------------------------
// The runner
// ---------------------------------------------------------------------------------------

/// What the runner knows about the job the action runs in.
struct Job {
    /// GITHUB_WORKSPACE: the checkout, and where `working-directory` is relative to.
    workspace: PathBuf,
    /// The job's environment (GITHUB_*, RUNNER_*, the provider settings of the test).
    env: BTreeMap<String, String>,
    /// The `github` context (`github.token`, `github.action_repository`, …).
    github: BTreeMap<String, String>,
    /// The `runner` context (`runner.os`, `runner.arch`, …).
    runner: BTreeMap<String, String>,
    /// The job summary: every step's GITHUB_STEP_SUMMARY, appended.
    summary: PathBuf,
    /// Scratch for the runner's own files.
    scratch: PathBuf,
}

#[derive(Debug, Default)]
struct Outcome {
    /// The step that failed, with why; `None` when every step succeeded.
    failed: Option<String>,
    /// Ids (or names) of the steps that ran, in order.
    ran: Vec<String>,
    /// The action's outputs, as `outputs:` maps them.
    outputs: BTreeMap<String, String>,
    /// Everything the steps printed (stdout then stderr per step).
    log: String,
    /// The job summary after the action.
    summary: String,
    /// The `with:` of each `actions/cache` step, evaluated.
    cache: Vec<BTreeMap<String, String>>,
    /// The environment each run step started with, by step.
    envs: BTreeMap<String, BTreeMap<String, String>>,
}

struct Ctx<'a> {
    inputs: &'a BTreeMap<String, String>,
    job: &'a Job,
    env: &'a BTreeMap<String, String>,
    steps: &'a BTreeMap<String, BTreeMap<String, String>>,
}

/// One context reference, e.g. `steps.setup.outputs.version`.
fn lookup(r: &str, c: &Ctx) -> Result<String, String> {
    let ident = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
    };
    let parts: Vec<&str> = r.split('.').collect();
    match parts.as_slice() {
        ["inputs", name] if ident(name) => c
            .inputs
            .get(*name)
            .cloned()
            .ok_or_else(|| format!("inputs.{name} is not an input of the action")),
        ["github", name] if ident(name) => c
            .job
            .github
            .get(*name)
            .cloned()
            .ok_or_else(|| format!("github.{name}: the runner emulation does not provide it")),
        ["runner", name] if ident(name) => c
            .job
            .runner
            .get(*name)
            .cloned()
            .ok_or_else(|| format!("runner.{name}: the runner emulation does not provide it")),
        ["env", name] if ident(name) => Ok(c.env.get(*name).cloned().unwrap_or_default()),
        ["steps", id, "outputs", name] if ident(id) && ident(name) => match c.steps.get(*id) {
            // A step that ran (or was skipped) without that output reads as empty, as on GitHub.
            Some(outputs) => Ok(outputs.get(*name).cloned().unwrap_or_default()),
            None => Err(format!("steps.{id}: no earlier step has that id")),
        },
        _ => Err(format!(
            "`{r}` is an expression the runner emulation does not understand"
        )),
    }
}

/// Evaluate one expression (the text inside `${{ }}`).
fn eval(expr: &str, c: &Ctx) -> Result<String, String> {
    let expr = expr.trim();
    for op in ["!=", "=="] {
        if let Some((left, right)) = expr.split_once(op) {
            let right = right.trim();
            let lit = right
                .strip_prefix('\'')
                .and_then(|r| r.strip_suffix('\''))
                .filter(|l| !l.contains('\''))
                .ok_or_else(|| {
                    format!("`{expr}`: only a comparison with a 'string' is understood")
                })?;
            let value = lookup(left.trim(), c)?;
            // GitHub compares strings case-insensitively.
            let equal = value.eq_ignore_ascii_case(lit);
            return Ok(if (op == "==") == equal {
                "true"
            } else {
                "false"
            }
            .to_owned());
        }
    }
    lookup(expr, c)
}

/// `text` with each `${{ … }}` replaced by its value.
fn interpolate(text: &str, c: &Ctx) -> Result<String, String> {
    let exprs = expressions(text)?;
    let mut out = String::new();
    let mut rest = text;
    for e in exprs {
        let start = rest.find("${{").expect("found by expressions()");
        let end = rest[start..].find("}}").expect("closed") + start;
        out.push_str(&rest[..start]);
        out.push_str(&eval(&e, c)?);
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Parse a GITHUB_OUTPUT / GITHUB_ENV file: `name=value` lines and `name<<DELIM` … `DELIM`
/// blocks, as the runner reads them.
fn parse_file_commands(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.is_empty() {
            continue;
        }
        let heredoc = line.find("<<");
        let eq = line.find('=');
        match (heredoc, eq) {
            (Some(h), e) if e.is_none_or(|e| h < e) => {
                let (name, delim) = (&line[..h], &line[h + 2..]);
                let mut value = Vec::new();
                loop {
                    let l = lines
                        .next()
                        .ok_or_else(|| format!("unterminated {name}<<{delim}"))?;
                    if l == delim {
                        break;
                    }
                    value.push(l);
                }
                out.push((name.to_owned(), value.join("\n")));
            }
            (_, Some(e)) => out.push((line[..e].to_owned(), line[e + 1..].to_owned())),
            _ => return Err(format!("invalid file command line: {line:?}")),
        }
    }
    Ok(out)
}

/// Run action.yml's steps in `job` with `given` inputs, as the runner would.
fn run_action(job: &Job, given: &[(&str, &str)]) -> Outcome {
    let action: Action = action_yml::read();
    let runs = action.runs.as_ref().expect("runs");
    assert_eq!(runs.using.as_deref(), Some("composite"));
    for (name, _) in given {
        assert!(
            action.inputs.contains_key(*name),
            "the test passes `{name}`, which is not an input"
        );
    }
    let empty_steps = BTreeMap::new();
    let empty_inputs = BTreeMap::new();
    // Inputs: the given value, else the default (which may be an expression of `github`).
    let mut inputs = BTreeMap::new();
    for (name, input) in &action.inputs {
        let value = match given.iter().find(|(n, _)| n == name) {
            Some((_, v)) => (*v).to_owned(),
            None => {
                let ctx = Ctx {
                    inputs: &empty_inputs,
                    job,
                    env: &job.env,
                    steps: &empty_steps,
                };
                interpolate(input.default.as_deref().unwrap_or(""), &ctx)
                    .unwrap_or_else(|e| panic!("default of {name}: {e}"))
            }
        };
        if input.required && value.is_empty() {
            panic!("required input {name} not given");
        }
        inputs.insert(name.clone(), value);
    }

    let mut out = Outcome::default();
    let mut env_added: BTreeMap<String, String> = BTreeMap::new();
    let mut path_added: Vec<String> = Vec::new();
    let mut steps: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (i, step) in runs.steps.iter().enumerate() {
        let label = step
            .id
            .clone()
            .or_else(|| step.name.clone())
            .unwrap_or_else(|| format!("step {}", i + 1));
        let mut env = job.env.clone();
        env.extend(env_added.clone());
        let ctx = Ctx {
            inputs: &inputs,
            job,
            env: &env,
            steps: &steps,
        };
        // `if:` keeps the implied success(): after a failure nothing else runs.
        let wanted = match &step.if_ {
            None => true,
            Some(cond) => {
                let cond = if cond.contains("${{") {
                    cond.clone()
                } else {
                    format!("${{{{ {cond} }}}}")
                };
                let v = interpolate(&cond, &ctx).unwrap_or_else(|e| panic!("{label} if: {e}"));
                !(v.is_empty() || v == "false" || v == "0")
            }
        };
        if out.failed.is_some() || !wanted {
            if let Some(id) = &step.id {
                steps.insert(id.clone(), BTreeMap::new());
            }
            continue;
        }
        out.ran.push(label.clone());
        let outputs = if let Some(uses) = &step.uses {
            run_uses(step, uses, &ctx, &mut out)
        } else {
            match run_shell(step, &label, &ctx, job, &path_added, &mut out) {
                Ok(files) => {
                    for (k, v) in files.env {
                        env_added.insert(k, v);
                    }
                    for p in files.path {
                        path_added.insert(0, p);
                    }
                    files.outputs
                }
                Err((why, files)) => {
                    out.failed = Some(format!("{label}: {why}"));
                    files.outputs
                }
            }
        };
        if let Some(id) = &step.id {
            steps.insert(id.clone(), outputs);
        }
    }
    let env = job.env.clone();
    let ctx = Ctx {
        inputs: &inputs,
        job,
        env: &env,
        steps: &steps,
    };
    for (name, o) in &action.outputs {
        let v = interpolate(o.value.as_deref().unwrap_or(""), &ctx)
            .unwrap_or_else(|e| panic!("output {name}: {e}"));
        out.outputs.insert(name.clone(), v);
    }
    out.summary = std::fs::read_to_string(&job.summary).unwrap_or_default();
    out
}

fn run_uses(step: &Step, uses: &str, ctx: &Ctx, out: &mut Outcome) -> BTreeMap<String, String> {
    let Some(("actions/cache", _version)) = uses.split_once('@') else {
        panic!("`uses: {uses}`: the runner emulation only knows actions/cache");
    };
    let mut with = BTreeMap::new();
    for (k, v) in &step.with {
        let v = interpolate(v, ctx).unwrap_or_else(|e| panic!("cache with.{k}: {e}"));
        with.insert(k.clone(), v);
    }
    for required in ["path", "key"] {
        assert!(
            with.get(required).is_some_and(|v| !v.is_empty()),
            "actions/cache needs a non-empty {required}: {with:?}"
        );
    }
    out.cache.push(with);
    // A cache miss: a fresh runner has no cache, and a miss is the path that installs.
    BTreeMap::from([("cache-hit".to_owned(), "false".to_owned())])
}

#[derive(Default)]
struct FileCommands {
    outputs: BTreeMap<String, String>,
    env: Vec<(String, String)>,
    path: Vec<String>,
}

fn run_shell(
    step: &Step,
    label: &str,
    ctx: &Ctx,
    job: &Job,
    path_added: &[String],
    out: &mut Outcome,
) -> Result<FileCommands, (String, FileCommands)> {
    let run = step.run.as_deref().expect("a run step");
    assert_eq!(step.shell.as_deref(), Some("bash"), "{label}: shell");
    assert!(!run.contains("${{"), "{label}: expression inside run:");
    let dir = job.scratch.join(format!("step-{}", out.ran.len()));
    std::fs::create_dir_all(&dir).unwrap();
    let files = [
        "GITHUB_OUTPUT",
        "GITHUB_ENV",
        "GITHUB_PATH",
        "GITHUB_STEP_SUMMARY",
    ]
    .map(|f| {
        let p = dir.join(f);
        std::fs::write(&p, "").unwrap();
        (f, p)
    });
    let script = dir.join("script.sh");
    std::fs::write(&script, run).unwrap();

    let mut env = ctx.env.clone();
    for (k, v) in &step.env {
        let v = interpolate(v, ctx).unwrap_or_else(|e| panic!("{label} env.{k}: {e}"));
        env.insert(k.clone(), v);
    }
    for (name, p) in &files {
        env.insert((*name).to_owned(), p.display().to_string());
    }
    let base_path = env.get("PATH").cloned().unwrap_or_default();
    let mut path = path_added.to_vec();
    path.push(base_path);
    env.insert("PATH".into(), path.join(":"));
    let cwd = match &step.working_directory {
        Some(w) => job
            .workspace
            .join(interpolate(w, ctx).unwrap_or_else(|e| panic!("{label} working-directory: {e}"))),
        None => job.workspace.clone(),
    };
    out.envs.insert(label.to_owned(), env.clone());
    let o = Command::new("bash")
        .args(["--noprofile", "--norc", "-eo", "pipefail"])
        .arg(&script)
        .env_clear()
        .envs(&env)
        .current_dir(&cwd)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{label}: cannot start bash in {}: {e}", cwd.display()));
    out.log.push_str(&String::from_utf8_lossy(&o.stdout));
    out.log.push_str(&String::from_utf8_lossy(&o.stderr));

    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    let mut fc = FileCommands::default();
    let parsed = parse_file_commands(&read("GITHUB_OUTPUT"))
        .unwrap_or_else(|e| panic!("{label} GITHUB_OUTPUT: {e}"));
    fc.outputs.extend(parsed);
    fc.env = parse_file_commands(&read("GITHUB_ENV"))
        .unwrap_or_else(|e| panic!("{label} GITHUB_ENV: {e}"));
    fc.path = read("GITHUB_PATH")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    let summary = read("GITHUB_STEP_SUMMARY");
    if !summary.is_empty() {
        let mut all = std::fs::read_to_string(&job.summary).unwrap_or_default();
        all.push_str(&summary);
        std::fs::write(&job.summary, all).unwrap();
    }
    if o.status.success() {
        Ok(fc)
    } else {
        Err((format!("exit status {:?}", o.status.code()), fc))
    }
}

// ---------------------------------------------------------------------------------------
// The fake release and the job around the action
// ---------------------------------------------------------------------------------------

const VERSION: &str = "v0.1.0";
const REPO: &str = "Codertocat/Hello-World";
const ACTION_REPO: &str = "telbase-dev/telbase";
const TOKEN: &str = "ghs_workflowtoken0000000000000000000001";

fn target() -> (&'static str, &'static str) {
    match std::env::consts::ARCH {
        "x86_64" => ("X64", "x86_64-unknown-linux-gnu"),
        "aarch64" => ("ARM64", "aarch64-unknown-linux-gnu"),
        other => panic!("no release target for {other}"),
    }
}

fn asset_name() -> String {
    format!("telbase-{VERSION}-{}.tar.gz", target().1)
}

/// The release archive of the test-built binary, as release.yml packages it, made once.
fn archive() -> &'static (Vec<u8>, String) {
    static ARCHIVE: OnceLock<(Vec<u8>, String)> = OnceLock::new();
    ARCHIVE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let stem = format!("telbase-{VERSION}-{}", target().1);
        std::fs::create_dir(dir.path().join(&stem)).unwrap();
        std::fs::copy(
            env!("CARGO_BIN_EXE_telbase"),
            dir.path().join(&stem).join("telbase"),
        )
        .unwrap();
        std::fs::copy(
            common::root().join("README.md"),
            dir.path().join(&stem).join("README.md"),
        )
        .unwrap();
        let out = dir.path().join("a.tar.gz");
        // gzip -1: the debug binary is large and the level does not matter here.
        let ok = Command::new("tar")
            .args(["--use-compress-program=gzip -1", "-C"])
            .arg(dir.path())
            .arg("-cf")
            .arg(&out)
            .arg(&stem)
            .status()
            .expect("tar")
            .success();
        assert!(ok, "tar failed");
        let bytes = std::fs::read(&out).unwrap();
        let sum = hex(&Sha256::digest(&bytes));
        (bytes, sum)
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Files by URL path, and the paths asked for.
#[derive(Default)]
struct Release {
    files: Mutex<BTreeMap<String, Vec<u8>>>,
    requests: Mutex<Vec<String>>,
    /// The paths asked for with the workflow token.
    authorized: Mutex<Vec<String>>,
}

async fn serve_release(
    State(r): State<Arc<Release>>,
    headers: HeaderMap,
    uri: Uri,
) -> (StatusCode, Vec<u8>) {
    r.requests.lock().unwrap().push(uri.path().to_owned());
    if headers.get("authorization").and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {TOKEN}"))
    {
        r.authorized.lock().unwrap().push(uri.path().to_owned());
    }
    match r.files.lock().unwrap().get(uri.path()) {
        Some(b) => (StatusCode::OK, b.clone()),
        None => (StatusCode::NOT_FOUND, b"Not Found".to_vec()),
    }
}

struct World {
    emu: telbase::emulator::Handle,
    release: Arc<Release>,
    release_url: String,
    /// Last: fields drop in order, and the servers' tasks live on this runtime.
    rt: tokio::runtime::Runtime,
}

impl World {
    fn new() -> World {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let emu = rt.block_on(common::emu::start(telbase::emulator::Config::default()));
        emu.github_seed(&json!({
            "installations": [{"id": 1, "account": "Codertocat", "repos": [REPO]}],
            "workflow_tokens": [{"token": TOKEN, "installation": 1}],
        }))
        .expect("seed GitHub");
        let (bytes, sum) = archive();
        let release = Arc::new(Release::default());
        {
            let mut f = release.files.lock().unwrap();
            f.insert(format!("/{VERSION}/{}", asset_name()), bytes.clone());
            // Two assets, as a real SHA256SUMS lists every archive of the release.
            f.insert(
                format!("/{VERSION}/SHA256SUMS"),
                format!(
                    "{}  telbase-{VERSION}-x86_64-apple-darwin.tar.gz\n{sum}  {}\n",
                    "0".repeat(64),
                    asset_name()
                )
                .into_bytes(),
            );
            // GET /repos/OWNER/REPO/releases/latest, for the test that lets the action
            // find the latest release (GitHub's fields, trimmed).
            f.insert(
                format!("/repos/{ACTION_REPO}/releases/latest"),
                serde_json::to_vec_pretty(&json!({
                    "url": format!("https://api.github.com/repos/{ACTION_REPO}/releases/1"),
                    "html_url": format!("https://github.com/{ACTION_REPO}/releases/tag/{VERSION}"),
                    "id": 1,
                    "tag_name": VERSION,
                    "target_commitish": "main",
                    "name": VERSION,
                    "draft": false,
                    "prerelease": false,
                    "assets": [],
                }))
                .unwrap(),
            );
        }
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let release_url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .fallback(serve_release)
            .with_state(release.clone());
        rt.spawn(async move { axum::serve(listener, app).await });
        World {
            emu,
            release,
            release_url,
            rt,
        }
    }

    fn requests(&self) -> Vec<String> {
        self.release.requests.lock().unwrap().clone()
    }

    /// The comments on pull request 2 of the repository, as the API lists them.
    fn comments(&self) -> Vec<Value> {
        let url = format!(
            "{}/github/repos/{REPO}/issues/2/comments?per_page=100",
            self.emu.url()
        );
        let body = self.rt.block_on(async {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(TOKEN)
                .header("accept", "application/vnd.github+json")
                .send()
                .await
                .expect("list comments")
                .error_for_status()
                .expect("comments listed")
                .json::<Value>()
                .await
                .unwrap()
        });
        body.as_array().cloned().unwrap_or_default()
    }
}

fn shared_payload(name: &str) -> Option<PathBuf> {
    let p = common::root()
        .join("../shared/provider-apis/github/webhooks")
        .join(name);
    if p.exists() {
        return Some(p);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{name} not found beside the repository: CI must provide ../shared"
    );
    eprintln!("skipping: ../shared/provider-apis/github/webhooks/{name} not found");
    None
}

/// A PATH for the steps without any `telbase` on it, so the run step can only find the
/// binary the action installed.
fn clean_path() -> String {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|d| !d.is_empty() && !Path::new(d).join("telbase").exists())
        .collect::<Vec<_>>()
        .join(":")
}

struct Event<'a> {
    name: &'a str,
    payload: &'a str,
    git_ref: &'a str,
    sha: &'a str,
}

const PR_EVENT: Event = Event {
    name: "pull_request",
    payload: "pull_request.opened.payload.json",
    git_ref: "refs/pull/2/merge",
    sha: "ec26c3e57ca3a959ca5aad62de7213c562f8c821",
};

const PUSH_EVENT: Event = Event {
    name: "push",
    payload: "push.create-default-branch.with-installation.payload.json",
    git_ref: "refs/heads/master",
    sha: "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
};

/// A fresh job (its own workspace, temp and tool cache, as a new runner has) for `event`,
/// with `config` as telbase.yaml in the workspace.
fn job(world: &World, event: &Event, config: &str, tmp: &Path) -> Option<Job> {
    let payload = shared_payload(event.payload)?;
    let workspace = tmp.join("workspace");
    let temp = tmp.join("runner-temp");
    let tool_cache = tmp.join("tool-cache");
    let scratch = tmp.join("runner");
    for d in [&workspace, &temp, &tool_cache, &scratch] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(workspace.join("telbase.yaml"), config).unwrap();
    let summary = scratch.join("job-summary.md");
    let (arch, _) = target();
    let action_path = common::root().display().to_string();
    let mut env: BTreeMap<String, String> = [
        ("PATH", clean_path()),
        ("HOME", tmp.display().to_string()),
        ("CI", "true".into()),
        ("GITHUB_ACTIONS", "true".into()),
        ("GITHUB_EVENT_NAME", event.name.into()),
        ("GITHUB_EVENT_PATH", payload.display().to_string()),
        ("GITHUB_REF", event.git_ref.into()),
        ("GITHUB_SHA", event.sha.into()),
        ("GITHUB_REPOSITORY", REPO.into()),
        ("GITHUB_WORKSPACE", workspace.display().to_string()),
        ("GITHUB_SERVER_URL", "https://github.com".into()),
        ("GITHUB_API_URL", format!("{}/github", world.emu.url())),
        ("GITHUB_ACTION_PATH", action_path.clone()),
        ("RUNNER_OS", "Linux".into()),
        ("RUNNER_ARCH", arch.into()),
        ("RUNNER_TEMP", temp.display().to_string()),
        ("RUNNER_TOOL_CACHE", tool_cache.display().to_string()),
        ("TELBASE_RELEASES_URL", world.release_url.clone()),
        ("TELBASE_EMULATOR", world.emu.url()),
        ("NO_COLOR", "1".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    env.insert("TMPDIR".into(), temp.display().to_string());
    let github = [
        ("token", TOKEN.to_owned()),
        ("action_repository", ACTION_REPO.to_owned()),
        ("action_ref", VERSION.to_owned()),
        ("action_path", action_path),
        ("server_url", "https://github.com".to_owned()),
        ("event_name", event.name.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let runner = [
        ("os", "Linux".to_owned()),
        ("arch", arch.to_owned()),
        ("temp", temp.display().to_string()),
        ("tool_cache", tool_cache.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    Some(Job {
        workspace,
        env,
        github,
        runner,
        summary,
        scratch,
    })
}

fn config_with_preview() -> String {
    common::emu::quickstart("notes").replace(
        "environments:\n  production:\n    branch: main\n",
        "environments:\n  production:\n    branch: main\n  preview:\n    access: public\n    ttl: 7d\n",
    )
}

/// N in the summary output "N to create, N to update, N to delete".
fn created(summary: &str) -> u64 {
    summary
        .strip_suffix(" to delete")
        .and_then(|s| s.split_once(" to create, "))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("not a plan summary: {summary:?}"))
}

fn installed_binary(job: &Job) -> PathBuf {
    PathBuf::from(&job.runner["tool_cache"])
        .join("telbase")
        .join(VERSION)
        .join(target().1)
        .join("bin/telbase")
}

// ---------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------

#[test]
fn plan_on_a_pull_request_writes_outputs_summary_and_one_comment_across_two_runs() {
    let world = World::new();
    let mut comment_ids = Vec::new();
    for round in 1..=2 {
        let tmp = tempfile::tempdir().unwrap();
        let Some(job) = job(&world, &PR_EVENT, &config_with_preview(), tmp.path()) else {
            return;
        };
        let out = run_action(&job, &[("command", "plan")]);
        assert!(
            out.failed.is_none(),
            "round {round}: {:?}\n{}",
            out.failed,
            out.log
        );
        assert_eq!(out.ran, ["setup", "cache", "install", "run"]);
        // Installed from the release, verified, cached under version and target.
        assert!(
            out.log.contains(&format!("verified {}", asset_name())),
            "{}",
            out.log
        );
        assert!(installed_binary(&job).exists());
        assert_eq!(
            out.cache[0]["key"],
            format!("telbase-{VERSION}-{}", target().1)
        );
        // Only the verified archive is cached, never the binary.
        let archive_dir = installed_binary(&job)
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("archive");
        assert_eq!(out.cache[0]["path"], archive_dir.display().to_string());
        assert!(
            archive_dir.join(asset_name()).is_file(),
            "kept for the cache"
        );
        // The outputs.
        assert_eq!(out.outputs["exit-code"], "0");
        assert_eq!(out.outputs["has-changes"], "true");
        let summary = &out.outputs["summary"];
        assert!(summary.contains("to create"), "summary output: {summary:?}");
        let plan_path = PathBuf::from(&out.outputs["plan-json"]);
        assert!(plan_path.starts_with(&job.runner["temp"]), "{plan_path:?}");
        let plan: Value =
            serde_json::from_slice(&std::fs::read(&plan_path).expect("plan-json file")).unwrap();
        assert_eq!(plan["format_version"], 1, "{plan}");
        assert_eq!(
            plan["summary"]["create"].as_u64(),
            Some(created(summary)),
            "{plan}"
        );
        // The job summary has the plan: its counts and the resource.
        let counts = format!("**{} to create, 0 to update", created(summary));
        assert!(out.summary.contains(&counts), "{}", out.summary);
        assert!(
            out.summary.contains("`vercel/project/notes-web`"),
            "{}",
            out.summary
        );
        // Exactly one comment, the same one, updated in place.
        let comments = world.comments();
        assert_eq!(comments.len(), 1, "round {round}: {comments:#?}");
        comment_ids.push(comments[0]["id"].clone());
        assert!(
            comments[0]["body"].as_str().unwrap().contains(&counts),
            "{}",
            comments[0]["body"]
        );
    }
    assert_eq!(
        comment_ids[0], comment_ids[1],
        "the comment was not updated in place"
    );
    // Each round is a fresh runner: two downloads, each with its checksum file.
    let asset = format!("/{VERSION}/{}", asset_name());
    let reqs = world.requests();
    assert_eq!(reqs.iter().filter(|r| **r == asset).count(), 2, "{reqs:?}");
    assert_eq!(
        reqs.iter().filter(|r| r.ends_with("/SHA256SUMS")).count(),
        2,
        "{reqs:?}"
    );
}

#[test]
fn apply_on_push_then_drift_with_fail_on_drift() {
    let world = World::new();
    let tmp = tempfile::tempdir().unwrap();
    // GitHub's push payload is to `master`: production's branch, or apply would skip.
    let config = common::emu::quickstart("notes").replace("branch: main", "branch: master");
    let Some(job) = job(&world, &PUSH_EVENT, &config, tmp.path()) else {
        return;
    };
    let out = run_action(&job, &[("command", "apply")]);
    assert!(out.failed.is_none(), "{:?}\n{}", out.failed, out.log);
    assert_eq!(out.outputs["exit-code"], "0");
    assert!(out.summary.contains("to create"), "{}", out.summary);
    // Nothing on a push is a pull request: no comment.
    assert!(world.comments().is_empty());

    let out = run_action(&job, &[("command", "drift"), ("fail-on-drift", "true")]);
    assert!(out.failed.is_none(), "{:?}\n{}", out.failed, out.log);
    assert_eq!(out.outputs["has-changes"], "false");
    assert_eq!(out.outputs["exit-code"], "0");

    world
        .emu
        .drift(
            &json!({"provider": "vercel", "project": "notes-web", "set": {"buildCommand": "make"}}),
        )
        .expect("drift");
    let out = run_action(&job, &[("command", "drift"), ("fail-on-drift", "true")]);
    assert!(
        out.failed.as_deref().is_some_and(|f| f.starts_with("run:")),
        "{:?}",
        out.failed
    );
    assert_eq!(out.outputs["has-changes"], "true");
    assert_eq!(out.outputs["exit-code"], "1");
    // Without fail-on-drift the same drift is reported and the step passes.
    let out = run_action(&job, &[("command", "drift")]);
    assert!(out.failed.is_none(), "{:?}\n{}", out.failed, out.log);
    assert_eq!(out.outputs["has-changes"], "true");
}

#[test]
fn invalid_config_gives_annotations_and_a_failed_step() {
    let world = World::new();
    let tmp = tempfile::tempdir().unwrap();
    let Some(mut job) = job(&world, &PUSH_EVENT, "", tmp.path()) else {
        return;
    };
    // In a subdirectory, through working-directory and config; and with no version and
    // the action used at a branch: the latest release, asked of the API.
    let app = job.workspace.join("deploy");
    std::fs::create_dir(&app).unwrap();
    std::fs::write(
        app.join("infra.yaml"),
        "version: 1\nproject: notes\napps:\n  web:\n    framework: nextjs\n    env:\n      DATABASE_URL: { from: databases.mian.url }\n",
    )
    .unwrap();
    job.github.insert("action_ref".into(), "main".into());
    job.env
        .insert("GITHUB_API_URL".into(), world.release_url.clone());
    let out = run_action(
        &job,
        &[
            ("command", "validate"),
            ("working-directory", "deploy"),
            ("config", "infra.yaml"),
        ],
    );
    assert!(
        out.failed.as_deref().is_some_and(|f| f.starts_with("run:")),
        "{:?}\n{}",
        out.failed,
        out.log
    );
    assert_eq!(out.outputs["exit-code"], "1");
    assert!(
        world
            .requests()
            .contains(&format!("/repos/{ACTION_REPO}/releases/latest")),
        "{:?}",
        world.requests()
    );
    // Asked with the token (on curl's standard input, never in the log).
    assert_eq!(
        *world.release.authorized.lock().unwrap(),
        [format!("/repos/{ACTION_REPO}/releases/latest")]
    );
    assert!(!out.log.contains(TOKEN));
    let annotation = out
        .log
        .lines()
        // Relative to the workspace, so it lands on the file in the pull request's diff.
        .find(|l| l.starts_with("::error file=deploy/infra.yaml,line=7,"))
        .unwrap_or_else(|| panic!("no annotation at line 7:\n{}", out.log));
    assert!(annotation.contains("mian"), "{annotation}");
    // The failed step ends on one line saying why, and the outputs are still set.
    let last = out
        .log
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    assert_eq!(
        last,
        "error: deploy/infra.yaml is invalid: 1 error (annotated on the file)"
    );
    assert_eq!(out.outputs["summary"], "invalid: 1 error");
    assert_eq!(out.outputs["has-changes"], "false");
    assert!(
        out.summary.contains("unknown database `mian`"),
        "{}",
        out.summary
    );
}

#[test]
fn a_tampered_checksum_fails_the_install_and_runs_nothing() {
    let world = World::new();
    world.release.files.lock().unwrap().insert(
        format!("/{VERSION}/SHA256SUMS"),
        format!("{}  {}\n", "ab".repeat(32), asset_name()).into_bytes(),
    );
    let tmp = tempfile::tempdir().unwrap();
    let Some(job) = job(&world, &PR_EVENT, &config_with_preview(), tmp.path()) else {
        return;
    };
    let out = run_action(&job, &[("command", "plan")]);
    assert_eq!(out.ran, ["setup", "cache", "install"]);
    assert!(
        out.failed
            .as_deref()
            .is_some_and(|f| f.starts_with("install:")),
        "{:?}",
        out.failed
    );
    let line = out
        .log
        .lines()
        .find(|l| l.contains("checksum mismatch"))
        .unwrap_or_else(|| panic!("no clear message:\n{}", out.log));
    assert!(line.starts_with("::error "), "{line}");
    assert!(
        line.contains(&"ab".repeat(32)) && line.contains(&archive().1),
        "{line}"
    );
    assert!(!installed_binary(&job).exists(), "a binary was installed");
    assert_eq!(out.outputs["exit-code"], "");
    assert!(world.comments().is_empty());

    // A SHA256SUMS without the asset's line is refused the same way.
    world.release.files.lock().unwrap().insert(
        format!("/{VERSION}/SHA256SUMS"),
        format!(
            "{}  telbase-{VERSION}-x86_64-apple-darwin.tar.gz\n",
            "0".repeat(64)
        )
        .into_bytes(),
    );
    let out = run_action(&job, &[("command", "plan")]);
    assert!(
        out.log
            .contains(&format!("has no line for {}", asset_name())),
        "{}",
        out.log
    );
    assert!(!installed_binary(&job).exists());
}

/// What a poisoned cache restores (anything that ran earlier in the repository's cache scope
/// can write the key): an archive that is not the release's. It is checked against the
/// release's SHA256SUMS like a download, discarded with a warning, and the real one is
/// downloaded; the binary always comes from the archive just verified.
#[test]
fn a_poisoned_cache_entry_is_caught_and_replaced_by_the_release() {
    let world = World::new();
    let tmp = tempfile::tempdir().unwrap();
    let Some(job) = job(&world, &PR_EVENT, &config_with_preview(), tmp.path()) else {
        return;
    };
    let bin = installed_binary(&job);
    let archive_dir = bin.parent().unwrap().parent().unwrap().join("archive");
    std::fs::create_dir_all(&archive_dir).unwrap();
    std::fs::write(archive_dir.join(asset_name()), b"not the release").unwrap();
    // And a binary planted where the cache once put it: overwritten, never run.
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::write(&bin, "#!/bin/sh\necho planted; exit 0\n").unwrap();
    let out = run_action(&job, &[("command", "plan"), ("comment", "never")]);
    assert_eq!(out.failed, None, "{}", out.log);
    let warning = out
        .log
        .lines()
        .find(|l| l.starts_with("::warning ") && l.contains("does not match SHA256SUMS"))
        .unwrap_or_else(|| panic!("no warning:\n{}", out.log));
    assert!(warning.contains(&asset_name()), "{warning}");
    assert!(
        out.log.contains(&format!("verified {}", asset_name())),
        "{}",
        out.log
    );
    assert!(!out.log.contains("planted"), "{}", out.log);
    assert_eq!(out.outputs["exit-code"], "0");
    assert_ne!(
        std::fs::read(archive_dir.join(asset_name())).unwrap(),
        b"not the release",
        "the cache now holds the release's archive"
    );

    // The next run takes the (now genuine) archive from the cache, verified again.
    let again = run_action(&job, &[("command", "plan"), ("comment", "never")]);
    assert_eq!(again.failed, None, "{}", again.log);
    assert!(
        again
            .log
            .contains(&format!("verified the cached {}", asset_name())),
        "{}",
        again.log
    );
}

#[test]
fn an_unknown_command_fails_with_the_valid_ones_before_any_download() {
    let world = World::new();
    let tmp = tempfile::tempdir().unwrap();
    let Some(job) = job(&world, &PR_EVENT, &config_with_preview(), tmp.path()) else {
        return;
    };
    let out = run_action(&job, &[("command", "deploy")]);
    assert_eq!(out.ran, ["setup"]);
    assert!(out.log.contains(
        "::error title=telbase::unknown command \"deploy\": valid commands are validate, plan, apply, drift"
    ), "{}", out.log);
    assert!(world.requests().is_empty(), "{:?}", world.requests());
    // And the other closed inputs the same way.
    let out = run_action(&job, &[("command", "plan"), ("environment", "staging")]);
    assert!(
        out.log.contains(
            "unknown environment \"staging\": valid values are production, preview (or empty)"
        ),
        "{}",
        out.log
    );
    let out = run_action(
        &job,
        &[("command", "plan"), ("version", "latest; rm -rf /")],
    );
    assert!(
        out.log.contains("is not a release tag like v1.2.3"),
        "{}",
        out.log
    );
}

#[test]
fn without_a_token_the_summary_is_written_and_the_step_says_why_no_comment() {
    let world = World::new();
    let tmp = tempfile::tempdir().unwrap();
    let Some(job) = job(&world, &PR_EVENT, &config_with_preview(), tmp.path()) else {
        return;
    };
    let out = run_action(&job, &[("command", "plan"), ("github-token", "")]);
    assert!(out.failed.is_none(), "{:?}\n{}", out.failed, out.log);
    assert_eq!(out.outputs["exit-code"], "0");
    let counts = format!("**{} to create", created(&out.outputs["summary"]));
    assert!(out.summary.contains(&counts), "{}", out.summary);
    assert!(world.comments().is_empty());
    let why = out
        .log
        .lines()
        .find(|l| l.contains("comment") && l.contains("GITHUB_TOKEN"))
        .unwrap_or_else(|| panic!("the step does not say why no comment:\n{}", out.log));
    assert!(!why.contains(TOKEN));
}

#[test]
fn a_missing_asset_falls_back_to_cargo_install_of_the_same_tag() {
    let world = World::new();
    world
        .release
        .files
        .lock()
        .unwrap()
        .remove(&format!("/{VERSION}/{}", asset_name()));
    let tmp = tempfile::tempdir().unwrap();
    let Some(mut job) = job(
        &world,
        &PUSH_EVENT,
        &common::emu::quickstart("notes"),
        tmp.path(),
    ) else {
        return;
    };
    // A stand-in cargo records its arguments and installs the test-built binary where
    // `--root` says, as `cargo install` would (no network, no build).
    let fake = tmp.path().join("fake-cargo");
    std::fs::create_dir(&fake).unwrap();
    let args_file = tmp.path().join("cargo-args");
    std::fs::write(
        fake.join("cargo"),
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}'\nwhile [ $# -gt 0 ]; do [ \"$1\" = --root ] && root=$2; shift; done\nmkdir -p \"$root/bin\" && cp '{}' \"$root/bin/telbase\"\n",
            args_file.display(),
            env!("CARGO_BIN_EXE_telbase")
        ),
    )
    .unwrap();
    let mut perm = std::fs::metadata(fake.join("cargo")).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(fake.join("cargo"), perm).unwrap();
    let path = format!("{}:{}", fake.display(), job.env["PATH"]);
    job.env.insert("PATH".into(), path);

    let out = run_action(&job, &[("command", "validate")]);
    assert!(out.failed.is_none(), "{:?}\n{}", out.failed, out.log);
    let args = std::fs::read_to_string(&args_file).expect("cargo was run");
    let args: Vec<&str> = args.lines().collect();
    let root_dir = installed_binary(&job)
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .display()
        .to_string();
    assert_eq!(
        args,
        [
            "install",
            "--locked",
            "--git",
            &format!("https://github.com/{ACTION_REPO}"),
            "--tag",
            VERSION,
            "--root",
            &root_dir,
            "telbase"
        ]
    );
    // The checksum file was not asked for: there was nothing downloaded to verify.
    assert!(!world.requests().iter().any(|r| r.ends_with("SHA256SUMS")));
}

#[test]
fn the_repository_and_tag_come_from_the_action_path_when_github_leaves_them_empty() {
    // actions/runner#2525: github.action_repository and action_ref can be empty in a
    // composite action; the checkout lives at …/_actions/OWNER/REPO/REF.
    let world = World::new();
    let tmp = tempfile::tempdir().unwrap();
    let Some(mut job) = job(
        &world,
        &PUSH_EVENT,
        &common::emu::quickstart("notes"),
        tmp.path(),
    ) else {
        return;
    };
    let actions = tmp.path().join("_actions/telbase-dev/telbase");
    std::fs::create_dir_all(&actions).unwrap();
    std::os::unix::fs::symlink(common::root(), actions.join(VERSION)).unwrap();
    let action_path = actions.join(VERSION).display().to_string();
    job.github.insert("action_repository".into(), String::new());
    job.github.insert("action_ref".into(), String::new());
    job.github.insert("action_path".into(), action_path.clone());
    job.env.insert("GITHUB_ACTION_PATH".into(), action_path);
    // And the keyless inputs reach telbase as the contract's variables.
    let provider =
        "projects/123456789/locations/global/workloadIdentityPools/github/providers/telbase";
    let out = run_action(
        &job,
        &[
            ("command", "validate"),
            ("workload-identity-provider", provider),
            (
                "service-account",
                "deployer@acme-prod.iam.gserviceaccount.com",
            ),
        ],
    );
    assert!(out.failed.is_none(), "{:?}\n{}", out.failed, out.log);
    assert!(
        out.log
            .contains(&format!("telbase {VERSION} for {}", target().1)),
        "{}",
        out.log
    );
    assert_eq!(out.outputs["exit-code"], "0");
    let run_env = &out.envs["run"];
    assert_eq!(
        run_env["TELBASE_GOOGLE_WORKLOAD_IDENTITY_PROVIDER"],
        provider
    );
    assert_eq!(
        run_env["TELBASE_GOOGLE_SERVICE_ACCOUNT"],
        "deployer@acme-prod.iam.gserviceaccount.com"
    );
    assert_eq!(run_env["GITHUB_TOKEN"], TOKEN);
    assert_eq!(out.envs["install"]["TELBASE_REPOSITORY"], ACTION_REPO);

    // `uses: ./` (the action checked out as the workspace itself): it is this repository.
    std::os::unix::fs::symlink(
        common::root().join("scripts"),
        job.workspace.join("scripts"),
    )
    .unwrap();
    let workspace = job.workspace.display().to_string();
    job.github.insert("action_path".into(), workspace.clone());
    job.env.insert("GITHUB_ACTION_PATH".into(), workspace);
    let out = run_action(&job, &[("command", "validate"), ("version", "0.1.0")]);
    assert!(out.failed.is_none(), "{:?}\n{}", out.failed, out.log);
    assert_eq!(out.envs["install"]["TELBASE_REPOSITORY"], REPO);
    assert_eq!(out.envs["install"]["TELBASE_VERSION"], VERSION);
}

// ---------------------------------------------------------------------------------------
// The runner itself
// ---------------------------------------------------------------------------------------

#[test]
fn the_runner_refuses_what_it_does_not_understand() {
    let tmp = tempfile::tempdir().unwrap();
    let job = Job {
        workspace: tmp.path().into(),
        env: BTreeMap::new(),
        github: BTreeMap::from([("token".to_owned(), "t".to_owned())]),
        runner: BTreeMap::from([("os".to_owned(), "Linux".to_owned())]),
        summary: tmp.path().join("s"),
        scratch: tmp.path().into(),
    };
    let inputs = BTreeMap::from([("command".to_owned(), "plan".to_owned())]);
    let steps = BTreeMap::from([(
        "cache".to_owned(),
        BTreeMap::from([("cache-hit".to_owned(), "true".to_owned())]),
    )]);
    let env = BTreeMap::new();
    let c = Ctx {
        inputs: &inputs,
        job: &job,
        env: &env,
        steps: &steps,
    };
    assert_eq!(eval("inputs.command", &c).unwrap(), "plan");
    assert_eq!(
        eval("steps.cache.outputs.cache-hit != 'true'", &c).unwrap(),
        "false"
    );
    assert_eq!(eval("runner.os == 'linux'", &c).unwrap(), "true");
    assert_eq!(eval("steps.cache.outputs.other", &c).unwrap(), "");
    assert_eq!(
        interpolate("a-${{ inputs.command }}-${{ runner.os }}", &c).unwrap(),
        "a-plan-Linux"
    );
    for bad in [
        "format('{0}', inputs.command)",
        "inputs.nope",
        "github.event.pull_request.title",
        "runner.name",
        "steps.nope.outputs.x",
        "always()",
        "inputs.command == other",
        "secrets.X",
    ] {
        assert!(eval(bad, &c).is_err(), "{bad} was accepted");
    }
    assert!(interpolate("${{ inputs.command }", &c).is_err());
    assert_eq!(
        parse_file_commands("a=1\nb<<EOF_x\nline 1\nline=2\nEOF_x\nc=\n").unwrap(),
        [
            ("a".to_owned(), "1".to_owned()),
            ("b".to_owned(), "line 1\nline=2".to_owned()),
            ("c".to_owned(), String::new())
        ]
    );
    assert!(parse_file_commands("b<<EOF\nno end\n").is_err());
}

//! `telbase plan`, `telbase apply`, `telbase emulate` and `telbase demo`: the reconcile loop
//! driven by hand. Loading the file, finding the commit, setting up provider clients,
//! observing, planning and executing are library calls; this module prints, asks, and picks
//! exit codes (plan: 0 no changes, 2 changes with `--detailed-exitcode`, 1 error; apply: 0
//! done, 1 anything failed or was refused).

use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::apply::{self, AgeOpener, Event, NoIdentity, Opener, Outcome, Report};
use crate::config::{self, diag};
use crate::emulator;
use crate::model::{ActualState, DesiredState, Environment};
use crate::plan::{self, Action, Plan};
use crate::providers::http::{Http, HttpConfig};
use crate::providers::{self, Credentials, GitRef, Registry, Scope};

#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The telbase.yaml to reconcile.
    #[arg(long, default_value = "telbase.yaml")]
    pub config: PathBuf,
    /// Send every provider call to this emulator (`telbase emulate`) instead of the real
    /// APIs.
    #[arg(long, env = "TELBASE_EMULATOR", value_name = "URL")]
    pub emulator: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanFormat {
    Text,
    Markdown,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub target: Target,
    #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
    pub format: PlanFormat,
    /// Save the plan for `telbase apply --plan FILE`.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Exit 2 when there are changes (0 none, 1 error).
    #[arg(long)]
    pub detailed_exitcode: bool,
}

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub target: Target,
    /// Apply this saved plan, after checking that nothing moved since it was made.
    #[arg(long, value_name = "FILE")]
    pub plan: Option<PathBuf>,
    /// Do not ask; required when there is no terminal.
    #[arg(long)]
    pub auto_approve: bool,
    /// Provider calls in flight at once, per provider.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
}

#[derive(Debug, clap::Args)]
pub struct EmulateArgs {
    /// Address to listen on: a loopback address, since anyone who can reach the emulator
    /// can use it (its token is public).
    #[arg(long, default_value = "127.0.0.1:4010")]
    pub listen: SocketAddr,
    /// Added to every answer, e.g. `20ms`.
    #[arg(long, value_parser = parse_duration, default_value = "0ms")]
    pub latency: Duration,
    /// Share of requests answered 503.
    #[arg(long, default_value_t = 0.0)]
    pub rate_5xx: f64,
    /// Share of requests answered 429 with `Retry-After: 1`.
    #[arg(long, default_value_t = 0.0)]
    pub rate_429: f64,
    /// Share of requests carried out and then never answered.
    #[arg(long, default_value_t = 0.0)]
    pub rate_timeout: f64,
    /// Share of requests carried out and then cut off mid-body.
    #[arg(long, default_value_t = 0.0)]
    pub rate_reset: f64,
    /// Share of requests carried out and answered with broken JSON.
    #[arg(long, default_value_t = 0.0)]
    pub rate_garbage: f64,
    /// How long a timed-out request stalls.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub stall: Duration,
    /// Seed of the fault generator, for repeatable runs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Largest page a list returns.
    #[arg(long, default_value_t = 3)]
    pub page_size: usize,
    /// Append every request and response to this file as JSON lines (secrets redacted).
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "ms"));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 20ms or 2s"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("`{s}`: use ms, s or m")),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Colour on a terminal unless `NO_COLOR` is set (no-color.org).
fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The commit a reconcile makes true: HEAD of the repository holding the config, and its
/// GitHub `origin`.
pub fn git_ref(config: &Path) -> Option<GitRef> {
    let dir = config
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let repo = git2::Repository::discover(dir).ok()?;
    let head = repo.head().ok()?;
    let sha = head.peel_to_commit().ok()?.id().to_string();
    let branch = head.shorthand().unwrap_or("HEAD").to_owned();
    let github = repo
        .find_remote("origin")
        .ok()
        .and_then(|r| r.url().ok().and_then(github_repo));
    Some(GitRef {
        repo: github.unwrap_or_default(),
        sha,
        branch,
    })
}

/// `owner/name` from a GitHub remote URL in any of its spellings.
pub fn github_repo(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("https://github.com/")
        .or_else(|| url.strip_prefix("http://github.com/"))
        .or_else(|| url.strip_prefix("git@github.com:"))
        .or_else(|| url.strip_prefix("ssh://git@github.com/"))?;
    let rest = rest.trim_end_matches('/').trim_end_matches(".git");
    let (owner, name) = rest.split_once('/')?;
    (!owner.is_empty() && !name.is_empty() && !name.contains('/'))
        .then(|| format!("{owner}/{name}"))
}

/// Everything a plan or apply works with.
pub struct Session {
    pub desired: DesiredState,
    pub scope: Scope,
    pub registry: Registry,
    pub http: Http,
    /// The store, open only when the config has `stored: true` variables (their keyed
    /// fingerprints are already read into `desired`; apply opens their values from it).
    pub store: Option<crate::store::Store>,
}

/// Load and check the config (diagnostics to stderr), pin the commit, set up clients.
pub fn session(target: &Target) -> anyhow::Result<Session> {
    let path = &target.config;
    let name = path.display().to_string();
    let bytes = config::read(path).map_err(|d| anyhow!("{}", d.message))?;
    let checked = config::check_bytes_in(&bytes, config::dir_of(path));
    let source = String::from_utf8(bytes).ok();
    if !checked.diagnostics.is_empty() {
        eprint!(
            "{}",
            diag::render_text(&name, source.as_deref(), &checked.diagnostics)
        );
    }
    let Some(cfg) = checked.config else {
        bail!("{name} is not valid; fix the errors above");
    };
    let mut desired = config::lower::lower(&cfg, Environment::Production);
    let git = git_ref(path);
    match &git {
        Some(g) if !g.repo.is_empty() => desired.pin_git(Some(&g.repo), &g.sha),
        Some(g) => {
            desired.pin_images(&g.sha);
            eprintln!(
                "note: the repository has no GitHub `origin` remote, so Telbase will manage Vercel projects' settings but not deploy their code"
            )
        }
        None => eprintln!(
            "note: {name} is not in a git repository, so Telbase will manage settings but not deploy code"
        ),
    }
    // Only a config that uses `stored:` needs the store (the README demo runs without one).
    let store = if crate::secrets::stored::uses_stored(&desired) {
        let mut store = super::env::open_store()?;
        crate::secrets::stored::read_fingerprints(&mut desired, &mut store)
            .map_err(|e| anyhow!("{e}"))?;
        Some(store)
    } else {
        None
    };
    let mut creds = Credentials::from_env();
    if let Some(e) = &target.emulator {
        creds.emulator = Some(e.clone());
    }
    let http = Http::new(HttpConfig::default()).map_err(|e| anyhow!("{e}"))?;
    let registry = providers::registry_for(&desired, &creds, &http).map_err(|e| anyhow!("{e}"))?;
    let scope = Scope {
        project: desired.project.clone(),
        environment: desired.environment,
        git: git.filter(|g| !g.repo.is_empty()),
    };
    Ok(Session {
        desired,
        scope,
        registry,
        http,
        store,
    })
}

/// A plan saved by `plan --out`, with what it was made from.
#[derive(Debug, Serialize, Deserialize)]
pub struct SavedPlan {
    pub format: String,
    pub version: u32,
    pub project: String,
    pub commit: Option<String>,
    /// SHA-256 of the desired state the plan was made for.
    pub desired_sha256: String,
    /// SHA-256 of the actual state observed when it was made.
    pub actual_sha256: String,
    pub plan: serde_json::Value,
}

const SAVED_PLAN_FORMAT: &str = "telbase-saved-plan";

fn plan_value(plan: &Plan) -> serde_json::Value {
    serde_json::from_str(&plan::render_json(plan)).unwrap_or(serde_json::Value::Null)
}

pub fn plan_cmd(args: &PlanArgs) -> ExitCode {
    match plan_inner(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn plan_inner(args: &PlanArgs) -> anyhow::Result<ExitCode> {
    let s = session(&args.target)?;
    let rt = runtime()?;
    let actual = rt
        .block_on(apply::observe(&s.registry, &s.scope))
        .map_err(|e| anyhow!("{e}"))?;
    let plan = plan::plan(&s.desired, &actual);
    let text = match args.format {
        PlanFormat::Text => plan::render_text_styled(&plan, colour()),
        PlanFormat::Markdown => plan::render_markdown(&plan, plan::GITHUB_COMMENT_LIMIT),
        PlanFormat::Json => plan::render_json(&plan),
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
    if let Some(path) = &args.out {
        let saved = SavedPlan {
            format: SAVED_PLAN_FORMAT.into(),
            version: 1,
            project: s.desired.project.clone(),
            commit: s.scope.git.as_ref().map(|g| g.sha.clone()),
            desired_sha256: apply::fingerprint(&s.desired),
            actual_sha256: apply::fingerprint(&actual),
            plan: plan_value(&plan),
        };
        let json = serde_json::to_string_pretty(&saved)? + "\n";
        write_atomically(path, json.as_bytes())?;
        eprintln!(
            "Saved the plan to {}; apply it with `telbase apply --plan {}`.",
            path.display(),
            path.display()
        );
    }
    Ok(if args.detailed_exitcode && plan.has_changes() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// Write through a temporary file in the same directory and rename it into place, so a
/// crash never leaves a half-written plan behind.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

/// The opener for sealed values (`TELBASE_IDENTITY_FILE` when set) and, when the config has
/// stored values, for those too (with the master keys from the environment).
pub(super) fn opener(store: Option<crate::store::Store>) -> anyhow::Result<Arc<dyn Opener>> {
    let age = age_only_opener()?;
    let Some(store) = store else {
        return Ok(age);
    };
    // A missing or bad master key fails only the steps that write a stored value.
    let keys = crate::secrets::envelope::key_provider_from_vars(|k| std::env::var(k).ok())
        .map_err(|e| e.to_string());
    Ok(Arc::new(crate::secrets::stored::StoreOpener::with_keys(
        age, store, keys,
    )))
}

/// The opener for sealed values: the identity from `TELBASE_IDENTITY` (contents) or
/// `TELBASE_IDENTITY_FILE` (path), the same precedence and messages as every other command.
pub(super) fn age_only_opener() -> anyhow::Result<Arc<dyn Opener>> {
    Ok(match crate::secrets::identity::load(None)? {
        Some(loaded) => Arc::new(AgeOpener(loaded.identities)),
        None => Arc::new(NoIdentity),
    })
}

/// An opener from the text of an age identity file (`what` names it in errors).
pub(super) fn age_opener(text: &str, what: &str) -> anyhow::Result<AgeOpener> {
    let ids = crate::secrets::parse_identities(text).map_err(|e| anyhow!("{what}: {e}"))?;
    Ok(AgeOpener(ids))
}

pub fn apply_cmd(args: &ApplyArgs) -> ExitCode {
    match apply_inner(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn apply_inner(args: &ApplyArgs) -> anyhow::Result<ExitCode> {
    let mut s = session(&args.target)?;
    let opener = opener(s.store.take())?;
    let rt = runtime()?;
    let actual = rt
        .block_on(apply::observe(&s.registry, &s.scope))
        .map_err(|e| anyhow!("{e}"))?;
    let plan = plan::plan(&s.desired, &actual);
    if let Some(path) = &args.plan {
        check_saved(path, &s, &actual, &plan)?;
    }
    print!("{}", plan::render_text_styled(&plan, colour()));
    if !plan.has_changes() {
        return Ok(ExitCode::SUCCESS);
    }
    if !args.auto_approve {
        if !std::io::stdin().is_terminal() {
            bail!(
                "refusing to apply without a terminal to confirm on; pass --auto-approve to apply unattended"
            );
        }
        print!("\nApply these changes? Only 'yes' is accepted: ");
        let _ = std::io::stdout().flush();
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if answer.trim() != "yes" {
            println!("Not applied.");
            return Ok(ExitCode::from(1));
        }
    }
    println!();
    let report = rt.block_on(run_apply(&s, plan, actual, opener, args.concurrency, true));
    println!("{}", report_summary(&report));
    Ok(if report.succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Refuse a saved plan when the file or the providers moved since it was made.
fn check_saved(path: &Path, s: &Session, actual: &ActualState, plan: &Plan) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let saved: SavedPlan = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a plan saved by `telbase plan --out`",
            path.display()
        )
    })?;
    if saved.format != SAVED_PLAN_FORMAT || saved.version != 1 {
        bail!("{} is not a version 1 Telbase plan", path.display());
    }
    if saved.desired_sha256 != apply::fingerprint(&s.desired) {
        bail!(
            "telbase.yaml (or the commit) changed since the plan was made; run `telbase plan --out` again"
        );
    }
    if saved.actual_sha256 != apply::fingerprint(actual) {
        bail!(
            "the resources at the providers changed since the plan was made; run `telbase plan --out` again and review it"
        );
    }
    if saved.plan != plan_value(plan) {
        bail!(
            "this version of Telbase plans differently from the one that saved the plan; run `telbase plan --out` again"
        );
    }
    Ok(())
}

/// Execute a plan, printing one line per finished step.
pub async fn run_apply(
    s: &Session,
    plan: Plan,
    actual: ActualState,
    opener: Arc<dyn Opener>,
    concurrency: usize,
    progress: bool,
) -> Report {
    let total = plan
        .steps
        .iter()
        .filter(|st| st.action != Action::NoOp)
        .count();
    let finished = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let on_event: Option<Arc<dyn Fn(Event) + Send + Sync>> = progress.then(|| {
        let finished = finished.clone();
        Arc::new(move |e: Event| {
            if let Event::Finished(r) = e {
                let n = finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                println!("  [{n}/{total}] {}", step_line(&r));
            }
        }) as Arc<dyn Fn(Event) + Send + Sync>
    });
    apply::execute(
        Arc::new(plan),
        Arc::new(s.desired.clone()),
        Arc::new(actual),
        Arc::new(s.registry.clone()),
        Arc::new(s.scope.clone()),
        opener,
        apply::Options {
            concurrency,
            on_event,
        },
    )
    .await
}

fn step_line(r: &apply::StepReport) -> String {
    let verb = match r.action {
        Action::Create => "created",
        Action::Update => "updated",
        Action::Replace => "replaced",
        Action::Delete => "deleted",
        Action::NoOp => "unchanged",
    };
    match &r.outcome {
        Outcome::Done { url } => format!(
            "{} {verb} ({:.1}s){}",
            r.key,
            r.millis as f64 / 1000.0,
            url.as_ref().map(|u| format!(" {u}")).unwrap_or_default()
        ),
        Outcome::Failed { error } => format!("{} FAILED: {error}", r.key),
        Outcome::Skipped { because } => {
            format!("{} skipped: it depends on {because}, which failed", r.key)
        }
    }
}

pub fn report_summary(r: &Report) -> String {
    let done = r.count(|o| matches!(o, Outcome::Done { .. }));
    let failed = r.count(|o| matches!(o, Outcome::Failed { .. }));
    let skipped = r.count(|o| matches!(o, Outcome::Skipped { .. }));
    if failed + skipped == 0 {
        format!("\nApply complete: {done} done.")
    } else {
        format!(
            "\nApply incomplete: {done} done, {failed} failed, {skipped} skipped. Run `telbase apply` again once the cause is fixed; finished steps are not repeated."
        )
    }
}

pub fn emulate_cmd(args: &EmulateArgs) -> ExitCode {
    let run = || -> anyhow::Result<()> {
        let rates = [
            ("--rate-5xx", args.rate_5xx),
            ("--rate-429", args.rate_429),
            ("--rate-timeout", args.rate_timeout),
            ("--rate-reset", args.rate_reset),
            ("--rate-garbage", args.rate_garbage),
        ];
        if let Some((flag, r)) = rates.iter().find(|(_, r)| !(0.0..=1.0).contains(r)) {
            bail!("{flag} {r}: a rate is a share of requests, between 0 and 1");
        }
        if !args.listen.ip().is_loopback() {
            bail!(
                "--listen {}: the emulator listens on loopback only (127.0.0.1 or [::1]); its token is public",
                args.listen
            );
        }
        let total: f64 = rates.iter().map(|(_, r)| r).sum();
        if total > 1.0 {
            bail!(
                "the fault rates add up to {total}; each request gets at most one fault, so they must add up to 1 or less"
            );
        }
        let rt = runtime()?;
        rt.block_on(async {
            let config = emulator::Config {
                faults: emulator::Faults {
                    latency: args.latency,
                    rate_5xx: args.rate_5xx,
                    rate_429: args.rate_429,
                    rate_timeout: args.rate_timeout,
                    rate_reset: args.rate_reset,
                    rate_garbage: args.rate_garbage,
                    stall: args.stall,
                    seed: args.seed,
                },
                page_size: args.page_size.max(1),
                record: args.record.clone(),
                ..emulator::Config::default()
            };
            let handle = emulator::start(args.listen, config).await?;
            println!("Telbase emulator listening on {}", handle.url());
            use crate::model::Provider as P;
            for (label, p) in [
                ("Vercel", P::Vercel),
                ("Neon", P::Neon),
                ("Turso", P::Turso),
                ("Cloudflare", P::Cloudflare),
                ("Cloud Run", P::CloudRun),
                ("Secret Manager", P::SecretManager),
                ("Cloud SQL", P::CloudSql),
            ] {
                println!("  {label:<15} {}{}", handle.url(), emulator::prefix(p));
            }
            println!(
                "  admin           {}/_admin/counters, /_admin/inventory, POST /_admin/drift",
                handle.url()
            );
            println!(
                "Point Telbase at it with:  export TELBASE_EMULATOR={}",
                handle.url()
            );
            let _ = tokio::signal::ctrl_c().await;
            handle.stop().await;
            Ok(())
        })
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

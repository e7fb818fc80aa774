//! The command line: argument parsing and output, nothing else.
//!
//! Each subcommand maps to library calls and prints their results; exit codes are part of the
//! interface (`validate`: 0 valid, 1 invalid, 2 could not run), so scripts and CI can branch
//! on them. `anyhow` lives here and only here.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

pub mod abuse;
pub mod audit;
mod ci;
mod demo;
pub mod env;
mod exec;
pub mod keys;
pub mod reconcile;
pub mod secrets;
pub mod serve;
pub mod serve_config;
pub mod watch;

use crate::config::{self, Code, Diagnostic, diag};
use crate::model::{DesiredState, Environment};

#[derive(Debug, Parser)]
#[command(
    name = "telbase",
    version,
    about = "Make telbase.yaml true: apps, databases, edge and access, reconciled from git"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check telbase.yaml files and report every problem with its location.
    Validate(ValidateArgs),
    /// Print the JSON Schema of telbase.yaml (the committed schemas/telbase.schema.json).
    Schema,
    /// Show what apply would change: observe the providers and compare with telbase.yaml.
    Plan(reconcile::PlanArgs),
    /// Make the providers match telbase.yaml.
    Apply(reconcile::ApplyArgs),
    /// Serve the emulated provider APIs (Vercel, Neon, Turso, Cloudflare, Cloud Run, Secret
    /// Manager, Cloud SQL) on a loopback address.
    Emulate(reconcile::EmulateArgs),
    /// Run the whole loop against the built-in emulator: validate, plan, apply, drift, correct.
    Demo(demo::DemoArgs),
    /// Age keys and sealed values: keygen, recipient, seal, reveal, reseal (see docs/secrets.md).
    #[command(subcommand)]
    Secrets(secrets::SecretsCommand),
    /// Stored secret env values (set outside the repository): set, list, unset.
    #[command(subcommand)]
    Env(env::EnvCommand),
    /// Master keys of the stored-secrets envelope: list, rotate.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Brute-force counters and locks of `telbase serve`: list, unlock (see docs/abuse.md).
    #[command(subcommand)]
    Abuse(abuse::AbuseCommand),
    /// One step of a GitHub Actions workflow: validate, plan, apply or drift, reported as
    /// annotations, job summary, outputs and one pull-request comment (see docs/ci.md).
    Ci(ci::CiArgs),
    /// Run the GitHub App: webhooks in, reconciles from a durable queue (see docs/serve.md).
    Serve(serve::ServeArgs),
    /// Open the sealed values in the environment and exec a command with their plaintexts
    /// (`telbase exec -- CMD ARGS…`; see docs/secrets.md).
    Exec(exec::ExecArgs),
    /// The tamper-evident security log: verify, list, prune, keygen (see docs/audit.md).
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Sign in to a Telbase server with the device flow (see docs/control-plane.md).
    Login(crate::control::cli::LoginArgs),
    /// Sign out: revoke the login on the server and delete it here.
    Logout,
    /// Who the stored login is, and their teams and roles.
    Whoami,
    /// Control-plane teams on the store: `team create NAME --owner EMAIL`.
    #[command(subcommand)]
    Team(crate::control::cli::TeamCommand),
}

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// Files to check; `-` reads standard input. Default: ./telbase.yaml.
    pub paths: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
    /// Also print the resources each valid file lowers to, with their dependencies.
    #[arg(long)]
    pub show_resources: bool,
    /// With --show-resources: show the preview environment of this pull request instead of
    /// production.
    #[arg(long, value_name = "PR", requires = "show_resources")]
    pub preview: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Compiler-style messages with the source line and a caret.
    Text,
    /// A JSON array of {file, line, column, code, severity, message, hint}.
    Json,
    /// GitHub Actions workflow annotations.
    Github,
}

/// Entry point of the binary.
pub fn run() -> ExitCode {
    // `telbase exec` starts every process of a deployment, so its start-up cost is paid on
    // each one (the secrets issue's speed target): it parses only its own arguments rather
    // than building the whole command tree, and sets up no logging (it writes its few
    // errors to standard error itself).
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new("exec")) {
        return exec::exec_main();
    }
    // `serve --config FILE`: the file's variables join the environment (by replacing this
    // process) before anything reads either.
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new("serve"))
        && let Err(e) = serve_config::apply_if_named()
    {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // The server's logs go to a collector when nobody watches a terminal: one JSON object
    // per line there; people at a terminal (and every other command) get text.
    let serve = matches!(cli.command, Command::Serve(_));
    init_tracing(
        serve,
        serve && !std::io::IsTerminal::is_terminal(&std::io::stderr()),
    );
    let result = match cli.command {
        Command::Validate(args) => validate(&args),
        Command::Schema => schema(),
        Command::Plan(args) => return reconcile::plan_cmd(&args),
        Command::Apply(args) => return reconcile::apply_cmd(&args),
        Command::Emulate(args) => return reconcile::emulate_cmd(&args),
        Command::Demo(args) => return demo::demo_cmd(&args),
        Command::Secrets(cmd) => return secrets::secrets_cmd(&cmd),
        Command::Env(cmd) => return env::env_cmd(&cmd),
        Command::Keys(cmd) => return keys::keys_cmd(&cmd),
        Command::Abuse(cmd) => return abuse::abuse_cmd(&cmd),
        Command::Serve(args) => return serve::serve_cmd(&args),
        Command::Ci(args) => return ci::ci_cmd(&args),
        Command::Exec(args) => return exec::exec_cmd(&args),
        Command::Audit(cmd) => return audit::audit_cmd(&cmd),
        Command::Login(args) => crate::control::cli::login_cmd(&args),
        Command::Logout => crate::control::cli::logout_cmd(),
        Command::Whoami => crate::control::cli::whoami_cmd(),
        Command::Team(cmd) => crate::control::cli::team_cmd(&cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default: warnings and errors; `telbase serve`:
/// info), as text or as JSON lines.
fn init_tracing(serve: bool, json: bool) {
    let default = if serve { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

fn schema() -> anyhow::Result<ExitCode> {
    let mut text = serde_json::to_string_pretty(&config::file::schema())?;
    text.push('\n');
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// What checking one input produced.
struct FileResult {
    name: String,
    source: Option<String>,
    diagnostics: Vec<Diagnostic>,
    state: Option<DesiredState>,
    unreadable: bool,
}

fn check_one(path: &std::path::Path, env: Environment) -> FileResult {
    let name = path.display().to_string();
    let bytes = if name == "-" {
        config::read_capped(std::io::stdin().lock())
    } else {
        config::read(path)
    };
    let bytes = match bytes {
        Ok(b) => b,
        Err(d) => {
            return FileResult {
                name,
                source: None,
                unreadable: d.code == Code::E0001,
                diagnostics: vec![d],
                state: None,
            };
        }
    };
    let checked = config::check_bytes_in(&bytes, config::dir_of(path));
    let state = checked
        .config
        .as_ref()
        .map(|c| config::lower::lower(c, env));
    FileResult {
        name,
        source: String::from_utf8(bytes).ok(),
        diagnostics: checked.diagnostics,
        state,
        unreadable: false,
    }
}

pub fn validate(args: &ValidateArgs) -> anyhow::Result<ExitCode> {
    let paths = if args.paths.is_empty() {
        vec![PathBuf::from("telbase.yaml")]
    } else {
        args.paths.clone()
    };
    let env = match args.preview {
        Some(n) => Environment::Preview { pull_request: n },
        None => Environment::Production,
    };
    let results: Vec<FileResult> = paths.iter().map(|p| check_one(p, env)).collect();
    let mut out = String::new();
    match args.format {
        OutputFormat::Text => {
            for r in &results {
                out.push_str(&diag::render_text(
                    &r.name,
                    r.source.as_deref(),
                    &r.diagnostics,
                ));
                let errors = r.diagnostics.iter().filter(|d| d.is_error()).count();
                let warnings = r.diagnostics.len() - errors;
                let name = diag::sanitize(&r.name);
                if errors == 0 {
                    let _ = writeln!(out, "{name}: valid{}", plural_suffix(warnings, "warning"));
                } else {
                    let _ = writeln!(
                        out,
                        "{name}: invalid: {errors} error{}{}",
                        if errors == 1 { "" } else { "s" },
                        plural_suffix(warnings, "warning")
                    );
                }
                if args.show_resources
                    && let Some(state) = &r.state
                {
                    out.push('\n');
                    out.push_str(&render_resources(state));
                }
            }
        }
        OutputFormat::Json => {
            if args.show_resources {
                #[derive(serde::Serialize)]
                struct FileReport<'a> {
                    file: &'a str,
                    valid: bool,
                    diagnostics: Vec<diag::JsonDiagnostic<'a>>,
                    desired_state: Option<&'a DesiredState>,
                }
                let files: Vec<FileReport> = results
                    .iter()
                    .map(|r| FileReport {
                        file: &r.name,
                        valid: r.state.is_some(),
                        diagnostics: diag::to_json(&r.name, &r.diagnostics),
                        desired_state: r.state.as_ref(),
                    })
                    .collect();
                out = serde_json::to_string_pretty(&files)?;
            } else {
                let all: Vec<_> = results
                    .iter()
                    .flat_map(|r| diag::to_json(&r.name, &r.diagnostics))
                    .collect();
                out = serde_json::to_string_pretty(&all)?;
            }
            out.push('\n');
        }
        OutputFormat::Github => {
            for r in &results {
                out.push_str(&diag::render_github(&r.name, &r.diagnostics));
            }
        }
    }
    let mut stdout = std::io::stdout().lock();
    // A closed pipe (`telbase validate | head`) is not an error worth a panic.
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
    Ok(if results.iter().any(|r| r.unreadable) {
        ExitCode::from(2)
    } else if results.iter().any(|r| r.state.is_none()) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn plural_suffix(n: usize, word: &str) -> String {
    match n {
        0 => String::new(),
        1 => format!(", 1 {word}"),
        n => format!(", {n} {word}s"),
    }
}

/// The resource list of `--show-resources`: dependency order, with each resource's origin in
/// the file and what it waits for.
pub fn render_resources(state: &DesiredState) -> String {
    let mut out = String::new();
    let env = match state.environment {
        Environment::Production => "production".to_owned(),
        Environment::Preview { pull_request } => format!("preview of pull request #{pull_request}"),
    };
    let _ = writeln!(
        out,
        "{} · {env} · {} resource{}",
        state.project,
        state.resources.len(),
        if state.resources.len() == 1 { "" } else { "s" }
    );
    let ordered = state.topological();
    let width = ordered
        .iter()
        .map(|r| r.key.to_string().len())
        .max()
        .unwrap_or(0);
    for r in ordered {
        let _ = writeln!(out, "  {:width$}  {}", r.key.to_string(), r.origin);
        for d in &r.depends_on {
            let _ = writeln!(out, "  {:width$}    after {d}", "");
        }
    }
    let _ = writeln!(
        out,
        "reconcile: drift \"{}\", on drift {}, prune {}",
        state.reconcile.drift_cron,
        state.reconcile.on_drift,
        if state.reconcile.prune { "on" } else { "off" }
    );
    out
}

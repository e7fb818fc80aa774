//! `telbase env …`: stored secrets (values set outside the repository, like Render's
//! `sync: false`) from the command line. Values come from standard input only, are sealed
//! into the store (`crate::secrets::stored`) and are never printed again: `list` shows names,
//! versions, key ids and a masked value with its keyed fingerprint.

use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, anyhow, bail};

use crate::config;
use crate::secrets::{self, envelope, stored};
use crate::store::{self, SecretName, SecretRows as _, Store};

/// What `env list` shows instead of a value.
pub const MASK: &str = "••••••••";

#[derive(Debug, clap::Subcommand)]
pub enum EnvCommand {
    /// Store a new version of a secret env value, read from standard input.
    Set(SetArgs),
    /// List stored values: names, versions, key ids, masked values.
    List(ListArgs),
    /// Delete a stored value.
    Unset(SetArgs),
}

/// Which environment a stored value is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EnvName {
    Production,
    Preview,
}

impl EnvName {
    pub fn as_str(self) -> &'static str {
        match self {
            EnvName::Production => "production",
            EnvName::Preview => "preview",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct SetArgs {
    /// The variable's name (letters, digits and `_`, not starting with a digit).
    pub key: String,
    /// The environment the value is for.
    #[arg(long = "env", value_enum, default_value_t = EnvName::Production)]
    pub env: EnvName,
    /// The config whose `project:` the value belongs to.
    #[arg(long, value_name = "FILE", default_value = "telbase.yaml")]
    pub config: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only this environment (default: all).
    #[arg(long = "env", value_enum)]
    pub env: Option<EnvName>,
    /// The config whose `project:` to list.
    #[arg(long, value_name = "FILE", default_value = "telbase.yaml")]
    pub config: PathBuf,
}

pub fn env_cmd(cmd: &EnvCommand) -> ExitCode {
    let result = match cmd {
        EnvCommand::Set(a) => set(a),
        EnvCommand::List(a) => list(a),
        EnvCommand::Unset(a) => unset(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The `project:` of a config file (which must be valid: a value stored under a misspelled
/// project would never be found).
pub fn project_of(path: &Path) -> anyhow::Result<String> {
    let bytes = config::read(path).map_err(|d| anyhow!("{}", d.message))?;
    let checked = config::check_bytes(&bytes);
    match checked.config {
        Some(cfg) => Ok(cfg.project),
        None => bail!(
            "{} is not valid (run `telbase validate {}`); its `project:` names the stored values",
            path.display(),
            path.display()
        ),
    }
}

/// The store at `TELBASE_DATABASE_URL` (or the default file).
pub fn open_store() -> anyhow::Result<Store> {
    let location = store::Location::from_env()?;
    Ok(store::open(&location)?)
}

/// True for a portable environment variable name.
pub fn valid_env_name(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 256
        && !key.as_bytes()[0].is_ascii_digit()
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn secret_name(args: &SetArgs) -> anyhow::Result<SecretName> {
    if !valid_env_name(&args.key) {
        bail!(
            "`{}` is not an environment variable name (letters, digits and `_`, not starting with a digit)",
            args.key.chars().take(64).collect::<String>()
        );
    }
    Ok(SecretName {
        project: project_of(&args.config)?,
        environment: args.env.as_str().to_owned(),
        name: args.key.clone(),
    })
}

fn set(args: &SetArgs) -> anyhow::Result<()> {
    let name = secret_name(args)?;
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        bail!(
            "the value is read from standard input, which is a terminal; pipe it in instead, e.g. `printf %s \"$VALUE\" | telbase env set {} --env {}` (never on the command line: argv is visible to other processes)",
            name.name,
            name.environment
        );
    }
    let plain = secrets::read_plaintext(stdin.lock()).context("standard input")?;
    if plain.is_empty() {
        bail!(
            "standard input was empty; pipe the value in (an empty value is refused because it is almost always a variable that was not set)"
        );
    }
    if std::str::from_utf8(&plain).is_err() {
        bail!("the value is not UTF-8 text; environment values must be text");
    }
    let keys = envelope::key_provider_from_vars(|k| std::env::var(k).ok())?;
    let mut store = open_store()?;
    let v = stored::set(&mut store, keys.as_ref(), &name, &plain)?;
    println!(
        "stored {}/{} version {} for project {} (key {}, {})",
        name.environment, name.name, v.version, name.project, v.key_id, v.fingerprint
    );
    Ok(())
}

fn unset(args: &SetArgs) -> anyhow::Result<()> {
    let name = secret_name(args)?;
    let mut store = open_store()?;
    if store.delete_value(&name)? {
        println!(
            "deleted {}/{} of project {}",
            name.environment, name.name, name.project
        );
        Ok(())
    } else {
        bail!(
            "{}/{} is not set for project {}",
            name.environment,
            name.name,
            name.project
        )
    }
}

fn list(args: &ListArgs) -> anyhow::Result<()> {
    let project = project_of(&args.config)?;
    let mut store = open_store()?;
    let rows = store.list_values(&project, args.env.map(EnvName::as_str))?;
    let mut out = String::new();
    if rows.is_empty() {
        let _ = writeln!(out, "no stored values for project {project}");
    } else {
        let table: Vec<[String; 6]> = rows
            .iter()
            .map(|r| {
                [
                    r.name.environment.clone(),
                    r.name.name.clone(),
                    r.value.version.to_string(),
                    r.value.updated_at.clone(),
                    r.value.key_id.clone(),
                    format!("{MASK} {}", r.value.fingerprint),
                ]
            })
            .collect();
        let header = ["ENVIRONMENT", "NAME", "VERSION", "UPDATED", "KEY", "VALUE"];
        let mut widths = header.map(|h| h.chars().count());
        for row in &table {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut line = |cells: &[&str]| {
            let mut l = String::new();
            for (i, c) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    l.push_str(c);
                } else {
                    let pad = widths[i] - c.chars().count();
                    let _ = write!(l, "{c}{}  ", " ".repeat(pad));
                }
            }
            let _ = writeln!(out, "{l}");
        };
        line(&header);
        for row in &table {
            line(&row.each_ref().map(String::as_str));
        }
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    Ok(())
}

//! `telbase audit …`: the tamper-evident security log (`crate::audit`) from the command line,
//! on the store `telbase serve` and `telbase env` use (TELBASE_DATABASE_URL) with the audit key
//! from TELBASE_AUDIT_KEY_FILE / TELBASE_AUDIT_KEY. `verify` walks the chain (exit 0 intact,
//! 1 tampered with the finding, 2 could not run); `list` filters as the REST API will; `prune`
//! applies the retention and writes a signed checkpoint; `keygen` makes a key.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, anyhow, bail};
use chrono::{DateTime, Utc};

use crate::audit::{AuditError, AuditFilter, AuditLog, AuditRecord};

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Check the whole chain and its checkpoints: exit 0 intact, 1 tampered (the finding is
    /// printed), 2 could not run.
    Verify(VerifyArgs),
    /// Print the newest record's seq and MAC (after verifying the log), and the command that
    /// checks them later: publish it OUTSIDE the database, so cutting off the newest records
    /// is found (docs/audit.md, "Anchoring the head").
    Head(HeadArgs),
    /// Show records, newest first, filtered by time, actor and action.
    List(ListArgs),
    /// Delete records older than the retention (default 90 days, or
    /// TELBASE_AUDIT_RETENTION_DAYS) and write a signed checkpoint.
    Prune(PruneArgs),
    /// Make a new audit key (32 random bytes, base64) into a new 0600 file.
    Keygen(KeygenArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// An anchor from `telbase audit head`: the log must still reach record N...
    #[arg(long, value_name = "N", requires = "expect_mac", value_parser = clap::value_parser!(i64).range(1..))]
    pub expect_seq: Option<i64>,
    /// ...and that record's MAC must be this (hex).
    #[arg(long, value_name = "HEX", requires = "expect_seq", value_parser = parse_mac)]
    pub expect_mac: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct HeadArgs {
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// A MAC as `audit head` prints it: 64 hex digits.
fn parse_mac(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err("expected the 64 hex digits `telbase audit head` printed".into())
    }
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Records at or after this time: RFC 3339 (`2026-11-01T00:00:00Z`) or an age (`24h`, `7d`).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<DateTime<Utc>>,
    /// Records before this time (same forms as --since).
    #[arg(long, value_parser = parse_time)]
    pub until: Option<DateTime<Utc>>,
    /// The actor's id or display name.
    #[arg(long)]
    pub actor: Option<String>,
    /// An action (`auth.login`) or a category prefix (`auth.*`).
    #[arg(long)]
    pub action: Option<String>,
    /// At most this many records (up to 1000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Delete records older than this (`90d`, `2160h`); default the configured retention.
    #[arg(long, value_parser = parse_age)]
    pub older_than: Option<chrono::Duration>,
}

#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// The file to create (0600; refused if it exists). Point TELBASE_AUDIT_KEY_FILE at it.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// `24h`, `7d`, `30m`, `90s`, `2w`.
pub fn parse_age(s: &str) -> Result<chrono::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: i64 = num
        .parse()
        .ok()
        .filter(|n| *n > 0 && *n < 1_000_000)
        .ok_or_else(|| format!("`{s}` is not an age like 90d, 24h or 30m"))?;
    Ok(match unit {
        "s" => chrono::Duration::seconds(n),
        "m" => chrono::Duration::minutes(n),
        "h" => chrono::Duration::hours(n),
        "d" => chrono::Duration::days(n),
        "w" => chrono::Duration::weeks(n),
        _ => return Err(format!("`{s}`: use s, m, h, d or w")),
    })
}

/// RFC 3339, or an age before now.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s.trim()) {
        return Ok(t.with_timezone(&Utc));
    }
    parse_age(s)
        .map(|age| Utc::now() - age)
        .map_err(|_| format!("`{s}` is neither an RFC 3339 time nor an age like 24h or 7d"))
}

pub fn audit_cmd(cmd: &AuditCommand) -> ExitCode {
    let result = match cmd {
        AuditCommand::Verify(a) => return verify(a),
        AuditCommand::Head(a) => head(a),
        AuditCommand::List(a) => list(a),
        AuditCommand::Prune(a) => prune(a),
        AuditCommand::Keygen(a) => keygen(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn verify(args: &VerifyArgs) -> ExitCode {
    use crate::audit::anchor::{self, AnchorCheck};
    let run = || -> anyhow::Result<(crate::audit::Verification, Option<AnchorCheck>)> {
        let log = AuditLog::from_env()?;
        let mut store = super::env::open_store()?;
        let v = log.verify(&mut store)?;
        let anchored = match (&args.expect_seq, &args.expect_mac) {
            (Some(seq), Some(mac)) if v.finding.is_none() => {
                Some(anchor::check(&mut store, &v, *seq, mac)?)
            }
            _ => None,
        };
        Ok((v, anchored))
    };
    let (v, anchored) = match run() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Some(a) = &anchored {
        let (text, code) = match a {
            AnchorCheck::Holds => (
                format!(
                    "anchor holds: the log reaches record {} with the expected MAC",
                    args.expect_seq.unwrap_or_default()
                ),
                0,
            ),
            AnchorCheck::Truncated { head_seq } => (
                format!(
                    "audit log TAMPERED: truncated: it ends at record {head_seq}, before the anchored record {}",
                    args.expect_seq.unwrap_or_default()
                ),
                1,
            ),
            AnchorCheck::Differs { seq } => (
                format!(
                    "audit log TAMPERED: record {seq} is not the anchored one (different MAC or missing)"
                ),
                1,
            ),
            AnchorCheck::Pruned { first_kept } => (
                format!(
                    "cannot check the anchor: retention pruned it (the log now starts at record {first_kept}); anchor more often than the retention"
                ),
                2,
            ),
        };
        match args.format {
            Format::Json => println!("{}", serde_json::json!({"verification": v, "anchor": a})),
            Format::Text => {
                println!(
                    "audit log intact: {} records (seq {}..{}), {} checkpoints, key {}",
                    v.records, v.first_seq, v.head_seq, v.checkpoints, v.key_id
                );
                println!("{text}");
            }
        }
        return ExitCode::from(code);
    }
    match args.format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&v).unwrap_or_else(|_| "{}".into())
        ),
        Format::Text => match &v.finding {
            None => println!(
                "audit log intact: {} records (seq {}..{}), {} checkpoints, key {}",
                v.records, v.first_seq, v.head_seq, v.checkpoints, v.key_id
            ),
            Some(f) => println!("audit log TAMPERED: {f}"),
        },
    }
    if v.finding.is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn list(args: &ListArgs) -> anyhow::Result<ExitCode> {
    if let Some(a) = &args.action {
        let name = a.trim_end_matches('*').trim_end_matches('.');
        if !crate::audit::Category::all()
            .iter()
            .any(|c| c.prefix() == name)
        {
            crate::audit::Action::new(name)?;
        }
    }
    let mut store = super::env::open_store()?;
    let filter = AuditFilter {
        since: args.since,
        until: args.until,
        actor: args.actor.clone(),
        action: args.action.clone(),
        before_seq: None,
        limit: args.limit as usize,
    };
    let records = AuditLog::list(&mut store, &filter)?;
    let mut out = String::new();
    match args.format {
        Format::Json => {
            let views: Vec<_> = records.iter().map(AuditRecord::view).collect();
            out = serde_json::to_string_pretty(&views)?;
            out.push('\n');
        }
        Format::Text => {
            for r in &records {
                out.push_str(&line(r));
                out.push('\n');
            }
        }
    }
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// One record on one line (control characters were refused when it was recorded, but a
/// forged row may hold any: they are dropped here so a terminal cannot be driven by it).
fn line(r: &AuditRecord) -> String {
    let clean = |s: &str| s.chars().filter(|c| !c.is_control()).collect::<String>();
    let target = match (&r.target_type, &r.target_id) {
        (Some(t), Some(i)) => format!("{t}:{i}"),
        _ => "-".into(),
    };
    clean(&format!(
        "{:>6}  {}  {:<7}  {:<32}  {}:{} ({})  from {}  on {}  {}",
        r.seq,
        r.time().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        r.outcome,
        r.action,
        r.actor_kind,
        r.actor_id,
        r.actor_display,
        r.source.as_deref().unwrap_or("-"),
        target,
        r.details
    ))
}

fn prune(args: &PruneArgs) -> anyhow::Result<ExitCode> {
    let log = AuditLog::from_env()?;
    let age = args
        .older_than
        .unwrap_or_else(|| chrono::Duration::days(i64::from(log.retention_days())));
    if age < chrono::Duration::days(i64::from(crate::audit::MIN_RETENTION_DAYS)) {
        bail!(
            "--older-than must be at least {}d: the security page promises security logs are kept 90 days",
            crate::audit::MIN_RETENTION_DAYS
        );
    }
    let mut store = super::env::open_store()?;
    match log.prune_before(&mut store, Utc::now() - age) {
        Ok(report) => {
            match &report.checkpoint {
                Some(cp) => println!(
                    "pruned {} records; checkpoint {} keeps records from seq {}",
                    report.pruned, cp.number, cp.first_kept
                ),
                None => println!("nothing older than {} days to prune", age.num_days()),
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(AuditError::PruneRefused(f)) => {
            eprintln!("error: refusing to prune: the audit log does not verify: {f}");
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(anyhow!(e)),
    }
}

fn keygen(args: &KeygenArgs) -> anyhow::Result<ExitCode> {
    let key = crate::audit::AuditKeys::generate()?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&args.out)
        .with_context(|| format!("{}: cannot create the key file", args.out.display()))?;
    f.write_all(key.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    let id = crate::audit::AuditKeys::parse(&key, "the new key")?;
    println!(
        "wrote a new audit key to {} (key id {}); set TELBASE_AUDIT_KEY_FILE to it and keep a copy offline: without it the log cannot be verified",
        args.out.display(),
        id.id()
    );
    Ok(ExitCode::SUCCESS)
}

/// `telbase audit head`: the anchor to publish (see [`crate::audit::anchor`]).
fn head(args: &HeadArgs) -> anyhow::Result<ExitCode> {
    let log = AuditLog::from_env()?;
    let mut store = super::env::open_store()?;
    let Some(a) = crate::audit::anchor::head(&log, &mut store)? else {
        bail!("the audit log has no records yet: nothing to anchor");
    };
    match args.format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "seq": a.seq,
                "mac": a.mac,
                "at": chrono::DateTime::from_timestamp_millis(a.at_ms).map(|t| t.to_rfc3339()),
                "verify": a.verify_command(),
            }))?
        ),
        Format::Text => {
            let at = chrono::DateTime::from_timestamp_millis(a.at_ms)
                .map(|t| t.to_rfc3339())
                .unwrap_or_default();
            println!("seq {}\nmac {}\nat {at}", a.seq, a.mac);
            println!("check later with: {}", a.verify_command());
        }
    }
    Ok(ExitCode::SUCCESS)
}

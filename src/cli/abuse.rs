//! `telbase abuse …`: what the brute-force counters hold and how an operator lifts a lock.
//! `list` shows every counter (locked ones first) with its failures, lock end and backoff
//! level; `unlock --address A` or `unlock --account KIND:ID` clears a lock, its failures
//! and its backoff in every realm. Works on the store `TELBASE_DATABASE_URL` names, as the
//! server does; running servers notice within a few seconds.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::process::ExitCode;

use anyhow::{Context as _, anyhow};

use crate::abuse::{self, AbuseRows as _, Account, LogEvents, UnlockTarget};

#[derive(Debug, clap::Subcommand)]
pub enum AbuseCommand {
    /// List failure counters and locks (locked ones first).
    List {
        /// `text` (a table) or `json` (one array, for scripts and monitoring).
        #[arg(long, value_enum, default_value_t = ListFormat::Text)]
        format: ListFormat,
    },
    /// Lift the lock of an address or an account (its failures and backoff are cleared).
    Unlock(UnlockArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ListFormat {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct UnlockArgs {
    /// An IP address (its /32, or the /64 an IPv6 address is counted in).
    #[arg(long)]
    pub address: Option<String>,
    /// An account key as `list` shows it: `user:ID`, `token:ID`, `installation:ID`.
    #[arg(long)]
    pub account: Option<String>,
}

pub fn abuse_cmd(cmd: &AbuseCommand) -> ExitCode {
    let result = match cmd {
        AbuseCommand::List { format } => list(*format),
        AbuseCommand::Unlock(a) => unlock(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| "-".into())
}

fn list(format: ListFormat) -> anyhow::Result<()> {
    let mut store = super::env::open_store()?;
    let now = chrono::Utc::now().timestamp_millis();
    let rows = store.subjects(now)?;
    if format == ListFormat::Json {
        // Times as RFC 3339 (absent when there is none), `locked` decided here with the
        // same clock as the table's, so a script need not compare times itself.
        let opt_time = |ms: i64| (ms > 0).then(|| time(ms));
        let items: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "realm": r.subject.realm.as_str(),
                    "scope": r.subject.scope.as_str(),
                    "key": r.subject.key,
                    "failures": r.failures,
                    "locked": r.locked_until_ms > now,
                    "locked_until": (r.locked_until_ms > now).then(|| time(r.locked_until_ms)),
                    "level": r.level,
                    "lockouts": r.lockouts,
                    "last_failure": opt_time(r.last_failure_ms),
                })
            })
            .collect();
        let mut out = serde_json::to_string_pretty(&items)?;
        out.push('\n');
        std::io::stdout().write_all(out.as_bytes())?;
        return Ok(());
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8}  {:<8}  {:<42}  {:>8}  {:<20}  {:>5}  {:>8}  LAST FAILURE",
        "REALM", "SCOPE", "KEY", "FAILURES", "LOCKED UNTIL", "LEVEL", "LOCKOUTS"
    );
    for r in rows {
        let locked = if r.locked_until_ms > now {
            time(r.locked_until_ms)
        } else {
            "-".into()
        };
        let _ = writeln!(
            out,
            "{:<8}  {:<8}  {:<42}  {:>8}  {:<20}  {:>5}  {:>8}  {}",
            r.subject.realm.as_str(),
            r.subject.scope.as_str(),
            r.subject.key,
            r.failures,
            locked,
            r.level,
            r.lockouts,
            if r.last_failure_ms > 0 {
                time(r.last_failure_ms)
            } else {
                "-".into()
            }
        );
    }
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(())
}

fn unlock(args: &UnlockArgs) -> anyhow::Result<()> {
    let target = match (&args.address, &args.account) {
        (Some(a), None) => UnlockTarget::Address(
            a.trim()
                .parse::<IpAddr>()
                .with_context(|| format!("--address `{a}` is not an IP address"))?,
        ),
        (None, Some(k)) => UnlockTarget::Account(Account::from_key(k.trim()).ok_or_else(
            || anyhow!("--account `{k}` is not an account key such as user:42 or token:tok_abc (see `telbase abuse list`)"),
        )?),
        _ => return Err(anyhow!("give --address or --account")),
    };
    let mut store = super::env::open_store()?;
    // An unlock is an access-control change: it goes into the security log when this
    // machine has the audit key (as the server's does), else into this command's log.
    let audit = crate::audit::AuditLog::from_env().context("the audit key")?;
    let audit = audit.has_key().then_some(audit);
    let collected = Collect(std::sync::Mutex::new(Vec::new()));
    let sink: &dyn abuse::SecurityEvents = if audit.is_some() {
        &collected
    } else {
        &LogEvents
    };
    let n = abuse::unlock(&mut store, &target, sink)?;
    if let Some(log) = &audit {
        let events = std::mem::take(&mut *collected.0.lock().unwrap_or_else(|e| e.into_inner()));
        for e in events {
            log.record(&mut store, &e)
                .map_err(|e| anyhow!("unlocked, but the security log could not record it: {e}"))?;
        }
    }
    let (scope, key) = target.subject();
    if n == 0 {
        println!("no counter for {} {key}: nothing to unlock", scope.as_str());
    } else {
        println!("unlocked {} {key} ({n} counter(s))", scope.as_str());
    }
    Ok(())
}

/// Keeps the unlock's audit record until the store is free to write it (the unlock holds
/// the store while it reports).
struct Collect(std::sync::Mutex<Vec<crate::audit::AuditEvent>>);

impl abuse::SecurityEvents for Collect {
    fn record(&self, event: &abuse::SecurityEvent) -> Result<(), abuse::SecurityEventsError> {
        let e = crate::serve::audit::from_abuse(event)
            .map_err(|e| abuse::SecurityEventsError(e.to_string()))?;
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(e);
        Ok(())
    }
}

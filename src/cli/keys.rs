//! `telbase keys …`: the master keys of the stored-secrets envelope. `list` shows each key's
//! id, status and how many stored keys it wraps; `rotate` adds a new master key (generated
//! into the keyring file, or the one the operator appended) and re-wraps every data key onto
//! it (`crate::secrets::stored::rotate_keyring`, which survives being killed at any point).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;

use crate::secrets::{envelope, stored};
use crate::store::SecretRows as _;

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// List master keys: id, status (current, active, retired) and rows each one wraps.
    List,
    /// Add a new master key and re-wrap every stored data key onto it; retire the old key.
    Rotate(RotateArgs),
}

#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    /// Generate the new key into the keyring file (created if missing). Without it, the new
    /// key is the last line the operator appended to the keyring file.
    #[arg(long)]
    pub generate: bool,
    /// Rows re-wrapped per transaction (small batches keep the write lock short).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch: u32,
}

pub fn keys_cmd(cmd: &KeysCommand) -> ExitCode {
    let result = match cmd {
        KeysCommand::List => list(),
        KeysCommand::Rotate(a) => rotate(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn list() -> anyhow::Result<()> {
    let (keyring, _) = envelope::keyring_from_vars(|k| std::env::var(k).ok())?;
    let mut store = super::env::open_store()?;
    let usage: BTreeMap<String, u64> = store.key_usage()?.into_iter().collect();
    let current = keyring.current().map(|k| k.id.clone());
    let mut out = String::new();
    let _ = writeln!(out, "{:<40}  {:<8}  ROWS", "KEY", "STATUS");
    for k in keyring.keys() {
        let status = if Some(&k.id) == current.as_ref() {
            "current"
        } else if k.retired {
            "retired"
        } else {
            "active"
        };
        let n = usage.get(&k.id).copied().unwrap_or(0);
        let _ = writeln!(out, "{:<40}  {status:<8}  {n}", k.id);
    }
    let mut missing = false;
    for (id, n) in &usage {
        if !keyring.keys().iter().any(|k| &k.id == id) {
            missing = true;
            let _ = writeln!(out, "{id:<40}  {:<8}  {n}", "MISSING");
        }
    }
    std::io::stdout().write_all(out.as_bytes())?;
    if missing {
        bail!(
            "the store uses master keys that are not in {}: those values cannot be opened until the keys are restored",
            keyring.source()
        );
    }
    Ok(())
}

fn rotate(args: &RotateArgs) -> anyhow::Result<()> {
    let Some(path) = std::env::var_os("TELBASE_MASTER_KEY_FILE").filter(|p| !p.is_empty()) else {
        return Err(stored::StoredError::NoKeyringFile.into());
    };
    if std::env::var_os("TELBASE_MASTER_KEY").is_some_and(|v| !v.is_empty()) {
        bail!(
            "both TELBASE_MASTER_KEY_FILE and TELBASE_MASTER_KEY are set; rotation works on the keyring file, so unset TELBASE_MASTER_KEY (copy its key into the file first if values use it)"
        );
    }
    let path = PathBuf::from(path);
    let mut store = super::env::open_store()?;
    // Progress on a terminal only: scripts and logs get the summary below.
    let tty = std::io::stderr().is_terminal();
    let report =
        stored::rotate_keyring(&mut store, &path, args.generate, args.batch as usize, |n| {
            if tty {
                eprint!("\rre-wrapped {n} keys…");
            }
        })?;
    if tty {
        eprint!("\r\x1b[K");
    }
    let mut out = String::new();
    if report.generated {
        let _ = writeln!(out, "generated master key {}", report.target);
    }
    if report.resumed {
        let _ = writeln!(
            out,
            "finished an interrupted rotation onto {} (no new key generated)",
            report.target
        );
    }
    let _ = writeln!(
        out,
        "re-wrapped {} key{} onto {}",
        report.rewrapped,
        if report.rewrapped == 1 { "" } else { "s" },
        report.target
    );
    for id in &report.retired {
        let _ = writeln!(out, "retired {id}");
    }
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(())
}

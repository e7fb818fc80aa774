//! `telbase exec [--identity FILE] [--env-file F.sops.yaml] -- CMD ARGS…`: opens every sealed
//! value in the environment (see `secrets::inject` for the forms) and replaces this process
//! with CMD, whose environment then holds the plaintexts instead.
//!
//! On Unix the command is started with `exec(2)`: it *is* this process (same pid), so signals
//! sent to it and its exit status, including death by a signal, reach whoever started
//! `telbase exec` with nothing in between to forward or translate them. Everything that can
//! fail (no identity, a value that does not open) fails before CMD starts, with exit code 1
//! and the variable's name, never its value. If CMD cannot be started the exit codes are the
//! shell's: 127 not found, 126 found but not executable. Other platforms are refused: without
//! `exec(2)` the command would have to be a child whose signals and exit status are forwarded
//! by hand, which Telbase does not attempt.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use secrecy::SecretString;

use crate::secrets::identity::{self, ENV_IDENTITY, HOW_TO_NAME_ONE};
use crate::secrets::inject;

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// The identity file. Default: $TELBASE_IDENTITY (the identity itself), then
    /// $TELBASE_IDENTITY_FILE (its path). Read only if something needs opening.
    #[arg(short, long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// A SOPS-encrypted file of further variables (YAML or JSON, age recipients). Variables
    /// already in the environment keep their value.
    #[arg(long, value_name = "FILE")]
    pub env_file: Option<PathBuf>,
    /// The command and its arguments (after `--`).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD",
        value_parser = clap::value_parser!(OsString)
    )]
    pub command: Vec<OsString>,
}

/// Exit code when something fails before the command starts.
const FAILED: u8 = 1;
/// Exit codes when the command cannot be started, as POSIX shells use them.
const NOT_EXECUTABLE: u8 = 126;
const NOT_FOUND: u8 = 127;

/// `telbase exec …` parsed on its own (see `cli::run`); help and errors read as they do
/// through the full command tree.
#[derive(Debug, clap::Parser)]
#[command(
    name = "telbase exec",
    version,
    about = "Open the sealed values in the environment and exec a command with their plaintexts"
)]
struct ExecOnly {
    #[command(flatten)]
    args: ExecArgs,
}

/// Entry point for `telbase exec` from `main`: arguments after `exec` only.
pub fn exec_main() -> ExitCode {
    use clap::Parser as _;
    let argv = std::iter::once(OsString::from("telbase exec")).chain(std::env::args_os().skip(2));
    match ExecOnly::try_parse_from(argv) {
        Ok(parsed) => exec_cmd(&parsed.args),
        Err(e) => {
            let _ = e.print();
            if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}

pub fn exec_cmd(args: &ExecArgs) -> ExitCode {
    let prepared = match prepare(args) {
        Ok(p) => p,
        Err(lines) => {
            for l in lines {
                eprintln!("error: {l}");
            }
            return ExitCode::from(FAILED);
        }
    };
    run(args, prepared)
}

/// What the command's environment changes by: plaintexts replacing sealed values, and
/// variables from the env file that the environment does not already have.
struct Prepared {
    opened: Vec<inject::Opened>,
    from_file: Vec<(String, SecretString)>,
}

/// Opens everything, or returns every reason it could not (one per line).
fn prepare(args: &ExecArgs) -> Result<Prepared, Vec<String>> {
    let sealed = inject::sealed_vars(std::env::vars_os(), OsStr::new(ENV_IDENTITY));
    if sealed.is_empty() && args.env_file.is_none() {
        // Nothing to open: the same entrypoint works where no secrets are configured.
        return Ok(Prepared {
            opened: Vec::new(),
            from_file: Vec::new(),
        });
    }
    let loaded = match identity::load(args.identity.as_deref()) {
        Ok(Some(l)) => l,
        Ok(None) => {
            let what = if sealed.is_empty() {
                "--env-file needs an identity".to_owned()
            } else {
                let names: Vec<_> = sealed.iter().map(|(n, _)| n.to_string_lossy()).collect();
                format!(
                    "{} {} sealed, but there is no identity to open {}",
                    names.join(", "),
                    if names.len() == 1 { "is" } else { "are" },
                    if names.len() == 1 { "it" } else { "them" },
                )
            };
            return Err(vec![format!("{what}: {HOW_TO_NAME_ONE}")]);
        }
        Err(e) => return Err(vec![e.to_string()]),
    };
    let mut errors = Vec::new();
    let opened = match inject::open_vars(&sealed, &loaded.identities) {
        Ok(o) => o,
        Err(es) => {
            errors.extend(es.iter().map(|e| format!("cannot open {e}")));
            Vec::new()
        }
    };
    let mut from_file = Vec::new();
    if let Some(path) = &args.env_file {
        match open_env_file(path, &loaded.identities) {
            Ok(vars) => {
                from_file = vars
                    .into_iter()
                    .filter(|(name, _)| std::env::var_os(name).is_none())
                    .collect();
            }
            Err(e) => errors.push(format!("{}: {e}", path.display())),
        }
    }
    if errors.is_empty() {
        Ok(Prepared { opened, from_file })
    } else {
        Err(errors)
    }
}

/// The variables of a SOPS file, MAC verified (any tampering fails the whole exec).
fn open_env_file(
    path: &Path,
    identities: &[age::x25519::Identity],
) -> Result<Vec<(String, SecretString)>, String> {
    crate::secrets::sops::open_env_file(path, identities)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Replaces this process with the command (never returns on success).
#[cfg(unix)]
fn run(args: &ExecArgs, prepared: Prepared) -> ExitCode {
    use secrecy::ExposeSecret as _;
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::process::CommandExt as _;

    let program = &args.command[0];
    let mut cmd = std::process::Command::new(program);
    cmd.args(&args.command[1..]);
    // The key opens every value: the command gets the values, not the key.
    cmd.env_remove(ENV_IDENTITY);
    // `Command` copies each value into its own buffer, which the exec below discards with
    // the rest of this process image; ours are zeroized on the error path as they drop.
    for o in &prepared.opened {
        cmd.env(&o.name, OsStr::from_bytes(&o.plaintext));
    }
    for (name, value) in &prepared.from_file {
        cmd.env(name, value.expose_secret());
    }
    // Only returns if the exec failed. (Rust ignores SIGPIPE in its own process; `Command`
    // restores its default disposition for the new image. The signal mask passes on as we
    // received it: nothing on this path blocks a signal.)
    let err = cmd.exec();
    let code = match err.kind() {
        std::io::ErrorKind::NotFound => NOT_FOUND,
        _ => NOT_EXECUTABLE,
    };
    eprintln!(
        "error: cannot run {}: {}",
        Path::new(program).display(),
        match err.kind() {
            std::io::ErrorKind::NotFound => "command not found".to_owned(),
            std::io::ErrorKind::PermissionDenied =>
                "permission denied (not executable?)".to_owned(),
            _ => err.to_string(),
        }
    );
    ExitCode::from(code)
}

#[cfg(not(unix))]
fn run(_args: &ExecArgs, _prepared: Prepared) -> ExitCode {
    eprintln!(
        "error: telbase exec needs exec(2) to hand signals and the exit status straight to the command, and this platform has none; run it on Linux or macOS"
    );
    ExitCode::from(FAILED)
}

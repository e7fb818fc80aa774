//! `telbase secrets …`: keys, sealing and revealing from the command line. Files, terminals
//! and environment variables are wired to the pure functions in `crate::secrets` here, and
//! only here; errors become `anyhow` messages at this edge.
//!
//! Plaintext never comes from argv (it would sit in shell history and `ps`): `seal` reads
//! standard input and refuses a terminal, since hiding typed input would need a terminal
//! crate Telbase does not carry.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, anyhow, bail};
use secrecy::ExposeSecret as _;

use crate::config::edit;
use crate::secrets;

/// The recipients file read by `seal` when no recipient is named: beside `./telbase.yaml`.
pub const DEFAULT_RECIPIENTS_FILE: &str = ".telbase-recipients";

#[derive(Debug, clap::Subcommand)]
pub enum SecretsCommand {
    /// Generate a new X25519 identity in age-keygen's format (public key also on stderr).
    Keygen(KeygenArgs),
    /// Print the public recipient (age1…) of each identity in an identity file.
    Recipient(IdentityArgs),
    /// Seal standard input to every recipient; prints armored age text for `sealed: |`.
    Seal(SealArgs),
    /// Open an age file (armored, binary or single-line) and print its plaintext.
    Reveal(RevealArgs),
    /// Seal every `sealed:` value in a config again to the current recipients, in place.
    Reseal(ResealArgs),
}

#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Write the identity to this new file (mode 0600; an existing file is never
    /// overwritten). Without it the identity goes to standard output, as with age-keygen.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct IdentityArgs {
    /// The identity file. Default: $TELBASE_IDENTITY (the identity itself), then
    /// $TELBASE_IDENTITY_FILE (its path).
    #[arg(short, long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct SealArgs {
    /// A recipient (age1…); may be repeated.
    #[arg(short, long = "recipient", value_name = "RECIPIENT")]
    pub recipients: Vec<String>,
    /// A file of recipients, one age1… per line, `#` comments. Default when no recipient is
    /// named: .telbase-recipients beside ./telbase.yaml.
    #[arg(short = 'R', long, value_name = "FILE")]
    pub recipients_file: Option<PathBuf>,
    /// Write the sealed value into this config file at --key (keeping every other byte of
    /// it) instead of printing it. The default recipients file is then the one beside it.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub into: Option<PathBuf>,
    /// The key path for --into, dot-separated, e.g. apps.web.env.API_KEY (`\.` is a dot
    /// inside a name, `\\` a backslash).
    #[arg(long, value_name = "PATH", requires = "into")]
    pub key: Option<String>,
    /// Print the single-line form (`age:` + base64 of the binary age file) for places
    /// where a value cannot span lines: Dockerfile ENV, .env files, PaaS settings pages.
    #[arg(long, conflicts_with = "into")]
    pub single_line: bool,
}

#[derive(Debug, clap::Args)]
pub struct ResealArgs {
    /// The config whose sealed values are resealed in place.
    #[arg(short, long, value_name = "FILE", default_value = "telbase.yaml")]
    pub config: PathBuf,
    /// The identity that opens the current values. Default: $TELBASE_IDENTITY_FILE.
    #[arg(short, long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// The current recipients, one age1… per line. Default: .telbase-recipients beside
    /// the config.
    #[arg(short = 'R', long, value_name = "FILE")]
    pub recipients_file: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct RevealArgs {
    /// The identity file. Default: $TELBASE_IDENTITY (the identity itself), then
    /// $TELBASE_IDENTITY_FILE (its path).
    #[arg(short, long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// The age file; `-` or nothing reads standard input.
    pub file: Option<PathBuf>,
}

pub fn secrets_cmd(cmd: &SecretsCommand) -> ExitCode {
    let result = match cmd {
        SecretsCommand::Keygen(a) => keygen(a),
        SecretsCommand::Recipient(a) => recipient(a),
        SecretsCommand::Seal(a) => seal(a),
        SecretsCommand::Reveal(a) => reveal(a),
        SecretsCommand::Reseal(a) => reseal(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn keygen(args: &KeygenArgs) -> anyhow::Result<()> {
    let id = secrets::generate();
    let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let text = secrets::identity_file(&id, &created);
    let public = id.to_public();
    match &args.output {
        Some(path) => {
            write_new_private(path, text.expose_secret().as_bytes())?;
            eprintln!("Public key: {public}");
        }
        None => {
            // As age-keygen: the identity goes to stdout even on a terminal (the user asked
            // for it), and the public key is echoed on stderr only when stdout is not a
            // terminal, where it would otherwise be invisible.
            let mut out = std::io::stdout().lock();
            if !out.is_terminal() {
                eprintln!("Public key: {public}");
            }
            out.write_all(text.expose_secret().as_bytes())?;
            out.flush()?;
        }
    }
    Ok(())
}

/// Creates `path` with mode 0600 holding `bytes`, atomically and never over an existing
/// file: the bytes go to a private temporary file in the same directory, which is then
/// hard-linked into place (a link fails if the name exists, so a racing writer cannot be
/// clobbered, and a reader never sees a half-written key).
fn write_new_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    if path.symlink_metadata().is_ok() {
        bail!(
            "{} already exists; refusing to overwrite it",
            path.display()
        );
    }
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
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            bail!(
                "{} already exists; refusing to overwrite it",
                path.display()
            )
        }
        Err(e) => Err(e).with_context(|| format!("cannot write {}", path.display())),
    }
}

/// The identities from `--identity`, `TELBASE_IDENTITY` or `TELBASE_IDENTITY_FILE`, in that
/// order (`secrets::identity`).
fn identities(flag: Option<&PathBuf>) -> anyhow::Result<Vec<age::x25519::Identity>> {
    match secrets::identity::load(flag.map(PathBuf::as_path))? {
        Some(loaded) => Ok(loaded.identities),
        None => bail!("no identity: {}", secrets::identity::HOW_TO_NAME_ONE),
    }
}

fn recipient(args: &IdentityArgs) -> anyhow::Result<()> {
    let mut out = String::new();
    for id in identities(args.identity.as_ref())? {
        out.push_str(&id.to_public().to_string());
        out.push('\n');
    }
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(())
}

fn seal(args: &SealArgs) -> anyhow::Result<()> {
    let mut recipients = Vec::new();
    for r in &args.recipients {
        recipients.push(secrets::parse_recipient(r, "--recipient")?);
    }
    let config = args.into.as_deref().unwrap_or(Path::new("telbase.yaml"));
    let file = match &args.recipients_file {
        Some(p) => Some(p.clone()),
        None if args.recipients.is_empty() => Some(default_recipients_file(config)),
        None => None,
    };
    if let Some(path) = file {
        recipients.extend(recipients_from(&path)?);
    }
    // One stanza per person even when a key is both named and listed in the file.
    let mut seen = std::collections::BTreeSet::new();
    recipients.retain(|r| seen.insert(r.to_string()));
    if recipients.is_empty() {
        return Err(secrets::RecipientError::None.into());
    }
    // With --into, everything about the file is checked before the value is read, so a
    // mistyped key path costs no secret typed or piped in vain.
    let target = match (&args.into, &args.key) {
        (Some(file), Some(key)) => {
            let segments = edit::parse_key_path(key)?;
            let src = read_config(file)?;
            let probe = probe_armor()?;
            edit::Document::parse(&src)
                .and_then(|doc| doc.set_sealed(&segments, &probe))
                .map_err(|e| anyhow!("{}: {e}", file.display()))?;
            Some((file, segments, src))
        }
        _ => None,
    };
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        bail!(
            "the value to seal is read from standard input, which is a terminal; pipe it in instead, e.g. `printf %s \"$VALUE\" | telbase secrets seal` or `telbase secrets seal < file` (never on the command line: argv is visible to other processes)"
        );
    }
    let plain = secrets::read_plaintext(stdin.lock()).context("standard input")?;
    let mut sealed = Vec::new();
    if args.single_line {
        let line = secrets::inject::seal_single_line(&plain, &recipients)?;
        sealed.extend_from_slice(line.as_bytes());
        sealed.push(b'\n');
        std::io::stdout().write_all(&sealed)?;
        return Ok(());
    }
    secrets::seal(&plain, &recipients, &mut sealed)?;
    drop(plain);
    let Some((file, segments, src)) = target else {
        std::io::stdout().write_all(&sealed)?;
        return Ok(());
    };
    let armored = String::from_utf8(sealed).context("the armored value is not text")?;
    let text = edit::Document::parse(&src)
        .and_then(|doc| doc.set_sealed(&segments, &armored))
        .map_err(|e| anyhow!("{}: {e}", file.display()))?;
    edit::write_atomic(file, &src, &text)?;
    eprintln!(
        "sealed {} into {} for {} recipient{}",
        edit::display_path(&segments),
        file.display(),
        recipients.len(),
        if recipients.len() == 1 { "" } else { "s" }
    );
    Ok(())
}

/// A real sealed value (an empty plaintext to a throwaway key) standing in for the real one,
/// to try an edit before the value is read: the config loader checks that sealed values are
/// age files, so a fake would be refused.
fn probe_armor() -> anyhow::Result<String> {
    let mut out = Vec::new();
    secrets::seal(b"", &[secrets::generate().to_public()], &mut out)?;
    Ok(String::from_utf8(out)?)
}

fn read_config(path: &Path) -> anyhow::Result<String> {
    let bytes = crate::config::read(path)
        .map_err(|d| anyhow!("cannot read {}: {}", path.display(), d.message))?;
    String::from_utf8(bytes).map_err(|_| anyhow!("{} is not UTF-8 text", path.display()))
}

/// The recipients listed in a recipients file.
fn recipients_from(path: &Path) -> anyhow::Result<Vec<age::x25519::Recipient>> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the recipients file {} (name recipients with --recipient, or list them one age1… per line in {DEFAULT_RECIPIENTS_FILE} beside telbase.yaml)",
            path.display()
        )
    })?;
    Ok(secrets::parse_recipients(
        &text,
        &path.display().to_string(),
    )?)
}

/// `.telbase-recipients` beside the config file.
fn default_recipients_file(config: &Path) -> PathBuf {
    config
        .parent()
        .unwrap_or(Path::new(""))
        .join(DEFAULT_RECIPIENTS_FILE)
}

fn reseal(args: &ResealArgs) -> anyhow::Result<()> {
    let ids = identities(args.identity.as_ref())?;
    let path = args
        .recipients_file
        .clone()
        .unwrap_or_else(|| default_recipients_file(&args.config));
    let mut recipients = recipients_from(&path)?;
    let mut seen = std::collections::BTreeSet::new();
    recipients.retain(|r| seen.insert(r.to_string()));
    if recipients.is_empty() {
        bail!(
            "{} lists no recipients; resealing to nobody would lock everyone out",
            path.display()
        );
    }
    let src = read_config(&args.config)?;
    let done = secrets::reseal::reseal(&src, &ids, &recipients)
        .map_err(|e| anyhow!("{}: {e}; nothing was written", args.config.display()))?;
    if done.count > 0 {
        edit::write_atomic(&args.config, &src, &done.text)?;
    }
    println!(
        "{} value{} resealed to {} recipient{} in {}",
        done.count,
        if done.count == 1 { "" } else { "s" },
        recipients.len(),
        if recipients.len() == 1 { "" } else { "s" },
        args.config.display()
    );
    Ok(())
}

fn reveal(args: &RevealArgs) -> anyhow::Result<()> {
    let ids = identities(args.identity.as_ref())?;
    let (sealed, what) = match &args.file {
        Some(p) if p.as_os_str() != "-" => {
            let f =
                std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?;
            (secrets::read_sealed(f), p.display().to_string())
        }
        _ => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                bail!(
                    "no file given and standard input is a terminal: name an age file or pipe one in"
                );
            }
            (
                secrets::read_sealed(stdin.lock()),
                "standard input".to_owned(),
            )
        }
    };
    let plain = sealed
        .map_err(secrets::inject::ValueError::from)
        .and_then(|s| secrets::inject::open_any(&s, &ids))
        .map_err(|e| anyhow!("cannot reveal {what}: {e}"))?;
    let mut out = std::io::stdout().lock();
    out.write_all(&plain)?;
    out.flush()?;
    Ok(())
}

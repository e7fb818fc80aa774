//! `telbase.yaml`: reading, validating and lowering the file users commit.
//!
//! The pipeline is `read` (size cap, UTF-8) → `yaml::parse` (safe YAML, positions) →
//! `structural::check` (the generated JSON Schema) → `semantic::check` (references, provider
//! rules) → `lower::lower` (the `DesiredState` of one environment). Every stage reports
//! diagnostics with file positions and none of them panics on any input; a run reports every
//! problem it can find, not just the first. Nothing here knows a provider's wire format.

pub mod diag;
pub mod edit;
pub mod env_file;
pub mod file;
pub mod lower;
pub mod semantic;
pub mod structural;
pub mod units;
pub mod yaml;

use std::io::Read as _;
use std::path::Path;

pub use diag::{Code, Diagnostic, Pos, Severity};
pub use file::ConfigFile;

use crate::model::{DesiredState, Environment};

/// The outcome of checking one file.
#[derive(Debug)]
pub struct Checked {
    /// Every problem found, sorted by position; may include warnings on a valid file.
    pub diagnostics: Vec<Diagnostic>,
    /// The typed file, present only when there is no error.
    pub config: Option<ConfigFile>,
}

impl Checked {
    pub fn is_valid(&self) -> bool {
        self.config.is_some()
    }

    fn failed(d: Diagnostic) -> Self {
        Checked {
            diagnostics: vec![d],
            config: None,
        }
    }
}

/// Check raw bytes (a file's or stdin's content); `env_file` paths are relative to the
/// current directory.
pub fn check_bytes(bytes: &[u8]) -> Checked {
    check_bytes_in(bytes, Path::new("."))
}

/// Check raw bytes of a config that lives in `dir` (where its `env_file`s are).
pub fn check_bytes_in(bytes: &[u8], dir: &Path) -> Checked {
    match yaml::decode(bytes) {
        Ok(text) => check_str_in(text, dir),
        Err(d) => Checked::failed(d),
    }
}

/// Check a config given as text; `env_file` paths are relative to the current directory.
pub fn check_str(src: &str) -> Checked {
    check_str_in(src, Path::new("."))
}

/// The directory a config file's relative paths start from: its parent, or `.`.
pub fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Check a config given as text whose `env_file`s are relative to `dir`. Env files are read
/// for their structure only (names and ciphertext), so this needs no key.
pub fn check_str_in(src: &str, dir: &Path) -> Checked {
    if src.len() as u64 > yaml::MAX_CONFIG_BYTES {
        return Checked::failed(too_large(src.len() as u64));
    }
    let root = match yaml::parse(src) {
        Ok(root) => root,
        Err(d) => return Checked::failed(d),
    };
    let structural = structural::check(&root);
    let mut diagnostics = structural.diagnostics;
    let mut config = None;
    if let Some(sound) = structural.sound {
        match serde_json::from_value::<ConfigFile>(sound) {
            Ok(mut cfg) => {
                let defined = semantic::Defined::from_tree(&root);
                diagnostics.extend(semantic::check(&root, &cfg, &defined));
                let (files, problems) = env_file::load(&root, &cfg, dir);
                diagnostics.extend(problems);
                cfg.env_files = files;
                config = Some(cfg);
            }
            Err(e) => {
                // The schema and the types disagree: a Telbase bug, reported as such rather
                // than hidden.
                diagnostics.push(Diagnostic::new(
                    Code::E0103,
                    root.pos,
                    format!("internal: the file passed the schema but not the types ({e})"),
                ));
            }
        }
    }
    diag::normalize(&mut diagnostics);
    if diagnostics.iter().any(Diagnostic::is_error) {
        config = None;
    }
    Checked {
        diagnostics,
        config,
    }
}

fn too_large(len: u64) -> Diagnostic {
    Diagnostic::new(
        Code::E0002,
        Pos::START,
        format!(
            "the file is {len} bytes; telbase.yaml may be at most {} bytes",
            yaml::MAX_CONFIG_BYTES
        ),
    )
    .with_hint("is this the right file? a real project's telbase.yaml is a few kilobytes")
}

/// Read a config file with the size cap applied before any byte is read into memory.
pub fn read(path: &Path) -> Result<Vec<u8>, Diagnostic> {
    let unreadable = |e: std::io::Error| {
        Diagnostic::new(
            Code::E0001,
            Pos::START,
            format!("cannot read the file: {e}"),
        )
    };
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let meta = file.metadata().map_err(unreadable)?;
    if meta.is_dir() {
        return Err(Diagnostic::new(
            Code::E0001,
            Pos::START,
            "this is a directory; name the telbase.yaml inside it",
        ));
    }
    if meta.len() > yaml::MAX_CONFIG_BYTES {
        return Err(too_large(meta.len()));
    }
    read_capped(file)
}

/// Read from any reader (stdin, a pipe) with the same cap: stop one byte past it.
pub fn read_capped(reader: impl std::io::Read) -> Result<Vec<u8>, Diagnostic> {
    let mut bytes = Vec::new();
    reader
        .take(yaml::MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| {
            Diagnostic::new(
                Code::E0001,
                Pos::START,
                format!("cannot read the input: {e}"),
            )
        })?;
    if bytes.len() as u64 > yaml::MAX_CONFIG_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Check and lower in one go: what the reconciler calls.
pub fn load_str(
    src: &str,
    env: Environment,
) -> Result<(DesiredState, Vec<Diagnostic>), Vec<Diagnostic>> {
    load_str_in(src, env, Path::new("."))
}

/// [`load_str`] for a config whose `env_file`s are relative to `dir`.
pub fn load_str_in(
    src: &str,
    env: Environment,
    dir: &Path,
) -> Result<(DesiredState, Vec<Diagnostic>), Vec<Diagnostic>> {
    let checked = check_str_in(src, dir);
    match checked.config {
        Some(cfg) => Ok((lower::lower(&cfg, env), checked.diagnostics)),
        None => Err(checked.diagnostics),
    }
}

//! `apps.<name>.env_file`: reading the SOPS files a config names, without any key.
//!
//! Validation and planning must work where the age identity is absent (a pull request's CI),
//! so this reads only each file's structure: that it exists, is a SOPS file with age
//! recipients, and is a flat map (or Kubernetes Secret) of valid, unreserved names not also
//! defined under `env:`; and, per variable, the `ENC[…]` text its fingerprint is made from.
//! Problems are diagnostics on the `env_file` line of telbase.yaml (E0215) or on the
//! clashing `env:` key (E0211). Values are opened only at apply time (`apply::Opener`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::diag::{Code, Diagnostic, quote, sanitize};
use super::file::ConfigFile;
use super::semantic::reserved_by_platform;
use super::units;
use super::yaml::Node;
use crate::secrets::sops::{EnvKey, SopsError, SopsFile};

/// One env file as read for a config: where it is and the variables it defines.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedEnvFile {
    /// The file, `dir` joined with the path written in telbase.yaml.
    pub path: PathBuf,
    /// Its variables in file order, with their stored ciphertext (no plaintext).
    pub keys: Vec<EnvKey>,
}

/// The env files of a config, by the path as written under `env_file`.
pub type EnvFiles = BTreeMap<String, LoadedEnvFile>;

fn hint(e: &SopsError) -> Option<&'static str> {
    match e {
        SopsError::Io { .. } => Some("the path is relative to telbase.yaml; commit the file"),
        SopsError::NotSops => {
            Some("encrypt it with `sops --encrypt --age <recipient> --in-place FILE`")
        }
        SopsError::NoAgeRecipients { .. } => {
            Some("add an age recipient: `sops updatekeys` with an age key in .sops.yaml")
        }
        SopsError::NotEnvShape { .. } | SopsError::BadEnvName { .. } => Some(
            "each top-level key becomes an environment variable: write NAME: value pairs, or a Kubernetes Secret's stringData/data",
        ),
        _ => None,
    }
}

/// Reads every app's env file relative to `dir`. Apps whose `env_file` path is already
/// rejected (E0212) are skipped; each file is read once however many apps use it.
pub fn load(root: &Node, cfg: &ConfigFile, dir: &Path) -> (EnvFiles, Vec<Diagnostic>) {
    let mut files = EnvFiles::new();
    let mut failed: BTreeMap<String, SopsError> = BTreeMap::new();
    let mut out = Vec::new();
    for (name, app) in &cfg.apps {
        let Some(written) = &app.env_file else {
            continue;
        };
        if units::repo_path(written).is_err() {
            continue;
        }
        let at = ["apps", name.as_str(), "env_file"];
        if !files.contains_key(written) && !failed.contains_key(written) {
            let path = dir.join(written);
            match SopsFile::read(&path).and_then(|f| f.env_keys()) {
                Ok(keys) => {
                    files.insert(written.clone(), LoadedEnvFile { path, keys });
                }
                Err(e) => {
                    failed.insert(written.clone(), e);
                }
            }
        }
        if let Some(e) = failed.get(written) {
            let mut d = Diagnostic::new(
                Code::E0215,
                root.pos_of(&at),
                sanitize(&format!("env_file {}: {e}", quote(written))),
            );
            if let Some(h) = hint(e) {
                d = d.with_hint(h);
            }
            out.push(d);
            continue;
        }
        let Some(loaded) = files.get(written) else {
            continue;
        };
        let container = app.runtime.is_some();
        for key in &loaded.keys {
            if app.env.contains_key(&key.name) {
                out.push(
                    Diagnostic::new(
                        Code::E0211,
                        root.key_pos_of(&["apps", name, "env", &key.name]),
                        format!(
                            "`{}` is defined twice: under `env:` and in env_file {}",
                            key.name,
                            quote(written)
                        ),
                    )
                    .with_hint("remove one of the two"),
                );
            }
            // As for `env:` secrets: on Cloud Run each becomes a Secret Manager secret named
            // `<service>-<VAR>`, and secret IDs are at most 255 characters.
            let secret_id_len =
                cfg.project.len() + name.len() + key.name.len() + 2 + units::PREVIEW_SUFFIX_MAX;
            if container && secret_id_len > 255 {
                out.push(Diagnostic::new(
                    Code::E0207,
                    root.pos_of(&at),
                    format!(
                        "env_file {}: the Secret Manager secret for `{}` would have a {secret_id_len}-character ID; the limit is 255",
                        quote(written),
                        key.name
                    ),
                ));
            }
            if reserved_by_platform(&key.name, container) {
                out.push(Diagnostic::new(
                    Code::E0211,
                    root.pos_of(&at),
                    format!(
                        "env_file {} defines `{}`, which {} sets itself",
                        quote(written),
                        key.name,
                        if container { "Cloud Run" } else { "Vercel" }
                    ),
                ));
            }
        }
    }
    (files, out)
}

//! `telbase serve --config FILE` (or `TELBASE_SERVE_CONFIG`): the server's optional
//! configuration file, holding the same variables as its environment.
//!
//! The file is `NAME=value` lines, as systemd's `EnvironmentFile=` and `docker --env-file`
//! read them: blank lines and `#` comments skipped, an optional `export ` prefix, values
//! optionally in single or double quotes (taken literally: no expansion). A variable already
//! in the environment keeps its value, so one setting can be overridden per run. Every part
//! of the server (the store, the App, provider credentials, the identity, the master key)
//! reads its settings from the environment, and the process environment cannot be changed
//! safely once threads may run (`set_var` is `unsafe` in Rust 2024), so the file is applied
//! by replacing this process, before anything else starts, with the same command and the
//! completed environment: one `exec(2)`, and then nothing in Telbase needs to know the file
//! exists. Errors name the file and line, never a value.

use std::ffi::OsString;
use std::path::Path;

/// Set in the replaced process, so the file is applied once.
const APPLIED: &str = "TELBASE_SERVE_CONFIG_APPLIED";
/// The variable naming the file.
pub const ENV_CONFIG: &str = "TELBASE_SERVE_CONFIG";

/// Why the file could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("{path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path}:{line}: {why}")]
    Line {
        path: String,
        line: usize,
        why: &'static str,
    },
    #[error("cannot restart with the settings of {path}: {error}")]
    Exec { path: String, error: std::io::Error },
}

/// The variables of a configuration file, in file order (a later line wins).
pub fn parse(path: &Path, text: &str) -> Result<Vec<(String, String)>, ConfigFileError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line_err = |why| ConfigFileError::Line {
            path: path.display().to_string(),
            line: n + 1,
            why,
        };
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((name, value)) = line.split_once('=') else {
            return Err(line_err("not NAME=value"));
        };
        let name = name.trim_end();
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_uppercase() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            return Err(line_err(
                "a variable name is capital letters, digits and `_`",
            ));
        }
        let value = value.trim();
        let value = match value.as_bytes().first() {
            Some(q @ (b'"' | b'\'')) => {
                if value.len() < 2 || value.as_bytes()[value.len() - 1] != *q {
                    return Err(line_err("a quoted value must end with the same quote"));
                }
                &value[1..value.len() - 1]
            }
            _ => value,
        };
        if value.contains('\0') {
            return Err(line_err("a value cannot hold a NUL byte"));
        }
        out.retain(|(k, _)| k != name);
        out.push((name.to_owned(), value.to_owned()));
    }
    Ok(out)
}

/// The file `serve` was given (`--config FILE`, `--config=FILE`, or `TELBASE_SERVE_CONFIG`),
/// read from the raw arguments because it must be applied before they are parsed.
fn named_file(args: &[OsString]) -> Option<OsString> {
    let mut it = args.iter().skip(2);
    while let Some(a) = it.next() {
        if a == "--" {
            break;
        }
        if a == "--config" {
            return it.next().cloned();
        }
        if let Some(v) = a.to_str().and_then(|s| s.strip_prefix("--config=")) {
            return Some(v.into());
        }
    }
    std::env::var_os(ENV_CONFIG).filter(|v| !v.is_empty())
}

/// For `telbase serve`: if a configuration file is named and not yet applied, replace this
/// process with the same command and the file's variables added to the environment. Returns
/// only if there is nothing to apply, or with the reason it could not be.
#[cfg(unix)]
pub fn apply_if_named() -> Result<(), ConfigFileError> {
    use std::os::unix::process::CommandExt as _;
    let args: Vec<OsString> = std::env::args_os().collect();
    if std::env::var_os(APPLIED).is_some() {
        return Ok(());
    }
    let Some(file) = named_file(&args) else {
        return Ok(());
    };
    let path = Path::new(&file);
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| ConfigFileError::Read {
        path: shown.clone(),
        error,
    })?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            eprintln!(
                "warning: {shown} can be read by other users (mode {:o}); if it holds secrets, run `chmod 600 {shown}`",
                meta.permissions().mode() & 0o777
            );
        }
    }
    let vars = parse(path, &text)?;
    let exe = std::env::current_exe().map_err(|error| ConfigFileError::Exec {
        path: shown.clone(),
        error,
    })?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(&args[1..]).env(APPLIED, "1");
    for (k, v) in vars {
        if std::env::var_os(&k).is_none() {
            cmd.env(k, v);
        }
    }
    // Only returns on failure.
    let error = cmd.exec();
    Err(ConfigFileError::Exec { path: shown, error })
}

#[cfg(not(unix))]
pub fn apply_if_named() -> Result<(), ConfigFileError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Vec<(String, String)>, String> {
        parse(Path::new("serve.env"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn env_file_lines_read_as_systemd_and_docker_read_them() {
        let got = p("# the server\n\nTELBASE_LISTEN=0.0.0.0:8080\nexport GITHUB_APP_ID = 42\nA='x y # not a comment'\nB=\"q\"\nEMPTY=\nA=later\n").unwrap();
        assert_eq!(
            got,
            [
                ("TELBASE_LISTEN".into(), "0.0.0.0:8080".into()),
                ("GITHUB_APP_ID".into(), "42".into()),
                ("B".into(), "q".into()),
                ("EMPTY".into(), String::new()),
                ("A".into(), "later".into()),
            ]
        );
    }

    #[test]
    fn bad_lines_name_the_line_and_never_the_value() {
        for (text, line) in [
            ("OK=1\nGITHUB_WEBHOOK_SECRET hunter2\n", 2),
            ("lower=hunter2\n", 1),
            ("X=\"hunter2\n", 1),
            ("=hunter2\n", 1),
        ] {
            let e = p(text).unwrap_err();
            assert!(e.starts_with(&format!("serve.env:{line}: ")), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn the_file_is_found_in_the_arguments_before_they_are_parsed() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            named_file(&args(&["telbase", "serve", "--config", "a.env"])),
            Some("a.env".into())
        );
        assert_eq!(
            named_file(&args(&[
                "telbase",
                "serve",
                "--workers",
                "4",
                "--config=b.env"
            ])),
            Some("b.env".into())
        );
    }
}

//! The `--watch` flags of `telbase serve` (GitOps without GitHub): which git repositories to
//! poll and how often, and the built-in emulator the server uses when it watches
//! repositories and no provider credentials are set, as `telbase demo` does, so
//! `telbase serve --watch examples/quickstart` runs on a laptop with no accounts.

use std::time::Duration;

use anyhow::Context as _;
use secrecy::SecretString;

use crate::serve::watch::{self, WatchConfig};

#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// Poll these git repositories (local paths, or https/http/git/file URLs) and reconcile
    /// production at each new commit of their production branch. A URL with credentials
    /// (https://USER:TOKEN@host/…) belongs in TELBASE_WATCH, not on the command line, where
    /// other processes can read it. Without GITHUB_APP_ID the server runs without GitHub.
    #[arg(
        long,
        env = "TELBASE_WATCH",
        value_delimiter = ',',
        num_args = 1..,
        value_name = "PATH_OR_URL",
        hide_env_values = true
    )]
    pub watch: Vec<String>,
    /// How often each watched repository is polled (`90s`, `5m`, `1h`, or seconds).
    #[arg(long, env = "TELBASE_WATCH_INTERVAL", default_value = "60s", value_parser = parse_interval)]
    pub interval: Duration,
    /// The branch the config is first read from (default: the repository's default branch);
    /// the file's `environments.production.branch` then says which branch is production.
    #[arg(long)]
    pub branch: Option<String>,
    /// The config file's path inside the watched repositories (default: telbase.yaml in
    /// the watched directory).
    #[arg(long)]
    pub config_path: Option<String>,
}

/// `90s`, `5m`, `1h`, `250ms`, or a number of seconds.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 60s, 5m or 1h"))?;
    let too_long = || format!("`{s}` is too long");
    let d = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(too_long)?),
        "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(too_long)?),
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (ms, s, m or h)")),
    };
    if d < Duration::from_millis(100) {
        return Err(format!("`{s}` is too short (at least 100ms)"));
    }
    Ok(d)
}

/// The watch settings, or `None` when nothing is watched.
pub fn watch_config(args: &WatchArgs) -> anyhow::Result<Option<WatchConfig>> {
    let sources: Vec<SecretString> = args
        .watch
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| SecretString::from(s.to_owned()))
        .collect();
    if sources.is_empty() {
        return Ok(None);
    }
    let cache_dir = watch::default_cache_dir(|k| std::env::var(k).ok())
        .context("no place for the git cache: set TELBASE_CACHE_DIR, XDG_CACHE_HOME or HOME")?;
    Ok(Some(WatchConfig {
        sources,
        interval: args.interval,
        branch: args.branch.clone(),
        config_path: args.config_path.clone(),
        cache_dir,
    }))
}

/// Whether the server should run without GitHub: it watches repositories and no App is
/// configured.
pub fn without_github(watch: &Option<WatchConfig>) -> bool {
    watch.is_some() && std::env::var("GITHUB_APP_ID").map_or(true, |v| v.is_empty())
}

/// No provider credentials and no emulator: a watching server then starts the built-in
/// emulator, as `telbase demo` does.
fn no_provider_credentials(c: &crate::providers::Credentials) -> bool {
    let google = ["GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT"]
        .iter()
        .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()));
    c.emulator.is_none()
        && c.vercel_token.is_none()
        && c.neon_api_key.is_none()
        && c.turso_api_token.is_none()
        && c.cloudflare_api_token.is_none()
        && c.google_project.is_none()
        && !google
}

/// The built-in emulator of a watching server, and the throwaway store that goes with it.
pub struct BuiltIn {
    _emulator: crate::emulator::Handle,
    store: Option<std::path::PathBuf>,
}

impl Drop for BuiltIn {
    fn drop(&mut self) {
        if let Some(db) = &self.store {
            for suffix in ["", "-wal", "-shm"] {
                let mut p = db.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
            if let Some(dir) = db.parent() {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

/// Start the in-process emulator for a watching server without provider credentials, and
/// point every provider at it; the guard must live as long as the server. Unless
/// TELBASE_DATABASE_URL names one, the store is a temporary file too: the emulator starts
/// empty each time, and a store that remembered commits reconciled into an earlier
/// emulator would not reconcile them again.
pub async fn emulator_if_needed(
    config: &mut crate::serve::ServeConfig,
) -> anyhow::Result<Option<BuiltIn>> {
    // Only a server without GitHub: one that also serves the App reconciles real
    // repositories, which must never land in an emulator because some credential (say,
    // Google's from a metadata server) is not in the environment.
    if config.watch.is_none()
        || !config.webhook_secrets.is_empty()
        || !no_provider_credentials(&config.credentials)
    {
        return Ok(None);
    }
    let handle = crate::emulator::start(
        "127.0.0.1:0".parse().expect("a literal socket address"),
        crate::emulator::Config::default(),
    )
    .await
    .context("cannot start the built-in emulator")?;
    let store = if std::env::var("TELBASE_DATABASE_URL").map_or(true, |v| v.is_empty()) {
        // A fresh directory of our own (mode 0700, refused if the name exists), so nobody
        // else can plant or read the throwaway store.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir =
            std::env::temp_dir().join(format!("telbase-watch-{}-{nanos:09}", std::process::id()));
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Some(dir.join("telbase.db"))
    } else {
        None
    };
    if let Some(db) = &store {
        config.store = crate::store::Location::Sqlite(db.clone());
    }
    tracing::info!(
        emulator = %handle.url(),
        store = ?store,
        "no provider credentials: serving against the built-in emulator (TELBASE_EMULATOR or provider tokens override)"
    );
    config.credentials.emulator = Some(handle.url());
    Ok(Some(BuiltIn {
        _emulator: handle,
        store,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_read_as_people_write_them() {
        assert_eq!(parse_interval("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_interval("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_interval("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_interval("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_interval("30"), Ok(Duration::from_secs(30)));
        assert!(parse_interval("1d").is_err());
        assert!(parse_interval("soon").is_err());
        assert!(parse_interval("0s").is_err());
        // Overflow is an error, not a panic or a wrapped value.
        assert!(parse_interval("18446744073709551615h").is_err());
        assert!(parse_interval("307445734561825861m").is_err());
    }
}

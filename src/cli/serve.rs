//! `telbase serve`: reads the server's settings from flags and environment variables, starts
//! `serve::start`, and stops gracefully on Ctrl-C or SIGTERM (deliveries stop being
//! accepted; reconciles in hand finish). Secrets (the App key, webhook secrets) are read
//! from `…_FILE` paths or the environment, never from flags, which other processes can see.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, anyhow};
use secrecy::SecretString;

use crate::serve::{self, ServeConfig};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// A file of settings: the same variables as the environment, one `NAME=value` a line
    /// (systemd's EnvironmentFile format). Variables already in the environment win.
    #[arg(long, env = "TELBASE_SERVE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on. Serves HTTPS with --tls-cert and --tls-key; otherwise put a
    /// TLS proxy in front (see docs/serve.md).
    #[arg(long, env = "TELBASE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Reconciles run at once by this process.
    #[arg(long, env = "TELBASE_WORKERS", default_value_t = 2)]
    pub workers: usize,
    /// The server's public URL, linked from commit statuses.
    #[arg(long, env = "TELBASE_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Rotate the stored-secrets master key (TELBASE_MASTER_KEY_FILE) when it is older than
    /// this many days; 0 turns scheduled rotation off.
    #[arg(long, env = "TELBASE_KEY_ROTATION_DAYS", default_value_t = 90)]
    pub key_rotation_days: u64,
    /// Seconds a claimed reconcile stays this server's without renewal (renewed every third
    /// of it while running); after a crash, the wait before the job is taken over.
    #[arg(long, env = "TELBASE_LEASE_SECONDS", default_value_t = 300)]
    pub lease_seconds: u64,
    /// Seconds between checks of each repository's production branch against the commit last
    /// reconciled (catches webhooks GitHub failed to deliver); 0 turns polling off.
    #[arg(long, env = "TELBASE_POLL_SECONDS", default_value_t = 300)]
    pub poll_seconds: u64,
    /// Seconds between preview sweeps (previews whose pull request closed, idle past their
    /// TTL, or orphaned at a provider; run records past retention); 0 turns it off.
    #[arg(long, env = "TELBASE_SWEEP_SECONDS", default_value_t = 900)]
    pub sweep_seconds: u64,
    /// GitHub's API (GitHub Enterprise Server: https://HOST/api/v3).
    #[arg(long, env = "GITHUB_API_URL", default_value = "https://api.github.com")]
    pub github_api_url: String,
    /// Git repositories polled without GitHub (`--watch`, `--interval`, …).
    #[command(flatten)]
    pub watch: super::watch::WatchArgs,
    /// PEM certificate chain to serve HTTPS with (with --tls-key); reloaded when it changes.
    #[arg(long, env = "TELBASE_TLS_CERT_FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "TELBASE_TLS_KEY_FILE")]
    pub tls_key: Option<PathBuf>,
    /// Seconds between uptime probes of every deployed URL; 0 turns probing off.
    #[arg(long, env = "TELBASE_UPTIME_SECONDS", default_value_t = 60)]
    pub uptime_seconds: u64,
    /// Where to POST signed notifications (app down, recovered, reconcile failed); the
    /// signing secret comes from TELBASE_NOTIFY_SECRET_FILE or TELBASE_NOTIFY_SECRET.
    /// (Its value is never shown in help: chat webhook URLs hold their token.)
    #[arg(long, env = "TELBASE_NOTIFY_URL", hide_env_values = true)]
    pub notify_url: Option<String>,
    /// Serve `GET /runs?repo=owner/name`, the list of a repository's runs. Off by default:
    /// it hands run ids (the only key to a run page) to anyone who can reach the server.
    #[arg(long, env = "TELBASE_RUN_LIST")]
    pub run_list: bool,
    /// CIDR blocks of the proxies in front of the server (comma-separated): only from them
    /// is `X-Forwarded-For` believed for counting failures and rate limits (docs/abuse.md).
    #[arg(long, env = "TELBASE_TRUSTED_PROXIES", value_name = "CIDRS")]
    pub trusted_proxies: Option<String>,
    /// Serve the control plane's `/api/v1` (teams, tokens, sessions, `telbase login`); its
    /// key comes from TELBASE_CONTROL_KEY_FILE or TELBASE_CONTROL_KEY (docs/control-plane.md).
    #[arg(long, env = "TELBASE_CONTROL_PLANE")]
    pub control_plane: bool,
}

/// TLS, uptime and notification settings.
fn edge(args: &ServeArgs) -> anyhow::Result<serve::EdgeConfig> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(serve::tls::TlsConfig {
            cert: cert.clone(),
            key: key.clone(),
            reload_every: std::time::Duration::from_secs(5),
        }),
        (None, None) => None,
        _ => {
            return Err(anyhow!(
                "give both --tls-cert and --tls-key (TELBASE_TLS_CERT_FILE and TELBASE_TLS_KEY_FILE), or neither to serve plain HTTP behind a TLS proxy"
            ));
        }
    };
    let notify = match args.notify_url.as_deref().filter(|u| !u.is_empty()) {
        Some(url) => {
            let secret = secret_var("TELBASE_NOTIFY_SECRET")?.ok_or_else(|| {
                anyhow!(
                    "TELBASE_NOTIFY_URL is set: set TELBASE_NOTIFY_SECRET_FILE or TELBASE_NOTIFY_SECRET too, so receivers can verify notifications"
                )
            })?;
            Some(serve::notify::NotifyConfig::new(url.to_owned(), secret))
        }
        None => None,
    };
    let audit = crate::audit::AuditLog::from_env()?;
    // Every control-plane action must be recorded (the must-write rule), so without the
    // audit key the API would refuse everything: say so at the start instead.
    if args.control_plane && !audit.has_key() {
        anyhow::bail!(
            "--control-plane needs the security log's key: set TELBASE_AUDIT_KEY_FILE (make one with `telbase audit keygen --out FILE`); see docs/audit.md"
        );
    }
    Ok(serve::EdgeConfig {
        tls,
        uptime: serve::uptime::UptimeConfig {
            every: (args.uptime_seconds > 0)
                .then(|| std::time::Duration::from_secs(args.uptime_seconds)),
            ..serve::uptime::UptimeConfig::default()
        },
        notify,
        run_list: args.run_list,
        abuse: abuse_numbers(
            crate::abuse::AbuseConfig::from_vars(|k| {
                (k == "TELBASE_TRUSTED_PROXIES")
                    .then(|| args.trusted_proxies.clone())
                    .flatten()
            })
            .context("--trusted-proxies (TELBASE_TRUSTED_PROXIES)")?,
            |k| std::env::var(k).ok(),
        )?,
        audit: Some(audit),
        control: if args.control_plane {
            Some(serve::ControlConfig {
                key: crate::control::secrets::ServerKey::from_vars(|k| std::env::var(k).ok())?,
            })
        } else {
            None
        },
        signin: if args.control_plane {
            crate::web::oidc::Providers::from_vars(|k| std::env::var(k).ok())?
        } else {
            crate::web::oidc::Providers::default()
        },
        ..serve::EdgeConfig::default()
    })
}

/// The limits operators may change (docs/abuse.md): TELBASE_ABUSE_ADDRESS_FAILURES (failures
/// per address before a lock) and TELBASE_ABUSE_TOKEN_RATE / TELBASE_ABUSE_ADDRESS_RATE
/// (`PER_MINUTE/BURST`). Unset: the defaults. A value that is not a positive number is an
/// error at the start, never a silently dropped limit.
pub fn abuse_numbers(
    mut config: crate::abuse::AbuseConfig,
    var: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<crate::abuse::AbuseConfig> {
    let positive = |name: &str, v: &str| -> anyhow::Result<u32> {
        v.trim()
            .parse::<u32>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| anyhow!("{name}: `{v}` is not a positive number"))
    };
    if let Some(v) = var("TELBASE_ABUSE_ADDRESS_FAILURES").filter(|v| !v.is_empty()) {
        config.policies.api_address.threshold = positive("TELBASE_ABUSE_ADDRESS_FAILURES", &v)?;
    }
    for (name, rate) in [
        ("TELBASE_ABUSE_TOKEN_RATE", &mut config.limits.token),
        ("TELBASE_ABUSE_ADDRESS_RATE", &mut config.limits.address),
    ] {
        if let Some(v) = var(name).filter(|v| !v.is_empty()) {
            let (per_minute, burst) = v
                .split_once('/')
                .ok_or_else(|| anyhow!("{name}: `{v}` is not PER_MINUTE/BURST"))?;
            rate.per_minute = positive(name, per_minute)?;
            rate.burst = positive(name, burst)?;
        }
    }
    Ok(config)
}

/// A secret from `NAME_FILE` (a path) or `NAME` (the value); the file wins.
fn secret_var(name: &str) -> anyhow::Result<Option<SecretString>> {
    let file = format!("{name}_FILE");
    if let Some(path) = std::env::var_os(&file).filter(|v| !v.is_empty()) {
        let text =
            zeroize::Zeroizing::new(std::fs::read_to_string(&path).with_context(|| {
                format!("cannot read {file} {}", PathBuf::from(&path).display())
            })?);
        return Ok(Some(SecretString::from(text.trim_end().to_owned())));
    }
    Ok(std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .map(SecretString::from))
}

fn config(args: &ServeArgs) -> anyhow::Result<ServeConfig> {
    let watch = super::watch::watch_config(&args.watch)?;
    // Watching git repositories without an App: no GitHub settings, no webhook secret (so
    // every webhook is refused) and no GitHub polling.
    let without_github = super::watch::without_github(&watch);
    let (app_id, private_key, webhook_secrets) = if without_github {
        (0, SecretString::from(String::new()), Vec::new())
    } else {
        let app_id: u64 = std::env::var("GITHUB_APP_ID")
            .context("set GITHUB_APP_ID (the App's numeric id, on its settings page)")?
            .parse()
            .context("GITHUB_APP_ID must be a number")?;
        let private_key = secret_var("GITHUB_APP_PRIVATE_KEY")?.ok_or_else(|| {
            anyhow!(
                "set GITHUB_APP_PRIVATE_KEY_FILE (the .pem GitHub gave you) or GITHUB_APP_PRIVATE_KEY"
            )
        })?;
        let mut webhook_secrets: Vec<SecretString> =
            secret_var("GITHUB_WEBHOOK_SECRET")?.into_iter().collect();
        // During a rotation GitHub may still sign with the previous secret.
        webhook_secrets.extend(secret_var("GITHUB_WEBHOOK_SECRET_PREVIOUS")?);
        (app_id, private_key, webhook_secrets)
    };
    Ok(ServeConfig {
        listen: args.listen,
        store: crate::store::Location::from_env()?,
        app: crate::github::app::AppConfig {
            app_id,
            private_key,
            base_url: args.github_api_url.clone(),
        },
        webhook_secrets,
        credentials: crate::providers::Credentials::from_env(),
        http: crate::providers::http::HttpConfig::default(),
        opener: super::reconcile::age_only_opener()?,
        workers: args.workers,
        public_url: args.public_url.clone(),
        lease: std::time::Duration::from_secs(args.lease_seconds.max(3)),
        poll: (args.poll_seconds > 0 && !without_github)
            .then(|| std::time::Duration::from_secs(args.poll_seconds)),
        // Cron schedules have minute resolution: looking twice a minute is enough.
        drift_tick: Some(std::time::Duration::from_secs(30)),
        sweep: (args.sweep_seconds > 0).then(|| std::time::Duration::from_secs(args.sweep_seconds)),
        key_rotation: std::env::var_os("TELBASE_MASTER_KEY_FILE")
            .filter(|p| !p.is_empty() && args.key_rotation_days > 0)
            .map(|p| serve::KeyRotation {
                keyring: PathBuf::from(p),
                every: std::time::Duration::from_secs(args.key_rotation_days * 86_400),
                check: std::time::Duration::from_secs(3600),
            }),
        watch,
    })
}

pub fn serve_cmd(args: &ServeArgs) -> ExitCode {
    match serve_inner(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn serve_inner(args: &ServeArgs) -> anyhow::Result<()> {
    // The TLS pair first: its mistake is the one a user fixes on the same command line.
    let edge = edge(args)?;
    let mut config = config(args)?;
    let https = edge.tls.is_some();
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async move {
        let _emulator = super::watch::emulator_if_needed(&mut config).await?;
        let running = serve::start_with(config, edge).await?;
        // Through the log, so a collector reading JSON lines gets these as JSON too.
        tracing::info!(address = %running.addr, https, "telbase serve listening");
        shutdown_signal().await;
        tracing::info!("shutting down: finishing reconciles in progress");
        running.stop().await;
        Ok::<_, anyhow::Error>(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod abuse_number_tests {
    use super::abuse_numbers;
    use crate::abuse::AbuseConfig;

    #[test]
    fn operators_may_change_the_numbers_and_bad_ones_stop_the_start() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let c = abuse_numbers(
            AbuseConfig::default(),
            vars(&[
                ("TELBASE_ABUSE_ADDRESS_FAILURES", "50"),
                ("TELBASE_ABUSE_TOKEN_RATE", "1200/200"),
            ]),
        )
        .unwrap();
        assert_eq!(c.policies.api_address.threshold, 50);
        assert_eq!(
            (c.limits.token.per_minute, c.limits.token.burst),
            (1200, 200)
        );
        assert_eq!(c.limits.address, AbuseConfig::default().limits.address);
        for bad in [
            &[("TELBASE_ABUSE_ADDRESS_FAILURES", "0")][..],
            &[("TELBASE_ABUSE_TOKEN_RATE", "600")][..],
            &[("TELBASE_ABUSE_ADDRESS_RATE", "x/3")][..],
            &[("TELBASE_ABUSE_ADDRESS_RATE", "60/-1")][..],
        ] {
            assert!(
                abuse_numbers(AbuseConfig::default(), vars(bad)).is_err(),
                "{bad:?}"
            );
        }
    }
}

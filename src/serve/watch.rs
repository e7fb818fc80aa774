//! `telbase serve --watch PATH_OR_URL…`: GitOps without GitHub. This module owns watching
//! git repositories: each source is polled every interval; a new commit of its
//! production branch is queued as an [`Intent::Watched`] job on the same durable queue the
//! webhooks use, and the worker reads the config at exactly that commit from the
//! repository's object database (no checkout, no working tree) through [`read_config`].
//!
//! A local path is read in place. A URL is fetched incrementally into a bare repository per
//! URL under the cache directory (`TELBASE_CACHE_DIR`), named by a hash of the URL with its
//! credentials stripped: http, https and git:// through the `git` command, shallow (depth
//! 1), isolated from the machine's git configuration and killed at a deadline (see
//! [`Fetcher`] for why not libgit2's transports); `file://` through libgit2's local
//! transport, which cannot fetch shallow and copies only missing objects. The object
//! database is always read with libgit2. Credentials in a URL reach git as an HTTP header
//! through its environment, never as part of the URL or its arguments, so they appear in no
//! log, error, job, store row or path.
//!
//! Which branch is production: the file's `environments.production.branch`, read at the tip
//! of `--branch` (else the repository's default branch: a remote's advertised HEAD, a local
//! repository's HEAD). A source that cannot be read is logged and tried again at the next
//! interval. Each commit is queued once per production state (the delivery id names the
//! commit and the commit production ran when it was seen), so an invalid file fails once
//! and is not retried every interval, while going back to an older commit still reconciles.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::github::app::StatusState;
use crate::github::webhook::Intent;

use super::queue::StoreQueue;
use super::worker::JobError;
use super::{Inbox as _, IncomingDelivery, Recorded};

/// The installation id under which watched repositories are kept in the store's
/// `repositories` table (GitHub's installation ids start at 1). The GitHub polling fallback
/// and drift schedule skip these rows; this module schedules their drift checks.
pub const WATCH_INSTALLATION: u64 = 0;

/// Largest config file read from git (as through GitHub's contents API).
const MAX_FILE_BYTES: usize = 4 * 1024 * 1024;

const DEFAULT_CONFIG: &str = "telbase.yaml";

/// A watched repository as a job names it: enough for the worker to read the config at any
/// commit without knowing how the repository is watched. Never holds credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitSource {
    /// How logs, jobs and the store name it: the repository's absolute path, or its URL
    /// without credentials.
    pub name: String,
    /// The repository whose objects are read: the watched one itself, or the cache's bare
    /// copy of a URL.
    pub git_dir: String,
    /// The config file's path inside the repository.
    pub config_path: String,
    /// `owner/name` when the repository lives on GitHub: Vercel deploys from there; other
    /// hosts get settings and pinned images only, as `telbase reconcile` does.
    pub github: Option<String>,
}

/// What `telbase serve --watch` was asked to watch.
pub struct WatchConfig {
    /// Paths or URLs as given (a URL may carry `user:password@`, hence secret).
    pub sources: Vec<SecretString>,
    pub interval: Duration,
    /// Where the file is first read (else the default branch).
    pub branch: Option<String>,
    /// The config file inside the repository (else `telbase.yaml` in the watched directory).
    pub config_path: Option<String>,
    /// Bare copies of URL sources.
    pub cache_dir: PathBuf,
}

impl std::fmt::Debug for WatchConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchConfig")
            .field("sources", &self.sources.len())
            .field("interval", &self.interval)
            .field("branch", &self.branch)
            .field("config_path", &self.config_path)
            .field("cache_dir", &self.cache_dir)
            .finish()
    }
}

/// The cache directory: `TELBASE_CACHE_DIR`, else `$XDG_CACHE_HOME/telbase/git`, else
/// `$HOME/.cache/telbase/git`.
pub fn default_cache_dir(var: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let nonempty = |name: &str| var(name).filter(|v| !v.is_empty());
    if let Some(d) = nonempty("TELBASE_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = nonempty("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("telbase/git"));
    }
    nonempty("HOME").map(|h| PathBuf::from(h).join(".cache/telbase/git"))
}

/// Why a source cannot be watched (at startup) or read (in a round).
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("{spec}: {why}")]
    Source { spec: String, why: String },
    #[error("{name}: {what}: {error}")]
    Git {
        name: String,
        what: String,
        error: String,
    },
}

fn git_err(name: &str, what: impl Into<String>) -> impl FnOnce(git2::Error) -> WatchError + '_ {
    let what = what.into();
    move |e| WatchError::Git {
        name: name.to_owned(),
        what,
        error: e.message().to_owned(),
    }
}

/// Where a source's commits come from.
enum Origin {
    Local,
    Remote {
        /// Without credentials.
        url: String,
        user: Option<String>,
        password: Option<SecretString>,
        shallow: bool,
    },
}

/// One watched repository.
pub struct Watched {
    pub source: GitSource,
    origin: Origin,
}

impl std::fmt::Debug for Watched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Read one `--watch` argument: a URL (`https://`, `http://`, `git://`, `file://`) or a
/// local repository (bare or not; a directory inside a working tree watches the config
/// there).
pub fn parse_source(
    spec: &SecretString,
    config_path: Option<&str>,
    cache_dir: &Path,
) -> Result<Watched, WatchError> {
    let raw = spec.expose_secret();
    if raw.contains("://") {
        return parse_url(raw, config_path, cache_dir);
    }
    // `user@host:path` is git's scp-like ssh spelling.
    if raw.contains('@') && raw.contains(':') && !Path::new(raw).exists() {
        return Err(WatchError::Source {
            spec: "an ssh source".into(),
            why: "ssh is not supported (Telbase holds no ssh keys); use an https URL with a token"
                .into(),
        });
    }
    parse_local(raw, config_path)
}

fn parse_url(
    raw: &str,
    config_path: Option<&str>,
    cache_dir: &Path,
) -> Result<Watched, WatchError> {
    let mut url = reqwest::Url::parse(raw).map_err(|e| WatchError::Source {
        // The URL itself may hold a password: not repeated.
        spec: "a URL source".into(),
        why: format!("not a URL: {e}"),
    })?;
    let user = (!url.username().is_empty()).then(|| percent_decode(url.username()));
    let password = url
        .password()
        .map(|p| SecretString::from(percent_decode(p)));
    let _ = url.set_username("");
    let _ = url.set_password(None);
    if url.query().is_some() || url.fragment().is_some() {
        // A token in the query would be kept in the source's name (logs, jobs, run pages).
        url.set_query(None);
        url.set_fragment(None);
        return Err(WatchError::Source {
            spec: url.to_string(),
            why: "a git URL with a query or fragment is not supported; give credentials as https://USER:TOKEN@HOST/…".into(),
        });
    }
    // Credentials in the clear only where they cannot leave the machine (as with the
    // PostgreSQL store's TLS rule).
    let loopback = url.host_str().is_some_and(|h| {
        h.eq_ignore_ascii_case("localhost")
            || h.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|a| a.is_loopback())
    });
    if url.scheme() == "http" && (user.is_some() || password.is_some()) && !loopback {
        return Err(WatchError::Source {
            spec: url.to_string(),
            why: "credentials over http:// would travel in the clear; use https".into(),
        });
    }
    let name = url.to_string();
    let shallow = match url.scheme() {
        "https" | "http" | "git" => true,
        // libgit2's local transport refuses shallow fetches; it copies only missing objects.
        "file" => false,
        "ssh" => {
            return Err(WatchError::Source {
                spec: name,
                why: "ssh is not supported (Telbase holds no ssh keys); use an https URL with a token".into(),
            });
        }
        other => {
            return Err(WatchError::Source {
                spec: name,
                why: format!("unsupported scheme `{other}` (https, http, git or file)"),
            });
        }
    };
    let hash = sha2::Sha256::digest(name.as_bytes());
    let key: String = hash[..16].iter().map(|b| format!("{b:02x}")).collect();
    let git_dir = cache_dir.join(format!("{key}.git"));
    Ok(Watched {
        source: GitSource {
            github: crate::cli::reconcile::github_repo(&name),
            name: name.clone(),
            git_dir: git_dir.to_string_lossy().into_owned(),
            config_path: config_path.unwrap_or(DEFAULT_CONFIG).to_owned(),
        },
        origin: Origin::Remote {
            url: name,
            user,
            password,
            shallow,
        },
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(Ok(b)) = s.get(i + 1..i + 3).map(|h| u8::from_str_radix(h, 16))
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_local(raw: &str, config_path: Option<&str>) -> Result<Watched, WatchError> {
    let given = std::fs::canonicalize(raw).map_err(|e| WatchError::Source {
        spec: raw.to_owned(),
        why: e.to_string(),
    })?;
    let repo = git2::Repository::discover(&given).map_err(|e| WatchError::Source {
        spec: raw.to_owned(),
        why: format!("not in a git repository: {}", e.message()),
    })?;
    let root = repo.workdir().unwrap_or_else(|| repo.path()).to_path_buf();
    let root = std::fs::canonicalize(&root).unwrap_or(root);
    let config_path = match config_path {
        Some(p) => p.to_owned(),
        // A directory inside the working tree: the config there.
        None => match given.strip_prefix(&root) {
            Ok(rel) if !rel.as_os_str().is_empty() => {
                format!("{}/{DEFAULT_CONFIG}", rel.to_string_lossy())
            }
            _ => DEFAULT_CONFIG.to_owned(),
        },
    };
    let github = repo
        .find_remote("origin")
        .ok()
        .and_then(|r| r.url().ok().and_then(crate::cli::reconcile::github_repo));
    let name = root.to_string_lossy().trim_end_matches('/').to_owned();
    Ok(Watched {
        source: GitSource {
            name: name.clone(),
            git_dir: name,
            config_path,
            github,
        },
        origin: Origin::Local,
    })
}

/// What one look at a source found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The production branch (from the file) and its tip.
    pub branch: String,
    pub sha: String,
    /// Objects downloaded in this round (0 for a local repository).
    pub received_objects: usize,
}

/// Look at a source once: fetch a URL source into its cache, find the production branch
/// and its tip. Blocking.
pub fn look(w: &Watched, branch: Option<&str>) -> Result<Head, WatchError> {
    let name = w.source.name.as_str();
    match &w.origin {
        Origin::Local => {
            let repo = git2::Repository::open(&w.source.git_dir)
                .map_err(git_err(name, "cannot open the repository"))?;
            let candidate = match branch {
                Some(b) => b.to_owned(),
                None => {
                    let head = repo
                        .find_reference("HEAD")
                        .map_err(git_err(name, "cannot read HEAD"))?;
                    head.symbolic_target()
                        .ok()
                        .flatten()
                        .and_then(|t| t.strip_prefix("refs/heads/"))
                        .map(str::to_owned)
                        .ok_or_else(|| WatchError::Git {
                            name: name.to_owned(),
                            what: "HEAD names no branch".into(),
                            error: "pass --branch".into(),
                        })?
                }
            };
            let (branch, sha) = production_tip(&repo, &w.source, &candidate, |_| Ok(()))?;
            Ok(Head {
                branch,
                sha,
                received_objects: 0,
            })
        }
        Origin::Remote {
            url,
            user,
            password,
            shallow,
        } => {
            let dir = Path::new(&w.source.git_dir);
            if git2::Repository::open_bare(dir).is_err() {
                if let Some(parent) = dir.parent() {
                    create_private_dir(parent).map_err(|e| WatchError::Git {
                        name: name.to_owned(),
                        what: "cannot create the cache directory".into(),
                        error: e.to_string(),
                    })?;
                }
                git2::Repository::init_bare(dir)
                    .map_err(git_err(name, "cannot create the cache repository"))?;
            }
            let fetcher = Fetcher {
                git_dir: dir,
                name,
                url,
                user: user.as_deref(),
                password: password.as_ref(),
                shallow: *shallow,
                local: url.starts_with("file://"),
            };
            let candidate = match branch {
                Some(b) => b.to_owned(),
                None => fetcher.default_branch()?,
            };
            let mut received = fetcher.fetch(&candidate)?;
            let repo = git2::Repository::open_bare(dir)
                .map_err(git_err(name, "cannot open the cache repository"))?;
            let (branch, sha) = production_tip(&repo, &w.source, &candidate, |b| {
                received += fetcher.fetch(b)?;
                Ok(())
            })?;
            Ok(Head {
                branch,
                sha,
                received_objects: received,
            })
        }
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        b.mode(0o700);
    }
    b.create(dir)
}

/// The production branch named by the file at `candidate`'s tip, and that branch's tip
/// (`fetch` brings it first when it is another branch).
fn production_tip(
    repo: &git2::Repository,
    source: &GitSource,
    candidate: &str,
    fetch: impl FnOnce(&str) -> Result<(), WatchError>,
) -> Result<(String, String), WatchError> {
    let name = source.name.as_str();
    let tip = |b: &str| {
        repo.find_reference(&format!("refs/heads/{b}"))
            .and_then(|r| r.peel_to_commit())
            .map(|c| c.id())
            .map_err(|e| WatchError::Git {
                name: name.to_owned(),
                what: format!("branch `{b}`"),
                error: e.message().to_owned(),
            })
    };
    let first = tip(candidate)?;
    // An unreadable or invalid file: its own branch is reconciled, and the job reports why
    // the file does not validate.
    let production = read_blob(repo, first, &source.config_path)
        .ok()
        .flatten()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|t| {
            crate::config::load_str(&t, crate::model::Environment::Production)
                .ok()
                .map(|(d, _)| d.reconcile.production_branch)
        });
    match production {
        Some(p) if p != candidate => {
            fetch(&p)?;
            Ok((p.clone(), tip(&p)?.to_string()))
        }
        _ => Ok((candidate.to_owned(), first.to_string())),
    }
}

/// A file at a commit; `None` when the commit has no such file.
/// The longest one fetch may take before it is cancelled (and tried again next interval).
const FETCH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(300);

fn read_blob(
    repo: &git2::Repository,
    commit: git2::Oid,
    path: &str,
) -> Result<Option<Vec<u8>>, git2::Error> {
    let tree = repo.find_commit(commit)?.tree()?;
    let entry = match tree.get_path(Path::new(path)) {
        Ok(e) => e,
        Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if entry.kind() != Some(git2::ObjectType::Blob) {
        return Ok(None);
    }
    // The size from the object's header first: a hostile repository's huge blob is never
    // read into memory.
    let (size, _) = repo.odb()?.read_header(entry.id())?;
    if size > MAX_FILE_BYTES {
        return Err(git2::Error::from_str(&format!(
            "{path} is larger than {MAX_FILE_BYTES} bytes"
        )));
    }
    let Ok(blob) = entry.to_object(repo)?.into_blob() else {
        return Ok(None);
    };
    Ok(Some(blob.content().to_vec()))
}

/// Fetches into a cache repository over the network through the `git` command, as Argo CD
/// does, rather than through libgit2's transports: libgit2's HTTPS links the system OpenSSL
/// into every Telbase process, and loading it costs `telbase exec` (which starts every
/// process of a deployment) about as much again as opening fifty sealed values; and
/// libgit2's socket timeouts are set through `unsafe` calls, which this crate forbids,
/// while a child process can simply be killed at the deadline. `file://` sources stay on
/// libgit2, which needs no TLS for them.
///
/// The child is isolated from the machine's git configuration (no system or global config,
/// no credential helpers, no prompts, only the URL's own transport, no redirects), so what
/// runs is exactly what this function says. The URL's credentials go to it as an HTTP
/// `Authorization` header through `GIT_CONFIG_*` variables: never in its arguments (which
/// other users can read in `/proc`), in the URL it prints in errors, or in the cache
/// repository's config.
struct Fetcher<'a> {
    git_dir: &'a Path,
    name: &'a str,
    url: &'a str,
    user: Option<&'a str>,
    password: Option<&'a SecretString>,
    shallow: bool,
    /// `file://`: libgit2's local transport (no network, no TLS).
    local: bool,
}

/// If a transfer runs slower than this many bytes a second for `LOW_SPEED_SECONDS`, git gives
/// up (a stalled connection fails in a minute rather than at the deadline).
const LOW_SPEED_BYTES: &str = "1000";
const LOW_SPEED_SECONDS: &str = "60";

/// The only variables of the server's environment a git child sees (see `Fetcher::git`).
const PASSED_TO_GIT: &[&str] = &[
    "PATH",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

/// The most of git's error output kept for an error message.
const MAX_GIT_STDERR: usize = 16 * 1024;

impl Fetcher<'_> {
    /// `git` with the isolation described on [`Fetcher`].
    fn git(&self) -> std::process::Command {
        let mut c = std::process::Command::new("git");
        let scheme = self.url.split("://").next().unwrap_or_default();
        // Nothing of the server's own environment reaches git but how to find programs,
        // proxies and CA certificates: not its secrets, and none of the GIT_* variables
        // that could turn TLS checks off (GIT_SSL_NO_VERIFY), rewrite the URL to another
        // host with the header (GIT_CONFIG_PARAMETERS: url.*.insteadOf), run a command
        // (GIT_PROXY_COMMAND) or trace the header to standard error (GIT_TRACE_CURL). No
        // HOME either, so even a git older than 2.32 (which ignores GIT_CONFIG_GLOBAL)
        // reads no ~/.gitconfig.
        c.env_clear();
        for var in PASSED_TO_GIT {
            if let Some(v) = std::env::var_os(var) {
                c.env(var, v);
            }
        }
        c.env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("LC_ALL", "C")
            .arg(format!("--git-dir={}", self.git_dir.display()))
            .args(["-c", "credential.helper="])
            .args(["-c", "protocol.allow=never"])
            .args(["-c", &format!("protocol.{scheme}.allow=always")])
            // Never to another host: the Authorization header would go with it.
            .args(["-c", "http.followRedirects=false"])
            .args(["-c", &format!("http.lowSpeedLimit={LOW_SPEED_BYTES}")])
            .args(["-c", &format!("http.lowSpeedTime={LOW_SPEED_SECONDS}")])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        // Its own process group, so a cancelled fetch takes git's helpers with it.
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut c, 0);
        let basic = match (self.user, self.password) {
            (Some(u), Some(p)) => Some(format!("{u}:{}", p.expose_secret())),
            // A token alone (`https://TOKEN@host/…`), as GitHub and GitLab accept it.
            (Some(u), None) => Some(format!("{u}:")),
            _ => None,
        };
        if let Some(basic) = basic {
            use base64::Engine as _;
            let header = zeroize::Zeroizing::new(format!(
                "Authorization: Basic {}",
                base64::engine::general_purpose::STANDARD.encode(basic.as_bytes())
            ));
            drop(zeroize::Zeroizing::new(basic));
            c.env("GIT_CONFIG_COUNT", "1")
                .env("GIT_CONFIG_KEY_0", "http.extraHeader")
                .env("GIT_CONFIG_VALUE_0", header.as_str());
        }
        c
    }

    /// Run git until it ends or the deadline passes (then it is killed); its standard
    /// output on success, its last error lines otherwise.
    fn run(
        &self,
        mut cmd: std::process::Command,
        what: &str,
    ) -> Result<(Vec<u8>, Vec<u8>), WatchError> {
        let fail = |error: String| WatchError::Git {
            name: self.name.to_owned(),
            what: what.to_owned(),
            error,
        };
        let mut child = cmd.spawn().map_err(|e| {
            fail(if e.kind() == std::io::ErrorKind::NotFound {
                "the `git` command is needed for http, https and git:// sources; install git".into()
            } else {
                format!("cannot run git: {e}")
            })
        })?;
        // Both pipes are drained on their own threads, so a chatty child never blocks on a
        // full pipe while we wait for it.
        let drain = |r: Option<Box<dyn std::io::Read + Send>>, cap: usize| {
            std::thread::spawn(move || {
                let mut kept = Vec::new();
                if let Some(mut r) = r {
                    let mut buf = [0u8; 8192];
                    while let Ok(n) = r.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        kept.extend_from_slice(&buf[..n]);
                        if kept.len() > cap {
                            kept.drain(..kept.len() - cap);
                        }
                    }
                }
                kept
            })
        };
        use std::io::Read as _;
        let out = drain(
            child
                .stdout
                .take()
                .map(|r| Box::new(r) as Box<dyn std::io::Read + Send>),
            4 * 1024 * 1024,
        );
        let err = drain(
            child
                .stderr
                .take()
                .map(|r| Box::new(r) as Box<dyn std::io::Read + Send>),
            MAX_GIT_STDERR,
        );
        let deadline = std::time::Instant::now() + FETCH_DEADLINE;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Ok(status),
                Ok(None) if std::time::Instant::now() >= deadline => {
                    break Err(format!(
                        "cancelled after {} s; tried again next interval",
                        FETCH_DEADLINE.as_secs()
                    ));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => break Err(format!("cannot wait for git: {e}")),
            }
        };
        let status = match status {
            Ok(s) => s,
            Err(why) => {
                // git's helpers (git-remote-https, index-pack) are in its process group
                // and hold the pipes open: the whole group goes, and the drain threads
                // are left to finish on their own rather than waited for.
                kill_group(&mut child);
                return Err(fail(why));
            }
        };
        let stdout = out.join().unwrap_or_default();
        let stderr = err.join().unwrap_or_default();
        match status {
            s if s.success() => Ok((stdout, stderr)),
            s => {
                let text = String::from_utf8_lossy(&stderr);
                // The last lines say why; progress lines (carriage returns) are noise.
                let why: Vec<&str> = text
                    .lines()
                    .filter_map(|l| l.rsplit('\r').next())
                    .map(str::trim)
                    .filter(|l| {
                        !l.is_empty() && !l.contains("objects:") && !l.starts_with("remote: Total")
                    })
                    .collect();
                let why = why[why.len().saturating_sub(3)..].join("; ");
                Err(fail(if why.is_empty() {
                    format!("git exited with {s}")
                } else {
                    why
                }))
            }
        }
    }

    /// The remote's advertised HEAD.
    fn default_branch(&self) -> Result<String, WatchError> {
        let head = if self.local {
            let repo = git2::Repository::open_bare(self.git_dir)
                .map_err(git_err(self.name, "cannot open the cache repository"))?;
            let mut remote = repo
                .remote_anonymous(self.url)
                .map_err(git_err(self.name, "bad remote"))?;
            remote
                .connect(git2::Direction::Fetch)
                .map_err(git_err(self.name, "cannot reach the repository"))?;
            let head = remote.default_branch().map_err(git_err(
                self.name,
                "the repository has no default branch; pass --branch",
            ))?;
            let _ = remote.disconnect();
            head.as_str().unwrap_or_default().to_owned()
        } else {
            let mut cmd = self.git();
            cmd.args(["ls-remote", "--symref", "--", self.url, "HEAD"]);
            let (out, _) = self.run(cmd, "cannot reach the repository")?;
            // `ref: refs/heads/main<TAB>HEAD`, then the commit line.
            String::from_utf8_lossy(&out)
                .lines()
                .find_map(|l| {
                    l.strip_prefix("ref: ")
                        .and_then(|r| r.split('\t').next())
                        .map(str::to_owned)
                })
                .ok_or_else(|| WatchError::Git {
                    name: self.name.to_owned(),
                    what: "the repository has no default branch; pass --branch".into(),
                    error: "the server advertised no HEAD".into(),
                })?
        };
        head.strip_prefix("refs/heads/")
            .map(str::to_owned)
            .ok_or_else(|| WatchError::Git {
                name: self.name.to_owned(),
                what: "the default branch".into(),
                error: format!("`{head}` is not a branch; pass --branch"),
            })
    }

    /// Fetch one branch; returns how many objects came.
    fn fetch(&self, branch: &str) -> Result<usize, WatchError> {
        if branch.starts_with('-')
            || !git2::Reference::is_valid_name(&format!("refs/heads/{branch}"))
        {
            return Err(WatchError::Git {
                name: self.name.to_owned(),
                what: format!("branch `{branch}`"),
                error: "not a valid branch name".into(),
            });
        }
        let refspec = format!("+refs/heads/{branch}:refs/heads/{branch}");
        if self.local {
            let repo = git2::Repository::open_bare(self.git_dir)
                .map_err(git_err(self.name, "cannot open the cache repository"))?;
            let mut remote = repo
                .remote_anonymous(self.url)
                .map_err(git_err(self.name, "bad remote"))?;
            let mut opts = git2::FetchOptions::new();
            opts.download_tags(git2::AutotagOption::None);
            remote
                .fetch(&[refspec], Some(&mut opts), None)
                .map_err(git_err(self.name, format!("cannot fetch `{branch}`")))?;
            return Ok(remote.stats().received_objects());
        }
        let mut cmd = self.git();
        cmd.args(["fetch", "--no-tags", "--no-write-fetch-head", "--progress"]);
        if self.shallow {
            cmd.arg("--depth=1");
        }
        cmd.args(["--", self.url, &refspec]);
        let (_, progress) = self.run(cmd, &format!("cannot fetch `{branch}`"))?;
        Ok(objects_received(&String::from_utf8_lossy(&progress)))
    }
}

/// Kill a git child and everything it started. std signals only the child itself, and
/// signalling a process group needs `libc::kill` (unsafe, which this crate forbids), so the
/// group (led by the child: `process_group(0)`) is killed with the `kill` command; the
/// child itself is killed and reaped either way.
fn kill_group(child: &mut std::process::Child) {
    #[cfg(unix)]
    {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", child.id())])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// How many objects a fetch brought, from git's progress on standard error: the server's
/// "remote: Total N (delta …)" (sent on the smart transports), or the local "Receiving
/// objects: 100% (N/N)" / "Unpacking objects: 100% (N/N)" (printed only for transfers
/// slow enough to need progress); nothing when there was nothing to fetch. Only a number
/// for logs and tests, so an unexpected spelling yields 0 rather than an error.
fn objects_received(progress: &str) -> usize {
    let number = |s: &str| {
        s.trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse::<usize>().ok())
    };
    progress
        .split(['\r', '\n'])
        .filter_map(|l| {
            if let Some((_, rest)) = l.split_once("remote: Total ") {
                return number(rest);
            }
            if !(l.contains("Receiving objects:") || l.contains("Unpacking objects:")) {
                return None;
            }
            number(l.rsplit_once('(')?.1.split_once('/')?.1)
        })
        .max()
        .unwrap_or(0)
}

/// The config file of a watched repository at exactly `sha` (the worker's read). `None`
/// when the commit has no such file.
pub async fn read_config(g: &GitSource, sha: &str) -> Result<Option<Vec<u8>>, JobError> {
    let (dir, path, sha) = (g.git_dir.clone(), g.config_path.clone(), sha.to_owned());
    let name = g.name.clone();
    tokio::task::spawn_blocking(move || {
        let repo = git2::Repository::open(&dir)
            .map_err(|e| JobError::Retry(format!("{name}: cannot open: {}", e.message())))?;
        let oid = git2::Oid::from_str(&sha)
            .map_err(|_| JobError::Fail(format!("`{sha}` is not a commit id")))?;
        if repo.find_commit(oid).is_err() {
            return Err(JobError::Fail(format!(
                "{name}: commit {sha} is not in the repository (history rewritten?)"
            )));
        }
        read_blob(&repo, oid, &path)
            .map_err(|e| JobError::Fail(format!("{name}: {path} at {sha}: {}", e.message())))
    })
    .await
    .map_err(|e| JobError::Retry(e.to_string()))?
}

/// What a GitHub job would put in a commit status, in the log instead.
pub fn log_outcome(g: &GitSource, sha: &str, context: &str, state: StatusState, text: &str) {
    let source = g.name.as_str();
    match state {
        StatusState::Pending => {
            tracing::info!(source, sha, check = context, "git watch: {text}")
        }
        StatusState::Success => {
            tracing::info!(source, sha, check = context, "git watch: success: {text}")
        }
        StatusState::Failure | StatusState::Error => {
            tracing::error!(source, sha, check = context, "git watch: failed: {text}")
        }
    }
}

/// Start one polling task per source. Sources are parsed first: a path that is not a
/// repository or an unsupported URL stops the server from starting.
pub fn spawn(
    config: &WatchConfig,
    queue: Arc<StoreQueue>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, WatchError> {
    let watched = config
        .sources
        .iter()
        .map(|s| parse_source(s, config.config_path.as_deref(), &config.cache_dir))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(watched
        .into_iter()
        .map(|w| {
            let (queue, mut stop) = (queue.clone(), stop.clone());
            let (interval, branch) = (config.interval, config.branch.clone());
            tokio::spawn(async move {
                let w = Arc::new(w);
                tracing::info!(
                    source = %w.source.name,
                    config = %w.source.config_path,
                    every = ?interval,
                    "watching a git repository"
                );
                loop {
                    round(&w, branch.as_deref(), &queue, interval).await;
                    tokio::select! {
                        _ = tokio::time::sleep(interval) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
            })
        })
        .collect())
}

/// One look at a source: queue its production head if production does not run it, and a
/// drift check when the file's schedule is due.
async fn round(w: &Arc<Watched>, branch: Option<&str>, queue: &Arc<StoreQueue>, every: Duration) {
    let looked = {
        let (w, branch) = (w.clone(), branch.map(str::to_owned));
        tokio::task::spawn_blocking(move || look(&w, branch.as_deref())).await
    };
    let head = match looked {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            tracing::error!(error = %e, next_try = ?every, "git watch: cannot read the repository");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "git watch: the polling task failed");
            return;
        }
    };
    tracing::debug!(source = %w.source.name, branch = %head.branch, sha = %head.sha, received = head.received_objects, "git watch: looked");
    let (q, w2) = (queue.clone(), w.clone());
    let queued =
        tokio::task::spawn_blocking(move || enqueue(&q, &w2.source, &head, chrono::Utc::now()))
            .await;
    match queued {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(source = %w.source.name, error = %e, "git watch: cannot queue")
        }
        Err(e) => tracing::error!(error = %e, "git watch: the queue task failed"),
    }
}

/// Queue what a look found (blocking): the head if it is not what production runs, and a
/// drift check when due.
pub fn enqueue(
    queue: &StoreQueue,
    source: &GitSource,
    head: &Head,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), String> {
    let row = queue
        .with(|s| s.production_repositories())?
        .into_iter()
        .find(|r| r.installation == WATCH_INSTALLATION && r.repo == source.name);
    let reconciled = row.as_ref().and_then(|r| r.reconciled.clone());
    if reconciled.as_deref() != Some(head.sha.as_str()) {
        // Once per commit and production state: an invalid commit fails once, not every
        // interval; returning to an older commit after a newer one ran is a new delivery.
        let id = format!(
            "watch:{}@{}:after:{}",
            source.name,
            head.sha,
            reconciled.as_deref().unwrap_or("none")
        );
        let delivery = IncomingDelivery {
            id,
            event: "watch".into(),
            intents: vec![Intent::Watched {
                source: source.clone(),
                branch: head.branch.clone(),
                sha: head.sha.clone(),
                drift: false,
            }],
            ignored: Vec::new(),
        };
        if let Recorded::New { .. } = queue.record(&delivery)? {
            tracing::info!(source = %source.name, branch = %head.branch, sha = %head.sha, "git watch: new commit; reconcile queued");
        }
        return Ok(());
    }
    let Some(row) = row else { return Ok(()) };
    let (Some(sha), Some(cron)) = (&row.reconciled, &row.drift_cron) else {
        return Ok(());
    };
    let Some(due) = drift_due(cron, row.drift_checked_at, now) else {
        return Ok(());
    };
    let intent = Intent::Watched {
        source: source.clone(),
        branch: row.branch.clone(),
        sha: sha.clone(),
        drift: true,
    };
    let (serial_repo, key) = intent.serial_key();
    let json = serde_json::to_string(&intent).map_err(|e| e.to_string())?;
    let id = format!("watch-drift:{}@{}:{}", source.name, sha, due.timestamp());
    queue.with(|s| {
        s.record_delivery(&id, "drift", "", &[(serial_repo, key, json)])?;
        s.drift_checked(&source.name, now.timestamp_millis())
    })
}

/// When the drift cron came due since it was last looked at, or `None` if it has not (the
/// same rule as `serve::drift_once`: one check however many times were missed).
pub fn drift_due(
    cron: &str,
    checked_at_ms: Option<i64>,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    use croner::parser::{CronParser, Seconds, Year};
    let cron = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(cron)
        .ok()?;
    let from = checked_at_ms
        .and_then(chrono::DateTime::from_timestamp_millis)
        .unwrap_or(now);
    let due = cron.find_next_occurrence(&from, false).ok()?;
    (due <= now).then_some(due)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_credentials_stay_out_of_the_name_and_the_cache_path() {
        let spec = SecretString::from("https://bot:s3cr%40t@git.example.com/team/app.git");
        let w = parse_source(&spec, None, Path::new("cache")).unwrap();
        assert_eq!(w.source.name, "https://git.example.com/team/app.git");
        assert!(!w.source.git_dir.contains("s3cr"));
        assert!(!w.source.git_dir.contains("bot"));
        assert!(!format!("{w:?}").contains("s3cr"));
        let Origin::Remote { user, password, .. } = &w.origin else {
            panic!("a URL is remote")
        };
        assert_eq!(user.as_deref(), Some("bot"));
        assert_eq!(password.as_ref().unwrap().expose_secret(), "s3cr@t");
        // The same repository with other credentials shares the cache.
        let other = parse_source(
            &SecretString::from("https://git.example.com/team/app.git"),
            None,
            Path::new("cache"),
        )
        .unwrap();
        assert_eq!(other.source.git_dir, w.source.git_dir);
    }

    #[test]
    fn tokens_in_queries_and_credentials_over_http_are_refused_without_echoing_them() {
        for s in [
            "https://git.example.com/team/app.git?private_token=s3cret",
            "https://git.example.com/team/app.git#s3cret",
            "http://bot:s3cret@git.example.com/team/app.git",
        ] {
            let e = parse_source(&SecretString::from(s), None, Path::new("c")).unwrap_err();
            assert!(!e.to_string().contains("s3cret"), "{e}");
        }
        // Without credentials, plain http stays possible (a server on a private network),
        // and with them on loopback, where they never leave the machine.
        assert!(
            parse_source(
                &SecretString::from("http://bot:pw@127.0.0.1:8080/team/app.git"),
                None,
                Path::new("c")
            )
            .is_ok()
        );
        assert!(
            parse_source(
                &SecretString::from("http://git.internal/team/app.git"),
                None,
                Path::new("c")
            )
            .is_ok()
        );
    }

    #[test]
    fn objects_received_reads_what_git_prints() {
        let small = "remote: Enumerating objects: 5, done.        \nremote: Counting objects:  20% (1/5)        \rremote: Counting objects: 100% (5/5), done.        \nremote: Total 3 (delta 1), reused 0 (delta 0), pack-reused 0 (from 0)        \nFrom git://127.0.0.1:1/app\n";
        assert_eq!(objects_received(small), 3);
        let big = "Receiving objects:  99% (290/292)\rremote: Total 292 (delta 21), reused 0 (delta 0)\nReceiving objects: 100% (292/292), 797.73 KiB | 9.97 MiB/s, done.\n";
        assert_eq!(objects_received(big), 292);
        assert_eq!(
            objects_received("Unpacking objects: 100% (7/7), 1.2 KiB | 1 MiB/s, done.\n"),
            7
        );
        assert_eq!(
            objects_received(""),
            0,
            "an up-to-date fetch prints nothing"
        );
        assert_eq!(
            objects_received("remote: Total x\nReceiving objects: (/)"),
            0
        );
    }

    #[test]
    fn ssh_and_unknown_schemes_are_refused_clearly() {
        for s in [
            "ssh://git@example.com/a/b.git",
            "git@example.com:a/b.git",
            "ftp://example.com/a",
        ] {
            let e = parse_source(&SecretString::from(s), None, Path::new("c")).unwrap_err();
            assert!(
                e.to_string().contains("not supported") || e.to_string().contains("unsupported"),
                "{e}"
            );
        }
    }

    #[test]
    fn github_urls_are_deployed_from_github() {
        let w = parse_source(
            &SecretString::from("https://x-access-token:t@github.com/acme/shop.git"),
            None,
            Path::new("c"),
        )
        .unwrap();
        assert_eq!(w.source.github.as_deref(), Some("acme/shop"));
    }

    #[test]
    fn drift_is_due_once_after_the_schedule_passes() {
        let t = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().to_utc();
        let checked = t("2026-01-01T10:00:30Z").timestamp_millis();
        assert_eq!(
            drift_due("*/15 * * * *", Some(checked), t("2026-01-01T10:10:00Z")),
            None
        );
        assert_eq!(
            drift_due("*/15 * * * *", Some(checked), t("2026-01-01T11:00:00Z")),
            Some(t("2026-01-01T10:15:00Z"))
        );
        assert_eq!(
            drift_due("not a cron", Some(checked), t("2026-01-01T11:00:00Z")),
            None
        );
    }
}

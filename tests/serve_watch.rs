//! `telbase serve --watch`: GitOps without GitHub. A git repository in a temporary directory
//! holds a telbase.yaml for the emulator; the server watches it (a local path, a `file://`
//! URL, a `git://` URL served by `git daemon`) and production follows its commits; an
//! invalid commit is a logged failure with no provider call, run once; URL sources are
//! fetched incrementally (shallow where the transport allows) into a cache named without
//! credentials; and the real binary, given nothing but `--watch`, runs against the built-in
//! emulator and never prints a URL's password.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use telbase::apply::NoIdentity;
use telbase::emulator::Config;
use telbase::providers::Credentials;
use telbase::serve::watch::{self, WatchConfig};
use telbase::serve::{self, ServeConfig};
use telbase::store::Location;

use common::emu;

const INTERVAL: Duration = Duration::from_millis(200);

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Telbase tests")
        .env("GIT_AUTHOR_EMAIL", "tests@telbase.dev")
        .env("GIT_COMMITTER_NAME", "Telbase tests")
        .env("GIT_COMMITTER_EMAIL", "tests@telbase.dev")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A repository on `main` whose origin is on GitHub (so Vercel deploys, as in production).
fn repo_with(dir: &Path, config: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    git(dir, &["init", "-q", "-b", "main"]);
    git(
        dir,
        &[
            "remote",
            "add",
            "origin",
            "https://github.com/telbase-tests/watched.git",
        ],
    );
    commit(dir, "telbase.yaml", config, "add telbase.yaml")
}

fn commit(dir: &Path, file: &str, text: &str, message: &str) -> String {
    let path = dir.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", message]);
    git(dir, &["rev-parse", "HEAD"])
}

fn config_with_site(site: &str) -> String {
    emu::quickstart("watched").replace("SITE: watched", &format!("SITE: {site}"))
}

fn server_config(emu: &telbase::emulator::Handle, dir: &Path, sources: Vec<String>) -> ServeConfig {
    ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        store: Location::Sqlite(dir.join("telbase.db")),
        // No GitHub at all: no App, no webhook secret.
        app: telbase::github::app::AppConfig {
            app_id: 0,
            private_key: SecretString::from(String::new()),
            base_url: format!("{}/github", emu.url()),
        },
        webhook_secrets: Vec::new(),
        credentials: Credentials {
            emulator: Some(emu.url()),
            ..Credentials::default()
        },
        http: emu::http_config(),
        opener: Arc::new(NoIdentity),
        workers: 2,
        public_url: None,
        key_rotation: None,
        lease: Duration::from_secs(60),
        poll: None,
        drift_tick: None,
        sweep: None,
        watch: Some(WatchConfig {
            sources: sources.into_iter().map(SecretString::from).collect(),
            interval: INTERVAL,
            branch: None,
            config_path: None,
            cache_dir: dir.join("cache"),
        }),
    }
}

/// Production runs `config` at `sha`: a plan of it against the emulator has no changes.
async fn converged(url: &str, config: &str, sha: &str) -> bool {
    let run = emu::run(config, url, sha, emu::http_config());
    matches!(run.plan().await, Ok((p, _)) if !p.has_changes())
}

async fn wait_converged(running: &serve::Running, url: &str, config: &str, sha: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !converged(url, config, sha).await {
        assert!(
            Instant::now() < deadline,
            "production did not converge to {sha}: {:#?}",
            jobs(running)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn jobs(running: &serve::Running) -> Vec<telbase::store::sqlite::JobRow> {
    running.queue.with(|s| s.jobs()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_repository_is_followed_commit_by_commit_and_an_invalid_file_fails_once() {
    let emu = emu::start(Config::default()).await;
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("app");
    let first = config_with_site("one");
    let sha1 = repo_with(&repo, &first);
    let running = serve::start(server_config(
        &emu,
        tmp.path(),
        vec![repo.to_string_lossy().into_owned()],
    ))
    .await
    .unwrap();

    wait_converged(&running, &emu.url(), &first, &sha1).await;
    assert!(
        emu.inventory().values().sum::<u64>() > 0,
        "the emulator holds the project: {:?}",
        emu.inventory()
    );

    // A new commit (a changed env var) converges within a few intervals.
    let second = config_with_site("two");
    let sha2 = commit(&repo, "telbase.yaml", &second, "SITE two");
    wait_converged(&running, &emu.url(), &second, &sha2).await;

    // An invalid file: a failed job naming the first error, no provider call, run once.
    let writes_before = emu.counters().writes;
    let sha3 = commit(
        &repo,
        "telbase.yaml",
        &second.replace("engine: postgres", "engine: oracle"),
        "an engine Telbase does not know",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let failed = loop {
        if let Some(j) = jobs(&running)
            .into_iter()
            .find(|j| j.delivery_id.contains(&format!("@{sha3}:")) && j.state == "failed")
        {
            break j;
        }
        assert!(Instant::now() < deadline, "the invalid commit did not fail");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let error = failed.error.unwrap_or_default();
    assert!(
        error.contains("telbase.yaml is invalid: line"),
        "the error names the first problem: {error}"
    );
    tokio::time::sleep(INTERVAL * 5).await;
    let for_sha3 = jobs(&running)
        .into_iter()
        .filter(|j| j.delivery_id.contains(&format!("@{sha3}:")))
        .count();
    assert_eq!(
        for_sha3, 1,
        "an invalid commit runs once, not every interval"
    );
    assert_eq!(
        emu.counters().writes,
        writes_before,
        "no provider was changed for an invalid file"
    );
    // Production still runs the last good commit.
    assert!(converged(&emu.url(), &second, &sha2).await);

    // Still running: the fix converges.
    let fourth = config_with_site("four");
    let sha4 = commit(&repo, "telbase.yaml", &fourth, "fixed, SITE four");
    wait_converged(&running, &emu.url(), &fourth, &sha4).await;

    // Each commit ran once; none ran twice.
    let all = jobs(&running);
    for sha in [&sha1, &sha2, &sha4] {
        let n = all
            .iter()
            .filter(|j| j.delivery_id.contains(&format!("@{sha}:")) && j.state == "done")
            .count();
        assert_eq!(n, 1, "{sha} reconciled once: {all:?}");
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_names_the_production_branch_and_newer_commits_win() {
    let emu = emu::start(Config::default()).await;
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("app");
    // HEAD is `develop`, whose file says production is `release`.
    let on_release = config_with_site("release").replace("branch: main", "branch: release");
    repo_with(&repo, &on_release);
    git(&repo, &["branch", "-m", "main", "release"]);
    let release_sha = git(&repo, &["rev-parse", "HEAD"]);
    git(&repo, &["checkout", "-q", "-b", "develop"]);
    let develop_sha = commit(
        &repo,
        "telbase.yaml",
        &config_with_site("develop").replace("branch: main", "branch: release"),
        "work in progress",
    );
    let running = serve::start(server_config(
        &emu,
        tmp.path(),
        vec![repo.to_string_lossy().into_owned()],
    ))
    .await
    .unwrap();
    wait_converged(&running, &emu.url(), &on_release, &release_sha).await;
    tokio::time::sleep(INTERVAL * 3).await;
    assert!(
        !jobs(&running)
            .iter()
            .any(|j| j.delivery_id.contains(&format!("@{develop_sha}:"))),
        "a commit of another branch is not production's"
    );
    running.stop().await;
}

/// A repository with enough files that a full fetch is clearly more than an increment.
fn big_repo(dir: &Path) -> String {
    repo_with(dir, &config_with_site("cached"));
    for i in 0..30 {
        std::fs::write(dir.join(format!("file{i}.txt")), format!("content {i}\n")).unwrap();
    }
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "thirty files"]);
    git(dir, &["rev-parse", "HEAD"])
}

#[test]
fn a_file_url_is_fetched_into_the_cache_incrementally() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("upstream");
    let sha1 = big_repo(&repo);
    let cache = tmp.path().join("cache");
    let url = format!("file://{}", repo.display());
    let w = watch::parse_source(&SecretString::from(url.clone()), None, &cache).unwrap();
    assert!(w.source.git_dir.starts_with(&*cache.to_string_lossy()));

    let first = watch::look(&w, None).unwrap();
    assert_eq!(
        (first.branch.as_str(), first.sha.as_str()),
        ("main", &*sha1)
    );
    assert!(
        first.received_objects >= 30,
        "the first fetch brings the repository: {first:?}"
    );
    let cached = git2::Repository::open_bare(&w.source.git_dir).unwrap();
    assert!(cached.is_bare());

    // Nothing new: nothing downloaded.
    assert_eq!(watch::look(&w, None).unwrap().received_objects, 0);

    // One changed file: its commit, tree and blob come, not the repository again.
    let sha2 = commit(&repo, "file1.txt", "changed\n", "change one file");
    let second = watch::look(&w, None).unwrap();
    assert_eq!(second.sha, sha2);
    assert!(
        (1..=3).contains(&second.received_objects),
        "the second fetch is incremental: {second:?}"
    );
}

/// `git daemon` on a free port serving `base`, killed on drop.
struct Daemon(std::process::Child, u16);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn git_daemon(base: &Path) -> Daemon {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("git")
        .args([
            "daemon",
            "--reuseaddr",
            "--export-all",
            "--listen=127.0.0.1",
            &format!("--port={port}"),
            &format!("--base-path={}", base.display()),
            &base.display().to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("`git daemon` runs (it ships with git)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "git daemon did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Daemon(child, port)
}

#[test]
fn a_git_url_is_fetched_shallow() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("served");
    let repo = base.join("app");
    big_repo(&repo);
    let sha = commit(&repo, "more.txt", "more\n", "a third commit");
    let daemon = git_daemon(&base);
    let url = format!("git://127.0.0.1:{}/app", daemon.1);
    let w = watch::parse_source(&SecretString::from(url), None, &tmp.path().join("cache")).unwrap();
    let head = watch::look(&w, None).unwrap();
    assert_eq!(head.sha, sha);
    let cached = git2::Repository::open_bare(&w.source.git_dir).unwrap();
    assert!(cached.is_shallow(), "depth 1 over a smart transport");
    let mut walk = cached.revwalk().unwrap();
    walk.push(git2::Oid::from_str(&sha).unwrap()).unwrap();
    assert_eq!(walk.count(), 1, "only the tip commit is in the cache");

    let next = commit(&repo, "more.txt", "even more\n", "a fourth commit");
    let again = watch::look(&w, None).unwrap();
    assert_eq!(again.sha, next);
    assert!(
        again.received_objects < head.received_objects,
        "the next fetch brings less than the first: {again:?} after {head:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_url_source_converges_through_the_server() {
    let emu = emu::start(Config::default()).await;
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("upstream");
    let text = config_with_site("from-url");
    let sha = repo_with(&repo, &text);
    let running = serve::start(server_config(
        &emu,
        tmp.path(),
        vec![format!("file://{}", repo.display())],
    ))
    .await
    .unwrap();
    // Not on GitHub: Vercel settings are managed and nothing is deployed, so the job's
    // summary (not a plan pinned to a GitHub commit) shows production was made.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all = jobs(&running);
        if all.iter().any(|j| {
            j.delivery_id.contains(&format!("@{sha}:"))
                && j.state == "done"
                && j.summary
                    .as_deref()
                    .is_some_and(|s| s.starts_with("Applied: "))
        }) {
            break;
        }
        assert!(Instant::now() < deadline, "not reconciled: {all:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(emu.inventory().values().sum::<u64>() > 0);
    let cached: Vec<PathBuf> = std::fs::read_dir(tmp.path().join("cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(cached.len(), 1, "one bare repository per URL: {cached:?}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_that_is_not_a_repository_stops_the_start() {
    let emu = emu::start(Config::default()).await;
    let tmp = tempfile::tempdir().unwrap();
    let not_repo = tmp.path().join("plain");
    std::fs::create_dir_all(&not_repo).unwrap();
    let err = serve::start(server_config(
        &emu,
        tmp.path(),
        vec![not_repo.to_string_lossy().into_owned()],
    ))
    .await
    .err()
    .expect("refused");
    assert!(err.to_string().contains("not in a git repository"), "{err}");
}

/// Watching is refused where it cannot work or where a setting is missing: an App without
/// its webhook secret is a mistake (not a wish to run without GitHub), and a PostgreSQL
/// store means replicas whose workers cannot read this server's git cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_with_an_app_but_no_secret_or_with_postgres_is_refused() {
    let emu = emu::start(Config::default()).await;
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    repo_with(&repo, &config_with_site("refused"));
    let mut with_app = server_config(&emu, tmp.path(), vec![repo.to_string_lossy().into_owned()]);
    with_app.app.app_id = 42;
    let err = serve::start(with_app).await.err().expect("refused");
    assert!(err.to_string().contains("webhook secret"), "{err}");

    let mut on_pg = server_config(&emu, tmp.path(), vec![repo.to_string_lossy().into_owned()]);
    on_pg.store =
        telbase::store::Location::parse("postgres://u:pw@db.example.com/telbase").unwrap();
    let err = serve::start(on_pg).await.err().expect("refused");
    assert!(err.to_string().contains("PostgreSQL"), "{err}");
    assert!(!err.to_string().contains("pw"), "{err}");
    emu.stop().await;
}

/// Runs the real binary with a clean environment (no provider credentials, no GitHub)
/// and returns it with its standard-error file.
fn spawn_serve(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (std::process::Child, PathBuf) {
    let log = dir.join("serve.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_telbase"));
    cmd.arg("serve")
        .args(["--listen", "127.0.0.1:0", "--interval", "200ms"])
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env(
            "TELBASE_DATABASE_URL",
            format!("sqlite:{}", dir.join("db.sqlite").display()),
        )
        .env("TELBASE_CACHE_DIR", dir.join("cache"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    (cmd.spawn().expect("start telbase serve"), log)
}

fn wait_for_log(child: &mut std::process::Child, log: &Path, what: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(what) {
            return text;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("telbase serve exited ({status}):\n{text}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("`{what}` not logged within {secs}s:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_binary_watches_a_subdirectory_against_the_builtin_emulator() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("monorepo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    let sha = commit(
        &repo,
        "deploy/telbase.yaml",
        &config_with_site("example"),
        "config in a subdirectory",
    );
    let (mut child, log) = spawn_serve(
        tmp.path(),
        &["--watch", &repo.join("deploy").to_string_lossy()],
        &[],
    );
    let text = wait_for_log(&mut child, &log, "git watch: success", 120);
    // An invalid commit: logged with its first error; the server keeps running.
    commit(
        &repo,
        "deploy/telbase.yaml",
        &config_with_site("example").replace("version: 17", "version: seventeen"),
        "break it",
    );
    wait_for_log(
        &mut child,
        &log,
        "git watch: failed: deploy/telbase.yaml is invalid: line",
        60,
    );
    assert!(child.try_wait().unwrap().is_none(), "still running");
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.contains("built-in emulator"), "{text}");
    assert!(text.contains("deploy/telbase.yaml"), "{text}");
    assert!(text.contains(&sha), "{text}");
}

#[test]
fn credentials_in_a_url_never_reach_logs_errors_or_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    // A port nothing listens on: every round fails to connect.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://deploy-bot:hunter2-not-logged@127.0.0.1:{port}/team/app.git");
    let (mut child, log) = spawn_serve(tmp.path(), &[], &[("TELBASE_WATCH", &url)]);
    // Three failed rounds, and the server is still up.
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = wait_for_log(&mut child, &log, "cannot read the repository", 30);
        if text.matches("cannot read the repository").count() >= 3 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "fewer than three rounds:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(child.try_wait().unwrap().is_none(), "still running");
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        text.contains(&format!("http://127.0.0.1:{port}/team/app.git")),
        "the error names the URL without credentials:\n{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
    assert!(!text.contains("deploy-bot"), "{text}");
    let mut paths = Vec::new();
    let mut stack = vec![tmp.path().join("cache")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            paths.push(e.path().display().to_string());
            if e.path().is_dir() {
                stack.push(e.path());
            }
        }
    }
    assert!(!paths.is_empty(), "the cache repository was created");
    for p in &paths {
        assert!(!p.contains("hunter2") && !p.contains("deploy-bot"), "{p}");
    }
    // Nor in the cache repository's config (an anonymous remote is never saved).
    for p in paths.iter().filter(|p| p.ends_with("/config")) {
        let text = std::fs::read_to_string(p).unwrap();
        assert!(!text.contains("hunter2"), "{p}: {text}");
    }
}

/// Git's smart HTTP protocol, served by `git http-backend` (CGI, ships with git) behind a
/// small axum server that demands HTTP Basic credentials, as GitHub or GitLab do for a
/// private repository.
async fn smart_http(root: PathBuf, user: &'static str, password: &'static str) -> String {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, Method, StatusCode, Uri};
    use axum::response::{IntoResponse, Response};
    use base64::Engine as _;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    );
    let handler = move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
        let (root, expected) = (root.clone(), expected.clone());
        async move {
            let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
            if auth != Some(expected.as_str()) {
                return (
                    StatusCode::UNAUTHORIZED,
                    [("www-authenticate", "Basic realm=\"git\"")],
                    "credentials required",
                )
                    .into_response();
            }
            let content_type = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let out = tokio::task::spawn_blocking(move || {
                use std::io::Write as _;
                let mut child = Command::new("git")
                    .arg("http-backend")
                    .env_clear()
                    .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                    .env("GIT_PROJECT_ROOT", &root)
                    .env("GIT_HTTP_EXPORT_ALL", "1")
                    .env("REQUEST_METHOD", method.as_str())
                    .env("PATH_INFO", uri.path())
                    .env("QUERY_STRING", uri.query().unwrap_or(""))
                    .env("CONTENT_TYPE", content_type)
                    .env("CONTENT_LENGTH", body.len().to_string())
                    .env("REMOTE_USER", "deploy-bot")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("git http-backend");
                child.stdin.take().unwrap().write_all(&body).unwrap();
                child.wait_with_output().unwrap()
            })
            .await
            .unwrap();
            // CGI: headers, a blank line, the body.
            let split = out
                .stdout
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|i| (i, 4))
                .or_else(|| {
                    out.stdout
                        .windows(2)
                        .position(|w| w == b"\n\n")
                        .map(|i| (i, 2))
                })
                .expect("CGI headers");
            let head = String::from_utf8_lossy(&out.stdout[..split.0]).into_owned();
            let mut resp = Response::builder().status(200);
            for line in head.lines() {
                let Some((k, v)) = line.split_once(':') else {
                    continue;
                };
                if k.eq_ignore_ascii_case("status") {
                    let code: u16 = v.trim()[..3].parse().unwrap();
                    resp = resp.status(code);
                } else {
                    resp = resp.header(k.trim(), v.trim());
                }
            }
            resp.body(axum::body::Body::from(
                out.stdout[split.0 + split.1..].to_vec(),
            ))
            .unwrap()
        }
    };
    let app = axum::Router::new().fallback(handler);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_url_with_credentials_is_fetched_shallow_and_the_password_stays_secret() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("served");
    let repo = base.join("app");
    big_repo(&repo);
    let sha = commit(&repo, "more.txt", "more\n", "a third commit");
    let server = smart_http(base.clone(), "deploy-bot", "hunter2-not-logged").await;
    let cache = tmp.path().join("cache");

    // Wrong password: a clear error, without the password.
    let wrong = server.replace("http://", "http://deploy-bot:wrong-password@") + "/app";
    let w = watch::parse_source(&SecretString::from(wrong), None, &cache).unwrap();
    let err = tokio::task::spawn_blocking(move || watch::look(&w, None))
        .await
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("{server}/app")), "{err}");
    assert!(
        !err.contains("wrong-password") && !err.contains("deploy-bot"),
        "{err}"
    );

    let url = server.replace("http://", "http://deploy-bot:hunter2-not-logged@") + "/app";
    let w = Arc::new(watch::parse_source(&SecretString::from(url), None, &cache).unwrap());
    assert_eq!(w.source.name, format!("{server}/app"));
    let w2 = w.clone();
    let head = tokio::task::spawn_blocking(move || watch::look(&w2, None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((head.branch.as_str(), head.sha.as_str()), ("main", &*sha));
    let cached = git2::Repository::open_bare(&w.source.git_dir).unwrap();
    assert!(cached.is_shallow(), "depth 1 over smart HTTP");
    let config = std::fs::read_to_string(Path::new(&w.source.git_dir).join("config")).unwrap();
    assert!(!config.contains("hunter2"), "{config}");
}

#[test]
fn a_drift_check_is_queued_when_the_files_schedule_comes_due() {
    let tmp = tempfile::tempdir().unwrap();
    let store = telbase::store::open(&Location::Sqlite(tmp.path().join("db.sqlite"))).unwrap();
    let queue = telbase::serve::queue::StoreQueue::new(store);
    let source = watch::GitSource {
        name: "/srv/app".into(),
        git_dir: "/srv/app".into(),
        config_path: "telbase.yaml".into(),
        github: None,
    };
    let sha = "3".repeat(40);
    let head = watch::Head {
        branch: "main".into(),
        sha: sha.clone(),
        received_objects: 0,
    };
    // Production runs the head; the file asks for a check every 15 minutes.
    queue
        .with(|s| {
            s.record_reconciled(
                "/srv/app",
                watch::WATCH_INSTALLATION,
                "main",
                &sha,
                "*/15 * * * *",
            )
        })
        .unwrap();
    let now = chrono::Utc::now();
    watch::enqueue(&queue, &source, &head, now).unwrap();
    assert!(
        queue.with(|s| s.jobs()).unwrap().is_empty(),
        "nothing is due yet, and the head is what production runs"
    );
    let later = now + chrono::Duration::minutes(16);
    watch::enqueue(&queue, &source, &head, later).unwrap();
    watch::enqueue(&queue, &source, &head, later).unwrap();
    let jobs = queue.with(|s| s.jobs()).unwrap();
    assert_eq!(jobs.len(), 1, "one check per due time: {jobs:?}");
    assert!(jobs[0].delivery_id.starts_with("watch-drift:/srv/app@"));
    // The GitHub side leaves watched repositories alone.
    assert_eq!(telbase::serve::drift_once(&queue, later).unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_not_followed_so_the_credentials_stay_with_their_host() {
    use axum::http::{StatusCode, Uri};
    use std::sync::atomic::{AtomicUsize, Ordering};
    // Any connection to the trap would mean git followed the redirect, taking the
    // Authorization header with it.
    let trap = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let trap_addr = trap.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        while let Ok((_conn, _)) = trap.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
        }
    });
    let app = axum::Router::new().fallback(move |uri: Uri| async move {
        (
            StatusCode::FOUND,
            [("location", format!("http://{trap_addr}{uri}"))],
            "moved",
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("http://deploy-bot:hunter2-not-logged@127.0.0.1:{port}/app");
    let w = watch::parse_source(&SecretString::from(url), None, &tmp.path().join("cache")).unwrap();
    let err = tokio::task::spawn_blocking(move || watch::look(&w, Some("main")))
        .await
        .unwrap()
        .unwrap_err()
        .to_string();
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the redirect was followed: {err}"
    );
    assert!(
        err.contains(&format!("http://127.0.0.1:{port}/app")),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
}

/// The server's own environment does not reach git: here GIT_CONFIG_PARAMETERS would
/// rewrite the watched URL to another host (taking the Authorization header along) and
/// GIT_SSL_NO_VERIFY would turn TLS checks off, had git inherited them.
#[test]
fn git_sees_none_of_the_servers_git_variables() {
    // The trap counts connections: one means git followed the rewrite.
    let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let trap_port = trap.local_addr().unwrap().port();
    trap.set_nonblocking(true).unwrap();
    // Nothing listens on the watched port: every round fails to connect.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("http://deploy-bot:hunter2-not-logged@127.0.0.1:{closed}/app");
    let rewrite =
        format!("'url.http://127.0.0.1:{trap_port}/.insteadof'='http://127.0.0.1:{closed}/'");
    let (mut child, log) = spawn_serve(
        tmp.path(),
        &[],
        &[
            ("TELBASE_WATCH", &url),
            ("GIT_CONFIG_PARAMETERS", &rewrite),
            ("GIT_SSL_NO_VERIFY", "1"),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = wait_for_log(&mut child, &log, "cannot read the repository", 30);
        if text.matches("cannot read the repository").count() >= 2 {
            break text;
        }
        assert!(Instant::now() < deadline, "fewer than two rounds:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        trap.accept().is_err(),
        "git followed the inherited rewrite:\n{text}"
    );
    assert!(text.contains(&format!("127.0.0.1:{closed}")), "{text}");
}

//! `telbase serve --config FILE`: the server's settings from a file of `NAME=value` lines,
//! through the real binary. The file's variables reach every part of the server (here the
//! listen address and the watched repository); the environment wins over the file; a bad
//! line stops the start naming the file and line, never the value.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn git_repo(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let run = |args: &[&str]| {
        let ok = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@telbase.dev")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@telbase.dev")
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    };
    run(&["init", "-q", "-b", "main"]);
    std::fs::write(
        dir.join("telbase.yaml"),
        "version: 1\nproject: cfg\napps:\n  web:\n    framework: nextjs\n",
    )
    .unwrap();
    run(&["add", "."]);
    run(&["commit", "-q", "-m", "config"]);
}

fn serve(args: &[&str], env: &[(&str, &str)], dir: &Path) -> std::process::Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_telbase"));
    cmd.arg("serve")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("TELBASE_CACHE_DIR", dir.join("cache"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

fn healthy(port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read as _, Write as _};
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            if out.starts_with("HTTP/1.1 200") {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn settings_come_from_the_file_and_the_environment_wins() {
    if Command::new("git").arg("--version").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "CI must have git");
        eprintln!("skipping: git is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    git_repo(&repo);
    let (from_file, from_env) = (free_port(), free_port());
    let file = dir.path().join("serve.env");
    std::fs::write(
        &file,
        format!(
            "# telbase serve\nTELBASE_LISTEN=127.0.0.1:{from_file}\nexport TELBASE_WATCH=\"{}\"\nTELBASE_WATCH_INTERVAL=1h\n",
            repo.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();

    let mut child = serve(&["--config", file.to_str().unwrap()], &[], dir.path());
    let up = healthy(from_file);
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        up,
        "the file's listen address and watched repository were used"
    );

    // The same file named by the variable, with the listen address overridden.
    let mut child = serve(
        &[],
        &[
            ("TELBASE_SERVE_CONFIG", file.to_str().unwrap()),
            ("TELBASE_LISTEN", &format!("127.0.0.1:{from_env}")),
        ],
        dir.path(),
    );
    let up = healthy(from_env);
    let _ = child.kill();
    let _ = child.wait();
    assert!(up, "the environment's listen address won over the file's");
}

#[test]
fn a_bad_line_stops_the_start_without_showing_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("serve.env");
    std::fs::write(
        &file,
        "TELBASE_LISTEN=127.0.0.1:0\nGITHUB_WEBHOOK_SECRET hunter2\n",
    )
    .unwrap();
    let out = serve(&["--config", file.to_str().unwrap()], &[], dir.path())
        .wait_with_output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("serve.env:2: not NAME=value"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");

    let missing = serve(&["--config", "/nonexistent/serve.env"], &[], dir.path())
        .wait_with_output()
        .unwrap();
    let err = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(2), "{err}");
    assert!(err.contains("/nonexistent/serve.env"), "{err}");
}

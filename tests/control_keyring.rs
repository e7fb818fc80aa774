//! `telbase login` with the OS keyring, against real peers: a private D-Bus session bus
//! (`dbus-daemon`), GNOME Keyring as the Secret Service (`gnome-keyring-daemon`, unlocked
//! with a test password) and `secret-tool` (libsecret) reading and writing the same item
//! Telbase keeps. Also: no Secret Service on the bus, or no bus at all — `auto` says so and
//! keeps the file; `keyring` refuses before the device flow starts. Outside CI the tests
//! skip, with a reason, when those programs are missing; `.ci/run` installs them.

mod common;
#[path = "common/login_world.rs"]
mod login_world;
#[path = "common/serve_app.rs"]
mod serve_app;

use std::ffi::OsString;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use login_world::{BIN, LoginWorld};

/// A private session bus, with or without a GNOME Keyring on it. Both are killed on drop.
struct Bus {
    address: String,
    dir: tempfile::TempDir,
    children: Vec<Child>,
}

impl Drop for Bus {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The programs these tests need, or `None` with a reason (a failure under CI).
fn tools(keyring: bool) -> Option<()> {
    let mut needed = vec!["dbus-daemon", "dbus-send"];
    if keyring {
        needed.extend(["gnome-keyring-daemon", "secret-tool"]);
    }
    let missing: Vec<&str> = needed.into_iter().filter(|p| !have(p)).collect();
    if missing.is_empty() {
        return Some(());
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{missing:?} not found: CI must install them (.ci/run: dbus-daemon, gnome-keyring, libsecret-tools)"
    );
    eprintln!(
        "skipping: {missing:?} not found (Debian: dbus-daemon gnome-keyring libsecret-tools)"
    );
    None
}

impl Bus {
    /// A bus of our own: no service directories, so nothing is activated behind our back
    /// (the system's session config would start a second keyring on demand).
    fn start(keyring: bool) -> Option<Bus> {
        tools(keyring)?;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("bus.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
                dir.path().join("bus").display()
            ),
        )
        .unwrap();
        let mut daemon = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--print-address=1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut address = String::new();
        BufReader::new(daemon.stdout.take().unwrap())
            .read_line(&mut address)
            .unwrap();
        let mut bus = Bus {
            address: address.trim().to_owned(),
            dir,
            children: vec![daemon],
        };
        assert!(bus.address.starts_with("unix:"), "{:?}", bus.address);
        if keyring {
            for d in ["data", "run", "cache"] {
                std::fs::create_dir(bus.dir.path().join(d)).unwrap();
            }
            let mut gk = Command::new("gnome-keyring-daemon")
                .args(["--unlock", "--components=secrets", "--foreground"])
                .envs(bus.env())
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            // `--unlock` reads the login keyring's password from stdin (and creates it).
            let mut stdin = gk.stdin.take().unwrap();
            stdin.write_all(b"test-password").unwrap();
            drop(stdin);
            bus.children.push(gk);
            bus.wait_for("org.freedesktop.secrets");
        }
        Some(bus)
    }

    /// The environment a client on this bus gets (HOME and the XDG directories point into
    /// the bus's own directory, so nothing of the person running the tests is touched).
    fn env(&self) -> Vec<(&'static str, OsString)> {
        let d = self.dir.path();
        vec![
            ("DBUS_SESSION_BUS_ADDRESS", self.address.clone().into()),
            ("HOME", d.into()),
            ("XDG_DATA_HOME", d.join("data").into()),
            ("XDG_RUNTIME_DIR", d.join("run").into()),
            ("XDG_CACHE_HOME", d.join("cache").into()),
            ("XDG_CONFIG_HOME", d.join("config").into()),
        ]
    }

    fn config_file(&self) -> PathBuf {
        self.dir.path().join("config/telbase/credentials.json")
    }

    fn wait_for(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = Command::new("dbus-send")
                .args([
                    &format!("--bus={}", self.address),
                    "--print-reply",
                    "--dest=org.freedesktop.DBus",
                    "/org/freedesktop/DBus",
                    "org.freedesktop.DBus.NameHasOwner",
                    &format!("string:{name}"),
                ])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&out.stdout).contains("boolean true") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} never appeared on the bus"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Locks the login collection, as a screen lock or a timeout does. Nobody can answer
    /// the unlock prompt here (no desktop), so every use of it fails from then on.
    fn lock(&self) {
        let out = Command::new("dbus-send")
            .args([
                &format!("--bus={}", self.address),
                "--print-reply",
                "--dest=org.freedesktop.secrets",
                "/org/freedesktop/secrets",
                "org.freedesktop.Secret.Service.Lock",
                "array:objpath:/org/freedesktop/secrets/collection/login",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }

    fn secret_tool(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut c = Command::new("secret-tool")
            .args(args)
            .envs(self.env())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut pipe = c.stdin.take().unwrap();
        if let Some(text) = stdin {
            pipe.write_all(text.as_bytes()).unwrap();
        }
        drop(pipe);
        c.wait_with_output().unwrap()
    }

    /// The item Telbase keeps, as libsecret reads it.
    fn stored(&self) -> Option<Value> {
        let out = self.secret_tool(&["lookup", "service", "telbase", "username", "login"], None);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    fn telbase(&self, args: &[&str], extra: &[(&str, &str)]) -> Output {
        Command::new(BIN)
            .args(args)
            .envs(self.env())
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_keeps_its_tokens_in_the_secret_service() {
    let Some(bus) = Bus::start(true) else {
        return;
    };
    let Some(world) = LoginWorld::start().await else {
        return;
    };
    // A file from a login made before the keyring was there: the keyring login must
    // not leave its tokens behind on disk.
    let file = bus.config_file();
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(
        &file,
        r#"{"server":"x","access_token":"old","refresh_token":"old","expires_at":0}"#,
    )
    .unwrap();

    let mut env = bus.env();
    env.push(("TELBASE_CREDENTIALS_STORE", "keyring".into()));
    let shown = world.login(&env).await;
    assert!(
        shown
            .iter()
            .any(|l| l.contains("kept in the OS keyring (the Secret Service)")),
        "{shown:?}"
    );
    assert!(!file.exists(), "the old credentials file is gone");

    // libsecret finds the item under the documented attributes, with the label.
    let creds = bus.stored().expect("secret-tool finds the login");
    assert_eq!(creds["server"], world.base.as_str());
    let first_access = creds["access_token"].as_str().unwrap().to_owned();
    let first_refresh = creds["refresh_token"].as_str().unwrap().to_owned();
    assert!(first_access.starts_with("tlb_at_"));
    let search = bus.secret_tool(&["search", "--all", "service", "telbase"], None);
    let listed = String::from_utf8_lossy(&search.stdout).into_owned()
        + &String::from_utf8_lossy(&search.stderr);
    assert!(listed.contains("label = Telbase CLI login"), "{listed}");
    assert!(listed.contains("attribute.username = login"), "{listed}");

    // `auto` (the default) finds the login in the keyring.
    let out = bus.telbase(&["whoami"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("<ada@example.com>"));

    // An expired access token, written by libsecret: whoami refreshes it and writes the
    // rotated pair back into the keyring, not into a file.
    let mut expired = creds.clone();
    expired["expires_at"] = 0.into();
    let out = bus.secret_tool(
        &[
            "store",
            "--label=Telbase CLI login",
            "service",
            "telbase",
            "username",
            "login",
        ],
        Some(&expired.to_string()),
    );
    assert!(out.status.success(), "{out:?}");
    let out = bus.telbase(&["whoami"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let refreshed = bus.stored().unwrap();
    for token in [
        first_access.as_str(),
        first_refresh.as_str(),
        refreshed["access_token"].as_str().unwrap(),
        refreshed["refresh_token"].as_str().unwrap(),
    ] {
        assert!(!printed.contains(token), "whoami shows no token");
    }
    assert_ne!(refreshed["refresh_token"].as_str().unwrap(), first_refresh);
    assert!(refreshed["expires_at"].as_i64().unwrap() > chrono::Utc::now().timestamp());
    assert!(!file.exists());
    // No token in anything the commands printed.
    let access = refreshed["access_token"].as_str().unwrap().to_owned();
    for l in &shown {
        assert!(
            !l.contains(&first_access) && !l.contains(&first_refresh),
            "{l}"
        );
    }

    // Logout revokes on the server and removes the item.
    let out = bus.telbase(&["logout"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("Logged out"));
    assert_eq!(bus.stored(), None, "the item is gone");
    assert!(!world.accepts(&access).await);
    let out = bus.telbase(&["whoami"], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not logged in"));

    // A damaged item: a clear error that quotes none of it, and `logout` still removes it.
    let out = bus.secret_tool(
        &[
            "store",
            "--label=x",
            "service",
            "telbase",
            "username",
            "login",
        ],
        Some(r#"{"server": 1, "access_token": "tlb_at_leak"}"#),
    );
    assert!(out.status.success());
    let out = bus.telbase(&["whoami"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("the keyring's Telbase login") && err.contains("`telbase logout` removes it"),
        "{err}"
    );
    assert!(!err.contains("tlb_at_leak"), "{err}");
    let out = bus.telbase(&["logout"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("Removed the local login, which could not be read"),
        "{err}"
    );
    assert!(!err.contains("tlb_at_leak"), "{err}");
    assert_eq!(bus.stored(), None, "the damaged item is gone");

    // A locked keyring: the check before the flow passes (looking for a missing item needs
    // no unlock), the save then fails on the prompt nobody answers, and `auto` keeps the
    // approved login in the file rather than losing it.
    bus.lock();
    let shown = world.login(&bus.env()).await;
    assert!(
        shown.iter().any(|l| l.contains("The OS keyring failed (")),
        "{shown:?}"
    );
    assert!(
        shown
            .iter()
            .any(|l| l.contains("kept in") && l.contains("credentials.json (mode 0600)")),
        "{shown:?}"
    );
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // ...and commands find it there while the keyring stays locked.
    let out = bus.telbase(&["whoami"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `keyring` looks in the keyring alone: the file's login is not its.
    let out = bus.telbase(&["whoami"], &[("TELBASE_CREDENTIALS_STORE", "keyring")]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not logged in"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    world.running.stop().await;
}

/// What `login` says before it contacts the server (port 9 on loopback: nothing listens,
/// so the run ends right after).
fn login_unreachable(env: &[(&str, OsString)], store: &str) -> String {
    let out = Command::new(BIN)
        .args(["login", "--server", "http://127.0.0.1:9"])
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .env("TELBASE_CREDENTIALS_STORE", store)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn without_a_secret_service_auto_keeps_the_file_and_keyring_refuses() {
    let Some(bus) = Bus::start(false) else {
        return;
    };
    let no_bus = {
        let mut env = bus.env();
        env[0].1 = format!("unix:path={}", bus.dir.path().join("no-bus").display()).into();
        env
    };
    for env in [bus.env(), no_bus] {
        let err = login_unreachable(&env, "auto");
        assert!(err.contains("No OS keyring ("), "{err}");
        assert!(
            err.contains("the login will be kept in")
                && err.contains("credentials.json (mode 0600)"),
            "{err}"
        );
        assert!(
            err.contains("cannot reach"),
            "then the device flow starts: {err}"
        );

        let err = login_unreachable(&env, "keyring");
        assert!(
            err.contains("TELBASE_CREDENTIALS_STORE=keyring, but the OS keyring cannot be used"),
            "{err}"
        );
        assert!(
            !err.contains("cannot reach"),
            "stopped before the device flow: {err}"
        );

        // `file` never asks the bus.
        let err = login_unreachable(&env, "file");
        assert!(!err.contains("No OS keyring"), "{err}");
        assert!(err.contains("cannot reach"), "{err}");
    }
    let err = login_unreachable(&bus.env(), "vault");
    assert!(err.contains("TELBASE_CREDENTIALS_STORE=\"vault\""), "{err}");

    // Not logged in, and the keyring could not be asked: both are said.
    let out = bus.telbase(&["whoami"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("not logged in") && err.contains("the OS keyring could not be asked"),
        "{err}"
    );
}

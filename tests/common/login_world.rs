//! A `telbase serve` with the control plane on, a team `acme` whose Owner is
//! ada@example.com, and an Owner API token standing in for the dashboard that approves
//! device logins: what the `telbase login` tests share. `login` runs the real binary's
//! device flow against it, approving the code it shows.

#![allow(dead_code)]

use std::ffi::OsString;
use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use secrecy::ExposeSecret as _;
use serde_json::json;
use telbase::control::model::{self, NewToken};
use telbase::control::roles::Role;
use telbase::control::secrets::{Kind, ServerKey};
use telbase::serve::{self, ControlConfig, EdgeConfig};

use crate::common::{app_key, emu};
use crate::serve_app::server_config;

pub struct LoginWorld {
    pub running: serve::Running,
    pub base: String,
    pub db: PathBuf,
    /// The Owner's API token, which approves device logins.
    pub approver: String,
    pub dir: tempfile::TempDir,
    _emu: telbase::emulator::Handle,
}

pub fn audit_log() -> telbase::audit::AuditLog {
    telbase::audit::AuditLog::new(telbase::audit::AuditKeys::from_secret(&[9; 32]))
}

pub const BIN: &str = env!("CARGO_BIN_EXE_telbase");

impl LoginWorld {
    /// `None` (skipped with a reason outside CI) without the App's test key.
    pub async fn start() -> Option<LoginWorld> {
        let (pem, _) = app_key()?;
        let emu = emu::start(telbase::emulator::Config::default()).await;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("telbase.db");
        let key = ServerKey::generate();
        let config = server_config(&emu, dir.path(), pem);
        let running = serve::start_with(
            config,
            EdgeConfig {
                control: Some(ControlConfig { key: key.clone() }),
                audit: Some(audit_log()),
                ..EdgeConfig::default()
            },
        )
        .await
        .unwrap();
        let base = format!("http://{}", running.addr);

        // The bootstrap: a fresh server's first team and Owner, on the store.
        let out = Command::new(BIN)
            .args(["team", "create", "acme", "--owner", "Ada@Example.com"])
            .env("TELBASE_DATABASE_URL", &db)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The dashboard's stand-in: an API token of the Owner.
        let approver = {
            let mut s =
                telbase::store::open(&telbase::store::Location::Sqlite(db.clone())).unwrap();
            let team = model::team_by_name(&mut s, "acme").unwrap().unwrap();
            let user = model::user_by_email(&mut s, "ada@example.com")
                .unwrap()
                .unwrap();
            let (_, secret) = model::create_token(
                &mut s,
                &key,
                &NewToken {
                    kind: Kind::Api,
                    team_id: &team.id,
                    user_id: &user.id,
                    name: "dashboard",
                    role_cap: Role::Owner,
                    family: None,
                    expires_at: None,
                },
                chrono::Utc::now().timestamp_millis(),
            )
            .unwrap();
            secret.expose_secret().to_owned()
        };
        Some(LoginWorld {
            running,
            base,
            db,
            approver,
            dir,
            _emu: emu,
        })
    }

    /// Runs `telbase login --server BASE` with `envs`, approves the code it shows, and
    /// returns everything it wrote to stderr. Panics if it fails.
    pub async fn login(&self, envs: &[(&str, OsString)]) -> Vec<String> {
        let mut login = Command::new(BIN);
        login.args(["login", "--server", &self.base]);
        for (k, v) in envs {
            login.env(k, v);
        }
        let mut login = login.stderr(Stdio::piped()).spawn().unwrap();
        // Read the code the person would type from what `login` shows.
        let stderr = login.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut shown = Vec::new();
        let code = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("login shows a code: {shown:?}"));
            shown.push(line.clone());
            if let Some(c) = line.split("enter the code: ").nth(1) {
                break c.trim().to_owned();
            }
        };
        assert!(
            shown
                .iter()
                .any(|l| l.contains(&format!("{}/device", self.base))),
            "{shown:?}"
        );
        let r = reqwest::Client::new()
            .post(format!("{}/api/v1/device/approve", self.base))
            .bearer_auth(&self.approver)
            .json(&json!({"user_code": code}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        let status = tokio::task::spawn_blocking(move || login.wait())
            .await
            .unwrap()
            .unwrap();
        // Everything it said to the end (the reader stops when the pipe closes).
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(10)) {
            shown.push(line);
        }
        assert!(status.success(), "{shown:?}");
        assert!(shown.iter().any(|l| l.contains("Logged in")), "{shown:?}");
        shown
    }

    /// Whether the server still takes `access`.
    pub async fn accepts(&self, access: &str) -> bool {
        let r = reqwest::Client::new()
            .get(format!("{}/api/v1/me", self.base))
            .bearer_auth(access)
            .send()
            .await
            .unwrap();
        r.status() == 200
    }
}

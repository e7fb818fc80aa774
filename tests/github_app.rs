//! The GitHub App client against the emulator's GitHub: an App JWT signed with a key made
//! for this run (by `openssl`) and verified by the emulator with its public half,
//! installation tokens minted once and reused, files read at an exact commit, commit
//! statuses, exactly one plan comment per pull request across runs, and every exchange
//! checked against GitHub's published description.

mod common;

use base64::Engine as _;
use secrecy::SecretString;
use serde_json::json;
use telbase::conformance::{ApiDescription, Exchange};
use telbase::emulator::Config;
use telbase::github::app::{AppConfig, CommitStatus, GitHubApp, GitHubError, StatusState};

use common::{app_key, emu};

const SHA: &str = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";

fn app(url: &str, pem: &str) -> GitHubApp {
    GitHubApp::new(&AppConfig {
        app_id: 42,
        private_key: SecretString::from(pem.to_owned()),
        base_url: format!("{url}/github"),
    })
    .expect("the App client")
}

fn seed(emu: &telbase::emulator::Handle, public_der: &[u8]) {
    emu.github_seed(&json!({
        "app_id": 42,
        "app_public_key_der_b64": base64::engine::general_purpose::STANDARD.encode(public_der),
        "installations": [{"id": 7, "account": "acme", "repos": ["acme/web"]}],
        "commits": [{"repo": "acme/web", "sha": SHA, "files": {"telbase.yaml": "project: notes\n# ünïcode survives base64\n"}}],
        "branches": [{"repo": "acme/web", "branch": "main", "sha": SHA}],
        "deliveries": [
            {"id": 11, "guid": "0b989ba4-242f-11e5-81e1-c7b6966d2516", "delivered_at": "2026-11-29T12:00:00Z", "redelivery": false, "duration": 0.27, "status": "OK", "status_code": 202, "event": "push", "action": null, "installation_id": 7, "repository_id": 500000},
            {"id": 12, "guid": "1b989ba4-242f-11e5-81e1-c7b6966d2516", "delivered_at": "2026-11-29T12:01:00Z", "redelivery": false, "duration": 10.0, "status": "Timed out", "status_code": 0, "event": "pull_request", "action": "opened", "installation_id": 7, "repository_id": 500000}
        ]
    }))
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_talks_to_github_as_github_expects() {
    let Some((pem, public)) = app_key() else {
        return;
    };
    let emu = emu::start(Config {
        capture: true,
        ..Config::default()
    })
    .await;
    seed(&emu, public);
    let gh = app(&emu.url(), pem);

    // A file at an exact commit; absent files and unknown commits are `None`, not errors.
    let file = gh
        .read_file(7, "acme/web", "telbase.yaml", SHA)
        .await
        .unwrap();
    assert_eq!(
        file.as_deref(),
        Some("project: notes\n# ünïcode survives base64\n".as_bytes())
    );
    assert_eq!(
        gh.read_file(7, "acme/web", "missing.yaml", SHA)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        gh.read_file(7, "acme/web", "telbase.yaml", "0000000")
            .await
            .unwrap(),
        None
    );

    gh.set_status(
        7,
        "acme/web",
        SHA,
        &CommitStatus {
            state: StatusState::Success,
            context: "telbase/production",
            description: "Applied: 3 created",
            target_url: Some("https://telbase.example/runs/1"),
        },
    )
    .await
    .unwrap();

    // One comment per PR and marker, updated in place on the second run.
    let marker = "<!-- telbase:plan config=telbase.yaml -->";
    let first = gh
        .upsert_comment(7, "acme/web", 2, marker, "Plan: 1 to create")
        .await
        .unwrap();
    let second = gh
        .upsert_comment(7, "acme/web", 2, marker, "Plan: no changes")
        .await
        .unwrap();
    assert_eq!(first, second, "the same comment is updated");
    assert_eq!(emu.inventory()["github/comment"], 1);
    assert_eq!(emu.inventory()["github/status"], 1);

    assert_eq!(gh.repositories(7).await.unwrap(), vec!["acme/web"]);
    assert_eq!(
        gh.branch_head(7, "acme/web", "main")
            .await
            .unwrap()
            .as_deref(),
        Some(SHA)
    );
    assert_eq!(gh.branch_head(7, "acme/web", "gone").await.unwrap(), None);
    assert_eq!(
        gh.default_branch(7, "acme/web").await.unwrap().as_deref(),
        Some("main")
    );
    let left = gh.rate_limit_remaining(7).await.unwrap();
    assert!(left < 5000 && left > 4900, "{left}");

    let deliveries = gh.deliveries(50).await.unwrap();
    assert_eq!(
        deliveries.iter().map(|d| d.id).collect::<Vec<_>>(),
        vec![12, 11]
    );
    assert_eq!(deliveries[0].status_code, 0, "the failed one is visible");
    gh.redeliver(12).await.unwrap();
    assert_eq!(emu.inventory()["github/redelivery"], 1);
    let again = gh.deliveries(50).await.unwrap();
    assert!(again[0].redelivery && again[0].guid == deliveries[0].guid);

    // The installation token was minted once and reused by every call.
    let exchanges = emu.exchanges();
    let minted = exchanges
        .iter()
        .filter(|x| x.path.ends_with("/access_tokens"))
        .count();
    assert_eq!(minted, 1, "installation token minted {minted} times");

    // Every exchange conforms to GitHub's description.
    if let Some(apis) = common::provider_apis() {
        let desc =
            ApiDescription::from_file(&apis.join("github/github-openapi.subset.json")).unwrap();
        let mut violations = Vec::new();
        for x in &exchanges {
            let ex = Exchange::from(x);
            for v in desc.check(&ex) {
                violations.push(format!("{}: {}", v.operation, v.message));
            }
        }
        assert!(violations.is_empty(), "{}", violations.join("\n"));
        assert!(exchanges.len() >= 10, "{}", exchanges.len());
    }
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_or_an_unknown_installation_is_a_clear_error() {
    let Some((pem, public)) = app_key() else {
        return;
    };
    let emu = emu::start(Config::default()).await;
    seed(&emu, public);

    // Signed with another key: GitHub (here, the emulator) refuses the JWT.
    let other = {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("k.pem");
        assert!(
            std::process::Command::new("openssl")
                .args(["genrsa", "-out", k.to_str().unwrap(), "2048"])
                .output()
                .unwrap()
                .status
                .success()
        );
        std::fs::read_to_string(k).unwrap()
    };
    let gh = app(&emu.url(), &other);
    let err = gh
        .read_file(7, "acme/web", "telbase.yaml", SHA)
        .await
        .unwrap_err();
    assert!(matches!(err, GitHubError::Auth { .. }), "{err}");
    assert!(!err.is_transient());

    let gh = app(&emu.url(), pem);
    let err = gh.installation_token(99).await.unwrap_err();
    assert!(
        matches!(err, GitHubError::NotFound { .. }),
        "an installation that does not exist: {err}"
    );

    // Not a key at all.
    let err = GitHubApp::new(&AppConfig {
        app_id: 42,
        private_key: SecretString::from("not a key".to_owned()),
        base_url: format!("{}/github", emu.url()),
    })
    .err()
    .unwrap();
    assert!(
        err.to_string().contains("not an RSA key in PEM form"),
        "{err}"
    );
    emu.stop().await;
}

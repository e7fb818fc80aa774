//! Previews without webhooks: the poll of open pull requests and the preview sweep of
//! `telbase serve`, against the emulator's GitHub and providers. A pull request opened while
//! its webhook was dropped gets a preview from the poll (a fork's does not); one closed
//! without a webhook is torn down completely and production is untouched; a preview idle
//! past its file's TTL is swept; an orphaned preview branch carrying Telbase's ownership
//! markers for a pull request that is not open is removed through the planner, while a
//! look-alike Telbase does not own stays. The fake GitHub's pull request answers conform
//! to GitHub's published description.

mod common;

#[path = "common/serve_app.rs"]
mod serve_app;

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::{Value, json};
use telbase::conformance::{ApiDescription, Exchange};
use telbase::emulator::{Config, EMULATOR_TOKEN};
use telbase::serve::{self, sweep};

use common::{app_key, emu};
use serve_app::{post, push_main, server_config, settle};

const MAIN_SHA: &str = "1111111111111111111111111111111111111111";
const PR5_SHA: &str = "5555555555555555555555555555555555555555";
const PR6_SHA: &str = "6666666666666666666666666666666666666666";

fn config_text() -> String {
    emu::quickstart("notes").replace(
        "    version: 17\n",
        "    version: 17\n    branch_per_preview: true\n",
    )
}

/// Provider resources only (the GitHub counters change with every call).
fn providers(inv: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    inv.iter()
        .filter(|(k, _)| !k.starts_with("github/"))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

async fn neon(
    client: &reqwest::Client,
    base: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Value {
    let url = format!("{base}/neon/api/v2{path}");
    let req = match method {
        "POST" => client.post(url).json(&body.unwrap_or(json!({}))),
        _ => client.get(url),
    };
    let r = req.bearer_auth(EMULATOR_TOKEN).send().await.unwrap();
    assert!(r.status().is_success(), "{method} {path}: {}", r.status());
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previews_follow_pull_requests_without_webhooks() {
    let Some((pem, public)) = app_key() else {
        return;
    };
    let Some(push) = push_main(MAIN_SHA) else {
        return;
    };
    let ttl_config = config_text().replace(
        "    branch: main\n",
        "    branch: main\n  preview:\n    access: public\n    ttl: 1h\n",
    );
    assert!(ttl_config.contains("ttl: 1h"));
    let emu = emu::start(Config {
        capture: true,
        ..Config::default()
    })
    .await;
    emu.github_seed(&json!({
        "app_id": 42,
        "app_public_key_der_b64": base64::engine::general_purpose::STANDARD.encode(public),
        "installations": [{"id": 7, "account": "acme", "repos": ["acme/notes"]}],
        "commits": [
            {"repo": "acme/notes", "sha": MAIN_SHA, "files": {"telbase.yaml": config_text()}},
            {"repo": "acme/notes", "sha": PR5_SHA, "files": {"telbase.yaml": config_text()}},
            {"repo": "acme/notes", "sha": PR6_SHA, "files": {"telbase.yaml": ttl_config}},
        ],
        "branches": [{"repo": "acme/notes", "branch": "main", "sha": MAIN_SHA}],
    }))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let running = serve::start(server_config(&emu, dir.path(), pem))
        .await
        .unwrap();
    let base = format!("http://{}", running.addr);
    let client = reqwest::Client::new();
    let github = running.reconciler.github.clone();

    // Production, through a webhook.
    assert_eq!(
        post(&client, &base, "push", "d-main", &push).await.status(),
        202
    );
    let jobs = settle(&running).await;
    assert_eq!(jobs[0].state, "done", "{jobs:?}");
    let production = providers(&emu.inventory());
    assert_eq!(production["vercel.projects"], 1, "{production:?}");

    // Pull request 5 opens, and its webhook never arrives; pull request 8 comes from a fork.
    emu.github_seed(&json!({"pulls": [
        {"repo": "acme/notes", "number": 5, "sha": PR5_SHA, "head_branch": "feature-5", "state": "open"},
        {"repo": "acme/notes", "number": 8, "sha": PR5_SHA, "head_branch": "evil", "head_repo": "mallory/notes", "state": "open"},
    ]}))
    .unwrap();
    assert_eq!(serve::poll_once(&running.queue, &github).await, Ok(1));
    let jobs = settle(&running).await;
    let last = jobs.last().unwrap();
    assert_eq!(last.delivery_id, format!("poll:acme/notes#5@{PR5_SHA}"));
    assert_eq!(last.state, "done", "{jobs:?}");
    let with_preview = providers(&emu.inventory());
    assert_eq!(
        with_preview["neon.branches"],
        production["neon.branches"] + 1,
        "pull request 5's database branch, and none for the fork's: {with_preview:?}"
    );
    assert!(with_preview["vercel.env"] > production["vercel.env"]);
    // The run says how it came about; the next poll sees the head previewed.
    {
        let held = running.queue.with(|s| s.held_previews()).unwrap();
        assert_eq!(held.len(), 1, "{held:?}");
        assert_eq!(held[0].pull_request, Some(5));
        assert_eq!(held[0].trigger, "poll");
        assert_eq!(held[0].outcome, "success");
    }
    assert_eq!(serve::poll_once(&running.queue, &github).await, Ok(0));
    assert_eq!(settle(&running).await.len(), jobs.len());

    // Pull request 5 closes without a webhook: the poll tears its preview down, all of it,
    // and production keeps everything it had.
    emu.github_seed(&json!({"pulls": [{"repo": "acme/notes", "number": 5, "state": "closed"}]}))
        .unwrap();
    assert_eq!(serve::poll_once(&running.queue, &github).await, Ok(1));
    let jobs = settle(&running).await;
    assert_eq!(jobs.last().unwrap().state, "done", "{jobs:?}");
    assert!(
        jobs.last()
            .unwrap()
            .delivery_id
            .starts_with("poll:acme/notes#5:closed@")
    );
    assert_eq!(
        providers(&emu.inventory()),
        production,
        "every preview resource is gone"
    );
    assert!(
        running
            .queue
            .with(|s| s.held_previews())
            .unwrap()
            .is_empty()
    );
    assert_eq!(serve::poll_once(&running.queue, &github).await, Ok(0));

    // Pull request 6 (its file: previews live 1 hour) gets a preview by the poll; the sweep
    // leaves it while fresh and tears it down once idle past the TTL.
    emu.github_seed(&json!({"pulls": [
        {"repo": "acme/notes", "number": 6, "sha": PR6_SHA, "head_branch": "feature-6", "state": "open"},
    ]}))
    .unwrap();
    assert_eq!(serve::poll_once(&running.queue, &github).await, Ok(1));
    let jobs = settle(&running).await;
    assert_eq!(jobs.last().unwrap().state, "done", "{jobs:?}");
    assert_eq!(providers(&emu.inventory()), with_preview);
    let now = chrono::Utc::now();
    let r = sweep::sweep_once(&running.queue, &running.reconciler, now)
        .await
        .unwrap();
    assert_eq!(r, sweep::SweepReport::default(), "nothing to sweep yet");
    let r = sweep::sweep_once(
        &running.queue,
        &running.reconciler,
        now + chrono::Duration::minutes(61),
    )
    .await
    .unwrap();
    assert_eq!(r.expired, 1, "{r:?}");
    assert_eq!((r.closed, r.orphans, r.previews), (0, 0, 0), "{r:?}");
    let jobs = settle(&running).await;
    assert_eq!(jobs.last().unwrap().state, "done", "{jobs:?}");
    assert!(
        jobs.last()
            .unwrap()
            .delivery_id
            .starts_with("sweep:acme/notes#6:ttl@")
    );
    assert_eq!(
        providers(&emu.inventory()),
        production,
        "the expired preview is gone"
    );
    // Still open, and its head had its preview: the poll does not bring it back.
    assert_eq!(serve::poll_once(&running.queue, &github).await, Ok(0));

    // An orphan: a branch of Telbase's Neon project, with Telbase's markers, for pull
    // request 99, which is not open (GitHub does not know it). And a look-alike: the same
    // markers on a branch of a project Telbase does not own.
    let projects = neon(&client, &emu.url(), "GET", "/projects", None).await;
    let owned = projects["projects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "notes-main")
        .expect("production's Neon project")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let markers =
        |n: u64| json!({"telbase-project": "notes", "telbase-environment": format!("pr-{n}")});
    let parent = |p: &Value| p["project"]["default_branch_id"].clone();
    let owned_project = neon(
        &client,
        &emu.url(),
        "GET",
        &format!("/projects/{owned}"),
        None,
    )
    .await;
    neon(
        &client,
        &emu.url(),
        "POST",
        &format!("/projects/{owned}/branches"),
        Some(json!({"branch": {"name": "pr-99", "parent_id": parent(&owned_project)}, "annotation_value": markers(99)})),
    )
    .await;
    let lookalike = neon(
        &client,
        &emu.url(),
        "POST",
        "/projects",
        Some(json!({"project": {"name": "notes-legacy"}})),
    )
    .await;
    let lookalike_id = lookalike["project"]["id"].as_str().unwrap().to_owned();
    neon(
        &client,
        &emu.url(),
        "POST",
        &format!("/projects/{lookalike_id}/branches"),
        Some(json!({"branch": {"name": "pr-99"}, "annotation_value": markers(99)})),
    )
    .await;
    let with_orphans = providers(&emu.inventory());
    assert_eq!(
        with_orphans["neon.branches"],
        production["neon.branches"] + 3
    );

    let r = sweep::sweep_once(&running.queue, &running.reconciler, chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(r.orphans, 1, "{r:?}");
    let jobs = settle(&running).await;
    assert_eq!(jobs.last().unwrap().state, "done", "{jobs:?}");
    let after = providers(&emu.inventory());
    assert_eq!(
        after["neon.branches"],
        with_orphans["neon.branches"] - 1,
        "only the orphan went: {after:?}"
    );
    let owned_branches = neon(
        &client,
        &emu.url(),
        "GET",
        &format!("/projects/{owned}/branches"),
        None,
    )
    .await;
    assert!(
        !owned_branches["branches"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["name"] == "pr-99"),
        "{owned_branches}"
    );
    let lookalike_branches = neon(
        &client,
        &emu.url(),
        "GET",
        &format!("/projects/{lookalike_id}/branches"),
        None,
    )
    .await;
    assert!(
        lookalike_branches["branches"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["name"] == "pr-99"),
        "the look-alike Telbase does not own stays: {lookalike_branches}"
    );
    // Production is as it was.
    assert_eq!(after["vercel.projects"], production["vercel.projects"]);
    assert_eq!(
        after["neon.projects"],
        production["neon.projects"] + 1,
        "plus the look-alike"
    );

    // Every pull request answer of the fake GitHub conforms to GitHub's description.
    if let Some(apis) = common::provider_apis() {
        let desc =
            ApiDescription::from_file(&apis.join("github/github-openapi.subset.json")).unwrap();
        let mut violations = Vec::new();
        let mut checked = 0;
        for x in emu
            .exchanges()
            .iter()
            .filter(|x| x.provider == "github" && x.path.contains("/pulls"))
        {
            checked += 1;
            let ex = Exchange::from(x);
            for v in desc.check(&ex) {
                violations.push(format!(
                    "{} {}: {}: {}",
                    x.method, x.path, v.operation, v.message
                ));
            }
        }
        assert!(checked >= 5, "{checked}");
        assert!(
            emu.exchanges()
                .iter()
                .any(|x| x.path.ends_with("/pulls/5") && x.status == 200),
            "a single pull request was read"
        );
        assert!(violations.is_empty(), "{}", violations.join("\n"));
    }

    running.stop().await;
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_pull_requests_are_read_across_pages() {
    let Some((pem, public)) = app_key() else {
        return;
    };
    let emu = emu::start(Config::default()).await;
    let pulls: Vec<Value> = (1..=230u64)
        .map(|n| {
            json!({"repo": "acme/notes", "number": n, "sha": format!("{n:040}"),
                   "head_branch": format!("b{n}"), "state": if n % 10 == 0 { "closed" } else { "open" },
                   "head_repo": if n == 7 { "mallory/notes" } else { "acme/notes" }})
        })
        .collect();
    emu.github_seed(&json!({
        "app_id": 42,
        "app_public_key_der_b64": base64::engine::general_purpose::STANDARD.encode(public),
        "installations": [{"id": 7, "account": "acme", "repos": ["acme/notes"]}],
        "pulls": pulls,
    }))
    .unwrap();
    let gh = telbase::github::app::GitHubApp::new(&telbase::github::app::AppConfig {
        app_id: 42,
        private_key: secrecy::SecretString::from(pem.clone()),
        base_url: format!("{}/github", emu.url()),
    })
    .unwrap();
    let open = gh.open_pulls(7, "acme/notes").await.unwrap();
    assert_eq!(open.len(), 207, "three pages, closed ones left out");
    let numbers: std::collections::BTreeSet<u64> = open.iter().map(|p| p.number).collect();
    assert_eq!(numbers.len(), 207);
    assert!(!numbers.contains(&10) && numbers.contains(&229));
    let fork = open.iter().find(|p| p.number == 7).unwrap();
    assert!(fork.from_fork);
    assert!(open.iter().filter(|p| p.number != 7).all(|p| !p.from_fork));
    assert_eq!(open[0].head_sha.len(), 40);
    let closed = gh.pull(7, "acme/notes", 20).await.unwrap().unwrap();
    assert_eq!(closed.state, "closed");
    assert!(closed.closed_at.is_some());
    assert_eq!(gh.pull(7, "acme/notes", 999).await.unwrap(), None);
    emu.stop().await;
}

//! Run pages of `telbase serve`: a push reconciles production through the App, the commit
//! status GitHub records links (`target_url`) to the run's page, and that page (HTML and
//! `.json`) shows the commit and the plan; a sealed value of the file never appears in
//! either, hostile text from the file is escaped, and unknown or malformed ids are 404.

mod common;

#[path = "common/serve_app.rs"]
mod serve_app;

use std::sync::Arc;

use base64::Engine as _;
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};
use telbase::emulator::Config;
use telbase::serve::{self, EdgeConfig, ServeConfig};

use common::{app_key, emu};
use serve_app::{post, push_main, server_config, settle};

const MAIN_SHA: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const NEXT_SHA: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const PLAINTEXT: &str = "sk_live_do-not-show-this-9f8e7d";
const PLAINTEXT_2: &str = "sk_live_rotated-also-secret-4c3b2a";

fn sealed_config(id: &age::x25519::Identity, plain: &str, site: &str) -> String {
    let mut armor = Vec::new();
    telbase::secrets::seal(
        plain.as_bytes(),
        std::slice::from_ref(&id.to_public()),
        &mut armor,
    )
    .unwrap();
    let indented: String = String::from_utf8(armor)
        .unwrap()
        .lines()
        .map(|l| format!("          {l}\n"))
        .collect();
    emu::quickstart("notes").replace(
        "      SITE: notes\n",
        &format!(
            "      SITE: {}\n      TOKEN:\n        sealed: |\n{indented}",
            serde_json::to_string(site).unwrap()
        ),
    )
}
const HOSTILE: &str = "<script>alert('x')</script>&<b onload=\"y\">";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_links_to_a_run_page_that_shows_the_plan_and_no_secret() {
    let Some((pem, public)) = app_key() else {
        return;
    };
    let (Some(push), Some(push_next)) = (push_main(MAIN_SHA), push_main(NEXT_SHA)) else {
        return;
    };
    // A sealed value the server opens with its age identity; the next commit re-seals a
    // new value and sets a plain value full of markup (an update shows both in the plan:
    // the plain one as it is, the sealed one by fingerprint).
    let id = age::x25519::Identity::generate();
    let config = sealed_config(&id, PLAINTEXT, "notes");
    let next = sealed_config(&id, PLAINTEXT_2, HOSTILE);
    assert!(config.contains("sealed: |"), "{config}");

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
            {"repo": "acme/notes", "sha": MAIN_SHA, "files": {"telbase.yaml": config}},
            {"repo": "acme/notes", "sha": NEXT_SHA, "files": {"telbase.yaml": next}},
        ],
    }))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let addr = serve_app::free_addr();
    let public_url = format!("http://{addr}");
    let running = serve::start_with(
        ServeConfig {
            listen: addr,
            // A trailing slash is tolerated.
            public_url: Some(format!("{public_url}/")),
            opener: Arc::new(telbase::apply::AgeOpener(vec![id.clone()])),
            ..server_config(&emu, dir.path(), pem)
        },
        EdgeConfig {
            run_list: true,
            ..EdgeConfig::default()
        },
    )
    .await
    .unwrap();
    let base = format!("http://{}", running.addr);
    let client = reqwest::Client::new();

    let r = post(&client, &base, "push", "d-runs-1", &push).await;
    assert_eq!(r.status(), 202);
    let jobs = settle(&running).await;
    assert_eq!(jobs[0].state, "done", "{jobs:?}");
    let first: Value = emu
        .exchanges()
        .into_iter()
        .filter(|x| x.provider == "github" && x.path.ends_with(&format!("/statuses/{MAIN_SHA}")))
        .map(|x| serde_json::from_slice(&x.request_body).unwrap())
        .next_back()
        .unwrap();
    let first_page = client
        .get(first["target_url"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(first_page.contains("Plan: 3 to create"), "{first_page}");
    assert!(
        first_page.contains("vercel/project/notes-web"),
        "the report: {first_page}"
    );
    assert!(!first_page.contains(PLAINTEXT));

    let r = post(&client, &base, "push", "d-runs-next", &push_next).await;
    assert_eq!(r.status(), 202);
    let jobs = settle(&running).await;
    assert_eq!(jobs[1].state, "done", "{jobs:?}");

    // Both statuses (pending, then success) link to the same run page.
    let statuses: Vec<Value> = emu
        .exchanges()
        .into_iter()
        .filter(|x| x.provider == "github" && x.path.ends_with(&format!("/statuses/{NEXT_SHA}")))
        .map(|x| serde_json::from_slice(&x.request_body).unwrap())
        .collect();
    assert_eq!(statuses.len(), 2, "{statuses:?}");
    assert_eq!(statuses[1]["state"], "success", "{statuses:?}");
    let target = statuses[1]["target_url"].as_str().expect("a target_url");
    assert_eq!(statuses[0]["target_url"], statuses[1]["target_url"]);
    let run_id = target
        .strip_prefix(&format!("{public_url}/runs/"))
        .unwrap_or_else(|| panic!("{target} is not a run page of {public_url}"));
    assert_eq!(run_id.len(), 26, "128 random bits in base32: {run_id}");

    // The page: commit, plan summary, per-resource report; escaped; no secret.
    let r = client.get(target).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"),
        "{:?}",
        r.headers()
    );
    assert!(r.headers().contains_key("content-security-policy"));
    assert!(r.headers().contains_key("strict-transport-security"));
    let page = r.text().await.unwrap();
    assert!(page.contains(NEXT_SHA), "{page}");
    assert!(
        page.contains(&format!("https://github.com/acme/notes/commit/{NEXT_SHA}")),
        "links to the commit on GitHub"
    );
    assert!(
        page.contains("Plan: 0 to create, 1 to update"),
        "the plan summary: {page}"
    );
    assert!(
        page.contains("Applied: 0 created, 1 updated"),
        "the run summary: {page}"
    );
    // The deployed URL as the uptime probes see it (probing is off in this test, so its
    // state is not known yet; tests/uptime.rs drives the probes).
    assert!(page.contains("<h2>Uptime now</h2>"), "uptime: {page}");
    assert!(page.contains(".vercel.app"), "the production URL: {page}");
    assert!(page.contains("not known yet"), "{page}");
    assert!(
        page.contains("vercel/project/notes-web"),
        "the report: {page}"
    );
    assert!(
        page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&lt;b onload="),
        "the hostile value is shown escaped: {page}"
    );
    assert!(!page.contains("<script"), "{page}");
    assert!(!page.contains("<b onload"), "{page}");
    for secret in [PLAINTEXT, PLAINTEXT_2] {
        assert!(
            !page.contains(secret),
            "a sealed value leaked into the page"
        );
    }

    // The same as JSON.
    let r = client.get(format!("{target}.json")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    for secret in [PLAINTEXT, PLAINTEXT_2] {
        assert!(!text.contains(secret), "a sealed value leaked into JSON");
    }
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["id"], run_id);
    assert_eq!(v["sha"], NEXT_SHA);
    assert_eq!(v["repo"], "acme/notes");
    assert_eq!(v["environment"], "production");
    assert_eq!(v["trigger"], "push");
    assert_eq!(v["outcome"], "success");
    assert!(v["ended_at"].as_i64().unwrap() >= v["started_at"].as_i64().unwrap());
    assert!(
        v["plan"]
            .as_str()
            .unwrap()
            .contains("Plan: 0 to create, 1 to update")
    );
    let steps = v["report"]
        .as_array()
        .expect("the report is a list of steps");
    assert_eq!(steps.len(), 1, "{steps:?}");
    assert_eq!(steps[0]["key"], "vercel/project/notes-web");
    assert!(steps.iter().all(|s| s["outcome"] == "done"), "{steps:?}");
    // The plan names the sealed value by fingerprint; the value itself went to Vercel.
    assert!(
        v["plan"].as_str().unwrap().contains("TOKEN"),
        "{}",
        v["plan"]
    );
    let delivered = emu.exchanges().into_iter().any(|x| {
        x.provider == "vercel" && String::from_utf8_lossy(&x.request_body).contains(PLAINTEXT_2)
    });
    assert!(
        delivered,
        "positive control: the sealed value reached Vercel"
    );

    // Nothing in the store's run rows holds the value either.
    let db = std::fs::read(dir.path().join("telbase.db")).unwrap();
    let wal = std::fs::read(dir.path().join("telbase.db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        for secret in [PLAINTEXT, PLAINTEXT_2] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "a sealed value is stored in the database"
            );
        }
    }

    // The repository's list links to the run.
    let r = client
        .get(format!("{base}/runs?repo=acme/notes"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let list = r.text().await.unwrap();
    assert!(list.contains(&format!("href=\"runs/{run_id}\"")), "{list}");
    let r = client
        .get(format!("{base}/runs?repo=acme/<x>"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = client
        .get(format!("{base}/runs?repo=other/repo"))
        .send()
        .await
        .unwrap();
    assert!(!r.text().await.unwrap().contains(run_id));

    // Unknown and malformed ids.
    let unknown = telbase::serve::runs::new_id();
    for path in [
        format!("/runs/{unknown}"),
        format!("/runs/{unknown}.json"),
        "/runs/not-an-id".into(),
        format!("/runs/{}", run_id.to_uppercase()),
    ] {
        let r = client.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    let _ = id.to_string().expose_secret().len();

    running.stop().await;
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_public_url_statuses_have_no_target_url() {
    let Some((pem, public)) = app_key() else {
        return;
    };
    let Some(push) = push_main(MAIN_SHA) else {
        return;
    };
    let emu = emu::start(Config {
        capture: true,
        ..Config::default()
    })
    .await;
    emu.github_seed(&json!({
        "app_id": 42,
        "app_public_key_der_b64": base64::engine::general_purpose::STANDARD.encode(public),
        "installations": [{"id": 7, "account": "acme", "repos": ["acme/notes"]}],
        "commits": [{"repo": "acme/notes", "sha": MAIN_SHA, "files": {"telbase.yaml": emu::quickstart("notes")}}],
    }))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let running = serve::start(server_config(&emu, dir.path(), pem))
        .await
        .unwrap();
    let base = format!("http://{}", running.addr);
    let client = reqwest::Client::new();
    assert_eq!(
        post(&client, &base, "push", "d-runs-2", &push)
            .await
            .status(),
        202
    );
    settle(&running).await;
    let statuses: Vec<Value> = emu
        .exchanges()
        .into_iter()
        .filter(|x| x.provider == "github" && x.path.contains("/statuses/"))
        .map(|x| serde_json::from_slice(&x.request_body).unwrap())
        .collect();
    assert_eq!(statuses.len(), 2);
    assert!(
        statuses
            .iter()
            .all(|s| s.get("target_url").is_none_or(Value::is_null)),
        "{statuses:?}"
    );
    // The run is still recorded, but not listed: the list is off unless asked for, since it
    // hands out run ids to anyone who can reach the server.
    let recorded = running
        .queue
        .with(|s| s.runs_of("acme/notes", 10, 0))
        .unwrap();
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let list = client
        .get(format!("{base}/runs?repo=acme/notes"))
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), 404);
    running.stop().await;
    emu.stop().await;
}

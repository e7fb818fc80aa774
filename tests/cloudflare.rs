//! Cloudflare end to end against the emulator, with the nextjs-neon example (Vercel + Neon +
//! Cloudflare edge and Access): apply converges and a second plan is empty; drift in every
//! Cloudflare kind (a lowered TLS floor, a record no longer proxied, a deleted record, a
//! widened policy, a changed Access application) is shown and put back; a preview gets its
//! own record and Access application and its teardown removes exactly those; faults never
//! leave duplicates; a hand-made record at a wanted hostname is refused and never touched.

mod common;

use common::emu;
use serde_json::{Value, json};
use telbase::apply::Outcome;
use telbase::emulator::{Config, Faults};
use telbase::model::{Environment, Kind, Provider};
use telbase::plan::Action;
use telbase::providers::{self, Credentials, GitRef, Scope};

const SHA: &str = "4f2a9c1e0b7d3a5f6e8c9b0a1d2e3f4a5b6c7d8e";

fn example() -> String {
    std::fs::read_to_string(common::root().join("examples/nextjs-neon/telbase.yaml")).unwrap()
}

/// The preview of pull request `pr` of the nextjs-neon example.
fn preview(url: &str, pr: u64, http: telbase::providers::http::HttpConfig) -> emu::Run {
    let (mut desired, _) =
        telbase::config::load_str(&example(), Environment::Preview { pull_request: pr })
            .expect("valid");
    let repo = format!("telbase-tests/{}", desired.project);
    desired.pin_git(Some(&repo), SHA);
    let http = telbase::providers::http::Http::new(http).unwrap();
    let creds = Credentials {
        emulator: Some(url.to_owned()),
        ..Credentials::default()
    };
    let registry = providers::registry_for(&desired, &creds, &http).unwrap();
    let scope = Scope {
        project: desired.project.clone(),
        environment: desired.environment,
        git: Some(GitRef {
            repo,
            sha: SHA.into(),
            branch: format!("feature-{pr}"),
        }),
    };
    emu::Run {
        desired,
        scope,
        registry,
        http,
    }
}

fn updates(plan: &telbase::plan::Plan) -> Vec<String> {
    plan.steps
        .iter()
        .filter(|s| s.key.provider() == Provider::Cloudflare && s.action != Action::NoOp)
        .map(|s| {
            let fields: Vec<&str> = s.changes.iter().map(|c| c.path.as_str()).collect();
            format!("{:?} {} {}", s.action, s.key, fields.join(","))
                .trim_end()
                .to_owned()
        })
        .collect()
}

/// The DNS records at a name, read straight from the emulated API.
async fn records_at(url: &str, zone: &str, name: &str) -> Vec<Value> {
    let c = reqwest::Client::new();
    let base = format!("{url}/cloudflare/client/v4");
    let auth = format!("Bearer {}", telbase::emulator::EMULATOR_TOKEN);
    let zones: Value = c
        .get(format!("{base}/zones?name={zone}"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let zid = zones["result"][0]["id"].as_str().unwrap().to_owned();
    let recs: Value = c
        .get(format!("{base}/zones/{zid}/dns_records?name={name}"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    recs["result"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nextjs_neon_converges_then_plans_nothing() {
    let emu = emu::start(Config::default()).await;
    let run = emu::run(&example(), &emu.url(), SHA, emu::http_config());
    let (plan, actual) = run.plan().await.unwrap();
    assert_eq!(
        updates(&plan),
        [
            "Create cloudflare/zone-settings/example.com",
            "Create cloudflare/dns-record/example.com",
            "Create cloudflare/dns-record/www.example.com",
            "Create cloudflare/access-policy/notes-staff",
        ]
    );
    let report = run.apply(plan, actual, 4).await;
    assert!(report.succeeded(), "{report:?}");
    let inv = emu.inventory();
    // Two proxied CNAMEs and the TXT record that claims the zone's baseline.
    assert_eq!(inv["cloudflare.dns_records"], 3, "{inv:?}");
    assert_eq!(inv["cloudflare.access_policies"], 1, "{inv:?}");
    assert_eq!(
        inv["cloudflare.access_apps"], 0,
        "production is public: {inv:?}"
    );

    let writes = emu.counters().writes;
    let (plan, _) = run.plan().await.unwrap();
    assert!(!plan.has_changes(), "{}", telbase::plan::render_text(&plan));
    assert_eq!(
        emu.counters().writes,
        writes,
        "a no-change plan writes nothing"
    );

    let www = records_at(&emu.url(), "example.com", "www.example.com").await;
    assert_eq!(www.len(), 1);
    assert_eq!(www[0]["type"], "CNAME");
    assert_eq!(www[0]["content"], "cname.vercel-dns.com");
    assert_eq!(www[0]["proxied"], true);
    assert_eq!(
        www[0]["comment"],
        "telbase project=notes env=production target=vercel/web"
    );
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_in_every_kind_is_shown_and_put_back() {
    let emu = emu::start(Config::default()).await;
    let url = emu.url();
    let run = emu::run(&example(), &url, SHA, emu::http_config());
    run.converge(4).await.unwrap();
    let pr = preview(&url, 7, emu::http_config());
    pr.converge(4).await.unwrap();
    assert_eq!(emu.inventory()["cloudflare.access_apps"], 1);

    for body in [
        json!({"provider": "cloudflare", "zone": "example.com", "settings": {"min_tls_version": "1.0", "always_use_https": "off"}}),
        json!({"provider": "cloudflare", "zone": "example.com", "record": "www.example.com", "set": {"proxied": false}}),
        json!({"provider": "cloudflare", "zone": "example.com", "record": "example.com", "delete": true}),
        json!({"provider": "cloudflare", "access_policy": "notes-staff", "set": {"session_duration": "720h", "include": [{"everyone": {}}]}}),
        json!({"provider": "cloudflare", "access_app": "notes-web-pr-7", "set": {"self_hosted_domains": ["web-pr-7.example.com", "intruder.example.com"], "policies": []}}),
    ] {
        emu.drift(&body).unwrap();
    }
    let (plan, actual) = run.plan().await.unwrap();
    let text = telbase::plan::render_text(&plan);
    assert_eq!(
        updates(&plan),
        [
            "Update cloudflare/zone-settings/example.com always_use_https,min_tls_version",
            "Create cloudflare/dns-record/example.com",
            "Update cloudflare/dns-record/www.example.com proxied",
            "Update cloudflare/access-policy/notes-staff allow_domains,allow_emails,session_seconds",
        ],
        "{text}"
    );
    assert!(
        text.contains("min_tls_version: \"1.0\" → \"1.2\""),
        "{text}"
    );
    let report = run.apply(plan, actual, 4).await;
    assert!(report.succeeded(), "{report:?}");

    let (plan, actual) = pr.plan().await.unwrap();
    assert_eq!(
        updates(&plan),
        ["Update cloudflare/access-app/notes-web-pr-7 domains,policy.name"],
        "{}",
        telbase::plan::render_text(&plan)
    );
    let report = pr.apply(plan, actual, 4).await;
    assert!(report.succeeded(), "{report:?}");

    for r in [&run, &pr] {
        let (plan, _) = r.plan().await.unwrap();
        assert!(!plan.has_changes(), "{}", telbase::plan::render_text(&plan));
    }
    assert_eq!(emu.inventory()["cloudflare.dns_records"], 4);
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preview_gets_its_access_app_and_teardown_removes_only_its_own() {
    let emu = emu::start(Config::default()).await;
    let url = emu.url();
    let run = emu::run(&example(), &url, SHA, emu::http_config());
    run.converge(4).await.unwrap();
    let pr = preview(&url, 7, emu::http_config());
    // The preview never writes production's shared resources.
    assert!(
        !pr.desired
            .resources
            .keys()
            .any(|k| matches!(k.kind, Kind::ZoneSettings | Kind::AccessPolicy))
    );
    pr.converge(4).await.unwrap();
    let inv = emu.inventory();
    assert_eq!(inv["cloudflare.access_apps"], 1, "{inv:?}");
    assert_eq!(inv["cloudflare.dns_records"], 4, "{inv:?}");
    let rec = records_at(&url, "example.com", "web-pr-7.example.com").await;
    assert_eq!(rec.len(), 1);
    assert_eq!(
        rec[0]["comment"],
        "telbase project=notes env=pr-7 target=vercel/web"
    );
    // Production does not see the preview's resources, and the preview not production's.
    let (plan, _) = run.plan().await.unwrap();
    assert!(!plan.has_changes(), "{}", telbase::plan::render_text(&plan));
    let seen = pr.observe().await.unwrap();
    let cf: Vec<String> = seen
        .resources
        .keys()
        .filter(|k| k.provider() == Provider::Cloudflare)
        .map(|k| k.to_string())
        .collect();
    assert_eq!(
        cf,
        [
            "cloudflare/dns-record/web-pr-7.example.com",
            "cloudflare/access-app/notes-web-pr-7"
        ]
    );

    // Teardown of the preview's edge: the file without them, prune on.
    let mut down = preview(&url, 7, emu::http_config());
    down.desired
        .resources
        .retain(|k, _| k.provider() != Provider::Cloudflare);
    down.desired.reconcile.prune = true;
    let (plan, actual) = down.plan().await.unwrap();
    assert_eq!(
        updates(&plan),
        [
            "Delete cloudflare/access-app/notes-web-pr-7",
            "Delete cloudflare/dns-record/web-pr-7.example.com",
        ]
    );
    let report = down.apply(plan, actual, 4).await;
    assert!(report.succeeded(), "{report:?}");
    let inv = emu.inventory();
    assert_eq!(inv["cloudflare.access_apps"], 0, "{inv:?}");
    assert_eq!(inv["cloudflare.dns_records"], 3, "{inv:?}");
    assert_eq!(
        inv["cloudflare.access_policies"], 1,
        "production's policy stays"
    );
    let (plan, _) = run.plan().await.unwrap();
    assert!(!plan.has_changes(), "{}", telbase::plan::render_text(&plan));
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preview_before_production_says_what_is_missing() {
    let emu = emu::start(Config::default()).await;
    let pr = preview(&emu.url(), 3, emu::http_config());
    let app = pr
        .desired
        .resources
        .values()
        .find(|r| r.key.kind == Kind::AccessApplication)
        .unwrap();
    let e = pr.registry[&Provider::Cloudflare]
        .apply(
            &pr.scope,
            telbase::providers::Change::Create { desired: app },
            &telbase::providers::Inputs::default(),
            &pr.desired,
        )
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(text.starts_with("cloudflare: "), "{text}");
    assert!(
        text.contains("notes-staff does not exist yet; apply production first"),
        "{text}"
    );
    assert_eq!(emu.inventory()["cloudflare.access_apps"], 0);
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_converge_without_duplicates() {
    let emu = emu::start(Config {
        faults: Faults {
            rate_5xx: 0.20,
            rate_429: 0.10,
            rate_timeout: 0.05,
            rate_reset: 0.03,
            rate_garbage: 0.03,
            stall: std::time::Duration::from_millis(2000),
            seed: std::env::var("TELBASE_FAULT_SEED")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(11),
            ..Faults::default()
        },
        ..Config::default()
    })
    .await;
    let url = emu.url();
    let run = emu::run(&example(), &url, SHA, emu::http_config());
    run.converge(30).await.unwrap();
    let pr = preview(&url, 9, emu::http_config());
    pr.converge(30).await.unwrap();
    let c = emu.counters();
    assert!(
        c.by_provider["cloudflare"].reads + c.by_provider["cloudflare"].writes > 20,
        "{c:?}"
    );
    assert!(
        c.faults.get("5xx").copied().unwrap_or(0) > 5,
        "{:?}",
        c.faults
    );
    assert!(
        c.faults.get("timeout").copied().unwrap_or(0) > 0,
        "{:?}",
        c.faults
    );
    let inv = emu.inventory();
    assert_eq!(inv["cloudflare.dns_records"], 4, "{inv:?}");
    assert_eq!(inv["cloudflare.access_policies"], 1, "{inv:?}");
    assert_eq!(inv["cloudflare.access_apps"], 1, "{inv:?}");
    assert_eq!(inv["cloudflare.zones"], 1, "{inv:?}");
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_made_record_at_a_wanted_name_is_refused_and_untouched() {
    let emu = emu::start(Config::default()).await;
    let url = emu.url();
    emu.drift(&json!({"provider": "cloudflare", "zone": "example.com", "add_record": {"name": "www.example.com", "type": "A", "content": "192.0.2.10", "proxied": false}}))
        .unwrap();
    // Another project's record, marked as theirs, is just as foreign.
    emu.drift(&json!({"provider": "cloudflare", "zone": "example.com", "add_record": {"name": "example.com", "type": "CNAME", "content": "other.example.net", "proxied": true, "comment": "telbase project=other env=production target=vercel/web"}}))
        .unwrap();
    let run = emu::run(&example(), &url, SHA, emu::http_config());
    let (plan, actual) = run.plan().await.unwrap();
    let report = run.apply(plan, actual, 4).await;
    for host in ["www.example.com", "example.com"] {
        let step = report
            .steps
            .iter()
            .find(|s| s.key.kind == Kind::DnsRecord && s.key.name == host)
            .unwrap();
        match &step.outcome {
            Outcome::Failed { error } => {
                assert!(
                    error.contains("exists but was not created by Telbase"),
                    "{error}"
                );
                assert!(error.contains(host), "{error}");
            }
            other => panic!("{host}: {other:?}"),
        }
    }
    let www = records_at(&url, "example.com", "www.example.com").await;
    assert_eq!(www.len(), 1);
    assert_eq!(www[0]["type"], "A");
    assert_eq!(www[0]["content"], "192.0.2.10");
    assert!(www[0].get("comment").is_none());
    let apex = records_at(&url, "example.com", "example.com").await;
    assert_eq!(apex.len(), 1);
    assert_eq!(apex[0]["content"], "other.example.net");
    // Observe never reports them as Telbase's.
    let seen = run.observe().await.unwrap();
    assert!(!seen.resources.keys().any(|k| k.kind == Kind::DnsRecord));
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_outside_the_account_is_a_clear_error() {
    let emu = emu::start(Config::default()).await;
    let text = example().replace("example.com", "example.invalid");
    let run = emu::run(&text, &emu.url(), SHA, emu::http_config());
    let (plan, actual) = run.plan().await.unwrap();
    let report = run.apply(plan, actual, 4).await;
    let step = report
        .steps
        .iter()
        .find(|s| s.key.kind == Kind::ZoneSettings)
        .unwrap();
    match &step.outcome {
        Outcome::Failed { error } => assert!(
            error.contains("cloudflare:")
                && error.contains("the zone `example.invalid` is not in Cloudflare account"),
            "{error}"
        ),
        other => panic!("{other:?}"),
    }
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_edge_lowers_nothing() {
    let emu = emu::start(Config::default()).await;
    let url = emu.url();
    let run = emu::run(&example(), &url, SHA, emu::http_config());
    run.converge(4).await.unwrap();
    let mut gone = emu::run(&example(), &url, SHA, emu::http_config());
    gone.desired
        .resources
        .retain(|k, _| k.kind != Kind::ZoneSettings);
    gone.desired.reconcile.prune = true;
    let (plan, actual) = gone.plan().await.unwrap();
    assert_eq!(
        updates(&plan),
        ["Delete cloudflare/zone-settings/example.com"]
    );
    let report = gone.apply(plan, actual, 4).await;
    assert!(report.succeeded(), "{report:?}");
    let (plan, _) = gone.plan().await.unwrap();
    assert!(!plan.has_changes(), "{}", telbase::plan::render_text(&plan));
    // The settings stay where Telbase left them; only the claim is gone.
    let c = reqwest::Client::new();
    let base = format!("{url}/cloudflare/client/v4");
    let auth = format!("Bearer {}", telbase::emulator::EMULATOR_TOKEN);
    let zones: Value = c
        .get(format!("{base}/zones?name=example.com"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let zid = zones["result"][0]["id"].as_str().unwrap();
    let settings: Value = c
        .get(format!("{base}/zones/{zid}/settings"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let min_tls = settings["result"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "min_tls_version")
        .unwrap();
    assert_eq!(min_tls["value"], "1.2");
    assert!(
        records_at(&url, "example.com", "_telbase.example.com")
            .await
            .is_empty()
    );
    emu.stop().await;
}

/// Plan renderings of Cloudflare creates, drift (the zone baseline above all) and deletes.
#[test]
fn plan_goldens() {
    use telbase::model::{ActualState, Observed, ResourceSpec};
    use telbase::plan;
    let (mut desired, _) =
        telbase::config::load_str(&example(), Environment::Production).expect("valid");
    desired
        .resources
        .retain(|k, _| k.provider() == Provider::Cloudflare);
    let converged = |d: &telbase::model::DesiredState| ActualState {
        resources: d
            .resources
            .values()
            .map(|r| {
                (
                    r.key.clone(),
                    Observed {
                        key: r.key.clone(),
                        spec: r.spec.clone(),
                        provider_id: format!("id-{}", r.key.name),
                        deletion_allowed: false,
                    },
                )
            })
            .collect(),
    };
    let golden =
        |name: &str| common::root().join(format!("tests/golden/plan/cloudflare-{name}.txt"));

    let p = plan::plan(&desired, &ActualState::default());
    assert_eq!(p.summary().create, 4);
    common::assert_golden(&golden("create"), &plan::render_text(&p));

    // Someone lowered the TLS floor, switched off HTTPS redirects, SSL strict and HSTS, and
    // greyed out a record's proxy; the policy was widened to a month.
    let mut drifted = converged(&desired);
    for o in drifted.resources.values_mut() {
        match &mut o.spec {
            ResourceSpec::ZoneSettings(z) => {
                z.min_tls_version = "1.0";
                z.always_use_https = false;
                z.ssl_mode = "flexible";
                z.hsts_max_age_seconds = 0;
                z.hsts_include_subdomains = false;
                z.hsts_preload = false;
            }
            ResourceSpec::DnsRecord(r) if r.hostname == "www.example.com" => r.proxied = false,
            ResourceSpec::AccessPolicy(p) => p.session_seconds = 30 * 86_400,
            _ => {}
        }
    }
    let p = plan::plan(&desired, &drifted);
    assert_eq!(p.summary().update, 3);
    common::assert_golden(&golden("update"), &plan::render_text(&p));

    // The edge and the policy leave the file (prune on): the records and the policy go, and
    // the zone settings are released, not lowered.
    let actual = converged(&desired);
    let mut smaller = desired.clone();
    smaller.resources.clear();
    smaller.reconcile.prune = true;
    let p = plan::plan(&smaller, &actual);
    assert_eq!(p.summary().delete, 4);
    common::assert_golden(&golden("delete"), &plan::render_text(&p));
}

/// The example runs end to end through the CLI: apply, then a plan with nothing to do.
#[test]
fn the_cli_applies_nextjs_neon_end_to_end() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let emu = rt.block_on(emu::start(Config::default()));
    let url = emu.url();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("telbase.yaml");
    std::fs::write(&cfg, example()).unwrap();
    let cfg = cfg.to_str().unwrap();
    let out = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let o = common::telbase(
        &[
            "apply",
            "--config",
            cfg,
            "--emulator",
            &url,
            "--auto-approve",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", out(&o));
    assert!(out(&o).contains("Apply complete: 9 done."), "{}", out(&o));
    let o = common::telbase(
        &[
            "plan",
            "--config",
            cfg,
            "--emulator",
            &url,
            "--detailed-exitcode",
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert!(out(&o).contains("no changes"), "{}", out(&o));
    let inv = emu.inventory();
    assert_eq!(inv["cloudflare.dns_records"], 3, "{inv:?}");
    assert_eq!(inv["cloudflare.access_policies"], 1, "{inv:?}");
    rt.block_on(emu.stop());
}

/// A change to a policy's sign-in methods or session reaches the Access applications that
/// use it, previews included, at their next reconcile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_reaches_the_apps_that_use_it() {
    use telbase::model::ResourceSpec;
    let emu = emu::start(Config::default()).await;
    let url = emu.url();
    let mut run = emu::run(&example(), &url, SHA, emu::http_config());
    run.converge(4).await.unwrap();
    let pr = preview(&url, 4, emu::http_config());
    pr.converge(4).await.unwrap();
    for r in run.desired.resources.values_mut() {
        if let ResourceSpec::AccessPolicy(p) = &mut r.spec {
            p.login = vec!["github", "google"];
            p.session_seconds = 3600;
        }
    }
    let (plan, _) = run.plan().await.unwrap();
    assert_eq!(
        updates(&plan),
        ["Update cloudflare/access-policy/notes-staff login,session_seconds"]
    );
    run.converge(4).await.unwrap();
    let (plan, _) = pr.plan().await.unwrap();
    let text = telbase::plan::render_text(&plan);
    assert_eq!(
        updates(&plan),
        ["Update cloudflare/access-app/notes-web-pr-4 policy.name"],
        "{text}"
    );
    assert!(
        text.contains("\"notes-staff (sign-in options out of date)\" → \"notes-staff\""),
        "{text}"
    );
    pr.converge(4).await.unwrap();
    let c = reqwest::Client::new();
    let apps: Value = c
        .get(format!(
            "{url}/cloudflare/client/v4/accounts/telbase-emulator/access/apps"
        ))
        .header(
            "authorization",
            format!("Bearer {}", telbase::emulator::EMULATOR_TOKEN),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let app = &apps["result"][0];
    assert_eq!(app["allowed_idps"].as_array().unwrap().len(), 2, "{app}");
    assert_eq!(app["session_duration"], "1h");
    assert_eq!(app["auto_redirect_to_identity"], false);
    emu.stop().await;
}

/// A copy of one of Telbase's policies (a create whose answer was lost before the list
/// showed it) is removed at the next write rather than left to confuse later runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_policy_is_cleaned_up_at_the_next_write() {
    use telbase::model::ResourceSpec;
    let emu = emu::start(Config::default()).await;
    let url = emu.url();
    let mut run = emu::run(&example(), &url, SHA, emu::http_config());
    run.converge(4).await.unwrap();
    let r = reqwest::Client::new()
        .post(format!(
            "{url}/cloudflare/client/v4/accounts/telbase-emulator/access/policies"
        ))
        .header(
            "authorization",
            format!("Bearer {}", telbase::emulator::EMULATOR_TOKEN),
        )
        .json(&json!({"name": "notes-staff (telbase project=notes)", "decision": "allow", "include": [{"email_domain": {"domain": "example.com"}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(emu.inventory()["cloudflare.access_policies"], 2);
    for r in run.desired.resources.values_mut() {
        if let ResourceSpec::AccessPolicy(p) = &mut r.spec {
            p.session_seconds = 7200;
        }
    }
    run.converge(4).await.unwrap();
    assert_eq!(emu.inventory()["cloudflare.access_policies"], 1);
    emu.stop().await;
}

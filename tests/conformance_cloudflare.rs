//! Cloudflare conformance: a run that uses every operation the Cloudflare client knows
//! (production converge, drift and correction, a preview's Access application, teardown)
//! is recorded by the emulator, and every exchange is checked against Cloudflare's published
//! description: the 2024 subset, plus the zone-settings operations taken at run time from
//! the full description beside it (gzipped; decompressed with `gzip -dc` into memory, never
//! committed). What the real API does differently from that description is listed once, in
//! `DEVIATIONS`, each with its reason; anything else fails.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::emu;
use serde_json::{Value, json};
use telbase::conformance::{ApiDescription, Exchange};
use telbase::emulator::Config;
use telbase::model::{Environment, Provider};
use telbase::providers::{self, Change, Credentials, GitRef, Inputs, Scope};

const SHA: &str = "4f2a9c1e0b7d3a5f6e8c9b0a1d2e3f4a5b6c7d8e";

/// Every operation the Cloudflare client uses, as the description names them.
const OPERATIONS: &[&str] = &[
    "GET /zones",
    "GET /zones/{zone_id}/settings",
    "PATCH /zones/{zone_id}/settings/{setting_id}",
    "GET /zones/{zone_id}/dns_records",
    "POST /zones/{zone_id}/dns_records",
    "PATCH /zones/{zone_id}/dns_records/{dns_record_id}",
    "DELETE /zones/{zone_id}/dns_records/{dns_record_id}",
    "GET /accounts/{account_id}/access/identity_providers",
    "GET /accounts/{account_id}/access/policies",
    "POST /accounts/{account_id}/access/policies",
    "PUT /accounts/{account_id}/access/policies/{policy_id}",
    "DELETE /accounts/{account_id}/access/policies/{policy_id}",
    "GET /accounts/{account_id}/access/apps",
    "POST /accounts/{account_id}/access/apps",
    "PUT /accounts/{account_id}/access/apps/{app_id}",
    "DELETE /accounts/{account_id}/access/apps/{app_id}",
];

/// Where the real API differs from its 2024 description: the operation, fragments that
/// must all appear in the violation message, and why. Nothing else is excused.
const DEVIATIONS: &[(&str, &[&str], &str)] = &[
    // The Access list endpoints are paged today (`page`/`per_page` and `result_info`; the
    // current SDKs page them), but the 2024 description declares no query parameters for
    // them. The client pages them: reading one page of a longer list could make duplicates.
    (
        "GET /accounts/{account_id}/access/identity_providers",
        &["query parameter `per_page` is not declared"],
        "Access lists are paged today",
    ),
    (
        "GET /accounts/{account_id}/access/policies",
        &["query parameter `per_page` is not declared"],
        "Access lists are paged today",
    ),
    (
        "GET /accounts/{account_id}/access/apps",
        &["query parameter `per_page` is not declared"],
        "Access lists are paged today",
    ),
    (
        "GET /accounts/{account_id}/access/identity_providers",
        &["query parameter `page` is not declared"],
        "Access lists are paged today",
    ),
    // The description marks a record DELETE's request body required; the API takes none, and
    // Cloudflare's own clients send none.
    (
        "DELETE /zones/{zone_id}/dns_records/{dns_record_id}",
        &["request body is required but none was sent"],
        "no body on DELETE",
    ),
    // `dns-records_dns-record`, used for request bodies too, lists the server-assigned `id`,
    // `proxiable`, `created_on` and `modified_on` as required: a client cannot send the id of
    // a record that does not exist yet.
    (
        "POST /zones/{zone_id}/dns_records",
        &["request body at (root): \"id\" is a required property"],
        "server-assigned fields required in requests",
    ),
    (
        "POST /zones/{zone_id}/dns_records",
        &["request body at (root): \"proxiable\" is a required property"],
        "server-assigned fields required in requests",
    ),
    (
        "POST /zones/{zone_id}/dns_records",
        &["request body at (root): \"created_on\" is a required property"],
        "server-assigned fields required in requests",
    ),
    (
        "POST /zones/{zone_id}/dns_records",
        &["request body at (root): \"modified_on\" is a required property"],
        "server-assigned fields required in requests",
    ),
    (
        "PATCH /zones/{zone_id}/dns_records/{dns_record_id}",
        &["request body at (root): \"id\" is a required property"],
        "server-assigned fields required in requests",
    ),
    (
        "PATCH /zones/{zone_id}/dns_records/{dns_record_id}",
        &["request body at (root): \"proxiable\" is a required property"],
        "server-assigned fields required in requests",
    ),
    (
        "PATCH /zones/{zone_id}/dns_records/{dns_record_id}",
        &["request body at (root): \"created_on\" is a required property"],
        "server-assigned fields required in requests",
    ),
    (
        "PATCH /zones/{zone_id}/dns_records/{dns_record_id}",
        &["request body at (root): \"modified_on\" is a required property"],
        "server-assigned fields required in requests",
    ),
    // The DNS 4xx schema is `allOf` the success envelope (`success: true`, an object or
    // string `result`) and the failure envelope (`success: false`, `result: null`): no body
    // satisfies both, so a real error answer breaks it in exactly these places.
    (
        "POST /zones/{zone_id}/dns_records",
        &["response 400 body at /success: false is not one of true"],
        "unsatisfiable 4xx schema",
    ),
    (
        "POST /zones/{zone_id}/dns_records",
        &["response 400 body at /result: null is not"],
        "unsatisfiable 4xx schema",
    ),
    // `login_method` rules (ENDPOINTS.md §6: the current rule name) are absent from the 2024
    // `access_rule` oneOf, so a policy's `exclude` entries match none of its branches: in the
    // requests that write a policy and in the answers that return one. (Applications echo
    // their policies too, but the 2024 application response is an `anyOf` of app types loose
    // enough to accept them.)
    (
        "POST /accounts/{account_id}/access/policies",
        &["/exclude/", "not valid under any of the schemas"],
        "login_method is newer than the description",
    ),
    (
        "PUT /accounts/{account_id}/access/policies/{policy_id}",
        &["/exclude/", "not valid under any of the schemas"],
        "login_method is newer than the description",
    ),
    (
        "GET /accounts/{account_id}/access/policies",
        &["/exclude/", "not valid under any of the schemas"],
        "login_method is newer than the description",
    ),
];

/// The index of the deviation that excuses a violation, if one does.
fn allowed(op: &str, message: &str) -> Option<usize> {
    DEVIATIONS
        .iter()
        .position(|(o, fragments, _)| *o == op && fragments.iter().all(|f| message.contains(f)))
}

/// The subset description plus the zone-settings operations (and every schema they reach)
/// from the full 2024 description.
fn description(apis: &Path) -> ApiDescription {
    let mut doc: Value = serde_json::from_slice(
        &std::fs::read(apis.join("cloudflare/cloudflare-openapi.subset.json")).unwrap(),
    )
    .unwrap();
    let gz = apis.join("cloudflare/cloudflare-openapi.full-2024-08-06.json.gz");
    let out = std::process::Command::new("gzip")
        .arg("-dc")
        .arg(&gz)
        .output()
        .expect("gzip is needed to read the full Cloudflare description");
    assert!(out.status.success(), "gzip -dc {}", gz.display());
    let full: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut wanted: Vec<String> = Vec::new();
    for path in [
        "/zones/{zone_id}/settings",
        "/zones/{zone_id}/settings/{setting_id}",
    ] {
        let item = full["paths"][path].clone();
        assert!(item.is_object(), "{path} is in the full description");
        collect_refs(&item, &mut wanted);
        doc["paths"][path] = item;
    }
    let mut seen = BTreeSet::new();
    while let Some(name) = wanted.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let schema = full["components"]["schemas"][&name].clone();
        assert!(!schema.is_null(), "schema {name}");
        collect_refs(&schema, &mut wanted);
        if doc["components"]["schemas"].get(&name).is_none() {
            doc["components"]["schemas"][&name] = schema;
        }
    }
    ApiDescription::from_value(doc).unwrap()
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m.get("$ref").and_then(Value::as_str)
                && let Some(name) = r.strip_prefix("#/components/schemas/")
            {
                out.push(name.to_owned());
            }
            m.values().for_each(|x| collect_refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

fn preview(url: &str, pr: u64) -> emu::Run {
    let text =
        std::fs::read_to_string(common::root().join("examples/nextjs-neon/telbase.yaml")).unwrap();
    let (mut desired, _) =
        telbase::config::load_str(&text, Environment::Preview { pull_request: pr }).unwrap();
    desired.pin_git(Some("telbase-tests/notes"), SHA);
    let http = telbase::providers::http::Http::new(emu::http_config()).unwrap();
    let creds = Credentials {
        emulator: Some(url.to_owned()),
        ..Credentials::default()
    };
    let registry = providers::registry_for(&desired, &creds, &http).unwrap();
    let scope = Scope {
        project: desired.project.clone(),
        environment: desired.environment,
        git: Some(GitRef {
            repo: "telbase-tests/notes".into(),
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

async fn scenario(url: &str, emu: &telbase::emulator::Handle) {
    let text =
        std::fs::read_to_string(common::root().join("examples/nextjs-neon/telbase.yaml")).unwrap();
    // 1. Production: zone settings, records, the policy.
    let run = emu::run(&text, url, SHA, emu::http_config());
    run.converge(4).await.unwrap();
    // 2. A preview: its record and Access application.
    let pr = preview(url, 5);
    pr.converge(4).await.unwrap();
    // 3. Drift everywhere, corrected: single-setting edits, a record patch, policy and app
    // replacements.
    for body in [
        json!({"provider": "cloudflare", "zone": "example.com", "settings": {"min_tls_version": "1.0"}}),
        json!({"provider": "cloudflare", "zone": "example.com", "record": "www.example.com", "set": {"proxied": false}}),
        json!({"provider": "cloudflare", "access_policy": "notes-staff", "set": {"session_duration": "1h"}}),
        json!({"provider": "cloudflare", "access_app": "notes-web-pr-5", "set": {"self_hosted_domains": ["web-pr-5.example.com", "x.example.com"]}}),
    ] {
        emu.drift(&body).unwrap();
    }
    run.converge(4).await.unwrap();
    pr.converge(4).await.unwrap();
    // 4. A raw create the API refuses (a CNAME cannot share its name), so an error answer
    // of the emulator is checked too.
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
    let r = c
        .post(format!("{base}/zones/{zid}/dns_records"))
        .header("authorization", &auth)
        .json(&json!({"type": "CNAME", "name": "www.example.com", "content": "elsewhere.example.net", "ttl": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // 5. Teardown: the preview's resources, then everything production owns.
    let none = Inputs::default();
    for (r, scope) in [(&pr, &pr.scope), (&run, &run.scope)] {
        let actual = r.observe().await.unwrap();
        let mut all: Vec<_> = actual
            .resources
            .values()
            .filter(|o| o.key.provider() == Provider::Cloudflare)
            .collect();
        all.sort_by_key(|o| o.key.kind.teardown_rank());
        for o in all {
            r.registry[&Provider::Cloudflare]
                .apply(scope, Change::Delete { observed: o }, &none, &r.desired)
                .await
                .unwrap();
        }
    }
    let left = run.observe().await.unwrap();
    assert!(
        !left
            .resources
            .keys()
            .any(|k| k.provider() == Provider::Cloudflare),
        "{left:?}"
    );
    let inv = emu.inventory();
    assert_eq!(inv["cloudflare.dns_records"], 0, "{inv:?}");
    assert_eq!(inv["cloudflare.access_policies"], 0, "{inv:?}");
    assert_eq!(inv["cloudflare.access_apps"], 0, "{inv:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cloudflare_operation_conforms_to_the_published_description() {
    let Some(apis) = common::provider_apis() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("traffic.jsonl");
    let emu = emu::start(Config {
        record: Some(record.clone()),
        ..Config::default()
    })
    .await;
    scenario(&emu.url(), &emu).await;
    emu.stop().await;

    let desc = description(&apis);
    let text = std::fs::read_to_string(&record).unwrap();
    let mut covered: BTreeSet<String> = BTreeSet::new();
    let mut excused: BTreeMap<usize, usize> = BTreeMap::new();
    let mut violations = BTreeSet::new();
    let mut exchanges = 0;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        if v["provider"] != "cloudflare" {
            continue;
        }
        assert!(v.get("fault").is_none(), "no faults were asked for: {line}");
        let ex: Exchange = serde_json::from_value(v).unwrap();
        exchanges += 1;
        // Every answer, errors included, is the v4 envelope.
        let body = ex.response_body.as_ref().expect("a body");
        assert!(body["success"].is_boolean(), "{line}");
        assert!(
            body["errors"].is_array() && body["messages"].is_array(),
            "{line}"
        );
        let op = desc
            .operation_for(&ex.method, &ex.path)
            .unwrap_or_else(|| format!("{} {}", ex.method, ex.path));
        covered.insert(op.clone());
        for violation in desc.check(&ex) {
            if let Some(i) = allowed(&op, &violation.message) {
                *excused.entry(i).or_default() += 1;
            } else {
                violations.insert(format!("{}: {}", violation.operation, violation.message));
            }
        }
    }
    assert!(exchanges > 40, "only {exchanges} exchanges recorded");
    assert!(
        violations.is_empty(),
        "{} violations:\n{}",
        violations.len(),
        violations.into_iter().collect::<Vec<_>>().join("\n")
    );
    let missing: Vec<_> = OPERATIONS
        .iter()
        .filter(|o| !covered.contains(**o))
        .collect();
    assert!(missing.is_empty(), "the scenario never used {missing:?}");
    let unexpected: Vec<_> = covered
        .iter()
        .filter(|o| !OPERATIONS.contains(&o.as_str()))
        .collect();
    assert!(
        unexpected.is_empty(),
        "operations this test does not list: {unexpected:?}"
    );
    // Every listed deviation still happens: the list stays short and true.
    let stale: Vec<_> = (0..DEVIATIONS.len())
        .filter(|i| !excused.contains_key(i))
        .map(|i| DEVIATIONS[i])
        .collect();
    assert!(
        stale.is_empty(),
        "deviations that no longer occur: {stale:?}"
    );
}

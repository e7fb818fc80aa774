//! Keyless Google auth end to end against the emulator: the Actions runner's OIDC token
//! service (`/actions-oidc`), STS (`/sts`) and IAM Credentials (`/iamcredentials`), then a
//! Cloud Run, Secret Manager and Cloud SQL call with the token they issued. Covers the
//! workflow variables (with and without impersonation), `external_account` files with a
//! `file` and a `url` credential source, caching, every refusal with its reason (missing
//! `id-token: write`, wrong audience, expired token, attribute condition, impersonation
//! denied, executable and AWS sources, a malformed provider name), STS down (retried, then
//! a clear error), that no token ever shows in an error or `Debug`, and the conformance of
//! the exchanges with Google's Discovery documents for STS and IAM Credentials.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::emu;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use telbase::conformance::{ApiDescription, Exchange};
use telbase::emulator::{ACTIONS_REQUEST_TOKEN, Config, Faults, Handle};
use telbase::model::Provider;
use telbase::providers::google::auth::{Adc, AdcConfig, AuthError, ProviderTokens};
use telbase::providers::google::external::{FederationEndpoints, WorkloadIdentityVars};
use telbase::providers::http::{Call, Endpoint, Http};
use telbase::providers::{ErrorKind, SetupError};

const PROVIDER: &str =
    "projects/100000000001/locations/global/workloadIdentityPools/github/providers/telbase";
const SA: &str = "deployer@links-prod.iam.gserviceaccount.com";

fn audience() -> String {
    format!("//iam.googleapis.com/{PROVIDER}")
}

fn base() -> AdcConfig {
    AdcConfig {
        // Never the real metadata server from a test.
        metadata_host: "127.0.0.1:9".into(),
        probe_timeout: Duration::from_millis(300),
        timeout: Duration::from_secs(5),
        ..AdcConfig::default()
    }
}

fn federation(url: &str) -> FederationEndpoints {
    FederationEndpoints {
        sts_token_url: format!("{url}/sts/v1/token"),
        iam_credentials_url: format!("{url}/iamcredentials"),
    }
}

/// What the runner and the action's inputs set, pointed at the emulator at `url`.
fn workflow(url: &str, service_account: Option<&str>) -> AdcConfig {
    AdcConfig {
        workload_identity: Some(WorkloadIdentityVars {
            provider: PROVIDER.into(),
            service_account: service_account.map(str::to_owned),
            request_url: Some(format!("{url}/actions-oidc/idtoken?api-version=2.0")),
            request_token: Some(SecretString::from(ACTIONS_REQUEST_TOKEN)),
        }),
        federation: federation(url),
        ..base()
    }
}

async fn start() -> Handle {
    emu::start(Config {
        capture: true,
        ..Config::default()
    })
    .await
}

/// GET a list from one Google API through the emulator with tokens from `adc`.
async fn list(
    url: &str,
    adc: &Arc<Adc>,
    provider: Provider,
) -> Result<telbase::providers::http::Response, telbase::providers::ProviderError> {
    let (prefix, path) = match provider {
        Provider::CloudRun => (
            "/cloud-run",
            "/v2/projects/links-prod/locations/us-east1/services",
        ),
        Provider::SecretManager => ("/secret-manager", "/v1/projects/links-prod/secrets"),
        _ => ("/cloud-sql", "/v1/projects/links-prod/instances"),
    };
    let ep = Endpoint::with_token_source(
        provider,
        &format!("{url}{prefix}"),
        Arc::new(ProviderTokens {
            adc: adc.clone(),
            provider,
        }),
        vec![],
    )
    .unwrap();
    Http::new(emu::http_config())
        .unwrap()
        .send(&ep, &Call::get(path, "list"))
        .await
}

fn count(emu: &Handle, api: &str) -> u64 {
    emu.counters()
        .by_provider
        .get(api)
        .map(|c| c.reads + c.writes)
        .unwrap_or(0)
}

/// Every credential that crossed the wire in the emulator's captured exchanges: the
/// runner's request token, OIDC tokens, federated and impersonated access tokens.
fn wire_secrets(emu: &Handle) -> Vec<String> {
    let mut out = vec![ACTIONS_REQUEST_TOKEN.to_owned()];
    for x in emu.exchanges() {
        let req: Value = serde_json::from_slice(&x.request_body).unwrap_or(Value::Null);
        for v in [&req["subjectToken"], &req["subject_token"]] {
            out.extend(v.as_str().map(str::to_owned));
        }
        if let Some(b) = &x.response_body {
            for k in ["value", "access_token", "accessToken"] {
                out.extend(b[k].as_str().map(str::to_owned));
            }
        }
    }
    out.retain(|s| s.len() > 8);
    out
}

fn assert_no_secret(texts: &[String], secrets: &[String]) {
    assert!(secrets.len() > 1, "nothing to look for: {secrets:?}");
    for t in texts {
        for s in secrets {
            assert!(!t.contains(s.as_str()), "a credential leaked into: {t}");
        }
        assert!(!t.contains("eyJ"), "a JWT leaked into: {t}");
        assert!(!t.contains("ya29."), "an access token leaked into: {t}");
    }
}

fn setup_error(cfg: AdcConfig) -> String {
    match Adc::discover(cfg) {
        Ok(adc) => panic!("accepted: {adc:?}"),
        Err(SetupError::Invalid { message, .. }) => message,
        Err(other) => panic!("unexpected error kind: {other}"),
    }
}

/// An OIDC token straight from the emulated runner, as a test writes one to a file.
async fn oidc_token(url: &str, aud: &str) -> String {
    let resp: Value = reqwest::Client::new()
        .get(format!("{url}/actions-oidc/idtoken"))
        .query(&[("api-version", "2.0"), ("audience", aud)])
        .bearer_auth(ACTIONS_REQUEST_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    resp["value"].as_str().unwrap().to_owned()
}

fn external_file(dir: &std::path::Path, body: &Value) -> AdcConfig {
    let path = dir.join("gha-creds-1234.json");
    std::fs::write(&path, body.to_string()).unwrap();
    AdcConfig {
        credentials_file: Some(path),
        ..base()
    }
}

/// What google-github-actions/auth writes, pointed at the emulator.
fn action_file(url: &str, oidc_audience: &str, service_account: Option<&str>) -> Value {
    let mut f = json!({
        "type": "external_account",
        "audience": audience(),
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_url": format!("{url}/sts/v1/token"),
        "credential_source": {
            "url": format!("{url}/actions-oidc/idtoken?api-version=2.0&audience={}", urlencode(oidc_audience)),
            "headers": {"Authorization": format!("Bearer {ACTIONS_REQUEST_TOKEN}")},
            "format": {"type": "json", "subject_token_field_name": "value"},
        },
    });
    if let Some(sa) = service_account {
        f["service_account_impersonation_url"] = json!(format!(
            "{url}/iamcredentials/v1/projects/-/serviceAccounts/{sa}:generateAccessToken"
        ));
    }
    f
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn workflow_oidc_token_is_exchanged_and_works_on_every_google_api() {
    let emu = start().await;
    let url = emu.url();
    let adc = Arc::new(Adc::discover(workflow(&url, None)).unwrap());
    assert!(
        adc.source_name()
            .contains("TELBASE_GOOGLE_WORKLOAD_IDENTITY_PROVIDER")
    );
    assert_eq!(
        adc.project_id(),
        None,
        "no service account, no project to derive"
    );

    for p in [
        Provider::CloudRun,
        Provider::SecretManager,
        Provider::CloudSql,
    ] {
        let r = list(&url, &adc, p).await.unwrap();
        assert_eq!(r.status, 200, "{p:?}");
    }
    // One OIDC token, one exchange, shared by the three APIs; no impersonation.
    assert_eq!(count(&emu, "actions-oidc"), 1);
    assert_eq!(count(&emu, "sts"), 1);
    assert_eq!(count(&emu, "iamcredentials"), 0);

    // The OIDC token asked for the provider as its audience, and STS got it unchanged.
    let x = emu.exchanges();
    let oidc = x.iter().find(|e| e.provider == "actions-oidc").unwrap();
    assert!(
        oidc.query.contains("api-version=2.0")
            && oidc
                .query
                .contains("audience=%2F%2Fiam.googleapis.com%2Fprojects%2F100000000001"),
        "{}",
        oidc.query
    );
    let sts = x.iter().find(|e| e.provider == "sts").unwrap();
    let body: Value = serde_json::from_slice(&sts.request_body).unwrap();
    assert_eq!(body["audience"], audience());
    assert_eq!(
        body["grantType"],
        "urn:ietf:params:oauth:grant-type:token-exchange"
    );
    assert_eq!(
        body["requestedTokenType"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert_eq!(
        body["subjectTokenType"],
        "urn:ietf:params:oauth:token-type:jwt"
    );
    assert_eq!(
        body["scope"],
        "https://www.googleapis.com/auth/cloud-platform"
    );
    assert_eq!(
        body["subjectToken"],
        oidc.response_body.as_ref().unwrap()["value"]
    );
    // The API calls carried the federated token, not the emulator's shared one.
    let token = adc.access_token().await.unwrap();
    assert!(token.expose_secret().starts_with("ya29.d."));

    // A token the emulator never issued is refused: the check above is real.
    let stranger = Endpoint::new(
        Provider::CloudRun,
        &format!("{url}/cloud-run"),
        SecretString::from("ya29.d.someone-elses"),
        vec![],
    )
    .unwrap();
    let e = Http::new(emu::http_config())
        .unwrap()
        .send(
            &stranger,
            &Call::get("/v2/projects/p/locations/us-east1/services", "list"),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Auth);
    emu.stop().await;
}

#[tokio::test]
async fn workflow_with_a_service_account_impersonates_it() {
    let emu = start().await;
    let url = emu.url();
    let adc = Arc::new(Adc::discover(workflow(&url, Some(SA))).unwrap());
    assert!(adc.source_name().contains(SA), "{}", adc.source_name());
    // As google-github-actions/auth does: the project comes from the account's email.
    assert_eq!(adc.project_id(), Some("links-prod"));
    let r = list(&url, &adc, Provider::CloudRun).await.unwrap();
    assert_eq!(r.status, 200);
    let token = adc.access_token().await.unwrap();
    assert!(
        token.expose_secret().starts_with("ya29.c."),
        "the impersonated token is used"
    );

    let x = emu.exchanges();
    let gen_call = x.iter().find(|e| e.provider == "iamcredentials").unwrap();
    assert_eq!(
        gen_call.path,
        format!("/v1/projects/-/serviceAccounts/{SA}:generateAccessToken")
    );
    let body: Value = serde_json::from_slice(&gen_call.request_body).unwrap();
    assert_eq!(
        body,
        json!({"scope": ["https://www.googleapis.com/auth/cloud-platform"], "lifetime": "3600s"})
    );
    assert_eq!(count(&emu, "sts"), 1);
    assert_eq!(count(&emu, "iamcredentials"), 1);
    emu.stop().await;
}

#[tokio::test]
async fn tokens_are_cached_and_each_refresh_fetches_a_fresh_oidc_token() {
    let emu = start().await;
    let url = emu.url();
    let adc = Adc::discover(workflow(&url, Some(SA))).unwrap();
    let a = adc.access_token().await.unwrap();
    let b = adc.access_token().await.unwrap();
    assert_eq!(a.expose_secret(), b.expose_secret());
    assert_eq!(count(&emu, "actions-oidc"), 1);
    assert_eq!(count(&emu, "sts"), 1);

    // A refresh margin longer than the token's life: every call refreshes, and every
    // refresh starts from a new OIDC token (GitHub's last five minutes).
    let adc = Adc::discover(AdcConfig {
        refresh_margin: Duration::from_secs(7200),
        ..workflow(&url, None)
    })
    .unwrap();
    let c = adc.access_token().await.unwrap();
    let d = adc.access_token().await.unwrap();
    assert_ne!(c.expose_secret(), d.expose_secret());
    assert_eq!(count(&emu, "actions-oidc"), 3);
    assert_eq!(count(&emu, "sts"), 3);
    let subjects: Vec<Value> = emu
        .exchanges()
        .iter()
        .filter(|e| e.provider == "sts")
        .map(|e| serde_json::from_slice::<Value>(&e.request_body).unwrap()["subjectToken"].clone())
        .collect();
    assert_ne!(subjects[1], subjects[2], "an OIDC token is never reused");
    emu.stop().await;
}

#[tokio::test]
async fn an_explicit_telbase_variable_wins_over_google_application_credentials() {
    let emu = start().await;
    let url = emu.url();
    let dir = tempfile::tempdir().unwrap();
    let file = external_file(dir.path(), &json!({"type": "authorized_user"}));
    let adc = Adc::discover(AdcConfig {
        credentials_file: file.credentials_file,
        ..workflow(&url, None)
    })
    .expect("the broken file is never read: the workflow variable comes first");
    assert!(
        adc.source_name()
            .starts_with("TELBASE_GOOGLE_WORKLOAD_IDENTITY_PROVIDER")
    );
    emu.stop().await;
}

#[tokio::test]
async fn external_account_file_with_a_url_source_as_the_auth_action_writes_it() {
    let emu = start().await;
    let url = emu.url();
    let dir = tempfile::tempdir().unwrap();
    for sa in [None, Some(SA)] {
        let mut body = action_file(&url, &audience(), sa);
        body["quota_project_id"] = json!("links-billing");
        let adc = Arc::new(Adc::discover(external_file(dir.path(), &body)).unwrap());
        assert!(
            adc.source_name().contains("external account"),
            "{}",
            adc.source_name()
        );
        assert_eq!(adc.quota_project(), Some("links-billing"));
        assert_eq!(
            list(&url, &adc, Provider::CloudRun).await.unwrap().status,
            200
        );
        let t = adc.access_token().await.unwrap();
        let prefix = if sa.is_some() { "ya29.c." } else { "ya29.d." };
        assert!(t.expose_secret().starts_with(prefix));
    }
    // The header from the file reached the runner's token service.
    assert_eq!(count(&emu, "actions-oidc"), 2);
    assert_eq!(count(&emu, "iamcredentials"), 1);
    emu.stop().await;
}

#[tokio::test]
async fn external_account_file_with_a_file_source_text_and_json() {
    let emu = start().await;
    let url = emu.url();
    let dir = tempfile::tempdir().unwrap();
    let jwt = oidc_token(&url, &audience()).await;
    let text = dir.path().join("token.txt");
    std::fs::write(&text, format!("{jwt}\n")).unwrap();
    let json_file = dir.path().join("token.json");
    std::fs::write(&json_file, json!({"id_token": jwt}).to_string()).unwrap();
    for source in [
        json!({"file": text}),
        json!({"file": json_file, "format": {"type": "json", "subject_token_field_name": "id_token"}}),
    ] {
        let body = json!({
            "type": "external_account",
            "audience": audience(),
            "subject_token_type": "urn:ietf:params:oauth:token-type:id_token",
            "token_url": format!("{url}/sts/v1/token"),
            "credential_source": source,
            "service_account_impersonation_url": format!("{url}/iamcredentials/v1/projects/-/serviceAccounts/{SA}:generateAccessToken"),
            "service_account_impersonation": {"token_lifetime_seconds": 1800},
        });
        let adc = Arc::new(Adc::discover(external_file(dir.path(), &body)).unwrap());
        assert_eq!(adc.project_id(), Some("links-prod"));
        assert_eq!(
            list(&url, &adc, Provider::SecretManager)
                .await
                .unwrap()
                .status,
            200
        );
    }
    let lifetimes: Vec<Value> = emu
        .exchanges()
        .iter()
        .filter(|e| e.provider == "iamcredentials")
        .map(|e| serde_json::from_slice::<Value>(&e.request_body).unwrap()["lifetime"].clone())
        .collect();
    assert_eq!(lifetimes, vec![json!("1800s"), json!("1800s")]);

    // A subject token file that is gone is a clear error naming it, at the first call.
    std::fs::remove_file(&text).unwrap();
    let body = json!({
        "type": "external_account", "audience": audience(),
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_url": format!("{url}/sts/v1/token"),
        "credential_source": {"file": text},
    });
    let adc = Adc::discover(external_file(dir.path(), &body)).unwrap();
    let e = adc.access_token().await.unwrap_err();
    assert!(
        e.message.contains("token.txt") && e.message.contains("credential_source.file"),
        "{e}"
    );
    emu.stop().await;
}

#[tokio::test]
async fn without_id_token_permission_the_error_says_what_to_add() {
    let mut cfg = workflow("http://127.0.0.1:9", None);
    if let Some(v) = &mut cfg.workload_identity {
        v.request_url = None;
        v.request_token = None;
    }
    let e = setup_error(cfg);
    assert!(e.contains("permissions: id-token: write"), "{e}");
    assert!(e.contains("only inside GitHub Actions"), "{e}");
    assert!(!e.contains('\n'), "one line: {e}");

    // From the environment as the runner leaves it without the permission.
    let cfg = AdcConfig::from_vars(
        |k| match k {
            "TELBASE_GOOGLE_WORKLOAD_IDENTITY_PROVIDER" => Some(PROVIDER.into()),
            "GITHUB_ACTIONS" => Some("true".into()),
            _ => None,
        },
        false,
    );
    assert!(setup_error(cfg).contains("id-token: write"));
}

#[tokio::test]
async fn malformed_provider_names_are_refused_with_the_expected_shape() {
    for (bad, says) in [
        ("github", "not a provider's full resource name"),
        (
            "projects/links-prod/locations/global/workloadIdentityPools/github/providers/telbase",
            "project NUMBER",
        ),
        (
            "projects/1/locations/global/workloadIdentityPools/github/providers/Tel_Base",
            "provider id",
        ),
    ] {
        let mut cfg = workflow("http://127.0.0.1:9", None);
        cfg.workload_identity.as_mut().unwrap().provider = bad.into();
        let e = setup_error(cfg);
        assert!(e.contains(says), "{bad}: {e}");
        assert!(
            e.contains("TELBASE_GOOGLE_WORKLOAD_IDENTITY_PROVIDER"),
            "{e}"
        );
    }
    let mut cfg = workflow("http://127.0.0.1:9", Some("deployer"));
    cfg.workload_identity.as_mut().unwrap().provider = PROVIDER.into();
    assert!(setup_error(cfg).contains("TELBASE_GOOGLE_SERVICE_ACCOUNT"));
}

#[tokio::test]
async fn unsupported_credential_sources_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let with = |source: Value| {
        json!({
            "type": "external_account", "audience": audience(),
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_url": "https://sts.googleapis.com/v1/token",
            "credential_source": source,
        })
    };
    let e = setup_error(external_file(
        dir.path(),
        &with(
            json!({"executable": {"command": "/usr/bin/curl -s https://example.com/t", "timeout_millis": 5000}}),
        ),
    ));
    assert!(e.contains("credential_source.executable"), "{e}");
    assert!(e.contains("runs a command"), "{e}");
    assert!(e.contains("credential_source.file or .url"), "{e}");
    assert!(!e.contains("/usr/bin/curl"), "{e}");

    let e = setup_error(external_file(
        dir.path(),
        &with(
            json!({"environment_id": "aws1", "region_url": "http://169.254.169.254/latest/meta-data/placement/availability-zone"}),
        ),
    ));
    assert!(e.contains("AWS"), "{e}");

    // Credentials go only to Google (or loopback in tests).
    let mut body = with(json!({"file": "/tmp/t"}));
    body["token_url"] = json!("https://sts.example.com/v1/token");
    let e = setup_error(external_file(dir.path(), &body));
    assert!(
        e.contains("token_url") && e.contains("googleapis.com"),
        "{e}"
    );
    let mut body = with(json!({"file": "/tmp/t"}));
    body["service_account_impersonation_url"] = json!(
        "http://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/a@b.iam.gserviceaccount.com:generateAccessToken"
    );
    let e = setup_error(external_file(dir.path(), &body));
    assert!(e.contains("service_account_impersonation_url"), "{e}");
    // Nor to a look-alike host, which would receive the federated token.
    for host in ["iamcredentials.googleapis.com.evil.example", "evil.example"] {
        let mut body = with(json!({"file": "/tmp/t"}));
        body["service_account_impersonation_url"] = json!(format!(
            "https://{host}/v1/projects/-/serviceAccounts/a@b.iam.gserviceaccount.com:generateAccessToken"
        ));
        let e = setup_error(external_file(dir.path(), &body));
        assert!(
            e.contains("service_account_impersonation_url"),
            "{host}: {e}"
        );
    }
    let e = setup_error(external_file(
        dir.path(),
        &with(json!({"file": "/tmp/t", "format": {"type": "json"}})),
    ));
    assert!(e.contains("subject_token_field_name"), "{e}");
}

#[tokio::test]
async fn sts_refusals_are_auth_errors_with_sts_reason_and_are_not_retried() {
    let emu = start().await;
    let url = emu.url();
    let dir = tempfile::tempdir().unwrap();
    let mut errors: Vec<AuthError> = Vec::new();

    // Wrong audience: the runner's default audience (the owner's URL), a classic mistake.
    let adc = Adc::discover(external_file(
        dir.path(),
        &action_file(&url, "https://github.com/octo-org", None),
    ))
    .unwrap();
    let e = adc.access_token().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Auth);
    assert_eq!(e.status, Some(400));
    assert!(e.message.contains("invalid_grant"), "{e}");
    assert!(
        e.message.contains("does not match the expected audience"),
        "{e}"
    );
    assert_eq!(count(&emu, "sts"), 1, "refusals are not retried");
    errors.push(e);

    // An expired OIDC token.
    emu.keyless(&json!({"token_lifetime_secs": -30})).unwrap();
    let adc = Adc::discover(workflow(&url, None)).unwrap();
    let e = adc.access_token().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Auth);
    assert!(
        e.message.contains("invalid_grant") && e.message.contains("expired"),
        "{e}"
    );
    errors.push(e);
    emu.keyless(&json!({"token_lifetime_secs": 300})).unwrap();

    // The provider's attribute condition allows another repository only.
    emu.keyless(&json!({"allowed_repository": "octo-org/infra"}))
        .unwrap();
    let e = adc.access_token().await.unwrap_err();
    assert!(e.message.contains("unauthorized_client"), "{e}");
    assert!(e.message.contains("attribute condition"), "{e}");
    errors.push(e);
    emu.keyless(&json!({"claims": {"repository": "octo-org/infra"}}))
        .unwrap();
    adc.access_token()
        .await
        .expect("the allowed repository passes");

    // Impersonation the principal may not do.
    emu.keyless(&json!({"deny_impersonation": [SA]})).unwrap();
    let adc = Adc::discover(workflow(&url, Some(SA))).unwrap();
    let e = adc.access_token().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Auth);
    assert_eq!(e.status, Some(403));
    assert!(e.message.contains("PERMISSION_DENIED"), "{e}");
    assert!(e.message.contains("roles/iam.workloadIdentityUser"), "{e}");
    errors.push(e);

    // A runner token service that refuses the job's request token.
    let mut cfg = workflow(&url, None);
    cfg.workload_identity.as_mut().unwrap().request_token =
        Some(SecretString::from("not-the-runner-token"));
    let e = Adc::discover(cfg)
        .unwrap()
        .access_token()
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Auth);
    assert!(e.message.contains("id-token: write"), "{e}");
    errors.push(e);

    // Through the provider-facing token source the provider is named too.
    use telbase::providers::http::TokenSource as _;
    let pe = ProviderTokens {
        adc: Arc::new(adc),
        provider: Provider::CloudRun,
    }
    .token()
    .await
    .unwrap_err();
    assert_eq!(pe.kind, ErrorKind::Auth);

    let mut texts: Vec<String> = errors
        .iter()
        .flat_map(|e| [e.to_string(), format!("{e:?}")])
        .collect();
    texts.push(pe.to_string());
    texts.push(format!("{pe:?}"));
    for t in &texts {
        assert!(!t.contains('\n'), "one line: {t}");
    }
    assert_no_secret(&texts, &wire_secrets(&emu));
    emu.stop().await;
}

#[tokio::test]
async fn sts_down_is_retried_then_a_clear_transient_error() {
    // The runner works; STS answers 503 every time.
    let runner = start().await;
    let sts_down = emu::start(Config {
        faults: Faults {
            rate_5xx: 1.0,
            ..Faults::default()
        },
        ..Config::default()
    })
    .await;
    let mut cfg = workflow(&runner.url(), None);
    cfg.federation = federation(&sts_down.url());
    let adc = Adc::discover(cfg).unwrap();
    let started = std::time::Instant::now();
    let e = adc.access_token().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Transient);
    assert_eq!(e.status, Some(503));
    assert!(
        e.message
            .contains("STS refused the token exchange (HTTP 503)"),
        "{e}"
    );
    assert_eq!(count(&sts_down, "sts"), 3, "three attempts");
    assert_eq!(
        count(&runner, "actions-oidc"),
        3,
        "a fresh OIDC token each attempt"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "with backoff between"
    );

    // Nobody listening at all: the same, naming the endpoint without any credential.
    let mut cfg = workflow(&runner.url(), None);
    cfg.federation.sts_token_url = "http://127.0.0.1:9/sts/v1/token".into();
    let e = Adc::discover(cfg)
        .unwrap()
        .access_token()
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Transient);
    assert!(e.message.contains("could not connect"), "{e}");
    assert!(e.message.contains("127.0.0.1:9"), "{e}");
    assert_no_secret(&[e.to_string(), format!("{e:?}")], &wire_secrets(&runner));
    runner.stop().await;
    sts_down.stop().await;
}

#[tokio::test]
async fn no_credential_in_debug_output() {
    let emu = start().await;
    let url = emu.url();
    let dir = tempfile::tempdir().unwrap();
    let cfg = workflow(&url, Some(SA));
    let adc = Adc::discover(cfg.clone()).unwrap();
    adc.access_token().await.unwrap();
    let file = external_file(dir.path(), &action_file(&url, &audience(), Some(SA)));
    let from_file = Adc::discover(file.clone()).unwrap();
    from_file.access_token().await.unwrap();
    let texts = vec![
        format!("{cfg:?}"),
        format!("{adc:?}"),
        format!("{file:?}"),
        format!("{from_file:?}"),
        format!("{:?}", cfg.workload_identity),
    ];
    assert_no_secret(&texts, &wire_secrets(&emu));
    emu.stop().await;
}

/// STS answers errors in OAuth 2.0 form (RFC 6749 §5.2, `{"error", "error_description"}`),
/// which its Discovery document does not declare; the checker's default error response is
/// Google's AIP-193 envelope. Excused for STS error answers only, and only that mismatch.
fn sts_error_in_oauth_form(ex: &Exchange, message: &str) -> bool {
    ex.status == 400
        && ex
            .response_body
            .as_ref()
            .is_some_and(|b| b["error"].is_string() && b["error_description"].is_string())
        && message.starts_with("response 400 body")
}

#[tokio::test]
async fn keyless_exchanges_conform_to_the_sts_and_iam_credentials_discovery_documents() {
    let Some(apis) = common::provider_apis() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("keyless.jsonl");
    let emu = emu::start(Config {
        capture: true,
        record: Some(record.clone()),
        ..Config::default()
    })
    .await;
    let url = emu.url();
    // Successes: direct and impersonated, from the workflow and from a file.
    Adc::discover(workflow(&url, None))
        .unwrap()
        .access_token()
        .await
        .unwrap();
    Adc::discover(workflow(&url, Some(SA)))
        .unwrap()
        .access_token()
        .await
        .unwrap();
    Adc::discover(external_file(
        dir.path(),
        &action_file(&url, &audience(), Some(SA)),
    ))
    .unwrap()
    .access_token()
    .await
    .unwrap();
    // Refusals: a wrong audience (STS) and a denied impersonation (IAM Credentials).
    Adc::discover(external_file(
        dir.path(),
        &action_file(&url, "https://github.com/octo-org", None),
    ))
    .unwrap()
    .access_token()
    .await
    .unwrap_err();
    emu.keyless(&json!({"deny_impersonation": [SA]})).unwrap();
    Adc::discover(workflow(&url, Some(SA)))
        .unwrap()
        .access_token()
        .await
        .unwrap_err();

    let sts =
        ApiDescription::from_discovery_file(&apis.join("gcp-sts/sts.v1.discovery.json")).unwrap();
    let iam = ApiDescription::from_discovery_file(
        &common::root()
            .join("tests/provider-apis/gcp-iamcredentials/iamcredentials.v1.discovery.json"),
    )
    .unwrap();
    for desc in [&sts, &iam] {
        let report = desc.compile_all();
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        assert!(report.compiled > 2);
    }
    let mut violations = Vec::new();
    let mut excused = 0;
    let mut seen = std::collections::BTreeMap::<String, Vec<u16>>::new();
    for x in emu.exchanges() {
        let desc = match x.provider.as_str() {
            "sts" => &sts,
            "iamcredentials" => &iam,
            _ => continue,
        };
        let ex = Exchange::from(&x);
        let op = desc
            .operation_for(&ex.method, &ex.path)
            .unwrap_or_else(|| format!("unmatched {} {}", ex.method, ex.path));
        seen.entry(format!("{} {op}", x.provider))
            .or_default()
            .push(ex.status);
        for v in desc.check(&ex) {
            if x.provider == "sts" && sts_error_in_oauth_form(&ex, &v.message) {
                excused += 1;
                continue;
            }
            violations.push(format!(
                "{} {} ({}): {}",
                x.provider, v.operation, ex.status, v.message
            ));
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    assert!(
        excused > 0,
        "the STS error excuse is no longer needed: remove it"
    );
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        vec![
            "iamcredentials POST /v1/projects/{projectsId}/serviceAccounts/{serviceAccountsId}:generateAccessToken".to_owned(),
            "sts POST /v1/token".to_owned(),
        ]
    );
    let statuses: Vec<u16> = seen.values().flatten().copied().collect();
    assert!(statuses.contains(&200) && statuses.contains(&400) && statuses.contains(&403));

    // The recording has the exchanges, and none of the credentials in them.
    emu.stop().await;
    let text = std::fs::read_to_string(&record).unwrap();
    assert!(text.contains("\"provider\":\"sts\""));
    assert!(text.contains("[redacted]"));
    assert!(
        !text.contains("eyJ") && !text.contains("ya29.") && !text.contains(ACTIONS_REQUEST_TOKEN)
    );
}

#[tokio::test]
async fn the_emulated_sts_validates_requests_as_sts_does() {
    let emu = start().await;
    let url = emu.url();
    let jwt = oidc_token(&url, &audience()).await;
    let http = reqwest::Client::new();
    // Google's auth libraries post an RFC 8693 form with the proto field names.
    let form = |grant: &str, subject_type: &str, subject: &str| {
        vec![
            ("grant_type", grant.to_owned()),
            ("audience", audience()),
            (
                "scope",
                "https://www.googleapis.com/auth/cloud-platform".to_owned(),
            ),
            (
                "requested_token_type",
                "urn:ietf:params:oauth:token-type:access_token".to_owned(),
            ),
            ("subject_token_type", subject_type.to_owned()),
            ("subject_token", subject.to_owned()),
        ]
    };
    let post = |f: Vec<(&'static str, String)>| {
        let http = http.clone();
        let url = url.clone();
        async move {
            let r = http
                .post(format!("{url}/sts/v1/token"))
                .form(&f)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
    const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
    let (status, body) = post(form(GRANT, JWT, &jwt)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(
        body["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert!(body["expires_in"].as_u64().unwrap() > 3000);

    for (f, error, says) in [
        (
            form("refresh_token", JWT, &jwt),
            "invalid_request",
            "grant_type",
        ),
        (
            form(GRANT, "urn:ietf:params:aws:token-type:aws4_request", &jwt),
            "invalid_request",
            "subject_token_type",
        ),
        (form(GRANT, JWT, "not.a.jwt"), "invalid_grant", "ID Token"),
    ] {
        let (status, body) = post(f).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"], error, "{body}");
        assert!(
            body["error_description"].as_str().unwrap().contains(says),
            "{body}"
        );
    }
    // A token whose claims were edited after signing.
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = jwt.split('.').collect();
    let mut claims: Value =
        serde_json::from_slice(&base64::Engine::decode(&b64, parts[1]).unwrap()).unwrap();
    claims["repository"] = json!("evil-org/repo");
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        base64::Engine::encode(&b64, claims.to_string()),
        parts[2]
    );
    let (status, body) = post(form(GRANT, JWT, &forged)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );

    // Another issuer (GitHub Enterprise Server's, say) is not the one the provider trusts.
    emu.keyless(&json!({"claims": {"iss": "https://ghes.example.com/_services/token"}}))
        .unwrap();
    let other = oidc_token(&url, &audience()).await;
    let (status, body) = post(form(GRANT, JWT, &other)).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_grant");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("issuer"),
        "{body}"
    );
    emu.stop().await;
}

#[test]
fn the_cli_explains_a_missing_id_token_permission_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("telbase.yaml"),
        "version: 1\nproject: links\nenvironments:\n  production:\n    branch: main\napps:\n  api:\n    runtime: go\n    image: us-east1-docker.pkg.dev/links-prod/containers/api:v1\n    region: us-east1\n    port: 8080\n",
    )
    .unwrap();
    // As a job without `id-token: write` runs: the action set the provider, the runner set
    // no token request variables.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_telbase"))
        .arg("plan")
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir.path())
        .env("GITHUB_ACTIONS", "true")
        .env("TELBASE_GOOGLE_WORKLOAD_IDENTITY_PROVIDER", PROVIDER)
        .env("GOOGLE_CLOUD_PROJECT", "links-prod")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("permissions: id-token: write"),
        "{stderr}"
    );
    assert!(
        errors[0].contains("TELBASE_GOOGLE_WORKLOAD_IDENTITY_PROVIDER"),
        "{stderr}"
    );
}

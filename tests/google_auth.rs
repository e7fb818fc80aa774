//! Application Default Credentials against local fakes: a token endpoint that verifies the
//! JWT-bearer assertion's RS256 signature with the public half of a key generated for the
//! test (by `openssl`), a metadata server, and an API that checks the bearer token it gets.
//! Covers the source order, caching and shared refresh, refresh near expiry, and errors that
//! name the failing source without ever containing a credential.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use telbase::model::Provider;
use telbase::providers::google::auth::{Adc, AdcConfig, ProviderTokens, SCOPE};
use telbase::providers::http::{Call, Endpoint, Http, HttpConfig};
use telbase::providers::{ErrorKind, SetupError};

const EMAIL: &str = "deployer@test-project.iam.gserviceaccount.com";

/// The test RSA key: PKCS#8 PEM (what a Google key file holds) and the PKCS#1 DER public
/// key the fake token endpoint verifies with; shared with the GitHub App tests.
fn test_key() -> Option<&'static (String, Vec<u8>)> {
    common::app_key()
}

/// The fake OAuth2 token endpoint (and metadata server, and API).
#[derive(Default)]
struct Fake {
    public_key: Vec<u8>,
    url: Mutex<String>,
    calls: AtomicUsize,
    verified: AtomicUsize,
    expires_in: AtomicU64,
    /// Reject every grant with this OAuth2 error.
    reject: Mutex<Option<&'static str>>,
    /// What the fake API saw in Authorization headers.
    api_auth: Mutex<Vec<String>>,
    /// Problems found in requests (a test fails if any).
    problems: Mutex<Vec<String>>,
}

impl Fake {
    fn problem(&self, p: String) {
        self.problems.lock().unwrap().push(p);
    }

    fn issue(&self) -> axum::response::Response {
        let n = self.calls.load(Ordering::SeqCst);
        (
            StatusCode::OK,
            [("content-type", "application/json")],
            json!({"access_token": format!("ya29.fake-token-{n}"), "expires_in": self.expires_in.load(Ordering::SeqCst), "token_type": "Bearer"}).to_string(),
        )
            .into_response()
    }
}

fn form(body: &[u8]) -> Vec<(String, String)> {
    let url = reqwest::Url::parse(&format!("http://x/?{}", String::from_utf8_lossy(body)))
        .expect("form body");
    url.query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn field<'a>(f: &'a [(String, String)], k: &str) -> Option<&'a str> {
    f.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str())
}

async fn token_endpoint(State(fake): State<Arc<Fake>>, body: Bytes) -> axum::response::Response {
    fake.calls.fetch_add(1, Ordering::SeqCst);
    if let Some(e) = *fake.reject.lock().unwrap() {
        return (
            StatusCode::BAD_REQUEST,
            [("content-type", "application/json")],
            json!({"error": e, "error_description": "Invalid JWT Signature."}).to_string(),
        )
            .into_response();
    }
    let f = form(&body);
    match field(&f, "grant_type") {
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer") => {
            let assertion = field(&f, "assertion").unwrap_or_default();
            if let Err(p) = verify_jwt(&fake, assertion) {
                fake.problem(p);
                return (
                    StatusCode::BAD_REQUEST,
                    json!({"error": "invalid_grant"}).to_string(),
                )
                    .into_response();
            }
            fake.verified.fetch_add(1, Ordering::SeqCst);
            fake.issue()
        }
        Some("refresh_token") => {
            if field(&f, "refresh_token") != Some("1//test-refresh-token")
                || field(&f, "client_id") != Some("test-client.apps.googleusercontent.com")
                || field(&f, "client_secret") != Some("test-client-secret")
            {
                fake.problem("refresh grant with wrong fields".into());
                return (
                    StatusCode::BAD_REQUEST,
                    json!({"error": "invalid_grant"}).to_string(),
                )
                    .into_response();
            }
            fake.verified.fetch_add(1, Ordering::SeqCst);
            fake.issue()
        }
        other => {
            fake.problem(format!("unexpected grant_type {other:?}"));
            (StatusCode::BAD_REQUEST, "{}").into_response()
        }
    }
}

/// Check the assertion as Google does: RS256 signature by the key's public half, then the
/// claims.
fn verify_jwt(fake: &Fake, jwt: &str) -> Result<(), String> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = jwt.split('.').collect();
    let [h, c, s] = parts.as_slice() else {
        return Err("the assertion is not three dot-separated parts".into());
    };
    let sig = b64
        .decode(s)
        .map_err(|e| format!("signature base64: {e}"))?;
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        &fake.public_key,
    )
    .verify(format!("{h}.{c}").as_bytes(), &sig)
    .map_err(|_| "the signature does not verify with the public key".to_owned())?;
    let header: Value = serde_json::from_slice(&b64.decode(h).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let claims: Value = serde_json::from_slice(&b64.decode(c).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    if header["alg"] != "RS256" || header["typ"] != "JWT" || header["kid"] != "test-key-id" {
        return Err(format!("bad header {header}"));
    }
    let url = fake.url.lock().unwrap().clone();
    if claims["iss"] != EMAIL || claims["scope"] != SCOPE || claims["aud"] != url.as_str() {
        return Err(format!("bad claims {claims}"));
    }
    let now = chrono::Utc::now().timestamp();
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap_or(0),
        claims["exp"].as_i64().unwrap_or(0),
    );
    if (iat - now).abs() > 60 || exp <= iat || exp - iat > 3600 {
        return Err(format!("bad times iat={iat} exp={exp} now={now}"));
    }
    Ok(())
}

async fn metadata(State(fake): State<Arc<Fake>>, headers: HeaderMap) -> axum::response::Response {
    fake.calls.fetch_add(1, Ordering::SeqCst);
    if headers.get("metadata-flavor").and_then(|v| v.to_str().ok()) != Some("Google") {
        fake.problem("metadata request without Metadata-Flavor: Google".into());
        return (StatusCode::FORBIDDEN, "missing Metadata-Flavor").into_response();
    }
    fake.verified.fetch_add(1, Ordering::SeqCst);
    fake.issue()
}

async fn api(State(fake): State<Arc<Fake>>, headers: HeaderMap) -> axum::response::Response {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    fake.api_auth.lock().unwrap().push(auth);
    (StatusCode::OK, [("content-type", "application/json")], "{}").into_response()
}

async fn start_fake(public_key: Vec<u8>, expires_in: u64) -> (Arc<Fake>, String) {
    let fake = Arc::new(Fake {
        public_key,
        expires_in: AtomicU64::new(expires_in),
        ..Fake::default()
    });
    let app = axum::Router::new()
        .route("/token", axum::routing::post(token_endpoint))
        .route(
            "/computeMetadata/v1/instance/service-accounts/default/token",
            axum::routing::get(metadata),
        )
        .route("/api/v1/ping", axum::routing::get(api))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    *fake.url.lock().unwrap() = format!("http://{addr}/token");
    (fake, addr.to_string())
}

fn key_file(dir: &std::path::Path, pem: &str, token_uri: &str) -> std::path::PathBuf {
    let path = dir.join("sa.json");
    std::fs::write(
        &path,
        json!({
            "type": "service_account",
            "project_id": "test-project",
            "private_key_id": "test-key-id",
            "private_key": pem,
            "client_email": EMAIL,
            "client_id": "1234567890",
            "token_uri": token_uri,
        })
        .to_string(),
    )
    .unwrap();
    path
}

fn config() -> AdcConfig {
    AdcConfig {
        // Never the real metadata server from a test.
        metadata_host: "127.0.0.1:9".into(),
        probe_timeout: Duration::from_millis(300),
        timeout: Duration::from_secs(5),
        ..AdcConfig::default()
    }
}

/// A service-account source against a fresh fake, or `None` without openssl.
async fn sa_setup(expires_in: u64) -> Option<(Arc<Fake>, Adc, tempfile::TempDir)> {
    let (pem, public) = test_key()?;
    let (fake, addr) = start_fake(public.clone(), expires_in).await;
    let dir = tempfile::tempdir().unwrap();
    let path = key_file(dir.path(), pem, &format!("http://{addr}/token"));
    let adc = Adc::discover(AdcConfig {
        credentials_file: Some(path),
        ..config()
    })
    .expect("the key file is accepted");
    Some((fake, adc, dir))
}

#[tokio::test]
async fn service_account_assertion_is_signed_and_exchanged() {
    let Some((fake, adc, _dir)) = sa_setup(3600).await else {
        return;
    };
    let token = adc.access_token().await.expect("a token");
    assert_eq!(token.expose_secret(), "ya29.fake-token-1");
    assert_eq!(fake.verified.load(Ordering::SeqCst), 1);
    assert!(
        fake.problems.lock().unwrap().is_empty(),
        "{:?}",
        fake.problems
    );
    assert_eq!(adc.project_id(), Some("test-project"));
    assert_eq!(
        adc.quota_project(),
        None,
        "a service account bills its own project"
    );
    assert!(adc.source_name().contains("GOOGLE_APPLICATION_CREDENTIALS"));
    assert!(adc.source_name().contains(EMAIL));
}

#[tokio::test]
async fn tokens_are_cached_and_one_refresh_is_shared() {
    let Some((fake, adc, _dir)) = sa_setup(3600).await else {
        return;
    };
    let adc = Arc::new(adc);
    let first = adc.access_token().await.unwrap();
    let second = adc.access_token().await.unwrap();
    assert_eq!(first.expose_secret(), second.expose_secret());
    assert_eq!(
        fake.calls.load(Ordering::SeqCst),
        1,
        "the second call was cached"
    );

    // A cold source hit by many callers at once makes one request.
    let Some((fake2, adc2, _dir2)) = sa_setup(3600).await else {
        return;
    };
    let adc2 = Arc::new(adc2);
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let a = adc2.clone();
            tokio::spawn(
                async move { a.access_token().await.map(|t| t.expose_secret().to_owned()) },
            )
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), "ya29.fake-token-1");
    }
    assert_eq!(fake2.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_token_near_expiry_is_refreshed() {
    // 61 s of life and a 60 s margin: usable for one second, then refreshed.
    let Some((fake, adc, _dir)) = sa_setup(61).await else {
        return;
    };
    let a = adc.access_token().await.unwrap();
    let b = adc.access_token().await.unwrap();
    assert_eq!(a.expose_secret(), b.expose_secret());
    assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let c = adc.access_token().await.unwrap();
    assert_eq!(fake.calls.load(Ordering::SeqCst), 2);
    assert_eq!(c.expose_secret(), "ya29.fake-token-2");
    assert_eq!(fake.verified.load(Ordering::SeqCst), 2);

    // Past the refresh point, a failing token endpoint does not take down a token that
    // still works: it is used until it expires.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    *fake.reject.lock().unwrap() = Some("temporarily_unavailable");
    let d = adc.access_token().await.unwrap();
    assert_eq!(d.expose_secret(), "ya29.fake-token-2");
    assert_eq!(
        fake.calls.load(Ordering::SeqCst),
        3,
        "a refresh was attempted"
    );
}

#[tokio::test]
async fn metadata_server_with_overridden_host() {
    let (fake, addr) = start_fake(Vec::new(), 3599).await;
    let adc = Adc::discover(AdcConfig {
        metadata_host: addr.clone(),
        on_google_cloud: true,
        ..config()
    })
    .unwrap();
    assert!(adc.source_name().contains(&addr));
    let t = adc
        .access_token()
        .await
        .expect("a token from the metadata server");
    assert_eq!(t.expose_secret(), "ya29.fake-token-1");
    assert_eq!(fake.verified.load(Ordering::SeqCst), 1);
    assert!(fake.problems.lock().unwrap().is_empty());
    adc.access_token().await.unwrap();
    assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn without_credentials_the_metadata_probe_fails_fast_and_clearly() {
    // A listener that accepts and never answers: the worst case for a laptop.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let adc = Adc::discover(AdcConfig {
        metadata_host: addr.to_string(),
        on_google_cloud: false,
        ..config()
    })
    .unwrap();
    let start = Instant::now();
    let e = adc
        .access_token()
        .await
        .expect_err("no credentials anywhere");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(e.kind, ErrorKind::Auth);
    let text = e.to_string();
    assert!(text.contains("metadata server"), "{text}");
    assert!(text.contains("none found"), "{text}");
    assert!(
        text.contains("gcloud auth application-default login"),
        "{text}"
    );
}

#[tokio::test]
async fn an_access_token_in_the_environment_comes_first() {
    let Some((pem, public)) = test_key() else {
        return;
    };
    let (fake, addr) = start_fake(public.clone(), 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let path = key_file(dir.path(), pem, &format!("http://{addr}/token"));
    let adc = Adc::discover(AdcConfig {
        env_token: Some((
            "GOOGLE_OAUTH_ACCESS_TOKEN",
            SecretString::from("ya29.from-env"),
        )),
        credentials_file: Some(path),
        ..config()
    })
    .unwrap();
    assert_eq!(adc.source_name(), "GOOGLE_OAUTH_ACCESS_TOKEN");
    for _ in 0..3 {
        assert_eq!(
            adc.access_token().await.unwrap().expose_secret(),
            "ya29.from-env"
        );
    }
    assert_eq!(fake.calls.load(Ordering::SeqCst), 0);
    assert!(!format!("{adc:?}").contains("ya29"));
}

#[tokio::test]
async fn gcloud_user_login_uses_the_refresh_grant() {
    let (fake, addr) = start_fake(Vec::new(), 3600).await;
    let dir = tempfile::tempdir().unwrap();
    let well_known = dir.path().join("application_default_credentials.json");
    std::fs::write(
        &well_known,
        json!({
            "type": "authorized_user",
            "client_id": "test-client.apps.googleusercontent.com",
            "client_secret": "test-client-secret",
            "refresh_token": "1//test-refresh-token",
            "token_uri": format!("http://{addr}/token"),
            "quota_project_id": "quota-project-1",
        })
        .to_string(),
    )
    .unwrap();
    // GOOGLE_APPLICATION_CREDENTIALS wins over the well-known file, so it is unset here.
    let adc = Adc::discover(AdcConfig {
        well_known_file: Some(well_known),
        ..config()
    })
    .unwrap();
    assert!(adc.source_name().contains("gcloud"));
    let t = adc.access_token().await.unwrap();
    assert_eq!(t.expose_secret(), "ya29.fake-token-1");
    assert!(
        fake.problems.lock().unwrap().is_empty(),
        "{:?}",
        fake.problems
    );
    // The file's quota project goes on every call, as `$userProject`.
    assert_eq!(adc.quota_project(), Some("quota-project-1"));
    let ep = telbase::providers::google::endpoint_with(Provider::CloudSql, Arc::new(adc)).unwrap();
    assert_eq!(
        ep.always_query,
        vec![("$userProject".to_owned(), "quota-project-1".to_owned())]
    );
    // GOOGLE_CLOUD_QUOTA_PROJECT wins over the file.
    let adc = Adc::discover(AdcConfig {
        well_known_file: Some(dir.path().join("application_default_credentials.json")),
        quota_project: Some("from-env".into()),
        ..config()
    })
    .unwrap();
    assert_eq!(adc.quota_project(), Some("from-env"));
    // A missing well-known file falls through to the metadata server.
    let adc = Adc::discover(AdcConfig {
        well_known_file: Some(dir.path().join("nope.json")),
        ..config()
    })
    .unwrap();
    assert!(adc.source_name().contains("metadata"));
}

fn setup_error(cfg: AdcConfig) -> String {
    match Adc::discover(cfg) {
        Ok(a) => panic!("accepted: {a:?}"),
        Err(e @ SetupError::Invalid { .. }) => e.to_string(),
        Err(e) => panic!("wrong error: {e}"),
    }
}

#[tokio::test]
async fn missing_and_corrupt_key_files_are_reported_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.json");
    let e = setup_error(AdcConfig {
        credentials_file: Some(missing),
        ..config()
    });
    assert!(e.contains("GOOGLE_APPLICATION_CREDENTIALS"), "{e}");
    assert!(e.contains("cannot read the key file"), "{e}");
    assert!(e.contains("missing.json"), "{e}");

    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, "{\"type\": \"service_acc").unwrap();
    let e = setup_error(AdcConfig {
        credentials_file: Some(garbage),
        ..config()
    });
    assert!(e.contains("not valid JSON"), "{e}");

    // A key whose body is not an RSA key: reported, never echoed.
    let body = "MIIBVQIBADANBgkqhkiG9w0BAQEFAASCAT8wggE7AgEAAkEAsecretsecretsecret";
    let bad_key = format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n");
    let path = key_file(dir.path(), &bad_key, "https://oauth2.googleapis.com/token");
    let e = setup_error(AdcConfig {
        credentials_file: Some(path),
        ..config()
    });
    assert!(e.contains("private_key"), "{e}");
    assert!(!e.contains("secretsecret"), "{e}");
    assert!(!e.contains("MIIB"), "{e}");

    let huge = dir.path().join("huge.json");
    std::fs::write(&huge, vec![b' '; 300 * 1024]).unwrap();
    let e = setup_error(AdcConfig {
        credentials_file: Some(huge),
        ..config()
    });
    assert!(e.contains("too large"), "{e}");

    let other = dir.path().join("external.json");
    std::fs::write(&other, json!({"type": "external_account"}).to_string()).unwrap();
    let e = setup_error(AdcConfig {
        credentials_file: Some(other),
        ..config()
    });
    assert!(e.contains("external_account"), "{e}");
}

#[tokio::test]
async fn credentials_never_go_to_a_plain_http_token_endpoint() {
    let Some((pem, _)) = test_key() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = key_file(dir.path(), pem, "http://oauth2.example.com/token");
    let e = setup_error(AdcConfig {
        credentials_file: Some(path),
        ..config()
    });
    assert!(e.contains("not https"), "{e}");
    assert!(!e.contains("PRIVATE KEY"), "{e}");
}

#[tokio::test]
async fn refused_credentials_name_the_source_and_no_secret() {
    let Some((fake, adc, _dir)) = sa_setup(3600).await else {
        return;
    };
    *fake.reject.lock().unwrap() = Some("invalid_grant");
    let e = adc.access_token().await.expect_err("refused");
    assert_eq!(e.kind, ErrorKind::Auth);
    assert_eq!(e.status, Some(400));
    let text = e.to_string();
    assert!(text.contains("invalid_grant"), "{text}");
    assert!(text.contains(EMAIL), "{text}");
    // Auth failures are not retried: one request.
    assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
    let (pem, _) = test_key().unwrap();
    let key_line = pem.lines().nth(1).unwrap();
    assert!(!text.contains(key_line));
    assert!(!text.contains("eyJ"), "no JWT in the message: {text}");
    assert!(!format!("{e:?}").contains("eyJ"));

    // Through the provider-facing token source: the provider is named, still no secret.
    *fake.reject.lock().unwrap() = None;
    let tokens = ProviderTokens {
        adc: Arc::new(adc),
        provider: Provider::CloudSql,
    };
    use telbase::providers::http::TokenSource as _;
    let t = tokens.token().await.unwrap();
    assert!(!format!("{:?}", tokens.adc).contains(t.expose_secret()));
}

#[tokio::test]
async fn endpoints_carry_the_minted_token() {
    let Some((fake, adc, _dir)) = sa_setup(3600).await else {
        return;
    };
    let adc = Arc::new(adc);
    let real = telbase::providers::google::endpoint_with(Provider::CloudSql, adc.clone()).unwrap();
    assert_eq!(real.base, "https://sqladmin.googleapis.com");
    let run = telbase::providers::google::endpoint_with(Provider::CloudRun, adc.clone()).unwrap();
    assert_eq!(run.base, "https://run.googleapis.com");
    assert!(!format!("{real:?}").contains("ya29"));

    // The same source, pointed at a loopback fake API so the header can be seen.
    let addr = fake
        .url
        .lock()
        .unwrap()
        .trim_end_matches("/token")
        .to_owned();
    let mut eps = Vec::new();
    for p in [
        Provider::CloudSql,
        Provider::SecretManager,
        Provider::CloudRun,
    ] {
        eps.push(
            Endpoint::with_token_source(
                p,
                &format!("{addr}/api"),
                Arc::new(ProviderTokens {
                    adc: adc.clone(),
                    provider: p,
                }),
                vec![],
            )
            .unwrap(),
        );
    }
    let http = Http::new(HttpConfig::default()).unwrap();
    for ep in &eps {
        http.send(ep, &Call::get("/v1/ping", "ping")).await.unwrap();
    }
    let seen = fake.api_auth.lock().unwrap().clone();
    assert_eq!(seen, vec!["Bearer ya29.fake-token-1"; 3]);
    // Three APIs, one token request.
    assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
}

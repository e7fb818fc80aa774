//! Keyless Google auth, emulated end to end: the GitHub Actions OIDC token service, Google's
//! Security Token Service and IAM Service Account Credentials, so workload identity
//! federation can be tested on one machine. Mounted at:
//!
//! - `/actions-oidc/idtoken?api-version=2.0&audience=AUD` (GET): the runner's
//!   `ACTIONS_ID_TOKEN_REQUEST_URL`. Takes `Authorization: Bearer`
//!   [`ACTIONS_REQUEST_TOKEN`] (the runner's `ACTIONS_ID_TOKEN_REQUEST_TOKEN`) and answers
//!   `{"value": JWT}`. The JWT carries the claims GitHub documents for its tokens: `iss`
//!   `https://token.actions.githubusercontent.com`, `sub` `repo:OWNER/REPO:ref:REF` (or
//!   `…:pull_request` on pull_request events, `…:environment:NAME` for a job in an
//!   environment), `aud` from the query (GitHub's default, the owner's URL, without one),
//!   `repository`, `repository_owner`, `ref`, `sha`, `event_name`, `actor`, `workflow`,
//!   `job_workflow_ref`, `run_id`, `jti`, `iat`, `nbf`, `exp` (five minutes). One deviation:
//!   GitHub signs RS256; this emulator signs ES256 (which STS also accepts) with a P-256 key
//!   generated at first use, because `ring` cannot generate RSA keys. Clients never look
//!   inside the token; the emulated STS verifies the signature, so a token edited by hand is
//!   refused as the real STS would refuse it.
//! - `/sts/v1/token` (POST): `GoogleIdentityStsV1ExchangeTokenRequest` as JSON (camelCase or
//!   proto field names) or as an RFC 8693 form. Checked as STS checks: grant type, requested
//!   and subject token types, the audience's shape, the JWT's signature, `iss`, `aud` equal
//!   to the request's audience, `exp`/`iat`, and the provider's attribute condition when one
//!   is set (`allowed_repository`). Refusals are STS's OAuth2 errors (`{"error":
//!   "invalid_request" | "invalid_grant" | "unauthorized_client", "error_description"}`).
//! - `/iamcredentials/v1/projects/-/serviceAccounts/EMAIL:generateAccessToken` (POST):
//!   `{scope, lifetime}` → `{accessToken, expireTime}` for a bearer STS issued, with IAM's
//!   `{"error": {code, message, status}}` envelope on refusal.
//!
//! Access tokens STS and IAM Credentials issue here are accepted by the emulated Cloud Run,
//! Secret Manager and Cloud SQL until they expire (an hour, or the requested lifetime), in
//! addition to the emulator's shared token. `POST /_admin/keyless` (or
//! [`super::Handle::keyless`]) sets the workflow the OIDC tokens describe (`claims`: values
//! that replace the defaults, e.g. `{"repository": "o/r", "event_name": "pull_request"}`),
//! `token_lifetime_secs` (negative: tokens already expired), `allowed_repository` (the
//! attribute condition) and `deny_impersonation` (service accounts the principal lacks
//! `roles/iam.workloadIdentityUser` on). Latency, 5xx and 429 faults apply as elsewhere.

use std::collections::HashMap;
use std::io::Write as _;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::{Answer, Exchange, Inner, Record, json_response, redact};
use crate::model::Provider;

/// The bearer the emulated runner token service takes (the runner's
/// `ACTIONS_ID_TOKEN_REQUEST_TOKEN` in tests).
pub const ACTIONS_REQUEST_TOKEN: &str = "telbase-emulator-actions-request-token";

/// The issuer of GitHub Actions OIDC tokens, the only one the emulated pools trust.
pub const GITHUB_ISSUER: &str = "https://token.actions.githubusercontent.com";

const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const SUBJECT_TYPES: &[&str] = &[
    "urn:ietf:params:oauth:token-type:jwt",
    "urn:ietf:params:oauth:token-type:id_token",
];
/// The key id in the emulator's JWT header.
const KID: &str = "telbase-emulator-actions";
/// How long a federated token lives (STS: an hour).
const FEDERATED_TTL: Duration = Duration::from_secs(3600);

/// The three emulated services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    ActionsOidc,
    Sts,
    IamCredentials,
}

impl Api {
    /// The name in captures, recordings and counters.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Api::ActionsOidc => "actions-oidc",
            Api::Sts => "sts",
            Api::IamCredentials => "iamcredentials",
        }
    }
}

/// Which service a path belongs to, and the path below its prefix.
pub(crate) fn classify(path: &str) -> Option<(Api, &str)> {
    [Api::ActionsOidc, Api::Sts, Api::IamCredentials]
        .into_iter()
        .find_map(|api| {
            let rest = path.strip_prefix(&format!("/{}", api.name()))?;
            (rest.is_empty() || rest.starts_with('/')).then_some((api, rest))
        })
}

#[derive(Default)]
pub(crate) struct State {
    /// PKCS#8 of the ES256 signing key, made at first use.
    key: Option<Vec<u8>>,
    /// Claim values that replace the defaults.
    claims: Map<String, Value>,
    token_lifetime_secs: Option<i64>,
    /// The attribute condition: only this repository's tokens are exchanged.
    allowed_repository: Option<String>,
    deny_impersonation: Vec<String>,
    /// Access tokens issued: token → (expiry, principal).
    issued: HashMap<String, (Instant, String)>,
    seq: u64,
}

impl State {
    fn next(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn key(&mut self) -> Option<ring::signature::EcdsaKeyPair> {
        let rng = ring::rand::SystemRandom::new();
        let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        if self.key.is_none() {
            let doc = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).ok()?;
            self.key = Some(doc.as_ref().to_vec());
        }
        ring::signature::EcdsaKeyPair::from_pkcs8(alg, self.key.as_deref()?, &rng).ok()
    }
}

/// Whether `token` is an access token this emulator issued, unexpired, good for `provider`
/// (the Google APIs only).
pub(crate) fn accepts(inner: &Inner, provider: Provider, token: &str) -> bool {
    if !matches!(
        provider,
        Provider::CloudRun | Provider::SecretManager | Provider::CloudSql
    ) {
        return false;
    }
    let w = inner.world.lock().unwrap_or_else(|e| e.into_inner());
    w.keyless
        .issued
        .get(token)
        .is_some_and(|(expires, _)| Instant::now() < *expires)
}

/// Set the workflow the OIDC tokens describe and the pool's rules; see the module doc.
pub(crate) fn seed(s: &mut State, body: &Value) -> Result<Value, String> {
    if let Some(c) = body.get("claims") {
        let c = c.as_object().ok_or("claims must be an object")?;
        s.claims.extend(c.clone());
    }
    if let Some(l) = body.get("token_lifetime_secs") {
        s.token_lifetime_secs = Some(l.as_i64().ok_or("token_lifetime_secs must be an integer")?);
    }
    if let Some(r) = body.get("allowed_repository") {
        s.allowed_repository = r.as_str().map(str::to_owned);
    }
    if let Some(d) = body.get("deny_impersonation") {
        s.deny_impersonation = d
            .as_array()
            .ok_or("deny_impersonation must be a list of emails")?
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
    }
    Ok(json!({"ok": true}))
}

/// Serve one request to the three services: latency and faults as elsewhere, then the
/// route, then capture, recording and counters.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve(
    inner: &Inner,
    api: Api,
    method: &Method,
    rest: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    started: Instant,
) -> Response {
    let faults = inner.config.faults.clone();
    if !faults.latency.is_zero() {
        tokio::time::sleep(faults.latency).await;
    }
    let fault: Option<&'static str> = {
        let mut rng = inner.rng.lock().unwrap_or_else(|e| e.into_inner());
        let r = rng.f64();
        if r < faults.rate_429 {
            Some("429")
        } else if r < faults.rate_429 + faults.rate_5xx {
            Some("5xx")
        } else {
            None
        }
    };
    let query: Vec<(String, String)> = uri
        .query()
        .map(|q| {
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (super::percent_decode(k), super::percent_decode(v))
                })
                .collect()
        })
        .unwrap_or_default();
    let answer = match fault {
        Some("429") => {
            let mut a = google_error(429, "Quota exceeded. Try again later.");
            a.headers.push(("retry-after", "1".into()));
            a
        }
        Some(_) => google_error(503, "The service is currently unavailable."),
        None => {
            let token = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            let mut w = inner.world.lock().unwrap_or_else(|e| e.into_inner());
            let s = &mut w.keyless;
            match api {
                Api::ActionsOidc => actions_oidc(s, method, rest, &query, token),
                Api::Sts => sts(s, method, rest, headers, body),
                Api::IamCredentials => iam_credentials(s, method, rest, token, body),
            }
        }
    };
    if let Ok(mut guard) = inner.counters.lock() {
        // Through a plain reference, so the borrows of its fields are disjoint.
        let c = &mut *guard;
        c.requests += 1;
        let pc = c.by_provider.entry(api.name().to_owned()).or_default();
        if method == Method::GET {
            c.reads += 1;
            pc.reads += 1;
        } else {
            c.writes += 1;
            pc.writes += 1;
        }
        if let Some(f) = fault {
            *c.faults.entry(f.to_owned()).or_default() += 1;
        }
        let route = match api {
            Api::ActionsOidc => "GET /idtoken",
            Api::Sts => "POST /v1/token",
            Api::IamCredentials => {
                "POST /v1/projects/{id}/serviceAccounts/{id}:generateAccessToken"
            }
        };
        *pc.routes.entry(route.to_owned()).or_default() += 1;
    }
    if inner.config.capture
        && let Ok(mut c) = inner.captured.lock()
    {
        c.push(Exchange {
            provider: api.name().into(),
            method: method.as_str().to_owned(),
            path: rest.to_owned(),
            query: uri.query().unwrap_or_default().to_owned(),
            request_body: body.to_vec(),
            status: answer.status,
            response_body: answer.body.clone(),
            started,
            finished: Instant::now(),
        });
    }
    if let Some(rec) = &inner.record {
        let mut req_body = request_fields(headers, body).map(Value::Object);
        if let Some(b) = &mut req_body {
            hide_tokens(b);
        }
        let mut resp_body = answer.body.clone();
        if let Some(b) = &mut resp_body {
            hide_tokens(b);
        }
        let line = Record {
            provider: api.name(),
            method: method.as_str(),
            path: rest,
            query: &query,
            request_body: req_body,
            status: answer.status,
            response_body: resp_body,
            fault,
        };
        if let (Ok(mut f), Ok(s)) = (rec.lock(), serde_json::to_string(&line)) {
            let _ = writeln!(f, "{s}");
        }
    }
    json_response(answer.status, answer.body.as_ref(), &answer.headers)
}

/// Recordings are files people share: every token in these exchanges is a credential.
fn hide_tokens(v: &mut Value) {
    redact(v);
    if let Value::Object(m) = v {
        for (k, x) in m.iter_mut() {
            let secret = matches!(
                k.as_str(),
                "subjectToken" | "subject_token" | "access_token" | "accessToken" | "value"
            );
            if secret && x.is_string() {
                *x = Value::String("[redacted]".into());
            }
        }
    }
}

fn google_error(status: u16, message: &str) -> Answer {
    let name = match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        _ => "INTERNAL",
    };
    Answer::ok(
        status,
        json!({"error": {"code": status, "message": message, "status": name}}),
    )
}

/// STS's OAuth2 error (RFC 6749 §5.2), as its token endpoint answers.
fn oauth_error(status: u16, error: &str, description: &str) -> Answer {
    Answer::ok(
        status,
        json!({"error": error, "error_description": description}),
    )
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

// ---------------------------------------------------------------------------------------
// The runner's OIDC token service

fn actions_oidc(
    s: &mut State,
    method: &Method,
    rest: &str,
    query: &[(String, String)],
    token: Option<&str>,
) -> Answer {
    if method != Method::GET || rest != "/idtoken" {
        return Answer::ok(
            404,
            json!({"message": "the emulated token service serves GET /actions-oidc/idtoken"}),
        );
    }
    if token != Some(ACTIONS_REQUEST_TOKEN) {
        return Answer::ok(
            401,
            json!({"message": "The bearer token is not valid for this job's token request"}),
        );
    }
    let audience = query
        .iter()
        .find(|(k, _)| k == "audience")
        .map(|(_, v)| v.clone());
    let Some(jwt) = issue_jwt(s, audience) else {
        return Answer::ok(500, json!({"message": "cannot sign the token"}));
    };
    Answer::ok(200, json!({"value": jwt}))
}

/// The claims of the token, as GitHub documents them, with the seeded values over the
/// defaults.
fn claims(s: &mut State, audience: Option<String>) -> Map<String, Value> {
    let base = json!({
        "repository": "octo-org/octo-repo",
        "ref": "refs/heads/main",
        "sha": "4f2a9c1e0b7d3a5f6e8c9b0a1d2e3f4a5b6c7d8e",
        "event_name": "push",
        "actor": "octocat",
        "actor_id": "583231",
        "repository_id": "74",
        "repository_owner_id": "65",
        "repository_visibility": "private",
        "workflow": "telbase",
        "run_id": "7301",
        "run_number": "12",
        "run_attempt": "1",
        "runner_environment": "github-hosted",
        "head_ref": "",
        "base_ref": "",
    });
    let mut c = base.as_object().cloned().unwrap_or_default();
    for (k, v) in &s.claims {
        c.insert(k.clone(), v.clone());
    }
    let text = |c: &Map<String, Value>, k: &str| {
        c.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let repo = text(&c, "repository");
    let owner = repo.split('/').next().unwrap_or_default().to_owned();
    let git_ref = text(&c, "ref");
    let sha = text(&c, "sha");
    let environment = text(&c, "environment");
    let sub = if !environment.is_empty() {
        format!("repo:{repo}:environment:{environment}")
    } else if text(&c, "event_name") == "pull_request" {
        format!("repo:{repo}:pull_request")
    } else {
        format!("repo:{repo}:ref:{git_ref}")
    };
    let workflow_ref = format!("{repo}/.github/workflows/telbase.yml@{git_ref}");
    let ref_type = if git_ref.starts_with("refs/tags/") {
        "tag"
    } else {
        "branch"
    };
    let iat = now_secs();
    let lifetime = s.token_lifetime_secs.unwrap_or(300);
    let n = s.next();
    let defaults = json!({
        "jti": format!("00000000-0000-4000-8000-{n:012}"),
        "sub": sub,
        "aud": audience.unwrap_or_else(|| format!("https://github.com/{owner}")),
        "repository_owner": owner,
        "ref_type": ref_type,
        "ref_protected": "false",
        "workflow_ref": workflow_ref,
        "workflow_sha": sha,
        "job_workflow_ref": workflow_ref,
        "job_workflow_sha": sha,
        "iss": GITHUB_ISSUER,
        "nbf": iat - 60,
        "iat": iat,
        "exp": iat + lifetime,
    });
    for (k, v) in defaults.as_object().cloned().unwrap_or_default() {
        // A seeded claim wins, except the times, which are always now.
        if !c.contains_key(&k) || matches!(k.as_str(), "iat" | "exp" | "nbf" | "jti") {
            c.insert(k, v);
        }
    }
    c
}

fn issue_jwt(s: &mut State, audience: Option<String>) -> Option<String> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims = claims(s, audience);
    let header = json!({"typ": "JWT", "alg": "ES256", "kid": KID});
    let input = format!(
        "{}.{}",
        b64.encode(header.to_string()),
        b64.encode(Value::Object(claims).to_string())
    );
    let key = s.key()?;
    let sig = key
        .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
        .ok()?;
    Some(format!("{input}.{}", b64.encode(sig.as_ref())))
}

/// The claims of a JWT this emulator signed, or why it is refused (STS's words).
fn verify_jwt(s: &mut State, jwt: &str) -> Result<Map<String, Value>, &'static str> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = jwt.split('.').collect();
    let [h, c, sig] = parts.as_slice() else {
        return Err("Unable to parse the ID Token.");
    };
    let header: Value = b64
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("Unable to parse the ID Token.")?;
    let claims: Map<String, Value> = b64
        .decode(c)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("Unable to parse the ID Token.")?;
    let sig = b64
        .decode(sig)
        .map_err(|_| "Unable to parse the ID Token.")?;
    if header.get("alg").and_then(Value::as_str) != Some("ES256")
        || header.get("kid").and_then(Value::as_str) != Some(KID)
    {
        return Err("The ID Token's signing key is not among the issuer's keys.");
    }
    use ring::signature::KeyPair as _;
    let key = s.key().ok_or("Unable to verify the ID Token.")?;
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_FIXED,
        key.public_key().as_ref(),
    )
    .verify(format!("{h}.{c}").as_bytes(), &sig)
    .map_err(|_| "Invalid JWT signature.")?;
    Ok(claims)
}

// ---------------------------------------------------------------------------------------
// Security Token Service

/// The request's fields, from JSON (camelCase or proto names) or an RFC 8693 form, under
/// their proto (snake_case) names.
fn request_fields(headers: &HeaderMap, body: &[u8]) -> Option<Map<String, Value>> {
    let form = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
    if form {
        let text = std::str::from_utf8(body).ok()?;
        return Some(
            text.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (
                        super::percent_decode(k),
                        Value::String(super::percent_decode(v)),
                    )
                })
                .collect(),
        );
    }
    serde_json::from_slice::<Value>(body)
        .ok()?
        .as_object()
        .cloned()
}

fn field<'a>(m: &'a Map<String, Value>, proto: &str, camel: &str) -> Option<&'a str> {
    m.get(camel)
        .or_else(|| m.get(proto))
        .and_then(Value::as_str)
}

fn sts(s: &mut State, method: &Method, rest: &str, headers: &HeaderMap, body: &[u8]) -> Answer {
    if rest != "/v1/token" {
        return google_error(404, "The requested URL was not found on this server.");
    }
    if method != Method::POST {
        return google_error(404, "The requested URL was not found on this server.");
    }
    let Some(m) = request_fields(headers, body) else {
        return oauth_error(
            400,
            "invalid_request",
            "The request body is not valid JSON or form data.",
        );
    };
    if field(&m, "grant_type", "grantType") != Some(TOKEN_EXCHANGE_GRANT) {
        return oauth_error(
            400,
            "invalid_request",
            "Invalid value for \"grant_type\". The only supported value is urn:ietf:params:oauth:grant-type:token-exchange.",
        );
    }
    if field(&m, "requested_token_type", "requestedTokenType") != Some(ACCESS_TOKEN_TYPE) {
        return oauth_error(
            400,
            "invalid_request",
            "Invalid value for \"requested_token_type\". Supported values are urn:ietf:params:oauth:token-type:access_token and urn:ietf:params:oauth:token-type:access_boundary_intermediary_token.",
        );
    }
    let subject_type = field(&m, "subject_token_type", "subjectTokenType").unwrap_or_default();
    if !SUBJECT_TYPES.contains(&subject_type) {
        return oauth_error(
            400,
            "invalid_request",
            "Invalid value for \"subject_token_type\". The emulated workload identity pools take urn:ietf:params:oauth:token-type:jwt or urn:ietf:params:oauth:token-type:id_token.",
        );
    }
    let audience = field(&m, "audience", "audience")
        .unwrap_or_default()
        .to_owned();
    let Some((number, pool)) = audience_parts(&audience) else {
        return oauth_error(
            400,
            "invalid_request",
            "Invalid value for \"audience\". This value should be the full resource name of the Identity Provider. See https://cloud.google.com/iam/docs/reference/sts/rest/v1/TopLevel/token for the list of possible formats.",
        );
    };
    if field(&m, "scope", "scope").is_none_or(str::is_empty) {
        return oauth_error(
            400,
            "invalid_request",
            "Invalid value for \"scope\". A scope is required when exchanging an external credential.",
        );
    }
    let Some(subject) = field(&m, "subject_token", "subjectToken").filter(|t| !t.is_empty()) else {
        return oauth_error(
            400,
            "invalid_request",
            "Missing required parameter: \"subject_token\".",
        );
    };
    let claims = match verify_jwt(s, subject) {
        Ok(c) => c,
        Err(why) => return oauth_error(400, "invalid_grant", why),
    };
    let claim = |k: &str| claims.get(k).and_then(Value::as_str).unwrap_or_default();
    let iss = claim("iss");
    if iss != GITHUB_ISSUER {
        return oauth_error(
            400,
            "invalid_grant",
            &format!(
                "The issuer in ID Token {iss} does not match the expected ones: {GITHUB_ISSUER}."
            ),
        );
    }
    let aud = claim("aud");
    if aud != audience {
        return oauth_error(
            400,
            "invalid_grant",
            &format!("The audience in ID Token [{aud}] does not match the expected audience."),
        );
    }
    let now = now_secs();
    let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
    let iat = claims
        .get("iat")
        .and_then(Value::as_i64)
        .unwrap_or(i64::MAX);
    if exp <= now {
        return oauth_error(400, "invalid_grant", "ID Token has expired.");
    }
    // A little clock skew is forgiven, as Google does.
    if iat > now + 300 {
        return oauth_error(400, "invalid_grant", "ID Token issued at a future time.");
    }
    if now - iat > 24 * 3600 {
        return oauth_error(
            400,
            "invalid_grant",
            "ID Token is too old (issued more than 24 hours ago).",
        );
    }
    if let Some(allowed) = &s.allowed_repository
        && claim("repository") != allowed.as_str()
    {
        return oauth_error(
            400,
            "unauthorized_client",
            "The given credential is rejected by the attribute condition.",
        );
    }
    let principal = format!(
        "principal://iam.googleapis.com/projects/{number}/locations/global/workloadIdentityPools/{pool}/subject/{}",
        claim("sub")
    );
    let token = format!("ya29.d.telbase-emulator-federated-{}", s.next());
    s.issued
        .insert(token.clone(), (Instant::now() + FEDERATED_TTL, principal));
    Answer::ok(
        200,
        json!({
            "access_token": token,
            "issued_token_type": ACCESS_TOKEN_TYPE,
            "token_type": "Bearer",
            "expires_in": FEDERATED_TTL.as_secs() - 1,
        }),
    )
}

/// `//iam.googleapis.com/projects/NUMBER/locations/global/workloadIdentityPools/POOL/providers/P`
/// → (NUMBER, POOL).
fn audience_parts(audience: &str) -> Option<(String, String)> {
    let rest = audience.strip_prefix("//iam.googleapis.com/")?;
    match rest.split('/').collect::<Vec<_>>().as_slice() {
        [
            "projects",
            number,
            "locations",
            "global",
            "workloadIdentityPools",
            pool,
            "providers",
            provider,
        ] if !number.is_empty()
            && number.bytes().all(|b| b.is_ascii_digit())
            && !pool.is_empty()
            && !provider.is_empty() =>
        {
            Some(((*number).to_owned(), (*pool).to_owned()))
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// IAM Service Account Credentials

fn iam_credentials(
    s: &mut State,
    method: &Method,
    rest: &str,
    token: Option<&str>,
    body: &[u8],
) -> Answer {
    let segs: Vec<&str> = rest.split('/').filter(|x| !x.is_empty()).collect();
    let ["v1", "projects", project, "serviceAccounts", last] = segs.as_slice() else {
        return google_error(404, "The requested URL was not found on this server.");
    };
    let Some(email) = last.strip_suffix(":generateAccessToken") else {
        return google_error(404, "The requested URL was not found on this server.");
    };
    if method != Method::POST {
        return google_error(404, "The requested URL was not found on this server.");
    }
    let valid = token
        .and_then(|t| s.issued.get(t))
        .is_some_and(|(expires, _)| Instant::now() < *expires);
    if !valid {
        return google_error(
            401,
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
        );
    }
    if *project != "-" {
        return google_error(
            400,
            "The project in the resource name must be the wildcard \"-\": projects/-/serviceAccounts/ACCOUNT.",
        );
    }
    let email = super::percent_decode(email);
    if !email.ends_with(".gserviceaccount.com") || s.deny_impersonation.contains(&email) {
        return google_error(
            403,
            "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).",
        );
    }
    let req: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => return google_error(400, "Invalid JSON payload received."),
    };
    let scopes = req
        .get("scope")
        .and_then(Value::as_array)
        .map(|a| a.len())
        .unwrap_or(0);
    if scopes == 0 {
        return google_error(400, "Scope required.");
    }
    let lifetime = match req.get("lifetime").and_then(Value::as_str) {
        None => 3600,
        Some(l) => match l
            .strip_suffix('s')
            .and_then(|n| n.split('.').next())
            .and_then(|n| n.parse::<u64>().ok())
        {
            Some(n) if n > 0 => n,
            _ => {
                return google_error(
                    400,
                    "Invalid value at 'lifetime' (type.googleapis.com/google.protobuf.Duration).",
                );
            }
        },
    };
    if lifetime > 3600 {
        return google_error(
            400,
            "The lifetime of the requested token exceeds the maximum of 3600s (an organization policy can allow up to 43200s).",
        );
    }
    let token = format!("ya29.c.telbase-emulator-impersonated-{}", s.next());
    s.issued.insert(
        token.clone(),
        (
            Instant::now() + Duration::from_secs(lifetime),
            format!("serviceAccount:{email}"),
        ),
    );
    let expire = chrono::Utc::now() + chrono::Duration::seconds(lifetime as i64);
    Answer::ok(
        200,
        json!({
            "accessToken": token,
            "expireTime": expire.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert_eq!(classify("/sts/v1/token"), Some((Api::Sts, "/v1/token")));
        assert_eq!(
            classify("/iamcredentials/v1/projects/-/serviceAccounts/a@b:generateAccessToken")
                .map(|(a, _)| a),
            Some(Api::IamCredentials)
        );
        assert_eq!(
            classify("/actions-oidc/idtoken"),
            Some((Api::ActionsOidc, "/idtoken"))
        );
        assert_eq!(classify("/stsx/v1/token"), None);
    }

    #[test]
    fn tokens_describe_the_workflow_as_github_does() {
        let mut s = State::default();
        let c = claims(&mut s, Some("//iam.googleapis.com/x".into()));
        assert_eq!(c["sub"], "repo:octo-org/octo-repo:ref:refs/heads/main");
        assert_eq!(c["iss"], GITHUB_ISSUER);
        assert_eq!(c["aud"], "//iam.googleapis.com/x");
        assert_eq!(c["repository_owner"], "octo-org");
        assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 300);
        seed(
            &mut s,
            &json!({"claims": {"event_name": "pull_request", "repository": "acme/web"}}),
        )
        .unwrap();
        let c = claims(&mut s, None);
        assert_eq!(c["sub"], "repo:acme/web:pull_request");
        assert_eq!(c["aud"], "https://github.com/acme");
        seed(&mut s, &json!({"claims": {"environment": "production"}})).unwrap();
        assert_eq!(
            claims(&mut s, None)["sub"],
            "repo:acme/web:environment:production"
        );
    }

    #[test]
    fn signed_tokens_verify_and_edited_ones_do_not() {
        let mut s = State::default();
        let jwt = issue_jwt(&mut s, Some("aud-1".into())).unwrap();
        assert_eq!(verify_jwt(&mut s, &jwt).unwrap()["aud"], "aud-1");
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let parts: Vec<&str> = jwt.split('.').collect();
        let mut claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
        claims["aud"] = json!("aud-2");
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64.encode(claims.to_string()),
            parts[2]
        );
        assert_eq!(
            verify_jwt(&mut s, &forged).unwrap_err(),
            "Invalid JWT signature."
        );
        assert!(verify_jwt(&mut s, "not-a-jwt").is_err());
    }

    #[test]
    fn audiences() {
        assert_eq!(
            audience_parts(
                "//iam.googleapis.com/projects/12/locations/global/workloadIdentityPools/gh/providers/repo"
            ),
            Some(("12".into(), "gh".into()))
        );
        assert_eq!(
            audience_parts("projects/12/locations/global/workloadIdentityPools/gh/providers/repo"),
            None
        );
        assert_eq!(
            audience_parts(
                "//iam.googleapis.com/projects/my-proj/locations/global/workloadIdentityPools/gh/providers/repo"
            ),
            None
        );
    }
}

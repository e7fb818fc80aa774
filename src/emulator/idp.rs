//! A fake identity provider for the dashboard's sign-in tests and local use: Google-shaped
//! and Microsoft-shaped OpenID Connect, and GitHub-shaped OAuth 2, each under its own prefix
//! (the emulator serves them under `/idp`; [`router`] serves them anywhere):
//!
//! - `/google`: issuer `{base}/google`, `/.well-known/openid-configuration`,
//!   `/o/oauth2/v2/auth`, `/token`, `/oauth2/v3/certs`;
//! - `/microsoft`: the multi-tenant `/{tenant}/v2.0/.well-known/openid-configuration` whose
//!   issuer is the `{base}/microsoft/{tenantid}/v2.0` template, `/{tenant}/oauth2/v2.0/authorize`
//!   and `/token`, `/discovery/v2.0/keys`;
//! - `/github`: `/login/oauth/authorize`, `/login/oauth/access_token` (errors with status 200,
//!   as GitHub answers them), and the API `/api/user`, `/api/user/emails` in GitHub's shapes.
//!
//! The authorize endpoint shows a consent page where the tester types the identity (email,
//! name, whether it is verified; Microsoft: tenant and `xms_edov`). It checks what the real
//! ones check: a registered client and its exact redirect URI, `response_type=code`, PKCE
//! S256; the token endpoint checks client authentication (post or Basic), the redirect URI,
//! the PKCE verifier, and uses each code once. ID tokens are RS256, signed with a 2048-bit
//! key made at start (aws-lc-rs) and published as a JWKS.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use maud::{DOCTYPE, html};
use serde_json::{Value, json};

/// A registered OAuth client.
#[derive(Debug, Clone)]
pub struct Client {
    pub id: String,
    pub secret: String,
    pub redirect_uris: Vec<String>,
}

struct CodeGrant {
    provider: &'static str,
    client_id: String,
    redirect_uri: String,
    challenge: String,
    nonce: Option<String>,
    identity: Person,
    issued: i64,
    used: bool,
}

#[derive(Debug, Clone)]
struct Person {
    email: String,
    name: String,
    verified: bool,
    /// Microsoft: the tenant id.
    tenant: String,
    /// GitHub: numeric id; others: `sub`.
    subject: String,
}

struct Signer {
    key: aws_lc_rs::signature::RsaKeyPair,
    kid: String,
    n: String,
    e: String,
}

/// The fake provider's state.
pub struct Idp {
    base: Mutex<String>,
    /// Made on first use: an emulator that never signs anyone in pays nothing for it.
    key: std::sync::OnceLock<Signer>,
    clients: Mutex<Vec<Client>>,
    codes: Mutex<HashMap<String, CodeGrant>>,
    github_tokens: Mutex<HashMap<String, Person>>,
}

impl std::fmt::Debug for Idp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Idp(..)")
    }
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn random(n: usize) -> String {
    let mut b = vec![0u8; n];
    crate::control::secrets::fill(&mut b);
    b64(&b)
}

/// The (n, e) of a DER `RSAPublicKey` (RFC 8017 A.1.1: SEQUENCE { INTEGER, INTEGER }).
fn rsa_components(der: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    fn tlv(b: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
        if *b.first()? != tag {
            return None;
        }
        let (len, hdr) = match *b.get(1)? {
            l if l < 0x80 => (l as usize, 2),
            0x81 => (*b.get(2)? as usize, 3),
            0x82 => (((*b.get(2)? as usize) << 8) | *b.get(3)? as usize, 4),
            _ => return None,
        };
        let body = b.get(hdr..hdr + len)?;
        Some((body, &b[hdr + len..]))
    }
    let (seq, _) = tlv(der, 0x30)?;
    let (n, rest) = tlv(seq, 0x02)?;
    let (e, _) = tlv(rest, 0x02)?;
    let strip = |x: &[u8]| x.iter().skip_while(|b| **b == 0).copied().collect();
    Some((strip(n), strip(e)))
}

impl Idp {
    /// A provider that will call itself `base` (its own URL, with the prefix it is served
    /// under, e.g. `http://127.0.0.1:4000/idp`).
    pub fn new(base: &str) -> Arc<Idp> {
        Arc::new(Idp {
            base: Mutex::new(base.trim_end_matches('/').to_owned()),
            key: std::sync::OnceLock::new(),
            clients: Mutex::new(Vec::new()),
            codes: Mutex::new(HashMap::new()),
            github_tokens: Mutex::new(HashMap::new()),
        })
    }

    fn signer(&self) -> &Signer {
        self.key.get_or_init(|| {
            use aws_lc_rs::signature::KeyPair as _;
            let key = aws_lc_rs::signature::RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                .expect("RSA key generation");
            let (n, e) = rsa_components(key.public_key().as_ref()).expect("an RSA public key");
            Signer {
                key,
                kid: random(8),
                n: b64(&n),
                e: b64(&e),
            }
        })
    }

    /// Sets the base URL (when the port is known only after binding).
    pub fn set_base(&self, base: &str) {
        *self.base.lock().unwrap_or_else(|e| e.into_inner()) =
            base.trim_end_matches('/').to_owned();
    }

    pub fn base(&self) -> String {
        self.base.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Registers a client (all three providers accept it).
    pub fn register(&self, client: Client) {
        let mut c = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        c.retain(|x| x.id != client.id);
        c.push(client);
    }

    fn client(&self, id: &str) -> Option<Client> {
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|c| c.id == id)
            .cloned()
    }

    /// Signs claims as an RS256 compact JWS.
    pub fn sign(&self, claims: &Value) -> String {
        let k = self.signer();
        let header = json!({"alg": "RS256", "kid": k.kid, "typ": "JWT"});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let mut sig = vec![0u8; k.key.public_modulus_len()];
        k.key
            .sign(
                &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
                input.as_bytes(),
                &mut sig,
            )
            .expect("RSA signing");
        format!("{input}.{}", b64(&sig))
    }

    /// The JWKS that publishes the signing key.
    pub fn jwks(&self) -> Value {
        let k = self.signer();
        json!({"keys": [{"kty": "RSA", "use": "sig", "alg": "RS256", "kid": k.kid, "n": k.n, "e": k.e}]})
    }
}

fn now_s() -> i64 {
    chrono::Utc::now().timestamp()
}

type St = State<Arc<Idp>>;

/// The fake provider's routes (mount under any prefix; [`Idp::new`]'s base must match).
pub fn router(idp: Arc<Idp>) -> Router {
    use axum::routing::{get, post};
    Router::new()
        .route(
            "/google/.well-known/openid-configuration",
            get(google_discovery),
        )
        .route("/google/o/oauth2/v2/auth", get(authorize_google))
        .route("/google/token", post(token_google))
        .route("/google/oauth2/v3/certs", get(jwks))
        .route(
            "/microsoft/{tenant}/v2.0/.well-known/openid-configuration",
            get(microsoft_discovery),
        )
        .route(
            "/microsoft/{tenant}/oauth2/v2.0/authorize",
            get(authorize_microsoft),
        )
        .route(
            "/microsoft/{tenant}/oauth2/v2.0/token",
            post(token_microsoft),
        )
        .route("/microsoft/discovery/v2.0/keys", get(jwks))
        .route("/github/login/oauth/authorize", get(authorize_github))
        .route("/github/login/oauth/access_token", post(token_github))
        .route("/github/api/user", get(github_user))
        .route("/github/api/user/emails", get(github_emails))
        .route("/consent", post(consent))
        .route("/_admin/clients", post(admin_client))
        .with_state(idp)
}

async fn google_discovery(State(idp): St) -> Response {
    let b = idp.base();
    axum::Json(json!({
        "issuer": format!("{b}/google"),
        "authorization_endpoint": format!("{b}/google/o/oauth2/v2/auth"),
        "token_endpoint": format!("{b}/google/token"),
        "jwks_uri": format!("{b}/google/oauth2/v3/certs"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "email", "profile"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
        "claims_supported": ["aud", "email", "email_verified", "exp", "iat", "iss", "name", "sub"],
        "code_challenge_methods_supported": ["plain", "S256"],
    }))
    .into_response()
}

async fn microsoft_discovery(State(idp): St, Path(tenant): Path<String>) -> Response {
    let b = idp.base();
    axum::Json(json!({
        "issuer": format!("{b}/microsoft/{{tenantid}}/v2.0"),
        "authorization_endpoint": format!("{b}/microsoft/{tenant}/oauth2/v2.0/authorize"),
        "token_endpoint": format!("{b}/microsoft/{tenant}/oauth2/v2.0/token"),
        "jwks_uri": format!("{b}/microsoft/discovery/v2.0/keys"),
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "tenant_region_scope": null,
    }))
    .into_response()
}

async fn jwks(State(idp): St) -> Response {
    axum::Json(idp.jwks()).into_response()
}

/// An OAuth error for the authorize endpoint that cannot be sent back to the client (bad
/// client or redirect URI: RFC 6749 4.1.2.1 says show it, never redirect).
fn refuse(msg: &str) -> Response {
    (StatusCode::BAD_REQUEST, format!("fake IdP: {msg}")).into_response()
}

/// `Some(answer)` when the request is refused.
fn check_authorize(idp: &Idp, q: &HashMap<String, String>) -> Option<Response> {
    check(idp, q).err().map(|b| *b)
}

fn check(idp: &Idp, q: &HashMap<String, String>) -> Result<(), Box<Response>> {
    let client = q
        .get("client_id")
        .and_then(|c| idp.client(c))
        .ok_or_else(|| Box::new(refuse("unknown client_id")))?;
    let redirect = q.get("redirect_uri").cloned().unwrap_or_default();
    if !client.redirect_uris.contains(&redirect) {
        return Err(Box::new(refuse(
            "redirect_uri is not registered for this client",
        )));
    }
    let back = |e: &str| {
        let state = q
            .get("state")
            .map(|s| crate::web::oidc::form_encode(s))
            .unwrap_or_default();
        Redirect::to(&format!("{redirect}?error={e}&state={state}")).into_response()
    };
    if q.get("response_type").map(String::as_str) != Some("code") {
        return Err(Box::new(back("unsupported_response_type")));
    }
    if q.get("code_challenge_method").map(String::as_str) != Some("S256")
        || q.get("code_challenge").is_none_or(|c| c.len() != 43)
    {
        return Err(Box::new(back("invalid_request")));
    }
    Ok(())
}

fn consent_page(idp: &Idp, provider: &'static str, q: &HashMap<String, String>) -> Response {
    let action = format!("{}/consent", idp.base());
    let keep = [
        "client_id",
        "redirect_uri",
        "state",
        "nonce",
        "code_challenge",
    ];
    let page = html! {
        (DOCTYPE)
        html { head { title { "Fake " (provider) " sign-in" } } body {
            h1 { "Fake " (provider) " sign-in" }
            p { "Test identity provider: type who you are." }
            form method="post" action=(action) {
                @for k in keep { @if let Some(v) = q.get(k) { input type="hidden" name=(k) value=(v); } }
                input type="hidden" name="provider" value=(provider);
                p { label { "Email " input #email name="email" type="email" required; } }
                p { label { "Name " input #name name="name" value="Test User"; } }
                p { label { input #verified type="checkbox" name="verified" value="true" checked; " email verified" } }
                @if provider == "microsoft" {
                    p { label { "Tenant id " input #tenant name="tenant" value="9188040d-6c67-4c5b-b112-36a304b66dad"; } }
                }
                button #allow type="submit" name="decision" value="allow" { "Allow" }
                button #deny type="submit" name="decision" value="deny" { "Deny" }
            }
        } }
    };
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page.into_string(),
    )
        .into_response()
}

async fn authorize_google(State(idp): St, Query(q): Query<HashMap<String, String>>) -> Response {
    check_authorize(&idp, &q).unwrap_or_else(|| consent_page(&idp, "google", &q))
}

async fn authorize_microsoft(
    State(idp): St,
    Path(_tenant): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    check_authorize(&idp, &q).unwrap_or_else(|| consent_page(&idp, "microsoft", &q))
}

async fn authorize_github(
    State(idp): St,
    Query(mut q): Query<HashMap<String, String>>,
) -> Response {
    // GitHub's authorize takes no `response_type`; it is a code flow regardless.
    q.insert("response_type".into(), "code".into());
    check_authorize(&idp, &q).unwrap_or_else(|| consent_page(&idp, "github", &q))
}

/// The consent form's answer: a code (or `access_denied`) back to the client.
async fn consent(State(idp): St, Form(f): Form<HashMap<String, String>>) -> Response {
    let provider = match f.get("provider").map(String::as_str) {
        Some("google") => "google",
        Some("microsoft") => "microsoft",
        Some("github") => "github",
        _ => return refuse("unknown provider"),
    };
    let client_id = f.get("client_id").cloned().unwrap_or_default();
    let redirect = f.get("redirect_uri").cloned().unwrap_or_default();
    if idp
        .client(&client_id)
        .is_none_or(|c| !c.redirect_uris.contains(&redirect))
    {
        return refuse("unknown client or redirect_uri");
    }
    let state = crate::web::oidc::form_encode(f.get("state").map(String::as_str).unwrap_or(""));
    if f.get("decision").map(String::as_str) != Some("allow") {
        return Redirect::to(&format!("{redirect}?error=access_denied&state={state}"))
            .into_response();
    }
    let email = f
        .get("email")
        .map(|e| e.trim().to_owned())
        .unwrap_or_default();
    // A stable subject per email, as a real provider keeps one per account.
    let subject = match provider {
        "github" => (u64::from_str_radix(
            &crate::control::secrets::ServerKey::from_bytes([7; 32]).hash("gh", &email)[..8],
            16,
        )
        .unwrap_or(1))
        .to_string(),
        _ => crate::control::secrets::ServerKey::from_bytes([9; 32]).hash(provider, &email)[..21]
            .to_owned(),
    };
    let person = Person {
        email,
        name: f.get("name").cloned().unwrap_or_default(),
        verified: f.get("verified").map(String::as_str) == Some("true"),
        tenant: f.get("tenant").cloned().unwrap_or_default(),
        subject,
    };
    let code = random(24);
    idp.codes.lock().unwrap_or_else(|e| e.into_inner()).insert(
        code.clone(),
        CodeGrant {
            provider,
            client_id,
            redirect_uri: redirect.clone(),
            challenge: f.get("code_challenge").cloned().unwrap_or_default(),
            nonce: f.get("nonce").cloned(),
            identity: person,
            issued: now_s(),
            used: false,
        },
    );
    Redirect::to(&format!("{redirect}?code={code}&state={state}")).into_response()
}

fn token_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

/// Checks a token request; the grant on success.
fn redeem(
    idp: &Idp,
    provider: &'static str,
    headers: &HeaderMap,
    f: &HashMap<String, String>,
) -> Result<(String, Option<String>, Person), (&'static str, &'static str)> {
    // Client authentication: client_secret_post or client_secret_basic.
    let (id, secret) = match headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
    {
        Some(pair) => match pair.split_once(':') {
            Some((i, s)) => (i.to_owned(), s.to_owned()),
            None => return Err(("invalid_client", "bad Basic credentials")),
        },
        None => (
            f.get("client_id").cloned().unwrap_or_default(),
            f.get("client_secret").cloned().unwrap_or_default(),
        ),
    };
    let client = idp
        .client(&id)
        .filter(|c| {
            crate::control::secrets::constant_time_eq(c.secret.as_bytes(), secret.as_bytes())
        })
        .ok_or(("invalid_client", "client authentication failed"))?;
    if provider != "github" && f.get("grant_type").map(String::as_str) != Some("authorization_code")
    {
        return Err(("unsupported_grant_type", "only authorization_code"));
    }
    let code = f.get("code").cloned().unwrap_or_default();
    let mut codes = idp.codes.lock().unwrap_or_else(|e| e.into_inner());
    let g = codes
        .get_mut(&code)
        .ok_or(("invalid_grant", "unknown code"))?;
    if g.used {
        return Err(("invalid_grant", "the code was already used"));
    }
    g.used = true;
    if g.provider != provider || g.client_id != client.id {
        return Err(("invalid_grant", "the code was issued to another client"));
    }
    if now_s() - g.issued > 600 {
        return Err(("invalid_grant", "the code expired"));
    }
    if f.get("redirect_uri") != Some(&g.redirect_uri) {
        return Err(("invalid_grant", "redirect_uri does not match"));
    }
    let verifier = f.get("code_verifier").cloned().unwrap_or_default();
    let challenge =
        crate::web::oidc::pkce_challenge(&secrecy::SecretString::from(verifier.clone()));
    if verifier.len() < 43 || challenge != g.challenge {
        return Err(("invalid_grant", "PKCE verification failed"));
    }
    Ok((client.id, g.nonce.clone(), g.identity.clone()))
}

async fn token_google(
    State(idp): St,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let (client, nonce, p) = match redeem(&idp, "google", &headers, &f) {
        Ok(x) => x,
        Err((e, d)) => {
            return token_error(
                if e == "invalid_client" {
                    StatusCode::UNAUTHORIZED
                } else {
                    StatusCode::BAD_REQUEST
                },
                e,
                d,
            );
        }
    };
    let now = now_s();
    let mut claims = json!({
        "iss": format!("{}/google", idp.base()),
        "azp": client, "aud": client, "sub": p.subject,
        "email": p.email, "email_verified": p.verified, "name": p.name,
        "iat": now, "exp": now + 3600,
    });
    if let Some(n) = nonce {
        claims["nonce"] = json!(n);
    }
    axum::Json(json!({
        "access_token": format!("ya29.{}", random(32)),
        "expires_in": 3599,
        "scope": "openid https://www.googleapis.com/auth/userinfo.email https://www.googleapis.com/auth/userinfo.profile",
        "token_type": "Bearer",
        "id_token": idp.sign(&claims),
    }))
    .into_response()
}

async fn token_microsoft(
    State(idp): St,
    Path(_tenant): Path<String>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let (client, nonce, p) = match redeem(&idp, "microsoft", &headers, &f) {
        Ok(x) => x,
        Err((e, d)) => {
            return token_error(
                if e == "invalid_client" {
                    StatusCode::UNAUTHORIZED
                } else {
                    StatusCode::BAD_REQUEST
                },
                e,
                d,
            );
        }
    };
    let now = now_s();
    let mut claims = json!({
        "ver": "2.0",
        "iss": format!("{}/microsoft/{}/v2.0", idp.base(), p.tenant),
        "aud": client, "sub": p.subject, "tid": p.tenant, "oid": p.subject,
        "email": p.email, "preferred_username": p.email, "name": p.name,
        "iat": now, "nbf": now, "exp": now + 3600,
    });
    // `xms_edov`: the optional claim saying the tenant verified the email's domain.
    if p.verified {
        claims["xms_edov"] = json!(true);
    }
    if let Some(n) = nonce {
        claims["nonce"] = json!(n);
    }
    axum::Json(json!({
        "token_type": "Bearer",
        "scope": "openid profile email",
        "expires_in": 3599,
        "ext_expires_in": 3599,
        "access_token": random(32),
        "id_token": idp.sign(&claims),
    }))
    .into_response()
}

async fn token_github(
    State(idp): St,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    // GitHub answers token errors with 200 and the error fields (and an `error_uri`).
    let (_, _, p) = match redeem(&idp, "github", &headers, &f) {
        Ok(x) => x,
        Err((e, d)) => {
            let e = match e {
                "invalid_grant" => "bad_verification_code",
                "invalid_client" => "incorrect_client_credentials",
                other => other,
            };
            return axum::Json(json!({
                "error": e, "error_description": d,
                "error_uri": "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors",
            }))
            .into_response();
        }
    };
    let token = format!("gho_{}", random(27));
    idp.github_tokens
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(token.clone(), p);
    axum::Json(
        json!({"access_token": token, "token_type": "bearer", "scope": "read:user,user:email"}),
    )
    .into_response()
}

fn github_person(idp: &Idp, headers: &HeaderMap) -> Option<Person> {
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let t = auth
        .strip_prefix("Bearer ")
        .or_else(|| auth.strip_prefix("token "))?;
    idp.github_tokens
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(t)
        .cloned()
}

fn github_unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({"message": "Requires authentication", "documentation_url": "https://docs.github.com/rest/users/users#get-the-authenticated-user", "status": "401"})),
    )
        .into_response()
}

async fn github_user(State(idp): St, headers: HeaderMap) -> Response {
    let Some(p) = github_person(&idp, &headers) else {
        return github_unauthorized();
    };
    let login: String = p
        .email
        .split('@')
        .next()
        .unwrap_or("user")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    let id: u64 = p.subject.parse().unwrap_or(1);
    axum::Json(json!({
        "login": login, "id": id, "node_id": format!("U_{}", b64(p.subject.as_bytes())),
        "avatar_url": format!("https://avatars.githubusercontent.com/u/{id}?v=4"),
        "gravatar_id": "", "url": format!("https://api.github.com/users/{login}"),
        "html_url": format!("https://github.com/{login}"), "type": "User", "site_admin": false,
        "name": p.name, "company": null, "blog": "", "location": null,
        // The public email is whatever the user chose to show; sign-in must not use it.
        "email": null, "hireable": null, "bio": null, "twitter_username": null,
        "public_repos": 0, "public_gists": 0, "followers": 0, "following": 0,
        "created_at": "2020-01-01T00:00:00Z", "updated_at": "2020-01-01T00:00:00Z",
    }))
    .into_response()
}

async fn github_emails(State(idp): St, headers: HeaderMap) -> Response {
    let Some(p) = github_person(&idp, &headers) else {
        return github_unauthorized();
    };
    axum::Json(json!([
        {"email": p.email, "primary": true, "verified": p.verified, "visibility": "private"},
        {"email": format!("{}+noreply@users.noreply.github.com", p.subject), "primary": false, "verified": true, "visibility": null},
    ]))
    .into_response()
}

/// `POST /_admin/clients` `{"id", "secret", "redirect_uris": [...]}`: registers a client
/// (for `telbase emulator` used by hand; tests call [`Idp::register`]).
async fn admin_client(State(idp): St, body: axum::body::Bytes) -> Response {
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return refuse("the body is not JSON"),
    };
    let (Some(id), Some(secret), Some(uris)) = (
        v["id"].as_str(),
        v["secret"].as_str(),
        v["redirect_uris"].as_array(),
    ) else {
        return refuse("expected {\"id\", \"secret\", \"redirect_uris\": [...]}");
    };
    idp.register(Client {
        id: id.to_owned(),
        secret: secret.to_owned(),
        redirect_uris: uris
            .iter()
            .filter_map(|u| u.as_str().map(str::to_owned))
            .collect(),
    });
    (StatusCode::CREATED, axum::Json(json!({"id": id}))).into_response()
}

/// Serves a fake IdP on `listener` until the task is dropped; returns its base URL.
pub async fn serve(listener: tokio::net::TcpListener, idp: Arc<Idp>) -> String {
    let base = format!(
        "http://{}",
        listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    idp.set_base(&base);
    let app = router(idp);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    base
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_published_key_verifies_what_it_signs() {
        let idp = Idp::new("http://x");
        let t = idp.sign(&json!({"a": 1}));
        let (signed, sig) = t.rsplit_once('.').unwrap();
        let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&idp.signer().n)
            .unwrap();
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&idp.signer().e)
            .unwrap();
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sig)
            .unwrap();
        let pk = aws_lc_rs::signature::RsaPublicKeyComponents { n: &n, e: &e };
        pk.verify(
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            signed.as_bytes(),
            &sig,
        )
        .unwrap();
        assert!(
            pk.verify(
                &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
                b"other",
                &sig
            )
            .is_err()
        );
        assert_eq!(e, vec![1, 0, 1]);
        assert_eq!(n.len(), 256);
    }
}

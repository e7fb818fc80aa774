//! Dashboard sign-in: OpenID Connect with Google and Microsoft, OAuth 2 with GitHub. This
//! file owns the providers' configuration, the short-lived sign-in flows (`cp_oidc_flows`),
//! the authorization request (code flow, `state`, `nonce`, PKCE S256), the code exchange,
//! the ID token's verification (RS256 signature from the provider's JWKS, `iss`, `aud`,
//! `azp`, `exp`/`iat` with [`SKEW_S`] of skew, `nonce`, the providers' email rules) and
//! GitHub's `GET /user` + `GET /user/emails`. It answers with an [`Identity`]: a provider,
//! a stable subject and a verified email. Who that identity may be is decided by the caller
//! (`super::pages`): a user already in `cp_users`.
//!
//! Nothing secret of a flow is stored: the store keeps the keyed hash of `state` and of the
//! browser-binding cookie; the `nonce` and the PKCE verifier are derived from `state` under
//! the server key (`HMAC(key, purpose || state)`), so they exist only while a request needs
//! them. A flow lives [`FLOW_TTL_MS`] and is consumed by one conditional UPDATE (single use,
//! even across replicas).

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use serde_json::Value;

use crate::control::db::{Db, V};
use crate::control::secrets::{self, ServerKey};
use crate::store::StoreError;

/// Migration 10: the sign-in flows in progress. `state_hash` and `binding_hash` are
/// `HMAC(server key, …)` of the values the browser holds; nothing here can be replayed.
pub const MIGRATION: &str = "
    CREATE TABLE cp_oidc_flows (
        state_hash   TEXT PRIMARY KEY,
        binding_hash TEXT NOT NULL,
        provider     TEXT NOT NULL,
        return_to    TEXT NOT NULL,
        created_at   BIGINT NOT NULL,
        expires_at   BIGINT NOT NULL,
        used_at      BIGINT
    );
    CREATE INDEX cp_oidc_flows_expiry ON cp_oidc_flows(expires_at);
";

/// How long a sign-in may take between the button and the callback.
pub const FLOW_TTL_MS: i64 = 10 * 60 * 1000;
/// Clock skew allowed on `exp` and `iat`.
pub const SKEW_S: i64 = 120;
/// How long a discovery document and a JWKS are reused before being fetched again.
const CACHE_MS: i64 = 60 * 60 * 1000;

/// The three providers the security page names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    Google,
    Microsoft,
    GitHub,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 3] = [
        ProviderKind::Google,
        ProviderKind::Microsoft,
        ProviderKind::GitHub,
    ];
    /// The path segment (`/auth/{slug}/start`) and the `cp_subjects.provider` value.
    pub fn slug(self) -> &'static str {
        match self {
            ProviderKind::Google => "google",
            ProviderKind::Microsoft => "microsoft",
            ProviderKind::GitHub => "github",
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            ProviderKind::Google => "Google",
            ProviderKind::Microsoft => "Microsoft",
            ProviderKind::GitHub => "GitHub",
        }
    }
    pub fn parse(s: &str) -> Option<ProviderKind> {
        ProviderKind::ALL.into_iter().find(|p| p.slug() == s)
    }
    fn env(self) -> &'static str {
        match self {
            ProviderKind::Google => "GOOGLE",
            ProviderKind::Microsoft => "MICROSOFT",
            ProviderKind::GitHub => "GITHUB",
        }
    }
    /// Where the provider lives unless overridden (tests point these at the fake IdP).
    fn default_issuer(self) -> &'static str {
        match self {
            ProviderKind::Google => "https://accounts.google.com",
            // The multi-tenant endpoint for work and school accounts; its discovery
            // document's issuer is the `{tenantid}` template.
            ProviderKind::Microsoft => "https://login.microsoftonline.com/organizations/v2.0",
            ProviderKind::GitHub => "https://github.com",
        }
    }
}

/// One configured provider.
#[derive(Clone)]
pub struct Provider {
    pub kind: ProviderKind,
    pub client_id: String,
    pub client_secret: SecretString,
    /// Google, Microsoft: the issuer whose `/.well-known/openid-configuration` is read.
    /// GitHub: its web base (`/login/oauth/authorize`, `/login/oauth/access_token`).
    pub issuer: String,
    /// GitHub only: the REST API base (`/user`, `/user/emails`).
    pub api_base: String,
    /// Microsoft only: tenant ids allowed to sign in (empty: any tenant, under the email
    /// rule in [`check_microsoft`]).
    pub tenants: Vec<String>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("kind", &self.kind)
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("issuer", &self.issuer)
            .finish()
    }
}

/// Why the sign-in configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{var} is set but {missing} is not: a provider needs both its client id and secret")]
    Incomplete { var: String, missing: String },
    #[error("cannot read {var} {path}: {error}")]
    Io {
        var: String,
        path: String,
        error: std::io::Error,
    },
    #[error("{var}: not an http(s) URL")]
    Url { var: String },
}

/// The configured providers (none: the sign-in page says so).
#[derive(Debug, Clone, Default)]
pub struct Providers(pub Vec<Provider>);

impl Providers {
    /// From `TELBASE_OIDC_{GOOGLE,MICROSOFT,GITHUB}_CLIENT_ID`, `…_CLIENT_SECRET_FILE` (or
    /// `…_CLIENT_SECRET`), `…_ISSUER` (and `TELBASE_OIDC_GITHUB_API_URL`,
    /// `TELBASE_OIDC_MICROSOFT_TENANTS`). docs/dashboard.md lists them.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Providers, ConfigError> {
        let get = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        let mut out = Vec::new();
        for kind in ProviderKind::ALL {
            let p = format!("TELBASE_OIDC_{}_", kind.env());
            let id_var = format!("{p}CLIENT_ID");
            let secret_var = format!("{p}CLIENT_SECRET");
            let file_var = format!("{p}CLIENT_SECRET_FILE");
            let secret = match get(&file_var) {
                Some(path) => Some(SecretString::from(
                    zeroize::Zeroizing::new(std::fs::read_to_string(&path).map_err(|error| {
                        ConfigError::Io {
                            var: file_var.clone(),
                            path: path.clone(),
                            error,
                        }
                    })?)
                    .trim()
                    .to_owned(),
                )),
                None => get(&secret_var).map(SecretString::from),
            };
            let id = get(&id_var);
            let (client_id, client_secret) = match (id, secret) {
                (None, None) => continue,
                (Some(i), Some(s)) => (i, s),
                (Some(_), None) => {
                    return Err(ConfigError::Incomplete {
                        var: id_var,
                        missing: file_var,
                    });
                }
                (None, Some(_)) => {
                    return Err(ConfigError::Incomplete {
                        var: secret_var,
                        missing: id_var,
                    });
                }
            };
            let url = |k: String, default: &str| -> Result<String, ConfigError> {
                let v = get(&k).unwrap_or_else(|| default.to_owned());
                if !(v.starts_with("https://") || v.starts_with("http://")) {
                    return Err(ConfigError::Url { var: k });
                }
                Ok(v.trim_end_matches('/').to_owned())
            };
            out.push(Provider {
                kind,
                client_id: client_id.trim().to_owned(),
                client_secret,
                issuer: url(format!("{p}ISSUER"), kind.default_issuer())?,
                api_base: url(format!("{p}API_URL"), "https://api.github.com")?,
                tenants: get(&format!("{p}TENANTS"))
                    .map(|t| {
                        t.split(',')
                            .map(|s| s.trim().to_owned())
                            .filter(|s| !s.is_empty())
                            .collect()
                    })
                    .unwrap_or_default(),
            });
        }
        Ok(Providers(out))
    }

    pub fn get(&self, kind: ProviderKind) -> Option<&Provider> {
        self.0.iter().find(|p| p.kind == kind)
    }
}

/// Who signed in, as the provider vouches for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub provider: ProviderKind,
    /// Stable per provider (`sub`; Microsoft: `tid/sub`; GitHub: the numeric user id).
    pub subject: String,
    /// Verified, lower-cased.
    pub email: String,
    pub name: Option<String>,
}

/// Why a sign-in did not complete. Messages are shown to the person and may go in the
/// server's log: they never carry a code, token, state or nonce.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignInError {
    #[error(
        "this sign-in link expired, was already used, or was started in another browser; start again"
    )]
    BadState,
    #[error("the identity provider refused the sign-in ({0})")]
    Denied(String),
    #[error("the identity provider could not be reached or answered unexpectedly ({0})")]
    Provider(String),
    #[error("the identity provider's ID token does not hold ({0})")]
    BadToken(&'static str),
    #[error("the identity provider did not vouch for a verified email address ({0})")]
    Unverified(&'static str),
}

#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
}

#[derive(Debug, Clone, Deserialize)]
struct Jwk {
    #[serde(default)]
    kid: Option<String>,
    kty: String,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

/// Discovery documents and key sets, per issuer, fetched at most once an hour (and the
/// keys again, at most once a minute, when a token names a key not in the set: rotation).
#[derive(Default)]
struct Cache {
    discovery: HashMap<String, (i64, Discovery)>,
    jwks: HashMap<String, (i64, Jwks)>,
}

/// The sign-in machinery: providers, an HTTP client, the caches.
pub struct SignIn {
    pub providers: Providers,
    http: reqwest::Client,
    cache: Mutex<Cache>,
}

impl SignIn {
    pub fn new(providers: Providers) -> SignIn {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(15))
            // Redirects are not followed: a token endpoint that redirects is a fault.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("telbase/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        SignIn {
            providers,
            http,
            cache: Mutex::new(Cache::default()),
        }
    }

    async fn discovery(&self, p: &Provider, now: i64) -> Result<Discovery, SignInError> {
        if let Some((at, d)) = self.lock().discovery.get(&p.issuer)
            && now - at < CACHE_MS
        {
            return Ok(d.clone());
        }
        let url = format!("{}/.well-known/openid-configuration", p.issuer);
        let d: Discovery = self.get_json(&url, None).await?;
        // OIDC Discovery 4.3: the issuer in the document is the one configured (for
        // Microsoft's multi-tenant endpoint, a template the token's `tid` fills in).
        if p.kind != ProviderKind::Microsoft && d.issuer != p.issuer {
            return Err(SignInError::Provider(
                "the discovery document names another issuer".into(),
            ));
        }
        self.lock()
            .discovery
            .insert(p.issuer.clone(), (now, d.clone()));
        Ok(d)
    }

    async fn jwks(&self, uri: &str, now: i64, refresh: bool) -> Result<Jwks, SignInError> {
        if let Some((at, k)) = self.lock().jwks.get(uri)
            && (now - at < CACHE_MS && !refresh || now - at < 60_000)
        {
            return Ok(k.clone());
        }
        let k: Jwks = self.get_json(uri, None).await?;
        self.lock().jwks.insert(uri.to_owned(), (now, k.clone()));
        Ok(k)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        bearer: Option<&SecretString>,
    ) -> Result<T, SignInError> {
        let mut req = self.http.get(url).header("Accept", "application/json");
        if let Some(b) = bearer {
            req = req
                .bearer_auth(b.expose_secret())
                .header("Accept", "application/vnd.github+json")
                .header("X-GitHub-Api-Version", "2022-11-28");
        }
        let resp = req
            .send()
            .await
            .map_err(|e| SignInError::Provider(e.without_url().to_string()))?;
        if !resp.status().is_success() {
            return Err(SignInError::Provider(format!(
                "{} answered {}",
                host_of(url),
                resp.status()
            )));
        }
        resp.json::<T>()
            .await
            .map_err(|_| SignInError::Provider(format!("{}: unexpected JSON", host_of(url))))
    }

    /// The provider's authorization URL for a new flow whose `state` is `state`.
    pub async fn authorize_url(
        &self,
        p: &Provider,
        key: &ServerKey,
        state: &SecretString,
        redirect_uri: &str,
        now: i64,
    ) -> Result<String, SignInError> {
        let challenge = pkce_challenge(&derived(key, "oidc-pkce", state));
        let (endpoint, scope, nonce) = match p.kind {
            ProviderKind::GitHub => (
                format!("{}/login/oauth/authorize", p.issuer),
                "read:user user:email",
                None,
            ),
            _ => (
                self.discovery(p, now).await?.authorization_endpoint,
                "openid email profile",
                Some(derived(key, "oidc-nonce", state)),
            ),
        };
        let mut q = vec![
            ("response_type", "code".to_owned()),
            ("client_id", p.client_id.clone()),
            ("redirect_uri", redirect_uri.to_owned()),
            ("scope", scope.to_owned()),
            ("state", state.expose_secret().to_owned()),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256".to_owned()),
        ];
        if let Some(n) = nonce {
            q.push(("nonce", n.expose_secret().to_owned()));
        }
        if p.kind == ProviderKind::GitHub {
            // GitHub lets the person pick which account; no silent re-use of another one.
            q.push(("allow_signup", "false".to_owned()));
        }
        let query = q
            .iter()
            .map(|(k, v)| format!("{k}={}", form_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let sep = if endpoint.contains('?') { '&' } else { '?' };
        Ok(format!("{endpoint}{sep}{query}"))
    }

    /// Exchanges the code (with the PKCE verifier) and verifies who it names.
    pub async fn finish(
        &self,
        p: &Provider,
        key: &ServerKey,
        state: &SecretString,
        code: &SecretString,
        redirect_uri: &str,
        now_ms: i64,
    ) -> Result<Identity, SignInError> {
        let verifier = derived(key, "oidc-pkce", state);
        let token_endpoint = match p.kind {
            ProviderKind::GitHub => format!("{}/login/oauth/access_token", p.issuer),
            _ => self.discovery(p, now_ms).await?.token_endpoint,
        };
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code.expose_secret()),
            ("redirect_uri", redirect_uri),
            ("client_id", p.client_id.as_str()),
            ("client_secret", p.client_secret.expose_secret()),
            ("code_verifier", verifier.expose_secret()),
        ];
        let body = form
            .iter()
            .map(|(k, v)| format!("{k}={}", form_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let resp = self
            .http
            .post(&token_endpoint)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("Accept", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| SignInError::Provider(e.without_url().to_string()))?;
        let status = resp.status();
        let answer: Value = resp.json().await.map_err(|_| {
            SignInError::Provider(format!("{}: unexpected JSON", host_of(&token_endpoint)))
        })?;
        // RFC 6749 5.2 errors; GitHub answers its errors with 200 and the same fields.
        if let Some(err) = answer.get("error").and_then(Value::as_str) {
            return Err(SignInError::Denied(safe_code(err)));
        }
        if !status.is_success() {
            return Err(SignInError::Provider(format!(
                "the token endpoint answered {status}"
            )));
        }
        match p.kind {
            ProviderKind::GitHub => {
                let access = answer
                    .get("access_token")
                    .and_then(Value::as_str)
                    .map(|s| SecretString::from(s.to_owned()))
                    .ok_or_else(|| SignInError::Provider("no access_token".into()))?;
                self.github_identity(p, &access).await
            }
            _ => {
                let id_token = answer
                    .get("id_token")
                    .and_then(Value::as_str)
                    .ok_or(SignInError::BadToken("no id_token in the token response"))?;
                let d = self.discovery(p, now_ms).await?;
                let nonce = derived(key, "oidc-nonce", state);
                let claims = self
                    .verify_id_token(p, &d, id_token, nonce.expose_secret(), now_ms / 1000)
                    .await?;
                identity_from_claims(p, &d, &claims)
            }
        }
    }

    async fn verify_id_token(
        &self,
        p: &Provider,
        d: &Discovery,
        token: &str,
        nonce: &str,
        now_s: i64,
    ) -> Result<Value, SignInError> {
        let jwt = Jwt::parse(token)?;
        let mut keys = self.jwks(&d.jwks_uri, now_s * 1000, false).await?;
        if !keys
            .keys
            .iter()
            .any(|k| k.kid.as_deref() == jwt.kid.as_deref())
        {
            keys = self.jwks(&d.jwks_uri, now_s * 1000, true).await?;
        }
        jwt.verify_signature(&keys)?;
        check_claims(&jwt.claims, &p.client_id, nonce, now_s)?;
        Ok(jwt.claims)
    }

    async fn github_identity(
        &self,
        p: &Provider,
        access: &SecretString,
    ) -> Result<Identity, SignInError> {
        #[derive(Deserialize)]
        struct GhUser {
            id: u64,
            login: String,
            #[serde(default)]
            name: Option<String>,
        }
        #[derive(Deserialize)]
        struct GhEmail {
            email: String,
            primary: bool,
            verified: bool,
        }
        let user: GhUser = self
            .get_json(&format!("{}/user", p.api_base), Some(access))
            .await?;
        let emails: Vec<GhEmail> = self
            .get_json(&format!("{}/user/emails", p.api_base), Some(access))
            .await?;
        // Only the primary address, and only once GitHub has verified it: a secondary or
        // unverified address could be anyone's.
        let email = emails
            .into_iter()
            .find(|e| e.primary && e.verified)
            .map(|e| e.email.trim().to_ascii_lowercase())
            .ok_or(SignInError::Unverified(
                "GitHub has no verified primary email for this account",
            ))?;
        Ok(Identity {
            provider: ProviderKind::GitHub,
            subject: user.id.to_string(),
            email,
            name: user.name.or(Some(user.login)),
        })
    }
}

/// A compact JWS, decoded but not yet trusted.
struct Jwt {
    kid: Option<String>,
    signed: String,
    signature: Vec<u8>,
    claims: Value,
}

fn b64url(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

impl Jwt {
    fn parse(token: &str) -> Result<Jwt, SignInError> {
        if token.len() > 16 * 1024 {
            return Err(SignInError::BadToken("too large"));
        }
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SignInError::BadToken("not a compact JWS"));
        };
        let header: Value = b64url(h)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(SignInError::BadToken("unreadable header"))?;
        // Only RS256, whatever the header asks: `none` and HMAC-with-the-public-key are the
        // classic forgeries, and both providers sign with RS256.
        if header.get("alg").and_then(Value::as_str) != Some("RS256") {
            return Err(SignInError::BadToken("alg is not RS256"));
        }
        if header.get("crit").is_some() {
            return Err(SignInError::BadToken("unsupported crit header"));
        }
        let claims: Value = b64url(c)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(Value::is_object)
            .ok_or(SignInError::BadToken("unreadable claims"))?;
        let signature = b64url(s).ok_or(SignInError::BadToken("unreadable signature"))?;
        Ok(Jwt {
            kid: header.get("kid").and_then(Value::as_str).map(str::to_owned),
            signed: format!("{h}.{c}"),
            signature,
            claims,
        })
    }

    fn verify_signature(&self, keys: &Jwks) -> Result<(), SignInError> {
        let candidates: Vec<&Jwk> = keys
            .keys
            .iter()
            .filter(|k| k.kty == "RSA" && k.use_.as_deref().is_none_or(|u| u == "sig"))
            .filter(|k| self.kid.is_none() || k.kid == self.kid)
            .collect();
        if candidates.is_empty() {
            return Err(SignInError::BadToken(
                "no key of the issuer matches its kid",
            ));
        }
        for k in candidates {
            let (Some(n), Some(e)) = (
                k.n.as_deref().and_then(b64url),
                k.e.as_deref().and_then(b64url),
            ) else {
                continue;
            };
            let public = aws_lc_rs::signature::RsaPublicKeyComponents { n: &n, e: &e };
            if public
                .verify(
                    &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
                    self.signed.as_bytes(),
                    &self.signature,
                )
                .is_ok()
            {
                return Ok(());
            }
        }
        Err(SignInError::BadToken("the signature does not verify"))
    }
}

/// `aud`, `azp`, `exp`, `iat`, `nonce`, `sub` (OIDC Core 3.1.3.7). `iss` is checked by
/// [`identity_from_claims`], which knows the provider's issuer rule.
fn check_claims(c: &Value, client_id: &str, nonce: &str, now_s: i64) -> Result<(), SignInError> {
    let aud_ok = match c.get("aud") {
        Some(Value::String(a)) => a == client_id,
        Some(Value::Array(a)) => {
            a.iter().any(|x| x.as_str() == Some(client_id))
                && (a.len() == 1 || c.get("azp").and_then(Value::as_str) == Some(client_id))
        }
        _ => false,
    };
    if !aud_ok {
        return Err(SignInError::BadToken("aud is not this client"));
    }
    if let Some(azp) = c.get("azp").and_then(Value::as_str)
        && azp != client_id
    {
        return Err(SignInError::BadToken("azp is not this client"));
    }
    let exp = c
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or(SignInError::BadToken("no exp"))?;
    if exp + SKEW_S < now_s {
        return Err(SignInError::BadToken("expired"));
    }
    let iat = c
        .get("iat")
        .and_then(Value::as_i64)
        .ok_or(SignInError::BadToken("no iat"))?;
    if iat - SKEW_S > now_s {
        return Err(SignInError::BadToken("issued in the future"));
    }
    let got = c.get("nonce").and_then(Value::as_str).unwrap_or_default();
    if !secrets::constant_time_eq(got.as_bytes(), nonce.as_bytes()) {
        return Err(SignInError::BadToken("nonce does not match this sign-in"));
    }
    if c.get("sub")
        .and_then(Value::as_str)
        .is_none_or(|s| s.is_empty() || s.len() > 255)
    {
        return Err(SignInError::BadToken("no sub"));
    }
    Ok(())
}

fn truthy(v: Option<&Value>) -> bool {
    // Google has sent `email_verified` both as a boolean and as the string "true".
    matches!(v, Some(Value::Bool(true))) || v.and_then(Value::as_str) == Some("true")
}

fn identity_from_claims(p: &Provider, d: &Discovery, c: &Value) -> Result<Identity, SignInError> {
    let s = |k: &str| c.get(k).and_then(Value::as_str);
    let sub = s("sub").unwrap_or_default();
    let email = s("email")
        .map(|e| e.trim().to_ascii_lowercase())
        .filter(|e| e.contains('@'))
        .ok_or(SignInError::Unverified("the ID token has no email"))?;
    let subject = match p.kind {
        ProviderKind::Microsoft => {
            let tid = s("tid")
                .filter(|t| !t.is_empty() && t.len() <= 64)
                .ok_or(SignInError::BadToken("no tid"))?;
            // The multi-tenant discovery document's issuer is a template: the token's own
            // tenant must be the one that issued it.
            if s("iss") != Some(d.issuer.replace("{tenantid}", tid).as_str()) {
                return Err(SignInError::BadToken("iss is not the token's tenant"));
            }
            if !p.tenants.is_empty() && !p.tenants.iter().any(|t| t == tid) {
                return Err(SignInError::Unverified(
                    "this Microsoft tenant is not allowed to sign in here",
                ));
            }
            // Microsoft's `email` is whatever the account's admin typed unless the tenant
            // proved it owns the domain: `xms_edov` (an optional claim the app registration
            // asks for) says so. Without it the address proves nothing.
            // `email_verified` is not Microsoft's to vouch with: a tenant can put it into
            // tokens through claims mapping for a domain it does not own (the nOAuth class).
            if !truthy(c.get("xms_edov")) {
                return Err(SignInError::Unverified(
                    "Microsoft did not mark the email's domain as verified (xms_edov); see docs/dashboard.md",
                ));
            }
            format!("{tid}/{sub}")
        }
        _ => {
            // Google documents `iss` as `https://accounts.google.com` or, in older tokens,
            // `accounts.google.com`: the configured issuer with or without its scheme.
            let iss = s("iss").unwrap_or_default();
            let bare = d.issuer.strip_prefix("https://").unwrap_or(&d.issuer);
            if iss != p.issuer && iss != d.issuer && iss != bare {
                return Err(SignInError::BadToken("iss is not the provider"));
            }
            if !truthy(c.get("email_verified")) {
                return Err(SignInError::Unverified(
                    "Google has not verified this email",
                ));
            }
            sub.to_owned()
        }
    };
    Ok(Identity {
        provider: p.kind,
        subject,
        email,
        name: s("name").map(str::to_owned),
    })
}

/// `HMAC(key, purpose || state)` in hex: the nonce and the PKCE verifier of a flow (64
/// characters of the verifier's alphabet, RFC 7636 4.1), never stored.
fn derived(key: &ServerKey, purpose: &str, state: &SecretString) -> SecretString {
    SecretString::from(key.hash(purpose, state.expose_secret()))
}

/// RFC 7636 4.2: `BASE64URL(SHA256(verifier))`.
pub fn pkce_challenge(verifier: &SecretString) -> String {
    use sha2::Digest as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.expose_secret().as_bytes()))
}

/// `application/x-www-form-urlencoded` of one value.
pub fn form_encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn host_of(url: &str) -> String {
    url.split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or("the provider")
        .to_owned()
}

/// An OAuth error code is echoed only when it looks like one (RFC 6749's charset).
fn safe_code(s: &str) -> String {
    if s.len() <= 64 && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        s.to_owned()
    } else {
        "error".into()
    }
}

/// A new random value for `state` or the binding cookie (256 bits, URL-safe).
pub fn random_value() -> SecretString {
    let mut b = [0u8; 32];
    secrets::fill(&mut b);
    SecretString::from(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

/// Starts a flow: stores the hashes, drops expired flows.
pub fn begin_flow(
    db: &mut impl Db,
    key: &ServerKey,
    provider: ProviderKind,
    state: &SecretString,
    binding: &SecretString,
    return_to: &str,
    now: i64,
) -> Result<(), StoreError> {
    db.exec(
        "DELETE FROM cp_oidc_flows WHERE expires_at < $1",
        &[V::I(now)],
    )?;
    db.exec(
        "INSERT INTO cp_oidc_flows (state_hash, binding_hash, provider, return_to, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            V::from(key.hash("oidc-state", state.expose_secret())),
            V::from(key.hash("oidc-binding", binding.expose_secret())),
            V::from(provider.slug()),
            V::from(return_to),
            V::I(now),
            V::I(now + FLOW_TTL_MS),
        ],
    )?;
    Ok(())
}

/// Consumes a flow: `Some(return_to)` once, for the browser that started it, within its
/// life; `None` for anything else (one conditional UPDATE: two callbacks cannot both win).
pub fn consume_flow(
    db: &mut impl Db,
    key: &ServerKey,
    provider: ProviderKind,
    state: &str,
    binding: &str,
    now: i64,
) -> Result<Option<String>, StoreError> {
    let sh = key.hash("oidc-state", state);
    let bh = key.hash("oidc-binding", binding);
    let n = db.exec(
        "UPDATE cp_oidc_flows SET used_at = $4 WHERE state_hash = $1 AND binding_hash = $2
         AND provider = $3 AND used_at IS NULL AND expires_at > $4",
        &[
            V::from(&sh),
            V::from(&bh),
            V::from(provider.slug()),
            V::I(now),
        ],
    )?;
    if n != 1 {
        return Ok(None);
    }
    Ok(db
        .row(
            "SELECT return_to FROM cp_oidc_flows WHERE state_hash = $1",
            &[V::from(&sh)],
        )?
        .map(|r| r[0].text()))
}

/// The user a provider subject is linked to.
pub fn user_of_subject(
    db: &mut impl Db,
    provider: ProviderKind,
    subject: &str,
) -> Result<Option<String>, StoreError> {
    Ok(db
        .row(
            "SELECT user_id FROM cp_subjects WHERE provider = $1 AND subject = $2",
            &[V::from(provider.slug()), V::from(subject)],
        )?
        .map(|r| r[0].text()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pkce_matches_rfc7636_appendix_b() {
        let v = SecretString::from("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".to_owned());
        assert_eq!(
            pkce_challenge(&v),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn claims_are_checked() {
        let ok = json!({"aud": "c", "exp": 1000, "iat": 900, "nonce": "n", "sub": "s"});
        assert!(check_claims(&ok, "c", "n", 950).is_ok());
        assert_eq!(
            check_claims(&ok, "other", "n", 950),
            Err(SignInError::BadToken("aud is not this client"))
        );
        assert!(check_claims(&ok, "c", "m", 950).is_err());
        assert!(check_claims(&ok, "c", "n", 1000 + SKEW_S + 1).is_err());
        assert!(check_claims(&ok, "c", "n", 900 - SKEW_S - 1).is_err());
        let multi = json!({"aud": ["c", "d"], "exp": 1000, "iat": 900, "nonce": "n", "sub": "s"});
        assert!(check_claims(&multi, "c", "n", 950).is_err(), "no azp");
        let mut with_azp = multi.clone();
        with_azp["azp"] = json!("c");
        assert!(check_claims(&with_azp, "c", "n", 950).is_ok());
    }

    #[test]
    fn only_rs256_is_accepted() {
        let enc = |v: Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
        };
        for alg in ["none", "HS256", "RS512"] {
            let t = format!("{}.{}.", enc(json!({"alg": alg})), enc(json!({"sub": "x"})));
            assert_eq!(
                Jwt::parse(&t).err(),
                Some(SignInError::BadToken("alg is not RS256"))
            );
        }
        assert!(Jwt::parse("a.b").is_err());
        assert!(Jwt::parse("").is_err());
    }

    #[test]
    fn providers_need_id_and_secret() {
        let vars = |m: &'static [(&str, &str)]| {
            move |k: &str| m.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        assert!(Providers::from_vars(vars(&[])).unwrap().0.is_empty());
        assert!(Providers::from_vars(vars(&[("TELBASE_OIDC_GOOGLE_CLIENT_ID", "x")])).is_err());
        let p = Providers::from_vars(vars(&[
            ("TELBASE_OIDC_GITHUB_CLIENT_ID", "x"),
            ("TELBASE_OIDC_GITHUB_CLIENT_SECRET", "s"),
        ]))
        .unwrap();
        assert_eq!(p.0[0].issuer, "https://github.com");
        assert!(!format!("{:?}", p.0[0]).contains("\"s\""));
    }

    #[test]
    fn signatures_are_checked_against_the_issuer_keys() {
        let idp = crate::emulator::idp::Idp::new("http://idp");
        let other = crate::emulator::idp::Idp::new("http://idp");
        let claims = json!({"sub": "s", "aud": "c"});
        let token = idp.sign(&claims);
        let keys: Jwks = serde_json::from_value(idp.jwks()).unwrap();
        let wrong: Jwks = serde_json::from_value(other.jwks()).unwrap();
        assert!(Jwt::parse(&token).unwrap().verify_signature(&keys).is_ok());
        // Another issuer's key (even under the same kid) does not verify it.
        let mut same_kid = wrong.clone();
        same_kid.keys[0].kid = keys.keys[0].kid.clone();
        assert_eq!(
            Jwt::parse(&token).unwrap().verify_signature(&same_kid),
            Err(SignInError::BadToken("the signature does not verify"))
        );
        assert!(
            Jwt::parse(&token)
                .unwrap()
                .verify_signature(&wrong)
                .is_err()
        );
        // Changed claims under the original signature.
        let (h, rest) = token.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let forged = format!(
            "{h}.{}.{sig}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(json!({"sub": "admin", "aud": "c"}).to_string())
        );
        assert!(
            Jwt::parse(&forged)
                .unwrap()
                .verify_signature(&keys)
                .is_err()
        );
    }

    #[test]
    fn microsoft_needs_its_tenant_issuer_and_a_verified_domain() {
        let p = Provider {
            kind: ProviderKind::Microsoft,
            client_id: "c".into(),
            client_secret: SecretString::from("s".to_owned()),
            issuer: "https://login.example/organizations/v2.0".into(),
            api_base: String::new(),
            tenants: vec!["t1".into()],
        };
        let d = Discovery {
            issuer: "https://login.example/{tenantid}/v2.0".into(),
            authorization_endpoint: String::new(),
            token_endpoint: String::new(),
            jwks_uri: String::new(),
        };
        let ok = json!({"sub": "s", "tid": "t1", "iss": "https://login.example/t1/v2.0", "email": "A@x.io", "xms_edov": true});
        let id = identity_from_claims(&p, &d, &ok).unwrap();
        assert_eq!((id.subject.as_str(), id.email.as_str()), ("t1/s", "a@x.io"));
        let mut other_iss = ok.clone();
        other_iss["iss"] = json!("https://login.example/t2/v2.0");
        assert!(identity_from_claims(&p, &d, &other_iss).is_err());
        let mut other_tenant = ok.clone();
        other_tenant["tid"] = json!("t2");
        other_tenant["iss"] = json!("https://login.example/t2/v2.0");
        assert!(identity_from_claims(&p, &d, &other_tenant).is_err());
        let mut unverified = ok.clone();
        unverified.as_object_mut().unwrap().remove("xms_edov");
        assert!(matches!(
            identity_from_claims(&p, &d, &unverified),
            Err(SignInError::Unverified(_))
        ));
        // A tenant's claims mapping can add `email_verified`; it is not Microsoft's proof.
        unverified["email_verified"] = json!(true);
        assert!(matches!(
            identity_from_claims(&p, &d, &unverified),
            Err(SignInError::Unverified(_))
        ));
    }

    #[test]
    fn google_issuer_with_or_without_scheme() {
        let p = Provider {
            kind: ProviderKind::Google,
            client_id: "c".into(),
            client_secret: SecretString::from("s".to_owned()),
            issuer: "https://accounts.google.com".into(),
            api_base: String::new(),
            tenants: vec![],
        };
        let d = Discovery {
            issuer: "https://accounts.google.com".into(),
            authorization_endpoint: String::new(),
            token_endpoint: String::new(),
            jwks_uri: String::new(),
        };
        let mut c = json!({"sub": "1", "iss": "https://accounts.google.com", "email": "a@b.co", "email_verified": true});
        assert!(identity_from_claims(&p, &d, &c).is_ok());
        c["iss"] = json!("accounts.google.com");
        assert!(identity_from_claims(&p, &d, &c).is_ok());
        c["iss"] = json!("https://evil.example");
        assert!(identity_from_claims(&p, &d, &c).is_err());
        c["iss"] = json!("https://accounts.google.com");
        c["email_verified"] = json!("false");
        assert!(identity_from_claims(&p, &d, &c).is_err());
    }

    proptest::proptest! {
        #[test]
        fn jwt_parsing_never_panics(s in ".{0,300}") {
            let _ = Jwt::parse(&s);
        }
    }
}

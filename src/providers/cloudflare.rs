//! Cloudflare (API v4): the edge baseline of a zone (zone settings), proxied DNS records for
//! app domains, and Cloudflare Access (reusable policies and self-hosted applications).
//! Wire shapes follow ../shared/provider-apis/cloudflare (the 2024 subset, plus the
//! zone-settings operations of the full description beside it); names that changed since
//! 2024 are kept in [`wire`], the one place that spells them.
//!
//! Ownership. DNS records carry `telbase project=<p> env=<e> target=<provider>/<app>` as
//! their comment.
//! Access policies and applications have no comment field, so their names carry the mark:
//! `notes-staff (telbase project=notes)`, `notes-web-pr-7 (telbase project=notes env=pr-7)`.
//! Zone settings have no metadata at all: the zone's baseline is claimed by a TXT record
//! `_telbase.<zone>` whose comment is `telbase project=<p> baseline`; observe reports the
//! settings of exactly the zones with that record. Anything without the mark is never
//! changed: a hand-made record at a hostname Telbase wants is refused with an error.
//!
//! Environments. Zone settings and access policies are production's (lowering leaves them
//! out of previews); a preview owns its DNS records and its Access application, which
//! attaches production's policy by name.
//!
//! Deleting zone settings lowers nothing: Telbase removes its TXT claim and stops managing
//! the zone; the settings stay as they are (see docs/providers.md).

use std::collections::BTreeMap;

use reqwest::Method;
use secrecy::SecretString;
use serde_json::{Value, json};

use super::http::{Call, Endpoint, Http, Paging, Retry};
use super::owner;
use super::vercel::enc;
use super::{
    Applied, BoxFuture, Change, Credentials, ErrorKind, Inputs, Provider, ProviderError, Scope,
    SetupError,
};
use crate::model::{
    self, AccessApplication, AccessPolicy, DesiredState, DnsRecord, Environment, Kind, Observed,
    Output, Resource, ResourceKey, ResourceSpec, ZoneSettings,
};

const P: model::Provider = model::Provider::Cloudflare;

/// Cloudflare's wire names, in one place. The 2024 description predates some Access rule
/// names; what is sent is the current API's spelling (ENDPOINTS.md §6, from the Terraform
/// provider's generated model), and the conformance test lists the difference.
pub mod wire {
    /// Include rule `{"email": {"email": "ada@example.org"}}` (same in 2024 and now).
    pub const RULE_EMAIL: &str = "email";
    /// Include rule `{"email_domain": {"domain": "example.com"}}` (same in 2024 and now).
    pub const RULE_EMAIL_DOMAIN: &str = "email_domain";
    /// Rule `{"login_method": {"id": "<identity provider uuid>"}}`: the current name; the
    /// 2024 description has no such rule. Sent in a policy's `exclude` list, one per
    /// identity provider of the account that the policy does not allow.
    pub const RULE_LOGIN_METHOD: &str = "login_method";
    /// The 2024 spelling of an identity provider reference inside group rules
    /// (`connection_id`), now `identity_provider_id`. Telbase sends neither (it uses no
    /// group rules); kept here so the difference is written down once.
    pub const IDP_REF_2024: &str = "connection_id";
    pub const IDP_REF_NOW: &str = "identity_provider_id";

    /// telbase.yaml login names and the identity provider `type` they select.
    pub const LOGIN_TYPES: [(&str, &str); 3] = [
        ("google", "google"),
        ("microsoft", "azureAD"),
        ("github", "github"),
    ];

    /// The identity provider type for a login name of telbase.yaml.
    pub fn idp_type(login: &str) -> Option<&'static str> {
        LOGIN_TYPES
            .iter()
            .find(|(l, _)| *l == login)
            .map(|(_, t)| *t)
    }

    /// The login name for an identity provider type (the type itself when telbase.yaml has
    /// no name for it, so an unexpected provider shows up in a plan under its own name).
    pub fn login_name(idp_type: &str) -> String {
        LOGIN_TYPES
            .iter()
            .find(|(_, t)| *t == idp_type)
            .map(|(l, _)| (*l).to_owned())
            .unwrap_or_else(|| idp_type.to_owned())
    }

    /// Zone setting ids (`/zones/{zone_id}/settings/{setting_id}`).
    pub const SETTING_MIN_TLS: &str = "min_tls_version";
    pub const SETTING_ALWAYS_HTTPS: &str = "always_use_https";
    pub const SETTING_SSL: &str = "ssl";
    pub const SETTING_SECURITY_HEADER: &str = "security_header";

    /// Where a proxied CNAME points for each kind of app.
    pub const VERCEL_CNAME: &str = "cname.vercel-dns.com";
    pub const CLOUD_RUN_CNAME: &str = "ghs.googlehosted.com";

    /// The label of the TXT record that claims a zone's baseline.
    pub const BASELINE_LABEL: &str = "_telbase";
}

pub struct Cloudflare {
    http: Http,
    ep: Endpoint,
    account: String,
}

impl Cloudflare {
    pub fn new(http: Http, ep: Endpoint, creds: &Credentials) -> Result<Self, SetupError> {
        let account = match (&creds.cloudflare_account_id, &creds.emulator) {
            (Some(o), _) => o.clone(),
            (None, Some(_)) => "telbase-emulator".into(),
            (None, None) => {
                return Err(SetupError::Missing {
                    provider: P.as_str(),
                    vars: "CLOUDFLARE_ACCOUNT_ID",
                });
            }
        };
        if account.is_empty()
            || !account
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(SetupError::Invalid {
                provider: P.as_str(),
                message: "CLOUDFLARE_ACCOUNT_ID must be the account's id (letters and digits)"
                    .into(),
            });
        }
        Ok(Cloudflare { http, ep, account })
    }
}

fn err(kind: ErrorKind, what: &str, message: impl Into<String>) -> ProviderError {
    ProviderError::new(P, kind, what, None, message, None, None)
}

fn s(v: &Value, key: &str) -> Option<String> {
    v.get(key)
        .and_then(Value::as_str)
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
}

/// The `result` of an envelope, or a transient error: a 2xx without one is a broken answer.
fn result(body: Value, what: &str) -> Result<Value, ProviderError> {
    match body {
        Value::Object(mut m) => match m.remove("result") {
            Some(r) if !r.is_null() => Ok(r),
            _ => Err(err(
                ErrorKind::Transient,
                what,
                "the response has no `result`",
            )),
        },
        _ => Err(err(
            ErrorKind::Transient,
            what,
            "the response is not a Cloudflare envelope",
        )),
    }
}

/// `43200` → `12h`; `5400` → `1h30m`: the duration syntax Access accepts.
pub fn duration_text(secs: u64) -> String {
    let (h, m, sec) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if sec > 0 || out.is_empty() {
        out.push_str(&format!("{sec}s"));
    }
    out
}

/// A Go-style duration (`12h`, `12h0m0s`, `1.5h`, `90m`, `300ms`) in whole seconds.
pub fn parse_duration(text: &str) -> Option<u64> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += n * factor;
    }
    (total.is_finite() && total >= 0.0).then(|| total.round() as u64)
}

fn tls_version(v: &str) -> &'static str {
    match v {
        "1.0" => "1.0",
        "1.1" => "1.1",
        "1.2" => "1.2",
        "1.3" => "1.3",
        _ => "(unknown)",
    }
}

fn ssl_mode(v: &str) -> &'static str {
    match v {
        "off" => "off",
        "flexible" => "flexible",
        "full" => "full",
        "strict" => "strict",
        _ => "(unknown)",
    }
}

/// Zone settings as the model sees them, from `GET /zones/{id}/settings`. HSTS switched off
/// reads as max-age 0 without flags: nothing is sent to browsers, whatever is stored.
pub fn map_settings(items: &[Value]) -> ZoneSettings {
    let value = |id: &str| {
        items
            .iter()
            .find(|i| i.get("id").and_then(Value::as_str) == Some(id))
            .and_then(|i| i.get("value"))
    };
    let text = |id: &str| value(id).and_then(Value::as_str).unwrap_or("");
    let hsts =
        value(wire::SETTING_SECURITY_HEADER).and_then(|v| v.get("strict_transport_security"));
    let flag = |k: &str| hsts.and_then(|h| h.get(k)).and_then(Value::as_bool) == Some(true);
    let enabled = flag("enabled");
    ZoneSettings {
        min_tls_version: tls_version(text(wire::SETTING_MIN_TLS)),
        always_use_https: text(wire::SETTING_ALWAYS_HTTPS) == "on",
        ssl_mode: ssl_mode(text(wire::SETTING_SSL)),
        hsts_max_age_seconds: if enabled {
            hsts.and_then(|h| h.get("max_age"))
                .and_then(Value::as_f64)
                .map(|f| f.max(0.0) as u64)
                .unwrap_or(0)
        } else {
            0
        },
        hsts_include_subdomains: enabled && flag("include_subdomains"),
        hsts_preload: enabled && flag("preload"),
    }
}

/// The value to write for one zone setting.
fn setting_value(spec: &ZoneSettings, id: &str) -> Value {
    match id {
        wire::SETTING_MIN_TLS => json!(spec.min_tls_version),
        wire::SETTING_ALWAYS_HTTPS => json!(if spec.always_use_https { "on" } else { "off" }),
        wire::SETTING_SSL => json!(spec.ssl_mode),
        // nosniff goes on with HSTS: part of the baseline, not configurable in telbase.yaml.
        _ => json!({"strict_transport_security": {
            "enabled": spec.hsts_max_age_seconds > 0,
            "max_age": spec.hsts_max_age_seconds,
            "include_subdomains": spec.hsts_include_subdomains,
            "preload": spec.hsts_preload,
            "nosniff": true,
        }}),
    }
}

/// Which settings a list of changed fields touches.
fn settings_touched(paths: &[&str]) -> Vec<&'static str> {
    let mut out = Vec::new();
    for (field, id) in [
        ("min_tls_version", wire::SETTING_MIN_TLS),
        ("always_use_https", wire::SETTING_ALWAYS_HTTPS),
        ("ssl_mode", wire::SETTING_SSL),
        ("hsts_", wire::SETTING_SECURITY_HEADER),
    ] {
        if paths.iter().any(|p| p.starts_with(field)) && !out.contains(&id) {
            out.push(id);
        }
    }
    out
}

fn all_settings() -> Vec<&'static str> {
    vec![
        wire::SETTING_MIN_TLS,
        wire::SETTING_ALWAYS_HTTPS,
        wire::SETTING_SSL,
        wire::SETTING_SECURITY_HEADER,
    ]
}

/// Where a record for an app points.
pub fn cname_target(target: &ResourceKey) -> Option<&'static str> {
    match target.kind {
        Kind::VercelProject => Some(wire::VERCEL_CNAME),
        Kind::CloudRunService => Some(wire::CLOUD_RUN_CNAME),
        _ => None,
    }
}

/// Cloudflare's limit on a record comment on the Free plan, in characters.
pub const COMMENT_LIMIT: usize = 100;

/// The mark of a record: `telbase project=notes env=production target=vercel/web`. The app is
/// named by its provider and its name without the project prefix, so the mark stays short
/// (comments are limited to 100 characters on the Free plan).
fn record_comment(scope: &Scope, target: &ResourceKey) -> Option<String> {
    let provider = match target.kind {
        Kind::VercelProject | Kind::CloudRunService => target.kind.provider().as_str(),
        _ => return None,
    };
    let app = target
        .name
        .strip_prefix(&format!("{}-", scope.project))
        .unwrap_or(&target.name);
    let c = format!(
        "{} target={provider}/{app}",
        owner::cloudflare_env_mark(&scope.project, scope.environment)
    );
    (c.chars().count() <= COMMENT_LIMIT).then_some(c)
}

fn baseline_comment(project: &str) -> String {
    format!("{} baseline", owner::cloudflare_project_mark(project))
}

fn baseline_name(zone: &str) -> String {
    format!("{}.{zone}", wire::BASELINE_LABEL)
}

/// The app target a record's comment names, if the comment is this scope's mark.
fn owned_target(comment: &str, scope: &Scope) -> Option<ResourceKey> {
    let mark = owner::cloudflare_env_mark(&scope.project, scope.environment);
    let rest = comment.strip_prefix(&mark)?.strip_prefix(" target=")?;
    let (provider, app) = rest.split_once('/')?;
    let kind = [Kind::VercelProject, Kind::CloudRunService]
        .into_iter()
        .find(|k| k.provider().as_str() == provider)?;
    (!app.is_empty()).then(|| ResourceKey::new(kind, format!("{}-{app}", scope.project)))
}

fn policy_name(project: &str, name: &str) -> String {
    format!("{name} ({})", owner::cloudflare_project_mark(project))
}

fn app_name(scope: &Scope, name: &str) -> String {
    format!(
        "{name} ({})",
        owner::cloudflare_env_mark(&scope.project, scope.environment)
    )
}

/// The key name inside a marked Access name, if the mark is exactly `mark`.
fn strip_mark<'a>(full: &'a str, mark: &str, project: &str) -> Option<&'a str> {
    let inner = full.strip_suffix(&format!(" ({mark})"))?;
    owner::has_prefix(project, inner).then_some(inner)
}

/// The hostname of an Access domain entry (which may carry a path).
fn host_of(domain: &str) -> &str {
    domain.split('/').next().unwrap_or(domain)
}

/// What an application attached to `policy` offers at sign-in and how long its sessions
/// last: the identity providers the policy does not exclude (sorted), and the policy's
/// session duration. Sign-in choices follow the policy so the login page offers only
/// providers the policy accepts.
fn app_settings_from(policy: &Value, idps: &[Idp]) -> (Vec<String>, String) {
    let excluded: Vec<&str> = policy
        .get("exclude")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| {
            r.pointer(&format!("/{}/id", wire::RULE_LOGIN_METHOD))
                .and_then(Value::as_str)
        })
        .collect();
    let mut allowed: Vec<String> = idps
        .iter()
        .map(|i| i.id.clone())
        .filter(|id| !excluded.contains(&id.as_str()))
        .collect();
    allowed.sort();
    let session = s(policy, "session_duration").unwrap_or_else(|| "24h".into());
    (allowed, session)
}

struct Idp {
    id: String,
    kind: String,
}

/// A policy body: who (email rules, OR), and which sign-ins count (every other identity
/// provider of the account is excluded, so a user must have signed in with a listed one).
fn policy_body(
    project: &str,
    name: &str,
    spec: &AccessPolicy,
    idps: &[Idp],
    what: &str,
) -> Result<Value, ProviderError> {
    let mut include = Vec::new();
    for d in &spec.allow_domains {
        include.push(json!({ wire::RULE_EMAIL_DOMAIN: {"domain": d} }));
    }
    for e in &spec.allow_emails {
        include.push(json!({ wire::RULE_EMAIL: {"email": e} }));
    }
    for login in &spec.login {
        let t = wire::idp_type(login).unwrap_or(login);
        if !idps.iter().any(|i| i.kind == t) {
            return Err(err(
                ErrorKind::Permanent,
                what,
                format!(
                    "the Cloudflare account has no `{t}` identity provider for `login: {login}`; add one under Zero Trust → Settings → Authentication"
                ),
            ));
        }
    }
    let allowed: Vec<&str> = spec
        .login
        .iter()
        .map(|l| wire::idp_type(l).unwrap_or(l))
        .collect();
    let exclude: Vec<Value> = idps
        .iter()
        .filter(|i| !allowed.contains(&i.kind.as_str()))
        .map(|i| json!({ wire::RULE_LOGIN_METHOD: {"id": i.id} }))
        .collect();
    Ok(json!({
        "name": policy_name(project, name),
        "decision": "allow",
        "include": include,
        "exclude": exclude,
        "session_duration": duration_text(spec.session_seconds),
    }))
}

/// A policy as the model sees it.
fn map_policy(p: &Value, idps: &[Idp]) -> AccessPolicy {
    let rules = |k: &str| -> Vec<Value> {
        p.get(k)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let mut allow_domains = Vec::new();
    let mut allow_emails = Vec::new();
    for r in rules("include") {
        if let Some(d) = r.pointer(&format!("/{}/domain", wire::RULE_EMAIL_DOMAIN)) {
            allow_domains.push(d.as_str().unwrap_or("").to_ascii_lowercase());
        } else if let Some(e) = r.pointer(&format!("/{}/email", wire::RULE_EMAIL)) {
            allow_emails.push(e.as_str().unwrap_or("").to_ascii_lowercase());
        } else {
            // A rule Telbase never writes: shown so the plan rewrites the policy.
            allow_emails.push(format!("(other rule: {r})"));
        }
    }
    let excluded: Vec<String> = rules("exclude")
        .iter()
        .filter_map(|r| {
            r.pointer(&format!("/{}/id", wire::RULE_LOGIN_METHOD))
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect();
    let mut login: Vec<String> = idps
        .iter()
        .filter(|i| !excluded.contains(&i.id))
        .map(|i| wire::login_name(&i.kind))
        .collect();
    login.sort();
    login.dedup();
    allow_domains.sort();
    allow_domains.dedup();
    allow_emails.sort();
    allow_emails.dedup();
    AccessPolicy {
        login: login.into_iter().map(static_login).collect(),
        allow_domains,
        allow_emails,
        session_seconds: s(p, "session_duration")
            .and_then(|d| parse_duration(&d))
            .unwrap_or(24 * 3600),
    }
}

/// The model keeps login names as static strings (they come from a closed list).
fn static_login(l: String) -> &'static str {
    match l.as_str() {
        "google" => "google",
        "microsoft" => "microsoft",
        "github" => "github",
        "onetimepin" => "onetimepin",
        "okta" => "okta",
        "saml" => "saml",
        "oidc" => "oidc",
        _ => "(other identity provider)",
    }
}

impl Cloudflare {
    fn acct(&self) -> String {
        format!("/accounts/{}", enc(&self.account))
    }

    async fn list(&self, call: Call, per_page: u32) -> Result<Vec<Value>, ProviderError> {
        self.http
            .list(
                &self.ep,
                call,
                "/result",
                Paging::CloudflarePage { per_page },
            )
            .await
    }

    /// The zone id of a zone name in this account.
    async fn zone_id(&self, zone: &str, what: &str) -> Result<String, ProviderError> {
        let call = Call::get("/zones", format!("look up zone {zone}"))
            .query("name", zone)
            .query("account.id", self.account.clone());
        let zones = self.list(call, 50).await?;
        zones
            .iter()
            .find(|z| s(z, "name").as_deref() == Some(zone))
            .and_then(|z| s(z, "id"))
            .ok_or_else(|| {
                err(
                    ErrorKind::NotFound,
                    what,
                    format!(
                        "the zone `{zone}` is not in Cloudflare account {}; add the domain to the account first",
                        self.account
                    ),
                )
            })
    }

    async fn records(
        &self,
        zone_id: &str,
        filter: &[(&str, String)],
        what: &str,
    ) -> Result<Vec<Value>, ProviderError> {
        let mut call = Call::get(format!("/zones/{}/dns_records", enc(zone_id)), what);
        for (k, v) in filter {
            call = call.query(k, v.clone());
        }
        self.list(call, 100).await
    }

    async fn idps(&self) -> Result<Vec<Idp>, ProviderError> {
        let call = Call::get(
            format!("{}/access/identity_providers", self.acct()),
            "list Access identity providers",
        );
        Ok(self
            .list(call, 50)
            .await?
            .iter()
            .filter_map(|i| {
                Some(Idp {
                    id: s(i, "id")?,
                    kind: s(i, "type")?,
                })
            })
            .collect())
    }

    async fn policies(&self) -> Result<Vec<Value>, ProviderError> {
        let call = Call::get(
            format!("{}/access/policies", self.acct()),
            "list Access policies",
        );
        self.list(call, 50).await
    }

    async fn apps(&self) -> Result<Vec<Value>, ProviderError> {
        let call = Call::get(
            format!("{}/access/apps", self.acct()),
            "list Access applications",
        );
        self.list(call, 50).await
    }

    async fn observe_all(&self, scope: &Scope) -> Result<Vec<Observed>, ProviderError> {
        let production = scope.environment == Environment::Production;
        let mut out = Vec::new();
        let zones = self
            .list(
                Call::get("/zones", "list zones").query("account.id", self.account.clone()),
                50,
            )
            .await?;
        let baseline = baseline_comment(&scope.project);
        for z in &zones {
            let (Some(zid), Some(zname)) = (s(z, "id"), s(z, "name")) else {
                continue;
            };
            let what = format!("list DNS records of {zname}");
            // Comment filters are case-insensitive prefixes: the exact mark is checked below.
            let records = self
                .records(
                    &zid,
                    &[(
                        "comment.startswith",
                        owner::cloudflare_project_mark(&scope.project),
                    )],
                    &what,
                )
                .await?;
            for r in &records {
                let comment = s(r, "comment").unwrap_or_default();
                let name = s(r, "name").unwrap_or_default();
                let kind = s(r, "type").unwrap_or_default();
                if kind == "TXT" && comment == baseline && name == baseline_name(&zname) {
                    if !production {
                        continue;
                    }
                    let items = result(
                        self.http
                            .json(
                                &self.ep,
                                &Call::get(
                                    format!("/zones/{}/settings", enc(&zid)),
                                    format!("read settings of {zname}"),
                                ),
                            )
                            .await?,
                        "read zone settings",
                    )?;
                    let items = items.as_array().cloned().unwrap_or_default();
                    out.push(Observed {
                        key: ResourceKey::new(Kind::ZoneSettings, zname.clone()),
                        spec: ResourceSpec::ZoneSettings(map_settings(&items)),
                        provider_id: zid.clone(),
                        deletion_allowed: false,
                    });
                    continue;
                }
                let Some(target) = owned_target(&comment, scope) else {
                    continue;
                };
                let content = s(r, "content").unwrap_or_default();
                // A record someone repointed shows as pointing at something else, so the
                // plan puts it back.
                let target = if kind == "CNAME"
                    && cname_target(&target).is_some_and(|c| c.eq_ignore_ascii_case(&content))
                {
                    target
                } else {
                    ResourceKey::new(target.kind, format!("(a {kind} record to {content})"))
                };
                out.push(Observed {
                    key: ResourceKey::new(Kind::DnsRecord, name.clone()),
                    spec: ResourceSpec::DnsRecord(DnsRecord {
                        zone: zname.as_str().into(),
                        hostname: name.into(),
                        proxied: r.get("proxied").and_then(Value::as_bool) == Some(true),
                        target,
                    }),
                    provider_id: format!("{zid}/{}", s(r, "id").unwrap_or_default()),
                    deletion_allowed: false,
                });
            }
        }

        let idps = self.idps().await?;
        let policies = self.policies().await?;
        let project_mark = owner::cloudflare_project_mark(&scope.project);
        let policies_by_id: BTreeMap<String, &Value> = policies
            .iter()
            .filter_map(|p| Some((s(p, "id")?, p)))
            .collect();
        let mut policy_keys: BTreeMap<String, ResourceKey> = BTreeMap::new();
        for p in &policies {
            let (Some(id), Some(name)) = (s(p, "id"), s(p, "name")) else {
                continue;
            };
            let Some(inner) = strip_mark(&name, &project_mark, &scope.project) else {
                continue;
            };
            let key = ResourceKey::new(Kind::AccessPolicy, inner);
            policy_keys.insert(id.clone(), key.clone());
            if production {
                out.push(Observed {
                    key,
                    spec: ResourceSpec::AccessPolicy(map_policy(p, &idps)),
                    provider_id: id,
                    deletion_allowed: false,
                });
            }
        }
        let env_mark = owner::cloudflare_env_mark(&scope.project, scope.environment);
        for a in self.apps().await? {
            let (Some(id), Some(name)) = (s(&a, "id"), s(&a, "name")) else {
                continue;
            };
            let Some(inner) = strip_mark(&name, &env_mark, &scope.project) else {
                continue;
            };
            let mut domains: Vec<String> = a
                .get("self_hosted_domains")
                .and_then(Value::as_array)
                .map(|d| {
                    d.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            if domains.is_empty() {
                domains.extend(s(&a, "domain"));
            }
            let linked: Vec<String> = a
                .get("policies")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|p| s(p, "id"))
                .collect();
            let policy = match linked.as_slice() {
                [one] => match (policy_keys.get(one), policies_by_id.get(one)) {
                    (Some(key), Some(p)) => {
                        // Sign-in choices and session come from the policy when the app is
                        // written; an app left behind by a policy change (or edited by hand)
                        // shows as attached to a stale copy, so the plan rewrites it.
                        let (want_idps, want_session) = app_settings_from(p, &idps);
                        let mut have_idps: Vec<String> = a
                            .get("allowed_idps")
                            .and_then(Value::as_array)
                            .map(|v| {
                                v.iter()
                                    .filter_map(|x| x.as_str().map(str::to_owned))
                                    .collect()
                            })
                            .unwrap_or_default();
                        have_idps.sort();
                        let have_session =
                            s(&a, "session_duration").and_then(|d| parse_duration(&d));
                        if have_idps == want_idps && have_session == parse_duration(&want_session) {
                            key.clone()
                        } else {
                            ResourceKey::new(
                                Kind::AccessPolicy,
                                format!("{} (sign-in options out of date)", key.name),
                            )
                        }
                    }
                    _ => ResourceKey::new(
                        Kind::AccessPolicy,
                        format!("(policy {one} not Telbase's)"),
                    ),
                },
                [] => ResourceKey::new(Kind::AccessPolicy, "(no policy)"),
                _ => ResourceKey::new(
                    Kind::AccessPolicy,
                    format!("({} policies attached)", linked.len()),
                ),
            };
            out.push(Observed {
                key: ResourceKey::new(Kind::AccessApplication, inner),
                spec: ResourceSpec::AccessApplication(AccessApplication { domains, policy }),
                provider_id: id,
                deletion_allowed: false,
            });
        }
        Ok(out)
    }

    // ---- zone settings ----

    async fn write_settings(
        &self,
        zone: &str,
        zone_id: &str,
        spec: &ZoneSettings,
        ids: &[&str],
    ) -> Result<(), ProviderError> {
        for id in ids {
            let call = Call::new(
                Method::PATCH,
                format!("/zones/{}/settings/{id}", enc(zone_id)),
                format!("set {id} on {zone}"),
            )
            .json(json!({"id": id, "value": setting_value(spec, id)}))
            // Writing the same value twice leaves the same setting.
            .retry(Retry::Always);
            self.http.send(&self.ep, &call).await?;
        }
        Ok(())
    }

    /// Enforce the baseline, then claim the zone (in that order: a claim means the baseline
    /// was written at least once; a crash in between is finished by the next run).
    async fn create_settings(
        &self,
        scope: &Scope,
        zone: &str,
        spec: &ZoneSettings,
    ) -> Result<Applied, ProviderError> {
        let what = format!("enforce the edge baseline on {zone}");
        let zid = self.zone_id(zone, &what).await?;
        self.write_settings(zone, &zid, spec, &all_settings())
            .await?;
        let name = baseline_name(zone);
        let comment = baseline_comment(&scope.project);
        let find = || async {
            let found = self
                .records(
                    &zid,
                    &[("name", name.clone()), ("type", "TXT".into())],
                    &what,
                )
                .await?;
            Ok::<bool, ProviderError>(
                found
                    .iter()
                    .any(|r| s(r, "comment").as_deref() == Some(comment.as_str())),
            )
        };
        if !find().await? {
            let body = json!({
                "type": "TXT",
                "name": name,
                "content": format!("\"telbase project={} manages this zone's edge settings\"", scope.project),
                "ttl": 1,
                "comment": comment,
            });
            let call = Call::new(
                Method::POST,
                format!("/zones/{}/dns_records", enc(&zid)),
                format!("claim {zone} for {}", scope.project),
            )
            .json(body);
            if let Err(e) = self.http.send(&self.ep, &call).await {
                // Sent but unanswered, or refused as identical to one already there: the
                // claim may exist, so looking settles it.
                if !find().await? {
                    return Err(e);
                }
            }
        }
        Ok(Applied {
            provider_id: zid,
            url: None,
        })
    }

    /// Stop managing a zone's baseline: remove the claim, lower nothing.
    async fn release_settings(
        &self,
        scope: &Scope,
        zone: &str,
        zone_id: &str,
    ) -> Result<Applied, ProviderError> {
        let what = format!("release {zone}");
        let comment = baseline_comment(&scope.project);
        let found = self
            .records(
                zone_id,
                &[("name", baseline_name(zone)), ("type", "TXT".into())],
                &what,
            )
            .await?;
        for r in found
            .iter()
            .filter(|r| s(r, "comment").as_deref() == Some(comment.as_str()))
        {
            if let Some(id) = s(r, "id") {
                self.delete_record(zone_id, &id, &what).await?;
            }
        }
        Ok(Applied::default())
    }

    // ---- DNS records ----

    async fn delete_record(
        &self,
        zone_id: &str,
        id: &str,
        what: &str,
    ) -> Result<(), ProviderError> {
        let call = Call::new(
            Method::DELETE,
            format!("/zones/{}/dns_records/{}", enc(zone_id), enc(id)),
            what,
        );
        match self.http.send(&self.ep, &call).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Find this scope's record for a hostname; refuse when the name is someone else's.
    async fn own_record(
        &self,
        scope: &Scope,
        zone_id: &str,
        host: &str,
        what: &str,
    ) -> Result<Option<Value>, ProviderError> {
        let at_name = self
            .records(zone_id, &[("name", host.to_owned())], what)
            .await?;
        let (mine, foreign): (Vec<Value>, Vec<Value>) = at_name
            .into_iter()
            .partition(|r| owned_target(&s(r, "comment").unwrap_or_default(), scope).is_some());
        if let Some(r) = foreign.first() {
            {
                let kind = s(r, "type").unwrap_or_default();
                return Err(ProviderError::new(
                    P,
                    ErrorKind::Conflict,
                    what,
                    Some(409),
                    format!(
                        "a {kind} record for `{host}` exists but was not created by Telbase for this project and environment; Telbase never changes it: remove it, or take the domain out of telbase.yaml"
                    ),
                    None,
                    None,
                ));
            }
        }
        // Two of ours at one name cannot come from Telbase (Cloudflare refuses a second
        // CNAME), but if a hand edit made one, keep the first and remove the copy.
        let mut mine = mine.into_iter();
        let first = mine.next();
        for extra in mine {
            if let Some(id) = s(&extra, "id") {
                self.delete_record(zone_id, &id, what).await?;
            }
        }
        Ok(first)
    }

    async fn put_record(&self, scope: &Scope, spec: &DnsRecord) -> Result<Applied, ProviderError> {
        let host = &spec.hostname;
        let what = format!("point {host} at {}", spec.target);
        let content = cname_target(&spec.target).ok_or_else(|| {
            err(
                ErrorKind::Permanent,
                &what,
                format!("{} is not an app Cloudflare can front", spec.target),
            )
        })?;
        let comment = record_comment(scope, &spec.target).ok_or_else(|| {
            err(
                ErrorKind::Permanent,
                &what,
                format!(
                    "the record's ownership comment would be longer than Cloudflare's {COMMENT_LIMIT} characters; use a shorter project or app name"
                ),
            )
        })?;
        let zid = self.zone_id(&spec.zone, &what).await?;
        let body = json!({
            "type": "CNAME",
            "name": host,
            "content": content,
            "proxied": spec.proxied,
            "ttl": 1,
            "comment": comment,
        });
        let id = match self.own_record(scope, &zid, host, &what).await? {
            Some(existing) => {
                let id = s(&existing, "id").unwrap_or_default();
                let call = Call::new(
                    Method::PATCH,
                    format!("/zones/{}/dns_records/{}", enc(&zid), enc(&id)),
                    what.clone(),
                )
                .json(body)
                .retry(Retry::Always);
                self.http.send(&self.ep, &call).await?;
                id
            }
            None => {
                let call = Call::new(
                    Method::POST,
                    format!("/zones/{}/dns_records", enc(&zid)),
                    what.clone(),
                )
                .json(body);
                match self.http.json(&self.ep, &call).await {
                    Ok(v) => result(v, &what)
                        .ok()
                        .and_then(|r| s(&r, "id"))
                        .unwrap_or_default(),
                    // Sent but unanswered, or refused because it is already there (a CNAME
                    // cannot share its name): look again; ours is fine, anything else is not.
                    Err(e) => match self.own_record(scope, &zid, host, &what).await? {
                        Some(r) => s(&r, "id").unwrap_or_default(),
                        None => return Err(e),
                    },
                }
            }
        };
        Ok(Applied {
            provider_id: format!("{zid}/{id}"),
            url: Some(format!("https://{host}")),
        })
    }

    // ---- Access ----

    async fn find_policy(&self, project: &str, name: &str) -> Result<Option<Value>, ProviderError> {
        let full = policy_name(project, name);
        Ok(self
            .policies()
            .await?
            .into_iter()
            .find(|p| s(p, "name").as_deref() == Some(full.as_str())))
    }

    async fn put_policy(
        &self,
        scope: &Scope,
        name: &str,
        spec: &AccessPolicy,
    ) -> Result<Applied, ProviderError> {
        let what = format!("write Access policy {name}");
        let idps = self.idps().await?;
        let body = policy_body(&scope.project, name, spec, &idps, &what)?;
        let full = policy_name(&scope.project, name);
        let copies: Vec<Value> = self
            .policies()
            .await?
            .into_iter()
            .filter(|p| s(p, "name").as_deref() == Some(full.as_str()))
            .collect();
        let existing = self
            .keep_first(copies, "policies", &format!("remove a copy of {full}"))
            .await?;
        let id = self
            .upsert_access(
                "policies",
                existing.and_then(|p| s(&p, "id")),
                body,
                &what,
                || self.find_policy(&scope.project, name),
            )
            .await?;
        Ok(Applied {
            provider_id: id,
            url: None,
        })
    }

    /// Write an Access policy or application (`collection`): replace the existing one, or
    /// create it. Names are not unique at Cloudflare, so a create is never repeated blindly:
    /// when its answer is lost, `refind` looks for what it may have made.
    async fn upsert_access<F>(
        &self,
        collection: &str,
        existing: Option<String>,
        body: Value,
        what: &str,
        refind: impl FnOnce() -> F,
    ) -> Result<String, ProviderError>
    where
        F: std::future::Future<Output = Result<Option<Value>, ProviderError>>,
    {
        let path = format!("{}/access/{collection}", self.acct());
        if let Some(id) = existing {
            self.put(format!("{path}/{}", enc(&id)), body, what).await?;
            return Ok(id);
        }
        let call = Call::new(Method::POST, path, what.to_owned()).json(body);
        match self.http.json(&self.ep, &call).await {
            Ok(v) => Ok(result(v, what)
                .ok()
                .and_then(|r| s(&r, "id"))
                .unwrap_or_default()),
            Err(e) => match refind().await? {
                Some(found) => Ok(s(&found, "id").unwrap_or_default()),
                None => Err(e),
            },
        }
    }

    async fn put(&self, path: String, body: Value, what: &str) -> Result<(), ProviderError> {
        let call = Call::new(Method::PUT, path, what).json(body);
        self.http.send(&self.ep, &call).await.map(drop)
    }

    async fn delete_access(&self, path: String, what: &str) -> Result<Applied, ProviderError> {
        let call = Call::new(Method::DELETE, path, what);
        match self.http.send(&self.ep, &call).await {
            Ok(_) => Ok(Applied::default()),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(Applied::default()),
            Err(e) => Err(e),
        }
    }

    async fn find_app(&self, full_name: &str) -> Result<Option<Value>, ProviderError> {
        let found: Vec<Value> = self
            .apps()
            .await?
            .into_iter()
            .filter(|a| s(a, "name").as_deref() == Some(full_name))
            .collect();
        self.keep_first(found, "apps", &format!("remove a copy of {full_name}"))
            .await
    }

    /// The first of several same-named Access objects of ours, removing the rest. Telbase
    /// looks before it creates, so copies only come from a create whose answer was lost
    /// while the list did not show it yet; they are settled at the next write.
    async fn keep_first(
        &self,
        found: Vec<Value>,
        collection: &str,
        what: &str,
    ) -> Result<Option<Value>, ProviderError> {
        let mut found = found.into_iter();
        let first = found.next();
        for extra in found {
            if let Some(id) = s(&extra, "id") {
                self.delete_access(
                    format!("{}/access/{collection}/{}", self.acct(), enc(&id)),
                    what,
                )
                .await?;
            }
        }
        Ok(first)
    }

    async fn put_app(
        &self,
        scope: &Scope,
        name: &str,
        spec: &AccessApplication,
    ) -> Result<Applied, ProviderError> {
        let what = format!("protect {} with Access", spec.domains.join(", "));
        let Some(first) = spec.domains.first() else {
            return Err(err(
                ErrorKind::Permanent,
                &what,
                "the application has no domain",
            ));
        };
        // The policy is production's: a preview attaches it by name.
        let policy = self
            .find_policy(&scope.project, &spec.policy.name)
            .await?
            .ok_or_else(|| {
                err(
                    ErrorKind::NotFound,
                    &what,
                    format!(
                        "the Access policy {} does not exist yet; apply production first",
                        spec.policy.name
                    ),
                )
            })?;
        let policy_id = s(&policy, "id").unwrap_or_default();
        let idps = self.idps().await?;
        let (allowed, session) = app_settings_from(&policy, &idps);
        let full = app_name(scope, name);
        let body = json!({
            "type": "self_hosted",
            "name": full,
            "domain": first,
            "self_hosted_domains": spec.domains,
            "session_duration": session,
            "allowed_idps": allowed,
            "auto_redirect_to_identity": allowed.len() == 1,
            "app_launcher_visible": false,
            "policies": [{"id": policy_id, "precedence": 1}],
        });
        let existing = self.find_app(&full).await?.and_then(|a| s(&a, "id"));
        let id = self
            .upsert_access("apps", existing, body, &what, || self.find_app(&full))
            .await?;
        Ok(Applied {
            provider_id: id,
            url: Some(format!("https://{}", host_of(first))),
        })
    }

    // ---- dispatch ----

    async fn create(&self, scope: &Scope, desired: &Resource) -> Result<Applied, ProviderError> {
        let name = desired.key.name.as_str();
        match &desired.spec {
            ResourceSpec::ZoneSettings(z) => self.create_settings(scope, name, z).await,
            ResourceSpec::DnsRecord(r) => self.put_record(scope, r).await,
            ResourceSpec::AccessPolicy(p) => self.put_policy(scope, name, p).await,
            ResourceSpec::AccessApplication(a) => self.put_app(scope, name, a).await,
            _ => Err(unsupported(&desired.key)),
        }
    }

    async fn delete(&self, scope: &Scope, observed: &Observed) -> Result<Applied, ProviderError> {
        let name = observed.key.name.as_str();
        let what = format!("delete {}", observed.key);
        match &observed.spec {
            ResourceSpec::ZoneSettings(_) => {
                self.release_settings(scope, name, &observed.provider_id)
                    .await
            }
            ResourceSpec::DnsRecord(_) => {
                let (zid, rid) = observed
                    .provider_id
                    .split_once('/')
                    .ok_or_else(|| err(ErrorKind::Permanent, &what, "malformed record id"))?;
                self.delete_record(zid, rid, &what).await?;
                Ok(Applied::default())
            }
            ResourceSpec::AccessPolicy(_) => {
                self.delete_access(
                    format!(
                        "{}/access/policies/{}",
                        self.acct(),
                        enc(&observed.provider_id)
                    ),
                    &what,
                )
                .await
            }
            ResourceSpec::AccessApplication(_) => {
                self.delete_access(
                    format!("{}/access/apps/{}", self.acct(), enc(&observed.provider_id)),
                    &what,
                )
                .await
            }
            _ => Err(unsupported(&observed.key)),
        }
    }

    async fn apply_change(
        &self,
        scope: &Scope,
        change: Change<'_>,
    ) -> Result<Applied, ProviderError> {
        match change {
            Change::Create { desired } => self.create(scope, desired).await,
            Change::Replace { desired, observed } => {
                self.delete(scope, observed).await?;
                self.create(scope, desired).await
            }
            Change::Update {
                desired,
                observed,
                changes,
            } => match &desired.spec {
                ResourceSpec::ZoneSettings(z) => {
                    let paths: Vec<&str> = changes.iter().map(|c| c.path.as_str()).collect();
                    let ids = settings_touched(&paths);
                    let ids = if ids.is_empty() { all_settings() } else { ids };
                    self.write_settings(&desired.key.name, &observed.provider_id, z, &ids)
                        .await?;
                    Ok(Applied {
                        provider_id: observed.provider_id.clone(),
                        url: None,
                    })
                }
                _ => self.create(scope, desired).await,
            },
            Change::Delete { observed } => self.delete(scope, observed).await,
        }
    }
}

fn unsupported(key: &ResourceKey) -> ProviderError {
    err(
        ErrorKind::Permanent,
        &format!("change {key}"),
        "not a Cloudflare resource",
    )
}

impl Provider for Cloudflare {
    fn provider(&self) -> model::Provider {
        P
    }

    fn observe<'a>(
        &'a self,
        scope: &'a Scope,
    ) -> BoxFuture<'a, Result<Vec<Observed>, ProviderError>> {
        Box::pin(self.observe_all(scope))
    }

    fn apply<'a>(
        &'a self,
        scope: &'a Scope,
        change: Change<'a>,
        _inputs: &'a Inputs,
        _desired: &'a DesiredState,
    ) -> BoxFuture<'a, Result<Applied, ProviderError>> {
        Box::pin(self.apply_change(scope, change))
    }

    fn output<'a>(
        &'a self,
        _scope: &'a Scope,
        resource: &'a Resource,
        output: Output,
    ) -> BoxFuture<'a, Result<SecretString, ProviderError>> {
        Box::pin(async move {
            Err(err(
                ErrorKind::Permanent,
                &format!("read {output:?} of {}", resource.key),
                "Cloudflare resources offer no outputs",
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip() {
        assert_eq!(duration_text(43_200), "12h");
        assert_eq!(duration_text(5_400), "1h30m");
        assert_eq!(duration_text(45), "45s");
        assert_eq!(duration_text(0), "0s");
        assert_eq!(parse_duration("12h"), Some(43_200));
        assert_eq!(parse_duration("12h0m0s"), Some(43_200));
        assert_eq!(parse_duration("1.5h"), Some(5_400));
        assert_eq!(parse_duration("300ms"), Some(0));
        assert_eq!(parse_duration("12x"), None);
        assert_eq!(parse_duration(""), None);
        for secs in [1, 59, 60, 3599, 3600, 86_400, 2_592_000] {
            assert_eq!(parse_duration(&duration_text(secs)), Some(secs));
        }
    }

    #[test]
    fn settings_map_and_hsts_off_reads_as_zero() {
        let items = vec![
            json!({"id": "min_tls_version", "value": "1.0"}),
            json!({"id": "always_use_https", "value": "off"}),
            json!({"id": "ssl", "value": "full"}),
            json!({"id": "security_header", "value": {"strict_transport_security": {"enabled": false, "max_age": 86400, "include_subdomains": true, "preload": true}}}),
        ];
        let z = map_settings(&items);
        assert_eq!(z.min_tls_version, "1.0");
        assert!(!z.always_use_https);
        assert_eq!(z.ssl_mode, "full");
        assert_eq!(z.hsts_max_age_seconds, 0);
        assert!(!z.hsts_include_subdomains && !z.hsts_preload);
        assert_eq!(
            settings_touched(&["hsts_preload", "min_tls_version"]),
            [wire::SETTING_MIN_TLS, wire::SETTING_SECURITY_HEADER]
        );
    }

    #[test]
    fn marks_are_exact() {
        let scope = Scope {
            project: "notes".into(),
            environment: Environment::Preview { pull_request: 7 },
            git: None,
        };
        let target = ResourceKey::new(Kind::VercelProject, "notes-web");
        let c = record_comment(&scope, &target).unwrap();
        assert_eq!(c, "telbase project=notes env=pr-7 target=vercel/web");
        assert_eq!(owned_target(&c, &scope), Some(target));
        let run = ResourceKey::new(Kind::CloudRunService, "notes-api-pr-7");
        let c2 = record_comment(&scope, &run).unwrap();
        assert_eq!(
            c2,
            "telbase project=notes env=pr-7 target=cloud-run/api-pr-7"
        );
        assert_eq!(owned_target(&c2, &scope), Some(run));
        let long = ResourceKey::new(Kind::VercelProject, format!("notes-{}", "x".repeat(80)));
        assert_eq!(record_comment(&scope, &long), None);
        assert_eq!(
            record_comment(&scope, &ResourceKey::new(Kind::NeonProject, "notes-db")),
            None
        );
        let other = Scope {
            project: "notes2".into(),
            ..scope.clone()
        };
        assert_eq!(owned_target(&c, &other), None);
        let prod = Scope {
            environment: Environment::Production,
            ..scope.clone()
        };
        assert_eq!(owned_target(&c, &prod), None);
        let mark = owner::cloudflare_project_mark("notes");
        assert_eq!(
            strip_mark("notes-staff (telbase project=notes)", &mark, "notes"),
            Some("notes-staff")
        );
        assert_eq!(strip_mark("notes-staff", &mark, "notes"), None);
        assert_eq!(
            strip_mark("other-staff (telbase project=notes)", &mark, "notes"),
            None
        );
    }

    #[test]
    fn policy_excludes_every_other_identity_provider() {
        let idps = vec![
            Idp {
                id: "g".into(),
                kind: "google".into(),
            },
            Idp {
                id: "a".into(),
                kind: "azureAD".into(),
            },
            Idp {
                id: "o".into(),
                kind: "onetimepin".into(),
            },
        ];
        let spec = AccessPolicy {
            login: vec!["google"],
            allow_domains: vec!["example.com".into()],
            allow_emails: vec!["ada@example.org".into()],
            session_seconds: 43_200,
        };
        let body = policy_body("notes", "notes-staff", &spec, &idps, "t").unwrap();
        assert_eq!(body["name"], "notes-staff (telbase project=notes)");
        assert_eq!(body["session_duration"], "12h");
        assert_eq!(
            body["include"],
            json!([{"email_domain": {"domain": "example.com"}}, {"email": {"email": "ada@example.org"}}])
        );
        assert_eq!(
            body["exclude"],
            json!([{"login_method": {"id": "a"}}, {"login_method": {"id": "o"}}])
        );
        assert_eq!(map_policy(&body, &idps), spec);
        let missing = AccessPolicy {
            login: vec!["github"],
            ..spec
        };
        let e = policy_body("notes", "notes-staff", &missing, &idps, "t").unwrap_err();
        assert!(e.message.contains("no `github` identity provider"), "{e}");
    }
}

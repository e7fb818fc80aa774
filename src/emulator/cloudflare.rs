//! The emulated Cloudflare API v4 under `/cloudflare/client/v4`: zones, zone settings
//! (single-setting edits, all-settings reads), DNS records with comments and Cloudflare's
//! name rules, and Access (identity providers, reusable policies, self-hosted applications).
//! Every answer, errors included, is the v4 envelope `{success, errors, messages, result}`,
//! lists add `result_info` and come in pages of at most the emulator's page size. Paths and
//! fields follow ../shared/provider-apis/cloudflare (the subset, plus the zone-settings
//! operations of the full description).
//!
//! Zones: the account holds a zone for every name that is looked up with `GET
//! /zones?name=…`, created on first lookup with Cloudflare's defaults for a new zone (minimum
//! TLS 1.0, Always Use HTTPS off, SSL flexible, HSTS off), except names under the reserved
//! `.invalid` and `.test` top-level domains (RFC 2606), which are never there: tests use
//! them for "the zone is not in this account". Identity providers: one-time PIN, Google,
//! Azure AD (Microsoft) and GitHub exist in every account from the start.

use std::collections::BTreeMap;

use axum::http::Method;
use serde_json::{Value, json};

use super::{Answer, Req, World, provider_error};
use crate::model::Provider;

const PV: Provider = Provider::Cloudflare;

pub(crate) struct State {
    zones: Vec<Zone>,
    idps: Vec<Value>,
    policies: Vec<Policy>,
    apps: Vec<App>,
}

impl Default for State {
    fn default() -> Self {
        let idp = |id: &str, name: &str, kind: &str| {
            let config = if kind == "onetimepin" {
                json!({})
            } else {
                json!({"client_id": format!("emulator-{kind}-client")})
            };
            json!({"id": id, "name": name, "type": kind, "config": config})
        };
        State {
            zones: Vec::new(),
            idps: vec![
                idp(
                    "0b5e6f2a-1c3d-4e5f-8a9b-0c1d2e3f4a01",
                    "One-time PIN",
                    "onetimepin",
                ),
                idp("0b5e6f2a-1c3d-4e5f-8a9b-0c1d2e3f4a02", "Google", "google"),
                idp(
                    "0b5e6f2a-1c3d-4e5f-8a9b-0c1d2e3f4a03",
                    "Microsoft Entra ID",
                    "azureAD",
                ),
                idp("0b5e6f2a-1c3d-4e5f-8a9b-0c1d2e3f4a04", "GitHub", "github"),
            ],
            policies: Vec::new(),
            apps: Vec::new(),
        }
    }
}

struct Zone {
    id: String,
    name: String,
    account: String,
    created_on: String,
    /// Setting id → (value, modified_on).
    settings: BTreeMap<String, (Value, Option<String>)>,
    records: Vec<Record>,
}

struct Record {
    id: String,
    name: String,
    kind: String,
    content: String,
    proxied: bool,
    ttl: u64,
    comment: Option<String>,
    created_on: String,
    modified_on: String,
}

struct Policy {
    id: String,
    account: String,
    body: Value,
    created_at: String,
    updated_at: String,
}

struct App {
    id: String,
    aud: String,
    account: String,
    body: Value,
    created_at: String,
    updated_at: String,
}

fn err(status: u16, message: &str) -> Answer {
    provider_error(PV, status, "", message)
}

/// An error with Cloudflare's own numeric code.
fn coded(status: u16, code: u64, message: &str) -> Answer {
    Answer::ok(
        status,
        json!({"success": false, "errors": [{"code": code, "message": message}], "messages": [], "result": null}),
    )
}

fn ok(status: u16, result: Value) -> Answer {
    Answer::ok(
        status,
        json!({"success": true, "errors": [], "messages": [], "result": result}),
    )
}

fn hex_id(w: &mut World, salt: u64) -> String {
    let n = w.next();
    format!(
        "{:016x}{:016x}",
        n.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        salt ^ n
    )
}

fn uuid(w: &mut World) -> String {
    let n = w.next();
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (n.wrapping_mul(2_654_435_761)) as u32,
        n & 0xffff,
        n & 0xfff,
        (n >> 12) & 0xfff,
        n
    )
}

/// One page of `items`, as Cloudflare pages lists.
fn page(req: &Req<'_>, items: Vec<Value>, default_per_page: usize) -> Answer {
    let per_page = req
        .q("per_page")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(default_per_page)
        .clamp(1, req.page_size);
    let page = req
        .q("page")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let total = items.len();
    let total_pages = total.div_ceil(per_page).max(1);
    let slice: Vec<Value> = items
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .collect();
    Answer::ok(
        200,
        json!({
            "success": true, "errors": [], "messages": [],
            "result": slice,
            "result_info": {"page": page, "per_page": per_page, "count": slice.len(), "total_count": total, "total_pages": total_pages},
        }),
    )
}

/// Path segments that are part of a route's shape rather than an id, for counters.
pub(crate) fn literal(segment: &str, _index: usize) -> bool {
    matches!(
        segment,
        "zones"
            | "dns_records"
            | "settings"
            | "accounts"
            | "access"
            | "apps"
            | "policies"
            | "identity_providers"
            | "min_tls_version"
            | "always_use_https"
            | "ssl"
            | "security_header"
    )
}

fn default_settings() -> BTreeMap<String, (Value, Option<String>)> {
    [
        ("min_tls_version", json!("1.0")),
        ("always_use_https", json!("off")),
        ("ssl", json!("flexible")),
        (
            "security_header",
            json!({"strict_transport_security": {"enabled": false, "max_age": 0, "include_subdomains": false, "preload": false, "nosniff": false}}),
        ),
        ("tls_1_3", json!("on")),
        ("automatic_https_rewrites", json!("on")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), (v, None)))
    .collect()
}

fn zone_json(z: &Zone) -> Value {
    json!({
        "id": z.id,
        "name": z.name,
        "status": "active",
        "paused": false,
        "type": "full",
        "development_mode": 0,
        "name_servers": ["ada.ns.cloudflare.com", "bob.ns.cloudflare.com"],
        "original_name_servers": null,
        "original_registrar": null,
        "original_dnshost": null,
        "created_on": z.created_on,
        "modified_on": z.created_on,
        "activated_on": z.created_on,
        "owner": {"id": "0ea1e0000000000000000000000000a1", "name": "emulator@example.com", "type": "user"},
        "account": {"id": z.account, "name": "Telbase emulator account"},
        "meta": {"step": 4, "custom_certificate_quota": 0, "page_rule_quota": 3, "phishing_detected": false},
        "permissions": ["#zone:read", "#zone:edit", "#dns_records:edit", "#zone_settings:edit"],
        "plan": {"id": "0feeeeeeeeeeeeeeeeeeeeeeeeeeeeee", "name": "Free Website", "price": 0, "currency": "USD", "frequency": "", "is_subscribed": false, "can_subscribe": false, "legacy_id": "free", "legacy_discount": false, "externally_managed": false},
    })
}

fn setting_json(id: &str, value: &Value, modified: &Option<String>) -> Value {
    json!({"id": id, "value": value, "editable": true, "modified_on": modified})
}

fn record_json(z: &Zone, r: &Record) -> Value {
    let mut v = json!({
        "id": r.id,
        "zone_id": z.id,
        "zone_name": z.name,
        "name": r.name,
        "type": r.kind,
        "content": r.content,
        "proxiable": r.kind != "TXT",
        "proxied": r.proxied,
        "ttl": r.ttl,
        "locked": false,
        "tags": [],
        "meta": {"auto_added": false, "managed_by_apps": false, "managed_by_argo_tunnel": false, "source": "primary"},
        "created_on": r.created_on,
        "modified_on": r.modified_on,
    });
    if let Some(c) = &r.comment {
        v["comment"] = json!(c);
    }
    v
}

fn valid_zone_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.contains('.')
        && !name.ends_with(".invalid")
        && !name.ends_with(".test")
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

fn find_zone(w: &mut World, name: &str, account: &str) -> Option<usize> {
    if let Some(i) = w.cloudflare.zones.iter().position(|z| z.name == name) {
        return Some(i);
    }
    if !valid_zone_name(name) {
        return None;
    }
    let id = hex_id(w, 0x5a);
    let created_on = w.now_rfc3339();
    w.cloudflare.zones.push(Zone {
        id,
        name: name.to_owned(),
        account: account.to_owned(),
        created_on,
        settings: default_settings(),
        records: Vec::new(),
    });
    Some(w.cloudflare.zones.len() - 1)
}

pub(crate) fn route(w: &mut World, req: &Req<'_>, _provider: Provider) -> Answer {
    let seg = req.segments.clone();
    let m = req.method;
    match seg.as_slice() {
        ["zones"] if m == Method::GET => list_zones(w, req),
        ["zones", zid] if m == Method::GET => {
            match w.cloudflare.zones.iter().find(|z| z.id == *zid) {
                Some(z) => ok(200, zone_json(z)),
                None => coded(404, 1001, "Invalid zone identifier"),
            }
        }
        ["zones", zid, rest @ ..] => {
            let Some(zi) = w.cloudflare.zones.iter().position(|z| z.id == *zid) else {
                return coded(404, 1001, "Invalid zone identifier");
            };
            zone_route(w, req, zi, rest)
        }
        ["accounts", account, "access", rest @ ..] => access_route(w, req, account, rest),
        _ => err(404, "No route for that URI"),
    }
}

fn list_zones(w: &mut World, req: &Req<'_>) -> Answer {
    let account = req.q("account.id").unwrap_or("telbase-emulator").to_owned();
    if let Some(name) = req.q("name") {
        let name = name.to_ascii_lowercase();
        let found = find_zone(w, &name, &account);
        let items = found
            .map(|i| vec![zone_json(&w.cloudflare.zones[i])])
            .unwrap_or_default();
        return page(req, items, 20);
    }
    let items: Vec<Value> = w
        .cloudflare
        .zones
        .iter()
        .filter(|z| z.account == account)
        .map(zone_json)
        .collect();
    page(req, items, 20)
}

fn zone_route(w: &mut World, req: &Req<'_>, zi: usize, rest: &[&str]) -> Answer {
    let m = req.method;
    match rest {
        ["settings"] if m == Method::GET => {
            let z = &w.cloudflare.zones[zi];
            let items: Vec<Value> = z
                .settings
                .iter()
                .map(|(id, (v, at))| setting_json(id, v, at))
                .collect();
            ok(200, json!(items))
        }
        ["settings", id] if m == Method::GET => match w.cloudflare.zones[zi].settings.get(*id) {
            Some((v, at)) => ok(200, setting_json(id, v, at)),
            None => coded(404, 1003, "Unknown zone setting"),
        },
        ["settings", id] if m == Method::PATCH => {
            let Some(value) = req.body.as_ref().and_then(|b| b.get("value")).cloned() else {
                return coded(400, 1007, "the body needs a `value`");
            };
            if let Err(e) = check_setting(id, &value) {
                return coded(400, 1007, &e);
            }
            let at = w.now_rfc3339();
            let z = &mut w.cloudflare.zones[zi];
            if !z.settings.contains_key(*id) {
                return coded(404, 1003, "Unknown zone setting");
            }
            // HSTS edits merge into what is there, as Cloudflare's do.
            let value = match (id, z.settings.get(*id)) {
                (&"security_header", Some((old, _))) => {
                    let mut merged = old.clone();
                    if let (Some(o), Some(n)) = (
                        merged
                            .get_mut("strict_transport_security")
                            .and_then(Value::as_object_mut),
                        value
                            .get("strict_transport_security")
                            .and_then(Value::as_object),
                    ) {
                        for (k, v) in n {
                            o.insert(k.clone(), v.clone());
                        }
                    }
                    merged
                }
                _ => value,
            };
            z.settings
                .insert((*id).to_owned(), (value.clone(), Some(at.clone())));
            ok(200, setting_json(id, &value, &Some(at)))
        }
        ["dns_records"] if m == Method::GET => {
            let z = &w.cloudflare.zones[zi];
            let lower = |s: &str| s.to_ascii_lowercase();
            let items: Vec<Value> = z
                .records
                .iter()
                .filter(|r| req.q("name").is_none_or(|n| lower(n) == r.name))
                .filter(|r| req.q("type").is_none_or(|t| t == r.kind))
                .filter(|r| {
                    req.q("comment.startswith").is_none_or(|p| {
                        r.comment
                            .as_deref()
                            .is_some_and(|c| lower(c).starts_with(&lower(p)))
                    })
                })
                .filter(|r| {
                    req.q("comment")
                        .or(req.q("comment.exact"))
                        .is_none_or(|p| r.comment.as_deref().is_some_and(|c| lower(c) == lower(p)))
                })
                .map(|r| record_json(z, r))
                .collect();
            page(req, items, 100)
        }
        ["dns_records"] if m == Method::POST => {
            let body = req.body.clone().unwrap_or(Value::Null);
            let r = match parse_record(&body) {
                Ok(r) => r,
                Err(e) => return coded(400, 9000, &e),
            };
            let z = &w.cloudflare.zones[zi];
            if let Err(a) = check_conflicts(z, &r, None) {
                return a;
            }
            if !under(&r.name, &z.name) {
                return coded(400, 9007, "the record name is not in this zone");
            }
            let id = hex_id(w, 0xd5);
            let at = w.now_rfc3339();
            let z = &mut w.cloudflare.zones[zi];
            z.records.push(Record {
                id,
                name: r.name,
                kind: r.kind,
                content: r.content,
                proxied: r.proxied,
                ttl: r.ttl,
                comment: r.comment,
                created_on: at.clone(),
                modified_on: at,
            });
            let z = &w.cloudflare.zones[zi];
            ok(200, record_json(z, z.records.last().expect("just pushed")))
        }
        ["dns_records", rid] => {
            let Some(ri) = w.cloudflare.zones[zi]
                .records
                .iter()
                .position(|r| r.id == *rid)
            else {
                return coded(404, 81044, "Record does not exist.");
            };
            match *m {
                Method::GET => {
                    let z = &w.cloudflare.zones[zi];
                    ok(200, record_json(z, &z.records[ri]))
                }
                Method::DELETE => {
                    w.cloudflare.zones[zi].records.remove(ri);
                    ok(200, json!({"id": rid}))
                }
                Method::PATCH | Method::PUT => {
                    let z = &w.cloudflare.zones[zi];
                    let old = &z.records[ri];
                    let mut merged = if *m == Method::PATCH {
                        json!({"name": old.name, "type": old.kind, "content": old.content, "proxied": old.proxied, "ttl": old.ttl, "comment": old.comment})
                    } else {
                        json!({})
                    };
                    if let (Some(o), Some(b)) = (
                        merged.as_object_mut(),
                        req.body.as_ref().and_then(Value::as_object),
                    ) {
                        for (k, v) in b {
                            o.insert(k.clone(), v.clone());
                        }
                    }
                    let r = match parse_record(&merged) {
                        Ok(r) => r,
                        Err(e) => return coded(400, 9000, &e),
                    };
                    if let Err(a) = check_conflicts(z, &r, Some(ri)) {
                        return a;
                    }
                    let at = w.now_rfc3339();
                    let z = &mut w.cloudflare.zones[zi];
                    let rec = &mut z.records[ri];
                    rec.name = r.name;
                    rec.kind = r.kind;
                    rec.content = r.content;
                    rec.proxied = r.proxied;
                    rec.ttl = r.ttl;
                    rec.comment = r.comment;
                    rec.modified_on = at;
                    let z = &w.cloudflare.zones[zi];
                    ok(200, record_json(z, &z.records[ri]))
                }
                _ => err(405, "Method not allowed"),
            }
        }
        _ => err(404, "No route for that URI"),
    }
}

fn under(name: &str, zone: &str) -> bool {
    name == zone || name.ends_with(&format!(".{zone}"))
}

fn check_setting(id: &str, v: &Value) -> Result<(), String> {
    let one_of = |allowed: &[&str]| match v.as_str() {
        Some(s) if allowed.contains(&s) => Ok(()),
        _ => Err(format!(
            "Invalid value for zone setting {id}: expected one of {allowed:?}"
        )),
    };
    match id {
        "min_tls_version" => one_of(&["1.0", "1.1", "1.2", "1.3"]),
        "always_use_https" | "tls_1_3" | "automatic_https_rewrites" => one_of(&["on", "off"]),
        "ssl" => one_of(&["off", "flexible", "full", "strict"]),
        "security_header" => {
            let h = v
                .get("strict_transport_security")
                .and_then(Value::as_object)
                .ok_or("security_header needs `strict_transport_security`")?;
            for (k, x) in h {
                let ok = match k.as_str() {
                    "enabled" | "include_subdomains" | "preload" | "nosniff" => x.is_boolean(),
                    "max_age" => x.as_f64().is_some_and(|n| n >= 0.0),
                    _ => false,
                };
                if !ok {
                    return Err(format!("strict_transport_security.{k}: invalid value"));
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

struct NewRecord {
    name: String,
    kind: String,
    content: String,
    proxied: bool,
    ttl: u64,
    comment: Option<String>,
}

fn parse_record(b: &Value) -> Result<NewRecord, String> {
    let text = |k: &str| b.get(k).and_then(Value::as_str).map(str::to_owned);
    let name = text("name")
        .ok_or("DNS record name is required")?
        .to_ascii_lowercase();
    let kind = text("type").ok_or("DNS record type is required")?;
    let content = text("content").ok_or("DNS record content is required")?;
    let proxied = b.get("proxied").and_then(Value::as_bool).unwrap_or(false);
    if !matches!(kind.as_str(), "A" | "AAAA" | "CNAME" | "TXT") {
        return Err(format!("the emulator does not serve {kind} records"));
    }
    if proxied && kind == "TXT" {
        return Err("TXT records cannot be proxied".into());
    }
    let ttl = match b.get("ttl") {
        None | Some(Value::Null) => 1,
        Some(t) => match t.as_u64() {
            Some(t) if t == 1 || (60..=86_400).contains(&t) => t,
            _ => return Err("ttl must be 1 (automatic) or between 60 and 86400".into()),
        },
    };
    let comment = match b.get("comment") {
        Some(Value::String(c)) if c.chars().count() > 100 => {
            return Err("DNS record comment must be at most 100 characters".into());
        }
        Some(Value::String(c)) if !c.is_empty() => Some(c.clone()),
        _ => None,
    };
    Ok(NewRecord {
        name,
        kind,
        content,
        proxied,
        ttl,
        comment,
    })
}

/// Cloudflare's name rules: a CNAME shares its name with nothing, and no two records are
/// identical.
fn check_conflicts(z: &Zone, r: &NewRecord, except: Option<usize>) -> Result<(), Answer> {
    for (i, o) in z.records.iter().enumerate() {
        if Some(i) == except || o.name != r.name {
            continue;
        }
        if o.kind == "CNAME" || r.kind == "CNAME" {
            return Err(coded(
                400,
                81053,
                "An A, AAAA, or CNAME record with that host already exists.",
            ));
        }
        if o.kind == r.kind && o.content == r.content {
            return Err(coded(400, 81058, "An identical record already exists."));
        }
    }
    Ok(())
}

// ---- Access ----

const RULE_NAMES: &[&str] = &[
    "email",
    "email_domain",
    "email_list",
    "everyone",
    "group",
    "ip",
    "geo",
    "login_method",
    "azureAD",
    "github-organization",
    "gsuite",
    "auth_method",
    "service_token",
    "any_valid_service_token",
];

fn check_rules(w: &World, b: &Value, field: &str) -> Result<(), String> {
    let Some(rules) = b.get(field) else {
        return Ok(());
    };
    let rules = rules
        .as_array()
        .ok_or_else(|| format!("`{field}` must be a list of rules"))?;
    for r in rules {
        let obj = r
            .as_object()
            .filter(|o| o.len() == 1)
            .ok_or_else(|| format!("each `{field}` rule is an object with one key"))?;
        let (k, v) = obj.iter().next().expect("one key");
        if !RULE_NAMES.contains(&k.as_str()) {
            return Err(format!("unknown rule type `{k}`"));
        }
        if k == "login_method" {
            let id = v.get("id").and_then(Value::as_str).unwrap_or("");
            if !w.cloudflare.idps.iter().any(|i| i["id"] == id) {
                return Err(format!("login_method: no identity provider {id}"));
            }
        }
        if k == "email_domain" && v.get("domain").and_then(Value::as_str).is_none() {
            return Err("email_domain needs `domain`".into());
        }
        if k == "email" && v.get("email").and_then(Value::as_str).is_none() {
            return Err("email needs `email`".into());
        }
    }
    Ok(())
}

fn check_duration(b: &Value) -> Result<(), String> {
    match b.get("session_duration") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(d)) if crate::providers::cloudflare::parse_duration(d).is_some() => {
            Ok(())
        }
        Some(_) => Err("session_duration must look like 24h or 2h45m".into()),
    }
}

fn policy_json(p: &Policy, app_count: usize) -> Value {
    let mut v = p.body.clone();
    v["id"] = json!(p.id);
    v["created_at"] = json!(p.created_at);
    v["updated_at"] = json!(p.updated_at);
    v["reusable"] = json!(true);
    v["app_count"] = json!(app_count);
    for k in ["exclude", "require"] {
        if v.get(k).is_none() {
            v[k] = json!([]);
        }
    }
    if v.get("session_duration").is_none() {
        v["session_duration"] = json!("24h");
    }
    v
}

fn app_count(s: &State, policy_id: &str) -> usize {
    s.apps
        .iter()
        .filter(|a| {
            a.body["policies"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["id"] == policy_id))
        })
        .count()
}

fn app_json(s: &State, a: &App) -> Value {
    let mut v = a.body.clone();
    v["id"] = json!(a.id);
    v["aud"] = json!(a.aud);
    v["created_at"] = json!(a.created_at);
    v["updated_at"] = json!(a.updated_at);
    if v.get("session_duration").is_none() {
        v["session_duration"] = json!("24h");
    }
    // Links come back as the policies themselves, with their precedence.
    let links = a.body["policies"].as_array().cloned().unwrap_or_default();
    let resolved: Vec<Value> = links
        .iter()
        .filter_map(|l| {
            let id = l.get("id").and_then(Value::as_str)?;
            let p = s.policies.iter().find(|p| p.id == id)?;
            let mut pj = policy_json(p, app_count(s, &p.id));
            pj["precedence"] = l.get("precedence").cloned().unwrap_or(json!(1));
            Some(pj)
        })
        .collect();
    v["policies"] = json!(resolved);
    v
}

fn check_app(w: &World, account: &str, b: &Value, except: Option<&str>) -> Result<(), String> {
    if b.get("type").and_then(Value::as_str) != Some("self_hosted") {
        return Err("the emulator serves self_hosted applications".into());
    }
    let domain = b
        .get("domain")
        .and_then(Value::as_str)
        .ok_or("`domain` is required")?;
    let mut domains: Vec<String> = b
        .get("self_hosted_domains")
        .and_then(Value::as_array)
        .map(|d| {
            d.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if domains.is_empty() {
        domains.push(domain.to_owned());
    }
    for other in w
        .cloudflare
        .apps
        .iter()
        .filter(|a| a.account == account && Some(a.id.as_str()) != except)
    {
        let theirs: Vec<&str> = other.body["self_hosted_domains"]
            .as_array()
            .map(|d| d.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(d) = domains.iter().find(|d| theirs.contains(&d.as_str())) {
            return Err(format!("{d} is already protected by another application"));
        }
    }
    for l in b["policies"].as_array().into_iter().flatten() {
        let id = l.get("id").and_then(Value::as_str).unwrap_or("");
        if !w.cloudflare.policies.iter().any(|p| p.id == id) {
            return Err(format!("policy {id} does not exist"));
        }
    }
    for idp in b["allowed_idps"].as_array().into_iter().flatten() {
        if !w.cloudflare.idps.iter().any(|i| &i["id"] == idp) {
            return Err(format!("allowed_idps: no identity provider {idp}"));
        }
    }
    check_duration(b)
}

fn access_route(w: &mut World, req: &Req<'_>, account: &str, rest: &[&str]) -> Answer {
    let m = req.method;
    let body = req.body.clone().unwrap_or(Value::Null);
    match rest {
        ["identity_providers"] if m == Method::GET => {
            let items = w.cloudflare.idps.clone();
            page(req, items, 50)
        }
        ["policies"] if m == Method::GET => {
            let s = &w.cloudflare;
            let items: Vec<Value> = s
                .policies
                .iter()
                .filter(|p| p.account == account)
                .map(|p| policy_json(p, app_count(s, &p.id)))
                .collect();
            page(req, items, 50)
        }
        ["policies"] if m == Method::POST => {
            if let Err(e) = check_policy(w, &body) {
                return coded(400, 12130, &e);
            }
            let id = uuid(w);
            let at = w.now_rfc3339();
            w.cloudflare.policies.push(Policy {
                id,
                account: account.to_owned(),
                body,
                created_at: at.clone(),
                updated_at: at,
            });
            let p = w.cloudflare.policies.last().expect("just pushed");
            ok(201, policy_json(p, 0))
        }
        ["policies", pid] => {
            let Some(pi) = w
                .cloudflare
                .policies
                .iter()
                .position(|p| p.id == *pid && p.account == account)
            else {
                return coded(404, 12001, "policy not found");
            };
            match *m {
                Method::GET => {
                    let s = &w.cloudflare;
                    ok(200, policy_json(&s.policies[pi], app_count(s, pid)))
                }
                Method::PUT => {
                    if let Err(e) = check_policy(w, &body) {
                        return coded(400, 12130, &e);
                    }
                    let at = w.now_rfc3339();
                    let p = &mut w.cloudflare.policies[pi];
                    p.body = body;
                    p.updated_at = at;
                    let s = &w.cloudflare;
                    ok(200, policy_json(&s.policies[pi], app_count(s, pid)))
                }
                Method::DELETE => {
                    if app_count(&w.cloudflare, pid) > 0 {
                        return coded(
                            400,
                            12131,
                            "the policy is used by applications; remove it from them first",
                        );
                    }
                    w.cloudflare.policies.remove(pi);
                    ok(202, json!({"id": pid}))
                }
                _ => err(405, "Method not allowed"),
            }
        }
        ["apps"] if m == Method::GET => {
            let s = &w.cloudflare;
            let items: Vec<Value> = s
                .apps
                .iter()
                .filter(|a| a.account == account)
                .map(|a| app_json(s, a))
                .collect();
            page(req, items, 50)
        }
        ["apps"] if m == Method::POST => {
            if let Err(e) = check_app(w, account, &body, None) {
                return coded(400, 12130, &e);
            }
            let id = uuid(w);
            let aud = format!("{}{}", hex_id(w, 0xa0), hex_id(w, 0xa1));
            let at = w.now_rfc3339();
            w.cloudflare.apps.push(App {
                id,
                aud,
                account: account.to_owned(),
                body,
                created_at: at.clone(),
                updated_at: at,
            });
            let s = &w.cloudflare;
            ok(201, app_json(s, s.apps.last().expect("just pushed")))
        }
        ["apps", aid] => {
            let Some(ai) = w
                .cloudflare
                .apps
                .iter()
                .position(|a| a.id == *aid && a.account == account)
            else {
                return coded(404, 12001, "application not found");
            };
            match *m {
                Method::GET => {
                    let s = &w.cloudflare;
                    ok(200, app_json(s, &s.apps[ai]))
                }
                Method::PUT => {
                    if let Err(e) = check_app(w, account, &body, Some(aid)) {
                        return coded(400, 12130, &e);
                    }
                    let at = w.now_rfc3339();
                    let a = &mut w.cloudflare.apps[ai];
                    a.body = body;
                    a.updated_at = at;
                    let s = &w.cloudflare;
                    ok(200, app_json(s, &s.apps[ai]))
                }
                Method::DELETE => {
                    w.cloudflare.apps.remove(ai);
                    ok(202, json!({"id": aid}))
                }
                _ => err(405, "Method not allowed"),
            }
        }
        _ => err(404, "No route for that URI"),
    }
}

fn check_policy(w: &World, b: &Value) -> Result<(), String> {
    if b.get("name")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err("`name` is required".into());
    }
    match b.get("decision").and_then(Value::as_str) {
        Some("allow" | "deny" | "non_identity" | "bypass") => {}
        _ => return Err("`decision` must be allow, deny, non_identity or bypass".into()),
    }
    if b.get("include")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        return Err("`include` needs at least one rule".into());
    }
    for f in ["include", "exclude", "require"] {
        check_rules(w, b, f)?;
    }
    check_duration(b)
}

pub(crate) fn inventory(s: &State, m: &mut BTreeMap<String, u64>) {
    m.insert("cloudflare.zones".into(), s.zones.len() as u64);
    m.insert(
        "cloudflare.dns_records".into(),
        s.zones.iter().map(|z| z.records.len() as u64).sum(),
    );
    m.insert("cloudflare.access_apps".into(), s.apps.len() as u64);
    m.insert("cloudflare.access_policies".into(), s.policies.len() as u64);
}

/// Changes behind Telbase's back. Bodies (`provider` is `cloudflare`):
/// `{"zone":"example.com","settings":{"min_tls_version":"1.0"}}`;
/// `{"zone":"example.com","record":"www.example.com","set":{"proxied":false}}` or
/// `…,"delete":true}`; `{"zone":"example.com","add_record":{"name":…,"type":…,"content":…}}`
/// (a hand-made record); `{"access_app":"notes-web-pr-7","set":{"self_hosted_domains":[…]}}`
/// or `…,"delete":true}` (the app whose name starts with the given text);
/// `{"access_policy":"notes-staff","set":{"session_duration":"720h"}}`.
pub(crate) fn drift(w: &mut World, body: &Value) -> Result<Value, String> {
    let set = body.get("set").and_then(Value::as_object).cloned();
    let delete = body.get("delete").and_then(Value::as_bool) == Some(true);
    if let Some(zone) = body.get("zone").and_then(Value::as_str) {
        let zi = find_zone(w, zone, "telbase-emulator").ok_or("no such zone")?;
        if let Some(settings) = body.get("settings").and_then(Value::as_object) {
            let at = w.now_rfc3339();
            let z = &mut w.cloudflare.zones[zi];
            for (k, v) in settings {
                check_setting(k, v)?;
                z.settings.insert(k.clone(), (v.clone(), Some(at.clone())));
            }
            return Ok(json!({"changed": settings.len()}));
        }
        if let Some(rec) = body.get("add_record") {
            let r = parse_record(rec)?;
            let id = hex_id(w, 0xd5);
            let at = w.now_rfc3339();
            w.cloudflare.zones[zi].records.push(Record {
                id: id.clone(),
                name: r.name,
                kind: r.kind,
                content: r.content,
                proxied: r.proxied,
                ttl: r.ttl,
                comment: r.comment,
                created_on: at.clone(),
                modified_on: at,
            });
            return Ok(json!({"id": id}));
        }
        let name = body
            .get("record")
            .and_then(Value::as_str)
            .ok_or("say `settings`, `add_record` or `record`")?;
        let z = &mut w.cloudflare.zones[zi];
        let ri = z
            .records
            .iter()
            .position(|r| r.name == name && r.kind != "TXT")
            .ok_or("no such record")?;
        if delete {
            z.records.remove(ri);
            return Ok(json!({"deleted": name}));
        }
        let r = &mut z.records[ri];
        for (k, v) in set.unwrap_or_default() {
            match k.as_str() {
                "proxied" => r.proxied = v.as_bool().ok_or("proxied is a boolean")?,
                "content" => r.content = v.as_str().ok_or("content is text")?.to_owned(),
                "comment" => r.comment = v.as_str().map(str::to_owned),
                other => return Err(format!("cannot set {other} on a record")),
            }
        }
        return Ok(json!({"changed": name}));
    }
    if let Some(prefix) = body.get("access_app").and_then(Value::as_str) {
        let ai = w
            .cloudflare
            .apps
            .iter()
            .position(|a| {
                a.body["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .ok_or("no such application")?;
        if delete {
            w.cloudflare.apps.remove(ai);
            return Ok(json!({"deleted": prefix}));
        }
        let a = &mut w.cloudflare.apps[ai];
        for (k, v) in set.unwrap_or_default() {
            a.body[k] = v;
        }
        return Ok(json!({"changed": prefix}));
    }
    if let Some(prefix) = body.get("access_policy").and_then(Value::as_str) {
        let p = w
            .cloudflare
            .policies
            .iter_mut()
            .find(|p| {
                p.body["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .ok_or("no such policy")?;
        for (k, v) in set.unwrap_or_default() {
            p.body[k] = v;
        }
        return Ok(json!({"changed": prefix}));
    }
    Err("say `zone`, `access_app` or `access_policy`".into())
}

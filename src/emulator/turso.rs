//! The emulated Turso Platform API under `/turso`: an organization's groups and databases,
//! database configuration (`delete_protection`) and database tokens. Paths, field names
//! (`Name`, `DbId`, `Hostname` in PascalCase beside snake_case flags, as Turso sends them) and
//! the error envelope `{"error": "…"}` follow ../shared/provider-apis/turso.
//!
//! Turso's group and database lists are not paginated, so neither are these. Any
//! organization slug is accepted (each gets its own groups and databases); the clients
//! default to `telbase-emulator`. Deleting a group deletes its databases, as Turso does.

use std::collections::BTreeMap;

use axum::http::Method;
use serde_json::{Value, json};

use super::{Answer, Req, World, provider_error};
use crate::model::Provider;

#[derive(Default)]
pub(crate) struct State {
    /// By (organization, group name).
    groups: BTreeMap<(String, String), Group>,
    /// By (organization, database name).
    databases: BTreeMap<(String, String), Db>,
    /// Tokens minted, for tests that check tokens are minted on demand only.
    tokens_minted: u64,
}

struct Group {
    uuid: String,
    location: String,
    delete_protection: bool,
}

struct Db {
    id: String,
    group: String,
    hostname: String,
    location: String,
    delete_protection: bool,
    block_reads: bool,
    block_writes: bool,
    size_limit: Option<String>,
    /// The database it was seeded from (not sent: Turso reports branches, not seeds).
    seeded_from: Option<String>,
}

fn err(status: u16, message: &str) -> Answer {
    provider_error(Provider::Turso, status, "", message)
}

/// Path segments that are part of a route's shape rather than an id, for counters.
pub(crate) fn literal(segment: &str, index: usize) -> bool {
    match index {
        0 => segment == "v1",
        1 => segment == "organizations",
        3 => matches!(segment, "groups" | "databases"),
        5 => matches!(
            segment,
            "configuration" | "auth" | "instances" | "locations" | "usage" | "stats"
        ),
        6 => matches!(segment, "tokens" | "rotate"),
        _ => false,
    }
}

/// Database and group names: lowercase letters, numbers and dashes, at most 64 characters.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn uuid(w: &mut World) -> String {
    let n = w.next();
    format!("{:08x}-6906-11ee-8553-{:012x}", n, n * 7919)
}

fn group_json(name: &str, g: &Group) -> Value {
    json!({
        "name": name,
        "uuid": g.uuid,
        "version": "v0.24.31",
        "locations": [g.location],
        "primary": g.location,
        "delete_protection": g.delete_protection,
    })
}

fn db_json(name: &str, d: &Db) -> Value {
    json!({
        "Name": name,
        "DbId": d.id,
        "Hostname": d.hostname,
        "block_reads": d.block_reads,
        "block_writes": d.block_writes,
        "regions": [d.location],
        "primaryRegion": d.location,
        "group": d.group,
        "delete_protection": d.delete_protection,
    })
}

fn config_json(d: &Db) -> Value {
    json!({
        "size_limit": d.size_limit.clone().unwrap_or_else(|| "0".into()),
        "allow_attach": false,
        "block_reads": d.block_reads,
        "block_writes": d.block_writes,
        "delete_protection": d.delete_protection,
        "allowed_ips": [],
        "allowed_aws_vpc_ids": [],
    })
}

fn s<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// Turso's token lifetimes: `never`, or digits with units, e.g. `2w1d30m`.
fn valid_expiration(e: &str) -> bool {
    if e == "never" {
        return true;
    }
    let mut digits = false;
    let mut any = false;
    for c in e.chars() {
        if c.is_ascii_digit() {
            digits = true;
        } else if matches!(c, 'w' | 'd' | 'h' | 'm' | 's') && digits {
            digits = false;
            any = true;
        } else {
            return false;
        }
    }
    any && !digits
}

pub(crate) fn route(w: &mut World, req: &Req<'_>, _provider: Provider) -> Answer {
    let seg = req.segments.as_slice();
    let m = req.method;
    match seg {
        ["v1", "organizations", org, "groups"] if m == Method::GET => {
            let groups: Vec<Value> = w
                .turso
                .groups
                .iter()
                .filter(|((o, _), _)| o == org)
                .map(|((_, n), g)| group_json(n, g))
                .collect();
            Answer::ok(200, json!({"groups": groups}))
        }
        ["v1", "organizations", org, "groups"] if m == Method::POST => {
            let body = req.body.clone().unwrap_or(Value::Null);
            let (Some(name), Some(location)) = (s(&body, "name"), s(&body, "location")) else {
                return err(400, "name and location are required");
            };
            if !valid_name(name) {
                return err(400, "invalid group name");
            }
            if !valid_name(location) {
                return err(400, &format!("invalid location {location}"));
            }
            let key = ((*org).to_owned(), name.to_owned());
            if w.turso.groups.contains_key(&key) {
                return err(409, "group already exists");
            }
            let g = Group {
                uuid: uuid(w),
                location: location.to_owned(),
                delete_protection: false,
            };
            let out = group_json(name, &g);
            w.turso.groups.insert(key, g);
            Answer::ok(200, json!({"group": out}))
        }
        ["v1", "organizations", org, "groups", name] => {
            let key = ((*org).to_owned(), (*name).to_owned());
            let Some(g) = w.turso.groups.get(&key) else {
                return err(404, "group not found");
            };
            match *m {
                Method::GET => Answer::ok(200, json!({"group": group_json(name, g)})),
                Method::DELETE => {
                    if g.delete_protection {
                        return err(400, "group is protected from deletion");
                    }
                    let out = group_json(name, g);
                    w.turso.groups.remove(&key);
                    // A group's databases go with it.
                    w.turso
                        .databases
                        .retain(|(o, _), d| !(o == org && d.group == *name));
                    Answer::ok(200, json!({"group": out}))
                }
                _ => err(405, "method not allowed"),
            }
        }
        ["v1", "organizations", org, "databases"] if m == Method::GET => {
            let group = req.q("group");
            let dbs: Vec<Value> = w
                .turso
                .databases
                .iter()
                .filter(|((o, _), d)| o == org && group.is_none_or(|g| d.group == g))
                .map(|((_, n), d)| db_json(n, d))
                .collect();
            Answer::ok(200, json!({"databases": dbs}))
        }
        ["v1", "organizations", org, "databases"] if m == Method::POST => {
            create_database(w, org, req.body.as_ref())
        }
        ["v1", "organizations", org, "databases", name] => {
            let key = ((*org).to_owned(), (*name).to_owned());
            let Some(d) = w.turso.databases.get(&key) else {
                return err(
                    404,
                    &format!("could not find database with name {name}: record not found"),
                );
            };
            match *m {
                Method::GET => Answer::ok(200, json!({"database": db_json(name, d)})),
                Method::DELETE => {
                    if d.delete_protection {
                        return err(400, &format!("database {name} is protected from deletion"));
                    }
                    w.turso.databases.remove(&key);
                    Answer::ok(200, json!({"database": name}))
                }
                _ => err(405, "method not allowed"),
            }
        }
        [
            "v1",
            "organizations",
            org,
            "databases",
            name,
            "configuration",
        ] => {
            let key = ((*org).to_owned(), (*name).to_owned());
            let Some(d) = w.turso.databases.get_mut(&key) else {
                return err(
                    404,
                    &format!("could not find database with name {name}: record not found"),
                );
            };
            match *m {
                Method::GET => Answer::ok(200, config_json(d)),
                Method::PATCH => {
                    let body = req.body.clone().unwrap_or(Value::Null);
                    if !body.is_object() {
                        return err(400, "invalid configuration");
                    }
                    for (k, target) in [
                        ("delete_protection", &mut d.delete_protection),
                        ("block_reads", &mut d.block_reads),
                        ("block_writes", &mut d.block_writes),
                    ] {
                        if let Some(v) = body.get(k) {
                            match v.as_bool() {
                                Some(b) => *target = b,
                                None => return err(400, &format!("{k} must be a boolean")),
                            }
                        }
                    }
                    if let Some(limit) = s(&body, "size_limit") {
                        d.size_limit = Some(limit.to_owned());
                    }
                    Answer::ok(200, config_json(d))
                }
                _ => err(405, "method not allowed"),
            }
        }
        [
            "v1",
            "organizations",
            org,
            "databases",
            name,
            "auth",
            "tokens",
        ] if m == Method::POST => {
            let key = ((*org).to_owned(), (*name).to_owned());
            let Some(d) = w.turso.databases.get(&key) else {
                return err(
                    404,
                    &format!("could not find database with name {name}: record not found"),
                );
            };
            let expiration = req.q("expiration").unwrap_or("never");
            if !valid_expiration(expiration) {
                return err(400, "Invalid expiration format");
            }
            let authorization = req.q("authorization").unwrap_or("full-access");
            if !matches!(authorization, "full-access" | "read-only") {
                return err(400, "Invalid authorization level");
            }
            let db_id = d.id.clone();
            w.turso.tokens_minted += 1;
            let n = w.next();
            // JWT-shaped (header.claims.signature, base64url); signed by nobody.
            use base64::Engine as _;
            let b64 = |v: &Value| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
            };
            let a = if authorization == "read-only" {
                "ro"
            } else {
                "rw"
            };
            let jwt = format!(
                "{}.{}.{}",
                b64(&json!({"alg": "EdDSA", "typ": "JWT"})),
                b64(&json!({"a": a, "id": db_id, "iat": 1_767_225_600 + n})),
                b64(&json!(format!("emulator-signature-{n}"))),
            );
            Answer::ok(200, json!({"jwt": jwt}))
        }
        _ => err(404, "not found"),
    }
}

fn create_database(w: &mut World, org: &str, body: Option<&Value>) -> Answer {
    let body = body.cloned().unwrap_or(Value::Null);
    let (Some(name), Some(group)) = (s(&body, "name"), s(&body, "group")) else {
        return err(400, "name and group are required");
    };
    if !valid_name(name) {
        return err(
            400,
            "database names must contain only lowercase letters, numbers and dashes, at most 64 characters",
        );
    }
    let Some(location) = w
        .turso
        .groups
        .get(&(org.to_owned(), group.to_owned()))
        .map(|g| g.location.clone())
    else {
        return err(400, "group not found");
    };
    let key = (org.to_owned(), name.to_owned());
    if w.turso.databases.contains_key(&key) {
        return err(409, &format!("database with name {name} already exists"));
    }
    let seeded_from = match body.get("seed") {
        None | Some(Value::Null) => None,
        Some(seed) => match (s(seed, "type"), s(seed, "name")) {
            (Some("database"), Some(source)) => {
                if !w
                    .turso
                    .databases
                    .contains_key(&(org.to_owned(), source.to_owned()))
                {
                    return err(400, &format!("seed database {source} not found"));
                }
                Some(source.to_owned())
            }
            (Some("database"), None) => return err(400, "seed name is required"),
            (Some(other), _) => {
                return err(400, &format!("seed type {other} is not supported here"));
            }
            (None, _) => return err(400, "seed type is required"),
        },
    };
    let db = Db {
        id: uuid(w),
        group: group.to_owned(),
        hostname: format!("{name}-{org}.turso.io"),
        location,
        delete_protection: false,
        block_reads: false,
        block_writes: false,
        size_limit: s(&body, "size_limit").map(str::to_owned),
        seeded_from,
    };
    let out = json!({"DbId": db.id, "Hostname": db.hostname, "Name": name});
    w.turso.databases.insert(key, db);
    Answer::ok(200, json!({"database": out}))
}

pub(crate) fn inventory(s: &State, m: &mut BTreeMap<String, u64>) {
    m.insert("turso.groups".into(), s.groups.len() as u64);
    m.insert("turso.databases".into(), s.databases.len() as u64);
    m.insert(
        "turso.databases.seeded".into(),
        s.databases
            .values()
            .filter(|d| d.seeded_from.is_some())
            .count() as u64,
    );
    m.insert("turso.tokens_minted".into(), s.tokens_minted);
}

/// Change Turso resources behind Telbase's back. Bodies (`org` defaults to
/// `telbase-emulator`):
/// `{"provider":"turso","database":"notes-main","delete":true}`,
/// `{"provider":"turso","database":"notes-main","delete_protection":false}`,
/// `{"provider":"turso","database":"notes-main","block_writes":true}`,
/// `{"provider":"turso","group":"default","delete":true}`,
/// `{"provider":"turso","group":"default","delete_protection":true}`.
pub(crate) fn drift(w: &mut World, body: &Value) -> Result<Value, String> {
    let org = s(body, "org").unwrap_or("telbase-emulator").to_owned();
    let st = &mut w.turso;
    if let Some(name) = s(body, "database") {
        let key = (org.clone(), name.to_owned());
        if body.get("delete").and_then(Value::as_bool) == Some(true) {
            let gone = st.databases.remove(&key).is_some();
            return Ok(json!({"deleted": u64::from(gone)}));
        }
        let d = st
            .databases
            .get_mut(&key)
            .ok_or_else(|| format!("no Turso database named {name} in {org}"))?;
        let mut changed = Vec::new();
        for (k, target) in [
            ("delete_protection", &mut d.delete_protection),
            ("block_reads", &mut d.block_reads),
            ("block_writes", &mut d.block_writes),
        ] {
            if let Some(v) = body.get(k).and_then(Value::as_bool) {
                *target = v;
                changed.push(k);
            }
        }
        return Ok(json!({"changed": changed}));
    }
    if let Some(name) = s(body, "group") {
        let key = (org.clone(), name.to_owned());
        if body.get("delete").and_then(Value::as_bool) == Some(true) {
            let gone = st.groups.remove(&key).is_some();
            st.databases
                .retain(|(o, _), d| !(o == &org && d.group == name));
            return Ok(json!({"deleted": u64::from(gone)}));
        }
        let g = st
            .groups
            .get_mut(&key)
            .ok_or_else(|| format!("no Turso group named {name} in {org}"))?;
        let mut changed = Vec::new();
        if let Some(v) = body.get("delete_protection").and_then(Value::as_bool) {
            g.delete_protection = v;
            changed.push("delete_protection");
        }
        return Ok(json!({"changed": changed}));
    }
    Err("`database` or `group` (a Turso name) is required".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expirations() {
        for ok in ["never", "2w1d30m", "30d", "1h"] {
            assert!(valid_expiration(ok), "{ok}");
        }
        for bad in ["", "d", "30", "30x", "w2"] {
            assert!(!valid_expiration(bad), "{bad}");
        }
    }

    #[test]
    fn literals() {
        assert!(literal("v1", 0) && literal("organizations", 1) && literal("databases", 3));
        assert!(literal("tokens", 6) && literal("auth", 5));
        assert!(!literal("tokens", 4), "a database named tokens is an id");
    }
}

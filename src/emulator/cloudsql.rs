//! The emulated Cloud SQL Admin API v1 under `/cloud-sql`: instances (with settings, labels,
//! backups, SSL mode and deletion protection), their databases and users, and the
//! long-running operations every mutation returns. Paths, field names, the `sql#…` kinds,
//! `pageToken` pagination and Google's error envelope follow
//! ../shared/provider-apis/gcp-cloud-sql/sqladmin.v1.discovery.json.
//!
//! Like the real service, a mutation takes effect at once but its instance stays busy until
//! the operation is `DONE` (after `async_polls` polls): a new instance is `PENDING_CREATE`
//! until then, and another mutation of a busy instance is refused with 409, so clients must
//! wait for operations as they must in production. Empty lists omit `items`, as Google's
//! JSON does for empty repeated fields.

use std::collections::BTreeMap;

use axum::http::Method;
use serde_json::{Map, Value, json};

use super::{Answer, Req, World, provider_error};
use crate::model::Provider;

#[derive(Default)]
pub(crate) struct State {
    instances: Vec<Instance>,
    operations: Vec<Operation>,
}

struct Instance {
    project: String,
    name: String,
    region: String,
    database_version: String,
    /// The `settings` object as the API returns it (defaults filled in).
    settings: Map<String, Value>,
    settings_version: u64,
    pending_create: bool,
    ip: String,
    create_time: String,
    databases: Vec<Database>,
    users: Vec<User>,
}

struct Database {
    name: String,
    charset: String,
    collation: String,
}

struct User {
    name: String,
    host: String,
    kind: String,
    /// Kept only to prove a password was set; never returned.
    #[allow(dead_code)]
    password: Option<String>,
}

struct Operation {
    project: String,
    name: String,
    instance: String,
    kind: &'static str,
    polls_left: u32,
    insert_time: String,
}

const P: Provider = Provider::CloudSql;

fn err(status: u16, message: &str) -> Answer {
    provider_error(P, status, "", message)
}

/// Path segments that are part of a route's shape rather than an id, for counters.
pub(crate) fn literal(segment: &str, index: usize) -> bool {
    (index == 0 && segment == "v1")
        || matches!(
            segment,
            "projects" | "instances" | "databases" | "users" | "operations" | "connectSettings"
        )
}

fn self_link(project: &str, rest: &str) -> String {
    format!("https://sqladmin.googleapis.com/v1/projects/{project}/{rest}")
}

fn instance_json(i: &Instance) -> Value {
    let mut settings = i.settings.clone();
    settings.insert(
        "settingsVersion".into(),
        json!(i.settings_version.to_string()),
    );
    json!({
        "kind": "sql#instance",
        "name": i.name,
        "project": i.project,
        "region": i.region,
        "gceZone": format!("{}-a", i.region),
        "databaseVersion": i.database_version,
        "databaseInstalledVersion": format!("{}_0", i.database_version),
        "state": if i.pending_create { "PENDING_CREATE" } else { "RUNNABLE" },
        "backendType": "SECOND_GEN",
        "instanceType": "CLOUD_SQL_INSTANCE",
        "connectionName": format!("{}:{}:{}", i.project, i.region, i.name),
        "ipAddresses": [{"type": "PRIMARY", "ipAddress": i.ip}],
        "serverCaCert": {"kind": "sql#sslCert", "instance": i.name, "commonName": "C=US,O=Google\\, Inc,CN=Google Cloud SQL Server CA", "sha1Fingerprint": "0000000000000000000000000000000000000000", "createTime": i.create_time},
        "serviceAccountEmailAddress": format!("p000000000000-emu@gcp-sa-cloud-sql.iam.gserviceaccount.com"),
        "createTime": i.create_time,
        "selfLink": self_link(&i.project, &format!("instances/{}", i.name)),
        "sqlNetworkArchitecture": "NEW_NETWORK_ARCHITECTURE",
        "satisfiesPzs": false,
        "settings": settings,
    })
}

fn database_json(i: &Instance, d: &Database) -> Value {
    json!({
        "kind": "sql#database",
        "name": d.name,
        "charset": d.charset,
        "collation": d.collation,
        "instance": i.name,
        "project": i.project,
        "selfLink": self_link(&i.project, &format!("instances/{}/databases/{}", i.name, d.name)),
    })
}

fn user_json(i: &Instance, u: &User) -> Value {
    let mut v = json!({
        "kind": "sql#user",
        "name": u.name,
        "instance": i.name,
        "project": i.project,
        "type": u.kind,
        "etag": "",
    });
    if !u.host.is_empty() {
        v["host"] = json!(u.host);
    }
    v
}

fn op_json(o: &Operation) -> Value {
    let done = o.polls_left == 0;
    let mut v = json!({
        "kind": "sql#operation",
        "name": o.name,
        "status": if done { "DONE" } else { "RUNNING" },
        "operationType": o.kind,
        "user": "emulator@telbase.test",
        "insertTime": o.insert_time,
        "startTime": o.insert_time,
        "targetId": o.instance,
        "targetProject": o.project,
        "targetLink": self_link(&o.project, &format!("instances/{}", o.instance)),
        "selfLink": self_link(&o.project, &format!("operations/{}", o.name)),
    });
    if done {
        v["endTime"] = json!(o.insert_time);
    }
    v
}

fn new_op(w: &mut World, project: &str, instance: &str, kind: &'static str, polls: u32) -> Answer {
    let n = w.next();
    let insert_time = w.now_rfc3339();
    let o = Operation {
        project: project.to_owned(),
        name: format!(
            "{:08x}-{:04x}-4{:03x}-8000-{:012x}",
            n,
            n % 0xffff,
            n % 0xfff,
            n
        ),
        instance: instance.to_owned(),
        kind,
        polls_left: polls,
        insert_time,
    };
    let v = op_json(&o);
    if o.polls_left == 0 {
        finish(&mut w.cloudsql, &o);
    }
    w.cloudsql.operations.push(o);
    Answer::ok(200, v)
}

/// What happens when an operation is done: a created instance becomes runnable.
fn finish(st: &mut State, o: &Operation) {
    if o.kind == "CREATE"
        && let Some(i) = st
            .instances
            .iter_mut()
            .find(|i| i.project == o.project && i.name == o.instance)
    {
        i.pending_create = false;
    }
}

fn busy(st: &State, project: &str, instance: &str) -> bool {
    st.operations
        .iter()
        .any(|o| o.project == project && o.instance == instance && o.polls_left > 0)
}

fn find<'a>(st: &'a State, project: &str, name: &str) -> Option<&'a Instance> {
    st.instances
        .iter()
        .find(|i| i.project == project && i.name == name)
}

fn find_mut<'a>(st: &'a mut State, project: &str, name: &str) -> Option<&'a mut Instance> {
    st.instances
        .iter_mut()
        .find(|i| i.project == project && i.name == name)
}

/// Cloud SQL accepts `requireSsl` only in the pairs its documentation lists.
fn ssl_pair_ok(ip: &Map<String, Value>) -> bool {
    let mode = ip.get("sslMode").and_then(Value::as_str);
    let require = ip.get("requireSsl").and_then(Value::as_bool);
    matches!(
        (mode, require),
        (_, None)
            | (None, _)
            | (
                Some("ALLOW_UNENCRYPTED_AND_ENCRYPTED" | "ENCRYPTED_ONLY"),
                Some(false)
            )
            | (Some("TRUSTED_CLIENT_CERTIFICATE_REQUIRED"), Some(true))
    )
}

/// Merge a PATCH into settings: objects merge field by field, except `userLabels`, which
/// is replaced whole (a label map is one field).
fn merge(into: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (k, v) in patch {
        match (into.get_mut(k), v) {
            (Some(Value::Object(a)), Value::Object(b)) if k != "userLabels" => merge(a, b),
            _ => {
                into.insert(k.clone(), v.clone());
            }
        }
    }
}

/// The settings of a new instance: what was asked for over the service's defaults.
fn new_settings(asked: &Map<String, Value>) -> Map<String, Value> {
    let mut s = json!({
        "kind": "sql#settings",
        "tier": "db-custom-1-3840",
        "edition": "ENTERPRISE",
        "availabilityType": "ZONAL",
        "pricingPlan": "PER_USE",
        "activationPolicy": "ALWAYS",
        "dataDiskSizeGb": "10",
        "dataDiskType": "PD_SSD",
        "storageAutoResize": true,
        "storageAutoResizeLimit": "0",
        "replicationType": "SYNCHRONOUS",
        "deletionProtectionEnabled": false,
        "backupConfiguration": {
            "kind": "sql#backupConfiguration",
            "enabled": false,
            "startTime": "03:00",
            "pointInTimeRecoveryEnabled": false,
            "transactionLogRetentionDays": 7,
            "backupRetentionSettings": {"retentionUnit": "COUNT", "retainedBackups": 7},
            "backupTier": "STANDARD",
        },
        "ipConfiguration": {
            "ipv4Enabled": true,
            "sslMode": "ALLOW_UNENCRYPTED_AND_ENCRYPTED",
            "requireSsl": false,
            "serverCaMode": "GOOGLE_MANAGED_INTERNAL_CA",
        },
        "locationPreference": {"kind": "sql#locationPreference"},
        "maintenanceWindow": {"kind": "sql#maintenanceWindow", "hour": 0, "day": 0},
        "userLabels": {},
    });
    let s = s.as_object_mut().map(std::mem::take).unwrap_or_default();
    let mut s = s;
    merge(&mut s, asked);
    // `requireSsl` follows the mode when only the mode was given.
    if let Some(Value::Object(ip)) = s.get_mut("ipConfiguration")
        && asked
            .get("ipConfiguration")
            .and_then(|i| i.get("requireSsl"))
            .is_none()
    {
        let mode = ip.get("sslMode").and_then(Value::as_str).unwrap_or("");
        ip.insert(
            "requireSsl".into(),
            json!(mode == "TRUSTED_CLIENT_CERTIFICATE_REQUIRED"),
        );
    }
    s
}

fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 98
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && !name.ends_with('-')
}

pub(crate) fn route(w: &mut World, r: &Req<'_>) -> Answer {
    let m = r.method;
    let polls = r.async_polls;
    let segs = r.segments.as_slice();
    let (project, rest) = match segs {
        ["v1", "projects", p, rest @ ..] => ((*p).to_owned(), rest),
        _ => return err(404, "The requested URL was not found on this server."),
    };
    let project = project.as_str();
    match rest {
        ["instances"] if m == Method::GET => list_instances(w, r, project),
        ["instances"] if m == Method::POST => insert_instance(w, r, project, polls),
        ["instances", i] if m == Method::GET => match find(&w.cloudsql, project, i) {
            Some(inst) => Answer::ok(200, instance_json(inst)),
            None => err(404, "The Cloud SQL instance does not exist."),
        },
        ["instances", i] if m == Method::PATCH => patch_instance(w, r, project, i, polls),
        ["instances", i] if m == Method::DELETE => {
            let Some(inst) = find(&w.cloudsql, project, i) else {
                return err(404, "The Cloud SQL instance does not exist.");
            };
            if busy(&w.cloudsql, project, i) {
                return operation_in_progress();
            }
            if inst.settings.get("deletionProtectionEnabled") == Some(&json!(true)) {
                return err(
                    400,
                    "The instance is protected from deletion. Disable deletion protection (settings.deletionProtectionEnabled) and try again.",
                );
            }
            w.cloudsql
                .instances
                .retain(|x| !(x.project == project && x.name == *i));
            new_op(w, project, i, "DELETE", polls)
        }
        ["instances", i, "connectSettings"] if m == Method::GET => {
            match find(&w.cloudsql, project, i) {
                Some(inst) => Answer::ok(
                    200,
                    json!({
                        "kind": "sql#connectSettings",
                        "databaseVersion": inst.database_version,
                        "region": inst.region,
                        "backendType": "SECOND_GEN",
                        "ipAddresses": [{"type": "PRIMARY", "ipAddress": inst.ip}],
                        "serverCaCert": instance_json(inst)["serverCaCert"],
                    }),
                ),
                None => err(404, "The Cloud SQL instance does not exist."),
            }
        }
        ["instances", i, "databases"] if m == Method::GET => match find(&w.cloudsql, project, i) {
            Some(inst) => {
                let mut v = json!({"kind": "sql#databasesList"});
                if !inst.databases.is_empty() {
                    v["items"] = inst
                        .databases
                        .iter()
                        .map(|d| database_json(inst, d))
                        .collect();
                }
                Answer::ok(200, v)
            }
            None => err(404, "The Cloud SQL instance does not exist."),
        },
        ["instances", i, "databases"] if m == Method::POST => {
            let body = r.body.clone().unwrap_or(json!({}));
            let Some(name) = body.get("name").and_then(Value::as_str).map(str::to_owned) else {
                return err(400, "Invalid request: database name is required.");
            };
            let Some(inst) = find(&w.cloudsql, project, i) else {
                return err(404, "The Cloud SQL instance does not exist.");
            };
            if inst.pending_create || busy(&w.cloudsql, project, i) {
                return operation_in_progress();
            }
            if inst.databases.iter().any(|d| d.name == name) {
                return err(409, "The database already exists.");
            }
            let db = Database {
                name,
                charset: body
                    .get("charset")
                    .and_then(Value::as_str)
                    .unwrap_or("UTF8")
                    .to_owned(),
                collation: body
                    .get("collation")
                    .and_then(Value::as_str)
                    .unwrap_or("en_US.UTF8")
                    .to_owned(),
            };
            if let Some(inst) = find_mut(&mut w.cloudsql, project, i) {
                inst.databases.push(db);
            }
            new_op(w, project, i, "CREATE_DATABASE", polls)
        }
        ["instances", i, "databases", d] if m == Method::GET => {
            let Some(inst) = find(&w.cloudsql, project, i) else {
                return err(404, "The Cloud SQL instance does not exist.");
            };
            match inst.databases.iter().find(|x| x.name == *d) {
                Some(db) => Answer::ok(200, database_json(inst, db)),
                None => err(404, "The database does not exist."),
            }
        }
        ["instances", i, "databases", d] if m == Method::DELETE => {
            let Some(inst) = find(&w.cloudsql, project, i) else {
                return err(404, "The Cloud SQL instance does not exist.");
            };
            if !inst.databases.iter().any(|x| x.name == *d) {
                return err(404, "The database does not exist.");
            }
            if busy(&w.cloudsql, project, i) {
                return operation_in_progress();
            }
            if let Some(inst) = find_mut(&mut w.cloudsql, project, i) {
                inst.databases.retain(|x| x.name != *d);
            }
            new_op(w, project, i, "DELETE_DATABASE", polls)
        }
        ["instances", i, "users"] if m == Method::GET => match find(&w.cloudsql, project, i) {
            Some(inst) => {
                let mut v = json!({"kind": "sql#usersList"});
                if !inst.users.is_empty() {
                    v["items"] = inst.users.iter().map(|u| user_json(inst, u)).collect();
                }
                Answer::ok(200, v)
            }
            None => err(404, "The Cloud SQL instance does not exist."),
        },
        ["instances", i, "users", name] if m == Method::GET => {
            let Some(inst) = find(&w.cloudsql, project, i) else {
                return err(404, "The Cloud SQL instance does not exist.");
            };
            match inst.users.iter().find(|u| u.name == *name) {
                Some(u) => Answer::ok(200, user_json(inst, u)),
                None => err(404, "The user does not exist."),
            }
        }
        ["instances", i, "users"] if m == Method::POST || m == Method::PUT => {
            let body = r.body.clone().unwrap_or(json!({}));
            let name = r
                .q("name")
                .map(str::to_owned)
                .or_else(|| body.get("name").and_then(Value::as_str).map(str::to_owned));
            let Some(name) = name.filter(|n| !n.is_empty()) else {
                return err(400, "Invalid request: user name is required.");
            };
            let password = body
                .get("password")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let Some(inst) = find(&w.cloudsql, project, i) else {
                return err(404, "The Cloud SQL instance does not exist.");
            };
            if inst.pending_create || busy(&w.cloudsql, project, i) {
                return operation_in_progress();
            }
            let exists = inst.users.iter().any(|u| u.name == name);
            let kind = if m == Method::POST {
                if exists {
                    return err(409, "The user already exists.");
                }
                "CREATE_USER"
            } else {
                if !exists {
                    return err(404, "The user does not exist.");
                }
                "UPDATE_USER"
            };
            if let Some(inst) = find_mut(&mut w.cloudsql, project, i) {
                match inst.users.iter_mut().find(|u| u.name == name) {
                    Some(u) => {
                        if password.is_some() {
                            u.password = password;
                        }
                    }
                    None => inst.users.push(User {
                        name,
                        host: String::new(),
                        kind: body
                            .get("type")
                            .and_then(Value::as_str)
                            .unwrap_or("BUILT_IN")
                            .to_owned(),
                        password,
                    }),
                }
            }
            new_op(w, project, i, kind, polls)
        }
        ["instances", i, "users"] if m == Method::DELETE => {
            let Some(name) = r.q("name").map(str::to_owned) else {
                return err(400, "Invalid request: user name is required.");
            };
            let Some(inst) = find(&w.cloudsql, project, i) else {
                return err(404, "The Cloud SQL instance does not exist.");
            };
            if !inst.users.iter().any(|u| u.name == name) {
                return err(404, "The user does not exist.");
            }
            if busy(&w.cloudsql, project, i) {
                return operation_in_progress();
            }
            if let Some(inst) = find_mut(&mut w.cloudsql, project, i) {
                inst.users.retain(|u| u.name != name);
            }
            new_op(w, project, i, "DELETE_USER", polls)
        }
        ["operations", o] if m == Method::GET => {
            let st = &mut w.cloudsql;
            let Some(idx) = st
                .operations
                .iter()
                .position(|x| x.project == project && x.name == *o)
            else {
                return err(404, "The operation does not exist.");
            };
            let v = op_json(&st.operations[idx]);
            if st.operations[idx].polls_left > 0 {
                st.operations[idx].polls_left -= 1;
                if st.operations[idx].polls_left == 0 {
                    let done = Operation {
                        project: st.operations[idx].project.clone(),
                        name: String::new(),
                        instance: st.operations[idx].instance.clone(),
                        kind: st.operations[idx].kind,
                        polls_left: 0,
                        insert_time: String::new(),
                    };
                    finish(st, &done);
                }
            }
            Answer::ok(200, v)
        }
        ["operations"] if m == Method::GET => {
            let instance = r.q("instance");
            let ops: Vec<Value> = w
                .cloudsql
                .operations
                .iter()
                .rev()
                .filter(|o| o.project == project && instance.is_none_or(|i| o.instance == i))
                .map(op_json)
                .collect();
            paged(r, "sql#operationsList", ops)
        }
        _ => err(404, "The requested URL was not found on this server."),
    }
}

fn operation_in_progress() -> Answer {
    provider_error(
        P,
        409,
        "aborted",
        "Operation failed because another operation was already in progress.",
    )
}

/// One page of `items`, continued by `nextPageToken` (an offset, opaque to clients).
fn paged(r: &Req<'_>, kind: &str, items: Vec<Value>) -> Answer {
    let size = r
        .q("maxResults")
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(500)
        .clamp(1, r.page_size);
    let start = match r.q("pageToken") {
        Some(t) => match t.strip_prefix("emu-").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => n,
            None => return err(400, "Invalid request: the page token is not valid."),
        },
        None => 0,
    };
    let page: Vec<Value> = items.iter().skip(start).take(size).cloned().collect();
    let mut v = json!({"kind": kind});
    if !page.is_empty() {
        v["items"] = Value::Array(page);
    }
    if start + size < items.len() {
        v["nextPageToken"] = json!(format!("emu-{}", start + size));
    }
    Answer::ok(200, v)
}

fn list_instances(w: &mut World, r: &Req<'_>, project: &str) -> Answer {
    let items: Vec<Value> = w
        .cloudsql
        .instances
        .iter()
        .filter(|i| i.project == project)
        .map(instance_json)
        .collect();
    paged(r, "sql#instancesList", items)
}

fn insert_instance(w: &mut World, r: &Req<'_>, project: &str, polls: u32) -> Answer {
    let body = r.body.clone().unwrap_or(json!({}));
    let Some(name) = body.get("name").and_then(Value::as_str).map(str::to_owned) else {
        return err(400, "Invalid request: instance name is required.");
    };
    if !valid_name(&name) {
        return err(400, "Invalid request: the instance name is not valid.");
    }
    let Some(version) = body
        .get("databaseVersion")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return err(400, "Invalid request: databaseVersion is required.");
    };
    let asked = body
        .get("settings")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if asked.get("tier").and_then(Value::as_str).is_none() {
        return err(400, "Invalid request: settings.tier is required.");
    }
    if let Some(Value::Object(ip)) = asked.get("ipConfiguration")
        && !ssl_pair_ok(ip)
    {
        return err(
            400,
            "Invalid request: requireSsl does not match sslMode (see ipConfiguration.sslMode).",
        );
    }
    if find(&w.cloudsql, project, &name).is_some() {
        return err(409, "The Cloud SQL instance already exists.");
    }
    let region = body
        .get("region")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
        .unwrap_or("us-central1")
        .to_owned();
    let n = w.next();
    let create_time = w.now_rfc3339();
    // Postgres instances come with the `postgres` database and user.
    let inst = Instance {
        project: project.to_owned(),
        name: name.clone(),
        region,
        database_version: version,
        settings: new_settings(&asked),
        settings_version: 1,
        pending_create: true,
        ip: format!("34.{}.{}.{}", 100 + n % 100, (n / 100) % 250, 10 + n % 240),
        create_time,
        databases: vec![Database {
            name: "postgres".into(),
            charset: "UTF8".into(),
            collation: "en_US.UTF8".into(),
        }],
        users: vec![User {
            name: "postgres".into(),
            host: String::new(),
            kind: "BUILT_IN".into(),
            password: None,
        }],
    };
    w.cloudsql.instances.push(inst);
    new_op(w, project, &name, "CREATE", polls)
}

fn patch_instance(w: &mut World, r: &Req<'_>, project: &str, i: &str, polls: u32) -> Answer {
    let body = r.body.clone().unwrap_or(json!({}));
    let Some(inst) = find(&w.cloudsql, project, i) else {
        return err(404, "The Cloud SQL instance does not exist.");
    };
    if inst.pending_create || busy(&w.cloudsql, project, i) {
        return operation_in_progress();
    }
    let patch = body
        .get("settings")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut merged = inst.settings.clone();
    merge(&mut merged, &patch);
    if let Some(Value::Object(ip)) = merged.get_mut("ipConfiguration") {
        let asked_require = patch
            .get("ipConfiguration")
            .and_then(|i| i.get("requireSsl"))
            .is_some();
        if !asked_require {
            let mode = ip.get("sslMode").and_then(Value::as_str).unwrap_or("");
            ip.insert(
                "requireSsl".into(),
                json!(mode == "TRUSTED_CLIENT_CERTIFICATE_REQUIRED"),
            );
        }
        if !ssl_pair_ok(ip) {
            return err(
                400,
                "Invalid request: requireSsl does not match sslMode (see ipConfiguration.sslMode).",
            );
        }
    }
    let version = body
        .get("databaseVersion")
        .and_then(Value::as_str)
        .map(str::to_owned);
    if let Some(inst) = find_mut(&mut w.cloudsql, project, i) {
        inst.settings = merged;
        inst.settings_version += 1;
        if let Some(v) = version {
            inst.database_version = v;
        }
    }
    new_op(w, project, i, "UPDATE", polls)
}

pub(crate) fn inventory(st: &State, m: &mut BTreeMap<String, u64>) {
    m.insert("cloud_sql.instances".into(), st.instances.len() as u64);
    m.insert(
        "cloud_sql.databases".into(),
        st.instances.iter().map(|i| i.databases.len() as u64).sum(),
    );
    m.insert(
        "cloud_sql.users".into(),
        st.instances.iter().map(|i| i.users.len() as u64).sum(),
    );
}

/// `{"provider":"cloud-sql","instance":"notes-db", …}` with any of `"backups": false`,
/// `"deletion_protection": false`, `"ssl_mode": "ALLOW_UNENCRYPTED_AND_ENCRYPTED"`,
/// `"tier": "db-g1-small"`, `"delete_database": "notes_db"`, `"delete_user": "…"`,
/// `"delete": true` (the instance, protection or not, as a console user could after
/// turning it off).
pub(crate) fn drift(w: &mut World, body: &Value) -> Result<Value, String> {
    let name = body
        .get("instance")
        .and_then(Value::as_str)
        .ok_or("`instance` (a Cloud SQL instance name) is required")?
        .to_owned();
    let st = &mut w.cloudsql;
    if body.get("delete").and_then(Value::as_bool) == Some(true) {
        let before = st.instances.len();
        st.instances.retain(|i| i.name != name);
        return Ok(json!({"deleted": before - st.instances.len()}));
    }
    let inst = st
        .instances
        .iter_mut()
        .find(|i| i.name == name)
        .ok_or_else(|| format!("no Cloud SQL instance named {name}"))?;
    let mut changed = Vec::new();
    let mut patch = Map::new();
    if let Some(b) = body.get("backups").and_then(Value::as_bool) {
        patch.insert("backupConfiguration".into(), json!({"enabled": b}));
        changed.push("backups");
    }
    if let Some(d) = body.get("deletion_protection").and_then(Value::as_bool) {
        patch.insert("deletionProtectionEnabled".into(), json!(d));
        changed.push("deletion_protection");
    }
    if let Some(mode) = body.get("ssl_mode").and_then(Value::as_str) {
        patch.insert(
            "ipConfiguration".into(),
            json!({"sslMode": mode, "requireSsl": mode == "TRUSTED_CLIENT_CERTIFICATE_REQUIRED"}),
        );
        changed.push("ssl_mode");
    }
    if let Some(t) = body.get("tier").and_then(Value::as_str) {
        patch.insert("tier".into(), json!(t));
        changed.push("tier");
    }
    if !patch.is_empty() {
        merge(&mut inst.settings, &patch);
        inst.settings_version += 1;
    }
    if let Some(d) = body.get("delete_database").and_then(Value::as_str) {
        inst.databases.retain(|x| x.name != d);
        changed.push("delete_database");
    }
    if let Some(u) = body.get("delete_user").and_then(Value::as_str) {
        inst.users.retain(|x| x.name != u);
        changed.push("delete_user");
    }
    Ok(json!({"changed": changed}))
}

//! The emulated Neon API v2: projects with their default branch, compute endpoint, roles
//! and databases; branches with annotations; operations that finish after a few polls; and
//! `connection_uri`. Paths, fields and the error envelope (`{code, message, request_id}`)
//! follow ../shared/provider-apis/neon.

use std::collections::BTreeMap;

use axum::http::Method;
use serde_json::{Map, Value, json};

use super::{Answer, Req, World, provider_error};
use crate::model::Provider;

#[derive(Default)]
pub(crate) struct State {
    projects: Vec<Project>,
    operations: Vec<Operation>,
}

struct Project {
    id: String,
    name: String,
    region: String,
    pg_version: u64,
    created_at: String,
    branches: Vec<Branch>,
}

struct Branch {
    id: String,
    name: String,
    parent_id: Option<String>,
    default: bool,
    protected: bool,
    annotations: Map<String, Value>,
    roles: Vec<(String, String)>,
    databases: Vec<Db>,
    endpoint: String,
    created_at: String,
}

#[derive(Clone)]
struct Db {
    id: u64,
    name: String,
    owner: String,
    created_at: String,
}

struct Operation {
    id: String,
    project_id: String,
    branch_id: String,
    action: &'static str,
    polls_left: u32,
    created_at: String,
}

fn err(status: u16, message: &str) -> Answer {
    provider_error(Provider::Neon, status, "", message)
}

const WORDS: [&str; 8] = [
    "misty", "bold", "quiet", "shiny", "aged", "sweet", "noisy", "winter",
];
const NOUNS: [&str; 8] = [
    "bird", "cloud", "salad", "wind", "breeze", "sunset", "boat", "river",
];

fn neon_id(w: &mut World, prefix: &str) -> String {
    let n = w.next();
    let word = WORDS[(n % 8) as usize];
    let noun = NOUNS[((n / 8) % 8) as usize];
    let body = format!("{word}-{noun}-{:06}", n);
    if prefix.is_empty() {
        body
    } else {
        format!("{prefix}-{body}")
    }
}

fn host(p: &Project, b: &Branch) -> String {
    format!(
        "{}.{}.aws.neon.tech",
        b.endpoint,
        p.region.trim_start_matches("aws-")
    )
}

fn project_json(p: &Project, list_item: bool) -> Value {
    let mut v = json!({
        "id": p.id,
        "platform_id": "aws",
        "region_id": p.region,
        "name": p.name,
        "provisioner": "k8s-neonvm",
        "pg_version": p.pg_version,
        "proxy_host": format!("{}.aws.neon.tech", p.region.trim_start_matches("aws-")),
        "branch_logical_size_limit": 0,
        "branch_logical_size_limit_bytes": 0,
        "store_passwords": true,
        "cpu_used_sec": 0,
        "creation_source": "console",
        "created_at": p.created_at,
        "updated_at": p.created_at,
        "owner_id": "emulator-owner",
        "history_retention_seconds": 86400,
    });
    if list_item {
        v["active_time"] = json!(0);
    } else {
        for k in ["consumption_period_end", "consumption_period_start"] {
            v[k] = json!(p.created_at);
        }
        for k in [
            "active_time_seconds",
            "compute_time_seconds",
            "written_data_bytes",
            "data_transfer_bytes",
            "data_storage_bytes_hour",
            "synthetic_storage_size",
        ] {
            v[k] = json!(0);
        }
    }
    v
}

fn branch_json(p: &Project, b: &Branch) -> Value {
    let mut v = json!({
        "id": b.id,
        "project_id": p.id,
        "name": b.name,
        "current_state": "ready",
        "state_changed_at": b.created_at,
        "creation_source": "console",
        "created_at": b.created_at,
        "updated_at": b.created_at,
        "default": b.default,
        "protected": b.protected,
        "cpu_used_sec": 0,
        "active_time_seconds": 0,
        "compute_time_seconds": 0,
        "written_data_bytes": 0,
        "data_transfer_bytes": 0,
        "logical_size": 0,
    });
    if let Some(parent) = &b.parent_id {
        v["parent_id"] = json!(parent);
    }
    v
}

fn endpoint_json(p: &Project, b: &Branch) -> Value {
    json!({
        "host": host(p, b),
        "id": b.endpoint,
        "project_id": p.id,
        "branch_id": b.id,
        "region_id": p.region,
        "autoscaling_limit_max_cu": 0.25,
        "autoscaling_limit_min_cu": 0.25,
        "type": "read_write",
        "current_state": "idle",
        "pooler_enabled": false,
        "pooler_mode": "transaction",
        "disabled": false,
        "passwordless_access": true,
        "creation_source": "console",
        "created_at": b.created_at,
        "updated_at": b.created_at,
        "settings": {},
        "proxy_host": format!("{}.aws.neon.tech", p.region.trim_start_matches("aws-")),
        "suspend_timeout_seconds": 0,
        "provisioner": "k8s-neonvm",
    })
}

fn db_json(b: &Branch, d: &Db) -> Value {
    json!({"id": d.id, "branch_id": b.id, "name": d.name, "owner_name": d.owner, "created_at": d.created_at, "updated_at": d.created_at})
}

fn role_json(b: &Branch, name: &str, created_at: &str, password: Option<&str>) -> Value {
    let mut v = json!({"branch_id": b.id, "name": name, "protected": false, "created_at": created_at, "updated_at": created_at});
    if let Some(pw) = password {
        v["password"] = json!(pw);
    }
    v
}

fn op_json(o: &Operation) -> Value {
    json!({
        "id": o.id,
        "project_id": o.project_id,
        "branch_id": o.branch_id,
        "action": o.action,
        "status": if o.polls_left == 0 { "finished" } else { "running" },
        "failures_count": 0,
        "created_at": o.created_at,
        "updated_at": o.created_at,
        "total_duration_ms": 0,
    })
}

fn new_op(
    w: &mut World,
    project_id: &str,
    branch_id: &str,
    action: &'static str,
    polls: u32,
) -> Value {
    let n = w.next();
    let created_at = w.now_rfc3339();
    let o = Operation {
        id: format!("{:08x}-0000-4000-8000-{:012x}", n, n),
        project_id: project_id.to_owned(),
        branch_id: branch_id.to_owned(),
        action,
        polls_left: polls,
        created_at,
    };
    let v = op_json(&o);
    w.neon.operations.push(o);
    v
}

fn password(w: &mut World) -> String {
    format!("npg_{:016x}", w.next().wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

fn new_branch(
    w: &mut World,
    name: String,
    parent: Option<String>,
    default: bool,
    annotations: Map<String, Value>,
) -> Branch {
    let id = neon_id(w, "br");
    let endpoint = neon_id(w, "ep");
    let created_at = w.now_rfc3339();
    Branch {
        id,
        name,
        parent_id: parent,
        default,
        protected: false,
        annotations,
        roles: Vec::new(),
        databases: Vec::new(),
        endpoint,
        created_at,
    }
}

fn s(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_owned)
}

fn idx(st: &State, id: &str) -> Option<usize> {
    st.projects.iter().position(|p| p.id == id)
}

pub(crate) fn route(w: &mut World, r: &Req<'_>) -> Answer {
    let m = r.method;
    match r.segments.as_slice() {
        ["projects"] if m == Method::GET => list_projects(w, r),
        ["projects"] if m == Method::POST => create_project(w, r),
        ["projects", p] if m == Method::GET => match idx(&w.neon, p) {
            Some(i) => Answer::ok(
                200,
                json!({"project": project_json(&w.neon.projects[i], false)}),
            ),
            None => err(404, "project not found"),
        },
        ["projects", p] if m == Method::DELETE => match idx(&w.neon, p) {
            Some(i) => {
                let gone = w.neon.projects.remove(i);
                Answer::ok(200, json!({"project": project_json(&gone, false)}))
            }
            None => err(404, "project not found"),
        },
        ["projects", p, "operations", o] if m == Method::GET => {
            let st = &mut w.neon;
            match st
                .operations
                .iter_mut()
                .find(|x| x.id == *o && x.project_id == *p)
            {
                Some(op) => {
                    let v = op_json(op);
                    op.polls_left = op.polls_left.saturating_sub(1);
                    Answer::ok(200, json!({"operation": v}))
                }
                None => err(404, "operation not found"),
            }
        }
        ["projects", p, "branches"] if m == Method::GET => {
            let Some(i) = idx(&w.neon, p) else {
                return err(404, "project not found");
            };
            let proj = &w.neon.projects[i];
            let mut annotations = Map::new();
            for b in &proj.branches {
                if !b.annotations.is_empty() {
                    annotations.insert(
                        b.id.clone(),
                        json!({"object": {"type": "console/branch", "id": b.id}, "value": b.annotations, "created_at": b.created_at, "updated_at": b.created_at}),
                    );
                }
            }
            Answer::ok(
                200,
                json!({"branches": proj.branches.iter().map(|b| branch_json(proj, b)).collect::<Vec<_>>(), "annotations": annotations}),
            )
        }
        ["projects", p, "branches"] if m == Method::POST => create_branch(w, p, r),
        ["projects", p, "branches", b] if m == Method::PATCH => {
            let polls = r.async_polls;
            let protected = r
                .body
                .as_ref()
                .and_then(|v| v.pointer("/branch/protected"))
                .and_then(Value::as_bool);
            let Some(i) = idx(&w.neon, p) else {
                return err(404, "project not found");
            };
            let Some(bi) = w.neon.projects[i].branches.iter().position(|x| x.id == *b) else {
                return err(404, "branch not found");
            };
            if let Some(pr) = protected {
                w.neon.projects[i].branches[bi].protected = pr;
            }
            let (pid, bid) = (
                w.neon.projects[i].id.clone(),
                w.neon.projects[i].branches[bi].id.clone(),
            );
            let op = new_op(w, &pid, &bid, "apply_config", polls);
            let proj = &w.neon.projects[i];
            Answer::ok(
                200,
                json!({"branch": branch_json(proj, &proj.branches[bi]), "operations": [op]}),
            )
        }
        ["projects", p, "branches", b] if m == Method::DELETE => {
            let polls = r.async_polls;
            let Some(i) = idx(&w.neon, p) else {
                return err(404, "project not found");
            };
            let Some(bi) = w.neon.projects[i].branches.iter().position(|x| x.id == *b) else {
                return err(404, "branch not found");
            };
            if w.neon.projects[i].branches[bi].default {
                return err(422, "the default branch cannot be deleted");
            }
            if w.neon.projects[i].branches[bi].protected {
                return err(422, "a protected branch cannot be deleted");
            }
            let gone = w.neon.projects[i].branches.remove(bi);
            let pid = w.neon.projects[i].id.clone();
            let op = new_op(w, &pid, &gone.id, "delete_timeline", polls);
            Answer::ok(
                200,
                json!({"branch": branch_json(&w.neon.projects[i], &gone), "operations": [op]}),
            )
        }
        ["projects", p, "branches", b, "databases"] if m == Method::GET => {
            with_branch(w, p, b, |proj, br| {
                let _ = proj;
                Answer::ok(
                    200,
                    json!({"databases": br.databases.iter().map(|d| db_json(br, d)).collect::<Vec<_>>()}),
                )
            })
        }
        ["projects", p, "branches", b, "databases"] if m == Method::POST => {
            create_database(w, p, b, r)
        }
        ["projects", p, "branches", b, "databases", d] if m == Method::GET => {
            with_branch(w, p, b, |_, br| {
                match br.databases.iter().find(|x| x.name == *d) {
                    Some(x) => Answer::ok(200, json!({"database": db_json(br, x)})),
                    None => err(404, "database not found"),
                }
            })
        }
        ["projects", p, "branches", b, "databases", d]
            if m == Method::PATCH || m == Method::DELETE =>
        {
            let polls = r.async_polls;
            let owner = r
                .body
                .as_ref()
                .and_then(|v| v.pointer("/database/owner_name"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            let Some(i) = idx(&w.neon, p) else {
                return err(404, "project not found");
            };
            let Some(bi) = w.neon.projects[i].branches.iter().position(|x| x.id == *b) else {
                return err(404, "branch not found");
            };
            let br = &mut w.neon.projects[i].branches[bi];
            let Some(di) = br.databases.iter().position(|x| x.name == *d) else {
                return err(404, "database not found");
            };
            let db = if m == Method::DELETE {
                br.databases.remove(di)
            } else {
                if let Some(o) = owner {
                    if !br.roles.iter().any(|(r, _)| *r == o) {
                        return err(400, "role does not exist");
                    }
                    br.databases[di].owner = o;
                }
                br.databases[di].clone()
            };
            let bid = br.id.clone();
            let pid = w.neon.projects[i].id.clone();
            let op = new_op(w, &pid, &bid, "apply_config", polls);
            let br = &w.neon.projects[i].branches[bi];
            Answer::ok(
                200,
                json!({"database": db_json(br, &db), "operations": [op]}),
            )
        }
        ["projects", p, "branches", b, "roles", role] if m == Method::GET => {
            with_branch(w, p, b, |_, br| {
                match br.roles.iter().find(|(n, _)| n == role) {
                    Some((n, _)) => {
                        Answer::ok(200, json!({"role": role_json(br, n, &br.created_at, None)}))
                    }
                    None => err(404, "role not found"),
                }
            })
        }
        ["projects", p, "branches", b, "roles"] if m == Method::POST => {
            let polls = r.async_polls;
            let Some(name) = r
                .body
                .as_ref()
                .and_then(|v| v.pointer("/role/name"))
                .and_then(Value::as_str)
                .map(str::to_owned)
            else {
                return err(400, "role.name is required");
            };
            let pw = password(w);
            let created_at = w.now_rfc3339();
            let Some(i) = idx(&w.neon, p) else {
                return err(404, "project not found");
            };
            let Some(bi) = w.neon.projects[i].branches.iter().position(|x| x.id == *b) else {
                return err(404, "branch not found");
            };
            let br = &mut w.neon.projects[i].branches[bi];
            if br.roles.iter().any(|(n, _)| *n == name) {
                return err(409, "role already exists");
            }
            br.roles.push((name.clone(), pw.clone()));
            let bid = br.id.clone();
            let pid = w.neon.projects[i].id.clone();
            let op = new_op(w, &pid, &bid, "apply_config", polls);
            let br = &w.neon.projects[i].branches[bi];
            Answer::ok(
                201,
                json!({"role": role_json(br, &name, &created_at, Some(&pw)), "operations": [op]}),
            )
        }
        ["projects", p, "connection_uri"] if m == Method::GET => {
            let (Some(db), Some(role)) = (r.q("database_name"), r.q("role_name")) else {
                return err(400, "database_name and role_name are required");
            };
            let Some(i) = idx(&w.neon, p) else {
                return err(404, "project not found");
            };
            let proj = &w.neon.projects[i];
            let br = match r.q("branch_id") {
                Some(b) => proj.branches.iter().find(|x| x.id == b),
                None => proj.branches.iter().find(|x| x.default),
            };
            let Some(br) = br else {
                return err(404, "branch not found");
            };
            let Some((_, pw)) = br.roles.iter().find(|(n, _)| n == role) else {
                return err(404, "role not found");
            };
            if !br.databases.iter().any(|d| d.name == db) {
                return err(404, "database not found");
            }
            Answer::ok(
                200,
                json!({"uri": format!("postgresql://{role}:{pw}@{}/{db}?sslmode=require&channel_binding=require", host(proj, br))}),
            )
        }
        _ => err(
            404,
            "the requested path does not exist in the emulator's Neon API",
        ),
    }
}

fn with_branch(
    w: &mut World,
    p: &str,
    b: &str,
    f: impl FnOnce(&Project, &Branch) -> Answer,
) -> Answer {
    let Some(i) = idx(&w.neon, p) else {
        return err(404, "project not found");
    };
    let proj = &w.neon.projects[i];
    match proj.branches.iter().find(|x| x.id == b) {
        Some(br) => f(proj, br),
        None => err(404, "branch not found"),
    }
}

fn list_projects(w: &mut World, r: &Req<'_>) -> Answer {
    let st = &w.neon;
    let limit = r.limit();
    let search = r.q("search").unwrap_or("");
    let after = r.q("cursor");
    let matching: Vec<&Project> = st
        .projects
        .iter()
        .filter(|p| p.name.contains(search) || p.id.contains(search))
        .filter(|p| after.is_none_or(|c| p.id.as_str() > c))
        .collect();
    let mut sorted = matching;
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let page: Vec<&Project> = sorted.into_iter().take(limit).collect();
    let mut body = json!({
        "projects": page.iter().map(|p| project_json(p, true)).collect::<Vec<_>>(),
        "applications": {},
        "integrations": {},
    });
    // Like Neon: the cursor of the last item, whenever there is one.
    if let Some(last) = page.last() {
        body["pagination"] = json!({"cursor": last.id});
    }
    Answer::ok(200, body)
}

fn create_project(w: &mut World, r: &Req<'_>) -> Answer {
    let body = r.body.clone().unwrap_or(json!({}));
    let Some(spec) = body.get("project").filter(|p| p.is_object()) else {
        return err(400, "project is required");
    };
    let polls = r.async_polls;
    let id = neon_id(w, "");
    let name = s(spec, "name").unwrap_or_else(|| id.clone());
    let region = s(spec, "region_id").unwrap_or_else(|| "aws-us-east-2".into());
    let pg_version = spec.get("pg_version").and_then(Value::as_u64).unwrap_or(17);
    let b = spec.get("branch").cloned().unwrap_or(json!({}));
    let annotations = b
        .get("annotations")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let db_name = s(&b, "database_name").unwrap_or_else(|| "neondb".into());
    let role = s(&b, "role_name").unwrap_or_else(|| format!("{db_name}_owner"));
    let mut branch = new_branch(
        w,
        s(&b, "name").unwrap_or_else(|| "main".into()),
        None,
        true,
        annotations,
    );
    let pw = password(w);
    let created_at = w.now_rfc3339();
    branch.roles.push((role.clone(), pw.clone()));
    let db_id = w.next();
    branch.databases.push(Db {
        id: db_id,
        name: db_name.clone(),
        owner: role.clone(),
        created_at: created_at.clone(),
    });
    let proj = Project {
        id: id.clone(),
        name,
        region,
        pg_version,
        created_at,
        branches: vec![branch],
    };
    let bid = proj.branches[0].id.clone();
    let op1 = new_op(w, &id, &bid, "create_timeline", polls);
    let op2 = new_op(w, &id, &bid, "start_compute", polls);
    let br = &proj.branches[0];
    let uri = format!(
        "postgresql://{role}:{pw}@{}/{db_name}?sslmode=require",
        host(&proj, br)
    );
    let v = json!({
        "project": project_json(&proj, false),
        "connection_uris": [{"connection_uri": uri, "connection_parameters": {"database": db_name, "password": pw, "role": role, "host": host(&proj, br), "pooler_host": host(&proj, br)}}],
        "roles": [role_json(br, &role, &br.created_at, Some(&pw))],
        "databases": br.databases.iter().map(|d| db_json(br, d)).collect::<Vec<_>>(),
        "operations": [op1, op2],
        "branch": branch_json(&proj, br),
        "endpoints": [endpoint_json(&proj, br)],
    });
    w.neon.projects.push(proj);
    Answer::ok(201, v)
}

fn create_branch(w: &mut World, p: &str, r: &Req<'_>) -> Answer {
    let polls = r.async_polls;
    let body = r.body.clone().unwrap_or(json!({}));
    let Some(i) = idx(&w.neon, p) else {
        return err(404, "project not found");
    };
    let default = w.neon.projects[i]
        .branches
        .iter()
        .find(|b| b.default)
        .map(|b| (b.id.clone(), b.roles.clone(), b.databases.clone()));
    let parent = body
        .pointer("/branch/parent_id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or(default.as_ref().map(|d| d.0.clone()));
    let Some(parent_branch) = w.neon.projects[i]
        .branches
        .iter()
        .find(|b| Some(&b.id) == parent.as_ref())
    else {
        return err(404, "parent branch not found");
    };
    let (roles, dbs) = (parent_branch.roles.clone(), parent_branch.databases.clone());
    let annotations = body
        .get("annotation_value")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let name = body
        .pointer("/branch/name")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let mut br = new_branch(w, String::new(), parent, false, annotations);
    br.name = name.unwrap_or_else(|| br.id.clone());
    // A branch is a copy of its parent: same roles and databases.
    br.roles = roles;
    br.databases = dbs;
    let pid = w.neon.projects[i].id.clone();
    let op1 = new_op(w, &pid, &br.id, "create_branch", polls);
    let proj = &w.neon.projects[i];
    let v = json!({
        "branch": branch_json(proj, &br),
        "endpoints": [endpoint_json(proj, &br)],
        "operations": [op1],
        "roles": br.roles.iter().map(|(n, _)| role_json(&br, n, &br.created_at, None)).collect::<Vec<_>>(),
        "databases": br.databases.iter().map(|d| db_json(&br, d)).collect::<Vec<_>>(),
        "connection_uris": [],
    });
    w.neon.projects[i].branches.push(br);
    Answer::ok(201, v)
}

fn create_database(w: &mut World, p: &str, b: &str, r: &Req<'_>) -> Answer {
    let polls = r.async_polls;
    let body = r.body.clone().unwrap_or(json!({}));
    let (Some(name), Some(owner)) = (
        body.pointer("/database/name")
            .and_then(Value::as_str)
            .map(str::to_owned),
        body.pointer("/database/owner_name")
            .and_then(Value::as_str)
            .map(str::to_owned),
    ) else {
        return err(400, "database.name and database.owner_name are required");
    };
    let id = w.next();
    let created_at = w.now_rfc3339();
    let Some(i) = idx(&w.neon, p) else {
        return err(404, "project not found");
    };
    let Some(bi) = w.neon.projects[i].branches.iter().position(|x| x.id == b) else {
        return err(404, "branch not found");
    };
    let br = &mut w.neon.projects[i].branches[bi];
    if br.databases.iter().any(|d| d.name == name) {
        return err(409, "database already exists");
    }
    if !br.roles.iter().any(|(r, _)| *r == owner) {
        return err(400, "owner role does not exist");
    }
    let db = Db {
        id,
        name,
        owner,
        created_at,
    };
    br.databases.push(db.clone());
    let bid = br.id.clone();
    let pid = w.neon.projects[i].id.clone();
    let op = new_op(w, &pid, &bid, "apply_config", polls);
    let br = &w.neon.projects[i].branches[bi];
    Answer::ok(
        201,
        json!({"database": db_json(br, &db), "operations": [op]}),
    )
}

pub(crate) fn inventory(st: &State, m: &mut BTreeMap<String, u64>) {
    m.insert("neon.projects".into(), st.projects.len() as u64);
    m.insert(
        "neon.branches".into(),
        st.projects.iter().map(|p| p.branches.len() as u64).sum(),
    );
    m.insert(
        "neon.databases".into(),
        st.projects
            .iter()
            .flat_map(|p| p.branches.iter())
            .map(|b| b.databases.len() as u64)
            .sum(),
    );
    m.insert(
        "neon.roles".into(),
        st.projects
            .iter()
            .flat_map(|p| p.branches.iter())
            .map(|b| b.roles.len() as u64)
            .sum(),
    );
}

pub(crate) fn drift(w: &mut World, body: &Value) -> Result<Value, String> {
    let name = s(body, "project").ok_or("`project` (a Neon project name) is required")?;
    let st = &mut w.neon;
    if body.get("delete").and_then(Value::as_bool) == Some(true) {
        let before = st.projects.len();
        st.projects.retain(|p| p.name != name);
        return Ok(json!({"deleted": before - st.projects.len()}));
    }
    let p = st
        .projects
        .iter_mut()
        .find(|p| p.name == name)
        .ok_or_else(|| format!("no Neon project named {name}"))?;
    let mut changed = Vec::new();
    if let Some(pr) = body.get("protected").and_then(Value::as_bool) {
        for b in p.branches.iter_mut().filter(|b| b.default) {
            b.protected = pr;
        }
        changed.push("protected");
    }
    if let Some(owner) = body.get("database_owner").and_then(Value::as_str) {
        for b in p.branches.iter_mut().filter(|b| b.default) {
            if !b.roles.iter().any(|(r, _)| r == owner) {
                b.roles.push((owner.to_owned(), "npg_drift".into()));
            }
            for d in &mut b.databases {
                d.owner = owner.to_owned();
            }
        }
        changed.push("database_owner");
    }
    Ok(json!({"changed": changed}))
}

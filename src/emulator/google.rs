//! The emulated Google Cloud under `/cloud-run` and `/secret-manager`, routed on the
//! provider: Cloud Run Admin API v2 services (with revisions, IAM invoker policy and
//! long-running operations), the v1 API's global service list and domain mappings, and
//! Secret Manager v1 secrets and versions. Paths, fields, the `{"error": {code, message,
//! status}}` envelope and `pageToken`/`nextPageToken` pagination follow the Discovery
//! documents in ../shared/provider-apis/gcp-*. Cloud SQL (`/cloud-sql`) is its own module,
//! `emulator::cloudsql`.
//!
//! Cloud Run behaviour worth knowing: an image whose tag starts with `bad-` makes a revision
//! that fails its startup probe: the operation ends with Cloud Run's error, and traffic stays
//! on the last ready revision (`latestReadyRevision`, `trafficStatuses`). A patch with an
//! unchanged template makes no new revision.

use std::collections::BTreeMap;

use axum::http::Method;
use serde_json::{Map, Value, json};

use super::{Answer, Req, World, provider_error};
use crate::model::Provider;

/// The emulated project's number (real names use it in place of the id in places).
const PROJECT_NUMBER: &str = "100000000001";

#[derive(Default)]
pub(crate) struct State {
    services: Vec<Service>,
    operations: Vec<Operation>,
    mappings: Vec<Mapping>,
    secrets: Vec<Secret>,
}

struct Service {
    project: String,
    region: String,
    id: String,
    uid: String,
    /// The writable fields as the client sent them, with the defaults Cloud Run fills.
    spec: Map<String, Value>,
    generation: u64,
    /// Revision names, oldest first, and whether each became ready.
    revisions: Vec<(String, bool)>,
    /// Why the latest revision is not serving, if it is not.
    failure: Option<String>,
    /// Members of `roles/run.invoker` and other roles.
    bindings: Vec<(String, Vec<String>)>,
    policy_version: u64,
    created: String,
    updated: String,
}

struct Operation {
    name: String,
    polls_left: u32,
    metadata: Value,
    outcome: Result<Value, (i64, String)>,
}

struct Mapping {
    project: String,
    name: String,
    labels: Map<String, Value>,
    route: String,
    uid: String,
    created: String,
}

struct Secret {
    project: String,
    id: String,
    labels: Map<String, Value>,
    annotations: Map<String, Value>,
    versions: Vec<Version>,
    created: String,
    etag: u64,
}

struct Version {
    n: u64,
    state: &'static str,
    data: String,
    created: String,
}

/// Path segments that are part of a route's shape rather than an id, for counters.
pub(crate) fn literal(segment: &str, _index: usize) -> bool {
    matches!(
        segment,
        "v1" | "v2"
            | "projects"
            | "locations"
            | "services"
            | "operations"
            | "secrets"
            | "versions"
            | "apis"
            | "namespaces"
            | "domainmappings"
            | "domains.cloudrun.com"
            | "serving.knative.dev"
            | "instances"
            | "databases"
            | "users"
    )
}

/// Cloud Run and Secret Manager (Cloud SQL has its own module, `emulator::cloudsql`).
pub(crate) fn route(w: &mut World, req: &Req<'_>, provider: Provider) -> Answer {
    match provider {
        Provider::CloudRun => cloud_run(w, req),
        Provider::SecretManager => secret_manager(w, req),
        other => provider_error(
            other,
            404,
            "not_found",
            "not a Cloud Run or Secret Manager route",
        ),
    }
}

fn run_err(status: u16, message: &str) -> Answer {
    provider_error(Provider::CloudRun, status, "", message)
}

fn sm_err(status: u16, message: &str) -> Answer {
    provider_error(Provider::SecretManager, status, "", message)
}

/// `name:verb` → (`name`, `Some(verb)`).
fn verb(segment: &str) -> (&str, Option<&str>) {
    match segment.split_once(':') {
        Some((n, v)) => (n, Some(v)),
        None => (segment, None),
    }
}

/// One page of `items` by `pageSize`/`pageToken` (an offset), capped by the emulator's
/// small pages, with `nextPageToken` when more remain.
fn page(req: &Req<'_>, p: Provider, items: Vec<Value>, field: &str) -> Answer {
    let size = req
        .q("pageSize")
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(50)
        .clamp(1, req.page_size.max(1));
    let start = match req.q("pageToken") {
        None | Some("") => 0,
        Some(t) => match t.strip_prefix("p").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => n,
            None => return provider_error(p, 400, "", "Invalid page token"),
        },
    };
    let total = items.len();
    let chunk: Vec<Value> = items.into_iter().skip(start).take(size).collect();
    let mut body = Map::new();
    // proto3 JSON leaves an empty list out.
    if !chunk.is_empty() {
        body.insert(field.into(), Value::Array(chunk));
    }
    if start + size < total {
        body.insert("nextPageToken".into(), json!(format!("p{}", start + size)));
    }
    Answer::ok(200, Value::Object(body))
}

/// `k=v,k2=v2` (a Kubernetes label selector, equality only).
fn selector_matches(selector: Option<&str>, labels: &Map<String, Value>) -> bool {
    selector
        .unwrap_or("")
        .split(',')
        .filter(|t| !t.is_empty())
        .all(|term| {
            let (k, v) = term.split_once('=').unwrap_or((term, ""));
            labels.get(k.trim()).and_then(Value::as_str) == Some(v.trim().trim_start_matches('='))
        })
}

// ---------------------------------------------------------------------------------------
// Cloud Run

fn cloud_run(w: &mut World, r: &Req<'_>) -> Answer {
    let m = r.method;
    let segs = r.segments.as_slice();
    match segs {
        ["v2", "projects", p, "locations", l, "services"] if m == Method::GET => {
            let items = w
                .google
                .services
                .iter()
                .filter(|s| s.project == *p && s.region == *l)
                .map(service_json)
                .collect();
            page(r, Provider::CloudRun, items, "services")
        }
        ["v2", "projects", p, "locations", l, "services"] if m == Method::POST => {
            let Some(id) = r.q("serviceId").map(str::to_owned) else {
                return run_err(400, "serviceId is required");
            };
            create_service(w, r, p, l, &id)
        }
        ["v2", "projects", p, "locations", l, "services", last] => {
            let (id, action) = verb(last);
            let Some(i) = find_service(&w.google, p, l, id) else {
                return if m == Method::PATCH
                    && action.is_none()
                    && r.q("allowMissing") == Some("true")
                {
                    create_service(w, r, p, l, id)
                } else {
                    run_err(
                        404,
                        &format!(
                            "Resource 'projects/{p}/locations/{l}/services/{id}' was not found"
                        ),
                    )
                };
            };
            match (action, m.as_str()) {
                (None, "GET") => Answer::ok(200, service_json(&w.google.services[i])),
                (None, "PATCH") => update_service(w, r, i),
                (None, "DELETE") => {
                    let s = w.google.services.remove(i);
                    w.google
                        .mappings
                        .retain(|mp| !(mp.project == s.project && mp.route == s.id));
                    let v = service_json(&s);
                    let op =
                        new_operation(w, &s.project, &s.region, v.clone(), Ok(v), r.async_polls);
                    Answer::ok(200, op)
                }
                (Some("getIamPolicy"), "GET") => {
                    Answer::ok(200, policy_json(&w.google.services[i]))
                }
                (Some("setIamPolicy"), "POST") => set_policy(w, r, i),
                _ => run_err(
                    404,
                    "The requested method does not exist in the emulated Cloud Run API",
                ),
            }
        }
        ["v2", "projects", _p, "locations", _l, "operations", o] if m == Method::GET => {
            let name = r.segments[1..].join("/");
            let Some(op) = w.google.operations.iter_mut().find(|x| x.name == name) else {
                return run_err(404, &format!("Operation {o} was not found"));
            };
            let v = operation_json(op);
            op.polls_left = op.polls_left.saturating_sub(1);
            Answer::ok(200, v)
        }
        [
            "apis",
            "serving.knative.dev",
            "v1",
            "namespaces",
            ns,
            "services",
        ] if m == Method::GET => {
            let items: Vec<Value> = w
                .google
                .services
                .iter()
                .filter(|s| s.project == *ns || *ns == PROJECT_NUMBER)
                .filter(|s| {
                    let mut labels = labels_of(s);
                    labels.insert("cloud.googleapis.com/location".into(), json!(s.region));
                    selector_matches(r.q("labelSelector"), &labels)
                })
                .map(knative_service_json)
                .collect();
            knative_page(r, items, "ServiceList", "serving.knative.dev/v1")
        }
        [
            "apis",
            "domains.cloudrun.com",
            "v1",
            "namespaces",
            ns,
            "domainmappings",
        ] => match m.as_str() {
            "GET" => {
                let items: Vec<Value> = w
                    .google
                    .mappings
                    .iter()
                    .filter(|x| {
                        x.project == *ns && selector_matches(r.q("labelSelector"), &x.labels)
                    })
                    .map(mapping_json)
                    .collect();
                knative_page(r, items, "DomainMappingList", "domains.cloudrun.com/v1")
            }
            "POST" => create_mapping(w, r, ns),
            _ => run_err(405, "Method not allowed"),
        },
        [
            "apis",
            "domains.cloudrun.com",
            "v1",
            "namespaces",
            ns,
            "domainmappings",
            name,
        ] => {
            let Some(i) = w
                .google
                .mappings
                .iter()
                .position(|x| x.project == *ns && x.name == *name)
            else {
                return run_err(
                    404,
                    &format!("domainmappings.domains.cloudrun.com \"{name}\" not found"),
                );
            };
            match m.as_str() {
                "GET" => Answer::ok(200, mapping_json(&w.google.mappings[i])),
                "DELETE" => {
                    let gone = w.google.mappings.remove(i);
                    Answer::ok(
                        200,
                        json!({"status": "Success", "details": {"name": gone.name, "group": "domains.cloudrun.com", "kind": "domainmappings", "uid": gone.uid}}),
                    )
                }
                _ => run_err(405, "Method not allowed"),
            }
        }
        _ => run_err(
            404,
            "The requested path does not exist in the emulated Cloud Run API",
        ),
    }
}

fn find_service(st: &State, p: &str, l: &str, id: &str) -> Option<usize> {
    st.services
        .iter()
        .position(|s| s.project == p && s.region == l && s.id == id)
}

fn labels_of(s: &Service) -> Map<String, Value> {
    s.spec
        .get("labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// The writable part of a Service body, with Cloud Run's defaults filled in.
fn writable(body: &Value) -> Result<Map<String, Value>, String> {
    let Some(obj) = body.as_object() else {
        return Err("The request body must be a Service".into());
    };
    const KEEP: [&str; 12] = [
        "labels",
        "annotations",
        "description",
        "ingress",
        "launchStage",
        "template",
        "traffic",
        "scaling",
        "client",
        "clientVersion",
        "invokerIamDisabled",
        "customAudiences",
    ];
    let mut spec: Map<String, Value> = obj
        .iter()
        .filter(|(k, _)| KEEP.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let template = spec
        .entry("template")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or("template must be an object")?;
    let containers = template
        .get_mut("containers")
        .and_then(Value::as_array_mut)
        .filter(|c| !c.is_empty())
        .ok_or("template.containers: at least one container is required")?;
    for c in containers.iter_mut() {
        let c = c.as_object_mut().ok_or("a container must be an object")?;
        if c.get("image")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err("template.containers[0].image: an image is required".into());
        }
        let ports = c
            .entry("ports")
            .or_insert_with(|| json!([{"containerPort": 8080}]));
        let mut port = 8080;
        if let Some(list) = ports.as_array_mut() {
            for p in list.iter_mut().filter_map(Value::as_object_mut) {
                p.entry("name").or_insert_with(|| json!("http1"));
                port = p
                    .get("containerPort")
                    .and_then(Value::as_u64)
                    .unwrap_or(8080);
            }
        }
        let res = c.entry("resources").or_insert_with(|| json!({}));
        if let Some(res) = res.as_object_mut() {
            res.entry("limits")
                .or_insert_with(|| json!({"cpu": "1000m", "memory": "512Mi"}));
            res.entry("cpuIdle").or_insert(json!(true));
            res.entry("startupCpuBoost").or_insert(json!(false));
        }
        c.entry("startupProbe").or_insert_with(|| {
            json!({"timeoutSeconds": 240, "periodSeconds": 240, "failureThreshold": 1, "tcpSocket": {"port": port}})
        });
    }
    check_volumes(template)?;
    template
        .entry("maxInstanceRequestConcurrency")
        .or_insert(json!(80));
    template.entry("timeout").or_insert(json!("300s"));
    template.entry("serviceAccount").or_insert(json!(format!(
        "{PROJECT_NUMBER}-compute@developer.gserviceaccount.com"
    )));
    let scaling = template.entry("scaling").or_insert_with(|| json!({}));
    if let Some(s) = scaling.as_object_mut() {
        s.entry("maxInstanceCount").or_insert(json!(100));
    }
    spec.entry("ingress")
        .or_insert(json!("INGRESS_TRAFFIC_ALL"));
    spec.entry("launchStage").or_insert(json!("GA"));
    spec.entry("traffic")
        .or_insert(json!([{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 100}]));
    Ok(spec)
}

/// Volumes as Cloud Run checks them: every mount names a declared volume, a Cloud SQL
/// volume lists connection names (`project:region:instance`) and is mounted only at
/// `/cloudsql` (or with an empty path, which means the same).
fn check_volumes(template: &Map<String, Value>) -> Result<(), String> {
    let volumes: Vec<&Value> = template
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    let mut cloud_sql = Vec::new();
    for (i, v) in volumes.iter().enumerate() {
        let name = v
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or(format!("template.volumes[{i}].name: a name is required"))?;
        if let Some(sql) = v.get("cloudSqlInstance") {
            for c in sql
                .get("instances")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let ok = c
                    .as_str()
                    .is_some_and(|c| c.split(':').count() >= 3 && !c.split(':').any(str::is_empty));
                if !ok {
                    return Err(format!(
                        "template.volumes[{i}].cloudSqlInstance.instances: {c} is not a connection name of the form project:region:instance"
                    ));
                }
            }
            cloud_sql.push(name);
        }
    }
    let containers = template
        .get("containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    for (ci, c) in containers.enumerate() {
        for m in c
            .get("volumeMounts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = m.get("name").and_then(Value::as_str).unwrap_or("");
            if !volumes
                .iter()
                .any(|v| v.get("name").and_then(Value::as_str) == Some(name))
            {
                return Err(format!(
                    "template.containers[{ci}].volumeMounts: volume `{name}` is not declared in template.volumes"
                ));
            }
            let path = m.get("mountPath").and_then(Value::as_str).unwrap_or("");
            if cloud_sql.contains(&name) && !path.is_empty() && path != "/cloudsql" {
                return Err(format!(
                    "template.containers[{ci}].volumeMounts: a Cloud SQL volume must be mounted at /cloudsql, not {path}"
                ));
            }
        }
    }
    Ok(())
}

/// Whether this template's revision fails its health check: an image tagged `bad-…`. The
/// hyphen keeps a commit-named tag (`${git.short_sha}`, hex only) from ever matching.
fn unhealthy(spec: &Map<String, Value>) -> bool {
    spec.get("template")
        .and_then(|t| t.pointer("/containers/0/image"))
        .and_then(Value::as_str)
        .and_then(|i| i.rsplit_once(':'))
        .is_some_and(|(_, tag)| tag.starts_with("bad-"))
}

/// Deploy a new revision of service `i` and record its operation.
fn roll(w: &mut World, i: usize, new_template: bool, polls: u32) -> Value {
    let n = w.next();
    let now = w.now_rfc3339();
    let s = &mut w.google.services[i];
    s.generation += 1;
    s.updated = now;
    let mut outcome: Result<(), String> = Ok(());
    if new_template || s.revisions.is_empty() {
        let rev = format!(
            "{}-{:05}-{}",
            s.id,
            s.revisions.len() + 1,
            ["abc", "xyz", "kqd", "mvp", "tul", "wen"][(n % 6) as usize]
        );
        let ok = !unhealthy(&s.spec);
        s.revisions.push((rev.clone(), ok));
        if ok {
            s.failure = None;
        } else {
            let why = format!(
                "Revision '{rev}' is not ready and cannot serve traffic. The user-provided container failed the configured startup probe checks. Recommendation: check the container's health check endpoint and logs."
            );
            s.failure = Some(why.clone());
            outcome = Err(why);
        }
    }
    let (project, region) = (s.project.clone(), s.region.clone());
    let v = service_json(&w.google.services[i]);
    let result = match outcome {
        Ok(()) => Ok(v.clone()),
        // FAILED_PRECONDITION, as Cloud Run reports a revision that is not ready.
        Err(why) => Err((9, why)),
    };
    new_operation(w, &project, &region, v, result, polls)
}

fn create_service(w: &mut World, r: &Req<'_>, p: &str, l: &str, id: &str) -> Answer {
    let valid = !id.is_empty()
        && id.len() <= 49
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && !id.ends_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !valid {
        return run_err(
            400,
            "service_id must contain only lowercase letters, digits and hyphens, start with a letter, not end with a hyphen, and be at most 49 characters",
        );
    }
    if find_service(&w.google, p, l, id).is_some() {
        return provider_error(
            Provider::CloudRun,
            409,
            "already_exists",
            &format!("Resource 'projects/{p}/locations/{l}/services/{id}' already exists"),
        );
    }
    let spec = match writable(r.body.as_ref().unwrap_or(&Value::Null)) {
        Ok(s) => s,
        Err(e) => return run_err(400, &e),
    };
    let n = w.next();
    let now = w.now_rfc3339();
    w.google.services.push(Service {
        project: p.to_owned(),
        region: l.to_owned(),
        id: id.to_owned(),
        uid: format!("{n:08x}-5e4f-4a1b-9c3d-{n:012x}"),
        spec,
        generation: 0,
        revisions: Vec::new(),
        failure: None,
        bindings: Vec::new(),
        policy_version: 1,
        created: now.clone(),
        updated: now,
    });
    let i = w.google.services.len() - 1;
    Answer::ok(200, roll(w, i, true, r.async_polls))
}

fn update_service(w: &mut World, r: &Req<'_>, i: usize) -> Answer {
    let spec = match writable(r.body.as_ref().unwrap_or(&Value::Null)) {
        Ok(s) => s,
        Err(e) => return run_err(400, &e),
    };
    let s = &mut w.google.services[i];
    let new_template = s.spec.get("template") != spec.get("template");
    s.spec = spec;
    Answer::ok(200, roll(w, i, new_template, r.async_polls))
}

fn new_operation(
    w: &mut World,
    project: &str,
    region: &str,
    metadata: Value,
    outcome: Result<Value, (i64, String)>,
    polls: u32,
) -> Value {
    let n = w.next();
    let op = Operation {
        name: format!(
            "projects/{project}/locations/{region}/operations/{n:08x}-0000-4000-8000-{n:012x}"
        ),
        polls_left: polls,
        metadata,
        outcome,
    };
    let v = operation_json(&op);
    w.google.operations.push(op);
    v
}

fn operation_json(op: &Operation) -> Value {
    let typed = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            m.insert(
                "@type".into(),
                json!("type.googleapis.com/google.cloud.run.v2.Service"),
            );
        }
        v
    };
    let mut v =
        json!({"name": op.name, "metadata": typed(&op.metadata), "done": op.polls_left == 0});
    if op.polls_left == 0 {
        match &op.outcome {
            Ok(resp) => v["response"] = typed(resp),
            Err((code, message)) => v["error"] = json!({"code": code, "message": message}),
        }
    }
    v
}

fn ready_revision(s: &Service) -> Option<&str> {
    s.revisions
        .iter()
        .rev()
        .find(|(_, ok)| *ok)
        .map(|(n, _)| n.as_str())
}

fn service_json(s: &Service) -> Value {
    let mut v = Value::Object(s.spec.clone());
    let base = format!("projects/{}/locations/{}", s.project, s.region);
    let uri = format!("https://{}-{PROJECT_NUMBER}.{}.run.app", s.id, s.region);
    let state = if s.failure.is_some() {
        "CONDITION_FAILED"
    } else {
        "CONDITION_SUCCEEDED"
    };
    let mut terminal = json!({"type": "Ready", "state": state, "lastTransitionTime": s.updated});
    if let Some(why) = &s.failure {
        terminal["message"] = json!(why);
        terminal["reason"] = json!("REVISION_FAILED");
    }
    let extra = json!({
        "name": format!("{base}/services/{}", s.id),
        "uid": s.uid,
        "generation": s.generation.to_string(),
        "observedGeneration": s.generation.to_string(),
        "createTime": s.created,
        "updateTime": s.updated,
        "creator": "telbase@telbase-emulator.iam.gserviceaccount.com",
        "lastModifier": "telbase@telbase-emulator.iam.gserviceaccount.com",
        "terminalCondition": terminal,
        "conditions": [
            {"type": "RoutesReady", "state": if ready_revision(s).is_some() { "CONDITION_SUCCEEDED" } else { "CONDITION_FAILED" }, "lastTransitionTime": s.updated},
            {"type": "ConfigurationsReady", "state": state, "lastTransitionTime": s.updated},
        ],
        "uri": uri,
        "urls": [uri],
        "reconciling": false,
        "etag": format!("\"{:x}\"", s.generation * 7919),
    });
    if let (Some(m), Some(x)) = (v.as_object_mut(), extra.as_object()) {
        m.extend(x.clone());
        if let Some((latest, _)) = s.revisions.last() {
            m.insert(
                "latestCreatedRevision".into(),
                json!(format!("{base}/services/{}/revisions/{latest}", s.id)),
            );
        }
        if let Some(ready) = ready_revision(s) {
            m.insert(
                "latestReadyRevision".into(),
                json!(format!("{base}/services/{}/revisions/{ready}", s.id)),
            );
            // Traffic follows the latest *ready* revision: a failed one never gets any.
            m.insert(
                "trafficStatuses".into(),
                json!([{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "revision": ready, "percent": 100}]),
            );
        }
    }
    v
}

fn knative_service_json(s: &Service) -> Value {
    let mut labels = labels_of(s);
    labels.insert("cloud.googleapis.com/location".into(), json!(s.region));
    let image = s
        .spec
        .get("template")
        .and_then(|t| t.pointer("/containers/0/image"))
        .cloned()
        .unwrap_or(Value::Null);
    let mut status = json!({
        "observedGeneration": s.generation,
        "url": format!("https://{}-{PROJECT_NUMBER}.{}.run.app", s.id, s.region),
        "conditions": [{"type": "Ready", "status": if s.failure.is_some() { "False" } else { "True" }, "lastTransitionTime": s.updated}],
    });
    if let Some((latest, _)) = s.revisions.last() {
        status["latestCreatedRevisionName"] = json!(latest);
    }
    if let Some(ready) = ready_revision(s) {
        status["latestReadyRevisionName"] = json!(ready);
    }
    json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {
            "name": s.id,
            "namespace": PROJECT_NUMBER,
            "labels": labels,
            "uid": s.uid,
            "generation": s.generation,
            "creationTimestamp": s.created,
            "resourceVersion": format!("{}", s.generation),
        },
        "spec": {
            "template": {"spec": {"containers": [{"image": image}]}},
            "traffic": [{"latestRevision": true, "percent": 100}],
        },
        "status": status,
    })
}

/// A Kubernetes-style list page: `limit`, `continue` (an offset) → `metadata.continue`.
fn knative_page(r: &Req<'_>, items: Vec<Value>, kind: &str, api: &str) -> Answer {
    let size = r
        .q("limit")
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(50)
        .clamp(1, r.page_size.max(1));
    let start = r
        .q("continue")
        .and_then(|c| c.strip_prefix("c"))
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    let total = items.len();
    let chunk: Vec<Value> = items.into_iter().skip(start).take(size).collect();
    let mut meta = json!({"resourceVersion": "1"});
    if start + size < total {
        meta["continue"] = json!(format!("c{}", start + size));
    }
    Answer::ok(
        200,
        json!({"apiVersion": api, "kind": kind, "metadata": meta, "items": chunk}),
    )
}

fn policy_json(s: &Service) -> Value {
    let mut v = json!({
        "version": 1,
        "etag": base64_of(&format!("policy-{}", s.policy_version)),
    });
    if !s.bindings.is_empty() {
        v["bindings"] = json!(
            s.bindings
                .iter()
                .map(|(role, members)| json!({"role": role, "members": members}))
                .collect::<Vec<_>>()
        );
    }
    v
}

fn base64_of(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn set_policy(w: &mut World, r: &Req<'_>, i: usize) -> Answer {
    let Some(policy) = r.body.as_ref().and_then(|b| b.get("policy")) else {
        return run_err(400, "policy is required");
    };
    let s = &mut w.google.services[i];
    if let Some(etag) = policy.get("etag").and_then(Value::as_str)
        && etag != base64_of(&format!("policy-{}", s.policy_version))
    {
        return provider_error(
            Provider::CloudRun,
            409,
            "aborted",
            "There were concurrent policy changes. Please retry the whole read-modify-write with exponential backoff.",
        );
    }
    let mut bindings = Vec::new();
    for b in policy
        .get("bindings")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (Some(role), Some(members)) = (
            b.get("role").and_then(Value::as_str),
            b.get("members").and_then(Value::as_array),
        ) else {
            return run_err(400, "a binding needs a role and members");
        };
        let members: Vec<String> = members
            .iter()
            .filter_map(|m| m.as_str().map(str::to_owned))
            .collect();
        if !members.is_empty() {
            bindings.push((role.to_owned(), members));
        }
    }
    s.bindings = bindings;
    s.policy_version += 1;
    Answer::ok(200, policy_json(s))
}

fn mapping_json(m: &Mapping) -> Value {
    json!({
        "apiVersion": "domains.cloudrun.com/v1",
        "kind": "DomainMapping",
        "metadata": {
            "name": m.name,
            "namespace": m.project,
            "labels": m.labels,
            "uid": m.uid,
            "generation": 1,
            "creationTimestamp": m.created,
            "resourceVersion": "1",
        },
        "spec": {"routeName": m.route, "certificateMode": "AUTOMATIC"},
        "status": {
            "observedGeneration": 1,
            "mappedRouteName": m.route,
            "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": m.created},
                {"type": "CertificateProvisioned", "status": "True", "lastTransitionTime": m.created},
                {"type": "DomainRoutable", "status": "True", "lastTransitionTime": m.created},
            ],
            "resourceRecords": [{"type": "CNAME", "name": m.name.split('.').next().unwrap_or(""), "rrdata": "ghs.googlehosted.com."}],
        },
    })
}

fn create_mapping(w: &mut World, r: &Req<'_>, ns: &str) -> Answer {
    let body = r.body.clone().unwrap_or(Value::Null);
    let (Some(name), Some(route)) = (
        body.pointer("/metadata/name").and_then(Value::as_str),
        body.pointer("/spec/routeName").and_then(Value::as_str),
    ) else {
        return run_err(400, "metadata.name and spec.routeName are required");
    };
    if w.google
        .mappings
        .iter()
        .any(|m| m.project == ns && m.name == name)
    {
        return provider_error(
            Provider::CloudRun,
            409,
            "already_exists",
            &format!("Domain mapping to {name} already exists in this region."),
        );
    }
    if !w
        .google
        .services
        .iter()
        .any(|s| s.project == ns && s.id == route)
    {
        return run_err(400, &format!("Service '{route}' does not exist"));
    }
    let labels = body
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let n = w.next();
    let created = w.now_rfc3339();
    let m = Mapping {
        project: ns.to_owned(),
        name: name.to_owned(),
        labels,
        route: route.to_owned(),
        uid: format!("{n:08x}-d0ma-4000-8000-{n:012x}"),
        created,
    };
    let v = mapping_json(&m);
    w.google.mappings.push(m);
    Answer::ok(200, v)
}

// ---------------------------------------------------------------------------------------
// Secret Manager

fn secret_name(s: &Secret) -> String {
    format!("projects/{PROJECT_NUMBER}/secrets/{}", s.id)
}

fn secret_json(s: &Secret) -> Value {
    let mut v = json!({
        "name": secret_name(s),
        "replication": {"automatic": {}},
        "createTime": s.created,
        "etag": format!("\"{:x}\"", s.etag * 104_729),
    });
    if !s.labels.is_empty() {
        v["labels"] = Value::Object(s.labels.clone());
    }
    if !s.annotations.is_empty() {
        v["annotations"] = Value::Object(s.annotations.clone());
    }
    v
}

fn version_json(s: &Secret, v: &Version) -> Value {
    json!({
        "name": format!("{}/versions/{}", secret_name(s), v.n),
        "createTime": v.created,
        "state": v.state,
        "replicationStatus": {"automatic": {}},
        "etag": format!("\"{:x}\"", v.n * 7 + if v.state == "ENABLED" { 0 } else { 1 }),
        "clientSpecifiedPayloadChecksum": false,
    })
}

fn find_secret(st: &State, p: &str, id: &str) -> Option<usize> {
    st.secrets
        .iter()
        .position(|s| (s.project == p || p == PROJECT_NUMBER) && s.id == id)
}

/// `labels.k=v AND labels.k2:v2` (the part of Secret Manager's filter syntax clients use).
fn secret_filter(filter: Option<&str>, s: &Secret) -> Result<bool, String> {
    let Some(f) = filter.filter(|f| !f.trim().is_empty()) else {
        return Ok(true);
    };
    for term in f.split(" AND ").map(str::trim).filter(|t| !t.is_empty()) {
        let (k, v) = term
            .split_once('=')
            .or_else(|| term.split_once(':'))
            .ok_or_else(|| format!("Invalid filter term: {term}"))?;
        let Some(label) = k.trim().strip_prefix("labels.") else {
            return Err(format!("Unsupported filter field: {k}"));
        };
        if s.labels.get(label).and_then(Value::as_str) != Some(v.trim()) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn secret_manager(w: &mut World, r: &Req<'_>) -> Answer {
    let m = r.method;
    match r.segments.as_slice() {
        ["v1", "projects", p, "secrets"] if m == Method::GET => {
            let mut items = Vec::new();
            for s in w
                .google
                .secrets
                .iter()
                .filter(|s| s.project == *p || *p == PROJECT_NUMBER)
            {
                match secret_filter(r.q("filter"), s) {
                    Ok(true) => items.push(secret_json(s)),
                    Ok(false) => {}
                    Err(e) => return sm_err(400, &e),
                }
            }
            // Newest first, as Secret Manager lists them.
            items.reverse();
            page(r, Provider::SecretManager, items, "secrets")
        }
        ["v1", "projects", p, "secrets"] if m == Method::POST => create_secret(w, r, p),
        ["v1", "projects", p, "secrets", last] => {
            let (id, action) = verb(last);
            let Some(i) = find_secret(&w.google, p, id) else {
                return sm_err(
                    404,
                    &format!("Secret [projects/{PROJECT_NUMBER}/secrets/{id}] not found."),
                );
            };
            match (action, m.as_str()) {
                (None, "GET") => Answer::ok(200, secret_json(&w.google.secrets[i])),
                (None, "DELETE") => {
                    w.google.secrets.remove(i);
                    Answer::ok(200, json!({}))
                }
                (None, "PATCH") => patch_secret(w, r, i),
                (Some("addVersion"), "POST") => {
                    let Some(data) = r
                        .body
                        .as_ref()
                        .and_then(|b| b.pointer("/payload/data"))
                        .and_then(Value::as_str)
                    else {
                        return sm_err(400, "payload.data is required");
                    };
                    use base64::Engine as _;
                    if base64::engine::general_purpose::STANDARD
                        .decode(data)
                        .is_err()
                    {
                        return sm_err(
                            400,
                            "Invalid value at 'payload.data' (TYPE_BYTES), Base64 decoding failed",
                        );
                    }
                    let data = data.to_owned();
                    let created = w.now_rfc3339();
                    let s = &mut w.google.secrets[i];
                    let n = s.versions.iter().map(|v| v.n).max().unwrap_or(0) + 1;
                    s.versions.push(Version {
                        n,
                        state: "ENABLED",
                        data,
                        created,
                    });
                    let s = &w.google.secrets[i];
                    Answer::ok(
                        200,
                        version_json(s, s.versions.last().expect("just pushed")),
                    )
                }
                _ => sm_err(
                    404,
                    "The requested method does not exist in the emulated Secret Manager API",
                ),
            }
        }
        ["v1", "projects", p, "secrets", id, "versions"] if m == Method::GET => {
            let Some(i) = find_secret(&w.google, p, id) else {
                return sm_err(
                    404,
                    &format!("Secret [projects/{PROJECT_NUMBER}/secrets/{id}] not found."),
                );
            };
            let want = match r.q("filter").map(str::trim) {
                None | Some("") => None,
                Some(f) => match f
                    .strip_prefix("state:")
                    .or_else(|| f.strip_prefix("state="))
                {
                    Some(st) => Some(st.trim().to_owned()),
                    None => return sm_err(400, &format!("Unsupported filter: {f}")),
                },
            };
            let s = &w.google.secrets[i];
            let items: Vec<Value> = s
                .versions
                .iter()
                .rev()
                .filter(|v| want.as_deref().is_none_or(|st| st == v.state))
                .map(|v| version_json(s, v))
                .collect();
            page(r, Provider::SecretManager, items, "versions")
        }
        ["v1", "projects", p, "secrets", id, "versions", last] => {
            let (ver, action) = verb(last);
            let Some(i) = find_secret(&w.google, p, id) else {
                return sm_err(
                    404,
                    &format!("Secret [projects/{PROJECT_NUMBER}/secrets/{id}] not found."),
                );
            };
            let s = &mut w.google.secrets[i];
            let vi = if ver == "latest" {
                s.versions
                    .iter()
                    .enumerate()
                    .max_by_key(|(_, v)| v.n)
                    .map(|(i, _)| i)
            } else {
                ver.parse::<u64>()
                    .ok()
                    .and_then(|n| s.versions.iter().position(|v| v.n == n))
            };
            let Some(vi) = vi else {
                return sm_err(
                    404,
                    &format!(
                        "Secret Version [{}/versions/{ver}] not found.",
                        secret_name(s)
                    ),
                );
            };
            match (action, m.as_str()) {
                (Some("access"), "GET") => {
                    let v = &s.versions[vi];
                    if v.state != "ENABLED" {
                        return provider_error(
                            Provider::SecretManager,
                            400,
                            "failed_precondition",
                            &format!(
                                "Secret Version [{}/versions/{}] is in {} state.",
                                secret_name(s),
                                v.n,
                                v.state
                            ),
                        );
                    }
                    Answer::ok(
                        200,
                        json!({"name": format!("{}/versions/{}", secret_name(s), v.n), "payload": {"data": v.data}}),
                    )
                }
                (Some("disable"), "POST") | (Some("enable"), "POST") => {
                    if s.versions[vi].state == "DESTROYED" {
                        return sm_err(400, "The version is destroyed");
                    }
                    s.versions[vi].state = if action == Some("disable") {
                        "DISABLED"
                    } else {
                        "ENABLED"
                    };
                    Answer::ok(200, version_json(s, &s.versions[vi]))
                }
                (None, "GET") => Answer::ok(200, version_json(s, &s.versions[vi])),
                _ => sm_err(
                    404,
                    "The requested method does not exist in the emulated Secret Manager API",
                ),
            }
        }
        _ => sm_err(
            404,
            "The requested path does not exist in the emulated Secret Manager API",
        ),
    }
}

fn create_secret(w: &mut World, r: &Req<'_>, p: &str) -> Answer {
    let Some(id) = r.q("secretId").map(str::to_owned) else {
        return sm_err(400, "secretId is required");
    };
    if !crate::providers::google::ops::valid_secret_id(&id) {
        return sm_err(400, "Secret id must match [a-zA-Z0-9_-]{1,255}");
    }
    if find_secret(&w.google, p, &id).is_some() {
        return provider_error(
            Provider::SecretManager,
            409,
            "already_exists",
            &format!("Secret [projects/{PROJECT_NUMBER}/secrets/{id}] already exists."),
        );
    }
    let body = r.body.clone().unwrap_or(Value::Null);
    if body.get("replication").is_none() {
        return sm_err(400, "Secret.replication is required");
    }
    let map = |k: &str| {
        body.get(k)
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    let created = w.now_rfc3339();
    let etag = w.next();
    let s = Secret {
        project: p.to_owned(),
        id,
        labels: map("labels"),
        annotations: map("annotations"),
        versions: Vec::new(),
        created,
        etag,
    };
    let v = secret_json(&s);
    w.google.secrets.push(s);
    Answer::ok(200, v)
}

fn patch_secret(w: &mut World, r: &Req<'_>, i: usize) -> Answer {
    let Some(mask) = r.q("updateMask").filter(|m| !m.is_empty()) else {
        return sm_err(400, "updateMask is required");
    };
    let body = r.body.clone().unwrap_or(Value::Null);
    let etag = w.next();
    let s = &mut w.google.secrets[i];
    for field in mask.split(',') {
        let value = body
            .get(field)
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        match field {
            "annotations" => s.annotations = value,
            "labels" => s.labels = value,
            other => {
                return sm_err(
                    400,
                    &format!("Field {other} cannot be updated by this emulator"),
                );
            }
        }
    }
    s.etag = etag;
    Answer::ok(200, secret_json(s))
}

// ---------------------------------------------------------------------------------------
// Inventory and drift

pub(crate) fn inventory(s: &State, m: &mut BTreeMap<String, u64>) {
    m.insert("cloud_run.services".into(), s.services.len() as u64);
    m.insert("cloud_run.domain_mappings".into(), s.mappings.len() as u64);
    m.insert(
        "cloud_run.revisions".into(),
        s.services.iter().map(|x| x.revisions.len() as u64).sum(),
    );
    m.insert("secret_manager.secrets".into(), s.secrets.len() as u64);
    m.insert(
        "secret_manager.versions_enabled".into(),
        s.secrets
            .iter()
            .flat_map(|x| x.versions.iter())
            .filter(|v| v.state == "ENABLED")
            .count() as u64,
    );
}

/// `{"provider":"cloud-run","service":"links-api","max_instances":3}`,
/// `{"provider":"cloud-run","service":"…","remove_public":true}`,
/// `{"provider":"cloud-run","service":"…","set_env":{"K":"v"}}`,
/// `{"provider":"cloud-run","service":"…","delete":true}`,
/// `{"provider":"secret-manager","secret":"links-api-KEY","disable_all":true}`,
/// `{"provider":"secret-manager","secret":"…","clear_annotations":true}`,
/// `{"provider":"secret-manager","secret":"…","delete":true}`.
pub(crate) fn drift(w: &mut World, body: &Value) -> Result<Value, String> {
    let str_of = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_owned);
    match body.get("provider").and_then(Value::as_str) {
        Some("cloud-run") => {
            let id = str_of("service").ok_or("`service` (a Cloud Run service id) is required")?;
            let st = &mut w.google;
            if body.get("delete").and_then(Value::as_bool) == Some(true) {
                let before = st.services.len();
                st.services.retain(|s| s.id != id);
                return Ok(json!({"deleted": before - st.services.len()}));
            }
            let s = st
                .services
                .iter_mut()
                .find(|s| s.id == id)
                .ok_or_else(|| format!("no Cloud Run service named {id}"))?;
            let mut changed = Vec::new();
            if let Some(n) = body.get("max_instances").and_then(Value::as_u64) {
                if let Some(t) = s.spec.get_mut("template") {
                    t["scaling"]["maxInstanceCount"] = json!(n);
                }
                changed.push("max_instances");
            }
            if body.get("remove_public").and_then(Value::as_bool) == Some(true) {
                for (_, members) in &mut s.bindings {
                    members.retain(|m| m != "allUsers");
                }
                s.bindings.retain(|(_, m)| !m.is_empty());
                s.policy_version += 1;
                changed.push("public");
            }
            if let Some(env) = body.get("set_env").and_then(Value::as_object) {
                if let Some(list) = s
                    .spec
                    .get_mut("template")
                    .and_then(|t| t.pointer_mut("/containers/0"))
                    .and_then(Value::as_object_mut)
                    .map(|c| c.entry("env").or_insert_with(|| json!([])))
                    .and_then(Value::as_array_mut)
                {
                    for (k, v) in env {
                        list.retain(|e| e.get("name").and_then(Value::as_str) != Some(k));
                        list.push(json!({"name": k, "value": v}));
                    }
                }
                changed.push("env");
            }
            if !changed.is_empty() {
                s.generation += 1;
            }
            Ok(json!({"changed": changed}))
        }
        Some("secret-manager") => {
            let id = str_of("secret").ok_or("`secret` (a secret id) is required")?;
            let st = &mut w.google;
            if body.get("delete").and_then(Value::as_bool) == Some(true) {
                let before = st.secrets.len();
                st.secrets.retain(|s| s.id != id);
                return Ok(json!({"deleted": before - st.secrets.len()}));
            }
            let s = st
                .secrets
                .iter_mut()
                .find(|s| s.id == id)
                .ok_or_else(|| format!("no secret named {id}"))?;
            let mut changed = Vec::new();
            if body.get("disable_all").and_then(Value::as_bool) == Some(true) {
                for v in &mut s.versions {
                    if v.state == "ENABLED" {
                        v.state = "DISABLED";
                    }
                }
                changed.push("versions");
            }
            if body.get("clear_annotations").and_then(Value::as_bool) == Some(true) {
                s.annotations.clear();
                changed.push("annotations");
            }
            Ok(json!({"changed": changed}))
        }
        _ => Err("this drift handler serves cloud-run and secret-manager".into()),
    }
}

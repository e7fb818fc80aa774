//! Cloud Run: services through the Admin API v2 (`v2/projects/{p}/locations/{r}/services`),
//! their public invoker binding through IAM (`:getIamPolicy`/`:setIamPolicy`), and domain
//! mappings through the v1 API (`apis/domains.cloudrun.com/v1/namespaces/{p}/domainmappings`,
//! which the real API serves only on regional endpoints `https://{region}-run.googleapis.com`).
//!
//! A service is written whole (create, or patch with the full service) and the long-running
//! operation is awaited: when the new revision fails its health check the operation fails with
//! Cloud Run's reason, which becomes the step's error, and traffic stays on the last ready
//! revision (Cloud Run does this itself: traffic follows the latest *ready* revision).
//!
//! Secret env values never appear in a service: each is a `valueSource.secretKeyRef` to the
//! Secret Manager secret `config::lower` names `<service>-<VAR>`, version `latest`. Where
//! every non-plain value came from is kept in the annotation `telbase.dev/env-sources`, so
//! observe maps a service back to the model spec it was written from and an unchanged
//! service compares equal.
//!
//! Services are regional and the v2 API has no all-regions list, so observe first asks the
//! v1 API's global list (`apis/serving.knative.dev/v1/namespaces/{p}/services`, filtered by
//! the ownership labels) which regions hold this project's services, then lists each region
//! through v2.
//!
//! The endpoint's base is the API root without a version (`https://run.googleapis.com`, or
//! the emulator's `/cloud-run`): paths here start with `/v2/` and `/apis/`.

use std::collections::{BTreeMap, BTreeSet};

use reqwest::Method;
use secrecy::SecretString;
use serde_json::{Map, Value, json};

use super::ops;
use super::project;
use crate::model::{
    self, CloudRunService, CloudSqlMount, DesiredState, Domain, EnvSource, EnvVar, Kind, Observed,
    Output, Probe, Resource, ResourceKey, ResourceSpec,
};
use crate::providers::http::{Call, Endpoint, Http, Retry};
use crate::providers::{
    Applied, BoxFuture, Change, Credentials, ErrorKind, Inputs, Provider, ProviderError, Scope,
    SetupError,
};

const P: model::Provider = model::Provider::CloudRun;

/// The service annotation mapping env var names to where their values came from.
pub const ENV_SOURCES: &str = "telbase.dev/env-sources";
const INVOKER: &str = "roles/run.invoker";
const ALL_USERS: &str = "allUsers";
/// The volume through which Cloud Run runs the Cloud SQL connector, and where the container
/// sees it: each instance's socket is under `/cloudsql/<connectionName>` (the only path
/// Cloud Run accepts for a Cloud SQL volume).
const CLOUD_SQL_VOLUME: &str = "cloudsql";
const CLOUD_SQL_MOUNT: &str = "/cloudsql";
/// The label Cloud Run puts on every service with its region (v1 API).
const LOCATION_LABEL: &str = "cloud.googleapis.com/location";

pub struct CloudRun {
    http: Http,
    ep: Endpoint,
    project: String,
    /// The emulator serves v1 and v2 under one prefix; the real v1 API is regional.
    emulated: bool,
}

/// The Secret Manager secret holding env var `var` of service `service` (as `config::lower`
/// names it).
pub fn secret_id(service: &str, var: &str) -> String {
    format!("{service}-{var}")
}

fn region_ok(region: &str) -> bool {
    !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// `512` → `512Mi`.
fn memory_text(mib: u32) -> String {
    format!("{mib}Mi")
}

/// Cloud Run memory quantities back to MiB: `512Mi`, `1Gi`, `1G`, `1000M`.
fn memory_mib(text: &str) -> Option<u32> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().ok()?;
    let bytes = match unit {
        "Ki" => n * 1024,
        "Mi" => n * 1024 * 1024,
        "Gi" => n * 1024 * 1024 * 1024,
        "k" | "K" => n * 1000,
        "M" => n * 1_000_000,
        "G" => n * 1_000_000_000,
        "" => n,
        _ => return None,
    };
    u32::try_from(bytes / (1024 * 1024)).ok()
}

fn str_at<'v>(v: &'v Value, pointer: &str) -> Option<&'v str> {
    v.pointer(pointer).and_then(Value::as_str)
}

fn u32_at(v: &Value, pointer: &str) -> Option<u32> {
    v.pointer(pointer)
        .and_then(|x| x.as_u64().or_else(|| x.as_str()?.parse().ok()))
        .and_then(|n| u32::try_from(n).ok())
}

fn probe_body(p: &Probe, port: u16) -> Value {
    json!({
        "httpGet": {"path": p.path, "port": port},
        "periodSeconds": p.period_seconds,
        "timeoutSeconds": p.timeout_seconds,
        "initialDelaySeconds": p.initial_delay_seconds,
        "failureThreshold": p.failure_threshold,
    })
}

/// The v2 Service body for a spec. `image` has the commit substituted already; `project`
/// is the Google project, which completes Cloud SQL connection names.
pub fn service_body(
    scope: &Scope,
    project: &str,
    name: &str,
    spec: &CloudRunService,
    inputs: &Inputs,
) -> Result<Value, String> {
    let mut sources = Map::new();
    let mut env = Vec::with_capacity(spec.env.len());
    for var in &spec.env {
        if let Some(text) = ops::source_text(&var.source) {
            sources.insert(var.name.to_string(), json!(text));
        }
        let item = match &var.source {
            EnvSource::Plain(v) => json!({"name": var.name, "value": v}),
            s if s.is_secret() => json!({
                "name": var.name,
                "valueSource": {"secretKeyRef": {"secret": secret_id(name, &var.name), "version": "latest"}},
            }),
            // Not secret (a host, a port, a database name): resolved at apply, written inline.
            _ => {
                let v = inputs.env.get(var.name.as_str()).ok_or_else(|| {
                    format!("{}: its value was not resolved before apply", var.name)
                })?;
                json!({"name": var.name, "value": secrecy::ExposeSecret::expose_secret(v)})
            }
        };
        env.push(item);
    }
    let mut container = json!({
        "image": spec.image,
        "ports": [{"containerPort": spec.port}],
        "env": env,
        "resources": {"limits": {"cpu": spec.cpu, "memory": memory_text(spec.memory_mib)}},
    });
    if !spec.command.is_empty() {
        container["command"] = json!(spec.command);
    }
    if !spec.args.is_empty() {
        container["args"] = json!(spec.args);
    }
    if let Some(p) = &spec.probe {
        container["startupProbe"] = probe_body(p, spec.port);
        container["livenessProbe"] = probe_body(p, spec.port);
    }
    let mut template = json!({
        "containers": [],
        "scaling": {"minInstanceCount": spec.min_instances, "maxInstanceCount": spec.max_instances},
        "maxInstanceRequestConcurrency": spec.concurrency,
    });
    if !spec.cloud_sql.is_empty() {
        let instances: Vec<String> = spec
            .cloud_sql
            .iter()
            .map(|m| connection_name(project, m))
            .collect();
        template["volumes"] = json!([{
            "name": CLOUD_SQL_VOLUME,
            "cloudSqlInstance": {"instances": instances},
        }]);
        container["volumeMounts"] =
            json!([{"name": CLOUD_SQL_VOLUME, "mountPath": CLOUD_SQL_MOUNT}]);
    }
    template["containers"] = json!([container]);
    let mut annotations = Map::new();
    annotations.insert(
        ENV_SOURCES.into(),
        json!(Value::Object(sources).to_string()),
    );
    // The same record on the revision template: a secret whose source changed (re-sealed,
    // or `from:` another output) then changes the template, so Cloud Run rolls a new
    // revision that reads the new version; running instances would keep the old one.
    template["annotations"] = json!(annotations.clone());
    Ok(json!({
        "labels": ops::labels(scope),
        "annotations": annotations,
        "ingress": "INGRESS_TRAFFIC_ALL",
        "template": template,
        "traffic": [{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 100}],
    }))
}

/// `<google project>:<region>:<instance>`, the form Cloud Run's Cloud SQL volume takes.
pub fn connection_name(project: &str, m: &CloudSqlMount) -> String {
    format!("{project}:{}:{}", m.region, m.instance.name)
}

/// The Cloud SQL instances a service mounts, as the model names them. Only the volume
/// Telbase writes counts, and only when the container mounts it at `/cloudsql`: anything
/// else (a mount moved, an instance of another project) maps to an entry no spec has, so
/// it shows as a difference and is rewritten.
fn mounted_instances(s: &Value, project: &str) -> Vec<CloudSqlMount> {
    let volume = s
        .pointer("/template/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(CLOUD_SQL_VOLUME));
    let Some(volume) = volume else {
        return Vec::new();
    };
    let mounted = s
        .pointer("/template/containers/0/volumeMounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|m| {
            m.get("name").and_then(Value::as_str) == Some(CLOUD_SQL_VOLUME)
                // Cloud Run accepts an empty path for a Cloud SQL volume and means `/cloudsql`.
                && m.get("mountPath")
                    .and_then(Value::as_str)
                    .is_none_or(|p| p.is_empty() || p == CLOUD_SQL_MOUNT)
        });
    let mut out: Vec<CloudSqlMount> = volume
        .pointer("/cloudSqlInstance/instances")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|c| {
            // The project part may itself hold a colon (`example.com:proj`): split from
            // the right.
            let mut parts = c.rsplitn(3, ':');
            let (instance, region, owner) = (parts.next(), parts.next(), parts.next());
            match (instance, region, owner) {
                (Some(i), Some(r), Some(p)) if p == project && mounted => CloudSqlMount {
                    instance: ResourceKey::new(Kind::CloudSqlInstance, i),
                    region: r.into(),
                },
                _ => CloudSqlMount {
                    instance: ResourceKey::new(
                        Kind::CloudSqlInstance,
                        format!("{c} (not mounted as Telbase wrote it)"),
                    ),
                    region: "".into(),
                },
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// A v2 Service as the model sees it, with Cloud Run's defaults filled so that a service
/// written from a spec maps back to exactly that spec. `public` comes from IAM; `project`
/// is the Google project, against which Cloud SQL connection names are read.
pub fn map_service(s: &Value, public: bool, project: &str) -> CloudRunService {
    let name = str_at(s, "/name").unwrap_or("");
    // projects/{p}/locations/{region}/services/{id}
    let region = name.split('/').nth(3).unwrap_or("").to_owned();
    let service_id = ops::last_segment(name);
    let c = s
        .pointer("/template/containers/0")
        .cloned()
        .unwrap_or(Value::Null);
    let port = c
        .pointer("/ports/0/containerPort")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(8080);
    let strings = |k: &str| -> Vec<String> {
        c.get(k)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect()
    };
    let sources: Map<String, Value> = str_at(
        s,
        &format!("/annotations/{}", ENV_SOURCES.replace('/', "~1")),
    )
    .and_then(|t| serde_json::from_str(t).ok())
    .unwrap_or_default();
    let env = c
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let var = e.get("name")?.as_str()?.to_owned();
            let recorded = sources
                .get(&var)
                .and_then(Value::as_str)
                .and_then(ops::parse_source);
            let reference = e.pointer("/valueSource/secretKeyRef");
            let value = e.get("value").and_then(Value::as_str);
            let source = match (recorded, reference, value) {
                (Some(src), Some(r), _) if src.is_secret() => {
                    let wanted = secret_id(service_id, &var);
                    let points = r
                        .get("secret")
                        .and_then(Value::as_str)
                        .map(ops::last_segment)
                        == Some(wanted.as_str())
                        && r.get("version").and_then(Value::as_str) == Some("latest");
                    if points {
                        src
                    } else {
                        EnvSource::Plain("(secret reference changed outside Telbase)".into())
                    }
                }
                (Some(src), None, Some(_)) if !src.is_secret() => src,
                (Some(_), _, _) => EnvSource::Plain("(value changed outside Telbase)".into()),
                (None, None, Some(v)) => EnvSource::Plain(v.into()),
                (None, _, _) => {
                    EnvSource::Plain("(secret reference not written by Telbase)".into())
                }
            };
            Some(EnvVar {
                name: var.into(),
                source,
            })
        })
        .collect();
    let probe = c.get("livenessProbe").and_then(|p| {
        Some(Probe {
            path: p.pointer("/httpGet/path")?.as_str().unwrap_or("/").into(),
            period_seconds: u32_at(p, "/periodSeconds").unwrap_or(10),
            timeout_seconds: u32_at(p, "/timeoutSeconds").unwrap_or(1),
            initial_delay_seconds: u32_at(p, "/initialDelaySeconds").unwrap_or(0),
            failure_threshold: u32_at(p, "/failureThreshold").unwrap_or(3),
        })
    });
    let mut image = c
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    // A revision that never became ready is not what the file asks for, even though the
    // template says so: report it, so the next plan tries again.
    if let Some(state) = str_at(s, "/terminalCondition/state")
        && state == "CONDITION_FAILED"
    {
        let why = str_at(s, "/terminalCondition/message").unwrap_or("no reason given");
        image = format!("{image} (not serving: {why})");
    }
    CloudRunService {
        region: region.into(),
        image: image.into(),
        port,
        command: strings("command"),
        args: strings("args"),
        cpu: c
            .pointer("/resources/limits/cpu")
            .and_then(Value::as_str)
            .unwrap_or("1")
            .into(),
        memory_mib: c
            .pointer("/resources/limits/memory")
            .and_then(Value::as_str)
            .and_then(memory_mib)
            .unwrap_or(512),
        min_instances: u32_at(s, "/template/scaling/minInstanceCount").unwrap_or(0),
        max_instances: u32_at(s, "/template/scaling/maxInstanceCount").unwrap_or(100),
        concurrency: u32_at(s, "/template/maxInstanceRequestConcurrency").unwrap_or(80),
        probe,
        public,
        env,
        cloud_sql: mounted_instances(s, project),
    }
}

/// Whether an IAM policy lets everyone invoke.
fn is_public(policy: &Value) -> bool {
    policy
        .get("bindings")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|b| b.get("role").and_then(Value::as_str) == Some(INVOKER))
        .flat_map(|b| {
            b.get("members")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .any(|m| m.as_str() == Some(ALL_USERS))
}

/// The policy with `allUsers` added to or removed from the invoker role.
fn with_public(policy: &Value, public: bool) -> Value {
    let mut bindings: Vec<Value> = policy
        .get("bindings")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for b in &mut bindings {
        if b.get("role").and_then(Value::as_str) == Some(INVOKER)
            && let Some(members) = b.get_mut("members").and_then(Value::as_array_mut)
        {
            members.retain(|m| m.as_str() != Some(ALL_USERS));
        }
    }
    bindings.retain(|b| {
        b.get("members")
            .and_then(Value::as_array)
            .is_some_and(|m| !m.is_empty())
    });
    if public {
        match bindings
            .iter_mut()
            .find(|b| b.get("role").and_then(Value::as_str) == Some(INVOKER))
        {
            Some(b) => {
                if let Some(m) = b.get_mut("members").and_then(Value::as_array_mut) {
                    m.push(json!(ALL_USERS));
                }
            }
            None => bindings.push(json!({"role": INVOKER, "members": [ALL_USERS]})),
        }
    }
    let mut out = json!({"bindings": bindings});
    if let Some(etag) = policy.get("etag") {
        out["etag"] = etag.clone();
    }
    out
}

/// Substitute `${git.sha}` and `${git.short_sha}`, refusing an image that still has a
/// placeholder (no commit known).
fn concrete_image(scope: &Scope, image: &str) -> Result<String, String> {
    let mut out = image.to_owned();
    if let Some(g) = &scope.git {
        out = out
            .replace("${git.sha}", &g.sha)
            .replace("${git.short_sha}", &g.sha[..g.sha.len().min(7)]);
    }
    if out.contains("${") {
        return Err(format!(
            "the image `{image}` names the commit, but no git commit is known for this run"
        ));
    }
    Ok(out)
}

impl CloudRun {
    pub fn new(http: Http, ep: Endpoint, creds: &Credentials) -> Result<Self, SetupError> {
        Ok(CloudRun {
            http,
            ep,
            project: project(P, creds)?,
            emulated: creds.emulator.is_some(),
        })
    }

    fn service_path(&self, region: &str, name: &str) -> String {
        format!(
            "/v2/projects/{}/locations/{region}/services/{name}",
            self.project
        )
    }

    /// The endpoint of the v1 API for `region`.
    fn v1(&self, region: &str, what: &str) -> Result<Endpoint, ProviderError> {
        if self.emulated {
            return Ok(self.ep.clone());
        }
        if !region_ok(region) {
            return Err(ops::err(
                P,
                ErrorKind::Permanent,
                what,
                format!("`{region}` is not a Cloud Run region"),
            ));
        }
        self.ep
            .rebased(&format!("https://{region}-run.googleapis.com"))
            .map_err(|e| ops::err(P, ErrorKind::Permanent, what, e.to_string()))
    }

    async fn get_service(&self, region: &str, name: &str) -> Result<Option<Value>, ProviderError> {
        let call = Call::get(
            self.service_path(region, name),
            format!("read service {name}"),
        );
        match self.http.json(&self.ep, &call).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn get_policy(&self, region: &str, name: &str) -> Result<Value, ProviderError> {
        let call = Call::get(
            format!("{}:getIamPolicy", self.service_path(region, name)),
            format!("read the invoker policy of {name}"),
        );
        self.http.json(&self.ep, &call).await
    }

    /// Read-modify-write of the invoker policy. A write refused for a stale etag (someone
    /// else changed the policy, or our own earlier attempt landed and its answer was lost)
    /// is re-read and tried again.
    async fn set_public(
        &self,
        region: &str,
        name: &str,
        public: bool,
    ) -> Result<(), ProviderError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let policy = self.get_policy(region, name).await?;
            if is_public(&policy) == public {
                return Ok(());
            }
            let call = Call::new(
                Method::POST,
                format!("{}:setIamPolicy", self.service_path(region, name)),
                format!(
                    "{} public access to {name}",
                    if public { "allow" } else { "remove" }
                ),
            )
            .json(json!({"policy": with_public(&policy, public)}))
            // The etag makes a repeated write harmless: it is refused, not applied twice.
            .retry(Retry::Always);
            match self.http.send(&self.ep, &call).await {
                Ok(_) => return Ok(()),
                Err(e) if e.kind == ErrorKind::Conflict && attempts < 3 => continue,
                Err(e) => return Err(e),
            }
        }
    }

    async fn deploy(
        &self,
        scope: &Scope,
        res: &Resource,
        spec: &CloudRunService,
        inputs: &Inputs,
    ) -> Result<Applied, ProviderError> {
        let name = res.key.name.as_str();
        let what = format!("deploy service {name}");
        let fail = |m: String| ops::err(P, ErrorKind::Permanent, &what, m);
        if !region_ok(&spec.region) {
            return Err(fail(format!("`{}` is not a Cloud Run region", spec.region)));
        }
        let mut concrete = spec.clone();
        concrete.image = concrete_image(scope, &spec.image).map_err(&fail)?.into();
        let body = service_body(scope, &self.project, name, &concrete, inputs).map_err(&fail)?;
        let existing = self.get_service(&spec.region, name).await?;
        if let Some(s) = &existing
            && !ops::owned(s.get("labels"), name, scope)
        {
            return Err(ops::foreign(P, &what, "Cloud Run service", name));
        }
        let op = match existing {
            Some(_) => self.patch(&spec.region, name, &body, &what).await?,
            None => {
                let call = Call::new(
                    Method::POST,
                    format!(
                        "/v2/projects/{}/locations/{}/services",
                        self.project, spec.region
                    ),
                    what.clone(),
                )
                .query("serviceId", name)
                .json(body.clone())
                // A second create of the same id is refused (409): never a duplicate.
                .retry(Retry::Always);
                match self.http.json(&self.ep, &call).await {
                    Ok(op) => op,
                    Err(e) if e.kind == ErrorKind::Conflict => {
                        match self.get_service(&spec.region, name).await? {
                            Some(s) if ops::owned(s.get("labels"), name, scope) => {
                                self.patch(&spec.region, name, &body, &what).await?
                            }
                            _ => return Err(ops::foreign(P, &what, "Cloud Run service", name)),
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let done = ops::wait_operation(&self.http, &self.ep, "v2", op, &what).await?;
        self.set_public(&spec.region, name, spec.public).await?;
        let uri = match done.get("uri").and_then(Value::as_str) {
            Some(u) => Some(u.to_owned()),
            None => self
                .get_service(&spec.region, name)
                .await?
                .and_then(|s| s.get("uri").and_then(Value::as_str).map(str::to_owned)),
        };
        Ok(Applied {
            provider_id: format!(
                "projects/{}/locations/{}/services/{name}",
                self.project, spec.region
            ),
            url: uri,
        })
    }

    async fn patch(
        &self,
        region: &str,
        name: &str,
        body: &Value,
        what: &str,
    ) -> Result<Value, ProviderError> {
        let call = Call::new(Method::PATCH, self.service_path(region, name), what)
            .json(body.clone())
            // The whole service is sent: the same patch twice is the same service.
            .retry(Retry::Always);
        self.http.json(&self.ep, &call).await
    }

    async fn delete_service(&self, region: &str, name: &str) -> Result<Applied, ProviderError> {
        let what = format!("delete service {name}");
        let call = Call::new(
            Method::DELETE,
            self.service_path(region, name),
            what.clone(),
        );
        match self.http.json(&self.ep, &call).await {
            Ok(op) => {
                ops::wait_operation(&self.http, &self.ep, "v2", op, &what).await?;
            }
            Err(e) if e.kind == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(Applied::default())
    }

    fn mapping_path(&self) -> String {
        format!(
            "/apis/domains.cloudrun.com/v1/namespaces/{}/domainmappings",
            self.project
        )
    }

    async fn get_mapping(&self, ep: &Endpoint, host: &str) -> Result<Option<Value>, ProviderError> {
        let call = Call::get(
            format!("{}/{host}", self.mapping_path()),
            format!("read domain mapping {host}"),
        );
        match self.http.json(ep, &call).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn map_domain(
        &self,
        scope: &Scope,
        domain: &Domain,
        desired: &DesiredState,
    ) -> Result<Applied, ProviderError> {
        let host = &domain.hostname;
        let what = format!("map domain {host} to {}", domain.target.name);
        let region = match desired.resources.get(&domain.target).map(|r| &r.spec) {
            Some(ResourceSpec::CloudRunService(s)) => s.region.clone(),
            _ => {
                return Err(ops::err(
                    P,
                    ErrorKind::Permanent,
                    &what,
                    format!("{} is not a Cloud Run service of this state", domain.target),
                ));
            }
        };
        let ep = self.v1(&region, &what)?;
        let owned_here = |m: &Value| {
            owned_mapping(m, scope)
                && str_at(m, "/spec/routeName") == Some(domain.target.name.as_str())
        };
        if let Some(m) = self.get_mapping(&ep, host).await? {
            if owned_here(&m) {
                return Ok(mapping_applied(&region, host));
            }
            if !owned_mapping(&m, scope) {
                return Err(ops::foreign(P, &what, "domain mapping", host));
            }
            // Ours but pointing elsewhere: a mapping's route cannot be changed, so replace it.
            self.unmap(&ep, host).await?;
        }
        let body = json!({
            "apiVersion": "domains.cloudrun.com/v1",
            "kind": "DomainMapping",
            "metadata": {"name": host, "namespace": self.project, "labels": ops::labels(scope)},
            "spec": {"routeName": domain.target.name, "certificateMode": "AUTOMATIC"},
        });
        let call = Call::new(Method::POST, self.mapping_path(), what.clone())
            .json(body)
            // The hostname is the mapping's name: a second create is refused (409).
            .retry(Retry::Always);
        match self.http.send(&ep, &call).await {
            Ok(_) => {}
            Err(e) if e.kind == ErrorKind::Conflict => match self.get_mapping(&ep, host).await? {
                Some(m) if owned_here(&m) => {}
                _ => return Err(ops::foreign(P, &what, "domain mapping", host)),
            },
            Err(e) => return Err(e),
        }
        Ok(mapping_applied(&region, host))
    }

    async fn unmap(&self, ep: &Endpoint, host: &str) -> Result<Applied, ProviderError> {
        let call = Call::new(
            Method::DELETE,
            format!("{}/{host}", self.mapping_path()),
            format!("remove domain mapping {host}"),
        );
        match self.http.send(ep, &call).await {
            Ok(_) => Ok(Applied::default()),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(Applied::default()),
            Err(e) => Err(e),
        }
    }

    /// A v1 (Knative-style) list: `limit`, then `continue` from `metadata.continue`.
    async fn list_v1(
        &self,
        ep: &Endpoint,
        path: String,
        scope: &Scope,
        what: &str,
    ) -> Result<Vec<Value>, ProviderError> {
        let selector = ops::label_terms(scope)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        let mut seen = BTreeSet::new();
        for _ in 0..10_000 {
            let mut call = Call::get(path.clone(), what)
                .query("labelSelector", selector.clone())
                .query("limit", "100");
            if let Some(t) = &token {
                call = call.query("continue", t.clone());
            }
            let page = self.http.json(ep, &call).await?;
            out.extend(
                page.get("items")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .cloned(),
            );
            match str_at(&page, "/metadata/continue").filter(|t| !t.is_empty()) {
                Some(t) if seen.insert(t.to_owned()) => token = Some(t.to_owned()),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn observe_all(&self, scope: &Scope) -> Result<Vec<Observed>, ProviderError> {
        // Which regions hold this project's services (v1 lists all regions at once).
        let v1 = self
            .list_v1(
                &self.ep,
                format!(
                    "/apis/serving.knative.dev/v1/namespaces/{}/services",
                    self.project
                ),
                scope,
                "find the regions of services",
            )
            .await?;
        let regions: BTreeSet<String> = v1
            .iter()
            .filter_map(|s| {
                s.pointer("/metadata/labels")
                    .and_then(|l| l.get(LOCATION_LABEL))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .filter(|r| region_ok(r))
            .collect();
        let mut out = Vec::new();
        let mut services = BTreeMap::new();
        for region in &regions {
            let call = Call::get(
                format!("/v2/projects/{}/locations/{region}/services", self.project),
                format!("list services in {region}"),
            )
            .query("pageSize", "100");
            for s in ops::list(&self.http, &self.ep, call, "services").await? {
                let name = str_at(&s, "/name").unwrap_or("");
                let id = ops::last_segment(name).to_owned();
                if !ops::owned(s.get("labels"), &id, scope) {
                    continue;
                }
                let public = is_public(&self.get_policy(region, &id).await?);
                services.insert(id.clone(), region.clone());
                out.push(Observed {
                    key: ResourceKey::new(Kind::CloudRunService, id),
                    spec: ResourceSpec::CloudRunService(Box::new(map_service(
                        &s,
                        public,
                        &self.project,
                    ))),
                    provider_id: name.to_owned(),
                    deletion_allowed: false,
                });
            }
        }
        // Domain mappings live beside their services, region by region.
        let mut hosts = BTreeSet::new();
        for region in &regions {
            let ep = self.v1(region, "list domain mappings")?;
            let found = self
                .list_v1(&ep, self.mapping_path(), scope, "list domain mappings")
                .await?;
            for m in found {
                let (Some(host), Some(route)) =
                    (str_at(&m, "/metadata/name"), str_at(&m, "/spec/routeName"))
                else {
                    continue;
                };
                // The emulator serves every region from one namespace: count each once.
                if !owned_mapping(&m, scope) || !hosts.insert(host.to_owned()) {
                    continue;
                }
                let region = services
                    .get(route)
                    .cloned()
                    .unwrap_or_else(|| region.clone());
                out.push(Observed {
                    key: ResourceKey::new(Kind::CloudRunDomainMapping, host),
                    spec: ResourceSpec::CloudRunDomainMapping(Domain {
                        hostname: host.into(),
                        target: ResourceKey::new(Kind::CloudRunService, route),
                    }),
                    provider_id: format!("{region}/{host}"),
                    deletion_allowed: false,
                });
            }
        }
        Ok(out)
    }

    async fn delete_observed(&self, observed: &Observed) -> Result<Applied, ProviderError> {
        match &observed.spec {
            ResourceSpec::CloudRunService(s) => {
                self.delete_service(&s.region, &observed.key.name).await
            }
            ResourceSpec::CloudRunDomainMapping(d) => {
                let region = observed
                    .provider_id
                    .split_once('/')
                    .map(|(r, _)| r)
                    .unwrap_or("");
                let ep = self.v1(region, &format!("remove domain mapping {}", d.hostname))?;
                self.unmap(&ep, &d.hostname).await
            }
            _ => Err(unsupported(&observed.key)),
        }
    }

    async fn apply_change(
        &self,
        scope: &Scope,
        change: Change<'_>,
        inputs: &Inputs,
        desired: &DesiredState,
    ) -> Result<Applied, ProviderError> {
        match change {
            Change::Create { desired: res } | Change::Update { desired: res, .. } => {
                self.write(scope, res, inputs, desired).await
            }
            Change::Replace {
                desired: res,
                observed,
            } => {
                self.delete_observed(observed).await?;
                self.write(scope, res, inputs, desired).await
            }
            Change::Delete { observed } => self.delete_observed(observed).await,
        }
    }

    async fn write(
        &self,
        scope: &Scope,
        res: &Resource,
        inputs: &Inputs,
        desired: &DesiredState,
    ) -> Result<Applied, ProviderError> {
        match &res.spec {
            ResourceSpec::CloudRunService(spec) => self.deploy(scope, res, spec, inputs).await,
            ResourceSpec::CloudRunDomainMapping(d) => self.map_domain(scope, d, desired).await,
            _ => Err(unsupported(&res.key)),
        }
    }
}

fn owned_mapping(m: &Value, scope: &Scope) -> bool {
    let labels = m.pointer("/metadata/labels");
    // A mapping is named by its hostname, which need not start with the project: the
    // labels are its marks, and the service it routes to must be this project's.
    let route = str_at(m, "/spec/routeName").unwrap_or("");
    ops::owned(labels, route, scope)
}

fn mapping_applied(region: &str, host: &str) -> Applied {
    Applied {
        provider_id: format!("{region}/{host}"),
        url: Some(format!("https://{host}")),
    }
}

fn unsupported(key: &ResourceKey) -> ProviderError {
    ops::err(
        P,
        ErrorKind::Permanent,
        &format!("change {key}"),
        "not a Cloud Run resource",
    )
}

impl Provider for CloudRun {
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
        inputs: &'a Inputs,
        desired: &'a DesiredState,
    ) -> BoxFuture<'a, Result<Applied, ProviderError>> {
        Box::pin(self.apply_change(scope, change, inputs, desired))
    }

    fn output<'a>(
        &'a self,
        _scope: &'a Scope,
        resource: &'a Resource,
        output: Output,
    ) -> BoxFuture<'a, Result<SecretString, ProviderError>> {
        Box::pin(async move {
            let what = format!("read {output:?} of {}", resource.key);
            let ResourceSpec::CloudRunService(spec) = &resource.spec else {
                return Err(ops::err(
                    P,
                    ErrorKind::Permanent,
                    &what,
                    "only services have outputs",
                ));
            };
            let uri = self
                .get_service(&spec.region, &resource.key.name)
                .await?
                .and_then(|s| s.get("uri").and_then(Value::as_str).map(str::to_owned))
                .ok_or_else(|| {
                    ops::err(P, ErrorKind::NotFound, &what, "the service has no URL yet")
                })?;
            match output {
                Output::Url => Ok(SecretString::from(uri)),
                Output::Host => Ok(SecretString::from(
                    uri.trim_start_matches("https://")
                        .trim_end_matches('/')
                        .to_owned(),
                )),
                other => Err(ops::err(
                    P,
                    ErrorKind::Permanent,
                    &what,
                    format!("Cloud Run services offer only url and host, not {other:?}"),
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Environment, Sealed};
    use crate::providers::GitRef;

    fn scope() -> Scope {
        Scope {
            project: "links".into(),
            environment: Environment::Production,
            git: Some(GitRef {
                repo: "o/r".into(),
                sha: "4f2a9c1e0b7d".into(),
                branch: "main".into(),
            }),
        }
    }

    fn spec() -> CloudRunService {
        CloudRunService {
            region: "us-east1".into(),
            image: "r/api:${git.short_sha}".into(),
            port: 8080,
            command: vec![],
            args: vec!["serve".into()],
            cpu: "1".into(),
            memory_mib: 512,
            min_instances: 0,
            max_instances: 20,
            concurrency: 250,
            probe: Some(Probe {
                path: "/healthz".into(),
                period_seconds: 15,
                timeout_seconds: 3,
                initial_delay_seconds: 0,
                failure_threshold: 3,
            }),
            public: true,
            env: vec![
                EnvVar {
                    name: "LOG".into(),
                    source: EnvSource::Plain("json".into()),
                },
                EnvVar {
                    name: "DATABASE_URL".into(),
                    source: EnvSource::Output {
                        resource: ResourceKey::new(Kind::NeonDatabase, "links-db"),
                        output: Output::Url,
                    },
                },
                EnvVar {
                    name: "KEY".into(),
                    source: EnvSource::Sealed(Sealed::new("armor".into())),
                },
            ],
            cloud_sql: vec![CloudSqlMount {
                instance: ResourceKey::new(Kind::CloudSqlInstance, "links-db"),
                region: "us-east1".into(),
            }],
        }
    }

    #[test]
    fn cloud_sql_volumes_are_written_and_read_back() {
        let s = scope();
        let mut want = spec();
        want.image = concrete_image(&s, &want.image).unwrap().into();
        let mut body = service_body(&s, "proj", "links-api", &want, &Inputs::default()).unwrap();
        assert_eq!(
            body.pointer("/template/volumes"),
            Some(
                &json!([{"name": "cloudsql", "cloudSqlInstance": {"instances": ["proj:us-east1:links-db"]}}])
            )
        );
        assert_eq!(
            body.pointer("/template/containers/0/volumeMounts"),
            Some(&json!([{"name": "cloudsql", "mountPath": "/cloudsql"}]))
        );
        body["name"] = json!("projects/proj/locations/us-east1/services/links-api");
        assert_eq!(map_service(&body, true, "proj"), want);
        // Read against another project, the same volume names someone else's instance.
        assert_ne!(map_service(&body, true, "other").cloud_sql, want.cloud_sql);
        // A mount moved elsewhere is not ours any more.
        body["template"]["containers"][0]["volumeMounts"][0]["mountPath"] = json!("/sql");
        assert_ne!(map_service(&body, true, "proj").cloud_sql, want.cloud_sql);
        // An empty path means `/cloudsql` to Cloud Run.
        body["template"]["containers"][0]["volumeMounts"][0]["mountPath"] = json!("");
        assert_eq!(map_service(&body, true, "proj").cloud_sql, want.cloud_sql);
        // No Cloud SQL: no volume, no mount.
        want.cloud_sql.clear();
        let plain = service_body(&s, "proj", "links-api", &want, &Inputs::default()).unwrap();
        assert!(plain.pointer("/template/volumes").is_none());
        assert!(
            plain
                .pointer("/template/containers/0/volumeMounts")
                .is_none()
        );
    }

    #[test]
    fn a_written_service_maps_back_to_its_spec() {
        let s = scope();
        let mut want = spec();
        want.image = concrete_image(&s, &want.image).unwrap().into();
        assert_eq!(want.image, "r/api:4f2a9c1");
        let mut body = service_body(&s, "proj", "links-api", &want, &Inputs::default()).unwrap();
        let text = body.to_string();
        assert!(!text.contains("armor"));
        // A secret's source is on the revision template too, so changing it rolls one.
        let mut moved = want.clone();
        moved.env[1].source = EnvSource::Output {
            resource: ResourceKey::new(Kind::NeonDatabase, "links-other"),
            output: Output::Url,
        };
        let moved = service_body(&s, "proj", "links-api", &moved, &Inputs::default()).unwrap();
        assert_ne!(moved["template"], body["template"]);
        assert_eq!(
            moved["template"]["containers"][0]["env"], body["template"]["containers"][0]["env"],
            "the reference itself stays the same secret"
        );
        assert_eq!(
            body.pointer("/template/containers/0/env/1/valueSource/secretKeyRef/secret"),
            Some(&json!("links-api-DATABASE_URL"))
        );
        body["name"] = json!("projects/p/locations/us-east1/services/links-api");
        body["terminalCondition"] = json!({"state": "CONDITION_SUCCEEDED"});
        assert_eq!(map_service(&body, true, "proj"), want);
        // A failed revision shows as a difference, with the reason.
        body["terminalCondition"] = json!({"state": "CONDITION_FAILED", "message": "probe failed"});
        assert!(
            map_service(&body, true, "proj")
                .image
                .contains("probe failed")
        );
        // A reference moved by hand is not taken for ours.
        body["terminalCondition"] = json!({"state": "CONDITION_SUCCEEDED"});
        body["template"]["containers"][0]["env"][1]["valueSource"]["secretKeyRef"]["secret"] =
            json!("other");
        assert_ne!(map_service(&body, true, "proj"), want);
    }

    #[test]
    fn images_need_a_commit() {
        let mut s = scope();
        s.git = None;
        assert!(concrete_image(&s, "r/api:${git.sha}").is_err());
        assert_eq!(concrete_image(&s, "r/api:1.2").unwrap(), "r/api:1.2");
    }

    #[test]
    fn invoker_policy_edits() {
        let p =
            json!({"bindings": [{"role": INVOKER, "members": ["user:a@x.com"]}], "etag": "BwX="});
        let open = with_public(&p, true);
        assert!(is_public(&open));
        assert_eq!(open["etag"], "BwX=");
        let closed = with_public(&open, false);
        assert!(!is_public(&closed));
        assert_eq!(closed["bindings"][0]["members"], json!(["user:a@x.com"]));
        let only = with_public(&json!({}), true);
        assert_eq!(with_public(&only, false)["bindings"], json!([]));
    }

    #[test]
    fn memory_quantities() {
        assert_eq!(memory_mib("512Mi"), Some(512));
        assert_eq!(memory_mib("2Gi"), Some(2048));
        assert_eq!(memory_mib("1G"), Some(953));
        assert_eq!(memory_mib("x"), None);
        assert_eq!(memory_text(256), "256Mi");
    }
}

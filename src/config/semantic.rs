//! Semantic validation: what a schema cannot say.
//!
//! References resolve (`access: staff`, `from: databases.main.url`), app references form no
//! cycle, domains sit under `edge.zone` and are unique, each setting applies to the kind of
//! app or database it is written on, provider/engine pairs exist, names fit each provider's
//! limits after Telbase prefixes them (including preview suffixes), units and schedules parse
//! and are allowed by the target provider, and `sealed` values are well-formed age messages.
//! Every finding carries the position of the node it is about.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read as _;

use super::diag::{self, Code, Diagnostic, quote};
use super::file::{App, ConfigFile, Database, DatabaseProvider, Engine, EnvValue};
use super::structural::did_you_mean;
use super::units;
use super::yaml::Node;

/// Names defined in the file, including items too malformed to check in depth: a reference to
/// a broken database is not also an "unknown database".
pub struct Defined {
    pub apps: BTreeSet<String>,
    pub databases: BTreeSet<String>,
    pub policies: BTreeSet<String>,
    /// `edge` is written, even if too malformed to check; with it, `zone` when readable.
    pub edge: bool,
    pub zone: Option<String>,
}

impl Defined {
    pub fn from_tree(root: &Node) -> Self {
        let names = |section: &str| -> BTreeSet<String> {
            root.child(section)
                .map(|n| n.keys().map(str::to_owned).collect())
                .unwrap_or_default()
        };
        Defined {
            apps: names("apps"),
            databases: names("databases"),
            policies: names("access"),
            edge: root.child("edge").is_some(),
            zone: match root
                .child("edge")
                .and_then(|e| e.child("zone"))
                .map(|z| &z.value)
            {
                Some(super::yaml::Value::Str(z)) => Some(z.clone()),
                _ => None,
            },
        }
    }
}

struct Ctx<'a> {
    root: &'a Node,
    out: Vec<Diagnostic>,
}

impl Ctx<'_> {
    /// A finding about a value.
    fn at(&mut self, code: Code, path: &[&str], message: impl Into<String>) -> &mut Diagnostic {
        let pos = self.root.pos_of(path);
        self.out.push(Diagnostic::new(code, pos, message));
        self.out.last_mut().expect("just pushed")
    }
    /// A finding about a key (a setting that should not be there, an item as a whole).
    fn at_key(&mut self, code: Code, path: &[&str], message: impl Into<String>) -> &mut Diagnostic {
        let pos = self.root.key_pos_of(path);
        self.out.push(Diagnostic::new(code, pos, message));
        self.out.last_mut().expect("just pushed")
    }
}

/// Outputs each kind of referenced resource offers to `from:`.
pub fn outputs_of_database(db: &Database) -> &'static [&'static str] {
    match effective_provider(db) {
        Some(DatabaseProvider::Turso) => &["url", "token"],
        Some(_) => &["url", "host", "port", "database", "user", "password"],
        None => &[],
    }
}

pub const APP_OUTPUTS: &[&str] = &["url", "host"];

/// The provider a database runs on: as written, or the default for its engine. `None` for an
/// impossible pair (reported as E0205).
pub fn effective_provider(db: &Database) -> Option<DatabaseProvider> {
    match (db.engine, db.provider) {
        (Engine::Postgres, None) => Some(DatabaseProvider::Neon),
        (Engine::Sqlite, None) => Some(DatabaseProvider::Turso),
        (Engine::Postgres, Some(p @ (DatabaseProvider::Neon | DatabaseProvider::Cloudsql))) => {
            Some(p)
        }
        (Engine::Sqlite, Some(DatabaseProvider::Turso)) => Some(DatabaseProvider::Turso),
        _ => None,
    }
}

/// Variables Cloud Run sets itself and refuses in a service's env.
const CLOUD_RUN_RESERVED: &[&str] = &["PORT", "K_SERVICE", "K_REVISION", "K_CONFIGURATION"];
/// Variables Vercel's runtime reserves ("Reserved Environment Variables" in Vercel's docs).
const VERCEL_RESERVED: &[&str] = &[
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SECRET_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_EXECUTION_ENV",
    "LAMBDA_RUNTIME_DIR",
    "LAMBDA_TASK_ROOT",
    "NOW_REGION",
    "TZ",
    "_HANDLER",
    "_X_AMZN_TRACE_ID",
];

/// Neon regions at the time of writing. An unknown one is a warning, not an error: providers
/// add regions faster than we release.
const NEON_REGIONS: &[&str] = &[
    "aws-us-east-1",
    "aws-us-east-2",
    "aws-us-west-2",
    "aws-eu-central-1",
    "aws-eu-west-2",
    "aws-ap-southeast-1",
    "aws-ap-southeast-2",
    "aws-sa-east-1",
    "azure-eastus2",
    "azure-westus3",
    "azure-gwc",
];

/// Google Cloud regions where Cloud Run and Cloud SQL run.
const GCP_REGIONS: &[&str] = &[
    "africa-south1",
    "asia-east1",
    "asia-east2",
    "asia-northeast1",
    "asia-northeast2",
    "asia-northeast3",
    "asia-south1",
    "asia-south2",
    "asia-southeast1",
    "asia-southeast2",
    "australia-southeast1",
    "australia-southeast2",
    "europe-central2",
    "europe-north1",
    "europe-north2",
    "europe-southwest1",
    "europe-west1",
    "europe-west10",
    "europe-west12",
    "europe-west2",
    "europe-west3",
    "europe-west4",
    "europe-west6",
    "europe-west8",
    "europe-west9",
    "me-central1",
    "me-central2",
    "me-west1",
    "northamerica-northeast1",
    "northamerica-northeast2",
    "northamerica-south1",
    "southamerica-east1",
    "southamerica-west1",
    "us-central1",
    "us-east1",
    "us-east4",
    "us-east5",
    "us-south1",
    "us-west1",
    "us-west2",
    "us-west3",
    "us-west4",
];

/// Run every semantic check on a structurally sound document.
pub fn check(root: &Node, cfg: &ConfigFile, defined: &Defined) -> Vec<Diagnostic> {
    let mut cx = Ctx {
        root,
        out: Vec::new(),
    };
    let previews = cfg
        .environments
        .preview
        .as_ref()
        .is_some_and(|p| p.pull_requests);

    // environments
    if let Err(e) = units::branch(&cfg.environments.production.branch) {
        cx.at(Code::E0105, &["environments", "production", "branch"], e);
    }
    if let Some(p) = &cfg.environments.preview {
        if let Some(ttl) = &p.ttl
            && let Err(e) = units::duration_in(ttl, 3600, 90 * 86_400)
        {
            cx.at(Code::E0209, &["environments", "preview", "ttl"], e);
        }
        check_access_ref(
            &mut cx,
            defined,
            &p.access,
            &["environments", "preview", "access"],
        );
        if p.access != "public" && !defined.edge && defined.policies.contains(&p.access) {
            cx.at(
                Code::E0206,
                &["environments", "preview", "access"],
                "previews behind an access policy need `edge.zone`: each preview gets a hostname <app>-pr-<N>.<zone> that Cloudflare Access protects",
            )
            .set_hint("add `edge: { zone: <your domain> }`, or set `access: public`");
        }
    }

    // edge
    if let Some(edge) = &cfg.edge {
        if let Err(e) = units::hostname(&edge.zone) {
            cx.at(Code::E0105, &["edge", "zone"], format!("edge.zone: {e}"));
        }
        if !edge.always_https {
            cx.at(
                Code::E0213,
                &["edge", "always_https"],
                "HTTPS only is part of Telbase's security baseline and cannot be turned off",
            )
            .set_hint("remove the line; every domain redirects HTTP to HTTPS");
        }
        let max_age = match &edge.hsts.max_age {
            Some(m) => match units::duration_in(m, 86_400, 365 * 86_400) {
                Ok(s) => Some(s),
                Err(e) => {
                    cx.at(
                        Code::E0209,
                        &["edge", "hsts", "max_age"],
                        format!("hsts.max_age {e}"),
                    );
                    None
                }
            },
            None => Some(365 * 86_400),
        };
        if edge.hsts.preload {
            if !edge.hsts.include_subdomains {
                cx.at(
                    Code::E0209,
                    &["edge", "hsts", "preload"],
                    "HSTS preload requires `include_subdomains: true`",
                );
            }
            if max_age.is_some_and(|s| s < 365 * 86_400) {
                cx.at(
                    Code::E0209,
                    &["edge", "hsts", "preload"],
                    "HSTS preload requires `max_age: 365d`",
                );
            }
        }
    }

    // access policies
    for (name, policy) in &cfg.access {
        let base = ["access", name.as_str()];
        if policy.allow_domains.is_empty() && policy.allow_emails.is_empty() {
            cx.at_key(
                Code::E0209,
                &base,
                format!(
                    "access policy `{name}` allows no one: list `allow_domains` or `allow_emails`"
                ),
            );
        }
        for (i, d) in policy.allow_domains.iter().enumerate() {
            let idx = i.to_string();
            let path = ["access", name.as_str(), "allow_domains", idx.as_str()];
            if let Some(stripped) = d.strip_prefix('@') {
                cx.at(Code::E0105, &path, format!("{} is not a domain", quote(d)))
                    .set_hint(format!("write `{stripped}` without the `@`"));
            } else if let Err(e) = units::hostname(d) {
                cx.at(Code::E0105, &path, format!("allow_domains: {e}"));
            }
        }
        for (i, e) in policy.allow_emails.iter().enumerate() {
            let idx = i.to_string();
            if let Err(msg) = units::email(e) {
                cx.at(
                    Code::E0105,
                    &["access", name.as_str(), "allow_emails", idx.as_str()],
                    msg,
                );
            }
        }
        if let Some(s) = &policy.session
            && let Err(e) = units::duration_in(s, 15 * 60, 730 * 3600)
        {
            cx.at(
                Code::E0209,
                &["access", name.as_str(), "session"],
                format!("session {e}"),
            );
        }
    }

    // Index the item nodes once: `apps` and `databases` may hold thousands of entries and
    // each check asks its node which keys were written.
    let index = |section: &str| -> HashMap<&str, &Node> {
        match root.child(section).map(|n| &n.value) {
            Some(super::yaml::Value::Map(entries)) => {
                entries.iter().map(|(k, v)| (k.name.as_str(), v)).collect()
            }
            _ => HashMap::new(),
        }
    };
    let apps = index("apps");
    let databases = index("databases");

    // apps
    let mut domain_owner: BTreeMap<&str, &str> = BTreeMap::new();
    let mut app_edges: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
    for (name, app) in &cfg.apps {
        check_app(
            &mut cx,
            apps.get(name.as_str()).copied().unwrap_or(root),
            cfg,
            defined,
            name,
            app,
            previews,
            &mut domain_owner,
        );
        let refs: Vec<(&str, &str)> = app
            .env
            .iter()
            .filter_map(|(var, v)| match v {
                EnvValue::Spec(s) => s.from.as_deref().map(|f| (var.as_str(), f)),
                EnvValue::Plain(_) => None,
            })
            .filter_map(|(var, f)| {
                let mut parts = f.splitn(3, '.');
                match (parts.next(), parts.next()) {
                    (Some("apps"), Some(target)) if cfg.apps.contains_key(target) => {
                        Some((var, target))
                    }
                    _ => None,
                }
            })
            .collect();
        app_edges.insert(name.as_str(), refs);
    }
    check_cycles(&mut cx, &app_edges);

    // databases
    for (name, db) in &cfg.databases {
        let node = databases.get(name.as_str()).copied().unwrap_or(root);
        check_database(&mut cx, node, cfg, name, db, previews);
    }

    // reconcile
    if let Some(drift) = &cfg.reconcile.drift {
        match units::cron(drift) {
            Err(e) => {
                cx.at(
                    Code::E0208,
                    &["reconcile", "drift"],
                    format!("invalid drift schedule {}: {e}", quote(drift)),
                )
                .set_hint("5 fields in UTC, e.g. \"*/15 * * * *\" for every 15 minutes");
            }
            Ok(n) if n > 12 => {
                cx.at(
                    Code::W0303,
                    &["reconcile", "drift"],
                    format!("the drift check runs up to {n} times an hour; providers rate-limit API calls"),
                )
                .set_hint("every 5 minutes or less often is plenty: pushes and webhooks already reconcile at once");
            }
            Ok(_) => {}
        }
    }

    cx.out
}

fn check_access_ref(cx: &mut Ctx, defined: &Defined, name: &str, path: &[&str]) {
    if name == "public" || defined.policies.contains(name) {
        return;
    }
    let d = cx.at(
        Code::E0201,
        path,
        format!("unknown access policy {}", quote(name)),
    );
    let candidates = defined
        .policies
        .iter()
        .map(String::as_str)
        .chain(std::iter::once("public"));
    if let Some(s) = did_you_mean(name, candidates) {
        d.set_hint(format!("did you mean `{s}`?"));
    } else if defined.policies.is_empty() {
        d.set_hint("define it under `access:`, or write `public`");
    } else {
        let list: Vec<&str> = defined.policies.iter().map(String::as_str).collect();
        d.set_hint(format!(
            "defined policies: {}; or `public`",
            list.join(", ")
        ));
    }
}

/// Whether the platform sets `var` itself (Cloud Run for a container app, else Vercel), so
/// that defining it is an error; shared with `env_file` keys.
pub(crate) fn reserved_by_platform(var: &str, container: bool) -> bool {
    if container {
        CLOUD_RUN_RESERVED.contains(&var)
    } else {
        VERCEL_RESERVED.contains(&var)
            || var == "VERCEL"
            || var.starts_with("VERCEL_")
            || var.starts_with("AWS_LAMBDA_")
    }
}

#[allow(clippy::too_many_arguments)]
fn check_app<'c>(
    cx: &mut Ctx,
    node: &Node,
    cfg: &'c ConfigFile,
    defined: &Defined,
    name: &'c str,
    app: &'c App,
    previews: bool,
    domain_owner: &mut BTreeMap<&'c str, &'c str>,
) {
    let base = ["apps", name];
    let zone = defined.zone.as_deref();
    let container = match (app.framework.is_some(), app.runtime.is_some()) {
        (true, false) => false,
        (false, true) => true,
        (true, true) => {
            cx.at_key(
                Code::E0214,
                &["apps", name, "runtime"],
                format!("app `{name}` has both `framework` and `runtime`"),
            )
            .set_hint("`framework` deploys to Vercel, `runtime` to Cloud Run: keep one");
            return;
        }
        (false, false) => {
            cx.at_key(
                Code::E0214,
                &base,
                format!("app `{name}` needs `framework` (Vercel) or `runtime` (Cloud Run)"),
            )
            .set_hint("e.g. `framework: nextjs` or `runtime: docker` with an `image`");
            return;
        }
    };
    let set = |field: &str| node.key(field).is_some();
    if container {
        for field in ["build", "root"] {
            if set(field) {
                cx.at_key(
                    Code::E0206,
                    &["apps", name, field],
                    format!("`{field}` applies to web apps; container apps run a prebuilt `image`"),
                );
            }
        }
        if app.image.is_none() {
            cx.at_key(
                Code::E0102,
                &base,
                format!("container app `{name}` needs an `image`"),
            );
        }
        match &app.region {
            None => {
                cx.at_key(
                    Code::E0102,
                    &base,
                    format!("container app `{name}` needs a `region`"),
                )
                .set_hint("a Google Cloud region such as `us-central1`");
            }
            Some(r) => check_gcp_region(cx, r, &["apps", name, "region"]),
        }
        if let Some(image) = &app.image {
            check_image(cx, image, &["apps", name, "image"]);
        }
        let cpu = match app.resources.as_ref().and_then(|r| r.cpu.as_ref()) {
            Some(c) => match units::cpu_value(c) {
                Ok(v) => Some(v),
                Err(e) => {
                    cx.at(Code::E0105, &["apps", name, "resources", "cpu"], e);
                    None
                }
            },
            None => Some(1.0),
        };
        let memory = match app.resources.as_ref().and_then(|r| r.memory.as_ref()) {
            Some(m) => match units::memory_mib(m) {
                Ok(v) => Some(v),
                Err(e) => {
                    cx.at(Code::E0105, &["apps", name, "resources", "memory"], e);
                    None
                }
            },
            None => Some(512),
        };
        let scaling = app.scaling.clone().unwrap_or_default();
        let concurrency = scaling.concurrency.unwrap_or(80);
        if let (Some(cpu), Some(mem)) = (cpu, memory) {
            for problem in units::check_cloud_run_limits(cpu, mem, concurrency) {
                cx.at(Code::E0209, &["apps", name, "resources"], problem);
            }
        }
        if let (Some(min), Some(max)) = (scaling.min, scaling.max)
            && min > max
        {
            cx.at(
                Code::E0209,
                &["apps", name, "scaling", "min"],
                format!("scaling.min ({min}) is larger than scaling.max ({max})"),
            );
        }
        if let Some(h) = &app.health {
            let mut secs = |field: &str, v: &Option<String>, min: u64, default: u64| -> u64 {
                match v {
                    Some(t) => units::duration_in(t, min, 240).unwrap_or_else(|e| {
                        cx.at(
                            Code::E0209,
                            &["apps", name, "health", field],
                            format!("health.{field} {e}"),
                        );
                        default
                    }),
                    None => default,
                }
            };
            let interval = secs("interval", &h.interval, 1, 10);
            let timeout = secs("timeout", &h.timeout, 1, 1);
            secs("initial_delay", &h.initial_delay, 0, 0);
            if timeout > interval {
                cx.at(
                    Code::E0209,
                    &["apps", name, "health", "timeout"],
                    format!(
                        "health.timeout ({timeout}s) is longer than health.interval ({interval}s)"
                    ),
                );
            }
        }
        let svc = format!("{}-{name}", cfg.project);
        if let Err(e) = units::check_name(&units::CLOUD_RUN_SERVICE, &svc, previews) {
            cx.at_key(Code::E0207, &base, e)
                .set_hint("shorten the project or app name");
        }
    } else {
        for field in [
            "image",
            "region",
            "port",
            "command",
            "args",
            "resources",
            "scaling",
            "health",
        ] {
            if set(field) {
                cx.at_key(
                    Code::E0206,
                    &["apps", name, field],
                    format!("`{field}` applies to container apps (`runtime:`); `{name}` is a web app on Vercel"),
                );
            }
        }
        if let Some(node) = app.build.as_ref().and_then(|b| b.node)
            && ![20, 22, 24].contains(&node)
        {
            cx.at(
                Code::E0209,
                &["apps", name, "build", "node"],
                format!("Vercel runs Node.js 20, 22 or 24, not {node}"),
            );
        }
        let project = format!("{}-{name}", cfg.project);
        if let Err(e) = units::check_name(&units::VERCEL_PROJECT, &project, false) {
            cx.at_key(Code::E0207, &base, e);
        }
        if let Some(b) = &app.build
            && let Some(o) = &b.output
            && let Err(e) = units::repo_path(o)
        {
            cx.at(Code::E0212, &["apps", name, "build", "output"], e);
        }
    }
    if let Some(root_dir) = &app.root
        && let Err(e) = units::repo_path(root_dir)
    {
        cx.at(Code::E0212, &["apps", name, "root"], e);
    }
    if let Some(f) = &app.env_file
        && let Err(e) = units::repo_path(f)
    {
        cx.at(Code::E0212, &["apps", name, "env_file"], e);
    }

    // preview hostnames `<app>-pr-<N>` must fit one DNS label
    if previews && let Err(e) = units::check_name(&units::DNS_LABEL, name, true) {
        cx.at_key(Code::E0207, &base, e);
    }

    // domains
    for (i, d) in app.domains.iter().enumerate() {
        let idx = i.to_string();
        let path = ["apps", name, "domains", idx.as_str()];
        if let Err(e) = units::hostname(d) {
            cx.at(Code::E0105, &path, e);
            continue;
        }
        match zone {
            None if defined.edge => {}
            None => {
                cx.at(
                    Code::E0204,
                    &path,
                    format!("domain {} needs `edge.zone`: Cloudflare fronts every domain Telbase serves", quote(d)),
                );
            }
            Some(z) if !units::under_zone(d, z) => {
                cx.at(
                    Code::E0204,
                    &path,
                    format!("domain {} is not under edge.zone `{z}`", quote(d)),
                );
            }
            Some(_) => {}
        }
        if let Some(other) = domain_owner.insert(d.as_str(), name) {
            cx.at(
                Code::E0204,
                &path,
                if other == name {
                    format!("domain {} is listed twice", quote(d))
                } else {
                    format!("domain {} is already used by app `{other}`", quote(d))
                },
            );
        }
    }

    // access
    if let Some(access) = &app.access {
        check_access_ref(cx, defined, access, &["apps", name, "access"]);
        if access != "public" && app.domains.is_empty() && defined.policies.contains(access) {
            cx.at(
                Code::E0206,
                &["apps", name, "access"],
                "an access policy protects the app's domains through Cloudflare, and this app has none",
            )
            .set_hint("add a domain under edge.zone, or set `access: public`");
        }
    }

    // env
    for (var, value) in &app.env {
        let path = ["apps", name, "env", var.as_str()];
        if reserved_by_platform(var, container) {
            cx.at_key(
                Code::E0211,
                &path,
                format!(
                    "`{var}` is set by {} itself and cannot be defined",
                    if container { "Cloud Run" } else { "Vercel" }
                ),
            );
        }
        // Secret values of a container app become Secret Manager secrets named
        // `<service>-<VAR>`; secret IDs are at most 255 characters.
        let secret_id_len =
            cfg.project.len() + name.len() + var.len() + 2 + units::PREVIEW_SUFFIX_MAX;
        if container && !matches!(value, EnvValue::Plain(_)) && secret_id_len > 255 {
            cx.at_key(
                Code::E0207,
                &path,
                format!("the Secret Manager secret for `{var}` would have a {secret_id_len}-character ID; the limit is 255"),
            );
        }
        match value {
            EnvValue::Plain(v) => check_plain(cx, v, &path),
            EnvValue::Spec(spec) => {
                let given = [
                    spec.value.is_some(),
                    spec.sealed.is_some(),
                    spec.from.is_some(),
                    spec.stored.is_some(),
                ]
                .iter()
                .filter(|b| **b)
                .count();
                if given != 1 {
                    cx.at(
                        Code::E0103,
                        &path,
                        format!("env `{var}` needs exactly one of `value`, `sealed`, `from` or `stored`, found {given}"),
                    );
                    continue;
                }
                if spec.stored == Some(false) {
                    let mut p = path.to_vec();
                    p.push("stored");
                    cx.at(
                        Code::E0103,
                        &p,
                        format!("env `{var}`: `stored: false` gives no value; write `stored: true` (the value is set with `telbase env set {var}`) or use `value`, `sealed` or `from`"),
                    );
                }
                if let Some(v) = &spec.value {
                    let mut p = path.to_vec();
                    p.push("value");
                    check_plain(cx, v, &p);
                }
                if let Some(s) = &spec.sealed
                    && let Err(e) = check_sealed(s)
                {
                    let mut p = path.to_vec();
                    p.push("sealed");
                    cx.at(Code::E0210, &p, e)
                        .set_hint("seal values with `telbase secrets seal` (or `age -a -r <recipient>`) and paste the whole armored block");
                }
                if let Some(f) = &spec.from {
                    let mut p = path.to_vec();
                    p.push("from");
                    check_from(cx, cfg, defined, name, f, &p);
                }
            }
        }
    }
}

fn check_gcp_region(cx: &mut Ctx, region: &str, path: &[&str]) {
    let well_formed = region.split_once('-').is_some_and(|(a, b)| {
        !a.is_empty()
            && a.chars().all(|c| c.is_ascii_lowercase())
            && b.chars().last().is_some_and(|c| c.is_ascii_digit())
            && b.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    });
    check_region(cx, region, path, well_formed, GCP_REGIONS, "Google Cloud");
}

/// A malformed region is an error; a well-formed one Telbase does not know is a warning,
/// because providers open regions faster than Telbase releases.
fn check_region(
    cx: &mut Ctx,
    region: &str,
    path: &[&str],
    well_formed: bool,
    known: &[&str],
    provider: &str,
) {
    if well_formed && known.contains(&region) {
        return;
    }
    let suggestion = did_you_mean(region, known.iter().copied());
    if well_formed {
        let d = cx.at(
            Code::W0301,
            path,
            format!("{} is not a {provider} region Telbase knows", quote(region)),
        );
        if let Some(s) = suggestion {
            d.set_hint(format!(
                "did you mean `{s}`? (ignore this if the region is new)"
            ));
        }
    } else {
        let d = cx.at(
            Code::E0105,
            path,
            format!("{} is not a {provider} region", quote(region)),
        );
        if let Some(s) = suggestion {
            d.set_hint(format!("did you mean `{s}`?"));
        }
    }
}

fn check_image(cx: &mut Ctx, image: &str, path: &[&str]) {
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        cx.at(Code::E0105, path, "an image reference has no spaces");
        return;
    }
    let mut rest = image;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            cx.at(Code::E0105, path, "unterminated `${` in image");
            return;
        };
        let var = &after[..end];
        if !matches!(var, "git.sha" | "git.short_sha") {
            cx.at(
                Code::E0105,
                path,
                format!("unknown variable `${{{var}}}` in image"),
            )
            .set_hint("available: ${git.sha}, ${git.short_sha}");
        }
        rest = &after[end + 1..];
    }
    let name_part = image.split('@').next().unwrap_or(image);
    let last = name_part.rsplit('/').next().unwrap_or(name_part);
    if !last.contains(':') && !image.contains('@') {
        cx.at(
            Code::E0209,
            path,
            format!("image {} has no tag or digest", quote(image)),
        )
        .set_hint("pin it, e.g. `:${git.sha}`; `latest` cannot be reconciled to a commit");
    } else if last.ends_with(":latest") {
        cx.at(
            Code::E0209,
            path,
            "the `latest` tag cannot be reconciled: it names no particular build",
        )
        .set_hint("use `:${git.sha}` or a digest");
    }
}

/// Warn when a plain value looks like a credential: it would be stored in the repository in
/// the clear and shown in plans.
fn check_plain(cx: &mut Ctx, value: &str, path: &[&str]) {
    let url_with_password = value.find("://").is_some_and(|i| {
        let rest = &value[i + 3..];
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        authority
            .rsplit_once('@')
            .is_some_and(|(userinfo, _)| userinfo.contains(':'))
    });
    let known_prefix = [
        "sk_live_",
        "rk_live_",
        "ghp_",
        "gho_",
        "github_pat_",
        "xoxb-",
        "xoxp-",
        "AKIA",
        "-----BEGIN",
    ]
    .iter()
    .any(|p| value.starts_with(p));
    if url_with_password || known_prefix {
        cx.at(
            Code::W0302,
            path,
            "this plain value looks like a credential",
        )
        .set_hint("seal it: `telbase secrets seal`, or use `from:` for a database URL");
    }
}

/// Check an armored age message without decrypting it: the armor (markers, base64, line
/// lengths) and the header (version line, recipient stanzas, MAC line).
pub fn check_sealed(text: &str) -> Result<(), String> {
    let trimmed = text.trim();
    if !trimmed.starts_with("-----BEGIN AGE ENCRYPTED FILE-----") {
        return Err("`sealed` is not an ASCII-armored age message (it must start with -----BEGIN AGE ENCRYPTED FILE-----)".into());
    }
    let mut sink = Vec::new();
    age::armor::ArmoredReader::new(trimmed.as_bytes())
        .take(super::yaml::MAX_CONFIG_BYTES)
        .read_to_end(&mut sink)
        .map_err(|e| format!("`sealed` has broken armor: {}", one_line(&e.to_string())))?;
    match age::Decryptor::new(age::armor::ArmoredReader::new(trimmed.as_bytes())) {
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "`sealed` is not a valid age message: its header is truncated or corrupted ({})",
            one_line(&e.to_string())
        )),
    }
}

/// Library error texts may span lines; a diagnostic message is one line.
fn one_line(text: &str) -> String {
    diag::sanitize(&text.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn check_from(
    cx: &mut Ctx,
    cfg: &ConfigFile,
    defined: &Defined,
    app: &str,
    text: &str,
    path: &[&str],
) {
    let parts: Vec<&str> = text.split('.').collect();
    let [section, target, output] = parts.as_slice() else {
        cx.at(
            Code::E0202,
            path,
            format!("{} is not a reference", quote(text)),
        )
        .set_hint("write databases.<name>.<output> or apps.<name>.<output>");
        return;
    };
    match *section {
        "databases" => {
            if !defined.databases.contains(*target) {
                let d = cx.at(
                    Code::E0202,
                    path,
                    format!("unknown database `{target}` in {}", quote(text)),
                );
                if let Some(s) = did_you_mean(target, defined.databases.iter().map(String::as_str))
                {
                    d.set_hint(format!("did you mean `databases.{s}.{output}`?"));
                }
                return;
            }
            // A malformed database was pruned; its outputs are unknown, so say nothing more.
            let Some(db) = cfg.databases.get(*target) else {
                return;
            };
            let outputs = outputs_of_database(db);
            if outputs.is_empty() {
                return;
            }
            if !outputs.contains(output) {
                let d = cx.at(
                    Code::E0202,
                    path,
                    format!("database `{target}` has no output `{output}`"),
                );
                match did_you_mean(output, outputs.iter().copied()) {
                    Some(s) => d.set_hint(format!(
                        "did you mean `{s}`? outputs: {}",
                        outputs.join(", ")
                    )),
                    None => d.set_hint(format!("outputs: {}", outputs.join(", "))),
                }
            }
        }
        "apps" => {
            if !defined.apps.contains(*target) {
                let d = cx.at(
                    Code::E0202,
                    path,
                    format!("unknown app `{target}` in {}", quote(text)),
                );
                if let Some(s) = did_you_mean(target, defined.apps.iter().map(String::as_str)) {
                    d.set_hint(format!("did you mean `apps.{s}.{output}`?"));
                }
                return;
            }
            if *target == app {
                cx.at(
                    Code::E0203,
                    path,
                    format!("app `{app}` refers to its own {output}"),
                )
                .set_hint(
                    "an app's own URL is known to it at run time; Vercel and Cloud Run set it",
                );
                return;
            }
            if !APP_OUTPUTS.contains(output) {
                cx.at(
                    Code::E0202,
                    path,
                    format!("app `{target}` has no output `{output}`"),
                )
                .set_hint(format!("outputs: {}", APP_OUTPUTS.join(", ")));
            }
        }
        other => {
            let d = cx.at(Code::E0202, path, format!("`{other}` cannot be referenced"));
            if let Some(s) = did_you_mean(other, ["databases", "apps"]) {
                d.set_hint(format!("did you mean `{s}`?"));
            }
        }
    }
}

/// Apps that read each other's outputs cannot be created in any order.
fn check_cycles(cx: &mut Ctx, edges: &BTreeMap<&str, Vec<(&str, &str)>>) {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    let mut mark: BTreeMap<&str, Mark> = edges.keys().map(|k| (*k, Mark::New)).collect();
    let mut reported: BTreeSet<Vec<&str>> = BTreeSet::new();
    // Iterative DFS: app references come from a user file and could be deep.
    for start in edges.keys() {
        if mark[start] != Mark::New {
            continue;
        }
        let mut stack: Vec<(&str, usize)> = vec![(start, 0)];
        mark.insert(start, Mark::Active);
        while let Some((node, i)) = stack.pop() {
            let next = edges.get(node).and_then(|e| e.get(i));
            match next {
                None => {
                    mark.insert(node, Mark::Done);
                }
                Some(&(var, target)) => {
                    stack.push((node, i + 1));
                    match mark.get(target).copied() {
                        Some(Mark::New) => {
                            mark.insert(target, Mark::Active);
                            stack.push((target, 0));
                        }
                        Some(Mark::Active) if target != node => {
                            let from = stack.iter().position(|(n, _)| *n == target).unwrap_or(0);
                            let mut cycle: Vec<&str> =
                                stack[from..].iter().map(|(n, _)| *n).collect();
                            let mut key = cycle.clone();
                            key.sort_unstable();
                            if reported.insert(key) {
                                cycle.push(target);
                                cx.at(
                                    Code::E0203,
                                    &["apps", node, "env", var, "from"],
                                    format!("apps refer to each other in a cycle: {}", cycle.join(" → ")),
                                )
                                .set_hint("break the cycle: one of them must learn the other's address at run time");
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

fn check_database(
    cx: &mut Ctx,
    node: &Node,
    cfg: &ConfigFile,
    name: &str,
    db: &Database,
    previews: bool,
) {
    let base = ["databases", name];
    let Some(provider) = effective_provider(db) else {
        let engine = match db.engine {
            Engine::Postgres => "postgres",
            Engine::Sqlite => "sqlite",
        };
        cx.at(
            Code::E0205,
            &["databases", name, "provider"],
            format!("{engine} does not run on this provider"),
        )
        .set_hint(match db.engine {
            Engine::Postgres => "postgres runs on `neon` (default) or `cloudsql`",
            Engine::Sqlite => "sqlite runs on `turso`",
        });
        return;
    };
    let present = |f: &str| node.key(f).is_some();
    let not_here: &[&str] = match provider {
        DatabaseProvider::Neon => &["tier", "disk_gb", "group", "location"],
        DatabaseProvider::Cloudsql => &["group", "location", "branch_per_preview"],
        DatabaseProvider::Turso => &["region", "version", "tier", "disk_gb"],
    };
    let provider_name = match provider {
        DatabaseProvider::Neon => "Neon",
        DatabaseProvider::Cloudsql => "Cloud SQL",
        DatabaseProvider::Turso => "Turso",
    };
    let misplaced: Vec<&str> = not_here.iter().copied().filter(|f| present(f)).collect();
    for f in misplaced {
        let d = cx.at_key(
            Code::E0206,
            &["databases", name, f],
            format!("`{f}` does not apply to a {provider_name} database"),
        );
        if f == "branch_per_preview" {
            d.set_hint("Cloud SQL has no branches; a preview would need a new instance");
        }
    }
    let prefixed = format!("{}-{name}", cfg.project);
    let pg_ident = name.replace('-', "_");
    match provider {
        DatabaseProvider::Neon => {
            if let Some(r) = &db.region {
                let well_formed = (r.starts_with("aws-") || r.starts_with("azure-"))
                    && r.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
                check_region(
                    cx,
                    r,
                    &["databases", name, "region"],
                    well_formed,
                    NEON_REGIONS,
                    "Neon",
                );
            }
            if let Some(v) = db.version
                && !(14..=17).contains(&v)
            {
                cx.at(
                    Code::E0209,
                    &["databases", name, "version"],
                    format!("Neon runs Postgres 14 to 17, not {v}"),
                );
            }
            if let Err(e) = units::check_name(&units::NEON_PROJECT, &prefixed, false) {
                cx.at_key(Code::E0207, &base, e);
            }
            if let Err(e) = units::check_name(&units::POSTGRES_IDENTIFIER, &pg_ident, false) {
                cx.at_key(Code::E0207, &base, e);
            }
        }
        DatabaseProvider::Cloudsql => {
            match &db.region {
                None => {
                    cx.at_key(
                        Code::E0102,
                        &base,
                        format!("Cloud SQL database `{name}` needs a `region`"),
                    )
                    .set_hint("a Google Cloud region such as `us-central1`");
                }
                Some(r) => check_gcp_region(cx, r, &["databases", name, "region"]),
            }
            if let Some(v) = db.version
                && !(13..=17).contains(&v)
            {
                cx.at(
                    Code::E0209,
                    &["databases", name, "version"],
                    format!("Telbase creates Cloud SQL for PostgreSQL 13 to 17, not {v}"),
                );
            }
            if let Some(t) = &db.tier
                && let Err(e) = check_tier(t)
            {
                cx.at(Code::E0209, &["databases", name, "tier"], e);
            }
            if let Some(g) = db.disk_gb
                && g < 10
            {
                cx.at(
                    Code::E0209,
                    &["databases", name, "disk_gb"],
                    format!("Cloud SQL disks are at least 10 GB, not {g}"),
                );
            }
            if let Err(e) = units::check_name(&units::CLOUD_SQL_INSTANCE, &prefixed, false) {
                cx.at_key(Code::E0207, &base, e);
            }
            if let Err(e) = units::check_name(&units::POSTGRES_IDENTIFIER, &pg_ident, false) {
                cx.at_key(Code::E0207, &base, e);
            }
        }
        DatabaseProvider::Turso => {
            if db.location.is_none() {
                cx.at_key(
                    Code::E0102,
                    &base,
                    format!("Turso database `{name}` needs a `location`"),
                )
                .set_hint("a Turso location such as `aws-us-east-1`");
            }
            if let Some(l) = &db.location
                && !l
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            {
                cx.at(
                    Code::E0105,
                    &["databases", name, "location"],
                    format!("{} is not a Turso location", quote(l)),
                );
            }
            if let Some(g) = &db.group
                && (g.is_empty()
                    || !g
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
            {
                cx.at(
                    Code::E0105,
                    &["databases", name, "group"],
                    format!("{} is not a valid Turso group name", quote(g)),
                );
            }
            if let Err(e) = units::check_name(
                &units::TURSO_DATABASE,
                &prefixed,
                previews && db.branch_per_preview,
            ) {
                cx.at_key(Code::E0207, &base, e);
            }
        }
    }
}

/// Cloud SQL machine tiers: the shared-core tiers, and `db-custom-<vCPUs>-<MiB>` with 1 or an
/// even number of vCPUs up to 96, and 0.9 to 6.5 GiB per vCPU in multiples of 256 MiB (from
/// "Machine series overview" in the Cloud SQL documentation).
fn check_tier(tier: &str) -> Result<(), String> {
    if matches!(tier, "db-f1-micro" | "db-g1-small") {
        return Ok(());
    }
    if let Some(rest) = tier.strip_prefix("db-custom-") {
        let mut it = rest.split('-');
        let (Some(c), Some(m), None) = (it.next(), it.next(), it.next()) else {
            return Err(format!("`{tier}` is not db-custom-<vCPUs>-<MiB>"));
        };
        let (Ok(cpus), Ok(mib)) = (c.parse::<u32>(), m.parse::<u32>()) else {
            return Err(format!("`{tier}` is not db-custom-<vCPUs>-<MiB>"));
        };
        if !(cpus == 1 || (cpus % 2 == 0 && (2..=96).contains(&cpus))) {
            return Err(format!(
                "`{tier}`: vCPUs must be 1 or an even number up to 96"
            ));
        }
        if mib % 256 != 0 {
            return Err(format!("`{tier}`: memory must be a multiple of 256 MiB"));
        }
        let per_cpu = f64::from(mib) / 1024.0 / f64::from(cpus);
        if !(0.9..=6.5).contains(&per_cpu) {
            return Err(format!(
                "`{tier}`: memory must be 0.9 to 6.5 GiB per vCPU ({per_cpu:.2} given)"
            ));
        }
        return Ok(());
    }
    if tier.starts_with("db-perf-optimized-")
        || tier.starts_with("db-n1-")
        || tier.starts_with("db-n2-")
    {
        return Ok(());
    }
    Err(format!("`{tier}` is not a Cloud SQL tier Telbase knows"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers() {
        assert!(check_tier("db-custom-1-3840").is_ok());
        assert!(check_tier("db-custom-2-7680").is_ok());
        assert!(check_tier("db-custom-3-7680").is_err());
        assert!(check_tier("db-custom-1-100000").is_err());
        assert!(check_tier("db-huge").is_err());
    }

    #[test]
    fn sealed_rejects_garbage_and_accepts_armor() {
        assert!(check_sealed("hello").is_err());
        assert!(
            check_sealed(
                "-----BEGIN AGE ENCRYPTED FILE-----\nnot base64!\n-----END AGE ENCRYPTED FILE-----"
            )
            .is_err()
        );
    }
}

//! The `telbase.yaml` file format, version 1, as serde types.
//!
//! These types are the single source of truth for the file's shape: the JSON Schema in
//! `schemas/telbase.schema.json` is generated from them (doc comments become the descriptions
//! editors show), the structural validator checks documents against that schema, and only a
//! document that passed it is deserialized into these types. Everything that needs more than a
//! shape (references, provider limits, units) is checked in `semantic.rs`, so most leaf values
//! stay strings here and are parsed there, where a failure can point at the exact node.

use std::collections::BTreeMap;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize};

/// Patterns shared by the schema and the semantic checks.
pub(crate) const NAME_PATTERN: &str = "^[a-z]([a-z0-9-]*[a-z0-9])?$";
pub(crate) const PROJECT_PATTERN: &str = "^[a-z][a-z0-9-]{0,38}[a-z0-9]$";
pub(crate) const ENV_NAME_PATTERN: &str = "^[A-Za-z_][A-Za-z0-9_]*$";
pub(crate) const DURATION_PATTERN: &str = "^[0-9]{1,9}(s|m|h|d|w)$";
pub(crate) const MEMORY_PATTERN: &str = "^[0-9]{1,6}(Mi|Gi)$";

/// A Telbase project: everything one repository asks Telbase to run.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "telbase.yaml")]
pub struct ConfigFile {
    /// Version of the telbase.yaml language. Only `1` exists; Telbase refuses versions it does
    /// not know rather than guessing.
    #[schemars(schema_with = "version_schema")]
    pub version: u32,
    /// Project slug: lowercase letters, digits and dashes, 2 to 40 characters, starting with a
    /// letter. It prefixes the name of every resource Telbase creates, which is how Telbase
    /// recognises what it owns.
    #[schemars(regex(pattern = PROJECT_PATTERN), extend("x-expected" = "2 to 40 lowercase letters, digits and dashes, starting with a letter and not ending with a dash"))]
    pub project: String,
    /// Where production comes from and how pull-request previews behave.
    #[serde(default)]
    pub environments: Environments,
    /// Cloudflare in front of every domain: proxied DNS, TLS 1.2 or newer, HTTPS only, HSTS.
    #[serde(default)]
    pub edge: Option<Edge>,
    /// Named Cloudflare Access policies. Apps and previews refer to them by name; `public` is
    /// reserved and means "no Access policy".
    #[serde(default)]
    #[schemars(extend("propertyNames" = { "pattern": NAME_PATTERN, "not": { "const": "public" } }))]
    pub access: BTreeMap<String, AccessPolicy>,
    /// Apps by name. A `framework` deploys to Vercel, a `runtime` to Google Cloud Run.
    #[serde(default)]
    #[schemars(extend("propertyNames" = { "pattern": NAME_PATTERN }))]
    pub apps: BTreeMap<String, App>,
    /// Databases by name. Postgres goes to Neon unless `provider: cloudsql` is written;
    /// SQLite goes to Turso.
    #[serde(default)]
    #[schemars(extend("propertyNames" = { "pattern": NAME_PATTERN }))]
    pub databases: BTreeMap<String, Database>,
    /// How Telbase keeps the providers matched to this file.
    #[serde(default)]
    pub reconcile: Reconcile,
    /// The apps' SOPS env files as read when the file was checked (structure only, no
    /// plaintext); filled by `config::check_str_in`, used by lowering.
    #[serde(skip)]
    #[schemars(skip)]
    pub env_files: super::env_file::EnvFiles,
}

fn version_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "integer", "const": 1 })
}

/// Environments Telbase manages.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Environments {
    /// The production environment.
    #[serde(default)]
    pub production: Production,
    /// Pull-request previews. Absent means no previews.
    #[serde(default)]
    pub preview: Option<Preview>,
}

/// The production environment.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Production {
    /// Pushes to this branch reconcile production. Default `main`.
    #[serde(default = "default_branch")]
    #[schemars(length(min = 1, max = 255))]
    pub branch: String,
}

impl Default for Production {
    fn default() -> Self {
        Self {
            branch: default_branch(),
        }
    }
}

fn default_branch() -> String {
    "main".to_owned()
}

/// Pull-request previews: one environment per open pull request, torn down when it closes.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Preview {
    /// Create a preview for every open pull request. Default `true`.
    #[serde(default = "yes")]
    pub pull_requests: bool,
    /// Previews idle longer than this are swept, e.g. `7d`. Between 1h and 90d; default 7d.
    #[serde(default)]
    #[schemars(regex(pattern = DURATION_PATTERN), extend("x-expected" = "a duration such as 12h, 7d or 2w"))]
    pub ttl: Option<String>,
    /// Who may open previews: the name of an access policy, or `public`. Required, so that
    /// previews are never public by accident.
    #[schemars(length(min = 1))]
    pub access: String,
    /// At most this many previews exist at once; the least recently updated is swept first.
    #[serde(default)]
    #[schemars(range(min = 1, max = 100))]
    pub max: Option<u32>,
}

fn yes() -> bool {
    true
}

/// The Cloudflare edge baseline for every domain in this file.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Edge {
    /// The Cloudflare zone (e.g. `acme.com`). Every app domain must be this name or under it.
    #[schemars(length(min = 1, max = 253))]
    pub zone: String,
    /// Minimum TLS version clients may use: `"1.2"` (default) or `"1.3"`. Older versions are
    /// not offered: the security baseline is TLS 1.2 or newer.
    #[serde(default)]
    pub min_tls: TlsVersion,
    /// Redirect every HTTP request to HTTPS. Part of the baseline: it can be written, but only
    /// as `true`.
    #[serde(default = "yes")]
    pub always_https: bool,
    /// HTTP Strict Transport Security. Always on; these settings tune it.
    #[serde(default)]
    pub hsts: Hsts,
}

/// A minimum TLS version. Written quoted (`"1.2"`) or bare (`1.2`, which YAML reads as a number).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub enum TlsVersion {
    /// TLS 1.2
    #[default]
    #[serde(rename = "1.2")]
    V1_2,
    /// TLS 1.3
    #[serde(rename = "1.3")]
    V1_3,
}

impl TlsVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::V1_2 => "1.2",
            TlsVersion::V1_3 => "1.3",
        }
    }
}

impl<'de> Deserialize<'de> for TlsVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            F(f64),
        }
        // A bare `1.2` arrives as a float; its shortest display is the same text.
        let text = match Raw::deserialize(d)? {
            Raw::S(s) => s,
            Raw::F(f) => f.to_string(),
        };
        match text.as_str() {
            "1.2" => Ok(TlsVersion::V1_2),
            "1.3" => Ok(TlsVersion::V1_3),
            _ => Err(serde::de::Error::custom("expected \"1.2\" or \"1.3\"")),
        }
    }
}

impl JsonSchema for TlsVersion {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "TlsVersion".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Minimum TLS version: \"1.2\" or \"1.3\".",
            "enum": ["1.2", "1.3", 1.2, 1.3]
        })
    }
}

/// HSTS settings. HSTS itself cannot be turned off.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Hsts {
    /// How long browsers remember to use HTTPS only: a duration between 1d and 365d
    /// (Cloudflare's maximum). Default 365d.
    #[serde(default)]
    #[schemars(regex(pattern = DURATION_PATTERN), extend("x-expected" = "a duration such as 180d or 365d"))]
    pub max_age: Option<String>,
    /// Apply to every subdomain as well. Default `true`.
    #[serde(default = "yes")]
    pub include_subdomains: bool,
    /// Ask to be on browsers' preload list; needs `include_subdomains` and a max_age of 365d.
    #[serde(default)]
    pub preload: bool,
}

impl Default for Hsts {
    fn default() -> Self {
        Self {
            max_age: None,
            include_subdomains: true,
            preload: false,
        }
    }
}

/// A Cloudflare Access policy: who may reach an app, and how they sign in.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessPolicy {
    /// Identity providers people sign in with.
    #[schemars(length(min = 1), extend("uniqueItems" = true))]
    pub login: Vec<IdentityProvider>,
    /// Email domains allowed in, e.g. `acme.com` (without `@`).
    #[serde(default)]
    pub allow_domains: Vec<String>,
    /// Individual email addresses allowed in, in addition to the domains.
    #[serde(default)]
    pub allow_emails: Vec<String>,
    /// How long a sign-in lasts before people must sign in again: 15m to 730h. Default 24h.
    #[serde(default)]
    #[schemars(regex(pattern = DURATION_PATTERN), extend("x-expected" = "a duration such as 30m, 24h or 7d"))]
    pub session: Option<String>,
}

/// An identity provider for Cloudflare Access.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum IdentityProvider {
    /// Google Workspace and personal Google accounts.
    Google,
    /// Microsoft 365 and Entra ID.
    Microsoft,
    /// GitHub accounts.
    Github,
}

/// An app. Exactly one of `framework` (Vercel) or `runtime` (Cloud Run).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct App {
    /// A web framework; the app deploys to Vercel from the repository.
    #[serde(default)]
    pub framework: Option<Framework>,
    /// A container runtime; the app runs `image` on Google Cloud Run.
    #[serde(default)]
    pub runtime: Option<Runtime>,
    /// Directory of the app inside the repository (relative, no `..`). Default the root.
    #[serde(default)]
    pub root: Option<String>,
    /// Build settings for web apps; each overrides the framework's default.
    #[serde(default)]
    pub build: Option<Build>,
    /// Container image to run. `${git.sha}` and `${git.short_sha}` expand to the commit being
    /// reconciled.
    #[serde(default)]
    #[schemars(length(min = 1, max = 1024))]
    pub image: Option<String>,
    /// Google Cloud region for a container app, e.g. `us-central1`. Required for containers.
    #[serde(default)]
    pub region: Option<String>,
    /// Port the container listens on. Default 8080.
    #[serde(default)]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u32>,
    /// Entrypoint override for a container.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Arguments for the container's entrypoint.
    #[serde(default)]
    pub args: Option<Vec<String>>,
    /// CPU and memory limits for a container.
    #[serde(default)]
    pub resources: Option<Resources>,
    /// Instance counts and per-instance concurrency for a container.
    #[serde(default)]
    pub scaling: Option<Scaling>,
    /// HTTP health check for a container: startup and liveness probes.
    #[serde(default)]
    pub health: Option<Health>,
    /// Custom domains. With `edge`, each must be the zone or under it.
    #[serde(default)]
    pub domains: Vec<String>,
    /// `public`, or the name of an access policy. Default `public`.
    #[serde(default)]
    pub access: Option<String>,
    /// Environment variables, by name.
    #[serde(default)]
    #[schemars(extend("propertyNames" = { "pattern": ENV_NAME_PATTERN }))]
    pub env: BTreeMap<String, EnvValue>,
    /// A SOPS-encrypted file (YAML or JSON, age recipients) whose keys become environment
    /// variables; relative to this file.
    #[serde(default)]
    pub env_file: Option<String>,
}

/// Web frameworks Telbase deploys to Vercel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Framework {
    /// Next.js
    Nextjs,
    /// Vite
    Vite,
    /// Astro
    Astro,
    /// SvelteKit
    Sveltekit,
    /// Nuxt
    Nuxt,
    /// Remix
    Remix,
    /// Static files, no framework build preset.
    Static,
}

/// Container runtimes Telbase runs on Cloud Run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// Any container image.
    Docker,
    /// A Django app in a container.
    Django,
    /// A Go service in a container.
    Go,
    /// A Node.js service in a container.
    Node,
    /// A Python service in a container.
    Python,
}

/// Build settings for a web app.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Build {
    /// Command that builds the app.
    #[serde(default)]
    pub command: Option<String>,
    /// Command that installs dependencies.
    #[serde(default)]
    pub install: Option<String>,
    /// Directory with the build output, relative to `root`.
    #[serde(default)]
    pub output: Option<String>,
    /// Node.js major version on Vercel: 20, 22 or 24.
    #[serde(default)]
    pub node: Option<u32>,
}

/// CPU and memory limits of one container instance.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// vCPUs: a number such as 1, 2, 4, 6 or 8, or a fraction below 1 (e.g. 0.5); written as a
    /// number or a string. Default 1.
    #[serde(default)]
    pub cpu: Option<Cpu>,
    /// Memory, e.g. `512Mi` or `2Gi`. Default 512Mi.
    #[serde(default)]
    #[schemars(regex(pattern = MEMORY_PATTERN), extend("x-expected" = "a size such as 512Mi or 2Gi"))]
    pub memory: Option<String>,
}

/// vCPUs, as written: a number, or a string holding a number or millicores (`500m`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Cpu {
    /// `cpu: 1`
    Number(f64),
    /// `cpu: "1"` or `cpu: 500m`
    Text(String),
}

impl<'de> Deserialize<'de> for Cpu {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(f64),
            S(String),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::N(n) => Cpu::Number(n),
            Raw::S(s) => Cpu::Text(s),
        })
    }
}

impl JsonSchema for Cpu {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Cpu".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "vCPUs: a number (1, 2, 4, 6, 8, or a fraction below 1) or a string such as \"1\" or \"500m\".",
            "type": ["number", "string"]
        })
    }
}

/// Instance scaling for a container.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Scaling {
    /// Instances kept warm. Default 0 (scale to zero).
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub min: Option<u32>,
    /// Most instances at once. Default 100.
    #[serde(default)]
    #[schemars(range(min = 1, max = 1000))]
    pub max: Option<u32>,
    /// Requests one instance serves at once. Default 80.
    #[serde(default)]
    #[schemars(range(min = 1, max = 1000))]
    pub concurrency: Option<u32>,
}

/// An HTTP health check, used as the startup and the liveness probe.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// Path probed with HTTP GET, starting with `/`.
    #[schemars(regex(pattern = "^/"), extend("x-expected" = "a path starting with /"))]
    pub path: String,
    /// Time between probes, 1s to 240s. Default 10s.
    #[serde(default)]
    #[schemars(regex(pattern = DURATION_PATTERN), extend("x-expected" = "a duration such as 10s or 1m"))]
    pub interval: Option<String>,
    /// How long one probe may take, 1s to 240s and not more than `interval`. Default 1s.
    #[serde(default)]
    #[schemars(regex(pattern = DURATION_PATTERN), extend("x-expected" = "a duration such as 1s or 5s"))]
    pub timeout: Option<String>,
    /// Wait this long after start before probing, 0s to 240s. Default 0s.
    #[serde(default)]
    #[schemars(regex(pattern = DURATION_PATTERN), extend("x-expected" = "a duration such as 0s or 30s"))]
    pub initial_delay: Option<String>,
    /// Consecutive failures before the instance is restarted. Default 3.
    #[serde(default)]
    #[schemars(range(min = 1, max = 100))]
    pub failure_threshold: Option<u32>,
}

/// An environment variable's value: a plain scalar, or a map with exactly one of `value`,
/// `sealed`, `from` or `stored`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum EnvValue {
    /// `NAME: text` (numbers and booleans are kept as written).
    Plain(String),
    /// `NAME: { value | sealed | from | stored, only }`
    Spec(EnvSpec),
}

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            I(i64),
            F(f64),
            B(bool),
            Spec(EnvSpec),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::S(s) => EnvValue::Plain(s),
            Raw::I(i) => EnvValue::Plain(i.to_string()),
            Raw::F(f) => EnvValue::Plain(f.to_string()),
            Raw::B(b) => EnvValue::Plain(b.to_string()),
            Raw::Spec(s) => EnvValue::Spec(s),
        })
    }
}

impl JsonSchema for EnvValue {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "EnvValue".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let spec = generator.subschema_for::<EnvSpec>();
        json_schema!({
            "description": "A plain value (string, number or boolean), or a map with exactly one of `value`, `sealed` (an age-armored secret), `from` (a database or app output such as `databases.main.url`) or `stored: true` (a secret set with `telbase env set`).",
            "anyOf": [ { "type": ["string", "number", "boolean"] }, spec ]
        })
    }
}

/// The long form of an environment variable.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvSpec {
    /// A plain value.
    #[serde(default)]
    pub value: Option<String>,
    /// A secret sealed with `telbase secrets seal` (age, ASCII-armored). Opened only in
    /// memory, at the moment it is handed to the provider.
    #[serde(default)]
    pub sealed: Option<String>,
    /// An output of another resource, fetched from its provider at apply time and never
    /// stored: `databases.<name>.<url|host|port|database|user|password|token>` or
    /// `apps.<name>.<url|host>`.
    #[serde(default)]
    pub from: Option<String>,
    /// `true`: the value is kept outside the repository, envelope-encrypted in Telbase's
    /// store; set it with `telbase env set NAME --env production` (standard input). Opened
    /// only at the moment it is handed to the provider; plans show its keyed fingerprint.
    #[serde(default)]
    pub stored: Option<bool>,
    /// Limit the variable to one environment. Default both.
    #[serde(default)]
    pub only: Option<EnvTarget>,
}

/// An environment an env var applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EnvTarget {
    /// Production only.
    Production,
    /// Previews only.
    Preview,
}

/// A database.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Database {
    /// `postgres` or `sqlite`.
    pub engine: Engine,
    /// Where it runs. Postgres defaults to `neon`; `cloudsql` is used only when written here.
    /// SQLite runs on `turso`.
    #[serde(default)]
    pub provider: Option<DatabaseProvider>,
    /// Region: a Neon region (`aws-us-east-2`) or a Google Cloud region (`us-central1`).
    #[serde(default)]
    pub region: Option<String>,
    /// Postgres major version, 14 to 17. Default 17 on Neon, 16 on Cloud SQL.
    #[serde(default)]
    #[schemars(range(min = 9, max = 99))]
    pub version: Option<u32>,
    /// Cloud SQL machine tier, e.g. `db-custom-1-3840` or `db-g1-small`.
    #[serde(default)]
    pub tier: Option<String>,
    /// Cloud SQL storage in GB, 10 to 65536. Default 10.
    #[serde(default)]
    #[schemars(range(min = 1, max = 65536))]
    pub disk_gb: Option<u32>,
    /// Turso group the database belongs to. Default `default`.
    #[serde(default)]
    pub group: Option<String>,
    /// Turso location of the group, e.g. `aws-us-east-1`.
    #[serde(default)]
    pub location: Option<String>,
    /// Give every preview its own branch of this database (Neon branch, Turso database seeded
    /// from this one). Default `false`: previews share nothing with production unless asked.
    #[serde(default)]
    pub branch_per_preview: bool,
    /// Refuse to delete this database at the provider. Default `true`.
    #[serde(default)]
    pub deletion_protection: Option<bool>,
    /// Allow `prune` or a replacement to destroy this database's data. Default `false`.
    #[serde(default)]
    pub allow_data_loss: bool,
}

/// Database engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// PostgreSQL
    Postgres,
    /// SQLite (libSQL)
    Sqlite,
}

/// Database providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseProvider {
    /// Neon serverless Postgres (the default for postgres).
    Neon,
    /// Google Cloud SQL for PostgreSQL (explicit opt-in).
    Cloudsql,
    /// Turso (libSQL), for sqlite.
    Turso,
}

/// Reconcile settings.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Reconcile {
    /// How often to compare the providers with this file: a 5-field POSIX cron expression in
    /// UTC (minute hour day-of-month month day-of-week). Default every 15 minutes.
    #[serde(default)]
    pub drift: Option<String>,
    /// What to do about drift: `correct` it (default), `warn` only, or `ignore` it.
    #[serde(default)]
    pub on_drift: OnDrift,
    /// Delete resources Telbase created that are no longer in this file. Databases also need
    /// their own `allow_data_loss`. Default `false`.
    #[serde(default)]
    pub prune: bool,
}

impl Default for Reconcile {
    fn default() -> Self {
        Self {
            drift: None,
            on_drift: OnDrift::Correct,
            prune: false,
        }
    }
}

/// What to do about drift.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnDrift {
    /// Put the providers back to what the file says.
    #[default]
    Correct,
    /// Report drift, change nothing.
    Warn,
    /// Do not check.
    Ignore,
}

/// The JSON Schema of `telbase.yaml`, as committed in `schemas/telbase.schema.json`.
pub fn schema() -> serde_json::Value {
    let settings = schemars::generate::SchemaSettings::draft2020_12().for_deserialize();
    let mut schema = settings
        .into_generator()
        .into_root_schema_for::<ConfigFile>();
    schema.insert(
        "$id".to_owned(),
        "https://telbase.dev/schemas/telbase.schema.json".into(),
    );
    schema.to_value()
}

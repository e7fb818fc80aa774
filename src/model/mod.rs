//! Shared types of the reconcile loop: what Telbase wants to exist (`DesiredState`), keyed by
//! `ResourceKey`, with each resource's settings (`ResourceSpec`) and dependency edges.
//!
//! `config` produces these from a validated `telbase.yaml`; the planner, providers and
//! executor consume them. This module does no I/O and knows no provider wire format: a spec
//! says what the user asked for in provider terms (a Vercel project, a Cloud Run service), not
//! how the provider's API spells it.
//!
//! Names and short settings in keys and specs (regions, tiers, hostnames, env var names and
//! plain values, fingerprints) are `CompactString`s: up to 24 bytes they live inside the
//! struct instead of in a heap allocation of their own. Comparing a spec with its observed
//! counterpart, the planner's main work, then reads the resource's own memory, which lies
//! in order with its neighbours, rather than a handful of small allocations scattered over
//! the heap, each a cache miss of its own once the states no longer fit in the cache.

use compact_str::CompactString;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

/// The services Telbase talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Provider {
    Vercel,
    CloudRun,
    SecretManager,
    Neon,
    CloudSql,
    Turso,
    Cloudflare,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Vercel => "vercel",
            Provider::CloudRun => "cloud-run",
            Provider::SecretManager => "secret-manager",
            Provider::Neon => "neon",
            Provider::CloudSql => "cloud-sql",
            Provider::Turso => "turso",
            Provider::Cloudflare => "cloudflare",
        }
    }
}

/// The kinds of resource Telbase manages, each at exactly one provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    VercelProject,
    VercelDomain,
    CloudRunService,
    CloudRunDomainMapping,
    Secret,
    NeonProject,
    NeonBranch,
    NeonDatabase,
    CloudSqlInstance,
    CloudSqlDatabase,
    CloudSqlUser,
    TursoGroup,
    TursoDatabase,
    ZoneSettings,
    DnsRecord,
    AccessPolicy,
    AccessApplication,
}

impl Kind {
    /// Kinds a preview shares with production rather than owning: a preview deploys to the
    /// production Vercel project (as preview deployments with branch-scoped env vars),
    /// branches the production Neon project, and uses the production Turso group, Cloud SQL
    /// instance and zone settings. A preview observes them but never deletes or replaces
    /// them; its teardown removes only what is its own.
    pub fn shared_with_production(self) -> bool {
        matches!(
            self,
            Kind::VercelProject
                | Kind::NeonProject
                | Kind::NeonDatabase
                | Kind::TursoGroup
                | Kind::CloudSqlInstance
                | Kind::CloudSqlDatabase
                | Kind::CloudSqlUser
                | Kind::ZoneSettings
                | Kind::AccessPolicy
        )
    }
    pub const ALL: [Kind; 17] = [
        Kind::VercelProject,
        Kind::VercelDomain,
        Kind::CloudRunService,
        Kind::CloudRunDomainMapping,
        Kind::Secret,
        Kind::NeonProject,
        Kind::NeonBranch,
        Kind::NeonDatabase,
        Kind::CloudSqlInstance,
        Kind::CloudSqlDatabase,
        Kind::CloudSqlUser,
        Kind::TursoGroup,
        Kind::TursoDatabase,
        Kind::ZoneSettings,
        Kind::DnsRecord,
        Kind::AccessPolicy,
        Kind::AccessApplication,
    ];

    pub fn provider(self) -> Provider {
        match self {
            Kind::VercelProject | Kind::VercelDomain => Provider::Vercel,
            Kind::CloudRunService | Kind::CloudRunDomainMapping => Provider::CloudRun,
            Kind::Secret => Provider::SecretManager,
            Kind::NeonProject | Kind::NeonBranch | Kind::NeonDatabase => Provider::Neon,
            Kind::CloudSqlInstance | Kind::CloudSqlDatabase | Kind::CloudSqlUser => {
                Provider::CloudSql
            }
            Kind::TursoGroup | Kind::TursoDatabase => Provider::Turso,
            Kind::ZoneSettings | Kind::DnsRecord | Kind::AccessPolicy | Kind::AccessApplication => {
                Provider::Cloudflare
            }
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::VercelProject => "project",
            Kind::VercelDomain => "domain",
            Kind::CloudRunService => "service",
            Kind::CloudRunDomainMapping => "domain-mapping",
            Kind::Secret => "secret",
            Kind::NeonProject => "project",
            Kind::NeonBranch => "branch",
            Kind::NeonDatabase => "database",
            Kind::CloudSqlInstance => "instance",
            Kind::CloudSqlDatabase => "database",
            Kind::CloudSqlUser => "user",
            Kind::TursoGroup => "group",
            Kind::TursoDatabase => "database",
            Kind::ZoneSettings => "zone-settings",
            Kind::DnsRecord => "dns-record",
            Kind::AccessPolicy => "access-policy",
            Kind::AccessApplication => "access-app",
        }
    }
}

/// A resource's identity: provider, kind, and the name the provider sees. Stable across runs:
/// the same file always yields the same keys, which is what lets the planner match desired
/// resources with observed ones.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ResourceKey {
    pub kind: Kind,
    /// Inline up to 24 bytes (most names): a key is then one flat value, so comparing,
    /// hashing and cloning keys (the planner's main work on large states) never chases a
    /// pointer or allocates.
    pub name: CompactString,
}

impl ResourceKey {
    pub fn new(kind: Kind, name: impl Into<CompactString>) -> Self {
        Self {
            kind,
            name: name.into(),
        }
    }

    pub fn provider(&self) -> Provider {
        self.kind.provider()
    }

    /// The inverse of `Display`: `neon/database/notes-main`.
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.splitn(3, '/');
        let (provider, kind, name) = (parts.next()?, parts.next()?, parts.next()?);
        let kind = Kind::ALL
            .iter()
            .copied()
            .find(|k| k.provider().as_str() == provider && k.as_str() == kind)?;
        (!name.is_empty()).then(|| ResourceKey::new(kind, name))
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            self.provider().as_str(),
            self.kind.as_str(),
            self.name
        )
    }
}

/// Which environment a `DesiredState` describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "environment")]
pub enum Environment {
    Production,
    /// The preview of one pull request.
    Preview {
        pull_request: u64,
    },
}

/// Outputs a resource offers to env vars through `from:`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Output {
    Url,
    Host,
    Port,
    Database,
    User,
    Password,
    Token,
    /// A Cloud SQL database's URL through the Unix socket that Cloud Run's Cloud SQL volume
    /// mounts (`host=/cloudsql/<connectionName>`), for a Cloud Run service's secrets. Made
    /// only by lowering, never read from telbase.yaml (`url` is what a file writes; lowering
    /// picks this form for Cloud Run consumers of Cloud SQL).
    #[serde(rename = "socket-url")]
    SocketUrl,
}

impl Output {
    /// Outputs that are credentials, or contain one; they are always written to providers as
    /// sensitive values.
    pub fn is_secret(self) -> bool {
        matches!(
            self,
            Output::Url | Output::SocketUrl | Output::Password | Output::Token
        )
    }
}

/// An age-encrypted value exactly as committed (ASCII armor). Ciphertext, so not secret
/// itself, but it is still never printed: output shows a fingerprint of the ciphertext, which
/// changes exactly when the sealed value is re-sealed. A value observed at a provider has
/// only the fingerprint (recorded beside the value when Telbase wrote it); two `Sealed`
/// compare equal when their fingerprints do.
///
/// A value from a SOPS `env_file` is a `Sealed` too: it is opened at apply time like any
/// sealed value, and its fingerprint is that of its `ENC[…]` text in the file.
#[derive(Clone)]
pub struct Sealed {
    armor: Option<String>,
    /// Boxed: rare, and inline it would double the size of every `EnvSource`.
    sops: Option<Box<SopsSource>>,
    fingerprint: CompactString,
}

/// Where a SOPS env-file value is: the file (as resolved when the config was read) and the
/// variable's name in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SopsSource {
    pub file: std::path::PathBuf,
    pub name: String,
}

/// `sha256:` and the first 12 hex digits of the SHA-256 of a ciphertext's text.
fn ciphertext_fingerprint(text: &str) -> CompactString {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(text.as_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    compact_str::format_compact!("sha256:{hex}")
}

impl Sealed {
    pub fn new(armor: String) -> Self {
        Sealed {
            fingerprint: ciphertext_fingerprint(&armor),
            armor: Some(armor),
            sops: None,
        }
    }

    /// The variable `name` of the SOPS file `file`, whose value is stored there as `stored`
    /// (its `ENC[…]` text). Only the fingerprint of `stored` is kept.
    pub fn sops(file: std::path::PathBuf, name: String, stored: &str) -> Self {
        Sealed {
            armor: None,
            sops: Some(Box::new(SopsSource { file, name })),
            fingerprint: ciphertext_fingerprint(stored),
        }
    }

    /// Where the value is, when it comes from a SOPS env file.
    pub fn sops_source(&self) -> Option<&SopsSource> {
        self.sops.as_deref()
    }

    /// A sealed value known only by its fingerprint (read back from a provider).
    pub fn from_fingerprint(fingerprint: impl Into<CompactString>) -> Self {
        Sealed {
            armor: None,
            sops: None,
            fingerprint: fingerprint.into(),
        }
    }

    /// `sha256:` and the first 12 hex digits of the SHA-256 of the armored text (of the
    /// `ENC[…]` text for a SOPS value).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The armored ciphertext, when this value came from the file.
    pub fn armor(&self) -> Option<&str> {
        self.armor.as_deref()
    }
}

impl PartialEq for Sealed {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

impl Eq for Sealed {}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealed({})", self.fingerprint)
    }
}

impl Serialize for Sealed {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.fingerprint)
    }
}

/// Where an environment variable's value comes from. Serialized (for plans and
/// comparison) as `{"plain": "…"}`, `{"sealed": "sha256:…"}`, `{"stored": "hmac:…"}` or
/// `{"from": "neon/database/notes-main url"}` or `{"generated": "random"}`.
#[derive(Debug, Clone, PartialEq)]
pub enum EnvSource {
    /// Written in the file; not secret.
    Plain(CompactString),
    /// Age-sealed in the file; opened only in memory at apply time.
    Sealed(Sealed),
    /// Fetched from another resource at apply time; never stored.
    Output {
        resource: ResourceKey,
        output: Output,
    },
    /// A random credential Telbase generates once, when the secret holding it is created
    /// (a Cloud SQL user's password), and keeps only in the provider's secret store. Never
    /// regenerated by a later apply: it has no value to compare, only its existence.
    Generated,
    /// Set outside the repository with `telbase env set` and kept envelope-encrypted in the
    /// store (`stored: true`). Known to plans only by its keyed fingerprint (`hmac:…`), which
    /// the CLI reads from the store before planning (`None` until then); opened from the
    /// store right before the provider call.
    Stored {
        /// The stored secret's name (the variable's own name).
        name: String,
        fingerprint: Option<String>,
    },
}

impl Serialize for EnvSource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut m = s.serialize_map(Some(1))?;
        match self {
            EnvSource::Plain(v) => m.serialize_entry("plain", v)?,
            EnvSource::Sealed(v) => m.serialize_entry("sealed", v)?,
            EnvSource::Output { resource, output } => {
                let out = serde_json::to_value(output)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                m.serialize_entry("from", &format!("{resource} {out}"))?
            }
            EnvSource::Generated => m.serialize_entry("generated", "random")?,
            EnvSource::Stored { fingerprint, .. } => m.serialize_entry(
                "stored",
                fingerprint
                    .as_deref()
                    .unwrap_or("(not read from the store)"),
            )?,
        }
        m.end()
    }
}

/// Env lists serialize as maps from name to source, so a plan shows the one variable that
/// changed rather than the whole list, and order never matters.
fn env_as_map<S: serde::Serializer>(env: &[EnvVar], s: S) -> Result<S::Ok, S::Error> {
    let sorted: BTreeMap<&str, &EnvSource> =
        env.iter().map(|v| (v.name.as_str(), &v.source)).collect();
    s.collect_map(sorted)
}

impl EnvSource {
    pub fn is_secret(&self) -> bool {
        match self {
            EnvSource::Plain(_) => false,
            EnvSource::Sealed(_) | EnvSource::Generated | EnvSource::Stored { .. } => true,
            EnvSource::Output { output, .. } => output.is_secret(),
        }
    }
}

/// One environment variable of an app.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnvVar {
    pub name: CompactString,
    pub source: EnvSource,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VercelProject {
    pub framework: Option<String>,
    pub root_directory: Option<String>,
    pub build_command: Option<String>,
    pub install_command: Option<String>,
    pub output_directory: Option<String>,
    pub node_version: Option<String>,
    /// Not compared: Vercel's API offers no call to change a project's production branch,
    /// and Telbase deploys production itself with an explicit ref, so Vercel's setting has
    /// no effect on what runs.
    #[serde(skip_serializing)]
    pub production_branch: String,
    #[serde(serialize_with = "env_as_map")]
    pub env: Vec<EnvVar>,
    /// For a preview environment: the git branch its env values and deployment belong to.
    pub preview_branch_of_pr: Option<u64>,
    /// The GitHub repository (`owner/name`) the project builds from; set from the checkout
    /// by `DesiredState::pin_git`, not from the file.
    pub git_repository: Option<String>,
    /// The commit production should run; set by `pin_git`. A different commit at Vercel is
    /// an update: deploy it, wait until it is ready, promote it.
    pub production_commit: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Probe {
    pub path: CompactString,
    pub period_seconds: u32,
    pub timeout_seconds: u32,
    pub initial_delay_seconds: u32,
    pub failure_threshold: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CloudRunService {
    pub region: CompactString,
    /// The image with `${git.*}` still in it; the reconciler substitutes the commit.
    pub image: CompactString,
    pub port: u16,
    pub command: Vec<String>,
    pub args: Vec<String>,
    /// Cloud Run's own spelling: "1", "2", "0.5"…
    pub cpu: CompactString,
    /// Mebibytes, written back as `NMi`.
    pub memory_mib: u32,
    pub min_instances: u32,
    pub max_instances: u32,
    pub concurrency: u32,
    pub probe: Option<Probe>,
    /// `true`: anyone may invoke (allUsers); `false`: behind Cloudflare Access.
    pub public: bool,
    #[serde(serialize_with = "env_as_map")]
    pub env: Vec<EnvVar>,
    /// The Cloud SQL instances mounted through Cloud Run's Cloud SQL volume (at `/cloudsql`),
    /// sorted by key: those whose databases the env reads from. Empty: no volume.
    pub cloud_sql: Vec<CloudSqlMount>,
}

/// One Cloud SQL instance a Cloud Run service reaches through the Cloud SQL connector. The
/// provider completes the connection name (`<google project>:<region>:<instance>`) with
/// its own project. Serialized (plans) as the rest of that name, `<region>:<instance>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CloudSqlMount {
    pub instance: ResourceKey,
    pub region: CompactString,
}

impl Serialize for CloudSqlMount {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}:{}", self.region, self.instance.name))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Domain {
    pub hostname: CompactString,
    /// The app resource it routes to.
    pub target: ResourceKey,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Secret {
    /// The env var it backs, for display.
    pub env: CompactString,
    pub source: EnvSource,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NeonProject {
    pub region: CompactString,
    pub pg_version: u32,
    pub deletion_protection: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NeonBranch {
    pub project: ResourceKey,
    pub parent: CompactString,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NamedDatabase {
    /// The database name inside the server.
    pub database: CompactString,
    /// The role (Neon) or user (Cloud SQL) that owns it.
    pub owner: CompactString,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CloudSqlInstance {
    pub region: CompactString,
    pub database_version: CompactString,
    pub tier: CompactString,
    pub disk_gb: u32,
    pub deletion_protection: bool,
    /// Daily backups with point-in-time recovery. Always on from telbase.yaml; a field so
    /// that someone turning them off shows up as drift and is corrected.
    pub backups: bool,
    /// Connections must use TLS (`ipConfiguration.sslMode`). Always on, for the same reason.
    pub ssl_required: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CloudSqlUser {
    pub user: CompactString,
    /// The Secret Manager secret holding its generated password: the user is created with
    /// the value read from there at apply time, and connection strings read it the same way.
    pub password_secret: ResourceKey,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TursoGroup {
    pub location: CompactString,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TursoDatabase {
    pub group: CompactString,
    /// For a preview branch: the database it is seeded from.
    pub seed_from: Option<CompactString>,
    pub deletion_protection: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ZoneSettings {
    pub min_tls_version: &'static str,
    pub always_use_https: bool,
    pub ssl_mode: &'static str,
    pub hsts_max_age_seconds: u64,
    pub hsts_include_subdomains: bool,
    pub hsts_preload: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DnsRecord {
    pub zone: CompactString,
    pub hostname: CompactString,
    pub proxied: bool,
    /// The app whose host the record points at; its address is known after apply.
    pub target: ResourceKey,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccessPolicy {
    pub login: Vec<&'static str>,
    pub allow_domains: Vec<String>,
    pub allow_emails: Vec<String>,
    pub session_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccessApplication {
    pub domains: Vec<String>,
    pub policy: ResourceKey,
}

/// What one resource should look like.
///
/// The two large specs (a Vercel project and a Cloud Run service, over 200 bytes each) are
/// boxed, so every spec, and with it every `Resource` and `Observed`, takes under half the
/// memory it did: the states the planner streams through are that much smaller, which on
/// 100k resources is most of its cost.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum ResourceSpec {
    VercelProject(Box<VercelProject>),
    VercelDomain(Domain),
    CloudRunService(Box<CloudRunService>),
    CloudRunDomainMapping(Domain),
    Secret(Secret),
    NeonProject(NeonProject),
    NeonBranch(NeonBranch),
    NeonDatabase(NamedDatabase),
    CloudSqlInstance(CloudSqlInstance),
    CloudSqlDatabase(NamedDatabase),
    CloudSqlUser(CloudSqlUser),
    TursoGroup(TursoGroup),
    TursoDatabase(TursoDatabase),
    ZoneSettings(ZoneSettings),
    DnsRecord(DnsRecord),
    AccessPolicy(AccessPolicy),
    AccessApplication(AccessApplication),
}

/// One resource Telbase will manage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resource {
    pub key: ResourceKey,
    /// Where it came from in the file, e.g. `apps.web` (for messages and plans).
    pub origin: String,
    pub spec: ResourceSpec,
    /// Resources that must exist (and whose outputs must be known) before this one.
    pub depends_on: BTreeSet<ResourceKey>,
    /// The file allows destroying this resource's data (`allow_data_loss: true` on its
    /// database). Only meaningful for kinds that hold data.
    pub allow_data_loss: bool,
}

impl ResourceSpec {
    /// Whether destroying this resource destroys data someone may need. Preview copies (a
    /// Neon branch, a Turso database seeded from production) are disposable by design.
    pub fn holds_data(&self) -> bool {
        match self {
            ResourceSpec::NeonProject(_)
            | ResourceSpec::NeonDatabase(_)
            | ResourceSpec::CloudSqlInstance(_)
            | ResourceSpec::CloudSqlDatabase(_) => true,
            ResourceSpec::TursoDatabase(db) => db.seed_from.is_none(),
            _ => false,
        }
    }
}

impl Kind {
    /// Order for deletions, which run against observed resources that carry no dependency
    /// edges: what fronts an app goes first, what apps stand on goes last.
    pub fn teardown_rank(self) -> u8 {
        match self {
            Kind::AccessApplication => 0,
            Kind::DnsRecord => 1,
            Kind::VercelDomain | Kind::CloudRunDomainMapping => 2,
            Kind::VercelProject | Kind::CloudRunService => 3,
            Kind::Secret => 4,
            Kind::AccessPolicy | Kind::ZoneSettings => 5,
            Kind::NeonBranch | Kind::NeonDatabase | Kind::CloudSqlDatabase | Kind::CloudSqlUser => {
                6
            }
            Kind::TursoDatabase => 6,
            Kind::NeonProject | Kind::CloudSqlInstance => 7,
            Kind::TursoGroup => 8,
        }
    }
}

/// One resource as a provider reports it, already mapped into model terms and normalized by
/// the provider's `map.rs` (defaults filled, lists in canonical order), so that comparing it
/// with the desired spec shows only real differences.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Observed {
    pub key: ResourceKey,
    pub spec: ResourceSpec,
    /// The provider's own identifier (project id, record id, operation name…).
    pub provider_id: String,
    /// The ownership marker recorded that its data may be destroyed: set when Telbase last
    /// applied it with `allow_data_loss: true`, since a database removed from the file no
    /// longer says anything about itself.
    pub deletion_allowed: bool,
}

/// Everything Telbase owns at the providers for one environment of one project.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ActualState {
    #[serde(serialize_with = "values_as_list")]
    pub resources: BTreeMap<ResourceKey, Observed>,
}

/// How the reconciler treats this project.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReconcilePolicy {
    pub drift_cron: String,
    pub on_drift: &'static str,
    pub prune: bool,
    pub preview_ttl_seconds: Option<u64>,
    /// At most this many previews at once (`environments.preview.max`).
    pub preview_max: Option<u32>,
    pub production_branch: String,
}

/// Everything Telbase should manage for one environment of one project.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DesiredState {
    pub project: String,
    pub environment: Environment,
    pub reconcile: ReconcilePolicy,
    /// Keyed for lookups; serialized as a list (JSON object keys must be strings).
    #[serde(serialize_with = "values_as_list")]
    pub resources: BTreeMap<ResourceKey, Resource>,
}

/// Positions of resources by key (a fast, non-cryptographic hash: the keys come from our
/// own state, so hash flooding is no concern).
pub type KeyIndex<'a> = rustc_hash::FxHashMap<&'a ResourceKey, u32>;

/// Kahn's algorithm over `n` resources numbered in key order, given `edges` as
/// (dependency, dependent) positions: every resource after what it depends on, ties broken
/// by position (the smallest ready position goes next), so the order is deterministic. Pure
/// integer work: edges laid out flat (compressed sparse rows: no allocation per resource),
/// and the ready positions in a `ReadySet` rather than a binary heap, whose every push and
/// pop costs a logarithm of its size and, on large states, a cache miss per level: the
/// ready set does the same few word operations at any size the planner sees, so the order
/// costs the same per resource at 10k and 100k. A cycle (which validation refuses earlier)
/// leaves its members at the end in key order rather than dropping them.
pub fn dependency_order(n: usize, edges: &[(u32, u32)]) -> Vec<u32> {
    let mut waiting = vec![0u32; n];
    let mut start = vec![0u32; n + 1];
    for &(j, i) in edges {
        start[j as usize + 1] += 1;
        waiting[i as usize] += 1;
    }
    for k in 0..n {
        start[k + 1] += start[k];
    }
    let mut fill = start.clone();
    let mut dependents = vec![0u32; edges.len()];
    for &(j, i) in edges {
        dependents[fill[j as usize] as usize] = i;
        fill[j as usize] += 1;
    }
    drop(fill);
    let mut ready = ReadySet::new(n);
    for i in 0..n as u32 {
        if waiting[i as usize] == 0 {
            ready.insert(i);
        }
    }
    let mut out = Vec::with_capacity(n);
    while let Some(i) = ready.pop_min() {
        out.push(i);
        let (from, to) = (start[i as usize] as usize, start[i as usize + 1] as usize);
        for &d in &dependents[from..to] {
            waiting[d as usize] -= 1;
            if waiting[d as usize] == 0 {
                ready.insert(d);
            }
        }
    }
    if out.len() < n {
        // Whatever is still waiting is on a cycle or behind one: a placed resource has
        // nothing left to wait for.
        out.extend((0..n as u32).filter(|&i| waiting[i as usize] > 0));
    }
    out
}

/// A set of positions below `n` that hands out its smallest member, for `dependency_order`:
/// one bit per position, and above it summary levels (a bit per non-empty word of the level
/// below) up to a single word. Insert and pop-the-smallest walk the levels, three of them
/// for up to 262,144 positions (64³), so they cost the same at 10k and 100k resources; the
/// whole set is an eighth of a byte per position (12 KiB for 100k), which stays in the
/// fastest cache.
struct ReadySet {
    /// `levels[0]` has a bit per position; `levels[k + 1]` a bit per non-empty word of
    /// `levels[k]`; the last level is one word.
    levels: Vec<Vec<u64>>,
}

impl ReadySet {
    fn new(n: usize) -> Self {
        let mut levels = Vec::new();
        let mut len = n.max(1);
        loop {
            let words = len.div_ceil(64);
            levels.push(vec![0u64; words]);
            if words == 1 {
                return ReadySet { levels };
            }
            len = words;
        }
    }

    fn insert(&mut self, position: u32) {
        let mut i = position as usize;
        for level in &mut self.levels {
            let word = &mut level[i / 64];
            let was_empty = *word == 0;
            *word |= 1 << (i % 64);
            if !was_empty {
                // The levels above already mark this word as non-empty.
                break;
            }
            i /= 64;
        }
    }

    fn pop_min(&mut self) -> Option<u32> {
        let top = self.levels.last()?;
        if top[0] == 0 {
            return None;
        }
        // Down from the top word along the lowest set bits.
        let mut i = 0usize;
        for level in self.levels.iter().rev() {
            i = i * 64 + level[i].trailing_zeros() as usize;
        }
        let found = i as u32;
        // Clear it, and each summary bit whose word below became empty.
        for level in &mut self.levels {
            let word = &mut level[i / 64];
            *word &= !(1 << (i % 64));
            if *word != 0 {
                break;
            }
            i /= 64;
        }
        Some(found)
    }
}

/// The (dependency, dependent) position pairs among `resources` (in key order, as `index`
/// numbers them); dependencies outside the set are ignored.
pub fn dependency_edges(resources: &[&Resource], index: &KeyIndex<'_>) -> Vec<(u32, u32)> {
    let mut edges = Vec::with_capacity(resources.len());
    for (i, r) in resources.iter().enumerate() {
        for d in &r.depends_on {
            if let Some(&j) = index.get(d) {
                edges.push((j, i as u32));
            }
        }
    }
    edges
}

/// Maps keyed by `ResourceKey` serialize as lists of their values: JSON object keys must be
/// strings, and each value carries its key anyway.
fn values_as_list<S: serde::Serializer, V: Serialize>(
    map: &BTreeMap<ResourceKey, V>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(map.values())
}

impl DesiredState {
    /// Record the commit being reconciled in every resource that deploys code: Vercel
    /// projects get the repository and commit, Cloud Run images get `${git.sha}` and
    /// `${git.short_sha}` (its first 7 hex digits) substituted, so the desired image is the
    /// one the service will report and an unchanged commit compares equal.
    pub fn pin_git(&mut self, repo: Option<&str>, sha: &str) {
        for res in self.resources.values_mut() {
            if let ResourceSpec::VercelProject(p) = &mut res.spec {
                p.git_repository = repo.map(str::to_owned);
                if matches!(self.environment, Environment::Production) {
                    p.production_commit = Some(sha.to_owned());
                }
            }
        }
        self.pin_images(sha);
    }

    /// Put the commit into container image references (`${git.sha}`, `${git.short_sha}`).
    /// Needs no GitHub repository: the image comes from a registry, only its tag names the
    /// commit.
    pub fn pin_images(&mut self, sha: &str) {
        for res in self.resources.values_mut() {
            if let ResourceSpec::CloudRunService(s) = &mut res.spec {
                s.image = s
                    .image
                    .replace("${git.sha}", sha)
                    .replace("${git.short_sha}", &sha[..sha.len().min(7)])
                    .into();
            }
        }
    }

    /// Resources in an order where every resource comes after what it depends on, ties
    /// broken by key so the order is deterministic (Kahn's algorithm, smallest key first).
    /// Edges to resources outside this state (production's database, seen from a preview)
    /// are already satisfied. Lowering never makes a cycle; if one appeared, its members
    /// would follow the rest in key order rather than vanish.
    pub fn topological(&self) -> Vec<&Resource> {
        let all: Vec<&Resource> = self.resources.values().collect();
        self.topological_indices()
            .into_iter()
            .map(|i| all[i])
            .collect()
    }

    /// The same order, as positions in key order (`resources.values()`), for callers that
    /// keep per-resource data in vectors. Resources are numbered once, so the rest of the
    /// work is on integers: one hash lookup per edge, edges laid out flat, a bit set of the
    /// ready positions.
    pub fn topological_indices(&self) -> Vec<usize> {
        let all: Vec<&Resource> = self.resources.values().collect();
        let index: KeyIndex = all
            .iter()
            .enumerate()
            .map(|(i, r)| (&r.key, i as u32))
            .collect();
        dependency_order(all.len(), &dependency_edges(&all, &index))
            .into_iter()
            .map(|i| i as usize)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The order as it was first written: Kahn's algorithm with a binary min-heap.
    fn heap_order(n: usize, edges: &[(u32, u32)]) -> Vec<u32> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let mut waiting = vec![0u32; n];
        let mut dependents = vec![Vec::new(); n];
        for &(j, i) in edges {
            waiting[i as usize] += 1;
            dependents[j as usize].push(i);
        }
        let mut ready: BinaryHeap<Reverse<u32>> = (0..n as u32)
            .filter(|&i| waiting[i as usize] == 0)
            .map(Reverse)
            .collect();
        let mut out = Vec::new();
        while let Some(Reverse(i)) = ready.pop() {
            out.push(i);
            for &d in &dependents[i as usize] {
                waiting[d as usize] -= 1;
                if waiting[d as usize] == 0 {
                    ready.push(Reverse(d));
                }
            }
        }
        let placed: BTreeSet<u32> = out.iter().copied().collect();
        out.extend((0..n as u32).filter(|i| !placed.contains(i)));
        out
    }

    #[test]
    fn dependency_order_matches_a_min_heap() {
        let mut rng = fastrand::Rng::with_seed(3);
        // Sizes around the ready set's word and level boundaries (64, 64², 64³).
        for n in [
            0usize, 1, 2, 63, 64, 65, 200, 4095, 4096, 4097, 10_000, 262_145,
        ] {
            for round in 0..3 {
                let mut edges = Vec::new();
                if n > 1 {
                    for _ in 0..n * round {
                        let (a, b) = (rng.u32(..n as u32), rng.u32(..n as u32));
                        // Mostly acyclic (lower to higher or the reverse, by round); a few
                        // back edges make cycles, whose members must still come out.
                        if a != b {
                            let (j, i) = if round == 1 {
                                (a.min(b), a.max(b))
                            } else {
                                (a.max(b), a.min(b))
                            };
                            edges.push((j, i));
                        }
                    }
                    if round == 2 {
                        edges.push((0, n as u32 - 1));
                        edges.push((n as u32 - 1, 0));
                    }
                }
                let got = dependency_order(n, &edges);
                assert_eq!(got, heap_order(n, &edges), "n = {n}, round {round}");
                let mut sorted = got.clone();
                sorted.sort_unstable();
                assert_eq!(sorted, (0..n as u32).collect::<Vec<_>>());
            }
        }
    }
}

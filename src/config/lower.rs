//! Lowering: a valid `ConfigFile` becomes the `DesiredState` of one environment.
//!
//! One resource per thing Telbase will manage, named exactly as the provider will see it
//! (`<project>-<name>`, with `-pr-<N>` for preview copies), with its settings in provider terms
//! and its dependency edges. Defaults are applied here, once, so every later stage sees the
//! same concrete values. Runs only on files that passed validation; it never fails.

use std::collections::{BTreeMap, BTreeSet};

use super::file::{self, App, ConfigFile, DatabaseProvider, EnvTarget, EnvValue, Framework};
use super::semantic::effective_provider;
use super::units;
use crate::model::{
    AccessApplication, AccessPolicy, CloudRunService, CloudSqlInstance, CloudSqlMount,
    CloudSqlUser, DesiredState, DnsRecord, Domain, EnvSource, EnvVar, Environment, Kind,
    NamedDatabase, NeonBranch, NeonProject, Output, Probe, ReconcilePolicy, Resource, ResourceKey,
    ResourceSpec, Sealed, Secret, TursoDatabase, TursoGroup, VercelProject, ZoneSettings,
};

pub const DEFAULT_DRIFT: &str = "*/15 * * * *";

struct Lowering<'a> {
    cfg: &'a ConfigFile,
    env: Environment,
    out: BTreeMap<ResourceKey, Resource>,
}

impl Lowering<'_> {
    fn add(
        &mut self,
        key: ResourceKey,
        origin: String,
        spec: ResourceSpec,
        deps: impl IntoIterator<Item = ResourceKey>,
    ) {
        let depends_on: BTreeSet<ResourceKey> = deps.into_iter().filter(|d| *d != key).collect();
        self.out.insert(
            key.clone(),
            Resource {
                key,
                origin,
                spec,
                depends_on,
                allow_data_loss: false,
            },
        );
    }

    fn pr(&self) -> Option<u64> {
        match self.env {
            Environment::Production => None,
            Environment::Preview { pull_request } => Some(pull_request),
        }
    }

    fn prefixed(&self, name: &str) -> String {
        format!("{}-{name}", self.cfg.project)
    }

    /// The key of an app's main resource in this environment.
    fn app_key(&self, name: &str, app: &App) -> ResourceKey {
        if app.framework.is_some() {
            // Vercel previews are deployments of the production project.
            ResourceKey::new(Kind::VercelProject, self.prefixed(name))
        } else {
            let base = self.prefixed(name);
            ResourceKey::new(
                Kind::CloudRunService,
                match self.pr() {
                    Some(n) => format!("{base}-pr-{n}"),
                    None => base,
                },
            )
        }
    }

    /// The key `from: databases.<name>.*` reads from in this environment.
    fn database_output_key(&self, name: &str) -> Option<ResourceKey> {
        let db = self.cfg.databases.get(name)?;
        let base = self.prefixed(name);
        let branch = self.pr().filter(|_| db.branch_per_preview);
        Some(match (effective_provider(db)?, branch) {
            (DatabaseProvider::Neon, None) => ResourceKey::new(Kind::NeonDatabase, base),
            (DatabaseProvider::Neon, Some(n)) => {
                ResourceKey::new(Kind::NeonBranch, format!("{base}/pr-{n}"))
            }
            (DatabaseProvider::Cloudsql, _) => ResourceKey::new(Kind::CloudSqlDatabase, base),
            (DatabaseProvider::Turso, None) => ResourceKey::new(Kind::TursoDatabase, base),
            (DatabaseProvider::Turso, Some(n)) => {
                ResourceKey::new(Kind::TursoDatabase, format!("{base}-pr-{n}"))
            }
        })
    }

    fn env_vars(&self, app: &App) -> Vec<EnvVar> {
        let here = match self.env {
            Environment::Production => EnvTarget::Production,
            Environment::Preview { .. } => EnvTarget::Preview,
        };
        // An env file's variables are sealed values: opened at apply time, compared by the
        // fingerprint of their ciphertext. Validation has made sure no name is also in `env:`.
        let from_file = app
            .env_file
            .as_ref()
            .and_then(|f| self.cfg.env_files.get(f))
            .into_iter()
            .flat_map(|loaded| {
                loaded.keys.iter().map(|k| EnvVar {
                    name: k.name.as_str().into(),
                    source: EnvSource::Sealed(Sealed::sops(
                        loaded.path.clone(),
                        k.name.clone(),
                        &k.stored,
                    )),
                })
            });
        app.env
            .iter()
            .filter_map(|(name, v)| {
                let source = match v {
                    EnvValue::Plain(s) => EnvSource::Plain(s.as_str().into()),
                    EnvValue::Spec(spec) => {
                        if spec.only.is_some_and(|o| o != here) {
                            return None;
                        }
                        if let Some(s) = &spec.value {
                            EnvSource::Plain(s.as_str().into())
                        } else if let Some(s) = &spec.sealed {
                            EnvSource::Sealed(Sealed::new(s.trim().to_owned()))
                        } else if spec.stored == Some(true) {
                            // The fingerprint comes from the store, read by the CLI before
                            // planning (`secrets::stored::read_fingerprints`).
                            EnvSource::Stored {
                                name: name.clone(),
                                fingerprint: None,
                            }
                        } else {
                            let f = spec.from.as_deref()?;
                            let mut parts = f.split('.');
                            let (section, target, output) =
                                (parts.next()?, parts.next()?, parts.next()?);
                            let resource = match section {
                                "databases" => self.database_output_key(target)?,
                                _ => self.app_key(target, self.cfg.apps.get(target)?),
                            };
                            EnvSource::Output {
                                resource,
                                output: parse_output(output)?,
                            }
                        }
                    }
                };
                Some(EnvVar {
                    name: name.as_str().into(),
                    source,
                })
            })
            .chain(from_file)
            .collect()
    }
}

impl Lowering<'_> {
    /// A Cloud Run service reaches Cloud SQL through the Cloud SQL connector, not the
    /// instance's public address (which admits no one: it has no authorized networks). Every
    /// Cloud SQL instance the env reads from is mounted (`/cloudsql/<connectionName>`), and
    /// `url` becomes the socket form of the URL; the other outputs are unchanged. Returns the
    /// env and the instances, sorted and without duplicates.
    fn cloud_sql_consumer(&self, env: Vec<EnvVar>) -> (Vec<EnvVar>, Vec<CloudSqlMount>) {
        let mut mounts = BTreeSet::new();
        let env = env
            .into_iter()
            .map(|mut var| {
                if let EnvSource::Output { resource, output } = &mut var.source
                    && resource.kind == Kind::CloudSqlDatabase
                {
                    // The instance shares the database resource's name (see `lower`).
                    let region = self
                        .cfg
                        .databases
                        .iter()
                        .find(|(name, _)| self.prefixed(name) == resource.name.as_str())
                        .and_then(|(_, db)| db.region.clone())
                        .unwrap_or_default();
                    mounts.insert(CloudSqlMount {
                        instance: ResourceKey::new(Kind::CloudSqlInstance, resource.name.clone()),
                        region: region.into(),
                    });
                    if *output == Output::Url {
                        *output = Output::SocketUrl;
                    }
                }
                var
            })
            .collect();
        (env, mounts.into_iter().collect())
    }
}

fn parse_output(s: &str) -> Option<Output> {
    Some(match s {
        "url" => Output::Url,
        "host" => Output::Host,
        "port" => Output::Port,
        "database" => Output::Database,
        "user" => Output::User,
        "password" => Output::Password,
        "token" => Output::Token,
        _ => return None,
    })
}

fn vercel_framework(f: Framework) -> Option<&'static str> {
    // Vercel's framework preset slugs (`framework` on POST /v11/projects).
    match f {
        Framework::Nextjs => Some("nextjs"),
        Framework::Vite => Some("vite"),
        Framework::Astro => Some("astro"),
        Framework::Sveltekit => Some("sveltekit-1"),
        Framework::Nuxt => Some("nuxtjs"),
        Framework::Remix => Some("remix"),
        Framework::Static => None,
    }
}

fn secs(v: &Option<String>, default: u64) -> u64 {
    v.as_deref()
        .and_then(|t| units::duration_seconds(t).ok())
        .unwrap_or(default)
}

/// Lower a validated file for one environment.
pub fn lower(cfg: &ConfigFile, env: Environment) -> DesiredState {
    let mut l = Lowering {
        cfg,
        env,
        out: BTreeMap::new(),
    };
    let zone = cfg.edge.as_ref().map(|e| e.zone.clone());

    // Cloudflare edge baseline and the access policies: zone- and account-level, so they
    // belong to production alone. A preview uses them (its Access application attaches
    // production's policy) but never writes them: a pull request's file must not be able to
    // lower production's TLS floor or widen who production's policy lets in before it is
    // merged, and tearing a preview down must not remove them.
    let production = l.pr().is_none();
    let zone_key = cfg.edge.as_ref().filter(|_| production).map(|edge| {
        let key = ResourceKey::new(Kind::ZoneSettings, edge.zone.clone());
        l.add(
            key.clone(),
            "edge".into(),
            ResourceSpec::ZoneSettings(ZoneSettings {
                min_tls_version: edge.min_tls.as_str(),
                always_use_https: true,
                ssl_mode: "strict",
                hsts_max_age_seconds: secs(&edge.hsts.max_age, 365 * 86_400),
                hsts_include_subdomains: edge.hsts.include_subdomains,
                hsts_preload: edge.hsts.preload,
            }),
            [],
        );
        key
    });
    for (name, p) in cfg.access.iter().filter(|_| production) {
        let mut login: Vec<&'static str> = p
            .login
            .iter()
            .map(|i| match i {
                file::IdentityProvider::Google => "google",
                file::IdentityProvider::Microsoft => "microsoft",
                file::IdentityProvider::Github => "github",
            })
            .collect();
        login.sort_unstable();
        login.dedup();
        // Order and case of addresses carry no meaning; normalizing here keeps a reordered
        // list from ever showing up as a change.
        let norm = |v: &[String]| -> Vec<String> {
            let mut v: Vec<String> = v.iter().map(|s| s.to_ascii_lowercase()).collect();
            v.sort();
            v.dedup();
            v
        };
        l.add(
            ResourceKey::new(Kind::AccessPolicy, l.prefixed(name)),
            format!("access.{name}"),
            ResourceSpec::AccessPolicy(AccessPolicy {
                login,
                allow_domains: norm(&p.allow_domains),
                allow_emails: norm(&p.allow_emails),
                session_seconds: secs(&p.session, 24 * 3600),
            }),
            [],
        );
    }

    // Databases first: apps depend on them.
    for (name, db) in &cfg.databases {
        let origin = format!("databases.{name}");
        let base = l.prefixed(name);
        let ident = name.replace('-', "_");
        let protect = db.deletion_protection.unwrap_or(true);
        let branch = l.pr().filter(|_| db.branch_per_preview);
        match effective_provider(db) {
            Some(DatabaseProvider::Neon) => {
                let project = ResourceKey::new(Kind::NeonProject, base.clone());
                if let Some(n) = branch {
                    l.add(
                        ResourceKey::new(Kind::NeonBranch, format!("{base}/pr-{n}")),
                        origin,
                        ResourceSpec::NeonBranch(NeonBranch {
                            project: project.clone(),
                            parent: "main".into(),
                        }),
                        [],
                    );
                } else if l.pr().is_none() {
                    l.add(
                        project.clone(),
                        origin.clone(),
                        ResourceSpec::NeonProject(NeonProject {
                            region: db
                                .region
                                .clone()
                                .unwrap_or_else(|| "aws-us-east-2".into())
                                .into(),
                            pg_version: db.version.unwrap_or(17),
                            deletion_protection: protect,
                        }),
                        [],
                    );
                    l.add(
                        ResourceKey::new(Kind::NeonDatabase, base),
                        origin,
                        ResourceSpec::NeonDatabase(NamedDatabase {
                            database: ident.as_str().into(),
                            owner: format!("{ident}_owner").into(),
                        }),
                        [project],
                    );
                }
            }
            Some(DatabaseProvider::Cloudsql) if l.pr().is_none() => {
                let instance = ResourceKey::new(Kind::CloudSqlInstance, base.clone());
                l.add(
                    instance.clone(),
                    origin.clone(),
                    ResourceSpec::CloudSqlInstance(CloudSqlInstance {
                        region: db.region.clone().unwrap_or_default().into(),
                        database_version: format!("POSTGRES_{}", db.version.unwrap_or(16)).into(),
                        tier: db
                            .tier
                            .clone()
                            .unwrap_or_else(|| "db-custom-1-3840".into())
                            .into(),
                        disk_gb: db.disk_gb.unwrap_or(10),
                        deletion_protection: protect,
                        backups: true,
                        ssl_required: true,
                    }),
                    [],
                );
                let user = ResourceKey::new(Kind::CloudSqlUser, base.clone());
                let password = ResourceKey::new(Kind::Secret, format!("{base}-password"));
                // The password is generated into Secret Manager first; the user is created
                // with it, and connection strings read it from there. It exists nowhere else.
                l.add(
                    password.clone(),
                    origin.clone(),
                    ResourceSpec::Secret(Secret {
                        env: "(Cloud SQL password)".into(),
                        source: EnvSource::Generated,
                    }),
                    [],
                );
                l.add(
                    user.clone(),
                    origin.clone(),
                    ResourceSpec::CloudSqlUser(CloudSqlUser {
                        user: format!("{ident}_owner").into(),
                        password_secret: password.clone(),
                    }),
                    [instance.clone(), password.clone()],
                );
                l.add(
                    ResourceKey::new(Kind::CloudSqlDatabase, base),
                    origin,
                    ResourceSpec::CloudSqlDatabase(NamedDatabase {
                        database: ident.as_str().into(),
                        owner: format!("{ident}_owner").into(),
                    }),
                    [instance, user, password],
                );
            }
            Some(DatabaseProvider::Turso) => {
                let group_name = db.group.clone().unwrap_or_else(|| "default".into());
                let group = ResourceKey::new(Kind::TursoGroup, group_name.clone());
                // A preview without its own branch uses production's database and needs
                // nothing from the group.
                if l.pr().is_none() || branch.is_some() {
                    l.add(
                        group.clone(),
                        origin.clone(),
                        ResourceSpec::TursoGroup(TursoGroup {
                            location: db.location.clone().unwrap_or_default().into(),
                        }),
                        [],
                    );
                }
                match branch {
                    Some(n) => l.add(
                        ResourceKey::new(Kind::TursoDatabase, format!("{base}-pr-{n}")),
                        origin,
                        ResourceSpec::TursoDatabase(TursoDatabase {
                            group: group_name.into(),
                            seed_from: Some(base.into()),
                            deletion_protection: false,
                        }),
                        [group],
                    ),
                    None if l.pr().is_none() => l.add(
                        ResourceKey::new(Kind::TursoDatabase, base),
                        origin,
                        ResourceSpec::TursoDatabase(TursoDatabase {
                            group: group_name.into(),
                            seed_from: None,
                            deletion_protection: protect,
                        }),
                        [group],
                    ),
                    None => {}
                }
            }
            _ => {}
        }
    }

    for (name, db) in &cfg.databases {
        if db.allow_data_loss {
            let origin = format!("databases.{name}");
            for r in l.out.values_mut().filter(|r| r.origin == origin) {
                r.allow_data_loss = true;
            }
        }
    }

    // Apps.
    let preview_access = cfg.environments.preview.as_ref().map(|p| p.access.clone());
    for (name, app) in &cfg.apps {
        let origin = format!("apps.{name}");
        let key = l.app_key(name, app);
        let env = l.env_vars(app);
        let deps: Vec<ResourceKey> = env
            .iter()
            .filter_map(|e| match &e.source {
                EnvSource::Output { resource, .. } => Some(resource.clone()),
                _ => None,
            })
            .collect();
        // Production serves the app's domains; a preview gets `<app>-pr-<N>.<zone>` when it
        // is behind an access policy.
        let (domains, access): (Vec<String>, Option<String>) = match l.pr() {
            None => (app.domains.clone(), app.access.clone()),
            Some(n) => match (&zone, &preview_access) {
                (Some(z), Some(a)) if a != "public" => {
                    (vec![format!("{name}-pr-{n}.{z}")], Some(a.clone()))
                }
                _ => (Vec::new(), None),
            },
        };
        let public = access.as_deref().is_none_or(|a| a == "public");
        if let Some(fw) = app.framework {
            let build = app.build.clone().unwrap_or_default();
            l.add(
                key.clone(),
                origin.clone(),
                ResourceSpec::VercelProject(Box::new(VercelProject {
                    framework: vercel_framework(fw).map(str::to_owned),
                    root_directory: app.root.clone(),
                    build_command: build.command,
                    install_command: build.install,
                    output_directory: build.output,
                    node_version: build.node.map(|n| format!("{n}.x")),
                    production_branch: cfg.environments.production.branch.clone(),
                    env,
                    preview_branch_of_pr: l.pr(),
                    git_repository: None,
                    production_commit: None,
                })),
                deps,
            );
        } else {
            let mut deps = deps;
            let (env, cloud_sql) = l.cloud_sql_consumer(env);
            deps.extend(cloud_sql.iter().map(|m| m.instance.clone()));
            // Secrets never travel as plain env on Cloud Run: each one becomes a Secret
            // Manager secret the service references.
            for var in &env {
                if var.source.is_secret() {
                    let secret =
                        ResourceKey::new(Kind::Secret, format!("{}-{}", key.name, var.name));
                    let secret_deps: Vec<ResourceKey> = match &var.source {
                        EnvSource::Output { resource, .. } => vec![resource.clone()],
                        _ => Vec::new(),
                    };
                    l.add(
                        secret.clone(),
                        origin.clone(),
                        ResourceSpec::Secret(Secret {
                            env: var.name.clone(),
                            source: var.source.clone(),
                        }),
                        secret_deps,
                    );
                    deps.push(secret);
                }
            }
            let res = app.resources.clone().unwrap_or_default();
            let cpu = res
                .cpu
                .as_ref()
                .and_then(|c| units::cpu_value(c).ok())
                .unwrap_or(1.0);
            let memory = res
                .memory
                .as_deref()
                .and_then(|m| units::memory_mib(m).ok())
                .unwrap_or(512);
            let scaling = app.scaling.clone().unwrap_or_default();
            let probe = app.health.as_ref().map(|h| Probe {
                path: h.path.as_str().into(),
                period_seconds: secs(&h.interval, 10) as u32,
                timeout_seconds: secs(&h.timeout, 1) as u32,
                initial_delay_seconds: secs(&h.initial_delay, 0) as u32,
                failure_threshold: h.failure_threshold.unwrap_or(3),
            });
            l.add(
                key.clone(),
                origin.clone(),
                ResourceSpec::CloudRunService(Box::new(CloudRunService {
                    region: app.region.clone().unwrap_or_default().into(),
                    image: app.image.clone().unwrap_or_default().into(),
                    port: app.port.and_then(|p| u16::try_from(p).ok()).unwrap_or(8080),
                    command: app.command.clone().unwrap_or_default(),
                    args: app.args.clone().unwrap_or_default(),
                    cpu: units::cpu_text(cpu).into(),
                    memory_mib: memory,
                    min_instances: scaling.min.unwrap_or(0),
                    max_instances: scaling.max.unwrap_or(100),
                    concurrency: scaling.concurrency.unwrap_or(80),
                    probe,
                    public,
                    env,
                    cloud_sql,
                })),
                deps,
            );
        }
        let mut records = Vec::new();
        for host in &domains {
            let (kind, domain_key) = if app.framework.is_some() {
                (
                    Kind::VercelDomain,
                    ResourceKey::new(Kind::VercelDomain, host.clone()),
                )
            } else {
                (
                    Kind::CloudRunDomainMapping,
                    ResourceKey::new(Kind::CloudRunDomainMapping, host.clone()),
                )
            };
            let domain = Domain {
                hostname: host.as_str().into(),
                target: key.clone(),
            };
            l.add(
                domain_key.clone(),
                origin.clone(),
                if kind == Kind::VercelDomain {
                    ResourceSpec::VercelDomain(domain)
                } else {
                    ResourceSpec::CloudRunDomainMapping(domain)
                },
                [key.clone()],
            );
            if let Some(z) = &zone {
                let record = ResourceKey::new(Kind::DnsRecord, host.clone());
                let mut deps = vec![domain_key, key.clone()];
                deps.extend(zone_key.clone());
                l.add(
                    record.clone(),
                    origin.clone(),
                    ResourceSpec::DnsRecord(DnsRecord {
                        zone: z.as_str().into(),
                        hostname: host.as_str().into(),
                        proxied: true,
                        target: key.clone(),
                    }),
                    deps,
                );
                records.push(record);
            }
        }
        if let Some(policy) = access.filter(|a| a != "public")
            && !domains.is_empty()
        {
            let policy_key = ResourceKey::new(Kind::AccessPolicy, l.prefixed(&policy));
            let mut deps = records.clone();
            deps.push(policy_key.clone());
            // Named after the environment's app resource plus the PR for Vercel previews,
            // which share the production project: production and each preview own a
            // separate Access application.
            let access_name = match (l.pr(), app.framework.is_some()) {
                (Some(n), true) => format!("{}-pr-{n}", key.name),
                _ => key.name.to_string(),
            };
            l.add(
                ResourceKey::new(Kind::AccessApplication, access_name),
                origin,
                ResourceSpec::AccessApplication(AccessApplication {
                    domains: domains.clone(),
                    policy: policy_key,
                }),
                deps,
            );
        }
    }

    DesiredState {
        project: cfg.project.clone(),
        environment: env,
        reconcile: ReconcilePolicy {
            drift_cron: cfg
                .reconcile
                .drift
                .clone()
                .unwrap_or_else(|| DEFAULT_DRIFT.into()),
            on_drift: match cfg.reconcile.on_drift {
                file::OnDrift::Correct => "correct",
                file::OnDrift::Warn => "warn",
                file::OnDrift::Ignore => "ignore",
            },
            prune: cfg.reconcile.prune,
            preview_ttl_seconds: cfg
                .environments
                .preview
                .as_ref()
                .map(|p| secs(&p.ttl, 7 * 86_400)),
            preview_max: cfg.environments.preview.as_ref().and_then(|p| p.max),
            production_branch: cfg.environments.production.branch.clone(),
        },
        resources: l.out,
    }
}

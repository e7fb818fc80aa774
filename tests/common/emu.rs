//! Driving the reconcile loop against the in-process emulator, as the CLI does, with HTTP
//! settings tightened so faults and polls resolve in test time.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use telbase::apply::{self, NoIdentity, Report};
use telbase::emulator::{self, Handle};
use telbase::model::{ActualState, DesiredState, Environment};
use telbase::plan::{self, Plan};
use telbase::providers::http::{Http, HttpConfig};
use telbase::providers::{self, Credentials, GitRef, Registry, RetryPolicy, Scope};

pub async fn start(config: emulator::Config) -> Handle {
    emulator::start("127.0.0.1:0".parse().unwrap(), config)
        .await
        .expect("start the emulator")
}

/// HTTP settings for tests: short timeouts, quick polls, retries that still honour
/// `Retry-After`.
pub fn http_config() -> HttpConfig {
    HttpConfig {
        timeout: Duration::from_millis(1500),
        retry: RetryPolicy {
            max_attempts: 8,
            base: Duration::from_millis(20),
            max_delay: Duration::from_millis(400),
            deadline: Duration::from_secs(60),
        },
        poll_interval: Duration::from_millis(5),
        poll_max_interval: Duration::from_millis(20),
        poll_deadline: Duration::from_secs(30),
        max_in_flight: 16,
    }
}

pub struct Run {
    pub desired: DesiredState,
    pub scope: Scope,
    pub registry: Registry,
    pub http: Http,
}

/// A run of `src` (a telbase.yaml) in production against the emulator at `url`, with a
/// pinned commit so deployments happen.
pub fn run(src: &str, url: &str, sha: &str, http: HttpConfig) -> Run {
    run_with(src, url, sha, Http::new(http).expect("http client"))
}

/// The same, sharing an HTTP client (and its per-provider in-flight limits) with other runs,
/// as a server does.
pub fn run_with(src: &str, url: &str, sha: &str, http: Http) -> Run {
    let (mut desired, _) =
        telbase::config::load_str(src, Environment::Production).expect("the config is valid");
    let repo = format!("telbase-tests/{}", desired.project);
    desired.pin_git(Some(&repo), sha);
    let creds = Credentials {
        emulator: Some(url.to_owned()),
        ..Credentials::default()
    };
    let registry = providers::registry_for(&desired, &creds, &http).expect("clients");
    let scope = Scope {
        project: desired.project.clone(),
        environment: desired.environment,
        git: Some(GitRef {
            repo,
            sha: sha.to_owned(),
            branch: "main".into(),
        }),
    };
    Run {
        desired,
        scope,
        registry,
        http,
    }
}

impl Run {
    /// Add a Vercel domain for `project-app` (files that use domains need Cloudflare, which
    /// this version does not drive, so tests add them to the lowered state directly).
    pub fn add_domain(&mut self, app: &str, host: &str) {
        use telbase::model::{Domain, Kind, Resource, ResourceKey, ResourceSpec};
        let target = ResourceKey::new(
            Kind::VercelProject,
            format!("{}-{app}", self.desired.project),
        );
        let key = ResourceKey::new(Kind::VercelDomain, host);
        self.desired.resources.insert(
            key.clone(),
            Resource {
                key,
                origin: format!("apps.{app}"),
                spec: ResourceSpec::VercelDomain(Domain {
                    hostname: host.into(),
                    target: target.clone(),
                }),
                depends_on: [target].into(),
                allow_data_loss: false,
            },
        );
    }

    pub async fn observe(&self) -> Result<ActualState, providers::ProviderError> {
        apply::observe(&self.registry, &self.scope).await
    }

    pub async fn plan(&self) -> Result<(Plan, ActualState), providers::ProviderError> {
        let actual = self.observe().await?;
        Ok((plan::plan(&self.desired, &actual), actual))
    }

    pub async fn apply(&self, plan: Plan, actual: ActualState, concurrency: usize) -> Report {
        apply::execute(
            Arc::new(plan),
            Arc::new(self.desired.clone()),
            Arc::new(actual),
            Arc::new(self.registry.clone()),
            Arc::new(self.scope.clone()),
            Arc::new(NoIdentity),
            apply::Options {
                concurrency,
                on_event: None,
            },
        )
        .await
    }

    /// Plan and apply until a plan has no changes, at most `rounds` times; returns the
    /// number of rounds that applied something. Failed rounds (faults) just go again.
    pub async fn converge(&self, rounds: usize) -> Result<usize, String> {
        let mut applied = 0;
        for _ in 0..rounds {
            let (plan, actual) = match self.plan().await {
                Ok(p) => p,
                Err(_) => continue,
            };
            if !plan.has_changes() {
                return Ok(applied);
            }
            applied += 1;
            let _ = self.apply(plan, actual, 4).await;
        }
        Err(format!("not converged after {rounds} rounds"))
    }
}

/// A small telbase.yaml: one Next.js app reading one Neon database's URL.
pub fn quickstart(project: &str) -> String {
    format!(
        r#"version: 1
project: {project}
environments:
  production:
    branch: main
apps:
  web:
    framework: nextjs
    build:
      node: 22
    env:
      DATABASE_URL: {{ from: databases.main.url }}
      SITE: {project}
databases:
  main:
    engine: postgres
    region: aws-us-east-2
    version: 17
"#
    )
}

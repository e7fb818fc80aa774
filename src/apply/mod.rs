//! The executor: carries out a `Plan` and makes no choices of its own (as omicron's
//! executor does for the reconfigurator's blueprints).
//!
//! Steps run in dependency order (creates and updates after what they depend on; deletions
//! after everything else, dependents first by teardown rank), with bounded concurrency per
//! provider. A failed step stops only the steps that depend on it; everything else goes on,
//! and the report says per resource what happened. Each step is one idempotent provider
//! call sequence, so running the same plan again after a crash or a kill finishes the work
//! without duplicates. Values a step needs (sealed secrets, connection strings) are opened
//! or fetched right before its call, handed to the provider, and dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use serde::Serialize;
use sha2::Digest as _;

use crate::model::{ActualState, DesiredState, EnvSource, Provider, ResourceKey, ResourceSpec};
use crate::plan::{Action, Plan};
use crate::providers::{Applied, Change, Inputs, ProviderError, Registry, Scope};

/// Opens age-sealed values at apply time.
pub trait Opener: Send + Sync {
    /// The plaintext of an armored age value, or why it cannot be opened.
    fn open(&self, armor: &str) -> Result<SecretString, String>;

    /// Every variable of a SOPS env file, decrypted and verified. Called at most once per
    /// file per apply (the executor keeps the result for the steps that need it). Openers
    /// without an identity answer [`no_identity_for_sops`].
    fn open_sops(&self, file: &Path) -> Result<EnvFileValues, String>;

    /// The plaintext of a stored value (`stored: true`) of `project`'s `environment`,
    /// refusing it unless its keyed fingerprint is `fingerprint`, the one the plan was made
    /// with (a value changed by `env set` since then needs a new plan). Openers without a
    /// store answer [`no_store`].
    ///
    /// No method has a default: an opener that wraps another must forward every kind of
    /// value, and a default that refuses would silently break wrapped openers.
    fn open_stored(
        &self,
        project: &str,
        environment: &str,
        name: &str,
        fingerprint: Option<&str>,
    ) -> Result<SecretString, String>;
}

/// Why an opener without an identity cannot open a SOPS env file.
pub fn no_identity_for_sops() -> String {
    "values from a SOPS env_file need the age identity: set TELBASE_IDENTITY_FILE (a file with an AGE-SECRET-KEY-1… line)".into()
}

/// Why an opener without a store cannot open a stored value.
pub fn no_store(name: &str) -> String {
    format!("`{name}` is a stored value (`stored: true`), but this run has no store open")
}

/// An opener with no identity: every sealed value fails with a clear message.
pub struct NoIdentity;

impl Opener for NoIdentity {
    fn open(&self, _armor: &str) -> Result<SecretString, String> {
        Err("sealed values need the age identity: set TELBASE_IDENTITY (the identity itself) or TELBASE_IDENTITY_FILE (a file with an AGE-SECRET-KEY-1… line)".into())
    }

    fn open_sops(&self, _file: &Path) -> Result<EnvFileValues, String> {
        Err(no_identity_for_sops())
    }

    fn open_stored(
        &self,
        _project: &str,
        _environment: &str,
        name: &str,
        _fingerprint: Option<&str>,
    ) -> Result<SecretString, String> {
        Err(no_store(name))
    }
}

/// Opens with the X25519 identities of an identity file (the first that matches wins),
/// through `secrets::open`, so apply and `telbase secrets reveal` accept the same files and
/// fail with the same distinct reasons.
pub struct AgeOpener(pub Vec<age::x25519::Identity>);

impl Opener for AgeOpener {
    fn open(&self, armor: &str) -> Result<SecretString, String> {
        let plain = crate::secrets::open(armor.as_bytes(), &self.0).map_err(|e| e.to_string())?;
        let text = std::str::from_utf8(&plain)
            .map_err(|_| "the sealed value is not UTF-8 text".to_owned())?;
        Ok(SecretString::from(text.to_owned()))
    }

    fn open_sops(&self, file: &Path) -> Result<EnvFileValues, String> {
        let opened = crate::secrets::sops::SopsFile::read(file).and_then(|f| {
            // Both in file order, from the same parse: names and ciphertext, then values.
            Ok(f.env_keys()?.into_iter().zip(f.open_env(&self.0)?))
        });
        let opened = opened.map_err(|e| format!("{}: {e}", file.display()))?;
        Ok(opened
            .map(|(key, (_, value))| EnvFileValue {
                name: key.name,
                stored: key.stored,
                value,
            })
            .collect())
    }

    fn open_stored(
        &self,
        _project: &str,
        _environment: &str,
        name: &str,
        _fingerprint: Option<&str>,
    ) -> Result<SecretString, String> {
        Err(no_store(name))
    }
}

/// The opener of one apply: SOPS env files are opened (and their MAC verified) once per
/// file, however many steps read them, and their values are dropped, zeroized, with the
/// apply. A failure is kept too, so every step that needs the file reports the same cause.
struct OncePerFile {
    inner: Arc<dyn Opener>,
    files: Mutex<BTreeMap<PathBuf, Result<EnvFileValues, String>>>,
}

/// One variable of a SOPS env file as opened at apply time.
#[derive(Clone)]
pub struct EnvFileValue {
    pub name: String,
    /// Its text as stored in the file (`ENC[…]`), to check that it is the value the plan
    /// was made with.
    pub stored: String,
    pub value: SecretString,
}

/// A SOPS env file's variables, in file order.
pub type EnvFileValues = Vec<EnvFileValue>;

impl Opener for OncePerFile {
    fn open(&self, armor: &str) -> Result<SecretString, String> {
        self.inner.open(armor)
    }

    fn open_sops(&self, file: &Path) -> Result<EnvFileValues, String> {
        // Opening runs under the lock so that two steps never open the same file twice; it
        // is quick, synchronous work (one age header, one AES-GCM pass over a small file).
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        files
            .entry(file.to_owned())
            .or_insert_with(|| self.inner.open_sops(file))
            .clone()
    }

    fn open_stored(
        &self,
        project: &str,
        environment: &str,
        name: &str,
        fingerprint: Option<&str>,
    ) -> Result<SecretString, String> {
        self.inner
            .open_stored(project, environment, name, fingerprint)
    }
}

/// What happened to one step.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase", tag = "outcome")]
pub enum Outcome {
    Done {
        #[serde(skip_serializing_if = "Option::is_none")]
        url: Option<String>,
    },
    Failed {
        error: String,
    },
    /// Not attempted because a step it depends on failed.
    Skipped {
        because: ResourceKey,
    },
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepReport {
    pub key: ResourceKey,
    pub action: Action,
    #[serde(flatten)]
    pub outcome: Outcome,
    pub millis: u64,
}

/// The result of an apply.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    pub steps: Vec<StepReport>,
}

impl Report {
    pub fn succeeded(&self) -> bool {
        self.steps
            .iter()
            .all(|s| matches!(s.outcome, Outcome::Done { .. }))
    }

    pub fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.steps.iter().filter(|s| f(&s.outcome)).count()
    }
}

/// Progress notifications, for terminals and logs.
#[derive(Debug, Clone)]
pub enum Event {
    Started(ResourceKey, Action),
    Finished(StepReport),
}

/// How the executor runs.
#[derive(Clone)]
pub struct Options {
    /// Calls in flight at once, per provider.
    pub concurrency: usize,
    pub on_event: Option<Arc<dyn Fn(Event) + Send + Sync>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            concurrency: 8,
            on_event: None,
        }
    }
}

/// What a resource needs opened or fetched at apply time, by input name. A Cloud Run
/// service needs none of its secret values: those live in Secret Manager (each its own
/// `Secret` resource, resolved when that is written) and the service only references them.
fn needs(spec: &ResourceSpec) -> Vec<(&str, std::borrow::Cow<'_, EnvSource>)> {
    use std::borrow::Cow;
    match spec {
        ResourceSpec::VercelProject(p) => p
            .env
            .iter()
            .map(|v| (v.name.as_str(), Cow::Borrowed(&v.source)))
            .collect(),
        ResourceSpec::CloudRunService(s) => s
            .env
            .iter()
            .filter(|v| !v.source.is_secret())
            .map(|v| (v.name.as_str(), Cow::Borrowed(&v.source)))
            .collect(),
        ResourceSpec::Secret(s) => vec![(s.env.as_str(), Cow::Borrowed(&s.source))],
        ResourceSpec::CloudSqlUser(u) => vec![(
            "password",
            Cow::Owned(EnvSource::Output {
                resource: u.password_secret.clone(),
                output: crate::model::Output::Password,
            }),
        )],
        _ => Vec::new(),
    }
}

/// A fresh random credential: 32 bytes from the operating system's generator, base64url
/// without padding (43 characters, safe in URLs and connection strings).
fn generate_secret() -> Result<SecretString, String> {
    use ring::rand::SecureRandom as _;
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    ring::rand::SystemRandom::new()
        .fill(bytes.as_mut())
        .map_err(|_| "the system random generator failed".to_owned())?;
    use base64::Engine as _;
    let out = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes[..]);
    Ok(SecretString::from(out))
}

/// Resolve the values a resource needs: `from:` outputs from their providers, sealed and
/// stored values with the opener, generated credentials fresh. Plain values need nothing.
async fn resolve_inputs(
    key: &ResourceKey,
    desired: &DesiredState,
    registry: &Registry,
    scope: &Scope,
    opener: &dyn Opener,
) -> Result<Inputs, String> {
    let Some(spec) = desired.resources.get(key).map(|r| &r.spec) else {
        return Ok(Inputs::default());
    };
    let mut inputs = Inputs::default();
    for (name, source) in needs(spec) {
        match source.as_ref() {
            EnvSource::Plain(_) => {}
            EnvSource::Generated => {
                inputs.env.insert(name.to_owned(), generate_secret()?);
            }
            EnvSource::Stored {
                name: stored,
                fingerprint,
            } => {
                let environment = crate::secrets::stored::store_environment(desired.environment);
                let v = opener
                    .open_stored(
                        &desired.project,
                        environment,
                        stored,
                        fingerprint.as_deref(),
                    )
                    .map_err(|e| format!("{name}: {e}"))?;
                inputs.env.insert(name.to_owned(), v);
            }
            EnvSource::Sealed(s) => {
                let v = match (s.sops_source(), s.armor()) {
                    (Some(source), _) => opener.open_sops(&source.file).and_then(|vars| {
                        let changed = || {
                            format!(
                                "{} changed after the plan was made (`{}` is no longer the value planned); plan again",
                                source.file.display(),
                                source.name
                            )
                        };
                        let var = vars
                            .into_iter()
                            .find(|v| v.name == source.name)
                            .ok_or_else(changed)?;
                        // Write only the value the plan showed (by fingerprint), never a newer
                        // one under the old fingerprint.
                        let now = crate::model::Sealed::sops(
                            source.file.clone(),
                            var.name.clone(),
                            &var.stored,
                        );
                        if now != *s {
                            return Err(changed());
                        }
                        Ok(var.value)
                    }),
                    (None, Some(armor)) => opener.open(armor),
                    (None, None) => Err("the sealed value is not in the file".to_owned()),
                }
                .map_err(|e| format!("{name}: {e}"))?;
                inputs.env.insert(name.to_owned(), v);
            }
            EnvSource::Output { resource, output } => {
                let source = desired
                    .resources
                    .get(resource)
                    .ok_or_else(|| format!("{name}: {resource} is not part of this environment"))?;
                let provider = registry.get(&resource.provider()).ok_or_else(|| {
                    format!("{name}: no client for {}", resource.provider().as_str())
                })?;
                let v = provider
                    .output(scope, source, *output)
                    .await
                    .map_err(|e| e.to_string())?;
                inputs.env.insert(name.to_owned(), v);
            }
        }
    }
    Ok(inputs)
}

async fn run_step(
    index: usize,
    plan: Arc<Plan>,
    desired: Arc<DesiredState>,
    actual: Arc<ActualState>,
    registry: Arc<Registry>,
    scope: Arc<Scope>,
    opener: Arc<dyn Opener>,
) -> Result<Applied, String> {
    let step = &plan.steps[index];
    let provider = registry
        .get(&step.key.provider())
        .ok_or_else(|| format!("no client for {}", step.key.provider().as_str()))?;
    let res = desired.resources.get(&step.key);
    let obs = actual.resources.get(&step.key);
    let change = match (step.action, res, obs) {
        (Action::Create, Some(d), _) => Change::Create { desired: d },
        (Action::Update, Some(d), Some(o)) => Change::Update {
            desired: d,
            observed: o,
            changes: &step.changes,
        },
        (Action::Replace, Some(d), Some(o)) => Change::Replace {
            desired: d,
            observed: o,
        },
        (Action::Delete, _, Some(o)) => Change::Delete { observed: o },
        (action, _, _) => {
            return Err(format!(
                "the plan says {action:?} but the states it was made from do not have this resource"
            ));
        }
    };
    let inputs = match step.action {
        Action::Delete => Inputs::default(),
        _ => resolve_inputs(&step.key, &desired, &registry, &scope, opener.as_ref()).await?,
    };
    provider
        .apply(&scope, change, &inputs, &desired)
        .await
        .map_err(|e: ProviderError| e.to_string())
}

/// Carry out `plan`, made from `desired` and `actual`.
pub async fn execute(
    plan: Arc<Plan>,
    desired: Arc<DesiredState>,
    actual: Arc<ActualState>,
    registry: Arc<Registry>,
    scope: Arc<Scope>,
    opener: Arc<dyn Opener>,
    options: Options,
) -> Report {
    // Which steps wait for which.
    let todo: Vec<usize> = (0..plan.steps.len())
        .filter(|i| plan.steps[*i].action != Action::NoOp)
        .collect();
    let index: BTreeMap<&ResourceKey, usize> =
        todo.iter().map(|i| (&plan.steps[*i].key, *i)).collect();
    let mut waits: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    let writes: Vec<usize> = todo
        .iter()
        .copied()
        .filter(|i| plan.steps[*i].action != Action::Delete)
        .collect();
    for &i in &todo {
        let step = &plan.steps[i];
        let deps: BTreeSet<usize> = if step.action == Action::Delete {
            let rank = step.key.kind.teardown_rank();
            // Deletions go last, and dependents (lower rank) before what they stand on.
            writes
                .iter()
                .copied()
                .chain(todo.iter().copied().filter(|j| {
                    let s = &plan.steps[*j];
                    s.action == Action::Delete && s.key.kind.teardown_rank() < rank
                }))
                .collect()
        } else {
            desired
                .resources
                .get(&step.key)
                .map(|r| {
                    r.depends_on
                        .iter()
                        .filter_map(|d| index.get(d).copied())
                        .collect()
                })
                .unwrap_or_default()
        };
        waits.insert(i, deps);
    }

    let mut semaphores: BTreeMap<Provider, Arc<tokio::sync::Semaphore>> = BTreeMap::new();
    for &i in &todo {
        semaphores
            .entry(plan.steps[i].key.provider())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(options.concurrency.max(1))));
    }
    let notify = |e: Event| {
        if let Some(f) = &options.on_event {
            f(e);
        }
    };

    let mut done: BTreeMap<usize, bool> = BTreeMap::new();
    let mut reports: BTreeMap<usize, StepReport> = BTreeMap::new();
    let mut started: BTreeSet<usize> = BTreeSet::new();
    let mut set = tokio::task::JoinSet::new();
    let opener: Arc<dyn Opener> = Arc::new(OncePerFile {
        inner: opener,
        files: Mutex::default(),
    });
    loop {
        // Skip whatever waits on a failure; start whatever is ready.
        let mut progressed = true;
        while progressed {
            progressed = false;
            for &i in &todo {
                if started.contains(&i) {
                    continue;
                }
                let deps = &waits[&i];
                if let Some(&failed) = deps.iter().find(|d| done.get(d) == Some(&false)) {
                    started.insert(i);
                    done.insert(i, false);
                    let r = StepReport {
                        key: plan.steps[i].key.clone(),
                        action: plan.steps[i].action,
                        outcome: Outcome::Skipped {
                            because: plan.steps[failed].key.clone(),
                        },
                        millis: 0,
                    };
                    notify(Event::Finished(r.clone()));
                    reports.insert(i, r);
                    progressed = true;
                } else if deps.iter().all(|d| done.get(d) == Some(&true)) {
                    started.insert(i);
                    let sem = semaphores[&plan.steps[i].key.provider()].clone();
                    let (plan, desired, actual, registry, scope, opener) = (
                        plan.clone(),
                        desired.clone(),
                        actual.clone(),
                        registry.clone(),
                        scope.clone(),
                        opener.clone(),
                    );
                    let on_event = options.on_event.clone();
                    set.spawn(async move {
                        let _permit = sem.acquire_owned().await;
                        if let Some(f) = &on_event {
                            f(Event::Started(
                                plan.steps[i].key.clone(),
                                plan.steps[i].action,
                            ));
                        }
                        let t = Instant::now();
                        let r = run_step(i, plan, desired, actual, registry, scope, opener).await;
                        (i, r, t.elapsed())
                    });
                }
            }
        }
        let Some(joined) = set.join_next().await else {
            break;
        };
        let (i, result, took): (usize, Result<Applied, String>, Duration) = match joined {
            Ok(v) => v,
            // A panicking provider is a bug; report it rather than take the run down.
            Err(e) => {
                tracing::error!(error = %e, "an apply task failed");
                continue;
            }
        };
        let outcome = match result {
            Ok(applied) => Outcome::Done { url: applied.url },
            Err(error) => Outcome::Failed { error },
        };
        done.insert(i, matches!(outcome, Outcome::Done { .. }));
        let r = StepReport {
            key: plan.steps[i].key.clone(),
            action: plan.steps[i].action,
            outcome,
            millis: took.as_millis() as u64,
        };
        notify(Event::Finished(r.clone()));
        reports.insert(i, r);
    }
    // Anything never started (only possible after a task panicked) is reported as such.
    for &i in &todo {
        reports.entry(i).or_insert_with(|| StepReport {
            key: plan.steps[i].key.clone(),
            action: plan.steps[i].action,
            outcome: Outcome::Failed {
                error: "not run: an earlier task stopped unexpectedly".into(),
            },
            millis: 0,
        });
    }
    Report {
        steps: reports.into_values().collect(),
    }
}

/// Observe everything a desired state's providers hold for this scope, all providers at
/// once (they are independent).
pub async fn observe(registry: &Registry, scope: &Scope) -> Result<ActualState, ProviderError> {
    let results = futures_util::future::join_all(registry.values().map(|p| p.observe(scope))).await;
    let mut actual = ActualState::default();
    for r in results {
        for o in r? {
            actual.resources.insert(o.key.clone(), o);
        }
    }
    Ok(actual)
}

/// A short fingerprint of a serializable state, for saved plans: equal fingerprints mean
/// the same state as far as the planner can see.
pub fn fingerprint<T: Serialize>(v: &T) -> String {
    let bytes = serde_json::to_vec(v).unwrap_or_default();
    let d = sha2::Sha256::digest(&bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

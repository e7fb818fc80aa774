//! Stored secrets: the operations behind `telbase env …` and `telbase keys …`, joining the
//! store's rows ([`crate::store::SecretRows`]) with the envelope ([`super::envelope`]).
//!
//! `set` reserves a version, seals the value under a fresh data key and stores it with its
//! keyed fingerprint; `open` reverses it; `rotate_keyring` moves every wrapped key onto the
//! newest master key and retires the old ones. Rotation is built to be killed at any instant
//! and simply run again: the new key is durably in the keyring file before any row uses it;
//! rows are re-wrapped in small transactions, each a compare-and-swap on the row as read; and
//! a key is marked retired only after the store reports no row using it (retired keys stay in
//! the file, so even a row a concurrent writer wrapped under an old key at the last moment
//! still opens, and the next rotation moves it).

use std::path::Path;

use secrecy::SecretString;
use zeroize::Zeroizing;

use super::envelope::{self, EnvelopeError, KeyBytes, KeyProvider, Keyring};
use crate::store::{
    RowRef, SealedValue, SecretName, SecretRows, StoreError, WrappedFingerprintKey,
};

/// Why a stored-secret operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoredError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error(
        "another `telbase keys rotate` is running (it holds {0}); wait for it, or if it was killed this lock is already free, so run again"
    )]
    RotationRunning(String),
    #[error(
        "nothing to rotate to: the keyring has one active key and every value already uses it; add a new key line at the end of {0}, or pass --generate"
    )]
    NothingToRotate(String),
    #[error(
        "key rotation writes the keyring file, so it needs TELBASE_MASTER_KEY_FILE (TELBASE_MASTER_KEY holds one key and cannot be rotated in place: copy it into a keyring file as `<id> <base64>`)"
    )]
    NoKeyringFile,
    #[error("{0}")]
    Stuck(String),
}

/// The store's fingerprint key, creating it (random, wrapped under the current master key)
/// the first time.
pub fn fingerprint_key(
    store: &mut dyn SecretRows,
    keys: &dyn KeyProvider,
) -> Result<KeyBytes, StoredError> {
    let wrapped = match store.fingerprint_key()? {
        Some(w) => w,
        None => {
            let key = envelope::random_key()?;
            let key_id = keys.current_key_id()?;
            let wrapped_key = envelope::wrap_for(keys, &RowRef::FingerprintKey, &key_id, &key)?;
            // Two racing creators both insert; only the first row stays, and both use it.
            store.create_fingerprint_key(&WrappedFingerprintKey {
                key_id,
                wrapped_key,
            })?
        }
    };
    Ok(envelope::unwrap_for(
        keys,
        &RowRef::FingerprintKey,
        &wrapped.key_id,
        &wrapped.wrapped_key,
    )?)
}

/// Stores `plaintext` as a new version of `name`; returns the stored record (no plaintext).
pub fn set(
    store: &mut dyn SecretRows,
    keys: &dyn KeyProvider,
    name: &SecretName,
    plaintext: &[u8],
) -> Result<SealedValue, StoredError> {
    let fk = fingerprint_key(store, keys)?;
    let fingerprint = envelope::fingerprint(&fk, name, plaintext);
    let version = store.reserve_version(name)?;
    let env = envelope::seal(keys, name, version, plaintext)?;
    let value = SealedValue {
        version,
        key_id: env.key_id,
        wrapped_key: env.wrapped_key,
        ciphertext: env.ciphertext,
        fingerprint,
        updated_at: crate::store::sqlite::now(),
    };
    store.put_value(name, &value)?;
    Ok(value)
}

/// An opened value: its plaintext (wiped on drop) and its keyed fingerprint.
pub type Opened = (Zeroizing<Vec<u8>>, String);

/// The current plaintext of `name` and its fingerprint, or `None` when it is not set.
pub fn open(
    store: &mut dyn SecretRows,
    keys: &dyn KeyProvider,
    name: &SecretName,
) -> Result<Option<Opened>, StoredError> {
    let Some(found) = store.get_value(name)? else {
        return Ok(None);
    };
    let v = found.value;
    let plain = envelope::open(
        keys,
        name,
        v.version,
        &envelope::Envelope {
            key_id: v.key_id,
            wrapped_key: v.wrapped_key,
            ciphertext: v.ciphertext,
        },
    )?;
    // The fingerprint column is not covered by the ciphertext's authentication, and plans
    // trust it: recompute it, so an edited fingerprint can never make a plan show
    // "unchanged" for a value that is then written.
    let fk = fingerprint_key(store, keys)?;
    if envelope::fingerprint(&fk, name, &plain) != v.fingerprint {
        return Err(EnvelopeError::Authentication {
            what: format!(
                "the fingerprint recorded for {}",
                envelope::describe(&RowRef::Value {
                    name: name.clone(),
                    version: v.version,
                })
            ),
        }
        .into());
    }
    Ok(Some((plain, v.fingerprint)))
}

/// [`open`] as text, for handing to a provider.
pub fn open_text(
    store: &mut dyn SecretRows,
    keys: &dyn KeyProvider,
    name: &SecretName,
) -> Result<Option<SecretString>, StoredError> {
    Ok(match open(store, keys, name)? {
        None => None,
        Some((plain, _)) => Some(SecretString::from(
            String::from_utf8(plain.to_vec()).map_err(|_| EnvelopeError::Format {
                what: envelope::describe(&RowRef::Value {
                    name: name.clone(),
                    version: 0,
                }),
                why: "the value is not UTF-8 text",
            })?,
        )),
    })
}

/// Re-wraps every wrapped key not under `target` onto it, `batch` rows per transaction.
/// Values are never re-encrypted. Returns how many rows were re-wrapped.
pub fn rewrap_all(
    store: &mut dyn SecretRows,
    keys: &dyn KeyProvider,
    target: &str,
    batch: usize,
    mut progress: impl FnMut(usize),
) -> Result<usize, StoredError> {
    let mut done = 0;
    let mut idle_rounds = 0;
    loop {
        let rows = store.rows_not_under(target, batch.max(1))?;
        if rows.is_empty() {
            return Ok(done);
        }
        let mut updates = Vec::with_capacity(rows.len());
        for row in rows {
            let key = envelope::unwrap_for(keys, &row.row, &row.key_id, &row.wrapped_key)?;
            let wrapped = envelope::wrap_for(keys, &row.row, target, &key)?;
            updates.push((row, target.to_owned(), wrapped));
        }
        let changed = store.rewrap(&updates)?;
        done += changed;
        progress(done);
        // Rows only fail the compare-and-swap when something rewrote them in between; if
        // nothing at all moves for many rounds, something else is wrong.
        idle_rounds = if changed == 0 { idle_rounds + 1 } else { 0 };
        if idle_rounds > 100 {
            return Err(StoredError::Stuck(
                "key rotation made no progress: rows keep changing under it".into(),
            ));
        }
    }
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotateReport {
    /// The key everything is wrapped under now.
    pub target: String,
    /// True if this run generated `target`.
    pub generated: bool,
    /// True if a previous, interrupted rotation was finished instead of starting a new one.
    pub resumed: bool,
    pub rewrapped: usize,
    pub retired: Vec<String>,
}

/// Rotates the master key of the keyring file at `path`, over every row of `store`.
///
/// With `generate`, a new key is generated and appended (made durable before use), unless
/// the keyring already has more than one active key: then an earlier rotation was
/// interrupted, and this run finishes it instead of starting another. Without `generate`, the
/// operator has appended the new key by hand, and it is the target. Every row is re-wrapped
/// onto the target; then each other active key that no row uses is marked retired.
pub fn rotate_keyring(
    store: &mut dyn SecretRows,
    path: &Path,
    generate: bool,
    batch: usize,
    progress: impl FnMut(usize),
) -> Result<RotateReport, StoredError> {
    let lock_path = path.with_file_name(format!(
        ".{}.lock",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    // Held until this function returns; the OS releases it if the process is killed.
    let _lock = crate::store::sqlite::FileLock::try_acquire(&lock_path)
        .map_err(StoredError::Store)?
        .ok_or_else(|| StoredError::RotationRunning(lock_path.display().to_string()))?;
    // And the store's own lock: with PostgreSQL, a rotation on another machine.
    let _store_lock = store
        .rotation_lock()?
        .ok_or_else(|| StoredError::RotationRunning("the store's rotation lock".into()))?;
    let mut keyring = if path.exists() {
        envelope::read_keyring_file(path)?
    } else if generate {
        Keyring::parse("", &path.display().to_string())?
    } else {
        return Err(EnvelopeError::Io {
            path: path.display().to_string(),
            error: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no keyring file (create one with `telbase keys rotate --generate`)",
            ),
        }
        .into());
    };
    let active = keyring.keys().iter().filter(|k| !k.retired).count();
    let mut generated = false;
    let resumed = active > 1;
    if generate && active <= 1 {
        keyring.generate()?;
        // Durable before any row is wrapped under it.
        envelope::write_keyring_file(path, &keyring)?;
        generated = true;
    }
    let target = keyring.current_key_id()?;
    let before_others = store
        .key_usage()?
        .iter()
        .filter(|(id, n)| *id != target && *n > 0)
        .count();
    if !generated && active <= 1 && before_others == 0 {
        return Err(StoredError::NothingToRotate(path.display().to_string()));
    }
    let mut progress = progress;
    let mut rewrapped = 0;
    let mut retired = Vec::new();
    // A writer that read the keyring before the new key existed can wrap one more row under
    // an old key while we finish; a second pass picks it up. Retirement waits for zero.
    for _ in 0..10 {
        rewrapped += rewrap_all(store, &keyring, &target, batch, &mut progress)?;
        let usage = store.key_usage()?;
        let in_use = |id: &str| usage.iter().any(|(k, n)| k == id && *n > 0);
        let to_retire: Vec<String> = keyring
            .keys()
            .iter()
            .filter(|k| !k.retired && k.id != target && !in_use(&k.id))
            .map(|k| k.id.clone())
            .collect();
        let still_used = keyring
            .keys()
            .iter()
            .any(|k| !k.retired && k.id != target && in_use(&k.id));
        if !to_retire.is_empty() {
            for id in &to_retire {
                keyring.retire(id);
            }
            envelope::write_keyring_file(path, &keyring)?;
            retired.extend(to_retire);
        }
        if !still_used {
            return Ok(RotateReport {
                target,
                generated,
                resumed,
                rewrapped,
                retired,
            });
        }
    }
    Err(StoredError::Stuck(
        "old keys are still in use after ten passes: another process keeps writing under them (is one still running with an old copy of the keyring?)".into(),
    ))
}

/// The store's name for an environment: previews of every pull request share `preview`.
pub fn store_environment(env: crate::model::Environment) -> &'static str {
    match env {
        crate::model::Environment::Production => "production",
        crate::model::Environment::Preview { .. } => "preview",
    }
}

/// Every env source of the desired state, with where it is (`apps.web` and the variable).
fn sources_mut(
    desired: &mut crate::model::DesiredState,
) -> Vec<(String, String, &mut crate::model::EnvSource)> {
    use crate::model::ResourceSpec as R;
    let mut out = Vec::new();
    for r in desired.resources.values_mut() {
        let origin = r.origin.clone();
        match &mut r.spec {
            R::VercelProject(p) => out.extend(
                p.env
                    .iter_mut()
                    .map(|v| (origin.clone(), v.name.to_string(), &mut v.source)),
            ),
            R::CloudRunService(s) => out.extend(
                s.env
                    .iter_mut()
                    .map(|v| (origin.clone(), v.name.to_string(), &mut v.source)),
            ),
            R::Secret(s) => out.push((origin, s.env.to_string(), &mut s.source)),
            _ => {}
        }
    }
    out
}

/// True when the desired state has a `stored: true` variable (only then does plan or apply
/// need the store).
pub fn uses_stored(desired: &crate::model::DesiredState) -> bool {
    use crate::model::{EnvSource, ResourceSpec as R};
    let stored = |s: &EnvSource| matches!(s, EnvSource::Stored { .. });
    desired.resources.values().any(|r| match &r.spec {
        R::VercelProject(p) => p.env.iter().any(|v| stored(&v.source)),
        R::CloudRunService(s) => s.env.iter().any(|v| stored(&v.source)),
        R::Secret(s) => stored(&s.source),
        _ => false,
    })
}

/// Fills in the keyed fingerprint of every stored variable from the store (no master key
/// needed: fingerprints are kept beside the ciphertext). A variable with no stored value is
/// an error naming the command that sets it; every such variable is listed at once.
pub fn read_fingerprints(
    desired: &mut crate::model::DesiredState,
    store: &mut dyn SecretRows,
) -> Result<(), String> {
    let project = desired.project.clone();
    let environment = store_environment(desired.environment);
    let mut missing = Vec::new();
    for (origin, var, source) in sources_mut(desired) {
        let crate::model::EnvSource::Stored { name, fingerprint } = source else {
            continue;
        };
        let key = SecretName {
            project: project.clone(),
            environment: environment.to_owned(),
            name: name.clone(),
        };
        match store.get_value(&key).map_err(|e| e.to_string())? {
            Some(found) => *fingerprint = Some(found.value.fingerprint),
            None => missing.push(format!(
                "{origin}: env `{var}` is `stored: true` but project {project} has no stored {environment} value for it; set it with `telbase env set {name} --env {environment}` (value on standard input)"
            )),
        }
    }
    missing.sort();
    missing.dedup();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing.join("\n"))
    }
}

/// An apply-time opener that opens stored values from the store with the master keys, and
/// hands sealed (age) values to `age`. The store sits behind a mutex because the executor
/// shares the opener between tasks; each open is one indexed read.
pub struct StoreOpener<S: SecretRows + Send> {
    pub age: std::sync::Arc<dyn crate::apply::Opener>,
    store: std::sync::Mutex<S>,
    /// The master keys, or why there are none: an apply that writes no stored value (every
    /// one unchanged) must not fail for want of a key it never uses.
    keys: Result<Box<dyn KeyProvider>, String>,
}

impl<S: SecretRows + Send> StoreOpener<S> {
    pub fn new(
        age: std::sync::Arc<dyn crate::apply::Opener>,
        store: S,
        keys: impl KeyProvider + 'static,
    ) -> Self {
        Self::with_keys(age, store, Ok(Box::new(keys)))
    }

    /// An opener whose master keys may have failed to load (`Err` says why, and is what
    /// opening a stored value reports).
    pub fn with_keys(
        age: std::sync::Arc<dyn crate::apply::Opener>,
        store: S,
        keys: Result<Box<dyn KeyProvider>, String>,
    ) -> Self {
        StoreOpener {
            age,
            store: std::sync::Mutex::new(store),
            keys,
        }
    }
}

impl<S: SecretRows + Send> crate::apply::Opener for StoreOpener<S> {
    fn open(&self, armor: &str) -> Result<SecretString, String> {
        self.age.open(armor)
    }

    fn open_sops(&self, file: &std::path::Path) -> Result<crate::apply::EnvFileValues, String> {
        self.age.open_sops(file)
    }

    fn open_stored(
        &self,
        project: &str,
        environment: &str,
        name: &str,
        fingerprint: Option<&str>,
    ) -> Result<SecretString, String> {
        let key = SecretName {
            project: project.to_owned(),
            environment: environment.to_owned(),
            name: name.to_owned(),
        };
        let keys = self.keys.as_ref().map_err(Clone::clone)?;
        let mut store = self
            .store
            .lock()
            .map_err(|_| "the store is unusable after an earlier failure".to_owned())?;
        let (plain, found) = open(&mut *store, keys.as_ref(), &key)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| {
                format!(
                    "no stored {environment} value (unset since the plan?); set it with `telbase env set {name} --env {environment}`"
                )
            })?;
        if fingerprint.is_some_and(|want| want != found) {
            return Err(format!(
                "the stored value changed since the plan (now {found}); run plan again"
            ));
        }
        let text = String::from_utf8(plain.to_vec()).map_err(|e| {
            // Wipe the failed conversion's bytes too.
            drop(Zeroizing::new(e.into_bytes()));
            "the stored value is not UTF-8 text".to_owned()
        })?;
        Ok(SecretString::from(text))
    }
}

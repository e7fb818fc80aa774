//! Masking: every secret value a run handles in plaintext is registered with the runner
//! (`::add-mask::`) before anything could print it, so that a provider's error message or a
//! tool's log line that happens to contain it shows `***` instead.
//!
//! The values are those an apply opens or fetches: sealed, SOPS and stored values (through
//! [`MaskingOpener`], wrapped around the opener the apply uses), connection strings and
//! other outputs fetched from providers, and generated credentials (through
//! [`mask_registry`], which wraps each provider client: every value handed to a provider
//! passes through its `apply`, and every fetched output through its `output`). Masks are
//! printed only on a runner (`GITHUB_ACTIONS=true`); elsewhere the command would be noise.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use secrecy::{ExposeSecret as _, SecretString};
use sha2::Digest as _;

use crate::apply::{EnvFileValues, Opener};
use crate::model::{DesiredState, Observed, Output, Resource};
use crate::providers::{
    Applied, BoxFuture, Change, Inputs, Provider, ProviderError, Registry, Scope,
};

/// Registers secret values with the runner, once each.
pub struct Masker {
    enabled: bool,
    out: Mutex<Box<dyn Write + Send>>,
    /// SHA-256 of each value already masked: enough to skip repeats without keeping the
    /// values themselves.
    seen: Mutex<HashSet<[u8; 32]>>,
}

impl Masker {
    /// Masks to standard output when `enabled` (on a runner).
    pub fn stdout(enabled: bool) -> Arc<Masker> {
        Masker::to(enabled, Box::new(std::io::stdout()))
    }

    /// Masks to any writer (tests).
    pub fn to(enabled: bool, out: Box<dyn Write + Send>) -> Arc<Masker> {
        Arc::new(Masker {
            enabled,
            out: Mutex::new(out),
            seen: Mutex::new(HashSet::new()),
        })
    }

    /// Register `value` with the runner, before it goes anywhere else.
    pub fn mask(&self, value: &SecretString) {
        if !self.enabled {
            return;
        }
        let v = value.expose_secret();
        if v.trim().is_empty() {
            return;
        }
        let digest: [u8; 32] = sha2::Sha256::digest(v.as_bytes()).into();
        if !self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest)
        {
            return;
        }
        // The lines are written and flushed under the lock, whole, before this returns: the
        // caller prints nothing about the value until the runner has been told.
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        for line in super::command::add_mask_lines(v) {
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    }
}

/// An opener that masks every value it opens (wraps the one the apply would use).
pub struct MaskingOpener {
    pub inner: Arc<dyn Opener>,
    pub masker: Arc<Masker>,
}

impl Opener for MaskingOpener {
    fn open(&self, armor: &str) -> Result<SecretString, String> {
        let v = self.inner.open(armor)?;
        self.masker.mask(&v);
        Ok(v)
    }

    fn open_sops(&self, file: &Path) -> Result<EnvFileValues, String> {
        let vars = self.inner.open_sops(file)?;
        for v in &vars {
            self.masker.mask(&v.value);
        }
        Ok(vars)
    }

    fn open_stored(
        &self,
        project: &str,
        environment: &str,
        name: &str,
        fingerprint: Option<&str>,
    ) -> Result<SecretString, String> {
        let v = self
            .inner
            .open_stored(project, environment, name, fingerprint)?;
        self.masker.mask(&v);
        Ok(v)
    }
}

/// A provider client that masks the values passing through it: outputs it fetches, and
/// every input value (opened, fetched or generated) it is handed to write.
struct MaskingProvider {
    inner: Arc<dyn Provider>,
    masker: Arc<Masker>,
}

impl Provider for MaskingProvider {
    fn provider(&self) -> crate::model::Provider {
        self.inner.provider()
    }

    fn observe<'a>(
        &'a self,
        scope: &'a Scope,
    ) -> BoxFuture<'a, Result<Vec<Observed>, ProviderError>> {
        self.inner.observe(scope)
    }

    fn preview_environments<'a>(
        &'a self,
        project: &'a str,
    ) -> BoxFuture<'a, Result<Vec<u64>, ProviderError>> {
        self.inner.preview_environments(project)
    }

    fn apply<'a>(
        &'a self,
        scope: &'a Scope,
        change: Change<'a>,
        inputs: &'a Inputs,
        desired: &'a DesiredState,
    ) -> BoxFuture<'a, Result<Applied, ProviderError>> {
        for v in inputs.env.values() {
            self.masker.mask(v);
        }
        self.inner.apply(scope, change, inputs, desired)
    }

    fn output<'a>(
        &'a self,
        scope: &'a Scope,
        resource: &'a Resource,
        output: Output,
    ) -> BoxFuture<'a, Result<SecretString, ProviderError>> {
        Box::pin(async move {
            let v = self.inner.output(scope, resource, output).await?;
            self.masker.mask(&v);
            Ok(v)
        })
    }
}

/// The registry with every client wrapped to mask what passes through it.
pub fn mask_registry(registry: Registry, masker: &Arc<Masker>) -> Registry {
    registry
        .into_iter()
        .map(|(k, inner)| {
            let wrapped: Arc<dyn Provider> = Arc::new(MaskingProvider {
                inner,
                masker: masker.clone(),
            });
            (k, wrapped)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn each_value_is_masked_once_and_only_on_a_runner() {
        let sink = Sink::default();
        let m = Masker::to(true, Box::new(sink.clone()));
        let v = SecretString::from("postgres://u:p@h/db\nsecond line".to_owned());
        m.mask(&v);
        m.mask(&v);
        assert_eq!(
            sink.text(),
            "::add-mask::postgres://u:p@h/db\n::add-mask::second line\n"
        );
        let quiet = Sink::default();
        Masker::to(false, Box::new(quiet.clone())).mask(&v);
        assert_eq!(quiet.text(), "");
    }

    struct Fixed;
    impl Opener for Fixed {
        fn open(&self, _: &str) -> Result<SecretString, String> {
            Ok(SecretString::from("opened-sealed".to_owned()))
        }
        fn open_sops(&self, _: &Path) -> Result<EnvFileValues, String> {
            Ok(vec![crate::apply::EnvFileValue {
                name: "A".into(),
                stored: "ENC[…]".into(),
                value: SecretString::from("from-sops".to_owned()),
            }])
        }
        fn open_stored(
            &self,
            _: &str,
            _: &str,
            _: &str,
            _: Option<&str>,
        ) -> Result<SecretString, String> {
            Err("no store".into())
        }
    }

    #[test]
    fn the_opener_masks_what_it_opens_and_passes_errors_on() {
        let sink = Sink::default();
        let o = MaskingOpener {
            inner: Arc::new(Fixed),
            masker: Masker::to(true, Box::new(sink.clone())),
        };
        assert_eq!(o.open("armor").unwrap().expose_secret(), "opened-sealed");
        o.open_sops(Path::new("x.env")).unwrap();
        assert_eq!(
            o.open_stored("p", "production", "N", None).unwrap_err(),
            "no store"
        );
        assert_eq!(
            sink.text(),
            "::add-mask::opened-sealed\n::add-mask::from-sops\n"
        );
    }
}

//! Where `telbase login` keeps its tokens: the OS keyring when one answers — the Secret
//! Service over D-Bus on Linux and the BSDs (GNOME Keyring, KWallet, KeePassXC), the login
//! Keychain on macOS — and otherwise a 0600 file, `credentials.json` under the config
//! directory (`$XDG_CONFIG_HOME/telbase`, else `~/.config/telbase`, created 0700). Never the
//! main config. `TELBASE_CREDENTIALS_STORE` chooses: `auto` (the default: the keyring when it
//! answers, else the file, and `login` says which and why), `keyring` (no keyring is an
//! error, before the device flow starts) or `file`.
//!
//! The keyring holds one item, service `telbase`, account `login`, labelled "Telbase CLI
//! login": the credentials as JSON (server, tokens, expiry). Secret Service clients such as
//! `secret-tool` and Seahorse see it under those attributes. Logging in with the keyring
//! removes an older credentials file, so no token is left behind on disk.
//!
//! Every keyring call runs on a thread of its own and is abandoned after a timeout. A
//! Secret Service whose collection is locked asks the desktop for a password prompt; on a
//! headless machine nothing answers, and the call would otherwise wait forever. A call that
//! times out counts as "no keyring".
//!
//! Secrets stay out of errors: a keyring error is reduced to its kind and the platform's
//! message (never `Debug`, which for some kinds carries the stored bytes), and the JSON
//! passes through `Zeroizing` buffers.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use zeroize::Zeroizing;

use super::cli::Credentials;

/// The keyring item's service and account.
pub const SERVICE: &str = "telbase";
pub const ACCOUNT: &str = "login";
const LABEL: &str = "Telbase CLI login";

/// How long one keyring call may take before it counts as "no keyring".
const TIMEOUT: Duration = Duration::from_secs(10);

/// `TELBASE_CREDENTIALS_STORE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Auto,
    Keyring,
    File,
}

impl Mode {
    pub fn from_env() -> anyhow::Result<Mode> {
        match std::env::var("TELBASE_CREDENTIALS_STORE").ok().as_deref() {
            None | Some("") | Some("auto") => Ok(Mode::Auto),
            Some("keyring") => Ok(Mode::Keyring),
            Some("file") => Ok(Mode::File),
            Some(other) => {
                bail!("TELBASE_CREDENTIALS_STORE={other:?}: expected `auto`, `keyring` or `file`")
            }
        }
    }
}

/// Where the credentials are (or will be) kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    Keyring,
    File(PathBuf),
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Keyring => write!(f, "the OS keyring ({})", platform_store_name()),
            Place::File(p) => write!(f, "{} (mode 0600)", p.display()),
        }
    }
}

fn platform_store_name() -> &'static str {
    if cfg!(target_os = "macos") {
        "the login Keychain"
    } else {
        "the Secret Service"
    }
}

/// Why `load` found no usable login: a stored one that cannot be read (which `logout` still
/// removes), or anything else (the keyring not answering, the file system).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Unreadable(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Why the keyring cannot be used: its kind and the platform's message, nothing stored.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(String);

/// `$XDG_CONFIG_HOME/telbase/credentials.json` or `~/.config/telbase/credentials.json`.
pub fn credentials_path() -> anyhow::Result<PathBuf> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let dir = match (var("XDG_CONFIG_HOME"), var("HOME")) {
        (Some(x), _) => PathBuf::from(x),
        (None, Some(h)) => PathBuf::from(h).join(".config"),
        _ => bail!("no config directory: set XDG_CONFIG_HOME or HOME"),
    };
    Ok(dir.join("telbase").join("credentials.json"))
}

/// Where `save` will put the credentials, decided before the device flow starts so that a
/// forced keyring that is missing fails before anyone approves anything. In `auto` mode
/// the reason the keyring was passed over comes back too, for the person to see.
pub fn destination() -> anyhow::Result<(Place, Option<Unavailable>)> {
    match Mode::from_env()? {
        Mode::File => Ok((Place::File(credentials_path()?), None)),
        mode => match keyring_call(|e| match e.get_password() {
            Ok(v) => {
                drop(Zeroizing::new(v));
                Ok(())
            }
            Err(keyring_core::Error::NoEntry) => Ok(()),
            Err(e) => Err(e),
        }) {
            Ok(()) => Ok((Place::Keyring, None)),
            Err(why) if mode == Mode::Auto => Ok((Place::File(credentials_path()?), Some(why))),
            Err(why) => Err(anyhow!(
                "TELBASE_CREDENTIALS_STORE=keyring, but the OS keyring cannot be used: {why}"
            )),
        },
    }
}

/// The saved credentials and where they were found. `keyring`: the keyring alone. `file`:
/// the file alone. `auto`: both; when both hold a login (one saved to the file while the
/// keyring was locked, the keyring's left from before), the newer one, by expiry.
pub fn load() -> Result<Option<(Credentials, Place)>, LoadError> {
    let mode = Mode::from_env()?;
    let mut keyring_trouble = None;
    let mut in_keyring = None;
    if mode != Mode::File {
        match keyring_call(|e| match e.get_password() {
            Ok(v) => Ok(Some(Zeroizing::new(v))),
            Err(keyring_core::Error::NoEntry) => Ok(None),
            Err(e) => Err(e),
        }) {
            Ok(Some(json)) => {
                let c: Credentials = serde_json::from_str(&json).map_err(|e| {
                    LoadError::Unreadable(format!(
                        "the keyring's Telbase login (service {SERVICE}, account {ACCOUNT}) is unreadable ({}); `telbase logout` removes it",
                        json_problem(&e)
                    ))
                })?;
                in_keyring = Some(c);
            }
            Ok(None) => {}
            Err(why) if mode == Mode::Keyring => {
                return Err(anyhow!("the OS keyring cannot be used: {why}").into());
            }
            Err(why) => keyring_trouble = Some(why),
        }
        if mode == Mode::Keyring {
            return Ok(in_keyring.map(|c| (c, Place::Keyring)));
        }
    }
    let path = credentials_path()?;
    let in_file: Option<Credentials> = match std::fs::read(&path) {
        Ok(bytes) => {
            let bytes = Zeroizing::new(bytes);
            Some(serde_json::from_slice(&bytes).map_err(|e| {
                LoadError::Unreadable(format!(
                    "{}: unreadable ({}); `telbase logout` removes it",
                    path.display(),
                    json_problem(&e)
                ))
            })?)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(anyhow!("{}: {e}", path.display()).into()),
    };
    match (in_keyring, in_file) {
        (Some(k), Some(f)) if f.expires_at > k.expires_at => Ok(Some((f, Place::File(path)))),
        (Some(k), _) => Ok(Some((k, Place::Keyring))),
        (None, Some(f)) => Ok(Some((f, Place::File(path)))),
        // A login kept in a keyring that is locked or gone quiet looks like no login at
        // all; say what happened instead of only "not logged in".
        (None, None) => match keyring_trouble {
            Some(why) => Err(anyhow!(
                "not logged in: no login in {}, and the OS keyring could not be asked ({why}); run `telbase login` (or unlock the keyring)",
                path.display()
            )
            .into()),
            None => Ok(None),
        },
    }
}

/// What is wrong with stored JSON, without serde's message: that quotes the offending
/// value, which here may be a token.
fn json_problem(e: &serde_json::Error) -> String {
    format!(
        "{:?} error at line {}, column {}",
        e.classify(),
        e.line(),
        e.column()
    )
}

/// Saves the credentials in `place`, and says where they went. Into the keyring, it also
/// removes an older file. In `auto`, a keyring that fails now (locked since it was asked,
/// a password prompt nobody answers) does not lose the login: it goes to the file, and the
/// reason comes back for the person to see. With `keyring`, that is an error.
pub fn save(c: &Credentials, place: &Place) -> anyhow::Result<(Place, Option<Unavailable>)> {
    let json = Zeroizing::new(serde_json::to_string_pretty(c)?);
    let path = credentials_path()?;
    match place {
        Place::Keyring => {
            let copy = json.clone();
            match keyring_call(move |e| e.set_password(&copy)) {
                Ok(()) => {
                    remove_file(&path)?;
                    Ok((Place::Keyring, None))
                }
                Err(why) if Mode::from_env()? == Mode::Keyring => {
                    Err(anyhow!("could not save the login in the OS keyring: {why}"))
                }
                Err(why) => {
                    write_file(&path, json.as_bytes())?;
                    Ok((Place::File(path), Some(why)))
                }
            }
        }
        Place::File(p) => {
            write_file(p, json.as_bytes())?;
            Ok((place.clone(), None))
        }
    }
}

/// Removes the login from wherever it may be: the keyring (unless `file`; in `auto` a
/// keyring that does not answer is passed over) and the file.
pub fn forget() -> anyhow::Result<()> {
    let mode = Mode::from_env()?;
    if mode != Mode::File {
        match keyring_call(|e| match e.delete_credential() {
            Ok(()) | Err(keyring_core::Error::NoEntry) => Ok(()),
            Err(e) => Err(e),
        }) {
            Ok(()) => {}
            Err(why) if mode == Mode::Keyring => {
                bail!("could not remove the login from the OS keyring: {why}")
            }
            Err(_) => {}
        }
    }
    remove_file(&credentials_path()?)
}

fn remove_file(path: &std::path::Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(anyhow!("{}: {e}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Writes the credentials file 0600, atomically and durably, its directory 0700.
fn write_file(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    let dir = path
        .parent()
        .ok_or_else(|| anyhow!("no config directory"))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    crate::secrets::envelope::replace_private_file(path, bytes)
        .with_context(|| path.display().to_string())
}

/// Runs `op` on the keyring item on a thread of its own, giving up after `TIMEOUT`.
fn keyring_call<T: Send + 'static>(
    op: impl FnOnce(&keyring_core::Entry) -> keyring_core::Result<T> + Send + 'static,
) -> Result<T, Unavailable> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("keyring".into())
        .spawn(move || {
            let result = entry().and_then(|e| op(&e));
            let _ = tx.send(result.map_err(describe));
        })
        .map_err(|e| Unavailable(format!("cannot start a thread: {e}")))?;
    match rx.recv_timeout(TIMEOUT) {
        Ok(r) => r,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(Unavailable(format!(
            "no answer within {} s (a locked keyring waiting for a password prompt?)",
            TIMEOUT.as_secs()
        ))),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            Err(Unavailable("the keyring call failed".into()))
        }
    }
}

/// The item, in this platform's store.
fn entry() -> keyring_core::Result<keyring_core::Entry> {
    let store = platform_store()?;
    #[cfg(not(target_os = "macos"))]
    {
        let modifiers = std::collections::HashMap::from([("label", LABEL)]);
        keyring_core::Entry::new_in_store_with_modifiers(&store, SERVICE, ACCOUNT, &modifiers)
    }
    #[cfg(target_os = "macos")]
    {
        let _ = LABEL;
        keyring_core::Entry::new_in_store(&store, SERVICE, ACCOUNT)
    }
}

#[cfg(all(unix, not(target_os = "macos")))]
fn platform_store() -> keyring_core::Result<Arc<keyring_core::CredentialStore>> {
    let store: Arc<keyring_core::CredentialStore> =
        zbus_secret_service_keyring_store::Store::new()?;
    Ok(store)
}

#[cfg(target_os = "macos")]
fn platform_store() -> keyring_core::Result<Arc<keyring_core::CredentialStore>> {
    let store: Arc<keyring_core::CredentialStore> =
        apple_native_keyring_store::keychain::Store::new()?;
    Ok(store)
}

/// A keyring error as a message that cannot carry the secret: `BadEncoding` and
/// `BadDataFormat` hold the stored bytes, so their data never reaches the text.
fn describe(e: keyring_core::Error) -> Unavailable {
    use keyring_core::Error as E;
    Unavailable(match e {
        E::PlatformFailure(p) => format!("the keyring failed: {p}"),
        E::NoStorageAccess(p) => format!("no access to the keyring: {p}"),
        E::NoEntry => "no such item".into(),
        E::BadEncoding(_) | E::BadDataFormat(..) => "the stored item is not readable".into(),
        E::BadStoreFormat(m) => format!("the keyring is malformed: {m}"),
        E::TooLong(attr, limit) => format!("{attr} is longer than the keyring allows ({limit})"),
        E::Invalid(what, why) => format!("{what}: {why}"),
        E::Ambiguous(items) => format!(
            "{} items match service {SERVICE}, account {ACCOUNT}; remove the extra ones",
            items.len()
        ),
        E::NoDefaultStore => "no keyring on this platform".into(),
        E::NotSupportedByStore(m) => format!("not supported by the keyring: {m}"),
        _ => "the keyring refused the call".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyring_errors_never_carry_the_stored_bytes() {
        let secret = b"tlb_rt_do-not-show".to_vec();
        for e in [
            keyring_core::Error::BadEncoding(secret.clone()),
            keyring_core::Error::BadDataFormat(secret.clone(), "bad".into()),
        ] {
            let text = describe(e).to_string();
            assert!(!text.contains("tlb_rt"), "{text}");
            assert_eq!(text, "the stored item is not readable");
        }
    }

    #[test]
    fn places_say_where() {
        let file = Place::File(PathBuf::from("cfg/telbase/credentials.json"));
        assert_eq!(file.to_string(), "cfg/telbase/credentials.json (mode 0600)");
        assert!(Place::Keyring.to_string().starts_with("the OS keyring ("));
    }
}

//! AES-256-GCM envelope encryption of stored secrets, master keys, and keyed fingerprints.
//!
//! Each value gets its own random 256-bit data key; the value is encrypted under it with a
//! random 96-bit nonce, and the data key is encrypted ("wrapped") under a versioned master key
//! with another random nonce. No key ever encrypts more than a handful of messages directly
//! (a master key wraps one 32-byte key per value), so none approaches the 2^32 limit of random
//! nonces, and rotating the master key means re-wrapping 60-byte keys, never re-encrypting
//! values. The additional data binds the value's ciphertext to (project, environment, name,
//! version) and the wrapped key to the same plus the master key id, so a ciphertext or wrapped
//! key copied onto another row, or relabelled with another key id, fails authentication.
//!
//! Master keys come through [`KeyProvider`] (wrap and unwrap by key id, so a KMS can plug in
//! without ever handing out its keys). Built in: [`Keyring`], read from the keyring file
//! `TELBASE_MASTER_KEY_FILE` (lines `<id> <base64 32 bytes> [retired]`; the last active line
//! wraps new keys) or from `TELBASE_MASTER_KEY` (one key, `base64` or `id:base64`). Key bytes
//! live in zeroizing buffers and no `Debug` shows them.
//!
//! Blob formats (all `v1`): a value ciphertext is `0x01 ‖ nonce(12) ‖ AES-GCM(data key)`; a
//! wrapped key is `0x01 ‖ nonce(12) ‖ AES-GCM(master key, 32-byte key)` (61 bytes).

use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead as _, KeyInit as _, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::Mac as _;
use zeroize::Zeroizing;

use crate::store::{RowRef, SecretName};

const FORMAT_V1: u8 = 1;
const NONCE: usize = 12;
const TAG: usize = 16;
/// Length of a wrapped 32-byte key: format byte, nonce, key, tag.
pub const WRAPPED_LEN: usize = 1 + NONCE + 32 + TAG;
const AAD_DOMAIN: &[u8] = b"telbase/envelope/v1";

/// A 256-bit key (master, data or fingerprint) in a buffer wiped on drop.
pub type KeyBytes = Zeroizing<[u8; 32]>;

/// Why sealing, opening or loading keys failed. Messages name records and key ids, never a
/// value or key material.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error(
        "the master key `{key_id}` is not in the keyring ({source_hint}); restore that key (a retired key must stay in the keyring while any backup may still use it)"
    )]
    UnknownKey { key_id: String, source_hint: String },
    #[error(
        "{what} does not decrypt: authentication failed (it was altered, copied from another record, or wrapped by a different key under the same id)"
    )]
    Authentication { what: String },
    #[error("{what} is malformed: {why}")]
    Format { what: String, why: &'static str },
    #[error(
        "no master key: set TELBASE_MASTER_KEY_FILE to a keyring file (create one with `telbase keys rotate --generate`) or TELBASE_MASTER_KEY to a base64 key"
    )]
    NoMasterKey,
    #[error(
        "{0}: every key is retired; add a new key line at the end or run `telbase keys rotate --generate`"
    )]
    NoActiveKey(String),
    #[error("{at}: {why}")]
    BadKeyring { at: String, why: String },
    #[error(
        "{path}: the keyring is readable or writable by other users (mode {mode:o}); run `chmod 600 {path}`"
    )]
    Permissions { path: String, mode: u32 },
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("the system random number generator failed")]
    Random,
}

fn random<const N: usize>() -> Result<[u8; N], EnvelopeError> {
    use ring::rand::SecureRandom as _;
    let mut buf = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| EnvelopeError::Random)?;
    Ok(buf)
}

/// A fresh random 256-bit key.
pub fn random_key() -> Result<KeyBytes, EnvelopeError> {
    let mut k = Zeroizing::new([0u8; 32]);
    use ring::rand::SecureRandom as _;
    ring::rand::SystemRandom::new()
        .fill(&mut k[..])
        .map_err(|_| EnvelopeError::Random)?;
    Ok(k)
}

/// `0x01 ‖ nonce ‖ AES-256-GCM(key, nonce, msg, aad)`.
fn seal_blob(key: &[u8; 32], msg: &[u8], aad: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    let cipher = Aes256Gcm::new(key.into());
    let nonce: [u8; NONCE] = random()?;
    let ct = cipher
        .encrypt(Nonce::from_slice(&nonce), Payload { msg, aad })
        // Only fails for messages beyond GCM's 64 GiB limit, far above any env value.
        .map_err(|_| EnvelopeError::Format {
            what: "the value".into(),
            why: "too large to encrypt",
        })?;
    let mut out = Vec::with_capacity(1 + NONCE + ct.len());
    out.push(FORMAT_V1);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

fn open_blob(
    key: &[u8; 32],
    blob: &[u8],
    aad: &[u8],
    what: impl Fn() -> String,
) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    if blob.len() < 1 + NONCE + TAG {
        return Err(EnvelopeError::Format {
            what: what(),
            why: "too short",
        });
    }
    if blob[0] != FORMAT_V1 {
        return Err(EnvelopeError::Format {
            what: what(),
            why: "unknown format version (written by a newer Telbase?)",
        });
    }
    let cipher = Aes256Gcm::new(key.into());
    cipher
        .decrypt(
            Nonce::from_slice(&blob[1..1 + NONCE]),
            Payload {
                msg: &blob[1 + NONCE..],
                aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| EnvelopeError::Authentication { what: what() })
}

/// Appends a length-prefixed field, so no two different field lists encode alike.
fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Additional data of a value's ciphertext: its name and version.
pub fn value_aad(name: &SecretName, version: i64) -> Vec<u8> {
    let mut out = Vec::new();
    field(&mut out, AAD_DOMAIN);
    field(&mut out, b"value");
    field(&mut out, name.project.as_bytes());
    field(&mut out, name.environment.as_bytes());
    field(&mut out, name.name.as_bytes());
    out.extend_from_slice(&version.to_be_bytes());
    out
}

/// Additional data of a wrapped key: which row it belongs to and the master key's id.
pub fn wrap_aad(row: &RowRef, key_id: &str) -> Vec<u8> {
    let mut out = Vec::new();
    field(&mut out, AAD_DOMAIN);
    match row {
        RowRef::Value { name, version } => {
            field(&mut out, b"data-key");
            field(&mut out, name.project.as_bytes());
            field(&mut out, name.environment.as_bytes());
            field(&mut out, name.name.as_bytes());
            out.extend_from_slice(&version.to_be_bytes());
        }
        RowRef::FingerprintKey => field(&mut out, b"fingerprint-key"),
    }
    field(&mut out, key_id.as_bytes());
    out
}

/// How a record is named in errors: `production/DATABASE_URL (project notes, version 3)`.
pub fn describe(row: &RowRef) -> String {
    match row {
        RowRef::Value { name, version } => format!(
            "the stored value {}/{} (project {}, version {version})",
            name.environment, name.name, name.project
        ),
        RowRef::FingerprintKey => "the store's fingerprint key".into(),
    }
}

/// Where master keys come from. Wrapping and unwrapping go through the provider (rather
/// than it handing out key bytes) so a KMS, which never releases its keys, fits behind it.
pub trait KeyProvider: Send + Sync {
    /// The id of the key new data keys are wrapped with.
    fn current_key_id(&self) -> Result<String, EnvelopeError>;
    /// Encrypts `key` under master key `key_id`, with `aad` as additional data.
    fn wrap(&self, key_id: &str, key: &[u8; 32], aad: &[u8]) -> Result<Vec<u8>, EnvelopeError>;
    /// Decrypts a wrapped key; `what` names the record in errors.
    fn unwrap(
        &self,
        key_id: &str,
        wrapped: &[u8],
        aad: &[u8],
        what: &dyn Fn() -> String,
    ) -> Result<KeyBytes, EnvelopeError>;
}

/// Wraps a fresh or existing 32-byte key for `row` under the provider's key `key_id`.
pub fn wrap_for(
    keys: &dyn KeyProvider,
    row: &RowRef,
    key_id: &str,
    key: &[u8; 32],
) -> Result<Vec<u8>, EnvelopeError> {
    keys.wrap(key_id, key, &wrap_aad(row, key_id))
}

/// Unwraps the key of `row`, stored under master key `key_id`.
pub fn unwrap_for(
    keys: &dyn KeyProvider,
    row: &RowRef,
    key_id: &str,
    wrapped: &[u8],
) -> Result<KeyBytes, EnvelopeError> {
    keys.unwrap(key_id, wrapped, &wrap_aad(row, key_id), &|| {
        format!("the wrapped key of {}", describe(row))
    })
}

/// The envelope of one value: which master key wrapped its data key, the wrapped key, the
/// ciphertext.
pub struct Envelope {
    pub key_id: String,
    pub wrapped_key: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// Encrypts `plaintext` as version `version` of `name`: a new data key, wrapped under the
/// provider's current master key.
pub fn seal(
    keys: &dyn KeyProvider,
    name: &SecretName,
    version: i64,
    plaintext: &[u8],
) -> Result<Envelope, EnvelopeError> {
    let data_key = random_key()?;
    let ciphertext = seal_blob(&data_key, plaintext, &value_aad(name, version))?;
    let key_id = keys.current_key_id()?;
    let row = RowRef::Value {
        name: name.clone(),
        version,
    };
    let wrapped_key = wrap_for(keys, &row, &key_id, &data_key)?;
    Ok(Envelope {
        key_id,
        wrapped_key,
        ciphertext,
    })
}

/// Decrypts version `version` of `name` from its envelope.
pub fn open(
    keys: &dyn KeyProvider,
    name: &SecretName,
    version: i64,
    envelope: &Envelope,
) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    let row = RowRef::Value {
        name: name.clone(),
        version,
    };
    let data_key = unwrap_for(keys, &row, &envelope.key_id, &envelope.wrapped_key)?;
    open_blob(
        &data_key,
        &envelope.ciphertext,
        &value_aad(name, version),
        || describe(&row),
    )
}

/// The keyed fingerprint of a value: HMAC-SHA256 under the store's fingerprint key over the
/// value's name and plaintext, shown as `hmac:` and 16 hex digits. Equal values of different
/// names fingerprint differently, and without the fingerprint key a low-entropy value cannot
/// be guessed from its fingerprint.
pub fn fingerprint(key: &[u8; 32], name: &SecretName, plaintext: &[u8]) -> String {
    let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(key)
        .expect("HMAC takes keys of any length");
    let mut framed = Vec::new();
    field(&mut framed, b"telbase/fingerprint/v1");
    field(&mut framed, name.project.as_bytes());
    field(&mut framed, name.environment.as_bytes());
    field(&mut framed, name.name.as_bytes());
    mac.update(&framed);
    mac.update(plaintext);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("hmac:{hex}")
}

/// One master key of a keyring.
pub struct MasterKey {
    pub id: String,
    pub retired: bool,
    key: KeyBytes,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .field("retired", &self.retired)
            .field("key", &"[redacted]")
            .finish()
    }
}

/// Master keys held locally, in file order: the last active key wraps new data keys; any
/// key, retired or not, unwraps (a retired key is kept so a restored backup still opens).
#[derive(Debug, Default)]
pub struct Keyring {
    keys: Vec<MasterKey>,
    /// Where the keys came from, for error messages.
    source: String,
}

/// Key ids: short, printable, no spaces, so they fit a keyring line and a database column.
pub fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn decode_key(b64: &str) -> Option<KeyBytes> {
    let bytes = Zeroizing::new(B64.decode(b64.trim()).ok()?);
    let mut key = Zeroizing::new([0u8; 32]);
    if bytes.len() != 32 {
        return None;
    }
    key.copy_from_slice(&bytes);
    Some(key)
}

impl Keyring {
    /// Parses a keyring file: `#` comments, blank lines, and `<id> <base64 32 bytes>` lines
    /// optionally followed by `retired`. `source` names the file in errors.
    pub fn parse(text: &str, source: &str) -> Result<Keyring, EnvelopeError> {
        let mut keys: Vec<MasterKey> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = format!("{source}:{}", i + 1);
            let bad = |why: &str| EnvelopeError::BadKeyring {
                at: at.clone(),
                why: why.to_owned(),
            };
            let mut parts = line.split_whitespace();
            let (Some(id), Some(b64)) = (parts.next(), parts.next()) else {
                return Err(bad("expected `<id> <base64 key> [retired]`"));
            };
            let retired = match parts.next() {
                None => false,
                Some("retired") => true,
                Some(_) => return Err(bad("only `retired` may follow the key")),
            };
            if parts.next().is_some() {
                return Err(bad("only `retired` may follow the key"));
            }
            if !valid_key_id(id) {
                return Err(bad("a key id is 1 to 64 letters, digits, `-`, `_` or `.`"));
            }
            if keys.iter().any(|k| k.id == id) {
                return Err(bad("this key id appears twice"));
            }
            let key =
                decode_key(b64).ok_or_else(|| bad("the key is not base64 of exactly 32 bytes"))?;
            keys.push(MasterKey {
                id: id.to_owned(),
                retired,
                key,
            });
        }
        Ok(Keyring {
            keys,
            source: source.to_owned(),
        })
    }

    /// One key from `TELBASE_MASTER_KEY`: `base64` (id derived from the key's hash) or
    /// `id:base64`.
    pub fn from_env_value(value: &str) -> Result<Keyring, EnvelopeError> {
        let bad = |why: &str| EnvelopeError::BadKeyring {
            at: "TELBASE_MASTER_KEY".into(),
            why: why.to_owned(),
        };
        // Base64 has no `:`, so a colon always separates an id.
        let (id, b64) = match value.split_once(':') {
            Some((id, b64)) => {
                if !valid_key_id(id) {
                    return Err(bad(
                        "the id before `:` must be 1 to 64 letters, digits, `-`, `_` or `.`",
                    ));
                }
                (Some(id.to_owned()), b64)
            }
            None => (None, value),
        };
        let key = decode_key(b64).ok_or_else(|| bad("not base64 of exactly 32 bytes"))?;
        let id = id.unwrap_or_else(|| derived_key_id(&key));
        Ok(Keyring {
            keys: vec![MasterKey {
                id,
                retired: false,
                key,
            }],
            source: "TELBASE_MASTER_KEY".into(),
        })
    }

    /// Keys in file order.
    pub fn keys(&self) -> &[MasterKey] {
        &self.keys
    }

    /// Where the keys came from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The key new data keys are wrapped with: the last active one.
    pub fn current(&self) -> Option<&MasterKey> {
        self.keys.iter().rev().find(|k| !k.retired)
    }

    /// Appends a new random key (the new current key) and returns its id.
    pub fn generate(&mut self) -> Result<String, EnvelopeError> {
        let key = random_key()?;
        let suffix: [u8; 3] = random()?;
        let id = format!(
            "mk-{}-{}",
            chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
            suffix
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        self.keys.push(MasterKey {
            id: id.clone(),
            retired: false,
            key,
        });
        Ok(id)
    }

    /// Marks `id` retired: it no longer wraps, but still unwraps.
    pub fn retire(&mut self, id: &str) {
        for k in &mut self.keys {
            if k.id == id {
                k.retired = true;
            }
        }
    }

    /// The keyring file text (secret: it holds every key).
    pub fn render(&self) -> Zeroizing<String> {
        let mut out = Zeroizing::new(String::from(
            "# Telbase master keys (see docs/secrets.md): <id> <base64 32-byte key> [retired]\n\
             # The last line without `retired` wraps new values. Keep retired keys while backups\n\
             # of the store may still use them.\n",
        ));
        for k in &self.keys {
            out.push_str(&k.id);
            out.push(' ');
            out.push_str(&B64.encode(&k.key[..]));
            if k.retired {
                out.push_str(" retired");
            }
            out.push('\n');
        }
        out
    }

    fn get(&self, id: &str) -> Result<&MasterKey, EnvelopeError> {
        self.keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| EnvelopeError::UnknownKey {
                key_id: id.to_owned(),
                source_hint: self.source.clone(),
            })
    }
}

/// The id of a key given without one: `env-` and 12 hex digits of a hash of the key (safe
/// to show: SHA-256 of a random 256-bit key reveals nothing usable).
pub fn derived_key_id(key: &[u8; 32]) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(b"telbase/master-key-id/v1");
    h.update(key);
    let digest = h.finalize();
    format!(
        "env-{}",
        digest
            .iter()
            .take(6)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

impl KeyProvider for Keyring {
    fn current_key_id(&self) -> Result<String, EnvelopeError> {
        if self.keys.is_empty() {
            return Err(EnvelopeError::NoMasterKey);
        }
        self.current()
            .map(|k| k.id.clone())
            .ok_or_else(|| EnvelopeError::NoActiveKey(self.source.clone()))
    }

    fn wrap(&self, key_id: &str, key: &[u8; 32], aad: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        seal_blob(&self.get(key_id)?.key, key, aad)
    }

    fn unwrap(
        &self,
        key_id: &str,
        wrapped: &[u8],
        aad: &[u8],
        what: &dyn Fn() -> String,
    ) -> Result<KeyBytes, EnvelopeError> {
        let plain = open_blob(&self.get(key_id)?.key, wrapped, aad, what)?;
        if plain.len() != 32 {
            return Err(EnvelopeError::Format {
                what: what(),
                why: "the wrapped key is not 32 bytes",
            });
        }
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&plain);
        Ok(key)
    }
}

/// Reads the keyring file at `path`, refusing one that others can read.
pub fn read_keyring_file(path: &Path) -> Result<Keyring, EnvelopeError> {
    let shown = path.display().to_string();
    let io = |source| EnvelopeError::Io {
        path: shown.clone(),
        error: source,
    };
    let meta = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(EnvelopeError::BadKeyring {
                at: shown,
                why: "no such keyring file (create one with `telbase keys rotate --generate`)"
                    .into(),
            });
        }
        other => other.map_err(io)?,
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(EnvelopeError::Permissions { path: shown, mode });
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io)?);
    Keyring::parse(&text, &shown)
}

/// Writes the keyring to `path` atomically and durably: a 0600 temporary file in the same
/// directory, written and fsynced, renamed over `path`, then the directory fsynced. A kill at
/// any point leaves either the old file or the new one, never a mix, and once this returns the
/// new keys survive a power cut (so no row is ever wrapped under a key that could be lost).
pub fn write_keyring_file(path: &Path, keyring: &Keyring) -> Result<(), EnvelopeError> {
    replace_private_file(path, keyring.render().as_bytes()).map_err(|error| EnvelopeError::Io {
        path: path.display().to_string(),
        error,
    })
}

/// Replaces `path` with `bytes` atomically and durably, readable by its owner alone: a 0600
/// temporary file in the same directory (one fixed name: callers write one file at a time,
/// and a file left by a killed run is simply replaced), written and fsynced, renamed over
/// `path`, then the directory fsynced. A kill at any point leaves the old file or the new
/// one, never a mix. For the master keyring and the CLI's credentials file.
pub fn replace_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp: PathBuf = dir.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir).and_then(|d| d.sync_all())
}

/// A keyring file as a [`KeyProvider`] for processes that outlive a rotation (an apply, and
/// later `telbase serve`): before each use it checks whether the file was replaced (inode,
/// size, modification time) and reloads it, so a rotation's new key is picked up for new
/// wraps and rows it re-wrapped keep opening. A process holding a keyring loaded once would
/// fail on the first row re-wrapped under a key it has never seen.
pub struct KeyringFile {
    path: PathBuf,
    state: std::sync::Mutex<(FileStamp, std::sync::Arc<Keyring>)>,
}

type FileStamp = (u64, u64, Option<std::time::SystemTime>);

fn stamp(path: &Path) -> Result<FileStamp, EnvelopeError> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).map_err(|e| EnvelopeError::Io {
        path: path.display().to_string(),
        error: e,
    })?;
    Ok((meta.ino(), meta.len(), meta.modified().ok()))
}

impl KeyringFile {
    /// Loads the keyring file at `path`.
    pub fn open(path: &Path) -> Result<KeyringFile, EnvelopeError> {
        let before = stamp(path)?;
        let keyring = read_keyring_file(path)?;
        Ok(KeyringFile {
            path: path.to_owned(),
            state: std::sync::Mutex::new((before, std::sync::Arc::new(keyring))),
        })
    }

    /// The keyring as the file holds it now.
    pub fn keyring(&self) -> Result<std::sync::Arc<Keyring>, EnvelopeError> {
        let now = stamp(&self.path)?;
        let mut state = self.state.lock().map_err(|_| EnvelopeError::BadKeyring {
            at: self.path.display().to_string(),
            why: "the keyring cache is unusable after an earlier failure".into(),
        })?;
        if state.0 != now {
            // Stamp first: a write racing with this read changes the stamp again, and the
            // next use reloads once more.
            *state = (now, std::sync::Arc::new(read_keyring_file(&self.path)?));
        }
        Ok(state.1.clone())
    }
}

impl KeyProvider for KeyringFile {
    fn current_key_id(&self) -> Result<String, EnvelopeError> {
        self.keyring()?.current_key_id()
    }

    fn wrap(&self, key_id: &str, key: &[u8; 32], aad: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        self.keyring()?.wrap(key_id, key, aad)
    }

    fn unwrap(
        &self,
        key_id: &str,
        wrapped: &[u8],
        aad: &[u8],
        what: &dyn Fn() -> String,
    ) -> Result<KeyBytes, EnvelopeError> {
        self.keyring()?.unwrap(key_id, wrapped, aad, what)
    }
}

/// The master keys from the environment as a [`KeyProvider`]: a [`KeyringFile`] that follows
/// rotations for `TELBASE_MASTER_KEY_FILE`, one fixed key for `TELBASE_MASTER_KEY`.
pub fn key_provider_from_vars(
    var: impl Fn(&str) -> Option<String>,
) -> Result<Box<dyn KeyProvider>, EnvelopeError> {
    let (keyring, path) = keyring_from_vars(var)?;
    Ok(match path {
        Some(path) => Box::new(KeyringFile::open(&path)?),
        None => Box::new(keyring),
    })
}

/// The master keys from the environment: `TELBASE_MASTER_KEY_FILE` (a keyring file) or
/// `TELBASE_MASTER_KEY` (one key). `var` reads a variable. Both set is an error: which one
/// wraps new values would otherwise be a guess.
pub fn keyring_from_vars(
    var: impl Fn(&str) -> Option<String>,
) -> Result<(Keyring, Option<PathBuf>), EnvelopeError> {
    let file = var("TELBASE_MASTER_KEY_FILE").filter(|v| !v.is_empty());
    let value = var("TELBASE_MASTER_KEY")
        .map(Zeroizing::new)
        .filter(|v| !v.is_empty());
    match (file, value) {
        (Some(_), Some(_)) => Err(EnvelopeError::BadKeyring {
            at: "TELBASE_MASTER_KEY_FILE and TELBASE_MASTER_KEY".into(),
            why: "both are set; set only one (put the environment key into the keyring file to move to a file)".into(),
        }),
        (Some(path), None) => {
            let path = PathBuf::from(path);
            Ok((read_keyring_file(&path)?, Some(path)))
        }
        (None, Some(value)) => Ok((Keyring::from_env_value(value.trim())?, None)),
        (None, None) => Err(EnvelopeError::NoMasterKey),
    }
}

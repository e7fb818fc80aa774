//! The control plane's secrets: the server key that every stored token is hashed with,
//! the tokens themselves (prefixed for secret scanning, 256 random bits), the RFC 8628 user
//! codes, and the opaque pagination cursor. A token's plaintext exists only in the response
//! that hands it out; the store keeps `HMAC-SHA256(server key, token)` in hex.
//!
//! The server key comes from `TELBASE_CONTROL_KEY_FILE` (a file holding base64 of 32 bytes,
//! mode 0600, like the master keyring) or `TELBASE_CONTROL_KEY` (the base64 itself). Losing
//! it signs everyone out (no stored hash matches any more); it is never stored in the database.

use base64::Engine as _;
use hmac::Mac as _;
use secrecy::{ExposeSecret as _, SecretString};
use zeroize::Zeroizing;

/// Why the server key could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "no control-plane key: set TELBASE_CONTROL_KEY_FILE to a file holding base64 of 32 random bytes (e.g. `head -c 32 /dev/urandom | base64 > key; chmod 600 key`) or TELBASE_CONTROL_KEY to that base64"
    )]
    Missing,
    #[error("{source_name}: not base64 of exactly 32 bytes")]
    Malformed { source_name: String },
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error(
        "{path}: the key file is readable by other users (mode {mode:o}); run `chmod 600 {path}`"
    )]
    Permissions { path: String, mode: u32 },
}

/// The HMAC key for every stored secret hash.
#[derive(Clone)]
pub struct ServerKey(std::sync::Arc<Zeroizing<[u8; 32]>>);

impl std::fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerKey(..)")
    }
}

impl ServerKey {
    pub fn from_bytes(bytes: [u8; 32]) -> ServerKey {
        ServerKey(std::sync::Arc::new(Zeroizing::new(bytes)))
    }

    /// A fresh random key (tests, and `telbase team create` prints how to make one).
    pub fn generate() -> ServerKey {
        let mut b = [0u8; 32];
        fill(&mut b);
        ServerKey::from_bytes(b)
    }

    fn from_base64(text: &str, source_name: &str) -> Result<ServerKey, KeyError> {
        let bad = || KeyError::Malformed {
            source_name: source_name.to_owned(),
        };
        let raw = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|_| bad())?,
        );
        let bytes: [u8; 32] = raw.as_slice().try_into().map_err(|_| bad())?;
        Ok(ServerKey::from_bytes(bytes))
    }

    /// `TELBASE_CONTROL_KEY_FILE`, else `TELBASE_CONTROL_KEY` (`var` reads a variable).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<ServerKey, KeyError> {
        if let Some(path) = var("TELBASE_CONTROL_KEY_FILE").filter(|v| !v.is_empty()) {
            use std::os::unix::fs::PermissionsExt as _;
            let io = |error| KeyError::Io {
                path: path.clone(),
                error,
            };
            let mode = std::fs::metadata(&path).map_err(io)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyError::Permissions { path, mode });
            }
            let text = Zeroizing::new(std::fs::read_to_string(&path).map_err(io)?);
            return ServerKey::from_base64(&text, &path);
        }
        if let Some(v) = var("TELBASE_CONTROL_KEY").filter(|v| !v.is_empty()) {
            return ServerKey::from_base64(&v, "TELBASE_CONTROL_KEY");
        }
        Err(KeyError::Missing)
    }

    /// `HMAC-SHA256(key, purpose || 0 || secret)` in hex: what the store keeps. The purpose
    /// separates kinds, so a session id can never be replayed as a token's hash.
    pub fn hash(&self, purpose: &str, secret: &str) -> String {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.0[..])
            .expect("HMAC takes any key length");
        mac.update(purpose.as_bytes());
        mac.update(&[0]);
        mac.update(secret.as_bytes());
        hex(&mac.finalize().into_bytes())
    }

    /// Whether `secret` hashes to `stored`, in constant time.
    pub fn verify(&self, purpose: &str, secret: &str, stored: &str) -> bool {
        constant_time_eq(self.hash(purpose, secret).as_bytes(), stored.as_bytes())
    }
}

/// Equal, without stopping at the first difference (no timing hint of how much matched).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && std::hint::black_box(a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y))) == 0
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Random bytes from the OS. A failing system generator is not something to carry on
/// from: a predictable token would be worse than a refused request.
pub fn fill(buf: &mut [u8]) {
    use ring::rand::SecureRandom as _;
    ring::rand::SystemRandom::new()
        .fill(buf)
        .expect("the system random number generator failed");
}

/// A random public id (128 bits, lowercase base32 without padding).
pub fn new_id() -> String {
    crate::serve::runs::new_id()
}

/// The kinds of bearer secrets, each with its prefix: `tlb_` marks a Telbase secret for
/// secret scanners (GitHub's and others'); the second part says what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A long-lived API token.
    Api,
    /// A short-lived access token from the device flow.
    Access,
    Refresh,
    Session,
    DeviceCode,
}

impl Kind {
    pub fn prefix(self) -> &'static str {
        match self {
            Kind::Api => "tlb_pat_",
            Kind::Access => "tlb_at_",
            Kind::Refresh => "tlb_rt_",
            Kind::Session => "tlb_ses_",
            Kind::DeviceCode => "tlb_dc_",
        }
    }

    /// The hash purpose (API and access tokens share a table and a purpose).
    pub fn purpose(self) -> &'static str {
        match self {
            Kind::Api | Kind::Access => "token",
            Kind::Refresh => "refresh",
            Kind::Session => "session",
            Kind::DeviceCode => "device_code",
        }
    }
}

/// A fresh secret: the prefix and 256 random bits in base64url (43 characters).
pub fn new_secret(kind: Kind) -> SecretString {
    let mut b = Zeroizing::new([0u8; 32]);
    fill(&mut b[..]);
    SecretString::from(format!(
        "{}{}",
        kind.prefix(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&b[..])
    ))
}

/// Whether `text` looks like a secret of `kind` (cheap shape check before any lookup).
pub fn well_formed(kind: Kind, text: &str) -> bool {
    text.strip_prefix(kind.prefix()).is_some_and(|rest| {
        rest.len() == 43
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// The user-code alphabet: RFC 8628 6.1's example, 20 consonants with no vowels (no words
/// get spelled) and none of the easily confused letters. 8 characters give 20^8 ≈ 2^34.6
/// codes; with entry limited to a handful of tries per user and address per window, and 15
/// minutes of life, guessing a live code is out of reach.
pub const USER_CODE_ALPHABET: &[u8; 20] = b"BCDFGHJKLMNPQRSTVWXZ";

/// A fresh user code, `XXXX-XXXX`.
pub fn new_user_code() -> String {
    let mut out = String::with_capacity(9);
    let mut n = 0;
    while n < 8 {
        let mut b = [0u8; 1];
        fill(&mut b);
        // Rejection sampling: 240 = 12 × 20, so every letter is equally likely.
        if b[0] >= 240 {
            continue;
        }
        if n == 4 {
            out.push('-');
        }
        out.push(USER_CODE_ALPHABET[usize::from(b[0] % 20)] as char);
        n += 1;
    }
    out
}

/// A typed user code, normalised (`bcdf ghjk`, `BCDF-GHJK`) to `BCDFGHJK`, or `None` if it
/// cannot be one. Hashed in this form, so the person may type it either way.
pub fn parse_user_code(input: &str) -> Option<String> {
    if input.len() > 32 {
        return None;
    }
    let code: String = input
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    (code.len() == 8 && code.bytes().all(|b| USER_CODE_ALPHABET.contains(&b))).then_some(code)
}

/// The opaque cursor of a list: base64url of `v1:` and the last id shown.
pub fn encode_cursor(last_id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("v1:{last_id}"))
}

/// The id a cursor continues after, or `None` for anything not made by [`encode_cursor`].
pub fn parse_cursor(cursor: &str) -> Option<String> {
    if cursor.len() > 128 {
        return None;
    }
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let id = text.strip_prefix("v1:")?;
    (!id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    .then(|| id.to_owned())
}

/// Shows a secret only as its kind (for Debug of structures holding one).
pub fn redacted(s: &SecretString) -> &'static str {
    let t = s.expose_secret();
    for k in [
        Kind::Api,
        Kind::Access,
        Kind::Refresh,
        Kind::Session,
        Kind::DeviceCode,
    ] {
        if t.starts_with(k.prefix()) {
            return k.prefix();
        }
    }
    "[redacted]"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_have_their_prefix_and_entropy() {
        let s = new_secret(Kind::Api);
        assert!(well_formed(Kind::Api, s.expose_secret()));
        assert!(!well_formed(Kind::Refresh, s.expose_secret()));
        assert_ne!(
            new_secret(Kind::Api).expose_secret(),
            new_secret(Kind::Api).expose_secret()
        );
    }

    #[test]
    fn hashes_are_keyed_and_separated_by_purpose() {
        let (a, b) = (ServerKey::generate(), ServerKey::generate());
        assert_ne!(a.hash("token", "x"), b.hash("token", "x"));
        assert_ne!(a.hash("token", "x"), a.hash("session", "x"));
        assert!(a.verify("token", "x", &a.hash("token", "x")));
        assert!(!a.verify("token", "y", &a.hash("token", "x")));
        assert_eq!(format!("{a:?}"), "ServerKey(..)");
    }

    #[test]
    fn user_codes_round_trip() {
        for _ in 0..100 {
            let c = new_user_code();
            assert_eq!(c.len(), 9);
            assert_eq!(parse_user_code(&c).unwrap(), c.replace('-', ""));
            assert_eq!(
                parse_user_code(&c.to_lowercase()).unwrap(),
                c.replace('-', "")
            );
        }
        assert_eq!(parse_user_code("AAAA-BBBB"), None);
        assert_eq!(parse_user_code("BCDF-GHJ"), None);
    }

    #[test]
    fn keys_from_the_environment() {
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let k = ServerKey::from_vars(|n| (n == "TELBASE_CONTROL_KEY").then(|| b64.clone()));
        assert!(k.is_ok());
        assert!(matches!(
            ServerKey::from_vars(|_| None),
            Err(KeyError::Missing)
        ));
        assert!(matches!(
            ServerKey::from_vars(|n| (n == "TELBASE_CONTROL_KEY").then(|| "abc".into())),
            Err(KeyError::Malformed { .. })
        ));
    }
}

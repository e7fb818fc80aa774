//! The details of an audit record: a small flat JSON object (a few keys, scalar values or
//! short lists of strings) checked, when recorded, to hold no secret. The primary rule is the
//! typed API: a value whose identity matters goes in as a [`Fingerprint`] (a keyed hash made
//! by `AuditLog::fingerprint`), never as itself. The check is the backstop: a key named like a
//! credential (`token`, `secret`, `password`, `session`, `code`, `key`, `cookie`, …) must hold
//! a fingerprint, and a string that looks like a credential (known token prefixes, `Bearer `,
//! PEM blocks, long high-entropy strings) is refused whatever its key.

use serde_json::{Map, Value};

use super::AuditError;

/// Most keys in one record's details.
pub const MAX_KEYS: usize = 32;
/// Largest rendered details object, bytes.
pub const MAX_BYTES: usize = 4096;
/// Longest string value, bytes.
pub const MAX_STRING: usize = 512;

const FINGERPRINT_PREFIX: &str = "hmac-sha256:";

/// A keyed hash of a secret value (`hmac-sha256:<64 hex>`), made by the audit keys: safe to
/// keep, useless to an attacker without the key, equal for equal values of one purpose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(pub(super) String);

impl Fingerprint {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The details of one event. Built with the typed setters; checked by [`Details::check`]
/// (which `AuditLog::record` runs).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Details(Map<String, Value>);

impl Details {
    pub fn new() -> Details {
        Details(Map::new())
    }

    /// A plain text value (a name, a role, a reason): refused at record time if it looks
    /// like a secret.
    pub fn text(mut self, key: &str, value: impl Into<String>) -> Self {
        self.0.insert(key.to_owned(), Value::String(value.into()));
        self
    }

    pub fn number(mut self, key: &str, value: i64) -> Self {
        self.0.insert(key.to_owned(), Value::from(value));
        self
    }

    pub fn flag(mut self, key: &str, value: bool) -> Self {
        self.0.insert(key.to_owned(), Value::Bool(value));
        self
    }

    /// A list of short strings (changed field names, scopes).
    pub fn list(mut self, key: &str, values: impl IntoIterator<Item = impl Into<String>>) -> Self {
        let v = values
            .into_iter()
            .map(|s| Value::String(s.into()))
            .collect();
        self.0.insert(key.to_owned(), Value::Array(v));
        self
    }

    /// Where the identity of a secret matters: its keyed hash.
    pub fn fingerprint(mut self, key: &str, value: &Fingerprint) -> Self {
        self.0
            .insert(key.to_owned(), Value::String(value.0.clone()));
        self
    }

    /// Parsed back from a stored record (not checked: it is what was sealed).
    pub fn from_json(text: &str) -> Option<Details> {
        match serde_json::from_str(text).ok()? {
            Value::Object(m) => Some(Details(m)),
            _ => None,
        }
    }

    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The canonical text that is sealed and stored: compact JSON with sorted keys
    /// (serde_json's map is ordered by key).
    pub fn to_canonical(&self) -> String {
        Value::Object(self.0.clone()).to_string()
    }

    /// Checks the shape and that nothing looks like a secret.
    pub fn check(&self) -> Result<(), AuditError> {
        let bad = |key: &str, why: &str| AuditError::SecretInDetails {
            key: shown(key),
            why: why.to_owned(),
        };
        if self.0.len() > MAX_KEYS {
            return Err(bad("*", &format!("more than {MAX_KEYS} keys")));
        }
        if self.to_canonical().len() > MAX_BYTES {
            return Err(bad("*", &format!("larger than {MAX_BYTES} bytes")));
        }
        for (key, value) in &self.0 {
            if key.is_empty()
                || key.len() > 64
                || !key
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(bad(key, "keys are lowercase letters, digits and `_`"));
            }
            let credential_key = credential_name(key);
            let strings: Vec<&str> = match value {
                Value::String(s) => vec![s.as_str()],
                Value::Array(items) => {
                    let mut out = Vec::new();
                    for i in items {
                        match i {
                            Value::String(s) => out.push(s.as_str()),
                            _ => return Err(bad(key, "lists hold strings only")),
                        }
                    }
                    out
                }
                Value::Null | Value::Bool(_) | Value::Number(_) => {
                    if credential_key && !value.is_null() {
                        return Err(bad(key, "a credential-named key holds a fingerprint only"));
                    }
                    Vec::new()
                }
                Value::Object(_) => return Err(bad(key, "details are flat: no nested objects")),
            };
            for s in strings {
                if s.len() > MAX_STRING {
                    return Err(bad(key, &format!("a value longer than {MAX_STRING} bytes")));
                }
                if is_fingerprint(s) {
                    continue;
                }
                if credential_key {
                    return Err(bad(
                        key,
                        "a credential-named key holds a fingerprint, not a value",
                    ));
                }
                if let Some(why) = looks_like_secret(s) {
                    return Err(bad(key, why));
                }
            }
        }
        Ok(())
    }
}

/// At most 64 characters of untrusted text for an error message, control characters dropped.
pub fn shown(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(64).collect()
}

fn is_fingerprint(s: &str) -> bool {
    s.strip_prefix(FINGERPRINT_PREFIX)
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Key names that mean a credential. Names of public handles (`token_id`, `token_name`,
/// `session_count`, `token_prefix`) are not: they name a credential without being one.
fn credential_name(key: &str) -> bool {
    const PARTS: &[&str] = &[
        "token",
        "secret",
        "password",
        "passwd",
        "passphrase",
        "session",
        "cookie",
        "credential",
        "credentials",
        "authorization",
        "otp",
    ];
    const CODES: &[&str] = &[
        "code",
        "device_code",
        "user_code",
        "auth_code",
        "authorization_code",
    ];
    if ["_id", "_name", "_prefix", "_count", "_kind"]
        .iter()
        .any(|s| key.ends_with(s))
    {
        return false;
    }
    key == "key"
        || key.ends_with("_key")
        || key == "value"
        || key.ends_with("_value")
        || CODES.contains(&key)
        || key.ends_with("_device_code")
        || key.split('_').any(|p| PARTS.contains(&p))
}

/// Why `s` looks like a credential, if it does: [`looks_like_credential`], or a long,
/// high-entropy run of the token alphabet (for free-form details).
pub fn looks_like_secret(s: &str) -> Option<&'static str> {
    if let Some(why) = looks_like_credential(s) {
        return Some(why);
    }
    let t = s.trim();
    // Long runs of the token alphabet with high entropy: random keys and tokens. Commit
    // SHAs and UUIDs (hex, at most 4 bits a character) and words joined by `-`/`_` stay
    // below the threshold.
    let token_alphabet = t
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'_' | b'-' | b'.'));
    if token_alphabet && t.len() >= 24 && entropy(t) > 4.2 {
        return Some("it looks like a random key or token (long and high-entropy)");
    }
    None
}

/// Why `s` has the shape of a credential (a known token prefix, an Authorization header
/// value, a PEM block, a URL with a password), if it does. Ids are checked with this and
/// not with the entropy rule: Telbase's own ids (users, runs) are random by design, and a
/// claimed id from outside that merely looks random must not make a security event
/// unrecordable (which would turn a 401 into a 503).
pub fn looks_like_credential(s: &str) -> Option<&'static str> {
    const PREFIXES: &[&str] = &[
        "ghp_",
        "gho_",
        "ghu_",
        "ghs_",
        "ghr_",
        "github_pat_",
        "glpat-",
        "xoxb-",
        "xoxp-",
        "sk_live_",
        "sk-",
        "AKIA",
        "AIza",
        "ya29.",
        "tbt_",
        "tbs_",
        "tbr_",
        "tlb_",
        "eyJ",
    ];
    let t = s.trim();
    if PREFIXES.iter().any(|p| t.starts_with(p)) && t.len() >= 12 {
        return Some("it starts like a credential (a known token prefix)");
    }
    let lower = t.to_ascii_lowercase();
    if lower.starts_with("bearer ") || lower.starts_with("basic ") || lower.starts_with("token ") {
        return Some("it is an Authorization header value");
    }
    if t.contains("-----BEGIN") {
        return Some("it holds a PEM block");
    }
    if let Some((_, rest)) = t.split_once("://")
        && rest
            .split('/')
            .next()
            .is_some_and(|a| a.contains('@') && a.contains(':'))
    {
        return Some("it is a URL with a password");
    }
    None
}

/// Shannon entropy in bits per character.
fn entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[b as usize] += 1;
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|c| **c > 0)
        .map(|c| {
            let p = f64::from(*c) / n;
            -p * p.log2()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_are_not_credentials_but_tokens_are() {
        // A user id as Telbase makes them (128 random bits in base32): high entropy, yet an
        // id; the control plane's users have them, and refusing them made events flaky.
        let id = "q7m2xk4vz9wj3hbt6ncr8ydp5e";
        assert!(entropy(id) > 4.2, "the case the entropy rule would catch");
        assert_eq!(looks_like_credential(id), None);
        assert!(
            looks_like_secret(id).is_some(),
            "still refused as a detail value"
        );
        assert!(looks_like_credential("tlb_pat_q7m2xk4vz9wj3hbt6ncr8ydp5e").is_some());
        assert!(looks_like_credential("Bearer abc.def").is_some());
    }

    #[test]
    fn ordinary_details_pass() {
        Details::new()
            .text("role", "admin")
            .text("previous_role", "member")
            .text("commit", "0123456789abcdef0123456789abcdef01234567")
            .text("request_id", "3f2b1c4e-9a7d-4e2b-8c1a-5d6e7f8a9b0c")
            .text("path", "/api/v1/projects/acme-web/env")
            .text("reason", "signature does not match any webhook secret")
            .text("name", "DATABASE_URL")
            .text("token_id", "tok_12")
            .number("status_code", 403)
            .number("count", 3)
            .flag("locked", true)
            .list("scopes", ["read", "deploy"])
            .check()
            .unwrap();
    }

    #[test]
    fn secrets_are_refused() {
        for d in [
            Details::new().text("token", "short"),
            Details::new().text("refresh_token", "abc"),
            Details::new().text("device_code", "WDJB-MJHT"),
            Details::new().text("note", "ghp_0123456789abcdefghijABCDEFGHIJ012345"),
            Details::new().text("header", "Bearer abc.def.ghi"),
            Details::new().text("x", "q7Vt9Lk2Pz8Xw3Rn5Ys1Ua6Hb4Jc0Md+/QeGf=="),
            Details::new().text("dsn", "postgres://app:hunter2@db.example.com/x"),
            Details::new().list("items", ["fine", "-----BEGIN PRIVATE KEY-----"]),
            Details::new().number("password", 1234),
        ] {
            assert!(d.check().is_err(), "{d:?} passed");
        }
    }

    #[test]
    fn fingerprints_pass_under_credential_names() {
        let fp = Fingerprint(format!("{FINGERPRINT_PREFIX}{}", "ab".repeat(32)));
        Details::new().fingerprint("token", &fp).check().unwrap();
    }

    #[test]
    fn shape_is_bounded() {
        assert!(Details::new().text("Bad-Key", "x").check().is_err());
        assert!(Details::new().text("k", "a ".repeat(400)).check().is_err());
        let mut d = Details::new();
        for i in 0..40 {
            d = d.number(&format!("k{i}"), i);
        }
        assert!(d.check().is_err());
    }
}

//! SOPS files encrypted to age recipients: reading their structure without any key (for
//! plans and validation), opening them with the same X25519 identities as [`super::open`],
//! and turning them into environment variables.
//!
//! The rules are those of getsops/sops (`sops.go`, `aes/cipher.go`), so files written by
//! `sops` (as Flux users have them) open unchanged: the data key is an armored age file per
//! recipient under `sops.age[].enc`; every encrypted value is
//! `ENC[AES256_GCM,data:…,iv:…,tag:…,type:…]`, AES-256-GCM with a 32-byte IV and the value's
//! key path (`a:b:c:`) as additional data; the MAC is the uppercase hex SHA-512 of every leaf
//! value in document order, itself encrypted under the data key with `lastmodified` as
//! additional data. Nothing is returned unless every value authenticates and the MAC
//! matches, so any change to the file fails closed with its own [`SopsError`].
//!
//! Parsing keeps key order (the MAC depends on it) in a tree of our own, built by serde
//! visitors for both YAML (serde-saphyr, under node and depth budgets) and JSON
//! (serde_json). Plaintext lives only in `Zeroizing` buffers and `SecretString`s and never
//! reaches an error message.

use std::fmt;
use std::path::Path;

use aes_gcm::aead::consts::U32;
use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::{AeadInPlace as _, KeyInit as _};
use base64::Engine as _;
use secrecy::{ExposeSecret as _, SecretString};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use sha2::Digest as _;
use zeroize::Zeroizing;

/// The largest SOPS file read. Env files are a few KiB; the cap bounds memory and parse time
/// for a hostile or mistaken file (the same cap as telbase.yaml).
pub const MAX_SOPS_BYTES: u64 = 4 * 1024 * 1024;

/// Deepest nesting accepted, and the most nodes: generous for Kubernetes manifests, small
/// enough that a hostile file cannot exhaust the stack or take long to walk.
const MAX_DEPTH: usize = 32;
const MAX_NODES: usize = 100_000;

/// What SOPS hashes first when `mac_only_encrypted` is set, so that such a MAC never equals
/// one over all values (getsops/sops `MACOnlyEncryptedInitialization`).
const MAC_ONLY_ENCRYPTED_INIT: [u8; 32] = [
    0x8a, 0x3f, 0xd2, 0xad, 0x54, 0xce, 0x66, 0x52, 0x7b, 0x10, 0x34, 0xf3, 0xd1, 0x47, 0xbe, 0x0b,
    0x0b, 0x97, 0x5b, 0x3b, 0xf4, 0x4f, 0x72, 0xc6, 0xfd, 0xad, 0xec, 0x81, 0x76, 0xf2, 0x7d, 0x69,
];

/// SOPS's default when a file names no encryption rule: keys ending in this stay clear.
const DEFAULT_UNENCRYPTED_SUFFIX: &str = "_unencrypted";

/// AES-256-GCM with SOPS's 32-byte IV (GCM derives its counter block from a long IV with
/// GHASH, as Go's `NewGCMWithNonceSize` does).
type SopsGcm = aes_gcm::AesGcm<aes_gcm::aes::Aes256, U32>;

/// Why a SOPS file could not be read or opened. Each cause is its own variant; messages name
/// key paths and recipients (not secret) but never a value.
#[derive(Debug, thiserror::Error)]
pub enum SopsError {
    #[error("cannot read {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("the file is larger than {MAX_SOPS_BYTES} bytes, too large for a SOPS env file")]
    TooLarge,
    #[error("the file is not UTF-8 text")]
    NotUtf8,
    #[error("the file does not parse as {format}: {reason}")]
    Syntax {
        format: &'static str,
        reason: String,
    },
    #[error(
        "the file exceeds the safety limits for SOPS files ({MAX_DEPTH} levels of nesting, {MAX_NODES} values)"
    )]
    TooComplex,
    #[error("not a SOPS file: it has no top-level `sops` metadata map (encrypt it with `sops -e`)")]
    NotSops,
    #[error(
        "the SOPS file has no age recipients (its data key is wrapped only for {others}); Telbase opens SOPS files encrypted to age keys"
    )]
    NoAgeRecipients { others: String },
    #[error("unsupported SOPS file: {0}")]
    Unsupported(String),
    #[error("the SOPS metadata is invalid: {0}")]
    BadMetadata(String),
    #[error(
        "no identity matches: the file's data key is sealed to {}, and none of the given identities is one of them",
        .recipients.join(", ")
    )]
    NoMatchingIdentity { recipients: Vec<String> },
    #[error("the data key sealed to {recipient} cannot be opened: {reason}")]
    DataKey { recipient: String, reason: String },
    #[error("the data key opened to {len} bytes; SOPS data keys are 32 bytes")]
    DataKeyLength { len: usize },
    #[error("the value at `{path}` is not a valid SOPS encrypted value: {why}")]
    Malformed { path: String, why: String },
    #[error(
        "the value at `{path}` failed authentication: its data, IV or tag was altered, or it was moved from another key"
    )]
    ValueAuth { path: String },
    #[error(
        "the file's MAC cannot be decrypted: `sops.lastmodified` or `sops.mac` was altered after SOPS wrote the file"
    )]
    MacUnreadable,
    #[error(
        "the MAC does not match the content: a value (encrypted or clear), a key or their order was changed after SOPS wrote the file"
    )]
    MacMismatch,
    #[error("the value at `{path}` is not UTF-8 text, so it cannot be an environment value")]
    NotText { path: String },
    #[error("`{key}` {why}; an env_file is a flat map of NAME: value (or a Kubernetes Secret)")]
    NotEnvShape { key: String, why: String },
    #[error(
        "`{name}` is not a valid environment variable name (letters, digits and _, not starting with a digit)"
    )]
    BadEnvName { name: String },
    #[error("`{name}` is defined twice (in both `data` and `stringData`)")]
    DuplicateEnvName { name: String },
    #[error("the file has no key `{name}`")]
    NoSuchKey { name: String },
}

/// How the file is written. SOPS picks the store from the extension; so does Telbase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

impl Format {
    /// `.json` is JSON; `.env`, `.ini` (SOPS's other stores) are refused; anything else is
    /// YAML, as with `sops`.
    pub fn of_path(path: &Path) -> Result<Format, SopsError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        match ext.as_str() {
            "json" => Ok(Format::Json),
            "env" | "ini" => Err(SopsError::Unsupported(format!(
                "SOPS {ext} files are not supported; convert it to YAML with sops (`sops --decrypt --output-type yaml FILE`, then encrypt that YAML again with `sops --encrypt`)"
            ))),
            _ => Ok(Format::Yaml),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Format::Yaml => "YAML",
            Format::Json => "JSON",
        }
    }
}

/// A parsed document, keys in file order. Values are ciphertext or values SOPS left clear.
#[derive(Clone, PartialEq)]
enum Tree {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Tree>),
    Map(Vec<(String, Tree)>),
}

impl<'de> Deserialize<'de> for Tree {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TreeVisitor)
    }
}

struct TreeVisitor;

impl<'de> Visitor<'de> for TreeVisitor {
    type Value = Tree;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a YAML or JSON value")
    }
    fn visit_unit<E>(self) -> Result<Tree, E> {
        Ok(Tree::Null)
    }
    fn visit_none<E>(self) -> Result<Tree, E> {
        Ok(Tree::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Tree, D::Error> {
        Tree::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Tree, E> {
        Ok(Tree::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Tree, E> {
        Ok(Tree::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Tree, E> {
        Ok(i64::try_from(v).map_or(Tree::Float(v as f64), Tree::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Tree, E> {
        Ok(Tree::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Tree, E> {
        Ok(Tree::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Tree, E> {
        Ok(Tree::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Tree, E> {
        std::str::from_utf8(v)
            .map(|s| Tree::Str(s.to_owned()))
            .map_err(|_| E::custom("binary values are not supported"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tree, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Tree>()? {
            items.push(item);
        }
        Ok(Tree::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tree, A::Error> {
        let mut entries: Vec<(String, Tree)> = Vec::new();
        while let Some(key) = map.next_key::<Tree>()? {
            let name = match key {
                Tree::Str(s) => s,
                Tree::Int(i) => i.to_string(),
                Tree::Bool(b) => b.to_string(),
                Tree::Float(f) => f.to_string(),
                Tree::Null | Tree::Seq(_) | Tree::Map(_) => {
                    return Err(de::Error::custom("a map key that is not a string"));
                }
            };
            // YAML duplicates are caught by the parser; JSON's are caught here. Which copy
            // SOPS would hash is not worth guessing: refuse.
            if entries.iter().any(|(k, _)| *k == name) {
                return Err(de::Error::custom(format!("duplicate key `{name}`")));
            }
            let value = map.next_value::<Tree>()?;
            entries.push((name, value));
        }
        Ok(Tree::Map(entries))
    }
}

impl Tree {
    fn get(&self, key: &str) -> Option<&Tree> {
        match self {
            Tree::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Depth and node count, checked after parsing (serde_json's own recursion limit keeps
    /// the parse itself safe; serde-saphyr has its budget).
    fn within_limits(&self) -> bool {
        fn walk(t: &Tree, depth: usize, nodes: &mut usize) -> bool {
            *nodes += 1;
            if depth > MAX_DEPTH || *nodes > MAX_NODES {
                return false;
            }
            match t {
                Tree::Seq(items) => items.iter().all(|i| walk(i, depth + 1, nodes)),
                Tree::Map(entries) => entries.iter().all(|(_, v)| walk(v, depth + 1, nodes)),
                _ => true,
            }
        }
        let mut nodes = 0;
        walk(self, 0, &mut nodes)
    }

    fn kind(&self) -> &'static str {
        match self {
            Tree::Null => "null",
            Tree::Bool(_) => "a boolean",
            Tree::Int(_) => "an integer",
            Tree::Float(_) => "a number",
            Tree::Str(_) => "a string",
            Tree::Seq(_) => "a list",
            Tree::Map(_) => "a map",
        }
    }
}

/// Go's `strconv.FormatFloat(f, 'f', -1, 64)`: the shortest decimal that reads back as the
/// same float, never in exponent form. Rust's `Display` for `f64` is exactly that for
/// finite values; only the non-finite spellings differ.
fn go_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".to_owned()
    } else if f.is_infinite() {
        if f > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        format!("{f}")
    }
}

/// The text of a scalar SOPS left in the clear, as SOPS's `ToBytes` would hash it. `None`
/// for null, lists and maps.
fn clear_bytes(t: &Tree) -> Option<String> {
    match t {
        Tree::Str(s) => Some(s.clone()),
        Tree::Int(i) => Some(i.to_string()),
        Tree::Float(f) => Some(go_float(*f)),
        Tree::Bool(true) => Some("True".to_owned()),
        Tree::Bool(false) => Some("False".to_owned()),
        Tree::Null | Tree::Seq(_) | Tree::Map(_) => None,
    }
}

/// The text a scalar stands for as an environment value (booleans as YAML writes them).
fn clear_env_text(t: &Tree) -> Option<String> {
    match t {
        Tree::Bool(b) => Some(b.to_string()),
        other => clear_bytes(other),
    }
}

/// Which values SOPS encrypted: exactly one rule per file, as SOPS enforces.
enum Rule {
    UnencryptedSuffix(String),
    EncryptedSuffix(String),
    UnencryptedRegex(regex::Regex),
    EncryptedRegex(regex::Regex),
}

impl Rule {
    /// SOPS's `shouldBeEncrypted` for a key path (list indices are not part of it).
    fn encrypts(&self, path: &[String]) -> bool {
        match self {
            Rule::UnencryptedSuffix(s) => !path.iter().any(|p| p.ends_with(s.as_str())),
            Rule::EncryptedSuffix(s) => path.iter().any(|p| p.ends_with(s.as_str())),
            Rule::UnencryptedRegex(r) => !path.iter().any(|p| r.is_match(p)),
            Rule::EncryptedRegex(r) => path.iter().any(|p| r.is_match(p)),
        }
    }
}

struct AgeStanza {
    recipient: String,
    enc: String,
}

struct Metadata {
    age: Vec<AgeStanza>,
    lastmodified: String,
    mac: String,
    mac_only_encrypted: bool,
    rule: Rule,
}

fn meta_str(sops: &Tree, key: &str) -> Result<Option<String>, SopsError> {
    match sops.get(key) {
        None | Some(Tree::Null) => Ok(None),
        Some(Tree::Str(s)) if s.is_empty() => Ok(None),
        Some(Tree::Str(s)) => Ok(Some(s.clone())),
        Some(other) => Err(SopsError::BadMetadata(format!(
            "`sops.{key}` is {}, not a string",
            other.kind()
        ))),
    }
}

fn compile(key: &str, pattern: &str) -> Result<regex::Regex, SopsError> {
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|_| {
            SopsError::BadMetadata(format!("`sops.{key}` is not a valid regular expression"))
        })
}

fn parse_age_list(list: &Tree, at: &str, out: &mut Vec<AgeStanza>) -> Result<(), SopsError> {
    let items = match list {
        Tree::Null => return Ok(()),
        Tree::Seq(items) => items,
        other => {
            return Err(SopsError::BadMetadata(format!(
                "`{at}` is {}, not a list",
                other.kind()
            )));
        }
    };
    for (i, item) in items.iter().enumerate() {
        let field = |name: &str| match item.get(name) {
            Some(Tree::Str(s)) => Ok(s.clone()),
            _ => Err(SopsError::BadMetadata(format!(
                "`{at}[{i}]` has no `{name}` string"
            ))),
        };
        out.push(AgeStanza {
            recipient: field("recipient")?,
            enc: field("enc")?,
        });
    }
    Ok(())
}

/// Key types a SOPS file may carry besides age, named when a file has no age recipient.
const OTHER_KEY_TYPES: [&str; 5] = ["pgp", "kms", "gcp_kms", "azure_kv", "hc_vault"];

fn parse_metadata(sops: &Tree) -> Result<Metadata, SopsError> {
    if !matches!(sops, Tree::Map(_)) {
        return Err(SopsError::NotSops);
    }
    for key in ["encrypted_comment_regex", "unencrypted_comment_regex"] {
        if meta_str(sops, key)?.is_some() {
            return Err(SopsError::Unsupported(format!(
                "`sops.{key}` decides encryption by YAML comments, which Telbase does not read; re-encrypt the file without it"
            )));
        }
    }
    let mut age = Vec::new();
    let mut others: Vec<&str> = Vec::new();
    let non_empty = |t: Option<&Tree>| matches!(t, Some(Tree::Seq(items)) if !items.is_empty());
    match sops.get("key_groups") {
        None | Some(Tree::Null) => {
            if let Some(list) = sops.get("age") {
                parse_age_list(list, "sops.age", &mut age)?;
            }
            others.extend(OTHER_KEY_TYPES.iter().filter(|k| non_empty(sops.get(k))));
        }
        Some(Tree::Seq(groups)) if groups.len() > 1 => {
            return Err(SopsError::Unsupported(format!(
                "the data key is split across {} key groups (Shamir secret sharing); Telbase opens files whose data key is sealed whole to each age recipient",
                groups.len()
            )));
        }
        Some(Tree::Seq(groups)) => {
            for group in groups {
                if let Some(list) = group.get("age") {
                    parse_age_list(list, "sops.key_groups[0].age", &mut age)?;
                }
                others.extend(OTHER_KEY_TYPES.iter().filter(|k| non_empty(group.get(k))));
            }
        }
        Some(other) => {
            return Err(SopsError::BadMetadata(format!(
                "`sops.key_groups` is {}, not a list",
                other.kind()
            )));
        }
    }
    if age.is_empty() {
        return Err(SopsError::NoAgeRecipients {
            others: if others.is_empty() {
                "no key at all".to_owned()
            } else {
                others.join(", ")
            },
        });
    }
    let lastmodified = meta_str(sops, "lastmodified")?
        .ok_or_else(|| SopsError::BadMetadata("`sops.lastmodified` is missing".into()))?;
    let mac = meta_str(sops, "mac")?
        .ok_or_else(|| SopsError::BadMetadata("`sops.mac` is missing".into()))?;
    let mac_only_encrypted = match sops.get("mac_only_encrypted") {
        None | Some(Tree::Null) => false,
        Some(Tree::Bool(b)) => *b,
        Some(other) => {
            return Err(SopsError::BadMetadata(format!(
                "`sops.mac_only_encrypted` is {}, not a boolean",
                other.kind()
            )));
        }
    };
    let mut rules = Vec::new();
    if let Some(s) = meta_str(sops, "unencrypted_suffix")? {
        rules.push(Rule::UnencryptedSuffix(s));
    }
    if let Some(s) = meta_str(sops, "encrypted_suffix")? {
        rules.push(Rule::EncryptedSuffix(s));
    }
    if let Some(s) = meta_str(sops, "unencrypted_regex")? {
        rules.push(Rule::UnencryptedRegex(compile("unencrypted_regex", &s)?));
    }
    if let Some(s) = meta_str(sops, "encrypted_regex")? {
        rules.push(Rule::EncryptedRegex(compile("encrypted_regex", &s)?));
    }
    if rules.len() > 1 {
        return Err(SopsError::BadMetadata(
            "more than one of encrypted_suffix, unencrypted_suffix, encrypted_regex and unencrypted_regex is set (SOPS refuses such files too)".into(),
        ));
    }
    let rule = rules
        .pop()
        .unwrap_or_else(|| Rule::UnencryptedSuffix(DEFAULT_UNENCRYPTED_SUFFIX.to_owned()));
    Ok(Metadata {
        age,
        lastmodified,
        mac,
        mac_only_encrypted,
        rule,
    })
}

/// The additional data of the MAC: `lastmodified` as Go's `time.Format(time.RFC3339)`
/// prints it after `time.Parse` (fractional seconds dropped, a zero offset written `Z`).
fn mac_aad(lastmodified: &str) -> Result<String, SopsError> {
    let t = chrono::DateTime::parse_from_rfc3339(lastmodified).map_err(|_| {
        SopsError::BadMetadata("`sops.lastmodified` is not an RFC 3339 time".into())
    })?;
    let offset = t.offset().local_minus_utc();
    let zone = if offset == 0 {
        "Z".to_owned()
    } else {
        let sign = if offset < 0 { '-' } else { '+' };
        let m = offset.unsigned_abs() / 60;
        format!("{sign}{:02}:{:02}", m / 60, m % 60)
    };
    Ok(format!("{}{zone}", t.format("%Y-%m-%dT%H:%M:%S")))
}

/// One `ENC[AES256_GCM,data:…,iv:…,tag:…,type:…]` value, decoded but not decrypted.
struct EncValue {
    data: Vec<u8>,
    iv: [u8; 32],
    tag: [u8; 16],
    kind: String,
}

fn parse_enc(text: &str) -> Result<EncValue, String> {
    let inner = text
        .strip_prefix("ENC[AES256_GCM,")
        .and_then(|s| s.strip_suffix(']'))
        .ok_or("it is not of the form ENC[AES256_GCM,data:…,iv:…,tag:…,type:…]")?;
    let mut fields = inner.split(',');
    let mut field = |name: &str| -> Result<&str, String> {
        fields
            .next()
            .and_then(|f| f.strip_prefix(name))
            .and_then(|f| f.strip_prefix(':'))
            .ok_or_else(|| format!("its `{name}` field is missing or out of order"))
    };
    let (data, iv, tag, kind) = (field("data")?, field("iv")?, field("tag")?, field("type")?);
    if fields.next().is_some() {
        return Err("it has extra fields".into());
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let decode = |name: &str, s: &str| {
        b64.decode(s)
            .map_err(|_| format!("its `{name}` is not valid base64"))
    };
    let data = decode("data", data)?;
    let iv: [u8; 32] = decode("iv", iv)?
        .try_into()
        .map_err(|_| "its IV is not 32 bytes".to_owned())?;
    let tag: [u8; 16] = decode("tag", tag)?
        .try_into()
        .map_err(|_| "its tag is not 16 bytes".to_owned())?;
    Ok(EncValue {
        data,
        iv,
        tag,
        kind: kind.to_owned(),
    })
}

/// Decrypts one value in place: the plaintext bytes, or `None` when authentication fails.
fn decrypt(key: &SopsGcm, v: &EncValue, aad: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(v.data.clone());
    key.decrypt_in_place_detached(
        GenericArray::from_slice(&v.iv),
        aad,
        &mut buf,
        GenericArray::from_slice(&v.tag),
    )
    .ok()?;
    Some(buf)
}

/// Go's `strconv.ParseBool`.
fn go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// A decrypted value as SOPS types it: the bytes its MAC covers and the text it stands for
/// as an environment value (these differ for booleans and normalized numbers).
struct Plain {
    mac: Zeroizing<Vec<u8>>,
    text: Zeroizing<Vec<u8>>,
}

fn typed(bytes: Zeroizing<Vec<u8>>, kind: &str, path: &str) -> Result<Plain, SopsError> {
    let malformed = |why: &str| SopsError::Malformed {
        path: path.to_owned(),
        why: why.to_owned(),
    };
    let as_str = || std::str::from_utf8(&bytes).map_err(|_| malformed("not text"));
    let same = |s: String| {
        let b = Zeroizing::new(s.into_bytes());
        Plain {
            mac: b.clone(),
            text: b,
        }
    };
    match kind {
        "str" | "bytes" => Ok(Plain {
            mac: bytes.clone(),
            text: bytes,
        }),
        "int" => {
            let s = as_str()?;
            let n: i64 =
                s.strip_prefix('+').unwrap_or(s).parse().map_err(|_| {
                    malformed("its type is int but it does not decrypt to an integer")
                })?;
            Ok(same(n.to_string()))
        }
        "float" => {
            let f: f64 = as_str()?
                .parse()
                .map_err(|_| malformed("its type is float but it does not decrypt to a number"))?;
            Ok(same(go_float(f)))
        }
        "bool" => {
            let b = go_bool(as_str()?).ok_or_else(|| {
                malformed("its type is bool but it does not decrypt to a boolean")
            })?;
            Ok(Plain {
                mac: Zeroizing::new(if b {
                    b"True".to_vec()
                } else {
                    b"False".to_vec()
                }),
                text: Zeroizing::new(b.to_string().into_bytes()),
            })
        }
        "comment" => Err(malformed(
            "it is typed as a comment but stands where a value belongs",
        )),
        _ => Err(malformed(
            "its type is not one of str, int, float, bool, bytes",
        )),
    }
}

/// A SOPS file read and checked for structure, not decrypted. Holds ciphertext and the
/// values SOPS left clear; its `Debug` shows neither.
pub struct SopsFile {
    /// The document without its `sops` key, in file order.
    body: Vec<(String, Tree)>,
    meta: Metadata,
    format: Format,
}

impl fmt::Debug for SopsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SopsFile")
            .field("keys", &self.body.len())
            .field("recipients", &self.recipients())
            .finish()
    }
}

/// One environment variable an env file defines, known without any key: its name and the
/// value's text as stored (the `ENC[…]` ciphertext, or a value SOPS left clear), from which
/// plans compute a fingerprint.
#[derive(Clone, PartialEq, Eq)]
pub struct EnvKey {
    pub name: String,
    pub stored: String,
}

impl fmt::Debug for EnvKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EnvKey({})", self.name)
    }
}

/// Where an environment variable sits in the tree, and whether it is Kubernetes `data`
/// (base64 of the value).
struct Slot {
    name: String,
    path: Vec<String>,
    base64: bool,
    stored: String,
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A key name for a message: keys are not secret, but control characters and very long names
/// are cut so a hostile file cannot forge terminal output.
fn shown(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(64)
        .collect();
    if name.chars().count() > 64 {
        clean + "…"
    } else {
        clean
    }
}

impl SopsFile {
    /// Reads and parses `path` (the format from its extension), with the size cap applied
    /// before the file is read.
    pub fn read(path: &Path) -> Result<SopsFile, SopsError> {
        let format = Format::of_path(path)?;
        let io = |e: std::io::Error| SopsError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let file = std::fs::File::open(path).map_err(io)?;
        if file.metadata().map_err(io)?.len() > MAX_SOPS_BYTES {
            return Err(SopsError::TooLarge);
        }
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(file, MAX_SOPS_BYTES + 1),
            &mut bytes,
        )
        .map_err(io)?;
        if bytes.len() as u64 > MAX_SOPS_BYTES {
            return Err(SopsError::TooLarge);
        }
        let text = std::str::from_utf8(&bytes).map_err(|_| SopsError::NotUtf8)?;
        SopsFile::parse(text, format)
    }

    /// Parses the text of a SOPS file.
    pub fn parse(text: &str, format: Format) -> Result<SopsFile, SopsError> {
        if text.len() as u64 > MAX_SOPS_BYTES {
            return Err(SopsError::TooLarge);
        }
        let syntax = |reason: String| SopsError::Syntax {
            format: format.name(),
            reason,
        };
        let root: Tree = match format {
            Format::Json => serde_json::from_str(text).map_err(|e| {
                // serde_json's messages carry a position and never the input's text.
                syntax(e.to_string())
            })?,
            Format::Yaml => {
                serde_saphyr::from_str_with_options(text, yaml_options()).map_err(|e| {
                    let msg = e.to_string();
                    if msg.to_ascii_lowercase().contains("budget") {
                        SopsError::TooComplex
                    } else {
                        // The message may quote the offending text; keep only its first
                        // line, up to any quote, with the position the parser gives.
                        let first = msg.lines().next().unwrap_or("");
                        syntax(first.split('`').next().unwrap_or("").trim().to_owned())
                    }
                })?
            }
        };
        if !root.within_limits() {
            return Err(SopsError::TooComplex);
        }
        let Tree::Map(entries) = root else {
            return Err(SopsError::NotSops);
        };
        let mut body = Vec::with_capacity(entries.len());
        let mut sops = None;
        for (k, v) in entries {
            if k == "sops" {
                sops = Some(v);
            } else {
                body.push((k, v));
            }
        }
        let meta = parse_metadata(&sops.ok_or(SopsError::NotSops)?)?;
        Ok(SopsFile { body, meta, format })
    }

    /// The age recipients the data key is sealed to, in file order.
    pub fn recipients(&self) -> Vec<&str> {
        self.meta.age.iter().map(|a| a.recipient.as_str()).collect()
    }

    /// The environment variables this file defines, read without any key.
    ///
    /// The rule: a file whose top level has `kind` and a `data` and/or `stringData` map is a
    /// Kubernetes Secret (as Flux users keep them): its `stringData` entries, then its `data`
    /// entries (base64, decoded when opened), are the variables, and its other keys
    /// (`apiVersion`, `metadata`, `type`…) are ignored. Any other file must be a flat map of
    /// NAME: scalar; a nested or null value is an error naming its key. Names must be valid
    /// environment variable names.
    pub fn env_keys(&self) -> Result<Vec<EnvKey>, SopsError> {
        Ok(self
            .slots()?
            .into_iter()
            .map(|s| EnvKey {
                name: s.name,
                stored: s.stored,
            })
            .collect())
    }

    fn slots(&self) -> Result<Vec<Slot>, SopsError> {
        let get = |k: &str| self.body.iter().find(|(n, _)| n == k).map(|(_, v)| v);
        let secret_maps: Vec<&str> = ["stringData", "data"]
            .into_iter()
            .filter(|k| matches!(get(k), Some(Tree::Map(_))))
            .collect();
        let mut slots: Vec<Slot> = Vec::new();
        let mut push = |name: &str, path: Vec<String>, value: &Tree, base64: bool| {
            let key = path.join(".");
            let stored = match value {
                Tree::Seq(_) | Tree::Map(_) => {
                    return Err(SopsError::NotEnvShape {
                        key: shown(&key),
                        why: format!("is {}", value.kind()),
                    });
                }
                Tree::Null => {
                    return Err(SopsError::NotEnvShape {
                        key: shown(&key),
                        why: "has no value (null)".into(),
                    });
                }
                scalar => clear_env_text(scalar).unwrap_or_default(),
            };
            if !valid_env_name(name) {
                return Err(SopsError::BadEnvName { name: shown(name) });
            }
            if slots.iter().any(|s| s.name == name) {
                return Err(SopsError::DuplicateEnvName { name: shown(name) });
            }
            slots.push(Slot {
                name: name.to_owned(),
                path,
                base64,
                stored,
            });
            Ok(())
        };
        if get("kind").is_some() && !secret_maps.is_empty() {
            if let Some(Tree::Str(kind)) = get("kind")
                && !kind.starts_with("ENC[")
                && kind != "Secret"
            {
                return Err(SopsError::NotEnvShape {
                    key: "kind".into(),
                    why: format!("is `{}`, not a Kubernetes Secret", shown(kind)),
                });
            }
            for map in secret_maps {
                if let Some(Tree::Map(entries)) = get(map) {
                    for (name, value) in entries {
                        push(
                            name,
                            vec![map.to_owned(), name.clone()],
                            value,
                            map == "data",
                        )?;
                    }
                }
            }
        } else {
            for (name, value) in &self.body {
                push(name, vec![name.clone()], value, false)?;
            }
        }
        Ok(slots)
    }

    /// Opens the data key with `identities`, decrypts every value and verifies the MAC,
    /// exactly as `sops -d` does; nothing is returned unless all of it checks out.
    pub fn decrypt(&self, identities: &[age::x25519::Identity]) -> Result<Opened, SopsError> {
        let key = self.data_key(identities)?;
        let cipher = SopsGcm::new(GenericArray::from_slice(&key[..]));
        let mut hash = sha2::Sha512::new();
        if self.meta.mac_only_encrypted {
            hash.update(MAC_ONLY_ENCRYPTED_INIT);
        }
        let mut leaves = Vec::new();
        let mut keys: Vec<String> = Vec::new();
        let mut indexed: Vec<String> = Vec::new();
        for (k, v) in &self.body {
            keys.push(k.clone());
            indexed.push(k.clone());
            self.walk(v, &mut keys, &mut indexed, &cipher, &mut hash, &mut leaves)?;
            keys.pop();
            indexed.pop();
        }
        let computed: String = hash.finalize().iter().map(|b| format!("{b:02X}")).collect();
        let aad = mac_aad(&self.meta.lastmodified)?;
        let stored = parse_enc(&self.meta.mac).map_err(|why| SopsError::Malformed {
            path: "sops.mac".into(),
            why,
        })?;
        if stored.kind != "str" {
            // SOPS compares the decrypted MAC as a string; any other type never matches.
            return Err(SopsError::Malformed {
                path: "sops.mac".into(),
                why: "its type is not str".into(),
            });
        }
        let mac = decrypt(&cipher, &stored, aad.as_bytes()).ok_or(SopsError::MacUnreadable)?;
        if mac.as_slice() != computed.as_bytes() {
            return Err(SopsError::MacMismatch);
        }
        Ok(Opened { leaves })
    }

    fn walk(
        &self,
        t: &Tree,
        keys: &mut Vec<String>,
        indexed: &mut Vec<String>,
        cipher: &SopsGcm,
        hash: &mut sha2::Sha512,
        leaves: &mut Vec<(Vec<String>, SecretString)>,
    ) -> Result<(), SopsError> {
        match t {
            // SOPS does not walk into nulls: they are neither decrypted nor hashed.
            Tree::Null => Ok(()),
            Tree::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    indexed.push(i.to_string());
                    self.walk(item, keys, indexed, cipher, hash, leaves)?;
                    indexed.pop();
                }
                Ok(())
            }
            Tree::Map(entries) => {
                for (k, v) in entries {
                    keys.push(k.clone());
                    indexed.push(k.clone());
                    self.walk(v, keys, indexed, cipher, hash, leaves)?;
                    keys.pop();
                    indexed.pop();
                }
                Ok(())
            }
            scalar => {
                let path = indexed.join(".");
                let encrypted = self.meta.rule.encrypts(keys);
                let plain = if encrypted {
                    match scalar {
                        // SOPS leaves empty strings as they are.
                        Tree::Str(s) if s.is_empty() => Plain {
                            mac: Zeroizing::new(Vec::new()),
                            text: Zeroizing::new(Vec::new()),
                        },
                        Tree::Str(s) => {
                            let v = parse_enc(s).map_err(|why| SopsError::Malformed {
                                path: path.clone(),
                                why,
                            })?;
                            let aad = keys.join(":") + ":";
                            let bytes = decrypt(cipher, &v, aad.as_bytes())
                                .ok_or_else(|| SopsError::ValueAuth { path: path.clone() })?;
                            typed(bytes, &v.kind, &path)?
                        }
                        other => {
                            return Err(SopsError::Malformed {
                                path,
                                why: format!(
                                    "it should be encrypted but is {} in the clear",
                                    other.kind()
                                ),
                            });
                        }
                    }
                } else {
                    let mac = match (self.format, scalar) {
                        // SOPS's JSON store reads every number as a float64, so a clear
                        // integer is hashed as Go prints that float (they differ past 2^53).
                        (Format::Json, Tree::Int(i)) => go_float(*i as f64),
                        _ => clear_bytes(scalar).unwrap_or_default(),
                    };
                    let text = clear_env_text(scalar).unwrap_or_default();
                    Plain {
                        mac: Zeroizing::new(mac.into_bytes()),
                        text: Zeroizing::new(text.into_bytes()),
                    }
                };
                if !self.meta.mac_only_encrypted || encrypted {
                    hash.update(&plain.mac[..]);
                }
                // Values that are not text (SOPS `bytes`) are kept out of the result rather
                // than failing the whole file; asking for one is an error.
                if let Ok(text) = std::str::from_utf8(&plain.text) {
                    leaves.push((indexed.clone(), SecretString::from(text.to_owned())));
                }
                Ok(())
            }
        }
    }

    fn data_key(
        &self,
        identities: &[age::x25519::Identity],
    ) -> Result<Zeroizing<Vec<u8>>, SopsError> {
        let mut damaged = None;
        for stanza in &self.meta.age {
            match super::open(stanza.enc.as_bytes(), identities) {
                Ok(key) if key.len() == 32 => return Ok(key),
                Ok(key) => return Err(SopsError::DataKeyLength { len: key.len() }),
                Err(super::OpenError::NoMatchingIdentity) => {}
                Err(e) => {
                    damaged.get_or_insert((stanza.recipient.clone(), e.to_string()));
                }
            }
        }
        Err(match damaged {
            Some((recipient, reason)) => SopsError::DataKey { recipient, reason },
            None => SopsError::NoMatchingIdentity {
                recipients: self.meta.age.iter().map(|a| a.recipient.clone()).collect(),
            },
        })
    }

    /// Decrypts and verifies the file, then returns its environment variables in file
    /// order (see [`SopsFile::env_keys`] for the rule).
    pub fn open_env(
        &self,
        identities: &[age::x25519::Identity],
    ) -> Result<Vec<(String, SecretString)>, SopsError> {
        let slots = self.slots()?;
        let opened = self.decrypt(identities)?;
        slots
            .into_iter()
            .map(|slot| {
                let path: Vec<&str> = slot.path.iter().map(String::as_str).collect();
                let shown_path = shown(&slot.path.join("."));
                let value = opened.get(&path).ok_or_else(|| SopsError::NotText {
                    path: shown_path.clone(),
                })?;
                let value = if slot.base64 {
                    let raw = Zeroizing::new(
                        base64::engine::general_purpose::STANDARD
                            .decode(value.expose_secret().trim())
                            .map_err(|_| SopsError::Malformed {
                                path: shown_path.clone(),
                                why: "a Kubernetes `data` value must be base64".into(),
                            })?,
                    );
                    let text = std::str::from_utf8(&raw)
                        .map_err(|_| SopsError::NotText { path: shown_path })?;
                    SecretString::from(text.to_owned())
                } else {
                    value.clone()
                };
                Ok((slot.name, value))
            })
            .collect()
    }
}

/// A decrypted, verified SOPS document: every scalar leaf by its path (map keys, and list
/// indices as decimal), values as secrets.
pub struct Opened {
    leaves: Vec<(Vec<String>, SecretString)>,
}

impl fmt::Debug for Opened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Opened({} values)", self.leaves.len())
    }
}

impl Opened {
    /// The value at `path` (e.g. `["stringData", "key"]`), if it is a text scalar.
    pub fn get(&self, path: &[&str]) -> Option<&SecretString> {
        self.leaves
            .iter()
            .find(|(p, _)| p.len() == path.len() && p.iter().zip(path).all(|(a, b)| a == b))
            .map(|(_, v)| v)
    }

    /// Number of scalar values decrypted or verified.
    pub fn len(&self) -> usize {
        self.leaves.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leaves.is_empty()
    }
}

fn yaml_options() -> serde_saphyr::Options {
    let mut o = serde_saphyr::Options::default();
    o.strict_booleans = true;
    o.duplicate_keys = serde_saphyr::options::DuplicateKeyPolicy::Error;
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = MAX_DEPTH;
    budget.max_documents = 1;
    budget.max_nodes = MAX_NODES;
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    budget.max_total_scalar_bytes = MAX_SOPS_BYTES as usize;
    o.budget = Some(budget);
    o.alias_limits.max_total_replayed_events = 10_000;
    o.alias_limits.max_replay_stack_depth = 16;
    o
}

/// Opens the SOPS file at `path` with `identities` and returns its environment variables
/// in file order: what `telbase exec --env-file` and apply use. See [`SopsFile::env_keys`]
/// for which keys count and [`SopsError`] for every way it can fail.
pub fn open_env_file(
    path: &Path,
    identities: &[age::x25519::Identity],
) -> Result<Vec<(String, SecretString)>, SopsError> {
    SopsFile::read(path)?.open_env(identities)
}

/// One variable of the env file at `path`. The whole file is still decrypted and verified:
/// the MAC covers every value, so none can be trusted alone.
pub fn open_env_key(
    path: &Path,
    identities: &[age::x25519::Identity],
    name: &str,
) -> Result<SecretString, SopsError> {
    open_env_file(path, identities)?
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
        .ok_or_else(|| SopsError::NoSuchKey { name: shown(name) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_go_formatfloat_f_minus_1() {
        for (f, want) in [
            (1.0, "1"),
            (0.1, "0.1"),
            (-0.0, "-0"),
            (1e21, "1000000000000000000000"),
            (1.5e-7, "0.00000015"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
        ] {
            assert_eq!(go_float(f), want);
        }
    }

    #[test]
    fn lastmodified_is_reformatted_as_go_rfc3339() {
        for (given, want) in [
            ("2024-11-12T13:33:42Z", "2024-11-12T13:33:42Z"),
            ("2024-11-12T13:33:42.123456Z", "2024-11-12T13:33:42Z"),
            ("2024-11-12T13:33:42+00:00", "2024-11-12T13:33:42Z"),
            ("2024-11-12T15:33:42+02:00", "2024-11-12T15:33:42+02:00"),
            ("2024-11-12T08:03:42-05:30", "2024-11-12T08:03:42-05:30"),
        ] {
            assert_eq!(mac_aad(given).unwrap(), want, "{given}");
        }
        assert!(mac_aad("last tuesday").is_err());
    }

    #[test]
    fn enc_values_parse_strictly() {
        let iv = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
        let tag = base64::engine::general_purpose::STANDARD.encode([2u8; 16]);
        let ok = format!("ENC[AES256_GCM,data:AAEC,iv:{iv},tag:{tag},type:int]");
        let v = parse_enc(&ok).unwrap();
        assert_eq!((v.data, v.kind.as_str()), (vec![0, 1, 2], "int"));
        for bad in [
            "ENC[AES256_GCM,data:AAEC]".to_owned(),
            format!("ENC[AES256_GCM,iv:{iv},data:AAEC,tag:{tag},type:str]"),
            format!("ENC[AES256_GCM,data:AAEC,iv:{iv},tag:{tag},type:str,x:1]"),
            format!("ENC[AES256_GCM,data:A*EC,iv:{iv},tag:{tag},type:str]"),
            format!("ENC[AES256_GCM,data:AAEC,iv:AAAA,tag:{tag},type:str]"),
            format!("ENC[AES256_CBC,data:AAEC,iv:{iv},tag:{tag},type:str]"),
            format!("ENC[AES256_GCM,data:AAEC,iv:{iv},tag:{tag},type:str"),
        ] {
            assert!(parse_enc(&bad).is_err(), "{bad}");
        }
        assert_eq!(go_bool("T"), Some(true));
        assert_eq!(go_bool("FALSE"), Some(false));
        assert_eq!(go_bool("yes"), None);
    }
}

//! Age keys, sealing and opening: everything Telbase does with age-encrypted values, as pure
//! functions over bytes, readers and writers (the CLI in `cli::secrets` only wires files and
//! terminals to them, and `apply::AgeOpener` opens sealed config values through [`open`]).
//!
//! Formats are those of the reference Go implementation so that files move freely between
//! the two: identity files as `age-keygen` writes them, recipients as `age1…` strings,
//! sealed values as age v1 files (armored when Telbase writes them; armored or binary when it
//! reads them). Only X25519 is supported: the `age` crate is built without `ssh` and
//! `plugin`, and it cannot encrypt to post-quantum (`age1pq1…`) recipients, so those are
//! refused with an explanation rather than skipped. Every way opening can fail has its own
//! [`OpenError`] variant, because "wrong key" and "damaged file" call for different fixes.
//! Secret material stays in `secrecy`/`zeroize` types and never reaches an error message.

pub mod reseal;
pub mod sops;
pub mod unwrap;

use std::io::{Read, Write};

pub mod identity;
pub mod inject;

use secrecy::{ExposeSecret as _, SecretString};
use zeroize::Zeroizing;

pub mod envelope;
pub mod stored;

/// The largest sealed input [`open`] accepts: sealed values are environment values and
/// small files, and an unbounded read of stdin is a way to exhaust memory.
pub const MAX_SEALED_BYTES: usize = 64 * 1024 * 1024;

/// Size of one encrypted payload chunk (64 KiB of plaintext plus its 16-byte tag) and of
/// the payload nonce, from the age v1 format; used to recognise a cut-short payload.
const CHUNK: usize = 64 * 1024 + 16;
const TAG: usize = 16;

const BINARY_MAGIC: &[u8] = b"age-encryption.org/";
const ARMOR_BEGIN: &[u8] = b"-----BEGIN AGE ENCRYPTED FILE-----";
const ARMOR_END: &[u8] = b"-----END AGE ENCRYPTED FILE-----";

/// Why an identity file could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("no AGE-SECRET-KEY-1… line found (is this an age identity file?)")]
    Empty,
    #[error(
        "line {line}: a post-quantum age identity; this version of Telbase and its age library support X25519 identities (AGE-SECRET-KEY-1…) only"
    )]
    PostQuantum { line: usize },
    #[error(
        "line {line}: an age plugin identity; Telbase supports X25519 identities (AGE-SECRET-KEY-1…) only"
    )]
    Plugin { line: usize },
    #[error("line {line}: a malformed age identity")]
    Malformed { line: usize },
}

/// Why a recipient could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecipientError {
    #[error(
        "{at}: `{prefix}…` is a post-quantum (ML-KEM hybrid) recipient; this version of Telbase and its age library cannot encrypt to it. Use the person's X25519 recipient (age1…, from `age-keygen` without -pq)"
    )]
    PostQuantum { at: String, prefix: String },
    #[error(
        "{at}: `{shown}` is not an X25519 age recipient (expected age1… as printed by age-keygen){why}"
    )]
    Malformed {
        at: String,
        shown: String,
        why: &'static str,
    },
    #[error("no recipients: name at least one with --recipient or in the recipients file")]
    None,
}

/// Why sealing failed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("no recipients to seal to")]
    NoRecipients,
    #[error("cannot write the sealed value: {0}")]
    Io(#[from] std::io::Error),
}

/// Why an age file could not be opened. Each variant is a different problem with a
/// different fix; messages never include plaintext or key material.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "not an age file (it starts with neither `age-encryption.org/` nor `-----BEGIN AGE ENCRYPTED FILE-----`)"
    )]
    NotAge,
    #[error("an age file of a format version this age library does not know")]
    UnknownVersion,
    #[error("the ASCII armor is damaged: {0}")]
    Armor(String),
    #[error(
        "the file is truncated: it ends before the age stream does (copied or pasted only in part?)"
    )]
    Truncated,
    #[error("the age header is corrupted (its structure or its MAC does not check out)")]
    CorruptHeader,
    #[error(
        "the file is encrypted with a passphrase; Telbase opens files sealed to X25519 recipients only"
    )]
    Passphrase,
    #[error(
        "no identity matches: the file was sealed to other recipients (wrong key, or sealed before this key was added)"
    )]
    NoMatchingIdentity,
    #[error(
        "the payload is damaged: authentication failed (bad MAC), so the file was altered after sealing"
    )]
    BadPayload,
    #[error("the file is larger than {MAX_SEALED_BYTES} bytes, too large for a sealed value")]
    TooLarge,
    #[error("cannot read the sealed input: {0}")]
    Io(std::io::Error),
}

/// A new random X25519 identity.
pub fn generate() -> age::x25519::Identity {
    age::x25519::Identity::generate()
}

/// The identity file text `age-keygen` writes: a creation comment, the public key comment,
/// and the secret key line. `created` is RFC 3339, as age-keygen writes it.
pub fn identity_file(identity: &age::x25519::Identity, created: &str) -> SecretString {
    let key = identity.to_string();
    SecretString::from(format!(
        "# created: {created}\n# public key: {}\n{}\n",
        identity.to_public(),
        key.expose_secret()
    ))
}

/// Every X25519 identity in the text of an identity file (age-keygen's format: `#` comments,
/// blank lines, one `AGE-SECRET-KEY-1…` per line).
pub fn parse_identities(text: &str) -> Result<Vec<age::x25519::Identity>, IdentityError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let n = i + 1;
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let upper = line.to_ascii_uppercase();
        if upper.starts_with("AGE-SECRET-KEY-PQ-") {
            return Err(IdentityError::PostQuantum { line: n });
        }
        if upper.starts_with("AGE-PLUGIN-") {
            return Err(IdentityError::Plugin { line: n });
        }
        match line.parse::<age::x25519::Identity>() {
            Ok(id) => out.push(id),
            Err(_) => return Err(IdentityError::Malformed { line: n }),
        }
    }
    if out.is_empty() {
        return Err(IdentityError::Empty);
    }
    Ok(out)
}

/// One recipient string; `at` says where it came from (e.g. `--recipient` or `file:3`).
pub fn parse_recipient(s: &str, at: &str) -> Result<age::x25519::Recipient, RecipientError> {
    let s = s.trim();
    let lower = s.to_ascii_lowercase();
    if lower.starts_with("age1pq") {
        return Err(RecipientError::PostQuantum {
            at: at.to_owned(),
            prefix: s.chars().take(12).collect(),
        });
    }
    s.parse::<age::x25519::Recipient>()
        .map_err(|_| RecipientError::Malformed {
            at: at.to_owned(),
            // Recipients are public, but a mistyped line could be anything (even a secret
            // key pasted in the wrong file), so only its start is shown.
            shown: if s.starts_with("AGE-SECRET-KEY") {
                "AGE-SECRET-KEY-…".to_owned()
            } else {
                s.chars().take(16).collect::<String>()
                    + if s.chars().count() > 16 { "…" } else { "" }
            },
            why: if s.starts_with("AGE-SECRET-KEY") {
                "; this is a secret key, which must never be in a recipients file"
            } else if s.starts_with("ssh-") {
                "; SSH keys are not supported"
            } else if lower.starts_with("age1") {
                "; plugin recipients and mistyped keys are not supported"
            } else {
                ""
            },
        })
}

/// The recipients in a recipients file: one `age1…` per line, `#` comments and blank lines
/// ignored. `name` names the file in errors, which also give the line number.
pub fn parse_recipients(
    text: &str,
    name: &str,
) -> Result<Vec<age::x25519::Recipient>, RecipientError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(parse_recipient(line, &format!("{name}:{}", i + 1))?);
    }
    Ok(out)
}

/// Seals `plaintext` to every recipient as an armored age file written to `out`: the text
/// that goes under `sealed: |` in telbase.yaml.
pub fn seal(
    plaintext: &[u8],
    recipients: &[age::x25519::Recipient],
    out: impl Write,
) -> Result<(), SealError> {
    if recipients.is_empty() {
        return Err(SealError::NoRecipients);
    }
    let encryptor =
        age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|_| SealError::NoRecipients)?;
    let armor = age::armor::ArmoredWriter::wrap_output(out, age::armor::Format::AsciiArmor)?;
    let mut writer = encryptor.wrap_output(armor)?;
    writer.write_all(plaintext)?;
    writer.finish()?.finish()?;
    Ok(())
}

/// Why a plaintext could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the value is larger than {MAX_SEALED_BYTES} bytes, too large for a sealed value")]
    TooLarge,
    #[error("cannot read the value: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads a plaintext (at most [`MAX_SEALED_BYTES`]) so that no copy outlives the result: the
/// buffer grows by moving into a larger zeroizing buffer and wiping the old one, where
/// `read_to_end` would reallocate and leave the old bytes in freed memory.
pub fn read_plaintext(mut input: impl Read) -> Result<Zeroizing<Vec<u8>>, ReadError> {
    let mut buf = Zeroizing::new(Vec::with_capacity(4096));
    let mut chunk = Zeroizing::new([0u8; 4096]);
    loop {
        let n = match input.read(&mut chunk[..]) {
            Ok(0) => return Ok(buf),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if buf.len() + n > MAX_SEALED_BYTES {
            return Err(ReadError::TooLarge);
        }
        if buf.len() + n > buf.capacity() {
            let mut bigger = Zeroizing::new(Vec::with_capacity((buf.len() + n) * 2));
            bigger.extend_from_slice(&buf);
            buf = bigger; // the old buffer is zeroized as it drops
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads a sealed input (armored or binary) into memory, at most [`MAX_SEALED_BYTES`].
pub fn read_sealed(input: impl Read) -> Result<Vec<u8>, OpenError> {
    let mut buf = Vec::new();
    input
        .take(MAX_SEALED_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(OpenError::Io)?;
    if buf.len() > MAX_SEALED_BYTES {
        return Err(OpenError::TooLarge);
    }
    Ok(buf)
}

/// Opens an age file, armored or binary, with the first identity that matches. The
/// plaintext is zeroized when dropped.
pub fn open(
    sealed: &[u8],
    identities: &[age::x25519::Identity],
) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    open_with(sealed, &unwrap::Keys::new(identities))
}

/// [`open`] with identities prepared once (for opening many values with the same keys).
pub fn open_with(sealed: &[u8], keys: &unwrap::Keys<'_>) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    let binary = dearmor(sealed)?;
    if !binary.starts_with(BINARY_MAGIC) {
        // A prefix of the magic is a file cut inside its first line, not garbage.
        return Err(if !binary.is_empty() && BINARY_MAGIC.starts_with(&binary) {
            OpenError::Truncated
        } else {
            OpenError::NotAge
        });
    }
    // A first parse finds where the header and nonce end (reading a slice through BufRead
    // never reads past them). A payload with no chunk, or whose last chunk is shorter than
    // its tag, was cut short: no intact age stream has that length. Checked before
    // decrypting so that it is reported as truncation rather than as a failed MAC.
    let payload_len = {
        let mut probe: &[u8] = &binary;
        age::Decryptor::new_buffered(&mut probe).map_err(header_error)?;
        probe.len()
    };
    if payload_len == 0 || (payload_len % CHUNK != 0 && payload_len % CHUNK < TAG) {
        return Err(OpenError::Truncated);
    }
    let decryptor = age::Decryptor::new_buffered(&binary[..]).map_err(header_error)?;
    if decryptor.is_scrypt() {
        return Err(OpenError::Passphrase);
    }
    let mut reader = decryptor.decrypt(keys.as_age()).map_err(header_error)?;
    // The plaintext is never longer than the payload: reserving that much up front means the
    // buffer is never reallocated, so no unzeroized copy of a partial plaintext is left behind.
    let mut out = Zeroizing::new(Vec::with_capacity(payload_len));
    reader.read_to_end(&mut out).map_err(payload_error)?;
    Ok(out)
}

/// The binary age file inside `sealed`: armor removed if present (leading whitespace
/// allowed, as the Go implementation allows it), binary input passed through.
fn dearmor(sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
    let start = sealed
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(sealed.len());
    let trimmed = &sealed[start..];
    if !trimmed.starts_with(ARMOR_BEGIN) {
        if !trimmed.is_empty() && ARMOR_BEGIN.starts_with(trimmed) {
            return Err(OpenError::Truncated);
        }
        return Ok(sealed.to_vec());
    }
    if !contains(trimmed, ARMOR_END) {
        return Err(OpenError::Truncated);
    }
    let mut out = Vec::new();
    age::armor::ArmoredReader::new(trimmed)
        .read_to_end(&mut out)
        .map_err(|e| OpenError::Armor(e.to_string()))?;
    Ok(out)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn header_error(e: age::DecryptError) -> OpenError {
    use age::DecryptError as D;
    match e {
        D::InvalidHeader | D::InvalidMac => OpenError::CorruptHeader,
        D::UnknownFormat => OpenError::UnknownVersion,
        D::NoMatchingKeys | D::KeyDecryptionFailed => OpenError::NoMatchingIdentity,
        D::ExcessiveWork { .. } => OpenError::Passphrase,
        D::DecryptionFailed => OpenError::BadPayload,
        D::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => OpenError::Truncated,
        D::Io(io) => OpenError::Io(io),
        // The enum is non-exhaustive; a future variant is still a refusal, with age's words.
        other => OpenError::Io(std::io::Error::other(other.to_string())),
    }
}

fn payload_error(e: std::io::Error) -> OpenError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        OpenError::Truncated
    } else {
        OpenError::BadPayload
    }
}

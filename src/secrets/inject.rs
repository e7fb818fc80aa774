//! Runtime injection (`telbase exec`): which environment values count as sealed, the two
//! forms a sealed value takes in an environment, and opening all of them before a command
//! starts. The command line (`cli::exec`) only reads the environment and `exec`s.
//!
//! The two forms:
//!
//! - **armored**: the text `telbase secrets seal` prints (`-----BEGIN AGE ENCRYPTED FILE-----`
//!   … `-----END AGE ENCRYPTED FILE-----`, several lines), recognised after any leading
//!   whitespace;
//! - **single-line**: `age:` followed by the standard base64 (padding optional) of the
//!   binary age file, for places where a value cannot span lines (Dockerfile `ENV`, `.env`
//!   files, most PaaS settings pages). Base64 of the binary file rather than the armor with
//!   its newlines written as `\n`: it has no spaces, quotes or backslashes for a Dockerfile,
//!   a shell or a dotenv parser to reinterpret (Docker's `ENV` and many dotenv parsers treat
//!   a backslash as an escape), it is about a fifth shorter than the armor, and the Go tools
//!   make it too:
//!   `printf 'age:%s' "$(age -r RECIPIENT < value | base64 -w0)"`.
//!
//! Since every age v1 file begins with `age-encryption.org/`, every single-line value begins
//! with `age:YWdlLWVuY3J5cHRpb24ub3Jn` (that prefix in base64, exactly 24 characters). That
//! whole mark, not just `age:`, is what makes a value count as sealed, so a plain value such
//! as `age:42` is never mistaken for one; and a value that carries the mark but fails to open
//! is an error, never passed on as if it were plain, because handing the command its
//! ciphertext as a password fails far from the cause.

use std::ffi::{OsStr, OsString};

use base64::Engine as _;
use zeroize::Zeroizing;

use super::unwrap::Keys;
use super::{ARMOR_BEGIN, OpenError, SealError};

/// What starts a single-line sealed value.
pub const SINGLE_LINE_PREFIX: &str = "age:";

/// `age:` + base64(`age-encryption.org`): the start of every single-line sealed value.
const SINGLE_LINE_MARK: &[u8] = b"age:YWdlLWVuY3J5cHRpb24ub3Jn";

/// Standard alphabet; padding may be present or not (some tools strip it).
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// How an environment value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// The multi-line ASCII armor.
    Armored,
    /// `age:` + base64 of the binary age file.
    SingleLine,
    /// Not sealed: passed on untouched.
    Plain,
}

/// The form of a value (see the module documentation for the rules).
pub fn form(value: &[u8]) -> Form {
    let start = value
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(value.len());
    if value[start..].starts_with(ARMOR_BEGIN) {
        Form::Armored
    } else if value.starts_with(SINGLE_LINE_MARK) {
        Form::SingleLine
    } else {
        Form::Plain
    }
}

/// Why one sealed value could not be opened. Never includes the value or its plaintext.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    #[error("the single-line form is damaged: the text after `age:` is not standard base64 ({0})")]
    Base64(String),
    #[error(
        "an armored age value on a single line: the armored form needs its line breaks (were they written as `\\n`?); where a value cannot span lines, use the single-line form that `telbase secrets seal --single-line` prints"
    )]
    ArmorOnOneLine,
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("the plaintext contains a NUL byte, which no environment variable can hold")]
    Nul,
}

/// The single-line form of a binary age file.
pub fn to_single_line(binary: &[u8]) -> String {
    let mut out = String::with_capacity(SINGLE_LINE_PREFIX.len() + binary.len().div_ceil(3) * 4);
    out.push_str(SINGLE_LINE_PREFIX);
    base64::engine::general_purpose::STANDARD.encode_string(binary, &mut out);
    out
}

/// Seals `plaintext` to every recipient in the single-line form (no trailing newline).
pub fn seal_single_line(
    plaintext: &[u8],
    recipients: &[age::x25519::Recipient],
) -> Result<String, SealError> {
    use std::io::Write as _;
    if recipients.is_empty() {
        return Err(SealError::NoRecipients);
    }
    let encryptor =
        age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|_| SealError::NoRecipients)?;
    let mut binary = Vec::new();
    let mut writer = encryptor.wrap_output(&mut binary)?;
    writer.write_all(plaintext)?;
    writer.finish()?;
    Ok(to_single_line(&binary))
}

/// The binary age file inside a single-line value.
fn decode_single_line(value: &[u8]) -> Result<Vec<u8>, ValueError> {
    let body = value
        .strip_prefix(SINGLE_LINE_PREFIX.as_bytes())
        .unwrap_or(value);
    // A trailing newline or carriage return (a CRLF `.env` file) is not part of the value.
    let end = body
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    BASE64
        .decode(&body[..end])
        .map_err(|e| ValueError::Base64(e.to_string()))
}

/// Opens an age value in any form Telbase reads: single-line, armored or binary (what
/// `telbase secrets reveal` accepts). The plaintext is zeroized when dropped.
pub fn open_any(
    value: &[u8],
    identities: &[age::x25519::Identity],
) -> Result<Zeroizing<Vec<u8>>, ValueError> {
    open_any_with(value, &Keys::new(identities))
}

fn open_any_with(value: &[u8], keys: &Keys<'_>) -> Result<Zeroizing<Vec<u8>>, ValueError> {
    match form(value) {
        Form::SingleLine => Ok(super::open_with(&decode_single_line(value)?, keys)?),
        Form::Armored if !value.contains(&b'\n') => Err(ValueError::ArmorOnOneLine),
        _ => Ok(super::open_with(value, keys)?),
    }
}

/// Opens one environment value that [`form`] found sealed, checking that the plaintext can
/// be an environment value.
pub fn open_value(
    value: &[u8],
    identities: &[age::x25519::Identity],
) -> Result<Zeroizing<Vec<u8>>, ValueError> {
    open_value_with(value, &Keys::new(identities))
}

fn open_value_with(value: &[u8], keys: &Keys<'_>) -> Result<Zeroizing<Vec<u8>>, ValueError> {
    if form(value) == Form::Plain {
        return Err(ValueError::Open(OpenError::NotAge));
    }
    let plain = open_any_with(value, keys)?;
    if plain.contains(&0) {
        return Err(ValueError::Nul);
    }
    Ok(plain)
}

/// One opened variable.
pub struct Opened {
    pub name: OsString,
    pub plaintext: Zeroizing<Vec<u8>>,
}

/// One variable that did not open: its name (lossily as text) and why, never its value.
#[derive(Debug, thiserror::Error)]
#[error("{name}: {reason}")]
pub struct VarError {
    pub name: String,
    pub reason: ValueError,
}

/// The variables whose values are sealed, in name order, leaving out `skip` (the identity
/// variable, which is a key, not a sealed value).
pub fn sealed_vars(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
    skip: &OsStr,
) -> Vec<(OsString, OsString)> {
    let mut out: Vec<_> = vars
        .into_iter()
        .filter(|(name, value)| name != skip && form(value.as_encoded_bytes()) != Form::Plain)
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Below this many values a second thread costs more than it saves (spawning one is tens of
/// microseconds; one open is one X25519 agreement, about as long).
const PARALLEL_FROM: usize = 8;

/// Opens every sealed variable; all failures are reported together (in name order) so one
/// round of fixes suffices. Uses up to `threads` threads (see [`open_vars`]).
pub fn open_vars_in(
    sealed: &[(OsString, OsString)],
    identities: &[age::x25519::Identity],
    threads: usize,
) -> Result<Vec<Opened>, Vec<VarError>> {
    // The identities are prepared once (a public key each), not once per value.
    let keys = Keys::new(identities);
    let open_one = |(name, value): &(OsString, OsString)| {
        open_value_with(value.as_encoded_bytes(), &keys)
            .map(|plaintext| Opened {
                name: name.clone(),
                plaintext,
            })
            .map_err(|reason| VarError {
                name: name.to_string_lossy().into_owned(),
                reason,
            })
    };
    let threads = threads.clamp(1, sealed.len().max(1));
    let results: Vec<Result<Opened, VarError>> = if threads == 1 || sealed.len() < PARALLEL_FROM {
        sealed.iter().map(open_one).collect()
    } else {
        // Values are handed out one at a time from a shared counter rather than in fixed
        // shares: a thread that starts late (a new thread in a fresh process can wait for a
        // sleeping core) takes fewer, and the calling thread never idles waiting for it.
        let next = std::sync::atomic::AtomicUsize::new(0);
        let work = || {
            let mut mine = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(item) = sealed.get(i) else {
                    return mine;
                };
                mine.push((i, open_one(item)));
            }
        };
        let mut all: Vec<(usize, Result<Opened, VarError>)> = std::thread::scope(|s| {
            let handles: Vec<_> = (1..threads).map(|_| s.spawn(work)).collect();
            let mut all = work();
            for h in handles {
                // A panic in a worker is a bug in the age library; propagate it as one.
                all.extend(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
            }
            all
        });
        // Back in name order, so errors are reported the same way whatever the threads did.
        all.sort_by_key(|(i, _)| *i);
        all.into_iter().map(|(_, r)| r).collect()
    };
    let mut opened = Vec::with_capacity(results.len());
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(o) => opened.push(o),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(opened)
    } else {
        Err(errors)
    }
}

/// [`open_vars_in`] with one thread per available core.
pub fn open_vars(
    sealed: &[(OsString, OsString)],
    identities: &[age::x25519::Identity],
) -> Result<Vec<Opened>, Vec<VarError>> {
    // Asking for the core count reads cgroup files: not worth it when one thread will do.
    let cores = if sealed.len() < PARALLEL_FROM {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    };
    open_vars_in(sealed, identities, cores)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> (age::x25519::Identity, age::x25519::Recipient) {
        let id = age::x25519::Identity::generate();
        let r = id.to_public();
        (id, r)
    }

    fn armored(plain: &[u8], r: &age::x25519::Recipient) -> String {
        let mut out = Vec::new();
        super::super::seal(plain, std::slice::from_ref(r), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn forms_are_told_apart() {
        let (_, r) = key();
        assert_eq!(form(armored(b"x", &r).as_bytes()), Form::Armored);
        assert_eq!(
            form(b"\n  -----BEGIN AGE ENCRYPTED FILE-----\n"),
            Form::Armored
        );
        let single = seal_single_line(b"x", std::slice::from_ref(&r)).unwrap();
        assert!(
            single.starts_with("age:YWdlLWVuY3J5cHRpb24ub3Jn"),
            "{single}"
        );
        assert_eq!(form(single.as_bytes()), Form::SingleLine);
        for plain in [
            &b""[..],
            b"age:42",
            b"age:",
            b"postgres://u:p@h/db",
            b"-----BEGIN PGP MESSAGE-----",
        ] {
            assert_eq!(
                form(plain),
                Form::Plain,
                "{}",
                String::from_utf8_lossy(plain)
            );
        }
    }

    #[test]
    fn both_forms_open_and_padding_and_trailing_newline_do_not_matter() {
        let (id, r) = key();
        let ids = std::slice::from_ref(&id);
        let single = seal_single_line(b"hunter2", std::slice::from_ref(&r)).unwrap();
        assert_eq!(&open_value(single.as_bytes(), ids).unwrap()[..], b"hunter2");
        let unpadded = single.trim_end_matches('=');
        assert_eq!(
            &open_value(unpadded.as_bytes(), ids).unwrap()[..],
            b"hunter2"
        );
        let crlf = format!("{single}\r\n");
        assert_eq!(&open_value(crlf.as_bytes(), ids).unwrap()[..], b"hunter2");
        let a = armored(b"multi\nline", &r);
        assert_eq!(&open_value(a.as_bytes(), ids).unwrap()[..], b"multi\nline");
    }

    #[test]
    fn damaged_values_fail_with_a_reason_and_without_the_value() {
        let (id, r) = key();
        let (other, _) = key();
        let single = seal_single_line(b"hunter2", std::slice::from_ref(&r)).unwrap();
        let wrong = open_value(single.as_bytes(), std::slice::from_ref(&other)).unwrap_err();
        assert!(matches!(
            wrong,
            ValueError::Open(OpenError::NoMatchingIdentity)
        ));
        let ids = std::slice::from_ref(&id);
        let bad = format!("{}!{}", &single[..40], &single[41..]);
        assert!(matches!(
            open_value(bad.as_bytes(), ids),
            Err(ValueError::Base64(_))
        ));
        let short = &single[..single.len() - 8];
        let e = open_value(short.as_bytes(), ids).unwrap_err();
        assert!(
            matches!(
                e,
                ValueError::Open(OpenError::Truncated | OpenError::BadPayload)
            ),
            "{e}"
        );
        let one_line = armored(b"x", &r).replace('\n', "\\n");
        assert!(matches!(
            open_value(one_line.as_bytes(), ids),
            Err(ValueError::ArmorOnOneLine)
        ));
        let nul = seal_single_line(b"a\0b", std::slice::from_ref(&r)).unwrap();
        assert!(matches!(
            open_value(nul.as_bytes(), ids),
            Err(ValueError::Nul)
        ));
    }

    #[test]
    fn every_failure_is_reported_by_name_in_any_thread_count() {
        let (id, r) = key();
        let (_, other) = key();
        let mut vars = vec![(OsString::from("TELBASE_IDENTITY"), OsString::from("x"))];
        for i in 0..20 {
            let to = if i % 7 == 3 { &other } else { &r };
            let v = seal_single_line(format!("v{i}").as_bytes(), std::slice::from_ref(to));
            vars.push((format!("S{i:02}").into(), v.unwrap().into()));
            vars.push((format!("P{i:02}").into(), format!("plain{i}").into()));
        }
        // The identity variable is never treated as a value, even when it looks sealed.
        vars[0].1 = vars[1].1.clone();
        let sealed = sealed_vars(vars, OsStr::new("TELBASE_IDENTITY"));
        assert_eq!(sealed.len(), 20);
        for threads in [1, 2, 3] {
            let errs = open_vars_in(&sealed, std::slice::from_ref(&id), threads)
                .err()
                .unwrap();
            let names: Vec<_> = errs.iter().map(|e| e.name.as_str()).collect();
            assert_eq!(names, ["S03", "S10", "S17"], "threads {threads}");
            assert!(errs[0].to_string().starts_with("S03: no identity matches"));
        }
        let good: Vec<_> = sealed
            .into_iter()
            .filter(|(n, _)| !["S03", "S10", "S17"].contains(&n.to_str().unwrap()))
            .collect();
        for threads in [1, 2] {
            let opened = open_vars_in(&good, std::slice::from_ref(&id), threads).unwrap();
            assert_eq!(opened.len(), 17);
            for o in &opened {
                let i: usize = o.name.to_str().unwrap()[1..].parse().unwrap();
                assert_eq!(&o.plaintext[..], format!("v{i}").as_bytes());
            }
        }
    }
}

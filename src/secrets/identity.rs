//! Where the age identity comes from, for every command that opens sealed values (`telbase
//! exec`, `secrets reveal`/`recipient`, `apply`): one precedence, one set of messages.
//!
//! In order: `--identity FILE` when the command has that flag and it is given; else
//! `TELBASE_IDENTITY`, the identity file's *contents*, for containers whose platform injects
//! secrets as environment variables rather than files; else `TELBASE_IDENTITY_FILE`, a path.
//! A variable that is set is used even when empty (an empty `TELBASE_IDENTITY` is a
//! platform that failed to fill it in, which deserves an error, not a silent fall-through to
//! another key). The key text is held in zeroizing buffers while it is parsed.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::IdentityError;

/// The variable holding the identity file's contents.
pub const ENV_IDENTITY: &str = "TELBASE_IDENTITY";
/// The variable holding the identity file's path.
pub const ENV_IDENTITY_FILE: &str = "TELBASE_IDENTITY_FILE";

/// Where the identities were found; its `Display` names it in messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `--identity FILE`.
    Flag(PathBuf),
    /// `TELBASE_IDENTITY` (contents).
    Env,
    /// `TELBASE_IDENTITY_FILE` (a path).
    EnvFile(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag(p) => write!(f, "{}", p.display()),
            Source::Env => f.write_str(ENV_IDENTITY),
            Source::EnvFile(p) => write!(f, "{ENV_IDENTITY_FILE} {}", p.display()),
        }
    }
}

/// The identities of one source.
pub struct Loaded {
    pub identities: Vec<age::x25519::Identity>,
    pub source: Source,
}

/// Why the chosen identity source could not be used. Messages name the source (a path or a
/// variable name), never its contents.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {source_name}: {error}")]
    Read {
        source_name: String,
        error: std::io::Error,
    },
    #[error("{source_name}: {error}")]
    Parse {
        source_name: String,
        error: IdentityError,
    },
    #[error("{ENV_IDENTITY} is not UTF-8 text (it should hold an AGE-SECRET-KEY-1… line)")]
    NotUtf8,
}

/// What to tell someone who has no identity configured (the end of a sentence).
pub const HOW_TO_NAME_ONE: &str = "pass --identity FILE, or set TELBASE_IDENTITY (the identity itself) or TELBASE_IDENTITY_FILE (its path); create one with `telbase secrets keygen --output FILE`";

/// The source the precedence picks, given the flag and a way to read the environment
/// (a parameter so tests need not mutate the process environment).
pub fn choose(flag: Option<&Path>, env: impl Fn(&str) -> Option<OsString>) -> Option<Source> {
    if let Some(p) = flag {
        return Some(Source::Flag(p.to_path_buf()));
    }
    if env(ENV_IDENTITY).is_some() {
        return Some(Source::Env);
    }
    env(ENV_IDENTITY_FILE).map(|p| Source::EnvFile(PathBuf::from(p)))
}

/// Loads the identities the precedence picks; `Ok(None)` when no source is configured.
pub fn load_with(
    flag: Option<&Path>,
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<Option<Loaded>, LoadError> {
    let Some(source) = choose(flag, &env) else {
        return Ok(None);
    };
    let text: Zeroizing<String> = match &source {
        Source::Env => {
            let raw = Zeroizing::new(env(ENV_IDENTITY).unwrap_or_default().into_encoded_bytes());
            let text = std::str::from_utf8(&raw).map_err(|_| LoadError::NotUtf8)?;
            Zeroizing::new(text.to_owned())
        }
        Source::Flag(p) | Source::EnvFile(p) => read_text(p).map_err(|error| LoadError::Read {
            source_name: source.to_string(),
            error,
        })?,
    };
    let identities = super::parse_identities(&text).map_err(|error| LoadError::Parse {
        source_name: source.to_string(),
        error,
    })?;
    Ok(Some(Loaded { identities, source }))
}

/// [`load_with`] over the process environment.
pub fn load(flag: Option<&Path>) -> Result<Option<Loaded>, LoadError> {
    load_with(flag, |name| std::env::var_os(name))
}

/// An identity file's text, read into a buffer that is wiped when dropped (and grows without
/// leaving copies behind: `read_plaintext`).
fn read_text(path: &Path) -> std::io::Result<Zeroizing<String>> {
    let file = std::fs::File::open(path)?;
    let bytes = super::read_plaintext(file).map_err(|e| match e {
        super::ReadError::Io(io) => io,
        super::ReadError::TooLarge => std::io::Error::other("too large for an identity file"),
    })?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))?;
    Ok(Zeroizing::new(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret as _;

    fn key() -> (age::x25519::Identity, String) {
        let id = age::x25519::Identity::generate();
        let text = id.to_string().expose_secret().to_owned();
        (id, text)
    }

    #[test]
    fn flag_beats_contents_beats_path() {
        let env = |n: &str| match n {
            ENV_IDENTITY => Some(OsString::from("x")),
            ENV_IDENTITY_FILE => Some(OsString::from("/f")),
            _ => None,
        };
        assert_eq!(
            choose(Some(Path::new("k")), env),
            Some(Source::Flag("k".into()))
        );
        assert_eq!(choose(None, env), Some(Source::Env));
        let only_file = |n: &str| (n == ENV_IDENTITY_FILE).then(|| OsString::from("/f"));
        assert_eq!(choose(None, only_file), Some(Source::EnvFile("/f".into())));
        assert_eq!(choose(None, |_| None), None);
    }

    #[test]
    fn contents_are_parsed_and_errors_name_the_variable_not_the_value() {
        let (id, text) = key();
        let loaded = load_with(None, |n| (n == ENV_IDENTITY).then(|| text.clone().into()))
            .unwrap()
            .unwrap();
        assert_eq!(loaded.source, Source::Env);
        assert_eq!(
            loaded.identities[0].to_public().to_string(),
            id.to_public().to_string()
        );

        let broken = format!("{}x", &text[..text.len() - 3]);
        let err = load_with(None, |n| (n == ENV_IDENTITY).then(|| broken.clone().into()))
            .err()
            .unwrap()
            .to_string();
        assert!(err.starts_with("TELBASE_IDENTITY: line 1"), "{err}");
        assert!(!err.contains(&broken[20..]), "{err}");

        let empty = load_with(None, |n| (n == ENV_IDENTITY).then(OsString::new))
            .err()
            .unwrap()
            .to_string();
        assert!(empty.contains("no AGE-SECRET-KEY-1"), "{empty}");
    }

    #[test]
    fn an_unreadable_file_is_named_with_its_variable() {
        let err = load_with(None, |n| {
            (n == ENV_IDENTITY_FILE).then(|| OsString::from("no-such-dir/telbase-key"))
        })
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.starts_with("cannot read TELBASE_IDENTITY_FILE no-such-dir/telbase-key: "),
            "{err}"
        );
    }
}

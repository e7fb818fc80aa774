//! Workflow commands: the `::name key=value,…::data` lines a step prints for the runner to
//! act on (annotations, notices, masks). Values are escaped as the runner unescapes them
//! (`%`, CR and LF everywhere; `:` and `,` also in properties), so text that came from a
//! config file, a provider or a secret can neither end a command early nor start another.

pub use crate::config::diag::{escape_data, escape_property};

/// How loud an annotation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Error,
    Warning,
    Notice,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warning => "warning",
            Level::Notice => "notice",
        }
    }
}

/// Where an annotation points: a file (relative to the workspace) and, when known, a line and
/// column (1-based).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Place {
    pub file: Option<String>,
    pub line: Option<u32>,
    pub col: Option<u32>,
}

/// One annotation line, without the trailing newline.
pub fn annotation(level: Level, place: &Place, title: Option<&str>, message: &str) -> String {
    let mut props: Vec<String> = Vec::new();
    if let Some(f) = &place.file {
        props.push(format!("file={}", escape_property(f)));
    }
    if let Some(l) = place.line {
        props.push(format!("line={l}"));
    }
    if let Some(c) = place.col {
        props.push(format!("col={c}"));
    }
    if let Some(t) = title {
        props.push(format!("title={}", escape_property(t)));
    }
    let sep = if props.is_empty() { "" } else { " " };
    format!(
        "::{}{sep}{}::{}",
        level.name(),
        props.join(","),
        escape_data(message)
    )
}

/// The `::add-mask::` lines for a secret value. A one-line value is registered whole,
/// whatever it is. A multi-line value is registered line by line, since the runner masks
/// each registered string within a log line and a multi-line value is printed line by
/// line; lines that carry no secret are left out, because a registered `{` or
/// `-----BEGIN PRIVATE KEY-----` would be starred out of every later line of the log (JSON
/// braces, PEM armour, anything under four characters or without a letter or digit).
///
/// Printing `::add-mask::VALUE` is the one sanctioned way a step tells the runner about a
/// value it learned at run time: the runner consumes the line (it is never echoed, even
/// with step debugging on), registers the value, and replaces it with `***` in every later
/// line of the log. So the value appears only in this command, before anything else could
/// print it, and nowhere else.
pub fn add_mask_lines(value: &str) -> Vec<String> {
    let lines: Vec<&str> = value
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.trim().is_empty())
        .collect();
    if lines.len() == 1 {
        return vec![format!("::add-mask::{}", escape_data(lines[0]))];
    }
    lines
        .into_iter()
        .filter(|l| carries_a_secret(l))
        .map(|l| format!("::add-mask::{}", escape_data(l)))
        .collect()
}

/// Whether one line of a multi-line secret is worth masking (see [`add_mask_lines`]).
fn carries_a_secret(line: &str) -> bool {
    let t = line.trim();
    t.chars().count() >= 4
        && !(t.starts_with("-----") && t.ends_with("-----"))
        && t.chars().any(char::is_alphanumeric)
}

/// The inverse of the runner's escaping of command data, for tests that read our output
/// as the runner does.
pub fn unescape_data(s: &str) -> String {
    s.replace("%0D", "\r")
        .replace("%0A", "\n")
        .replace("%25", "%")
}

/// The inverse of the property escaping.
pub fn unescape_property(s: &str) -> String {
    s.replace("%0D", "\r")
        .replace("%0A", "\n")
        .replace("%3A", ":")
        .replace("%2C", ",")
        .replace("%25", "%")
}

/// A workflow command as the runner reads it: name, properties and data (all unescaped).
pub type Parsed = (String, Vec<(String, String)>, String);

/// A workflow command parsed back from one line, as the runner reads it. `None` when the
/// line is not a command.
pub fn parse_command(line: &str) -> Option<Parsed> {
    let rest = line.strip_prefix("::")?;
    let end = rest.find("::")?;
    let (head, data) = (&rest[..end], &rest[end + 2..]);
    let (name, props) = match head.split_once(' ') {
        Some((n, p)) => (n, p),
        None => (head, ""),
    };
    if name.is_empty() {
        return None;
    }
    let props = props
        .split(',')
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_owned(), unescape_property(v)))
        .collect();
    Some((name.to_owned(), props, unescape_data(data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_annotation_has_its_place_and_title() {
        let a = annotation(
            Level::Error,
            &Place {
                file: Some("infra/telbase.yaml".into()),
                line: Some(3),
                col: Some(5),
            },
            Some("telbase E0101"),
            "unknown key `x`",
        );
        assert_eq!(
            a,
            "::error file=infra/telbase.yaml,line=3,col=5,title=telbase E0101::unknown key `x`"
        );
        assert_eq!(
            annotation(Level::Notice, &Place::default(), None, "hi"),
            "::notice::hi"
        );
    }

    #[test]
    fn hostile_text_cannot_forge_a_command() {
        let a = annotation(
            Level::Warning,
            &Place {
                file: Some("a,line=1:b".into()),
                ..Place::default()
            },
            Some("x::y"),
            "done\n::error::forged 100%",
        );
        assert_eq!(a.lines().count(), 1);
        let (name, props, data) = parse_command(&a).unwrap();
        assert_eq!(name, "warning");
        assert_eq!(props[0], ("file".into(), "a,line=1:b".into()));
        assert_eq!(props[1], ("title".into(), "x::y".into()));
        assert_eq!(data, "done\n::error::forged 100%");
    }

    #[test]
    fn masks_cover_each_line_of_a_value() {
        assert_eq!(
            add_mask_lines("line one\r\n\nline%two\n"),
            vec!["::add-mask::line one", "::add-mask::line%25two"]
        );
        assert!(add_mask_lines("  \n").is_empty());
        // One line is masked whole, however short; structure of a multi-line one is not.
        assert_eq!(add_mask_lines("ab\n"), vec!["::add-mask::ab"]);
        let pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEF\n-----END PRIVATE KEY-----\n";
        assert_eq!(
            add_mask_lines(pem),
            vec!["::add-mask::MIIEvQIBADANBgkqhkiG9w0BAQEF"]
        );
        let json = "{\n  \"key\": \"s3cr3t-value\"\n}";
        assert_eq!(
            add_mask_lines(json),
            vec!["::add-mask::  \"key\": \"s3cr3t-value\""]
        );
    }

    proptest::proptest! {
        /// Whatever the file, title and message, an annotation is one line that the runner
        /// reads back as exactly one command of the intended kind with the same texts.
        #[test]
        fn annotations_round_trip(
            file in "(?s).{0,60}",
            title in "(?s).{0,40}",
            message in "(?s).{0,200}",
            line in 1u32..10_000,
        ) {
            let a = annotation(
                Level::Error,
                &Place { file: Some(file.clone()), line: Some(line), col: Some(1) },
                Some(&title),
                &message,
            );
            proptest::prop_assert!(!a.contains('\n') && !a.contains('\r'));
            let (name, props, data) = parse_command(&a).unwrap();
            proptest::prop_assert_eq!(name, "error");
            proptest::prop_assert_eq!(props, vec![
                ("file".to_owned(), file),
                ("line".to_owned(), line.to_string()),
                ("col".to_owned(), "1".to_owned()),
                ("title".to_owned(), title),
            ]);
            proptest::prop_assert_eq!(data, message);
        }

        /// A mask line is one command per line of the value, each reading back as that line.
        #[test]
        fn masks_round_trip(value in "(?s).{0,200}") {
            let masks = add_mask_lines(&value);
            let lines: Vec<&str> = value
                .split('\n')
                .map(|l| l.strip_suffix('\r').unwrap_or(l))
                .filter(|l| !l.trim().is_empty())
                .collect();
            let mut seen = Vec::new();
            for m in &masks {
                // One command per line, read back by the runner as a line of the value.
                proptest::prop_assert!(!m.contains('\n'));
                let (name, _, data) = parse_command(m).unwrap();
                proptest::prop_assert_eq!(name, "add-mask");
                proptest::prop_assert!(lines.contains(&data.as_str()), "{data:?}");
                seen.push(data);
            }
            // Nothing that could be a secret is left unmasked: a lone line always, and
            // every line with eight or more letters or digits but PEM armour.
            for l in &lines {
                let t = l.trim();
                let armour = t.starts_with("-----") && t.ends_with("-----");
                let strong = !armour && l.chars().filter(|c| c.is_alphanumeric()).count() >= 8;
                if lines.len() == 1 || strong {
                    proptest::prop_assert!(seen.iter().any(|s| s == l), "{l:?} unmasked");
                }
            }
        }
    }
}

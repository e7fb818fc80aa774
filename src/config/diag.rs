//! Diagnostics: what is wrong in a config file, where, and how to fix it.
//!
//! One `Diagnostic` per problem, carrying a stable code, a 1-based line and column, the length
//! of the offending text, a message and an optional hint. Rendering follows compilers
//! (`file:line:col: error[CODE]: message`, the source line, a caret), JSON for tools, and
//! GitHub workflow annotations. Everything echoed back from the user's file goes through
//! `sanitize`, because a hostile file must not be able to write terminal escape sequences or
//! forge annotation commands through our output.

use std::fmt::Write as _;

use serde::Serialize;

/// How bad a diagnostic is. Only errors make a file invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// Stable diagnostic codes. A number never changes meaning once released; `docs/configuration.md`
/// lists them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Code {
    /// The file could not be read.
    E0001,
    /// The file is larger than Telbase accepts.
    E0002,
    /// The file is not UTF-8 text.
    E0003,
    /// YAML syntax error.
    E0004,
    /// A key appears twice in one map.
    E0005,
    /// The document exceeds a safety budget (nesting, aliases, nodes).
    E0006,
    /// More than one YAML document in the file.
    E0007,
    /// The file is empty or is not a map at the top level.
    E0008,
    /// A map key that is not a string.
    E0009,
    /// Unknown key.
    E0101,
    /// Missing required key.
    E0102,
    /// Wrong type of value.
    E0103,
    /// Value not among the allowed ones.
    E0104,
    /// Value not in the expected format.
    E0105,
    /// Number or length out of range.
    E0106,
    /// Unsupported `version`.
    E0107,
    /// A reference to an access policy that does not exist.
    E0201,
    /// A `from:` reference to a resource or output that does not exist.
    E0202,
    /// References form a cycle.
    E0203,
    /// A domain outside `edge.zone`, or used twice.
    E0204,
    /// A provider that cannot run this engine or app kind.
    E0205,
    /// A setting that does not apply to this kind of app or database.
    E0206,
    /// A name the provider would reject once Telbase prefixes it.
    E0207,
    /// An invalid cron expression.
    E0208,
    /// A value the target provider does not allow (units, limits, combinations).
    E0209,
    /// A `sealed` value that is not a well-formed age message.
    E0210,
    /// An environment variable name the platform reserves, or an env var defined twice.
    E0211,
    /// A path that leaves the repository.
    E0212,
    /// The security baseline cannot be weakened.
    E0213,
    /// App must say `framework` or `runtime` (exactly one).
    E0214,
    /// An `env_file` that cannot be used: missing, not a SOPS file with age recipients, or
    /// not a flat map (or Kubernetes Secret) of valid environment variable names.
    E0215,
    /// Unknown region or location (may be new at the provider).
    W0301,
    /// A plain value that looks like a credential.
    W0302,
    /// A drift schedule more frequent than providers' rate limits comfortably allow.
    W0303,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::E0001 => "E0001",
            Code::E0002 => "E0002",
            Code::E0003 => "E0003",
            Code::E0004 => "E0004",
            Code::E0005 => "E0005",
            Code::E0006 => "E0006",
            Code::E0007 => "E0007",
            Code::E0008 => "E0008",
            Code::E0009 => "E0009",
            Code::E0101 => "E0101",
            Code::E0102 => "E0102",
            Code::E0103 => "E0103",
            Code::E0104 => "E0104",
            Code::E0105 => "E0105",
            Code::E0106 => "E0106",
            Code::E0107 => "E0107",
            Code::E0201 => "E0201",
            Code::E0202 => "E0202",
            Code::E0203 => "E0203",
            Code::E0204 => "E0204",
            Code::E0205 => "E0205",
            Code::E0206 => "E0206",
            Code::E0207 => "E0207",
            Code::E0208 => "E0208",
            Code::E0209 => "E0209",
            Code::E0210 => "E0210",
            Code::E0211 => "E0211",
            Code::E0212 => "E0212",
            Code::E0213 => "E0213",
            Code::E0214 => "E0214",
            Code::E0215 => "E0215",
            Code::W0301 => "W0301",
            Code::W0302 => "W0302",
            Code::W0303 => "W0303",
        }
    }

    pub fn severity(self) -> Severity {
        if self.as_str().starts_with('W') {
            Severity::Warning
        } else {
            Severity::Error
        }
    }
}

/// A position in the source: 1-based line and column (in characters), and the length in
/// characters of the text it covers (at least 1 for rendering).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
    pub len: u32,
}

impl Pos {
    pub const START: Pos = Pos {
        line: 1,
        column: 1,
        len: 1,
    };
}

/// One problem in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub code: Code,
    pub pos: Pos,
    pub message: String,
    pub hint: Option<String>,
}

impl Diagnostic {
    /// Messages and hints quote the file; control characters in them are escaped here, at
    /// the one place every diagnostic is made, so no message can carry them out.
    pub fn new(code: Code, pos: Pos, message: impl Into<String>) -> Self {
        Self {
            code,
            pos,
            message: escape_controls(message.into()),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.set_hint(hint);
        self
    }

    /// Set the hint of a diagnostic already pushed to a list.
    pub fn set_hint(&mut self, hint: impl Into<String>) {
        self.hint = Some(escape_controls(hint.into()));
    }

    pub fn severity(&self) -> Severity {
        self.code.severity()
    }

    pub fn is_error(&self) -> bool {
        self.severity() == Severity::Error
    }
}

/// Sort diagnostics by position then code, and drop exact duplicates (two layers can notice
/// the same thing; the user should read it once).
pub fn normalize(diags: &mut Vec<Diagnostic>) {
    diags.sort_by(|a, b| {
        (a.pos.line, a.pos.column, a.code, &a.message).cmp(&(
            b.pos.line,
            b.pos.column,
            b.code,
            &b.message,
        ))
    });
    diags.dedup();
}

/// Replace control characters (terminal escapes, newlines inside a message) with visible
/// escapes, and cap the length of anything quoted from the user's file.
pub fn sanitize(text: &str) -> String {
    sanitize_to(text, 200)
}

/// `sanitize` with another length limit, in characters (provider messages are longer).
pub fn sanitize_to(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max + 8));
    for (n, ch) in text.chars().enumerate() {
        if n == max {
            out.push('…');
            break;
        }
        if is_unsafe(ch) {
            let _ = write!(out, "{}", ch.escape_default());
        } else {
            out.push(ch);
        }
    }
    out
}

fn escape_controls(text: String) -> String {
    if text.chars().any(is_unsafe) {
        text.chars()
            .map(|c| {
                if is_unsafe(c) {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect()
    } else {
        text
    }
}

fn is_unsafe(c: char) -> bool {
    c.is_control() || c == '\u{feff}' || c == '\u{2028}' || c == '\u{2029}'
}

/// Quote a value from the user's file for a message.
pub fn quote(text: &str) -> String {
    format!("`{}`", sanitize(text))
}

/// Render diagnostics for one file as compiler-style text with source excerpts.
pub fn render_text(file: &str, source: Option<&str>, diags: &[Diagnostic]) -> String {
    let mut out = String::new();
    let file = sanitize(file);
    let lines: Vec<&str> = source.map(|s| s.lines().collect()).unwrap_or_default();
    for d in diags {
        let sev = match d.severity() {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let _ = writeln!(
            out,
            "{file}:{}:{}: {sev}[{}]: {}",
            d.pos.line,
            d.pos.column,
            d.code.as_str(),
            d.message
        );
        if d.code == Code::W0302 {
            // The line holds what looks like a credential: do not copy it into logs.
            let _ = writeln!(
                out,
                "  | (source line not shown: it appears to contain a credential)"
            );
        } else if let Some(line) = lines.get((d.pos.line as usize).wrapping_sub(1)) {
            let number = d.pos.line.to_string();
            let pad = " ".repeat(number.len());
            // Quote the line as the user wrote it (tabs shown as spaces so the caret lines
            // up), cut to a sane width so a minified megabyte line does not flood a terminal.
            let shown: String = line
                .trim_start_matches('\u{feff}')
                .chars()
                .take(160)
                .map(|c| if c == '\t' { ' ' } else { c })
                .collect();
            let shown = sanitize_line(&shown);
            let col = d.pos.column.max(1) as usize;
            let caret_len =
                (d.pos.len.max(1) as usize).min(160usize.saturating_sub(col - 1).max(1));
            let _ = writeln!(out, "{pad} |");
            let _ = writeln!(out, "{number} | {shown}");
            if col <= 161 {
                let _ = writeln!(
                    out,
                    "{pad} | {}{}",
                    " ".repeat(col - 1),
                    "^".repeat(caret_len)
                );
            }
        }
        if let Some(hint) = &d.hint {
            let _ = writeln!(out, "  = hint: {hint}");
        }
        out.push('\n');
    }
    out
}

fn sanitize_line(line: &str) -> String {
    line.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

/// One diagnostic as JSON, for `--format json`.
#[derive(Debug, Serialize)]
pub struct JsonDiagnostic<'a> {
    pub file: &'a str,
    pub line: u32,
    pub column: u32,
    pub code: &'static str,
    pub severity: Severity,
    pub message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<&'a str>,
}

pub fn to_json<'a>(file: &'a str, diags: &'a [Diagnostic]) -> Vec<JsonDiagnostic<'a>> {
    diags
        .iter()
        .map(|d| JsonDiagnostic {
            file,
            line: d.pos.line,
            column: d.pos.column,
            code: d.code.as_str(),
            severity: d.severity(),
            message: &d.message,
            hint: d.hint.as_deref(),
        })
        .collect()
}

/// GitHub workflow commands: `::error file=…,line=…,col=…,title=…::message`. Properties and
/// data are escaped as the Actions runner expects (`%`, CR, LF, and in properties `:` and
/// `,`), so text from the file cannot end the command early or inject another one.
pub fn render_github(file: &str, diags: &[Diagnostic]) -> String {
    let mut out = String::new();
    for d in diags {
        let level = match d.severity() {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let mut message = d.message.clone();
        if let Some(h) = &d.hint {
            message.push_str("\nhint: ");
            message.push_str(h);
        }
        let _ = writeln!(
            out,
            "::{level} file={},line={},col={},title={}::{}",
            escape_property(file),
            d.pos.line,
            d.pos.column,
            escape_property(&format!("telbase {}", d.code.as_str())),
            escape_data(&message)
        );
    }
    out
}

/// Escape workflow-command data as the Actions runner unescapes it (`%`, CR, LF).
pub fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Escape a workflow-command property: the data escapes, plus `:` and `,`.
pub fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_escapes_terminal_sequences() {
        assert_eq!(sanitize("a\u{1b}[31mb"), "a\\u{1b}[31mb");
        assert_eq!(sanitize("x\ny"), "x\\ny");
    }

    #[test]
    fn github_annotations_cannot_be_split() {
        // Construction escapes control characters…
        let made = Diagnostic::new(Code::E0101, Pos::START, "bad\n::error::forged");
        assert_eq!(made.message, "bad\\n::error::forged");
        // …and the renderer escapes on its own too, should a raw newline ever get through.
        let d = Diagnostic {
            message: "bad\n::error::forged".into(),
            ..made
        };
        let out = render_github("a,b:c.yaml", &[d]);
        assert_eq!(out.lines().count(), 1);
        assert!(out.contains("file=a%2Cb%3Ac.yaml"));
        assert!(out.contains("bad%0A::error::forged"));
    }

    #[test]
    fn text_points_a_caret_at_the_column() {
        let d = Diagnostic::new(
            Code::E0101,
            Pos {
                line: 2,
                column: 3,
                len: 4,
            },
            "unknown key",
        );
        let out = render_text("t.yaml", Some("a: 1\n  bxyz: 2\n"), &[d]);
        assert!(out.contains("2 |   bxyz: 2\n  |   ^^^^\n"), "{out}");
    }
}

//! The step's file commands: outputs appended to GITHUB_OUTPUT in the multi-line (heredoc)
//! form, and markdown appended to GITHUB_STEP_SUMMARY within GitHub's size limit.
//!
//! The heredoc form `name<<DELIM\nvalue\nDELIM\n` carries any value, provided DELIM never
//! occurs in it: the delimiter is random (as `@actions/core` makes it) and checked against
//! the value, so no value — a plan summary quoting a file, say — can end its own output
//! early and set another.

use std::io::Write as _;
use std::path::Path;

/// GitHub refuses a step summary larger than 1 MiB (it drops it whole, with an error).
pub const STEP_SUMMARY_LIMIT: usize = 1024 * 1024;

/// Why a file command could not be written.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{what} {path}: {reason}")]
    Write {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error(
        "output name `{0}` cannot be written (it must be non-empty, one line, without `=` or `<<`)"
    )]
    BadName(String),
    #[error("the system random generator failed")]
    Random,
}

/// A fresh delimiter: `ghadelimiter_` and 128 random bits in hex.
fn delimiter() -> Result<String, FileError> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| FileError::Random)?;
    Ok(format!(
        "ghadelimiter_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

/// One output in the heredoc form, ending with a newline.
pub fn heredoc(name: &str, value: &str) -> Result<String, FileError> {
    if name.is_empty()
        || name.contains('=')
        || name.contains("<<")
        || name.chars().any(|c| c.is_control())
    {
        return Err(FileError::BadName(crate::config::diag::sanitize(name)));
    }
    // 128 random bits collide with a value's text essentially never; the check makes it
    // never, and the bound keeps a broken generator from looping.
    for _ in 0..8 {
        let d = delimiter()?;
        if !value.contains(&d) {
            return Ok(format!("{name}<<{d}\n{value}\n{d}\n"));
        }
    }
    Err(FileError::Random)
}

/// Read a GITHUB_OUTPUT (or GITHUB_ENV) file the way the runner does on Linux: `NAME=VALUE`
/// lines, and `NAME<<DELIM` followed by the value's lines up to a line that is exactly
/// DELIM. For tests and for anyone checking what a step wrote.
pub fn parse_file_commands(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut lines = text.split_inclusive('\n').peekable();
    let strip = |l: &str| l.strip_suffix('\n').unwrap_or(l).to_owned();
    while let Some(raw) = lines.next() {
        let line = strip(raw);
        if line.is_empty() {
            continue;
        }
        let eq = line.find('=');
        let hd = line.find("<<");
        match (eq, hd) {
            (Some(e), h) if h.is_none_or(|h| e < h) => {
                out.push((line[..e].to_owned(), line[e + 1..].to_owned()));
            }
            (_, Some(h)) => {
                let (name, delim) = (&line[..h], &line[h + 2..]);
                if name.is_empty() || delim.is_empty() {
                    return Err(format!("invalid heredoc line `{line}`"));
                }
                let mut value = String::new();
                let mut found = false;
                let mut first = true;
                for raw in lines.by_ref() {
                    let l = strip(raw);
                    if l == delim {
                        found = true;
                        break;
                    }
                    if !first {
                        value.push('\n');
                    }
                    first = false;
                    value.push_str(&l);
                }
                if !found {
                    return Err(format!("matching delimiter not found `{delim}`"));
                }
                out.push((name.to_owned(), value));
            }
            _ => return Err(format!("invalid line `{line}`")),
        }
    }
    Ok(out)
}

/// Append `text` to the file at `path` (creating it), as the runner expects of file
/// commands: it reads the files after the step ends.
pub fn append(what: &'static str, path: &Path, text: &str) -> Result<(), FileError> {
    let err = |e: std::io::Error| FileError::Write {
        what,
        path: crate::config::diag::sanitize(&path.display().to_string()),
        reason: e.to_string(),
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.flush().map_err(err)
}

/// Cut markdown to at most `budget` bytes: at a line boundary, with any open code fence and
/// `<details>` closed, and `note` after it. Text within the budget comes back unchanged.
pub fn fit_markdown(markdown: &str, budget: usize, note: &str) -> String {
    if markdown.len() <= budget {
        return markdown.to_owned();
    }
    // Room for the note and the closers (at most one fence and a handful of </details>).
    let reserve = note.len() + 200;
    let keep = budget.saturating_sub(reserve);
    let mut cut = 0;
    for (i, _) in markdown.match_indices('\n') {
        if i + 1 > keep {
            break;
        }
        cut = i + 1;
    }
    let kept = &markdown[..cut];
    let mut out = kept.to_owned();
    let fences = kept
        .lines()
        .filter(|l| l.trim_start().starts_with("```"))
        .count();
    if fences % 2 == 1 {
        out.push_str("```\n");
    }
    let open = kept.matches("<details>").count() + kept.matches("<details ").count();
    let closed = kept.matches("</details>").count();
    for _ in closed..open.min(closed + 5) {
        out.push_str("</details>\n");
    }
    out.push('\n');
    out.push_str(note);
    out.push('\n');
    out
}

/// Append markdown to the step summary, cut (with `note`) so the whole file stays under
/// GitHub's limit whatever an earlier step of the same step wrote there.
pub fn append_summary(path: &Path, markdown: &str, note: &str) -> Result<(), FileError> {
    let used = std::fs::metadata(path)
        .map(|m| m.len() as usize)
        .unwrap_or(0);
    let budget = STEP_SUMMARY_LIMIT.saturating_sub(used);
    append(
        "GITHUB_STEP_SUMMARY",
        path,
        &fit_markdown(markdown, budget, note),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heredoc_round_trips_through_the_runners_reading() {
        for v in [
            "",
            "one line",
            "two\nlines",
            "ends with newline\n",
            "\n\n",
            "a=b<<c",
        ] {
            let h = heredoc("summary", v).unwrap();
            assert_eq!(
                parse_file_commands(&h).unwrap(),
                vec![("summary".to_owned(), v.to_owned())],
                "{v:?}"
            );
        }
    }

    #[test]
    fn bad_names_are_refused() {
        for n in ["", "a=b", "a<<b", "a\nb"] {
            assert!(heredoc(n, "v").is_err(), "{n:?}");
        }
    }

    #[test]
    fn the_delimiter_is_fresh_each_time() {
        let a = heredoc("x", "v").unwrap();
        let b = heredoc("x", "v").unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("x<<ghadelimiter_"));
    }

    #[test]
    fn markdown_is_cut_at_a_line_with_fences_closed() {
        let md = format!(
            "# head\n<details><summary>x</summary>\n\n```diff\n{}```\n</details>\n",
            "+ line\n".repeat(1000)
        );
        let out = fit_markdown(&md, 2_000, "_cut_");
        assert!(out.len() <= 2_000, "{}", out.len());
        assert!(out.ends_with("_cut_\n"));
        assert_eq!(out.matches("```").count() % 2, 0, "{out}");
        assert_eq!(
            out.matches("<details>").count(),
            out.matches("</details>").count()
        );
        assert_eq!(fit_markdown("short\n", 100, "_cut_"), "short\n");
    }

    #[test]
    fn the_summary_file_never_passes_the_limit() {
        let dir = std::env::temp_dir().join(format!("telbase-gha-sum-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("summary.md");
        std::fs::write(&p, "x".repeat(STEP_SUMMARY_LIMIT - 10_000)).unwrap();
        append_summary(&p, &"line of plan\n".repeat(10_000), "_cut_").unwrap();
        let len = std::fs::metadata(&p).unwrap().len() as usize;
        assert!(len <= STEP_SUMMARY_LIMIT, "{len}");
        assert!(std::fs::read_to_string(&p).unwrap().ends_with("_cut_\n"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    proptest::proptest! {
        /// Any value — line breaks, `\r`, text that looks like a delimiter or another
        /// output — comes back exactly as written, alone, through the runner's reading.
        #[test]
        fn any_value_round_trips(
            value in "(?s).{0,300}",
            evil in proptest::collection::vec(
                proptest::prop_oneof!["ghadelimiter_", "\n", "\r\n", "x<<EOF", "=", "EOF\n"], 0..6),
        ) {
            let value = format!("{value}{}", evil.concat());
            let text = heredoc("summary", &value).unwrap() + &heredoc("has-changes", "true").unwrap();
            let parsed = parse_file_commands(&text).unwrap();
            proptest::prop_assert_eq!(parsed, vec![
                ("summary".to_owned(), value),
                ("has-changes".to_owned(), "true".to_owned()),
            ]);
        }
    }
}

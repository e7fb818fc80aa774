//! Editing telbase.yaml in place: writing sealed values at a key path while every other byte
//! of the file (comments, blank lines, key order, quoting, indentation, line endings) stays
//! as the user wrote it.
//!
//! This is hand-written text surgery on top of the positions `config::yaml` already gives.
//! The one maintained Rust crate that edits YAML losslessly, `yaml-edit` (rowan-based, 0.x),
//! was considered and not used: it is a second YAML parser beside serde-saphyr, so the two
//! could disagree on what the file means (the edit would be checked by one and applied by
//! the other); it is pre-1.0 and ships its own lists of known edit-invariant failures,
//! including for CRLF files; and the edits Telbase needs are few and narrow (replace one
//! value, add one key at the end of a block map, create one map). Every edit here is checked
//! before it is returned: the result must parse to exactly the old tree plus the new values
//! and pass the config loader, so a layout this module misjudges is refused, never written.
//!
//! Scope, deliberately: block-style maps only on the path; flow maps (`{…}`), anchors,
//! aliases, merge keys and tags on the path are refused, because editing them would change
//! more than the one value (or another place that shares it).

use serde_json::Value as J;

use super::diag::sanitize;
use super::structural::did_you_mean;
use super::yaml::{self, Node, Value};

/// Why an edit was refused. Messages name the line and never include a sealed value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EditError {
    #[error("bad key path `{path}`: {why}")]
    BadPath { path: String, why: &'static str },
    #[error("the file does not parse: {0}")]
    Parse(String),
    #[error("`{path}` not found: `{parent}` has no `{name}`{hint}")]
    Missing {
        path: String,
        parent: String,
        name: String,
        hint: String,
    },
    #[error("line {line}: `{path}` is {found}, not a map, so `{name}` cannot be set under it")]
    NotMap {
        line: u32,
        path: String,
        found: &'static str,
        name: String,
    },
    #[error(
        "line {line}: `{path}` is written in flow style (`{{…}}` or `[…]`); Telbase edits block-style maps only: rewrite it as indented `key: value` lines"
    )]
    Flow { line: u32, path: String },
    #[error(
        "line {line}: `{path}` uses an anchor, alias, merge key (`<<`) or tag; editing it would also change the places that share it, so write it out plainly first"
    )]
    Anchor { line: u32, path: String },
    #[error("line {line}: `{path}` is not a sealed value (expected `sealed:` followed by text)")]
    NotSealed { line: u32, path: String },
    #[error(
        "the config is not valid as it is ({0}); fix it first (`telbase validate` lists every problem)"
    )]
    Invalid(String),
    #[error("the edited file would not be the same config plus the new value ({0})")]
    Verify(String),
}

/// Splits a key path such as `apps.web.env.API_KEY` into its segments. A dot inside a name is
/// written `\.` and a backslash `\\`; any other backslash is an error, so a typo never turns
/// silently into a different name.
pub fn parse_key_path(path: &str) -> Result<Vec<String>, EditError> {
    let bad = |why| EditError::BadPath {
        path: path.to_owned(),
        why,
    };
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = path.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('.' | '\\')) => cur.push(e),
                _ => return Err(bad("a backslash must be followed by `.` or `\\`")),
            },
            '.' => {
                if cur.is_empty() {
                    return Err(bad("empty segment (two dots in a row, or a leading dot)"));
                }
                out.push(std::mem::take(&mut cur));
            }
            c => cur.push(c),
        }
    }
    if cur.is_empty() {
        return Err(bad("empty segment (a trailing dot, or an empty path)"));
    }
    out.push(cur);
    Ok(out)
}

/// Joins segments back into the dotted form, escaping as [`parse_key_path`] expects, with
/// control characters made visible (the segments may come from the file).
pub fn display_path(segments: &[String]) -> String {
    let joined = segments
        .iter()
        .map(|s| s.replace('\\', "\\\\").replace('.', "\\."))
        .collect::<Vec<_>>()
        .join(".");
    if joined.chars().any(char::is_control) {
        sanitize(&joined)
    } else {
        joined
    }
}

/// One line of the file: its text without the line break, and the break itself (`\n`,
/// `\r\n`, or empty for a last line without one).
#[derive(Debug, Clone, Copy)]
struct Line<'a> {
    body: &'a str,
    term: &'a str,
}

/// A replacement of whole lines `first..end` (0-based, end exclusive; `first == end` inserts)
/// by `lines`, each written with the file's line break.
#[derive(Debug)]
struct Splice {
    first: usize,
    end: usize,
    lines: Vec<String>,
}

/// A sealed value found in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedValue {
    /// Path of the map holding `sealed:` (e.g. `apps.web.env.API_KEY`), as segments.
    pub path: Vec<String>,
    /// 1-based line of the `sealed:` key.
    pub line: u32,
    /// The armored text as the YAML parser reads it.
    pub text: String,
}

/// A parsed config file ready for edits. Edits return new text; the document itself is
/// never changed, so a refused edit leaves nothing half-done.
pub struct Document<'a> {
    src: &'a str,
    lines: Vec<Line<'a>>,
    root: Node,
    eol: &'static str,
    unit: usize,
}

impl<'a> Document<'a> {
    /// Parses `src` (the whole file) with the config YAML parser.
    pub fn parse(src: &'a str) -> Result<Self, EditError> {
        let root = yaml::parse(src)
            .map_err(|d| EditError::Parse(format!("line {}: {}", d.pos.line, d.message)))?;
        let lines = split_lines(src);
        let eol = if lines.first().is_some_and(|l| l.term == "\r\n") {
            "\r\n"
        } else {
            "\n"
        };
        let unit = indent_unit(&root);
        Ok(Document {
            src,
            lines,
            root,
            eol,
            unit,
        })
    }

    /// The indentation step the file uses between a map and its children.
    pub fn indent_unit(&self) -> usize {
        self.unit
    }

    /// Every `sealed:` string in the file, in file order.
    pub fn sealed_values(&self) -> Vec<SealedValue> {
        let mut out = Vec::new();
        collect_sealed(&self.root, &mut Vec::new(), &mut out);
        out.sort_by_key(|s| s.line);
        out
    }

    /// Writes `armored` (an ASCII-armored age file) as `sealed: |` at `path`: replacing the
    /// value there (plain, sealed, or a map form, whose `only:` is kept), or adding the key at
    /// the end of its map, creating the parent map if only it is missing. Returns the new text,
    /// already verified.
    pub fn set_sealed(&self, path: &[String], armored: &str) -> Result<String, EditError> {
        let (splice, expected_leaf) = self.plan_set(path, armored)?;
        let mut expected = self.root.to_json();
        set_pointer(&mut expected, path, expected_leaf);
        self.apply_verified(vec![splice], &expected)
    }

    /// Replaces the text of existing `sealed:` values (each found by [`sealed_values`] and
    /// named by its `path`) in one edit, all or nothing.
    ///
    /// [`sealed_values`]: Document::sealed_values
    pub fn replace_sealed(&self, values: &[(Vec<String>, String)]) -> Result<String, EditError> {
        let mut splices = Vec::new();
        let mut expected = self.root.to_json();
        for (path, armored) in values {
            self.check_path(path)?;
            let node = self.root.lookup(&as_strs(path));
            let line = node.pos.line;
            let Some(sealed_key) = node.key("sealed") else {
                return Err(EditError::NotSealed {
                    line,
                    path: display_path(path),
                });
            };
            let mut sealed_path = path.clone();
            sealed_path.push("sealed".to_owned());
            let (kl, ki) = self.check_key(&sealed_path, sealed_key.pos)?;
            splices.push(self.replace_value(kl, ki, armored, &[])?);
            let mut target = expected.clone();
            set_pointer(&mut target, &sealed_path, J::String(armored.to_owned()));
            expected = target;
        }
        self.apply_verified(splices, &expected)
    }

    /// The splice for `set_sealed` and the JSON value expected at `path` afterwards.
    fn plan_set(&self, path: &[String], armored: &str) -> Result<(Splice, J), EditError> {
        let Some((name, parent_path)) = path.split_last() else {
            return Err(EditError::BadPath {
                path: String::new(),
                why: "empty path",
            });
        };
        let sealed_only = |only: Option<&Node>| {
            let mut m = serde_json::Map::new();
            m.insert("sealed".into(), J::String(armored.to_owned()));
            if let Some(o) = only {
                m.insert("only".into(), o.to_json());
            }
            J::Object(m)
        };
        // Walk down the existing part of the path, checking each step's layout.
        let mut depth = 0;
        let mut node = &self.root;
        for seg in parent_path {
            let Some(child) = node.child(seg) else { break };
            let key = node.key(seg).map(|k| k.pos).unwrap_or(child.pos);
            self.check_key(&path[..=depth], key)?;
            node = child;
            depth += 1;
        }
        if depth == parent_path.len() {
            // The parent exists.
            let parent_display = display_path(parent_path);
            let Value::Map(_) = node.value else {
                return Err(EditError::NotMap {
                    line: node.pos.line,
                    path: parent_display,
                    found: node.type_name(),
                    name: name.clone(),
                });
            };
            if let Some(existing) = node.child(name) {
                let key = node.key(name).map(|k| k.pos).unwrap_or(existing.pos);
                let (kl, ki) = self.check_key(path, key)?;
                // A block map that already has `sealed:` keeps its other keys and comments.
                if let (Value::Map(_), Some(sk)) = (&existing.value, existing.key("sealed"))
                    && !self.value_is_flow(kl)
                {
                    let mut sealed_path = path.to_vec();
                    sealed_path.push("sealed".to_owned());
                    let (sl, si) = self.check_key(&sealed_path, sk.pos)?;
                    let splice = self.replace_value(sl, si, armored, &[])?;
                    let mut expected = existing.to_json();
                    if let J::Object(m) = &mut expected {
                        m.insert("sealed".into(), J::String(armored.to_owned()));
                    }
                    return Ok((splice, expected));
                }
                let only = existing.child("only");
                let mut extra = Vec::new();
                if let Some(o) = only {
                    extra.push(format!("only: {}", scalar_text(o)?));
                }
                let splice = self.replace_value(kl, ki, armored, &extra)?;
                return Ok((splice, sealed_only(only)));
            }
            let (end, child_indent) = self.map_end(parent_path)?;
            let mut lines = vec![format!("{}{}:", spaces(child_indent), yaml_key(name))];
            lines.extend(self.sealed_block(child_indent + self.unit, armored, &[]));
            return Ok((
                Splice {
                    first: end,
                    end,
                    lines,
                },
                sealed_only(None),
            ));
        }
        // Part of the path is missing. Only the immediate parent may be created, and only
        // in a map.
        let missing = &path[depth];
        let here = display_path(&path[..depth]);
        if !matches!(node.value, Value::Map(_)) {
            return Err(EditError::NotMap {
                line: node.pos.line,
                path: here,
                found: node.type_name(),
                name: missing.clone(),
            });
        }
        if depth + 1 == parent_path.len() {
            let (end, child_indent) = self.map_end(&path[..depth])?;
            let mut lines = vec![format!("{}{}:", spaces(child_indent), yaml_key(missing))];
            let inner = child_indent + self.unit;
            lines.push(format!("{}{}:", spaces(inner), yaml_key(name)));
            lines.extend(self.sealed_block(inner + self.unit, armored, &[]));
            // The expected value is set at the leaf path; the new parent map comes with it.
            return Ok((
                Splice {
                    first: end,
                    end,
                    lines,
                },
                sealed_only(None),
            ));
        }
        // Names from the file are sanitized: a hostile file must not reach the terminal
        // with escape sequences through this message.
        // Jaro-Winkler (the loader's measure) misses swapped letters in short names
        // (`wbe` for `web`), so an edit distance of one or two letters counts too.
        let close = did_you_mean(missing, node.keys()).or_else(|| {
            node.keys()
                .map(|k| (strsim::damerau_levenshtein(missing, k), k))
                .filter(|(d, k)| *d <= 2 && *d < k.chars().count())
                .min_by_key(|(d, _)| *d)
                .map(|(_, k)| k)
        });
        let hint = match close {
            Some(s) => format!(" (did you mean `{}`?)", sanitize(s)),
            None => {
                let keys: Vec<String> = node.keys().take(20).map(sanitize).collect();
                if keys.is_empty() {
                    String::new()
                } else {
                    format!(" (it has: {})", keys.join(", "))
                }
            }
        };
        Err(EditError::Missing {
            path: display_path(path),
            parent: if here.is_empty() {
                "the file".to_owned()
            } else {
                here
            },
            name: missing.clone(),
            hint,
        })
    }

    /// Checks the layout of every key on an existing `path` (see [`Document::check_key`]);
    /// returns the last key's 0-based line and indentation.
    fn check_path(&self, path: &[String]) -> Result<(usize, usize), EditError> {
        let mut at = (0, 0);
        for depth in 1..=path.len() {
            let segs = as_strs(&path[..depth]);
            at = self.check_key(&path[..depth], self.root.key_pos_of(&segs))?;
        }
        Ok(at)
    }

    /// Checks that the key of `path` (at `pos`) sits at the start of its own line in block
    /// style, with a value that is not an anchor, alias or tag; returns its 0-based line and
    /// indentation.
    fn check_key(&self, path: &[String], pos: super::Pos) -> Result<(usize, usize), EditError> {
        let line = pos.line as usize - 1;
        let shown = display_path(path);
        let Some(l) = self.lines.get(line) else {
            return Err(EditError::Anchor {
                line: pos.line,
                path: shown,
            });
        };
        let body = strip_bom(l.body, line);
        let ind = indent(body);
        let col = pos.column as usize - 1;
        if ind != col {
            // Not at the start of its line: inside a flow map, or a compact sequence entry.
            let before: String = body.chars().take(col).collect();
            return Err(if before.contains('{') || before.contains('[') {
                EditError::Flow {
                    line: pos.line,
                    path: shown,
                }
            } else {
                EditError::Anchor {
                    line: pos.line,
                    path: shown,
                }
            });
        }
        // A key brought in by a merge (`<<: *base`) has its position at the anchor: it is
        // then outside its parent's text.
        if let Some((_, parent)) = path.split_last()
            && !parent.is_empty()
        {
            let (pl, pi) = self.locate_entry(parent)?;
            let pend = self.entry_end(pl, pi);
            if line <= pl || line > pend || ind <= pi {
                return Err(EditError::Anchor {
                    line: pos.line,
                    path: shown,
                });
            }
            if self.has_merge_key(pl, pend, ind) {
                return Err(EditError::Anchor {
                    line: pos.line,
                    path: display_path(parent),
                });
            }
        }
        let value = value_text(body).unwrap_or("");
        if value.starts_with('&') || value.starts_with('*') || value.starts_with('!') {
            return Err(EditError::Anchor {
                line: pos.line,
                path: shown,
            });
        }
        Ok((line, ind))
    }

    /// Line (0-based) and indentation of the key of an existing, non-empty path.
    fn locate_entry(&self, path: &[String]) -> Result<(usize, usize), EditError> {
        let segs = as_strs(path);
        let pos = self.root.key_pos_of(&segs);
        let line = pos.line as usize - 1;
        let body = self
            .lines
            .get(line)
            .map(|l| strip_bom(l.body, line))
            .unwrap_or("");
        Ok((line, indent(body)))
    }

    /// Whether the value on key line `line` starts with `{` or `[` on that line.
    fn value_is_flow(&self, line: usize) -> bool {
        let body = self.lines.get(line).map(|l| l.body).unwrap_or("");
        value_text(body).is_some_and(|v| v.starts_with('{') || v.starts_with('['))
    }

    /// Whether a `<<` merge key appears at indentation `ind` in lines `from+1..=to`.
    fn has_merge_key(&self, from: usize, to: usize, ind: usize) -> bool {
        self.lines[from + 1..=to.min(self.lines.len() - 1)]
            .iter()
            .any(|l| indent(l.body) == ind && l.body.trim_start().starts_with("<<"))
    }

    /// Where a new key goes at the end of the block map at `path`: the line after its last
    /// content line (trailing comments and blank lines stay after the new key, with whatever
    /// follows), and the indentation of its keys. Refuses a flow map or a map with a merge.
    fn map_end(&self, path: &[String]) -> Result<(usize, usize), EditError> {
        if path.is_empty() {
            let end = self.last_content_line().map_or(0, |l| l + 1);
            return Ok((end, 0));
        }
        let (line, ind) = self.locate_entry(path)?;
        if self.value_is_flow(line) {
            return Err(EditError::Flow {
                line: line as u32 + 1,
                path: display_path(path),
            });
        }
        let end = self.entry_end(line, ind);
        // The children's indentation is that of the first content line below the key.
        let child = (line + 1..=end)
            .map(|j| self.lines[j].body)
            .find(|b| !is_blank(b) && !is_comment(b))
            .map(indent);
        let Some(child_indent) = child else {
            return Err(EditError::NotMap {
                line: line as u32 + 1,
                path: display_path(path),
                found: "empty",
                name: String::new(),
            });
        };
        if self.has_merge_key(line, end, child_indent) {
            return Err(EditError::Anchor {
                line: line as u32 + 1,
                path: display_path(path),
            });
        }
        Ok((end + 1, child_indent))
    }

    fn last_content_line(&self) -> Option<usize> {
        (0..self.lines.len())
            .rev()
            .find(|&j| !is_blank(self.lines[j].body) && !is_comment(self.lines[j].body))
    }

    /// The last line (0-based) that belongs to the entry whose key is on `line` with
    /// indentation `ind`: every following line indented deeper, and block-scalar content,
    /// up to the next key at the same or a lower indentation. Trailing blank lines and
    /// comments are not part of it (they usually introduce what follows).
    fn entry_end(&self, line: usize, ind: usize) -> usize {
        let mut end = line;
        let mut block = block_header(self.lines[line].body).map(|explicit| Block {
            parent: ind,
            content: explicit.map(|d| ind + d),
        });
        for j in line + 1..self.lines.len() {
            let b = self.lines[j].body;
            if let Some(bs) = &mut block {
                if is_blank(b) {
                    continue;
                }
                let i = indent(b);
                match bs.content {
                    None if i > bs.parent => {
                        bs.content = Some(i);
                        end = j;
                        continue;
                    }
                    Some(ci) if i >= ci => {
                        end = j;
                        continue;
                    }
                    _ => block = None,
                }
            }
            if is_blank(b) || is_comment(b) {
                continue;
            }
            let i = indent(b);
            if i <= ind {
                break;
            }
            end = j;
            if let Some(explicit) = block_header(b) {
                block = Some(Block {
                    parent: i,
                    content: explicit.map(|d| i + d),
                });
            }
        }
        end
    }

    /// The splice that replaces the value of the key on `line` (indentation `ind`) with a
    /// `|` block holding `armored` (under `sealed:` unless the key is `sealed` itself),
    /// followed by `extra` lines (e.g. `only: preview`). The key text as written and a
    /// trailing comment on its line are kept.
    fn replace_value(
        &self,
        line: usize,
        ind: usize,
        armored: &str,
        extra: &[String],
    ) -> Result<Splice, EditError> {
        let body = self.lines[line].body;
        let end = self.entry_end(line, ind);
        let key_part = key_prefix(body).ok_or(EditError::Verify(format!(
            "line {}: cannot find the `key:` on this line",
            line + 1
        )))?;
        let value = value_text(body).unwrap_or("");
        let comment = trailing_comment(value)
            .map(|c| format!(" {c}"))
            .unwrap_or_default();
        let is_sealed_key = key_name(key_part) == "sealed";
        let mut lines = Vec::new();
        if is_sealed_key {
            lines.push(format!("{key_part} |{comment}"));
            // Keep the content indentation the value already had, if it was a block.
            let content = (line + 1..=end)
                .map(|j| self.lines[j].body)
                .find(|b| !is_blank(b))
                .map(indent)
                .filter(|&i| i > ind && block_header(body).is_some())
                .unwrap_or(ind + self.unit);
            lines.extend(armor_lines(armored, content));
        } else {
            lines.push(format!("{key_part}{comment}"));
            lines.extend(self.sealed_block(ind + self.unit, armored, extra));
        }
        Ok(Splice {
            first: line,
            end: end + 1,
            lines,
        })
    }

    /// `sealed: |` at indentation `at`, the armor one unit deeper, then `extra` lines at `at`.
    fn sealed_block(&self, at: usize, armored: &str, extra: &[String]) -> Vec<String> {
        let mut lines = vec![format!("{}sealed: |", spaces(at))];
        lines.extend(armor_lines(armored, at + self.unit));
        lines.extend(extra.iter().map(|e| format!("{}{e}", spaces(at))));
        lines
    }

    /// Applies non-overlapping splices and checks the result: it must parse to `expected`
    /// (the old tree with the new values) and pass the config loader.
    fn apply_verified(&self, mut splices: Vec<Splice>, expected: &J) -> Result<String, EditError> {
        splices.sort_by_key(|s| (s.first, s.end));
        if splices.windows(2).any(|w| w[0].end > w[1].first) {
            return Err(EditError::Verify("two edits overlap".into()));
        }
        let mut out = String::with_capacity(self.src.len() + 1024);
        let mut next = 0;
        let push_line = |out: &mut String, body: &str, term: &str| {
            out.push_str(body);
            out.push_str(term);
        };
        for s in &splices {
            for j in next..s.first {
                let l = self.lines[j];
                // A last line without a break gets one when something now follows it.
                let term = if l.term.is_empty() { self.eol } else { l.term };
                push_line(&mut out, l.body, term);
            }
            for new in &s.lines {
                push_line(&mut out, new, self.eol);
            }
            next = s.end;
        }
        for j in next..self.lines.len() {
            let l = self.lines[j];
            push_line(&mut out, l.body, l.term);
        }
        let reparsed = yaml::parse(&out)
            .map_err(|d| EditError::Verify(format!("line {}: {}", d.pos.line, d.message)))?;
        if &reparsed.to_json() != expected {
            return Err(EditError::Verify(
                "the file's layout around the key is one this editor does not handle".into(),
            ));
        }
        let checked = super::check_str(&out);
        if let Some(d) = checked.diagnostics.iter().find(|d| d.is_error()) {
            // An error the file already had is the file's problem, not the edit's: say so.
            let before = super::check_str(self.src);
            if let Some(old) = before.diagnostics.iter().find(|d| d.is_error()) {
                return Err(EditError::Invalid(format!(
                    "line {}: {}",
                    old.pos.line, old.message
                )));
            }
            return Err(EditError::Verify(format!(
                "the config loader refuses it: line {}: {}",
                d.pos.line, d.message
            )));
        }
        Ok(out)
    }
}

#[derive(Debug)]
struct Block {
    parent: usize,
    content: Option<usize>,
}

fn as_strs(path: &[String]) -> Vec<&str> {
    path.iter().map(String::as_str).collect()
}

fn split_lines(src: &str) -> Vec<Line<'_>> {
    src.split_inclusive('\n')
        .map(|raw| {
            if let Some(b) = raw.strip_suffix("\r\n") {
                Line {
                    body: b,
                    term: &raw[b.len()..],
                }
            } else if let Some(b) = raw.strip_suffix('\n') {
                Line {
                    body: b,
                    term: &raw[b.len()..],
                }
            } else {
                Line {
                    body: raw,
                    term: "",
                }
            }
        })
        .collect()
}

fn strip_bom(body: &str, line: usize) -> &str {
    if line == 0 {
        body.strip_prefix('\u{feff}').unwrap_or(body)
    } else {
        body
    }
}

fn spaces(n: usize) -> String {
    " ".repeat(n)
}

fn indent(body: &str) -> usize {
    body.len() - body.trim_start_matches(' ').len()
}

fn is_blank(body: &str) -> bool {
    body.trim().is_empty()
}

fn is_comment(body: &str) -> bool {
    body.trim_start().starts_with('#')
}

/// The armor as lines at indentation `at`.
fn armor_lines(armored: &str, at: usize) -> impl Iterator<Item = String> + '_ {
    armored
        .lines()
        .map(move |l| format!("{}{}", spaces(at), l.trim_end_matches('\r')))
}

/// The part of a `key: value` line up to and including the colon (indentation included),
/// or `None` if the line holds no block-map key.
fn key_prefix(body: &str) -> Option<&str> {
    let start = indent(body);
    let rest = &body[start..];
    let key_len = if let Some(q) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') {
        quoted_len(rest, q)?
    } else {
        // A plain key ends at the first `: ` or a `:` at the end of the line.
        let mut found = None;
        for (i, _) in rest.match_indices(':') {
            let after = &rest[i + 1..];
            if after.is_empty() || after.starts_with(' ') || after.starts_with('\t') {
                found = Some(i);
                break;
            }
        }
        found?
    };
    let after_key = &rest[key_len..];
    let colon = after_key.find(':')?;
    if !after_key[..colon].trim().is_empty() {
        return None;
    }
    Some(&body[..start + key_len + colon + 1])
}

/// The key's name as written (quotes removed, escapes not interpreted: only compared with
/// plain names).
fn key_name(prefix: &str) -> &str {
    prefix
        .trim()
        .trim_end_matches(':')
        .trim()
        .trim_matches(|c| c == '"' || c == '\'')
}

/// Length in bytes of a quoted scalar at the start of `s` (quote `q`), quotes included.
fn quoted_len(s: &str, q: char) -> Option<usize> {
    let mut chars = s.char_indices().skip(1).peekable();
    while let Some((i, c)) = chars.next() {
        if q == '"' && c == '\\' {
            chars.next();
            continue;
        }
        if c == q {
            if q == '\'' && chars.peek().is_some_and(|(_, n)| *n == '\'') {
                chars.next();
                continue;
            }
            return Some(i + c.len_utf8());
        }
    }
    None
}

/// The text after `key:` on a key line, leading spaces removed.
fn value_text(body: &str) -> Option<&str> {
    let prefix = key_prefix(body)?;
    Some(body[prefix.len()..].trim_start())
}

/// A `# comment` at the end of a value text, if one can be told apart from the value.
fn trailing_comment(value: &str) -> Option<&str> {
    if value.starts_with('#') {
        return Some(value);
    }
    let skip = match value.chars().next() {
        Some(q @ ('"' | '\'')) => quoted_len(value, q)?,
        Some('{' | '[') => value.rfind(['}', ']'])? + 1,
        _ => 0,
    };
    let rest = &value[skip..];
    rest.find(" #")
        .or_else(|| rest.find("\t#"))
        .map(|i| rest[i..].trim_start())
}

/// If the line's value is a block scalar header (`|`, `>-`, `|2`, …), its explicit
/// indentation indicator (if any).
fn block_header(body: &str) -> Option<Option<usize>> {
    let trimmed = body.trim_start();
    let mut v = if let Some(rest) = trimmed.strip_prefix("- ") {
        value_text(rest).unwrap_or(rest.trim_start())
    } else {
        value_text(body)?
    };
    // Skip an anchor or tag before the indicator.
    while v.starts_with('&') || v.starts_with('!') {
        v = v.split_once(' ').map_or("", |(_, r)| r.trim_start());
    }
    let rest = v.strip_prefix('|').or_else(|| v.strip_prefix('>'))?;
    let head: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-' || *c == '+')
        .collect();
    let after = &rest[head.len()..];
    if !(after.is_empty() || after.starts_with(' ') || after.starts_with('\t')) {
        return None;
    }
    if !after.trim().is_empty() && !after.trim_start().starts_with('#') {
        return None;
    }
    Some(
        head.chars()
            .find(char::is_ascii_digit)
            .and_then(|d| d.to_digit(10))
            .map(|d| d as usize),
    )
}

/// A key as YAML text: plain when that reads back as the same string, else double-quoted.
fn yaml_key(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !matches!(
            name.to_ascii_lowercase().as_str(),
            "null" | "true" | "false" | "yes" | "no" | "on" | "off" | "y" | "n"
        );
    if plain {
        name.to_owned()
    } else {
        serde_json::to_string(name).unwrap_or_else(|_| format!("\"{name}\""))
    }
}

/// A short scalar written back as YAML (for `only:`).
fn scalar_text(node: &Node) -> Result<String, EditError> {
    match &node.value {
        Value::Str(s) => Ok(yaml_key(s)),
        Value::Int(i) => Ok(i.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(EditError::Verify(format!(
            "line {}: `only` is {}",
            node.pos.line,
            node.type_name()
        ))),
    }
}

/// The indentation step most used between a block map's key and its children's keys.
fn indent_unit(root: &Node) -> usize {
    type Counts = std::collections::BTreeMap<usize, usize>;
    fn walk(node: &Node, parent: Option<super::Pos>, counts: &mut Counts) {
        match &node.value {
            Value::Map(entries) => {
                if let (Some(p), Some((k, _))) = (parent, entries.first()) {
                    // Only block maps nested on the following lines say something.
                    if k.pos.line > p.line && k.pos.column > p.column {
                        *counts
                            .entry((k.pos.column - p.column) as usize)
                            .or_default() += 1;
                    }
                }
                for (k, v) in entries {
                    walk(v, Some(k.pos), counts);
                }
            }
            Value::Seq(items) => {
                for i in items {
                    walk(i, None, counts);
                }
            }
            _ => {}
        }
    }
    let mut counts = Counts::new();
    walk(root, None, &mut counts);
    counts
        .into_iter()
        .filter(|(u, _)| (1..=8).contains(u))
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
        .map_or(2, |(u, _)| u)
}

fn collect_sealed(node: &Node, path: &mut Vec<String>, out: &mut Vec<SealedValue>) {
    match &node.value {
        Value::Map(entries) => {
            for (k, v) in entries {
                if k.name == "sealed" {
                    if let Value::Str(s) = &v.value {
                        out.push(SealedValue {
                            path: path.clone(),
                            line: k.pos.line,
                            text: s.clone(),
                        });
                    }
                    continue;
                }
                path.push(k.name.clone());
                collect_sealed(v, path, out);
                path.pop();
            }
        }
        Value::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(i.to_string());
                collect_sealed(item, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

/// Sets `value` at `path` in a JSON tree, creating maps on the way.
fn set_pointer(root: &mut J, path: &[String], value: J) {
    let Some((last, parents)) = path.split_last() else {
        *root = value;
        return;
    };
    let mut cur = root;
    for seg in parents {
        if !cur.is_object() {
            *cur = J::Object(serde_json::Map::new());
        }
        let J::Object(m) = cur else { return };
        cur = m
            .entry(seg.clone())
            .or_insert_with(|| J::Object(serde_json::Map::new()));
    }
    if !cur.is_object() {
        *cur = J::Object(serde_json::Map::new());
    }
    if let J::Object(m) = cur {
        m.insert(last.clone(), value);
    }
}

/// Why an edited file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{0} changed while it was being edited; nothing was written, run the command again")]
    Changed(String),
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Replaces the file at `path` with `text` atomically: a temporary file in the same
/// directory (so the rename never crosses file systems) with the original's permissions,
/// synced, then renamed over it. A symlink is followed, so the link stays a link. If the
/// file no longer holds `original` (another editor saved meanwhile), nothing is written.
pub fn write_atomic(path: &std::path::Path, original: &str, text: &str) -> Result<(), WriteError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let shown = path.display().to_string();
    let io = |source| WriteError::Io {
        path: shown.clone(),
        source,
    };
    let target = std::fs::canonicalize(path).map_err(io)?;
    let perms = std::fs::metadata(&target).map_err(io)?.permissions();
    let dir = target.parent().unwrap_or(std::path::Path::new("."));
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| -> Result<(), WriteError> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        // Set after creating: the umask would otherwise strip bits the original had.
        f.set_permissions(perms).map_err(io)?;
        f.sync_all().map_err(io)?;
        if std::fs::read(&target).map_err(io)? != original.as_bytes() {
            return Err(WriteError::Changed(shown.clone()));
        }
        std::fs::rename(&tmp, &target).map_err(io)?;
        // Make the rename itself durable; a failure here leaves the new file in place.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_prefix_handles_plain_quoted_and_url_like_values() {
        assert_eq!(key_prefix("  a: b"), Some("  a:"));
        assert_eq!(key_prefix("  a:"), Some("  a:"));
        assert_eq!(key_prefix(r#"  "a: b" : c"#), Some(r#"  "a: b" :"#));
        assert_eq!(key_prefix("  'it''s': c"), Some("  'it''s':"));
        assert_eq!(key_prefix("  url: http://x:80"), Some("  url:"));
        assert_eq!(key_prefix("  - item"), None);
        assert_eq!(
            value_text("  url: http://x:80 # c"),
            Some("http://x:80 # c")
        );
    }

    #[test]
    fn trailing_comments_are_told_apart_from_hashes_in_values() {
        assert_eq!(trailing_comment("plain # c"), Some("# c"));
        assert_eq!(trailing_comment("a#b"), None);
        assert_eq!(trailing_comment("\"a # b\"  # c"), Some("# c"));
        assert_eq!(trailing_comment("'a # b'"), None);
        assert_eq!(trailing_comment("{ a: b } # c"), Some("# c"));
        assert_eq!(trailing_comment("# only"), Some("# only"));
        assert_eq!(trailing_comment("| # c"), Some("# c"));
    }

    #[test]
    fn block_headers_and_their_indentation_indicator() {
        assert_eq!(block_header("  a: |"), Some(None));
        assert_eq!(block_header("  a: >- # c"), Some(None));
        assert_eq!(block_header("  a: |2"), Some(Some(2)));
        assert_eq!(block_header("  a: &x |"), Some(None));
        assert_eq!(block_header("  - |"), Some(None));
        assert_eq!(block_header("  a: |x"), None);
        assert_eq!(block_header("  a: b"), None);
    }

    #[test]
    fn an_entry_ends_at_its_last_content_line() {
        let src = "a:\n  b: |\n    text\n\n    # in the scalar\n  # about c\n  c: 1\n\n# end\n";
        let doc = Document::parse(src).unwrap();
        // `b` holds its block scalar, including a `#` line inside it, but not the comment
        // about `c` (less indented than the scalar's content).
        assert_eq!(doc.entry_end(1, 2), 4);
        // `a` ends at `c: 1`; the blank line and `# end` after it are not part of it.
        assert_eq!(doc.entry_end(0, 0), 6);
    }
}

//! Structural validation: the document against the JSON Schema generated from `file.rs`.
//!
//! Using the very schema we publish means editors, `check-jsonschema` and `telbase validate`
//! can never disagree about the shape of a file. This module turns the validator's findings
//! into diagnostics a person can act on: the position of the offending key or value, the
//! dotted path, the allowed values, and a did-you-mean for misspelled keys and values. It also
//! says which parts of the document are sound enough for the semantic checks to look at, so one
//! run reports every problem instead of stopping at the first.

use std::sync::OnceLock;

use jsonschema::error::ValidationErrorKind;
use jsonschema::paths::LocationSegment;
use serde_json::Value as J;

use super::diag::{Code, Diagnostic, quote};
use super::file;
use super::yaml::{Node, Value, describe};

struct Compiled {
    schema: J,
    validator: jsonschema::Validator,
}

fn compiled() -> &'static Compiled {
    static COMPILED: OnceLock<Compiled> = OnceLock::new();
    COMPILED.get_or_init(|| {
        let schema = file::schema();
        // The schema is generated from our own types at build time; failing to compile it
        // is a bug that every test would catch, not a runtime condition.
        let validator = jsonschema::draft202012::new(&schema)
            .expect("the generated telbase.yaml schema compiles");
        Compiled { schema, validator }
    })
}

/// The outcome of structural validation.
pub struct Structural {
    pub diagnostics: Vec<Diagnostic>,
    /// The document with unknown keys removed and unsound items pruned, ready for typed
    /// deserialization; `None` when what is broken (project, version) leaves nothing to check.
    /// Malformed items (an app, a database, a section) are pruned whole; the semantic layer
    /// still treats their names as defined (`semantic::Defined` reads them from the tree), so
    /// a broken database does not also cause "unknown database" at every reference.
    pub sound: Option<J>,
}

/// Validate a parsed document.
pub fn check(root: &Node) -> Structural {
    let mut diagnostics = Vec::new();
    // `version` decides which language the rest is written in: check it first and alone.
    if let Some(v) = root.child("version")
        && let Value::Int(n) = v.value
        && n != 1
    {
        diagnostics.push(
            Diagnostic::new(
                Code::E0107,
                v.pos,
                format!("unsupported version {n}: this telbase reads version 1"),
            )
            .with_hint(if n > 1 {
                "upgrade telbase to one that knows this version"
            } else {
                "write `version: 1`"
            }),
        );
        return Structural {
            diagnostics,
            sound: None,
        };
    }

    let c = compiled();
    let mut json = root.to_json();
    let mut removals: Vec<Vec<String>> = Vec::new();
    let mut pruned: Vec<Vec<String>> = Vec::new();
    let mut fatal = false;
    for err in c.validator.iter_errors(&json) {
        let path = segments(err.instance_path());
        let schema_path = err.schema_path().as_str().to_owned();
        describe_error(
            root,
            &c.schema,
            &path,
            &schema_path,
            err.kind(),
            &mut diagnostics,
            &mut removals,
        );
        let mut item = path.clone();
        match err.kind() {
            // Unknown keys are removed one by one; the rest of the item is still checked.
            ValidationErrorKind::AdditionalProperties { .. } => continue,
            // A badly named entry is dropped alone; its siblings are still checked.
            ValidationErrorKind::PropertyNames { error } => {
                item.push(error.instance().as_str().unwrap_or_default().to_owned());
                removals.push(item);
                continue;
            }
            _ => {}
        }
        match item.first().map(String::as_str) {
            None | Some("version") | Some("project") => fatal = true,
            Some("apps") | Some("databases") | Some("access") if item.len() >= 2 => {
                pruned.push(item[..2].to_vec())
            }
            Some(_) => pruned.push(item[..1].to_vec()),
        }
    }
    if fatal {
        return Structural {
            diagnostics,
            sound: None,
        };
    }
    for path in removals.iter().chain(pruned.iter()) {
        remove(&mut json, path);
    }
    Structural {
        diagnostics,
        sound: Some(json),
    }
}

/// An instance location as path segments (keys and sequence indexes).
fn segments(location: &jsonschema::paths::Location) -> Vec<String> {
    location
        .segments()
        .map(|s| match s {
            LocationSegment::Property(p) => p.into_owned(),
            LocationSegment::Index(i) => i.to_string(),
        })
        .collect()
}

fn remove(json: &mut J, path: &[String]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    let mut node = json;
    for seg in parent {
        node = match node {
            J::Object(m) => match m.get_mut(seg) {
                Some(n) => n,
                None => return,
            },
            _ => return,
        };
    }
    if let J::Object(m) = node {
        m.remove(last);
    }
}

/// The dotted path users see: `apps.web.port`.
pub fn dotted(path: &[impl AsRef<str>]) -> String {
    if path.is_empty() {
        return "the top level".to_owned();
    }
    // Keys come from the file; escape anything a terminal would interpret.
    path.iter()
        .map(|s| super::diag::sanitize(s.as_ref()))
        .collect::<Vec<_>>()
        .join(".")
}

/// Resolve a JSON pointer into the schema.
fn schema_at<'a>(schema: &'a J, pointer: &str) -> Option<&'a J> {
    schema.pointer(pointer)
}

fn parent_pointer(pointer: &str) -> &str {
    pointer.rsplit_once('/').map_or("", |(p, _)| p)
}

/// Follow `$ref`s so annotations of the referenced definition are found.
fn deref<'a>(schema: &'a J, mut node: &'a J) -> &'a J {
    for _ in 0..8 {
        match node.get("$ref").and_then(J::as_str) {
            Some(r) => match r.strip_prefix('#').and_then(|p| schema.pointer(p)) {
                Some(n) => node = n,
                None => break,
            },
            None => break,
        }
    }
    node
}

/// Suggest the closest candidate to `word`, if any is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let word_l = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(&word_l, &c.to_ascii_lowercase()), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

fn type_word(t: &str) -> &'static str {
    match t {
        "string" => "a string",
        "integer" => "an integer",
        "number" => "a number",
        "boolean" => "`true` or `false`",
        "array" => "a list",
        "object" => "a map",
        "null" => "nothing",
        _ => "a value",
    }
}

fn expected_types(node: &J) -> String {
    let words: Vec<&str> = match node.get("type") {
        Some(J::String(t)) => vec![type_word(t)],
        Some(J::Array(ts)) => ts
            .iter()
            .filter_map(J::as_str)
            .filter(|t| *t != "null")
            .map(type_word)
            .collect(),
        _ => vec!["a different kind of value"],
    };
    match words.as_slice() {
        [] => "a value".to_owned(),
        [one] => (*one).to_owned(),
        [init @ .., last] => format!("{} or {}", init.join(", "), last),
    }
}

fn enum_words(options: &J) -> Vec<String> {
    options
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|o| match o {
                    J::String(s) => Some(s.clone()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

#[allow(clippy::too_many_arguments)]
fn describe_error(
    root: &Node,
    schema: &J,
    path: &[String],
    schema_path: &str,
    kind: &ValidationErrorKind,
    out: &mut Vec<Diagnostic>,
    removals: &mut Vec<Vec<String>>,
) {
    let segs: Vec<&str> = path.iter().map(String::as_str).collect();
    let node = root.lookup(&segs);
    let here = dotted(path);
    match kind {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            let allowed: Vec<String> = schema_at(schema, parent_pointer(schema_path))
                .and_then(|s| s.get("properties"))
                .and_then(J::as_object)
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            for key in unexpected {
                let mut full = segs.clone();
                full.push(key);
                let pos = root.key_pos_of(&full);
                let mut d = Diagnostic::new(
                    Code::E0101,
                    pos,
                    format!("unknown key {} in {here}", quote(key)),
                );
                if let Some(s) = did_you_mean(key, allowed.iter().map(String::as_str)) {
                    d = d.with_hint(format!("did you mean `{s}`?"));
                } else if !allowed.is_empty() {
                    d = d.with_hint(format!("allowed keys here: {}", allowed.join(", ")));
                }
                out.push(d);
                let mut removal = path.to_vec();
                removal.push(key.clone());
                removals.push(removal);
            }
        }
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().unwrap_or("?");
            let pos = root.key_pos_of(&segs);
            out.push(Diagnostic::new(
                Code::E0102,
                pos,
                format!("missing required key `{name}` in {here}"),
            ));
        }
        ValidationErrorKind::Type { .. } => {
            let sub = schema_at(schema, parent_pointer(schema_path)).unwrap_or(&J::Null);
            let mut d = Diagnostic::new(
                Code::E0103,
                node.pos,
                format!(
                    "{here} must be {}, found {}",
                    expected_types(sub),
                    describe(node)
                ),
            );
            if matches!(node.value, Value::Null) {
                d = d.with_hint("the value is empty; write one after the colon, or remove the key");
            } else if matches!(node.value, Value::Float(_) | Value::Int(_))
                && expected_types(sub) == "a string"
            {
                d = d.with_hint("quote it to make it a string");
            }
            out.push(d);
        }
        ValidationErrorKind::Enum { options } => {
            out.push(not_one_of(node, &here, &enum_words(options)));
        }
        ValidationErrorKind::Constant { expected_value } => {
            out.push(Diagnostic::new(
                Code::E0104,
                node.pos,
                format!("{here} must be {expected_value}, found {}", describe(node)),
            ));
        }
        ValidationErrorKind::Pattern { .. } => {
            let sub = schema_at(schema, parent_pointer(schema_path)).unwrap_or(&J::Null);
            let expected = sub
                .get("x-expected")
                .and_then(J::as_str)
                .unwrap_or("the expected format");
            out.push(Diagnostic::new(
                Code::E0105,
                node.pos,
                format!(
                    "{} is not valid for {here}: expected {expected}",
                    describe(node)
                ),
            ));
        }
        ValidationErrorKind::PropertyNames { error } => {
            // The inner error's instance is the offending key itself.
            let key = error.instance().as_str().unwrap_or("").to_owned();
            let mut full = segs.clone();
            full.push(&key);
            let pos = root.key_pos_of(&full);
            let (message, hint) = if here.ends_with("env") || here == "env" {
                (
                    format!("{} is not a valid environment variable name", quote(&key)),
                    "use letters, digits and `_`, not starting with a digit",
                )
            } else if key == "public" {
                (
                    "`public` is reserved: it means \"no access policy\"".to_owned(),
                    "give the policy another name",
                )
            } else {
                (
                    format!("{} is not a valid name in {here}", quote(&key)),
                    "use lowercase letters, digits and `-`, starting with a letter and not ending with `-`",
                )
            };
            out.push(Diagnostic::new(Code::E0105, pos, message).with_hint(hint));
        }
        ValidationErrorKind::Minimum { limit }
        | ValidationErrorKind::ExclusiveMinimum { limit } => {
            out.push(Diagnostic::new(
                Code::E0106,
                node.pos,
                format!("{here} must be at least {limit}, found {}", describe(node)),
            ));
        }
        ValidationErrorKind::Maximum { limit }
        | ValidationErrorKind::ExclusiveMaximum { limit } => {
            out.push(Diagnostic::new(
                Code::E0106,
                node.pos,
                format!("{here} must be at most {limit}, found {}", describe(node)),
            ));
        }
        ValidationErrorKind::MinLength { limit } => out.push(Diagnostic::new(
            Code::E0106,
            node.pos,
            format!("{here} must be at least {limit} characters long"),
        )),
        ValidationErrorKind::MaxLength { limit } => out.push(Diagnostic::new(
            Code::E0106,
            node.pos,
            format!("{here} must be at most {limit} characters long"),
        )),
        ValidationErrorKind::MinItems { limit } => out.push(Diagnostic::new(
            Code::E0106,
            node.pos,
            format!(
                "{here} needs at least {limit} item{}",
                if *limit == 1 { "" } else { "s" }
            ),
        )),
        ValidationErrorKind::UniqueItems => out.push(Diagnostic::new(
            Code::E0104,
            node.pos,
            format!("{here} lists the same item twice"),
        )),
        ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } => {
            // An enum whose variants carry docs is a oneOf of consts: report it as an enum.
            let sub = schema_at(schema, parent_pointer(schema_path)).map(|s| deref(schema, s));
            let consts: Option<Vec<String>> = sub
                .and_then(|s| s.get("oneOf").or_else(|| s.get("anyOf")))
                .and_then(J::as_array)
                .and_then(|branches| {
                    branches
                        .iter()
                        .map(|b| b.get("const").and_then(J::as_str).map(str::to_owned))
                        .collect()
                });
            if let Some(words) = consts {
                out.push(not_one_of(node, &here, &words));
                return;
            }
            // Report the branch that matched the value's type (for `EnvValue`, the map form
            // when a map was written); if none did, say what was expected.
            let branch = context.iter().find(|errs| {
                !errs.iter().any(|e| {
                    matches!(e.kind(), ValidationErrorKind::Type { .. })
                        && e.instance_path().as_str() == jsonschema_pointer(path)
                })
            });
            match branch {
                Some(errs) if !errs.is_empty() => {
                    for e in errs {
                        let p = segments(e.instance_path());
                        describe_error(
                            root,
                            schema,
                            &p,
                            e.schema_path().as_str(),
                            e.kind(),
                            out,
                            removals,
                        );
                    }
                }
                _ => {
                    let sub =
                        schema_at(schema, parent_pointer(schema_path)).map(|s| deref(schema, s));
                    let what = sub
                        .and_then(|s| s.get("description"))
                        .and_then(J::as_str)
                        .unwrap_or("a different kind of value");
                    out.push(
                        Diagnostic::new(
                            Code::E0103,
                            node.pos,
                            format!("{here} has the wrong form ({} found)", node.type_name()),
                        )
                        .with_hint(what.to_owned()),
                    );
                }
            }
        }
        ValidationErrorKind::Not { .. } => {
            out.push(Diagnostic::new(
                Code::E0104,
                node.pos,
                format!("{} is not allowed for {here}", describe(node)),
            ));
        }
        other => out.push(Diagnostic::new(
            Code::E0103,
            node.pos,
            format!("{here}: {}", fallback_message(other)),
        )),
    }
}

/// "`x` is not allowed here; expected one of: …", with a did-you-mean.
fn not_one_of(node: &Node, here: &str, words: &[String]) -> Diagnostic {
    let d = Diagnostic::new(
        Code::E0104,
        node.pos,
        format!(
            "{} is not allowed for {here}; expected one of: {}",
            describe(node),
            words.join(", ")
        ),
    );
    match &node.value {
        Value::Str(s) => match did_you_mean(s, words.iter().map(String::as_str)) {
            Some(s) => d.with_hint(format!("did you mean `{s}`?")),
            None => d,
        },
        _ => d,
    }
}

fn jsonschema_pointer(path: &[String]) -> String {
    path.iter()
        .map(|s| format!("/{}", s.replace('~', "~0").replace('/', "~1")))
        .collect()
}

fn fallback_message(kind: &ValidationErrorKind) -> String {
    format!("invalid value ({})", kind.keyword())
}

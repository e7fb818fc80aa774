//! Reading and parsing the YAML text of a config file, safely.
//!
//! This layer owns everything about the bytes: the size cap (checked before reading, so a
//! 100 MB file costs nothing), UTF-8, and the YAML parse with serde-saphyr under explicit
//! budgets (nesting depth, node count, alias expansion), duplicate keys rejected and YAML 1.1
//! booleans (`no`, `on`) kept as strings. The result is a `Node` tree in which every value and
//! every key keeps its line and column, so that later layers can point at exactly what they
//! reject. It knows nothing about Telbase's keys.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::options::DuplicateKeyPolicy;
use serde_saphyr::{Budget, MessageFormatter, Options, Spanned, UserMessageFormatter};

use super::diag::{Code, Diagnostic, Pos, quote, sanitize};

/// Largest config Telbase reads. A generated project with 1,000 apps and 1,000 databases is
/// about 200 KiB; real ones are a few KiB. Anything bigger is a mistake or an attack.
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// Deepest nesting accepted. telbase.yaml needs 6 levels; the margin is for flow-style maps.
const MAX_DEPTH: usize = 24;

/// A parsed YAML value with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

/// A YAML value. Keys keep their own positions so "unknown key" can point at the key.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

/// A map key and its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub name: String,
    pub pos: Pos,
}

impl Node {
    /// The child at one JSON-pointer segment (a map key, or a sequence index).
    pub fn child(&self, segment: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.name == segment)
                .map(|(_, v)| v),
            Value::Seq(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        }
    }

    /// The key node of `segment` in this map.
    pub fn key(&self, segment: &str) -> Option<&Key> {
        match &self.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.name == segment)
                .map(|(k, _)| k),
            _ => None,
        }
    }

    /// The keys of this node, if it is a map.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        let entries: &[(Key, Node)] = match &self.value {
            Value::Map(entries) => entries,
            _ => &[],
        };
        entries.iter().map(|(k, _)| k.name.as_str())
    }

    /// Follow a path of segments; stops at the deepest node that exists.
    pub fn lookup<'a>(&'a self, path: &[&str]) -> &'a Node {
        let mut node = self;
        for seg in path {
            match node.child(seg) {
                Some(n) => node = n,
                None => break,
            }
        }
        node
    }

    /// The position of a path: the value's position, or for a missing leaf its parent's.
    pub fn pos_of(&self, path: &[&str]) -> Pos {
        self.lookup(path).pos
    }

    /// The position of the key that holds the value at `path` (the value's position when the
    /// last segment is a sequence index or the root).
    pub fn key_pos_of(&self, path: &[&str]) -> Pos {
        match path.split_last() {
            Some((last, parent)) => {
                let parent_node = self.lookup(parent);
                parent_node
                    .key(last)
                    .map(|k| k.pos)
                    .unwrap_or_else(|| self.lookup(path).pos)
            }
            None => self.pos,
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a map",
        }
    }

    /// Convert to JSON for schema validation and typed deserialization.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            // YAML allows .inf and .nan; JSON cannot hold them. Keep the text so the schema
            // reports "expected a number" rather than silently turning it into null.
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(J::Number)
                .unwrap_or_else(|| J::String(f.to_string())),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.name.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

fn pos_from(loc: serde_saphyr::Location) -> Pos {
    if loc == serde_saphyr::Location::UNKNOWN {
        return Pos::START;
    }
    Pos {
        line: u32::try_from(loc.line()).unwrap_or(u32::MAX).max(1),
        column: u32::try_from(loc.column()).unwrap_or(u32::MAX).max(1),
        len: u32::try_from(loc.span().len()).unwrap_or(1).max(1),
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<Value>::deserialize(d)?;
        Ok(Node {
            pos: pos_from(spanned.referenced),
            value: spanned.value,
        })
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
    }
    fn visit_u128<E>(self, v: u128) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Value, E> {
        match std::str::from_utf8(v) {
            Ok(s) => Ok(Value::Str(s.to_owned())),
            Err(_) => Err(E::custom("binary values are not allowed")),
        }
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Node>()? {
            let name = match &key.value {
                Value::Str(s) => s.clone(),
                Value::Int(i) => i.to_string(),
                Value::Bool(b) => b.to_string(),
                Value::Float(f) => f.to_string(),
                Value::Null => {
                    return Err(de::Error::custom(format!(
                        "a map key is empty (line {}); keys must be names",
                        key.pos.line
                    )));
                }
                Value::Seq(_) | Value::Map(_) => {
                    return Err(de::Error::custom(format!(
                        "a map key at line {} is a {}; keys must be names",
                        key.pos.line,
                        if matches!(key.value, Value::Seq(_)) {
                            "list"
                        } else {
                            "map"
                        }
                    )));
                }
            };
            let value = map.next_value::<Node>()?;
            entries.push((Key { name, pos: key.pos }, value));
        }
        Ok(Value::Map(entries))
    }
}

/// Parser options: the hostile-input defences in one place.
fn options() -> Options {
    let mut o = Options::default();
    o.strict_booleans = true;
    o.duplicate_keys = DuplicateKeyPolicy::Error;
    let mut budget = Budget::default();
    budget.max_depth = MAX_DEPTH;
    budget.max_documents = 2;
    // A project with 1,000 apps and 1,000 databases is about 30,000 nodes; parsing costs
    // about 1 µs a node here, so the cap also bounds the time a hostile file can take.
    budget.max_nodes = 60_000;
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    budget.max_total_scalar_bytes = MAX_CONFIG_BYTES as usize;
    o.budget = Some(budget);
    // An alias bomb is small on disk and huge once expanded; cap the expansion, not the file.
    o.alias_limits.max_total_replayed_events = 10_000;
    o.alias_limits.max_replay_stack_depth = 16;
    o
}

/// Turn raw bytes into text, or a diagnostic pointing at the first bad byte.
pub fn decode(bytes: &[u8]) -> Result<&str, Diagnostic> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(s),
        Err(e) => {
            let good = &bytes[..e.valid_up_to()];
            // valid_up_to is a char boundary, so this cannot fail; stay panic-free anyway.
            let text = std::str::from_utf8(good).unwrap_or("");
            let line = text.matches('\n').count() + 1;
            let column = text.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            Err(Diagnostic::new(
                Code::E0003,
                Pos {
                    line: line as u32,
                    column: column as u32,
                    len: 1,
                },
                format!(
                    "the file is not UTF-8 text (invalid byte 0x{:02x})",
                    bytes[e.valid_up_to()]
                ),
            )
            .with_hint("save telbase.yaml as UTF-8"))
        }
    }
}

/// Parse YAML text into a positioned tree whose root is a map.
pub fn parse(src: &str) -> Result<Node, Diagnostic> {
    // A byte-order mark is allowed at the very start (YAML 1.2, section 5.2; some Windows
    // editors write one) and nowhere else: inside the text it is an invisible character that
    // would end up in a name or a value.
    let body = src.strip_prefix('\u{feff}').unwrap_or(src);
    if let Some(offset) = body.find('\u{feff}') {
        let before = &src[..src.len() - body.len() + offset];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        return Err(Diagnostic::new(
            Code::E0004,
            Pos {
                line: line as u32,
                column: column as u32,
                len: 1,
            },
            "a byte-order mark (U+FEFF) inside the file",
        )
        .with_hint(
            "remove the invisible character; a BOM is only allowed as the first character",
        ));
    }
    if body
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Err(
            Diagnostic::new(Code::E0008, Pos::START, "the file is empty")
                .with_hint("start with `version: 1` and `project: <name>`"),
        );
    }
    let root: Node = serde_saphyr::from_str_with_options(src, options()).map_err(yaml_error)?;
    match root.value {
        Value::Map(_) => Ok(root),
        _ => Err(Diagnostic::new(
            Code::E0008,
            root.pos,
            format!(
                "expected a map at the top level, found {}",
                root.type_name()
            ),
        )
        .with_hint("telbase.yaml is a map: `version: 1`, `project: …`, `apps: …`")),
    }
}

fn yaml_error(err: serde_saphyr::Error) -> Diagnostic {
    let pos = err.location().map(pos_from).unwrap_or(Pos::START);
    let message = UserMessageFormatter.format_message(err.without_snippet());
    let message = sanitize(&message);
    let lower = message.to_ascii_lowercase();
    // A second document is either the parser's own error or the document budget breached.
    let multiple_documents = matches!(err, serde_saphyr::Error::MultipleDocuments { .. })
        || lower.contains("documents {")
        || lower.contains("multiple found");
    let (code, hint) = if lower.contains("duplicate") {
        (
            Code::E0005,
            Some(
                "each key may appear once in a map; YAML tools disagree on which copy wins, so Telbase accepts neither",
            ),
        )
    } else if multiple_documents {
        (
            Code::E0007,
            Some("telbase.yaml holds one YAML document; remove the extra `---`"),
        )
    } else if lower.contains("budget")
        || lower.contains("too complex")
        || lower.contains("too large")
        || lower.contains("alias")
        || lower.contains("depth")
        || lower.contains("limit")
        || lower.contains("nesting")
    {
        (
            Code::E0006,
            Some(
                "the file exceeds Telbase's safety limits for YAML (nesting, anchors and aliases)",
            ),
        )
    } else if lower.contains("tab") {
        (Code::E0004, Some("YAML indents with spaces, never tabs"))
    } else {
        (Code::E0004, None)
    };
    let message = if code == Code::E0007 {
        "the file holds more than one YAML document".to_owned()
    } else {
        message
    };
    let d = Diagnostic::new(code, pos, message);
    match hint {
        Some(h) => d.with_hint(h),
        None => d,
    }
}

/// Describe a node for a message: its value if short and scalar, else its type.
pub fn describe(node: &Node) -> String {
    match &node.value {
        Value::Str(s) => quote(s),
        Value::Int(i) => format!("`{i}`"),
        Value::Float(f) => format!("`{f}`"),
        Value::Bool(b) => format!("`{b}`"),
        _ => node.type_name().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_booleans_keep_norway() {
        let n = parse("a: no\nb: on\nc: true\n").unwrap();
        assert_eq!(n.child("a").unwrap().value, Value::Str("no".into()));
        assert_eq!(n.child("b").unwrap().value, Value::Str("on".into()));
        assert_eq!(n.child("c").unwrap().value, Value::Bool(true));
    }

    #[test]
    fn keys_and_values_have_positions() {
        let n = parse("apps:\n  web:\n    port: 80\n").unwrap();
        let port = n.lookup(&["apps", "web", "port"]);
        assert_eq!((port.pos.line, port.pos.column), (3, 11));
        let key = n.key_pos_of(&["apps", "web", "port"]);
        assert_eq!((key.line, key.column, key.len), (3, 5, 4));
    }

    #[test]
    fn duplicate_keys_are_rejected_with_location() {
        let e = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!(e.code, Code::E0005);
        assert_eq!((e.pos.line, e.pos.column), (2, 1));
    }

    #[test]
    fn invalid_utf8_points_at_the_byte() {
        let e = decode(b"ab: 1\ncd: \xff\n").unwrap_err();
        assert_eq!(e.code, Code::E0003);
        assert_eq!((e.pos.line, e.pos.column), (2, 5));
    }
}

//! Conversion of OpenAPI 3.0 Schema Objects into JSON Schema 2020-12 documents that the
//! `jsonschema` crate can compile without fetching anything.
//!
//! This module owns every decision about what a provider's schema *means* for validation:
//! which keywords survive, how `nullable`, `readOnly`/`writeOnly` and the 3.0 boolean
//! `exclusiveMinimum` translate, how the published files' quirks (empty `oneOf: []`, `items`
//! on a schema that is not an array) are tolerated, and how one self-contained document is
//! assembled per validator from `components.schemas`, renamed to `$defs`.

use std::collections::{BTreeSet, HashMap};

use serde_json::{Map, Value};

const COMPONENT_SCHEMAS: &str = "#/components/schemas/";
const DEFS: &str = "#/$defs/";

/// Which way a body travels. The two differ only in which properties may be left out:
/// `readOnly` ones are never sent by clients, `writeOnly` ones are never returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Direction {
    Request,
    Response,
}

/// `components.schemas`, converted once per direction at load time, plus which definitions
/// each definition refers to, so a validator's document carries only what it can reach.
#[derive(Debug)]
pub(crate) struct Definitions {
    request: Map<String, Value>,
    response: Map<String, Value>,
    uses: HashMap<String, Vec<String>>,
}

impl Definitions {
    pub(crate) fn convert(doc: &Value) -> Self {
        let mut request = Map::new();
        let mut response = Map::new();
        let mut uses = HashMap::new();
        if let Some(schemas) = doc
            .pointer("/components/schemas")
            .and_then(Value::as_object)
        {
            let req = Converter::new(doc, Direction::Request);
            let resp = Converter::new(doc, Direction::Response);
            for (name, schema) in schemas {
                let converted = req.convert(schema);
                // Directions differ only in `required` lists, never in references, so the
                // request variant's references serve both.
                let mut names = Vec::new();
                collect_definition_refs(&converted, &mut names);
                uses.insert(name.clone(), names);
                request.insert(name.clone(), converted);
                response.insert(name.clone(), resp.convert(schema));
            }
        }
        Definitions {
            request,
            response,
            uses,
        }
    }

    /// Assembles one self-contained JSON Schema document: `root` (already converted) with
    /// the definitions it reaches, directly or through other definitions, under `$defs`.
    pub(crate) fn document(&self, direction: Direction, root: Value) -> Value {
        let defs = match direction {
            Direction::Request => &self.request,
            Direction::Response => &self.response,
        };
        let mut pending = Vec::new();
        collect_definition_refs(&root, &mut pending);
        let mut reached = BTreeSet::new();
        while let Some(name) = pending.pop() {
            if reached.contains(&name) {
                continue;
            }
            if let Some(more) = self.uses.get(&name) {
                pending.extend(more.iter().cloned());
            }
            reached.insert(name);
        }
        let mut document = match root {
            Value::Object(map) => map,
            other => {
                let mut map = Map::new();
                map.insert("allOf".into(), Value::Array(vec![other]));
                map
            }
        };
        let mut carried = Map::new();
        for name in reached {
            // A name that is not defined stays unresolved, so compiling reports the broken
            // reference instead of the checker silently accepting everything.
            if let Some(schema) = defs.get(&name) {
                carried.insert(name, schema.clone());
            }
        }
        if !carried.is_empty() {
            document.insert("$defs".into(), Value::Object(carried));
        }
        Value::Object(document)
    }
}

/// Converts Schema Objects of one document in one direction.
pub(crate) struct Converter<'a> {
    doc: &'a Value,
    direction: Direction,
}

/// How deep references that must be inlined (see [`Converter::reference`]) may nest before
/// the converter gives up and accepts anything there; guards against reference cycles.
const MAX_INLINE_DEPTH: usize = 8;

impl<'a> Converter<'a> {
    pub(crate) fn new(doc: &'a Value, direction: Direction) -> Self {
        Converter { doc, direction }
    }

    pub(crate) fn convert(&self, schema: &Value) -> Value {
        self.convert_at(schema, 0)
    }

    fn convert_at(&self, schema: &Value, depth: usize) -> Value {
        let source = match schema {
            Value::Object(map) => map,
            Value::Bool(b) => return Value::Bool(*b),
            // Not a schema at all: constrain nothing rather than fail the whole operation.
            _ => return Value::Object(Map::new()),
        };
        let mut out = Map::new();
        // Schemas that must join the result through `allOf`: inlined references with
        // siblings, and a second union when both `anyOf` and `oneOf` are present.
        let mut also = Vec::new();
        for (key, value) in source {
            match key.as_str() {
                "$ref" => {
                    if let Some(reference) = value.as_str() {
                        match self.reference(reference, depth) {
                            Reference::Keep(text) => {
                                out.insert(key.clone(), Value::String(text));
                            }
                            Reference::Inline(schema) => also.push(schema),
                        }
                    }
                }
                "type" => {
                    if let Some(kind) = convert_type(value) {
                        out.insert(key.clone(), kind);
                    }
                }
                // An empty enum admits nothing; like the empty `oneOf` quirk it is a
                // generator artefact, so it is read as "no constraint" (the guard fails and
                // the catch-all arm drops it).
                "enum" if value.as_array().is_some_and(|values| !values.is_empty()) => {
                    out.insert(key.clone(), value.clone());
                }
                "const" => {
                    out.insert(key.clone(), value.clone());
                }
                // Keywords with a malformed value are dropped by the catch-all arm rather than
                // failing the meta-schema check and with it the whole operation.
                "maximum" | "minimum" if value.is_number() => {
                    out.insert(key.clone(), value.clone());
                }
                "multipleOf" if value.as_f64().is_some_and(|n| n > 0.0) => {
                    out.insert(key.clone(), value.clone());
                }
                "maxLength" | "minLength" | "maxItems" | "minItems" | "maxProperties"
                | "minProperties" => {
                    if let Some(n) = non_negative_integer(value) {
                        out.insert(key.clone(), Value::from(n));
                    }
                }
                "pattern" if value.is_string() => {
                    out.insert(key.clone(), value.clone());
                }
                "uniqueItems" if value.is_boolean() => {
                    out.insert(key.clone(), value.clone());
                }
                "required" => {
                    if let Some(required) = self.required(source, value)
                        && !required.is_empty()
                    {
                        out.insert(key.clone(), Value::Array(required));
                    }
                }
                "properties" | "patternProperties" => {
                    if let Some(properties) = value.as_object() {
                        let converted = properties
                            .iter()
                            .map(|(name, schema)| (name.clone(), self.convert_at(schema, depth)))
                            .collect();
                        out.insert(key.clone(), Value::Object(converted));
                    }
                }
                "additionalProperties" | "not" if value.is_object() || value.is_boolean() => {
                    out.insert(key.clone(), self.convert_at(value, depth));
                }
                "items" => match value {
                    Value::Object(_) | Value::Bool(_) => {
                        out.insert(key.clone(), self.convert_at(value, depth));
                    }
                    // The draft-4 tuple form is not OpenAPI 3.0, but its meaning is clear.
                    Value::Array(tuple) => {
                        let converted = tuple.iter().map(|s| self.convert_at(s, depth)).collect();
                        out.insert("prefixItems".into(), Value::Array(converted));
                    }
                    // Anything else cannot describe items; dropping it keeps the rest usable.
                    _ => {}
                },
                "allOf" => {
                    if let Some(branches) = non_empty_array(value) {
                        let converted = branches.iter().map(|s| self.convert_at(s, depth));
                        also.splice(0..0, converted);
                    }
                }
                // `oneOf` is checked as `anyOf`: generated specs (Vercel's come from
                // TypeScript unions) list overlapping alternatives, so an ordinary value
                // often fits two branches and a strict `oneOf` would reject valid traffic.
                // Whether the data fits *an* alternative is the question a conformance check
                // asks. An empty list (a Vercel quirk) is dropped: it constrains nothing.
                "anyOf" | "oneOf" => {
                    if let Some(branches) = non_empty_array(value) {
                        let converted: Vec<Value> =
                            branches.iter().map(|s| self.convert_at(s, depth)).collect();
                        if out.contains_key("anyOf") {
                            let mut union = Map::new();
                            union.insert("anyOf".into(), Value::Array(converted));
                            also.push(Value::Object(union));
                        } else {
                            out.insert("anyOf".into(), Value::Array(converted));
                        }
                    }
                }
                // Everything else is an annotation (`description`, `format`, `default`,
                // `readOnly`, `example`, `discriminator`, `xml`, `externalDocs`, `x-*`, …)
                // or not an OpenAPI 3.0 keyword. Dropping it keeps documents small, keeps
                // `format` an annotation, and stops stray `$id`s from moving the base URI.
                _ => {}
            }
        }
        if !also.is_empty() {
            out.insert("allOf".into(), Value::Array(also));
        }
        exclusive_bounds(source, &mut out);
        widen_for_items(&mut out);
        if source.get("nullable") == Some(&Value::Bool(true)) {
            return allow_null(out);
        }
        Value::Object(out)
    }

    /// Filters a `required` list for this direction.
    fn required(&self, schema: &Map<String, Value>, value: &Value) -> Option<Vec<Value>> {
        let names = value.as_array()?;
        let flag = match self.direction {
            Direction::Request => "readOnly",
            Direction::Response => "writeOnly",
        };
        let properties = schema.get("properties").and_then(Value::as_object);
        Some(
            names
                .iter()
                .filter(|name| {
                    let Some(name) = name.as_str() else {
                        return false;
                    };
                    !properties
                        .and_then(|p| p.get(name))
                        .is_some_and(|property| self.flagged(property, flag))
                })
                .cloned()
                .collect(),
        )
    }

    /// Whether a property schema carries `flag: true`, itself or through a chain of local
    /// references (a property is often `$ref` to a component that is `readOnly`).
    fn flagged(&self, schema: &Value, flag: &str) -> bool {
        let mut current = schema;
        for _ in 0..MAX_INLINE_DEPTH {
            let Some(map) = current.as_object() else {
                return false;
            };
            if map.get(flag) == Some(&Value::Bool(true)) {
                return true;
            }
            match map
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| resolve_local(self.doc, r))
            {
                Some(next) => current = next,
                None => return false,
            }
        }
        false
    }

    /// Rewrites or inlines one `$ref`.
    ///
    /// `#/components/schemas/Name` becomes `#/$defs/Name`; the name part is already in
    /// JSON-pointer (and possibly percent) escaped form and the `$defs` keys are the
    /// component names unchanged, so it is carried over verbatim. A reference deeper into a
    /// component (`…/Member/properties/name`, used by Turso) or anywhere else in the document
    /// is inlined instead: the converted definition may not have the same inner layout (a
    /// `nullable` one is wrapped in `anyOf`). External references are kept and therefore
    /// fail to compile, which reports them instead of hiding them.
    fn reference(&self, reference: &str, depth: usize) -> Reference {
        if let Some(rest) = reference.strip_prefix(COMPONENT_SCHEMAS)
            && !rest.contains('/')
        {
            return Reference::Keep(format!("{DEFS}{rest}"));
        }
        if !reference.starts_with('#') {
            return Reference::Keep(reference.to_owned());
        }
        if depth >= MAX_INLINE_DEPTH {
            return Reference::Inline(Value::Bool(true));
        }
        match resolve_local(self.doc, reference) {
            Some(target) => Reference::Inline(self.convert_at(target, depth + 1)),
            // Kept as written: compiling reports the dangling pointer.
            None => Reference::Keep(reference.to_owned()),
        }
    }
}

enum Reference {
    Keep(String),
    Inline(Value),
}

fn convert_type(value: &Value) -> Option<Value> {
    const NAMES: [&str; 7] = [
        "null", "boolean", "object", "array", "number", "string", "integer",
    ];
    match value {
        Value::String(name) if NAMES.contains(&name.as_str()) => Some(value.clone()),
        Value::Array(names) => {
            let kept: Vec<Value> = names
                .iter()
                .filter(|n| n.as_str().is_some_and(|n| NAMES.contains(&n)))
                .cloned()
                .collect();
            (!kept.is_empty()).then_some(Value::Array(kept))
        }
        _ => None,
    }
}

fn non_negative_integer(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|n| *n >= 0.0 && n.fract() == 0.0 && *n <= u64::MAX as f64)
            .map(|n| n as u64)
    })
}

fn non_empty_array(value: &Value) -> Option<&Vec<Value>> {
    value.as_array().filter(|a| !a.is_empty())
}

/// OpenAPI 3.0 spells an exclusive bound as `minimum: 5, exclusiveMinimum: true`; JSON
/// Schema 2020-12 as `exclusiveMinimum: 5`. A numeric form (3.1 style) is kept as is.
fn exclusive_bounds(source: &Map<String, Value>, out: &mut Map<String, Value>) {
    for (exclusive, inclusive) in [
        ("exclusiveMinimum", "minimum"),
        ("exclusiveMaximum", "maximum"),
    ] {
        match source.get(exclusive) {
            Some(Value::Bool(true)) => {
                if let Some(bound) = out.remove(inclusive) {
                    out.insert(exclusive.into(), bound);
                }
            }
            Some(bound @ Value::Number(_)) => {
                out.insert(exclusive.into(), bound.clone());
            }
            _ => {}
        }
    }
}

/// A schema with `items` but a non-array `type` (Cloudflare's full description has
/// `type: object` with `items`) was meant to describe a list; allowing arrays as well keeps
/// the declared type and the evident intent instead of rejecting whichever the API sends.
fn widen_for_items(out: &mut Map<String, Value>) {
    if !out.contains_key("items") && !out.contains_key("prefixItems") {
        return;
    }
    match out.get_mut("type") {
        Some(Value::String(name)) if name != "array" => {
            let name = std::mem::take(name);
            out.insert(
                "type".into(),
                Value::Array(vec![Value::String(name), "array".into()]),
            );
        }
        Some(Value::Array(names)) if !names.iter().any(|n| n == "array") => {
            names.push("array".into());
        }
        _ => {}
    }
}

/// `nullable: true`. When the schema's own `type` decides everything, `null` joins the
/// type (and the enum, which would otherwise still exclude it). When references or
/// combinators could reject `null` on their own, the whole schema becomes one alternative
/// next to `{type: null}`.
fn allow_null(mut out: Map<String, Value>) -> Value {
    let composite = ["$ref", "allOf", "anyOf", "not"]
        .iter()
        .any(|k| out.contains_key(*k));
    let has_type = out.contains_key("type");
    if has_type && !composite {
        match out.get_mut("type") {
            Some(Value::String(name)) => {
                let name = std::mem::take(name);
                out.insert(
                    "type".into(),
                    Value::Array(vec![Value::String(name), "null".into()]),
                );
            }
            Some(Value::Array(names)) if !names.iter().any(|n| n == "null") => {
                names.push("null".into());
            }
            _ => {}
        }
        if let Some(Value::Array(values)) = out.get_mut("enum")
            && !values.contains(&Value::Null)
        {
            values.push(Value::Null);
        }
        if out.get("const").is_some_and(|c| !c.is_null()) {
            let value = out.remove("const").unwrap_or(Value::Null);
            out.insert("enum".into(), Value::Array(vec![value, Value::Null]));
        }
        return Value::Object(out);
    }
    let mut null = Map::new();
    null.insert("type".into(), "null".into());
    let mut wrapper = Map::new();
    wrapper.insert(
        "anyOf".into(),
        Value::Array(vec![Value::Object(null), Value::Object(out)]),
    );
    Value::Object(wrapper)
}

/// Names of the definitions a converted schema refers to (`#/$defs/<name>`), decoded.
fn collect_definition_refs(value: &Value, names: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                if key == "$ref"
                    && let Some(rest) = inner.as_str().and_then(|r| r.strip_prefix(DEFS))
                {
                    let first = rest.split('/').next().unwrap_or_default();
                    names.push(unescape_token(&percent_decode(first)));
                } else {
                    collect_definition_refs(inner, names);
                }
            }
        }
        Value::Array(items) => {
            for inner in items {
                collect_definition_refs(inner, names);
            }
        }
        _ => {}
    }
}

/// Resolves a same-document reference (`#/components/…`) in the original description.
pub(crate) fn resolve_local<'v>(doc: &'v Value, reference: &str) -> Option<&'v Value> {
    let fragment = reference.strip_prefix('#')?;
    // `Value::pointer` undoes `~0`/`~1`; the URI layer's percent-encoding is ours to undo.
    doc.pointer(&percent_decode(fragment))
}

/// Follows a chain of `$ref` objects (parameters, responses, request bodies, schemas) to
/// the object they finally name; `None` on a dangling or cyclic chain.
pub(crate) fn follow<'v>(doc: &'v Value, value: &'v Value) -> Option<&'v Value> {
    let mut current = value;
    for _ in 0..MAX_INLINE_DEPTH {
        match current.get("$ref").and_then(Value::as_str) {
            Some(reference) => current = resolve_local(doc, reference)?,
            None => return Some(current),
        }
    }
    None
}

fn unescape_token(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn percent_decode(text: &str) -> String {
    if !text.contains('%') {
        return text.to_owned();
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = text.get(i + 1..i + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| text.to_owned())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{Converter, Definitions, Direction};

    fn convert(
        doc: &serde_json::Value,
        dir: Direction,
        schema: serde_json::Value,
    ) -> serde_json::Value {
        Converter::new(doc, dir).convert(&schema)
    }

    #[test]
    fn nullable_joins_type_and_enum_or_wraps() {
        let doc = json!({});
        let typed = convert(
            &doc,
            Direction::Response,
            json!({"type": "string", "enum": ["a"], "nullable": true}),
        );
        assert_eq!(
            typed,
            json!({"type": ["string", "null"], "enum": ["a", null]})
        );
        let reference = convert(
            &doc,
            Direction::Response,
            json!({"$ref": "#/components/schemas/X", "nullable": true}),
        );
        assert_eq!(
            reference,
            json!({"anyOf": [{"type": "null"}, {"$ref": "#/$defs/X"}]})
        );
    }

    #[test]
    fn read_only_is_not_required_in_requests_and_write_only_not_in_responses() {
        let doc = json!({"components": {"schemas": {"Id": {"type": "string", "readOnly": true}}}});
        let schema = json!({
            "type": "object",
            "required": ["id", "name", "password"],
            "properties": {
                "id": {"$ref": "#/components/schemas/Id"},
                "name": {"type": "string"},
                "password": {"type": "string", "writeOnly": true}
            }
        });
        let request = convert(&doc, Direction::Request, schema.clone());
        assert_eq!(request["required"], json!(["name", "password"]));
        let response = convert(&doc, Direction::Response, schema);
        assert_eq!(response["required"], json!(["id", "name"]));
    }

    #[test]
    fn openapi_quirks_become_plain_json_schema() {
        let doc = json!({});
        let converted = convert(
            &doc,
            Direction::Response,
            json!({
                "type": "object",
                "items": {"type": "string"},
                "properties": {
                    "n": {"type": "integer", "minimum": 1, "exclusiveMinimum": true, "format": "int64", "example": 3},
                    "g": {"type": "array", "items": {"oneOf": []}},
                    "required": {"type": "string", "x-extra": 1}
                },
                "discriminator": {"propertyName": "kind"}
            }),
        );
        assert_eq!(
            converted,
            json!({
                "type": ["object", "array"],
                "items": {"type": "string"},
                "properties": {
                    "n": {"type": "integer", "exclusiveMinimum": 1},
                    "g": {"type": "array", "items": {}},
                    "required": {"type": "string"}
                }
            })
        );
    }

    #[test]
    fn documents_carry_only_reachable_definitions() {
        let doc = json!({"components": {"schemas": {
            "A": {"type": "object", "properties": {"b": {"$ref": "#/components/schemas/B"}}},
            "B": {"type": "string"},
            "C": {"type": "integer"},
            "a/b": {"type": "boolean"},
            "t~x": {"type": "number"}
        }}});
        let defs = Definitions::convert(&doc);
        let keys = |root: serde_json::Value| -> Vec<String> {
            let built = defs.document(Direction::Request, root);
            built
                .get("$defs")
                .and_then(serde_json::Value::as_object)
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default()
        };
        assert_eq!(keys(json!({"$ref": "#/$defs/A"})), vec!["A", "B"]);
        // Component names are pointer tokens: `/` is `~1`, `~` is `~0`, and URIs may
        // percent-encode either.
        assert_eq!(keys(json!({"$ref": "#/$defs/a~1b"})), vec!["a/b"]);
        assert_eq!(keys(json!({"$ref": "#/$defs/t~0x"})), vec!["t~x"]);
        assert_eq!(keys(json!({"$ref": "#/$defs/t%7E0x"})), vec!["t~x"]);
    }
}

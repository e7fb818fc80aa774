//! Checks recorded HTTP exchanges against a provider's published OpenAPI description.
//!
//! This module owns the question "would the real provider have sent or accepted this?": it
//! loads an OpenAPI 3.0.x description (the files under `../shared/provider-apis/`), finds the
//! operation an exchange belongs to, and reports every way the exchange's query, request
//! body, status and response body depart from it. Routing lives in `paths`, the meaning of
//! OpenAPI schemas in `schema`; this file holds the description, the validator cache and
//! the rules of [`ApiDescription::check`]; Google's Discovery documents are translated into
//! the same form by `discovery`. Nothing here is specific to one provider: the
//! published files' quirks are tolerated generically.

mod discovery;
mod paths;
mod schema;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

use self::paths::Template;
use self::schema::{Converter, Definitions, Direction, follow};

/// One recorded request and the response it got.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct Exchange {
    /// `GET`, `POST`, … (compared case-insensitively).
    pub method: String,
    /// The path as the real API sees it, without host or query, e.g.
    /// `/v10/projects/prj_123/env`. A path that still carries the server's base path
    /// (Neon's `/api/v2`) is accepted too.
    pub path: String,
    pub query: Vec<(String, String)>,
    pub request_body: Option<Value>,
    pub status: u16,
    pub response_body: Option<Value>,
}

impl From<&crate::emulator::Exchange> for Exchange {
    /// A call the emulator captured, as the description checks it (query split into pairs,
    /// the request body parsed when it is JSON).
    fn from(x: &crate::emulator::Exchange) -> Self {
        Exchange {
            method: x.method.clone(),
            path: x.path.clone(),
            query: x
                .query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (k.to_owned(), v.to_owned())
                })
                .collect(),
            request_body: serde_json::from_slice(&x.request_body).ok(),
            status: x.status,
            response_body: x.response_body.clone(),
        }
    }
}

/// One departure from the description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The operation, `POST /v10/projects/{idOrName}/env`, or the raw method and path when
    /// no operation matched.
    pub operation: String,
    /// Where (query parameter, body pointer, status) and what, bounded in length.
    pub message: String,
}

/// Why a description could not be loaded.
#[derive(thiserror::Error, Debug)]
pub enum LoadError {
    #[error("cannot read OpenAPI description {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("OpenAPI description {} is not valid JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("not an OpenAPI 3.x description: {reason}")]
    NotOpenApi3 { reason: String },
}

/// Validators compiled so far by [`ApiDescription::compile_all`].
#[derive(Debug, Clone, Default)]
pub struct CompileReport {
    /// Schemas that compiled.
    pub compiled: usize,
    /// `(target, error)` for each schema that did not, target as
    /// `"GET /v9/projects/{idOrName} response 200"`.
    pub failed: Vec<(String, String)>,
}

/// A loaded OpenAPI 3.0.x description, ready to check exchanges. Cheap to share: validators
/// are compiled on first use and cached, so it is `Send + Sync` and meant to live as long
/// as the test or tool that uses it.
pub struct ApiDescription {
    doc: Value,
    templates: Vec<(Template, String)>,
    /// Per template (same index as `templates`): upper-case method → operation index.
    methods: Vec<HashMap<String, usize>>,
    operations: Vec<Operation>,
    /// Path prefixes of the declared servers (`/api/v2` for Neon), for recordings that kept it.
    base_paths: Vec<String>,
    definitions: Definitions,
    validators: Mutex<HashMap<(usize, Target), Arc<Compiled>>>,
    /// Shared so that a pattern repeated across operations (Neon's id patterns) compiles once.
    patterns: jsonschema::PatternCache,
}

/// The body a validator is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Target {
    Request,
    /// Index into [`Operation::responses`].
    Response(usize),
}

type Compiled = Result<jsonschema::Validator, String>;

#[derive(Debug)]
struct Operation {
    name: String,
    query: Vec<QueryParam>,
    request: Option<RequestBody>,
    /// Response key as written (`"200"`, `"4XX"`, `"default"`) and its JSON schema, if any.
    responses: Vec<(String, Option<Value>)>,
}

#[derive(Debug)]
struct QueryParam {
    name: String,
    required: bool,
    /// The parameter's schema with references followed; `None` when it declares none.
    schema: Option<Value>,
    /// `style: form, explode: false` sends arrays comma-separated in one value.
    comma_separated: bool,
    /// `style: deepObject` sends `name[key]=value`.
    deep_object: bool,
}

#[derive(Debug)]
struct RequestBody {
    required: bool,
    /// Whether `application/json` is among the media types.
    json: bool,
    schema: Option<Value>,
    media_types: Vec<String>,
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Violation messages are cut to about this many characters.
const MESSAGE_LIMIT: usize = 300;
/// Schema errors reported per body; the rest are counted.
const ERRORS_PER_BODY: usize = 10;

impl ApiDescription {
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Io {
            path: path.to_owned(),
            source,
        })?;
        let doc = serde_json::from_slice(&bytes).map_err(|source| LoadError::Json {
            path: path.to_owned(),
            source,
        })?;
        Self::from_value(doc)
    }

    pub fn from_value(doc: Value) -> Result<Self, LoadError> {
        let not = |reason: &str| LoadError::NotOpenApi3 {
            reason: reason.to_owned(),
        };
        match doc.get("openapi").and_then(Value::as_str) {
            Some(version) if version.starts_with("3.") => {}
            Some(version) => {
                return Err(LoadError::NotOpenApi3 {
                    reason: format!("`openapi` is {version:?}"),
                });
            }
            None if doc.get("swagger").is_some() => {
                return Err(not("this is a Swagger 2.0 document"));
            }
            None => return Err(not("no `openapi` version field")),
        }
        let path_items = doc
            .get("paths")
            .and_then(Value::as_object)
            .ok_or_else(|| not("no `paths` object"))?;

        let mut templates = Vec::new();
        let mut methods = Vec::new();
        let mut operations = Vec::new();
        for (text, item) in path_items {
            let Some(item) = follow(&doc, item).and_then(Value::as_object) else {
                continue;
            };
            let shared = item.get("parameters");
            let mut by_method = HashMap::new();
            for method in METHODS {
                let Some(op) = item.get(method).and_then(Value::as_object) else {
                    continue;
                };
                let name = format!("{} {text}", method.to_ascii_uppercase());
                by_method.insert(method.to_ascii_uppercase(), operations.len());
                operations.push(Operation::parse(&doc, name, shared, op));
            }
            templates.push((Template::parse(text), text.clone()));
            methods.push(by_method);
        }
        let base_paths = doc
            .get("servers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|s| s.get("url").and_then(Value::as_str))
            .filter_map(server_base_path)
            .collect();
        let definitions = Definitions::convert(&doc);
        Ok(ApiDescription {
            doc,
            templates,
            methods,
            operations,
            base_paths,
            definitions,
            validators: Mutex::new(HashMap::new()),
            patterns: jsonschema::PatternCache::new(),
        })
    }

    /// The operation template an exchange matches, e.g. `"GET /v9/projects/{idOrName}"`.
    pub fn operation_for(&self, method: &str, path: &str) -> Option<String> {
        self.find(method, path)
            .ok()
            .map(|i| self.operations[i].name.clone())
    }

    /// Every operation, as `"METHOD /template"`, in the order of the description.
    pub fn operations(&self) -> impl Iterator<Item = &str> {
        self.operations.iter().map(|op| op.name.as_str())
    }

    /// Every way the exchange departs from the description; empty means conformant.
    pub fn check(&self, exchange: &Exchange) -> Vec<Violation> {
        let index = match self.find(&exchange.method, &exchange.path) {
            Ok(index) => index,
            Err(message) => {
                return vec![Violation {
                    operation: format!(
                        "{} {}",
                        exchange.method.to_ascii_uppercase(),
                        exchange.path
                    ),
                    message: bounded(message),
                }];
            }
        };
        let op = &self.operations[index];
        let mut messages = Vec::new();
        op.check_query(&exchange.query, &mut messages);
        self.check_request(index, exchange.request_body.as_ref(), &mut messages);
        self.check_response(
            index,
            exchange.status,
            exchange.response_body.as_ref(),
            &mut messages,
        );
        messages
            .into_iter()
            .map(|message| Violation {
                operation: op.name.clone(),
                message: bounded(message),
            })
            .collect()
    }

    /// Compiles the validator of every declared JSON body (request and each response of
    /// every operation) now rather than on first use, and reports which failed.
    pub fn compile_all(&self) -> CompileReport {
        let mut report = CompileReport::default();
        for (index, op) in self.operations.iter().enumerate() {
            let mut targets = Vec::new();
            if op.request.as_ref().is_some_and(|r| r.schema.is_some()) {
                targets.push((Target::Request, "request".to_owned()));
            }
            for (i, (key, schema)) in op.responses.iter().enumerate() {
                if schema.is_some() {
                    targets.push((Target::Response(i), format!("response {key}")));
                }
            }
            for (target, label) in targets {
                match self.validator(index, target).as_ref() {
                    Ok(_) => report.compiled += 1,
                    Err(error) => report
                        .failed
                        .push((format!("{} {label}", op.name), error.clone())),
                }
            }
        }
        report
    }

    /// The operation index for a method and path, or why there is none.
    fn find(&self, method: &str, path: &str) -> Result<usize, String> {
        let method = method.to_ascii_uppercase();
        let mut candidates = vec![path];
        for base in &self.base_paths {
            if let Some(rest) = path.strip_prefix(base.as_str())
                && rest.starts_with('/')
            {
                candidates.push(rest);
            }
        }
        let mut path_matched: Option<&str> = None;
        for candidate in candidates {
            let mut best: Option<(usize, (usize, usize))> = None;
            for (i, (template, text)) in self.templates.iter().enumerate() {
                if !template.matches(candidate) {
                    continue;
                }
                let Some(&op) = self.methods[i].get(&method) else {
                    // The more specific template may lack the method while a generic one
                    // has it (`/projects/shared` vs `/projects/{id}`); keep looking.
                    path_matched.get_or_insert(text.as_str());
                    continue;
                };
                let rank = template.specificity();
                if best.is_none_or(|(_, r)| rank > r) {
                    best = Some((op, rank));
                }
            }
            if let Some((op, _)) = best {
                return Ok(op);
            }
        }
        Err(match path_matched {
            Some(template) => {
                format!(
                    "no operation for {method}: path matches {template}, which does not declare {method}"
                )
            }
            None => format!("no operation for {method} {path}: no path template matches"),
        })
    }

    fn check_request(&self, index: usize, body: Option<&Value>, out: &mut Vec<String>) {
        let op = &self.operations[index];
        match (&op.request, body) {
            (None, None) => {}
            (None, Some(_)) => {
                out.push("request body sent, but the operation declares none".into())
            }
            (Some(declared), None) => {
                if declared.required {
                    out.push("request body is required but none was sent".into());
                }
            }
            (Some(declared), Some(body)) => {
                if !declared.json {
                    out.push(format!(
                        "JSON request body sent, but the operation accepts only {}",
                        declared.media_types.join(", ")
                    ));
                } else if declared.schema.is_some() {
                    self.validate(index, Target::Request, body, "request body", out);
                }
            }
        }
    }

    fn check_response(
        &self,
        index: usize,
        status: u16,
        body: Option<&Value>,
        out: &mut Vec<String>,
    ) {
        let op = &self.operations[index];
        let Some(chosen) = op.response_for(status) else {
            let declared: Vec<&str> = op.responses.iter().map(|(k, _)| k.as_str()).collect();
            out.push(format!(
                "status {status} is not declared (declared: {})",
                declared.join(", ")
            ));
            return;
        };
        if let (Some(_), Some(body)) = (&op.responses[chosen].1, body) {
            let label = format!("response {status} body");
            self.validate(index, Target::Response(chosen), body, &label, out);
        }
    }

    fn validate(
        &self,
        index: usize,
        target: Target,
        instance: &Value,
        label: &str,
        out: &mut Vec<String>,
    ) {
        let compiled = self.validator(index, target);
        let validator = match compiled.as_ref() {
            Ok(validator) => validator,
            Err(error) => {
                out.push(format!(
                    "{label}: cannot check, its schema does not compile: {error}"
                ));
                return;
            }
        };
        let mut errors = validator.iter_errors(instance);
        for error in errors.by_ref().take(ERRORS_PER_BODY) {
            out.push(format!("{label} {}", describe(&error, 0)));
        }
        let more = errors.count();
        if more > 0 {
            out.push(format!("{label}: {more} more schema errors not shown"));
        }
    }

    /// The compiled validator for one body of one operation, compiled on first use.
    fn validator(&self, index: usize, target: Target) -> Arc<Compiled> {
        let key = (index, target);
        if let Some(found) = self.cache().get(&key) {
            return Arc::clone(found);
        }
        // Compiled outside the lock so that checks of other operations are not held up; two
        // threads racing on the same key both compile and the first insert wins.
        let compiled = Arc::new(self.compile(index, target));
        Arc::clone(self.cache().entry(key).or_insert(compiled))
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<(usize, Target), Arc<Compiled>>> {
        // A panic while holding the lock cannot leave the map half-updated (inserts are
        // single calls), so a poisoned lock is still a usable cache.
        self.validators
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn compile(&self, index: usize, target: Target) -> Compiled {
        let op = &self.operations[index];
        let (schema, direction) = match target {
            Target::Request => (
                op.request.as_ref().and_then(|r| r.schema.as_ref()),
                Direction::Request,
            ),
            Target::Response(i) => (op.responses[i].1.as_ref(), Direction::Response),
        };
        let Some(schema) = schema else {
            return Err("no schema declared".into());
        };
        let root = Converter::new(&self.doc, direction).convert(schema);
        let document = self.definitions.document(direction, root);
        jsonschema::draft202012::options()
            .should_validate_formats(false)
            .offline()
            .with_pattern_cache(self.patterns.clone())
            .build(&document)
            .map_err(|e| truncate(&e.masked().to_string(), MESSAGE_LIMIT))
    }
}

impl Operation {
    fn parse(doc: &Value, name: String, shared: Option<&Value>, op: &Map<String, Value>) -> Self {
        // Operation-level parameters override path-level ones with the same name and place.
        let mut params: Vec<&Value> = Vec::new();
        for list in [shared, op.get("parameters")] {
            for param in list.and_then(Value::as_array).into_iter().flatten() {
                let Some(param) = follow(doc, param) else {
                    continue;
                };
                let id = |p: &Value| {
                    (
                        p.get("name").cloned().unwrap_or_default(),
                        p.get("in").cloned().unwrap_or_default(),
                    )
                };
                params.retain(|existing| id(existing) != id(param));
                params.push(param);
            }
        }
        let query = params
            .into_iter()
            .filter(|p| p.get("in").and_then(Value::as_str) == Some("query"))
            .filter_map(|p| {
                let name = p.get("name")?.as_str()?.to_owned();
                let style = p.get("style").and_then(Value::as_str).unwrap_or("form");
                let explode = p
                    .get("explode")
                    .and_then(Value::as_bool)
                    .unwrap_or(style == "form");
                Some(QueryParam {
                    name,
                    required: p.get("required") == Some(&Value::Bool(true)),
                    schema: p.get("schema").and_then(|s| follow(doc, s)).cloned(),
                    comma_separated: style == "form" && !explode,
                    deep_object: style == "deepObject",
                })
            })
            .collect();
        let request = op
            .get("requestBody")
            .and_then(|b| follow(doc, b))
            .map(|body| {
                let content = body.get("content").and_then(Value::as_object);
                let json = content.and_then(json_media);
                RequestBody {
                    required: body.get("required") == Some(&Value::Bool(true)),
                    json: json.is_some(),
                    schema: json.and_then(|m| m.get("schema")).cloned(),
                    media_types: content
                        .map(|c| c.keys().cloned().collect())
                        .unwrap_or_default(),
                }
            });
        let responses = op
            .get("responses")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(key, response)| {
                let schema = follow(doc, response)
                    .and_then(|r| r.get("content"))
                    .and_then(Value::as_object)
                    .and_then(json_media)
                    .and_then(|m| m.get("schema"))
                    .cloned();
                (key.clone(), schema)
            })
            .collect();
        Operation {
            name,
            query,
            request,
            responses,
        }
    }

    /// Exact code, then the class in either case (`4XX`, `4xx`: Cloudflare writes both),
    /// then `default`.
    fn response_for(&self, status: u16) -> Option<usize> {
        let code = status.to_string();
        let class = format!("{}xx", status / 100);
        let position =
            |wanted: &dyn Fn(&str) -> bool| self.responses.iter().position(|(k, _)| wanted(k));
        position(&|k| k == code)
            .or_else(|| position(&|k| k.eq_ignore_ascii_case(&class)))
            .or_else(|| position(&|k| k == "default"))
    }

    fn check_query(&self, sent: &[(String, String)], out: &mut Vec<String>) {
        let mut seen: HashMap<&str, Vec<&str>> = HashMap::new();
        for (name, value) in sent {
            let declared = self.query.iter().find(|p| {
                p.name == *name
                    || (p.deep_object
                        && name
                            .strip_prefix(p.name.as_str())
                            .is_some_and(|rest| rest.starts_with('[') && rest.ends_with(']')))
            });
            match declared {
                Some(param) => seen.entry(param.name.as_str()).or_default().push(value),
                None => {
                    let mut known: Vec<&str> = self.query.iter().map(|p| p.name.as_str()).collect();
                    known.sort_unstable();
                    let known = if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    };
                    out.push(format!(
                        "query parameter `{name}` is not declared (declared: {known})"
                    ));
                }
            }
        }
        for param in &self.query {
            let values = seen.get(param.name.as_str());
            let Some(values) = values else {
                if param.required {
                    out.push(format!(
                        "required query parameter `{}` is missing",
                        param.name
                    ));
                }
                continue;
            };
            let Some(schema) = &param.schema else {
                continue;
            };
            if param.deep_object {
                continue;
            }
            if schema.get("type").and_then(Value::as_str) == Some("array") {
                let items = schema.get("items").unwrap_or(&Value::Null);
                for value in values {
                    let parts: Vec<&str> = if param.comma_separated {
                        value.split(',').collect()
                    } else {
                        vec![value]
                    };
                    for part in parts {
                        if let Err(expected) = query_value(items, part, 0) {
                            out.push(format!(
                                "query parameter `{}`: {} is not {expected}",
                                param.name,
                                quoted(part)
                            ));
                        }
                    }
                }
                continue;
            }
            if values.len() > 1 {
                out.push(format!(
                    "query parameter `{}` sent {} times, but it is not an array",
                    param.name,
                    values.len()
                ));
            }
            for value in values {
                if let Err(expected) = query_value(schema, value, 0) {
                    out.push(format!(
                        "query parameter `{}`: {} is not {expected}",
                        param.name,
                        quoted(value)
                    ));
                }
            }
        }
    }
}

/// The `application/json` media type object of a `content` map, ignoring parameters such as
/// `; charset=utf-8` and case. Vendor types like `application/stream+json` (Vercel's event
/// stream) are deliberately not included: they are not one JSON document.
fn json_media(content: &Map<String, Value>) -> Option<&Value> {
    content.iter().find_map(|(media, object)| {
        let essence = media.split(';').next().unwrap_or_default().trim();
        essence
            .eq_ignore_ascii_case("application/json")
            .then_some(object)
    })
}

/// Checks one query-string value against what can be read off a string: `enum`, and
/// `type` integer, number or boolean; through `anyOf`/`oneOf` (some branch must accept) and
/// `allOf` (every branch must). Parameter schemas were resolved at load, so no `$ref` is
/// followed here. `Err` carries what was expected.
fn query_value(schema: &Value, value: &str, depth: usize) -> Result<(), String> {
    if depth > 4 {
        return Ok(());
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.is_empty()
        && !allowed.iter().any(|a| match a {
            Value::String(s) => s == value,
            Value::Bool(b) => value == if *b { "true" } else { "false" },
            // Numerically, so that `1.0` in the URL matches `1` in the spec.
            Value::Number(n) => value.parse::<f64>().ok() == n.as_f64(),
            _ => false,
        })
    {
        let listed: Vec<String> = allowed.iter().map(Value::to_string).collect();
        return Err(truncate(&format!("one of {}", listed.join(", ")), 120));
    }
    let type_ok = match schema.get("type").and_then(Value::as_str) {
        Some("integer") => value.parse::<i64>().is_ok() || value.parse::<u64>().is_ok(),
        Some("number") => value.parse::<f64>().is_ok_and(f64::is_finite),
        Some("boolean") => value == "true" || value == "false",
        _ => true,
    };
    if !type_ok {
        let kind = schema
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        return Err(format!("a valid {kind}"));
    }
    for union in ["anyOf", "oneOf"] {
        if let Some(branches) = schema.get(union).and_then(Value::as_array)
            && !branches.is_empty()
        {
            let mut expected = Vec::new();
            for branch in branches {
                match query_value(branch, value, depth + 1) {
                    Ok(()) => {
                        expected.clear();
                        break;
                    }
                    Err(e) => expected.push(e),
                }
            }
            if !expected.is_empty() {
                return Err(truncate(&expected.join(" or "), 160));
            }
        }
    }
    if let Some(branches) = schema.get("allOf").and_then(Value::as_array) {
        for branch in branches {
            query_value(branch, value, depth + 1)?;
        }
    }
    Ok(())
}

/// `where: what` for one schema error, without echoing large values. An `anyOf` failure
/// (also every converted `oneOf` and every nullable reference) says nothing useful by
/// itself, so the closest alternative's first error is appended.
fn describe(error: &jsonschema::ValidationError<'_>, depth: usize) -> String {
    let location = error.instance_path().to_string();
    let location = if location.is_empty() {
        "(root)".to_owned()
    } else {
        location
    };
    let small = match error.instance().as_ref() {
        Value::Object(_) | Value::Array(_) => false,
        value => value.to_string().len() <= 64,
    };
    let mut text = if small {
        error.to_string()
    } else {
        error.masked_with("value").to_string()
    };
    if let jsonschema::error::ValidationErrorKind::AnyOf { context } = error.kind()
        && depth < 3
        && let Some(closest) = closest_alternative(context, error.instance_path().as_str())
    {
        let _ = write!(
            text,
            "; closest alternative: {}",
            describe(closest, depth + 1)
        );
    }
    format!("at {location}: {text}")
}

/// The alternative that got furthest: its first error sits deepest in the instance, then
/// the one with the fewest errors. A branch that failed on `type` right where the `anyOf`
/// applies was the wrong shape altogether (such as the `{type: null}` added for
/// `nullable`) and is passed over while another branch exists.
fn closest_alternative<'e>(
    context: &'e [Vec<jsonschema::ValidationError<'static>>],
    at: &str,
) -> Option<&'e jsonschema::ValidationError<'static>> {
    let wrong_shape = |branch: &Vec<jsonschema::ValidationError<'static>>| {
        branch.len() == 1
            && branch[0].instance_path().as_str() == at
            && matches!(
                branch[0].kind(),
                jsonschema::error::ValidationErrorKind::Type { .. }
            )
    };
    let branches: Vec<&Vec<_>> = context.iter().filter(|b| !b.is_empty()).collect();
    let shaped: Vec<&Vec<_>> = branches
        .iter()
        .copied()
        .filter(|b| !wrong_shape(b))
        .collect();
    let pool = if shaped.is_empty() { branches } else { shaped };
    pool.into_iter()
        .max_by_key(|branch| {
            let depth = branch
                .iter()
                .map(|e| e.instance_path().as_str().matches('/').count())
                .max()
                .unwrap_or(0);
            (depth, std::cmp::Reverse(branch.len()))
        })
        .map(|branch| &branch[0])
}

fn quoted(value: &str) -> String {
    truncate(&format!("{value:?}"), 64)
}

fn bounded(message: String) -> String {
    if message.chars().count() <= MESSAGE_LIMIT {
        message
    } else {
        truncate(&message, MESSAGE_LIMIT)
    }
}

/// Cuts `text` to at most `limit` characters, marking the cut with `…`.
fn truncate(text: &str, limit: usize) -> String {
    match text.char_indices().nth(limit.saturating_sub(1)) {
        Some((cut, _)) if text.chars().count() > limit => format!("{}…", &text[..cut]),
        _ => text.to_owned(),
    }
}

/// The path part of a server URL (`https://console.neon.tech/api/v2` → `/api/v2`), if any.
fn server_base_path(url: &str) -> Option<String> {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = after_scheme.find('/').map_or("", |i| &after_scheme[i..]);
    let path = path.trim_end_matches('/');
    (!path.is_empty() && !path.contains('{')).then(|| path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::{server_base_path, truncate};

    #[test]
    fn truncation_counts_characters_and_marks_the_cut() {
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("abcd", 3), "ab…");
        assert_eq!(truncate("ééééé", 3), "éé…");
    }

    #[test]
    fn server_urls_yield_their_base_path() {
        assert_eq!(
            server_base_path("https://console.neon.tech/api/v2").as_deref(),
            Some("/api/v2")
        );
        assert_eq!(server_base_path("https://api.vercel.com"), None);
        assert_eq!(server_base_path("https://api.turso.tech/"), None);
    }
}

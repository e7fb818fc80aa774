//! Google API Discovery documents (`run.v2.discovery.json`, `secretmanager.v1…`,
//! `sqladmin.v1…`) translated into the OpenAPI 3.0 form the rest of this module checks
//! against, so one checker serves every provider.
//!
//! This module owns the translation only: each method's `flatPath` (or `path` when it has no
//! reserved expansion) and `httpMethod` become an OpenAPI path and operation, with custom
//! verbs kept in the last segment (`…/services/{servicesId}:setIamPolicy`, which the path
//! matcher ranks above the bare `{servicesId}`); `location: query` parameters, plus the
//! document-wide ones (`alt`, `fields`, `prettyPrint`…), become query parameters;
//! `request`/`response` references become bodies; `schemas` become `components.schemas`
//! with bare `$ref: "Name"` turned into component references and `type: any` into "anything".
//!
//! Two readings of what a Discovery document leaves unsaid:
//! - Objects with declared `properties` are closed (`additionalProperties: false`): Google's
//!   front end rejects unknown request fields ("Invalid JSON payload received. Unknown
//!   name"), and an emulator answer with a field the API does not have is a bug worth seeing.
//! - Errors: Discovery documents declare no error responses. Every operation gets a
//!   `default` response with Google's JSON error format (AIP-193: `{"error": {code, message,
//!   status, details}}`), so error answers are checked too rather than waved through.

use serde_json::{Map, Value, json};

use super::{ApiDescription, LoadError};

impl ApiDescription {
    /// Load a Google API Discovery document from a file.
    pub fn from_discovery_file(path: &std::path::Path) -> Result<Self, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Io {
            path: path.to_owned(),
            source,
        })?;
        let doc: Value = serde_json::from_slice(&bytes).map_err(|source| LoadError::Json {
            path: path.to_owned(),
            source,
        })?;
        Self::from_discovery(&doc)
    }

    /// Translate a parsed Discovery document and load it as an OpenAPI description.
    pub fn from_discovery(doc: &Value) -> Result<Self, LoadError> {
        Self::from_value(to_openapi(doc)?)
    }
}

/// The OpenAPI 3.0 document equivalent to a Discovery document.
pub(crate) fn to_openapi(doc: &Value) -> Result<Value, LoadError> {
    let not = |reason: &str| LoadError::NotOpenApi3 {
        reason: format!("not a Google Discovery document: {reason}"),
    };
    if doc.get("discoveryVersion").is_none() || doc.get("resources").is_none() {
        return Err(not("no `discoveryVersion` or `resources`"));
    }
    let global: Vec<Value> = doc
        .get("parameters")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(name, p)| query_parameter(name, p))
        .collect();
    let mut paths = Map::new();
    let mut methods = Vec::new();
    collect_methods(doc, &mut methods);
    for method in methods {
        let Some(http) = method.get("httpMethod").and_then(Value::as_str) else {
            continue;
        };
        let Some(path) = method
            .get("flatPath")
            .or_else(|| method.get("path"))
            .and_then(Value::as_str)
        else {
            continue;
        };
        let template = format!("/{}", path.trim_start_matches('/'));
        let mut parameters: Vec<Value> = global.clone();
        for (name, p) in method
            .get("parameters")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            if let Some(q) = query_parameter(name, p) {
                parameters.retain(|g| g.get("name") != Some(&Value::String(name.clone())));
                parameters.push(q);
            }
        }
        let mut operation = Map::new();
        operation.insert("parameters".into(), Value::Array(parameters));
        if let Some(name) = ref_name(method.get("request")) {
            operation.insert(
                "requestBody".into(),
                json!({"required": true, "content": {"application/json": {"schema": component(name)}}}),
            );
        }
        let ok = match ref_name(method.get("response")) {
            Some(name) => {
                json!({"description": "OK", "content": {"application/json": {"schema": component(name)}}})
            }
            None => json!({"description": "OK"}),
        };
        operation.insert(
            "responses".into(),
            json!({
                "200": ok,
                "default": {"description": "Google JSON error", "content": {"application/json": {"schema": error_schema()}}},
            }),
        );
        let item = paths
            .entry(template)
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(item) = item.as_object_mut() {
            // Two resources can expose the same path (aliases); the first one stands.
            item.entry(http.to_ascii_lowercase())
                .or_insert(Value::Object(operation));
        }
    }
    let schemas: Map<String, Value> = doc
        .get("schemas")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(name, s)| (name.clone(), schema(s)))
        .collect();
    let base = format!(
        "{}{}",
        doc.get("rootUrl").and_then(Value::as_str).unwrap_or(""),
        doc.get("servicePath").and_then(Value::as_str).unwrap_or("")
    );
    Ok(json!({
        "openapi": "3.0.3",
        "info": {
            "title": doc.get("title").cloned().unwrap_or(Value::Null),
            "version": doc.get("version").cloned().unwrap_or(Value::Null),
        },
        "servers": [{"url": base}],
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

/// Every method of every (nested) resource, in document order.
fn collect_methods<'v>(node: &'v Value, out: &mut Vec<&'v Value>) {
    if let Some(methods) = node.get("methods").and_then(Value::as_object) {
        out.extend(methods.values());
    }
    if let Some(resources) = node.get("resources").and_then(Value::as_object) {
        for r in resources.values() {
            collect_methods(r, out);
        }
    }
}

fn ref_name(v: Option<&Value>) -> Option<&str> {
    v?.get("$ref")?.as_str()
}

fn component(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// Google's JSON error body (google.rpc.Status under `error`, with the HTTP code).
fn error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["error"],
        "additionalProperties": false,
        "properties": {"error": {
            "type": "object",
            "required": ["code", "message"],
            "additionalProperties": false,
            "properties": {
                "code": {"type": "integer"},
                "message": {"type": "string"},
                "status": {"type": "string"},
                "details": {"type": "array", "items": {"type": "object"}},
            },
        }},
    })
}

/// A `location: query` parameter as an OpenAPI parameter; `None` for path parameters.
fn query_parameter(name: &str, p: &Value) -> Option<Value> {
    if p.get("location").and_then(Value::as_str) != Some("query") {
        return None;
    }
    let mut s = Map::new();
    if let Some(t) = p.get("type").and_then(Value::as_str)
        && matches!(t, "string" | "integer" | "boolean" | "number")
    {
        s.insert("type".into(), json!(t));
    }
    if let Some(e) = p.get("enum") {
        s.insert("enum".into(), e.clone());
    }
    let mut s = Value::Object(s);
    if p.get("repeated") == Some(&Value::Bool(true)) {
        s = json!({"type": "array", "items": s});
    }
    Some(json!({
        "name": name,
        "in": "query",
        "required": p.get("required") == Some(&Value::Bool(true)),
        "schema": s,
    }))
}

/// One Discovery schema as an OpenAPI Schema Object.
fn schema(s: &Value) -> Value {
    let Some(src) = s.as_object() else {
        return json!({});
    };
    let mut out = Map::new();
    if let Some(name) = src.get("$ref").and_then(Value::as_str) {
        return component(name);
    }
    match src.get("type").and_then(Value::as_str) {
        // `any`: a JSON value of any kind (google.protobuf.Value, Any's fields).
        Some("any") | None => {}
        Some(t) => {
            out.insert("type".into(), json!(t));
        }
    }
    for k in ["format", "enum", "readOnly", "pattern"] {
        if let Some(v) = src.get(k) {
            out.insert(k.into(), v.clone());
        }
    }
    if let Some(items) = src.get("items") {
        out.insert("items".into(), schema(items));
    }
    if let Some(props) = src.get("properties").and_then(Value::as_object) {
        let converted: Map<String, Value> =
            props.iter().map(|(k, v)| (k.clone(), schema(v))).collect();
        out.insert("properties".into(), Value::Object(converted));
        if !src.contains_key("additionalProperties") {
            out.insert("additionalProperties".into(), Value::Bool(false));
        }
    }
    if let Some(extra) = src.get("additionalProperties") {
        out.insert("additionalProperties".into(), schema(extra));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::Exchange;

    fn doc() -> Value {
        json!({
            "discoveryVersion": "v1",
            "rootUrl": "https://example.googleapis.com/",
            "servicePath": "",
            "parameters": {"alt": {"location": "query", "type": "string", "enum": ["json", "media"]}},
            "resources": {"projects": {"resources": {"secrets": {
                "methods": {
                    "get": {"httpMethod": "GET", "flatPath": "v1/projects/{projectsId}/secrets/{secretsId}", "path": "v1/{+name}",
                        "parameters": {"name": {"location": "path", "type": "string", "required": true}},
                        "response": {"$ref": "Secret"}},
                    "create": {"httpMethod": "POST", "flatPath": "v1/projects/{projectsId}/secrets", "path": "v1/{+parent}/secrets",
                        "parameters": {"secretId": {"location": "query", "type": "string"}, "pageSize": {"location": "query", "type": "integer"}},
                        "request": {"$ref": "Secret"}, "response": {"$ref": "Secret"}},
                    "addVersion": {"httpMethod": "POST", "flatPath": "v1/projects/{projectsId}/secrets/{secretsId}:addVersion", "path": "v1/{+parent}:addVersion",
                        "request": {"$ref": "Add"}, "response": {"$ref": "Version"}},
                    "delete": {"httpMethod": "DELETE", "flatPath": "v1/projects/{projectsId}/secrets/{secretsId}", "path": "v1/{+name}",
                        "response": {"$ref": "Empty"}}
                }
            }}}},
            "schemas": {
                "Secret": {"id": "Secret", "type": "object", "properties": {
                    "name": {"type": "string", "readOnly": true},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "replication": {"$ref": "Replication"}
                }},
                "Replication": {"type": "object", "properties": {"automatic": {"type": "object", "properties": {}}}},
                "Add": {"type": "object", "properties": {"payload": {"type": "object", "properties": {"data": {"type": "string", "format": "byte"}}}}},
                "Version": {"type": "object", "properties": {"name": {"type": "string"}, "state": {"type": "string", "enum": ["ENABLED", "DISABLED"]}}},
                "Empty": {"type": "object", "properties": {}},
                "Anything": {"type": "any"}
            }
        })
    }

    fn ex(
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        req: Option<Value>,
        status: u16,
        resp: Option<Value>,
    ) -> Exchange {
        Exchange {
            method: method.into(),
            path: path.into(),
            query: query
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            request_body: req,
            status,
            response_body: resp,
        }
    }

    #[test]
    fn paths_and_custom_verbs_route_to_their_methods() {
        let api = ApiDescription::from_discovery(&doc()).unwrap();
        assert_eq!(
            api.operation_for("POST", "/v1/projects/p/secrets/s:addVersion")
                .as_deref(),
            Some("POST /v1/projects/{projectsId}/secrets/{secretsId}:addVersion")
        );
        assert_eq!(
            api.operation_for("GET", "/v1/projects/p/secrets/s")
                .as_deref(),
            Some("GET /v1/projects/{projectsId}/secrets/{secretsId}")
        );
        assert_eq!(api.operation_for("PUT", "/v1/projects/p/secrets/s"), None);
    }

    #[test]
    fn bodies_queries_and_errors_are_checked() {
        let api = ApiDescription::from_discovery(&doc()).unwrap();
        let good = ex(
            "POST",
            "/v1/projects/p/secrets",
            &[("secretId", "a"), ("alt", "json")],
            Some(json!({"labels": {"x": "y"}, "replication": {"automatic": {}}})),
            200,
            Some(json!({"name": "projects/p/secrets/a", "labels": {"x": "y"}})),
        );
        assert_eq!(api.check(&good), vec![]);
        // Unknown fields, wrong types, undeclared and badly typed query parameters.
        let bad = ex(
            "POST",
            "/v1/projects/p/secrets",
            &[("secretId", "a"), ("pageSize", "x"), ("colour", "red")],
            Some(json!({"labels": {"x": 1}, "replicaton": {}})),
            200,
            Some(json!({"name": 5})),
        );
        let v = api.check(&bad);
        let text = format!("{v:?}");
        assert!(text.contains("`colour` is not declared"), "{text}");
        assert!(text.contains("`pageSize`"), "{text}");
        assert!(text.contains("replicaton"), "{text}");
        assert!(text.contains("/labels/x"), "{text}");
        assert!(text.contains("response 200 body at /name"), "{text}");
        // Enum values in responses, and Google's error envelope on any error status.
        let state = ex(
            "POST",
            "/v1/projects/p/secrets/s:addVersion",
            &[],
            Some(json!({"payload": {"data": "aGk="}})),
            200,
            Some(json!({"name": "v", "state": "GONE"})),
        );
        assert_eq!(api.check(&state).len(), 1);
        let err = ex(
            "DELETE",
            "/v1/projects/p/secrets/s",
            &[],
            None,
            404,
            Some(json!({"error": {"code": 404, "message": "nope", "status": "NOT_FOUND"}})),
        );
        assert_eq!(api.check(&err), vec![]);
        let wrong = ex(
            "DELETE",
            "/v1/projects/p/secrets/s",
            &[],
            None,
            404,
            Some(json!({"code": "not_found"})),
        );
        assert!(!api.check(&wrong).is_empty());
    }

    #[test]
    fn other_documents_are_refused() {
        assert!(ApiDescription::from_discovery(&json!({"openapi": "3.0.0"})).is_err());
    }
}

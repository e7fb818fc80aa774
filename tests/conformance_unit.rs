//! Tests of `telbase::conformance` against the providers' published OpenAPI descriptions.
//!
//! The descriptions live outside the crate, in `../shared/provider-apis/` (or wherever
//! `TELBASE_PROVIDER_APIS` points). Without them these tests skip locally and fail in CI,
//! because a green CI run that checked nothing would be a lie. Bodies below use real shapes
//! from those files, so each assertion can fail if the checker misreads them.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

use serde_json::{Value, json};
use telbase::conformance::{ApiDescription, Exchange, LoadError, Violation};

mod common;
use common::provider_apis;

/// Loads a description once per test binary; tests share it across threads, which also
/// exercises the validator cache under concurrency.
fn shared(
    cell: &'static OnceLock<Option<ApiDescription>>,
    file: &str,
) -> Option<&'static ApiDescription> {
    cell.get_or_init(|| {
        let path = provider_apis()?.join(file);
        Some(ApiDescription::from_file(&path).unwrap_or_else(|e| panic!("{e}")))
    })
    .as_ref()
}

fn vercel() -> Option<&'static ApiDescription> {
    static CELL: OnceLock<Option<ApiDescription>> = OnceLock::new();
    shared(&CELL, "vercel/vercel-openapi.subset.json")
}

fn neon() -> Option<&'static ApiDescription> {
    static CELL: OnceLock<Option<ApiDescription>> = OnceLock::new();
    shared(&CELL, "neon/neon-openapi.v2.json")
}

fn cloudflare() -> Option<&'static ApiDescription> {
    static CELL: OnceLock<Option<ApiDescription>> = OnceLock::new();
    shared(&CELL, "cloudflare/cloudflare-openapi.subset.json")
}

fn turso() -> Option<&'static ApiDescription> {
    static CELL: OnceLock<Option<ApiDescription>> = OnceLock::new();
    shared(&CELL, "turso/turso-openapi.json")
}

fn exchange(method: &str, path: &str, status: u16) -> Exchange {
    Exchange {
        method: method.into(),
        path: path.into(),
        query: Vec::new(),
        request_body: None,
        status,
        response_body: None,
    }
}

fn query(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn messages(violations: &[Violation]) -> Vec<&str> {
    violations.iter().map(|v| v.message.as_str()).collect()
}

/// Asserts exactly one violation and that its message mentions every fragment.
#[track_caller]
fn assert_one(violations: &[Violation], fragments: &[&str]) {
    assert_eq!(violations.len(), 1, "{:#?}", messages(violations));
    for fragment in fragments {
        assert!(
            violations[0].message.contains(fragment),
            "{:?} lacks {fragment:?}",
            violations[0].message
        );
    }
}

/// A createProject 200 body with every field the spec requires and a few optional ones.
fn vercel_project() -> Value {
    json!({
        "accountId": "team_123",
        "directoryListing": false,
        "id": "prj_123",
        "name": "notes-web",
        "nodeVersion": "22.x",
        "framework": "nextjs",
        "createdAt": 1_730_000_000_000u64,
        "resourceConfig": {"functionDefaultRegions": ["iad1"]},
        "defaultResourceConfig": {"functionDefaultRegions": ["iad1"]}
    })
}

/// A Neon 201 body for `POST /projects`: every field `CreatedProject` requires, with the
/// lists empty (an empty list satisfies `items`).
fn neon_created_project() -> Value {
    let at = "2025-10-01T12:00:00Z";
    json!({
        "project": {
            "consumption_period_end": at, "consumption_period_start": at,
            "active_time_seconds": 0, "compute_time_seconds": 0, "written_data_bytes": 0,
            "data_transfer_bytes": 0, "data_storage_bytes_hour": 0,
            "id": "p-1", "platform_id": "aws", "region_id": "aws-us-east-2", "name": "notes",
            "pg_version": 17, "proxy_host": "us-east-2.aws.neon.tech",
            "branch_logical_size_limit": 0, "branch_logical_size_limit_bytes": 0,
            "store_passwords": true, "cpu_used_sec": 0, "provisioner": "k8s-neonvm",
            "creation_source": "console", "history_retention_seconds": 86400,
            "created_at": at, "updated_at": at, "owner_id": "u-1"
        },
        "connection_uris": [],
        "roles": [],
        "databases": [],
        "operations": [],
        "branch": {
            "id": "br-1", "project_id": "p-1", "name": "main", "current_state": "ready",
            "state_changed_at": at, "creation_source": "console", "created_at": at,
            "updated_at": at, "default": true, "protected": false, "cpu_used_sec": 0,
            "active_time_seconds": 0, "compute_time_seconds": 0, "written_data_bytes": 0,
            "data_transfer_bytes": 0
        },
        "endpoints": []
    })
}

#[test]
fn exchanges_match_their_operation_templates() {
    let (Some(vercel), Some(neon)) = (vercel(), neon()) else {
        return;
    };
    assert_eq!(
        vercel.operation_for("GET", "/v9/projects/prj_1").as_deref(),
        Some("GET /v9/projects/{idOrName}")
    );
    assert_eq!(
        vercel
            .operation_for("post", "/v10/projects/x/env")
            .as_deref(),
        Some("POST /v10/projects/{idOrName}/env")
    );
    assert_eq!(
        vercel
            .operation_for("PATCH", "/v9/projects/x/env/env_1")
            .as_deref(),
        Some("PATCH /v9/projects/{idOrName}/env/{id}")
    );
    assert_eq!(vercel.operation_for("GET", "/v9/projects/"), None);
    assert_eq!(vercel.operation_for("GET", "/v9/projects/a/b/c/d"), None);
    assert_eq!(
        neon.operation_for("GET", "/projects/p-1/connection_uri")
            .as_deref(),
        Some("GET /projects/{project_id}/connection_uri")
    );
    // A recording that kept the server's base path (`https://console.neon.tech/api/v2`).
    assert_eq!(
        neon.operation_for("GET", "/api/v2/projects/p-1/connection_uri")
            .as_deref(),
        Some("GET /projects/{project_id}/connection_uri")
    );
    // The literal route wins where it declares the method, the template where it does not.
    assert_eq!(
        neon.operation_for("GET", "/projects/shared").as_deref(),
        Some("GET /projects/shared")
    );
    assert_eq!(
        neon.operation_for("DELETE", "/projects/shared").as_deref(),
        Some("DELETE /projects/{project_id}")
    );
    assert_eq!(
        neon.operation_for("GET", "/projects/p-1/branches/count")
            .as_deref(),
        Some("GET /projects/{project_id}/branches/count")
    );
}

#[test]
fn unmatched_exchanges_are_one_violation_naming_the_raw_request() {
    let Some(vercel) = vercel() else {
        return;
    };
    let made_up = vercel.check(&exchange("GET", "/v9/widgets/w_1", 200));
    assert_one(&made_up, &["no operation"]);
    assert_eq!(made_up[0].operation, "GET /v9/widgets/w_1");
    let wrong_method = vercel.check(&exchange("PUT", "/v9/projects/prj_1", 200));
    assert_one(&wrong_method, &["no operation", "/v9/projects/{idOrName}"]);
}

#[test]
fn a_valid_vercel_create_project_passes() {
    let Some(vercel) = vercel() else {
        return;
    };
    let ok = Exchange {
        query: query(&[("teamId", "team_123")]),
        request_body: Some(json!({"name": "notes-web", "framework": "nextjs"})),
        response_body: Some(vercel_project()),
        ..exchange("POST", "/v11/projects", 200)
    };
    assert_eq!(vercel.check(&ok), Vec::<Violation>::new());
    // The declared error responses carry no schema, so any body is accepted there.
    let conflict = Exchange {
        request_body: Some(json!({"name": "notes-web"})),
        response_body: Some(json!({"error": {"code": "conflict", "message": "exists"}})),
        ..exchange("POST", "/v11/projects", 409)
    };
    assert_eq!(vercel.check(&conflict), Vec::<Violation>::new());
}

#[test]
fn vercel_create_project_request_errors_are_located() {
    let Some(vercel) = vercel() else {
        return;
    };
    let with_body = |body: Value| Exchange {
        request_body: Some(body),
        response_body: Some(vercel_project()),
        ..exchange("POST", "/v11/projects", 200)
    };
    let wrong_type = vercel.check(&with_body(json!({"name": "notes-web", "framework": 42})));
    assert_one(&wrong_type, &["request body", "/framework", "42"]);
    assert_eq!(wrong_type[0].operation, "POST /v11/projects");
    let no_name = vercel.check(&with_body(json!({"framework": "nextjs"})));
    assert_one(&no_name, &["request body", "\"name\"", "required"]);
    // The spec closes this body with `additionalProperties: false`; the checker keeps that.
    let extra = vercel.check(&with_body(json!({"name": "notes-web", "colour": "red"})));
    assert_one(&extra, &["colour"]);
}

#[test]
fn query_parameters_are_declared_required_and_typed() {
    let (Some(vercel), Some(neon)) = (vercel(), neon()) else {
        return;
    };
    let get_project = |pairs: &[(&str, &str)]| Exchange {
        query: query(pairs),
        response_body: Some(vercel_project()),
        ..exchange("GET", "/v9/projects/prj_1", 200)
    };
    assert!(
        vercel
            .check(&get_project(&[("teamId", "team_1")]))
            .is_empty()
    );
    assert_one(
        &vercel.check(&get_project(&[("verbose", "1")])),
        &["`verbose`", "not declared", "teamId"],
    );

    let uri = |pairs: &[(&str, &str)]| Exchange {
        query: query(pairs),
        response_body: Some(json!({"uri": "postgresql://app:pw@ep-1.neon.tech/app"})),
        ..exchange("GET", "/projects/p-1/connection_uri", 200)
    };
    assert!(
        neon.check(&uri(&[
            ("database_name", "app"),
            ("role_name", "app"),
            ("pooled", "true")
        ]))
        .is_empty()
    );
    let missing = neon.check(&uri(&[("database_name", "app")]));
    assert_one(&missing, &["`role_name`", "missing"]);
    assert_eq!(neon.check(&uri(&[])).len(), 2);
    assert_one(
        &neon.check(&uri(&[
            ("database_name", "a"),
            ("role_name", "a"),
            ("pooled", "yes"),
        ])),
        &["`pooled`", "\"yes\"", "boolean"],
    );

    let projects = |pairs: &[(&str, &str)]| Exchange {
        query: query(pairs),
        response_body: Some(json!({"projects": [], "applications": {}, "integrations": {}})),
        ..exchange("GET", "/projects", 200)
    };
    let fine = neon.check(&projects(&[("limit", "10"), ("timeout", "500")]));
    assert!(fine.is_empty(), "{:#?}", messages(&fine));
    assert_one(
        &neon.check(&projects(&[("limit", "ten")])),
        &["`limit`", "integer"],
    );
    // `timeout` is declared through `$ref: #/components/parameters/TimeoutParam`.
    assert_one(
        &neon.check(&projects(&[("timeout", "soon")])),
        &["`timeout`", "integer"],
    );
    assert_one(
        &neon.check(&projects(&[("limit", "1"), ("limit", "2")])),
        &["`limit`", "2 times"],
    );

    // `sort_order` is an enum (via `SortOrderParam`).
    let branches = |order: &str| Exchange {
        query: query(&[("sort_order", order)]),
        ..exchange("GET", "/projects/p-1/branches", 200)
    };
    assert!(neon.check(&branches("asc")).is_empty());
    assert_one(&neon.check(&branches("up")), &["`sort_order`", "\"asc\""]);
}

#[test]
fn request_bodies_must_be_sent_exactly_when_declared() {
    let Some(neon) = neon() else {
        return;
    };
    let create = Exchange {
        response_body: Some(neon_created_project()),
        ..exchange("POST", "/projects", 201)
    };
    assert_one(&neon.check(&create), &["request body is required"]);
    let with_body = Exchange {
        request_body: Some(json!({"project": {"name": "notes"}})),
        ..create
    };
    assert!(
        neon.check(&with_body).is_empty(),
        "{:#?}",
        neon.check(&with_body)
    );
    let get_with_body = Exchange {
        request_body: Some(json!({})),
        response_body: Some(json!({"uri": "postgresql://x"})),
        query: query(&[("database_name", "a"), ("role_name", "a")]),
        ..exchange("GET", "/projects/p-1/connection_uri", 200)
    };
    assert_one(&neon.check(&get_with_body), &["declares none"]);
}

#[test]
fn neon_create_project_response_requires_every_declared_field() {
    let Some(neon) = neon() else {
        return;
    };
    let created = |body: Value| Exchange {
        request_body: Some(json!({"project": {"name": "notes"}})),
        response_body: Some(body),
        ..exchange("POST", "/projects", 201)
    };
    assert!(neon.check(&created(neon_created_project())).is_empty());

    let mut no_owner = neon_created_project();
    no_owner["project"]
        .as_object_mut()
        .map(|p| p.remove("owner_id"));
    assert_one(
        &neon.check(&created(no_owner)),
        &["response 201 body", "/project", "\"owner_id\"", "required"],
    );

    let mut bad_state = neon_created_project();
    bad_state["branch"]["current_state"] = json!(7);
    assert_one(
        &neon.check(&created(bad_state)),
        &["/branch/current_state", "7"],
    );

    let mut bad_id = neon_created_project();
    bad_id["project"]["id"] = json!("Not An Id!");
    assert_one(
        &neon.check(&created(bad_id)),
        &["/project/id", "does not match"],
    );

    // `format: date-time` is an annotation only: providers' timestamps vary in precision.
    let mut odd_time = neon_created_project();
    odd_time["project"]["created_at"] = json!("yesterday");
    assert!(neon.check(&created(odd_time)).is_empty());
}

#[test]
fn nullable_fields_accept_null_and_nothing_else_new() {
    let (Some(vercel), Some(neon)) = (vercel(), neon()) else {
        return;
    };
    let key = |last_used: Value| {
        json!([{
            "id": 1, "name": "ci", "created_at": "2025-10-01T12:00:00Z",
            "created_by": {"id": "u-1", "name": "Ada", "image": ""},
            "last_used_at": last_used, "last_used_from_addr": ""
        }])
    };
    let keys = |body: Value| Exchange {
        response_body: Some(body),
        ..exchange("GET", "/api_keys", 200)
    };
    assert!(neon.check(&keys(key(Value::Null))).is_empty());
    assert!(
        neon.check(&keys(key(json!("2025-10-01T12:00:00Z"))))
            .is_empty()
    );
    assert_one(&neon.check(&keys(key(json!(5)))), &["/0/last_used_at"]);

    let mut project = vercel_project();
    project["buildCommand"] = Value::Null;
    project["framework"] = Value::Null; // nullable with an enum: null joins the enum
    project["passwordProtection"] = Value::Null;
    let get = |body: Value| Exchange {
        response_body: Some(body),
        ..exchange("GET", "/v9/projects/prj_1", 200)
    };
    assert!(vercel.check(&get(project.clone())).is_empty());
    project["name"] = Value::Null; // not nullable
    assert_one(&vercel.check(&get(project)), &["/name", "null"]);
}

#[test]
fn neon_general_error_is_checked_against_the_default_response() {
    let Some(neon) = neon() else {
        return;
    };
    let not_found = |body: Value| Exchange {
        response_body: Some(body),
        ..exchange("GET", "/projects/p-404", 404)
    };
    // Neon declares its errors once, as `default: $ref #/components/responses/GeneralError`.
    assert!(
        neon.check(&not_found(
            json!({"code": "", "message": "x", "request_id": "r"})
        ))
        .is_empty()
    );
    assert_one(
        &neon.check(&not_found(json!({"code": "", "request_id": "r"}))),
        &["response 404 body", "\"message\"", "required"],
    );
    assert_one(
        &neon.check(&not_found(json!({"code": 404, "message": "x"}))),
        &["/code"],
    );
}

#[test]
fn undeclared_statuses_are_reported() {
    let Some(vercel) = vercel() else {
        return;
    };
    // getProject declares 200, 400, 401, 403 and no `default`: the 404 a missing project
    // gets in practice is not in the published description, so it is a violation.
    let missing = Exchange {
        response_body: Some(json!({"error": {"code": "not_found"}})),
        ..exchange("GET", "/v9/projects/prj_gone", 404)
    };
    assert_one(
        &vercel.check(&missing),
        &["status 404", "200, 400, 401, 403"],
    );
}

#[test]
fn class_keys_match_in_either_case() {
    let doc = json!({
        "openapi": "3.0.3",
        "info": {"title": "t", "version": "1"},
        "paths": {
            "/a": {"get": {"responses": {
                "200": {"description": "ok"},
                "4xx": {"description": "client", "content": {"application/json": {"schema": {"type": "object", "required": ["errors"]}}}},
                "5XX": {"description": "server", "content": {"application/json": {"schema": {"type": "object", "required": ["fault"]}}}}
            }}}
        }
    });
    let api = ApiDescription::from_value(doc).unwrap_or_else(|e| panic!("{e}"));
    let at = |status: u16, body: Value| Exchange {
        response_body: Some(body),
        ..exchange("GET", "/a", status)
    };
    assert!(api.check(&at(404, json!({"errors": []}))).is_empty());
    assert_one(&api.check(&at(404, json!({}))), &["\"errors\""]);
    assert_one(&api.check(&at(503, json!({}))), &["\"fault\""]);
    assert_one(
        &api.check(&at(302, json!({}))),
        &["status 302 is not declared"],
    );

    // The published Cloudflare file writes `4xx` for DNS records.
    if let Some(cloudflare) = cloudflare() {
        let list = |status: u16| Exchange {
            response_body: Some(
                json!({"success": true, "errors": [], "messages": [], "result": []}),
            ),
            ..exchange("GET", "/zones/z1/dns_records", status)
        };
        assert!(cloudflare.check(&list(200)).is_empty());
        assert!(
            !messages(&cloudflare.check(&list(404)))
                .iter()
                .any(|m| m.contains("not declared"))
        );
        assert_one(
            &cloudflare.check(&list(500)),
            &["status 500 is not declared"],
        );
    }
}

#[test]
fn read_only_and_write_only_apply_per_direction() {
    let doc = json!({
        "openapi": "3.0.3",
        "info": {"title": "t", "version": "1"},
        "paths": {"/users/{id}:activate": {"post": {
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/User"}}}},
            "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/User"}}}}}
        }}},
        "components": {"schemas": {
            "Id": {"type": "string", "readOnly": true},
            "User": {
                "type": "object",
                "required": ["id", "name", "password"],
                "properties": {
                    "id": {"$ref": "#/components/schemas/Id"},
                    "name": {"type": "string"},
                    "password": {"type": "string", "writeOnly": true}
                }
            }
        }}
    });
    let api = ApiDescription::from_value(doc).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        api.operation_for("POST", "/users/u1:activate").as_deref(),
        Some("POST /users/{id}:activate")
    );
    let post = |request: Value, response: Value| Exchange {
        request_body: Some(request),
        response_body: Some(response),
        ..exchange("POST", "/users/u1:activate", 200)
    };
    let ok = post(
        json!({"name": "a", "password": "p"}),
        json!({"id": "u1", "name": "a"}),
    );
    assert!(api.check(&ok).is_empty(), "{:#?}", api.check(&ok));
    let bad = post(json!({"name": "a"}), json!({"name": "a"}));
    let found = api.check(&bad);
    assert_eq!(found.len(), 2, "{:#?}", messages(&found));
    assert!(
        found[0].message.starts_with("request body") && found[0].message.contains("\"password\"")
    );
    assert!(
        found[1].message.starts_with("response 200 body") && found[1].message.contains("\"id\"")
    );
}

#[test]
fn vercel_quirks_load_and_behave() {
    let Some(vercel) = vercel() else {
        return;
    };
    // `microfrontends` is a `oneOf` whose third branch has `groupIds.items: {oneOf: []}`
    // and whose first two branches overlap (and list `{type: string}` twice for the items):
    // read strictly, every real value would fail.
    let mut disabled = vercel_project();
    disabled["microfrontends"] = json!({"updatedAt": 1, "groupIds": [], "enabled": false});
    let mut enabled = vercel_project();
    enabled["microfrontends"] = json!({
        "isDefaultApp": true, "updatedAt": 1, "groupIds": ["g1", "g2"], "enabled": true
    });
    let mut broken = vercel_project();
    broken["microfrontends"] = json!({"updatedAt": 1, "groupIds": [1, 2], "enabled": true});
    let get = |body: Value| Exchange {
        response_body: Some(body),
        ..exchange("GET", "/v9/projects/prj_1", 200)
    };
    assert!(vercel.check(&get(disabled)).is_empty());
    assert!(vercel.check(&get(enabled)).is_empty());
    let found = vercel.check(&get(broken));
    assert_one(
        &found,
        &[
            "/microfrontends",
            "closest alternative: at /microfrontends/groupIds",
        ],
    );
}

/// Counts the JSON bodies a description declares, independently of the checker, so that
/// "every schema compiled" cannot pass by compiling nothing.
fn declared_json_bodies(doc: &Value) -> usize {
    let json_schema = |body: &Value| {
        let body = follow(doc, body);
        body.get("content")
            .and_then(Value::as_object)
            .and_then(|c| c.get("application/json"))
            .and_then(|m| m.get("schema"))
            .is_some()
    };
    let mut count = 0;
    for item in doc["paths"]
        .as_object()
        .into_iter()
        .flat_map(|p| p.values())
    {
        for method in [
            "get", "put", "post", "delete", "options", "head", "patch", "trace",
        ] {
            let Some(op) = item.get(method) else {
                continue;
            };
            if op.get("requestBody").is_some_and(json_schema) {
                count += 1;
            }
            let responses = op.get("responses").and_then(Value::as_object);
            count += responses
                .into_iter()
                .flat_map(|r| r.values())
                .filter(|r| json_schema(r))
                .count();
        }
    }
    count
}

fn follow<'v>(doc: &'v Value, value: &'v Value) -> &'v Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(r) => doc.pointer(&r[1..]).map_or(value, |v| follow(doc, v)),
        None => value,
    }
}

#[test]
fn every_declared_schema_compiles() {
    let Some(dir) = provider_apis() else {
        return;
    };
    let files = [
        ("vercel/vercel-openapi.subset.json", vercel()),
        ("neon/neon-openapi.v2.json", neon()),
        ("cloudflare/cloudflare-openapi.subset.json", cloudflare()),
        ("turso/turso-openapi.json", turso()),
    ];
    for (file, api) in files {
        let Some(api) = api else {
            continue;
        };
        let text = std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{e}"));
        let doc: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        let started = Instant::now();
        let report = api.compile_all();
        eprintln!(
            "{file}: {} operations, {} validators compiled in {:?}, {} failed",
            api.operations().count(),
            report.compiled,
            started.elapsed(),
            report.failed.len()
        );
        assert!(report.failed.is_empty(), "{file}: {:#?}", report.failed);
        assert_eq!(report.compiled, declared_json_bodies(&doc), "{file}");
        assert!(report.compiled > 0, "{file}");
    }
}

#[test]
fn messages_are_bounded_and_do_not_echo_bodies() {
    let Some(vercel) = vercel() else {
        return;
    };
    let big = "A".repeat(5000);
    let found = vercel.check(&Exchange {
        request_body: Some(json!({"name": big, "framework": {"blob": big}})),
        ..exchange("POST", "/v11/projects", 200)
    });
    assert!(!found.is_empty());
    for violation in &found {
        assert!(
            violation.message.chars().count() <= 300,
            "{}",
            violation.message
        );
        assert!(
            !violation.message.contains("AAAAAAAAAA"),
            "{}",
            violation.message
        );
    }
}

#[test]
fn load_errors_say_what_went_wrong() {
    let missing = ApiDescription::from_file(Path::new("does/not/exist.json"));
    assert!(matches!(missing, Err(LoadError::Io { .. })));
    let not_json =
        ApiDescription::from_file(&Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
    assert!(matches!(not_json, Err(LoadError::Json { .. })));
    let swagger = ApiDescription::from_value(json!({"swagger": "2.0", "paths": {}}));
    assert!(matches!(swagger, Err(LoadError::NotOpenApi3 { .. })));
    let three_one_without_paths = ApiDescription::from_value(json!({"openapi": "3.0.3"}));
    assert!(matches!(
        three_one_without_paths,
        Err(LoadError::NotOpenApi3 { .. })
    ));
}

#[test]
fn descriptions_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ApiDescription>();
}

#[test]
fn loading_and_checking_two_hundred_exchanges_is_quick() {
    let Some(dir) = provider_apis() else {
        return;
    };
    let started = Instant::now();
    let vercel = ApiDescription::from_file(&dir.join("vercel/vercel-openapi.subset.json"))
        .unwrap_or_else(|e| panic!("{e}"));
    let neon = ApiDescription::from_file(&dir.join("neon/neon-openapi.v2.json"))
        .unwrap_or_else(|e| panic!("{e}"));
    let loaded = started.elapsed();

    let mut workload: Vec<(&ApiDescription, Exchange)> = Vec::new();
    for i in 0..40 {
        workload.push((
            &vercel,
            Exchange {
                request_body: Some(json!({"name": format!("app-{i}"), "framework": "nextjs"})),
                response_body: Some(vercel_project()),
                ..exchange("POST", "/v11/projects", 200)
            },
        ));
        workload.push((
            &vercel,
            Exchange {
                response_body: Some(vercel_project()),
                ..exchange("GET", &format!("/v9/projects/prj_{i}"), 200)
            },
        ));
        workload.push((
            &neon,
            Exchange {
                request_body: Some(json!({"project": {"name": format!("db-{i}")}})),
                response_body: Some(neon_created_project()),
                ..exchange("POST", "/projects", 201)
            },
        ));
        workload.push((
            &neon,
            Exchange {
                query: query(&[("database_name", "app"), ("role_name", "app")]),
                response_body: Some(json!({"uri": "postgresql://x"})),
                ..exchange("GET", &format!("/projects/p-{i}/connection_uri"), 200)
            },
        ));
        workload.push((
            &neon,
            Exchange {
                response_body: Some(json!({"code": "", "message": "gone"})),
                ..exchange("GET", &format!("/projects/p-{i}"), 404)
            },
        ));
    }
    assert_eq!(workload.len(), 200);
    let started = Instant::now();
    let violations: usize = workload.iter().map(|(api, ex)| api.check(ex).len()).sum();
    let checked = started.elapsed();
    eprintln!(
        "load Vercel + Neon: {loaded:?}; check 200 exchanges (first use compiles): {checked:?}"
    );
    assert_eq!(violations, 0);
    // Generous: a debug build does this in well under a second; ten means something
    // recompiles per check or the description is re-read.
    assert!(loaded + checked < std::time::Duration::from_secs(10));
}

/// Every request and response example Neon publishes next to a JSON body (58 of them) must
/// pass: they are the provider's own word on what real bodies look like, so a failure
/// means the schema conversion misreads something (`allOf`, `nullable`, references, …).
#[test]
fn neon_published_examples_conform() {
    let (Some(dir), Some(neon)) = (provider_apis(), neon()) else {
        return;
    };
    let text = std::fs::read_to_string(dir.join("neon/neon-openapi.v2.json"))
        .unwrap_or_else(|e| panic!("{e}"));
    let doc: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    let examples_of = |body: &Value| -> Vec<Value> {
        let Some(media) = follow(&doc, body).pointer("/content/application~1json") else {
            return Vec::new();
        };
        let named = media.get("examples").and_then(Value::as_object);
        media
            .get("example")
            .cloned()
            .into_iter()
            .chain(
                named
                    .into_iter()
                    .flat_map(|e| e.values())
                    .filter_map(|e| follow(&doc, e).get("value").cloned()),
            )
            .collect()
    };
    let mut checked = 0;
    let mut failures = Vec::new();
    for (template, item) in doc["paths"].as_object().into_iter().flatten() {
        let path: Vec<&str> = template
            .split('/')
            .map(|s| if s.starts_with('{') { "x-1" } else { s })
            .collect();
        let path = path.join("/");
        for method in ["get", "put", "post", "delete", "patch"] {
            let Some(op) = item.get(method) else {
                continue;
            };
            let mut cases = Vec::new();
            if let Some(body) = op.get("requestBody") {
                cases.extend(examples_of(body).into_iter().map(|e| (Some(e), None, 200)));
            }
            for (code, response) in op["responses"].as_object().into_iter().flatten() {
                let status = code.parse().unwrap_or(500);
                cases.extend(
                    examples_of(response)
                        .into_iter()
                        .map(|e| (None, Some(e), status)),
                );
            }
            for (request_body, response_body, status) in cases {
                checked += 1;
                let found = neon.check(&Exchange {
                    request_body,
                    response_body,
                    ..exchange(method, &path, status)
                });
                // Only the body that carries the example is in question here.
                failures.extend(
                    found
                        .into_iter()
                        .filter(|v| v.message.contains(" body at "))
                        .map(|v| format!("{}: {}", v.operation, v.message)),
                );
            }
        }
    }
    assert!(checked >= 50, "only {checked} examples found");
    assert!(failures.is_empty(), "{failures:#?}");
}

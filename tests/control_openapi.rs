//! The control plane's OpenAPI 3.1 description: the committed `docs/openapi.json` is what
//! the code generates (regenerate with `UPDATE_GOLDEN=1 cargo test --test control_openapi`
//! after a deliberate change), it is served at `/api/v1/openapi.json`, and it describes
//! exactly the routes the router has, each with its method.

use std::collections::BTreeSet;

use serde_json::Value;
use telbase::control::api::ROUTES;
use telbase::control::openapi;

fn committed_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json")
}

#[test]
fn the_committed_description_is_the_generated_one() {
    let generated = openapi::json();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(committed_path(), &generated).unwrap();
    }
    let committed = std::fs::read_to_string(committed_path())
        .expect("docs/openapi.json missing: run UPDATE_GOLDEN=1 cargo test --test control_openapi");
    assert!(
        committed == generated,
        "docs/openapi.json differs from the code's description: run UPDATE_GOLDEN=1 cargo test --test control_openapi and commit it"
    );
}

#[test]
fn it_is_openapi_3_1_and_describes_every_route() {
    let doc: Value = serde_json::from_str(&openapi::json()).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let described: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| ["get", "post", "put", "patch", "delete"].contains(&k.as_str()))
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    let routed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .filter(|r| r.path != "/api/v1/openapi.json")
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect();
    assert_eq!(described, routed);
    // Authenticated routes say how; the OAuth endpoints say none is needed.
    for r in ROUTES.iter().filter(|r| r.path != "/api/v1/openapi.json") {
        let op = &doc["paths"][r.path][r.method.to_lowercase()];
        let security = op.get("security").or(doc.get("security")).unwrap();
        let open = security
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s.as_object().is_some_and(|o| o.is_empty()));
        assert_eq!(
            open,
            r.action.is_none(),
            "{} {}: {security}",
            r.method,
            r.path
        );
    }
    for schema in ["ErrorBody", "OAuthErrorBody", "TokenRow", "Role", "Me"] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
    }
}

#[tokio::test]
async fn it_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        telbase::store::open(&telbase::store::Location::Sqlite(dir.path().join("db"))).unwrap();
    let state = telbase::control::api::ControlState::new(
        store,
        telbase::control::secrets::ServerKey::generate(),
        "http://x".into(),
        false,
    );
    let app = telbase::control::api::router(std::sync::Arc::new(state));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let r = reqwest::get(format!("http://{addr}/api/v1/openapi.json"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), openapi::json());
}

/// The patterns the description gives for a new project's fields accept exactly what the
/// server's validators accept (schemathesis holds the server to the description both ways:
/// schema-valid input must be accepted, schema-invalid input refused).
mod project_patterns {
    use proptest::prelude::*;
    use telbase::control::projects::{valid_config_path, valid_name, valid_repo};

    fn pattern(field: &str) -> regex::Regex {
        let doc: serde_json::Value =
            serde_json::from_str(&telbase::control::openapi::json()).unwrap();
        let p = doc["components"]["schemas"]["CreateProject"]["properties"][field]["pattern"]
            .as_str()
            .unwrap_or_else(|| panic!("no pattern for {field}"))
            .to_owned();
        regex::Regex::new(&p).unwrap()
    }

    // Strings near the rules' edges: the allowed characters, dots, slashes and a few others.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9-]{0,42}",
            "[A-Za-z0-9._/-]{0,12}",
            "\\.{0,3}[a-z]{0,2}/\\.{0,3}[a-z]{0,2}",
            "([a-z.]{0,4}/){0,3}[a-z.]{0,5}\\.(yaml|yml|json)",
            ".{0,8}",
        ]
    }

    proptest! {
        #[test]
        fn agree_with_the_validators(s in text()) {
            prop_assert_eq!(pattern("name").is_match(&s), valid_name(&s), "name {:?}", s);
            prop_assert_eq!(pattern("repo").is_match(&s), valid_repo(&s), "repo {:?}", s);
            let config = pattern("config_path").is_match(&s) && s.chars().count() <= 256;
            prop_assert_eq!(config, valid_config_path(&s), "config_path {:?}", s);
        }
    }

    #[test]
    fn edge_cases() {
        for (s, ok) in [
            (".github/.github", true),
            ("acme/..", false),
            ("acme/...", true),
            ("./x", false),
            ("a/b", true),
        ] {
            assert_eq!(pattern("repo").is_match(s), ok, "{s}");
            assert_eq!(valid_repo(s), ok, "{s}");
        }
        let long = format!("{}/x", "a".repeat(101));
        assert!(!pattern("repo").is_match(&long) && !valid_repo(&long));
    }
}

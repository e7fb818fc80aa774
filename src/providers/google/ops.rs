//! Pieces the Google clients share: ownership labels, the annotation that records where a
//! value came from (compared instead of the value), waiting on long-running operations, and
//! the checks on names Google accepts.
//!
//! Ownership on Google is two marks, as everywhere in Telbase: the resource name starts with
//! `<project>-`, and its labels say `telbase-project: <project>` and `telbase-environment:
//! production | pr-<N>`, both written in the call that creates it. Observe returns only
//! resources with both marks; a same-named resource without them is refused, never adopted.

use serde_json::{Map, Value, json};

use crate::model::{self, EnvSource, Output, ResourceKey, Sealed};
use crate::providers::http::{Call, Endpoint, Http};
use crate::providers::{ErrorKind, ProviderError, Scope, owner};

/// Label keys of the ownership marker.
pub const LABEL_PROJECT: &str = "telbase-project";
pub const LABEL_ENVIRONMENT: &str = "telbase-environment";

/// Annotation holding where a value came from (`sealed sha256:…`, `from <key> <output>`,
/// `generated`), so observe can compare sources without reading values.
pub const ANNOTATION_SOURCE: &str = "telbase-source";
/// Annotation naming the env var a secret backs (for display in plans).
pub const ANNOTATION_ENV: &str = "telbase-env";

/// A label value as Google accepts it: lowercase letters, digits, `_` and `-`, at most 63.
pub fn label_value(s: &str) -> String {
    s.chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect()
}

/// The ownership labels of a scope.
pub fn labels(scope: &Scope) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(LABEL_PROJECT.into(), json!(label_value(&scope.project)));
    m.insert(
        LABEL_ENVIRONMENT.into(),
        json!(owner::environment_label(scope.environment)),
    );
    m
}

/// The label selector / filter terms of the ownership labels, as `(key, value)`.
pub fn label_terms(scope: &Scope) -> [(&'static str, String); 2] {
    [
        (LABEL_PROJECT, label_value(&scope.project)),
        (
            LABEL_ENVIRONMENT,
            owner::environment_label(scope.environment),
        ),
    ]
}

/// Whether a labels object and a resource id carry this scope's ownership marks.
pub fn owned(labels: Option<&Value>, id: &str, scope: &Scope) -> bool {
    owner::has_prefix(&scope.project, id)
        && label_terms(scope)
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(*k)).and_then(Value::as_str) == Some(v))
}

/// The last `/` segment of a Google resource name (`projects/1/secrets/x` → `x`).
pub fn last_segment(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// Where a value came from, as recorded beside it. `None` for plain values.
pub fn source_text(source: &EnvSource) -> Option<String> {
    match source {
        EnvSource::Plain(_) => None,
        EnvSource::Sealed(s) => Some(format!("sealed {}", s.fingerprint())),
        EnvSource::Output { resource, output } => Some(format!(
            "from {resource} {}",
            serde_json::to_value(output)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        )),
        EnvSource::Generated => Some("generated".into()),
        EnvSource::Stored { name, fingerprint } => Some(format!(
            "stored {name} {}",
            fingerprint.as_deref().unwrap_or("unknown")
        )),
    }
}

/// The inverse of `source_text`.
pub fn parse_source(text: &str) -> Option<EnvSource> {
    if text == "generated" {
        return Some(EnvSource::Generated);
    }
    if let Some(fp) = text.strip_prefix("sealed ") {
        return Some(EnvSource::Sealed(Sealed::from_fingerprint(fp)));
    }
    if let Some(stored) = text.strip_prefix("stored ") {
        let (name, fp) = stored.split_once(' ')?;
        return Some(EnvSource::Stored {
            name: name.to_owned(),
            fingerprint: Some(fp.to_owned()),
        });
    }
    let rest = text.strip_prefix("from ")?;
    let (key, output) = rest.rsplit_once(' ')?;
    let output: Output = serde_json::from_value(Value::String(output.to_owned())).ok()?;
    Some(EnvSource::Output {
        resource: ResourceKey::parse(key)?,
        output,
    })
}

/// Secret Manager secret ids: `[a-zA-Z0-9_-]{1,255}`.
pub fn valid_secret_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 255
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The error kind of a google.rpc.Code carried in an operation's `error`.
fn rpc_kind(code: i64) -> ErrorKind {
    match code {
        // CANCELLED, UNKNOWN, DEADLINE_EXCEEDED, ABORTED, INTERNAL, UNAVAILABLE
        1 | 2 | 4 | 10 | 13 | 14 => ErrorKind::Transient,
        5 => ErrorKind::NotFound,
        6 => ErrorKind::Conflict,
        7 | 16 => ErrorKind::Auth,
        8 => ErrorKind::RateLimited,
        _ => ErrorKind::Permanent,
    }
}

/// Wait for a long-running operation (`GoogleLongrunningOperation`) to finish: poll
/// `GET /<version>/<name>` until `done`, then return its `response`, or its `error` as a
/// `ProviderError` carrying the provider's own message.
pub async fn wait_operation(
    http: &Http,
    ep: &Endpoint,
    version: &str,
    op: Value,
    what: &str,
) -> Result<Value, ProviderError> {
    let p = ep.provider;
    let finished = |op: &Value| -> Result<Option<Value>, ProviderError> {
        if op.get("done").and_then(Value::as_bool) != Some(true) {
            return Ok(None);
        }
        if let Some(e) = op.get("error") {
            let code = e.get("code").and_then(Value::as_i64).unwrap_or(2);
            let message = e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("the operation failed without a message");
            return Err(ProviderError::new(
                p,
                rpc_kind(code),
                what,
                None,
                message,
                None,
                None,
            ));
        }
        Ok(Some(op.get("response").cloned().unwrap_or(Value::Null)))
    };
    if let Some(done) = finished(&op)? {
        return Ok(done);
    }
    let name = op
        .get("name")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| {
            ProviderError::new(
                p,
                ErrorKind::Transient,
                what,
                None,
                "the operation has no name to poll",
                None,
                None,
            )
        })?;
    let path = format!("/{version}/{name}");
    http.poll(p, what, || async {
        let op = http.json(ep, &Call::get(path.clone(), what)).await?;
        finished(&op)
    })
    .await
}

/// Every item of a Google list method: `pageToken` back until no `nextPageToken`. Unlike
/// `Http::list`, a page without the list field is an empty page: proto3 JSON leaves empty
/// lists out, so "no secrets" arrives as `{}`.
pub async fn list(
    http: &Http,
    ep: &Endpoint,
    call: Call,
    field: &str,
) -> Result<Vec<Value>, ProviderError> {
    let mut out = Vec::new();
    let mut call = call;
    let base = call.query.clone();
    let mut seen = std::collections::HashSet::new();
    // Bounded: a server that keeps handing out new tokens is broken.
    for _ in 0..10_000 {
        let page = http.json(ep, &call).await?;
        match page.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => out.extend(items.iter().cloned()),
            Some(_) => {
                return Err(err(
                    ep.provider,
                    ErrorKind::Transient,
                    &call.what,
                    format!("`{field}` in the response is not a list"),
                ));
            }
        }
        let Some(token) = page
            .get("nextPageToken")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        else {
            break;
        };
        if !seen.insert(token.to_owned()) {
            break;
        }
        call.query = base.clone();
        call.query.push(("pageToken".into(), token.to_owned()));
    }
    Ok(out)
}

/// A client-side error of a Google client (no HTTP status).
pub fn err(
    p: model::Provider,
    kind: ErrorKind,
    what: &str,
    message: impl Into<String>,
) -> ProviderError {
    ProviderError::new(p, kind, what, None, message, None, None)
}

/// The refusal for a same-named resource that is not this project's.
pub fn foreign(p: model::Provider, what: &str, thing: &str, name: &str) -> ProviderError {
    ProviderError::new(
        p,
        ErrorKind::Conflict,
        what,
        Some(409),
        format!(
            "a {thing} named `{name}` exists but was not created by Telbase for this project and environment; rename the app or remove it"
        ),
        None,
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Environment, Kind};

    fn scope() -> Scope {
        Scope {
            project: "notes".into(),
            environment: Environment::Preview { pull_request: 7 },
            git: None,
        }
    }

    #[test]
    fn sources_round_trip() {
        for s in [
            EnvSource::Generated,
            EnvSource::Sealed(Sealed::new("armor".into())),
            EnvSource::Stored {
                name: "API_KEY".into(),
                fingerprint: Some("hmac:0123456789abcdef".into()),
            },
            EnvSource::Output {
                resource: ResourceKey::new(Kind::NeonDatabase, "notes-main"),
                output: Output::Url,
            },
        ] {
            assert_eq!(parse_source(&source_text(&s).unwrap()), Some(s));
        }
        assert_eq!(source_text(&EnvSource::Plain("x".into())), None);
        assert_eq!(parse_source("hand-made"), None);
    }

    #[test]
    fn ownership_needs_prefix_and_both_labels() {
        let s = scope();
        let l = json!({"telbase-project": "notes", "telbase-environment": "pr-7"});
        assert!(owned(Some(&l), "notes-web", &s));
        assert!(!owned(Some(&l), "other-web", &s));
        let prod = json!({"telbase-project": "notes", "telbase-environment": "production"});
        assert!(!owned(Some(&prod), "notes-web", &s));
        assert!(!owned(None, "notes-web", &s));
    }

    #[test]
    fn names_and_labels() {
        assert!(valid_secret_id("notes-api-DATABASE_URL"));
        assert!(!valid_secret_id("notes api"));
        assert!(!valid_secret_id(""));
        assert!(!valid_secret_id(&"a".repeat(256)));
        assert_eq!(label_value("Notes.App"), "notes_app");
        assert_eq!(last_segment("projects/1/secrets/x"), "x");
    }
}

//! Cross-site request forgery protection for every state-changing dashboard form: a
//! synchronizer token bound to the session (`HMAC(server key, "csrf" || session id)`, so it
//! needs no storage and dies with the session, including at rotation) in a hidden field,
//! compared in constant time, plus the browser's own word on where the request came from
//! (`Origin`, else `Sec-Fetch-Site`). Pages use [`field`] in each form and handlers call
//! [`verify`] first; a failure is a 403 page and an audit record (`super::refuse_csrf`).

use axum::http::HeaderMap;
use maud::{Markup, html};

use crate::control::secrets::{ServerKey, constant_time_eq};

/// The hidden field's name.
pub const FIELD: &str = "csrf";

/// The token of a session (by its public id).
pub fn token(key: &ServerKey, session_id: &str) -> String {
    key.hash("csrf", session_id)
}

/// The hidden input every state-changing form carries.
pub fn field(token: &str) -> Markup {
    html! { input type="hidden" name=(FIELD) value=(token); }
}

/// Why a form was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CsrfError {
    #[error("the form came from another site")]
    CrossOrigin,
    #[error("the form's token is missing or does not belong to this session")]
    BadToken,
}

/// Checks a submitted form: its origin, then its token. `origin` is this server's own
/// (`scheme://host[:port]`).
pub fn verify(
    key: &ServerKey,
    session_id: &str,
    submitted: Option<&str>,
    headers: &HeaderMap,
    origin: &str,
) -> Result<(), CsrfError> {
    same_origin(headers, origin)?;
    let expected = token(key, session_id);
    match submitted {
        Some(t) if constant_time_eq(t.as_bytes(), expected.as_bytes()) => Ok(()),
        _ => Err(CsrfError::BadToken),
    }
}

/// `Origin` must be ours when present (every current browser sends it on a POST); without
/// it, `Sec-Fetch-Site` must say same-origin (or `none`: typed by the person). A request
/// with neither (an old client) rests on the token alone.
pub fn same_origin(headers: &HeaderMap, origin: &str) -> Result<(), CsrfError> {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    if let Some(o) = h("origin") {
        return if o.eq_ignore_ascii_case(origin) {
            Ok(())
        } else {
            Err(CsrfError::CrossOrigin)
        };
    }
    match h("sec-fetch-site") {
        None | Some("same-origin") | Some("none") => Ok(()),
        Some(_) => Err(CsrfError::CrossOrigin),
    }
}

/// `scheme://host[:port]` of a base URL.
pub fn origin_of(base: &str) -> String {
    match base.split_once("://") {
        Some((scheme, rest)) => {
            format!("{scheme}://{}", rest.split('/').next().unwrap_or_default())
        }
        None => base.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn tokens_are_bound_to_the_session_and_the_origin() {
        let key = ServerKey::generate();
        let t = token(&key, "s1");
        let mut h = HeaderMap::new();
        assert!(verify(&key, "s1", Some(&t), &h, "https://t.example").is_ok());
        assert_eq!(
            verify(&key, "s2", Some(&t), &h, "https://t.example"),
            Err(CsrfError::BadToken)
        );
        assert_eq!(
            verify(&key, "s1", None, &h, "https://t.example"),
            Err(CsrfError::BadToken)
        );
        h.insert("origin", HeaderValue::from_static("https://evil.example"));
        assert_eq!(
            verify(&key, "s1", Some(&t), &h, "https://t.example"),
            Err(CsrfError::CrossOrigin)
        );
        h.insert("origin", HeaderValue::from_static("https://t.example"));
        assert!(verify(&key, "s1", Some(&t), &h, "https://t.example").is_ok());
        let mut h = HeaderMap::new();
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(same_origin(&h, "https://t.example").is_err());
        h.insert("sec-fetch-site", HeaderValue::from_static("same-site"));
        assert!(same_origin(&h, "https://t.example").is_err());
        assert_eq!(origin_of("http://127.0.0.1:80/x/y"), "http://127.0.0.1:80");
        // Another key, another token.
        assert_ne!(token(&ServerKey::generate(), "s1"), t);
    }

    #[test]
    fn every_action_the_dashboard_records_is_a_valid_audit_action() {
        for action in [
            "auth.login",
            "auth.logout",
            "auth.failure",
            "auth.csrf_rejected",
            "device.approve",
            "device.deny",
            "session.revoke",
            "session.revoke_all",
            "token.create",
            "token.revoke",
            "member.invite",
            "member.role_change",
            "member.remove",
        ] {
            let e = crate::control::SecurityEvent {
                action,
                actor: Some("u".into()),
                address: "127.0.0.1".into(),
                target: Some("t".into()),
                outcome: "failure",
            };
            assert!(crate::serve::audit::from_control(&e).is_ok(), "{action}");
        }
    }

    #[test]
    fn the_field_escapes() {
        let m = field("a\"><script>").into_string();
        assert!(!m.contains("<script>"), "{m}");
    }
}

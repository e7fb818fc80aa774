//! The one error type of every provider call, classified so callers can branch on it: retry
//! a transient failure, wait out a rate limit, stop on bad credentials, re-read on a
//! conflict. It carries the provider's own message and request id for support tickets, and
//! never the credentials: nothing here ever holds a token.

use std::time::Duration;

use crate::model::Provider;

/// What went wrong, as far as a caller needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Worth retrying: 5xx, 408, connection reset or refused, timeouts, truncated bodies.
    Transient,
    /// 429 or a provider's rate-limit signal; `retry_after` says how long to wait, if known.
    RateLimited,
    /// 401/403: the token is missing, wrong, expired, or lacks a permission.
    Auth,
    /// 409 or 412: someone else changed or created it; re-observe before deciding.
    Conflict,
    /// 404 (or 410): not there.
    NotFound,
    /// Anything else (400, 422…): retrying the same request will fail the same way.
    Permanent,
}

/// A failed provider call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{provider}: {what} failed ({kind_text}{status_text}): {message}{request_text}")]
pub struct ProviderError {
    pub provider: &'static str,
    pub kind: ErrorKind,
    /// The operation, e.g. "create project acme-web".
    pub what: String,
    pub status: Option<u16>,
    /// The provider's own error message (its error envelope), cut to a sane length.
    pub message: String,
    /// The provider's request id, for support tickets.
    pub request_id: Option<String>,
    /// How long the provider asked us to wait.
    pub retry_after: Option<Duration>,
    // Pre-rendered pieces of the message above.
    kind_text: &'static str,
    status_text: String,
    request_text: String,
}

impl ProviderError {
    pub fn new(
        provider: Provider,
        kind: ErrorKind,
        what: impl Into<String>,
        status: Option<u16>,
        message: impl Into<String>,
        request_id: Option<String>,
        retry_after: Option<Duration>,
    ) -> Self {
        let message: String = message.into();
        // Provider messages are outside input: one line, bounded, no control characters.
        let message = crate::config::diag::sanitize(
            &message.split_whitespace().collect::<Vec<_>>().join(" "),
        );
        let kind_text = match kind {
            ErrorKind::Transient => "temporary failure",
            ErrorKind::RateLimited => "rate limited",
            ErrorKind::Auth => "not authorized",
            ErrorKind::Conflict => "conflict",
            ErrorKind::NotFound => "not found",
            ErrorKind::Permanent => "rejected",
        };
        ProviderError {
            provider: provider.as_str(),
            kind,
            what: what.into(),
            status,
            status_text: status.map(|s| format!(", HTTP {s}")).unwrap_or_default(),
            request_text: request_id
                .as_deref()
                .map(|r| format!(" (request id {})", crate::config::diag::sanitize(r)))
                .unwrap_or_default(),
            message,
            request_id,
            retry_after,
            kind_text,
        }
    }

    /// Classify an HTTP status the way all our providers use them.
    pub fn kind_for_status(status: u16) -> ErrorKind {
        match status {
            429 => ErrorKind::RateLimited,
            401 | 403 => ErrorKind::Auth,
            404 | 410 => ErrorKind::NotFound,
            409 | 412 => ErrorKind::Conflict,
            408 | 500..=599 => ErrorKind::Transient,
            _ => ErrorKind::Permanent,
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, ErrorKind::Transient | ErrorKind::RateLimited)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_classify() {
        assert_eq!(ProviderError::kind_for_status(429), ErrorKind::RateLimited);
        assert_eq!(ProviderError::kind_for_status(503), ErrorKind::Transient);
        assert_eq!(ProviderError::kind_for_status(403), ErrorKind::Auth);
        assert_eq!(ProviderError::kind_for_status(409), ErrorKind::Conflict);
        assert_eq!(ProviderError::kind_for_status(404), ErrorKind::NotFound);
        assert_eq!(ProviderError::kind_for_status(422), ErrorKind::Permanent);
    }

    #[test]
    fn message_names_provider_operation_and_request() {
        let e = ProviderError::new(
            Provider::Vercel,
            ErrorKind::Conflict,
            "create project acme-web",
            Some(409),
            "Project already exists\n\u{1b}[31m",
            Some("req_123".into()),
            None,
        );
        assert_eq!(
            e.to_string(),
            "vercel: create project acme-web failed (conflict, HTTP 409): Project already exists \\u{1b}[31m (request id req_123)"
        );
        assert!(!e.is_retryable());
    }
}

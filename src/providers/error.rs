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
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

impl std::fmt::Display for ProviderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            ErrorKind::Transient => "temporary failure",
            ErrorKind::RateLimited => "rate limited",
            ErrorKind::Auth => "not authorized",
            ErrorKind::Conflict => "conflict",
            ErrorKind::NotFound => "not found",
            ErrorKind::Permanent => "rejected",
        };
        write!(f, "{}: {} failed ({kind}", self.provider, self.what)?;
        if let Some(s) = self.status {
            write!(f, ", HTTP {s}")?;
        }
        write!(f, "): {}", self.message)?;
        if let Some(r) = &self.request_id {
            write!(f, " (request id {r})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ProviderError {}

/// Longest provider message we keep, in characters.
const MAX_MESSAGE: usize = 500;

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
        let message = crate::config::diag::sanitize_to(
            &message.split_whitespace().collect::<Vec<_>>().join(" "),
            MAX_MESSAGE,
        );
        ProviderError {
            provider: provider.as_str(),
            kind,
            what: what.into(),
            status,
            message,
            request_id: request_id.map(|r| crate::config::diag::sanitize(&r)),
            retry_after,
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

//! What the shared HTTP layer tells an observer about each provider call, for `/metrics`:
//! the provider, whether the call reads or writes, how it ended, and how long it took. One
//! report per attempt (a retried call counts each try, which is what the providers' rate
//! limits count too). Labels are a fixed small alphabet: no URLs, paths, tokens or messages,
//! so neither secrets nor unbounded label sets can reach the metrics.

use std::time::Duration;

use reqwest::Method;

use super::{ErrorKind, ProviderError};
use crate::model::Provider;

/// Reads (`GET`, `HEAD`) or writes (everything else).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MethodClass {
    Read,
    Write,
}

impl MethodClass {
    pub fn of(method: &Method) -> Self {
        if method == Method::GET || method == Method::HEAD {
            MethodClass::Read
        } else {
            MethodClass::Write
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MethodClass::Read => "read",
            MethodClass::Write => "write",
        }
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallOutcome {
    /// A 2xx answer.
    Ok,
    /// 429 or the provider's own rate-limit signal.
    RateLimited,
    /// Another HTTP error answer: 4xx or 5xx.
    Client4xx,
    Server5xx,
    /// No usable answer: refused, reset, timed out, cut off.
    Transport,
}

impl CallOutcome {
    pub fn of(result: Result<(), &ProviderError>) -> Self {
        match result {
            Ok(()) => CallOutcome::Ok,
            Err(e) if e.kind == ErrorKind::RateLimited => CallOutcome::RateLimited,
            Err(e) => match e.status {
                Some(429) => CallOutcome::RateLimited,
                Some(s) if (400..500).contains(&s) => CallOutcome::Client4xx,
                Some(s) if s >= 500 => CallOutcome::Server5xx,
                // A 2xx whose body was cut off or unreadable is a transport failure too.
                _ => CallOutcome::Transport,
            },
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CallOutcome::Ok => "ok",
            CallOutcome::RateLimited => "rate_limited",
            CallOutcome::Client4xx => "http_4xx",
            CallOutcome::Server5xx => "http_5xx",
            CallOutcome::Transport => "transport_error",
        }
    }

    pub fn is_error(self) -> bool {
        self != CallOutcome::Ok
    }
}

/// Told about every attempt the HTTP layer makes. Called on the request's task: keep it
/// cheap (counter increments), never blocking.
pub trait CallObserver: Send + Sync {
    fn call(&self, provider: Provider, method: MethodClass, outcome: CallOutcome, took: Duration);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(kind: ErrorKind, status: Option<u16>) -> ProviderError {
        ProviderError::new(Provider::Neon, kind, "x", status, "m", None, None)
    }

    #[test]
    fn outcomes_are_classified_by_status_and_kind() {
        assert_eq!(CallOutcome::of(Ok(())), CallOutcome::Ok);
        assert_eq!(
            CallOutcome::of(Err(&e(ErrorKind::RateLimited, Some(403)))),
            CallOutcome::RateLimited
        );
        assert_eq!(
            CallOutcome::of(Err(&e(ErrorKind::Transient, Some(429)))),
            CallOutcome::RateLimited
        );
        assert_eq!(
            CallOutcome::of(Err(&e(ErrorKind::NotFound, Some(404)))),
            CallOutcome::Client4xx
        );
        assert_eq!(
            CallOutcome::of(Err(&e(ErrorKind::Transient, Some(503)))),
            CallOutcome::Server5xx
        );
        assert_eq!(
            CallOutcome::of(Err(&e(ErrorKind::Transient, None))),
            CallOutcome::Transport
        );
        assert_eq!(MethodClass::of(&Method::GET), MethodClass::Read);
        assert_eq!(MethodClass::of(&Method::POST), MethodClass::Write);
    }
}

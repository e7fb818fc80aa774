//! The control plane's identity layer: users, teams and their members with the four roles,
//! API tokens, browser sessions, the RFC 8628 device authorization flow and its refresh
//! tokens, and the first `/api/v1` routes. It owns who a request is ([`api::Principal`]) and
//! what that principal may do ([`roles::allows`], the one permission table). Every secret it
//! hands out is stored only as a keyed hash ([`secrets::ServerKey`]); the plaintext exists
//! in one response and nowhere else. The tables are migration 6 ([`db::MIGRATION`]), the
//! same text on SQLite and PostgreSQL. docs/control-plane.md describes the whole of it.

pub mod api;
pub mod cli;
pub mod credstore;
pub mod db;
pub mod model;
pub mod openapi;
pub mod projects;
pub mod resources;
pub mod roles;
pub mod secrets;

/// One security-relevant event, for the audit log. Plain data: no secret ever goes in
/// (targets are ids; a token is named by its id, never its value).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SecurityEvent {
    /// e.g. `token.create`, `session.revoke_all`, `device.approve`, `auth.failure`.
    pub action: &'static str,
    /// The acting user's id, when known.
    pub actor: Option<String>,
    /// The source address.
    pub address: String,
    /// What was acted on (a user, token, session or team id).
    pub target: Option<String>,
    /// `success` or `failure`.
    pub outcome: &'static str,
}

/// Where security events go. The audit log (helper AUDIT's `src/audit/`) implements this
/// when merged; until then [`TracingEvents`] writes them to the log. A request whose event
/// cannot be recorded fails (503): the issue asks that audited requests never go unrecorded.
pub trait SecurityEvents: Send + Sync + 'static {
    fn record(&self, event: &SecurityEvent) -> Result<(), String>;

    /// Records `event` inside `tx`, the store transaction that makes the change it tells
    /// of, so both commit or neither does (see `api::db_audited`). The audit log does this;
    /// a sink outside the store (the stand-in [`TracingEvents`]) records as [`Self::record`].
    fn record_in(
        &self,
        tx: &mut crate::store::tx::Tx<'_>,
        event: &SecurityEvent,
    ) -> Result<(), String> {
        let _ = tx;
        self.record(event)
    }
}

/// The stand-in sink: one structured log line per event.
#[derive(Debug, Default)]
pub struct TracingEvents;

impl SecurityEvents for TracingEvents {
    fn record(&self, e: &SecurityEvent) -> Result<(), String> {
        tracing::info!(
            action = e.action,
            actor = e.actor.as_deref().unwrap_or("-"),
            address = %e.address,
            target = e.target.as_deref().unwrap_or("-"),
            outcome = e.outcome,
            "security event"
        );
        Ok(())
    }
}

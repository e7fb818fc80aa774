//! The server's side of the audit log: [`ServerAudit`] (the audit log over the server's
//! store, implementing [`SecurityEvents`]) that handlers record through, and the daily
//! retention prune that only the leading replica runs. What is recorded and the must-write
//! rule are `crate::audit`'s; this file only connects them to the running server.

use std::sync::Arc;

use crate::audit::{
    Action, Actor, AuditError, AuditEvent, AuditLog, Details, Outcome, PruneReport, SecurityEvents,
};

use super::queue::StoreQueue;

/// The audit log on the server's store.
pub struct ServerAudit {
    pub log: AuditLog,
    pub queue: Arc<StoreQueue>,
}

impl SecurityEvents for ServerAudit {
    fn record(&self, event: AuditEvent) -> Result<u64, AuditError> {
        self.queue.with_audit(|rows| self.log.record(rows, &event))
    }
}

impl ServerAudit {
    /// [`SecurityEvents::record`] from async code (on a blocking thread). A handler that must
    /// audit awaits this and fails its request on `Err`.
    pub async fn record_async(self: &Arc<Self>, event: AuditEvent) -> Result<u64, AuditError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.record(event))
            .await
            .map_err(|e| AuditError::Task(e.to_string()))?
    }

    /// The must-write rule for a handler: record `event`, or the response to send instead of
    /// carrying the request out (503, one JSON error shape, the cause only in the server's
    /// log). Use it BEFORE the change is committed, or in the same unit of work:
    /// `if let Err(resp) = app.audit.must_record(event).await { return resp; }`.
    pub async fn must_record(
        self: &Arc<Self>,
        event: AuditEvent,
    ) -> Result<u64, axum::response::Response> {
        use axum::response::IntoResponse as _;
        self.record_async(event).await.map_err(|e| {
            tracing::error!(error = %e, "refusing a request: its audit record could not be written");
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(serde_json::json!({
                    "error": "the audit log could not be written, so the request was not carried out; try again later"
                })),
            )
                .into_response()
        })
    }

    /// Records an event about a request that is refused anyway (a bad signature): in the
    /// background, a failure only logged (failing an already refused request changes nothing).
    pub fn record_in_background(self: &Arc<Self>, event: AuditEvent) {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = me.record(event) {
                tracing::error!(error = %e, "a security event could not be written to the audit log");
            }
        });
    }

    /// Applies the retention (the log's days) and records the prune itself as an
    /// administrative action when anything went.
    pub fn prune_now(&self, now: chrono::DateTime<chrono::Utc>) -> Result<PruneReport, AuditError> {
        let report = self.queue.with_audit(|rows| self.log.prune(rows, now))?;
        if let Some(cp) = &report.checkpoint {
            self.record(
                AuditEvent::new(
                    Actor::system("audit-retention"),
                    Action::ADMIN_AUDIT_PRUNED,
                    Outcome::Success,
                )
                .on("audit_checkpoint", cp.number.to_string())
                .with(
                    Details::new()
                        .number("pruned", report.pruned)
                        .number("first_kept", cp.first_kept)
                        .number("retention_days", i64::from(self.log.retention_days())),
                ),
            )?;
        }
        Ok(report)
    }
}

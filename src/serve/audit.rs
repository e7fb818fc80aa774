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

/// Abuse protection's security events (anomalies: a first sign-in from a new network, a
/// burst of failures that started a lock, a token used from a new address; and operators'
/// unlocks) go into the audit log, as the security page promises anomalies are flagged.
/// Abuse protection calls this from its blocking store work, so recording here is
/// synchronous too.
impl crate::abuse::SecurityEvents for ServerAudit {
    fn record(
        &self,
        event: &crate::abuse::SecurityEvent,
    ) -> Result<(), crate::abuse::SecurityEventsError> {
        let event =
            from_abuse(event).map_err(|e| crate::abuse::SecurityEventsError(e.to_string()))?;
        SecurityEvents::record(self, event)
            .map(|_| ())
            .map_err(|e| crate::abuse::SecurityEventsError(e.to_string()))
    }
}

/// One abuse event as an audit record: the actor is Telbase's abuse protection itself (it
/// noticed), the target the account or address concerned, the address the request's.
pub fn from_abuse(event: &crate::abuse::SecurityEvent) -> Result<AuditEvent, AuditError> {
    use crate::abuse::{Anomaly, SecurityEvent};
    // Abuse protection names addresses as the block it counts (`203.0.113.7/32`, an IPv6
    // /64): a single address is the record's source, a wider block only a detail.
    let at = |e: AuditEvent, a: &str| match crate::abuse::addr::Cidr::parse(a)
        .ok()
        .and_then(|c| c.host())
    {
        Some(ip) => e.from(ip),
        None => e,
    };
    Ok(match event {
        SecurityEvent::Anomaly(Anomaly::NewNetwork {
            account,
            address: a,
            network,
        }) => at(
            AuditEvent::new(
                Actor::system("abuse"),
                Action::ANOMALY_NEW_NETWORK,
                Outcome::Success,
            )
            .on("account", account.clone())
            .with(Details::new().text("network", network.clone())),
            a,
        ),
        SecurityEvent::Anomaly(Anomaly::FailureBurst {
            realm,
            scope,
            subject,
            failures,
            kind,
            address: a,
            lock_seconds,
        }) => at(
            AuditEvent::new(
                Actor::system("abuse"),
                Action::ANOMALY_FAILURE_BURST,
                Outcome::Denied,
            )
            .on(*scope, subject.clone())
            .with(
                Details::new()
                    .text("realm", *realm)
                    .text("kind", kind.as_str())
                    .number("failures", *failures)
                    .number("lock_seconds", *lock_seconds)
                    .text("address_block", a.clone()),
            ),
            a,
        ),
        SecurityEvent::Anomaly(Anomaly::TokenNewAddress {
            account,
            address: a,
        }) => at(
            AuditEvent::new(
                Actor::system("abuse"),
                Action::ANOMALY_TOKEN_NEW_ADDRESS,
                Outcome::Success,
            )
            .on("account", account.clone()),
            a,
        ),
        SecurityEvent::Unlocked {
            scope,
            key,
            counters,
        } => AuditEvent::new(
            Actor::system("operator"),
            Action::new("access.unlocked")?,
            Outcome::Success,
        )
        .on(*scope, key.clone())
        .with(Details::new().number("counters", i64::try_from(*counters).unwrap_or(i64::MAX))),
    })
}

/// The control plane's security events (sign-ins, device logins, tokens, sessions, members
/// and roles) go into the audit log. The control plane answers 503 when this fails: the
/// must-write rule.
impl crate::control::SecurityEvents for ServerAudit {
    fn record(&self, event: &crate::control::SecurityEvent) -> Result<(), String> {
        let event = from_control(event).map_err(|e| e.to_string())?;
        SecurityEvents::record(self, event)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// In the change's own transaction: the record and the change commit together.
    fn record_in(
        &self,
        tx: &mut crate::store::tx::Tx<'_>,
        event: &crate::control::SecurityEvent,
    ) -> Result<(), String> {
        let event = from_control(event).map_err(|e| e.to_string())?;
        self.log
            .record_with(&mut |seal| tx.append_audit(seal), &event)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// One control-plane event as an audit record. Its action names (`token.create`,
/// `member.role_change`, `device.approve`…) are filed under the security page's categories:
/// devices and sign-ins are authentication, tokens, sessions and logins access control,
/// members and roles administration.
pub fn from_control(event: &crate::control::SecurityEvent) -> Result<AuditEvent, AuditError> {
    let (first, rest) = event.action.split_once('.').unwrap_or((event.action, ""));
    let (name, target_kind) = match first {
        "auth" => (event.action.to_owned(), "user"),
        "device" => (format!("auth.device_{rest}"), "device_login"),
        "token" => (format!("access.token_{rest}"), "token"),
        "session" => (format!("access.session_{rest}"), "session"),
        "login" => (format!("access.login_{rest}"), "login"),
        // API access (`api.access`, `api.denied`): the target is the route.
        "api" => (event.action.to_owned(), "route"),
        // Targets are `TEAM_ID/USER_ID` (`api::member_target`).
        "member" => (format!("admin.member_{rest}"), "membership"),
        // Projects and env vars are configuration changes; their targets start with the
        // team's id (`TEAM_ID/PROJECT[/ENVIRONMENT/NAME]`), which scopes a team's audit log.
        "project" => (format!("config.project_{rest}"), "project"),
        "env" => (format!("config.env_{rest}"), "env_var"),
        _ => (format!("api.{}", event.action.replace('.', "_")), "object"),
    };
    let actor = match &event.actor {
        Some(id) => Actor::user(id.clone(), id.clone()),
        None => Actor::anonymous(""),
    };
    let outcome = match event.outcome {
        "success" => Outcome::Success,
        "failure" => Outcome::Failure,
        "started" => Outcome::Started,
        _ => Outcome::Denied,
    };
    let mut e = AuditEvent::new(actor, Action::new(&name)?, outcome);
    if let Some(t) = &event.target {
        e = e.on(target_kind, t.clone());
    }
    if let Ok(ip) = event.address.parse::<std::net::IpAddr>() {
        e = e.from(ip);
    }
    Ok(e)
}

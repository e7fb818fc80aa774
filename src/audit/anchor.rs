//! Head anchors: what the chain cannot show from inside the database alone. Someone who can
//! write the database but lacks the key cannot forge records, but can cut the newest ones
//! off and put back an older, genuine head row (from a backup); what remains verifies. An
//! anchor, the seq and MAC of the newest record at some moment, kept OUTSIDE the database
//! (a ticket, a chat message, another system's log), closes that: the log must still reach
//! that record with that MAC. `telbase audit head` prints one; `telbase audit verify
//! --expect-seq N --expect-mac HEX` checks it. This module owns the anchor and its check.

use serde::Serialize;

use super::{AuditError, AuditLog, AuditRows, Verification};

/// The newest record at some moment: its seq and MAC (hex). The MAC is keyed, so it tells
/// nothing about the key or the record's content, and cannot be made up without the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Anchor {
    pub seq: i64,
    pub mac: String,
    /// When the record was written (unix ms), for people.
    pub at_ms: i64,
}

impl Anchor {
    /// The command that checks this anchor later: the form to publish.
    pub fn verify_command(&self) -> String {
        format!(
            "telbase audit verify --expect-seq {} --expect-mac {}",
            self.seq, self.mac
        )
    }
}

/// What an anchor check found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum AnchorCheck {
    /// The log reaches the anchored record, unchanged.
    Holds,
    /// The log ends before the anchored record: its newest records were cut off.
    Truncated { head_seq: i64 },
    /// The record at the anchored seq is not the anchored one.
    Differs { seq: i64 },
    /// The record was pruned by the retention (a signed checkpoint covers it), so it cannot
    /// be compared: publish anchors more often than the retention.
    Pruned { first_kept: i64 },
}

/// The current head as an anchor, after a full verification (an anchor of a log that does
/// not verify would vouch for tampering). `Ok(None)`: the log is empty.
pub fn head(log: &AuditLog, rows: &mut dyn AuditRows) -> Result<Option<Anchor>, AuditError> {
    let v = log.verify(rows)?;
    if let Some(f) = v.finding {
        return Err(AuditError::Damaged(format!(
            "the log does not verify ({f}); no anchor is printed for it"
        )));
    }
    if v.head_seq == 0 {
        return Ok(None);
    }
    record_at(rows, v.head_seq)?
        .map(Some)
        .ok_or_else(|| AuditError::Damaged(format!("record {} vanished", v.head_seq)))
}

fn record_at(rows: &mut dyn AuditRows, seq: i64) -> Result<Option<Anchor>, AuditError> {
    Ok(rows
        .audit_records(seq - 1, 1)?
        .into_iter()
        .find(|r| r.seq == seq)
        .map(|r| Anchor {
            seq: r.seq,
            mac: r.mac,
            at_ms: r.at_ms,
        }))
}

/// Checks `expect` against the log, given its verification `v` (run first: an anchor is a
/// check on top of the chain's own, not instead of it).
pub fn check(
    rows: &mut dyn AuditRows,
    v: &Verification,
    expect_seq: i64,
    expect_mac: &str,
) -> Result<AnchorCheck, AuditError> {
    if v.head_seq < expect_seq {
        return Ok(AnchorCheck::Truncated {
            head_seq: v.head_seq,
        });
    }
    match record_at(rows, expect_seq)? {
        Some(a) if super::keys_eq(&a.mac, expect_mac) => Ok(AnchorCheck::Holds),
        Some(_) => Ok(AnchorCheck::Differs { seq: expect_seq }),
        None if v.checkpoints > 0 && expect_seq < v.first_seq => Ok(AnchorCheck::Pruned {
            first_kept: v.first_seq,
        }),
        // Inside the kept range yet absent: the chain walk would have reported a gap, so
        // this is a log cut back and refilled to beyond the anchor.
        None => Ok(AnchorCheck::Differs { seq: expect_seq }),
    }
}

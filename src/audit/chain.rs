//! The chain: the stored row types, the row-access trait both store backends implement
//! ([`AuditRows`]), the canonical encodings that are MAC'd and signed, sealing a record onto
//! the head, writing a checkpoint, and [`verify`].
//!
//! Canonical encoding (v1): a domain string, then every field in a fixed order, each as an
//! 8-byte big-endian length and its bytes (integers as 8-byte big-endian, optional fields as a
//! presence byte first). Nothing is parsed back before verifying: the MAC is over the stored
//! text itself (the details are stored as the exact JSON text that was sealed).

use chrono::{DateTime, TimeZone as _, Utc};
use serde::Serialize;

use super::{Action, AuditError, AuditEvent, AuditKeys};

/// The `prev_mac` of the first record ever written.
pub const ZERO_MAC: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How far back [`verify`] looks for the place a moved record was sealed at.
const MOVE_WINDOW: i64 = 16;

/// One stored record. Fields are the stored text (an unknown kind or action still loads, so
/// a forged row is reported rather than unreadable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    pub seq: i64,
    /// Unix ms, the server's clock.
    pub at_ms: i64,
    pub actor_kind: String,
    pub actor_id: String,
    pub actor_display: String,
    pub action: String,
    pub source: Option<String>,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub outcome: String,
    /// The details, as the exact JSON text that was sealed.
    pub details: String,
    /// The audit key that sealed it.
    pub key_id: String,
    pub prev_mac: String,
    pub mac: String,
}

impl AuditRecord {
    pub fn time(&self) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(self.at_ms)
            .single()
            .unwrap_or_default()
    }

    /// The record as the CLI's `--format json` and the REST API show it.
    pub fn view(&self) -> serde_json::Value {
        let category = Action::new(&self.action).ok().map(|a| a.category());
        serde_json::json!({
            "seq": self.seq,
            "time": self.time().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "actor": {"kind": self.actor_kind, "id": self.actor_id, "display": self.actor_display},
            "action": self.action,
            "category": category,
            "source": self.source,
            "target": self.target_type.as_ref().map(|t| serde_json::json!({
                "type": t, "id": self.target_id,
            })),
            "outcome": self.outcome,
            "details": serde_json::from_str::<serde_json::Value>(&self.details)
                .unwrap_or(serde_json::Value::Null),
            "mac": self.mac,
        })
    }
}

/// The chain head: how far the chain reaches, and how many checkpoints exist. Its MAC makes
/// quietly moving it back (to hide a truncated tail) detectable without the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    /// The last record's seq (0: none yet).
    pub seq: i64,
    /// The last record's MAC (or the last pruned one's; [`ZERO_MAC`] at first).
    pub mac: String,
    pub checkpoints: i64,
    /// HMAC over the three fields above; empty for the untouched genesis head.
    pub head_mac: String,
}

impl ChainHead {
    pub fn genesis() -> ChainHead {
        ChainHead {
            seq: 0,
            mac: ZERO_MAC.to_owned(),
            checkpoints: 0,
            head_mac: String::new(),
        }
    }
    fn is_genesis(&self) -> bool {
        *self == ChainHead::genesis()
    }
}

/// A retention checkpoint: records before `first_kept` were pruned; the last of them had
/// `last_pruned_mac`. Signed with the audit key's Ed25519 key, chained to the previous one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckpointRow {
    /// 1, 2, … in order.
    pub number: i64,
    pub first_kept: i64,
    pub last_pruned_mac: String,
    /// Records this prune removed.
    pub pruned: i64,
    pub at_ms: i64,
    /// The previous checkpoint's signature (empty for the first).
    pub prev_signature: String,
    pub key_id: String,
    /// Ed25519, base64.
    pub signature: String,
}

/// What a prune found under the head lock, for the checkpoint to be built from.
#[derive(Debug, Clone)]
pub struct PruneInput {
    pub head: ChainHead,
    /// The oldest record still stored.
    pub oldest: i64,
    /// The first record kept (head.seq + 1 when every record goes).
    pub first_kept: i64,
    /// The record at `first_kept - 1`, the last to go.
    pub last_pruned: AuditRecord,
    /// The newest checkpoint so far.
    pub previous: Option<CheckpointRow>,
}

/// Which records `audit list` (and the REST API) shows: newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// At or after.
    pub since: Option<DateTime<Utc>>,
    /// Before.
    pub until: Option<DateTime<Utc>>,
    /// The actor's id or display name, exactly.
    pub actor: Option<String>,
    /// An action name exactly (`auth.login`), or a prefix ending in `.` or `.*` (`auth.*`).
    pub action: Option<String>,
    /// Only records with a smaller seq (the cursor of the next page).
    pub before_seq: Option<i64>,
    /// At most this many (0: 100; capped at 1000).
    pub limit: usize,
}

impl AuditFilter {
    pub fn effective_limit(&self) -> i64 {
        match self.limit {
            0 => 100,
            n => n.min(1000) as i64,
        }
    }
    /// (exact action, action prefix)
    pub fn action_parts(&self) -> (Option<String>, Option<String>) {
        match self.action.as_deref() {
            None => (None, None),
            Some(a) if a.ends_with(".*") => (None, Some(a[..a.len() - 1].to_owned())),
            Some(a) if a.ends_with('.') => (None, Some(a.to_owned())),
            Some(a) => (Some(a.to_owned()), None),
        }
    }
}

/// Seals a record onto the head it is given: the record and the new head.
pub type SealRecord<'a> =
    dyn FnMut(&ChainHead) -> Result<(AuditRecord, ChainHead), AuditError> + 'a;
/// Builds the checkpoint of a prune: the checkpoint and the new head.
pub type SealCheckpoint<'a> =
    dyn FnMut(&PruneInput) -> Result<(CheckpointRow, ChainHead), AuditError> + 'a;

/// The audit rows, as [`super::AuditLog`] needs them. Implemented for both store backends in
/// `store::audit` (SQLite) and `store::postgres::audit`, and for `Store`.
pub trait AuditRows {
    /// In ONE serialized transaction (no other append or prune in between, across processes
    /// and replicas): read the head, call `seal` with it, insert the record it returns and
    /// store the head it returns. The record written.
    fn append_audit(&mut self, seal: &mut SealRecord<'_>) -> Result<AuditRecord, AuditError>;
    /// The head row (`None` if it was deleted).
    fn audit_head(&mut self) -> Result<Option<ChainHead>, AuditError>;
    /// Up to `limit` records with seq > `after`, ascending.
    fn audit_records(&mut self, after: i64, limit: usize) -> Result<Vec<AuditRecord>, AuditError>;
    /// Every checkpoint, by number.
    fn audit_checkpoints(&mut self) -> Result<Vec<CheckpointRow>, AuditError>;
    /// Records matching `filter`, newest first.
    fn audit_query(&mut self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, AuditError>;
    /// In one transaction under the head lock: the first kept record is the oldest one at or
    /// after `cutoff_ms` (or head + 1); if that prunes anything, call `seal` and store the
    /// checkpoint and head it returns, then delete every record before `first_kept`.
    fn prune_audit(
        &mut self,
        cutoff_ms: i64,
        seal: &mut SealCheckpoint<'_>,
    ) -> Result<Option<CheckpointRow>, AuditError>;
}

/// What a prune did.
#[derive(Debug, Clone)]
pub struct PruneReport {
    pub pruned: i64,
    pub checkpoint: Option<CheckpointRow>,
}

/// Kinds of tampering [`verify`] tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// A record's fields do not match its MAC.
    Edited,
    /// A sequence number is missing inside the chain.
    Deleted,
    /// A record sits at another place than it was sealed at, or does not follow its
    /// predecessor.
    Reordered,
    /// The chain ends before the head says it does.
    Truncated,
    /// A record the head does not cover (appended without the key).
    Forged,
    /// The head row was altered or removed.
    HeadAltered,
    /// A checkpoint's signature or links do not hold.
    CheckpointForged,
    /// A checkpoint is missing (fewer than the head counts, or a gap in their numbers).
    CheckpointMissing,
    /// A record names another audit key than the one loaded.
    WrongKey,
}

impl FindingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::Edited => "edited",
            FindingKind::Deleted => "deleted",
            FindingKind::Reordered => "reordered",
            FindingKind::Truncated => "truncated",
            FindingKind::Forged => "forged",
            FindingKind::HeadAltered => "head_altered",
            FindingKind::CheckpointForged => "checkpoint_forged",
            FindingKind::CheckpointMissing => "checkpoint_missing",
            FindingKind::WrongKey => "wrong_key",
        }
    }
}

/// The first problem verification found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The first bad sequence number (a checkpoint's number for checkpoint findings; none
    /// for the head).
    pub seq: Option<i64>,
    pub kind: FindingKind,
    pub detail: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.seq {
            Some(s) => write!(f, "seq {s}: {}: {}", self.kind.as_str(), self.detail),
            None => write!(f, "{}: {}", self.kind.as_str(), self.detail),
        }
    }
}

/// What [`verify`] saw.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub key_id: String,
    /// Records walked.
    pub records: i64,
    /// First and last seq present (0 when none).
    pub first_seq: i64,
    pub head_seq: i64,
    pub checkpoints: i64,
    /// `None`: intact.
    pub finding: Option<Finding>,
}

pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

struct Enc(Vec<u8>);

impl Enc {
    fn new(domain: &str) -> Enc {
        let mut e = Enc(Vec::with_capacity(256));
        e.bytes(domain.as_bytes());
        e
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(&(b.len() as u64).to_be_bytes());
        self.0.extend_from_slice(b);
    }
    fn text(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    fn int(&mut self, n: i64) {
        self.0.extend_from_slice(&n.to_be_bytes());
    }
    fn opt(&mut self, s: Option<&str>) {
        match s {
            None => self.0.push(0),
            Some(s) => {
                self.0.push(1);
                self.text(s);
            }
        }
    }
}

/// The bytes a record's MAC covers: seq, prev MAC and every field.
pub fn record_message(r: &AuditRecord) -> Vec<u8> {
    let mut e = Enc::new("telbase/audit/record/v1");
    e.int(r.seq);
    e.text(&r.prev_mac);
    e.int(r.at_ms);
    e.text(&r.actor_kind);
    e.text(&r.actor_id);
    e.text(&r.actor_display);
    e.text(&r.action);
    e.opt(r.source.as_deref());
    e.opt(r.target_type.as_deref());
    e.opt(r.target_id.as_deref());
    e.text(&r.outcome);
    e.text(&r.details);
    e.text(&r.key_id);
    e.0
}

fn head_message(seq: i64, mac: &str, checkpoints: i64) -> Vec<u8> {
    let mut e = Enc::new("telbase/audit/head/v1");
    e.int(seq);
    e.text(mac);
    e.int(checkpoints);
    e.0
}

fn checkpoint_message(c: &CheckpointRow) -> Vec<u8> {
    let mut e = Enc::new("telbase/audit/checkpoint/v1");
    e.int(c.number);
    e.int(c.first_kept);
    e.text(&c.last_pruned_mac);
    e.int(c.pruned);
    e.int(c.at_ms);
    e.text(&c.prev_signature);
    e.text(&c.key_id);
    e.0
}

fn sealed_head(keys: &AuditKeys, seq: i64, mac: String, checkpoints: i64) -> ChainHead {
    let head_mac = hex(keys.mac(&head_message(seq, &mac, checkpoints)).as_ref());
    ChainHead {
        seq,
        mac,
        checkpoints,
        head_mac,
    }
}

fn field(name: &str, value: &str, max: usize) -> Result<(), AuditError> {
    if value.len() > max || value.chars().any(char::is_control) {
        return Err(AuditError::BadEvent(format!(
            "{name} must be at most {max} bytes without control characters"
        )));
    }
    Ok(())
}

/// The event as a row, checked (lengths, the details' secret check), not yet sealed.
pub fn unsealed(event: &AuditEvent) -> Result<AuditRecord, AuditError> {
    field("the actor id", &event.actor.id, 256)?;
    field("the actor display name", &event.actor.display, 256)?;
    if let Some(t) = &event.target {
        field("the target type", &t.kind, 64)?;
        field("the target id", &t.id, 512)?;
    }
    event.details.check()?;
    // Ids and display names are shown and filtered on; one shaped like a credential (a
    // token passed where its id belonged) is refused like details. Not the entropy rule:
    // ids are random by design (see `looks_like_credential`).
    for (what, v) in [
        ("the actor id", event.actor.id.as_str()),
        ("the actor display name", event.actor.display.as_str()),
    ]
    .into_iter()
    .chain(
        event
            .target
            .iter()
            .map(|t| ("the target id", t.id.as_str())),
    ) {
        if let Some(why) = super::details::looks_like_credential(v) {
            return Err(AuditError::SecretInDetails {
                key: what.to_owned(),
                why: why.to_owned(),
            });
        }
    }
    Ok(AuditRecord {
        seq: 0,
        at_ms: event.at.timestamp_millis(),
        actor_kind: event.actor.kind.as_str().to_owned(),
        actor_id: event.actor.id.clone(),
        actor_display: event.actor.display.clone(),
        action: event.action.name().to_owned(),
        source: event.source.map(|a| a.to_string()),
        target_type: event.target.as_ref().map(|t| t.kind.clone()),
        target_id: event.target.as_ref().map(|t| t.id.clone()),
        outcome: event.outcome.as_str().to_owned(),
        details: event.details.to_canonical(),
        key_id: String::new(),
        prev_mac: String::new(),
        mac: String::new(),
    })
}

/// Puts `record` after `head`: its seq, prev MAC, key id and MAC, and the new head.
pub fn seal(
    keys: &AuditKeys,
    mut record: AuditRecord,
    head: &ChainHead,
) -> Result<(AuditRecord, ChainHead), AuditError> {
    if !head.is_genesis() && !head_ok(keys, head) {
        // Appending onto a head someone moved would launder the tampering into a valid
        // chain: refuse (the request fails; `telbase audit verify` says what happened).
        return Err(AuditError::Damaged(
            "the chain head does not match its MAC (it was altered, or sealed by another audit key); run `telbase audit verify`".into(),
        ));
    }
    record.seq = head.seq + 1;
    record.prev_mac = head.mac.clone();
    record.key_id = keys.id().to_owned();
    record.mac = hex(keys.mac(&record_message(&record)).as_ref());
    let new_head = sealed_head(keys, record.seq, record.mac.clone(), head.checkpoints);
    Ok((record, new_head))
}

fn head_ok(keys: &AuditKeys, head: &ChainHead) -> bool {
    keys.mac_ok(
        &head_message(head.seq, &head.mac, head.checkpoints),
        &head.head_mac,
    )
}

/// The checkpoint for a prune (and the head counting it), after checking that the last
/// pruned record is the genuine one.
pub fn checkpoint(
    keys: &AuditKeys,
    input: &PruneInput,
    now_ms: i64,
) -> Result<(CheckpointRow, ChainHead), AuditError> {
    let last = &input.last_pruned;
    if !head_ok(keys, &input.head)
        || last.seq != input.first_kept - 1
        || !keys.mac_ok(&record_message(last), &last.mac)
    {
        return Err(AuditError::Damaged(format!(
            "the chain changed while pruning (record {} or the head does not verify); nothing was pruned",
            last.seq
        )));
    }
    let mut cp = CheckpointRow {
        number: input.head.checkpoints + 1,
        first_kept: input.first_kept,
        last_pruned_mac: last.mac.clone(),
        pruned: input.first_kept - input.oldest,
        at_ms: now_ms,
        prev_signature: input
            .previous
            .as_ref()
            .map(|p| p.signature.clone())
            .unwrap_or_default(),
        key_id: keys.id().to_owned(),
        signature: String::new(),
    };
    cp.signature = keys.sign(&checkpoint_message(&cp));
    let head = sealed_head(keys, input.head.seq, input.head.mac.clone(), cp.number);
    Ok((cp, head))
}

/// Records read per round trip while verifying.
const BATCH: usize = 500;

/// How often [`verify`] starts over when the log changed under it.
const VERIFY_TRIES: usize = 3;

/// Walks the head, the checkpoints and every record; the first problem, if any.
///
/// The walk is several reads, not one snapshot, and a live server keeps appending and may
/// prune meanwhile: records appended after the head was read are followed by re-reading the
/// head, and a finding made while a prune moved the head's checkpoint count is checked again
/// from the start (a real finding stays; a prune in the middle of the walk does not count).
pub fn verify(keys: &AuditKeys, rows: &mut dyn AuditRows) -> Result<Verification, AuditError> {
    let mut tries = 0;
    loop {
        tries += 1;
        let before = rows.audit_head()?;
        let v = verify_once(keys, rows)?;
        if v.finding.is_none() || tries >= VERIFY_TRIES {
            return Ok(v);
        }
        let after = rows.audit_head()?;
        let pruned_meanwhile = match (&before, &after) {
            (Some(b), Some(a)) => a.checkpoints != b.checkpoints,
            _ => false,
        };
        if !pruned_meanwhile {
            return Ok(v);
        }
    }
}

fn verify_once(keys: &AuditKeys, rows: &mut dyn AuditRows) -> Result<Verification, AuditError> {
    let mut out = Verification {
        key_id: keys.id().to_owned(),
        records: 0,
        first_seq: 0,
        head_seq: 0,
        checkpoints: 0,
        finding: None,
    };
    let found = |seq: Option<i64>, kind: FindingKind, detail: String| Finding { seq, kind, detail };
    let Some(mut head) = rows.audit_head()? else {
        out.finding = Some(found(
            None,
            FindingKind::HeadAltered,
            "the chain head row is missing".into(),
        ));
        return Ok(out);
    };
    out.head_seq = head.seq;
    if !head.is_genesis() && !head_ok(keys, &head) {
        // Most often the wrong key is loaded: say so when the records name another one.
        if let Some(first) = rows.audit_records(0, 1)?.first()
            && first.key_id != keys.id()
        {
            out.finding = Some(found(
                Some(first.seq),
                FindingKind::WrongKey,
                format!(
                    "the records were sealed under audit key `{}`, but the loaded key is {}: load the key that sealed them (or a record was edited)",
                    super::details::shown(&first.key_id),
                    keys.id()
                ),
            ));
            return Ok(out);
        }
        out.finding = Some(found(
            None,
            FindingKind::HeadAltered,
            format!(
                "the chain head (seq {}, {} checkpoints) does not match its MAC: it was moved or rewritten (or sealed by another key than {})",
                head.seq,
                head.checkpoints,
                keys.id()
            ),
        ));
        return Ok(out);
    }

    // The checkpoints: numbered 1.., each signed and linked to the one before, as many as the
    // head counts.
    let checkpoints = rows.audit_checkpoints()?;
    out.checkpoints = checkpoints.len() as i64;
    let mut prev: Option<&CheckpointRow> = None;
    for (i, cp) in checkpoints.iter().enumerate() {
        let n = i as i64 + 1;
        if cp.number != n {
            out.finding = Some(found(
                Some(n),
                FindingKind::CheckpointMissing,
                format!("checkpoint {n} is missing (the next one is {})", cp.number),
            ));
            return Ok(out);
        }
        let prev_first = prev.map(|p| p.first_kept).unwrap_or(1);
        let bad = if cp.key_id != keys.id() {
            Some(format!(
                "signed by audit key {}, not the loaded {}",
                cp.key_id,
                keys.id()
            ))
        } else if !keys.signature_ok(&checkpoint_message(cp), &cp.signature) {
            Some("its signature does not verify: it was edited or forged".into())
        } else if cp.prev_signature != prev.map(|p| p.signature.as_str()).unwrap_or("") {
            Some("it does not link to the checkpoint before it".into())
        } else if cp.first_kept - prev_first != cp.pruned || cp.pruned <= 0 {
            Some("its counts do not add up with the checkpoint before it".into())
        } else {
            None
        };
        if let Some(detail) = bad {
            out.finding = Some(found(
                Some(cp.number),
                FindingKind::CheckpointForged,
                format!("checkpoint {}: {detail}", cp.number),
            ));
            return Ok(out);
        }
        prev = Some(cp);
    }
    if out.checkpoints != head.checkpoints {
        out.finding = Some(found(
            Some(out.checkpoints + 1),
            FindingKind::CheckpointMissing,
            format!(
                "the head counts {} checkpoints but {} are stored",
                head.checkpoints, out.checkpoints
            ),
        ));
        return Ok(out);
    }

    // The records: from the last checkpoint (or seq 1), each sealed where it sits and
    // following the one before, up to exactly the head.
    let (mut expect, mut last_mac) = match prev {
        Some(cp) => (cp.first_kept, cp.last_pruned_mac.clone()),
        None => (1, ZERO_MAC.to_owned()),
    };
    let mut after = 0;
    loop {
        let batch = rows.audit_records(after, BATCH)?;
        let Some(last) = batch.last() else { break };
        after = last.seq;
        for r in &batch {
            if out.records == 0 {
                out.first_seq = r.seq;
            }
            out.records += 1;
            if r.seq > head.seq {
                // Appended since the head was read? Then a newer head covers it.
                if let Some(newer) = rows.audit_head()?
                    && newer.seq >= r.seq
                    && newer.checkpoints == head.checkpoints
                    && head_ok(keys, &newer)
                {
                    head = newer;
                    out.head_seq = head.seq;
                }
            }
            if r.seq > head.seq {
                out.finding = Some(found(
                    Some(r.seq),
                    FindingKind::Forged,
                    format!(
                        "record {} lies beyond the chain head (seq {}): it was added without the audit key",
                        r.seq, head.seq
                    ),
                ));
                return Ok(out);
            }
            if r.seq < expect {
                // Before the last checkpoint's first kept record: pruned records came back.
                out.finding = Some(found(
                    Some(r.seq),
                    FindingKind::Forged,
                    format!(
                        "record {} lies before the first record the last checkpoint keeps ({expect})",
                        r.seq
                    ),
                ));
                return Ok(out);
            }
            if r.seq > expect {
                out.finding = Some(found(
                    Some(expect),
                    FindingKind::Deleted,
                    if expect + 1 == r.seq {
                        format!("record {expect} is missing (deleted)")
                    } else {
                        format!("records {expect} to {} are missing (deleted)", r.seq - 1)
                    },
                ));
                return Ok(out);
            }
            if r.key_id != keys.id() {
                out.finding = Some(found(
                    Some(r.seq),
                    FindingKind::WrongKey,
                    format!(
                        "sealed under audit key `{}`, not the loaded {} (the wrong key is loaded, or the row was edited)",
                        super::details::shown(&r.key_id),
                        keys.id()
                    ),
                ));
                return Ok(out);
            }
            if !keys.mac_ok(&record_message(r), &r.mac) {
                let moved_from = (r.seq - MOVE_WINDOW..=r.seq + MOVE_WINDOW)
                    .filter(|s| *s >= 1 && *s != r.seq)
                    .find(|s| {
                        let mut m = r.clone();
                        m.seq = *s;
                        keys.mac_ok(&record_message(&m), &r.mac)
                    });
                out.finding = Some(match moved_from {
                    Some(s) => found(
                        Some(r.seq),
                        FindingKind::Reordered,
                        format!(
                            "record {} was sealed as record {s}: records were moved",
                            r.seq
                        ),
                    ),
                    None => found(
                        Some(r.seq),
                        FindingKind::Edited,
                        format!(
                            "record {} does not match its MAC: a field was changed (or the record was forged without the key)",
                            r.seq
                        ),
                    ),
                });
                return Ok(out);
            }
            if r.prev_mac != last_mac {
                out.finding = Some(found(
                    Some(r.seq),
                    FindingKind::Reordered,
                    format!(
                        "record {} does not follow the record before it (its previous MAC differs)",
                        r.seq
                    ),
                ));
                return Ok(out);
            }
            last_mac = r.mac.clone();
            expect = r.seq + 1;
        }
    }
    if expect - 1 != head.seq || last_mac != head.mac {
        out.finding = Some(found(
            Some(expect),
            FindingKind::Truncated,
            if expect <= head.seq {
                format!(
                    "the chain ends at record {} but the head says it reaches {}: the tail was removed",
                    expect - 1,
                    head.seq
                )
            } else {
                "the last record is not the one the head names".into()
            },
        ));
    }
    Ok(out)
}

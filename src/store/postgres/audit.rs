//! The audit log's rows on PostgreSQL: the same statements as SQLite's (`store::audit`).
//! Appends and prunes are one transaction each that first locks the chain head row
//! (`SELECT … FOR UPDATE`): a second replica's append waits for the first one's commit and
//! then reads the head it wrote, so the chain stays linear with no gap or fork.

use crate::audit::{
    AuditError, AuditFilter, AuditRecord, AuditRows, ChainHead, CheckpointRow, PruneInput,
    SealCheckpoint, SealRecord,
};
use crate::store::audit::{CHECKPOINT_COLUMNS, RECORD_COLUMNS, query_params};

use super::{PostgresStore, wait};

/// `store::audit::QUERY` with PostgreSQL placeholders, typed where a bare `$n IS NULL` could
/// not say its type.
const QUERY: &str = "SELECT seq, at_ms, actor_kind, actor_id, actor_display, action, \
     source, target_type, target_id, outcome, details, key_id, prev_mac, mac FROM audit_records
     WHERE ($1::BIGINT IS NULL OR at_ms >= $1::BIGINT)
       AND ($2::BIGINT IS NULL OR at_ms < $2::BIGINT)
       AND ($3::TEXT IS NULL OR actor_id = $3::TEXT OR actor_display = $3::TEXT)
       AND ($4::TEXT IS NULL OR action = $4::TEXT)
       AND ($5::TEXT IS NULL OR substr(action, 1, length($5::TEXT)) = $5::TEXT)
       AND ($6::BIGINT IS NULL OR seq < $6::BIGINT)
     ORDER BY seq DESC LIMIT $7";

fn record(r: &tokio_postgres::Row) -> AuditRecord {
    AuditRecord {
        seq: r.get(0),
        at_ms: r.get(1),
        actor_kind: r.get(2),
        actor_id: r.get(3),
        actor_display: r.get(4),
        action: r.get(5),
        source: r.get(6),
        target_type: r.get(7),
        target_id: r.get(8),
        outcome: r.get(9),
        details: r.get(10),
        key_id: r.get(11),
        prev_mac: r.get(12),
        mac: r.get(13),
    }
}

fn checkpoint(r: &tokio_postgres::Row) -> CheckpointRow {
    CheckpointRow {
        number: r.get(0),
        first_kept: r.get(1),
        last_pruned_mac: r.get(2),
        pruned: r.get(3),
        at_ms: r.get(4),
        prev_signature: r.get(5),
        key_id: r.get(6),
        signature: r.get(7),
    }
}

fn head(r: &tokio_postgres::Row) -> ChainHead {
    ChainHead {
        seq: r.get(0),
        mac: r.get(1),
        checkpoints: r.get(2),
        head_mac: r.get(3),
    }
}

const HEAD: &str = "SELECT seq, mac, checkpoints, head_mac FROM audit_head WHERE id = 1";
const SET_HEAD: &str =
    "UPDATE audit_head SET seq = $1, mac = $2, checkpoints = $3, head_mac = $4 WHERE id = 1";

fn missing_head() -> AuditError {
    AuditError::Damaged("the chain head row is missing; run `telbase audit verify`".into())
}

/// Appends one sealed record inside `tx`, after locking the chain head row (the trait's
/// append opens its own transaction; `store::tx::Tx` shares the caller's).
pub(crate) fn append_on(
    tx: &tokio_postgres::Transaction<'_>,
    store: &PostgresStore,
    seal: &mut SealRecord<'_>,
) -> Result<AuditRecord, AuditError> {
    let e = |e| AuditError::Store(store.err(e));
    let current = wait(tx.query_opt(&format!("{HEAD} FOR UPDATE"), &[]))
        .map_err(e)?
        .as_ref()
        .map(head)
        .ok_or_else(missing_head)?;
    let (r, new_head) = seal(&current)?;
    wait(tx.execute(
        &format!(
            "INSERT INTO audit_records ({RECORD_COLUMNS})
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        ),
        &[
            &r.seq,
            &r.at_ms,
            &r.actor_kind,
            &r.actor_id,
            &r.actor_display,
            &r.action,
            &r.source,
            &r.target_type,
            &r.target_id,
            &r.outcome,
            &r.details,
            &r.key_id,
            &r.prev_mac,
            &r.mac,
        ],
    ))
    .map_err(e)?;
    wait(tx.execute(
        SET_HEAD,
        &[
            &new_head.seq,
            &new_head.mac,
            &new_head.checkpoints,
            &new_head.head_mac,
        ],
    ))
    .map_err(e)?;
    Ok(r)
}

impl AuditRows for PostgresStore {
    fn append_audit(&mut self, seal: &mut SealRecord<'_>) -> Result<AuditRecord, AuditError> {
        let e = |e| AuditError::Store(self.err(e));
        let mut c = self.conn()?;
        let tx = wait(c.transaction()).map_err(e)?;
        let r = append_on(&tx, self, seal)?;
        wait(tx.commit()).map_err(e)?;
        Ok(r)
    }

    fn audit_head(&mut self) -> Result<Option<ChainHead>, AuditError> {
        Ok(self.query_opt(HEAD, &[])?.as_ref().map(head))
    }

    fn audit_records(&mut self, after: i64, limit: usize) -> Result<Vec<AuditRecord>, AuditError> {
        let limit = limit as i64;
        Ok(self
            .query(
                &format!(
                    "SELECT {RECORD_COLUMNS} FROM audit_records WHERE seq > $1 ORDER BY seq LIMIT $2"
                ),
                &[&after, &limit],
            )?
            .iter()
            .map(record)
            .collect())
    }

    fn audit_checkpoints(&mut self) -> Result<Vec<CheckpointRow>, AuditError> {
        Ok(self
            .query(
                &format!("SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY number"),
                &[],
            )?
            .iter()
            .map(checkpoint)
            .collect())
    }

    fn audit_query(&mut self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, AuditError> {
        let p = query_params(filter);
        Ok(self
            .query(QUERY, &[&p.0, &p.1, &p.2, &p.3, &p.4, &p.5, &p.6])?
            .iter()
            .map(record)
            .collect())
    }

    fn prune_audit(
        &mut self,
        cutoff_ms: i64,
        seal: &mut SealCheckpoint<'_>,
    ) -> Result<Option<CheckpointRow>, AuditError> {
        let e = |e| AuditError::Store(self.err(e));
        let mut c = self.conn()?;
        let tx = wait(c.transaction()).map_err(e)?;
        let current = wait(tx.query_opt(&format!("{HEAD} FOR UPDATE"), &[]))
            .map_err(e)?
            .as_ref()
            .map(head)
            .ok_or_else(missing_head)?;
        let oldest: Option<i64> = wait(tx.query_one("SELECT MIN(seq) FROM audit_records", &[]))
            .map_err(e)?
            .get(0);
        let Some(oldest) = oldest else {
            return Ok(None);
        };
        let first_kept: Option<i64> = wait(tx.query_one(
            "SELECT MIN(seq) FROM audit_records WHERE at_ms >= $1",
            &[&cutoff_ms],
        ))
        .map_err(e)?
        .get(0);
        let first_kept = first_kept.unwrap_or(current.seq + 1);
        if first_kept <= oldest {
            return Ok(None);
        }
        let last_pruned = wait(tx.query_opt(
            &format!("SELECT {RECORD_COLUMNS} FROM audit_records WHERE seq = $1"),
            &[&(first_kept - 1)],
        ))
        .map_err(e)?
        .as_ref()
        .map(record)
        .ok_or_else(|| {
            AuditError::Damaged(format!(
                "record {} is missing; run `telbase audit verify`",
                first_kept - 1
            ))
        })?;
        let previous = wait(tx.query_opt(
            &format!(
                "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY number DESC LIMIT 1"
            ),
            &[],
        ))
        .map_err(e)?
        .as_ref()
        .map(checkpoint);
        let (cp, new_head) = seal(&PruneInput {
            head: current,
            oldest,
            first_kept,
            last_pruned,
            previous,
        })?;
        wait(tx.execute(
            &format!(
                "INSERT INTO audit_checkpoints ({CHECKPOINT_COLUMNS})
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
            ),
            &[
                &cp.number,
                &cp.first_kept,
                &cp.last_pruned_mac,
                &cp.pruned,
                &cp.at_ms,
                &cp.prev_signature,
                &cp.key_id,
                &cp.signature,
            ],
        ))
        .map_err(e)?;
        wait(tx.execute(
            "DELETE FROM audit_records WHERE seq < $1",
            &[&cp.first_kept],
        ))
        .map_err(e)?;
        wait(tx.execute(
            SET_HEAD,
            &[
                &new_head.seq,
                &new_head.mac,
                &new_head.checkpoints,
                &new_head.head_mac,
            ],
        ))
        .map_err(e)?;
        wait(tx.commit()).map_err(e)?;
        Ok(Some(cp))
    }
}

//! The audit log's rows (`crate::audit`): the migration on both backends, the SQLite
//! statements, and [`AuditRows`] for [`Store`]. The PostgreSQL statements are the same SQL in
//! `postgres::audit`. Appends and prunes take SQLite's write lock first (`BEGIN IMMEDIATE`),
//! so processes sharing the file append one after another onto one head.

use rusqlite::{OptionalExtension as _, TransactionBehavior, params};

use super::{SqliteStore, Store};
use crate::audit::{
    AuditError, AuditFilter, AuditRecord, AuditRows, ChainHead, CheckpointRow, PruneInput,
    SealCheckpoint, SealRecord,
};

/// Migration "audit log" for SQLite (the PostgreSQL one is [`POSTGRES_MIGRATION`]).
pub const SQLITE_MIGRATION: &str = "
    -- The security log: append only, one chain. `mac` = HMAC-SHA256(audit chain key,
    -- canonical encoding of seq, prev_mac and every other column); see crate::audit.
    -- at_ms is the server's clock (unix ms, UTC). details is the exact JSON text sealed.
    CREATE TABLE audit_records (
        seq           INTEGER PRIMARY KEY,
        at_ms         INTEGER NOT NULL,
        actor_kind    TEXT NOT NULL,
        actor_id      TEXT NOT NULL,
        actor_display TEXT NOT NULL,
        action        TEXT NOT NULL,
        source        TEXT,
        target_type   TEXT,
        target_id     TEXT,
        outcome       TEXT NOT NULL,
        details       TEXT NOT NULL,
        key_id        TEXT NOT NULL,
        prev_mac      TEXT NOT NULL,
        mac           TEXT NOT NULL
    );
    CREATE INDEX audit_records_by_time ON audit_records(at_ms);
    CREATE INDEX audit_records_by_actor ON audit_records(actor_id, seq);
    CREATE INDEX audit_records_by_action ON audit_records(action, seq);
    -- The chain head: one row, locked by every append and prune (that lock is what keeps
    -- one linear chain across writers). head_mac is empty only in this genesis row.
    CREATE TABLE audit_head (
        id          INTEGER PRIMARY KEY CHECK (id = 1),
        seq         INTEGER NOT NULL,
        mac         TEXT NOT NULL,
        checkpoints INTEGER NOT NULL,
        head_mac    TEXT NOT NULL
    );
    INSERT INTO audit_head (id, seq, mac, checkpoints, head_mac)
        VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000', 0, '');
    -- Retention checkpoints, Ed25519-signed, each linked to the one before.
    CREATE TABLE audit_checkpoints (
        number          INTEGER PRIMARY KEY,
        first_kept      INTEGER NOT NULL,
        last_pruned_mac TEXT NOT NULL,
        pruned          INTEGER NOT NULL,
        at_ms           INTEGER NOT NULL,
        prev_signature  TEXT NOT NULL,
        key_id          TEXT NOT NULL,
        signature       TEXT NOT NULL
    );
";

/// Migration "audit log" for PostgreSQL: the same tables, BIGINT for integers.
pub const POSTGRES_MIGRATION: &str = "
    CREATE TABLE audit_records (
        seq           BIGINT PRIMARY KEY,
        at_ms         BIGINT NOT NULL,
        actor_kind    TEXT NOT NULL,
        actor_id      TEXT NOT NULL,
        actor_display TEXT NOT NULL,
        action        TEXT NOT NULL,
        source        TEXT,
        target_type   TEXT,
        target_id     TEXT,
        outcome       TEXT NOT NULL,
        details       TEXT NOT NULL,
        key_id        TEXT NOT NULL,
        prev_mac      TEXT NOT NULL,
        mac           TEXT NOT NULL
    );
    CREATE INDEX audit_records_by_time ON audit_records(at_ms);
    CREATE INDEX audit_records_by_actor ON audit_records(actor_id, seq);
    CREATE INDEX audit_records_by_action ON audit_records(action, seq);
    CREATE TABLE audit_head (
        id          BIGINT PRIMARY KEY CHECK (id = 1),
        seq         BIGINT NOT NULL,
        mac         TEXT NOT NULL,
        checkpoints BIGINT NOT NULL,
        head_mac    TEXT NOT NULL
    );
    INSERT INTO audit_head (id, seq, mac, checkpoints, head_mac)
        VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000', 0, '');
    CREATE TABLE audit_checkpoints (
        number          BIGINT PRIMARY KEY,
        first_kept      BIGINT NOT NULL,
        last_pruned_mac TEXT NOT NULL,
        pruned          BIGINT NOT NULL,
        at_ms           BIGINT NOT NULL,
        prev_signature  TEXT NOT NULL,
        key_id          TEXT NOT NULL,
        signature       TEXT NOT NULL
    );
";

/// The record columns, in [`AuditRecord`]'s order (both backends).
pub(super) const RECORD_COLUMNS: &str = "seq, at_ms, actor_kind, actor_id, actor_display, action, \
     source, target_type, target_id, outcome, details, key_id, prev_mac, mac";
pub(super) const CHECKPOINT_COLUMNS: &str =
    "number, first_kept, last_pruned_mac, pruned, at_ms, prev_signature, key_id, signature";

/// The filtered listing, in SQL both backends run (`?N` becomes `$N` for PostgreSQL). Every
/// parameter also appears in a typed comparison, so PostgreSQL can infer its type.
pub(super) const QUERY: &str = "SELECT seq, at_ms, actor_kind, actor_id, actor_display, action, \
     source, target_type, target_id, outcome, details, key_id, prev_mac, mac FROM audit_records
     WHERE (?1 IS NULL OR at_ms >= ?1)
       AND (?2 IS NULL OR at_ms < ?2)
       AND (?3 IS NULL OR actor_id = ?3 OR actor_display = ?3)
       AND (?4 IS NULL OR action = ?4)
       AND (?5 IS NULL OR substr(action, 1, length(?5)) = ?5)
       AND (?6 IS NULL OR seq < ?6)
     ORDER BY seq DESC LIMIT ?7";

/// The filter's parameters, in [`QUERY`]'s order.
pub(super) type QueryParams = (
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    i64,
);

pub(super) fn query_params(f: &AuditFilter) -> QueryParams {
    let (exact, prefix) = f.action_parts();
    (
        f.since.map(|t| t.timestamp_millis()),
        f.until.map(|t| t.timestamp_millis()),
        f.actor.clone(),
        exact,
        prefix,
        f.before_seq,
        f.effective_limit(),
    )
}

fn record(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRecord> {
    Ok(AuditRecord {
        seq: r.get(0)?,
        at_ms: r.get(1)?,
        actor_kind: r.get(2)?,
        actor_id: r.get(3)?,
        actor_display: r.get(4)?,
        action: r.get(5)?,
        source: r.get(6)?,
        target_type: r.get(7)?,
        target_id: r.get(8)?,
        outcome: r.get(9)?,
        details: r.get(10)?,
        key_id: r.get(11)?,
        prev_mac: r.get(12)?,
        mac: r.get(13)?,
    })
}

fn checkpoint(r: &rusqlite::Row<'_>) -> rusqlite::Result<CheckpointRow> {
    Ok(CheckpointRow {
        number: r.get(0)?,
        first_kept: r.get(1)?,
        last_pruned_mac: r.get(2)?,
        pruned: r.get(3)?,
        at_ms: r.get(4)?,
        prev_signature: r.get(5)?,
        key_id: r.get(6)?,
        signature: r.get(7)?,
    })
}

fn head(r: &rusqlite::Row<'_>) -> rusqlite::Result<ChainHead> {
    Ok(ChainHead {
        seq: r.get(0)?,
        mac: r.get(1)?,
        checkpoints: r.get(2)?,
        head_mac: r.get(3)?,
    })
}

const HEAD: &str = "SELECT seq, mac, checkpoints, head_mac FROM audit_head WHERE id = 1";
const SET_HEAD: &str =
    "UPDATE audit_head SET seq = ?1, mac = ?2, checkpoints = ?3, head_mac = ?4 WHERE id = 1";

fn missing_head() -> AuditError {
    AuditError::Damaged("the chain head row is missing; run `telbase audit verify`".into())
}

/// Appends one sealed record on `conn`, which is inside a transaction holding SQLite's write
/// lock (the trait's append opens one; [`super::tx::Tx`] shares the caller's).
pub(super) fn append_on(
    conn: &rusqlite::Connection,
    path: &str,
    seal: &mut SealRecord<'_>,
) -> Result<AuditRecord, AuditError> {
    let e = |error| {
        AuditError::Store(super::StoreError::Sqlite {
            path: path.to_owned(),
            error,
        })
    };
    let current = conn
        .query_row(HEAD, [], head)
        .optional()
        .map_err(e)?
        .ok_or_else(missing_head)?;
    let (r, new_head) = seal(&current)?;
    conn.execute(
        &format!(
            "INSERT INTO audit_records ({RECORD_COLUMNS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
        ),
        params![
            r.seq,
            r.at_ms,
            r.actor_kind,
            r.actor_id,
            r.actor_display,
            r.action,
            r.source,
            r.target_type,
            r.target_id,
            r.outcome,
            r.details,
            r.key_id,
            r.prev_mac,
            r.mac
        ],
    )
    .map_err(e)?;
    conn.execute(
        SET_HEAD,
        params![
            new_head.seq,
            new_head.mac,
            new_head.checkpoints,
            new_head.head_mac
        ],
    )
    .map_err(e)?;
    Ok(r)
}

impl AuditRows for SqliteStore {
    fn append_audit(&mut self, seal: &mut SealRecord<'_>) -> Result<AuditRecord, AuditError> {
        let path = self.path.display().to_string();
        let e = |error| {
            AuditError::Store(super::StoreError::Sqlite {
                path: path.clone(),
                error,
            })
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(e)?;
        let r = append_on(&tx, &path, seal)?;
        tx.commit().map_err(e)?;
        Ok(r)
    }

    fn audit_head(&mut self) -> Result<Option<ChainHead>, AuditError> {
        Ok(self
            .conn
            .query_row(HEAD, [], head)
            .optional()
            .map_err(|e| self.err(e))?)
    }

    fn audit_records(&mut self, after: i64, limit: usize) -> Result<Vec<AuditRecord>, AuditError> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {RECORD_COLUMNS} FROM audit_records WHERE seq > ?1 ORDER BY seq LIMIT ?2"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![after, limit as i64], record)
            .and_then(|r| r.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    fn audit_checkpoints(&mut self) -> Result<Vec<CheckpointRow>, AuditError> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY number"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], checkpoint)
            .and_then(|r| r.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    fn audit_query(&mut self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, AuditError> {
        let p = query_params(filter);
        let mut stmt = self.conn.prepare(QUERY).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![p.0, p.1, p.2, p.3, p.4, p.5, p.6], record)
            .and_then(|r| r.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    fn prune_audit(
        &mut self,
        cutoff_ms: i64,
        seal: &mut SealCheckpoint<'_>,
    ) -> Result<Option<CheckpointRow>, AuditError> {
        let path = self.path.display().to_string();
        let e = |error| {
            AuditError::Store(super::StoreError::Sqlite {
                path: path.clone(),
                error,
            })
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(e)?;
        let current = tx
            .query_row(HEAD, [], head)
            .optional()
            .map_err(e)?
            .ok_or_else(missing_head)?;
        let oldest: Option<i64> = tx
            .query_row("SELECT MIN(seq) FROM audit_records", [], |r| r.get(0))
            .map_err(e)?;
        let Some(oldest) = oldest else {
            return Ok(None);
        };
        let first_kept: Option<i64> = tx
            .query_row(
                "SELECT MIN(seq) FROM audit_records WHERE at_ms >= ?1",
                [cutoff_ms],
                |r| r.get(0),
            )
            .map_err(e)?;
        let first_kept = first_kept.unwrap_or(current.seq + 1);
        if first_kept <= oldest {
            return Ok(None);
        }
        let last_pruned = tx
            .query_row(
                &format!("SELECT {RECORD_COLUMNS} FROM audit_records WHERE seq = ?1"),
                [first_kept - 1],
                record,
            )
            .optional()
            .map_err(e)?
            .ok_or_else(|| {
                AuditError::Damaged(format!(
                    "record {} is missing; run `telbase audit verify`",
                    first_kept - 1
                ))
            })?;
        let previous = tx
            .query_row(
                &format!(
                    "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY number DESC LIMIT 1"
                ),
                [],
                checkpoint,
            )
            .optional()
            .map_err(e)?;
        let (cp, new_head) = seal(&PruneInput {
            head: current,
            oldest,
            first_kept,
            last_pruned,
            previous,
        })?;
        tx.execute(
            &format!(
                "INSERT INTO audit_checkpoints ({CHECKPOINT_COLUMNS})
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
            ),
            params![
                cp.number,
                cp.first_kept,
                cp.last_pruned_mac,
                cp.pruned,
                cp.at_ms,
                cp.prev_signature,
                cp.key_id,
                cp.signature
            ],
        )
        .map_err(e)?;
        tx.execute("DELETE FROM audit_records WHERE seq < ?1", [cp.first_kept])
            .map_err(e)?;
        tx.execute(
            SET_HEAD,
            params![
                new_head.seq,
                new_head.mac,
                new_head.checkpoints,
                new_head.head_mac
            ],
        )
        .map_err(e)?;
        tx.commit().map_err(e)?;
        Ok(Some(cp))
    }
}

/// Forwards to the backend.
macro_rules! both {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            Store::Sqlite($s) => $call,
            Store::Postgres($s) => $call,
        }
    };
}

impl AuditRows for Store {
    fn append_audit(&mut self, seal: &mut SealRecord<'_>) -> Result<AuditRecord, AuditError> {
        both!(self, s => s.append_audit(seal))
    }
    fn audit_head(&mut self) -> Result<Option<ChainHead>, AuditError> {
        both!(self, s => s.audit_head())
    }
    fn audit_records(&mut self, after: i64, limit: usize) -> Result<Vec<AuditRecord>, AuditError> {
        both!(self, s => s.audit_records(after, limit))
    }
    fn audit_checkpoints(&mut self) -> Result<Vec<CheckpointRow>, AuditError> {
        both!(self, s => s.audit_checkpoints())
    }
    fn audit_query(&mut self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, AuditError> {
        both!(self, s => s.audit_query(filter))
    }
    fn prune_audit(
        &mut self,
        cutoff_ms: i64,
        seal: &mut SealCheckpoint<'_>,
    ) -> Result<Option<CheckpointRow>, AuditError> {
        both!(self, s => s.prune_audit(cutoff_ms, seal))
    }
}

//! [`crate::store::tx::Tx`] on PostgreSQL: one pooled connection held for the whole
//! transaction, and the statements the control plane runs on it.

use tokio_postgres::types::ToSql;

use super::{PostgresStore, wait};
use crate::store::StoreError;
use crate::store::tx::{Tx, TxError};

/// Runs `f` in one transaction on one pooled connection: committed when `f` returns `Ok`,
/// rolled back (by dropping the transaction) otherwise.
pub(crate) fn in_transaction<T, E>(
    store: &PostgresStore,
    f: impl FnOnce(&mut Tx<'_>) -> Result<T, TxError<E>>,
) -> Result<T, TxError<E>> {
    let mut c = store.conn()?;
    let tx = wait(c.transaction()).map_err(|e| store.err(e))?;
    let mut t = Tx::Postgres { tx, store };
    let out = f(&mut t)?;
    let Tx::Postgres { tx, .. } = t else {
        unreachable!("built as PostgreSQL above")
    };
    wait(tx.commit()).map_err(|e| store.err(e))?;
    Ok(out)
}

/// A statement inside `tx`; rows changed.
pub(crate) fn execute(
    tx: &tokio_postgres::Transaction<'_>,
    store: &PostgresStore,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, StoreError> {
    wait(tx.execute(sql, params)).map_err(|e| store.err(e))
}

/// A query inside `tx`.
pub(crate) fn query(
    tx: &tokio_postgres::Transaction<'_>,
    store: &PostgresStore,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>, StoreError> {
    wait(tx.query(sql, params)).map_err(|e| store.err(e))
}

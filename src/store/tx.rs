//! One store transaction shared by a change and its audit record ([`Tx`]), so that an
//! audited change commits together with its record or not at all: a failed audit write
//! leaves nothing behind (the must-write rule without a window where the change is done but
//! unrecorded). SQLite: an `IMMEDIATE` transaction on the store's connection (the audit
//! append needs the write lock anyway). PostgreSQL: one pooled connection for the whole
//! transaction; the audit append locks the chain head row (`FOR UPDATE`) inside it, so two
//! replicas' audited changes serialize on the head exactly as their plain appends do.
//!
//! The control plane's statements run on a [`Tx`] through `control::db::Db`; the audit
//! append through [`Tx::append_audit`].

use rusqlite::TransactionBehavior;

use super::{PostgresStore, Store, StoreError};
use crate::audit::{AuditError, AuditRecord, SealRecord};

/// An open transaction on either backend (see the module doc).
pub enum Tx<'a> {
    Sqlite {
        tx: rusqlite::Transaction<'a>,
        path: String,
    },
    Postgres {
        tx: tokio_postgres::Transaction<'a>,
        store: &'a PostgresStore,
    },
}

impl Tx<'_> {
    /// Appends one sealed audit record inside this transaction (`seal` is given the chain
    /// head as this transaction sees it, after locking it).
    pub fn append_audit(&mut self, seal: &mut SealRecord<'_>) -> Result<AuditRecord, AuditError> {
        match self {
            Tx::Sqlite { tx, path } => super::audit::append_on(tx, path, seal),
            Tx::Postgres { tx, store } => super::postgres::append_audit_on(tx, store, seal),
        }
    }

    /// A backend error as a store error.
    pub(crate) fn sqlite_err(path: &str, error: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: path.to_owned(),
            error,
        }
    }
}

/// Why a transaction's work stopped: the caller's own reason (rolled back, handed back as
/// is), or the store failing (rolled back too).
#[derive(Debug)]
pub enum TxError<E> {
    Store(StoreError),
    Abort(E),
}

impl<E> From<StoreError> for TxError<E> {
    fn from(e: StoreError) -> Self {
        TxError::Store(e)
    }
}

impl Store {
    /// Runs `f` in one transaction: committed when `f` returns `Ok`, rolled back otherwise
    /// (and when the commit fails, which is then a [`TxError::Store`]).
    pub fn transaction<T, E>(
        &mut self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<T, TxError<E>>,
    ) -> Result<T, TxError<E>> {
        match self {
            Store::Sqlite(s) => {
                let path = s.path.display().to_string();
                let tx = s
                    .conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(|e| Tx::sqlite_err(&path, e))?;
                let mut t = Tx::Sqlite {
                    tx,
                    path: path.clone(),
                };
                let out = f(&mut t)?;
                let Tx::Sqlite { tx, .. } = t else {
                    unreachable!("built as SQLite above")
                };
                tx.commit().map_err(|e| Tx::sqlite_err(&path, e))?;
                Ok(out)
            }
            Store::Postgres(p) => super::postgres::in_transaction(p, f),
        }
    }
}

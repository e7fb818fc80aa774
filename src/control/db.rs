//! The control plane's tables and the one SQL dialect they are written in. Every statement
//! is plain SQL both SQLite and PostgreSQL run: integers are BIGINT (unix milliseconds for
//! times, 0/1 for flags), everything else TEXT, `$N` placeholders (rewritten to SQLite's
//! `?N`). So the migration is ONE text for both backends and each statement exists once;
//! [`Db`] runs it on whichever backend the [`Store`] is. Secrets never reach these tables:
//! only their keyed hashes (see [`super::secrets`]).

use crate::store::tx::Tx;
use crate::store::{Store, StoreError};

/// The control plane's migration (the same text on SQLite and PostgreSQL).
pub const MIGRATION: &str = "
    -- People. No passwords, ever: identity comes from an identity provider (`subjects`).
    CREATE TABLE cp_users (
        id           TEXT PRIMARY KEY,
        email        TEXT NOT NULL UNIQUE,
        display_name TEXT NOT NULL,
        created_at   BIGINT NOT NULL
    );
    -- An identity-provider subject (`google`, `microsoft`, `github`, ...) bound to a user.
    CREATE TABLE cp_subjects (
        provider   TEXT NOT NULL,
        subject    TEXT NOT NULL,
        user_id    TEXT NOT NULL REFERENCES cp_users(id) ON DELETE CASCADE,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (provider, subject)
    );
    CREATE TABLE cp_teams (
        id         TEXT PRIMARY KEY,
        name       TEXT NOT NULL UNIQUE,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE cp_memberships (
        team_id    TEXT NOT NULL REFERENCES cp_teams(id) ON DELETE CASCADE,
        user_id    TEXT NOT NULL REFERENCES cp_users(id) ON DELETE CASCADE,
        role       TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
        created_at BIGINT NOT NULL,
        PRIMARY KEY (team_id, user_id)
    );
    -- Bearer tokens: long-lived API tokens (`kind` api) and the device flow's short-lived
    -- access tokens (`kind` access, `family` = their grant). `secret_hash` is
    -- HMAC-SHA256(server key, token); `role_cap` limits the token below its user's role.
    CREATE TABLE cp_tokens (
        id           TEXT PRIMARY KEY,
        secret_hash  TEXT NOT NULL UNIQUE,
        kind         TEXT NOT NULL CHECK (kind IN ('api', 'access')),
        team_id      TEXT NOT NULL REFERENCES cp_teams(id) ON DELETE CASCADE,
        user_id      TEXT NOT NULL REFERENCES cp_users(id) ON DELETE CASCADE,
        name         TEXT NOT NULL,
        role_cap     TEXT NOT NULL,
        family       TEXT,
        created_at   BIGINT NOT NULL,
        last_used_at BIGINT,
        last_address TEXT,
        expires_at   BIGINT,
        revoked_at   BIGINT
    );
    CREATE INDEX cp_tokens_user ON cp_tokens(user_id, id);
    CREATE INDEX cp_tokens_family ON cp_tokens(family);
    -- Browser sessions. `secret_hash` is the keyed hash of the cookie value; `id` is a
    -- public handle for the sessions list. Idle expiry: `last_seen_at` + 30 days.
    CREATE TABLE cp_sessions (
        id           TEXT PRIMARY KEY,
        secret_hash  TEXT NOT NULL UNIQUE,
        user_id      TEXT NOT NULL REFERENCES cp_users(id) ON DELETE CASCADE,
        created_at   BIGINT NOT NULL,
        last_seen_at BIGINT NOT NULL,
        revoked_at   BIGINT,
        user_agent   TEXT NOT NULL,
        address      TEXT NOT NULL
    );
    CREATE INDEX cp_sessions_user ON cp_sessions(user_id, id);
    -- RFC 8628 device authorizations. Both codes stored only as keyed hashes.
    CREATE TABLE cp_device_codes (
        id               TEXT PRIMARY KEY,
        device_code_hash TEXT NOT NULL UNIQUE,
        user_code_hash   TEXT NOT NULL UNIQUE,
        client_id        TEXT NOT NULL,
        scope            TEXT NOT NULL,
        interval_seconds BIGINT NOT NULL,
        created_at       BIGINT NOT NULL,
        expires_at       BIGINT NOT NULL,
        last_poll_at     BIGINT,
        status           TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'consumed')),
        user_id          TEXT REFERENCES cp_users(id) ON DELETE CASCADE,
        team_id          TEXT REFERENCES cp_teams(id) ON DELETE CASCADE
    );
    -- Refresh tokens, one row per token ever issued; a family is one device grant. Used
    -- once: using one marks it `used_at` and issues the next; presenting a used one again
    -- revokes the whole family (RFC 6819 5.2.2.3, OAuth 2.0 Security BCP 4.14).
    CREATE TABLE cp_refresh_tokens (
        secret_hash TEXT PRIMARY KEY,
        family      TEXT NOT NULL,
        user_id     TEXT NOT NULL REFERENCES cp_users(id) ON DELETE CASCADE,
        team_id     TEXT NOT NULL REFERENCES cp_teams(id) ON DELETE CASCADE,
        created_at  BIGINT NOT NULL,
        expires_at  BIGINT NOT NULL,
        used_at     BIGINT,
        revoked_at  BIGINT
    );
    CREATE INDEX cp_refresh_family ON cp_refresh_tokens(family);
    -- Failed attempts per key (`user:ID`, `addr:IP`) in a fixed window: the limit on
    -- user-code entry (shared by replicas because it is in the store).
    CREATE TABLE cp_failures (
        key          TEXT PRIMARY KEY,
        window_start BIGINT NOT NULL,
        count        BIGINT NOT NULL
    );
";

/// A value bound to or read from a statement.
#[derive(Clone, PartialEq, Eq)]
pub enum V {
    I(i64),
    T(String),
    /// A NULL integer (PostgreSQL types its parameters).
    NullI,
    /// A NULL text.
    NullT,
}

impl std::fmt::Debug for V {
    // Row values may be hashes; Debug shows the shape only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            V::I(n) => write!(f, "I({n})"),
            V::T(_) => f.write_str("T(..)"),
            V::NullI | V::NullT => f.write_str("NULL"),
        }
    }
}

impl V {
    pub fn i(&self) -> Option<i64> {
        match self {
            V::I(n) => Some(*n),
            _ => None,
        }
    }
    pub fn t(&self) -> Option<String> {
        match self {
            V::T(s) => Some(s.clone()),
            _ => None,
        }
    }
    pub fn text(&self) -> String {
        self.t().unwrap_or_default()
    }
    pub fn int(&self) -> i64 {
        self.i().unwrap_or_default()
    }
}

impl From<&str> for V {
    fn from(s: &str) -> V {
        V::T(s.to_owned())
    }
}
impl From<String> for V {
    fn from(s: String) -> V {
        V::T(s)
    }
}
impl From<&String> for V {
    fn from(s: &String) -> V {
        V::T(s.clone())
    }
}
impl From<i64> for V {
    fn from(n: i64) -> V {
        V::I(n)
    }
}
impl From<Option<i64>> for V {
    fn from(n: Option<i64>) -> V {
        n.map(V::I).unwrap_or(V::NullI)
    }
}
impl From<Option<String>> for V {
    fn from(s: Option<String>) -> V {
        s.map(V::T).unwrap_or(V::NullT)
    }
}
impl From<Option<&str>> for V {
    fn from(s: Option<&str>) -> V {
        s.map(|s| V::T(s.to_owned())).unwrap_or(V::NullT)
    }
}

/// `$N` → `?N` for SQLite (the statements never contain a `$` elsewhere).
fn sqlite_sql(sql: &str) -> String {
    sql.replace('$', "?")
}

/// Runs the control plane's statements on a [`Store`].
pub trait Db {
    /// Rows changed.
    fn exec(&mut self, sql: &str, params: &[V]) -> Result<u64, StoreError>;
    /// Every row, each column as a [`V`].
    fn rows(&mut self, sql: &str, params: &[V]) -> Result<Vec<Vec<V>>, StoreError>;
    /// The first row, if any.
    fn row(&mut self, sql: &str, params: &[V]) -> Result<Option<Vec<V>>, StoreError> {
        Ok(self.rows(sql, params)?.into_iter().next())
    }
}

impl Db for Store {
    fn exec(&mut self, sql: &str, params: &[V]) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => lite_exec(&s.conn, sql, params).map_err(|e| s.err(e)),
            Store::Postgres(s) => {
                let boxed = pg_params(params);
                let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                    boxed.iter().map(|b| b.as_ref()).collect();
                s.execute(sql, &refs)
            }
        }
    }

    fn rows(&mut self, sql: &str, params: &[V]) -> Result<Vec<Vec<V>>, StoreError> {
        match self {
            Store::Sqlite(s) => lite_rows(&s.conn, sql, params).map_err(|e| s.err(e)),
            Store::Postgres(s) => {
                let boxed = pg_params(params);
                let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                    boxed.iter().map(|b| b.as_ref()).collect();
                Ok(pg_rows(&s.query(sql, &refs)?))
            }
        }
    }
}

/// The same statements inside one transaction (`Store::transaction`): what an audited
/// change runs on, so it commits with its audit record.
impl Db for Tx<'_> {
    fn exec(&mut self, sql: &str, params: &[V]) -> Result<u64, StoreError> {
        match self {
            Tx::Sqlite { tx, path } => {
                lite_exec(tx, sql, params).map_err(|e| Tx::sqlite_err(path, e))
            }
            Tx::Postgres { tx, store } => {
                let boxed = pg_params(params);
                let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                    boxed.iter().map(|b| b.as_ref()).collect();
                crate::store::postgres::tx::execute(tx, store, sql, &refs)
            }
        }
    }

    fn rows(&mut self, sql: &str, params: &[V]) -> Result<Vec<Vec<V>>, StoreError> {
        match self {
            Tx::Sqlite { tx, path } => {
                lite_rows(tx, sql, params).map_err(|e| Tx::sqlite_err(path, e))
            }
            Tx::Postgres { tx, store } => {
                let boxed = pg_params(params);
                let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                    boxed.iter().map(|b| b.as_ref()).collect();
                Ok(pg_rows(&crate::store::postgres::tx::query(
                    tx, store, sql, &refs,
                )?))
            }
        }
    }
}

fn lite_exec(conn: &rusqlite::Connection, sql: &str, params: &[V]) -> rusqlite::Result<u64> {
    let p = lite_params(params);
    conn.execute(&sqlite_sql(sql), rusqlite::params_from_iter(p.iter()))
        .map(|n| n as u64)
}

fn lite_rows(
    conn: &rusqlite::Connection,
    sql: &str,
    params: &[V],
) -> rusqlite::Result<Vec<Vec<V>>> {
    let p = lite_params(params);
    let mut stmt = conn.prepare(&sqlite_sql(sql))?;
    let n = stmt.column_count();
    let mut rows = stmt.query(rusqlite::params_from_iter(p.iter()))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let mut row = Vec::with_capacity(n);
        for i in 0..n {
            row.push(match r.get_ref(i)? {
                rusqlite::types::ValueRef::Integer(n) => V::I(n),
                rusqlite::types::ValueRef::Text(t) => V::T(String::from_utf8_lossy(t).into_owned()),
                rusqlite::types::ValueRef::Null => V::NullT,
                rusqlite::types::ValueRef::Real(f) => V::I(f as i64),
                rusqlite::types::ValueRef::Blob(b) => V::T(String::from_utf8_lossy(b).into_owned()),
            });
        }
        out.push(row);
    }
    Ok(out)
}

fn pg_rows(rows: &[tokio_postgres::Row]) -> Vec<Vec<V>> {
    rows.iter()
        .map(|r| {
            (0..r.len())
                .map(|i| {
                    if *r.columns()[i].type_() == tokio_postgres::types::Type::INT8 {
                        r.get::<_, Option<i64>>(i).map(V::I).unwrap_or(V::NullI)
                    } else if *r.columns()[i].type_() == tokio_postgres::types::Type::INT4 {
                        r.get::<_, Option<i32>>(i)
                            .map(|n| V::I(n.into()))
                            .unwrap_or(V::NullI)
                    } else {
                        r.get::<_, Option<String>>(i).map(V::T).unwrap_or(V::NullT)
                    }
                })
                .collect()
        })
        .collect()
}

fn lite_params(params: &[V]) -> Vec<rusqlite::types::Value> {
    params
        .iter()
        .map(|v| match v {
            V::I(n) => rusqlite::types::Value::Integer(*n),
            V::T(s) => rusqlite::types::Value::Text(s.clone()),
            V::NullI | V::NullT => rusqlite::types::Value::Null,
        })
        .collect()
}

fn pg_params(params: &[V]) -> Vec<Box<dyn tokio_postgres::types::ToSql + Sync>> {
    params
        .iter()
        .map(|v| -> Box<dyn tokio_postgres::types::ToSql + Sync> {
            match v {
                V::I(n) => Box::new(*n),
                V::T(s) => Box::new(s.clone()),
                V::NullI => Box::new(None::<i64>),
                V::NullT => Box::new(None::<String>),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn placeholders_become_sqlite_ones() {
        assert_eq!(
            super::sqlite_sql("SELECT a FROM t WHERE b = $1 AND c = $12"),
            "SELECT a FROM t WHERE b = ?1 AND c = ?12"
        );
    }
}

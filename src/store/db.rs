//! The store's two engines behind one small interface: SQLite (the embedded default) and
//! PostgreSQL (cluster mode, [`super::postgres`]). Every statement is written once, in the
//! dialect both share (`?N` placeholders, `ON CONFLICT`, `RETURNING`, `json_extract`, which the
//! PostgreSQL schema defines), and rows come back as SQLite values, so decoding is written once
//! too.
//!
//! A write transaction ([`Conn::begin`]) on PostgreSQL first takes one transaction-scoped
//! advisory lock — writers of all replicas are serialised exactly as SQLite serialises the
//! writers of one process, so every check-then-write of the outbox (one pending action per
//! target, dedupe, cooldowns) holds across replicas. A fenced store then checks the lease in
//! the same transaction (`super::fence`, from `Store::begin`): a write of a replica that is not
//! the lease holder fails and writes nothing.

use std::ops::{Deref, DerefMut};

use rusqlite::types::{FromSql, Value};

use super::StoreError;
use super::postgres::PgConn;
pub(crate) use super::row::{Params, Row};

/// A connection to either engine.
pub(crate) enum Conn {
    Sqlite(rusqlite::Connection),
    Postgres(Box<PgConn>),
}

impl Conn {
    pub(crate) fn execute(&mut self, sql: &str, params: Params<'_>) -> Result<usize, StoreError> {
        match self {
            Conn::Sqlite(c) => Ok(c.prepare_cached(sql)?.execute(params)?),
            Conn::Postgres(c) => c.execute(sql, params),
        }
    }

    pub(crate) fn query(&mut self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, StoreError> {
        match self {
            Conn::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let n = stmt.column_count();
                let rows = stmt.query_map(params, |r| (0..n).map(|i| r.get::<_, Value>(i)).collect::<Result<Vec<_>, _>>().map(Row))?;
                Ok(rows.collect::<Result<_, _>>()?)
            }
            Conn::Postgres(c) => c.query(sql, params),
        }
    }

    /// The first row, if any.
    pub(crate) fn query_opt(&mut self, sql: &str, params: Params<'_>) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// The first column of the first row (an aggregate, an id from `RETURNING`).
    pub(crate) fn scalar<T: FromSql>(&mut self, sql: &str, params: Params<'_>) -> Result<Option<T>, StoreError> {
        match self.query_opt(sql, params)? {
            Some(row) => Ok(row.get::<Option<T>>(0)?),
            None => Ok(None),
        }
    }

    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        match self {
            Conn::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Conn::Postgres(c) => c.batch(sql),
        }
    }

    /// Begins a write transaction: on PostgreSQL, under the writers' lock.
    pub(crate) fn begin(&mut self) -> Result<Tx<'_>, StoreError> {
        self.batch("BEGIN")?;
        let mut tx = Tx { conn: self, open: true };
        if let Conn::Postgres(_) = tx.conn {
            tx.query("SELECT pg_advisory_xact_lock(?1)", rusqlite::params![super::postgres::WRITERS_LOCK])?;
        }
        Ok(tx)
    }

    pub(crate) fn is_postgres(&self) -> bool {
        matches!(self, Conn::Postgres(_))
    }
}

/// An open transaction: rolled back when dropped uncommitted.
pub(crate) struct Tx<'a> {
    conn: &'a mut Conn,
    open: bool,
}

impl Tx<'_> {
    pub(crate) fn commit(mut self) -> Result<(), StoreError> {
        self.conn.batch("COMMIT")?;
        self.open = false;
        Ok(())
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if self.open {
            // A failed rollback leaves a broken PostgreSQL connection, which reconnects; a
            // SQLite one rolls back when the next BEGIN finds it open (never reached: SQLite
            // rolls back a failed COMMIT itself).
            let _ = self.conn.batch("ROLLBACK");
        }
    }
}

impl Deref for Tx<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn
    }
}

impl DerefMut for Tx<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn
    }
}

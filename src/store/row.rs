//! Statement parameters and result rows, shared by both engines (`db`, `postgres`): rows come
//! back as SQLite values from either, so decoding is written once.

use rusqlite::types::{FromSql, ToSql, Value, ValueRef};

/// Statement parameters, as rusqlite's `params!` builds them.
pub(crate) type Params<'a> = &'a [&'a dyn ToSql];

/// One result row.
pub(crate) struct Row(pub(crate) Vec<Value>);

impl Row {
    pub(crate) fn get<T: FromSql>(&self, i: usize) -> rusqlite::Result<T> {
        let v = self.0.get(i).ok_or(rusqlite::Error::InvalidColumnIndex(i))?;
        T::column_result(ValueRef::from(v)).map_err(|e| match e {
            rusqlite::types::FromSqlError::InvalidType => rusqlite::Error::InvalidColumnType(i, format!("column {i}"), v.data_type()),
            other => rusqlite::Error::FromSqlConversionFailure(i, v.data_type(), Box::new(other)),
        })
    }
}

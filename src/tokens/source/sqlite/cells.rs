//! Reading a SQLite result cell as the text, boolean, integer or time a
//! token column means (RFC 3339 text times, 0/1 booleans).
//!
//! Invariant: SQLite types are per cell, so a cell of the wrong type is
//! that row's problem (the row is skipped); no message quotes a cell.

use sqlx::sqlite::SqliteRow;
use sqlx::{Decode, Row, Sqlite, Type, TypeInfo, ValueRef};
use time::OffsetDateTime;

use crate::tokens::source::sql::{self, Bad, Cells};

/// SQLite types are per cell, so a wrong one is that row's problem.
impl Cells for SqliteRow {
    fn text(&self, i: usize) -> Result<Option<String>, Bad> {
        get(self, i, "text")
    }

    fn boolean(&self, i: usize) -> Result<Option<bool>, Bad> {
        Ok(get::<i64>(self, i, "a boolean (0 or 1)")?
            .map(sql::int_bool)
            .transpose()?)
    }

    fn integer(&self, i: usize) -> Result<Option<i64>, Bad> {
        get(self, i, "an integer")
    }

    fn timestamp(&self, i: usize) -> Result<Option<OffsetDateTime>, Bad> {
        Ok(get::<String>(self, i, "RFC 3339 text")?
            .map(|t| sql::parse_time(&t))
            .transpose()?)
    }
}

fn get<'r, T>(row: &'r SqliteRow, i: usize, expected: &str) -> Result<Option<T>, Bad>
where
    T: Decode<'r, Sqlite> + Type<Sqlite>,
{
    row.try_get::<Option<T>, _>(i).map_err(|_| {
        let ty = row
            .try_get_raw(i)
            .map(|v| v.type_info().name().to_owned())
            .unwrap_or_default();
        Bad::Value(format!("holds {ty}, expected {expected}"))
    })
}

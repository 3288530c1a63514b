//! Reading a PostgreSQL result cell as the text, boolean, integer or
//! time a token column means.
//!
//! Invariant: a cell whose SQL type cannot mean the value is the column's
//! problem (types are per column), so it fails the whole load; no message
//! quotes a cell.

use sqlx::postgres::{PgRow, PgTypeInfo};
use sqlx::{Decode, Postgres, Row, Type, TypeInfo, ValueRef};
use time::{OffsetDateTime, PrimitiveDateTime};

use crate::tokens::source::sql::{self, Bad, Cells};

impl Cells for PgRow {
    fn text(&self, i: usize) -> Result<Option<String>, Bad> {
        match sql_type(self, i)? {
            None => Ok(None),
            Some(ty) if is::<String>(&ty) => decode(self, i).map(Some),
            Some(ty) => Err(mismatch(&ty, "text")),
        }
    }

    fn boolean(&self, i: usize) -> Result<Option<bool>, Bad> {
        match sql_type(self, i)? {
            None => Ok(None),
            Some(ty) if is::<bool>(&ty) => decode(self, i).map(Some),
            Some(ty) if is::<i16>(&ty) || is::<i32>(&ty) || is::<i64>(&ty) => {
                Ok(self.integer(i)?.map(sql::int_bool).transpose()?)
            }
            Some(ty) => Err(mismatch(&ty, "boolean")),
        }
    }

    fn integer(&self, i: usize) -> Result<Option<i64>, Bad> {
        match sql_type(self, i)? {
            None => Ok(None),
            Some(ty) if is::<i32>(&ty) => decode::<i32>(self, i).map(|n| Some(n.into())),
            Some(ty) if is::<i64>(&ty) => decode::<i64>(self, i).map(Some),
            Some(ty) if is::<i16>(&ty) => decode::<i16>(self, i).map(|n| Some(n.into())),
            Some(ty) => Err(mismatch(&ty, "integer")),
        }
    }

    fn timestamp(&self, i: usize) -> Result<Option<OffsetDateTime>, Bad> {
        match sql_type(self, i)? {
            None => Ok(None),
            Some(ty) if is::<OffsetDateTime>(&ty) => decode(self, i).map(Some),
            Some(ty) if is::<String>(&ty) => {
                Ok(Some(sql::parse_time(&decode::<String>(self, i)?)?))
            }
            Some(ty) if is::<PrimitiveDateTime>(&ty) => Err(Bad::Type(
                "is a timestamp without time zone; convert it, e.g. `expires AT TIME ZONE 'UTC'`"
                    .into(),
            )),
            Some(ty) => Err(mismatch(&ty, "timestamptz or RFC 3339 text")),
        }
    }
}

/// The type of a non-NULL cell.
fn sql_type(row: &PgRow, i: usize) -> Result<Option<PgTypeInfo>, Bad> {
    let value = row
        .try_get_raw(i)
        .map_err(|e| Bad::Type(sql::one_line(e)))?;
    Ok((!value.is_null()).then(|| value.type_info().into_owned()))
}

fn is<T: Type<Postgres>>(ty: &PgTypeInfo) -> bool {
    T::compatible(ty)
}

/// A cell of a type already checked to fit; a failure is the column's.
fn decode<'r, T: Decode<'r, Postgres> + Type<Postgres>>(
    row: &'r PgRow,
    i: usize,
) -> Result<T, Bad> {
    row.try_get(i).map_err(|e| Bad::Type(sql::one_line(e)))
}

/// PostgreSQL types are per column, so a wrong one fails the whole load.
fn mismatch(ty: &PgTypeInfo, expected: &str) -> Bad {
    Bad::Type(format!("has SQL type {}, expected {expected}", ty.name()))
}

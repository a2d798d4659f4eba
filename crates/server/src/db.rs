//! The two databases behind one small, synchronous interface: SQLite (`rusqlite`, the default, one file) and
//! PostgreSQL (`postgres`, the synchronous client of rust-postgres, pooled by `r2d2`), for several server
//! instances sharing one database.
//!
//! Synchronous on purpose: every store function is a short transaction run in a blocking thread by the server,
//! and called directly — deterministically — by the simulation; an async driver (sqlx) would force the simulation
//! through an executor and every store function through `async`. SQL is written once, with `?1`-style
//! parameters (rewritten to `$1` for PostgreSQL) and in the dialect both accept (`ON CONFLICT`, `RETURNING`, row
//! comparisons); values are only integers, text and booleans, with UUIDs as text — so both schemas have the same
//! columns and the same row shapes.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Mutex;

use postgres::types::{IsNull, ToSql, Type};
use uuid::Uuid;

use crate::store::{StoreError, StoreResult};

/// Which database a connection speaks to (for the few statements that differ, and for schema setup).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A parameter or a column value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
    Bool(bool),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Int(v as i64)
    }
}
impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::Int(v.into())
    }
}
impl From<u16> for Value {
    fn from(v: u16) -> Self {
        Value::Int(v.into())
    }
}
impl From<usize> for Value {
    fn from(v: usize) -> Self {
        Value::Int(v as i64)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}
impl From<Uuid> for Value {
    fn from(v: Uuid) -> Self {
        Value::Text(v.to_string())
    }
}
impl From<&Uuid> for Value {
    fn from(v: &Uuid) -> Self {
        Value::Text(v.to_string())
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// Anything that converts to a [`Value`], taken by reference (so `args!` borrows its arguments).
pub trait ToValue {
    fn to_value(&self) -> Value;
}

impl<T: Into<Value> + Clone> ToValue for T {
    fn to_value(&self) -> Value {
        self.clone().into()
    }
}

/// Parameters for a statement: `args![a, b, c]` (borrowed, converted).
#[macro_export]
macro_rules! args {
    ($($x:expr),* $(,)?) => { &[$($crate::db::ToValue::to_value(&$x)),*] as &[$crate::db::Value] };
}

/// One result row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row(Vec<Value>);

fn column(i: usize, what: &str, got: &Value) -> StoreError {
    StoreError::Internal(anyhow::anyhow!("column {i}: expected {what}, found {got:?}"))
}

impl Row {
    fn at(&self, i: usize) -> StoreResult<&Value> {
        self.0.get(i).ok_or_else(|| StoreError::Internal(anyhow::anyhow!("no column {i}")))
    }

    pub fn i64(&self, i: usize) -> StoreResult<i64> {
        match self.at(i)? {
            Value::Int(v) => Ok(*v),
            Value::Bool(b) => Ok(i64::from(*b)),
            other => Err(column(i, "an integer", other)),
        }
    }

    pub fn u64(&self, i: usize) -> StoreResult<u64> {
        self.i64(i).map(|v| v.max(0) as u64)
    }

    pub fn opt_i64(&self, i: usize) -> StoreResult<Option<i64>> {
        match self.at(i)? {
            Value::Null => Ok(None),
            _ => self.i64(i).map(Some),
        }
    }

    pub fn text(&self, i: usize) -> StoreResult<String> {
        match self.at(i)? {
            Value::Text(s) => Ok(s.clone()),
            other => Err(column(i, "text", other)),
        }
    }

    pub fn opt_text(&self, i: usize) -> StoreResult<Option<String>> {
        match self.at(i)? {
            Value::Null => Ok(None),
            _ => self.text(i).map(Some),
        }
    }

    pub fn bool(&self, i: usize) -> StoreResult<bool> {
        match self.at(i)? {
            Value::Bool(b) => Ok(*b),
            Value::Int(v) => Ok(*v != 0),
            other => Err(column(i, "a boolean", other)),
        }
    }

    pub fn uuid(&self, i: usize) -> StoreResult<Uuid> {
        let s = self.text(i)?;
        Uuid::parse_str(&s).map_err(|e| StoreError::Internal(anyhow::anyhow!("column {i}: {s:?} is not a UUID: {e}")))
    }
}

/// A connection inside a transaction (the store's functions never commit or roll back themselves; savepoints are
/// statements).
pub trait Conn {
    fn dialect(&self) -> Dialect;
    /// Runs a statement; the number of rows it changed.
    fn execute(&self, sql: &str, params: &[Value]) -> StoreResult<u64>;
    fn query(&self, sql: &str, params: &[Value]) -> StoreResult<Vec<Row>>;

    fn query_opt(&self, sql: &str, params: &[Value]) -> StoreResult<Option<Row>> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    fn query_one(&self, sql: &str, params: &[Value]) -> StoreResult<Row> {
        self.query_opt(sql, params)?.ok_or_else(|| StoreError::Internal(anyhow::anyhow!("no row from {sql}")))
    }
}

// ---- SQLite ----------------------------------------------------------------------------------------------------

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(v) => ToSqlOutput::Borrowed(ValueRef::Integer(*v)),
            Value::Bool(b) => ToSqlOutput::Borrowed(ValueRef::Integer(i64::from(*b))),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}

impl Conn for rusqlite::Connection {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn execute(&self, sql: &str, params: &[Value]) -> StoreResult<u64> {
        let mut stmt = self.prepare_cached(sql)?;
        Ok(stmt.execute(rusqlite::params_from_iter(params.iter()))? as u64)
    }

    fn query(&self, sql: &str, params: &[Value]) -> StoreResult<Vec<Row>> {
        use rusqlite::types::ValueRef;
        let mut stmt = self.prepare_cached(sql)?;
        let n = stmt.column_count();
        let rows = stmt.query_map(rusqlite::params_from_iter(params.iter()), |r| {
            let mut values = Vec::with_capacity(n);
            for i in 0..n {
                values.push(match r.get_ref(i)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(v) => Value::Int(v),
                    ValueRef::Real(v) => Value::Int(v as i64),
                    ValueRef::Text(t) | ValueRef::Blob(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                });
            }
            Ok(Row(values))
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

impl Conn for rusqlite::Transaction<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn execute(&self, sql: &str, params: &[Value]) -> StoreResult<u64> {
        Conn::execute(&**self, sql, params)
    }

    fn query(&self, sql: &str, params: &[Value]) -> StoreResult<Vec<Row>> {
        Conn::query(&**self, sql, params)
    }
}

// ---- PostgreSQL -------------------------------------------------------------------------------------------------

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut postgres::types::private::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) => match *ty {
                Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                Type::BOOL => (*v != 0).to_sql(ty, out),
                _ => v.to_sql(ty, out),
            },
            Value::Bool(b) => b.to_sql(ty, out),
            Value::Text(s) => s.as_str().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

/// `?1` → `$1` (the statements are written once, for both), cached per statement text.
fn pg_sql(sql: &str) -> String {
    static CACHE: Mutex<Option<HashMap<String, String>>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    let cache = cache.get_or_insert_with(HashMap::new);
    if let Some(done) = cache.get(sql) {
        return done.clone();
    }
    let mut out = String::with_capacity(sql.len());
    let mut in_string = false;
    for c in sql.chars() {
        match c {
            '\'' => {
                in_string = !in_string;
                out.push(c);
            }
            '?' if !in_string => out.push('$'),
            _ => out.push(c),
        }
    }
    cache.insert(sql.to_owned(), out.clone());
    out
}

/// A PostgreSQL transaction as a [`Conn`]. (`postgres` needs `&mut` for every call; the store's functions share
/// one connection by reference, hence the cell.)
/// A pooled PostgreSQL connection with the statements it prepared. Written by hand: `r2d2_postgres` pools bare
/// clients and the blocking `postgres` client has no statement cache, so every query would pay a Parse round trip
/// (twice the round trips per statement, inside transactions that hold a stream's row lock).
pub struct PgSession {
    client: postgres::Client,
    statements: HashMap<String, postgres::Statement>,
}

impl PgSession {
    /// Starts a transaction on this connection.
    pub fn transaction(&mut self) -> StoreResult<PgConn<'_>> {
        let tx = self.client.transaction().map_err(pg_error)?;
        Ok(PgConn { tx: RefCell::new(tx), statements: RefCell::new(&mut self.statements) })
    }

    /// A statement outside any transaction (e.g. `NOTIFY`).
    pub fn batch_execute(&mut self, sql: &str) -> StoreResult<()> {
        self.client.batch_execute(sql).map_err(pg_error)
    }
}

/// The pool's connection manager: `r2d2_postgres`'s, plus a statement cache per connection.
pub struct PgManager(pub r2d2_postgres::PostgresConnectionManager<postgres::NoTls>);

impl r2d2::ManageConnection for PgManager {
    type Connection = PgSession;
    type Error = postgres::Error;

    fn connect(&self) -> Result<PgSession, postgres::Error> {
        Ok(PgSession { client: self.0.connect()?, statements: HashMap::new() })
    }

    fn is_valid(&self, conn: &mut PgSession) -> Result<(), postgres::Error> {
        self.0.is_valid(&mut conn.client)
    }

    fn has_broken(&self, conn: &mut PgSession) -> bool {
        self.0.has_broken(&mut conn.client)
    }
}

/// A transaction on PostgreSQL.
pub struct PgConn<'a> {
    tx: RefCell<postgres::Transaction<'a>>,
    statements: RefCell<&'a mut HashMap<String, postgres::Statement>>,
}

impl PgConn<'_> {
    pub fn commit(self) -> StoreResult<()> {
        self.tx.into_inner().commit().map_err(pg_error)
    }

    /// The prepared statement for `sql` (`?N` parameters), prepared on first use on this connection.
    fn statement(&self, sql: &str) -> StoreResult<postgres::Statement> {
        if let Some(statement) = self.statements.borrow().get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.tx.borrow_mut().prepare(pg_sql(sql).as_str()).map_err(pg_error)?;
        let mut statements = self.statements.borrow_mut();
        // Statements built per call (batched reads with a varying number of streams) must not grow it forever.
        if statements.len() >= 512 {
            statements.clear();
        }
        statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

pub(crate) fn pg_error(e: postgres::Error) -> StoreError {
    StoreError::Internal(e.into())
}

fn pg_params(params: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

impl Conn for PgConn<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn execute(&self, sql: &str, params: &[Value]) -> StoreResult<u64> {
        let statement = self.statement(sql)?;
        self.tx.borrow_mut().execute(&statement, &pg_params(params)).map_err(pg_error)
    }

    fn query(&self, sql: &str, params: &[Value]) -> StoreResult<Vec<Row>> {
        let statement = self.statement(sql)?;
        let rows = self.tx.borrow_mut().query(&statement, &pg_params(params)).map_err(pg_error)?;
        rows.iter().map(pg_row).collect()
    }
}

fn pg_row(row: &postgres::Row) -> StoreResult<Row> {
    let mut values = Vec::with_capacity(row.len());
    for (i, col) in row.columns().iter().enumerate() {
        let v = match *col.type_() {
            Type::INT8 => row.try_get::<_, Option<i64>>(i).map(|v| v.map_or(Value::Null, Value::Int)),
            Type::INT4 => row.try_get::<_, Option<i32>>(i).map(|v| v.map_or(Value::Null, |v| Value::Int(v.into()))),
            Type::INT2 => row.try_get::<_, Option<i16>>(i).map(|v| v.map_or(Value::Null, |v| Value::Int(v.into()))),
            Type::BOOL => row.try_get::<_, Option<bool>>(i).map(|v| v.map_or(Value::Null, Value::Bool)),
            Type::VOID => Ok(Value::Null),
            _ => row.try_get::<_, Option<String>>(i).map(|v| v.map_or(Value::Null, Value::Text)),
        };
        values.push(v.map_err(pg_error)?);
    }
    Ok(Row(values))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_become_dollars_outside_strings() {
        assert_eq!(pg_sql("SELECT ?1, '?', ?2 WHERE a = ?10"), "SELECT $1, '?', $2 WHERE a = $10");
    }

    #[test]
    fn sqlite_rows_come_back_as_values() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        Conn::execute(&conn, "CREATE TABLE t (a INTEGER, b TEXT, c TEXT)", &[]).unwrap();
        Conn::execute(&conn, "INSERT INTO t VALUES (?1, ?2, ?3)", args![7i64, "x", None::<String>]).unwrap();
        let row = Conn::query_one(&conn, "SELECT a, b, c, EXISTS(SELECT 1 FROM t) FROM t", &[]).unwrap();
        assert_eq!((row.i64(0).unwrap(), row.text(1).unwrap(), row.opt_text(2).unwrap()), (7, "x".into(), None));
        assert!(row.bool(3).unwrap());
    }
}

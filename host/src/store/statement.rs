//! Statements as data: SQL text and its parameters, built once by the function of its
//! concern (`orders`, `notifications`, `tasks`, ...) and run by whichever connection
//! the backend has at hand: sqlx's (PostgreSQL; SQLite's reads and single writes) or
//! SQLite's synchronous writer (rusqlite).
//!
//! Why not sqlx's generic executors: a function generic over sqlx's databases needs a
//! `where` clause for every Rust type it binds or reads (Rust does not carry such bounds
//! along with a trait), so the shared statements used to be macro bodies expanded once
//! per backend, out of reach of go-to-definition. Here text and parameters are plain
//! values; the only code generic over sqlx's databases is [`sqlx_query`] and
//! [`SqlxRow`], each with its bounds written once.

use std::borrow::Cow;

use async_trait::async_trait;
use rusqlite::types::{ToSqlOutput, ValueRef};

use super::StoreError;

/// One statement: text with `$1`, `$2`… parameters, and their values in that order.
#[derive(Debug, Clone, Default)]
pub struct Statement<'a> {
    /// The SQL.
    pub text: Cow<'static, str>,
    /// `$n` is `params[n - 1]`.
    pub params: Vec<Param<'a>>,
    /// Every `$n` first appears in increasing order (the text was built by
    /// [`Statement::push_param`]), so SQLite's writer binds by position: a batch
    /// statement has hundreds of parameters, and looking each name up is a scan of all.
    pub in_order: bool,
}

/// A parameter's value, typed as the column it is compared with or stored in.
#[derive(Debug, Clone)]
pub enum Param<'a> {
    /// `BIGINT`.
    Int8(Option<i64>),
    /// `INTEGER`: PostgreSQL's `substr` and 32-bit columns (`status`, `attempts`).
    Int4(Option<i32>),
    /// Text.
    Text(Option<Cow<'a, str>>),
    /// Bytes (`BLOB`, `bytea`).
    Bytes(&'a [u8]),
    /// A boolean.
    Bool(bool),
}

impl From<i64> for Param<'_> {
    fn from(v: i64) -> Self {
        Param::Int8(Some(v))
    }
}

impl From<Option<i64>> for Param<'_> {
    fn from(v: Option<i64>) -> Self {
        Param::Int8(v)
    }
}

impl From<i32> for Param<'_> {
    fn from(v: i32) -> Self {
        Param::Int4(Some(v))
    }
}

impl From<Option<i32>> for Param<'_> {
    fn from(v: Option<i32>) -> Self {
        Param::Int4(v)
    }
}

impl<'a> From<&'a str> for Param<'a> {
    fn from(v: &'a str) -> Self {
        Param::Text(Some(Cow::Borrowed(v)))
    }
}

impl<'a> From<&'a String> for Param<'a> {
    fn from(v: &'a String) -> Self {
        Param::Text(Some(Cow::Borrowed(v)))
    }
}

impl From<String> for Param<'_> {
    fn from(v: String) -> Self {
        Param::Text(Some(Cow::Owned(v)))
    }
}

impl<'a> From<Cow<'a, str>> for Param<'a> {
    fn from(v: Cow<'a, str>) -> Self {
        Param::Text(Some(v))
    }
}

impl<'a> From<Option<&'a str>> for Param<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Param::Text(v.map(Cow::Borrowed))
    }
}

impl<'a> From<Option<Cow<'a, str>>> for Param<'a> {
    fn from(v: Option<Cow<'a, str>>) -> Self {
        Param::Text(v)
    }
}

impl From<Option<String>> for Param<'_> {
    fn from(v: Option<String>) -> Self {
        Param::Text(v.map(Cow::Owned))
    }
}

impl<'a> From<&'a [u8]> for Param<'a> {
    fn from(v: &'a [u8]) -> Self {
        Param::Bytes(v)
    }
}

impl From<bool> for Param<'_> {
    fn from(v: bool) -> Self {
        Param::Bool(v)
    }
}

impl<'a> Statement<'a> {
    /// A statement of fixed text, whose parameters follow with [`Statement::bind`].
    pub fn new(text: impl Into<Cow<'static, str>>) -> Self {
        Statement {
            text: text.into(),
            params: Vec::new(),
            in_order: false,
        }
    }

    /// An empty statement to build with [`Statement::push`] and
    /// [`Statement::push_param`].
    pub fn build() -> Self {
        Statement {
            in_order: true,
            ..Statement::default()
        }
    }

    /// Gives the next parameter of a fixed text its value.
    pub fn bind(mut self, value: impl Into<Param<'a>>) -> Self {
        self.params.push(value.into());
        self
    }

    /// Appends SQL text.
    pub fn push(&mut self, sql: &str) -> &mut Self {
        self.text.to_mut().push_str(sql);
        self
    }

    /// Appends the next parameter: `$n` in the text, `value` in the list.
    pub fn push_param(&mut self, value: impl Into<Param<'a>>) -> &mut Self {
        self.params.push(value.into());
        let n = self.params.len();
        let text = self.text.to_mut();
        text.push('$');
        text.push_str(&n.to_string());
        self
    }

    /// Appends `VALUES (…), (…)`: one row of parameters for each item.
    pub fn push_values<T>(
        &mut self,
        items: impl IntoIterator<Item = T>,
        mut row: impl FnMut(T) -> Vec<Param<'a>>,
    ) -> &mut Self {
        self.push("VALUES ");
        for (i, item) in items.into_iter().enumerate() {
            self.push(if i == 0 { "(" } else { ", (" });
            for (j, value) in row(item).into_iter().enumerate() {
                if j > 0 {
                    self.push(", ");
                }
                self.push_param(value);
            }
            self.push(")");
        }
        self
    }
}

/// `$1` for SQLite's writer (rusqlite).
impl rusqlite::types::ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Param::Int8(Some(v)) => ToSqlOutput::from(*v),
            Param::Int4(Some(v)) => ToSqlOutput::from(*v),
            Param::Text(Some(v)) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
            Param::Int8(None) | Param::Int4(None) | Param::Text(None) => {
                ToSqlOutput::Borrowed(ValueRef::Null)
            }
            Param::Bytes(v) => ToSqlOutput::Borrowed(ValueRef::Blob(v)),
            Param::Bool(v) => ToSqlOutput::from(*v),
        })
    }
}

/// The statement as a sqlx query for database `DB` (PostgreSQL or SQLite).
pub fn sqlx_query<'q, DB>(
    st: &'q Statement<'_>,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    DB: sqlx::Database,
    Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<i32>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    &'q [u8]: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    bool: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let mut q = sqlx::query(&st.text);
    for p in &st.params {
        q = match p {
            Param::Int8(v) => q.bind(*v),
            Param::Int4(v) => q.bind(*v),
            Param::Text(v) => q.bind(v.as_deref()),
            Param::Bytes(v) => q.bind(*v),
            Param::Bool(v) => q.bind(*v),
        };
    }
    q
}

/// A result row, read by column name, whichever driver returned it.
pub trait Columns {
    /// A `BIGINT` column.
    fn int8(&self, name: &str) -> Result<Option<i64>, StoreError>;
    /// An `INTEGER` column.
    fn int4(&self, name: &str) -> Result<Option<i32>, StoreError>;
    /// A text column.
    fn text(&self, name: &str) -> Result<Option<String>, StoreError>;
    /// A bytes column.
    fn bytes(&self, name: &str) -> Result<Vec<u8>, StoreError>;
    /// A boolean column.
    fn boolean(&self, name: &str) -> Result<bool, StoreError>;
}

/// What a column the schema declares `NOT NULL` holds; NULL there is corruption.
pub fn required<T>(value: Option<T>, name: &str) -> Result<T, StoreError> {
    value.ok_or_else(|| StoreError::Corrupt(format!("{name} is NULL")))
}

/// A JSON text column, parsed.
pub fn json<T: serde::de::DeserializeOwned>(
    row: &dyn Columns,
    name: &str,
) -> Result<Option<T>, StoreError> {
    row.text(name)?
        .map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("{name}: {e}"))))
        .transpose()
}

/// A sqlx row (PostgreSQL's or SQLite's) as [`Columns`].
pub struct SqlxRow<'r, R>(pub &'r R);

impl<R> Columns for SqlxRow<'_, R>
where
    R: sqlx::Row,
    for<'n> &'n str: sqlx::ColumnIndex<R>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i32>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn int8(&self, name: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.0.try_get(name)?)
    }
    fn int4(&self, name: &str) -> Result<Option<i32>, StoreError> {
        Ok(self.0.try_get(name)?)
    }
    fn text(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self.0.try_get(name)?)
    }
    fn bytes(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        Ok(self.0.try_get(name)?)
    }
    fn boolean(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.0.try_get(name)?)
    }
}

/// Maps sqlx rows with `map`.
pub fn map_rows<R, T>(rows: &[R], map: RowMap<T>) -> Result<Vec<T>, StoreError>
where
    for<'r> SqlxRow<'r, R>: Columns,
{
    rows.iter().map(|r| map(&SqlxRow(r))).collect()
}

/// Turns a result row into a value.
pub type RowMap<T> = fn(&dyn Columns) -> Result<T, StoreError>;

/// Where a statement outside a transaction runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum On {
    /// A read: SQLite's read-only pool (it sees the last commit).
    Read,
    /// A write: on SQLite, the write connection, after taking the writer's lock.
    Write,
}

/// A backend as the shared statements see it: its SQL dialect and how it runs one
/// statement outside a transaction. `OrderStore`, `NotificationStore`, `TaskStore` and
/// `ConsoleStore` are implemented once, for every backend, on top of it.
#[async_trait]
pub trait Sql: Send + Sync + 'static {
    /// The fragments in which its SQL differs.
    fn dialect(&self) -> &'static Dialect;
    /// Bodies of notifications rejected without verifying are cut to this many bytes
    /// (see `store::retention`).
    fn cut_rejected_at(&self) -> i32;
    /// Runs a statement that returns rows, mapping each with `map`.
    async fn fetch<T: Send + 'static>(
        &self,
        on: On,
        st: &Statement<'_>,
        map: RowMap<T>,
    ) -> Result<Vec<T>, StoreError>;
    /// Runs a statement; how many rows it changed.
    async fn execute(&self, on: On, st: &Statement<'_>) -> Result<u64, StoreError>;
}

/// The SQL fragments in which the backends' shared statements differ.
#[derive(Debug)]
pub struct Dialect {
    /// `documents.data` as JSON text.
    pub doc_text: &'static str,
    /// Applied to a bound JSON text parameter that is stored in `documents.data`.
    pub json_param: &'static str,
    /// Appended to a `SELECT` whose rows stay locked until the transaction ends.
    pub for_update: &'static str,
    /// Appended to a claim's subquery: lock what it picks, skipping rows that other
    /// workers have locked.
    pub skip_locked: &'static str,
    /// `tasks.errors` (a JSON array as text) with the text parameter `$6` appended.
    pub append_error: &'static str,
    /// `documents.data` cannot hold a string with NUL in it (PostgreSQL `jsonb`).
    pub json_refuses_nul: bool,
    /// A subquery of the strings of the JSON array text parameter `$1`, one row each.
    pub text_list: &'static str,
    /// The `doc_query` condition "top-level field (parameter `$p`, as made by
    /// `field_param`) equals the JSON text parameter `$p+1`"; a missing field equals
    /// `null`.
    pub doc_filter: fn(usize) -> String,
    /// What to bind as the field parameter of `doc_filter`.
    pub field_param: fn(&str) -> String,
}

/// Text received from the wire or from a handler, made storable everywhere: PostgreSQL
/// `text` cannot hold NUL, so it becomes U+FFFD (on both backends, so they agree).
pub fn storable(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(text)
    }
}

/// [`storable`] of an optional text.
pub fn storable_opt(text: Option<&str>) -> Option<Cow<'_, str>> {
    text.map(storable)
}

/// Savepoint names are spliced into SQL: plain names only.
pub fn savepoint(verb: &str, name: &str) -> Result<String, StoreError> {
    if crate::names::is_simple_name(name) && !name.contains('-') {
        Ok(format!("{verb} {name}"))
    } else {
        Err(StoreError::Invalid(format!("bad savepoint name `{name}`")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_statements_number_their_parameters_in_order() {
        let mut st = Statement::build();
        st.push("INSERT INTO t (a, b) ")
            .push_values([1_i64, 2], |n| vec![n.into(), "x".into()]);
        assert_eq!(st.text, "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4)");
        assert_eq!(st.params.len(), 4);
        assert!(st.in_order);
        assert!(!Statement::new("SELECT $1").bind(1_i64).in_order);
    }
}

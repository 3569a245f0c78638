//! A JSON document store in the host's database, in the style of vk-uni-pay's
//! `db.collection("users").doc(id).update({ balance: _.inc(n) })`.
//!
//! Documents are JSON objects addressed by `(collection, id)`. A handler may only use the
//! collections its manifest grants (`collections = ["users"]`); anything else fails with
//! [`DbError::Denied`], never a trap. Inside
//! [`Handler::handle_paid`](crate::Handler::handle_paid) every write is part of the payment
//! transaction and disappears if the handler fails.
//!
//! ```no_run
//! use paynotify_plugin_sdk::db;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct User {
//!     balance: i64,
//! }
//!
//! # fn demo() -> Result<(), paynotify_plugin_sdk::Error> {
//! let users = db::collection("users");
//! let new_balance = users.doc("u1").inc("balance", 500)?; // creates u1 if absent
//! let user: Option<User> = users.doc("u1").get()?;
//! users.doc("u1").merge(&serde_json::json!({ "vip": true }))?; // other fields survive
//! let rich = users.where_eq("vip", &true).limit(10).get()?;
//! # Ok(()) }
//! ```
//!
//! These calls reach the host, so they only work inside a component; natively (in unit
//! tests) they panic.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::bindings::paynotify::plugin::db as raw;

/// Why a db call failed. The handler decides what to do; `?` turns it into an
/// [`Error`](crate::Error) with code `db-<variant>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbError {
    /// The collection is not granted to this handler by its manifest.
    Denied(String),
    /// A malformed argument (bad JSON, bad field name, document not an object, ...), or a
    /// value the SDK could not convert to or from JSON.
    Invalid(String),
    /// [`Collection::insert`] of an id that already exists.
    Conflict(String),
    /// [`Doc::inc`] on a field that holds something other than an integer.
    NotANumber(String),
    /// The database failed.
    Backend(String),
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbError::Denied(m) => write!(f, "denied: {m}"),
            DbError::Invalid(m) => write!(f, "invalid: {m}"),
            DbError::Conflict(m) => write!(f, "conflict: {m}"),
            DbError::NotANumber(m) => write!(f, "not a number: {m}"),
            DbError::Backend(m) => write!(f, "backend: {m}"),
        }
    }
}

impl std::error::Error for DbError {}

impl From<raw::DbError> for DbError {
    fn from(e: raw::DbError) -> Self {
        match e {
            raw::DbError::Denied(m) => DbError::Denied(m),
            raw::DbError::Invalid(m) => DbError::Invalid(m),
            raw::DbError::Conflict(m) => DbError::Conflict(m),
            raw::DbError::NotANumber(m) => DbError::NotANumber(m),
            raw::DbError::Backend(m) => DbError::Backend(m),
        }
    }
}

/// `Result` with a [`DbError`].
pub type Result<T, E = DbError> = std::result::Result<T, E>;

/// The collection called `name`. Nothing is checked until a call is made.
pub fn collection(name: impl Into<String>) -> Collection {
    Collection { name: name.into() }
}

/// A named collection of documents; see [`collection`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collection {
    name: String,
}

impl Collection {
    /// The collection's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The document `id` in this collection (which may or may not exist).
    pub fn doc(&self, id: impl Into<String>) -> Doc {
        Doc {
            collection: self.name.clone(),
            id: id.into(),
        }
    }

    /// Creates a document with a new random id and returns the id.
    pub fn add<T: Serialize + ?Sized>(&self, data: &T) -> Result<String> {
        let data = to_json(data)?;
        Ok(raw::insert(&self.name, None, &data)?)
    }

    /// Creates the document `id`; [`DbError::Conflict`] if it already exists
    /// (use [`Doc::set`] to create-or-replace).
    pub fn insert<T: Serialize + ?Sized>(&self, id: &str, data: &T) -> Result<()> {
        let data = to_json(data)?;
        raw::insert(&self.name, Some(id), &data)?;
        Ok(())
    }

    /// Starts a query for documents whose top-level `field` equals `value`. Chain more
    /// [`Query::where_eq`] filters (all must match), set a [`Query::limit`], then
    /// [`Query::get`].
    pub fn where_eq<T: Serialize + ?Sized>(&self, field: &str, value: &T) -> Query {
        self.query().where_eq(field, value)
    }

    /// A query with no filters yet: every document in the collection, up to the limit.
    pub fn query(&self) -> Query {
        Query {
            collection: self.name.clone(),
            filters: Vec::new(),
            limit: Query::DEFAULT_LIMIT,
            error: None,
        }
    }
}

/// One document address: `(collection, id)`. See [`Collection::doc`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doc {
    collection: String,
    id: String,
}

impl Doc {
    /// The collection's name.
    pub fn collection(&self) -> &str {
        &self.collection
    }

    /// The document's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The document deserialised into `T`, or `None` if it does not exist. A document that
    /// does not fit `T` is [`DbError::Invalid`] naming the document and the type.
    pub fn get<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        match raw::get(&self.collection, &self.id)? {
            None => Ok(None),
            Some(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
                DbError::Invalid(format!(
                    "document {}/{} does not match {}: {e}",
                    self.collection,
                    self.id,
                    std::any::type_name::<T>()
                ))
            }),
        }
    }

    /// The document as a JSON value, or `None` if it does not exist.
    pub fn get_json(&self) -> Result<Option<serde_json::Value>> {
        self.get()
    }

    /// Replaces the whole document with `data` (a JSON object), creating it if absent.
    pub fn set<T: Serialize + ?Sized>(&self, data: &T) -> Result<()> {
        let data = to_json(data)?;
        Ok(raw::set(&self.collection, &self.id, &data, false)?)
    }

    /// Merges the top-level fields of `data` (a JSON object) into the document, creating it
    /// if absent. Fields not in `data` keep their values.
    pub fn merge<T: Serialize + ?Sized>(&self, data: &T) -> Result<()> {
        let data = to_json(data)?;
        Ok(raw::set(&self.collection, &self.id, &data, true)?)
    }

    /// Atomically adds `delta` (may be negative) to the integer `field` and returns the new
    /// value. An absent document or field counts as 0, so this creates them. A field holding
    /// anything but an integer is [`DbError::NotANumber`]. vk-uni-pay's `_.inc(delta)`.
    pub fn inc(&self, field: &str, delta: i64) -> Result<i64> {
        Ok(raw::inc(&self.collection, &self.id, field, delta)?)
    }

    /// Deletes the document; `true` if it existed.
    pub fn delete(&self) -> Result<bool> {
        Ok(raw::delete(&self.collection, &self.id)?)
    }
}

/// A document returned by a [`Query`].
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// The document's id.
    pub id: String,
    /// The document's content (a JSON object).
    pub data: serde_json::Value,
}

impl Document {
    /// The content deserialised into `T`; [`DbError::Invalid`] if it does not fit.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        T::deserialize(&self.data).map_err(|e| {
            DbError::Invalid(format!(
                "document {} does not match {}: {e}",
                self.id,
                std::any::type_name::<T>()
            ))
        })
    }
}

/// An equality query on one collection; see [`Collection::where_eq`].
#[derive(Debug, Clone, PartialEq)]
#[must_use = "a query does nothing until `.get()`"]
pub struct Query {
    collection: String,
    filters: Vec<(String, String)>,
    limit: u32,
    error: Option<DbError>,
}

impl Query {
    /// The limit when [`Query::limit`] is not called.
    pub const DEFAULT_LIMIT: u32 = 100;

    /// Also require the top-level `field` to equal `value`.
    pub fn where_eq<T: Serialize + ?Sized>(mut self, field: &str, value: &T) -> Self {
        match to_json(value) {
            Ok(json) => self.filters.push((field.to_string(), json)),
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
        self
    }

    /// Return at most `n` documents (default [`Query::DEFAULT_LIMIT`]; the host may cap it).
    pub fn limit(mut self, n: u32) -> Self {
        self.limit = n;
        self
    }

    /// Runs the query.
    pub fn get(self) -> Result<Vec<Document>> {
        if let Some(e) = self.error {
            return Err(e);
        }
        raw::query(&self.collection, &self.filters, self.limit)?
            .into_iter()
            .map(|d| {
                let data = serde_json::from_str(&d.data).map_err(|e| {
                    DbError::Invalid(format!(
                        "host returned document {}/{} that is not JSON: {e}",
                        self.collection, d.id
                    ))
                })?;
                Ok(Document { id: d.id, data })
            })
            .collect()
    }
}

fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| DbError::Invalid(format!("value does not serialise as JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_builder_collects_filters() {
        let q = collection("goods")
            .where_eq("status", "fulfilled")
            .where_eq("qty", &3)
            .limit(5);
        assert_eq!(q.collection, "goods");
        assert_eq!(
            q.filters,
            vec![
                ("status".to_string(), "\"fulfilled\"".to_string()),
                ("qty".to_string(), "3".to_string())
            ]
        );
        assert_eq!(q.limit, 5);
        assert_eq!(q.error, None);
    }

    #[test]
    fn unserialisable_filter_fails_at_get() {
        let mut bad = std::collections::HashMap::new();
        bad.insert((1, 2), 3);
        let q = collection("goods").where_eq("x", &bad);
        assert!(matches!(q.get(), Err(DbError::Invalid(_))));
    }

    #[test]
    fn document_decode() {
        let d = Document {
            id: "a".into(),
            data: serde_json::json!({"n": 1}),
        };
        #[derive(serde::Deserialize)]
        struct N {
            n: i64,
        }
        assert_eq!(d.decode::<N>().unwrap().n, 1);
        assert!(
            matches!(d.decode::<Vec<u8>>(), Err(DbError::Invalid(m)) if m.contains("document a"))
        );
    }
}

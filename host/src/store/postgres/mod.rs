//! The PostgreSQL backend, for several host processes sharing one database.
//!
//! Every operation behaves as on SQLite (most statements are shared, see
//! `store::statement`); what SQLite gets from its single database-wide write lock,
//! PostgreSQL gets from row locks held until the transaction ends:
//!
//! - `lock_order` reads the order `FOR UPDATE`, so duplicates of one notification on
//!   several connections or processes run one after the other: the second finds the
//!   order paid and records a duplicate.
//! - `doc_inc` is one `INSERT … ON CONFLICT DO UPDATE`: atomic, no lost increments.
//! - `doc_get_for_update` locks the document (creating it first if absent, see there).
//! - `claim_tasks` picks due tasks `FOR UPDATE SKIP LOCKED`: two workers never claim
//!   the same task, and neither waits for the other.
//!
//! A statement that fails aborts a PostgreSQL transaction, so expected refusals
//! (`doc_insert` of an existing id, `doc_inc` of a non-integer, a document PostgreSQL
//! cannot store) are answered without a failing statement, and the handler's
//! transaction stays usable, as on SQLite.
//!
//! Transactions run at the default isolation, READ COMMITTED: each statement sees what
//! was committed when it started, and a row lock that was waited for returns the row as
//! its holder committed it.

use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, Executor, PgConnection, PgPool, Postgres};

use super::audit::AuditStore;
use super::notifications::{id_row, ids_in_order, insert_notifications};
use super::orders::insert_order;
use super::payments::PaymentStore;
use super::rows::order_row;
use super::statement::{map_rows, sqlx_query, Dialect, On, RowMap, Sql, Statement};
use super::traits::{ConsoleStore, PlatformCertStore, PluginHistoryStore};
use super::types::{NewNotification, NewOrder, Order};
use super::{ready, Store, StoreError, Tx};
use crate::config::DatabaseConfig;
use crate::time::now_ms;
use kept::KeptConns;

mod kept;
mod tx;

/// PostgreSQL behind the [`Store`] trait.
pub struct PgStore {
    /// Reads and single writes.
    pool: PgPool,
    /// Transactions and the raw-notification insert (see `kept.rs`).
    kept: Arc<KeptConns>,
    /// Bodies of notifications rejected without verifying are cut to this many bytes.
    cut_rejected_at: i32,
    /// The last readiness check (see `store::ready`).
    ready: ready::ReadyCache,
    /// The readiness check's own connection, opened when missing: out of the pool, so a
    /// check that hangs on a frozen server holds no pooled connection, and a server that
    /// is down is reported as such (the pool would retry connecting until its timeout).
    probe: tokio::sync::Mutex<Option<PgConnection>>,
    /// How to open it.
    options: PgConnectOptions,
}

impl PgStore {
    /// Connects, and brings the schema up to date with the embedded migrations.
    ///
    /// The URL is a libpq-style URL (`postgres://user:password@host:port/database?…`)
    /// with one parameter of ours: `schema=NAME` (lower-case letters, digits and `_`)
    /// puts paynotify's tables in schema `NAME` instead of the user's default search
    /// path. The schema is created if missing, every pooled connection gets
    /// `search_path=NAME`, and the migrations run (and are recorded) in it. Several
    /// deployments, or tests, can so share one database.
    pub async fn connect(config: &DatabaseConfig) -> Result<Self, StoreError> {
        let (url, schema) = split_schema(&config.url)?;
        // Batch statements have one text per batch size (`IN (…)`, `VALUES (…), (…)`):
        // a few hundred texts in all. sqlx's default cache of 100 per connection evicted
        // and re-prepared them all the time (measured: ~6 % of PostgreSQL's CPU and 5 % of
        // the host's per notification at saturation).
        let mut options = PgConnectOptions::from_str(&url)?.statement_cache_capacity(1024);
        if let Some(schema) = &schema {
            create_schema(&options, schema).await?;
            options = options.options([("search_path", schema.as_str())]);
        }
        // Bounded waits: with the server down, sqlx's pool retries connecting until the
        // acquire timeout, and a request should learn that within seconds, not 30.
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections.max(1))
            .acquire_timeout(config.timeout())
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("migrations/postgres").run(&pool).await?;
        let kept = KeptConns::new(options.clone(), config.max_connections, config.timeout());
        Ok(Self {
            pool,
            kept,
            cut_rejected_at: super::cut_length(
                crate::config::RetentionConfig::default().rejected_body_bytes,
            ),
            ready: ready::ReadyCache::default(),
            probe: tokio::sync::Mutex::new(None),
            options,
        })
    }

    /// Cuts the bodies of notifications rejected without verifying at `bytes` (default:
    /// `[retention] rejected_body_bytes`'s).
    pub fn cutting_rejected_bodies_at(mut self, bytes: usize) -> Self {
        self.cut_rejected_at = super::cut_length(bytes);
        self
    }
}

/// Takes the `schema=NAME` parameter out of a PostgreSQL URL (sqlx would refuse it) and
/// checks the name. Returns the URL without it, and the name.
fn split_schema(url: &str) -> Result<(String, Option<String>), StoreError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), None));
    };
    let mut schema = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let mut parsed = form_urlencoded::parse(pair.as_bytes());
        match parsed.next() {
            Some((key, value)) if key == "schema" => schema = Some(value.into_owned()),
            _ => kept.push(pair),
        }
    }
    if let Some(name) = &schema {
        if !crate::names::valid_schema(name) {
            return Err(StoreError::Invalid(format!(
                "database url: schema `{name}` must be 1-63 lower-case letters, digits or `_`, \
                 not starting with a digit"
            )));
        }
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, schema))
}

/// Creates `schema` if it does not exist, on a connection of its own (the pool's
/// connections start with `search_path` set to it).
async fn create_schema(options: &PgConnectOptions, schema: &str) -> Result<(), StoreError> {
    let mut conn = PgConnection::connect_with(options).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(schema)
            .fetch_one(&mut conn)
            .await?;
    let created = if exists {
        Ok(())
    } else {
        // The name was checked by `valid_schema`: safe to splice.
        match conn
            .execute(format!("CREATE SCHEMA IF NOT EXISTS {schema}").as_str())
            .await
        {
            Ok(_) => Ok(()),
            // Created by another process between the check and here.
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("42P06" | "23505")) =>
            {
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    };
    // The schema exists or not whatever closing says; a failed close just drops it.
    let _ = conn.close().await;
    created
}

/// PostgreSQL's SQL fragments (see [`Dialect`]).
static POSTGRES: Dialect = Dialect {
    doc_text: "data::text",
    json_param: "::jsonb",
    for_update: " FOR UPDATE",
    // Picked rows stay locked until the claim statement ends; rows another worker's
    // claim is locking are skipped, not waited for. After the claim commits they are
    // `running` and no longer match (until their lease expires).
    skip_locked: " FOR UPDATE SKIP LOCKED",
    append_error: "(errors::jsonb || jsonb_build_array($6::text))::text",
    json_refuses_nul: true,
    text_list: "SELECT json_array_elements_text($1::json)",
    doc_filter: |p| {
        format!(
            "COALESCE(data -> ${p}::text, 'null'::jsonb) = ${}::jsonb",
            p + 1
        )
    },
    field_param: str::to_owned,
};

/// Runs a statement that returns rows on `conn`, mapping each with `map`.
async fn fetch<T>(
    conn: &mut PgConnection,
    st: &Statement<'_>,
    map: RowMap<T>,
) -> Result<Vec<T>, StoreError> {
    let rows = sqlx_query::<Postgres>(st).fetch_all(conn).await?;
    map_rows(&rows, map)
}

/// Runs a statement on `conn`; how many rows it changed.
async fn execute(conn: &mut PgConnection, st: &Statement<'_>) -> Result<u64, StoreError> {
    Ok(sqlx_query::<Postgres>(st)
        .execute(conn)
        .await?
        .rows_affected())
}

/// Every statement outside a transaction runs on the pool: PostgreSQL has row locks, so
/// writers need no lock of ours.
#[async_trait]
impl Sql for PgStore {
    fn dialect(&self) -> &'static Dialect {
        &POSTGRES
    }

    fn cut_rejected_at(&self) -> i32 {
        self.cut_rejected_at
    }

    async fn fetch<T: Send + 'static>(
        &self,
        _on: On,
        st: &Statement<'_>,
        map: RowMap<T>,
    ) -> Result<Vec<T>, StoreError> {
        fetch(&mut *self.pool.acquire().await?, st, map).await
    }

    async fn execute(&self, _on: On, st: &Statement<'_>) -> Result<u64, StoreError> {
        execute(&mut *self.pool.acquire().await?, st).await
    }
}

#[async_trait]
impl Store for PgStore {
    async fn create_order(&self, o: &NewOrder) -> Result<Order, StoreError> {
        // In a transaction whose COMMIT is awaited, not in autocommit: `fetch_one` hands
        // back the `RETURNING` row as soon as it arrives, and an error the server sends
        // after it (a commit that fails) would never be seen; the API would answer 201
        // for an order that does not exist.
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        let inserted = fetch(&mut tx, &insert_order(o), order_row).await;
        let order = match inserted {
            Err(StoreError::Database(e)) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict(format!(
                    "order {} already exists",
                    o.out_trade_no
                )))
            }
            rows => rows?.pop(),
        };
        let order = order.ok_or_else(|| StoreError::Invalid("the order was not stored".into()))?;
        tx.commit().await?;
        Ok(order)
    }

    async fn insert_notification(&self, n: &NewNotification) -> Result<i64, StoreError> {
        // Committed explicitly, as `create_order`.
        let batch = [n];
        let st = insert_notifications(&batch)?;
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        let mut ids = match &st {
            Some(st) => fetch(&mut tx, st, id_row).await?,
            None => Vec::new(),
        };
        tx.commit().await?;
        ids.pop()
            .ok_or_else(|| StoreError::Invalid("the notification was not stored".into()))
    }

    async fn insert_notifications(
        &self,
        batch: &[&NewNotification],
    ) -> Result<Vec<i64>, StoreError> {
        let Some(st) = insert_notifications(batch)? else {
            return Ok(Vec::new());
        };
        // One statement, committed on its own (one commit) for the whole batch: a single
        // INSERT is atomic without BEGIN/COMMIT, which would only add two round trips.
        let mut conn = self.kept.statement().await?;
        match fetch(&mut conn, &st, id_row).await {
            Ok(ids) => ids_in_order(ids, batch.len()),
            Err(e) => {
                conn.discard();
                Err(e)
            }
        }
    }

    async fn begin(&self) -> Result<Box<dyn Tx>, StoreError> {
        // A transaction dropped unfinished is rolled back at once (see `kept`): no
        // half-open transaction is used again, and no lock outlives it for long.
        Ok(Box::new(tx::PgTx::new(self.kept.begin().await?)))
    }

    async fn ready(&self) -> Result<(), String> {
        // One autocommit statement: a commit, refused by a read-only server (hot standby,
        // `default_transaction_read_only`) and by one that cannot write its WAL.
        self.ready
            .check(|| async {
                let mut slot = self.probe.lock().await;
                let mut conn = match slot.take() {
                    Some(conn) => conn,
                    None => PgConnection::connect_with(&self.options).await?,
                };
                // On failure (or when the check is abandoned at its deadline) the
                // connection is dropped, not kept: its state is unknown.
                sqlx::query(ready::UPSERT_HEALTH)
                    .bind(now_ms())
                    .execute(&mut conn)
                    .await?;
                *slot = Some(conn);
                Ok(())
            })
            .await
    }

    /// The whole database, as the server counts it: every schema in it (several
    /// deployments or test runs may share one), indexes and TOAST included.
    async fn database_bytes(&self) -> Result<i64, StoreError> {
        let bytes: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
            .fetch_one(&self.pool)
            .await?;
        Ok(bytes)
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn console(&self) -> &dyn ConsoleStore {
        self
    }

    fn plugin_history(&self) -> &dyn PluginHistoryStore {
        self
    }

    fn platform_certs(&self) -> &dyn PlatformCertStore {
        self
    }

    fn payments(&self) -> &dyn PaymentStore {
        self
    }

    fn audit(&self) -> &dyn AuditStore {
        self
    }

    fn shadow(&self) -> &dyn crate::store::shadow::ShadowStore {
        self
    }
}

/// A unique index refused the row.
fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_parameter_is_taken_out_of_the_url() {
        let (url, schema) =
            split_schema("postgres://u@h:5432/db?schema=t_1a&sslmode=disable").expect("ok");
        assert_eq!(url, "postgres://u@h:5432/db?sslmode=disable");
        assert_eq!(schema.as_deref(), Some("t_1a"));
        let (url, schema) = split_schema("postgresql://u@h/db?schema=paynotify").expect("ok");
        assert_eq!(url, "postgresql://u@h/db");
        assert_eq!(schema.as_deref(), Some("paynotify"));
        let (url, schema) = split_schema("postgres://u@h/db?sslmode=require").expect("ok");
        assert_eq!(url, "postgres://u@h/db?sslmode=require");
        assert_eq!(schema, None);
        assert_eq!(split_schema("postgres://u@h/db").expect("ok").1, None);
    }

    #[test]
    fn schema_names_that_would_need_quoting_are_refused() {
        for bad in [
            "",
            "Upper",
            "1abc",
            "a-b",
            "a;drop",
            "a\"b",
            &"x".repeat(64),
        ] {
            let url = format!("postgres://u@h/db?schema={bad}");
            assert!(split_schema(&url).is_err(), "{bad:?} accepted");
        }
    }
}

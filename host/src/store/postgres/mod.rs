//! The PostgreSQL backend, for several host processes sharing one database.
//!
//! Every operation behaves as on SQLite (most statements are shared, see
//! `store::common`); what SQLite gets from its single database-wide write lock,
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

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, Executor, PgConnection, PgPool, Postgres};

use crate::store::common::{self, Dialect};
use crate::store::*;
use kept::{Kept, KeptConns};
use crate::config::DatabaseConfig;

mod kept;

/// PostgreSQL behind the [`Store`] trait.
pub struct PgStore {
    /// Reads and single writes.
    pool: PgPool,
    /// Transactions and the raw-notification insert (see `pg_kept`).
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
            cut_rejected_at: cut_length(
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
        self.cut_rejected_at = cut_length(bytes);
        self
    }

    /// A connection for one write outside a transaction (PostgreSQL has row locks, so
    /// writers need no lock of ours).
    async fn write(&self) -> Result<sqlx::pool::PoolConnection<Postgres>, StoreError> {
        Ok(self.pool.acquire().await?)
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
        if !valid_schema(name) {
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

/// A schema name that needs no quoting anywhere (`search_path`, SQL).
fn valid_schema(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63
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

impl Dialect for Postgres {
    const DOC_TEXT: &'static str = "data::text";
    const JSON_PARAM: &'static str = "::jsonb";
    const FOR_UPDATE: &'static str = " FOR UPDATE";
    // Picked rows stay locked until the claim statement ends; rows another worker's
    // claim is locking are skipped, not waited for. After the claim commits they are
    // `running` and no longer match (until their lease expires).
    const SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";
    const APPEND_ERROR: &'static str = "(errors::jsonb || jsonb_build_array($6::text))::text";
    const JSON_REFUSES_NUL: bool = true;
    const TEXT_LIST: &'static str = "SELECT json_array_elements_text($1::json)";

    fn doc_filter(p: usize) -> String {
        format!(
            "COALESCE(data -> ${p}::text, 'null'::jsonb) = ${}::jsonb",
            p + 1
        )
    }

    fn field_param(field: &str) -> String {
        field.to_owned()
    }
}

common::shared_statements!(sqlx::Postgres);
crate::store::claims::claim_statements!(sqlx::Postgres);
crate::store::refunds::refund_statements!(sqlx::Postgres);
crate::store::retention::retention_statements!(sqlx::Postgres);
crate::store::console::console_store!(PgStore, sqlx::Postgres, reader: pool, writer: write);

common::impl_store!(PgStore, reader: pool, writer: write, {
    async fn create_order(&self, o: &NewOrder) -> Result<Order, StoreError> {
        // In a transaction whose COMMIT is awaited, not in autocommit: `fetch_one` hands
        // back the `RETURNING` row as soon as it arrives, and an error the server sends
        // after it (a commit that fails) would never be seen; the API would answer 201
        // for an order that does not exist.
        let mut conn = self.write().await?;
        let mut tx = conn.begin().await?;
        let order = shared::create_order(&mut *tx, o).await?;
        tx.commit().await?;
        Ok(order)
    }

    async fn insert_notification(&self, n: &NewNotification) -> Result<i64, StoreError> {
        // Committed explicitly, as `create_order`.
        let mut conn = self.write().await?;
        let mut tx = conn.begin().await?;
        let id = shared::insert_notification(&mut *tx, n).await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn insert_notifications(
        &self,
        batch: &[&NewNotification],
    ) -> Result<Vec<i64>, StoreError> {
        // One statement, committed on its own (one commit) for the whole batch: a single
        // INSERT is atomic without BEGIN/COMMIT, which would only add two round trips.
        let mut conn = self.kept.statement().await?;
        let stored = shared::insert_notifications(&mut conn, batch).await;
        if stored.is_err() {
            conn.discard();
        }
        stored
    }

    async fn begin(&self) -> Result<Box<dyn Tx>, StoreError> {
        // A transaction dropped unfinished is rolled back at once (see `pg_kept`): no
        // half-open transaction is used again, and no lock outlives it for long.
        let tx = self.kept.begin().await?;
        Ok(Box::new(PgTx { tx }))
    }

    /// The whole database, as the server counts it: every schema in it (several
    /// deployments or test runs may share one), indexes and TOAST included.
    async fn database_bytes(&self) -> Result<i64, StoreError> {
        let bytes: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
            .fetch_one(&self.pool)
            .await?;
        Ok(bytes)
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

    fn backend(&self) -> &'static str {
        "postgres"
    }
});

/// An open PostgreSQL transaction.
struct PgTx {
    tx: Kept,
}

/// How often `doc_get_for_update` retries when the document is deleted between its two
/// statements (each retry needs another transaction to delete it again).
const LOCK_ATTEMPTS: usize = 3;

common::impl_tx!(PgTx, {
    /// Both statements as one (two data-modifying CTEs): a round trip less per batch,
    /// on the serial path of every settle loop.
    async fn settle(
        &mut self,
        paid: &[PaidOrder],
        rows: &[NotificationVerdict<'_>],
    ) -> Result<u64, StoreError> {
        if paid.is_empty() || rows.is_empty() {
            // An empty `VALUES` list is not SQL; each of these skips its statement when
            // its list is empty (a batch with no payment still records its verdicts).
            let marked = shared::settle_paid(&mut self.tx, paid).await?;
            shared::finish_notifications(&mut self.tx, rows).await?;
            return Ok(marked);
        }
        let mut q = sqlx::QueryBuilder::<Postgres>::new("WITH paid AS (");
        shared::push_settle_paid(&mut q, paid);
        q.push(" RETURNING 1), done AS (");
        shared::push_finish_notifications(&mut q, rows);
        q.push(") SELECT count(*) FROM paid");
        let marked: i64 = q.build_query_scalar().fetch_one(&mut *self.tx).await?;
        Ok(u64::try_from(marked).unwrap_or_default())
    }

    /// Locks the document for a read-modify-write (`set` with merge) until the
    /// transaction ends.
    ///
    /// `SELECT … FOR UPDATE` alone cannot lock a document that does not exist: two
    /// merges into an absent document would both read "absent", both write only their
    /// own fields, and the later commit would overwrite the earlier one's. So a row is
    /// made to exist first: `INSERT '{}' … ON CONFLICT DO NOTHING`.
    ///
    /// - If it inserted, this transaction holds the new row's unique-index entry: any
    ///   other transaction inserting or upserting the same document (a merge here,
    ///   `doc_inc`, `doc_put`, `doc_insert`) waits until this one ends, then sees its
    ///   committed result. The document was absent: `None`, and the caller's write
    ///   replaces the `{}` (a caller that writes nothing leaves `{}` behind).
    /// - If it did nothing, the row existed (or another transaction that inserted it
    ///   has just committed: the INSERT waited for it), and `SELECT … FOR UPDATE`
    ///   locks it and returns its latest committed version.
    async fn doc_get_for_update(
        &mut self,
        collection: &str,
        id: &str,
    ) -> Result<Option<String>, DocError> {
        for _ in 0..LOCK_ATTEMPTS {
            match shared::doc_insert(&mut *self.tx, collection, id, "{}").await {
                Ok(()) => return Ok(None),
                Err(DocError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
            let lock = <Postgres as Dialect>::FOR_UPDATE;
            if let Some(text) = shared::select_document(&mut *self.tx, collection, id, lock).await?
            {
                return Ok(Some(text));
            }
            // Deleted (and committed) between the two statements: make it exist again.
        }
        Err(DocError::Invalid(format!(
            "document {collection}/{id} is being deleted and re-created concurrently; try again"
        )))
    }

    /// One statement: create the document with the field, or add to the field if it is
    /// absent or an integer. The `WHERE` of `DO UPDATE` refuses anything else, and a
    /// sum outside 64 bits, without an error (no row comes back): a failed statement
    /// would abort the transaction. (`CASE` because SQL does not promise to evaluate
    /// `AND` left to right, and `::numeric` of a non-number would raise.)
    async fn doc_inc(
        &mut self,
        collection: &str,
        id: &str,
        field: &str,
        delta: i64,
    ) -> Result<i64, DocError> {
        let value: Option<i64> = sqlx::query_scalar(
            "INSERT INTO documents AS d (collection, id, data, created_at, updated_at) \
             VALUES ($1, $2, jsonb_build_object($3::text, $4::bigint), $5, $5) \
             ON CONFLICT (collection, id) DO UPDATE SET \
               data = jsonb_set(d.data, ARRAY[$3::text], \
                                to_jsonb(COALESCE((d.data -> $3::text)::numeric, 0) + $4::bigint)), \
               updated_at = $5 \
             WHERE CASE jsonb_typeof(d.data -> $3::text) \
                     WHEN 'number' THEN scale((d.data -> $3::text)::numeric) = 0 \
                       AND (d.data -> $3::text)::numeric + $4::bigint \
                           BETWEEN -9223372036854775808 AND 9223372036854775807 \
                     ELSE d.data -> $3::text IS NULL \
                   END \
             RETURNING (d.data -> $3::text)::bigint",
        )
        .bind(collection)
        .bind(id)
        .bind(field)
        .bind(delta)
        .bind(now_ms())
        .fetch_optional(&mut *self.tx)
        .await?;
        value.ok_or_else(|| DocError::NotANumber(field.to_owned()))
    }
});

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

//! What the SQLite and PostgreSQL backends share: column lists, row mapping, and every
//! statement whose SQL is the same on both.
//!
//! sqlx binds `$n` parameters on SQLite as on PostgreSQL, so a statement that both
//! dialects understand is written once, in [`shared_statements!`], which each backend
//! expands for its own database type. Where the dialects differ only in a fragment
//! (reading `jsonb` as text, row locks, appending to a JSON array) the backend supplies
//! the fragment through [`Dialect`]; where they differ more (`doc_inc`, the merge lock)
//! each backend has its own code.

use std::borrow::Cow;

use sqlx::Row;

use super::{
    Millis, NotificationRecord, Order, RefundRecord, StoreError, TaskEnd, TaskRecord, Verdict,
};

pub(crate) const ORDER_COLUMNS: &str =
    "out_trade_no, type, provider, account, total_fee, user_id, custom, \
     status, refund_fee, transaction_id, pay_date, notify_date, handler_status, handler_result, \
     handler_version, original_data, paid_notification_id, created_at, updated_at";

pub(crate) const NOTIFICATION_COLUMNS: &str =
    "id, provider, account, received_at, remote_addr, headers, \
     body, truncated, verdict, reason, out_trade_no, processed_at";

pub(crate) const TASK_COLUMNS: &str =
    "id, plugin, name, payload, out_trade_no, provider, account, status, \
     attempts, run_at, last_error, errors, created_at";

/// The SQL fragments in which the backends' shared statements differ.
pub(crate) trait Dialect {
    /// `documents.data` as JSON text.
    const DOC_TEXT: &'static str;
    /// Applied to a bound JSON text parameter that is stored in `documents.data`.
    const JSON_PARAM: &'static str;
    /// Appended to a `SELECT` whose rows stay locked until the transaction ends.
    const FOR_UPDATE: &'static str;
    /// Appended to the task-claim subquery: lock what it picks, skipping rows that other
    /// workers have locked.
    const SKIP_LOCKED: &'static str;
    /// `tasks.errors` (a JSON array as text) with the text parameter `$6` appended.
    const APPEND_ERROR: &'static str;
    /// `documents.data` cannot hold a string with NUL in it (PostgreSQL `jsonb`).
    const JSON_REFUSES_NUL: bool;
    /// A subquery of the strings of the JSON array text parameter `$1`, one row each.
    const TEXT_LIST: &'static str;

    /// The `doc_query` condition "top-level field (parameter `$p`, as produced by
    /// [`Dialect::field_param`]) equals the JSON text parameter `$p+1`". A missing field
    /// equals `null`, as on SQLite.
    fn doc_filter(p: usize) -> String;
    /// What to bind as the field parameter of [`Dialect::doc_filter`].
    fn field_param(field: &str) -> String;
}

/// Maps a result row (of the column lists above) to the store's types.
pub(crate) trait StoreRow {
    fn order(&self) -> Result<Order, StoreError>;
    fn notification(&self) -> Result<NotificationRecord, StoreError>;
    fn task(&self) -> Result<TaskRecord, StoreError>;
    fn refund(&self) -> Result<RefundRecord, StoreError>;
}

/// `try_get` by column name on a rusqlite row, so that [`store_row!`] reads it as it
/// reads sqlx rows.
trait TryGet {
    fn try_get<T: rusqlite::types::FromSql>(&self, name: &str) -> rusqlite::Result<T>;
}

impl TryGet for rusqlite::Row<'_> {
    fn try_get<T: rusqlite::types::FromSql>(&self, name: &str) -> rusqlite::Result<T> {
        self.get(name)
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(name: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{name}: {e}")))
}

/// JSON columns are text on both backends, so one body serves both row types.
macro_rules! store_row {
    ($($row:ty),+) => {$(
        impl StoreRow for $row {
            fn order(&self) -> Result<Order, StoreError> {
                let json = |name: &str| -> Result<Option<serde_json::Value>, StoreError> {
                    let text: Option<String> = self.try_get(name)?;
                    text.map(|t| parse_json(name, &t)).transpose()
                };
                Ok(Order {
                    out_trade_no: self.try_get("out_trade_no")?,
                    order_type: self.try_get("type")?,
                    provider: self.try_get("provider")?,
                    account: self.try_get("account")?,
                    total_fee: self.try_get("total_fee")?,
                    user_id: self.try_get("user_id")?,
                    custom: json("custom")?.unwrap_or(serde_json::Value::Null),
                    status: self.try_get("status")?,
                    refund_fee: self.try_get("refund_fee")?,
                    transaction_id: self.try_get("transaction_id")?,
                    pay_date: self.try_get("pay_date")?,
                    notify_date: self.try_get("notify_date")?,
                    handler_status: self.try_get("handler_status")?,
                    handler_result: json("handler_result")?,
                    handler_version: self.try_get("handler_version")?,
                    original_data: json("original_data")?,
                    paid_notification_id: self.try_get("paid_notification_id")?,
                    created_at: self.try_get("created_at")?,
                    updated_at: self.try_get("updated_at")?,
                })
            }

            fn notification(&self) -> Result<NotificationRecord, StoreError> {
                let headers: String = self.try_get("headers")?;
                let verdict: String = self.try_get("verdict")?;
                Ok(NotificationRecord {
                    id: self.try_get("id")?,
                    provider: self.try_get("provider")?,
                    account: self.try_get("account")?,
                    received_at: self.try_get("received_at")?,
                    remote_addr: self.try_get("remote_addr")?,
                    headers: parse_json("headers", &headers)?,
                    body: self.try_get("body")?,
                    truncated: self.try_get("truncated")?,
                    verdict: Verdict::parse(&verdict)
                        .ok_or_else(|| StoreError::Corrupt(format!("unknown verdict `{verdict}`")))?,
                    reason: self.try_get("reason")?,
                    out_trade_no: self.try_get("out_trade_no")?,
                    processed_at: self.try_get("processed_at")?,
                })
            }

            fn refund(&self) -> Result<RefundRecord, StoreError> {
                let json = |name: &str| -> Result<Option<serde_json::Value>, StoreError> {
                    let text: Option<String> = self.try_get(name)?;
                    text.map(|t| parse_json(name, &t)).transpose()
                };
                Ok(RefundRecord {
                    id: self.try_get("id")?,
                    out_trade_no: self.try_get("out_trade_no")?,
                    out_refund_no: self.try_get("out_refund_no")?,
                    refund_id: self.try_get("refund_id")?,
                    provider: self.try_get("provider")?,
                    account: self.try_get("account")?,
                    amount: self.try_get("amount")?,
                    refunded_total: self.try_get("refunded_total")?,
                    refunded_at: self.try_get("refunded_at")?,
                    notification_id: self.try_get("notification_id")?,
                    handler_status: self.try_get("handler_status")?,
                    handler_result: json("handler_result")?,
                    handler_version: self.try_get("handler_version")?,
                    original_data: json("original_data")?.unwrap_or(serde_json::Value::Null),
                    created_at: self.try_get("created_at")?,
                })
            }

            fn task(&self) -> Result<TaskRecord, StoreError> {
                let errors: String = self.try_get("errors")?;
                Ok(TaskRecord {
                    id: self.try_get("id")?,
                    plugin: self.try_get("plugin")?,
                    name: self.try_get("name")?,
                    payload: self.try_get("payload")?,
                    out_trade_no: self.try_get("out_trade_no")?,
                    provider: self.try_get("provider")?,
                    account: self.try_get("account")?,
                    status: self.try_get("status")?,
                    attempts: self.try_get("attempts")?,
                    run_at: self.try_get("run_at")?,
                    last_error: self.try_get("last_error")?,
                    errors: parse_json("task errors", &errors)?,
                    created_at: self.try_get("created_at")?,
                })
            }
        }
    )+};
}

store_row!(
    sqlx::sqlite::SqliteRow,
    sqlx::postgres::PgRow,
    rusqlite::Row<'_>
);

pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// Savepoint names are spliced into SQL: plain names only.
pub(crate) fn check_savepoint(name: &str) -> Result<(), StoreError> {
    if crate::config::is_simple_name(name) && !name.contains('-') {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!("bad savepoint name `{name}`")))
    }
}

/// Text received from the wire or from a handler, made storable everywhere: PostgreSQL
/// `text` cannot hold NUL, so it becomes U+FFFD (on both backends, so they agree).
pub(crate) fn storable(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(text)
    }
}

/// True if JSON text has a string (or key) containing NUL, which `jsonb` refuses.
pub(crate) fn json_has_nul(text: &str) -> bool {
    fn walk(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::String(s) => s.contains('\0'),
            serde_json::Value::Array(a) => a.iter().any(walk),
            serde_json::Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || walk(v)),
            _ => false,
        }
    }
    // Only a `\u0000` escape can put NUL in JSON text; parse only when one may be there.
    text.contains("\\u0000") && serde_json::from_str(text).is_ok_and(|v| walk(&v))
}

/// How [`TaskEnd`] updates a task row: new status, attempts used, next run time, and
/// the error history entry.
pub(crate) fn task_end_update(
    end: &TaskEnd,
    now: Millis,
) -> (&'static str, i32, Option<Millis>, Option<String>) {
    let (status, attempts, run_at, error) = match end {
        TaskEnd::Done => ("done", 1, None, None),
        TaskEnd::Retry { error, at } => ("pending", 1, Some(*at), Some(error.as_str())),
        TaskEnd::Dead { error } => ("dead", 1, None, Some(error.as_str())),
        TaskEnd::Postpone { reason, at } => ("pending", 0, Some(*at), Some(reason.as_str())),
    };
    let entry = error.map(|e| format!("{} {}", super::iso_time(now), storable(e)));
    (status, attempts, run_at, entry)
}

/// SQL shared by the sqlx statements below and SQLite's synchronous writer
/// (`store::sqlite_writer`): one text per statement, whichever connection runs it. The
/// `$n` parameters are bound by number on both (sqlx) and by name (`$1`…) by the writer.
pub(crate) mod sql {
    /// `status 0 → 1` for one order, only if still unpaid.
    pub(crate) const MARK_PAID: &str =
        "UPDATE orders SET status = 1, transaction_id = $2, pay_date = $3, notify_date = $4, \
         paid_notification_id = $5, original_data = $6, updated_at = $4 \
         WHERE out_trade_no = $1 AND status = 0";
    /// The handler's result on an order.
    pub(crate) const SET_HANDLER_RESULT: &str =
        "UPDATE orders SET handler_status = $2, handler_result = $3, handler_version = $4, updated_at = $5 \
         WHERE out_trade_no = $1";
    /// Where one notification ended up.
    pub(crate) const FINISH_NOTIFICATION: &str =
        "UPDATE notifications SET verdict = $2, reason = $3, \
         out_trade_no = COALESCE($4, out_trade_no), account = COALESCE($5, account), processed_at = $6 \
         WHERE id = $1";
    /// Raw notifications: followed by one `VALUES` row of 7 per notification.
    pub(crate) const INSERT_NOTIFICATIONS: &str =
        "INSERT INTO notifications (provider, account, received_at, remote_addr, headers, body, truncated) ";
    /// A batch's paid orders: this, the `notify_date`/`updated_at` parameter, then
    /// [`SETTLE_PAID_FROM`] with one `VALUES` row of 7 per order, then [`SETTLE_PAID_WHERE`].
    pub(crate) const SETTLE_PAID_SET: &str =
        "UPDATE orders SET status = 1, transaction_id = v.column2, pay_date = v.column3, \
         paid_notification_id = v.column4, original_data = v.column5, \
         handler_status = 'succeeded', handler_result = v.column6, handler_version = v.column7, \
         notify_date = ";
    /// See [`SETTLE_PAID_SET`].
    pub(crate) const SETTLE_PAID_WHERE: &str =
        ") AS v WHERE orders.out_trade_no = v.column1 AND orders.status = 0";
    /// A batch's verdicts: this, the `processed_at` parameter, ` FROM (`, one `VALUES`
    /// row of 5 per notification, then [`FINISH_NOTIFICATIONS_WHERE`].
    pub(crate) const FINISH_NOTIFICATIONS_SET: &str =
        "UPDATE notifications SET verdict = v.column2, reason = v.column3, \
         out_trade_no = COALESCE(v.column4, notifications.out_trade_no), \
         account = COALESCE(v.column5, notifications.account), processed_at = ";
    /// See [`FINISH_NOTIFICATIONS_SET`].
    pub(crate) const FINISH_NOTIFICATIONS_WHERE: &str = ") AS v WHERE notifications.id = v.column1";
    /// `doc_put`'s conflict clause: replace the document.
    pub(crate) const DOC_REPLACE: &str =
        "DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at";
    /// `doc_insert`'s conflict clause: keep the existing document (and report a conflict).
    pub(crate) const DOC_KEEP: &str = "DO NOTHING";
    /// Deletes one document.
    pub(crate) const DOC_DELETE: &str = "DELETE FROM documents WHERE collection = $1 AND id = $2";
    /// Inserts a task (the outbox).
    pub(crate) const ENQUEUE_TASK: &str =
        "INSERT INTO tasks (plugin, name, payload, out_trade_no, provider, account, run_at, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) RETURNING id";

    use super::{Dialect, ORDER_COLUMNS};

    /// Inserts an order, returning it.
    pub(crate) fn insert_order() -> String {
        format!(
            "INSERT INTO orders (out_trade_no, type, provider, account, total_fee, user_id, custom, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) RETURNING {ORDER_COLUMNS}"
        )
    }

    /// One order, with the dialect's row lock when `lock` is its `FOR_UPDATE`.
    pub(crate) fn select_order(lock: &str) -> String {
        format!("SELECT {ORDER_COLUMNS} FROM orders WHERE out_trade_no = $1{lock}")
    }

    /// Orders by number: `IN ($1, …, $n)`, no lock.
    pub(crate) fn select_orders(n: usize) -> String {
        let list: Vec<String> = (1..=n).map(|i| format!("${i}")).collect();
        format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE out_trade_no IN ({})",
            list.join(", ")
        )
    }

    /// What [`order_versions`] joins for each order after its number: every column a
    /// change of the order sets, the long ones by length. (`||` turns the numbers into
    /// text on both dialects.)
    pub(crate) const ORDER_VERSION: &str =
        "updated_at || ' ' || status || ' ' || refund_fee || ' ' || handler_status || ' ' || \
         COALESCE(length(handler_result), -1) || ' ' || COALESCE(length(handler_version), -1) || ' ' || \
         COALESCE(length(original_data), -1)";

    /// One text for the orders named by the JSON array `$1`: `{no} {version}` per order,
    /// joined by `,` (order numbers have neither; `string_agg` is SQLite's too since 3.44).
    pub(crate) fn order_versions<D: Dialect>() -> String {
        format!(
            "SELECT string_agg(out_trade_no || ' ' || {ORDER_VERSION}, ',') FROM orders \
             WHERE out_trade_no IN ({})",
            D::TEXT_LIST
        )
    }

    /// A document's JSON text; `lock` as in [`select_order`].
    pub(crate) fn select_document<D: Dialect>(lock: &str) -> String {
        format!(
            "SELECT {} FROM documents WHERE collection = $1 AND id = $2{lock}",
            D::DOC_TEXT
        )
    }

    /// `INSERT` of a document with `on_conflict` ([`DOC_REPLACE`] or [`DOC_KEEP`]).
    pub(crate) fn write_document<D: Dialect>(on_conflict: &str) -> String {
        format!(
            "INSERT INTO documents (collection, id, data, created_at, updated_at) \
             VALUES ($1, $2, $3{}, $4, $4) ON CONFLICT (collection, id) {on_conflict}",
            D::JSON_PARAM
        )
    }

    /// Documents of collection `$1` matching `filters` field/value parameter pairs from
    /// `$2` on, by id, at most the last parameter.
    pub(crate) fn doc_query<D: Dialect>(filters: usize) -> String {
        let mut sql = format!(
            "SELECT id, {} AS data FROM documents WHERE collection = $1",
            D::DOC_TEXT
        );
        for i in 0..filters {
            sql.push_str(" AND ");
            sql.push_str(&D::doc_filter(2 + 2 * i));
        }
        sql.push_str(&format!(" ORDER BY id LIMIT ${}", 2 + 2 * filters));
        sql
    }

    /// `SAVEPOINT`, `RELEASE SAVEPOINT` or `ROLLBACK TO SAVEPOINT` (`verb`) of a checked name.
    pub(crate) fn savepoint(verb: &str, name: &str) -> Result<String, crate::store::StoreError> {
        super::check_savepoint(name)?;
        Ok(format!("{verb} {name}"))
    }
}

/// Most order numbers one statement of `get_orders` binds: far under SQLite's 32,766
/// parameters and PostgreSQL's 65,535, and few statements for thousands of watchers.
pub(crate) const ORDERS_PER_READ: usize = 512;

/// `nos` as `get_orders` binds them: numbers with NUL left out (no order has one, and
/// PostgreSQL cannot even compare them), in chunks of at most [`ORDERS_PER_READ`], each
/// padded to a power of two by repeating its last number. The padding keeps the number
/// of statement texts at ten whatever the count, so a changing set of watched orders
/// does not fill the prepared-statement caches with one text per count (`IN` returns a
/// repeated number's row once).
pub(crate) fn order_read_chunks(nos: &[String]) -> Vec<Vec<&str>> {
    let nos: Vec<&str> = nos
        .iter()
        .map(String::as_str)
        .filter(|n| !n.contains('\0'))
        .collect();
    nos.chunks(ORDERS_PER_READ)
        .map(|chunk| {
            let mut padded = chunk.to_vec();
            let last = chunk[chunk.len() - 1];
            padded.resize(chunk.len().next_power_of_two(), last);
            padded
        })
        .collect()
}

/// Expands, in the calling backend module, a module `shared` of the statements that are
/// the same on every backend, for the database type `$db` (which implements
/// [`Dialect`]). Each function takes an executor (a pool, or `&mut *transaction`).
macro_rules! shared_statements {
    ($db:ty) => {
        /// The statements this backend shares with the others (see `store::common`).
        // SQLite runs its transactions on its own writer (`store::sqlite_writer`), so
        // there the transaction statements are unused.
        #[allow(dead_code)]
        mod shared {
            use sqlx::{Executor, Row};

            use $crate::store::common::{
                is_unique_violation, json_has_nul, sql, storable, task_end_update, Dialect, StoreRow,
                NOTIFICATION_COLUMNS, ORDER_COLUMNS, TASK_COLUMNS,
            };
            use $crate::store::{
                now_ms, DocError, MarkPaid, NewNotification, NewOrder, NewTask, NotificationFilter,
                NotificationRecord, Order, OrderFilter, PaidOrder, StoreError, TaskEnd, TaskRecord, Verdict,
            };

            type Conn = <$db as sqlx::Database>::Connection;

            pub(super) async fn create_order<'e, E: Executor<'e, Database = $db>>(
                e: E,
                o: &NewOrder,
            ) -> Result<Order, StoreError> {
                let row = sqlx::query(&sql::insert_order())
                    .bind(&o.out_trade_no)
                    .bind(&o.order_type)
                    .bind(&o.provider)
                    .bind(&o.account)
                    .bind(o.total_fee)
                    .bind(&o.user_id)
                    .bind(o.custom.to_string())
                    .bind(now_ms())
                    .fetch_one(e)
                    .await
                    .map_err(|e| {
                        if is_unique_violation(&e) {
                            StoreError::Conflict(format!("order {} already exists", o.out_trade_no))
                        } else {
                            e.into()
                        }
                    })?;
                row.order()
            }

            /// The order, read without a lock.
            pub(super) async fn get_order<'e, E: Executor<'e, Database = $db>>(
                e: E,
                out_trade_no: &str,
            ) -> Result<Option<Order>, StoreError> {
                select_order(e, out_trade_no, "").await
            }

            /// The existing orders among `nos`, one statement per chunk of
            /// [`order_read_chunks`](crate::store::common::order_read_chunks).
            pub(super) async fn get_orders(
                pool: &sqlx::Pool<$db>,
                nos: &[String],
            ) -> Result<Vec<Order>, StoreError> {
                let mut orders = Vec::with_capacity(nos.len());
                for chunk in $crate::store::common::order_read_chunks(nos) {
                    let text = sql::select_orders(chunk.len());
                    let mut q = sqlx::query(&text);
                    for no in chunk {
                        q = q.bind(no);
                    }
                    for row in q.fetch_all(pool).await? {
                        orders.push(row.order()?);
                    }
                }
                Ok(orders)
            }

            /// The version of each existing order among `nos`, in one statement that
            /// returns one text: see [`sql::order_versions`].
            pub(super) async fn order_versions(
                pool: &sqlx::Pool<$db>,
                nos: &[String],
            ) -> Result<std::collections::HashMap<String, String>, StoreError> {
                // No order number holds NUL (and PostgreSQL's JSON cannot carry it).
                let nos: Vec<&str> = nos.iter().map(String::as_str).filter(|n| !n.contains('\0')).collect();
                if nos.is_empty() {
                    return Ok(std::collections::HashMap::new());
                }
                let list = serde_json::Value::from(nos).to_string();
                let joined: Option<String> = sqlx::query_scalar(&sql::order_versions::<$db>())
                    .bind(list)
                    .fetch_one(pool)
                    .await?;
                Ok(joined
                    .as_deref()
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(|entry| entry.split_once(' '))
                    .map(|(no, version)| (no.to_owned(), version.to_owned()))
                    .collect())
            }

            /// The order, its row locked until the transaction ends where the dialect
            /// has row locks (SQLite's write transaction already excludes every writer).
            pub(super) async fn lock_order<'e, E: Executor<'e, Database = $db>>(
                e: E,
                out_trade_no: &str,
            ) -> Result<Option<Order>, StoreError> {
                select_order(e, out_trade_no, <$db as Dialect>::FOR_UPDATE).await
            }

            async fn select_order<'e, E: Executor<'e, Database = $db>>(
                e: E,
                out_trade_no: &str,
                lock: &str,
            ) -> Result<Option<Order>, StoreError> {
                if out_trade_no.contains('\0') {
                    // No order number holds NUL (and PostgreSQL cannot even compare it).
                    return Ok(None);
                }
                let row = sqlx::query(&sql::select_order(lock)).bind(out_trade_no).fetch_optional(e).await?;
                row.as_ref().map(StoreRow::order).transpose()
            }

            pub(super) async fn insert_notification<'e, E: Executor<'e, Database = $db>>(
                e: E,
                n: &NewNotification,
            ) -> Result<i64, StoreError> {
                let headers = serde_json::to_string(&n.headers)
                    .map_err(|e| StoreError::Invalid(format!("headers: {e}")))?;
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO notifications (provider, account, received_at, remote_addr, headers, body, truncated) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                )
                .bind(storable(&n.provider))
                .bind(n.account.as_deref().map(storable))
                .bind(n.received_at)
                .bind(n.remote_addr.as_deref().map(storable))
                .bind(headers)
                .bind(&n.body)
                .bind(n.truncated)
                .fetch_one(e)
                .await?;
                Ok(id)
            }

            /// Stores a batch of raw notifications with one multi-row `INSERT`, returning
            /// their ids in the batch's order. Rows take their ids in VALUES order (one
            /// writer on SQLite; one statement drawing increasing identity values on
            /// PostgreSQL), so the returned ids, sorted, line up with the batch.
            pub(super) async fn insert_notifications(
                conn: &mut Conn,
                batch: &[&NewNotification],
            ) -> Result<Vec<i64>, StoreError> {
                if batch.is_empty() {
                    return Ok(Vec::new());
                }
                let headers = batch
                    .iter()
                    .map(|n| serde_json::to_string(&n.headers))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| StoreError::Invalid(format!("headers: {e}")))?;
                let mut q = sqlx::QueryBuilder::<$db>::new(sql::INSERT_NOTIFICATIONS);
                q.push_values(batch.iter().zip(&headers), |mut row, (n, h)| {
                    row.push_bind(storable(&n.provider).into_owned())
                        .push_bind(n.account.as_deref().map(|s| storable(s).into_owned()))
                        .push_bind(n.received_at)
                        .push_bind(n.remote_addr.as_deref().map(|s| storable(s).into_owned()))
                        .push_bind(h.as_str())
                        .push_bind(n.body.as_slice())
                        .push_bind(n.truncated);
                });
                q.push(" RETURNING id");
                let mut ids: Vec<i64> = q
                    .build_query_scalar()
                    .fetch_all(&mut *conn)
                    .await?;
                if ids.len() != batch.len() {
                    return Err(StoreError::Invalid(format!(
                        "stored {} of {} notifications",
                        ids.len(),
                        batch.len()
                    )));
                }
                ids.sort_unstable();
                Ok(ids)
            }

            pub(super) async fn finish_notification<'e, E: Executor<'e, Database = $db>>(
                e: E,
                id: i64,
                verdict: Verdict,
                reason: Option<&str>,
                out_trade_no: Option<&str>,
                account: Option<&str>,
            ) -> Result<(), StoreError> {
                sqlx::query(sql::FINISH_NOTIFICATION)
                .bind(id)
                .bind(verdict.as_str())
                .bind(reason.map(storable))
                .bind(out_trade_no.map(storable))
                .bind(account.map(storable))
                .bind(now_ms())
                .execute(e)
                .await?;
                Ok(())
            }

            pub(super) async fn get_notification<'e, E: Executor<'e, Database = $db>>(
                e: E,
                id: i64,
            ) -> Result<Option<NotificationRecord>, StoreError> {
                let sql = format!("SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE id = $1");
                let row = sqlx::query(&sql).bind(id).fetch_optional(e).await?;
                row.as_ref().map(StoreRow::notification).transpose()
            }

            pub(super) async fn list_notifications<'e, E: Executor<'e, Database = $db>>(
                e: E,
                f: &NotificationFilter,
            ) -> Result<Vec<NotificationRecord>, StoreError> {
                let sql = format!(
                    "SELECT {NOTIFICATION_COLUMNS} FROM notifications \
                     WHERE ($1 IS NULL OR provider = $1) AND ($2 IS NULL OR out_trade_no = $2) \
                       AND ($3 IS NULL OR verdict = $3) AND ($4 IS NULL OR id < $4) \
                       AND ($6 IS NULL OR received_at >= $6) AND ($7 IS NULL OR received_at < $7) \
                     ORDER BY id DESC LIMIT $5"
                );
                let rows = sqlx::query(&sql)
                    .bind(f.provider.as_deref().map(storable))
                    .bind(f.out_trade_no.as_deref().map(storable))
                    .bind(f.verdict.map(Verdict::as_str))
                    .bind(f.before_id)
                    .bind(i64::from(f.limit.clamp(1, 500)))
                    .bind(f.since)
                    .bind(f.until)
                    .fetch_all(e)
                    .await?;
                rows.iter().map(StoreRow::notification).collect()
            }

            /// Orders, newest first: by `created_at`, then `out_trade_no`, so the cursor
            /// (the previous page's last order) is a total order and pages never overlap.
            pub(super) async fn list_orders<'e, E: Executor<'e, Database = $db>>(
                e: E,
                f: &OrderFilter,
            ) -> Result<Vec<Order>, StoreError> {
                let sql = format!(
                    "SELECT {ORDER_COLUMNS} FROM orders \
                     WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR type = $2) \
                       AND ($3 IS NULL OR user_id = $3) \
                       AND ($4 IS NULL OR created_at < $4 OR (created_at = $4 AND out_trade_no < $5)) \
                     ORDER BY created_at DESC, out_trade_no DESC LIMIT $6"
                );
                let rows = sqlx::query(&sql)
                    .bind(f.status)
                    .bind(f.order_type.as_deref().map(storable))
                    .bind(f.user_id.as_deref().map(storable))
                    .bind(f.before.as_ref().map(|c| c.created_at))
                    .bind(f.before.as_ref().map(|c| storable(&c.out_trade_no)))
                    .bind(i64::from(f.limit.clamp(1, 500)))
                    .fetch_all(e)
                    .await?;
                rows.iter().map(StoreRow::order).collect()
            }

            /// One statement, so one transaction: picks up to `limit` unpaid orders
            /// created before `created_before` (PostgreSQL: skipping rows locked by a
            /// payment in progress or by another process's expiry run) and closes those
            /// still unpaid. The outer `status = 0` is checked again on the row as it is
            /// when updated, so an order paid in between stays paid.
            pub(super) async fn close_expired_orders<'e, E: Executor<'e, Database = $db>>(
                e: E,
                created_before: i64,
                limit: u32,
            ) -> Result<Vec<String>, StoreError> {
                let sql = format!(
                    "UPDATE orders SET status = -1, updated_at = $2 \
                     WHERE status = 0 AND out_trade_no IN (SELECT out_trade_no FROM orders \
                                  WHERE status = 0 AND created_at < $1 \
                                  ORDER BY created_at LIMIT $3{}) \
                     RETURNING out_trade_no",
                    <$db as Dialect>::SKIP_LOCKED
                );
                let closed: Vec<String> = sqlx::query_scalar(&sql)
                    .bind(created_before)
                    .bind(now_ms())
                    .bind(i64::from(limit.max(1)))
                    .fetch_all(e)
                    .await?;
                Ok(closed)
            }

            /// Open tasks by status. `IN (…)` rather than a scan of the whole table: the
            /// `(status, run_at)` index gives the three ranges, whose size is the queue,
            /// not the ever-growing history of done tasks.
            pub(super) async fn count_open_tasks<'e, E: Executor<'e, Database = $db>>(
                e: E,
            ) -> Result<Vec<(String, i64)>, StoreError> {
                let rows = sqlx::query(
                    "SELECT status, COUNT(*) AS n FROM tasks \
                     WHERE status IN ('pending', 'running', 'dead') GROUP BY status",
                )
                .fetch_all(e)
                .await?;
                rows.iter()
                    .map(|r| Ok((r.try_get("status")?, r.try_get("n")?)))
                    .collect::<Result<_, sqlx::Error>>()
                    .map_err(StoreError::from)
            }

            /// A document's JSON text, read without a lock.
            pub(super) async fn get_document<'e, E: Executor<'e, Database = $db>>(
                e: E,
                collection: &str,
                id: &str,
            ) -> Result<Option<String>, sqlx::Error> {
                select_document(e, collection, id, "").await
            }

            /// `lock` is `""` or the dialect's `FOR UPDATE`.
            pub(super) async fn select_document<'e, E: Executor<'e, Database = $db>>(
                e: E,
                collection: &str,
                id: &str,
                lock: &str,
            ) -> Result<Option<String>, sqlx::Error> {
                sqlx::query_scalar(&sql::select_document::<$db>(lock)).bind(collection).bind(id).fetch_optional(e).await
            }

            pub(super) async fn list_tasks<'e, E: Executor<'e, Database = $db>>(
                e: E,
                status: Option<&str>,
                limit: u32,
            ) -> Result<Vec<TaskRecord>, StoreError> {
                let sql = format!(
                    "SELECT {TASK_COLUMNS} FROM tasks WHERE ($1 IS NULL OR status = $1) ORDER BY id DESC LIMIT $2"
                );
                let rows = sqlx::query(&sql)
                    .bind(status.map(storable))
                    .bind(i64::from(limit.clamp(1, 500)))
                    .fetch_all(e)
                    .await?;
                rows.iter().map(StoreRow::task).collect()
            }

            pub(super) async fn get_task<'e, E: Executor<'e, Database = $db>>(
                e: E,
                id: i64,
            ) -> Result<Option<TaskRecord>, StoreError> {
                let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1");
                let row = sqlx::query(&sql).bind(id).fetch_optional(e).await?;
                row.as_ref().map(StoreRow::task).transpose()
            }

            /// One statement: picks due tasks (pending and due, or running with an
            /// expired lease) and marks them running under `token` until `lease_until`.
            pub(super) async fn claim_tasks<'e, E: Executor<'e, Database = $db>>(
                e: E,
                token: &str,
                now: i64,
                lease_until: i64,
                limit: u32,
            ) -> Result<Vec<TaskRecord>, StoreError> {
                let sql = format!(
                    "UPDATE tasks SET status = 'running', claim_token = $1, locked_until = $3, updated_at = $2 \
                     WHERE id IN (SELECT id FROM tasks \
                                  WHERE (status = 'pending' AND run_at <= $2) \
                                     OR (status = 'running' AND locked_until <= $2) \
                                  ORDER BY run_at, id LIMIT $4{}) \
                     RETURNING {TASK_COLUMNS}",
                    <$db as Dialect>::SKIP_LOCKED
                );
                let rows = sqlx::query(&sql)
                    .bind(token)
                    .bind(now)
                    .bind(lease_until)
                    .bind(i64::from(limit))
                    .fetch_all(e)
                    .await?;
                rows.iter().map(StoreRow::task).collect()
            }

            /// Moves the lease of a task this worker still holds (by `token`) to
            /// `lease_until`. Only the token is checked, not the old lease: a claim that
            /// ran out without being taken over is still this worker's, and a takeover
            /// rewrites the token, so whichever statement commits second sees the other's
            /// (row lock on PostgreSQL, one writer on SQLite).
            pub(super) async fn renew_task<'e, E: Executor<'e, Database = $db>>(
                e: E,
                id: i64,
                token: &str,
                lease_until: i64,
            ) -> Result<bool, StoreError> {
                let done = sqlx::query(
                    "UPDATE tasks SET locked_until = $3 \
                     WHERE id = $1 AND claim_token = $2 AND status = 'running'",
                )
                .bind(id)
                .bind(token)
                .bind(lease_until)
                .execute(e)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            pub(super) async fn finish_task<'e, E: Executor<'e, Database = $db>>(
                e: E,
                id: i64,
                token: &str,
                end: &TaskEnd,
            ) -> Result<bool, StoreError> {
                let now = now_ms();
                let (status, attempts, run_at, entry) = task_end_update(end, now);
                let sql = format!(
                    "UPDATE tasks SET status = $3, attempts = attempts + $4, run_at = COALESCE($5, run_at), \
                       last_error = COALESCE($6, last_error), \
                       errors = CASE WHEN $6 IS NULL THEN errors ELSE {} END, \
                       claim_token = NULL, locked_until = NULL, updated_at = $7 \
                     WHERE id = $1 AND claim_token = $2 AND status = 'running'",
                    <$db as Dialect>::APPEND_ERROR
                );
                let done = sqlx::query(&sql)
                    .bind(id)
                    .bind(token)
                    .bind(status)
                    .bind(attempts)
                    .bind(run_at)
                    .bind(entry)
                    .bind(now)
                    .execute(e)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            pub(super) async fn retry_task<'e, E: Executor<'e, Database = $db>>(
                e: E,
                id: i64,
            ) -> Result<bool, StoreError> {
                let done = sqlx::query(
                    "UPDATE tasks SET status = 'pending', attempts = 0, run_at = $2, updated_at = $2 \
                     WHERE id = $1 AND status IN ('dead', 'pending')",
                )
                .bind(id)
                .bind(now_ms())
                .execute(e)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            /// One statement for a batch: `SELECT … WHERE out_trade_no IN (…)`, locked in
            /// key order so concurrent batches queue on rows instead of deadlocking.
            pub(super) async fn lock_orders(conn: &mut Conn, nos: &[&str]) -> Result<Vec<Order>, StoreError> {
                // No order number holds NUL (and PostgreSQL cannot even compare it).
                let nos: Vec<&str> = nos.iter().copied().filter(|n| !n.contains('\0')).collect();
                if nos.is_empty() {
                    return Ok(Vec::new());
                }
                let mut q = sqlx::QueryBuilder::<$db>::new(format!(
                    "SELECT {ORDER_COLUMNS} FROM orders WHERE out_trade_no IN ("
                ));
                let mut list = q.separated(", ");
                for no in nos {
                    list.push_bind(no);
                }
                q.push(") ORDER BY out_trade_no");
                q.push(<$db as Dialect>::FOR_UPDATE);
                let rows = q.build().fetch_all(&mut *conn).await?;
                rows.iter().map(StoreRow::order).collect()
            }

            /// One `UPDATE … FROM (VALUES …)` for every order a batch paid. VALUES columns
            /// are `column1…` on both dialects, and each bind carries its type, so the
            /// same text serves SQLite and PostgreSQL.
            pub(super) async fn settle_paid(conn: &mut Conn, paid: &[PaidOrder]) -> Result<u64, StoreError> {
                if paid.is_empty() {
                    return Ok(0);
                }
                let mut q = sqlx::QueryBuilder::<$db>::new("");
                push_settle_paid(&mut q, paid);
                let done = q.build().execute(&mut *conn).await?;
                Ok(done.rows_affected())
            }

            /// Appends [`settle_paid`]'s statement to `q`.
            pub(super) fn push_settle_paid<'a>(q: &mut sqlx::QueryBuilder<'a, $db>, paid: &'a [PaidOrder]) {
                let now = now_ms();
                q.push(sql::SETTLE_PAID_SET);
                q.push_bind(now);
                q.push(", updated_at = ");
                q.push_bind(now);
                q.push(" FROM (");
                q.push_values(paid, |mut row, p| {
                    row.push_bind(p.out_trade_no.as_str())
                        .push_bind(storable(&p.transaction_id).into_owned())
                        .push_bind(p.pay_date)
                        .push_bind(p.notification_id)
                        .push_bind(p.original_data.as_str())
                        .push_bind(p.handler_result.as_str())
                        .push_bind(storable(&p.handler_version).into_owned());
                });
                q.push(sql::SETTLE_PAID_WHERE);
            }

            /// One `UPDATE … FROM (VALUES …)` recording every verdict of a batch.
            pub(super) async fn finish_notifications(
                conn: &mut Conn,
                rows: &[$crate::store::NotificationVerdict<'_>],
            ) -> Result<(), StoreError> {
                if rows.is_empty() {
                    return Ok(());
                }
                let mut q = sqlx::QueryBuilder::<$db>::new("");
                push_finish_notifications(&mut q, rows);
                q.build().execute(&mut *conn).await?;
                Ok(())
            }

            /// Appends [`finish_notifications`]'s statement to `q`.
            pub(super) fn push_finish_notifications<'a>(
                q: &mut sqlx::QueryBuilder<'a, $db>,
                rows: &'a [$crate::store::NotificationVerdict<'_>],
            ) {
                q.push(sql::FINISH_NOTIFICATIONS_SET);
                q.push_bind(now_ms());
                q.push(" FROM (");
                q.push_values(rows, |mut row, r| {
                    row.push_bind(r.id)
                        .push_bind(r.verdict.as_str())
                        .push_bind(r.reason.map(|s| storable(s).into_owned()))
                        .push_bind(r.out_trade_no.map(|s| storable(s).into_owned()))
                        .push_bind(r.account.map(|s| storable(s).into_owned()));
                });
                q.push(sql::FINISH_NOTIFICATIONS_WHERE);
            }

            pub(super) async fn savepoint(conn: &mut Conn, name: &str) -> Result<(), StoreError> {
                (&mut *conn).execute(sql::savepoint("SAVEPOINT", name)?.as_str()).await?;
                Ok(())
            }

            pub(super) async fn release(conn: &mut Conn, name: &str) -> Result<(), StoreError> {
                (&mut *conn).execute(sql::savepoint("RELEASE SAVEPOINT", name)?.as_str()).await?;
                Ok(())
            }

            /// Undoes what was done since the savepoint, and releases it.
            pub(super) async fn rollback_to(conn: &mut Conn, name: &str) -> Result<(), StoreError> {
                (&mut *conn).execute(sql::savepoint("ROLLBACK TO SAVEPOINT", name)?.as_str()).await?;
                (&mut *conn).execute(sql::savepoint("RELEASE SAVEPOINT", name)?.as_str()).await?;
                Ok(())
            }

            pub(super) async fn mark_paid<'e, E: Executor<'e, Database = $db>>(
                e: E,
                p: &MarkPaid<'_>,
            ) -> Result<bool, StoreError> {
                let done = sqlx::query(sql::MARK_PAID)
                .bind(p.out_trade_no)
                .bind(storable(p.transaction_id))
                .bind(p.pay_date)
                .bind(now_ms())
                .bind(p.notification_id)
                .bind(p.original_data.to_string())
                .execute(e)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            pub(super) async fn set_handler_result<'e, E: Executor<'e, Database = $db>>(
                e: E,
                out_trade_no: &str,
                handler_status: &str,
                result: &serde_json::Value,
                handler_version: Option<&str>,
            ) -> Result<(), StoreError> {
                sqlx::query(sql::SET_HANDLER_RESULT)
                .bind(out_trade_no)
                .bind(handler_status)
                .bind(result.to_string())
                .bind(handler_version.map(storable))
                .bind(now_ms())
                .execute(e)
                .await?;
                Ok(())
            }

            /// Refuses, before the database does, what this backend cannot store: a
            /// failed statement would abort a PostgreSQL transaction.
            fn check_storable(data: &str) -> Result<(), DocError> {
                if <$db as Dialect>::JSON_REFUSES_NUL && json_has_nul(data) {
                    return Err(DocError::Invalid(
                        "this database cannot store NUL (\\u0000) in a document".into(),
                    ));
                }
                Ok(())
            }

            /// Inserts a new document. `ON CONFLICT DO NOTHING` rather than a unique
            /// violation: on PostgreSQL a failed statement would abort the whole
            /// transaction, and a handler must be able to go on after a conflict.
            pub(super) async fn doc_insert<'e, E: Executor<'e, Database = $db>>(
                e: E,
                collection: &str,
                id: &str,
                data: &str,
            ) -> Result<(), DocError> {
                if write_document(e, collection, id, data, sql::DOC_KEEP).await? {
                    Ok(())
                } else {
                    Err(DocError::Conflict(format!("{collection}/{id}")))
                }
            }

            /// Creates or replaces a document.
            pub(super) async fn doc_put<'e, E: Executor<'e, Database = $db>>(
                e: E,
                collection: &str,
                id: &str,
                data: &str,
            ) -> Result<(), DocError> {
                write_document(e, collection, id, data, sql::DOC_REPLACE).await?;
                Ok(())
            }

            /// `INSERT … ON CONFLICT (collection, id) {on_conflict}`; true if a row was
            /// written.
            async fn write_document<'e, E: Executor<'e, Database = $db>>(
                e: E,
                collection: &str,
                id: &str,
                data: &str,
                on_conflict: &str,
            ) -> Result<bool, DocError> {
                check_storable(data)?;
                let done = sqlx::query(&sql::write_document::<$db>(on_conflict))
                    .bind(collection)
                    .bind(id)
                    .bind(data)
                    .bind(now_ms())
                    .execute(e)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            pub(super) async fn doc_delete<'e, E: Executor<'e, Database = $db>>(
                e: E,
                collection: &str,
                id: &str,
            ) -> Result<bool, DocError> {
                let done = sqlx::query(sql::DOC_DELETE)
                    .bind(collection)
                    .bind(id)
                    .execute(e)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            /// Documents whose top-level fields equal the filters' JSON values, by id.
            pub(super) async fn doc_query<'e, E: Executor<'e, Database = $db>>(
                e: E,
                collection: &str,
                filters: &[(String, serde_json::Value)],
                limit: u32,
            ) -> Result<Vec<(String, String)>, DocError> {
                if <$db as Dialect>::JSON_REFUSES_NUL
                    && filters.iter().any(|(_, v)| json_has_nul(&v.to_string()))
                {
                    // No stored document can hold that value.
                    return Ok(Vec::new());
                }
                let text = sql::doc_query::<$db>(filters.len());
                let mut q = sqlx::query(&text).bind(collection);
                for (field, value) in filters {
                    q = q.bind(<$db as Dialect>::field_param(field)).bind(value.to_string());
                }
                let rows = q.bind(i64::from(limit)).fetch_all(e).await?;
                rows.iter()
                    .map(|r| Ok((r.try_get("id")?, r.try_get("data")?)))
                    .collect::<Result<_, sqlx::Error>>()
                    .map_err(DocError::from)
            }

            /// Inserts a task (the outbox).
            pub(super) async fn enqueue_task<'e, E: Executor<'e, Database = $db>>(
                e: E,
                t: &NewTask,
            ) -> Result<i64, StoreError> {
                let id: i64 = sqlx::query_scalar(sql::ENQUEUE_TASK)
                .bind(&t.plugin)
                .bind(storable(&t.name))
                .bind(&t.payload)
                .bind(&t.out_trade_no)
                .bind(&t.provider)
                .bind(&t.account)
                .bind(t.run_at)
                .bind(now_ms())
                .fetch_one(e)
                .await?;
                Ok(id)
            }
        }
    };
}

pub(crate) use shared_statements;

/// `impl Store for $store`: every method whose statement is shared (from the `shared`
/// module that [`shared_statements!`] expanded beside it, and the other statement
/// modules: `claims`, `refund_sql`, `retention_sql`), plus the backend's own methods
/// given in braces (`create_order`, `insert_notification(s)`, `begin`, `database_bytes`,
/// `backend`, …: among them the writes whose answer must wait for a commit each backend
/// checks its own way). The store has a field `cut_rejected_at` (see `store::retention`). Reads outside a
/// transaction go to the `$reader` pool field, writes to the connection that the async
/// method `$writer` hands out.
macro_rules! impl_store {
    ($store:ty, reader: $reader:ident, writer: $writer:ident, { $($own:tt)* }) => {
        #[async_trait::async_trait]
        impl $crate::store::Store for $store {
            async fn get_order(
                &self,
                out_trade_no: &str,
            ) -> Result<Option<$crate::store::Order>, $crate::store::StoreError> {
                shared::get_order(&self.$reader, out_trade_no).await
            }

            async fn get_orders(
                &self,
                out_trade_nos: &[String],
            ) -> Result<Vec<$crate::store::Order>, $crate::store::StoreError> {
                shared::get_orders(&self.$reader, out_trade_nos).await
            }

            async fn order_versions(
                &self,
                out_trade_nos: &[String],
            ) -> Result<std::collections::HashMap<String, String>, $crate::store::StoreError> {
                shared::order_versions(&self.$reader, out_trade_nos).await
            }

            async fn finish_notification(
                &self,
                id: i64,
                verdict: $crate::store::Verdict,
                reason: Option<&str>,
                out_trade_no: Option<&str>,
                account: Option<&str>,
            ) -> Result<(), $crate::store::StoreError> {
                retention_sql::finish_notification(
                    &mut *self.$writer().await?,
                    id,
                    verdict,
                    reason,
                    out_trade_no,
                    account,
                    self.cut_rejected_at,
                )
                .await
            }

            async fn get_notification(
                &self,
                id: i64,
            ) -> Result<Option<$crate::store::NotificationRecord>, $crate::store::StoreError> {
                shared::get_notification(&self.$reader, id).await
            }

            async fn list_notifications(
                &self,
                f: &$crate::store::NotificationFilter,
            ) -> Result<Vec<$crate::store::NotificationRecord>, $crate::store::StoreError> {
                shared::list_notifications(&self.$reader, f).await
            }

            async fn list_orders(
                &self,
                f: &$crate::store::OrderFilter,
            ) -> Result<Vec<$crate::store::Order>, $crate::store::StoreError> {
                shared::list_orders(&self.$reader, f).await
            }

            async fn close_expired_orders(
                &self,
                created_before: $crate::store::Millis,
                limit: u32,
            ) -> Result<Vec<String>, $crate::store::StoreError> {
                shared::close_expired_orders(&mut *self.$writer().await?, created_before, limit).await
            }

            async fn claim_reconcile(
                &self,
                created_before: $crate::store::Millis,
                now: $crate::store::Millis,
                until: $crate::store::Millis,
                limit: u32,
            ) -> Result<Vec<$crate::store::Order>, $crate::store::StoreError> {
                claims::claim(&mut *self.$writer().await?, "reconcile_after", created_before, now, until, limit)
                    .await
            }

            async fn claim_expired(
                &self,
                created_before: $crate::store::Millis,
                now: $crate::store::Millis,
                until: $crate::store::Millis,
                limit: u32,
            ) -> Result<Vec<$crate::store::Order>, $crate::store::StoreError> {
                claims::claim(&mut *self.$writer().await?, "close_after", created_before, now, until, limit).await
            }

            async fn close_order(
                &self,
                out_trade_no: &str,
            ) -> Result<bool, $crate::store::StoreError> {
                claims::close_order(&mut *self.$writer().await?, out_trade_no).await
            }

            async fn failed_unpaid_notifications(
                &self,
                since: Option<$crate::store::Millis>,
                order_type: Option<&str>,
                limit: u32,
            ) -> Result<Vec<$crate::store::NotificationRecord>, $crate::store::StoreError> {
                claims::failed_unpaid(&self.$reader, since, order_type, limit).await
            }

            async fn claim_stuck(
                &self,
                received_before: $crate::store::Millis,
                now: $crate::store::Millis,
                until: $crate::store::Millis,
                limit: u32,
            ) -> Result<Vec<$crate::store::NotificationRecord>, $crate::store::StoreError> {
                claims::claim_stuck(&mut *self.$writer().await?, received_before, now, until, limit)
                    .await
            }

            async fn count_open_tasks(
                &self,
            ) -> Result<Vec<(String, i64)>, $crate::store::StoreError> {
                shared::count_open_tasks(&self.$reader).await
            }

            async fn get_document(
                &self,
                collection: &str,
                id: &str,
            ) -> Result<Option<String>, $crate::store::StoreError> {
                Ok(shared::get_document(&self.$reader, collection, id).await?)
            }

            async fn list_tasks(
                &self,
                status: Option<&str>,
                limit: u32,
            ) -> Result<Vec<$crate::store::TaskRecord>, $crate::store::StoreError> {
                shared::list_tasks(&self.$reader, status, limit).await
            }

            async fn get_task(
                &self,
                id: i64,
            ) -> Result<Option<$crate::store::TaskRecord>, $crate::store::StoreError> {
                shared::get_task(&self.$reader, id).await
            }

            async fn claim_tasks(
                &self,
                token: &str,
                now: $crate::store::Millis,
                lease_until: $crate::store::Millis,
                limit: u32,
            ) -> Result<Vec<$crate::store::TaskRecord>, $crate::store::StoreError> {
                shared::claim_tasks(&mut *self.$writer().await?, token, now, lease_until, limit).await
            }

            async fn renew_task(
                &self,
                id: i64,
                token: &str,
                lease_until: $crate::store::Millis,
            ) -> Result<bool, $crate::store::StoreError> {
                shared::renew_task(&mut *self.$writer().await?, id, token, lease_until).await
            }

            async fn finish_task(
                &self,
                id: i64,
                token: &str,
                end: &$crate::store::TaskEnd,
            ) -> Result<bool, $crate::store::StoreError> {
                shared::finish_task(&mut *self.$writer().await?, id, token, end).await
            }

            async fn retry_task(&self, id: i64) -> Result<bool, $crate::store::StoreError> {
                shared::retry_task(&mut *self.$writer().await?, id).await
            }

            async fn list_refunds(
                &self,
                out_trade_no: &str,
            ) -> Result<Vec<$crate::store::RefundRecord>, $crate::store::StoreError> {
                refund_sql::list_refunds(&self.$reader, out_trade_no).await
            }

            async fn prune_rejected(
                &self,
                received_before: $crate::store::Millis,
                limit: u32,
            ) -> Result<u64, $crate::store::StoreError> {
                retention_sql::prune_rejected(&mut *self.$writer().await?, received_before, limit).await
            }

            async fn count_rejected(&self) -> Result<i64, $crate::store::StoreError> {
                retention_sql::count_rejected(&self.$reader).await
            }

            $($own)*
        }
    };
}

pub(crate) use impl_store;

/// `impl Tx for $tx` (a struct with a field `tx: sqlx::Transaction<'static, _>`): every
/// method whose statements are shared, plus the backend's own methods given in braces
/// (`doc_get_for_update`, `doc_inc`). PostgreSQL's; SQLite's is `sqlite_writer::SqliteTx`.
macro_rules! impl_tx {
    ($tx:ty, { $($own:tt)* }) => {
        #[async_trait::async_trait]
        impl $crate::store::Tx for $tx {
            async fn savepoint(&mut self, name: &str) -> Result<(), $crate::store::StoreError> {
                shared::savepoint(&mut self.tx, name).await
            }

            async fn release(&mut self, name: &str) -> Result<(), $crate::store::StoreError> {
                shared::release(&mut self.tx, name).await
            }

            async fn rollback_to(&mut self, name: &str) -> Result<(), $crate::store::StoreError> {
                shared::rollback_to(&mut self.tx, name).await
            }

            async fn commit(self: Box<Self>) -> Result<(), $crate::store::StoreError> {
                self.tx.commit().await?;
                Ok(())
            }

            async fn lock_order(
                &mut self,
                out_trade_no: &str,
            ) -> Result<Option<$crate::store::Order>, $crate::store::StoreError> {
                shared::lock_order(&mut *self.tx, out_trade_no).await
            }

            async fn mark_paid(
                &mut self,
                p: &$crate::store::MarkPaid<'_>,
            ) -> Result<bool, $crate::store::StoreError> {
                shared::mark_paid(&mut *self.tx, p).await
            }

            async fn lock_orders(
                &mut self,
                out_trade_nos: &[&str],
            ) -> Result<Vec<$crate::store::Order>, $crate::store::StoreError> {
                shared::lock_orders(&mut *self.tx, out_trade_nos).await
            }

            async fn settle_paid(
                &mut self,
                paid: &[$crate::store::PaidOrder],
            ) -> Result<u64, $crate::store::StoreError> {
                shared::settle_paid(&mut *self.tx, paid).await
            }

            async fn finish_notifications(
                &mut self,
                rows: &[$crate::store::NotificationVerdict<'_>],
            ) -> Result<(), $crate::store::StoreError> {
                shared::finish_notifications(&mut *self.tx, rows).await
            }

            async fn set_handler_result(
                &mut self,
                out_trade_no: &str,
                handler_status: &str,
                result: &serde_json::Value,
                handler_version: Option<&str>,
            ) -> Result<(), $crate::store::StoreError> {
                shared::set_handler_result(&mut *self.tx, out_trade_no, handler_status, result, handler_version)
                    .await
            }

            async fn finish_notification(
                &mut self,
                id: i64,
                verdict: $crate::store::Verdict,
                reason: Option<&str>,
                out_trade_no: Option<&str>,
                account: Option<&str>,
            ) -> Result<(), $crate::store::StoreError> {
                shared::finish_notification(&mut *self.tx, id, verdict, reason, out_trade_no, account).await
            }

            async fn doc_get(
                &mut self,
                collection: &str,
                id: &str,
            ) -> Result<Option<String>, $crate::store::DocError> {
                Ok(shared::get_document(&mut *self.tx, collection, id).await?)
            }

            async fn doc_insert(
                &mut self,
                collection: &str,
                id: &str,
                data: &str,
            ) -> Result<(), $crate::store::DocError> {
                shared::doc_insert(&mut *self.tx, collection, id, data).await
            }

            async fn doc_put(
                &mut self,
                collection: &str,
                id: &str,
                data: &str,
            ) -> Result<(), $crate::store::DocError> {
                shared::doc_put(&mut *self.tx, collection, id, data).await
            }

            async fn doc_delete(
                &mut self,
                collection: &str,
                id: &str,
            ) -> Result<bool, $crate::store::DocError> {
                shared::doc_delete(&mut *self.tx, collection, id).await
            }

            async fn doc_query(
                &mut self,
                collection: &str,
                filters: &[(String, serde_json::Value)],
                limit: u32,
            ) -> Result<Vec<(String, String)>, $crate::store::DocError> {
                shared::doc_query(&mut *self.tx, collection, filters, limit).await
            }

            async fn enqueue_task(
                &mut self,
                t: &$crate::store::NewTask,
            ) -> Result<i64, $crate::store::StoreError> {
                shared::enqueue_task(&mut *self.tx, t).await
            }

            async fn get_refund(
                &mut self,
                out_trade_no: &str,
                out_refund_no: &str,
            ) -> Result<Option<$crate::store::RefundRecord>, $crate::store::StoreError> {
                refund_sql::get_refund(&mut *self.tx, out_trade_no, out_refund_no).await
            }

            async fn apply_refund(
                &mut self,
                r: &$crate::store::NewRefund<'_>,
            ) -> Result<bool, $crate::store::StoreError> {
                if !refund_sql::insert_refund(&mut *self.tx, r).await? {
                    return Ok(false);
                }
                if !refund_sql::add_to_order(&mut *self.tx, r).await? {
                    // The caller holds the order's lock; if it still moved, refuse.
                    return Err($crate::store::StoreError::Invalid(format!(
                        "order {} changed while refund {} was applied to it",
                        r.out_trade_no, r.out_refund_no
                    )));
                }
                Ok(true)
            }

            async fn set_refund_handler_result(
                &mut self,
                out_trade_no: &str,
                out_refund_no: &str,
                handler_status: &str,
                result: &serde_json::Value,
                handler_version: Option<&str>,
            ) -> Result<(), $crate::store::StoreError> {
                refund_sql::set_refund_handler_result(
                    &mut *self.tx,
                    out_trade_no,
                    out_refund_no,
                    handler_status,
                    result,
                    handler_version,
                )
                .await
            }

            $($own)*
        }
    };
}

pub(crate) use impl_tx;

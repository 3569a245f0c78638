//! Orders in SQL: their columns and row mapping, the statements of the payment
//! transaction that touch them (lock, mark paid, settle a batch), and [`OrderStore`]
//! for every backend.

use std::collections::HashMap;

use async_trait::async_trait;

use super::claims;
use super::refunds::{self, RefundRecord};
use super::rows::{order_row, ORDER_COLUMNS};
use super::statement::{required, storable, storable_opt, Dialect, On, Sql, Statement};
use super::traits::OrderStore;
use super::types::{MarkPaid, NewOrder, Order, OrderFilter, PaidOrder};
use super::StoreError;
use crate::time::{now_ms, Millis};

/// Inserts an order, returning it.
pub(crate) fn insert_order(o: &NewOrder) -> Statement<'_> {
    Statement::new(format!(
        "INSERT INTO orders (out_trade_no, type, provider, account, total_fee, user_id, custom, \
         created_at, updated_at, sub_mchid) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9) \
         RETURNING {ORDER_COLUMNS}"
    ))
    .bind(&o.out_trade_no)
    .bind(&o.order_type)
    .bind(&o.provider)
    .bind(&o.account)
    .bind(o.total_fee)
    .bind(&o.user_id)
    .bind(o.custom.to_string())
    .bind(now_ms())
    .bind(storable_opt(o.sub_mchid.as_deref()))
}

/// One order, with the row lock `lock` (`""`, or the dialect's `for_update`); `None`
/// for a number with NUL in it, which no order has (and PostgreSQL cannot compare).
pub(crate) fn select_order<'a>(out_trade_no: &'a str, lock: &str) -> Option<Statement<'a>> {
    (!out_trade_no.contains('\0')).then(|| {
        Statement::new(format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE out_trade_no = $1{lock}"
        ))
        .bind(out_trade_no)
    })
}

/// Most order numbers one statement of `get_orders` binds: far under SQLite's 32,766
/// parameters and PostgreSQL's 65,535, and few statements for thousands of watchers.
pub(crate) const ORDERS_PER_READ: usize = 512;

/// `get_orders`' statements: numbers with NUL left out (no order has one, and
/// PostgreSQL cannot even compare them), in chunks of at most [`ORDERS_PER_READ`], each
/// padded to a power of two by repeating its last number. The padding keeps the number
/// of statement texts at ten whatever the count, so a changing set of watched orders
/// does not fill the prepared-statement caches with one text per count (`IN` returns a
/// repeated number's row once).
pub(crate) fn select_orders(nos: &[String]) -> Vec<Statement<'_>> {
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
            let list: Vec<String> = (1..=padded.len()).map(|i| format!("${i}")).collect();
            let mut st = Statement::new(format!(
                "SELECT {ORDER_COLUMNS} FROM orders WHERE out_trade_no IN ({})",
                list.join(", ")
            ));
            st.params = padded.into_iter().map(Into::into).collect();
            st
        })
        .collect()
}

/// What `order_versions` joins for each order after its number: every column a change
/// of the order sets, the long ones by length. (`||` turns the numbers into text on
/// both dialects.)
const ORDER_VERSION: &str =
    "updated_at || ' ' || status || ' ' || refund_fee || ' ' || handler_status || ' ' || \
     COALESCE(length(handler_result), -1) || ' ' || COALESCE(length(handler_version), -1) || ' ' || \
     COALESCE(length(original_data), -1)";

/// One text for the orders numbered in `nos`: `{no} {version}` per order, joined by `,`
/// (order numbers have neither; `string_agg` is SQLite's too since 3.44). `None` when
/// no number can name an order.
fn order_versions(d: &Dialect, nos: &[String]) -> Option<Statement<'static>> {
    // No order number holds NUL (and PostgreSQL's JSON cannot carry it).
    let nos: Vec<&str> = nos
        .iter()
        .map(String::as_str)
        .filter(|n| !n.contains('\0'))
        .collect();
    if nos.is_empty() {
        return None;
    }
    let list = serde_json::Value::from(nos).to_string();
    Some(
        Statement::new(format!(
            "SELECT string_agg(out_trade_no || ' ' || {ORDER_VERSION}, ',') AS versions \
             FROM orders WHERE out_trade_no IN ({})",
            d.text_list
        ))
        .bind(list),
    )
}

/// Orders, newest first: by `created_at`, then `out_trade_no`, so the cursor (the
/// previous page's last order) is a total order and pages never overlap.
fn list_orders(f: &OrderFilter) -> Statement<'_> {
    Statement::new(format!(
        "SELECT {ORDER_COLUMNS} FROM orders \
         WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR type = $2) \
           AND ($3 IS NULL OR user_id = $3) \
           AND ($4 IS NULL OR created_at < $4 OR (created_at = $4 AND out_trade_no < $5)) \
         ORDER BY created_at DESC, out_trade_no DESC LIMIT $6"
    ))
    .bind(f.status)
    .bind(storable_opt(f.order_type.as_deref()))
    .bind(storable_opt(f.user_id.as_deref()))
    .bind(f.before.as_ref().map(|c| c.created_at))
    .bind(f.before.as_ref().map(|c| storable(&c.out_trade_no)))
    .bind(i64::from(f.limit.clamp(1, 500)))
}

/// One statement, so one transaction: picks up to `limit` unpaid orders created before
/// `created_before` (PostgreSQL: skipping rows locked by a payment in progress or by
/// another process's expiry run) and closes those still unpaid. The outer `status = 0`
/// is checked again on the row as it is when updated, so an order paid in between stays
/// paid.
fn close_expired(d: &Dialect, created_before: Millis, limit: u32) -> Statement<'static> {
    Statement::new(format!(
        "UPDATE orders SET status = -1, updated_at = $2 \
         WHERE status = 0 AND out_trade_no IN (SELECT out_trade_no FROM orders \
                      WHERE status = 0 AND created_at < $1 \
                      ORDER BY created_at LIMIT $3{}) \
         RETURNING out_trade_no",
        d.skip_locked
    ))
    .bind(created_before)
    .bind(now_ms())
    .bind(i64::from(limit.max(1)))
}

/// `status 0 → 1` for one order, only if still unpaid.
pub(crate) fn mark_paid<'a>(p: &MarkPaid<'a>) -> Statement<'a> {
    Statement::new(
        "UPDATE orders SET status = 1, transaction_id = $2, pay_date = $3, notify_date = $4, \
         paid_notification_id = $5, original_data = $6, updated_at = $4 \
         WHERE out_trade_no = $1 AND status = 0",
    )
    .bind(p.out_trade_no)
    .bind(storable(p.transaction_id))
    .bind(p.pay_date)
    .bind(now_ms())
    .bind(p.notification_id)
    .bind(p.original_data.to_string())
}

/// The handler's result, and which build produced it, on an order.
pub(crate) fn set_handler_result<'a>(
    out_trade_no: &'a str,
    handler_status: &'a str,
    result: &serde_json::Value,
    handler_version: Option<&'a str>,
) -> Statement<'a> {
    Statement::new(
        "UPDATE orders SET handler_status = $2, handler_result = $3, handler_version = $4, \
         updated_at = $5 WHERE out_trade_no = $1",
    )
    .bind(out_trade_no)
    .bind(handler_status)
    .bind(result.to_string())
    .bind(storable_opt(handler_version))
    .bind(now_ms())
}

/// A batch's orders in one statement, `IN (…)` in key order with the row lock `lock`,
/// so concurrent batches queue on rows instead of deadlocking. `None` when no number
/// can name an order.
pub(crate) fn lock_orders<'a>(nos: &[&'a str], lock: &str) -> Option<Statement<'a>> {
    // No order number holds NUL (and PostgreSQL cannot even compare it).
    let nos: Vec<&str> = nos.iter().copied().filter(|n| !n.contains('\0')).collect();
    if nos.is_empty() {
        return None;
    }
    let mut st = Statement::build();
    st.push(&format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE out_trade_no IN ("
    ));
    for (i, no) in nos.into_iter().enumerate() {
        if i > 0 {
            st.push(", ");
        }
        st.push_param(no);
    }
    st.push(") ORDER BY out_trade_no").push(lock);
    Some(st)
}

/// Appends to `st` one `UPDATE … FROM (VALUES …)` marking every order a batch paid, each
/// only if still unpaid. VALUES columns are `column1…` on both dialects, and each bind
/// carries its type, so the same text serves SQLite and PostgreSQL.
pub(crate) fn push_settle_paid<'a>(st: &mut Statement<'a>, paid: &'a [PaidOrder]) {
    let now = now_ms();
    st.push(
        "UPDATE orders SET status = 1, transaction_id = v.column2, pay_date = v.column3, \
         paid_notification_id = v.column4, original_data = v.column5, \
         handler_status = 'succeeded', handler_result = v.column6, handler_version = v.column7, \
         notify_date = ",
    )
    .push_param(now)
    .push(", updated_at = ")
    .push_param(now)
    .push(" FROM (")
    .push_values(paid, |p| {
        vec![
            p.out_trade_no.as_str().into(),
            storable(&p.transaction_id).into(),
            p.pay_date.into(),
            p.notification_id.into(),
            p.original_data.as_str().into(),
            p.handler_result.as_str().into(),
            storable(&p.handler_version).into(),
        ]
    })
    .push(") AS v WHERE orders.out_trade_no = v.column1 AND orders.status = 0");
}

/// Claims due orders by the lease in `column` (see `claims`); `times` are the created
/// before, now and lease-until times.
async fn claim<S: Sql>(
    store: &S,
    column: &str,
    [created_before, now, until]: [Millis; 3],
    limit: u32,
) -> Result<Vec<Order>, StoreError> {
    let st = claims::claim_orders(store.dialect(), column, created_before, now, until, limit);
    claims::by_creation(store.fetch(On::Write, &st, order_row).await?)
}

/// The text of a one-row, one-column answer (`None` for no row or NULL).
fn first_text(rows: Vec<Option<String>>) -> Option<String> {
    rows.into_iter().next().flatten()
}

#[async_trait]
impl<S: Sql> OrderStore for S {
    async fn get_order(&self, out_trade_no: &str) -> Result<Option<Order>, StoreError> {
        let Some(st) = select_order(out_trade_no, "") else {
            return Ok(None);
        };
        Ok(self.fetch(On::Read, &st, order_row).await?.pop())
    }

    async fn get_orders(&self, out_trade_nos: &[String]) -> Result<Vec<Order>, StoreError> {
        let mut orders = Vec::with_capacity(out_trade_nos.len());
        for st in select_orders(out_trade_nos) {
            orders.extend(self.fetch(On::Read, &st, order_row).await?);
        }
        Ok(orders)
    }

    async fn order_versions(
        &self,
        out_trade_nos: &[String],
    ) -> Result<HashMap<String, String>, StoreError> {
        let Some(st) = order_versions(self.dialect(), out_trade_nos) else {
            return Ok(HashMap::new());
        };
        let joined = first_text(self.fetch(On::Read, &st, |r| r.text("versions")).await?);
        Ok(joined
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .filter_map(|entry| entry.split_once(' '))
            .map(|(no, version)| (no.to_owned(), version.to_owned()))
            .collect())
    }

    async fn list_orders(&self, filter: &OrderFilter) -> Result<Vec<Order>, StoreError> {
        self.fetch(On::Read, &list_orders(filter), order_row).await
    }

    async fn close_expired_orders(
        &self,
        created_before: Millis,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        let st = close_expired(self.dialect(), created_before, limit);
        self.fetch(On::Write, &st, |r| {
            required(r.text("out_trade_no")?, "out_trade_no")
        })
        .await
    }

    async fn claim_reconcile(
        &self,
        created_before: Millis,
        now: Millis,
        until: Millis,
        limit: u32,
    ) -> Result<Vec<Order>, StoreError> {
        claim(self, "reconcile_after", [created_before, now, until], limit).await
    }

    async fn claim_expired(
        &self,
        created_before: Millis,
        now: Millis,
        until: Millis,
        limit: u32,
    ) -> Result<Vec<Order>, StoreError> {
        claim(self, "close_after", [created_before, now, until], limit).await
    }

    async fn close_order(&self, out_trade_no: &str) -> Result<bool, StoreError> {
        Ok(self
            .execute(On::Write, &claims::close_order(out_trade_no))
            .await?
            == 1)
    }

    async fn list_refunds(&self, out_trade_no: &str) -> Result<Vec<RefundRecord>, StoreError> {
        let st = refunds::list_refunds(out_trade_no);
        self.fetch(On::Read, &st, refunds::refund_row).await
    }
}

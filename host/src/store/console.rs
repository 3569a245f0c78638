//! What the web console (`/console`) needs from the database beyond the API's reads: its
//! sign-in sessions, and listings that page both ways by keyset.
//!
//! The API's listings page one way (`before` the last row seen). The console also goes
//! back ("newer"), and its big tables (orders, notifications, tasks) must stay fast at
//! any depth, so each page here is one range scan of an index that ends with the paging
//! key (migration 0005): the cursor is spelt `k <= c AND (k < c OR tie < t)`, which both
//! SQLite and PostgreSQL turn into an index range, never an OFFSET or a scan from the top.

use async_trait::async_trait;

use super::rows::{
    notification_row, order_row, task_row, NOTIFICATION_COLUMNS, ORDER_COLUMNS, TASK_COLUMNS,
};
use super::statement::{required, storable, Columns, On, Sql, Statement};
use super::traits::ConsoleStore;
use super::types::{
    ConsoleSession, Keyset, NotificationFilter, NotificationRecord, Order, OrderCursor,
    OrderFilter, TaskFilter, TaskRecord,
};
use super::StoreError;
use crate::time::Millis;

/// A row of `console_sessions`.
fn session_row(r: &dyn Columns) -> Result<ConsoleSession, StoreError> {
    Ok(ConsoleSession {
        id_hash: required(r.text("id_hash")?, "id_hash")?,
        credential: required(r.text("credential")?, "credential")?,
        csrf_token: required(r.text("csrf_token")?, "csrf_token")?,
        created_at: required(r.int8("created_at")?, "created_at")?,
        expires_at: required(r.int8("expires_at")?, "expires_at")?,
    })
}

/// Where a newest-first page starts: the cursor, and whether the rows come newest first
/// (else the page goes "newer", and its rows are read oldest first and reversed).
fn direction<C>(page: &Keyset<C>) -> (Option<&C>, bool) {
    match page {
        Keyset::Newest => (None, true),
        Keyset::Older(c) => (Some(c), true),
        Keyset::Newer(c) => (Some(c), false),
    }
}

/// A page of orders: `created_at` then `out_trade_no` as the key.
fn page_orders<'a>(f: &'a OrderFilter, page: &'a Keyset<OrderCursor>) -> (Statement<'a>, bool) {
    let mut st = Statement::build();
    st.push(&format!("SELECT {ORDER_COLUMNS} FROM orders WHERE TRUE"));
    if let Some(s) = f.status {
        st.push(" AND status = ").push_param(s);
    }
    if let Some(t) = &f.order_type {
        st.push(" AND type = ").push_param(storable(t));
    }
    if let Some(u) = &f.user_id {
        st.push(" AND user_id = ").push_param(storable(u));
    }
    let (cursor, older) = direction(page);
    if let Some(c) = cursor {
        let (le, lt) = if older { ("<=", "<") } else { (">=", ">") };
        st.push(&format!(" AND created_at {le} "))
            .push_param(c.created_at)
            .push(&format!(" AND (created_at {lt} "))
            .push_param(c.created_at)
            .push(&format!(" OR out_trade_no {lt} "))
            .push_param(storable(&c.out_trade_no))
            .push(")");
    }
    let dir = if older { "DESC" } else { "ASC" };
    st.push(&format!(
        " ORDER BY created_at {dir}, out_trade_no {dir} LIMIT "
    ))
    .push_param(i64::from(f.limit.clamp(1, 500)));
    (st, older)
}

/// A page of notifications, by id.
fn page_notifications<'a>(f: &'a NotificationFilter, page: &Keyset<i64>) -> (Statement<'a>, bool) {
    let mut st = Statement::build();
    st.push(&format!(
        "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE TRUE"
    ));
    if let Some(p) = &f.provider {
        st.push(" AND provider = ").push_param(storable(p));
    }
    if let Some(o) = &f.out_trade_no {
        st.push(" AND out_trade_no = ").push_param(storable(o));
    }
    if let Some(v) = f.verdict {
        st.push(" AND verdict = ").push_param(v.as_str());
    }
    if let Some(s) = f.since {
        st.push(" AND received_at >= ").push_param(s);
    }
    if let Some(u) = f.until {
        st.push(" AND received_at < ").push_param(u);
    }
    let older = push_id_page(&mut st, page);
    st.push_param(i64::from(f.limit.clamp(1, 500)));
    (st, older)
}

/// A page of tasks, by id.
fn page_tasks<'a>(f: &'a TaskFilter, page: &Keyset<i64>) -> (Statement<'a>, bool) {
    let mut st = Statement::build();
    st.push(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE TRUE"));
    if let Some(s) = &f.status {
        st.push(" AND status = ").push_param(storable(s));
    }
    if let Some(o) = &f.out_trade_no {
        st.push(" AND out_trade_no = ").push_param(storable(o));
    }
    let older = push_id_page(&mut st, page);
    st.push_param(i64::from(f.limit.clamp(1, 500)));
    (st, older)
}

/// Appends the id cursor, `ORDER BY id …` and `LIMIT ` (the caller adds the limit) to a
/// listing keyed by `id`; true if the rows come newest first.
pub(super) fn push_id_page(st: &mut Statement<'_>, page: &Keyset<i64>) -> bool {
    let (cursor, older) = direction(page);
    if let Some(id) = cursor {
        st.push(if older { " AND id < " } else { " AND id > " })
            .push_param(*id);
    }
    st.push(if older {
        " ORDER BY id DESC LIMIT "
    } else {
        " ORDER BY id ASC LIMIT "
    });
    older
}

/// A page read oldest first, put newest first.
pub(super) fn newest_first<T>(mut rows: Vec<T>, older: bool) -> Vec<T> {
    if !older {
        rows.reverse();
    }
    rows
}

#[async_trait]
impl<S: Sql> ConsoleStore for S {
    async fn create_console_session(&self, s: &ConsoleSession) -> Result<(), StoreError> {
        let st = Statement::new(
            "INSERT INTO console_sessions (id_hash, credential, csrf_token, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&s.id_hash)
        .bind(&s.credential)
        .bind(&s.csrf_token)
        .bind(s.created_at)
        .bind(s.expires_at);
        self.execute(On::Write, &st).await?;
        Ok(())
    }

    async fn console_session(
        &self,
        id_hash: &str,
        now: Millis,
    ) -> Result<Option<ConsoleSession>, StoreError> {
        let st = Statement::new(
            "SELECT id_hash, credential, csrf_token, created_at, expires_at FROM console_sessions \
             WHERE id_hash = $1 AND expires_at > $2",
        )
        .bind(id_hash)
        .bind(now);
        Ok(self.fetch(On::Read, &st, session_row).await?.pop())
    }

    async fn delete_console_session(&self, id_hash: &str) -> Result<bool, StoreError> {
        let st = Statement::new("DELETE FROM console_sessions WHERE id_hash = $1").bind(id_hash);
        Ok(self.execute(On::Write, &st).await? == 1)
    }

    async fn delete_expired_console_sessions(&self, now: Millis) -> Result<u64, StoreError> {
        let st = Statement::new("DELETE FROM console_sessions WHERE expires_at <= $1").bind(now);
        self.execute(On::Write, &st).await
    }

    async fn page_orders(
        &self,
        filter: &OrderFilter,
        page: &Keyset<OrderCursor>,
    ) -> Result<Vec<Order>, StoreError> {
        let (st, older) = page_orders(filter, page);
        Ok(newest_first(
            self.fetch(On::Read, &st, order_row).await?,
            older,
        ))
    }

    async fn page_notifications(
        &self,
        filter: &NotificationFilter,
        page: &Keyset<i64>,
    ) -> Result<Vec<NotificationRecord>, StoreError> {
        let (st, older) = page_notifications(filter, page);
        Ok(newest_first(
            self.fetch(On::Read, &st, notification_row).await?,
            older,
        ))
    }

    async fn page_tasks(
        &self,
        filter: &TaskFilter,
        page: &Keyset<i64>,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        let (st, older) = page_tasks(filter, page);
        Ok(newest_first(
            self.fetch(On::Read, &st, task_row).await?,
            older,
        ))
    }
}

//! What the web console (`/console`) needs from the database beyond the API's reads: its
//! sign-in sessions, and listings that page both ways by keyset.
//!
//! The API's listings page one way (`before` the last row seen). The console also goes
//! back ("newer"), and its big tables (orders, notifications, tasks) must stay fast at
//! any depth, so each page here is one range scan of an index that ends with the paging
//! key (migration 0005): the cursor is spelt `k <= c AND (k < c OR tie < t)`, which both
//! SQLite and PostgreSQL turn into an index range, never an OFFSET or a scan from the top.

use async_trait::async_trait;

use super::{Millis, NotificationFilter, NotificationRecord, Order, OrderCursor, OrderFilter};
use super::{StoreError, TaskRecord};

/// A console session as stored: the SHA-256 (hex) of the random id in the cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    /// SHA-256 of the session id, lower-case hex.
    pub id_hash: String,
    /// What the session is bound to: an HMAC keyed with the session id over the
    /// credential it was made with (see `http/console/session.rs`), hex.
    pub credential: String,
    /// The token every console form posts back.
    pub csrf_token: String,
    /// When it was created.
    pub created_at: Millis,
    /// When it stops being accepted.
    pub expires_at: Millis,
}

/// Where a page of a newest-first listing starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keyset<C> {
    /// The newest rows.
    Newest,
    /// The rows just older than this key (the "next" page).
    Older(C),
    /// The rows just newer than this key (the "previous" page).
    Newer(C),
}

/// Filters for a page of tasks.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    /// Only this status (`pending`, `running`, `done`, `dead`).
    pub status: Option<String>,
    /// Only the tasks of this order.
    pub out_trade_no: Option<String>,
    /// At most this many (capped at 500).
    pub limit: u32,
}

/// The console's own queries (implemented by every [`super::Store`] backend).
#[async_trait]
pub trait ConsoleStore: Send + Sync {
    /// Stores a new session.
    async fn create_console_session(&self, session: &ConsoleSession) -> Result<(), StoreError>;
    /// The session with this id hash, if it exists and has not expired at `now`.
    async fn console_session(
        &self,
        id_hash: &str,
        now: Millis,
    ) -> Result<Option<ConsoleSession>, StoreError>;
    /// Deletes a session (sign-out); true if it existed.
    async fn delete_console_session(&self, id_hash: &str) -> Result<bool, StoreError>;
    /// Deletes sessions expired at `now`; how many.
    async fn delete_expired_console_sessions(&self, now: Millis) -> Result<u64, StoreError>;
    /// A page of orders matching `filter` (its `before` is ignored: `page` says where),
    /// newest first.
    async fn page_orders(
        &self,
        filter: &OrderFilter,
        page: &Keyset<OrderCursor>,
    ) -> Result<Vec<Order>, StoreError>;
    /// A page of notifications matching `filter` (its `before_id` is ignored: `page` by
    /// id says where), newest first.
    async fn page_notifications(
        &self,
        filter: &NotificationFilter,
        page: &Keyset<i64>,
    ) -> Result<Vec<NotificationRecord>, StoreError>;
    /// A page of tasks matching `filter`, newest first.
    async fn page_tasks(
        &self,
        filter: &TaskFilter,
        page: &Keyset<i64>,
    ) -> Result<Vec<TaskRecord>, StoreError>;
}

/// `impl ConsoleStore for $store` over database `$db`: reads from the `$reader` pool
/// field, writes to the connection that the async method `$writer` hands out. Expanded in each backend module.
macro_rules! console_store {
    ($store:ty, $db:ty, reader: $reader:ident, writer: $writer:ident) => {
        #[async_trait::async_trait]
        impl $crate::store::console::ConsoleStore for $store {
            async fn create_console_session(
                &self,
                s: &$crate::store::console::ConsoleSession,
            ) -> Result<(), $crate::store::StoreError> {
                sqlx::query(
                    "INSERT INTO console_sessions (id_hash, credential, csrf_token, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&s.id_hash)
                .bind(&s.credential)
                .bind(&s.csrf_token)
                .bind(s.created_at)
                .bind(s.expires_at)
                .execute(&mut *self.$writer().await?)
                .await?;
                Ok(())
            }

            async fn console_session(
                &self,
                id_hash: &str,
                now: $crate::store::Millis,
            ) -> Result<Option<$crate::store::console::ConsoleSession>, $crate::store::StoreError>
            {
                use sqlx::Row;
                let row = sqlx::query(
                    "SELECT id_hash, credential, csrf_token, created_at, expires_at FROM console_sessions \
                     WHERE id_hash = $1 AND expires_at > $2",
                )
                .bind(id_hash)
                .bind(now)
                .fetch_optional(&self.$reader)
                .await?;
                row.map(
                    |r| -> Result<$crate::store::console::ConsoleSession, sqlx::Error> {
                        Ok($crate::store::console::ConsoleSession {
                            id_hash: r.try_get("id_hash")?,
                            credential: r.try_get("credential")?,
                            csrf_token: r.try_get("csrf_token")?,
                            created_at: r.try_get("created_at")?,
                            expires_at: r.try_get("expires_at")?,
                        })
                    },
                )
                .transpose()
                .map_err($crate::store::StoreError::from)
            }

            async fn delete_console_session(
                &self,
                id_hash: &str,
            ) -> Result<bool, $crate::store::StoreError> {
                let done = sqlx::query("DELETE FROM console_sessions WHERE id_hash = $1")
                    .bind(id_hash)
                    .execute(&mut *self.$writer().await?)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn delete_expired_console_sessions(
                &self,
                now: $crate::store::Millis,
            ) -> Result<u64, $crate::store::StoreError> {
                let done = sqlx::query("DELETE FROM console_sessions WHERE expires_at <= $1")
                    .bind(now)
                    .execute(&mut *self.$writer().await?)
                    .await?;
                Ok(done.rows_affected())
            }

            async fn page_orders(
                &self,
                f: &$crate::store::OrderFilter,
                page: &$crate::store::console::Keyset<$crate::store::OrderCursor>,
            ) -> Result<Vec<$crate::store::Order>, $crate::store::StoreError> {
                use $crate::store::common::{storable, StoreRow, ORDER_COLUMNS};
                use $crate::store::console::Keyset;
                let mut q = sqlx::QueryBuilder::<$db>::new(format!(
                    "SELECT {ORDER_COLUMNS} FROM orders WHERE TRUE"
                ));
                if let Some(s) = f.status {
                    q.push(" AND status = ").push_bind(s);
                }
                if let Some(t) = &f.order_type {
                    q.push(" AND type = ").push_bind(storable(t).into_owned());
                }
                if let Some(u) = &f.user_id {
                    q.push(" AND user_id = ")
                        .push_bind(storable(u).into_owned());
                }
                let (cursor, older) = match page {
                    Keyset::Newest => (None, true),
                    Keyset::Older(c) => (Some(c), true),
                    Keyset::Newer(c) => (Some(c), false),
                };
                if let Some(c) = cursor {
                    let (le, lt) = if older { ("<=", "<") } else { (">=", ">") };
                    q.push(format!(" AND created_at {le} "))
                        .push_bind(c.created_at)
                        .push(format!(" AND (created_at {lt} "))
                        .push_bind(c.created_at)
                        .push(format!(" OR out_trade_no {lt} "))
                        .push_bind(storable(&c.out_trade_no).into_owned())
                        .push(")");
                }
                let dir = if older { "DESC" } else { "ASC" };
                q.push(format!(
                    " ORDER BY created_at {dir}, out_trade_no {dir} LIMIT "
                ))
                .push_bind(i64::from(f.limit.clamp(1, 500)));
                let rows = q.build().fetch_all(&self.$reader).await?;
                let mut list = rows
                    .iter()
                    .map(StoreRow::order)
                    .collect::<Result<Vec<_>, _>>()?;
                if !older {
                    list.reverse();
                }
                Ok(list)
            }

            async fn page_notifications(
                &self,
                f: &$crate::store::NotificationFilter,
                page: &$crate::store::console::Keyset<i64>,
            ) -> Result<Vec<$crate::store::NotificationRecord>, $crate::store::StoreError> {
                use $crate::store::common::{storable, StoreRow, NOTIFICATION_COLUMNS};
                let mut q = sqlx::QueryBuilder::<$db>::new(format!(
                    "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE TRUE"
                ));
                if let Some(p) = &f.provider {
                    q.push(" AND provider = ")
                        .push_bind(storable(p).into_owned());
                }
                if let Some(o) = &f.out_trade_no {
                    q.push(" AND out_trade_no = ")
                        .push_bind(storable(o).into_owned());
                }
                if let Some(v) = f.verdict {
                    q.push(" AND verdict = ").push_bind(v.as_str());
                }
                if let Some(s) = f.since {
                    q.push(" AND received_at >= ").push_bind(s);
                }
                if let Some(u) = f.until {
                    q.push(" AND received_at < ").push_bind(u);
                }
                let older = $crate::store::console::push_id_page(&mut q, page);
                let rows = q
                    .push_bind(i64::from(f.limit.clamp(1, 500)))
                    .build()
                    .fetch_all(&self.$reader)
                    .await?;
                let mut list = rows
                    .iter()
                    .map(StoreRow::notification)
                    .collect::<Result<Vec<_>, _>>()?;
                if !older {
                    list.reverse();
                }
                Ok(list)
            }

            async fn page_tasks(
                &self,
                f: &$crate::store::console::TaskFilter,
                page: &$crate::store::console::Keyset<i64>,
            ) -> Result<Vec<$crate::store::TaskRecord>, $crate::store::StoreError> {
                use $crate::store::common::{storable, StoreRow, TASK_COLUMNS};
                let mut q = sqlx::QueryBuilder::<$db>::new(format!(
                    "SELECT {TASK_COLUMNS} FROM tasks WHERE TRUE"
                ));
                if let Some(s) = &f.status {
                    q.push(" AND status = ").push_bind(storable(s).into_owned());
                }
                if let Some(o) = &f.out_trade_no {
                    q.push(" AND out_trade_no = ")
                        .push_bind(storable(o).into_owned());
                }
                let older = $crate::store::console::push_id_page(&mut q, page);
                let rows = q
                    .push_bind(i64::from(f.limit.clamp(1, 500)))
                    .build()
                    .fetch_all(&self.$reader)
                    .await?;
                let mut list = rows
                    .iter()
                    .map(StoreRow::task)
                    .collect::<Result<Vec<_>, _>>()?;
                if !older {
                    list.reverse();
                }
                Ok(list)
            }
        }
    };
}

pub(crate) use console_store;

/// Appends the id cursor, `ORDER BY id …` and `LIMIT ` (the caller binds the limit) to a
/// listing keyed by `id`; true if the rows come newest first (else they are to be
/// reversed).
pub(crate) fn push_id_page<'a, DB>(q: &mut sqlx::QueryBuilder<'a, DB>, page: &Keyset<i64>) -> bool
where
    DB: sqlx::Database,
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let older = match page {
        Keyset::Newest => true,
        Keyset::Older(id) => {
            q.push(" AND id < ").push_bind(*id);
            true
        }
        Keyset::Newer(id) => {
            q.push(" AND id > ").push_bind(*id);
            false
        }
    };
    q.push(if older {
        " ORDER BY id DESC LIMIT "
    } else {
        " ORDER BY id ASC LIMIT "
    });
    older
}

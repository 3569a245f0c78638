//! What the rest of the host asks of the database, by concern.
//!
//! [`OrderStore`], [`NotificationStore`] and [`TaskStore`] are the same statements on
//! every backend and are implemented once (in `orders.rs`, `notifications.rs`,
//! `tasks.rs`) for any backend that can run a [`Statement`](super::statement::Statement).
//! [`Store`] adds what each backend does its own way: the writes whose answer waits for
//! a commit, beginning a payment transaction ([`Tx`]), readiness and size. The console's
//! reads are behind [`Store::console`], not part of `Store` itself: only the console uses
//! them. The plugin history is behind [`Store::plugin_history`] for the same reason: only
//! the plugin registry writes it, and only ops' views read it.

use async_trait::async_trait;

use super::audit::{AuditStore, CallWrites, Incremented};
use super::payments::{NewRefundRequest, PaymentStore, Reservation};
pub use super::platform_certs::PlatformCertStore;
use super::refunds::{NewRefund, RefundRecord};
use super::shadow::ShadowStore;
use super::types::{
    ConsoleSession, Keyset, MarkPaid, NewNotification, NewOrder, NewTask, NotificationFilter,
    NotificationRecord, NotificationVerdict, Order, OrderCursor, OrderFilter, PaidOrder,
    PluginEvent, PluginEventRecord, TaskEnd, TaskFilter, TaskRecord, Verdict,
};
use super::{DocError, StoreError};
use crate::time::Millis;

/// Orders outside a payment: reads for the API and the event streams, and the leases and
/// closes of the reconciliation and expiry jobs.
#[async_trait]
pub trait OrderStore: Send + Sync {
    /// The order, if it exists.
    async fn get_order(&self, out_trade_no: &str) -> Result<Option<Order>, StoreError>;
    /// The existing orders among `out_trade_nos` (distinct numbers), in no particular
    /// order: one read of many orders, a statement per 512 numbers, for the event streams'
    /// shared poller.
    async fn get_orders(&self, out_trade_nos: &[String]) -> Result<Vec<Order>, StoreError>;
    /// A version of each existing order among `out_trade_nos`, by number, in one
    /// statement whose answer is one text: changed whenever the order is (its
    /// `updated_at`, status, refunded amount, handler status, and the lengths of its
    /// handler result, handler version and paying notification). The event streams' poller
    /// compares these and reads in full only the orders whose version changed.
    async fn order_versions(
        &self,
        out_trade_nos: &[String],
    ) -> Result<std::collections::HashMap<String, String>, StoreError>;
    /// Orders matching `filter`, newest first.
    async fn list_orders(&self, filter: &OrderFilter) -> Result<Vec<Order>, StoreError>;
    /// Closes (status 0 → -1) up to `limit` unpaid orders created before
    /// `created_before`, and returns their numbers. One conditional statement: an order
    /// paid meanwhile is left alone, and several processes may run it at once (on
    /// PostgreSQL each skips the rows another is closing or paying).
    async fn close_expired_orders(
        &self,
        created_before: Millis,
        limit: u32,
    ) -> Result<Vec<String>, StoreError>;
    /// Claims up to `limit` unpaid orders created before `created_before` that are due
    /// for a provider query at `now` (never queried, or last claimed with a lease that
    /// ended), leasing them until `until`: across processes one order is claimed by one.
    async fn claim_reconcile(
        &self,
        created_before: Millis,
        now: Millis,
        until: Millis,
        limit: u32,
    ) -> Result<Vec<Order>, StoreError>;
    /// Like [`OrderStore::claim_reconcile`], for closing expired orders at the provider: an
    /// order whose close failed is retried when its lease ends, behind the others.
    async fn claim_expired(
        &self,
        created_before: Millis,
        now: Millis,
        until: Millis,
        limit: u32,
    ) -> Result<Vec<Order>, StoreError>;
    /// Closes one order (status 0 → -1) if it is still unpaid; true if this call did.
    async fn close_order(&self, out_trade_no: &str) -> Result<bool, StoreError>;
    /// The order's applied refunds, oldest first.
    async fn list_refunds(&self, out_trade_no: &str) -> Result<Vec<RefundRecord>, StoreError>;
}

/// Stored notifications outside a payment: verdicts of rejections, reads, the replay and
/// stuck-notification claims, and retention.
#[async_trait]
pub trait NotificationStore: Send + Sync {
    /// Records where a notification ended up when no transaction is open (rejections).
    /// A `rejected` notification that names no order (it never verified) has its body cut
    /// to the store's limit (`[retention] rejected_body_bytes`) in the same statement.
    async fn finish_notification(
        &self,
        id: i64,
        verdict: Verdict,
        reason: Option<&str>,
        out_trade_no: Option<&str>,
        account: Option<&str>,
    ) -> Result<(), StoreError>;
    /// One stored notification.
    async fn get_notification(&self, id: i64) -> Result<Option<NotificationRecord>, StoreError>;
    /// Notifications, newest first.
    async fn list_notifications(
        &self,
        filter: &NotificationFilter,
    ) -> Result<Vec<NotificationRecord>, StoreError>;
    /// Notifications whose handler failed and whose order is still unpaid, oldest first:
    /// received at or after `since`, for orders of `order_type`, at most `limit`.
    async fn failed_unpaid_notifications(
        &self,
        since: Option<Millis>,
        order_type: Option<&str>,
        limit: u32,
    ) -> Result<Vec<NotificationRecord>, StoreError>;
    /// Claims up to `limit` notifications still `received` that arrived before
    /// `received_before` and are not leased at `now` (never claimed, or their lease
    /// ended), oldest first, leasing them until `until`: across processes one is claimed
    /// by one (see `stuck.rs`).
    async fn claim_stuck(
        &self,
        received_before: Millis,
        now: Millis,
        until: Millis,
        limit: u32,
    ) -> Result<Vec<NotificationRecord>, StoreError>;
    /// Deletes up to `limit` of the oldest notifications that were rejected without ever
    /// verifying (no order number; see `store::retention`) and arrived before
    /// `received_before`; returns how many. One short statement: call it again while it
    /// returns `limit`. Several processes may run it at once.
    async fn prune_rejected(&self, received_before: Millis, limit: u32) -> Result<u64, StoreError>;
    /// How many notifications are stored `rejected` (verified or not).
    async fn count_rejected(&self) -> Result<i64, StoreError>;
}

/// The handlers' outbox (tasks) and, for the admin view, their documents.
#[async_trait]
pub trait TaskStore: Send + Sync {
    /// How many tasks are `pending`, `running` and `dead` (a cheap grouped count for the
    /// queue-depth gauge; `done` tasks are history and not counted).
    async fn count_open_tasks(&self) -> Result<Vec<(String, i64)>, StoreError>;
    /// Tasks, newest first, optionally only those with `status`.
    async fn list_tasks(
        &self,
        status: Option<&str>,
        limit: u32,
    ) -> Result<Vec<TaskRecord>, StoreError>;
    /// One task.
    async fn get_task(&self, id: i64) -> Result<Option<TaskRecord>, StoreError>;
    /// Claims up to `limit` due tasks (pending and due, or running with an expired lease)
    /// for the worker holding `token` until `lease_until`. Across processes a task is
    /// claimed by one worker at a time.
    async fn claim_tasks(
        &self,
        token: &str,
        now: Millis,
        lease_until: Millis,
        limit: u32,
    ) -> Result<Vec<TaskRecord>, StoreError>;
    /// Extends the lease of task `id`, claimed under `token`, to `lease_until`. False if
    /// the claim was lost (taken over by another worker after the lease ran out): the
    /// holder must then stop running it.
    async fn renew_task(
        &self,
        id: i64,
        token: &str,
        lease_until: Millis,
    ) -> Result<bool, StoreError>;
    /// Ends a claimed attempt: `Done`, retry at a time, or dead. Counts the attempt and
    /// keeps its error. False if the claim was lost (lease expired and taken over).
    async fn finish_task(&self, id: i64, token: &str, end: &TaskEnd) -> Result<bool, StoreError>;
    /// Puts a dead or pending task back in the queue to run now, with a fresh set of
    /// attempts (its error history is kept). False if no such task or it is running/done.
    async fn retry_task(&self, id: i64) -> Result<bool, StoreError>;
    /// A handler document (admin view), outside any transaction.
    async fn get_document(&self, collection: &str, id: &str) -> Result<Option<String>, StoreError>;
    /// [`Tx::doc_query`] outside any transaction, on a reader (a shadow run's reads).
    async fn query_documents(
        &self,
        collection: &str,
        filters: &[(String, serde_json::Value)],
        limit: u32,
    ) -> Result<Vec<(String, String)>, StoreError>;
}

/// The database: the shared reads and writes above, plus what each backend does its own
/// way, and how to begin a payment transaction.
#[async_trait]
pub trait Store: OrderStore + NotificationStore + TaskStore + Send + Sync + 'static {
    /// Inserts a new order (status unpaid). [`StoreError::Conflict`] if the number exists.
    async fn create_order(&self, order: &NewOrder) -> Result<Order, StoreError>;
    /// Durably stores a notification as received (verdict `received`) and returns its id.
    /// Committed before anything else is done with it.
    async fn insert_notification(&self, n: &NewNotification) -> Result<i64, StoreError>;
    /// Stores several notifications as received in one transaction (one commit); their
    /// ids in order. All or none are stored.
    async fn insert_notifications(
        &self,
        batch: &[&NewNotification],
    ) -> Result<Vec<i64>, StoreError>;
    /// Begins a transaction that holds the write lock (SQLite) for its whole life.
    async fn begin(&self) -> Result<Box<dyn Tx>, StoreError>;
    /// Whether the database can commit now; `Err` says why not. Proved by a write,
    /// bounded and cached (see [`super::ready`]).
    async fn ready(&self) -> Result<(), String>;
    /// The database's size in bytes: SQLite's file plus its write-ahead log, PostgreSQL's
    /// whole database (`pg_database_size`, every schema in it).
    async fn database_bytes(&self) -> Result<i64, StoreError>;
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;
    /// Called once when the host stops serving: leaves the database tidy (SQLite
    /// checkpoints and truncates its WAL). Nothing to do by default.
    async fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// The console's sign-in sessions and paged listings.
    fn console(&self) -> &dyn ConsoleStore;
    /// Every load, replacement, unload and refusal of a handler build.
    fn plugin_history(&self) -> &dyn PluginHistoryStore;
    /// The WeChat Pay v3 platform certificates hosts downloaded.
    fn platform_certs(&self) -> &dyn PlatformCertStore;
    /// Payments placed and refunds started at the providers.
    fn payments(&self) -> &dyn PaymentStore;
    /// The handler write audit: what handlers wrote, by order, and its pruning.
    fn audit(&self) -> &dyn AuditStore;
    /// Shadow runs' counts and differences.
    fn shadow(&self) -> &dyn ShadowStore;
}

/// One open transaction. Dropping it without [`Tx::commit`] rolls it back.
#[async_trait]
pub trait Tx: Send {
    /// `SAVEPOINT name`.
    async fn savepoint(&mut self, name: &str) -> Result<(), StoreError>;
    /// `RELEASE SAVEPOINT name`: keeps what was done since.
    async fn release(&mut self, name: &str) -> Result<(), StoreError>;
    /// `ROLLBACK TO SAVEPOINT name` (and releases it): undoes what was done since.
    async fn rollback_to(&mut self, name: &str) -> Result<(), StoreError>;
    /// Commits.
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;

    /// Reads the order and locks its row until the transaction ends (PostgreSQL
    /// `FOR UPDATE`; SQLite's transaction already holds the database write lock).
    async fn lock_order(&mut self, out_trade_no: &str) -> Result<Option<Order>, StoreError>;
    /// `status 0 → 1` only if still unpaid; true if this call made the change.
    async fn mark_paid(&mut self, paid: &MarkPaid<'_>) -> Result<bool, StoreError>;
    /// Reads several orders and locks their rows, in `out_trade_no` order, in one
    /// statement (a batch's orders; unknown numbers are simply absent).
    async fn lock_orders(&mut self, out_trade_nos: &[&str]) -> Result<Vec<Order>, StoreError>;
    /// Marks a batch's orders paid with their handlers' results, in one statement, each
    /// only if still unpaid; returns how many rows changed.
    async fn settle_paid(&mut self, paid: &[PaidOrder]) -> Result<u64, StoreError>;
    /// Records where a batch's notifications ended up, in one statement.
    async fn finish_notifications(
        &mut self,
        rows: &[NotificationVerdict<'_>],
    ) -> Result<(), StoreError>;
    /// [`Tx::settle_paid`], [`Tx::finish_notifications`], then [`Tx::record_writes`]:
    /// the end of a batch. A backend where a statement is a round trip to a server does
    /// them in one.
    async fn settle(
        &mut self,
        paid: &[PaidOrder],
        rows: &[NotificationVerdict<'_>],
        writes: &[CallWrites],
    ) -> Result<u64, StoreError>;
    /// Records handler calls' writes (the write audit) in this transaction: one
    /// statement per thousand rows.
    async fn record_writes(&mut self, writes: &[CallWrites]) -> Result<(), StoreError>;
    /// Records the handler's result, and which build produced it, on the order.
    async fn set_handler_result(
        &mut self,
        out_trade_no: &str,
        handler_status: &str,
        result: &serde_json::Value,
        handler_version: Option<&str>,
    ) -> Result<(), StoreError>;
    /// Records where a notification ended up, inside this transaction.
    async fn finish_notification(
        &mut self,
        id: i64,
        verdict: Verdict,
        reason: Option<&str>,
        out_trade_no: Option<&str>,
        account: Option<&str>,
    ) -> Result<(), StoreError>;

    /// A document's JSON text.
    async fn doc_get(&mut self, collection: &str, id: &str) -> Result<Option<String>, DocError>;
    /// A document's JSON text, locking it (PostgreSQL `FOR UPDATE`) for a read-modify-write.
    async fn doc_get_for_update(
        &mut self,
        collection: &str,
        id: &str,
    ) -> Result<Option<String>, DocError>;
    /// Inserts a new document; [`DocError::Conflict`] if the id exists.
    async fn doc_insert(&mut self, collection: &str, id: &str, data: &str) -> Result<(), DocError>;
    /// Creates or replaces a document.
    async fn doc_put(&mut self, collection: &str, id: &str, data: &str) -> Result<(), DocError>;
    /// Atomically adds `delta` to an integer field, creating document and field as needed.
    async fn doc_inc(
        &mut self,
        collection: &str,
        id: &str,
        field: &str,
        delta: i64,
    ) -> Result<i64, DocError>;
    /// Deletes a document; true if it existed.
    async fn doc_delete(&mut self, collection: &str, id: &str) -> Result<bool, DocError>;
    /// [`Tx::doc_put`], answering the document it replaced (`None`: it created it), read
    /// under the row lock so it is exactly what was overwritten.
    async fn doc_put_audited(
        &mut self,
        collection: &str,
        id: &str,
        data: &str,
    ) -> Result<Option<String>, DocError>;
    /// [`Tx::doc_inc`], also answering the document before and after.
    async fn doc_inc_audited(
        &mut self,
        collection: &str,
        id: &str,
        field: &str,
        delta: i64,
    ) -> Result<Incremented, DocError>;
    /// [`Tx::doc_delete`], answering the document it deleted (`None`: there was none).
    async fn doc_delete_audited(
        &mut self,
        collection: &str,
        id: &str,
    ) -> Result<Option<String>, DocError>;
    /// Documents whose top-level fields equal the given JSON values, ordered by id.
    async fn doc_query(
        &mut self,
        collection: &str,
        filters: &[(String, serde_json::Value)],
        limit: u32,
    ) -> Result<Vec<(String, String)>, DocError>;

    /// Inserts a task (the outbox): it exists only if this transaction commits.
    async fn enqueue_task(&mut self, task: &NewTask) -> Result<i64, StoreError>;

    /// The applied refund with this merchant refund number, if any.
    async fn get_refund(
        &mut self,
        out_trade_no: &str,
        out_refund_no: &str,
    ) -> Result<Option<RefundRecord>, StoreError>;
    /// Records the refund and adds it to the order (refunded total, status), unless a
    /// refund with its number exists: true if this call applied it. Call with the order
    /// locked ([`Tx::lock_order`]).
    async fn apply_refund(&mut self, refund: &NewRefund<'_>) -> Result<bool, StoreError>;
    /// Reserves a refund on an order before it is sent, under the order's row lock:
    /// refused when the order is not paid or the amount is more than remains once
    /// refunds applied and requests in flight are counted (see `store::payments`).
    /// Commit to keep it.
    async fn reserve_refund(&mut self, r: &NewRefundRequest<'_>)
        -> Result<Reservation, StoreError>;
    /// Records the refund handler's result, and which build produced it, on the refund.
    async fn set_refund_handler_result(
        &mut self,
        out_trade_no: &str,
        out_refund_no: &str,
        handler_status: &str,
        result: &serde_json::Value,
        handler_version: Option<&str>,
    ) -> Result<(), StoreError>;
}

/// The console's own queries (every backend's, reached through [`Store::console`]).
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

/// The plugin history: what every host did with every handler build, and when (every
/// backend's, reached through [`Store::plugin_history`]).
#[async_trait]
pub trait PluginHistoryStore: Send + Sync {
    /// Appends an event; its id. Long texts are cut (the reason at 2000 characters).
    async fn record_plugin_event(&self, event: &PluginEvent) -> Result<i64, StoreError>;
    /// A page of the history of `plugin_type` (of every type if `None`), newest first, at
    /// most `limit` rows (capped at 500).
    async fn page_plugin_history(
        &self,
        plugin_type: Option<&str>,
        page: &Keyset<i64>,
        limit: u32,
    ) -> Result<Vec<PluginEventRecord>, StoreError>;
    /// The history of `plugin_type` (of every type if `None`), newest first: the events
    /// with an id below `before_id` if given, at most `limit` (capped at 500).
    async fn plugin_history(
        &self,
        plugin_type: Option<&str>,
        before_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<PluginEventRecord>, StoreError> {
        let page = before_id.map_or(Keyset::Newest, Keyset::Older);
        self.page_plugin_history(plugin_type, &page, limit).await
    }
}

//! PostgreSQL's payment transaction: the [`TxConn`] seam on a kept connection (see
//! `kept.rs`), so [`Tx`](crate::store::Tx) is the shared one, plus what needs
//! PostgreSQL's own SQL: the end of a batch in one statement, the atomic increment
//! (`doc_inc`) and the merge lock (`doc_get_for_update`).

use async_trait::async_trait;
use sqlx::Executor;

use super::kept::Kept;
use super::{execute, fetch, POSTGRES};
use crate::store::audit::{self, CallWrites, Incremented};
use crate::store::statement::{required, savepoint, Dialect, RowMap, Statement};
use crate::store::tx::{select_doc, write_doc, TxConn};
use crate::store::types::{NotificationVerdict, PaidOrder};
use crate::store::{documents, notifications, orders, DocError, StoreError};
use crate::time::now_ms;

/// An open PostgreSQL transaction.
pub(super) struct PgTx {
    tx: Kept,
}

impl PgTx {
    /// The transaction `BEGIN` opened on `tx`.
    pub(super) fn new(tx: Kept) -> Self {
        PgTx { tx }
    }
}

/// How often `doc_get_for_update` retries when the document is deleted between its two
/// statements (each retry needs another transaction to delete it again).
const LOCK_ATTEMPTS: usize = 3;

#[async_trait]
impl TxConn for PgTx {
    fn dialect(&self) -> &'static Dialect {
        &POSTGRES
    }

    async fn fetch<T: Send + 'static>(
        &mut self,
        st: &Statement<'_>,
        map: RowMap<T>,
    ) -> Result<Vec<T>, StoreError> {
        fetch(&mut self.tx, st, map).await
    }

    async fn execute(&mut self, st: &Statement<'_>) -> Result<u64, StoreError> {
        execute(&mut self.tx, st).await
    }

    async fn savepoint_op(&mut self, verb: &str, name: &str) -> Result<(), StoreError> {
        (&mut *self.tx)
            .execute(savepoint(verb, name)?.as_str())
            .await?;
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }

    /// Both statements as one (two data-modifying CTEs): a round trip less per batch,
    /// on the serial path of every settle loop.
    async fn settle(
        &mut self,
        paid: &[PaidOrder],
        rows: &[NotificationVerdict<'_>],
        writes: &[CallWrites],
    ) -> Result<u64, StoreError> {
        let audit_rows = audit::rows(writes);
        if paid.is_empty() || rows.is_empty() || audit_rows.len() > 1 {
            // An empty `VALUES` list is not SQL; each of these skips its statement when
            // its list is empty (a batch with no payment still records its verdicts).
            let marked = crate::store::tx::settle_paid(self, paid).await?;
            crate::store::tx::finish_notifications(self, rows).await?;
            crate::store::tx::record_writes(self, writes).await?;
            return Ok(marked);
        }
        let mut st = Statement::build();
        st.push("WITH paid AS (");
        orders::push_settle_paid(&mut st, paid);
        st.push(" RETURNING 1), done AS (");
        notifications::push_finish_notifications(&mut st, rows);
        if let Some(audit_rows) = audit_rows.first() {
            st.push("), written AS (");
            audit::push_insert(&mut st, audit_rows);
        }
        st.push(") SELECT count(*) AS n FROM paid");
        let marked = TxConn::fetch(self, &st, |r| required(r.int8("n")?, "n")).await?;
        Ok(u64::try_from(marked.into_iter().next().unwrap_or_default()).unwrap_or_default())
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
            if write_doc(self, collection, id, "{}", documents::KEEP).await? == 1 {
                return Ok(None);
            }
            if let Some(text) = select_doc(self, collection, id, POSTGRES.for_update).await? {
                return Ok(Some(text));
            }
            // Deleted (and committed) between the two statements: make it exist again.
        }
        Err(DocError::Invalid(format!(
            "document {collection}/{id} is being deleted and re-created concurrently; try again"
        )))
    }

    /// One statement ([`DOC_INC`]).
    async fn doc_inc(
        &mut self,
        collection: &str,
        id: &str,
        field: &str,
        delta: i64,
    ) -> Result<i64, DocError> {
        let st = Statement::new(DOC_INC)
            .bind(collection)
            .bind(id)
            .bind(field)
            .bind(delta)
            .bind(now_ms());
        let value = TxConn::fetch(self, &st, |r| r.int8("value")).await?;
        value
            .into_iter()
            .next()
            .flatten()
            .ok_or_else(|| DocError::NotANumber(field.to_owned()))
    }

    /// The increment's statement, also answering the document after it and, from the
    /// statement's snapshot, before it. That snapshot is the document overwritten unless
    /// another transaction changed it while this one waited for the row lock; then the
    /// "before" is the document after with the increment taken back (see
    /// [`audit::before_increment`]).
    async fn doc_inc_audited(
        &mut self,
        collection: &str,
        id: &str,
        field: &str,
        delta: i64,
    ) -> Result<Incremented, DocError> {
        let text = format!(
            "{DOC_INC}, d.data::text AS after, \
             (SELECT o.data::text FROM documents o WHERE o.collection = $1 AND o.id = $2) AS before"
        );
        let st = Statement::new(text)
            .bind(collection)
            .bind(id)
            .bind(field)
            .bind(delta)
            .bind(now_ms());
        let rows = TxConn::fetch(self, &st, |r| {
            Ok((r.int8("value")?, r.text("after")?, r.text("before")?))
        })
        .await?;
        match rows.into_iter().next() {
            Some((Some(value), Some(after), snapshot)) => Ok(Incremented {
                value,
                before: audit::before_increment(snapshot, &after, field, delta, value),
                after,
            }),
            _ => Err(DocError::NotANumber(field.to_owned())),
        }
    }
}

/// `doc_inc` in one statement: create the document with the field, or add to the field
/// if it is absent or an integer. The `WHERE` of `DO UPDATE` refuses anything else, and a
/// sum outside 64 bits, without an error (no row comes back): a failed statement would
/// abort the transaction. (`CASE` because SQL does not promise to evaluate `AND` left to
/// right, and `::numeric` of a non-number would raise.)
const DOC_INC: &str = "INSERT INTO documents AS d (collection, id, data, created_at, updated_at) \
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
             RETURNING (d.data -> $3::text)::bigint AS value";

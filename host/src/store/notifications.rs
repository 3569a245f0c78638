//! Notifications in SQL: their columns and row mapping, the raw insert (step 1 of the
//! pipeline), the verdict statements of the payment transaction, and
//! [`NotificationStore`] for every backend.

use async_trait::async_trait;

use super::claims;
use super::retention;
use super::rows::{notification_row, NOTIFICATION_COLUMNS};
use super::statement::{required, storable, storable_opt, Columns, On, Sql, Statement};
use super::traits::NotificationStore;
use super::types::{
    NewNotification, NotificationFilter, NotificationRecord, NotificationVerdict, Verdict,
};
use super::StoreError;
use crate::time::{now_ms, Millis};

/// Stores a batch of raw notifications with one multi-row `INSERT … RETURNING id`;
/// `None` for an empty batch (an empty `VALUES` list is not SQL). Rows take their ids in
/// VALUES order (one writer on SQLite; one statement drawing increasing identity values
/// on PostgreSQL), so the returned ids, sorted, line up with the batch (see
/// [`ids_in_order`]).
pub(crate) fn insert_notifications<'a>(
    batch: &'a [&'a NewNotification],
) -> Result<Option<Statement<'a>>, StoreError> {
    if batch.is_empty() {
        return Ok(None);
    }
    let headers = batch
        .iter()
        .map(|n| serde_json::to_string(&n.headers))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StoreError::Invalid(format!("headers: {e}")))?;
    let mut st = Statement::build();
    st.push(
        "INSERT INTO notifications (provider, account, received_at, remote_addr, headers, \
         body, truncated) ",
    )
    .push_values(batch.iter().zip(headers), |(n, h)| {
        vec![
            storable(&n.provider).into(),
            storable_opt(n.account.as_deref()).into(),
            n.received_at.into(),
            storable_opt(n.remote_addr.as_deref()).into(),
            h.into(),
            n.body.as_slice().into(),
            n.truncated.into(),
        ]
    })
    .push(" RETURNING id");
    Ok(Some(st))
}

/// A row of [`insert_notifications`]' answer.
pub(crate) fn id_row(r: &dyn Columns) -> Result<i64, StoreError> {
    required(r.int8("id")?, "id")
}

/// The ids [`insert_notifications`] returned, in the batch's order; refuses a count
/// that is not the batch's.
pub(crate) fn ids_in_order(mut ids: Vec<i64>, batch: usize) -> Result<Vec<i64>, StoreError> {
    if ids.len() != batch {
        return Err(StoreError::Invalid(format!(
            "stored {} of {batch} notifications",
            ids.len()
        )));
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Where one notification ended up, inside a payment transaction.
pub(crate) fn finish_notification<'a>(
    id: i64,
    verdict: Verdict,
    reason: Option<&'a str>,
    out_trade_no: Option<&'a str>,
    account: Option<&'a str>,
) -> Statement<'a> {
    Statement::new(
        "UPDATE notifications SET verdict = $2, reason = $3, \
         out_trade_no = COALESCE($4, out_trade_no), account = COALESCE($5, account), \
         processed_at = $6 WHERE id = $1",
    )
    .bind(id)
    .bind(verdict.as_str())
    .bind(storable_opt(reason))
    .bind(storable_opt(out_trade_no))
    .bind(storable_opt(account))
    .bind(now_ms())
}

/// Appends to `st` one `UPDATE … FROM (VALUES …)` recording every verdict of a batch.
pub(crate) fn push_finish_notifications<'a>(
    st: &mut Statement<'a>,
    rows: &'a [NotificationVerdict<'a>],
) {
    st.push(
        "UPDATE notifications SET verdict = v.column2, reason = v.column3, \
         out_trade_no = COALESCE(v.column4, notifications.out_trade_no), \
         account = COALESCE(v.column5, notifications.account), processed_at = ",
    )
    .push_param(now_ms())
    .push(" FROM (")
    .push_values(rows, |r| {
        vec![
            r.id.into(),
            r.verdict.as_str().into(),
            storable_opt(r.reason).into(),
            storable_opt(r.out_trade_no).into(),
            storable_opt(r.account).into(),
        ]
    })
    .push(") AS v WHERE notifications.id = v.column1");
}

/// The verdict statement of [`crate::store::NotificationStore::finish_notification`]:
/// the payment transaction's (the same parameters), and in the same `UPDATE`, when
/// `cut_at` (`$7`) is given (the caller gives it for the `rejected` verdict only), a
/// body longer than `cut_at` bytes of a row left without an order is cut to that and
/// marked `truncated`. (`length` and `substr` count bytes of a BLOB on SQLite, of a
/// `bytea` on PostgreSQL.)
pub(crate) fn finish_notification_cut<'a>(
    id: i64,
    verdict: Verdict,
    reason: Option<&'a str>,
    out_trade_no: Option<&'a str>,
    account: Option<&'a str>,
    cut_at: Option<i32>,
) -> Statement<'a> {
    let mut st = finish_notification(id, verdict, reason, out_trade_no, account);
    st.text = "UPDATE notifications SET verdict = $2, reason = $3, \
         out_trade_no = COALESCE($4, out_trade_no), account = COALESCE($5, account), processed_at = $6, \
         body = CASE WHEN COALESCE($4, out_trade_no) IS NULL AND length(body) > $7 \
                     THEN substr(body, 1, $7) ELSE body END, \
         truncated = CASE WHEN COALESCE($4, out_trade_no) IS NULL AND length(body) > $7 \
                          THEN TRUE ELSE truncated END \
         WHERE id = $1"
        .into();
    st.bind(cut_at)
}

/// One stored notification.
fn get_notification(id: i64) -> Statement<'static> {
    Statement::new(format!(
        "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE id = $1"
    ))
    .bind(id)
}

/// Notifications matching `f`, newest first. Only the filters given become terms: a
/// `($n IS NULL OR column = $n)` term keeps SQLite from using any index, and this runs
/// after every payment (refunds waiting for it, by order and verdict), where a scan of the
/// whole table made each payment slower than the last.
fn list_notifications(f: &NotificationFilter) -> Statement<'_> {
    let mut st = Statement::build();
    st.push(&format!(
        "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE TRUE"
    ));
    if let Some(p) = storable_opt(f.provider.as_deref()) {
        st.push(" AND provider = ").push_param(p);
    }
    if let Some(no) = storable_opt(f.out_trade_no.as_deref()) {
        st.push(" AND out_trade_no = ").push_param(no);
    }
    if let Some(v) = f.verdict {
        st.push(" AND verdict = ").push_param(v.as_str());
    }
    if let Some(before) = f.before_id {
        st.push(" AND id < ").push_param(before);
    }
    if let Some(since) = f.since {
        st.push(" AND received_at >= ").push_param(since);
    }
    if let Some(until) = f.until {
        st.push(" AND received_at < ").push_param(until);
    }
    st.push(" ORDER BY id DESC LIMIT ")
        .push_param(i64::from(f.limit.clamp(1, 500)));
    st
}

#[async_trait]
impl<S: Sql> NotificationStore for S {
    async fn finish_notification(
        &self,
        id: i64,
        verdict: Verdict,
        reason: Option<&str>,
        out_trade_no: Option<&str>,
        account: Option<&str>,
    ) -> Result<(), StoreError> {
        let cut_at = (verdict == Verdict::Rejected).then_some(self.cut_rejected_at());
        let st = finish_notification_cut(id, verdict, reason, out_trade_no, account, cut_at);
        self.execute(On::Write, &st).await?;
        Ok(())
    }

    async fn get_notification(&self, id: i64) -> Result<Option<NotificationRecord>, StoreError> {
        let st = get_notification(id);
        Ok(self.fetch(On::Read, &st, notification_row).await?.pop())
    }

    async fn list_notifications(
        &self,
        filter: &NotificationFilter,
    ) -> Result<Vec<NotificationRecord>, StoreError> {
        self.fetch(On::Read, &list_notifications(filter), notification_row)
            .await
    }

    async fn failed_unpaid_notifications(
        &self,
        since: Option<Millis>,
        order_type: Option<&str>,
        limit: u32,
    ) -> Result<Vec<NotificationRecord>, StoreError> {
        let st = claims::failed_unpaid(since, order_type, limit);
        self.fetch(On::Read, &st, notification_row).await
    }

    async fn claim_stuck(
        &self,
        received_before: Millis,
        now: Millis,
        until: Millis,
        limit: u32,
    ) -> Result<Vec<NotificationRecord>, StoreError> {
        let st = claims::claim_stuck(self.dialect(), received_before, now, until, limit);
        Ok(claims::by_id(
            self.fetch(On::Write, &st, notification_row).await?,
        ))
    }

    async fn prune_rejected(&self, received_before: Millis, limit: u32) -> Result<u64, StoreError> {
        let st = retention::prune_rejected(self.dialect(), received_before, limit);
        self.execute(On::Write, &st).await
    }

    async fn count_rejected(&self) -> Result<i64, StoreError> {
        let st = retention::count_rejected();
        let counts = self
            .fetch(On::Read, &st, |r| required(r.int8("n")?, "n"))
            .await?;
        Ok(counts.into_iter().next().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan SQLite makes for `st` on a database migrated as the host migrates it.
    fn sqlite_plan(st: &Statement<'_>) -> String {
        let db = rusqlite::Connection::open_in_memory().expect("open");
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect("migrations")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        for f in files {
            db.execute_batch(&std::fs::read_to_string(&f).expect("read"))
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        }
        let mut plan = db
            .prepare(&format!("EXPLAIN QUERY PLAN {}", st.text))
            .expect("explain");
        let rows = plan
            .query_map(rusqlite::params_from_iter(st.params.iter()), |r| {
                r.get::<_, String>(3)
            })
            .expect("plan")
            .collect::<Result<Vec<_>, _>>()
            .expect("rows");
        rows.join("\n")
    }

    #[test]
    fn an_orders_notifications_are_read_through_its_index_not_a_scan() {
        let f = NotificationFilter {
            out_trade_no: Some("R1".into()),
            verdict: Some(Verdict::RefundPending),
            limit: 100,
            ..Default::default()
        };
        let plan = sqlite_plan(&list_notifications(&f));
        assert!(plan.contains("INDEX notifications_order"), "{plan}");
        assert!(!plan.contains("SCAN notifications"), "{plan}");
    }

    #[test]
    fn only_the_given_filters_become_terms() {
        let f = NotificationFilter {
            limit: 10,
            ..Default::default()
        };
        let all = list_notifications(&f);
        assert!(!all.text.contains("IS NULL"), "{}", all.text);
        assert_eq!(all.params.len(), 1, "the limit only");
    }
}

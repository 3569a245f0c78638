//! Tasks (the handlers' outbox) in SQL: columns and row mapping, the insert of the
//! payment transaction, the worker's claims and leases, and [`TaskStore`] for every
//! backend.

use async_trait::async_trait;

use super::documents;
use super::rows::{task_row, TASK_COLUMNS};
use super::statement::{required, storable, storable_opt, On, Sql, Statement};
use super::traits::TaskStore;
use super::types::{NewTask, TaskEnd, TaskRecord};
use super::StoreError;
use crate::time::{iso_time, now_ms, Millis};

/// Inserts a task (the outbox), returning its id.
pub(crate) fn enqueue_task(t: &NewTask) -> Statement<'_> {
    Statement::new(
        "INSERT INTO tasks (plugin, name, payload, out_trade_no, provider, account, run_at, \
         created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) RETURNING id",
    )
    .bind(&t.plugin)
    .bind(storable(&t.name))
    .bind(&t.payload)
    .bind(t.out_trade_no.as_deref())
    .bind(t.provider.as_deref())
    .bind(t.account.as_deref())
    .bind(t.run_at)
    .bind(now_ms())
}

/// Open tasks by status. `IN (…)` rather than a scan of the whole table: the
/// `(status, run_at)` index gives the three ranges, whose size is the queue, not the
/// ever-growing history of done tasks.
fn count_open_tasks() -> Statement<'static> {
    Statement::new(
        "SELECT status, COUNT(*) AS n FROM tasks \
         WHERE status IN ('pending', 'running', 'dead') GROUP BY status",
    )
}

/// Tasks, newest first, optionally only those with `status`.
fn list_tasks(status: Option<&str>, limit: u32) -> Statement<'_> {
    Statement::new(format!(
        "SELECT {TASK_COLUMNS} FROM tasks WHERE ($1 IS NULL OR status = $1) \
         ORDER BY id DESC LIMIT $2"
    ))
    .bind(storable_opt(status))
    .bind(i64::from(limit.clamp(1, 500)))
}

/// One task.
fn get_task(id: i64) -> Statement<'static> {
    Statement::new(format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1")).bind(id)
}

/// One statement: picks due tasks (pending and due, or running with an expired lease)
/// and marks them running under `token` until `lease_until`.
fn claim_tasks<'a>(
    skip_locked: &str,
    token: &'a str,
    now: Millis,
    lease_until: Millis,
    limit: u32,
) -> Statement<'a> {
    Statement::new(format!(
        "UPDATE tasks SET status = 'running', claim_token = $1, locked_until = $3, updated_at = $2 \
         WHERE id IN (SELECT id FROM tasks \
                      WHERE (status = 'pending' AND run_at <= $2) \
                         OR (status = 'running' AND locked_until <= $2) \
                      ORDER BY run_at, id LIMIT $4{skip_locked}) \
         RETURNING {TASK_COLUMNS}"
    ))
    .bind(token)
    .bind(now)
    .bind(lease_until)
    .bind(i64::from(limit))
}

/// Moves the lease of a task this worker still holds (by `token`) to `lease_until`. Only
/// the token is checked, not the old lease: a claim that ran out without being taken
/// over is still this worker's, and a takeover rewrites the token, so whichever
/// statement commits second sees the other's (row lock on PostgreSQL, one writer on
/// SQLite).
fn renew_task(id: i64, token: &str, lease_until: Millis) -> Statement<'_> {
    Statement::new(
        "UPDATE tasks SET locked_until = $3 \
         WHERE id = $1 AND claim_token = $2 AND status = 'running'",
    )
    .bind(id)
    .bind(token)
    .bind(lease_until)
}

/// How [`TaskEnd`] updates a task row: new status, attempts used, next run time, and
/// the error history entry.
fn task_end_update(
    end: &TaskEnd,
    now: Millis,
) -> (&'static str, i32, Option<Millis>, Option<String>) {
    let (status, attempts, run_at, error) = match end {
        TaskEnd::Done => ("done", 1, None, None),
        TaskEnd::Retry { error, at } => ("pending", 1, Some(*at), Some(error.as_str())),
        TaskEnd::Dead { error } => ("dead", 1, None, Some(error.as_str())),
        TaskEnd::Postpone { reason, at } => ("pending", 0, Some(*at), Some(reason.as_str())),
    };
    let entry = error.map(|e| format!("{} {}", iso_time(now), storable(e)));
    (status, attempts, run_at, entry)
}

/// Ends a claimed attempt (see [`task_end_update`]), only under the claim's `token`.
fn finish_task<'a>(append_error: &str, id: i64, token: &'a str, end: &TaskEnd) -> Statement<'a> {
    let now = now_ms();
    let (status, attempts, run_at, entry) = task_end_update(end, now);
    Statement::new(format!(
        "UPDATE tasks SET status = $3, attempts = attempts + $4, run_at = COALESCE($5, run_at), \
           last_error = COALESCE($6, last_error), \
           errors = CASE WHEN $6 IS NULL THEN errors ELSE {append_error} END, \
           claim_token = NULL, locked_until = NULL, updated_at = $7 \
         WHERE id = $1 AND claim_token = $2 AND status = 'running'"
    ))
    .bind(id)
    .bind(token)
    .bind(status)
    .bind(attempts)
    .bind(run_at)
    .bind(entry)
    .bind(now)
}

/// Puts a dead or pending task back in the queue, to run now with fresh attempts.
fn retry_task(id: i64) -> Statement<'static> {
    Statement::new(
        "UPDATE tasks SET status = 'pending', attempts = 0, run_at = $2, updated_at = $2 \
         WHERE id = $1 AND status IN ('dead', 'pending')",
    )
    .bind(id)
    .bind(now_ms())
}

#[async_trait]
impl<S: Sql> TaskStore for S {
    async fn count_open_tasks(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.fetch(On::Read, &count_open_tasks(), |r| {
            Ok((
                required(r.text("status")?, "status")?,
                required(r.int8("n")?, "n")?,
            ))
        })
        .await
    }

    async fn list_tasks(
        &self,
        status: Option<&str>,
        limit: u32,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        self.fetch(On::Read, &list_tasks(status, limit), task_row)
            .await
    }

    async fn get_task(&self, id: i64) -> Result<Option<TaskRecord>, StoreError> {
        Ok(self.fetch(On::Read, &get_task(id), task_row).await?.pop())
    }

    async fn claim_tasks(
        &self,
        token: &str,
        now: Millis,
        lease_until: Millis,
        limit: u32,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        let st = claim_tasks(self.dialect().skip_locked, token, now, lease_until, limit);
        self.fetch(On::Write, &st, task_row).await
    }

    async fn renew_task(
        &self,
        id: i64,
        token: &str,
        lease_until: Millis,
    ) -> Result<bool, StoreError> {
        Ok(self
            .execute(On::Write, &renew_task(id, token, lease_until))
            .await?
            == 1)
    }

    async fn finish_task(&self, id: i64, token: &str, end: &TaskEnd) -> Result<bool, StoreError> {
        let st = finish_task(self.dialect().append_error, id, token, end);
        Ok(self.execute(On::Write, &st).await? == 1)
    }

    async fn retry_task(&self, id: i64) -> Result<bool, StoreError> {
        Ok(self.execute(On::Write, &retry_task(id)).await? == 1)
    }

    async fn get_document(&self, collection: &str, id: &str) -> Result<Option<String>, StoreError> {
        let st = documents::select(self.dialect(), collection, id, "");
        let found = self.fetch(On::Read, &st, |r| r.text("data")).await?;
        Ok(found.into_iter().next().flatten())
    }

    async fn query_documents(
        &self,
        collection: &str,
        filters: &[(String, serde_json::Value)],
        limit: u32,
    ) -> Result<Vec<(String, String)>, StoreError> {
        match documents::query(self.dialect(), collection, filters, limit) {
            Some(st) => self.fetch(On::Read, &st, documents::id_and_data).await,
            None => Ok(Vec::new()),
        }
    }
}

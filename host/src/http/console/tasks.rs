//! The console's tasks: the list, by status, and the retry button.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, Redirect};
use maud::{html, Markup};
use serde::Deserialize;

use super::format::{text_opt, time};
use super::session::CheckedPost;
use super::widgets::{csrf_field, given, id_keyset, order_link, page_size, paged, Paged};
use super::{page, Nav, PageError, PageQuery, Session};
use crate::app::App;
use crate::store::TaskFilter;
use crate::store::TaskRecord;

/// Where the list is.
const PATH: &str = "/console/tasks";

/// Every task status, for the filter.
const TASK_STATUSES: [&str; 4] = ["pending", "running", "done", "dead"];

/// Query of `/console/tasks`.
#[derive(Debug, Deserialize, Default)]
pub struct TasksQuery {
    status: Option<String>,
    older: Option<i64>,
    newer: Option<i64>,
    limit: Option<u32>,
    /// Set by the retry button's redirect.
    retried: Option<i64>,
}

impl TasksQuery {
    /// The page of tasks asked for; 400 for an unknown status.
    async fn read(&self, app: &App) -> Result<Paged<TaskRecord>, PageError> {
        let keyset = id_keyset(self.older, self.newer);
        let rows = app
            .store
            .console()
            .page_tasks(&self.filter()?, &keyset)
            .await?;
        Ok(paged(rows, &keyset, page_size(self.limit)))
    }

    /// The store's filter (one row more than the page shows).
    fn filter(&self) -> Result<TaskFilter, PageError> {
        let status = given(&self.status);
        if let Some(s) = status.filter(|s| !TASK_STATUSES.contains(s)) {
            return Err(PageError::bad_request(format!(
                "Unknown task status `{s}`."
            )));
        }
        Ok(TaskFilter {
            status: status.map(str::to_owned),
            out_trade_no: None,
            limit: page_size(self.limit) + 1,
        })
    }
}

/// `GET /console/tasks`: newest first, by status.
pub async fn list(
    State(app): State<App>,
    session: Session,
    PageQuery(q): PageQuery<TasksQuery>,
) -> Result<Html<String>, PageError> {
    let tasks = q.read(&app).await?;
    let retried = match q.retried {
        Some(id) => app.store.get_task(id).await?,
        None => None,
    };
    let body = list_body(&q, retried.as_ref(), &tasks, &session);
    Ok(page("Tasks", Nav::Tasks, &session, body))
}

/// After a retry, the task retried; the status tabs, the tasks and the pager.
fn list_body(
    q: &TasksQuery,
    retried: Option<&TaskRecord>,
    p: &Paged<TaskRecord>,
    session: &Session,
) -> Markup {
    let status = given(&q.status);
    html! {
        @if let Some(t) = retried {
            p.notice role="status" id="retry-result" {
                "Task " (t.id) " put back in the queue with fresh attempts; it is now "
                span class={"badge task-" (t.status)} { (t.status) } "."
            }
        }
        nav.tabs {
            a href=(PATH) class=[status.is_none().then_some("active")] { "all" }
            @for s in TASK_STATUSES {
                a href={(PATH) "?status=" (s)} class=[(status == Some(s)).then_some("active")] { (s) }
            }
        }
        (tasks_table(&p.rows, session))
        (p.pager(PATH, &[("status", status)], q.limit, |t| t.id.to_string()))
    }
}

/// Tasks with a retry button on those that can be re-driven (dead or pending).
pub fn tasks_table(rows: &[TaskRecord], session: &Session) -> Markup {
    html! {
        @if rows.is_empty() {
            p.empty { "No tasks." }
        } @else {
            table.tasks {
                thead { tr {
                    th { "#" } th { "Plugin" } th { "Task" } th { "Order" } th { "Status" }
                    th.num { "Attempts" } th { "Next run" } th { "Last error" } th { "Created" } th { "" }
                } }
                tbody {
                    @for t in rows {
                        tr data-task=(t.id) {
                            td { (t.id) }
                            td { (t.plugin) }
                            td { (t.name) }
                            td { (order_link(t.out_trade_no.as_deref())) }
                            td.status { span class={"badge task-" (t.status)} { (t.status) } }
                            td.num.attempts { (t.attempts) }
                            td { (time(t.run_at)) }
                            td.error { (text_opt(t.last_error.as_deref())) }
                            td { (time(t.created_at)) }
                            td {
                                @if t.status == "dead" || t.status == "pending" {
                                    form.inline method="post" action={"/console/tasks/" (t.id) "/retry"} {
                                        (csrf_field(session))
                                        button type="submit" class="retry" { "Retry now" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `POST /console/tasks/{id}/retry`: puts a dead or pending task back in the queue with
/// fresh attempts (as `POST /api/admin/tasks/{id}/retry` does), then shows it.
pub async fn retry(
    State(app): State<App>,
    Path(id): Path<i64>,
    _: CheckedPost,
) -> Result<Redirect, PageError> {
    if !app.store.retry_task(id).await? {
        return Err(PageError::Status(
            StatusCode::CONFLICT,
            format!("Task {id} is neither dead nor pending (or does not exist): nothing to retry."),
        ));
    }
    tracing::info!(id, "task retried from the console");
    Ok(Redirect::to(&format!("/console/tasks?retried={id}")))
}

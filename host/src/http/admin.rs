//! `/api/admin`: what ops look at and re-drive.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{read, ApiError};
use crate::app::App;
use crate::store::{
    NotificationFilter, NotificationRecord, PluginEventRecord, StoreError, Verdict,
};
use crate::time::{parse_time, Millis};

/// Query of `GET /api/admin/notifications`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationQuery {
    provider: Option<String>,
    order: Option<String>,
    verdict: Option<String>,
    before: Option<i64>,
    /// Received at or after: RFC 3339 or unix milliseconds.
    since: Option<String>,
    /// Received before: RFC 3339 or unix milliseconds.
    until: Option<String>,
    limit: Option<u32>,
}

impl NotificationQuery {
    /// The store's filter; 400 for a verdict or time that does not parse.
    fn filter(self) -> Result<NotificationFilter, ApiError> {
        let verdict = self
            .verdict
            .as_deref()
            .map(|v| {
                Verdict::parse(v)
                    .ok_or_else(|| ApiError::BadRequest(format!("unknown verdict `{v}`")))
            })
            .transpose()?;
        Ok(NotificationFilter {
            provider: self.provider,
            out_trade_no: self.order,
            verdict,
            before_id: self.before,
            since: time("since", self.since.as_deref())?,
            until: time("until", self.until.as_deref())?,
            limit: self.limit.unwrap_or(50),
        })
    }
}

/// Query parameter `name`, a time: RFC 3339 or unix milliseconds; 400 if it is neither.
fn time(name: &str, value: Option<&str>) -> Result<Option<Millis>, ApiError> {
    value
        .map(parse_time)
        .transpose()
        .map_err(|m| ApiError::BadRequest(format!("{name}: {m}")))
}

/// The stored notification `id`; 404 if there is none.
async fn notification(app: &App, id: i64) -> Result<NotificationRecord, ApiError> {
    read(app, app.store.get_notification(id))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no notification {id}")))
}

/// Lists notifications, newest first.
pub async fn list_notifications(
    State(app): State<App>,
    Query(q): Query<NotificationQuery>,
) -> Result<Json<Vec<NotificationRecord>>, ApiError> {
    let filter = q.filter()?;
    Ok(Json(
        read(&app, app.store.list_notifications(&filter)).await?,
    ))
}

/// One notification with its raw body.
pub async fn show_notification(
    State(app): State<App>,
    Path(id): Path<i64>,
) -> Result<Json<NotificationRecord>, ApiError> {
    Ok(Json(notification(&app, id).await?))
}

/// Runs a stored notification through the pipeline again.
pub async fn replay(State(app): State<App>, Path(id): Path<i64>) -> Result<Json<Value>, ApiError> {
    let record = notification(&app, id).await?;
    let p = crate::replay::replay(&app, &record).await;
    Ok(Json(json!({
        "id": id,
        "verdict": p.verdict,
        "reason": p.reason,
    })))
}

/// Loaded plugins and load errors.
pub async fn plugins(State(app): State<App>) -> Json<Vec<crate::plugins::PluginStatus>> {
    Json(app.plugins.status())
}

/// Rescans the plugins directory now.
pub async fn reload_plugins(State(app): State<App>) -> Json<Value> {
    let report = app.plugins.rescan().await;
    Json(json!({ "report": report, "plugins": app.plugins.status() }))
}

/// Query of `GET /api/admin/plugins/history`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Only this plugin type.
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    /// Only events with a smaller id (the next page after the last id shown).
    before: Option<i64>,
    limit: Option<u32>,
}

/// `GET /api/admin/plugins/history?type=&before=&limit=`: every load, replacement, unload
/// and refusal of a handler build, newest first; 400 for a type that cannot be a
/// plugin's name.
pub async fn plugin_history(
    State(app): State<App>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<Vec<PluginEventRecord>>, ApiError> {
    let Query(q) = query?;
    if let Some(t) = q.plugin_type.as_deref() {
        if !crate::plugins::is_history_label(t) {
            return Err(ApiError::BadRequest(format!(
                "type `{t}`: a plugin type is letters, digits, - and _ (`TYPE.next` for its candidate)"
            )));
        }
    }
    let listed = app.store.plugin_history().plugin_history(
        q.plugin_type.as_deref(),
        q.before,
        q.limit.unwrap_or(50),
    );
    Ok(Json(read(&app, listed).await?))
}

/// A handler document.
pub async fn document(
    State(app): State<App>,
    Path((collection, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let text = read(&app, app.store.get_document(&collection, &id))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no document {collection}/{id}")))?;
    serde_json::from_str(&text)
        .map(Json)
        .map_err(|e| ApiError::internal(format!("stored document is corrupt: {e}")))
}

/// Query of `GET /api/admin/tasks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskQuery {
    status: Option<String>,
    limit: Option<u32>,
}

/// Lists tasks, newest first.
pub async fn tasks(
    State(app): State<App>,
    Query(q): Query<TaskQuery>,
) -> Result<Json<Vec<crate::store::TaskRecord>>, ApiError> {
    let listed = app
        .store
        .list_tasks(q.status.as_deref(), q.limit.unwrap_or(50));
    Ok(Json(read(&app, listed).await?))
}

/// Runs a dead (or waiting) task again now.
pub async fn retry_task(
    State(app): State<App>,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    if !app.store.retry_task(id).await? {
        return Err(ApiError::NotFound(format!("no dead or pending task {id}")));
    }
    Ok(Json(json!({ "id": id, "status": "pending" })))
}

/// Query of `POST /api/admin/notifications/replay`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayQuery {
    /// Must be `true`: only failed notifications are re-driven in bulk.
    failed: Option<bool>,
    /// Received at or after: RFC 3339 or unix milliseconds.
    since: Option<String>,
    /// Only orders of this handler type.
    #[serde(rename = "type")]
    order_type: Option<String>,
    limit: Option<u32>,
}

impl ReplayQuery {
    /// The failed notifications to re-run; 400 without `failed=true` or with a bad time.
    fn filter(self) -> Result<crate::replay::FailedFilter, ApiError> {
        if self.failed != Some(true) {
            return Err(ApiError::BadRequest(
                "bulk replay takes failed notifications only: add failed=true".into(),
            ));
        }
        Ok(crate::replay::FailedFilter {
            since: time("since", self.since.as_deref())?,
            order_type: self.order_type,
            limit: self.limit,
        })
    }
}

/// Re-runs every notification whose handler failed and whose order is still unpaid.
pub async fn replay_failed(
    State(app): State<App>,
    Query(q): Query<ReplayQuery>,
) -> Result<Json<Value>, ApiError> {
    let filter = q.filter()?;
    let list = crate::replay::replay_failed(&app, &filter).await?;
    Ok(Json(json!({ "replayed": list })))
}

/// Query of `POST /api/admin/reconcile`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileQuery {
    /// Only orders unpaid at least this long (default `[reconcile] older_than_secs`).
    older_than_secs: Option<u64>,
    /// Only this order, whatever its age.
    order: Option<String>,
}

/// Asks providers about unpaid orders now and settles those they report paid.
pub async fn reconcile(
    State(app): State<App>,
    Query(q): Query<ReconcileQuery>,
) -> Result<Json<crate::reconcile::Report>, ApiError> {
    let reconciler = crate::reconcile::Reconciler::new(&app);
    let report = match q.order.as_deref() {
        // Invalid here means no such order.
        Some(no) => reconciler.run_order(no).await.map_err(|e| match e {
            StoreError::Invalid(m) => ApiError::NotFound(m),
            e => e.into(),
        })?,
        None => reconciler.run_once(q.older_than_secs, true).await?,
    };
    Ok(Json(report))
}

//! `/api/admin`: what ops look at and re-drive.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::{read, ApiError};
use crate::app::App;
use crate::store::{parse_time, NotificationFilter, Verdict};

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

/// Lists notifications, newest first.
pub async fn list_notifications(
    State(app): State<App>,
    Query(q): Query<NotificationQuery>,
) -> Response {
    let verdict = match q.verdict.as_deref().map(|v| (v, Verdict::parse(v))) {
        None => None,
        Some((_, Some(v))) => Some(v),
        Some((v, None)) => {
            return ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                format!("unknown verdict `{v}`"),
            )
            .into_response()
        }
    };
    let time = |name: &str, v: Option<&str>| {
        v.map(parse_time)
            .transpose()
            .map_err(|m| ApiError::new(axum::http::StatusCode::BAD_REQUEST, format!("{name}: {m}")))
    };
    let (since, until) = match (
        time("since", q.since.as_deref()),
        time("until", q.until.as_deref()),
    ) {
        (Ok(s), Ok(u)) => (s, u),
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
    };
    let filter = NotificationFilter {
        provider: q.provider,
        out_trade_no: q.order,
        verdict,
        before_id: q.before,
        since,
        until,
        limit: q.limit.unwrap_or(50),
    };
    match read(&app, app.store.list_notifications(&filter)).await {
        Ok(list) => Json(list).into_response(),
        Err(e) => ApiError::store(e).into_response(),
    }
}

/// One notification with its raw body.
pub async fn show_notification(State(app): State<App>, Path(id): Path<i64>) -> Response {
    match read(&app, app.store.get_notification(id)).await {
        Ok(Some(n)) => Json(n).into_response(),
        Ok(None) => ApiError::not_found(format!("no notification {id}")).into_response(),
        Err(e) => ApiError::store(e).into_response(),
    }
}

/// Runs a stored notification through the pipeline again.
pub async fn replay(State(app): State<App>, Path(id): Path<i64>) -> Response {
    let record = match read(&app, app.store.get_notification(id)).await {
        Ok(Some(n)) => n,
        Ok(None) => return ApiError::not_found(format!("no notification {id}")).into_response(),
        Err(e) => return ApiError::store(e).into_response(),
    };
    let p = crate::replay::replay(&app, &record).await;
    Json(serde_json::json!({
        "id": id,
        "verdict": p.verdict,
        "reason": p.reason,
    }))
    .into_response()
}

/// Loaded plugins and load errors.
pub async fn plugins(State(app): State<App>) -> Response {
    Json(app.plugins.status()).into_response()
}

/// Rescans the plugins directory now.
pub async fn reload_plugins(State(app): State<App>) -> Response {
    let report = app.plugins.scan().await;
    Json(serde_json::json!({ "report": report, "plugins": app.plugins.status() })).into_response()
}

/// A handler document.
pub async fn document(
    State(app): State<App>,
    Path((collection, id)): Path<(String, String)>,
) -> Response {
    match read(&app, app.store.get_document(&collection, &id)).await {
        Ok(Some(text)) => match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(v) => Json(v).into_response(),
            Err(e) => {
                ApiError::internal(format!("stored document is corrupt: {e}")).into_response()
            }
        },
        Ok(None) => ApiError::not_found(format!("no document {collection}/{id}")).into_response(),
        Err(e) => ApiError::store(e).into_response(),
    }
}

/// Query of `GET /api/admin/tasks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskQuery {
    status: Option<String>,
    limit: Option<u32>,
}

/// Lists tasks, newest first.
pub async fn tasks(State(app): State<App>, Query(q): Query<TaskQuery>) -> Response {
    let listed = app
        .store
        .list_tasks(q.status.as_deref(), q.limit.unwrap_or(50));
    match read(&app, listed).await {
        Ok(list) => Json(list).into_response(),
        Err(e) => ApiError::store(e).into_response(),
    }
}

/// Runs a dead (or waiting) task again now.
pub async fn retry_task(State(app): State<App>, Path(id): Path<i64>) -> Response {
    match app.store.retry_task(id).await {
        Ok(true) => Json(serde_json::json!({ "id": id, "status": "pending" })).into_response(),
        Ok(false) => ApiError::not_found(format!("no dead or pending task {id}")).into_response(),
        Err(e) => ApiError::store(e).into_response(),
    }
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

/// Re-runs every notification whose handler failed and whose order is still unpaid.
pub async fn replay_failed(State(app): State<App>, Query(q): Query<ReplayQuery>) -> Response {
    let bad = |m: String| ApiError::new(axum::http::StatusCode::BAD_REQUEST, m).into_response();
    if q.failed != Some(true) {
        return bad("bulk replay takes failed notifications only: add failed=true".into());
    }
    let since = match q.since.as_deref().map(parse_time).transpose() {
        Ok(s) => s,
        Err(m) => return bad(format!("since: {m}")),
    };
    let filter = crate::replay::FailedFilter {
        since,
        order_type: q.order_type,
        limit: q.limit,
    };
    match crate::replay::replay_failed(&app, &filter).await {
        Ok(list) => Json(serde_json::json!({ "replayed": list })).into_response(),
        Err(e) => ApiError::store(e).into_response(),
    }
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
pub async fn reconcile(State(app): State<App>, Query(q): Query<ReconcileQuery>) -> Response {
    let reconciler = crate::reconcile::Reconciler::new(&app);
    let report = match q.order.as_deref() {
        Some(no) => match reconciler.run_order(no).await {
            Err(crate::store::StoreError::Invalid(m)) => {
                return ApiError::not_found(m).into_response()
            }
            r => r,
        },
        None => reconciler.run_once(q.older_than_secs, true).await,
    };
    match report {
        Ok(r) => Json(r).into_response(),
        Err(e) => ApiError::store(e).into_response(),
    }
}

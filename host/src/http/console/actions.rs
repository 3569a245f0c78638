//! The console's buttons: replay a notification, rescan the plugins, retry a task. Each
//! is a POST that passes [`check_post`] (same origin + the session's CSRF token) before
//! it calls exactly what the admin API calls, then answers with a page showing the
//! result (a redirect to it where the result is in the database, so reloading the page
//! does not repeat the action).

use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};

use super::session::{check_post, posted_csrf, CsrfForm};
use super::{error_page, store_failure, widgets, Session};
use crate::app::App;

/// `POST /console/notifications/{id}/replay`: runs the stored notification through the
/// pipeline again (as `POST /api/admin/notifications/{id}/replay` does), then shows it.
pub async fn replay(
    State(app): State<App>,
    Extension(session): Extension<Session>,
    Path(id): Path<i64>,
    headers: HeaderMap,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    if let Some(refused) = check_post(&headers, &session, &posted_csrf(form)) {
        return refused;
    }
    let record = match app.store.get_notification(id).await {
        Ok(Some(n)) => n,
        Ok(None) => return error_page(StatusCode::NOT_FOUND, &format!("No notification {id}.")),
        Err(e) => return store_failure(e),
    };
    // The same entry as the admin API: a stored query answer is verified as one.
    let p = crate::replay::replay(&app, &record).await;
    tracing::info!(id, verdict = ?p.verdict, "notification replayed from the console");
    Redirect::to(&format!("/console/notifications/{id}?replayed=1")).into_response()
}

/// `POST /console/plugins/reload`: rescans the plugins directory now (as
/// `POST /api/admin/plugins/reload` does) and shows what the scan did.
pub async fn reload(
    State(app): State<App>,
    Extension(session): Extension<Session>,
    headers: HeaderMap,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    if let Some(refused) = check_post(&headers, &session, &posted_csrf(form)) {
        return refused;
    }
    let report = app.plugins.scan().await;
    tracing::info!(loaded = ?report.loaded, failed = report.failed.len(), "plugins rescanned from the console");
    widgets::plugins_page(&app, &session, Some(&report)).into_response()
}

/// `POST /console/tasks/{id}/retry`: puts a dead or pending task back in the queue with
/// fresh attempts (as `POST /api/admin/tasks/{id}/retry` does), then shows it.
pub async fn retry(
    State(app): State<App>,
    Extension(session): Extension<Session>,
    Path(id): Path<i64>,
    headers: HeaderMap,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    if let Some(refused) = check_post(&headers, &session, &posted_csrf(form)) {
        return refused;
    }
    match app.store.retry_task(id).await {
        Ok(true) => {
            tracing::info!(id, "task retried from the console");
            Redirect::to(&format!("/console/tasks?retried={id}")).into_response()
        }
        Ok(false) => error_page(
            StatusCode::CONFLICT,
            &format!(
                "Task {id} is neither dead nor pending (or does not exist): nothing to retry."
            ),
        ),
        Err(e) => store_failure(e),
    }
}

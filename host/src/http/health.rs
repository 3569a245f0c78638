//! What load balancers and monitoring call: `/readyz` and `/metrics` (`/healthz` is a
//! constant `ok` in the router). None of them is under `/api`, so none needs the token.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::app::App;

/// Longest `/readyz` takes to answer, whatever the database does.
const READYZ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// `GET /readyz`: 200 when this process can do its job, else 503 saying why, within
/// [`READYZ_TIMEOUT`]:
///
/// - the database cannot commit: down, frozen, read-only, disk full (a write proves it;
///   see [`crate::store::ready`], which also caches the result for a second);
/// - a plugin file in the directory failed to load and no version of its type is
///   serving (its orders could be created by nobody and paid by nobody). A type whose
///   new file is broken while the previous version keeps serving is still ready.
pub async fn readyz(State(app): State<App>) -> Response {
    let database = app.store.backend();
    let committed = tokio::time::timeout(READYZ_TIMEOUT, app.store.ready())
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no answer within {} s (the database is down, frozen, or too busy)",
                READYZ_TIMEOUT.as_secs()
            ))
        });
    if let Err(why) = committed {
        return unready(
            format!("database cannot commit: {why}"),
            json!({ "database": database }),
        );
    }
    let status = app.plugins.status();
    let failing: Vec<_> = status
        .iter()
        .filter(|p| !p.loaded)
        .filter_map(|p| Some((p.plugin_type.as_str(), p.last_error.as_deref()?)))
        .collect();
    if !failing.is_empty() {
        let names: Vec<String> = failing.iter().map(|(t, _)| format!("`{t}`")).collect();
        return unready(
            format!(
                "plugin {} failed to load and no version of it is serving: {}",
                names.join(", "),
                failing
                    .iter()
                    .map(|(_, e)| *e)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            json!({
                "database": database,
                "failing_plugins": failing
                    .iter()
                    .map(|(t, e)| json!({ "type": t, "error": e }))
                    .collect::<Vec<_>>(),
            }),
        );
    }
    Json(json!({
        "database": database,
        "plugins": status.iter().filter(|p| p.loaded).count(),
    }))
    .into_response()
}

/// 503 with `{"error": why, …details}`.
fn unready(why: String, mut details: serde_json::Value) -> Response {
    if let Some(map) = details.as_object_mut() {
        map.insert("error".into(), why.into());
    }
    (StatusCode::SERVICE_UNAVAILABLE, Json(details)).into_response()
}

/// `GET /metrics`: Prometheus text exposition (see [`crate::metrics`]), with the
/// scrape-time gauges (task queue depth from one grouped count, plugin states) refreshed.
pub async fn metrics(State(app): State<App>) -> Response {
    match app.store.count_open_tasks().await {
        Ok(counts) => crate::metrics::open_tasks(&counts),
        // Keep the last values rather than report an empty queue; /readyz says why.
        Err(e) => tracing::warn!(error = %e, "metrics: cannot count tasks"),
    }
    let status = app.plugins.status();
    let loaded = status.iter().filter(|p| p.loaded).count();
    let failing = status
        .iter()
        .filter(|p| !p.loaded && p.last_error.is_some())
        .count();
    let open = status
        .iter()
        .filter(|p| p.breaker.failing_fast_until.is_some())
        .count();
    crate::metrics::plugin_states(loaded, failing, open);
    let text = crate::metrics::render();
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

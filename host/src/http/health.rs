//! What load balancers and monitoring call: `/readyz` and `/metrics` (`/healthz` is a
//! constant `ok` in the router). None of them is under `/api`, so none needs the token.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::app::App;
use crate::plugins::PluginStatus;

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
pub async fn readyz(State(app): State<App>) -> Result<Json<Value>, Unready> {
    let database = app.store.backend();
    commits(&app).await.map_err(|why| Unready {
        why: format!("database cannot commit: {why}"),
        details: json!({ "database": database }),
    })?;
    let status = app.plugins.status();
    serving(&status).map_err(|(why, failing)| Unready {
        why,
        details: json!({ "database": database, "failing_plugins": failing }),
    })?;
    Ok(Json(json!({
        "database": database,
        "plugins": status.iter().filter(|p| p.loaded).count(),
    })))
}

/// Whether the database commits, within [`READYZ_TIMEOUT`]; why not if it does not.
async fn commits(app: &App) -> Result<(), String> {
    tokio::time::timeout(READYZ_TIMEOUT, app.store.ready())
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no answer within {} s (the database is down, frozen, or too busy)",
                READYZ_TIMEOUT.as_secs()
            ))
        })
}

/// Whether every plugin type with a file in the directory has a version serving; if not,
/// why, and `{"type", "error"}` of each that has none.
fn serving(status: &[PluginStatus]) -> Result<(), (String, Vec<Value>)> {
    let failing: Vec<_> = status
        .iter()
        .filter(|p| !p.loaded)
        .filter_map(|p| Some((p.plugin_type.as_str(), p.last_error.as_deref()?)))
        .collect();
    if failing.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = failing.iter().map(|(t, _)| format!("`{t}`")).collect();
    let errors: Vec<&str> = failing.iter().map(|(_, e)| *e).collect();
    let why = format!(
        "plugin {} failed to load and no version of it is serving: {}",
        names.join(", "),
        errors.join("; ")
    );
    let failing = failing
        .iter()
        .map(|(t, e)| json!({ "type": t, "error": e }))
        .collect();
    Err((why, failing))
}

/// Why this process is not ready: answered 503 with `{"error": why, …details}`.
pub struct Unready {
    why: String,
    /// A JSON object.
    details: Value,
}

impl IntoResponse for Unready {
    fn into_response(mut self) -> Response {
        if let Some(map) = self.details.as_object_mut() {
            map.insert("error".into(), self.why.into());
        }
        (StatusCode::SERVICE_UNAVAILABLE, Json(self.details)).into_response()
    }
}

/// `GET /metrics`: Prometheus text exposition (see [`crate::metrics`]), with the
/// scrape-time gauges (task queue depth from one grouped count, plugin states) refreshed.
pub async fn metrics(State(app): State<App>) -> impl IntoResponse {
    refresh_gauges(&app).await;
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        crate::metrics::render(),
    )
}

/// Sets the gauges that are read at scrape time: task queue depth, plugin states.
async fn refresh_gauges(app: &App) {
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
}

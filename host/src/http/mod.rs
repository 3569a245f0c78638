//! The HTTP surface: provider callbacks under `/notify`, the merchant and ops API under
//! `/api`, and health checks. Handlers are thin: they parse the request, call one
//! function of the library, and shape its answer.

use std::net::SocketAddr;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Json, Router};

use crate::app::App;

mod admin;
mod auth;
mod notify;
mod orders;

/// Largest JSON body `/api` accepts.
const MAX_API_BODY: usize = 1024 * 1024;

/// The whole router.
pub fn router(app: App) -> Router {
    let api = Router::new()
        .route("/orders", post(orders::create))
        .route("/orders/{out_trade_no}", get(orders::show))
        .route("/admin/notifications", get(admin::list_notifications))
        .route("/admin/notifications/{id}", get(admin::show_notification))
        .route("/admin/notifications/{id}/replay", post(admin::replay))
        .route("/admin/plugins", get(admin::plugins))
        .route("/admin/plugins/reload", post(admin::reload_plugins))
        .route("/admin/collections/{collection}/{id}", get(admin::document))
        .route("/admin/tasks", get(admin::tasks))
        .route("/admin/tasks/{id}/retry", post(admin::retry_task))
        .layer(middleware::from_fn_with_state(
            app.clone(),
            auth::require_api_auth,
        ))
        .layer(DefaultBodyLimit::max(MAX_API_BODY));
    Router::new()
        .route("/notify/{provider}", post(notify::receive))
        .route(
            "/notify/{provider}/{account}",
            post(notify::receive_for_account),
        )
        .nest("/api", api)
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(app)
}

/// Serves `app` on `listener` until `shutdown` resolves.
pub async fn serve(
    app: App,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(app).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

async fn readyz(State(app): State<App>) -> Response {
    match app.store.get_notification(0).await {
        Ok(_) => Json(serde_json::json!({
            "database": app.store.backend(),
            "plugins": app.plugins.status().iter().filter(|p| p.loaded).count(),
        }))
        .into_response(),
        Err(e) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("database unreachable: {e}"),
        )
        .into_response(),
    }
}

/// An `/api` error: a status and `{"error": "…"}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    /// An error with this status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    /// 500, logged.
    pub fn internal(e: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %e, "api request failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

//! The HTTP surface: provider callbacks under `/notify`, the merchant and ops API under
//! `/api`, and health checks. Handlers are thin: they parse the request, call one
//! function of the library, and shape its answer.

use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{middleware, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use tower_http::timeout::TimeoutLayer;

use crate::app::App;

mod admin;
mod audit;
mod auth;
pub mod console;
mod error;
pub mod events;
mod health;
pub mod hosts;
mod notify;
mod orders;
mod refunds;
mod shadow;
mod sse;
mod stage;
mod throttle;

pub use error::ApiError;

/// Largest JSON body `/api` accepts.
const MAX_API_BODY: usize = 1024 * 1024;

/// Longest a request may take from its head being read to its answer being ready,
/// slow body uploads included: past it the client gets 408 and its connection is freed.
/// Generous next to the handlers' own time limit (`plugins.max_timeout_ms`, 30 s by
/// default). A notification is processed in a task of its own (see `notify.rs`), so this
/// limit, like a client that hangs up, only ends the wait for the answer, never the
/// processing half-way.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest a client may take to send a request's head (request line and headers), and
/// how long an idle keep-alive connection is kept: slow-loris clients are cut off.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(15);

/// Most header lines one request may carry (hyper's default is 100).
pub const MAX_HEADERS: usize = 64;

/// Largest request head (request line + headers), and read buffer, in bytes; a larger
/// head is answered 431. (hyper's default is ~400 KiB.)
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// How long shutdown waits for requests in flight before it gives up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// The HTTP server's limits on clients. [`Limits::default`] is what [`serve`] uses:
/// [`HEADER_READ_TIMEOUT`], [`REQUEST_TIMEOUT`], [`MAX_HEADERS`], [`MAX_HEAD_BYTES`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// See [`HEADER_READ_TIMEOUT`].
    pub header_read_timeout: Duration,
    /// See [`REQUEST_TIMEOUT`].
    pub request_timeout: Duration,
    /// See [`MAX_HEADERS`].
    pub max_headers: usize,
    /// See [`MAX_HEAD_BYTES`] (hyper allows no less than 8 KiB).
    pub max_head_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: HEADER_READ_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
            max_headers: MAX_HEADERS,
            max_head_bytes: MAX_HEAD_BYTES,
        }
    }
}

/// The whole router.
pub fn router(app: App) -> Router {
    let api = Router::new()
        .route("/orders", post(orders::create).get(orders::list))
        .route("/orders/{out_trade_no}", get(orders::show))
        .route("/orders/{out_trade_no}/events", get(events::events))
        .route(
            "/orders/{out_trade_no}/refunds",
            get(refunds::list).post(refunds::create),
        )
        .route("/orders/{out_trade_no}/pay", post(orders::pay))
        .route("/orders/{out_trade_no}/close", post(orders::close))
        .route("/admin/notifications", get(admin::list_notifications))
        .route("/admin/notifications/{id}", get(admin::show_notification))
        .route("/admin/notifications/{id}/replay", post(admin::replay))
        .route("/admin/notifications/replay", post(admin::replay_failed))
        .route("/admin/reconcile", post(admin::reconcile))
        .route("/admin/plugins", get(admin::plugins))
        .route("/admin/plugins/reload", post(admin::reload_plugins))
        .route("/admin/plugins/history", get(admin::plugin_history))
        .route("/admin/plugins/{plugin_type}/shadow", get(shadow::show))
        .route("/admin/plugins/{plugin_type}/promote", post(stage::promote))
        .route(
            "/admin/plugins/{plugin_type}/rollback",
            post(stage::rollback),
        )
        .route("/admin/collections/{collection}/{id}", get(admin::document))
        .route("/admin/orders/{out_trade_no}/writes", get(audit::writes))
        .route("/admin/tasks", get(admin::tasks))
        .route("/admin/tasks/{id}/retry", post(admin::retry_task))
        .layer(middleware::from_fn_with_state(
            app.clone(),
            auth::require_api_auth,
        ))
        .layer(DefaultBodyLimit::max(MAX_API_BODY));
    let limiter = std::sync::Arc::new(throttle::RejectionLimiter::new(
        app.config.server.max_rejections_per_minute,
    ));
    let notify = Router::new()
        .route(
            "/notify/{provider}",
            post(notify::receive).get(notify::check_url),
        )
        .route(
            "/notify/{provider}/{account}",
            post(notify::receive_for_account).get(notify::check_url_for_account),
        )
        .layer(axum::Extension(limiter));
    Router::new()
        .merge(notify)
        .nest("/api", api)
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .merge(console::router(app.clone()))
        .with_state(app)
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets requests in flight
/// finish (up to 30 s).
///
/// HTTP/1.1 only, with limits `axum::serve` cannot be given (it runs hyper without a
/// timer, so a client could hold a connection forever by sending its headers a byte at a
/// time, or nothing at all): [`HEADER_READ_TIMEOUT`], [`MAX_HEADERS`], [`MAX_HEAD_BYTES`];
/// [`REQUEST_TIMEOUT`] bounds the rest of a request. (Payment providers call over
/// HTTP/1.1; a TLS-terminating proxy in front speaks HTTP/1.1 to us as well.)
pub async fn serve(
    app: App,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_limits(app, listener, shutdown, Limits::default()).await
}

/// [`serve`] with other [`Limits`] (tests use short timeouts).
pub async fn serve_with_limits(
    app: App,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    limits: Limits,
) -> std::io::Result<()> {
    // Order-event streams never end on their own: they end when shutdown begins, so
    // that the graceful shutdown below is not held up by watching clients.
    let (stopping, stop_signal) = tokio::sync::watch::channel(false);
    // The names the console (and `/api` without a token) answer to, on the port actually
    // bound (the configured one may be 0).
    let bound = listener.local_addr().unwrap_or(app.config.server.listen);
    let hosts = std::sync::Arc::new(hosts::AllowedHosts::new(
        bound,
        &app.config.server.allowed_hosts,
    ));
    let router = router(app)
        .layer(axum::Extension(hosts))
        .layer(axum::Extension(sse::Shutdown(stop_signal)))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_head_bytes.max(8192));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        // The extractor `ConnectInfo<SocketAddr>` reads this extension, as with
        // `into_make_service_with_connect_info`.
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                tower::ServiceExt::oneshot(router.clone(), req)
            });
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = stopping.send(true);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after {SHUTDOWN_GRACE:?}; stopping anyway");
    }
    Ok(())
}

/// A read of the store for an `/api` request, given up after `[database] timeout_secs`
/// (then [`ApiError::Store`] answers 503): a frozen database never ends a query.
pub(crate) async fn read<T>(
    app: &App,
    work: impl std::future::Future<Output = Result<T, crate::store::StoreError>>,
) -> Result<T, crate::store::StoreError> {
    crate::store::within(app.config.database.timeout(), work).await
}

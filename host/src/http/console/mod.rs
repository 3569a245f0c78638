//! The web console, `/console`: what ops look at and re-drive, in a browser.
//!
//! Server-rendered HTML (maud templates escape everything they print); the read-only
//! pages work with JavaScript off. Only the live view uses a script (an `EventSource` on
//! [`live`]'s stream), served from `/console/static/` so the Content-Security-Policy
//! allows no inline script at all.
//!
//! Sign-in ([`session`]) takes the API token once and sets a session cookie; the session
//! lives in the database, so it works across host processes and signing out revokes it.
//! Every button that changes something is a POST form carrying the session's CSRF token,
//! and POSTs must also come from this origin (the [`session::CheckedPost`] extractor);
//! GETs change nothing. Actions call what the admin API calls:
//! [`crate::pipeline::Pipeline::replay`], [`crate::plugins::Registry::scan`],
//! [`crate::plugins::Registry::promote`] and `rollback`,
//! [`crate::store::Store::retry_task`], then answer with a page showing the result (a
//! redirect to it where the result is in the database, so reloading the page does not
//! repeat the action).
//!
//! One file per concern, each with its pages and its buttons: [`orders`] (with its
//! handler writes, [`writes`]), [`notifications`] (with the attention page), [`plugins`],
//! [`tasks`]; the parts they
//! share in [`widgets`], the frame in [`layout`].

use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::app::App;

pub mod format;
mod layout;
mod live;
mod notifications;
mod orders;
mod payments;
mod plugins;
mod session;
mod shadow;
mod tasks;
mod widgets;
mod writes;

pub use layout::{bare_page, page, Nav, PageError, PageQuery};
pub use session::{Session, COOKIE};

/// The console's stylesheet.
const CSS: &str = include_str!("console.css");
/// The live view's script.
const LIVE_JS: &str = include_str!("live.js");

/// Every console route, to merge into the host's router.
pub fn router(app: App) -> Router<App> {
    let signed_in = Router::new()
        .route(
            "/console",
            get(|| async { Redirect::to("/console/orders") }),
        )
        .route(
            "/console/",
            get(|| async { Redirect::to("/console/orders") }),
        )
        .route("/console/orders", get(orders::list))
        .route("/console/orders/{out_trade_no}", get(orders::show))
        .route(
            "/console/orders/{out_trade_no}/refund",
            post(payments::refund),
        )
        .route(
            "/console/orders/{out_trade_no}/close",
            post(payments::close),
        )
        .route("/console/notifications", get(notifications::list))
        .route("/console/notifications/{id}", get(notifications::show))
        .route("/console/attention", get(notifications::attention))
        .route(
            "/console/notifications/{id}/replay",
            post(notifications::replay),
        )
        .route("/console/plugins", get(plugins::show))
        .route("/console/plugins/reload", post(plugins::reload))
        .route(
            "/console/plugins/{plugin_type}/promote",
            post(plugins::promote),
        )
        .route(
            "/console/plugins/{plugin_type}/rollback",
            post(plugins::rollback),
        )
        .route(
            "/console/plugins/{plugin_type}/history",
            get(plugins::history),
        )
        .route("/console/plugins/{plugin_type}/shadow", get(shadow::show))
        .route("/console/tasks", get(tasks::list))
        .route("/console/tasks/{id}/retry", post(tasks::retry))
        .route("/console/live", get(live::view))
        .route("/console/live/events", get(live::events))
        .route("/console/logout", post(session::logout))
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            session::require_session,
        ));
    let open = Router::new()
        .route(
            "/console/login",
            get(session::login_form).post(session::login),
        )
        .route("/console/static/console.css", get(css))
        .route("/console/static/live.js", get(live_js));
    signed_in
        .merge(open)
        .route_layer(middleware::from_fn_with_state(app, session::front_gate))
        .route_layer(middleware::from_fn(security_headers))
}

/// Headers on every console answer: no caching of pages that show payment data, no
/// framing (clickjacking), scripts and styles only from this origin, and a Referer
/// only to this origin (the POST check reads it when a browser sends no Origin).
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    for (name, value) in [
        (header::CACHE_CONTROL, "no-store"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}

async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS).into_response()
}

async fn live_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        LIVE_JS,
    )
        .into_response()
}

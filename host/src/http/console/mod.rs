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
//! and POSTs must also come from this origin ([`session::check_post`]); GETs change
//! nothing. Actions call what the admin API calls: [`crate::pipeline::Pipeline::replay`],
//! [`crate::plugins::Registry::scan`], [`crate::store::Store::retry_task`].

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup, DOCTYPE};

use crate::app::App;

mod actions;
pub mod format;
mod live;
mod widgets;
mod session;

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
        .route("/console/orders", get(widgets::orders))
        .route("/console/orders/{out_trade_no}", get(widgets::order))
        .route("/console/notifications", get(widgets::notifications))
        .route("/console/notifications/{id}", get(widgets::notification))
        .route("/console/attention", get(widgets::attention))
        .route("/console/notifications/{id}/replay", post(actions::replay))
        .route("/console/plugins", get(widgets::plugins))
        .route("/console/plugins/reload", post(actions::reload))
        .route("/console/tasks", get(widgets::tasks))
        .route("/console/tasks/{id}/retry", post(actions::retry))
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

/// Which section of the navigation a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    /// Orders and an order.
    Orders,
    /// Notifications and one notification.
    Notifications,
    /// What needs attention: refunds that cannot apply, refunds waiting for payments.
    Attention,
    /// Plugins.
    Plugins,
    /// Tasks.
    Tasks,
    /// The live view.
    Live,
}

/// A whole console page: navigation (with the sign-out form), a notice if any, and
/// `body`.
pub fn page(title: &str, nav: Nav, session: &Session, body: Markup) -> Html<String> {
    let link = |href: &str, label: &str, this: Nav| {
        html! {
            @if nav == this {
                a.active href=(href) aria-current="page" { (label) }
            } @else {
                a href=(href) { (label) }
            }
        }
    };
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                (head(title))
                body {
                    header.top {
                        span.brand { "paynotify" }
                        nav {
                            (link("/console/orders", "Orders", Nav::Orders))
                            (link("/console/notifications", "Notifications", Nav::Notifications))
                            (link("/console/attention", "Needs attention", Nav::Attention))
                            (link("/console/plugins", "Plugins", Nav::Plugins))
                            (link("/console/tasks", "Tasks", Nav::Tasks))
                            (link("/console/live", "Live", Nav::Live))
                        }
                        form.signout method="post" action="/console/logout" {
                            input type="hidden" name="csrf" value=(session.csrf_token);
                            button type="submit" id="sign-out" { "Sign out" }
                        }
                    }
                    main {
                        h1 { (title) }
                        (body)
                    }
                    footer { "Times are Asia/Shanghai (UTC+8); hover a time for UTC. Amounts in yuan." }
                }
            }
        }
        .into_string(),
    )
}

/// The `<head>` every console page shares.
fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · paynotify" }
            link rel="stylesheet" href="/console/static/console.css";
        }
    }
}

/// A page outside the signed-in area (sign-in, errors before a session exists).
pub fn bare_page(title: &str, body: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                (head(title))
                body.bare {
                    main {
                        h1 { (title) }
                        (body)
                    }
                }
            }
        }
        .into_string(),
    )
}

/// An error answer as a page: the status, and what went wrong in words.
pub fn error_page(status: StatusCode, message: &str) -> Response {
    if status.is_server_error() {
        tracing::error!(%status, error = %message, "console request failed");
    }
    let title = status.canonical_reason().unwrap_or("Error");
    (
        status,
        bare_page(
            title,
            html! {
                p.error role="alert" { (message) }
                p { a href="/console/orders" { "Back to the console" } }
            },
        ),
    )
        .into_response()
}

/// A storage failure: 503 when the database as a whole cannot serve now (nothing was
/// changed; try again), else 500.
pub fn store_failure(e: crate::store::StoreError) -> Response {
    tracing::error!(error = %e, "console request failed");
    if e.is_unavailable() {
        return error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "The database cannot serve this now ({e}). Nothing was changed; try again later."
            ),
        );
    }
    error_page(StatusCode::INTERNAL_SERVER_ERROR, &format!("database: {e}"))
}

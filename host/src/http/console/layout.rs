//! The frame of every console page (navigation, sign-out, footer), and how the console
//! fails: [`PageError`], answered as an error page.

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Query};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};

use super::Session;
use crate::store::StoreError;

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

/// A query string, or 400 "Malformed query string." as a page.
#[derive(FromRequestParts)]
#[from_request(via(Query), rejection(PageError))]
pub struct PageQuery<T>(pub T);

/// A console request that failed: answered as a page saying what went wrong.
#[derive(Debug)]
pub enum PageError {
    /// This status, and what went wrong in words.
    Status(StatusCode, String),
    /// A storage failure: 503 when the database as a whole cannot serve now (nothing was
    /// changed; try again), else 500. Logged.
    Store(StoreError),
}

impl PageError {
    /// 400.
    pub fn bad_request(message: impl Into<String>) -> PageError {
        PageError::Status(StatusCode::BAD_REQUEST, message.into())
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> PageError {
        PageError::Status(StatusCode::FORBIDDEN, message.into())
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> PageError {
        PageError::Status(StatusCode::NOT_FOUND, message.into())
    }
}

impl From<StoreError> for PageError {
    fn from(e: StoreError) -> PageError {
        PageError::Store(e)
    }
}

impl From<QueryRejection> for PageError {
    fn from(_: QueryRejection) -> PageError {
        PageError::bad_request("Malformed query string.")
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            PageError::Status(status, message) => error_page(status, &message),
            PageError::Store(e) => {
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
        }
    }
}

/// An error answer as a page: the status, and what went wrong in words.
fn error_page(status: StatusCode, message: &str) -> Response {
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

//! The console's read-only pages: orders, an order, notifications, a notification,
//! plugins, tasks. Each reads the store and renders; none changes anything.
//!
//! Big lists page by keyset ("older" / "newer" links carry the last / first row's key),
//! one row more than shown is read to know whether another page follows, and filters
//! travel in the links, so paging works with JavaScript off.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use maud::{html, Markup};
use serde::Deserialize;

use super::format::{pretty_json, text_opt, time, time_opt, yuan};
use super::{error_page, page, store_failure, Nav, Session};
use crate::app::App;
use crate::plugins::manifest::HTTP_IN_PAYMENT_WARNING;
use crate::plugins::ScanReport;
use crate::store::console::{Keyset, TaskFilter};
use crate::store::{
    status, NotificationFilter, NotificationRecord, Order, OrderCursor, OrderFilter, TaskRecord,
    Verdict,
};

/// Rows per page unless `limit` says otherwise.
const PAGE: u32 = 50;
/// Most rows per page.
const MAX_PAGE: u32 = 200;

/// Every verdict, for the filter.
const VERDICTS: [Verdict; 10] = Verdict::ALL;

/// Every task status, for the filter.
const TASK_STATUSES: [&str; 4] = ["pending", "running", "done", "dead"];

/// A query parameter, with an empty value (a blank filter field) taken as absent.
fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// One page of a newest-first list, and whether there are pages either side.
struct Paged<T> {
    rows: Vec<T>,
    has_older: bool,
    has_newer: bool,
}

/// Cuts the extra row read past `limit` (at the far end from the cursor) and says which
/// neighbouring pages exist.
fn paged<T, C>(mut rows: Vec<T>, page: &Keyset<C>, limit: u32) -> Paged<T> {
    let limit = limit as usize;
    let more = rows.len() > limit;
    match page {
        Keyset::Newer(_) => {
            if more {
                rows.drain(..rows.len() - limit);
            }
            Paged {
                rows,
                has_older: true,
                has_newer: more,
            }
        }
        Keyset::Older(_) | Keyset::Newest => {
            rows.truncate(limit);
            Paged {
                rows,
                has_older: more,
                has_newer: matches!(page, Keyset::Older(_)),
            }
        }
    }
}

/// `?{filters}&{key}={value}`: a paging link that keeps the filters.
fn link(path: &str, filters: &[(&str, Option<&str>)], key: &str, value: &str) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in filters {
        if let Some(v) = v {
            q.append_pair(k, v);
        }
    }
    q.append_pair(key, value);
    format!("{path}?{}", q.finish())
}

/// The "newer / older" links under a list.
fn pager(newer: Option<String>, older: Option<String>) -> Markup {
    html! {
        nav.pager aria-label="pages" {
            @if let Some(h) = newer { a.newer rel="prev" href=(h) { "‹ Newer" } }
            @else { span.muted { "‹ Newer" } }
            " "
            @if let Some(h) = older { a.older rel="next" href=(h) { "Older ›" } }
            @else { span.muted { "Older ›" } }
        }
    }
}

/// A hidden CSRF field for a form of this session.
pub fn csrf_field(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf_token); }
}

fn status_badge(code: i32) -> Markup {
    let name = status::name(code);
    html! { span class={"badge status-" (name)} { (name) } }
}

fn handler_badge(s: &str) -> Markup {
    html! { span class={"badge handler-" (s)} { (s) } }
}

fn verdict_badge(v: Verdict) -> Markup {
    html! { span class={"badge verdict-" (v.as_str())} { (v.as_str()) } }
}

fn order_link(no: &str) -> Markup {
    html! { a href={"/console/orders/" (urlencode(no))} { (no) } }
}

/// A path segment, percent-encoded.
pub(super) fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

// ---------------------------------------------------------------------------------------
// Orders

/// Query of `/console/orders`.
#[derive(Debug, Deserialize, Default)]
pub struct OrdersQuery {
    status: Option<String>,
    #[serde(rename = "type")]
    order_type: Option<String>,
    user: Option<String>,
    older: Option<String>,
    newer: Option<String>,
    limit: Option<u32>,
}

/// `GET /console/orders`: newest first, filtered by status / type / user.
pub async fn orders(
    State(app): State<App>,
    Extension(session): Extension<Session>,
    query: Result<Query<OrdersQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error_page(StatusCode::BAD_REQUEST, "Malformed query string.");
    };
    let status_code = match given(&q.status).map(|s| (s, status::parse(s))) {
        None => None,
        Some((_, Some(c))) => Some(c),
        Some((s, None)) => {
            return error_page(StatusCode::BAD_REQUEST, &format!("Unknown status `{s}`."))
        }
    };
    let cursor = |c: Option<&str>| c.map(OrderCursor::parse).transpose();
    let keyset = match (cursor(given(&q.older)), cursor(given(&q.newer))) {
        (Ok(Some(c)), _) => Keyset::Older(c),
        (Ok(None), Ok(Some(c))) => Keyset::Newer(c),
        (Ok(None), Ok(None)) => Keyset::Newest,
        (Err(m), _) | (_, Err(m)) => return error_page(StatusCode::BAD_REQUEST, &m),
    };
    let limit = q.limit.unwrap_or(PAGE).clamp(1, MAX_PAGE);
    let filter = OrderFilter {
        status: status_code,
        order_type: given(&q.order_type).map(str::to_owned),
        user_id: given(&q.user).map(str::to_owned),
        before: None,
        limit: limit + 1,
    };
    let rows = match app.store.page_orders(&filter, &keyset).await {
        Ok(r) => r,
        Err(e) => return store_failure(e),
    };
    let p = paged(rows, &keyset, limit);
    let limit_text = limit.to_string();
    let filters = [
        ("status", given(&q.status)),
        ("type", given(&q.order_type)),
        ("user", given(&q.user)),
        ("limit", q.limit.is_some().then_some(limit_text.as_str())),
    ];
    let newer = p.has_newer.then(|| p.rows.first()).flatten().map(|o| {
        link(
            "/console/orders",
            &filters,
            "newer",
            &OrderCursor::after(o).to_string(),
        )
    });
    let older = p.has_older.then(|| p.rows.last()).flatten().map(|o| {
        link(
            "/console/orders",
            &filters,
            "older",
            &OrderCursor::after(o).to_string(),
        )
    });
    let types: Vec<String> = app
        .plugins
        .status()
        .into_iter()
        .map(|s| s.plugin_type)
        .collect();
    let body = html! {
        form.filters method="get" action="/console/orders" {
            label { "Status "
                select name="status" {
                    option value="" { "any" }
                    @for (code, name) in status::ALL {
                        option value=(name) selected[status_code == Some(code)] { (name) }
                    }
                }
            }
            label { "Type "
                input name="type" list="order-types" value=(given(&q.order_type).unwrap_or("")) size="12";
                datalist id="order-types" { @for t in &types { option value=(t) {} } }
            }
            label { "User " input name="user" value=(given(&q.user).unwrap_or("")) size="14"; }
            button type="submit" { "Filter" }
            " " a href="/console/orders" { "clear" }
        }
        (orders_table(&p.rows))
        (pager(newer, older))
    };
    page("Orders", Nav::Orders, &session, body).into_response()
}

fn orders_table(rows: &[Order]) -> Markup {
    html! {
        @if rows.is_empty() {
            p.empty { "No orders." }
        } @else {
            table #orders {
                thead { tr {
                    th { "Order" } th { "Type" } th { "User" } th.num { "Amount" } th { "Status" }
                    th { "Handler" } th { "Provider" } th { "Created" } th { "Paid" }
                } }
                tbody {
                    @for o in rows {
                        tr data-order=(o.out_trade_no) {
                            td { (order_link(&o.out_trade_no)) }
                            td { (o.order_type) }
                            td { (o.user_id) }
                            td.num { (yuan(o.total_fee)) }
                            td { (status_badge(o.status)) }
                            td { (handler_badge(&o.handler_status)) }
                            td { (o.provider) "/" (o.account) }
                            td { (time(o.created_at)) }
                            td { (time_opt(o.pay_date)) }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /console/orders/{out_trade_no}`: the order, its notifications and its tasks.
pub async fn order(
    State(app): State<App>,
    Extension(session): Extension<Session>,
    Path(no): Path<String>,
) -> Response {
    let order = match app.store.get_order(&no).await {
        Ok(Some(o)) => o,
        Ok(None) => return error_page(StatusCode::NOT_FOUND, &format!("No order `{no}`.")),
        Err(e) => return store_failure(e),
    };
    let history = app
        .store
        .list_notifications(&NotificationFilter {
            out_trade_no: Some(no.clone()),
            limit: 100,
            ..Default::default()
        })
        .await;
    let tasks = app
        .store
        .page_tasks(
            &TaskFilter {
                out_trade_no: Some(no.clone()),
                limit: 100,
                ..Default::default()
            },
            &Keyset::Newest,
        )
        .await;
    let (history, tasks) = match (history, tasks) {
        (Ok(h), Ok(t)) => (h, t),
        (Err(e), _) | (_, Err(e)) => return store_failure(e),
    };
    let o = &order;
    let body = html! {
        table.fields #order {
            tr { th { "Order" } td #out-trade-no { (o.out_trade_no) } }
            tr { th { "Type" } td { (o.order_type) } }
            tr { th { "Amount" } td #amount { (yuan(o.total_fee)) } }
            tr { th { "User" } td { (o.user_id) } }
            tr { th { "Provider / account" } td { (o.provider) " / " (o.account) } }
            tr { th { "Status" } td #status { (status_badge(o.status)) } }
            tr { th { "Transaction" } td { (text_opt(o.transaction_id.as_deref())) } }
            tr { th { "Paid (provider)" } td { (time_opt(o.pay_date)) } }
            tr { th { "Notified" } td { (time_opt(o.notify_date)) } }
            tr { th { "Created" } td { (time(o.created_at)) } }
            tr { th { "Updated" } td { (time(o.updated_at)) } }
            tr { th { "Handler status" } td #handler-status { (handler_badge(&o.handler_status)) } }
            tr { th { "Handler build" } td { (text_opt(o.handler_version.as_deref())) } }
            tr { th { "Paid by notification" } td {
                @if let Some(id) = o.paid_notification_id {
                    a href={"/console/notifications/" (id)} { "#" (id) }
                } @else { span.muted { "—" } }
            } }
        }
        h2 { "Handler result" }
        @if let Some(r) = &o.handler_result { pre #handler-result { (pretty_json(r)) } }
        @else { p.muted { "None yet." } }
        h2 { "Custom" }
        pre { (pretty_json(&o.custom)) }
        @if let Some(d) = &o.original_data {
            details { summary { "Verified notification fields (original_data)" } pre { (pretty_json(d)) } }
        }
        h2 { "Notifications" }
        (notifications_table(&history, &session))
        h2 { "Tasks" }
        (tasks_table(&tasks, &session))
    };
    page(&format!("Order {no}"), Nav::Orders, &session, body).into_response()
}

// ---------------------------------------------------------------------------------------
// Notifications

/// Query of `/console/notifications`.
#[derive(Debug, Deserialize, Default)]
pub struct NotificationsQuery {
    provider: Option<String>,
    verdict: Option<String>,
    order: Option<String>,
    older: Option<i64>,
    newer: Option<i64>,
    limit: Option<u32>,
}

/// `GET /console/notifications`: newest first, filtered by provider / verdict / order.
pub async fn notifications(
    State(app): State<App>,
    Extension(session): Extension<Session>,
    query: Result<Query<NotificationsQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error_page(StatusCode::BAD_REQUEST, "Malformed query string.");
    };
    let verdict = match given(&q.verdict).map(|v| (v, Verdict::parse(v))) {
        None => None,
        Some((_, Some(v))) => Some(v),
        Some((v, None)) => {
            return error_page(StatusCode::BAD_REQUEST, &format!("Unknown verdict `{v}`."))
        }
    };
    let keyset = match (q.older, q.newer) {
        (Some(id), _) => Keyset::Older(id),
        (None, Some(id)) => Keyset::Newer(id),
        (None, None) => Keyset::Newest,
    };
    let limit = q.limit.unwrap_or(PAGE).clamp(1, MAX_PAGE);
    let filter = NotificationFilter {
        provider: given(&q.provider).map(str::to_owned),
        out_trade_no: given(&q.order).map(str::to_owned),
        verdict,
        limit: limit + 1,
        ..Default::default()
    };
    let rows = match app.store.page_notifications(&filter, &keyset).await {
        Ok(r) => r,
        Err(e) => return store_failure(e),
    };
    let p = paged(rows, &keyset, limit);
    let limit_text = limit.to_string();
    let filters = [
        ("provider", given(&q.provider)),
        ("verdict", given(&q.verdict)),
        ("order", given(&q.order)),
        ("limit", q.limit.is_some().then_some(limit_text.as_str())),
    ];
    let path = "/console/notifications";
    let newer = p
        .has_newer
        .then(|| p.rows.first())
        .flatten()
        .map(|n| link(path, &filters, "newer", &n.id.to_string()));
    let older = p
        .has_older
        .then(|| p.rows.last())
        .flatten()
        .map(|n| link(path, &filters, "older", &n.id.to_string()));
    let providers: Vec<&str> = crate::providers::ProviderKind::ALL
        .iter()
        .map(|k| k.as_str())
        .collect();
    let body = html! {
        form.filters method="get" action=(path) {
            label { "Provider "
                select name="provider" {
                    option value="" { "any" }
                    @for name in &providers {
                        option value=(name) selected[given(&q.provider) == Some(*name)] { (name) }
                    }
                }
            }
            label { "Verdict "
                select name="verdict" {
                    option value="" { "any" }
                    @for v in VERDICTS {
                        option value=(v.as_str()) selected[verdict == Some(v)] { (v.as_str()) }
                    }
                }
            }
            label { "Order " input name="order" value=(given(&q.order).unwrap_or("")) size="16"; }
            button type="submit" { "Filter" }
            " " a href=(path) { "clear" }
        }
        (notifications_table(&p.rows, &session))
        (pager(newer, older))
    };
    page("Notifications", Nav::Notifications, &session, body).into_response()
}

/// Rows per section of the attention page.
const ATTENTION_ROWS: u32 = 100;

/// `GET /console/attention`: notifications whose processing never ended (still
/// `received` after a minute: the background job re-drives them), and verified refunds
/// that moved money at the provider but changed nothing here — those that can never apply
/// as they stand (ops must act), and those waiting for their order's payment (applied
/// when it commits; the provider retries them meanwhile).
pub async fn attention(State(app): State<App>, Extension(session): Extension<Session>) -> Response {
    let section = |verdict: Verdict| NotificationFilter {
        verdict: Some(verdict),
        limit: ATTENTION_ROWS,
        ..Default::default()
    };
    let unapplied = app
        .store
        .list_notifications(&section(Verdict::RefundUnapplied))
        .await;
    let pending = app
        .store
        .list_notifications(&section(Verdict::RefundPending))
        .await;
    let stuck_filter = NotificationFilter {
        until: Some(crate::stuck::stuck_before(crate::store::now_ms())),
        ..section(Verdict::Received)
    };
    let stuck = app.store.list_notifications(&stuck_filter).await;
    let (unapplied, pending, stuck) = match (unapplied, pending, stuck) {
        (Ok(u), Ok(p), Ok(s)) => (u, p, s),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return store_failure(e),
    };
    let more = |rows: &[NotificationRecord], verdict: Verdict| {
        html! {
            @if rows.len() as u32 >= ATTENTION_ROWS {
                p { a href={"/console/notifications?verdict=" (verdict.as_str())} { "All of them ›" } }
            }
        }
    };
    let body = html! {
        section #stuck {
            h2 { "Notifications stuck as received (" (stuck.len()) ")" }
            p.muted {
                "Stored over a minute ago, and their processing never ended (the host stopped, or the "
                "database failed before the verdict was written). Every host re-drives them in the "
                "background, exactly once; any listed here are waiting for it or keep failing."
            }
            (notifications_table(&stuck, &session))
            (more(&stuck, Verdict::Received))
        }
        section #refund-unapplied {
            h2 { "Refunds that cannot apply (" (unapplied.len()) ")" }
            p.muted {
                "Verified refunds whose money went back at the provider but that change nothing here "
                "(closed order, more than remains, another transaction, a mismatched total). "
                "Fix the order, then replay the notification."
            }
            (notifications_table(&unapplied, &session))
            (more(&unapplied, Verdict::RefundUnapplied))
        }
        section #refund-pending {
            h2 { "Refunds waiting for their payment (" (pending.len()) ")" }
            p.muted {
                "Verified refunds of orders that are unknown or unpaid. The provider was told to retry; "
                "each is applied as soon as its order's payment commits."
            }
            (notifications_table(&pending, &session))
            (more(&pending, Verdict::RefundPending))
        }
    };
    page("Needs attention", Nav::Attention, &session, body).into_response()
}

/// Notifications with their verdicts, reasons and a replay button each.
fn notifications_table(rows: &[NotificationRecord], session: &Session) -> Markup {
    html! {
        @if rows.is_empty() {
            p.empty { "No notifications." }
        } @else {
            table.notifications {
                thead { tr {
                    th { "#" } th { "Received" } th { "Provider" } th { "Order" } th { "Verdict" }
                    th { "Reason" } th { "" }
                } }
                tbody {
                    @for n in rows {
                        tr data-notification=(n.id) {
                            td { a href={"/console/notifications/" (n.id)} { (n.id) } }
                            td { (time(n.received_at)) }
                            td { (n.provider) @if let Some(a) = &n.account { "/" (a) } }
                            td { @if let Some(no) = &n.out_trade_no { (order_link(no)) } @else { span.muted { "—" } } }
                            td.verdict { (verdict_badge(n.verdict)) }
                            td.reason { (text_opt(n.reason.as_deref())) }
                            td { (replay_button(n.id, session)) }
                        }
                    }
                }
            }
        }
    }
}

fn replay_button(id: i64, session: &Session) -> Markup {
    html! {
        form.inline method="post" action={"/console/notifications/" (id) "/replay"} {
            (csrf_field(session))
            button type="submit" class="replay" title="Run this notification through the pipeline again" { "Replay" }
        }
    }
}

/// Query of `/console/notifications/{id}`.
#[derive(Debug, Deserialize, Default)]
pub struct NotificationQuery {
    /// Set by the replay button's redirect.
    replayed: Option<String>,
}

/// `GET /console/notifications/{id}`: one notification, its headers and raw body.
pub async fn notification(
    State(app): State<App>,
    Extension(session): Extension<Session>,
    Path(id): Path<i64>,
    query: Result<Query<NotificationQuery>, QueryRejection>,
) -> Response {
    let replayed = query.is_ok_and(|Query(q)| q.replayed.is_some());
    let n = match app.store.get_notification(id).await {
        Ok(Some(n)) => n,
        Ok(None) => return error_page(StatusCode::NOT_FOUND, &format!("No notification {id}.")),
        Err(e) => return store_failure(e),
    };
    let body = html! {
        @if replayed {
            p.notice role="status" id="replay-result" {
                "Replayed: verdict " (verdict_badge(n.verdict))
                @if let Some(r) = &n.reason { " — " (r) }
            }
        }
        table.fields {
            tr { th { "Id" } td { (n.id) } }
            tr { th { "Received" } td { (time(n.received_at)) } }
            tr { th { "Processed" } td { (time_opt(n.processed_at)) } }
            tr { th { "Provider / account" } td { (n.provider) " / " (text_opt(n.account.as_deref())) } }
            tr { th { "From" } td { (text_opt(n.remote_addr.as_deref())) } }
            tr { th { "Order" } td { @if let Some(no) = &n.out_trade_no { (order_link(no)) } @else { span.muted { "—" } } } }
            tr { th { "Verdict" } td #verdict { (verdict_badge(n.verdict)) } }
            tr { th { "Reason" } td #reason { (text_opt(n.reason.as_deref())) } }
        }
        p { (replay_button(n.id, &session)) }
        h2 { "Headers" }
        table.headers {
            @for (k, v) in &n.headers { tr { th { (k) } td { (v) } } }
        }
        h2 { "Body" @if n.truncated { " (truncated at the size limit)" } }
        pre.body { (String::from_utf8_lossy(&n.body)) }
    };
    page(
        &format!("Notification {id}"),
        Nav::Notifications,
        &session,
        body,
    )
    .into_response()
}

// ---------------------------------------------------------------------------------------
// Plugins

/// `GET /console/plugins`.
pub async fn plugins(State(app): State<App>, Extension(session): Extension<Session>) -> Response {
    plugins_page(&app, &session, None).into_response()
}

/// The plugins page, with the report of a rescan just made if any.
pub fn plugins_page(
    app: &App,
    session: &Session,
    report: Option<&ScanReport>,
) -> axum::response::Html<String> {
    let list = app.plugins.status();
    let body = html! {
        @if let Some(r) = report {
            div.notice role="status" id="reload-result" {
                "Plugins directory rescanned: "
                (r.loaded.len()) " loaded, " (r.unchanged.len()) " unchanged, "
                (r.failed.len()) " failed, " (r.removed.len()) " removed."
                @if !r.loaded.is_empty() { " Loaded: " (r.loaded.join(", ")) "." }
                @for (t, e) in &r.failed { br; "Failed: " (t) ": " (e) }
            }
        }
        form.inline method="post" action="/console/plugins/reload" {
            (csrf_field(session))
            button type="submit" id="reload" { "Reload plugins" }
        }
        @if list.is_empty() {
            p.empty { "No plugins loaded." }
        } @else {
            table #plugins {
                thead { tr {
                    th { "Type" } th { "Serving" } th { "Name" } th { "Version" } th { "SHA-256" }
                    th.num { "Size" } th { "Loaded" } th { "Payment calls" } th { "Grants" } th { "Last load error" }
                } }
                tbody {
                    @for p in &list {
                        tr data-plugin=(p.plugin_type) {
                            td { (p.plugin_type) }
                            td { @if p.loaded { span.badge.ok { "yes" } } @else { span.badge.bad { "no" } } }
                            td { (text_opt(p.name.as_deref())) }
                            td.version { (text_opt(p.version.as_deref())) }
                            td.hash { @if let Some(h) = &p.sha256 { code title=(h) { (h.get(..16).unwrap_or(h)) "…" } } @else { span.muted { "—" } } }
                            td.num { @if let Some(s) = p.size { (s) " B" } @else { span.muted { "—" } } }
                            td.loaded-at { (time_opt(p.loaded_at)) }
                            td.breaker {
                                @if let Some(ms) = p.payment_timeout_ms { "limit " (ms) " ms" }
                                @if let Some(until) = p.breaker.failing_fast_until {
                                    br; span.badge.bad { "failing fast" } " until " (time(until))
                                    " (" (p.breaker.timeouts_in_a_row) " timeouts in a row)"
                                } @else if p.breaker.timeouts_in_a_row > 0 {
                                    br; (p.breaker.timeouts_in_a_row) " timeouts in a row"
                                }
                            }
                            td.grants {
                                "db: " (p.collections.join(", "))
                                @if !p.http_origins.is_empty() { br; "http: " (p.http_origins.join(", ")) }
                                @if p.http_in_payment { br; span.badge.warn.http-in-payment title=(HTTP_IN_PAYMENT_WARNING) { "http in payment" } }
                                @if p.crypto { br; "crypto: notify key" }
                            }
                            td.error { @if let Some(e) = &p.last_error { (e) " " (time_opt(p.last_error_at)) } @else { span.muted { "—" } } }
                        }
                    }
                }
            }
        }
    };
    page("Plugins", Nav::Plugins, session, body)
}

// ---------------------------------------------------------------------------------------
// Tasks

/// Query of `/console/tasks`.
#[derive(Debug, Deserialize, Default)]
pub struct TasksQuery {
    status: Option<String>,
    older: Option<i64>,
    newer: Option<i64>,
    limit: Option<u32>,
    /// Set by the retry button's redirect.
    retried: Option<i64>,
}

/// `GET /console/tasks`: newest first, by status.
pub async fn tasks(
    State(app): State<App>,
    Extension(session): Extension<Session>,
    query: Result<Query<TasksQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error_page(StatusCode::BAD_REQUEST, "Malformed query string.");
    };
    let status = given(&q.status);
    if let Some(s) = status {
        if !TASK_STATUSES.contains(&s) {
            return error_page(
                StatusCode::BAD_REQUEST,
                &format!("Unknown task status `{s}`."),
            );
        }
    }
    let keyset = match (q.older, q.newer) {
        (Some(id), _) => Keyset::Older(id),
        (None, Some(id)) => Keyset::Newer(id),
        (None, None) => Keyset::Newest,
    };
    let limit = q.limit.unwrap_or(PAGE).clamp(1, MAX_PAGE);
    let filter = TaskFilter {
        status: status.map(str::to_owned),
        out_trade_no: None,
        limit: limit + 1,
    };
    let rows = match app.store.page_tasks(&filter, &keyset).await {
        Ok(r) => r,
        Err(e) => return store_failure(e),
    };
    let retried = match q.retried {
        Some(id) => match app.store.get_task(id).await {
            Ok(t) => t,
            Err(e) => return store_failure(e),
        },
        None => None,
    };
    let p = paged(rows, &keyset, limit);
    let limit_text = limit.to_string();
    let filters = [
        ("status", status),
        ("limit", q.limit.is_some().then_some(limit_text.as_str())),
    ];
    let path = "/console/tasks";
    let newer = p
        .has_newer
        .then(|| p.rows.first())
        .flatten()
        .map(|t| link(path, &filters, "newer", &t.id.to_string()));
    let older = p
        .has_older
        .then(|| p.rows.last())
        .flatten()
        .map(|t| link(path, &filters, "older", &t.id.to_string()));
    let body = html! {
        @if let Some(t) = &retried {
            p.notice role="status" id="retry-result" {
                "Task " (t.id) " put back in the queue with fresh attempts; it is now "
                span class={"badge task-" (t.status)} { (t.status) } "."
            }
        }
        nav.tabs {
            a href=(path) class=[status.is_none().then_some("active")] { "all" }
            @for s in TASK_STATUSES {
                a href={(path) "?status=" (s)} class=[(status == Some(s)).then_some("active")] { (s) }
            }
        }
        (tasks_table(&p.rows, &session))
        (pager(newer, older))
    };
    page("Tasks", Nav::Tasks, &session, body).into_response()
}

/// Tasks with a retry button on those that can be re-driven (dead or pending).
fn tasks_table(rows: &[TaskRecord], session: &Session) -> Markup {
    html! {
        @if rows.is_empty() {
            p.empty { "No tasks." }
        } @else {
            table.tasks {
                thead { tr {
                    th { "#" } th { "Plugin" } th { "Task" } th { "Order" } th { "Status" }
                    th.num { "Attempts" } th { "Next run" } th { "Last error" } th { "Created" } th { "" }
                } }
                tbody {
                    @for t in rows {
                        tr data-task=(t.id) {
                            td { (t.id) }
                            td { (t.plugin) }
                            td { (t.name) }
                            td { @if let Some(no) = &t.out_trade_no { (order_link(no)) } @else { span.muted { "—" } } }
                            td.status { span class={"badge task-" (t.status)} { (t.status) } }
                            td.num.attempts { (t.attempts) }
                            td { (time(t.run_at)) }
                            td.error { (text_opt(t.last_error.as_deref())) }
                            td { (time(t.created_at)) }
                            td {
                                @if t.status == "dead" || t.status == "pending" {
                                    form.inline method="post" action={"/console/tasks/" (t.id) "/retry"} {
                                        (csrf_field(session))
                                        button type="submit" class="retry" { "Retry now" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_keep_the_rows_next_to_the_cursor() {
        // Older / first page: rows newest first, the extra one is the oldest.
        let p = paged(vec![9, 8, 7], &Keyset::<i64>::Newest, 2);
        assert_eq!(
            (p.rows, p.has_older, p.has_newer),
            (vec![9, 8], true, false)
        );
        let p = paged(vec![5, 4], &Keyset::Older(6), 2);
        assert_eq!(
            (p.rows, p.has_older, p.has_newer),
            (vec![5, 4], false, true)
        );
        // Newer page: the extra one is the newest, farthest from the cursor.
        let p = paged(vec![9, 8, 7], &Keyset::Newer(6), 2);
        assert_eq!((p.rows, p.has_older, p.has_newer), (vec![8, 7], true, true));
        let p = paged(vec![8, 7], &Keyset::Newer(6), 2);
        assert_eq!(
            (p.rows, p.has_older, p.has_newer),
            (vec![8, 7], true, false)
        );
    }

    #[test]
    fn links_keep_filters_and_encode() {
        assert_eq!(
            link(
                "/console/orders",
                &[
                    ("status", Some("paid")),
                    ("user", None),
                    ("type", Some("a b&c"))
                ],
                "older",
                "17:R1"
            ),
            "/console/orders?status=paid&type=a+b%26c&older=17%3AR1"
        );
        assert_eq!(urlencode("R 1/2"), "R%201%2F2");
    }
}

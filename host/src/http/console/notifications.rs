//! The console's notifications: the list, one notification with its raw body, the
//! page of those that need attention, and the replay button.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::{Html, Redirect};
use maud::{html, Markup};
use serde::Deserialize;

use super::format::{text_opt, time, time_opt};
use super::session::CheckedPost;
use super::widgets::{
    choice, csrf_field, given, id_keyset, order_link, page_size, paged, verdict_badge, Paged,
};
use super::{page, Nav, PageError, PageQuery, Session};
use crate::app::App;
use crate::store::{NotificationFilter, NotificationRecord, Verdict};

/// Where the list is.
const PATH: &str = "/console/notifications";

/// Rows per section of the attention page.
const ATTENTION_ROWS: u32 = 100;

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

impl NotificationsQuery {
    /// The page of notifications asked for; 400 for an unknown verdict.
    async fn read(&self, app: &App) -> Result<Paged<NotificationRecord>, PageError> {
        let keyset = id_keyset(self.older, self.newer);
        let rows = app
            .store
            .console()
            .page_notifications(&self.filter()?, &keyset)
            .await?;
        Ok(paged(rows, &keyset, page_size(self.limit)))
    }

    /// The store's filter (one row more than the page shows).
    fn filter(&self) -> Result<NotificationFilter, PageError> {
        let verdict = given(&self.verdict)
            .map(|v| {
                Verdict::parse(v)
                    .ok_or_else(|| PageError::bad_request(format!("Unknown verdict `{v}`.")))
            })
            .transpose()?;
        Ok(NotificationFilter {
            provider: given(&self.provider).map(str::to_owned),
            out_trade_no: given(&self.order).map(str::to_owned),
            verdict,
            limit: page_size(self.limit) + 1,
            ..Default::default()
        })
    }
}

/// `GET /console/notifications`: newest first, filtered by provider / verdict / order.
pub async fn list(
    State(app): State<App>,
    session: Session,
    PageQuery(q): PageQuery<NotificationsQuery>,
) -> Result<Html<String>, PageError> {
    let notifications = q.read(&app).await?;
    let body = list_body(&q, &notifications, &session);
    Ok(page("Notifications", Nav::Notifications, &session, body))
}

/// The filter form, the notifications and the pager.
fn list_body(q: &NotificationsQuery, p: &Paged<NotificationRecord>, session: &Session) -> Markup {
    // Valid: the page was read with it.
    let verdict = given(&q.verdict).and_then(Verdict::parse);
    let providers = crate::providers::ProviderKind::ALL.map(|k| k.as_str());
    let filters = [
        ("provider", given(&q.provider)),
        ("verdict", given(&q.verdict)),
        ("order", given(&q.order)),
    ];
    html! {
        form.filters method="get" action=(PATH) {
            (choice("Provider", "provider", providers, given(&q.provider)))
            (choice("Verdict", "verdict", Verdict::ALL.map(Verdict::as_str), verdict.map(Verdict::as_str)))
            label { "Order " input name="order" value=(given(&q.order).unwrap_or("")) size="16"; }
            button type="submit" { "Filter" }
            " " a href=(PATH) { "clear" }
        }
        (notifications_table(&p.rows, session))
        (p.pager(PATH, &filters, q.limit, |n| n.id.to_string()))
    }
}

/// A section of the attention page: the notifications of one verdict.
struct Section {
    /// Its element id.
    id: &'static str,
    heading: &'static str,
    /// What its notifications are, and what becomes of them.
    about: &'static str,
    verdict: Verdict,
}

/// The attention page, top to bottom.
const SECTIONS: [Section; 3] = [
    Section {
        id: "stuck",
        heading: "Notifications stuck as received",
        about: "Stored over a minute ago, and their processing never ended (the host stopped, or the \
            database failed before the verdict was written). Every host re-drives them in the \
            background, exactly once; any listed here are waiting for it or keep failing.",
        verdict: Verdict::Received,
    },
    Section {
        id: "refund-unapplied",
        heading: "Refunds that cannot apply",
        about: "Verified refunds whose money went back at the provider but that change nothing here \
            (closed order, more than remains, another transaction, a mismatched total). \
            Fix the order, then replay the notification.",
        verdict: Verdict::RefundUnapplied,
    },
    Section {
        id: "refund-pending",
        heading: "Refunds waiting for their payment",
        about: "Verified refunds of orders that are unknown or unpaid. The provider was told to retry; \
            each is applied as soon as its order's payment commits.",
        verdict: Verdict::RefundPending,
    },
];

/// `GET /console/attention`: notifications whose processing never ended (still
/// `received` after a minute: the background job re-drives them), and verified refunds
/// that moved money at the provider but changed nothing here — those that can never apply
/// as they stand (ops must act), and those waiting for their order's payment (applied
/// when it commits; the provider retries them meanwhile).
pub async fn attention(
    State(app): State<App>,
    session: Session,
) -> Result<Html<String>, PageError> {
    let stuck_before = crate::stuck::stuck_before(crate::time::now_ms());
    let mut sections = Vec::with_capacity(SECTIONS.len());
    for section in &SECTIONS {
        let filter = NotificationFilter {
            verdict: Some(section.verdict),
            // A received notification is stuck only once it has waited long enough.
            until: (section.verdict == Verdict::Received).then_some(stuck_before),
            limit: ATTENTION_ROWS,
            ..Default::default()
        };
        let rows = app.store.list_notifications(&filter).await?;
        sections.push(section.render(&rows, &session));
    }
    let body = html! { @for s in &sections { (s) } };
    Ok(page("Needs attention", Nav::Attention, &session, body))
}

impl Section {
    /// The section with `rows`, and a link to the whole list when it is full.
    fn render(&self, rows: &[NotificationRecord], session: &Session) -> Markup {
        html! {
            section id=(self.id) {
                h2 { (self.heading) " (" (rows.len()) ")" }
                p.muted { (self.about) }
                (notifications_table(rows, session))
                @if rows.len() as u32 >= ATTENTION_ROWS {
                    p { a href={"/console/notifications?verdict=" (self.verdict.as_str())} { "All of them ›" } }
                }
            }
        }
    }
}

/// Notifications with their verdicts, reasons and a replay button each.
pub fn notifications_table(rows: &[NotificationRecord], session: &Session) -> Markup {
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
                            td { (order_link(n.out_trade_no.as_deref())) }
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

/// The button that runs notification `id` through the pipeline again.
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

/// The stored notification `id`; 404 if there is none.
async fn find(app: &App, id: i64) -> Result<NotificationRecord, PageError> {
    app.store
        .get_notification(id)
        .await?
        .ok_or_else(|| PageError::not_found(format!("No notification {id}.")))
}

/// `GET /console/notifications/{id}`: one notification, its headers and raw body.
pub async fn show(
    State(app): State<App>,
    session: Session,
    Path(id): Path<i64>,
    query: Result<Query<NotificationQuery>, QueryRejection>,
) -> Result<Html<String>, PageError> {
    let replayed = query.is_ok_and(|Query(q)| q.replayed.is_some());
    let n = find(&app, id).await?;
    let body = notification_body(&n, replayed, &session);
    Ok(page(
        &format!("Notification {id}"),
        Nav::Notifications,
        &session,
        body,
    ))
}

/// The notification's fields, a replay button, its headers and body; first, after a
/// replay, what the replay found.
fn notification_body(n: &NotificationRecord, replayed: bool, session: &Session) -> Markup {
    html! {
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
            tr { th { "Order" } td { (order_link(n.out_trade_no.as_deref())) } }
            tr { th { "Verdict" } td #verdict { (verdict_badge(n.verdict)) } }
            tr { th { "Reason" } td #reason { (text_opt(n.reason.as_deref())) } }
        }
        p { (replay_button(n.id, session)) }
        h2 { "Headers" }
        table.headers {
            @for (k, v) in &n.headers { tr { th { (k) } td { (v) } } }
        }
        h2 { "Body" @if n.truncated { " (truncated at the size limit)" } }
        pre.body { (String::from_utf8_lossy(&n.body)) }
    }
}

/// `POST /console/notifications/{id}/replay`: runs the stored notification through the
/// pipeline again (as `POST /api/admin/notifications/{id}/replay` does), then shows it.
pub async fn replay(
    State(app): State<App>,
    Path(id): Path<i64>,
    _: CheckedPost,
) -> Result<Redirect, PageError> {
    let record = find(&app, id).await?;
    // The same entry as the admin API: a stored query answer is verified as one.
    let p = crate::replay::replay(&app, &record).await;
    tracing::info!(id, verdict = ?p.verdict, "notification replayed from the console");
    Ok(Redirect::to(&format!(
        "/console/notifications/{id}?replayed=1"
    )))
}

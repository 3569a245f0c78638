//! The console's plugins page, its reload button, and the history of each type.

use axum::extract::{Path, State};
use axum::response::Html;
use maud::{html, Markup};
use serde::Deserialize;

use super::format::{text_opt, time, time_opt};
use super::session::CheckedPost;
use super::widgets::{csrf_field, id_keyset, page_size, paged, urlencode, Paged};
use super::{page, Nav, PageError, PageQuery, Session};
use crate::app::App;
use crate::plugins::manifest::HTTP_IN_PAYMENT_WARNING;
use crate::plugins::ScanReport;
use crate::store::{PluginEventKind, PluginEventRecord};

/// `GET /console/plugins`.
pub async fn show(State(app): State<App>, session: Session) -> Html<String> {
    plugins_page(&app, &session, None)
}

/// `POST /console/plugins/reload`: rescans the plugins directory now (as
/// `POST /api/admin/plugins/reload` does) and shows what the scan did.
pub async fn reload(State(app): State<App>, CheckedPost(session, _): CheckedPost) -> Html<String> {
    let report = app.plugins.rescan().await;
    tracing::info!(loaded = ?report.loaded, failed = report.failed.len(), "plugins rescanned from the console");
    plugins_page(&app, &session, Some(&report))
}

/// The plugins page, with the report of a rescan just made if any.
fn plugins_page(app: &App, session: &Session, report: Option<&ScanReport>) -> Html<String> {
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
                    th { "Signer" } th.num { "Size" } th { "Loaded" } th { "Payment calls" } th { "Grants" }
                    th { "Last load error" } th { "" }
                } }
                tbody {
                    @for p in &list {
                        tr data-plugin=(p.plugin_type) {
                            td { (p.plugin_type) }
                            td {
                                @if p.loaded { span.badge.ok { "yes" } } @else { span.badge.bad { "no" } }
                                @if let Some(since) = p.loading_since { br; span.badge.warn.loading { "loading" } " since " (time(since)) }
                            }
                            td { (text_opt(p.name.as_deref())) }
                            td.version { (text_opt(p.version.as_deref())) }
                            td.hash { (short_hash(p.sha256.as_deref())) }
                            td.signer { (text_opt(p.signer.as_ref().map(ToString::to_string).as_deref())) }
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
                                "db: " @if p.collections.is_empty() { span.muted { "none" } } @else { (p.collections.join(", ")) }
                                @if !p.http_origins.is_empty() { br; "http: " (p.http_origins.join(", ")) }
                                @if p.http_in_payment { br; span.badge.warn.http-in-payment title=(HTTP_IN_PAYMENT_WARNING) { "http in payment" } }
                                @if p.crypto { br; "crypto: notify key" }
                            }
                            td.error { @if let Some(e) = &p.last_error { (e) " " (time_opt(p.last_error_at)) } @else { span.muted { "—" } } }
                            td { a.history href=(history_path(&p.plugin_type)) { "History" } }
                        }
                    }
                }
            }
        }
    };
    page("Plugins", Nav::Plugins, session, body)
}

/// The first 16 hex digits of a SHA-256, the whole in `title`; a dash when there is none.
fn short_hash(sha256: Option<&str>) -> Markup {
    html! { @if let Some(h) = sha256 { code title=(h) { (h.get(..16).unwrap_or(h)) "…" } } @else { span.muted { "—" } } }
}

/// Where the history of `plugin_type` is.
fn history_path(plugin_type: &str) -> String {
    format!("/console/plugins/{}/history", urlencode(plugin_type))
}

/// Query of `/console/plugins/{type}/history`.
#[derive(Debug, Deserialize, Default)]
pub struct HistoryQuery {
    older: Option<i64>,
    newer: Option<i64>,
    limit: Option<u32>,
}

/// `GET /console/plugins/{type}/history`: every load, replacement, unload and refusal of
/// the type's builds, by every host, newest first; 400 for a name no plugin can have.
pub async fn history(
    State(app): State<App>,
    session: Session,
    Path(plugin_type): Path<String>,
    PageQuery(q): PageQuery<HistoryQuery>,
) -> Result<Html<String>, PageError> {
    if !crate::names::is_simple_name(&plugin_type) {
        return Err(PageError::bad_request(
            "A plugin type is letters, digits, - and _.",
        ));
    }
    let keyset = id_keyset(q.older, q.newer);
    let rows = app
        .store
        .plugin_history()
        .page_plugin_history(Some(&plugin_type), &keyset, page_size(q.limit) + 1)
        .await?;
    let events = paged(rows, &keyset, page_size(q.limit));
    let body = history_body(&plugin_type, &events, q.limit);
    Ok(page(
        &format!("History of {plugin_type}"),
        Nav::Plugins,
        &session,
        body,
    ))
}

/// The events of one type and the pager.
fn history_body(plugin_type: &str, p: &Paged<PluginEventRecord>, limit: Option<u32>) -> Markup {
    html! {
        p { a href="/console/plugins" { "‹ All plugins" } }
        @if p.rows.is_empty() {
            p.empty { "No history for " (plugin_type) "." }
        } @else {
            table #plugin-history {
                thead { tr {
                    th { "#" } th { "Time" } th { "Event" } th { "Version" } th { "SHA-256" }
                    th { "Signer" } th { "Reason" } th { "Host" }
                } }
                tbody {
                    @for e in &p.rows {
                        tr data-event=(e.id) {
                            td { (e.id) }
                            td { (time(e.at)) }
                            td.event { (event_badge(e.event)) }
                            td.version { (text_opt(e.version.as_deref())) }
                            td.hash { (short_hash(e.sha256.as_deref())) }
                            td.signer { (text_opt(e.signer.as_deref())) }
                            td.error { (text_opt(e.reason.as_deref())) }
                            td.host { (e.host) }
                        }
                    }
                }
            }
        }
        (p.pager(&history_path(plugin_type), &[], limit, |e| e.id.to_string()))
    }
}

/// An event as a badge: refusals stand out, unloads warn.
fn event_badge(kind: PluginEventKind) -> Markup {
    let tone = match kind {
        PluginEventKind::Loaded | PluginEventKind::Replaced => "ok",
        PluginEventKind::Unloaded => "warn",
        PluginEventKind::Refused => "bad",
    };
    html! { span class={"badge " (tone) " event-" (kind.as_str())} { (kind.as_str()) } }
}

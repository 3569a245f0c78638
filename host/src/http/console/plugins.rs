//! The console's plugins page and its reload button.

use axum::extract::State;
use axum::response::Html;
use maud::html;

use super::format::{text_opt, time, time_opt};
use super::session::CheckedPost;
use super::widgets::csrf_field;
use super::{page, Nav, Session};
use crate::app::App;
use crate::plugins::manifest::HTTP_IN_PAYMENT_WARNING;
use crate::plugins::ScanReport;

/// `GET /console/plugins`.
pub async fn show(State(app): State<App>, session: Session) -> Html<String> {
    plugins_page(&app, &session, None)
}

/// `POST /console/plugins/reload`: rescans the plugins directory now (as
/// `POST /api/admin/plugins/reload` does) and shows what the scan did.
pub async fn reload(State(app): State<App>, CheckedPost(session): CheckedPost) -> Html<String> {
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

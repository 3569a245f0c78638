//! The console's shadow page of a type: what its staged candidate's shadow runs found
//! (the same report as `GET /api/admin/plugins/{type}/shadow`).

use axum::extract::{Path, State};
use axum::response::Html;
use maud::{html, Markup};

use super::format::{pretty_json, text_opt, time};
use super::widgets::order_link;
use super::{page, Nav, PageError, Session};
use crate::app::App;
use crate::shadow::{BuildReport, ShadowReport};

/// `GET /console/plugins/{type}/shadow`.
pub async fn show(
    State(app): State<App>,
    session: Session,
    Path(plugin_type): Path<String>,
) -> Result<Html<String>, PageError> {
    if !crate::names::is_simple_name(&plugin_type) {
        return Err(PageError::bad_request(
            "A plugin type is letters, digits, - and _.",
        ));
    }
    let report = crate::shadow::report(&app.shadows, app.store.as_ref(), &plugin_type).await?;
    Ok(page(
        &format!("Shadow runs of {plugin_type}"),
        Nav::Plugins,
        &session,
        report_body(&report),
    ))
}

/// The builds, each candidate's counts and its first differences.
fn report_body(r: &ShadowReport) -> Markup {
    html! {
        p { a href="/console/plugins" { "‹ All plugins" } }
        dl.facts {
            dt { "Serving" } dd.serving { (text_opt(r.serving.as_deref())) }
            dt { "Staged candidate" } dd.candidate { (text_opt(r.candidate.as_deref())) }
            dt { "Sample" } dd { (format!("{:.0} %", r.sample * 100.0)) " of payments and refunds" }
        }
        @if r.builds.is_empty() {
            p.empty {
                "No shadow runs yet. Stage a candidate as " code { (r.plugin_type) ".next.wasm" }
                " (with its " code { (r.plugin_type) ".next.toml" } "): it runs beside the serving build on every payment and refund, and never commits."
            }
        }
        @for b in &r.builds { (build_section(b)) }
    }
}

fn build_section(b: &BuildReport) -> Markup {
    let s = &b.summary;
    html! {
        section.shadow-build data-sha256=(s.build.candidate_sha256) {
            h2 {
                (s.build.candidate_build)
                @if b.staged { " " span.badge.ok { "staged now" } }
            }
            p { "Beside " (s.build.serving_build) ", " (time(s.first_at)) " – " (time(s.last_at)) "." }
            table.counts {
                thead { tr { th.num { "Runs" } th.num { "Same" } th.num { "Different" } th.num { "Failed" } } }
                tbody { tr {
                    td.num.runs { (s.counts.runs) }
                    td.num.same { (s.counts.same) }
                    td.num.different { (s.counts.different) }
                    td.num.failed { (s.counts.failed) }
                } }
            }
            @if !b.differences.is_empty() {
                h3 { "First differences and failures" }
                table.differences {
                    thead { tr { th { "Order" } th { "Call" } th { "Result" } th { "What differs (serving, then candidate)" } } }
                    tbody {
                        @for d in &b.differences {
                            tr {
                                td { (order_link(Some(&d.out_trade_no))) }
                                td { (d.call) @if let Some(r) = &d.out_refund_no { " " (r) } }
                                td {
                                    @if d.result == "failed" { span.badge.bad { "failed" } }
                                    @else { span.badge.warn { (d.result) } }
                                }
                                td { pre.diff { (pretty_json(&d.diff)) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

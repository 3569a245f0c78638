//! The console's plugins page, its reload button, each type's Promote and Roll back
//! buttons (confirmed, CSRF-checked forms), and the history of each type.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, Redirect};
use maud::{html, Markup};
use serde::Deserialize;

use super::format::{text_opt, time, time_opt};
use super::session::CheckedPost;
use super::widgets::{csrf_field, id_keyset, page_size, paged, urlencode, Paged};
use super::{page, Nav, PageError, PageQuery, Session};
use crate::app::App;
use crate::plugins::manifest::HTTP_IN_PAYMENT_WARNING;
use crate::plugins::{CandidateStatus, PluginStatus, ScanReport, StageError};
use crate::store::{PluginEventKind, PluginEventRecord};

/// The form value of the confirmation box of Promote and Roll back.
const CONFIRMED: &str = "yes";

/// Query of `/console/plugins`: after a promote or rollback, which and of what type.
#[derive(Debug, Deserialize, Default)]
pub struct ShowQuery {
    /// `promoted` or `rolled_back`.
    done: Option<String>,
    /// The type it was done to.
    #[serde(rename = "type")]
    plugin_type: Option<String>,
}

/// `GET /console/plugins`.
pub async fn show(
    State(app): State<App>,
    session: Session,
    PageQuery(q): PageQuery<ShowQuery>,
) -> Html<String> {
    let notice = done_notice(&app, &q);
    plugins_page(&app, &session, None, notice)
}

/// `POST /console/plugins/{type}/promote`: makes the type's staged candidate serve (as
/// `POST /api/admin/plugins/{type}/promote` does), then shows the plugins page.
pub async fn promote(
    State(app): State<App>,
    Path(plugin_type): Path<String>,
    CheckedPost(_, fields): CheckedPost,
) -> Result<Redirect, PageError> {
    confirmed(&fields)?;
    let swap = app.plugins.promote(&plugin_type).await.map_err(failed)?;
    tracing::info!(plugin = %plugin_type, serving = %swap.serving, "candidate promoted from the console");
    Ok(Redirect::to(&done_path("promoted", &plugin_type)))
}

/// `POST /console/plugins/{type}/rollback`: puts the type's previous build back (as
/// `POST /api/admin/plugins/{type}/rollback` does), then shows the plugins page.
pub async fn rollback(
    State(app): State<App>,
    Path(plugin_type): Path<String>,
    CheckedPost(_, fields): CheckedPost,
) -> Result<Redirect, PageError> {
    confirmed(&fields)?;
    let swap = app.plugins.rollback(&plugin_type).await.map_err(failed)?;
    tracing::info!(plugin = %plugin_type, serving = %swap.serving, "rolled back from the console");
    Ok(Redirect::to(&done_path("rolled_back", &plugin_type)))
}

/// Where a promote or rollback sends the browser: the plugins page saying what was done
/// (a redirect, so reloading the page does not do it again).
fn done_path(done: &str, plugin_type: &str) -> String {
    format!(
        "/console/plugins?done={done}&type={}",
        urlencode(plugin_type)
    )
}

/// The notice of a promote or rollback just done: what serves the type now.
fn done_notice(app: &App, q: &ShowQuery) -> Option<String> {
    let t = q
        .plugin_type
        .as_deref()
        .filter(|t| crate::names::is_simple_name(t))?;
    let what = match q.done.as_deref()? {
        "promoted" => "promoted",
        "rolled_back" => "rolled back",
        _ => return None,
    };
    let serving = app
        .plugins
        .get(t)
        .map_or_else(|| "nothing".to_owned(), |p| p.build_id());
    Some(format!("{t} {what}: {serving} serves it now."))
}

/// The form must have its confirmation box ticked (checked here, not only by the browser).
fn confirmed(fields: &std::collections::BTreeMap<String, String>) -> Result<(), PageError> {
    if fields.get("confirm").map(String::as_str) == Some(CONFIRMED) {
        Ok(())
    } else {
        Err(PageError::Status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Not confirmed: tick the box to confirm. Nothing was done.".into(),
        ))
    }
}

/// What a refused promote or rollback shows: its status and reason.
fn failed(e: StageError) -> PageError {
    match e {
        StageError::BadType(m) => PageError::bad_request(format!("Nothing was done: {m}")),
        StageError::Conflict(m) => {
            PageError::Status(StatusCode::CONFLICT, format!("Nothing was done: {m}"))
        }
        StageError::Files(m) => PageError::Status(StatusCode::INTERNAL_SERVER_ERROR, m),
    }
}

/// `POST /console/plugins/reload`: rescans the plugins directory now (as
/// `POST /api/admin/plugins/reload` does) and shows what the scan did.
pub async fn reload(State(app): State<App>, CheckedPost(session, _): CheckedPost) -> Html<String> {
    let report = app.plugins.rescan().await;
    tracing::info!(loaded = ?report.loaded, failed = report.failed.len(), "plugins rescanned from the console");
    plugins_page(&app, &session, Some(&report), None)
}

/// The plugins page, with the report of a rescan just made, or the notice of a promote or
/// rollback, if any.
fn plugins_page(
    app: &App,
    session: &Session,
    report: Option<&ScanReport>,
    notice: Option<String>,
) -> Html<String> {
    let list = app.plugins.status();
    let body = html! {
        @if let Some(n) = notice {
            div.notice role="status" id="stage-result" { (n) }
        }
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
                    th { "Last load error" } th { "Candidate (.next)" } th { "Previous (.prev)" } th { "" }
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
                            td.candidate { (candidate_cell(p, session)) }
                            td.previous { (previous_cell(p, session)) }
                            td {
                                a.history href=(history_path(&p.plugin_type)) { "History" }
                                " · "
                                a.shadow href=(stage_path(&p.plugin_type, "shadow")) { "Shadow runs" }
                            }
                        }
                    }
                }
            }
        }
    };
    page("Plugins", Nav::Plugins, session, body)
}

/// A type's staged candidate: its build, that a new file is loading, or why it failed;
/// with the Promote form when one is loaded.
fn candidate_cell(p: &PluginStatus, session: &Session) -> Markup {
    let Some(c) = &p.candidate else {
        return html! { span.muted { "—" } };
    };
    let CandidateStatus {
        loaded,
        loading_since,
        version,
        sha256,
        last_error,
        ..
    } = c;
    html! {
        @if *loaded {
            span.badge.ok { "staged" } " " (text_opt(version.as_deref())) " " (short_hash(sha256.as_deref()))
            br; "loaded " (time_opt(c.loaded_at))
        }
        @if let Some(since) = loading_since { br; span.badge.warn.loading { "loading" } " since " (time(*since)) }
        @if let Some(e) = last_error { br; span.badge.bad { "failed" } " " (e) " " (time_opt(c.last_error_at)) }
        @if *loaded {
            details.promote id={"promote-" (p.plugin_type)} {
                summary { "Promote…" }
                form method="post" action=(stage_path(&p.plugin_type, "promote")) {
                    (csrf_field(session))
                    label { input type="checkbox" name="confirm" value=(CONFIRMED) required; " I confirm: this build pays " (p.plugin_type) " orders from now on (the serving one is kept as " (p.plugin_type) ".prev.wasm)" }
                    " " button type="submit" class="danger" { "Promote" }
                }
            }
        }
    }
}

/// Whether a type keeps a previous build, with the Roll back form when it does.
fn previous_cell(p: &PluginStatus, session: &Session) -> Markup {
    html! {
        @if p.has_previous {
            "kept"
            details.rollback id={"rollback-" (p.plugin_type)} {
                summary { "Roll back…" }
                form method="post" action=(stage_path(&p.plugin_type, "rollback")) {
                    (csrf_field(session))
                    label { input type="checkbox" name="confirm" value=(CONFIRMED) required; " I confirm: " (p.plugin_type) ".prev.wasm pays " (p.plugin_type) " orders from now on (the serving build becomes the previous one)" }
                    " " button type="submit" class="danger" { "Roll back" }
                }
            }
        } @else {
            span.muted { "—" }
        }
    }
}

/// `/console/plugins/{type}/{action}`.
fn stage_path(plugin_type: &str, action: &str) -> String {
    format!("/console/plugins/{}/{action}", urlencode(plugin_type))
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
    if !crate::plugins::is_history_label(&plugin_type) {
        return Err(PageError::bad_request(
            "A plugin type is letters, digits, - and _ (TYPE.next for its staged candidate).",
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
        PluginEventKind::Loaded
        | PluginEventKind::Replaced
        | PluginEventKind::Promoted
        | PluginEventKind::RolledBack => "ok",
        PluginEventKind::Unloaded => "warn",
        PluginEventKind::Refused => "bad",
    };
    html! { span class={"badge " (tone) " event-" (kind.as_str())} { (kind.as_str()) } }
}

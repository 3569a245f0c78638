//! The live view: notifications as they arrive, over Server-Sent Events.
//!
//! `/console/live` renders the latest notifications and a script that opens
//! `/console/live/events?after={newest id shown}`. That stream polls the notifications
//! table for ids past its cursor every [`POLL`] (as `http/events.rs` polls an order: any
//! host process sharing the database may have stored them, so no in-process channel
//! would see them all). A notification is stored (verdict `received`) before it is
//! processed, so the stream also looks again at the ones it sent as `received` and
//! sends them once more when their verdict is known; the page replaces the row by id.
//! Each event's `id` is the notification id, so a reconnecting `EventSource` resumes
//! (`Last-Event-ID`) where it was.

use std::collections::VecDeque;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::Event;
use axum::response::{Html, Response};
use axum::Extension;
use maud::html;
use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::Instant;

use super::format::{shanghai, time};
use super::widgets::urlencode;
use super::{page, Nav, PageError, Session};
use crate::app::App;
use crate::http::sse::{self, shutting_down, Shutdown};
use crate::store::Keyset;
use crate::store::{NotificationFilter, NotificationRecord, Verdict};
use crate::time::iso_time;

/// How often the stream reads the table.
pub const POLL: Duration = Duration::from_millis(250);

/// Most notifications one poll sends (more wait for the next poll).
const BATCH: u32 = 100;

/// How long a notification sent as `received` is looked at again for its verdict.
const FOLLOW: Duration = Duration::from_secs(60);

/// Most notifications followed at once (the oldest are dropped first).
const MAX_FOLLOWED: usize = 500;

/// Rows the page starts with.
const INITIAL: u32 = 20;

/// `GET /console/live`.
pub async fn view(State(app): State<App>, session: Session) -> Result<Html<String>, PageError> {
    let rows = app
        .store
        .console()
        .page_notifications(
            &NotificationFilter {
                limit: INITIAL,
                ..Default::default()
            },
            &Keyset::Newest,
        )
        .await?;
    Ok(page(
        "Live notifications",
        Nav::Live,
        &session,
        view_body(&rows),
    ))
}

/// The latest notifications, and the script that adds those that come.
fn view_body(rows: &[NotificationRecord]) -> maud::Markup {
    let after = rows.first().map_or(0, |n| n.id);
    html! {
        // Empty until the script runs: with JavaScript off, the <noscript> line speaks.
        p.muted #live-status role="status" {}
        noscript {
            p.notice { "The live view needs JavaScript. Without it, see the "
                a href="/console/notifications" { "notifications list" } " (reload it for new ones)." }
        }
        table #live {
            thead { tr {
                th { "#" } th { "Received" } th { "Provider" } th { "Order" } th { "Verdict" } th { "Reason" }
            } }
            tbody #live-rows data-after=(after) {
                @for n in rows {
                    tr data-id=(n.id) {
                        td { a href={"/console/notifications/" (n.id)} { (n.id) } }
                        td { (time(n.received_at)) }
                        td { (n.provider) }
                        td { @if let Some(no) = &n.out_trade_no { a href={"/console/orders/" (urlencode(no))} { (no) } } }
                        td { span class={"badge verdict-" (n.verdict.as_str())} { (n.verdict.as_str()) } }
                        td { (n.reason.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
        script src="/console/static/live.js" {}
    }
}

/// Query of the stream.
#[derive(Debug, Deserialize, Default)]
pub struct EventsQuery {
    /// Send notifications with an id above this.
    after: Option<i64>,
}

/// `GET /console/live/events`: the stream.
pub async fn events(
    State(app): State<App>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
    shutdown: Option<Extension<Shutdown>>,
) -> Response {
    // A reconnecting EventSource says where it was; that wins over the page's cursor.
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    let after = resume
        .or_else(|| query.ok().and_then(|Query(q)| q.after))
        .unwrap_or(0);
    let feed = Feed {
        app,
        cursor: after,
        followed: VecDeque::new(),
        ready: VecDeque::new(),
        shutdown: shutdown.map(|Extension(s)| s.0),
        failing: false,
    };
    sse::response(futures::stream::unfold(feed, |mut f| async move {
        let event = f.next().await?;
        Some((event, f))
    }))
}

/// One stream's state; dropped (and its polling stopped) when the client goes away.
struct Feed {
    app: App,
    /// The highest id sent.
    cursor: i64,
    /// Sent as `received`: (id, when first sent), oldest first.
    followed: VecDeque<(i64, Instant)>,
    /// Read, not yet sent.
    ready: VecDeque<Event>,
    shutdown: Option<watch::Receiver<bool>>,
    /// The last read failed (logged once per failing stretch).
    failing: bool,
}

impl Feed {
    /// The next event, or `None` to end the stream (server shutting down).
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Some(e);
            }
            if let Err(e) = self.poll().await {
                if !self.failing {
                    tracing::warn!(error = %e, "live view cannot read notifications; retrying");
                    self.failing = true;
                }
            } else {
                self.failing = false;
            }
            if !self.ready.is_empty() {
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = shutting_down(&mut self.shutdown) => return None,
            }
        }
    }

    /// Reads what is new, and the verdicts of followed notifications, into `ready`.
    async fn poll(&mut self) -> Result<(), crate::store::StoreError> {
        let now = Instant::now();
        while self
            .followed
            .front()
            .is_some_and(|(_, since)| now.duration_since(*since) > FOLLOW)
        {
            self.followed.pop_front();
        }
        let mut still = VecDeque::new();
        while let Some((id, since)) = self.followed.pop_front() {
            match self.app.store.get_notification(id).await {
                Ok(Some(n)) if n.verdict != Verdict::Received => self.ready.push_back(event(&n)),
                Ok(Some(_)) => still.push_back((id, since)),
                Ok(None) => {}
                Err(e) => {
                    still.push_back((id, since));
                    still.extend(self.followed.drain(..));
                    self.followed = still;
                    return Err(e);
                }
            }
        }
        self.followed = still;
        let mut fresh = self
            .app
            .store
            .console()
            .page_notifications(
                &NotificationFilter {
                    limit: BATCH,
                    ..Default::default()
                },
                &Keyset::Newer(self.cursor),
            )
            .await?;
        fresh.reverse(); // oldest first
        for n in fresh {
            self.cursor = self.cursor.max(n.id);
            if n.verdict == Verdict::Received {
                if self.followed.len() >= MAX_FOLLOWED {
                    self.followed.pop_front();
                }
                self.followed.push_back((n.id, now));
            }
            self.ready.push_back(event(&n));
        }
        Ok(())
    }
}

/// One notification as an event: JSON with what the page's row shows.
fn event(n: &NotificationRecord) -> Event {
    let data = serde_json::json!({
        "id": n.id,
        "provider": n.provider,
        "account": n.account,
        "received_at": iso_time(n.received_at),
        "received_local": shanghai(n.received_at),
        "out_trade_no": n.out_trade_no,
        "verdict": n.verdict.as_str(),
        "reason": n.reason,
    });
    Event::default().id(n.id.to_string()).data(data.to_string())
}

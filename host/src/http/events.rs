//! `GET /api/orders/{out_trade_no}/events`: watch one order as Server-Sent Events.
//!
//! The first event is the order as it is now; after that, one event each time the order
//! row changes (paid, handler result recorded, closed, refunded…), for as long as the
//! client stays. Each event's `data` is the order JSON of `GET /api/orders/{no}` (with
//! `out_trade_no`, `status`, `handler_status`, …), on the default `message` event type,
//! so a browser's `EventSource.onmessage` sees it. A keep-alive comment every
//! [`KEEP_ALIVE`] keeps proxies from timing the stream out.
//!
//! How changes are seen: each stream reads its order row every [`POLL`] and sends it
//! when it differs from the last one sent. Polling, rather than PostgreSQL
//! `LISTEN/NOTIFY` or an in-process channel, because the change may be made by any host
//! process sharing the database (a notification landing on another instance, the expiry
//! job of a third), on SQLite as on PostgreSQL, and a primary-key read every 250 ms per
//! watcher is cheap. The stream (and its polling) ends when the client disconnects or
//! the server shuts down; it does not end when the order reaches a final state, since a
//! paid order can still be refunded.
//!
//! It is under `/api`, so it needs the bearer token: a checkout page in a browser does
//! not hold that token, so the merchant's backend proxies this stream to its own page.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use tokio::sync::watch;

use super::ApiError;
use crate::app::App;
use crate::store::{Order, Store};

/// How often each stream reads its order.
pub const POLL: Duration = Duration::from_millis(250);

/// How often a keep-alive comment is sent when nothing changed.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Becomes `true` when the server starts shutting down: open streams end then, so that
/// graceful shutdown does not wait for clients that would never leave.
#[derive(Clone)]
pub struct Shutdown(pub watch::Receiver<bool>);

/// `GET /api/orders/{out_trade_no}/events`.
pub async fn events(
    State(app): State<App>,
    Path(out_trade_no): Path<String>,
    shutdown: Option<Extension<Shutdown>>,
) -> Response {
    let order = match app.store.get_order(&out_trade_no).await {
        Ok(Some(o)) => o,
        Ok(None) => {
            return ApiError::not_found(format!("no order `{out_trade_no}`")).into_response()
        }
        Err(e) => return ApiError::internal(e).into_response(),
    };
    let watch = Watcher {
        store: app.store.clone(),
        out_trade_no,
        first: Some(order.clone()),
        last: order,
        shutdown: shutdown.map(|Extension(s)| s.0),
        failing: false,
        _counted: crate::metrics::WatcherGuard::new(),
    };
    let stream = futures::stream::unfold(watch, |mut w| async move {
        let event = w.next().await?;
        Some((Ok::<Event, Infallible>(event), w))
    });
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    // nginx buffers responses by default, which would hold events back; this tells it
    // (and proxies that honour the same header) not to.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// One stream's state. Dropped when the client goes away (axum drops the body), which
/// stops the polling.
struct Watcher {
    store: Arc<dyn Store>,
    out_trade_no: String,
    /// The order as found when the stream opened, not yet sent.
    first: Option<Order>,
    /// The last version sent.
    last: Order,
    /// `None` when the router is served without a shutdown signal.
    shutdown: Option<watch::Receiver<bool>>,
    /// The last read failed (logged once per failing stretch, not every 250 ms).
    failing: bool,
    _counted: crate::metrics::WatcherGuard,
}

impl Watcher {
    /// The next event, or `None` to end the stream.
    async fn next(&mut self) -> Option<Event> {
        if let Some(order) = self.first.take() {
            return Some(event(&order));
        }
        loop {
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = shutting_down(&mut self.shutdown) => return None,
            }
            match self.store.get_order(&self.out_trade_no).await {
                Ok(Some(order)) => {
                    self.recovered();
                    // The whole row, not just `updated_at`: two changes within one
                    // millisecond would share it.
                    if order != self.last {
                        self.last = order;
                        return Some(event(&self.last));
                    }
                }
                // Orders are never deleted; if one is, there is nothing left to watch.
                Ok(None) => return None,
                Err(e) => {
                    // The database is unreachable for now: keep the stream open and
                    // look again; the client sees the change once it is readable.
                    if !self.failing {
                        tracing::warn!(order = %self.out_trade_no, error = %e, "order watch cannot read the order; retrying");
                        self.failing = true;
                    }
                }
            }
        }
    }

    fn recovered(&mut self) {
        if self.failing {
            tracing::info!(order = %self.out_trade_no, "order watch reads the order again");
            self.failing = false;
        }
    }
}

/// Resolves when shutdown has begun (or the server is gone); never without a signal.
async fn shutting_down(signal: &mut Option<watch::Receiver<bool>>) {
    match signal {
        Some(rx) => {
            // An error means the sender is gone: the server has stopped.
            let _ = rx.wait_for(|stopping| *stopping).await;
        }
        None => std::future::pending().await,
    }
}

fn event(order: &Order) -> Event {
    Event::default().json_data(order).unwrap_or_else(|e| {
        // An order always serialises; should it not, say so on the stream rather than
        // end it.
        Event::default().comment(format!("cannot serialise order: {e}"))
    })
}

//! `GET /api/orders/{out_trade_no}/events`: watch one order as Server-Sent Events.
//!
//! The first event is the order as it is now (as of the last poll, when another stream
//! already watches it); after that, one event each time the order row changes (paid,
//! handler result recorded, closed, refunded…), for as long as the client stays. Each
//! event's `data` is the order JSON of `GET /api/orders/{no}` (with
//! `out_trade_no`, `status`, `handler_status`, …), on the default `message` event type,
//! so a browser's `EventSource.onmessage` sees it. A keep-alive comment every
//! `sse::KEEP_ALIVE` keeps proxies from timing the stream out. The stream ends when the
//! client disconnects, the server shuts down, or the order no longer exists; not when
//! the order reaches a final state, since a paid order can still be refunded. While the
//! database cannot be read the stream stays open and catches up once it can.
//!
//! How changes are seen: one [`poller`] per host reads, each [`POLL`], a version of
//! every watched order in one statement, then in full only the orders whose version
//! changed, and wakes the streams of the orders that changed. So a thousand watchers
//! cost one statement four times a second, not four thousand primary-key reads
//! (`cargo bench -p paynotify-tests --bench event_streams` measures the CPU), and
//! several streams on one order share its read. Polling the
//! database, rather than PostgreSQL `LISTEN/NOTIFY` or an in-process channel, because
//! the change may be made by any host process sharing the database (a notification
//! landing on another instance, the expiry job of a third), and on SQLite as on
//! PostgreSQL: SQLite has no notifications across processes, and a notification from
//! the writer would still need every writer of the row (payments, refunds, expiry,
//! handlers' results, several hosts) to send one.
//!
//! How many: at most `[server] max_event_streams` streams open in the host and
//! `max_event_streams_per_address` from one client address ([`slots`]); one more is
//! refused with 429 before anything is read.
//!
//! It is under `/api`, so it needs the bearer token: a checkout page in a browser does
//! not hold that token, so the merchant's backend proxies this stream to its own page.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, State};
use axum::response::sse::Event;
use axum::response::Response;
use axum::Extension;
use tokio::sync::watch;

use super::sse::{self, shutting_down, Shutdown};
use super::ApiError;
use crate::app::App;
use crate::store::{Order, Store};

pub mod poller;
pub mod slots;

use poller::{Poller, Subscription};
use slots::{Slot, Slots};

/// How often the watched orders are read.
pub const POLL: Duration = Duration::from_millis(250);

/// What the streams of one host share: its poller and its count of open streams.
struct Shared {
    poller: Arc<Poller>,
    slots: Arc<Slots>,
}

/// The poller and slots of the host whose database is `store`. Found by store because
/// `App`, cloned into every request, has no place for the HTTP layer's state: a host
/// opens one store, so one per store is one per host, also when a process runs several
/// hosts side by side (the tests do).
fn shared(store: &Arc<dyn Store>) -> (Arc<Poller>, Arc<Slots>) {
    static ALL: Mutex<Vec<Shared>> = Mutex::new(Vec::new());
    let mut all = ALL.lock().unwrap_or_else(PoisonError::into_inner);
    // A stopped host's entry goes with the next stream opened anywhere.
    all.retain(|s| !s.poller.orphaned());
    let found = all.iter().find(|s| s.poller.polls(store));
    if let Some(s) = found {
        return (s.poller.clone(), s.slots.clone());
    }
    let s = Shared {
        poller: Arc::new(Poller::new(store)),
        slots: Arc::default(),
    };
    let both = (s.poller.clone(), s.slots.clone());
    all.push(s);
    both
}

/// `GET /api/orders/{out_trade_no}/events`.
pub async fn events(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(out_trade_no): Path<String>,
    shutdown: Option<Extension<Shutdown>>,
) -> Result<Response, ApiError> {
    let watcher = Watcher::open(&app, peer, &out_trade_no, shutdown).await?;
    Ok(sse::response(futures::stream::unfold(
        watcher,
        |mut w| async move {
            let event = w.next().await?;
            Some((event, w))
        },
    )))
}

/// One stream's state. Dropped when the client goes away (axum drops the body), which
/// unsubscribes from the poller and gives back the stream's slot.
struct Watcher {
    /// The order as found when the stream opened, not yet sent.
    first: Option<Order>,
    /// The last version sent.
    last: Order,
    subscription: Subscription,
    /// `None` when the router is served without a shutdown signal.
    shutdown: Option<watch::Receiver<bool>>,
    _slot: Slot,
    _counted: crate::metrics::WatcherGuard,
}

impl Watcher {
    /// A stream on `out_trade_no` for the client at `peer`: 429 when it may open no more
    /// streams, 404 when there is no such order.
    async fn open(
        app: &App,
        peer: SocketAddr,
        out_trade_no: &str,
        shutdown: Option<Extension<Shutdown>>,
    ) -> Result<Watcher, ApiError> {
        let (poller, slots) = shared(&app.store);
        let server = &app.config.server;
        let slot = slots
            .take(
                peer.ip(),
                server.max_event_streams,
                server.max_event_streams_per_address,
            )
            .map_err(|refused| {
                crate::metrics::event_stream_refused(refused.reason());
                // Debug-formatted: the order number is the caller's text.
                tracing::debug!(%peer, order = ?out_trade_no, "{refused}");
                ApiError::TooManyRequests(refused.to_string())
            })?;
        let no_order = || ApiError::NotFound(format!("no order `{out_trade_no}`"));
        let mut subscription = poller
            .watch(out_trade_no)
            .await
            .map_err(ApiError::internal)?
            .ok_or_else(no_order)?;
        // Only a subscription to an order that exists is handed out.
        let order = subscription.current().ok_or_else(no_order)?;
        Ok(Watcher {
            first: Some(order.clone()),
            last: order,
            subscription,
            shutdown: shutdown.map(|Extension(s)| s.0),
            _slot: slot,
            _counted: crate::metrics::WatcherGuard::new(),
        })
    }

    /// The next event, or `None` to end the stream.
    async fn next(&mut self) -> Option<Event> {
        if let Some(order) = self.first.take() {
            return Some(event(&order));
        }
        loop {
            tokio::select! {
                () = self.subscription.changed() => {}
                () = shutting_down(&mut self.shutdown) => return None,
            }
            // Orders are never deleted; if one is, there is nothing left to watch.
            let order = self.subscription.current()?;
            // The poller wakes us only on a change, but several changes between two
            // looks leave the channel at the latest, which may be what was sent.
            if order != self.last {
                self.last = order;
                return Some(event(&self.last));
            }
        }
    }
}

/// The order as an event: its JSON, as `GET /api/orders/{no}` answers it.
fn event(order: &Order) -> Event {
    Event::default().json_data(order).unwrap_or_else(|e| {
        // An order always serialises; should it not, say so on the stream rather than
        // end it.
        Event::default().comment(format!("cannot serialise order: {e}"))
    })
}

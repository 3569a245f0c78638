//! What the two Server-Sent Events streams share (an order's events in
//! [`super::events`], the console's live view): the shutdown signal that ends them, and
//! the answer that carries them.

use std::convert::Infallible;
use std::time::Duration;

use axum::http::{header, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use tokio::sync::watch;

/// How often a keep-alive comment is sent when nothing changed.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Becomes `true` when the server starts shutting down: open streams end then, so that
/// graceful shutdown does not wait for clients that would never leave.
#[derive(Clone)]
pub struct Shutdown(pub watch::Receiver<bool>);

/// Resolves when shutdown has begun (or the server is gone); never without a signal
/// (a router served without [`super::serve`]).
pub async fn shutting_down(signal: &mut Option<watch::Receiver<bool>>) {
    match signal {
        Some(rx) => {
            // An error means the sender is gone: the server has stopped.
            let _ = rx.wait_for(|stopping| *stopping).await;
        }
        None => std::future::pending().await,
    }
}

/// The answer streaming `events`, with a keep-alive comment every [`KEEP_ALIVE`] so that
/// proxies do not time it out, and never cached or buffered.
pub fn response(events: impl Stream<Item = Event> + Send + 'static) -> Response {
    let mut response = Sse::new(events.map(Ok::<Event, Infallible>))
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

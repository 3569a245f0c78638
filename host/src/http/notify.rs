//! `POST /notify/{provider}[/{account}]`: provider callbacks; `GET` on the same URL is a
//! provider's URL check (WeChat message push), answered by the provider, nothing stored.
//!
//! The query string of a callback is stored with its headers as the pseudo-header
//! [`crate::providers::QUERY_HEADER`] (WeChat's message push signs with it).
//!
//! Before anything is stored: a provider or account name not configured here is answered
//! 404 and forgotten (strangers cannot fill the table by inventing names), and a client
//! address that has had too many notifications fail verification this minute has its
//! next ones verified first and, if they fail too, answered 429 unstored ([`super::throttle`]).
//!
//! The pipeline runs in a task of its own. The request's own future is dropped when
//! [`super::REQUEST_TIMEOUT`] fires (and would be by any server that cancels requests
//! whose client hung up): the processing would stop at whatever await it had reached,
//! leaving the notification `received` until a retry or a replay. Spawned, it runs to its
//! verdict whoever is still listening. Every check of the notification itself (content
//! type, size, signature) is the pipeline's.
//!
//! ## The deadline
//!
//! The answer is waited for at most `[server] notify_timeout_secs` (default 10 s). A
//! database that is frozen, failing over or overloaded would otherwise hold the provider
//! until it gives up on its own, then retries while the first attempt still hangs, and the
//! duplicates pile up. Past the deadline the provider gets its failure answer (503, "retry
//! later"), counted in `paynotify_notify_timeouts_total`; the processing task goes on.
//!
//! So the work may finish after the failure answer went out. That is still exactly once,
//! whichever of the late work and the provider's retry gets there first:
//!
//! - the raw insert had not committed yet: it lands later as a `received` row that the
//!   late work then processes (or, if this process dies first, the stuck-notification job
//!   of any host: [`crate::stuck`]); the retry is a row of its own, processed normally;
//! - the payment had not committed yet: the order is marked paid only if still unpaid,
//!   with the handler's writes, in one transaction (order row locked on PostgreSQL, the
//!   one writer on SQLite). Of the late work and the retry, one pays and runs the handler;
//!   the other finds the order paid and records a `duplicate`, which the provider is
//!   answered with success (nothing runs again). A transaction rolled back instead (its
//!   connection lost) changed nothing, and the retry pays. Refunds alike: one is applied
//!   only if its refund number is not recorded yet, under its order's lock;
//! - the late work finished with the order paid and the provider stopped retrying: the
//!   payment is applied, as it should be (it was verified).
//!
//! The failure answer is therefore never a lie about money: at worst it makes the provider
//! retry a payment that was applied, and the retry is acknowledged as a duplicate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures::StreamExt;

use super::throttle::RejectionLimiter;
use crate::app::App;
use crate::pipeline::{Received, FAILED_VERIFICATION};
use crate::providers::{Answer, Inbound, Provider, ProviderKind};

/// Headers never stored with a notification: credentials, and the marker the host puts
/// on provider query answers it stores itself (a caller must not be able to have its
/// request replayed as one).
const NOT_STORED: &[&str] = &[
    "authorization",
    "cookie",
    "proxy-authorization",
    crate::providers::api::SOURCE_HEADER,
];

/// `/notify/{provider}`.
pub async fn receive(
    State(app): State<App>,
    Extension(limiter): Extension<Arc<RejectionLimiter>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(provider): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let request = Request {
        provider,
        account: None,
        query,
    };
    handle(app, &limiter, peer, request, headers, body).await
}

/// `/notify/{provider}/{account}`.
pub async fn receive_for_account(
    State(app): State<App>,
    Extension(limiter): Extension<Arc<RejectionLimiter>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((provider, account)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let request = Request {
        provider,
        account: Some(account),
        query,
    };
    handle(app, &limiter, peer, request, headers, body).await
}

/// `GET /notify/{provider}`: the provider's URL check.
pub async fn check_url(
    State(app): State<App>,
    Path(provider): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    url_check(&app, &provider, None, query.as_deref())
}

/// `GET /notify/{provider}/{account}`: the provider's URL check.
pub async fn check_url_for_account(
    State(app): State<App>,
    Path((provider, account)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    url_check(&app, &provider, Some(&account), query.as_deref())
}

/// A URL check goes to the provider (WeChat message push: echo `echostr` when signed);
/// a provider without one answers 405. Nothing is stored.
fn url_check(app: &App, provider: &str, account: Option<&str>, query: Option<&str>) -> Response {
    let Some(configured) = ProviderKind::parse(provider).and_then(|k| app.providers.get(k)) else {
        return unrouted("provider");
    };
    if account.is_some_and(|a| !configured.accounts().contains(&a)) {
        return unrouted("account");
    }
    match configured.url_check(account, query.unwrap_or("")) {
        Some(a) => answer(a),
        None => StatusCode::METHOD_NOT_ALLOWED.into_response(),
    }
}

/// What the URL of a callback names.
struct Request {
    provider: String,
    account: Option<String>,
    query: Option<String>,
}

/// The answer to a provider or account name not configured here: nothing is read or
/// stored, and the same answer whichever name was wrong.
fn unrouted(reason: &'static str) -> Response {
    crate::metrics::unrouted(reason);
    (StatusCode::NOT_FOUND, "unknown or unconfigured provider").into_response()
}

async fn handle(
    app: App,
    limiter: &RejectionLimiter,
    peer: SocketAddr,
    request: Request,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Request {
        provider,
        account,
        query,
    } = request;
    let Some((kind, configured)) =
        ProviderKind::parse(&provider).and_then(|k| app.providers.get(k).map(|p| (k, p)))
    else {
        return unrouted("provider");
    };
    if account
        .as_deref()
        .is_some_and(|a| !configured.accounts().contains(&a))
    {
        return unrouted("account");
    }
    let limit = app.config.server.max_body_bytes;
    let (body, truncated) = match read_limited(body, limit).await {
        Ok(b) => b,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read a notification's body");
            return (StatusCode::BAD_REQUEST, "cannot read body").into_response();
        }
    };
    let content_types: Vec<Vec<u8>> = headers
        .get_all(header::CONTENT_TYPE)
        .iter()
        .map(|v| v.as_bytes().to_vec())
        .collect();
    let mut headers: Vec<(String, String)> = headers
        .iter()
        .filter(|(k, _)| !NOT_STORED.contains(&k.as_str()))
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        headers.push((crate::providers::QUERY_HEADER.to_owned(), q));
    }
    let received = Received {
        provider,
        account,
        remote_addr: Some(peer.to_string()),
        headers,
        content_types,
        body,
        truncated,
    };
    let ip = peer.ip();
    if limiter.exhausted(ip) && !verifies(configured, &received) {
        crate::metrics::throttled(kind.as_str());
        tracing::debug!(provider = %kind, %peer, "notification failing verification refused unstored: address over its limit");
        let mut a = configured.failure(FAILED_VERIFICATION);
        a.status = StatusCode::TOO_MANY_REQUESTS.as_u16();
        return answer(a);
    }
    let deadline = Duration::from_secs(app.config.server.notify_timeout_secs.max(1));
    let pipeline = app.pipeline.clone();
    let processing = async move {
        let processed = pipeline.receive(received).await;
        // Counted here, in the spawned task, so a caller that hangs up is counted too.
        crate::metrics::notification(kind.as_str(), processed.verdict.as_str());
        processed
    };
    // Dropping the handle at the deadline does not stop the task (see the module doc).
    let outcome = tokio::time::timeout(deadline, tokio::spawn(processing)).await;
    let Ok(outcome) = outcome else {
        return timed_out(configured, deadline);
    };
    match outcome {
        Ok(processed) => {
            if processed.unverified {
                limiter.record(ip);
            }
            answer(processed.answer)
        }
        Err(e) => {
            // A panic in the pipeline: the notification stays stored as `received`.
            tracing::error!(error = %e, "notification processing panicked");
            let mut a = configured.failure("internal error");
            a.status = 500;
            answer(a)
        }
    }
}

/// The answer at the deadline: the provider's failure answer with 503, so it retries.
fn timed_out(provider: &dyn Provider, deadline: Duration) -> Response {
    let kind = provider.kind();
    crate::metrics::notify_timeout(kind.as_str());
    tracing::warn!(
        provider = %kind,
        timeout_secs = deadline.as_secs(),
        "notification not processed within server.notify_timeout_secs; answered 503 \
         (it is finished late, or re-driven once stuck)"
    );
    let mut a = provider.failure("temporary failure; retry later");
    a.status = StatusCode::SERVICE_UNAVAILABLE.as_u16();
    answer(a)
}

/// Whether a notification would pass verification, checked without storing it: for an
/// address over its limit, whose failing notifications are no longer stored.
fn verifies(provider: &dyn Provider, r: &Received) -> bool {
    let content_types: Vec<&[u8]> = r.content_types.iter().map(Vec::as_slice).collect();
    !r.truncated
        && provider.check_content_type(&content_types).is_ok()
        && provider
            .verify(&Inbound {
                account: r.account.as_deref(),
                headers: &r.headers,
                body: &r.body,
                received_at: crate::time::now_ms(),
            })
            .is_ok()
}

/// The provider's answer as an HTTP response.
fn answer(a: Answer) -> Response {
    // Built by hand: the provider's answer carries exactly the content type it names
    // (none for WeChat v3's 204), not a default one.
    let mut response = Response::new(Body::from(a.body));
    *response.status_mut() =
        StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Some(ct) = a.content_type {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(ct));
    }
    response
}

/// Reads at most `limit` bytes; the flag says the body was longer (and the rest was not
/// read, so an oversized body costs no more than `limit` of memory).
async fn read_limited(body: Body, limit: usize) -> Result<(Vec<u8>, bool), axum::Error> {
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let room = limit - buf.len();
        if chunk.len() > room {
            buf.extend_from_slice(&chunk[..room]);
            return Ok((buf, true));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok((buf, false))
}

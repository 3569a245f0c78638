//! `POST /notify/{provider}[/{account}]`: provider callbacks.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use crate::app::App;
use crate::pipeline::Received;

/// Headers never stored with a notification.
const NOT_STORED: &[&str] = &["authorization", "cookie", "proxy-authorization"];

/// `/notify/{provider}`.
pub async fn receive(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(app, peer, provider, None, headers, body).await
}

/// `/notify/{provider}/{account}`.
pub async fn receive_for_account(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((provider, account)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(app, peer, provider, Some(account), headers, body).await
}

async fn handle(
    app: App,
    peer: SocketAddr,
    provider: String,
    account: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let simple = crate::config::is_simple_name;
    if !simple(&provider) || account.as_deref().is_some_and(|a| !simple(a)) {
        return (StatusCode::NOT_FOUND, "unknown provider").into_response();
    }
    let limit = app.config.server.max_body_bytes;
    let (body, truncated) = match read_limited(body, limit).await {
        Ok(b) => b,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!("cannot read body: {e}")).into_response()
        }
    };
    let headers = headers
        .iter()
        .filter(|(k, _)| !NOT_STORED.contains(&k.as_str()))
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let processed = app
        .pipeline
        .receive(Received {
            provider,
            account,
            remote_addr: Some(peer.to_string()),
            headers,
            body,
            truncated,
        })
        .await;
    let a = processed.answer;
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

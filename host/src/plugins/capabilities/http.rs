//! `http`: one request/response call to an origin the policy admits.
//!
//! Configure: `http_origins` must be origins, and `http_in_payment` needs at least one.
//! Prepare: the shared client ([`CallBuilder`](super::CallBuilder) takes the runtime's)
//! and, through [`DbAccess`](super::DbAccess), whether the call runs inside a payment.
//! Link: interface `http`.
//!
//! Whether a request may go out at all is the [`HttpPolicy`]'s answer; this module only
//! enforces what is about the request itself (method, headers, timeout, response size).

use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};

use super::{CallContext, Capability, DbAccess, Getter};
use crate::plugins::manifest::{normalise_origin, Manifest};
use crate::plugins::world::since_v0_1::bindings::paynotify::plugin::http as wit;

/// Largest response body the `http` capability hands back.
const MAX_HTTP_RESPONSE_BYTES: usize = 1024 * 1024;
/// Per-call HTTP timeout when the handler asks for none, and the most it may ask for.
const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// The `http` capability.
pub(super) struct Http;

impl Capability for Http {
    fn configure(manifest: &Manifest) -> Result<(), String> {
        for o in &manifest.http_origins {
            if normalise_origin(o).is_none() {
                return Err(format!(
                    "key `http_origins`: `{o}` is not an origin like https://example.com[:port]"
                ));
            }
        }
        if manifest.http_in_payment && manifest.http_origins.is_empty() {
            return Err(
                "key `http_in_payment`: true, but `http_origins` is empty, so there is nothing \
                 it could call"
                    .into(),
            );
        }
        Ok(())
    }

    fn link<T: Send + 'static>(linker: &mut Linker<T>, get: Getter<T>) -> wasmtime::Result<()> {
        wit::add_to_linker::<T, HasSelf<CallContext>>(linker, get)
    }
}

/// Decides whether a handler's request may go out at all; the `http` capability asks it
/// before anything else, and hands a refusal to the handler as `denied`.
pub trait HttpPolicy: Sync {
    /// `Err` with the reason the handler is told.
    fn admit(&self, url: &reqwest::Url) -> Result<(), String>;
}

/// The manifest's policy: the origins in `http_origins`, and inside the payment
/// transaction only with `http_in_payment`.
pub struct ManifestPolicy<'a> {
    /// The grants.
    pub manifest: &'a Manifest,
    /// The plugin type, named in refusals.
    pub plugin: &'a str,
    /// The call runs inside the payment (or refund) transaction.
    pub in_payment: bool,
}

impl HttpPolicy for ManifestPolicy<'_> {
    fn admit(&self, url: &reqwest::Url) -> Result<(), String> {
        if !self.manifest.grants_origin(url) {
            return Err(format!(
                "origin {} is not in `http_origins` of {}.toml",
                url.origin().ascii_serialization(),
                self.plugin
            ));
        }
        // Inside the payment transaction (`handle-paid`, `handle-refunded`) a call may run
        // more than once (a failed batch is retried one payment at a time, running again
        // the handlers that succeeded) and the payment's locks are held while it waits,
        // so it needs the manifest's opt-in.
        if self.in_payment && !self.manifest.http_in_payment {
            return Err(format!(
                "http is refused inside handle-paid and handle-refunded: a call made there may \
                 run more than once for one payment and holds the payment's locks while it \
                 waits. Enqueue a task (tasks.enqueue) and make the call from run-task, which \
                 runs after the payment commits and is retried; only for an idempotent call, \
                 set `http_in_payment = true` in {}.toml",
                self.plugin
            ));
        }
        Ok(())
    }
}

impl CallContext {
    /// The policy this call's requests are checked against.
    fn http_policy(&self) -> ManifestPolicy<'_> {
        ManifestPolicy {
            manifest: &self.manifest,
            plugin: &self.tags.plugin,
            // `run-task` (after commit, its own short transactions) and `metadata` (at
            // load, no database) are outside any payment.
            in_payment: matches!(self.db, DbAccess::Tx(_)),
        }
    }
}

impl wit::Host for CallContext {
    async fn send(&mut self, req: wit::Request) -> Result<wit::Response, wit::HttpError> {
        if matches!(self.db, DbAccess::Shadow(_)) {
            // A shadow run must change nothing outside it, and a request may.
            return Err(wit::HttpError::Denied(
                "http is refused in a shadow run (a candidate build beside the serving one):                  a request could change something outside it"
                    .into(),
            ));
        }
        send(&self.http, &self.http_policy(), req).await
    }
}

/// Sends `req` with `client` if `policy` admits it.
// reqwest on the host rather than wasi:http: the policy, the timeout and the response cap
// are enforced in one place we control, redirects are refused (the client follows none:
// they would let a handler reach an origin the policy did not admit), and handlers get a
// plain request/response call instead of wasi:http's streams.
pub async fn send(
    client: &reqwest::Client,
    policy: &dyn HttpPolicy,
    req: wit::Request,
) -> Result<wit::Response, wit::HttpError> {
    let url = reqwest::Url::parse(&req.url)
        .map_err(|e| wit::HttpError::InvalidRequest(format!("bad url `{}`: {e}", req.url)))?;
    policy.admit(&url).map_err(wit::HttpError::Denied)?;
    let method = reqwest::Method::from_bytes(req.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| wit::HttpError::InvalidRequest(format!("bad method `{}`", req.method)))?;
    if let Some((name, _)) = req.headers.iter().find(|(k, _)| is_connection_header(k)) {
        return Err(wit::HttpError::InvalidRequest(format!(
            "header {name:?} may not be set by a handler: the host sets the headers that \
             frame the request and its connection (Host, Content-Length, Transfer-Encoding, \
             Connection, Keep-Alive, TE, Trailer, Upgrade, Proxy-*)"
        )));
    }
    let timeout = req
        .timeout_ms
        .map(|ms| Duration::from_millis(u64::from(ms)))
        .unwrap_or(DEFAULT_HTTP_TIMEOUT)
        .min(MAX_HTTP_TIMEOUT);
    let mut builder = client.request(method, url).timeout(timeout).body(req.body);
    for (k, v) in &req.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    let request = builder
        .build()
        .map_err(|e| wit::HttpError::InvalidRequest(e.to_string()))?;
    let mut response = client.execute(request).await.map_err(|e| {
        if e.is_timeout() {
            wit::HttpError::Timeout
        } else {
            wit::HttpError::Transport(e.to_string())
        }
    })?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_HTTP_RESPONSE_BYTES {
                    return Err(wit::HttpError::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) if e.is_timeout() => return Err(wit::HttpError::Timeout),
            Err(e) => return Err(wit::HttpError::Transport(e.to_string())),
        }
    }
    Ok(wit::Response {
        status,
        headers,
        body,
    })
}

/// Whether `name` is a header that describes the request's framing or its connection
/// rather than its content: the host's HTTP client owns those. Set by a handler, `Host`
/// would reach another site behind the granted origin's address, a `Content-Length` or
/// `Transfer-Encoding` that disagrees with the body would let a second request be
/// smuggled in behind the first, and the hop-by-hop headers (RFC 9110 §7.6.1: `Connection`,
/// `Keep-Alive`, `TE`, `Trailer`, `Upgrade`, `Proxy-*`, and HTTP/2's `HTTP2-Settings`)
/// would change how the pooled connection is used or address a proxy. Case-insensitive.
pub fn is_connection_header(name: &str) -> bool {
    const REFUSED: [&str; 10] = [
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        // RFC 2616's spelling, still honoured by some servers.
        "trailers",
        "upgrade",
        "http2-settings",
    ];
    let name = name.trim();
    REFUSED.iter().any(|r| name.eq_ignore_ascii_case(r))
        || name
            .get(..6)
            .is_some_and(|p| p.eq_ignore_ascii_case("proxy-"))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::plugins::capabilities::CallTags;

    #[test]
    fn connection_headers_are_recognised_whatever_their_case() {
        for name in [
            "Host",
            "HOST",
            "content-length",
            "Transfer-Encoding",
            "connection",
            "Keep-Alive",
            "TE",
            "Trailer",
            "trailers",
            "Upgrade",
            "Proxy-Authorization",
            "proxy-connection",
            "PROXY-anything",
            "HTTP2-Settings",
            " host",
        ] {
            assert!(is_connection_header(name), "{name} allowed");
        }
        for name in [
            "content-type",
            "authorization",
            "x-paynotify-signature",
            "accept",
            "tea",
            "hostname",
            "proxy",
            "x-proxy-id",
            "",
            "ü",
        ] {
            assert!(!is_connection_header(name), "{name} refused");
        }
    }

    /// The real `http.send` of a handler granted the origin: a request setting one of
    /// the headers is `invalid-request` and no connection is made; the same request
    /// without it reaches the server.
    #[tokio::test]
    async fn a_request_setting_a_connection_header_is_refused_before_connecting() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let origin = format!("http://{}", listener.local_addr().expect("addr"));
        let manifest = Manifest {
            http_origins: vec![origin.clone()],
            ..Manifest::default()
        };
        let tags = CallTags {
            plugin: "hdr".into(),
            version: "1".into(),
            out_trade_no: None,
            notification_id: None,
            task_id: None,
        };
        let mut ctx = CallContext::detached(Arc::new(manifest), tags, reqwest::Client::new());
        let request = |headers: Vec<(String, String)>| wit::Request {
            method: "POST".into(),
            url: format!("{origin}/hook"),
            headers,
            body: b"{}".to_vec(),
            timeout_ms: Some(5000),
        };
        for (name, value) in [
            ("Host", "internal.example"),
            ("transfer-encoding", "chunked"),
            ("Content-Length", "0"),
            ("Connection", "upgrade"),
            ("Proxy-Authorization", "Basic eA=="),
            ("te", "trailers"),
        ] {
            let headers = vec![
                ("content-type".to_owned(), "application/json".to_owned()),
                (name.to_owned(), value.to_owned()),
            ];
            match wit::Host::send(&mut ctx, request(headers)).await {
                Err(wit::HttpError::InvalidRequest(m)) => assert!(m.contains(name), "{m}"),
                Err(e) => panic!("{name}: {e:?}"),
                Ok(r) => panic!("{name}: sent, answered {}", r.status),
            }
        }
        let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(accepted.is_err(), "a refused request connected");

        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 4096];
            let n = conn.read(&mut buf).await.expect("read");
            conn.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                .await
                .expect("write");
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        let headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        let answer = wit::Host::send(&mut ctx, request(headers))
            .await
            .expect("an allowed request is sent");
        assert_eq!(answer.status, 204);
        let head = server.await.expect("server");
        assert!(head.starts_with("POST /hook HTTP/1.1"), "{head}");
    }
}

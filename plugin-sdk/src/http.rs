//! Outbound HTTP, only to the origins the manifest allows (`http_origins =
//! ["https://backend.example.com"]`); anything else is [`HttpError::Denied`].
//!
//! The host applies a per-call timeout (capped by its own limit) and a response-size cap.
//!
//! # Where HTTP may be called
//!
//! From [`Handler::run_task`](crate::Handler::run_task): the host runs a task after the
//! payment commits and retries it with backoff. In
//! [`Handler::handle_paid`](crate::Handler::handle_paid) and
//! [`RefundHandler::handle_refunded`](crate::RefundHandler::handle_refunded) every call is
//! refused with [`HttpError::Denied`] (code `http-denied`, a message saying to enqueue a
//! task): those run inside the payment's database transaction, so a call there is not rolled
//! back with it, may run more than once for one payment (when a batch of payments fails, the
//! host retries each one alone and runs again the handlers that had succeeded), and holds the
//! payment's locks while it waits for the other side. Enqueue a task with
//! [`tasks::enqueue`](crate::tasks::enqueue) instead; it exists only if the payment commits.
//!
//! A manifest may opt in with `http_in_payment = true` (vk-uni-pay's "方式三", calling the
//! merchant's backend from the handler). Use it for **idempotent calls only**, and expect each
//! one to be made more than once and to hold the payment's locks while it waits; `paynotify
//! plugins check` and the console show the opt-in.
//!
//! ```no_run
//! use paynotify_plugin_sdk::{http, Error};
//!
//! #[derive(serde::Deserialize)]
//! struct Reply {
//!     code: i64,
//! }
//!
//! // In run_task (or, with `http_in_payment = true`, an idempotent call in handle_paid):
//! # fn demo() -> Result<(), Error> {
//! let reply: Reply = http::post_json("https://backend.example.com/paid", &serde_json::json!({
//!     "out_trade_no": "T1",
//! }))?
//! .json()?;
//! if reply.code != 0 {
//!     return Err(Error::new("backend-rejected", format!("code {}", reply.code)));
//! }
//!
//! let res = http::Request::get("https://backend.example.com/health")
//!     .header("x-trace", "1")
//!     .timeout_ms(1000)
//!     .send()?;
//! # Ok(()) }
//! ```

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::bindings::paynotify::plugin::http as raw;
use crate::types::snippet;
use crate::Error;

/// Why a request failed; `?` turns it into an [`Error`] with code `http-<variant>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The origin is not on the manifest's allow-list, or the call was made inside the
    /// payment transaction without `http_in_payment = true` (see [the module docs](self)).
    Denied(String),
    /// The request is malformed (bad URL, bad method, body that does not serialise, ...).
    InvalidRequest(String),
    /// No complete response within the timeout.
    Timeout,
    /// The response body was over the host's cap.
    TooLarge,
    /// Connection, TLS or protocol failure.
    Transport(String),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Denied(m) => write!(f, "denied: {m}"),
            HttpError::InvalidRequest(m) => write!(f, "invalid request: {m}"),
            HttpError::Timeout => f.write_str("timed out"),
            HttpError::TooLarge => f.write_str("response body too large"),
            HttpError::Transport(m) => write!(f, "transport: {m}"),
        }
    }
}

impl std::error::Error for HttpError {}

impl From<raw::HttpError> for HttpError {
    fn from(e: raw::HttpError) -> Self {
        match e {
            raw::HttpError::Denied(m) => HttpError::Denied(m),
            raw::HttpError::InvalidRequest(m) => HttpError::InvalidRequest(m),
            raw::HttpError::Timeout => HttpError::Timeout,
            raw::HttpError::TooLarge => HttpError::TooLarge,
            raw::HttpError::Transport(m) => HttpError::Transport(m),
        }
    }
}

/// An HTTP request builder.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a request does nothing until `.send()`"]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    timeout_ms: Option<u32>,
    error: Option<HttpError>,
}

impl Request {
    /// A request with any method (`"PUT"`, `"DELETE"`, ...).
    pub fn new(method: impl Into<String>, url: impl Into<String>) -> Self {
        Request {
            method: method.into(),
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout_ms: None,
            error: None,
        }
    }

    /// A `GET` request.
    pub fn get(url: impl Into<String>) -> Self {
        Request::new("GET", url)
    }

    /// A `POST` request.
    pub fn post(url: impl Into<String>) -> Self {
        Request::new("POST", url)
    }

    /// Adds a header (repeatable).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the raw body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets the body to `value` as JSON and the `content-type` to `application/json`.
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => {
                self.body = body;
                self.header("content-type", "application/json")
            }
            Err(e) => {
                self.error.get_or_insert(HttpError::InvalidRequest(format!(
                    "body does not serialise as JSON: {e}"
                )));
                self
            }
        }
    }

    /// Per-call timeout in milliseconds; the host caps it.
    pub fn timeout_ms(mut self, ms: u32) -> Self {
        self.timeout_ms = Some(ms);
        self
    }

    /// Sends the request. Any status (including 4xx/5xx) is a [`Response`]; only failing to
    /// get one is an [`HttpError`].
    pub fn send(self) -> Result<Response, HttpError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let req = raw::Request {
            method: self.method,
            url: self.url,
            headers: self.headers,
            body: self.body,
            timeout_ms: self.timeout_ms,
        };
        let res = raw::send(&req)?;
        Ok(Response {
            status: res.status,
            headers: res.headers,
            body: res.body,
        })
    }
}

/// `GET url`.
pub fn get(url: &str) -> Result<Response, HttpError> {
    Request::get(url).send()
}

/// `POST url` with `body` as JSON.
pub fn post_json<T: Serialize + ?Sized>(url: &str, body: &T) -> Result<Response, HttpError> {
    Request::post(url).json(body).send()
}

/// An HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers as received.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// `true` for a 2xx status.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The first header called `name`, case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as UTF-8 text (invalid sequences replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body deserialised from JSON into `T`. A mismatch is an [`Error`] with code
    /// `invalid-response` naming the status, the expected type and a piece of the body.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Error::new(
                "invalid-response",
                format!(
                    "HTTP {} response {} does not match {}: {e}",
                    self.status,
                    snippet(&String::from_utf8_lossy(&self.body)),
                    std::any::type_name::<T>()
                ),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder() {
        let r = Request::post("https://x.example/a")
            .json(&serde_json::json!({"a": 1}))
            .timeout_ms(10);
        assert_eq!(r.method, "POST");
        assert_eq!(r.body, br#"{"a":1}"#);
        assert_eq!(
            r.headers,
            vec![("content-type".to_string(), "application/json".to_string())]
        );
        assert_eq!(r.timeout_ms, Some(10));
    }

    #[test]
    fn bad_json_body_fails_at_send() {
        let mut bad = std::collections::HashMap::new();
        bad.insert((1, 2), 3);
        let r = Request::post("https://x.example/a").json(&bad);
        assert!(matches!(r.send(), Err(HttpError::InvalidRequest(_))));
    }

    #[test]
    fn response_helpers() {
        let r = Response {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: br#"{"code":0}"#.to_vec(),
        };
        assert!(r.is_success());
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.json::<serde_json::Value>().unwrap()["code"], 0);
        let e = r.json::<Vec<u8>>().unwrap_err();
        assert_eq!(e.code(), "invalid-response");
        assert!(e.message().contains("HTTP 200"));
    }
}

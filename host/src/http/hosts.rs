//! Which names the console, and `/api` without a token, answer to.
//!
//! Without `server.api_token`, `/api` and the console trust that the client's address is
//! loopback. That alone lets web pages in: DNS rebinding points a name the page controls
//! at 127.0.0.1 and the browser then sends the page's requests to us with
//! `Host: evil.example`, and a page of any origin may post a form to 127.0.0.1 directly.
//! So such requests must name us in `Host` (421 otherwise), and their `Origin` (or
//! `Referer`), when a browser sends one, must be one of ours too (403). "Ours" is a fixed
//! list, [`AllowedHosts`]: the loopback names on the port the server listens on, and
//! `[server] allowed_hosts`; never the request's own `Host`, which the attacker chooses.
//! The console checks the same list with a token too: its session cookie is a credential
//! the browser sends by itself.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{header, HeaderMap, Request};

use crate::config::split_authority;

/// The names requests to the console (and to `/api` without a token) must carry.
#[derive(Debug, Clone)]
pub struct AllowedHosts {
    /// The port the server listens on: loopback names are ours only with it.
    port: u16,
    /// `[server] allowed_hosts`, lower-case: (host, port if one was given).
    listed: Vec<(String, Option<u16>)>,
}

/// The loopback names a local browser or tool uses for this host.
const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

impl AllowedHosts {
    /// The list for a server bound to `bound`, with `allowed_hosts` from the config
    /// (already validated as `name` or `name:port`; anything else is ignored).
    pub fn new(bound: SocketAddr, allowed_hosts: &[String]) -> AllowedHosts {
        let listed = allowed_hosts
            .iter()
            .filter_map(|h| split_authority(h))
            .collect();
        AllowedHosts {
            port: bound.port(),
            listed,
        }
    }

    /// The list this request was served with (put there by [`crate::http::serve`]), or,
    /// for a router used without it, one built from the configured listen address.
    pub fn of<B>(request: &Request<B>, app: &crate::app::App) -> Arc<AllowedHosts> {
        request
            .extensions()
            .get::<Arc<AllowedHosts>>()
            .cloned()
            .unwrap_or_else(|| {
                Arc::new(AllowedHosts::new(
                    app.config.server.listen,
                    &app.config.server.allowed_hosts,
                ))
            })
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether `authority` (a `Host` header, `name[:port]`) names this server; a missing
    /// port is port 80, as for any HTTP client.
    pub fn allows_host(&self, authority: &str) -> bool {
        match split_authority(authority) {
            Some((host, port)) => self.allows(&host, port.unwrap_or(80)),
            None => false,
        }
    }

    /// Whether `origin` (`scheme://name[:port]`, as in an `Origin` header) is a page of
    /// this server. `null` and other schemes are not.
    pub fn allows_origin(&self, origin: &str) -> bool {
        let Some((scheme, authority)) = origin.split_once("://") else {
            return false;
        };
        let default_port = match scheme.to_ascii_lowercase().as_str() {
            "http" => 80,
            "https" => 443,
            _ => return false,
        };
        match split_authority(authority) {
            Some((host, port)) => self.allows(&host, port.unwrap_or(default_port)),
            None => false,
        }
    }

    fn allows(&self, host: &str, port: u16) -> bool {
        if LOOPBACK_NAMES.contains(&host) && port == self.port {
            return true;
        }
        // A listed name without a port is ours on any port: behind a proxy the port the
        // browser used is the proxy's, not ours.
        self.listed
            .iter()
            .any(|(h, p)| h == host && p.is_none_or(|p| p == port))
    }

    /// Whether the request's `Host` names this server (exactly one `Host` header).
    pub fn request_host_ok(&self, headers: &HeaderMap) -> bool {
        let mut hosts = headers.get_all(header::HOST).iter();
        match (hosts.next(), hosts.next()) {
            (Some(h), None) => h.to_str().is_ok_and(|h| self.allows_host(h)),
            _ => false,
        }
    }

    /// Whether the request comes from a page of this server, by its `Origin` or, if a
    /// browser sent none, its `Referer`. `None` when it carries neither (not a browser,
    /// or a same-origin GET).
    pub fn request_origin_ok(&self, headers: &HeaderMap) -> Option<bool> {
        let text = |name| headers.get(name).map(|v| v.to_str().ok());
        if let Some(origin) = text(header::ORIGIN) {
            return Some(origin.is_some_and(|o| self.allows_origin(o)));
        }
        let referer = text(header::REFERER)?;
        Some(referer.is_some_and(|r| {
            // `scheme://authority/path…` → `scheme://authority`.
            let end = r
                .find("://")
                .map(|i| {
                    r[i + 3..]
                        .find(['/', '?', '#'])
                        .map_or(r.len(), |j| i + 3 + j)
                })
                .unwrap_or(r.len());
            self.allows_origin(&r[..end])
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(allowed: &[&str]) -> AllowedHosts {
        let allowed: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
        AllowedHosts::new("127.0.0.1:8080".parse().expect("addr"), &allowed)
    }

    #[test]
    fn loopback_names_only_on_our_port() {
        let l = list(&[]);
        for ok in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST:8080",
            "[::1]:8080",
        ] {
            assert!(l.allows_host(ok), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "127.0.0.1:9999",
            "127.0.0.1",
            "127.0.0.1.evil.example:8080",
            "localhost.:8080",
            "user@127.0.0.1:8080",
            "127.0.0.1:8080/x",
            "",
            "127.0.0.1:",
        ] {
            assert!(!l.allows_host(bad), "{bad}");
        }
    }

    #[test]
    fn listed_names_with_and_without_port() {
        let l = list(&["pay.example.com", "ops.example.com:8443"]);
        assert!(l.allows_host("pay.example.com"));
        assert!(l.allows_host("Pay.Example.com:443"));
        assert!(l.allows_host("ops.example.com:8443"));
        assert!(!l.allows_host("ops.example.com"));
        assert!(!l.allows_host("evil.pay.example.com"));
        assert!(l.allows_origin("https://pay.example.com"));
        assert!(l.allows_origin("https://ops.example.com:8443"));
        assert!(!l.allows_origin("https://ops.example.com"));
    }

    #[test]
    fn origins_are_compared_with_the_list_not_the_host() {
        let l = list(&[]);
        assert!(l.allows_origin("http://127.0.0.1:8080"));
        assert!(l.allows_origin("http://localhost:8080"));
        assert!(!l.allows_origin("http://localhost:9999"));
        assert!(!l.allows_origin("http://evil.example:8080"));
        assert!(!l.allows_origin("null"));
        assert!(!l.allows_origin("file://127.0.0.1:8080"));
        assert!(!l.allows_origin("http://127.0.0.1:8080.evil.example"));
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(*k, v.parse().expect("header"));
            }
            h
        };
        assert_eq!(l.request_origin_ok(&headers(&[])), None);
        assert_eq!(
            l.request_origin_ok(&headers(&[("referer", "http://127.0.0.1:8080/console?x")])),
            Some(true)
        );
        assert_eq!(
            l.request_origin_ok(&headers(&[(
                "referer",
                "http://evil.example/http://127.0.0.1:8080/"
            )])),
            Some(false)
        );
        // The attacker's own Host does not make its origin ours.
        assert_eq!(
            l.request_origin_ok(&headers(&[
                ("host", "evil.example:8080"),
                ("origin", "http://evil.example:8080")
            ])),
            Some(false)
        );
        assert!(!l.request_host_ok(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("host", "evil.example")
        ])));
        assert!(l.request_host_ok(&headers(&[("host", "127.0.0.1:8080")])));
    }
}

//! `/api` authentication: a bearer token, or, when none is configured, loopback clients
//! that name this server (see [`super::hosts`]).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;

use super::hosts::AllowedHosts;
use super::ApiError;
use crate::app::App;

/// Lets a request through if it carries the configured token (compared in constant time),
/// or, when no token is configured, if it comes from a loopback address, its `Host` is one
/// of [`AllowedHosts`] (421 otherwise: DNS rebinding) and so is its `Origin` when it has
/// one (403 otherwise: a cross-site request from a page).
pub async fn require_api_auth(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    match app.config.api_token() {
        Some(token) => {
            let presented = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            if !same_secret(presented, token) {
                return Err(ApiError::WrongToken);
            }
        }
        None if peer.ip().is_loopback() => {
            let hosts = AllowedHosts::of(&request, &app);
            if !hosts.request_host_ok(request.headers()) {
                crate::metrics::front_door_refused("host");
                return Err(ApiError::UnknownHost);
            }
            if hosts.request_origin_ok(request.headers()) == Some(false) {
                crate::metrics::front_door_refused("origin");
                return Err(ApiError::Forbidden(
                    "refused: a request from a page of another origin (cross-site); \
                     nothing was changed"
                        .into(),
                ));
            }
        }
        None => {
            return Err(ApiError::Forbidden(
                "no server.api_token is configured, so /api only serves loopback clients".into(),
            ))
        }
    }
    Ok(next.run(request).await)
}

/// Equal, in time that depends on neither value: both are hashed first, so not even their
/// lengths show (comparing the bytes themselves would return at once on a length
/// mismatch, telling an attacker the token's length).
pub(crate) fn same_secret(a: &str, b: &str) -> bool {
    use sha2::{Digest, Sha256};
    crate::providers::common::ct_eq(&Sha256::digest(a), &Sha256::digest(b))
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_compare_by_value_whatever_their_lengths() {
        assert!(same_secret("dev-token", "dev-token"));
        assert!(!same_secret("dev-token", "dev-token2"));
        assert!(!same_secret("", "dev-token"));
        assert!(!same_secret("dev-tokeN", "dev-token"));
    }
}

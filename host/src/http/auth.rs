//! `/api` authentication: a bearer token, or loopback only when none is configured.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::app::App;

/// Lets a request through if it carries the configured token (compared in constant time),
/// or, when no token is configured, if it comes from a loopback address.
pub async fn require_api_auth(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    match app.config.api_token() {
        Some(token) => {
            let presented = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            if same_secret(presented, token) {
                next.run(request).await
            } else {
                let mut r =
                    ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong bearer token")
                        .into_response();
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
                r
            }
        }
        None if peer.ip().is_loopback() => next.run(request).await,
        None => ApiError::new(
            StatusCode::FORBIDDEN,
            "no server.api_token is configured, so /api only serves loopback clients",
        )
        .into_response(),
    }
}

/// Equal, in time that depends on neither value: both are hashed first, so not even their
/// lengths show (comparing the bytes themselves would return at once on a length
/// mismatch, telling an attacker the token's length).
pub(crate) fn same_secret(a: &str, b: &str) -> bool {
    use sha2::{Digest, Sha256};
    crate::providers::ct_eq(&Sha256::digest(a), &Sha256::digest(b))
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

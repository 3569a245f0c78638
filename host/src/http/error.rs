//! How `/api` fails: [`ApiError`], answered as a status and `{"error": "…"}`.
//!
//! Handlers return `Result<_, ApiError>` and use `?`: the `From` impls below say once
//! which status each library error gets, so no handler maps one by hand.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::orders::OrderError;
use crate::payments::PayError;
use crate::store::StoreError;

/// An `/api` error: each variant is one status; the text is the answer's `error`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed (a query, a body, a filter value).
    #[error("{0}")]
    BadRequest(String),
    /// 401, with `WWW-Authenticate: Bearer`.
    #[error("missing or wrong bearer token")]
    WrongToken,
    /// 403.
    #[error("{0}")]
    Forbidden(String),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 409.
    #[error("{0}")]
    Conflict(String),
    /// 421: the `Host` is not one of this server's names (DNS rebinding).
    #[error(
        "this Host is not one of this server's names (loopback names on its port, \
         or server.allowed_hosts); without server.api_token nothing else is served"
    )]
    UnknownHost,
    /// 422: a field of a well-formed request is wrong.
    #[error("{0}")]
    Unprocessable(String),
    /// 429.
    #[error("{0}")]
    TooManyRequests(String),
    /// 503 when the database as a whole cannot serve now (down, out of disk, read-only:
    /// nothing was stored, try again), else 500. Logged.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// 500, logged.
    #[error("{0}")]
    Internal(String),
    /// 502: the provider refused the call, or its answer did not come or did not verify.
    /// The answer adds the provider's `code` and `message` when it gave them, and the
    /// stored order (`order`) when one was stored without being placed.
    #[error("{source}")]
    Provider {
        /// What failed.
        source: PayError,
        /// The order stored unplaced, if any.
        order: Option<Box<crate::store::Order>>,
    },
}

impl ApiError {
    /// 500 for anything that should not have failed.
    pub fn internal(e: impl std::fmt::Display) -> ApiError {
        ApiError::Internal(e.to_string())
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::WrongToken => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::UnknownHost => StatusCode::MISDIRECTED_REQUEST,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Store(e) if e.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Store(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Provider { .. } => StatusCode::BAD_GATEWAY,
        }
    }
}

impl From<OrderError> for ApiError {
    fn from(e: OrderError) -> ApiError {
        match e {
            OrderError::Invalid(m) => ApiError::Unprocessable(m),
            OrderError::Conflict(m) => ApiError::Conflict(m),
            OrderError::Store(e) => ApiError::Store(e),
            OrderError::NotPlaced { order, source } => ApiError::Provider {
                source,
                order: Some(order),
            },
        }
    }
}

impl From<PayError> for ApiError {
    fn from(e: PayError) -> ApiError {
        match e {
            PayError::Invalid(m) => ApiError::Unprocessable(m),
            PayError::NotFound(m) => ApiError::NotFound(m),
            PayError::Conflict(m) => ApiError::Conflict(m),
            PayError::Store(e) => ApiError::Store(e),
            source @ PayError::Provider { .. } => ApiError::Provider {
                source,
                order: None,
            },
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> ApiError {
        ApiError::BadRequest(e.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> ApiError {
        ApiError::BadRequest(e.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            ApiError::Store(e) if e.is_unavailable() => {
                tracing::error!(error = %e, "api request failed: database unavailable");
                format!("the database cannot serve this now ({e}); nothing was changed, try again later")
            }
            other => other.to_string(),
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %message, "api request failed");
        }
        let mut body = serde_json::json!({ "error": message });
        if let ApiError::Provider { source, order } = &self {
            if let Some((code, text)) = source.provider_code() {
                body["code"] = code.into();
                body["message"] = text.into();
            }
            if let Some(order) = order {
                body["order"] = serde_json::to_value(order).unwrap_or_default();
            }
        }
        let mut response = (status, Json(body)).into_response();
        if let ApiError::WrongToken = self {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

//! The payment loop, from this side: placing a payment at the provider ([`place`]),
//! starting a refund ([`refund`]) and closing an order ([`close`]), for the API, the CLI
//! and the console alike.
//!
//! Every call goes through the order's account's [`OrderApi`](crate::providers::api::OrderApi),
//! which signs the request and verifies the answer; nothing here signs or parses. The
//! money itself only ever moves through the pipeline: a placed payment is settled by its
//! notification (or reconciliation), a refund by its refund notification or, for
//! Alipay, by its verified final answer, stored and settled exactly as a notification.

use crate::app::App;
use crate::providers::api::ApiError as ProviderError;
use crate::store::StoreError;

pub mod close;
pub mod place;
pub mod refund;

/// Why a payment-loop call did nothing (or, for [`PayError::Provider`], what the provider
/// said).
#[derive(Debug, thiserror::Error)]
pub enum PayError {
    /// A request field is wrong (the message names it); nothing was sent.
    #[error("{0}")]
    Invalid(String),
    /// No such order.
    #[error("{0}")]
    NotFound(String),
    /// The order's state does not allow it (paid, closed, another amount).
    #[error("{0}")]
    Conflict(String),
    /// The provider refused, or its answer could not be had or believed.
    #[error("{context}: {source}")]
    Provider {
        /// What was being done (`placing order …`).
        context: String,
        /// The provider call's error.
        source: ProviderError,
    },
    /// The database failed.
    #[error("database error: {0}")]
    Store(#[from] StoreError),
}

impl PayError {
    /// The provider's error code and message, when it gave them.
    pub fn provider_code(&self) -> Option<(&str, &str)> {
        match self {
            PayError::Provider {
                source:
                    ProviderError::Declined { code, message, .. }
                    | ProviderError::Uncertain { code, message, .. },
                ..
            } => Some((code, message)),
            _ => None,
        }
    }
}

/// `{public_base_url}/notify/{provider}/{account}`, or why there is none.
pub fn notify_url(app: &App, provider: &str, account: &str) -> Result<String, PayError> {
    match &app.config.server.public_base_url {
        Some(base) => Ok(format!("{base}/notify/{provider}/{account}")),
        None => Err(PayError::Invalid(
            "server.public_base_url is not set: the provider needs it to send the payment's \
             notification here (set it to this host's public https address)"
                .into(),
        )),
    }
}

//! Calling the providers: order query (reconciliation), order close (expiry and
//! `POST /api/orders/{no}/close`), placing a payment and starting a refund (`pay.rs`).
//!
//! Notifications come to us; these go the other way. Every answer is verified exactly
//! as a notification is (WeChat v2 `sign` with the API key, WeChat v3
//! `Wechatpay-Signature` with the WeChat Pay public keys or platform certificates,
//! Alipay RSA2 with the Alipay public key) before anything in it is believed: an answer
//! is only as good as its signature, whoever answered on the network.
//!
//! A verified query answer becomes a [`Notice`], so a payment found by reconciliation
//! goes through the same settle code as a notification. The raw answer is kept as a
//! stored notification ([`RECONCILE_SOURCE`]) and can be verified again later from the
//! stored bytes, as a notification replay is.
//!
//! CloudPay has no query or close API reachable from here (it is relayed by a cloud
//! function): its orders are skipped.

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::{SignatureEncoding, Signer};
use rsa::RsaPrivateKey;
use sha2::Sha256;

pub use super::call::{
    record_source, OrderRef, ProviderAnswer, OUT_REFUND_NO_HEADER, RECONCILE_SOURCE,
    REFUND_AMOUNT_HEADER, REFUND_SOURCE, SOURCE_HEADER,
};
use super::pay::{PayFieldError, PayRequest, Placed, Placement, RefundStart, RefundStarted};
use super::{Inbound, Notice, ProviderKind, Rejection};

// Built with the verifiers, in one pass over the accounts.

/// Longest a provider call may take.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Largest answer read from a provider (real ones are a few KiB).
const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// How closing an order at the provider ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseOutcome {
    /// Closed now, or already closed, or never created there: it cannot be paid.
    Closed,
    /// The provider says it is paid: do not close it; the payment must be settled.
    AlreadyPaid,
}

/// Why a provider call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No answer (connection, timeout, oversized body).
    #[error("{request}: {message}")]
    Transport {
        /// `METHOD url`.
        request: String,
        /// What went wrong.
        message: String,
    },
    /// The answer did not verify (signature, account) or could not be read.
    #[error("answer refused: {0}")]
    Refused(#[from] Rejection),
    /// A verified answer reporting an error.
    #[error("provider error: {0}")]
    Provider(String),
    /// A verified answer refusing a payment or refund, with the provider's own code and
    /// message (WeChat `code`/`err_code`, Alipay `sub_code`).
    #[error("{provider} refused: {code}: {message}")]
    Declined {
        /// The provider.
        provider: ProviderKind,
        /// Its error code.
        code: String,
        /// Its message.
        message: String,
    },
    /// A verified answer saying the provider could not tell how the call ended (a system
    /// error, "try again"): it may or may not have taken effect, and the same request
    /// again (same order or refund number) is how to find out. Never "refused".
    #[error(
        "{provider} could not say how it ended: {code}: {message}; send the same request again"
    )]
    Uncertain {
        /// The provider.
        provider: ProviderKind,
        /// Its error code.
        code: String,
        /// Its message.
        message: String,
    },
    /// The order cannot be asked about with its account as configured (a partner
    /// account's order without one of its sub-merchants); nothing was sent.
    #[error("cannot call the provider about this order: {0}")]
    Order(String),
}

/// One merchant account's order API.
#[async_trait]
pub trait OrderApi: Send + Sync {
    /// The provider.
    fn kind(&self) -> ProviderKind;
    /// Asks the provider about an order; the answer is not verified yet.
    async fn query(
        &self,
        http: &reqwest::Client,
        order: OrderRef<'_>,
    ) -> Result<ProviderAnswer, ApiError>;
    /// Verifies a query answer (fresh, or stored and replayed) and reads what it says.
    /// An answer about no trade, or a trade not paid, is [`super::NoticeKind::NotPaid`].
    fn verify_query(&self, answer: &Inbound<'_>) -> Result<Notice, Rejection>;
    /// Closes an order at the provider.
    async fn close(
        &self,
        http: &reqwest::Client,
        order: OrderRef<'_>,
    ) -> Result<CloseOutcome, ApiError>;
    /// Checks a `pay` request against what this account can place, before anything is
    /// sent (the method is known, the fields it needs are there).
    fn check_pay(&self, pay: &PayRequest) -> Result<(), PayFieldError>;
    /// Whether this account has what starting a refund needs (WeChat Pay v2: its client
    /// certificate), checked before a refund is recorded; why not, naming the keys.
    /// Every account that can call its provider can, unless it says otherwise.
    fn check_refund(&self) -> Result<(), String> {
        Ok(())
    }
    /// Places a payment (checked with [`OrderApi::check_pay`]) and returns, from the
    /// verified answer, what the client needs to pay.
    async fn place(&self, http: &reqwest::Client, p: &Placement<'_>) -> Result<Placed, ApiError>;
    /// Starts a refund of a paid order; the answer is verified before it is believed.
    async fn refund(
        &self,
        http: &reqwest::Client,
        r: &RefundStart<'_>,
    ) -> Result<RefundStarted, ApiError>;
    /// Verifies a stored refund answer that settled a refund ([`RefundStarted::Settled`])
    /// again, for a replay: the refund it reports, for `out_refund_no`.
    /// Providers whose refund notification settles refunds refuse it.
    fn verify_refund_answer(
        &self,
        answer: &Inbound<'_>,
        out_refund_no: &str,
    ) -> Result<Notice, Rejection>;
}

/// Sends a request and reads the answer (capped at [`MAX_ANSWER_BYTES`]), keeping the
/// headers whose names `keep` accepts.
pub(crate) async fn send(
    request: reqwest::RequestBuilder,
    described: String,
    keep: impl Fn(&str) -> bool,
) -> Result<ProviderAnswer, ApiError> {
    let transport = |message: String| ApiError::Transport {
        request: described.clone(),
        message,
    };
    let mut resp = request
        .send()
        .await
        .map_err(|e| transport(error_chain(&e)))?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .filter(|(k, _)| keep(k.as_str()))
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| transport(error_chain(&e)))? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(transport(format!(
                "answer is over {MAX_ANSWER_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(ProviderAnswer {
        request: described,
        status,
        headers,
        body,
        received_at: crate::time::now_ms(),
    })
}

/// An error and its sources on one line: reqwest's own `Display` says only "error
/// sending request", not whether DNS, the connection, TLS or a timeout failed.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        // hyper and reqwest often repeat their source's text in their own.
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// The base URL without a trailing `/`.
pub(crate) fn base(configured: &Option<String>, default: &str) -> String {
    configured
        .as_deref()
        .unwrap_or(default)
        .trim_end_matches('/')
        .to_owned()
}

/// Parses an RSA private key: PEM (`BEGIN PRIVATE KEY` as WeChat's `apiclient_key.pem`,
/// or `BEGIN RSA PRIVATE KEY`) or bare base64 of PKCS#8 / PKCS#1 DER (as Alipay's key
/// tool prints it).
pub(crate) fn parse_private_key(text: &str) -> Result<RsaPrivateKey, String> {
    let text = text.trim();
    if text.contains("-----BEGIN RSA PRIVATE KEY-----") {
        return RsaPrivateKey::from_pkcs1_pem(text)
            .map_err(|e| format!("not a PKCS#1 RSA private key: {e}"));
    }
    if text.contains("-----BEGIN") {
        return RsaPrivateKey::from_pkcs8_pem(text)
            .map_err(|e| format!("not a PEM RSA private key (-----BEGIN PRIVATE KEY-----): {e}"));
    }
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|e| format!("neither PEM nor base64: {e}"))?;
    RsaPrivateKey::from_pkcs8_der(&der)
        .or_else(|_| RsaPrivateKey::from_pkcs1_der(&der))
        .map_err(|e| format!("not an RSA private key (PKCS#8 or PKCS#1): {e}"))
}

/// SHA256withRSA (PKCS#1 v1.5) of `message`, base64: how both WeChat v3 and Alipay
/// want requests signed.
pub(crate) fn rsa_sign(key: &SigningKey<Sha256>, message: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(key.sign(message).to_bytes())
}

/// 32 random letters and digits, for nonces.
pub(crate) fn nonce() -> String {
    hex::encode_upper(rand::random::<[u8; 16]>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::pkcs8::{EncodePrivateKey, LineEnding};

    #[test]
    fn private_keys_load_as_pkcs8_pkcs1_pem_or_bare_base64() {
        let key = RsaPrivateKey::new(&mut rand::thread_rng(), 1024).expect("key");
        let pkcs8 = key.to_pkcs8_pem(LineEnding::LF).expect("pem");
        let pkcs1 = key.to_pkcs1_pem(LineEnding::LF).expect("pem");
        let bare: String = pkcs8.lines().filter(|l| !l.starts_with("-----")).collect();
        for text in [pkcs8.as_str(), pkcs1.as_str(), bare.as_str()] {
            assert_eq!(parse_private_key(text).expect("parses"), key);
        }
        assert!(parse_private_key("not a key").is_err());
        assert!(
            parse_private_key("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----")
                .is_err()
        );
    }
}

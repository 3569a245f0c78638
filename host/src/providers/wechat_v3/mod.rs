//! WeChat Pay API v3: a JSON body signed by WeChat Pay with RSA, its payload encrypted
//! for the merchant with AES-256-GCM.
//!
//! The signature (`Wechatpay-Signature`, RSA-SHA256 PKCS#1 v1.5, base64) covers
//! `"{Wechatpay-Timestamp}\n{Wechatpay-Nonce}\n{body}\n"` over the body's raw bytes, so
//! nothing is parsed before it verifies. `Wechatpay-Serial` names the key: either a
//! WeChat Pay public key id (`PUB_KEY_ID_…`, the current scheme) or the serial of a
//! platform certificate (the older scheme). Both are accepted at once because WeChat
//! moves merchants from certificates to public keys with a period where either may sign.
//!
//! The timestamp window is checked against the time the notification was received
//! ([`Inbound::received_at`]), not the wall clock, so a stored notification replayed
//! later verifies exactly as it did on arrival. WeChat sends signature probes
//! (`WECHATPAY/SIGNTEST/…`) to check that merchants do verify; they are refused.
//!
//! Only then is the body parsed and `resource` decrypted with the APIv3 key. The
//! plaintext (the transaction) is what carries the order, amount, appid and mchid (for a
//! service provider's account, `sp_appid`, `sp_mchid` and the sub-merchant's ids:
//! [`partner`] checks either shape).
//!
//! Here: the notification verifier (envelope, decryption, transaction or refund).
//! `keys.rs` holds the account's keys and the signature check that [`api`] (order query
//! and close, whose answers WeChat Pay signs the same way) shares with it; [`certs`]
//! downloads and refreshes the platform certificates of accounts that opt in.

pub mod api;
pub mod certs;
mod download;
mod keys;
pub mod partner;
mod pay;
#[cfg(test)]
mod tests;
mod x509;

use std::collections::BTreeMap;

use serde_json::Value;

pub(crate) use keys::verify_signed;
pub use keys::{
    decrypt_resource, message, parse_certificate_pem, parse_public_key_pem, serial_hex, Account,
};
pub use partner::{Mode, Partner};

use super::json::{flatten_unique, parse_json_unique, required_text, str_field};
use super::{
    Answer, ContentTypes, Inbound, KeyFetch, Notice, NoticeKind, Payment, Provider, ProviderKind,
    Refund, RefundAmount, Rejection,
};

/// Largest allowed difference between `Wechatpay-Timestamp` and the time of receipt.
pub const MAX_CLOCK_SKEW_SECS: i64 = 5 * 60;

/// The prefix of WeChat Pay's signature-probe requests.
pub const SIGNATURE_PROBE_PREFIX: &str = "WECHATPAY/SIGNTEST/";

/// The signature scheme verified here (`Wechatpay-Signature-Type`, when sent).
pub const SIGNATURE_TYPE: &str = "WECHATPAY2-SHA256-RSA2048";

/// The only resource encryption WeChat Pay uses.
const ALGORITHM: &str = "AEAD_AES_256_GCM";

/// WeChat Pay v3 notifications are JSON.
pub const CONTENT_TYPES: ContentTypes = ContentTypes {
    media_types: &["application/json"],
    may_be_absent: false,
};

/// RFC 3339 (`2018-06-08T10:34:56+08:00`) → unix ms.
fn parse_rfc3339(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// What a decrypted refund resource (`REFUND.*` events) reports: `REFUND.SUCCESS` with
/// `refund_status` `SUCCESS` is a refund; `REFUND.ABNORMAL` / `REFUND.CLOSED` are
/// recorded and change nothing.
fn refund_kind(event_type: &str, refund: &Value) -> Result<NoticeKind, Rejection> {
    let status = required_text(refund, "refund_status")?;
    if !REFUND_STATES.contains(&status) {
        return Err(Rejection::Unsupported(format!(
            "refund_status `{status}` is none of {}",
            REFUND_STATES.join(", ")
        )));
    }
    let out_refund_no = required_text(refund, "out_refund_no")?.to_owned();
    let amount = fen(refund, "refund")?;
    let total = fen(refund, "total")?;
    if event_type != "REFUND.SUCCESS" || status != "SUCCESS" {
        return Ok(NoticeKind::NotPaid {
            state: format!("{event_type} {status}"),
        });
    }
    if amount == 0 {
        return Err(Rejection::Malformed("amount.refund is 0".into()));
    }
    Ok(NoticeKind::Refunded(Refund {
        out_refund_no,
        refund_id: str_field(refund, "refund_id").unwrap_or("").to_owned(),
        transaction_id: required_text(refund, "transaction_id")?.to_owned(),
        amount: RefundAmount::This(amount),
        total_fee: Some(total),
        refunded_at: str_field(refund, "success_time").and_then(parse_rfc3339),
    }))
}

/// The `trade_state`s WeChat Pay documents for a transaction.
const TRADE_STATES: [&str; 7] = [
    "SUCCESS",
    "REFUND",
    "NOTPAY",
    "CLOSED",
    "REVOKED",
    "USERPAYING",
    "PAYERROR",
];

/// The `refund_status`es WeChat Pay documents for a refund notification.
const REFUND_STATES: [&str; 4] = ["SUCCESS", "CLOSED", "ABNORMAL", "PROCESSING"];

/// `amount.<key>`: a non-negative whole number of fen that must be there.
pub(super) fn fen(v: &Value, key: &str) -> Result<i64, Rejection> {
    v.get("amount")
        .and_then(|a| a.get(key))
        .and_then(Value::as_i64)
        .filter(|n| *n >= 0)
        .ok_or_else(|| Rejection::Malformed(format!("amount.{key} is not an amount in fen")))
}

/// The WeChat Pay v3 provider.
pub struct WechatV3 {
    accounts: Vec<Account>,
    /// Partner accounts' modes by account name; an account not here is direct.
    modes: BTreeMap<String, Mode>,
}

impl WechatV3 {
    /// A provider over these (direct) accounts.
    pub fn new(accounts: Vec<Account>) -> WechatV3 {
        WechatV3 {
            accounts,
            modes: BTreeMap::new(),
        }
    }

    /// Sets the mode of the account named `account` (direct unless set).
    pub fn with_mode(mut self, account: &str, mode: Mode) -> WechatV3 {
        self.modes.insert(account.to_owned(), mode);
        self
    }

    fn mode(&self, account: &str) -> &Mode {
        static DIRECT: Mode = Mode::Direct;
        self.modes.get(account).unwrap_or(&DIRECT)
    }
}

impl Provider for WechatV3 {
    fn kind(&self) -> ProviderKind {
        ProviderKind::WechatV3
    }

    fn accounts(&self) -> Vec<&str> {
        self.accounts.iter().map(|a| a.name.as_str()).collect()
    }

    fn content_types(&self) -> ContentTypes {
        CONTENT_TYPES
    }

    fn sub_merchants(&self, account: &str) -> Option<Vec<&str>> {
        self.mode(account).sub_merchants()
    }

    fn fetch_missing_keys<'a>(&'a self, inbound: &'a Inbound<'_>) -> KeyFetch<'a> {
        let serial = inbound.header("wechatpay-serial");
        certs::fetch_missing(&self.accounts, inbound.account, serial, inbound.received_at)
    }

    fn verify(&self, inbound: &Inbound<'_>) -> Result<Notice, Rejection> {
        let account = verify_signed(&self.accounts, inbound)?;

        // Verified: now the body means something.
        let envelope: Value = parse_json_unique(inbound.body)
            .map_err(|e| Rejection::Malformed(format!("body is not JSON: {e}")))?;
        if !envelope.is_object() {
            return Err(Rejection::Malformed("body is not a JSON object".into()));
        }
        let event_type = str_field(&envelope, "event_type")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Rejection::Malformed("no `event_type`".into()))?
            .to_owned();
        let resource = envelope
            .get("resource")
            .filter(|r| r.is_object())
            .ok_or_else(|| Rejection::Malformed("no `resource` object".into()))?;
        let algorithm = str_field(resource, "algorithm").unwrap_or("");
        if algorithm != ALGORITHM {
            return Err(Rejection::Unsupported(format!(
                "resource algorithm `{algorithm}`"
            )));
        }
        let ciphertext = str_field(resource, "ciphertext")
            .ok_or_else(|| Rejection::Malformed("resource has no `ciphertext`".into()))?;
        let resource_nonce = str_field(resource, "nonce")
            .ok_or_else(|| Rejection::Malformed("resource has no `nonce`".into()))?;
        let associated_data = match resource.get("associated_data") {
            None | Some(Value::Null) => "",
            Some(Value::String(s)) => s.as_str(),
            Some(_) => {
                return Err(Rejection::Malformed(
                    "resource `associated_data` is not a string".into(),
                ))
            }
        };
        let plaintext = decrypt_resource(
            &account.api_v3_key,
            resource_nonce,
            associated_data,
            ciphertext,
        )?;
        let transaction: Value = parse_json_unique(&plaintext)
            .map_err(|e| Rejection::Malformed(format!("decrypted resource is not JSON: {e}")))?;
        if !transaction.is_object() {
            return Err(Rejection::Malformed(
                "decrypted resource is not a JSON object".into(),
            ));
        }

        // Refund and other non-transaction resources carry no appid; a transaction must.
        let sub_mchid = self.mode(&account.name).check_owner(
            account,
            &transaction,
            event_type.starts_with("TRANSACTION."),
        )?;

        let mut fields = BTreeMap::new();
        flatten_unique(&transaction, "", &mut fields)?;
        fields.insert("event_type".into(), event_type.clone());
        for k in ["id", "create_time"] {
            if let Some(v) = str_field(&envelope, k) {
                fields.insert(k.into(), v.to_owned());
            }
        }

        // Only a well-formed resource may be acknowledged as a non-payment: one the host
        // cannot read is refused, so WeChat retries it and someone sees the reason.
        let out_trade_no = required_text(&transaction, "out_trade_no")?.to_owned();
        let kind = if event_type.starts_with("REFUND.") {
            refund_kind(&event_type, &transaction)?
        } else if event_type.starts_with("TRANSACTION.") {
            let trade_state = required_text(&transaction, "trade_state")?;
            if !TRADE_STATES.contains(&trade_state) {
                return Err(Rejection::Unsupported(format!(
                    "trade_state `{trade_state}` is none of {}",
                    TRADE_STATES.join(", ")
                )));
            }
            let amount = fen(&transaction, "total")?;
            if event_type == "TRANSACTION.SUCCESS" && trade_state == "SUCCESS" {
                NoticeKind::Paid(Payment {
                    transaction_id: required_text(&transaction, "transaction_id")?.to_owned(),
                    amount,
                    paid_at: str_field(&transaction, "success_time").and_then(parse_rfc3339),
                })
            } else {
                NoticeKind::NotPaid {
                    state: format!("{event_type} {trade_state}"),
                }
            }
        } else {
            // Not a payment or a refund this host can read: refused rather than taken for
            // nothing, in case it is one.
            return Err(Rejection::Unsupported(format!("event_type `{event_type}`")));
        };
        Ok(Notice {
            account: account.name.clone(),
            out_trade_no,
            kind,
            fields,
            sub_mchid,
        })
    }

    fn success(&self) -> Answer {
        Answer {
            status: 204,
            content_type: None,
            body: Vec::new(),
        }
    }

    fn failure(&self, reason: &str) -> Answer {
        Answer {
            status: 400,
            content_type: Some("application/json"),
            body: serde_json::json!({ "code": "FAIL", "message": reason })
                .to_string()
                .into_bytes(),
        }
    }
}

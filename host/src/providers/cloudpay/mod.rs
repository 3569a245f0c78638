//! WeChat CloudPay (云开发 微信支付): the payment callback event of a cloud function,
//! relayed to this host by the merchant's own cloud function.
//!
//! WeChat delivers CloudPay callbacks to a cloud function, not to a URL, and signs
//! nothing the relay could pass on; so the relay authenticates itself with a secret it
//! shares with this host, one per account: `X-Paynotify-Timestamp` (unix seconds) and
//! `X-Paynotify-Signature: v1=<hex HMAC-SHA256(secret, timestamp + "." + body)>`, over
//! the body's raw bytes. The timestamp must be within 5 minutes of the time of receipt,
//! so a captured request cannot be replayed later, while a stored notification replayed
//! by ops still verifies. The relay should forward the event object unchanged
//! (`JSON.stringify(event)`): `outTradeNo`, `totalFee` (fen), `resultCode`, `returnCode`,
//! `transactionId`, `subMchId`, `timeEnd`, …
//!
//! The answer is the object CloudPay expects from the callback function,
//! `{"errcode":0,"errmsg":"SUCCESS"}`; the relay returns it to WeChat as its own result.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::common::{check_timestamp, nonblank_header, pick_account, required};
use super::json::{flatten_unique, optional_str, parse_json_unique, required_str, str_or_empty};
use super::wechat_v2::parse_time_end;
use super::{
    Answer, ContentTypes, Inbound, Notice, NoticeKind, Payment, Provider, ProviderKind, Rejection,
};
use crate::config::AccountConfig;

#[cfg(test)]
mod tests;

/// Largest allowed difference between `X-Paynotify-Timestamp` and the time of receipt.
pub const MAX_CLOCK_SKEW_SECS: i64 = 5 * 60;

/// Header carrying the relay's timestamp (unix seconds).
pub const TIMESTAMP_HEADER: &str = "x-paynotify-timestamp";

/// Header carrying the relay's signature, `v1=<hex>`.
pub const SIGNATURE_HEADER: &str = "x-paynotify-signature";

/// The relay forwards the event as JSON.
pub const CONTENT_TYPES: ContentTypes = ContentTypes {
    media_types: &["application/json"],
    may_be_absent: false,
};

/// One configured CloudPay sub-merchant.
#[derive(Clone)]
pub struct Account {
    name: String,
    sub_mch_id: String,
    secret: String,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("name", &self.name)
            .field("sub_mch_id", &self.sub_mch_id)
            .finish_non_exhaustive()
    }
}

impl Account {
    /// Reads the CloudPay keys of an `[[accounts]]` entry.
    pub fn from_config(a: &AccountConfig) -> Result<Account, String> {
        let sub_mch_id = required(&a.sub_mch_id, "sub_mch_id", false, ProviderKind::Cloudpay)?;
        let secret = required(&a.secret, "secret", true, ProviderKind::Cloudpay)?;
        if secret.len() < 16 {
            return Err("`secret` must be at least 16 bytes (use a long random string)".into());
        }
        Ok(Account::new(&a.name, &sub_mch_id, &secret))
    }

    /// Builds an account directly (tests, tools).
    pub fn new(name: &str, sub_mch_id: &str, secret: &str) -> Account {
        Account {
            name: name.into(),
            sub_mch_id: sub_mch_id.into(),
            secret: secret.into(),
        }
    }
}

fn mac(secret: &str, timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `X-Paynotify-Signature` value for `body` sent at `timestamp` (for relays and tests).
pub fn signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    format!(
        "v1={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

/// The CloudPay provider.
pub struct Cloudpay {
    accounts: Vec<Account>,
}

impl Cloudpay {
    /// A provider over these accounts.
    pub fn new(accounts: Vec<Account>) -> Cloudpay {
        Cloudpay { accounts }
    }
}

impl Provider for Cloudpay {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Cloudpay
    }

    fn accounts(&self) -> Vec<&str> {
        self.accounts.iter().map(|a| a.name.as_str()).collect()
    }

    fn content_types(&self) -> ContentTypes {
        CONTENT_TYPES
    }

    fn verify(&self, inbound: &Inbound<'_>) -> Result<Notice, Rejection> {
        let timestamp = nonblank_header(inbound, TIMESTAMP_HEADER)
            .ok_or_else(|| Rejection::BadSignature("no `X-Paynotify-Timestamp` header".into()))?;
        let signature = nonblank_header(inbound, SIGNATURE_HEADER)
            .ok_or_else(|| Rejection::BadSignature("no `X-Paynotify-Signature` header".into()))?;
        check_timestamp(
            "X-Paynotify-Timestamp",
            timestamp,
            inbound.received_at,
            MAX_CLOCK_SKEW_SECS,
        )?;
        let hex_sig = signature.strip_prefix("v1=").ok_or_else(|| {
            Rejection::BadSignature("X-Paynotify-Signature must be `v1=<hex>`".into())
        })?;
        let sig = hex::decode(hex_sig)
            .ok()
            .filter(|s| s.len() == 32)
            .ok_or_else(|| {
                Rejection::BadSignature("X-Paynotify-Signature is not 64 hex digits".into())
            })?;

        // The event names its sub-merchant; that picks the account whose secret must
        // have signed it. Nothing else in it is used before the signature verifies.
        let event: Value = parse_json_unique(inbound.body)
            .map_err(|e| Rejection::Malformed(format!("body is not JSON: {e}")))?;
        if !event.is_object() {
            return Err(Rejection::Malformed("body is not a JSON object".into()));
        }
        let sub_mch_id = str_or_empty(&event, "subMchId");
        let account = pick_account(
            &self.accounts,
            |a| &a.name,
            inbound.account,
            |a| a.sub_mch_id == sub_mch_id,
        )?;
        mac(&account.secret, timestamp, inbound.body)
            .verify_slice(&sig)
            .map_err(|_| Rejection::BadSignature("signature does not match".into()))?;

        if sub_mch_id != account.sub_mch_id {
            return Err(Rejection::AccountMismatch(format!(
                "subMchId `{sub_mch_id}` does not belong to account `{}`",
                account.name
            )));
        }
        let mut fields = BTreeMap::new();
        flatten_unique(&event, "", &mut fields)?;
        // Only a well-formed event may be acknowledged as a non-payment: one the host
        // cannot read (a code missing, a field of the wrong type) is refused, so the relay
        // reports the failure and someone sees the reason.
        match required_str(&event, "returnCode")? {
            "SUCCESS" => {}
            // As in WeChat Pay v2: a communication failure carries no result to record.
            "FAIL" => {
                return Err(Rejection::Unsupported(format!(
                    "returnCode FAIL ({})",
                    optional_str(&event, "returnMsg")?
                )))
            }
            other => {
                return Err(Rejection::Malformed(format!(
                    "returnCode `{other}` is neither SUCCESS nor FAIL"
                )))
            }
        }
        let result_code = required_str(&event, "resultCode")?;
        let out_trade_no = required_str(&event, "outTradeNo")?.to_owned();
        if out_trade_no.is_empty() {
            return Err(Rejection::Malformed("outTradeNo is empty".into()));
        }
        let amount = event
            .get("totalFee")
            .ok_or_else(|| Rejection::Malformed("no totalFee".into()))?
            .as_i64()
            .filter(|n| *n >= 0)
            .ok_or_else(|| Rejection::Malformed("totalFee is not an amount in fen".into()))?;
        let kind = match result_code {
            "SUCCESS" => {
                let transaction_id = required_str(&event, "transactionId")?;
                if transaction_id.is_empty() {
                    return Err(Rejection::Malformed("transactionId is empty".into()));
                }
                NoticeKind::Paid(Payment {
                    transaction_id: transaction_id.to_owned(),
                    amount,
                    paid_at: parse_time_end(optional_str(&event, "timeEnd")?),
                })
            }
            "FAIL" => NoticeKind::NotPaid {
                state: format!(
                    "returnCode SUCCESS resultCode FAIL {}",
                    optional_str(&event, "errCode")?
                )
                .trim()
                .to_owned(),
            },
            other => {
                return Err(Rejection::Malformed(format!(
                    "resultCode `{other}` is neither SUCCESS nor FAIL"
                )))
            }
        };
        Ok(Notice {
            account: account.name.clone(),
            out_trade_no,
            kind,
            fields,
            sub_mchid: None,
        })
    }

    fn success(&self) -> Answer {
        Answer {
            status: 200,
            content_type: Some("application/json"),
            body: br#"{"errcode":0,"errmsg":"SUCCESS"}"#.to_vec(),
        }
    }

    fn failure(&self, reason: &str) -> Answer {
        Answer {
            status: 200,
            content_type: Some("application/json"),
            body: serde_json::json!({ "errcode": 1, "errmsg": reason })
                .to_string()
                .into_bytes(),
        }
    }
}

//! Alipay (支付宝) asynchronous notifications: an `application/x-www-form-urlencoded`
//! body signed by Alipay with RSA2 (SHA256withRSA, PKCS#1 v1.5).
//!
//! The signed string is built from the parameter map exactly as received: drop `sign`
//! and `sign_type`, sort by key, join the URL-decoded `k=v` pairs with `&`. Fields this
//! code does not know (and `fund_bill_list`, a JSON string) take part as they are.
//! Parameters with an empty value are left out, as Alipay's own SDKs do when they check
//! a notification (`AlipaySignature.getSignCheckContentV1` skips empty values), so a
//! notification those SDKs accept is accepted here too.
//!
//! That string is ambiguous: a `body` of `x&out_trade_no=…&total_amount=…` signs the same
//! string as a notification with those parameters split out. A notification whose
//! signed string does not split back into exactly its own parameters
//! (`require_unambiguous` in `providers`) is refused. Only `&` followed by `name=` makes it so:
//! `Tom & Jerry` passes, and `passback_params`, which Alipay asks merchants to
//! URL-encode, arrives decoded once with its own `%26` and `%3D` intact. A merchant that
//! puts raw `a=1&b=2` there gets its notifications refused with that reason.
//!
//! Only after the signature verifies do `app_id`, `seller_id`, `total_amount` and
//! `trade_status` mean anything. Amounts are yuan with up to two decimals and are turned
//! into fen by exact decimal parsing, never through floating point.
//!
//! A refund comes as the same kind of notification with `refund_fee` (the total refunded
//! so far), `gmt_refund` and `out_biz_no` (the merchant's refund number); `trade_status`
//! is `TRADE_SUCCESS` after a partial refund, `TRADE_CLOSED` after a full one.
//!
//! The answer is the bare word `success`; anything else makes Alipay retry.
//!
//! [`api`] calls `alipay.trade.query` and `alipay.trade.close` with the same account,
//! verifying answers with its Alipay public key ([`Account::verify_rsa2`]) and reading
//! amounts and times with the same parsers.

pub mod api;

use std::collections::BTreeMap;

use base64::Engine as _;
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use rsa::RsaPublicKey;
use sha2::Sha256;

use super::common::{china_time_ms, pick_account, require_unambiguous, required};
use super::{
    Answer, ContentTypes, Inbound, Notice, NoticeKind, Payment, Provider, ProviderKind, Refund,
    RefundAmount, Rejection,
};
use crate::config::AccountConfig;

/// Alipay posts its notifications as a form.
pub const CONTENT_TYPES: ContentTypes = ContentTypes {
    media_types: &["application/x-www-form-urlencoded"],
    may_be_absent: false,
};

/// Most parameters a notification may carry; real ones have about 25.
const MAX_FIELDS: usize = 256;

/// One configured Alipay app.
#[derive(Clone)]
pub struct Account {
    name: String,
    app_id: String,
    seller_id: Option<String>,
    key: VerifyingKey<Sha256>,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("name", &self.name)
            .field("app_id", &self.app_id)
            .field("seller_id", &self.seller_id)
            .finish_non_exhaustive()
    }
}

impl Account {
    /// Reads the Alipay keys of an `[[accounts]]` entry.
    pub fn from_config(a: &AccountConfig) -> Result<Account, String> {
        let app_id = required(&a.app_id, "app_id", false, ProviderKind::Alipay)?;
        let key_text = required(
            &a.alipay_public_key,
            "alipay_public_key",
            true,
            ProviderKind::Alipay,
        )?;
        let key = parse_public_key(&key_text).map_err(|e| format!("`alipay_public_key`: {e}"))?;
        let mut account = Account::new(&a.name, &app_id, key);
        account.seller_id = a.seller_id.clone().filter(|s| !s.is_empty());
        Ok(account)
    }

    /// Builds an account directly (tests, tools).
    pub fn new(name: &str, app_id: &str, alipay_public_key: RsaPublicKey) -> Account {
        Account {
            name: name.into(),
            app_id: app_id.into(),
            seller_id: None,
            key: VerifyingKey::new(alipay_public_key),
        }
    }

    /// Checks an RSA2 (SHA256withRSA) base64 signature by Alipay over `message`: a
    /// notification's sign string, or the raw JSON of an API answer.
    pub(crate) fn verify_rsa2(&self, message: &[u8], sign: &str) -> Result<(), Rejection> {
        if sign.is_empty() {
            return Err(Rejection::BadSignature("no `sign` parameter".into()));
        }
        let sig_bytes = base64::engine::general_purpose::STANDARD
            .decode(sign)
            .map_err(|_| Rejection::BadSignature("`sign` is not base64".into()))?;
        let sig = Signature::try_from(sig_bytes.as_slice())
            .map_err(|_| Rejection::BadSignature("`sign` is not an RSA signature".into()))?;
        self.key
            .verify(message, &sig)
            .map_err(|_| Rejection::BadSignature("signature does not match".into()))
    }

    /// Also require this `seller_id`.
    pub fn with_seller_id(mut self, seller_id: &str) -> Account {
        self.seller_id = Some(seller_id.into());
        self
    }
}

/// Parses the Alipay public key as the console gives it: PEM (`BEGIN PUBLIC KEY`, or
/// `BEGIN RSA PUBLIC KEY`) or the bare base64 of the SubjectPublicKeyInfo DER, possibly
/// wrapped over several lines.
pub fn parse_public_key(text: &str) -> Result<RsaPublicKey, String> {
    let text = text.trim();
    if text.contains("-----BEGIN RSA PUBLIC KEY-----") {
        return RsaPublicKey::from_pkcs1_pem(text)
            .map_err(|e| format!("not a PKCS#1 RSA public key: {e}"));
    }
    if text.contains("-----BEGIN") {
        return RsaPublicKey::from_public_key_pem(text)
            .map_err(|e| format!("not a PEM RSA public key (-----BEGIN PUBLIC KEY-----): {e}"));
    }
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|e| format!("neither PEM nor base64: {e}"))?;
    RsaPublicKey::from_public_key_der(&der)
        .map_err(|e| format!("not an RSA public key (SubjectPublicKeyInfo): {e}"))
}

/// Parses a form body into a map, refusing duplicate keys, empty keys and oversized maps.
pub fn parse_form(body: &[u8]) -> Result<BTreeMap<String, String>, Rejection> {
    let mut fields = BTreeMap::new();
    for (k, v) in form_urlencoded::parse(body) {
        if k.is_empty() {
            return Err(Rejection::Malformed("a parameter has an empty name".into()));
        }
        if fields.len() >= MAX_FIELDS {
            return Err(Rejection::Malformed(format!(
                "more than {MAX_FIELDS} parameters"
            )));
        }
        if fields.contains_key(k.as_ref()) {
            return Err(Rejection::Malformed(format!(
                "parameter `{k}` appears twice"
            )));
        }
        fields.insert(k.into_owned(), v.into_owned());
    }
    if fields.is_empty() {
        return Err(Rejection::Malformed("empty form body".into()));
    }
    Ok(fields)
}

/// The string Alipay signs: every non-empty parameter except `sign` and `sign_type`,
/// sorted by name, `k=v` joined by `&` (values URL-decoded).
pub fn string_to_sign(fields: &BTreeMap<String, String>) -> String {
    let mut s = String::with_capacity(1024);
    for (k, v) in signed_fields(fields) {
        if !s.is_empty() {
            s.push('&');
        }
        s.push_str(k);
        s.push('=');
        s.push_str(v);
    }
    s
}

/// The parameters [`string_to_sign`] joins, in its order.
pub fn signed_fields(fields: &BTreeMap<String, String>) -> Vec<(&str, &str)> {
    fields
        .iter()
        .filter(|(k, v)| *k != "sign" && *k != "sign_type" && !v.is_empty())
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// Yuan with at most two decimals (`"0.01"`, `"100"`, `"1.5"`) → fen, exactly.
pub fn yuan_to_fen(s: &str) -> Option<i64> {
    let (whole, frac) = match s.split_once('.') {
        Some((w, f)) => (w, f),
        None => (s, ""),
    };
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || whole.len() > 13 || !digits(whole) || !digits(frac) || frac.len() > 2 {
        return None;
    }
    if s.contains('.') && frac.is_empty() {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let frac: i64 = match frac.len() {
        0 => 0,
        1 => frac.parse::<i64>().ok()? * 10,
        _ => frac.parse().ok()?,
    };
    whole.checked_mul(100)?.checked_add(frac)
}

/// Parameter `k` as fen, refused unless it is yuan with at most two decimals.
fn yuan_field(fields: &BTreeMap<String, String>, k: &str) -> Result<i64, Rejection> {
    let v = fields.get(k).map(String::as_str).unwrap_or("");
    yuan_to_fen(v).ok_or_else(|| {
        Rejection::Malformed(format!(
            "{k} `{v}` is not an amount in yuan with at most two decimals"
        ))
    })
}

/// `yyyy-MM-dd HH:mm:ss` in China Standard Time → unix ms.
pub(crate) fn parse_gmt(s: &str) -> Option<i64> {
    china_time_ms(
        s,
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]"),
    )
}

/// A refund notification's facts. Alipay states the total refunded so far, not this
/// refund's share of it.
fn refund_kind(fields: &BTreeMap<String, String>) -> Result<NoticeKind, Rejection> {
    let get = |k: &str| fields.get(k).map(String::as_str).unwrap_or("");
    for k in ["out_trade_no", "trade_no", "out_biz_no"] {
        if get(k).is_empty() {
            return Err(Rejection::Malformed(format!("refund has no {k}")));
        }
    }
    let yuan = |k: &str| yuan_field(fields, k);
    let refunded = yuan("refund_fee")?;
    if refunded == 0 {
        return Err(Rejection::Malformed("refund_fee is 0".into()));
    }
    let total_fee = match get("total_amount") {
        "" => None,
        _ => Some(yuan("total_amount")?),
    };
    // `gmt_refund` carries milliseconds (`2026-01-01 10:00:00.320`); seconds suffice.
    let gmt_refund = get("gmt_refund");
    let refunded_at = parse_gmt(gmt_refund.split('.').next().unwrap_or(gmt_refund));
    Ok(NoticeKind::Refunded(Refund {
        out_refund_no: get("out_biz_no").to_owned(),
        refund_id: String::new(),
        transaction_id: get("trade_no").to_owned(),
        amount: RefundAmount::Cumulative(refunded),
        total_fee,
        refunded_at,
    }))
}

/// The Alipay provider.
pub struct Alipay {
    accounts: Vec<Account>,
}

impl Alipay {
    /// A provider over these accounts.
    pub fn new(accounts: Vec<Account>) -> Alipay {
        Alipay { accounts }
    }
}

impl Provider for Alipay {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Alipay
    }

    fn accounts(&self) -> Vec<&str> {
        self.accounts.iter().map(|a| a.name.as_str()).collect()
    }

    fn content_types(&self) -> ContentTypes {
        CONTENT_TYPES
    }

    fn verify(&self, inbound: &Inbound<'_>) -> Result<Notice, Rejection> {
        let fields = parse_form(inbound.body)?;
        let get = |k: &str| fields.get(k).map(String::as_str).unwrap_or("");
        if let Some(charset) = fields.get("charset") {
            // Values of a GBK app arrive as GBK bytes; this host verifies UTF-8 only.
            if !charset.eq_ignore_ascii_case("utf-8") && !charset.eq_ignore_ascii_case("utf8") {
                return Err(Rejection::Unsupported(format!(
                    "charset `{charset}`: set the app's charset to UTF-8"
                )));
            }
        }
        match fields.get("sign_type").map(String::as_str) {
            None | Some("RSA2") => {}
            Some(other) => {
                return Err(Rejection::Unsupported(format!(
                    "sign_type `{other}` (only RSA2)"
                )))
            }
        }
        let account = pick_account(
            &self.accounts,
            |a| &a.name,
            inbound.account,
            |a| a.app_id == get("app_id"),
        )?;
        account.verify_rsa2(string_to_sign(&fields).as_bytes(), get("sign"))?;
        // The signature covers a string, not the parameters: it means these parameters
        // only if that string cannot be split into others (`body` = `x&out_trade_no=…`).
        // A value may still hold `&` not followed by `name=` (`Tom & Jerry`); URL-encoded
        // text in `passback_params` arrives decoded once, its own `%26` intact.
        require_unambiguous(&signed_fields(&fields))?;

        // Verified: now the identifiers mean something.
        if get("app_id") != account.app_id {
            return Err(Rejection::AccountMismatch(format!(
                "app_id `{}` does not belong to account `{}`",
                get("app_id"),
                account.name
            )));
        }
        if let Some(seller_id) = &account.seller_id {
            if get("seller_id") != seller_id {
                return Err(Rejection::AccountMismatch(format!(
                    "seller_id `{}` does not belong to account `{}`",
                    get("seller_id"),
                    account.name
                )));
            }
        }
        let out_trade_no = get("out_trade_no").to_owned();
        // Only a well-formed notification may be acknowledged as a non-payment: one the
        // host cannot read is refused, so Alipay retries it and someone sees the reason.
        if out_trade_no.is_empty() {
            return Err(Rejection::Malformed("no out_trade_no".into()));
        }
        let yuan = |k: &str| yuan_field(&fields, k);
        if fields.contains_key("total_amount") {
            yuan("total_amount")?;
        }
        let trade_status = get("trade_status");
        let is_refund = (!get("out_biz_no").is_empty() || !get("gmt_refund").is_empty())
            && matches!(trade_status, "TRADE_SUCCESS" | "TRADE_CLOSED");
        let kind = match trade_status {
            _ if is_refund => refund_kind(&fields)?,
            "TRADE_SUCCESS" | "TRADE_FINISHED" => {
                let trade_no = get("trade_no");
                if trade_no.is_empty() {
                    return Err(Rejection::Malformed("no trade_no".into()));
                }
                NoticeKind::Paid(Payment {
                    transaction_id: trade_no.to_owned(),
                    amount: yuan("total_amount")?,
                    paid_at: parse_gmt(get("gmt_payment")),
                })
            }
            // The documented non-payment states: recorded, acknowledged, never a payment.
            "WAIT_BUYER_PAY" | "TRADE_CLOSED" => NoticeKind::NotPaid {
                state: trade_status.to_owned(),
            },
            "" => return Err(Rejection::Malformed("no trade_status".into())),
            // A state this host does not know may be a payment it cannot read: refused
            // (Alipay retries), not acknowledged as nothing.
            other => {
                return Err(Rejection::Unsupported(format!(
                    "trade_status `{other}` is none of WAIT_BUYER_PAY, TRADE_CLOSED, TRADE_SUCCESS, TRADE_FINISHED"
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
            content_type: Some("text/plain; charset=utf-8"),
            body: b"success".to_vec(),
        }
    }

    fn failure(&self, _reason: &str) -> Answer {
        // Alipay reads only the body: anything but `success` is a failure. The reason is
        // stored with the notification and logged, not sent.
        Answer {
            status: 200,
            content_type: Some("text/plain; charset=utf-8"),
            body: b"failure".to_vec(),
        }
    }
}

#[cfg(test)]
mod tests;

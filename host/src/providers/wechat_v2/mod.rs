//! WeChat Pay API v2: an XML body signed with the merchant's API key.
//!
//! The signature is computed over every non-empty field except `sign`, sorted by name,
//! joined as `k=v&…&key=APIKEY`, then MD5 (default) or HMAC-SHA256 (when `sign_type`
//! says so), upper-case hex. The body is parsed into a map, never into a struct, so
//! fields this code does not know still take part in the signed string.
//!
//! Values may hold `&` and `=`, so an `attach` of `x&out_trade_no=…&total_fee=…` signs the
//! same string as a notification with those fields split out: whoever holds one genuine
//! notification could pay another order with it. A notification whose signed string
//! does not split back into exactly its own fields (`require_unambiguous` in `providers`) is
//! refused; `&` not followed by `name=` (`R&D`) is still fine.
//!
//! Refund notifications (退款结果通知) come to the same endpoint unsigned: their
//! `req_info` is the refund, AES-256-ECB encrypted under the lower-case hex MD5 of the
//! API key. Decrypting it with our key is what authenticates it.
//!
//! Here: the account, the signature rule and the notification verifier. `xml.rs` reads
//! and writes the XML; [`api`] calls `orderquery` and `closeorder` with the same account
//! and holds their answers to the same signature and merchant checks; `pay.rs` places
//! payments (`unifiedorder`) and starts refunds (`secapi/pay/refund`, mutual TLS with the
//! account's client certificate, `tls.rs`) through the same calls.

pub mod api;
mod pay;
#[cfg(test)]
mod tests;
mod tls;
mod xml;

use std::collections::BTreeMap;

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, KeyInit};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

pub use pay::DEFAULT_SPBILL_CREATE_IP;
pub use xml::{parse_xml, signed_xml};

use super::common::{china_time_ms, ct_eq, parse_fen, pick_account, require_unambiguous, required};
use super::{
    Answer, ContentTypes, Inbound, Notice, NoticeKind, Payment, Provider, ProviderKind, Refund,
    RefundAmount, Rejection,
};
use crate::config::AccountConfig;
use xml::parse_xml_root;

/// WeChat Pay v2 notifications are XML; some proxies drop the header, and WeChat has
/// sent both types.
pub const CONTENT_TYPES: ContentTypes = ContentTypes {
    media_types: &["text/xml", "application/xml"],
    may_be_absent: true,
};

const SUCCESS_XML: &str =
    "<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>";

/// A v2 signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignType {
    /// `MD5` (the default when `sign_type` is absent).
    Md5,
    /// `HMAC-SHA256`.
    HmacSha256,
}

impl SignType {
    fn parse(s: &str) -> Option<SignType> {
        match s {
            "MD5" => Some(SignType::Md5),
            "HMAC-SHA256" => Some(SignType::HmacSha256),
            _ => None,
        }
    }

    /// The name WeChat uses (`sign_type`, JSAPI `signType`).
    pub fn as_str(self) -> &'static str {
        match self {
            SignType::Md5 => "MD5",
            SignType::HmacSha256 => "HMAC-SHA256",
        }
    }
}

/// One configured v2 merchant account.
#[derive(Clone)]
pub struct Account {
    name: String,
    appid: String,
    mch_id: String,
    api_key: String,
    pinned: Option<SignType>,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("name", &self.name)
            .field("appid", &self.appid)
            .field("mch_id", &self.mch_id)
            .finish_non_exhaustive()
    }
}

impl Account {
    /// Reads the v2 keys of an `[[accounts]]` entry.
    pub fn from_config(a: &AccountConfig) -> Result<Account, String> {
        let pinned = match a.sign_type.as_deref() {
            None => None,
            Some(s) => Some(
                SignType::parse(s)
                    .ok_or_else(|| format!("`sign_type` must be MD5 or HMAC-SHA256, not `{s}`"))?,
            ),
        };
        Ok(Account {
            name: a.name.clone(),
            appid: required(&a.appid, "appid", false, ProviderKind::WechatV2)?,
            mch_id: required(&a.mch_id, "mch_id", false, ProviderKind::WechatV2)?,
            api_key: required(&a.api_key, "api_key", true, ProviderKind::WechatV2)?,
            pinned,
        })
    }

    /// Builds an account directly (tests, tools).
    pub fn new(name: &str, appid: &str, mch_id: &str, api_key: &str) -> Account {
        Account {
            name: name.into(),
            appid: appid.into(),
            mch_id: mch_id.into(),
            api_key: api_key.into(),
            pinned: None,
        }
    }

    /// Checks the `sign` of a notification or an answer under this account's key.
    fn check_sign(
        &self,
        fields: &BTreeMap<String, String>,
        sign_type: SignType,
    ) -> Result<(), Rejection> {
        let received = fields
            .get("sign")
            .map(String::as_str)
            .unwrap_or("")
            .to_ascii_uppercase();
        if received.is_empty() {
            return Err(Rejection::BadSignature("no `sign` field".into()));
        }
        let expected = sign(fields, &self.api_key, sign_type);
        if !ct_eq(expected.as_bytes(), received.as_bytes()) {
            return Err(Rejection::BadSignature("signature does not match".into()));
        }
        Ok(())
    }

    /// Refuses a message whose `appid` and `mch_id` are not this account's (meaningful only
    /// once the message is authenticated).
    fn check_ids(&self, fields: &BTreeMap<String, String>) -> Result<(), Rejection> {
        let get = |k: &str| fields.get(k).map(String::as_str).unwrap_or("");
        if get("appid") != self.appid || get("mch_id") != self.mch_id {
            return Err(Rejection::AccountMismatch(format!(
                "appid/mch_id {}/{} do not belong to account `{}`",
                get("appid"),
                get("mch_id"),
                self.name
            )));
        }
        Ok(())
    }
}

/// Refuses a message whose `return_code` is not `SUCCESS`: WeChat does not sign
/// communication failures, so nothing in one (no payment either) can be believed.
fn require_return_success(fields: &BTreeMap<String, String>) -> Result<(), Rejection> {
    let get = |k: &str| fields.get(k).map(String::as_str).unwrap_or("");
    if get("return_code") != "SUCCESS" {
        return Err(Rejection::Unsupported(format!(
            "return_code `{}` ({})",
            get("return_code"),
            get("return_msg")
        )));
    }
    Ok(())
}

/// The sign type a message names, or `default` when it names none.
fn sign_type_of(
    fields: &BTreeMap<String, String>,
    default: SignType,
) -> Result<SignType, Rejection> {
    match fields.get("sign_type") {
        None => Ok(default),
        Some(s) => {
            SignType::parse(s).ok_or_else(|| Rejection::Unsupported(format!("sign_type `{s}`")))
        }
    }
}

/// The WeChat Pay v2 provider.
pub struct WechatV2 {
    accounts: Vec<Account>,
}

impl WechatV2 {
    /// A provider over these accounts.
    pub fn new(accounts: Vec<Account>) -> WechatV2 {
        WechatV2 { accounts }
    }
}

/// The string that is signed: sorted non-empty fields except `sign`, plus `&key=`.
pub fn string_to_sign(fields: &BTreeMap<String, String>, api_key: &str) -> String {
    let mut s = String::with_capacity(512);
    for (k, v) in signed_fields(fields) {
        if !s.is_empty() {
            s.push('&');
        }
        s.push_str(k);
        s.push('=');
        s.push_str(v);
    }
    s.push_str("&key=");
    s.push_str(api_key);
    s
}

/// The fields [`string_to_sign`] joins, in its order (the `&key=` suffix aside).
pub fn signed_fields(fields: &BTreeMap<String, String>) -> Vec<(&str, &str)> {
    fields
        .iter()
        .filter(|(k, v)| *k != "sign" && !v.is_empty())
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// The upper-case hex signature of `fields` under `api_key`.
pub fn sign(fields: &BTreeMap<String, String>, api_key: &str, sign_type: SignType) -> String {
    let text = string_to_sign(fields, api_key);
    match sign_type {
        SignType::Md5 => hex::encode_upper(Md5::digest(text.as_bytes())),
        SignType::HmacSha256 => {
            // HMAC accepts keys of any length; new_from_slice cannot fail for it.
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(api_key.as_bytes())
                .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
            mac.update(text.as_bytes());
            hex::encode_upper(mac.finalize().into_bytes())
        }
    }
}

/// `yyyyMMddHHmmss` in China Standard Time → unix ms (WeChat's `time_end`, which CloudPay
/// relays as `timeEnd`).
pub(crate) fn parse_time_end(s: &str) -> Option<i64> {
    china_time_ms(
        s,
        time::macros::format_description!("[year][month][day][hour][minute][second]"),
    )
}

impl Provider for WechatV2 {
    fn kind(&self) -> ProviderKind {
        ProviderKind::WechatV2
    }

    fn accounts(&self) -> Vec<&str> {
        self.accounts.iter().map(|a| a.name.as_str()).collect()
    }

    fn content_types(&self) -> ContentTypes {
        CONTENT_TYPES
    }

    fn verify(&self, inbound: &Inbound<'_>) -> Result<Notice, Rejection> {
        let fields = parse_xml(inbound.body)?;
        let get = |k: &str| fields.get(k).map(String::as_str).unwrap_or("");
        require_return_success(&fields)?;
        let account = pick_account(
            &self.accounts,
            |a| &a.name,
            inbound.account,
            |a| a.appid == get("appid") && a.mch_id == get("mch_id"),
        )?;
        if fields.contains_key("req_info") {
            return verify_refund(account, fields);
        }
        let sign_type = sign_type_of(&fields, SignType::Md5)?;
        if let Some(pinned) = account.pinned {
            if pinned != sign_type {
                return Err(Rejection::BadSignature(format!(
                    "account requires {pinned:?} signatures, notification used {sign_type:?}"
                )));
            }
        }
        account.check_sign(&fields, sign_type)?;
        // The signature covers a string, not the fields: it means these fields only if
        // that string cannot be split into others (`attach` = `x&out_trade_no=…`).
        require_unambiguous(&signed_fields(&fields))?;
        // Only now, with the signature good, do the identifiers mean anything.
        account.check_ids(&fields)?;
        let out_trade_no = get("out_trade_no").to_owned();
        // Only a well-formed notification may be acknowledged as a non-payment: one the
        // host cannot read is refused, so WeChat retries it and someone sees the reason.
        if out_trade_no.is_empty() {
            return Err(Rejection::Malformed("no out_trade_no".into()));
        }
        let total_fee = parse_fen(get("total_fee"), "total_fee")?;
        let kind = match get("result_code") {
            "SUCCESS" => {
                let transaction_id = get("transaction_id");
                if transaction_id.is_empty() {
                    return Err(Rejection::Malformed("no transaction_id".into()));
                }
                NoticeKind::Paid(Payment {
                    transaction_id: transaction_id.to_owned(),
                    amount: total_fee,
                    paid_at: parse_time_end(get("time_end")),
                })
            }
            "FAIL" => NoticeKind::NotPaid {
                state: format!("FAIL {}", get("err_code")).trim().to_owned(),
            },
            "" => return Err(Rejection::Malformed("no result_code".into())),
            other => {
                return Err(Rejection::Malformed(format!(
                    "result_code `{other}` is neither SUCCESS nor FAIL"
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
            content_type: Some("application/xml; charset=utf-8"),
            body: SUCCESS_XML.as_bytes().to_vec(),
        }
    }

    fn failure(&self, reason: &str) -> Answer {
        // A reason containing "]]>" must not end the CDATA section early.
        let reason = reason.replace("]]>", "]]]]><![CDATA[>");
        Answer {
            status: 200,
            content_type: Some("application/xml; charset=utf-8"),
            body: format!(
                "<xml><return_code><![CDATA[FAIL]]></return_code><return_msg><![CDATA[{reason}]]></return_msg></xml>"
            )
            .into_bytes(),
        }
    }
}

/// The AES-256 key of a refund notification's `req_info`: the lower-case hex MD5 of the
/// API key, its 32 ASCII characters taken as the 256-bit key.
fn req_info_key(api_key: &str) -> String {
    hex::encode(Md5::digest(api_key.as_bytes()))
}

/// Decrypts a refund notification's `req_info`: base64 of AES-256-ECB (PKCS#7) under
/// [`req_info_key`]. Anything that does not decrypt under this key is refused.
pub fn decrypt_req_info(api_key: &str, req_info: &str) -> Result<Vec<u8>, Rejection> {
    let ciphertext = base64::engine::general_purpose::STANDARD
        .decode(req_info.trim())
        .map_err(|e| Rejection::Malformed(format!("req_info is not base64: {e}")))?;
    if ciphertext.is_empty() || ciphertext.len() % 16 != 0 {
        return Err(Rejection::Malformed(format!(
            "req_info is {} bytes, not a whole number of AES blocks",
            ciphertext.len()
        )));
    }
    let key = req_info_key(api_key);
    ecb::Decryptor::<aes::Aes256>::new(key.as_bytes().into())
        .decrypt_padded_vec_mut::<Pkcs7>(&ciphertext)
        .map_err(|_| {
            Rejection::BadSignature("req_info does not decrypt with the account's API key".into())
        })
}

/// `yyyy-MM-dd HH:mm:ss` in China Standard Time → unix ms (a refund's `success_time`).
fn parse_refund_time(s: &str) -> Option<i64> {
    china_time_ms(
        s,
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]"),
    )
}

/// A refund notification: `req_info` decrypted with the account's key (its only
/// authentication), and the envelope's appid/mch_id the account's.
fn verify_refund(
    account: &Account,
    mut fields: BTreeMap<String, String>,
) -> Result<Notice, Rejection> {
    let req_info = fields.remove("req_info").unwrap_or_default();
    let plain = decrypt_req_info(&account.api_key, &req_info)?;
    // A wrong key passes the padding check now and then; it never yields a refund.
    let info = parse_xml_root(&plain, &["root", "xml"]).map_err(|e| {
        Rejection::BadSignature(format!("req_info does not decrypt to a refund: {e}"))
    })?;
    account.check_ids(&fields)?;
    let get = |k: &str| info.get(k).map(String::as_str).unwrap_or("");
    // Every refund notification names its order and refund, whatever its status: one
    // that does not is not acknowledged as a non-refund either.
    for k in ["out_trade_no", "out_refund_no"] {
        if get(k).is_empty() {
            return Err(Rejection::Malformed(format!("refund has no {k}")));
        }
    }
    let out_trade_no = get("out_trade_no").to_owned();
    let kind = match get("refund_status") {
        "SUCCESS" => {
            if get("transaction_id").is_empty() {
                return Err(Rejection::Malformed("refund has no transaction_id".into()));
            }
            let refund_fee = parse_fen(get("refund_fee"), "refund_fee")?;
            if refund_fee == 0 {
                return Err(Rejection::Malformed("refund_fee is 0".into()));
            }
            NoticeKind::Refunded(Refund {
                out_refund_no: get("out_refund_no").to_owned(),
                refund_id: get("refund_id").to_owned(),
                transaction_id: get("transaction_id").to_owned(),
                amount: RefundAmount::This(refund_fee),
                total_fee: Some(parse_fen(get("total_fee"), "total_fee")?),
                refunded_at: parse_refund_time(get("success_time")),
            })
        }
        // CHANGE (退款异常) and REFUNDCLOSE: the money did not go back; nothing to apply.
        state @ ("CHANGE" | "REFUNDCLOSE") => NoticeKind::NotPaid {
            state: format!("refund {state}"),
        },
        "" => return Err(Rejection::Malformed("refund has no refund_status".into())),
        other => {
            return Err(Rejection::Malformed(format!(
                "refund_status `{other}` is none of SUCCESS, CHANGE, REFUNDCLOSE"
            )))
        }
    };
    // The envelope is not signed: only what was checked against the account goes to the
    // handler next to the decrypted refund, never an unauthenticated field that could pass
    // for part of it.
    let mut verified: BTreeMap<String, String> = fields
        .into_iter()
        .filter(|(k, _)| k == "appid" || k == "mch_id")
        .collect();
    verified.extend(info);
    Ok(Notice {
        account: account.name.clone(),
        out_trade_no,
        kind,
        fields: verified,
        sub_mchid: None,
    })
}

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

pub mod api;

use std::collections::BTreeMap;

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, KeyInit};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use quick_xml::events::Event;
use sha2::Sha256;

use super::{
    pick_account, Answer, Inbound, Notice, NoticeKind, Payment, Provider, ProviderKind, Refund,
    RefundAmount, Rejection,
};
use crate::config::AccountConfig;

const SUCCESS_XML: &str =
    "<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>";

/// Most fields a notification may carry; real ones have about 20.
const MAX_FIELDS: usize = 256;

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
            appid: super::required(&a.appid, "appid", false, ProviderKind::WechatV2)?,
            mch_id: super::required(&a.mch_id, "mch_id", false, ProviderKind::WechatV2)?,
            api_key: super::required(&a.api_key, "api_key", true, ProviderKind::WechatV2)?,
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

/// Parses `<xml><k>v</k>…</xml>` (CDATA or escaped text) into a map. Refuses DTDs,
/// nesting, duplicate fields and anything after the root.
pub fn parse_xml(body: &[u8]) -> Result<BTreeMap<String, String>, Rejection> {
    parse_xml_root(body, &["xml"])
}

/// [`parse_xml`] with any of these root element names (a decrypted `req_info` is
/// `<root>…</root>`).
fn parse_xml_root(body: &[u8], roots: &[&str]) -> Result<BTreeMap<String, String>, Rejection> {
    let bad = |m: String| Rejection::Malformed(m);
    let text = std::str::from_utf8(body).map_err(|_| bad("body is not UTF-8".into()))?;
    let mut reader = quick_xml::Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    let mut fields = BTreeMap::new();
    let mut depth = 0usize;
    let mut root_seen = false;
    let mut current: Option<(String, String)> = None;
    loop {
        let event = reader.read_event().map_err(|e| {
            bad(format!(
                "XML error at byte {}: {e}",
                reader.error_position()
            ))
        })?;
        match event {
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) => {}
            Event::DocType(_) => return Err(bad("DOCTYPE is not allowed".into())),
            Event::Start(e) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                match depth {
                    0 if !root_seen && roots.contains(&name.as_str()) => root_seen = true,
                    0 => {
                        return Err(bad(format!(
                            "root element must be <{}>, found <{name}>",
                            roots.join("> or <")
                        )))
                    }
                    1 => current = Some((name, String::new())),
                    _ => return Err(bad(format!("nested element <{name}> is not allowed"))),
                }
                depth += 1;
            }
            Event::Empty(e) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                if depth != 1 {
                    return Err(bad(format!("unexpected empty element <{name}/>")));
                }
                insert_field(&mut fields, name, String::new())?;
            }
            Event::End(_) => {
                depth = depth.saturating_sub(1);
                if depth == 1 {
                    if let Some((k, v)) = current.take() {
                        insert_field(&mut fields, k, v)?;
                    }
                }
            }
            Event::Text(t) => {
                let s = t.decode().map_err(|e| bad(format!("bad text: {e}")))?;
                match (&mut current, depth) {
                    (Some((_, v)), 2) => v.push_str(&s),
                    _ if s.trim().is_empty() => {}
                    _ => return Err(bad("text outside a field".into())),
                }
            }
            Event::CData(c) => {
                let s = c.decode().map_err(|e| bad(format!("bad CDATA: {e}")))?;
                match (&mut current, depth) {
                    (Some((_, v)), 2) => v.push_str(&s),
                    _ => return Err(bad("CDATA outside a field".into())),
                }
            }
            Event::GeneralRef(r) => {
                let ch = if r.is_char_ref() {
                    r.resolve_char_ref()
                        .map_err(|e| bad(format!("bad character reference: {e}")))?
                } else {
                    let name = r.decode().map_err(|e| bad(format!("bad entity: {e}")))?;
                    match name.as_ref() {
                        "amp" => Some('&'),
                        "lt" => Some('<'),
                        "gt" => Some('>'),
                        "quot" => Some('"'),
                        "apos" => Some('\''),
                        other => return Err(bad(format!("unknown entity &{other};"))),
                    }
                };
                match (&mut current, depth, ch) {
                    (Some((_, v)), 2, Some(c)) => v.push(c),
                    _ => return Err(bad("entity outside a field".into())),
                }
            }
            Event::Eof => break,
        }
    }
    if !root_seen || depth != 0 {
        return Err(bad("incomplete XML document".into()));
    }
    Ok(fields)
}

fn insert_field(
    fields: &mut BTreeMap<String, String>,
    k: String,
    v: String,
) -> Result<(), Rejection> {
    if fields.len() >= MAX_FIELDS {
        return Err(Rejection::Malformed(format!(
            "more than {MAX_FIELDS} fields"
        )));
    }
    if fields.contains_key(&k) {
        return Err(Rejection::Malformed(format!("field `{k}` appears twice")));
    }
    fields.insert(k, v);
    Ok(())
}

/// `yyyyMMddHHmmss` in China Standard Time → unix ms (WeChat's `time_end`, which CloudPay
/// relays as `timeEnd`).
pub(crate) fn parse_time_end(s: &str) -> Option<i64> {
    super::china_time_ms(
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

    fn verify(&self, inbound: &Inbound<'_>) -> Result<Notice, Rejection> {
        let fields = parse_xml(inbound.body)?;
        let get = |k: &str| fields.get(k).map(String::as_str).unwrap_or("");
        if get("return_code") != "SUCCESS" {
            // A communication-failure message carries no signature and no payment.
            return Err(Rejection::Unsupported(format!(
                "return_code `{}` ({})",
                get("return_code"),
                get("return_msg")
            )));
        }
        let account = pick_account(
            &self.accounts,
            |a| &a.name,
            inbound.account,
            |a| a.appid == get("appid") && a.mch_id == get("mch_id"),
        )?;
        if fields.contains_key("req_info") {
            return verify_refund(account, fields);
        }
        let sign_type = match fields.get("sign_type") {
            None => SignType::Md5,
            Some(s) => SignType::parse(s)
                .ok_or_else(|| Rejection::Unsupported(format!("sign_type `{s}`")))?,
        };
        if let Some(pinned) = account.pinned {
            if pinned != sign_type {
                return Err(Rejection::BadSignature(format!(
                    "account requires {pinned:?} signatures, notification used {sign_type:?}"
                )));
            }
        }
        let received = get("sign").to_ascii_uppercase();
        if received.is_empty() {
            return Err(Rejection::BadSignature("no `sign` field".into()));
        }
        let expected = sign(&fields, &account.api_key, sign_type);
        if !super::ct_eq(expected.as_bytes(), received.as_bytes()) {
            return Err(Rejection::BadSignature("signature does not match".into()));
        }
        // The signature covers a string, not the fields: it means these fields only if
        // that string cannot be split into others (`attach` = `x&out_trade_no=…`).
        super::require_unambiguous(&signed_fields(&fields))?;
        // Only now, with the signature good, do the identifiers mean anything.
        if get("appid") != account.appid || get("mch_id") != account.mch_id {
            return Err(Rejection::AccountMismatch(format!(
                "appid/mch_id {}/{} do not belong to account `{}`",
                get("appid"),
                get("mch_id"),
                account.name
            )));
        }
        let out_trade_no = get("out_trade_no").to_owned();
        // Only a well-formed notification may be acknowledged as a non-payment: one the
        // host cannot read is refused, so WeChat retries it and someone sees the reason.
        if out_trade_no.is_empty() {
            return Err(Rejection::Malformed("no out_trade_no".into()));
        }
        let total_fee = super::parse_fen(get("total_fee"), "total_fee")?;
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
    super::china_time_ms(
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
    let outer = |k: &str| fields.get(k).map(String::as_str).unwrap_or("");
    if outer("appid") != account.appid || outer("mch_id") != account.mch_id {
        return Err(Rejection::AccountMismatch(format!(
            "appid/mch_id {}/{} do not belong to account `{}`",
            outer("appid"),
            outer("mch_id"),
            account.name
        )));
    }
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
            let refund_fee = super::parse_fen(get("refund_fee"), "refund_fee")?;
            if refund_fee == 0 {
                return Err(Rejection::Malformed("refund_fee is 0".into()));
            }
            NoticeKind::Refunded(Refund {
                out_refund_no: get("out_refund_no").to_owned(),
                refund_id: get("refund_id").to_owned(),
                transaction_id: get("transaction_id").to_owned(),
                amount: RefundAmount::This(refund_fee),
                total_fee: Some(super::parse_fen(get("total_fee"), "total_fee")?),
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
    })
}

/// Builds a signed v2 notification body (for tests and the README walk-through).
pub fn signed_xml(fields: &BTreeMap<String, String>, api_key: &str, sign_type: SignType) -> String {
    let signature = sign(fields, api_key, sign_type);
    let mut xml = String::from("<xml>");
    for (k, v) in fields.iter().filter(|(k, _)| *k != "sign") {
        xml.push_str(&format!("<{k}><![CDATA[{v}]]></{k}>"));
    }
    xml.push_str(&format!("<sign><![CDATA[{signature}]]></sign>"));
    xml.push_str("</xml>");
    xml
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The example in WeChat Pay's v2 signature documentation (安全规范 / 签名算法).
    #[test]
    fn known_answer_from_wechat_docs() {
        let fields = map(&[
            ("appid", "wxd930ea5d5a258f4f"),
            ("mch_id", "10000100"),
            ("device_info", "1000"),
            ("body", "test"),
            ("nonce_str", "ibuaiVcKdpRxkhJA"),
        ]);
        let key = "192006250b4c09247ec02edce69f6a2d";
        assert_eq!(
            string_to_sign(&fields, key),
            "appid=wxd930ea5d5a258f4f&body=test&device_info=1000&mch_id=10000100&nonce_str=ibuaiVcKdpRxkhJA&key=192006250b4c09247ec02edce69f6a2d"
        );
        assert_eq!(
            sign(&fields, key, SignType::Md5),
            "9A0A8659F005D6984697E2CA0A9CF3B7"
        );
        assert_eq!(
            sign(&fields, key, SignType::HmacSha256),
            "6A9AE1657590FD6257D693A078E1C3E4BB6BA4DC30B23E0EE2496E54170DACD6"
        );
    }

    fn paid_fields() -> BTreeMap<String, String> {
        map(&[
            ("appid", "wx2421b1c4370ec43b"),
            ("bank_type", "CFT"),
            ("cash_fee", "100"),
            ("fee_type", "CNY"),
            ("is_subscribe", "Y"),
            ("mch_id", "10000100"),
            ("nonce_str", "5d2b6c2a8db53831f7eda20af46e531c"),
            ("openid", "oUpF8uMEb4qRXf22hE3X68TekukE"),
            ("out_trade_no", "1409811653"),
            ("result_code", "SUCCESS"),
            ("return_code", "SUCCESS"),
            ("time_end", "20140903131540"),
            ("total_fee", "100"),
            ("trade_type", "JSAPI"),
            ("transaction_id", "1004400740201409030005092168"),
        ])
    }

    fn provider() -> WechatV2 {
        WechatV2::new(vec![Account::new(
            "default",
            "wx2421b1c4370ec43b",
            "10000100",
            "k3y",
        )])
    }

    fn verify(body: &str) -> Result<Notice, Rejection> {
        provider().verify(&Inbound {
            account: None,
            headers: &[],
            body: body.as_bytes(),
            received_at: 0,
        })
    }

    #[test]
    fn accepts_a_signed_payment_in_both_sign_types() {
        for st in [SignType::Md5, SignType::HmacSha256] {
            let mut f = paid_fields();
            if st == SignType::HmacSha256 {
                f.insert("sign_type".into(), "HMAC-SHA256".into());
            }
            let n = verify(&signed_xml(&f, "k3y", st)).expect("verifies");
            assert_eq!(n.out_trade_no, "1409811653");
            let NoticeKind::Paid(p) = n.kind else {
                panic!("not paid")
            };
            assert_eq!(p.amount, 100);
            assert_eq!(p.transaction_id, "1004400740201409030005092168");
            // 2014-09-03 13:15:40 +08:00
            assert_eq!(p.paid_at, Some(1_409_721_340_000));
        }
    }

    #[test]
    fn unknown_fields_take_part_in_the_signature() {
        let mut f = paid_fields();
        f.insert("attach".into(), "gift & <wrap>".into());
        let xml = signed_xml(&f, "k3y", SignType::Md5);
        assert!(verify(&xml).is_ok());
        let tampered = xml.replace("gift &", "gift!&");
        assert!(matches!(verify(&tampered), Err(Rejection::BadSignature(_))));
    }

    #[test]
    fn rejects_tampering_and_wrong_keys() {
        let xml = signed_xml(&paid_fields(), "k3y", SignType::Md5);
        let tampered = xml.replace("<total_fee><![CDATA[100]]>", "<total_fee><![CDATA[1]]>");
        assert!(matches!(verify(&tampered), Err(Rejection::BadSignature(_))));
        let wrong_key = signed_xml(&paid_fields(), "other", SignType::Md5);
        assert!(matches!(
            verify(&wrong_key),
            Err(Rejection::BadSignature(_))
        ));
        let mut f = paid_fields();
        f.insert("mch_id".into(), "999".into());
        assert!(matches!(
            verify(&signed_xml(&f, "k3y", SignType::Md5)),
            Err(Rejection::AccountMismatch(_))
        ));
    }

    #[test]
    fn result_fail_is_verified_but_not_paid() {
        let mut f = paid_fields();
        f.insert("result_code".into(), "FAIL".into());
        f.insert("err_code".into(), "NOTENOUGH".into());
        let n = verify(&signed_xml(&f, "k3y", SignType::Md5)).expect("verifies");
        assert_eq!(
            n.kind,
            NoticeKind::NotPaid {
                state: "FAIL NOTENOUGH".into()
            }
        );
    }

    #[test]
    fn a_signature_re_split_into_other_fields_is_refused() {
        // A genuine notification whose `attach` holds `&out_trade_no=…`, and the one an
        // attacker makes of it: those fields split out, everything signed after `attach`
        // swallowed by a last field `zz`. Same string, so the same signature.
        let attack = "mch_id=10000100&out_trade_no=OTHER&result_code=SUCCESS&return_code=SUCCESS&total_fee=9900&transaction_id=4200000099&zz=";
        let mut genuine = paid_fields();
        genuine.insert("attach".into(), format!("x&{attack}"));
        let mut forged: BTreeMap<String, String> = attack
            .trim_end_matches('=')
            .split('&')
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        forged.insert("appid".into(), genuine["appid"].clone());
        forged.insert("attach".into(), "x".into());
        let rest = string_to_sign(&genuine, "k3y");
        let rest = rest
            .split_once("&zz=")
            .and_then(|(_, r)| r.strip_suffix("&key=k3y"))
            .expect("the tail");
        forged.insert("zz".into(), rest.to_owned());
        assert_eq!(
            string_to_sign(&forged, "k3y"),
            string_to_sign(&genuine, "k3y")
        );
        let r = verify(&signed_xml(&forged, "k3y", SignType::Md5));
        assert!(
            matches!(&r, Err(Rejection::Ambiguous(m)) if m.contains("`zz` contains `&")),
            "{r:?}"
        );
        let r = verify(&signed_xml(&genuine, "k3y", SignType::Md5));
        assert!(
            matches!(&r, Err(Rejection::Ambiguous(m)) if m.contains("`attach` contains `&mch_id=`")),
            "{r:?}"
        );
        // `&` not followed by `name=`, and `=` after no `&`, are just text.
        let mut f = paid_fields();
        f.insert("attach".into(), "a=b, R&D && co&".into());
        assert!(verify(&signed_xml(&f, "k3y", SignType::Md5)).is_ok());
    }

    #[test]
    fn signed_but_unreadable_payments_are_refused_not_ignored() {
        for (k, v, reason) in [
            ("result_code", None, "no result_code"),
            ("result_code", Some("MAYBE"), "result_code `MAYBE`"),
            ("out_trade_no", None, "no out_trade_no"),
            ("total_fee", None, "total_fee"),
            ("total_fee", Some("1e3"), "total_fee `1e3`"),
        ] {
            for result in ["SUCCESS", "FAIL"] {
                let mut f = paid_fields();
                f.insert("result_code".into(), result.into());
                match v {
                    Some(v) => f.insert(k.into(), v.into()),
                    None => f.remove(k),
                };
                let r = verify(&signed_xml(&f, "k3y", SignType::Md5));
                assert!(
                    matches!(&r, Err(Rejection::Malformed(m)) if m.contains(reason)),
                    "{k}={v:?} with {result}: {r:?}"
                );
            }
        }
    }

    #[test]
    fn escaped_text_is_unescaped_before_signing() {
        let mut f = paid_fields();
        f.insert("attach".into(), "a&b<c".into());
        let signature = sign(&f, "k3y", SignType::Md5);
        let mut xml = String::from("<xml>");
        for (k, v) in &f {
            let v = v.replace('&', "&amp;").replace('<', "&lt;");
            xml.push_str(&format!("<{k}>{v}</{k}>"));
        }
        xml.push_str(&format!("<sign>{signature}</sign></xml>"));
        assert!(verify(&xml).is_ok());
    }

    #[test]
    fn malformed_bodies_are_rejected_not_panicked_on() {
        for body in [
            "",
            "not xml",
            "<xml>",
            "<xml><a>1</a><a>2</a></xml>",
            "<xml><a><b>1</b></a></xml>",
            "<other><a>1</a></other>",
            "<!DOCTYPE x [<!ENTITY e \"boom\">]><xml><a>&e;</a></xml>",
            "<xml><a>1</a></xml><xml></xml>",
            "<xml><total_fee>1</total_fee></xml>trailing",
        ] {
            assert!(verify(body).is_err(), "accepted {body:?}");
        }
        let mut f = paid_fields();
        f.insert("total_fee".into(), "1.00".into());
        assert!(matches!(
            verify(&signed_xml(&f, "k3y", SignType::Md5)),
            Err(Rejection::Malformed(_))
        ));
    }

    /// The API key of WeChat Pay's v2 signature example, and a refund `req_info` made from
    /// it with OpenSSL (independently of this code):
    /// `openssl enc -aes-256-ecb -K $(printf %s $(printf %s KEY | md5sum | cut -c1-32) | xxd -p -c 64) -nosalt -base64 -A`.
    const DOC_KEY: &str = "192006250b4c09247ec02edce69f6a2d";
    const OPENSSL_REQ_INFO: &str = "WBzGpzQuNpcFxIlFjUUD9BfnwwNUlVAs7bwvgHME4/SH16i8syy9PWgFGltYq26djGWrkvWnE43GfLJKmHP/eG0/OzOYIOgiSnagAjbdzc//3fs4QpwtHsX1hhb1YnmFZnLcqgP/V+qLnVDWXwekZ6G+otF8m3pS3O4btqBgjQZ57qYaQSKu1XCgBGa8S1OiYfOTIbs2YIV5rwTx23arp2NioYT8f1G4kzEJYLIjRExgHVQpnL0QiB2jKwnktQMhnCf0+4BUUfDeSGBVhfK3Belw+G6pujIHMBtWq6uNP7eFIQorTDQTsMLwpfQpd0JccG8ZTGuIcbkRbjZP2LXy0vIz0NlQngs8xREYGEP0D8+YPvL8uOWVblLU5UC0mTjnTpOQlPjd8fWbkTSLo0Rpuu++OSXF/UhEq1F8rL/NTo77/vCyKRkNmD8cBKpJdx5RlOuh7EGd/g6yhGOIHtl8lcNm+4uvCZ3AXdHDBTz4IC0o/HLm1UzjSS9ptr8xe0aTI2r0JY1NXUrKVA3GSBH1DN1e4OhCwjeQ4KI+sJt+FZOiHtY2dMsmS8rRv3TjWfnncTqAE9gD0am3cOH4abJhag==";
    const REFUND_PLAIN: &str = "<root><out_refund_no><![CDATA[R20260101001]]></out_refund_no><out_trade_no><![CDATA[1409811653]]></out_trade_no><refund_fee><![CDATA[40]]></refund_fee><refund_id><![CDATA[50000408942018111907145868882]]></refund_id><refund_status><![CDATA[SUCCESS]]></refund_status><success_time><![CDATA[2026-01-01 10:00:00]]></success_time><total_fee><![CDATA[100]]></total_fee><transaction_id><![CDATA[1004400740201409030005092168]]></transaction_id></root>";

    #[test]
    fn known_answer_req_info_from_openssl() {
        assert_eq!(req_info_key(DOC_KEY), "d96eb16afdd491fa1e705096edbc2205");
        let plain = decrypt_req_info(DOC_KEY, OPENSSL_REQ_INFO).expect("decrypts");
        assert_eq!(plain, REFUND_PLAIN.as_bytes());
        assert!(matches!(
            decrypt_req_info("another key", OPENSSL_REQ_INFO),
            Err(Rejection::BadSignature(_) | Rejection::Malformed(_))
        ));
        for garbage in ["", "not base64!", "QUJD", &OPENSSL_REQ_INFO[..40]] {
            assert!(decrypt_req_info(DOC_KEY, garbage).is_err(), "{garbage:?}");
        }
    }

    fn refund_envelope(req_info: &str) -> String {
        format!(
            "<xml><return_code>SUCCESS</return_code><appid><![CDATA[wx2421b1c4370ec43b]]></appid>\
             <mch_id><![CDATA[10000100]]></mch_id><nonce_str><![CDATA[TeqClE3i0mvn3DrK]]></nonce_str>\
             <req_info><![CDATA[{req_info}]]></req_info></xml>"
        )
    }

    #[test]
    fn a_refund_notification_decrypts_into_a_refund() {
        let p = WechatV2::new(vec![Account::new(
            "default",
            "wx2421b1c4370ec43b",
            "10000100",
            DOC_KEY,
        )]);
        let body = refund_envelope(OPENSSL_REQ_INFO);
        let inbound = |b: &str| {
            p.verify(&Inbound {
                account: None,
                headers: &[],
                body: b.as_bytes(),
                received_at: 0,
            })
        };
        let n = inbound(&body).expect("verifies");
        assert_eq!(n.out_trade_no, "1409811653");
        assert_eq!(
            n.kind,
            NoticeKind::Refunded(Refund {
                out_refund_no: "R20260101001".into(),
                refund_id: "50000408942018111907145868882".into(),
                transaction_id: "1004400740201409030005092168".into(),
                amount: RefundAmount::This(40),
                total_fee: Some(100),
                refunded_at: Some(1_767_232_800_000), // 2026-01-01 10:00:00 +08:00
            })
        );
        assert_eq!(n.fields["refund_status"], "SUCCESS");
        assert_eq!(n.fields["mch_id"], "10000100");
        assert!(!n.fields.contains_key("req_info"));
        // The wrong key, a flipped ciphertext block, another merchant: refused.
        let wrong = WechatV2::new(vec![Account::new(
            "default",
            "wx2421b1c4370ec43b",
            "10000100",
            "k3y",
        )]);
        assert!(wrong
            .verify(&Inbound {
                account: None,
                headers: &[],
                body: body.as_bytes(),
                received_at: 0,
            })
            .is_err());
        let mut tampered = OPENSSL_REQ_INFO.to_owned();
        tampered.replace_range(0..4, "AAAA");
        assert!(inbound(&refund_envelope(&tampered)).is_err());
        let other = body.replace("10000100", "10000999");
        assert!(inbound(&other).is_err());
        // The envelope is not signed: a field added to it never reaches the handler.
        let padded = body.replace("<req_info>", "<attach>forged</attach><req_info>");
        let n = inbound(&padded).expect("verifies");
        assert!(!n.fields.contains_key("attach"), "{:?}", n.fields);
        assert!(!n.fields.contains_key("nonce_str"));
    }

    #[test]
    fn failure_answer_keeps_cdata_intact() {
        let a = provider().failure("x]]>y");
        let body = String::from_utf8(a.body).expect("utf8");
        assert!(parse_xml(body.as_bytes()).is_ok(), "{body}");
    }
}

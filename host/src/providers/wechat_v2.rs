//! WeChat Pay API v2: an XML body signed with the merchant's API key.
//!
//! The signature is computed over every non-empty field except `sign`, sorted by name,
//! joined as `k=v&…&key=APIKEY`, then MD5 (default) or HMAC-SHA256 (when `sign_type`
//! says so), upper-case hex. The body is parsed into a map, never into a struct, so
//! fields this code does not know still take part in the signed string.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use quick_xml::events::Event;
use sha2::Sha256;

use super::{
    pick_account, Answer, Inbound, Notice, NoticeKind, Payment, Provider, ProviderKind, Rejection,
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
    for (k, v) in fields {
        if k == "sign" || v.is_empty() {
            continue;
        }
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
                    0 if !root_seen && name == "xml" => root_seen = true,
                    0 => return Err(bad(format!("root element must be <xml>, found <{name}>"))),
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
        return Err(bad("incomplete <xml> document".into()));
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
        let kind = if get("result_code") == "SUCCESS" {
            if out_trade_no.is_empty() {
                return Err(Rejection::Malformed("no out_trade_no".into()));
            }
            let transaction_id = get("transaction_id");
            if transaction_id.is_empty() {
                return Err(Rejection::Malformed("no transaction_id".into()));
            }
            NoticeKind::Paid(Payment {
                transaction_id: transaction_id.to_owned(),
                amount: super::parse_fen(get("total_fee"), "total_fee")?,
                paid_at: parse_time_end(get("time_end")),
            })
        } else {
            NoticeKind::NotPaid {
                state: format!("{} {}", get("result_code"), get("err_code"))
                    .trim()
                    .to_owned(),
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

    #[test]
    fn failure_answer_keeps_cdata_intact() {
        let a = provider().failure("x]]>y");
        let body = String::from_utf8(a.body).expect("utf8");
        assert!(parse_xml(body.as_bytes()).is_ok(), "{body}");
    }
}

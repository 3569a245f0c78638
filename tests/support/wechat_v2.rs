//! A WeChat Pay v2 notification signer written independently of the host's verifier,
//! so a shared bug cannot make both sides agree on something WeChat would not send.

use std::collections::BTreeMap;

use md5::{Digest, Md5};

/// The test merchant's appid.
pub const APPID: &str = "wx2421b1c4370ec43b";
/// The test merchant's mch_id.
pub const MCH_ID: &str = "10000100";
/// The test merchant's API key (generated for tests; not a real secret).
pub const API_KEY: &str = "t3stk3y0000000000000000000000000";

/// A successful payment notification's fields, shaped like WeChat's documented example.
pub fn paid(out_trade_no: &str, total_fee: i64, transaction_id: &str) -> BTreeMap<String, String> {
    let mut f = BTreeMap::new();
    for (k, v) in [
        ("appid", APPID),
        ("bank_type", "CFT"),
        ("fee_type", "CNY"),
        ("is_subscribe", "Y"),
        ("mch_id", MCH_ID),
        ("openid", "oUpF8uMEb4qRXf22hE3X68TekukE"),
        ("result_code", "SUCCESS"),
        ("return_code", "SUCCESS"),
        ("time_end", "20260903131540"),
        ("trade_type", "JSAPI"),
    ] {
        f.insert(k.to_owned(), v.to_owned());
    }
    f.insert("nonce_str".into(), hex::encode(rand::random::<[u8; 16]>()));
    f.insert("out_trade_no".into(), out_trade_no.into());
    f.insert("total_fee".into(), total_fee.to_string());
    f.insert("cash_fee".into(), total_fee.to_string());
    f.insert("transaction_id".into(), transaction_id.into());
    f
}

/// MD5 signature: sorted non-empty k=v pairs except `sign`, `&key=…`, upper-case hex.
pub fn md5_sign(fields: &BTreeMap<String, String>, key: &str) -> String {
    let mut pairs: Vec<String> = fields
        .iter()
        .filter(|(k, v)| k.as_str() != "sign" && !v.is_empty())
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    pairs.sort();
    let text = format!("{}&key={key}", pairs.join("&"));
    hex::encode_upper(Md5::digest(text.as_bytes()))
}

/// The XML body WeChat would POST, signed with `key`.
pub fn xml(fields: &BTreeMap<String, String>, key: &str) -> String {
    let sign = md5_sign(fields, key);
    let mut x = String::from("<xml>");
    for (k, v) in fields {
        x.push_str(&format!("<{k}><![CDATA[{v}]]></{k}>"));
    }
    x.push_str(&format!("<sign><![CDATA[{sign}]]></sign></xml>"));
    x
}

/// A signed payment notification with the test key.
pub fn paid_xml(out_trade_no: &str, total_fee: i64, transaction_id: &str) -> String {
    xml(&paid(out_trade_no, total_fee, transaction_id), API_KEY)
}

/// A refund notification's decrypted `req_info` fields, shaped like WeChat's documented
/// example (退款结果通知).
pub fn refund_info(
    out_trade_no: &str,
    out_refund_no: &str,
    total_fee: i64,
    refund_fee: i64,
    transaction_id: &str,
) -> BTreeMap<String, String> {
    let mut f = BTreeMap::new();
    for (k, v) in [
        ("refund_status", "SUCCESS"),
        ("success_time", "2026-09-04 10:00:00"),
        ("refund_recv_accout", "支付用户零钱"),
        ("refund_account", "REFUND_SOURCE_RECHARGE_FUNDS"),
        ("refund_request_source", "API"),
    ] {
        f.insert(k.to_owned(), v.to_owned());
    }
    f.insert("out_trade_no".into(), out_trade_no.into());
    f.insert("out_refund_no".into(), out_refund_no.into());
    f.insert("transaction_id".into(), transaction_id.into());
    f.insert(
        "refund_id".into(),
        format!("5000040894{}", hex::encode(rand::random::<[u8; 6]>())),
    );
    f.insert("total_fee".into(), total_fee.to_string());
    f.insert("settlement_total_fee".into(), total_fee.to_string());
    f.insert("refund_fee".into(), refund_fee.to_string());
    f.insert("settlement_refund_fee".into(), refund_fee.to_string());
    f
}

/// `req_info` as WeChat makes it: `<root>` XML, AES-256-ECB with PKCS#7 under the
/// lower-case hex MD5 of `key` (its 32 characters are the key), base64.
pub fn req_info(info: &BTreeMap<String, String>, key: &str) -> String {
    use aes::cipher::{block_padding::Pkcs7, BlockEncryptMut, KeyInit};
    use base64::Engine as _;
    let mut x = String::from("<root>");
    for (k, v) in info {
        x.push_str(&format!("<{k}><![CDATA[{v}]]></{k}>"));
    }
    x.push_str("</root>");
    let aes_key = hex::encode(Md5::digest(key.as_bytes()));
    let cipher =
        ecb::Encryptor::<aes::Aes256>::new_from_slice(aes_key.as_bytes()).expect("32-byte key");
    let ciphertext = cipher.encrypt_padded_vec_mut::<Pkcs7>(x.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(ciphertext)
}

/// The refund notification WeChat would POST (no `sign`: `req_info` is encrypted).
pub fn refund_xml(req_info: &str) -> String {
    format!(
        "<xml><return_code>SUCCESS</return_code><appid><![CDATA[{APPID}]]></appid>\
         <mch_id><![CDATA[{MCH_ID}]]></mch_id><nonce_str><![CDATA[{}]]></nonce_str>\
         <req_info><![CDATA[{req_info}]]></req_info></xml>",
        hex::encode(rand::random::<[u8; 16]>())
    )
}

/// An attacker's re-split of one genuine signature (issue 20): `genuine` with its
/// free-text field `free` set to `x&<attack>&zz=`, as WeChat would sign it, and the
/// notification an attacker builds from the same signed string, whose own fields are the
/// `attack` ones (each sorting after `free`), everything signed after `free` swallowed
/// by a last field `zz`. Both carry the one genuine signature (checked here).
pub fn resplit(
    genuine: &BTreeMap<String, String>,
    free: &str,
    attack: &[(&str, &str)],
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let (genuine, forged) = crate::resplit_fields(genuine, free, attack, &["sign"]);
    assert_eq!(
        md5_sign(&forged, API_KEY),
        md5_sign(&genuine, API_KEY),
        "the re-split notification must carry the genuine signature"
    );
    (genuine, forged)
}

//! An Alipay asynchronous-notification builder written independently of the host's
//! verifier: the sign string is built here from Alipay's documented rule (drop `sign` and
//! `sign_type`, skip empty values, sort, `k=v&…`) and signed with SHA256withRSA.

use std::collections::BTreeMap;

use base64::Engine as _;
use rsa::pkcs1v15::SigningKey;
use rsa::signature::{SignatureEncoding, Signer};
use rsa::RsaPrivateKey;
use sha2::Sha256;

/// Account `a`'s app id.
pub const APP_ID_A: &str = "2021000000000001";
/// Account `b`'s app id.
pub const APP_ID_B: &str = "2021000000000002";
/// Account `a`'s seller id (configured, so checked).
pub const SELLER_ID_A: &str = "2088102119685838";

/// A successful payment notification's parameters, shaped like Alipay's documented example.
pub fn paid(
    app_id: &str,
    out_trade_no: &str,
    total_amount: &str,
    trade_no: &str,
) -> BTreeMap<String, String> {
    let mut f = BTreeMap::new();
    for (k, v) in [
        ("gmt_create", "2026-01-01 08:00:00"),
        ("charset", "utf-8"),
        ("gmt_payment", "2026-01-01 08:00:05"),
        ("notify_time", "2026-01-01 08:00:06"),
        ("subject", "余额充值"),
        ("buyer_id", "2088002582656381"),
        ("body", "充值 100% & more"),
        ("version", "1.0"),
        ("notify_type", "trade_status_sync"),
        ("trade_status", "TRADE_SUCCESS"),
        ("point_amount", "0.00"),
        (
            "fund_bill_list",
            r#"[{"amount":"0.01","fundChannel":"ALIPAYACCOUNT"}]"#,
        ),
        ("seller_id", SELLER_ID_A),
        ("passback_params", ""),
    ] {
        f.insert(k.to_owned(), v.to_owned());
    }
    f.insert("notify_id".into(), hex::encode(rand::random::<[u8; 16]>()));
    f.insert("app_id".into(), app_id.into());
    f.insert("auth_app_id".into(), app_id.into());
    f.insert("out_trade_no".into(), out_trade_no.into());
    f.insert("trade_no".into(), trade_no.into());
    for k in [
        "total_amount",
        "invoice_amount",
        "receipt_amount",
        "buyer_pay_amount",
    ] {
        f.insert(k.into(), total_amount.into());
    }
    f
}

/// The documented sign string.
pub fn sign_string(fields: &BTreeMap<String, String>) -> String {
    let mut pairs: Vec<String> = fields
        .iter()
        .filter(|(k, v)| k.as_str() != "sign" && k.as_str() != "sign_type" && !v.is_empty())
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    pairs.sort();
    pairs.join("&")
}

/// The form body Alipay would POST, signed with `key`.
pub fn body(fields: &BTreeMap<String, String>, key: &RsaPrivateKey) -> String {
    let signature = SigningKey::<Sha256>::new(key.clone()).sign(sign_string(fields).as_bytes());
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (k, v) in fields {
        form.append_pair(k, v);
    }
    form.append_pair(
        "sign",
        &base64::engine::general_purpose::STANDARD.encode(signature.to_bytes()),
    );
    form.append_pair("sign_type", "RSA2");
    form.finish()
}

/// A refund notification's parameters: the payment's, plus `refund_fee` (the total
/// refunded so far, yuan), `gmt_refund` and `out_biz_no`; `trade_status` `TRADE_SUCCESS`
/// after a partial refund, `TRADE_CLOSED` after a full one.
pub fn refunded(
    app_id: &str,
    out_trade_no: &str,
    total_amount: &str,
    trade_no: &str,
    out_biz_no: &str,
    refund_fee: &str,
    trade_status: &str,
) -> BTreeMap<String, String> {
    let mut f = paid(app_id, out_trade_no, total_amount, trade_no);
    f.insert("trade_status".into(), trade_status.into());
    f.insert("refund_fee".into(), refund_fee.into());
    f.insert("gmt_refund".into(), "2026-01-02 10:00:00.320".into());
    f.insert("out_biz_no".into(), out_biz_no.into());
    f.insert("notify_time".into(), "2026-01-02 10:00:01".into());
    f
}

/// An attacker's re-split of one genuine signature (issue 20): `genuine` with its
/// free-text parameter `free` set to `x&<attack>&zz=`, as Alipay would sign it, and the
/// notification an attacker builds from the same sign string, whose own parameters are
/// the `attack` ones (each sorting after `free`), everything signed after `free`
/// swallowed by a last parameter `zz`. Both have the same sign string (checked here).
pub fn resplit(
    genuine: &BTreeMap<String, String>,
    free: &str,
    attack: &[(&str, &str)],
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let (genuine, forged) = crate::resplit_fields(genuine, free, attack, &["sign", "sign_type"]);
    assert_eq!(
        sign_string(&forged),
        sign_string(&genuine),
        "the re-split notification must have the genuine sign string"
    );
    (genuine, forged)
}

//! Property tests: every provider's parser and verifier, fed arbitrary bytes, arbitrary
//! strings and structured-but-wrong input, never panics, and garbage is always a
//! `Rejection`. Correctly signed input with arbitrary contents never yields a payment
//! without an order number, a transaction id or a non-negative amount, and tampering with
//! a signed notification never yields a different accepted one.
//!
//! Modest case counts keep this to seconds in CI; `PROPTEST_CASES=5000 cargo test -p
//! paynotify --test parsers_proptest` searches harder.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use paynotify::providers::{
    alipay, cloudpay, wechat_v2, wechat_v3, Inbound, Notice, NoticeKind, Provider, Rejection,
};
use proptest::prelude::*;
use rsa::pkcs1v15::SigningKey;
use rsa::signature::{SignatureEncoding, Signer};
use rsa::RsaPrivateKey;
use sha2::Sha256;

const V2_APPID: &str = "wx2421b1c4370ec43b";
const V2_MCH: &str = "10000100";
const V2_KEY: &str = "proptest-key-00000000000000000000";
const V3_APPID: &str = "wxd678efh567hg6787";
const V3_MCH: &str = "1230000109";
const V3_KEY: &str = "v3proptestk3y0000000000000000000";
const V3_KEY_ID: &str = "PUB_KEY_ID_PROPTEST";
const ALI_APP: &str = "2021000000000001";
const CP_SUB: &str = "1900000109";
const CP_SECRET: &str = "cloudpay-proptest-secret-0000000";
/// 2026-01-01T00:00:00Z: the time of receipt of every generated notification.
const NOW_MS: i64 = 1_767_225_600_000;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        // A shrunk failure is printed; do not write regression files into the tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// One RSA key (slow to make, so once): signs Alipay and WeChat v3 test input.
fn rsa_key() -> &'static RsaPrivateKey {
    static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
    KEY.get_or_init(|| RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("RSA key"))
}

struct All {
    v2: wechat_v2::WechatV2,
    v3: wechat_v3::WechatV3,
    alipay: alipay::Alipay,
    cloudpay: cloudpay::Cloudpay,
}

fn providers() -> &'static All {
    static ALL: OnceLock<All> = OnceLock::new();
    ALL.get_or_init(|| {
        let public = rsa_key().to_public_key();
        All {
            v2: wechat_v2::WechatV2::new(vec![wechat_v2::Account::new(
                "default", V2_APPID, V2_MCH, V2_KEY,
            )]),
            v3: wechat_v3::WechatV3::new(vec![wechat_v3::Account::new(
                "default", V3_APPID, V3_MCH, V3_KEY,
            )
            .expect("v3 account")
            .with_public_key(V3_KEY_ID, public.clone())]),
            alipay: alipay::Alipay::new(vec![alipay::Account::new("default", ALI_APP, public)]),
            cloudpay: cloudpay::Cloudpay::new(vec![cloudpay::Account::new(
                "default", CP_SUB, CP_SECRET,
            )]),
        }
    })
}

fn each_provider() -> [&'static dyn Provider; 4] {
    let p = providers();
    [&p.v2, &p.v3, &p.alipay, &p.cloudpay]
}

fn verify(
    p: &dyn Provider,
    account: Option<&str>,
    headers: &[(String, String)],
    body: &[u8],
    received_at: i64,
) -> Result<Notice, Rejection> {
    p.verify(&Inbound {
        account,
        headers,
        body,
        received_at,
    })
}

/// What any accepted notification must satisfy, however odd its signed contents.
fn sane(n: &Notice) -> Result<(), TestCaseError> {
    prop_assert_eq!(n.account.as_str(), "default");
    if let NoticeKind::Paid(p) = &n.kind {
        prop_assert!(!n.out_trade_no.is_empty(), "paid without an order: {n:?}");
        prop_assert!(
            !p.transaction_id.is_empty(),
            "paid without a transaction: {n:?}"
        );
        prop_assert!(p.amount >= 0, "negative amount: {n:?}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Strategies

/// Header names the providers read, and some they do not.
const HEADER_NAMES: &[&str] = &[
    "wechatpay-signature",
    "wechatpay-serial",
    "wechatpay-timestamp",
    "wechatpay-nonce",
    "wechatpay-signature-type",
    "x-paynotify-timestamp",
    "x-paynotify-signature",
    "content-type",
    "x-other",
];

fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    let value = prop_oneof![
        any::<String>(),
        "[0-9]{0,24}",
        "-?[0-9]{1,20}",
        "v1=[0-9a-f]{0,70}",
        "[A-Za-z0-9+/=]{0,400}",
        Just(V3_KEY_ID.to_owned()),
        Just("WECHATPAY2-SHA256-RSA2048".to_owned()),
        Just((NOW_MS / 1000).to_string()),
    ];
    proptest::collection::vec(
        (
            proptest::sample::select(HEADER_NAMES).prop_map(str::to_owned),
            value,
        ),
        0..8,
    )
}

/// Times of receipt, extremes included.
fn received_at() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(NOW_MS),
        Just(0),
        Just(i64::MIN),
        Just(i64::MAX),
        any::<i64>()
    ]
}

/// Field names the providers read, and others.
const FIELD_NAMES: &[&str] = &[
    "appid",
    "mch_id",
    "return_code",
    "return_msg",
    "result_code",
    "err_code",
    "out_trade_no",
    "transaction_id",
    "total_fee",
    "time_end",
    "sign_type",
    "nonce_str",
    "app_id",
    "seller_id",
    "trade_status",
    "trade_no",
    "total_amount",
    "gmt_payment",
    "charset",
    "notify_id",
    "x",
];

/// Values that matter to the parsers (amounts, codes, times), and anything at all.
fn field_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("SUCCESS".to_owned()),
        Just(V2_APPID.to_owned()),
        Just(V2_MCH.to_owned()),
        Just(ALI_APP.to_owned()),
        Just("TRADE_SUCCESS".to_owned()),
        Just("utf-8".to_owned()),
        "-?[0-9]{0,22}",
        "-?[0-9]{0,15}\\.[0-9]{0,4}",
        "[0-9]{14}",
        "[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}",
        "[A-Za-z0-9_]{0,32}",
        any::<String>(),
    ]
}

fn fields() -> impl Strategy<Value = BTreeMap<String, String>> {
    let name = prop_oneof![
        3 => proptest::sample::select(FIELD_NAMES).prop_map(str::to_owned),
        1 => "[a-z_]{1,12}",
    ];
    proptest::collection::btree_map(name, field_value(), 0..14)
}

/// JSON that is often shaped like the providers' (nested objects, the fields they read,
/// numbers of every kind), and often not.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null)),
        field_value().prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(
                prop_oneof![
                    proptest::sample::select(
                        &[
                            "outTradeNo",
                            "totalFee",
                            "resultCode",
                            "returnCode",
                            "transactionId",
                            "subMchId",
                            "timeEnd",
                            "mchid",
                            "appid",
                            "out_trade_no",
                            "trade_state",
                            "transaction_id",
                            "amount",
                            "total",
                            "success_time",
                            "event_type",
                            "resource",
                            "x",
                        ][..]
                    )
                    .prop_map(str::to_owned),
                    "[a-zA-Z.]{0,8}",
                ],
                inner,
                0..8,
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A JSON object with the fields a provider reads set to plausible values.
fn json_object(
    pinned: &'static [(&'static str, &'static str)],
) -> impl Strategy<Value = serde_json::Value> {
    (
        proptest::collection::btree_map("[a-zA-Z]{1,12}", json_value(), 0..6),
        proptest::collection::vec(any::<bool>(), pinned.len()),
        json_value(),
        json_value(),
    )
        .prop_map(move |(extra, keep, amount, other)| {
            let mut m: serde_json::Map<String, serde_json::Value> = extra.into_iter().collect();
            for ((k, v), keep) in pinned.iter().zip(keep) {
                if keep {
                    m.insert((*k).to_owned(), serde_json::Value::from(*v));
                }
            }
            m.insert("totalFee".into(), amount.clone());
            m.insert("amount".into(), serde_json::json!({ "total": amount }));
            m.insert("transactionId".into(), other);
            serde_json::Value::Object(m)
        })
}

/// XML-looking text: fragments of what `parse_xml` has to cope with.
fn xmlish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("<xml>".to_owned()),
        Just("</xml>".to_owned()),
        Just("<![CDATA[".to_owned()),
        Just("]]>".to_owned()),
        Just("<!DOCTYPE xml [<!ENTITY e \"x\">]>".to_owned()),
        Just("<?xml version=\"1.0\"?>".to_owned()),
        Just("<!-- c -->".to_owned()),
        Just("&amp;&lt;&#x41;&#0;&e;&".to_owned()),
        "<[a-z_]{1,6}>",
        "</[a-z_]{0,6}>",
        "<[a-z_]{1,6}/>",
        "<[a-z]{1,4} [a-z]{1,3}=\"[^\"]{0,5}\">",
        any::<String>(),
    ];
    proptest::collection::vec(piece, 0..16).prop_map(|v| v.concat())
}

// ---------------------------------------------------------------------------------------
// Signers (the host's own signing helpers where it has them: these properties are about
// parsing, not about agreeing with the providers, which the e2e tests check)

fn v2_xml(fields: &BTreeMap<String, String>, sign_type: wechat_v2::SignType) -> String {
    wechat_v2::signed_xml(fields, V2_KEY, sign_type)
}

fn alipay_form(fields: &BTreeMap<String, String>) -> String {
    let sig = SigningKey::<Sha256>::new(rsa_key().clone())
        .sign(alipay::string_to_sign(fields).as_bytes());
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (k, v) in fields {
        if k != "sign" && k != "sign_type" {
            form.append_pair(k, v);
        }
    }
    form.append_pair(
        "sign",
        &base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()),
    );
    form.finish()
}

fn cloudpay_headers(ts: &str, body: &[u8]) -> Vec<(String, String)> {
    vec![
        (cloudpay::TIMESTAMP_HEADER.into(), ts.into()),
        (
            cloudpay::SIGNATURE_HEADER.into(),
            cloudpay::signature(CP_SECRET, ts, body),
        ),
    ]
}

/// A v3 envelope around `plaintext` (encrypted with the account's key) and its headers.
fn v3_signed(event_type: &str, plaintext: &[u8], nonce: &str) -> (String, Vec<(String, String)>) {
    let cipher = Aes256Gcm::new_from_slice(V3_KEY.as_bytes()).expect("key");
    let resource_nonce = "0123456789ab";
    let ct = cipher
        .encrypt(
            Nonce::from_slice(resource_nonce.as_bytes()),
            Payload {
                msg: plaintext,
                aad: b"transaction",
            },
        )
        .expect("encrypt");
    let body = serde_json::json!({
        "id": "EV-1",
        "event_type": event_type,
        "resource_type": "encrypt-resource",
        "resource": {
            "algorithm": "AEAD_AES_256_GCM",
            "ciphertext": base64::engine::general_purpose::STANDARD.encode(ct),
            "associated_data": "transaction",
            "nonce": resource_nonce,
        }
    })
    .to_string();
    let ts = (NOW_MS / 1000).to_string();
    let sig = SigningKey::<Sha256>::new(rsa_key().clone()).sign(&wechat_v3::message(
        &ts,
        nonce,
        body.as_bytes(),
    ));
    let headers = vec![
        ("wechatpay-serial".into(), V3_KEY_ID.into()),
        (
            "wechatpay-signature".into(),
            base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()),
        ),
        ("wechatpay-timestamp".into(), ts),
        ("wechatpay-nonce".into(), nonce.into()),
    ];
    (body, headers)
}

// ---------------------------------------------------------------------------------------
// Properties

proptest! {
    #![proptest_config(config())]

    /// Arbitrary bytes and headers, to every provider, with or without an account in the
    /// URL: a rejection, never a panic.
    #[test]
    fn arbitrary_bytes_are_rejected(
        body in proptest::collection::vec(any::<u8>(), 0..600),
        headers in headers(),
        account in proptest::option::of(prop_oneof![Just("default".to_owned()), "[a-z]{1,6}"]),
        at in received_at(),
    ) {
        for p in each_provider() {
            let r = verify(p, account.as_deref(), &headers, &body, at);
            prop_assert!(r.is_err(), "{} accepted garbage: {r:?}", p.kind());
        }
    }

    /// Arbitrary text (UTF-8, so it reaches the parsers proper): rejected.
    #[test]
    fn arbitrary_text_is_rejected(body in any::<String>(), xml in xmlish(), headers in headers()) {
        for p in each_provider() {
            for b in [body.as_bytes(), xml.as_bytes()] {
                let r = verify(p, None, &headers, b, NOW_MS);
                prop_assert!(r.is_err(), "{} accepted garbage: {r:?}", p.kind());
            }
        }
    }

    /// The bare parsers on anything: a result, never a panic.
    #[test]
    fn bare_parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400), xml in xmlish(), text in any::<String>()) {
        let _ = wechat_v2::parse_xml(&bytes);
        let _ = wechat_v2::parse_xml(xml.as_bytes());
        let _ = alipay::parse_form(&bytes);
        let _ = alipay::parse_form(text.as_bytes());
        let _ = alipay::yuan_to_fen(&text);
        let _ = alipay::parse_public_key(&text);
        let _ = wechat_v3::parse_public_key_pem(&text);
        let _ = wechat_v3::parse_certificate_pem(&text);
        let key = [7u8; 32];
        let _ = wechat_v3::decrypt_resource(&key, &text, &text, &text);
        let _ = wechat_v3::decrypt_resource(&key, "0123456789ab", "", &base64::engine::general_purpose::STANDARD.encode(&bytes));
    }

    /// Yuan amounts convert exactly, and nothing else converts to a negative amount.
    #[test]
    fn yuan_amounts_convert_exactly(yuan in 0u64..100_000_000_000, fen in 0u64..100, text in "-?[0-9]{0,16}(\\.[0-9]{0,3})?") {
        let want = i64::try_from(yuan * 100 + fen).expect("fits");
        prop_assert_eq!(alipay::yuan_to_fen(&format!("{yuan}.{fen:02}")), Some(want));
        if fen % 10 == 0 {
            prop_assert_eq!(alipay::yuan_to_fen(&format!("{yuan}.{}", fen / 10)), Some(want));
        }
        if let Some(f) = alipay::yuan_to_fen(&text) {
            prop_assert!(f >= 0, "{text} -> {f}");
        }
    }

    /// WeChat v2: correctly signed XML with arbitrary fields never panics, and what it
    /// accepts is a sane notice; without `return_code=SUCCESS` nothing is accepted.
    #[test]
    fn v2_signed_arbitrary_fields(mut fields in fields(), hmac in any::<bool>(), pin in any::<bool>()) {
        fields.remove("sign");
        let sign_type = if hmac {
            fields.insert("sign_type".into(), "HMAC-SHA256".into());
            wechat_v2::SignType::HmacSha256
        } else {
            fields.remove("sign_type");
            wechat_v2::SignType::Md5
        };
        if pin {
            fields.insert("return_code".into(), "SUCCESS".into());
            fields.insert("appid".into(), V2_APPID.into());
            fields.insert("mch_id".into(), V2_MCH.into());
        }
        let body = v2_xml(&fields, sign_type);
        let r = verify(&providers().v2, None, &[], body.as_bytes(), NOW_MS);
        if let Ok(n) = &r {
            sane(n)?;
            prop_assert_eq!(fields.get("return_code").map(String::as_str), Some("SUCCESS"));
        }
    }

    /// Tampering with one byte of a signed v2 payment: rejected, or (a change the
    /// signature does not cover, like the case of its hex digits) the very same notice.
    #[test]
    fn v2_tampered_is_rejected_or_unchanged(at in any::<prop::sample::Index>(), byte in any::<u8>(), amount in 1i64..1_000_000) {
        let mut f = BTreeMap::new();
        for (k, v) in [("appid", V2_APPID), ("mch_id", V2_MCH), ("return_code", "SUCCESS"), ("result_code", "SUCCESS"), ("out_trade_no", "P000001"), ("transaction_id", "4200000001"), ("nonce_str", "n0nce"), ("time_end", "20260101080000")] {
            f.insert(k.to_owned(), v.to_owned());
        }
        f.insert("total_fee".into(), amount.to_string());
        let body = v2_xml(&f, wechat_v2::SignType::Md5).into_bytes();
        let good = verify(&providers().v2, None, &[], &body, NOW_MS).expect("the untouched one verifies");
        let mut bad = body.clone();
        let i = at.index(bad.len());
        bad[i] = byte;
        if let Ok(n) = verify(&providers().v2, None, &[], &bad, NOW_MS) {
            prop_assert_eq!(n.kind, good.kind);
            prop_assert_eq!(n.out_trade_no, good.out_trade_no);
        }
    }

    /// Alipay: correctly signed forms with arbitrary parameters; sane or rejected.
    #[test]
    fn alipay_signed_arbitrary_fields(mut fields in fields(), pin in any::<bool>()) {
        if pin {
            fields.insert("app_id".into(), ALI_APP.into());
            fields.insert("trade_status".into(), "TRADE_SUCCESS".into());
            fields.insert("charset".into(), "utf-8".into());
        }
        let body = alipay_form(&fields);
        if let Ok(n) = verify(&providers().alipay, None, &[], body.as_bytes(), NOW_MS) {
            sane(&n)?;
        }
    }

    /// Tampering with one byte of a signed Alipay payment: rejected, or the same notice
    /// (form encoding has equivalent spellings).
    #[test]
    fn alipay_tampered_is_rejected_or_unchanged(at in any::<prop::sample::Index>(), byte in any::<u8>(), fen in 1i64..10_000_000) {
        let mut f = BTreeMap::new();
        for (k, v) in [("app_id", ALI_APP), ("trade_status", "TRADE_SUCCESS"), ("out_trade_no", "A000001"), ("trade_no", "2026000001"), ("charset", "utf-8"), ("subject", "充值 100% & more")] {
            f.insert(k.to_owned(), v.to_owned());
        }
        f.insert("total_amount".into(), format!("{}.{:02}", fen / 100, fen % 100));
        let body = alipay_form(&f).into_bytes();
        let good = verify(&providers().alipay, None, &[], &body, NOW_MS).expect("the untouched one verifies");
        let mut bad = body.clone();
        let i = at.index(bad.len());
        bad[i] = byte;
        if let Ok(n) = verify(&providers().alipay, None, &[], &bad, NOW_MS) {
            prop_assert_eq!(n.kind, good.kind);
            prop_assert_eq!(n.fields, good.fields);
        }
    }

    /// CloudPay: correctly signed JSON of any shape; sane or rejected. Any byte changed
    /// in a signed one, or a timestamp outside the window: rejected.
    #[test]
    fn cloudpay_signed_arbitrary_events(
        event in json_object(&[("subMchId", CP_SUB), ("returnCode", "SUCCESS"), ("resultCode", "SUCCESS"), ("outTradeNo", "C000001")]),
        raw in any::<String>(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        skew in prop_oneof![-300i64..=300, any::<i64>()],
    ) {
        let p = &providers().cloudpay;
        for body in [event.to_string(), raw] {
            let ts = (NOW_MS / 1000).to_string();
            let h = cloudpay_headers(&ts, body.as_bytes());
            let r = verify(p, None, &h, body.as_bytes(), NOW_MS);
            if let Ok(n) = &r {
                sane(n)?;
                if !body.is_empty() {
                    let mut bad = body.clone().into_bytes();
                    let i = at.index(bad.len());
                    if bad[i] != byte {
                        bad[i] = byte;
                        prop_assert!(verify(p, None, &h, &bad, NOW_MS).is_err(), "tampered body accepted");
                    }
                }
            }
            let ts = (NOW_MS / 1000).saturating_add(skew).to_string();
            let h = cloudpay_headers(&ts, body.as_bytes());
            let r = verify(p, None, &h, body.as_bytes(), NOW_MS);
            if skew.unsigned_abs() > 300 {
                prop_assert!(r.is_err(), "timestamp {skew} s off accepted");
            }
        }
    }

    /// WeChat v3: correctly signed and encrypted resources of any shape (and arbitrary
    /// plaintext bytes); sane or rejected. A byte changed in the signed body: rejected.
    #[test]
    fn v3_signed_arbitrary_resources(
        tx in json_object(&[("mchid", V3_MCH), ("appid", V3_APPID), ("trade_state", "SUCCESS"), ("out_trade_no", "W000001"), ("transaction_id", "4200000009")]),
        raw in proptest::collection::vec(any::<u8>(), 0..200),
        event_type in prop_oneof![Just("TRANSACTION.SUCCESS".to_owned()), "[A-Z.]{0,20}"],
        nonce in "[A-Za-z0-9]{1,32}",
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let p = &providers().v3;
        for plaintext in [tx.to_string().into_bytes(), raw] {
            let (body, h) = v3_signed(&event_type, &plaintext, &nonce);
            if let Ok(n) = verify(p, None, &h, body.as_bytes(), NOW_MS) {
                sane(&n)?;
            }
            let mut bad = body.clone().into_bytes();
            let i = at.index(bad.len());
            if bad[i] != byte {
                bad[i] = byte;
                prop_assert!(verify(p, None, &h, &bad, NOW_MS).is_err(), "tampered body accepted");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// One signature, one set of fields (WeChat Pay v2 and Alipay sign a `k=v&…` string)

/// Splits a signed `k=v&…` string as anyone reading it would: at each `&` that starts a
/// `name=`; a piece without `=` is the rest of the previous value. (The test's own
/// reading, not the host's.)
fn split_signed(s: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for piece in s.split('&').filter(|_| !s.is_empty()) {
        match (piece.split_once('='), out.last_mut()) {
            (Some((k, v)), _) => out.push((k.into(), v.into())),
            (None, Some(last)) => {
                last.1.push('&');
                last.1.push_str(piece);
            }
            (None, None) => out.push((piece.into(), String::new())),
        }
    }
    out
}

/// The fields a notice was accepted with that go into its signed string, in order.
fn signed_part(fields: &BTreeMap<String, String>, skip: &[&str]) -> Vec<(String, String)> {
    fields
        .iter()
        .filter(|(k, v)| !skip.contains(&k.as_str()) && !v.is_empty())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Free text of the kind a payer or merchant puts in `attach` / `body`: `&`, `=`, field
/// names, URL-encoded text, anything.
fn free_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("&".to_owned()),
        Just("=".to_owned()),
        Just(" & ".to_owned()),
        Just("%26".to_owned()),
        proptest::sample::select(FIELD_NAMES).prop_map(str::to_owned),
        "[a-z_]{1,6}",
        "[0-9]{1,4}",
        any::<String>(),
    ];
    proptest::collection::vec(piece, 1..8).prop_map(|v| v.concat())
}

/// A v2 payment WeChat would sign, for `out_trade_no` and `total_fee`.
fn v2_paid(out_trade_no: &str, total_fee: i64) -> BTreeMap<String, String> {
    let mut f = BTreeMap::new();
    for (k, v) in [
        ("appid", V2_APPID),
        ("mch_id", V2_MCH),
        ("return_code", "SUCCESS"),
        ("result_code", "SUCCESS"),
        ("transaction_id", "4200000001"),
        ("nonce_str", "n0nce"),
        ("bank_type", "CFT"),
        ("openid", "oUpF8uMEb4qRXf22hE3X68TekukE"),
        ("time_end", "20260101080000"),
    ] {
        f.insert(k.to_owned(), v.to_owned());
    }
    f.insert("out_trade_no".into(), out_trade_no.into());
    f.insert("total_fee".into(), total_fee.to_string());
    f
}

/// An Alipay payment Alipay would sign.
fn alipay_paid(out_trade_no: &str, fen: i64) -> BTreeMap<String, String> {
    let mut f = BTreeMap::new();
    for (k, v) in [
        ("app_id", ALI_APP),
        ("trade_status", "TRADE_SUCCESS"),
        ("trade_no", "2026000001"),
        ("charset", "utf-8"),
        ("buyer_id", "2088002582656381"),
        ("subject", "充值 100% & more"),
        ("notify_id", "ac05099524730693a8b330c5ecf72da9786"),
    ] {
        f.insert(k.to_owned(), v.to_owned());
    }
    f.insert("out_trade_no".into(), out_trade_no.into());
    f.insert(
        "total_amount".into(),
        format!("{}.{:02}", fen / 100, fen % 100),
    );
    f
}

/// An attacker's re-split of one genuine signature: the genuine fields with `free` set to
/// `<text>&<attack>&zz=`, and the notification whose own fields are the `attack` ones,
/// with everything signed after `free` swallowed by `zz`. Both have the same signed
/// string (`skip`: the fields left out of it), checked here.
fn resplit(
    genuine: &BTreeMap<String, String>,
    skip: &[&str],
    free: &str,
    text: &str,
    attack: &[(String, String)],
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let join = |p: &[(String, String)]| {
        p.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    };
    let mut genuine = genuine.clone();
    genuine.insert(free.into(), format!("{text}&{}&zz=", join(attack)));
    let signed = signed_part(&genuine, skip);
    let mut forged: BTreeMap<String, String> = signed
        .iter()
        .filter(|(k, _)| k.as_str() < free)
        .cloned()
        .collect();
    forged.insert(free.into(), text.into());
    forged.extend(attack.iter().cloned());
    let rest: Vec<(String, String)> = signed
        .iter()
        .filter(|(k, _)| k.as_str() > free)
        .cloned()
        .collect();
    forged.insert("zz".into(), format!("&{}", join(&rest)));
    let as_string = |f: &BTreeMap<String, String>| join(&signed_part(f, skip));
    assert_eq!(
        as_string(&forged),
        as_string(&genuine),
        "not the same string"
    );
    (genuine, forged)
}

proptest! {
    #![proptest_config(config())]

    /// Every accepted v2 payment: its signed string splits back into exactly the fields it
    /// was accepted with, whatever free text (`&`, `=`, field names) it carries.
    #[test]
    fn v2_accepted_fields_are_the_signed_fields(
        extra in fields(),
        free in proptest::collection::btree_map(prop_oneof!["attach", "detail", "[a-z_]{1,10}"], free_text(), 1..4),
        fee in 1i64..1_000_000,
    ) {
        let mut f = v2_paid("P000001", fee);
        for (k, v) in extra {
            if k != "sign" && k != "sign_type" {
                f.entry(k).or_insert(v);
            }
        }
        f.extend(free);
        let body = v2_xml(&f, wechat_v2::SignType::Md5);
        let suffix = format!("&key={V2_KEY}");
        match verify(&providers().v2, None, &[], body.as_bytes(), NOW_MS) {
            Ok(n) => {
                let signed = wechat_v2::string_to_sign(&n.fields, V2_KEY);
                let signed = signed.strip_suffix(&suffix).expect("key suffix");
                prop_assert_eq!(split_signed(signed), signed_part(&n.fields, &["sign"]), "{}", signed);
            }
            // Refused as ambiguous only when it truly is.
            Err(Rejection::Ambiguous(why)) => {
                let signed = wechat_v2::string_to_sign(&f, V2_KEY);
                let signed = signed.strip_suffix(&suffix).expect("key suffix");
                prop_assert_ne!(split_signed(signed), signed_part(&f, &["sign"]), "{}", why);
            }
            Err(_) => {}
        }
    }

    /// Every accepted Alipay notification: the same.
    #[test]
    fn alipay_accepted_fields_are_the_signed_fields(
        extra in fields(),
        free in proptest::collection::btree_map(prop_oneof!["body", "passback_params", "subject", "[a-z_]{1,10}"], free_text(), 1..4),
        fen in 1i64..10_000_000,
    ) {
        let mut f = alipay_paid("A000001", fen);
        for (k, v) in extra {
            if k != "sign" && k != "sign_type" {
                f.entry(k).or_insert(v);
            }
        }
        f.extend(free);
        let body = alipay_form(&f);
        let skip = ["sign", "sign_type"];
        match verify(&providers().alipay, None, &[], body.as_bytes(), NOW_MS) {
            Ok(n) => {
                let signed = alipay::string_to_sign(&n.fields);
                prop_assert_eq!(split_signed(&signed), signed_part(&n.fields, &skip), "{}", signed);
            }
            Err(Rejection::Ambiguous(why)) => {
                prop_assert_ne!(split_signed(&alipay::string_to_sign(&f)), signed_part(&f, &skip), "{}", why);
            }
            Err(_) => {}
        }
    }

    /// A genuine v2 payment whose early-sorting free-text field embeds the fields of
    /// another payment, re-split by an attacker into that payment: its signature still
    /// verifies, and it is refused as ambiguous (so is the genuine one).
    #[test]
    fn v2_resplit_signature_is_refused(
        free in prop_oneof![Just("attach".to_owned()), Just("body".to_owned()), Just("device_info".to_owned()), "b[a-z_]{0,6}"],
        text in "[a-zA-Z0-9 =%._-]{1,12}",
        other in "[A-Z0-9]{6,20}",
        fee in 1i64..1_000_000,
        other_fee in 1i64..1_000_000,
    ) {
        let attack: Vec<(String, String)> = [
            ("mch_id", V2_MCH.to_owned()),
            ("out_trade_no", other.clone()),
            ("result_code", "SUCCESS".to_owned()),
            ("return_code", "SUCCESS".to_owned()),
            ("total_fee", other_fee.to_string()),
            ("transaction_id", "4200000777".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let (genuine, forged) = resplit(&v2_paid("P000001", fee), &["sign"], &free, &text, &attack);
        let forged_xml = v2_xml(&forged, wechat_v2::SignType::Md5);
        // Same signed string, so the genuine signature is the forged one's.
        prop_assert_eq!(
            wechat_v2::sign(&forged, V2_KEY, wechat_v2::SignType::Md5),
            wechat_v2::sign(&genuine, V2_KEY, wechat_v2::SignType::Md5)
        );
        for (what, body) in [("forged", forged_xml), ("genuine", v2_xml(&genuine, wechat_v2::SignType::Md5))] {
            let r = verify(&providers().v2, None, &[], body.as_bytes(), NOW_MS);
            prop_assert!(matches!(&r, Err(Rejection::Ambiguous(_))), "{} accepted or refused for another reason: {:?}", what, r);
        }
    }

    /// The same attack on Alipay (`body` sorts before `out_trade_no`).
    #[test]
    fn alipay_resplit_signature_is_refused(
        free in prop_oneof![Just("body".to_owned()), Just("attach".to_owned()), "b[a-z_]{0,6}"],
        text in "[a-zA-Z0-9 =%._-]{1,12}",
        other in "[A-Z0-9]{6,20}",
        fen in 1i64..10_000_000,
        other_fen in 1i64..10_000_000,
    ) {
        let attack: Vec<(String, String)> = [
            ("out_trade_no", other.clone()),
            ("total_amount", format!("{}.{:02}", other_fen / 100, other_fen % 100)),
            ("trade_no", "2026000777".to_owned()),
            ("trade_status", "TRADE_SUCCESS".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let (genuine, forged) = resplit(&alipay_paid("A000001", fen), &["sign", "sign_type"], &free, &text, &attack);
        prop_assert_eq!(alipay::string_to_sign(&forged), alipay::string_to_sign(&genuine));
        for (what, f) in [("forged", &forged), ("genuine", &genuine)] {
            let body = alipay_form(f);
            let r = verify(&providers().alipay, None, &[], body.as_bytes(), NOW_MS);
            prop_assert!(matches!(&r, Err(Rejection::Ambiguous(_))), "{} accepted or refused for another reason: {:?}", what, r);
        }
    }
}

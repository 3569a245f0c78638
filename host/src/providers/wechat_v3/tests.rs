//! WeChat Pay v3 notifications end to end: signed, encrypted, verified, refused.

use std::sync::OnceLock;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{AeadCore, Aes256Gcm, Nonce};
use base64::Engine as _;
use rsa::pkcs1v15::{Signature, SigningKey};
use rsa::signature::{SignatureEncoding, Signer};
use rsa::RsaPrivateKey;
use sha2::Sha256;

use super::*;

pub(super) const APPID: &str = "wxd678efh567hg6787";
pub(super) const MCHID: &str = "1230000109";
pub(super) const KEY: &str = "a7cde1ZJB1kG2e7VfTs3jQzaWizur8Gb";
pub(super) const PUB_ID: &str = "PUB_KEY_ID_0112345678202401010000000000";
pub(super) const NOW_MS: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

/// Test keys: generating RSA-2048 keys is slow, so each test binary makes three once.
pub(super) fn keys() -> &'static [RsaPrivateKey; 3] {
    static KEYS: OnceLock<[RsaPrivateKey; 3]> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut rng = rand::thread_rng();
        [(); 3].map(|_| RsaPrivateKey::new(&mut rng, 2048).expect("RSA key"))
    })
}

pub(super) fn self_signed_cert(key: &RsaPrivateKey, serial: &[u8]) -> String {
    use std::str::FromStr;
    use std::time::Duration;
    use x509_cert::builder::{Builder, CertificateBuilder, Profile};
    use x509_cert::der::EncodePem;
    use x509_cert::name::Name;
    use x509_cert::serial_number::SerialNumber;
    use x509_cert::spki::SubjectPublicKeyInfoOwned;
    use x509_cert::time::Validity;

    let signer = SigningKey::<Sha256>::new(key.clone());
    let spki = SubjectPublicKeyInfoOwned::from_key(key.to_public_key()).expect("spki");
    let builder = CertificateBuilder::new(
        Profile::Root,
        SerialNumber::new(serial).expect("serial"),
        Validity::from_now(Duration::from_secs(86_400)).expect("validity"),
        Name::from_str("CN=Tenpay.com Root CA,O=Tenpay.com,C=CN").expect("name"),
        spki,
        &signer,
    )
    .expect("builder");
    let cert = builder.build::<Signature>().expect("certificate");
    cert.to_pem(x509_cert::der::pem::LineEnding::LF)
        .expect("pem")
}

pub(super) struct Fixture {
    pub(super) provider: WechatV3,
    pub(super) cert_serial: String,
}

pub(super) fn fixture() -> Fixture {
    let [pub_key, cert_key, _] = keys();
    // A serial whose first byte has its high bit set: DER adds a 00 sign byte.
    let pem = self_signed_cert(cert_key, &[0x9C, 0x2A, 0x01, 0x9B, 0x33, 0x10, 0xEE, 0x42]);
    let account = Account::new("default", APPID, MCHID, KEY)
        .expect("account")
        .with_public_key(PUB_ID, pub_key.to_public_key());
    let (account, cert_serial) = account.with_platform_cert(&pem).expect("cert");
    assert_eq!(cert_serial, "9C2A019B3310EE42");
    Fixture {
        provider: WechatV3::new(vec![account]),
        cert_serial,
    }
}

pub(super) fn transaction(out_trade_no: &str, total: i64, trade_state: &str) -> Value {
    serde_json::json!({
        "appid": APPID,
        "mchid": MCHID,
        "out_trade_no": out_trade_no,
        "transaction_id": "4200000001202601010000000001",
        "trade_type": "JSAPI",
        "trade_state": trade_state,
        "trade_state_desc": "支付成功",
        "bank_type": "CMC",
        "attach": "",
        "success_time": "2026-01-01T08:00:00+08:00",
        "payer": { "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o" },
        "amount": { "total": total, "payer_total": total, "currency": "CNY", "payer_currency": "CNY" },
        "promotion_detail": [],
    })
}

pub(super) fn encrypt(key: &str, plaintext: &[u8], associated_data: &str) -> (String, String) {
    let cipher = Aes256Gcm::new_from_slice(key.as_bytes()).expect("key");
    let nonce: String = {
        let n = Aes256Gcm::generate_nonce(&mut rand::thread_rng());
        hex::encode(n)[..12].to_owned()
    };
    let ct = cipher
        .encrypt(
            Nonce::from_slice(nonce.as_bytes()),
            Payload {
                msg: plaintext,
                aad: associated_data.as_bytes(),
            },
        )
        .expect("encrypt");
    (base64::engine::general_purpose::STANDARD.encode(ct), nonce)
}

pub(super) fn envelope(event_type: &str, tx: &Value, key: &str) -> String {
    let (ciphertext, nonce) = encrypt(key, tx.to_string().as_bytes(), "transaction");
    serde_json::json!({
        "id": "EV-2018022511223320873",
        "create_time": "2026-01-01T08:00:01+08:00",
        "resource_type": "encrypt-resource",
        "event_type": event_type,
        "summary": "支付成功",
        "resource": {
            "original_type": "transaction",
            "algorithm": "AEAD_AES_256_GCM",
            "ciphertext": ciphertext,
            "associated_data": "transaction",
            "nonce": nonce,
        }
    })
    .to_string()
}

pub(super) fn headers(
    signer: &RsaPrivateKey,
    serial: &str,
    ts: i64,
    body: &str,
) -> Vec<(String, String)> {
    let nonce = "593BEC0C930BF1AFEB40B4A08C8FB242";
    let sig = SigningKey::<Sha256>::new(signer.clone()).sign(&message(
        &ts.to_string(),
        nonce,
        body.as_bytes(),
    ));
    vec![
        ("wechatpay-serial".into(), serial.into()),
        (
            "wechatpay-signature".into(),
            base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()),
        ),
        ("wechatpay-timestamp".into(), ts.to_string()),
        ("wechatpay-nonce".into(), nonce.into()),
    ]
}

pub(super) fn verify_with(
    p: &WechatV3,
    headers: &[(String, String)],
    body: &str,
) -> Result<Notice, Rejection> {
    p.verify(&Inbound {
        account: None,
        headers,
        body: body.as_bytes(),
        received_at: NOW_MS,
    })
}

pub(super) const NOW_S: i64 = NOW_MS / 1000;

#[test]
fn accepts_a_payment_signed_with_the_public_key() {
    let f = fixture();
    let body = envelope(
        "TRANSACTION.SUCCESS",
        &transaction("1217752501201407033233368018", 100, "SUCCESS"),
        KEY,
    );
    let n = verify_with(
        &f.provider,
        &headers(&keys()[0], PUB_ID, NOW_S - 30, &body),
        &body,
    )
    .expect("verifies");
    assert_eq!(n.account, "default");
    assert_eq!(n.out_trade_no, "1217752501201407033233368018");
    let NoticeKind::Paid(p) = &n.kind else {
        panic!("not paid: {:?}", n.kind)
    };
    assert_eq!(p.amount, 100);
    assert_eq!(p.transaction_id, "4200000001202601010000000001");
    assert_eq!(p.paid_at, Some(NOW_MS));
    assert_eq!(n.fields["amount.total"], "100");
    assert_eq!(n.fields["amount.payer_total"], "100");
    assert_eq!(n.fields["payer.openid"], "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o");
    assert_eq!(n.fields["promotion_detail"], "[]");
    assert_eq!(n.fields["event_type"], "TRANSACTION.SUCCESS");
    assert_eq!(n.fields["id"], "EV-2018022511223320873");
    assert_eq!(n.fields["create_time"], "2026-01-01T08:00:01+08:00");
}

#[test]
fn refund_events_are_refunds_or_recorded_states() {
    let f = fixture();
    let refund = |event: &str, status: &str, amount: Value| {
        let r = serde_json::json!({
            "mchid": MCHID,
            "out_trade_no": "T9",
            "transaction_id": "4200000001202601010000000009",
            "out_refund_no": "RF9",
            "refund_id": "50000000382019052709732678859",
            "refund_status": status,
            "success_time": "2026-01-01T08:00:00+08:00",
            "amount": amount,
        });
        let body = envelope(event, &r, KEY);
        verify_with(
            &f.provider,
            &headers(&keys()[0], PUB_ID, NOW_S, &body),
            &body,
        )
    };
    let amount =
        serde_json::json!({ "total": 100, "refund": 40, "payer_total": 100, "payer_refund": 40 });
    let n = refund("REFUND.SUCCESS", "SUCCESS", amount.clone()).expect("verifies");
    assert_eq!(
        n.kind,
        NoticeKind::Refunded(Refund {
            out_refund_no: "RF9".into(),
            refund_id: "50000000382019052709732678859".into(),
            transaction_id: "4200000001202601010000000009".into(),
            amount: RefundAmount::This(40),
            total_fee: Some(100),
            refunded_at: Some(NOW_MS),
        })
    );
    assert_eq!(n.out_trade_no, "T9");
    assert_eq!(n.fields["amount.payer_refund"], "40");
    for (event, status) in [("REFUND.ABNORMAL", "ABNORMAL"), ("REFUND.CLOSED", "CLOSED")] {
        let n = refund(event, status, amount.clone()).expect("verifies");
        assert_eq!(
            n.kind,
            NoticeKind::NotPaid {
                state: format!("{event} {status}")
            }
        );
    }
    for bad in [
        serde_json::json!({ "total": 100 }),
        serde_json::json!({ "total": 100, "refund": 0 }),
        serde_json::json!({ "total": 100, "refund": -1 }),
        serde_json::json!({ "refund": 40 }),
    ] {
        let r = refund("REFUND.SUCCESS", "SUCCESS", bad.clone());
        assert!(matches!(r, Err(Rejection::Malformed(_))), "{bad}: {r:?}");
    }
}

#[test]
fn rejects_another_merchant_or_app() {
    let f = fixture();
    let mut tx = transaction("T5", 100, "SUCCESS");
    tx["mchid"] = "1900000001".into();
    let body = envelope("TRANSACTION.SUCCESS", &tx, KEY);
    let h = headers(&keys()[0], PUB_ID, NOW_S, &body);
    assert!(matches!(
        verify_with(&f.provider, &h, &body),
        Err(Rejection::AccountMismatch(_))
    ));
    let mut tx = transaction("T5", 100, "SUCCESS");
    tx["appid"] = "wx0000000000000000".into();
    let body = envelope("TRANSACTION.SUCCESS", &tx, KEY);
    let h = headers(&keys()[0], PUB_ID, NOW_S, &body);
    assert!(matches!(
        verify_with(&f.provider, &h, &body),
        Err(Rejection::AccountMismatch(_))
    ));
}

#[test]
fn other_trade_states_are_verified_but_not_paid() {
    let f = fixture();
    for (event, state) in [
        ("TRANSACTION.SUCCESS", "CLOSED"),
        ("TRANSACTION.SUCCESS", "PAYERROR"),
        ("TRANSACTION.CLOSED", "SUCCESS"),
    ] {
        let body = envelope(event, &transaction("T6", 100, state), KEY);
        let h = headers(&keys()[0], PUB_ID, NOW_S, &body);
        let n = verify_with(&f.provider, &h, &body).expect("verifies");
        assert_eq!(
            n.kind,
            NoticeKind::NotPaid {
                state: format!("{event} {state}")
            }
        );
        assert_eq!(n.out_trade_no, "T6");
    }
}

/// Signed and decrypted but unreadable: refused, never acknowledged as a non-payment.
#[test]
fn signed_unreadable_resources_are_refused_not_ignored() {
    let f = fixture();
    let send = |event: &str, tx: &Value| {
        let body = envelope(event, tx, KEY);
        verify_with(
            &f.provider,
            &headers(&keys()[0], PUB_ID, NOW_S, &body),
            &body,
        )
    };
    let cases: Vec<(&str, &str, Value, &str)> = vec![
        (
            "no trade_state",
            "TRANSACTION.SUCCESS",
            serde_json::json!(null),
            "no trade_state",
        ),
        (
            "numeric trade_state",
            "TRANSACTION.SUCCESS",
            serde_json::json!(1),
            "trade_state is 1",
        ),
    ];
    for (name, event, state, reason) in cases {
        let mut tx = transaction("T8", 100, "SUCCESS");
        tx["trade_state"] = state;
        let r = send(event, &tx);
        assert!(
            matches!(&r, Err(Rejection::Malformed(m)) if m.contains(reason)),
            "{name}: {r:?}"
        );
    }
    for state in ["SUCCESS", "CLOSED"] {
        let mut tx = transaction("T8", 100, state);
        tx.as_object_mut().expect("object").remove("amount");
        let r = send("TRANSACTION.SUCCESS", &tx);
        assert!(
            matches!(&r, Err(Rejection::Malformed(m)) if m.contains("amount.total")),
            "{state}: {r:?}"
        );
        let mut tx = transaction("T8", 100, state);
        tx["amount"]["total"] = "100".into();
        let r = send("TRANSACTION.SUCCESS", &tx);
        assert!(
            matches!(&r, Err(Rejection::Malformed(m)) if m.contains("amount.total")),
            "{state}: {r:?}"
        );
        let mut tx = transaction("T8", 100, state);
        tx["out_trade_no"] = 8.into();
        let r = send("TRANSACTION.SUCCESS", &tx);
        assert!(
            matches!(&r, Err(Rejection::Malformed(m)) if m.contains("out_trade_no is 8")),
            "{state}: {r:?}"
        );
    }
    let r = send(
        "TRANSACTION.SUCCESS",
        &transaction("T8", 100, "SOMETHING_NEW"),
    );
    assert!(matches!(&r, Err(Rejection::Unsupported(_))), "{r:?}");
    let r = send("COUPON.USE", &transaction("T8", 100, "SUCCESS"));
    assert!(
        matches!(&r, Err(Rejection::Unsupported(m)) if m.contains("COUPON.USE")),
        "{r:?}"
    );
}

#[test]
fn malformed_resources_are_rejected_not_panicked_on() {
    let f = fixture();
    let sign = |body: &str| headers(&keys()[0], PUB_ID, NOW_S, body);
    // A resource encrypted under another APIv3 key: the tag does not verify.
    let body = envelope(
        "TRANSACTION.SUCCESS",
        &transaction("T7", 100, "SUCCESS"),
        "0123456789abcdef0123456789abcdef",
    );
    assert!(matches!(
        verify_with(&f.provider, &sign(&body), &body),
        Err(Rejection::BadSignature(_))
    ));
    // Tag bytes flipped inside an otherwise good ciphertext.
    let mut v: Value = serde_json::from_str(&envelope(
        "TRANSACTION.SUCCESS",
        &transaction("T7", 100, "SUCCESS"),
        KEY,
    ))
    .expect("json");
    let ct = v["resource"]["ciphertext"].as_str().expect("ct").to_owned();
    let mut raw = base64::engine::general_purpose::STANDARD
        .decode(ct)
        .expect("b64");
    let last = raw.len() - 1;
    raw[last] ^= 1;
    v["resource"]["ciphertext"] = base64::engine::general_purpose::STANDARD.encode(raw).into();
    let body = v.to_string();
    assert!(matches!(
        verify_with(&f.provider, &sign(&body), &body),
        Err(Rejection::BadSignature(_))
    ));
    let cases = [
        "".to_string(),
        "not json".into(),
        "[]".into(),
        r#"{"resource":{}}"#.into(),
        r#"{"event_type":"TRANSACTION.SUCCESS"}"#.into(),
        r#"{"event_type":"TRANSACTION.SUCCESS","resource":{"algorithm":"AEAD_AES_128_GCM","ciphertext":"","nonce":""}}"#.into(),
        r#"{"event_type":"TRANSACTION.SUCCESS","resource":{"algorithm":"AEAD_AES_256_GCM","ciphertext":"!!!","nonce":"123456789012"}}"#.into(),
        r#"{"event_type":"TRANSACTION.SUCCESS","resource":{"algorithm":"AEAD_AES_256_GCM","ciphertext":"AAAA","nonce":"123456789012"}}"#.into(),
        r#"{"event_type":"TRANSACTION.SUCCESS","resource":{"algorithm":"AEAD_AES_256_GCM","ciphertext":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","nonce":"short"}}"#.into(),
        r#"{"event_type":"TRANSACTION.SUCCESS","resource":{"algorithm":"AEAD_AES_256_GCM","ciphertext":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","nonce":"123456789012","associated_data":5}}"#.into(),
    ];
    for body in &cases {
        assert!(
            verify_with(&f.provider, &sign(body), body).is_err(),
            "accepted {body:?}"
        );
    }
    // Plaintexts that are not a usable transaction.
    for tx in [
        serde_json::json!("text"),
        serde_json::json!({ "appid": APPID, "mchid": MCHID, "trade_state": "SUCCESS", "transaction_id": "1", "out_trade_no": "T8", "amount": { "total": 1.5 } }),
        serde_json::json!({ "appid": APPID, "mchid": MCHID, "trade_state": "SUCCESS", "transaction_id": "1", "out_trade_no": "T8", "amount": { "total": -1 } }),
        serde_json::json!({ "appid": APPID, "mchid": MCHID, "trade_state": "SUCCESS", "transaction_id": "1", "out_trade_no": "T8", "amount": { "total": "100" } }),
        serde_json::json!({ "appid": APPID, "mchid": MCHID, "trade_state": "SUCCESS", "transaction_id": "", "out_trade_no": "T8", "amount": { "total": 1 } }),
    ] {
        let body = envelope("TRANSACTION.SUCCESS", &tx, KEY);
        assert!(
            matches!(
                verify_with(&f.provider, &sign(&body), &body),
                Err(Rejection::Malformed(_))
            ),
            "{tx}"
        );
    }
    // Bad signature encodings.
    let body = envelope(
        "TRANSACTION.SUCCESS",
        &transaction("T9", 100, "SUCCESS"),
        KEY,
    );
    for bad in ["not base64!", "AAAA", ""] {
        let mut h = sign(&body);
        h[1].1 = bad.into();
        assert!(
            matches!(
                verify_with(&f.provider, &h, &body),
                Err(Rejection::BadSignature(_))
            ),
            "{bad}"
        );
    }
}

/// Mutated transactions, correctly encrypted and signed, never panic the parser.
#[test]
fn mutated_signed_notifications_never_panic() {
    let f = fixture();
    let base = transaction("T10", 100, "SUCCESS").to_string().into_bytes();
    let alphabet = b"{}[]\":,.-+eE0123456789 nulltrue\\";
    for _ in 0..150 {
        let mut b = base.clone();
        for _ in 0..(rand::random::<usize>() % 4 + 1) {
            let i = rand::random::<usize>() % b.len();
            b[i] = alphabet[rand::random::<usize>() % alphabet.len()];
        }
        let (ciphertext, nonce) = encrypt(KEY, &b, "");
        let body = serde_json::json!({
            "event_type": "TRANSACTION.SUCCESS",
            "resource": { "algorithm": ALGORITHM, "ciphertext": ciphertext, "nonce": nonce }
        })
        .to_string();
        let _ = verify_with(
            &f.provider,
            &headers(&keys()[0], PUB_ID, NOW_S, &body),
            &body,
        );
    }
}

#[test]
fn answers_follow_the_v3_convention() {
    let f = fixture();
    let ok = f.provider.success();
    assert_eq!((ok.status, ok.content_type, ok.body.len()), (204, None, 0));
    let fail = f.provider.failure("bad \"sig\"");
    assert_eq!(fail.status, 400);
    let v: Value = serde_json::from_slice(&fail.body).expect("json");
    assert_eq!(
        v,
        serde_json::json!({ "code": "FAIL", "message": "bad \"sig\"" })
    );
}

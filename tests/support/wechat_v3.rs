//! A WeChat Pay v3 notification builder written independently of the host's verifier:
//! it signs `timestamp\nnonce\nbody\n` with RSA-SHA256 and encrypts the transaction with
//! AES-256-GCM the way WeChat Pay does, using the RustCrypto crates directly.

use std::sync::OnceLock;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rsa::signature::{SignatureEncoding, Signer};
use rsa::RsaPrivateKey;
use serde_json::{json, Value};
use sha2::Sha256;

/// Account `a`'s appid.
pub const APPID_A: &str = "wxd678efh567hg6787";
/// Account `a`'s merchant id.
pub const MCH_ID_A: &str = "1230000109";
/// Account `b`'s appid.
pub const APPID_B: &str = "wx2421b1c4370ec43b";
/// Account `b`'s merchant id.
pub const MCH_ID_B: &str = "1900000002";
/// The APIv3 key of both test accounts (32 bytes; generated for tests, not a real secret).
pub const API_V3_KEY: &str = "v3t3stk3y0000000000000000000000a";
/// Account `a`'s WeChat Pay public key id.
pub const PUB_KEY_ID_A: &str = "PUB_KEY_ID_0112300001092026010100000000000001";
/// Account `b`'s WeChat Pay public key id.
pub const PUB_KEY_ID_B: &str = "PUB_KEY_ID_0119000000022026010100000000000002";
/// Serial of account `a`'s platform certificate, as WeChat writes it in `Wechatpay-Serial`.
pub const CERT_SERIAL_A: &str = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1";

/// Test keys, made once per test binary: [a's public key, a's platform certificate, b's
/// public key, a stranger's].
pub fn keys() -> &'static [RsaPrivateKey; 4] {
    static KEYS: OnceLock<[RsaPrivateKey; 4]> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut rng = rand::thread_rng();
        [(); 4].map(|_| RsaPrivateKey::new(&mut rng, 2048).expect("RSA key"))
    })
}

/// The public half as the PEM file WeChat Pay's console hands out.
pub fn public_key_pem(key: &RsaPrivateKey) -> String {
    key.to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("public key PEM")
}

/// A self-signed platform certificate for `key` with serial [`CERT_SERIAL_A`].
pub fn platform_cert_pem(key: &RsaPrivateKey) -> String {
    use std::str::FromStr;
    use std::time::Duration;
    use x509_cert::builder::{Builder, CertificateBuilder, Profile};
    use x509_cert::der::EncodePem;
    use x509_cert::name::Name;
    use x509_cert::serial_number::SerialNumber;
    use x509_cert::spki::SubjectPublicKeyInfoOwned;
    use x509_cert::time::Validity;

    let serial = hex::decode(CERT_SERIAL_A).expect("hex serial");
    let signer = SigningKey::<Sha256>::new(key.clone());
    let builder = CertificateBuilder::new(
        Profile::Root,
        SerialNumber::new(&serial).expect("serial"),
        Validity::from_now(Duration::from_secs(86_400)).expect("validity"),
        Name::from_str("CN=Tenpay.com Root CA,OU=Tenpay.com CA Center,O=Tenpay.com,C=CN")
            .expect("name"),
        SubjectPublicKeyInfoOwned::from_key(key.to_public_key()).expect("spki"),
        &signer,
    )
    .expect("certificate builder");
    builder
        .build::<rsa::pkcs1v15::Signature>()
        .expect("certificate")
        .to_pem(LineEnding::LF)
        .expect("certificate PEM")
}

/// A decrypted transaction resource, with the fields WeChat Pay documents.
pub fn transaction(
    appid: &str,
    mchid: &str,
    out_trade_no: &str,
    total: i64,
    transaction_id: &str,
    trade_state: &str,
) -> Value {
    json!({
        "appid": appid,
        "mchid": mchid,
        "out_trade_no": out_trade_no,
        "transaction_id": transaction_id,
        "trade_type": "JSAPI",
        "trade_state": trade_state,
        "trade_state_desc": "支付成功",
        "bank_type": "CMC",
        "attach": "",
        "success_time": "2026-01-01T08:00:00+08:00",
        "payer": { "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o" },
        "amount": { "total": total, "payer_total": total, "currency": "CNY", "payer_currency": "CNY" }
    })
}

/// The notification body: the transaction encrypted under `api_v3_key` in a v3 envelope.
pub fn body(event_type: &str, transaction: &Value, api_v3_key: &str) -> String {
    let cipher = Aes256Gcm::new_from_slice(api_v3_key.as_bytes()).expect("32-byte key");
    let nonce = &hex::encode(rand::random::<[u8; 6]>()); // 12 characters, as WeChat sends
    let ciphertext = cipher
        .encrypt(
            Nonce::from_slice(nonce.as_bytes()),
            Payload {
                msg: transaction.to_string().as_bytes(),
                aad: b"transaction",
            },
        )
        .expect("encrypt");
    json!({
        "id": format!("EV-{}", hex::encode(rand::random::<[u8; 8]>())),
        "create_time": "2026-01-01T08:00:01+08:00",
        "resource_type": "encrypt-resource",
        "event_type": event_type,
        "summary": "支付成功",
        "resource": {
            "original_type": "transaction",
            "algorithm": "AEAD_AES_256_GCM",
            "ciphertext": base64::engine::general_purpose::STANDARD.encode(ciphertext),
            "associated_data": "transaction",
            "nonce": nonce
        }
    })
    .to_string()
}

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// The four `Wechatpay-*` headers for `body`, signed with `key` at `timestamp`.
pub fn headers(
    key: &RsaPrivateKey,
    serial: &str,
    timestamp: i64,
    body: &str,
) -> Vec<(String, String)> {
    let nonce = hex::encode_upper(rand::random::<[u8; 16]>());
    let message = format!("{timestamp}\n{nonce}\n{body}\n");
    let signature = SigningKey::<Sha256>::new(key.clone()).sign(message.as_bytes());
    vec![
        ("Wechatpay-Serial".into(), serial.into()),
        (
            "Wechatpay-Signature".into(),
            base64::engine::general_purpose::STANDARD.encode(signature.to_bytes()),
        ),
        ("Wechatpay-Timestamp".into(), timestamp.to_string()),
        ("Wechatpay-Nonce".into(), nonce),
        (
            "Wechatpay-Signature-Type".into(),
            "WECHATPAY2-SHA256-RSA2048".into(),
        ),
    ]
}

/// A decrypted refund resource (`REFUND.*` events), with the fields WeChat Pay documents.
pub fn refund(
    mchid: &str,
    out_trade_no: &str,
    out_refund_no: &str,
    total: i64,
    refund: i64,
    transaction_id: &str,
    refund_status: &str,
) -> Value {
    json!({
        "mchid": mchid,
        "out_trade_no": out_trade_no,
        "transaction_id": transaction_id,
        "out_refund_no": out_refund_no,
        "refund_id": format!("50000000382019052709732678{}", rand::random::<u16>()),
        "refund_status": refund_status,
        "success_time": "2026-01-02T10:00:00+08:00",
        "user_received_account": "招商银行信用卡0403",
        "amount": { "total": total, "refund": refund, "payer_total": total, "payer_refund": refund }
    })
}

/// A refund notification body: the refund encrypted under `api_v3_key` (associated data
/// `refund`, as WeChat Pay sends it).
pub fn refund_body(event_type: &str, refund: &Value, api_v3_key: &str) -> String {
    let cipher = Aes256Gcm::new_from_slice(api_v3_key.as_bytes()).expect("32-byte key");
    let nonce = &hex::encode(rand::random::<[u8; 6]>());
    let ciphertext = cipher
        .encrypt(
            Nonce::from_slice(nonce.as_bytes()),
            Payload {
                msg: refund.to_string().as_bytes(),
                aad: b"refund",
            },
        )
        .expect("encrypt");
    json!({
        "id": format!("EV-{}", hex::encode(rand::random::<[u8; 8]>())),
        "create_time": "2026-01-02T10:00:01+08:00",
        "resource_type": "encrypt-resource",
        "event_type": event_type,
        "summary": "退款成功",
        "resource": {
            "original_type": "refund",
            "algorithm": "AEAD_AES_256_GCM",
            "ciphertext": base64::engine::general_purpose::STANDARD.encode(ciphertext),
            "associated_data": "refund",
            "nonce": nonce
        }
    })
    .to_string()
}

/// An answer of WeChat Pay's API: `body` as JSON with `status`, signed by `key` under
/// `serial` as WeChat Pay signs its answers.
pub fn signed_answer(
    key: &RsaPrivateKey,
    serial: &str,
    status: axum::http::StatusCode,
    body: String,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let headers = headers(key, serial, now(), &body);
    let mut resp = (status, body).into_response();
    for (k, v) in headers {
        resp.headers_mut().insert(
            axum::http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).expect("name"),
            v.parse().expect("value"),
        );
    }
    resp.headers_mut()
        .insert("content-type", "application/json".parse().expect("value"));
    resp
}

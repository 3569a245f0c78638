//! A stand-in for WeChat Pay's platform certificate download, `GET /v3/certificates`,
//! behaving as WeChat Pay documents it: the request must carry the merchant's
//! `Authorization` (checked with the merchant's public key, as in [`crate::fake_provider`]);
//! the answer lists `{serial_no, effective_time, expire_time, encrypt_certificate}` with
//! each PEM certificate encrypted with AES-256-GCM under the APIv3 key (associated data
//! `certificate`), and the answer is signed with a platform certificate's key, its serial
//! in `Wechatpay-Serial`. The test decides which certificates are listed, which signs,
//! and how the answer is tampered with; every download is counted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine as _;
use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
use rsa::signature::Verifier;
use rsa::RsaPrivateKey;
use serde_json::json;
use sha2::Sha256;

use crate::fake_provider::{host_keys, V3_MERCHANT_SERIAL};
use crate::wechat_v3;

/// One platform certificate WeChat Pay holds: its key, serial (upper-case hex) and
/// validity in unix seconds.
#[derive(Clone)]
pub struct PlatformCert {
    /// Its private key (WeChat Pay's side).
    pub key: RsaPrivateKey,
    /// Its serial, upper-case hex, first nibble below 8.
    pub serial: String,
    /// `notBefore`, unix seconds.
    pub not_before: i64,
    /// `notAfter`, unix seconds.
    pub not_after: i64,
}

impl PlatformCert {
    /// A certificate of `key` valid from `from` to `until` (unix seconds).
    pub fn new(key: &RsaPrivateKey, serial: &str, from: i64, until: i64) -> PlatformCert {
        PlatformCert {
            key: key.clone(),
            serial: serial.into(),
            not_before: from,
            not_after: until,
        }
    }

    /// The self-signed X.509 certificate, PEM.
    pub fn pem(&self) -> String {
        use std::str::FromStr;
        use std::time::Duration;
        use x509_cert::builder::{Builder, CertificateBuilder, Profile};
        use x509_cert::der::asn1::UtcTime;
        use x509_cert::der::EncodePem;
        use x509_cert::name::Name;
        use x509_cert::serial_number::SerialNumber;
        use x509_cert::spki::SubjectPublicKeyInfoOwned;
        use x509_cert::time::{Time, Validity};

        let time = |secs: i64| {
            Time::UtcTime(
                UtcTime::from_unix_duration(Duration::from_secs(secs as u64)).expect("UTC time"),
            )
        };
        let serial = hex::decode(&self.serial).expect("hex serial");
        let signer = SigningKey::<Sha256>::new(self.key.clone());
        let builder = CertificateBuilder::new(
            Profile::Root,
            SerialNumber::new(&serial).expect("serial"),
            Validity {
                not_before: time(self.not_before),
                not_after: time(self.not_after),
            },
            Name::from_str("CN=Tenpay.com Root CA,OU=Tenpay.com CA Center,O=Tenpay.com,C=CN")
                .expect("name"),
            SubjectPublicKeyInfoOwned::from_key(self.key.to_public_key()).expect("spki"),
            &signer,
        )
        .expect("certificate builder");
        builder
            .build::<Signature>()
            .expect("certificate")
            .to_pem(x509_cert::der::pem::LineEnding::LF)
            .expect("certificate PEM")
    }
}

/// How the next answers are spoiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tamper {
    /// As WeChat Pay sends them.
    None,
    /// Signed by a stranger's key under the signing certificate's serial.
    BadSignature,
    /// One byte of each certificate's ciphertext flipped, the answer then signed properly.
    AlteredCiphertext,
}

/// What the stand-in serves and has seen.
pub struct CertsState {
    /// The certificates listed.
    pub certs: Vec<PlatformCert>,
    /// The certificate whose key signs the answer (it need not be listed).
    pub signer: PlatformCert,
    /// How answers are spoiled.
    pub tamper: Tamper,
    /// Downloads served (authorised requests).
    pub downloads: usize,
    /// Requests whose `Authorization` did not verify (there should be none).
    pub bad_requests: Vec<String>,
}

/// A running stand-in.
pub struct CertsStandIn {
    /// `http://127.0.0.1:PORT`, the account's `api_base`.
    pub base: String,
    state: Arc<Mutex<CertsState>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl CertsStandIn {
    /// Starts it on a free loopback port, listing `certs`, signing with `signer`.
    pub async fn start(certs: Vec<PlatformCert>, signer: PlatformCert) -> CertsStandIn {
        let state = Arc::new(Mutex::new(CertsState {
            certs,
            signer,
            tamper: Tamper::None,
            downloads: 0,
            bad_requests: Vec::new(),
        }));
        let app = Router::new()
            .route("/v3/certificates", get(certificates))
            .with_state(state.clone());
        let (base, tx) = crate::fake_provider::serve_stand_in(app).await;
        CertsStandIn {
            base,
            state,
            shutdown: Some(tx),
        }
    }

    /// What it serves and has seen.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, CertsState> {
        self.state.lock().expect("stand-in state")
    }

    /// Downloads served so far.
    pub fn downloads(&self) -> usize {
        self.lock().downloads
    }
}

impl Drop for CertsStandIn {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Checks the merchant's `Authorization` over `GET\n/v3/certificates\nTS\nNONCE\n\n`.
fn authorized(headers: &HeaderMap) -> Result<(), String> {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let params = auth
        .strip_prefix("WECHATPAY2-SHA256-RSA2048 ")
        .ok_or_else(|| format!("scheme: {auth}"))?;
    let p: HashMap<String, String> = params
        .split(',')
        .filter_map(|part| part.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
        .collect();
    let get = |k: &str| p.get(k).cloned().unwrap_or_default();
    let message = format!(
        "GET\n/v3/certificates\n{}\n{}\n\n",
        get("timestamp"),
        get("nonce_str")
    );
    let sig = base64::engine::general_purpose::STANDARD
        .decode(get("signature"))
        .map_err(|_| format!("signature not base64: {auth}"))?;
    let sig = Signature::try_from(sig.as_slice()).map_err(|_| format!("signature: {auth}"))?;
    let ok = get("mchid") == wechat_v3::MCH_ID_A
        && get("serial_no") == V3_MERCHANT_SERIAL
        && VerifyingKey::<Sha256>::new(host_keys().0.to_public_key())
            .verify(message.as_bytes(), &sig)
            .is_ok();
    if ok {
        Ok(())
    } else {
        Err(format!("not signed by the merchant: {auth}"))
    }
}

/// RFC 3339 in Beijing time, as WeChat Pay writes `effective_time` / `expire_time`.
fn beijing(secs: i64) -> String {
    let utc = paynotify::time::iso_time((secs + 8 * 3600) * 1000);
    format!("{}+08:00", utc.trim_end_matches('Z'))
}

async fn certificates(
    axum::extract::State(state): axum::extract::State<Arc<Mutex<CertsState>>>,
    headers: HeaderMap,
) -> Response {
    let mut s = state.lock().expect("stand-in state");
    if let Err(why) = authorized(&headers) {
        s.bad_requests.push(why);
        return (StatusCode::UNAUTHORIZED, r#"{"code":"SIGN_ERROR"}"#).into_response();
    }
    s.downloads += 1;
    let cipher = Aes256Gcm::new_from_slice(wechat_v3::API_V3_KEY.as_bytes()).expect("key");
    let data: Vec<_> = s
        .certs
        .iter()
        .map(|c| {
            let nonce = hex::encode(rand::random::<[u8; 6]>());
            let mut ciphertext = cipher
                .encrypt(
                    Nonce::from_slice(nonce.as_bytes()),
                    Payload {
                        msg: c.pem().as_bytes(),
                        aad: b"certificate",
                    },
                )
                .expect("encrypt");
            if s.tamper == Tamper::AlteredCiphertext {
                ciphertext[10] ^= 1;
            }
            json!({
                "serial_no": c.serial,
                "effective_time": beijing(c.not_before),
                "expire_time": beijing(c.not_after),
                "encrypt_certificate": {
                    "algorithm": "AEAD_AES_256_GCM",
                    "nonce": nonce,
                    "associated_data": "certificate",
                    "ciphertext": base64::engine::general_purpose::STANDARD.encode(ciphertext)
                }
            })
        })
        .collect();
    let body = json!({ "data": data }).to_string();
    let key = match s.tamper {
        Tamper::BadSignature => &wechat_v3::keys()[3],
        _ => &s.signer.key,
    };
    wechat_v3::signed_answer(key, &s.signer.serial, StatusCode::OK, body)
}

//! A stand-in of WeChat Pay's v2 API host for placing payments and refunds:
//! `POST /pay/unifiedorder`, `POST /secapi/pay/refund` (mutual TLS), and the
//! `orderquery` / `closeorder` the host also sends there, over HTTPS on loopback.
//!
//! It checks every request as WeChat does, with code written here rather than the
//! host's: the XML is read by its own small parser, the `sign` recomputed with the
//! merchant's API key (MD5 with [`wechat_v2::md5_sign`], HMAC-SHA256 with
//! [`hmac_sign`]), the required fields and amounts checked. Refunds must come over a TLS
//! connection that presented a client certificate issued by the test CA ([`Pki`]) to
//! this merchant (its CN is the mch_id); the TLS layer refuses certificates of any other
//! CA. Answers are signed as WeChat signs them (the request's sign type, the merchant's
//! key). Everything received is recorded; the test can make it refuse the next call
//! with an error code, sign its answers with a wrong key, or say an order is paid.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Router};
use hmac::{Hmac, Mac};
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use rsa::RsaPrivateKey;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::Sha256;
use x509_cert::builder::{Builder, CertificateBuilder, Profile};
use x509_cert::der::asn1::{Ia5String, OctetString};
use x509_cert::der::{Decode, Encode, EncodePem};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{ExtendedKeyUsage, SubjectAltName};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{ObjectIdentifier, SubjectPublicKeyInfoOwned};
use x509_cert::time::Validity;

use crate::wechat_v2;

/// The test CA's name; it issues the stand-in's server certificate and the merchants'
/// client certificates.
const CA_DN: &str = "CN=Test WeChat Pay CA,O=Test,C=CN";

/// `id-kp-serverAuth`.
const SERVER_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.1");
/// `id-kp-clientAuth`.
const CLIENT_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.2");

/// One merchant the stand-in knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Merchant {
    /// Its appid.
    pub appid: &'static str,
    /// Its mch_id (the CN of its client certificate).
    pub mch_id: &'static str,
    /// Its API key (generated for tests; not a real secret).
    pub api_key: &'static str,
}

/// A certificate and its private key, PEM, as WeChat hands a merchant
/// `apiclient_cert.pem` and `apiclient_key.pem`.
#[derive(Debug, Clone)]
pub struct CertAndKey {
    /// The certificate.
    pub cert_pem: String,
    /// Its PKCS#8 private key.
    pub key_pem: String,
}

/// The test CA, the stand-in's server certificate (for 127.0.0.1) and the merchants'
/// client certificates.
pub struct Pki {
    ca: p256::ecdsa::SigningKey,
    /// The CA certificate: the host's `api_ca_cert_file`, and the roots the stand-in
    /// checks client certificates against.
    pub ca_pem: String,
    ca_der: Vec<u8>,
    server_cert_der: Vec<u8>,
    server_key_der: Vec<u8>,
}

fn validity() -> Validity {
    Validity::from_now(Duration::from_secs(86_400)).expect("validity")
}

fn root(key: &p256::ecdsa::SigningKey, dn: &str) -> x509_cert::Certificate {
    let spki = SubjectPublicKeyInfoOwned::from_key(*key.verifying_key()).expect("spki");
    CertificateBuilder::new(
        Profile::Root,
        SerialNumber::new(&[0x01]).expect("serial"),
        validity(),
        Name::from_str(dn).expect("name"),
        spki,
        key,
    )
    .expect("builder")
    .build::<p256::ecdsa::DerSignature>()
    .expect("CA certificate")
}

/// A leaf certificate for `spki`, issued by `ca` (named `ca_dn`), with `usage` and, for
/// a server, `san_ip`.
fn leaf(
    ca: &p256::ecdsa::SigningKey,
    ca_dn: &str,
    subject: &str,
    spki: SubjectPublicKeyInfoOwned,
    usage: ObjectIdentifier,
    san_ip: Option<[u8; 4]>,
) -> x509_cert::Certificate {
    let serial: [u8; 8] = rand::random();
    let mut builder = CertificateBuilder::new(
        Profile::Leaf {
            issuer: Name::from_str(ca_dn).expect("issuer"),
            enable_key_agreement: false,
            enable_key_encipherment: true,
        },
        // Positive: the first byte's high bit clear.
        SerialNumber::new(&[&[0x01][..], &serial[..]].concat()).expect("serial"),
        validity(),
        Name::from_str(subject).expect("subject"),
        spki,
        ca,
    )
    .expect("builder");
    builder
        .add_extension(&ExtendedKeyUsage(vec![usage]))
        .expect("eku");
    if let Some(ip) = san_ip {
        builder
            .add_extension(&SubjectAltName(vec![
                GeneralName::IpAddress(OctetString::new(ip.to_vec()).expect("ip")),
                GeneralName::DnsName(Ia5String::new("localhost").expect("dns")),
            ]))
            .expect("san");
    }
    builder
        .build::<p256::ecdsa::DerSignature>()
        .expect("leaf certificate")
}

fn pem(cert: &x509_cert::Certificate) -> String {
    cert.to_pem(LineEnding::LF).expect("pem")
}

impl Pki {
    /// A new CA and server certificate (P-256: quick to make).
    pub fn new() -> Pki {
        let ca = p256::ecdsa::SigningKey::random(&mut rand::thread_rng());
        let ca_cert = root(&ca, CA_DN);
        let server_key = p256::ecdsa::SigningKey::random(&mut rand::thread_rng());
        let spki = SubjectPublicKeyInfoOwned::from_key(*server_key.verifying_key()).expect("spki");
        let server = leaf(
            &ca,
            CA_DN,
            "CN=api.mch.weixin.qq.com stand-in,O=Test,C=CN",
            spki,
            SERVER_AUTH,
            Some([127, 0, 0, 1]),
        );
        Pki {
            ca_pem: pem(&ca_cert),
            ca_der: ca_cert.to_der().expect("der"),
            server_cert_der: server.to_der().expect("der"),
            server_key_der: p256::SecretKey::from(server_key.as_nonzero_scalar())
                .to_pkcs8_der()
                .expect("key der")
                .as_bytes()
                .to_vec(),
            ca,
        }
    }

    /// The merchant API certificate of `mch_id`, issued by the test CA for `key` (RSA,
    /// as WeChat's `apiclient_key.pem` is).
    pub fn client_cert(&self, mch_id: &str, key: &RsaPrivateKey) -> CertAndKey {
        client_cert_by(&self.ca, CA_DN, mch_id, key)
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

/// A certificate for `mch_id` from a CA the stand-in does not trust: what a stolen-looking
/// or mixed-up `apiclient_cert.pem` would be.
pub fn untrusted_client_cert(mch_id: &str, key: &RsaPrivateKey) -> CertAndKey {
    let dn = "CN=Some Other CA,O=Elsewhere,C=CN";
    let other = p256::ecdsa::SigningKey::random(&mut rand::thread_rng());
    client_cert_by(&other, dn, mch_id, key)
}

fn client_cert_by(
    ca: &p256::ecdsa::SigningKey,
    ca_dn: &str,
    mch_id: &str,
    key: &RsaPrivateKey,
) -> CertAndKey {
    let spki = SubjectPublicKeyInfoOwned::from_key(key.to_public_key()).expect("spki");
    let cert = leaf(
        ca,
        ca_dn,
        &format!("CN={mch_id},OU=Test Merchant,O=Tenpay.com,C=CN"),
        spki,
        CLIENT_AUTH,
        None,
    );
    CertAndKey {
        cert_pem: pem(&cert),
        key_pem: key
            .to_pkcs8_pem(LineEnding::LF)
            .expect("key pem")
            .to_string(),
    }
}

/// HMAC-SHA256 signature: the same string as [`wechat_v2::md5_sign`] signs, keyed with
/// the API key, upper-case hex.
pub fn hmac_sign(fields: &BTreeMap<String, String>, key: &str) -> String {
    let mut pairs: Vec<String> = fields
        .iter()
        .filter(|(k, v)| k.as_str() != "sign" && !v.is_empty())
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    pairs.sort();
    let text = format!("{}&key={key}", pairs.join("&"));
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(text.as_bytes());
    hex::encode_upper(mac.finalize().into_bytes())
}

/// The signature of `fields` in `sign_type` (`MD5` or `HMAC-SHA256`).
pub fn sign_as(sign_type: &str, fields: &BTreeMap<String, String>, key: &str) -> String {
    match sign_type {
        "HMAC-SHA256" => hmac_sign(fields, key),
        "MD5" => wechat_v2::md5_sign(fields, key),
        other => panic!("sign type `{other}`"),
    }
}

/// Reads `<xml><k>v</k>…</xml>` where each value is text (with the five XML entities) or
/// CDATA sections, possibly several in a row (`]]>` split across two).
pub fn parse_xml(body: &str) -> Result<BTreeMap<String, String>, String> {
    let inner = body
        .trim()
        .strip_prefix("<xml>")
        .and_then(|s| s.strip_suffix("</xml>"))
        .ok_or("not <xml>…</xml>")?;
    let mut fields = BTreeMap::new();
    let mut rest = inner.trim_start();
    while !rest.is_empty() {
        let open_end = rest.find('>').ok_or("unclosed tag")?;
        let name = rest
            .strip_prefix('<')
            .map(|s| &s[..open_end - 1])
            .ok_or("expected a tag")?;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("bad element name `{name}`"));
        }
        rest = &rest[open_end + 1..];
        let close = format!("</{name}>");
        let mut value = String::new();
        loop {
            if let Some(after) = rest.strip_prefix("<![CDATA[") {
                let end = after.find("]]>").ok_or("unclosed CDATA")?;
                value.push_str(&after[..end]);
                rest = &after[end + 3..];
            } else if let Some(after) = rest.strip_prefix(close.as_str()) {
                rest = after;
                break;
            } else {
                let end = rest.find('<').ok_or("unclosed element")?;
                value.push_str(
                    &rest[..end]
                        .replace("&lt;", "<")
                        .replace("&gt;", ">")
                        .replace("&quot;", "\"")
                        .replace("&apos;", "'")
                        .replace("&amp;", "&"),
                );
                rest = &rest[end..];
                if !rest.starts_with("<![CDATA[") && !rest.starts_with(close.as_str()) {
                    return Err(format!("unexpected markup in <{name}>"));
                }
            }
        }
        if fields.insert(name.to_owned(), value).is_some() {
            return Err(format!("field `{name}` twice"));
        }
        rest = rest.trim_start();
    }
    Ok(fields)
}

/// A body as WeChat writes its answers and notifications: every field CDATA, signed in
/// `sign_type` (`MD5`, `HMAC-SHA256`) with `key`.
pub fn signed_xml(mut fields: BTreeMap<String, String>, sign_type: &str, key: &str) -> String {
    fields.remove("sign");
    let sign = sign_as(sign_type, &fields, key);
    let mut x = String::from("<xml>");
    for (k, v) in &fields {
        x.push_str(&format!("<{k}><![CDATA[{v}]]></{k}>"));
    }
    x.push_str(&format!("<sign><![CDATA[{sign}]]></sign></xml>"));
    x
}

/// Unix ms → `yyyyMMddHHmmss` in China Standard Time, computed here (civil-from-days),
/// not with the host's formatter.
pub fn china_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000) + 8 * 3600;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A placed order, as the stand-in keeps it.
#[derive(Debug, Clone)]
pub struct PlacedOrder {
    /// The merchant.
    pub mch_id: String,
    /// Its amount.
    pub total_fee: i64,
    /// Its `trade_type`.
    pub trade_type: String,
    /// The prepay id given (the same for a repeat of the same order).
    pub prepay_id: String,
    /// Paid: its transaction id.
    pub transaction_id: Option<String>,
    /// Closed by `closeorder`.
    pub closed: bool,
}

/// A refund the stand-in accepted.
#[derive(Debug, Clone)]
pub struct RefundRecord {
    /// The merchant.
    pub mch_id: String,
    /// The order.
    pub out_trade_no: String,
    /// The payment.
    pub transaction_id: String,
    /// The merchant's refund number.
    pub out_refund_no: String,
    /// WeChat's refund id.
    pub refund_id: String,
    /// Fen refunded.
    pub refund_fee: i64,
    /// The order's total.
    pub total_fee: i64,
}

/// One request that verified, as received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The path.
    pub path: String,
    /// Its fields (with `sign`).
    pub fields: BTreeMap<String, String>,
    /// The client certificate's subject, when the connection presented one.
    pub client_cert: Option<String>,
}

/// What the stand-in has seen and will say.
#[derive(Default)]
pub struct StandInState {
    merchants: Vec<Merchant>,
    /// Placed orders by out_trade_no.
    pub orders: HashMap<String, PlacedOrder>,
    /// Refunds accepted, in order (one per out_refund_no).
    pub refunds: Vec<RefundRecord>,
    /// Every request that verified, in order.
    pub received: Vec<Received>,
    /// Requests that did not pass WeChat's checks, with the reason (a test expects none
    /// unless it sent one on purpose).
    pub bad_requests: Vec<String>,
    /// Refund requests refused for coming without a client certificate.
    pub refunds_without_cert: usize,
    /// TLS handshakes that failed (a client certificate of another CA).
    pub handshake_failures: Vec<String>,
    /// The next calls to refuse, in order: (err_code, err_code_des).
    refusals: Vec<(String, String)>,
    /// Sign answers with a wrong key.
    bad_signature: bool,
}

impl StandInState {
    /// The requests to `path` that verified.
    pub fn received_at(&self, path: &str) -> Vec<&Received> {
        self.received.iter().filter(|r| r.path == path).collect()
    }
}

type Shared = Arc<Mutex<StandInState>>;

/// The client certificate a connection presented (its subject), per connection.
#[derive(Debug, Clone)]
struct Peer(Option<String>);

/// A running stand-in.
pub struct PayStandIn {
    /// `https://127.0.0.1:PORT`, the `api_base` of the test accounts.
    pub base: String,
    state: Shared,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl PayStandIn {
    /// Starts it on a free loopback port, serving HTTPS with `pki`'s server certificate
    /// and asking for (not requiring: unified order needs none) a client certificate of
    /// `pki`'s CA.
    pub async fn start(pki: &Pki, merchants: &[Merchant]) -> PayStandIn {
        let state: Shared = Arc::new(Mutex::new(StandInState {
            merchants: merchants.to_vec(),
            ..StandInState::default()
        }));
        let router = Router::new()
            .route("/pay/unifiedorder", post(unifiedorder))
            .route("/secapi/pay/refund", post(refund))
            .route("/pay/orderquery", post(orderquery))
            .route("/pay/closeorder", post(closeorder))
            .with_state(state.clone());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(pki.ca_der.clone()))
            .expect("CA root");
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .expect("client verifier");
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from(pki.server_cert_der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.server_key_der.clone())),
            )
            .expect("server certificate");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the v2 stand-in");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let accept_state = state.clone();
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    _ = &mut rx => return,
                    accepted = listener.accept() => match accepted {
                        Ok((tcp, _)) => tcp,
                        Err(_) => continue,
                    },
                };
                let acceptor = acceptor.clone();
                let router = router.clone();
                let state = accept_state.clone();
                tokio::spawn(async move {
                    let tls = match acceptor.accept(tcp).await {
                        Ok(tls) => tls,
                        Err(e) => {
                            state
                                .lock()
                                .expect("state")
                                .handshake_failures
                                .push(e.to_string());
                            return;
                        }
                    };
                    let subject = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|der| x509_cert::Certificate::from_der(der.as_ref()).ok())
                        .map(|c| c.tbs_certificate.subject.to_string());
                    let service = hyper_util::service::TowerToHyperService::new(
                        router.layer(Extension(Peer(subject))),
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        PayStandIn {
            base: format!("https://{addr}"),
            state,
            shutdown: Some(tx),
        }
    }

    /// Reads what it recorded.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, StandInState> {
        self.state.lock().expect("stand-in state")
    }

    /// Refuses the next call (unified order or refund) with `err_code` and `des`, in a
    /// signed `result_code` `FAIL` answer.
    pub fn refuse_next(&self, err_code: &str, des: &str) {
        self.lock().refusals.push((err_code.into(), des.into()));
    }

    /// Signs answers with a key the merchant does not have (`on`), or with its own again.
    pub fn bad_signature(&self, on: bool) {
        self.lock().bad_signature = on;
    }

    /// The buyer paid `out_trade_no` (placed here) by `transaction_id`.
    pub fn pay(&self, out_trade_no: &str, transaction_id: &str) {
        let mut s = self.lock();
        let o = s
            .orders
            .get_mut(out_trade_no)
            .expect("placed at the stand-in");
        o.transaction_id = Some(transaction_id.into());
    }

    /// The refund notification WeChat would send for refund `out_refund_no` (refunded
    /// now): `req_info` encrypted with the merchant's key, in its envelope.
    pub fn refund_notification(&self, out_refund_no: &str) -> String {
        let s = self.lock();
        let r = s
            .refunds
            .iter()
            .find(|r| r.out_refund_no == out_refund_no)
            .expect("refund accepted by the stand-in")
            .clone();
        let m = s
            .merchants
            .iter()
            .find(|m| m.mch_id == r.mch_id)
            .copied()
            .expect("merchant");
        let mut info = wechat_v2::refund_info(
            &r.out_trade_no,
            &r.out_refund_no,
            r.total_fee,
            r.refund_fee,
            &r.transaction_id,
        );
        info.insert("refund_id".into(), r.refund_id.clone());
        let req_info = wechat_v2::req_info(&info, m.api_key);
        format!(
            "<xml><return_code>SUCCESS</return_code><appid><![CDATA[{}]]></appid>\
             <mch_id><![CDATA[{}]]></mch_id><nonce_str><![CDATA[{}]]></nonce_str>\
             <req_info><![CDATA[{req_info}]]></req_info></xml>",
            m.appid,
            m.mch_id,
            hex::encode(rand::random::<[u8; 16]>())
        )
    }
}

impl Drop for PayStandIn {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A `return_code` `FAIL` answer (unsigned, as WeChat's are).
fn fail(msg: &str) -> Response {
    xml_response(format!(
        "<xml><return_code><![CDATA[FAIL]]></return_code><return_msg><![CDATA[{msg}]]></return_msg></xml>"
    ))
}

fn xml_response(body: String) -> Response {
    ([("content-type", "text/xml; charset=utf-8")], body).into_response()
}

/// A request that verified: its merchant, sign type and fields.
struct Request {
    merchant: Merchant,
    sign_type: String,
    fields: BTreeMap<String, String>,
}

impl Request {
    fn get(&self, k: &str) -> &str {
        self.fields.get(k).map(String::as_str).unwrap_or("")
    }
}

/// Reads and checks a request as WeChat does: XML, a known merchant (appid and mch_id
/// its own), `nonce_str`, the sign type, the `sign` with its key. `Err` is the answer
/// (the request is recorded as bad).
fn verify(shared: &Shared, path: &str, body: &[u8]) -> Result<Request, Box<Response>> {
    let merchants = shared.lock().expect("state").merchants.clone();
    check_request(&merchants, body).map_err(|(why, msg)| {
        shared
            .lock()
            .expect("state")
            .bad_requests
            .push(format!("{path}: {why}: {}", String::from_utf8_lossy(body)));
        Box::new(fail(msg))
    })
}

fn check_request(merchants: &[Merchant], body: &[u8]) -> Result<Request, (String, &'static str)> {
    let text =
        std::str::from_utf8(body).map_err(|_| ("not UTF-8".to_owned(), "XML_FORMAT_ERROR"))?;
    let fields = parse_xml(text).map_err(|e| (format!("XML: {e}"), "XML_FORMAT_ERROR"))?;
    let get = |k: &str| fields.get(k).cloned().unwrap_or_default();
    let merchant = merchants
        .iter()
        .find(|m| m.mch_id == get("mch_id"))
        .copied()
        .ok_or(("unknown mch_id".to_owned(), "MCHID_NOT_EXIST"))?;
    if merchant.appid != get("appid") {
        return Err(("appid is not the merchant's".into(), "appid和mch_id不匹配"));
    }
    let nonce = get("nonce_str");
    if nonce.is_empty() || nonce.len() > 32 {
        return Err(("nonce_str".into(), "nonce_str参数错误"));
    }
    let sign_type = match get("sign_type").as_str() {
        "" | "MD5" => "MD5",
        "HMAC-SHA256" => "HMAC-SHA256",
        other => return Err((format!("sign_type `{other}`"), "签名类型错误")),
    };
    if sign_as(sign_type, &fields, merchant.api_key) != get("sign") {
        return Err(("signature".into(), "签名错误"));
    }
    Ok(Request {
        merchant,
        sign_type: sign_type.to_owned(),
        fields,
    })
}

/// Records a verified request.
fn record(shared: &Shared, path: &str, peer: &Peer, req: &Request) {
    shared.lock().expect("state").received.push(Received {
        path: path.into(),
        fields: req.fields.clone(),
        client_cert: peer.0.clone(),
    });
}

/// A signed answer to `req` (`return_code` SUCCESS plus `pairs`).
fn answer(shared: &Shared, req: &Request, pairs: Vec<(&str, String)>) -> Response {
    let mut f = BTreeMap::new();
    f.insert("return_code".to_owned(), "SUCCESS".to_owned());
    f.insert("return_msg".to_owned(), "OK".to_owned());
    f.insert("appid".to_owned(), req.merchant.appid.to_owned());
    f.insert("mch_id".to_owned(), req.merchant.mch_id.to_owned());
    f.insert(
        "nonce_str".to_owned(),
        hex::encode(rand::random::<[u8; 16]>()),
    );
    for (k, v) in pairs {
        f.insert(k.to_owned(), v);
    }
    let key = if shared.lock().expect("state").bad_signature {
        "n0tth3k3y000000000000000000000000"
    } else {
        req.merchant.api_key
    };
    xml_response(signed_xml(f, &req.sign_type, key))
}

/// A signed `result_code` FAIL answer.
fn refused(shared: &Shared, req: &Request, code: &str, des: &str) -> Response {
    answer(
        shared,
        req,
        vec![
            ("result_code", "FAIL".into()),
            ("err_code", code.into()),
            ("err_code_des", des.into()),
        ],
    )
}

/// A refusal the test asked for, if any.
fn take_refusal(shared: &Shared) -> Option<(String, String)> {
    let mut s = shared.lock().expect("state");
    (!s.refusals.is_empty()).then(|| s.refusals.remove(0))
}

/// A positive amount in fen, strictly.
fn fen(s: &str) -> Option<i64> {
    (!s.is_empty() && s.len() < 16 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
        .filter(|v| *v > 0)
}

/// `yyyyMMddHHmmss` → the same layout's ordering as a number (for "later than").
fn yyyymmddhhmmss(s: &str) -> Option<u64> {
    (s.len() == 14 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// The checks of 统一下单's parameters; `Err` says which is wrong.
fn check_unifiedorder(req: &Request) -> Result<(), String> {
    let get = |k| req.get(k);
    let body = get("body");
    if body.is_empty() || body.chars().count() > 128 {
        return Err("body".into());
    }
    let no = get("out_trade_no");
    if no.is_empty()
        || no.len() > 32
        || !no
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-|*".contains(&b))
    {
        return Err("out_trade_no".into());
    }
    fen(get("total_fee")).ok_or("total_fee")?;
    get("spbill_create_ip")
        .parse::<std::net::IpAddr>()
        .map_err(|_| "spbill_create_ip")?;
    let notify = get("notify_url");
    if !(notify.starts_with("https://") || notify.starts_with("http://")) || notify.contains('?') {
        return Err("notify_url: an http(s) URL without parameters".into());
    }
    match get("trade_type") {
        "JSAPI" if get("openid").is_empty() => return Err("openid is required for JSAPI".into()),
        "MWEB" => {
            let scene: serde_json::Value =
                serde_json::from_str(get("scene_info")).map_err(|_| "scene_info is not JSON")?;
            if scene["h5_info"]["type"].as_str().is_none() {
                return Err("scene_info.h5_info.type".into());
            }
        }
        "JSAPI" | "NATIVE" | "APP" => {}
        other => return Err(format!("trade_type `{other}`")),
    }
    let expire = get("time_expire");
    if !expire.is_empty() {
        let at = yyyymmddhhmmss(expire).ok_or("time_expire format")?;
        // WeChat wants at least a minute left.
        let soon = china_time(now_ms() + 60_000).parse::<u64>().unwrap_or(0);
        if at <= soon {
            return Err("time_expire is less than a minute away".into());
        }
    }
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn unifiedorder(
    State(shared): State<Shared>,
    Extension(peer): Extension<Peer>,
    body: Bytes,
) -> Response {
    const PATH: &str = "/pay/unifiedorder";
    let req = match verify(&shared, PATH, &body) {
        Ok(r) => r,
        Err(answer) => return *answer,
    };
    if let Err(why) = check_unifiedorder(&req) {
        shared
            .lock()
            .expect("state")
            .bad_requests
            .push(format!("{PATH}: {why}"));
        return refused(&shared, &req, "PARAM_ERROR", &why);
    }
    record(&shared, PATH, &peer, &req);
    if let Some((code, des)) = take_refusal(&shared) {
        return refused(&shared, &req, &code, &des);
    }
    let no = req.get("out_trade_no").to_owned();
    let total_fee = fen(req.get("total_fee")).unwrap_or(0);
    let trade_type = req.get("trade_type").to_owned();
    let prepay_id = {
        let mut s = shared.lock().expect("state");
        let existing = s.orders.get(&no).cloned();
        match existing {
            Some(o) if o.transaction_id.is_some() => {
                drop(s);
                return refused(&shared, &req, "ORDERPAID", "该订单已支付");
            }
            Some(o) if o.closed => {
                drop(s);
                return refused(&shared, &req, "ORDERCLOSED", "该订单已关");
            }
            // The same order again: the same prepayment (WeChat does so while it is valid).
            Some(o) if o.total_fee == total_fee && o.trade_type == trade_type => o.prepay_id,
            Some(_) => {
                drop(s);
                return refused(&shared, &req, "INVALID_REQUEST", "商户订单号重复");
            }
            None => {
                let id = format!("wx{}", hex::encode(rand::random::<[u8; 14]>()));
                s.orders.insert(
                    no.clone(),
                    PlacedOrder {
                        mch_id: req.merchant.mch_id.into(),
                        total_fee,
                        trade_type: trade_type.clone(),
                        prepay_id: id.clone(),
                        transaction_id: None,
                        closed: false,
                    },
                );
                id
            }
        }
    };
    let mut pairs = vec![
        ("result_code", "SUCCESS".to_owned()),
        ("trade_type", trade_type.clone()),
        ("prepay_id", prepay_id.clone()),
    ];
    match trade_type.as_str() {
        "NATIVE" => pairs.push(("code_url", format!("weixin://wxpay/bizpayurl?pr={}", &prepay_id[2..12]))),
        "MWEB" => pairs.push((
            "mweb_url",
            format!("https://wx.tenpay.com/cgi-bin/mmpayweb-bin/checkmweb?prepay_id={prepay_id}&package=1037687096"),
        )),
        _ => {}
    }
    answer(&shared, &req, pairs)
}

async fn refund(
    State(shared): State<Shared>,
    Extension(peer): Extension<Peer>,
    body: Bytes,
) -> Response {
    const PATH: &str = "/secapi/pay/refund";
    // WeChat takes refunds over mutual TLS only.
    let Some(subject) = peer.0.clone() else {
        shared.lock().expect("state").refunds_without_cert += 1;
        return fail("no client certificate: refunds need the merchant API certificate");
    };
    let req = match verify(&shared, PATH, &body) {
        Ok(r) => r,
        Err(answer) => return *answer,
    };
    if !subject
        .split(',')
        .any(|p| p.trim() == format!("CN={}", req.merchant.mch_id))
    {
        shared.lock().expect("state").bad_requests.push(format!(
            "{PATH}: certificate {subject} is not merchant {}'s",
            req.merchant.mch_id
        ));
        return fail("证书与商户号不匹配");
    }
    record(&shared, PATH, &peer, &req);
    if let Some((code, des)) = take_refusal(&shared) {
        return refused(&shared, &req, &code, &des);
    }
    let get = |k| req.get(k);
    let out_refund_no = get("out_refund_no").to_owned();
    let param_error = |why: String| {
        shared
            .lock()
            .expect("state")
            .bad_requests
            .push(format!("{PATH}: {why}"));
        refused(&shared, &req, "PARAM_ERROR", &why)
    };
    if out_refund_no.is_empty() || out_refund_no.len() > 64 {
        return param_error("out_refund_no".into());
    }
    if get("refund_desc").chars().count() > 80 {
        return param_error("refund_desc longer than 80".into());
    }
    let (Some(total_fee), Some(refund_fee)) = (fen(get("total_fee")), fen(get("refund_fee")))
    else {
        return param_error("total_fee / refund_fee".into());
    };
    let tx = get("transaction_id").to_owned();
    let mut s = shared.lock().expect("state");
    let Some((no, order)) = s
        .orders
        .iter()
        .find(|(_, o)| {
            o.transaction_id.as_deref() == Some(tx.as_str()) && o.mch_id == req.merchant.mch_id
        })
        .map(|(k, o)| (k.clone(), o.clone()))
    else {
        drop(s);
        return param_error(format!(
            "transaction_id `{tx}` is no paid order of this merchant"
        ));
    };
    if let Some(r) = s
        .refunds
        .iter()
        .find(|r| r.out_refund_no == out_refund_no)
        .cloned()
    {
        drop(s);
        // The same refund again: WeChat answers as the first time.
        if r.refund_fee != refund_fee || r.transaction_id != tx {
            return param_error("out_refund_no reused for another refund".into());
        }
        return answer(&shared, &req, refund_pairs(&r));
    }
    let refunded: i64 = s
        .refunds
        .iter()
        .filter(|r| r.transaction_id == tx)
        .map(|r| r.refund_fee)
        .sum();
    if total_fee != order.total_fee {
        drop(s);
        return param_error(format!(
            "total_fee {total_fee} is not the order's {}",
            order.total_fee
        ));
    }
    if refunded + refund_fee > total_fee {
        drop(s);
        return refused(&shared, &req, "NOTENOUGH", "订单可退金额不足");
    }
    let r = RefundRecord {
        mch_id: req.merchant.mch_id.into(),
        out_trade_no: no,
        transaction_id: tx,
        out_refund_no,
        refund_id: format!("50000{}", rand::random::<u64>() % 10_000_000_000_000),
        refund_fee,
        total_fee,
    };
    s.refunds.push(r.clone());
    drop(s);
    answer(&shared, &req, refund_pairs(&r))
}

fn refund_pairs(r: &RefundRecord) -> Vec<(&'static str, String)> {
    vec![
        ("result_code", "SUCCESS".into()),
        ("transaction_id", r.transaction_id.clone()),
        ("out_trade_no", r.out_trade_no.clone()),
        ("out_refund_no", r.out_refund_no.clone()),
        ("refund_id", r.refund_id.clone()),
        ("refund_fee", r.refund_fee.to_string()),
        ("total_fee", r.total_fee.to_string()),
        ("cash_fee", r.total_fee.to_string()),
    ]
}

async fn orderquery(
    State(shared): State<Shared>,
    Extension(peer): Extension<Peer>,
    body: Bytes,
) -> Response {
    const PATH: &str = "/pay/orderquery";
    let req = match verify(&shared, PATH, &body) {
        Ok(r) => r,
        Err(answer) => return *answer,
    };
    record(&shared, PATH, &peer, &req);
    let no = req.get("out_trade_no").to_owned();
    let order = shared.lock().expect("state").orders.get(&no).cloned();
    let pairs = match order {
        None => vec![
            ("result_code", "FAIL".into()),
            ("err_code", "ORDERNOTEXIST".into()),
            ("err_code_des", "此交易订单号不存在".into()),
        ],
        Some(o) => {
            let mut p = vec![
                ("result_code", "SUCCESS".into()),
                ("out_trade_no", no.clone()),
                ("trade_type", o.trade_type.clone()),
                ("total_fee", o.total_fee.to_string()),
            ];
            match (&o.transaction_id, o.closed) {
                (Some(tx), _) => {
                    p.push(("trade_state", "SUCCESS".into()));
                    p.push(("transaction_id", tx.clone()));
                    p.push(("cash_fee", o.total_fee.to_string()));
                    p.push(("time_end", china_time(now_ms())));
                    p.push(("bank_type", "OTHERS".into()));
                }
                (None, true) => p.push(("trade_state", "CLOSED".into())),
                (None, false) => p.push(("trade_state", "NOTPAY".into())),
            }
            p
        }
    };
    answer(&shared, &req, pairs)
}

async fn closeorder(
    State(shared): State<Shared>,
    Extension(peer): Extension<Peer>,
    body: Bytes,
) -> Response {
    const PATH: &str = "/pay/closeorder";
    let req = match verify(&shared, PATH, &body) {
        Ok(r) => r,
        Err(answer) => return *answer,
    };
    record(&shared, PATH, &peer, &req);
    let no = req.get("out_trade_no").to_owned();
    let mut s = shared.lock().expect("state");
    let pairs = match s.orders.get_mut(&no) {
        Some(o) if o.transaction_id.is_some() => vec![
            ("result_code", "FAIL".into()),
            ("err_code", "ORDERPAID".into()),
            ("err_code_des", "订单已支付,不能发起关单".into()),
        ],
        Some(o) => {
            o.closed = true;
            vec![("result_code", "SUCCESS".into())]
        }
        None => vec![
            ("result_code", "FAIL".into()),
            ("err_code", "ORDERNOTEXIST".into()),
            ("err_code_des", "订单不存在".into()),
        ],
    };
    drop(s);
    answer(&shared, &req, pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn china_time_is_utc_plus_eight() {
        assert_eq!(china_time(1_788_412_540_000), "20260903131540");
        assert_eq!(china_time(0), "19700101080000");
        // A leap day, just before midnight in Beijing.
        assert_eq!(china_time(951_839_999_000), "20000229235959");
    }

    #[test]
    fn the_xml_reader_joins_split_cdata_and_unescapes_text() {
        let f = parse_xml("<xml><a><![CDATA[x]]]]><![CDATA[>y]]></a><b>1 &amp; 2</b><c></c></xml>")
            .expect("parses");
        assert_eq!(f["a"], "x]]>y");
        assert_eq!(f["b"], "1 & 2");
        assert_eq!(f["c"], "");
        assert!(parse_xml("<xml><a>1</a><a>2</a></xml>").is_err());
        assert!(parse_xml("<xml><a><b>1</b></a></xml>").is_err());
    }
}

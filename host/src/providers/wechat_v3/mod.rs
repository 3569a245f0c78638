//! WeChat Pay API v3: a JSON body signed by WeChat Pay with RSA, its payload encrypted
//! for the merchant with AES-256-GCM.
//!
//! The signature (`Wechatpay-Signature`, RSA-SHA256 PKCS#1 v1.5, base64) covers
//! `"{Wechatpay-Timestamp}\n{Wechatpay-Nonce}\n{body}\n"` over the body's raw bytes, so
//! nothing is parsed before it verifies. `Wechatpay-Serial` names the key: either a
//! WeChat Pay public key id (`PUB_KEY_ID_…`, the current scheme) or the serial of a
//! platform certificate (the older scheme). Both are accepted at once because WeChat
//! moves merchants from certificates to public keys with a period where either may sign.
//!
//! The timestamp window is checked against the time the notification was received
//! ([`Inbound::received_at`]), not the wall clock, so a stored notification replayed
//! later verifies exactly as it did on arrival. WeChat sends signature probes
//! (`WECHATPAY/SIGNTEST/…`) to check that merchants do verify; they are refused.
//!
//! Only then is the body parsed and `resource` decrypted with the APIv3 key. The
//! plaintext (the transaction) is what carries the order, amount, appid and mchid.

pub mod api;

use std::collections::BTreeMap;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use rsa::RsaPublicKey;
use serde_json::Value;
use sha2::Sha256;
use x509_cert::der::Encode;

use super::{
    pick_account, Answer, Inbound, Notice, NoticeKind, Payment, Provider, ProviderKind, Refund,
    RefundAmount, Rejection,
};
use crate::config::AccountConfig;

/// Largest allowed difference between `Wechatpay-Timestamp` and the time of receipt.
pub const MAX_CLOCK_SKEW_SECS: i64 = 5 * 60;

/// The prefix of WeChat Pay's signature-probe requests.
pub const SIGNATURE_PROBE_PREFIX: &str = "WECHATPAY/SIGNTEST/";

/// The signature scheme verified here (`Wechatpay-Signature-Type`, when sent).
pub const SIGNATURE_TYPE: &str = "WECHATPAY2-SHA256-RSA2048";

/// The only resource encryption WeChat Pay uses.
const ALGORITHM: &str = "AEAD_AES_256_GCM";

/// One configured v3 merchant account.
#[derive(Clone)]
pub struct Account {
    name: String,
    appid: String,
    mch_id: String,
    api_v3_key: [u8; 32],
    /// Verifying keys by `Wechatpay-Serial`: public key ids as given, certificate serials
    /// normalised with [`normalise_serial`].
    public_keys: BTreeMap<String, VerifyingKey<Sha256>>,
    cert_serials: BTreeMap<String, VerifyingKey<Sha256>>,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("name", &self.name)
            .field("appid", &self.appid)
            .field("mch_id", &self.mch_id)
            .field("public_keys", &self.public_keys.keys().collect::<Vec<_>>())
            .field(
                "cert_serials",
                &self.cert_serials.keys().collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Account {
    /// Reads the v3 keys of an `[[accounts]]` entry, loading every public key and
    /// platform certificate it names.
    pub fn from_config(a: &AccountConfig) -> Result<Account, String> {
        let key = super::required(&a.api_v3_key, "api_v3_key", true, ProviderKind::WechatV3)?;
        let mut account = Account::new(
            &a.name,
            &super::required(&a.appid, "appid", false, ProviderKind::WechatV3)?,
            &super::required(&a.mch_id, "mch_id", false, ProviderKind::WechatV3)?,
            &key,
        )?;
        for (id, path) in &a.public_keys {
            if id.is_empty() {
                return Err("`public_keys` has an empty key id".into());
            }
            let pem = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read public key {id} from {}: {e}", path.display()))?;
            let key = parse_public_key_pem(&pem)
                .map_err(|e| format!("cannot read public key {id} from {}: {e}", path.display()))?;
            account
                .public_keys
                .insert(id.clone(), VerifyingKey::new(key));
        }
        for path in &a.platform_certs {
            let certs = read_platform_certs(path)?;
            for (serial, key) in certs {
                account.cert_serials.insert(serial, VerifyingKey::new(key));
            }
        }
        if account.public_keys.is_empty() && account.cert_serials.is_empty() {
            return Err(
                "wechat-v3 needs `public_keys` (WeChat Pay public key ids → PEM files) or `platform_certs` (PEM files)"
                    .into(),
            );
        }
        Ok(account)
    }

    /// Builds an account without keys (tests, tools); add keys with [`Account::with_public_key`]
    /// and [`Account::with_platform_cert`].
    pub fn new(name: &str, appid: &str, mch_id: &str, api_v3_key: &str) -> Result<Account, String> {
        let api_v3_key: [u8; 32] = api_v3_key.as_bytes().try_into().map_err(|_| {
            format!(
                "`api_v3_key` must be 32 bytes (the APIv3 key set in the merchant platform), not {}",
                api_v3_key.len()
            )
        })?;
        Ok(Account {
            name: name.into(),
            appid: appid.into(),
            mch_id: mch_id.into(),
            api_v3_key,
            public_keys: BTreeMap::new(),
            cert_serials: BTreeMap::new(),
        })
    }

    /// Adds a WeChat Pay public key under its id (`PUB_KEY_ID_…`).
    pub fn with_public_key(mut self, id: &str, key: RsaPublicKey) -> Account {
        self.public_keys.insert(id.into(), VerifyingKey::new(key));
        self
    }

    /// Adds the key of a platform certificate (PEM); returns its serial as WeChat names it.
    pub fn with_platform_cert(mut self, pem: &str) -> Result<(Account, String), String> {
        let (serial, key) = parse_certificate_pem(pem)?;
        self.cert_serials
            .insert(normalise_serial(&serial), VerifyingKey::new(key));
        Ok((self, serial))
    }

    /// The key `Wechatpay-Serial` names, if this account has it.
    fn key_for(&self, serial: &str) -> Option<&VerifyingKey<Sha256>> {
        self.public_keys
            .get(serial)
            .or_else(|| self.cert_serials.get(&normalise_serial(serial)))
    }
}

/// Parses an RSA public key from PEM: `BEGIN PUBLIC KEY` (SubjectPublicKeyInfo, as WeChat
/// Pay's console gives it) or `BEGIN RSA PUBLIC KEY` (PKCS#1).
pub fn parse_public_key_pem(pem: &str) -> Result<RsaPublicKey, String> {
    let pem = pem.trim();
    if pem.contains("-----BEGIN RSA PUBLIC KEY-----") {
        RsaPublicKey::from_pkcs1_pem(pem).map_err(|e| format!("not a PKCS#1 RSA public key: {e}"))
    } else if pem.contains("-----BEGIN CERTIFICATE-----") {
        Err("this is a certificate; list it in `platform_certs` instead".into())
    } else {
        RsaPublicKey::from_public_key_pem(pem)
            .map_err(|e| format!("not a PEM RSA public key (-----BEGIN PUBLIC KEY-----): {e}"))
    }
}

/// Parses one PEM certificate: its serial number (upper-case hex, as WeChat writes it in
/// `Wechatpay-Serial`) and its RSA public key.
pub fn parse_certificate_pem(pem: &str) -> Result<(String, RsaPublicKey), String> {
    use x509_cert::der::DecodePem;
    let cert = x509_cert::Certificate::from_pem(pem.trim().as_bytes())
        .map_err(|e| format!("not a PEM X.509 certificate: {e}"))?;
    certificate_key(&cert)
}

fn certificate_key(cert: &x509_cert::Certificate) -> Result<(String, RsaPublicKey), String> {
    let tbs = &cert.tbs_certificate;
    let serial = serial_hex(tbs.serial_number.as_bytes());
    let spki = tbs
        .subject_public_key_info
        .to_der()
        .map_err(|e| format!("certificate {serial}: cannot encode its public key: {e}"))?;
    let key = RsaPublicKey::from_public_key_der(&spki)
        .map_err(|e| format!("certificate {serial}: not an RSA public key: {e}"))?;
    Ok((serial, key))
}

/// Reads every certificate in a PEM file: (normalised serial, key) pairs.
fn read_platform_certs(path: &Path) -> Result<Vec<(String, RsaPublicKey)>, String> {
    let text = std::fs::read(path)
        .map_err(|e| format!("cannot read platform certificate {}: {e}", path.display()))?;
    let bad = |e: String| format!("cannot read platform certificate {}: {e}", path.display());
    // `load_pem_chain` expects at least one certificate; say so plainly instead.
    if !text
        .windows(27)
        .any(|w| w == b"-----BEGIN CERTIFICATE-----")
    {
        return Err(bad("no -----BEGIN CERTIFICATE----- block".into()));
    }
    let certs = x509_cert::Certificate::load_pem_chain(&text).map_err(|e| bad(e.to_string()))?;
    certs
        .iter()
        .map(|c| {
            let (serial, key) = certificate_key(c).map_err(bad)?;
            Ok((normalise_serial(&serial), key))
        })
        .collect()
}

/// A certificate serial (DER integer content) as upper-case hex without leading zeros:
/// `Wechatpay-Serial` carries the serial as Java's `BigInteger.toString(16)` prints it.
pub fn serial_hex(bytes: &[u8]) -> String {
    normalise_serial(&hex::encode_upper(bytes))
}

/// Upper case, leading zeros dropped, so a serial written with or without its sign byte
/// (`00…`) or with a leading `0` nibble names the same certificate.
fn normalise_serial(s: &str) -> String {
    let upper = s.trim().to_ascii_uppercase();
    let trimmed = upper.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".into()
    } else {
        trimmed.into()
    }
}

/// The message WeChat Pay signs: `timestamp\nnonce\nbody\n`, body as raw bytes.
pub fn message(timestamp: &str, nonce: &str, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(timestamp.len() + nonce.len() + body.len() + 3);
    m.extend_from_slice(timestamp.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(nonce.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(body);
    m.push(b'\n');
    m
}

/// Decrypts an `AEAD_AES_256_GCM` resource: base64 ciphertext (with its 16-byte tag),
/// a 12-byte nonce and the associated data, under the 32-byte APIv3 key.
pub fn decrypt_resource(
    api_v3_key: &[u8; 32],
    nonce: &str,
    associated_data: &str,
    ciphertext_b64: &str,
) -> Result<Vec<u8>, Rejection> {
    let bad = |m: &str| Rejection::Malformed(format!("resource: {m}"));
    if nonce.len() != 12 {
        return Err(bad(&format!("nonce must be 12 bytes, got {}", nonce.len())));
    }
    let ciphertext = base64::engine::general_purpose::STANDARD
        .decode(ciphertext_b64)
        .map_err(|e| bad(&format!("ciphertext is not base64: {e}")))?;
    if ciphertext.len() < 16 {
        return Err(bad("ciphertext is shorter than its tag"));
    }
    let cipher = Aes256Gcm::new(api_v3_key.into());
    cipher
        .decrypt(
            Nonce::from_slice(nonce.as_bytes()),
            Payload {
                msg: &ciphertext,
                aad: associated_data.as_bytes(),
            },
        )
        .map_err(|_| {
            Rejection::BadSignature(
                "resource does not decrypt (wrong api_v3_key, or the ciphertext, nonce or associated_data was altered)"
                    .into(),
            )
        })
}

/// Flattens a JSON object into `a.b.c` → text: strings as they are, numbers and booleans
/// as JSON prints them, arrays as compact JSON, null as an empty string.
pub fn flatten(value: &Value, prefix: &str, out: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(v, &key, out);
            }
        }
        Value::String(s) => {
            out.insert(prefix.to_owned(), s.clone());
        }
        Value::Null => {
            out.insert(prefix.to_owned(), String::new());
        }
        other => {
            out.insert(prefix.to_owned(), other.to_string());
        }
    }
}

/// [`flatten`], refusing two values that end up under one name: `{"a.b":1,"a":{"b":2}}`
/// would otherwise hand the handler one of them while the host read the other.
pub fn flatten_unique(
    value: &Value,
    prefix: &str,
    out: &mut BTreeMap<String, String>,
) -> Result<(), Rejection> {
    if let Value::Object(map) = value {
        for (k, v) in map {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            flatten_unique(v, &key, out)?;
        }
        return Ok(());
    }
    let mut leaf = BTreeMap::new();
    flatten(value, prefix, &mut leaf);
    for (k, v) in leaf {
        if out.contains_key(&k) {
            return Err(Rejection::Malformed(format!(
                "two fields are both named `{k}` once nested names are joined with `.`"
            )));
        }
        out.insert(k, v);
    }
    Ok(())
}

/// Parses JSON, refusing an object that names a key twice. serde_json keeps the last of
/// two equal keys where other readers keep the first, so such a body could be read as
/// two different notifications: the host's, and that of whoever re-reads the stored body.
pub fn parse_json_unique(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde::de::DeserializeSeed::deserialize(UniqueKeys, &mut de)?;
    de.end()?;
    serde_json::from_slice(bytes)
}

/// Walks JSON, failing on the first object with a repeated key.
struct UniqueKeys;

impl<'de> serde::de::DeserializeSeed<'de> for UniqueKeys {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for UniqueKeys {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(UniqueKeys)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            map.next_value_seed(UniqueKeys)?;
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!(
                    "key `{key}` appears twice in one object"
                )));
            }
        }
        Ok(())
    }
}

/// RFC 3339 (`2018-06-08T10:34:56+08:00`) → unix ms.
fn parse_rfc3339(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// What a decrypted refund resource (`REFUND.*` events) reports: `REFUND.SUCCESS` with
/// `refund_status` `SUCCESS` is a refund; `REFUND.ABNORMAL` / `REFUND.CLOSED` are
/// recorded and change nothing.
fn refund_kind(event_type: &str, refund: &Value) -> Result<NoticeKind, Rejection> {
    let status = required_text(refund, "refund_status")?;
    if !REFUND_STATES.contains(&status) {
        return Err(Rejection::Unsupported(format!(
            "refund_status `{status}` is none of {}",
            REFUND_STATES.join(", ")
        )));
    }
    let out_refund_no = required_text(refund, "out_refund_no")?.to_owned();
    let amount = fen(refund, "refund")?;
    let total = fen(refund, "total")?;
    if event_type != "REFUND.SUCCESS" || status != "SUCCESS" {
        return Ok(NoticeKind::NotPaid {
            state: format!("{event_type} {status}"),
        });
    }
    if amount == 0 {
        return Err(Rejection::Malformed("amount.refund is 0".into()));
    }
    Ok(NoticeKind::Refunded(Refund {
        out_refund_no,
        refund_id: str_field(refund, "refund_id").unwrap_or("").to_owned(),
        transaction_id: required_text(refund, "transaction_id")?.to_owned(),
        amount: RefundAmount::This(amount),
        total_fee: Some(total),
        refunded_at: str_field(refund, "success_time").and_then(parse_rfc3339),
    }))
}

/// The `trade_state`s WeChat Pay documents for a transaction.
const TRADE_STATES: [&str; 7] = [
    "SUCCESS",
    "REFUND",
    "NOTPAY",
    "CLOSED",
    "REVOKED",
    "USERPAYING",
    "PAYERROR",
];

/// The `refund_status`es WeChat Pay documents for a refund notification.
const REFUND_STATES: [&str; 4] = ["SUCCESS", "CLOSED", "ABNORMAL", "PROCESSING"];

/// A non-empty string field that must be there; the reason says what is wrong with it.
fn required_text<'a>(v: &'a Value, key: &str) -> Result<&'a str, Rejection> {
    match v.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        None | Some(Value::Null) => Err(Rejection::Malformed(format!("no {key}"))),
        Some(Value::String(_)) => Err(Rejection::Malformed(format!("{key} is empty"))),
        Some(other) => Err(Rejection::Malformed(format!(
            "{key} is {other}, not a string"
        ))),
    }
}

/// `amount.<key>`: a non-negative whole number of fen that must be there.
fn fen(v: &Value, key: &str) -> Result<i64, Rejection> {
    v.get("amount")
        .and_then(|a| a.get(key))
        .and_then(Value::as_i64)
        .filter(|n| *n >= 0)
        .ok_or_else(|| Rejection::Malformed(format!("amount.{key} is not an amount in fen")))
}

/// The WeChat Pay v3 provider.
pub struct WechatV3 {
    accounts: Vec<Account>,
}

impl WechatV3 {
    /// A provider over these accounts.
    pub fn new(accounts: Vec<Account>) -> WechatV3 {
        WechatV3 { accounts }
    }
}

fn required_header<'a>(inbound: &'a Inbound<'_>, name: &str) -> Result<&'a str, Rejection> {
    inbound
        .header(name)
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Rejection::BadSignature(format!("no `{name}` header")))
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// Checks a message signed by WeChat Pay (a notification, or an API answer): the
/// `Wechatpay-*` headers, the timestamp window against [`Inbound::received_at`], and the
/// RSA signature over `timestamp\nnonce\nbody\n` with the key `Wechatpay-Serial` names.
/// Returns the account whose key verified it; nothing in the body is trusted before.
pub(crate) fn verify_signed<'a>(
    accounts: &'a [Account],
    inbound: &Inbound<'_>,
) -> Result<&'a Account, Rejection> {
    let signature = required_header(inbound, "wechatpay-signature")?;
    if signature.starts_with(SIGNATURE_PROBE_PREFIX) {
        return Err(Rejection::BadSignature(
            "WeChat Pay signature probe (WECHATPAY/SIGNTEST/…): refused, as WeChat expects".into(),
        ));
    }
    if let Some(kind) = inbound.header("wechatpay-signature-type") {
        // Absent on older notifications; SM2 (国密) merchants get another scheme.
        if kind.trim() != SIGNATURE_TYPE {
            return Err(Rejection::Unsupported(format!(
                "Wechatpay-Signature-Type `{kind}` (only {SIGNATURE_TYPE})"
            )));
        }
    }
    let serial = required_header(inbound, "wechatpay-serial")?;
    let timestamp = required_header(inbound, "wechatpay-timestamp")?;
    let nonce = required_header(inbound, "wechatpay-nonce")?;

    let ts_secs: i64 = if !timestamp.is_empty()
        && timestamp.len() <= 12
        && timestamp.bytes().all(|b| b.is_ascii_digit())
    {
        timestamp.parse().unwrap_or(i64::MAX)
    } else {
        return Err(Rejection::Malformed(format!(
            "Wechatpay-Timestamp `{timestamp}` is not unix seconds"
        )));
    };
    let received_secs = inbound.received_at.div_euclid(1000);
    let skew = ts_secs.saturating_sub(received_secs);
    if skew.saturating_abs() > MAX_CLOCK_SKEW_SECS {
        return Err(Rejection::Stale(format!(
            "Wechatpay-Timestamp {ts_secs} is {skew} s from the time of receipt {received_secs} (allowed ±{MAX_CLOCK_SKEW_SECS} s)"
        )));
    }

    if inbound.account.is_none() && !accounts.iter().any(|a| a.key_for(serial).is_some()) {
        return Err(Rejection::BadSignature(format!(
            "unknown Wechatpay-Serial `{serial}`: no configured public key id or platform certificate has it"
        )));
    }
    let account = pick_account(
        accounts,
        |a| &a.name,
        inbound.account,
        |a| a.key_for(serial).is_some(),
    )?;
    let key = account.key_for(serial).ok_or_else(|| {
        Rejection::BadSignature(format!(
            "unknown Wechatpay-Serial `{serial}` for account `{}`",
            account.name
        ))
    })?;
    let sig_bytes = base64::engine::general_purpose::STANDARD
        .decode(signature)
        .map_err(|_| Rejection::BadSignature("Wechatpay-Signature is not base64".into()))?;
    let sig = Signature::try_from(sig_bytes.as_slice()).map_err(|_| {
        Rejection::BadSignature("Wechatpay-Signature is not an RSA signature".into())
    })?;
    key.verify(&message(timestamp, nonce, inbound.body), &sig)
        .map_err(|_| Rejection::BadSignature("signature does not match".into()))?;
    Ok(account)
}

impl Provider for WechatV3 {
    fn kind(&self) -> ProviderKind {
        ProviderKind::WechatV3
    }

    fn accounts(&self) -> Vec<&str> {
        self.accounts.iter().map(|a| a.name.as_str()).collect()
    }

    fn verify(&self, inbound: &Inbound<'_>) -> Result<Notice, Rejection> {
        let account = verify_signed(&self.accounts, inbound)?;

        // Verified: now the body means something.
        let envelope: Value = parse_json_unique(inbound.body)
            .map_err(|e| Rejection::Malformed(format!("body is not JSON: {e}")))?;
        if !envelope.is_object() {
            return Err(Rejection::Malformed("body is not a JSON object".into()));
        }
        let event_type = str_field(&envelope, "event_type")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Rejection::Malformed("no `event_type`".into()))?
            .to_owned();
        let resource = envelope
            .get("resource")
            .filter(|r| r.is_object())
            .ok_or_else(|| Rejection::Malformed("no `resource` object".into()))?;
        let algorithm = str_field(resource, "algorithm").unwrap_or("");
        if algorithm != ALGORITHM {
            return Err(Rejection::Unsupported(format!(
                "resource algorithm `{algorithm}`"
            )));
        }
        let ciphertext = str_field(resource, "ciphertext")
            .ok_or_else(|| Rejection::Malformed("resource has no `ciphertext`".into()))?;
        let resource_nonce = str_field(resource, "nonce")
            .ok_or_else(|| Rejection::Malformed("resource has no `nonce`".into()))?;
        let associated_data = match resource.get("associated_data") {
            None | Some(Value::Null) => "",
            Some(Value::String(s)) => s.as_str(),
            Some(_) => {
                return Err(Rejection::Malformed(
                    "resource `associated_data` is not a string".into(),
                ))
            }
        };
        let plaintext = decrypt_resource(
            &account.api_v3_key,
            resource_nonce,
            associated_data,
            ciphertext,
        )?;
        let transaction: Value = parse_json_unique(&plaintext)
            .map_err(|e| Rejection::Malformed(format!("decrypted resource is not JSON: {e}")))?;
        if !transaction.is_object() {
            return Err(Rejection::Malformed(
                "decrypted resource is not a JSON object".into(),
            ));
        }

        let mchid = str_field(&transaction, "mchid").unwrap_or("");
        if mchid != account.mch_id {
            return Err(Rejection::AccountMismatch(format!(
                "mchid `{mchid}` does not belong to account `{}`",
                account.name
            )));
        }
        // Refund and other non-transaction resources carry no appid; a transaction must.
        let appid = str_field(&transaction, "appid");
        if event_type.starts_with("TRANSACTION.") || appid.is_some() {
            let appid = appid.unwrap_or("");
            if appid != account.appid {
                return Err(Rejection::AccountMismatch(format!(
                    "appid `{appid}` does not belong to account `{}`",
                    account.name
                )));
            }
        }

        let mut fields = BTreeMap::new();
        flatten_unique(&transaction, "", &mut fields)?;
        fields.insert("event_type".into(), event_type.clone());
        for k in ["id", "create_time"] {
            if let Some(v) = str_field(&envelope, k) {
                fields.insert(k.into(), v.to_owned());
            }
        }

        // Only a well-formed resource may be acknowledged as a non-payment: one the host
        // cannot read is refused, so WeChat retries it and someone sees the reason.
        let out_trade_no = required_text(&transaction, "out_trade_no")?.to_owned();
        let kind = if event_type.starts_with("REFUND.") {
            refund_kind(&event_type, &transaction)?
        } else if event_type.starts_with("TRANSACTION.") {
            let trade_state = required_text(&transaction, "trade_state")?;
            if !TRADE_STATES.contains(&trade_state) {
                return Err(Rejection::Unsupported(format!(
                    "trade_state `{trade_state}` is none of {}",
                    TRADE_STATES.join(", ")
                )));
            }
            let amount = fen(&transaction, "total")?;
            if event_type == "TRANSACTION.SUCCESS" && trade_state == "SUCCESS" {
                NoticeKind::Paid(Payment {
                    transaction_id: required_text(&transaction, "transaction_id")?.to_owned(),
                    amount,
                    paid_at: str_field(&transaction, "success_time").and_then(parse_rfc3339),
                })
            } else {
                NoticeKind::NotPaid {
                    state: format!("{event_type} {trade_state}"),
                }
            }
        } else {
            // Not a payment or a refund this host can read: refused rather than taken for
            // nothing, in case it is one.
            return Err(Rejection::Unsupported(format!("event_type `{event_type}`")));
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
            status: 204,
            content_type: None,
            body: Vec::new(),
        }
    }

    fn failure(&self, reason: &str) -> Answer {
        Answer {
            status: 400,
            content_type: Some("application/json"),
            body: serde_json::json!({ "code": "FAIL", "message": reason })
                .to_string()
                .into_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use aes_gcm::AeadCore;
    use rsa::pkcs1v15::SigningKey;
    use rsa::signature::{SignatureEncoding, Signer};
    use rsa::RsaPrivateKey;

    use super::*;

    const APPID: &str = "wxd678efh567hg6787";
    const MCHID: &str = "1230000109";
    const KEY: &str = "a7cde1ZJB1kG2e7VfTs3jQzaWizur8Gb";
    const PUB_ID: &str = "PUB_KEY_ID_0112345678202401010000000000";
    const NOW_MS: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

    /// Known answer from WeChat Pay's official Java SDK (wechatpay-apiv3/wechatpay-java,
    /// `AeadAesCipherTest` with `TestConfig.API_V3_KEY`): "message" encrypted with
    /// associated data "associatedData" and nonce "uluk4a9R25RW".
    #[test]
    fn known_answer_aead_decrypt_from_wechatpay_sdk() {
        let key: [u8; 32] = *b"a7cde1ZJB1kG2e7VfTs3jQzaWizur8Gb";
        let plain = decrypt_resource(
            &key,
            "uluk4a9R25RW",
            "associatedData",
            "ulwSiIajGClcvcOYvOQ7+l+0PAbzzwI=",
        )
        .expect("decrypts");
        assert_eq!(plain, b"message");
        // One altered byte of associated data fails the tag.
        assert!(matches!(
            decrypt_resource(
                &key,
                "uluk4a9R25RW",
                "associatedDatA",
                "ulwSiIajGClcvcOYvOQ7+l+0PAbzzwI="
            ),
            Err(Rejection::BadSignature(_))
        ));
    }

    /// The test merchant certificate of WeChat Pay's official Java SDK
    /// (wechatpay-java `core/src/test/resources/merchant_certificate.pem`), whose serial the
    /// SDK's `TestConfig` gives as 5F1C72E2A8931B72A2E13AF8DEE92471EB397115, and the SDK's
    /// `RSAVerifierTest` signature of "message" made with its private key.
    const SDK_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIDrTCCApWgAwIBAgIUXxxy4qiTG3Ki4Tr43ukkces5cRUwDQYJKoZIhvcNAQEL
BQAwZjELMAkGA1UEBhMCQ04xEjAQBgNVBAgMCUd1YW5nZG9uZzERMA8GA1UEBwwI
c2hlbnpoZW4xITAfBgNVBAoMGEludGVybmV0IFdpZGdpdHMgUHR5IEx0ZDENMAsG
A1UEAwwEdGVzdDAeFw0yMjA1MTAwMTU3MTBaFw0yNTA1MDkwMTU3MTBaMGYxCzAJ
BgNVBAYTAkNOMRIwEAYDVQQIDAlHdWFuZ2RvbmcxETAPBgNVBAcMCHNoZW56aGVu
MSEwHwYDVQQKDBhJbnRlcm5ldCBXaWRnaXRzIFB0eSBMdGQxDTALBgNVBAMMBHRl
c3QwggEiMA0GCSqGSIb3DQEBAQUAA4IBDwAwggEKAoIBAQCaZzehUwzcxdLgGn/U
NryHLdX0yBvCqD0p92/BdlCIBi0dmzZzrfc+FF0xK70AP9b2+Ry5q+zXUU+dPucJ
mgwABiZ+Lte+4euMxqPCEkdEu9lyiphalpoaOVPbmDNatzq9k5a/P454QRWMdkLU
JZCeoL9bF2Gn/2+wWEw3sL8zFFcOM8Jr1PdOLmAx+h7pf/87jcmXXCm+SZqw5MtI
LKQi9zHWujYdMA0IcYNeQaNl1h/NUnungdIHKaaU+17wCXqTcZsipAGoqfqrHx/s
r30ZszOdHYOvFNiB+rhEldBGSLWwSYE6LFkbP9GdQWKIQCip3E5dLj5ZFkDeOv4H
ekf9AgMBAAGjUzBRMB0GA1UdDgQWBBQQicr3Vq+2NG2ykH0nxQxsct1RtTAfBgNV
HSMEGDAWgBQQicr3Vq+2NG2ykH0nxQxsct1RtTAPBgNVHRMBAf8EBTADAQH/MA0G
CSqGSIb3DQEBCwUAA4IBAQCH//ZlSAbc6xRlwKwwfbHMsVpAfo/p+Y3397Gi4sR8
RbsW6a3ezXhbiSGiJxDnerx9Cmp4K6U+D3Fl0N9K6CDWfwpGNiZvjmCxtM/wb7dM
u+4U0MXJGBcaePj4mtV/+qPxSWDCQ+PR5OcYRQnac9LfrffTuejQx5aw9FcD7egI
SYfgkZ/wgHyQcZyhh8s6DuigpEaVGMLLoWDZGJ3D+rt4kXk9y5+03KBB2vobyl6P
+PDgaYrlNR/UQMnKMdkgWp7bebmrcXte32/6FAwK3SuHZOSkteDtRCYhYfG5SGSr
go1ujfIK1zIFyPkKKnsgTUPJXwdC7LI+ZqJuWTyVTNj6
-----END CERTIFICATE-----
";
    const SDK_SIGNATURE_OF_MESSAGE: &str = "Rq+5ZpWV6IHTWE1+9gCrYJKguNgbItpMdlIA+PVCPCdUAKNlohZz7CL7Y8xWDIFJjdGnErMj6Z+Q/h9CF5MV+nAVkqDmBR0uP5ppsUEzco4ijvKHsvI2ro4boSW6vSfQs3W8I4QSI9a0/NFIgvj83Fv27LIYZf7deaFWmEwd1fpAeJRCyoKyBeJPdsjVx0//Lqe6Wze2zVdliLcBvaHCfpd8+rAVGS+FQDeWgHqJ7n/Zy09LmV1/ghs7pO1mdjdD16SHKlysAD3K5hNGUJX/SHrEXEcu1yO1AOb/YvOVkjNh8243rcfXNE5L4ph2XS11vS+2aToKYSOcKUagf0LLaw==";

    #[test]
    fn known_answer_certificate_serial_and_signature_from_wechatpay_sdk() {
        let (serial, key) = parse_certificate_pem(SDK_CERT).expect("certificate parses");
        assert_eq!(serial, "5F1C72E2A8931B72A2E13AF8DEE92471EB397115");
        let sig = base64::engine::general_purpose::STANDARD
            .decode(SDK_SIGNATURE_OF_MESSAGE)
            .expect("base64");
        let sig = Signature::try_from(sig.as_slice()).expect("signature");
        let vk = VerifyingKey::<Sha256>::new(key);
        assert!(vk.verify(b"message", &sig).is_ok());
        assert!(vk.verify(b"messagE", &sig).is_err());
    }

    #[test]
    fn serials_match_with_or_without_leading_zeros() {
        assert_eq!(serial_hex(&[0x00, 0x8f, 0x01]), "8F01");
        assert_eq!(serial_hex(&[0x0a, 0xbc]), "ABC");
        assert_eq!(normalise_serial("0abc"), "ABC");
        assert_eq!(normalise_serial("000"), "0");
    }

    /// Test keys: generating RSA-2048 keys is slow, so each test binary makes three once.
    fn keys() -> &'static [RsaPrivateKey; 3] {
        static KEYS: OnceLock<[RsaPrivateKey; 3]> = OnceLock::new();
        KEYS.get_or_init(|| {
            let mut rng = rand::thread_rng();
            [(); 3].map(|_| RsaPrivateKey::new(&mut rng, 2048).expect("RSA key"))
        })
    }

    fn self_signed_cert(key: &RsaPrivateKey, serial: &[u8]) -> String {
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

    struct Fixture {
        provider: WechatV3,
        cert_serial: String,
    }

    fn fixture() -> Fixture {
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

    fn transaction(out_trade_no: &str, total: i64, trade_state: &str) -> Value {
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

    fn encrypt(key: &str, plaintext: &[u8], associated_data: &str) -> (String, String) {
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

    fn envelope(event_type: &str, tx: &Value, key: &str) -> String {
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

    fn headers(signer: &RsaPrivateKey, serial: &str, ts: i64, body: &str) -> Vec<(String, String)> {
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

    fn verify_with(
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

    const NOW_S: i64 = NOW_MS / 1000;

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
        let amount = serde_json::json!({ "total": 100, "refund": 40, "payer_total": 100, "payer_refund": 40 });
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
    fn accepts_a_payment_signed_with_the_platform_certificate() {
        let f = fixture();
        let body = envelope("TRANSACTION.SUCCESS", &transaction("T1", 1, "SUCCESS"), KEY);
        for serial in [
            f.cert_serial.clone(),
            f.cert_serial.to_lowercase(),
            format!("00{}", f.cert_serial),
        ] {
            let n = verify_with(
                &f.provider,
                &headers(&keys()[1], &serial, NOW_S, &body),
                &body,
            )
            .expect("verifies");
            assert!(matches!(
                n.kind,
                NoticeKind::Paid(Payment { amount: 1, .. })
            ));
        }
        // The certificate's serial with the public key's signature: wrong key.
        let h = headers(&keys()[0], &f.cert_serial, NOW_S, &body);
        assert!(matches!(
            verify_with(&f.provider, &h, &body),
            Err(Rejection::BadSignature(_))
        ));
    }

    #[test]
    fn rejects_tampering_wrong_keys_and_unknown_serials() {
        let f = fixture();
        let body = envelope(
            "TRANSACTION.SUCCESS",
            &transaction("T2", 100, "SUCCESS"),
            KEY,
        );
        let h = headers(&keys()[0], PUB_ID, NOW_S, &body);
        let tampered = body.replacen("TRANSACTION.SUCCESS", "TRANSACTION.SUCCESS ", 1);
        assert!(matches!(
            verify_with(&f.provider, &h, &tampered),
            Err(Rejection::BadSignature(_))
        ));
        let wrong_key = headers(&keys()[2], PUB_ID, NOW_S, &body);
        assert!(matches!(
            verify_with(&f.provider, &wrong_key, &body),
            Err(Rejection::BadSignature(_))
        ));
        let unknown = headers(&keys()[0], "PUB_KEY_ID_0000", NOW_S, &body);
        let e = verify_with(&f.provider, &unknown, &body).unwrap_err();
        assert!(
            matches!(&e, Rejection::BadSignature(m) if m.contains("unknown Wechatpay-Serial")),
            "{e}"
        );
        // A changed timestamp or nonce header breaks the signature too.
        let mut h2 = h.clone();
        h2[2].1 = (NOW_S + 1).to_string();
        assert!(matches!(
            verify_with(&f.provider, &h2, &body),
            Err(Rejection::BadSignature(_))
        ));
        let mut h3 = h.clone();
        h3[3].1 = "other-nonce".into();
        assert!(matches!(
            verify_with(&f.provider, &h3, &body),
            Err(Rejection::BadSignature(_))
        ));
        let mut typed = h.clone();
        typed.push(("wechatpay-signature-type".into(), SIGNATURE_TYPE.into()));
        assert!(verify_with(&f.provider, &typed, &body).is_ok());
        typed.last_mut().expect("header").1 = "WECHATPAY2-SM2-WITH-SM3".into();
        assert!(matches!(
            verify_with(&f.provider, &typed, &body),
            Err(Rejection::Unsupported(_))
        ));
        for missing in 0..4 {
            let mut h4 = h.clone();
            h4.remove(missing);
            assert!(verify_with(&f.provider, &h4, &body).is_err());
        }
    }

    #[test]
    fn rejects_stale_timestamps_against_the_time_of_receipt() {
        let f = fixture();
        let body = envelope(
            "TRANSACTION.SUCCESS",
            &transaction("T3", 100, "SUCCESS"),
            KEY,
        );
        for ts in [NOW_S - 301, NOW_S + 301, 0] {
            let h = headers(&keys()[0], PUB_ID, ts, &body);
            assert!(
                matches!(
                    verify_with(&f.provider, &h, &body),
                    Err(Rejection::Stale(_))
                ),
                "{ts}"
            );
        }
        for ts in [NOW_S - 300, NOW_S + 300] {
            let h = headers(&keys()[0], PUB_ID, ts, &body);
            assert!(verify_with(&f.provider, &h, &body).is_ok(), "{ts}");
        }
        let mut h = headers(&keys()[0], PUB_ID, NOW_S, &body);
        h[2].1 = "-5".into();
        assert!(matches!(
            verify_with(&f.provider, &h, &body),
            Err(Rejection::Malformed(_))
        ));
        h[2].1 = "99999999999999999999".into();
        assert!(verify_with(&f.provider, &h, &body).is_err());
    }

    #[test]
    fn refuses_signature_probes() {
        let f = fixture();
        let body = envelope(
            "TRANSACTION.SUCCESS",
            &transaction("T4", 100, "SUCCESS"),
            KEY,
        );
        let mut h = headers(&keys()[0], PUB_ID, NOW_S, &body);
        h[1].1 = "WECHATPAY/SIGNTEST/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into();
        let e = verify_with(&f.provider, &h, &body).unwrap_err();
        assert!(
            matches!(&e, Rejection::BadSignature(m) if m.contains("probe")),
            "{e}"
        );
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
    fn several_accounts_are_told_apart_by_serial_and_url() {
        let [k0, k1, _] = keys();
        let a = Account::new("a", APPID, MCHID, KEY)
            .expect("a")
            .with_public_key("PUB_KEY_ID_A", k0.to_public_key());
        let b = Account::new("b", "wxbbbbbbbbbbbbbbbb", "1900000002", KEY)
            .expect("b")
            .with_public_key("PUB_KEY_ID_B", k1.to_public_key());
        let p = WechatV3::new(vec![a, b]);
        let mut tx = transaction("TB", 100, "SUCCESS");
        tx["appid"] = "wxbbbbbbbbbbbbbbbb".into();
        tx["mchid"] = "1900000002".into();
        let body = envelope("TRANSACTION.SUCCESS", &tx, KEY);
        let h = headers(k1, "PUB_KEY_ID_B", NOW_S, &body);
        assert_eq!(verify_with(&p, &h, &body).expect("b verifies").account, "b");
        // Account b's notification sent to account a's URL: a has no such serial.
        let via_a = p.verify(&Inbound {
            account: Some("a"),
            headers: &h,
            body: body.as_bytes(),
            received_at: NOW_MS,
        });
        assert!(matches!(via_a, Err(Rejection::BadSignature(_))));
        // Account a's key signing b's merchant ids: verified for a, then refused.
        let h = headers(k0, "PUB_KEY_ID_A", NOW_S, &body);
        assert!(matches!(
            verify_with(&p, &h, &body),
            Err(Rejection::AccountMismatch(_))
        ));
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

    #[test]
    fn config_errors_name_the_key() {
        assert!(Account::new("x", APPID, MCHID, "short")
            .unwrap_err()
            .contains("`api_v3_key` must be 32 bytes"));
        assert!(parse_public_key_pem("garbage").is_err());
        assert!(parse_certificate_pem("garbage").is_err());
        let dir = std::env::temp_dir().join(format!("paynotify-v3-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("dir");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        let cfg: AccountConfig = toml::from_str(&format!(
            "provider = \"wechat-v3\"\nappid = \"{APPID}\"\nmch_id = \"{MCHID}\"\napi_v3_key = \"{KEY}\"\n\
             public_keys = {{ PUB_KEY_ID_x = \"{}\" }}\n",
            dir.join("missing.pem").display()
        ))
        .expect("config");
        let e = Account::from_config(&cfg).unwrap_err();
        assert!(
            e.starts_with("cannot read public key PUB_KEY_ID_x from"),
            "{e}"
        );
        let cfg: AccountConfig = toml::from_str(&format!(
            "provider = \"wechat-v3\"\nappid = \"{APPID}\"\nmch_id = \"{MCHID}\"\napi_v3_key = \"{KEY}\"\nplatform_certs = [\"{}\"]\n",
            empty.display()
        ))
        .expect("config");
        let e = Account::from_config(&cfg).unwrap_err();
        assert!(e.contains("cannot read platform certificate"), "{e}");
        let cfg: AccountConfig = toml::from_str(&format!(
            "provider = \"wechat-v3\"\nappid = \"{APPID}\"\nmch_id = \"{MCHID}\"\napi_v3_key = \"{KEY}\"\n"
        ))
        .expect("config");
        assert!(Account::from_config(&cfg)
            .unwrap_err()
            .contains("public_keys"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

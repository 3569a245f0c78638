//! Reading WeChat Pay platform certificates (X.509, PEM): serial as `Wechatpay-Serial`
//! writes it, RSA key and validity, from one PEM text or every certificate in a file.

use std::path::Path;

use rsa::pkcs1v15::VerifyingKey;
use rsa::pkcs8::DecodePublicKey;
use rsa::RsaPublicKey;
use sha2::Sha256;
use x509_cert::der::Encode;

/// A platform certificate's key and when it expires.
#[derive(Clone)]
pub(super) struct Held {
    /// Its RSA key.
    pub(super) key: VerifyingKey<Sha256>,
    /// Unix ms after which it is never used.
    pub(super) expire_ms: i64,
}

/// Parses one PEM certificate: its serial number (upper-case hex, as WeChat writes it in
/// `Wechatpay-Serial`) and its RSA public key.
pub fn parse_certificate_pem(pem: &str) -> Result<(String, RsaPublicKey), String> {
    use x509_cert::der::DecodePem;
    let cert = x509_cert::Certificate::from_pem(pem.trim().as_bytes())
        .map_err(|e| format!("not a PEM X.509 certificate: {e}"))?;
    certificate_key(&cert)
}

/// A certificate's validity, `notBefore` and `notAfter` in unix ms.
pub(super) fn certificate_validity(cert: &x509_cert::Certificate) -> (i64, i64) {
    let ms = |t: x509_cert::time::Time| {
        i64::try_from(t.to_unix_duration().as_millis()).unwrap_or(i64::MAX)
    };
    let v = &cert.tbs_certificate.validity;
    (ms(v.not_before), ms(v.not_after))
}

pub(super) fn certificate_key(
    cert: &x509_cert::Certificate,
) -> Result<(String, RsaPublicKey), String> {
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
pub(super) fn read_platform_certs(path: &Path) -> Result<Vec<(String, Held)>, String> {
    Ok(read_certificates(path)?
        .into_iter()
        .map(|(serial, key, _, expire_ms)| {
            let key = VerifyingKey::new(key);
            (serial, Held { key, expire_ms })
        })
        .collect())
}

/// Every certificate in a PEM file: normalised serial, key, `notBefore` and `notAfter`.
pub(super) fn read_certificates(
    path: &Path,
) -> Result<Vec<(String, RsaPublicKey, i64, i64)>, String> {
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
            let (effective_ms, expire_ms) = certificate_validity(c);
            Ok((normalise_serial(&serial), key, effective_ms, expire_ms))
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
pub(super) fn normalise_serial(s: &str) -> String {
    let upper = s.trim().to_ascii_uppercase();
    let trimmed = upper.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".into()
    } else {
        trimmed.into()
    }
}

/// A PEM certificate: normalised serial, key, `notBefore`, `notAfter` (unix ms).
pub(super) fn parse_pem(pem: &str) -> Result<(String, VerifyingKey<Sha256>, i64, i64), String> {
    use x509_cert::der::DecodePem;
    let cert = x509_cert::Certificate::from_pem(pem.trim().as_bytes())
        .map_err(|e| format!("not a PEM X.509 certificate: {e}"))?;
    let (serial, key) = certificate_key(&cert)?;
    let (effective, expire) = certificate_validity(&cert);
    Ok((
        normalise_serial(&serial),
        VerifyingKey::new(key),
        effective,
        expire,
    ))
}

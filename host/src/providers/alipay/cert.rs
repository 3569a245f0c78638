//! Alipay public-key certificate mode (公钥证书模式): the account holds three certificates
//! instead of a bare Alipay public key.
//!
//! - the app's certificate (`appCertPublicKey_{app_id}.crt`): only its SN is used, sent as
//!   `app_cert_sn` with every request;
//! - Alipay's certificate (`alipayCertPublicKey_RSA2.crt`): its key verifies notifications and
//!   answers, and its SN is what Alipay names in `alipay_cert_sn`;
//! - Alipay's root bundle (`alipayRootCert.crt`): only its SN is used, sent as
//!   `alipay_root_cert_sn`.
//!
//! A certificate's SN is defined by Alipay's SDKs (`AntCertificationUtil.getCertSN` in
//! alipay-sdk-java): the lower-case hex MD5, padded to 32 digits, of the issuer's
//! distinguished name as Java's `X500Principal.getName()` prints it (RFC 2253: last RDN
//! first, `CN=…,OU=…,O=…,C=…`) followed by the serial number in decimal. The root's SN
//! (`getRootCertSN`) joins with `_` the SNs of the bundle's certificates signed with RSA
//! (signature algorithm under `1.2.840.113549.1.1`, as the SDK tests); the bundle's SM2 and
//! other non-RSA certificates take no part. Alipay compares these strings byte for byte, so
//! every detail of the DN format matters.

use base64::Engine as _;
use md5::{Digest, Md5};
use rsa::pkcs1v15::VerifyingKey;
use rsa::pkcs8::DecodePublicKey;
use rsa::{BigUint, RsaPublicKey};
use sha2::Sha256;
use x509_cert::der::{Decode, Encode, Tag, Tagged};
use x509_cert::name::Name;
use x509_cert::Certificate;

/// Why a certificate of a certificate-mode account cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// The text holds no PEM certificate, or one that does not parse.
    #[error("not a PEM X.509 certificate: {0}")]
    NotACertificate(String),
    /// The certificate's key is not an RSA key (Alipay's RSA2 needs one).
    #[error("certificate {sn}: its key is not an RSA public key: {why}")]
    NotRsa {
        /// The certificate's SN.
        sn: String,
        /// What the key parser said.
        why: String,
    },
    /// A root bundle without any RSA-signed certificate has no SN Alipay accepts.
    #[error("no RSA-signed certificate in the root bundle")]
    NoRsaRoot,
    /// A certificate could not be re-encoded (cannot happen for one that parsed).
    #[error("cannot encode the certificate: {0}")]
    Encode(String),
}

/// The certificates of a certificate-mode account, read once at start.
#[derive(Clone)]
pub struct CertMode {
    app_cert_sn: String,
    app_key: Option<RsaPublicKey>,
    root_cert_sn: String,
    alipay_cert_sn: String,
    alipay_key: VerifyingKey<Sha256>,
}

impl std::fmt::Debug for CertMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertMode")
            .field("app_cert_sn", &self.app_cert_sn)
            .field("alipay_root_cert_sn", &self.root_cert_sn)
            .field("alipay_cert_sn", &self.alipay_cert_sn)
            .finish_non_exhaustive()
    }
}

/// Which of the three certificates an error is about: the account key it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertKey {
    /// `app_cert_file`.
    App,
    /// `alipay_cert_file`.
    Alipay,
    /// `alipay_root_cert_file`.
    Root,
}

impl CertKey {
    /// The account key (the `_file` form, the one accounts use).
    pub fn key(self) -> &'static str {
        match self {
            CertKey::App => "app_cert_file",
            CertKey::Alipay => "alipay_cert_file",
            CertKey::Root => "alipay_root_cert_file",
        }
    }
}

impl CertMode {
    /// Reads the three PEM texts; an error names the certificate it is about.
    pub fn from_pem(app: &str, alipay: &str, root: &str) -> Result<CertMode, (CertKey, CertError)> {
        let first = |text: &str, which: CertKey| {
            load(text)
                .and_then(|mut certs| {
                    if certs.is_empty() {
                        Err(CertError::NotACertificate("no certificate".into()))
                    } else {
                        Ok(certs.swap_remove(0))
                    }
                })
                .map_err(|e| (which, e))
        };
        // The first certificate of a file is the one it is about; Alipay's certificate
        // file may go on with its issuing chain, which signs nothing we verify.
        let app_cert = first(app, CertKey::App)?;
        let alipay_cert = first(alipay, CertKey::Alipay)?;
        let roots = load(root).map_err(|e| (CertKey::Root, e))?;
        let app_cert_sn = cert_sn(&app_cert).map_err(|e| (CertKey::App, e))?;
        let alipay_cert_sn = cert_sn(&alipay_cert).map_err(|e| (CertKey::Alipay, e))?;
        let root_cert_sn = root_cert_sn(&roots).map_err(|e| (CertKey::Root, e))?;
        let alipay_key =
            rsa_key(&alipay_cert, &alipay_cert_sn).map_err(|e| (CertKey::Alipay, e))?;
        Ok(CertMode {
            app_key: rsa_key(&app_cert, &app_cert_sn).ok(),
            app_cert_sn,
            root_cert_sn,
            alipay_cert_sn,
            alipay_key: VerifyingKey::new(alipay_key),
        })
    }

    /// `app_cert_sn`, sent with every request.
    pub fn app_cert_sn(&self) -> &str {
        &self.app_cert_sn
    }

    /// `alipay_root_cert_sn`, sent with every request.
    pub fn root_cert_sn(&self) -> &str {
        &self.root_cert_sn
    }

    /// The SN of the Alipay certificate this account holds.
    pub fn alipay_cert_sn(&self) -> &str {
        &self.alipay_cert_sn
    }

    /// The app certificate's public key, when it is RSA (to check it against the app
    /// private key).
    pub fn app_key(&self) -> Option<&RsaPublicKey> {
        self.app_key.as_ref()
    }

    /// The key that verifies what Alipay signed with the certificate `alipay_cert_sn`
    /// names (absent: the one held), or `None` when the account does not hold it.
    pub(crate) fn alipay_key(&self, alipay_cert_sn: Option<&str>) -> Option<&VerifyingKey<Sha256>> {
        match alipay_cert_sn {
            None => Some(&self.alipay_key),
            Some(sn) if sn == self.alipay_cert_sn => Some(&self.alipay_key),
            Some(_) => None,
        }
    }
}

/// Every certificate of a PEM text, in order.
///
/// Read leniently as to line length: certificates Alipay hands out wrap their base64 at
/// 76 columns (Java's MIME encoder), which strict RFC 7468 readers refuse.
pub fn load(text: &str) -> Result<Vec<Certificate>, CertError> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut certs = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let after = &rest[start + BEGIN.len()..];
        let end = after.find(END).ok_or_else(|| {
            CertError::NotACertificate(format!("certificate {} has no {END} line", certs.len() + 1))
        })?;
        let b64: String = after[..end]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| {
                CertError::NotACertificate(format!("certificate {}: {e}", certs.len() + 1))
            })?;
        let cert = Certificate::from_der(&der).map_err(|e| {
            CertError::NotACertificate(format!("certificate {}: {e}", certs.len() + 1))
        })?;
        certs.push(cert);
        rest = &after[end + END.len()..];
    }
    if certs.is_empty() {
        return Err(CertError::NotACertificate(format!("no {BEGIN} block")));
    }
    Ok(certs)
}

fn rsa_key(cert: &Certificate, sn: &str) -> Result<RsaPublicKey, CertError> {
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| CertError::Encode(e.to_string()))?;
    RsaPublicKey::from_public_key_der(&spki).map_err(|e| CertError::NotRsa {
        sn: sn.to_owned(),
        why: e.to_string(),
    })
}

/// A certificate's SN as Alipay defines it: MD5 hex of issuer DN + decimal serial.
pub fn cert_sn(cert: &Certificate) -> Result<String, CertError> {
    let tbs = &cert.tbs_certificate;
    let text = format!(
        "{}{}",
        issuer_dn(&tbs.issuer)?,
        serial_decimal(tbs.serial_number.as_bytes())
    );
    // 32 digits always: the SDKs pad what `BigInteger.toString(16)` shortens.
    Ok(hex::encode(Md5::digest(text.as_bytes())))
}

/// The root bundle's SN: the SNs of its RSA-signed certificates joined with `_`.
pub fn root_cert_sn(certs: &[Certificate]) -> Result<String, CertError> {
    let mut sns = Vec::new();
    for cert in certs {
        if is_rsa_signed(cert) {
            sns.push(cert_sn(cert)?);
        }
    }
    if sns.is_empty() {
        return Err(CertError::NoRsaRoot);
    }
    Ok(sns.join("_"))
}

/// Signed with an RSA algorithm (`sha1WithRSAEncryption` 1.2.840.113549.1.1.5,
/// `sha256WithRSAEncryption` …1.11, and the rest of PKCS#1's arc), as the Java SDK tests
/// with `getSigAlgOID().startsWith("1.2.840.113549.1.1")`.
fn is_rsa_signed(cert: &Certificate) -> bool {
    cert.signature_algorithm
        .oid
        .to_string()
        .starts_with("1.2.840.113549.1.1.")
}

/// A serial number (DER INTEGER content, two's complement) in decimal, as Java's
/// `BigInteger.toString()` prints it.
pub fn serial_decimal(bytes: &[u8]) -> String {
    let value = BigUint::from_bytes_be(bytes);
    if bytes.first().is_some_and(|b| b & 0x80 != 0) {
        // Negative (not allowed by RFC 5280, but Java prints it): minus 2^(8n) − value.
        let modulus = BigUint::from(1u8) << (8 * bytes.len());
        format!("-{}", (modulus - value).to_str_radix(10))
    } else {
        value.to_str_radix(10)
    }
}

/// A name as Java's `X500Principal.getName()` (RFC 2253) prints it: RDNs last first,
/// joined by `,`; the attributes of one RDN joined by `+`; known keywords by name, others
/// as a dotted OID with the value's DER in `#hex`.
pub fn issuer_dn(name: &Name) -> Result<String, CertError> {
    let mut rdns = Vec::new();
    for rdn in name.0.iter().rev() {
        let mut avas = Vec::new();
        for ava in rdn.0.iter() {
            let keyword = match ava.oid.to_string().as_str() {
                "2.5.4.3" => Some("CN"),
                "2.5.4.6" => Some("C"),
                "2.5.4.7" => Some("L"),
                "2.5.4.8" => Some("ST"),
                "2.5.4.10" => Some("O"),
                "2.5.4.11" => Some("OU"),
                "2.5.4.9" => Some("STREET"),
                "0.9.2342.19200300.100.1.25" => Some("DC"),
                "0.9.2342.19200300.100.1.1" => Some("UID"),
                _ => None,
            };
            let text = keyword.and_then(|_| string_value(ava.value.tag(), ava.value.value()));
            match (keyword, text) {
                (Some(k), Some(v)) => avas.push(format!("{k}={}", escape(&v))),
                _ => {
                    let der = ava
                        .value
                        .to_der()
                        .map_err(|e| CertError::Encode(e.to_string()))?;
                    avas.push(format!("{}=#{}", ava.oid, hex::encode(der)));
                }
            }
        }
        rdns.push(avas.join("+"));
    }
    Ok(rdns.join(","))
}

/// The text of a directory string, for the string types Java prints as text.
fn string_value(tag: Tag, bytes: &[u8]) -> Option<String> {
    match tag {
        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String => {
            std::str::from_utf8(bytes).ok().map(str::to_owned)
        }
        // T61String: Java reads it as ISO-8859-1.
        Tag::TeletexString => Some(bytes.iter().map(|&b| char::from(b)).collect()),
        Tag::BmpString => {
            if bytes.len() % 2 != 0 {
                return None;
            }
            let units: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|p| u16::from_be_bytes([p[0], p[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

/// RFC 2253 escaping as Java does it: `,=+<>#;"\` get a backslash, NUL is `\00`, and
/// leading and trailing spaces are escaped.
fn escape(value: &str) -> String {
    let chars: Vec<char> = value.chars().collect();
    let lead = chars.iter().take_while(|c| **c == ' ').count();
    let trail = chars.iter().rev().take_while(|c| **c == ' ').count();
    let mut out = String::with_capacity(value.len());
    for (i, c) in chars.iter().enumerate() {
        match c {
            ',' | '=' | '+' | '<' | '>' | '#' | ';' | '"' | '\\' => {
                out.push('\\');
                out.push(*c);
            }
            '\0' => out.push_str("\\00"),
            ' ' if i < lead || i >= chars.len() - trail => out.push_str("\\ "),
            c => out.push(*c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_print_as_java_big_integers() {
        assert_eq!(serial_decimal(&[0x01]), "1");
        assert_eq!(serial_decimal(&[0x00, 0xff]), "255");
        assert_eq!(
            serial_decimal(&hex::decode("2019040800112233445566").expect("hex")),
            BigUint::from_bytes_be(&hex::decode("2019040800112233445566").expect("hex"))
                .to_str_radix(10)
        );
        assert_eq!(serial_decimal(&[0xff]), "-1");
        assert_eq!(serial_decimal(&[0x80, 0x00]), "-32768");
    }

    #[test]
    fn values_are_escaped_as_java_does() {
        assert_eq!(escape("Ant Financial"), "Ant Financial");
        assert_eq!(escape("a,b+c=d"), "a\\,b\\+c\\=d");
        assert_eq!(escape(" x "), "\\ x\\ ");
        assert_eq!(escape("#1"), "\\#1");
    }
}

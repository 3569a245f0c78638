//! Alipay certificate mode, played independently of the host: a root bundle like
//! `alipayRootCert.crt` (an RSA root and an ECDSA root, as Alipay's holds RSA and SM2
//! roots), Alipay's and the app's certificates issued by the RSA root, their SNs computed
//! here from Alipay's definition with the issuer DN written out by hand, and
//! notifications signed over the string to sign in their declared charset (UTF-8 or GBK).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use md5::{Digest, Md5};
use rsa::pkcs1v15::SigningKey;
use rsa::signature::{SignatureEncoding, Signer};
use rsa::RsaPrivateKey;
use sha2::Sha256;
use x509_cert::builder::{Builder, CertificateBuilder, Profile};
use x509_cert::der::pem::LineEnding;
use x509_cert::der::EncodePem;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::SubjectPublicKeyInfoOwned;
use x509_cert::time::Validity;

/// The certificate-mode account's app id.
pub const APP_ID: &str = "2021000000000009";
/// The RSA root's subject, as Java's `X500Principal.getName()` prints it.
pub const ROOT_DN: &str =
    "CN=Test Alipay Root Class 2,OU=Certification Authority,O=Test Financial,C=CN";
/// The RSA root's serial (66051 in decimal).
const ROOT_SERIAL: &[u8] = &[0x01, 0x02, 0x03];
/// Alipay's certificate's serial (538510344 in decimal).
const ALIPAY_SERIAL: &[u8] = &[0x20, 0x19, 0x04, 0x08];
/// A rotated Alipay certificate's serial (538510345 in decimal).
const NEW_ALIPAY_SERIAL: &[u8] = &[0x20, 0x19, 0x04, 0x09];

/// root, Alipay's key, the app's key, a stranger's key.
pub fn keys() -> &'static [RsaPrivateKey; 4] {
    static KEYS: OnceLock<[RsaPrivateKey; 4]> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut rng = rand::thread_rng();
        [(); 4].map(|_| RsaPrivateKey::new(&mut rng, 2048).expect("RSA key"))
    })
}

/// MD5 of `text`, lower-case hex.
pub fn md5_hex(text: &str) -> String {
    hex::encode(Md5::digest(text.as_bytes()))
}

/// The SN of Alipay's certificate the account holds.
pub fn alipay_cert_sn() -> String {
    md5_hex(&format!("{ROOT_DN}538510344"))
}

/// The SN of the certificate Alipay would rotate to: one the account does not hold.
pub fn new_alipay_cert_sn() -> String {
    md5_hex(&format!("{ROOT_DN}538510345"))
}

/// The SN of the app's certificate (serial 0x11 = 17).
pub fn app_cert_sn() -> String {
    md5_hex(&format!("{ROOT_DN}17"))
}

/// The root bundle's SN: the RSA root only; the ECDSA root takes no part.
pub fn root_cert_sn() -> String {
    md5_hex(&format!("{ROOT_DN}66051"))
}

fn rsa_cert(
    subject: &str,
    serial: &[u8],
    key: &RsaPrivateKey,
    issuer: Option<&RsaPrivateKey>,
) -> String {
    let spki = SubjectPublicKeyInfoOwned::from_key(key.to_public_key()).expect("spki");
    let (profile, signing) = match issuer {
        None => (Profile::Root, key),
        Some(k) => (
            Profile::Leaf {
                issuer: Name::from_str(ROOT_DN).expect("issuer"),
                enable_key_agreement: false,
                enable_key_encipherment: false,
            },
            k,
        ),
    };
    let signer = SigningKey::<Sha256>::new(signing.clone());
    CertificateBuilder::new(
        profile,
        SerialNumber::new(serial).expect("serial"),
        Validity::from_now(Duration::from_secs(86_400 * 365)).expect("validity"),
        Name::from_str(subject).expect("subject"),
        spki,
        &signer,
    )
    .expect("builder")
    .build::<rsa::pkcs1v15::Signature>()
    .expect("certificate")
    .to_pem(LineEnding::LF)
    .expect("pem")
}

fn ecdsa_root() -> String {
    let key = p256::ecdsa::SigningKey::random(&mut rand::thread_rng());
    let spki = SubjectPublicKeyInfoOwned::from_key(*key.verifying_key()).expect("spki");
    CertificateBuilder::new(
        Profile::Root,
        SerialNumber::new(&[0x05]).expect("serial"),
        Validity::from_now(Duration::from_secs(86_400 * 365)).expect("validity"),
        Name::from_str("CN=Test SM2 Root,O=Test,C=CN").expect("subject"),
        spki,
        &key,
    )
    .expect("builder")
    .build::<p256::ecdsa::DerSignature>()
    .expect("certificate")
    .to_pem(LineEnding::LF)
    .expect("pem")
}

/// The three files of a certificate-mode account: (app cert, Alipay cert, root bundle).
pub fn cert_files() -> (String, String, String) {
    let k = keys();
    let root = rsa_cert(ROOT_DN, ROOT_SERIAL, &k[0], None);
    // The ECDSA root first: the SN must skip it wherever it sits.
    let bundle = format!("{}{root}", ecdsa_root());
    let app = rsa_cert(
        &format!("CN={APP_ID},OU=Alipay,O=Test Merchant,C=CN"),
        &[0x11],
        &k[2],
        Some(&k[0]),
    );
    let alipay = rsa_cert(
        "CN=Test Alipay Public Key,OU=Alipay,O=Test Financial,C=CN",
        ALIPAY_SERIAL,
        &k[1],
        Some(&k[0]),
    );
    (app, alipay, bundle)
}

/// Alipay's next certificate, same key: what a rotation would bring.
pub fn rotated_alipay_cert() -> String {
    let k = keys();
    rsa_cert(
        "CN=Test Alipay Public Key,OU=Alipay,O=Test Financial,C=CN",
        NEW_ALIPAY_SERIAL,
        &k[1],
        Some(&k[0]),
    )
}

/// The form body Alipay would POST: the string to sign (drop `sign` and `sign_type`,
/// skip empty values, sort, `k=v&…`) encoded in `encoding` and signed with `key`, every
/// value's bytes in `encoding`, percent-encoded.
pub fn body_in(
    fields: &BTreeMap<String, String>,
    key: &RsaPrivateKey,
    encoding: &'static encoding_rs::Encoding,
) -> String {
    let text = crate::alipay::sign_string(fields);
    let (signed, _, unmappable) = encoding.encode(&text);
    assert!(
        !unmappable,
        "fixture not representable in {}",
        encoding.name()
    );
    let sig = SigningKey::<Sha256>::new(key.clone()).sign(&signed);
    let mut out = String::new();
    let mut push = |k: &str, v: &[u8]| {
        if !out.is_empty() {
            out.push('&');
        }
        out.extend(form_urlencoded::byte_serialize(k.as_bytes()));
        out.push('=');
        out.extend(form_urlencoded::byte_serialize(v));
    };
    for (k, v) in fields {
        push(k, &encoding.encode(v).0);
    }
    let sign = base64::engine::general_purpose::STANDARD.encode(sig.to_bytes());
    push("sign", sign.as_bytes());
    push("sign_type", b"RSA2");
    out
}

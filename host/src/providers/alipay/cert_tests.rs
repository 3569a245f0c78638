//! Certificate mode and GBK notifications: SNs as Alipay's SDKs compute them, over
//! certificates made here (a root bundle with an RSA and an ECDSA root, as Alipay's holds
//! RSA and SM2 roots), and notifications signed as Alipay signs them.

use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use md5::{Digest, Md5};
use rsa::pkcs1v15::SigningKey;
use rsa::signature::{SignatureEncoding, Signer};
use rsa::RsaPrivateKey;
use x509_cert::builder::{Builder, CertificateBuilder, Profile};
use x509_cert::der::pem::LineEnding;
use x509_cert::der::EncodePem;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::SubjectPublicKeyInfoOwned;
use x509_cert::time::Validity;

use super::cert::{self, CertError, CertMode};
use super::*;

const APP_ID: &str = "2021000000000009";
const ROOT_DN: &str =
    "CN=Test Alipay Root Class 2,OU=Certification Authority,O=Test Financial,C=CN";
/// Serial 01 02 03 of the root: 66051 in decimal.
const ROOT_SERIAL: &[u8] = &[0x01, 0x02, 0x03];
const ROOT2_DN: &str = "CN=Test Root R1,O=Test,C=CN";
const EC_ROOT_DN: &str = "CN=Test SM2 Root,O=Test,C=CN";
/// Serial 20 19 04 08 of Alipay's certificate: 538510344 in decimal.
const ALIPAY_SERIAL: &[u8] = &[0x20, 0x19, 0x04, 0x08];

/// root, Alipay's key, the app's key, a stranger's key.
fn keys() -> &'static [RsaPrivateKey; 4] {
    static KEYS: OnceLock<[RsaPrivateKey; 4]> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut rng = rand::thread_rng();
        [(); 4].map(|_| RsaPrivateKey::new(&mut rng, 2048).expect("RSA key"))
    })
}

fn md5_hex(s: &str) -> String {
    hex::encode(Md5::digest(s.as_bytes()))
}

/// An RSA-signed certificate: self-signed when `issuer` is `None`.
fn rsa_cert(
    subject: &str,
    serial: &[u8],
    key: &RsaPrivateKey,
    issuer: Option<(&str, &RsaPrivateKey)>,
) -> String {
    let spki = SubjectPublicKeyInfoOwned::from_key(key.to_public_key()).expect("spki");
    let (profile, signing) = match issuer {
        None => (Profile::Root, key),
        Some((name, k)) => (
            Profile::Leaf {
                issuer: Name::from_str(name).expect("issuer"),
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

/// A self-signed ECDSA P-256 root: the non-RSA member of the bundle.
fn ecdsa_root(subject: &str, serial: &[u8]) -> String {
    let key = p256::ecdsa::SigningKey::random(&mut rand::thread_rng());
    let spki = SubjectPublicKeyInfoOwned::from_key(*key.verifying_key()).expect("spki");
    CertificateBuilder::new(
        Profile::Root,
        SerialNumber::new(serial).expect("serial"),
        Validity::from_now(Duration::from_secs(86_400 * 365)).expect("validity"),
        Name::from_str(subject).expect("subject"),
        spki,
        &key,
    )
    .expect("builder")
    .build::<p256::ecdsa::DerSignature>()
    .expect("certificate")
    .to_pem(LineEnding::LF)
    .expect("pem")
}

struct Fixture {
    app: String,
    alipay: String,
    bundle: String,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let k = keys();
        let root = rsa_cert(ROOT_DN, ROOT_SERIAL, &k[0], None);
        let bundle = [
            root,
            ecdsa_root(EC_ROOT_DN, &[0x05]),
            rsa_cert(ROOT2_DN, &[0x7f], &k[3], None),
        ]
        .concat();
        Fixture {
            app: rsa_cert(
                &format!("CN={APP_ID},OU=Alipay,O=Test Merchant,C=CN"),
                &[0x11],
                &k[2],
                Some((ROOT_DN, &k[0])),
            ),
            alipay: rsa_cert(
                "CN=Test Alipay Public Key,OU=Alipay,O=Test Financial,C=CN",
                ALIPAY_SERIAL,
                &k[1],
                Some((ROOT_DN, &k[0])),
            ),
            bundle,
        }
    })
}

fn certs() -> CertMode {
    let f = fixture();
    CertMode::from_pem(&f.app, &f.alipay, &f.bundle).expect("certificate mode")
}

#[test]
fn cert_sn_is_md5_of_the_rfc2253_issuer_and_the_decimal_serial() {
    let c = certs();
    // Hand-written: the issuer as Java's X500Principal.getName() prints it, then the
    // serial as BigInteger.toString() does.
    assert_eq!(c.alipay_cert_sn(), md5_hex(&format!("{ROOT_DN}538510344")));
    assert_eq!(c.app_cert_sn(), md5_hex(&format!("{ROOT_DN}17")));
    assert_eq!(c.alipay_cert_sn().len(), 32);
    // The DER holds the RDNs country first; the DN string names them last first.
    let alipay = cert::load(&fixture().alipay).expect("loads");
    let first = &alipay[0].tbs_certificate.issuer.0[0].0;
    assert_eq!(first.iter().next().expect("rdn").oid.to_string(), "2.5.4.6");
    assert_eq!(
        cert::issuer_dn(&alipay[0].tbs_certificate.issuer).expect("dn"),
        ROOT_DN
    );
}

#[test]
fn root_sn_joins_the_rsa_signed_roots_and_skips_the_others() {
    let roots = cert::load(&fixture().bundle).expect("loads");
    assert_eq!(roots.len(), 3);
    // The bundle really holds a non-RSA certificate (ecdsa-with-SHA256).
    assert_eq!(
        roots[1].signature_algorithm.oid.to_string(),
        "1.2.840.10045.4.3.2"
    );
    assert_eq!(
        cert::root_cert_sn(&roots).expect("sn"),
        format!(
            "{}_{}",
            md5_hex(&format!("{ROOT_DN}66051")),
            md5_hex(&format!("{ROOT2_DN}127"))
        )
    );
    assert_eq!(
        certs().root_cert_sn(),
        cert::root_cert_sn(&roots).expect("sn")
    );
    // Only non-RSA roots: no SN Alipay would accept.
    assert_eq!(cert::root_cert_sn(&roots[1..2]), Err(CertError::NoRsaRoot));
}

#[test]
fn bad_certificates_name_the_file_they_came_from() {
    let f = fixture();
    let err = |app: &str, alipay: &str, root: &str| {
        CertMode::from_pem(app, alipay, root)
            .expect_err("refused")
            .0
    };
    assert_eq!(err("junk", &f.alipay, &f.bundle), cert::CertKey::App);
    assert_eq!(err(&f.app, "junk", &f.bundle), cert::CertKey::Alipay);
    assert_eq!(err(&f.app, &f.alipay, "junk"), cert::CertKey::Root);
    // Alipay's certificate must carry an RSA key.
    let ec = ecdsa_root(EC_ROOT_DN, &[0x06]);
    assert_eq!(err(&f.app, &ec, &f.bundle), cert::CertKey::Alipay);
}

fn paid(out_trade_no: &str, subject: &str, charset: &str) -> BTreeMap<String, String> {
    [
        ("app_id", APP_ID),
        ("charset", charset),
        ("gmt_payment", "2026-01-01 08:00:05"),
        ("notify_type", "trade_status_sync"),
        ("out_trade_no", out_trade_no),
        ("subject", subject),
        ("total_amount", "0.01"),
        ("trade_no", "2026010122001400000000000001"),
        ("trade_status", "TRADE_SUCCESS"),
        ("version", "1.0"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Signs as Alipay does (the string to sign in the notification's charset) and posts
/// every value's bytes in that charset, percent-encoded.
fn body_in(
    fields: &BTreeMap<String, String>,
    key: &RsaPrivateKey,
    encoding: &'static encoding_rs::Encoding,
) -> Vec<u8> {
    let text = string_to_sign(fields);
    let (signed, _, bad) = encoding.encode(&text);
    assert!(!bad, "the fixture is representable in {}", encoding.name());
    let sig = SigningKey::<Sha256>::new(key.clone()).sign(&signed);
    let mut out = String::new();
    let mut push = |k: &str, v: &[u8]| {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.extend(form_urlencoded::byte_serialize(v));
    };
    for (k, v) in fields {
        push(k, &encoding.encode(v).0);
    }
    push(
        "sign",
        base64::engine::general_purpose::STANDARD
            .encode(sig.to_bytes())
            .as_bytes(),
    );
    push("sign_type", b"RSA2");
    out.into_bytes()
}

fn verify(p: &Alipay, body: &[u8]) -> Result<Notice, Rejection> {
    p.verify(&Inbound {
        account: None,
        headers: &[],
        body,
        received_at: 0,
    })
}

fn cert_provider() -> Alipay {
    Alipay::new(vec![Account::with_certs("cert", APP_ID, certs())])
}

#[test]
fn cert_mode_verifies_with_the_alipay_certificate_it_names() {
    let p = cert_provider();
    let k = keys();
    let sn = certs().alipay_cert_sn().to_owned();
    let mut f = paid("CM-1", "会员充值", "utf-8");
    f.insert("alipay_cert_sn".into(), sn.clone());
    let n = verify(&p, &body_in(&f, &k[1], encoding_rs::UTF_8)).expect("verifies");
    assert_eq!(n.account, "cert");
    assert!(matches!(
        n.kind,
        NoticeKind::Paid(Payment { amount: 1, .. })
    ));

    // Without alipay_cert_sn: the certificate held.
    let f = paid("CM-2", "x", "utf-8");
    verify(&p, &body_in(&f, &k[1], encoding_rs::UTF_8)).expect("verifies");

    // A certificate the account does not hold: refused, saying what to configure.
    let mut f = paid("CM-3", "x", "utf-8");
    f.insert("alipay_cert_sn".into(), md5_hex("another"));
    let e = verify(&p, &body_in(&f, &k[1], encoding_rs::UTF_8)).expect_err("refused");
    let why = e.to_string();
    assert!(why.contains("does not hold"), "{why}");
    assert!(why.contains("alipay_cert_file"), "{why}");
    assert!(why.contains(&sn), "{why}");

    // Signed by anyone but Alipay's certificate (the root's key, the app's own key, a
    // stranger's), with the right SN: refused.
    for signer in [&k[0], &k[2], &k[3]] {
        let mut f = paid("CM-4", "x", "utf-8");
        f.insert("alipay_cert_sn".into(), sn.clone());
        let e = verify(&p, &body_in(&f, signer, encoding_rs::UTF_8)).expect_err("forged");
        assert!(matches!(e, Rejection::BadSignature(_)), "{e}");
    }

    // A genuine one with its amount or its SN changed after signing: refused.
    let mut f = paid("CM-5", "x", "utf-8");
    f.insert("alipay_cert_sn".into(), sn.clone());
    let genuine = String::from_utf8(body_in(&f, &k[1], encoding_rs::UTF_8)).expect("ascii");
    let tampered = genuine.replace("total_amount=0.01", "total_amount=100.00");
    assert!(matches!(
        verify(&p, tampered.as_bytes()),
        Err(Rejection::BadSignature(_))
    ));
    let stripped = genuine.replace(&format!("alipay_cert_sn={sn}&"), "");
    assert!(matches!(
        verify(&p, stripped.as_bytes()),
        Err(Rejection::BadSignature(_))
    ));
}

#[test]
fn a_public_key_account_ignores_certificates_it_never_had() {
    let p = Alipay::new(vec![Account::new("pk", APP_ID, keys()[1].to_public_key())]);
    let mut f = paid("PK-1", "x", "utf-8");
    f.insert("alipay_cert_sn".into(), md5_hex("whatever"));
    verify(&p, &body_in(&f, &keys()[1], encoding_rs::UTF_8)).expect("verifies");
}

#[test]
fn gbk_notifications_are_decoded_then_verified_over_the_bytes_signed() {
    let p = cert_provider();
    let k = keys();
    for charset in ["GBK", "gbk", "GB2312"] {
        let f = paid("GBK-1", "会员充值（测试）", charset);
        let body = body_in(&f, &k[1], encoding_rs::GBK);
        // Really GBK on the wire: 会 is BB E1.
        assert!(String::from_utf8_lossy(&body).contains("%BB%E1"));
        let n = verify(&p, &body).expect("verifies");
        assert_eq!(n.fields["subject"], "会员充值（测试）");
        assert!(matches!(n.kind, NoticeKind::Paid(_)));
    }
    // The same text re-encoded by someone holding the genuine GBK notification: as UTF-8
    // bytes under either charset label, with the genuine signature. Refused: the bytes
    // signed are not the bytes sent.
    let f = paid("GBK-2", "会员", "GBK");
    let genuine = String::from_utf8(body_in(&f, &k[1], encoding_rs::GBK)).expect("ascii");
    let sign = |body: &str| {
        body.split("&sign=")
            .nth(1)
            .and_then(|t| t.split('&').next())
            .expect("sign")
            .to_owned()
    };
    for charset in ["GBK", "utf-8"] {
        let mut g = f.clone();
        g.insert("charset".into(), charset.into());
        let other = String::from_utf8(body_in(&g, &k[3], encoding_rs::UTF_8)).expect("ascii");
        let forged = other.replace(&sign(&other), &sign(&genuine));
        assert!(verify(&p, forged.as_bytes()).is_err(), "{charset}");
    }
    // Charset changed after signing: refused.
    let f = paid("GBK-4", "abc", "GBK");
    let body = String::from_utf8(body_in(&f, &k[1], encoding_rs::GBK)).expect("ascii");
    let switched = body.replace("charset=GBK", "charset=GB2312");
    assert!(matches!(
        verify(&p, switched.as_bytes()),
        Err(Rejection::BadSignature(_))
    ));
    // An unknown charset: refused with the reason, even when signed.
    let f = paid("GBK-5", "abc", "BIG5");
    let e = verify(&p, &body_in(&f, &k[1], encoding_rs::UTF_8)).expect_err("refused");
    assert!(e.to_string().contains("charset `BIG5`"), "{e}");
}

/// An `[[accounts]]` entry in certificate mode, certificates inline, `app_private_key`
/// the given key.
fn account_config(app_key: &RsaPrivateKey, drop: Option<&str>) -> crate::config::AccountConfig {
    use rsa::pkcs8::EncodePrivateKey;
    let f = fixture();
    let mut t = toml::Table::new();
    for (k, v) in [
        ("provider", "alipay"),
        ("name", "cert"),
        ("app_id", APP_ID),
        ("app_cert", f.app.as_str()),
        ("alipay_cert", f.alipay.as_str()),
        ("alipay_root_cert", f.bundle.as_str()),
    ] {
        if Some(k) != drop {
            t.insert(k.into(), v.into());
        }
    }
    let pem = app_key.to_pkcs8_pem(LineEnding::LF).expect("pem");
    t.insert("app_private_key".into(), pem.as_str().into());
    toml::Value::Table(t).try_into().expect("account config")
}

#[test]
fn cert_mode_requests_carry_the_sns_and_answers_verify_by_their_alipay_cert_sn() {
    use rsa::pkcs1v15::{Signature, VerifyingKey};
    use rsa::signature::Verifier;
    let k = keys();
    let a = account_config(&k[2], None);
    let account = Account::from_config(&a).expect("account");
    let api = api::Api::from_config(&a, &account)
        .expect("api")
        .expect("has a key");

    // The request: both SNs, signed with the app key along with everything but `sign`.
    let request = api::Request::new(
        "alipay.trade.query",
        serde_json::json!({ "out_trade_no": "Q-1" }),
    );
    let form = api.signed_form(&request, "2026-01-01 08:00:00");
    let fields = parse_form(form.as_bytes()).expect("form");
    assert_eq!(fields["app_cert_sn"], certs().app_cert_sn());
    assert_eq!(fields["alipay_root_cert_sn"], certs().root_cert_sn());
    let text = fields
        .iter()
        .filter(|(k, _)| *k != "sign")
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let sig = base64::engine::general_purpose::STANDARD
        .decode(&fields["sign"])
        .expect("base64");
    VerifyingKey::<Sha256>::new(k[2].to_public_key())
        .verify(
            text.as_bytes(),
            &Signature::try_from(sig.as_slice()).expect("sig"),
        )
        .expect("signed with the app key");

    // The answer: signed by Alipay's certificate, which `alipay_cert_sn` names.
    let response = r#"{"code":"10000","msg":"Success","out_trade_no":"Q-1","trade_no":"T-1","trade_status":"WAIT_BUYER_PAY"}"#;
    let answer = |key: &RsaPrivateKey, sn: &str| {
        let sign = base64::engine::general_purpose::STANDARD.encode(
            SigningKey::<Sha256>::new(key.clone())
                .sign(response.as_bytes())
                .to_bytes(),
        );
        format!(
            r#"{{"alipay_trade_query_response":{response},"alipay_cert_sn":"{sn}","sign":"{sign}"}}"#
        )
    };
    let held = certs().alipay_cert_sn().to_owned();
    api.verified_response(answer(&k[1], &held).as_bytes(), "alipay.trade.query")
        .expect("verifies");
    let e = api
        .verified_response(
            answer(&k[1], &md5_hex("new")).as_bytes(),
            "alipay.trade.query",
        )
        .expect_err("unknown certificate");
    assert!(e.to_string().contains("does not hold"), "{e}");
    let e = api
        .verified_response(answer(&k[3], &held).as_bytes(), "alipay.trade.query")
        .expect_err("forged");
    assert!(matches!(e, Rejection::BadSignature(_)), "{e}");
}

#[test]
fn cert_mode_config_names_what_is_missing_or_wrong() {
    let k = keys();
    for key in ["app_cert", "alipay_cert", "alipay_root_cert"] {
        let e = Account::from_config(&account_config(&k[2], Some(key))).expect_err("missing");
        assert!(e.contains(&format!("`{key}` (or {key}_file)")), "{e}");
    }
    // Both modes at once.
    let mut a = account_config(&k[2], None);
    a.alipay_public_key = Some("x".into());
    let e = Account::from_config(&a).expect_err("both");
    assert!(e.contains("not both"), "{e}");
    // The app certificate of another key than the app private key.
    let a = account_config(&k[3], None);
    let account = Account::from_config(&a).expect("account");
    let e = api::Api::from_config(&a, &account).err().expect("mismatch");
    assert!(e.contains("app_cert_file"), "{e}");
}

/// The SDKs' own vectors (see `testdata/README.md`): Alipay's real root bundle, whose SM2
/// and ECDSA roots take no part and whose sha256WithRSA and sha1WithRSA roots do, and a
/// sandbox app certificate.
#[test]
fn sns_match_the_alipay_sdks_known_answers() {
    let roots = cert::load(include_str!("testdata/alipayRootCert.crt")).expect("root bundle");
    assert_eq!(roots.len(), 4);
    assert_eq!(
        cert::root_cert_sn(&roots).expect("sn"),
        "687b59193f3f462dd5336e5abf83c5d8_02941eef3187dddf3d3b83462e1dfcf6"
    );
    assert_eq!(
        cert::issuer_dn(&roots[1].tbs_certificate.issuer).expect("dn"),
        "CN=Ant Financial Certification Authority R1,OU=Certification Authority,O=Ant Financial,C=CN"
    );
    let app = cert::load(include_str!("testdata/appCertPublicKey_sandbox.crt")).expect("app");
    assert_eq!(
        cert::cert_sn(&app[0]).expect("sn"),
        "e90dd23a37c5c7b616e003970817ff82"
    );
}

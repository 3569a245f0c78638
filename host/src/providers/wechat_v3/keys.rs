//! WeChat Pay v3 key material, and the signature check both halves share: an account's
//! APIv3 key and WeChat Pay verifying keys (public key ids and platform certificates),
//! reading them from PEM, and verifying a message WeChat Pay signed, whether a
//! notification or an answer to our query ([`verify_signed`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use rsa::RsaPublicKey;
use sha2::Sha256;

use super::certs::{Held, KeyMiss, PlatformCerts};
use super::x509::{certificate_key, certificate_validity, normalise_serial, read_platform_certs};
pub use super::x509::{parse_certificate_pem, serial_hex};
use super::{MAX_CLOCK_SKEW_SECS, SIGNATURE_PROBE_PREFIX, SIGNATURE_TYPE};
use crate::config::AccountConfig;
use crate::providers::common::{check_timestamp, nonblank_header, pick_account, required};
use crate::providers::{Inbound, ProviderKind, Rejection};

/// One configured v3 merchant account.
#[derive(Clone)]
pub struct Account {
    pub(super) name: String,
    pub(super) appid: String,
    pub(super) mch_id: String,
    pub(super) api_v3_key: [u8; 32],
    /// Verifying keys by `Wechatpay-Serial`: public key ids as given, certificate serials
    /// normalised with [`normalise_serial`].
    pub(super) public_keys: BTreeMap<String, VerifyingKey<Sha256>>,
    /// The configured platform certificates.
    pub(super) cert_serials: BTreeMap<String, Held>,
    /// The downloaded ones (`download_platform_certs`), shared with the refresh job.
    pub(super) downloaded: Option<Arc<PlatformCerts>>,
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
            .field("downloads_certs", &self.downloaded.is_some())
            .finish_non_exhaustive()
    }
}

impl Account {
    /// Reads the v3 keys of an `[[accounts]]` entry, loading every public key and
    /// platform certificate it names.
    pub fn from_config(a: &AccountConfig) -> Result<Account, String> {
        let key = required(&a.api_v3_key, "api_v3_key", true, ProviderKind::WechatV3)?;
        let mut account = Account::new(
            &a.name,
            &required(&a.appid, "appid", false, ProviderKind::WechatV3)?,
            &required(&a.mch_id, "mch_id", false, ProviderKind::WechatV3)?,
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
            for (serial, held) in certs {
                account.cert_serials.insert(serial, held);
            }
        }
        if a.download_platform_certs {
            super::certs::check_download_config(a)?;
            account.downloaded = Some(Arc::new(PlatformCerts::new(
                &account.name,
                &account.mch_id,
                account.api_v3_key,
            )));
        } else if account.public_keys.is_empty() && account.cert_serials.is_empty() {
            return Err(
                "wechat-v3 needs `public_keys` (WeChat Pay public key ids → PEM files), `platform_certs` (PEM files) or `download_platform_certs = true`"
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
            downloaded: None,
        })
    }

    /// Adds a WeChat Pay public key under its id (`PUB_KEY_ID_…`).
    pub fn with_public_key(mut self, id: &str, key: RsaPublicKey) -> Account {
        self.public_keys.insert(id.into(), VerifyingKey::new(key));
        self
    }

    /// Adds the key of a platform certificate (PEM); returns its serial as WeChat names it.
    pub fn with_platform_cert(mut self, pem: &str) -> Result<(Account, String), String> {
        use x509_cert::der::DecodePem;
        let cert = x509_cert::Certificate::from_pem(pem.trim().as_bytes())
            .map_err(|e| format!("not a PEM X.509 certificate: {e}"))?;
        let (serial, key) = certificate_key(&cert)?;
        let (_, expire_ms) = certificate_validity(&cert);
        self.cert_serials.insert(
            normalise_serial(&serial),
            Held {
                key: VerifyingKey::new(key),
                expire_ms,
            },
        );
        Ok((self, serial))
    }

    /// The key `Wechatpay-Serial` names, if this account has it and, for a certificate,
    /// it has not expired at `at_ms`.
    pub(super) fn key_at(&self, serial: &str, at_ms: i64) -> Result<VerifyingKey<Sha256>, KeyMiss> {
        if let Some(key) = self.public_keys.get(serial) {
            return Ok(key.clone());
        }
        let serial = normalise_serial(serial);
        let held = match self.cert_serials.get(&serial) {
            Some(h) => Some(h.clone()),
            None => self.downloaded.as_ref().and_then(|d| d.get(&serial)),
        };
        match held {
            None => Err(KeyMiss::Unknown),
            Some(h) if h.expire_ms <= at_ms => Err(KeyMiss::Expired(h.expire_ms)),
            Some(h) => Ok(h.key),
        }
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

/// A `Wechatpay-*` header that must be there: without it nothing can be verified.
fn required_header<'a>(inbound: &'a Inbound<'_>, name: &str) -> Result<&'a str, Rejection> {
    nonblank_header(inbound, name)
        .ok_or_else(|| Rejection::BadSignature(format!("no `{name}` header")))
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

    check_timestamp(
        "Wechatpay-Timestamp",
        timestamp,
        inbound.received_at,
        MAX_CLOCK_SKEW_SECS,
    )?;

    let at = inbound.received_at;
    if inbound.account.is_none() && !accounts.iter().any(|a| a.key_at(serial, at).is_ok()) {
        let expired = accounts
            .iter()
            .find_map(|a| a.key_at(serial, at).err()?.expired());
        return Err(Rejection::BadSignature(match expired {
            Some(reason) => format!("Wechatpay-Serial `{serial}`: {reason}"),
            None => format!(
                "unknown Wechatpay-Serial `{serial}`: no configured public key id or platform certificate has it"
            ),
        }));
    }
    let account = pick_account(
        accounts,
        |a| &a.name,
        inbound.account,
        |a| a.key_at(serial, at).is_ok(),
    )?;
    let key = account.key_at(serial, at).map_err(|miss| {
        Rejection::BadSignature(match miss.expired() {
            Some(reason) => format!(
                "Wechatpay-Serial `{serial}` of account `{}`: {reason}",
                account.name
            ),
            None => format!(
                "unknown Wechatpay-Serial `{serial}` for account `{}`",
                account.name
            ),
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::wechat_v3::tests::{
        envelope, fixture, headers, keys, transaction, verify_with, APPID, KEY, MCHID, NOW_MS,
        NOW_S, PUB_ID,
    };
    use crate::providers::wechat_v3::WechatV3;
    use crate::providers::{NoticeKind, Payment, Provider};

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

//! Reading a `/v3/certificates` answer: each certificate decrypted with the APIv3 key and
//! matched with its `serial_no`, the answer's signature checked by the rule `certs.rs`
//! explains (a trusted key, or on the first download a certificate of the answer).

use serde_json::Value;

use super::x509::{normalise_serial, parse_pem};
use super::{decrypt_resource, parse_rfc3339, verify_signed, Account, ALGORITHM};
use crate::providers::api::ProviderAnswer;
use crate::providers::json::str_field;
use crate::store::PlatformCertRecord;

/// Checks a `/v3/certificates` answer and reads the certificates to store: each one
/// decrypted with the APIv3 key, its `serial_no` the certificate's own, its validity the
/// narrower of WeChat's and the certificate's; the answer's signature by a trusted key,
/// or (first download only) by a certificate in it. Expired certificates are left out.
pub(super) fn read_download(
    account: &Account,
    api_v3_key: &[u8; 32],
    answer: &ProviderAnswer,
    now: i64,
    source: &str,
) -> Result<Vec<PlatformCertRecord>, String> {
    if answer.status != 200 {
        return Err(format!(
            "HTTP {}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
                .chars()
                .take(300)
                .collect::<String>()
        ));
    }
    let body: Value =
        serde_json::from_slice(&answer.body).map_err(|e| format!("answer is not JSON: {e}"))?;
    let data = body
        .get("data")
        .and_then(Value::as_array)
        .ok_or("answer has no `data` array")?;
    let mut certs = Vec::with_capacity(data.len());
    for item in data {
        certs.push(read_item(item, api_v3_key, account, now, source)?);
    }
    let inbound = answer.inbound(&account.name);
    if let Err(untrusted) = verify_signed(std::slice::from_ref(account), &inbound) {
        let signer = normalise_serial(inbound.header("wechatpay-serial").unwrap_or(""));
        let has_valid = account.cert_serials.values().any(|h| h.expire_ms > now)
            || account
                .downloaded
                .as_ref()
                .is_some_and(|d| d.any_valid(now));
        if has_valid {
            return Err(format!(
                "{untrusted}; the account already trusts a certificate, so only an answer signed by a trusted one may add another (configure the new certificate in `platform_certs` if WeChat Pay signs with it already)"
            ));
        }
        let own = certs.iter().find(|c| c.serial == signer).ok_or_else(|| {
            format!("{untrusted}; and the answer holds no certificate `{signer}`")
        })?;
        let (with_own, _) = account.clone().with_platform_cert(&own.pem)?;
        verify_signed(std::slice::from_ref(&with_own), &inbound).map_err(|e| {
            format!("first download, signed by certificate `{signer}` of the answer: {e}")
        })?;
        tracing::warn!(account = %account.name, serial = %signer, "first platform certificate download: trusting the certificate that signed it (its encryption under the APIv3 key says it is WeChat Pay's)");
    }
    let (valid, expired): (Vec<_>, Vec<_>) = certs.into_iter().partition(|c| c.expire_at > now);
    for c in &expired {
        tracing::warn!(account = %account.name, serial = %c.serial, "downloaded platform certificate already expired; not stored");
    }
    Ok(valid)
}

/// One `data` item: decrypted, parsed and matched with its `serial_no`.
fn read_item(
    item: &Value,
    api_v3_key: &[u8; 32],
    account: &Account,
    now: i64,
    source: &str,
) -> Result<PlatformCertRecord, String> {
    let serial_no = str_field(item, "serial_no").ok_or("a certificate has no `serial_no`")?;
    let time = |k: &str| {
        str_field(item, k)
            .and_then(parse_rfc3339)
            .ok_or_else(|| format!("certificate {serial_no}: no RFC 3339 `{k}`"))
    };
    let (effective_time, expire_time) = (time("effective_time")?, time("expire_time")?);
    let enc = item
        .get("encrypt_certificate")
        .filter(|e| e.is_object())
        .ok_or_else(|| format!("certificate {serial_no}: no `encrypt_certificate`"))?;
    let field = |k: &str| str_field(enc, k).unwrap_or("");
    if field("algorithm") != ALGORITHM {
        return Err(format!(
            "certificate {serial_no}: algorithm `{}`",
            field("algorithm")
        ));
    }
    let pem = decrypt_resource(
        api_v3_key,
        field("nonce"),
        field("associated_data"),
        field("ciphertext"),
    )
    .map_err(|e| format!("certificate {serial_no}: {e}"))?;
    let pem = String::from_utf8(pem).map_err(|_| format!("certificate {serial_no}: not text"))?;
    let (serial, _, not_before, not_after) =
        parse_pem(&pem).map_err(|e| format!("certificate {serial_no}: {e}"))?;
    if serial != normalise_serial(serial_no) {
        return Err(format!(
            "`serial_no` {serial_no} does not name the certificate it carries ({serial})"
        ));
    }
    Ok(PlatformCertRecord {
        mch_id: account.mch_id.clone(),
        serial,
        pem,
        effective_at: effective_time.max(not_before),
        expire_at: expire_time.min(not_after),
        fetched_at: now,
        source: source.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::wechat_v3::tests::{
        encrypt, headers, keys, self_signed_cert, APPID, KEY, MCHID,
    };
    use serde_json::json;

    /// A `/v3/certificates` answer listing (serial_no, PEM) pairs, signed by `signer`.
    fn answer(items: &[(&str, &str)], signer: usize, signer_serial: &str) -> ProviderAnswer {
        let now = crate::time::now_ms();
        let data: Vec<Value> = items
            .iter()
            .map(|(serial, pem)| {
                let (ciphertext, nonce) = encrypt(KEY, pem.as_bytes(), "certificate");
                json!({
                    "serial_no": serial,
                    "effective_time": "2020-01-01T00:00:00+08:00",
                    "expire_time": "2099-01-01T00:00:00+08:00",
                    "encrypt_certificate": {
                        "algorithm": "AEAD_AES_256_GCM", "nonce": nonce,
                        "associated_data": "certificate", "ciphertext": ciphertext
                    }
                })
            })
            .collect();
        let body = json!({ "data": data }).to_string();
        ProviderAnswer {
            request: "GET /v3/certificates".into(),
            status: 200,
            headers: headers(&keys()[signer], signer_serial, now / 1000, &body),
            body: body.into_bytes(),
            received_at: now,
        }
    }

    fn read(account: &Account, a: &ProviderAnswer) -> Result<Vec<PlatformCertRecord>, String> {
        read_download(account, &account.api_v3_key, a, a.received_at, "test")
    }

    fn account() -> Account {
        Account::new("a", APPID, MCHID, KEY).expect("account")
    }

    #[test]
    fn a_first_download_may_be_signed_by_its_own_certificate() {
        let pem = self_signed_cert(&keys()[0], &[0x1a, 0x01]);
        let got = read(&account(), &answer(&[("1A01", &pem)], 0, "1A01")).expect("accepted");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].serial, "1A01");
        // The certificate's own notAfter (a day) is narrower than WeChat's 2099.
        assert!(got[0].expire_at < crate::time::now_ms() + 2 * 86_400_000);
        // Signed by a key that is not the certificate's: refused.
        assert!(read(&account(), &answer(&[("1A01", &pem)], 1, "1A01")).is_err());
    }

    #[test]
    fn a_serial_no_that_does_not_name_its_certificate_is_refused() {
        let pem = self_signed_cert(&keys()[0], &[0x1a, 0x01]);
        let e = read(&account(), &answer(&[("1A02", &pem)], 0, "1A01")).expect_err("refused");
        assert!(e.contains("does not name"), "{e}");
    }

    #[test]
    fn once_a_certificate_is_trusted_only_its_signature_adds_another() {
        let old = self_signed_cert(&keys()[0], &[0x1a, 0x01]);
        let new = self_signed_cert(&keys()[1], &[0x2b, 0x01]);
        let (trusting, _) = account().with_platform_cert(&old).expect("cert");
        let e = read(&trusting, &answer(&[("2B01", &new)], 1, "2B01")).expect_err("refused");
        assert!(e.contains("already trusts"), "{e}");
        let got = read(
            &trusting,
            &answer(&[("1A01", &old), ("2B01", &new)], 0, "1A01"),
        )
        .expect("signed by the trusted one");
        assert_eq!(got.len(), 2);
    }
}

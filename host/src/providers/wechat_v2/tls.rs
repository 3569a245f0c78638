//! A v2 account's own HTTP clients, built once with the account: one that presents the
//! merchant's API client certificate (`apiclient_cert.pem` + `apiclient_key.pem`), which
//! WeChat requires on `secapi/pay/refund` (mutual TLS), and, when the account names
//! extra CAs for `api_base` (`api_ca_cert`: a TLS-inspecting proxy, a test stand-in), one
//! that trusts them for its other calls.
//!
//! The certificate goes only where WeChat asks for it: the other calls (unified order,
//! query, close) do not present it. An account with neither certificate nor CAs uses
//! the host's shared client. Everything that can be wrong with the files is found here,
//! at start (and by `paynotify config check`), naming the key, never at the first
//! refund: a certificate that is not PEM, a key that is not one, a key that is not the
//! certificate's.

use crate::config::AccountConfig;
use crate::providers::api::CALL_TIMEOUT;

/// The account's own clients.
pub(super) struct AccountHttp {
    /// For every call but refunds, when the account trusts extra CAs; else the shared
    /// client serves them.
    pub plain: Option<reqwest::Client>,
    /// For refunds: presents the client certificate (and trusts the extra CAs).
    pub mtls: Option<reqwest::Client>,
}

/// A value that is set and not blank.
fn set(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.trim().is_empty())
}

use crate::providers::api::error_chain as chain;

/// Builds the account's clients when it has a client certificate or extra CAs; `None`
/// when it has neither (the shared client serves it). `Err` names the key at fault.
pub(super) fn account_http(a: &AccountConfig) -> Result<Option<AccountHttp>, String> {
    let cert = set(&a.client_cert);
    let key = set(&a.client_key);
    let ca = set(&a.api_ca_cert);
    let identity = match (cert, key) {
        (None, None) => None,
        (Some(_), None) => {
            return Err(
                "`client_key` (or client_key_file) is required with `client_cert`: the \
                 certificate's private key (apiclient_key.pem)"
                    .into(),
            )
        }
        (None, Some(_)) => {
            return Err(
                "`client_cert` (or client_cert_file) is required with `client_key`: the \
                 merchant API certificate (apiclient_cert.pem)"
                    .into(),
            )
        }
        (Some(cert), Some(key)) => Some(identity(cert, key)?),
    };
    let roots = match ca {
        None => Vec::new(),
        Some(pem) => {
            let roots = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .map_err(|e| format!("`api_ca_cert` (api_ca_cert_file): {}", chain(&e)))?;
            if roots.is_empty() {
                return Err("`api_ca_cert` (api_ca_cert_file) holds no PEM certificate \
                     (-----BEGIN CERTIFICATE-----)"
                    .into());
            }
            roots
        }
    };
    if identity.is_none() && roots.is_empty() {
        return Ok(None);
    }
    let builder = || {
        roots.iter().fold(
            reqwest::Client::builder().timeout(CALL_TIMEOUT),
            |b, root| b.add_root_certificate(root.clone()),
        )
    };
    let plain = if roots.is_empty() {
        None
    } else {
        Some(
            builder()
                .build()
                .map_err(|e| format!("`api_ca_cert` (api_ca_cert_file): {}", chain(&e)))?,
        )
    };
    let mtls = match identity {
        None => None,
        // rustls checks here that the key is the certificate's.
        Some(id) => Some(builder().identity(id).build().map_err(|e| {
            format!(
                "`client_cert` / `client_key` (or their _file keys) do not make a client \
                 certificate (is the key this certificate's?): {}",
                chain(&e)
            )
        })?),
    };
    Ok(Some(AccountHttp { plain, mtls }))
}

/// The client identity: the certificate (checked to be PEM X.509 first, for a message
/// naming it) and its key in one PEM buffer, as reqwest's rustls backend reads it.
fn identity(cert: &str, key: &str) -> Result<reqwest::Identity, String> {
    let chain_certs = x509_cert::Certificate::load_pem_chain(cert.as_bytes()).map_err(|e| {
        format!(
            "`client_cert` (client_cert_file) is not a PEM certificate \
             (-----BEGIN CERTIFICATE-----, WeChat's apiclient_cert.pem): {e}"
        )
    })?;
    if chain_certs.is_empty() {
        return Err("`client_cert` (client_cert_file) holds no certificate".into());
    }
    if !(key.contains("-----BEGIN") && key.contains("PRIVATE KEY-----")) {
        return Err("`client_key` (client_key_file) is not a PEM private key \
             (-----BEGIN PRIVATE KEY-----, WeChat's apiclient_key.pem)"
            .into());
    }
    reqwest::Identity::from_pem(format!("{}\n{}\n", cert.trim(), key.trim()).as_bytes())
        .map_err(|e| format!("`client_key` (client_key_file): {}", chain(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    use std::str::FromStr;
    use std::time::Duration;
    use x509_cert::builder::{Builder, CertificateBuilder, Profile};
    use x509_cert::der::EncodePem;
    use x509_cert::name::Name;
    use x509_cert::serial_number::SerialNumber;
    use x509_cert::spki::SubjectPublicKeyInfoOwned;
    use x509_cert::time::Validity;

    /// A self-signed P-256 certificate and its PKCS#8 key, PEM.
    fn cert_and_key() -> (String, String) {
        let key = p256::ecdsa::SigningKey::random(&mut rand::thread_rng());
        let spki = SubjectPublicKeyInfoOwned::from_key(*key.verifying_key()).expect("spki");
        let cert = CertificateBuilder::new(
            Profile::Root,
            SerialNumber::new(&[0x01]).expect("serial"),
            Validity::from_now(Duration::from_secs(86_400)).expect("validity"),
            Name::from_str("CN=1900009999,O=Test Merchant,C=CN").expect("name"),
            spki,
            &key,
        )
        .expect("builder")
        .build::<p256::ecdsa::DerSignature>()
        .expect("certificate")
        .to_pem(LineEnding::LF)
        .expect("pem");
        let secret = p256::SecretKey::from(key.as_nonzero_scalar());
        let key_pem = secret.to_pkcs8_pem(LineEnding::LF).expect("key pem");
        (cert, key_pem.to_string())
    }

    fn account(pairs: &[(&str, &str)]) -> AccountConfig {
        let mut t = toml::Table::new();
        t.insert("provider".into(), "wechat-v2".into());
        for (k, v) in pairs {
            t.insert((*k).into(), (*v).into());
        }
        toml::Value::Table(t).try_into().expect("account config")
    }

    #[test]
    fn no_certificate_and_no_ca_use_the_shared_client() {
        assert!(account_http(&account(&[])).expect("ok").is_none());
    }

    #[test]
    fn a_certificate_and_its_key_make_a_client_that_presents_it() {
        let (cert, key) = cert_and_key();
        let http = account_http(&account(&[("client_cert", &cert), ("client_key", &key)]))
            .expect("builds")
            .expect("own client");
        assert!(http.mtls.is_some() && http.plain.is_none());
        // A CA alone: its own client for the calls, none for refunds.
        let http = account_http(&account(&[("api_ca_cert", &cert)]))
            .expect("builds")
            .expect("own client");
        assert!(http.mtls.is_none() && http.plain.is_some());
    }

    #[test]
    fn wrong_files_are_refused_naming_the_key() {
        let (cert, key) = cert_and_key();
        let (_, other_key) = cert_and_key();
        let cases: [(&[(&str, &str)], &str); 6] = [
            (&[("client_cert", &cert)], "`client_key`"),
            (&[("client_key", &key)], "`client_cert`"),
            (
                &[("client_cert", "not a cert"), ("client_key", &key)],
                "`client_cert` (client_cert_file) is not a PEM certificate",
            ),
            (
                &[("client_cert", &cert), ("client_key", &cert)],
                "`client_key` (client_key_file) is not a PEM private key",
            ),
            (
                &[("client_cert", &cert), ("client_key", &other_key)],
                "is the key this certificate's?",
            ),
            (&[("api_ca_cert", "nothing here")], "`api_ca_cert`"),
        ];
        for (pairs, expected) in cases {
            let e = account_http(&account(pairs)).err().expect("refused");
            assert!(e.contains(expected), "{pairs:?}: {e}");
        }
    }
}

//! `crypto`: hashes and HMAC for anyone; AES and signing keyed by the merchant account's
//! notify key only when the manifest grants them.
//!
//! Configure: `crypto = true` grants the keyed operations. Prepare: the account's notify
//! key ([`CallBuilder::account`](super::CallBuilder::account)). Link: interface `crypto`.

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use wasmtime::component::{HasSelf, Linker};

use super::{CallContext, Capability, Getter};
use crate::plugins::world::since_v0_1::bindings::paynotify::plugin::crypto as wit;

/// How a refused keyed `crypto` call's `invalid` text starts (the SDKs match on it).
pub const CRYPTO_DENIED_PREFIX: &str = "denied: ";

/// The `crypto` capability.
pub(super) struct Crypto;

impl Capability for Crypto {
    fn link<T: Send + 'static>(linker: &mut Linker<T>, get: Getter<T>) -> wasmtime::Result<()> {
        wit::add_to_linker::<T, HasSelf<CallContext>>(linker, get)
    }
}

type Aes256CbcEnc = cbc::Encryptor<aes::Aes256>;
type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;

/// AES-256-CBC, PKCS#7, random IV; base64 of `iv || ciphertext`.
pub fn aes_encrypt(key: &[u8; 32], plaintext: &[u8]) -> String {
    let iv: [u8; 16] = rand::random();
    let ct = Aes256CbcEnc::new(key.into(), &iv.into()).encrypt_padded_vec_mut::<Pkcs7>(plaintext);
    let mut out = iv.to_vec();
    out.extend_from_slice(&ct);
    base64::engine::general_purpose::STANDARD.encode(out)
}

/// Inverse of [`aes_encrypt`].
pub fn aes_decrypt(key: &[u8; 32], b64: &str) -> Result<Vec<u8>, String> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    if raw.len() < 32 || raw.len() % 16 != 0 {
        return Err("ciphertext must be a 16-byte IV followed by whole AES blocks".into());
    }
    let (iv, ct) = raw.split_at(16);
    let iv: [u8; 16] = iv.try_into().map_err(|_| "bad IV".to_owned())?;
    Aes256CbcDec::new(key.into(), &iv.into())
        .decrypt_padded_vec_mut::<Pkcs7>(ct)
        .map_err(|_| "does not decrypt with this key (bad padding)".to_owned())
}

/// HMAC-SHA256.
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

impl CallContext {
    /// The notify key for a keyed `crypto` operation, if the manifest grants them.
    fn keyed_crypto(&self) -> Result<[u8; 32], wit::CryptoError> {
        if !self.manifest.crypto {
            // The world's `crypto-error` has no `denied` case; adding one would break every
            // handler built against this world version, so the refusal is an `invalid` whose
            // text starts `denied: `, which the SDKs report as `crypto-denied`.
            return Err(wit::CryptoError::Invalid(format!(
                "{CRYPTO_DENIED_PREFIX}crypto keyed by the account's notify key is not granted \
                 to plugin `{p}` (set `crypto = true` in {p}.toml)",
                p = self.tags.plugin
            )));
        }
        self.notify_key.ok_or(wit::CryptoError::NoKey)
    }
}

impl wit::Host for CallContext {
    async fn aes_encrypt(&mut self, plaintext: Vec<u8>) -> Result<String, wit::CryptoError> {
        let key = self.keyed_crypto()?;
        Ok(aes_encrypt(&key, &plaintext))
    }

    async fn aes_decrypt(&mut self, ciphertext_b64: String) -> Result<Vec<u8>, wit::CryptoError> {
        let key = self.keyed_crypto()?;
        aes_decrypt(&key, &ciphertext_b64).map_err(wit::CryptoError::Invalid)
    }

    async fn sign(&mut self, data: Vec<u8>) -> Result<String, wit::CryptoError> {
        let key = self.keyed_crypto()?;
        Ok(hex::encode(hmac_sha256(&key, &data)))
    }

    async fn hmac_sha256(&mut self, key: Vec<u8>, data: Vec<u8>) -> Vec<u8> {
        hmac_sha256(&key, &data)
    }

    async fn sha256(&mut self, data: Vec<u8>) -> Vec<u8> {
        Sha256::digest(&data).to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_notify_key;

    #[test]
    fn aes_round_trips_and_rejects_garbage() {
        let key = parse_notify_key(&"ab".repeat(32)).expect("hex key");
        let ct = aes_encrypt(&key, b"{\"out_trade_no\":\"1\"}");
        assert_eq!(
            aes_decrypt(&key, &ct).expect("decrypts"),
            b"{\"out_trade_no\":\"1\"}"
        );
        let other = parse_notify_key("0123456789abcdef0123456789abcdef").expect("text key");
        // A wrong key either fails the padding check or yields other bytes, never the plaintext.
        assert_ne!(
            aes_decrypt(&other, &ct).ok(),
            Some(b"{\"out_trade_no\":\"1\"}".to_vec())
        );
        assert!(aes_decrypt(&key, "!!!").is_err());
        assert!(aes_decrypt(&key, "AAAA").is_err());
        assert!(parse_notify_key("short").is_none());
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}

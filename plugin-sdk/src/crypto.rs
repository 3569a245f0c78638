//! Cryptography keyed by the merchant account's `notify_key`, so a handler can talk to the
//! merchant's own backend the way vk-uni-pay's `vkPay.crypto.aes` does. The key never enters
//! the handler.
//!
//! The keyed operations ([`aes_encrypt`], [`aes_decrypt`], [`sign`]) need `crypto = true` in
//! the handler's manifest; without it they fail with [`CryptoError::Denied`] (code
//! `crypto-denied`). [`hmac_sha256`] and [`sha256`] need no grant.
//!
//! ```no_run
//! use paynotify_plugin_sdk::{crypto, http};
//!
//! # fn demo() -> Result<(), paynotify_plugin_sdk::Error> {
//! // Seed style 3, from run_task: POST the order encrypted; the backend decrypts with the
//! // same key.
//! let encrypted = crypto::aes_encrypt_json(&serde_json::json!({ "out_trade_no": "T1" }))?;
//! let res = http::post_json("https://backend.example.com/paid", &serde_json::json!({
//!     "encrypted_data": encrypted,
//! }))?;
//! # Ok(()) }
//! ```

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::bindings::paynotify::plugin::crypto as raw;
use crate::Error;

/// Why a keyed operation failed; `?` turns it into an [`Error`] with code
/// `crypto-denied`, `crypto-no-key` or `crypto-invalid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CryptoError {
    /// The manifest does not grant the notify key (`crypto = true`).
    Denied(String),
    /// The merchant account has no notify key configured.
    NoKey,
    /// Bad base64, bad padding, a ciphertext that does not decrypt, or a value that does not
    /// serialise.
    Invalid(String),
}

impl fmt::Display for CryptoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CryptoError::Denied(m) => write!(f, "denied: {m}"),
            CryptoError::NoKey => f.write_str("the merchant account has no notify key"),
            CryptoError::Invalid(m) => write!(f, "invalid: {m}"),
        }
    }
}

impl std::error::Error for CryptoError {}

impl From<raw::CryptoError> for CryptoError {
    fn from(e: raw::CryptoError) -> Self {
        match e {
            raw::CryptoError::NoKey => CryptoError::NoKey,
            // The world has no `denied` case for crypto (adding one would change its shape):
            // the host reports a missing grant as `invalid("denied: ...")`.
            raw::CryptoError::Invalid(m) => match m.strip_prefix(DENIED_PREFIX) {
                Some(why) => CryptoError::Denied(why.to_owned()),
                None => CryptoError::Invalid(m),
            },
        }
    }
}

/// How the host's `invalid` text starts when the manifest does not grant keyed crypto.
const DENIED_PREFIX: &str = "denied: ";

/// AES-256-CBC with the notify key, PKCS#7 padding, a random IV prepended; returns base64 of
/// `iv || ciphertext`.
pub fn aes_encrypt(plaintext: &[u8]) -> Result<String, CryptoError> {
    Ok(raw::aes_encrypt(plaintext)?)
}

/// [`aes_encrypt`] of `value` serialised as JSON.
pub fn aes_encrypt_json<T: Serialize + ?Sized>(value: &T) -> Result<String, CryptoError> {
    let json = serde_json::to_vec(value)
        .map_err(|e| CryptoError::Invalid(format!("value does not serialise as JSON: {e}")))?;
    aes_encrypt(&json)
}

/// Inverse of [`aes_encrypt`]: base64 of `iv || ciphertext` to plaintext.
pub fn aes_decrypt(ciphertext_b64: &str) -> Result<Vec<u8>, CryptoError> {
    Ok(raw::aes_decrypt(ciphertext_b64)?)
}

/// [`aes_decrypt`], then the plaintext deserialised from JSON into `T` (code `invalid-json`
/// if it does not fit).
pub fn aes_decrypt_json<T: DeserializeOwned>(ciphertext_b64: &str) -> Result<T, Error> {
    let plaintext = aes_decrypt(ciphertext_b64)?;
    Ok(serde_json::from_slice(&plaintext)?)
}

/// HMAC-SHA256 of `data` keyed by the notify key, as lowercase hex.
pub fn sign(data: &[u8]) -> Result<String, CryptoError> {
    Ok(raw::sign(data)?)
}

/// HMAC-SHA256 of `data` with an explicit `key` (32 raw bytes; see [`to_hex`]).
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    raw::hmac_sha256(key, data)
}

/// SHA-256 of `data` (32 raw bytes; see [`to_hex`]).
pub fn sha256(data: &[u8]) -> Vec<u8> {
    raw::sha256(data)
}

/// Lowercase hex of `bytes`.
///
/// ```
/// assert_eq!(paynotify_plugin_sdk::crypto::to_hex(&[0x0f, 0xa0]), "0fa0");
/// ```
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_from_the_host_is_denied() {
        let e = CryptoError::from(raw::CryptoError::Invalid(
            "denied: crypto ... (set `crypto = true` in x.toml)".into(),
        ));
        assert_eq!(
            e,
            CryptoError::Denied("crypto ... (set `crypto = true` in x.toml)".into())
        );
        assert_eq!(Error::from(e).code(), "crypto-denied");
        let e = CryptoError::from(raw::CryptoError::Invalid("bad padding".into()));
        assert_eq!(Error::from(e).code(), "crypto-invalid");
    }
}

//! WeChat's message-push crypto (消息加解密), the same for Official Accounts, mini programs
//! and WeCom: the SHA-1 signatures of the URL check and of plaintext and safe mode, and
//! safe mode's AES-256-CBC `Encrypt` field.
//!
//! - signature: lower-case hex SHA-1 of the parts sorted and concatenated
//!   (`token`, `timestamp`, `nonce`; safe mode's `msg_signature` adds `Encrypt`);
//! - `Encrypt`: base64 of AES-256-CBC with key = base64(EncodingAESKey + "="), IV = the
//!   key's first 16 bytes, PKCS#7 padding to 32-byte blocks, over
//!   random(16) ‖ big-endian u32 length ‖ message ‖ appid.

use aes::cipher::block_padding::NoPadding;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use sha1::{Digest, Sha1};

use crate::providers::common::ct_eq;

/// Length of an EncodingAESKey as the console shows it.
pub const ENCODING_AES_KEY_LEN: usize = 43;

/// The block size WeChat pads to (its SDKs use 32, not AES's 16).
const PAD_BLOCK: usize = 32;

/// How an EncodingAESKey is decoded: WeChat draws its 43 characters at random, so the
/// last one's two low bits are usually not zero, which strict base64 refuses.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
);

type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;
type Aes256CbcEnc = cbc::Encryptor<aes::Aes256>;

/// Why a safe-mode `Encrypt` field could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// Not base64.
    #[error("Encrypt is not base64: {0}")]
    Base64(String),
    /// Not a whole number of AES blocks.
    #[error("Encrypt is {0} bytes, not a non-empty multiple of 16")]
    Length(usize),
    /// The padding is not PKCS#7 to 32-byte blocks.
    #[error("Encrypt does not decrypt to PKCS#7 padding (wrong EncodingAESKey or tampered)")]
    Padding,
    /// The length prefix does not fit the decrypted bytes.
    #[error("Encrypt's message length {0} does not fit the {1} decrypted bytes")]
    MessageLength(usize, usize),
    /// The trailing appid is not text.
    #[error("Encrypt's trailing appid is not UTF-8")]
    Appid,
}

/// The lower-case hex SHA-1 of `parts` sorted (bytewise) and concatenated.
pub fn signature(parts: &[&str]) -> String {
    let mut sorted = parts.to_vec();
    sorted.sort_unstable();
    let mut h = Sha1::new();
    for p in sorted {
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Whether `given` (hex, either case) is the signature of `parts`, compared in constant time.
pub fn signature_matches(given: &str, parts: &[&str]) -> bool {
    ct_eq(
        given.trim().to_ascii_lowercase().as_bytes(),
        signature(parts).as_bytes(),
    )
}

/// A decrypted `Encrypt` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decrypted {
    /// The message (the event's JSON).
    pub message: Vec<u8>,
    /// The appid WeChat appended: the mini program's.
    pub appid: String,
}

/// The AES key an EncodingAESKey stands for.
#[derive(Clone)]
pub struct AesKey([u8; 32]);

impl std::fmt::Debug for AesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AesKey(***)")
    }
}

impl AesKey {
    /// Reads the 43-character EncodingAESKey of the console; `Err` says what is wrong.
    pub fn parse(encoding_aes_key: &str) -> Result<AesKey, String> {
        let k = encoding_aes_key.trim();
        if k.len() != ENCODING_AES_KEY_LEN
            || !k
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
        {
            return Err(format!(
                "must be the {ENCODING_AES_KEY_LEN} letters and digits of the EncodingAESKey (消息加密密钥), not {} characters",
                k.chars().count()
            ));
        }
        let bytes = LENIENT
            .decode(format!("{k}="))
            .map_err(|e| format!("is not base64: {e}"))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "does not decode to 32 bytes".to_owned())?;
        Ok(AesKey(key))
    }

    /// Decrypts a safe-mode `Encrypt` field.
    pub fn decrypt(&self, encrypt: &str) -> Result<Decrypted, CryptoError> {
        let mut buf = STANDARD
            .decode(encrypt.trim())
            .map_err(|e| CryptoError::Base64(e.to_string()))?;
        if buf.is_empty() || buf.len() % 16 != 0 {
            return Err(CryptoError::Length(buf.len()));
        }
        let plain = Aes256CbcDec::new(&self.0.into(), self.0[..16].into())
            .decrypt_padded_mut::<NoPadding>(&mut buf)
            .map_err(|_| CryptoError::Padding)?;
        let pad = usize::from(*plain.last().ok_or(CryptoError::Padding)?);
        if pad == 0 || pad > PAD_BLOCK || pad > plain.len() {
            return Err(CryptoError::Padding);
        }
        let (content, padding) = plain.split_at(plain.len() - pad);
        if padding.iter().any(|b| usize::from(*b) != pad) {
            return Err(CryptoError::Padding);
        }
        // random(16) ‖ len(4, big-endian) ‖ message ‖ appid
        if content.len() < 20 {
            return Err(CryptoError::MessageLength(0, content.len()));
        }
        let len_bytes: [u8; 4] = content[16..20]
            .try_into()
            .map_err(|_| CryptoError::MessageLength(0, content.len()))?;
        let len = usize::try_from(u32::from_be_bytes(len_bytes)).unwrap_or(usize::MAX);
        let rest = &content[20..];
        if len > rest.len() {
            return Err(CryptoError::MessageLength(len, content.len()));
        }
        let (message, appid) = rest.split_at(len);
        let appid = std::str::from_utf8(appid).map_err(|_| CryptoError::Appid)?;
        Ok(Decrypted {
            message: message.to_vec(),
            appid: appid.to_owned(),
        })
    }

    /// Encrypts `message` for `appid` as WeChat does, with the given 16 random bytes
    /// (for relays, tools and tests).
    pub fn encrypt(&self, random: [u8; 16], message: &[u8], appid: &str) -> String {
        let len = u32::try_from(message.len()).unwrap_or(u32::MAX);
        let mut plain = Vec::with_capacity(message.len() + appid.len() + 20 + PAD_BLOCK);
        plain.extend_from_slice(&random);
        plain.extend_from_slice(&len.to_be_bytes());
        plain.extend_from_slice(message);
        plain.extend_from_slice(appid.as_bytes());
        let pad = PAD_BLOCK - plain.len() % PAD_BLOCK;
        // `pad` is 1..=32, so it fits a byte.
        plain.extend(std::iter::repeat_n(pad as u8, pad));
        let n = plain.len();
        let ct = Aes256CbcEnc::new(&self.0.into(), self.0[..16].into())
            .encrypt_padded_mut::<NoPadding>(&mut plain, n)
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        STANDARD.encode(ct)
    }
}

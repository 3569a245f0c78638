//! WeChat mini-program message push, written independently of the host's verifier: the
//! SHA-1 signatures and safe mode's AES-256-CBC `Encrypt` as WeChat's published
//! algorithm (消息加解密) and its SDKs make them, and the virtual-payment events.

use aes::cipher::block_padding::NoPadding;
use aes::cipher::{BlockEncryptMut, KeyIvInit};
use base64::Engine as _;
use serde_json::{json, Value};
use sha1::{Digest, Sha1};

/// Plaintext account `plain`'s appid.
pub const APPID_PLAIN: &str = "wx1111111111111111";
/// Its original id (`ToUserName`).
pub const ORIGINAL_ID_PLAIN: &str = "gh_111111111111";
/// Its push Token.
pub const TOKEN_PLAIN: &str = "plaintoken123";
/// Safe-mode account `safe`'s appid.
pub const APPID_SAFE: &str = "wx2222222222222222";
/// Its original id.
pub const ORIGINAL_ID_SAFE: &str = "gh_222222222222";
/// Its push Token.
pub const TOKEN_SAFE: &str = "safetoken456";

/// A fresh EncodingAESKey: 43 random letters and digits, as the console generates them.
pub fn new_encoding_aes_key() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..43)
        .map(|_| char::from(ALPHABET[rand::random::<usize>() % ALPHABET.len()]))
        .collect()
}

/// Lower-case hex SHA-1 of the parts, sorted and concatenated.
pub fn sha1_signature(parts: &[&str]) -> String {
    let mut v: Vec<&str> = parts.to_vec();
    v.sort();
    hex::encode(Sha1::digest(v.concat().as_bytes()))
}

/// The AES key of an EncodingAESKey: base64 of the key and `=`, its last bits ignored
/// (as WeChat's Java SDK's commons-codec decoder does).
pub fn aes_key(encoding_aes_key: &str) -> [u8; 32] {
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
    );
    engine
        .decode(format!("{encoding_aes_key}="))
        .expect("base64")
        .try_into()
        .expect("32 bytes")
}

/// Safe mode's `Encrypt` of `message` for `appid`.
pub fn encrypt(encoding_aes_key: &str, message: &str, appid: &str) -> String {
    let key = aes_key(encoding_aes_key);
    let mut plain = rand::random::<[u8; 16]>().to_vec();
    plain.extend_from_slice(&(message.len() as u32).to_be_bytes());
    plain.extend_from_slice(message.as_bytes());
    plain.extend_from_slice(appid.as_bytes());
    let pad = 32 - plain.len() % 32;
    plain.extend(std::iter::repeat_n(pad as u8, pad));
    let n = plain.len();
    let ct = cbc::Encryptor::<aes::Aes256>::new(&key.into(), key[..16].into())
        .encrypt_padded_mut::<NoPadding>(&mut plain, n)
        .expect("whole blocks")
        .to_vec();
    base64::engine::general_purpose::STANDARD.encode(ct)
}

/// The query string of a plaintext push at `timestamp`.
pub fn plain_query(token: &str, timestamp: i64) -> String {
    let nonce = rand::random::<u32>().to_string();
    let ts = timestamp.to_string();
    format!(
        "signature={}&timestamp={ts}&nonce={nonce}&openid=oXpay0000000000000000000001",
        sha1_signature(&[token, &ts, &nonce])
    )
}

/// The body and query string of a safe-mode push of `event` at `timestamp`.
pub fn safe_push(
    token: &str,
    encoding_aes_key: &str,
    appid: &str,
    to_user: &str,
    event: &Value,
    timestamp: i64,
) -> (String, String) {
    let encrypt = encrypt(encoding_aes_key, &event.to_string(), appid);
    let nonce = rand::random::<u32>().to_string();
    let ts = timestamp.to_string();
    let query = format!(
        "signature={}&timestamp={ts}&nonce={nonce}&openid=oXpay0000000000000000000001&encrypt_type=aes&msg_signature={}",
        sha1_signature(&[token, &ts, &nonce]),
        sha1_signature(&[token, &ts, &nonce, &encrypt]),
    );
    let body = json!({ "ToUserName": to_user, "Encrypt": encrypt }).to_string();
    (body, query)
}

/// The URL check's query string; `echostr` is what must come back.
pub fn url_check_query(token: &str, timestamp: i64, echostr: &str) -> String {
    let nonce = "1514711492";
    let ts = timestamp.to_string();
    format!(
        "signature={}&timestamp={ts}&nonce={nonce}&echostr={echostr}",
        sha1_signature(&[token, &ts, nonce])
    )
}

/// An `xpay_goods_deliver_notify` event (`env` 0 production, 1 sandbox).
pub fn goods_event(to_user: &str, out_trade_no: &str, fen: i64, env: i64, tx: &str) -> Value {
    json!({
        "ToUserName": to_user,
        "FromUserName": "oXpay0000000000000000000001",
        "CreateTime": crate::wechat_v3::now(),
        "MsgType": "event",
        "Event": "xpay_goods_deliver_notify",
        "OpenId": "oXpay0000000000000000000001",
        "OutTradeNo": out_trade_no,
        "Env": env,
        "WeChatPayInfo": {
            "MchOrderNo": format!("M{out_trade_no}"),
            "TransactionId": tx,
            "PaidTime": crate::wechat_v3::now() - 3
        },
        "GoodsInfo": {
            "ProductId": "recharge_1",
            "Quantity": 1,
            "OrigPrice": fen,
            "ActualPrice": fen,
            "Attach": "attach-1"
        }
    })
}

/// An `xpay_coin_pay_notify` event.
pub fn coin_event(to_user: &str, out_trade_no: &str, fen: i64, env: i64, tx: &str) -> Value {
    let mut e = goods_event(to_user, out_trade_no, fen, env, tx);
    e["Event"] = "xpay_coin_pay_notify".into();
    let o = e.as_object_mut().expect("object");
    let goods = o.remove("GoodsInfo").expect("GoodsInfo");
    o.insert(
        "CoinInfo".into(),
        json!({ "Quantity": 10, "OrigPrice": goods["OrigPrice"], "ActualPrice": goods["ActualPrice"], "Attach": "coins" }),
    );
    e
}

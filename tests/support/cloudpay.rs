//! A CloudPay relay written independently of the host's verifier: what the merchant's
//! cloud function does with the callback event before forwarding it (HMAC-SHA256 over
//! `timestamp + "." + body` with the shared secret).

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

/// Account `a`'s sub-merchant id.
pub const SUB_MCH_ID_A: &str = "1900000109";
/// Account `a`'s relay secret (generated for tests; not a real secret).
pub const SECRET_A: &str = "cloudpay-relay-secret-a-00000000";
/// Account `b`'s sub-merchant id.
pub const SUB_MCH_ID_B: &str = "1900000202";
/// Account `b`'s relay secret.
pub const SECRET_B: &str = "cloudpay-relay-secret-b-00000000";

/// A payment callback event with the fields CloudPay hands the callback function.
pub fn event(
    sub_mch_id: &str,
    out_trade_no: &str,
    total_fee: i64,
    transaction_id: &str,
    result_code: &str,
) -> Value {
    json!({
        "appid": "wxd930ea5d5a258f4f",
        "bankType": "OTHERS",
        "cashFee": total_fee,
        "feeType": "CNY",
        "isSubscribe": "N",
        "mchId": "1230000109",
        "nonceStr": hex::encode(rand::random::<[u8; 16]>()),
        "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
        "outTradeNo": out_trade_no,
        "resultCode": result_code,
        "returnCode": "SUCCESS",
        "subAppid": "wx2421b1c4370ec43b",
        "subIsSubscribe": "N",
        "subMchId": sub_mch_id,
        "subOpenid": "oUpF8uN95-Ptaags6E_roPHg7AG0",
        "timeEnd": "20260101080000",
        "totalFee": total_fee,
        "tradeType": "JSAPI",
        "transactionId": transaction_id,
        "userInfo": { "appId": "wx2421b1c4370ec43b", "openId": "oUpF8uN95-Ptaags6E_roPHg7AG0" }
    })
}

/// The relay's headers for `body` at `timestamp` (unix seconds).
pub fn headers(secret: &str, timestamp: i64, body: &str) -> Vec<(String, String)> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("HMAC key");
    mac.update(format!("{timestamp}.{body}").as_bytes());
    vec![
        ("X-Paynotify-Timestamp".into(), timestamp.to_string()),
        (
            "X-Paynotify-Signature".into(),
            format!("v1={}", hex::encode(mac.finalize().into_bytes())),
        ),
    ]
}

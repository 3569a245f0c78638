//! What a verified message-push event reports: the two payment events of virtual payment
//! (`xpay_goods_deliver_notify`, `xpay_coin_pay_notify`) become payments; every other
//! event or message is acknowledged and changes nothing.
//!
//! Shapes as WeChat documents them (小程序虚拟支付, 道具发货推送 / 代币支付推送) and
//! Senparc's WxOpen SDK models them (`RequestMessageEvent_XPayGoodsDeliverNotify`,
//! `RequestMessageEvent_XPayCoinPayNotify`): `OpenId`, `OutTradeNo`, `Env` (0 production,
//! 1 sandbox), `WeChatPayInfo` {`MchOrderNo`, `TransactionId`, `PaidTime` (unix s)},
//! `GoodsInfo` {`ProductId`, `Quantity`, `OrigPrice`, `ActualPrice` (fen), `Attach`} or
//! `CoinInfo` {`Quantity`, `OrigPrice`, `ActualPrice`, `Attach`}.

use serde_json::Value;

use super::XpayEnv;
use crate::providers::json::{optional_str, required_text};
use crate::providers::{NoticeKind, Payment, Rejection};

/// Goods delivered after payment (道具直购).
pub const GOODS_DELIVER: &str = "xpay_goods_deliver_notify";
/// Tokens bought (代币充值).
pub const COIN_PAY: &str = "xpay_coin_pay_notify";

/// The order an event names (empty when none) and what it reports; `env` is the
/// environment the account takes payments from.
pub(super) fn read(
    event: &Value,
    account: &str,
    env: XpayEnv,
) -> Result<(String, NoticeKind), Rejection> {
    let msg_type = optional_str(event, "MsgType")?;
    let name = optional_str(event, "Event")?;
    let info_key = match (msg_type, name) {
        ("event", GOODS_DELIVER) => "GoodsInfo",
        ("event", COIN_PAY) => "CoinInfo",
        _ => {
            // Another event (refunds, complaints…) or a customer-service message:
            // recorded and acknowledged, changes nothing here.
            let state = if name.is_empty() {
                format!("MsgType {msg_type}")
            } else {
                name.to_owned()
            };
            let order = optional_str(event, "OutTradeNo")?.to_owned();
            return Ok((order, NoticeKind::NotPaid { state }));
        }
    };
    let out_trade_no = required_text(event, "OutTradeNo")?.to_owned();
    let event_env = match integer(event, "Env")? {
        Some(0) => XpayEnv::Production,
        Some(1) => XpayEnv::Sandbox,
        Some(other) => {
            return Err(Rejection::Malformed(format!(
                "Env {other} is neither 0 (production) nor 1 (sandbox)"
            )))
        }
        None => return Err(Rejection::Malformed("no Env".into())),
    };
    if event_env != env {
        return Err(Rejection::AccountMismatch(format!(
            "Env {} ({}) but account `{account}` takes {} payments (Env {})",
            event_env.code(),
            event_env.as_str(),
            env.as_str(),
            env.code()
        )));
    }
    let info = event
        .get(info_key)
        .filter(|v| v.is_object())
        .ok_or_else(|| Rejection::Malformed(format!("no {info_key} object")))?;
    let amount = integer(info, "ActualPrice")?
        .ok_or_else(|| Rejection::Malformed(format!("no {info_key}.ActualPrice")))?;
    let pay_info = match event.get("WeChatPayInfo") {
        None | Some(Value::Null) => None,
        Some(v) if v.is_object() => Some(v),
        Some(_) => {
            return Err(Rejection::Malformed(
                "WeChatPayInfo is not an object".into(),
            ))
        }
    };
    let transaction_id = match pay_info {
        Some(p) => optional_str(p, "TransactionId")?,
        None => "",
    };
    // Paid through another channel than WeChat Pay there is no TransactionId: the order
    // number is the one stable id (WeChat pushes the same order again, never another).
    let transaction_id = if transaction_id.is_empty() {
        format!("xpay:{out_trade_no}")
    } else {
        transaction_id.to_owned()
    };
    let paid_time = match pay_info {
        Some(p) => integer(p, "PaidTime")?.filter(|t| *t > 0),
        None => None,
    };
    let paid_at = paid_time
        .or(integer(event, "CreateTime")?.filter(|t| *t > 0))
        .and_then(|s| s.checked_mul(1000));
    Ok((
        out_trade_no,
        NoticeKind::Paid(Payment {
            transaction_id,
            amount,
            paid_at,
        }),
    ))
}

/// A non-negative integer field, as a JSON number or a string of digits.
fn integer(v: &Value, key: &str) -> Result<Option<i64>, Rejection> {
    let bad = || Rejection::Malformed(format!("{key} is not a non-negative integer"));
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_i64().filter(|n| *n >= 0).map(Some).ok_or_else(bad),
        Some(Value::String(s))
            if !s.is_empty() && s.len() <= 15 && s.bytes().all(|b| b.is_ascii_digit()) =>
        {
            s.parse().map(Some).map_err(|_| bad())
        }
        Some(_) => Err(bad()),
    }
}

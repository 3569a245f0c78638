//! `vip`: a VIP membership purchase.
//!
//! The order is created with `custom = {"months": 3}`. When it is paid,
//! `users/{user_id}.vip_expire` (unix milliseconds) moves to `months` calendar months after
//! whichever is later: the current `vip_expire` (renewing early loses nothing) or the time of
//! payment (an expired membership restarts from now). Other fields of the user survive.

mod calendar;

use std::time::{SystemTime, UNIX_EPOCH};

use paynotify_plugin_sdk::{db, export_handler, log, Error, Handler, Notification, Order, Outcome};
use serde::Deserialize;
use serde_json::json;

/// Calendar months are counted on the wall clock of China Standard Time (UTC+8), the zone of
/// the providers and their users: one month bought at 01:00 on 31 March Beijing time ends
/// on 30 April, even though it was still 30 March in UTC. Change it if your users live
/// elsewhere.
const CALENDAR_UTC_OFFSET_MS: i64 = 8 * 60 * 60 * 1000;

/// A sanity cap on `custom.months` (100 years).
const MAX_MONTHS: u32 = 1200;

/// The order's `custom` JSON.
#[derive(Debug, Deserialize)]
struct Custom {
    months: u32,
}

/// The part of `users/{user_id}` this handler reads.
#[derive(Debug, Deserialize)]
struct User {
    /// Unix milliseconds; absent for a user who was never VIP.
    vip_expire: Option<i64>,
}

/// Reads and checks the number of months bought.
fn months_bought(order: &Order) -> Result<u32, Error> {
    let Custom { months } = order.custom()?;
    if !(1..=MAX_MONTHS).contains(&months) {
        return Err(Error::new(
            "invalid-custom",
            format!(
                "order {}: months must be between 1 and {MAX_MONTHS}, got {months}",
                order.out_trade_no
            ),
        ));
    }
    if order.user_id.is_empty() {
        return Err(Error::new(
            "invalid-order",
            format!("order {} has no user_id", order.out_trade_no),
        ));
    }
    Ok(months)
}

/// When the order was paid, in unix milliseconds: the provider's `paid_at` if it gave one,
/// else now.
fn paid_at_ms(notification: &Notification) -> Result<i64, Error> {
    if let Some(paid_at) = &notification.paid_at {
        match calendar::parse_rfc3339_ms(paid_at) {
            Some(ms) => return Ok(ms),
            None => log::warn(format!(
                "paid_at {paid_at:?} is not RFC 3339; counting from the current time"
            )),
        }
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| Error::new("clock", format!("system clock is before 1970: {e}")))?;
    i64::try_from(now.as_millis()).map_err(|e| Error::new("clock", e.to_string()))
}

/// The new `vip_expire`: `months` after the later of the current expiry and the payment.
fn extend(current: Option<i64>, paid_at_ms: i64, months: u32) -> Result<i64, Error> {
    let start = current.map_or(paid_at_ms, |expire| expire.max(paid_at_ms));
    calendar::add_months(start, months, CALENDAR_UTC_OFFSET_MS).ok_or_else(|| {
        Error::new(
            "vip-expire-out-of-range",
            format!("vip_expire {start} + {months} months is outside the years 1..=9999"),
        )
    })
}

struct Vip;

impl Handler for Vip {
    const NAME: &'static str = "vip";

    fn handle_paid(order: Order, notification: Notification) -> Result<Outcome, Error> {
        let months = months_bought(&order)?;
        let paid_at = paid_at_ms(&notification)?;

        let user = db::collection("users").doc(&order.user_id);
        let current = user.get::<User>()?.and_then(|u| u.vip_expire);
        let vip_expire = extend(current, paid_at, months)?;
        user.merge(&json!({ "vip_expire": vip_expire }))?;

        log::info(format!(
            "user {} is VIP until {vip_expire} (+{months} months)",
            order.user_id
        ));
        Ok(json!({ "vip_expire": vip_expire }).into())
    }
}

export_handler!(Vip);

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc3339: &str) -> i64 {
        calendar::parse_rfc3339_ms(rfc3339).expect("test timestamp")
    }

    fn order(custom: &str) -> Order {
        Order {
            out_trade_no: "V1".into(),
            order_type: "vip".into(),
            provider: "alipay".into(),
            account: "main".into(),
            total_fee: 3000,
            user_id: "u1".into(),
            custom: custom.into(),
            transaction_id: "tx1".into(),
        }
    }

    fn notification(paid_at: Option<&str>) -> Notification {
        Notification {
            id: 1,
            provider: "alipay".into(),
            account: "main".into(),
            out_trade_no: "V1".into(),
            transaction_id: "tx1".into(),
            amount: 3000,
            paid_at: paid_at.map(str::to_string),
            fields: Vec::new(),
        }
    }

    #[test]
    fn reads_months() {
        assert_eq!(months_bought(&order(r#"{"months":3}"#)), Ok(3));
        for bad in [
            "",
            "{}",
            r#"{"months":0}"#,
            r#"{"months":-1}"#,
            r#"{"months":1.5}"#,
            r#"{"months":1201}"#,
        ] {
            let err = months_bought(&order(bad)).unwrap_err();
            assert_eq!(err.code(), "invalid-custom", "{bad}: {err}");
        }
    }

    #[test]
    fn new_member_starts_at_payment() {
        let paid = ms("2024-01-31T10:00:00+08:00");
        assert_eq!(extend(None, paid, 1), Ok(ms("2024-02-29T10:00:00+08:00")));
    }

    #[test]
    fn active_member_extends_from_current_expiry() {
        let paid = ms("2024-01-10T10:00:00+08:00");
        let current = ms("2024-03-31T12:00:00+08:00");
        assert_eq!(
            extend(Some(current), paid, 1),
            Ok(ms("2024-04-30T12:00:00+08:00"))
        );
        assert_eq!(
            extend(Some(current), paid, 11),
            Ok(ms("2025-02-28T12:00:00+08:00"))
        );
    }

    #[test]
    fn expired_member_restarts_at_payment() {
        let paid = ms("2024-05-31T09:00:00+08:00");
        let expired = ms("2023-01-01T00:00:00+08:00");
        assert_eq!(
            extend(Some(expired), paid, 1),
            Ok(ms("2024-06-30T09:00:00+08:00"))
        );
    }

    #[test]
    fn months_follow_beijing_dates() {
        // 01:00 on 31 March in Beijing (still 30 March in UTC) + 1 month = 30 April, Beijing.
        let paid = ms("2024-03-30T17:00:00Z");
        assert_eq!(extend(None, paid, 1), Ok(ms("2024-04-30T01:00:00+08:00")));
    }

    #[test]
    fn absurd_expiry_is_an_error() {
        assert_eq!(
            extend(Some(i64::MAX), 0, 1).unwrap_err().code(),
            "vip-expire-out-of-range"
        );
    }

    #[test]
    fn paid_at_comes_from_the_notification() {
        let n = notification(Some("2024-01-31T10:00:00+08:00"));
        assert_eq!(paid_at_ms(&n), Ok(ms("2024-01-31T02:00:00Z")));
    }

    #[test]
    fn missing_paid_at_uses_the_clock() {
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64);
        let got = paid_at_ms(&notification(None)).expect("clock");
        assert!(got >= before.expect("clock"));
    }
}

//! How the console shows amounts and times: the way a Chinese merchant reads them.
//!
//! Amounts are stored in fen and shown in yuan with two decimals (`¥12.34`). Times are
//! stored as unix milliseconds and shown in Asia/Shanghai time, which has been UTC+8
//! all year since 1991 (no daylight saving), so a fixed offset is exact and no time
//! zone database is needed; the raw UTC (RFC 3339) is in the `title`, shown on hover.

use maud::{html, Markup};
use time::macros::{format_description, offset};
use time::{OffsetDateTime, UtcOffset};

use crate::time::{iso_time, Millis};

/// Asia/Shanghai.
pub const SHANGHAI: UtcOffset = offset!(+8);

/// Fen as yuan: `1234` → `¥12.34`, `-5` → `-¥0.05`.
pub fn yuan(fen: i64) -> String {
    let sign = if fen < 0 { "-" } else { "" };
    let abs = fen.unsigned_abs();
    format!("{sign}¥{}.{:02}", abs / 100, abs % 100)
}

/// A time in Asia/Shanghai, `2026-09-03 21:15:40`, or the raw number if out of range.
pub fn shanghai(ms: Millis) -> String {
    let fmt = format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.to_offset(SHANGHAI).format(&fmt).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// A time cell: Shanghai time, with the UTC time in `title` and `datetime`.
pub fn time(ms: Millis) -> Markup {
    let utc = iso_time(ms);
    html! { time datetime=(utc) title=(utc) { (shanghai(ms)) } }
}

/// [`time`], or a dash when there is none.
pub fn time_opt(ms: Option<Millis>) -> Markup {
    match ms {
        Some(ms) => time(ms),
        None => html! { span.muted { "—" } },
    }
}

/// Text, or a dash when there is none.
pub fn text_opt(text: Option<&str>) -> Markup {
    match text {
        Some(t) if !t.is_empty() => html! { (t) },
        _ => html! { span.muted { "—" } },
    }
}

/// JSON, indented, for a `<pre>`.
pub fn pretty_json(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fen_are_shown_as_yuan_with_two_decimals() {
        assert_eq!(yuan(1234), "¥12.34");
        assert_eq!(yuan(1), "¥0.01");
        assert_eq!(yuan(100), "¥1.00");
        assert_eq!(yuan(0), "¥0.00");
        assert_eq!(yuan(-5), "-¥0.05");
        assert_eq!(yuan(i64::MIN), "-¥92233720368547758.08");
    }

    #[test]
    fn times_are_shanghai_with_utc_on_hover() {
        // 2026-09-03T13:15:40Z is 21:15:40 in Shanghai; late UTC evening is the next day.
        assert_eq!(shanghai(1_788_441_340_000), "2026-09-03 21:15:40");
        assert_eq!(shanghai(1_788_476_400_000), "2026-09-04 07:00:00");
        let cell = time(1_788_441_340_123).into_string();
        assert!(
            cell.contains(r#"title="2026-09-03T13:15:40.123Z""#),
            "{cell}"
        );
        assert!(cell.contains(">2026-09-03 21:15:40<"), "{cell}");
        assert_eq!(shanghai(i64::MAX), i64::MAX.to_string());
    }
}

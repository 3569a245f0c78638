//! Checks several providers make the same way: picking the account a notification names,
//! reading required account keys, amounts in fen, China Standard Time timestamps, the
//! timestamp window of signed headers, and the ambiguity of signed `k=v&…` strings.
//!
//! Both halves of a provider (verifying notifications, verifying API answers) use these,
//! so a rule is written once and a notification and a query answer are held to it alike.

use super::{Inbound, ProviderKind, Rejection};

/// Picks the account that should verify a notification: the one named in the URL, else
/// the one whose identifiers match `matches`, else the only one.
pub(crate) fn pick_account<'a, A>(
    accounts: &'a [A],
    name_of: impl Fn(&A) -> &str,
    url_account: Option<&str>,
    matches: impl Fn(&A) -> bool,
) -> Result<&'a A, Rejection> {
    if let Some(name) = url_account {
        return accounts
            .iter()
            .find(|a| name_of(a) == name)
            .ok_or_else(|| Rejection::UnknownAccount(format!("no account named `{name}`")));
    }
    let mut found = accounts.iter().filter(|a| matches(a));
    match (found.next(), found.next()) {
        (Some(a), None) => Ok(a),
        (Some(_), Some(_)) => Err(Rejection::UnknownAccount(
            "several accounts match; use /notify/{provider}/{account}".into(),
        )),
        (None, _) => Err(Rejection::AccountMismatch(
            "no configured account matches the notification's merchant ids".into(),
        )),
    }
}

/// A required, non-empty account key, or the message naming it (and its `_file` form
/// when `file_key` says there is one).
pub(crate) fn required(
    value: &Option<String>,
    key: &str,
    file_key: bool,
    provider: ProviderKind,
) -> Result<String, String> {
    value
        .clone()
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| {
            let alt = if file_key {
                format!(" (or {key}_file)")
            } else {
                String::new()
            };
            format!("`{key}`{alt} is required for {provider}")
        })
}

/// A provider timestamp in China Standard Time (`+08:00`, as WeChat and Alipay write
/// them) in the given layout → unix ms.
pub(crate) fn china_time_ms(
    s: &str,
    format: &[time::format_description::BorrowedFormatItem<'_>],
) -> Option<i64> {
    let dt = time::PrimitiveDateTime::parse(s, format).ok()?;
    let cst = time::UtcOffset::from_hms(8, 0, 0).ok()?;
    i64::try_from(dt.assume_offset(cst).unix_timestamp_nanos() / 1_000_000).ok()
}

/// Parses a non-negative integer amount in fen, strictly (digits only).
pub(crate) fn parse_fen(s: &str, what: &str) -> Result<i64, Rejection> {
    if s.is_empty() || s.len() > 15 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Rejection::Malformed(format!(
            "{what} `{s}` is not an amount in fen"
        )));
    }
    s.parse()
        .map_err(|_| Rejection::Malformed(format!("{what} `{s}` is not an amount in fen")))
}

/// Refuses a notification whose signed fields (`signed`: name, value, in the order they
/// were joined into the string to sign) would not split back into exactly themselves;
/// the reason names the field that makes it ambiguous.
///
/// The split is one fixed parse of a signed `k=v&k=v…` string (WeChat Pay v2, Alipay):
/// on `&`, then on the first `=` of each piece; a piece without `=` cannot be a field
/// (every signed value is non-empty), so it is the rest of the previous value (`Tom &
/// Jerry` survives, `x&out_trade_no=1` is two fields). Requiring that the string a
/// notification was verified over splits back into exactly its fields leaves at most one
/// field map per signed string, so a genuine signature cannot be re-split into other
/// fields. (A parse that depended on the names a notification happens to carry would
/// not: `attach=x&foo=1` would verify both as one field and as `attach` plus an extra
/// `foo` a handler might read.)
///
/// Checked field by field instead of joining and splitting again (this runs for every
/// v2 and Alipay notification): the split differs exactly when a name holds `&` or `=`,
/// or a value holds `&` followed by a piece with `=`. The property tests split the signed
/// string independently and compare.
pub(crate) fn require_unambiguous(signed: &[(&str, &str)]) -> Result<(), Rejection> {
    const WHY: &str = "the signed string `k=v&…` cannot tell it from separate fields, so one signature would verify other fields too";
    for (k, v) in signed {
        if k.contains(['&', '=']) {
            return Err(Rejection::Ambiguous(format!(
                "field name `{k}` contains `&` or `=`: {WHY}"
            )));
        }
        for piece in v.split('&').skip(1) {
            if let Some((name, _)) = piece.split_once('=') {
                return Err(Rejection::Ambiguous(format!(
                    "field `{k}` contains `&{name}=`: {WHY}"
                )));
            }
        }
    }
    Ok(())
}

/// Constant-time equality of two byte strings.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// The value of a header that must be there and not blank, trimmed.
pub(crate) fn nonblank_header<'a>(inbound: &'a Inbound<'_>, name: &str) -> Option<&'a str> {
    inbound
        .header(name)
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Checks a signed timestamp header (`shown` is its name as messages spell it) holding
/// unix seconds against the time of receipt, not the wall clock, so a stored notification
/// replayed later verifies as it did on arrival.
pub(crate) fn check_timestamp(
    shown: &str,
    timestamp: &str,
    received_at: i64,
    max_skew_secs: i64,
) -> Result<(), Rejection> {
    if timestamp.is_empty()
        || timestamp.len() > 12
        || !timestamp.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(Rejection::Malformed(format!(
            "{shown} `{timestamp}` is not unix seconds"
        )));
    }
    let ts_secs: i64 = timestamp.parse().unwrap_or(i64::MAX);
    let received_secs = received_at.div_euclid(1000);
    let skew = ts_secs.saturating_sub(received_secs);
    if skew.saturating_abs() > max_skew_secs {
        return Err(Rejection::Stale(format!(
            "{shown} {ts_secs} is {skew} s from the time of receipt {received_secs} (allowed ±{max_skew_secs} s)"
        )));
    }
    Ok(())
}

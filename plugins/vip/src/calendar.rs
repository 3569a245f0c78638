//! Just enough calendar for VIP memberships: RFC 3339 parsing and "plus N calendar months"
//! on unix milliseconds, proleptic Gregorian, no dependencies.

const MS_PER_DAY: i64 = 86_400_000;

/// Timestamps whose calendar year is outside `1..=9999` are refused.
const MIN_YEAR: i64 = 1;
const MAX_YEAR: i64 = 9999;

/// Days since 1970-01-01 of a civil date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400); // [0, 399]
    let m = i64::from(month);
    let mp = (m + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// The civil date `(year, month, day)` of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // [1, 12]
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

/// Number of days in `month` (1-12) of `year`.
pub fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// `ms` (unix milliseconds) plus `months` calendar months, counted on the wall clock of a
/// zone `utc_offset_ms` ahead of UTC. The time of day is kept; a day past the end of the
/// target month is clamped to its last day (Jan 31 + 1 month = Feb 28, or 29 in a leap
/// year). `None` when the result would leave the years 1..=9999.
pub fn add_months(ms: i64, months: u32, utc_offset_ms: i64) -> Option<i64> {
    let local = ms.checked_add(utc_offset_ms)?;
    let (year, month, day) = civil_from_days(local.div_euclid(MS_PER_DAY));
    if !(MIN_YEAR..=MAX_YEAR).contains(&year) {
        return None;
    }
    let time_of_day = local.rem_euclid(MS_PER_DAY);

    let month_index = year * 12 + i64::from(month - 1) + i64::from(months);
    let new_year = month_index.div_euclid(12);
    let new_month = month_index.rem_euclid(12) as u32 + 1;
    if new_year > MAX_YEAR {
        return None;
    }
    let new_day = day.min(days_in_month(new_year, new_month));

    Some(days_from_civil(new_year, new_month, new_day) * MS_PER_DAY + time_of_day - utc_offset_ms)
}

/// Parses an RFC 3339 timestamp (`2024-01-31T10:00:00+08:00`, `2024-01-31T02:00:00.123Z`)
/// into unix milliseconds. Also accepts a space or lowercase `t` between date and time and
/// a lowercase `z`. Fractions beyond milliseconds are truncated; a leap second (`:60`)
/// counts as `:59.999`.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let b = text.trim().as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = b.get(range)?;
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(digits.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let expect = |i: usize, allowed: &[u8]| b.get(i).is_some_and(|c| allowed.contains(c));

    // YYYY-MM-DDTHH:MM:SS
    if !(expect(4, b"-")
        && expect(7, b"-")
        && expect(10, b"Tt ")
        && expect(13, b":")
        && expect(16, b":"))
    {
        return None;
    }
    let year = num(0..4)?;
    let month = u32::try_from(num(5..7)?).ok()?;
    let day = u32::try_from(num(8..10)?).ok()?;
    let hour = num(11..13)?;
    let minute = num(14..16)?;
    let mut second = num(17..19)?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }

    let mut i = 19;
    let mut millis = 0;
    if expect(i, b".") {
        let start = i + 1;
        let mut end = start;
        while b.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
        if end == start {
            return None;
        }
        for k in 0..3 {
            let digit = if start + k < end {
                i64::from(b[start + k] - b'0')
            } else {
                0
            };
            millis = millis * 10 + digit;
        }
        i = end;
    }
    if second == 60 {
        second = 59;
        millis = 999;
    }

    let offset_ms = match b.get(i) {
        Some(b'Z' | b'z') if b.len() == i + 1 => 0,
        Some(sign @ (b'+' | b'-')) if b.len() == i + 6 && expect(i + 3, b":") => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let offset = (oh * 60 + om) * 60_000;
            if *sign == b'-' {
                -offset
            } else {
                offset
            }
        }
        _ => return None,
    };

    let days = days_from_civil(year, month, day);
    let ms_of_day = ((hour * 60 + minute) * 60 + second) * 1000 + millis;
    Some(days * MS_PER_DAY + ms_of_day - offset_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;
    const CST: i64 = 8 * HOUR;

    fn utc(text: &str) -> i64 {
        parse_rfc3339_ms(text).unwrap_or_else(|| panic!("{text} should parse"))
    }

    #[test]
    fn civil_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        for days in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn parses_rfc3339() {
        assert_eq!(utc("1970-01-01T00:00:00Z"), 0);
        assert_eq!(utc("2024-01-31T10:00:00+08:00"), 1_706_666_400_000);
        assert_eq!(utc("2024-01-31T02:00:00Z"), 1_706_666_400_000);
        assert_eq!(utc("2024-01-31t02:00:00.5z"), 1_706_666_400_500);
        assert_eq!(utc("2024-01-31 02:00:00.123456Z"), 1_706_666_400_123);
        assert_eq!(utc("2024-01-30T21:30:00-04:30"), 1_706_666_400_000);
        assert_eq!(utc("2016-12-31T23:59:60Z"), utc("2016-12-31T23:59:59.999Z"));
        assert_eq!(
            utc(" 2024-02-29T00:00:00Z\n"),
            utc("2024-02-29T00:00:00+00:00")
        );
    }

    #[test]
    fn rejects_malformed_timestamps() {
        for bad in [
            "",
            "2024-01-31",
            "2024-01-31T10:00:00",
            "2024-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-01-31T24:00:00Z",
            "2024-01-31T10:00:00.Z",
            "2024-01-31T10:00:00+0800",
            "2024-01-31T10:00:00+08:00x",
            "20240131100000",
            "２０２４-01-31T10:00:00Z",
            "2024-01-31T10:00:00+08:60",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn adds_calendar_months_with_clamping() {
        let cases = [
            ("2024-01-15T10:20:30.400Z", 1, "2024-02-15T10:20:30.400Z"),
            ("2024-01-31T10:00:00Z", 1, "2024-02-29T10:00:00Z"),
            ("2023-01-31T10:00:00Z", 1, "2023-02-28T10:00:00Z"),
            ("2024-03-31T00:00:00Z", 1, "2024-04-30T00:00:00Z"),
            ("2024-01-31T00:00:00Z", 2, "2024-03-31T00:00:00Z"),
            ("2024-12-31T23:59:59Z", 1, "2025-01-31T23:59:59Z"),
            ("2024-11-30T00:00:00Z", 3, "2025-02-28T00:00:00Z"),
            ("2024-02-29T00:00:00Z", 12, "2025-02-28T00:00:00Z"),
            ("2024-02-29T00:00:00Z", 48, "2028-02-29T00:00:00Z"),
            ("2024-05-10T00:00:00Z", 0, "2024-05-10T00:00:00Z"),
            ("1969-12-31T12:00:00Z", 1, "1970-01-31T12:00:00Z"),
        ];
        for (from, months, to) in cases {
            assert_eq!(
                add_months(utc(from), months, 0),
                Some(utc(to)),
                "{from} + {months}"
            );
        }
    }

    #[test]
    fn months_are_counted_on_the_zone_wall_clock() {
        // 2024-03-31 04:00 in Beijing is still 2024-03-30 in UTC.
        let t = utc("2024-03-31T04:00:00+08:00");
        assert_eq!(
            add_months(t, 1, CST),
            Some(utc("2024-04-30T04:00:00+08:00"))
        );
        assert_eq!(
            add_months(t, 1, 0),
            Some(utc("2024-04-30T04:00:00+08:00") + 24 * HOUR)
        );
        // Jan 31 in Beijing + 1 month = Feb 29 in Beijing.
        let t = utc("2024-01-31T07:00:00+08:00");
        assert_eq!(
            add_months(t, 1, CST),
            Some(utc("2024-02-29T07:00:00+08:00"))
        );
    }

    #[test]
    fn refuses_out_of_range() {
        assert_eq!(add_months(i64::MAX, 1, 0), None);
        assert_eq!(add_months(utc("9999-12-01T00:00:00Z"), 1, 0), None);
        assert_eq!(
            add_months(utc("9999-11-01T00:00:00Z"), 1, 0),
            Some(utc("9999-12-01T00:00:00Z"))
        );
        assert_eq!(add_months(i64::MIN + 10, 1, CST), None);
    }
}

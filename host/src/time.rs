//! Time as the host stores and shows it: unix milliseconds ([`Millis`]) in the
//! database, RFC 3339 text for people.

/// Unix time in milliseconds, the one time representation in the database.
pub type Millis = i64;

/// Now, in [`Millis`].
pub fn now_ms() -> Millis {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// RFC 3339 UTC text of a [`Millis`] time.
pub fn iso_time(ms: Millis) -> String {
    ::time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&::time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// Parses a point in time given by a person or a script: RFC 3339
/// (`2026-09-03T13:15:40Z`, `2026-09-03T21:15:40+08:00`) or unix milliseconds
/// (`1788441340000`). The error says which forms are accepted.
pub fn parse_time(text: &str) -> Result<Millis, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<Millis>()
            .map_err(|_| format!("`{text}` is too large for unix milliseconds"));
    }
    let t = ::time::OffsetDateTime::parse(text, &::time::format_description::well_known::Rfc3339)
        .map_err(|_| {
        format!("`{text}` is not a time: use RFC 3339 (2026-09-03T13:15:40Z) or unix milliseconds")
    })?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| format!("`{text}` is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_rfc3339_or_unix_millis() {
        assert_eq!(parse_time("1788441340000"), Ok(1_788_441_340_000));
        assert_eq!(parse_time("2026-09-03T13:15:40Z"), Ok(1_788_441_340_000));
        assert_eq!(
            parse_time("2026-09-03T21:15:40.5+08:00"),
            Ok(1_788_441_340_500)
        );
        assert_eq!(
            parse_time(&iso_time(1_788_441_340_123)),
            Ok(1_788_441_340_123)
        );
        for bad in ["", "yesterday", "2026-09-03", "99999999999999999999"] {
            assert!(parse_time(bad).is_err(), "{bad:?} accepted");
        }
    }
}

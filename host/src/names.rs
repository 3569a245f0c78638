//! Checks on the names handlers, operators and callers choose: account, plugin and
//! collection names, document fields and ids, order numbers (and fresh ones), PostgreSQL
//! schemas. They end up in URLs, file names, keys, SQL and log lines, so they are kept
//! plain, in one place.

/// Checks a collection name: it is part of keys and log lines, so keep it plain.
pub fn valid_collection(name: &str) -> bool {
    is_simple_name(name)
}

/// Checks a document field name used in `inc` and `query` (top-level, plain).
pub fn valid_field(name: &str) -> bool {
    is_simple_name(name)
}

/// Checks a document id.
pub fn valid_doc_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && !id.chars().any(|c| c.is_control())
}

/// Letters, digits, `-` and `_`: safe in URLs, file names and log lines.
pub fn is_simple_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// WeChat and Alipay both accept 6–32 of these characters as a merchant order number.
pub fn valid_out_trade_no(s: &str) -> bool {
    (6..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-|*".contains(&b))
}

/// A fresh order (or refund) number: time-ordered and unguessable enough to be unique,
/// and valid as [`valid_out_trade_no`] says (14 digits and 18 hex).
pub fn generate_out_trade_no() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}{}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        hex::encode(rand::random::<[u8; 9]>())
    )
}

/// A schema name that needs no quoting anywhere (`search_path`, SQL).
pub fn valid_schema(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_numbers_are_valid_and_distinct() {
        let a = generate_out_trade_no();
        let b = generate_out_trade_no();
        assert!(valid_out_trade_no(&a), "{a}");
        assert_ne!(a, b);
        assert!(!valid_out_trade_no("abc"));
        assert!(!valid_out_trade_no("has space 123"));
    }
}

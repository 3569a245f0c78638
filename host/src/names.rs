//! Checks on the names handlers and operators choose: collections, document fields and
//! document ids end up in keys, SQL paths and log lines, so they are kept plain.

/// Checks a collection name: it is part of keys and log lines, so keep it plain.
pub fn valid_collection(name: &str) -> bool {
    crate::config::is_simple_name(name)
}

/// Checks a document field name used in `inc` and `query` (top-level, plain).
pub fn valid_field(name: &str) -> bool {
    crate::config::is_simple_name(name)
}

/// Checks a document id.
pub fn valid_doc_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && !id.chars().any(|c| c.is_control())
}

//! Reading provider JSON (WeChat Pay v3 notifications and answers, CloudPay events)
//! without letting two readers see two different documents: repeated keys are refused,
//! nested names are flattened to `a.b.c` and may not collide, and a field of the wrong
//! type is a rejection naming it, not a silent default.

use std::collections::BTreeMap;

use serde_json::Value;

use super::Rejection;

/// Flattens a JSON object into `a.b.c` → text: strings as they are, numbers and booleans
/// as JSON prints them, arrays as compact JSON, null as an empty string.
pub fn flatten(value: &Value, prefix: &str, out: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(v, &key, out);
            }
        }
        Value::String(s) => {
            out.insert(prefix.to_owned(), s.clone());
        }
        Value::Null => {
            out.insert(prefix.to_owned(), String::new());
        }
        other => {
            out.insert(prefix.to_owned(), other.to_string());
        }
    }
}

/// [`flatten`], refusing two values that end up under one name: `{"a.b":1,"a":{"b":2}}`
/// would otherwise hand the handler one of them while the host read the other.
pub fn flatten_unique(
    value: &Value,
    prefix: &str,
    out: &mut BTreeMap<String, String>,
) -> Result<(), Rejection> {
    if let Value::Object(map) = value {
        for (k, v) in map {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            flatten_unique(v, &key, out)?;
        }
        return Ok(());
    }
    let mut leaf = BTreeMap::new();
    flatten(value, prefix, &mut leaf);
    for (k, v) in leaf {
        if out.contains_key(&k) {
            return Err(Rejection::Malformed(format!(
                "two fields are both named `{k}` once nested names are joined with `.`"
            )));
        }
        out.insert(k, v);
    }
    Ok(())
}

/// Parses JSON, refusing an object that names a key twice. serde_json keeps the last of
/// two equal keys where other readers keep the first, so such a body could be read as
/// two different notifications: the host's, and that of whoever re-reads the stored body.
pub fn parse_json_unique(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde::de::DeserializeSeed::deserialize(UniqueKeys, &mut de)?;
    de.end()?;
    serde_json::from_slice(bytes)
}

/// Walks JSON, failing on the first object with a repeated key.
struct UniqueKeys;

impl<'de> serde::de::DeserializeSeed<'de> for UniqueKeys {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for UniqueKeys {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(UniqueKeys)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            map.next_value_seed(UniqueKeys)?;
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!(
                    "key `{key}` appears twice in one object"
                )));
            }
        }
        Ok(())
    }
}

/// A string field, if it is there and a string.
pub(crate) fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// A string field, or empty when it is absent or not a string.
pub(crate) fn str_or_empty<'a>(v: &'a Value, key: &str) -> &'a str {
    str_field(v, key).unwrap_or("")
}

/// A string field that must be there (it may be empty).
pub(crate) fn required_str<'a>(v: &'a Value, key: &str) -> Result<&'a str, Rejection> {
    match v.get(key) {
        None | Some(Value::Null) => Err(Rejection::Malformed(format!("no {key}"))),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(Rejection::Malformed(format!(
            "{key} is {other}, not a string"
        ))),
    }
}

/// A string field that may be absent (then empty), but is a string when it is there.
pub(crate) fn optional_str<'a>(v: &'a Value, key: &str) -> Result<&'a str, Rejection> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(""),
        _ => required_str(v, key),
    }
}

/// A non-empty string field that must be there; the reason says what is wrong with it.
pub(crate) fn required_text<'a>(v: &'a Value, key: &str) -> Result<&'a str, Rejection> {
    match required_str(v, key)? {
        "" => Err(Rejection::Malformed(format!("{key} is empty"))),
        s => Ok(s),
    }
}

//! The v2 XML: a flat `<xml><k>v</k>…</xml>` read into a map (never into a struct, so
//! fields this code does not know still take part in the signed string), and written
//! back signed.

use std::collections::BTreeMap;

use quick_xml::events::Event;

use super::{sign, SignType};
use crate::providers::Rejection;

/// Most fields a notification may carry; real ones have about 20.
const MAX_FIELDS: usize = 256;

/// Parses `<xml><k>v</k>…</xml>` (CDATA or escaped text) into a map. Refuses DTDs,
/// nesting, duplicate fields and anything after the root.
pub fn parse_xml(body: &[u8]) -> Result<BTreeMap<String, String>, Rejection> {
    parse_xml_root(body, &["xml"])
}

/// [`parse_xml`] with any of these root element names (a decrypted `req_info` is
/// `<root>…</root>`).
pub(super) fn parse_xml_root(
    body: &[u8],
    roots: &[&str],
) -> Result<BTreeMap<String, String>, Rejection> {
    let bad = |m: String| Rejection::Malformed(m);
    let text = std::str::from_utf8(body).map_err(|_| bad("body is not UTF-8".into()))?;
    let mut reader = quick_xml::Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    let mut fields = BTreeMap::new();
    let mut depth = 0usize;
    let mut root_seen = false;
    let mut current: Option<(String, String)> = None;
    loop {
        let event = reader.read_event().map_err(|e| {
            bad(format!(
                "XML error at byte {}: {e}",
                reader.error_position()
            ))
        })?;
        match event {
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) => {}
            Event::DocType(_) => return Err(bad("DOCTYPE is not allowed".into())),
            Event::Start(e) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                match depth {
                    0 if !root_seen && roots.contains(&name.as_str()) => root_seen = true,
                    0 => {
                        return Err(bad(format!(
                            "root element must be <{}>, found <{name}>",
                            roots.join("> or <")
                        )))
                    }
                    1 => current = Some((name, String::new())),
                    _ => return Err(bad(format!("nested element <{name}> is not allowed"))),
                }
                depth += 1;
            }
            Event::Empty(e) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                if depth != 1 {
                    return Err(bad(format!("unexpected empty element <{name}/>")));
                }
                insert_field(&mut fields, name, String::new())?;
            }
            Event::End(_) => {
                depth = depth.saturating_sub(1);
                if depth == 1 {
                    if let Some((k, v)) = current.take() {
                        insert_field(&mut fields, k, v)?;
                    }
                }
            }
            Event::Text(t) => {
                let s = t.decode().map_err(|e| bad(format!("bad text: {e}")))?;
                match (&mut current, depth) {
                    (Some((_, v)), 2) => v.push_str(&s),
                    _ if s.trim().is_empty() => {}
                    _ => return Err(bad("text outside a field".into())),
                }
            }
            Event::CData(c) => {
                let s = c.decode().map_err(|e| bad(format!("bad CDATA: {e}")))?;
                match (&mut current, depth) {
                    (Some((_, v)), 2) => v.push_str(&s),
                    _ => return Err(bad("CDATA outside a field".into())),
                }
            }
            Event::GeneralRef(r) => {
                let ch = if r.is_char_ref() {
                    r.resolve_char_ref()
                        .map_err(|e| bad(format!("bad character reference: {e}")))?
                } else {
                    let name = r.decode().map_err(|e| bad(format!("bad entity: {e}")))?;
                    match name.as_ref() {
                        "amp" => Some('&'),
                        "lt" => Some('<'),
                        "gt" => Some('>'),
                        "quot" => Some('"'),
                        "apos" => Some('\''),
                        other => return Err(bad(format!("unknown entity &{other};"))),
                    }
                };
                match (&mut current, depth, ch) {
                    (Some((_, v)), 2, Some(c)) => v.push(c),
                    _ => return Err(bad("entity outside a field".into())),
                }
            }
            Event::Eof => break,
        }
    }
    if !root_seen || depth != 0 {
        return Err(bad("incomplete XML document".into()));
    }
    Ok(fields)
}

fn insert_field(
    fields: &mut BTreeMap<String, String>,
    k: String,
    v: String,
) -> Result<(), Rejection> {
    if fields.len() >= MAX_FIELDS {
        return Err(Rejection::Malformed(format!(
            "more than {MAX_FIELDS} fields"
        )));
    }
    if fields.contains_key(&k) {
        return Err(Rejection::Malformed(format!("field `{k}` appears twice")));
    }
    fields.insert(k, v);
    Ok(())
}

/// Builds a signed v2 body: the API requests, and notifications for tests and the
/// README walk-through. Each value is CDATA; a `]]>` in one (a buyer-facing description
/// may hold anything) is split across two sections, which [`parse_xml`] joins back, so
/// no value can end its element early or add one.
pub fn signed_xml(fields: &BTreeMap<String, String>, api_key: &str, sign_type: SignType) -> String {
    let signature = sign(fields, api_key, sign_type);
    let mut xml = String::from("<xml>");
    for (k, v) in fields.iter().filter(|(k, _)| *k != "sign") {
        let v = v.replace("]]>", "]]]]><![CDATA[>");
        xml.push_str(&format!("<{k}><![CDATA[{v}]]></{k}>"));
    }
    xml.push_str(&format!("<sign><![CDATA[{signature}]]></sign>"));
    xml.push_str("</xml>");
    xml
}

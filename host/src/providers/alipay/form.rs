//! A notification's form body, read in the charset it declares.
//!
//! Alipay sends the values of a GBK app (older accounts: `charset=GBK` or `GB2312`) as
//! percent-encoded GBK bytes, and signs the string to sign encoded in that charset
//! (`content.getBytes(charset)` in its SDKs). So the body is percent-decoded into bytes
//! first, the `charset` parameter (ASCII in every charset) picked out, and only then are
//! names and values decoded, strictly: a byte sequence that is not valid in the declared
//! charset is refused, never replaced, so one received text cannot come from two bodies.
//!
//! The signature is checked over the bytes as received ([`Form::signed_bytes`]), not
//! over a re-encoding of the decoded text: what was signed is exactly what was accepted.

use std::collections::BTreeMap;

use encoding_rs::{Encoding, GBK, UTF_8};

use crate::providers::Rejection;

/// Most parameters a notification may carry; real ones have about 25.
const MAX_FIELDS: usize = 256;

/// A parsed notification form.
#[derive(Debug, Clone)]
pub struct Form {
    /// Every parameter, decoded, by name.
    pub fields: BTreeMap<String, String>,
    /// The percent-decoded bytes of every parameter, name and value, by decoded name.
    raw: BTreeMap<String, (Vec<u8>, Vec<u8>)>,
}

impl Form {
    /// Parses a body, refusing duplicate and empty names, oversized maps, an unknown
    /// `charset` and text that is not valid in the declared one.
    pub fn parse(body: &[u8]) -> Result<Form, Rejection> {
        let mut pairs = Vec::new();
        for part in body.split(|b| *b == b'&') {
            if part.is_empty() {
                continue;
            }
            let (k, v) = match part.iter().position(|b| *b == b'=') {
                Some(i) => (&part[..i], &part[i + 1..]),
                None => (part, &[][..]),
            };
            if pairs.len() >= MAX_FIELDS {
                return Err(Rejection::Malformed(format!(
                    "more than {MAX_FIELDS} parameters"
                )));
            }
            pairs.push((percent_decode(k), percent_decode(v)));
        }
        if pairs.is_empty() {
            return Err(Rejection::Malformed("empty form body".into()));
        }
        let mut charsets = pairs.iter().filter(|(k, _)| k == b"charset");
        let encoding = match (charsets.next(), charsets.next()) {
            (None, _) => UTF_8,
            (Some((_, v)), None) => charset(v)?,
            (Some(_), Some(_)) => {
                return Err(Rejection::Malformed(
                    "parameter `charset` appears twice".into(),
                ))
            }
        };
        let mut fields = BTreeMap::new();
        let mut raw = BTreeMap::new();
        for (k, v) in pairs {
            let name = decode(encoding, &k, "a parameter name")?;
            if name.is_empty() {
                return Err(Rejection::Malformed("a parameter has an empty name".into()));
            }
            let value = decode(encoding, &v, &format!("parameter `{name}`"))?;
            if fields.contains_key(&name) {
                return Err(Rejection::Malformed(format!(
                    "parameter `{name}` appears twice"
                )));
            }
            fields.insert(name.clone(), value);
            raw.insert(name, (k, v));
        }
        Ok(Form { fields, raw })
    }

    /// The bytes Alipay signed: the parameters [`super::signed_fields`] picks, in its
    /// order, `k=v` joined by `&`, each name and value as received (in its charset). For a
    /// UTF-8 notification this is [`super::string_to_sign`].
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1024);
        for (k, _) in super::signed_fields(&self.fields) {
            let Some((rk, rv)) = self.raw.get(k) else {
                continue;
            };
            if !out.is_empty() {
                out.push(b'&');
            }
            out.extend_from_slice(rk);
            out.push(b'=');
            out.extend_from_slice(rv);
        }
        out
    }
}

/// The charsets Alipay documents for notifications; anything else is refused with the
/// reason, since verifying bytes in a charset we guess at would accept what was not signed.
fn charset(value: &[u8]) -> Result<&'static Encoding, Rejection> {
    let label = String::from_utf8_lossy(value);
    match label.to_ascii_lowercase().as_str() {
        "utf-8" | "utf8" => Ok(UTF_8),
        // WHATWG (and encoding_rs) read GB2312 labels as GBK, its superset.
        "gbk" | "gb2312" => Ok(GBK),
        _ => Err(Rejection::Unsupported(format!(
            "charset `{}`: paynotify reads UTF-8, GBK and GB2312",
            label.escape_debug()
        ))),
    }
}

fn decode(encoding: &'static Encoding, bytes: &[u8], what: &str) -> Result<String, Rejection> {
    encoding
        .decode_without_bom_handling_and_without_replacement(bytes)
        .map(|s| s.into_owned())
        .ok_or_else(|| Rejection::Malformed(format!("{what} is not valid {}", encoding.name())))
}

/// `application/x-www-form-urlencoded` decoding into bytes: `+` is a space, `%XX` a byte;
/// a `%` not followed by two hex digits stays as it is (as browsers and `form_urlencoded`
/// do).
fn percent_decode(input: &[u8]) -> Vec<u8> {
    // A form's `+` is a space; an encoded plus (`%2B`) is decoded after, so stays a plus.
    let plus_as_space: Vec<u8> = input
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    percent_encoding::percent_decode(&plus_as_space).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_matches_form_urlencoded_on_utf8() {
        for body in [
            "a=1&b=%E4%B8%AD+x&c=%zz&d=%4&e=&f",
            "subject=Tom+%26+Jerry&x=%3D%25",
        ] {
            let ours = Form::parse(body.as_bytes()).expect("parses").fields;
            let theirs: BTreeMap<String, String> = form_urlencoded::parse(body.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            assert_eq!(ours, theirs, "{body}");
        }
    }

    #[test]
    fn gbk_values_are_decoded_by_the_declared_charset() {
        // 中文 in GBK is D6 D0 CE C4.
        let f = Form::parse(b"charset=GBK&subject=%D6%D0%CE%C4").expect("parses");
        assert_eq!(f.fields["subject"], "中文");
        assert_eq!(f.signed_bytes(), b"charset=GBK&subject=\xD6\xD0\xCE\xC4");
        let f = Form::parse(b"charset=gb2312&subject=%D6%D0%CE%C4").expect("parses");
        assert_eq!(f.fields["subject"], "中文");
    }

    #[test]
    fn bad_charsets_and_bad_bytes_are_refused() {
        let e = Form::parse(b"charset=big5&x=1").expect_err("refused");
        assert!(e.to_string().contains("charset `big5`"), "{e}");
        // GBK bytes declared as UTF-8 are not silently replaced.
        let e = Form::parse(b"charset=utf-8&subject=%D6%D0").expect_err("refused");
        assert!(e.to_string().contains("not valid UTF-8"), "{e}");
        let e = Form::parse(b"subject=%D6%D0").expect_err("refused");
        assert!(e.to_string().contains("not valid UTF-8"), "{e}");
        // A lone GBK lead byte.
        let e = Form::parse(b"charset=GBK&subject=%D6").expect_err("refused");
        assert!(e.to_string().contains("not valid GBK"), "{e}");
        let e = Form::parse(b"charset=GBK&charset=UTF-8").expect_err("refused");
        assert!(e.to_string().contains("twice"), "{e}");
    }
}

//! The query string of a message push (`signature`, `timestamp`, `nonce`, `openid`, and
//! in safe mode `encrypt_type`, `msg_signature`): WeChat signs with it, so it is read from
//! the request as stored ([`crate::providers::QUERY_HEADER`]).

use std::collections::BTreeMap;

use crate::providers::Rejection;

/// The decoded parameters of a query string, each named once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query(BTreeMap<String, String>);

impl Query {
    /// Decodes `raw` (without the `?`); a parameter named twice is refused, since which
    /// one was signed is anyone's guess.
    pub fn parse(raw: &str) -> Result<Query, Rejection> {
        let mut map = BTreeMap::new();
        for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
            if map.insert(k.to_string(), v.to_string()).is_some() {
                return Err(Rejection::Ambiguous(format!(
                    "query parameter `{k}` is given more than once"
                )));
            }
        }
        Ok(Query(map))
    }

    /// A parameter, if given and not blank.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    /// A signed parameter that must be there.
    pub fn signed(&self, key: &str) -> Result<&str, Rejection> {
        self.get(key)
            .ok_or_else(|| Rejection::BadSignature(format!("no `{key}` in the query string")))
    }
}

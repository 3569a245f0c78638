//! What may be shown of the configuration: secrets and database passwords replaced by
//! `***`, for `paynotify config check` and log lines.

use super::Config;

impl Config {
    /// The effective configuration as JSON with every secret replaced by `***`: the
    /// values of [`SECRET_KEYS`] (already read from their `*_file`s) and the password
    /// in the database URL. Absent keys are left out. For `paynotify config check`,
    /// whose output ends up in tickets and chat.
    pub fn masked(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        mask_secrets(&mut v);
        if let Some(url) = v.pointer_mut("/database/url") {
            if let Some(text) = url.as_str() {
                *url = serde_json::Value::String(redact_url(text));
            }
        }
        v
    }
}

/// Keys whose values are secrets, wherever they appear in the configuration.
pub const SECRET_KEYS: &[&str] = &[
    "api_token",
    "api_key",
    "api_v3_key",
    "secret",
    "notify_key",
    "merchant_private_key",
    "app_private_key",
    "client_key",
    "token",
    "encoding_aes_key",
];

/// Replaces the value of every [`SECRET_KEYS`] key by `***` (an empty value stays empty,
/// so "no token" still shows as such) and drops absent (`null`) keys.
fn mask_secrets(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            map.retain(|_, value| !value.is_null());
            for (key, value) in map.iter_mut() {
                let empty = value.as_str().is_some_and(str::is_empty);
                if SECRET_KEYS.contains(&key.as_str()) && !empty {
                    *value = serde_json::Value::String("***".into());
                } else {
                    mask_secrets(value);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(mask_secrets),
        _ => {}
    }
}

/// A database URL with any password replaced by `***`, for messages and logs: the
/// one in the user-info part and a `password=` query parameter (libpq accepts both).
pub fn redact_url(url: &str) -> String {
    let Ok(mut u) = reqwest::Url::parse(url) else {
        return url.to_owned();
    };
    let mut changed = false;
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
        changed = true;
    }
    if u.query_pairs().any(|(k, _)| k == "password") {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "password" {
                    "***".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
        changed = true;
    }
    if changed {
        u.to_string()
    } else {
        url.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact_url("postgres://u:s3cret@db:5432/pay"),
            "postgres://u:***@db:5432/pay"
        );
        assert_eq!(redact_url("sqlite://data/p.db"), "sqlite://data/p.db");
    }

    #[test]
    fn query_passwords_are_redacted_too() {
        let r = redact_url("postgres://u@db/pay?sslmode=require&password=s3cret");
        assert!(!r.contains("s3cret") && r.contains("password=***"), "{r}");
        assert!(r.contains("sslmode=require"), "{r}");
    }

    #[test]
    fn masked_config_hides_every_secret() {
        let c = load_str(
            "[server]\napi_token = \"tok-1\"\n[database]\nurl = \"postgres://u:pw-2@db/x\"\n\
             [[accounts]]\nprovider = \"wechat-v2\"\nappid = \"wx1\"\napi_key = \"key-3\"\n\
             notify_key = \"0123456789abcdef0123456789abcdef\"\n\
             [[accounts]]\nprovider = \"cloudpay\"\nsub_mch_id = \"9\"\nsecret = \"sec-4\"\n\
             [[accounts]]\nprovider = \"wechat-xpay\"\nappid = \"wx2\"\ntoken = \"tok6\"\n\
             encoding_aes_key = \"aeskey-7\"\n",
            &[("PAYNOTIFY_ACCOUNTS_0_API_V3_KEY", "v3-5")],
        )
        .expect("config");
        let text = c.masked().to_string();
        for secret in [
            "tok-1",
            "pw-2",
            "key-3",
            "0123456789abcdef",
            "sec-4",
            "v3-5",
            "tok6",
            "aeskey-7",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(c.masked()["accounts"][0]["appid"], "wx1");
        assert_eq!(c.masked()["accounts"][0]["api_key"], "***");
        assert_eq!(c.masked()["orders"]["expire_after_secs"], 0);
    }
}

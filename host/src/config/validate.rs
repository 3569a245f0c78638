//! The checks run after loading: each refuses a value that parses but makes no sense,
//! naming the key and where it came from.

use super::{parse_notify_key, AccountConfig, Config, ConfigError, ProviderKind};

/// Most days `retention.rejected_days` may say: a hundred years, so that the age in
/// milliseconds can never overflow.
const MAX_RETENTION_DAYS: u64 = 36_500;

impl Config {
    /// Refuses the first key whose value makes no sense, naming it and `source_name`.
    pub(super) fn validate(&self, source_name: &str) -> Result<(), ConfigError> {
        let err = |key: String, message: String| ConfigError::Key {
            source_name: source_name.to_owned(),
            key,
            message,
        };
        for (i, h) in self.server.allowed_hosts.iter().enumerate() {
            if let Err(why) = check_host_name(h) {
                return Err(err(
                    format!("server.allowed_hosts[{i}]"),
                    format!("`{h}` {why}"),
                ));
            }
        }
        // One fixed order, so that with several bad keys the same one is always named.
        let require = |ok: bool, key: &str, message: &str| {
            if ok {
                Ok(())
            } else {
                Err(err(key.to_owned(), message.to_owned()))
            }
        };
        const AT_LEAST_ONE: &str = "must be at least 1";
        let s = &self.server;
        require(
            s.max_rejections_per_minute > 0,
            "server.max_rejections_per_minute",
            "must be at least 1 (verified notifications are never limited)",
        )?;
        require(
            s.max_event_streams > 0,
            "server.max_event_streams",
            AT_LEAST_ONE,
        )?;
        require(
            s.max_event_streams_per_address > 0,
            "server.max_event_streams_per_address",
            AT_LEAST_ONE,
        )?;
        require(
            s.notify_timeout_secs > 0,
            "server.notify_timeout_secs",
            "must be at least 1 (seconds a provider waits for its answer)",
        )?;
        require(
            self.database.timeout_secs > 0,
            "database.timeout_secs",
            AT_LEAST_ONE,
        )?;
        let p = &self.plugins;
        let within_max_timeout = format!(
            "must be between 1 and plugins.max_timeout_ms ({})",
            p.max_timeout_ms
        );
        let valid_timeout = |ms: u64| ms > 0 && ms <= p.max_timeout_ms;
        require(
            valid_timeout(p.timeout_ms),
            "plugins.timeout_ms",
            &within_max_timeout,
        )?;
        require(
            p.memory_mb > 0 && p.memory_mb <= p.max_memory_mb,
            "plugins.memory_mb",
            &format!(
                "must be between 1 and plugins.max_memory_mb ({})",
                p.max_memory_mb
            ),
        )?;
        require(
            p.payment_timeout_ms.is_none_or(valid_timeout),
            "plugins.payment_timeout_ms",
            &within_max_timeout,
        )?;
        require(
            p.breaker_timeouts > 0,
            "plugins.breaker_timeouts",
            AT_LEAST_ONE,
        )?;
        require(
            p.breaker_cooldown_secs > 0,
            "plugins.breaker_cooldown_secs",
            AT_LEAST_ONE,
        )?;
        require(p.max_instances > 0, "plugins.max_instances", AT_LEAST_ONE)?;
        require(
            !self.tasks.backoff_secs.is_empty(),
            "tasks.backoff_secs",
            "needs at least one delay",
        )?;
        require(self.tasks.lease_secs > 0, "tasks.lease_secs", AT_LEAST_ONE)?;
        require(
            self.orders.expire_check_secs > 0,
            "orders.expire_check_secs",
            AT_LEAST_ONE,
        )?;
        if let Some(url) = &s.public_base_url {
            require(
                (url.starts_with("https://") || url.starts_with("http://"))
                    && !url.ends_with('/')
                    && !url.contains(['?', '#', ' '])
                    && url.split("://").nth(1).is_some_and(|rest| !rest.is_empty()),
                "server.public_base_url",
                "must be an http(s) URL without a trailing `/`, query or fragment, e.g. `https://pay.example.com`",
            )?;
        }
        let o = &self.orders;
        if let Some(pay) = o.pay_expire_secs {
            require(pay > 0, "orders.pay_expire_secs", AT_LEAST_ONE)?;
            require(
                o.expire_after_secs == 0 || pay <= o.expire_after_secs,
                "orders.pay_expire_secs",
                &format!(
                    "is longer than orders.expire_after_secs ({}): a buyer could pay at the provider after the order was closed here",
                    o.expire_after_secs
                ),
            )?;
        }
        require(
            self.orders.close_batch > 0,
            "orders.close_batch",
            AT_LEAST_ONE,
        )?;
        require(
            self.reconcile.interval_secs > 0 && self.reconcile.batch > 0,
            "reconcile.interval_secs",
            "interval_secs and batch must be at least 1",
        )?;
        let r = &self.retention;
        require(
            r.rejected_days > 0 && r.rejected_days <= MAX_RETENTION_DAYS,
            "retention.rejected_days",
            &format!("must be between 1 and {MAX_RETENTION_DAYS}"),
        )?;
        require(
            r.rejected_body_bytes <= i32::MAX as usize,
            "retention.rejected_body_bytes",
            &format!("must be at most {}", i32::MAX),
        )?;
        require(
            r.prune_interval_secs > 0,
            "retention.prune_interval_secs",
            AT_LEAST_ONE,
        )?;
        require(
            self.audit.keep_days > 0 && self.audit.keep_days <= MAX_RETENTION_DAYS,
            "audit.keep_days",
            &format!("must be between 1 and {MAX_RETENTION_DAYS}"),
        )?;
        require(
            (0.0..=1.0).contains(&self.plugins.shadow_sample),
            "plugins.shadow_sample",
            "must be between 0.0 and 1.0",
        )?;
        require(
            self.database.batch_max > 0 && self.database.settlers != Some(0),
            "database.batch_max",
            "batch_max and settlers must be at least 1",
        )?;
        require(
            self.database.max_connections > 0,
            "database.max_connections",
            AT_LEAST_ONE,
        )?;
        let mut seen = std::collections::HashSet::new();
        for (i, a) in self.accounts.iter().enumerate() {
            if !ProviderKind::ALL.iter().any(|k| k.as_str() == a.provider) {
                return Err(err(
                    format!("accounts[{i}].provider"),
                    format!(
                        "unknown provider `{}` (expected one of: wechat-v2, wechat-v3, alipay, cloudpay, wechat-xpay)",
                        a.provider
                    ),
                ));
            }
            if !crate::names::is_simple_name(&a.name) {
                return Err(err(
                    format!("accounts[{i}].name"),
                    "use letters, digits, `-` and `_` only".into(),
                ));
            }
            if !seen.insert((a.provider.clone(), a.name.clone())) {
                return Err(err(
                    format!("accounts[{i}].name"),
                    format!(
                        "a {} account named `{}` is already configured",
                        a.provider, a.name
                    ),
                ));
            }
            if let Some(base) = &a.api_base {
                if !(base.starts_with("https://") || base.starts_with("http://"))
                    || reqwest::Url::parse(base).is_err()
                {
                    return Err(err(
                        format!("accounts[{i}].api_base"),
                        format!("`{base}` is not an http(s) URL"),
                    ));
                }
            }
            if let Err((key, message)) = check_mode(a) {
                return Err(err(format!("accounts[{i}].{key}"), message));
            }
            if let Some(k) = &a.notify_key {
                if parse_notify_key(k).is_none() {
                    return Err(err(
                        format!("accounts[{i}].notify_key"),
                        "must be 32 bytes of text or 64 hex characters (AES-256)".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The keys of a WeChat Pay v3 account's `mode`: a partner account (服务商) names the
/// service provider's ids and its sub-merchants, and none of direct mode's ids; a direct
/// one none of partner mode's. `Err` names the key (after `accounts[i].`) and what is wrong.
fn check_mode(a: &AccountConfig) -> Result<(), (String, String)> {
    let bad = |key: &str, message: String| Err((key.to_owned(), message));
    let partner_keys = [
        ("sp_mchid", a.sp_mchid.is_some()),
        ("sp_appid", a.sp_appid.is_some()),
        ("sub_merchants", !a.sub_merchants.is_empty()),
    ];
    let partner = match a.mode.as_deref() {
        None | Some("direct") => false,
        Some("partner") if a.provider == ProviderKind::WechatV3.as_str() => true,
        Some("partner") => {
            return bad(
                "mode",
                format!(
                    "only wechat-v3 accounts have a partner mode, not {}",
                    a.provider
                ),
            )
        }
        Some(other) => {
            return bad(
                "mode",
                format!("`{other}` is not a mode: use \"direct\" (the default) or \"partner\""),
            )
        }
    };
    if !partner {
        if let Some((key, _)) = partner_keys.iter().find(|(_, set)| *set) {
            return bad(
                key,
                "is a partner (服务商) key: set `mode = \"partner\"` on this account, or remove it"
                    .into(),
            );
        }
        return Ok(());
    }
    for (key, set) in [("appid", a.appid.is_some()), ("mch_id", a.mch_id.is_some())] {
        if set {
            return bad(
                key,
                format!("is direct mode's: a partner account has the service provider's `sp_appid` and `sp_mchid` instead (and `sub_merchants`), not `{key}`"),
            );
        }
    }
    for (key, value) in [("sp_mchid", &a.sp_mchid), ("sp_appid", &a.sp_appid)] {
        if value.as_deref().is_none_or(|v| v.trim().is_empty()) {
            return bad(key, "is required in partner mode".into());
        }
    }
    if a.sub_merchants.is_empty() {
        return bad(
            "sub_merchants",
            "a partner account needs at least one `[[accounts.sub_merchants]]` (sub_mchid, optional sub_appid)".into(),
        );
    }
    for (j, sub) in a.sub_merchants.iter().enumerate() {
        if sub.sub_mchid.trim().is_empty() {
            return bad(&format!("sub_merchants[{j}].sub_mchid"), "is empty".into());
        }
        if sub
            .sub_appid
            .as_deref()
            .is_some_and(|v| v.trim().is_empty())
        {
            return bad(
                &format!("sub_merchants[{j}].sub_appid"),
                "is empty: leave it out when the sub-merchant has no appid of its own".into(),
            );
        }
        if let Some(first) = a.sub_merchants[..j]
            .iter()
            .position(|s| s.sub_mchid == sub.sub_mchid)
        {
            return bad(
                &format!("sub_merchants[{j}].sub_mchid"),
                format!(
                    "`{}` is listed twice (also sub_merchants[{first}])",
                    sub.sub_mchid
                ),
            );
        }
    }
    Ok(())
}

/// Why `h` is not a `host` or `host:port` as a `Host` header carries it, if it is not.
fn check_host_name(h: &str) -> Result<(), &'static str> {
    if h.contains("://") || h.contains('/') {
        return Err("is not a host name: give `name` or `name:port`, without scheme or path");
    }
    if h.contains('*') {
        return Err("has a wildcard: list each name");
    }
    match split_authority(h) {
        Some(_) => Ok(()),
        None => Err("is not a valid `name` or `name:port`"),
    }
}

/// `name[:port]` → (lower-case name, port), if `text` is exactly such an authority (no
/// user info, no path). IPv6 names keep their brackets, as a `Host` header spells them.
pub(crate) fn split_authority(text: &str) -> Option<(String, Option<u16>)> {
    let a: axum::http::uri::Authority = text.parse().ok()?;
    if a.as_str() != text || text.contains('@') || a.host().is_empty() {
        return None;
    }
    // A present but empty port (`name:`) is refused, as a browser would never send it.
    let port = match text.rsplit_once(':') {
        Some((_, p)) if !text.ends_with(']') => Some(p.parse::<u16>().ok()?),
        _ => None,
    };
    Some((a.host().to_ascii_lowercase(), port))
}

#[cfg(test)]
mod tests {
    use crate::config::load_str;

    #[test]
    fn event_stream_caps_load_and_zero_is_refused_naming_key_and_file() {
        let d = load_str("", &[]).expect("defaults");
        assert_eq!(
            (
                d.server.max_event_streams,
                d.server.max_event_streams_per_address
            ),
            (1000, 256)
        );
        let c = load_str(
            "[server]\nmax_event_streams = 5\n",
            &[("PAYNOTIFY_SERVER_MAX_EVENT_STREAMS_PER_ADDRESS", "2")],
        )
        .expect("loads");
        assert_eq!(
            (
                c.server.max_event_streams,
                c.server.max_event_streams_per_address
            ),
            (5, 2)
        );
        for key in ["max_event_streams", "max_event_streams_per_address"] {
            let msg = load_str(&format!("[server]\n{key} = 0\n"), &[])
                .unwrap_err()
                .to_string();
            assert!(
                msg.contains(&format!("server.{key}")) && msg.contains("paynotify.toml"),
                "{msg}"
            );
        }
        let msg = load_str("", &[("PAYNOTIFY_SERVER_MAX_EVENT_STREAMS", "0")])
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("server.max_event_streams")
                && msg.contains("PAYNOTIFY_SERVER_MAX_EVENT_STREAMS"),
            "{msg}"
        );
    }

    #[test]
    fn the_provider_lifetime_follows_the_local_one_and_may_not_exceed_it() {
        let d = load_str("", &[]).expect("defaults");
        assert_eq!(d.orders.provider_lifetime_secs(), None);
        let c = load_str("[orders]\nexpire_after_secs = 1800\n", &[]).expect("loads");
        assert_eq!(c.orders.provider_lifetime_secs(), Some(1800));
        let c = load_str(
            "[orders]\nexpire_after_secs = 1800\npay_expire_secs = 900\n",
            &[],
        )
        .expect("loads");
        assert_eq!(c.orders.provider_lifetime_secs(), Some(900));
        let c = load_str("[orders]\npay_expire_secs = 900\n", &[]).expect("no local expiry");
        assert_eq!(c.orders.provider_lifetime_secs(), Some(900));
        for text in [
            "[orders]\nexpire_after_secs = 600\npay_expire_secs = 900\n",
            "[orders]\npay_expire_secs = 0\n",
        ] {
            let e = load_str(text, &[]).unwrap_err().to_string();
            assert!(
                e.contains("orders.pay_expire_secs") && e.contains("paynotify.toml"),
                "{e}"
            );
        }
    }

    #[test]
    fn the_public_base_url_must_be_a_plain_http_url() {
        let c = load_str(
            "[server]\npublic_base_url = \"https://pay.example.com\"\n",
            &[],
        )
        .expect("loads");
        assert_eq!(
            c.server.public_base_url.as_deref(),
            Some("https://pay.example.com")
        );
        for bad in [
            "pay.example.com",
            "https://pay.example.com/",
            "https://pay.example.com/?a=1",
            "ftp://x",
            "https://",
        ] {
            let e = load_str(&format!("[server]\npublic_base_url = \"{bad}\"\n"), &[])
                .unwrap_err()
                .to_string();
            assert!(e.contains("server.public_base_url"), "{bad}: {e}");
        }
    }

    #[test]
    fn fault_timeouts_default_and_are_checked() {
        let c = load_str("", &[]).expect("defaults");
        assert_eq!(c.server.notify_timeout_secs, 10);
        assert_eq!(c.database.timeout_secs, 5);
        let c = load_str("[server]\nnotify_timeout_secs = 3\n", &[]).expect("set");
        assert_eq!(c.server.notify_timeout_secs, 3);
        for (text, key) in [
            (
                "[server]\nnotify_timeout_secs = 0\n",
                "server.notify_timeout_secs",
            ),
            ("[database]\ntimeout_secs = 0\n", "database.timeout_secs"),
        ] {
            let e = load_str(text, &[]).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("paynotify.toml"), "{e}");
        }
    }

    #[test]
    fn retention_loads_with_defaults_and_refuses_nonsense() {
        let c = load_str("", &[]).expect("defaults");
        assert_eq!(
            (
                c.retention.rejected_days,
                c.retention.rejected_body_bytes,
                c.retention.prune_interval_secs
            ),
            (30, 8192, 3600)
        );
        let c = load_str(
            "[retention]\nrejected_days = 7\n",
            &[("PAYNOTIFY_RETENTION_REJECTED_BODY_BYTES", "4096")],
        )
        .expect("loads");
        assert_eq!(
            (c.retention.rejected_days, c.retention.rejected_body_bytes),
            (7, 4096)
        );
        let e = load_str("[retention]\nrejected_days = 0\n", &[]).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("retention.rejected_days") && msg.contains("paynotify.toml"),
            "{msg}"
        );
        let e = load_str("", &[("PAYNOTIFY_RETENTION_REJECTED_DAYS", "0")]).unwrap_err();
        assert!(
            e.to_string().contains("PAYNOTIFY_RETENTION_REJECTED_DAYS"),
            "{e}"
        );
        let e = load_str("[retention]\nprune_interval_secs = 0\n", &[]).unwrap_err();
        assert!(
            e.to_string().contains("retention.prune_interval_secs"),
            "{e}"
        );
        let e = load_str("[retention]\nrejected_hours = 3\n", &[]).unwrap_err();
        assert!(e.to_string().contains("rejected_hours"), "{e}");
    }

    #[test]
    fn unknown_provider_is_refused() {
        let e = load_str("[[accounts]]\nprovider = \"paypal\"\n", &[]).unwrap_err();
        assert!(e.to_string().contains("accounts[0].provider"), "{e}");
    }

    #[test]
    fn reconcile_and_provider_api_keys_load_and_are_checked() {
        let c = load_str(
            "[orders]\nclose_at_provider = true\n[[accounts]]\nprovider = \"wechat-v2\"\napi_base = \"http://127.0.0.1:9/\"\n",
            &[("PAYNOTIFY_RECONCILE_ENABLED", "true"), ("PAYNOTIFY_RECONCILE_OLDER_THAN_SECS", "30")],
        )
        .expect("loads");
        assert!(c.reconcile.enabled && c.orders.close_at_provider);
        assert_eq!(
            (c.reconcile.older_than_secs, c.reconcile.interval_secs),
            (30, 300)
        );
        let e = load_str(
            "[[accounts]]\nprovider = \"alipay\"\napi_base = \"ftp://x\"\n",
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("accounts[0].api_base"), "{e}");
        let e = load_str("[reconcile]\nbatch = 0\n", &[]).unwrap_err();
        assert!(e.to_string().contains("reconcile."), "{e}");
        let e = load_str(
            "[[accounts]]\nprovider = \"alipay\"\napp_private_key_file = \"missing.pem\"\n",
            &[],
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("accounts[0].app_private_key_file"),
            "{e}"
        );
        let masked = load_str(
            "[[accounts]]\nprovider = \"wechat-v3\"\nmerchant_private_key = \"-----BEGIN PRIVATE KEY-----\"\n",
            &[],
        )
        .expect("loads")
        .masked();
        assert_eq!(masked["accounts"][0]["merchant_private_key"], "***");
    }

    #[test]
    fn partner_accounts_load_and_each_mistake_is_named_with_its_key() {
        const PARTNER: &str =
            "[[accounts]]\nprovider = \"wechat-v3\"\nname = \"sp\"\nmode = \"partner\"\n\
             sp_mchid = \"1900000100\"\nsp_appid = \"wx8888888888888888\"\n";
        const SUB_A: &str =
            "[[accounts.sub_merchants]]\nsub_mchid = \"1900000109\"\nsub_appid = \"wxd678efh567hg6999\"\n";
        const SUB_B: &str = "[[accounts.sub_merchants]]\nsub_mchid = \"1900000110\"\n";
        let c = load_str(&format!("{PARTNER}{SUB_A}{SUB_B}"), &[]).expect("loads");
        let subs = &c.accounts[0].sub_merchants;
        assert_eq!(subs.len(), 2);
        assert_eq!(subs[0].sub_appid.as_deref(), Some("wxd678efh567hg6999"));
        assert_eq!(subs[1].sub_appid, None);
        // The sub-merchants can come from the environment too, as an inline array.
        let c = load_str(
            PARTNER,
            &[(
                "PAYNOTIFY_ACCOUNTS_0_SUB_MERCHANTS",
                "[{ sub_mchid = \"1900000111\" }]",
            )],
        )
        .expect("loads");
        assert_eq!(c.accounts[0].sub_merchants[0].sub_mchid, "1900000111");
        // Direct accounts are as before.
        load_str(
            "[[accounts]]\nprovider = \"wechat-v3\"\nmode = \"direct\"\nmch_id = \"1\"\n",
            &[],
        )
        .expect("direct loads");
        let cases = [
            (PARTNER.to_owned(), "accounts[0].sub_merchants"),
            (
                format!("{PARTNER}{SUB_B}{SUB_A}{SUB_B}"),
                "accounts[0].sub_merchants[2].sub_mchid",
            ),
            (
                format!("{PARTNER}mch_id = \"1\"\n{SUB_A}"),
                "accounts[0].mch_id",
            ),
            (
                format!("{PARTNER}appid = \"wx1\"\n{SUB_A}"),
                "accounts[0].appid",
            ),
            (
                format!(
                    "{}{SUB_A}",
                    PARTNER.replace("sp_appid = \"wx8888888888888888\"\n", "")
                ),
                "accounts[0].sp_appid",
            ),
            (
                format!("{}{SUB_A}", PARTNER.replace("\"partner\"", "\"agent\"")),
                "accounts[0].mode",
            ),
            (
                format!("{PARTNER}[[accounts.sub_merchants]]\nsub_mchid = \"\"\n"),
                "accounts[0].sub_merchants[0].sub_mchid",
            ),
            (
                "[[accounts]]\nprovider = \"wechat-v3\"\nsp_mchid = \"1900000100\"\n".to_owned(),
                "accounts[0].sp_mchid",
            ),
            (
                "[[accounts]]\nprovider = \"alipay\"\nmode = \"partner\"\n".to_owned(),
                "accounts[0].mode",
            ),
        ];
        for (text, key) in cases {
            let e = load_str(&text, &[]).expect_err(key).to_string();
            assert!(
                e.contains(&format!("`{key}`")) && e.contains("paynotify.toml"),
                "{key}: {e}"
            );
        }
        let e = load_str(&format!("{PARTNER}{SUB_A}{SUB_A}"), &[])
            .expect_err("twice")
            .to_string();
        assert!(e.contains("listed twice (also sub_merchants[0])"), "{e}");
    }
}

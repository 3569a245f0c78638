//! `{type}.toml`: what a handler is granted and the limits it asks for.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::config::PluginsConfig;

/// A handler's grants and limits, as written beside its `.wasm`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The order type these grants are for. When set it must equal the file's stem; with
    /// `allowed_signers` it is required, so a signed manifest cannot be copied onto
    /// another type to hand it these grants.
    #[serde(default, rename = "type")]
    pub plugin_type: Option<String>,
    /// Collections the `db` capability may touch.
    #[serde(default)]
    pub collections: Vec<String>,
    /// Origins (`scheme://host[:port]`) the `http` capability may call.
    #[serde(default)]
    pub http_origins: Vec<String>,
    /// Lets `http` run inside `handle-paid` and `handle-refunded` too (otherwise only in
    /// `run-task`). Only for idempotent calls: a payment retried one at a time after a batch
    /// failure runs its handler again, and the payment's locks are held while the call waits.
    #[serde(default)]
    pub http_in_payment: bool,
    /// Grants the `crypto` operations keyed by the merchant account's notify key
    /// (`aes-encrypt`, `aes-decrypt`, `sign`).
    #[serde(default)]
    pub crypto: bool,
    /// Wall-time limit per call; default from `[plugins]`.
    pub timeout_ms: Option<u64>,
    /// Wall-time limit of `handle-paid` / `handle-refunded`, which run inside the
    /// payment's transaction; default `[plugins] payment_timeout_ms`.
    pub payment_timeout_ms: Option<u64>,
    /// Memory limit per instance; default from `[plugins]`.
    pub memory_mb: Option<u64>,
    /// Settings handed to the handler through its `config` import.
    #[serde(default)]
    pub config: std::collections::BTreeMap<String, String>,
}

/// What `plugins check`, the console and the logs say about `http_in_payment = true`.
pub const HTTP_IN_PAYMENT_WARNING: &str = "http_in_payment = true: HTTP calls from handle-paid / \
     handle-refunded may run more than once for one payment (a failed batch is retried one \
     payment at a time, running the handlers that succeeded again) and hold the payment's locks \
     while they wait; make only idempotent calls there, and everything else from a task";

/// The limits a call actually runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall time per call.
    pub timeout: Duration,
    /// Linear memory per instance, in bytes.
    pub memory_bytes: usize,
}

impl Manifest {
    /// Reads `path`; a missing file is an empty manifest (no grants, default limits).
    pub fn load(path: &Path) -> Result<Manifest, String> {
        match std::fs::read(path) {
            Ok(bytes) => Manifest::parse(&bytes, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Manifest::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Parses the manifest text read from `path` (the bytes whose signature was checked,
    /// not the file read again).
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Manifest, String> {
        let text = std::str::from_utf8(bytes)
            .map_err(|e| format!("{}: not UTF-8: {e}", path.display()))?;
        let m: Manifest = toml::from_str(text).map_err(|e| format!("{}: {e}", path.display()))?;
        // Every capability checks the keys it reads (`capabilities::configure`).
        m.check().map_err(|e| format!("{}: {e}", path.display()))?;
        if m.http_in_payment {
            tracing::warn!(manifest = %path.display(), "{HTTP_IN_PAYMENT_WARNING}");
        }
        Ok(m)
    }

    /// Checks `type`: when set it must be `plugin_type`; when `required` (signatures are
    /// checked) it must be set, so a signed manifest cannot be copied onto another type.
    pub fn check_type(&self, plugin_type: &str, required: bool) -> Result<(), String> {
        match &self.plugin_type {
            Some(t) if t != plugin_type => Err(format!(
                "type = \"{t}\", but the file is the manifest of `{plugin_type}`"
            )),
            None if required => Err(format!(
                "add `type = \"{plugin_type}\"` and sign it again: with plugins.allowed_signers a manifest must name its type, so a signed manifest cannot be copied onto another type"
            )),
            _ => Ok(()),
        }
    }

    /// The limits for a call, or an error naming the key over the global cap.
    pub fn limits(&self, global: &PluginsConfig) -> Result<Limits, String> {
        let timeout_ms = self.timeout_ms.unwrap_or(global.timeout_ms);
        let memory_mb = self.memory_mb.unwrap_or(global.memory_mb);
        within(
            "timeout_ms",
            timeout_ms,
            "max_timeout_ms",
            global.max_timeout_ms,
        )?;
        within(
            "memory_mb",
            memory_mb,
            "max_memory_mb",
            global.max_memory_mb,
        )?;
        Ok(Limits {
            timeout: Duration::from_millis(timeout_ms),
            memory_bytes: usize::try_from(memory_mb.saturating_mul(1024 * 1024))
                .unwrap_or(usize::MAX),
        })
    }

    /// The limits for a call inside a payment or refund transaction: `limits` with the
    /// payment wall time (manifest, then `[plugins] payment_timeout_ms`, then
    /// `timeout_ms`), or an error naming the key over the global cap. A handler that opts
    /// in to `http_in_payment` waits on a backend inside the payment: unless its manifest
    /// sets `payment_timeout_ms`, its payment calls keep the full `timeout_ms`.
    pub fn payment_limits(&self, global: &PluginsConfig) -> Result<Limits, String> {
        let limits = self.limits(global)?;
        let global_default = global.payment_timeout_ms.filter(|_| !self.http_in_payment);
        let Some(ms) = self.payment_timeout_ms.or(global_default) else {
            return Ok(limits);
        };
        within(
            "payment_timeout_ms",
            ms,
            "max_timeout_ms",
            global.max_timeout_ms,
        )?;
        Ok(Limits {
            timeout: Duration::from_millis(ms),
            ..limits
        })
    }

    /// True if the handler may use `collection`.
    pub fn grants_collection(&self, collection: &str) -> bool {
        self.collections.iter().any(|c| c == collection)
    }

    /// True if the handler may call `url`'s origin.
    pub fn grants_origin(&self, url: &reqwest::Url) -> bool {
        let origin = url.origin().ascii_serialization();
        self.http_origins
            .iter()
            .filter_map(|o| normalise_origin(o))
            .any(|o| o == origin)
    }
}

/// Checks that manifest key `key`'s `value` is in `1..=max`, naming the `[plugins]`
/// setting `cap` that sets `max` if it is not.
fn within(key: &str, value: u64, cap: &str, max: u64) -> Result<(), String> {
    if value == 0 || value > max {
        return Err(format!(
            "key `{key}`: {value} is outside 1..={max} (plugins.{cap})"
        ));
    }
    Ok(())
}

/// `https://Example.com:443/` → `https://example.com`; None if not an http(s) origin.
pub fn normalise_origin(s: &str) -> Option<String> {
    let url = reqwest::Url::parse(s).ok()?;
    if !matches!(url.scheme(), "http" | "https")
        || url.path() != "/"
        || url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
    {
        return None;
    }
    Some(url.origin().ascii_serialization())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_compared_normalised() {
        let m = Manifest {
            http_origins: vec![
                "HTTPS://Example.com:443/".into(),
                "http://127.0.0.1:9000".into(),
            ],
            ..Manifest::default()
        };
        assert!(m.check().is_ok());
        let ok = |u: &str| m.grants_origin(&reqwest::Url::parse(u).expect("url"));
        assert!(ok("https://example.com/pay/notify"));
        assert!(ok("http://127.0.0.1:9000/x"));
        assert!(!ok("http://127.0.0.1:9001/x"));
        assert!(!ok("http://example.com/"));
        assert!(!ok("https://example.com.evil.net/"));
    }

    #[test]
    fn bad_manifests_name_the_key() {
        let m: Manifest = toml::from_str("collections = [\"a b\"]").expect("parses");
        assert!(m.check().unwrap_err().contains("collections"));
        assert!(toml::from_str::<Manifest>("colections = []").is_err());
        let m: Manifest = toml::from_str("timeout_ms = 999999").expect("parses");
        let e = m.limits(&PluginsConfig::default()).unwrap_err();
        assert!(e.contains("timeout_ms"), "{e}");
        let m: Manifest = toml::from_str("http_in_payment = true").expect("parses");
        let e = m.check().unwrap_err();
        assert!(
            e.contains("http_in_payment") && e.contains("http_origins"),
            "{e}"
        );
    }

    #[test]
    fn side_effect_grants_default_off() {
        let m: Manifest = toml::from_str("collections = []").expect("parses");
        assert!(!m.http_in_payment && !m.crypto);
        let m: Manifest = toml::from_str(
            "http_origins = [\"https://b.example\"]\nhttp_in_payment = true\ncrypto = true",
        )
        .expect("parses");
        assert!(m.check().is_ok());
        assert!(m.http_in_payment && m.crypto);
    }

    #[test]
    fn payment_calls_get_the_payment_limit_unless_they_wait_on_http() {
        let global = PluginsConfig {
            payment_timeout_ms: Some(200),
            ..PluginsConfig::default()
        };
        let ms = |text: &str| {
            let m: Manifest = toml::from_str(text).expect("parses");
            m.payment_limits(&global).map(|l| l.timeout.as_millis())
        };
        assert_eq!(ms(""), Ok(200));
        assert_eq!(ms("payment_timeout_ms = 900"), Ok(900));
        let opted_in = "http_origins = [\"https://b.example\"]\nhttp_in_payment = true\n";
        assert_eq!(ms(opted_in), Ok(4000), "the full timeout_ms");
        assert_eq!(
            ms(&format!("{opted_in}payment_timeout_ms = 1500")),
            Ok(1500)
        );
        let e = ms("payment_timeout_ms = 999999").unwrap_err();
        assert!(e.contains("payment_timeout_ms"), "{e}");
    }
}

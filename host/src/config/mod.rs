//! `paynotify.toml`: the one configuration file, with `PAYNOTIFY_…` environment overrides
//! and secrets that may live in their own files.
//!
//! Every error names the key and where it came from (the file, or the environment
//! variable), because the person reading it is an ops engineer at 3 a.m.
//!
//! [`Config`] and its error live here; `sections` holds the file's tables and their
//! defaults, `account` the `[[accounts]]` entries and the provider names, `load`
//! reading the file with its environment overrides and secret files, `validate` the
//! checks that name the offending key, and `mask` what may be shown of it.

mod account;
mod load;
mod mask;
mod sections;
mod validate;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use account::{parse_notify_key, AccountConfig, ProviderKind, SubMerchantConfig};
pub use mask::{redact_url, SECRET_KEYS};
pub use sections::{
    AuditConfig, DatabaseConfig, OrdersConfig, PluginsConfig, ReconcileConfig, RetentionConfig,
    ServerConfig, SqliteSynchronous, TasksConfig, SQLITE_PAYMENT_TIMEOUT_MS,
};
pub(crate) use validate::split_authority;

/// A configuration problem, always naming the key and its source.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file named with `--config` (or `PAYNOTIFY_CONFIG`) does not exist.
    #[error("config file {path} does not exist (named by --config or PAYNOTIFY_CONFIG); nothing was started")]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// The file is not valid TOML or a key has the wrong shape.
    #[error("{source_name}: {message}")]
    Invalid {
        /// The file (and any environment overrides applied).
        source_name: String,
        /// The parser's message, which names the key and line.
        message: String,
    },
    /// One key has a value that parses but makes no sense.
    #[error("{source_name}: key `{key}`: {message}")]
    Key {
        /// The file or environment variable.
        source_name: String,
        /// The dotted key, e.g. `accounts[0].api_key_file`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// The whole configuration, as `paynotify serve` uses it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// HTTP listener and API auth.
    #[serde(default)]
    pub server: ServerConfig,
    /// Where orders, notifications, documents and tasks live.
    #[serde(default)]
    pub database: DatabaseConfig,
    /// The handler directory and per-call limits.
    #[serde(default)]
    pub plugins: PluginsConfig,
    /// The task worker.
    #[serde(default)]
    pub tasks: TasksConfig,
    /// Order lifetime: when unpaid orders are closed.
    #[serde(default)]
    pub orders: OrdersConfig,
    /// Asking providers about orders still unpaid (lost notifications).
    #[serde(default)]
    pub reconcile: ReconcileConfig,
    /// How much of the notifications that failed verification is kept, and how long.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Handler write audit.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Merchant accounts, one per provider account.
    #[serde(default)]
    pub accounts: Vec<AccountConfig>,
}

impl Config {
    /// The configured API token, if any.
    pub fn api_token(&self) -> Option<&str> {
        self.server.api_token.as_deref().filter(|t| !t.is_empty())
    }
}

/// Loads `text` as a `paynotify.toml` of its own temporary folder, with `env` as the
/// environment.
#[cfg(test)]
fn load_str(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = std::env::temp_dir().join(format!("paynotify-config-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("paynotify.toml");
    std::fs::write(&path, text).expect("write config");
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Config::load(&path, env)
}

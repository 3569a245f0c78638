//! `paynotify.toml`: the one configuration file, with `PAYNOTIFY_…` environment overrides
//! and secrets that may live in their own files.
//!
//! Every error names the key and where it came from (the file, or the environment
//! variable), because the person reading it is an ops engineer at 3 a.m.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The sections of the file whose keys `PAYNOTIFY_{SECTION}_{KEY}` may override.
const SECTIONS: &[&str] = &[
    "server",
    "database",
    "plugins",
    "tasks",
    "orders",
    "reconcile",
    "retention",
];

/// Section keys whose environment value is always taken as text, never parsed as TOML.
const STRING_KEYS: &[&str] = &[
    "listen",
    "api_token",
    "api_token_file",
    "url",
    "sqlite_synchronous",
    "dir",
    "cache_dir",
];

/// The payment-call limit on SQLite unless `plugins.payment_timeout_ms` says otherwise:
/// a payment handler holds SQLite's one writer, so this is how long a looping handler
/// can make every other payment wait (the breaker stops it repeating).
pub const SQLITE_PAYMENT_TIMEOUT_MS: u64 = 200;

/// The providers paynotify speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProviderKind {
    /// WeChat Pay API v2 (XML, MD5 / HMAC-SHA256).
    WechatV2,
    /// WeChat Pay API v3 (RSA signature, AES-GCM resource).
    WechatV3,
    /// Alipay (form body, RSA2).
    Alipay,
    /// WeChat CloudPay, relayed by a cloud function with a shared secret.
    Cloudpay,
}

impl ProviderKind {
    /// Every provider.
    pub const ALL: [ProviderKind; 4] = [
        ProviderKind::WechatV2,
        ProviderKind::WechatV3,
        ProviderKind::Alipay,
        ProviderKind::Cloudpay,
    ];

    /// The name used in URLs, config and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::WechatV2 => "wechat-v2",
            ProviderKind::WechatV3 => "wechat-v3",
            ProviderKind::Alipay => "alipay",
            ProviderKind::Cloudpay => "cloudpay",
        }
    }

    /// Parses a provider name.
    pub fn parse(s: &str) -> Option<ProviderKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Reads a notify key: 64 hex characters, or exactly 32 bytes of text.
pub fn parse_notify_key(s: &str) -> Option<[u8; 32]> {
    if s.len() == 64 {
        if let Ok(bytes) = hex::decode(s) {
            return bytes.try_into().ok();
        }
    }
    s.as_bytes().try_into().ok()
}

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
    /// Merchant accounts, one per provider account.
    #[serde(default)]
    pub accounts: Vec<AccountConfig>,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Bearer token for `/api`; absent means only loopback clients may call `/api`.
    pub api_token: Option<String>,
    /// File holding the bearer token (alternative to `api_token`).
    pub api_token_file: Option<PathBuf>,
    /// Largest notification body accepted; larger ones are refused with 413 before parsing.
    pub max_body_bytes: usize,
    /// Marks the console's session cookie `Secure`: set it when browsers reach the host
    /// over HTTPS (a TLS proxy in front); plain loopback HTTP needs it off.
    pub console_secure_cookie: bool,
    /// Names (`host` or `host:port`) under which the console, and `/api` without a token,
    /// may be reached besides `localhost`, `127.0.0.1` and `[::1]` on the listen port:
    /// the `Host` and `Origin` every such request must carry (DNS rebinding, cross-site
    /// requests). A reverse proxy's public name goes here.
    pub allowed_hosts: Vec<String>,
    /// Notifications failing verification that one client address may have stored per
    /// minute; beyond, they are answered 429 and not stored. Verified notifications are
    /// never limited.
    pub max_rejections_per_minute: u32,
    /// Most order-event streams (`GET /api/orders/{no}/events`) open at once in this
    /// process; one more is refused with 429.
    pub max_event_streams: usize,
    /// Most order-event streams open at once from one client address; one more is
    /// refused with 429. Behind a proxy every stream comes from the proxy's address.
    pub max_event_streams_per_address: usize,
    /// Longest a notification waits for its answer: past it, whatever the database is
    /// doing, the provider gets its failure answer (503) and retries; the notification
    /// stays stored (see `http/notify.rs` for why finishing it late is still safe).
    pub notify_timeout_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            api_token: None,
            api_token_file: None,
            max_body_bytes: 64 * 1024,
            console_secure_cookie: false,
            allowed_hosts: Vec::new(),
            max_rejections_per_minute: 60,
            max_event_streams: 1000,
            // A merchant's backend proxies its checkout pages' streams, so one address
            // carries many customers: this only keeps one leaking client from taking
            // every stream of the host.
            max_event_streams_per_address: 256,
            notify_timeout_secs: 10,
        }
    }
}

/// `[database]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://path` (created on first run) or
    /// `postgres://user[:password]@host[:port]/database` (also `postgresql://`). A
    /// PostgreSQL URL may add `?schema=NAME` (lower-case letters, digits, `_`): the tables
    /// then live in that schema, created if missing, so several deployments or test runs
    /// can share one database. On PostgreSQL's own machine,
    /// `postgres:///database?host=/var/run/postgresql&user=NAME` goes through its Unix-domain
    /// socket: no TCP/IP stack per round trip (the bench: ~13 % more notifications/s).
    pub url: String,
    /// Pool size. PostgreSQL: the pool for reads and single writes; transactions and the
    /// raw-notification insert use up to as many again, kept open between uses (so up to
    /// twice this many connections). SQLite: the read pool (writes use one connection).
    pub max_connections: u32,
    /// SQLite only: `full` (fsync every commit, survives power loss) or `normal`
    /// (survives a process crash, may lose the last commits on power loss).
    pub sqlite_synchronous: SqliteSynchronous,
    /// Group commit: most notifications settled in one transaction (each in its own
    /// savepoint, every answer after the shared commit); 1 = a transaction each.
    pub batch_max: usize,
    /// Loops settling batches at once; default 1 on SQLite (one writer), 4 on PostgreSQL.
    pub settlers: Option<usize>,
    /// Longest wait for the database outside a payment: for a connection (pool acquire,
    /// and opening one) and for the API's and admin reads. Past it the request is answered
    /// 503 instead of hanging on a database that is down or frozen.
    pub timeout_secs: u64,
}

impl DatabaseConfig {
    /// The URL names an SQLite database (one writer for every payment).
    pub fn is_sqlite(&self) -> bool {
        self.url.starts_with("sqlite:")
    }

    /// [`DatabaseConfig::timeout_secs`] as a duration.
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.timeout_secs.max(1))
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://data/paynotify.db".into(),
            max_connections: 8,
            sqlite_synchronous: SqliteSynchronous::Full,
            batch_max: 64,
            settlers: None,
            timeout_secs: 5,
        }
    }
}

/// SQLite `PRAGMA synchronous` choices that are safe with WAL.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSynchronous {
    /// fsync on every commit.
    Full,
    /// fsync at checkpoints only.
    Normal,
}

/// `[plugins]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Directory holding `{type}.wasm` and optional `{type}.toml`.
    pub dir: PathBuf,
    /// Default wall-time limit per handler call.
    pub timeout_ms: u64,
    /// Default memory limit per handler instance.
    pub memory_mb: u64,
    /// Largest `timeout_ms` a manifest may ask for.
    pub max_timeout_ms: u64,
    /// Largest `memory_mb` a manifest may ask for.
    pub max_memory_mb: u64,
    /// Wall-time limit of the calls made inside a payment or refund transaction
    /// (`handle-paid`, `handle-refunded`). Absent: 200 ms on SQLite, where a handler
    /// holds the database's one writer and every other payment waits for it;
    /// `timeout_ms` on PostgreSQL, where it holds only its own rows' locks.
    pub payment_timeout_ms: Option<u64>,
    /// Payment calls of one type that may time out in a row before the type fails fast.
    pub breaker_timeouts: u32,
    /// How long a type fails fast (failure answer, handler not run) before one call is
    /// tried again.
    pub breaker_cooldown_secs: u64,
    /// Handler instances that may run at once (the pooling allocator's size).
    pub max_instances: u32,
    /// Where compiled plugins are cached; default `{dir}/.cache`.
    pub cache_dir: Option<PathBuf>,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            dir: "plugins.d".into(),
            timeout_ms: 4000,
            memory_mb: 64,
            max_timeout_ms: 30_000,
            max_memory_mb: 256,
            payment_timeout_ms: None,
            breaker_timeouts: 3,
            breaker_cooldown_secs: 30,
            max_instances: 64,
            cache_dir: None,
        }
    }
}

/// `[tasks]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TasksConfig {
    /// Run the task worker in this process.
    pub enabled: bool,
    /// How often the worker looks for due tasks.
    pub poll_ms: u64,
    /// Delay before each retry, in seconds; after the last the task is dead.
    pub backoff_secs: Vec<u64>,
    /// How long a claimed task stays claimed before another worker may take it over. The
    /// worker renews it every third of this while the attempt runs (so `run-task` may
    /// run longer) and abandons an attempt whose lease it lost or could not renew in time;
    /// it bounds how long a task waits after its worker died.
    pub lease_secs: u64,
}

impl Default for TasksConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            poll_ms: 1000,
            backoff_secs: vec![15, 60, 300, 1800, 7200, 21600],
            lease_secs: 300,
        }
    }
}

/// `[orders]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrdersConfig {
    /// An order still unpaid this long after its creation is closed locally (status
    /// 0 → -1, never to be paid); 0 turns expiry off. A payment that arrives for it later
    /// is acknowledged as `paid_after_close` and runs no handler, so keep this at least
    /// as long as the lifetime (`time_expire` / `timeout_express`) given to the provider.
    pub expire_after_secs: u64,
    /// How often each host process looks for expired orders.
    pub expire_check_secs: u64,
    /// Most orders closed by one statement; a full batch is followed by another at once.
    pub close_batch: u32,
    /// Also close expired orders with the provider's close API (WeChat `closeorder`, v3
    /// close, `alipay.trade.close`), before closing them locally; see `expiry.rs`.
    pub close_at_provider: bool,
}

impl Default for OrdersConfig {
    fn default() -> Self {
        Self {
            // Off unless ops choose a lifetime: only they know what they gave the provider,
            // and closing too early turns a late payment into money taken for nothing.
            expire_after_secs: 0,
            expire_check_secs: 60,
            close_batch: 500,
            close_at_provider: false,
        }
    }
}

/// `[reconcile]`: the background job that asks providers about orders still unpaid.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileConfig {
    /// Run the reconciliation job in this process.
    pub enabled: bool,
    /// How often the job runs; also the least time between two queries of one order.
    pub interval_secs: u64,
    /// Only orders unpaid at least this long after creation are queried (a fresh order
    /// is usually still at the cashier, and its notification on the way).
    pub older_than_secs: u64,
    /// Most orders one run claims and queries.
    pub batch: u32,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            interval_secs: 300,
            older_than_secs: 600,
            batch: 100,
        }
    }
}

/// `[retention]`: notifications that failed verification are stored (every one can be
/// replayed once a misconfiguration is fixed), but a stranger can send them without end,
/// so they are bounded: their bodies are cut and they are deleted after a while. Only
/// rejected notifications that never verified are touched (see `store::retention`);
/// verified notifications are never cut or deleted.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Days a notification that failed verification is kept after it arrived; then the
    /// background job deletes it.
    pub rejected_days: u64,
    /// The stored body of a notification that failed verification is cut to this many
    /// bytes (and marked `truncated`). A real provider notification is 1–3 KiB, so the
    /// default keeps a genuine one rejected for a misconfigured key whole, and replayable
    /// once the key is fixed; only oversized junk is cut.
    pub rejected_body_bytes: usize,
    /// How often each host process deletes the expired ones.
    pub prune_interval_secs: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            rejected_days: 30,
            rejected_body_bytes: 8192,
            prune_interval_secs: 3600,
        }
    }
}

/// Most days `retention.rejected_days` may say: a hundred years, so that the age in
/// milliseconds can never overflow.
const MAX_RETENTION_DAYS: u64 = 36_500;

/// One `[[accounts]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    /// `wechat-v2`, `wechat-v3`, `alipay` or `cloudpay`.
    pub provider: String,
    /// Account name, used in `/notify/{provider}/{name}` and by orders; default `default`.
    #[serde(default = "default_account_name")]
    pub name: String,
    /// WeChat appid.
    pub appid: Option<String>,
    /// WeChat merchant id.
    pub mch_id: Option<String>,
    /// WeChat Pay v2 API key.
    pub api_key: Option<String>,
    /// File holding the v2 API key.
    pub api_key_file: Option<PathBuf>,
    /// WeChat Pay v2: pin the signature type (`MD5` or `HMAC-SHA256`); absent accepts either.
    pub sign_type: Option<String>,
    /// WeChat Pay v3 APIv3 key (32 bytes).
    pub api_v3_key: Option<String>,
    /// File holding the APIv3 key.
    pub api_v3_key_file: Option<PathBuf>,
    /// WeChat Pay public keys by id (`PUB_KEY_ID_…` → PEM file).
    #[serde(default)]
    pub public_keys: std::collections::BTreeMap<String, PathBuf>,
    /// WeChat Pay platform certificates (PEM files).
    #[serde(default)]
    pub platform_certs: Vec<PathBuf>,
    /// Alipay app id.
    pub app_id: Option<String>,
    /// Alipay seller id; checked when set.
    pub seller_id: Option<String>,
    /// Alipay public key (PEM or bare base64).
    pub alipay_public_key: Option<String>,
    /// File holding the Alipay public key.
    pub alipay_public_key_file: Option<PathBuf>,
    /// CloudPay sub-merchant id.
    pub sub_mch_id: Option<String>,
    /// CloudPay relay shared secret.
    pub secret: Option<String>,
    /// File holding the CloudPay secret.
    pub secret_file: Option<PathBuf>,
    /// AES key handed to handlers' `crypto` capability (32 bytes, or 64 hex chars).
    pub notify_key: Option<String>,
    /// File holding the notify key.
    pub notify_key_file: Option<PathBuf>,
    /// Base URL of the provider's API (order query and close); default the provider's
    /// real one. Tests point it at a fake provider.
    pub api_base: Option<String>,
    /// WeChat Pay v3 merchant API private key (PEM), signing query and close requests.
    pub merchant_private_key: Option<String>,
    /// File holding the v3 merchant API private key (`apiclient_key.pem`).
    pub merchant_private_key_file: Option<PathBuf>,
    /// Serial number of the v3 merchant API certificate.
    pub merchant_serial_no: Option<String>,
    /// Alipay app private key (PEM or bare base64), signing query and close requests.
    pub app_private_key: Option<String>,
    /// File holding the Alipay app private key.
    pub app_private_key_file: Option<PathBuf>,
}

fn default_account_name() -> String {
    "default".into()
}

impl Config {
    /// Loads `path` if it exists (defaults otherwise), then applies `PAYNOTIFY_…` overrides
    /// from `env` and resolves `*_file` secrets relative to the file's directory.
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let (text, file_exists) = match std::fs::read_to_string(path) {
            Ok(t) => (t, true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (String::new(), false),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        let file_name = if file_exists {
            path.display().to_string()
        } else {
            format!("{} (absent, defaults)", path.display())
        };
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Invalid {
                    source_name: file_name.clone(),
                    message: e.to_string(),
                })?;
        let overridden = apply_env(&mut table, env)?;
        let source_name = if overridden.is_empty() {
            file_name
        } else {
            format!("{file_name} with environment {}", overridden.join(", "))
        };
        let mut config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Invalid {
                    source_name: source_name.clone(),
                    message: e.to_string(),
                })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_files(base, &source_name)?;
        config.validate(&source_name)?;
        if config.plugins.payment_timeout_ms.is_none() {
            config.plugins.payment_timeout_ms = Some(if config.database.is_sqlite() {
                SQLITE_PAYMENT_TIMEOUT_MS.min(config.plugins.timeout_ms)
            } else {
                config.plugins.timeout_ms
            });
        }
        Ok(config)
    }

    /// Reads every `*_file` secret into its value so the rest of the host sees one field.
    fn resolve_files(&mut self, base: &Path, source_name: &str) -> Result<(), ConfigError> {
        let read = |key: String, file: &Path| -> Result<String, ConfigError> {
            let full = if file.is_absolute() {
                file.to_owned()
            } else {
                base.join(file)
            };
            std::fs::read_to_string(&full)
                .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
                .map_err(|e| ConfigError::Key {
                    source_name: source_name.to_owned(),
                    key,
                    message: format!("cannot read {}: {e}", full.display()),
                })
        };
        if let Some(f) = &self.server.api_token_file {
            self.server.api_token = Some(read("server.api_token_file".into(), f)?);
        }
        for (i, a) in self.accounts.iter_mut().enumerate() {
            let pairs: [(&str, &Option<PathBuf>, &mut Option<String>); 7] = [
                ("api_key_file", &a.api_key_file, &mut a.api_key),
                ("api_v3_key_file", &a.api_v3_key_file, &mut a.api_v3_key),
                (
                    "alipay_public_key_file",
                    &a.alipay_public_key_file,
                    &mut a.alipay_public_key,
                ),
                ("secret_file", &a.secret_file, &mut a.secret),
                ("notify_key_file", &a.notify_key_file, &mut a.notify_key),
                (
                    "merchant_private_key_file",
                    &a.merchant_private_key_file,
                    &mut a.merchant_private_key,
                ),
                (
                    "app_private_key_file",
                    &a.app_private_key_file,
                    &mut a.app_private_key,
                ),
            ];
            for (key, file, value) in pairs {
                if let Some(f) = file {
                    *value = Some(read(format!("accounts[{i}].{key}"), f)?);
                }
            }
            for p in a
                .public_keys
                .values_mut()
                .chain(a.platform_certs.iter_mut())
            {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        if self.plugins.dir.is_relative() {
            self.plugins.dir = base.join(&self.plugins.dir);
        }
        Ok(())
    }

    fn validate(&self, source_name: &str) -> Result<(), ConfigError> {
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
        if self.server.max_rejections_per_minute == 0 {
            return Err(err(
                "server.max_rejections_per_minute".into(),
                "must be at least 1 (verified notifications are never limited)".into(),
            ));
        }
        if self.server.max_event_streams == 0 {
            return Err(err(
                "server.max_event_streams".into(),
                "must be at least 1".into(),
            ));
        }
        if self.server.max_event_streams_per_address == 0 {
            return Err(err(
                "server.max_event_streams_per_address".into(),
                "must be at least 1".into(),
            ));
        }
        if self.server.notify_timeout_secs == 0 {
            return Err(err(
                "server.notify_timeout_secs".into(),
                "must be at least 1 (seconds a provider waits for its answer)".into(),
            ));
        }
        if self.database.timeout_secs == 0 {
            return Err(err(
                "database.timeout_secs".into(),
                "must be at least 1".into(),
            ));
        }
        let p = &self.plugins;
        if p.timeout_ms == 0 || p.timeout_ms > p.max_timeout_ms {
            return Err(err(
                "plugins.timeout_ms".into(),
                format!(
                    "must be between 1 and plugins.max_timeout_ms ({})",
                    p.max_timeout_ms
                ),
            ));
        }
        if p.memory_mb == 0 || p.memory_mb > p.max_memory_mb {
            return Err(err(
                "plugins.memory_mb".into(),
                format!(
                    "must be between 1 and plugins.max_memory_mb ({})",
                    p.max_memory_mb
                ),
            ));
        }
        if let Some(ms) = p.payment_timeout_ms {
            if ms == 0 || ms > p.max_timeout_ms {
                return Err(err(
                    "plugins.payment_timeout_ms".into(),
                    format!(
                        "must be between 1 and plugins.max_timeout_ms ({})",
                        p.max_timeout_ms
                    ),
                ));
            }
        }
        if p.breaker_timeouts == 0 {
            return Err(err(
                "plugins.breaker_timeouts".into(),
                "must be at least 1".into(),
            ));
        }
        if p.breaker_cooldown_secs == 0 {
            return Err(err(
                "plugins.breaker_cooldown_secs".into(),
                "must be at least 1".into(),
            ));
        }
        if p.max_instances == 0 {
            return Err(err(
                "plugins.max_instances".into(),
                "must be at least 1".into(),
            ));
        }
        if self.tasks.backoff_secs.is_empty() {
            return Err(err(
                "tasks.backoff_secs".into(),
                "needs at least one delay".into(),
            ));
        }
        if self.tasks.lease_secs == 0 {
            return Err(err("tasks.lease_secs".into(), "must be at least 1".into()));
        }
        if self.orders.expire_check_secs == 0 {
            return Err(err(
                "orders.expire_check_secs".into(),
                "must be at least 1".into(),
            ));
        }
        if self.orders.close_batch == 0 {
            return Err(err(
                "orders.close_batch".into(),
                "must be at least 1".into(),
            ));
        }
        if self.reconcile.interval_secs == 0 || self.reconcile.batch == 0 {
            return Err(err(
                "reconcile.interval_secs".into(),
                "interval_secs and batch must be at least 1".into(),
            ));
        }
        let r = &self.retention;
        if r.rejected_days == 0 || r.rejected_days > MAX_RETENTION_DAYS {
            return Err(err(
                "retention.rejected_days".into(),
                format!("must be between 1 and {MAX_RETENTION_DAYS}"),
            ));
        }
        if r.rejected_body_bytes > i32::MAX as usize {
            return Err(err(
                "retention.rejected_body_bytes".into(),
                format!("must be at most {}", i32::MAX),
            ));
        }
        if r.prune_interval_secs == 0 {
            return Err(err(
                "retention.prune_interval_secs".into(),
                "must be at least 1".into(),
            ));
        }
        if self.database.batch_max == 0 || self.database.settlers == Some(0) {
            return Err(err(
                "database.batch_max".into(),
                "batch_max and settlers must be at least 1".into(),
            ));
        }
        if self.database.max_connections == 0 {
            return Err(err(
                "database.max_connections".into(),
                "must be at least 1".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, a) in self.accounts.iter().enumerate() {
            if !ProviderKind::ALL
                .iter()
                .any(|k| k.as_str() == a.provider)
            {
                return Err(err(
                    format!("accounts[{i}].provider"),
                    format!(
                        "unknown provider `{}` (expected one of: wechat-v2, wechat-v3, alipay, cloudpay)",
                        a.provider
                    ),
                ));
            }
            if !is_simple_name(&a.name) {
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

    /// The configured API token, if any.
    pub fn api_token(&self) -> Option<&str> {
        self.server.api_token.as_deref().filter(|t| !t.is_empty())
    }

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

/// Letters, digits, `-` and `_`: safe in URLs, file names and log lines.
pub fn is_simple_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Applies `PAYNOTIFY_{SECTION}_{KEY}=value` and `PAYNOTIFY_ACCOUNTS_{INDEX}_{KEY}=value`.
/// Values parse as TOML when they can (`8080`, `true`, `[1, 2]`) and are strings otherwise.
/// Returns the variables applied, for error messages.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<String>, ConfigError> {
    let mut applied = Vec::new();
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("PAYNOTIFY_"))
        .collect();
    vars.sort();
    for (var, raw) in vars {
        let rest = var["PAYNOTIFY_".len()..].to_ascii_lowercase();
        if let Some(tail) = rest.strip_prefix("accounts_") {
            let (index, key) = tail.split_once('_').ok_or_else(|| ConfigError::Key {
                source_name: format!("environment variable {var}"),
                key: var.clone(),
                message: "expected PAYNOTIFY_ACCOUNTS_{INDEX}_{KEY}".into(),
            })?;
            let index: usize = index.parse().map_err(|_| ConfigError::Key {
                source_name: format!("environment variable {var}"),
                key: var.clone(),
                message: format!("`{index}` is not an account index"),
            })?;
            let accounts = table
                .entry("accounts")
                .or_insert_with(|| toml::Value::Array(Vec::new()));
            let Some(accounts) = accounts.as_array_mut() else {
                return Err(ConfigError::Key {
                    source_name: format!("environment variable {var}"),
                    key: "accounts".into(),
                    message: "`accounts` must be an array of tables".into(),
                });
            };
            while accounts.len() <= index {
                accounts.push(toml::Value::Table(toml::Table::new()));
            }
            // Every account key is text (ids such as mch_id look numeric but are not
            // numbers) except the key maps and certificate lists.
            let value = if raw.starts_with('[') || raw.starts_with('{') {
                parse_env_value(&raw)
            } else {
                toml::Value::String(raw)
            };
            if let Some(t) = accounts[index].as_table_mut() {
                t.insert(key.to_owned(), value);
            }
            applied.push(var);
            continue;
        }
        let Some((section, key)) = SECTIONS
            .iter()
            .find_map(|s| rest.strip_prefix(&format!("{s}_")).map(|k| (*s, k)))
        else {
            // PAYNOTIFY_CONFIG and variables of other tools are not config keys.
            continue;
        };
        let value = if STRING_KEYS.contains(&key) {
            toml::Value::String(raw)
        } else {
            parse_env_value(&raw)
        };
        let section_table = table
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match section_table.as_table_mut() {
            Some(t) => {
                t.insert(key.to_owned(), value);
            }
            None => {
                return Err(ConfigError::Key {
                    source_name: format!("environment variable {var}"),
                    key: section.into(),
                    message: format!("`{section}` must be a table"),
                })
            }
        }
        applied.push(var);
    }
    Ok(applied)
}

fn parse_env_value(raw: &str) -> toml::Value {
    // Parse as a TOML value via a one-key document; anything that is not valid TOML
    // (a bare word, a URL) is taken as a string.
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!("paynotify-config-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("paynotify.toml");
        std::fs::write(&path, text).expect("write config");
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::load(&path, env)
    }

    #[test]
    fn defaults_work_without_a_file() {
        let c =
            Config::load(Path::new("/nonexistent/paynotify.toml"), Vec::new()).expect("defaults");
        assert_eq!(c.server.listen.port(), 8080);
        assert_eq!(c.plugins.timeout_ms, 4000);
        assert!(c.database.url.starts_with("sqlite://"));
    }

    #[test]
    fn payment_calls_are_limited_by_the_backend_unless_configured() {
        let sqlite = load_str("", &[]).expect("sqlite");
        assert_eq!(
            sqlite.plugins.payment_timeout_ms,
            Some(SQLITE_PAYMENT_TIMEOUT_MS)
        );
        let pg = load_str("[database]\nurl = \"postgres://u@db/x\"\n", &[]).expect("pg");
        assert_eq!(pg.plugins.payment_timeout_ms, Some(4000));
        let set = load_str("[plugins]\npayment_timeout_ms = 900\n", &[]).expect("set");
        assert_eq!(set.plugins.payment_timeout_ms, Some(900));
        let e = load_str("[plugins]\npayment_timeout_ms = 40000\n", &[]).unwrap_err();
        assert!(e.to_string().contains("plugins.payment_timeout_ms"), "{e}");
        let e = load_str("[plugins]\nbreaker_timeouts = 0\n", &[]).unwrap_err();
        assert!(e.to_string().contains("plugins.breaker_timeouts"), "{e}");
    }

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
    fn unknown_key_is_named_with_the_file() {
        let e = load_str("[server]\nlisten = \"127.0.0.1:1\"\nlistne = 3\n", &[]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("paynotify.toml"), "{msg}");
        assert!(msg.contains("listne"), "{msg}");
    }

    #[test]
    fn env_overrides_sections_and_accounts() {
        let c = load_str(
            "[[accounts]]\nprovider = \"wechat-v2\"\nappid = \"wx1\"\n",
            &[
                ("PAYNOTIFY_SERVER_LISTEN", "127.0.0.1:9999"),
                ("PAYNOTIFY_PLUGINS_TIMEOUT_MS", "1000"),
                ("PAYNOTIFY_ACCOUNTS_0_MCH_ID", "12345"),
                ("PAYNOTIFY_TEST_SOMETHING", "ignored"),
            ],
        )
        .expect("config");
        assert_eq!(c.server.listen.port(), 9999);
        assert_eq!(c.plugins.timeout_ms, 1000);
        // Numeric-looking merchant ids stay text.
        assert_eq!(c.accounts[0].mch_id.as_deref(), Some("12345"));
    }

    #[test]
    fn bad_env_value_names_the_variable() {
        let e = load_str("", &[("PAYNOTIFY_SERVER_LISTEN", "not-an-address")]).unwrap_err();
        assert!(e.to_string().contains("PAYNOTIFY_SERVER_LISTEN"), "{e}");
    }

    #[test]
    fn secret_files_are_read_and_missing_ones_named() {
        let e = load_str(
            "[[accounts]]\nprovider = \"wechat-v2\"\napi_key_file = \"nope.key\"\n",
            &[],
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("accounts[0].api_key_file") && msg.contains("nope.key"),
            "{msg}"
        );
    }

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
             [[accounts]]\nprovider = \"cloudpay\"\nsub_mch_id = \"9\"\nsecret = \"sec-4\"\n",
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
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(c.masked()["accounts"][0]["appid"], "wx1");
        assert_eq!(c.masked()["accounts"][0]["api_key"], "***");
        assert_eq!(c.masked()["orders"]["expire_after_secs"], 0);
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
}

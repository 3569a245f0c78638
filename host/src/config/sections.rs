//! The file's tables other than `[[accounts]]`, each with the defaults a missing key takes.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The payment-call limit on SQLite unless `plugins.payment_timeout_ms` says otherwise:
/// a payment handler holds SQLite's one writer, so this is how long a looping handler
/// can make every other payment wait (the breaker stops it repeating).
pub const SQLITE_PAYMENT_TIMEOUT_MS: u64 = 200;

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
    /// The host's address as providers reach it (`https://pay.example.com`, no trailing
    /// `/`): the `notify_url` of every payment and refund placed with `pay` is this plus
    /// `/notify/{provider}/{account}`. Placing a payment needs it.
    pub public_base_url: Option<String>,
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
            public_base_url: None,
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
    /// Where compiled plugins are cached: a folder private to the host's user. Default:
    /// `compiled/` beside the SQLite database, else `$XDG_CACHE_HOME/paynotify/compiled`
    /// (or `~/.cache/…`); never inside `dir`.
    pub cache_dir: Option<PathBuf>,
    /// An OpenSSH `allowed_signers` file (relative to the config file). When set, a
    /// handler loads only if its `.wasm` and manifest carry `paynotify-plugin` signatures
    /// (`{file}.sig`, `ssh-keygen -Y sign -n paynotify-plugin`) by a key listed there.
    pub allowed_signers: Option<PathBuf>,
    /// Share of a type's payments and refunds its staged candidate (`{type}.next.wasm`)
    /// runs beside the serving build, in a shadow run that never commits (0.0–1.0).
    pub shadow_sample: f64,
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
            allowed_signers: None,
            shadow_sample: 1.0,
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
    /// The lifetime given to the provider when a payment is placed (WeChat `time_expire`,
    /// Alipay `timeout_express`), counted from the order's creation; absent: the same as
    /// `expire_after_secs` (nothing is sent when that is 0 too, and the provider's own
    /// default applies). Never longer than `expire_after_secs` (config check refuses it):
    /// a buyer who could pay after the local close would pay for nothing.
    pub pay_expire_secs: Option<u64>,
}

impl OrdersConfig {
    /// The lifetime to give the provider, in seconds, if any.
    pub fn provider_lifetime_secs(&self) -> Option<u64> {
        match (self.pay_expire_secs, self.expire_after_secs) {
            (Some(s), _) => Some(s),
            (None, 0) => None,
            (None, local) => Some(local),
        }
    }
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
            pay_expire_secs: None,
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

/// `[audit]`: every document write and enqueued task of a handler, recorded with the
/// payment, refund or task run that made it (`handler_writes`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Record handler writes.
    pub enabled: bool,
    /// Days a recorded write (and a shadow run's recorded difference) is kept; then the
    /// background job deletes it.
    pub keep_days: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            keep_days: 90,
        }
    }
}

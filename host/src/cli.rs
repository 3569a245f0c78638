//! The `paynotify` command line. Commands that change a running host (reload, replay)
//! go through its admin API so the one process serving notifications does the work;
//! read-only ones read the database directly.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::config::Config;

/// paynotify: verifies payment notifications, marks orders paid exactly once and runs
/// WebAssembly business handlers.
#[derive(Debug, Parser)]
#[command(name = "paynotify", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file (missing = built-in defaults; PAYNOTIFY_… variables override keys).
    #[arg(
        long,
        short,
        global = true,
        env = "PAYNOTIFY_CONFIG",
        default_value = "paynotify.toml"
    )]
    pub config: PathBuf,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: notification endpoints, API, plugin loading.
    Serve,
    /// Inspect and reload handlers.
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// Look at orders.
    #[command(subcommand)]
    Orders(OrdersCommand),
    /// Look at received notifications and re-drive them.
    #[command(subcommand)]
    Notifications(NotificationsCommand),
    /// Look at the task queue and re-drive dead tasks.
    #[command(subcommand)]
    Tasks(TasksCommand),
}

/// `paynotify tasks …`.
#[derive(Debug, Subcommand)]
pub enum TasksCommand {
    /// Newest first.
    List {
        /// Only this status (pending, running, done, dead).
        #[arg(long)]
        status: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Run a dead (or waiting) task again now, with a fresh set of attempts.
    Retry {
        /// Its id.
        id: i64,
    },
}

/// `paynotify plugins …`.
#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// What the running server has loaded, with versions, hashes and load errors.
    List,
    /// Make the running server rescan its plugins directory now.
    Reload,
    /// Validate a handler file (world version, exports, manifest) without loading it.
    Check {
        /// The `.wasm` file; its `.toml` manifest beside it is checked too.
        file: PathBuf,
    },
}

/// `paynotify orders …`.
#[derive(Debug, Subcommand)]
pub enum OrdersCommand {
    /// One order, with its handler result.
    Show {
        /// The merchant order number.
        out_trade_no: String,
    },
}

/// `paynotify notifications …`.
#[derive(Debug, Subcommand)]
pub enum NotificationsCommand {
    /// Newest first.
    List {
        /// Only this provider.
        #[arg(long)]
        provider: Option<String>,
        /// Only this order.
        #[arg(long)]
        order: Option<String>,
        /// Only this verdict (received, paid, duplicate, ignored, paid_after_close, rejected, failed).
        #[arg(long)]
        verdict: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One notification with its raw body.
    Show {
        /// Its id.
        id: i64,
    },
    /// Run a stored notification through the pipeline again (on the running server).
    Replay {
        /// Its id.
        id: i64,
    },
}

/// Loads the config for any command.
pub fn load_config(path: &Path) -> Result<Config, crate::config::ConfigError> {
    Config::load(path, std::env::vars())
}

/// A client for the running server's admin API, using the config's address and token.
pub struct AdminClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl AdminClient {
    /// Targets the `[server]` of `config`.
    pub fn new(config: &Config) -> AdminClient {
        let mut addr = config.server.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        AdminClient {
            base: format!("http://{addr}"),
            token: config.api_token().map(str::to_owned),
            http: reqwest::Client::new(),
        }
    }

    /// Calls `method path` and returns the JSON answer, or an error with the server's message.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> Result<serde_json::Value, String> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| {
            format!(
                "cannot reach the server at {}: {e} (is `paynotify serve` running?)",
                self.base
            )
        })?;
        let status = resp.status();
        let body: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| format!("server answered {status} with a body that is not JSON: {e}"))?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(format!(
                "server answered {status}: {}",
                body.get("error").and_then(|e| e.as_str()).unwrap_or("")
            ))
        }
    }
}

//! The `paynotify` command line. Commands that change a running host (reload, replay)
//! go through its admin API so the one process serving notifications does the work;
//! read-only ones read the database directly.

pub mod new_plugin;
pub mod tryout;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use serde_json::Value;

use paynotify::config::Config;
use paynotify::store::{status, Millis, NotificationRecord, Order, OrderCursor, TaskRecord, Verdict};

/// paynotify: verifies payment notifications, marks orders paid exactly once and runs
/// WebAssembly business handlers.
#[derive(Debug, Parser)]
#[command(
    name = "paynotify",
    version,
    about,
    long_about = None,
    after_help = EXAMPLES,
)]
pub struct Cli {
    /// Configuration file; it must exist. Not given: `paynotify.toml` in the current
    /// folder if there is one, else built-in defaults (said in the log). PAYNOTIFY_…
    /// variables override keys.
    #[arg(long, short, global = true, env = "PAYNOTIFY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Print machine-readable JSON (one line) instead of tables and text.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

const EXAMPLES: &str = "\
Examples:
  paynotify serve                            run the server (reads ./paynotify.toml)
  paynotify config check                     is the configuration valid, and what is in effect?
  paynotify orders list --status unpaid      the newest unpaid orders
  paynotify orders show R20260001            one order and what its handler returned
  paynotify notifications list --verdict failed --since 2026-09-01T00:00:00Z
  paynotify tasks list --status dead         side effects that ran out of retries
  paynotify plugins list                     the handlers the running server has loaded
  paynotify reconcile --older-than 600       ask providers about orders unpaid for 10 minutes
  paynotify notifications replay --failed    re-drive failed handlers once the plugin is fixed
  paynotify new-plugin points --lang js      a new JavaScript handler project in ./points
  paynotify try points.wasm --order order.json   run a handler once, show its writes

Read-only commands read the database named by the configuration; reload, replay,
reconcile and plugins list ask the running server (server.listen, with server.api_token).";

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
    /// Run the server: notification endpoints, API, plugin hot reload, task worker and
    /// order expiry.
    Serve,
    /// Check the configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Inspect and reload handlers (the `{type}.wasm` files).
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// Look at orders.
    #[command(subcommand)]
    Orders(OrdersCommand),
    /// Look at received notifications and re-drive them.
    #[command(subcommand)]
    Notifications(NotificationsCommand),
    /// Look at the task queue (handlers' after-payment side effects) and re-drive dead tasks.
    #[command(subcommand)]
    Tasks(TasksCommand),
    /// Ask the providers now about unpaid orders (on the running server) and settle the
    /// ones they say are paid, exactly as their notification would have. CloudPay orders
    /// are skipped (no query API).
    Reconcile {
        /// Only orders unpaid at least this many seconds after creation (default:
        /// [reconcile] older_than_secs).
        #[arg(long, value_name = "SECS")]
        older_than: Option<u64>,
        /// Only this order, whatever its age.
        #[arg(long, value_name = "OUT_TRADE_NO", conflicts_with = "older_than")]
        order: Option<String>,
    },
    /// Write a new handler project (Rust or JavaScript) that builds as it is.
    NewPlugin {
        /// The order type it handles: letters, digits, - and _, starting with a letter.
        name: String,
        /// The handler's language.
        #[arg(long, value_enum, default_value_t = new_plugin::Lang::Rust)]
        lang: new_plugin::Lang,
        /// Where to create the project (must not exist); default ./NAME.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Run a handler's handle-paid once on a throwaway SQLite database and show the
    /// documents, tasks and logs it produced (no server, no payment provider).
    Try(tryout::TryArgs),
}

/// `paynotify config …`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Load the configuration as `serve` would (file, PAYNOTIFY_… environment overrides,
    /// secret files, merchant keys) and print what is in effect, secrets masked as ***.
    /// Exits non-zero with the error, naming the key and the file or variable, when it is
    /// invalid. Does not connect to the database.
    Check,
}

/// `paynotify tasks …`.
#[derive(Debug, Subcommand)]
pub enum TasksCommand {
    /// Tasks, newest first.
    List {
        /// Only this status: pending, running, done or dead.
        #[arg(long)]
        status: Option<String>,
        /// How many (at most 500).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Run a dead (or waiting) task again now, with a fresh set of attempts.
    Retry {
        /// The task id (first column of `tasks list`).
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
    /// Orders, newest first. The last line tells how to get the next page.
    List {
        /// Only this status: unpaid (0), paid (1), closed (-1), partially_refunded (2),
        /// refunded (3).
        #[arg(long, value_parser = parse_status, allow_hyphen_values = true)]
        status: Option<i32>,
        /// Only this handler type (e.g. recharge).
        #[arg(long = "type", value_name = "TYPE")]
        order_type: Option<String>,
        /// Only this user id.
        #[arg(long)]
        user: Option<String>,
        /// Start after this order: `CREATED_AT:OUT_TRADE_NO`, as printed at the end of
        /// the previous page.
        #[arg(long, value_parser = OrderCursor::parse)]
        before: Option<OrderCursor>,
        /// How many (at most 500).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

/// `paynotify notifications …`.
#[derive(Debug, Subcommand)]
pub enum NotificationsCommand {
    /// Notifications received, newest first.
    List {
        /// Only this provider (wechat-v2, wechat-v3, alipay, cloudpay).
        #[arg(long)]
        provider: Option<String>,
        /// Only this order number.
        #[arg(long)]
        order: Option<String>,
        /// Only this verdict: received, paid, duplicate, ignored, paid_after_close,
        /// rejected, refunded, refund_unapplied (verified refunds that can never apply:
        /// they need attention), refund_pending (refunds waiting for their payment), failed.
        #[arg(long, value_parser = parse_verdict)]
        verdict: Option<Verdict>,
        /// Only those received at or after this time: RFC 3339 (2026-09-03T13:15:40Z,
        /// 2026-09-03T21:15:40+08:00) or unix milliseconds.
        #[arg(long, value_parser = paynotify::store::parse_time)]
        since: Option<Millis>,
        /// Only those received before this time (same forms as --since).
        #[arg(long, value_parser = paynotify::store::parse_time)]
        until: Option<Millis>,
        /// Only ids below this one (the next page after the last id shown).
        #[arg(long)]
        before: Option<i64>,
        /// Only those still `received` more than a minute after they arrived: processing
        /// never ended (host killed, database lost). The server's background job processes
        /// them again; any listed are waiting for it or keep failing.
        #[arg(long, conflicts_with_all = ["verdict", "until"])]
        stuck: bool,
        /// How many (at most 500).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One notification with its headers and raw body.
    Show {
        /// Its id (first column of `notifications list`).
        id: i64,
    },
    /// Run a stored notification through the pipeline again (on the running server), or
    /// with --failed every notification whose handler failed and whose order is still
    /// unpaid (after fixing the plugin). An order already paid is never paid again.
    Replay {
        /// Its id (leave out with --failed).
        #[arg(required_unless_present = "failed", conflicts_with = "failed")]
        id: Option<i64>,
        /// Re-drive every failed notification whose order is still unpaid, oldest first.
        #[arg(long)]
        failed: bool,
        /// With --failed: only those received at or after this time (RFC 3339 or unix ms).
        #[arg(long, requires = "failed", value_parser = paynotify::store::parse_time)]
        since: Option<Millis>,
        /// With --failed: only those for orders of this handler type.
        #[arg(long = "type", value_name = "TYPE", requires = "failed")]
        order_type: Option<String>,
        /// With --failed: at most this many (default 100).
        #[arg(long, requires = "failed")]
        limit: Option<u32>,
    },
}

/// `--status` of `orders list`: a code or a name.
fn parse_status(text: &str) -> Result<i32, String> {
    status::parse(text).ok_or_else(|| {
        format!(
            "unknown status `{text}`: use unpaid (0), paid (1), closed (-1), partially_refunded (2) or refunded (3)"
        )
    })
}

/// `--verdict` of `notifications list`.
fn parse_verdict(text: &str) -> Result<Verdict, String> {
    Verdict::parse(text).ok_or_else(|| {
        let names: Vec<&str> = Verdict::ALL.iter().map(|v| v.as_str()).collect();
        format!("unknown verdict `{text}`: use one of {}", names.join(", "))
    })
}

/// The file read when no `--config` (or `PAYNOTIFY_CONFIG`) names one.
pub const DEFAULT_CONFIG: &str = "paynotify.toml";

impl Cli {
    /// The configuration file, and whether the operator named it (then it must exist).
    pub fn config_file(&self) -> (&Path, bool) {
        match &self.config {
            Some(path) => (path, true),
            None => (Path::new(DEFAULT_CONFIG), false),
        }
    }
}

/// Loads the config for any command. A file named with `--config` / `PAYNOTIFY_CONFIG`
/// that does not exist is an error: a typo in a deploy must not serve an empty database
/// on defaults. Without one, a missing `paynotify.toml` means the built-in defaults, and
/// the log says so.
pub fn load_config(path: &Path, named: bool) -> Result<Config, paynotify::config::ConfigError> {
    if named && !path.exists() {
        return Err(paynotify::config::ConfigError::Missing {
            path: path.to_owned(),
        });
    }
    let config = Config::load(path, std::env::vars())?;
    if !named && !path.exists() {
        tracing::warn!(
            database = %paynotify::config::redact_url(&config.database.url),
            plugins = %config.plugins.dir.display(),
            "no --config given and no {DEFAULT_CONFIG} here: running on built-in defaults"
        );
    }
    Ok(config)
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

/// A plain-text table: a header row and left-aligned columns two spaces apart.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&'static str]) -> Table {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (cells are cleaned of control characters).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows
            .push(cells.into_iter().map(|c| clean(&c, MAX_CELL)).collect());
    }

    /// The table as text, one line per row, ending with a newline.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                if i + 1 < row.len() {
                    line.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Longest cell shown in a table (reasons and errors can be long; `show` has them whole).
const MAX_CELL: usize = 72;

/// Text from the database or the wire, made safe and short for a terminal: control
/// characters (which could move the cursor or recolour the screen) become `?`, and
/// text past `max` characters is cut with `…`.
pub fn clean(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.chars().count() > max {
        out.pop();
        out.push('…');
    }
    out
}

/// Like [`clean`] for multi-line text shown whole: keeps newlines and tabs.
fn clean_block(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                '?'
            } else {
                c
            }
        })
        .collect()
}

/// A time for people: `2026-09-03 13:15:40` (UTC), or `-` when absent.
pub fn short_time(ms: Option<Millis>) -> String {
    let Some(ms) = ms else {
        return "-".into();
    };
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| ms.to_string())
}

fn or_dash(v: Option<&str>) -> String {
    v.filter(|s| !s.is_empty()).unwrap_or("-").to_owned()
}

/// `1 (paid)`.
fn status_text(code: i32) -> String {
    format!("{code} ({})", status::name(code))
}

/// `paynotify orders list`.
pub fn orders_table(orders: &[Order]) -> String {
    let mut t = Table::new(&[
        "OUT_TRADE_NO",
        "TYPE",
        "STATUS",
        "FEE(fen)",
        "USER",
        "PROVIDER",
        "HANDLER",
        "CREATED (UTC)",
    ]);
    for o in orders {
        t.row(vec![
            o.out_trade_no.clone(),
            o.order_type.clone(),
            status_text(o.status),
            o.total_fee.to_string(),
            o.user_id.clone(),
            format!("{}/{}", o.provider, o.account),
            o.handler_status.clone(),
            short_time(Some(o.created_at)),
        ]);
    }
    t.render()
}

/// `paynotify orders show`.
pub fn order_text(o: &Order) -> String {
    let json = |v: &Option<Value>| v.as_ref().map_or("-".into(), Value::to_string);
    let lines: Vec<(&str, String)> = vec![
        ("out_trade_no", o.out_trade_no.clone()),
        ("type", o.order_type.clone()),
        ("status", status_text(o.status)),
        ("total_fee", format!("{} fen", o.total_fee)),
        ("user_id", o.user_id.clone()),
        (
            "provider",
            format!("{} (account {})", o.provider, o.account),
        ),
        ("transaction_id", or_dash(o.transaction_id.as_deref())),
        ("pay_date", short_time(o.pay_date)),
        ("notify_date", short_time(o.notify_date)),
        ("handler_status", o.handler_status.clone()),
        ("handler_version", or_dash(o.handler_version.as_deref())),
        ("handler_result", json(&o.handler_result)),
        ("custom", o.custom.to_string()),
        (
            "paid_by",
            o.paid_notification_id
                .map_or("-".into(), |id| format!("notification {id}")),
        ),
        ("created_at", short_time(Some(o.created_at))),
        ("updated_at", short_time(Some(o.updated_at))),
    ];
    key_values(&lines)
}

fn key_values(lines: &[(&str, String)]) -> String {
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    lines
        .iter()
        .map(|(k, v)| format!("{k:width$}  {}\n", clean_block(v)))
        .collect()
}

/// `paynotify notifications list`.
pub fn notifications_table(list: &[NotificationRecord]) -> String {
    let mut t = Table::new(&[
        "ID",
        "RECEIVED (UTC)",
        "PROVIDER",
        "ACCOUNT",
        "ORDER",
        "VERDICT",
        "REASON",
    ]);
    for n in list {
        t.row(vec![
            n.id.to_string(),
            short_time(Some(n.received_at)),
            n.provider.clone(),
            or_dash(n.account.as_deref()),
            or_dash(n.out_trade_no.as_deref()),
            n.verdict.as_str().to_owned(),
            or_dash(n.reason.as_deref()),
        ]);
    }
    t.render()
}

/// `paynotify notifications show`.
pub fn notification_text(n: &NotificationRecord) -> String {
    let mut out = key_values(&[
        ("id", n.id.to_string()),
        ("provider", n.provider.clone()),
        ("account", or_dash(n.account.as_deref())),
        ("received_at", short_time(Some(n.received_at))),
        ("remote_addr", or_dash(n.remote_addr.as_deref())),
        ("order", or_dash(n.out_trade_no.as_deref())),
        ("verdict", n.verdict.as_str().to_owned()),
        ("reason", or_dash(n.reason.as_deref())),
        ("processed_at", short_time(n.processed_at)),
    ]);
    out.push_str("\nheaders:\n");
    for (k, v) in &n.headers {
        out.push_str(&format!("  {}: {}\n", clean(k, 200), clean(v, 2000)));
    }
    out.push_str(if n.truncated {
        "\nbody (cut at the size limit):\n"
    } else {
        "\nbody:\n"
    });
    out.push_str(&clean_block(&String::from_utf8_lossy(&n.body)));
    out.push('\n');
    out
}

/// `paynotify tasks list`.
pub fn tasks_table(list: &[TaskRecord]) -> String {
    let mut t = Table::new(&[
        "ID",
        "PLUGIN",
        "NAME",
        "STATUS",
        "ATTEMPTS",
        "RUN AT (UTC)",
        "ORDER",
        "LAST ERROR",
    ]);
    for task in list {
        t.row(vec![
            task.id.to_string(),
            task.plugin.clone(),
            task.name.clone(),
            task.status.clone(),
            task.attempts.to_string(),
            short_time(Some(task.run_at)),
            or_dash(task.out_trade_no.as_deref()),
            or_dash(task.last_error.as_deref()),
        ]);
    }
    t.render()
}

/// `paynotify plugins list`, from `GET /api/admin/plugins`.
pub fn plugins_table(list: &Value) -> String {
    let text = |p: &Value, k: &str| p[k].as_str().map(str::to_owned);
    let mut t = Table::new(&[
        "TYPE",
        "SERVING",
        "VERSION",
        "SHA256",
        "REFUNDS",
        "LOADED (UTC)",
        "FAILING FAST UNTIL",
        "LAST LOAD ERROR",
    ]);
    for p in list.as_array().map(Vec::as_slice).unwrap_or_default() {
        t.row(vec![
            text(p, "type").unwrap_or_default(),
            if p["loaded"] == true { "yes" } else { "NO" }.into(),
            or_dash(text(p, "version").as_deref()),
            text(p, "sha256").map_or("-".into(), |h| h.chars().take(12).collect()),
            if p["handles_refunds"] == true {
                "yes"
            } else {
                "-"
            }
            .into(),
            short_time(p["loaded_at"].as_i64()),
            match p["breaker"]["failing_fast_until"].as_i64() {
                Some(until) => format!(
                    "{} ({} timeouts)",
                    short_time(Some(until)),
                    p["breaker"]["timeouts_in_a_row"]
                ),
                None => "-".into(),
            },
            or_dash(text(p, "last_error").as_deref()),
        ]);
    }
    t.render()
}

/// `paynotify plugins check FILE` for a file that loads: what it is and what its manifest
/// grants, the side-effect opt-ins spelled out.
pub fn plugin_check_text(
    file: &Path,
    metadata: &paynotify::plugins::Metadata,
    sha256: &str,
    manifest: &paynotify::plugins::Manifest,
) -> String {
    let list_or_none = |items: &[String]| {
        if items.is_empty() {
            "none".to_owned()
        } else {
            items.join(", ")
        }
    };
    let mut out = format!(
        "{}: ok, {} {} (paynotify:plugin@{}), sha256 {sha256}\n\
         collections: {}\nhttp origins: {}\n",
        file.display(),
        metadata.name,
        metadata.version,
        metadata.world_version,
        list_or_none(&manifest.collections),
        list_or_none(&manifest.http_origins),
    );
    out.push_str(if manifest.http_in_payment {
        "http in payment: yes (http_in_payment = true)\n"
    } else {
        "http in payment: no (run-task only)\n"
    });
    out.push_str(if manifest.crypto {
        "crypto (notify key): yes\n"
    } else {
        "crypto (notify key): no\n"
    });
    if manifest.http_in_payment {
        out.push_str("warning: ");
        out.push_str(paynotify::plugins::manifest::HTTP_IN_PAYMENT_WARNING);
        out.push('\n');
    }
    out
}

/// `paynotify plugins reload`, from `POST /api/admin/plugins/reload`.
pub fn reload_text(v: &Value) -> String {
    let names = |k: &str| -> String {
        let list: Vec<String> = v["report"][k]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|t| match t {
                // `failed` holds [type, reason] pairs.
                Value::Array(pair) => format!(
                    "{} ({})",
                    pair.first().and_then(Value::as_str).unwrap_or("?"),
                    pair.get(1).and_then(Value::as_str).unwrap_or("")
                ),
                other => other.as_str().unwrap_or("?").to_owned(),
            })
            .collect();
        if list.is_empty() {
            "-".into()
        } else {
            list.join(", ")
        }
    };
    let mut out = key_values(&[
        ("loaded", names("loaded")),
        ("unchanged", names("unchanged")),
        ("failed", names("failed")),
        ("removed", names("removed")),
    ]);
    out.push('\n');
    out.push_str(&plugins_table(&v["plugins"]));
    out
}

/// The masked configuration (see [`Config::masked`]) as TOML, in the file's section
/// order, under a comment saying where it came from.
pub fn config_toml(path: &Path, masked: &Value) -> Result<String, toml::ser::Error> {
    let mut out = format!(
        "# {}: valid. Effective configuration (file + PAYNOTIFY_… environment + secret files),\n\
         # secrets shown as ***.\n",
        path.display()
    );
    for section in [
        "server", "database", "plugins", "tasks", "orders", "accounts",
    ] {
        if let Some(v) = masked.get(section) {
            out.push('\n');
            out.push_str(&toml::to_string(&serde_json::json!({ section: v }))?);
        }
    }
    Ok(out)
}

/// A query string of the pairs whose value is present, `?k=v&…` (or nothing).
pub fn query_string(pairs: &[(&str, Option<String>)]) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if let Some(v) = v {
            form.append_pair(k, v);
        }
    }
    let q = form.finish();
    if q.is_empty() {
        q
    } else {
        format!("?{q}")
    }
}

/// `paynotify reconcile` as text: one line per order, then the totals.
pub fn reconcile_text(v: &Value) -> String {
    let mut t = Table::new(&[
        "ORDER",
        "PROVIDER",
        "OUTCOME",
        "STATE",
        "NOTIFICATION",
        "REASON",
    ]);
    for o in v["orders"].as_array().into_iter().flatten() {
        let s = |k: &str| o[k].as_str().map(|x| clean(x, 80)).unwrap_or_default();
        t.row(vec![
            s("out_trade_no"),
            s("provider"),
            s("outcome"),
            s("state"),
            o["notification_id"]
                .as_i64()
                .map(|i| i.to_string())
                .unwrap_or_default(),
            s("reason"),
        ]);
    }
    format!(
        "{}paid {}, unpaid {}, errors {}, skipped {}\n",
        if v["orders"].as_array().is_some_and(|a| !a.is_empty()) {
            t.render()
        } else {
            "no unpaid orders due for a query\n".into()
        },
        v["paid"],
        v["unpaid"],
        v["errors"],
        v["skipped"]
    )
}

/// `paynotify notifications replay --failed` as text.
pub fn replayed_text(v: &Value) -> String {
    let list = v["replayed"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return "no failed notifications for unpaid orders match\n".into();
    }
    let mut t = Table::new(&["ID", "ORDER", "VERDICT", "REASON"]);
    for r in &list {
        t.row(vec![
            r["id"].to_string(),
            r["out_trade_no"].as_str().unwrap_or("").to_owned(),
            r["verdict"].as_str().unwrap_or("?").to_owned(),
            r["reason"]
                .as_str()
                .map(|x| clean(x, 80))
                .unwrap_or_default(),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_defuse_terminal_escapes() {
        let mut t = Table::new(&["A", "LONGER"]);
        t.row(vec!["wide cell".into(), "x".into()]);
        t.row(vec!["\u{1b}[31mred\nline".into(), "y".into()]);
        assert_eq!(
            t.render(),
            "A              LONGER\nwide cell      x\n?[31mred?line  y\n"
        );
        assert_eq!(clean("abcdef", 4), "abc…");
        assert_eq!(clean("abcd", 4), "abcd");
    }

    #[test]
    fn times_are_shown_in_utc_to_the_second() {
        assert_eq!(short_time(Some(1_788_441_340_999)), "2026-09-03 13:15:40");
        assert_eq!(short_time(None), "-");
    }

    #[test]
    fn the_command_line_parses_filters_and_refuses_bad_ones() {
        let cli = Cli::try_parse_from([
            "paynotify",
            "orders",
            "list",
            "--status",
            "-1",
            "--type",
            "vip",
            "--before",
            "5:R1",
            "--json",
        ])
        .expect("parses");
        match cli.command {
            Command::Orders(OrdersCommand::List {
                status,
                order_type,
                before,
                ..
            }) => {
                assert_eq!(status, Some(-1));
                assert_eq!(order_type.as_deref(), Some("vip"));
                assert_eq!(before.map(|c| c.to_string()).as_deref(), Some("5:R1"));
            }
            other => panic!("{other:?}"),
        }
        assert!(cli.json);
        for bad in [
            vec!["paynotify", "orders", "list", "--status", "lost"],
            vec!["paynotify", "notifications", "list", "--since", "soon"],
            vec!["paynotify", "notifications", "list", "--verdict", "nope"],
        ] {
            assert!(Cli::try_parse_from(&bad).is_err(), "{bad:?} accepted");
        }
    }
}

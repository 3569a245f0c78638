//! The command line's shape: the clap types of every command and their argument parsers.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use paynotify::store::{status, OrderCursor, Verdict};
use paynotify::time::Millis;

use super::new_plugin::Lang;
use super::tryout::TryArgs;

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
    /// On an error, print where it happened (a backtrace) after the message; also
    /// PAYNOTIFY_BACKTRACE=1. RUST_BACKTRACE alone does not: it is for panics.
    #[arg(long, short, global = true)]
    pub verbose: bool,
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
  paynotify orders refund R20260001 --amount 500  refund 5 yuan of it at the provider
  paynotify orders writes R20260001          what its handlers wrote, field by field
  paynotify notifications list --verdict failed --since 2026-09-01T00:00:00Z
  paynotify tasks list --status dead         side effects that ran out of retries
  paynotify plugins list                     the handlers the running server has loaded
  paynotify plugins history goods            which builds of goods served when, who signed them
  paynotify plugins promote recharge         make the staged recharge.next.wasm serve (old one kept as .prev)
  paynotify plugins rollback recharge        put recharge.prev.wasm back (again: undo the rollback)
  paynotify reconcile --older-than 600       ask providers about orders unpaid for 10 minutes
  paynotify notifications replay --failed    re-drive failed handlers once the plugin is fixed
  paynotify new-plugin points --lang js      a new JavaScript handler project in ./points
  paynotify try points.wasm --order order.json   run a handler once, show its writes

Read-only commands read the database named by the configuration; reload, replay,
reconcile, plugins list|promote|rollback and orders pay-params|refund|close|writes ask
the running server (server.listen, with server.api_token).";

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
    /// Look at the providers' keys.
    #[command(subcommand)]
    Providers(ProvidersCommand),
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
        #[arg(long, value_enum, default_value_t = Lang::Rust)]
        lang: Lang,
        /// Where to create the project (must not exist); default ./NAME.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Run a handler's handle-paid once on a throwaway SQLite database and show the
    /// documents, tasks and logs it produced (no server, no payment provider).
    Try(TryArgs),
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

/// `paynotify providers …`.
#[derive(Debug, Subcommand)]
pub enum ProvidersCommand {
    /// The WeChat Pay v3 platform certificates of every account: serial, validity and
    /// where each came from (a configured file, or a download stored in the database).
    Certs,
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
    /// Make the type's staged candidate (`TYPE.next.wasm`, loaded and unchanged since)
    /// serve on the running server: `TYPE.wasm` & co. become `TYPE.prev.*`, the `.next`
    /// files become `TYPE.*`. Calls in flight finish on the old build.
    Promote {
        /// The type (e.g. recharge).
        #[arg(value_name = "TYPE", value_parser = parse_plugin_type)]
        plugin_type: String,
    },
    /// Put the type's previous build (`TYPE.prev.wasm`, loaded and checked first) back on
    /// the running server: `TYPE.*` and `TYPE.prev.*` change places, so a second rollback
    /// undoes the first. A staged candidate is left alone.
    Rollback {
        /// The type (e.g. recharge).
        #[arg(value_name = "TYPE", value_parser = parse_plugin_type)]
        plugin_type: String,
    },
    /// Validate a handler file (world version, exports, signatures, manifest) as the
    /// server would load it, without loading it; print its grants and limits.
    Check {
        /// The `.wasm` file.
        file: PathBuf,
        /// Its manifest; default `{type}.toml` beside the file, else in the project that
        /// built it (from the file's folder up to the one holding `Cargo.toml` or
        /// `package.json`). The output says which was checked.
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
    /// What shadow runs of the type's staged candidate (`{type}.next.wasm`) found: per
    /// candidate build, its runs beside the serving build (same, different, failed) and
    /// its first differences, both versions.
    Shadow {
        /// The type (e.g. recharge).
        #[arg(value_name = "TYPE", value_parser = parse_plugin_type)]
        plugin_type: String,
    },
    /// Every load, replacement, unload and refusal of a handler build, newest first, by
    /// every host and across restarts (read from the database): which build served when,
    /// its SHA-256 and who signed it. The last line tells how to get the next page.
    History {
        /// Only this type (e.g. goods; goods.next for its staged candidate).
        #[arg(value_name = "TYPE", value_parser = parse_history_type)]
        plugin_type: Option<String>,
        /// Only events with an id below this one (the next page after the last id shown).
        #[arg(long)]
        before: Option<i64>,
        /// How many (at most 500).
        #[arg(long, default_value_t = 50)]
        limit: u32,
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
    /// What the buyer's client needs to pay an unpaid order: places it at the provider
    /// (again) on the running server, as it was last placed or as the options say.
    PayParams {
        /// The merchant order number.
        out_trade_no: String,
        /// How to pay (WeChat jsapi, native, h5, app; Alipay page, wap, app, precreate);
        /// absent: as the order was last placed.
        #[arg(long)]
        method: Option<String>,
        /// The buyer's openid (WeChat jsapi).
        #[arg(long, requires = "method")]
        openid: Option<String>,
        /// The buyer's openid under the sub-merchant's appid (partner accounts).
        #[arg(long, requires = "method")]
        sub_openid: Option<String>,
        /// The buyer's IP address (WeChat h5).
        #[arg(long, requires = "method")]
        client_ip: Option<String>,
        /// What the buyer sees on the cashier.
        #[arg(long, requires = "method")]
        description: Option<String>,
        /// Alipay page / wap: where the buyer returns after paying.
        #[arg(long, requires = "method")]
        return_url: Option<String>,
    },
    /// Starts a refund of a paid order at its provider (on the running server).
    Refund {
        /// The merchant order number.
        out_trade_no: String,
        /// Fen to refund.
        #[arg(long)]
        amount: i64,
        /// The refund number; generated when absent. Give the same one to retry.
        #[arg(long)]
        out_refund_no: Option<String>,
        /// Why (shown to the buyer where the provider shows it).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Closes an unpaid order at its provider, then here (on the running server).
    Close {
        /// The merchant order number.
        out_trade_no: String,
    },
    /// What the order's handlers wrote (the handler write audit, from the running
    /// server), oldest first: per call (paid, refunded, task) each document write with
    /// the fields it changed, and each task enqueued. The last line tells how to get the
    /// next page.
    Writes {
        /// The merchant order number.
        out_trade_no: String,
        /// Only writes with an id above this one (the next page after the last id shown).
        #[arg(long, value_name = "ID")]
        after: Option<i64>,
        /// How many (at most 500).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=500))]
        limit: u32,
    },
}

/// `paynotify notifications …`.
#[derive(Debug, Subcommand)]
pub enum NotificationsCommand {
    /// Notifications received, newest first.
    List {
        /// Only this provider (wechat-v2, wechat-v3, alipay, cloudpay, wechat-xpay).
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
        #[arg(long, value_parser = paynotify::time::parse_time)]
        since: Option<Millis>,
        /// Only those received before this time (same forms as --since).
        #[arg(long, value_parser = paynotify::time::parse_time)]
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
        #[arg(long, requires = "failed", value_parser = paynotify::time::parse_time)]
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

/// `TYPE` of `plugins history`: a type, or `TYPE.next` for its candidate's events.
fn parse_history_type(text: &str) -> Result<String, String> {
    if paynotify::plugins::is_history_label(text) {
        Ok(text.to_owned())
    } else {
        parse_plugin_type(text)
    }
}

/// `TYPE` of `plugins promote|rollback`: a plugin type is a file stem of letters, digits,
/// - and _.
fn parse_plugin_type(text: &str) -> Result<String, String> {
    if paynotify::names::is_simple_name(text) {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "`{text}` is not a plugin type: letters, digits, - and _ (the file's name without .wasm)"
        ))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
            vec!["paynotify", "plugins", "history", "../goods"],
            vec!["paynotify", "plugins", "promote", "goods.next"],
            vec!["paynotify", "plugins", "rollback"],
        ] {
            assert!(Cli::try_parse_from(&bad).is_err(), "{bad:?} accepted");
        }
        for good in [
            vec!["paynotify", "plugins", "history", "goods.next"],
            vec!["paynotify", "plugins", "promote", "goods"],
            vec!["paynotify", "plugins", "rollback", "goods"],
        ] {
            assert!(Cli::try_parse_from(&good).is_ok(), "{good:?} refused");
        }
    }
}

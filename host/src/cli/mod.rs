//! The `paynotify` command line, owned by the binary (the server library knows nothing of
//! it). Commands that change a running host (reload, replay, reconcile) go through its
//! admin API so the one process serving notifications does the work; read-only ones read
//! the database directly.
//!
//! [`args`] holds the clap types, [`run`] picks the command, [`commands`] runs it and
//! [`render`] prints its answer for people; [`admin`] is the admin API's client;
//! [`payments`] places, refunds and closes orders through it; [`audit`] lists what an
//! order's handlers wrote; [`stage`] promotes and rolls back handlers through it. `try`
//! lives in [`tryout`], `new-plugin` in [`new_plugin`], and what `try` and `plugins
//! check` share (compiled cache, manifest lookup, the compile notice) in [`develop`].

mod admin;
mod args;
mod audit;
mod commands;
mod develop;
mod new_plugin;
mod payments;
mod render;
mod shadow;
mod stage;
pub mod tryout;

use std::path::Path;

use paynotify::config::{Config, ConfigError};

pub use args::{Cli, Command, LogFormat};
use args::{ConfigCommand, PluginsCommand, DEFAULT_CONFIG};

/// Runs one parsed command line; `logs` collects a `try` run's handler lines (see
/// [`tryout::init_tracing`]).
pub async fn run(cli: Cli, logs: tryout::LogCapture) -> anyhow::Result<()> {
    let json = cli.json;
    let (path, named) = cli.config_file();
    let path = path.to_owned();
    // Loaded by the commands that need it only: `new-plugin` works in any folder, and
    // `config check` reports a bad configuration instead of stopping on it.
    let config = || load_config(&path, named);
    // `try` and `plugins check` open no database and watch no folder: the defaults'
    // database and plugins folder are nothing to warn about there.
    let config_for_a_file = || read_config(&path, named, false);
    // `try` and `plugins check` use the server's compiled cache only when a configuration
    // file says where the server is (see `develop::compiled_cache`).
    let config_file = path.is_file();
    match cli.command {
        Command::Serve => commands::serve(config()?).await,
        Command::Config(ConfigCommand::Check) => commands::config_check(&path, named, json),
        Command::Plugins(c) => {
            let config = match c {
                PluginsCommand::Check { .. } => config_for_a_file()?,
                _ => config()?,
            };
            commands::plugins(&config, config_file, json, c).await
        }
        Command::NewPlugin { name, lang, dir } => {
            commands::new_plugin(&name, lang, dir.as_deref(), json)
        }
        Command::Try(args) => {
            commands::try_handler(&config_for_a_file()?, config_file, json, &args, &logs).await
        }
        Command::Orders(c) => commands::orders(&config()?, json, c).await,
        Command::Notifications(c) => commands::notifications(&config()?, json, c).await,
        Command::Reconcile { older_than, order } => {
            commands::reconcile(&config()?, json, older_than, order).await
        }
        Command::Tasks(c) => commands::tasks(&config()?, json, c).await,
        Command::Providers(c) => commands::providers(&config()?, json, c).await,
    }
}

/// Whether `PAYNOTIFY_BACKTRACE` asks for error backtraces: set to anything but empty,
/// `0` or `false`.
pub fn backtrace_requested(value: Option<std::ffi::OsString>) -> bool {
    value.is_some_and(|v| !matches!(v.to_str(), Some("" | "0" | "false")))
}

/// A command's error as printed on stderr: the message and its causes, as anyhow's
/// report shows them, with the backtrace (when one was captured) only if `backtraces`.
pub fn error_text(error: &anyhow::Error, backtraces: bool) -> String {
    if backtraces {
        return format!("Error: {error:?}\n");
    }
    let mut text = format!("Error: {error}\n");
    let causes: Vec<String> = error.chain().skip(1).map(|c| c.to_string()).collect();
    if !causes.is_empty() {
        text.push_str("\nCaused by:\n");
        for (i, cause) in causes.iter().enumerate() {
            text.push_str(&format!("    {i}: {cause}\n"));
        }
    }
    text
}

/// Loads the config for any command. A file named with `--config` / `PAYNOTIFY_CONFIG`
/// that does not exist is an error: a typo in a deploy must not serve an empty database
/// on defaults. Without one, a missing `paynotify.toml` means the built-in defaults, and
/// the log says so.
pub fn load_config(path: &Path, named: bool) -> Result<Config, ConfigError> {
    read_config(path, named, true)
}

/// [`load_config`], saying when built-in defaults are in effect only if `note_defaults`.
fn read_config(path: &Path, named: bool, note_defaults: bool) -> Result<Config, ConfigError> {
    if named && !path.exists() {
        return Err(ConfigError::Missing {
            path: path.to_owned(),
        });
    }
    let config = Config::load(path, std::env::vars())?;
    if note_defaults && !named && !path.exists() {
        tracing::warn!(
            database = %paynotify::config::redact_url(&config.database.url),
            plugins = %config.plugins.dir.display(),
            "no --config given and no {DEFAULT_CONFIG} here: running on built-in defaults"
        );
    }
    Ok(config)
}

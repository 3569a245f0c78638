//! The `paynotify` binary: parses the command line and runs it.

use anyhow::{bail, Context};
use clap::Parser;
mod cli;

use cli::{
    Cli, Command, ConfigCommand, LogFormat, NotificationsCommand, OrdersCommand,
    PluginsCommand, TasksCommand,
};
use paynotify::store::{NotificationFilter, OrderCursor, OrderFilter};
use paynotify::{App, Config};

// glibc's malloc was ~12 % of the server's CPU under load (every notification allocates
// and frees its body, parsed fields, statements and a wasm call's buffers across worker
// threads, and frees often land on another thread's arena); mimalloc's per-thread free
// lists make those a few instructions.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Prints `value` as one line of JSON with `--json`, else as `text` renders it.
fn output<T: serde::Serialize + ?Sized>(
    json: bool,
    value: &T,
    text: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(value)?);
    } else {
        print!("{}", text(value));
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::NewPlugin { name, lang, dir } = &cli.command {
        return new_plugin(name, *lang, dir.as_deref(), cli.json);
    }
    let log_capture = match cli.command {
        Command::Try(_) => Some(cli::tryout::init_tracing(matches!(
            cli.log_format,
            LogFormat::Json
        ))),
        _ => {
            paynotify::logging::init(matches!(cli.log_format, LogFormat::Json));
            None
        }
    };
    if let Command::Config(ConfigCommand::Check) = cli.command {
        return config_check(cli.config_file(), cli.json);
    }
    let (config_path, named) = cli.config_file();
    let config = cli::load_config(config_path, named)?;
    match cli.command {
        Command::Serve => serve(config).await,
        // Handled above, before a bad configuration could stop everything.
        Command::Config(ConfigCommand::Check) => config_check(cli.config_file(), cli.json),
        Command::Plugins(c) => plugins(&config, cli.json, c).await,
        // Handled above: it needs no configuration.
        Command::NewPlugin { name, lang, dir } => new_plugin(&name, lang, dir.as_deref(), cli.json),
        Command::Try(args) => {
            let capture = log_capture.unwrap_or_default();
            let report = cli::tryout::run(&config.plugins, &args, &capture).await?;
            output(cli.json, &report, cli::tryout::report_text)?;
            if !report.ok {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Orders(c) => orders(&config, cli.json, c).await,
        Command::Notifications(c) => notifications(&config, cli.json, c).await,
        Command::Reconcile { older_than, order } => {
            let query = cli::query_string(&[
                ("older_than_secs", older_than.map(|s| s.to_string())),
                ("order", order),
            ]);
            let v = cli::AdminClient::new(&config)
                .call(
                    reqwest::Method::POST,
                    &format!("/api/admin/reconcile{query}"),
                )
                .await
                .map_err(anyhow::Error::msg)?;
            output(cli.json, &v, cli::reconcile_text)
        }
        Command::Tasks(TasksCommand::List { status, limit }) => {
            let store = paynotify::store::connect(&config.database).await?;
            let list = store.list_tasks(status.as_deref(), limit).await?;
            output(cli.json, &list, |l| {
                if l.is_empty() {
                    "no tasks match\n".into()
                } else {
                    cli::tasks_table(l)
                }
            })
        }
        Command::Tasks(TasksCommand::Retry { id }) => {
            let store = paynotify::store::connect(&config.database).await?;
            if !store.retry_task(id).await? {
                bail!("task {id} does not exist or is not dead/pending (running or done tasks are not retried)");
            }
            output(
                cli.json,
                &serde_json::json!({ "id": id, "status": "pending" }),
                |_| format!("task {id} queued to run now\n"),
            )
        }
    }
}

/// `paynotify new-plugin`: writes the project and says what to do next.
fn new_plugin(
    name: &str,
    lang: cli::new_plugin::Lang,
    dir: Option<&std::path::Path>,
    json: bool,
) -> anyhow::Result<()> {
    let dir = cli::new_plugin::new_plugin(name, lang, dir)?;
    output(
        json,
        &serde_json::json!({ "name": name, "dir": dir.display().to_string() }),
        |_| cli::new_plugin::next_steps(name, lang, &dir),
    )
}

/// `paynotify config check`: exits 1 with the error when the configuration is invalid.
fn config_check((path, named): (&std::path::Path, bool), json: bool) -> anyhow::Result<()> {
    let checked = cli::load_config(path, named)
        .map_err(anyhow::Error::from)
        .and_then(|config| {
            // The merchant accounts as `serve` builds them: key files, PEM keys, ids.
            paynotify::providers::Providers::from_config(&config.accounts)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            paynotify::providers::api::Apis::from_config(&config.accounts)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            Ok(config)
        });
    let config = match checked {
        Ok(c) => c,
        Err(e) => {
            eprintln!("paynotify: invalid configuration: {e}");
            std::process::exit(1);
        }
    };
    if !config.plugins.dir.is_dir() {
        eprintln!(
            "note: plugins.dir {} does not exist yet (`paynotify serve` creates it)",
            config.plugins.dir.display()
        );
    }
    let masked = config.masked();
    if json {
        println!("{}", serde_json::to_string(&masked)?);
    } else {
        print!("{}", cli::config_toml(path, &masked)?);
    }
    Ok(())
}

async fn orders(config: &Config, json: bool, c: OrdersCommand) -> anyhow::Result<()> {
    let store = paynotify::store::connect(&config.database).await?;
    match c {
        OrdersCommand::Show { out_trade_no } => match store.get_order(&out_trade_no).await? {
            Some(o) => output(json, &o, cli::order_text),
            None => bail!("no order `{out_trade_no}`"),
        },
        OrdersCommand::List {
            status,
            order_type,
            user,
            before,
            limit,
        } => {
            let list = store
                .list_orders(&OrderFilter {
                    status,
                    order_type,
                    user_id: user,
                    before,
                    limit,
                })
                .await?;
            output(json, &list, |l| {
                if l.is_empty() {
                    return "no orders match\n".into();
                }
                let mut text = cli::orders_table(l);
                if let Some(last) = l.last().filter(|_| l.len() as u32 >= limit.min(500)) {
                    text.push_str(&format!(
                        "\n{} shown; the next page: --before {}\n",
                        l.len(),
                        OrderCursor::after(last)
                    ));
                }
                text
            })
        }
    }
}
async fn serve(config: Config) -> anyhow::Result<()> {
    let listen = config.server.listen;
    let app = App::start(config).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (server.listen)"))?;
    let _watch = app
        .watch_plugins()
        .with_context(|| format!("cannot watch {}", app.config.plugins.dir.display()))?;
    let worker = app.start_worker();
    let expiry = paynotify::expiry::start(&app);
    let reconcile = paynotify::reconcile::start(&app);
    let retention = Some(paynotify::retention::start(&app));
    let stuck = Some(paynotify::stuck::start(&app));
    // The bound address, not the configured one: with port 0 the OS picks it.
    let bound = listener.local_addr().unwrap_or(listen);
    tracing::info!(listen = %bound, database = app.store.backend(), "paynotify serving");
    if app.config.api_token().is_none() {
        tracing::warn!(
            port = bound.port(),
            "no server.api_token: /api and the console are open, without any credential, to \
             every process and user on this machine (loopback clients naming localhost, \
             127.0.0.1 or [::1] on this port, or a name in server.allowed_hosts); set \
             server.api_token unless this machine has one user"
        );
    } else if !bound.ip().is_loopback() && app.config.server.allowed_hosts.is_empty() {
        tracing::info!(
            "the console answers only to localhost, 127.0.0.1 and [::1] on this port: list \
             the names browsers use for it (a proxy's public name) in server.allowed_hosts"
        );
    }
    paynotify::http::serve(app.clone(), listener, shutdown_signal()).await?;
    for job in [worker, expiry, reconcile, retention, stuck]
        .into_iter()
        .flatten()
    {
        job.abort();
    }
    if let Err(e) = app.store.close().await {
        tracing::warn!(error = %e, "the database was not left tidy (it recovers on the next start)");
    }
    tracing::info!("paynotify stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

async fn plugins(config: &Config, json: bool, c: PluginsCommand) -> anyhow::Result<()> {
    let client = cli::AdminClient::new(config);
    match c {
        PluginsCommand::List => {
            let v = client
                .call(reqwest::Method::GET, "/api/admin/plugins")
                .await
                .map_err(anyhow::Error::msg)?;
            output(json, &v, cli::plugins_table)
        }
        PluginsCommand::Reload => {
            let v = client
                .call(reqwest::Method::POST, "/api/admin/plugins/reload")
                .await
                .map_err(anyhow::Error::msg)?;
            output(json, &v, cli::reload_text)
        }
        PluginsCommand::Check { file } => {
            let runtime = std::sync::Arc::new(paynotify::plugins::Runtime::new(&config.plugins)?);
            let registry = paynotify::plugins::Registry::new(runtime, config.plugins.clone());
            match registry.check_file(&file).await {
                Ok(p) => output(
                    json,
                    &serde_json::json!({
                        "file": file.display().to_string(),
                        "ok": true,
                        "metadata": p.metadata,
                        "sha256": p.sha256,
                        "collections": p.manifest.collections,
                        "http_origins": p.manifest.http_origins,
                        "http_in_payment": p.manifest.http_in_payment,
                        "crypto": p.manifest.crypto,
                    }),
                    |_| cli::plugin_check_text(&file, &p.metadata, &p.sha256, &p.manifest),
                ),
                Err(e) => bail!("{}: {e}", file.display()),
            }
        }
    }
}

async fn notifications(config: &Config, json: bool, c: NotificationsCommand) -> anyhow::Result<()> {
    match c {
        NotificationsCommand::List {
            provider,
            order,
            verdict,
            since,
            until,
            before,
            stuck,
            limit,
        } => {
            let (verdict, until) = if stuck {
                let now = paynotify::store::now_ms();
                let before = paynotify::stuck::stuck_before(now);
                (Some(paynotify::store::Verdict::Received), Some(before))
            } else {
                (verdict, until)
            };
            let store = paynotify::store::connect(&config.database).await?;
            let list = store
                .list_notifications(&NotificationFilter {
                    provider,
                    out_trade_no: order,
                    verdict,
                    before_id: before,
                    since,
                    until,
                    limit,
                })
                .await?;
            output(json, &list, |l| {
                if l.is_empty() {
                    return if stuck {
                        "no notifications stuck as received\n".into()
                    } else {
                        "no notifications match\n".into()
                    };
                }
                let mut text = cli::notifications_table(l);
                if let Some(last) = l.last().filter(|_| l.len() as u32 >= limit.min(500)) {
                    text.push_str(&format!(
                        "\n{} shown; the next page: --before {}\n",
                        l.len(),
                        last.id
                    ));
                }
                text
            })
        }
        NotificationsCommand::Show { id } => {
            let store = paynotify::store::connect(&config.database).await?;
            match store.get_notification(id).await? {
                Some(n) => output(json, &n, cli::notification_text),
                None => bail!("no notification {id}"),
            }
        }
        NotificationsCommand::Replay {
            failed: true,
            since,
            order_type,
            limit,
            ..
        } => {
            let query = cli::query_string(&[
                ("failed", Some("true".into())),
                ("since", since.map(|s| s.to_string())),
                ("type", order_type),
                ("limit", limit.map(|l| l.to_string())),
            ]);
            let v = cli::AdminClient::new(config)
                .call(
                    reqwest::Method::POST,
                    &format!("/api/admin/notifications/replay{query}"),
                )
                .await
                .map_err(anyhow::Error::msg)?;
            output(json, &v, cli::replayed_text)
        }
        NotificationsCommand::Replay { id, .. } => {
            let Some(id) = id else {
                bail!("give a notification id, or --failed");
            };
            let v = cli::AdminClient::new(config)
                .call(
                    reqwest::Method::POST,
                    &format!("/api/admin/notifications/{id}/replay"),
                )
                .await
                .map_err(anyhow::Error::msg)?;
            output(json, &v, |v| {
                let reason = v["reason"]
                    .as_str()
                    .map(|r| format!(" ({})", cli::clean(r, 500)))
                    .unwrap_or_default();
                format!(
                    "notification {id} replayed: {}{reason}\n",
                    v["verdict"].as_str().unwrap_or("?")
                )
            })
        }
    }
}

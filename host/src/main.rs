//! The `paynotify` binary: parses the command line and runs it.

use anyhow::{bail, Context};
use clap::Parser;
use paynotify::cli::{
    self, Cli, Command, LogFormat, NotificationsCommand, OrdersCommand, PluginsCommand,
    TasksCommand,
};
use paynotify::store::{NotificationFilter, Verdict};
use paynotify::{App, Config};

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn print(json: bool, value: &impl serde::Serialize) -> anyhow::Result<()> {
    let text = if json {
        serde_json::to_string(value)?
    } else {
        serde_json::to_string_pretty(value)?
    };
    println!("{text}");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let config = cli::load_config(&cli.config)?;
    match cli.command {
        Command::Serve => serve(config).await,
        Command::Plugins(c) => plugins(&config, cli.json, c).await,
        Command::Orders(OrdersCommand::Show { out_trade_no }) => {
            let store = paynotify::store::connect(&config.database).await?;
            match store.get_order(&out_trade_no).await? {
                Some(o) => print(cli.json, &o),
                None => bail!("no order `{out_trade_no}`"),
            }
        }
        Command::Notifications(c) => notifications(&config, cli.json, c).await,
        Command::Tasks(TasksCommand::List { status, limit }) => {
            let store = paynotify::store::connect(&config.database).await?;
            print(cli.json, &store.list_tasks(status.as_deref(), limit).await?)
        }
        Command::Tasks(TasksCommand::Retry { id }) => {
            let store = paynotify::store::connect(&config.database).await?;
            if !store.retry_task(id).await? {
                bail!("task {id} does not exist or is not dead/pending (running or done tasks are not retried)");
            }
            println!("task {id} queued to run now");
            Ok(())
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
    tracing::info!(%listen, database = app.store.backend(), "paynotify serving");
    paynotify::http::serve(app, listener, shutdown_signal()).await?;
    if let Some(w) = worker {
        w.abort();
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
            print(json, &v)
        }
        PluginsCommand::Reload => {
            let v = client
                .call(reqwest::Method::POST, "/api/admin/plugins/reload")
                .await
                .map_err(anyhow::Error::msg)?;
            print(json, &v)
        }
        PluginsCommand::Check { file } => {
            let runtime = std::sync::Arc::new(paynotify::plugins::Runtime::new(&config.plugins)?);
            let registry = paynotify::plugins::Registry::new(runtime, config.plugins.clone());
            match registry.check_file(&file).await {
                Ok(p) => print(
                    json,
                    &serde_json::json!({
                        "file": file.display().to_string(),
                        "ok": true,
                        "metadata": p.metadata,
                        "sha256": p.sha256,
                        "collections": p.manifest.collections,
                        "http_origins": p.manifest.http_origins,
                    }),
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
            limit,
        } => {
            let verdict = match verdict.as_deref() {
                None => None,
                Some(v) => {
                    Some(Verdict::parse(v).with_context(|| format!("unknown verdict `{v}`"))?)
                }
            };
            let store = paynotify::store::connect(&config.database).await?;
            let list = store
                .list_notifications(&NotificationFilter {
                    provider,
                    out_trade_no: order,
                    verdict,
                    before_id: None,
                    limit,
                })
                .await?;
            print(json, &list)
        }
        NotificationsCommand::Show { id } => {
            let store = paynotify::store::connect(&config.database).await?;
            match store.get_notification(id).await? {
                Some(n) => print(json, &n),
                None => bail!("no notification {id}"),
            }
        }
        NotificationsCommand::Replay { id } => {
            let v = cli::AdminClient::new(config)
                .call(
                    reqwest::Method::POST,
                    &format!("/api/admin/notifications/{id}/replay"),
                )
                .await
                .map_err(anyhow::Error::msg)?;
            print(json, &v)
        }
    }
}

//! One function a command: each loads what it needs (the database, the admin API, a
//! handler file), does the work and prints the answer, as text or with `--json` as JSON.

use std::path::Path;

use anyhow::{bail, Context};
use paynotify::store::{NotificationFilter, OrderCursor, OrderFilter};
use paynotify::{App, Config};

use super::admin::{query_string, AdminClient};
use super::args::{
    NotificationsCommand, OrdersCommand, PluginsCommand, ProvidersCommand, TasksCommand,
};
use super::{develop, new_plugin, render, stage, tryout};

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

/// `paynotify new-plugin`: writes the project and says what to do next.
pub fn new_plugin(
    name: &str,
    lang: new_plugin::Lang,
    dir: Option<&Path>,
    json: bool,
) -> anyhow::Result<()> {
    let dir = new_plugin::new_plugin(name, lang, dir)?;
    output(
        json,
        &serde_json::json!({ "name": name, "dir": dir.display().to_string() }),
        |_| new_plugin::next_steps(name, lang, &dir),
    )
}

/// `paynotify config check`: exits 1 with the error when the configuration is invalid.
pub fn config_check(path: &Path, named: bool, json: bool) -> anyhow::Result<()> {
    let checked = super::load_config(path, named)
        .map_err(anyhow::Error::from)
        .and_then(|config| {
            // The merchant accounts as `serve` builds them: key files, PEM keys, ids.
            paynotify::providers::registry::Registry::from_config(&config.accounts)
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
    if config.plugins.allowed_signers.is_none() {
        eprintln!(
            "note: plugins.allowed_signers is not set: unsigned handlers are accepted (whoever can write plugins.dir chooses what runs on payments)"
        );
    }
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
        print!("{}", render::config_toml(path, &masked)?);
    }
    Ok(())
}

/// `paynotify orders …`: `show` and `list` read the database; `pay-params`, `refund`,
/// `close` and `writes` go through the running server.
pub async fn orders(config: &Config, json: bool, c: OrdersCommand) -> anyhow::Result<()> {
    if let OrdersCommand::Writes {
        out_trade_no,
        after,
        limit,
    } = &c
    {
        return super::audit::writes(config, json, out_trade_no, *after, *limit).await;
    }
    if !matches!(c, OrdersCommand::Show { .. } | OrdersCommand::List { .. }) {
        return super::payments::run(config, json, &c).await;
    }
    let store = paynotify::store::connect(&config.database).await?;
    match c {
        OrdersCommand::Show { out_trade_no } => match store.get_order(&out_trade_no).await? {
            Some(o) => output(json, &o, render::order_text),
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
                render::with_next_page(render::orders_table(l), l, limit, |o| {
                    OrderCursor::after(o).to_string()
                })
            })
        }
        other => super::payments::run(config, json, &other).await,
    }
}

/// `paynotify serve`: the server and its background jobs, until SIGINT or SIGTERM.
pub async fn serve(config: Config) -> anyhow::Result<()> {
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
    let certs = app.start_platform_certs();
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
    for job in [worker, expiry, reconcile, retention, stuck, certs]
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

/// Resolves on Ctrl-C, or SIGTERM (what a service manager sends) on Unix.
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

/// `paynotify plugins …`: asks the running server, checks a file here, or reads the
/// history in the database. `config_file`: a configuration file was read (then `check`
/// may use the server's compiled cache).
pub async fn plugins(
    config: &Config,
    config_file: bool,
    json: bool,
    c: PluginsCommand,
) -> anyhow::Result<()> {
    let client = AdminClient::new(config);
    match c {
        PluginsCommand::List => {
            let v = client.get("/api/admin/plugins").await?;
            output(json, &v, render::plugins_table)
        }
        PluginsCommand::Shadow { plugin_type } => {
            super::shadow::run(config, json, &plugin_type).await
        }
        PluginsCommand::Reload => {
            let v = client.post("/api/admin/plugins/reload").await?;
            output(json, &v, render::reload_text)
        }
        PluginsCommand::Promote { plugin_type } => {
            stage::run(&client, json, stage::Action::Promote, &plugin_type).await
        }
        PluginsCommand::Rollback { plugin_type } => {
            stage::run(&client, json, stage::Action::Rollback, &plugin_type).await
        }
        PluginsCommand::History {
            plugin_type,
            before,
            limit,
        } => {
            let store = paynotify::store::connect(&config.database).await?;
            let list = store
                .plugin_history()
                .plugin_history(plugin_type.as_deref(), before, limit)
                .await?;
            output(json, &list, |l| {
                if l.is_empty() {
                    return "no plugin history matches\n".into();
                }
                render::with_next_page(render::plugin_history_table(l), l, limit, |e| {
                    e.id.to_string()
                })
            })
        }
        PluginsCommand::Check { file, manifest } => {
            let found = develop::find_manifest(&file, manifest.as_deref())?;
            let runtime = std::sync::Arc::new(paynotify::plugins::Runtime::new(&config.plugins)?);
            let registry = paynotify::plugins::Registry::new(runtime, config.plugins.clone());
            let cache = develop::compiled_cache(config, config_file);
            let registry = match cache.clone() {
                Some(cache) => registry.with_cache(cache),
                None => registry,
            };
            let staged = develop::Staged::new(&file, &found)
                .with_context(|| format!("cannot stage {} with its manifest", file.display()))?;
            let size = std::fs::metadata(&file).map_or(0, |m| m.len());
            let checked = develop::say_slow_compile(
                &file,
                size,
                cache.as_ref(),
                registry.check_file(&staged.wasm),
            )
            .await;
            match checked {
                Ok(p) => output(
                    json,
                    &serde_json::json!({
                        "file": file.display().to_string(),
                        "ok": true,
                        "type": p.plugin_type,
                        "manifest": found.path.as_ref().map(|m| m.display().to_string()),
                        "metadata": p.metadata,
                        "sha256": p.sha256,
                        "signer": p.signer,
                        "signatures_checked": config.plugins.allowed_signers.is_some(),
                        "collections": p.manifest.collections,
                        "http_origins": p.manifest.http_origins,
                        "http_in_payment": p.manifest.http_in_payment,
                        "crypto": p.manifest.crypto,
                        "timeout_ms": p.limits.timeout.as_millis() as u64,
                        "payment_timeout_ms": p.payment_limits.timeout.as_millis() as u64,
                        "memory_mb": p.limits.memory_bytes / (1024 * 1024),
                    }),
                    |_| render::plugin_check_text(&file, &found.describe(), &p),
                ),
                Err(e) => {
                    // Which manifest a manifest error is about, when one was found.
                    let manifest = found
                        .path
                        .as_ref()
                        .map_or(String::new(), |_| format!("\n({})", found.describe()));
                    bail!(
                        "{}: {}{manifest}",
                        file.display(),
                        staged.unstage(&e.to_string())
                    )
                }
            }
        }
    }
}

/// `paynotify notifications …`: reads the database; replays go through the running server.
pub async fn notifications(
    config: &Config,
    json: bool,
    c: NotificationsCommand,
) -> anyhow::Result<()> {
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
                let now = paynotify::time::now_ms();
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
                render::with_next_page(render::notifications_table(l), l, limit, |e| {
                    e.id.to_string()
                })
            })
        }
        NotificationsCommand::Show { id } => {
            let store = paynotify::store::connect(&config.database).await?;
            match store.get_notification(id).await? {
                Some(n) => output(json, &n, render::notification_text),
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
            let query = query_string(&[
                ("failed", Some("true".into())),
                ("since", since.map(|s| s.to_string())),
                ("type", order_type),
                ("limit", limit.map(|l| l.to_string())),
            ]);
            let v = AdminClient::new(config)
                .post(&format!("/api/admin/notifications/replay{query}"))
                .await?;
            output(json, &v, render::replayed_text)
        }
        NotificationsCommand::Replay { id, .. } => {
            let Some(id) = id else {
                bail!("give a notification id, or --failed");
            };
            let v = AdminClient::new(config)
                .post(&format!("/api/admin/notifications/{id}/replay"))
                .await?;
            output(json, &v, |v| render::replayed_one_text(id, v))
        }
    }
}

/// `paynotify providers …`: reads the configured key files and the database.
pub async fn providers(config: &Config, json: bool, c: ProvidersCommand) -> anyhow::Result<()> {
    match c {
        ProvidersCommand::Certs => {
            let store = paynotify::store::connect(&config.database).await?;
            let list = paynotify::providers::wechat_v3::certs::list(&config.accounts, &*store)
                .await
                .map_err(anyhow::Error::msg)?;
            output(json, &list, |l| {
                if l.is_empty() {
                    "no WeChat Pay v3 platform certificates (configured or downloaded)\n".into()
                } else {
                    render::certs_table(l, paynotify::time::now_ms())
                }
            })
        }
    }
}

/// `paynotify tasks …`: reads or re-queues in the database.
pub async fn tasks(config: &Config, json: bool, c: TasksCommand) -> anyhow::Result<()> {
    let store = paynotify::store::connect(&config.database).await?;
    match c {
        TasksCommand::List { status, limit } => {
            let list = store.list_tasks(status.as_deref(), limit).await?;
            output(json, &list, |l| {
                if l.is_empty() {
                    "no tasks match\n".into()
                } else {
                    render::tasks_table(l)
                }
            })
        }
        TasksCommand::Retry { id } => {
            if !store.retry_task(id).await? {
                bail!("task {id} does not exist or is not dead/pending (running or done tasks are not retried)");
            }
            output(
                json,
                &serde_json::json!({ "id": id, "status": "pending" }),
                |_| format!("task {id} queued to run now\n"),
            )
        }
    }
}

/// `paynotify reconcile`: asks the running server to query the providers now.
pub async fn reconcile(
    config: &Config,
    json: bool,
    older_than: Option<u64>,
    order: Option<String>,
) -> anyhow::Result<()> {
    let query = query_string(&[
        ("older_than_secs", older_than.map(|s| s.to_string())),
        ("order", order),
    ]);
    let v = AdminClient::new(config)
        .post(&format!("/api/admin/reconcile{query}"))
        .await?;
    output(json, &v, render::reconcile_text)
}

/// `paynotify try`: runs the handler once and exits 1 when it failed. `config_file`: a
/// configuration file was read (then the server's compiled cache may be used).
pub async fn try_handler(
    config: &Config,
    config_file: bool,
    json: bool,
    args: &tryout::TryArgs,
    logs: &tryout::LogCapture,
) -> anyhow::Result<()> {
    let cache = develop::compiled_cache(config, config_file);
    let report = tryout::run(&config.plugins, args, logs, cache.as_ref()).await?;
    output(json, &report, tryout::report_text)?;
    if !report.ok {
        std::process::exit(1);
    }
    Ok(())
}

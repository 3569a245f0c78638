//! Wiring: builds the store, providers, plugin registry and pipeline from the config.

use std::sync::Arc;

use crate::config::parse_notify_key;
use crate::config::Config;
use crate::pipeline::{Batching, NotifyKeys, Pipeline, Review};
use crate::plugins::{Registry, Runtime};
use crate::providers::registry::{AccountError, Apis, Providers, Registry as Accounts};
use crate::shadow::Shadows;
use crate::store::{self, Store};

/// Why the host could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database could not be opened or migrated.
    #[error("database {url}: {source}")]
    Store {
        /// The configured URL.
        url: String,
        /// Why.
        source: store::StoreError,
    },
    /// A merchant account is misconfigured.
    #[error(transparent)]
    Account(#[from] AccountError),
    /// The wasm runtime could not be built.
    #[error("plugin runtime: {0}")]
    Runtime(#[from] crate::plugins::LoadError),
    /// The compiled-plugin cache is not private to this host.
    #[error(transparent)]
    Cache(#[from] crate::plugins::cache::CacheError),
}

/// Everything a running host shares.
#[derive(Clone)]
pub struct App {
    /// The effective configuration.
    pub config: Arc<Config>,
    /// The database.
    pub store: Arc<dyn Store>,
    /// Configured providers.
    pub providers: Arc<Providers>,
    /// Loaded handlers.
    pub plugins: Arc<Registry>,
    /// The notification pipeline.
    pub pipeline: Arc<Pipeline>,
    /// Notify keys by (provider, account), for handlers' `crypto`.
    pub notify_keys: Arc<NotifyKeys>,
    /// Providers' order query and close APIs, by account.
    pub apis: Arc<Apis>,
}

impl App {
    /// Opens the database, builds providers and the runtime, and loads the plugins
    /// directory once. (Watching it is the caller's choice.)
    pub async fn start(config: Config) -> Result<App, StartError> {
        // Before anything records (the plugin scan below counts loads).
        crate::metrics::install();
        let store = store::connect_with(&config.database, &config.retention)
            .await
            .map_err(|source| StartError::Store {
                url: crate::config::redact_url(&config.database.url),
                source,
            })?;
        // One pass over the accounts builds both halves of every provider.
        let accounts = Accounts::from_config(&config.accounts)?;
        let providers = Arc::new(accounts.providers);
        let apis = Arc::new(accounts.apis);
        // Before anything verifies: the stored certificates, without the network.
        crate::providers::wechat_v3::certs::attach(
            apis.platform_certs(),
            store.clone(),
            apis.http().clone(),
        )
        .await;
        let runtime = Arc::new(Runtime::new(&config.plugins)?);
        let registry = Registry::new(runtime, config.plugins.clone())
            .with_history(store.clone(), config.database.timeout());
        let plugins = Arc::new(match open_cache(&config)? {
            Some(cache) => registry.with_cache(cache),
            None => registry,
        });
        if let Err(e) = std::fs::create_dir_all(&config.plugins.dir) {
            tracing::warn!(dir = %config.plugins.dir.display(), error = %e, "cannot create plugins directory");
        }
        let report = plugins.scan().await;
        tracing::info!(loaded = ?report.loaded, failed = report.failed.len(), "plugins scanned");
        let notify_keys: NotifyKeys = config
            .accounts
            .iter()
            .filter_map(|a| {
                let key = parse_notify_key(a.notify_key.as_deref()?)?;
                Some(((a.provider.clone(), a.name.clone()), key))
            })
            .collect();
        let pipeline = Arc::new(Pipeline::new(
            store.clone(),
            providers.clone(),
            plugins.clone(),
            notify_keys.clone(),
            config.server.max_body_bytes,
            Batching {
                max: config.database.batch_max,
                settlers: config.database.settlers.unwrap_or(match store.backend() {
                    "sqlite" => 1,
                    _ => 4,
                }),
            },
            Review {
                audit: config.audit.enabled,
                shadows: Shadows::start(
                    plugins.clone(),
                    store.clone(),
                    config.plugins.shadow_sample,
                ),
            },
        ));
        Ok(App {
            config: Arc::new(config),
            store,
            providers,
            plugins,
            pipeline,
            notify_keys: Arc::new(notify_keys),
            apis,
        })
    }

    /// Starts hot reload of the plugins directory; it stops when the handle is dropped.
    pub fn watch_plugins(&self) -> Result<crate::plugins::watch::WatchHandle, notify::Error> {
        crate::plugins::watch::watch(self.plugins.clone(), self.config.plugins.dir.clone())
    }

    /// Starts the platform certificate refresh job, if an account downloads its
    /// certificates (`download_platform_certs`).
    pub fn start_platform_certs(&self) -> Option<tokio::task::JoinHandle<()>> {
        let accounts = self.apis.platform_certs().to_vec();
        if accounts.is_empty() {
            return None;
        }
        Some(tokio::spawn(crate::providers::wechat_v3::certs::run(
            accounts,
        )))
    }

    /// Starts the task worker in the background, if `[tasks] enabled`.
    pub fn start_worker(&self) -> Option<tokio::task::JoinHandle<()>> {
        if !self.config.tasks.enabled {
            return None;
        }
        let worker = crate::tasks::Worker::new(
            self.store.clone(),
            self.plugins.clone(),
            (*self.notify_keys).clone(),
            self.config.tasks.clone(),
            self.config.audit.enabled,
        );
        Some(tokio::spawn(worker.run()))
    }
}

/// The compiled-plugin cache `serve` uses: `[plugins] cache_dir`, else beside the SQLite
/// file, else the user's cache folder; `None` (compile at every start) if there is none.
pub fn open_cache(
    config: &Config,
) -> Result<Option<crate::plugins::Cache>, crate::plugins::cache::CacheError> {
    use crate::plugins::Cache;
    let legacy = config.plugins.dir.join(".cache");
    if legacy.is_dir() {
        tracing::warn!(dir = %legacy.display(), "compiled artefacts are no longer kept in the plugins folder (anyone who can write it could plant native code); this old cache is unused and can be deleted");
    }
    let database_dir = crate::store::database_dir(&config.database.url);
    let Some(dir) =
        Cache::default_dir(config.plugins.cache_dir.as_deref(), database_dir.as_deref())
    else {
        tracing::warn!("no folder for the compiled-plugin cache (set [plugins] cache_dir): every start compiles every handler");
        return Ok(None);
    };
    Cache::open(&dir).map(Some)
}

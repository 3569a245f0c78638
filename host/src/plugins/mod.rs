//! Handlers: the registry of loaded plugins (one per order type), the wasmtime runtime
//! that runs them, and the capabilities they are granted.
//!
//! `{dir}/{type}.wasm` is the handler for orders of `type`; `{dir}/{type}.toml`, when
//! present, its grants and limits. The registry's map is swapped atomically, so a call
//! that started on one version finishes on it while new calls get the next.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::PluginsConfig;
use crate::store::PluginEventKind;
use crate::time::{now_ms, Millis};

mod backstop;
pub mod breaker;
mod cache;
pub mod capabilities;
mod history;
pub mod manifest;
pub mod runtime;
pub mod signing;
pub mod watch;
pub mod world;

pub use capabilities::{CallBuilder, CallContext};
pub use manifest::{Limits, Manifest};
pub use runtime::{Compiled, Runtime};
pub use signing::Signer;
pub use world::since_v0_1::{bindings, refund_bindings};
pub use world::{HandlerFailure, LoadError, Metadata};

/// A loaded handler.
pub struct Plugin {
    /// The order type it handles (its file stem).
    pub plugin_type: String,
    /// What the build says about itself.
    pub metadata: Metadata,
    /// SHA-256 of the `.wasm` file.
    pub sha256: String,
    /// Who signed the `.wasm` and its manifest (`None` when `allowed_signers` is not set).
    pub signer: Option<Signer>,
    /// SHA-256 of the `.wasm` and the manifest together: a change of either reloads.
    fingerprint: String,
    /// Size and mtime of both files when loaded: if neither changed, the file is not
    /// even read again on a rescan.
    stamp: FileStamp,
    /// Size of the `.wasm` file in bytes.
    pub size: usize,
    /// Grants.
    pub manifest: Arc<Manifest>,
    /// Limits per call.
    pub limits: Limits,
    /// Limits of the calls made inside a payment or refund transaction.
    pub payment_limits: Limits,
    /// Fails the type's payment calls fast after repeated timeouts.
    pub breaker: breaker::Breaker,
    /// When it was loaded.
    pub loaded_at: Millis,
    /// The compiled component.
    pub compiled: Compiled,
}

impl Plugin {
    /// `{type}@{version} sha256:{prefix}`: names the exact build, for orders and logs.
    pub fn build_id(&self) -> String {
        format!(
            "{}@{} sha256:{}",
            self.plugin_type,
            self.metadata.version,
            &self.sha256[..12]
        )
    }
}

/// What ops see for one type: the version serving and the last load error.
#[derive(Debug, Clone, Serialize)]
pub struct PluginStatus {
    /// Order type.
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// A version is serving.
    pub loaded: bool,
    /// Name the build reports.
    pub name: Option<String>,
    /// Version the build reports.
    pub version: Option<String>,
    /// WIT version it was built against.
    pub world_version: Option<String>,
    /// SHA-256 of the serving file.
    pub sha256: Option<String>,
    /// Who signed the serving build (`None` when `allowed_signers` is not set).
    pub signer: Option<Signer>,
    /// Size of the serving file.
    pub size: Option<usize>,
    /// When the serving version was loaded.
    pub loaded_at: Option<Millis>,
    /// Collections granted.
    pub collections: Vec<String>,
    /// HTTP origins granted.
    pub http_origins: Vec<String>,
    /// The manifest lets `http` run inside the payment transaction (`http_in_payment`).
    pub http_in_payment: bool,
    /// The manifest grants the notify-key `crypto` operations (`crypto = true`).
    pub crypto: bool,
    /// The serving build exports `handle-refunded` (world `handler-with-refunds`).
    pub handles_refunds: bool,
    /// Wall-time limit of `run-task` calls, in ms.
    pub timeout_ms: Option<u64>,
    /// Wall-time limit of payment and refund calls, in ms.
    pub payment_timeout_ms: Option<u64>,
    /// Payment calls that timed out in a row, and until when the type fails fast.
    pub breaker: breaker::BreakerStatus,
    /// The last load failure for this type (the previous version keeps serving).
    pub last_error: Option<String>,
    /// When it failed.
    pub last_error_at: Option<Millis>,
}

/// What one scan of the directory did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScanReport {
    /// Types loaded or replaced.
    pub loaded: Vec<String>,
    /// Types whose files did not change.
    pub unchanged: Vec<String>,
    /// Types whose file failed to load, with the reason (the old version keeps serving).
    pub failed: Vec<(String, String)>,
    /// Types unloaded because their file is gone.
    pub removed: Vec<String>,
}

/// The loaded handlers, by type.
pub struct Registry {
    runtime: Arc<Runtime>,
    config: PluginsConfig,
    loaded: ArcSwap<BTreeMap<String, Arc<Plugin>>>,
    /// Last load failure per type: message, time, and the files' stamp (not retried
    /// until the files change).
    errors: Mutex<BTreeMap<String, (String, Millis, FileStamp)>>,
    scanning: tokio::sync::Mutex<()>,
    /// Where loads, replacements, unloads and refusals are recorded; `None` records
    /// nothing (`plugins check`).
    history: Option<history::History>,
}

impl Registry {
    /// An empty registry over `config.dir`.
    pub fn new(runtime: Arc<Runtime>, config: PluginsConfig) -> Registry {
        Registry {
            runtime,
            config,
            loaded: ArcSwap::from_pointee(BTreeMap::new()),
            errors: Mutex::new(BTreeMap::new()),
            scanning: tokio::sync::Mutex::new(()),
            history: None,
        }
    }

    /// Records every load, replacement, unload and refusal in `store`'s plugin history,
    /// each write given up after `timeout` (a failed write is logged, the scan goes on).
    pub fn with_history(
        mut self,
        store: Arc<dyn crate::store::Store>,
        timeout: std::time::Duration,
    ) -> Registry {
        self.history = Some(history::History::new(store, timeout));
        self
    }

    /// The runtime the plugins run on.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The context of a call of `plugin`'s handler, to be completed per call.
    pub fn call_context(&self, plugin: &Plugin) -> CallBuilder {
        self.runtime.call_context(
            plugin.manifest.clone(),
            &plugin.plugin_type,
            &plugin.metadata.version,
        )
    }

    /// The handler for `plugin_type`, if one is loaded.
    pub fn get(&self, plugin_type: &str) -> Option<Arc<Plugin>> {
        self.loaded.load().get(plugin_type).cloned()
    }

    /// Status of every type that is loaded or failed to load.
    pub fn status(&self) -> Vec<PluginStatus> {
        let loaded = self.loaded.load();
        let errors = self
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut types: Vec<&String> = loaded.keys().chain(errors.keys()).collect();
        types.sort();
        types.dedup();
        types
            .into_iter()
            .map(|t| {
                let p = loaded.get(t);
                let err = errors.get(t);
                PluginStatus {
                    plugin_type: t.clone(),
                    loaded: p.is_some(),
                    name: p.map(|p| p.metadata.name.clone()),
                    version: p.map(|p| p.metadata.version.clone()),
                    world_version: p.map(|p| p.metadata.world_version.clone()),
                    sha256: p.map(|p| p.sha256.clone()),
                    signer: p.and_then(|p| p.signer.clone()),
                    size: p.map(|p| p.size),
                    loaded_at: p.map(|p| p.loaded_at),
                    collections: p
                        .map(|p| p.manifest.collections.clone())
                        .unwrap_or_default(),
                    http_origins: p
                        .map(|p| p.manifest.http_origins.clone())
                        .unwrap_or_default(),
                    http_in_payment: p.is_some_and(|p| p.manifest.http_in_payment),
                    crypto: p.is_some_and(|p| p.manifest.crypto),
                    handles_refunds: p.is_some_and(|p| p.compiled.handles_refunds()),
                    timeout_ms: p.map(|p| duration_ms(p.limits.timeout)),
                    payment_timeout_ms: p.map(|p| duration_ms(p.payment_limits.timeout)),
                    breaker: p.map(|p| p.breaker.status()).unwrap_or_default(),
                    last_error: err.map(|e| e.0.clone()),
                    last_error_at: err.map(|e| e.1),
                }
            })
            .collect()
    }

    /// Loads every `{type}.wasm` in the directory that is new or changed, keeps the
    /// serving version of any that fails, and unloads types whose file is gone.
    pub async fn scan(&self) -> ScanReport {
        let _one_at_a_time = self.scanning.lock().await;
        let mut report = ScanReport::default();
        let files = match plugin_files(&self.config.dir) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(dir = %self.config.dir.display(), error = %e, "cannot read plugins directory");
                report.failed.push(("*".into(), e));
                return report;
            }
        };
        let current = self.loaded.load_full();
        let mut next: BTreeMap<String, Arc<Plugin>> = BTreeMap::new();
        for (plugin_type, wasm_path) in &files {
            let previous = current.get(plugin_type);
            let stamp = FileStamp::of(wasm_path, &wasm_path.with_extension("toml"));
            if self.failed_with(plugin_type, &stamp) {
                if let Some(p) = previous {
                    next.insert(plugin_type.clone(), p.clone());
                }
                continue;
            }
            match self.load(plugin_type, wasm_path, previous).await {
                Ok(Some(plugin)) => {
                    tracing::info!(
                        plugin = %plugin_type,
                        version = %plugin.metadata.version,
                        sha256 = %plugin.sha256,
                        "plugin loaded"
                    );
                    let kind = match previous {
                        Some(_) => PluginEventKind::Replaced,
                        None => PluginEventKind::Loaded,
                    };
                    self.record(kind, plugin_type, Some(&plugin), None).await;
                    self.clear_error(plugin_type);
                    crate::metrics::plugin_loaded(plugin_type);
                    report.loaded.push(plugin_type.clone());
                    next.insert(plugin_type.clone(), Arc::new(plugin));
                }
                Ok(None) => {
                    report.unchanged.push(plugin_type.clone());
                    if let Some(p) = previous {
                        next.insert(plugin_type.clone(), p.clone());
                    }
                }
                Err(e) => {
                    let msg = format!("{}: {e}", wasm_path.display());
                    tracing::error!(plugin = %plugin_type, error = %msg, "plugin failed to load; previous version (if any) keeps serving");
                    self.record(PluginEventKind::Refused, plugin_type, None, Some(&msg))
                        .await;
                    self.set_error(plugin_type, msg.clone(), stamp);
                    crate::metrics::plugin_load_failed(plugin_type);
                    report.failed.push((plugin_type.clone(), msg));
                    if let Some(p) = previous {
                        next.insert(plugin_type.clone(), p.clone());
                    }
                }
            }
        }
        for (t, gone) in current.iter() {
            if !files.contains_key(t) {
                tracing::warn!(plugin = %t, "plugin file removed; type unloaded");
                self.record(PluginEventKind::Unloaded, t, Some(gone), None)
                    .await;
                report.removed.push(t.clone());
            }
        }
        // A load error describes a file; once the file is gone, so is the problem
        // (otherwise /readyz would keep failing for a broken file that was deleted).
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|t, _| files.contains_key(t));
        self.loaded.store(Arc::new(next));
        report
    }

    /// Loads one file; `Ok(None)` if it is the same as `previous`.
    async fn load(
        &self,
        plugin_type: &str,
        wasm_path: &Path,
        previous: Option<&Arc<Plugin>>,
    ) -> Result<Option<Plugin>, LoadError> {
        let manifest_path = wasm_path.with_extension("toml");
        let stamp = FileStamp::of(wasm_path, &manifest_path);
        if previous.is_some_and(|p| p.stamp == stamp) {
            return Ok(None);
        }
        let bytes = std::fs::read(wasm_path)
            .map_err(|e| LoadError::Compile(format!("cannot read: {e}")))?;
        let manifest_text = std::fs::read(&manifest_path).unwrap_or_default();
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let fingerprint = hex::encode(
            Sha256::new()
                .chain_update(&bytes)
                .chain_update(&manifest_text)
                .finalize(),
        );
        if previous.is_some_and(|p| p.fingerprint == fingerprint) {
            return Ok(None);
        }
        let manifest = Arc::new(Manifest::load(&manifest_path).map_err(LoadError::Manifest)?);
        let in_file = |e: String| LoadError::Manifest(format!("{}: {e}", manifest_path.display()));
        let limits = manifest.limits(&self.config).map_err(in_file)?;
        let payment_limits = manifest.payment_limits(&self.config).map_err(in_file)?;
        let size = bytes.len();
        let cache_dir = self
            .config
            .cache_dir
            .clone()
            .unwrap_or_else(|| self.config.dir.join(".cache"));
        let compiled = self
            .runtime
            .compile(
                plugin_type,
                bytes,
                &sha256,
                Some(&cache_dir),
                &manifest,
                limits,
            )
            .await?;
        Ok(Some(Plugin {
            plugin_type: plugin_type.to_owned(),
            metadata: compiled.metadata.clone(),
            sha256,
            signer: None,
            fingerprint,
            stamp,
            size,
            manifest,
            limits,
            payment_limits,
            breaker: breaker::Breaker::new(
                self.config.breaker_timeouts,
                std::time::Duration::from_secs(self.config.breaker_cooldown_secs),
            ),
            loaded_at: now_ms(),
            compiled,
        }))
    }

    /// Validates a file without loading it (`paynotify plugins check`).
    pub async fn check_file(&self, wasm_path: &Path) -> Result<Plugin, LoadError> {
        let plugin_type = wasm_path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("plugin")
            .to_owned();
        self.load(&plugin_type, wasm_path, None)
            .await?
            .ok_or_else(|| LoadError::Compile("unreachable: no previous version".into()))
    }

    /// Records an event in the history, if this registry keeps one.
    async fn record(
        &self,
        kind: PluginEventKind,
        plugin_type: &str,
        plugin: Option<&Plugin>,
        reason: Option<&str>,
    ) {
        if let Some(h) = &self.history {
            h.record(kind, plugin_type, plugin, reason).await;
        }
    }

    fn set_error(&self, plugin_type: &str, msg: String, stamp: FileStamp) {
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        errors.insert(plugin_type.to_owned(), (msg, now_ms(), stamp));
    }

    fn failed_with(&self, plugin_type: &str, stamp: &FileStamp) -> bool {
        let errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        errors.get(plugin_type).is_some_and(|e| &e.2 == stamp)
    }

    fn clear_error(&self, plugin_type: &str) {
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        errors.remove(plugin_type);
    }
}

fn duration_ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Size and modification time of a plugin's `.wasm` and manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp(Vec<Option<(u64, std::time::SystemTime)>>);

impl FileStamp {
    fn of(wasm: &Path, manifest: &Path) -> FileStamp {
        FileStamp(
            [wasm, manifest]
                .iter()
                .map(|p| {
                    let m = std::fs::metadata(p).ok()?;
                    Some((m.len(), m.modified().ok()?))
                })
                .collect(),
        )
    }
}

/// `{type}.wasm` files in `dir`, by type. Hidden and editor temporary files are skipped.
fn plugin_files(dir: &Path) -> Result<BTreeMap<String, PathBuf>, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut files = BTreeMap::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("wasm") || !path.is_file() {
            continue;
        }
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if stem.starts_with('.') || !crate::names::is_simple_name(stem) {
            continue;
        }
        files.insert(stem.to_owned(), path);
    }
    Ok(files)
}

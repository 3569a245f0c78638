//! Handlers: the registry of loaded plugins (one per order type), the wasmtime runtime
//! that runs them, and the capabilities they are granted.
//!
//! `{dir}/{type}.wasm` is the handler for orders of `type`; `{dir}/{type}.toml`, when
//! present, its grants and limits. The registry's map is swapped atomically, so a call
//! that started on one version finishes on it while new calls get the next.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::config::PluginsConfig;
use crate::store::PluginEventKind;
use crate::time::{now_ms, Millis};
use files::{FileStamp, Files};

mod backstop;
pub mod breaker;
pub mod cache;
pub mod capabilities;
mod files;
mod history;
pub mod manifest;
pub mod runtime;
mod status;
pub mod watch;
pub mod world;

pub use crate::signers::{AllowedSigners, Signer};
pub use cache::Cache;
pub use capabilities::{CallBuilder, CallContext};
pub(crate) use history::host_label;
pub use manifest::{Limits, Manifest};
pub use runtime::{Compiled, Runtime};
pub use status::PluginStatus;
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
    /// SHA-256 over the `.wasm`, the manifest and both signatures: a change of any reloads.
    fingerprint: String,
    /// What the filesystem said about those files when loaded: while it says the same,
    /// a rescan does not even read them (a forced one does).
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
    /// `{type}@{version} sha256:{prefix}`, then ` signed {principal} {fingerprint}` for a
    /// signed build: names the exact build and who vouched for it, for orders and logs.
    pub fn build_id(&self) -> String {
        let mut id = format!(
            "{}@{} sha256:{}",
            self.plugin_type,
            self.metadata.version,
            &self.sha256[..12]
        );
        if let Some(signer) = &self.signer {
            id.push_str(&format!(" signed {signer}"));
        }
        id
    }
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

/// How long a compiled artefact no serving build uses is kept: a rollback to a build of
/// the last month loads without compiling.
const CACHE_UNUSED_FOR: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

/// The loaded handlers, by type.
pub struct Registry {
    runtime: Arc<Runtime>,
    config: PluginsConfig,
    /// Where compiled artefacts are kept (`None`: compile every load).
    cache: Option<Cache>,
    loaded: ArcSwap<BTreeMap<String, Arc<Plugin>>>,
    /// Last load failure per type (not retried until the files change).
    errors: Mutex<BTreeMap<String, Failure>>,
    /// Types being compiled now, since when: a large component (a JavaScript one) takes
    /// seconds, and ops and API clients should see it coming rather than a missing type.
    loading: Mutex<BTreeMap<String, Millis>>,
    scanning: tokio::sync::Mutex<()>,
    /// Where loads, replacements, unloads and refusals are recorded; `None` records
    /// nothing (`plugins check`).
    history: Option<history::History>,
}

/// A type's last load failure.
#[derive(Debug, Clone)]
struct Failure {
    message: String,
    at: Millis,
    /// The files' stamp when they failed: an unforced scan skips them while it holds.
    stamp: FileStamp,
    /// Their fingerprint, when they could be read: a forced scan skips them while it holds.
    fingerprint: Option<String>,
}

/// The signers a scan checks against: `None` without `allowed_signers`.
type Signers = Option<Result<AllowedSigners, String>>;

impl Registry {
    /// An empty registry over `config.dir`, compiling without a cache.
    pub fn new(runtime: Arc<Runtime>, config: PluginsConfig) -> Registry {
        Registry {
            runtime,
            config,
            cache: None,
            loaded: ArcSwap::from_pointee(BTreeMap::new()),
            errors: Mutex::new(BTreeMap::new()),
            loading: Mutex::new(BTreeMap::new()),
            scanning: tokio::sync::Mutex::new(()),
            history: None,
        }
    }

    /// Keeps compiled artefacts in `cache`.
    pub fn with_cache(mut self, cache: Cache) -> Registry {
        self.cache = Some(cache);
        self
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

    /// The staged candidate of `plugin_type` (`{type}.next.wasm`), if one is loaded.
    // Placeholder until candidate loading lands (branch `stage`): none are loaded yet.
    pub fn candidate(&self, _plugin_type: &str) -> Option<Arc<Plugin>> {
        None
    }

    /// Loads every `{type}.wasm` in the directory whose files changed (by what the
    /// filesystem says of them), keeps the serving version of any that fails, and
    /// unloads types whose file is gone or whose signer is no longer allowed.
    pub async fn scan(&self) -> ScanReport {
        self.scan_with(false).await
    }

    /// [`Registry::scan`], but reading and hashing every file, so a replacement that
    /// the filesystem's stamps cannot show is still found (`plugins reload`).
    pub async fn rescan(&self) -> ScanReport {
        self.scan_with(true).await
    }

    async fn scan_with(&self, force: bool) -> ScanReport {
        let _one_at_a_time = self.scanning.lock().await;
        let mut report = ScanReport::default();
        let files = match files::plugin_files(&self.config.dir) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(dir = %self.config.dir.display(), error = %e, "cannot read plugins directory");
                report.failed.push(("*".into(), e));
                return report;
            }
        };
        let signers = self.signers();
        let now = now_ms();
        let current = self.loaded.load_full();
        let mut next: BTreeMap<String, Arc<Plugin>> = BTreeMap::new();
        for (plugin_type, wasm_path) in &files {
            let mut previous = current.get(plugin_type);
            if let (Some(p), Some(Ok(allowed))) = (previous, &signers) {
                if p.signer
                    .as_ref()
                    .is_some_and(|s| !allowed.still_allows(s, now))
                {
                    // Loading it again below fails on the signature and says why.
                    tracing::warn!(plugin = %plugin_type, signer = %signer_text(p.signer.as_ref()), "the serving build's signer is no longer allowed: unloading it");
                    previous = None;
                }
            }
            let paths = files::Paths::of(wasm_path);
            let stamp = FileStamp::of(&paths);
            let outcome = self
                .reload(plugin_type, &paths, &stamp, previous, &signers, force)
                .await;
            match outcome {
                Reload::Loaded(plugin) => {
                    tracing::info!(
                        plugin = %plugin_type,
                        version = %plugin.metadata.version,
                        sha256 = %plugin.sha256,
                        signer = %signer_text(plugin.signer.as_ref()),
                        "plugin loaded"
                    );
                    let kind = match previous {
                        Some(_) => PluginEventKind::Replaced,
                        None => PluginEventKind::Loaded,
                    };
                    self.record(kind, plugin_type, Some(&plugin), None, None)
                        .await;
                    self.clear_error(plugin_type);
                    crate::metrics::plugin_loaded(plugin_type);
                    report.loaded.push(plugin_type.clone());
                    next.insert(plugin_type.clone(), Arc::from(plugin));
                }
                Reload::Unchanged => {
                    report.unchanged.push(plugin_type.clone());
                    if let Some(p) = previous {
                        next.insert(plugin_type.clone(), p.clone());
                    }
                }
                Reload::Failed(e, read) => {
                    let msg = format!("{}: {e}", wasm_path.display());
                    tracing::error!(plugin = %plugin_type, error = %msg, "plugin failed to load; previous version (if any) keeps serving");
                    let (fingerprint, sha256) = read.unzip();
                    self.record(
                        PluginEventKind::Refused,
                        plugin_type,
                        None,
                        sha256.as_deref(),
                        Some(&msg),
                    )
                    .await;
                    self.set_error(plugin_type, msg.clone(), stamp, fingerprint);
                    crate::metrics::plugin_load_failed(plugin_type, e.kind());
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
                self.record(PluginEventKind::Unloaded, t, Some(gone), None, None)
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
        if let Some(cache) = &self.cache {
            let serving: Vec<&str> = next.values().map(|p| p.sha256.as_str()).collect();
            cache.sweep(&serving, CACHE_UNUSED_FOR);
        }
        self.loaded.store(Arc::new(next));
        report
    }

    /// The signers file read now, so that ops can add or revoke a key without a restart.
    fn signers(&self) -> Signers {
        let path = self.config.allowed_signers.as_ref()?;
        let read = AllowedSigners::load(path).map_err(|e| e.to_string());
        if let Err(e) = &read {
            tracing::error!(error = %e, "cannot read allowed_signers: no handler loads or changes until it is fixed");
        }
        Some(read)
    }

    /// Decides what to do with one type's files: skip them if they did not change (or
    /// failed before as they are), else read, check and load them.
    async fn reload(
        &self,
        plugin_type: &str,
        paths: &files::Paths,
        stamp: &FileStamp,
        previous: Option<&Arc<Plugin>>,
        signers: &Signers,
        force: bool,
    ) -> Reload {
        let failed = self.failure(plugin_type);
        if !force {
            if previous.is_some_and(|p| &p.stamp == stamp) {
                return Reload::Unchanged;
            }
            if failed.as_ref().is_some_and(|f| &f.stamp == stamp) {
                return Reload::Unchanged;
            }
        }
        let read = match Files::read(paths) {
            Ok(r) => r,
            Err(e) => return Reload::Failed(e, None),
        };
        let fingerprint = read.fingerprint();
        let sha256 = read.wasm_sha256();
        if previous.is_some_and(|p| p.fingerprint == fingerprint) {
            // The files are back to the build serving: whatever failed in between is gone.
            self.clear_error(plugin_type);
            return Reload::Unchanged;
        }
        if failed.is_some_and(|f| f.fingerprint.as_ref() == Some(&fingerprint)) {
            return Reload::Unchanged;
        }
        let allowed = match signers {
            None => None,
            Some(Ok(s)) => Some(s),
            Some(Err(e)) => {
                return Reload::Failed(LoadError::Signers(e.clone()), Some((fingerprint, sha256)))
            }
        };
        match self.load(plugin_type, read, stamp.clone(), allowed).await {
            Ok(plugin) => Reload::Loaded(Box::new(plugin)),
            Err(e) => Reload::Failed(e, Some((fingerprint, sha256))),
        }
    }

    /// Checks and loads one handler's files. With `signers`, nothing is compiled or
    /// parsed before both signatures verify.
    async fn load(
        &self,
        plugin_type: &str,
        files: Files,
        stamp: FileStamp,
        signers: Option<&AllowedSigners>,
    ) -> Result<Plugin, LoadError> {
        let signer = match signers {
            Some(allowed) => Some(files.verify(allowed)?),
            None => None,
        };
        let manifest_path = &files.paths.manifest;
        let manifest = match &files.manifest {
            Some(bytes) => Manifest::parse(bytes, manifest_path).map_err(LoadError::Manifest)?,
            None => Manifest::default(),
        };
        manifest
            .check_type(plugin_type, signers.is_some() && files.manifest.is_some())
            .map_err(|e| LoadError::Manifest(format!("{}: {e}", manifest_path.display())))?;
        let manifest = Arc::new(manifest);
        let in_file = |e: String| LoadError::Manifest(format!("{}: {e}", manifest_path.display()));
        let limits = manifest.limits(&self.config).map_err(in_file)?;
        let payment_limits = manifest.payment_limits(&self.config).map_err(in_file)?;
        let sha256 = files.wasm_sha256();
        let fingerprint = files.fingerprint();
        let size = files.wasm.len();
        let _loading = self.mark_loading(plugin_type, size, &sha256);
        let compiled = self
            .runtime
            .compile(
                plugin_type,
                files.wasm,
                &sha256,
                self.cache.as_ref(),
                &manifest,
                limits,
            )
            .await?;
        if signers.is_some() && compiled.metadata.name != plugin_type {
            // The signature covers the build, not its file name: without this, a signed
            // handler of one type could be dropped in as another's and pay its orders.
            return Err(crate::signers::SignatureError::WrongType {
                file: files::name(&files.paths.wasm),
                found: compiled.metadata.name.clone(),
                expected: plugin_type.to_owned(),
            }
            .into());
        }
        Ok(Plugin {
            plugin_type: plugin_type.to_owned(),
            metadata: compiled.metadata.clone(),
            sha256,
            signer,
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
        })
    }

    /// Validates a file the way a scan would, without loading it (`paynotify plugins
    /// check`): signatures against the configured `allowed_signers` included.
    pub async fn check_file(&self, wasm_path: &Path) -> Result<Plugin, LoadError> {
        let plugin_type = wasm_path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("plugin")
            .to_owned();
        let paths = files::Paths::of(wasm_path);
        let stamp = FileStamp::of(&paths);
        let read = Files::read(&paths)?;
        let signers = match self.signers() {
            None => None,
            Some(Ok(s)) => Some(s),
            Some(Err(e)) => return Err(LoadError::Signers(e)),
        };
        self.load(&plugin_type, read, stamp, signers.as_ref()).await
    }

    /// Why there is no handler for `plugin_type`, for an API client that asked for one:
    /// it is being compiled, its file failed to load, or there is no file.
    pub fn why_missing(&self, plugin_type: &str) -> String {
        let since = self
            .loading
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(plugin_type)
            .copied();
        if let Some(since) = since {
            let secs = (now_ms() - since).max(0) / 1000;
            return format!(
                "the handler of type `{plugin_type}` is loading (compiling for {secs} s; a large component takes a while): try again shortly"
            );
        }
        if let Some(f) = self.failure(plugin_type) {
            return format!("type `{plugin_type}` has no loaded handler: {}", f.message);
        }
        format!(
            "type `{plugin_type}` has no loaded handler (expected {}/{plugin_type}.wasm)",
            self.config.dir.display()
        )
    }

    /// Shows `plugin_type` as loading until the guard is dropped, and says so in the log
    /// at once (a compile can take seconds; a cached artefact loads in milliseconds).
    fn mark_loading(&self, plugin_type: &str, size: usize, sha256: &str) -> LoadingGuard<'_> {
        let cached = self
            .cache
            .as_ref()
            .is_some_and(|c| self.runtime.is_cached(c, sha256));
        if cached {
            tracing::debug!(plugin = %plugin_type, "loading plugin from the compiled cache");
        } else {
            tracing::info!(plugin = %plugin_type, bytes = size, "compiling plugin (the first load of a file; a large component takes seconds)");
        }
        self.loading
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(plugin_type.to_owned(), now_ms());
        LoadingGuard {
            registry: self,
            plugin_type: plugin_type.to_owned(),
            started: std::time::Instant::now(),
        }
    }

    /// Records an event in the history, if this registry keeps one.
    async fn record(
        &self,
        kind: PluginEventKind,
        plugin_type: &str,
        plugin: Option<&Plugin>,
        file_sha256: Option<&str>,
        reason: Option<&str>,
    ) {
        if let Some(h) = &self.history {
            h.record(kind, plugin_type, plugin, file_sha256, reason)
                .await;
        }
    }

    fn set_error(
        &self,
        plugin_type: &str,
        message: String,
        stamp: FileStamp,
        fingerprint: Option<String>,
    ) {
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        errors.insert(
            plugin_type.to_owned(),
            Failure {
                message,
                at: now_ms(),
                stamp,
                fingerprint,
            },
        );
    }

    fn failure(&self, plugin_type: &str) -> Option<Failure> {
        let errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        errors.get(plugin_type).cloned()
    }

    fn clear_error(&self, plugin_type: &str) {
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        errors.remove(plugin_type);
    }
}

/// Clears a type's loading mark however its load ends.
struct LoadingGuard<'a> {
    registry: &'a Registry,
    plugin_type: String,
    started: std::time::Instant,
}

impl Drop for LoadingGuard<'_> {
    fn drop(&mut self) {
        self.registry
            .loading
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.plugin_type);
        let took = self.started.elapsed();
        if took > std::time::Duration::from_secs(1) {
            tracing::info!(plugin = %self.plugin_type, ms = took.as_millis() as u64, "plugin compiled");
        }
    }
}

/// What a scan does with one type's files.
enum Reload {
    Loaded(Box<Plugin>),
    Unchanged,
    /// With the files' fingerprint and the `.wasm`'s SHA-256, when they could be read.
    Failed(LoadError, Option<(String, String)>),
}

/// A signer for the log: `principal SHA256:…`, or `-` for an unsigned build.
fn signer_text(signer: Option<&Signer>) -> String {
    signer.map_or_else(|| "-".to_owned(), ToString::to_string)
}

fn duration_ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

//! Handlers: the registry of loaded plugins (one per order type), the wasmtime runtime
//! that runs them, and the capabilities they are granted.
//!
//! `{dir}/{type}.wasm` is the handler for orders of `type`; `{dir}/{type}.toml`, when
//! present, its grants and limits. The registry's map is swapped atomically, so a call
//! that started on one version finishes on it while new calls get the next.
//!
//! `{dir}/{type}.next.wasm` (with `{type}.next.toml` and the signatures) is the type's
//! candidate: loaded and checked by every scan exactly like a serving build, kept in a map
//! of its own ([`Registry::candidate`]), serving nothing until promoted ([`stage`]: the
//! promote moves the serving files to `{type}.prev.*` and the candidate's to `{type}.*`;
//! a rollback swaps `{type}.*` and `{type}.prev.*`). `{type}.prev.wasm` is never loaded
//! by a scan. The candidate's history events, metrics and scan report entries name it
//! `{type}.next`.

use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::config::PluginsConfig;
use crate::store::PluginEventKind;
use crate::time::{now_ms, Millis};
use files::{FileStamp, Files, Stage};
use slot::Slot;

mod backstop;
pub mod breaker;
pub mod cache;
pub mod capabilities;
mod files;
mod history;
pub mod manifest;
mod moves;
pub mod runtime;
mod scan;
mod slot;
pub mod stage;
mod status;
pub mod watch;
pub mod world;

pub use crate::signers::{AllowedSigners, Signer};
pub use cache::Cache;
pub use capabilities::{CallBuilder, CallContext};
pub(crate) use history::host_label;
pub use manifest::{Limits, Manifest};
pub use runtime::{Compiled, Runtime};
pub use stage::{StageError, Swap};
pub use status::{CandidateStatus, PluginStatus};
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
    /// What the filesystem said about those files when loaded (or when a promote or
    /// rollback moved them): while it says the same, a rescan does not even read them (a
    /// forced one does).
    stamp: Mutex<FileStamp>,
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

    /// What the filesystem said about the build's files when it last looked.
    fn stamp(&self) -> FileStamp {
        self.stamp.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records where the build's files are now (they were renamed by a promote or rollback).
    fn restamp(&self, stamp: FileStamp) {
        *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) = stamp;
    }
}

/// What one scan of the directory did. Candidates are listed as `{type}.next`.
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

/// How long a compiled artefact no serving build or candidate uses is kept: a rollback to
/// a build of the last month loads without compiling.
const CACHE_UNUSED_FOR: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

/// The loaded handlers, by type, and the staged candidates.
pub struct Registry {
    runtime: Arc<Runtime>,
    config: PluginsConfig,
    /// Where compiled artefacts are kept (`None`: compile every load).
    cache: Option<Cache>,
    /// The builds serving (`{type}.wasm`).
    serving: Slot,
    /// The staged candidates (`{type}.next.wasm`).
    candidates: Slot,
    /// Held by a scan, a promote and a rollback: none sees the folder half-changed by
    /// another.
    scanning: tokio::sync::Mutex<()>,
    /// Where loads, replacements, unloads and refusals are recorded; `None` records
    /// nothing (`plugins check`).
    history: Option<history::History>,
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
            serving: Slot::new(Stage::Serving),
            candidates: Slot::new(Stage::Next),
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
        self.serving.get(plugin_type)
    }

    /// The candidate staged for `plugin_type` (`{type}.next.wasm`), if one is loaded: one
    /// atomic load, like [`Registry::get`]. Its `plugin_type` is the type it would serve
    /// (`recharge`, not `recharge.next`).
    pub fn candidate(&self, plugin_type: &str) -> Option<Arc<Plugin>> {
        self.candidates.get(plugin_type)
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

    /// Checks and loads one handler's files. With `signers`, nothing is compiled or
    /// parsed before both signatures verify.
    async fn load(
        &self,
        plugin_type: &str,
        slot: &Slot,
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
        let _loading = self.mark_loading(slot, plugin_type, size, &sha256);
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
            stamp: Mutex::new(stamp),
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
    /// check`): signatures against the configured `allowed_signers` included. A staged
    /// `{type}.next.wasm` (or a kept `{type}.prev.wasm`) is checked as a build of `type`.
    pub async fn check_file(&self, wasm_path: &Path) -> Result<Plugin, LoadError> {
        let stem = wasm_path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("plugin");
        let plugin_type = Stage::type_of(stem).to_owned();
        let paths = files::Paths::of(wasm_path);
        let stamp = FileStamp::of(&paths);
        let read = Files::read(&paths)?;
        let signers = match self.signers() {
            None => None,
            Some(Ok(s)) => Some(s),
            Some(Err(e)) => return Err(LoadError::Signers(e)),
        };
        self.load(&plugin_type, &self.serving, read, stamp, signers.as_ref())
            .await
    }

    /// Why there is no handler for `plugin_type`, for an API client that asked for one:
    /// it is being compiled, its file failed to load, or there is no file.
    pub fn why_missing(&self, plugin_type: &str) -> String {
        if let Some(since) = self.serving.loading_since(plugin_type) {
            let secs = (now_ms() - since).max(0) / 1000;
            return format!(
                "the handler of type `{plugin_type}` is loading (compiling for {secs} s; a large component takes a while): try again shortly"
            );
        }
        if let Some(f) = self.serving.failure(plugin_type) {
            return format!("type `{plugin_type}` has no loaded handler: {}", f.message);
        }
        format!(
            "type `{plugin_type}` has no loaded handler (expected {}/{plugin_type}.wasm)",
            self.config.dir.display()
        )
    }

    /// Shows `plugin_type` as loading in `slot` until the guard is dropped, and says so in
    /// the log at once (a compile can take seconds; a cached artefact loads in milliseconds).
    fn mark_loading<'a>(
        &self,
        slot: &'a Slot,
        plugin_type: &str,
        size: usize,
        sha256: &str,
    ) -> LoadingGuard<'a> {
        let cached = self
            .cache
            .as_ref()
            .is_some_and(|c| self.runtime.is_cached(c, sha256));
        let label = slot.stage.label(plugin_type);
        if cached {
            tracing::debug!(plugin = %label, "loading plugin from the compiled cache");
        } else {
            tracing::info!(plugin = %label, bytes = size, "compiling plugin (the first load of a file; a large component takes seconds)");
        }
        slot.start_loading(plugin_type);
        LoadingGuard {
            slot,
            plugin_type: plugin_type.to_owned(),
            label,
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
}

/// Clears a type's loading mark however its load ends.
struct LoadingGuard<'a> {
    slot: &'a Slot,
    plugin_type: String,
    /// The type as the log names it (`recharge.next` for a candidate).
    label: String,
    started: std::time::Instant,
}

impl Drop for LoadingGuard<'_> {
    fn drop(&mut self) {
        self.slot.done_loading(&self.plugin_type);
        let took = self.started.elapsed();
        if took > std::time::Duration::from_secs(1) {
            tracing::info!(plugin = %self.label, ms = took.as_millis() as u64, "plugin compiled");
        }
    }
}

/// Whether `label` names a type in the plugin history: `{type}`, `{type}.next` (its
/// staged candidate) or `{type}.prev` (its previous build, refused by a rollback).
pub fn is_history_label(label: &str) -> bool {
    crate::names::is_simple_name(Stage::type_of(label))
}

/// A signer for the log: `principal SHA256:…`, or `-` for an unsigned build.
fn signer_text(signer: Option<&Signer>) -> String {
    signer.map_or_else(|| "-".to_owned(), ToString::to_string)
}

fn duration_ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

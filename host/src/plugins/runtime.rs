//! The wasmtime side: one engine for the process, the linker with the capabilities, and
//! running one call in a fresh, limited instance.
//!
//! Every call gets a new `Store` and instance from the plugin's `InstancePre` (cheap with
//! the pooling allocator), so nothing a handler did in one call leaks into the next, and
//! a store that trapped or timed out is simply dropped.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store,
};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::backstop::Watchdog;
use super::bindings::{self, Handler, HandlerPre};
use super::capabilities::{CallContext, CallTags};
use super::manifest::{Limits, Manifest};
use super::refund_bindings::{self, HandlerWithRefunds, HandlerWithRefundsPre};
use crate::config::PluginsConfig;

/// The WIT package version this host implements.
pub const WORLD_VERSION: &str = "0.1.0";

/// How often the epoch ticks; wall-time limits are counted in these.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Extra time past the epoch deadline before the host gives up on a call whose host
/// function is stuck (epochs only interrupt guest code).
const HOST_GRACE: Duration = Duration::from_secs(5);
/// Most output a handler may write to stdout/stderr per call before it is cut.
const MAX_STDIO_BYTES: usize = 16 * 1024;
/// Time allowed for the `metadata` call at load.
const METADATA_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a plugin file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Not a valid component, or compilation failed.
    #[error("not a valid WebAssembly component: {0}")]
    Compile(String),
    /// Built against another version of `paynotify:plugin`.
    #[error("built for paynotify:plugin@{found}, this host implements @{WORLD_VERSION}; rebuild it against paynotify-plugin-sdk {WORLD_VERSION}")]
    WorldVersion {
        /// The version the component asked for.
        found: String,
    },
    /// It imports something the host does not provide (or does not grant).
    #[error("forbidden or unknown import {0}")]
    Imports(String),
    /// A required export is missing or has the wrong type.
    #[error("does not fit the handler world: {0}")]
    Exports(String),
    /// The `metadata` call failed.
    #[error("metadata() failed: {0}")]
    Metadata(String),
    /// The manifest is invalid.
    #[error("manifest: {0}")]
    Manifest(String),
}

/// What a handler build says about itself.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct Metadata {
    /// The handler's name.
    pub name: String,
    /// The handler's own version.
    pub version: String,
    /// The WIT version it was built against.
    pub world_version: String,
}

/// A compiled, validated handler, ready to instantiate.
pub struct Compiled {
    pub(crate) pre: HandlerPre<HostState>,
    /// The same component seen through world `handler-with-refunds`, when it exports
    /// `refunds`.
    pub(crate) refunds: Option<HandlerWithRefundsPre<HostState>>,
    /// What it reported.
    pub metadata: Metadata,
}

/// Why a call failed. Any of these rolls the payment back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerFailure {
    /// The handler returned an error.
    #[error("handler error [{code}]: {message}")]
    Error {
        /// Its code.
        code: String,
        /// Its message.
        message: String,
    },
    /// The handler trapped (panic, unreachable, bad memory access...).
    #[error("handler trapped: {0}")]
    Trap(String),
    /// The handler ran past its wall-time limit.
    #[error("handler ran past its {0:?} time limit")]
    Timeout(Duration),
    /// The handler asked for more memory than its limit.
    #[error("handler went over its memory limit of {0} MiB")]
    Memory(usize),
    /// A host capability failed underneath the handler (e.g. the database).
    #[error("host failure during the call: {0}")]
    Host(String),
    /// The database asked for the transaction to be run again (deadlock, serialization
    /// failure): not the handler's fault, and not an answer to give the provider yet.
    #[error("transient database failure during the call: {0}")]
    Transient(String),
    /// No handler is loaded for the order's type.
    #[error("no handler is loaded for type `{0}`")]
    NotLoaded(String),
    /// The type's payment calls timed out repeatedly: it is not run until the cool-down
    /// is over (see [`super::breaker`]).
    #[error("handler not run: its last {timeouts} payment calls timed out; failing fast until {}", crate::store::iso_time(*until))]
    FailingFast {
        /// Timeouts in a row.
        timeouts: u32,
        /// Until when (unix ms).
        until: crate::store::Millis,
    },
}

impl HandlerFailure {
    /// The failure as JSON, stored as the order's `handler_result`.
    pub fn to_json(&self) -> serde_json::Value {
        let kind = match self {
            HandlerFailure::Error { code, .. } => code.as_str(),
            HandlerFailure::Trap(_) => "trap",
            HandlerFailure::Timeout(_) => "timeout",
            HandlerFailure::Memory(_) => "memory",
            HandlerFailure::Host(_) => "host",
            HandlerFailure::Transient(_) => "transient",
            HandlerFailure::NotLoaded(_) => "not-loaded",
            HandlerFailure::FailingFast { .. } => "failing-fast",
        };
        serde_json::json!({ "error": kind, "message": self.to_string() })
    }
}

/// A resource limiter that remembers it said no, so the failure can be named.
struct Limiter {
    memory_bytes: usize,
    hit: bool,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.hit = true;
            return Err(wasmtime::format_err!(
                "memory limit of {} MiB exceeded",
                self.memory_bytes / (1024 * 1024)
            ));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }

    fn instances(&self) -> usize {
        32
    }

    fn tables(&self) -> usize {
        32
    }

    fn memories(&self) -> usize {
        4
    }
}

/// The data of one call's `Store`.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
    /// The capabilities' view of the call.
    pub caps: CallContext,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The engine, linker and call machinery shared by every plugin.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    permits: Arc<Semaphore>,
    http: reqwest::Client,
    ticker_stop: Arc<AtomicBool>,
    watchdog: Arc<Watchdog>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

impl Runtime {
    /// Builds the engine (pooling allocator, epoch interruption) and links the imports.
    pub fn new(config: &PluginsConfig) -> Result<Runtime, LoadError> {
        let max_memory = usize::try_from(config.max_memory_mb.saturating_mul(1024 * 1024))
            .map_err(|_| LoadError::Compile("plugins.max_memory_mb is too large".into()))?;
        let instances = config.max_instances;
        let mut pool = PoolingAllocationConfig::default();
        // A wasm32-wasip2 component is a handful of core instances (the program plus
        // adapter shims), one memory and a few tables.
        pool.total_component_instances(instances)
            .total_core_instances(instances.saturating_mul(16))
            .total_memories(instances.saturating_mul(2))
            .total_tables(instances.saturating_mul(8))
            .total_stacks(instances)
            .max_core_instances_per_component(32)
            .max_memories_per_component(4)
            .max_tables_per_component(16)
            .max_memory_size(max_memory)
            // Reset reused slots by zeroing their first pages instead of handing them back
            // to the kernel: a fresh instance per call would otherwise page-fault its
            // whole working set in again on every call.
            .linear_memory_keep_resident(2 * 1024 * 1024)
            // ...and zero only the pages the call dirtied (Linux ≥ 6.7 `PAGEMAP_SCAN`;
            // elsewhere the whole kept region is zeroed). A Rust handler's memory starts
            // at ~1.1 MiB (its 1 MiB stack included) and a call dirties a few dozen
            // pages: zeroing all of it was ~8 % of the server's CPU under load.
            .pagemap_scan(Enabled::Auto)
            .table_keep_resident(64 * 1024)
            .async_stack_keep_resident(256 * 1024);
        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            // Handlers are called one export at a time (`call_async`), never with the
            // component model's concurrent API. Without it a store skips setting up the
            // concurrent task state, and dropping one no longer resumes a parked worker
            // fiber to unwind it (which built an error, with a backtrace when
            // RUST_BACKTRACE is set: ~10 % of a call's CPU).
            .concurrency_support(false)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm).map_err(|e| LoadError::Compile(format!("engine: {e}")))?;

        let mut linker = Linker::<HostState>::new(&engine);
        // WASI is linked whole so that std's start-up imports resolve, but the context
        // each call gets grants nothing: no preopened directories, no environment, no
        // sockets, stdin closed, stdout/stderr captured into the host log.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| LoadError::Compile(format!("linking WASI: {e}")))?;
        Handler::add_to_linker::<HostState, HasSelf<CallContext>>(&mut linker, |s| &mut s.caps)
            .map_err(|e| LoadError::Compile(format!("linking paynotify imports: {e}")))?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let watchdog = Arc::new(Watchdog::default());
        let weak = engine.weak();
        let stop = ticker_stop.clone();
        let dog = watchdog.clone();
        std::thread::Builder::new()
            .name("paynotify-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                    dog.tick();
                }
            })
            .map_err(|e| LoadError::Compile(format!("epoch thread: {e}")))?;

        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("paynotify/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| LoadError::Compile(format!("http client: {e}")))?;

        Ok(Runtime {
            engine,
            linker,
            permits: Arc::new(Semaphore::new(instances as usize)),
            http,
            ticker_stop,
            watchdog,
        })
    }

    /// The shared outbound HTTP client.
    pub fn http_client(&self) -> reqwest::Client {
        self.http.clone()
    }

    /// Compiles and validates a component: world version, imports, exports, metadata.
    /// Compilation runs on a blocking thread, off the async workers serving requests.
    /// With a `cache_dir`, the compiled artefact is kept under the file's hash and this
    /// engine's configuration hash, so a restart does not recompile unchanged plugins.
    pub async fn compile(
        &self,
        plugin_type: &str,
        bytes: Vec<u8>,
        sha256: &str,
        cache_dir: Option<&Path>,
        manifest: &Arc<Manifest>,
        limits: Limits,
    ) -> Result<Compiled, LoadError> {
        let engine = self.engine.clone();
        let cached = cache_dir.map(|d| d.join(format!("{sha256}-{}.cwasm", self.engine_hash())));
        let component = tokio::task::spawn_blocking(move || {
            compile_or_load(&engine, &bytes, cached.as_deref())
        })
        .await
        .map_err(|e| LoadError::Compile(format!("compiler thread failed: {e}")))??;
        self.validate(plugin_type, component, manifest, limits)
            .await
    }

    /// A short hash of everything about this engine that a compiled artefact depends on.
    fn engine_hash(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        format!("{:016x}", h.finish())
    }

    async fn validate(
        &self,
        plugin_type: &str,
        component: Component,
        manifest: &Arc<Manifest>,
        limits: Limits,
    ) -> Result<Compiled, LoadError> {
        super::world::shape(&component.component_type(), &self.engine)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Imports(format!("{e:#}")))?;
        let pre = HandlerPre::new(pre).map_err(|e| LoadError::Exports(format!("{e:#}")))?;
        let refunds = refunds_pre(&self.engine, &component, &pre)?;
        let tags = CallTags {
            plugin: plugin_type.to_owned(),
            version: String::new(),
            out_trade_no: None,
            notification_id: None,
            task_id: None,
        };
        let ctx = CallContext::detached(manifest.clone(), tags, self.http.clone());
        let limits = Limits {
            timeout: METADATA_TIMEOUT.min(limits.timeout),
            ..limits
        };
        let (_, result) = self
            .call(&pre, ctx, limits, |h, s| {
                Box::pin(async move { h.call_metadata(s).await })
            })
            .await;
        let m = result.map_err(|e| LoadError::Metadata(e.to_string()))?;
        if m.world_version != WORLD_VERSION {
            return Err(LoadError::WorldVersion {
                found: m.world_version,
            });
        }
        Ok(Compiled {
            pre,
            refunds,
            metadata: Metadata {
                name: m.name,
                version: m.version,
                world_version: m.world_version,
            },
        })
    }

    /// Makes a fresh, limited instance of a handler ahead of its call, so that the
    /// pipeline can pay for instantiation outside the payment transaction (while the
    /// previous handler of a batch runs). The instance carries a detached context until
    /// [`Runtime::handle_paid_prepared`] hands it the real one.
    pub async fn prepare(
        &self,
        compiled: &Compiled,
        manifest: Arc<Manifest>,
        tags: CallTags,
        limits: Limits,
    ) -> Result<Prepared, HandlerFailure> {
        let ctx = CallContext::detached(manifest, tags, self.http.clone());
        self.instantiate(&compiled.pre, ctx, limits)
            .await
            .map_err(|(_, failure)| failure)
    }

    /// Runs `handle-paid`. Gives the context (and its transaction) back unless the call
    /// had to be abandoned, in which case the transaction is gone (rolled back).
    pub async fn handle_paid(
        &self,
        compiled: &Compiled,
        ctx: CallContext,
        limits: Limits,
        order: bindings::Order,
        notification: bindings::Notification,
    ) -> (
        Option<CallContext>,
        Result<serde_json::Value, HandlerFailure>,
    ) {
        match self.instantiate(&compiled.pre, ctx, limits).await {
            Ok(prepared) => {
                self.run_handle_paid(prepared, None, order, notification)
                    .await
            }
            Err((ctx, failure)) => (Some(ctx), Err(failure)),
        }
    }

    /// Runs `handle-paid` on an instance made by [`Runtime::prepare`], with `ctx` (and
    /// its transaction) in place of the detached context it was made with.
    pub async fn handle_paid_prepared(
        &self,
        prepared: Prepared,
        ctx: CallContext,
        order: bindings::Order,
        notification: bindings::Notification,
    ) -> (
        Option<CallContext>,
        Result<serde_json::Value, HandlerFailure>,
    ) {
        self.run_handle_paid(prepared, Some(ctx), order, notification)
            .await
    }

    async fn run_handle_paid(
        &self,
        prepared: Prepared,
        ctx: Option<CallContext>,
        order: bindings::Order,
        notification: bindings::Notification,
    ) -> (
        Option<CallContext>,
        Result<serde_json::Value, HandlerFailure>,
    ) {
        let plugin = ctx
            .as_ref()
            .map(|c| c.tags.plugin.clone())
            .unwrap_or_else(|| prepared.store.data().caps.tags.plugin.clone());
        let started = std::time::Instant::now();
        let (ctx, result) = self
            .run(prepared, ctx, move |h, s| {
                Box::pin(async move { h.call_handle_paid(s, &order, &notification).await })
            })
            .await;
        let result = result.and_then(|r| match r {
            Ok(outcome) => Ok(outcome_json(&outcome.result)),
            Err(e) => Err(HandlerFailure::Error {
                code: e.code,
                message: e.message,
            }),
        });
        let outcome = outcome(&result);
        crate::metrics::handler_call(&plugin, "handle_paid", outcome, started.elapsed());
        (ctx, result)
    }

    /// Runs `run-task`.
    pub async fn run_task(
        &self,
        compiled: &Compiled,
        ctx: CallContext,
        limits: Limits,
        task: bindings::Task,
    ) -> (Option<CallContext>, Result<(), HandlerFailure>) {
        let plugin = ctx.tags.plugin.clone();
        let started = std::time::Instant::now();
        let (ctx, result) = self
            .call(&compiled.pre, ctx, limits, move |h, s| {
                Box::pin(async move { h.call_run_task(s, &task).await })
            })
            .await;
        let result = result.and_then(|r| {
            r.map_err(|e| HandlerFailure::Error {
                code: e.code,
                message: e.message,
            })
        });
        let outcome = outcome(&result);
        crate::metrics::handler_call(&plugin, "run_task", outcome, started.elapsed());
        (ctx, result)
    }

    /// Runs `handle-refunded`, which the component must export (see
    /// [`Compiled::handles_refunds`]). Gives the context back as [`Runtime::handle_paid`].
    pub async fn handle_refunded(
        &self,
        compiled: &Compiled,
        ctx: CallContext,
        limits: Limits,
        order: bindings::Order,
        refund: refund_bindings::Refund,
    ) -> (
        Option<CallContext>,
        Result<serde_json::Value, HandlerFailure>,
    ) {
        let Some(pre) = &compiled.refunds else {
            let failure = HandlerFailure::Host("the handler does not export `refunds`".into());
            return (Some(ctx), Err(failure));
        };
        let plugin = ctx.tags.plugin.clone();
        let started = std::time::Instant::now();
        let (ctx, result) = self
            .call(pre, ctx, limits, move |h, s| {
                Box::pin(async move {
                    h.paynotify_plugin_refunds()
                        .call_handle_refunded(s, &order, &refund)
                        .await
                })
            })
            .await;
        let result = result.and_then(|r| match r {
            Ok(outcome) => Ok(outcome_json(&outcome.result)),
            Err(e) => Err(HandlerFailure::Error {
                code: e.code,
                message: e.message,
            }),
        });
        let outcome = outcome(&result);
        crate::metrics::handler_call(&plugin, "handle_refunded", outcome, started.elapsed());
        (ctx, result)
    }

    /// One call in a fresh store.
    async fn call<P, R, F>(
        &self,
        pre: &P,
        ctx: CallContext,
        limits: Limits,
        f: F,
    ) -> (Option<CallContext>, Result<R, HandlerFailure>)
    where
        P: Instantiate,
        F: for<'a> FnOnce(
            &'a P::Instance,
            &'a mut Store<HostState>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = wasmtime::Result<R>> + Send + 'a>,
        >,
        R: Send,
    {
        match self.instantiate(pre, ctx, limits).await {
            Ok(prepared) => self.run(prepared, None, f).await,
            Err((ctx, failure)) => (Some(ctx), Err(failure)),
        }
    }

    /// A fresh store and instance: limits, epoch deadline, stdio capture, and a host-side
    /// backstop timeout. Gives the context back if instantiation fails.
    async fn instantiate<P: Instantiate>(
        &self,
        pre: &P,
        ctx: CallContext,
        limits: Limits,
    ) -> Result<Prepared<P::Instance>, (CallContext, HandlerFailure)> {
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            return Err((ctx, HandlerFailure::Host("runtime is shutting down".into())));
        };
        let stdout = MemoryOutputPipe::new(MAX_STDIO_BYTES);
        let stderr = MemoryOutputPipe::new(MAX_STDIO_BYTES);
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let mut store = Store::new(
            &self.engine,
            HostState {
                wasi,
                table: ResourceTable::new(),
                limiter: Limiter {
                    memory_bytes: limits.memory_bytes,
                    hit: false,
                },
                stdout,
                stderr,
                caps: ctx,
            },
        );
        store.limiter(|s| &mut s.limiter);
        // Instantiation can run guest code (initialisers): it gets the call's limits.
        set_deadline(&mut store, limits.timeout);
        let made = self
            .watchdog
            .within(backstop(limits), pre.instantiate_async(&mut store))
            .await;
        match made {
            Ok(Ok(handler)) => Ok(Prepared {
                store,
                handler,
                limits,
                _permit: permit,
            }),
            Ok(Err(e)) => {
                let failure = classify(&e, store.data(), limits);
                Err((store.into_data().caps, failure))
            }
            Err(_elapsed) => {
                let caps = store.into_data().caps;
                Err((caps, HandlerFailure::Timeout(limits.timeout)))
            }
        }
    }

    /// Runs one export on a prepared instance (with `ctx` swapped in when given), then
    /// drops the store: nothing of this call survives into the next.
    async fn run<I, R, F>(
        &self,
        prepared: Prepared<I>,
        ctx: Option<CallContext>,
        f: F,
    ) -> (Option<CallContext>, Result<R, HandlerFailure>)
    where
        I: Send + Sync,
        F: for<'a> FnOnce(
            &'a I,
            &'a mut Store<HostState>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = wasmtime::Result<R>> + Send + 'a>,
        >,
        R: Send,
    {
        let Prepared {
            mut store,
            handler,
            limits,
            _permit,
        } = prepared;
        if let Some(ctx) = ctx {
            store.data_mut().caps = ctx;
        }
        // The wall-time limit counts from the call, not from when the instance was made.
        set_deadline(&mut store, limits.timeout);
        let outcome = self
            .watchdog
            .within(backstop(limits), f(&handler, &mut store))
            .await;

        let result = match outcome {
            Err(_elapsed) => {
                // The future (and the store with its transaction) is gone.
                tracing::error!(timeout = ?limits.timeout, "handler call abandoned: a host function did not return");
                return (None, Err(HandlerFailure::Timeout(limits.timeout)));
            }
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(classify(&e, store.data(), limits)),
        };
        let state = store.into_data();
        log_stdio(&state);
        let mut caps = state.caps;
        let result = match (result, caps.poisoned.take()) {
            (_, Some(p)) if p.transient => Err(HandlerFailure::Transient(p.message)),
            (_, Some(p)) => Err(HandlerFailure::Host(p.message)),
            (r, None) => r,
        };
        (Some(caps), result)
    }
}

/// A fresh instance of a handler, made by [`Runtime::prepare`] and not yet called. It
/// holds one of the runtime's instance permits (and a pooled slot) until dropped.
pub struct Prepared<I = Handler> {
    store: Store<HostState>,
    handler: I,
    limits: Limits,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// When the host stops waiting for a call whose host function does not return.
fn backstop(limits: Limits) -> std::time::Instant {
    std::time::Instant::now() + limits.timeout + HOST_GRACE
}

/// Every tick the guest gives its worker thread back to the async runtime (a handler
/// spinning for its whole time limit must not pin one of the host's few threads), and
/// once its wall time is up the next tick traps it.
fn set_deadline(store: &mut Store<HostState>, timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if std::time::Instant::now() >= deadline {
            Err(wasmtime::Trap::Interrupt.into())
        } else {
            Ok(wasmtime::UpdateDeadline::Yield(1))
        }
    });
}

/// The name under which a component exports the optional `refunds` interface.
pub const REFUNDS_EXPORT: &str = "paynotify:plugin/refunds@0.1.0";

impl Compiled {
    /// The build exports `handle-refunded`.
    pub fn handles_refunds(&self) -> bool {
        self.refunds.is_some()
    }
}

/// World `handler-with-refunds` bindings of a component that exports `refunds` (`None`
/// for one that does not: it is a plain `handler`, and still loads).
fn refunds_pre(
    engine: &Engine,
    component: &Component,
    pre: &HandlerPre<HostState>,
) -> Result<Option<HandlerWithRefundsPre<HostState>>, LoadError> {
    let exported = component
        .component_type()
        .exports(engine)
        .any(|(name, _)| name == REFUNDS_EXPORT);
    if !exported {
        return Ok(None);
    }
    HandlerWithRefundsPre::new(pre.instance_pre().clone())
        .map(Some)
        .map_err(|e| LoadError::Exports(format!("its `{REFUNDS_EXPORT}` export: {e:#}")))
}

/// A pre-instantiated component seen through one of the worlds, so one call path serves
/// `handler` and `handler-with-refunds`.
trait Instantiate: Sync {
    /// The instance's bindings.
    type Instance: Send + Sync;
    /// Instantiates it in `store`.
    fn instantiate_async(
        &self,
        store: &mut Store<HostState>,
    ) -> impl std::future::Future<Output = wasmtime::Result<Self::Instance>> + Send;
}

impl Instantiate for HandlerPre<HostState> {
    type Instance = Handler;
    fn instantiate_async(
        &self,
        store: &mut Store<HostState>,
    ) -> impl std::future::Future<Output = wasmtime::Result<Handler>> + Send {
        HandlerPre::instantiate_async(self, store)
    }
}

impl Instantiate for HandlerWithRefundsPre<HostState> {
    type Instance = HandlerWithRefunds;
    fn instantiate_async(
        &self,
        store: &mut Store<HostState>,
    ) -> impl std::future::Future<Output = wasmtime::Result<HandlerWithRefunds>> + Send {
        HandlerWithRefundsPre::instantiate_async(self, store)
    }
}

/// Loads the cached artefact at `cached` if there is one, else compiles `bytes` and
/// writes the artefact there (atomically; a failure to cache is only logged).
fn compile_or_load(
    engine: &Engine,
    bytes: &[u8],
    cached: Option<&Path>,
) -> Result<Component, LoadError> {
    if let Some(path) = cached {
        if path.exists() {
            // SAFETY: the cache directory is created private to the host (0700) and its
            // files are written only by `Component::serialize` below, under a name that
            // includes the source's SHA-256 and the engine's compatibility hash.
            match unsafe { Component::deserialize_file(engine, path) } {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "ignoring unusable compiled cache entry")
                }
            }
        }
    }
    super::world::header(bytes)?;
    let component =
        Component::new(engine, bytes).map_err(|e| LoadError::Compile(format!("{e:#}")))?;
    if let Some(path) = cached {
        if let Err(e) = write_cache(path, &component) {
            tracing::warn!(file = %path.display(), error = %e, "cannot cache compiled plugin");
        }
    }
    Ok(component)
}

fn write_cache(path: &Path, component: &Component) -> Result<(), String> {
    let dir = path.parent().ok_or("cache path has no directory")?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| e.to_string())?;
    }
    let bytes = component.serialize().map_err(|e| e.to_string())?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, path).map_err(|e| e.to_string())
}

fn classify(e: &wasmtime::Error, state: &HostState, limits: Limits) -> HandlerFailure {
    if state.limiter.hit {
        return HandlerFailure::Memory(limits.memory_bytes / (1024 * 1024));
    }
    if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        if *trap == wasmtime::Trap::Interrupt {
            return HandlerFailure::Timeout(limits.timeout);
        }
    }
    // The root cause first, then wasmtime's context (which includes the wasm backtrace).
    let text = format!("{e:#}");
    HandlerFailure::Trap(text.chars().take(2000).collect())
}

fn log_stdio(state: &HostState) {
    let tags = &state.caps.tags;
    for (stream, pipe) in [("stdout", &state.stdout), ("stderr", &state.stderr)] {
        let bytes = pipe.contents();
        if bytes.is_empty() {
            continue;
        }
        for line in String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|l| !l.trim().is_empty())
        {
            tracing::info!(
                target: "paynotify::plugin",
                plugin = %tags.plugin,
                order = tags.out_trade_no.as_deref().unwrap_or(""),
                stream,
                "{line}"
            );
        }
    }
}

/// A handler's outcome text as JSON: empty is null; text that is not JSON is kept as a
/// JSON string rather than failing a payment that succeeded.
fn outcome_json(text: &str) -> serde_json::Value {
    if text.trim().is_empty() {
        return serde_json::Value::Null;
    }
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_owned()))
}

/// The `outcome` label of a handler call.
pub(crate) fn outcome<T>(result: &Result<T, HandlerFailure>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(HandlerFailure::Error { .. }) => "error",
        Err(HandlerFailure::Trap(_)) => "trap",
        Err(HandlerFailure::Timeout(_)) => "timeout",
        Err(HandlerFailure::Memory(_)) => "memory",
        Err(HandlerFailure::Host(_)) => "host",
        Err(HandlerFailure::Transient(_)) => "transient",
        Err(HandlerFailure::NotLoaded(_)) => "not_loaded",
        Err(HandlerFailure::FailingFast { .. }) => "failing_fast",
    }
}

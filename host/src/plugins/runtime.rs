//! The wasmtime side: one engine for the process, the linker with the capabilities, and
//! running one call in a fresh, limited instance.
//!
//! Every call gets a new `Store` and instance from the plugin's `InstancePre` (cheap with
//! the pooling allocator), so nothing a handler did in one call leaks into the next, and
//! a store that trapped or timed out is simply dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store,
};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::backstop::Watchdog;
use super::cache::Cache;
use super::capabilities::{self, CallBuilder, CallContext, CallTags};
use super::manifest::{Limits, Manifest};
use super::world::since_v0_1::{
    self, bindings, refund_bindings, GetMetadata, HandlePaid, HandleRefunded, RunTask,
};
use super::world::{
    outcome, Export, HandlerFailure, Instantiate, LoadError, Metadata, WORLD_VERSION,
};
use crate::config::PluginsConfig;

/// How often the epoch ticks; wall-time limits are counted in these.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Extra time past the epoch deadline before the host gives up on a call whose host
/// function is stuck (epochs only interrupt guest code).
const HOST_GRACE: Duration = Duration::from_secs(5);
/// Most output a handler may write to stdout/stderr per call before it is cut.
const MAX_STDIO_BYTES: usize = 16 * 1024;
/// Time allowed for the `metadata` call at load.
const METADATA_TIMEOUT: Duration = Duration::from_secs(2);

/// A compiled, validated handler, ready to instantiate.
pub struct Compiled {
    /// The component seen through the worlds of the version it was built for.
    pub(crate) pre: since_v0_1::Pre<HostState>,
    /// What it reported.
    pub metadata: Metadata,
}

impl Compiled {
    /// The build exports `handle-refunded`.
    pub fn handles_refunds(&self) -> bool {
        self.pre.refunds.is_some()
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
        capabilities::link(&mut linker, |s: &mut HostState| &mut s.caps)
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

    /// The context of a call of `plugin_type`'s handler (`version` names its build),
    /// going out through the shared HTTP client; to be completed per call.
    pub fn call_context(
        &self,
        manifest: Arc<Manifest>,
        plugin_type: &str,
        version: &str,
    ) -> CallBuilder {
        CallContext::builder(manifest, plugin_type, version, self.http.clone())
    }

    /// Compiles and validates a component: world version, imports, exports, metadata.
    /// Compilation runs on a blocking thread, off the async workers serving requests.
    /// With a `cache`, the compiled artefact is kept under the file's hash and this
    /// engine's configuration hash, so a restart does not recompile unchanged plugins.
    pub async fn compile(
        &self,
        plugin_type: &str,
        bytes: Vec<u8>,
        sha256: &str,
        cache: Option<&Cache>,
        manifest: &Arc<Manifest>,
        limits: Limits,
    ) -> Result<Compiled, LoadError> {
        let engine = self.engine.clone();
        let cache = cache.cloned();
        let (sha256, engine_hash) = (sha256.to_owned(), self.engine_hash());
        let component = tokio::task::spawn_blocking(move || match cache {
            Some(cache) => cache.compile_or_load(&engine, &bytes, &sha256, &engine_hash),
            None => super::cache::compile(&engine, &bytes),
        })
        .await
        .map_err(|e| LoadError::Compile(format!("compiler thread failed: {e}")))??;
        self.validate(plugin_type, component, manifest, limits)
            .await
    }

    /// True if `cache` holds an artefact of the file whose SHA-256 is `sha256` for this
    /// engine (it is still checked when loaded).
    pub fn is_cached(&self, cache: &Cache, sha256: &str) -> bool {
        cache.contains(sha256, &self.engine_hash())
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
        let linked = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Imports(format!("{e:#}")))?;
        let pre = since_v0_1::Pre::new(&self.engine, &component, linked)?;
        let ctx = CallContext::detached(
            manifest.clone(),
            CallTags::plugin(plugin_type),
            self.http.clone(),
        );
        let limits = Limits {
            timeout: METADATA_TIMEOUT.min(limits.timeout),
            ..limits
        };
        let metadata = match self.instantiate(&pre.handler, ctx, limits).await {
            Ok(prepared) => self.run(prepared, None, GetMetadata).await.1,
            Err((_, failure)) => Err(failure),
        };
        let metadata = metadata.map_err(|e| LoadError::Metadata(e.to_string()))?;
        if metadata.world_version != WORLD_VERSION {
            return Err(LoadError::WorldVersion {
                found: metadata.world_version,
            });
        }
        Ok(Compiled { pre, metadata })
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
        self.instantiate(&compiled.pre.handler, ctx, limits)
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
        // Timed from the call, not from instantiation, as a call on an instance made
        // ahead is.
        match self.instantiate(&compiled.pre.handler, ctx, limits).await {
            Ok(prepared) => {
                let export = HandlePaid(order, notification);
                self.export(Ok(prepared), None, export, Instant::now())
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
        let export = HandlePaid(order, notification);
        self.export(Ok(prepared), Some(ctx), export, Instant::now())
            .await
    }

    /// Runs `run-task`.
    pub async fn run_task(
        &self,
        compiled: &Compiled,
        ctx: CallContext,
        limits: Limits,
        task: bindings::Task,
    ) -> (Option<CallContext>, Result<(), HandlerFailure>) {
        let started = Instant::now();
        let made = self.instantiate(&compiled.pre.handler, ctx, limits).await;
        self.export(made, None, RunTask(task), started).await
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
        let Some(pre) = &compiled.pre.refunds else {
            let failure = HandlerFailure::Host("the handler does not export `refunds`".into());
            return (Some(ctx), Err(failure));
        };
        let started = Instant::now();
        let made = self.instantiate(pre, ctx, limits).await;
        self.export(made, None, HandleRefunded(order, refund), started)
            .await
    }

    /// Calls `export` on `instance` (with `ctx` swapped in when given) and records the
    /// call in the metrics, timed from `started`. An instance that could not be made is
    /// the call's failure.
    async fn export<I: Send + Sync, E: Export<HostState, I>>(
        &self,
        instance: Result<Prepared<I>, (CallContext, HandlerFailure)>,
        ctx: Option<CallContext>,
        export: E,
        started: Instant,
    ) -> (Option<CallContext>, Result<E::Output, HandlerFailure>) {
        let plugin = match (&ctx, &instance) {
            (Some(ctx), _) | (None, Err((ctx, _))) => ctx.tags.plugin.clone(),
            (None, Ok(prepared)) => prepared.store.data().caps.tags.plugin.clone(),
        };
        let (ctx, result) = match instance {
            Ok(prepared) => self.run(prepared, ctx, export).await,
            Err((ctx, failure)) => (Some(ctx), Err(failure)),
        };
        crate::metrics::handler_call(&plugin, E::NAME, outcome(&result), started.elapsed());
        (ctx, result)
    }

    /// A fresh store and instance: limits, epoch deadline, stdio capture, and a host-side
    /// backstop timeout. Gives the context back if instantiation fails.
    async fn instantiate<P: Instantiate<HostState>>(
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
            .within(backstop(limits), pre.instantiate(&mut store))
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
    async fn run<I: Send + Sync, E: Export<HostState, I>>(
        &self,
        prepared: Prepared<I>,
        ctx: Option<CallContext>,
        export: E,
    ) -> (Option<CallContext>, Result<E::Output, HandlerFailure>) {
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
            .within(backstop(limits), export.call(&handler, &mut store))
            .await;

        let result = match outcome {
            Err(_elapsed) => {
                // The future (and the store with its transaction) is gone.
                tracing::error!(timeout = ?limits.timeout, "handler call abandoned: a host function did not return");
                return (None, Err(HandlerFailure::Timeout(limits.timeout)));
            }
            Ok(Ok(answer)) => answer,
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
pub struct Prepared<I = bindings::Handler> {
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

//! `paynotify try`: runs a handler's `handle-paid` once against a throwaway SQLite database,
//! through the real runtime and capabilities, and reports what it did: the documents in its
//! granted collections afterwards, the tasks it queued and the lines it logged. A business
//! developer tests a handler this way without a payment provider.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use paynotify::config::parse_notify_key;
use paynotify::config::{DatabaseConfig, PluginsConfig};
use paynotify::plugins::bindings;
use paynotify::plugins::capabilities::DbAccess;
use paynotify::plugins::{Cache, HandlerFailure, Manifest, Metadata, Runtime};

use super::develop;

/// `paynotify try` arguments.
#[derive(Debug, clap::Args)]
pub struct TryArgs {
    /// The handler component (`{type}.wasm`); its type is the file name.
    pub wasm: PathBuf,
    /// The order as JSON: `{"user_id": "u1", "total_fee": 500, "custom": {...}}`; also
    /// `out_trade_no`, `type`, `provider`, `account`, `transaction_id` (defaults filled in).
    #[arg(long)]
    pub order: PathBuf,
    /// The notification as JSON (`transaction_id`, `amount`, `paid_at`, `fields`, ...);
    /// default: one that pays the order in full.
    #[arg(long)]
    pub notification: Option<PathBuf>,
    /// The manifest (grants, limits, `[config]`); default `{type}.toml` beside the `.wasm`,
    /// else in the project that built it (from the file's folder up to the one holding
    /// `Cargo.toml` or `package.json`). The report says which was used.
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// The merchant account's notify key for `crypto` (64 hex digits); default none.
    #[arg(long, value_name = "HEX")]
    pub notify_key: Option<String>,
}

/// Why `try` could not run the handler at all (a handler that fails is a report, not this).
#[derive(Debug, thiserror::Error)]
pub enum TryError {
    /// An input file is missing or malformed.
    #[error("{path}: {why}")]
    Input {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A bad option.
    #[error("{0}")]
    Option(String),
    /// The component does not load (see `paynotify plugins check`).
    #[error("{path}: {source}")]
    Load {
        /// The file.
        path: PathBuf,
        /// Why.
        source: paynotify::plugins::LoadError,
    },
    /// The throwaway database failed.
    #[error("throwaway database: {0}")]
    Store(#[from] paynotify::store::StoreError),
    /// The temporary directory could not be made.
    #[error("temporary directory: {0}")]
    Io(#[from] std::io::Error),
}

/// The order file: only `total_fee` is required.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OrderInput {
    out_trade_no: Option<String>,
    #[serde(rename = "type")]
    order_type: Option<String>,
    #[serde(default = "default_provider")]
    provider: String,
    #[serde(default = "default_account")]
    account: String,
    total_fee: i64,
    #[serde(default)]
    user_id: String,
    #[serde(default)]
    custom: Option<Value>,
    transaction_id: Option<String>,
}

/// The notification file; everything defaults to paying the order in full.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NotificationInput {
    id: Option<i64>,
    provider: Option<String>,
    account: Option<String>,
    transaction_id: Option<String>,
    amount: Option<i64>,
    paid_at: Option<String>,
    #[serde(default)]
    fields: BTreeMap<String, String>,
}

fn default_provider() -> String {
    "wechat-v2".into()
}

fn default_account() -> String {
    "default".into()
}

/// One line the handler logged.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LogLine {
    /// `trace` … `error`.
    pub level: String,
    /// The message.
    pub message: String,
    /// `key=value` fields, as the host logs them.
    pub fields: String,
}

/// A task the handler queued.
#[derive(Debug, Clone, Serialize)]
pub struct QueuedTask {
    /// Its id in the throwaway database.
    pub id: i64,
    /// Task name.
    pub name: String,
    /// JSON payload.
    pub payload: Value,
    /// Seconds from now until it would first run.
    pub delay_secs: i64,
}

/// What one `try` did.
#[derive(Debug, Clone, Serialize)]
pub struct TryReport {
    /// The component.
    pub file: String,
    /// The manifest it ran with; `None`: none found (nothing granted, default limits).
    pub manifest: Option<String>,
    /// Where the manifest was looked for, or why there is none, for people.
    #[serde(skip)]
    pub manifest_note: String,
    /// What it says about itself.
    pub metadata: Metadata,
    /// `handle-paid` returned `Ok` (the writes would commit with the payment).
    pub ok: bool,
    /// Its result (stored as the order's `handler_result`).
    pub result: Option<Value>,
    /// Its failure, as stored on the order: the payment and every write roll back.
    pub error: Option<Value>,
    /// Wall time of the call, in milliseconds (includes instantiation).
    pub elapsed_ms: f64,
    /// Documents in the granted collections after the call, by collection and id (on
    /// failure: what it had written before failing, all rolled back).
    pub documents: BTreeMap<String, BTreeMap<String, Value>>,
    /// Tasks queued (none on failure: they roll back too).
    pub tasks: Vec<QueuedTask>,
    /// Log lines, in order.
    pub logs: Vec<LogLine>,
}

/// Collects the `paynotify::plugin` log events of a `try` run.
#[derive(Debug, Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<LogLine>>>);

impl LogCapture {
    /// Takes the lines collected so far.
    pub fn take(&self) -> Vec<LogLine> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LogCapture {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        #[derive(Default)]
        struct Fields {
            message: String,
            fields: String,
            stream: Option<String>,
        }
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                match field.name() {
                    "message" => self.message = format!("{value:?}"),
                    "fields" => self.fields = format!("{value:?}"),
                    "stream" => self.stream = Some(format!("{value:?}")),
                    _ => {}
                }
            }
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "stream" {
                    self.stream = Some(value.to_owned());
                }
            }
        }
        let mut f = Fields::default();
        event.record(&mut f);
        // stdout/stderr lines are logged with a `stream` field instead of `fields`.
        if let Some(stream) = f.stream {
            f.fields = format!("stream={stream}");
        }
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(LogLine {
                level: event.metadata().level().as_str().to_ascii_lowercase(),
                message: f.message,
                fields: f.fields,
            });
    }
}

/// Logging for `try`: the handler's lines go to the report, the host's own warnings and
/// errors to stderr.
pub fn init_tracing(json: bool) -> LogCapture {
    use tracing_subscriber::filter::{filter_fn, EnvFilter};
    use tracing_subscriber::prelude::*;
    let capture = LogCapture::default();
    let host_filter = || EnvFilter::new("warn,paynotify::plugin=off");
    let registry = tracing_subscriber::registry().with(
        capture
            .clone()
            .with_filter(filter_fn(|m| m.target() == "paynotify::plugin")),
    );
    // The host's own lines as `serve` writes them: values escaped, colours on a terminal.
    if json {
        registry
            .with(paynotify::logging::json_layer().with_filter(host_filter()))
            .init();
    } else {
        registry
            .with(paynotify::logging::text_layer().with_filter(host_filter()))
            .init();
    }
    // `init` bridges the `log` crate with the subscriber's most verbose level, which the
    // capture's target filter makes `trace`: cranelift then built a `log` record for each
    // of its debug lines and the bridge turned every one into an event to be dropped
    // (~60 % of a compile's CPU, 4x `serve`'s compile time for a JS component). No
    // handler line comes through `log`, and the host's own lines shown are warnings.
    log::set_max_level(log::LevelFilter::Warn);
    capture
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, TryError> {
    let input = |why: String| TryError::Input {
        path: path.to_path_buf(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| input(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| input(e.to_string()))
}

/// Runs `handle-paid` of `args.wasm` once on a fresh SQLite database and reports what it
/// did; the compiled component is kept in `cache` (see [`develop::compiled_cache`]).
pub async fn run(
    plugins: &PluginsConfig,
    args: &TryArgs,
    logs: &LogCapture,
    cache: Option<&Cache>,
) -> Result<TryReport, TryError> {
    let found = develop::find_manifest(&args.wasm, args.manifest.as_deref()).map_err(|e| {
        TryError::Input {
            path: e.0,
            why: "no such file".into(),
        }
    })?;
    let plugin_type = found.plugin_type.clone();
    let order: OrderInput = read_json(&args.order)?;
    let notification: NotificationInput = match &args.notification {
        Some(p) => read_json(p)?,
        None => NotificationInput::default(),
    };
    let notify_key = match &args.notify_key {
        Some(hex) => Some(parse_notify_key(hex).ok_or_else(|| {
            TryError::Option("--notify-key: expected 64 hex digits (a 32-byte key)".into())
        })?),
        None => None,
    };
    let manifest = match &found.path {
        Some(path) => Manifest::load(path).map_err(|why| TryError::Input {
            path: path.clone(),
            why,
        })?,
        None => Manifest::default(),
    };
    let manifest = Arc::new(manifest);
    let load = |source| TryError::Load {
        path: args.wasm.clone(),
        source,
    };
    let limits = manifest
        .limits(plugins)
        .map_err(|e| load(paynotify::plugins::LoadError::Manifest(e)))?;
    let bytes = std::fs::read(&args.wasm).map_err(|e| TryError::Input {
        path: args.wasm.clone(),
        why: e.to_string(),
    })?;
    let sha256 = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    let runtime = Runtime::new(plugins).map_err(load)?;
    let size = bytes.len() as u64;
    let compiled = develop::say_slow_compile(
        &args.wasm,
        size,
        cache,
        runtime.compile(&plugin_type, bytes, &sha256, cache, &manifest, limits),
    )
    .await
    .map_err(load)?;

    let dir = develop::TempDir::new("try")?;
    let store = paynotify::store::connect(&DatabaseConfig {
        url: format!("sqlite://{}", dir.0.join("try.db").display()),
        ..DatabaseConfig::default()
    })
    .await?;

    let out_trade_no = order
        .out_trade_no
        .unwrap_or_else(|| format!("TRY-{plugin_type}-1"));
    let transaction_id = order
        .transaction_id
        .or(notification.transaction_id)
        .unwrap_or_else(|| "TRY-TX-1".into());
    let custom = match order.custom {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s,
        Some(v) => v.to_string(),
    };
    let wit_order = bindings::Order {
        out_trade_no: out_trade_no.clone(),
        type_: order.order_type.unwrap_or_else(|| plugin_type.clone()),
        provider: order.provider.clone(),
        account: order.account.clone(),
        total_fee: order.total_fee,
        user_id: order.user_id,
        custom,
        transaction_id: transaction_id.clone(),
    };
    let wit_notification = bindings::Notification {
        id: notification.id.unwrap_or(1),
        provider: notification.provider.unwrap_or(order.provider.clone()),
        account: notification.account.unwrap_or(order.account.clone()),
        out_trade_no: out_trade_no.clone(),
        transaction_id,
        amount: notification.amount.unwrap_or(order.total_fee),
        paid_at: notification.paid_at,
        fields: notification.fields.into_iter().collect(),
    };
    let ctx = runtime
        .call_context(manifest.clone(), &plugin_type, &compiled.metadata.version)
        .order(out_trade_no)
        .notification(wit_notification.id)
        .account(order.provider, order.account, notify_key)
        .db(DbAccess::Tx(store.begin().await?))
        .build();
    logs.take();
    let started = std::time::Instant::now();
    let (ctx, result) = runtime
        .handle_paid(&compiled, ctx, limits, wit_order, wit_notification)
        .await;
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;

    let mut documents = BTreeMap::new();
    let mut tasks = Vec::new();
    let mut result = result;
    if let Some(mut tx) = ctx.and_then(|c| c.db.into_tx()) {
        for collection in &manifest.collections {
            let docs = tx.doc_query(collection, &[], 1000).await.map_err(|e| {
                TryError::Store(paynotify::store::StoreError::Invalid(e.to_string()))
            })?;
            if docs.is_empty() {
                continue;
            }
            let by_id = docs
                .into_iter()
                .map(|(id, text)| {
                    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
                    (id, v)
                })
                .collect();
            documents.insert(collection.clone(), by_id);
        }
        if result.is_ok() {
            if let Err(e) = tx.commit().await {
                result = Err(HandlerFailure::Host(format!("commit failed: {e}")));
            } else {
                let now = paynotify::time::now_ms();
                tasks = store
                    .list_tasks(None, 500)
                    .await?
                    .into_iter()
                    .rev()
                    .map(|t| QueuedTask {
                        id: t.id,
                        payload: serde_json::from_str(&t.payload)
                            .unwrap_or(Value::String(t.payload)),
                        name: t.name,
                        delay_secs: ((t.run_at - now) as f64 / 1000.0).round().max(0.0) as i64,
                    })
                    .collect();
            }
        }
    }
    let (ok, result, error) = match result {
        Ok(v) => (true, Some(v), None),
        Err(f) => (false, None, Some(f.to_json())),
    };
    Ok(TryReport {
        file: args.wasm.display().to_string(),
        manifest: found.path.as_ref().map(|p| p.display().to_string()),
        manifest_note: found.describe(),
        metadata: compiled.metadata.clone(),
        ok,
        result,
        error,
        elapsed_ms,
        documents,
        tasks,
        logs: logs.take(),
    })
}

/// The report for people.
pub fn report_text(r: &TryReport) -> String {
    let mut s = format!(
        "{}: {} {} (paynotify:plugin@{})\n",
        r.file, r.metadata.name, r.metadata.version, r.metadata.world_version
    );
    s.push_str(&r.manifest_note);
    s.push('\n');
    match (&r.result, &r.error) {
        (Some(v), _) => s.push_str(&format!(
            "handle-paid: ok in {:.1} ms, result {v}\n",
            r.elapsed_ms
        )),
        (_, Some(e)) => s.push_str(&format!(
            "handle-paid: FAILED in {:.1} ms: {}\n  the payment and everything below would be rolled back; the provider retries\n",
            r.elapsed_ms,
            e["message"].as_str().unwrap_or("?")
        )),
        _ => {}
    }
    s.push_str("\ndocuments");
    if !r.ok {
        s.push_str(" (written before the failure, rolled back)");
    }
    s.push_str(":\n");
    if r.documents.is_empty() {
        s.push_str("  (none)\n");
    }
    for (collection, docs) in &r.documents {
        for (id, data) in docs {
            s.push_str(&format!("  {collection}/{id}  {data}\n"));
        }
    }
    s.push_str("\ntasks queued:\n");
    if r.tasks.is_empty() {
        s.push_str("  (none)\n");
    }
    for t in &r.tasks {
        s.push_str(&format!(
            "  #{} {}  payload {}  runs in {}s\n",
            t.id, t.name, t.payload, t.delay_secs
        ));
    }
    s.push_str("\nlogs:\n");
    if r.logs.is_empty() {
        s.push_str("  (none)\n");
    }
    for l in &r.logs {
        let fields = if l.fields.is_empty() {
            String::new()
        } else {
            format!("  [{}]", l.fields)
        };
        s.push_str(&format!(
            "  {:<5} {}{fields}\n",
            l.level.to_ascii_uppercase(),
            l.message
        ));
    }
    s
}

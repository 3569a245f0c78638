//! Prometheus metrics, served as text on `GET /metrics`.
//!
//! Code anywhere in the host records through the `metrics` facade (the functions below
//! name every series in one place); one [`PrometheusHandle`] per process renders them.
//! No listener of its own: the host's router serves the text.
//!
//! Series:
//!
//! | name | type | labels |
//! |---|---|---|
//! | `paynotify_notifications_total` | counter | `provider`, `verdict` |
//! | `paynotify_handler_duration_seconds` | histogram | `plugin`, `call` (`handle_paid`, `run_task`), `outcome` |
//! | `paynotify_plugin_loads_total` | counter | `plugin` |
//! | `paynotify_plugin_load_failures_total` | counter | `plugin`, `reason` (`signature`, `manifest`, `file`, `compile`, `world`, `metadata`, `revoked`) |
//! | `paynotify_plugin_cache_rejected_total` | counter | |
//! | `paynotify_plugins_loaded`, `paynotify_plugins_failing` | gauge | |
//! | `paynotify_tasks` | gauge | `status` (`pending`, `running`, `dead`) |
//! | `paynotify_orders_expired_total` | counter | |
//! | `paynotify_reconcile_total` | counter | `provider`, `outcome` (`paid`, `unpaid`, `error`, `skipped`) |
//! | `paynotify_provider_closes_total` | counter | `provider`, `outcome` (`closed`, `paid`, `error`) |
//! | `paynotify_order_watchers` | gauge | |
//! | `paynotify_event_streams_refused_total` | counter | `reason` (`global`, `per_address`) |
//! | `paynotify_uptime_seconds` | gauge | |
//! | `paynotify_notifications_unrouted_total` | counter | `reason` (`provider`, `account`) |
//! | `paynotify_notifications_throttled_total` | counter | `provider` |
//! | `paynotify_front_door_refused_total` | counter | `reason` (`host`, `origin`, `session`) |
//! | `paynotify_sqlite_wal_bytes` | gauge | |
//! | `paynotify_database_bytes` | gauge | |
//! | `paynotify_notifications_rejected_rows` | gauge | |
//! | `paynotify_notifications_pruned_total` | counter | |
//! | `paynotify_notify_timeouts_total` | counter | `provider` |
//! | `paynotify_notifications_redriven_total` | counter | `provider`, `verdict` |
//!
//! The gauges that describe the database (tasks) or the registry (plugins) are refreshed
//! when `/metrics` is scraped, so they cost nothing between scrapes; the database's size
//! and its rejected rows (a count over a range that a flood makes long) are refreshed by
//! the retention job instead (`crate::retention`), every minute.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

const NOTIFICATIONS: &str = "paynotify_notifications_total";
const HANDLER_DURATION: &str = "paynotify_handler_duration_seconds";
const PLUGIN_LOADS: &str = "paynotify_plugin_loads_total";
const PLUGIN_LOAD_FAILURES: &str = "paynotify_plugin_load_failures_total";
const PLUGIN_CACHE_REJECTED: &str = "paynotify_plugin_cache_rejected_total";
const PLUGINS_LOADED: &str = "paynotify_plugins_loaded";
const PLUGINS_FAILING: &str = "paynotify_plugins_failing";
const TASKS: &str = "paynotify_tasks";
const ORDERS_EXPIRED: &str = "paynotify_orders_expired_total";
const RECONCILE: &str = "paynotify_reconcile_total";
const BATCH_RERUNS: &str = "paynotify_settle_batch_reruns_total";
const PROVIDER_CLOSES: &str = "paynotify_provider_closes_total";
const PLACEMENTS: &str = "paynotify_payments_placed_total";
const REFUNDS_STARTED: &str = "paynotify_refunds_started_total";
const ORDER_WATCHERS: &str = "paynotify_order_watchers";
const EVENT_STREAMS_REFUSED: &str = "paynotify_event_streams_refused_total";
const UPTIME: &str = "paynotify_uptime_seconds";
const REFUNDS_UNAPPLIED: &str = "paynotify_refunds_unapplied_total";
const BREAKER_TRIPS: &str = "paynotify_handler_breaker_trips_total";
const BREAKER_FAST_FAILS: &str = "paynotify_handler_breaker_fast_failures_total";
const BREAKERS_OPEN: &str = "paynotify_handler_breakers_open";
const UNROUTED: &str = "paynotify_notifications_unrouted_total";
const THROTTLED: &str = "paynotify_notifications_throttled_total";
const FRONT_DOOR_REFUSED: &str = "paynotify_front_door_refused_total";
const SQLITE_WAL_BYTES: &str = "paynotify_sqlite_wal_bytes";
const DATABASE_BYTES: &str = "paynotify_database_bytes";
const REJECTED_ROWS: &str = "paynotify_notifications_rejected_rows";
const PRUNED: &str = "paynotify_notifications_pruned_total";
const NOTIFY_TIMEOUTS: &str = "paynotify_notify_timeouts_total";
const REDRIVEN: &str = "paynotify_notifications_redriven_total";
const SHADOW_RUNS: &str = "paynotify_shadow_runs_total";

/// Handler call durations, in seconds: from well under a millisecond (a small handler
/// on a warm instance) to the largest wall-time limit a manifest may ask for.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often histogram samples are folded into their buckets between scrapes, so that
/// an unscraped host does not keep every sample.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The task statuses the queue-depth gauge reports (always all of them, 0 included,
/// so an alert on `dead > 0` sees the series before the first dead task).
const OPEN_TASK_STATUSES: [&str; 3] = ["pending", "running", "dead"];

struct Installed {
    handle: PrometheusHandle,
    started: Instant,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// Installs the process-wide recorder the first time it is called; later calls (tests
/// start several hosts in one process) return the same handle.
pub fn install() -> &'static PrometheusHandle {
    &INSTALLED.get_or_init(build).handle
}

fn build() -> Installed {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(HANDLER_DURATION.into()), DURATION_BUCKETS)
        .unwrap_or_else(|e| {
            // Only an empty bucket list is refused; the list above is not empty.
            tracing::error!(error = %e, "metrics: histogram buckets refused; using summaries");
            PrometheusBuilder::new()
        });
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    if let Err(e) = metrics::set_global_recorder(recorder) {
        // Something embedding this library installed its own recorder first: what we
        // record goes there, and /metrics shows only what this handle sees.
        tracing::warn!(error = %e, "metrics: another recorder is installed; /metrics will be incomplete");
    }
    describe();
    let upkeep = handle.clone();
    let spawned = std::thread::Builder::new()
        .name("paynotify-metrics".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_EVERY);
            upkeep.run_upkeep();
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "metrics: no upkeep thread; histograms are folded at scrape time only");
    }
    Installed {
        handle,
        started: Instant::now(),
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        NOTIFICATIONS,
        "Notifications received on /notify, by provider and verdict."
    );
    describe_histogram!(
        HANDLER_DURATION,
        Unit::Seconds,
        "Handler calls (handle-paid, run-task), by plugin type and outcome, including the wait for a free instance."
    );
    describe_counter!(
        SHADOW_RUNS,
        "Shadow runs of a staged candidate build, by type and result (same, different, failed, skipped)."
    );
    describe_counter!(
        PLUGIN_LOADS,
        "Plugin files loaded (new or changed), by type."
    );
    describe_counter!(
        PLUGIN_LOAD_FAILURES,
        "Plugin files that failed to load, by type and reason (the previous version keeps serving)."
    );
    describe_counter!(
        PLUGIN_CACHE_REJECTED,
        "Compiled artefacts discarded because this host did not make them from that file (planted, edited or foreign)."
    );
    describe_gauge!(PLUGINS_LOADED, "Plugin types with a version serving.");
    describe_gauge!(
        PLUGINS_FAILING,
        "Plugin types whose file failed to load and that have no version serving."
    );
    describe_gauge!(
        TASKS,
        "Tasks in the queue by status (pending, running, dead), counted at scrape time."
    );
    describe_counter!(
        ORDERS_EXPIRED,
        "Unpaid orders closed by this process because their lifetime ran out."
    );
    describe_counter!(
        BATCH_RERUNS,
        "Settle batches run again with a savepoint per payment because a handler failed in the first run, which has none."
    );
    describe_counter!(
        RECONCILE,
        "Orders this process asked their provider about, by provider and outcome (paid, unpaid, error, skipped)."
    );
    describe_counter!(
        PLACEMENTS,
        "Payments this process placed at their provider (pay), by provider and outcome (placed, refused, error)."
    );
    describe_counter!(
        REFUNDS_STARTED,
        "Refunds this process sent to their provider, by provider and outcome (accepted, settled, refused, unknown)."
    );
    describe_counter!(
        PROVIDER_CLOSES,
        "Expired orders this process closed at their provider, by provider and outcome (closed, paid, error)."
    );
    describe_gauge!(
        ORDER_WATCHERS,
        "Open order-event streams (GET /api/orders/{out_trade_no}/events)."
    );
    describe_counter!(
        EVENT_STREAMS_REFUSED,
        "Order-event streams refused with 429 because too many were open, by reason: global (server.max_event_streams) or per_address (server.max_event_streams_per_address)."
    );
    describe_gauge!(UPTIME, Unit::Seconds, "Seconds since this process started.");
    describe_counter!(
        REFUNDS_UNAPPLIED,
        "Verified refunds that can never apply as they stand (closed order, over-refund, another transaction, a mismatched total), by provider: acknowledged, changed nothing, need attention."
    );
    describe_counter!(
        BREAKER_TRIPS,
        "Times a plugin type's payment calls timed out repeatedly and it was made to fail fast for a cool-down, by type."
    );
    describe_counter!(
        BREAKER_FAST_FAILS,
        "Payment and refund calls answered with the failure answer without running the handler, because its type was failing fast, by type."
    );
    describe_counter!(
        UNROUTED,
        "Requests to /notify for a provider or account not configured here, answered 404 and not stored, by reason (provider, account)."
    );
    describe_counter!(
        THROTTLED,
        "Notifications that failed verification from a client address over server.max_rejections_per_minute: answered 429, not stored, by provider."
    );
    describe_counter!(
        FRONT_DOOR_REFUSED,
        "Console and tokenless /api requests refused for a Host or Origin not among this server's names, or a console session made under another credential, by reason."
    );
    describe_counter!(
        NOTIFY_TIMEOUTS,
        "Notifications answered with the failure answer because they were not processed within server.notify_timeout_secs (the database did not answer in time), by provider. Each stays stored and is finished late or re-driven."
    );
    describe_counter!(
        REDRIVEN,
        "Notifications left `received` for over a minute that this process processed again, by provider and the verdict they reached."
    );
    describe_gauge!(
        SQLITE_WAL_BYTES,
        Unit::Bytes,
        "Size of the SQLite write-ahead log, checked every second; kept under 4 MiB by checkpoints (alert if it keeps growing: readers or a full disk stop them)."
    );
    describe_gauge!(
        BREAKERS_OPEN,
        "Plugin types failing fast right now (after repeated timeouts), counted at scrape time."
    );
    describe_gauge!(
        DATABASE_BYTES,
        Unit::Bytes,
        "Size of the database: SQLite's file plus its write-ahead log, or PostgreSQL's whole database; refreshed every minute by the retention job."
    );
    describe_gauge!(
        REJECTED_ROWS,
        "Notifications stored with verdict rejected; refreshed every minute by the retention job."
    );
    describe_counter!(
        PRUNED,
        "Notifications rejected without verifying that this process deleted after [retention] rejected_days."
    );
}

/// Sets the database size gauge, in bytes.
pub fn database_bytes(bytes: i64) {
    metrics::gauge!(DATABASE_BYTES).set(bytes as f64);
}

/// Sets the gauge of notifications stored `rejected`.
pub fn rejected_rows(rows: i64) {
    metrics::gauge!(REJECTED_ROWS).set(rows as f64);
}

/// Counts rejected notifications deleted by the retention job.
pub fn notifications_pruned(n: u64) {
    metrics::counter!(PRUNED).increment(n);
}

/// Counts a request to `/notify/{provider}[/{account}]` refused with 404 before anything
/// was stored: `reason` is `provider` (not configured here) or `account`.
pub fn unrouted(reason: &'static str) {
    metrics::counter!(UNROUTED, "reason" => reason).increment(1);
}

/// Counts a notification refused with 429, not stored: it failed verification and its
/// client address had used up `server.max_rejections_per_minute`.
pub fn throttled(provider: &str) {
    metrics::counter!(THROTTLED, "provider" => provider_label(provider)).increment(1);
}

/// Counts a console or tokenless `/api` request refused for its `Host` (`host`), its
/// `Origin` (`origin`), or a session made under another credential (`session`).
pub fn front_door_refused(reason: &'static str) {
    metrics::counter!(FRONT_DOOR_REFUSED, "reason" => reason).increment(1);
}

/// The size of SQLite's WAL file, as last seen (every second).
pub fn sqlite_wal_bytes(bytes: u64) {
    metrics::gauge!(SQLITE_WAL_BYTES).set(bytes as f64);
}

/// Counts a notification answered with the failure answer at its deadline
/// (`server.notify_timeout_secs`).
pub fn notify_timeout(provider: &str) {
    metrics::counter!(NOTIFY_TIMEOUTS, "provider" => provider_label(provider)).increment(1);
}

/// Counts a notification left `received` that the stuck-notification job processed
/// again, with the verdict it reached (`Verdict::as_str`: metrics names no domain type).
pub fn redriven(provider: &str, verdict: &'static str) {
    let provider = provider_label(provider);
    metrics::counter!(REDRIVEN, "provider" => provider, "verdict" => verdict).increment(1);
}

/// Counts a verified refund stored `refund_unapplied` (labelled like [`notification`]).
pub fn refund_unapplied(provider: &str) {
    metrics::counter!(REFUNDS_UNAPPLIED, "provider" => provider_label(provider)).increment(1);
}

/// Counts a plugin type starting to fail fast.
pub fn breaker_tripped(plugin: &str) {
    metrics::counter!(BREAKER_TRIPS, "plugin" => plugin.to_owned()).increment(1);
}

/// Counts a call refused because its type is failing fast.
pub fn breaker_fast_fail(plugin: &str) {
    metrics::counter!(BREAKER_FAST_FAILS, "plugin" => plugin.to_owned()).increment(1);
}

/// Counts one notification received on `/notify/{provider}`. The provider label is one
/// of the four known names or `unknown`: the path segment comes from the caller, and
/// label values from callers would let anyone grow the series without bound.
pub fn notification(provider: &str, verdict: &'static str) {
    let provider = provider_label(provider);
    metrics::counter!(NOTIFICATIONS, "provider" => provider, "verdict" => verdict).increment(1);
}

/// One of the four known provider names, or `unknown` for anything a caller named.
fn provider_label(provider: &str) -> &'static str {
    crate::config::ProviderKind::parse(provider)
        .map_or("unknown", crate::config::ProviderKind::as_str)
}

/// Records one handler call: `call` is `handle_paid` or `run_task`.
pub fn handler_call(plugin: &str, call: &'static str, outcome: &'static str, took: Duration) {
    metrics::histogram!(
        HANDLER_DURATION,
        "plugin" => plugin.to_owned(),
        "call" => call,
        "outcome" => outcome
    )
    .record(took.as_secs_f64());
}

/// Counts a plugin file loaded.
pub fn plugin_loaded(plugin: &str) {
    metrics::counter!(PLUGIN_LOADS, "plugin" => plugin.to_owned()).increment(1);
}

/// Counts a plugin file that failed to load.
pub fn plugin_load_failed(plugin: &str, reason: &'static str) {
    metrics::counter!(PLUGIN_LOAD_FAILURES, "plugin" => plugin.to_owned(), "reason" => reason)
        .increment(1);
}

/// Counts a compiled artefact discarded because its MAC did not verify.
pub fn plugin_cache_rejected() {
    metrics::counter!(PLUGIN_CACHE_REJECTED).increment(1);
}

/// Counts one shadow run of `plugin`'s candidate: `result` is `same`, `different`,
/// `failed` or `skipped` (the shadow worker was too far behind).
pub fn shadow_run(plugin: &str, result: &'static str) {
    metrics::counter!(SHADOW_RUNS, "plugin" => plugin.to_owned(), "result" => result).increment(1);
}

/// Counts a settle batch run a second time, with savepoints, after a handler failed.
pub fn batch_rerun() {
    metrics::counter!(BATCH_RERUNS).increment(1);
}

/// Counts orders closed by the expiry job.
pub fn orders_expired(n: usize) {
    metrics::counter!(ORDERS_EXPIRED).increment(n as u64);
}

/// Counts one order reconciled with its provider: `outcome` is `paid`, `unpaid`,
/// `error` or `skipped`.
pub fn reconciled(provider: &str, outcome: &'static str) {
    let provider = provider_label(provider);
    metrics::counter!(RECONCILE, "provider" => provider, "outcome" => outcome).increment(1);
}

/// Counts one attempt to close an expired order at its provider: `outcome` is `closed`,
/// `paid` (the provider refused: it is paid) or `error` (retried on a later sweep).
pub fn provider_close(provider: &str, outcome: &'static str) {
    let provider = provider_label(provider);
    metrics::counter!(PROVIDER_CLOSES, "provider" => provider, "outcome" => outcome).increment(1);
}

/// Counts one attempt to place a payment: `outcome` is `placed`, `refused` (a verified
/// refusal) or `error` (no answer, or one that did not verify).
pub fn placement(provider: &str, outcome: &'static str) {
    let provider = provider_label(provider);
    metrics::counter!(PLACEMENTS, "provider" => provider, "outcome" => outcome).increment(1);
}

/// Counts one refund sent: `outcome` is `accepted`, `settled` (Alipay's final answer),
/// `refused` or `unknown` (no answer: it may have gone through).
pub fn refund_started(provider: &str, outcome: &'static str) {
    let provider = provider_label(provider);
    metrics::counter!(REFUNDS_STARTED, "provider" => provider, "outcome" => outcome).increment(1);
}

/// Counts an order-event stream refused because too many were open: `reason` is
/// `global` or `per_address`.
pub fn event_stream_refused(reason: &'static str) {
    metrics::counter!(EVENT_STREAMS_REFUSED, "reason" => reason).increment(1);
}

/// Counts an open order-event stream for as long as it lives.
pub struct WatcherGuard(());

impl WatcherGuard {
    /// A stream opened.
    pub fn new() -> WatcherGuard {
        metrics::gauge!(ORDER_WATCHERS).increment(1.0);
        WatcherGuard(())
    }
}

impl Default for WatcherGuard {
    fn default() -> Self {
        WatcherGuard::new()
    }
}

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        metrics::gauge!(ORDER_WATCHERS).decrement(1.0);
    }
}

/// Sets the task-queue depth gauges from one grouped count of open tasks by status.
pub fn open_tasks(counts: &[(String, i64)]) {
    for status in OPEN_TASK_STATUSES {
        let n = counts
            .iter()
            .find(|(s, _)| s == status)
            .map_or(0, |(_, n)| *n);
        metrics::gauge!(TASKS, "status" => status).set(n as f64);
    }
}

/// Sets the plugin gauges: handlers loaded, failing to load, and breakers open.
pub fn plugin_states(loaded: usize, failing: usize, breakers_open: usize) {
    metrics::gauge!(PLUGINS_LOADED).set(loaded as f64);
    metrics::gauge!(PLUGINS_FAILING).set(failing as f64);
    metrics::gauge!(BREAKERS_OPEN).set(breakers_open as f64);
}

/// The Prometheus text of this process, with uptime refreshed. The caller refreshes the
/// other scrape-time gauges first ([`open_tasks`], [`plugin_states`]).
pub fn render() -> String {
    let installed = INSTALLED.get_or_init(build);
    metrics::gauge!(UPTIME).set(installed.started.elapsed().as_secs_f64());
    installed.handle.render()
}

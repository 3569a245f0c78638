//! Shadow runs: a candidate build staged beside the serving one (`{type}.next.wasm`) runs
//! on the same payments and refunds, and its outcome and writes are compared with what
//! the serving build did.
//!
//! A run happens after the payment's transaction committed, on a worker of its own, on a
//! view of the documents that can never commit ([`Overlay`]): the documents the serving
//! call touched read as it first saw them, its generated ids and task ids are handed out
//! again in the same order, and nothing the candidate writes or enqueues is applied. So a
//! shadow never changes the provider's answer, the committed state, the tasks, or the
//! serving handler's limits and latency; a candidate that fails, traps, loops or runs out
//! of memory costs its own limits on this worker, and is counted as failed. Calls waiting
//! for the worker are bounded: beyond [`QUEUE`], runs are skipped (and counted), never
//! waited for. `[plugins] shadow_sample` is the share of calls shadowed.
//!
//! Why not a savepoint in the payment transaction: the candidate would run while the
//! payment holds its locks (on SQLite the one writer), so every payment would wait for
//! both builds, and a looping candidate for its whole time limit.

mod compare;
mod report;

use std::sync::Arc;

use crate::plugins::capabilities::{DbAccess, Overlay, Recording};
use crate::plugins::{bindings, refund_bindings, HandlerFailure, Plugin, Registry};
use crate::store::Store;
pub use compare::Compared;
pub use report::{Report, KEEP_DIFFERENCES};

/// Calls waiting for the shadow worker at most; more are skipped.
pub const QUEUE: usize = 256;

/// The handler call a candidate repeats.
#[derive(Clone)]
pub enum Call {
    /// `handle-paid`.
    Paid {
        /// The order as the serving build got it.
        order: bindings::Order,
        /// The notification as the serving build got it.
        notification: bindings::Notification,
    },
    /// `handle-refunded`.
    Refunded {
        /// The order as the serving build got it.
        order: bindings::Order,
        /// The refund as the serving build got it.
        refund: refund_bindings::Refund,
    },
}

impl Call {
    /// `paid` or `refunded`, as stored.
    pub fn kind(&self) -> &'static str {
        match self {
            Call::Paid { .. } => "paid",
            Call::Refunded { .. } => "refunded",
        }
    }
}

/// A serving call that succeeded and committed, with what it read and wrote.
pub struct Served {
    /// Its type.
    pub plugin_type: String,
    /// The serving build's id.
    pub build: String,
    /// The order.
    pub out_trade_no: String,
    /// The notification it handled.
    pub notification_id: i64,
    /// The refund it handled.
    pub out_refund_no: Option<String>,
    /// The merchant account (provider, name) and its notify key, for `crypto`.
    pub account: (String, String, Option<[u8; 32]>),
    /// The call, to repeat.
    pub call: Call,
    /// What it read and wrote.
    pub recording: Recording,
    /// Its outcome.
    pub outcome: serde_json::Value,
}

/// A shadow run to make once the serving call's transaction commits.
#[derive(Clone)]
pub struct Pending {
    /// The candidate build.
    pub candidate: Arc<Plugin>,
    /// The serving call.
    pub served: Arc<Served>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("candidate", &self.candidate.build_id())
            .field("order", &self.served.out_trade_no)
            .finish()
    }
}

/// A shadow run to make.
type Job = Pending;

/// Runs candidates beside serving builds.
pub struct Shadows {
    plugins: Arc<Registry>,
    sample: f64,
    queue: tokio::sync::mpsc::Sender<Job>,
    report: Arc<Report>,
}

impl Shadows {
    /// Starts the shadow worker and its report's flushing (needs a tokio runtime).
    pub fn start(plugins: Arc<Registry>, store: Arc<dyn Store>, sample: f64) -> Arc<Shadows> {
        let (queue, jobs) = tokio::sync::mpsc::channel(QUEUE);
        let report = Report::start(store.clone());
        let worker = Worker {
            plugins: plugins.clone(),
            store,
            report: report.clone(),
        };
        tokio::spawn(worker.run(jobs));
        Arc::new(Shadows {
            plugins,
            sample,
            queue,
            report,
        })
    }

    /// The candidate to shadow a call of `plugin_type` with: the type's staged build, if
    /// there is one and the sample picks this call.
    pub fn pick(&self, plugin_type: &str) -> Option<Arc<Plugin>> {
        let candidate = self.plugins.candidate(plugin_type)?;
        (self.sample >= 1.0 || rand::random::<f64>() < self.sample).then_some(candidate)
    }

    /// Queues a shadow run; skipped (and counted) when the worker is that far behind.
    /// Call it only once the serving call's transaction committed.
    pub fn submit(&self, run: Pending) {
        let plugin_type = run.served.plugin_type.clone();
        if self.queue.try_send(run).is_err() {
            crate::metrics::shadow_run(&plugin_type, "skipped");
        }
    }

    /// Counts not yet written to the database, written now.
    pub async fn flush(&self) {
        self.report.flush().await;
    }
}

/// Runs queued shadow runs, one at a time.
struct Worker {
    plugins: Arc<Registry>,
    store: Arc<dyn Store>,
    report: Arc<Report>,
}

impl Worker {
    async fn run(self, mut jobs: tokio::sync::mpsc::Receiver<Job>) {
        while let Some(job) = jobs.recv().await {
            let compared = self.shadow(&job).await;
            self.report.add(&job.candidate, &job.served, compared).await;
        }
    }

    /// One shadow run, compared.
    async fn shadow(&self, job: &Job) -> Compared {
        let (candidate, served) = (&job.candidate, &job.served);
        if let Err(failure) = candidate.breaker.admit() {
            return compare::failed(served, &failure);
        }
        let (provider, account, notify_key) = served.account.clone();
        let overlay = Overlay::new(self.store.clone(), &served.recording);
        let ctx = self
            .plugins
            .runtime()
            .call_context(
                candidate.manifest.clone(),
                &format!("{}.next", served.plugin_type),
                &candidate.metadata.version,
            )
            .order(served.out_trade_no.clone())
            .notification(served.notification_id)
            .account(provider, account, notify_key)
            .db(DbAccess::Shadow(Box::new(overlay)))
            .build();
        let runtime = self.plugins.runtime();
        let limits = candidate.payment_limits;
        let (ctx, result) = match served.call.clone() {
            Call::Paid {
                order,
                notification,
            } => {
                runtime
                    .handle_paid(&candidate.compiled, ctx, limits, order, notification)
                    .await
            }
            Call::Refunded { order, refund } if candidate.compiled.handles_refunds() => {
                runtime
                    .handle_refunded(&candidate.compiled, ctx, limits, order, refund)
                    .await
            }
            Call::Refunded { .. } => (
                Some(ctx),
                Err(HandlerFailure::Host(
                    "the candidate does not handle refunds (no `refunds` export)".into(),
                )),
            ),
        };
        candidate.breaker.record(&result);
        let writes = match ctx.map(|c| c.db) {
            Some(DbAccess::Shadow(view)) => view.into_writes(),
            _ => Vec::new(),
        };
        match result {
            Ok(outcome) => compare::compare(served, &outcome, &writes),
            Err(failure) => compare::failed(served, &failure),
        }
    }
}

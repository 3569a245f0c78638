//! Processing one notification (SPEC §5):
//!
//! 1. store it as received (committed before anything else: nothing received is lost);
//! 2. verify it with its provider;
//! 3. find its order, 4. check amount and account;
//! 5. in ONE transaction: mark the order paid only if unpaid, run the type's handler with
//!    its writes and tasks in the same transaction, record the result; commit;
//! 6. answer the provider in its own convention.
//!
//! Several notifications share one transaction (and one commit). A batch first runs
//! without savepoints; if any handler fails it is rolled back whole and run again with
//! a savepoint per notification, so each failure rolls back only its own work.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

mod batch;
pub mod refund;

use crate::plugins::bindings;
use crate::plugins::capabilities::{CallContext, CallTags, DbAccess};
use crate::plugins::runtime::Prepared;
use crate::plugins::{HandlerFailure, Plugin, Registry};
use crate::providers::{
    Answer, Inbound, Notice, NoticeKind, Payment, ProviderKind, Providers, Refund,
};
use refund::Refunder;
use crate::store::{
    status, NewNotification, NotificationRecord, NotificationVerdict, Order, PaidOrder, Store,
    StoreError, Tx, Verdict,
};

/// A notification as the HTTP layer received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Provider named in the URL.
    pub provider: String,
    /// Account named in the URL.
    pub account: Option<String>,
    /// Client address.
    pub remote_addr: Option<String>,
    /// Headers, names lower-case, credentials removed.
    pub headers: Vec<(String, String)>,
    /// Body as received, cut at the size limit.
    pub body: Vec<u8>,
    /// The body was over the limit.
    pub truncated: bool,
}

/// The result of processing: what was recorded and what to answer.
#[derive(Debug, Clone)]
pub struct Processed {
    /// The stored notification, when storing it succeeded.
    pub notification_id: Option<i64>,
    /// Where it ended up.
    pub verdict: Verdict,
    /// Why, for rejections and failures (stored and logged; the answer says less).
    pub reason: Option<String>,
    /// Rejected because it failed verification (signature, account, format, size), as
    /// opposed to a verified notification refused later: the kind one client address may
    /// send only so many of (see `http/notify.rs`).
    pub unverified: bool,
    /// The provider's answer.
    pub answer: Answer,
}

/// Notify keys by (provider, account), for the handlers' `crypto` capability.
pub type NotifyKeys = HashMap<(String, String), [u8; 32]>;

/// The notification pipeline.
pub struct Pipeline {
    store: Arc<dyn Store>,
    providers: Arc<Providers>,
    max_body_bytes: usize,
    /// Raw notifications waiting to be stored (step 1), batched into shared commits.
    raw: mpsc::Sender<RawJob>,
    /// Verified payments waiting to be settled (step 5), batched into shared transactions.
    settle: mpsc::Sender<SettleJob>,
    /// Applies verified refunds, each in a transaction of its own.
    refunder: Refunder,
}

/// What settling a verified payment decided.
struct Settled {
    verdict: Verdict,
    reason: Option<String>,
}

impl Settled {
    fn new(verdict: Verdict, reason: impl Into<Option<String>>) -> Settled {
        Settled {
            verdict,
            reason: reason.into(),
        }
    }
}

/// Step 1 for one notification: store it, then tell the caller its id.
struct RawJob {
    notification: Arc<NewNotification>,
    reply: oneshot::Sender<Result<i64, String>>,
}

/// Step 5 for one verified payment.
struct SettleJob {
    id: i64,
    provider: ProviderKind,
    notice: Notice,
    payment: Payment,
    reply: oneshot::Sender<Result<Settled, String>>,
}

/// How notifications share commits.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Most notifications in one transaction; 1 gives each its own.
    pub max: usize,
    /// Loops settling batches at once (SQLite has one writer: 1; PostgreSQL: several).
    pub settlers: usize,
}

/// Whether each payment of a batch runs inside a savepoint of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isolation {
    /// No savepoints: one statement less per payment, but a failing handler's writes
    /// cannot be undone alone, so its failure aborts the batch ([`Abort::HandlerFailed`]).
    Optimistic,
    /// A savepoint per payment: a failing handler is rolled back to it and recorded.
    Savepoints,
}

/// Why a batch transaction was given up (rolled back, nothing committed).
#[derive(Debug, thiserror::Error)]
enum Abort {
    /// The database failed, or asked for the transaction to be run again.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A handler failed in an [`Isolation::Optimistic`] batch: the failure of notification
    /// `id`, which the rerun records without running the handler again.
    #[error("a handler failed in a batch without savepoints")]
    HandlerFailed {
        /// The notification whose handler failed.
        id: i64,
        /// How.
        failure: HandlerFailure,
    },
}

/// Handler failures of an earlier attempt at the same batch, by notification id: the
/// rerun records them as they were instead of running those handlers again (a handler
/// that looped to its limit would otherwise hold the transaction for its limit twice).
/// Recording a failure is always safe: the order stays unpaid and the provider retries.
type KnownFailures = HashMap<i64, HandlerFailure>;

impl From<Abort> for StoreError {
    fn from(abort: Abort) -> StoreError {
        match abort {
            Abort::Store(e) => e,
            // Only an optimistic attempt aborts this way, and it is always run again with
            // savepoints; should one reach a caller, it is a failure to retry.
            Abort::HandlerFailed { .. } => StoreError::Transient(abort.to_string()),
        }
    }
}

/// Steps 3–5: everything that happens inside the payment transaction.
struct Settler {
    plugins: Arc<Registry>,
    notify_keys: NotifyKeys,
}

impl Pipeline {
    /// A pipeline over these parts. Starts its commit loops (needs a tokio runtime).
    pub fn new(
        store: Arc<dyn Store>,
        providers: Arc<Providers>,
        plugins: Arc<Registry>,
        notify_keys: NotifyKeys,
        max_body_bytes: usize,
        batching: Batching,
    ) -> Pipeline {
        let raw_store = store.clone();
        let raw = batch::spawn(1, batching.max, move |jobs: Vec<RawJob>| {
            let store = raw_store.clone();
            async move { store_raw(store.as_ref(), jobs).await }
        });
        let refunder = Refunder::new(plugins.clone(), notify_keys.clone());
        let settler = Arc::new(Settler {
            plugins,
            notify_keys,
        });
        let settle_store = store.clone();
        let settle = batch::spawn(
            batching.settlers,
            batching.max,
            move |jobs: Vec<SettleJob>| {
                let (settler, store) = (settler.clone(), settle_store.clone());
                async move { settler.settle_batch(store.as_ref(), jobs).await }
            },
        );
        Pipeline {
            store,
            providers,
            max_body_bytes,
            raw,
            settle,
            refunder,
        }
    }

    /// Processes a notification from the wire, end to end.
    pub async fn receive(&self, r: Received) -> Processed {
        let span = tracing::info_span!(
            "notification",
            provider = %r.provider,
            id = tracing::field::Empty,
            order = tracing::field::Empty,
            verdict = tracing::field::Empty
        );
        async move {
            let received_at = crate::store::now_ms();
            // Shared with the storage loop, so the body is not copied on its way there.
            let n = Arc::new(NewNotification {
                received_at,
                provider: r.provider,
                account: r.account,
                remote_addr: r.remote_addr,
                headers: r.headers,
                body: r.body,
                truncated: r.truncated,
            });
            let (reply, answer) = oneshot::channel();
            let job = RawJob {
                notification: n.clone(),
                reply,
            };
            let queued = self.raw.send(job).await;
            let stored = match queued {
                Ok(()) => answer
                    .await
                    .unwrap_or_else(|_| Err("storage loop stopped".into())),
                Err(_) => Err("storage loop stopped".into()),
            };
            let id = match stored {
                Ok(id) => id,
                Err(e) => {
                    // Not stored, so not accepted: the provider must retry.
                    tracing::error!(error = %e, "cannot store notification");
                    return self.answer(
                        &n.provider,
                        None,
                        Verdict::Failed,
                        Some(format!("storage unavailable: {e}")),
                        500,
                    );
                }
            };
            tracing::Span::current().record("id", id);
            self.process(
                id,
                &n.provider,
                n.account.as_deref(),
                &n.headers,
                &n.body,
                n.truncated,
                received_at,
            )
            .await
        }
        .instrument(span)
        .await
    }

    /// Runs a stored notification through the pipeline again. Exactly-once still holds:
    /// a notification whose order is already paid changes nothing. Ops entry points go
    /// through [`crate::replay::replay`], which also re-verifies stored query answers.
    pub async fn replay(&self, record: &NotificationRecord) -> Processed {
        let span = tracing::info_span!("replay", provider = %record.provider, id = record.id, order = tracing::field::Empty, verdict = tracing::field::Empty);
        self.process(
            record.id,
            &record.provider,
            record.account.as_deref(),
            &record.headers,
            &record.body,
            record.truncated,
            record.received_at,
        )
        .instrument(span)
        .await
    }

    /// Steps 3–6 for a verified payment stored as notification `id`: where a verified
    /// notification goes, and a payment verified elsewhere too (a provider's signed
    /// answer to an order query), through the same settle loop, so the order is paid
    /// once whoever (this, a notification, another process) gets there first.
    pub async fn settle_verified(
        &self,
        id: i64,
        provider: ProviderKind,
        notice: Notice,
    ) -> Processed {
        let provider_name = provider.as_str();
        let payment = match &notice.kind {
            NoticeKind::Paid(p) => p.clone(),
            // An order query answers about the payment; it never reports a refund.
            NoticeKind::Refunded(_) => {
                return self
                    .finish_outside(
                        id,
                        provider_name,
                        Verdict::Rejected,
                        "a query answer reported a refund, not a payment".to_owned(),
                        Some(notice.out_trade_no.as_str()).filter(|s| !s.is_empty()),
                        Some(&notice.account),
                        200,
                    )
                    .await;
            }
            NoticeKind::NotPaid { state } => {
                let order = Some(notice.out_trade_no.as_str()).filter(|s| !s.is_empty());
                let reason = format!("not a payment: {state}");
                return self
                    .finish_outside(
                        id,
                        provider_name,
                        Verdict::Ignored,
                        reason,
                        order,
                        Some(&notice.account),
                        200,
                    )
                    .await;
            }
        };
        let (reply, answer) = oneshot::channel();
        let job = SettleJob {
            id,
            provider,
            notice: notice.clone(),
            payment,
            reply,
        };
        let settled = match self.settle.send(job).await {
            Ok(()) => answer
                .await
                .unwrap_or_else(|_| Err("settle loop stopped".into())),
            Err(_) => Err("settle loop stopped".into()),
        };
        match settled {
            Ok(s) => {
                tracing::Span::current().record("verdict", s.verdict.as_str());
                tracing::info!(
                    reason = s.reason.as_deref().unwrap_or(""),
                    "notification processed"
                );
                if s.verdict == Verdict::Paid && s.reason.is_none() {
                    // Paid just now (not a replay of the payer): refunds that came first.
                    self.apply_waiting_refunds(&notice.out_trade_no).await;
                }
                self.answer(provider_name, Some(id), s.verdict, s.reason, 200)
            }
            Err(e) => {
                // Rolled back: the order is as it was. Record why, outside the lost
                // transaction, and make the provider retry.
                let reason = format!("transaction failed: {e}");
                tracing::error!(error = %reason, "notification not settled");
                self.finish_outside(
                    id,
                    provider_name,
                    Verdict::Failed,
                    reason,
                    Some(notice.out_trade_no.as_str()),
                    Some(&notice.account),
                    500,
                )
                .await
            }
        }
    }

    /// Applies the refunds of `out_trade_no` that arrived before its payment (stored
    /// `refund_pending`), oldest first, through the refund path as a replay of each: the
    /// provider was told to retry them, but it may give up, and until it retries the order
    /// would stand paid and credited for money already sent back. A refund that still
    /// cannot apply keeps its verdict; the provider's own retry remains.
    ///
    /// Boxed, with `Send` spelled out: a replay settles payments, which come back here, and
    /// the compiler cannot see through that cycle on its own.
    fn apply_waiting_refunds<'a>(
        &'a self,
        out_trade_no: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let filter = crate::store::NotificationFilter {
                out_trade_no: Some(out_trade_no.to_owned()),
                verdict: Some(Verdict::RefundPending),
                limit: 100,
                ..Default::default()
            };
            let waiting = match self.store.list_notifications(&filter).await {
                Ok(w) => w,
                Err(e) => {
                    // The provider still retries each of them (they got the failure answer).
                    tracing::error!(error = %e, "cannot look for refunds waiting for this payment");
                    return;
                }
            };
            for record in waiting.iter().rev() {
                let r = self.replay(record).await;
                tracing::info!(
                    refund_notification = record.id,
                    verdict = r.verdict.as_str(),
                    reason = r.reason.as_deref().unwrap_or(""),
                    "refund that arrived before the payment, applied after it"
                );
            }
        })
    }

    /// Records a notification that failed verification outside the notification path
    /// (a provider answer that did not verify) as rejected, under the order it was about.
    pub async fn reject_stored(
        &self,
        id: i64,
        provider: ProviderKind,
        reason: String,
        out_trade_no: Option<&str>,
    ) -> Processed {
        self.finish_outside(
            id,
            provider.as_str(),
            Verdict::Rejected,
            reason,
            out_trade_no,
            None,
            200,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn process(
        &self,
        id: i64,
        provider_name: &str,
        url_account: Option<&str>,
        headers: &[(String, String)],
        body: &[u8],
        truncated: bool,
        received_at: i64,
    ) -> Processed {
        let Some(provider) = ProviderKind::parse(provider_name).and_then(|k| self.providers.get(k))
        else {
            let reason = format!("provider `{provider_name}` is not configured");
            return self.finish_unverified(id, provider_name, reason, 404).await;
        };
        if truncated {
            let reason = format!("body is over {} bytes", self.max_body_bytes);
            return self.finish_unverified(id, provider_name, reason, 413).await;
        }
        let inbound = Inbound {
            account: url_account,
            headers,
            body,
            received_at,
        };
        let notice = match provider.verify(&inbound) {
            Ok(n) => n,
            Err(rejection) => {
                tracing::warn!(reason = %rejection, "notification rejected");
                return self
                    .finish_unverified(id, provider_name, rejection.to_string(), 200)
                    .await;
            }
        };
        tracing::Span::current().record("order", notice.out_trade_no.as_str());
        if let NoticeKind::Refunded(refund) = &notice.kind {
            return self
                .refund(id, provider_name, provider.kind(), &notice, refund)
                .await;
        }
        self.settle_verified(id, provider.kind(), notice).await
    }

    /// The refund path (see [`crate::refunds`]): applies a verified refund and answers.
    async fn refund(
        &self,
        id: i64,
        provider_name: &str,
        provider: ProviderKind,
        notice: &Notice,
        refund: &Refund,
    ) -> Processed {
        let order = Some(notice.out_trade_no.as_str());
        let account = Some(notice.account.as_str());
        match self
            .refunder
            .apply(self.store.as_ref(), id, provider, notice, refund)
            .await
        {
            Ok(r) if r.verdict == Verdict::Failed => {
                let reason = r.reason.unwrap_or_default();
                self.finish_outside(id, provider_name, r.verdict, reason, order, account, 200)
                    .await
            }
            Ok(r) => {
                tracing::Span::current().record("verdict", r.verdict.as_str());
                if r.verdict == Verdict::RefundUnapplied {
                    crate::metrics::refund_unapplied(provider_name);
                }
                tracing::info!(
                    reason = r.reason.as_deref().unwrap_or(""),
                    "refund notification processed"
                );
                self.answer(provider_name, Some(id), r.verdict, r.reason, 200)
            }
            Err(e) => {
                let reason = format!("transaction failed: {e}");
                tracing::error!(error = %reason, "refund not applied");
                self.finish_outside(
                    id,
                    provider_name,
                    Verdict::Failed,
                    reason,
                    order,
                    account,
                    500,
                )
                .await
            }
        }
    }

    /// Records a verdict when no transaction is open, then answers.
    #[allow(clippy::too_many_arguments)]
    async fn finish_outside(
        &self,
        id: i64,
        provider: &str,
        verdict: Verdict,
        reason: String,
        out_trade_no: Option<&str>,
        account: Option<&str>,
        http_status: u16,
    ) -> Processed {
        tracing::Span::current().record("verdict", verdict.as_str());
        if let Err(e) = self
            .store
            .finish_notification(id, verdict, Some(&reason), out_trade_no, account)
            .await
        {
            // The notification stays `received` and visible for replay.
            tracing::error!(error = %e, "cannot record verdict");
        }
        self.answer(provider, Some(id), verdict, Some(reason), http_status)
    }

    /// Records that notification `id` failed verification (verdict `rejected`, no order:
    /// nothing in it can be believed), then answers with the provider's failure answer.
    async fn finish_unverified(
        &self,
        id: i64,
        provider: &str,
        reason: String,
        http_status: u16,
    ) -> Processed {
        let mut p = self
            .finish_outside(
                id,
                provider,
                Verdict::Rejected,
                reason,
                None,
                None,
                http_status,
            )
            .await;
        p.unverified = true;
        p.answer = self.failure_answer(provider, FAILED_VERIFICATION, http_status);
        p
    }

    /// The provider's failure answer carrying `message`, with `http_status` unless it is
    /// 200 (then the provider's own failure status); 404 for a provider not configured.
    fn failure_answer(&self, provider: &str, message: &str, http_status: u16) -> Answer {
        match ProviderKind::parse(provider).and_then(|k| self.providers.get(k)) {
            Some(p) => {
                let mut a = p.failure(message);
                if http_status != 200 {
                    a.status = http_status;
                }
                a
            }
            None => Answer {
                status: 404,
                content_type: Some("text/plain; charset=utf-8"),
                body: b"unknown or unconfigured provider".to_vec(),
            },
        }
    }

    fn answer(
        &self,
        provider: &str,
        id: Option<i64>,
        verdict: Verdict,
        reason: Option<String>,
        http_status: u16,
    ) -> Processed {
        let accepted = matches!(
            verdict,
            Verdict::Paid
                | Verdict::Duplicate
                | Verdict::Ignored
                | Verdict::PaidAfterClose
                | Verdict::Refunded
                | Verdict::RefundUnapplied
        );
        let answer = match ProviderKind::parse(provider).and_then(|k| self.providers.get(k)) {
            Some(p) if accepted => p.success(),
            _ => self.failure_answer(provider, public_message(verdict), http_status),
        };
        Processed {
            notification_id: id,
            verdict,
            reason,
            unverified: false,
            answer,
        }
    }
}

/// What a failure answer says about a notification that failed verification, whatever
/// the reason: an unknown account, a bad signature and a malformed body look alike to the
/// caller, so probing teaches nothing. The reason is in the stored record and the log.
pub const FAILED_VERIFICATION: &str = "verification failed";

/// What a failure answer says for `verdict`: a category, never the detailed reason.
fn public_message(verdict: Verdict) -> &'static str {
    match verdict {
        // Verified, but about an order unknown here or not matching it (amount, account).
        Verdict::Rejected => "order not found or not matching",
        Verdict::RefundPending => "order not paid yet; retry later",
        _ => "temporary failure; retry later",
    }
}

impl Settler {
    /// Settles a batch of payments in one transaction and answers every job after the
    /// shared commit. The batch runs without savepoints first: handlers rarely fail, and
    /// a savepoint is a database round trip per payment on the one serial path of the
    /// commit loop. If a handler does fail, that attempt is rolled back whole and the
    /// batch runs again with a savepoint per payment (the other handlers run twice; only
    /// the second run commits). If the batch fails as a whole (a statement error, a lost
    /// transaction, a failed commit), each job is retried alone, so one bad notification
    /// cannot keep failing the others.
    async fn settle_batch(&self, store: &dyn Store, jobs: Vec<SettleJob>) {
        // A lone payment gets its savepoint at once: running its failing handler twice
        // would cost more than the savepoint saves.
        let first = if jobs.len() > 1 {
            Isolation::Optimistic
        } else {
            Isolation::Savepoints
        };
        let mut known = KnownFailures::new();
        let mut attempt = self.try_batch(store, &jobs, first, &known).await;
        if let Err(Abort::HandlerFailed { id, failure }) = attempt {
            tracing::debug!(
                size = jobs.len(),
                "a handler failed; running the batch again with a savepoint per payment"
            );
            crate::metrics::batch_rerun();
            known.insert(id, failure);
            attempt = self
                .try_batch(store, &jobs, Isolation::Savepoints, &known)
                .await;
        }
        let failure = match attempt.map_err(StoreError::from) {
            Ok(results) => {
                for (job, r) in jobs.into_iter().zip(results) {
                    let _ = job.reply.send(Ok(r));
                }
                return;
            }
            Err(e) => e,
        };
        if jobs.len() == 1 && !failure.is_transient() {
            for job in jobs {
                let _ = job.reply.send(Err(failure.to_string()));
            }
            return;
        }
        if jobs.len() > 1 {
            tracing::warn!(error = %failure, size = jobs.len(), "batch failed; settling its notifications one by one");
        }
        for job in jobs {
            let r = self.settle_alone(store, &job).await;
            let _ = job.reply.send(r);
        }
    }

    /// One job in a transaction of its own, run again (a few times, with a growing
    /// pause) while the database reports a deadlock or serialization failure. Every
    /// attempt rolled back completely, so running it again is safe.
    async fn settle_alone(&self, store: &dyn Store, job: &SettleJob) -> Result<Settled, String> {
        const ATTEMPTS: u32 = 5;
        for attempt in 1..=ATTEMPTS {
            let tried = self
                .try_batch(
                    store,
                    std::slice::from_ref(job),
                    Isolation::Savepoints,
                    &KnownFailures::new(),
                )
                .await;
            match tried.map_err(StoreError::from) {
                Ok(mut settled) => return Ok(settled.remove(0)),
                Err(e) if e.is_transient() && attempt < ATTEMPTS => {
                    let pause = 5 * u64::from(attempt) + rand::random::<u64>() % 20;
                    tracing::warn!(error = %e, attempt, "transient database failure; running the transaction again");
                    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Err("gave up after repeated transient database failures".into())
    }

    /// One transaction for the whole batch, with a constant number of statements per
    /// batch plus, per payment, the handler's own statements (and a savepoint, with
    /// [`Isolation::Savepoints`]):
    ///
    /// - every order of the batch is read and locked by one statement;
    /// - checks (unknown order, account, amount, status) are decided in memory, the map
    ///   updated as payments land so a second notification for an order paid earlier in
    ///   the same batch is a duplicate;
    /// - with savepoints, each handler runs inside one (rolled back alone if it fails;
    ///   left open when it succeeds — a `RELEASE` would only cost a round trip before the
    ///   commit); without, a failing handler aborts the attempt;
    /// - one statement marks every paid order with its handler's result, one records
    ///   every verdict (one statement for both on PostgreSQL), then the single commit.
    async fn try_batch(
        &self,
        store: &dyn Store,
        jobs: &[SettleJob],
        isolation: Isolation,
        known: &KnownFailures,
    ) -> Result<Vec<Settled>, Abort> {
        let mut tx = store.begin().await?;
        let numbers: Vec<&str> = jobs
            .iter()
            .map(|j| j.notice.out_trade_no.as_str())
            .collect();
        let mut orders: HashMap<String, Order> = tx
            .lock_orders(&numbers)
            .await?
            .into_iter()
            .map(|o| (o.out_trade_no.clone(), o))
            .collect();
        // Handlers run in user order: handlers mostly write their user's documents, so
        // concurrent batches (PostgreSQL) take those row locks in one order and queue on
        // each other instead of deadlocking (a deadlock costs a second of detection and
        // a retry one by one). The sort is stable: copies of one notification keep their
        // order.
        let user = |i: usize| {
            orders
                .get(&jobs[i].notice.out_trade_no)
                .map(|o| o.user_id.clone())
        };
        let mut seq: Vec<(Option<String>, usize)> = (0..jobs.len()).map(|i| (user(i), i)).collect();
        seq.sort_by(|a, b| a.0.cmp(&b.0));
        let seq: Vec<usize> = seq.into_iter().map(|(_, i)| i).collect();
        let mut results: Vec<Option<Settled>> = (0..jobs.len()).map(|_| None).collect();
        let mut paid = Vec::new();
        let mut ahead = Ahead::new();
        for (p, &i) in seq.iter().enumerate() {
            let job = &jobs[i];
            self.prepare_ahead(jobs, &seq[p..], &orders, &mut ahead);
            let prepared = ahead.remove(&i).flatten();
            let order = orders.get_mut(&job.notice.out_trade_no);
            let settled = match check_order(order.as_deref(), job) {
                Checked::Done(s) => s,
                Checked::Pay => {
                    let Some(order) = order else {
                        return Err(
                            StoreError::Invalid("order vanished from the batch".into()).into()
                        );
                    };
                    let known = known.get(&job.id);
                    let (back, result) = self.pay(tx, job, order, prepared, isolation, known).await;
                    tx = back.ok_or_else(|| {
                        StoreError::Invalid(
                            "the transaction was abandoned during a handler call".into(),
                        )
                    })?;
                    match result? {
                        Paid::Yes(row) => {
                            // Later notifications in this batch see the order as paid.
                            order.status = status::PAID;
                            order.transaction_id = Some(row.transaction_id.clone());
                            order.paid_notification_id = Some(row.notification_id);
                            paid.push(*row);
                            Settled::new(Verdict::Paid, None)
                        }
                        Paid::No(s) => s,
                    }
                }
            };
            results[i] = Some(settled);
        }
        let results: Vec<Settled> = results.into_iter().flatten().collect();
        if results.len() != jobs.len() {
            return Err(
                StoreError::Invalid("a notification of the batch was skipped".into()).into(),
            );
        }
        let verdicts: Vec<NotificationVerdict<'_>> = jobs
            .iter()
            .zip(&results)
            .map(|(job, s)| NotificationVerdict {
                id: job.id,
                verdict: s.verdict,
                reason: s.reason.as_deref(),
                out_trade_no: Some(job.notice.out_trade_no.as_str()).filter(|n| !n.is_empty()),
                account: Some(job.notice.account.as_str()),
            })
            .collect();
        let marked = tx.settle(&paid, &verdicts).await?;
        drop(verdicts);
        if marked != paid.len() as u64 {
            // The rows are locked (or the database is), so this cannot happen; if it
            // ever does, nothing is committed and each notification is tried alone.
            return Err(StoreError::Invalid(format!(
                "marked {marked} of {} orders paid",
                paid.len()
            ))
            .into());
        }
        tx.commit().await?;
        Ok(results)
    }

    /// Starts making handler instances for the next few payments of the batch on other
    /// workers, so that instantiation (tens of microseconds) happens while the current
    /// handler runs instead of inside the transaction's critical path. Only orders that
    /// look payable get one; an instance that turns out not to be needed is dropped.
    fn prepare_ahead(
        &self,
        jobs: &[SettleJob],
        upcoming: &[usize],
        orders: &HashMap<String, Order>,
        ahead: &mut Ahead,
    ) {
        for &k in upcoming.iter().take(PREPARE_AHEAD) {
            if ahead.contains_key(&k) {
                continue;
            }
            let job = &jobs[k];
            let plugin = orders
                .get(&job.notice.out_trade_no)
                .filter(|o| o.status == status::UNPAID)
                .and_then(|o| self.plugins.get(&o.order_type));
            let task = plugin.map(|plugin| {
                let runtime = self.plugins.runtime().clone();
                let tags = CallTags {
                    plugin: plugin.plugin_type.clone(),
                    version: plugin.metadata.version.clone(),
                    out_trade_no: Some(job.notice.out_trade_no.clone()),
                    notification_id: Some(job.id),
                    task_id: None,
                };
                tokio::spawn(async move {
                    let made = runtime
                        .prepare(
                            &plugin.compiled,
                            plugin.manifest.clone(),
                            tags,
                            plugin.payment_limits,
                        )
                        .await;
                    (plugin, made)
                })
            });
            ahead.insert(k, task);
        }
    }

    /// Step 5 for an unpaid order whose checks passed: run its handler (inside a
    /// savepoint with [`Isolation::Savepoints`]; on the instance made ahead for it, if
    /// there is one). A success comes back as the row [`Tx::settle_paid`] will write; a
    /// failure is rolled back to the savepoint and recorded on the order at once, or,
    /// without a savepoint, aborts the batch.
    async fn pay(
        &self,
        mut tx: Box<dyn Tx>,
        job: &SettleJob,
        order: &Order,
        prepared: Option<PrepareTask>,
        isolation: Isolation,
        known: Option<&HandlerFailure>,
    ) -> (Option<Box<dyn Tx>>, Result<Paid, Abort>) {
        let (id, notice, payment) = (job.id, &job.notice, &job.payment);
        // An instance made before a hot reload runs the build it was made from: it was
        // already in flight when the new one arrived. A handler that is not run again
        // needs none.
        let prepared = match prepared {
            Some(task) if known.is_none() => task.await.ok(),
            _ => None,
        };
        let (plugin, prepared) = match prepared {
            Some((plugin, made)) => (Some(plugin), Some(made)),
            None => (self.plugins.get(&order.order_type), None),
        };
        let Some(plugin) = plugin else {
            let failure = HandlerFailure::NotLoaded(order.order_type.clone());
            let r = tx
                .set_handler_result(&order.out_trade_no, "failed", &failure.to_json(), None)
                .await;
            return (
                Some(tx),
                r.map(|()| Paid::No(Settled::new(Verdict::Failed, failure.to_string())))
                    .map_err(Abort::from),
            );
        };
        let build = plugin.build_id();
        let not_run = match known {
            Some(failure) => Some(failure.clone()),
            None => plugin.breaker.admit().err(),
        };
        if let Some(failure) = not_run {
            if matches!(failure, HandlerFailure::FailingFast { .. }) {
                crate::metrics::breaker_fast_fail(&plugin.plugin_type);
            }
            tracing::warn!(plugin = %plugin.plugin_type, error = %failure, "handler not run; payment not applied, provider will retry");
            // Nothing ran, so there is nothing to roll back to a savepoint.
            let r = tx
                .set_handler_result(
                    &order.out_trade_no,
                    "failed",
                    &failure.to_json(),
                    Some(&build),
                )
                .await;
            return (
                Some(tx),
                r.map(|()| Paid::No(Settled::new(Verdict::Failed, failure.to_string())))
                    .map_err(Abort::from),
            );
        }
        let savepoint = format!("n{id}");
        if isolation == Isolation::Savepoints {
            if let Err(e) = tx.savepoint(&savepoint).await {
                return (Some(tx), Err(e.into()));
            }
        }
        let ctx = order_call_context(&self.plugins, &self.notify_keys, &plugin, order, id, tx);
        let wit_order = wit_order(order, &payment.transaction_id);
        let wit_notification = bindings::Notification {
            id,
            provider: order.provider.clone(),
            account: notice.account.clone(),
            out_trade_no: notice.out_trade_no.clone(),
            transaction_id: payment.transaction_id.clone(),
            amount: payment.amount,
            paid_at: payment.paid_at.map(crate::store::iso_time),
            fields: notice
                .fields
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        let started = std::time::Instant::now();
        let runtime = self.plugins.runtime();
        let (ctx, result) = match prepared {
            Some(Ok(instance)) => {
                runtime
                    .handle_paid_prepared(instance, ctx, wit_order, wit_notification)
                    .await
            }
            // Making the instance failed (a trap in an initialiser, a full pool): the
            // handler failed, as it would have inside the call.
            Some(Err(failure)) => (Some(ctx), Err(failure)),
            None => {
                runtime
                    .handle_paid(
                        &plugin.compiled,
                        ctx,
                        plugin.payment_limits,
                        wit_order,
                        wit_notification,
                    )
                    .await
            }
        };
        let elapsed = started.elapsed();
        if plugin.breaker.record(&result) {
            crate::metrics::breaker_tripped(&plugin.plugin_type);
            tracing::error!(plugin = %plugin.plugin_type, "payment calls keep timing out: the type fails fast for a cool-down");
        }
        let Some(mut tx) = ctx.and_then(|c| c.db.into_tx()) else {
            return (
                None,
                Err(StoreError::Invalid("transaction lost during the handler call".into()).into()),
            );
        };
        match result {
            Ok(outcome) => {
                // Debug, not info: "notification processed" is the one info line per notification.
                tracing::debug!(plugin = %plugin.plugin_type, elapsed_us = elapsed.as_micros() as u64, "handler succeeded");
                let row = PaidOrder {
                    out_trade_no: order.out_trade_no.clone(),
                    transaction_id: payment.transaction_id.clone(),
                    pay_date: payment.paid_at.unwrap_or_else(crate::store::now_ms),
                    notification_id: id,
                    original_data: serde_json::to_string(&notice.fields).unwrap_or_default(),
                    handler_result: outcome.to_string(),
                    handler_version: build,
                };
                (Some(tx), Ok(Paid::Yes(Box::new(row))))
            }
            Err(HandlerFailure::Transient(why)) => {
                // Not the handler's doing: fail the transaction so it is run again.
                (Some(tx), Err(StoreError::Transient(why).into()))
            }
            Err(failure) if isolation == Isolation::Optimistic => {
                // Its writes are mixed with the others': the batch runs again with
                // savepoints, and the failure is recorded (and logged) by that run.
                (Some(tx), Err(Abort::HandlerFailed { id, failure }))
            }
            Err(failure) => {
                tracing::warn!(plugin = %plugin.plugin_type, error = %failure, "handler failed; payment rolled back, provider will retry");
                let r = async {
                    tx.rollback_to(&savepoint).await?;
                    tx.set_handler_result(
                        &order.out_trade_no,
                        "failed",
                        &failure.to_json(),
                        Some(&build),
                    )
                    .await
                }
                .await;
                (
                    Some(tx),
                    r.map(|()| Paid::No(Settled::new(Verdict::Failed, failure.to_string())))
                        .map_err(Abort::from),
                )
            }
        }
    }
}

/// Steps 3–4, decided on the locked order: it exists, belongs to the verified account,
/// the amount is right, and it is still unpaid.
fn check_order(order: Option<&Order>, job: &SettleJob) -> Checked {
    let (id, notice, payment) = (job.id, &job.notice, &job.payment);
    let Some(order) = order else {
        return Checked::Done(Settled::new(
            Verdict::Rejected,
            format!("unknown order `{}`", notice.out_trade_no),
        ));
    };
    if order.provider != job.provider.as_str() || order.account != notice.account {
        return Checked::Done(Settled::new(
            Verdict::Rejected,
            format!(
                "order belongs to {} account `{}`, notification was verified for {} account `{}`",
                order.provider, order.account, job.provider, notice.account
            ),
        ));
    }
    if payment.amount != order.total_fee {
        return Checked::Done(Settled::new(
            Verdict::Rejected,
            format!(
                "amount mismatch: paid {} fen, order total is {} fen",
                payment.amount, order.total_fee
            ),
        ));
    }
    match order.status {
        status::UNPAID => Checked::Pay,
        status::CLOSED => {
            tracing::warn!(transaction = %payment.transaction_id, "payment for a closed order: refund or reopen it");
            Checked::Done(Settled::new(
                Verdict::PaidAfterClose,
                format!(
                    "order was closed; paid by transaction {}",
                    payment.transaction_id
                ),
            ))
        }
        // A replay of the very notification that paid the order stays its payer.
        _ if order.paid_notification_id == Some(id) => Checked::Done(Settled::new(
            Verdict::Paid,
            "replayed; order was already paid by it".to_owned(),
        )),
        _ if order.transaction_id.as_deref() == Some(payment.transaction_id.as_str()) => {
            Checked::Done(Settled::new(Verdict::Duplicate, None))
        }
        _ => {
            tracing::warn!(
                paid_by = order.transaction_id.as_deref().unwrap_or(""),
                transaction = %payment.transaction_id,
                "order paid twice by different transactions: refund one"
            );
            Checked::Done(Settled::new(
                Verdict::Duplicate,
                format!(
                    "order already paid by transaction {}; this notification reports transaction {} (paid twice?)",
                    order.transaction_id.as_deref().unwrap_or("?"),
                    payment.transaction_id
                ),
            ))
        }
    }
}

/// The context of a handler call about `order` (for notification `id`), its database
/// operations going into `tx`: the plugin's grants, log tags, the account's notify key.
pub(crate) fn order_call_context(
    plugins: &Registry,
    notify_keys: &NotifyKeys,
    plugin: &Plugin,
    order: &Order,
    id: i64,
    tx: Box<dyn Tx>,
) -> CallContext {
    CallContext {
        manifest: plugin.manifest.clone(),
        tags: CallTags {
            plugin: plugin.plugin_type.clone(),
            version: plugin.metadata.version.clone(),
            out_trade_no: Some(order.out_trade_no.clone()),
            notification_id: Some(id),
            task_id: None,
        },
        db: DbAccess::Tx(tx),
        notify_key: notify_keys
            .get(&(order.provider.clone(), order.account.clone()))
            .copied(),
        provider: Some(order.provider.clone()),
        account: Some(order.account.clone()),
        http: plugins.runtime().http_client(),
        poisoned: None,
    }
}

/// The order as a handler sees it, paid by `transaction_id`.
pub(crate) fn wit_order(order: &Order, transaction_id: &str) -> bindings::Order {
    bindings::Order {
        out_trade_no: order.out_trade_no.clone(),
        type_: order.order_type.clone(),
        provider: order.provider.clone(),
        account: order.account.clone(),
        total_fee: order.total_fee,
        user_id: order.user_id.clone(),
        custom: order.custom.to_string(),
        transaction_id: transaction_id.to_owned(),
    }
}

/// How many payments ahead of the running one get their handler instance made.
const PREPARE_AHEAD: usize = 2;

/// A handler instance being made ahead, with the plugin build it is made from.
type PrepareTask = tokio::task::JoinHandle<(Arc<Plugin>, Result<Prepared, HandlerFailure>)>;

/// Instances being made ahead, by job index (`None`: the job needs none).
type Ahead = HashMap<usize, Option<PrepareTask>>;

enum Checked {
    /// Nothing to pay: the verdict is decided.
    Done(Settled),
    /// An unpaid order whose checks passed.
    Pay,
}

/// What running the handler for a payment came to.
enum Paid {
    /// It succeeded: the order row to mark paid at the end of the batch.
    Yes(Box<PaidOrder>),
    /// It failed (rolled back) or no handler is loaded: the verdict.
    No(Settled),
}

/// Step 1 for a batch: one transaction, one commit. If the batch cannot be stored, each
/// notification is tried alone, so one bad row does not refuse the others.
async fn store_raw(store: &dyn Store, jobs: Vec<RawJob>) {
    let rows: Vec<&NewNotification> = jobs.iter().map(|j| j.notification.as_ref()).collect();
    match store.insert_notifications(&rows).await {
        Ok(ids) => {
            for (job, id) in jobs.into_iter().zip(ids) {
                let _ = job.reply.send(Ok(id));
            }
        }
        Err(e) if jobs.len() == 1 => {
            for job in jobs {
                let _ = job.reply.send(Err(e.to_string()));
            }
        }
        Err(_) => {
            for job in jobs {
                let r = store
                    .insert_notifications(&[job.notification.as_ref()])
                    .await;
                let _ = job
                    .reply
                    .send(r.map(|ids| ids[0]).map_err(|e| e.to_string()));
            }
        }
    }
}

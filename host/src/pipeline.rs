//! Processing one notification (SPEC §5):
//!
//! 1. store it as received (committed before anything else: nothing received is lost);
//! 2. verify it with its provider;
//! 3. find its order, 4. check amount and account;
//! 5. in ONE transaction: mark the order paid only if unpaid, run the type's handler with
//!    its writes and tasks in the same transaction, record the result; commit;
//! 6. answer the provider in its own convention.
//!
//! The settle step works inside a savepoint of a transaction it is handed, so several
//! notifications can share one transaction (and one commit), each rolling back only its
//! own work when its handler fails.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::batch;

use crate::plugins::bindings;
use crate::plugins::capabilities::{CallContext, CallTags, DbAccess};
use crate::plugins::{HandlerFailure, Registry};
use crate::providers::{
    Answer, Inbound, Notice, NoticeKind, Payment, ProviderKind, Providers, Refund,
};
use crate::refunds::Refunder;
use crate::store::{
    status, MarkPaid, NewNotification, NotificationRecord, Order, Store, StoreError, Tx, Verdict,
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
    /// Why, for rejections and failures.
    pub reason: Option<String>,
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

    /// Runs a stored notification through the pipeline again (ops replay). Exactly-once
    /// still holds: a notification whose order is already paid changes nothing.
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
            return self
                .finish_outside(
                    id,
                    provider_name,
                    Verdict::Rejected,
                    reason,
                    None,
                    None,
                    404,
                )
                .await;
        };
        if truncated {
            let reason = format!("body is over {} bytes", self.max_body_bytes);
            return self
                .finish_outside(
                    id,
                    provider_name,
                    Verdict::Rejected,
                    reason,
                    None,
                    None,
                    413,
                )
                .await;
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
                    .finish_outside(
                        id,
                        provider_name,
                        Verdict::Rejected,
                        rejection.to_string(),
                        None,
                        None,
                        200,
                    )
                    .await;
            }
        };
        tracing::Span::current().record("order", notice.out_trade_no.as_str());
        let payment = match &notice.kind {
            NoticeKind::Paid(p) => p,
            NoticeKind::Refunded(refund) => {
                return self
                    .refund(id, provider_name, provider.kind(), &notice, refund)
                    .await
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
            provider: provider.kind(),
            notice: notice.clone(),
            payment: payment.clone(),
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
                self.answer(provider_name, Some(id), s.verdict, s.reason, 200)
            }
            Err(e) => {
                // Rolled back: the order is as it was. Record why, outside the lost
                // transaction, and make the provider retry.
                let reason = format!("transaction failed: {e}");
                tracing::error!(error = %reason, "notification not settled");
                let order = Some(notice.out_trade_no.as_str());
                self.finish_outside(
                    id,
                    provider_name,
                    Verdict::Failed,
                    reason,
                    order,
                    Some(&notice.account),
                    500,
                )
                .await
            }
        }
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

    fn answer(
        &self,
        provider: &str,
        id: Option<i64>,
        verdict: Verdict,
        reason: Option<String>,
        http_status: u16,
    ) -> Processed {
        let provider = ProviderKind::parse(provider).and_then(|k| self.providers.get(k));
        let accepted = matches!(
            verdict,
            Verdict::Paid
                | Verdict::Duplicate
                | Verdict::Ignored
                | Verdict::PaidAfterClose
                | Verdict::Refunded
                | Verdict::RefundUnapplied
        );
        let answer = match provider {
            Some(p) if accepted => p.success(),
            Some(p) => {
                let mut a = p.failure(reason.as_deref().unwrap_or("not accepted"));
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
        };
        Processed {
            notification_id: id,
            verdict,
            reason,
            answer,
        }
    }
}

impl Settler {
    /// Settles a batch of payments in one transaction, each inside its own savepoint,
    /// and answers every job after the shared commit. If the batch fails as a whole (a
    /// statement error, a lost transaction, a failed commit), each job is retried alone,
    /// so one bad notification cannot keep failing the others.
    async fn settle_batch(&self, store: &dyn Store, mut jobs: Vec<SettleJob>) {
        // The same lock order in every batch: concurrent batches on PostgreSQL queue on
        // order rows rather than deadlock on them (handlers' own rows can still cross;
        // that is what the transient retry below is for).
        jobs.sort_by(|a, b| a.notice.out_trade_no.cmp(&b.notice.out_trade_no));
        let failure = match self.try_batch(store, &jobs).await {
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
            match self.try_batch(store, std::slice::from_ref(job)).await {
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

    async fn try_batch(
        &self,
        store: &dyn Store,
        jobs: &[SettleJob],
    ) -> Result<Vec<Settled>, StoreError> {
        let mut tx = store.begin().await?;
        let mut results = Vec::with_capacity(jobs.len());
        for job in jobs {
            match self
                .settle(tx, job.id, job.provider, &job.notice, &job.payment)
                .await
            {
                (Some(t), Ok(s)) => {
                    tx = t;
                    results.push(s);
                }
                (_, Ok(_)) => {
                    return Err(StoreError::Invalid(
                        "the transaction was abandoned during a handler call".into(),
                    ))
                }
                (_, Err(e)) => return Err(e),
            }
        }
        tx.commit().await?;
        Ok(results)
    }

    /// Steps 3–5 inside `tx`, within a savepoint of their own. Returns the transaction
    /// unless it was lost with an abandoned handler call.
    async fn settle(
        &self,
        mut tx: Box<dyn Tx>,
        id: i64,
        provider: ProviderKind,
        notice: &Notice,
        payment: &Payment,
    ) -> (Option<Box<dyn Tx>>, Result<Settled, StoreError>) {
        let checked = match self
            .check_order(tx.as_mut(), id, notice, payment, provider)
            .await
        {
            Ok(c) => c,
            Err(e) => return (Some(tx), Err(e)),
        };
        let (order, settled) = match checked {
            Checked::Done(s) => (None, s),
            Checked::Pay(order) => {
                let (back, result) = self.pay(tx, id, &order, notice, payment).await;
                let Some(t) = back else {
                    return (None, result);
                };
                tx = t;
                match result {
                    Ok(s) => (Some(*order), s),
                    Err(e) => return (Some(tx), Err(e)),
                }
            }
        };
        let out_trade_no = order
            .as_ref()
            .map(|o| o.out_trade_no.as_str())
            .unwrap_or(&notice.out_trade_no);
        let recorded = tx
            .finish_notification(
                id,
                settled.verdict,
                settled.reason.as_deref(),
                Some(out_trade_no).filter(|s| !s.is_empty()),
                Some(&notice.account),
            )
            .await;
        (Some(tx), recorded.map(|()| settled))
    }

    /// Steps 3–4: the order exists, belongs to this account, and the amount is right.
    async fn check_order(
        &self,
        tx: &mut dyn Tx,
        id: i64,
        notice: &Notice,
        payment: &Payment,
        provider: ProviderKind,
    ) -> Result<Checked, StoreError> {
        let Some(order) = tx.lock_order(&notice.out_trade_no).await? else {
            return Ok(Checked::Done(Settled::new(
                Verdict::Rejected,
                format!("unknown order `{}`", notice.out_trade_no),
            )));
        };
        if order.provider != provider.as_str() || order.account != notice.account {
            return Ok(Checked::Done(Settled::new(
                Verdict::Rejected,
                format!(
                    "order belongs to {} account `{}`, notification was verified for {} account `{}`",
                    order.provider, order.account, provider, notice.account
                ),
            )));
        }
        if payment.amount != order.total_fee {
            return Ok(Checked::Done(Settled::new(
                Verdict::Rejected,
                format!(
                    "amount mismatch: paid {} fen, order total is {} fen",
                    payment.amount, order.total_fee
                ),
            )));
        }
        Ok(match order.status {
            status::UNPAID => Checked::Pay(Box::new(order)),
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
        })
    }

    /// Step 5 for an unpaid order: mark paid and run the handler inside a savepoint.
    async fn pay(
        &self,
        mut tx: Box<dyn Tx>,
        id: i64,
        order: &Order,
        notice: &Notice,
        payment: &Payment,
    ) -> (Option<Box<dyn Tx>>, Result<Settled, StoreError>) {
        let Some(plugin) = self.plugins.get(&order.order_type) else {
            let failure = HandlerFailure::NotLoaded(order.order_type.clone());
            let r = tx
                .set_handler_result(&order.out_trade_no, "failed", &failure.to_json(), None)
                .await;
            return (
                Some(tx),
                r.map(|()| Settled::new(Verdict::Failed, failure.to_string())),
            );
        };
        let savepoint = format!("n{id}");
        if let Err(e) = tx.savepoint(&savepoint).await {
            return (Some(tx), Err(e));
        }
        let original_data = serde_json::to_value(&notice.fields).unwrap_or_default();
        let marked = tx
            .mark_paid(&MarkPaid {
                out_trade_no: &order.out_trade_no,
                transaction_id: &payment.transaction_id,
                pay_date: payment.paid_at.unwrap_or_else(crate::store::now_ms),
                notification_id: id,
                original_data: &original_data,
            })
            .await;
        match marked {
            Ok(true) => {}
            // The row lock makes this unreachable; if it ever happens, nothing ran twice.
            Ok(false) => {
                let r = tx.release(&savepoint).await;
                return (Some(tx), r.map(|()| Settled::new(Verdict::Duplicate, None)));
            }
            Err(e) => return (Some(tx), Err(e)),
        }

        let ctx = CallContext {
            manifest: plugin.manifest.clone(),
            tags: CallTags {
                plugin: plugin.plugin_type.clone(),
                version: plugin.metadata.version.clone(),
                out_trade_no: Some(order.out_trade_no.clone()),
                notification_id: Some(id),
                task_id: None,
            },
            db: DbAccess::Tx(tx),
            notify_key: self
                .notify_keys
                .get(&(order.provider.clone(), order.account.clone()))
                .copied(),
            provider: Some(order.provider.clone()),
            account: Some(order.account.clone()),
            http: self.plugins.runtime().http_client(),
            poisoned: None,
        };
        let wit_order = bindings::Order {
            out_trade_no: order.out_trade_no.clone(),
            type_: order.order_type.clone(),
            provider: order.provider.clone(),
            account: order.account.clone(),
            total_fee: order.total_fee,
            user_id: order.user_id.clone(),
            custom: order.custom.to_string(),
            transaction_id: payment.transaction_id.clone(),
        };
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
        let build = plugin.build_id();
        let started = std::time::Instant::now();
        let (ctx, result) = self
            .plugins
            .runtime()
            .handle_paid(
                &plugin.compiled,
                ctx,
                plugin.limits,
                wit_order,
                wit_notification,
            )
            .await;
        let elapsed = started.elapsed();
        let Some(mut tx) = ctx.and_then(|c| c.db.into_tx()) else {
            return (
                None,
                Err(StoreError::Invalid(
                    "transaction lost during the handler call".into(),
                )),
            );
        };
        match result {
            Ok(outcome) => {
                tracing::info!(plugin = %plugin.plugin_type, elapsed_us = elapsed.as_micros() as u64, "handler succeeded");
                let r = async {
                    tx.release(&savepoint).await?;
                    tx.set_handler_result(&order.out_trade_no, "succeeded", &outcome, Some(&build))
                        .await
                }
                .await;
                (Some(tx), r.map(|()| Settled::new(Verdict::Paid, None)))
            }
            Err(HandlerFailure::Transient(why)) => {
                // Not the handler's doing: fail the transaction so it is run again.
                (Some(tx), Err(StoreError::Transient(why)))
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
                    r.map(|()| Settled::new(Verdict::Failed, failure.to_string())),
                )
            }
        }
    }
}

enum Checked {
    /// Nothing to pay: the verdict is decided.
    Done(Settled),
    /// An unpaid order whose checks passed.
    Pay(Box<Order>),
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

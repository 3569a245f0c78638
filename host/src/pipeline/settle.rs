//! Steps 3–5 for verified payments: find and lock the order, check it, and in ONE
//! transaction mark it paid only if unpaid, with its handler's writes and tasks, and
//! record the verdict; commit.
//!
//! Several payments share one transaction (and one commit, [`super::batch`]). A batch
//! first runs without savepoints; if any handler fails it is rolled back whole and run
//! again with a savepoint per payment, so each failure rolls back only its own work. The
//! handler call itself is in [`super::pay`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use super::batch::{Job, Queue, Worker};
use super::pay::{Abort, Ahead, Isolation, Paid, Payer, Settled, ToSettle};
use super::{Batching, NotifyKeys, Outcome, Pipeline, Processed, Review};
use crate::plugins::capabilities::Recording;
use crate::plugins::{HandlerFailure, Registry};
use crate::providers::{Notice, NoticeKind, ProviderKind};
use crate::store::audit::{CallKind, CallRef, CallWrites};
use crate::store::{status, NotificationVerdict, Order, PaidOrder, Store, StoreError, Verdict};

/// The queue of verified payments waiting to be settled.
pub(super) type SettleQueue = Queue<ToSettle, Settled>;

/// Starts the settle loops: one on SQLite (one writer), several on PostgreSQL.
pub(super) fn spawn(
    store: Arc<dyn Store>,
    plugins: Arc<Registry>,
    notify_keys: NotifyKeys,
    batching: Batching,
    review: Review,
) -> SettleQueue {
    let settler = Settler {
        store,
        payer: Payer {
            plugins,
            notify_keys,
            review,
        },
    };
    Queue::spawn("settle", batching.settlers, batching.max, settler)
}

/// Handler failures of an earlier attempt at the same batch, by notification id: the
/// rerun records them as they were instead of running those handlers again (a handler
/// that looped to its limit would otherwise hold the transaction for its limit twice).
/// Recording a failure is always safe: the order stays unpaid and the provider retries.
type KnownFailures = HashMap<i64, HandlerFailure>;

/// How often a transaction is run again after a transient database failure.
const ATTEMPTS: u32 = 5;

/// Runs `attempt` (a whole transaction) again, a few times with a growing pause, while
/// the database reports a deadlock or serialization failure. Every failed attempt rolled
/// back completely, so running it again is safe. `what` names it in the log.
pub(super) async fn with_retries<T, F, Fut>(what: &str, mut attempt: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    for n in 1..=ATTEMPTS {
        match attempt().await {
            Ok(t) => return Ok(t),
            Err(e) if e.is_transient() && n < ATTEMPTS => {
                let pause = 5 * u64::from(n) + rand::random::<u64>() % 20;
                tracing::warn!(error = %e, attempt = n, "transient database failure; running the {what} again");
                tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("gave up after repeated transient database failures".into())
}

impl Pipeline {
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
        let order = Some(notice.out_trade_no.as_str()).filter(|s| !s.is_empty());
        let payment = match &notice.kind {
            NoticeKind::Paid(p) => p.clone(),
            // A provider's final answer to a refund request (Alipay), stored and verified
            // like a refund notification: it goes the refund notification's way, so the
            // refund applies once whichever of the two comes first. (An order query
            // answers about the payment and never reports a refund.)
            NoticeKind::Refunded(refund) => {
                let refund = refund.clone();
                return self.refund(id, provider, &notice, &refund).await;
            }
            NoticeKind::NotPaid { state } => {
                let reason = format!("not a payment: {state}");
                let outcome = Outcome::new(Verdict::Ignored, reason, 200);
                return self
                    .finish_outside(id, provider_name, outcome.about(order, &notice.account))
                    .await;
            }
        };
        let job = ToSettle {
            id,
            provider,
            notice: notice.clone(),
            payment,
        };
        match self.settle.submit(job).await {
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
                let order = Some(notice.out_trade_no.as_str());
                let outcome = Outcome::new(Verdict::Failed, reason, 500);
                self.finish_outside(id, provider_name, outcome.about(order, &notice.account))
                    .await
            }
        }
    }
}

/// Settles batches of verified payments: the payment transaction.
pub(super) struct Settler {
    store: Arc<dyn Store>,
    payer: Payer,
}

impl Worker<ToSettle, Settled> for Settler {
    /// Settles a batch of payments in one transaction and answers every job after the
    /// shared commit. The batch runs without savepoints first: handlers rarely fail, and
    /// a savepoint is a database round trip per payment on the one serial path of the
    /// commit loop. If a handler does fail, that attempt is rolled back whole and the
    /// batch runs again with a savepoint per payment (the other handlers run twice; only
    /// the second run commits). If the batch fails as a whole (a statement error, a lost
    /// transaction, a failed commit), each job is retried alone, so one bad notification
    /// cannot keep failing the others.
    async fn run(&self, jobs: Vec<Job<ToSettle, Settled>>) {
        let (items, replies): (Vec<ToSettle>, Vec<_>) =
            jobs.into_iter().map(|j| (j.item, j.reply)).unzip();
        // A lone payment gets its savepoint at once: running its failing handler twice
        // would cost more than the savepoint saves.
        let first = if items.len() > 1 {
            Isolation::Optimistic
        } else {
            Isolation::Savepoints
        };
        let mut known = KnownFailures::new();
        let mut attempt = self.try_batch(&items, first, &known).await;
        if let Err(Abort::HandlerFailed { id, failure }) = attempt {
            tracing::debug!(
                size = items.len(),
                "a handler failed; running the batch again with a savepoint per payment"
            );
            crate::metrics::batch_rerun();
            known.insert(id, failure);
            attempt = self.try_batch(&items, Isolation::Savepoints, &known).await;
        }
        let failure = match attempt.map_err(StoreError::from) {
            Ok(results) => {
                for (reply, r) in replies.into_iter().zip(results) {
                    reply.send(Ok(r));
                }
                return;
            }
            Err(e) => e,
        };
        if items.len() == 1 && !failure.is_transient() {
            for reply in replies {
                reply.send(Err(failure.to_string()));
            }
            return;
        }
        if items.len() > 1 {
            tracing::warn!(error = %failure, size = items.len(), "batch failed; settling its notifications one by one");
        }
        for (item, reply) in items.iter().zip(replies) {
            reply.send(self.settle_alone(item).await);
        }
    }
}

impl Settler {
    /// One payment in a transaction of its own, run again while the database reports a
    /// transient failure ([`with_retries`]).
    async fn settle_alone(&self, item: &ToSettle) -> Result<Settled, String> {
        let one = std::slice::from_ref(item);
        let no_failures = &KnownFailures::new();
        with_retries("transaction", || async move {
            let mut settled = self
                .try_batch(one, Isolation::Savepoints, no_failures)
                .await
                .map_err(StoreError::from)?;
            settled
                .pop()
                .ok_or_else(|| StoreError::Invalid("the payment was skipped".into()))
        })
        .await
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
        items: &[ToSettle],
        isolation: Isolation,
        known: &KnownFailures,
    ) -> Result<Vec<Settled>, Abort> {
        let mut tx = self.store.begin().await?;
        let numbers: Vec<&str> = items
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
                .get(&items[i].notice.out_trade_no)
                .map(|o| o.user_id.clone())
        };
        let mut seq: Vec<(Option<String>, usize)> =
            (0..items.len()).map(|i| (user(i), i)).collect();
        seq.sort_by(|a, b| a.0.cmp(&b.0));
        let seq: Vec<usize> = seq.into_iter().map(|(_, i)| i).collect();
        let mut results: Vec<Option<Settled>> = (0..items.len()).map(|_| None).collect();
        let mut paid = Vec::new();
        let mut writes = Vec::new();
        let mut shadows = Vec::new();
        let mut ahead = Ahead::new();
        for (p, &i) in seq.iter().enumerate() {
            let item = &items[i];
            self.payer
                .prepare_ahead(items, &seq[p..], &orders, &mut ahead);
            let prepared = ahead.remove(&i).flatten();
            let order = orders.get_mut(&item.notice.out_trade_no);
            let settled = match check_order(order.as_deref(), item) {
                Checked::Done(s) => s,
                Checked::Pay => {
                    let Some(order) = order else {
                        return Err(
                            StoreError::Invalid("order vanished from the batch".into()).into()
                        );
                    };
                    let known = known.get(&item.id);
                    let (back, result) = self
                        .payer
                        .pay(tx, item, order, prepared, isolation, known)
                        .await;
                    tx = back.ok_or_else(|| {
                        StoreError::Invalid(
                            "the transaction was abandoned during a handler call".into(),
                        )
                    })?;
                    match result? {
                        Paid::Yes {
                            row,
                            recording,
                            shadow,
                        } => {
                            // Later notifications in this batch see the order as paid.
                            order.status = status::PAID;
                            order.transaction_id = Some(row.transaction_id.clone());
                            order.paid_notification_id = Some(row.notification_id);
                            if let Some(r) = recording.filter(|r| !r.writes.is_empty()) {
                                writes.push(paid_writes(&row, r));
                            }
                            shadows.extend(shadow);
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
        if results.len() != items.len() {
            return Err(
                StoreError::Invalid("a notification of the batch was skipped".into()).into(),
            );
        }
        let verdicts: Vec<NotificationVerdict<'_>> = items
            .iter()
            .zip(&results)
            .map(|(item, s)| NotificationVerdict {
                id: item.id,
                verdict: s.verdict,
                reason: s.reason.as_deref(),
                out_trade_no: Some(item.notice.out_trade_no.as_str()).filter(|n| !n.is_empty()),
                account: Some(item.notice.account.as_str()),
            })
            .collect();
        let marked = tx.settle(&paid, &verdicts, &writes).await?;
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
        for run in shadows {
            self.payer.review.shadows.submit(run);
        }
        Ok(results)
    }
}

/// The audit rows of a payment's handler call.
fn paid_writes(row: &PaidOrder, recording: Recording) -> CallWrites {
    CallWrites {
        call: CallRef {
            call: CallKind::Paid,
            out_trade_no: Some(row.out_trade_no.clone()),
            notification_id: Some(row.notification_id),
            out_refund_no: None,
            task_id: None,
            build: row.handler_version.clone(),
        },
        writes: recording.writes,
        first_seq: 0,
    }
}

/// The checks' decision.
enum Checked {
    /// Nothing to pay: the verdict is decided.
    Done(Settled),
    /// An unpaid order whose checks passed.
    Pay,
}

/// Steps 3–4, decided on the locked order: it exists, belongs to the verified account
/// (and sub-merchant), the amount is right, and it is still unpaid.
fn check_order(order: Option<&Order>, item: &ToSettle) -> Checked {
    let (id, notice, payment) = (item.id, &item.notice, &item.payment);
    let Some(order) = order else {
        return Checked::Done(Settled::new(
            Verdict::Rejected,
            format!("unknown order `{}`", notice.out_trade_no),
        ));
    };
    if let Some(why) = super::owner::mismatch(order, item.provider, notice, "notification") {
        return Checked::Done(Settled::new(Verdict::Rejected, why));
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

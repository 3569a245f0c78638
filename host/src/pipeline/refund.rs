//! The refund path of the pipeline: a verified refund notification is applied to its
//! order once — refunded total up, status 1 → 2 (partially refunded) or → 3 (refunded
//! when the refunded total reaches `total_fee`) — and the type's optional
//! `handle-refunded` runs, all in ONE transaction, as payments do.
//!
//! - A refund already applied (same order and merchant refund number) is a duplicate and
//!   changes nothing, on several connections or host processes at once too: the order's
//!   row lock serialises them and the `refunds` table's unique key backs it up.
//! - A verified refund of an order that is unknown or not paid yet changes nothing, is
//!   stored as `refund_pending` and gets the *failure* answer, so the provider sends it
//!   again later. Acknowledging it would lose it: the provider never resends an
//!   acknowledged refund, and the payment arriving after it would credit the buyer whose
//!   money has already gone back. Belt and braces, the payment's commit applies every
//!   refund of its order still stored `refund_pending` at once (see
//!   [`Pipeline::settle_verified`]), so no order of deliveries leaves
//!   a refunded order credited.
//! - A verified refund that can never apply (closed order, another transaction, a
//!   mismatched total, more than remains) changes nothing and is stored as
//!   `refund_unapplied` with the reason. It gets the *success* answer (the money has
//!   already moved at the provider, and a retry would bring the same notification to the
//!   same order), and it is counted (`paynotify_refunds_unapplied_total`) and listed as
//!   needing attention (console, `notifications list --verdict refund_unapplied`); the
//!   stored notification can be replayed once ops have fixed the order (a replay is
//!   exactly-once like any other).
//! - The handler fails (error, trap, time or memory limit) → the whole transaction rolls
//!   back, the failure answer makes the provider retry.
//!
//! Refunds are rare next to payments: each runs in a transaction of its own, not in the
//! payments' group commit.

use std::sync::Arc;

use super::pay::{account_of, order_call_context, wit_order};
use super::settle::with_retries;
use super::Review;
use super::{NotifyKeys, Outcome, Pipeline, Processed};
use crate::plugins::capabilities::Recording;
use crate::plugins::{refund_bindings, HandlerFailure, Plugin, Registry};
use crate::providers::{Notice, ProviderKind, Refund, RefundAmount};
use crate::shadow::{Call, Pending, Served};
use crate::store::audit::{CallKind, CallRef, CallWrites};
use crate::store::{status, NewRefund, Order, Store, StoreError, Tx, Verdict};

/// The handler status recorded on a refund whose type's handler has no `handle-refunded`.
pub const NO_REFUND_HANDLER: &str = "no refund handler";

/// A verified refund, stored as notification `id`, to apply.
#[derive(Clone, Copy)]
pub struct ToRefund<'a> {
    /// The stored notification.
    pub id: i64,
    /// The provider that verified it.
    pub provider: ProviderKind,
    /// The verified notification.
    pub notice: &'a Notice,
    /// The refund it reports.
    pub refund: &'a Refund,
}

/// Applies verified refunds.
pub struct Refunder {
    plugins: Arc<Registry>,
    notify_keys: NotifyKeys,
    /// The audit and the shadow runs.
    review: Review,
}

/// What applying a refund decided.
#[derive(Debug, Clone)]
pub struct RefundOutcome {
    /// Where the notification ended up. `Failed` means nothing was committed.
    pub verdict: Verdict,
    /// Why, or what to tell ops.
    pub reason: Option<String>,
    /// A shadow run to make once the refund committed.
    shadow: Option<Pending>,
}

impl RefundOutcome {
    fn new(verdict: Verdict, reason: impl Into<Option<String>>) -> RefundOutcome {
        RefundOutcome {
            verdict,
            reason: reason.into(),
            shadow: None,
        }
    }
}

/// The checks' decision.
enum Checked {
    /// Nothing to apply: the verdict is decided.
    Done(RefundOutcome),
    /// Apply `amount` fen to the (locked) order.
    Apply { order: Box<Order>, amount: i64 },
}

impl Pipeline {
    /// The refund path: applies a verified refund (see [`Refunder`]) and answers.
    pub(super) async fn refund(
        &self,
        id: i64,
        provider: ProviderKind,
        notice: &Notice,
        refund: &Refund,
    ) -> Processed {
        let provider_name = provider.as_str();
        let order = Some(notice.out_trade_no.as_str());
        let r = ToRefund {
            id,
            provider,
            notice,
            refund,
        };
        let applied = self.refunder.apply(self.store.as_ref(), r).await;
        match applied {
            Ok(r) if r.verdict == Verdict::Failed => {
                let outcome = Outcome::new(r.verdict, r.reason.unwrap_or_default(), 200);
                self.finish_outside(id, provider_name, outcome.about(order, &notice.account))
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
                let outcome = Outcome::new(Verdict::Failed, reason, 500);
                self.finish_outside(id, provider_name, outcome.about(order, &notice.account))
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
    pub(super) fn apply_waiting_refunds<'a>(
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
}

impl Refunder {
    /// A refunder running the handlers of `plugins`, reviewed by `review`.
    pub fn new(plugins: Arc<Registry>, notify_keys: NotifyKeys, review: Review) -> Refunder {
        Refunder {
            plugins,
            notify_keys,
            review,
        }
    }

    /// Applies a verified refund in a transaction of its own, run again (a few times)
    /// while the database reports a deadlock or serialization failure. Every attempt
    /// rolled back completely, so running it again is safe. An `Err` means nothing was
    /// committed, not even the verdict.
    pub async fn apply(&self, store: &dyn Store, r: ToRefund<'_>) -> Result<RefundOutcome, String> {
        with_retries("refund", || self.try_once(store, r)).await
    }

    /// One attempt: the whole refund transaction.
    async fn try_once(
        &self,
        store: &dyn Store,
        r: ToRefund<'_>,
    ) -> Result<RefundOutcome, StoreError> {
        let mut tx = store.begin().await?;
        let (mut tx, outcome) = match check(tx.as_mut(), r).await? {
            Checked::Done(outcome) => (tx, outcome),
            Checked::Apply { order, amount } => {
                match self.apply_locked(tx, r, &order, amount).await {
                    (Some(tx), Ok(outcome)) => (tx, outcome),
                    (Some(_), Err(e)) => return Err(e),
                    (None, _) => {
                        return Err(StoreError::Invalid(
                            "transaction lost during the refund handler call".into(),
                        ))
                    }
                }
            }
        };
        if outcome.verdict == Verdict::Failed {
            // Dropping the transaction rolls back the refund and the handler's writes.
            return Ok(outcome);
        }
        let order = Some(r.notice.out_trade_no.as_str()).filter(|s| !s.is_empty());
        tx.finish_notification(
            r.id,
            outcome.verdict,
            outcome.reason.as_deref(),
            order,
            Some(&r.notice.account),
        )
        .await?;
        tx.commit().await?;
        if let Some(run) = outcome.shadow.clone() {
            self.review.shadows.submit(run);
        }
        Ok(outcome)
    }

    /// Records the refund on the locked order and runs the handler's `handle-refunded`,
    /// if it has one. Returns the transaction unless the handler call was abandoned.
    async fn apply_locked(
        &self,
        mut tx: Box<dyn Tx>,
        r: ToRefund<'_>,
        order: &Order,
        amount: i64,
    ) -> (Option<Box<dyn Tx>>, Result<RefundOutcome, StoreError>) {
        let (notice, refund) = (r.notice, r.refund);
        let refunded_total = order.refund_fee + amount;
        let original_data = serde_json::to_value(&notice.fields).unwrap_or_default();
        let new = NewRefund {
            out_trade_no: &order.out_trade_no,
            out_refund_no: &refund.out_refund_no,
            refund_id: &refund.refund_id,
            provider: &order.provider,
            account: &order.account,
            amount,
            refunded_before: order.refund_fee,
            new_status: if refunded_total == order.total_fee {
                status::REFUNDED
            } else {
                status::PARTIALLY_REFUNDED
            },
            refunded_at: refund.refunded_at,
            notification_id: r.id,
            original_data: &original_data,
        };
        match tx.apply_refund(&new).await {
            Ok(true) => {}
            // The order's lock makes this unreachable; if it happens, nothing ran twice.
            Ok(false) => {
                let outcome =
                    RefundOutcome::new(Verdict::Duplicate, "refund already applied".to_owned());
                return (Some(tx), Ok(outcome));
            }
            Err(e) => return (Some(tx), Err(e)),
        }
        let Some(plugin) = self.plugins.get(&order.order_type) else {
            let failure = HandlerFailure::NotLoaded(order.order_type.clone());
            return (
                Some(tx),
                Ok(RefundOutcome::new(Verdict::Failed, failure.to_string())),
            );
        };
        let build = plugin.build_id();
        if !plugin.compiled.handles_refunds() {
            let r = tx
                .set_refund_handler_result(
                    &order.out_trade_no,
                    &refund.out_refund_no,
                    NO_REFUND_HANDLER,
                    &serde_json::Value::Null,
                    Some(&build),
                )
                .await;
            let reason = format!("applied; {build} has no refund handler");
            return (
                Some(tx),
                r.map(|()| RefundOutcome::new(Verdict::Refunded, reason)),
            );
        }
        if let Err(failure) = plugin.breaker.admit() {
            crate::metrics::breaker_fast_fail(&plugin.plugin_type);
            tracing::warn!(plugin = %plugin.plugin_type, error = %failure, "refund handler not run; refund rolled back, provider will retry");
            return (
                Some(tx),
                Ok(RefundOutcome::new(Verdict::Failed, failure.to_string())),
            );
        }
        let candidate = self.review.shadows.pick(&plugin.plugin_type);
        let (back, result, recording, call) = self
            .call_handler(tx, &plugin, r, order, amount, candidate.is_some())
            .await;
        if plugin.breaker.record(&result) {
            crate::metrics::breaker_tripped(&plugin.plugin_type);
            tracing::error!(plugin = %plugin.plugin_type, "payment calls keep timing out: the type fails fast for a cool-down");
        }
        let Some(mut tx) = back else {
            return (None, Err(StoreError::Invalid("transaction lost".into())));
        };
        match result {
            Ok(outcome) => {
                let shadow = candidate.zip(call).map(|(candidate, call)| Pending {
                    candidate,
                    served: Arc::new(Served {
                        plugin_type: plugin.plugin_type.clone(),
                        build: build.clone(),
                        out_trade_no: order.out_trade_no.clone(),
                        notification_id: r.id,
                        out_refund_no: Some(refund.out_refund_no.clone()),
                        account: account_of(&self.notify_keys, order),
                        call,
                        recording: recording.clone().unwrap_or_default(),
                        outcome: outcome.clone(),
                    }),
                });
                let writes: Vec<CallWrites> = recording
                    .filter(|rec| self.review.audit && !rec.writes.is_empty())
                    .map(|rec| CallWrites {
                        call: CallRef {
                            call: CallKind::Refunded,
                            out_trade_no: Some(order.out_trade_no.clone()),
                            notification_id: Some(r.id),
                            out_refund_no: Some(refund.out_refund_no.clone()),
                            task_id: None,
                            build: build.clone(),
                        },
                        writes: rec.writes,
                        first_seq: 0,
                    })
                    .into_iter()
                    .collect();
                let r = async {
                    tx.record_writes(&writes).await?;
                    tx.set_refund_handler_result(
                        &order.out_trade_no,
                        &refund.out_refund_no,
                        "succeeded",
                        &outcome,
                        Some(&build),
                    )
                    .await
                }
                .await;
                let done = RefundOutcome {
                    shadow,
                    ..RefundOutcome::new(Verdict::Refunded, None)
                };
                (Some(tx), r.map(|()| done))
            }
            // Not the handler's doing: fail the transaction so it is run again.
            Err(HandlerFailure::Transient(why)) => (Some(tx), Err(StoreError::Transient(why))),
            Err(failure) => {
                tracing::warn!(plugin = %plugin.plugin_type, error = %failure, "refund handler failed; refund rolled back, provider will retry");
                (
                    Some(tx),
                    Ok(RefundOutcome::new(Verdict::Failed, failure.to_string())),
                )
            }
        }
    }

    /// Runs the type's `handle-refunded` inside the transaction.
    async fn call_handler(
        &self,
        tx: Box<dyn Tx>,
        plugin: &Plugin,
        r: ToRefund<'_>,
        order: &Order,
        amount: i64,
        shadowed: bool,
    ) -> (
        Option<Box<dyn Tx>>,
        Result<serde_json::Value, HandlerFailure>,
        Option<Recording>,
        Option<Call>,
    ) {
        let (id, notice, refund) = (r.id, r.notice, r.refund);
        let refunded_total = order.refund_fee + amount;
        let ctx = order_call_context(&self.plugins, &self.notify_keys, plugin, order, id, tx)
            .record(self.review.audit || shadowed)
            .build();
        let wit_order = wit_order(order, order.transaction_id.as_deref().unwrap_or_default());
        let wit_refund = refund_bindings::Refund {
            notification_id: id,
            out_refund_no: refund.out_refund_no.clone(),
            refund_id: refund.refund_id.clone(),
            amount,
            refunded_total,
            full: refunded_total == order.total_fee,
            refunded_at: refund.refunded_at.map(crate::time::iso_time),
            fields: notice
                .fields
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        // The candidate repeats the very call, after the commit.
        let call = shadowed.then(|| Call::Refunded {
            order: wit_order.clone(),
            refund: wit_refund.clone(),
        });
        let (ctx, result) = self
            .plugins
            .runtime()
            .handle_refunded(
                &plugin.compiled,
                ctx,
                plugin.payment_limits,
                wit_order,
                wit_refund,
            )
            .await;
        match ctx {
            Some(mut c) => {
                let recording = c.record.take();
                (c.db.into_tx(), result, recording, call)
            }
            None => (None, result, None, None),
        }
    }
}

/// Everything that decides whether the refund applies, on the locked order.
async fn check(tx: &mut dyn Tx, r: ToRefund<'_>) -> Result<Checked, StoreError> {
    let (id, provider, notice, refund) = (r.id, r.provider, r.notice, r.refund);
    let unapplied = |why: String| {
        tracing::warn!(reason = %why, out_refund_no = %refund.out_refund_no, "verified refund not applied: listed for ops");
        Ok(Checked::Done(RefundOutcome::new(
            Verdict::RefundUnapplied,
            why,
        )))
    };
    // Recorded in this transaction while the order's row is locked, so a payment that
    // commits after it finds it (see `Pipeline::apply_waiting_refunds`).
    let pending = |why: String| {
        tracing::warn!(reason = %why, out_refund_no = %refund.out_refund_no, "verified refund before its payment: provider told to retry");
        Ok(Checked::Done(RefundOutcome::new(
            Verdict::RefundPending,
            why,
        )))
    };
    let Some(order) = tx.lock_order(&notice.out_trade_no).await? else {
        return pending(format!(
            "unknown order `{}`; refund waits for its payment",
            notice.out_trade_no
        ));
    };
    if let Some(why) = super::owner::mismatch(&order, provider, notice, "refund") {
        return Ok(Checked::Done(RefundOutcome::new(Verdict::Rejected, why)));
    }
    if let Some(applied) = tx
        .get_refund(&order.out_trade_no, &refund.out_refund_no)
        .await?
    {
        // A replay of the very notification that applied it stays its applier.
        let outcome = if applied.notification_id == id {
            RefundOutcome::new(
                Verdict::Refunded,
                "replayed; refund was applied by it".to_owned(),
            )
        } else {
            RefundOutcome::new(
                Verdict::Duplicate,
                format!(
                    "refund {} already applied by notification {}",
                    refund.out_refund_no, applied.notification_id
                ),
            )
        };
        return Ok(Checked::Done(outcome));
    }
    match order.status {
        status::UNPAID => return pending("order is unpaid; refund waits for its payment".into()),
        status::CLOSED => return unapplied("order is closed".into()),
        _ => {}
    }
    let paid_by = order.transaction_id.as_deref().unwrap_or("");
    if paid_by != refund.transaction_id {
        return unapplied(format!(
            "refund of transaction {}, order was paid by transaction {paid_by}",
            refund.transaction_id
        ));
    }
    if let Some(total) = refund.total_fee.filter(|t| *t != order.total_fee) {
        return unapplied(format!(
            "total mismatch: refund states an order total of {total} fen, order total is {} fen",
            order.total_fee
        ));
    }
    let amount = match refund.amount {
        RefundAmount::This(fen) => fen,
        RefundAmount::Cumulative(total) if total <= order.refund_fee => {
            // Alipay states the total refunded so far: a later refund's notification
            // arrived first and already covered this one.
            return Ok(Checked::Done(RefundOutcome::new(
                Verdict::Duplicate,
                format!(
                    "provider reports {total} fen refunded in total; {} fen already applied",
                    order.refund_fee
                ),
            )));
        }
        RefundAmount::Cumulative(total) => total - order.refund_fee,
    };
    let remaining = order.total_fee - order.refund_fee;
    if amount > remaining {
        return unapplied(format!(
            "refund of {amount} fen is more than the {remaining} fen not yet refunded"
        ));
    }
    Ok(Checked::Apply {
        order: Box::new(order),
        amount,
    })
}

//! Step 5's handler call for one payment, inside the batch's transaction: the instance
//! made ahead (off the transaction's critical path), the breaker, the savepoint, the call
//! itself, and what it leaves to mark paid or to record as failed.

use std::collections::HashMap;
use std::sync::Arc;

use super::{NotifyKeys, Review};
use crate::plugins::bindings;
use crate::plugins::capabilities::{CallBuilder, DbAccess, Recording};
use crate::plugins::runtime::Prepared;
use crate::plugins::{HandlerFailure, Plugin, Registry};
use crate::providers::{Notice, Payment, ProviderKind};
use crate::shadow::{Call, Pending, Served};
use crate::store::{status, Order, PaidOrder, StoreError, Tx, Verdict};

/// A verified payment, stored as notification `id`, to settle.
pub(super) struct ToSettle {
    pub id: i64,
    pub provider: ProviderKind,
    pub notice: Notice,
    pub payment: Payment,
}

/// What settling a verified payment decided.
pub(super) struct Settled {
    pub verdict: Verdict,
    pub reason: Option<String>,
}

impl Settled {
    pub fn new(verdict: Verdict, reason: impl Into<Option<String>>) -> Settled {
        Settled {
            verdict,
            reason: reason.into(),
        }
    }
}

/// Whether each payment of a batch runs inside a savepoint of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Isolation {
    /// No savepoints: one statement less per payment, but a failing handler's writes
    /// cannot be undone alone, so its failure aborts the batch ([`Abort::HandlerFailed`]).
    Optimistic,
    /// A savepoint per payment: a failing handler is rolled back to it and recorded.
    Savepoints,
}

/// Why a batch transaction was given up (rolled back, nothing committed).
#[derive(Debug, thiserror::Error)]
pub(super) enum Abort {
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

/// Runs payments' handlers inside the batch transaction.
pub(super) struct Payer {
    pub plugins: Arc<Registry>,
    pub notify_keys: NotifyKeys,
    /// The audit and the shadow runs.
    pub review: Review,
}

impl Payer {
    /// Starts making handler instances for the next few payments of the batch on other
    /// workers, so that instantiation (tens of microseconds) happens while the current
    /// handler runs instead of inside the transaction's critical path. Only orders that
    /// look payable get one; an instance that turns out not to be needed is dropped.
    pub(super) fn prepare_ahead(
        &self,
        items: &[ToSettle],
        upcoming: &[usize],
        orders: &HashMap<String, Order>,
        ahead: &mut Ahead,
    ) {
        for &k in upcoming.iter().take(PREPARE_AHEAD) {
            if ahead.contains_key(&k) {
                continue;
            }
            let job = &items[k];
            let plugin = orders
                .get(&job.notice.out_trade_no)
                .filter(|o| o.status == status::UNPAID)
                .and_then(|o| self.plugins.get(&o.order_type));
            let task = plugin.map(|plugin| {
                let runtime = self.plugins.runtime().clone();
                let tags = self
                    .plugins
                    .call_context(&plugin)
                    .order(job.notice.out_trade_no.clone())
                    .notification(job.id)
                    .into_tags();
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
    pub(super) async fn pay(
        &self,
        mut tx: Box<dyn Tx>,
        job: &ToSettle,
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
        let candidate = self.review.shadows.pick(&plugin.plugin_type);
        let ctx = order_call_context(&self.plugins, &self.notify_keys, &plugin, order, id, tx)
            .record(self.review.audit || candidate.is_some())
            .build();
        let wit_order = wit_order(order, &payment.transaction_id);
        let wit_notification = bindings::Notification {
            id,
            provider: order.provider.clone(),
            account: notice.account.clone(),
            out_trade_no: notice.out_trade_no.clone(),
            transaction_id: payment.transaction_id.clone(),
            amount: payment.amount,
            paid_at: payment.paid_at.map(crate::time::iso_time),
            fields: notice
                .fields
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        // The candidate repeats the very call, after the commit.
        let shadow_call = candidate.as_ref().map(|_| Call::Paid {
            order: wit_order.clone(),
            notification: wit_notification.clone(),
        });
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
        let (recording, tx) = match ctx {
            Some(mut c) => (c.record.take(), c.db.into_tx()),
            None => (None, None),
        };
        let Some(mut tx) = tx else {
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
                    pay_date: payment.paid_at.unwrap_or_else(crate::time::now_ms),
                    notification_id: id,
                    original_data: serde_json::to_string(&notice.fields).unwrap_or_default(),
                    handler_result: outcome.to_string(),
                    handler_version: build,
                };
                let shadow = candidate.zip(shadow_call).map(|(candidate, call)| Pending {
                    candidate,
                    served: Arc::new(Served {
                        plugin_type: plugin.plugin_type.clone(),
                        build: row.handler_version.clone(),
                        out_trade_no: order.out_trade_no.clone(),
                        notification_id: id,
                        out_refund_no: None,
                        account: account_of(&self.notify_keys, order),
                        call,
                        recording: recording.clone().unwrap_or_default(),
                        outcome,
                    }),
                });
                let recording = recording.filter(|_| self.review.audit);
                (
                    Some(tx),
                    Ok(Paid::Yes {
                        row: Box::new(row),
                        recording,
                        shadow,
                    }),
                )
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

/// The order's merchant account and its notify key, as a call about it gets them.
pub(crate) fn account_of(
    notify_keys: &NotifyKeys,
    order: &Order,
) -> (String, String, Option<[u8; 32]>) {
    let key = (order.provider.clone(), order.account.clone());
    let notify_key = notify_keys.get(&key).copied();
    (key.0, key.1, notify_key)
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
) -> CallBuilder {
    let (provider, account, notify_key) = account_of(notify_keys, order);
    plugins
        .call_context(plugin)
        .order(order.out_trade_no.clone())
        .notification(id)
        .account(provider, account, notify_key)
        .db(DbAccess::Tx(tx))
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
pub(super) type Ahead = HashMap<usize, Option<PrepareTask>>;

/// What running the handler for a payment came to.
pub(super) enum Paid {
    /// It succeeded.
    Yes {
        /// The order row to mark paid at the end of the batch.
        row: Box<PaidOrder>,
        /// What the handler read and wrote, for the audit (`None`: not audited).
        recording: Option<Recording>,
        /// The shadow run to make after the commit.
        shadow: Option<Pending>,
    },
    /// It failed (rolled back) or no handler is loaded: the verdict.
    No(Settled),
}

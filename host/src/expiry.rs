//! Order expiry: a background job that closes unpaid orders whose lifetime
//! (`[orders] expire_after_secs`, off by default) has run out, locally: status 0 → -1.
//!
//! Every host process runs it; that is safe, because closing is one conditional
//! statement per batch (see [`Store::close_expired_orders`]): an order is closed once,
//! never after it was paid, and on PostgreSQL a process skips the rows another process
//! (or a payment in progress) holds. A payment that arrives for a closed order is
//! acknowledged by the pipeline as `paid_after_close` and runs no handler; ops find
//! those with `paynotify notifications list --verdict paid_after_close`.
//!
//! With `[orders] close_at_provider = true`, an expired order is first closed with its
//! provider's close API (WeChat v2 `closeorder`, v3 `…/close`, `alipay.trade.close`),
//! and only then locally. Provider first, because closing there is what stops the buyer
//! from paying: closed locally first, a buyer still at the cashier could pay in between,
//! and that payment would only be acknowledged as `paid_after_close` and need a refund.
//! Closed at the provider first, a payment that got in before is refused by the close
//! ("already paid"): the order is then reconciled (queried and settled like a
//! notification) instead of closed. A close that fails is logged and counted, and the
//! order stays unpaid; its claim lease (`expire_check_secs`) puts it behind the others,
//! so a provider that keeps failing never blocks the sweep, and it is tried again on a
//! later one. Orders whose account has no close API (CloudPay, or no merchant key) are
//! closed locally only.

use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::config::OrdersConfig;
use crate::providers::api::CloseOutcome;
use crate::reconcile::{Outcome, Reconciler};
use crate::store::{Order, Store, StoreError};
use crate::time::now_ms;

/// Batches in a row before the job yields to its next tick, so that a backlog of
/// millions is worked off without holding the (SQLite) writer for long stretches.
const MAX_BATCHES_PER_TICK: usize = 100;

/// Closes expired orders.
pub struct Expirer {
    store: Arc<dyn Store>,
    config: OrdersConfig,
    /// Set when expired orders are closed at the provider first.
    provider_close: Option<Arc<Reconciler>>,
}

impl Expirer {
    /// An expirer over `store` with `config`'s lifetime and batch size.
    pub fn new(store: Arc<dyn Store>, config: OrdersConfig) -> Expirer {
        Expirer {
            store,
            config,
            provider_close: None,
        }
    }

    /// Also closes expired orders at their provider (before closing them locally),
    /// reconciling the ones the provider says are paid.
    pub fn with_provider_close(mut self, reconciler: Arc<Reconciler>) -> Expirer {
        self.provider_close = Some(reconciler);
        self
    }

    /// Closes the orders that are expired now, in batches; returns their numbers.
    /// Nothing when expiry is off (`expire_after_secs = 0`).
    pub async fn close_expired(&self) -> Result<Vec<String>, StoreError> {
        if self.config.expire_after_secs == 0 {
            return Ok(Vec::new());
        }
        let lifetime =
            i64::try_from(self.config.expire_after_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let created_before = now_ms().saturating_sub(lifetime);
        let batch = self.config.close_batch.max(1);
        if let Some(reconciler) = &self.provider_close {
            return self
                .close_at_provider(reconciler, created_before, batch)
                .await;
        }
        let mut closed = Vec::new();
        for _ in 0..MAX_BATCHES_PER_TICK {
            let some = self
                .store
                .close_expired_orders(created_before, batch)
                .await?;
            let full = some.len() >= batch as usize;
            for no in &some {
                tracing::debug!(order = %no, "unpaid order expired; closed");
            }
            crate::metrics::orders_expired(some.len());
            closed.extend(some);
            if !full {
                break;
            }
        }
        if !closed.is_empty() {
            tracing::info!(
                closed = closed.len(),
                expire_after_secs = self.config.expire_after_secs,
                "closed unpaid orders past their lifetime"
            );
        }
        Ok(closed)
    }

    /// The `close_at_provider` sweep: claims expired orders in batches (a lease of
    /// `expire_check_secs`, so processes do not close the same order at once and failed
    /// ones wait their turn) and closes each at its provider, then locally.
    async fn close_at_provider(
        &self,
        reconciler: &Reconciler,
        created_before: i64,
        batch: u32,
    ) -> Result<Vec<String>, StoreError> {
        let lease =
            i64::try_from(self.config.expire_check_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let mut closed = Vec::new();
        let mut failed = 0usize;
        for _ in 0..MAX_BATCHES_PER_TICK {
            let now = now_ms();
            let some = self
                .store
                .claim_expired(created_before, now, now.saturating_add(lease), batch)
                .await?;
            for order in &some {
                match self.close_one(reconciler, order).await {
                    Ok(true) => closed.push(order.out_trade_no.clone()),
                    Ok(false) => {}
                    Err(e) => {
                        failed += 1;
                        crate::metrics::provider_close(&order.provider, "error");
                        tracing::warn!(order = %order.out_trade_no, provider = %order.provider, error = %e,
                            "cannot close the expired order at its provider; trying again on a later sweep");
                    }
                }
            }
            if some.len() < batch as usize {
                break;
            }
        }
        crate::metrics::orders_expired(closed.len());
        if !closed.is_empty() || failed > 0 {
            tracing::info!(
                closed = closed.len(),
                failed,
                expire_after_secs = self.config.expire_after_secs,
                "closed unpaid orders past their lifetime (at the provider, then locally)"
            );
        }
        Ok(closed)
    }

    /// Closes one expired order at its provider and then locally; true if it was closed
    /// locally now. An order the provider says is paid is reconciled instead.
    async fn close_one(&self, reconciler: &Reconciler, order: &Order) -> Result<bool, String> {
        let api = match reconciler.apis().get(&order.provider, &order.account) {
            Ok(api) => api,
            // Nothing to call: close here only, as without `close_at_provider`.
            Err(_) => {
                return self
                    .store
                    .close_order(&order.out_trade_no)
                    .await
                    .map_err(|e| e.to_string())
            }
        };
        match api
            .close(reconciler.apis().http(), crate::reconcile::order_ref(order))
            .await
            .map_err(|e| e.to_string())?
        {
            CloseOutcome::Closed => {
                crate::metrics::provider_close(&order.provider, "closed");
                self.store
                    .close_order(&order.out_trade_no)
                    .await
                    .map_err(|e| e.to_string())
            }
            CloseOutcome::AlreadyPaid => {
                crate::metrics::provider_close(&order.provider, "paid");
                let r = reconciler.check(order).await;
                match r.outcome {
                    Outcome::Paid => Ok(false),
                    // The close was refused, yet the trade is not paid (e.g. already
                    // closed there): nothing can pay it any more.
                    Outcome::Unpaid => self
                        .store
                        .close_order(&order.out_trade_no)
                        .await
                        .map_err(|e| e.to_string()),
                    Outcome::Error | Outcome::Skipped => Err(format!(
                        "the provider refused the close as paid, and the query failed: {}",
                        r.reason.as_deref().unwrap_or("?")
                    )),
                }
            }
        }
    }

    /// Runs every `expire_check_secs` until the task is dropped.
    pub async fn run(self) {
        let every = Duration::from_secs(self.config.expire_check_secs.max(1));
        loop {
            if let Err(e) = self.close_expired().await {
                tracing::error!(error = %e, "order expiry cannot reach the database; trying again later");
            }
            tokio::time::sleep(every).await;
        }
    }
}

/// Starts the expiry job of `app` in the background, unless `[orders] expire_after_secs`
/// is 0. Abort the handle (or drop the runtime) to stop it.
pub fn start(app: &App) -> Option<tokio::task::JoinHandle<()>> {
    if app.config.orders.expire_after_secs == 0 {
        return None;
    }
    Some(tokio::spawn(expirer(app).run()))
}

/// The expiry job of `app` as configured (with `close_at_provider`, closing at the
/// provider first).
pub fn expirer(app: &App) -> Expirer {
    let expirer = Expirer::new(app.store.clone(), app.config.orders.clone());
    if app.config.orders.close_at_provider {
        expirer.with_provider_close(Arc::new(Reconciler::new(app)))
    } else {
        expirer
    }
}

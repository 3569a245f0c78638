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
//! Closing the order at the provider (WeChat `closeorder`, Alipay `trade.close`) is not
//! done here: the host holds notification keys, not the merchant's API credentials.

use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::config::OrdersConfig;
use crate::store::{now_ms, Store, StoreError};

/// Batches in a row before the job yields to its next tick, so that a backlog of
/// millions is worked off without holding the (SQLite) writer for long stretches.
const MAX_BATCHES_PER_TICK: usize = 100;

/// Closes expired orders.
pub struct Expirer {
    store: Arc<dyn Store>,
    config: OrdersConfig,
}

impl Expirer {
    /// An expirer over `store` with `config`'s lifetime and batch size.
    pub fn new(store: Arc<dyn Store>, config: OrdersConfig) -> Expirer {
        Expirer { store, config }
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
    let expirer = Expirer::new(app.store.clone(), app.config.orders.clone());
    Some(tokio::spawn(expirer.run()))
}

//! Retention (`[retention]`): a background job that deletes notifications rejected
//! without ever verifying once they are `rejected_days` old, and the handler write audit
//! (and the shadow runs' recorded differences) once `[audit] keep_days` old, and refreshes
//! the gauges ops alert on before the disk fills (`paynotify_database_bytes`,
//! `paynotify_notifications_rejected_rows`).
//!
//! Anyone can send notifications that fail verification, and every one is stored (so a
//! genuine one rejected for a misconfigured key can be replayed once the key is fixed):
//! without this, a stranger could grow the database without bound. Their bodies are cut
//! when the verdict is recorded (see `store::retention`); this job bounds their number by
//! age. Verified notifications, rejected or not, are never deleted.
//!
//! Every host process runs it; that is safe: each batch is one `DELETE` (per table) of at
//! most [`PRUNE_BATCH`] rows, so it never holds a long lock (the SQLite writer, PostgreSQL row
//! locks), and on PostgreSQL a process skips the rows another one is deleting.

use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::config::{AuditConfig, RetentionConfig};
use crate::store::audit::Pruned;
use crate::store::{Store, StoreError};
use crate::time::{now_ms, Millis};

/// Rows deleted per statement.
pub const PRUNE_BATCH: u32 = 1000;

/// Pause between two full batches, so that payments get the (SQLite) writer in between.
const BETWEEN_BATCHES: Duration = Duration::from_millis(20);

/// How often the database size and the rejected rows are counted again.
const GAUGES_EVERY: Duration = Duration::from_secs(60);

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// Deletes old rejected notifications and old audit rows, and keeps the retention gauges
/// fresh.
pub struct Retention {
    store: Arc<dyn Store>,
    config: RetentionConfig,
    audit: AuditConfig,
}

impl Retention {
    /// A job over `store` with `config`'s age and interval, keeping audit rows for the
    /// default `[audit] keep_days` (see [`Retention::with_audit`]).
    pub fn new(store: Arc<dyn Store>, config: RetentionConfig) -> Retention {
        Retention {
            store,
            config,
            audit: AuditConfig::default(),
        }
    }

    /// The same job keeping audit rows for `audit.keep_days`.
    pub fn with_audit(mut self, audit: AuditConfig) -> Retention {
        self.audit = audit;
        self
    }

    /// Deletes the notifications rejected without verifying that are older than
    /// `rejected_days`; returns how many.
    pub async fn prune(&self) -> Result<u64, StoreError> {
        let days = i64::try_from(self.config.rejected_days).unwrap_or(i64::MAX);
        self.prune_before(now_ms().saturating_sub(days.saturating_mul(DAY_MS)))
            .await
    }

    /// Deletes the notifications rejected without verifying that arrived before
    /// `received_before`, [`PRUNE_BATCH`] at a time until none is left; returns how many.
    pub async fn prune_before(&self, received_before: Millis) -> Result<u64, StoreError> {
        let mut total = 0u64;
        loop {
            let deleted = self
                .store
                .prune_rejected(received_before, PRUNE_BATCH)
                .await?;
            crate::metrics::notifications_pruned(deleted);
            total += deleted;
            if deleted < u64::from(PRUNE_BATCH) {
                break;
            }
            tokio::time::sleep(BETWEEN_BATCHES).await;
        }
        if total > 0 {
            tracing::info!(
                deleted = total,
                rejected_days = self.config.rejected_days,
                "deleted notifications rejected without verifying, past their retention"
            );
        }
        Ok(total)
    }

    /// Deletes the recorded handler writes and shadow differences older than
    /// `[audit] keep_days` (whether or not `[audit] enabled`: rows recorded before it was
    /// turned off age out too); returns how many.
    pub async fn prune_audit(&self) -> Result<Pruned, StoreError> {
        let days = i64::try_from(self.audit.keep_days).unwrap_or(i64::MAX);
        self.prune_audit_before(now_ms().saturating_sub(days.saturating_mul(DAY_MS)))
            .await
    }

    /// Deletes the recorded handler writes and shadow differences created before
    /// `created_before`, [`PRUNE_BATCH`] per table at a time until none is left; returns
    /// how many.
    pub async fn prune_audit_before(&self, created_before: Millis) -> Result<Pruned, StoreError> {
        let mut total = Pruned::default();
        loop {
            let chunk = self
                .store
                .audit()
                .prune(created_before, PRUNE_BATCH)
                .await?;
            total.writes += chunk.writes;
            total.differences += chunk.differences;
            if !chunk.full(PRUNE_BATCH) {
                break;
            }
            tokio::time::sleep(BETWEEN_BATCHES).await;
        }
        if total != Pruned::default() {
            tracing::info!(
                writes = total.writes,
                shadow_differences = total.differences,
                keep_days = self.audit.keep_days,
                "deleted handler write audit rows past their retention"
            );
        }
        Ok(total)
    }

    /// Counts the database's size and its rejected rows into their gauges. A figure
    /// that cannot be read keeps its last value (and is logged): an alert should not
    /// clear because the database is briefly unreachable.
    pub async fn refresh_gauges(&self) {
        match self.store.database_bytes().await {
            Ok(bytes) => crate::metrics::database_bytes(bytes),
            Err(e) => tracing::warn!(error = %e, "metrics: cannot read the database size"),
        }
        match self.store.count_rejected().await {
            Ok(rows) => crate::metrics::rejected_rows(rows),
            Err(e) => tracing::warn!(error = %e, "metrics: cannot count rejected notifications"),
        }
    }

    /// Refreshes the gauges now and every minute, and prunes (rejected notifications, then
    /// the audit) now and every `prune_interval_secs`, until the task is dropped. A prune
    /// that fails is logged and tried again at the next interval.
    pub async fn run(self) {
        let mut gauges = tokio::time::interval(GAUGES_EVERY);
        let mut prune =
            tokio::time::interval(Duration::from_secs(self.config.prune_interval_secs.max(1)));
        // After a long prune, carry on from now instead of catching up missed ticks.
        gauges.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = gauges.tick() => self.refresh_gauges().await,
                _ = prune.tick() => {
                    if let Err(e) = self.prune().await {
                        tracing::error!(error = %e, "retention cannot reach the database; trying again later");
                    }
                    if let Err(e) = self.prune_audit().await {
                        tracing::error!(error = %e, "retention cannot prune the handler write audit; trying again later");
                    }
                }
            }
        }
    }
}

/// Starts the retention job of `app` in the background. Abort the handle (or drop the
/// runtime) to stop it.
pub fn start(app: &App) -> tokio::task::JoinHandle<()> {
    let job = Retention::new(app.store.clone(), app.config.retention.clone())
        .with_audit(app.config.audit.clone());
    tokio::spawn(job.run())
}

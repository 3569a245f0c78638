//! The task worker: runs the tasks handlers enqueued (the outbox) after their payment
//! committed, retrying failures with backoff and parking a task as dead after the last
//! attempt, every attempt's error kept.
//!
//! Tasks are claimed with a lease: a worker that dies mid-task leaves it to be claimed
//! again when the lease runs out, so a task runs at least once and, while its worker is
//! alive, on one worker at a time. `run-task` should therefore be idempotent.

use std::sync::Arc;
use std::time::Duration;

use crate::config::TasksConfig;
use crate::pipeline::NotifyKeys;
use crate::plugins::bindings;
use crate::plugins::capabilities::{CallContext, CallTags, DbAccess};
use crate::plugins::Registry;
use crate::store::{now_ms, Store, StoreError, TaskEnd, TaskRecord};

/// How long a task whose plugin is not loaded waits before it is looked at again.
const UNLOADED_WAIT: Duration = Duration::from_secs(60);

/// Most tasks claimed per poll.
const BATCH: u32 = 16;

/// Runs due tasks.
pub struct Worker {
    store: Arc<dyn Store>,
    plugins: Arc<Registry>,
    notify_keys: NotifyKeys,
    config: TasksConfig,
    token: String,
}

impl Worker {
    /// A worker with its own claim token.
    pub fn new(
        store: Arc<dyn Store>,
        plugins: Arc<Registry>,
        notify_keys: NotifyKeys,
        config: TasksConfig,
    ) -> Worker {
        Worker {
            store,
            plugins,
            notify_keys,
            config,
            token: hex::encode(rand::random::<[u8; 12]>()),
        }
    }

    /// Polls forever (until the task is dropped).
    pub async fn run(self) {
        let poll = Duration::from_millis(self.config.poll_ms.max(10));
        loop {
            match self.run_due().await {
                Ok(0) => tokio::time::sleep(poll).await,
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "task worker cannot reach the database");
                    tokio::time::sleep(poll * 5).await;
                }
            }
        }
    }

    /// Claims and runs one batch of due tasks; returns how many ran.
    pub async fn run_due(&self) -> Result<usize, StoreError> {
        let now = now_ms();
        let lease_until = now
            + i64::try_from(self.config.lease_secs.saturating_mul(1000)).unwrap_or(i64::MAX / 2);
        let claimed = self
            .store
            .claim_tasks(&self.token, now, lease_until, BATCH)
            .await?;
        let n = claimed.len();
        for task in claimed {
            let end = self.attempt(&task).await;
            match &end {
                TaskEnd::Done => {
                    tracing::info!(task = task.id, name = %task.name, plugin = %task.plugin, "task done")
                }
                TaskEnd::Retry { error, at } => {
                    tracing::warn!(task = task.id, name = %task.name, error = %error, retry_in_ms = at - now_ms(), "task failed; will retry")
                }
                TaskEnd::Dead { error } => {
                    tracing::error!(task = task.id, name = %task.name, error = %error, "task failed for the last time; parked as dead")
                }
                TaskEnd::Postpone { reason, .. } => {
                    tracing::warn!(task = task.id, reason = %reason, "task postponed")
                }
            }
            if !self.store.finish_task(task.id, &self.token, &end).await? {
                tracing::warn!(
                    task = task.id,
                    "task lease expired before it finished; another worker owns it now"
                );
            }
        }
        Ok(n)
    }

    /// One attempt at one task.
    async fn attempt(&self, task: &TaskRecord) -> TaskEnd {
        let Some(plugin) = self.plugins.get(&task.plugin) else {
            return TaskEnd::Postpone {
                reason: format!(
                    "no handler is loaded for type `{}`; waiting for it",
                    task.plugin
                ),
                at: now_ms() + UNLOADED_WAIT.as_millis() as i64,
            };
        };
        let attempt = u32::try_from(task.attempts).unwrap_or(0).saturating_add(1);
        let notify_key = match (&task.provider, &task.account) {
            (Some(p), Some(a)) => self.notify_keys.get(&(p.clone(), a.clone())).copied(),
            _ => None,
        };
        let ctx = CallContext {
            manifest: plugin.manifest.clone(),
            tags: CallTags {
                plugin: plugin.plugin_type.clone(),
                version: plugin.metadata.version.clone(),
                out_trade_no: task.out_trade_no.clone(),
                notification_id: None,
                task_id: Some(task.id),
            },
            db: DbAccess::Autocommit(self.store.clone()),
            notify_key,
            provider: task.provider.clone(),
            account: task.account.clone(),
            http: self.plugins.runtime().http_client(),
            poisoned: None,
        };
        let wit_task = bindings::Task {
            id: task.id,
            name: task.name.clone(),
            payload: task.payload.clone(),
            attempt,
            out_trade_no: task.out_trade_no.clone(),
        };
        let (_, result) = self
            .plugins
            .runtime()
            .run_task(&plugin.compiled, ctx, plugin.limits, wit_task)
            .await;
        match result {
            Ok(()) => TaskEnd::Done,
            Err(failure) => {
                let error = format!("attempt {attempt}: {failure}");
                match self.config.backoff_secs.get(attempt as usize - 1) {
                    Some(secs) => TaskEnd::Retry {
                        error,
                        at: now_ms()
                            + i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX / 2),
                    },
                    None => TaskEnd::Dead { error },
                }
            }
        }
    }
}

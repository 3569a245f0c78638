//! The task worker: runs the tasks handlers enqueued (the outbox) after their payment
//! committed, retrying failures with backoff and parking a task as dead after the last
//! attempt, every attempt's error kept.
//!
//! A task never runs on two workers at once, across host processes too. A worker claims
//! one task at a time under a lease (`tasks.lease_secs`) and renews it every third of the
//! lease while the attempt runs, so a `run-task` that waits on a slow backend for longer
//! than the lease keeps its claim. Every renewal and the final update are conditional on
//! the worker's claim token: if the task was taken over (the lease ran out) or the renewal
//! cannot be confirmed before the lease would run out (database unreachable), the attempt
//! is abandoned there and then, before another worker may claim it. Claiming one task at
//! a time, rather than a batch that waits under one lease, also spreads a queue of slow
//! tasks over every host instead of one host's backlog.
//!
//! A worker that dies mid-task leaves it to be claimed again when the lease runs out, so a
//! task still runs at least once (its side effect may have happened before the crash):
//! `run-task` should be idempotent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::TasksConfig;
use crate::pipeline::NotifyKeys;
use crate::plugins::bindings;
use crate::plugins::capabilities::DbAccess;
use crate::plugins::Registry;
use crate::store::audit::{CallKind, CallRef};
use crate::store::{Store, StoreError, TaskEnd, TaskRecord};
use crate::time::now_ms;

/// How long a task whose plugin is not loaded waits before it is looked at again.
const UNLOADED_WAIT: Duration = Duration::from_secs(60);

/// How soon a lease renewal that failed (database error) is tried again, at most.
const RENEW_RETRY: Duration = Duration::from_millis(500);

/// Runs due tasks.
pub struct Worker {
    store: Arc<dyn Store>,
    plugins: Arc<Registry>,
    notify_keys: NotifyKeys,
    config: TasksConfig,
    token: String,
    /// Record handlers' writes (`[audit] enabled`).
    audit: bool,
}

impl Worker {
    /// A worker with its own claim token, recording handlers' writes if `audit`.
    pub fn new(
        store: Arc<dyn Store>,
        plugins: Arc<Registry>,
        notify_keys: NotifyKeys,
        config: TasksConfig,
        audit: bool,
    ) -> Worker {
        Worker {
            store,
            plugins,
            notify_keys,
            config,
            audit,
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

    /// The lease a claim or renewal takes.
    fn lease(&self) -> Duration {
        Duration::from_secs(self.config.lease_secs.max(1))
    }

    /// `now_ms()` plus the lease.
    fn lease_until(&self) -> i64 {
        now_ms() + i64::try_from(self.lease().as_millis()).unwrap_or(i64::MAX / 2)
    }

    /// Claims one due task and runs it while holding its lease; returns how many it claimed
    /// (0 or 1).
    pub async fn run_due(&self) -> Result<usize, StoreError> {
        // Taken before the claim is sent: the lease is counted from no later than the
        // database's start of it, so this worker's idea of it never outlasts the stored one.
        let claimed_at = Instant::now();
        let claimed = self
            .store
            .claim_tasks(&self.token, now_ms(), self.lease_until(), 1)
            .await?;
        let Some(task) = claimed.into_iter().next() else {
            return Ok(0);
        };
        let Some(end) = self.attempt_holding_lease(&task, claimed_at).await else {
            return Ok(1);
        };
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
        Ok(1)
    }

    /// Runs one attempt, renewing the task's lease every third of it. `None` if the
    /// attempt was abandoned because the claim was lost or could not be confirmed in time;
    /// the task is then another worker's (or will be once the stored lease runs out).
    ///
    /// The renewal is awaited between polls of the attempt, not raced against it, so an
    /// attempt that ends mid-renewal never cuts a statement off halfway.
    async fn attempt_holding_lease(
        &self,
        task: &TaskRecord,
        claimed_at: Instant,
    ) -> Option<TaskEnd> {
        let lease = self.lease();
        // Stop a little before the lease this worker last confirmed runs out: another
        // host's clock may run ahead of this one's.
        let margin = lease / 6;
        let mut held_until = claimed_at + lease;
        let mut next_renewal = claimed_at + lease / 3;
        let attempt = self.attempt(task);
        tokio::pin!(attempt);
        loop {
            let give_up = held_until.checked_sub(margin).unwrap_or(held_until);
            tokio::select! {
                biased;
                end = &mut attempt => return Some(end),
                () = tokio::time::sleep_until(next_renewal.min(give_up).into()) => {}
            }
            let now = Instant::now();
            if now >= give_up {
                tracing::error!(
                    task = task.id,
                    name = %task.name,
                    "task lease could not be renewed before it ran out; attempt abandoned \
                     (another worker may claim the task now)"
                );
                return None;
            }
            let renewal = self
                .store
                .renew_task(task.id, &self.token, self.lease_until());
            match tokio::time::timeout_at(give_up.into(), renewal).await {
                Ok(Ok(true)) => {
                    held_until = now + lease;
                    next_renewal = now + lease / 3;
                }
                Ok(Ok(false)) => {
                    tracing::error!(
                        task = task.id,
                        name = %task.name,
                        "task lease lost while the attempt ran (another worker took the task \
                         over); attempt abandoned"
                    );
                    return None;
                }
                Ok(Err(e)) => {
                    tracing::warn!(task = task.id, error = %e, "cannot renew the task lease; trying again");
                    next_renewal = Instant::now() + (lease / 3).min(RENEW_RETRY);
                }
                // The next turn of the loop gives up.
                Err(_elapsed) => next_renewal = give_up,
            }
        }
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
        let ctx = self
            .plugins
            .call_context(&plugin)
            .order(task.out_trade_no.clone())
            .task(task.id)
            .account(task.provider.clone(), task.account.clone(), notify_key)
            .db(DbAccess::Autocommit(self.store.clone()))
            .audit_each(self.audit.then(|| CallRef {
                call: CallKind::Task,
                out_trade_no: task.out_trade_no.clone(),
                notification_id: None,
                out_refund_no: None,
                task_id: Some(task.id),
                build: plugin.build_id(),
            }))
            .build();
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

//! Reconciliation: asking the provider about orders still unpaid, so a notification
//! that never arrived (or was never accepted) does not lose a payment.
//!
//! For each unpaid order older than `[reconcile] older_than_secs`, the order's account
//! queries its provider (WeChat v2 `orderquery`, v3 `GET …/out-trade-no/{no}`, Alipay
//! `alipay.trade.query`; CloudPay has no query API and is skipped). The answer is
//! verified like a notification. When it says paid, the raw answer is stored as a
//! notification (marked with [`crate::providers::api::SOURCE_HEADER`]) and settled
//! through [`Pipeline::settle_verified`]: the same transaction as a notification, with
//! the same order, account and amount checks, the handler inside it, and the order row
//! lock making whichever of this and a real notification comes second a duplicate.
//!
//! Every host process may run the job: orders are claimed with a lease
//! ([`Store::claim_reconcile`], `FOR UPDATE SKIP LOCKED` on PostgreSQL), so one order is
//! queried by one process at a time and at most once per `interval_secs`. Answers that
//! say "not paid" are counted, not stored (they would be most of the table).

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tracing::Instrument;

use crate::app::App;
use crate::config::ReconcileConfig;
use crate::pipeline::{Pipeline, Processed};
use crate::providers::api::{OrderRef, ProviderAnswer};
use crate::providers::registry::Apis;
use crate::providers::{NoticeKind, ProviderKind};
use crate::store::{status, NewNotification, Order, Store, StoreError, Verdict};
use crate::time::now_ms;

/// What reconciling one order found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The provider says paid, and the order is paid now (by this or by a notification).
    Paid,
    /// The provider says not paid (or has no such trade).
    Unpaid,
    /// No usable answer: the call failed, the answer did not verify, its amount or
    /// account did not match, or the handler failed. Nothing changed.
    Error,
    /// Not asked: no query API for the order's account (CloudPay, missing keys), or the
    /// order is not unpaid.
    Skipped,
}

impl Outcome {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Paid => "paid",
            Outcome::Unpaid => "unpaid",
            Outcome::Error => "error",
            Outcome::Skipped => "skipped",
        }
    }
}

/// One order's result.
#[derive(Debug, Clone, Serialize)]
pub struct OrderResult {
    /// The order.
    pub out_trade_no: String,
    /// Its provider.
    pub provider: String,
    /// Its merchant account.
    pub account: String,
    /// What was found.
    pub outcome: Outcome,
    /// The provider's trade state, when it answered (`NOTPAY`, `TRADE_SUCCESS`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The stored answer, when one was stored (paid or refused answers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notification_id: Option<i64>,
    /// Its verdict in the pipeline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// Why, for errors and skips.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A run's results.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Orders found paid.
    pub paid: usize,
    /// Orders still unpaid.
    pub unpaid: usize,
    /// Orders that could not be checked.
    pub errors: usize,
    /// Orders not asked about.
    pub skipped: usize,
    /// Each order, in the order checked.
    pub orders: Vec<OrderResult>,
}

impl Report {
    fn push(&mut self, r: OrderResult) {
        match r.outcome {
            Outcome::Paid => self.paid += 1,
            Outcome::Unpaid => self.unpaid += 1,
            Outcome::Error => self.errors += 1,
            Outcome::Skipped => self.skipped += 1,
        }
        self.orders.push(r);
    }
}

/// Asks providers about unpaid orders and settles the payments they report.
pub struct Reconciler {
    store: Arc<dyn Store>,
    pipeline: Arc<Pipeline>,
    apis: Arc<Apis>,
    config: ReconcileConfig,
}

impl Reconciler {
    /// A reconciler over the app's store, pipeline and provider APIs.
    pub fn new(app: &App) -> Reconciler {
        Reconciler {
            store: app.store.clone(),
            pipeline: app.pipeline.clone(),
            apis: app.apis.clone(),
            config: app.config.reconcile.clone(),
        }
    }

    /// The provider APIs.
    pub fn apis(&self) -> &Apis {
        &self.apis
    }

    /// Checks up to `[reconcile] batch` unpaid orders created more than `older_than_secs`
    /// (default: the configured age) ago. `force` (a run asked for by ops) also takes
    /// orders queried within the last interval.
    pub async fn run_once(
        &self,
        older_than_secs: Option<u64>,
        force: bool,
    ) -> Result<Report, StoreError> {
        let age = older_than_secs.unwrap_or(self.config.older_than_secs);
        let now = now_ms();
        // Inclusive: `--older-than 0` takes every unpaid order, even one made this ms.
        let created_before = now.saturating_sub(secs_ms(age)).saturating_add(1);
        let until = now.saturating_add(secs_ms(self.config.interval_secs));
        let due = if force { i64::MAX } else { now };
        let orders = self
            .store
            .claim_reconcile(created_before, due, until, self.config.batch)
            .await?;
        let mut report = Report::default();
        for order in &orders {
            report.push(self.check(order).await);
        }
        if !orders.is_empty() {
            tracing::info!(
                paid = report.paid,
                unpaid = report.unpaid,
                errors = report.errors,
                skipped = report.skipped,
                "reconciliation run"
            );
        }
        Ok(report)
    }

    /// Checks one order now, whatever its age.
    pub async fn run_order(&self, out_trade_no: &str) -> Result<Report, StoreError> {
        let mut report = Report::default();
        let Some(order) = self.store.get_order(out_trade_no).await? else {
            return Err(StoreError::Invalid(format!("no order `{out_trade_no}`")));
        };
        report.push(self.check(&order).await);
        Ok(report)
    }

    /// Asks the provider about one order and settles what it reports paid.
    pub async fn check(&self, order: &Order) -> OrderResult {
        let span = tracing::info_span!("reconcile", order = %order.out_trade_no, provider = %order.provider);
        let result = self.check_inner(order).instrument(span).await;
        crate::metrics::reconciled(&order.provider, result.outcome.as_str());
        match result.outcome {
            Outcome::Paid => tracing::info!(
                order = %order.out_trade_no,
                notification = result.notification_id,
                "provider reports the order paid; settled"
            ),
            Outcome::Error => tracing::warn!(
                order = %order.out_trade_no,
                reason = result.reason.as_deref().unwrap_or(""),
                "order not reconciled"
            ),
            _ => tracing::debug!(outcome = result.outcome.as_str(), "order reconciled"),
        }
        result
    }

    async fn check_inner(&self, order: &Order) -> OrderResult {
        let mut r = OrderResult {
            out_trade_no: order.out_trade_no.clone(),
            provider: order.provider.clone(),
            account: order.account.clone(),
            outcome: Outcome::Skipped,
            state: None,
            notification_id: None,
            verdict: None,
            reason: None,
        };
        if order.status != status::UNPAID {
            r.reason = Some(format!("order is {}", status::name(order.status)));
            return r;
        }
        let api = match self.apis.get(&order.provider, &order.account) {
            Ok(api) => api,
            Err(why) => {
                r.reason = Some(why);
                return r;
            }
        };
        let kind = api.kind();
        r.outcome = Outcome::Error;
        let answer = match api.query(self.apis.http(), order_ref(order)).await {
            Ok(a) => a,
            Err(e) => {
                r.reason = Some(e.to_string());
                return r;
            }
        };
        let notice = match api.verify_query(&answer.inbound(&order.account)) {
            Ok(n) => n,
            Err(rejection) => {
                // Kept for ops: an answer that does not verify is worth a look.
                let reason = format!("provider answer refused: {rejection}");
                r.notification_id = self.store_answer(kind, order, &answer).await;
                if let Some(id) = r.notification_id {
                    let p = self
                        .pipeline
                        .reject_stored(id, kind, reason.clone(), Some(&order.out_trade_no))
                        .await;
                    r.verdict = Some(p.verdict);
                }
                r.reason = Some(reason);
                return r;
            }
        };
        if let NoticeKind::NotPaid { state } = &notice.kind {
            r.outcome = Outcome::Unpaid;
            r.state = Some(state.clone());
            return r;
        }
        // WeChat names it `trade_state`, Alipay `trade_status`.
        r.state = ["trade_state", "trade_status"]
            .iter()
            .find_map(|k| notice.fields.get(*k).cloned());
        let Some(id) = self.store_answer(kind, order, &answer).await else {
            r.reason = Some("cannot store the provider's answer".into());
            return r;
        };
        r.notification_id = Some(id);
        let processed: Processed = if notice.out_trade_no != order.out_trade_no {
            let reason = format!(
                "asked about order `{}`, the answer is about `{}`",
                order.out_trade_no, notice.out_trade_no
            );
            self.pipeline
                .reject_stored(id, kind, reason, Some(&order.out_trade_no))
                .await
        } else {
            self.pipeline.settle_verified(id, kind, notice).await
        };
        r.verdict = Some(processed.verdict);
        r.reason = processed.reason;
        r.outcome = match processed.verdict {
            Verdict::Paid | Verdict::Duplicate | Verdict::PaidAfterClose => Outcome::Paid,
            Verdict::Ignored => Outcome::Unpaid,
            // A query answer is a payment; refund verdicts cannot come of it.
            Verdict::Received
            | Verdict::Rejected
            | Verdict::Failed
            | Verdict::Refunded
            | Verdict::RefundUnapplied
            | Verdict::RefundPending => Outcome::Error,
        };
        r
    }

    /// Stores a provider's answer as a notification (verdict `received`); its id.
    async fn store_answer(
        &self,
        kind: ProviderKind,
        order: &Order,
        answer: &ProviderAnswer,
    ) -> Option<i64> {
        let n = NewNotification {
            received_at: answer.received_at,
            provider: kind.as_str().to_owned(),
            account: Some(order.account.clone()),
            remote_addr: None,
            headers: answer.stored_headers(),
            body: answer.body.clone(),
            truncated: false,
        };
        match self.store.insert_notification(&n).await {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::error!(error = %e, "cannot store the provider's answer");
                None
            }
        }
    }

    /// Runs every `interval_secs` until the task is dropped.
    pub async fn run(self) {
        let every = Duration::from_secs(self.config.interval_secs.max(1));
        loop {
            if let Err(e) = self.run_once(None, false).await {
                tracing::error!(error = %e, "reconciliation cannot reach the database; trying again later");
            }
            tokio::time::sleep(every).await;
        }
    }
}

fn secs_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// Starts the reconciliation job of `app` in the background, if `[reconcile] enabled`.
pub fn start(app: &App) -> Option<tokio::task::JoinHandle<()>> {
    if !app.config.reconcile.enabled {
        return None;
    }
    Some(tokio::spawn(Reconciler::new(app).run()))
}

/// What a provider call needs to know about `order`.
pub(crate) fn order_ref(order: &Order) -> OrderRef<'_> {
    OrderRef {
        out_trade_no: &order.out_trade_no,
        sub_mchid: order.sub_mchid.as_deref(),
    }
}

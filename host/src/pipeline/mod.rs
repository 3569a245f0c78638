//! Processing one notification (SPEC §5):
//!
//! 1. store it as received, committed before anything else: nothing received is lost
//!    (`raw.rs`);
//! 2. check its content type and verify it with its provider ([`Pipeline::receive`],
//!    [`crate::providers`]);
//! 3. find its order, 4. check amount and account;
//! 5. in ONE transaction: mark the order paid only if unpaid, run the type's handler with
//!    its writes and tasks in the same transaction, record the result and (the write
//!    audit) every write the handler made; commit (`settle.rs`, the handler call in
//!    `pay.rs`); a refund takes `refund.rs` instead. After the commit, a candidate build
//!    staged for the type repeats the call on the shadow worker ([`crate::shadow`]);
//! 6. answer the provider in its own convention (`Pipeline::answer`).
//!
//! Steps 1 and 5 are group commits (`batch.rs`): notifications arriving together share
//! one transaction and one commit.

mod batch;
mod owner;
mod pay;
mod raw;
mod refund;
mod settle;

use std::collections::HashMap;
use std::sync::Arc;

use tracing::Instrument;

use crate::plugins::Registry;
use crate::providers::registry::Providers;
use crate::providers::{Answer, ContentTypeRefusal, Inbound, NoticeKind, Provider, ProviderKind};
use crate::shadow::Shadows;
use crate::store::{NewNotification, NotificationRecord, Store, Verdict};
use refund::Refunder;

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
    /// Every `Content-Type` value as sent (bytes: a value that is not text is refused,
    /// which the lossy text of `headers` would hide).
    pub content_types: Vec<Vec<u8>>,
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
    /// Why, for rejections and failures (stored and logged; the answer says less).
    pub reason: Option<String>,
    /// Rejected because it failed verification (content type, signature, account,
    /// format, size), as opposed to a verified notification refused later: the kind one
    /// client address may send only so many of (see `http/notify.rs`).
    pub unverified: bool,
    /// The provider's answer.
    pub answer: Answer,
}

/// Notify keys by (provider, account), for the handlers' `crypto` capability.
pub type NotifyKeys = HashMap<(String, String), [u8; 32]>;

/// How notifications share commits.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Most notifications in one transaction; 1 gives each its own.
    pub max: usize,
    /// Loops settling batches at once (SQLite has one writer: 1; PostgreSQL: several).
    pub settlers: usize,
}

/// How handler calls in the payment and refund transactions are reviewed.
#[derive(Clone)]
pub struct Review {
    /// Record their writes with their transaction (`[audit] enabled`).
    pub audit: bool,
    /// Run staged candidates beside them.
    pub shadows: Arc<Shadows>,
}

/// The notification pipeline.
pub struct Pipeline {
    store: Arc<dyn Store>,
    providers: Arc<Providers>,
    max_body_bytes: usize,
    /// Step 1: raw notifications waiting to be stored.
    raw: raw::RawQueue,
    /// Step 5: verified payments waiting to be settled.
    settle: settle::SettleQueue,
    /// Applies verified refunds, each in a transaction of its own.
    refunder: Refunder,
}

/// A notification once stored (step 1): what every later step reads, on arrival and on
/// a replay alike.
struct Stored<'a> {
    id: i64,
    provider: &'a str,
    account: Option<&'a str>,
    headers: &'a [(String, String)],
    body: &'a [u8],
    truncated: bool,
    /// Timestamp windows are checked against this, so a replay verifies as on arrival.
    received_at: i64,
}

/// A verdict reached outside the payment transaction: recorded on the notification,
/// then answered.
struct Outcome<'a> {
    verdict: Verdict,
    reason: String,
    /// The order it was about, once verified.
    order: Option<&'a str>,
    /// The account it was verified for.
    account: Option<&'a str>,
    /// The HTTP status of the answer when it is a failure (200: the provider's own).
    status: u16,
}

impl<'a> Outcome<'a> {
    fn new(verdict: Verdict, reason: String, status: u16) -> Outcome<'a> {
        Outcome {
            verdict,
            reason,
            order: None,
            account: None,
            status,
        }
    }

    /// The same outcome, recorded under this order and account.
    fn about(self, order: Option<&'a str>, account: &'a str) -> Outcome<'a> {
        Outcome {
            order,
            account: Some(account),
            ..self
        }
    }
}

impl Pipeline {
    /// A pipeline over these parts, its handler calls reviewed by `review`. Starts its
    /// commit loops (needs a tokio runtime).
    pub fn new(
        store: Arc<dyn Store>,
        providers: Arc<Providers>,
        plugins: Arc<Registry>,
        notify_keys: NotifyKeys,
        max_body_bytes: usize,
        batching: Batching,
        review: Review,
    ) -> Pipeline {
        Pipeline {
            raw: raw::spawn(store.clone(), batching.max),
            refunder: Refunder::new(plugins.clone(), notify_keys.clone(), review.clone()),
            settle: settle::spawn(store.clone(), plugins, notify_keys, batching, review),
            store,
            providers,
            max_body_bytes,
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
            let received_at = crate::time::now_ms();
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
            let id = match self.raw.submit(n.clone()).await {
                Ok(id) => id,
                Err(e) => {
                    // Not stored, so not accepted: the provider must retry.
                    tracing::error!(error = %e, "cannot store notification");
                    let reason = Some(format!("storage unavailable: {e}"));
                    return self.answer(&n.provider, None, Verdict::Failed, reason, 500);
                }
            };
            tracing::Span::current().record("id", id);
            let stored = Stored {
                id,
                provider: &n.provider,
                account: n.account.as_deref(),
                headers: &n.headers,
                body: &n.body,
                truncated: n.truncated,
                received_at,
            };
            // Checked on arrival only: a replay is of a notification ops chose to re-drive.
            let content_types: Vec<&[u8]> = r.content_types.iter().map(Vec::as_slice).collect();
            if let Some(refused) = self.refuse_content_type(&stored, &content_types).await {
                return refused;
            }
            self.process(&stored).await
        }
        .instrument(span)
        .await
    }

    /// Runs a stored notification through the pipeline again. Exactly-once still holds:
    /// a notification whose order is already paid changes nothing. Ops entry points go
    /// through [`crate::replay::replay`], which also re-verifies stored query answers.
    pub async fn replay(&self, record: &NotificationRecord) -> Processed {
        let span = tracing::info_span!("replay", provider = %record.provider, id = record.id, order = tracing::field::Empty, verdict = tracing::field::Empty);
        let stored = Stored {
            id: record.id,
            provider: &record.provider,
            account: record.account.as_deref(),
            headers: &record.headers,
            body: &record.body,
            truncated: record.truncated,
            received_at: record.received_at,
        };
        self.process(&stored).instrument(span).await
    }

    /// Records a notification that failed verification outside the notification path
    /// (a provider answer that did not verify) as rejected, under the order it was about.
    pub async fn reject_stored(
        &self,
        id: i64,
        provider: ProviderKind,
        reason: String,
        out_trade_no: Option<&str>,
    ) -> Processed {
        let outcome = Outcome {
            order: out_trade_no,
            ..Outcome::new(Verdict::Rejected, reason, 200)
        };
        self.finish_outside(id, provider.as_str(), outcome).await
    }

    /// The configured provider named `name`.
    fn provider(&self, name: &str) -> Option<&dyn Provider> {
        ProviderKind::parse(name).and_then(|k| self.providers.get(k))
    }

    /// Step 2 on arrival: a content type the provider never sends is rejected (415)
    /// without the body being parsed.
    async fn refuse_content_type(&self, n: &Stored<'_>, values: &[&[u8]]) -> Option<Processed> {
        let provider = self.provider(n.provider)?;
        let refusal = provider.check_content_type(values).err()?;
        tracing::warn!(reason = %refusal, "notification rejected");
        let status = ContentTypeRefusal::STATUS;
        let outcome = Outcome::new(Verdict::Rejected, refusal.reason.clone(), status);
        let mut p = self.finish_outside(n.id, n.provider, outcome).await;
        p.unverified = true;
        p.answer = refusal.answer(provider);
        Some(p)
    }

    /// Steps 2–6 for a stored notification: verify it, then settle a payment or apply a
    /// refund.
    async fn process(&self, n: &Stored<'_>) -> Processed {
        let Some(provider) = self.provider(n.provider) else {
            let reason = format!("provider `{}` is not configured", n.provider);
            return self.finish_unverified(n, reason, 404).await;
        };
        if n.truncated {
            let reason = format!("body is over {} bytes", self.max_body_bytes);
            return self.finish_unverified(n, reason, 413).await;
        }
        let inbound = Inbound {
            account: n.account,
            headers: n.headers,
            body: n.body,
            received_at: n.received_at,
        };
        provider.fetch_missing_keys(&inbound).await;
        let notice = match provider.verify(&inbound) {
            Ok(notice) => notice,
            Err(rejection) => {
                tracing::warn!(reason = %rejection, "notification rejected");
                return self.finish_unverified(n, rejection.to_string(), 200).await;
            }
        };
        tracing::Span::current().record("order", notice.out_trade_no.as_str());
        if let NoticeKind::Refunded(refund) = &notice.kind {
            return self.refund(n.id, provider.kind(), &notice, refund).await;
        }
        self.settle_verified(n.id, provider.kind(), notice).await
    }

    /// Records a verdict when no transaction is open, then answers.
    async fn finish_outside(&self, id: i64, provider: &str, o: Outcome<'_>) -> Processed {
        tracing::Span::current().record("verdict", o.verdict.as_str());
        if let Err(e) = self
            .store
            .finish_notification(id, o.verdict, Some(&o.reason), o.order, o.account)
            .await
        {
            // The notification stays `received` and visible for replay.
            tracing::error!(error = %e, "cannot record verdict");
        }
        self.answer(provider, Some(id), o.verdict, Some(o.reason), o.status)
    }

    /// Records that notification `n` failed verification (verdict `rejected`, no order:
    /// nothing in it can be believed), then answers with the provider's failure answer.
    async fn finish_unverified(&self, n: &Stored<'_>, reason: String, status: u16) -> Processed {
        let outcome = Outcome::new(Verdict::Rejected, reason, status);
        let mut p = self.finish_outside(n.id, n.provider, outcome).await;
        p.unverified = true;
        p.answer = self.failure_answer(n.provider, FAILED_VERIFICATION, status);
        p
    }

    /// The provider's failure answer carrying `message`, with `http_status` unless it is
    /// 200 (then the provider's own failure status); 404 for a provider not configured.
    fn failure_answer(&self, provider: &str, message: &str, http_status: u16) -> Answer {
        match self.provider(provider) {
            Some(p) => {
                let mut a = p.failure(message);
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
        }
    }

    /// Step 6: the provider's success answer for a verdict it must not send again, its
    /// failure answer (saying only [`public_message`]) for one it must.
    fn answer(
        &self,
        provider: &str,
        id: Option<i64>,
        verdict: Verdict,
        reason: Option<String>,
        http_status: u16,
    ) -> Processed {
        let accepted = matches!(
            verdict,
            Verdict::Paid
                | Verdict::Duplicate
                | Verdict::Ignored
                | Verdict::PaidAfterClose
                | Verdict::Refunded
                | Verdict::RefundUnapplied
        );
        let answer = match self.provider(provider) {
            Some(p) if accepted => p.success(),
            _ => self.failure_answer(provider, public_message(verdict), http_status),
        };
        Processed {
            notification_id: id,
            verdict,
            reason,
            unverified: false,
            answer,
        }
    }
}

/// What a failure answer says about a notification that failed verification, whatever
/// the reason: an unknown account, a bad signature and a malformed body look alike to the
/// caller, so probing teaches nothing. The reason is in the stored record and the log.
pub const FAILED_VERIFICATION: &str = "verification failed";

/// What a failure answer says for `verdict`: a category, never the detailed reason.
fn public_message(verdict: Verdict) -> &'static str {
    match verdict {
        // Verified, but about an order unknown here or not matching it (amount, account).
        Verdict::Rejected => "order not found or not matching",
        Verdict::RefundPending => "order not paid yet; retry later",
        _ => "temporary failure; retry later",
    }
}

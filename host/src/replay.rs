//! Re-driving stored notifications: one (ops replay) or every one whose handler failed
//! (bulk, once the plugin is fixed).
//!
//! A notification is replayed from its stored bytes and verified again, exactly as on
//! arrival; a stored provider answer to an order query (reconciliation), or to a refund
//! request that settled it (Alipay), is verified again as such. Exactly-once holds as for any notification: one whose order is paid
//! meanwhile changes nothing (`duplicate`).

use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::pipeline::Processed;
use crate::providers::api::{
    record_source, OUT_REFUND_NO_HEADER, RECONCILE_SOURCE, REFUND_AMOUNT_HEADER, REFUND_SOURCE,
};
use crate::providers::Rejection;
use crate::providers::{Answer, ProviderKind};
use crate::store::{NotificationRecord, StoreError, Verdict};
use crate::time::Millis;

/// Runs one stored notification through the pipeline again.
pub async fn replay(app: &App, record: &NotificationRecord) -> Processed {
    let source = record_source(&record.headers);
    if !matches!(source, Some(RECONCILE_SOURCE | REFUND_SOURCE)) {
        return app.pipeline.replay(record).await;
    }
    let refused = |reason: String| Processed {
        notification_id: Some(record.id),
        verdict: Verdict::Rejected,
        reason: Some(reason),
        unverified: false,
        answer: Answer {
            status: 404,
            content_type: None,
            body: Vec::new(),
        },
    };
    let Some(kind) = ProviderKind::parse(&record.provider) else {
        return refused(format!("provider `{}` is not known", record.provider));
    };
    let account = record.account.as_deref().unwrap_or("default");
    let api = match app.apis.get(kind.as_str(), account) {
        Ok(api) => api,
        // The answer cannot be verified any more; its stored verdict is left as it was.
        Err(why) => return refused(format!("cannot verify the stored provider answer: {why}")),
    };
    let inbound = crate::providers::Inbound {
        account: Some(account),
        headers: &record.headers,
        body: &record.body,
        received_at: record.received_at,
    };
    let verified = if source == Some(REFUND_SOURCE) {
        let out_refund_no = inbound.header(OUT_REFUND_NO_HEADER).unwrap_or("");
        // Written by this host beside the answer (never taken from a request: see
        // `http/notify.rs`), so a stored record says what its request asked for.
        match inbound
            .header(REFUND_AMOUNT_HEADER)
            .and_then(|a| a.parse::<i64>().ok())
        {
            Some(amount) => api
                .verify_refund_answer(&inbound, out_refund_no)
                .map(|n| crate::payments::refund::as_requested(n, amount)),
            None => Err(Rejection::Malformed(format!(
                "stored refund answer has no `{REFUND_AMOUNT_HEADER}`"
            ))),
        }
    } else {
        api.verify_query(&inbound)
    };
    match verified {
        Ok(notice) => app.pipeline.settle_verified(record.id, kind, notice).await,
        Err(rejection) => {
            app.pipeline
                .reject_stored(
                    record.id,
                    kind,
                    format!("provider answer refused: {rejection}"),
                    record.out_trade_no.as_deref(),
                )
                .await
        }
    }
}

/// Which failed notifications a bulk replay takes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailedFilter {
    /// Only those received at or after this time.
    #[serde(default)]
    pub since: Option<Millis>,
    /// Only those for orders of this handler type.
    #[serde(default, rename = "type")]
    pub order_type: Option<String>,
    /// At most this many (default 100, at most 10 000).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// What replaying one notification did.
#[derive(Debug, Clone, Serialize)]
pub struct Replayed {
    /// The notification.
    pub id: i64,
    /// Its order.
    pub out_trade_no: Option<String>,
    /// Where it ended up now.
    pub verdict: Verdict,
    /// Why, for failures and duplicates.
    pub reason: Option<String>,
}

/// Replays, oldest first, every notification whose handler failed and whose order is
/// still unpaid (an order paid since, by the provider's retry or another replay, is not
/// taken; one paid while this runs ends as a duplicate).
pub async fn replay_failed(app: &App, filter: &FailedFilter) -> Result<Vec<Replayed>, StoreError> {
    let records = app
        .store
        .failed_unpaid_notifications(
            filter.since,
            filter.order_type.as_deref(),
            filter.limit.unwrap_or(100),
        )
        .await?;
    let mut out = Vec::with_capacity(records.len());
    for record in &records {
        let p = replay(app, record).await;
        out.push(Replayed {
            id: record.id,
            out_trade_no: record.out_trade_no.clone(),
            verdict: p.verdict,
            reason: p.reason,
        });
    }
    Ok(out)
}

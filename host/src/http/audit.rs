//! `GET /api/admin/orders/{out_trade_no}/writes`: what the handlers wrote for an order
//! (the handler write audit), oldest first, a page at a time.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{read, ApiError};
use crate::app::App;
use crate::store::audit::{CallKind, WriteOp, WriteRecord, MAX_PAGE};
use crate::time::Millis;

/// Writes a page holds when the query gives no `limit`.
const DEFAULT_PAGE: u32 = 100;

/// Query of the writes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WritesQuery {
    /// Only writes with a larger id (the `next_after_id` of the previous page).
    after_id: Option<i64>,
    /// How many (at most 500).
    limit: Option<u32>,
}

/// The answer: a page of the order's writes.
#[derive(Debug, Serialize)]
pub struct WritesPage {
    /// The order.
    pub out_trade_no: String,
    /// Its writes, oldest first.
    pub writes: Vec<WriteView>,
    /// The `after_id` of the next page; `null` when this page was not full.
    pub next_after_id: Option<i64>,
}

/// One recorded write, its documents as JSON values.
#[derive(Debug, Serialize)]
pub struct WriteView {
    /// Id (the order of the writes).
    pub id: i64,
    /// `paid`, `refunded` or `task`.
    pub call: CallKind,
    /// The notification the call handled (paid, refunded).
    pub notification_id: Option<i64>,
    /// The refund the call handled (refunded).
    pub out_refund_no: Option<String>,
    /// The task the call ran (task).
    pub task_id: Option<i64>,
    /// The handler build: `type@version sha256:…`.
    pub build: String,
    /// Its place among the call's writes.
    pub seq: i64,
    /// `insert`, `set`, `merge`, `inc`, `delete` or `task` (an enqueued task).
    pub op: WriteOp,
    /// The document's collection (a task: its name).
    pub collection: String,
    /// The document's id (a task: its id).
    pub doc_id: String,
    /// The document before (`null`: it did not exist).
    pub before: Option<Value>,
    /// The document after (`null`: deleted); a task: its payload.
    pub after: Option<Value>,
    /// When it was recorded (unix ms).
    pub created_at: Millis,
}

impl WriteView {
    /// The record with its documents parsed; 500 naming the write if one is not JSON.
    fn of(w: WriteRecord) -> Result<WriteView, ApiError> {
        let id = w.id;
        let parse = |text: Option<String>, side: &str| {
            text.map(|t| serde_json::from_str(&t))
                .transpose()
                .map_err(|e| ApiError::internal(format!("recorded write {id}: {side}: {e}")))
        };
        Ok(WriteView {
            id,
            call: w.call.call,
            notification_id: w.call.notification_id,
            out_refund_no: w.call.out_refund_no,
            task_id: w.call.task_id,
            build: w.call.build,
            seq: w.seq,
            op: w.write.op,
            collection: w.write.collection,
            doc_id: w.write.doc_id,
            before: parse(w.write.before, "before")?,
            after: parse(w.write.after, "after")?,
            created_at: w.created_at,
        })
    }
}

/// `GET /api/admin/orders/{out_trade_no}/writes?after_id=&limit=`: the order's recorded
/// writes, oldest first; 404 if there is no such order, 400 for a bad query.
pub async fn writes(
    State(app): State<App>,
    Path(out_trade_no): Path<String>,
    query: Result<Query<WritesQuery>, QueryRejection>,
) -> Result<Json<WritesPage>, ApiError> {
    let Query(q) = query?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be 1 to {MAX_PAGE}, got {limit}"
        )));
    }
    // Bounded like every `/api` read: a database that is down is a 503, not a hang.
    if read(&app, app.store.get_order(&out_trade_no))
        .await?
        .is_none()
    {
        return Err(ApiError::NotFound(format!("no order `{out_trade_no}`")));
    }
    let rows = read(
        &app,
        app.store
            .audit()
            .order_writes(&out_trade_no, q.after_id, limit),
    )
    .await?;
    let full = rows.len() == limit as usize;
    let writes = rows
        .into_iter()
        .map(WriteView::of)
        .collect::<Result<Vec<_>, _>>()?;
    let next_after_id = if full {
        writes.last().map(|w| w.id)
    } else {
        None
    };
    Ok(Json(WritesPage {
        out_trade_no,
        writes,
        next_after_id,
    }))
}

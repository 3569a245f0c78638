//! Refunds: an optional part of a handler. Implement [`RefundHandler`] and export with
//! `export_handler!(MyHandler, refunds)`; a handler exported without `refunds` still
//! loads and works, and refunds of its orders then only update the order.

use crate::{refund_bindings, Error, Handler, Order, Outcome};

/// A refund of an order, as the host applied it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    /// Host-side id of the stored refund notification.
    pub notification_id: i64,
    /// The merchant's refund number (`out_refund_no`; Alipay `out_biz_no`).
    pub out_refund_no: String,
    /// The provider's refund id (empty when the provider gives none, e.g. Alipay).
    pub refund_id: String,
    /// Fen refunded by this refund.
    pub amount: i64,
    /// Fen refunded on the order so far, this refund included.
    pub refunded_total: i64,
    /// The whole order amount has now been refunded.
    pub full: bool,
    /// RFC 3339 time the provider says the refund succeeded, when it says.
    pub refunded_at: Option<String>,
    /// Every verified field as received, with the provider's own names.
    pub fields: Vec<(String, String)>,
}

impl Refund {
    /// The first verified field called `name` (exact, case-sensitive match).
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl From<refund_bindings::exports::paynotify::plugin::refunds::Refund> for Refund {
    fn from(r: refund_bindings::exports::paynotify::plugin::refunds::Refund) -> Self {
        Refund {
            notification_id: r.notification_id,
            out_refund_no: r.out_refund_no,
            refund_id: r.refund_id,
            amount: r.amount,
            refunded_total: r.refunded_total,
            full: r.full,
            refunded_at: r.refunded_at,
            fields: r.fields,
        }
    }
}

/// A handler that also handles refunds of its orders. Export it with
/// `export_handler!(MyHandler, refunds)`.
pub trait RefundHandler: Handler {
    /// Called once, inside the refund transaction, when `refund` of `order` is applied
    /// (the order is then partially refunded, or refunded when [`Refund::full`]).
    ///
    /// `Ok` commits the refund with every [`db`](crate::db) write and
    /// [`tasks::enqueue`](crate::tasks::enqueue) made here, and stores the [`Outcome`] on
    /// the refund. `Err` (or a panic) rolls all of it back; the provider retries.
    ///
    /// As in [`Handler::handle_paid`], [`http`](crate::http) is refused here unless the
    /// manifest sets `http_in_payment = true`.
    fn handle_refunded(order: Order, refund: Refund) -> Result<Outcome, Error>;
}

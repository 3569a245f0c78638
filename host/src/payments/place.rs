//! Placing an order's payment at its provider (`POST /api/orders` with `pay`,
//! `POST /api/orders/{no}/pay`, `paynotify orders pay-params`).
//!
//! Checked first, with nothing sent: the account can call its provider, `pay` suits it,
//! the host has a public address for the notification, the order is unpaid and its
//! lifetime is not over. Then the provider is called and its verified answer turned into
//! what the client needs. Every attempt is recorded on the order (`order_placements`):
//! an order the provider refused stays stored, unplaced, and placing it again with the
//! same number is safe (the providers take one order number once, and answer a repeat of
//! the same order with the same prepayment).

use super::{notify_url, PayError};
use crate::app::App;
use crate::providers::api::{ApiError as ProviderError, OrderApi};
use crate::providers::pay::{PayRequest, Placement};
use crate::reconcile::order_ref;
use crate::store::{status, Order};
use crate::time::now_ms;

/// The account's API, checked able to place `pay`: the checks that need no order.
pub fn check<'a>(
    app: &'a App,
    provider: &str,
    account: &str,
    pay: &PayRequest,
) -> Result<&'a dyn OrderApi, PayError> {
    let api = app.apis.get(provider, account).map_err(|why| {
        PayError::Invalid(format!(
            "pay: cannot place payments with this account: {why}"
        ))
    })?;
    api.check_pay(pay)
        .map_err(|e| PayError::Invalid(e.to_string()))?;
    notify_url(app, provider, account)?;
    Ok(api)
}

/// Places `order`'s payment as `pay` says; what the client needs to pay.
pub async fn place(
    app: &App,
    order: &Order,
    pay: &PayRequest,
) -> Result<serde_json::Value, PayError> {
    let api = check(app, &order.provider, &order.account, pay)?;
    if order.status != status::UNPAID {
        return Err(PayError::Conflict(format!(
            "order {} is {}: only an unpaid order can be placed",
            order.out_trade_no,
            status::name(order.status)
        )));
    }
    let expire_at = app.config.orders.provider_lifetime_secs().map(|s| {
        let ms = i64::try_from(s).unwrap_or(i64::MAX).saturating_mul(1000);
        order.created_at.saturating_add(ms)
    });
    if let Some(at) = expire_at {
        // A minute's margin: the provider refuses an expiry already (nearly) past.
        if at <= now_ms() + 60_000 {
            return Err(PayError::Conflict(format!(
                "order {} is past its payment lifetime (orders.pay_expire_secs / expire_after_secs): create a new order",
                order.out_trade_no
            )));
        }
    }
    let notify_url = notify_url(app, &order.provider, &order.account)?;
    let description = pay
        .description
        .clone()
        .unwrap_or_else(|| order.order_type.clone());
    let placement = Placement {
        order: order_ref(order),
        total_fee: order.total_fee,
        pay,
        description: &description,
        notify_url: &notify_url,
        expire_at,
    };
    let pay_json = serde_json::to_value(pay).unwrap_or_default();
    match api.place(app.apis.http(), &placement).await {
        Ok(placed) => {
            crate::metrics::placement(&order.provider, "placed");
            app.store
                .payments()
                .record_placement(&order.out_trade_no, &pay_json, None)
                .await?;
            tracing::info!(order = %order.out_trade_no, method = %pay.method, "payment placed at the provider");
            Ok(placed.payment)
        }
        Err(source) => {
            let outcome = if matches!(source, ProviderError::Declined { .. }) {
                "refused"
            } else {
                "error"
            };
            crate::metrics::placement(&order.provider, outcome);
            let error = source.to_string();
            if let Err(e) = app
                .store
                .payments()
                .record_placement(&order.out_trade_no, &pay_json, Some(&error))
                .await
            {
                tracing::error!(order = %order.out_trade_no, error = %e, "cannot record the failed placement");
            }
            tracing::warn!(order = %order.out_trade_no, error = %error, "payment not placed");
            Err(PayError::Provider {
                context: format!("placing order {}", order.out_trade_no),
                source,
            })
        }
    }
}

/// Places an existing order again: with `pay`, or as it was last placed.
pub async fn place_again(
    app: &App,
    out_trade_no: &str,
    pay: Option<PayRequest>,
) -> Result<serde_json::Value, PayError> {
    let Some(order) = app.store.get_order(out_trade_no).await? else {
        return Err(PayError::NotFound(format!("no order `{out_trade_no}`")));
    };
    let pay = match pay {
        Some(p) => p,
        None => {
            let Some(stored) = app.store.payments().placement(out_trade_no).await? else {
                return Err(PayError::Invalid(format!(
                    "pay: order {out_trade_no} was never placed here; give `pay` (method, …)"
                )));
            };
            serde_json::from_value(stored.pay).map_err(|e| {
                PayError::Invalid(format!("pay: the stored request does not read: {e}"))
            })?
        }
    };
    place(app, &order, &pay).await
}

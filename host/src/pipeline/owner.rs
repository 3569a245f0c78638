//! Whether a verified notification may touch an order at all: the one check of whose it
//! is, shared by payments (`settle.rs`) and refunds (`refund.rs`), decided on the locked
//! order. A notification verified for one account never pays or refunds another
//! account's order, and one for a sub-merchant (WeChat Pay v3 partner mode) never
//! another sub-merchant's of the same service provider: its keys verify every
//! sub-merchant's notifications alike, so only the order can say which one it belongs to.

use crate::providers::{Notice, ProviderKind};
use crate::store::Order;

/// Why `notice` (a payment or refund, named by `what`) is not about `order`'s owner, if
/// it is not: another provider, another account, or another sub-merchant.
pub(super) fn mismatch(
    order: &Order,
    provider: ProviderKind,
    notice: &Notice,
    what: &str,
) -> Option<String> {
    if order.provider != provider.as_str() || order.account != notice.account {
        return Some(format!(
            "order belongs to {} account `{}`, {what} was verified for {} account `{}`",
            order.provider, order.account, provider, notice.account
        ));
    }
    if order.sub_mchid != notice.sub_mchid {
        let name = |s: &Option<String>| match s {
            Some(s) => format!("sub-merchant `{s}`"),
            None => "no sub-merchant".to_owned(),
        };
        return Some(format!(
            "order is for {} of account `{}`, {what} is for {}",
            name(&order.sub_mchid),
            order.account,
            name(&notice.sub_mchid)
        ));
    }
    None
}

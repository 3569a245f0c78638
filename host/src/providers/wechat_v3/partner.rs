//! Whose payments a v3 account receives: its own (direct mode), or, for a service
//! provider (服务商, partner mode), its sub-merchants'. And the one check both the
//! notification verifier and the order-query answer run on a transaction or refund: that
//! it names this account's merchant and app, and in partner mode which sub-merchant it is
//! for.
//!
//! In partner mode the account's keys are the service provider's: WeChat Pay signs and
//! encrypts for the service provider, whose APIv3 key and merchant API key every
//! sub-merchant's notification and query uses. So the account's `mch_id`/`appid` (in
//! [`Account`]) hold `sp_mchid`/`sp_appid`, and the sub-merchants live here. A
//! notification that names a sub-merchant of the account is only half the check: the
//! order must be that sub-merchant's too, which the settle step decides on the locked
//! order (`Notice::sub_mchid` against the order's).

use std::collections::BTreeMap;

use serde_json::Value;

use super::Account;
use crate::config::AccountConfig;
use crate::providers::json::str_field;
use crate::providers::Rejection;

/// How a v3 account takes payments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Mode {
    /// The merchant's own payments: transactions carry `mchid` and `appid`.
    #[default]
    Direct,
    /// A service provider's sub-merchants' payments: transactions carry `sp_mchid`,
    /// `sp_appid`, `sub_mchid` and (when paid through the sub-merchant's app) `sub_appid`.
    Partner(Partner),
}

/// The sub-merchants a partner account serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partner {
    /// `sub_mchid` → its configured `sub_appid`, if any.
    sub_merchants: BTreeMap<String, Option<String>>,
}

impl Partner {
    /// A partner serving these `(sub_mchid, sub_appid)` sub-merchants.
    pub fn new<'a>(subs: impl IntoIterator<Item = (&'a str, Option<&'a str>)>) -> Partner {
        Partner {
            sub_merchants: subs
                .into_iter()
                .map(|(id, app)| (id.to_owned(), app.map(str::to_owned)))
                .collect(),
        }
    }
}

impl Mode {
    /// The sub-merchants' ids, in partner mode.
    pub fn sub_merchants(&self) -> Option<Vec<&str>> {
        match self {
            Mode::Direct => None,
            Mode::Partner(p) => Some(p.sub_merchants.keys().map(String::as_str).collect()),
        }
    }

    /// The configured `sub_appid` of sub-merchant `sub_mchid` (partner mode), if any: the
    /// app its buyers pay in with a `sub_openid`, and the app of its APP payments.
    pub fn sub_appid(&self, sub_mchid: &str) -> Option<&str> {
        match self {
            Mode::Direct => None,
            Mode::Partner(p) => p.sub_merchants.get(sub_mchid)?.as_deref(),
        }
    }

    /// Checks that a decrypted transaction or refund (or a query answer) is this
    /// account's: the merchant id always, the app ids when `is_transaction` or when
    /// present (refunds carry none). Returns the sub-merchant it is for (partner mode),
    /// which the order must name.
    pub(super) fn check_owner(
        &self,
        account: &Account,
        resource: &Value,
        is_transaction: bool,
    ) -> Result<Option<String>, Rejection> {
        let mismatch = |field: &str, value: &str| {
            Err(Rejection::AccountMismatch(format!(
                "{field} `{value}` does not belong to account `{}`",
                account.name
            )))
        };
        let (mch_key, app_key) = match self {
            Mode::Direct => ("mchid", "appid"),
            Mode::Partner(_) => ("sp_mchid", "sp_appid"),
        };
        let mchid = str_field(resource, mch_key).unwrap_or("");
        if mchid != account.mch_id {
            return mismatch(mch_key, mchid);
        }
        let appid = str_field(resource, app_key);
        if is_transaction || appid.is_some() {
            let appid = appid.unwrap_or("");
            if appid != account.appid {
                return mismatch(app_key, appid);
            }
        }
        let Mode::Partner(partner) = self else {
            return Ok(None);
        };
        let sub_mchid = str_field(resource, "sub_mchid").unwrap_or("");
        let Some(sub_appid) = partner.sub_merchants.get(sub_mchid) else {
            return Err(Rejection::AccountMismatch(format!(
                "sub_mchid `{sub_mchid}` is not a sub-merchant of account `{}`",
                account.name
            )));
        };
        // Checked only when configured: a sub-merchant without an app of its own is paid
        // through the service provider's, which `sp_appid` already binds.
        if let Some(want) = sub_appid {
            let got = str_field(resource, "sub_appid");
            if (is_transaction || got.is_some()) && got != Some(want.as_str()) {
                return mismatch("sub_appid", got.unwrap_or(""));
            }
        }
        Ok(Some(sub_mchid.to_owned()))
    }
}

/// The verifying account and mode of a v3 `[[accounts]]` entry. A partner account's
/// keys are the service provider's, so its [`Account`] holds `sp_appid`/`sp_mchid`.
pub fn from_config(a: &AccountConfig) -> Result<(Account, Mode), String> {
    if a.mode.as_deref() != Some("partner") {
        return Ok((Account::from_config(a)?, Mode::Direct));
    }
    let (Some(sp_mchid), Some(sp_appid)) = (&a.sp_mchid, &a.sp_appid) else {
        return Err("a partner account needs `sp_mchid` and `sp_appid`".into());
    };
    if a.sub_merchants.is_empty() {
        return Err("a partner account needs at least one `sub_merchants` entry".into());
    }
    let mut as_provider = a.clone();
    as_provider.mch_id = Some(sp_mchid.clone());
    as_provider.appid = Some(sp_appid.clone());
    let account = Account::from_config(&as_provider)?;
    let partner = Partner::new(
        a.sub_merchants
            .iter()
            .map(|s| (s.sub_mchid.as_str(), s.sub_appid.as_deref())),
    );
    Ok((account, Mode::Partner(partner)))
}

#[cfg(test)]
mod tests;

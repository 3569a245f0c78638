//! From `[[accounts]]` to the running providers: one pass over the configured accounts
//! builds each account's verifier (grouped by provider into [`Providers`]) and, from the
//! same parsed keys, its order-API client ([`Apis`]), so an account is read once and its
//! two halves cannot disagree about its keys.

use std::collections::BTreeMap;

use super::api::{OrderApi, CALL_TIMEOUT};
use super::{alipay, cloudpay, wechat_v2, wechat_v3, wechat_xpay, Provider, ProviderKind};
use crate::config::AccountConfig;

/// Everything built from the accounts: the verifiers and the API clients.
pub struct Registry {
    /// Verifiers of notifications, by provider.
    pub providers: Providers,
    /// Order query and close clients, by account.
    pub apis: Apis,
}

impl Registry {
    /// Reads every account once, building its verifier and, when it has the keys, its
    /// API client. Every verifier error is reported before any API error, the HTTP
    /// client's in between, as when they were built in two passes.
    pub fn from_config(accounts: &[AccountConfig]) -> Result<Registry, AccountError> {
        let mut v2 = Vec::new();
        let mut v3 = Vec::new();
        let mut alipay_accounts = Vec::new();
        let mut cloudpay_accounts = Vec::new();
        let mut xpay_accounts = Vec::new();
        let mut by_account: BTreeMap<(ProviderKind, String), Box<dyn OrderApi>> = BTreeMap::new();
        let mut missing = BTreeMap::new();
        let mut api_error = None;
        for (index, a) in accounts.iter().enumerate() {
            let err = |message: String| AccountError {
                index,
                provider: a.provider.clone(),
                name: a.name.clone(),
                message,
            };
            let Some(kind) = ProviderKind::parse(&a.provider) else {
                return Err(err("unknown provider".into()));
            };
            // Outer error: the keys are wrong; inner: why the account has no API.
            let api: Result<Result<Box<dyn OrderApi>, String>, String> = match kind {
                ProviderKind::WechatV2 => {
                    let account = wechat_v2::Account::from_config(a).map_err(err)?;
                    let api = wechat_v2::api::Api::from_config(a, &account);
                    v2.push(account);
                    api.map(|api| Ok(Box::new(api) as Box<dyn OrderApi>))
                }
                ProviderKind::WechatV3 => {
                    let (account, mode) = wechat_v3::partner::from_config(a).map_err(err)?;
                    let api = wechat_v3::api::Api::from_config(a, &account, &mode);
                    if let Ok(Some(api)) = &api {
                        wechat_v3::certs::wire_client(&account, api);
                    }
                    v3.push((a.name.clone(), account, mode));
                    api.map(|api| match api {
                        Some(c) => Ok(Box::new(c) as Box<dyn OrderApi>),
                        None => {
                            Err("no `merchant_private_key_file` and `merchant_serial_no`".into())
                        }
                    })
                }
                ProviderKind::Alipay => {
                    let account = alipay::Account::from_config(a).map_err(err)?;
                    let api = alipay::api::Api::from_config(a, &account);
                    alipay_accounts.push(account);
                    api.map(|api| match api {
                        Some(c) => Ok(Box::new(c) as Box<dyn OrderApi>),
                        None => Err("no `app_private_key_file`".into()),
                    })
                }
                ProviderKind::Cloudpay => {
                    cloudpay_accounts.push(cloudpay::Account::from_config(a).map_err(err)?);
                    Ok(Err("CloudPay has no order query or close API".into()))
                }
                ProviderKind::WechatXpay => {
                    xpay_accounts.push(wechat_xpay::Account::from_config(a).map_err(err)?);
                    Ok(Err(
                        "wechat-xpay has no order query or close API here".into()
                    ))
                }
            };
            match api {
                Ok(Ok(api)) => {
                    by_account.insert((kind, a.name.clone()), api);
                }
                Ok(Err(why)) => {
                    missing.insert((kind, a.name.clone()), why);
                }
                Err(message) => {
                    api_error.get_or_insert_with(|| err(message));
                }
            }
        }
        let platform_certs = wechat_v3::certs::downloading(
            &v3.iter().map(|(_, a, _)| a.clone()).collect::<Vec<_>>(),
        );
        let mut by_kind: BTreeMap<ProviderKind, Box<dyn Provider>> = BTreeMap::new();
        if !v2.is_empty() {
            by_kind.insert(
                ProviderKind::WechatV2,
                Box::new(wechat_v2::WechatV2::new(v2)),
            );
        }
        if !v3.is_empty() {
            let mut modes = Vec::new();
            let mut accounts = Vec::new();
            for (name, account, mode) in v3 {
                accounts.push(account);
                modes.push((name, mode));
            }
            let provider = modes
                .into_iter()
                .fold(wechat_v3::WechatV3::new(accounts), |p, (name, mode)| {
                    p.with_mode(&name, mode)
                });
            by_kind.insert(ProviderKind::WechatV3, Box::new(provider));
        }
        if !alipay_accounts.is_empty() {
            by_kind.insert(
                ProviderKind::Alipay,
                Box::new(alipay::Alipay::new(alipay_accounts)),
            );
        }
        if !cloudpay_accounts.is_empty() {
            by_kind.insert(
                ProviderKind::Cloudpay,
                Box::new(cloudpay::Cloudpay::new(cloudpay_accounts)),
            );
        }
        if !xpay_accounts.is_empty() {
            by_kind.insert(
                ProviderKind::WechatXpay,
                Box::new(wechat_xpay::WechatXpay::new(xpay_accounts)),
            );
        }
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .build()
            .map_err(|e| AccountError {
                index: 0,
                provider: String::new(),
                name: String::new(),
                message: format!("cannot build the HTTP client: {e}"),
            })?;
        if let Some(e) = api_error {
            return Err(e);
        }
        Ok(Registry {
            providers: Providers { by_kind },
            apis: Apis {
                http,
                by_account,
                missing,
                platform_certs,
            },
        })
    }
}

/// A configuration error in an account.
#[derive(Debug, thiserror::Error)]
#[error("accounts[{index}] ({provider} `{name}`): {message}")]
pub struct AccountError {
    /// Position in `[[accounts]]`.
    pub index: usize,
    /// Provider name.
    pub provider: String,
    /// Account name.
    pub name: String,
    /// What is wrong.
    pub message: String,
}

/// The configured providers, by kind.
pub struct Providers {
    by_kind: BTreeMap<ProviderKind, Box<dyn Provider>>,
}

impl Providers {
    /// The provider, if configured.
    pub fn get(&self, kind: ProviderKind) -> Option<&dyn Provider> {
        self.by_kind.get(&kind).map(|p| p.as_ref())
    }

    /// The sub-merchant an order of `kind`'s `account` names: required, and one of the
    /// account's, for a partner account (WeChat Pay v3 服务商); refused for any other.
    pub fn resolve_sub_mchid(
        &self,
        kind: ProviderKind,
        account: &str,
        sub_mchid: Option<&str>,
    ) -> Result<Option<String>, String> {
        let subs = self.get(kind).and_then(|p| p.sub_merchants(account));
        match (subs, sub_mchid) {
            (None, None) => Ok(None),
            (None, Some(_)) => Err(format!(
                "sub_mchid: {kind} account `{account}` is not a partner (服务商) account; leave sub_mchid out"
            )),
            (Some(subs), None) => Err(format!(
                "sub_mchid is required: {kind} account `{account}` is a partner account (sub-merchants {})",
                subs.join(", ")
            )),
            (Some(subs), Some(s)) if subs.contains(&s) => Ok(Some(s.to_owned())),
            (Some(subs), Some(s)) => Err(format!(
                "sub_mchid `{s}` is not a sub-merchant of {kind} account `{account}` (it serves {})",
                subs.join(", ")
            )),
        }
    }

    /// Resolves the account an order names: the named one, or the only one.
    pub fn resolve_account(
        &self,
        kind: ProviderKind,
        name: Option<&str>,
    ) -> Result<String, String> {
        let Some(p) = self.get(kind) else {
            return Err(format!("provider {kind} has no account configured"));
        };
        let names = p.accounts();
        match name {
            Some(n) if names.contains(&n) => Ok(n.to_owned()),
            Some(n) => Err(format!("provider {kind} has no account named `{n}`")),
            None if names.len() == 1 => Ok(names[0].to_owned()),
            None => Err(format!(
                "provider {kind} has several accounts ({}); name one with `account`",
                names.join(", ")
            )),
        }
    }
}

/// The order APIs of every configured account that has the keys to call them.
pub struct Apis {
    http: reqwest::Client,
    by_account: BTreeMap<(ProviderKind, String), Box<dyn OrderApi>>,
    /// Why an account has no API (missing keys, CloudPay), for the skip reason.
    missing: BTreeMap<(ProviderKind, String), String>,
    /// The WeChat Pay v3 accounts that download their platform certificates.
    platform_certs: Vec<wechat_v3::Account>,
}

impl Apis {
    /// The API of an order's account, or why there is none.
    pub fn get(&self, provider: &str, account: &str) -> Result<&dyn OrderApi, String> {
        let Some(kind) = ProviderKind::parse(provider) else {
            return Err(format!("unknown provider `{provider}`"));
        };
        let key = (kind, account.to_owned());
        if let Some(api) = self.by_account.get(&key) {
            return Ok(api.as_ref());
        }
        Err(match self.missing.get(&key) {
            Some(why) => format!("{provider} account `{account}`: {why}"),
            None => format!("{provider} account `{account}` is not configured"),
        })
    }

    /// The WeChat Pay v3 accounts that download their platform certificates
    /// ([`wechat_v3::certs`]).
    pub fn platform_certs(&self) -> &[wechat_v3::Account] {
        &self.platform_certs
    }

    /// The HTTP client the calls use.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

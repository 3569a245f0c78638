//! WeChat mini-program virtual payment (小程序虚拟支付, `wechat-xpay`): the payment events
//! of the mini program's message push (消息推送), configured as JSON.
//!
//! - `GET` on the push URL is WeChat's URL check: `echostr` is echoed when `signature` is
//!   the SHA-1 of the sorted (`token`, `timestamp`, `nonce`) ([`WechatXpay::check_url`]).
//! - `POST` carries an event. Plaintext mode: the same `signature` in the query string;
//!   it covers the token, timestamp and nonce only, not the body. Safe mode
//!   (`encrypt_type=aes`): `msg_signature` covers the `Encrypt` field too, which decrypts
//!   with the EncodingAESKey to the event and the mini program's appid ([`crypto`]).
//!   An account with `encoding_aes_key` takes safe mode only, so a body is always bound
//!   to a signature.
//! - The query string reaches [`Provider::verify`] as the pseudo-header
//!   [`crate::providers::QUERY_HEADER`], stored with the notification, so a replay
//!   verifies as the original did. `timestamp` must be within 5 minutes of receipt.
//! - `xpay_goods_deliver_notify` and `xpay_coin_pay_notify` are payments ([`event`]),
//!   from the account's `env` only; anything else is acknowledged and changes nothing.
//! - Answers: `{"ErrCode":0,"ErrMsg":"success"}` after commit; otherwise a non-zero
//!   `ErrCode` and a message, and WeChat pushes again.
//!
//! No order query: this host does not call the xpay server API (see docs/providers.md).

use std::collections::BTreeMap;

use serde_json::Value;

use super::common::{check_timestamp, pick_account, required};
use super::json::{flatten_unique, parse_json_unique, str_or_empty};
use super::{Answer, ContentTypes, Inbound, Notice, Provider, ProviderKind, Rejection};
use crate::config::AccountConfig;

pub mod crypto;
pub mod event;
pub mod query;

#[cfg(test)]
mod tests;

use crypto::{signature_matches, AesKey};
use query::Query;

/// Largest allowed difference between `timestamp` and the time of receipt.
pub const MAX_CLOCK_SKEW_SECS: i64 = 5 * 60;

/// The push is configured as JSON (数据格式 JSON).
pub const CONTENT_TYPES: ContentTypes = ContentTypes {
    media_types: &["application/json"],
    may_be_absent: true,
};

/// The success answer, once the payment is committed.
pub const SUCCESS_BODY: &str = r#"{"ErrCode":0,"ErrMsg":"success"}"#;

/// Which virtual-payment environment an account takes payments from (`Env` in events).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XpayEnv {
    /// 现网 (`Env` 0).
    Production,
    /// 沙箱 (`Env` 1).
    Sandbox,
}

impl XpayEnv {
    /// Parses the account key `env`.
    pub fn parse(s: &str) -> Option<XpayEnv> {
        match s {
            "production" => Some(XpayEnv::Production),
            "sandbox" => Some(XpayEnv::Sandbox),
            _ => None,
        }
    }

    /// The account key's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            XpayEnv::Production => "production",
            XpayEnv::Sandbox => "sandbox",
        }
    }

    /// The `Env` value of events.
    pub fn code(self) -> i64 {
        match self {
            XpayEnv::Production => 0,
            XpayEnv::Sandbox => 1,
        }
    }
}

/// One configured mini program.
#[derive(Clone)]
pub struct Account {
    name: String,
    appid: String,
    token: String,
    aes_key: Option<AesKey>,
    original_id: Option<String>,
    env: XpayEnv,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("name", &self.name)
            .field("appid", &self.appid)
            .field("original_id", &self.original_id)
            .field("env", &self.env)
            .field("safe_mode", &self.aes_key.is_some())
            .finish_non_exhaustive()
    }
}

impl Account {
    /// Reads the keys of an `[[accounts]]` entry; `Err` names the key that is wrong.
    pub fn from_config(a: &AccountConfig) -> Result<Account, String> {
        let kind = ProviderKind::WechatXpay;
        let appid = required(&a.appid, "appid", false, kind)?;
        let token = required(&a.token, "token", true, kind)?;
        if !(3..=32).contains(&token.len()) || !token.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(
                "`token` must be the 3 to 32 letters and digits set as the push Token (消息推送 Token)"
                    .into(),
            );
        }
        let aes_key = match a.encoding_aes_key.as_deref() {
            None => None,
            Some(k) => Some(AesKey::parse(k).map_err(|e| format!("`encoding_aes_key` {e}"))?),
        };
        let original_id = a
            .original_id
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        if original_id
            .as_deref()
            .is_some_and(|o| !o.starts_with("gh_"))
        {
            return Err(
                "`original_id` must be the mini program's original id (原始ID, `gh_…`)".into(),
            );
        }
        let env = match a.env.as_deref() {
            None => XpayEnv::Production,
            Some(e) => XpayEnv::parse(e)
                .ok_or_else(|| format!("`env` must be `production` or `sandbox`, not `{e}`"))?,
        };
        let mut account = Account::new(&a.name, &appid, &token, aes_key, env);
        account.original_id = original_id;
        Ok(account)
    }

    /// Builds an account directly (tests, tools).
    pub fn new(
        name: &str,
        appid: &str,
        token: &str,
        aes_key: Option<AesKey>,
        env: XpayEnv,
    ) -> Account {
        Account {
            name: name.into(),
            appid: appid.into(),
            token: token.into(),
            aes_key,
            original_id: None,
            env,
        }
    }

    /// The same account, checking `ToUserName` against this original id (`gh_…`).
    pub fn with_original_id(mut self, original_id: &str) -> Account {
        self.original_id = Some(original_id.into());
        self
    }

    fn check_to_user(&self, to_user: &str) -> Result<(), Rejection> {
        match &self.original_id {
            Some(o) if o != to_user => Err(Rejection::AccountMismatch(format!(
                "ToUserName `{to_user}` is not account `{}`'s original id",
                self.name
            ))),
            _ => Ok(()),
        }
    }
}

/// The `wechat-xpay` provider.
pub struct WechatXpay {
    accounts: Vec<Account>,
}

impl WechatXpay {
    /// A provider over these accounts.
    pub fn new(accounts: Vec<Account>) -> WechatXpay {
        WechatXpay { accounts }
    }

    /// WeChat's URL check: `Ok(echostr)` when `signature` fits the named account's (or
    /// the only account's) token; `Err` says why not. Nothing is stored either way.
    pub fn check_url(&self, account: Option<&str>, raw_query: &str) -> Result<String, Rejection> {
        let q = Query::parse(raw_query)?;
        let a = match account {
            Some(_) => pick_account(&self.accounts, |a| &a.name, account, |_| false)?,
            None => match self.accounts.as_slice() {
                [only] => only,
                _ => {
                    return Err(Rejection::UnknownAccount(
                        "several accounts: use /notify/wechat-xpay/{account}".into(),
                    ))
                }
            },
        };
        let (sig, ts, nonce) = (
            q.signed("signature")?,
            q.signed("timestamp")?,
            q.signed("nonce")?,
        );
        if !signature_matches(sig, &[&a.token, ts, nonce]) {
            return Err(Rejection::BadSignature("signature does not match".into()));
        }
        q.get("echostr")
            .map(str::to_owned)
            .ok_or_else(|| Rejection::Malformed("no `echostr` in the query string".into()))
    }

    /// The event a push carries, checked against `account`'s keys: plaintext or safe mode.
    fn verified_event(
        &self,
        account: &Account,
        q: &Query,
        outer: Value,
        received_at: i64,
    ) -> Result<Value, Rejection> {
        let ts = q.signed("timestamp")?;
        let nonce = q.signed("nonce")?;
        let event = match q.get("encrypt_type") {
            Some("aes") => {
                let key = account.aes_key.as_ref().ok_or_else(|| {
                    Rejection::Unsupported(format!(
                        "safe mode (encrypt_type=aes) but account `{}` has no encoding_aes_key",
                        account.name
                    ))
                })?;
                let sig = q.signed("msg_signature")?;
                let encrypt = str_or_empty(&outer, "Encrypt");
                if encrypt.is_empty() {
                    return Err(Rejection::Malformed(
                        "safe mode without an Encrypt field".into(),
                    ));
                }
                if !signature_matches(sig, &[&account.token, ts, nonce, encrypt]) {
                    return Err(Rejection::BadSignature(
                        "msg_signature does not match".into(),
                    ));
                }
                check_timestamp("timestamp", ts, received_at, MAX_CLOCK_SKEW_SECS)?;
                let d = key
                    .decrypt(encrypt)
                    .map_err(|e| Rejection::Malformed(e.to_string()))?;
                if d.appid != account.appid {
                    return Err(Rejection::AccountMismatch(format!(
                        "Encrypt is for appid `{}`, not account `{}`'s",
                        d.appid, account.name
                    )));
                }
                let inner: Value = parse_json_unique(&d.message).map_err(|e| {
                    Rejection::Malformed(format!("decrypted message is not JSON: {e}"))
                })?;
                inner
            }
            None | Some("raw") => {
                if account.aes_key.is_some() {
                    // Plaintext mode signs no byte of the body: with a key, only safe
                    // mode binds the event to the signature.
                    return Err(Rejection::Unsupported(format!(
                        "plaintext push, but account `{}` has an encoding_aes_key and takes safe mode (encrypt_type=aes) only",
                        account.name
                    )));
                }
                let sig = q.signed("signature")?;
                if !signature_matches(sig, &[&account.token, ts, nonce]) {
                    return Err(Rejection::BadSignature("signature does not match".into()));
                }
                check_timestamp("timestamp", ts, received_at, MAX_CLOCK_SKEW_SECS)?;
                outer
            }
            Some(other) => {
                return Err(Rejection::Unsupported(format!(
                    "encrypt_type `{other}` (expected aes, or none for plaintext)"
                )))
            }
        };
        if !event.is_object() {
            return Err(Rejection::Malformed("event is not a JSON object".into()));
        }
        Ok(event)
    }
}

impl Provider for WechatXpay {
    fn kind(&self) -> ProviderKind {
        ProviderKind::WechatXpay
    }

    fn accounts(&self) -> Vec<&str> {
        self.accounts.iter().map(|a| a.name.as_str()).collect()
    }

    fn content_types(&self) -> ContentTypes {
        CONTENT_TYPES
    }

    fn url_check(&self, account: Option<&str>, raw_query: &str) -> Option<Answer> {
        Some(match self.check_url(account, raw_query) {
            Ok(echostr) => Answer {
                status: 200,
                content_type: Some("text/plain; charset=utf-8"),
                body: echostr.into_bytes(),
            },
            Err(e) => {
                tracing::debug!(error = %e, "wechat-xpay URL check refused");
                Answer {
                    status: 403,
                    content_type: Some("text/plain; charset=utf-8"),
                    body: b"signature does not match".to_vec(),
                }
            }
        })
    }

    fn verify(&self, inbound: &Inbound<'_>) -> Result<Notice, Rejection> {
        let q = Query::parse(inbound.query().unwrap_or(""))?;
        let outer: Value = parse_json_unique(inbound.body)
            .map_err(|e| Rejection::Malformed(format!("body is not JSON: {e}")))?;
        if !outer.is_object() {
            return Err(Rejection::Malformed("body is not a JSON object".into()));
        }
        // Unsigned in plaintext mode, so it only picks the account whose token must have
        // signed; it is checked again on the verified event.
        let to_user = str_or_empty(&outer, "ToUserName").to_owned();
        let account = pick_account(
            &self.accounts,
            |a| &a.name,
            inbound.account,
            |a| a.original_id.as_deref() == Some(to_user.as_str()),
        )?;
        let event = self.verified_event(account, &q, outer, inbound.received_at)?;
        account.check_to_user(str_or_empty(&event, "ToUserName"))?;
        let (out_trade_no, kind) = event::read(&event, &account.name, account.env)?;
        let mut fields = BTreeMap::new();
        flatten_unique(&event, "", &mut fields)?;
        Ok(Notice {
            account: account.name.clone(),
            out_trade_no,
            kind,
            fields,
            sub_mchid: None,
        })
    }

    fn success(&self) -> Answer {
        Answer {
            status: 200,
            content_type: Some("application/json"),
            body: SUCCESS_BODY.as_bytes().to_vec(),
        }
    }

    fn failure(&self, reason: &str) -> Answer {
        Answer {
            status: 200,
            content_type: Some("application/json"),
            body: serde_json::json!({ "ErrCode": 1, "ErrMsg": reason })
                .to_string()
                .into_bytes(),
        }
    }
}

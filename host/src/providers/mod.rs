//! Payment providers: each parses and verifies its own notification format and answers
//! in its own convention. Everything after verification is provider-agnostic: a
//! provider turns raw bytes into a [`Notice`] or a [`Rejection`].

use std::collections::BTreeMap;

pub use crate::config::ProviderKind;
use crate::config::AccountConfig;

pub mod alipay;
pub mod api;
pub mod cloudpay;
pub mod wechat_v2;
pub mod wechat_v3;

/// A notification as it arrived, before any check.
#[derive(Debug, Clone)]
pub struct Inbound<'a> {
    /// The account named in the URL, if any.
    pub account: Option<&'a str>,
    /// Request headers, names lower-case.
    pub headers: &'a [(String, String)],
    /// The raw body.
    pub body: &'a [u8],
    /// When it was received (unix ms): timestamp windows are checked against this, so a
    /// replay of an old notification verifies as it did on arrival.
    pub received_at: i64,
}

impl Inbound<'_> {
    /// The first header with this (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A verified notification, normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    /// The account whose key verified it.
    pub account: String,
    /// The merchant order number it names.
    pub out_trade_no: String,
    /// What it reports.
    pub kind: NoticeKind,
    /// Every verified field as received, for the handler and `original_data`.
    pub fields: BTreeMap<String, String>,
}

/// What a verified notification reports.
#[derive(Debug, Clone, PartialEq)]
pub enum NoticeKind {
    /// The order was paid.
    Paid(Payment),
    /// A non-payment state (closed, failed, waiting): recorded and acknowledged, changes nothing.
    NotPaid {
        /// The provider's state, e.g. `FAIL`, `TRADE_CLOSED`.
        state: String,
    },
    /// Part or all of the order's payment was refunded.
    Refunded(Refund),
}

/// The facts of a successful refund, as the provider states them.
#[derive(Debug, Clone, PartialEq)]
pub struct Refund {
    /// The merchant's refund number (`out_refund_no`; Alipay `out_biz_no`): with the
    /// order number, what makes a refund unique.
    pub out_refund_no: String,
    /// The provider's refund id; empty when the provider gives none (Alipay).
    pub refund_id: String,
    /// The provider's transaction id of the refunded payment.
    pub transaction_id: String,
    /// How much was refunded.
    pub amount: RefundAmount,
    /// The order total the provider states, in fen, when it states one.
    pub total_fee: Option<i64>,
    /// When the refund succeeded (unix ms), if the provider says.
    pub refunded_at: Option<i64>,
}

/// How a provider states a refund's amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundAmount {
    /// Fen refunded by this refund (WeChat Pay `refund_fee` / `amount.refund`).
    This(i64),
    /// Fen refunded on the order so far, this refund included (Alipay `refund_fee`).
    Cumulative(i64),
}

/// The facts of a payment, as the provider states them.
#[derive(Debug, Clone, PartialEq)]
pub struct Payment {
    /// The provider's transaction id.
    pub transaction_id: String,
    /// Amount paid for the order, in fen.
    pub amount: i64,
    /// When it was paid (unix ms), if the provider says.
    pub paid_at: Option<i64>,
}

/// Why a notification was not accepted. The message is stored and logged, and the
/// provider gets its failure answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The body could not be parsed.
    #[error("malformed notification: {0}")]
    Malformed(String),
    /// The signature did not verify.
    #[error("bad signature: {0}")]
    BadSignature(String),
    /// No configured account matches.
    #[error("unknown account: {0}")]
    UnknownAccount(String),
    /// The notification belongs to another merchant or app.
    #[error("account mismatch: {0}")]
    AccountMismatch(String),
    /// A timestamp outside the allowed window.
    #[error("stale timestamp: {0}")]
    Stale(String),
    /// Something required is missing or unsupported.
    #[error("unsupported notification: {0}")]
    Unsupported(String),
    /// The signed `k=v&…` string would split into other fields than the ones received, so
    /// the signature does not say which fields were signed.
    #[error("ambiguous signed string: {0}")]
    Ambiguous(String),
}

/// An HTTP answer in a provider's own convention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`, when there is a body.
    pub content_type: Option<&'static str>,
    /// The exact body.
    pub body: Vec<u8>,
}

/// A provider: verifies its notifications and knows its answers.
pub trait Provider: Send + Sync {
    /// Which provider this is.
    fn kind(&self) -> ProviderKind;
    /// The configured account names.
    fn accounts(&self) -> Vec<&str>;
    /// Parses and verifies a notification on its raw bytes.
    fn verify(&self, inbound: &Inbound<'_>) -> Result<Notice, Rejection>;
    /// The answer that tells the provider to stop retrying.
    fn success(&self) -> Answer;
    /// The answer that tells the provider the notification was not accepted.
    fn failure(&self, reason: &str) -> Answer;
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
    /// Builds every provider that has at least one account.
    pub fn from_config(accounts: &[AccountConfig]) -> Result<Providers, AccountError> {
        let mut v2 = Vec::new();
        let mut v3 = Vec::new();
        let mut alipay_accounts = Vec::new();
        let mut cloudpay_accounts = Vec::new();
        for (index, a) in accounts.iter().enumerate() {
            let err = |message: String| AccountError {
                index,
                provider: a.provider.clone(),
                name: a.name.clone(),
                message,
            };
            match ProviderKind::parse(&a.provider) {
                Some(ProviderKind::WechatV2) => {
                    v2.push(wechat_v2::Account::from_config(a).map_err(err)?)
                }
                Some(ProviderKind::WechatV3) => {
                    v3.push(wechat_v3::Account::from_config(a).map_err(err)?)
                }
                Some(ProviderKind::Alipay) => {
                    alipay_accounts.push(alipay::Account::from_config(a).map_err(err)?)
                }
                Some(ProviderKind::Cloudpay) => {
                    cloudpay_accounts.push(cloudpay::Account::from_config(a).map_err(err)?)
                }
                None => return Err(err("unknown provider".into())),
            }
        }
        let mut by_kind: BTreeMap<ProviderKind, Box<dyn Provider>> = BTreeMap::new();
        if !v2.is_empty() {
            by_kind.insert(
                ProviderKind::WechatV2,
                Box::new(wechat_v2::WechatV2::new(v2)),
            );
        }
        if !v3.is_empty() {
            by_kind.insert(
                ProviderKind::WechatV3,
                Box::new(wechat_v3::WechatV3::new(v3)),
            );
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
        Ok(Providers { by_kind })
    }

    /// The provider, if configured.
    pub fn get(&self, kind: ProviderKind) -> Option<&dyn Provider> {
        self.by_kind.get(&kind).map(|p| p.as_ref())
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

/// Picks the account that should verify a notification: the one named in the URL, else
/// the one whose identifiers match `matches`, else the only one.
pub(crate) fn pick_account<'a, A>(
    accounts: &'a [A],
    name_of: impl Fn(&A) -> &str,
    url_account: Option<&str>,
    matches: impl Fn(&A) -> bool,
) -> Result<&'a A, Rejection> {
    if let Some(name) = url_account {
        return accounts
            .iter()
            .find(|a| name_of(a) == name)
            .ok_or_else(|| Rejection::UnknownAccount(format!("no account named `{name}`")));
    }
    let mut found = accounts.iter().filter(|a| matches(a));
    match (found.next(), found.next()) {
        (Some(a), None) => Ok(a),
        (Some(_), Some(_)) => Err(Rejection::UnknownAccount(
            "several accounts match; use /notify/{provider}/{account}".into(),
        )),
        (None, _) => Err(Rejection::AccountMismatch(
            "no configured account matches the notification's merchant ids".into(),
        )),
    }
}

/// A required, non-empty account key, or the message naming it (and its `_file` form
/// when `file_key` says there is one).
pub(crate) fn required(
    value: &Option<String>,
    key: &str,
    file_key: bool,
    provider: ProviderKind,
) -> Result<String, String> {
    value
        .clone()
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| {
            let alt = if file_key {
                format!(" (or {key}_file)")
            } else {
                String::new()
            };
            format!("`{key}`{alt} is required for {provider}")
        })
}

/// A provider timestamp in China Standard Time (`+08:00`, as WeChat and Alipay write
/// them) in the given layout → unix ms.
pub(crate) fn china_time_ms(
    s: &str,
    format: &[time::format_description::BorrowedFormatItem<'_>],
) -> Option<i64> {
    let dt = time::PrimitiveDateTime::parse(s, format).ok()?;
    let cst = time::UtcOffset::from_hms(8, 0, 0).ok()?;
    i64::try_from(dt.assume_offset(cst).unix_timestamp_nanos() / 1_000_000).ok()
}

/// Parses a non-negative integer amount in fen, strictly (digits only).
pub(crate) fn parse_fen(s: &str, what: &str) -> Result<i64, Rejection> {
    if s.is_empty() || s.len() > 15 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Rejection::Malformed(format!(
            "{what} `{s}` is not an amount in fen"
        )));
    }
    s.parse()
        .map_err(|_| Rejection::Malformed(format!("{what} `{s}` is not an amount in fen")))
}

/// Refuses a notification whose signed fields (`signed`: name, value, in the order they
/// were joined into the string to sign) would not split back into exactly themselves;
/// the reason names the field that makes it ambiguous.
///
/// The split is one fixed parse of a signed `k=v&k=v…` string (WeChat Pay v2, Alipay):
/// on `&`, then on the first `=` of each piece; a piece without `=` cannot be a field
/// (every signed value is non-empty), so it is the rest of the previous value (`Tom &
/// Jerry` survives, `x&out_trade_no=1` is two fields). Requiring that the string a
/// notification was verified over splits back into exactly its fields leaves at most one
/// field map per signed string, so a genuine signature cannot be re-split into other
/// fields. (A parse that depended on the names a notification happens to carry would
/// not: `attach=x&foo=1` would verify both as one field and as `attach` plus an extra
/// `foo` a handler might read.)
///
/// Checked field by field instead of joining and splitting again (this runs for every
/// v2 and Alipay notification): the split differs exactly when a name holds `&` or `=`,
/// or a value holds `&` followed by a piece with `=`. The property tests split the signed
/// string independently and compare.
pub(crate) fn require_unambiguous(signed: &[(&str, &str)]) -> Result<(), Rejection> {
    const WHY: &str = "the signed string `k=v&…` cannot tell it from separate fields, so one signature would verify other fields too";
    for (k, v) in signed {
        if k.contains(['&', '=']) {
            return Err(Rejection::Ambiguous(format!(
                "field name `{k}` contains `&` or `=`: {WHY}"
            )));
        }
        for piece in v.split('&').skip(1) {
            if let Some((name, _)) = piece.split_once('=') {
                return Err(Rejection::Ambiguous(format!(
                    "field `{k}` contains `&{name}=`: {WHY}"
                )));
            }
        }
    }
    Ok(())
}

/// Constant-time equality of two byte strings.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

//! Alipay (支付宝) asynchronous notifications: an `application/x-www-form-urlencoded`
//! body signed by Alipay with RSA2 (SHA256withRSA, PKCS#1 v1.5).
//!
//! The signed string is built from the parameter map exactly as received: drop `sign`
//! and `sign_type`, sort by key, join the URL-decoded `k=v` pairs with `&`. Fields this
//! code does not know (and `fund_bill_list`, a JSON string) take part as they are.
//! Parameters with an empty value are left out, as Alipay's own SDKs do when they check
//! a notification (`AlipaySignature.getSignCheckContentV1` skips empty values), so a
//! notification those SDKs accept is accepted here too.
//!
//! That string is ambiguous: a `body` of `x&out_trade_no=…&total_amount=…` signs the same
//! string as a notification with those parameters split out. A notification whose
//! signed string does not split back into exactly its own parameters
//! (`require_unambiguous` in `providers`) is refused. Only `&` followed by `name=` makes it so:
//! `Tom & Jerry` passes, and `passback_params`, which Alipay asks merchants to
//! URL-encode, arrives decoded once with its own `%26` and `%3D` intact. A merchant that
//! puts raw `a=1&b=2` there gets its notifications refused with that reason.
//!
//! Only after the signature verifies do `app_id`, `seller_id`, `total_amount` and
//! `trade_status` mean anything. Amounts are yuan with up to two decimals and are turned
//! into fen by exact decimal parsing, never through floating point.
//!
//! A refund comes as the same kind of notification with `refund_fee` (the total refunded
//! so far), `gmt_refund` and `out_biz_no` (the merchant's refund number); `trade_status`
//! is `TRADE_SUCCESS` after a partial refund, `TRADE_CLOSED` after a full one.
//!
//! The answer is the bare word `success`; anything else makes Alipay retry.
//!
//! The body is read in the charset its `charset` parameter declares (UTF-8 when absent;
//! GBK and GB2312 for older apps), and the signature is checked over the bytes as received
//! ([`form`]). An account holds Alipay's key either as the bare public key (public-key
//! mode) or as Alipay's certificate ([`cert`], certificate mode); in certificate mode a
//! notification's `alipay_cert_sn` must name the certificate the account holds.
//!
//! [`api`] calls `alipay.trade.query` and `alipay.trade.close` with the same account,
//! verifying answers with the same key (`Account::verify_rsa2`) and reading
//! amounts and times with the same parsers; `pay.rs` places payments (`page`, `wap`,
//! `app`, `precreate`) and starts refunds through the same signed gateway call, and
//! reads a refund answer into the same [`Refund`] as a refund notification
//! (`refund_of`).

pub mod api;
pub mod cert;
pub mod form;
mod pay;

use std::collections::BTreeMap;

use base64::Engine as _;
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use rsa::RsaPublicKey;
use sha2::Sha256;

use super::common::{china_time_ms, pick_account, require_unambiguous, required};
use super::{
    Answer, ContentTypes, Inbound, Notice, NoticeKind, Payment, Provider, ProviderKind, Refund,
    RefundAmount, Rejection,
};
use crate::config::AccountConfig;
use cert::CertMode;
use form::Form;

/// Alipay posts its notifications as a form.
pub const CONTENT_TYPES: ContentTypes = ContentTypes {
    media_types: &["application/x-www-form-urlencoded"],
    may_be_absent: false,
};

/// One configured Alipay app.
#[derive(Clone)]
pub struct Account {
    name: String,
    app_id: String,
    seller_id: Option<String>,
    keys: Keys,
}

/// How an account knows Alipay's key.
#[derive(Clone)]
enum Keys {
    /// Public-key mode: the Alipay public key, as the console shows it.
    PublicKey(VerifyingKey<Sha256>),
    /// Certificate mode: Alipay's certificate, and the SNs requests carry.
    Cert(Box<CertMode>),
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Account");
        d.field("name", &self.name)
            .field("app_id", &self.app_id)
            .field("seller_id", &self.seller_id);
        if let Keys::Cert(c) = &self.keys {
            d.field("cert_mode", c);
        }
        d.finish_non_exhaustive()
    }
}

impl Account {
    /// Reads the Alipay keys of an `[[accounts]]` entry: the Alipay public key, or the
    /// three certificates of certificate mode.
    pub fn from_config(a: &AccountConfig) -> Result<Account, String> {
        let app_id = required(&a.app_id, "app_id", false, ProviderKind::Alipay)?;
        let certs = [&a.app_cert, &a.alipay_cert, &a.alipay_root_cert];
        let keys = if certs.iter().any(|c| c.is_some()) {
            if a.alipay_public_key.is_some() {
                return Err("set either `alipay_public_key_file` (public-key mode) or \
                     `app_cert_file`, `alipay_cert_file` and `alipay_root_cert_file` \
                     (certificate mode), not both"
                    .into());
            }
            let app = required(&a.app_cert, "app_cert", true, ProviderKind::Alipay)?;
            let alipay = required(&a.alipay_cert, "alipay_cert", true, ProviderKind::Alipay)?;
            let root = required(
                &a.alipay_root_cert,
                "alipay_root_cert",
                true,
                ProviderKind::Alipay,
            )?;
            let mode = CertMode::from_pem(&app, &alipay, &root).map_err(|(which, e)| {
                let file = match which {
                    cert::CertKey::App => &a.app_cert_file,
                    cert::CertKey::Alipay => &a.alipay_cert_file,
                    cert::CertKey::Root => &a.alipay_root_cert_file,
                };
                match file {
                    Some(f) => format!("`{}` ({}): {e}", which.key(), f.display()),
                    None => format!("`{}`: {e}", which.key().trim_end_matches("_file")),
                }
            })?;
            Keys::Cert(Box::new(mode))
        } else {
            let key_text = required(
                &a.alipay_public_key,
                "alipay_public_key",
                true,
                ProviderKind::Alipay,
            )
            .map_err(|e| {
                format!("{e} (or, in certificate mode, `app_cert_file`, `alipay_cert_file` and `alipay_root_cert_file`)")
            })?;
            let key =
                parse_public_key(&key_text).map_err(|e| format!("`alipay_public_key`: {e}"))?;
            Keys::PublicKey(VerifyingKey::new(key))
        };
        Ok(Account {
            name: a.name.clone(),
            app_id,
            seller_id: a.seller_id.clone().filter(|s| !s.is_empty()),
            keys,
        })
    }

    /// Builds a public-key-mode account directly (tests, tools).
    pub fn new(name: &str, app_id: &str, alipay_public_key: RsaPublicKey) -> Account {
        Account {
            name: name.into(),
            app_id: app_id.into(),
            seller_id: None,
            keys: Keys::PublicKey(VerifyingKey::new(alipay_public_key)),
        }
    }

    /// Builds a certificate-mode account directly (tests, tools).
    pub fn with_certs(name: &str, app_id: &str, certs: CertMode) -> Account {
        Account {
            name: name.into(),
            app_id: app_id.into(),
            seller_id: None,
            keys: Keys::Cert(Box::new(certs)),
        }
    }

    /// The certificates of a certificate-mode account.
    pub fn cert_mode(&self) -> Option<&CertMode> {
        match &self.keys {
            Keys::Cert(c) => Some(c),
            Keys::PublicKey(_) => None,
        }
    }

    /// Checks an RSA2 (SHA256withRSA) base64 signature by Alipay over `message`: a
    /// notification's signed bytes, or the raw JSON of an API answer. In certificate mode
    /// `alipay_cert_sn` (of the notification, or beside the answer) picks the certificate;
    /// one the account does not hold is refused, saying so.
    pub(crate) fn verify_rsa2(
        &self,
        message: &[u8],
        sign: &str,
        alipay_cert_sn: Option<&str>,
    ) -> Result<(), Rejection> {
        let key = match &self.keys {
            Keys::PublicKey(key) => key,
            Keys::Cert(certs) => {
                let sn = alipay_cert_sn.filter(|s| !s.is_empty());
                certs.alipay_key(sn).ok_or_else(|| {
                    Rejection::BadSignature(format!(
                        "alipay_cert_sn `{}` names an Alipay certificate account `{}` does not hold \
                         (it holds `{}`): Alipay has a new certificate; download it and set it as \
                         `alipay_cert_file`",
                        sn.unwrap_or_default().escape_debug(),
                        self.name,
                        certs.alipay_cert_sn()
                    ))
                })?
            }
        };
        if sign.is_empty() {
            return Err(Rejection::BadSignature("no `sign` parameter".into()));
        }
        let sig_bytes = base64::engine::general_purpose::STANDARD
            .decode(sign)
            .map_err(|_| Rejection::BadSignature("`sign` is not base64".into()))?;
        let sig = Signature::try_from(sig_bytes.as_slice())
            .map_err(|_| Rejection::BadSignature("`sign` is not an RSA signature".into()))?;
        key.verify(message, &sig)
            .map_err(|_| Rejection::BadSignature("signature does not match".into()))
    }

    /// Also require this `seller_id`.
    pub fn with_seller_id(mut self, seller_id: &str) -> Account {
        self.seller_id = Some(seller_id.into());
        self
    }
}

/// Parses the Alipay public key as the console gives it: PEM (`BEGIN PUBLIC KEY`, or
/// `BEGIN RSA PUBLIC KEY`) or the bare base64 of the SubjectPublicKeyInfo DER, possibly
/// wrapped over several lines.
pub fn parse_public_key(text: &str) -> Result<RsaPublicKey, String> {
    let text = text.trim();
    if text.contains("-----BEGIN RSA PUBLIC KEY-----") {
        return RsaPublicKey::from_pkcs1_pem(text)
            .map_err(|e| format!("not a PKCS#1 RSA public key: {e}"));
    }
    if text.contains("-----BEGIN") {
        return RsaPublicKey::from_public_key_pem(text)
            .map_err(|e| format!("not a PEM RSA public key (-----BEGIN PUBLIC KEY-----): {e}"));
    }
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|e| format!("neither PEM nor base64: {e}"))?;
    RsaPublicKey::from_public_key_der(&der)
        .map_err(|e| format!("not an RSA public key (SubjectPublicKeyInfo): {e}"))
}

/// Parses a form body into a map, decoded by its declared `charset` ([`form::Form`]).
pub fn parse_form(body: &[u8]) -> Result<BTreeMap<String, String>, Rejection> {
    Form::parse(body).map(|f| f.fields)
}

/// The string Alipay signs: every non-empty parameter except `sign` and `sign_type`,
/// sorted by name, `k=v` joined by `&` (values URL-decoded).
pub fn string_to_sign(fields: &BTreeMap<String, String>) -> String {
    let mut s = String::with_capacity(1024);
    for (k, v) in signed_fields(fields) {
        if !s.is_empty() {
            s.push('&');
        }
        s.push_str(k);
        s.push('=');
        s.push_str(v);
    }
    s
}

/// The parameters [`string_to_sign`] joins, in its order.
pub fn signed_fields(fields: &BTreeMap<String, String>) -> Vec<(&str, &str)> {
    fields
        .iter()
        .filter(|(k, v)| *k != "sign" && *k != "sign_type" && !v.is_empty())
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// Yuan with at most two decimals (`"0.01"`, `"100"`, `"1.5"`) → fen, exactly.
pub fn yuan_to_fen(s: &str) -> Option<i64> {
    let (whole, frac) = match s.split_once('.') {
        Some((w, f)) => (w, f),
        None => (s, ""),
    };
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || whole.len() > 13 || !digits(whole) || !digits(frac) || frac.len() > 2 {
        return None;
    }
    if s.contains('.') && frac.is_empty() {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let frac: i64 = match frac.len() {
        0 => 0,
        1 => frac.parse::<i64>().ok()? * 10,
        _ => frac.parse().ok()?,
    };
    whole.checked_mul(100)?.checked_add(frac)
}

/// Parameter `k` as fen, refused unless it is yuan with at most two decimals.
fn yuan_field(fields: &BTreeMap<String, String>, k: &str) -> Result<i64, Rejection> {
    let v = fields.get(k).map(String::as_str).unwrap_or("");
    yuan_to_fen(v).ok_or_else(|| {
        Rejection::Malformed(format!(
            "{k} `{v}` is not an amount in yuan with at most two decimals"
        ))
    })
}

/// `yyyy-MM-dd HH:mm:ss` in China Standard Time → unix ms.
pub(crate) fn parse_gmt(s: &str) -> Option<i64> {
    china_time_ms(
        s,
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]"),
    )
}

/// A refund notification's facts. Alipay states the total refunded so far, not this
/// refund's share of it.
fn refund_kind(fields: &BTreeMap<String, String>) -> Result<NoticeKind, Rejection> {
    let get = |k: &str| fields.get(k).map(String::as_str).unwrap_or("");
    if get("out_trade_no").is_empty() {
        return Err(Rejection::Malformed("refund has no out_trade_no".into()));
    }
    refund_of(&RefundFacts {
        out_refund_no: ("out_biz_no", get("out_biz_no")),
        trade_no: get("trade_no"),
        refund_fee: get("refund_fee"),
        total_amount: fields.get("total_amount").map(String::as_str),
        refunded_at: get("gmt_refund"),
    })
}

/// What Alipay states about a refund: in its refund notification, or in its answer to
/// `alipay.trade.refund` (`pay.rs`), which name some of it differently.
pub(crate) struct RefundFacts<'a> {
    /// The merchant's refund number, and what it is called where it came from
    /// (`out_biz_no` in a notification; the answer does not repeat `out_request_no`).
    pub out_refund_no: (&'static str, &'a str),
    /// Alipay's transaction number of the refunded payment.
    pub trade_no: &'a str,
    /// `refund_fee`: yuan refunded on the trade so far, this refund included.
    pub refund_fee: &'a str,
    /// The trade's total in yuan, when stated.
    pub total_amount: Option<&'a str>,
    /// When the refund happened (`gmt_refund`, `gmt_refund_pay`), China time.
    pub refunded_at: &'a str,
}

/// The refund `f` states, read one way wherever it comes from: the amount is
/// [`RefundAmount::Cumulative`] (the refund path applies what it adds to the order's
/// refunded total, so a later refund's report covering an earlier one applies once).
pub(crate) fn refund_of(f: &RefundFacts<'_>) -> Result<NoticeKind, Rejection> {
    let (no_name, out_refund_no) = f.out_refund_no;
    for (k, v) in [(no_name, out_refund_no), ("trade_no", f.trade_no)] {
        if v.is_empty() {
            return Err(Rejection::Malformed(format!("refund has no {k}")));
        }
    }
    let yuan = |k: &str, v: &str| {
        yuan_to_fen(v).ok_or_else(|| {
            Rejection::Malformed(format!(
                "{k} `{v}` is not an amount in yuan with at most two decimals"
            ))
        })
    };
    let refunded = yuan("refund_fee", f.refund_fee)?;
    if refunded == 0 {
        return Err(Rejection::Malformed("refund_fee is 0".into()));
    }
    let total_fee = match f.total_amount {
        None | Some("") => None,
        Some(t) => Some(yuan("total_amount", t)?),
    };
    // `gmt_refund` carries milliseconds (`2026-01-01 10:00:00.320`); seconds suffice.
    let at = f.refunded_at;
    let refunded_at = parse_gmt(at.split('.').next().unwrap_or(at));
    Ok(NoticeKind::Refunded(Refund {
        out_refund_no: out_refund_no.to_owned(),
        refund_id: String::new(),
        transaction_id: f.trade_no.to_owned(),
        amount: RefundAmount::Cumulative(refunded),
        total_fee,
        refunded_at,
    }))
}

/// The Alipay provider.
pub struct Alipay {
    accounts: Vec<Account>,
}

impl Alipay {
    /// A provider over these accounts.
    pub fn new(accounts: Vec<Account>) -> Alipay {
        Alipay { accounts }
    }
}

impl Provider for Alipay {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Alipay
    }

    fn accounts(&self) -> Vec<&str> {
        self.accounts.iter().map(|a| a.name.as_str()).collect()
    }

    fn content_types(&self) -> ContentTypes {
        CONTENT_TYPES
    }

    fn verify(&self, inbound: &Inbound<'_>) -> Result<Notice, Rejection> {
        // Decoded by its declared charset (UTF-8, GBK); an unknown one is refused.
        let form = Form::parse(inbound.body)?;
        let fields = &form.fields;
        let get = |k: &str| fields.get(k).map(String::as_str).unwrap_or("");
        match fields.get("sign_type").map(String::as_str) {
            None | Some("RSA2") => {}
            Some(other) => {
                return Err(Rejection::Unsupported(format!(
                    "sign_type `{other}` (only RSA2)"
                )))
            }
        }
        let account = pick_account(
            &self.accounts,
            |a| &a.name,
            inbound.account,
            |a| a.app_id == get("app_id"),
        )?;
        // `alipay_cert_sn` is itself signed: it only picks which held certificate to try.
        account.verify_rsa2(
            &form.signed_bytes(),
            get("sign"),
            fields.get("alipay_cert_sn").map(String::as_str),
        )?;
        // The signature covers a string, not the parameters: it means these parameters
        // only if that string cannot be split into others (`body` = `x&out_trade_no=…`).
        // A value may still hold `&` not followed by `name=` (`Tom & Jerry`); URL-encoded
        // text in `passback_params` arrives decoded once, its own `%26` intact.
        require_unambiguous(&signed_fields(fields))?;

        // Verified: now the identifiers mean something.
        if get("app_id") != account.app_id {
            return Err(Rejection::AccountMismatch(format!(
                "app_id `{}` does not belong to account `{}`",
                get("app_id"),
                account.name
            )));
        }
        if let Some(seller_id) = &account.seller_id {
            if get("seller_id") != seller_id {
                return Err(Rejection::AccountMismatch(format!(
                    "seller_id `{}` does not belong to account `{}`",
                    get("seller_id"),
                    account.name
                )));
            }
        }
        let out_trade_no = get("out_trade_no").to_owned();
        // Only a well-formed notification may be acknowledged as a non-payment: one the
        // host cannot read is refused, so Alipay retries it and someone sees the reason.
        if out_trade_no.is_empty() {
            return Err(Rejection::Malformed("no out_trade_no".into()));
        }
        let yuan = |k: &str| yuan_field(fields, k);
        if fields.contains_key("total_amount") {
            yuan("total_amount")?;
        }
        let trade_status = get("trade_status");
        let is_refund = (!get("out_biz_no").is_empty() || !get("gmt_refund").is_empty())
            && matches!(trade_status, "TRADE_SUCCESS" | "TRADE_CLOSED");
        let kind = match trade_status {
            _ if is_refund => refund_kind(fields)?,
            "TRADE_SUCCESS" | "TRADE_FINISHED" => {
                let trade_no = get("trade_no");
                if trade_no.is_empty() {
                    return Err(Rejection::Malformed("no trade_no".into()));
                }
                NoticeKind::Paid(Payment {
                    transaction_id: trade_no.to_owned(),
                    amount: yuan("total_amount")?,
                    paid_at: parse_gmt(get("gmt_payment")),
                })
            }
            // The documented non-payment states: recorded, acknowledged, never a payment.
            "WAIT_BUYER_PAY" | "TRADE_CLOSED" => NoticeKind::NotPaid {
                state: trade_status.to_owned(),
            },
            "" => return Err(Rejection::Malformed("no trade_status".into())),
            // A state this host does not know may be a payment it cannot read: refused
            // (Alipay retries), not acknowledged as nothing.
            other => {
                return Err(Rejection::Unsupported(format!(
                    "trade_status `{other}` is none of WAIT_BUYER_PAY, TRADE_CLOSED, TRADE_SUCCESS, TRADE_FINISHED"
                )))
            }
        };
        Ok(Notice {
            account: account.name.clone(),
            out_trade_no,
            kind,
            fields: form.fields,
            sub_mchid: None,
        })
    }

    fn success(&self) -> Answer {
        Answer {
            status: 200,
            content_type: Some("text/plain; charset=utf-8"),
            body: b"success".to_vec(),
        }
    }

    fn failure(&self, _reason: &str) -> Answer {
        // Alipay reads only the body: anything but `success` is a failure. The reason is
        // stored with the notification and logged, not sent.
        Answer {
            status: 200,
            content_type: Some("text/plain; charset=utf-8"),
            body: b"failure".to_vec(),
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod cert_tests;

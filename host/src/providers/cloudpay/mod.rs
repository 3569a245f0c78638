//! WeChat CloudPay (云开发 微信支付): the payment callback event of a cloud function,
//! relayed to this host by the merchant's own cloud function.
//!
//! WeChat delivers CloudPay callbacks to a cloud function, not to a URL, and signs
//! nothing the relay could pass on; so the relay authenticates itself with a secret it
//! shares with this host, one per account: `X-Paynotify-Timestamp` (unix seconds) and
//! `X-Paynotify-Signature: v1=<hex HMAC-SHA256(secret, timestamp + "." + body)>`, over
//! the body's raw bytes. The timestamp must be within 5 minutes of the time of receipt,
//! so a captured request cannot be replayed later, while a stored notification replayed
//! by ops still verifies. The relay should forward the event object unchanged
//! (`JSON.stringify(event)`): `outTradeNo`, `totalFee` (fen), `resultCode`, `returnCode`,
//! `transactionId`, `subMchId`, `timeEnd`, …
//!
//! The answer is the object CloudPay expects from the callback function,
//! `{"errcode":0,"errmsg":"SUCCESS"}`; the relay returns it to WeChat as its own result.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::common::{check_timestamp, nonblank_header, pick_account, required};
use super::json::{flatten_unique, optional_str, parse_json_unique, required_str, str_or_empty};
use super::wechat_v2::parse_time_end;
use super::{
    Answer, ContentTypes, Inbound, Notice, NoticeKind, Payment, Provider, ProviderKind, Rejection,
};
use crate::config::AccountConfig;

/// Largest allowed difference between `X-Paynotify-Timestamp` and the time of receipt.
pub const MAX_CLOCK_SKEW_SECS: i64 = 5 * 60;

/// Header carrying the relay's timestamp (unix seconds).
pub const TIMESTAMP_HEADER: &str = "x-paynotify-timestamp";

/// Header carrying the relay's signature, `v1=<hex>`.
pub const SIGNATURE_HEADER: &str = "x-paynotify-signature";

/// The relay forwards the event as JSON.
pub const CONTENT_TYPES: ContentTypes = ContentTypes {
    media_types: &["application/json"],
    may_be_absent: false,
};

/// One configured CloudPay sub-merchant.
#[derive(Clone)]
pub struct Account {
    name: String,
    sub_mch_id: String,
    secret: String,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("name", &self.name)
            .field("sub_mch_id", &self.sub_mch_id)
            .finish_non_exhaustive()
    }
}

impl Account {
    /// Reads the CloudPay keys of an `[[accounts]]` entry.
    pub fn from_config(a: &AccountConfig) -> Result<Account, String> {
        let sub_mch_id = required(&a.sub_mch_id, "sub_mch_id", false, ProviderKind::Cloudpay)?;
        let secret = required(&a.secret, "secret", true, ProviderKind::Cloudpay)?;
        if secret.len() < 16 {
            return Err("`secret` must be at least 16 bytes (use a long random string)".into());
        }
        Ok(Account::new(&a.name, &sub_mch_id, &secret))
    }

    /// Builds an account directly (tests, tools).
    pub fn new(name: &str, sub_mch_id: &str, secret: &str) -> Account {
        Account {
            name: name.into(),
            sub_mch_id: sub_mch_id.into(),
            secret: secret.into(),
        }
    }
}

fn mac(secret: &str, timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `X-Paynotify-Signature` value for `body` sent at `timestamp` (for relays and tests).
pub fn signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    format!(
        "v1={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

/// The CloudPay provider.
pub struct Cloudpay {
    accounts: Vec<Account>,
}

impl Cloudpay {
    /// A provider over these accounts.
    pub fn new(accounts: Vec<Account>) -> Cloudpay {
        Cloudpay { accounts }
    }
}

impl Provider for Cloudpay {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Cloudpay
    }

    fn accounts(&self) -> Vec<&str> {
        self.accounts.iter().map(|a| a.name.as_str()).collect()
    }

    fn content_types(&self) -> ContentTypes {
        CONTENT_TYPES
    }

    fn verify(&self, inbound: &Inbound<'_>) -> Result<Notice, Rejection> {
        let timestamp = nonblank_header(inbound, TIMESTAMP_HEADER)
            .ok_or_else(|| Rejection::BadSignature("no `X-Paynotify-Timestamp` header".into()))?;
        let signature = nonblank_header(inbound, SIGNATURE_HEADER)
            .ok_or_else(|| Rejection::BadSignature("no `X-Paynotify-Signature` header".into()))?;
        check_timestamp(
            "X-Paynotify-Timestamp",
            timestamp,
            inbound.received_at,
            MAX_CLOCK_SKEW_SECS,
        )?;
        let hex_sig = signature.strip_prefix("v1=").ok_or_else(|| {
            Rejection::BadSignature("X-Paynotify-Signature must be `v1=<hex>`".into())
        })?;
        let sig = hex::decode(hex_sig)
            .ok()
            .filter(|s| s.len() == 32)
            .ok_or_else(|| {
                Rejection::BadSignature("X-Paynotify-Signature is not 64 hex digits".into())
            })?;

        // The event names its sub-merchant; that picks the account whose secret must
        // have signed it. Nothing else in it is used before the signature verifies.
        let event: Value = parse_json_unique(inbound.body)
            .map_err(|e| Rejection::Malformed(format!("body is not JSON: {e}")))?;
        if !event.is_object() {
            return Err(Rejection::Malformed("body is not a JSON object".into()));
        }
        let sub_mch_id = str_or_empty(&event, "subMchId");
        let account = pick_account(
            &self.accounts,
            |a| &a.name,
            inbound.account,
            |a| a.sub_mch_id == sub_mch_id,
        )?;
        mac(&account.secret, timestamp, inbound.body)
            .verify_slice(&sig)
            .map_err(|_| Rejection::BadSignature("signature does not match".into()))?;

        if sub_mch_id != account.sub_mch_id {
            return Err(Rejection::AccountMismatch(format!(
                "subMchId `{sub_mch_id}` does not belong to account `{}`",
                account.name
            )));
        }
        let mut fields = BTreeMap::new();
        flatten_unique(&event, "", &mut fields)?;
        // Only a well-formed event may be acknowledged as a non-payment: one the host
        // cannot read (a code missing, a field of the wrong type) is refused, so the relay
        // reports the failure and someone sees the reason.
        match required_str(&event, "returnCode")? {
            "SUCCESS" => {}
            // As in WeChat Pay v2: a communication failure carries no result to record.
            "FAIL" => {
                return Err(Rejection::Unsupported(format!(
                    "returnCode FAIL ({})",
                    optional_str(&event, "returnMsg")?
                )))
            }
            other => {
                return Err(Rejection::Malformed(format!(
                    "returnCode `{other}` is neither SUCCESS nor FAIL"
                )))
            }
        }
        let result_code = required_str(&event, "resultCode")?;
        let out_trade_no = required_str(&event, "outTradeNo")?.to_owned();
        if out_trade_no.is_empty() {
            return Err(Rejection::Malformed("outTradeNo is empty".into()));
        }
        let amount = event
            .get("totalFee")
            .ok_or_else(|| Rejection::Malformed("no totalFee".into()))?
            .as_i64()
            .filter(|n| *n >= 0)
            .ok_or_else(|| Rejection::Malformed("totalFee is not an amount in fen".into()))?;
        let kind = match result_code {
            "SUCCESS" => {
                let transaction_id = required_str(&event, "transactionId")?;
                if transaction_id.is_empty() {
                    return Err(Rejection::Malformed("transactionId is empty".into()));
                }
                NoticeKind::Paid(Payment {
                    transaction_id: transaction_id.to_owned(),
                    amount,
                    paid_at: parse_time_end(optional_str(&event, "timeEnd")?),
                })
            }
            "FAIL" => NoticeKind::NotPaid {
                state: format!(
                    "returnCode SUCCESS resultCode FAIL {}",
                    optional_str(&event, "errCode")?
                )
                .trim()
                .to_owned(),
            },
            other => {
                return Err(Rejection::Malformed(format!(
                    "resultCode `{other}` is neither SUCCESS nor FAIL"
                )))
            }
        };
        Ok(Notice {
            account: account.name.clone(),
            out_trade_no,
            kind,
            fields,
        })
    }

    fn success(&self) -> Answer {
        Answer {
            status: 200,
            content_type: Some("application/json"),
            body: br#"{"errcode":0,"errmsg":"SUCCESS"}"#.to_vec(),
        }
    }

    fn failure(&self, reason: &str) -> Answer {
        Answer {
            status: 200,
            content_type: Some("application/json"),
            body: serde_json::json!({ "errcode": 1, "errmsg": reason })
                .to_string()
                .into_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUB_MCH_ID: &str = "1900000109";
    const SECRET: &str = "cloudpay-relay-secret-0123456789";
    const NOW_MS: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    const NOW_S: i64 = NOW_MS / 1000;

    /// A payment event shaped like the one CloudPay hands the callback function.
    fn event(out_trade_no: &str, total_fee: i64, result_code: &str) -> Value {
        serde_json::json!({
            "appid": "wxd930ea5d5a258f4f",
            "bankType": "OTHERS",
            "cashFee": total_fee,
            "feeType": "CNY",
            "isSubscribe": "N",
            "mchId": "1230000109",
            "nonceStr": "5K8264ILTKCH16CQ2502SI8ZNMTM67VS",
            "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
            "outTradeNo": out_trade_no,
            "resultCode": result_code,
            "returnCode": "SUCCESS",
            "subAppid": "wx2421b1c4370ec43b",
            "subIsSubscribe": "N",
            "subMchId": SUB_MCH_ID,
            "subOpenid": "oUpF8uN95-Ptaags6E_roPHg7AG0",
            "timeEnd": "20260101080000",
            "totalFee": total_fee,
            "tradeType": "JSAPI",
            "transactionId": "4200000001202601010000000042",
            "userInfo": { "appId": "wx2421b1c4370ec43b", "openId": "oUpF8uN95-Ptaags6E_roPHg7AG0" },
        })
    }

    /// The signature computed here with the `hmac` crate directly, not with the module's helper.
    fn sign(secret: &str, ts: i64, body: &str) -> Vec<(String, String)> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("key");
        m.update(format!("{ts}.{body}").as_bytes());
        vec![
            (TIMESTAMP_HEADER.into(), ts.to_string()),
            (
                SIGNATURE_HEADER.into(),
                format!("v1={}", hex::encode(m.finalize().into_bytes())),
            ),
        ]
    }

    fn provider() -> Cloudpay {
        Cloudpay::new(vec![Account::new("default", SUB_MCH_ID, SECRET)])
    }

    fn verify(p: &Cloudpay, headers: &[(String, String)], body: &str) -> Result<Notice, Rejection> {
        p.verify(&Inbound {
            account: None,
            headers,
            body: body.as_bytes(),
            received_at: NOW_MS,
        })
    }

    /// RFC 4231 test case 2 ("Jefe"): the HMAC-SHA256 the relay signature is built on.
    #[test]
    fn known_answer_hmac_sha256_rfc4231() {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(b"Jefe").expect("key");
        m.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(m.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // `signature` is that HMAC over `timestamp + "." + body`.
        let body = event("C0", 1, "SUCCESS").to_string();
        assert_eq!(
            signature(SECRET, "1767225600", body.as_bytes()),
            sign(SECRET, 1_767_225_600, &body)[1].1
        );
    }

    #[test]
    fn accepts_a_signed_payment() {
        let body = event("COP1767225600000123", 100, "SUCCESS").to_string();
        let n = verify(&provider(), &sign(SECRET, NOW_S - 10, &body), &body).expect("verifies");
        assert_eq!(n.account, "default");
        assert_eq!(n.out_trade_no, "COP1767225600000123");
        let NoticeKind::Paid(p) = &n.kind else {
            panic!("not paid: {:?}", n.kind)
        };
        assert_eq!(p.amount, 100);
        assert_eq!(p.transaction_id, "4200000001202601010000000042");
        assert_eq!(p.paid_at, Some(NOW_MS)); // 2026-01-01 08:00:00 +08:00
        assert_eq!(n.fields["totalFee"], "100");
        assert_eq!(n.fields["userInfo.openId"], "oUpF8uN95-Ptaags6E_roPHg7AG0");
    }

    #[test]
    fn rejects_tampering_wrong_secrets_and_stale_timestamps() {
        let body = event("C2", 100, "SUCCESS").to_string();
        let h = sign(SECRET, NOW_S, &body);
        let tampered = body.replace("\"totalFee\":100", "\"totalFee\":1");
        assert_ne!(tampered, body);
        assert!(matches!(
            verify(&provider(), &h, &tampered),
            Err(Rejection::BadSignature(_))
        ));
        let wrong = sign("another-secret-0123456789abcdef", NOW_S, &body);
        assert!(matches!(
            verify(&provider(), &wrong, &body),
            Err(Rejection::BadSignature(_))
        ));
        for ts in [NOW_S - 301, NOW_S + 301] {
            assert!(matches!(
                verify(&provider(), &sign(SECRET, ts, &body), &body),
                Err(Rejection::Stale(_))
            ));
        }
        assert!(verify(&provider(), &sign(SECRET, NOW_S + 300, &body), &body).is_ok());
        // The timestamp is signed: moving it breaks the signature.
        let mut moved = h.clone();
        moved[0].1 = (NOW_S + 1).to_string();
        assert!(matches!(
            verify(&provider(), &moved, &body),
            Err(Rejection::BadSignature(_))
        ));
        // Upper-case hex is the same bytes and verifies; other shapes do not.
        let mut upper = h.clone();
        upper[1].1 = format!("v1={}", upper[1].1[3..].to_uppercase());
        assert!(verify(&provider(), &upper, &body).is_ok());
        for bad in ["", "v2=00", "v1=zz", "v1=00", &h[1].1[3..]] {
            let mut b = h.clone();
            b[1].1 = bad.to_string();
            assert!(
                matches!(
                    verify(&provider(), &b, &body),
                    Err(Rejection::BadSignature(_))
                ),
                "{bad:?}"
            );
        }
        assert!(verify(&provider(), &h[..1], &body).is_err());
        assert!(verify(&provider(), &h[1..], &body).is_err());
    }

    #[test]
    fn rejects_another_sub_merchant() {
        let p = Cloudpay::new(vec![
            Account::new("a", SUB_MCH_ID, SECRET),
            Account::new("b", "1900000202", "secret-of-account-b-0123456789"),
        ]);
        let mut ev = event("C3", 100, "SUCCESS");
        ev["subMchId"] = "1900000202".into();
        let body = ev.to_string();
        // Signed with b's secret: b's.
        assert_eq!(
            verify(
                &p,
                &sign("secret-of-account-b-0123456789", NOW_S, &body),
                &body
            )
            .expect("b")
            .account,
            "b"
        );
        // Signed with a's secret but naming b: b's secret does not verify it.
        assert!(matches!(
            verify(&p, &sign(SECRET, NOW_S, &body), &body),
            Err(Rejection::BadSignature(_))
        ));
        // Sent to a's URL with a's secret: verified for a, then refused for the sub-merchant.
        let via_a = p.verify(&Inbound {
            account: Some("a"),
            headers: &sign(SECRET, NOW_S, &body),
            body: body.as_bytes(),
            received_at: NOW_MS,
        });
        assert!(matches!(via_a, Err(Rejection::AccountMismatch(_))));
        // A sub-merchant nobody has.
        ev["subMchId"] = "1900000303".into();
        let body = ev.to_string();
        assert!(matches!(
            verify(&p, &sign(SECRET, NOW_S, &body), &body),
            Err(Rejection::AccountMismatch(_))
        ));
    }

    #[test]
    fn result_fail_is_verified_but_not_paid() {
        let mut ev = event("C4", 100, "FAIL");
        ev["errCode"] = "NOTENOUGH".into();
        let body = ev.to_string();
        let n = verify(&provider(), &sign(SECRET, NOW_S, &body), &body).expect("verifies");
        assert_eq!(
            n.kind,
            NoticeKind::NotPaid {
                state: "returnCode SUCCESS resultCode FAIL NOTENOUGH".into()
            }
        );
    }

    #[test]
    fn malformed_events_are_rejected_not_panicked_on() {
        for body in ["", "not json", "[]", "{\"subMchId\":1}"] {
            assert!(
                verify(&provider(), &sign(SECRET, NOW_S, body), body).is_err(),
                "accepted {body:?}"
            );
        }
        for fee in [
            serde_json::json!(1.5),
            serde_json::json!(-1),
            serde_json::json!("100"),
            Value::Null,
        ] {
            let mut ev = event("C5", 100, "SUCCESS");
            ev["totalFee"] = fee.clone();
            let body = ev.to_string();
            assert!(
                matches!(
                    verify(&provider(), &sign(SECRET, NOW_S, &body), &body),
                    Err(Rejection::Malformed(_))
                ),
                "{fee}"
            );
        }
        let mut h = sign(SECRET, NOW_S, "{}");
        h[0].1 = "12a".into();
        assert!(matches!(
            verify(&provider(), &h, "{}"),
            Err(Rejection::Malformed(_))
        ));
    }

    /// Signed but unreadable: refused, never acknowledged as a non-payment.
    #[test]
    fn signed_malformed_events_are_refused_not_ignored() {
        type Change = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(&str, Change, &str)> = vec![
            (
                "no returnCode",
                Box::new(|e| drop(e.as_object_mut().map(|o| o.remove("returnCode")))),
                "no returnCode",
            ),
            (
                "no resultCode",
                Box::new(|e| drop(e.as_object_mut().map(|o| o.remove("resultCode")))),
                "no resultCode",
            ),
            (
                "no codes",
                Box::new(|e| {
                    drop(e.as_object_mut().map(|o| {
                        o.remove("returnCode");
                        o.remove("resultCode")
                    }))
                }),
                "no returnCode",
            ),
            (
                "numeric outTradeNo, string totalFee",
                Box::new(|e| {
                    e["outTradeNo"] = 42.into();
                    e["totalFee"] = "100".into();
                }),
                "outTradeNo is 42",
            ),
            (
                "string totalFee, FAIL",
                Box::new(|e| {
                    e["totalFee"] = "100".into();
                    e["resultCode"] = "FAIL".into();
                }),
                "totalFee",
            ),
            (
                "numeric resultCode",
                Box::new(|e| e["resultCode"] = 0.into()),
                "resultCode is 0",
            ),
            (
                "unknown resultCode",
                Box::new(|e| e["resultCode"] = "MAYBE".into()),
                "resultCode `MAYBE`",
            ),
            (
                "no outTradeNo, FAIL",
                Box::new(|e| {
                    e["resultCode"] = "FAIL".into();
                    e["outTradeNo"] = Value::Null;
                }),
                "no outTradeNo",
            ),
            (
                "numeric errCode, FAIL",
                Box::new(|e| {
                    e["resultCode"] = "FAIL".into();
                    e["errCode"] = 7.into();
                }),
                "errCode is 7",
            ),
        ];
        for (name, change, reason) in cases {
            let mut ev = event("C7", 100, "SUCCESS");
            change(&mut ev);
            let body = ev.to_string();
            let r = verify(&provider(), &sign(SECRET, NOW_S, &body), &body);
            assert!(
                matches!(&r, Err(Rejection::Malformed(m)) if m.contains(reason)),
                "{name}: {r:?}"
            );
        }
        let mut ev = event("C7", 100, "SUCCESS");
        ev["returnCode"] = "FAIL".into();
        let body = ev.to_string();
        let r = verify(&provider(), &sign(SECRET, NOW_S, &body), &body);
        assert!(matches!(r, Err(Rejection::Unsupported(_))), "{r:?}");
    }

    /// JSON that two readers could read two ways: refused, even when signed.
    #[test]
    fn repeated_or_colliding_keys_are_refused() {
        let good = event("C9", 100, "SUCCESS").to_string();
        let repeated = good.replacen("{", "{\"outTradeNo\":\"OTHER\",", 1);
        let escaped = good.replacen("{", "{\"out\\u0054radeNo\":\"OTHER\",", 1);
        let colliding = good.replacen("{", "{\"userInfo.openId\":\"someone-else\",", 1);
        for (body, reason) in [
            (&repeated, "appears twice"),
            (&escaped, "appears twice"),
            (&colliding, "both named `userInfo.openId`"),
        ] {
            let r = verify(&provider(), &sign(SECRET, NOW_S, body), body);
            assert!(
                matches!(&r, Err(Rejection::Malformed(m)) if m.contains(reason)),
                "{body}: {r:?}"
            );
        }
        assert!(verify(&provider(), &sign(SECRET, NOW_S, &good), &good).is_ok());
    }

    /// Mutated events, correctly signed, never panic the parser.
    #[test]
    fn mutated_signed_events_never_panic() {
        let base = event("C6", 100, "SUCCESS").to_string().into_bytes();
        let alphabet = b"{}[]\":,.-+eE0123456789 \\nulltruefalseSUCCESS\xff";
        for _ in 0..2000 {
            let mut b = base.clone();
            for _ in 0..(rand::random::<usize>() % 4 + 1) {
                let i = rand::random::<usize>() % b.len();
                b[i] = alphabet[rand::random::<usize>() % alphabet.len()];
            }
            let body = String::from_utf8_lossy(&b).into_owned();
            let _ = verify(&provider(), &sign(SECRET, NOW_S, &body), &body);
        }
    }

    #[test]
    fn answers_and_config() {
        let p = provider();
        assert_eq!(
            p.success().body,
            br#"{"errcode":0,"errmsg":"SUCCESS"}"#.to_vec()
        );
        let f: Value = serde_json::from_slice(&p.failure("bad \"x\"").body).expect("json");
        assert_eq!(
            f,
            serde_json::json!({ "errcode": 1, "errmsg": "bad \"x\"" })
        );
        let cfg: AccountConfig =
            toml::from_str("provider = \"cloudpay\"\nsub_mch_id = \"1\"\nsecret = \"short\"\n")
                .expect("config");
        assert!(Account::from_config(&cfg).unwrap_err().contains("`secret`"));
        let cfg: AccountConfig =
            toml::from_str("provider = \"cloudpay\"\nsecret = \"0123456789abcdef0\"\n")
                .expect("config");
        assert!(Account::from_config(&cfg)
            .unwrap_err()
            .contains("`sub_mch_id`"));
    }
}

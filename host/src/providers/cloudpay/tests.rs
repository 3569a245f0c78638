//! CloudPay relay parsing and verification.

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

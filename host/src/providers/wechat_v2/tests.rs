//! WeChat Pay v2 notifications: the documented signature, refusals, refunds.

use super::*;

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The example in WeChat Pay's v2 signature documentation (安全规范 / 签名算法).
#[test]
fn known_answer_from_wechat_docs() {
    let fields = map(&[
        ("appid", "wxd930ea5d5a258f4f"),
        ("mch_id", "10000100"),
        ("device_info", "1000"),
        ("body", "test"),
        ("nonce_str", "ibuaiVcKdpRxkhJA"),
    ]);
    let key = "192006250b4c09247ec02edce69f6a2d";
    assert_eq!(
        string_to_sign(&fields, key),
        "appid=wxd930ea5d5a258f4f&body=test&device_info=1000&mch_id=10000100&nonce_str=ibuaiVcKdpRxkhJA&key=192006250b4c09247ec02edce69f6a2d"
    );
    assert_eq!(
        sign(&fields, key, SignType::Md5),
        "9A0A8659F005D6984697E2CA0A9CF3B7"
    );
    assert_eq!(
        sign(&fields, key, SignType::HmacSha256),
        "6A9AE1657590FD6257D693A078E1C3E4BB6BA4DC30B23E0EE2496E54170DACD6"
    );
}

fn paid_fields() -> BTreeMap<String, String> {
    map(&[
        ("appid", "wx2421b1c4370ec43b"),
        ("bank_type", "CFT"),
        ("cash_fee", "100"),
        ("fee_type", "CNY"),
        ("is_subscribe", "Y"),
        ("mch_id", "10000100"),
        ("nonce_str", "5d2b6c2a8db53831f7eda20af46e531c"),
        ("openid", "oUpF8uMEb4qRXf22hE3X68TekukE"),
        ("out_trade_no", "1409811653"),
        ("result_code", "SUCCESS"),
        ("return_code", "SUCCESS"),
        ("time_end", "20140903131540"),
        ("total_fee", "100"),
        ("trade_type", "JSAPI"),
        ("transaction_id", "1004400740201409030005092168"),
    ])
}

fn provider() -> WechatV2 {
    WechatV2::new(vec![Account::new(
        "default",
        "wx2421b1c4370ec43b",
        "10000100",
        "k3y",
    )])
}

fn verify(body: &str) -> Result<Notice, Rejection> {
    provider().verify(&Inbound {
        account: None,
        headers: &[],
        body: body.as_bytes(),
        received_at: 0,
    })
}

#[test]
fn accepts_a_signed_payment_in_both_sign_types() {
    for st in [SignType::Md5, SignType::HmacSha256] {
        let mut f = paid_fields();
        if st == SignType::HmacSha256 {
            f.insert("sign_type".into(), "HMAC-SHA256".into());
        }
        let n = verify(&signed_xml(&f, "k3y", st)).expect("verifies");
        assert_eq!(n.out_trade_no, "1409811653");
        let NoticeKind::Paid(p) = n.kind else {
            panic!("not paid")
        };
        assert_eq!(p.amount, 100);
        assert_eq!(p.transaction_id, "1004400740201409030005092168");
        // 2014-09-03 13:15:40 +08:00
        assert_eq!(p.paid_at, Some(1_409_721_340_000));
    }
}

#[test]
fn unknown_fields_take_part_in_the_signature() {
    let mut f = paid_fields();
    f.insert("attach".into(), "gift & <wrap>".into());
    let xml = signed_xml(&f, "k3y", SignType::Md5);
    assert!(verify(&xml).is_ok());
    let tampered = xml.replace("gift &", "gift!&");
    assert!(matches!(verify(&tampered), Err(Rejection::BadSignature(_))));
}

#[test]
fn rejects_tampering_and_wrong_keys() {
    let xml = signed_xml(&paid_fields(), "k3y", SignType::Md5);
    let tampered = xml.replace("<total_fee><![CDATA[100]]>", "<total_fee><![CDATA[1]]>");
    assert!(matches!(verify(&tampered), Err(Rejection::BadSignature(_))));
    let wrong_key = signed_xml(&paid_fields(), "other", SignType::Md5);
    assert!(matches!(
        verify(&wrong_key),
        Err(Rejection::BadSignature(_))
    ));
    let mut f = paid_fields();
    f.insert("mch_id".into(), "999".into());
    assert!(matches!(
        verify(&signed_xml(&f, "k3y", SignType::Md5)),
        Err(Rejection::AccountMismatch(_))
    ));
}

#[test]
fn result_fail_is_verified_but_not_paid() {
    let mut f = paid_fields();
    f.insert("result_code".into(), "FAIL".into());
    f.insert("err_code".into(), "NOTENOUGH".into());
    let n = verify(&signed_xml(&f, "k3y", SignType::Md5)).expect("verifies");
    assert_eq!(
        n.kind,
        NoticeKind::NotPaid {
            state: "FAIL NOTENOUGH".into()
        }
    );
}

#[test]
fn a_signature_re_split_into_other_fields_is_refused() {
    // A genuine notification whose `attach` holds `&out_trade_no=…`, and the one an
    // attacker makes of it: those fields split out, everything signed after `attach`
    // swallowed by a last field `zz`. Same string, so the same signature.
    let attack = "mch_id=10000100&out_trade_no=OTHER&result_code=SUCCESS&return_code=SUCCESS&total_fee=9900&transaction_id=4200000099&zz=";
    let mut genuine = paid_fields();
    genuine.insert("attach".into(), format!("x&{attack}"));
    let mut forged: BTreeMap<String, String> = attack
        .trim_end_matches('=')
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    forged.insert("appid".into(), genuine["appid"].clone());
    forged.insert("attach".into(), "x".into());
    let rest = string_to_sign(&genuine, "k3y");
    let rest = rest
        .split_once("&zz=")
        .and_then(|(_, r)| r.strip_suffix("&key=k3y"))
        .expect("the tail");
    forged.insert("zz".into(), rest.to_owned());
    assert_eq!(
        string_to_sign(&forged, "k3y"),
        string_to_sign(&genuine, "k3y")
    );
    let r = verify(&signed_xml(&forged, "k3y", SignType::Md5));
    assert!(
        matches!(&r, Err(Rejection::Ambiguous(m)) if m.contains("`zz` contains `&")),
        "{r:?}"
    );
    let r = verify(&signed_xml(&genuine, "k3y", SignType::Md5));
    assert!(
        matches!(&r, Err(Rejection::Ambiguous(m)) if m.contains("`attach` contains `&mch_id=`")),
        "{r:?}"
    );
    // `&` not followed by `name=`, and `=` after no `&`, are just text.
    let mut f = paid_fields();
    f.insert("attach".into(), "a=b, R&D && co&".into());
    assert!(verify(&signed_xml(&f, "k3y", SignType::Md5)).is_ok());
}

#[test]
fn signed_but_unreadable_payments_are_refused_not_ignored() {
    for (k, v, reason) in [
        ("result_code", None, "no result_code"),
        ("result_code", Some("MAYBE"), "result_code `MAYBE`"),
        ("out_trade_no", None, "no out_trade_no"),
        ("total_fee", None, "total_fee"),
        ("total_fee", Some("1e3"), "total_fee `1e3`"),
    ] {
        for result in ["SUCCESS", "FAIL"] {
            let mut f = paid_fields();
            f.insert("result_code".into(), result.into());
            match v {
                Some(v) => f.insert(k.into(), v.into()),
                None => f.remove(k),
            };
            let r = verify(&signed_xml(&f, "k3y", SignType::Md5));
            assert!(
                matches!(&r, Err(Rejection::Malformed(m)) if m.contains(reason)),
                "{k}={v:?} with {result}: {r:?}"
            );
        }
    }
}

#[test]
fn escaped_text_is_unescaped_before_signing() {
    let mut f = paid_fields();
    f.insert("attach".into(), "a&b<c".into());
    let signature = sign(&f, "k3y", SignType::Md5);
    let mut xml = String::from("<xml>");
    for (k, v) in &f {
        let v = v.replace('&', "&amp;").replace('<', "&lt;");
        xml.push_str(&format!("<{k}>{v}</{k}>"));
    }
    xml.push_str(&format!("<sign>{signature}</sign></xml>"));
    assert!(verify(&xml).is_ok());
}

#[test]
fn malformed_bodies_are_rejected_not_panicked_on() {
    for body in [
        "",
        "not xml",
        "<xml>",
        "<xml><a>1</a><a>2</a></xml>",
        "<xml><a><b>1</b></a></xml>",
        "<other><a>1</a></other>",
        "<!DOCTYPE x [<!ENTITY e \"boom\">]><xml><a>&e;</a></xml>",
        "<xml><a>1</a></xml><xml></xml>",
        "<xml><total_fee>1</total_fee></xml>trailing",
    ] {
        assert!(verify(body).is_err(), "accepted {body:?}");
    }
    let mut f = paid_fields();
    f.insert("total_fee".into(), "1.00".into());
    assert!(matches!(
        verify(&signed_xml(&f, "k3y", SignType::Md5)),
        Err(Rejection::Malformed(_))
    ));
}

/// The API key of WeChat Pay's v2 signature example, and a refund `req_info` made from
/// it with OpenSSL (independently of this code):
/// `openssl enc -aes-256-ecb -K $(printf %s $(printf %s KEY | md5sum | cut -c1-32) | xxd -p -c 64) -nosalt -base64 -A`.
const DOC_KEY: &str = "192006250b4c09247ec02edce69f6a2d";
const OPENSSL_REQ_INFO: &str = "WBzGpzQuNpcFxIlFjUUD9BfnwwNUlVAs7bwvgHME4/SH16i8syy9PWgFGltYq26djGWrkvWnE43GfLJKmHP/eG0/OzOYIOgiSnagAjbdzc//3fs4QpwtHsX1hhb1YnmFZnLcqgP/V+qLnVDWXwekZ6G+otF8m3pS3O4btqBgjQZ57qYaQSKu1XCgBGa8S1OiYfOTIbs2YIV5rwTx23arp2NioYT8f1G4kzEJYLIjRExgHVQpnL0QiB2jKwnktQMhnCf0+4BUUfDeSGBVhfK3Belw+G6pujIHMBtWq6uNP7eFIQorTDQTsMLwpfQpd0JccG8ZTGuIcbkRbjZP2LXy0vIz0NlQngs8xREYGEP0D8+YPvL8uOWVblLU5UC0mTjnTpOQlPjd8fWbkTSLo0Rpuu++OSXF/UhEq1F8rL/NTo77/vCyKRkNmD8cBKpJdx5RlOuh7EGd/g6yhGOIHtl8lcNm+4uvCZ3AXdHDBTz4IC0o/HLm1UzjSS9ptr8xe0aTI2r0JY1NXUrKVA3GSBH1DN1e4OhCwjeQ4KI+sJt+FZOiHtY2dMsmS8rRv3TjWfnncTqAE9gD0am3cOH4abJhag==";
const REFUND_PLAIN: &str = "<root><out_refund_no><![CDATA[R20260101001]]></out_refund_no><out_trade_no><![CDATA[1409811653]]></out_trade_no><refund_fee><![CDATA[40]]></refund_fee><refund_id><![CDATA[50000408942018111907145868882]]></refund_id><refund_status><![CDATA[SUCCESS]]></refund_status><success_time><![CDATA[2026-01-01 10:00:00]]></success_time><total_fee><![CDATA[100]]></total_fee><transaction_id><![CDATA[1004400740201409030005092168]]></transaction_id></root>";

#[test]
fn known_answer_req_info_from_openssl() {
    assert_eq!(req_info_key(DOC_KEY), "d96eb16afdd491fa1e705096edbc2205");
    let plain = decrypt_req_info(DOC_KEY, OPENSSL_REQ_INFO).expect("decrypts");
    assert_eq!(plain, REFUND_PLAIN.as_bytes());
    assert!(matches!(
        decrypt_req_info("another key", OPENSSL_REQ_INFO),
        Err(Rejection::BadSignature(_) | Rejection::Malformed(_))
    ));
    for garbage in ["", "not base64!", "QUJD", &OPENSSL_REQ_INFO[..40]] {
        assert!(decrypt_req_info(DOC_KEY, garbage).is_err(), "{garbage:?}");
    }
}

fn refund_envelope(req_info: &str) -> String {
    format!(
        "<xml><return_code>SUCCESS</return_code><appid><![CDATA[wx2421b1c4370ec43b]]></appid>\
         <mch_id><![CDATA[10000100]]></mch_id><nonce_str><![CDATA[TeqClE3i0mvn3DrK]]></nonce_str>\
         <req_info><![CDATA[{req_info}]]></req_info></xml>"
    )
}

#[test]
fn a_refund_notification_decrypts_into_a_refund() {
    let p = WechatV2::new(vec![Account::new(
        "default",
        "wx2421b1c4370ec43b",
        "10000100",
        DOC_KEY,
    )]);
    let body = refund_envelope(OPENSSL_REQ_INFO);
    let inbound = |b: &str| {
        p.verify(&Inbound {
            account: None,
            headers: &[],
            body: b.as_bytes(),
            received_at: 0,
        })
    };
    let n = inbound(&body).expect("verifies");
    assert_eq!(n.out_trade_no, "1409811653");
    assert_eq!(
        n.kind,
        NoticeKind::Refunded(Refund {
            out_refund_no: "R20260101001".into(),
            refund_id: "50000408942018111907145868882".into(),
            transaction_id: "1004400740201409030005092168".into(),
            amount: RefundAmount::This(40),
            total_fee: Some(100),
            refunded_at: Some(1_767_232_800_000), // 2026-01-01 10:00:00 +08:00
        })
    );
    assert_eq!(n.fields["refund_status"], "SUCCESS");
    assert_eq!(n.fields["mch_id"], "10000100");
    assert!(!n.fields.contains_key("req_info"));
    // The wrong key, a flipped ciphertext block, another merchant: refused.
    let wrong = WechatV2::new(vec![Account::new(
        "default",
        "wx2421b1c4370ec43b",
        "10000100",
        "k3y",
    )]);
    assert!(wrong
        .verify(&Inbound {
            account: None,
            headers: &[],
            body: body.as_bytes(),
            received_at: 0,
        })
        .is_err());
    let mut tampered = OPENSSL_REQ_INFO.to_owned();
    tampered.replace_range(0..4, "AAAA");
    assert!(inbound(&refund_envelope(&tampered)).is_err());
    let other = body.replace("10000100", "10000999");
    assert!(inbound(&other).is_err());
    // The envelope is not signed: a field added to it never reaches the handler.
    let padded = body.replace("<req_info>", "<attach>forged</attach><req_info>");
    let n = inbound(&padded).expect("verifies");
    assert!(!n.fields.contains_key("attach"), "{:?}", n.fields);
    assert!(!n.fields.contains_key("nonce_str"));
}

#[test]
fn failure_answer_keeps_cdata_intact() {
    let a = provider().failure("x]]>y");
    let body = String::from_utf8(a.body).expect("utf8");
    assert!(parse_xml(body.as_bytes()).is_ok(), "{body}");
}

#[test]
fn signed_xml_carries_any_value_intact() {
    let fields = map(&[
        ("appid", "wx2421b1c4370ec43b"),
        ("body", "a]]><evil>x</evil><![CDATA[b & <c>"),
        ("mch_id", "10000100"),
    ]);
    let xml = signed_xml(&fields, "k", SignType::Md5);
    let back = parse_xml(xml.as_bytes()).expect("parses");
    assert_eq!(back["body"], fields["body"]);
    assert_eq!(back.len(), 4, "no field added: {back:?}");
    assert_eq!(back["sign"], sign(&fields, "k", SignType::Md5));
}

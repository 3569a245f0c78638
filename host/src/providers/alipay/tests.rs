//! Alipay notifications: the documented sign string, amounts, signatures, refusals.

use std::sync::OnceLock;

use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rsa::signature::{SignatureEncoding, Signer};
use rsa::RsaPrivateKey;

use super::*;

const APP_ID: &str = "2021000000000001";
const SELLER_ID: &str = "2088102119685838";

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The example in Alipay's open-platform documentation of asynchronous-notification
/// verification (“异步通知验签”: a notification posted to
/// https://api.xx.com/receive_notify.htm, then “第二步: 将剩下参数进行url_decode, 然后进行
/// 字典排序, 组成字符串, 得到待签名字符串”). The documented string leaves out
/// `gmt_create` although the example notification carries it (an error in the
/// example); with that one parameter left out of the input the result is the
/// documented string byte for byte. Its `sign` was made with a key the documentation
/// does not publish, so only the string is a known answer.
#[test]
fn known_answer_sign_string_from_alipay_docs() {
    let notification = "total_amount=2.00&buyer_id=2088102116773037&body=大乐透2.1&trade_no=2016071921001003030200089909&refund_fee=0.00&notify_time=2016-07-19 14:10:49&subject=大乐透2.1&sign_type=RSA2&charset=utf-8&notify_type=trade_status_sync&out_trade_no=0719141034-6418&gmt_close=2016-07-19 14:10:46&gmt_payment=2016-07-19 14:10:47&trade_status=TRADE_SUCCESS&version=1.0&sign=kPbQIjX+xQc8F0/A6/AocELIjhhZnGbcBN6G4MM/HmfWL4ZiHM6fWl5NQhzXJusaklZ1LFuMo+lHQUELAYeugH8LYFvxnNajOvZhuxNFbN2LhF0l/KL8ANtj8oyPM4NN7Qft2kWJTDJUpQOzCzNnV9hDxh5AaT9FPqRS6ZKxnzM=&gmt_create=2016-07-19 14:10:44&app_id=2015102700040153&seller_id=2088102119685838&notify_id=4a91b7a78a503640467525113fb7d8bg8e";
    let documented = "app_id=2015102700040153&body=大乐透2.1&buyer_id=2088102116773037&charset=utf-8&gmt_close=2016-07-19 14:10:46&gmt_payment=2016-07-19 14:10:47&notify_id=4a91b7a78a503640467525113fb7d8bg8e&notify_time=2016-07-19 14:10:49&notify_type=trade_status_sync&out_trade_no=0719141034-6418&refund_fee=0.00&seller_id=2088102119685838&subject=大乐透2.1&total_amount=2.00&trade_no=2016071921001003030200089909&trade_status=TRADE_SUCCESS&version=1.0";
    let mut fields = parse_form(notification.as_bytes()).expect("form");
    assert_eq!(fields.len(), 20);
    assert!(fields.remove("gmt_create").is_some());
    assert_eq!(string_to_sign(&fields), documented);
    // The same notification URL-encoded, as it arrives in a POST body, gives the same.
    let mut encoded = form_urlencoded::Serializer::new(String::new());
    for (k, v) in &fields {
        encoded.append_pair(k, v);
    }
    let reparsed = parse_form(encoded.finish().as_bytes()).expect("form");
    assert_eq!(string_to_sign(&reparsed), documented);
}

#[test]
fn yuan_are_turned_into_fen_exactly() {
    for (s, fen) in [
        ("0.01", 1),
        ("100", 10000),
        ("1.5", 150),
        ("2.00", 200),
        ("0", 0),
        ("88.88", 8888),
        ("007.10", 710),
    ] {
        assert_eq!(yuan_to_fen(s), Some(fen), "{s}");
    }
    for s in [
        "1.234",
        "-1",
        "1e2",
        "",
        ".5",
        "1.",
        "1,00",
        " 1",
        "1 ",
        "+1",
        "0x10",
        "1.2.3",
        "NaN",
        "99999999999999.00",
        "１",
    ] {
        assert_eq!(yuan_to_fen(s), None, "{s:?}");
    }
}

fn keys() -> &'static [RsaPrivateKey; 2] {
    static KEYS: OnceLock<[RsaPrivateKey; 2]> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut rng = rand::thread_rng();
        [(); 2].map(|_| RsaPrivateKey::new(&mut rng, 2048).expect("RSA key"))
    })
}

fn paid(out_trade_no: &str, total_amount: &str, trade_no: &str) -> BTreeMap<String, String> {
    map(&[
        ("gmt_create", "2026-01-01 08:00:00"),
        ("charset", "utf-8"),
        ("gmt_payment", "2026-01-01 08:00:05"),
        ("notify_time", "2026-01-01 08:00:06"),
        ("subject", "会员充值 & more"),
        ("buyer_id", "2088002582656381"),
        ("body", "充值"),
        ("invoice_amount", total_amount),
        ("version", "1.0"),
        ("notify_id", "2026010100222080005038052977443"),
        (
            "fund_bill_list",
            r#"[{"amount":"0.01","fundChannel":"ALIPAYACCOUNT"}]"#,
        ),
        ("notify_type", "trade_status_sync"),
        ("out_trade_no", out_trade_no),
        ("total_amount", total_amount),
        ("trade_status", "TRADE_SUCCESS"),
        ("trade_no", trade_no),
        ("auth_app_id", APP_ID),
        ("receipt_amount", total_amount),
        ("point_amount", "0.00"),
        ("buyer_pay_amount", total_amount),
        ("app_id", APP_ID),
        ("seller_id", SELLER_ID),
        ("passback_params", ""),
    ])
}

/// Signs like Alipay and encodes like an HTTP form post.
fn signed_body(fields: &BTreeMap<String, String>, key: &RsaPrivateKey) -> String {
    let sig = SigningKey::<Sha256>::new(key.clone()).sign(string_to_sign(fields).as_bytes());
    let mut f = form_urlencoded::Serializer::new(String::new());
    for (k, v) in fields {
        f.append_pair(k, v);
    }
    f.append_pair(
        "sign",
        &base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()),
    );
    f.append_pair("sign_type", "RSA2");
    f.finish()
}

fn provider() -> Alipay {
    Alipay::new(vec![Account::new(
        "default",
        APP_ID,
        keys()[0].to_public_key(),
    )
    .with_seller_id(SELLER_ID)])
}

fn verify(p: &Alipay, body: &str) -> Result<Notice, Rejection> {
    p.verify(&Inbound {
        account: None,
        headers: &[],
        body: body.as_bytes(),
        received_at: 0,
    })
}

#[test]
fn accepts_a_signed_payment() {
    let body = signed_body(
        &paid("20260101000001", "0.01", "2026010122001456380500000001"),
        &keys()[0],
    );
    let n = verify(&provider(), &body).expect("verifies");
    assert_eq!(n.account, "default");
    assert_eq!(n.out_trade_no, "20260101000001");
    let NoticeKind::Paid(p) = &n.kind else {
        panic!("not paid: {:?}", n.kind)
    };
    assert_eq!(p.amount, 1);
    assert_eq!(p.transaction_id, "2026010122001456380500000001");
    assert_eq!(p.paid_at, Some(1_767_225_605_000)); // 2026-01-01 08:00:05 +08:00
                                                    // Every field is kept as received, unknown ones and fund_bill_list included.
    assert_eq!(
        n.fields["fund_bill_list"],
        r#"[{"amount":"0.01","fundChannel":"ALIPAYACCOUNT"}]"#
    );
    assert_eq!(n.fields["subject"], "会员充值 & more");
    assert_eq!(n.fields["passback_params"], "");
    assert_eq!(n.fields["sign_type"], "RSA2");
}

#[test]
fn refund_fields_make_a_refund_of_the_total_so_far() {
    let mut f = paid("O3", "100", "T3");
    f.insert("refund_fee".into(), "0.00".into());
    // A payment that says "refunded 0.00" (as Alipay's own example does) is a payment.
    let n = verify(&provider(), &signed_body(&f, &keys()[0])).expect("verifies");
    assert!(matches!(n.kind, NoticeKind::Paid(_)), "{:?}", n.kind);
    f.insert("refund_fee".into(), "30.5".into());
    f.insert("out_biz_no".into(), "RF1".into());
    f.insert("gmt_refund".into(), "2026-01-01 10:00:00.320".into());
    let n = verify(&provider(), &signed_body(&f, &keys()[0])).expect("verifies");
    assert_eq!(
        n.kind,
        NoticeKind::Refunded(Refund {
            out_refund_no: "RF1".into(),
            refund_id: String::new(),
            transaction_id: "T3".into(),
            amount: RefundAmount::Cumulative(3050),
            total_fee: Some(10000),
            refunded_at: Some(1_767_232_800_000),
        })
    );
    f.insert("trade_status".into(), "TRADE_CLOSED".into());
    f.insert("refund_fee".into(), "100.00".into());
    let n = verify(&provider(), &signed_body(&f, &keys()[0])).expect("verifies");
    assert!(matches!(
        n.kind,
        NoticeKind::Refunded(Refund {
            amount: RefundAmount::Cumulative(10000),
            ..
        })
    ));
    for (k, v) in [
        ("refund_fee", "0"),
        ("refund_fee", "1.234"),
        ("out_biz_no", ""),
    ] {
        let mut bad = f.clone();
        bad.insert(k.into(), v.into());
        let r = verify(&provider(), &signed_body(&bad, &keys()[0]));
        assert!(matches!(r, Err(Rejection::Malformed(_))), "{k}={v}: {r:?}");
    }
}

#[test]
fn trade_finished_pays_and_other_states_do_not() {
    let mut f = paid("O2", "100", "T2");
    f.insert("trade_status".into(), "TRADE_FINISHED".into());
    let n = verify(&provider(), &signed_body(&f, &keys()[0])).expect("verifies");
    assert!(matches!(
        n.kind,
        NoticeKind::Paid(Payment { amount: 10000, .. })
    ));
    for state in ["WAIT_BUYER_PAY", "TRADE_CLOSED"] {
        f.insert("trade_status".into(), state.into());
        let n = verify(&provider(), &signed_body(&f, &keys()[0])).expect("verifies");
        assert_eq!(
            n.kind,
            NoticeKind::NotPaid {
                state: state.into()
            }
        );
    }
    // A state it cannot read, or none, is refused rather than acknowledged as nothing.
    f.insert("trade_status".into(), "SOMETHING_NEW".into());
    let r = verify(&provider(), &signed_body(&f, &keys()[0]));
    assert!(matches!(r, Err(Rejection::Unsupported(_))), "{r:?}");
    f.remove("trade_status");
    let r = verify(&provider(), &signed_body(&f, &keys()[0]));
    assert!(matches!(r, Err(Rejection::Malformed(_))), "{r:?}");
}

/// An attacker's re-split of one genuine signature: `genuine` with `free` set to
/// `x&<attack>&zz=`, and the notification whose own fields are the `attack` ones,
/// with everything the genuine one signed after `free` swallowed by `zz`.
fn resplit(
    genuine: &BTreeMap<String, String>,
    free: &str,
    attack: &[(&str, &str)],
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let pairs = |p: &[(&str, &str)]| {
        p.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    };
    let mut genuine = genuine.clone();
    genuine.insert(free.into(), format!("x&{}&zz=", pairs(attack)));
    let signed = signed_fields(&genuine);
    let mut forged: BTreeMap<String, String> = signed
        .iter()
        .filter(|(k, _)| *k < free)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    forged.insert(free.into(), "x".into());
    for (k, v) in attack {
        forged.insert(k.to_string(), v.to_string());
    }
    let rest: Vec<(&str, &str)> = signed.iter().copied().filter(|(k, _)| *k > free).collect();
    forged.insert("zz".into(), format!("&{}", pairs(&rest)));
    assert_eq!(string_to_sign(&forged), string_to_sign(&genuine));
    (genuine, forged)
}

#[test]
fn a_signature_re_split_into_other_parameters_is_refused() {
    let (genuine, forged) = resplit(
        &paid("O7", "0.01", "T7"),
        "body",
        &[
            ("out_trade_no", "OTHER"),
            ("total_amount", "99.00"),
            ("trade_no", "T8"),
            ("trade_status", "TRADE_SUCCESS"),
        ],
    );
    let body = signed_body(&genuine, &keys()[0]);
    let r = verify(&provider(), &body);
    assert!(
        matches!(&r, Err(Rejection::Ambiguous(m)) if m.contains("`body` contains `&out_trade_no=`")),
        "{r:?}"
    );
    // The re-split one carries the genuine signature, which verifies over its string.
    let sign = parse_form(body.as_bytes()).expect("form")["sign"].clone();
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (k, v) in &forged {
        form.append_pair(k, v);
    }
    form.append_pair("sign", &sign);
    let r = verify(&provider(), &form.finish());
    assert!(
        matches!(&r, Err(Rejection::Ambiguous(m)) if m.contains("`zz` contains `&")),
        "{r:?}"
    );
    // `&` not followed by `name=` is just text; so is URL-encoded text.
    let mut f = paid("O7", "0.01", "T7");
    f.insert("subject".into(), "Tom & Jerry && co&".into());
    f.insert("passback_params".into(), "a%3D1%26b%3D2".into());
    assert!(verify(&provider(), &signed_body(&f, &keys()[0])).is_ok());
}

#[test]
fn unknown_fields_take_part_in_the_signature() {
    let mut f = paid("O3", "1.5", "T3");
    f.insert("some_new_field".into(), "x".into());
    let body = signed_body(&f, &keys()[0]);
    assert!(verify(&provider(), &body).is_ok());
    let tampered = body.replace("some_new_field=x", "some_new_field=y");
    assert!(matches!(
        verify(&provider(), &tampered),
        Err(Rejection::BadSignature(_))
    ));
}

#[test]
fn empty_values_are_left_out_of_the_signed_string() {
    let f = paid("O4", "1.00", "T4");
    assert!(!string_to_sign(&f).contains("passback_params"));
    let body = signed_body(&f, &keys()[0]);
    // Dropping the empty parameter altogether does not change the signed string.
    let without = body.replace("&passback_params=", "");
    assert_ne!(body, without);
    assert!(verify(&provider(), &without).is_ok());
}

#[test]
fn rejects_tampering_wrong_keys_and_wrong_apps() {
    let body = signed_body(&paid("O5", "10.00", "T5"), &keys()[0]);
    let tampered = body.replace("total_amount=10.00", "total_amount=0.01");
    assert_ne!(body, tampered);
    assert!(matches!(
        verify(&provider(), &tampered),
        Err(Rejection::BadSignature(_))
    ));
    let wrong_key = signed_body(&paid("O5", "10.00", "T5"), &keys()[1]);
    assert!(matches!(
        verify(&provider(), &wrong_key),
        Err(Rejection::BadSignature(_))
    ));

    let mut f = paid("O5", "10.00", "T5");
    f.insert("app_id".into(), "2021009999999999".into());
    // No account has that app_id.
    assert!(matches!(
        verify(&provider(), &signed_body(&f, &keys()[0])),
        Err(Rejection::AccountMismatch(_))
    ));
    // Sent to the account's URL, verified with its key, then refused for the app_id.
    let via_url = provider().verify(&Inbound {
        account: Some("default"),
        headers: &[],
        body: signed_body(&f, &keys()[0]).as_bytes(),
        received_at: 0,
    });
    assert!(matches!(via_url, Err(Rejection::AccountMismatch(_))));
    let mut f = paid("O5", "10.00", "T5");
    f.insert("seller_id".into(), "2088000000000000".into());
    assert!(matches!(
        verify(&provider(), &signed_body(&f, &keys()[0])),
        Err(Rejection::AccountMismatch(_))
    ));
}

#[test]
fn malformed_bodies_are_rejected_not_panicked_on() {
    let good = signed_body(&paid("O6", "1.00", "T6"), &keys()[0]);
    for body in [
        String::new(),
        "&&&".into(),
        "=x".into(),
        format!("{good}&app_id={APP_ID}"),
        good.replace("sign_type=RSA2", "sign_type=RSA"),
        good.replace("charset=utf-8", "charset=gbk"),
        good.replace("&sign=", "&sign=%21%21"),
        good.replace("&sign=", "&nosign="),
        format!("{good}{}", "&x=1".repeat(300)),
        "%FF%FE=%00".into(),
    ] {
        assert!(verify(&provider(), &body).is_err(), "accepted {body:?}");
    }
    for bad_amount in ["1.234", "-1", "1e2", ""] {
        let body = signed_body(&paid("O6", bad_amount, "T6"), &keys()[0]);
        assert!(
            matches!(verify(&provider(), &body), Err(Rejection::Malformed(_))),
            "{bad_amount}"
        );
    }
}

/// Random values in every field, correctly signed, never panic the parser.
#[test]
fn mutated_signed_notifications_never_panic() {
    let pieces = [
        "",
        "0",
        ".",
        "1.5",
        "-",
        "e",
        "TRADE_SUCCESS",
        "2026-13-45 25:61:61",
        "\u{0}",
        "中",
        "%",
        "&",
        "=",
        "+",
    ];
    let base = paid("O7", "1.00", "T7");
    let names: Vec<String> = base.keys().cloned().collect();
    for _ in 0..200 {
        let mut f = base.clone();
        for _ in 0..(rand::random::<usize>() % 4 + 1) {
            let k = &names[rand::random::<usize>() % names.len()];
            let v: String = (0..rand::random::<usize>() % 4)
                .map(|_| pieces[rand::random::<usize>() % pieces.len()])
                .collect();
            f.insert(k.clone(), v);
        }
        let _ = verify(&provider(), &signed_body(&f, &keys()[0]));
    }
}

#[test]
fn several_apps_are_told_apart_by_app_id() {
    let p = Alipay::new(vec![
        Account::new("a", "2021000000000001", keys()[0].to_public_key()),
        Account::new("b", "2021000000000002", keys()[1].to_public_key()),
    ]);
    let mut f = paid("OB", "1.00", "TB");
    f.insert("app_id".into(), "2021000000000002".into());
    assert_eq!(
        verify(&p, &signed_body(&f, &keys()[1])).expect("b").account,
        "b"
    );
    // b's app signed with a's key: b's key does not verify it.
    assert!(matches!(
        verify(&p, &signed_body(&f, &keys()[0])),
        Err(Rejection::BadSignature(_))
    ));
}

#[test]
fn public_keys_load_as_pem_or_bare_base64() {
    let public = keys()[0].to_public_key();
    let pem = public.to_public_key_pem(LineEnding::LF).expect("pem");
    assert_eq!(parse_public_key(&pem).expect("pem"), public);
    let bare: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    assert_eq!(parse_public_key(&bare).expect("bare"), public);
    // As pasted over several lines.
    assert_eq!(
        parse_public_key(
            &pem.replace("-----BEGIN PUBLIC KEY-----", "")
                .replace("-----END PUBLIC KEY-----", "")
        )
        .expect("wrapped"),
        public
    );
    assert!(parse_public_key("not a key").is_err());
    assert!(parse_public_key("AAAA").is_err());
    let cfg: AccountConfig =
        toml::from_str("provider = \"alipay\"\napp_id = \"1\"\nalipay_public_key = \"AAAA\"\n")
            .expect("config");
    assert!(Account::from_config(&cfg)
        .unwrap_err()
        .contains("`alipay_public_key`"));
    let cfg: AccountConfig =
        toml::from_str("provider = \"alipay\"\napp_id = \"1\"\n").expect("config");
    assert!(Account::from_config(&cfg)
        .unwrap_err()
        .contains("`alipay_public_key`"));
}

#[test]
fn answers_are_the_bare_words() {
    let p = provider();
    assert_eq!(
        (p.success().status, p.success().body),
        (200, b"success".to_vec())
    );
    assert_eq!(
        (p.failure("x").status, p.failure("x").body),
        (200, b"failure".to_vec())
    );
}

//! WeChat Pay v3, Alipay and CloudPay end to end: notifications signed by independent
//! test signers against the real server with the real `recharge` handler, two accounts
//! per provider. A good notification pays once and gets the provider's exact success
//! answer; every bad one gets its failure answer, changes nothing and is stored as
//! rejected; a verified non-payment is acknowledged and stored as ignored.

use paynotify::store::{status, Verdict};
use paynotify_tests::{alipay, cloudpay, wechat_v3, Options, TestServer};
use serde_json::{json, Value};

/// Request headers, as the signers make them.
type Headers = Vec<(String, String)>;

/// A server with two accounts (`a`, `b`) of each new provider, keys in `keys_dir`.
async fn server(keys_dir: &tempfile::TempDir) -> TestServer {
    let keys = wechat_v3::keys();
    let write = |name: &str, text: String| {
        let path = keys_dir.path().join(name);
        std::fs::write(&path, text).expect("write key");
        path.display().to_string()
    };
    let pub_a = write("wechatpay_pub_a.pem", wechat_v3::public_key_pem(&keys[0]));
    let cert_a = write(
        "wechatpay_platform_a.pem",
        wechat_v3::platform_cert_pem(&keys[1]),
    );
    let pub_b = write("wechatpay_pub_b.pem", wechat_v3::public_key_pem(&keys[2]));
    // Alipay: `a` reads its key from a PEM file, `b` has the bare base64 inline.
    let alipay_a = write("alipay_pub_a.pem", wechat_v3::public_key_pem(&keys[0]));
    let alipay_b: String = wechat_v3::public_key_pem(&keys[2])
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let extra = format!(
        r#"
[[accounts]]
provider = "wechat-v3"
name = "a"
appid = "{appid_a}"
mch_id = "{mch_a}"
api_v3_key = "{v3key}"
public_keys = {{ "{pub_id_a}" = "{pub_a}" }}
platform_certs = ["{cert_a}"]

[[accounts]]
provider = "wechat-v3"
name = "b"
appid = "{appid_b}"
mch_id = "{mch_b}"
api_v3_key = "{v3key}"
public_keys = {{ "{pub_id_b}" = "{pub_b}" }}

[[accounts]]
provider = "alipay"
name = "a"
app_id = "{ali_a}"
seller_id = "{seller_a}"
alipay_public_key_file = "{alipay_a}"

[[accounts]]
provider = "alipay"
name = "b"
app_id = "{ali_b}"
alipay_public_key = "{alipay_b}"

[[accounts]]
provider = "cloudpay"
name = "a"
sub_mch_id = "{sub_a}"
secret = "{secret_a}"

[[accounts]]
provider = "cloudpay"
name = "b"
sub_mch_id = "{sub_b}"
secret = "{secret_b}"
"#,
        appid_a = wechat_v3::APPID_A,
        mch_a = wechat_v3::MCH_ID_A,
        appid_b = wechat_v3::APPID_B,
        mch_b = wechat_v3::MCH_ID_B,
        v3key = wechat_v3::API_V3_KEY,
        pub_id_a = wechat_v3::PUB_KEY_ID_A,
        pub_id_b = wechat_v3::PUB_KEY_ID_B,
        ali_a = alipay::APP_ID_A,
        ali_b = alipay::APP_ID_B,
        seller_a = alipay::SELLER_ID_A,
        sub_a = cloudpay::SUB_MCH_ID_A,
        secret_a = cloudpay::SECRET_A,
        sub_b = cloudpay::SUB_MCH_ID_B,
        secret_b = cloudpay::SECRET_B,
    );
    let mut options = Options::with_plugins(&["recharge"]);
    options.extra_config = extra;
    TestServer::start(options).await
}

async fn recharge(
    s: &TestServer,
    provider: &str,
    account: &str,
    out_trade_no: &str,
    user: &str,
    fen: i64,
) {
    s.create_order(json!({
        "type": "recharge", "total_fee": fen, "user_id": user, "provider": provider, "account": account,
        "out_trade_no": out_trade_no, "custom": { "recharge_balance": fen }
    }))
    .await;
}

async fn balance(s: &TestServer, user: &str) -> Option<i64> {
    s.document("users", user)
        .await
        .and_then(|d| d["balance"].as_i64())
}

/// The order is still unpaid and its handler never wrote the user document.
async fn unchanged(s: &TestServer, out_trade_no: &str, user: &str) {
    let order = s.order(out_trade_no).await;
    assert_eq!(order.status, status::UNPAID, "{out_trade_no}");
    assert_eq!(order.handler_status, "pending", "{out_trade_no}");
    assert_eq!(order.transaction_id, None, "{out_trade_no}");
    assert_eq!(
        s.document("users", user).await,
        None,
        "{out_trade_no}: users/{user} exists"
    );
}

/// Checks the stored notifications, oldest first, against (verdict, reason substring).
async fn stored(s: &TestServer, provider: &str, expected: &[(&str, Verdict, &str)]) {
    let all = s.notifications_of(provider).await;
    assert_eq!(
        all.len(),
        expected.len(),
        "every {provider} notification is stored"
    );
    for (n, (name, verdict, reason)) in all.iter().zip(expected) {
        let why = n.reason.as_deref().unwrap_or("");
        assert_eq!(n.verdict, *verdict, "{name}: {why}");
        assert!(
            why.to_lowercase().contains(&reason.to_lowercase()),
            "{name}: reason `{why}` lacks `{reason}`"
        );
    }
}

// ---------------------------------------------------------------------------------------
// WeChat Pay v3

async fn v3_send(
    s: &TestServer,
    path: &str,
    headers: &[(String, String)],
    body: &str,
) -> (u16, String) {
    s.notify_with_headers(path, "application/json", headers, body.to_owned())
        .await
}

fn v3_fail(name: &str, answer: &(u16, String)) {
    assert_eq!(answer.0, 400, "{name}: {}", answer.1);
    let v: Value =
        serde_json::from_str(&answer.1).unwrap_or_else(|e| panic!("{name}: {e}: {}", answer.1));
    assert_eq!(v["code"], "FAIL", "{name}");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{name}"
    );
}

#[tokio::test]
async fn wechat_v3_pays_once_with_a_public_key_or_a_platform_certificate() {
    let dir = tempfile::tempdir().expect("dir");
    let s = server(&dir).await;
    let keys = wechat_v3::keys();
    recharge(&s, "wechat-v3", "a", "V3A0000001", "v3u1", 1500).await;
    recharge(&s, "wechat-v3", "a", "V3A0000002", "v3u2", 1).await;

    let tx = wechat_v3::transaction(
        wechat_v3::APPID_A,
        wechat_v3::MCH_ID_A,
        "V3A0000001",
        1500,
        "4200000001",
        "SUCCESS",
    );
    let body = wechat_v3::body("TRANSACTION.SUCCESS", &tx, wechat_v3::API_V3_KEY);
    for i in 0..3 {
        // WeChat's retries are re-signed with a fresh nonce; the payment is the same.
        let h = wechat_v3::headers(&keys[0], wechat_v3::PUB_KEY_ID_A, wechat_v3::now(), &body);
        assert_eq!(
            v3_send(&s, "/notify/wechat-v3", &h, &body).await,
            (204, String::new()),
            "attempt {i}"
        );
    }
    assert_eq!(balance(&s, "v3u1").await, Some(1500));
    let order = s.order("V3A0000001").await;
    assert_eq!(order.status, status::PAID);
    assert_eq!(order.transaction_id.as_deref(), Some("4200000001"));
    assert_eq!(order.handler_status, "succeeded");
    let data = order.original_data.expect("original_data");
    assert_eq!(data["amount.total"], "1500");
    assert_eq!(data["event_type"], "TRANSACTION.SUCCESS");

    // The platform-certificate path, through the account's own URL.
    let tx = wechat_v3::transaction(
        wechat_v3::APPID_A,
        wechat_v3::MCH_ID_A,
        "V3A0000002",
        1,
        "4200000002",
        "SUCCESS",
    );
    let body = wechat_v3::body("TRANSACTION.SUCCESS", &tx, wechat_v3::API_V3_KEY);
    let h = wechat_v3::headers(&keys[1], wechat_v3::CERT_SERIAL_A, wechat_v3::now(), &body);
    assert_eq!(
        v3_send(&s, "/notify/wechat-v3/a", &h, &body).await,
        (204, String::new())
    );
    assert_eq!(balance(&s, "v3u2").await, Some(1));

    stored(
        &s,
        "wechat-v3",
        &[
            ("first", Verdict::Paid, ""),
            ("retry", Verdict::Duplicate, ""),
            ("retry", Verdict::Duplicate, ""),
            ("certificate", Verdict::Paid, ""),
        ],
    )
    .await;
}

#[tokio::test]
async fn wechat_v3_bad_notifications_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let s = server(&dir).await;
    let keys = wechat_v3::keys();
    recharge(&s, "wechat-v3", "a", "V3A0000010", "v3u10", 1000).await;
    let now = wechat_v3::now();
    let tx = |mchid: &str, total: i64, state: &str| {
        wechat_v3::transaction(
            wechat_v3::APPID_A,
            mchid,
            "V3A0000010",
            total,
            "4200000010",
            state,
        )
    };
    let good = wechat_v3::body(
        "TRANSACTION.SUCCESS",
        &tx(wechat_v3::MCH_ID_A, 1000, "SUCCESS"),
        wechat_v3::API_V3_KEY,
    );
    let sign = |key: usize, serial: &str, ts: i64, body: &str| {
        wechat_v3::headers(&keys[key], serial, ts, body)
    };
    let a = wechat_v3::PUB_KEY_ID_A;

    let mut probe = sign(0, a, now, &good);
    probe[1].1 = format!("WECHATPAY/SIGNTEST/{}", &probe[1].1[19..]);
    let other_merchant = wechat_v3::body(
        "TRANSACTION.SUCCESS",
        &tx("1900000999", 1000, "SUCCESS"),
        wechat_v3::API_V3_KEY,
    );
    let wrong_amount = wechat_v3::body(
        "TRANSACTION.SUCCESS",
        &tx(wechat_v3::MCH_ID_A, 999, "SUCCESS"),
        wechat_v3::API_V3_KEY,
    );
    let wrong_v3_key = wechat_v3::body(
        "TRANSACTION.SUCCESS",
        &tx(wechat_v3::MCH_ID_A, 1000, "SUCCESS"),
        "another-apiv3-key-0000000000000a",
    );
    let cases: Vec<(&str, Headers, String, &str)> = vec![
        (
            "tampered body",
            sign(0, a, now, &good),
            good.replacen("encrypt-resource", "encrypt-resourcE", 1),
            "bad signature",
        ),
        (
            "wrong key",
            sign(3, a, now, &good),
            good.clone(),
            "bad signature",
        ),
        (
            "wrong serial",
            sign(0, "PUB_KEY_ID_0000000000000000", now, &good),
            good.clone(),
            "unknown wechatpay-serial",
        ),
        (
            "certificate serial, public key's signature",
            sign(0, wechat_v3::CERT_SERIAL_A, now, &good),
            good.clone(),
            "bad signature",
        ),
        (
            "stale timestamp",
            sign(0, a, now - 600, &good),
            good.clone(),
            "stale timestamp",
        ),
        (
            "future timestamp",
            sign(0, a, now + 600, &good),
            good.clone(),
            "stale timestamp",
        ),
        ("signature probe", probe, good.clone(), "probe"),
        (
            "other merchant",
            sign(0, a, now, &other_merchant),
            other_merchant,
            "account mismatch",
        ),
        (
            "wrong amount",
            sign(0, a, now, &wrong_amount),
            wrong_amount,
            "amount mismatch",
        ),
        (
            "wrong APIv3 key",
            sign(0, a, now, &wrong_v3_key),
            wrong_v3_key,
            "does not decrypt",
        ),
        ("no headers", Vec::new(), good.clone(), "bad signature"),
        (
            "not JSON",
            sign(0, a, now, "<xml/>"),
            "<xml/>".into(),
            "malformed",
        ),
    ];
    for (name, headers, body, _) in &cases {
        let answer = v3_send(&s, "/notify/wechat-v3", headers, body).await;
        v3_fail(name, &answer);
    }
    unchanged(&s, "V3A0000010", "v3u10").await;

    // A verified non-payment: acknowledged with the success answer, recorded as ignored.
    let closed = wechat_v3::body(
        "TRANSACTION.SUCCESS",
        &tx(wechat_v3::MCH_ID_A, 1000, "CLOSED"),
        wechat_v3::API_V3_KEY,
    );
    let answer = v3_send(&s, "/notify/wechat-v3", &sign(0, a, now, &closed), &closed).await;
    assert_eq!(answer, (204, String::new()));
    unchanged(&s, "V3A0000010", "v3u10").await;

    let mut expected: Vec<(&str, Verdict, &str)> = cases
        .iter()
        .map(|(n, _, _, r)| (*n, Verdict::Rejected, *r))
        .collect();
    expected.push(("closed", Verdict::Ignored, "not a payment"));
    stored(&s, "wechat-v3", &expected).await;
    let all = s.notifications().await;
    for (n, (name, _, body, _)) in all.iter().zip(&cases) {
        assert_eq!(n.body, body.as_bytes(), "{name}: stored as received");
    }
    assert_eq!(
        all.last().and_then(|n| n.out_trade_no.as_deref()),
        Some("V3A0000010")
    );
}

#[tokio::test]
async fn wechat_v3_a_notification_for_account_b_never_pays_account_a() {
    let dir = tempfile::tempdir().expect("dir");
    let s = server(&dir).await;
    let keys = wechat_v3::keys();
    recharge(&s, "wechat-v3", "a", "V3A0000020", "v3u20", 500).await;
    recharge(&s, "wechat-v3", "b", "V3B0000020", "v3u21", 500).await;
    // Genuinely account b's (b's key, b's merchant ids), naming a's order.
    let tx = wechat_v3::transaction(
        wechat_v3::APPID_B,
        wechat_v3::MCH_ID_B,
        "V3A0000020",
        500,
        "4200000020",
        "SUCCESS",
    );
    let body = wechat_v3::body("TRANSACTION.SUCCESS", &tx, wechat_v3::API_V3_KEY);
    let h = wechat_v3::headers(&keys[2], wechat_v3::PUB_KEY_ID_B, wechat_v3::now(), &body);
    v3_fail(
        "b's notification",
        &v3_send(&s, "/notify/wechat-v3", &h, &body).await,
    );
    v3_fail(
        "b's notification at b's URL",
        &v3_send(&s, "/notify/wechat-v3/b", &h, &body).await,
    );
    v3_fail(
        "b's notification at a's URL",
        &v3_send(&s, "/notify/wechat-v3/a", &h, &body).await,
    );
    unchanged(&s, "V3A0000020", "v3u20").await;
    // The same for b's own order pays b's order.
    let tx = wechat_v3::transaction(
        wechat_v3::APPID_B,
        wechat_v3::MCH_ID_B,
        "V3B0000020",
        500,
        "4200000021",
        "SUCCESS",
    );
    let body = wechat_v3::body("TRANSACTION.SUCCESS", &tx, wechat_v3::API_V3_KEY);
    let h = wechat_v3::headers(&keys[2], wechat_v3::PUB_KEY_ID_B, wechat_v3::now(), &body);
    assert_eq!(
        v3_send(&s, "/notify/wechat-v3", &h, &body).await,
        (204, String::new())
    );
    assert_eq!(balance(&s, "v3u21").await, Some(500));
    stored(
        &s,
        "wechat-v3",
        &[
            (
                "b for a",
                Verdict::Rejected,
                "verified for wechat-v3 account `b`",
            ),
            (
                "b for a via b",
                Verdict::Rejected,
                "verified for wechat-v3 account `b`",
            ),
            (
                "b for a via a",
                Verdict::Rejected,
                "unknown wechatpay-serial",
            ),
            ("b for b", Verdict::Paid, ""),
        ],
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// Alipay

const FORM: &str = "application/x-www-form-urlencoded; charset=utf-8";

async fn alipay_send(s: &TestServer, path: &str, body: &str) -> (u16, String) {
    s.notify(path, FORM, body.to_owned()).await
}

#[tokio::test]
async fn alipay_pays_once_and_answers_success() {
    let dir = tempfile::tempdir().expect("dir");
    let s = server(&dir).await;
    let keys = wechat_v3::keys();
    recharge(&s, "alipay", "a", "ALA0000001", "alu1", 1).await;
    recharge(&s, "alipay", "b", "ALB0000001", "alu2", 12345).await;
    let body = alipay::body(
        &alipay::paid(
            alipay::APP_ID_A,
            "ALA0000001",
            "0.01",
            "2026010122001400000001",
        ),
        &keys[0],
    );
    for i in 0..3 {
        assert_eq!(
            alipay_send(&s, "/notify/alipay", &body).await,
            (200, "success".into()),
            "attempt {i}"
        );
    }
    assert_eq!(balance(&s, "alu1").await, Some(1));
    let order = s.order("ALA0000001").await;
    assert_eq!(order.status, status::PAID);
    assert_eq!(
        order.transaction_id.as_deref(),
        Some("2026010122001400000001")
    );
    let data = order.original_data.expect("original_data");
    assert_eq!(
        data["fund_bill_list"],
        r#"[{"amount":"0.01","fundChannel":"ALIPAYACCOUNT"}]"#
    );
    assert_eq!(data["body"], "充值 100% & more");

    // TRADE_FINISHED pays too; account b's key is the bare base64 one.
    let mut f = alipay::paid(
        alipay::APP_ID_B,
        "ALB0000001",
        "123.45",
        "2026010122001400000002",
    );
    f.insert("trade_status".into(), "TRADE_FINISHED".into());
    f.remove("seller_id");
    assert_eq!(
        alipay_send(&s, "/notify/alipay/b", &alipay::body(&f, &keys[2])).await,
        (200, "success".into())
    );
    assert_eq!(balance(&s, "alu2").await, Some(12345));
    stored(
        &s,
        "alipay",
        &[
            ("first", Verdict::Paid, ""),
            ("retry", Verdict::Duplicate, ""),
            ("retry", Verdict::Duplicate, ""),
            ("b", Verdict::Paid, ""),
        ],
    )
    .await;
}

#[tokio::test]
async fn alipay_bad_notifications_answer_failure_and_change_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let s = server(&dir).await;
    let keys = wechat_v3::keys();
    recharge(&s, "alipay", "a", "ALA0000010", "alu10", 1000).await;
    let paid = || {
        alipay::paid(
            alipay::APP_ID_A,
            "ALA0000010",
            "10.00",
            "2026010122001400000010",
        )
    };
    let good = alipay::body(&paid(), &keys[0]);
    let mut other_app = paid();
    other_app.insert("app_id".into(), "2021000000009999".into());
    let mut other_seller = paid();
    other_seller.insert("seller_id".into(), "2088000000000000".into());
    let mut bad_amount = paid();
    bad_amount.insert("total_amount".into(), "10.001".into());
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "tampered amount",
            good.replace("total_amount=10.00", "total_amount=0.01"),
            "bad signature",
        ),
        (
            "wrong key",
            alipay::body(&paid(), &keys[3]),
            "bad signature",
        ),
        (
            "other app",
            alipay::body(&other_app, &keys[0]),
            "account mismatch",
        ),
        (
            "other app at a's URL",
            alipay::body(&other_app, &keys[0]),
            "account mismatch",
        ),
        (
            "other seller",
            alipay::body(&other_seller, &keys[0]),
            "account mismatch",
        ),
        (
            "wrong amount",
            alipay::body(
                &alipay::paid(
                    alipay::APP_ID_A,
                    "ALA0000010",
                    "9.99",
                    "20260101220014000011",
                ),
                &keys[0],
            ),
            "amount mismatch",
        ),
        (
            "amount with three decimals",
            alipay::body(&bad_amount, &keys[0]),
            "malformed",
        ),
        (
            "duplicate parameter",
            format!("{good}&trade_status=TRADE_SUCCESS"),
            "appears twice",
        ),
        (
            "RSA1",
            good.replace("sign_type=RSA2", "sign_type=RSA"),
            "unsupported",
        ),
        (
            "no sign",
            good.replace("&sign=", "&nosign="),
            "bad signature",
        ),
        ("not a form", "{\"app_id\":1}".into(), ""),
    ];
    for (name, body, _) in &cases {
        let path = if name.ends_with("a's URL") {
            "/notify/alipay/a"
        } else {
            "/notify/alipay"
        };
        assert_eq!(
            alipay_send(&s, path, body).await,
            (200, "failure".into()),
            "{name}"
        );
    }
    unchanged(&s, "ALA0000010", "alu10").await;
    for state in ["WAIT_BUYER_PAY", "TRADE_CLOSED"] {
        let mut f = paid();
        f.insert("trade_status".into(), state.into());
        assert_eq!(
            alipay_send(&s, "/notify/alipay", &alipay::body(&f, &keys[0])).await,
            (200, "success".into()),
            "{state}"
        );
    }
    unchanged(&s, "ALA0000010", "alu10").await;
    let mut expected: Vec<(&str, Verdict, &str)> = cases
        .iter()
        .map(|(n, _, r)| (*n, Verdict::Rejected, *r))
        .collect();
    expected.push(("waiting", Verdict::Ignored, "WAIT_BUYER_PAY"));
    expected.push(("closed", Verdict::Ignored, "TRADE_CLOSED"));
    stored(&s, "alipay", &expected).await;
}

#[tokio::test]
async fn alipay_a_notification_for_app_b_never_pays_app_a() {
    let dir = tempfile::tempdir().expect("dir");
    let s = server(&dir).await;
    let keys = wechat_v3::keys();
    recharge(&s, "alipay", "a", "ALA0000020", "alu20", 100).await;
    let mut f = alipay::paid(
        alipay::APP_ID_B,
        "ALA0000020",
        "1.00",
        "2026010122001400000020",
    );
    f.remove("seller_id");
    let body = alipay::body(&f, &keys[2]);
    assert_eq!(
        alipay_send(&s, "/notify/alipay", &body).await,
        (200, "failure".into())
    );
    assert_eq!(
        alipay_send(&s, "/notify/alipay/a", &body).await,
        (200, "failure".into())
    );
    unchanged(&s, "ALA0000020", "alu20").await;
    stored(
        &s,
        "alipay",
        &[
            (
                "b for a",
                Verdict::Rejected,
                "verified for alipay account `b`",
            ),
            ("b for a via a", Verdict::Rejected, "bad signature"),
        ],
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// CloudPay

const CLOUDPAY_SUCCESS: &str = r#"{"errcode":0,"errmsg":"SUCCESS"}"#;

async fn cloudpay_send(
    s: &TestServer,
    path: &str,
    headers: &[(String, String)],
    body: &str,
) -> (u16, String) {
    s.notify_with_headers(path, "application/json", headers, body.to_owned())
        .await
}

fn cloudpay_fail(name: &str, answer: &(u16, String)) {
    assert_eq!(answer.0, 200, "{name}: {}", answer.1);
    let v: Value =
        serde_json::from_str(&answer.1).unwrap_or_else(|e| panic!("{name}: {e}: {}", answer.1));
    assert_eq!(v["errcode"], 1, "{name}");
    assert!(
        v["errmsg"].as_str().is_some_and(|m| !m.is_empty()),
        "{name}"
    );
}

#[tokio::test]
async fn cloudpay_pays_once_and_answers_errcode_0() {
    let dir = tempfile::tempdir().expect("dir");
    let s = server(&dir).await;
    recharge(&s, "cloudpay", "a", "CPA0000001", "cpu1", 800).await;
    let body = cloudpay::event(
        cloudpay::SUB_MCH_ID_A,
        "CPA0000001",
        800,
        "4200000801",
        "SUCCESS",
    )
    .to_string();
    for i in 0..3 {
        let h = cloudpay::headers(cloudpay::SECRET_A, wechat_v3::now(), &body);
        assert_eq!(
            cloudpay_send(&s, "/notify/cloudpay", &h, &body).await,
            (200, CLOUDPAY_SUCCESS.into()),
            "attempt {i}"
        );
    }
    assert_eq!(balance(&s, "cpu1").await, Some(800));
    let order = s.order("CPA0000001").await;
    assert_eq!(order.status, status::PAID);
    assert_eq!(order.transaction_id.as_deref(), Some("4200000801"));
    assert_eq!(
        order.original_data.expect("original_data")["userInfo.openId"],
        "oUpF8uN95-Ptaags6E_roPHg7AG0"
    );
    stored(
        &s,
        "cloudpay",
        &[
            ("first", Verdict::Paid, ""),
            ("retry", Verdict::Duplicate, ""),
            ("retry", Verdict::Duplicate, ""),
        ],
    )
    .await;
}

#[tokio::test]
async fn cloudpay_bad_notifications_answer_errcode_1_and_change_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let s = server(&dir).await;
    recharge(&s, "cloudpay", "a", "CPA0000010", "cpu10", 1000).await;
    let now = wechat_v3::now();
    let ev = |sub: &str, fee: i64, result: &str| {
        cloudpay::event(sub, "CPA0000010", fee, "4200000810", result).to_string()
    };
    let good = ev(cloudpay::SUB_MCH_ID_A, 1000, "SUCCESS");
    let h = |secret: &str, ts: i64, body: &str| cloudpay::headers(secret, ts, body);
    let unknown_sub = ev("1900000999", 1000, "SUCCESS");
    let wrong_amount = ev(cloudpay::SUB_MCH_ID_A, 999, "SUCCESS");
    let cases: Vec<(&str, &str, Headers, String, &str)> = vec![
        (
            "tampered body",
            "/notify/cloudpay",
            h(cloudpay::SECRET_A, now, &good),
            good.replace("\"totalFee\":1000", "\"totalFee\":1"),
            "bad signature",
        ),
        (
            "wrong secret",
            "/notify/cloudpay",
            h("not-the-relay-secret-000000000000", now, &good),
            good.clone(),
            "bad signature",
        ),
        (
            "stale timestamp",
            "/notify/cloudpay",
            h(cloudpay::SECRET_A, now - 600, &good),
            good.clone(),
            "stale timestamp",
        ),
        (
            "unknown sub-merchant",
            "/notify/cloudpay",
            h(cloudpay::SECRET_A, now, &unknown_sub),
            unknown_sub.clone(),
            "account mismatch",
        ),
        (
            "other sub-merchant at a's URL",
            "/notify/cloudpay/a",
            h(cloudpay::SECRET_A, now, &unknown_sub),
            unknown_sub,
            "account mismatch",
        ),
        (
            "wrong amount",
            "/notify/cloudpay",
            h(cloudpay::SECRET_A, now, &wrong_amount),
            wrong_amount,
            "amount mismatch",
        ),
        (
            "no signature",
            "/notify/cloudpay",
            Vec::new(),
            good.clone(),
            "bad signature",
        ),
    ];
    for (name, path, headers, body, _) in &cases {
        cloudpay_fail(name, &cloudpay_send(&s, path, headers, body).await);
    }
    unchanged(&s, "CPA0000010", "cpu10").await;
    let failed = ev(cloudpay::SUB_MCH_ID_A, 1000, "FAIL");
    let answer = cloudpay_send(
        &s,
        "/notify/cloudpay",
        &h(cloudpay::SECRET_A, now, &failed),
        &failed,
    )
    .await;
    assert_eq!(answer, (200, CLOUDPAY_SUCCESS.into()));
    unchanged(&s, "CPA0000010", "cpu10").await;
    let mut expected: Vec<(&str, Verdict, &str)> = cases
        .iter()
        .map(|(n, _, _, _, r)| (*n, Verdict::Rejected, *r))
        .collect();
    expected.push(("result FAIL", Verdict::Ignored, "resultCode FAIL"));
    stored(&s, "cloudpay", &expected).await;
}

#[tokio::test]
async fn cloudpay_a_notification_for_sub_merchant_b_never_pays_a() {
    let dir = tempfile::tempdir().expect("dir");
    let s = server(&dir).await;
    recharge(&s, "cloudpay", "a", "CPA0000020", "cpu20", 300).await;
    let body = cloudpay::event(
        cloudpay::SUB_MCH_ID_B,
        "CPA0000020",
        300,
        "4200000820",
        "SUCCESS",
    )
    .to_string();
    let h = cloudpay::headers(cloudpay::SECRET_B, wechat_v3::now(), &body);
    cloudpay_fail(
        "b for a",
        &cloudpay_send(&s, "/notify/cloudpay", &h, &body).await,
    );
    cloudpay_fail(
        "b for a via a",
        &cloudpay_send(&s, "/notify/cloudpay/a", &h, &body).await,
    );
    unchanged(&s, "CPA0000020", "cpu20").await;
    stored(
        &s,
        "cloudpay",
        &[
            (
                "b for a",
                Verdict::Rejected,
                "verified for cloudpay account `b`",
            ),
            ("b for a via a", Verdict::Rejected, "bad signature"),
        ],
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// Signed but malformed (issue 20 item 3): refused, stored as rejected with the reason,
// never acknowledged as a non-payment.

#[tokio::test]
async fn cloudpay_signed_but_malformed_is_refused_not_ignored() {
    let dir = tempfile::tempdir().expect("dir");
    let s = server(&dir).await;
    recharge(&s, "cloudpay", "a", "CPA0000030", "cpu30", 500).await;
    let ev = || {
        cloudpay::event(
            cloudpay::SUB_MCH_ID_A,
            "CPA0000030",
            500,
            "4200000830",
            "SUCCESS",
        )
    };
    let without = |keys: &[&str]| {
        let mut e = ev();
        for k in keys {
            e.as_object_mut().expect("object").remove(*k);
        }
        e
    };
    let mut typed = ev();
    typed["outTradeNo"] = json!(30);
    typed["totalFee"] = json!("500");
    let mut failed_typed = ev();
    failed_typed["resultCode"] = json!("FAIL");
    failed_typed["totalFee"] = json!("500");
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "no returnCode, no resultCode",
            without(&["returnCode", "resultCode"]),
            "no returnCode",
        ),
        ("no resultCode", without(&["resultCode"]), "no resultCode"),
        (
            "outTradeNo a number, totalFee a string",
            typed,
            "outTradeNo is 30, not a string",
        ),
        (
            "resultCode FAIL, totalFee a string",
            failed_typed,
            "totalFee is not an amount",
        ),
    ];
    let now = wechat_v3::now();
    for (name, event, _) in &cases {
        let body = event.to_string();
        let h = cloudpay::headers(cloudpay::SECRET_A, now, &body);
        cloudpay_fail(
            name,
            &cloudpay_send(&s, "/notify/cloudpay", &h, &body).await,
        );
    }
    unchanged(&s, "CPA0000030", "cpu30").await;
    let expected: Vec<(&str, Verdict, &str)> = cases
        .iter()
        .map(|(n, _, r)| (*n, Verdict::Rejected, *r))
        .collect();
    stored(&s, "cloudpay", &expected).await;
}

#[tokio::test]
async fn alipay_signed_but_malformed_is_refused_not_ignored() {
    let dir = tempfile::tempdir().expect("dir");
    let s = server(&dir).await;
    let keys = wechat_v3::keys();
    recharge(&s, "alipay", "a", "ALA0000030", "alu30", 1000).await;
    let paid = || {
        alipay::paid(
            alipay::APP_ID_A,
            "ALA0000030",
            "10.00",
            "2026010122001400000030",
        )
    };
    let change = |pairs: &[(&str, Option<&str>)]| {
        let mut f = paid();
        for (k, v) in pairs {
            match v {
                Some(v) => f.insert((*k).into(), (*v).into()),
                None => f.remove(*k),
            };
        }
        alipay::body(&f, &keys[0])
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "no trade_status",
            change(&[("trade_status", None)]),
            "no trade_status",
        ),
        (
            "closed, amount no amount",
            change(&[
                ("trade_status", Some("TRADE_CLOSED")),
                ("total_amount", Some("10元")),
            ]),
            "total_amount `10元`",
        ),
        (
            "waiting, no out_trade_no",
            change(&[
                ("trade_status", Some("WAIT_BUYER_PAY")),
                ("out_trade_no", None),
            ]),
            "no out_trade_no",
        ),
        (
            "unknown state",
            change(&[("trade_status", Some("TRADE_PENDING"))]),
            "trade_status `TRADE_PENDING`",
        ),
    ];
    for (name, body, _) in &cases {
        assert_eq!(
            alipay_send(&s, "/notify/alipay", body).await,
            (200, "failure".into()),
            "{name}"
        );
    }
    unchanged(&s, "ALA0000030", "alu30").await;
    let expected: Vec<(&str, Verdict, &str)> = cases
        .iter()
        .map(|(n, _, r)| (*n, Verdict::Rejected, *r))
        .collect();
    stored(&s, "alipay", &expected).await;
}

#[tokio::test]
async fn wechat_v3_signed_but_malformed_is_refused_not_ignored() {
    let dir = tempfile::tempdir().expect("dir");
    let s = server(&dir).await;
    let keys = wechat_v3::keys();
    recharge(&s, "wechat-v3", "a", "V3A0000030", "v3u30", 700).await;
    let tx = |state: &str| {
        wechat_v3::transaction(
            wechat_v3::APPID_A,
            wechat_v3::MCH_ID_A,
            "V3A0000030",
            700,
            "4200000030",
            state,
        )
    };
    let mut no_state = tx("SUCCESS");
    no_state
        .as_object_mut()
        .expect("object")
        .remove("trade_state");
    let mut no_amount = tx("CLOSED");
    no_amount.as_object_mut().expect("object").remove("amount");
    let mut typed = tx("NOTPAY");
    typed["out_trade_no"] = json!(30);
    let cases: Vec<(&str, &str, Value, &str)> = vec![
        (
            "no trade_state",
            "TRANSACTION.SUCCESS",
            no_state,
            "no trade_state",
        ),
        (
            "closed, no amount",
            "TRANSACTION.SUCCESS",
            no_amount,
            "amount.total",
        ),
        (
            "out_trade_no a number",
            "TRANSACTION.SUCCESS",
            typed,
            "out_trade_no is 30",
        ),
        (
            "unknown event",
            "COUPON.USE",
            tx("SUCCESS"),
            "event_type `COUPON.USE`",
        ),
    ];
    for (name, event, resource, _) in &cases {
        let body = wechat_v3::body(event, resource, wechat_v3::API_V3_KEY);
        let h = wechat_v3::headers(&keys[0], wechat_v3::PUB_KEY_ID_A, wechat_v3::now(), &body);
        v3_fail(name, &v3_send(&s, "/notify/wechat-v3", &h, &body).await);
    }
    unchanged(&s, "V3A0000030", "v3u30").await;
    let expected: Vec<(&str, Verdict, &str)> = cases
        .iter()
        .map(|(n, _, _, r)| (*n, Verdict::Rejected, *r))
        .collect();
    stored(&s, "wechat-v3", &expected).await;
}

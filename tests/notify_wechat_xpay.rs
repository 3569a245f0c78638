//! WeChat mini-program virtual payment (`wechat-xpay`) end to end: message pushes signed
//! and encrypted by an independent test signer ([`paynotify_tests::wechat_xpay`], keys
//! generated here) against the real server with the real `recharge` handler. Account
//! `plain` takes plaintext pushes, `safe` safe mode (EncodingAESKey). A good payment
//! event pays once and gets `{"ErrCode":0,"ErrMsg":"success"}`; every bad one gets a
//! non-zero ErrCode, changes nothing and is stored as rejected; another event is
//! acknowledged and stored as ignored; the URL check echoes only when signed.

use paynotify::store::{status, Verdict};
use paynotify_tests::wechat_xpay::{self as xpay, *};
use paynotify_tests::{wechat_v3, Options, TestServer};
use serde_json::{json, Value};

const SUCCESS: &str = r#"{"ErrCode":0,"ErrMsg":"success"}"#;

/// A server with the two accounts; returns it and `safe`'s EncodingAESKey.
async fn server() -> (TestServer, String) {
    let aes_key = new_encoding_aes_key();
    let dir = tempfile::tempdir().expect("dir");
    let token_file = dir.path().join("xpay_token");
    std::fs::write(&token_file, format!("{TOKEN_SAFE}\n")).expect("token file");
    let extra = format!(
        r#"
[[accounts]]
provider = "wechat-xpay"
name = "plain"
appid = "{APPID_PLAIN}"
original_id = "{ORIGINAL_ID_PLAIN}"
token = "{TOKEN_PLAIN}"

[[accounts]]
provider = "wechat-xpay"
name = "safe"
appid = "{APPID_SAFE}"
original_id = "{ORIGINAL_ID_SAFE}"
token_file = "{}"
encoding_aes_key = "{aes_key}"
env = "production"
"#,
        token_file.display()
    );
    let mut options = Options::with_plugins(&["recharge"]);
    options.extra_config = extra;
    let s = TestServer::start(options).await;
    // The token file is read at start; the directory may go.
    drop(dir);
    (s, aes_key)
}

async fn recharge(s: &TestServer, account: &str, out_trade_no: &str, user: &str, fen: i64) {
    s.create_order(json!({
        "type": "recharge", "total_fee": fen, "user_id": user, "provider": "wechat-xpay",
        "account": account, "out_trade_no": out_trade_no, "custom": { "recharge_balance": fen }
    }))
    .await;
}

async fn push(s: &TestServer, account: &str, query: &str, body: &str) -> (u16, String) {
    s.notify(
        &format!("/notify/wechat-xpay/{account}?{query}"),
        "application/json",
        body.to_owned(),
    )
    .await
}

fn plain(event: &Value) -> (String, String) {
    (
        event.to_string(),
        plain_query(TOKEN_PLAIN, wechat_v3::now()),
    )
}

fn safe(key: &str, event: &Value) -> (String, String) {
    safe_push(
        TOKEN_SAFE,
        key,
        APPID_SAFE,
        ORIGINAL_ID_SAFE,
        event,
        wechat_v3::now(),
    )
}

fn failed(name: &str, answer: &(u16, String)) {
    assert_eq!(answer.0, 200, "{name}: {}", answer.1);
    let v: Value =
        serde_json::from_str(&answer.1).unwrap_or_else(|e| panic!("{name}: {e}: {}", answer.1));
    assert_ne!(v["ErrCode"], 0, "{name}: {}", answer.1);
    assert!(v["ErrCode"].is_i64(), "{name}: {}", answer.1);
    assert!(
        v["ErrMsg"].as_str().is_some_and(|m| !m.is_empty()),
        "{name}"
    );
}

async fn balance(s: &TestServer, user: &str) -> Option<i64> {
    s.document("users", user)
        .await
        .and_then(|d| d["balance"].as_i64())
}

async fn unchanged(s: &TestServer, out_trade_no: &str, user: &str) {
    let order = s.order(out_trade_no).await;
    assert_eq!(order.status, status::UNPAID, "{out_trade_no}");
    assert_eq!(order.transaction_id, None, "{out_trade_no}");
    assert_eq!(s.document("users", user).await, None, "{out_trade_no}");
}

/// Checks the stored notifications, oldest first, against (name, verdict, reason part).
async fn stored(s: &TestServer, expected: &[(&str, Verdict, &str)]) {
    let all = s.notifications_of("wechat-xpay").await;
    assert_eq!(all.len(), expected.len(), "every push is stored");
    for (n, (name, verdict, reason)) in all.iter().zip(expected) {
        let why = n.reason.as_deref().unwrap_or("");
        assert_eq!(n.verdict, *verdict, "{name}: {why}");
        assert!(
            why.to_lowercase().contains(&reason.to_lowercase()),
            "{name}: reason `{why}` lacks `{reason}`"
        );
    }
}

#[tokio::test]
async fn url_check_echoes_echostr_only_when_signed_and_stores_nothing() {
    let (s, _) = server().await;
    let get = |path: String| {
        let http = s.http.clone();
        let url = s.url(&path);
        async move {
            let r = http.get(url).send().await.expect("GET");
            let ct = r
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap_or("").to_owned());
            (r.status().as_u16(), ct, r.text().await.expect("text"))
        }
    };
    let now = wechat_v3::now();
    let good = url_check_query(TOKEN_PLAIN, now, "7392844916");
    let (st, ct, body) = get(format!("/notify/wechat-xpay/plain?{good}")).await;
    assert_eq!((st, body.as_str()), (200, "7392844916"));
    assert!(ct.is_some_and(|c| c.starts_with("text/plain")));
    // Each account checks with its own token.
    let safe_good = url_check_query(TOKEN_SAFE, now, "55");
    assert_eq!(
        get(format!("/notify/wechat-xpay/safe?{safe_good}")).await.2,
        "55"
    );
    for (name, path, want) in [
        (
            "other account's token",
            format!("/notify/wechat-xpay/safe?{good}"),
            403,
        ),
        (
            "tampered nonce",
            format!(
                "/notify/wechat-xpay/plain?{}",
                good.replace("nonce=1", "nonce=2")
            ),
            403,
        ),
        (
            "no signature",
            "/notify/wechat-xpay/plain?timestamp=1&nonce=2&echostr=3".to_owned(),
            403,
        ),
        ("no query", "/notify/wechat-xpay/plain".to_owned(), 403),
        (
            "several accounts, none named",
            format!("/notify/wechat-xpay?{good}"),
            403,
        ),
        (
            "unknown account",
            format!("/notify/wechat-xpay/nope?{good}"),
            404,
        ),
        (
            "a provider without a URL check",
            "/notify/wechat-v2".to_owned(),
            405,
        ),
    ] {
        let (st, _, body) = get(path).await;
        assert_eq!(st, want, "{name}: {body}");
        assert!(!body.contains("7392844916"), "{name}");
    }
    assert!(s.notifications_of("wechat-xpay").await.is_empty());
}

#[tokio::test]
async fn plaintext_and_safe_mode_payments_credit_once() {
    let (s, key) = server().await;
    recharge(&s, "plain", "XPP0000001", "xu1", 1090).await;
    recharge(&s, "safe", "XPS0000001", "xu2", 600).await;
    let ev = goods_event(ORIGINAL_ID_PLAIN, "XPP0000001", 1090, 0, "4200000000000001");
    for i in 0..3 {
        let (body, q) = plain(&ev);
        assert_eq!(
            push(&s, "plain", &q, &body).await,
            (200, SUCCESS.into()),
            "plain {i}"
        );
    }
    let ev = goods_event(ORIGINAL_ID_SAFE, "XPS0000001", 600, 0, "4200000000000002");
    for i in 0..3 {
        let (body, q) = safe(&key, &ev);
        assert_eq!(
            push(&s, "safe", &q, &body).await,
            (200, SUCCESS.into()),
            "safe {i}"
        );
    }
    assert_eq!(balance(&s, "xu1").await, Some(1090));
    assert_eq!(balance(&s, "xu2").await, Some(600));
    let order = s.order("XPP0000001").await;
    assert_eq!(order.status, status::PAID);
    assert_eq!(order.transaction_id.as_deref(), Some("4200000000000001"));
    let order = s.order("XPS0000001").await;
    assert_eq!(order.transaction_id.as_deref(), Some("4200000000000002"));
    assert_eq!(
        order.original_data.expect("original_data")["GoodsInfo.ProductId"],
        "recharge_1"
    );
    stored(
        &s,
        &[
            ("plain", Verdict::Paid, ""),
            ("plain retry", Verdict::Duplicate, ""),
            ("plain retry", Verdict::Duplicate, ""),
            ("safe", Verdict::Paid, ""),
            ("safe retry", Verdict::Duplicate, ""),
            ("safe retry", Verdict::Duplicate, ""),
        ],
    )
    .await;
    // The query string is stored with the push: a replay verifies as the original did.
    let first = &s.notifications_of("wechat-xpay").await[3];
    assert!(first
        .headers
        .iter()
        .any(|(k, v)| k == ":query" && v.contains("msg_signature=")));
    let (st, v) = s
        .api(
            "POST",
            &format!("/api/admin/notifications/{}/replay", first.id),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    // Verified again from the stored bytes and query string; nothing runs twice.
    assert_eq!(v["verdict"], "paid", "{v}");
    assert!(v["reason"]
        .as_str()
        .is_some_and(|r| r.contains("already paid")));
    assert_eq!(balance(&s, "xu2").await, Some(600));
}

#[tokio::test]
async fn coin_events_pay_and_other_events_change_nothing() {
    let (s, key) = server().await;
    recharge(&s, "safe", "XPC0000001", "xu3", 300).await;
    recharge(&s, "plain", "XPO0000001", "xu4", 100).await;
    let (body, q) = safe(
        &key,
        &coin_event(ORIGINAL_ID_SAFE, "XPC0000001", 300, 0, "4200000000000003"),
    );
    assert_eq!(push(&s, "safe", &q, &body).await, (200, SUCCESS.into()));
    assert_eq!(balance(&s, "xu3").await, Some(300));
    // A refund event (not a payment) names the unpaid order: acknowledged, nothing moves.
    let mut refund = goods_event(ORIGINAL_ID_PLAIN, "XPO0000001", 100, 0, "4200000000000004");
    refund["Event"] = "xpay_refund_notify".into();
    let (body, q) = plain(&refund);
    assert_eq!(push(&s, "plain", &q, &body).await, (200, SUCCESS.into()));
    // A customer-service text message on the same push URL.
    let text = json!({
        "ToUserName": ORIGINAL_ID_PLAIN, "FromUserName": "o1", "CreateTime": wechat_v3::now(),
        "MsgType": "text", "Content": "hello", "MsgId": 1
    });
    let (body, q) = plain(&text);
    assert_eq!(push(&s, "plain", &q, &body).await, (200, SUCCESS.into()));
    unchanged(&s, "XPO0000001", "xu4").await;
    stored(
        &s,
        &[
            ("coin", Verdict::Paid, ""),
            ("refund event", Verdict::Ignored, "xpay_refund_notify"),
            ("text", Verdict::Ignored, "MsgType text"),
        ],
    )
    .await;
}

#[tokio::test]
async fn forged_mismatched_and_misdirected_pushes_are_refused_and_change_nothing() {
    let (s, key) = server().await;
    recharge(&s, "plain", "XPB0000001", "xu5", 1000).await;
    recharge(&s, "safe", "XPB0000002", "xu6", 2000).await;
    let now = wechat_v3::now();
    let p_ev = |fen: i64, env: i64| goods_event(ORIGINAL_ID_PLAIN, "XPB0000001", fen, env, "42001");
    let s_ev = |fen: i64, env: i64| goods_event(ORIGINAL_ID_SAFE, "XPB0000002", fen, env, "42002");
    let good_plain = p_ev(1000, 0).to_string();
    let (good_safe, good_safe_q) = safe(&key, &s_ev(2000, 0));
    let enc: Value = serde_json::from_str(&good_safe).expect("json");
    let enc = enc["Encrypt"].as_str().expect("Encrypt").to_owned();
    // One byte of the ciphertext changed (the signature was made over the original).
    let mut raw = base64_decode(&enc);
    raw[40] ^= 1;
    let tampered = good_safe.replace(&enc, &base64_encode(&raw));
    let other_key = new_encoding_aes_key();
    let mut cases: Vec<(&str, &str, String, String, &str)> = vec![
        (
            "plain: penny payment",
            "plain",
            plain_query(TOKEN_PLAIN, now),
            p_ev(1, 0).to_string(),
            "amount mismatch",
        ),
        (
            "plain: wrong token",
            "plain",
            plain_query("notthetoken", now),
            good_plain.clone(),
            "bad signature",
        ),
        (
            "plain: no signature",
            "plain",
            format!("timestamp={now}&nonce=1"),
            good_plain.clone(),
            "bad signature",
        ),
        (
            "plain: stale timestamp",
            "plain",
            plain_query(TOKEN_PLAIN, now - 600),
            good_plain.clone(),
            "stale timestamp",
        ),
        (
            "plain: sandbox Env",
            "plain",
            plain_query(TOKEN_PLAIN, now),
            p_ev(1000, 1).to_string(),
            "account mismatch",
        ),
        (
            "plain: another mini program's ToUserName",
            "plain",
            plain_query(TOKEN_PLAIN, now),
            good_plain.replace(ORIGINAL_ID_PLAIN, "gh_999999999999"),
            "account mismatch",
        ),
        (
            "plain: the safe account's order",
            "plain",
            plain_query(TOKEN_PLAIN, now),
            goods_event(ORIGINAL_ID_PLAIN, "XPB0000002", 2000, 0, "42003").to_string(),
            "order belongs to wechat-xpay account `safe`",
        ),
        (
            "safe: plaintext push to a safe-mode account",
            "safe",
            plain_query(TOKEN_SAFE, now),
            s_ev(2000, 0).to_string(),
            "safe mode",
        ),
        (
            "safe: bad msg_signature",
            "safe",
            good_safe_q.replace("msg_signature=", "msg_signature=f"),
            good_safe.clone(),
            "bad signature",
        ),
        (
            "safe: tampered Encrypt",
            "safe",
            good_safe_q.clone(),
            tampered,
            "bad signature",
        ),
    ];
    let mut pushes = Vec::new();
    for (name, ev, appid, key_used) in [
        ("safe: penny payment", s_ev(1, 0), APPID_SAFE, key.as_str()),
        ("safe: sandbox Env", s_ev(2000, 1), APPID_SAFE, key.as_str()),
        (
            "safe: another appid",
            s_ev(2000, 0),
            APPID_PLAIN,
            key.as_str(),
        ),
        (
            "safe: another EncodingAESKey",
            s_ev(2000, 0),
            APPID_SAFE,
            other_key.as_str(),
        ),
    ] {
        let (b, q) = safe_push(TOKEN_SAFE, key_used, appid, ORIGINAL_ID_SAFE, &ev, now);
        pushes.push((name, q, b));
    }
    let reasons = [
        "amount mismatch",
        "account mismatch",
        "account mismatch",
        "malformed",
    ];
    for ((name, q, b), reason) in pushes.into_iter().zip(reasons) {
        cases.push((name, "safe", q, b, reason));
    }
    for (name, account, q, body, _) in &cases {
        failed(name, &push(&s, account, q, body).await);
    }
    unchanged(&s, "XPB0000001", "xu5").await;
    unchanged(&s, "XPB0000002", "xu6").await;
    let expected: Vec<(&str, Verdict, &str)> = cases
        .iter()
        .map(|(n, _, _, _, r)| (*n, Verdict::Rejected, *r))
        .collect();
    stored(&s, &expected).await;
    // The genuine pushes still pay, once.
    let (b, q) = plain(&p_ev(1000, 0));
    assert_eq!(push(&s, "plain", &q, &b).await, (200, SUCCESS.into()));
    assert_eq!(
        push(&s, "safe", &good_safe_q, &good_safe).await,
        (200, SUCCESS.into())
    );
    assert_eq!(balance(&s, "xu5").await, Some(1000));
    assert_eq!(balance(&s, "xu6").await, Some(2000));
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64")
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn the_signer_matches_a_hand_computed_signature() {
    // sha1("1409304348" + "pamtest" + "xxxxxx"), sorted, computed with Python's hashlib.
    assert_eq!(
        xpay::sha1_signature(&["pamtest", "1409304348", "xxxxxx"]),
        "76480565cbe296026c53aaacd1ad523a1ddba24f"
    );
}

//! WeChat Pay v3 partner mode (服务商, issue 25 §2), end to end: a service provider's
//! account serving two sub-merchants, on the real server with the real `recharge`
//! handler. Each sub-merchant's genuine notification pays its own order; a genuine
//! notification for one sub-merchant never pays the other's order (the forgery a
//! sub-merchant can make by paying, under its own id, an order number of another's);
//! reconciliation and closing call the partner endpoints with the order's sub-merchant.

use paynotify::store::{status, Verdict};
use paynotify_tests::wechat_v3_partner::{
    self as partner, PartnerProvider, SP_MCHID, SUB_A, SUB_APPID_A, SUB_B,
};
use paynotify_tests::{fake_provider, wechat_v3, Options, TestServer};
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use serde_json::{json, Value};

/// A server with the partner account `sp` (sub-merchants A and B, `api_base` the
/// stand-in) and a direct v3 account `direct`; `extra` is appended.
async fn server(stand_in: &PartnerProvider, keys: &tempfile::TempDir, extra: &str) -> TestServer {
    let k = wechat_v3::keys();
    let write = |name: &str, text: String| {
        let path = keys.path().join(name);
        std::fs::write(&path, text).expect("write key");
        path.display().to_string()
    };
    let wechatpay_pub = write("wechatpay_pub.pem", wechat_v3::public_key_pem(&k[0]));
    let direct_pub = write("wechatpay_pub_b.pem", wechat_v3::public_key_pem(&k[2]));
    let merchant_key = write(
        "apiclient_key.pem",
        fake_provider::host_keys()
            .0
            .to_pkcs8_pem(LineEnding::LF)
            .expect("pem")
            .to_string(),
    );
    let config = format!(
        r#"
[[accounts]]
provider = "wechat-v3"
name = "sp"
mode = "partner"
sp_mchid = "{sp_mchid}"
sp_appid = "{sp_appid}"
api_v3_key = "{v3key}"
public_keys = {{ "{pub_id_a}" = "{wechatpay_pub}" }}
merchant_private_key_file = "{merchant_key}"
merchant_serial_no = "{serial}"
api_base = "{base}"

[[accounts.sub_merchants]]
sub_mchid = "{sub_a}"
sub_appid = "{sub_appid_a}"

[[accounts.sub_merchants]]
sub_mchid = "{sub_b}"

[[accounts]]
provider = "wechat-v3"
name = "direct"
appid = "{appid_b}"
mch_id = "{mch_b}"
api_v3_key = "{v3key}"
public_keys = {{ "{pub_id_b}" = "{direct_pub}" }}

[reconcile]
batch = 100
{extra}
"#,
        sp_mchid = SP_MCHID,
        sp_appid = partner::SP_APPID,
        v3key = wechat_v3::API_V3_KEY,
        pub_id_a = wechat_v3::PUB_KEY_ID_A,
        pub_id_b = wechat_v3::PUB_KEY_ID_B,
        serial = fake_provider::V3_MERCHANT_SERIAL,
        base = stand_in.base,
        sub_a = SUB_A,
        sub_appid_a = SUB_APPID_A,
        sub_b = SUB_B,
        appid_b = wechat_v3::APPID_B,
        mch_b = wechat_v3::MCH_ID_B,
    );
    let mut options = Options::with_plugins(&["recharge"]);
    options.extra_config = config;
    TestServer::start(options).await
}

/// `POST /api/orders` for a recharge of `fen` for `user`: (status, body).
async fn create(
    s: &TestServer,
    account: &str,
    sub_mchid: Option<&str>,
    no: &str,
    user: &str,
    fen: i64,
) -> (u16, Value) {
    let mut body = json!({
        "type": "recharge", "total_fee": fen, "user_id": user, "provider": "wechat-v3",
        "account": account, "out_trade_no": no, "custom": { "recharge_balance": fen }
    });
    if let Some(sub) = sub_mchid {
        body["sub_mchid"] = sub.into();
    }
    s.api("POST", "/api/orders", Some(body)).await
}

/// Sends `tx` as WeChat Pay notifies the service provider: encrypted with its APIv3 key,
/// signed with WeChat Pay's key. (status, body).
async fn notify(s: &TestServer, path: &str, tx: &Value) -> (u16, String) {
    let body = wechat_v3::body("TRANSACTION.SUCCESS", tx, wechat_v3::API_V3_KEY);
    let k = wechat_v3::keys();
    let headers = wechat_v3::headers(&k[0], wechat_v3::PUB_KEY_ID_A, wechat_v3::now(), &body);
    s.notify_with_headers(path, "application/json", &headers, body)
        .await
}

async fn balance(s: &TestServer, user: &str) -> Option<i64> {
    s.document("users", user)
        .await
        .and_then(|d| d["balance"].as_i64())
}

/// The order is unpaid and its user was never credited.
async fn unchanged(s: &TestServer, no: &str, user: &str) {
    let o = s.order(no).await;
    assert_eq!(
        (
            o.status,
            o.transaction_id.as_deref(),
            o.handler_status.as_str()
        ),
        (status::UNPAID, None, "pending"),
        "{no}"
    );
    assert_eq!(balance(s, user).await, None, "{no}: {user} was credited");
}

/// The latest stored notification: its verdict, and its reason containing `reason`.
async fn last_stored(s: &TestServer, verdict: Verdict, reason: &str) {
    let all = s.notifications_of("wechat-v3").await;
    let n = all.last().expect("stored");
    let why = n.reason.as_deref().unwrap_or("");
    assert_eq!(n.verdict, verdict, "{why}");
    assert!(why.contains(reason), "reason `{why}` lacks `{reason}`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_sub_merchant_pays_its_own_orders_and_never_the_others() {
    let stand_in = PartnerProvider::start().await;
    let keys = tempfile::tempdir().expect("keys dir");
    let s = server(&stand_in, &keys, "").await;
    for (sub, no, user, fen) in [
        (SUB_A, "PA-0001", "ua1", 100),
        (SUB_A, "PA-0002", "ua2", 300),
        (SUB_B, "PB-0001", "ub1", 200),
        (SUB_B, "PB-0002", "ub2", 300),
    ] {
        let (code, v) = create(&s, "sp", Some(sub), no, user, fen).await;
        assert_eq!(code, 201, "{v}");
        assert_eq!(v["sub_mchid"], sub, "{v}");
    }

    // Each sub-merchant's genuine notification pays its own order, once.
    for (sub, no, user, fen, tx_id, path) in [
        (
            SUB_A,
            "PA-0001",
            "ua1",
            100,
            "4200000001",
            "/notify/wechat-v3/sp",
        ),
        (
            SUB_B,
            "PB-0001",
            "ub1",
            200,
            "4200000002",
            "/notify/wechat-v3",
        ),
    ] {
        let tx = partner::transaction(SP_MCHID, sub, no, fen, tx_id);
        for _ in 0..2 {
            let (code, body) = notify(&s, path, &tx).await;
            assert_eq!(code, 204, "{no}: {body}");
        }
        let o = s.order(no).await;
        assert_eq!(o.status, status::PAID, "{no}");
        assert_eq!(o.transaction_id.as_deref(), Some(tx_id));
        assert_eq!(o.sub_mchid.as_deref(), Some(sub));
        assert_eq!(balance(&s, user).await, Some(fen), "{user} credited once");
        last_stored(&s, Verdict::Duplicate, "").await;
    }

    // Sub-merchant A pays, under its own sub_mchid, a trade numbered as B's order
    // (order numbers are only unique per sub-merchant at WeChat Pay): the notification
    // is genuine, signed and encrypted for the service provider, and must not pay B's.
    let forged = partner::transaction(SP_MCHID, SUB_A, "PB-0002", 300, "4200000003");
    for path in ["/notify/wechat-v3/sp", "/notify/wechat-v3"] {
        let (code, body) = notify(&s, path, &forged).await;
        assert_eq!(code, 400, "cross-sub-merchant: {body}");
        last_stored(
            &s,
            Verdict::Rejected,
            &format!("order is for sub-merchant `{SUB_B}` of account `sp`, notification is for sub-merchant `{SUB_A}`"),
        )
        .await;
    }
    unchanged(&s, "PB-0002", "ub2").await;
    // And the other way round: B's genuine notification at A's order.
    let forged = partner::transaction(SP_MCHID, SUB_B, "PA-0002", 300, "4200000004");
    let (code, body) = notify(&s, "/notify/wechat-v3/sp", &forged).await;
    assert_eq!(code, 400, "{body}");
    last_stored(&s, Verdict::Rejected, "notification is for sub-merchant").await;
    unchanged(&s, "PA-0002", "ua2").await;

    // Another service provider, a sub-merchant not served, A through another app: refused
    // before any order is looked at.
    let mut other_sp = partner::transaction("1900000999", SUB_A, "PA-0002", 300, "4200000005");
    other_sp["sub_appid"] = SUB_APPID_A.into();
    let stranger = partner::transaction(SP_MCHID, "1900000777", "PA-0002", 300, "4200000006");
    let mut other_app = partner::transaction(SP_MCHID, SUB_A, "PA-0002", 300, "4200000007");
    other_app["sub_appid"] = "wx0000000000000a0a".into();
    for (name, tx, reason) in [
        (
            "another service provider",
            other_sp,
            "sp_mchid `1900000999`",
        ),
        (
            "a sub-merchant not served",
            stranger,
            "sub_mchid `1900000777`",
        ),
        (
            "another app of A",
            other_app,
            "sub_appid `wx0000000000000a0a`",
        ),
    ] {
        let (code, body) = notify(&s, "/notify/wechat-v3/sp", &tx).await;
        assert_eq!(code, 400, "{name}: {body}");
        last_stored(&s, Verdict::Rejected, reason).await;
    }
    unchanged(&s, "PA-0002", "ua2").await;

    // The service provider's notification sent to the direct account's URL: its key does
    // not verify there, and a direct account never reads a partner transaction.
    let tx = partner::transaction(SP_MCHID, SUB_A, "PA-0002", 300, "4200000008");
    let (code, _) = notify(&s, "/notify/wechat-v3/direct", &tx).await;
    assert_eq!(code, 400);
    unchanged(&s, "PA-0002", "ua2").await;

    // A's genuine payment of its own order still goes through after all that.
    let tx = partner::transaction(SP_MCHID, SUB_A, "PA-0002", 300, "4200000009");
    let (code, body) = notify(&s, "/notify/wechat-v3", &tx).await;
    assert_eq!(code, 204, "{body}");
    assert_eq!(balance(&s, "ua2").await, Some(300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partner_accounts_orders_name_one_of_its_sub_merchants() {
    let stand_in = PartnerProvider::start().await;
    let keys = tempfile::tempdir().expect("keys dir");
    let s = server(&stand_in, &keys, "").await;
    for (account, sub, want) in [
        ("sp", None, "sub_mchid is required"),
        (
            "sp",
            Some("1900000777"),
            "sub_mchid `1900000777` is not a sub-merchant",
        ),
        (
            "direct",
            Some(SUB_A),
            "sub_mchid: wechat-v3 account `direct` is not a partner",
        ),
    ] {
        let (code, v) = create(&s, account, sub, "PX-0001", "ux", 100).await;
        assert_eq!(code, 422, "{account} {sub:?}: {v}");
        assert!(v.to_string().contains(want), "{account} {sub:?}: {v}");
    }
    let (code, v) = create(&s, "direct", None, "PD-0001", "ud", 100).await;
    assert_eq!(code, 201, "{v}");
    assert!(v.get("sub_mchid").is_none(), "a direct order has none: {v}");
    let (code, v) = create(&s, "sp", Some(SUB_B), "PB-0001", "ub", 100).await;
    assert_eq!(code, 201, "{v}");
    let (code, v) = s.api("GET", "/api/orders/PB-0001", None).await;
    assert_eq!((code, &v["sub_mchid"]), (200, &json!(SUB_B)), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconciliation_and_closing_use_the_partner_endpoints() {
    let stand_in = PartnerProvider::start().await;
    let keys = tempfile::tempdir().expect("keys dir");
    let s = server(&stand_in, &keys, "").await;
    for (sub, no, user) in [
        (SUB_A, "RA-0001", "ra"),
        (SUB_B, "RB-0001", "rb"),
        (SUB_B, "RB-0002", "rb2"),
    ] {
        let (code, v) = create(&s, "sp", Some(sub), no, user, 500).await;
        assert_eq!(code, 201, "{v}");
    }
    stand_in.paid("RA-0001", SUB_A, 500, "4200000101");
    // Paid to A under B's order number: asked with B's sub_mchid, WeChat Pay finds nothing.
    stand_in.paid("RB-0001", SUB_A, 500, "4200000102");

    let (code, report) = s
        .api("POST", "/api/admin/reconcile?older_than_secs=0", None)
        .await;
    assert_eq!(code, 200, "{report}");
    assert_eq!(
        (
            report["paid"].as_i64(),
            report["unpaid"].as_i64(),
            report["errors"].as_i64()
        ),
        (Some(1), Some(2), Some(0)),
        "{report}"
    );
    assert_eq!(s.order("RA-0001").await.status, status::PAID);
    assert_eq!(balance(&s, "ra").await, Some(500));
    unchanged(&s, "RB-0001", "rb").await;
    let mut queries = stand_in.lock().queries.clone();
    queries.sort();
    let q = |no: &str, sub: &str| {
        format!(
            "/v3/pay/partner/transactions/out-trade-no/{no}?sp_mchid={SP_MCHID}&sub_mchid={sub}"
        )
    };
    assert_eq!(
        queries,
        [
            q("RA-0001", SUB_A),
            q("RB-0001", SUB_B),
            q("RB-0002", SUB_B)
        ]
    );

    // An answer about A's trade to a query about B's order (a provider that ignored the
    // sub_mchid, or someone replaying A's signed answer) verifies, and pays nothing.
    stand_in.lock().ignore_sub_mchid = true;
    let (code, report) = s
        .api("POST", "/api/admin/reconcile?older_than_secs=0", None)
        .await;
    assert_eq!(code, 200, "{report}");
    assert_eq!(report["errors"].as_i64(), Some(1), "{report}");
    unchanged(&s, "RB-0001", "rb").await;
    last_stored(
        &s,
        Verdict::Rejected,
        &format!("order is for sub-merchant `{SUB_B}`"),
    )
    .await;

    assert_eq!(stand_in.lock().bad_requests, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn closing_an_expired_order_names_its_sub_merchant() {
    let stand_in = PartnerProvider::start().await;
    let keys = tempfile::tempdir().expect("keys dir");
    let extra =
        "[orders]\nexpire_after_secs = 1\nexpire_check_secs = 1\nclose_at_provider = true\n";
    let s = server(&stand_in, &keys, extra).await;
    let (code, v) = create(&s, "sp", Some(SUB_B), "CB-0001", "cb", 100).await;
    assert_eq!(code, 201, "{v}");
    // Let the order's one-second lifetime run out (a wait, not a timing assertion).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let closed = paynotify::expiry::expirer(&s.app)
        .close_expired()
        .await
        .expect("sweep");
    assert_eq!(closed, ["CB-0001"]);
    assert_eq!(s.order("CB-0001").await.status, status::CLOSED);
    let closes = stand_in.lock().closes.clone();
    assert_eq!(
        closes,
        [(
            "/v3/pay/partner/transactions/out-trade-no/CB-0001/close".to_owned(),
            json!({ "sp_mchid": SP_MCHID, "sub_mchid": SUB_B })
        )]
    );
    assert_eq!(stand_in.lock().bad_requests, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_for_another_sub_merchant_never_touches_the_order() {
    let stand_in = PartnerProvider::start().await;
    let keys = tempfile::tempdir().expect("keys dir");
    let s = server(&stand_in, &keys, "").await;
    let (code, v) = create(&s, "sp", Some(SUB_A), "FA-0001", "fa", 500).await;
    assert_eq!(code, 201, "{v}");
    let tx = partner::transaction(SP_MCHID, SUB_A, "FA-0001", 500, "4200000201");
    let (code, body) = notify(&s, "/notify/wechat-v3/sp", &tx).await;
    assert_eq!(code, 204, "{body}");

    let refund = |sub: &str, out_refund_no: &str| {
        let r = json!({
            "sp_mchid": SP_MCHID,
            "sub_mchid": sub,
            "out_trade_no": "FA-0001",
            "transaction_id": "4200000201",
            "out_refund_no": out_refund_no,
            "refund_id": format!("5000000038201905270973267{}", out_refund_no.len()),
            "refund_status": "SUCCESS",
            "success_time": "2026-01-02T10:00:00+08:00",
            "amount": { "total": 500, "refund": 200, "payer_total": 500, "payer_refund": 200 }
        });
        wechat_v3::refund_body("REFUND.SUCCESS", &r, wechat_v3::API_V3_KEY)
    };
    let send = |body: String| async {
        let k = wechat_v3::keys();
        let h = wechat_v3::headers(&k[0], wechat_v3::PUB_KEY_ID_A, wechat_v3::now(), &body);
        s.notify_with_headers("/notify/wechat-v3/sp", "application/json", &h, body)
            .await
    };
    // B's genuine refund numbered like A's order: refused, nothing refunded.
    let (code, body) = send(refund(SUB_B, "RF-B-1")).await;
    assert_eq!(code, 400, "{body}");
    last_stored(&s, Verdict::Rejected, "refund is for sub-merchant").await;
    let o = s.order("FA-0001").await;
    assert_eq!((o.status, o.refund_fee), (status::PAID, 0));
    // A's own refund applies.
    let (code, body) = send(refund(SUB_A, "RF-A-1")).await;
    assert_eq!(code, 204, "{body}");
    let o = s.order("FA-0001").await;
    assert_eq!((o.status, o.refund_fee), (status::PARTIALLY_REFUNDED, 200));
}

//! Reconciliation, closing at the provider and bulk re-drive, end to end: the real
//! server with the real `recharge` handler, and a fake provider on loopback speaking
//! WeChat Pay v2, v3 and Alipay's order APIs with real signatures both ways.

use std::process::Stdio;

use paynotify::store::{status, Verdict};
use paynotify_tests::fake_provider::{self, FakeProvider, Trade};
use paynotify_tests::{alipay, cloudpay, wechat_v2, wechat_v3, Options, TestServer};
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use serde_json::{json, Value};

/// A server whose accounts call `fake`: a v2 account `fake`, v3 `a`, Alipay `a` (all
/// with `api_base` = the fake), and CloudPay `a` (no query API). `extra` is appended.
async fn server(
    fake: &FakeProvider,
    keys: &tempfile::TempDir,
    extra: &str,
    plugins: Options,
) -> TestServer {
    let k = wechat_v3::keys();
    let (merchant, app) = fake_provider::host_keys();
    let write = |name: &str, text: String| {
        let path = keys.path().join(name);
        std::fs::write(&path, text).expect("write key");
        path.display().to_string()
    };
    let wechatpay_pub = write("wechatpay_pub.pem", wechat_v3::public_key_pem(&k[0]));
    let alipay_pub = write("alipay_pub.pem", wechat_v3::public_key_pem(&k[2]));
    let merchant_key = write(
        "apiclient_key.pem",
        merchant
            .to_pkcs8_pem(LineEnding::LF)
            .expect("pem")
            .to_string(),
    );
    // Alipay's key tool prints the bare base64 of the PKCS#8 DER.
    let app_key: String = app
        .to_pkcs8_pem(LineEnding::LF)
        .expect("pem")
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let app_key = write("app_private_key.txt", app_key);
    let config = format!(
        r#"
[[accounts]]
provider = "wechat-v2"
name = "fake"
appid = "{v2_appid}"
mch_id = "{v2_mch}"
api_key = "{v2_key}"
api_base = "{base}"

[[accounts]]
provider = "wechat-v3"
name = "a"
appid = "{appid_a}"
mch_id = "{mch_a}"
api_v3_key = "{v3key}"
public_keys = {{ "{pub_id_a}" = "{wechatpay_pub}" }}
merchant_private_key_file = "{merchant_key}"
merchant_serial_no = "{serial}"
api_base = "{base}/"

[[accounts]]
provider = "alipay"
name = "a"
app_id = "{ali_a}"
alipay_public_key_file = "{alipay_pub}"
app_private_key_file = "{app_key}"
api_base = "{base}"

[[accounts]]
provider = "cloudpay"
name = "a"
sub_mch_id = "{sub_a}"
secret = "{secret_a}"

[reconcile]
batch = 100
{extra}
"#,
        v2_appid = fake_provider::V2_APPID,
        v2_mch = fake_provider::V2_MCH_ID,
        v2_key = fake_provider::V2_API_KEY,
        base = fake.base,
        appid_a = wechat_v3::APPID_A,
        mch_a = wechat_v3::MCH_ID_A,
        v3key = wechat_v3::API_V3_KEY,
        pub_id_a = wechat_v3::PUB_KEY_ID_A,
        serial = fake_provider::V3_MERCHANT_SERIAL,
        ali_a = alipay::APP_ID_A,
        sub_a = cloudpay::SUB_MCH_ID_A,
        secret_a = cloudpay::SECRET_A,
    );
    let mut options = plugins;
    options.extra_config = config;
    TestServer::start(options).await
}

/// Creates a recharge order of `fen` for `user` at `provider`/`account`.
async fn order(s: &TestServer, no: &str, provider: &str, account: &str, user: &str, fen: i64) {
    s.create_order(json!({
        "type": "recharge", "total_fee": fen, "user_id": user, "provider": provider,
        "account": account, "out_trade_no": no, "custom": { "recharge_balance": fen }
    }))
    .await;
}

/// `POST /api/admin/reconcile` with a query string; the report.
async fn reconcile(s: &TestServer, query: &str) -> Value {
    let (status, v) = s
        .api("POST", &format!("/api/admin/reconcile{query}"), None)
        .await;
    assert_eq!(status, 200, "reconcile: {v}");
    v
}

/// The report's line for `no`.
fn line<'a>(report: &'a Value, no: &str) -> &'a Value {
    report["orders"]
        .as_array()
        .and_then(|a| a.iter().find(|o| o["out_trade_no"] == no))
        .unwrap_or_else(|| panic!("{no} is not in the report: {report}"))
}

/// A user's balance as the recharge handler wrote it (None: never credited).
async fn balance(s: &TestServer, user: &str) -> Option<i64> {
    s.document("users", user)
        .await
        .map(|d| d["balance"].as_i64().expect("balance"))
}

/// `/metrics` text.
async fn metrics(s: &TestServer) -> String {
    s.http
        .get(s.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconcile_pays_never_notified_orders_on_each_provider() {
    let fake = FakeProvider::start().await;
    let keys = tempfile::tempdir().expect("keys dir");
    let s = server(&fake, &keys, "", Options::with_plugins(&["recharge"])).await;

    order(&s, "RV2-PAID", "wechat-v2", "fake", "u-v2", 101).await;
    order(&s, "RV3-PAID", "wechat-v3", "a", "u-v3", 202).await;
    order(&s, "RALI-PAID", "alipay", "a", "u-ali", 303).await;
    order(&s, "RV2-OPEN", "wechat-v2", "fake", "u-open", 404).await;
    order(&s, "RV3-NONE", "wechat-v3", "a", "u-none", 505).await;
    order(&s, "RALI-OPEN", "alipay", "a", "u-ali-open", 606).await;
    order(&s, "RCP-CLOUD", "cloudpay", "a", "u-cp", 707).await;
    fake.set(
        "RV2-PAID",
        Trade::Paid {
            fen: 101,
            transaction_id: "4200000001".into(),
        },
    );
    fake.set(
        "RV3-PAID",
        Trade::Paid {
            fen: 202,
            transaction_id: "4200000002".into(),
        },
    );
    fake.set(
        "RALI-PAID",
        Trade::Paid {
            fen: 303,
            transaction_id: "2026010122001".into(),
        },
    );
    fake.set("RV2-OPEN", Trade::Unpaid);
    fake.set("RALI-OPEN", Trade::Unpaid);
    // RV3-NONE: never created at the provider.

    // Younger than the default age (600 s): nothing is due.
    let early = reconcile(&s, "").await;
    assert_eq!(early["orders"], json!([]), "{early}");

    let report = reconcile(&s, "?older_than_secs=0").await;
    assert_eq!(
        (
            report["paid"].as_i64(),
            report["unpaid"].as_i64(),
            report["errors"].as_i64(),
            report["skipped"].as_i64()
        ),
        (Some(3), Some(3), Some(0), Some(1)),
        "{report}"
    );
    for (no, user, fen, tx) in [
        ("RV2-PAID", "u-v2", 101, "4200000001"),
        ("RV3-PAID", "u-v3", 202, "4200000002"),
        ("RALI-PAID", "u-ali", 303, "2026010122001"),
    ] {
        let l = line(&report, no);
        assert_eq!(
            (l["outcome"].as_str(), l["verdict"].as_str()),
            (Some("paid"), Some("paid")),
            "{l}"
        );
        let o = s.order(no).await;
        assert_eq!(o.status, status::PAID, "{no}");
        assert_eq!(o.transaction_id.as_deref(), Some(tx), "{no}");
        assert_eq!(o.handler_status, "succeeded", "{no}");
        assert_eq!(
            balance(&s, user).await,
            Some(fen),
            "{no}: the handler's write"
        );
        // The provider's verified answer is the paying notification, marked as such.
        let id = l["notification_id"].as_i64().expect("stored answer");
        assert_eq!(o.paid_notification_id, Some(id), "{no}");
        let n = s
            .app
            .store
            .get_notification(id)
            .await
            .expect("db")
            .expect("stored");
        assert_eq!(n.verdict, Verdict::Paid);
        assert!(
            n.headers
                .iter()
                .any(|(k, v)| k == "x-paynotify-source" && v == "reconcile"),
            "{no}: {:?}",
            n.headers
        );
    }
    for (no, state) in [
        ("RV2-OPEN", "NOTPAY"),
        ("RV3-NONE", "ORDER_NOT_EXIST"),
        ("RALI-OPEN", "WAIT_BUYER_PAY"),
    ] {
        let l = line(&report, no);
        assert_eq!(
            (l["outcome"].as_str(), l["state"].as_str()),
            (Some("unpaid"), Some(state)),
            "{l}"
        );
        assert_eq!(s.order(no).await.status, status::UNPAID, "{no}");
    }
    for user in ["u-open", "u-none", "u-ali-open", "u-cp"] {
        assert_eq!(balance(&s, user).await, None, "{user} credited");
    }
    let cp = line(&report, "RCP-CLOUD");
    assert_eq!(cp["outcome"], "skipped", "{cp}");
    assert!(
        cp["reason"].as_str().unwrap_or("").contains("CloudPay"),
        "{cp}"
    );

    // Every request the host sent was signed right (the fake checks each).
    assert!(
        fake.lock().bad_requests.is_empty(),
        "{:?}",
        fake.lock().bad_requests
    );

    // A second run, the buyer having paid one more meanwhile: the paid ones are not
    // asked again, nothing is credited twice.
    fake.set(
        "RV2-OPEN",
        Trade::Paid {
            fen: 404,
            transaction_id: "4200000004".into(),
        },
    );
    let again = reconcile(&s, "?older_than_secs=0").await;
    assert_eq!(again["paid"], 1, "{again}");
    assert_eq!(line(&again, "RV2-OPEN")["outcome"], "paid");
    assert!(
        again["orders"]
            .as_array()
            .expect("orders")
            .iter()
            .all(|o| o["out_trade_no"] != "RV2-PAID"),
        "{again}"
    );
    assert_eq!(balance(&s, "u-v2").await, Some(101));
    assert_eq!(balance(&s, "u-open").await, Some(404));

    // Series only, not values: the recorder is shared by the tests running beside this one.
    let m = metrics(&s).await;
    for series in [
        r#"paynotify_reconcile_total{provider="wechat-v2",outcome="paid"}"#,
        r#"paynotify_reconcile_total{provider="cloudpay",outcome="skipped"}"#,
        r#"paynotify_reconcile_total{provider="alipay",outcome="unpaid"}"#,
    ] {
        assert!(m.contains(series), "no `{series}` in:\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconcile_refuses_bad_signatures_and_wrong_amounts() {
    let fake = FakeProvider::start().await;
    let keys = tempfile::tempdir().expect("keys dir");
    let s = server(&fake, &keys, "", Options::with_plugins(&["recharge"])).await;

    order(&s, "BAD-V2-SIG", "wechat-v2", "fake", "b1", 100).await;
    order(&s, "BAD-V3-SIG", "wechat-v3", "a", "b2", 100).await;
    order(&s, "BAD-ALI-SIG", "alipay", "a", "b3", 100).await;
    order(&s, "BAD-V2-AMT", "wechat-v2", "fake", "b4", 100).await;
    order(&s, "BAD-V3-AMT", "wechat-v3", "a", "b5", 100).await;
    order(&s, "BAD-ALI-AMT", "alipay", "a", "b6", 100).await;
    for no in ["BAD-V2-SIG", "BAD-V3-SIG", "BAD-ALI-SIG"] {
        fake.set(
            no,
            Trade::Paid {
                fen: 100,
                transaction_id: format!("T-{no}"),
            },
        );
        fake.bad_signature(no);
    }
    for no in ["BAD-V2-AMT", "BAD-V3-AMT", "BAD-ALI-AMT"] {
        fake.set(
            no,
            Trade::Paid {
                fen: 1,
                transaction_id: format!("T-{no}"),
            },
        );
    }

    let report = reconcile(&s, "?older_than_secs=0").await;
    assert_eq!(report["errors"], 6, "{report}");
    for (no, why) in [
        ("BAD-V2-SIG", "signature"),
        ("BAD-V3-SIG", "signature"),
        ("BAD-ALI-SIG", "signature"),
        ("BAD-V2-AMT", "amount mismatch"),
        ("BAD-V3-AMT", "amount mismatch"),
        ("BAD-ALI-AMT", "amount mismatch"),
    ] {
        let l = line(&report, no);
        assert_eq!(l["outcome"], "error", "{l}");
        assert!(
            l["reason"].as_str().unwrap_or("").contains(why),
            "{no}: {l}"
        );
        let o = s.order(no).await;
        assert_eq!((o.status, o.transaction_id), (status::UNPAID, None), "{no}");
        // Kept for ops, as rejected.
        let id = l["notification_id"].as_i64().expect("stored answer");
        let n = s
            .app
            .store
            .get_notification(id)
            .await
            .expect("db")
            .expect("stored");
        assert_eq!(n.verdict, Verdict::Rejected, "{no}");
        assert_eq!(
            n.out_trade_no.as_deref(),
            Some(no),
            "listed under its order"
        );
    }
    for user in ["b1", "b2", "b3", "b4", "b5", "b6"] {
        assert_eq!(balance(&s, user).await, None, "{user} credited");
    }
    let m = metrics(&s).await;
    assert!(
        m.contains(r#"paynotify_reconcile_total{provider="wechat-v3",outcome="error"}"#),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconcile_racing_real_notifications_credits_once() {
    let fake = FakeProvider::start().await;
    let keys = tempfile::tempdir().expect("keys dir");
    let s = server(&fake, &keys, "", Options::with_plugins(&["recharge"])).await;
    const N: usize = 12;
    for i in 0..N {
        let no = format!("RACE-{i:02}");
        order(
            &s,
            &no,
            "wechat-v2",
            "fake",
            &format!("racer-{i}"),
            100 + i as i64,
        )
        .await;
        fake.set(
            &no,
            Trade::Paid {
                fen: 100 + i as i64,
                transaction_id: format!("42000{i:05}"),
            },
        );
    }
    // The provider's own notifications, signed with the fake account's key.
    let notify = async {
        let sends = (0..N).map(|i| {
            let mut f = wechat_v2::paid(
                &format!("RACE-{i:02}"),
                100 + i as i64,
                &format!("42000{i:05}"),
            );
            f.insert("appid".into(), fake_provider::V2_APPID.into());
            f.insert("mch_id".into(), fake_provider::V2_MCH_ID.into());
            let xml = wechat_v2::xml(&f, fake_provider::V2_API_KEY);
            s.notify("/notify/wechat-v2/fake", "text/xml", xml)
        });
        futures::future::join_all(sends).await
    };
    let (answers, report) = tokio::join!(notify, reconcile(&s, "?older_than_secs=0"));
    for (status, body) in answers {
        assert_eq!(
            (status, paynotify_tests::v2_return_code(&body)),
            (200, "SUCCESS"),
            "{body}"
        );
    }
    // Whatever came first, each order is paid once and credited once.
    for i in 0..N {
        let no = format!("RACE-{i:02}");
        let o = s.order(&no).await;
        assert_eq!(o.status, status::PAID, "{no}");
        assert_eq!(
            balance(&s, &format!("racer-{i}")).await,
            Some(100 + i as i64),
            "{no}"
        );
        let verdicts: Vec<Verdict> = s
            .notifications()
            .await
            .into_iter()
            .filter(|n| n.out_trade_no.as_deref() == Some(no.as_str()))
            .map(|n| n.verdict)
            .collect();
        assert_eq!(
            verdicts.iter().filter(|v| **v == Verdict::Paid).count(),
            1,
            "{no}: {verdicts:?}"
        );
        assert!(
            verdicts
                .iter()
                .all(|v| matches!(v, Verdict::Paid | Verdict::Duplicate)),
            "{no}: {verdicts:?}"
        );
        let l = report["orders"]
            .as_array()
            .and_then(|a| a.iter().find(|o| o["out_trade_no"] == no.as_str()));
        if let Some(l) = l {
            assert_eq!(l["outcome"], "paid", "{l}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_closes_at_the_provider_first() {
    let fake = FakeProvider::start().await;
    let keys = tempfile::tempdir().expect("keys dir");
    let extra =
        "[orders]\nexpire_after_secs = 1\nexpire_check_secs = 1\nclose_at_provider = true\n";
    let s = server(&fake, &keys, extra, Options::with_plugins(&["recharge"])).await;

    order(&s, "EXP-V2", "wechat-v2", "fake", "e1", 100).await;
    order(&s, "EXP-V3", "wechat-v3", "a", "e2", 200).await;
    order(&s, "EXP-ALI-PAID", "alipay", "a", "e3", 300).await;
    order(&s, "EXP-CP", "cloudpay", "a", "e4", 400).await;
    fake.set("EXP-V2", Trade::Unpaid);
    fake.set("EXP-V3", Trade::Unpaid);
    fake.failing_close("EXP-V3", true);
    // Paid at the provider, its notification lost: the close is refused, and the
    // payment is reconciled instead.
    fake.set(
        "EXP-ALI-PAID",
        Trade::Paid {
            fen: 300,
            transaction_id: "2026010199001".into(),
        },
    );

    // Let the orders' one-second lifetime run out (a wait, not a timing assertion).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let expirer = paynotify::expiry::expirer(&s.app);
    let mut closed = expirer.close_expired().await.expect("sweep");
    closed.sort();
    assert_eq!(closed, ["EXP-CP", "EXP-V2"]);
    assert_eq!(s.order("EXP-V2").await.status, status::CLOSED);
    assert_eq!(
        fake.trade("EXP-V2"),
        Some(Trade::Closed),
        "closed at the provider"
    );
    assert_eq!(
        s.order("EXP-CP").await.status,
        status::CLOSED,
        "no close API: local only"
    );
    assert_eq!(
        s.order("EXP-V3").await.status,
        status::UNPAID,
        "close failed: not closed locally"
    );
    let paid = s.order("EXP-ALI-PAID").await;
    assert_eq!(paid.status, status::PAID);
    assert_eq!(balance(&s, "e3").await, Some(300));
    {
        let calls = fake.lock().closes.clone();
        let mut providers: Vec<(String, String)> = calls;
        providers.sort();
        assert_eq!(
            providers,
            [
                ("alipay".to_owned(), "EXP-ALI-PAID".to_owned()),
                ("wechat-v2".to_owned(), "EXP-V2".to_owned()),
                ("wechat-v3".to_owned(), "EXP-V3".to_owned()),
            ]
        );
    }
    let m = metrics(&s).await;
    assert!(
        m.contains(r#"paynotify_provider_closes_total{provider="wechat-v3",outcome="error"}"#),
        "{m}"
    );
    assert!(
        m.contains(r#"paynotify_provider_closes_total{provider="alipay",outcome="paid"}"#),
        "{m}"
    );

    // The failed close is tried again once its lease (expire_check_secs) is over.
    fake.failing_close("EXP-V3", false);
    paynotify_tests::wait_until(30, "the failed close to be retried", || async {
        let closed = expirer.close_expired().await.expect("sweep");
        closed.contains(&"EXP-V3".to_owned()).then_some(())
    })
    .await;
    assert_eq!(s.order("EXP-V3").await.status, status::CLOSED);
    assert_eq!(fake.trade("EXP-V3"), Some(Trade::Closed));
    assert!(
        fake.lock().bad_requests.is_empty(),
        "{:?}",
        fake.lock().bad_requests
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bulk_replay_after_fixing_the_plugin_pays_each_once() {
    let fake = FakeProvider::start().await;
    let keys = tempfile::tempdir().expect("keys dir");
    let plugins = Options::with_plugins(&[]).plugin_as("recharge", "fail-always", None);
    let s = server(&fake, &keys, "", plugins).await;
    for i in 0..3 {
        order(
            &s,
            &format!("FIX-00{i}"),
            "wechat-v2",
            "default",
            &format!("fixer-{i}"),
            50 + i,
        )
        .await;
        let (_, body) = s
            .notify_v2(wechat_v2::paid_xml(
                &format!("FIX-00{i}"),
                50 + i,
                &format!("T-FIX-00{i}"),
            ))
            .await;
        assert_eq!(paynotify_tests::v2_return_code(&body), "FAIL", "{body}");
    }
    // The provider retried one of them: two failed notifications for one order.
    s.notify_v2(wechat_v2::paid_xml("FIX-000", 50, "T-FIX-000"))
        .await;
    let failed = s
        .notifications()
        .await
        .into_iter()
        .filter(|n| n.verdict == Verdict::Failed)
        .count();
    assert_eq!(failed, 4);

    // Not with the broken plugin still in place: every one fails again, nothing changes.
    let (_, v) = s
        .api("POST", "/api/admin/notifications/replay?failed=true", None)
        .await;
    let list = v["replayed"].as_array().cloned().unwrap_or_default();
    assert_eq!(list.len(), 4, "{v}");
    assert!(list.iter().all(|r| r["verdict"] == "failed"), "{v}");

    paynotify_tests::install_plugin(&s.plugins_dir(), "recharge", "recharge", None);
    s.reload_plugins().await;
    let (status_code, v) = s
        .api(
            "POST",
            "/api/admin/notifications/replay?failed=true&type=recharge",
            None,
        )
        .await;
    assert_eq!(status_code, 200, "{v}");
    let list = v["replayed"].as_array().cloned().unwrap_or_default();
    let verdicts: Vec<&str> = list
        .iter()
        .map(|r| r["verdict"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(verdicts, ["paid", "paid", "paid", "duplicate"], "{v}");
    for i in 0..3 {
        assert_eq!(s.order(&format!("FIX-00{i}")).await.status, status::PAID);
        assert_eq!(
            balance(&s, &format!("fixer-{i}")).await,
            Some(50 + i),
            "credited once"
        );
    }
    // Nothing left to re-drive; the balances stay.
    let (_, v) = s
        .api("POST", "/api/admin/notifications/replay?failed=true", None)
        .await;
    assert_eq!(v["replayed"], json!([]), "{v}");
    assert_eq!(balance(&s, "fixer-0").await, Some(50));
    // Bulk replay is for failed notifications only.
    let (code, _) = s.api("POST", "/api/admin/notifications/replay", None).await;
    assert_eq!(code, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_reconcile_json_through_the_binary() {
    let fake = FakeProvider::start().await;
    let keys = tempfile::tempdir().expect("keys dir");
    let s = server(&fake, &keys, "", Options::with_plugins(&["recharge"])).await;
    order(&s, "CLI-PAID", "alipay", "a", "cli-user", 990).await;
    order(&s, "CLI-OPEN", "wechat-v2", "fake", "cli-open", 10).await;
    fake.set(
        "CLI-PAID",
        Trade::Paid {
            fen: 990,
            transaction_id: "2026010100990".into(),
        },
    );

    // The CLI asks the running server (server.listen): point a copy of its config there.
    let text = std::fs::read_to_string(s.dir.path().join("paynotify.toml")).expect("config");
    let text = text.replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"{}\"", s.addr),
    );
    let config = s.dir.path().join("cli.toml");
    std::fs::write(&config, text).expect("write config");
    let out = run(&config, &["reconcile", "--order", "CLI-PAID", "--json"]).await;
    let v: Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
    assert_eq!(v["paid"], 1, "{v}");
    assert_eq!(line(&v, "CLI-PAID")["outcome"], "paid", "{v}");
    assert_eq!(s.order("CLI-PAID").await.status, status::PAID);
    assert_eq!(balance(&s, "cli-user").await, Some(990));

    let out = run(&config, &["reconcile", "--older-than", "0", "--json"]).await;
    let v: Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
    assert_eq!(line(&v, "CLI-OPEN")["outcome"], "unpaid", "{v}");
    assert_eq!(
        (v["paid"].as_i64(), v["unpaid"].as_i64()),
        (Some(0), Some(1)),
        "{v}"
    );

    // The text form names the outcome per order.
    let out = run(&config, &["reconcile", "--older-than", "0"]).await;
    assert!(out.contains("CLI-OPEN") && out.contains("unpaid"), "{out}");
    assert_eq!(
        balance(&s, "cli-user").await,
        Some(990),
        "never credited twice"
    );
}

/// Runs `paynotify --config CONFIG ARGS…` (without the caller's PAYNOTIFY_… variables);
/// its stdout, which it must succeed to give.
async fn run(config: &std::path::Path, args: &[&str]) -> String {
    let mut cmd = tokio::process::Command::new(paynotify_tests::process::paynotify_bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("PAYNOTIFY_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run paynotify");
    assert!(
        out.status.success(),
        "paynotify {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hosts_on_one_database_query_each_order_once() {
    let fake = FakeProvider::start().await;
    let keys = tempfile::tempdir().expect("keys dir");
    let a = server(&fake, &keys, "", Options::with_plugins(&["recharge"])).await;
    let b = server(
        &fake,
        &keys,
        "",
        Options::with_plugins(&["recharge"]).database_url(Some(a.database_url.clone())),
    )
    .await;
    const N: usize = 20;
    for i in 0..N {
        let no = format!("TWO-{i:03}");
        order(
            &a,
            &no,
            "wechat-v2",
            "fake",
            &format!("two-{i}"),
            10 + i as i64,
        )
        .await;
        if i % 2 == 0 {
            fake.set(
                &no,
                Trade::Paid {
                    fen: 10 + i as i64,
                    transaction_id: format!("T-TWO-{i}"),
                },
            );
        } else {
            fake.set(&no, Trade::Unpaid);
        }
    }
    // Both background jobs' runs at once, as two processes would make them.
    let ra = paynotify::reconcile::Reconciler::new(&a.app);
    let rb = paynotify::reconcile::Reconciler::new(&b.app);
    let (x, y) = tokio::join!(ra.run_once(Some(0), false), rb.run_once(Some(0), false));
    let (x, y) = (x.expect("run a"), y.expect("run b"));
    assert_eq!(
        x.orders.len() + y.orders.len(),
        N,
        "each order claimed once"
    );
    assert_eq!(x.paid + y.paid, N / 2);
    let queries = fake.lock().queries.clone();
    for i in 0..N {
        let no = format!("TWO-{i:03}");
        assert_eq!(
            queries.iter().filter(|(_, q)| *q == no).count(),
            1,
            "{no} asked once"
        );
        let expect = (i % 2 == 0).then_some(10 + i as i64);
        assert_eq!(balance(&a, &format!("two-{i}")).await, expect, "{no}");
    }
    // Within the interval nobody asks again.
    let again = ra.run_once(Some(0), false).await.expect("run again");
    assert!(again.orders.is_empty(), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reconciled_payment_whose_handler_failed_is_re_driven_from_the_stored_answer() {
    let fake = FakeProvider::start().await;
    let keys = tempfile::tempdir().expect("keys dir");
    let plugins = Options::with_plugins(&[]).plugin_as("recharge", "fail-always", None);
    let s = server(&fake, &keys, "", plugins).await;
    order(&s, "REDRIVE-V3", "wechat-v3", "a", "redrive-v3", 321).await;
    order(&s, "REDRIVE-ALI", "alipay", "a", "redrive-ali", 654).await;
    fake.set(
        "REDRIVE-V3",
        Trade::Paid {
            fen: 321,
            transaction_id: "4200000321".into(),
        },
    );
    fake.set(
        "REDRIVE-ALI",
        Trade::Paid {
            fen: 654,
            transaction_id: "2026010100654".into(),
        },
    );

    let report = reconcile(&s, "?older_than_secs=0").await;
    assert_eq!(report["errors"], 2, "{report}");
    for no in ["REDRIVE-V3", "REDRIVE-ALI"] {
        let l = line(&report, no);
        assert_eq!(
            (l["outcome"].as_str(), l["verdict"].as_str()),
            (Some("error"), Some("failed")),
            "{l}"
        );
        assert_eq!(s.order(no).await.status, status::UNPAID);
    }

    // Fixed: the stored provider answers are verified again (not re-asked) and pay.
    paynotify_tests::install_plugin(&s.plugins_dir(), "recharge", "recharge", None);
    s.reload_plugins().await;
    let queries_before = fake.lock().queries.len();
    let (_, v) = s
        .api("POST", "/api/admin/notifications/replay?failed=true", None)
        .await;
    let verdicts: Vec<&str> = v["replayed"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| r["verdict"].as_str().unwrap_or("?"))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(verdicts, ["paid", "paid"], "{v}");
    assert_eq!(
        fake.lock().queries.len(),
        queries_before,
        "replay asks no provider"
    );
    assert_eq!(balance(&s, "redrive-v3").await, Some(321));
    assert_eq!(balance(&s, "redrive-ali").await, Some(654));

    // A single replay of the paying answer changes nothing.
    let id = line(&report, "REDRIVE-V3")["notification_id"]
        .as_i64()
        .expect("id");
    let (code, v) = s
        .api(
            "POST",
            &format!("/api/admin/notifications/{id}/replay"),
            None,
        )
        .await;
    assert_eq!((code, v["verdict"].as_str()), (200, Some("paid")), "{v}");
    assert_eq!(balance(&s, "redrive-v3").await, Some(321));

    // A stored answer altered after the fact does not verify on replay.
    let mut record = s
        .app
        .store
        .get_notification(id)
        .await
        .expect("db")
        .expect("stored");
    record.body = String::from_utf8(record.body)
        .expect("utf-8")
        .replace("\"total\":321", "\"total\":1")
        .into_bytes();
    let p = paynotify::replay::replay(&s.app, &record).await;
    assert_eq!(p.verdict, Verdict::Rejected, "{:?}", p.reason);
    assert_eq!(balance(&s, "redrive-v3").await, Some(321));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn closing_on_request_closes_at_the_provider_first_and_never_a_paid_order() {
    let fake = FakeProvider::start().await;
    let keys = tempfile::tempdir().expect("keys dir");
    let s = server(&fake, &keys, "", Options::with_plugins(&["recharge"])).await;
    order(&s, "CLOSE-V2", "wechat-v2", "fake", "c1", 100).await;
    order(&s, "CLOSE-V3-PAID", "wechat-v3", "a", "c2", 200).await;
    order(&s, "CLOSE-ALI-FAIL", "alipay", "a", "c3", 300).await;
    order(&s, "CLOSE-CP", "cloudpay", "a", "c4", 400).await;
    fake.set("CLOSE-V2", Trade::Unpaid);
    // Paid at the provider, its notification lost: the close is refused and the order
    // is reconciled (paid, credited) instead.
    fake.set(
        "CLOSE-V3-PAID",
        Trade::Paid {
            fen: 200,
            transaction_id: "4200000200".into(),
        },
    );
    fake.failing_close("CLOSE-ALI-FAIL", true);

    let (code, v) = s.api("POST", "/api/orders/CLOSE-V2/close", None).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        (&v["closed_at_provider"], &v["already_closed"]),
        (&json!(true), &json!(false)),
        "{v}"
    );
    assert_eq!(s.order("CLOSE-V2").await.status, status::CLOSED);
    let (code, v) = s.api("POST", "/api/orders/CLOSE-V2/close", None).await;
    assert_eq!((code, &v["already_closed"]), (200, &json!(true)), "{v}");

    let (code, v) = s.api("POST", "/api/orders/CLOSE-V3-PAID/close", None).await;
    assert_eq!(code, 409, "{v}");
    assert!(v["error"].as_str().unwrap_or("").contains("paid"), "{v}");
    assert_eq!(s.order("CLOSE-V3-PAID").await.status, status::PAID);
    assert_eq!(balance(&s, "c2").await, Some(200));
    // Paid here now: refused before any provider call.
    let closes_before = fake.lock().closes.len();
    let (code, _) = s.api("POST", "/api/orders/CLOSE-V3-PAID/close", None).await;
    assert_eq!(code, 409);
    assert_eq!(
        fake.lock().closes.len(),
        closes_before,
        "no call for a paid order"
    );

    // The provider's close failed: 502 and still open here (a buyer could still pay it).
    let (code, v) = s
        .api("POST", "/api/orders/CLOSE-ALI-FAIL/close", None)
        .await;
    assert_eq!(code, 502, "{v}");
    assert_eq!(s.order("CLOSE-ALI-FAIL").await.status, status::UNPAID);

    // No close API (CloudPay): closed here only, and said so.
    let (code, v) = s.api("POST", "/api/orders/CLOSE-CP/close", None).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["closed_at_provider"], json!(false), "{v}");
    assert!(v["note"].as_str().unwrap_or("").contains("CloudPay"), "{v}");
    assert_eq!(s.order("CLOSE-CP").await.status, status::CLOSED);

    let (code, _) = s.api("POST", "/api/orders/NO-SUCH-ORDER/close", None).await;
    assert_eq!(code, 404);
    let calls = fake.lock().closes.clone();
    assert_eq!(
        calls,
        [
            ("wechat-v2".to_owned(), "CLOSE-V2".to_owned()),
            ("wechat-v3".to_owned(), "CLOSE-V3-PAID".to_owned()),
            ("alipay".to_owned(), "CLOSE-ALI-FAIL".to_owned()),
        ],
        "one provider close per order that needed one"
    );

    // The same from the command line, through the running server.
    order(&s, "CLOSE-CLI", "wechat-v2", "fake", "c5", 500).await;
    fake.set("CLOSE-CLI", Trade::Unpaid);
    let text = std::fs::read_to_string(s.dir.path().join("paynotify.toml")).expect("config");
    let text = text.replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"{}\"", s.addr),
    );
    let config = s.dir.path().join("cli.toml");
    std::fs::write(&config, text).expect("write config");
    let out = run(&config, &["orders", "close", "CLOSE-CLI"]).await;
    assert_eq!(out, "order CLOSE-CLI closed at the provider and here\n");
    assert_eq!(s.order("CLOSE-CLI").await.status, status::CLOSED);
    let out = run(&config, &["orders", "close", "CLOSE-CLI", "--json"]).await;
    let v: Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(v["already_closed"], json!(true), "{v}");
}

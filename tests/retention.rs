//! `[retention]` against a real server: a stranger's notifications that fail verification
//! are stored with their bodies cut and deleted once old, verified ones (even rejected
//! ones, which may have moved money) are kept whole, and the figures ops alert on show on
//! `/metrics`. On whichever backend `PAYNOTIFY_TEST_DATABASE` selects.

use paynotify::retention::Retention;
use paynotify::time::now_ms;
use paynotify_tests::process::HostProcess;
use paynotify_tests::{
    fresh_database_url, v2_return_code, wait_until, wechat_v2, Options, TestServer,
};
use serde_json::Value;

/// The default `[retention] rejected_body_bytes`.
const CUT_AT: usize = 8192;

/// A payment notification padded with a 20 KiB `attach` (WeChat echoes the merchant's
/// `attach`), signed with `key`: a body well past what any real notification is.
fn padded_paid_xml(out_trade_no: &str, fee: i64, transaction_id: &str, key: &str) -> String {
    let mut fields = wechat_v2::paid(out_trade_no, fee, transaction_id);
    fields.insert("attach".into(), "A".repeat(20 * 1024));
    wechat_v2::xml(&fields, key)
}

/// The last stored notification, as ops read it: `GET /api/admin/notifications/{id}`.
async fn last_notification(s: &TestServer) -> Value {
    let id = s.notifications().await.last().expect("a notification").id;
    let (status, n) = s
        .api("GET", &format!("/api/admin/notifications/{id}"), None)
        .await;
    assert_eq!(status, 200, "{n}");
    n
}

fn body_len(n: &Value) -> usize {
    n["body"].as_str().expect("body").len()
}

#[tokio::test]
async fn a_forged_oversized_notification_is_stored_cut_and_verified_ones_whole() {
    let s = TestServer::start(Options::with_plugins(&["recharge"])).await;

    // A stranger's: signed with a key that is not the merchant's.
    let forged = padded_paid_xml(
        "R-RET-1",
        100,
        "4200009001",
        "not-the-merchant-key-000000000000",
    );
    assert!(forged.len() > 20 * 1024);
    let (status, answer) = s.notify_v2(forged.clone()).await;
    assert_eq!((status, v2_return_code(&answer)), (200, "FAIL"), "{answer}");
    let n = last_notification(&s).await;
    assert_eq!(n["verdict"], "rejected", "{n}");
    assert_eq!(n["truncated"], true, "{}", n["reason"]);
    assert_eq!(body_len(&n), CUT_AT);
    assert!(forged.starts_with(n["body"].as_str().unwrap_or_default()));

    // Replaying it fails verification again and keeps it as it is.
    let id = n["id"].as_i64().expect("id");
    let (status, replayed) = s
        .api(
            "POST",
            &format!("/api/admin/notifications/{id}/replay"),
            None,
        )
        .await;
    assert_eq!(
        (status, replayed["verdict"].as_str()),
        (200, Some("rejected"))
    );
    assert_eq!(body_len(&last_notification(&s).await), CUT_AT);

    // The merchant's own, of the same size: paid, and kept whole.
    s.recharge_order("R-RET-2", "u-ret", 100).await;
    let genuine = padded_paid_xml("R-RET-2", 100, "4200009002", wechat_v2::API_KEY);
    let (_, answer) = s.notify_v2(genuine.clone()).await;
    assert_eq!(v2_return_code(&answer), "SUCCESS", "{answer}");
    let n = last_notification(&s).await;
    assert_eq!(
        (n["verdict"].as_str(), &n["truncated"]),
        (Some("paid"), &Value::Bool(false))
    );
    assert_eq!(n["body"].as_str(), Some(genuine.as_str()));

    // Verified but rejected (a wrong amount: money moved, ops must see all of it): whole.
    s.recharge_order("R-RET-3", "u-ret", 100).await;
    let wrong_amount = padded_paid_xml("R-RET-3", 1, "4200009003", wechat_v2::API_KEY);
    let (_, answer) = s.notify_v2(wrong_amount.clone()).await;
    assert_eq!(v2_return_code(&answer), "FAIL", "{answer}");
    let n = last_notification(&s).await;
    assert_eq!(n["verdict"], "rejected", "{n}");
    assert_eq!(n["out_trade_no"], "R-RET-3");
    assert_eq!(
        (n["truncated"].as_bool(), body_len(&n)),
        (Some(false), wrong_amount.len())
    );
}

#[tokio::test]
async fn a_small_cut_limit_applies_and_a_genuine_notification_below_it_stays_whole() {
    let mut options = Options::with_plugins(&["recharge"]);
    options.extra_config = "[retention]\nrejected_body_bytes = 100\n".into();
    let s = TestServer::start(options).await;
    let forged = wechat_v2::xml(&wechat_v2::paid("R-RET-9", 100, "4200009009"), "wrong-key");
    let (_, answer) = s.notify_v2(forged.clone()).await;
    assert_eq!(v2_return_code(&answer), "FAIL");
    let n = last_notification(&s).await;
    assert_eq!((n["truncated"].as_bool(), body_len(&n)), (Some(true), 100));
    assert_eq!(n["body"].as_str(), Some(&forged[..100]));
}

#[tokio::test]
async fn old_rejected_notifications_are_deleted_and_verified_ones_of_the_same_age_kept() {
    let s = TestServer::start(Options::with_plugins(&["recharge"])).await;
    for i in 0..3 {
        let forged = wechat_v2::xml(
            &wechat_v2::paid("R-OLD-1", 100, &format!("42000091{i}")),
            "wrong-key",
        );
        s.notify_v2(forged).await;
    }
    s.recharge_order("R-OLD-2", "u-old", 100).await;
    s.notify_v2(wechat_v2::paid_xml("R-OLD-2", 100, "4200009102"))
        .await;
    s.recharge_order("R-OLD-3", "u-old", 100).await;
    s.notify_v2(wechat_v2::paid_xml("R-OLD-3", 5, "4200009103"))
        .await;
    let verdicts = |list: &[paynotify::store::NotificationRecord]| {
        list.iter().map(|n| n.verdict.as_str()).collect::<Vec<_>>()
    };
    assert_eq!(
        verdicts(&s.notifications().await),
        ["rejected", "rejected", "rejected", "paid", "rejected"]
    );

    let job = Retention::new(s.app.store.clone(), s.app.config.retention.clone());
    // Nothing is 30 days old yet.
    assert_eq!(job.prune().await.expect("prune"), 0);
    // Everything received so far is older than a cutoff in the future.
    assert_eq!(job.prune_before(now_ms() + 60_000).await.expect("prune"), 3);
    let left = s.notifications().await;
    assert_eq!(verdicts(&left), ["paid", "rejected"]);
    assert_eq!(left[1].out_trade_no.as_deref(), Some("R-OLD-3"));
    assert_eq!(s.order("R-OLD-2").await.status, 1);
    // Run again (or by another host at once): nothing more, nothing fails.
    assert_eq!(job.prune_before(now_ms() + 60_000).await.expect("prune"), 0);

    let metrics = s.metrics_text().await;
    let pruned = metric(&metrics, "paynotify_notifications_pruned_total").expect("pruned counter");
    assert!(pruned >= 3.0, "{metrics}");
}

#[tokio::test]
async fn the_gauges_report_the_database_size_and_the_rejected_rows() {
    let s = TestServer::start(Options::with_plugins(&["recharge"])).await;
    for i in 0..2 {
        let forged = wechat_v2::xml(
            &wechat_v2::paid("R-GAUGE", 100, &format!("42000092{i}")),
            "wrong-key",
        );
        s.notify_v2(forged).await;
    }
    // The job refreshes the gauges at once when it starts (then every minute).
    let job = paynotify::retention::start(&s.app);
    let metrics = wait_until(30, "retention gauges on /metrics", || async {
        let text = s.metrics_text().await;
        (metric(&text, "paynotify_notifications_rejected_rows") == Some(2.0)).then_some(text)
    })
    .await;
    job.abort();
    let bytes = metric(&metrics, "paynotify_database_bytes").expect("database size");
    // A fresh database with the schema and two notifications: more than a few pages. On
    // SQLite it is this test's own file, far from a gigabyte; on PostgreSQL the whole
    // database, which holds every test schema of every run on this machine (they are left
    // behind, see `fresh_postgres_url`), so only a sanity bound.
    let most = if paynotify_tests::test_backend() == "postgres" {
        1e13
    } else {
        1e9
    };
    assert!((16_384.0..most).contains(&bytes), "{bytes}");
    assert!(
        metrics.contains("# TYPE paynotify_database_bytes gauge"),
        "{metrics}"
    );
    assert!(
        metrics.contains("# HELP paynotify_notifications_rejected_rows"),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_real_binary_runs_the_retention_job() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = fresh_database_url(dir.path());
    let host = HostProcess::start("retention", dir.path(), &url, &[], "").await;
    let metrics = wait_until(30, "retention gauges on /metrics", || async {
        let r = host.http.get(host.url("/metrics")).send().await.ok()?;
        let text = r.text().await.ok()?;
        // Both figures of the job's first refresh (set one after the other).
        metric(&text, "paynotify_notifications_rejected_rows").map(|_| text)
    })
    .await;
    assert!(
        metric(&metrics, "paynotify_database_bytes").unwrap_or(0.0) > 0.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "paynotify_notifications_rejected_rows"),
        Some(0.0)
    );
}

/// The value of the unlabelled series `name` in Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|v| v.trim().parse().ok())
}

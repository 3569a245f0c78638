//! Several `paynotify serve` processes on one PostgreSQL database (SPEC §8): the real
//! binary, started twice on the same schema, with copies of each payment sent to both at
//! the same moment, and both task workers polling one queue.
//!
//! This only means something on PostgreSQL, so it runs there whatever
//! `PAYNOTIFY_TEST_DATABASE` says (once per `cargo xtask test`, in its PostgreSQL pass).

use std::collections::{BTreeMap, BTreeSet};

use futures::future::join_all;
use paynotify::store::{status, Verdict};
use paynotify_tests::process::{all_notifications, connect_store, HostProcess};
use paynotify_tests::{
    fresh_postgres_url, postgres_only_test_deferred, v2_return_code, wait_until, wechat_v2,
};
use serde_json::json;

/// Both hosts' task workers poll every 20 ms, so both take part.
const CONFIG: &str = "[tasks]\npoll_ms = 20\n";

/// Two hosts, `a` and `b`, started at the same moment on one fresh schema (so their
/// migrations race too), with `plugins` installed in each.
async fn two_hosts(dir: &tempfile::TempDir, plugins: &[&str]) -> (HostProcess, HostProcess) {
    let url = fresh_postgres_url();
    let plugins: Vec<(&str, &str, Option<&str>)> = plugins.iter().map(|p| (*p, *p, None)).collect();
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&da).expect("dir a");
    std::fs::create_dir_all(&db).expect("dir b");
    tokio::join!(
        HostProcess::start("host a", &da, &url, &plugins, CONFIG),
        HostProcess::start("host b", &db, &url, &plugins, CONFIG),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copies_of_each_payment_sent_to_two_processes_at_once_pay_it_once() {
    if postgres_only_test_deferred("multi_process") {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let (a, b) = two_hosts(&dir, &["recharge"]).await;
    const ORDERS: usize = 20;
    const COPIES: usize = 6;
    // Four orders per user, so a credit applied twice (or lost) shows in the sum.
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for i in 0..ORDERS {
        let (user, fee) = (format!("mp-u{}", i % 5), 100 + i as i64);
        let host = if i % 2 == 0 { &a } else { &b };
        host.create_order(json!({
            "type": "recharge", "total_fee": fee, "user_id": user, "provider": "wechat-v2",
            "out_trade_no": format!("MP{i:04}"), "custom": { "recharge_balance": fee }
        }))
        .await;
        *expected.entry(user).or_default() += fee;
    }
    // Every copy at once: each order's copies alternate between the hosts, each on a
    // connection of its own, with its own nonce as WeChat's retries have.
    let sends = (0..ORDERS).flat_map(|i| {
        let (a, b) = (&a, &b);
        (0..COPIES).map(move |c| {
            let host = if c % 2 == 0 { a } else { b };
            let xml =
                wechat_v2::paid_xml(&format!("MP{i:04}"), 100 + i as i64, &format!("42{i:08}"));
            async move {
                host.try_notify("/notify/wechat-v2", "text/xml", &[], xml)
                    .await
            }
        })
    });
    for (n, answer) in join_all(sends).await.into_iter().enumerate() {
        let (st, body) = answer.unwrap_or_else(|e| panic!("copy {n}: no answer: {e}"));
        assert_eq!(
            (st, v2_return_code(&body)),
            (200, "SUCCESS"),
            "copy {n}: {body}"
        );
    }

    let store = connect_store(&a.database_url).await;
    for i in 0..ORDERS {
        let order = store
            .get_order(&format!("MP{i:04}"))
            .await
            .expect("db")
            .expect("order");
        assert_eq!(order.status, status::PAID, "MP{i:04}");
        assert_eq!(order.handler_status, "succeeded", "MP{i:04}");
        assert_eq!(
            order.transaction_id.as_deref(),
            Some(format!("42{i:08}").as_str())
        );
    }
    for (user, sum) in &expected {
        let doc = store
            .get_document("users", user)
            .await
            .expect("db")
            .expect("user document");
        let doc: serde_json::Value = serde_json::from_str(&doc).expect("JSON");
        assert_eq!(doc["balance"], json!(sum), "users/{user}: {doc}");
    }
    let notifications = all_notifications(&*store).await;
    assert_eq!(notifications.len(), ORDERS * COPIES);
    let mut verdicts: BTreeMap<String, Vec<Verdict>> = BTreeMap::new();
    for n in &notifications {
        let order = n.out_trade_no.clone().expect("order recorded");
        verdicts.entry(order).or_default().push(n.verdict);
    }
    assert_eq!(verdicts.len(), ORDERS);
    for (order, v) in &verdicts {
        let paid = v.iter().filter(|v| **v == Verdict::Paid).count();
        let dup = v.iter().filter(|v| **v == Verdict::Duplicate).count();
        assert_eq!((paid, dup), (1, COPIES - 1), "{order}: {v:?}");
    }
    // Which host paid how many (from their logs; for information, not asserted).
    let by_host = |h: &HostProcess| h.log().matches("handler succeeded").count();
    eprintln!(
        "handler runs: host a {}, host b {}",
        by_host(&a),
        by_host(&b)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_task_workers_run_each_task_once() {
    if postgres_only_test_deferred("multi_process") {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let (a, b) = two_hosts(&dir, &["goods"]).await;
    const ORDERS: usize = 30;
    for i in 0..ORDERS {
        a.create_order(json!({
            "type": "goods", "total_fee": 990, "user_id": format!("mp-g{i}"), "provider": "wechat-v2",
            "out_trade_no": format!("MG{i:04}"), "custom": { "goods_id": "g1" }
        }))
        .await;
    }
    // Each payment twice at once, once to each host; `goods` enqueues one `send-message`
    // task in the payment's transaction.
    let sends = (0..ORDERS).flat_map(|i| {
        [&a, &b].map(|host| {
            let xml = wechat_v2::paid_xml(&format!("MG{i:04}"), 990, &format!("43{i:08}"));
            async move {
                host.try_notify("/notify/wechat-v2", "text/xml", &[], xml)
                    .await
            }
        })
    });
    for (n, answer) in join_all(sends).await.into_iter().enumerate() {
        let (st, body) = answer.unwrap_or_else(|e| panic!("copy {n}: no answer: {e}"));
        assert_eq!(
            (st, v2_return_code(&body)),
            (200, "SUCCESS"),
            "copy {n}: {body}"
        );
    }
    let store = connect_store(&a.database_url).await;
    let tasks = wait_until(60, "every task done", || {
        let store = store.clone();
        async move {
            let tasks = store.list_tasks(None, 500).await.expect("db");
            (tasks.len() >= ORDERS && tasks.iter().all(|t| t.status == "done")).then_some(tasks)
        }
    })
    .await;
    assert_eq!(tasks.len(), ORDERS, "one task per paid order");
    let orders: BTreeSet<String> = tasks
        .iter()
        .map(|t| t.out_trade_no.clone().expect("task has its order"))
        .collect();
    assert_eq!(orders.len(), ORDERS, "no order has two tasks");
    for t in &tasks {
        assert_eq!(t.name, "send-message");
        assert_eq!(
            (t.status.as_str(), t.attempts, t.errors.len()),
            ("done", 1, 0),
            "task {} ran more than once or failed: {:?}",
            t.id,
            t.errors
        );
    }
    let stock = store
        .get_document("goods", "g1")
        .await
        .expect("db")
        .expect("goods/g1");
    let stock: serde_json::Value = serde_json::from_str(&stock).expect("JSON");
    assert_eq!(stock["stock"], json!(-(ORDERS as i64)), "{stock}");
    let done = |h: &HostProcess| h.log().matches("task done").count();
    eprintln!("tasks run: host a {}, host b {}", done(&a), done(&b));
    assert_eq!(done(&a) + done(&b), ORDERS, "a task ran twice");
}

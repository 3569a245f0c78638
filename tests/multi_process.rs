//! Several `paynotify serve` processes on one PostgreSQL database (SPEC §8): the real
//! binary, started twice on the same schema, with copies of each payment sent to both at
//! the same moment, and both task workers polling one queue.
//!
//! This only means something on PostgreSQL, so it runs there whatever
//! `PAYNOTIFY_TEST_DATABASE` says (once per `cargo xtask test`, in its PostgreSQL pass).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    let plugins: Vec<(&str, &str, Option<&str>)> = plugins.iter().map(|p| (*p, *p, None)).collect();
    two_hosts_with(dir, &plugins, CONFIG).await
}

/// [`two_hosts`] with (type, built plugin, manifest) handlers and a config of its own.
async fn two_hosts_with(
    dir: &tempfile::TempDir,
    plugins: &[(&str, &str, Option<&str>)],
    config: &str,
) -> (HostProcess, HostProcess) {
    let url = fresh_postgres_url();
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&da).expect("dir a");
    std::fs::create_dir_all(&db).expect("dir b");
    tokio::join!(
        HostProcess::start("host a", &da, &url, plugins, config),
        HostProcess::start("host b", &db, &url, plugins, config),
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

/// The merchant's backend of `notify-backend`, answering `{"code":0}` to every delivery
/// after `delay`: counts the deliveries it received and those still being answered.
struct SlowBackend {
    port: u16,
    received: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    /// When the last delivery arrived.
    last: Arc<std::sync::Mutex<Instant>>,
}

impl SlowBackend {
    async fn start(delay: Duration) -> SlowBackend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let backend = SlowBackend {
            port: listener.local_addr().expect("addr").port(),
            received: Arc::default(),
            in_flight: Arc::default(),
            last: Arc::new(std::sync::Mutex::new(Instant::now())),
        };
        let (received, in_flight, last) = (
            backend.received.clone(),
            backend.in_flight.clone(),
            backend.last.clone(),
        );
        let app = axum::Router::new().route(
            "/paid",
            axum::routing::post(move || {
                let (received, in_flight, last) =
                    (received.clone(), in_flight.clone(), last.clone());
                async move {
                    received.fetch_add(1, Ordering::SeqCst);
                    *last.lock().expect("lock") = Instant::now();
                    in_flight.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(delay).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    axum::Json(json!({ "code": 0 }))
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.expect("backend serves") });
        backend
    }

    fn manifest(&self) -> String {
        format!(
            "collections = []\nhttp_origins = [\"http://127.0.0.1:{0}\"]\ncrypto = true\n\
             [config]\nbackend_url = \"http://127.0.0.1:{0}/paid\"\n",
            self.port
        )
    }

    /// Whether nothing is being answered and nothing arrived for `quiet`.
    fn quiet_for(&self, quiet: Duration) -> bool {
        self.in_flight.load(Ordering::SeqCst) == 0
            && self.last.lock().expect("lock").elapsed() >= quiet
    }
}

/// Two hosts whose task workers share a lease of `lease_secs` deliver `tasks` paid orders
/// to a backend that takes `delay` to answer, each task exactly once.
async fn each_task_delivered_once(lease_secs: u64, delay: Duration, tasks: usize) {
    let backend = SlowBackend::start(delay).await;
    let manifest = backend.manifest();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = format!("[tasks]\npoll_ms = 20\nlease_secs = {lease_secs}\n");
    let (a, b) = two_hosts_with(
        &dir,
        &[("notify-backend", "notify-backend", Some(manifest.as_str()))],
        &config,
    )
    .await;
    for i in 0..tasks {
        a.create_order(json!({
            "type": "notify-backend", "total_fee": 500, "user_id": format!("mp-n{i}"),
            "provider": "wechat-v2", "out_trade_no": format!("MN{i:04}"), "custom": {}
        }))
        .await;
    }
    // All paid at once, alternately through each host: each payment enqueues one
    // `deliver` task in its transaction, and both workers poll the queue every 20 ms.
    let sends = (0..tasks).map(|i| {
        let host = if i % 2 == 0 { &a } else { &b };
        let xml = wechat_v2::paid_xml(&format!("MN{i:04}"), 500, &format!("44{i:08}"));
        async move {
            host.try_notify("/notify/wechat-v2", "text/xml", &[], xml)
                .await
        }
    });
    for (n, answer) in join_all(sends).await.into_iter().enumerate() {
        let (st, body) = answer.unwrap_or_else(|e| panic!("payment {n}: no answer: {e}"));
        assert_eq!(
            (st, v2_return_code(&body)),
            (200, "SUCCESS"),
            "payment {n}: {body}"
        );
    }
    let store = connect_store(&a.database_url).await;
    let done = wait_until(180, "every task done", || {
        let store = store.clone();
        async move {
            let tasks = store.list_tasks(None, 500).await.expect("db");
            tasks.iter().all(|t| t.status == "done").then_some(tasks)
        }
    })
    .await;
    assert_eq!(done.len(), tasks, "one task per paid order");
    // A worker that lost its claim may still be delivering (or about to): wait until the
    // backend has had nothing to answer for longer than a lease and a delivery take.
    let quiet = Duration::from_secs(lease_secs) + delay * 2;
    wait_until(180, "the backend quiet", || {
        let quiet = backend.quiet_for(quiet);
        async move { quiet.then_some(()) }
    })
    .await;
    let per_host = |h: &HostProcess| h.log().matches("task done").count();
    let abandoned = |h: &HostProcess| h.log().matches("attempt abandoned").count();
    eprintln!(
        "deliveries {} for {tasks} tasks; done by host a {}, host b {}; attempts abandoned {}",
        backend.received.load(Ordering::SeqCst),
        per_host(&a),
        per_host(&b),
        abandoned(&a) + abandoned(&b)
    );
    for t in &done {
        assert_eq!(
            (t.attempts, t.errors.len()),
            (1, 0),
            "task {}: {:?}",
            t.id,
            t.errors
        );
    }
    // Every done task was delivered (and accepted) at least once, so as many deliveries
    // as tasks means each exactly once.
    assert_eq!(
        backend.received.load(Ordering::SeqCst),
        tasks,
        "the backend received a task more than once"
    );
}

/// The case: tasks queue behind a 1 s backend for longer than a 3 s lease; a batch
/// claimed under one lease ran out and the other host delivered its rest again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hosts_deliver_each_queued_task_once_when_the_queue_outlasts_the_lease() {
    if postgres_only_test_deferred("multi_process") {
        return;
    }
    each_task_delivered_once(3, Duration::from_secs(1), 12).await;
}

/// One delivery alone takes longer than the lease: the worker running it keeps its claim
/// for as long as the call runs, so the other host never takes the task over mid-run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hosts_deliver_a_task_once_when_its_run_outlasts_the_lease() {
    if postgres_only_test_deferred("multi_process") {
        return;
    }
    each_task_delivered_once(1, Duration::from_millis(2500), 4).await;
}

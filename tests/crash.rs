//! Crash safety: the real binary killed with SIGKILL at several points and started again
//! on the same database (a SQLite file, or a PostgreSQL schema: the backend under test).
//!
//! After every restart: each notification the host answered with success is reflected
//! (its order paid, once); notifications received but not finished are visible as
//! `received` and a replay completes them exactly once; the provider's resend completes
//! the rest exactly once; no order is ever paid twice and no balance counts a payment
//! twice; every task of a paid order runs to `done`, once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::future::join_all;

use paynotify::store::{status, NotificationFilter, Order, Store, Verdict};
use paynotify_tests::process::{all_notifications, connect_store, HostProcess};
use paynotify_tests::{
    fresh_database_url, fresh_postgres_url, install_plugin, postgres_only_test_deferred,
    v2_return_code, wait_until, wechat_v2,
};
use serde_json::{json, Value};

/// Tasks polled often, and a lease short enough that a task claimed by the killed host
/// is claimed again by its successor within the test.
const CONFIG: &str = "[tasks]\npoll_ms = 20\nlease_secs = 1\n";

/// The `loop` handler, stopped by the host after 3 s, payment calls included (on SQLite
/// those would otherwise be cut at 200 ms).
const SLOW_MANIFEST: &str =
    "collections = []\nhttp_origins = []\ntimeout_ms = 3000\npayment_timeout_ms = 3000\n";

/// What a host answered: status and body; `None` = no answer (killed).
type Answer = Option<(u16, String)>;

/// One order of the test and the notifications sent for it.
#[derive(Clone)]
struct Sent {
    out_trade_no: String,
    user: String,
    fee: i64,
    goods: bool,
    transaction_id: String,
}

async fn balance(store: &dyn Store, user: &str) -> i64 {
    let doc = store.get_document("users", user).await.expect("db");
    doc.map(|d| serde_json::from_str::<Value>(&d).expect("JSON")["balance"].as_i64())
        .unwrap_or(Some(0))
        .expect("balance is an integer")
}

async fn notify_v2(host: &HostProcess, xml: String) -> Option<(u16, String)> {
    host.try_notify("/notify/wechat-v2", "text/xml", &[], xml)
        .await
        .ok()
}

/// Replays every `received` notification through the API; returns how many.
async fn replay_received(host: &HostProcess, store: &dyn Store) -> usize {
    let received = store
        .list_notifications(&NotificationFilter {
            verdict: Some(Verdict::Received),
            limit: 500,
            ..Default::default()
        })
        .await
        .expect("db");
    for n in &received {
        let (st, v) = host
            .api(
                "POST",
                &format!("/api/admin/notifications/{}/replay", n.id),
                None,
            )
            .await;
        assert_eq!(st, 200, "replay {}: {v}", n.id);
        let verdict = v["verdict"].as_str().unwrap_or("");
        assert!(
            ["paid", "duplicate"].contains(&verdict),
            "replay of received notification {} ended `{verdict}`: {v}",
            n.id
        );
    }
    received.len()
}

/// The stored order `out_trade_no` (which must exist).
async fn order_of(store: &dyn Store, out_trade_no: &str) -> Order {
    store
        .get_order(out_trade_no)
        .await
        .expect("db")
        .unwrap_or_else(|| panic!("order {out_trade_no} is missing"))
}

/// Every one of `orders` is paid.
async fn all_paid(store: &dyn Store, orders: &[Sent]) {
    for o in orders {
        let order = order_of(store, &o.out_trade_no).await;
        assert_eq!(order.status, status::PAID, "{}", o.out_trade_no);
    }
}

/// The invariants that hold at any moment, crash or not: no order has two `paid`
/// notifications; every balance is exactly the sum of its user's paid recharge orders;
/// goods stock went down once per paid goods order.
async fn never_paid_twice(store: &dyn Store, orders: &[Sent]) {
    let notifications = all_notifications(store).await;
    let mut paid_verdicts: HashMap<&str, usize> = HashMap::new();
    for n in &notifications {
        if n.verdict == Verdict::Paid {
            *paid_verdicts
                .entry(n.out_trade_no.as_deref().unwrap_or(""))
                .or_default() += 1;
        }
    }
    let mut sums: BTreeMap<&str, i64> = BTreeMap::new();
    let mut goods_paid = 0;
    for o in orders {
        let order = order_of(store, &o.out_trade_no).await;
        let paid = order.status == status::PAID;
        let verdicts = paid_verdicts
            .get(o.out_trade_no.as_str())
            .copied()
            .unwrap_or(0);
        assert_eq!(
            verdicts,
            usize::from(paid),
            "{}: status {}, {verdicts} `paid` notifications",
            o.out_trade_no,
            order.status
        );
        if paid {
            assert_eq!(
                order.transaction_id.as_deref(),
                Some(o.transaction_id.as_str())
            );
            assert_eq!(order.handler_status, "succeeded", "{}", o.out_trade_no);
            if o.goods {
                goods_paid += 1;
            } else {
                *sums.entry(o.user.as_str()).or_default() += o.fee;
            }
        } else {
            sums.entry(o.user.as_str()).or_default();
        }
    }
    for (user, sum) in sums {
        assert_eq!(balance(store, user).await, sum, "users/{user}");
    }
    let stock = store.get_document("goods", "crash-g").await.expect("db");
    let stock = stock
        .map(|d| serde_json::from_str::<Value>(&d).expect("JSON")["stock"].as_i64())
        .unwrap_or(Some(0))
        .expect("stock");
    assert_eq!(stock, -goods_paid, "goods/crash-g");
}

/// Every task belongs to a paid goods order, one each, and all end `done` (a task the
/// killed host had claimed is claimed again when its 1 s lease runs out).
async fn tasks_done_once(store: &Arc<dyn Store>, orders: &[Sent]) {
    let paid_goods = orders.iter().filter(|o| o.goods).count();
    let tasks = wait_until(60, "every task done", || {
        let store = store.clone();
        async move {
            let tasks = store.list_tasks(None, 500).await.expect("db");
            (tasks.len() >= paid_goods && tasks.iter().all(|t| t.status == "done")).then_some(tasks)
        }
    })
    .await;
    let owners: HashSet<&str> = tasks
        .iter()
        .map(|t| t.out_trade_no.as_deref().expect("task order"))
        .collect();
    assert_eq!(tasks.len(), paid_goods, "one task per paid goods order");
    assert_eq!(owners.len(), paid_goods, "no order has two tasks");
    for t in &tasks {
        assert!(t.errors.is_empty(), "task {}: {:?}", t.id, t.errors);
    }
}

/// Rounds of concurrent notifications, each cut short by SIGKILL after a different
/// number of answers (the first almost at once), then restart, replay and resend.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_with_notifications_in_flight_nothing_answered_is_lost_nothing_runs_twice() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = fresh_database_url(dir.path());
    let mut host = HostProcess::start(
        "crash host",
        dir.path(),
        &url,
        &[("recharge", "recharge", None), ("goods", "goods", None)],
        CONFIG,
    )
    .await;
    let store = connect_store(&url).await;
    let mut all_orders: Vec<Sent> = Vec::new();
    const ORDERS: usize = 30;
    const COPIES: usize = 3;
    for (round, kill_after) in [1usize, 10, 30].into_iter().enumerate() {
        let mut orders = Vec::new();
        for i in 0..ORDERS {
            let o = Sent {
                out_trade_no: format!("C{round}-{i:03}"),
                user: format!("crash-u{}", i % 4),
                fee: 100 + (round * ORDERS + i) as i64,
                goods: i % 4 == 3,
                transaction_id: format!("44{round}{i:07}"),
            };
            let custom = if o.goods {
                json!({ "goods_id": "crash-g" })
            } else {
                json!({ "recharge_balance": o.fee })
            };
            host.create_order(json!({
                "type": if o.goods { "goods" } else { "recharge" }, "total_fee": o.fee,
                "user_id": o.user, "provider": "wechat-v2", "out_trade_no": o.out_trade_no,
                "custom": custom
            }))
            .await;
            orders.push(o);
        }
        // Every copy at once, each on its own connection; kill after `kill_after` answers.
        let bodies: Vec<(usize, String)> = (0..COPIES)
            .flat_map(|_| orders.iter().enumerate())
            .map(|(k, o)| {
                (
                    k,
                    wechat_v2::paid_xml(&o.out_trade_no, o.fee, &o.transaction_id),
                )
            })
            .collect();
        let answers: Arc<Mutex<Vec<Answer>>> = Arc::new(Mutex::new(vec![None; bodies.len()]));
        let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut sends = Vec::new();
        for (n, (_, xml)) in bodies.iter().enumerate() {
            let (http, url) = (host.http.clone(), host.url("/notify/wechat-v2"));
            let (xml, answers, answered) = (xml.clone(), answers.clone(), answered.clone());
            sends.push(tokio::spawn(async move {
                let r =
                    paynotify_tests::process::send_notification(&http, &url, "text/xml", &[], xml)
                        .await;
                if let Ok(a) = r {
                    answers.lock().expect("lock")[n] = Some(a);
                    answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }));
        }
        wait_until(60, "answers before the kill", || {
            let n = answered.load(std::sync::atomic::Ordering::SeqCst);
            async move { (n >= kill_after).then_some(()) }
        })
        .await;
        host.kill();
        for s in sends {
            s.await.expect("sender");
        }
        let answers = answers.lock().expect("lock").clone();
        let got = answers.iter().filter(|a| a.is_some()).count();

        host.restart().await;
        all_orders.extend(orders.iter().cloned());
        // What the host said succeeded is in the database.
        for ((k, _), a) in bodies.iter().zip(&answers) {
            if let Some((st, body)) = a {
                if *st == 200 && v2_return_code(body) == "SUCCESS" {
                    let o = &orders[*k];
                    let order = store.get_order(&o.out_trade_no).await.expect("db");
                    assert_eq!(
                        order.map(|o| o.status),
                        Some(status::PAID),
                        "{} was acknowledged but is not paid after the crash",
                        o.out_trade_no
                    );
                }
            }
        }
        // Every answered notification was stored.
        let stored: Vec<Vec<u8>> = all_notifications(&*store)
            .await
            .into_iter()
            .map(|n| n.body)
            .collect();
        for ((_, xml), a) in bodies.iter().zip(&answers) {
            if a.is_some() {
                assert!(
                    stored.iter().any(|b| b == xml.as_bytes()),
                    "an answered notification is not stored"
                );
            }
        }
        never_paid_twice(&*store, &all_orders).await;
        // Received but unfinished: visible, and a replay finishes each exactly once.
        let replayed = replay_received(&host, &*store).await;
        never_paid_twice(&*store, &all_orders).await;
        // The provider resends what was not acknowledged.
        let mut resent = 0;
        for ((k, xml), a) in bodies.iter().zip(&answers) {
            let acknowledged = matches!(a, Some((200, body)) if v2_return_code(body) == "SUCCESS");
            if !acknowledged {
                resent += 1;
                let (st, body) = notify_v2(&host, xml.clone())
                    .await
                    .unwrap_or_else(|| panic!("resend for {}: no answer", orders[*k].out_trade_no));
                assert_eq!((st, v2_return_code(&body)), (200, "SUCCESS"), "{body}");
            }
        }
        all_paid(&*store, &orders).await;
        never_paid_twice(&*store, &all_orders).await;
        eprintln!(
            "round {round}: killed after {kill_after}+ answers: {} sent, {got} answered, \
             {} unanswered, {replayed} replayed from `received`, {resent} resent",
            bodies.len(),
            bodies.len() - got
        );
    }
    let left = store
        .list_notifications(&NotificationFilter {
            verdict: Some(Verdict::Received),
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("db");
    assert!(left.is_empty(), "notifications left `received`");
    tasks_done_once(&store, &all_orders).await;
}

/// SIGKILL while the `loop` handler holds the payment transaction (and, on SQLite, the
/// database's write lock, with other notifications queued behind it). Restarted with a
/// fixed handler for the type, the stuck notification is `received`, its order unpaid;
/// a replay pays it once, a second replay and the provider's resend change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_during_a_slow_handler_the_notification_is_received_and_replayable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = fresh_database_url(dir.path());
    let mut host = HostProcess::start(
        "slow host",
        dir.path(),
        &url,
        &[
            ("recharge", "recharge", None),
            ("slow", "loop", Some(SLOW_MANIFEST)),
        ],
        CONFIG,
    )
    .await;
    let store = connect_store(&url).await;
    host.create_order(json!({
        "type": "slow", "total_fee": 500, "user_id": "slow-u", "provider": "wechat-v2",
        "out_trade_no": "SLOW0001", "custom": { "recharge_balance": 500 }
    }))
    .await;
    let mut others = Vec::new();
    for i in 0..6 {
        let o = Sent {
            out_trade_no: format!("SLOWO{i:03}"),
            user: "slow-v".into(),
            fee: 10 + i,
            goods: false,
            transaction_id: format!("45{i:08}"),
        };
        host.create_order(json!({
            "type": "recharge", "total_fee": o.fee, "user_id": o.user, "provider": "wechat-v2",
            "out_trade_no": o.out_trade_no, "custom": { "recharge_balance": o.fee }
        }))
        .await;
        others.push(o);
    }
    let slow_xml = wechat_v2::paid_xml("SLOW0001", 500, "4500000999");
    let stuck = {
        let (http, url, xml) = (
            host.http.clone(),
            host.url("/notify/wechat-v2"),
            slow_xml.clone(),
        );
        tokio::spawn(async move {
            paynotify_tests::process::send_notification(&http, &url, "text/xml", &[], xml).await
        })
    };
    // Stored as received (committed before the handler runs) ...
    let id = wait_until(30, "the slow notification stored", || {
        let (store, slow_xml) = (store.clone(), slow_xml.clone());
        async move {
            let n = store
                .list_notifications(&NotificationFilter {
                    limit: 10,
                    ..Default::default()
                })
                .await
                .expect("db");
            n.iter()
                .find(|n| n.body == slow_xml.as_bytes())
                .map(|n| n.id)
        }
    })
    .await;
    // ... and give the handler time to start spinning (its limit is 3 s); others arrive
    // meanwhile, queued behind it on SQLite's single writer.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let other_sends: Vec<_> = others
        .iter()
        .map(|o| {
            let (http, url) = (host.http.clone(), host.url("/notify/wechat-v2"));
            let xml = wechat_v2::paid_xml(&o.out_trade_no, o.fee, &o.transaction_id);
            tokio::spawn(async move {
                paynotify_tests::process::send_notification(&http, &url, "text/xml", &[], xml).await
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    host.kill();
    assert!(
        stuck.await.expect("sender").is_err(),
        "the slow notification was answered before the kill"
    );
    for s in other_sends {
        let _ = s.await.expect("sender");
    }

    // The fixed handler is deployed for the type, and the host comes back.
    install_plugin(&host.plugins_dir(), "slow", "recharge", None);
    host.restart().await;
    let n = store
        .get_notification(id)
        .await
        .expect("db")
        .expect("stored");
    assert_eq!(n.verdict, Verdict::Received, "{:?}", n.reason);
    let order = store
        .get_order("SLOW0001")
        .await
        .expect("db")
        .expect("order");
    assert_eq!(
        (order.status, order.handler_status.as_str()),
        (status::UNPAID, "pending")
    );
    assert_eq!(balance(&*store, "slow-u").await, 0);

    let replay = format!("/api/admin/notifications/{id}/replay");
    let (st, v) = host.api("POST", &replay, None).await;
    assert_eq!((st, v["verdict"].as_str()), (200, Some("paid")), "{v}");
    assert_eq!(balance(&*store, "slow-u").await, 500);
    // Replayed again, and resent by the provider: nothing runs twice.
    let (st, v) = host.api("POST", &replay, None).await;
    assert_eq!((st, v["verdict"].as_str()), (200, Some("paid")), "{v}");
    let (st, body) = notify_v2(&host, slow_xml).await.expect("answer");
    assert_eq!((st, v2_return_code(&body)), (200, "SUCCESS"), "{body}");
    assert_eq!(balance(&*store, "slow-u").await, 500);
    let order = store
        .get_order("SLOW0001")
        .await
        .expect("db")
        .expect("order");
    assert_eq!(order.status, status::PAID);
    assert_eq!(order.paid_notification_id, Some(id));

    // The notifications caught in flight: replayed if received, resent by the provider.
    replay_received(&host, &*store).await;
    for o in &others {
        let xml = wechat_v2::paid_xml(&o.out_trade_no, o.fee, &o.transaction_id);
        let (st, body) = notify_v2(&host, xml).await.expect("answer");
        assert_eq!((st, v2_return_code(&body)), (200, "SUCCESS"), "{body}");
    }
    never_paid_twice(&*store, &others).await;
    let sum: i64 = others.iter().map(|o| o.fee).sum();
    assert_eq!(balance(&*store, "slow-v").await, sum);
}

/// Ends every PostgreSQL session named `app` (other tests share the database, so only
/// this host's) and waits until those sessions are gone (the host's pool may already
/// have opened new ones: its task worker polls); returns how many there were.
async fn terminate_sessions(admin: &sqlx::PgPool, app: &str) -> usize {
    // The FILTER runs only on rows the WHERE kept (an `AND` could terminate first).
    let ended: Vec<i32> = sqlx::query_scalar(
        "SELECT COALESCE(array_agg(pid) FILTER (WHERE pg_terminate_backend(pid)), '{}') \
         FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(app)
    .fetch_one(admin)
    .await
    .expect("terminate sessions");
    wait_until(10, "the terminated sessions to end", || async {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)")
                .bind(&ended)
                .fetch_one(admin)
                .await
                .expect("count sessions");
        (left == 0).then_some(())
    })
    .await;
    ended.len()
}

/// PostgreSQL drops every connection of the host (a restart, a failover, an
/// administrator) — the connections it keeps open between notifications included. What
/// it then answers is true: a success was paid once; a failure changed nothing and the
/// provider's resend pays it. Connections that sat idle before the loss are replaced
/// without failing anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_drops_the_hosts_connections_answers_stay_true_and_idle_ones_are_replaced() {
    if postgres_only_test_deferred("crash: postgres connections dropped") {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let app = format!("pn_drop_{}", hex::encode(rand::random::<[u8; 6]>()));
    let url = fresh_postgres_url();
    let host = HostProcess::start(
        "connections host",
        dir.path(),
        &format!("{url}&application_name={app}"),
        &[("recharge", "recharge", None)],
        CONFIG,
    )
    .await;
    let store = connect_store(&url).await;
    let admin_url = std::env::var("PAYNOTIFY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&admin_url)
        .await
        .expect("admin connection");
    const ROUND: usize = 8;
    let orders: Vec<Sent> = (0..3 * ROUND + 1)
        .map(|i| Sent {
            out_trade_no: format!("PGD{i:03}"),
            user: format!("drop-u{}", i % 3),
            fee: 100 + i as i64,
            goods: false,
            transaction_id: format!("46{i:08}"),
        })
        .collect();
    for o in &orders {
        host.create_order(json!({
            "type": "recharge", "total_fee": o.fee, "user_id": o.user,
            "provider": "wechat-v2", "out_trade_no": o.out_trade_no,
            "custom": { "recharge_balance": o.fee }
        }))
        .await;
    }
    let xml = |o: &Sent| wechat_v2::paid_xml(&o.out_trade_no, o.fee, &o.transaction_id);
    let success = |a: &Answer| matches!(a, Some((200, body)) if v2_return_code(body) == "SUCCESS");
    // Warm: the host now keeps connections open.
    let first = notify_v2(&host, xml(&orders[0])).await;
    assert!(success(&first), "first notification: {first:?}");

    // 1. Lost while fresh (used a moment ago, so not re-checked before a statement):
    //    each answer is true, and resending what failed pays it.
    assert!(
        terminate_sessions(&admin, &app).await > 0,
        "the host had no session to end"
    );
    let round = &orders[1..=ROUND];
    let answers = join_all(round.iter().map(|o| notify_v2(&host, xml(o)))).await;
    for (o, answer) in round.iter().zip(&answers) {
        let order = order_of(&*store, &o.out_trade_no).await;
        if success(answer) {
            assert_eq!(
                order.status,
                status::PAID,
                "{} answered success: {answer:?}",
                o.out_trade_no
            );
            continue;
        }
        // A failure answer changed nothing (this round sends each order once).
        assert_eq!(
            order.status,
            status::UNPAID,
            "{} answered failure: {answer:?}",
            o.out_trade_no
        );
        let mut resent = None;
        for _ in 0..20 {
            resent = notify_v2(&host, xml(o)).await;
            if success(&resent) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        assert!(
            success(&resent),
            "{}: resend never succeeded: {resent:?}",
            o.out_trade_no
        );
    }

    // 2. Lost while idle (over a second): replaced before use, nothing fails — twice,
    //    the second time with notifications arriving one at a time.
    for (k, concurrent) in [(2, true), (3, false)] {
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        assert!(
            terminate_sessions(&admin, &app).await > 0,
            "the host had no session to end"
        );
        let round = &orders[(k - 1) * ROUND + 1..=k * ROUND];
        let answers = if concurrent {
            join_all(round.iter().map(|o| notify_v2(&host, xml(o)))).await
        } else {
            let mut answers = Vec::new();
            for o in round {
                answers.push(notify_v2(&host, xml(o)).await);
            }
            answers
        };
        for (o, answer) in round.iter().zip(&answers) {
            assert!(
                success(answer),
                "{} after idle connections were lost: {answer:?}\n{}",
                o.out_trade_no,
                host.log()
            );
        }
    }

    // Every order paid, once; every balance exact.
    all_paid(&*store, &orders).await;
    never_paid_twice(&*store, &orders).await;
}

//! Soak: two `paynotify serve` processes on one PostgreSQL database, thousands of
//! notifications over a few hundred orders, across WeChat Pay v2, Alipay and CloudPay:
//! every payment delivered several times at once to both processes on separate
//! connections (30 % of all notifications are such duplicates), mixed with forged
//! (wrong key), tampered (changed after signing) and wrong-amount ones; a handler that
//! always fails for some orders; and one process killed with SIGKILL mid-run and
//! restarted. At the end, from the database: every valid order paid exactly once, every
//! balance the sum of its recharges, nothing changed by a bad notification, every
//! answered notification stored, no task lost or duplicated.
//!
//! CI size: ~2,000 notifications over 200 orders. `PAYNOTIFY_SOAK_SCALE=10` (or
//! `cargo xtask soak 10`) multiplies both. Runs on PostgreSQL whatever
//! `PAYNOTIFY_TEST_DATABASE` says (once per `cargo xtask test`, in its PostgreSQL pass).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::StreamExt;
use paynotify::store::{status, Verdict};
use paynotify_tests::process::{all_notifications, connect_store, send_notification, HostProcess};
use paynotify_tests::{
    alipay, cloudpay, fresh_postgres_url, postgres_only_test_deferred, v2_return_code, wait_until,
    wechat_v2,
};
use rand::seq::SliceRandom;
use rand::Rng;
use rsa::pkcs8::EncodePublicKey;
use rsa::RsaPrivateKey;
use serde_json::{json, Value};

/// Orders and notifications per unit of `PAYNOTIFY_SOAK_SCALE`.
const ORDERS: usize = 200;
/// Per order: the payment 4 times at once (1 + 3 duplicates: 30 % of all sends) and 6
/// bad ones (2 forged, 2 tampered, 2 wrong-amount) at random moments.
const COPIES: usize = 4;
const BAD_EACH: usize = 2;
/// Jobs (a burst of copies, or one bad notification) in flight at once.
const IN_FLIGHT: usize = 24;

const CLOUDPAY_SUCCESS: &str = r#"{"errcode":0,"errmsg":"SUCCESS"}"#;

/// Tasks polled often; a lease short enough that tasks the killed host had claimed are
/// claimed again within the test.
const HOST_CONFIG: &str = "[tasks]\npoll_ms = 20\nlease_secs = 2\n";

/// Alipay keys: the account's, and a stranger's (forgeries).
fn alipay_keys() -> &'static [RsaPrivateKey; 2] {
    static KEYS: OnceLock<[RsaPrivateKey; 2]> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut rng = rand::thread_rng();
        [(); 2].map(|_| RsaPrivateKey::new(&mut rng, 2048).expect("RSA key"))
    })
}

fn accounts_config() -> String {
    let der = alipay_keys()[0]
        .to_public_key()
        .to_public_key_der()
        .expect("DER");
    let alipay_pub = base64::engine::general_purpose::STANDARD.encode(der.as_bytes());
    format!(
        "[[accounts]]\nprovider = \"cloudpay\"\nname = \"a\"\nsub_mch_id = \"{}\"\nsecret = \"{}\"\n\n\
         [[accounts]]\nprovider = \"alipay\"\nname = \"a\"\napp_id = \"{}\"\nseller_id = \"{}\"\nalipay_public_key = \"{alipay_pub}\"\n\n{HOST_CONFIG}",
        cloudpay::SUB_MCH_ID_A,
        cloudpay::SECRET_A,
        alipay::APP_ID_A,
        alipay::SELLER_ID_A,
    )
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Provider {
    WechatV2,
    Alipay,
    Cloudpay,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, PartialOrd, Ord)]
enum Kind {
    Valid,
    Forged,
    Tampered,
    WrongAmount,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum OrderType {
    Recharge,
    Goods,
    /// `fail-always`: its payment is always rolled back.
    Flaky,
}

struct Order {
    out_trade_no: String,
    provider: Provider,
    order_type: OrderType,
    user: String,
    goods_id: String,
    fee: i64,
    transaction_id: String,
}

/// One notification as sent.
struct Sent {
    order: usize,
    kind: Kind,
    body: String,
    /// CloudPay: the body the relay signed, when it is not `body` (tampered after signing).
    signed: Option<String>,
    /// Which host (0 or 1) it goes to.
    host: usize,
}

/// What came back: `None` = no answer (connection refused or cut by the kill).
type Answer = Option<(u16, String)>;

fn yuan(fen: i64) -> String {
    format!("{}.{:02}", fen / 100, fen % 100)
}

/// A notification for `o` of `kind`, as its provider would send it (body only; CloudPay's
/// signature headers are made when it is sent, its timestamp having to be fresh, over the
/// second value when it is given: the body before it was tampered with).
fn notification(o: &Order, kind: Kind) -> (String, Option<String>) {
    let (fee, tx, key_ok) = match kind {
        Kind::Valid | Kind::Tampered => (o.fee, o.transaction_id.clone(), true),
        Kind::Forged => (o.fee, format!("F{}", o.transaction_id), false),
        Kind::WrongAmount => (o.fee - 1, format!("W{}", o.transaction_id), true),
    };
    // Tampering: a valid notification whose transaction id is changed after signing,
    // so that, were it accepted, the order would record the wrong payment.
    let tampered_tx = format!("X{}", o.transaction_id);
    match o.provider {
        Provider::WechatV2 => {
            let key = if key_ok {
                wechat_v2::API_KEY
            } else {
                "not-the-merchant-key-000000000000"
            };
            let xml = wechat_v2::xml(&wechat_v2::paid(&o.out_trade_no, fee, &tx), key);
            if kind == Kind::Tampered {
                let t = xml.replace(
                    &format!("<transaction_id><![CDATA[{tx}]]>"),
                    &format!("<transaction_id><![CDATA[{tampered_tx}]]>"),
                );
                assert_ne!(t, xml, "tampering changed nothing");
                (t, None)
            } else {
                (xml, None)
            }
        }
        Provider::Alipay => {
            let f = alipay::paid(alipay::APP_ID_A, &o.out_trade_no, &yuan(fee), &tx);
            let key = &alipay_keys()[usize::from(!key_ok)];
            let form = alipay::body(&f, key);
            if kind == Kind::Tampered {
                let t = form.replace(
                    &format!("trade_no={tx}"),
                    &format!("trade_no={tampered_tx}"),
                );
                assert_ne!(t, form, "tampering changed nothing");
                (t, None)
            } else {
                (form, None)
            }
        }
        Provider::Cloudpay => {
            let ev = cloudpay::event(cloudpay::SUB_MCH_ID_A, &o.out_trade_no, fee, &tx, "SUCCESS")
                .to_string();
            if kind == Kind::Tampered {
                let t = ev.replace(&format!("\"{tx}\""), &format!("\"{tampered_tx}\""));
                assert_ne!(t, ev, "tampering changed nothing");
                (t, Some(ev))
            } else {
                (ev, None)
            }
        }
    }
}

/// Sends one notification to `base` (a host's URL); CloudPay relays sign at send time,
/// forgeries with another account's secret.
async fn deliver(
    http: &reqwest::Client,
    base: &str,
    o: &Order,
    kind: Kind,
    (body, signed): &(String, Option<String>),
) -> Answer {
    let (path, ct, headers) = match o.provider {
        Provider::WechatV2 => ("/notify/wechat-v2", "text/xml", Vec::new()),
        Provider::Alipay => (
            "/notify/alipay",
            "application/x-www-form-urlencoded; charset=utf-8",
            Vec::new(),
        ),
        Provider::Cloudpay => {
            let secret = if kind == Kind::Forged {
                cloudpay::SECRET_B
            } else {
                cloudpay::SECRET_A
            };
            (
                "/notify/cloudpay",
                "application/json",
                cloudpay::headers(
                    secret,
                    paynotify_tests::wechat_v3::now(),
                    signed.as_deref().unwrap_or(body),
                ),
            )
        }
    };
    send_notification(http, &format!("{base}{path}"), ct, &headers, body.clone())
        .await
        .ok()
}

/// Whether an answer is the provider's success answer.
fn success(p: Provider, a: &Answer) -> bool {
    match a {
        Some((200, body)) => match p {
            Provider::WechatV2 => v2_return_code(body) == "SUCCESS",
            Provider::Alipay => body == "success",
            Provider::Cloudpay => body == CLOUDPAY_SUCCESS,
        },
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_two_hosts_one_killed_mid_run() {
    if postgres_only_test_deferred("soak") {
        return;
    }
    let scale: usize = std::env::var("PAYNOTIFY_SOAK_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|s| *s > 0)
        .unwrap_or(1);
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let url = fresh_postgres_url();
    let plugins = [
        ("recharge", "recharge", None),
        ("goods", "goods", None),
        // The failing type: writes users/{user} and enqueues a task, then fails.
        ("flaky", "fail-always", None),
    ];
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&da).expect("dir");
    std::fs::create_dir_all(&db).expect("dir");
    let config = accounts_config();
    let (a, b) = tokio::join!(
        HostProcess::start("soak host a", &da, &url, &plugins, &config),
        HostProcess::start("soak host b", &db, &url, &plugins, &config),
    );
    let store = connect_store(&url).await;

    // Orders: half WeChat v2, 30 % CloudPay, 20 % Alipay; 70 % recharge, 20 % goods, 10 %
    // flaky; four recharges per user on average, so sums catch a double credit.
    let n_orders = ORDERS * scale;
    let users = (n_orders / 5).max(1);
    let orders: Arc<Vec<Order>> = Arc::new(
        (0..n_orders)
            .map(|i| Order {
                out_trade_no: format!("SK{i:06}"),
                provider: match i % 10 {
                    0..=4 => Provider::WechatV2,
                    5..=7 => Provider::Cloudpay,
                    _ => Provider::Alipay,
                },
                // (At most 400 goods orders: the task listing stops at 500.)
                order_type: match i % 10 {
                    3 | 8 if i < 2000 => OrderType::Goods,
                    6 => OrderType::Flaky,
                    _ => OrderType::Recharge,
                },
                user: format!("soak-u{}", (i / 3) % users),
                goods_id: format!("soak-g{}", i % 5),
                fee: 100 + (i as i64 * 37) % 900,
                transaction_id: format!("T{i:09}"),
            })
            .collect(),
    );
    futures::stream::iter(orders.iter().enumerate())
        .for_each_concurrent(16, |(i, o)| {
            let host = if i % 2 == 0 { &a } else { &b };
            let (provider, account) = match o.provider {
                Provider::WechatV2 => ("wechat-v2", "default"),
                Provider::Alipay => ("alipay", "a"),
                Provider::Cloudpay => ("cloudpay", "a"),
            };
            let (order_type, custom) = match o.order_type {
                OrderType::Recharge => ("recharge", json!({ "recharge_balance": o.fee })),
                OrderType::Goods => ("goods", json!({ "goods_id": o.goods_id })),
                OrderType::Flaky => ("flaky", json!({})),
            };
            async move {
                host.create_order(json!({
                    "type": order_type, "total_fee": o.fee, "user_id": o.user,
                    "provider": provider, "account": account,
                    "out_trade_no": o.out_trade_no, "custom": custom
                }))
                .await;
            }
        })
        .await;

    // Every notification, built up front (each body unique: nonces), in jobs: a burst of
    // an order's valid copies at once, alternating hosts, or one bad notification.
    let mut sent: Vec<Sent> = Vec::new();
    let mut jobs: Vec<Vec<usize>> = Vec::new();
    let mut rng = rand::thread_rng();
    for (i, o) in orders.iter().enumerate() {
        let first = rng.gen_range(0..2);
        let burst: Vec<usize> = (0..COPIES)
            .map(|c| {
                let (body, signed) = notification(o, Kind::Valid);
                sent.push(Sent {
                    order: i,
                    kind: Kind::Valid,
                    body,
                    signed,
                    host: (first + c) % 2,
                });
                sent.len() - 1
            })
            .collect();
        jobs.push(burst);
        for kind in [Kind::Forged, Kind::Tampered, Kind::WrongAmount] {
            for _ in 0..BAD_EACH {
                let (body, signed) = notification(o, kind);
                sent.push(Sent {
                    order: i,
                    kind,
                    body,
                    signed,
                    host: rng.gen_range(0..2),
                });
                jobs.push(vec![sent.len() - 1]);
            }
        }
    }
    jobs.shuffle(&mut rng);
    let sent = Arc::new(sent);
    let built = started.elapsed();

    // The run: IN_FLIGHT jobs at once; host b is killed when 40 % of the jobs are done,
    // and started again at once (on a new port: sends to the old one find nobody).
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client");
    let urls = Arc::new([RwLock::new(a.url("")), RwLock::new(b.url(""))]);
    let answers: Arc<Mutex<Vec<Answer>>> = Arc::new(Mutex::new(vec![None; sent.len()]));
    let done = Arc::new(AtomicUsize::new(0));
    let n_jobs = jobs.len();
    let killer = {
        let (done, urls) = (done.clone(), urls.clone());
        let mut b = b;
        tokio::spawn(async move {
            wait_until(600, "40 % of the jobs done", || {
                let n = done.load(Ordering::SeqCst);
                async move { (n * 10 >= n_jobs * 4).then_some(()) }
            })
            .await;
            b.kill();
            let at = done.load(Ordering::SeqCst);
            b.restart().await;
            *urls[1].write().expect("lock") = b.url("");
            (b, at)
        })
    };
    let run_started = Instant::now();
    futures::stream::iter(jobs)
        .for_each_concurrent(IN_FLIGHT, |job| {
            let (http, urls, sent, orders, answers, done) = (
                http.clone(),
                urls.clone(),
                sent.clone(),
                orders.clone(),
                answers.clone(),
                done.clone(),
            );
            async move {
                let sends = job.iter().map(|&k| {
                    let s = &sent[k];
                    let base = urls[s.host].read().expect("lock").clone();
                    let (http, orders) = (&http, &orders);
                    async move {
                        (
                            k,
                            deliver(
                                http,
                                &base,
                                &orders[s.order],
                                s.kind,
                                &(s.body.clone(), s.signed.clone()),
                            )
                            .await,
                        )
                    }
                });
                for (k, a) in futures::future::join_all(sends).await {
                    answers.lock().expect("lock")[k] = a;
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        })
        .await;
    let run_time = run_started.elapsed();
    let (b, killed_at) = killer.await.expect("killer");
    let answers = answers.lock().expect("lock").clone();

    // What the hosts answered, before anyone retries anything.
    let mut unexpected = Vec::new();
    for (s, a) in sent.iter().zip(&answers) {
        let o = &orders[s.order];
        let ok = success(o.provider, a);
        match (s.kind, o.order_type, a) {
            (_, _, None) => {}
            (Kind::Valid, OrderType::Flaky, _)
            | (Kind::Forged | Kind::Tampered | Kind::WrongAmount, _, _) => {
                if ok {
                    unexpected.push(format!(
                        "{} {:?} acknowledged: {a:?}",
                        o.out_trade_no, s.kind
                    ));
                }
            }
            (Kind::Valid, _, _) => {
                if !ok {
                    unexpected.push(format!(
                        "{} valid copy not acknowledged: {a:?}",
                        o.out_trade_no
                    ));
                }
            }
        }
    }

    // Ops replay what a crash left `received`; then the providers resend, once more, every
    // payment no copy of which was acknowledged (as a new delivery: new nonce).
    let received: Vec<_> = all_notifications(&*store)
        .await
        .into_iter()
        .filter(|n| n.verdict == Verdict::Received)
        .collect();
    for n in &received {
        let (st, v) = a
            .api(
                "POST",
                &format!("/api/admin/notifications/{}/replay", n.id),
                None,
            )
            .await;
        assert_eq!(st, 200, "replay {}: {v}", n.id);
    }
    let mut acknowledged = vec![false; orders.len()];
    for (s, a) in sent.iter().zip(&answers) {
        if s.kind == Kind::Valid && success(orders[s.order].provider, a) {
            acknowledged[s.order] = true;
        }
    }
    let mut resent = Vec::new();
    for (i, o) in orders.iter().enumerate() {
        if !acknowledged[i] {
            let n = notification(o, Kind::Valid);
            let host = if i % 2 == 0 { &a } else { &b };
            let answer = deliver(&host.http, &host.url(""), o, Kind::Valid, &n).await;
            let want = o.order_type != OrderType::Flaky;
            assert_eq!(
                success(o.provider, &answer),
                want,
                "{} resent: {answer:?}",
                o.out_trade_no
            );
            resent.push(n.0);
        }
    }

    // ---- From the database ----
    let rows = all_notifications(&*store).await;
    let mut by_body: HashMap<&[u8], &paynotify::store::NotificationRecord> = HashMap::new();
    for r in &rows {
        assert!(
            by_body.insert(r.body.as_slice(), r).is_none(),
            "notification {} stored twice",
            r.id
        );
    }
    // Every notification answered is stored; one unanswered may be missing; nothing
    // stored that was not sent.
    let mut stored_unanswered = 0;
    let mut missing_unanswered = 0;
    let mut throttled = 0;
    let mut kinds: HashMap<i64, (Kind, usize)> = HashMap::new();
    for (k, (s, a)) in sent.iter().zip(&answers).enumerate() {
        match (by_body.get(s.body.as_bytes()), a) {
            (Some(r), _) => {
                kinds.insert(r.id, (s.kind, s.order));
                if a.is_none() {
                    stored_unanswered += 1;
                }
            }
            // Forgeries past the per-address limit (`server.max_rejections_per_minute`):
            // refused with 429 and, by design, not stored.
            (None, Some((429, _))) if matches!(s.kind, Kind::Forged | Kind::Tampered) => {
                throttled += 1
            }
            (None, Some(answer)) => {
                panic!("notification {k} was answered {answer:?} but is not stored")
            }
            (None, None) => missing_unanswered += 1,
        }
    }
    for body in &resent {
        let r = by_body
            .get(body.as_bytes())
            .expect("a resent notification is stored");
        let order = orders
            .iter()
            .position(|o| r.out_trade_no.as_deref() == Some(o.out_trade_no.as_str()))
            .expect("its order");
        kinds.insert(r.id, (Kind::Valid, order));
    }
    assert_eq!(
        kinds.len(),
        rows.len(),
        "a stored notification was never sent"
    );

    // Verdicts: bad ones rejected; per valid order one `paid`, the rest duplicates;
    // flaky ones failed; none left `received`.
    let mut verdicts: BTreeMap<(usize, Kind), Vec<Verdict>> = BTreeMap::new();
    for r in &rows {
        let (kind, order) = kinds[&r.id];
        verdicts.entry((order, kind)).or_default().push(r.verdict);
        assert_ne!(
            r.verdict,
            Verdict::Received,
            "notification {} left received",
            r.id
        );
        if kind != Kind::Valid {
            assert_eq!(
                r.verdict,
                Verdict::Rejected,
                "{kind:?} notification {}: {:?}",
                r.id,
                r.reason
            );
        }
    }
    let mut count = BTreeMap::<&str, usize>::new();
    for r in &rows {
        *count.entry(r.verdict.as_str()).or_default() += 1;
    }
    let mut sums: BTreeMap<&str, i64> = BTreeMap::new();
    let mut stock: BTreeMap<&str, i64> = BTreeMap::new();
    let mut goods_orders = 0;
    for (i, o) in orders.iter().enumerate() {
        let v = verdicts.get(&(i, Kind::Valid)).cloned().unwrap_or_default();
        let order = store
            .get_order(&o.out_trade_no)
            .await
            .expect("db")
            .expect("order");
        if o.order_type == OrderType::Flaky {
            sums.entry(o.user.as_str()).or_default();
            assert!(
                v.iter().all(|v| *v == Verdict::Failed),
                "{}: {v:?}",
                o.out_trade_no
            );
            assert_eq!(
                (order.status, order.handler_status.as_str()),
                (status::UNPAID, "failed"),
                "{}",
                o.out_trade_no
            );
            continue;
        }
        let paid = v.iter().filter(|v| **v == Verdict::Paid).count();
        let others = v
            .iter()
            .filter(|v| **v != Verdict::Paid && **v != Verdict::Duplicate)
            .count();
        assert_eq!((paid, others), (1, 0), "{}: {v:?}", o.out_trade_no);
        assert_eq!(order.status, status::PAID, "{}", o.out_trade_no);
        assert_eq!(order.handler_status, "succeeded", "{}", o.out_trade_no);
        assert_eq!(
            order.transaction_id.as_deref(),
            Some(o.transaction_id.as_str()),
            "{}: paid by the wrong notification",
            o.out_trade_no
        );
        let payer = order.paid_notification_id.expect("paid by a notification");
        assert_eq!(
            kinds.get(&payer).map(|k| k.0),
            Some(Kind::Valid),
            "{}",
            o.out_trade_no
        );
        match o.order_type {
            OrderType::Recharge => *sums.entry(o.user.as_str()).or_default() += o.fee,
            OrderType::Goods => {
                goods_orders += 1;
                *stock.entry(o.goods_id.as_str()).or_default() -= 1;
            }
            OrderType::Flaky => {}
        }
    }
    // Balances: exactly the sum of each user's recharges; the flaky handler's writes
    // (balance + 1, a marker field) were all rolled back.
    for (user, sum) in &sums {
        let doc = store.get_document("users", user).await.expect("db");
        let doc: Option<Value> = doc.map(|d| serde_json::from_str(&d).expect("JSON"));
        let want = (*sum != 0).then(|| json!({ "balance": sum }));
        assert_eq!(doc, want, "users/{user}");
    }
    for (goods, want) in &stock {
        let doc = store
            .get_document("goods", goods)
            .await
            .expect("db")
            .expect("goods");
        let doc: Value = serde_json::from_str(&doc).expect("JSON");
        assert_eq!(doc["stock"], json!(want), "goods/{goods}");
    }
    // Tasks: one per goods order, each done once; none from the flaky handler.
    let tasks = wait_until(120, "every task done", || {
        let store = store.clone();
        async move {
            let tasks = store.list_tasks(None, 500).await.expect("db");
            (tasks.len() >= goods_orders && tasks.iter().all(|t| t.status == "done"))
                .then_some(tasks)
        }
    })
    .await;
    let mut per_order: HashMap<&str, usize> = HashMap::new();
    for t in &tasks {
        assert_eq!(
            (t.plugin.as_str(), t.name.as_str()),
            ("goods", "send-message")
        );
        assert_eq!(
            (t.attempts, t.errors.len()),
            (1, 0),
            "task {}: {:?}",
            t.id,
            t.errors
        );
        *per_order
            .entry(t.out_trade_no.as_deref().expect("order"))
            .or_default() += 1;
    }
    assert_eq!(tasks.len(), goods_orders, "tasks lost or duplicated");
    assert!(
        per_order.values().all(|n| *n == 1),
        "an order has two tasks"
    );

    let answered = answers.iter().filter(|a| a.is_some()).count();
    let acknowledged_n = sent
        .iter()
        .zip(&answers)
        .filter(|(s, a)| success(orders[s.order].provider, a))
        .count();
    eprintln!(
        "soak (scale {scale}): {} orders, {} notifications sent ({} valid, {} duplicates of them, \
         {} forged, {} tampered, {} wrong-amount) in {} jobs, {IN_FLIGHT} in flight, to 2 hosts\n\
         host b killed after {killed_at}/{n_jobs} jobs and restarted\n\
         answered {answered}, acknowledged {acknowledged_n}, unanswered {} ({stored_unanswered} of them stored, \
         {missing_unanswered} never stored); forgeries refused unstored (429) {throttled}; \
         replayed from `received` {}; resent {}\n\
         stored {} notifications: {:?}\n\
         tasks {} done; run {:.1} s ({:.0} notifications/s); total {:.1} s (building {:.1} s)",
        orders.len(),
        sent.len(),
        sent.iter().filter(|s| s.kind == Kind::Valid).count(),
        sent.iter().filter(|s| s.kind == Kind::Valid).count() - orders.len(),
        sent.iter().filter(|s| s.kind == Kind::Forged).count(),
        sent.iter().filter(|s| s.kind == Kind::Tampered).count(),
        sent.iter().filter(|s| s.kind == Kind::WrongAmount).count(),
        n_jobs,
        sent.len() - answered,
        received.len(),
        resent.len(),
        rows.len(),
        count,
        tasks.len(),
        run_time.as_secs_f64(),
        sent.len() as f64 / run_time.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        built.as_secs_f64(),
    );
    assert!(
        unexpected.is_empty(),
        "{} unexpected answers from live hosts, e.g.:\n{}",
        unexpected.len(),
        unexpected
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    drop(a);
}

//! The store's concurrency guarantees, on whichever backend `PAYNOTIFY_TEST_DATABASE`
//! selects (`sqlite` by default, `postgres`): the same tests hold for both.
//!
//! These use the store directly (`paynotify::store::connect`), with real concurrent
//! transactions on separate connections (PostgreSQL) or the single writer (SQLite).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use paynotify::config::{DatabaseConfig, RetentionConfig};
use paynotify::store::Verdict;
use paynotify::store::{
    self, status, DocError, MarkPaid, NewNotification, NewOrder, NewTask, Store, TaskEnd, Tx,
};
use paynotify::time::now_ms;
use paynotify_tests::{fresh_database_url, test_backend, wechat_v2, Options, TestServer};
use serde_json::{json, Map, Value};

/// A fresh database on the backend under test (the directory holds a SQLite file).
async fn open() -> (Arc<dyn Store>, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = fresh_database_url(dir.path());
    let store = connect(&url).await;
    assert_eq!(store.backend(), test_backend());
    (store, url, dir)
}

async fn connect(url: &str) -> Arc<dyn Store> {
    let config = DatabaseConfig {
        url: url.to_owned(),
        ..DatabaseConfig::default()
    };
    store::connect(&config).await.expect("database opens")
}

async fn document(store: &dyn Store, collection: &str, id: &str) -> Option<Value> {
    let text = store.get_document(collection, id).await.expect("db");
    text.map(|t| serde_json::from_str(&t).expect("document is JSON"))
}

/// What the `db` capability's `set(merge = true)` does: lock, read, merge, write.
async fn merge(tx: &mut dyn Tx, collection: &str, id: &str, fields: Value) {
    let current = tx
        .doc_get_for_update(collection, id)
        .await
        .expect("lock document");
    let mut merged: Map<String, Value> = match current {
        Some(text) => serde_json::from_str(&text).expect("document is a JSON object"),
        None => Map::new(),
    };
    if let Value::Object(f) = fields {
        merged.extend(f);
    }
    tx.doc_put(collection, id, &Value::Object(merged).to_string())
        .await
        .expect("write document");
}

/// An unpaid recharge order of 100 fen for user `u1`.
async fn create_recharge(store: &dyn Store, out_trade_no: &str) {
    store
        .create_order(&NewOrder {
            out_trade_no: out_trade_no.into(),
            order_type: "recharge".into(),
            provider: "wechat-v2".into(),
            account: "default".into(),
            sub_mchid: None,
            total_fee: 100,
            user_id: "u1".into(),
            custom: json!({ "recharge_balance": 100 }),
        })
        .await
        .expect("order");
}

fn task(name: &str, run_at: i64) -> NewTask {
    NewTask {
        plugin: "recharge".into(),
        name: name.into(),
        payload: json!({ "n": name }).to_string(),
        out_trade_no: None,
        provider: None,
        account: None,
        run_at,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_increments_from_twenty_transactions_are_all_kept() {
    let (store, _url, _dir) = open().await;
    let mut handles = Vec::new();
    for delta in 1..=20i64 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let mut tx = store.begin().await.expect("begin");
            let total = tx
                .doc_inc("users", "u1", "balance", delta)
                .await
                .expect("inc");
            // Hold the row a little so the others pile up behind it.
            tokio::time::sleep(Duration::from_millis(5)).await;
            tx.commit().await.expect("commit");
            total
        }));
    }
    let mut totals = Vec::new();
    for h in handles {
        totals.push(h.await.expect("task"));
    }
    assert_eq!(
        document(&*store, "users", "u1").await,
        Some(json!({ "balance": 210 }))
    );
    // Each increment saw the sum of those before it: all running totals differ.
    let distinct: HashSet<i64> = totals.iter().copied().collect();
    assert_eq!(distinct.len(), 20, "running totals {totals:?}");
    assert_eq!(totals.iter().max(), Some(&210));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_merges_keep_both_writers_fields_even_when_the_document_is_absent() {
    let (store, _url, _dir) = open().await;
    {
        let mut tx = store.begin().await.expect("begin");
        tx.doc_put("users", "existing", r#"{"name":"Ann"}"#)
            .await
            .expect("put");
        tx.commit().await.expect("commit");
    }
    for id in ["absent", "existing"] {
        let (read_tx, read_rx) = tokio::sync::oneshot::channel();
        let first = {
            let store = store.clone();
            tokio::spawn(async move {
                let mut tx = store.begin().await.expect("begin");
                let current = tx.doc_get_for_update("users", id).await.expect("lock");
                let _ = read_tx.send(());
                // The second merge starts now and must wait for this one.
                tokio::time::sleep(Duration::from_millis(300)).await;
                let mut merged: Map<String, Value> = current
                    .map(|t| serde_json::from_str(&t).expect("object"))
                    .unwrap_or_default();
                merged.insert("a".into(), json!(1));
                tx.doc_put("users", id, &Value::Object(merged).to_string())
                    .await
                    .expect("put");
                tx.commit().await.expect("commit");
            })
        };
        let second = {
            let store = store.clone();
            tokio::spawn(async move {
                read_rx.await.expect("first merge read");
                let mut tx = store.begin().await.expect("begin");
                merge(&mut *tx, "users", id, json!({ "b": 2 })).await;
                tx.commit().await.expect("commit");
            })
        };
        first.await.expect("first merge");
        second.await.expect("second merge");
        let doc = document(&*store, "users", id)
            .await
            .expect("document exists");
        assert_eq!(doc["a"], json!(1), "{id}: {doc}");
        assert_eq!(doc["b"], json!(2), "{id}: {doc}");
        if id == "existing" {
            assert_eq!(doc["name"], json!("Ann"), "{doc}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_claiming_at_once_never_get_the_same_task() {
    let (store, _url, _dir) = open().await;
    let now = now_ms();
    let mut ids = HashSet::new();
    {
        let mut tx = store.begin().await.expect("begin");
        for i in 0..60 {
            ids.insert(
                tx.enqueue_task(&task(&format!("t{i}"), now - 1000))
                    .await
                    .expect("enqueue"),
            );
        }
        tx.commit().await.expect("commit");
    }
    let mut workers = Vec::new();
    for token in ["worker-a", "worker-b"] {
        let store = store.clone();
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let now = now_ms();
                let batch = store
                    .claim_tasks(token, now, now + 60_000, 4)
                    .await
                    .expect("claim");
                if batch.is_empty() {
                    return mine;
                }
                for t in batch {
                    assert_eq!(t.status, "running");
                    assert!(
                        store
                            .finish_task(t.id, token, &TaskEnd::Done)
                            .await
                            .expect("finish"),
                        "{token} lost task {} it had just claimed",
                        t.id
                    );
                    mine.push(t.id);
                }
            }
        }));
    }
    let mut claimed = Vec::new();
    for w in workers {
        claimed.extend(w.await.expect("worker"));
    }
    let unique: HashSet<i64> = claimed.iter().copied().collect();
    assert_eq!(
        claimed.len(),
        unique.len(),
        "a task was claimed twice: {claimed:?}"
    );
    assert_eq!(unique, ids, "every task claimed once");
    for t in store.list_tasks(None, 500).await.expect("list") {
        assert_eq!(
            (t.status.as_str(), t.attempts),
            ("done", 1),
            "task {}",
            t.id
        );
    }
}

#[tokio::test]
async fn an_expired_lease_is_claimed_again_and_the_old_claim_is_lost() {
    let (store, _url, _dir) = open().await;
    let now = now_ms();
    let id = {
        let mut tx = store.begin().await.expect("begin");
        let id = tx
            .enqueue_task(&task("send", now - 1))
            .await
            .expect("enqueue");
        tx.commit().await.expect("commit");
        id
    };
    let claimed = store
        .claim_tasks("a", now, now + 1000, 10)
        .await
        .expect("claim");
    assert_eq!(claimed.iter().map(|t| t.id).collect::<Vec<_>>(), vec![id]);
    assert!(
        store
            .claim_tasks("b", now + 500, now + 1500, 10)
            .await
            .expect("claim")
            .is_empty(),
        "a leased task was claimed before its lease ran out"
    );
    let reclaimed = store
        .claim_tasks("b", now + 1000, now + 61_000, 10)
        .await
        .expect("claim");
    assert_eq!(reclaimed.iter().map(|t| t.id).collect::<Vec<_>>(), vec![id]);
    assert!(
        !store
            .finish_task(id, "a", &TaskEnd::Done)
            .await
            .expect("finish"),
        "the expired claim still finished the task"
    );
    let retry = TaskEnd::Retry {
        error: "boom 1".into(),
        at: now,
    };
    assert!(store.finish_task(id, "b", &retry).await.expect("finish"));
    let t = store.get_task(id).await.expect("db").expect("task");
    assert_eq!((t.status.as_str(), t.attempts), ("pending", 1));
    assert_eq!(t.errors.len(), 1);
    assert!(t.errors[0].ends_with("boom 1"), "{:?}", t.errors);

    let again = store
        .claim_tasks("c", now + 2000, now + 62_000, 10)
        .await
        .expect("claim");
    assert_eq!(again.len(), 1);
    let dead = TaskEnd::Dead {
        error: "boom 2".into(),
    };
    assert!(store.finish_task(id, "c", &dead).await.expect("finish"));
    let t = store.get_task(id).await.expect("db").expect("task");
    assert_eq!((t.status.as_str(), t.attempts), ("dead", 2));
    assert_eq!(
        t.last_error.as_deref().map(|e| e.ends_with("boom 2")),
        Some(true)
    );
    assert_eq!(t.errors.len(), 2, "{:?}", t.errors);
    assert!(store.retry_task(id).await.expect("retry"));
    let t = store.get_task(id).await.expect("db").expect("task");
    assert_eq!(
        (t.status.as_str(), t.attempts, t.errors.len()),
        ("pending", 0, 2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_transactions_paying_one_order_at_once_mark_it_paid_once() {
    let (store, _url, _dir) = open().await;
    create_recharge(store.as_ref(), "order-1").await;
    let mut payers = Vec::new();
    for n in 0..2 {
        let store = store.clone();
        payers.push(tokio::spawn(async move {
            let notification_id = store
                .insert_notification(&NewNotification {
                    received_at: now_ms(),
                    provider: "wechat-v2".into(),
                    account: None,
                    remote_addr: None,
                    headers: Vec::new(),
                    body: format!("notification {n}").into_bytes(),
                    truncated: false,
                })
                .await
                .expect("notification");
            let mut tx = store.begin().await.expect("begin");
            let order = tx
                .lock_order("order-1")
                .await
                .expect("lock")
                .expect("order exists");
            if order.status != status::UNPAID {
                tx.commit().await.expect("commit");
                return (false, order.status);
            }
            // Hold the order while the other transaction arrives.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let marked = tx
                .mark_paid(&MarkPaid {
                    out_trade_no: "order-1",
                    transaction_id: &format!("tx-{n}"),
                    pay_date: now_ms(),
                    notification_id,
                    original_data: &json!({ "n": n }),
                })
                .await
                .expect("mark paid");
            tx.doc_inc("users", "u1", "balance", 100)
                .await
                .expect("inc");
            tx.commit().await.expect("commit");
            (marked, order.status)
        }));
    }
    let mut outcomes = Vec::new();
    for p in payers {
        outcomes.push(p.await.expect("payer"));
    }
    outcomes.sort();
    // One paid it; the other saw it paid when it got the order's lock.
    assert_eq!(
        outcomes,
        vec![(false, status::PAID), (true, status::UNPAID)]
    );
    assert_eq!(
        document(&*store, "users", "u1").await,
        Some(json!({ "balance": 100 }))
    );
    let order = store
        .get_order("order-1")
        .await
        .expect("db")
        .expect("order");
    assert_eq!(order.status, status::PAID);
}

#[tokio::test]
async fn refused_document_operations_leave_the_transaction_usable() {
    let (store, _url, _dir) = open().await;
    let mut tx = store.begin().await.expect("begin");
    tx.savepoint("n1").await.expect("savepoint");
    tx.doc_insert("users", "u1", r#"{"name":"Ann","score":1.5,"none":null}"#)
        .await
        .expect("insert");
    assert!(matches!(
        tx.doc_insert("users", "u1", r#"{"name":"Bob"}"#).await,
        Err(DocError::Conflict(_))
    ));
    for field in ["name", "score", "none"] {
        assert!(
            matches!(
                tx.doc_inc("users", "u1", field, 1).await,
                Err(DocError::NotANumber(_))
            ),
            "inc of `{field}`"
        );
    }
    assert_eq!(
        tx.doc_inc("users", "u1", "big", i64::MAX)
            .await
            .expect("inc"),
        i64::MAX
    );
    // A sum past 64 bits is refused, and nothing is written.
    let overflow = tx.doc_inc("users", "u1", "big", 1).await;
    assert!(
        matches!(overflow, Err(DocError::NotANumber(_))),
        "{overflow:?}"
    );
    assert_eq!(
        tx.doc_inc("users", "u1", "big", i64::MIN)
            .await
            .expect("inc"),
        -1
    );
    let overflow = tx.doc_inc("users", "u1", "big", i64::MIN).await;
    assert!(
        matches!(overflow, Err(DocError::NotANumber(_))),
        "{overflow:?}"
    );
    assert_eq!(
        tx.doc_inc("users", "u1", "big", i64::MAX)
            .await
            .expect("inc"),
        i64::MAX - 1
    );
    assert_eq!(
        tx.doc_inc("users", "u1", "big", 1).await.expect("inc"),
        i64::MAX
    );
    assert_eq!(
        tx.doc_inc("users", "u1", "visits", 2).await.expect("inc"),
        2
    );
    assert_eq!(
        tx.doc_inc("users", "u1", "visits", -5).await.expect("inc"),
        -3
    );
    // SQLite stores a NUL; PostgreSQL's jsonb refuses it, as an invalid argument.
    match tx.doc_put("users", "nul", r#"{"s":"a\u0000b"}"#).await {
        Ok(()) | Err(DocError::Invalid(_)) => {}
        Err(e) => panic!("NUL in a document: {e}"),
    }
    let doc: Value =
        serde_json::from_str(&tx.doc_get("users", "u1").await.expect("get").expect("doc"))
            .expect("JSON");
    assert_eq!(
        doc,
        json!({ "name": "Ann", "score": 1.5, "none": null, "big": i64::MAX, "visits": -3 })
    );
    tx.release("n1").await.expect("release");
    tx.commit().await.expect("commit");
    assert_eq!(document(&*store, "users", "u1").await, Some(doc));
}

#[tokio::test]
async fn a_rolled_back_savepoint_undoes_only_its_own_writes() {
    let (store, _url, _dir) = open().await;
    let mut tx = store.begin().await.expect("begin");
    tx.doc_inc("users", "kept", "n", 1).await.expect("inc");
    tx.savepoint("n7").await.expect("savepoint");
    tx.doc_inc("users", "undone", "n", 1).await.expect("inc");
    tx.enqueue_task(&task("undone", now_ms()))
        .await
        .expect("enqueue");
    tx.rollback_to("n7").await.expect("rollback to");
    assert!(tx.savepoint("bad-name").await.is_err());
    assert!(tx.savepoint("x; DROP TABLE orders").await.is_err());
    tx.commit().await.expect("commit");
    assert_eq!(
        document(&*store, "users", "kept").await,
        Some(json!({ "n": 1 }))
    );
    assert_eq!(document(&*store, "users", "undone").await, None);
    assert!(store.list_tasks(None, 10).await.expect("tasks").is_empty());

    // A transaction dropped without commit leaves nothing behind, and its connection
    // serves the next one.
    let mut tx = store.begin().await.expect("begin");
    tx.doc_inc("users", "dropped", "n", 1).await.expect("inc");
    drop(tx);
    let mut tx = store.begin().await.expect("begin again");
    assert_eq!(tx.doc_get("users", "dropped").await.expect("get"), None);
    tx.commit().await.expect("commit");
}

#[tokio::test]
async fn query_matches_fields_orders_by_id_and_treats_missing_as_null() {
    let (store, _url, _dir) = open().await;
    let mut tx = store.begin().await.expect("begin");
    for (id, data) in [
        ("u_b", json!({ "city": "x", "vip": true, "level": 2 })),
        ("u_a", json!({ "city": "x", "level": 2.0 })),
        ("u_c", json!({ "city": "y", "vip": null })),
        ("U_d", json!({ "city": "x", "vip": false })),
    ] {
        tx.doc_insert("users", id, &data.to_string())
            .await
            .expect("insert");
    }
    tx.doc_insert("goods", "u_e", &json!({ "city": "x" }).to_string())
        .await
        .expect("insert");
    let ids = |rows: Vec<(String, String)>| {
        rows.into_iter()
            .map(|(id, data)| {
                serde_json::from_str::<Value>(&data).expect("JSON");
                id
            })
            .collect::<Vec<_>>()
    };
    let city_x = vec![("city".to_string(), json!("x"))];
    assert_eq!(
        ids(tx.doc_query("users", &city_x, 100).await.expect("query")),
        ["U_d", "u_a", "u_b"]
    );
    assert_eq!(
        ids(tx.doc_query("users", &city_x, 2).await.expect("query")),
        ["U_d", "u_a"]
    );
    let vip_null = vec![("vip".to_string(), Value::Null)];
    assert_eq!(
        ids(tx.doc_query("users", &vip_null, 100).await.expect("query")),
        ["u_a", "u_c"]
    );
    let two = vec![
        ("city".to_string(), json!("x")),
        ("vip".to_string(), json!(true)),
    ];
    assert_eq!(
        ids(tx.doc_query("users", &two, 100).await.expect("query")),
        ["u_b"]
    );
    let level = vec![("level".to_string(), json!(2))];
    assert_eq!(
        ids(tx.doc_query("users", &level, 100).await.expect("query")),
        ["u_a", "u_b"]
    );
    let nul = vec![("city".to_string(), json!("x\u{0}"))];
    assert!(tx
        .doc_query("users", &nul, 100)
        .await
        .expect("query")
        .is_empty());
    assert!(tx.doc_delete("users", "u_a").await.expect("delete"));
    assert!(!tx.doc_delete("users", "u_a").await.expect("delete"));
    tx.commit().await.expect("commit");
}

#[tokio::test]
async fn a_second_connection_to_the_same_url_sees_the_same_data() {
    let (store, url, _dir) = open().await;
    let mut tx = store.begin().await.expect("begin");
    tx.doc_inc("users", "u1", "n", 5).await.expect("inc");
    tx.commit().await.expect("commit");
    // Migrations are idempotent; a PostgreSQL `schema=` selects the same tables.
    let again = connect(&url).await;
    assert_eq!(
        document(&*again, "users", "u1").await,
        Some(json!({ "n": 5 }))
    );
}

/// Two host processes on one database (SPEC §8): copies of one payment sent to both at
/// the same moment run the handler once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hosts_on_one_database_credit_simultaneous_duplicates_once() {
    let a = TestServer::start(Options::with_plugins(&["recharge"])).await;
    let b = TestServer::start(
        Options::with_plugins(&["recharge"]).database_url(Some(a.database_url.clone())),
    )
    .await;
    assert_eq!(b.database_url, a.database_url);
    a.recharge_order("R000000100", "u100", 700).await;
    let xml = || wechat_v2::paid_xml("R000000100", 700, "4200000100");
    let sends = [&a, &b, &a, &b, &a, &b].map(|s| s.notify_v2(xml()));
    for (status, body) in futures::future::join_all(sends).await {
        assert_eq!(status, 200, "{body}");
        assert_eq!(paynotify_tests::v2_return_code(&body), "SUCCESS", "{body}");
    }
    assert_eq!(
        b.document("users", "u100")
            .await
            .map(|d| d["balance"].clone()),
        Some(json!(700))
    );
    let n = b.notifications().await;
    assert_eq!(n.len(), 6);
    assert_eq!(n.iter().filter(|n| n.verdict == Verdict::Paid).count(), 1);
    assert_eq!(
        n.iter().filter(|n| n.verdict == Verdict::Duplicate).count(),
        5
    );
    assert_eq!(b.order("R000000100").await.status, status::PAID);
}

/// A transaction dropped unfinished (a settle batch whose handler failed, before its
/// rerun) releases its row locks at once, not when its connection is next used: a
/// transaction elsewhere (another store's connections, as another host's) can lock the
/// same orders straight away, and sees none of the dropped one's writes.
#[tokio::test]
async fn a_transaction_dropped_unfinished_releases_its_locks_at_once() {
    let (store, url, _dir) = open().await;
    let other = connect(&url).await;
    let numbers = ["drop-1", "drop-2"];
    for no in numbers {
        create_recharge(store.as_ref(), no).await;
    }
    for round in 0..3 {
        let mut tx = store.begin().await.expect("begin");
        let locked = tx.lock_orders(&numbers).await.expect("lock");
        assert_eq!(locked.len(), 2);
        tx.doc_inc("users", "u1", "balance", 100)
            .await
            .expect("write inside the transaction");
        drop(tx);
        let seen = tokio::time::timeout(Duration::from_secs(10), async {
            let mut tx = other.begin().await.expect("begin elsewhere");
            let locked = tx.lock_orders(&numbers).await.expect("lock elsewhere");
            tx.commit().await.expect("commit");
            locked.len()
        })
        .await
        .unwrap_or_else(|_| panic!("round {round}: the dropped transaction still holds its locks"));
        assert_eq!(seen, 2);
        assert_eq!(document(other.as_ref(), "users", "u1").await, None);
    }
}

/// Stores a raw notification that arrived at `received_at`; returns its id.
async fn store_raw(store: &dyn Store, received_at: i64, body: &[u8], truncated: bool) -> i64 {
    store
        .insert_notification(&NewNotification {
            received_at,
            provider: "wechat-v2".into(),
            account: None,
            remote_addr: Some("192.0.2.1:4000".into()),
            headers: Vec::new(),
            body: body.to_vec(),
            truncated,
        })
        .await
        .expect("notification")
}

/// `[retention]`: when a notification is recorded `rejected` without an order (it never
/// verified), its body is cut in the same statement; nothing else is.
#[tokio::test]
async fn only_notifications_rejected_without_verifying_have_their_bodies_cut() {
    let dir = tempfile::tempdir().expect("temp dir");
    let database = DatabaseConfig {
        url: fresh_database_url(dir.path()),
        ..DatabaseConfig::default()
    };
    let retention = RetentionConfig {
        rejected_body_bytes: 10,
        ..RetentionConfig::default()
    };
    let store = store::connect_with(&database, &retention)
        .await
        .expect("database opens");
    let body = b"<xml>0123456789abcdefghij</xml>".as_slice();
    let now = now_ms();
    let finish = |id, verdict, order: Option<&'static str>| {
        let store = store.clone();
        async move {
            store
                .finish_notification(id, verdict, Some("why"), order, None)
                .await
                .expect("verdict");
            store.get_notification(id).await.expect("db").expect("row")
        }
    };

    let forged = store_raw(store.as_ref(), now, body, false).await;
    let n = finish(forged, Verdict::Rejected, None).await;
    assert_eq!((n.body.as_slice(), n.truncated), (&body[..10], true));

    // Already cut at the size limit on arrival: cut further, still truncated.
    let oversized = store_raw(store.as_ref(), now, body, true).await;
    let n = finish(oversized, Verdict::Rejected, None).await;
    assert_eq!((n.body.as_slice(), n.truncated), (&body[..10], true));

    // Short enough: left as it is, not marked.
    let short = store_raw(store.as_ref(), now, b"<xml/>", false).await;
    let n = finish(short, Verdict::Rejected, None).await;
    assert_eq!(
        (n.body.as_slice(), n.truncated),
        (b"<xml/>".as_slice(), false)
    );

    // Verified (an order number is recorded), then rejected: money may have moved.
    let wrong_amount = store_raw(store.as_ref(), now, body, false).await;
    let n = finish(wrong_amount, Verdict::Rejected, Some("R-1")).await;
    assert_eq!((n.body.as_slice(), n.truncated), (body, false));
    // And one that verified once keeps its body when a later replay rejects it.
    let paid = store_raw(store.as_ref(), now, body, false).await;
    finish(paid, Verdict::Paid, Some("R-2")).await;
    let n = finish(paid, Verdict::Rejected, None).await;
    assert_eq!((n.body.as_slice(), n.truncated), (body, false));
    assert_eq!(n.out_trade_no.as_deref(), Some("R-2"));

    // Other verdicts, even without an order, are never cut.
    for verdict in [Verdict::Failed, Verdict::Ignored, Verdict::RefundPending] {
        let id = store_raw(store.as_ref(), now, body, false).await;
        let n = finish(id, verdict, None).await;
        assert_eq!(
            (n.body.as_slice(), n.truncated),
            (body, false),
            "{verdict:?}"
        );
    }
}

/// `[retention]`: the prune statement deletes only notifications rejected without
/// verifying that arrived before the cutoff, at most `limit` per call; a second process
/// running it at the same time deletes nothing twice and fails on nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pruning_deletes_only_old_notifications_rejected_without_verifying() {
    let (store, url, _dir) = open().await;
    let other = connect(&url).await;
    let now = now_ms();
    let old = now - 40 * 24 * 3600 * 1000;
    let body = b"<xml>junk</xml>".as_slice();
    let mut doomed = Vec::new();
    for _ in 0..7 {
        let id = store_raw(store.as_ref(), old, body, false).await;
        store
            .finish_notification(id, Verdict::Rejected, Some("bad signature"), None, None)
            .await
            .expect("verdict");
        doomed.push(id);
    }
    let mut kept = Vec::new();
    for (verdict, order) in [
        (Verdict::Rejected, Some("R-WRONG-AMOUNT")),
        (Verdict::Paid, Some("R-PAID")),
        (Verdict::Failed, Some("R-FAILED")),
    ] {
        let id = store_raw(store.as_ref(), old, body, false).await;
        store
            .finish_notification(id, verdict, Some("why"), order, None)
            .await
            .expect("verdict");
        kept.push(id);
    }
    // Old but never finished (a crash): stays for replay.
    kept.push(store_raw(store.as_ref(), old, body, false).await);
    // Rejected without verifying, but recent.
    let recent = store_raw(store.as_ref(), now, body, false).await;
    store
        .finish_notification(recent, Verdict::Rejected, Some("bad signature"), None, None)
        .await
        .expect("verdict");
    kept.push(recent);
    assert_eq!(store.count_rejected().await.expect("count"), 9);

    let cutoff = now - 30 * 24 * 3600 * 1000;
    // Two processes at once, two rows per statement each.
    let prune = |s: Arc<dyn Store>| async move {
        let mut total = 0;
        loop {
            let n = s.prune_rejected(cutoff, 2).await.expect("prune");
            assert!(n <= 2, "{n} rows in one statement");
            total += n;
            if n == 0 {
                return total;
            }
        }
    };
    let (a, b) = tokio::join!(
        tokio::spawn(prune(store.clone())),
        tokio::spawn(prune(other.clone()))
    );
    assert_eq!(a.expect("prune") + b.expect("prune"), 7);
    for id in doomed {
        assert!(
            store.get_notification(id).await.expect("db").is_none(),
            "{id} kept"
        );
    }
    for id in &kept {
        assert!(
            store.get_notification(*id).await.expect("db").is_some(),
            "{id} deleted"
        );
    }
    assert_eq!(store.count_rejected().await.expect("count"), 2);
    // A cutoff in the future takes the recent one too, and only it.
    assert_eq!(store.prune_rejected(now + 1, 1000).await.expect("prune"), 1);
    assert!(store.get_notification(recent).await.expect("db").is_none());
    assert!(store.database_bytes().await.expect("size") > 0);
}

/// Marks `out_trade_no` paid (100 fen) in a transaction of its own.
async fn pay_order(store: &dyn Store, out_trade_no: &str) {
    let id = store_raw(store, now_ms(), b"paid", false).await;
    let mut tx = store.begin().await.expect("begin");
    tx.lock_order(out_trade_no).await.expect("lock");
    assert!(tx
        .mark_paid(&MarkPaid {
            out_trade_no,
            transaction_id: "tx-refund",
            pay_date: now_ms(),
            notification_id: id,
            original_data: &json!({}),
        })
        .await
        .expect("mark paid"));
    tx.commit().await.expect("commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refund_requests_at_once_never_reserve_more_than_was_paid() {
    use paynotify::store::payments::{refund_state, NewRefundRequest};
    use paynotify::store::Reservation;
    let (store, _url, _dir) = open().await;
    create_recharge(store.as_ref(), "refund-order").await;
    let reserve = |no: String, amount: i64| {
        let store = store.clone();
        async move {
            let mut tx = store.begin().await.expect("begin");
            let r = tx
                .reserve_refund(&NewRefundRequest {
                    out_trade_no: "refund-order",
                    out_refund_no: &no,
                    amount,
                    reason: None,
                })
                .await
                .expect("reserve");
            // Hold the order while the others arrive.
            tokio::time::sleep(Duration::from_millis(50)).await;
            tx.commit().await.expect("commit");
            r
        }
    };
    // Unpaid: nothing to refund.
    assert_eq!(
        reserve("R-early".into(), 10).await,
        Reservation::NotRefundable(status::UNPAID)
    );
    pay_order(store.as_ref(), "refund-order").await;

    // Five requests of 30 fen at once on a 100-fen order: three fit, two are refused.
    let mut racers = Vec::new();
    for n in 0..5 {
        racers.push(tokio::spawn(reserve(format!("R-{n}"), 30)));
    }
    let mut reserved = 0;
    let mut refused = Vec::new();
    for r in racers {
        match r.await.expect("racer") {
            Reservation::New(req) => {
                assert_eq!(req.state, refund_state::REQUESTED);
                reserved += 1;
            }
            Reservation::TooMuch { remaining } => refused.push(remaining),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((reserved, refused), (3, vec![10, 10]));

    // The same number again is the same request; with another amount it is refused.
    assert!(matches!(
        reserve("R-0".into(), 30).await,
        Reservation::Existing(_) | Reservation::TooMuch { .. }
    ));
    let requests = store
        .payments()
        .refund_requests("refund-order")
        .await
        .expect("list");
    let first = requests
        .iter()
        .find(|r| r.state == refund_state::REQUESTED)
        .expect("a reserved request")
        .out_refund_no
        .clone();
    assert!(matches!(
        reserve(first.clone(), 30).await,
        Reservation::Existing(_)
    ));
    assert!(matches!(
        reserve(first.clone(), 31).await,
        Reservation::OtherAmount(_)
    ));

    // A refused one frees its amount: 10 + 30 fit again.
    store
        .payments()
        .finish_refund_request(
            "refund-order",
            &first,
            refund_state::FAILED,
            None,
            Some("NOTENOUGH"),
        )
        .await
        .expect("finish");
    assert!(matches!(
        reserve("R-after".into(), 40).await,
        Reservation::New(_)
    ));
    assert!(matches!(
        reserve("R-more".into(), 1).await,
        Reservation::TooMuch { remaining: 0 }
    ));
    // The failed request taken up again no longer fits.
    assert!(matches!(
        reserve(first, 30).await,
        Reservation::TooMuch { remaining: 0 }
    ));
    assert_eq!(
        reserve("R-ghost".into(), 1).await,
        Reservation::TooMuch { remaining: 0 }
    );
}

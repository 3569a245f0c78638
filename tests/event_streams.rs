//! Order-event streams (`GET /api/orders/{no}/events`) as bounded resources: at most
//! `[server] max_event_streams` open in the host and `max_event_streams_per_address` from
//! one client address, beyond which 429 and nothing opened; a closed stream gives its
//! slot back; and behind the shared poller every stream still sees its order change
//! when a signed notification pays it.
//!
//! Each test serves its own test server's app a second time, with the caps it needs
//! (the test config appends accounts after `[server]`, so it cannot set server keys).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use paynotify::store::{status, NewOrder};
use paynotify_tests::{
    v2_return_code, wait_until, wechat_v2, EventStream, Options, TestServer, TOKEN,
};
use serde_json::{json, Value};

/// A listener on `s`'s app with these caps; its address.
async fn with_caps(s: &TestServer, max: usize, per_address: usize) -> SocketAddr {
    let mut app = s.app.clone();
    let mut config = (*app.config).clone();
    config.server.max_event_streams = max;
    config.server.max_event_streams_per_address = per_address;
    app.config = Arc::new(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(paynotify::http::serve(
        app,
        listener,
        std::future::pending(),
    ));
    addr
}

/// A client whose connections come from `from` (any 127.0.0.0/8 address reaches the
/// server on 127.0.0.1: a second client address on one machine).
fn client_from(from: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::from(from))
        .build()
        .expect("client")
}

async fn recharge(s: &TestServer, no: &str, fen: i64) {
    s.recharge_order(no, &format!("u-{no}"), fen).await;
}

/// Pays `no` with a signed WeChat v2 notification; asserts WeChat is told SUCCESS.
async fn pay(s: &TestServer, no: &str, fen: i64) {
    let (st, body) = s
        .notify_v2(wechat_v2::paid_xml(no, fen, &format!("42{no}")))
        .await;
    assert_eq!((st, v2_return_code(&body)), (200, "SUCCESS"), "{body}");
}

/// Opens a stream; its status and, when 200, the stream, else the JSON body.
async fn open(
    http: &reqwest::Client,
    addr: SocketAddr,
    no: &str,
) -> Result<EventStream, (u16, Value)> {
    let response = http
        .get(format!("http://{addr}/api/orders/{no}/events"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("events call");
    let code = response.status().as_u16();
    if code != 200 {
        let body = response.json().await.unwrap_or(Value::Null);
        return Err((code, body));
    }
    Ok(EventStream::new(response))
}

/// Opens a stream and reads its first event (the order as it is now); panics unless 200.
async fn watch(http: &reqwest::Client, addr: SocketAddr, no: &str) -> EventStream {
    let mut stream = open(http, addr, no)
        .await
        .unwrap_or_else(|(code, body)| panic!("{no}: {code} {body}"));
    let first = stream.next().await.expect("the current order at once");
    assert_eq!(first["out_trade_no"], no);
    stream
}

/// `paynotify_event_streams_refused_total{reason}` on `addr` (0 before the first).
async fn refused(addr: SocketAddr, reason: &str) -> f64 {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics text");
    let series = format!("paynotify_event_streams_refused_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series)?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn beyond_the_global_cap_a_stream_is_refused_with_429_until_one_closes() {
    let s = TestServer::start(Options::with_plugins(&["recharge"])).await;
    for no in ["G000000001", "G000000002", "G000000003"] {
        recharge(&s, no, 100).await;
    }
    // Per address well above the global cap: only the global one can refuse.
    let addr = with_caps(&s, 2, 10).await;
    let http = reqwest::Client::new();
    let before = refused(addr, "global").await;

    let first = watch(&http, addr, "G000000001").await;
    let second = watch(&http, addr, "G000000001").await;
    let (code, body) = open(&http, addr, "G000000002")
        .await
        .err()
        .expect("a third stream is refused");
    assert_eq!(code, 429, "{body}");
    let message = body["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("server.max_event_streams") && message.contains('2'),
        "{body}"
    );
    // From another address as well: the cap is the host's.
    let (code, _) = open(&client_from([127, 0, 0, 2]), addr, "G000000003")
        .await
        .err()
        .expect("refused from another address too");
    assert_eq!(code, 429);
    assert!(refused(addr, "global").await >= before + 2.0);

    // The client leaves: its slot is free again.
    drop(first);
    let mut third = wait_until(30, "a freed slot", || async {
        open(&http, addr, "G000000002").await.ok()
    })
    .await;
    assert_eq!(
        third.next().await.expect("first event")["out_trade_no"],
        "G000000002"
    );
    // An unknown order is 404 and gives its slot back: with one slot free, one 404
    // after another.
    drop(third);
    drop(second);
    wait_until(30, "a free slot", || async {
        open(&http, addr, "NOPE000001")
            .await
            .err()
            .filter(|(code, _)| *code == 404)
    })
    .await;
    for _ in 0..3 {
        let (code, body) = open(&http, addr, "NOPE000001")
            .await
            .err()
            .expect("refused");
        assert_eq!(code, 404, "{body}");
    }
}

#[tokio::test]
async fn beyond_the_per_address_cap_a_stream_is_refused_while_another_address_may_open() {
    let s = TestServer::start(Options::with_plugins(&["recharge"])).await;
    recharge(&s, "A000000001", 100).await;
    let addr = with_caps(&s, 100, 2).await;
    let here = client_from([127, 0, 0, 1]);
    let before = refused(addr, "per_address").await;

    let one = watch(&here, addr, "A000000001").await;
    let _two = watch(&here, addr, "A000000001").await;
    let (code, body) = open(&here, addr, "A000000001")
        .await
        .err()
        .expect("a third stream from one address is refused");
    assert_eq!(code, 429, "{body}");
    let message = body["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("server.max_event_streams_per_address") && message.contains("127.0.0.1"),
        "{body}"
    );
    assert!(refused(addr, "per_address").await > before);

    // Another client address still may, up to its own cap.
    let there = client_from([127, 0, 0, 2]);
    let _three = watch(&there, addr, "A000000001").await;
    let _four = watch(&there, addr, "A000000001").await;
    assert_eq!(
        open(&there, addr, "A000000001").await.err().map(|e| e.0),
        Some(429)
    );

    drop(one);
    let _five = wait_until(30, "the first address's freed slot", || async {
        open(&here, addr, "A000000001").await.ok()
    })
    .await;
}

#[tokio::test]
async fn every_stream_sees_the_payment_of_its_order_and_only_that() {
    let s = TestServer::start(Options::with_plugins(&["recharge"])).await;
    recharge(&s, "P000000001", 9).await;
    recharge(&s, "P000000002", 7).await;
    let addr = with_caps(&s, 50, 50).await;
    let http = reqwest::Client::new();
    // Three streams on one order (one entry of the poller), one on another.
    let mut on_paid: Vec<EventStream> = Vec::new();
    for _ in 0..3 {
        on_paid.push(watch(&http, addr, "P000000001").await);
    }
    let mut other = watch(&http, addr, "P000000002").await;

    pay(&s, "P000000001", 9).await;
    for stream in &mut on_paid {
        let paid = stream.next().await.expect("the payment");
        assert_eq!(paid["out_trade_no"], "P000000001");
        assert_eq!(paid["status"], status::PAID, "{paid}");
        assert_eq!(paid["handler_status"], "succeeded");
        assert_eq!(paid["handler_result"], json!({ "balance": 9 }));
    }
    // A stream opened after the payment starts from the paid order.
    let Ok(mut late) = open(&http, addr, "P000000001").await else {
        panic!("the late stream opens");
    };
    assert_eq!(late.next().await.expect("first")["status"], status::PAID);

    // The other order's stream got nothing but keep-alives meanwhile; its own payment
    // is its next event.
    pay(&s, "P000000002", 7).await;
    let paid = other.next().await.expect("the other payment");
    assert_eq!(
        (paid["out_trade_no"].clone(), paid["status"].clone()),
        (json!("P000000002"), json!(status::PAID))
    );
}

#[tokio::test]
async fn the_batched_order_reads_return_each_existing_order_across_chunks() {
    let s = TestServer::start(Options::with_plugins(&["recharge"])).await;
    let store = s.app.store.clone();
    // More than one statement's worth (512), and not a power of two.
    let n = 700;
    for i in 0..n {
        store
            .create_order(&NewOrder {
                out_trade_no: format!("B{i:09}"),
                order_type: "recharge".into(),
                provider: "wechat-v2".into(),
                account: "default".into(),
                sub_mchid: None,
                total_fee: i + 1,
                user_id: "bulk".into(),
                custom: json!({ "i": i }),
            })
            .await
            .expect("order");
    }
    let mut asked: Vec<String> = (0..n).map(|i| format!("B{i:09}")).collect();
    asked.push("NOPE000001".into());
    asked.push("B0000\u{0}0001".into());
    let mut got = store.get_orders(&asked).await.expect("read");
    got.sort_by(|a, b| a.out_trade_no.cmp(&b.out_trade_no));
    assert_eq!(got.len(), n as usize);
    for (i, order) in got.iter().enumerate() {
        assert_eq!(order.out_trade_no, format!("B{i:09}"));
        assert_eq!(order.total_fee, i as i64 + 1);
        assert_eq!(
            Some(order),
            store
                .get_order(&order.out_trade_no)
                .await
                .expect("one")
                .as_ref()
        );
    }
    assert!(store.get_orders(&[]).await.expect("none").is_empty());

    // The poller's cheap read: one version per existing order, which changes with it.
    let before = store.order_versions(&asked).await.expect("versions");
    assert_eq!(before.len(), n as usize);
    assert!(!before.contains_key("NOPE000001"));
    assert!(store.close_order("B000000007").await.expect("close"));
    let after = store.order_versions(&asked).await.expect("versions");
    for (no, version) in &before {
        assert_eq!(
            after.get(no) != Some(version),
            no == "B000000007",
            "{no}: {version} then {:?}",
            after.get(no)
        );
    }
    assert!(store.order_versions(&[]).await.expect("none").is_empty());
}

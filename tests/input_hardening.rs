//! Hostile input at the HTTP level: content types a provider never sends, slow and
//! oversized request heads, slow bodies, and clients that hang up while their
//! notification is being processed.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use paynotify::store::{status, Verdict};
use paynotify_tests::{
    alipay, cloudpay, v2_return_code, wait_until, wechat_v2, Options, TestServer,
};
use rsa::pkcs8::EncodePublicKey;
use rsa::RsaPrivateKey;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn alipay_key() -> &'static RsaPrivateKey {
    static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
    KEY.get_or_init(|| RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("RSA key"))
}

/// WeChat v2 (default), CloudPay and Alipay accounts; `recharge`, and `loop` as type
/// `slow` stopped after 2 s.
async fn server() -> TestServer {
    let der = alipay_key()
        .to_public_key()
        .to_public_key_der()
        .expect("public key DER");
    let alipay_pub = base64::engine::general_purpose::STANDARD.encode(der.as_bytes());
    let mut options = Options::with_plugins(&["recharge"]).plugin_as(
        "slow",
        "loop",
        Some("collections = []\nhttp_origins = []\ntimeout_ms = 2000\npayment_timeout_ms = 2000\n"),
    );
    options.extra_config = format!(
        "[[accounts]]\nprovider = \"cloudpay\"\nname = \"a\"\nsub_mch_id = \"{}\"\nsecret = \"{}\"\n\n\
         [[accounts]]\nprovider = \"alipay\"\nname = \"a\"\napp_id = \"{}\"\nalipay_public_key = \"{alipay_pub}\"\n",
        cloudpay::SUB_MCH_ID_A,
        cloudpay::SECRET_A,
        alipay::APP_ID_A,
    );
    TestServer::start(options).await
}

/// A second listener on the same app with short limits, so the tests do not wait long.
async fn short_limits(s: &TestServer) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let limits = paynotify::http::Limits {
        header_read_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(1),
        max_headers: 16,
        max_head_bytes: 8192,
    };
    tokio::spawn(paynotify::http::serve_with_limits(
        s.app.clone(),
        listener,
        std::future::pending(),
        limits,
    ));
    addr
}

/// Reads until the server closes the connection (or resets it); what it sent, if anything.
async fn read_to_close(conn: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), async {
        let mut buf = [0u8; 4096];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server kept the connection open for 60 s");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn a_content_type_the_provider_never_sends_is_refused_with_415_and_stored() {
    let s = server().await;
    s.recharge_order("CT00000001", "ct-u1", 300).await;
    let xml = wechat_v2::paid_xml("CT00000001", 300, "4600000001");
    let before = s.notifications().await.len();

    // WeChat v2: XML only.
    for ct in ["application/json", "text/plain", "", "text/xml-ish"] {
        let (st, body) = s.notify("/notify/wechat-v2", ct, xml.clone()).await;
        assert_eq!((st, v2_return_code(&body)), (415, "FAIL"), "`{ct}`: {body}");
    }
    let resp = s
        .http
        .post(s.url("/notify/wechat-v2"))
        .header("content-type", "text/xml")
        .header("content-type", "application/json")
        .body(xml.clone())
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 415, "two Content-Type headers");
    assert_eq!(s.order("CT00000001").await.status, status::UNPAID);

    // CloudPay: JSON only; its failure body.
    let ev = cloudpay::event(
        cloudpay::SUB_MCH_ID_A,
        "CT00000002",
        100,
        "4600000002",
        "SUCCESS",
    )
    .to_string();
    let h = cloudpay::headers(cloudpay::SECRET_A, paynotify_tests::wechat_v3::now(), &ev);
    let (st, body) = s
        .notify_with_headers("/notify/cloudpay", "text/plain", &h, ev.clone())
        .await;
    assert_eq!(st, 415, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON failure body");
    assert_eq!(v["errcode"], 1, "{body}");

    // Alipay: a form only; its failure body.
    let f = alipay::paid(alipay::APP_ID_A, "CT00000003", "1.00", "2026000003");
    let form = alipay::body(&f, alipay_key());
    let (st, body) = s.notify("/notify/alipay", "application/json", form).await;
    assert_eq!((st, body.as_str()), (415, "failure"));

    let stored = s.notifications().await;
    let refused = &stored[before..];
    assert_eq!(refused.len(), 7, "every refused notification is stored");
    for n in refused {
        assert_eq!(n.verdict, Verdict::Rejected, "{n:?}");
        let reason = n.reason.as_deref().unwrap_or("");
        assert!(reason.contains("unsupported content type"), "{reason}");
    }

    // What the providers do send is accepted: v2 with `application/xml`, or no
    // Content-Type at all.
    let resp = s
        .http
        .post(s.url("/notify/wechat-v2"))
        .body(xml.clone())
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(v2_return_code(&resp.text().await.expect("body")), "SUCCESS");
    let (st, body) = s
        .notify("/notify/wechat-v2", "application/xml; charset=utf-8", xml)
        .await;
    assert_eq!((st, v2_return_code(&body)), (200, "SUCCESS"));
    let order = s.order("CT00000001").await;
    assert_eq!(order.status, status::PAID);
    assert_eq!(
        s.document("users", "ct-u1").await,
        Some(json!({ "balance": 300 }))
    );
}

#[tokio::test]
async fn a_client_sending_its_headers_slowly_or_not_at_all_is_cut_off() {
    let s = server().await;
    let addr = short_limits(&s).await;
    // Half a request head, then nothing.
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"POST /notify/wechat-v2 HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n")
        .await
        .expect("write");
    // Connected, and silent.
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    read_to_close(&mut slow).await;
    read_to_close(&mut silent).await;
    assert!(s.notifications().await.is_empty());
}

#[tokio::test]
async fn too_many_or_too_large_headers_are_refused() {
    let s = server().await;
    let addr = short_limits(&s).await;
    let xml = wechat_v2::paid_xml("HD00000001", 100, "4600000010");
    let many: String = (0..40).map(|i| format!("X-Pad-{i}: {i}\r\n")).collect();
    let large = format!("X-Pad: {}\r\n", "a".repeat(20_000));
    for (name, extra) in [("40 headers", many), ("a 20 kB header", large)] {
        let mut conn = TcpStream::connect(addr).await.expect("connect");
        let req = format!(
            "POST /notify/wechat-v2 HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n{extra}Content-Length: {}\r\n\r\n{xml}",
            xml.len()
        );
        // The server may answer and close before it has read everything.
        let _ = conn.write_all(req.as_bytes()).await;
        let answer = read_to_close(&mut conn).await;
        assert!(
            answer.starts_with("HTTP/1.1 431"),
            "{name}: {}",
            answer
                .lines()
                .next()
                .unwrap_or("(closed without an answer)")
        );
    }
    assert!(s.notifications().await.is_empty());
}

#[tokio::test]
async fn a_body_that_never_finishes_gets_408_and_is_not_processed() {
    let s = server().await;
    let addr = short_limits(&s).await;
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    conn.write_all(
        b"POST /notify/wechat-v2 HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\nContent-Length: 1000\r\n\r\n<xml><appid>",
    )
    .await
    .expect("write");
    let answer = read_to_close(&mut conn).await;
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "{}",
        answer
            .lines()
            .next()
            .unwrap_or("(closed without an answer)")
    );
    assert!(s.notifications().await.is_empty());
}

/// A notification whose answer is not ready in time (408 from the request timeout), or
/// whose provider gives up waiting and hangs up, is still processed to its verdict (here
/// `failed`, from the `loop` handler's 2 s time limit), not left `received` half-way.
///
/// (Several runtime threads: the spinning handler occupies the one it runs on for its
/// whole time limit, and the request timeout needs another to fire.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_timed_out_or_abandoned_request_still_finishes_processing() {
    let s = server().await;
    let short = short_limits(&s).await;
    let mut ids = Vec::new();
    for (n, addr) in [(1, short), (2, s.addr)] {
        let no = format!("HANG00000{n}");
        s.create_order(json!({
            "type": "slow", "total_fee": 100, "user_id": "hang-u", "provider": "wechat-v2",
            "out_trade_no": no, "custom": {}
        }))
        .await;
        let xml = wechat_v2::paid_xml(&no, 100, &format!("460000002{n}"));
        let mut conn = TcpStream::connect(addr).await.expect("connect");
        let req = format!(
            "POST /notify/wechat-v2 HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{xml}",
            xml.len()
        );
        conn.write_all(req.as_bytes()).await.expect("write");
        let id = wait_until(30, "the notification stored", || async {
            s.notifications()
                .await
                .iter()
                .find(|r| r.body == xml.as_bytes())
                .map(|r| r.id)
        })
        .await;
        if addr == short {
            // The handler runs for 2 s; the request times out after 1.
            let answer = read_to_close(&mut conn).await;
            assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        } else {
            // The handler is running; the provider hangs up.
            drop(conn);
        }
        ids.push((no, id));
    }
    for (no, id) in ids {
        let n = wait_until(30, "the notification's verdict", || async {
            let n = s.app.store.get_notification(id).await.expect("db")?;
            (n.verdict != Verdict::Received).then_some(n)
        })
        .await;
        assert_eq!(n.verdict, Verdict::Failed, "{no}: {:?}", n.reason);
        assert_eq!(s.order(&no).await.status, status::UNPAID);
    }
}

/// The order is unpaid, its handler never ran, its user has no document.
async fn untouched(s: &TestServer, out_trade_no: &str, user: &str) {
    let order = s.order(out_trade_no).await;
    assert_eq!(order.status, status::UNPAID, "{out_trade_no}");
    assert_eq!(order.handler_status, "pending", "{out_trade_no}");
    assert_eq!(order.transaction_id, None, "{out_trade_no}");
    assert_eq!(s.document("users", user).await, None, "users/{user}");
}

/// The last `n` stored notifications of `provider`, oldest first: rejected, each reason
/// containing its text.
async fn last_rejected(s: &TestServer, provider: &str, reasons: &[&str]) {
    let all = s.notifications_of(provider).await;
    assert!(all.len() >= reasons.len(), "{all:?}");
    for (n, want) in all[all.len() - reasons.len()..].iter().zip(reasons) {
        let why = n.reason.as_deref().unwrap_or("");
        assert_eq!(n.verdict, Verdict::Rejected, "{why}");
        assert!(why.contains(want), "reason `{why}` lacks `{want}`");
    }
}

/// Issue 20 item 2, WeChat Pay v2: one genuine notification whose `attach` carries
/// `&out_trade_no=…&total_fee=…` is re-split by an attacker into a notification paying
/// another order. Same signed string, same signature; refused, and the other order
/// stays unpaid. The genuine one is refused too: its signature does not say which
/// fields were signed.
#[tokio::test]
async fn wechat_v2_one_signature_re_split_into_other_fields_pays_nothing() {
    let s = server().await;
    s.recharge_order("RS00000001", "rs-u1", 100).await;
    s.recharge_order("RS00000002", "rs-u2", 9900).await;
    let (genuine, forged) = wechat_v2::resplit(
        &wechat_v2::paid("RS00000001", 100, "4200000901"),
        "attach",
        &[
            ("mch_id", wechat_v2::MCH_ID),
            ("out_trade_no", "RS00000002"),
            ("result_code", "SUCCESS"),
            ("return_code", "SUCCESS"),
            ("total_fee", "9900"),
            ("transaction_id", "4200000902"),
        ],
    );
    let forged_xml = wechat_v2::xml(&forged, wechat_v2::API_KEY);
    let (st, body) = s.notify_v2(forged_xml).await;
    assert_eq!((st, v2_return_code(&body)), (200, "FAIL"), "{body}");
    untouched(&s, "RS00000002", "rs-u2").await;
    let (st, body) = s
        .notify_v2(wechat_v2::xml(&genuine, wechat_v2::API_KEY))
        .await;
    assert_eq!((st, v2_return_code(&body)), (200, "FAIL"), "{body}");
    untouched(&s, "RS00000001", "rs-u1").await;
    untouched(&s, "RS00000002", "rs-u2").await;
    last_rejected(
        &s,
        "wechat-v2",
        &[
            "ambiguous signed string: field `zz` contains `&",
            "ambiguous signed string: field `attach` contains `&mch_id=`",
        ],
    )
    .await;
}

/// The same attack on Alipay, through `body`.
#[tokio::test]
async fn alipay_one_signature_re_split_into_other_fields_pays_nothing() {
    let s = server().await;
    for (no, user, fen) in [("RS00000011", "rs-u11", 1), ("RS00000012", "rs-u12", 9900)] {
        s.create_order(json!({
            "type": "recharge", "total_fee": fen, "user_id": user, "provider": "alipay",
            "out_trade_no": no, "custom": { "recharge_balance": fen }
        }))
        .await;
    }
    let (genuine, forged) = alipay::resplit(
        &alipay::paid(
            alipay::APP_ID_A,
            "RS00000011",
            "0.01",
            "2026010122001400000911",
        ),
        "body",
        &[
            ("out_trade_no", "RS00000012"),
            ("total_amount", "99.00"),
            ("trade_no", "2026010122001400000912"),
            ("trade_status", "TRADE_SUCCESS"),
        ],
    );
    let form = "application/x-www-form-urlencoded; charset=utf-8";
    for fields in [&forged, &genuine] {
        let (st, body) = s
            .notify("/notify/alipay", form, alipay::body(fields, alipay_key()))
            .await;
        assert_eq!((st, body.as_str()), (200, "failure"));
    }
    untouched(&s, "RS00000011", "rs-u11").await;
    untouched(&s, "RS00000012", "rs-u12").await;
    last_rejected(
        &s,
        "alipay",
        &[
            "ambiguous signed string: field `zz` contains `&",
            "ambiguous signed string: field `body` contains `&out_trade_no=`",
        ],
    )
    .await;
}

/// Issue 20 item 3, WeChat Pay v2: signed but unreadable payments (no `result_code`, a
/// `total_fee` that is no amount, no `out_trade_no`) get the failure answer, are stored as
/// rejected with the reason and change nothing; a well-formed `FAIL` is still
/// acknowledged and ignored.
#[tokio::test]
async fn wechat_v2_signed_but_malformed_is_refused_not_ignored() {
    let s = server().await;
    s.recharge_order("MF00000001", "mf-u1", 300).await;
    let base = || wechat_v2::paid("MF00000001", 300, "4200000931");
    let mut cases: Vec<(&str, std::collections::BTreeMap<String, String>)> = Vec::new();
    for (result, (k, v)) in [
        ("SUCCESS", ("result_code", None)),
        ("FAIL", ("total_fee", Some("3.00"))),
        ("SUCCESS", ("total_fee", Some("abc"))),
        ("FAIL", ("out_trade_no", None)),
        ("SUCCESS", ("result_code", Some("PENDING"))),
    ] {
        let mut f = base();
        f.insert("result_code".into(), result.into());
        match v {
            Some(v) => f.insert(k.into(), v.into()),
            None => f.remove(k),
        };
        cases.push((k, f));
    }
    for (name, f) in &cases {
        let (st, body) = s.notify_v2(wechat_v2::xml(f, wechat_v2::API_KEY)).await;
        assert_eq!((st, v2_return_code(&body)), (200, "FAIL"), "{name}: {body}");
    }
    untouched(&s, "MF00000001", "mf-u1").await;
    last_rejected(
        &s,
        "wechat-v2",
        &[
            "malformed notification: no result_code",
            "malformed notification: total_fee `3.00`",
            "malformed notification: total_fee `abc`",
            "malformed notification: no out_trade_no",
            "malformed notification: result_code `PENDING`",
        ],
    )
    .await;
    let mut failed = base();
    failed.insert("result_code".into(), "FAIL".into());
    let (st, body) = s
        .notify_v2(wechat_v2::xml(&failed, wechat_v2::API_KEY))
        .await;
    assert_eq!((st, v2_return_code(&body)), (200, "SUCCESS"), "{body}");
    untouched(&s, "MF00000001", "mf-u1").await;
    let last = s.notifications().await.into_iter().last().expect("stored");
    assert_eq!(last.verdict, Verdict::Ignored);
}

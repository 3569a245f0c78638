//! The transactional outbox end to end: `notify-backend` hands each paid order to a real
//! local HTTP server standing in for the merchant's backend (seed 000, style 3).

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use paynotify::store::{NewTask, TaskEnd, TaskRecord};
use paynotify::time::now_ms;
use paynotify_tests::process::connect_store;
use paynotify_tests::{
    fresh_database_url, install_plugin, wait_until, wechat_v2, Options, TestServer,
};
use serde_json::{json, Value};

/// The notify key every test server's account has (32 ASCII bytes).
const NOTIFY_KEY: &[u8; 32] = b"0123456789abcdef0123456789abcdef";

/// How the fake backend behaves.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// `{"code":0}`.
    Accept,
    /// HTTP 503.
    Down,
}

#[derive(Clone)]
struct Backend {
    mode: Arc<Mutex<Mode>>,
    /// (timestamp header, signature header, raw body) of every request.
    received: Arc<Mutex<Vec<(String, String, String)>>>,
    port: u16,
}

impl Backend {
    async fn start(mode: Mode) -> Backend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let backend = Backend {
            mode: Arc::new(Mutex::new(mode)),
            received: Arc::new(Mutex::new(Vec::new())),
            port,
        };
        let app = Router::new()
            .route("/paid", post(receive))
            .with_state(backend.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.expect("backend serves") });
        backend
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().expect("lock") = mode;
    }

    fn received(&self) -> Vec<(String, String, String)> {
        self.received.lock().expect("lock").clone()
    }

    /// A manifest for notify-backend pointing at this backend.
    fn manifest(&self, allowed: bool) -> String {
        let origin = if allowed {
            format!("\"http://127.0.0.1:{}\"", self.port)
        } else {
            String::new()
        };
        format!(
            "collections = []\nhttp_origins = [{origin}]\ncrypto = true\n[config]\nbackend_url = \"http://127.0.0.1:{}/paid\"\n",
            self.port
        )
    }
}

async fn receive(
    State(b): State<Backend>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, Json<Value>) {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    b.received.lock().expect("lock").push((
        h("x-paynotify-timestamp"),
        h("x-paynotify-signature"),
        body,
    ));
    match *b.mode.lock().expect("lock") {
        Mode::Accept => (StatusCode::OK, Json(json!({ "code": 0 }))),
        Mode::Down => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "code": 503 })),
        ),
    }
}

const FAST_RETRIES: &str = "[tasks]\npoll_ms = 20\nbackoff_secs = [1, 1]\n";

async fn server(backend: &Backend, allowed: bool) -> TestServer {
    let mut options = Options::with_plugins(&[]).plugin_as(
        "notify-backend",
        "notify-backend",
        Some(&backend.manifest(allowed)),
    );
    options.extra_config = FAST_RETRIES.into();
    TestServer::start(options).await
}

async fn pay(s: &TestServer, no: &str, fee: i64) {
    s.create_order(json!({
        "type": "notify-backend", "total_fee": fee, "user_id": "u1", "provider": "wechat-v2",
        "out_trade_no": no, "custom": { "note": "gift" }
    }))
    .await;
    let (st, body) = s
        .notify_v2(wechat_v2::paid_xml(no, fee, &format!("42{no}")))
        .await;
    assert_eq!(st, 200);
    assert!(body.contains("SUCCESS"), "{body}");
}

async fn task_for(s: &TestServer, no: &str) -> TaskRecord {
    let tasks = s.app.store.list_tasks(None, 100).await.expect("tasks");
    let mine: Vec<_> = tasks
        .into_iter()
        .filter(|t| t.out_trade_no.as_deref() == Some(no))
        .collect();
    assert_eq!(mine.len(), 1, "exactly one task for {no}: {mine:?}");
    mine.into_iter().next().expect("one")
}

async fn wait_status(s: &TestServer, no: &str, status: &str) -> TaskRecord {
    wait_until(30, &format!("task of {no} to be {status}"), || async {
        let t = task_for(s, no).await;
        (t.status == status).then_some(t)
    })
    .await
}

/// Decrypts with the openssl command line: the format is the standard one.
fn openssl_decrypt(b64: &str) -> Vec<u8> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64");
    let (iv, ct) = raw.split_at(16);
    let dir = tempfile::tempdir().expect("tmp");
    let input = dir.path().join("ct.bin");
    std::fs::write(&input, ct).expect("write");
    let out = std::process::Command::new("openssl")
        .args([
            "enc",
            "-d",
            "-aes-256-cbc",
            "-K",
            &hex::encode(NOTIFY_KEY),
            "-iv",
            &hex::encode(iv),
            "-in",
        ])
        .arg(&input)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[tokio::test]
async fn the_backend_gets_one_decryptable_signed_payload_per_paid_order() {
    let backend = Backend::start(Mode::Accept).await;
    let s = server(&backend, true).await;
    pay(&s, "B000000001", 1200).await;
    pay(&s, "B000000002", 300).await;
    // A duplicate notification must not produce a second delivery.
    s.notify_v2(wechat_v2::paid_xml("B000000001", 1200, "42B000000001"))
        .await;
    wait_status(&s, "B000000001", "done").await;
    wait_status(&s, "B000000002", "done").await;

    let got = backend.received();
    assert_eq!(got.len(), 2, "one delivery per paid order");
    let mut orders = Vec::new();
    for (ts, sig, body) in got {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(NOTIFY_KEY).expect("key");
        mac.update(format!("{ts}.{body}").as_bytes());
        assert_eq!(
            sig,
            format!("v1={}", hex::encode(mac.finalize().into_bytes())),
            "signature"
        );
        let envelope: Value = serde_json::from_str(&body).expect("json body");
        let plain = openssl_decrypt(envelope["encryptedData"].as_str().expect("encryptedData"));
        let order: Value = serde_json::from_slice(&plain).expect("decrypted JSON");
        orders.push(order);
    }
    orders.sort_by_key(|o| o["out_trade_no"].as_str().unwrap_or("").to_owned());
    assert_eq!(orders[0]["out_trade_no"], "B000000001");
    assert_eq!(orders[0]["total_fee"], 1200);
    assert_eq!(orders[0]["custom"], json!({ "note": "gift" }));
    assert_eq!(orders[1]["total_fee"], 300);
}

#[tokio::test]
async fn a_backend_that_is_down_is_retried_until_it_recovers() {
    let backend = Backend::start(Mode::Down).await;
    let s = server(&backend, true).await;
    pay(&s, "B000000011", 100).await;
    wait_until(30, "a failed attempt", || async {
        let t = task_for(&s, "B000000011").await;
        (t.attempts >= 1 && t.status == "pending").then_some(())
    })
    .await;
    backend.set(Mode::Accept);
    let t = wait_status(&s, "B000000011", "done").await;
    assert!(t.errors.iter().any(|e| e.contains("503")), "{:?}", t.errors);
    let accepted = backend.received().len();
    assert!(accepted >= 2, "retried: {accepted} requests");
}

#[tokio::test]
async fn a_backend_down_for_good_parks_the_task_dead_until_ops_retry_it() {
    let backend = Backend::start(Mode::Down).await;
    let s = server(&backend, true).await;
    pay(&s, "B000000021", 100).await;
    let dead = wait_status(&s, "B000000021", "dead").await;
    // backoff_secs = [1, 1]: the first try and two retries.
    assert_eq!(dead.attempts, 3);
    assert_eq!(dead.errors.len(), 3, "{:?}", dead.errors);
    assert!(dead.errors[2].contains("attempt 3"), "{:?}", dead.errors);

    backend.set(Mode::Accept);
    let (st, v) = s
        .api("POST", &format!("/api/admin/tasks/{}/retry", dead.id), None)
        .await;
    assert_eq!(st, 200, "{v}");
    let done = wait_status(&s, "B000000021", "done").await;
    assert_eq!(done.errors.len(), 3, "history kept");
    let (st, _) = s
        .api("POST", &format!("/api/admin/tasks/{}/retry", dead.id), None)
        .await;
    assert_eq!(st, 404, "a done task is not retried");
}

#[tokio::test]
async fn a_backend_not_on_the_allow_list_is_refused() {
    let backend = Backend::start(Mode::Accept).await;
    let s = server(&backend, false).await;
    pay(&s, "B000000031", 100).await;
    let t = wait_until(30, "a denied attempt", || async {
        let t = task_for(&s, "B000000031").await;
        t.last_error.is_some().then_some(t)
    })
    .await;
    let err = t.last_error.unwrap_or_default();
    assert!(err.contains("http_origins"), "{err}");
    assert!(backend.received().is_empty(), "no request left the host");
}

#[tokio::test]
async fn a_task_whose_plugin_is_unloaded_waits_for_it() {
    let backend = Backend::start(Mode::Down).await;
    let s = server(&backend, true).await;
    pay(&s, "B000000041", 5).await;
    wait_until(30, "a failed attempt", || async {
        let t = task_for(&s, "B000000041").await;
        (t.attempts == 1 && t.status == "pending").then_some(())
    })
    .await;
    std::fs::remove_file(s.plugins_dir().join("notify-backend.wasm")).expect("rm");
    s.reload_plugins().await;
    let waiting = wait_until(30, "the task to be postponed", || async {
        let t = task_for(&s, "B000000041").await;
        let postponed = t
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("no handler is loaded");
        (t.status == "pending" && postponed).then_some(t)
    })
    .await;
    assert_eq!(waiting.attempts, 1, "waiting for a plugin uses no attempt");
    backend.set(Mode::Accept);
    install_plugin(
        &s.plugins_dir(),
        "notify-backend",
        "notify-backend",
        Some(&backend.manifest(true)),
    );
    s.reload_plugins().await;
    let (st, _) = s
        .api(
            "POST",
            &format!("/api/admin/tasks/{}/retry", waiting.id),
            None,
        )
        .await;
    assert_eq!(st, 200);
    wait_status(&s, "B000000041", "done").await;
}

/// A lease is renewed only under the claim's token: the renewed lease keeps other workers
/// off, and once another worker took the task over (after the lease ran out) the old
/// holder can neither renew nor finish it. Store level, on the backend under test.
#[tokio::test]
async fn a_task_lease_is_renewed_only_by_the_worker_holding_the_claim() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = connect_store(&fresh_database_url(dir.path())).await;
    let now = now_ms();
    let mut tx = store.begin().await.expect("begin");
    let id = tx
        .enqueue_task(&NewTask {
            plugin: "notify-backend".into(),
            name: "deliver".into(),
            payload: "{}".into(),
            out_trade_no: None,
            provider: None,
            account: None,
            run_at: now - 1,
        })
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");

    let ids = |tasks: Vec<TaskRecord>| tasks.iter().map(|t| t.id).collect::<Vec<_>>();
    let claimed = store
        .claim_tasks("a", now, now + 1000, 1)
        .await
        .expect("claim");
    assert_eq!(ids(claimed), vec![id]);
    assert!(store.renew_task(id, "a", now + 5000).await.expect("renew"));
    let early = store
        .claim_tasks("b", now + 2000, now + 7000, 1)
        .await
        .expect("claim");
    assert_eq!(
        ids(early),
        Vec::<i64>::new(),
        "claimed within the renewed lease"
    );
    let taken = store
        .claim_tasks("b", now + 5000, now + 9000, 1)
        .await
        .expect("claim");
    assert_eq!(
        ids(taken),
        vec![id],
        "the renewed lease ran out: b takes over"
    );
    assert!(
        !store
            .renew_task(id, "a", now + 20_000)
            .await
            .expect("renew"),
        "the old holder renewed a lease taken over"
    );
    assert!(
        !store
            .finish_task(id, "a", &TaskEnd::Done)
            .await
            .expect("finish"),
        "the old holder finished a task taken over"
    );
    assert!(store
        .renew_task(id, "b", now + 20_000)
        .await
        .expect("renew"));
    assert!(store
        .finish_task(id, "b", &TaskEnd::Done)
        .await
        .expect("finish"));
    assert!(
        !store
            .renew_task(id, "b", now + 30_000)
            .await
            .expect("renew"),
        "a finished task was renewed"
    );
    let t = store.get_task(id).await.expect("db").expect("task");
    assert_eq!((t.status.as_str(), t.attempts), ("done", 1));
}

#[test]
fn openssl_output_decrypts_with_the_host() {
    let dir = tempfile::tempdir().expect("tmp");
    let input = dir.path().join("plain.txt");
    std::fs::write(&input, "{\"code\":0}").expect("write");
    let iv = [7u8; 16];
    let out = std::process::Command::new("openssl")
        .args([
            "enc",
            "-aes-256-cbc",
            "-K",
            &hex::encode(NOTIFY_KEY),
            "-iv",
            &hex::encode(iv),
            "-in",
        ])
        .arg(&input)
        .output()
        .expect("openssl runs");
    assert!(out.status.success());
    let mut framed = iv.to_vec();
    framed.extend_from_slice(&out.stdout);
    let b64 = base64::engine::general_purpose::STANDARD.encode(framed);
    let plain =
        paynotify::plugins::capabilities::crypto::aes_decrypt(NOTIFY_KEY, &b64).expect("decrypts");
    assert_eq!(plain, b"{\"code\":0}");
}

//! `cargo xtask bench` (or `cargo bench -p paynotify --bench dispatch`): what a wasm
//! handler costs over native Rust doing the same work, and how long a hot reload takes.
//! Prints a table; asserts nothing about time (shared machines are noisy).
//!
//! Needs the plugins built (`cargo xtask plugins`); `PAYNOTIFY_BENCH_PLUGINS` overrides
//! where they are read from.

use std::path::PathBuf;

use futures::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use paynotify::config::{DatabaseConfig, PluginsConfig, SqliteSynchronous};
use paynotify::plugins::bindings;
use paynotify::plugins::capabilities::{CallContext, CallTags, DbAccess};
use paynotify::plugins::{watch, Registry, Runtime};
use paynotify::store::{sqlite::SqliteStore, Store};

const CALLS: u32 = 3000;

fn plugins_dir() -> PathBuf {
    std::env::var_os("PAYNOTIFY_BENCH_PLUGINS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugins"))
}

fn order(i: u32) -> bindings::Order {
    bindings::Order {
        out_trade_no: format!("B{i:09}"),
        type_: "recharge".into(),
        provider: "wechat-v2".into(),
        account: "default".into(),
        total_fee: 100,
        user_id: format!("u{}", i % 100),
        custom: "{\"recharge_balance\":100}".into(),
        transaction_id: format!("T{i:09}"),
    }
}

fn notification(i: u32) -> bindings::Notification {
    bindings::Notification {
        id: i64::from(i),
        provider: "wechat-v2".into(),
        account: "default".into(),
        out_trade_no: format!("B{i:09}"),
        transaction_id: format!("T{i:09}"),
        amount: 100,
        paid_at: None,
        fields: vec![("total_fee".into(), "100".into())],
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn row(name: &str, samples: &mut [Duration]) -> Duration {
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    println!(
        "| {name:<44} | {:>9.1} | {:>9.1} | {:>9.1} |",
        mean.as_secs_f64() * 1e6,
        percentile(samples, 0.5).as_secs_f64() * 1e6,
        percentile(samples, 0.99).as_secs_f64() * 1e6
    );
    percentile(samples, 0.5)
}

#[tokio::main]
async fn main() {
    let src = plugins_dir();
    let dir = tempfile::tempdir().expect("tmp");
    let plugins = dir.path().join("plugins.d");
    std::fs::create_dir_all(&plugins).expect("mkdir");
    for f in ["recharge.wasm", "recharge.toml"] {
        std::fs::copy(src.join(f), plugins.join(f)).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run `cargo xtask plugins` first)",
                src.join(f).display()
            )
        });
    }
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::connect(&DatabaseConfig {
            url: format!("sqlite://{}", dir.path().join("bench.db").display()),
            max_connections: 2,
            sqlite_synchronous: SqliteSynchronous::Normal,
            ..DatabaseConfig::default()
        })
        .await
        .expect("db"),
    );
    let config = PluginsConfig {
        dir: plugins.clone(),
        ..PluginsConfig::default()
    };
    let runtime = Arc::new(Runtime::new(&config).expect("runtime"));
    let registry = Arc::new(Registry::new(runtime.clone(), config));
    registry.scan().await;
    let plugin = registry.get("recharge").expect("recharge loaded");

    println!(
        "| {:<44} | {:>9} | {:>9} | {:>9} |",
        "per call (µs)", "mean", "p50", "p99"
    );
    println!("|{:-<46}|{:->11}|{:->11}|{:->11}|", "", "", "", "");

    // Native: the same work recharge does (one atomic inc) in a transaction, rolled back.
    let mut native = Vec::with_capacity(CALLS as usize);
    for i in 0..CALLS {
        let t = Instant::now();
        let mut tx = store.begin().await.expect("begin");
        tx.doc_inc("users", &format!("u{}", i % 100), "balance", 100)
            .await
            .expect("inc");
        drop(tx);
        native.push(t.elapsed());
    }
    let native_p50 = row("native Rust: begin + inc + rollback", &mut native);

    // Wasm: fresh instance from InstancePre + handle-paid doing the inc via `db`.
    let mut wasm = Vec::with_capacity(CALLS as usize);
    for i in 0..CALLS {
        let t = Instant::now();
        let tx = store.begin().await.expect("begin");
        let ctx = CallContext {
            manifest: plugin.manifest.clone(),
            tags: CallTags {
                plugin: "recharge".into(),
                version: plugin.metadata.version.clone(),
                out_trade_no: None,
                notification_id: None,
                task_id: None,
            },
            db: DbAccess::Tx(tx),
            notify_key: None,
            provider: None,
            account: None,
            http: runtime.http_client(),
            poisoned: None,
        };
        let (ctx, r) = runtime
            .handle_paid(
                &plugin.compiled,
                ctx,
                plugin.limits,
                order(i),
                notification(i),
            )
            .await;
        r.expect("handler ok");
        drop(ctx);
        wasm.push(t.elapsed());
    }
    let wasm_p50 = row(
        "wasm recharge: begin + instantiate + call + rollback",
        &mut wasm,
    );
    println!(
        "| {:<44} | {:>9} | {:>9.1} | {:>9} |",
        "dispatch overhead (wasm p50 − native p50)",
        "",
        (wasm_p50.saturating_sub(native_p50)).as_secs_f64() * 1e6,
        ""
    );

    end_to_end(&src).await;

    // Reload: file renamed into place → new version serving.
    let _watch = watch::watch(registry.clone(), plugins.clone()).expect("watch");
    let original = std::fs::read(plugins.join("recharge.wasm")).expect("read");
    let mut reloads = Vec::new();
    for round in 0..10u8 {
        let mut bytes = original.clone();
        bytes.extend_from_slice(&[0, 3, 1, b'r', round]); // a custom section: a new build
        let before = registry.get("recharge").expect("loaded").sha256.clone();
        let tmp = plugins.join(".recharge.wasm.part");
        std::fs::write(&tmp, &bytes).expect("write");
        let t = Instant::now();
        std::fs::rename(&tmp, plugins.join("recharge.wasm")).expect("rename");
        while registry.get("recharge").expect("loaded").sha256 == before {
            tokio::time::sleep(Duration::from_millis(1)).await;
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "reload never happened"
            );
        }
        reloads.push(t.elapsed());
    }
    println!();
    println!(
        "| {:<44} | {:>9} | {:>9} | {:>9} |",
        "hot reload (ms)", "mean", "p50", "max"
    );
    println!("|{:-<46}|{:->11}|{:->11}|{:->11}|", "", "", "", "");
    reloads.sort();
    let mean = reloads.iter().sum::<Duration>() / reloads.len() as u32;
    println!(
        "| {:<44} | {:>9.1} | {:>9.1} | {:>9.1} |",
        format!(
            "rename → new version serving (settle {} ms ×2)",
            watch::QUIET.as_millis()
        ),
        mean.as_secs_f64() * 1e3,
        percentile(&reloads, 0.5).as_secs_f64() * 1e3,
        reloads.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
}

/// The whole path over HTTP: signed v2 notification → verify → one transaction with the
/// recharge handler → answer, sequentially from one client (latency, not throughput).
async fn end_to_end(src: &std::path::Path) {
    use std::collections::BTreeMap;
    const N: u32 = 1000;
    let dir = tempfile::tempdir().expect("tmp");
    let plugins = dir.path().join("plugins.d");
    std::fs::create_dir_all(&plugins).expect("mkdir");
    for f in ["recharge.wasm", "recharge.toml"] {
        std::fs::copy(src.join(f), plugins.join(f)).expect("copy plugin");
    }
    let key = "bench-key-not-a-secret-000000000";
    let text = format!(
        "[server]\napi_token = \"t\"\n[database]\nurl = \"sqlite://{}\"\n[plugins]\ndir = \"{}\"\n\
         [[accounts]]\nprovider = \"wechat-v2\"\nappid = \"wxbench\"\nmch_id = \"1\"\napi_key = \"{key}\"\n",
        dir.path().join("e2e.db").display(),
        plugins.display()
    );
    let path = dir.path().join("paynotify.toml");
    std::fs::write(&path, text).expect("config");
    let config = paynotify::Config::load(&path, Vec::new()).expect("config loads");
    let app = paynotify::App::start(config).await.expect("start");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(paynotify::http::serve(
        app.clone(),
        listener,
        std::future::pending(),
    ));
    let http = reqwest::Client::new();
    let mut samples = Vec::with_capacity(N as usize);
    for i in 0..N {
        let no = format!("E{i:09}");
        app.store
            .create_order(&paynotify::store::NewOrder {
                out_trade_no: no.clone(),
                order_type: "recharge".into(),
                provider: "wechat-v2".into(),
                account: "default".into(),
                total_fee: 100,
                user_id: format!("u{}", i % 50),
                custom: serde_json::json!({ "recharge_balance": 100 }),
            })
            .await
            .expect("order");
        let mut f: BTreeMap<String, String> = [
            ("appid", "wxbench"),
            ("mch_id", "1"),
            ("nonce_str", "n"),
            ("result_code", "SUCCESS"),
            ("return_code", "SUCCESS"),
            ("time_end", "20260903131540"),
            ("total_fee", "100"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        f.insert("out_trade_no".into(), no.clone());
        f.insert("transaction_id".into(), format!("T{i:09}"));
        let xml = paynotify::providers::wechat_v2::signed_xml(
            &f,
            key,
            paynotify::providers::wechat_v2::SignType::Md5,
        );
        let t = Instant::now();
        let resp = http
            .post(format!("http://{addr}/notify/wechat-v2"))
            .body(xml)
            .send()
            .await
            .expect("send");
        let body = resp.text().await.expect("body");
        samples.push(t.elapsed());
        assert!(body.contains("SUCCESS"), "{body}");
    }
    let paid: i64 = (0..50)
        .map(|u| format!("u{u}"))
        .map(|u| {
            let app = app.clone();
            async move {
                let d = app
                    .store
                    .get_document("users", &u)
                    .await
                    .expect("db")
                    .expect("user");
                serde_json::from_str::<serde_json::Value>(&d).expect("json")["balance"]
                    .as_i64()
                    .unwrap_or(0)
            }
        })
        .collect::<futures::stream::FuturesOrdered<_>>()
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .sum();
    assert_eq!(
        paid,
        i64::from(N) * 100,
        "every notification credited exactly once"
    );
    row(
        "end to end over HTTP, sequential (SQLite FULL)",
        &mut samples,
    );
}

//! `cargo xtask bench` (or `cargo bench -p paynotify --bench dispatch`): what a wasm
//! handler costs over native Rust doing the same work, and how long a hot reload takes.
//! Prints a table; asserts nothing about time (shared machines are noisy). Throughput
//! and latency under load are measured on the real binary by the tests crate's
//! `throughput` bench, which `cargo xtask bench` runs next.
//!
//! Needs the plugins built (`cargo xtask plugins`); `PAYNOTIFY_BENCH_PLUGINS` overrides
//! where they are read from.

use std::path::PathBuf;

use futures::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use paynotify::config::{DatabaseConfig, PluginsConfig, SqliteSynchronous};
use paynotify::plugins::bindings;
use paynotify::plugins::capabilities::DbAccess;
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

/// Context switches of every thread of this process so far (Linux `/proc`; 0 elsewhere).
/// Per call, they show where wall time goes that CPU profiles do not: thread hand-offs.
fn context_switches() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches"))
                .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// CPU time (user + system) of every thread of this process so far, in microseconds
/// (Linux `/proc`; 0 elsewhere). Beside wall time it separates work from waiting.
fn cpu_micros() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    // Fields after the command name (which may hold spaces) start at `) `.
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    // USER_HZ is 100 on every Linux this runs on.
    ticks * 10_000
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
    let mut switches = Vec::new();
    let mut native = Vec::with_capacity(CALLS as usize);
    let since = (context_switches(), cpu_micros());
    for i in 0..CALLS {
        let t = Instant::now();
        let mut tx = store.begin().await.expect("begin");
        tx.doc_inc("users", &format!("u{}", i % 100), "balance", 100)
            .await
            .expect("inc");
        drop(tx);
        native.push(t.elapsed());
    }
    switches.push(("native", since, (context_switches(), cpu_micros())));
    let native_p50 = row("native Rust: begin + inc + rollback", &mut native);

    // Wasm: fresh instance from InstancePre + handle-paid doing the inc via `db`.
    let mut wasm = Vec::with_capacity(CALLS as usize);
    let since = (context_switches(), cpu_micros());
    for i in 0..CALLS {
        let t = Instant::now();
        let tx = store.begin().await.expect("begin");
        let ctx = runtime
            .call_context(
                plugin.manifest.clone(),
                "recharge",
                &plugin.metadata.version,
            )
            .db(DbAccess::Tx(tx))
            .build();
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
    switches.push(("wasm recharge", since, (context_switches(), cpu_micros())));
    let wasm_p50 = row(
        "wasm recharge: begin + instantiate + call + rollback",
        &mut wasm,
    );

    // Where the time goes: a fresh instance and a call that returns at once (no database).
    let mut bare = Vec::with_capacity(CALLS as usize);
    let since = (context_switches(), cpu_micros());
    for i in 0..CALLS {
        let t = Instant::now();
        let ctx = runtime
            .call_context(
                plugin.manifest.clone(),
                "recharge",
                &plugin.metadata.version,
            )
            .db(DbAccess::None)
            .build();
        let task = bindings::Task {
            id: i64::from(i),
            name: "no-such-task".into(),
            payload: "{}".into(),
            attempt: 1,
            out_trade_no: None,
        };
        let (_, r) = runtime
            .run_task(&plugin.compiled, ctx, plugin.limits, task)
            .await;
        assert!(r.is_err(), "recharge has no tasks");
        bare.push(t.elapsed());
    }
    switches.push(("wasm bare", since, (context_switches(), cpu_micros())));
    row("wasm: instantiate + run-task returning at once", &mut bare);
    println!(
        "| {:<44} | {:>9} | {:>9.1} | {:>9} |",
        "dispatch overhead (wasm p50 − native p50)",
        "",
        (wasm_p50.saturating_sub(native_p50)).as_secs_f64() * 1e6,
        ""
    );

    for (name, from, to) in switches {
        let per_call = |to: u64, from: u64| (to - from) as f64 / f64::from(CALLS);
        println!(
            "| {:<44} | {:>9.1} | {:>9} | {:>9} |",
            format!("context switches per call: {name}"),
            per_call(to.0, from.0),
            "",
            ""
        );
        println!(
            "| {:<44} | {:>9.1} | {:>9} | {:>9} |",
            format!("CPU µs per call (all threads): {name}"),
            per_call(to.1, from.1),
            "",
            ""
        );
    }
    if std::env::var("PAYNOTIFY_BENCH_ONLY").as_deref() == Ok("dispatch") {
        return;
    }

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

/// A real server (in this process) with the recharge handler on `database_url`, and
/// orders `{prefix}{i}` for `n` notifications; returns its address and app.
async fn bench_server(
    src: &std::path::Path,
    dir: &std::path::Path,
    database_url: &str,
) -> (std::net::SocketAddr, paynotify::App) {
    let plugins = dir.join("plugins.d");
    std::fs::create_dir_all(&plugins).expect("mkdir");
    for f in ["recharge.wasm", "recharge.toml"] {
        std::fs::copy(src.join(f), plugins.join(f)).expect("copy plugin");
    }
    let text = format!(
        "[server]\napi_token = \"t\"\n[database]\nurl = \"{database_url}\"\nmax_connections = 16\n\
         [plugins]\ndir = \"{}\"\n[tasks]\nenabled = false\n\
         [[accounts]]\nprovider = \"wechat-v2\"\nappid = \"wxbench\"\nmch_id = \"1\"\napi_key = \"{KEY}\"\n",
        plugins.display()
    );
    let path = dir.join("paynotify.toml");
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
    (addr, app)
}

const KEY: &str = "bench-key-not-a-secret-000000000";
const USERS: u32 = 50;

/// Creates `n` recharge orders of 100 fen and their signed notifications.
async fn orders(app: &paynotify::App, prefix: &str, n: u32) -> Vec<String> {
    use std::collections::BTreeMap;
    let mut bodies = Vec::with_capacity(n as usize);
    for i in 0..n {
        let no = format!("{prefix}{i:09}");
        app.store
            .create_order(&paynotify::store::NewOrder {
                out_trade_no: no.clone(),
                order_type: "recharge".into(),
                provider: "wechat-v2".into(),
                account: "default".into(),
                sub_mchid: None,
                total_fee: 100,
                user_id: format!("u{}", i % USERS),
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
        f.insert("out_trade_no".into(), no);
        f.insert("transaction_id".into(), format!("{prefix}T{i:09}"));
        bodies.push(paynotify::providers::wechat_v2::signed_xml(
            &f,
            KEY,
            paynotify::providers::wechat_v2::SignType::Md5,
        ));
    }
    bodies
}

/// Sums every user's balance: after a run it must be exactly 100 fen per notification.
async fn total_balance(app: &paynotify::App) -> i64 {
    let mut total = 0;
    for u in 0..USERS {
        if let Some(d) = app
            .store
            .get_document("users", &format!("u{u}"))
            .await
            .expect("db")
        {
            total += serde_json::from_str::<serde_json::Value>(&d).expect("json")["balance"]
                .as_i64()
                .unwrap_or(0);
        }
    }
    total
}

/// Sends `bodies` with `concurrency` requests in flight; returns (elapsed, latencies).
async fn send_all(
    addr: std::net::SocketAddr,
    bodies: Vec<String>,
    concurrency: usize,
) -> (Duration, Vec<Duration>) {
    let http = reqwest::Client::new();
    let started = Instant::now();
    let latencies: Vec<Duration> = futures::stream::iter(bodies)
        .map(|xml| {
            let http = http.clone();
            async move {
                let t = Instant::now();
                let body = http
                    .post(format!("http://{addr}/notify/wechat-v2"))
                    .body(xml)
                    .send()
                    .await
                    .expect("send")
                    .text()
                    .await
                    .expect("body");
                assert!(body.contains("SUCCESS"), "{body}");
                t.elapsed()
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    (started.elapsed(), latencies)
}

/// The whole path over HTTP, one client at a time (latency).
async fn end_to_end(src: &std::path::Path) {
    const N: u32 = 1000;
    let dir = tempfile::tempdir().expect("tmp");
    let url = format!("sqlite://{}", dir.path().join("e2e.db").display());
    let (addr, app) = bench_server(src, dir.path(), &url).await;
    let bodies = orders(&app, "E", N).await;
    let (_, mut samples) = send_all(addr, bodies, 1).await;
    assert_eq!(
        total_balance(&app).await,
        i64::from(N) * 100,
        "every notification credited once"
    );
    row(
        "end to end over HTTP, one at a time (SQLite FULL)",
        &mut samples,
    );
}

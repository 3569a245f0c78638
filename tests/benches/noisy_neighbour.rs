//! `cargo bench -p paynotify-tests --bench noisy_neighbour` (also run by `cargo xtask
//! bench`): how long unrelated payments wait on SQLite while another type's handler loops
//! until its time limit. Prints one markdown table; asserts nothing about time.
//!
//! On SQLite a payment handler runs inside the one write transaction, so a handler that
//! loops holds every other payment for its limit. Each row starts the REAL release
//! server on a fresh SQLite file with `recharge` and the test-only `loop` handler, then
//! for `10 s × PAYNOTIFY_BENCH_SCALE`:
//!
//! - pays recharge orders at `PAYNOTIFY_BENCH_RATE` (100) per second, open loop: payment
//!   `i` is due at `start + i / rate` whatever the answers do, its latency counted from
//!   then (a stall shows up in every payment due during it);
//! - beside them, a "provider" sends a `loop` order's payment every 250 ms, each on its
//!   own connection, as WeChat Pay retrying unanswered notifications would.
//!
//! Rows: the recharge payments alone; beside the loop with the default settings (payment
//! calls limited to 200 ms on SQLite, and the type failing fast after 3 timeouts in a
//! row); and beside the loop with the settings of before (4 s, no breaker), for scale.
//! Every recharge must end paid once with its balance exact and every loop order unpaid,
//! or the row says FAILED and the bench exits non-zero.
//!
//! Environment: `PAYNOTIFY_BENCH_BIN` (default `target/release/paynotify`),
//! `PAYNOTIFY_BENCH_PLUGINS` (default `target/plugins`), `PAYNOTIFY_BENCH_SCALE`,
//! `PAYNOTIFY_BENCH_RATE`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use paynotify_tests::process::{send_notification, HostProcess};
use paynotify_tests::{v2_return_code, wechat_v2};
use serde_json::json;

/// One configuration to measure.
struct Scenario {
    name: &'static str,
    /// For how many seconds (at most the row's length) `loop` payments are sent beside the
    /// recharges, one every 250 ms.
    loop_secs: f64,
    /// `PAYNOTIFY_PLUGINS_*` overrides for the server.
    env: &'static [(&'static str, &'static str)],
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "recharge alone",
        loop_secs: 0.0,
        env: &[],
    },
    Scenario {
        name: "beside `loop`, defaults (200 ms payment limit, breaker after 3)",
        loop_secs: f64::INFINITY,
        env: &[],
    },
    Scenario {
        // Only 2 s of them: each holds the writer for 4 s, and the row must end.
        name: "beside `loop` for 2 s, 4 s payment limit, no breaker (before)",
        loop_secs: 2.0,
        env: &[
            ("PAYNOTIFY_PLUGINS_PAYMENT_TIMEOUT_MS", "4000"),
            ("PAYNOTIFY_PLUGINS_BREAKER_TIMEOUTS", "1000000"),
        ],
    },
];

/// What one row measured.
struct Row {
    name: &'static str,
    payments: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
    loop_sent: usize,
    loop_ran: u64,
    exact: Result<(), String>,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// Scrapes the server's count of `loop` calls that ran until their limit.
async fn loop_timeouts(host: &HostProcess) -> u64 {
    let text = match host.http.get(host.url("/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => return 0,
    };
    text.lines()
        .filter(|l| {
            l.starts_with("paynotify_handler_duration_seconds_count")
                && l.contains("plugin=\"loop\"")
                && l.contains("outcome=\"timeout\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

async fn run(scenario: &Scenario, seconds: f64, rate: f64) -> Row {
    for (k, v) in scenario.env {
        std::env::set_var(k, v);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("paynotify.db").display());
    let host = HostProcess::start(
        scenario.name,
        dir.path(),
        &url,
        &[("recharge", "recharge", None), ("loop", "loop", None)],
        "",
    )
    .await;
    for (k, _) in scenario.env {
        std::env::remove_var(k);
    }
    let host = Arc::new(host);
    let n = (seconds * rate).round() as usize;
    let loops = (seconds.min(scenario.loop_secs) * 4.0).round() as usize;
    for i in 0..n {
        host.create_order(json!({
            "type": "recharge", "total_fee": 100, "user_id": format!("u{}", i % 50),
            "provider": "wechat-v2", "out_trade_no": format!("R{i:06}"),
            "custom": {"recharge_balance": 100}
        }))
        .await;
    }
    for i in 0..loops {
        host.create_order(json!({
            "type": "loop", "total_fee": 100, "user_id": "spinner",
            "provider": "wechat-v2", "out_trade_no": format!("L{i:06}"), "custom": {}
        }))
        .await;
    }
    let recharges: Vec<String> = (0..n)
        .map(|i| wechat_v2::paid_xml(&format!("R{i:06}"), 100, &format!("4200R{i:06}")))
        .collect();
    let spins: Vec<String> = (0..loops)
        .map(|i| wechat_v2::paid_xml(&format!("L{i:06}"), 100, &format!("4200L{i:06}")))
        .collect();
    // Warm: the first call of each type compiles nothing (cached) but makes instances.
    let start = Instant::now() + Duration::from_millis(200);
    let url = host.url("/notify/wechat-v2");
    let spinner = {
        let (host, url) = (host.clone(), url.clone());
        tokio::spawn(async move {
            let mut sent = Vec::new();
            for (i, body) in spins.into_iter().enumerate() {
                tokio::time::sleep_until((start + Duration::from_millis(250 * i as u64)).into())
                    .await;
                let (http, url) = (host.http.clone(), url.clone());
                sent.push(tokio::spawn(async move {
                    send_notification(&http, &url, "text/xml", &[], body).await
                }));
            }
            for s in sent {
                let _ = s.await;
            }
        })
    };
    let mut payments = Vec::with_capacity(n);
    for (i, body) in recharges.iter().cloned().enumerate() {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        let (http, url) = (host.http.clone(), url.clone());
        payments.push(tokio::spawn(async move {
            tokio::time::sleep_until(due.into()).await;
            let r = send_notification(&http, &url, "text/xml", &[], body).await;
            let ok = matches!(&r, Ok((200, b)) if v2_return_code(b) == "SUCCESS");
            (ok, due.elapsed())
        }));
    }
    let mut latencies = Vec::with_capacity(n);
    let mut failed = 0;
    for p in payments {
        let (ok, took) = p.await.expect("payment task");
        if !ok {
            failed += 1;
        }
        latencies.push(took);
    }
    let _ = spinner.await;
    latencies.sort();
    let loop_ran = loop_timeouts(&host).await;
    let exact = check(&host, n, loops, failed).await;
    Row {
        name: scenario.name,
        payments: n,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        max: latencies.last().copied().unwrap_or_default(),
        loop_sent: loops,
        loop_ran,
        exact,
    }
}

/// Every recharge paid once and credited exactly; every loop order unpaid.
async fn check(host: &HostProcess, n: usize, loops: usize, failed: usize) -> Result<(), String> {
    if failed > 0 {
        return Err(format!("{failed} recharge payments not answered SUCCESS"));
    }
    for i in 0..n {
        let (code, o) = host.api("GET", &format!("/api/orders/R{i:06}"), None).await;
        if code != 200 || o["status"] != 1 {
            return Err(format!("R{i:06} not paid: {o}"));
        }
    }
    for u in 0..50.min(n) {
        let expected = (0..n).filter(|i| i % 50 == u).count() as i64 * 100;
        let (_, d) = host
            .api("GET", &format!("/api/admin/collections/users/u{u}"), None)
            .await;
        if d["balance"].as_i64() != Some(expected) {
            return Err(format!("u{u}: balance {d}, expected {expected}"));
        }
    }
    for i in 0..loops {
        let (_, o) = host.api("GET", &format!("/api/orders/L{i:06}"), None).await;
        if o["status"] != 0 {
            return Err(format!("L{i:06} should stay unpaid: {o}"));
        }
    }
    Ok(())
}

fn main() {
    let seconds = 10.0 * env_or("PAYNOTIFY_BENCH_SCALE", 1.0f64);
    let rate = env_or("PAYNOTIFY_BENCH_RATE", 100.0f64);
    if std::env::var_os("PAYNOTIFY_BIN").is_none() {
        let bin = std::env::var("PAYNOTIFY_BENCH_BIN").unwrap_or_else(|_| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/paynotify").into()
        });
        std::env::set_var("PAYNOTIFY_BIN", bin);
    }
    if std::env::var_os("PAYNOTIFY_TEST_PLUGINS").is_none() {
        let plugins = std::env::var("PAYNOTIFY_BENCH_PLUGINS")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target/plugins").into());
        std::env::set_var("PAYNOTIFY_TEST_PLUGINS", plugins);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let rows: Vec<Row> = runtime.block_on(async {
        let mut rows = Vec::new();
        for s in SCENARIOS {
            eprintln!("noisy-neighbour bench: {}", s.name);
            rows.push(run(s, seconds, rate).await);
        }
        rows
    });
    println!(
        "\n### Unrelated payments beside a looping handler (SQLite, {rate:.0} recharges/s for {seconds:.0} s, a `loop` payment every 250 ms)\n"
    );
    println!("| scenario | recharges | p50 ms | p99 ms | max ms | loop payments sent | loop calls timed out | exact |");
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    let mut ok = true;
    for r in &rows {
        let exact = match &r.exact {
            Ok(()) => "yes".to_owned(),
            Err(e) => {
                ok = false;
                format!("FAILED: {e}")
            }
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {exact} |",
            r.name,
            r.payments,
            ms(r.p50),
            ms(r.p99),
            ms(r.max),
            r.loop_sent,
            r.loop_ran
        );
    }
    if !ok {
        std::process::exit(1);
    }
}

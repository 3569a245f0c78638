//! `cargo bench -p paynotify-tests --bench event_streams` (also run by `cargo xtask
//! bench`): what idle order-event streams (`GET /api/orders/{no}/events`) cost the
//! server. Prints one markdown table; asserts nothing about time.
//!
//! Per backend (SQLite file; PostgreSQL schema `t_bench_events_…`) it starts the REAL
//! release server with the stream caps raised above the bench's streams, creates
//! 1,000 orders through the API, and for each row opens the streams (each reads its
//! first event), lets them settle for 2 s, then measures the server process's CPU
//! time (user + system, `/proc/{pid}/stat`) over `10 s × PAYNOTIFY_BENCH_SCALE` of
//! nothing happening but the streams being watched, as a share of one core; on
//! PostgreSQL also the CPU of every `postgres` process, which serves the reads. The
//! first row, no streams, is the idle server's own floor (task worker, expiry job,
//! metrics upkeep). A row fails (and the bench exits non-zero) unless every stream is
//! still open afterwards, the server counts them all (`paynotify_order_watchers`) and
//! none got an event beyond its first, since no order changed.
//!
//! Environment: `PAYNOTIFY_BENCH_BIN` (default `target/release/paynotify`),
//! `PAYNOTIFY_BENCH_PLUGINS` (default `target/plugins`), `PAYNOTIFY_BENCH_SCALE`,
//! `PAYNOTIFY_BENCH_STREAMS` (1000), `PAYNOTIFY_BENCH_ONLY` (`sqlite` or `postgres`),
//! `PAYNOTIFY_BENCH_POSTGRES_URL` (default: database `test` over the local Unix socket
//! if there is one, else `postgres://postgres@127.0.0.1:5432/test`).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use paynotify_tests::process::HostProcess;
use paynotify_tests::TOKEN;
use serde_json::json;

/// How long the streams settle after opening before the window starts.
const SETTLE: Duration = Duration::from_secs(2);

/// Streams opened at once while a row sets up.
const OPENING: usize = 64;

/// One row: `streams` streams spread evenly over the first `orders` orders.
struct Scenario {
    streams: usize,
    orders: usize,
}

/// What one row measured.
struct Row {
    backend: &'static str,
    streams: usize,
    orders: usize,
    /// Server CPU time over the window, as % of one core.
    server: Option<f64>,
    /// Every `postgres` process's CPU over the window, as % of one core.
    database: Option<f64>,
    check: Result<(), String>,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The local PostgreSQL over its Unix-domain socket when it has one, else over TCP (as
/// the throughput bench connects).
fn default_postgres_url() -> String {
    let dir = "/var/run/postgresql";
    if Path::new(dir).join(".s.PGSQL.5432").exists() {
        format!("postgres:///test?host={dir}&user=postgres")
    } else {
        "postgres://postgres@127.0.0.1:5432/test".into()
    }
}

/// User + system CPU time of the process at `/proc/{pid}`, in the kernel's fixed 100 Hz
/// `USER_HZ` ticks (one tick is 0.1 % of a core over a 10 s window).
fn cpu_ticks(proc_dir: &Path) -> Option<u64> {
    let stat = std::fs::read_to_string(proc_dir.join("stat")).ok()?;
    // Fields after the `(comm)`, which may itself contain spaces: state is the 1st, utime
    // the 12th, stime the 13th.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// CPU ticks of every `postgres` process on this machine.
fn postgres_ticks() -> Option<u64> {
    Some(
        std::fs::read_dir("/proc")
            .ok()?
            .flatten()
            .map(|entry| entry.path())
            .filter(|dir| {
                std::fs::read_to_string(dir.join("comm")).is_ok_and(|c| c.trim() == "postgres")
            })
            .filter_map(|dir| cpu_ticks(&dir))
            .sum(),
    )
}

/// The soft limit on open files of this process (the server inherits it).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// `paynotify_order_watchers` as the server reports it.
async fn watchers(host: &HostProcess) -> Option<f64> {
    let text = host
        .http
        .get(host.url("/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("paynotify_order_watchers ")?.parse().ok())
}

fn order_no(i: usize) -> String {
    format!("E{i:09}")
}

/// One open stream: a task reading it and counting its events.
struct Open {
    reader: tokio::task::JoinHandle<()>,
}

/// Opens `n` streams over the first `orders` orders; each has read its first event when
/// this returns. `events` counts every event read, `ended` the streams that ended.
async fn open_streams(
    host: &HostProcess,
    http: &reqwest::Client,
    n: usize,
    orders: usize,
    events: Arc<AtomicUsize>,
    ended: Arc<AtomicUsize>,
) -> Result<Vec<Open>, String> {
    let opened = futures::stream::iter(0..n)
        .map(|i| {
            let url = host.url(&format!("/api/orders/{}/events", order_no(i % orders)));
            let (http, events, ended) = (http.clone(), events.clone(), ended.clone());
            async move {
                let mut response = http
                    .get(url)
                    .bearer_auth(TOKEN)
                    .send()
                    .await
                    .map_err(|e| format!("stream {i}: {e}"))?;
                if response.status() != 200 {
                    return Err(format!("stream {i}: {}", response.status()));
                }
                let mut buffer = String::new();
                // The first event (the order as it is) before the stream counts as open.
                while !buffer.contains("\n\n") {
                    match response.chunk().await {
                        Ok(Some(chunk)) => buffer.push_str(&String::from_utf8_lossy(&chunk)),
                        _ => return Err(format!("stream {i} ended before its first event")),
                    }
                }
                let count = |text: &str| text.matches("data:").count();
                events.fetch_add(count(&buffer), Ordering::Relaxed);
                let reader = tokio::spawn(async move {
                    while let Ok(Some(chunk)) = response.chunk().await {
                        events
                            .fetch_add(count(&String::from_utf8_lossy(&chunk)), Ordering::Relaxed);
                    }
                    ended.fetch_add(1, Ordering::Relaxed);
                });
                Ok(Open { reader })
            }
        })
        .buffer_unordered(OPENING)
        .collect::<Vec<_>>()
        .await;
    opened.into_iter().collect()
}

async fn run_row(
    backend: &'static str,
    host: &HostProcess,
    scenario: &Scenario,
    seconds: f64,
) -> Row {
    let mut row = Row {
        backend,
        streams: scenario.streams,
        orders: scenario.orders,
        server: None,
        database: None,
        check: Ok(()),
    };
    // One connection per stream, none kept idle: the streams are the load.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let events = Arc::new(AtomicUsize::new(0));
    let ended = Arc::new(AtomicUsize::new(0));
    let open = match open_streams(
        host,
        &http,
        scenario.streams,
        scenario.orders.max(1),
        events.clone(),
        ended.clone(),
    )
    .await
    {
        Ok(open) => open,
        Err(e) => {
            row.check = Err(e);
            return row;
        }
    };
    tokio::time::sleep(SETTLE).await;
    let first_events = events.load(Ordering::Relaxed);
    let pid = host.pid().expect("server running");
    let proc_dir = format!("/proc/{pid}");
    let before = (cpu_ticks(Path::new(&proc_dir)), postgres_ticks());
    let window = Duration::from_secs_f64(seconds);
    tokio::time::sleep(window).await;
    let after = (cpu_ticks(Path::new(&proc_dir)), postgres_ticks());
    // Ticks are 10 ms; % of one core over the window.
    let share = |b: Option<u64>, a: Option<u64>| {
        Some(a?.saturating_sub(b?) as f64 * 0.010 / window.as_secs_f64() * 100.0)
    };
    row.server = share(before.0, after.0);
    if backend == "postgres" {
        row.database = share(before.1, after.1);
    }
    // The gauge appears with the first stream the server has opened: none is none open.
    let counted = watchers(host).await.or(Some(0.0));
    let extra = events.load(Ordering::Relaxed).saturating_sub(first_events);
    let gone = ended.load(Ordering::Relaxed);
    row.check = if gone > 0 {
        Err(format!("{gone} streams ended"))
    } else if counted != Some(scenario.streams as f64) {
        Err(format!(
            "the server counts {counted:?} watchers, not {}",
            scenario.streams
        ))
    } else if extra > 0 {
        Err(format!("{extra} events though no order changed"))
    } else if first_events != scenario.streams {
        Err(format!(
            "{first_events} first events for {} streams",
            scenario.streams
        ))
    } else {
        Ok(())
    };
    for o in open {
        o.reader.abort();
    }
    drop(http);
    // The next row starts from no streams at all.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while watchers(host).await.is_some_and(|w| w > 0.0) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    row
}

async fn run_backend(
    backend: &'static str,
    scenarios: &[Scenario],
    streams: usize,
    seconds: f64,
) -> Vec<Row> {
    let dir = tempfile::tempdir().expect("temp dir");
    let postgres_base =
        std::env::var("PAYNOTIFY_BENCH_POSTGRES_URL").unwrap_or_else(|_| default_postgres_url());
    let schema = format!("t_bench_events_{}", hex::encode(rand::random::<[u8; 6]>()));
    let url = match backend {
        "postgres" => {
            let sep = if postgres_base.contains('?') {
                '&'
            } else {
                '?'
            };
            format!("{postgres_base}{sep}schema={schema}")
        }
        _ => format!("sqlite://{}", dir.path().join("paynotify.db").display()),
    };
    // Room for every stream (the defaults would refuse the bench's own).
    let caps = [
        ("PAYNOTIFY_SERVER_MAX_EVENT_STREAMS", streams + 10),
        (
            "PAYNOTIFY_SERVER_MAX_EVENT_STREAMS_PER_ADDRESS",
            streams + 10,
        ),
    ];
    for (k, v) in caps {
        std::env::set_var(k, v.to_string());
    }
    let host = HostProcess::start(
        &format!("event-streams bench ({backend})"),
        dir.path(),
        &url,
        &[("recharge", "recharge", None)],
        "",
    )
    .await;
    for (k, _) in caps {
        std::env::remove_var(k);
    }
    let orders = scenarios.iter().map(|s| s.orders).max().unwrap_or(0);
    for i in 0..orders {
        host.create_order(json!({
            "type": "recharge", "total_fee": 100, "user_id": format!("u{}", i % 50),
            "provider": "wechat-v2", "out_trade_no": order_no(i),
            "custom": {"recharge_balance": 100}
        }))
        .await;
    }
    let mut rows = Vec::new();
    for s in scenarios {
        eprintln!(
            "event-streams bench: {backend}, {} streams on {} orders",
            s.streams, s.orders
        );
        rows.push(run_row(backend, &host, s, seconds).await);
    }
    drop(host);
    if backend == "postgres" {
        use sqlx::Executor as _;
        let dropped = async {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(&postgres_base)
                .await?;
            pool.execute(format!("DROP SCHEMA IF EXISTS {schema} CASCADE").as_str())
                .await?;
            pool.close().await;
            Ok::<_, sqlx::Error>(())
        }
        .await;
        if let Err(e) = dropped {
            eprintln!("event-streams bench: could not drop schema {schema}: {e}");
        }
    }
    rows
}

fn percent(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.2} %"))
}

fn main() {
    let seconds = 10.0 * env_or("PAYNOTIFY_BENCH_SCALE", 1.0f64);
    let streams = env_or("PAYNOTIFY_BENCH_STREAMS", 1000usize).max(1);
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
    // Each stream is a socket here and one in the server (which inherits this limit).
    if let Some(limit) = open_files_limit() {
        if limit < streams as u64 + 256 {
            eprintln!(
                "event-streams bench: {streams} streams need more open files than this \
                 process may have ({limit}); raise it (ulimit -n) or set PAYNOTIFY_BENCH_STREAMS"
            );
            std::process::exit(2);
        }
    }
    let backends: Vec<&'static str> = match std::env::var("PAYNOTIFY_BENCH_ONLY").as_deref() {
        Err(_) | Ok("") => vec!["sqlite", "postgres"],
        Ok("sqlite") => vec!["sqlite"],
        Ok("postgres" | "postgresql") => vec!["postgres"],
        Ok(other) => {
            eprintln!("PAYNOTIFY_BENCH_ONLY=`{other}`: use `sqlite` or `postgres`");
            std::process::exit(2);
        }
    };
    let scenarios = [
        Scenario {
            streams: 0,
            orders: 0,
        },
        Scenario {
            streams,
            orders: streams,
        },
        Scenario {
            streams,
            orders: (streams / 100).max(1),
        },
    ];
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let rows: Vec<Row> = runtime.block_on(async {
        let mut rows = Vec::new();
        for backend in backends {
            rows.extend(run_backend(backend, &scenarios, streams, seconds).await);
        }
        rows
    });
    println!(
        "\n### Idle order-event streams: server CPU over {seconds:.0} s (one poll every 250 ms)\n"
    );
    println!("| backend | streams | orders watched | server CPU (% of one core) | PostgreSQL CPU (% of one core) | check |");
    println!("|---|---:|---:|---:|---:|---|");
    let mut ok = true;
    for r in &rows {
        let check = match &r.check {
            Ok(()) => "ok".to_owned(),
            Err(e) => {
                ok = false;
                format!("FAILED: {e}")
            }
        };
        println!(
            "| {} | {} | {} | {} | {} | {check} |",
            r.backend,
            r.streams,
            r.orders,
            percent(r.server),
            percent(r.database)
        );
    }
    if !ok {
        std::process::exit(1);
    }
}

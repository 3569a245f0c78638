//! `cargo xtask bench` (or `cargo bench -p paynotify-tests --bench throughput`): verified
//! notifications per second and their latency, measured on the REAL release `paynotify`
//! binary started as a child process, for each backend × provider, at saturation and at
//! 1,000 requests/s offered. Prints one markdown table; asserts nothing about time.
//!
//! Per backend (SQLite file, `synchronous = FULL`; PostgreSQL schema `t_bench_…`) and
//! provider (WeChat Pay v2 MD5, v3 RSA + AES-GCM, Alipay RSA2) it starts a server with
//! `recharge` and nine other handlers loaded, creates the recharge orders through the
//! store API, and drives notifications that were all signed before the clock started:
//!
//! - saturation: a closed loop over `PAYNOTIFY_BENCH_CONNECTIONS` (64) keep-alive
//!   connections, each with one request in flight; latency is send → answer;
//! - 1,000 rps: an open loop, request `i` due at `start + i ms` whatever the answers do,
//!   latency measured from that due time (no coordinated omission: a stall shows up as
//!   the latency of every request scheduled during it).
//!
//! Only the provider's exact success answer counts as success; anything else is an error
//! (re-sent afterwards, as the provider would, before the check). Then the database must
//! show every order paid by its own notification and every user's balance exactly the sum
//! of its orders: otherwise the row says FAILED and the bench exits non-zero.
//!
//! Each provider runs in one or more *variants*, each on a server and database of its own
//! (issue 26: the audit's cost, and the latency with a shadow running):
//!
//! - `audit-on`: the default config (the write audit records every handler write);
//! - `audit-off`: `[audit] enabled = false`;
//! - `shadow`: audit on, and the built `recharge` staged a second time as its candidate
//!   (`recharge.next.wasm` + `recharge.next.toml`), so every payment is also run by the
//!   candidate on the shadow worker (an identical candidate: the cost is the same).
//!
//! A variant must be what it says, or the bench exits non-zero: sampled orders have
//! audited writes with the audit on and none with it off; in `shadow` the candidate ran
//! (`GET /api/admin/plugins/recharge/shadow` counts runs in every phase). The notes under
//! the table give each shadow phase's runs (same / different / failed) and the runs the
//! worker skipped (`paynotify_shadow_runs_total{result="skipped"}`), and compare audit on
//! with off at saturation and the shadow's p99 at 1,000 rps with the issue's targets
//! (printed, not asserted). A build whose report has no candidate (`candidate: null`)
//! is noted, not failed.
//!
//! Environment: `PAYNOTIFY_BENCH_BIN` (the server binary; default `target/release/paynotify`),
//! `PAYNOTIFY_BENCH_PLUGINS` (built plugins; default `target/plugins`),
//! `PAYNOTIFY_BENCH_SCALE` (multiplies the notifications per row), `PAYNOTIFY_BENCH_ONLY`
//! (`sqlite` or `postgres`), `PAYNOTIFY_BENCH_PROVIDERS` (e.g. `wechat-v2,alipay`; default
//! `wechat-v2,wechat-v3,alipay`), `PAYNOTIFY_BENCH_VARIANTS` (e.g. `audit-on,audit-off`, for
//! every provider; default: `audit-on,audit-off,shadow` for the first provider and
//! `audit-on` for the others), `PAYNOTIFY_BENCH_CONNECTIONS`, `PAYNOTIFY_BENCH_POSTGRES_URL`
//! (default: database `test` over the local Unix socket if there is one, else
//! `postgres://postgres@127.0.0.1:5432/test`). `PAYNOTIFY_{SECTION}_{KEY}` variables reach
//! the server as config overrides (e.g. `PAYNOTIFY_DATABASE_BATCH_MAX=1`;
//! `PAYNOTIFY_AUDIT_ENABLED` is refused: the variants set the audit).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST};
use hyper::StatusCode;
use paynotify::config::{DatabaseConfig, SqliteSynchronous};
use paynotify::store::{
    status, NewOrder, NotificationFilter, Order, OrderCursor, OrderFilter, Store, Verdict,
};
use paynotify_tests::process::HostProcess;
use paynotify_tests::{alipay, wechat_v2, wechat_v3};
use rsa::RsaPrivateKey;
use serde_json::{json, Value};

/// WeChat Pay v2's success answer, byte for byte (SPEC §4).
const V2_SUCCESS: &[u8] =
    b"<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>";

/// Alipay's form content type.
const FORM: &str = "application/x-www-form-urlencoded; charset=utf-8";

/// The handlers every bench server loads: (type, built plugin). `recharge` takes the
/// load; the others are there so RSS is measured with ten plugins loaded.
const PLUGINS: &[(&str, &str)] = &[
    ("recharge", "recharge"),
    ("goods", "goods"),
    ("vip", "vip"),
    ("notify-backend", "notify-backend"),
    ("points", "recharge"),
    ("coupon", "recharge"),
    ("gift", "goods"),
    ("course", "vip"),
    ("membership", "vip"),
    ("webhook", "notify-backend"),
];

/// A database the server runs on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite (FULL)",
            Backend::Postgres => "PostgreSQL",
        }
    }
}

/// A payment provider the notifications come from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Provider {
    WechatV2,
    WechatV3,
    Alipay,
}

impl Provider {
    const ALL: [Provider; 3] = [Provider::WechatV2, Provider::WechatV3, Provider::Alipay];

    /// The provider's name in orders, URLs and `PAYNOTIFY_BENCH_PROVIDERS`.
    fn name(self) -> &'static str {
        match self {
            Provider::WechatV2 => "wechat-v2",
            Provider::WechatV3 => "wechat-v3",
            Provider::Alipay => "alipay",
        }
    }

    /// What the table calls it.
    fn label(self) -> &'static str {
        match self {
            Provider::WechatV2 => "WeChat v2 (MD5)",
            Provider::WechatV3 => "WeChat v3 (RSA + AES-GCM)",
            Provider::Alipay => "Alipay (RSA2)",
        }
    }

    /// Short prefix for order numbers and schema names.
    fn tag(self) -> &'static str {
        match self {
            Provider::WechatV2 => "v2",
            Provider::WechatV3 => "v3",
            Provider::Alipay => "ali",
        }
    }

    /// Notifications at saturation before `PAYNOTIFY_BENCH_SCALE`: a few seconds each
    /// (the RSA rows are slower to sign and to serve).
    fn saturation_n(self) -> usize {
        match self {
            Provider::WechatV2 => 6000,
            Provider::WechatV3 | Provider::Alipay => 3000,
        }
    }

    /// Whether `(status, body)` is exactly this provider's success answer.
    fn is_success(self, status: StatusCode, body: &[u8]) -> bool {
        match self {
            Provider::WechatV2 => status == StatusCode::OK && body == V2_SUCCESS,
            Provider::WechatV3 => status == StatusCode::NO_CONTENT && body.is_empty(),
            Provider::Alipay => status == StatusCode::OK && body == b"success",
        }
    }
}

/// Which load a row measures.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Load {
    /// Closed loop, every connection always busy.
    Saturation,
    /// Open loop at a fixed offered rate.
    Rate,
}

/// What a server runs beside the load: the write audit on or off, or a shadow.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    /// The default config: the audit records every handler write.
    AuditOn,
    /// `[audit] enabled = false`.
    AuditOff,
    /// Audit on, and recharge's candidate staged: every payment is run again beside it.
    Shadow,
}

impl Variant {
    const ALL: [Variant; 3] = [Variant::AuditOn, Variant::AuditOff, Variant::Shadow];

    /// Its name in `PAYNOTIFY_BENCH_VARIANTS`.
    fn name(self) -> &'static str {
        match self {
            Variant::AuditOn => "audit-on",
            Variant::AuditOff => "audit-off",
            Variant::Shadow => "shadow",
        }
    }

    /// What the table calls it.
    fn label(self) -> &'static str {
        match self {
            Variant::AuditOn => "audit on",
            Variant::AuditOff => "audit off",
            Variant::Shadow => "shadow (audit on)",
        }
    }

    /// Short suffix for schema names.
    fn tag(self) -> &'static str {
        match self {
            Variant::AuditOn => "on",
            Variant::AuditOff => "off",
            Variant::Shadow => "sh",
        }
    }

    /// Whether the write audit is on.
    fn audited(self) -> bool {
        self != Variant::AuditOff
    }

    /// Config it adds to the bench's.
    fn config(self) -> &'static str {
        match self {
            Variant::AuditOff => "\n[audit]\nenabled = false\n",
            Variant::AuditOn | Variant::Shadow => "",
        }
    }

    /// The handlers its server loads: [`PLUGINS`], and for `shadow` the built recharge
    /// again as recharge's candidate (`recharge.next.wasm` + `recharge.next.toml`).
    fn plugins(self) -> Vec<(&'static str, &'static str, Option<&'static str>)> {
        let mut plugins = plugin_list();
        if self == Variant::Shadow {
            plugins.push((CANDIDATE, "recharge", None));
        }
        plugins
    }
}

/// The type (file stem) the `shadow` variant's candidate is installed as.
const CANDIDATE: &str = "recharge.next";

/// What the environment asks for.
struct Settings {
    bin: PathBuf,
    scale: f64,
    backends: Vec<Backend>,
    providers: Vec<Provider>,
    /// `PAYNOTIFY_BENCH_VARIANTS`, for every provider; `None`: [`Settings::variants`]'s
    /// default.
    variants: Option<Vec<Variant>>,
    connections: usize,
    rate: u32,
    postgres_base: String,
}

impl Settings {
    fn from_env() -> Settings {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        let bin = std::env::var_os("PAYNOTIFY_BENCH_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| target.join("release").join("paynotify"));
        let scale = match std::env::var("PAYNOTIFY_BENCH_SCALE") {
            Ok(s) => match s.parse::<f64>() {
                Ok(v) if v > 0.0 && v.is_finite() => v,
                _ => fail(&format!(
                    "PAYNOTIFY_BENCH_SCALE=`{s}`: a positive number, e.g. 0.2 or 3"
                )),
            },
            Err(_) => 1.0,
        };
        let backends = match std::env::var("PAYNOTIFY_BENCH_ONLY").as_deref() {
            Err(_) | Ok("") => vec![Backend::Sqlite, Backend::Postgres],
            Ok("sqlite") => vec![Backend::Sqlite],
            Ok("postgres" | "postgresql") => vec![Backend::Postgres],
            Ok(other) => fail(&format!(
                "PAYNOTIFY_BENCH_ONLY=`{other}`: use `sqlite` or `postgres`"
            )),
        };
        let providers = match std::env::var("PAYNOTIFY_BENCH_PROVIDERS") {
            Err(_) => Provider::ALL.to_vec(),
            Ok(list) => {
                let mut chosen = Vec::new();
                for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    match Provider::ALL.iter().find(|p| p.name() == name) {
                        Some(p) if !chosen.contains(p) => chosen.push(*p),
                        Some(_) => {}
                        None => fail(&format!(
                            "PAYNOTIFY_BENCH_PROVIDERS: unknown provider `{name}` \
                             (wechat-v2, wechat-v3, alipay)"
                        )),
                    }
                }
                if chosen.is_empty() {
                    fail("PAYNOTIFY_BENCH_PROVIDERS names no provider");
                }
                chosen
            }
        };
        let variants = std::env::var("PAYNOTIFY_BENCH_VARIANTS")
            .ok()
            .map(|list| parse_variants(&list));
        if let Ok(v) = std::env::var("PAYNOTIFY_AUDIT_ENABLED") {
            fail(&format!(
                "PAYNOTIFY_AUDIT_ENABLED=`{v}` would override every variant's audit setting: \
                 unset it and choose with PAYNOTIFY_BENCH_VARIANTS (audit-on, audit-off, shadow)"
            ));
        }
        let connections = match std::env::var("PAYNOTIFY_BENCH_CONNECTIONS") {
            Ok(s) => match s.parse::<usize>() {
                Ok(c) if (1..=1024).contains(&c) => c,
                _ => fail(&format!(
                    "PAYNOTIFY_BENCH_CONNECTIONS=`{s}`: a whole number from 1 to 1024"
                )),
            },
            Err(_) => 64,
        };
        Settings {
            bin,
            scale,
            backends,
            providers,
            variants,
            connections,
            rate: 1000,
            postgres_base: std::env::var("PAYNOTIFY_BENCH_POSTGRES_URL")
                .unwrap_or_else(|_| default_postgres_url()),
        }
    }

    /// The variants `provider` runs in: `PAYNOTIFY_BENCH_VARIANTS` if set; else all of
    /// them for the first provider and `audit-on` for the others, so that the default
    /// bench does not take three times as long.
    fn variants(&self, provider: Provider) -> Vec<Variant> {
        match &self.variants {
            Some(chosen) => chosen.clone(),
            None if self.providers.first() == Some(&provider) => Variant::ALL.to_vec(),
            None => vec![Variant::AuditOn],
        }
    }

    /// Notifications for `load` with `provider`, scaled.
    fn n(&self, provider: Provider, load: Load) -> usize {
        let base = match load {
            Load::Saturation => provider.saturation_n(),
            // Three seconds at 1,000/s: p99 then rests on 30 samples.
            Load::Rate => 3000,
        };
        ((base as f64 * self.scale).round() as usize).max(100)
    }
}

/// `PAYNOTIFY_BENCH_VARIANTS`' comma list, in its order, without repeats.
fn parse_variants(list: &str) -> Vec<Variant> {
    let mut chosen = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match Variant::ALL.iter().find(|v| v.name() == name) {
            Some(v) if !chosen.contains(v) => chosen.push(*v),
            Some(_) => {}
            None => fail(&format!(
                "PAYNOTIFY_BENCH_VARIANTS: unknown variant `{name}` (audit-on, audit-off, shadow)"
            )),
        }
    }
    if chosen.is_empty() {
        fail("PAYNOTIFY_BENCH_VARIANTS names no variant (audit-on, audit-off, shadow)");
    }
    chosen
}

/// The local PostgreSQL over its Unix-domain socket when it has one, as a host on the
/// database's machine would connect (a round trip then costs no TCP/IP stack on either
/// side: measured here, ~13 % more notifications/s than loopback TCP), else over TCP.
fn default_postgres_url() -> String {
    let dir = "/var/run/postgresql";
    if Path::new(dir).join(".s.PGSQL.5432").exists() {
        format!("postgres:///test?host={dir}&user=postgres")
    } else {
        "postgres://postgres@127.0.0.1:5432/test".into()
    }
}

/// How the bench reaches PostgreSQL, for the table's legend (not the URL: it may hold
/// a password).
fn postgres_transport(url: &str) -> &'static str {
    if url.contains("host=/") || url.contains("host=%2F") || url.contains("://%2F") {
        "its Unix-domain socket"
    } else {
        "TCP"
    }
}

/// Prints `message` and exits non-zero (bad settings, missing build).
fn fail(message: &str) -> ! {
    eprintln!("throughput bench: {message}");
    std::process::exit(2)
}

/// One notification, signed before any clock starts, and the order it pays.
struct Signed {
    out_trade_no: String,
    user_id: String,
    fee: i64,
    transaction_id: String,
    wire: Wire,
}

/// A request exactly as the provider sends it.
struct Wire {
    path: &'static str,
    content_type: &'static str,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
}

/// The orders and notifications of one load phase.
struct Batch {
    load: Load,
    notes: Arc<Vec<Signed>>,
}

/// Signs `n` notifications for `provider`; order `i` belongs to one of `n / 8` users
/// and has an amount that varies with `i`, so a lost or doubled credit changes a balance.
fn sign_batch(provider: Provider, load: Load, n: usize, key: &RsaPrivateKey) -> Vec<Signed> {
    let phase = match load {
        Load::Saturation => "S",
        Load::Rate => "R",
    };
    let users = (n / 8).max(1);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = n.div_ceil(threads);
    let timestamp = wechat_v3::now();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..n)
            .step_by(chunk.max(1))
            .map(|from| {
                scope.spawn(move || {
                    (from..(from + chunk).min(n))
                        .map(|i| {
                            let out_trade_no = format!("{}{phase}{i:08}", provider.tag());
                            let transaction_id = format!("TX{}{phase}{i:010}", provider.tag());
                            let user_id = format!("{}{phase}u{}", provider.tag(), i % users);
                            let fee = 100 + (i % 37) as i64;
                            let wire = sign_one(
                                provider,
                                &out_trade_no,
                                fee,
                                &transaction_id,
                                key,
                                timestamp,
                            );
                            Signed {
                                out_trade_no,
                                user_id,
                                fee,
                                transaction_id,
                                wire,
                            }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("signing thread"))
            .collect()
    })
}

/// The request a provider would send for one paid order.
fn sign_one(
    provider: Provider,
    out_trade_no: &str,
    fee: i64,
    transaction_id: &str,
    key: &RsaPrivateKey,
    timestamp: i64,
) -> Wire {
    match provider {
        Provider::WechatV2 => Wire {
            path: "/notify/wechat-v2",
            content_type: "text/xml",
            headers: Vec::new(),
            body: wechat_v2::paid_xml(out_trade_no, fee, transaction_id).into(),
        },
        Provider::WechatV3 => {
            let transaction = wechat_v3::transaction(
                wechat_v3::APPID_A,
                wechat_v3::MCH_ID_A,
                out_trade_no,
                fee,
                transaction_id,
                "SUCCESS",
            );
            let body = wechat_v3::body("TRANSACTION.SUCCESS", &transaction, wechat_v3::API_V3_KEY);
            let headers = wechat_v3::headers(key, wechat_v3::PUB_KEY_ID_A, timestamp, &body)
                .into_iter()
                .map(|(k, v)| {
                    (
                        HeaderName::try_from(k).expect("header name"),
                        HeaderValue::try_from(v).expect("header value"),
                    )
                })
                .collect();
            Wire {
                path: "/notify/wechat-v3",
                content_type: "application/json",
                headers,
                body: body.into(),
            }
        }
        Provider::Alipay => {
            let amount = format!("{}.{:02}", fee / 100, fee % 100);
            let fields = alipay::paid(alipay::APP_ID_A, out_trade_no, &amount, transaction_id);
            Wire {
                path: "/notify/alipay",
                content_type: FORM,
                headers: Vec::new(),
                body: alipay::body(&fields, key).into(),
            }
        }
    }
}

/// One keep-alive HTTP/1.1 connection to the server; reconnects when the server closed it.
struct Conn {
    addr: std::net::SocketAddr,
    host: HeaderValue,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    async fn open(addr: std::net::SocketAddr) -> Result<Conn, String> {
        let mut conn = Conn {
            addr,
            host: HeaderValue::try_from(addr.to_string()).map_err(|e| e.to_string())?,
            sender: None,
        };
        conn.connect().await?;
        Ok(conn)
    }

    async fn connect(&mut self) -> Result<(), String> {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        self.sender = Some(sender);
        Ok(())
    }

    /// Sends `note`; returns the answer's status and body.
    async fn send(&mut self, wire: &Wire) -> Result<(StatusCode, Bytes), String> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            self.connect().await?;
        }
        let sender = self.sender.as_mut().ok_or("no connection")?;
        let mut request = hyper::Request::post(wire.path)
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, wire.content_type)
            .body(Full::new(wire.body.clone()))
            .map_err(|e| e.to_string())?;
        for (k, v) in &wire.headers {
            request.headers_mut().insert(k.clone(), v.clone());
        }
        let answer = async {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        }
        .await;
        answer.map_err(|e| {
            // The connection is unusable after an error: the next send opens another.
            self.sender = None;
            e.to_string()
        })
    }
}

/// What one load phase saw.
struct Outcome {
    /// From the first send (or due time) to the last answer.
    elapsed: Duration,
    /// One per notification.
    latencies: Vec<Duration>,
    /// Indices whose answer was not the exact success answer.
    failed: Vec<usize>,
    /// A few of those answers, for the log.
    samples: Vec<String>,
}

/// What one worker saw.
#[derive(Default)]
struct WorkerResult {
    latencies: Vec<Duration>,
    failed: Vec<usize>,
    samples: Vec<String>,
}

impl WorkerResult {
    fn record(
        &mut self,
        provider: Provider,
        i: usize,
        latency: Duration,
        answer: Result<(StatusCode, Bytes), String>,
    ) {
        self.latencies.push(latency);
        let ok = matches!(&answer, Ok((s, b)) if provider.is_success(*s, b));
        if !ok {
            self.failed.push(i);
            if self.samples.len() < 3 {
                self.samples.push(match answer {
                    Ok((s, b)) => format!("{s} {}", String::from_utf8_lossy(&b)),
                    Err(e) => format!("no answer: {e}"),
                });
            }
        }
    }
}

async fn open_connections(addr: std::net::SocketAddr, n: usize) -> Vec<Conn> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(
            Conn::open(addr)
                .await
                .unwrap_or_else(|e| panic!("cannot connect to the server at {addr}: {e}")),
        );
    }
    conns
}

fn merge(elapsed: Duration, results: Vec<WorkerResult>) -> Outcome {
    let mut out = Outcome {
        elapsed,
        latencies: Vec::new(),
        failed: Vec::new(),
        samples: Vec::new(),
    };
    for r in results {
        out.latencies.extend(r.latencies);
        out.failed.extend(r.failed);
        out.samples.extend(r.samples);
    }
    out.samples.truncate(3);
    out
}

/// Closed loop: every connection sends its next notification as soon as it has the
/// previous answer, until all are sent.
async fn saturate(provider: Provider, conns: Vec<Conn>, notes: Arc<Vec<Signed>>) -> Outcome {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let (next, notes) = (next.clone(), notes.clone());
            tokio::spawn(async move {
                let mut result = WorkerResult::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(note) = notes.get(i) else { break };
                    let sent = Instant::now();
                    let answer = conn.send(&note.wire).await;
                    result.record(provider, i, sent.elapsed(), answer);
                }
                result
            })
        })
        .collect();
    let results = futures::future::join_all(workers)
        .await
        .into_iter()
        .map(|r| r.expect("load worker"))
        .collect();
    merge(started.elapsed(), results)
}

/// Open loop: notification `i` is due at `start + i / rate`; a pacer thread (OS sleep,
/// finer than tokio's 1 ms timer) releases it then to whichever connection is free, and
/// its latency counts from the due time, so time spent waiting for a free connection or
/// for a late pacer is latency too.
async fn offer(
    provider: Provider,
    conns: Vec<Conn>,
    notes: Arc<Vec<Signed>>,
    rate: u32,
) -> Outcome {
    let interval = Duration::from_secs(1) / rate;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let start = Instant::now() + Duration::from_millis(20);
    let due = move |i: usize| start + interval * i as u32;
    let n = notes.len();
    let pacer = std::thread::spawn(move || {
        for i in 0..n {
            let now = Instant::now();
            if due(i) > now {
                std::thread::sleep(due(i) - now);
            }
            if tx.send(i).is_err() {
                break;
            }
        }
    });
    let workers: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let (rx, notes) = (rx.clone(), notes.clone());
            tokio::spawn(async move {
                let mut result = WorkerResult::default();
                let mut last = start;
                loop {
                    let next = rx.lock().await.recv().await;
                    let Some(i) = next else { break };
                    let answer = conn.send(&notes[i].wire).await;
                    last = Instant::now();
                    result.record(provider, i, last.saturating_duration_since(due(i)), answer);
                }
                (result, last)
            })
        })
        .collect();
    let mut end = start;
    let mut results = Vec::new();
    for w in futures::future::join_all(workers).await {
        let (result, last) = w.expect("load worker");
        end = end.max(last);
        results.push(result);
    }
    pacer.join().expect("pacer thread");
    merge(end.saturating_duration_since(start), results)
}

/// The `p` quantile (0..=1) of `sorted`.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// `VmRSS` / `VmHWM` of `pid`, in MB.
fn proc_status_mb(pid: u32, field: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line[field.len()..]
        .trim()
        .trim_start_matches(':')
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// What the server process has spent so far: CPU time (user + system, from
/// `/proc/{pid}/stat`, in the kernel's fixed 100 Hz `USER_HZ` ticks) and context switches
/// summed over its threads. Per notification these are steadier than wall-clock figures on
/// a shared machine, and the switches count the thread hand-offs the design tries to avoid.
#[derive(Clone, Copy)]
struct Spent {
    cpu: Duration,
    switches: u64,
}

impl Spent {
    /// `None` off Linux or once the process is gone.
    fn of(pid: u32) -> Option<Spent> {
        let ticks = cpu_ticks(Path::new(&format!("/proc/{pid}")))?;
        let mut switches = 0;
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .ok()?
            .flatten()
        {
            let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
                continue; // a thread that ended meanwhile
            };
            switches += status
                .lines()
                .filter(|l| l.contains("ctxt_switches"))
                .filter_map(|l| {
                    l.rsplit(|c: char| c.is_whitespace())
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .sum::<u64>();
        }
        Some(Spent {
            cpu: Duration::from_millis(ticks * 10),
            switches,
        })
    }

    /// Server CPU µs and context switches per notification between `self` and `later`.
    fn per(self, later: Spent, n: usize) -> (f64, f64) {
        let n = n.max(1) as f64;
        (
            later.cpu.saturating_sub(self.cpu).as_secs_f64() * 1e6 / n,
            later.switches.saturating_sub(self.switches) as f64 / n,
        )
    }
}

/// User + system CPU time of the process at `/proc/{pid}`, in the kernel's fixed 100 Hz
/// `USER_HZ` ticks.
fn cpu_ticks(proc_dir: &Path) -> Option<u64> {
    let stat = std::fs::read_to_string(proc_dir.join("stat")).ok()?;
    // Fields after the `(comm)`, which may itself contain spaces: state is the 1st, utime
    // the 12th, stime the 13th.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// CPU time of every `postgres` process on this machine (the server's backends, WAL
/// writer, checkpointer...), or `None` off Linux. The database shares the two cores with
/// the host, so its CPU per notification is as much a cost of the design as the host's.
fn postgres_cpu() -> Option<Duration> {
    let ticks: u64 = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .map(|entry| entry.path())
        .filter(|dir| {
            std::fs::read_to_string(dir.join("comm")).is_ok_and(|c| c.trim() == "postgres")
        })
        .filter_map(|dir| cpu_ticks(&dir))
        .sum();
    Some(Duration::from_millis(ticks * 10))
}

/// Resets `pid`'s peak RSS to its current RSS (Linux `clear_refs` 5), so each phase's
/// `VmHWM` is its own peak; `false` if the kernel refused.
fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// One table row.
struct Row {
    backend: Backend,
    provider: Provider,
    variant: Variant,
    load: Load,
    n: usize,
    per_s: f64,
    p50: Duration,
    p99: Duration,
    errors: usize,
    exact: Result<(), String>,
    rss_rest_mb: Option<f64>,
    rss_peak_mb: Option<f64>,
    /// Server CPU µs and context switches per notification during the phase.
    spent: Option<(f64, f64)>,
    /// PostgreSQL's CPU µs per notification during the phase (PostgreSQL rows only).
    db_cpu: Option<f64>,
    /// What the shadow did during the phase (`shadow` rows only).
    shadow: Option<ShadowPhase>,
    /// Where the server was not the variant it should be (audit, shadow): fails the bench.
    problems: Vec<String>,
}

/// The server's config beyond the support code's (which has the WeChat v2 account): a v3
/// and an Alipay account whose keys were generated in this run, no task worker.
fn extra_config(dir: &Path, key: &RsaPrivateKey) -> String {
    let pem = wechat_v3::public_key_pem(key);
    let pub_path = dir.join("wechatpay_pub.pem");
    let alipay_path = dir.join("alipay_pub.pem");
    std::fs::write(&pub_path, &pem).expect("write key");
    std::fs::write(&alipay_path, &pem).expect("write key");
    format!(
        r#"
[[accounts]]
provider = "wechat-v3"
appid = "{appid}"
mch_id = "{mch_id}"
api_v3_key = "{v3key}"
public_keys = {{ "{pub_id}" = "{pub_path}" }}

[[accounts]]
provider = "alipay"
app_id = "{app_id}"
seller_id = "{seller_id}"
alipay_public_key_file = "{alipay_path}"

[tasks]
enabled = false
"#,
        appid = wechat_v3::APPID_A,
        mch_id = wechat_v3::MCH_ID_A,
        v3key = wechat_v3::API_V3_KEY,
        pub_id = wechat_v3::PUB_KEY_ID_A,
        pub_path = pub_path.display(),
        app_id = alipay::APP_ID_A,
        seller_id = alipay::SELLER_ID_A,
        alipay_path = alipay_path.display(),
    )
}

/// Opens the server's database from the bench: bulk order creation and the final check.
/// On SQLite this connection commits with `synchronous = NORMAL` (setup speed only; the
/// server's own connections keep FULL).
async fn open_store(url: &str) -> Arc<dyn Store> {
    let config = DatabaseConfig {
        url: url.to_owned(),
        max_connections: 16,
        sqlite_synchronous: SqliteSynchronous::Normal,
        ..DatabaseConfig::default()
    };
    paynotify::store::connect(&config)
        .await
        .unwrap_or_else(|e| panic!("cannot open {url}: {e}"))
}

/// Creates every batch's orders, 16 at a time.
async fn create_orders(store: &Arc<dyn Store>, provider: Provider, batches: &[Batch]) {
    let notes = batches.iter().flat_map(|b| b.notes.iter());
    let results: Vec<_> = futures::stream::iter(notes)
        .map(|note| {
            let store = store.clone();
            async move {
                store
                    .create_order(&NewOrder {
                        out_trade_no: note.out_trade_no.clone(),
                        order_type: "recharge".into(),
                        provider: provider.name().into(),
                        account: "default".into(),
                        sub_mchid: None,
                        total_fee: note.fee,
                        user_id: note.user_id.clone(),
                        custom: json!({ "recharge_balance": note.fee }),
                    })
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("{}: {e}", note.out_trade_no))
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
        panic!("cannot create the bench orders: {e}");
    }
}

/// Every recharge order in the database, by number.
async fn all_orders(store: &dyn Store) -> Result<HashMap<String, Order>, String> {
    let mut all = HashMap::new();
    let mut before: Option<OrderCursor> = None;
    loop {
        let page = store
            .list_orders(&OrderFilter {
                order_type: Some("recharge".into()),
                before: before.clone(),
                limit: 500,
                ..OrderFilter::default()
            })
            .await
            .map_err(|e| format!("listing orders: {e}"))?;
        let Some(last) = page.last() else { break };
        before = Some(OrderCursor::after(last));
        all.extend(page.into_iter().map(|o| (o.out_trade_no.clone(), o)));
    }
    Ok(all)
}

/// The ids of the stored notifications whose verdict is `paid`, by order number.
async fn paying_notifications(store: &dyn Store) -> Result<HashMap<String, Vec<i64>>, String> {
    let mut by_order: HashMap<String, Vec<i64>> = HashMap::new();
    let mut before_id = None;
    loop {
        let page = store
            .list_notifications(&NotificationFilter {
                verdict: Some(Verdict::Paid),
                before_id,
                limit: 500,
                ..NotificationFilter::default()
            })
            .await
            .map_err(|e| format!("listing notifications: {e}"))?;
        let Some(last) = page.last() else { break };
        before_id = Some(last.id);
        for n in page {
            if let Some(no) = n.out_trade_no {
                by_order.entry(no).or_default().push(n.id);
            }
        }
    }
    Ok(by_order)
}

/// The database after a phase: every order paid once (exactly one stored notification
/// with verdict `paid`, the one the order names), by its own transaction, its handler
/// succeeded; every user's balance exactly the sum of that user's orders. `Err` says what
/// is wrong (the first few cases).
async fn check_exact(store: &dyn Store, notes: &[Signed]) -> Result<(), String> {
    let orders = all_orders(store).await?;
    let paying = paying_notifications(store).await?;
    let mut wrong = Vec::new();
    let mut expected: HashMap<&str, i64> = HashMap::new();
    for note in notes {
        *expected.entry(note.user_id.as_str()).or_default() += note.fee;
        let Some(o) = orders.get(&note.out_trade_no) else {
            wrong.push(format!("{}: order missing", note.out_trade_no));
            continue;
        };
        if o.status != status::PAID
            || o.handler_status != "succeeded"
            || o.transaction_id.as_deref() != Some(note.transaction_id.as_str())
        {
            wrong.push(format!(
                "{}: status {}, handler {}, transaction {:?}",
                o.out_trade_no, o.status, o.handler_status, o.transaction_id
            ));
        }
        let paid_by = paying
            .get(&note.out_trade_no)
            .map_or(&[][..], Vec::as_slice);
        if paid_by.len() != 1 || o.paid_notification_id != Some(paid_by[0]) {
            wrong.push(format!(
                "{}: paying notifications {paid_by:?}, the order names {:?}",
                o.out_trade_no, o.paid_notification_id
            ));
        }
    }
    let mut users: Vec<_> = expected.into_iter().collect();
    users.sort();
    for (user, want) in users {
        let doc = store
            .get_document("users", user)
            .await
            .map_err(|e| format!("users/{user}: {e}"))?;
        let got = doc
            .as_deref()
            .and_then(|d| serde_json::from_str::<Value>(d).ok())
            .and_then(|v| v["balance"].as_i64());
        if got != Some(want) {
            wrong.push(format!("users/{user}: balance {got:?}, expected {want}"));
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        let n = wrong.len();
        wrong.truncate(3);
        Err(format!("{n} wrong: {}", wrong.join("; ")))
    }
}

/// The shadow report of the bench's loaded type.
const SHADOW_REPORT: &str = "/api/admin/plugins/recharge/shadow";

/// Shadow runs of `recharge` on one server so far: the report's counts summed over its
/// candidate builds, and the runs the worker skipped (too far behind: the metric only).
#[derive(Clone, Copy, Default, Debug)]
struct ShadowCounts {
    runs: i64,
    same: i64,
    different: i64,
    failed: i64,
    skipped: i64,
}

impl ShadowCounts {
    /// The counts added since `earlier`.
    fn since(self, earlier: ShadowCounts) -> ShadowCounts {
        ShadowCounts {
            runs: self.runs - earlier.runs,
            same: self.same - earlier.same,
            different: self.different - earlier.different,
            failed: self.failed - earlier.failed,
            skipped: self.skipped - earlier.skipped,
        }
    }

    /// Payments the shadow dealt with: run or skipped.
    fn seen(self) -> i64 {
        self.runs + self.skipped
    }
}

/// What the shadow did during one phase.
#[derive(Clone, Debug)]
enum ShadowPhase {
    /// No candidate loaded: why (a build without candidate loading reports `candidate: null`).
    NoCandidate(String),
    /// The candidate ran beside `calls` payments.
    Ran {
        candidate: String,
        calls: usize,
        counts: ShadowCounts,
    },
}

/// The server's shadow counts now (the report writes the counts still in memory first).
async fn shadow_counts(host: &HostProcess) -> Result<ShadowCounts, String> {
    let (code, report) = host.api("GET", SHADOW_REPORT, None).await;
    if code != 200 {
        return Err(format!("GET {SHADOW_REPORT}: {code} {report}"));
    }
    let builds = report["builds"]
        .as_array()
        .ok_or_else(|| format!("GET {SHADOW_REPORT}: no `builds` list in {report}"))?;
    let sum = |key: &str| builds.iter().filter_map(|b| b[key].as_i64()).sum::<i64>();
    let metrics = async {
        host.http
            .get(host.url("/metrics"))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await
    }
    .await
    .map_err(|e| format!("GET /metrics: {e}"))?;
    let skipped = paynotify_tests::metric(
        &metrics,
        "paynotify_shadow_runs_total",
        &[("plugin", "recharge"), ("result", "skipped")],
    );
    Ok(ShadowCounts {
        runs: sum("runs"),
        same: sum("same"),
        different: sum("different"),
        failed: sum("failed"),
        // No such series until a run is skipped.
        skipped: skipped.map_or(0, |v| v as i64),
    })
}

/// The build id of the candidate the server loaded from `recharge.next.wasm`, waiting up
/// to 30 s for it. `Ok(Err(why))`: no candidate, and this build cannot load one (the
/// report's `candidate` stays null with no load error): noted, not failed. `Err`: the
/// candidate did not load (a load error, no report): a problem.
async fn staged_candidate(host: &HostProcess) -> Result<Result<String, String>, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, report) = host.api("GET", SHADOW_REPORT, None).await;
        if code != 200 {
            return Err(format!("GET {SHADOW_REPORT}: {code} {report}"));
        }
        if let Some(candidate) = report["candidate"].as_str() {
            return Ok(Ok(candidate.to_owned()));
        }
        if Instant::now() >= deadline {
            let (_, listed) = host.api("GET", "/api/admin/plugins", None).await;
            let error = listed
                .as_array()
                .and_then(|all| all.iter().find(|p| p["type"] == "recharge"))
                .and_then(|p| p["candidate"]["last_error"].as_str().map(str::to_owned));
            return match error {
                Some(e) => Err(format!("{CANDIDATE}.wasm did not load: {e}")),
                None => Ok(Err(format!(
                    "{CANDIDATE}.wasm was staged, but after 30 s the report's `candidate` is \
                     still null with no load error (a build without candidate loading): \
                     nothing was shadowed"
                ))),
            };
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the shadow worker has dealt with `calls` payments more than `before` (run
/// or skipped), or its counts stopped moving for 3 s, or 60 s passed; returns what it
/// did since `before`. Untimed: after the phase's clock stopped.
async fn shadow_settled(
    host: &HostProcess,
    before: ShadowCounts,
    calls: usize,
) -> Result<ShadowCounts, String> {
    let started = Instant::now();
    let mut last = shadow_counts(host).await?.since(before);
    let mut moved = Instant::now();
    while last.seen() < calls as i64
        && moved.elapsed() < Duration::from_secs(3)
        && started.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = shadow_counts(host).await?.since(before);
        if now.seen() != last.seen() {
            moved = Instant::now();
        }
        last = now;
    }
    Ok(last)
}

/// Whether the write audit recorded as `variant` says, on sampled orders (the first and
/// last of each phase): the handler's writes with the audit on, none with it off.
async fn check_audit(
    host: &HostProcess,
    variant: Variant,
    batches: &[Batch],
) -> Result<(), String> {
    let sampled = batches
        .iter()
        .flat_map(|b| [b.notes.first(), b.notes.last()])
        .flatten();
    for note in sampled {
        let path = format!("/api/admin/orders/{}/writes", note.out_trade_no);
        let (code, answer) = host.api("GET", &path, None).await;
        if code != 200 {
            return Err(format!("GET {path}: {code} {answer}"));
        }
        let writes = answer["writes"]
            .as_array()
            .map(Vec::len)
            .ok_or_else(|| format!("GET {path}: no `writes` list in {answer}"))?;
        if variant.audited() && writes == 0 {
            return Err(format!(
                "{}: no audited write, with the audit on",
                note.out_trade_no
            ));
        }
        if !variant.audited() && writes > 0 {
            return Err(format!(
                "{}: {writes} audited writes, with the audit off",
                note.out_trade_no
            ));
        }
    }
    Ok(())
}

/// [`PLUGINS`] as the support code installs them.
fn plugin_list() -> Vec<(&'static str, &'static str, Option<&'static str>)> {
    PLUGINS
        .iter()
        .map(|(t, built)| (*t, *built, None))
        .collect()
}

/// Runs every phase of `provider` on `backend` in `variant` against a fresh server and
/// database; returns its rows.
async fn run_server(
    settings: &Settings,
    backend: Backend,
    provider: Provider,
    variant: Variant,
    key: &RsaPrivateKey,
    batches: &[Batch],
) -> Vec<Row> {
    let dir = tempfile::tempdir().expect("temp dir");
    let schema = format!(
        "t_bench_{}_{}_{}",
        std::process::id(),
        provider.tag(),
        variant.tag()
    );
    let url = match backend {
        Backend::Sqlite => format!("sqlite://{}", dir.path().join("paynotify.db").display()),
        Backend::Postgres => {
            let sep = if settings.postgres_base.contains('?') {
                '&'
            } else {
                '?'
            };
            format!("{}{sep}schema={schema}", settings.postgres_base)
        }
    };
    let plugins = variant.plugins();
    let name = format!("{} {} {}", backend.name(), provider.name(), variant.name());
    eprintln!("throughput bench: {name}: starting the server");
    let config = format!("{}{}", extra_config(dir.path(), key), variant.config());
    let mut host = HostProcess::start(&name, dir.path(), &url, &plugins, &config).await;
    let pid = host.pid().expect("server running");
    let (code, listed) = host.api("GET", "/api/admin/plugins", None).await;
    let loaded = listed
        .as_array()
        .map_or(0, |a| a.iter().filter(|p| p["loaded"] == true).count());
    assert!(
        code == 200 && loaded == PLUGINS.len(),
        "{name}: {loaded} plugins loaded, expected {}: {listed}",
        PLUGINS.len()
    );
    let rss_rest_mb = proc_status_mb(pid, "VmRSS");
    // The shadow variant's candidate, before any load: `None` when the variant has none.
    let mut problems = Vec::new();
    let candidate = match variant {
        Variant::Shadow => match staged_candidate(&host).await {
            Ok(found) => {
                eprintln!("throughput bench: {name}: candidate {found:?}");
                Some(found)
            }
            Err(e) => {
                problems.push(e);
                None
            }
        },
        Variant::AuditOn | Variant::AuditOff => None,
    };

    let store = open_store(&url).await;
    let t = Instant::now();
    create_orders(&store, provider, batches).await;
    eprintln!(
        "throughput bench: {name}: {} orders created in {:.1} s",
        batches.iter().map(|b| b.notes.len()).sum::<usize>(),
        t.elapsed().as_secs_f64()
    );

    let mut rows = Vec::new();
    for batch in batches {
        // Server-wide problems go in every row; this phase's in its own.
        let mut phase_problems = problems.clone();
        let shadow_before = match &candidate {
            Some(Ok(_)) => match shadow_counts(&host).await {
                Ok(counts) => Some(counts),
                Err(e) => {
                    phase_problems.push(e);
                    None
                }
            },
            _ => None,
        };
        let peak_resets = reset_peak_rss(pid);
        let conns = open_connections(host.addr, settings.connections).await;
        let before = Spent::of(pid);
        let db_before = postgres_cpu().filter(|_| backend == Backend::Postgres);
        let outcome = match batch.load {
            Load::Saturation => saturate(provider, conns, batch.notes.clone()).await,
            Load::Rate => offer(provider, conns, batch.notes.clone(), settings.rate).await,
        };
        let spent = before
            .zip(Spent::of(pid))
            .map(|(b, a)| b.per(a, batch.notes.len()));
        let db_cpu = db_before.zip(postgres_cpu()).map(|(b, a)| {
            a.saturating_sub(b).as_secs_f64() * 1e6 / batch.notes.len().max(1) as f64
        });
        // Peak over this phase (over the server's life if the kernel refused the reset).
        let rss_peak_mb = proc_status_mb(pid, "VmHWM").filter(|_| peak_resets || rows.is_empty());
        if !host.running() {
            panic!(
                "{name}: the server exited during the load; its log:\n{}",
                host.log()
            );
        }
        for s in &outcome.samples {
            eprintln!("throughput bench: {name}: unexpected answer: {s}");
        }
        // A provider re-sends what was not acknowledged: so does the bench (untimed),
        // then the database must be exact.
        let mut retry = Conn::open(host.addr).await.expect("connect for retries");
        let mut unresolved = 0;
        for &i in &outcome.failed {
            let mut ok = false;
            for _ in 0..3 {
                if let Ok((s, b)) = retry.send(&batch.notes[i].wire).await {
                    if provider.is_success(s, &b) {
                        ok = true;
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            unresolved += usize::from(!ok);
        }
        let exact = match check_exact(store.as_ref(), &batch.notes).await {
            Ok(()) if unresolved > 0 => Err(format!(
                "{unresolved} notifications never acknowledged after 3 re-sends"
            )),
            other => other,
        };
        if let Err(e) = &exact {
            eprintln!("throughput bench: {name} {:?}: FAILED: {e}", batch.load);
        }
        let shadow = match (&candidate, shadow_before) {
            (Some(Ok(build)), Some(before)) => {
                match shadow_settled(&host, before, batch.notes.len()).await {
                    Ok(counts) => {
                        if counts.runs == 0 {
                            phase_problems.push(format!(
                                "candidate {build} loaded, but no shadow run in this phase"
                            ));
                        }
                        Some(ShadowPhase::Ran {
                            candidate: build.clone(),
                            calls: batch.notes.len(),
                            counts,
                        })
                    }
                    Err(e) => {
                        phase_problems.push(e);
                        None
                    }
                }
            }
            (Some(Err(why)), _) => Some(ShadowPhase::NoCandidate(why.clone())),
            _ => None,
        };
        if let Some(s) = &shadow {
            eprintln!("throughput bench: {name} {:?}: shadow {s:?}", batch.load);
        }
        let mut latencies = outcome.latencies;
        latencies.sort();
        let n = batch.notes.len();
        let row = Row {
            backend,
            provider,
            variant,
            load: batch.load,
            n,
            per_s: n as f64 / outcome.elapsed.as_secs_f64().max(1e-9),
            p50: percentile(&latencies, 0.5),
            p99: percentile(&latencies, 0.99),
            errors: outcome.failed.len(),
            exact,
            rss_rest_mb,
            rss_peak_mb,
            spent,
            db_cpu,
            shadow,
            problems: phase_problems,
        };
        eprintln!(
            "throughput bench: {name} {:?}: {n} in {:.2} s, {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
            batch.load,
            outcome.elapsed.as_secs_f64(),
            row.per_s,
            row.p50.as_secs_f64() * 1e3,
            row.p99.as_secs_f64() * 1e3,
            row.errors
        );
        rows.push(row);
    }
    if let Err(e) = check_audit(&host, variant, batches).await {
        eprintln!("throughput bench: {name}: not the variant it should be: {e}");
        for row in &mut rows {
            row.problems.push(e.clone());
        }
    }
    drop(store);
    host.kill();
    if backend == Backend::Postgres {
        drop_schema(&settings.postgres_base, &schema).await;
    }
    rows
}

/// Drops the bench's schema (best effort: a leftover `t_…` schema is also dropped by the
/// next `cargo xtask test`).
async fn drop_schema(base: &str, schema: &str) {
    use sqlx::Executor as _;
    let dropped = async {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(base)
            .await?;
        pool.execute(format!("DROP SCHEMA IF EXISTS {schema} CASCADE").as_str())
            .await?;
        pool.close().await;
        Ok::<_, sqlx::Error>(())
    }
    .await;
    if let Err(e) = dropped {
        eprintln!("throughput bench: could not drop schema {schema}: {e}");
    }
}

/// `1000` → `1,000`.
fn thousands(n: u32) -> String {
    if n >= 1000 {
        format!("{},{:03}", n / 1000, n % 1000)
    } else {
        n.to_string()
    }
}

fn print_table(settings: &Settings, rows: &[Row]) {
    println!();
    println!(
        "Verified notifications through the release `paynotify` binary (recharge handler, \
         10 plugins loaded); saturation = closed loop on {} keep-alive connections; \
         1,000 rps = open loop, latency from the scheduled send time. RSS = at rest after \
         start / peak during the phase. CPU and switches = the server process's CPU time and \
         context switches (all threads) per notification during the phase; DB CPU = every \
         `postgres` process's CPU time per notification (PostgreSQL rows; reached over {}). \
         Variant: audit on = the default config (every handler write recorded in the \
         payment's transaction); audit off = `[audit] enabled = false`; shadow = audit on \
         and an identical recharge build staged as `recharge.next.wasm`, run beside every \
         payment on the shadow worker. Each variant has its own server and database.",
        settings.connections,
        postgres_transport(&settings.postgres_base)
    );
    println!();
    println!(
        "| backend | provider | variant | load | N | notif/s | p50 ms | p99 ms | errors | exact | RSS MB | CPU µs | switches | DB CPU µs |"
    );
    println!("|---|---|---|---|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|");
    let mb = |v: Option<f64>| v.map_or("?".to_owned(), |v| format!("{v:.0}"));
    for r in ordered(rows) {
        let load = load_label(settings, r.load);
        println!(
            "| {} | {} | {} | {load} | {} | {:.0} | {:.2} | {:.2} | {} | {} | {} / {} | {} | {} | {} |",
            r.backend.name(),
            r.provider.label(),
            r.variant.label(),
            r.n,
            r.per_s,
            r.p50.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3,
            r.errors,
            if r.exact.is_ok() { "yes" } else { "FAILED" },
            mb(r.rss_rest_mb),
            mb(r.rss_peak_mb),
            r.spent.map_or("?".to_owned(), |(cpu, _)| format!("{cpu:.0}")),
            r.spent.map_or("?".to_owned(), |(_, sw)| format!("{sw:.1}")),
            r.db_cpu.map_or("–".to_owned(), |c| format!("{c:.0}")),
        );
    }
    print_notes(settings, rows);
}

/// What the table calls `load`.
fn load_label(settings: &Settings, load: Load) -> String {
    match load {
        Load::Saturation => format!("saturation ({} conn)", settings.connections),
        Load::Rate => format!("{} rps", thousands(settings.rate)),
    }
}

/// `rows` in table order: backend, provider, variant, load.
fn ordered(rows: &[Row]) -> Vec<&Row> {
    let mut out = Vec::with_capacity(rows.len());
    for backend in [Backend::Sqlite, Backend::Postgres] {
        for provider in Provider::ALL {
            for variant in Variant::ALL {
                for load in [Load::Saturation, Load::Rate] {
                    out.extend(rows.iter().filter(|r| {
                        r.backend == backend
                            && r.provider == provider
                            && r.variant == variant
                            && r.load == load
                    }));
                }
            }
        }
    }
    out
}

/// The notes under the table: audit on vs off at saturation, the shadow's p99 at
/// 1,000 rps (against issue 26's targets; printed, never asserted), what each shadow phase
/// ran, and every row whose server was not the variant it should be.
fn print_notes(settings: &Settings, rows: &[Row]) {
    let find = |r: &Row, variant: Variant, load: Load| {
        rows.iter().find(|o| {
            o.backend == r.backend
                && o.provider == r.provider
                && o.variant == variant
                && o.load == load
        })
    };
    let cpu = |r: &Row| r.spent.map_or("?".to_owned(), |(c, _)| format!("{c:.0}"));
    let mut notes = Vec::new();
    for on in ordered(rows)
        .into_iter()
        .filter(|r| r.variant == Variant::AuditOn && r.load == Load::Saturation)
    {
        let Some(off) = find(on, Variant::AuditOff, Load::Saturation) else {
            continue;
        };
        notes.push(format!(
            "{} {}, saturation: audit on {:.0}/s vs off {:.0}/s: {:+.1} % (target: within \
             10 % of off); server CPU per notification {} vs {} µs",
            on.backend.name(),
            on.provider.label(),
            on.per_s,
            off.per_s,
            (on.per_s / off.per_s.max(1e-9) - 1.0) * 100.0,
            cpu(on),
            cpu(off),
        ));
    }
    for r in ordered(rows)
        .into_iter()
        .filter(|r| r.variant == Variant::Shadow)
    {
        let what = format!(
            "{} {}, shadow, {}",
            r.backend.name(),
            r.provider.label(),
            load_label(settings, r.load)
        );
        let target = match (r.load, find(r, Variant::AuditOn, r.load)) {
            (Load::Rate, Some(on)) => format!(
                "p99 {:.2} ms (target ≤ 10 ms; audit on without a shadow: {:.2} ms); ",
                r.p99.as_secs_f64() * 1e3,
                on.p99.as_secs_f64() * 1e3
            ),
            (Load::Rate, None) => {
                format!("p99 {:.2} ms (target ≤ 10 ms); ", r.p99.as_secs_f64() * 1e3)
            }
            (Load::Saturation, Some(on)) => {
                format!("{:.0}/s vs {:.0}/s without a shadow; ", r.per_s, on.per_s)
            }
            (Load::Saturation, None) => String::new(),
        };
        let ran = match &r.shadow {
            Some(ShadowPhase::Ran {
                candidate,
                calls,
                counts,
            }) => format!(
                "candidate `{candidate}`: of {calls} payments, {} shadow runs ({} same, {} \
                 different, {} failed), skipped because the shadow worker's queue was full: {}{}",
                counts.runs,
                counts.same,
                counts.different,
                counts.failed,
                counts.skipped,
                if counts.seen() == *calls as i64 {
                    String::new()
                } else {
                    format!("; {} not accounted for", *calls as i64 - counts.seen())
                }
            ),
            Some(ShadowPhase::NoCandidate(why)) => format!("no candidate: {why}"),
            None => "no shadow counts (see the problems below)".to_owned(),
        };
        notes.push(format!("{what}: {target}{ran}"));
    }
    for r in ordered(rows).into_iter().filter(|r| !r.problems.is_empty()) {
        notes.push(format!(
            "NOT THE VARIANT IT SHOULD BE: {} {} {}, {}: {}",
            r.backend.name(),
            r.provider.label(),
            r.variant.label(),
            load_label(settings, r.load),
            r.problems.join("; ")
        ));
    }
    if !notes.is_empty() {
        println!();
        for note in notes {
            println!("- {note}");
        }
    }
}

fn main() {
    let settings = Settings::from_env();
    if !settings.bin.is_file() {
        fail(&format!(
            "{} is missing: run `cargo xtask bench`, or `cargo build --release -p paynotify \
             --bin paynotify` first, or point PAYNOTIFY_BENCH_BIN at a paynotify binary",
            settings.bin.display()
        ));
    }
    // The support code starts `PAYNOTIFY_BIN` and installs plugins from
    // `PAYNOTIFY_TEST_PLUGINS`; all servers share one compiled-plugin cache. Set before
    // any thread exists.
    let cache = tempfile::tempdir().expect("temp dir");
    std::env::set_var("PAYNOTIFY_BIN", &settings.bin);
    std::env::set_var("PAYNOTIFY_PLUGINS_CACHE_DIR", cache.path());
    if let Some(dir) = std::env::var_os("PAYNOTIFY_BENCH_PLUGINS") {
        std::env::set_var("PAYNOTIFY_TEST_PLUGINS", dir);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let rows = runtime.block_on(run(&settings));
    print_table(&settings, &rows);
    let failed = rows.iter().filter(|r| r.exact.is_err()).count();
    let wrong_variant = rows.iter().filter(|r| !r.problems.is_empty()).count();
    if failed > 0 {
        eprintln!("throughput bench: {failed} rows FAILED the database check");
    }
    if wrong_variant > 0 {
        eprintln!(
            "throughput bench: {wrong_variant} rows ran on a server that was not the variant \
             it should be (see the notes under the table)"
        );
    }
    if failed > 0 || wrong_variant > 0 {
        std::process::exit(1);
    }
}

/// Signed v3 notifications older than this are signed again before a server uses them:
/// the host accepts a timestamp up to 5 minutes old, and one server's run takes well under 3.
const V3_RESIGN_AFTER: Duration = Duration::from_secs(120);

/// Both phases' notifications of a provider, and when their signing started.
struct SignedPhases {
    at: Instant,
    batches: Vec<Batch>,
}

/// Signs both phases' notifications for `provider`.
fn sign_batches(settings: &Settings, provider: Provider, key: &RsaPrivateKey) -> SignedPhases {
    let t = Instant::now();
    let batches: Vec<Batch> = [Load::Saturation, Load::Rate]
        .into_iter()
        .map(|load| Batch {
            load,
            notes: Arc::new(sign_batch(provider, load, settings.n(provider, load), key)),
        })
        .collect();
    eprintln!(
        "throughput bench: {}: signed {} notifications in {:.1} s",
        provider.name(),
        batches.iter().map(|b| b.notes.len()).sum::<usize>(),
        t.elapsed().as_secs_f64()
    );
    SignedPhases { at: t, batches }
}

async fn run(settings: &Settings) -> Vec<Row> {
    let started = Instant::now();
    eprintln!("throughput bench: generating the test RSA key");
    let key = RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("RSA key");
    // One start compiles the plugins into the shared cache, so every row's RSS at rest is
    // that of a host loading them from it (as after a restart), not the first one's
    // compiler memory.
    {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("warm-up.db").display());
        let extra = extra_config(dir.path(), &key);
        let mut host = HostProcess::start(
            "plugin cache warm-up",
            dir.path(),
            &url,
            &plugin_list(),
            &extra,
        )
        .await;
        host.kill();
    }
    let mut rows = Vec::new();
    for &provider in &settings.providers {
        // Signed once per provider, used by each backend × variant (each has its own
        // database); signed again when v3's timestamps could leave their 5 minutes.
        let mut signed = sign_batches(settings, provider, &key);
        for &backend in &settings.backends {
            // One variant after the other on a backend: the rows compared are close in time.
            for variant in settings.variants(provider) {
                if provider == Provider::WechatV3 && signed.at.elapsed() > V3_RESIGN_AFTER {
                    signed = sign_batches(settings, provider, &key);
                }
                let rows_now =
                    run_server(settings, backend, provider, variant, &key, &signed.batches).await;
                rows.extend(rows_now);
            }
        }
    }
    eprintln!(
        "throughput bench: done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    rows
}

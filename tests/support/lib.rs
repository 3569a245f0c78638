//! Test support: start the real paynotify server on a loopback port with real wasm
//! handlers, and speak to it the way providers and merchants do.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

pub mod alipay;
pub mod alipay_cert;
pub mod browser;
pub mod bulk;
pub mod cloudpay;
pub mod fake_provider;
pub mod pay_alipay;
pub mod pay_wechat_v2;
pub mod pay_wechat_v3;
pub mod pg_cluster;
pub mod process;
pub mod signing;
pub mod small_disk;
pub mod staging;
pub mod wechat_certs;
pub mod wechat_v2;
pub mod wechat_v3;
pub mod wechat_v3_partner;
pub mod wechat_xpay;

/// The API token the test servers use.
pub const TOKEN: &str = "test-token";

/// The built handler `name` (e.g. `recharge`), as `cargo xtask test` leaves it.
pub fn plugin_wasm(name: &str) -> PathBuf {
    let dir = std::env::var_os("PAYNOTIFY_TEST_PLUGINS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins"));
    let path = dir.join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo xtask test`, which builds the plugins first",
        path.display()
    );
    path
}

/// The manifest shipped with handler `name`, if any.
pub fn plugin_manifest(name: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../plugins/{name}/{name}.toml"));
    p.exists().then_some(p)
}

/// The backend the tests run on: `PAYNOTIFY_TEST_DATABASE` = `sqlite` (the default) or
/// `postgres`.
pub fn test_backend() -> &'static str {
    match std::env::var("PAYNOTIFY_TEST_DATABASE").as_deref() {
        Ok("postgres" | "postgresql") => "postgres",
        Ok("sqlite") | Ok("") | Err(_) => "sqlite",
        Ok(other) => panic!("PAYNOTIFY_TEST_DATABASE=`{other}`: use `sqlite` or `postgres`"),
    }
}

/// A new, empty database on the backend under test: a SQLite file in `dir`, or a fresh
/// schema `t_<random hex>` in the PostgreSQL database `PAYNOTIFY_TEST_POSTGRES_URL`
/// (default `postgres://postgres@127.0.0.1:5432/test`), so tests run in parallel.
/// PostgreSQL test schemas are left behind (a later server may reopen the database);
/// drop them with `DROP SCHEMA t_… CASCADE` when no test run is using them.
pub fn fresh_database_url(dir: &Path) -> String {
    match test_backend() {
        "postgres" => fresh_postgres_url(),
        _ => format!("sqlite://{}", dir.join("paynotify.db").display()),
    }
}

/// A fresh schema `t_<random hex>` in the PostgreSQL database `PAYNOTIFY_TEST_POSTGRES_URL`
/// (default `postgres://postgres@127.0.0.1:5432/test`), whatever backend is under test:
/// for the tests that only make sense on PostgreSQL (several host processes on one
/// database).
pub fn fresh_postgres_url() -> String {
    let base = std::env::var("PAYNOTIFY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let sep = if base.contains('?') { '&' } else { '?' };
    format!(
        "{base}{sep}schema=t_{}",
        hex::encode(rand::random::<[u8; 8]>())
    )
}

/// The tests that run only on PostgreSQL ([`fresh_postgres_url`]) run once per
/// `cargo xtask test`: in its PostgreSQL pass. Its SQLite pass sets
/// `PAYNOTIFY_TEST_POSTGRES_PASS_FOLLOWS=1`, and they return at once there (saying so).
/// Run by hand, without that variable, they run whatever the backend.
pub fn postgres_only_test_deferred(name: &str) -> bool {
    let deferred = test_backend() != "postgres"
        && std::env::var("PAYNOTIFY_TEST_POSTGRES_PASS_FOLLOWS").is_ok_and(|v| v == "1");
    if deferred {
        eprintln!("{name}: runs in the PostgreSQL pass of `cargo xtask test`, not in this one");
    }
    deferred
}

/// The API token test servers get unless a test says otherwise: [`TOKEN`], or none when
/// `PAYNOTIFY_TEST_NO_TOKEN=1`. The PostgreSQL pass of `cargo xtask test` sets it, so the
/// end-to-end suite runs once with a token (SQLite) and once without (PostgreSQL); tests
/// of the token itself ask for one with [`Options::with_token`].
pub fn default_api_token() -> Option<&'static str> {
    let no_token = std::env::var("PAYNOTIFY_TEST_NO_TOKEN").is_ok_and(|v| v == "1");
    (!no_token).then_some(TOKEN)
}

/// The server configuration the tests use: `api_token` (see [`default_api_token`]), one
/// WeChat v2 account, then `extra` (more accounts, limits…).
pub fn config_toml(
    listen: &str,
    api_token: Option<&str>,
    database_url: &str,
    plugins_dir: &Path,
    extra: &str,
) -> String {
    let token = api_token.map_or(String::new(), |t| format!("api_token = \"{t}\"\n"));
    format!(
        "[server]\nlisten = \"{listen}\"\n{token}\n\
         [database]\nurl = \"{}\"\n\n\
         [plugins]\ndir = \"{}\"\n\n\
         [[accounts]]\nprovider = \"wechat-v2\"\nname = \"default\"\nappid = \"{}\"\nmch_id = \"{}\"\napi_key = \"{}\"\n\
         notify_key = \"{}\"\n\n{}",
        database_url,
        plugins_dir.display(),
        wechat_v2::APPID,
        wechat_v2::MCH_ID,
        wechat_v2::API_KEY,
        "0123456789abcdef0123456789abcdef",
        extra
    )
}

/// How to start a test server.
pub struct Options {
    /// (type, built plugin name, manifest override) triples to install.
    pub plugins: Vec<(String, String, Option<String>)>,
    /// Extra TOML appended to the config (accounts, limits...).
    pub extra_config: String,
    /// The database to use (another server's [`TestServer::database_url`], to share it);
    /// `None` = a fresh one, see [`fresh_database_url`].
    pub database_url: Option<String>,
    /// `[plugins] cache_dir`: a compiled-plugin cache shared between servers (large
    /// components, e.g. JavaScript ones, then compile once per test run); `None` = the
    /// server's own.
    pub plugins_cache_dir: Option<PathBuf>,
    /// Extra `key = value` lines of the `[plugins]` section (limits, breaker...).
    pub plugins_config: String,
    /// `server.api_token`; [`default_api_token`] unless set.
    pub api_token: Option<&'static str>,
    /// Extra `key = value` lines of the `[server]` section.
    pub server_config: String,
}

impl Options {
    /// One WeChat v2 account and the given handlers installed under their own names.
    pub fn with_plugins(names: &[&str]) -> Options {
        Options {
            plugins: names
                .iter()
                .map(|n| (n.to_string(), n.to_string(), None))
                .collect(),
            extra_config: String::new(),
            database_url: None,
            plugins_cache_dir: None,
            plugins_config: String::new(),
            api_token: default_api_token(),
            server_config: String::new(),
        }
    }

    /// With `server.api_token` = [`TOKEN`], whatever the pass (for tests of the token).
    pub fn with_token(mut self) -> Options {
        self.api_token = Some(TOKEN);
        self
    }

    /// Without `server.api_token`, whatever the pass.
    pub fn without_token(mut self) -> Options {
        self.api_token = None;
        self
    }

    /// With this `server.api_token`.
    pub fn token(mut self, token: &'static str) -> Options {
        self.api_token = Some(token);
        self
    }

    /// Uses this database (e.g. another server's [`TestServer::database_url`]) instead of
    /// a fresh one.
    pub fn database_url(mut self, url: Option<String>) -> Options {
        self.database_url = url;
        self
    }

    /// Installs built plugin `name` as handler of `plugin_type`, optionally with a manifest.
    pub fn plugin_as(mut self, plugin_type: &str, name: &str, manifest: Option<&str>) -> Options {
        self.plugins
            .push((plugin_type.into(), name.into(), manifest.map(str::to_owned)));
        self
    }
}

/// A running server over its own temporary directory (database, plugins, config).
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The app, for direct store checks.
    pub app: paynotify::App,
    /// Its directory; kept alive for the server's life.
    pub dir: tempfile::TempDir,
    /// Its database, for a second server on the same one ([`Options::database_url`]).
    pub database_url: String,
    /// HTTP client.
    pub http: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    worker: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server with `options` on 127.0.0.1 and a free port.
    pub async fn start(options: Options) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let plugins = dir.path().join("plugins.d");
        std::fs::create_dir_all(&plugins).expect("plugins dir");
        for (plugin_type, name, manifest) in &options.plugins {
            install_plugin(&plugins, plugin_type, name, manifest.as_deref());
        }
        let database_url = options
            .database_url
            .clone()
            .unwrap_or_else(|| fresh_database_url(dir.path()));
        let mut config = config_toml(
            "127.0.0.1:0",
            options.api_token,
            &database_url,
            &plugins,
            &options.extra_config,
        );
        if let Some(cache) = &options.plugins_cache_dir {
            let line = format!("[plugins]\ncache_dir = \"{}\"\n", cache.display());
            config = config.replacen("[plugins]\n", &line, 1);
        }
        if !options.server_config.is_empty() {
            let lines = format!("[server]\n{}\n", options.server_config.trim_end());
            config = config.replacen("[server]\n", &lines, 1);
        }
        if !options.plugins_config.is_empty() {
            let lines = format!("[plugins]\n{}\n", options.plugins_config.trim_end());
            config = config.replacen("[plugins]\n", &lines, 1);
        }
        let config_path = dir.path().join("paynotify.toml");
        std::fs::write(&config_path, config).expect("write config");
        let config = paynotify::Config::load(&config_path, Vec::new()).expect("config loads");
        let app = paynotify::App::start(config).await.expect("app starts");
        let worker = app.start_worker();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let served = app.clone();
        tokio::spawn(async move {
            paynotify::http::serve(served, listener, async {
                let _ = rx.await;
            })
            .await
            .expect("server runs");
        });
        TestServer {
            addr,
            app,
            dir,
            database_url,
            http: reqwest::Client::new(),
            shutdown: Some(tx),
            worker,
        }
    }

    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The plugins directory.
    pub fn plugins_dir(&self) -> PathBuf {
        self.dir.path().join("plugins.d")
    }

    /// Creates an order through the API; panics unless 201.
    pub async fn create_order(&self, body: Value) -> Value {
        let (status, v) = self.api("POST", "/api/orders", Some(body)).await;
        assert_eq!(status, 201, "create order: {v}");
        v
    }

    /// A recharge order of `fen` for `user`.
    pub async fn recharge_order(&self, out_trade_no: &str, user: &str, fen: i64) -> Value {
        self.create_order(json!({
            "type": "recharge", "total_fee": fen, "user_id": user, "provider": "wechat-v2",
            "out_trade_no": out_trade_no, "custom": { "recharge_balance": fen }
        }))
        .await
    }

    /// Calls the API with the token; returns status and JSON body.
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, self.url(path)).bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("api call");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// The order, straight from the database.
    pub async fn order(&self, out_trade_no: &str) -> paynotify::store::Order {
        self.app
            .store
            .get_order(out_trade_no)
            .await
            .expect("db")
            .expect("order exists")
    }

    /// A handler document, parsed.
    pub async fn document(&self, collection: &str, id: &str) -> Option<Value> {
        self.app
            .store
            .get_document(collection, id)
            .await
            .expect("db")
            .map(|t| serde_json::from_str(&t).expect("document JSON"))
    }

    /// Every stored notification, oldest first: paged, since one listing returns at most
    /// 500 (a run under load can store more).
    pub async fn notifications(&self) -> Vec<paynotify::store::NotificationRecord> {
        let mut all = Vec::new();
        loop {
            let page = self
                .app
                .store
                .list_notifications(&paynotify::store::NotificationFilter {
                    limit: 500,
                    before_id: all
                        .last()
                        .map(|n: &paynotify::store::NotificationRecord| n.id),
                    ..Default::default()
                })
                .await
                .expect("db");
            let last_page = page.len() < 500;
            all.extend(page);
            if last_page {
                break;
            }
        }
        all.reverse();
        all
    }

    /// POSTs a raw body to `/notify/{provider}`; returns status and body text.
    pub async fn notify(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, String) {
        let resp = self
            .http
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("notify call");
        (resp.status().as_u16(), resp.text().await.expect("body"))
    }

    /// POSTs a raw body to `path` with extra request headers; returns status and body text.
    pub async fn notify_with_headers(
        &self,
        path: &str,
        content_type: &str,
        headers: &[(String, String)],
        body: impl Into<reqwest::Body>,
    ) -> (u16, String) {
        let mut req = self
            .http
            .post(self.url(path))
            .header("content-type", content_type);
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let resp = req.body(body).send().await.expect("notify call");
        (resp.status().as_u16(), resp.text().await.expect("body"))
    }

    /// Every stored notification of `provider`, oldest first.
    pub async fn notifications_of(
        &self,
        provider: &str,
    ) -> Vec<paynotify::store::NotificationRecord> {
        let mut all = self.notifications().await;
        all.retain(|n| n.provider == provider);
        all
    }

    /// The Prometheus text of `GET /metrics`.
    pub async fn metrics_text(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("scrape /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// Sends a WeChat v2 notification.
    pub async fn notify_v2(&self, xml: String) -> (u16, String) {
        self.notify("/notify/wechat-v2", "text/xml", xml).await
    }

    /// Signs in to the console (with the API token when one is configured) and answers
    /// the session cookie as `name=value`.
    pub async fn console_cookie(&self) -> String {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let token = if self.app.config.api_token().is_some() {
            TOKEN
        } else {
            ""
        };
        let r = http
            .post(self.url("/console/login"))
            .header("origin", format!("http://{}", self.addr))
            .form(&[("token", token), ("next", "/console/orders")])
            .send()
            .await
            .expect("sign in");
        assert_eq!(r.status().as_u16(), 303, "sign-in redirects");
        let set = r
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .expect("a cookie");
        set.split(';').next().expect("cookie pair").to_owned()
    }

    /// A console page, signed in with `cookie`: its status and text.
    pub async fn console_page(&self, cookie: &str, path: &str) -> (u16, String) {
        let r = self
            .http
            .get(self.url(path))
            .header("cookie", cookie)
            .send()
            .await
            .expect("get");
        (r.status().as_u16(), r.text().await.expect("page"))
    }

    /// Asks the server to rescan its plugins directory.
    pub async fn reload_plugins(&self) -> Value {
        let (status, v) = self.api("POST", "/api/admin/plugins/reload", None).await;
        assert_eq!(status, 200, "reload: {v}");
        v
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(w) = self.worker.take() {
            w.abort();
        }
    }
}

/// The same component with a custom section appended: identical behaviour, another file
/// (another SHA-256), as a rebuilt handler would be; markers of one length give files of
/// one size.
pub fn rebuilt_plugin(name: &str, marker: &str) -> Vec<u8> {
    let mut bytes = std::fs::read(plugin_wasm(name)).expect("read plugin");
    let mut payload = vec![marker.len() as u8];
    payload.extend_from_slice(marker.as_bytes());
    payload.extend_from_slice(b"rebuilt");
    bytes.push(0); // custom section id
    bytes.push(payload.len() as u8); // size (LEB128, < 128)
    bytes.extend_from_slice(&payload);
    bytes
}

/// Writes `bytes` as `{type}.wasm` the way a deploy tool should (temp file, then rename),
/// so the watcher never sees half a file.
pub fn deploy_wasm(dir: &Path, plugin_type: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{plugin_type}.wasm.part"));
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, dir.join(format!("{plugin_type}.wasm"))).expect("rename");
}

/// Lower-case hex SHA-256 of `bytes`, as the host reports a file's hash.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Copies built plugin `name` into `dir` as `{plugin_type}.wasm`, with its manifest
/// (or `manifest` text instead).
pub fn install_plugin(dir: &Path, plugin_type: &str, name: &str, manifest: Option<&str>) {
    let tmp = dir.join(format!(".{plugin_type}.wasm.tmp"));
    std::fs::copy(plugin_wasm(name), &tmp).expect("copy plugin");
    let toml = dir.join(format!("{plugin_type}.toml"));
    match (manifest, plugin_manifest(name)) {
        (Some(text), _) => std::fs::write(&toml, text).expect("write manifest"),
        (None, Some(shipped)) => {
            std::fs::copy(shipped, &toml).expect("copy manifest");
        }
        (None, None) => {
            let _ = std::fs::remove_file(&toml);
        }
    }
    std::fs::rename(&tmp, dir.join(format!("{plugin_type}.wasm"))).expect("rename plugin");
}

/// Field map helper.
pub fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The `<return_code>` of a v2 answer.
pub fn v2_return_code(body: &str) -> &str {
    if body.contains("<return_code><![CDATA[SUCCESS]]></return_code>") {
        "SUCCESS"
    } else if body.contains("<return_code><![CDATA[FAIL]]></return_code>") {
        "FAIL"
    } else {
        "?"
    }
}

/// Polls `check` every 20 ms until it returns `Some`, or panics after `secs` seconds
/// naming `what`. (A wait for something the server does in the background, never a
/// timing assertion: the limit is generous.)
pub async fn wait_until<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// An attacker's re-split of one genuine `k=v&…` signature (issue 20), for the
/// providers that sign such a string (WeChat Pay v2, Alipay): `genuine` with its free-text
/// field `free` set to `x&<attack>&zz=`, as the provider would sign it, and the
/// notification an attacker builds from the same signed string, whose own fields are the
/// `attack` ones (each sorting after `free`), everything signed after `free` swallowed by a
/// last field `zz`. Fields named in `unsigned` (the signature's own) are not signed.
pub fn resplit_fields(
    genuine: &BTreeMap<String, String>,
    free: &str,
    attack: &[(&str, &str)],
    unsigned: &[&str],
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let join = |p: &mut dyn Iterator<Item = (&str, &str)>| {
        p.map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    };
    let mut genuine = genuine.clone();
    genuine.insert(
        free.into(),
        format!("x&{}&zz=", join(&mut attack.iter().copied())),
    );
    let signed = || {
        genuine
            .iter()
            .filter(|(k, v)| !unsigned.contains(&k.as_str()) && !v.is_empty())
            .map(|(k, v)| (k.as_str(), v.as_str()))
    };
    let mut forged: BTreeMap<String, String> = signed()
        .filter(|(k, _)| *k < free)
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    forged.insert(free.into(), "x".into());
    for (k, v) in attack {
        forged.insert((*k).into(), (*v).into());
    }
    let rest = join(&mut signed().filter(|(k, _)| *k > free));
    forged.insert("zz".into(), format!("&{rest}"));
    (genuine, forged)
}

/// The value of sample `name` in Prometheus `text` whose labels include `labels`, if any.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (sample, label_text) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if sample != name {
                return None;
            }
            let have: Vec<(&str, &str)> = label_text
                .split(',')
                .filter(|p| !p.is_empty())
                .filter_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    Some((k, v.trim_matches('"')))
                })
                .collect();
            labels
                .iter()
                .all(|l| have.contains(l))
                .then(|| value.parse().ok())
                .flatten()
        })
}

/// Server-Sent Events read off a streaming response (`/api/orders/{no}/events`).
pub struct EventStream {
    response: reqwest::Response,
    buffer: String,
}

impl EventStream {
    /// Reads events off `response` (a 200 answer of an event stream).
    pub fn new(response: reqwest::Response) -> EventStream {
        EventStream {
            response,
            buffer: String::new(),
        }
    }

    /// The next event's data, parsed, skipping keep-alive comments; `None` when the server
    /// ended the stream. (Waits at most 30 s, so a broken stream fails the test rather
    /// than hanging it.)
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let data: Vec<&str> = block
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                if data.is_empty() {
                    continue;
                }
                return Some(serde_json::from_str(&data.join("\n")).expect("event JSON"));
            }
            let chunk =
                tokio::time::timeout(std::time::Duration::from_secs(30), self.response.chunk())
                    .await
                    .expect("an event within 30 s")
                    .expect("stream readable")?;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

//! The real `paynotify` binary as a child process: several hosts on one database, and a
//! host killed with SIGKILL and started again on the same database.
//!
//! The binary is `PAYNOTIFY_BIN` (what `cargo xtask test` builds and passes), else
//! `<workspace>/target/debug/paynotify`. `cargo test` alone does not rebuild that binary:
//! after changing the host, run `cargo build --bin paynotify` (or `cargo xtask test`) before
//! these tests, or they test the previous build (`cargo build -p paynotify` resolves other
//! features and compiles the host and its dependencies a second time).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use paynotify::store::{NotificationFilter, NotificationRecord, Store};
use serde_json::Value;

use crate::{config_toml, install_plugin, TOKEN};

/// The `paynotify` binary to start; panics with what to do when it is missing.
pub fn paynotify_bin() -> PathBuf {
    let path = match std::env::var_os("PAYNOTIFY_BIN") {
        Some(p) => PathBuf::from(p),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
            target.join("debug").join("paynotify")
        }
    };
    assert!(
        path.is_file(),
        "the paynotify binary {} is missing: run the tests with `cargo xtask test` (it builds \
         it), or `cargo build --bin paynotify` first, or point PAYNOTIFY_BIN at it",
        path.display()
    );
    path
}

/// Runs `paynotify --config CONFIG ARGS…` with `env` set, quiet logs, and none of the test
/// run's own `PAYNOTIFY_…` variables.
pub async fn paynotify_cli(
    config: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(paynotify_bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("PAYNOTIFY_") {
            cmd.env_remove(k);
        }
    }
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    cmd.output().await.expect("run paynotify")
}

/// Stdout of a command that must succeed (`what` names it if it did not).
pub fn ok_stdout(out: &std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8 output")
}

/// A port nothing listens on right now (bound to 127.0.0.1:0, read, released), for a child
/// process's `server.listen`.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// Opens the store at `url` from the test process (to check what the hosts wrote).
pub async fn connect_store(url: &str) -> Arc<dyn Store> {
    let config = paynotify::config::DatabaseConfig {
        url: url.to_owned(),
        max_connections: 2,
        ..Default::default()
    };
    paynotify::store::connect(&config)
        .await
        .expect("database opens")
}

/// Every stored notification, oldest first (pages through the 500-row listing limit).
pub async fn all_notifications(store: &dyn Store) -> Vec<NotificationRecord> {
    let mut all = Vec::new();
    let mut before = None;
    loop {
        let page = store
            .list_notifications(&NotificationFilter {
                before_id: before,
                limit: 500,
                ..Default::default()
            })
            .await
            .expect("list notifications");
        let Some(last) = page.last() else { break };
        before = Some(last.id);
        all.extend(page);
    }
    all.reverse();
    all
}

/// A `paynotify serve` child process over its own directory (config, plugins, log).
pub struct HostProcess {
    /// Name, for messages.
    pub name: String,
    /// Where it listens now (a new port at each start).
    pub addr: std::net::SocketAddr,
    /// Its database URL.
    pub database_url: String,
    /// HTTP client: no idle connections are kept, so every request has a connection of
    /// its own, as providers' notifications do.
    pub http: reqwest::Client,
    dir: PathBuf,
    extra_config: String,
    /// Extra `key = value` lines by section (`server`, `database`, `plugins`).
    sections: Vec<(String, String)>,
    child: Option<Child>,
    starts: u32,
}

impl HostProcess {
    /// Writes a config into `dir` (which must exist and outlive the process), installs the
    /// (type, built plugin, manifest text) handlers, starts the binary and waits until
    /// `/readyz` answers.
    pub async fn start(
        name: &str,
        dir: &Path,
        database_url: &str,
        plugins: &[(&str, &str, Option<&str>)],
        extra_config: &str,
    ) -> HostProcess {
        Self::start_with_sections(name, dir, database_url, plugins, extra_config, &[]).await
    }

    /// [`HostProcess::start`] with extra `key = value` lines in sections the test config
    /// already has: `("server", "notify_timeout_secs = 3")`, `("database", …)`,
    /// `("plugins", …)`.
    pub async fn start_with_sections(
        name: &str,
        dir: &Path,
        database_url: &str,
        plugins: &[(&str, &str, Option<&str>)],
        extra_config: &str,
        sections: &[(&str, &str)],
    ) -> HostProcess {
        let plugins_dir = dir.join("plugins.d");
        std::fs::create_dir_all(&plugins_dir).expect("plugins dir");
        for (plugin_type, built, manifest) in plugins {
            install_plugin(&plugins_dir, plugin_type, built, *manifest);
        }
        let mut host = HostProcess {
            name: name.to_owned(),
            addr: ([127, 0, 0, 1], 0).into(),
            database_url: database_url.to_owned(),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(120))
                .build()
                .expect("http client"),
            dir: dir.to_owned(),
            extra_config: extra_config.to_owned(),
            sections: sections
                .iter()
                .map(|(s, l)| (s.to_string(), l.to_string()))
                .collect(),
            child: None,
            starts: 0,
        };
        host.restart().await;
        host
    }

    /// Its plugins directory.
    pub fn plugins_dir(&self) -> PathBuf {
        self.dir.join("plugins.d")
    }

    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The child's process id while it runs (to read its `/proc/{pid}/status`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the child is running (not killed, not exited).
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Kills the process with SIGKILL (no shutdown, no flush: a crash) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it (again) on the same database and plugins directory, on a new port, and
    /// waits until it is ready.
    pub async fn restart(&mut self) {
        self.kill();
        for attempt in 0.. {
            self.starts += 1;
            let port = free_port();
            self.addr = ([127, 0, 0, 1], port).into();
            let mut config = config_toml(
                &format!("127.0.0.1:{port}"),
                crate::default_api_token(),
                &self.database_url,
                &self.plugins_dir(),
                &self.extra_config,
            );
            for (section, lines) in &self.sections {
                let header = format!("[{section}]\n");
                let with = format!("{header}{}\n", lines.trim_end());
                config = config.replacen(&header, &with, 1);
            }
            let config_path = self.dir.join("paynotify.toml");
            std::fs::write(&config_path, config).expect("write config");
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.log_path())
                .expect("log file");
            let mut cmd = Command::new(paynotify_bin());
            cmd.arg("--config")
                .arg(&config_path)
                .arg("serve")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log)
                .env("NO_COLOR", "1");
            if std::env::var_os("RUST_LOG").is_none() {
                cmd.env("RUST_LOG", "info");
            }
            // The test run's own variables are not the child's configuration; other
            // `PAYNOTIFY_{SECTION}_{KEY}` overrides reach it (e.g. to run these tests
            // with `PAYNOTIFY_DATABASE_BATCH_MAX=1`).
            for (k, _) in std::env::vars_os() {
                let k = k.to_string_lossy().into_owned();
                if ["PAYNOTIFY_TEST_", "PAYNOTIFY_SOAK_"]
                    .iter()
                    .any(|p| k.starts_with(p))
                    || k == "PAYNOTIFY_BIN"
                    || k == "PAYNOTIFY_CONFIG"
                {
                    cmd.env_remove(k);
                }
            }
            self.child = Some(
                cmd.spawn()
                    .unwrap_or_else(|e| panic!("cannot start {}: {e}", paynotify_bin().display())),
            );
            match self.wait_ready().await {
                Ok(()) => return,
                // Someone took the port between `free_port` and the bind: another one.
                Err(log) if attempt < 3 && log.contains("cannot listen") => continue,
                Err(log) => panic!(
                    "{} (start {}) exited before it was ready; its log:\n{log}",
                    self.name, self.starts
                ),
            }
        }
    }

    /// Waits (up to 90 s: plugins compile on first start) for `/readyz`; `Err(log)` if the
    /// process exited first.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            if !self.running() {
                self.child = None;
                return Err(self.log());
            }
            if let Ok(r) = self.http.get(self.url("/readyz")).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} not ready after 90 s; its log:\n{}",
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("paynotify.log")
    }

    /// Everything the process (every start of it) has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Calls the API with the token; returns status and JSON body.
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, self.url(path)).bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{} {path}: {e}", self.name));
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Creates an order through the API; panics unless 201.
    pub async fn create_order(&self, body: Value) -> Value {
        let (status, v) = self.api("POST", "/api/orders", Some(body)).await;
        assert_eq!(status, 201, "{}: create order: {v}", self.name);
        v
    }

    /// POSTs a notification; `Err` when no answer came back (refused, reset, killed).
    pub async fn try_notify(
        &self,
        path: &str,
        content_type: &str,
        headers: &[(String, String)],
        body: impl Into<reqwest::Body>,
    ) -> Result<(u16, String), reqwest::Error> {
        send_notification(&self.http, &self.url(path), content_type, headers, body).await
    }
}

/// POSTs a notification to `url`; `Err` when no answer came back.
pub async fn send_notification(
    http: &reqwest::Client,
    url: &str,
    content_type: &str,
    headers: &[(String, String)],
    body: impl Into<reqwest::Body>,
) -> Result<(u16, String), reqwest::Error> {
    let mut req = http.post(url).header("content-type", content_type);
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let resp = req.body(body).send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await?))
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let tail: String = {
                let lines: Vec<&str> = log.lines().collect();
                lines[lines.len().saturating_sub(40)..].join("\n")
            };
            eprintln!("--- last lines of {}'s log ---\n{tail}", self.name);
        }
    }
}

//! README's "Deploying": the files it shows (`deploy/`) are the files checked here, and
//! each is run or checked the way ops would use it.
//!
//! - the README's blocks are those files, byte for byte;
//! - `systemd-analyze verify` accepts the unit (skipped, and said, without the tool);
//! - the real binary starts with the unit's command line and `deploy/paynotify.toml` (its
//!   paths moved into a temporary folder), on SQLite, with handlers signed as README's
//!   "Signed handlers" says; `deploy/backup-sqlite.sh` copies its database while it serves
//!   (without the `sqlite3` CLI: the script's `VACUUM INTO` through a SQL connection), and
//!   the copy opens with the paid order in it;
//! - every `paynotify_*` series `deploy/alerts.yml` names is in that host's `/metrics`
//!   (and `promtool check rules` accepts the file, when installed);
//! - `deploy/postgres-setup.sql`, run with `psql` against the local PostgreSQL under a
//!   fresh role and database (dropped afterwards), lets two hosts share the database.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use paynotify::store::status;
use paynotify_tests::process::{connect_store, free_port, paynotify_bin, HostProcess};
use paynotify_tests::{
    plugin_manifest, plugin_wasm, postgres_only_test_deferred, signing, test_backend,
    v2_return_code, wechat_v2, TOKEN,
};
use serde_json::json;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

fn deploy_file(name: &str) -> String {
    let path = repo().join("deploy").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Whether `program` can be run (`program --version` starts).
fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// The text of README's `## Deploying` section.
fn readme_section() -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let start = readme
        .find("\n## Deploying\n")
        .expect("README has a `## Deploying` section");
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 4);
    rest[..end].to_owned()
}

/// The fenced code blocks of `text`, without their fences.
fn code_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.starts_with("```") {
            match current.take() {
                Some(block) => blocks.push(block),
                None => current = Some(String::new()),
            }
        } else if let Some(block) = current.as_mut() {
            block.push_str(line);
            block.push('\n');
        }
    }
    blocks
}

#[test]
fn readme_shows_the_deploy_files_as_they_are() {
    let section = readme_section();
    let blocks = code_blocks(&section);
    let mut names: Vec<String> = std::fs::read_dir(repo().join("deploy"))
        .expect("deploy/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 5, "deploy/ has {names:?}");
    for name in names {
        let text = deploy_file(&name);
        assert!(
            section.contains(&format!("](deploy/{name})")),
            "README's Deploying section links no deploy/{name}"
        );
        assert!(
            blocks.contains(&text),
            "README's Deploying section has no block identical to deploy/{name}: copy the \
             file into it again"
        );
    }
}

/// `deploy/paynotify.service` with its binary path pointing at the binary under test
/// (`systemd-analyze verify` checks that it exists).
fn unit_for_test(dir: &Path) -> PathBuf {
    let unit = deploy_file("paynotify.service").replace(
        "/usr/local/bin/paynotify",
        &paynotify_bin().display().to_string(),
    );
    let path = dir.join("paynotify.service");
    std::fs::write(&path, unit).expect("write unit");
    path
}

#[test]
fn systemd_accepts_the_unit() {
    if !installed("systemd-analyze") {
        eprintln!(
            "SKIPPED: systemd-analyze is not installed; deploy/paynotify.service not verified"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let unit = unit_for_test(dir.path());
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // It reports unknown keys and bad values on stderr and still exits 0.
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("paynotify.service"))
        .collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "systemd-analyze verify deploy/paynotify.service ({}):\n{stderr}",
        out.status
    );
}

/// The unit's settings of `key`, in order.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    let prefix = format!("{key}=");
    unit.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(str::to_owned)
        .collect()
}

/// The unit and the config agree: every credential the config reads is loaded by the
/// unit, the config's writable paths are in the state directory, the plugins folder is
/// read-only to the service.
#[test]
fn the_unit_gives_the_config_what_it_reads() {
    let unit = deploy_file("paynotify.service");
    let config = deploy_file("paynotify.toml");
    let credentials: Vec<String> = unit_values(&unit, "LoadCredential")
        .iter()
        .map(|c| c.split_once(':').expect("NAME:PATH").0.to_owned())
        .collect();
    for read in config.split('"').filter_map(|s| {
        s.strip_prefix("/run/credentials/paynotify.service/")
            .map(str::to_owned)
    }) {
        assert!(
            credentials.contains(&read),
            "the config reads credential {read}; the unit loads {credentials:?}"
        );
    }
    assert_eq!(unit_values(&unit, "StateDirectory"), ["paynotify"]);
    assert!(config.contains("url = \"sqlite:///var/lib/paynotify/"));
    assert!(config.contains("cache_dir = \"/var/lib/paynotify/"));
    let read_only = unit_values(&unit, "ReadOnlyPaths").join(" ");
    assert!(read_only.contains("/srv/paynotify/plugins.d"));
    assert!(config.contains("dir = \"/srv/paynotify/plugins.d\""));
    let exec = unit_values(&unit, "ExecStart").join(" ");
    assert!(exec.contains("--config /etc/paynotify/paynotify.toml"));
}

/// The host the deploy files describe, moved into `root`: `deploy/paynotify.toml` with
/// `/etc/paynotify`, `/var/lib/paynotify`, `/srv/paynotify/plugins.d` and the credentials
/// folder under `root`, started with the unit's `ExecStart` arguments.
struct DeployedHost {
    child: Child,
    base: String,
    root: PathBuf,
    http: reqwest::Client,
}

impl DeployedHost {
    async fn start(root: &Path) -> DeployedHost {
        let port = free_port();
        let (etc, state, plugins, creds) = (
            root.join("etc"),
            root.join("state"),
            root.join("plugins.d"),
            root.join("credentials"),
        );
        for d in [&etc, &plugins, &creds] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        // StateDirectoryMode=0700
        std::fs::create_dir_all(&state).expect("mkdir");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        std::fs::write(creds.join("api_token"), TOKEN).expect("token");
        std::fs::write(creds.join("wechat_api_key"), wechat_v2::API_KEY).expect("key");

        // Signed handlers, the way README's "Signed handlers" says.
        let key = signing::key(root, "deploy_ed25519");
        std::fs::write(
            etc.join("allowed_signers"),
            format!("deploy@example.com {}", key.public_line),
        )
        .expect("allowed_signers");
        let shipped = plugin_manifest("recharge")
            .map(|p| std::fs::read_to_string(p).expect("manifest"))
            .unwrap_or_default();
        let staged = root.join("staged");
        std::fs::create_dir_all(&staged).expect("mkdir");
        std::fs::write(
            staged.join("recharge.toml"),
            format!("type = \"recharge\"\n{shipped}"),
        )
        .expect("manifest");
        std::fs::copy(plugin_wasm("recharge"), staged.join("recharge.wasm")).expect("copy");
        for f in ["recharge.toml", "recharge.wasm"] {
            signing::sign(&key, &staged.join(f));
        }
        for f in [
            "recharge.toml",
            "recharge.toml.sig",
            "recharge.wasm.sig",
            "recharge.wasm",
        ] {
            std::fs::rename(staged.join(f), plugins.join(f)).expect("move into plugins.d");
        }

        let config = deploy_file("paynotify.toml")
            .replace(
                "/run/credentials/paynotify.service",
                &creds.display().to_string(),
            )
            .replace("/var/lib/paynotify", &state.display().to_string())
            .replace("/srv/paynotify/plugins.d", &plugins.display().to_string())
            .replace("/etc/paynotify", &etc.display().to_string())
            .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"));
        let config_path = etc.join("paynotify.toml");
        std::fs::write(&config_path, config).expect("config");

        let unit = deploy_file("paynotify.service");
        let exec = unit_values(&unit, "ExecStart").pop().expect("ExecStart");
        let mut words = exec.split_whitespace();
        assert_eq!(words.next(), Some("/usr/local/bin/paynotify"));
        let args: Vec<String> = words
            .map(|w| w.replace("/etc/paynotify", &etc.display().to_string()))
            .collect();
        let log = std::fs::File::create(root.join("paynotify.log")).expect("log");
        let mut cmd = Command::new(paynotify_bin());
        cmd.args(&args)
            .current_dir(root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .env("RUST_LOG", "info");
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("PAYNOTIFY_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd.spawn().expect("start paynotify");
        let mut host = DeployedHost {
            child,
            base: format!("http://127.0.0.1:{port}"),
            root: root.to_owned(),
            http: reqwest::Client::new(),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(Some(exit)) = host.child.try_wait() {
                panic!("paynotify exited ({exit}); its log:\n{}", host.log());
            }
            if let Ok(r) = host.http.get(host.url("/readyz")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not ready after 90 s; its log:\n{}",
                host.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        host
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("paynotify.log")).unwrap_or_default()
    }

    fn database(&self) -> PathBuf {
        self.root.join("state").join("paynotify.db")
    }

    /// Creates a recharge order and pays it with a signed WeChat v2 notification.
    async fn pay(&self, no: &str, fen: i64) {
        let resp = self
            .http
            .post(self.url("/api/orders"))
            .bearer_auth(TOKEN)
            .json(&json!({
                "type": "recharge", "total_fee": fen, "user_id": "u1", "provider": "wechat-v2",
                "out_trade_no": no, "custom": { "recharge_balance": fen }
            }))
            .send()
            .await
            .expect("create order");
        assert_eq!(
            resp.status(),
            201,
            "{}",
            resp.text().await.unwrap_or_default()
        );
        let resp = self
            .http
            .post(self.url("/notify/wechat-v2"))
            .header("content-type", "text/xml")
            .body(wechat_v2::paid_xml(no, fen, &format!("T{no}")))
            .send()
            .await
            .expect("notify");
        let body = resp.text().await.expect("body");
        assert_eq!(v2_return_code(&body), "SUCCESS", "{body}\n{}", self.log());
    }

    async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("metrics text")
    }
}

impl Drop for DeployedHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("paynotify's log:\n{}", self.log());
        }
    }
}

/// The copy's paid order and u1's balance, read from the file alone.
async fn read_copy(path: &Path) -> (i64, String) {
    use sqlx::{ConnectOptions, Connection};
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .connect()
        .await
        .expect("open the copy");
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await
        .expect("integrity_check");
    assert_eq!(check, "ok");
    let order: i64 =
        sqlx::query_scalar("SELECT status FROM orders WHERE out_trade_no = 'DEPLOY0001'")
            .fetch_one(&mut conn)
            .await
            .expect("the paid order is in the copy");
    let balance: String =
        sqlx::query_scalar("SELECT data FROM documents WHERE collection = 'users' AND id = 'u1'")
            .fetch_one(&mut conn)
            .await
            .expect("the handler's write is in the copy");
    conn.close().await.ok();
    (order, balance)
}

#[tokio::test]
async fn the_deployed_host_backs_up_online_and_serves_every_alerted_metric() {
    if test_backend() != "sqlite" {
        eprintln!("runs in the SQLite pass: deploy/paynotify.toml is the one-host SQLite set-up");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let host = DeployedHost::start(dir.path()).await;
    host.pay("DEPLOY0001", 1500).await;

    // The backup, while the host serves.
    let backups = dir.path().join("backups");
    let script = repo().join("deploy").join("backup-sqlite.sh");
    let copy = if installed("sqlite3") {
        let out = Command::new("sh")
            .arg(&script)
            .arg(host.database())
            .arg(&backups)
            .output()
            .expect("run backup-sqlite.sh");
        assert!(
            out.status.success(),
            "backup-sqlite.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        PathBuf::from(printed)
    } else {
        eprintln!(
            "sqlite3 is not installed: backup-sqlite.sh not run; its VACUUM INTO is tested \
             through a SQL connection instead"
        );
        assert!(deploy_file("backup-sqlite.sh").contains("\"VACUUM INTO '$out.part'\""));
        use sqlx::{ConnectOptions, Connection};
        std::fs::create_dir_all(&backups).expect("mkdir");
        let copy = backups.join("paynotify-copy.db");
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(host.database())
            .connect()
            .await
            .expect("open the live database");
        sqlx::query(&format!("VACUUM INTO '{}'", copy.display()))
            .execute(&mut conn)
            .await
            .expect("VACUUM INTO");
        conn.close().await.ok();
        copy
    };
    assert!(copy.starts_with(&backups), "{}", copy.display());
    let (order, balance) = read_copy(&copy).await;
    assert_eq!(order, i64::from(status::PAID));
    assert_eq!(balance, r#"{"balance":1500}"#);
    // The host kept serving through it.
    host.pay("DEPLOY0002", 100).await;

    // The alerts' series. A refused build makes the load-failure counter exist (an
    // unsigned file: the production setting refuses it).
    std::fs::copy(
        plugin_wasm("vip"),
        host.root.join("plugins.d").join("vip.wasm"),
    )
    .expect("copy an unsigned handler");
    let alerts = deploy_file("alerts.yml");
    let mut names: Vec<&str> = alerts
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("paynotify_"))
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 6, "alerts.yml names {names:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = host.metrics().await;
        let missing: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| {
                !text.lines().any(|l| {
                    l.strip_prefix(n)
                        .is_some_and(|rest| rest.starts_with(['{', ' ', '_']))
                })
            })
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "alerts.yml names series /metrics does not have: {missing:?}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let text = host.metrics().await;
    assert!(
        text.contains("paynotify_plugin_load_failures_total{plugin=\"vip\",reason=\"signature\"}"),
        "{text}"
    );

    if installed("promtool") {
        let out = Command::new("promtool")
            .args(["check", "rules"])
            .arg(repo().join("deploy").join("alerts.yml"))
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool check rules deploy/alerts.yml: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("SKIPPED: promtool is not installed; deploy/alerts.yml's syntax not checked");
    }
}

/// A role and a database made for one test, dropped when it ends (even by a panic).
struct ScratchDatabase {
    admin_url: String,
    name: String,
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .arg(&self.admin_url)
            .args(["-q", "-c"])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .args(["-c"])
            .arg(format!("DROP ROLE IF EXISTS {}", self.name))
            .status();
    }
}

#[tokio::test]
async fn the_postgres_setup_lets_several_hosts_share_one_database() {
    if postgres_only_test_deferred("the_postgres_setup_lets_several_hosts_share_one_database") {
        return;
    }
    if !installed("psql") {
        eprintln!("SKIPPED: psql is not installed; deploy/postgres-setup.sql not run");
        return;
    }
    let admin_url = std::env::var("PAYNOTIFY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let name = format!("pn_{}", hex::encode(rand::random::<[u8; 6]>()));
    let scratch = ScratchDatabase {
        admin_url: admin_url.clone(),
        name: name.clone(),
    };
    let password = hex::encode(rand::random::<[u8; 12]>());
    let out = Command::new("psql")
        .arg(&admin_url)
        .args(["-v", &format!("role={name}"), "-v", &format!("db={name}")])
        .args(["-v", &format!("password={password}"), "-f"])
        .arg(repo().join("deploy").join("postgres-setup.sql"))
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql -f deploy/postgres-setup.sql: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The URL README gives the hosts: the role, its database, the schema.
    let mut url = reqwest::Url::parse(&admin_url).expect("PAYNOTIFY_TEST_POSTGRES_URL");
    url.set_username(&name).expect("user");
    url.set_password(Some(&password)).expect("password");
    url.set_path(&format!("/{name}"));
    url.set_query(Some("schema=paynotify"));
    let url = url.to_string();

    let dirs = [
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    ];
    let recharge = [("recharge", "recharge", None)];
    let a = HostProcess::start("host-a", dirs[0].path(), &url, &recharge, "").await;
    let b = HostProcess::start("host-b", dirs[1].path(), &url, &recharge, "").await;
    a.create_order(json!({
        "type": "recharge", "total_fee": 700, "user_id": "u1", "provider": "wechat-v2",
        "out_trade_no": "PGDEPLOY01", "custom": { "recharge_balance": 700 }
    }))
    .await;
    let (code, body) = b
        .try_notify(
            "/notify/wechat-v2",
            "text/xml",
            &[],
            wechat_v2::paid_xml("PGDEPLOY01", 700, "TPGDEPLOY01"),
        )
        .await
        .expect("host-b answers");
    assert_eq!((code, v2_return_code(&body)), (200, "SUCCESS"), "{body}");
    let store = connect_store(&url).await;
    let order = store
        .get_order("PGDEPLOY01")
        .await
        .expect("db")
        .expect("the order host-a created");
    assert_eq!(order.status, status::PAID);
    drop((a, b));
    drop(store);
    drop(scratch);
}

//! A real browser for the console tests: Debian's headless Chromium driven through
//! `chromedriver` (WebDriver) by `fantoccini`.
//!
//! Each [`Browser`] starts its own chromedriver on a free loopback port, with a fresh
//! profile directory, and ends both when dropped. `cargo xtask test` installs the
//! packages (`chromium`, `chromium-driver`); run by hand without them the browser tests
//! skip with a loud message, except under `CI=true`, where a missing browser fails them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

/// Debian's Chromium.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Debian's chromedriver (package `chromium-driver`).
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// True if the browser tests can run here. Without the packages: under `CI=true` this
/// panics (CI must not skip them); otherwise it says loudly that `test` is skipped.
pub fn available(test: &str) -> bool {
    let present = Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists();
    if present {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{test}: {CHROMIUM} or {CHROMEDRIVER} is missing under CI=true; \
             `cargo xtask test` installs them (apt-get install chromium chromium-driver)"
        );
    }
    eprintln!(
        "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
         !!! {test}: SKIPPED: {CHROMIUM} / {CHROMEDRIVER} not installed.\n\
         !!! `cargo xtask test` installs them; or: apt-get install -y chromium chromium-driver\n\
         !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
    );
    false
}

/// Where the tests save screenshots: `target/console-screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("console-screenshots")
}

/// A headless Chromium session.
pub struct Browser {
    /// The WebDriver client.
    pub client: Client,
    driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium, with JavaScript on or off.
    pub async fn start(javascript: bool) -> Browser {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            l.local_addr().expect("addr").port()
        };
        let mut cmd = tokio::process::Command::new(CHROMEDRIVER);
        cmd.arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        // Its own process group, so that dropping the browser ends Chromium too.
        cmd.process_group(0);
        let driver = cmd.spawn().expect("start chromedriver");
        let profile = tempfile::tempdir().expect("profile dir");
        let mut args = vec![
            "--headless".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1400,1000".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut prefs = json!({});
        if !javascript {
            // The content setting a user turns JavaScript off with.
            prefs = json!({ "profile.managed_default_content_settings.javascript": 2 });
            args.push("--blink-settings=scriptEnabled=false".into());
        }
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args, "prefs": prefs },
        });
        let serde_json::Value::Object(caps) = caps else {
            unreachable!("a JSON object literal")
        };
        let url = format!("http://127.0.0.1:{port}");
        let mut builder =
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
        builder.capabilities(caps);
        // chromedriver takes a moment to listen; Chromium a moment more to start.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let client = loop {
            match builder.connect(&url).await {
                Ok(c) => break c,
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "cannot start a Chromium session through chromedriver: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// The element matching `css`, waiting up to 20 s for it to appear. A look-up that a
    /// navigation cut short (a form submitted just before: Chromium answers "aborted by
    /// navigation") is made again on the new page.
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self
                .client
                .wait()
                .at_most(left)
                .for_element(Locator::Css(css))
                .await
            {
                Ok(e) => return e,
                Err(e)
                    if e.to_string().contains("aborted by navigation")
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    let text = self.client.source().await.unwrap_or_default();
                    panic!("no element `{css}` on {}: {e}\n{text}", self.url().await)
                }
            }
        }
    }

    /// Waits (up to 20 s) until the current URL contains `fragment`.
    pub async fn wait_for_url(&self, fragment: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let url = self.url().await;
            if url.contains(fragment) {
                return url;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never got to a URL with `{fragment}`; at {url}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every element matching `css` now.
    pub async fn find_all(&self, css: &str) -> Vec<fantoccini::elements::Element> {
        self.client
            .find_all(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("find `{css}`: {e}"))
    }

    /// The visible text of the element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.expect("element text")
    }

    /// Clicks the element matching `css`.
    pub async fn click(&self, css: &str) {
        self.find(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("click `{css}`: {e}"));
    }

    /// The current URL.
    pub async fn url(&self) -> String {
        self.client
            .current_url()
            .await
            .map(|u| u.to_string())
            .unwrap_or_default()
    }

    /// Waits (up to 20 s) until the page's text contains `needle`, reloading it between
    /// looks if `reload`; panics with the page text otherwise.
    pub async fn wait_for_text(&self, needle: &str, reload: bool) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            // The page may be navigating (a form just submitted): an element that went
            // stale between finding it and reading it is read again on the next look.
            let text = match self.client.find(Locator::Css("body")).await {
                Ok(body) => body.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if text.contains(needle) {
                return text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "`{needle}` never appeared on {}:\n{text}",
                self.url().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            if reload {
                self.client.refresh().await.expect("reload");
            }
        }
    }

    /// Saves a screenshot of the window as `target/console-screenshots/{name}.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }

    /// Ends the WebDriver session (Chromium quits), then chromedriver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // After a failed test Chromium may still run: end chromedriver's process group
        // (Chromium is in it), which this test started.
        if let Some(pid) = self.driver.id() {
            let _ = std::process::Command::new("kill")
                .arg("--")
                .arg(format!("-{pid}"))
                .stderr(Stdio::null())
                .status();
        }
    }
}

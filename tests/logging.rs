//! The log of the real binary under a stranger's text: provider-supplied strings cannot
//! forge log lines or put escape codes into the log, and a log that is not a terminal
//! gets no colours.

use std::process::{Command, Stdio};
use std::time::Duration;

use paynotify_tests::process::{free_port, paynotify_bin};
use paynotify_tests::{
    config_toml, default_api_token, fresh_database_url, v2_return_code, wait_until,
};

/// A WeChat v2 "communication failure" notification (no signature: none is needed to get
/// its `return_msg` into the log) whose message forges a log line and paints the terminal.
const FORGED_FAIL: &str = "<xml><return_code><![CDATA[FAIL]]></return_code><return_msg><![CDATA[\
    busy\n2026-01-01T00:00:00Z  INFO paynotify: forged order paid\r\x1b[31mred\x1b[0m]]></return_msg></xml>";

#[tokio::test]
async fn provider_text_reaches_the_log_escaped_on_one_line_without_colours() {
    let dir = tempfile::tempdir().expect("temp dir");
    let plugins = dir.path().join("plugins.d");
    std::fs::create_dir_all(&plugins).expect("plugins dir");
    let port = free_port();
    let config = dir.path().join("paynotify.toml");
    let url = fresh_database_url(dir.path());
    std::fs::write(
        &config,
        config_toml(
            &format!("127.0.0.1:{port}"),
            default_api_token(),
            &url,
            &plugins,
            "",
        ),
    )
    .expect("write config");
    let log_path = dir.path().join("paynotify.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut cmd = Command::new(paynotify_bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("PAYNOTIFY_") || k == "NO_COLOR" {
            cmd.env_remove(k);
        }
    }
    // Stderr is a file, not a terminal, and NO_COLOR is unset: colours must still be off.
    cmd.arg("--config")
        .arg(&config)
        .arg("serve")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log);
    let mut child = cmd.spawn().expect("start paynotify");
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_until(90, "paynotify ready", || async {
        let r = http.get(format!("{base}/readyz")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    let answer = http
        .post(format!("{base}/notify/wechat-v2"))
        .header("content-type", "text/xml")
        .body(FORGED_FAIL)
        .send()
        .await
        .expect("notify");
    let answer = answer.text().await.expect("answer");
    assert_eq!(v2_return_code(&answer), "FAIL", "{answer}");
    // The rejection is logged before the answer is sent; give the writer a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = child.kill();
    let _ = child.wait();

    let log = std::fs::read_to_string(&log_path).expect("read log");
    assert!(
        log.contains("\\n2026-01-01T00:00:00Z  INFO paynotify: forged order paid\\r\\u{1b}[31mred"),
        "the provider's text is logged, escaped:\n{log}"
    );
    assert!(!log.contains('\x1b'), "escape codes in the log:\n{log:?}");
    assert!(
        !log.contains('\r'),
        "a carriage return in the log:\n{log:?}"
    );
    let forged: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("2026-01-01T00:00:00Z"))
        .collect();
    assert!(forged.is_empty(), "forged lines: {forged:?}");
}

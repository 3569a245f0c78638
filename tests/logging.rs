//! The log of the real binary under a stranger's text: provider-supplied strings cannot
//! forge log lines or put escape codes into the log, and a log that is not a terminal
//! gets no colours. And what a command prints on stderr when it fails: the error chain,
//! a backtrace only when asked for one.

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

/// Removes the caller's `PAYNOTIFY_…`, colour, log and backtrace settings from `cmd`.
fn scrub(cmd: &mut Command) -> &mut Command {
    for (k, _) in std::env::vars() {
        if k.starts_with("PAYNOTIFY_")
            || [
                "NO_COLOR",
                "RUST_BACKTRACE",
                "RUST_LIB_BACKTRACE",
                "RUST_LOG",
            ]
            .contains(&k.as_str())
        {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// The binary, scrubbed ([`scrub`]), in `dir`.
fn bare(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(paynotify_bin());
    // `plugins check` without a configuration opens the user's compiled cache: not the
    // real user's.
    scrub(&mut cmd)
        .current_dir(dir)
        .env("XDG_CACHE_HOME", dir.join(".cache"))
        .stdin(Stdio::null());
    cmd
}

/// Whether `stderr` holds a backtrace: its header, or frame lines (`  12: name` then
/// `at file:line`).
fn has_backtrace(stderr: &str) -> bool {
    stderr.to_ascii_lowercase().contains("backtrace")
        || stderr.lines().any(|l| l.trim_start().starts_with("at /"))
}

/// A plain user error (a named configuration file that does not exist) with
/// RUST_BACKTRACE=1, as many Rust developers keep it: the message only. `-v` and
/// PAYNOTIFY_BACKTRACE=1 ask for the backtrace.
#[test]
fn a_user_error_prints_its_message_without_a_backtrace_unless_asked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("nope.toml");
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let mut cmd = bare(dir.path());
        cmd.args(extra)
            .arg("--config")
            .arg(&missing)
            .args(["orders", "list"]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run paynotify");
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    let plain = run(&[], &[("RUST_BACKTRACE", "1")]);
    assert!(
        plain.starts_with("Error: ") && plain.contains("nope.toml"),
        "{plain}"
    );
    assert!(
        !has_backtrace(&plain),
        "a backtrace for a user error:\n{plain}"
    );
    assert!(plain.lines().count() <= 4, "{plain}");

    for (extra, env) in [
        (&["-v"][..], &[][..]),
        (&[][..], &[("PAYNOTIFY_BACKTRACE", "1")][..]),
    ] {
        let verbose = run(extra, env);
        assert!(verbose.contains("nope.toml"), "{verbose}");
        assert!(
            has_backtrace(&verbose),
            "no backtrace with {extra:?} {env:?}:\n{verbose}"
        );
    }
}

/// Every command's log, not only `serve`'s: no colours into a pipe; on a terminal,
/// colours unless NO_COLOR is set (the terminal is `script`'s pseudo-terminal).
#[test]
fn command_logs_are_coloured_only_on_a_terminal_without_no_color() {
    let dir = tempfile::tempdir().expect("temp dir");
    // No configuration file here: `config check`'s loader warns that it runs on defaults.
    let out = bare(dir.path())
        .args(["config", "check"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run paynotify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("WARN"), "a log line: {stderr}");
    assert!(!stderr.contains("\x1b["), "colours into a pipe: {stderr:?}");

    let script = std::path::Path::new("/usr/bin/script");
    if !script.is_file() {
        println!("skipped the terminal half: no /usr/bin/script (util-linux) here");
        return;
    }
    let on_terminal = |no_color: Option<&str>| {
        let command = format!("'{}' config check", paynotify_bin().display());
        let mut cmd = Command::new(script);
        scrub(&mut cmd)
            .args(["-qec", &command, "/dev/null"])
            .current_dir(dir.path())
            .env("XDG_CACHE_HOME", dir.path().join(".cache"))
            .stdin(Stdio::null());
        if let Some(v) = no_color {
            cmd.env("NO_COLOR", v);
        }
        let out = cmd.output().expect("run script");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let coloured = on_terminal(None);
    assert!(
        coloured.contains("WARN") && coloured.contains("\x1b["),
        "no colours on a terminal: {coloured:?}"
    );
    let plain = on_terminal(Some("1"));
    assert!(
        plain.contains("WARN") && !plain.contains("\x1b["),
        "colours despite NO_COLOR: {plain:?}"
    );
}

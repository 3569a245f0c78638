//! Alipay public-key certificate mode and GBK notifications end to end: a real server with
//! a certificate-mode account (app, Alipay and root certificates in files), notifications
//! signed by an independent signer. A genuine one pays once; one naming an Alipay
//! certificate the account does not hold, a forged one, a tampered one, a re-encoded one
//! and one in an unknown charset are refused with their reason and change nothing.
//! `config check` names the key and file of a missing or unreadable certificate.

use std::collections::BTreeMap;

use paynotify::store::{status, Verdict};
use paynotify_tests::alipay_cert::{self, APP_ID};
use paynotify_tests::process::paynotify_cli;
use paynotify_tests::{alipay, Options, TestServer};
use serde_json::json;

const FORM: &str = "application/x-www-form-urlencoded; charset=utf-8";

/// Writes the account's certificate files into `dir`; the Alipay one is `alipay_cert`.
fn account_toml(dir: &std::path::Path, alipay_cert: &str) -> String {
    let (app, _, root) = alipay_cert::cert_files();
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write certificate");
        path.display().to_string()
    };
    format!(
        r#"
[[accounts]]
provider = "alipay"
name = "c"
app_id = "{APP_ID}"
app_cert_file = "{app}"
alipay_cert_file = "{alipay}"
alipay_root_cert_file = "{root}"
"#,
        app = write(&format!("appCertPublicKey_{APP_ID}.crt"), &app),
        alipay = write("alipayCertPublicKey_RSA2.crt", alipay_cert),
        root = write("alipayRootCert.crt", &root),
    )
}

async fn server(dir: &tempfile::TempDir, alipay_cert: &str) -> TestServer {
    let mut options = Options::with_plugins(&["recharge"]);
    options.extra_config = account_toml(dir.path(), alipay_cert);
    TestServer::start(options).await
}

async fn recharge(s: &TestServer, out_trade_no: &str, user: &str, fen: i64) {
    s.create_order(json!({
        "type": "recharge", "total_fee": fen, "user_id": user, "provider": "alipay",
        "account": "c", "out_trade_no": out_trade_no, "custom": { "recharge_balance": fen }
    }))
    .await;
}

async fn unchanged(s: &TestServer, out_trade_no: &str, user: &str) {
    let order = s.order(out_trade_no).await;
    assert_eq!(order.status, status::UNPAID, "{out_trade_no}");
    assert_eq!(order.transaction_id, None, "{out_trade_no}");
    assert_eq!(s.document("users", user).await, None, "{out_trade_no}");
}

fn paid(
    out_trade_no: &str,
    charset: &str,
    subject: &str,
    sn: Option<&str>,
) -> BTreeMap<String, String> {
    let mut f = alipay::paid(APP_ID, out_trade_no, "0.01", &format!("2026{out_trade_no}"));
    f.remove("seller_id");
    f.insert("charset".into(), charset.into());
    f.insert("subject".into(), subject.into());
    if let Some(sn) = sn {
        f.insert("alipay_cert_sn".into(), sn.into());
    }
    f
}

async fn send(s: &TestServer, body: String) -> (u16, String) {
    s.notify("/notify/alipay/c", FORM, body).await
}

const SUCCESS: (u16, &str) = (200, "success");
const FAILURE: (u16, &str) = (200, "failure");

fn answer(a: (u16, String)) -> (u16, &'static str) {
    match a.1.as_str() {
        "success" => (a.0, "success"),
        "failure" => (a.0, "failure"),
        other => panic!("unexpected answer {} {other}", a.0),
    }
}

#[tokio::test]
async fn cert_mode_pays_genuine_notifications_and_refuses_the_rest() {
    let dir = tempfile::tempdir().expect("dir");
    let (_, alipay_pem, _) = alipay_cert::cert_files();
    let s = server(&dir, &alipay_pem).await;
    let k = alipay_cert::keys();
    let held = alipay_cert::alipay_cert_sn();
    let utf8 = encoding_rs::UTF_8;
    let gbk = encoding_rs::GBK;

    // Genuine, naming the certificate held: pays once.
    recharge(&s, "CM0001", "cm1", 1).await;
    let body = alipay_cert::body_in(
        &paid("CM0001", "utf-8", "会员充值", Some(&held)),
        &k[1],
        utf8,
    );
    assert_eq!(answer(send(&s, body.clone()).await), SUCCESS);
    assert_eq!(answer(send(&s, body).await), SUCCESS);
    assert_eq!(s.order("CM0001").await.status, status::PAID);
    assert_eq!(
        s.document("users", "cm1")
            .await
            .and_then(|d| d["balance"].as_i64()),
        Some(1)
    );

    // Signed by Alipay, but naming a certificate this account does not hold.
    recharge(&s, "CM0002", "cm2", 1).await;
    let new_sn = alipay_cert::new_alipay_cert_sn();
    let body = alipay_cert::body_in(&paid("CM0002", "utf-8", "x", Some(&new_sn)), &k[1], utf8);
    assert_eq!(answer(send(&s, body).await), FAILURE);
    unchanged(&s, "CM0002", "cm2").await;

    // Forged: the right SN, signed by the root's key, the app's key, a stranger's key.
    for signer in [&k[0], &k[2], &k[3]] {
        let body = alipay_cert::body_in(&paid("CM0002", "utf-8", "x", Some(&held)), signer, utf8);
        assert_eq!(answer(send(&s, body).await), FAILURE);
    }
    // Tampered after signing: the amount raised.
    let body = alipay_cert::body_in(&paid("CM0002", "utf-8", "x", Some(&held)), &k[1], utf8);
    let tampered = body.replace("total_amount=0.01", "total_amount=0.02");
    assert_ne!(tampered, body);
    assert_eq!(answer(send(&s, tampered).await), FAILURE);
    unchanged(&s, "CM0002", "cm2").await;

    // GBK, with a Chinese subject: decoded by its charset, verified, paid.
    recharge(&s, "CM0003", "cm3", 1).await;
    let subject = "会员充值（测试）";
    let body = alipay_cert::body_in(&paid("CM0003", "GBK", subject, Some(&held)), &k[1], gbk);
    assert!(body.contains("%BB%E1"), "GBK on the wire: {body}");
    assert_eq!(answer(send(&s, body.clone()).await), SUCCESS);
    let order = s.order("CM0003").await;
    assert_eq!(order.status, status::PAID);
    assert_eq!(order.original_data.expect("data")["subject"], subject);

    // The same GBK notification re-encoded as UTF-8, genuine signature kept: refused.
    recharge(&s, "CM0004", "cm4", 1).await;
    let genuine = alipay_cert::body_in(&paid("CM0004", "GBK", subject, Some(&held)), &k[1], gbk);
    let sign_of = |b: &str| {
        b.split("&sign=")
            .nth(1)
            .and_then(|t| t.split('&').next())
            .expect("sign")
            .to_owned()
    };
    for charset in ["GBK", "utf-8"] {
        let other =
            alipay_cert::body_in(&paid("CM0004", charset, subject, Some(&held)), &k[3], utf8);
        let forged = other.replace(&sign_of(&other), &sign_of(&genuine));
        assert_eq!(answer(send(&s, forged).await), FAILURE, "{charset}");
    }
    unchanged(&s, "CM0004", "cm4").await;

    // An unknown charset, even signed: refused with the reason.
    let body = alipay_cert::body_in(&paid("CM0004", "BIG5", "abc", Some(&held)), &k[1], utf8);
    assert_eq!(answer(send(&s, body).await), FAILURE);
    unchanged(&s, "CM0004", "cm4").await;

    let stored: Vec<(Verdict, String)> = s
        .notifications_of("alipay")
        .await
        .into_iter()
        .map(|n| (n.verdict, n.reason.unwrap_or_default()))
        .collect();
    let expected: &[(Verdict, &str)] = &[
        (Verdict::Paid, ""),
        (Verdict::Duplicate, ""),
        (Verdict::Rejected, "does not hold"),
        (Verdict::Rejected, "signature does not match"),
        (Verdict::Rejected, "signature does not match"),
        (Verdict::Rejected, "signature does not match"),
        (Verdict::Rejected, "signature does not match"),
        (Verdict::Paid, ""),
        (Verdict::Rejected, ""),
        (Verdict::Rejected, ""),
        (Verdict::Rejected, "charset `BIG5`"),
    ];
    assert_eq!(stored.len(), expected.len(), "{stored:?}");
    for (i, ((verdict, reason), (want, why))) in stored.iter().zip(expected).enumerate() {
        assert_eq!(verdict, want, "#{i}: {reason}");
        assert!(reason.contains(why), "#{i}: {reason}");
    }
    // The refusal says what to configure.
    assert!(
        stored[2].1.contains(&new_sn) && stored[2].1.contains("alipay_cert_file"),
        "{}",
        stored[2].1
    );
}

#[tokio::test]
async fn a_rotated_alipay_certificate_is_accepted_once_configured() {
    let dir = tempfile::tempdir().expect("dir");
    let s = server(&dir, &alipay_cert::rotated_alipay_cert()).await;
    let k = alipay_cert::keys();
    recharge(&s, "RT0001", "rt1", 1).await;
    let new_sn = alipay_cert::new_alipay_cert_sn();
    let body = alipay_cert::body_in(
        &paid("RT0001", "utf-8", "x", Some(&new_sn)),
        &k[1],
        encoding_rs::UTF_8,
    );
    assert_eq!(answer(send(&s, body).await), SUCCESS);
    // The old certificate is no longer held.
    recharge(&s, "RT0002", "rt2", 1).await;
    let old = alipay_cert::alipay_cert_sn();
    let body = alipay_cert::body_in(
        &paid("RT0002", "utf-8", "x", Some(&old)),
        &k[1],
        encoding_rs::UTF_8,
    );
    assert_eq!(answer(send(&s, body).await), FAILURE);
    unchanged(&s, "RT0002", "rt2").await;
}

#[tokio::test]
async fn config_check_names_the_key_and_file_of_a_bad_certificate() {
    let dir = tempfile::tempdir().expect("dir");
    let (_, alipay_pem, _) = alipay_cert::cert_files();
    let accounts = account_toml(dir.path(), &alipay_pem);
    let config = dir.path().join("paynotify.toml");
    let check = |text: String| {
        let config = config.clone();
        async move {
            std::fs::write(&config, text).expect("config");
            let out = paynotify_cli(&config, &["config", "check"], &[]).await;
            (
                out.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            )
        }
    };
    let (ok, text) = check(accounts.clone()).await;
    assert!(ok, "{text}");

    // Missing.
    let missing = dir.path().join("nowhere.crt").display().to_string();
    let root = dir.path().join("alipayRootCert.crt").display().to_string();
    let (ok, text) = check(accounts.replace(&root, &missing)).await;
    assert!(!ok, "{text}");
    assert!(text.contains("accounts[0].alipay_root_cert_file"), "{text}");
    assert!(text.contains("nowhere.crt"), "{text}");

    // Unreadable (a directory).
    let app = dir
        .path()
        .join(format!("appCertPublicKey_{APP_ID}.crt"))
        .display()
        .to_string();
    let (ok, text) = check(accounts.replace(&app, &dir.path().display().to_string())).await;
    assert!(!ok, "{text}");
    assert!(text.contains("app_cert_file"), "{text}");

    // Not a certificate.
    let junk = dir.path().join("junk.crt");
    std::fs::write(
        &junk,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .expect("junk");
    let alipay = dir
        .path()
        .join("alipayCertPublicKey_RSA2.crt")
        .display()
        .to_string();
    let (ok, text) = check(accounts.replace(&alipay, &junk.display().to_string())).await;
    assert!(!ok, "{text}");
    assert!(
        text.contains("alipay_cert_file") && text.contains("junk.crt"),
        "{text}"
    );

    // A key missing altogether.
    let without_root: String = accounts
        .lines()
        .filter(|l| !l.starts_with("alipay_root_cert_file"))
        .map(|l| format!("{l}\n"))
        .collect();
    let (ok, text) = check(without_root).await;
    assert!(!ok, "{text}");
    assert!(text.contains("alipay_root_cert"), "{text}");
}

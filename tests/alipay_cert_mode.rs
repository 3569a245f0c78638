//! Alipay public-key certificate mode and GBK notifications end to end: a real server with
//! a certificate-mode account (app, Alipay and root certificates in files), notifications
//! signed by an independent signer. A genuine one pays once; one naming an Alipay
//! certificate the account does not hold, a forged one, a tampered one, a re-encoded one
//! and one in an unknown charset are refused with their reason and change nothing.
//! `config check` names the key and file of a missing or unreadable certificate.
//! Reconciliation queries a local stand-in gateway that, like Alipay, wants
//! `app_cert_sn` and `alipay_root_cert_sn` and answers with `alipay_cert_sn` beside `sign`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use base64::Engine as _;
use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use rsa::signature::{SignatureEncoding, Signer, Verifier};
use rsa::RsaPrivateKey;
use sha2::Sha256;

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

/// What the stand-in gateway answers with, and what it saw.
struct Gateway {
    /// The key that signs answers, and the `alipay_cert_sn` put beside them.
    signer: RsaPrivateKey,
    cert_sn: String,
    /// Requests whose signature or SNs were wrong.
    refused: Vec<String>,
    queries: usize,
}

type Shared = Arc<Mutex<Gateway>>;

/// `alipay.trade.query` as Alipay answers it for a certificate-mode app: the request must
/// be signed with the app key over every parameter but `sign` and carry the app's and the
/// root's SNs; the answer (every order paid, 0.01) is signed over the response node's
/// text, `alipay_cert_sn` beside it.
async fn gateway(State(g): State<Shared>, body: Bytes) -> String {
    let params: BTreeMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let get = |k: &str| params.get(k).cloned().unwrap_or_default();
    let text = params
        .iter()
        .filter(|(k, v)| k.as_str() != "sign" && !v.is_empty())
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let signed = base64::engine::general_purpose::STANDARD
        .decode(get("sign"))
        .ok()
        .and_then(|b| Signature::try_from(b.as_slice()).ok())
        .is_some_and(|sig| {
            VerifyingKey::<Sha256>::new(alipay_cert::keys()[2].to_public_key())
                .verify(text.as_bytes(), &sig)
                .is_ok()
        });
    let biz: serde_json::Value = serde_json::from_str(&get("biz_content")).unwrap_or_default();
    let no = biz["out_trade_no"].as_str().unwrap_or_default().to_owned();
    let mut g = g.lock().expect("gateway");
    let inner = if !signed
        || get("app_cert_sn") != alipay_cert::app_cert_sn()
        || get("alipay_root_cert_sn") != alipay_cert::root_cert_sn()
    {
        g.refused.push(text.clone());
        json!({"code": "40002", "msg": "Invalid Arguments", "sub_code": "isv.invalid-signature"})
    } else {
        g.queries += 1;
        json!({
            "code": "10000", "msg": "Success", "out_trade_no": no, "trade_no": format!("Q{no}"),
            "trade_status": "TRADE_SUCCESS", "total_amount": "0.01",
            "send_pay_date": "2026-01-01 08:00:05"
        })
    }
    .to_string();
    let sign = base64::engine::general_purpose::STANDARD.encode(
        SigningKey::<Sha256>::new(g.signer.clone())
            .sign(inner.as_bytes())
            .to_bytes(),
    );
    format!(
        r#"{{"alipay_trade_query_response":{inner},"alipay_cert_sn":"{}","sign":"{sign}"}}"#,
        g.cert_sn
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconcile_queries_with_the_sns_and_trusts_only_the_certificate_held() {
    let k = alipay_cert::keys();
    let g: Shared = Arc::new(Mutex::new(Gateway {
        signer: k[1].clone(),
        cert_sn: alipay_cert::alipay_cert_sn(),
        refused: Vec::new(),
        queries: 0,
    }));
    let router = axum::Router::new()
        .route("/gateway.do", post(gateway))
        .with_state(g.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });

    let dir = tempfile::tempdir().expect("dir");
    let (_, alipay_pem, _) = alipay_cert::cert_files();
    let key = dir.path().join("app_private_key.pem");
    std::fs::write(
        &key,
        k[2].to_pkcs8_pem(LineEnding::LF).expect("pem").as_bytes(),
    )
    .expect("key");
    let mut options = Options::with_plugins(&["recharge"]);
    options.extra_config = format!(
        "{}app_private_key_file = \"{}\"\napi_base = \"{base}\"\n",
        account_toml(dir.path(), &alipay_pem),
        key.display()
    );
    let s = TestServer::start(options).await;
    let reconcile = |no: &'static str| {
        let s = &s;
        async move {
            let (status, v) = s
                .api(
                    "POST",
                    &format!("/api/admin/reconcile?older_than_secs=0&order={no}"),
                    None,
                )
                .await;
            assert_eq!(status, 200, "{v}");
            v
        }
    };

    // Signed by Alipay's certificate, which the answer names: paid.
    recharge(&s, "RQ0001", "rq1", 1).await;
    let v = reconcile("RQ0001").await;
    assert_eq!(s.order("RQ0001").await.status, status::PAID, "{v}");

    // The answer names a certificate the account does not hold: not trusted.
    recharge(&s, "RQ0002", "rq2", 1).await;
    g.lock().expect("gateway").cert_sn = alipay_cert::new_alipay_cert_sn();
    let v = reconcile("RQ0002").await;
    assert!(v.to_string().contains("does not hold"), "{v}");
    unchanged(&s, "RQ0002", "rq2").await;

    // Signed by someone else under the right SN: not trusted.
    {
        let mut g = g.lock().expect("gateway");
        g.cert_sn = alipay_cert::alipay_cert_sn();
        g.signer = k[3].clone();
    }
    let v = reconcile("RQ0002").await;
    assert!(v.to_string().contains("signature"), "{v}");
    unchanged(&s, "RQ0002", "rq2").await;

    let g = g.lock().expect("gateway");
    assert_eq!(
        g.refused,
        Vec::<String>::new(),
        "requests the gateway refused"
    );
    assert_eq!(g.queries, 3);
}

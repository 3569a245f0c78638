//! WeChat Pay v3 platform certificates that rotate themselves (issue 25 §3), end to end:
//! an account with `download_platform_certs = true` and no configured key downloads its
//! certificates from a stand-in of `GET /v3/certificates` ([`CertsStandIn`]), verifies
//! notifications with them, picks up a rotated serial without a restart, shares what it
//! downloaded with a second host on the same database, never uses an expired certificate
//! and stores nothing from a tampered download. WeChat Pay is called at most once a minute
//! for serials nobody knows.

use paynotify::store::status;
use paynotify_tests::wechat_certs::{CertsStandIn, PlatformCert, Tamper};
use paynotify_tests::{fake_provider, wait_until, wechat_v3, Options, TestServer};
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use serde_json::json;

const SERIAL_A: &str = "1A0000000000000000000000000000000000000A";
const SERIAL_B: &str = "2B0000000000000000000000000000000000000B";
const SERIAL_EXPIRED: &str = "3C0000000000000000000000000000000000000C";
const SERIAL_SHORT: &str = "4D0000000000000000000000000000000000000D";
const SERIAL_BOGUS: &str = "5E0000000000000000000000000000000000000E";

/// A certificate valid from an hour ago for 30 days.
fn valid(key_index: usize, serial: &str) -> PlatformCert {
    let now = wechat_v3::now();
    PlatformCert::new(
        &wechat_v3::keys()[key_index],
        serial,
        now - 3600,
        now + 30 * 86_400,
    )
}

/// A server whose v3 account `a` downloads its platform certificates from `standin`, on
/// `database` (a fresh one if `None`). Its refresh job runs when `refresh` says so.
async fn server(standin: &CertsStandIn, database: Option<String>, refresh: bool) -> TestServer {
    let dir = tempfile::tempdir().expect("dir");
    let key_path = dir.path().join("apiclient_key.pem");
    let pem = fake_provider::host_keys()
        .0
        .to_pkcs8_pem(LineEnding::LF)
        .expect("pem");
    std::fs::write(&key_path, pem.as_bytes()).expect("write key");
    let mut options = Options::with_plugins(&["recharge"]).database_url(database);
    options.extra_config = format!(
        r#"
[[accounts]]
provider = "wechat-v3"
name = "a"
appid = "{appid}"
mch_id = "{mch}"
api_v3_key = "{v3key}"
download_platform_certs = true
merchant_private_key_file = "{key}"
merchant_serial_no = "{serial}"
api_base = "{base}"
"#,
        appid = wechat_v3::APPID_A,
        mch = wechat_v3::MCH_ID_A,
        v3key = wechat_v3::API_V3_KEY,
        key = key_path.display(),
        serial = fake_provider::V3_MERCHANT_SERIAL,
        base = standin.base,
    );
    let s = TestServer::start(options).await;
    // The key file is read at start.
    drop(dir);
    if refresh {
        // `paynotify serve` starts it; the test server leaves it to the test.
        let job = s.app.start_platform_certs().expect("an account downloads");
        std::mem::forget(job);
    }
    s
}

/// The serials stored in the database.
async fn stored(s: &TestServer) -> Vec<String> {
    s.app
        .store
        .platform_certs()
        .platform_certs(None)
        .await
        .expect("db")
        .into_iter()
        .map(|c| c.serial)
        .collect()
}

/// Creates a recharge order and sends its payment notification signed with `cert`'s key
/// under `serial`; the HTTP status.
async fn pay(s: &TestServer, no: &str, key: &rsa::RsaPrivateKey, serial: &str) -> u16 {
    s.create_order(json!({
        "type": "recharge", "total_fee": 100, "user_id": format!("u-{no}"),
        "provider": "wechat-v3", "account": "a",
        "out_trade_no": no, "custom": { "recharge_balance": 100 }
    }))
    .await;
    let tx = wechat_v3::transaction(
        wechat_v3::APPID_A,
        wechat_v3::MCH_ID_A,
        no,
        100,
        &format!("42{no}"),
        "SUCCESS",
    );
    let body = wechat_v3::body("TRANSACTION.SUCCESS", &tx, wechat_v3::API_V3_KEY);
    let headers = wechat_v3::headers(key, serial, wechat_v3::now(), &body);
    s.notify_with_headers("/notify/wechat-v3/a", "application/json", &headers, body)
        .await
        .0
}

/// The reason stored with the last notification.
async fn last_reason(s: &TestServer) -> String {
    s.notifications_of("wechat-v3")
        .await
        .pop()
        .and_then(|n| n.reason)
        .unwrap_or_default()
}

#[tokio::test]
async fn downloads_rotated_certificates_and_shares_them_between_hosts() {
    let a = valid(0, SERIAL_A);
    let b = valid(2, SERIAL_B);
    let standin = CertsStandIn::start(vec![a.clone()], a.clone()).await;
    let s = server(&standin, None, true).await;
    wait_until(10, "the first download", || async {
        (stored(&s).await == [SERIAL_A]).then_some(())
    })
    .await;
    assert_eq!(pay(&s, "PCERT-C1", &a.key, SERIAL_A).await, 204);
    assert_eq!(s.order("PCERT-C1").await.status, status::PAID);
    assert_eq!(standin.downloads(), 1);

    // WeChat publishes a new certificate (still signing with the old one, as it does for
    // a while) and starts notifying with it: picked up on the unknown serial, no restart.
    standin.lock().certs.push(b.clone());
    assert_eq!(pay(&s, "PCERT-C2", &b.key, SERIAL_B).await, 204);
    assert_eq!(s.order("PCERT-C2").await.status, status::PAID);
    assert_eq!(standin.downloads(), 2);
    let mut serials = stored(&s).await;
    serials.sort();
    assert_eq!(serials, [SERIAL_A, SERIAL_B]);

    // Strangers' serials: refused, and WeChat is not asked again within the minute.
    for no in ["PCERT-C3", "PCERT-C4"] {
        assert_eq!(pay(&s, no, &wechat_v3::keys()[3], SERIAL_BOGUS).await, 400);
        assert_eq!(s.order(no).await.status, status::UNPAID);
    }
    assert_eq!(standin.downloads(), 2);

    // A second host on the same database verifies with what the first stored, offline.
    let s2 = server(&standin, Some(s.database_url.clone()), false).await;
    assert_eq!(pay(&s2, "PCERT-C5", &b.key, SERIAL_B).await, 204);
    assert_eq!(s2.order("PCERT-C5").await.status, status::PAID);
    // Another rotation, found by host 1's download: host 2 reads it from the database.
    let c = valid(1, "6F0000000000000000000000000000000000000F");
    standin.lock().certs.push(c.clone());
    // Host 1's once-a-minute slot is spent; its refresh job would fetch it within 12 h.
    // Host 2's own slot is free, so it downloads once and stores it for both.
    assert_eq!(pay(&s2, "PCERT-C6", &c.key, &c.serial).await, 204);
    assert_eq!(standin.downloads(), 3);
    assert_eq!(pay(&s, "PCERT-C7", &c.key, &c.serial).await, 204);
    assert_eq!(standin.downloads(), 3, "host 1 read it from the database");

    // `paynotify providers certs` lists them, with where they came from.
    let list = paynotify::providers::wechat_v3::certs::list(&s.app.config.accounts, &*s.app.store)
        .await
        .expect("list");
    assert_eq!(list.len(), 3);
    assert!(list.iter().all(|c| c.source.starts_with("downloaded by ")));
    assert!(standin.lock().bad_requests.is_empty());
}

#[tokio::test]
async fn an_expired_certificate_is_never_used() {
    let a = valid(0, SERIAL_A);
    let now = wechat_v3::now();
    let expired = PlatformCert::new(
        &wechat_v3::keys()[2],
        SERIAL_EXPIRED,
        now - 10 * 86_400,
        now - 86_400,
    );
    let standin = CertsStandIn::start(vec![a.clone(), expired.clone()], a).await;
    let s = server(&standin, None, true).await;
    wait_until(10, "the first download", || async {
        (stored(&s).await == [SERIAL_A]).then_some(())
    })
    .await;
    // A certificate that expires in a few seconds joins the list.
    let until = wechat_v3::now() + 5;
    let short = PlatformCert::new(&wechat_v3::keys()[1], SERIAL_SHORT, until - 3600, until);
    standin.lock().certs.push(short.clone());

    // Signed with the certificate WeChat lists as expired: the unknown serial downloads
    // again (bringing the short-lived one), and the expired one is neither stored nor used.
    assert_eq!(pay(&s, "PCERT-X1", &expired.key, SERIAL_EXPIRED).await, 400);
    assert_eq!(s.order("PCERT-X1").await.status, status::UNPAID);
    assert_eq!(standin.downloads(), 2);
    let mut serials = stored(&s).await;
    serials.sort();
    assert_eq!(
        serials,
        [SERIAL_A, SERIAL_SHORT],
        "an expired one is not stored"
    );

    // One that was valid when stored and has expired since: refused, no download.
    let wait = (until + 1 - wechat_v3::now()).max(0) as u64;
    tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
    assert_eq!(pay(&s, "PCERT-X2", &short.key, SERIAL_SHORT).await, 400);
    assert_eq!(s.order("PCERT-X2").await.status, status::UNPAID);
    let reason = last_reason(&s).await;
    assert!(reason.contains("expired"), "{reason}");
    assert_eq!(standin.downloads(), 2);
}

#[tokio::test]
async fn a_tampered_download_is_not_stored() {
    let a = valid(0, SERIAL_A);
    for tamper in [Tamper::BadSignature, Tamper::AlteredCiphertext] {
        let standin = CertsStandIn::start(vec![a.clone()], a.clone()).await;
        standin.lock().tamper = tamper;
        let s = server(&standin, None, true).await;
        wait_until(10, "the first download", || async {
            (standin.downloads() >= 1).then_some(())
        })
        .await;
        // The notification's unknown serial asks once more; still refused.
        assert_eq!(
            pay(&s, "PCERT-T1", &a.key, SERIAL_A).await,
            400,
            "{tamper:?}"
        );
        assert_eq!(s.order("PCERT-T1").await.status, status::UNPAID);
        assert_eq!(standin.downloads(), 2, "{tamper:?}");
        assert!(stored(&s).await.is_empty(), "{tamper:?}: nothing stored");
    }
}

#[tokio::test]
async fn once_trusted_only_a_trusted_signature_adds_a_certificate() {
    let a = valid(0, SERIAL_A);
    let b = valid(2, SERIAL_B);
    let standin = CertsStandIn::start(vec![a.clone()], a.clone()).await;
    let s = server(&standin, None, true).await;
    wait_until(10, "the first download", || async {
        (stored(&s).await == [SERIAL_A]).then_some(())
    })
    .await;
    // Someone answering in WeChat's place with a certificate of their own, signed by it,
    // encrypted under the right APIv3 key: refused while `a` is trusted.
    {
        let mut st = standin.lock();
        st.certs = vec![a.clone(), b.clone()];
        st.signer = b.clone();
    }
    assert_eq!(pay(&s, "PCERT-S1", &b.key, SERIAL_B).await, 400);
    assert_eq!(s.order("PCERT-S1").await.status, status::UNPAID);
    assert_eq!(stored(&s).await, [SERIAL_A]);
    assert!(last_reason(&s).await.contains(SERIAL_B));
}

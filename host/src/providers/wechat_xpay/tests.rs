//! Message-push crypto and event verification.

use super::crypto::{signature, CryptoError};
use super::*;
use crate::providers::{NoticeKind, QUERY_HEADER};

/// WeChat's sample EncodingAESKey (消息加解密 sample code).
const SAMPLE_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const TOKEN: &str = "pamtest";
const APPID: &str = "wxb11529c136998cb6";
const ORIGINAL_ID: &str = "gh_0123456789ab";
const NOW_MS: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const NOW_S: i64 = NOW_MS / 1000;

fn key() -> AesKey {
    AesKey::parse(SAMPLE_KEY).expect("sample key")
}

/// A `xpay_goods_deliver_notify` event as the message push sends it (JSON).
fn goods_event(out_trade_no: &str, price: i64, env: i64) -> Value {
    serde_json::json!({
        "ToUserName": ORIGINAL_ID,
        "FromUserName": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
        "CreateTime": NOW_S,
        "MsgType": "event",
        "Event": "xpay_goods_deliver_notify",
        "OpenId": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
        "OutTradeNo": out_trade_no,
        "Env": env,
        "WeChatPayInfo": {
            "MchOrderNo": "xxxxxxxx",
            "TransactionId": "4200002345202601010000000042",
            "PaidTime": NOW_S - 5
        },
        "GoodsInfo": {
            "ProductId": "pro_30d",
            "Quantity": 1,
            "OrigPrice": price,
            "ActualPrice": price,
            "Attach": "attach"
        }
    })
}

fn provider(aes: bool) -> WechatXpay {
    let k = aes.then(key);
    WechatXpay::new(vec![Account::new(
        "mp",
        APPID,
        TOKEN,
        k,
        XpayEnv::Production,
    )
    .with_original_id(ORIGINAL_ID)])
}

fn verify(p: &WechatXpay, query: &str, body: &str) -> Result<Notice, Rejection> {
    let headers = vec![(QUERY_HEADER.to_owned(), query.to_owned())];
    p.verify(&Inbound {
        account: Some("mp"),
        headers: &headers,
        body: body.as_bytes(),
        received_at: NOW_MS,
    })
}

fn plain_query(ts: i64, nonce: &str) -> String {
    let sig = signature(&[TOKEN, &ts.to_string(), nonce]);
    format!("signature={sig}&timestamp={ts}&nonce={nonce}&openid=oUpF8uMuAJO_M2pxb1Q9zNjWeS6o")
}

/// Safe mode: the body and its query string.
fn safe(event: &Value, appid: &str, ts: i64) -> (String, String) {
    let encrypt = key().encrypt(rand::random(), event.to_string().as_bytes(), appid);
    let nonce = "1320562132";
    let ts = ts.to_string();
    let sig = signature(&[TOKEN, &ts, nonce]);
    let msg_sig = signature(&[TOKEN, &ts, nonce, &encrypt]);
    let body = serde_json::json!({ "ToUserName": ORIGINAL_ID, "Encrypt": encrypt }).to_string();
    let query = format!(
        "signature={sig}&timestamp={ts}&nonce={nonce}&openid=o1&encrypt_type=aes&msg_signature={msg_sig}"
    );
    (body, query)
}

#[test]
fn the_sample_encoding_aes_key_decodes_despite_its_trailing_bits() {
    // `G` ends in the bits 10: strict base64 refuses the key WeChat's own sample uses.
    let k = key();
    let vector = AesKey::parse(SAMPLE_KEY).expect("again");
    assert_eq!(format!("{k:?}"), "AesKey(***)");
    let _ = vector;
    for bad in [
        "",
        &SAMPLE_KEY[..42],
        &format!("{SAMPLE_KEY}H"),
        "abcdefghijklmnopqrstuvwxyz0123456789ABCDEF-",
    ] {
        assert!(AesKey::parse(bad).is_err(), "{bad:?}");
    }
}

/// A vector computed outside this code: the key bytes with Python's base64, the
/// ciphertext with `openssl enc -aes-256-cbc -nopad` over the padded plaintext, the
/// signatures with `hashlib.sha1`.
#[test]
fn hand_computed_vector() {
    const MSG: &str = r#"{"ToUserName":"gh_sample","Event":"xpay_goods_deliver_notify"}"#;
    const ENCRYPT: &str = "Q3stYC6hdFzMh9T8HCvyDG470ilWwNIS/XLVnm9LvxMC4o57boR8dpAHCJ+7d1MaQ//oZeFh3z8ssSiCXhBGushsa+UL1Gax6/c2u9oHfpzLHEcjE8TXOciGXwpU0bMwmeJLy4RhljP5udH6X6Hv1MpIc4YTzuB11K6jrWfjAxQ=";
    assert_eq!(
        key().encrypt(*b"0123456789abcdef", MSG.as_bytes(), APPID),
        ENCRYPT
    );
    let d = key().decrypt(ENCRYPT).expect("decrypts");
    assert_eq!(d.message, MSG.as_bytes());
    assert_eq!(d.appid, APPID);
    assert_eq!(
        signature(&[TOKEN, "1409304348", "xxxxxx", ENCRYPT]),
        "ca792b7e73333126058164e552143df6c271e7a7"
    );
    assert_eq!(
        signature(&["xxxxxx", "1409304348", TOKEN]),
        "76480565cbe296026c53aaacd1ad523a1ddba24f"
    );
}

#[test]
fn encrypt_decrypt_round_trip_and_damage() {
    for len in [0usize, 1, 11, 12, 13, 44, 45, 300] {
        let msg = vec![b'x'; len];
        let e = key().encrypt(rand::random(), &msg, APPID);
        let d = key().decrypt(&e).expect("round trip");
        assert_eq!((d.message, d.appid.as_str()), (msg, APPID));
    }
    let other = AesKey::parse("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefg").expect("key");
    let e = key().encrypt([7; 16], b"{}", APPID);
    assert!(other.decrypt(&e).is_err());
    assert!(matches!(key().decrypt("%%%"), Err(CryptoError::Base64(_))));
    assert!(matches!(key().decrypt("AAAA"), Err(CryptoError::Length(3))));
    assert!(matches!(key().decrypt(""), Err(CryptoError::Length(0))));
}

#[test]
fn url_check_echoes_only_with_the_tokens_signature() {
    let p = provider(false);
    let ts = NOW_S.to_string();
    let sig = signature(&[TOKEN, &ts, "n1"]);
    let q = format!("signature={sig}&timestamp={ts}&nonce=n1&echostr=4321");
    assert_eq!(p.check_url(Some("mp"), &q), Ok("4321".into()));
    assert_eq!(p.check_url(None, &q), Ok("4321".into()));
    let a = p.url_check(Some("mp"), &q).expect("has a check");
    assert_eq!((a.status, a.body), (200, b"4321".to_vec()));
    let forged = q.replace("nonce=n1", "nonce=n2");
    assert!(matches!(
        p.check_url(Some("mp"), &forged),
        Err(Rejection::BadSignature(_))
    ));
    assert_eq!(
        p.url_check(Some("mp"), &forged).expect("answer").status,
        403
    );
    assert!(p.check_url(Some("nope"), &q).is_err());
    assert!(p.check_url(Some("mp"), &format!("{q}&echostr=1")).is_err());
    assert!(p.check_url(Some("mp"), "").is_err());
}

#[test]
fn plaintext_payment_verifies() {
    let body = goods_event("XP0001", 1090, 0).to_string();
    let n = verify(&provider(false), &plain_query(NOW_S, "n1"), &body).expect("verifies");
    assert_eq!(n.account, "mp");
    assert_eq!(n.out_trade_no, "XP0001");
    assert_eq!(
        n.kind,
        NoticeKind::Paid(crate::providers::Payment {
            transaction_id: "4200002345202601010000000042".into(),
            amount: 1090,
            paid_at: Some((NOW_S - 5) * 1000),
        })
    );
    assert_eq!(n.fields["GoodsInfo.ProductId"], "pro_30d");
}

#[test]
fn plaintext_refusals() {
    let p = provider(false);
    let body = goods_event("XP0002", 100, 0).to_string();
    let wrong_token = format!(
        "signature={}&timestamp={NOW_S}&nonce=n1",
        signature(&["othertoken", &NOW_S.to_string(), "n1"])
    );
    assert!(matches!(
        verify(&p, &wrong_token, &body),
        Err(Rejection::BadSignature(_))
    ));
    assert!(matches!(
        verify(&p, "", &body),
        Err(Rejection::BadSignature(_))
    ));
    for ts in [NOW_S - 301, NOW_S + 301] {
        assert!(matches!(
            verify(&p, &plain_query(ts, "n1"), &body),
            Err(Rejection::Stale(_))
        ));
    }
    let twice = format!("{}&nonce=n1", plain_query(NOW_S, "n1"));
    assert!(matches!(
        verify(&p, &twice, &body),
        Err(Rejection::Ambiguous(_))
    ));
    let sandbox = goods_event("XP0002", 100, 1).to_string();
    assert!(matches!(
        verify(&p, &plain_query(NOW_S, "n1"), &sandbox),
        Err(Rejection::AccountMismatch(_))
    ));
    let other_mp = goods_event("XP0002", 100, 0)
        .to_string()
        .replace(ORIGINAL_ID, "gh_ffffffffffff");
    assert!(matches!(
        verify(&p, &plain_query(NOW_S, "n1"), &other_mp),
        Err(Rejection::AccountMismatch(_))
    ));
    // With an EncodingAESKey the account takes safe mode only.
    assert!(matches!(
        verify(&provider(true), &plain_query(NOW_S, "n1"), &body),
        Err(Rejection::Unsupported(_))
    ));
}

#[test]
fn safe_mode_payment_verifies_and_tampering_is_refused() {
    let p = provider(true);
    let (body, query) = safe(&goods_event("XP0003", 600, 0), APPID, NOW_S);
    let n = verify(&p, &query, &body).expect("verifies");
    assert_eq!(n.out_trade_no, "XP0003");
    assert!(matches!(&n.kind, NoticeKind::Paid(pay) if pay.amount == 600));

    let v: Value = serde_json::from_str(&body).expect("json");
    let enc = v["Encrypt"].as_str().expect("Encrypt");
    let flipped = format!(
        "{}{}",
        if enc.starts_with('A') { "B" } else { "A" },
        &enc[1..]
    );
    let tampered = body.replace(enc, &flipped);
    assert!(matches!(
        verify(&p, &query, &tampered),
        Err(Rejection::BadSignature(_))
    ));
    let bad_sig = query.replace("msg_signature=", "msg_signature=0");
    assert!(matches!(
        verify(&p, &bad_sig, &body),
        Err(Rejection::BadSignature(_))
    ));
    // The plaintext `signature` alone does not do in safe mode.
    let no_msg_sig: String = query.split("&msg_signature").next().unwrap_or("").into();
    assert!(matches!(
        verify(&p, &no_msg_sig, &body),
        Err(Rejection::BadSignature(_))
    ));

    let (body, query) = safe(&goods_event("XP0003", 600, 0), "wx0000000000000000", NOW_S);
    assert!(matches!(
        verify(&p, &query, &body),
        Err(Rejection::AccountMismatch(_))
    ));
    let (body, query) = safe(&goods_event("XP0003", 600, 0), APPID, NOW_S - 600);
    assert!(matches!(
        verify(&p, &query, &body),
        Err(Rejection::Stale(_))
    ));
    // Safe mode to an account without a key.
    let (body, query) = safe(&goods_event("XP0003", 600, 0), APPID, NOW_S);
    assert!(matches!(
        verify(&provider(false), &query, &body),
        Err(Rejection::Unsupported(_))
    ));
}

#[test]
fn coin_and_other_events() {
    let p = provider(false);
    let mut coin = goods_event("XP0004", 300, 0);
    coin["Event"] = "xpay_coin_pay_notify".into();
    let info = coin["GoodsInfo"].take();
    coin["CoinInfo"] = info;
    coin.as_object_mut().map(|o| o.remove("GoodsInfo"));
    let n = verify(&p, &plain_query(NOW_S, "n"), &coin.to_string()).expect("coin");
    assert!(matches!(&n.kind, NoticeKind::Paid(pay) if pay.amount == 300));
    // A coin event is read from CoinInfo, not GoodsInfo.
    coin["CoinInfo"] = Value::Null;
    assert!(matches!(
        verify(&p, &plain_query(NOW_S, "n"), &coin.to_string()),
        Err(Rejection::Malformed(_))
    ));

    let mut refund = goods_event("XP0004", 300, 0);
    refund["Event"] = "xpay_refund_notify".into();
    let n = verify(&p, &plain_query(NOW_S, "n"), &refund.to_string()).expect("refund event");
    assert_eq!(
        n.kind,
        NoticeKind::NotPaid {
            state: "xpay_refund_notify".into()
        }
    );
    // Without WeChatPayInfo the order number is the stable id.
    let mut other_channel = goods_event("XP0005", 300, 0);
    other_channel["WeChatPayInfo"] = Value::Null;
    let n = verify(&p, &plain_query(NOW_S, "n"), &other_channel.to_string()).expect("ok");
    assert!(
        matches!(&n.kind, NoticeKind::Paid(pay) if pay.transaction_id == "xpay:XP0005" && pay.paid_at == Some(NOW_MS))
    );
    for (k, v) in [
        ("Env", Value::from(2)),
        ("Env", Value::from("x")),
        ("OutTradeNo", Value::from("")),
    ] {
        let mut e = goods_event("XP0006", 1, 0);
        e[k] = v;
        assert!(
            matches!(
                verify(&p, &plain_query(NOW_S, "n"), &e.to_string()),
                Err(Rejection::Malformed(_))
            ),
            "{k}"
        );
    }
    let mut negative = goods_event("XP0006", 1, 0);
    negative["GoodsInfo"]["ActualPrice"] = Value::from(-1);
    assert!(verify(&p, &plain_query(NOW_S, "n"), &negative.to_string()).is_err());
}

#[test]
fn accounts_load_and_name_the_wrong_key() {
    let cfg = |extra: &str| -> crate::config::AccountConfig {
        toml::from_str(&format!(
            "provider = \"wechat-xpay\"\nappid = \"{APPID}\"\ntoken = \"{TOKEN}\"\n{extra}"
        ))
        .expect("toml")
    };
    assert!(Account::from_config(&cfg("")).is_ok());
    assert!(Account::from_config(&cfg(&format!(
        "encoding_aes_key = \"{SAMPLE_KEY}\"\nenv = \"sandbox\"\noriginal_id = \"gh_1\""
    )))
    .is_ok());
    for (extra, key) in [
        ("encoding_aes_key = \"short\"", "encoding_aes_key"),
        ("env = \"test\"", "env"),
        ("original_id = \"wx1\"", "original_id"),
    ] {
        let e = Account::from_config(&cfg(extra)).expect_err(extra);
        assert!(e.contains(key), "{e}");
    }
    let mut no_token = cfg("");
    no_token.token = None;
    assert!(Account::from_config(&no_token)
        .expect_err("no token")
        .contains("`token` (or token_file)"));
    let mut bad_token = cfg("");
    bad_token.token = Some("has space".into());
    assert!(Account::from_config(&bad_token).is_err());
}

#[test]
fn malformed_pushes_are_rejected_not_panicked_on() {
    let p = provider(false);
    for body in [
        "",
        "not json",
        "[]",
        "{\"Event\":\"a\",\"Event\":\"b\"}",
        "{\"x\":1}x",
    ] {
        assert!(
            verify(&p, &plain_query(NOW_S, "n"), body).is_err(),
            "accepted {body:?}"
        );
    }
    assert!(verify(&p, "%zz&&=", "{}").is_err());
    // Properly signed safe-mode pushes whose Encrypt is anything at all.
    let p = provider(true);
    let ts = NOW_S.to_string();
    let send = |encrypt: &str| {
        let body = serde_json::json!({ "ToUserName": ORIGINAL_ID, "Encrypt": encrypt }).to_string();
        let q = format!(
            "timestamp={ts}&nonce=n&encrypt_type=aes&msg_signature={}",
            signature(&[TOKEN, &ts, "n", encrypt])
        );
        verify(&p, &q, &body)
    };
    use base64::Engine as _;
    for len in [0usize, 1, 15, 16, 32, 48, 64, 96, 500] {
        for _ in 0..20 {
            let bytes: Vec<u8> = (0..len).map(|_| rand::random()).collect();
            let e = base64::engine::general_purpose::STANDARD.encode(bytes);
            assert!(send(&e).is_err(), "random {len} bytes accepted");
        }
    }
    // Decrypts (right key, right appid) to something that is not an event.
    for message in ["not json", "[1]", "\"s\"", ""] {
        let e = key().encrypt([1; 16], message.as_bytes(), APPID);
        assert!(
            matches!(send(&e), Err(Rejection::Malformed(_))),
            "{message:?}"
        );
    }
    assert!(matches!(send(""), Err(Rejection::Malformed(_))));
}

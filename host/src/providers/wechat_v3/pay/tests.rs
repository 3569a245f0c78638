//! Placing and refunding with WeChat Pay v3: what is sent, and what is read back from a
//! signed answer.

use base64::Engine as _;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use rsa::signature::Verifier;
use serde_json::{json, Value};
use sha2::Sha256;

use super::super::tests::{headers, keys, APPID, KEY, MCHID, NOW_MS, NOW_S, PUB_ID};
use super::*;
use crate::config::AccountConfig;
use crate::providers::api::OrderRef;
use crate::providers::wechat_v3::{Account, Partner};

const SP_MCHID: &str = "1900000100";
const SP_APPID: &str = "wx8888888888888888";
const SUB_A: &str = "1900000109";
const SUB_APPID_A: &str = "wxd678efh567hg6999";
const SUB_B: &str = "1900000110";
const NOTIFY: &str = "https://pay.example.com/notify/wechat-v3/a";

/// An API whose merchant key is `keys()[2]` and which believes WeChat Pay's `keys()[0]`.
fn api(mode: Mode) -> Api {
    let [wechatpay, _, merchant] = keys();
    let (appid, mchid) = match mode {
        Mode::Direct => (APPID, MCHID),
        Mode::Partner(_) => (SP_APPID, SP_MCHID),
    };
    let account = Account::new("a", appid, mchid, KEY)
        .expect("account")
        .with_public_key(PUB_ID, wechatpay.to_public_key());
    let pem = merchant.to_pkcs8_pem(LineEnding::LF).expect("pem");
    let config: AccountConfig = toml::from_str(&format!(
        "provider = \"wechat-v3\"\nname = \"a\"\nmerchant_private_key = '''{}'''\nmerchant_serial_no = \"S1\"\n",
        pem.as_str()
    ))
    .expect("account config");
    Api::from_config(&config, &account, &mode)
        .expect("api")
        .expect("has a merchant key")
}

fn partner() -> Api {
    api(Mode::Partner(Partner::new([
        (SUB_A, Some(SUB_APPID_A)),
        (SUB_B, None),
    ])))
}

fn pay(method: &str) -> PayRequest {
    PayRequest {
        method: method.into(),
        ..PayRequest::default()
    }
}

fn placement<'a>(pay: &'a PayRequest, sub_mchid: Option<&'a str>) -> Placement<'a> {
    Placement {
        order: OrderRef {
            out_trade_no: "P-0001",
            sub_mchid,
        },
        total_fee: 1234,
        pay,
        description: "recharge",
        notify_url: NOTIFY,
        expire_at: Some(NOW_MS + 1_800_000),
    }
}

/// An answer of `status` with `body`, signed by WeChat Pay (or by `signer`).
fn answer(status: u16, body: &Value, signer: &rsa::RsaPrivateKey) -> ProviderAnswer {
    let body = body.to_string();
    ProviderAnswer {
        request: "POST http://wechat.test/v3/…".into(),
        status,
        headers: headers(signer, PUB_ID, NOW_S, &body),
        body: body.into_bytes(),
        received_at: NOW_MS,
    }
}

fn verifies(lines: &[&str], sig: &str) -> bool {
    let message: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(sig)
        .expect("base64");
    let sig = Signature::try_from(bytes.as_slice()).expect("signature");
    VerifyingKey::<Sha256>::new(keys()[2].to_public_key())
        .verify(message.as_bytes(), &sig)
        .is_ok()
}

#[test]
fn check_pay_names_the_field_that_is_wrong() {
    let direct = api(Mode::Direct);
    let field = |a: &Api, p: PayRequest| a.check_pay_request(&p).err().map(|e| e.field);
    let e = direct.check_pay_request(&pay("MWEB")).expect_err("unknown");
    assert_eq!(e.field, "method");
    assert!(e.message.contains("jsapi, native, h5, app"), "{e}");
    assert_eq!(field(&direct, pay("jsapi")), Some("openid"));
    assert_eq!(field(&direct, pay("h5")), Some("client_ip"));
    let mut p = pay("h5");
    p.client_ip = Some("not-an-ip".into());
    assert_eq!(field(&direct, p.clone()), Some("client_ip"));
    p.client_ip = Some("2001:db8::1".into());
    assert_eq!(field(&direct, p), None);
    assert_eq!(field(&direct, pay("native")), None);
    assert_eq!(field(&direct, pay("app")), None);
    let mut p = pay("jsapi");
    p.sub_openid = Some("o-sub".into());
    assert_eq!(field(&direct, p.clone()), Some("sub_openid"));
    // A partner's buyer pays with either openid, not both.
    let partner = partner();
    assert_eq!(field(&partner, p.clone()), None);
    p.openid = Some("o-sp".into());
    assert_eq!(field(&partner, p.clone()), Some("sub_openid"));
    p.sub_openid = None;
    assert_eq!(field(&partner, p.clone()), None);
    p.openid = Some(String::new());
    assert_eq!(field(&partner, p), Some("openid"));
    let mut p = pay("native");
    p.description = Some("x".repeat(128));
    assert_eq!(field(&direct, p), Some("description"));
}

#[test]
fn time_expire_is_china_time() {
    assert_eq!(
        time_expire(NOW_MS + 999).as_deref(),
        Some("2026-01-01T08:00:00+08:00")
    );
}

#[test]
fn a_direct_jsapi_order_names_the_merchant_and_the_buyer() {
    let mut p = pay("jsapi");
    p.openid = Some("oUpF8uMuAJO_M2pxb1Q9zNjWeS6o".into());
    p.client_ip = Some("203.0.113.9".into());
    let req = api(Mode::Direct)
        .order_request(&placement(&p, None))
        .expect("request");
    assert_eq!(req.path, "/v3/pay/transactions/jsapi");
    assert_eq!(
        req.body,
        json!({
            "appid": APPID, "mchid": MCHID, "description": "recharge",
            "out_trade_no": "P-0001", "time_expire": "2026-01-01T08:30:00+08:00",
            "notify_url": NOTIFY, "amount": { "total": 1234, "currency": "CNY" },
            "payer": { "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o" },
            "scene_info": { "payer_client_ip": "203.0.113.9" }
        })
    );
    assert_eq!(
        (req.client_appid.as_str(), req.partnerid.as_str()),
        (APPID, MCHID)
    );

    let mut p = pay("h5");
    p.client_ip = Some("203.0.113.9".into());
    let mut pl = placement(&p, None);
    pl.expire_at = None;
    let req = api(Mode::Direct).order_request(&pl).expect("request");
    assert_eq!(req.path, "/v3/pay/transactions/h5");
    assert_eq!(
        req.body["scene_info"],
        json!({ "payer_client_ip": "203.0.113.9", "h5_info": { "type": "Wap" } })
    );
    assert!(req.body.get("time_expire").is_none() && req.body.get("payer").is_none());
}

#[test]
fn a_partner_order_names_the_sub_merchant_and_the_app_paid_in() {
    let partner = partner();
    let mut p = pay("jsapi");
    p.sub_openid = Some("o-sub".into());
    let req = partner
        .order_request(&placement(&p, Some(SUB_A)))
        .expect("request");
    assert_eq!(req.path, "/v3/pay/partner/transactions/jsapi");
    assert_eq!(req.body["sp_appid"], SP_APPID);
    assert_eq!(req.body["sp_mchid"], SP_MCHID);
    assert_eq!(req.body["sub_appid"], SUB_APPID_A);
    assert_eq!(req.body["sub_mchid"], SUB_A);
    assert_eq!(req.body["payer"], json!({ "sub_openid": "o-sub" }));
    assert!(req.body.get("appid").is_none() && req.body.get("mchid").is_none());
    assert_eq!(req.client_appid, SUB_APPID_A);

    // The service provider's openid: paid in the service provider's app.
    let mut p = pay("jsapi");
    p.openid = Some("o-sp".into());
    let req = partner
        .order_request(&placement(&p, Some(SUB_A)))
        .expect("request");
    assert_eq!(req.body["payer"], json!({ "sp_openid": "o-sp" }));
    assert_eq!(req.client_appid, SP_APPID);
    let req = partner
        .order_request(&placement(&p, Some(SUB_B)))
        .expect("request");
    assert!(req.body.get("sub_appid").is_none());

    // APP: the sub-merchant's app when it has one; partnerid is the sub-merchant.
    let app = pay("app");
    let req = partner
        .order_request(&placement(&app, Some(SUB_A)))
        .expect("request");
    assert_eq!(
        (req.client_appid.as_str(), req.partnerid.as_str()),
        (SUB_APPID_A, SUB_A)
    );
    let req = partner
        .order_request(&placement(&app, Some(SUB_B)))
        .expect("request");
    assert_eq!(
        (req.client_appid.as_str(), req.partnerid.as_str()),
        (SP_APPID, SUB_B)
    );

    // A sub_openid needs the sub-merchant's appid; an order of no sub-merchant of the
    // account cannot be placed.
    let mut p = pay("jsapi");
    p.sub_openid = Some("o-sub".into());
    assert!(matches!(
        partner.order_request(&placement(&p, Some(SUB_B))),
        Err(ApiError::Order(_))
    ));
    assert!(matches!(
        partner.order_request(&placement(&app, Some("1900000999"))),
        Err(ApiError::Order(_))
    ));
    assert!(matches!(
        partner.order_request(&placement(&app, None)),
        Err(ApiError::Order(_))
    ));
}

#[test]
fn client_parameters_are_signed_with_the_merchant_key() {
    let direct = api(Mode::Direct);
    let wechatpay = &keys()[0];
    let mut p = pay("jsapi");
    p.openid = Some("o".into());
    let req = direct.order_request(&placement(&p, None)).expect("request");
    let ok = answer(
        200,
        &json!({ "prepay_id": "wx201410272009395522657a690389285100" }),
        wechatpay,
    );
    let v = direct.read_place_answer(&req, &ok).expect("placed").payment;
    assert_eq!(v["appId"], APPID);
    assert_eq!(
        v["package"],
        "prepay_id=wx201410272009395522657a690389285100"
    );
    assert_eq!(v["signType"], "RSA");
    let s = |k: &str| v[k].as_str().expect(k).to_owned();
    assert!(verifies(
        &[&s("appId"), &s("timeStamp"), &s("nonceStr"), &s("package")],
        &s("paySign")
    ));
    assert!(!verifies(
        &[
            &s("appId"),
            &s("timeStamp"),
            &s("nonceStr"),
            "prepay_id=other"
        ],
        &s("paySign")
    ));

    let app = pay("app");
    let req = direct
        .order_request(&placement(&app, None))
        .expect("request");
    let v = direct.read_place_answer(&req, &ok).expect("placed").payment;
    let s = |k: &str| v[k].as_str().expect(k).to_owned();
    assert_eq!(
        (s("partnerid"), s("package")),
        (MCHID.to_owned(), "Sign=WXPay".to_owned())
    );
    assert!(verifies(
        &[&s("appid"), &s("timestamp"), &s("noncestr"), &s("prepayid")],
        &s("sign")
    ));

    let native = pay("native");
    let req = direct
        .order_request(&placement(&native, None))
        .expect("request");
    let code = answer(
        200,
        &json!({ "code_url": "weixin://wxpay/bizpayurl?pr=p4lpSuKzz" }),
        wechatpay,
    );
    let v = direct
        .read_place_answer(&req, &code)
        .expect("placed")
        .payment;
    assert_eq!(
        v,
        json!({ "code_url": "weixin://wxpay/bizpayurl?pr=p4lpSuKzz" })
    );
    // The answer to another method lacks what this one needs.
    assert!(matches!(
        direct.read_place_answer(&req, &ok),
        Err(ApiError::Refused(Rejection::Malformed(_)))
    ));
}

#[test]
fn refusals_are_believed_only_when_signed() {
    let direct = api(Mode::Direct);
    let native = pay("native");
    let req = direct
        .order_request(&placement(&native, None))
        .expect("request");
    let refusal = json!({ "code": "INVALID_REQUEST", "message": "201 商户订单号重复" });
    match direct.read_place_answer(&req, &answer(400, &refusal, &keys()[0])) {
        Err(ApiError::Declined { code, message, .. }) => {
            assert_eq!(
                (code.as_str(), message.as_str()),
                ("INVALID_REQUEST", "201 商户订单号重复")
            )
        }
        other => panic!("{other:?}"),
    }
    // Signed by someone else: nothing in it is believed, not even the refusal.
    let forged = json!({ "code_url": "weixin://wxpay/bizpayurl?pr=forged" });
    for (status, body) in [(200, &forged), (400, &refusal)] {
        assert!(matches!(
            direct.read_place_answer(&req, &answer(status, body, &keys()[1])),
            Err(ApiError::Refused(_))
        ));
    }
}

#[test]
fn refunds_name_the_payment_and_read_the_verified_state() {
    let partner = partner();
    let start = RefundStart {
        order: OrderRef {
            out_trade_no: "P-0001",
            sub_mchid: Some(SUB_A),
        },
        transaction_id: "4200000001",
        out_refund_no: "RF-1",
        amount: 300,
        total_fee: 1234,
        reason: Some("缺货"),
        notify_url: Some(NOTIFY),
    };
    let (path, body) = partner.refund_request(&start).expect("request");
    assert_eq!(path, "/v3/refund/domestic/refunds");
    assert_eq!(
        body,
        json!({
            "sub_mchid": SUB_A, "transaction_id": "4200000001", "out_refund_no": "RF-1",
            "reason": "缺货", "notify_url": NOTIFY,
            "amount": { "refund": 300, "total": 1234, "currency": "CNY" }
        })
    );
    let direct = api(Mode::Direct);
    let mut start = start;
    start.order.sub_mchid = None;
    start.reason = None;
    start.notify_url = None;
    let (_, body) = direct.refund_request(&start).expect("request");
    assert_eq!(
        body,
        json!({ "transaction_id": "4200000001", "out_refund_no": "RF-1",
                "amount": { "refund": 300, "total": 1234, "currency": "CNY" } })
    );

    let k = &keys()[0];
    let refund = |no: &str, refund: i64, status: &str| {
        json!({ "refund_id": "50000000382019052709732678859", "out_refund_no": no,
                "transaction_id": "4200000001", "out_trade_no": "P-0001", "status": status,
                "amount": { "refund": refund, "total": 1234, "payer_refund": refund, "currency": "CNY" } })
    };
    match direct.read_refund_answer(&start, &answer(200, &refund("RF-1", 300, "PROCESSING"), k)) {
        Ok(RefundStarted::Accepted { refund_id, state }) => {
            assert_eq!(
                (refund_id.as_str(), state.as_str()),
                ("50000000382019052709732678859", "PROCESSING")
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        direct.read_refund_answer(&start, &answer(200, &refund("RF-1", 300, "ABNORMAL"), k)),
        Err(ApiError::Declined { code, .. }) if code == "ABNORMAL"
    ));
    for wrong in [
        refund("RF-2", 300, "SUCCESS"),
        refund("RF-1", 301, "SUCCESS"),
        refund("RF-1", 300, "??"),
    ] {
        assert!(
            matches!(
                direct.read_refund_answer(&start, &answer(200, &wrong, k)),
                Err(ApiError::Refused(_))
            ),
            "{wrong}"
        );
    }
    let refusal = json!({ "code": "NOT_ENOUGH", "message": "基本账户余额不足" });
    assert!(matches!(
        direct.read_refund_answer(&start, &answer(403, &refusal, k)),
        Err(ApiError::Declined { code, .. }) if code == "NOT_ENOUGH"
    ));
    assert!(matches!(
        direct.read_refund_answer(
            &start,
            &answer(200, &refund("RF-1", 300, "SUCCESS"), &keys()[1])
        ),
        Err(ApiError::Refused(_))
    ));
}

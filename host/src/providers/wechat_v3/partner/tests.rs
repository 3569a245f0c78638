//! Partner-mode (服务商) notifications: signed and encrypted exactly as WeChat Pay sends
//! them for a service provider, verified, and refused whenever a field names another
//! service provider, app or sub-merchant.

use serde_json::Value;

use super::super::tests::{envelope, fixture, headers, keys, verify_with, KEY, NOW_S, PUB_ID};
use super::*;
use crate::providers::wechat_v3::WechatV3;
use crate::providers::{Notice, NoticeKind, Provider, Rejection};

const SP_APPID: &str = "wx8888888888888888";
const SP_MCHID: &str = "1900000100";
const SUB_A: &str = "1900000109";
const SUB_APPID_A: &str = "wxd678efh567hg6999";
const SUB_B: &str = "1900000110";

/// A service provider `sp` serving A (with its own app) and B (without).
fn partner() -> WechatV3 {
    let account = Account::new("sp", SP_APPID, SP_MCHID, KEY)
        .expect("account")
        .with_public_key(PUB_ID, keys()[0].to_public_key());
    let mode = Mode::Partner(Partner::new([(SUB_A, Some(SUB_APPID_A)), (SUB_B, None)]));
    WechatV3::new(vec![account]).with_mode("sp", mode)
}

/// A partner transaction as WeChat Pay documents it (服务商 支付成功通知).
fn transaction(sub_mchid: &str, sub_appid: Option<&str>, no: &str, total: i64) -> Value {
    let mut tx = serde_json::json!({
        "sp_appid": SP_APPID,
        "sp_mchid": SP_MCHID,
        "sub_mchid": sub_mchid,
        "out_trade_no": no,
        "transaction_id": "4200000001202601010000000042",
        "trade_type": "JSAPI",
        "trade_state": "SUCCESS",
        "trade_state_desc": "支付成功",
        "bank_type": "CMC",
        "attach": "",
        "success_time": "2026-01-01T08:00:00+08:00",
        "payer": { "sp_openid": "oUpF8uN95-Ptaags6E0mQPaeqQY", "sub_openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o" },
        "amount": { "total": total, "payer_total": total, "currency": "CNY", "payer_currency": "CNY" },
    });
    if let Some(app) = sub_appid {
        tx["sub_appid"] = app.into();
    }
    tx
}

fn send(p: &WechatV3, event: &str, tx: &Value) -> Result<Notice, Rejection> {
    let body = envelope(event, tx, KEY);
    verify_with(p, &headers(&keys()[0], PUB_ID, NOW_S, &body), &body)
}

#[test]
fn each_sub_merchants_payment_verifies_and_names_its_sub_merchant() {
    let p = partner();
    for (sub, app, no) in [
        (SUB_A, Some(SUB_APPID_A), "PA-0001"),
        (SUB_B, None, "PB-0001"),
        // B has no app of its own configured: whatever sub_appid it was paid through.
        (SUB_B, Some("wx0000000000000b0b"), "PB-0002"),
    ] {
        let n = send(&p, "TRANSACTION.SUCCESS", &transaction(sub, app, no, 100))
            .unwrap_or_else(|e| panic!("{sub} {app:?}: {e}"));
        assert_eq!(n.account, "sp");
        assert_eq!(n.sub_mchid.as_deref(), Some(sub));
        assert_eq!(n.out_trade_no, no);
        assert!(matches!(&n.kind, NoticeKind::Paid(p) if p.amount == 100));
        assert_eq!(n.fields["sp_mchid"], SP_MCHID);
        assert_eq!(n.fields["sub_mchid"], sub);
        assert_eq!(n.fields["payer.sub_openid"], "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o");
    }
    assert_eq!(p.sub_merchants("sp"), Some(vec![SUB_A, SUB_B]));
    assert_eq!(p.sub_merchants("other"), None);
}

#[test]
fn another_service_provider_app_or_sub_merchant_is_refused() {
    let p = partner();
    let mismatch = |name: &str, tx: Value, want: &str| {
        let r = send(&p, "TRANSACTION.SUCCESS", &tx);
        assert!(
            matches!(&r, Err(Rejection::AccountMismatch(m)) if m.contains(want)),
            "{name}: {r:?}"
        );
    };
    let good = || transaction(SUB_A, Some(SUB_APPID_A), "PA-0002", 100);
    let mut tx = good();
    tx["sp_mchid"] = "1900000999".into();
    mismatch("another service provider", tx, "sp_mchid `1900000999`");
    let mut tx = good();
    tx["sp_appid"] = "wx0000000000000000".into();
    mismatch("another service-provider app", tx, "sp_appid");
    let mut tx = good();
    tx.as_object_mut().expect("object").remove("sp_appid");
    mismatch("no sp_appid", tx, "sp_appid ``");
    let mut tx = good();
    tx["sub_mchid"] = "1900000777".into();
    mismatch("a sub-merchant not served", tx, "sub_mchid `1900000777`");
    let mut tx = good();
    tx.as_object_mut().expect("object").remove("sub_mchid");
    mismatch("no sub_mchid", tx, "sub_mchid ``");
    mismatch(
        "A's payment through another app",
        transaction(SUB_A, Some("wx0000000000000a0a"), "PA-0003", 100),
        "sub_appid `wx0000000000000a0a`",
    );
    mismatch(
        "A's payment without A's app",
        transaction(SUB_A, None, "PA-0004", 100),
        "sub_appid ``",
    );
    // A direct merchant's transaction (mchid/appid) is not the service provider's,
    // even when its mchid is the service provider's id.
    let direct = serde_json::json!({
        "appid": SP_APPID, "mchid": SP_MCHID, "out_trade_no": "PA-0005",
        "transaction_id": "42", "trade_state": "SUCCESS", "amount": { "total": 100 },
    });
    mismatch("a direct-mode transaction", direct, "sp_mchid ``");
}

#[test]
fn a_partner_transaction_is_refused_by_a_direct_account() {
    let f = fixture();
    let mut tx = transaction(SUB_A, None, "PD-0001", 100);
    tx["sp_mchid"] = super::super::tests::MCHID.into();
    tx["sp_appid"] = super::super::tests::APPID.into();
    let r = send(&f.provider, "TRANSACTION.SUCCESS", &tx);
    assert!(
        matches!(&r, Err(Rejection::AccountMismatch(m)) if m.contains("mchid ``")),
        "{r:?}"
    );
}

#[test]
fn partner_refunds_carry_the_sub_merchant_and_no_app() {
    let p = partner();
    let refund = |sub: &str| {
        serde_json::json!({
            "sp_mchid": SP_MCHID,
            "sub_mchid": sub,
            "out_trade_no": "PB-0009",
            "transaction_id": "4200000001202601010000000043",
            "out_refund_no": "RF-B-1",
            "refund_id": "50000000382019052709732678860",
            "refund_status": "SUCCESS",
            "success_time": "2026-01-01T09:00:00+08:00",
            "amount": { "total": 100, "refund": 30, "payer_total": 100, "payer_refund": 30 },
        })
    };
    let n = send(&p, "REFUND.SUCCESS", &refund(SUB_B)).expect("verifies");
    assert_eq!(n.sub_mchid.as_deref(), Some(SUB_B));
    assert!(matches!(n.kind, NoticeKind::Refunded(_)), "{:?}", n.kind);
    // A has an app of its own, but refunds name none: nothing to compare.
    let n = send(&p, "REFUND.SUCCESS", &refund(SUB_A)).expect("verifies");
    assert_eq!(n.sub_mchid.as_deref(), Some(SUB_A));
    let r = send(&p, "REFUND.SUCCESS", &refund("1900000777"));
    assert!(matches!(r, Err(Rejection::AccountMismatch(_))), "{r:?}");
}

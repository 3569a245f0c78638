//! `[[accounts]]`: one merchant account of one provider, and the providers' names.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The providers paynotify speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProviderKind {
    /// WeChat Pay API v2 (XML, MD5 / HMAC-SHA256).
    WechatV2,
    /// WeChat Pay API v3 (RSA signature, AES-GCM resource).
    WechatV3,
    /// Alipay (form body, RSA2).
    Alipay,
    /// WeChat CloudPay, relayed by a cloud function with a shared secret.
    Cloudpay,
    /// WeChat mini-program virtual payment, by the mini program's message push (SHA-1
    /// signature, AES-256-CBC in safe mode).
    WechatXpay,
}

impl ProviderKind {
    /// Every provider.
    pub const ALL: [ProviderKind; 5] = [
        ProviderKind::WechatV2,
        ProviderKind::WechatV3,
        ProviderKind::Alipay,
        ProviderKind::Cloudpay,
        ProviderKind::WechatXpay,
    ];

    /// The name used in URLs, config and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::WechatV2 => "wechat-v2",
            ProviderKind::WechatV3 => "wechat-v3",
            ProviderKind::Alipay => "alipay",
            ProviderKind::Cloudpay => "cloudpay",
            ProviderKind::WechatXpay => "wechat-xpay",
        }
    }

    /// Parses a provider name.
    pub fn parse(s: &str) -> Option<ProviderKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Reads a notify key: 64 hex characters, or exactly 32 bytes of text.
pub fn parse_notify_key(s: &str) -> Option<[u8; 32]> {
    if s.len() == 64 {
        if let Ok(bytes) = hex::decode(s) {
            return bytes.try_into().ok();
        }
    }
    s.as_bytes().try_into().ok()
}

/// One `[[accounts]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    /// `wechat-v2`, `wechat-v3`, `alipay`, `cloudpay` or `wechat-xpay`.
    pub provider: String,
    /// Account name, used in `/notify/{provider}/{name}` and by orders; default `default`.
    #[serde(default = "default_account_name")]
    pub name: String,
    /// WeChat Pay v3: `direct` (the default: the merchant's own payments) or `partner`
    /// (a service provider, 服务商, receiving its sub-merchants' payments).
    pub mode: Option<String>,
    /// WeChat appid.
    pub appid: Option<String>,
    /// WeChat merchant id.
    pub mch_id: Option<String>,
    /// WeChat Pay v2 API key.
    pub api_key: Option<String>,
    /// File holding the v2 API key.
    pub api_key_file: Option<PathBuf>,
    /// WeChat Pay v2: pin the signature type (`MD5` or `HMAC-SHA256`); absent accepts either.
    pub sign_type: Option<String>,
    /// WeChat Pay v3 partner mode: the service provider's merchant id (服务商户号).
    pub sp_mchid: Option<String>,
    /// WeChat Pay v3 partner mode: the service provider's appid.
    pub sp_appid: Option<String>,
    /// WeChat Pay v3 partner mode: the sub-merchants the service provider serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sub_merchants: Vec<SubMerchantConfig>,
    /// WeChat Pay v3 APIv3 key (32 bytes).
    pub api_v3_key: Option<String>,
    /// File holding the APIv3 key.
    pub api_v3_key_file: Option<PathBuf>,
    /// WeChat Pay public keys by id (`PUB_KEY_ID_…` → PEM file).
    #[serde(default)]
    pub public_keys: std::collections::BTreeMap<String, PathBuf>,
    /// WeChat Pay platform certificates (PEM files).
    #[serde(default)]
    pub platform_certs: Vec<PathBuf>,
    /// WeChat Pay v3: download the platform certificates from `/v3/certificates` (with
    /// the merchant key), keep them in the database and refresh them as WeChat rotates
    /// them. Needs `api_v3_key`, `merchant_private_key_file` and `merchant_serial_no`.
    #[serde(default)]
    pub download_platform_certs: bool,
    /// Alipay app id.
    pub app_id: Option<String>,
    /// Alipay seller id; checked when set.
    pub seller_id: Option<String>,
    /// Alipay public key (PEM or bare base64).
    pub alipay_public_key: Option<String>,
    /// File holding the Alipay public key.
    pub alipay_public_key_file: Option<PathBuf>,
    /// Alipay certificate mode: the app's certificate (`appCertPublicKey_{app_id}.crt`, PEM).
    pub app_cert: Option<String>,
    /// File holding the app's certificate.
    pub app_cert_file: Option<PathBuf>,
    /// Alipay certificate mode: Alipay's certificate (`alipayCertPublicKey_RSA2.crt`, PEM).
    pub alipay_cert: Option<String>,
    /// File holding Alipay's certificate.
    pub alipay_cert_file: Option<PathBuf>,
    /// Alipay certificate mode: Alipay's root bundle (`alipayRootCert.crt`, PEM).
    pub alipay_root_cert: Option<String>,
    /// File holding Alipay's root bundle.
    pub alipay_root_cert_file: Option<PathBuf>,
    /// CloudPay sub-merchant id.
    pub sub_mch_id: Option<String>,
    /// CloudPay relay shared secret.
    pub secret: Option<String>,
    /// File holding the CloudPay secret.
    pub secret_file: Option<PathBuf>,
    /// WeChat mini-program virtual payment: the message-push Token (消息推送 Token).
    pub token: Option<String>,
    /// File holding the message-push Token.
    pub token_file: Option<PathBuf>,
    /// WeChat mini-program virtual payment: the message-push EncodingAESKey (43
    /// characters); with it the account takes safe mode only, without it plaintext only.
    pub encoding_aes_key: Option<String>,
    /// File holding the EncodingAESKey.
    pub encoding_aes_key_file: Option<PathBuf>,
    /// WeChat mini-program virtual payment: the mini program's original id (原始ID,
    /// `gh_…`); when set, an event's `ToUserName` must be it.
    pub original_id: Option<String>,
    /// WeChat mini-program virtual payment: `production` (the default, `Env` 0) or
    /// `sandbox` (`Env` 1), the payments the account takes.
    pub env: Option<String>,
    /// AES key handed to handlers' `crypto` capability (32 bytes, or 64 hex chars).
    pub notify_key: Option<String>,
    /// File holding the notify key.
    pub notify_key_file: Option<PathBuf>,
    /// Base URL of the provider's API (order query and close); default the provider's
    /// real one. Tests point it at a fake provider.
    pub api_base: Option<String>,
    /// WeChat Pay v3 merchant API private key (PEM), signing query and close requests.
    pub merchant_private_key: Option<String>,
    /// File holding the v3 merchant API private key (`apiclient_key.pem`).
    pub merchant_private_key_file: Option<PathBuf>,
    /// Serial number of the v3 merchant API certificate.
    pub merchant_serial_no: Option<String>,
    /// Alipay app private key (PEM or bare base64), signing query and close requests.
    pub app_private_key: Option<String>,
    /// File holding the Alipay app private key.
    pub app_private_key_file: Option<PathBuf>,
    /// WeChat Pay v2: the merchant API client certificate (`apiclient_cert.pem`), for the
    /// calls WeChat makes over mutual TLS (refunds, `secapi/pay/refund`).
    pub client_cert: Option<String>,
    /// File holding the client certificate.
    pub client_cert_file: Option<PathBuf>,
    /// WeChat Pay v2: the client certificate's private key (`apiclient_key.pem`).
    pub client_key: Option<String>,
    /// File holding the client certificate's private key.
    pub client_key_file: Option<PathBuf>,
    /// WeChat Pay v2: extra CA certificates (PEM) trusted for `api_base`'s HTTPS, beside
    /// the built-in roots: for a TLS-inspecting egress proxy or a test stand-in. WeChat's
    /// own host needs none.
    pub api_ca_cert: Option<String>,
    /// File holding the extra CA certificates.
    pub api_ca_cert_file: Option<PathBuf>,
}

/// One `[[accounts.sub_merchants]]` entry of a WeChat Pay v3 partner account.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SubMerchantConfig {
    /// The sub-merchant's merchant id (子商户号); orders of the account name one.
    pub sub_mchid: String,
    /// The sub-merchant's own appid, when its payments go through one: then a
    /// transaction must name it.
    pub sub_appid: Option<String>,
}

fn default_account_name() -> String {
    "default".into()
}

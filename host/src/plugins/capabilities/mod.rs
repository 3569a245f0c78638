//! The host side of the WIT imports: `db`, `log`, `http`, `crypto`, `tasks`.
//!
//! Every call is checked against the plugin's manifest. A denied or malformed call is an
//! error value handed back to the handler, never a trap of the host. A failure of the
//! database itself also poisons the call ([`CallContext::poison`]): the transaction may be
//! unusable, so the handler's result is not trusted even if it returns `Ok`.

use std::sync::Arc;
use std::time::Duration;

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::bindings::paynotify::plugin::{config, crypto, db, http, log, tasks, types};
use super::manifest::Manifest;
use crate::store::{self, DocError, NewTask, Store, StoreError, Tx};

/// The transaction one `db`/`tasks` operation runs in.
enum OpTx<'a> {
    /// The call's shared transaction.
    Shared(&'a mut dyn Tx),
    /// A transaction of this operation's own, committed when it succeeds.
    Own(Box<dyn Tx>),
}

impl OpTx<'_> {
    fn tx(&mut self) -> &mut dyn Tx {
        match self {
            OpTx::Shared(t) => &mut **t,
            OpTx::Own(t) => t.as_mut(),
        }
    }

    /// Commits an own transaction if the operation succeeded (dropping rolls back).
    async fn end<T, E: From<StoreError>>(self, r: Result<T, E>) -> Result<T, E> {
        match (self, r) {
            (OpTx::Own(t), Ok(v)) => {
                t.commit().await?;
                Ok(v)
            }
            (_, r) => r,
        }
    }
}

/// Runs one document operation in the call's transaction (or its own), mapping errors
/// the way the handler should see them.
macro_rules! doc_op {
    ($ctx:expr, |$tx:ident| $body:expr) => {{
        let result = match $ctx.op_tx().await {
            Ok(mut op) => {
                let r = {
                    let $tx = op.tx();
                    $body.await
                };
                op.end(r).await
            }
            Err(e) => Err(DocError::Store(e)),
        };
        result.map_err(|e| $ctx.doc_error(e))
    }};
}

/// Largest JSON document or task payload a handler may write.
const MAX_JSON_BYTES: usize = 256 * 1024;
/// Largest response body the `http` capability hands back.
const MAX_HTTP_RESPONSE_BYTES: usize = 1024 * 1024;
/// Per-call HTTP timeout when the handler asks for none, and the most it may ask for.
const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Most documents one query returns.
const MAX_QUERY_LIMIT: u32 = 1000;
/// How a refused keyed `crypto` call's `invalid` text starts (the SDKs match on it).
pub const CRYPTO_DENIED_PREFIX: &str = "denied: ";

/// Who is calling: the plugin and, when there is one, the order and notification.
#[derive(Debug, Clone)]
pub struct CallTags {
    /// Plugin type.
    pub plugin: String,
    /// The plugin's own version string.
    pub version: String,
    /// The order being handled.
    pub out_trade_no: Option<String>,
    /// The notification being handled.
    pub notification_id: Option<i64>,
    /// The task being run.
    pub task_id: Option<i64>,
}

/// Where a call's `db` and `tasks` operations go.
pub enum DbAccess {
    /// Into the payment transaction: they commit with the payment or not at all.
    Tx(Box<dyn Tx>),
    /// Each operation in a short transaction of its own. Used by `run-task`, which runs
    /// after the payment and may wait on HTTP: holding a transaction (on SQLite, the
    /// database write lock) across that would stall every notification.
    Autocommit(Arc<dyn Store>),
    /// No database (the `metadata` call at load).
    None,
}

impl DbAccess {
    /// The payment transaction, if that is what this is.
    pub fn into_tx(self) -> Option<Box<dyn Tx>> {
        match self {
            DbAccess::Tx(tx) => Some(tx),
            _ => None,
        }
    }
}

/// A host-side failure under a handler call.
#[derive(Debug, Clone)]
pub struct Poison {
    /// What failed.
    pub message: String,
    /// The database asked for the transaction to be retried (deadlock, serialization).
    pub transient: bool,
}

/// Everything one handler call may touch; moved into the wasmtime `Store` for the call
/// and taken back afterwards.
pub struct CallContext {
    /// Grants.
    pub manifest: Arc<Manifest>,
    /// Log tags.
    pub tags: CallTags,
    /// Where `db` and `tasks` operations go.
    pub db: DbAccess,
    /// The merchant account's notify key, for `crypto`.
    pub notify_key: Option<[u8; 32]>,
    /// The order's provider, stored on enqueued tasks.
    pub provider: Option<String>,
    /// The account name, stored on enqueued tasks.
    pub account: Option<String>,
    /// Shared outbound HTTP client.
    pub http: reqwest::Client,
    /// Set when a host-side failure makes the call's result untrustworthy.
    pub poisoned: Option<Poison>,
}

impl CallContext {
    /// A context with no transaction and no account (used to call `metadata`).
    pub fn detached(manifest: Arc<Manifest>, tags: CallTags, http: reqwest::Client) -> Self {
        CallContext {
            manifest,
            tags,
            db: DbAccess::None,
            notify_key: None,
            provider: None,
            account: None,
            http,
            poisoned: None,
        }
    }

    /// Marks the call failed whatever the handler returns.
    pub fn poison(&mut self, why: String) {
        tracing::error!(plugin = %self.tags.plugin, error = %why, "host capability failed; call will fail");
        self.poisoned.get_or_insert(Poison {
            message: why,
            transient: false,
        });
    }

    /// Marks the call failed because of `e`; a transient database failure (deadlock,
    /// serialization) makes the whole transaction worth running again.
    fn poison_store(&mut self, e: &StoreError) {
        if e.is_transient() {
            tracing::warn!(plugin = %self.tags.plugin, error = %e, "transient database failure; the transaction will be retried");
            self.poisoned.get_or_insert(Poison {
                message: e.to_string(),
                transient: true,
            });
        } else {
            self.poison(e.to_string());
        }
    }

    fn collection(&self, name: &str) -> Result<(), db::DbError> {
        if !store::valid_collection(name) {
            return Err(db::DbError::Invalid(format!(
                "`{name}` is not a valid collection name"
            )));
        }
        if !self.manifest.grants_collection(name) {
            return Err(db::DbError::Denied(format!(
                "collection `{name}` is not granted to plugin `{}` (add it to `collections` in {}.toml)",
                self.tags.plugin, self.tags.plugin
            )));
        }
        Ok(())
    }

    /// Why `http` is refused in this call, if it is. Inside the payment transaction
    /// (`handle-paid`, `handle-refunded`) a call may run more than once (a failed batch is
    /// retried one payment at a time, running again the handlers that succeeded) and the
    /// payment's locks are held while it waits, so it needs the manifest's opt-in.
    fn http_refusal(&self) -> Option<String> {
        match &self.db {
            DbAccess::Tx(_) if !self.manifest.http_in_payment => Some(format!(
                "http is refused inside handle-paid and handle-refunded: a call made there may \
                 run more than once for one payment and holds the payment's locks while it \
                 waits. Enqueue a task (tasks.enqueue) and make the call from run-task, which \
                 runs after the payment commits and is retried; only for an idempotent call, \
                 set `http_in_payment = true` in {}.toml",
                self.tags.plugin
            )),
            // `run-task` (after commit, its own short transactions) and `metadata` (at load,
            // no database).
            DbAccess::Tx(_) | DbAccess::Autocommit(_) | DbAccess::None => None,
        }
    }

    /// The notify key for a keyed `crypto` operation, if the manifest grants them.
    fn keyed_crypto(&self) -> Result<[u8; 32], crypto::CryptoError> {
        if !self.manifest.crypto {
            // The world's `crypto-error` has no `denied` case; adding one would break every
            // handler built against this world version, so the refusal is an `invalid` whose
            // text starts `denied: `, which the SDKs report as `crypto-denied`.
            return Err(crypto::CryptoError::Invalid(format!(
                "{CRYPTO_DENIED_PREFIX}crypto keyed by the account's notify key is not granted \
                 to plugin `{p}` (set `crypto = true` in {p}.toml)",
                p = self.tags.plugin
            )));
        }
        self.notify_key.ok_or(crypto::CryptoError::NoKey)
    }

    /// The transaction for one operation: the payment's, or a fresh one in autocommit
    /// mode (ended by [`CallContext::end_op`]).
    async fn op_tx(&mut self) -> Result<OpTx<'_>, StoreError> {
        match &mut self.db {
            DbAccess::Tx(tx) => Ok(OpTx::Shared(tx.as_mut())),
            DbAccess::Autocommit(store) => Ok(OpTx::Own(store.begin().await?)),
            DbAccess::None => Err(StoreError::Invalid(
                "no database is available to this call".into(),
            )),
        }
    }

    fn doc_error(&mut self, e: DocError) -> db::DbError {
        match e {
            DocError::Conflict(m) => db::DbError::Conflict(m),
            DocError::NotANumber(f) => {
                db::DbError::NotANumber(format!("field `{f}` is not an integer"))
            }
            DocError::Invalid(m) => db::DbError::Invalid(m),
            DocError::Store(e) => {
                self.poison_store(&e);
                db::DbError::Backend(e.to_string())
            }
        }
    }
}

/// Parses a JSON object given by a handler, returning its compact text.
fn json_object(
    text: &str,
) -> Result<(serde_json::Map<String, serde_json::Value>, String), db::DbError> {
    if text.len() > MAX_JSON_BYTES {
        return Err(db::DbError::Invalid(format!(
            "document is over {MAX_JSON_BYTES} bytes"
        )));
    }
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Object(map)) => {
            let compact = serde_json::Value::Object(map.clone()).to_string();
            Ok((map, compact))
        }
        Ok(_) => Err(db::DbError::Invalid(
            "a document must be a JSON object".into(),
        )),
        Err(e) => Err(db::DbError::Invalid(format!("invalid JSON: {e}"))),
    }
}

fn doc_id(id: &str) -> Result<(), db::DbError> {
    if store::valid_doc_id(id) {
        Ok(())
    } else {
        Err(db::DbError::Invalid(format!(
            "`{id}` is not a valid document id"
        )))
    }
}

impl types::Host for CallContext {}

impl db::Host for CallContext {
    async fn get(&mut self, collection: String, id: String) -> Result<Option<String>, db::DbError> {
        self.collection(&collection)?;
        doc_id(&id)?;
        doc_op!(self, |tx| tx.doc_get(&collection, &id))
    }

    async fn insert(
        &mut self,
        collection: String,
        id: Option<String>,
        data: String,
    ) -> Result<String, db::DbError> {
        self.collection(&collection)?;
        let id = id.unwrap_or_else(|| hex::encode(rand::random::<[u8; 12]>()));
        doc_id(&id)?;
        let (_, data) = json_object(&data)?;
        doc_op!(self, |tx| tx.doc_insert(&collection, &id, &data)).map(|()| id)
    }

    async fn set(
        &mut self,
        collection: String,
        id: String,
        data: String,
        merge: bool,
    ) -> Result<(), db::DbError> {
        self.collection(&collection)?;
        doc_id(&id)?;
        let (fields, text) = json_object(&data)?;
        if !merge {
            return doc_op!(self, |tx| tx.doc_put(&collection, &id, &text));
        }
        // Read-modify-write in one transaction: it holds the write lock (SQLite) or the
        // row lock (PostgreSQL `doc_get_for_update`) until it ends.
        doc_op!(self, |tx| async {
            let current = tx.doc_get_for_update(&collection, &id).await?;
            let mut merged = match current.as_deref().map(serde_json::from_str) {
                Some(Ok(serde_json::Value::Object(m))) => m,
                Some(Err(e)) => {
                    return Err(DocError::Invalid(format!(
                        "stored document is corrupt: {e}"
                    )))
                }
                _ => serde_json::Map::new(),
            };
            merged.extend(fields);
            let text = serde_json::Value::Object(merged).to_string();
            if text.len() > MAX_JSON_BYTES {
                return Err(DocError::Invalid(format!(
                    "merged document is over {MAX_JSON_BYTES} bytes"
                )));
            }
            tx.doc_put(&collection, &id, &text).await
        })
    }

    async fn inc(
        &mut self,
        collection: String,
        id: String,
        field: String,
        delta: i64,
    ) -> Result<i64, db::DbError> {
        self.collection(&collection)?;
        doc_id(&id)?;
        if !store::valid_field(&field) {
            return Err(db::DbError::Invalid(format!(
                "`{field}` is not a valid field name"
            )));
        }
        doc_op!(self, |tx| tx.doc_inc(&collection, &id, &field, delta))
    }

    async fn delete(&mut self, collection: String, id: String) -> Result<bool, db::DbError> {
        self.collection(&collection)?;
        doc_id(&id)?;
        doc_op!(self, |tx| tx.doc_delete(&collection, &id))
    }

    async fn query(
        &mut self,
        collection: String,
        filters: Vec<(String, String)>,
        limit: u32,
    ) -> Result<Vec<db::Document>, db::DbError> {
        self.collection(&collection)?;
        let mut parsed = Vec::with_capacity(filters.len());
        for (field, value) in filters {
            if !store::valid_field(&field) {
                return Err(db::DbError::Invalid(format!(
                    "`{field}` is not a valid field name"
                )));
            }
            let value = serde_json::from_str(&value).map_err(|e| {
                db::DbError::Invalid(format!("filter on `{field}` is not JSON: {e}"))
            })?;
            parsed.push((field, value));
        }
        let limit = limit.clamp(1, MAX_QUERY_LIMIT);
        let rows = doc_op!(self, |tx| tx.doc_query(&collection, &parsed, limit))?;
        Ok(rows
            .into_iter()
            .map(|(id, data)| db::Document { id, data })
            .collect())
    }
}

impl log::Host for CallContext {
    async fn log(&mut self, level: log::Level, message: String, fields: Vec<(String, String)>) {
        let message: String = message.chars().take(4096).collect();
        let fields = fields
            .iter()
            .take(32)
            .map(|(k, v)| format!("{k}={}", v.chars().take(512).collect::<String>()))
            .collect::<Vec<_>>()
            .join(" ");
        let t = &self.tags;
        macro_rules! emit {
            ($lvl:ident) => {
                tracing::$lvl!(
                    target: "paynotify::plugin",
                    plugin = %t.plugin,
                    version = %t.version,
                    order = t.out_trade_no.as_deref().unwrap_or(""),
                    notification = t.notification_id.unwrap_or_default(),
                    task = t.task_id.unwrap_or_default(),
                    fields = %fields,
                    "{message}"
                )
            };
        }
        match level {
            log::Level::Trace => emit!(trace),
            log::Level::Debug => emit!(debug),
            log::Level::Info => emit!(info),
            log::Level::Warn => emit!(warn),
            log::Level::Error => emit!(error),
        }
    }
}

impl http::Host for CallContext {
    // reqwest on the host rather than wasi:http: the allow-list, the timeout and the
    // response cap are enforced in one place we control, redirects are refused (they
    // would let a handler reach an origin not on its list), and handlers get a plain
    // request/response call instead of wasi:http's streams.
    async fn send(&mut self, req: http::Request) -> Result<http::Response, http::HttpError> {
        let url = reqwest::Url::parse(&req.url)
            .map_err(|e| http::HttpError::InvalidRequest(format!("bad url `{}`: {e}", req.url)))?;
        if !self.manifest.grants_origin(&url) {
            return Err(http::HttpError::Denied(format!(
                "origin {} is not in `http_origins` of {}.toml",
                url.origin().ascii_serialization(),
                self.tags.plugin
            )));
        }
        if let Some(why) = self.http_refusal() {
            return Err(http::HttpError::Denied(why));
        }
        let method = reqwest::Method::from_bytes(req.method.to_ascii_uppercase().as_bytes())
            .map_err(|_| http::HttpError::InvalidRequest(format!("bad method `{}`", req.method)))?;
        if let Some((name, _)) = req.headers.iter().find(|(k, _)| is_connection_header(k)) {
            return Err(http::HttpError::InvalidRequest(format!(
                "header {name:?} may not be set by a handler: the host sets the headers that \
                 frame the request and its connection (Host, Content-Length, Transfer-Encoding, \
                 Connection, Keep-Alive, TE, Trailer, Upgrade, Proxy-*)"
            )));
        }
        let timeout = req
            .timeout_ms
            .map(|ms| Duration::from_millis(u64::from(ms)))
            .unwrap_or(DEFAULT_HTTP_TIMEOUT)
            .min(MAX_HTTP_TIMEOUT);
        let mut builder = self
            .http
            .request(method, url)
            .timeout(timeout)
            .body(req.body);
        for (k, v) in &req.headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        let request = builder
            .build()
            .map_err(|e| http::HttpError::InvalidRequest(e.to_string()))?;
        let mut response = self.http.execute(request).await.map_err(|e| {
            if e.is_timeout() {
                http::HttpError::Timeout
            } else {
                http::HttpError::Transport(e.to_string())
            }
        })?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_HTTP_RESPONSE_BYTES {
                        return Err(http::HttpError::TooLarge);
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) if e.is_timeout() => return Err(http::HttpError::Timeout),
                Err(e) => return Err(http::HttpError::Transport(e.to_string())),
            }
        }
        Ok(http::Response {
            status,
            headers,
            body,
        })
    }
}

/// Whether `name` is a header that describes the request's framing or its connection
/// rather than its content: the host's HTTP client owns those. Set by a handler, `Host`
/// would reach another site behind the granted origin's address, a `Content-Length` or
/// `Transfer-Encoding` that disagrees with the body would let a second request be
/// smuggled in behind the first, and the hop-by-hop headers (RFC 9110 §7.6.1: `Connection`,
/// `Keep-Alive`, `TE`, `Trailer`, `Upgrade`, `Proxy-*`, and HTTP/2's `HTTP2-Settings`)
/// would change how the pooled connection is used or address a proxy. Case-insensitive.
pub fn is_connection_header(name: &str) -> bool {
    const REFUSED: [&str; 10] = [
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        // RFC 2616's spelling, still honoured by some servers.
        "trailers",
        "upgrade",
        "http2-settings",
    ];
    let name = name.trim();
    REFUSED.iter().any(|r| name.eq_ignore_ascii_case(r))
        || name
            .get(..6)
            .is_some_and(|p| p.eq_ignore_ascii_case("proxy-"))
}

type Aes256CbcEnc = cbc::Encryptor<aes::Aes256>;
type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;

/// AES-256-CBC, PKCS#7, random IV; base64 of `iv || ciphertext`.
pub fn aes_encrypt(key: &[u8; 32], plaintext: &[u8]) -> String {
    let iv: [u8; 16] = rand::random();
    let ct = Aes256CbcEnc::new(key.into(), &iv.into()).encrypt_padded_vec_mut::<Pkcs7>(plaintext);
    let mut out = iv.to_vec();
    out.extend_from_slice(&ct);
    base64::engine::general_purpose::STANDARD.encode(out)
}

/// Inverse of [`aes_encrypt`].
pub fn aes_decrypt(key: &[u8; 32], b64: &str) -> Result<Vec<u8>, String> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    if raw.len() < 32 || raw.len() % 16 != 0 {
        return Err("ciphertext must be a 16-byte IV followed by whole AES blocks".into());
    }
    let (iv, ct) = raw.split_at(16);
    let iv: [u8; 16] = iv.try_into().map_err(|_| "bad IV".to_owned())?;
    Aes256CbcDec::new(key.into(), &iv.into())
        .decrypt_padded_vec_mut::<Pkcs7>(ct)
        .map_err(|_| "does not decrypt with this key (bad padding)".to_owned())
}

/// HMAC-SHA256.
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

impl crypto::Host for CallContext {
    async fn aes_encrypt(&mut self, plaintext: Vec<u8>) -> Result<String, crypto::CryptoError> {
        let key = self.keyed_crypto()?;
        Ok(aes_encrypt(&key, &plaintext))
    }

    async fn aes_decrypt(
        &mut self,
        ciphertext_b64: String,
    ) -> Result<Vec<u8>, crypto::CryptoError> {
        let key = self.keyed_crypto()?;
        aes_decrypt(&key, &ciphertext_b64).map_err(crypto::CryptoError::Invalid)
    }

    async fn sign(&mut self, data: Vec<u8>) -> Result<String, crypto::CryptoError> {
        let key = self.keyed_crypto()?;
        Ok(hex::encode(hmac_sha256(&key, &data)))
    }

    async fn hmac_sha256(&mut self, key: Vec<u8>, data: Vec<u8>) -> Vec<u8> {
        hmac_sha256(&key, &data)
    }

    async fn sha256(&mut self, data: Vec<u8>) -> Vec<u8> {
        Sha256::digest(&data).to_vec()
    }
}

impl config::Host for CallContext {
    async fn get(&mut self, key: String) -> Option<String> {
        self.manifest.config.get(&key).cloned()
    }
}

impl tasks::Host for CallContext {
    async fn enqueue(
        &mut self,
        name: String,
        payload: String,
        delay_secs: u32,
    ) -> Result<i64, String> {
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(format!("`{name}` is not a valid task name"));
        }
        if payload.len() > MAX_JSON_BYTES {
            return Err(format!("task payload is over {MAX_JSON_BYTES} bytes"));
        }
        if let Err(e) = serde_json::from_str::<serde_json::Value>(&payload) {
            return Err(format!("task payload is not JSON: {e}"));
        }
        let task = NewTask {
            plugin: self.tags.plugin.clone(),
            name,
            payload,
            out_trade_no: self.tags.out_trade_no.clone(),
            provider: self.provider.clone(),
            account: self.account.clone(),
            run_at: store::now_ms() + i64::from(delay_secs) * 1000,
        };
        let result = match self.op_tx().await {
            Ok(mut op) => {
                let r = op.tx().enqueue_task(&task).await;
                op.end(r).await
            }
            Err(e) => Err(e),
        };
        result.map_err(|e| {
            self.poison_store(&e);
            e.to_string()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_notify_key;

    #[test]
    fn aes_round_trips_and_rejects_garbage() {
        let key = parse_notify_key(&"ab".repeat(32)).expect("hex key");
        let ct = aes_encrypt(&key, b"{\"out_trade_no\":\"1\"}");
        assert_eq!(
            aes_decrypt(&key, &ct).expect("decrypts"),
            b"{\"out_trade_no\":\"1\"}"
        );
        let other = parse_notify_key("0123456789abcdef0123456789abcdef").expect("text key");
        // A wrong key either fails the padding check or yields other bytes, never the plaintext.
        assert_ne!(
            aes_decrypt(&other, &ct).ok(),
            Some(b"{\"out_trade_no\":\"1\"}".to_vec())
        );
        assert!(aes_decrypt(&key, "!!!").is_err());
        assert!(aes_decrypt(&key, "AAAA").is_err());
        assert!(parse_notify_key("short").is_none());
    }

    #[test]
    fn connection_headers_are_recognised_whatever_their_case() {
        for name in [
            "Host",
            "HOST",
            "content-length",
            "Transfer-Encoding",
            "connection",
            "Keep-Alive",
            "TE",
            "Trailer",
            "trailers",
            "Upgrade",
            "Proxy-Authorization",
            "proxy-connection",
            "PROXY-anything",
            "HTTP2-Settings",
            " host",
        ] {
            assert!(is_connection_header(name), "{name} allowed");
        }
        for name in [
            "content-type",
            "authorization",
            "x-paynotify-signature",
            "accept",
            "tea",
            "hostname",
            "proxy",
            "x-proxy-id",
            "",
            "ü",
        ] {
            assert!(!is_connection_header(name), "{name} refused");
        }
    }

    /// The real `http.send` of a handler granted the origin: a request setting one of
    /// the headers is `invalid-request` and no connection is made; the same request
    /// without it reaches the server.
    #[tokio::test]
    async fn a_request_setting_a_connection_header_is_refused_before_connecting() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let origin = format!("http://{}", listener.local_addr().expect("addr"));
        let manifest = Manifest {
            http_origins: vec![origin.clone()],
            ..Manifest::default()
        };
        let tags = CallTags {
            plugin: "hdr".into(),
            version: "1".into(),
            out_trade_no: None,
            notification_id: None,
            task_id: None,
        };
        let mut ctx = CallContext::detached(Arc::new(manifest), tags, reqwest::Client::new());
        let request = |headers: Vec<(String, String)>| http::Request {
            method: "POST".into(),
            url: format!("{origin}/hook"),
            headers,
            body: b"{}".to_vec(),
            timeout_ms: Some(5000),
        };
        for (name, value) in [
            ("Host", "internal.example"),
            ("transfer-encoding", "chunked"),
            ("Content-Length", "0"),
            ("Connection", "upgrade"),
            ("Proxy-Authorization", "Basic eA=="),
            ("te", "trailers"),
        ] {
            let headers = vec![
                ("content-type".to_owned(), "application/json".to_owned()),
                (name.to_owned(), value.to_owned()),
            ];
            match http::Host::send(&mut ctx, request(headers)).await {
                Err(http::HttpError::InvalidRequest(m)) => assert!(m.contains(name), "{m}"),
                Err(e) => panic!("{name}: {e:?}"),
                Ok(r) => panic!("{name}: sent, answered {}", r.status),
            }
        }
        let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(accepted.is_err(), "a refused request connected");

        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 4096];
            let n = conn.read(&mut buf).await.expect("read");
            conn.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                .await
                .expect("write");
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        let headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        let answer = http::Host::send(&mut ctx, request(headers))
            .await
            .expect("an allowed request is sent");
        assert_eq!(answer.status, 204);
        let head = server.await.expect("server");
        assert!(head.starts_with("POST /hook HTTP/1.1"), "{head}");
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}

//! WeChat Pay v3 platform certificates that rotate themselves (`download_platform_certs`).
//!
//! An account that opts in downloads its platform certificates from `GET /v3/certificates`,
//! signed as the merchant (the order API's `Client`, the one place v3 requests are
//! signed). Each certificate in the answer is `AEAD_AES_256_GCM`-encrypted under the APIv3
//! key (decrypted as notification resources are), and the answer itself is signed by
//! WeChat Pay like any other; `download.rs` reads and checks it. What was accepted goes to
//! the database (`platform_certs`), so every host shares it and a restart needs no
//! network; every host verifies from what it last read there (`keys.rs` asks
//! [`PlatformCerts`] for a serial it has no configured key for).
//!
//! When: at start when the database holds no download younger than [`REFRESH_EVERY`], then
//! whenever the newest download is that old (checked every [`CHECK_EVERY`]); and when a
//! notification names a serial no key has. That last one first reads the database (another
//! host may have stored it), and calls WeChat Pay at most once per [`DEMAND_INTERVAL`] per
//! account, whatever serials strangers send; the notification waits at most
//! [`DEMAND_WAIT`] for it and is refused (WeChat retries) if the download is slower.
//!
//! An expired certificate is never used: its expiry is checked each time it verifies
//! (against the time the notification was received, as the timestamp window is), and a
//! download never stores one already expired.
//!
//! # Which signature a download may carry
//!
//! The answer is signed by a platform certificate, possibly one that is only in the
//! answer itself (the first download: WeChat's own certificate downloader trusts it, since
//! only WeChat Pay and the merchant hold the APIv3 key the certificates are encrypted
//! under). paynotify is stricter: an answer must be signed by a key the account already
//! trusts (a configured public key or certificate, or a stored certificate, not expired),
//! and only while the account has no unexpired certificate at all may it be signed by a
//! certificate in the same answer. So once a host trusts a certificate, whoever can
//! answer in WeChat's place (a wrong `api_base`, a TLS interception) and knows the APIv3
//! key still cannot add a certificate of their own. WeChat signs with the old certificate
//! for a while after it publishes a new one, and hosts download every 12 hours, so the new
//! one arrives under a trusted signature; a deployment that slept through the whole overlap
//! is told to configure the new certificate file (`platform_certs`).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use super::api::Client;
use super::download::read_download;
pub(super) use super::x509::Held;
use super::x509::{normalise_serial, parse_pem, read_certificates};
use super::Account;
use crate::config::AccountConfig;
use crate::providers::api::ApiError;
use crate::store::{Store, StoreError};

/// How old the newest download may get before the certificates are downloaded again.
pub const REFRESH_EVERY: Duration = Duration::from_secs(12 * 3600);

/// How often the background job looks at the age of the newest download.
pub const CHECK_EVERY: Duration = Duration::from_secs(5 * 60);

/// Least time between two downloads asked for by notifications naming an unknown serial.
pub const DEMAND_INTERVAL: Duration = Duration::from_secs(60);

/// Longest a notification waits for the download it asked for.
pub const DEMAND_WAIT: Duration = Duration::from_secs(5);

/// Where the certificates are downloaded from.
const PATH: &str = "/v3/certificates";

/// Why an account has no key for a serial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyMiss {
    /// No key of the account has that serial.
    Unknown,
    /// The certificate expired at this time (unix ms).
    Expired(i64),
}

impl KeyMiss {
    /// What to say about an expired certificate; `None` for an unknown serial.
    pub(super) fn expired(self) -> Option<String> {
        match self {
            KeyMiss::Unknown => None,
            KeyMiss::Expired(at) => Some(format!(
                "the platform certificate expired at {} and is no longer used",
                crate::time::iso_time(at)
            )),
        }
    }
}

/// Why downloading the certificates failed; nothing was stored.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The account is not wired to the database and the merchant key yet.
    #[error("platform certificate download is not set up for this account")]
    NotWired,
    /// The database could not be read or written.
    #[error("database: {0}")]
    Store(#[from] StoreError),
    /// WeChat Pay could not be reached.
    #[error(transparent)]
    Call(#[from] ApiError),
    /// The answer was refused: its signature, a certificate in it, or its shape.
    #[error("download refused: {0}")]
    Refused(String),
}

/// The downloaded platform certificates of one merchant account, shared by its
/// notification verifier, its order API and the refresh job.
pub struct PlatformCerts {
    account: String,
    mch_id: String,
    api_v3_key: [u8; 32],
    /// By normalised serial, as last read from the database.
    held: RwLock<Arc<BTreeMap<String, Held>>>,
    /// When a notification last made this host download (the once-a-minute limit).
    last_demand: Mutex<Option<Instant>>,
    /// One download at a time per account.
    flight: tokio::sync::Mutex<()>,
    client: OnceLock<Client>,
    wiring: OnceLock<(Arc<dyn Store>, reqwest::Client)>,
}

impl PlatformCerts {
    /// Nothing held yet; [`PlatformCerts::set_client`] and [`attach`] wire it.
    pub(super) fn new(account: &str, mch_id: &str, api_v3_key: [u8; 32]) -> PlatformCerts {
        PlatformCerts {
            account: account.into(),
            mch_id: mch_id.into(),
            api_v3_key,
            held: RwLock::new(Arc::new(BTreeMap::new())),
            last_demand: Mutex::new(None),
            flight: tokio::sync::Mutex::new(()),
            client: OnceLock::new(),
            wiring: OnceLock::new(),
        }
    }

    /// The merchant client that signs the download request.
    pub(crate) fn set_client(&self, client: Client) {
        let _ = self.client.set(client);
    }

    /// The certificate held under a normalised serial.
    pub(super) fn get(&self, serial: &str) -> Option<Held> {
        self.snapshot().get(serial).cloned()
    }

    fn snapshot(&self) -> Arc<BTreeMap<String, Held>> {
        // A poisoned lock still holds a whole map: it is only ever replaced at once.
        match self.held.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Whether a held certificate is still valid at `at_ms`.
    pub(super) fn any_valid(&self, at_ms: i64) -> bool {
        self.snapshot().values().any(|h| h.expire_ms > at_ms)
    }

    /// Replaces what is held with the database's certificates of this merchant; returns
    /// the time of the newest download among them.
    async fn load(&self) -> Result<Option<i64>, CertError> {
        let (store, _) = self.wiring.get().ok_or(CertError::NotWired)?;
        let rows = store
            .platform_certs()
            .platform_certs(Some(&self.mch_id))
            .await?;
        let mut held = BTreeMap::new();
        for r in &rows {
            match parse_pem(&r.pem) {
                Ok((_, key, _, _)) => {
                    let expire_ms = r.expire_at;
                    held.insert(normalise_serial(&r.serial), Held { key, expire_ms });
                }
                Err(e) => {
                    tracing::warn!(account = %self.account, serial = %r.serial, error = %e, "stored platform certificate unreadable; not used");
                }
            }
        }
        let newest = rows.iter().map(|r| r.fetched_at).max();
        match self.held.write() {
            Ok(mut g) => *g = Arc::new(held),
            Err(p) => *p.into_inner() = Arc::new(held),
        }
        Ok(newest)
    }

    /// Downloads, checks and stores the certificates, then holds what the database has.
    /// One download at a time: a caller that waited for another's gets its result.
    async fn download(&self, account: &Account) -> Result<usize, CertError> {
        let _flight = self.flight.lock().await;
        let client = self.client.get().ok_or(CertError::NotWired)?;
        let (store, http) = self.wiring.get().ok_or(CertError::NotWired)?;
        let answer = client.call(http, reqwest::Method::GET, PATH, None).await?;
        let now = crate::time::now_ms();
        let source = format!("downloaded by {}", crate::plugins::host_label());
        let records = read_download(account, &self.api_v3_key, &answer, now, &source)
            .map_err(CertError::Refused)?;
        store
            .platform_certs()
            .store_platform_certs(&records)
            .await?;
        self.load().await?;
        tracing::info!(account = %self.account, serials = ?records.iter().map(|r| r.serial.as_str()).collect::<Vec<_>>(), "platform certificates downloaded");
        Ok(records.len())
    }

    /// Downloads when the newest stored download is older than [`REFRESH_EVERY`] (or
    /// there is none); otherwise only reads the database.
    async fn refresh_if_due(&self, account: &Account) -> Result<(), CertError> {
        let newest = self.load().await?;
        let due = newest.is_none_or(|at| {
            crate::time::now_ms().saturating_sub(at) >= REFRESH_EVERY.as_millis() as i64
        });
        if due {
            self.download(account).await?;
        }
        Ok(())
    }

    /// Takes the once-a-minute slot for a download a notification asks for.
    fn take_demand_slot(&self) -> bool {
        let mut last = match self.last_demand.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if last.is_some_and(|t| t.elapsed() < DEMAND_INTERVAL) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    /// A notification names `serial` (normalised), which no key of the account has:
    /// reads the database, then downloads if allowed, waiting at most [`DEMAND_WAIT`].
    async fn on_unknown_serial(self: &Arc<Self>, account: &Account, serial: &str) {
        if let Err(e) = self.load().await {
            tracing::warn!(account = %self.account, error = %e, "cannot read the stored platform certificates");
        }
        if self.get(serial).is_some() {
            return;
        }
        if !self.take_demand_slot() {
            tracing::info!(account = %self.account, serial, "unknown platform certificate serial; downloaded less than a minute ago, not asking WeChat Pay again yet");
            return;
        }
        let me = self.clone();
        let account = account.clone();
        // Spawned, so a download slower than the wait still completes for the retry.
        let job = tokio::spawn(async move {
            if let Err(e) = me.download(&account).await {
                tracing::warn!(account = %me.account, error = %e, "platform certificate download failed");
            }
        });
        if tokio::time::timeout(DEMAND_WAIT, job).await.is_err() {
            tracing::warn!(account = %self.account, serial, "platform certificate download still running; the notification is refused and WeChat Pay will retry");
        }
    }
}

/// The configuration `download_platform_certs` needs, or what is missing.
pub(super) fn check_download_config(a: &AccountConfig) -> Result<(), String> {
    if a.merchant_private_key.is_none() || a.merchant_serial_no.is_none() {
        return Err("`download_platform_certs = true` needs `merchant_private_key_file` and `merchant_serial_no`: the certificate download is signed as the merchant".into());
    }
    Ok(())
}

/// Before a notification is verified: when it names a certificate serial no key of its
/// candidate accounts has, each candidate that downloads its certificates looks for it
/// (database, then WeChat Pay, within the limits above).
pub(super) fn fetch_missing<'a>(
    accounts: &'a [Account],
    account: Option<&'a str>,
    serial: Option<&'a str>,
    at_ms: i64,
) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
    Box::pin(async move {
        let Some(serial) = serial.map(str::trim).filter(|s| !s.is_empty()) else {
            return;
        };
        let candidates: Vec<&Account> = accounts
            .iter()
            .filter(|a| account.is_none_or(|n| a.name == n))
            .collect();
        // Known (even expired: no download brings an expired certificate back).
        if candidates
            .iter()
            .any(|a| !matches!(a.key_at(serial, at_ms), Err(KeyMiss::Unknown)))
        {
            return;
        }
        let normalised = normalise_serial(serial);
        for a in candidates {
            if let Some(d) = &a.downloaded {
                d.on_unknown_serial(a, &normalised).await;
                if a.key_at(serial, at_ms).is_ok() {
                    return;
                }
            }
        }
    })
}

/// Gives an account that downloads its certificates the merchant client of its order API.
pub(crate) fn wire_client(account: &Account, api: &super::api::Api) {
    if let Some(d) = &account.downloaded {
        d.set_client(api.client().clone());
    }
}

/// The accounts that download their certificates, to wire and refresh.
pub fn downloading(accounts: &[Account]) -> Vec<Account> {
    accounts
        .iter()
        .filter(|a| a.downloaded.is_some())
        .cloned()
        .collect()
}

/// Wires the accounts that download their certificates to the database and the HTTP
/// client, and loads what the database holds (no network: a restart verifies at once).
pub async fn attach(accounts: &[Account], store: Arc<dyn Store>, http: reqwest::Client) {
    for a in accounts {
        let Some(d) = &a.downloaded else { continue };
        let _ = d.wiring.set((store.clone(), http.clone()));
        if let Err(e) = d.load().await {
            tracing::warn!(account = %a.name, error = %e, "cannot read the stored platform certificates");
        }
    }
}

/// The refresh job: downloads each account's certificates when the newest download is
/// older than [`REFRESH_EVERY`], looking every [`CHECK_EVERY`]; never returns.
pub async fn run(accounts: Vec<Account>) {
    loop {
        for a in &accounts {
            if let Some(d) = &a.downloaded {
                if let Err(e) = d.refresh_if_due(a).await {
                    tracing::warn!(account = %a.name, error = %e, "platform certificate refresh failed; retried in 5 minutes");
                }
            }
        }
        tokio::time::sleep(CHECK_EVERY).await;
    }
}

/// One row of `paynotify providers certs`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CertListing {
    /// The account's name.
    pub account: String,
    /// The merchant id.
    pub mch_id: String,
    /// The serial, upper-case hex.
    pub serial: String,
    /// From when it may sign (unix ms).
    pub effective_at: i64,
    /// When it expires (unix ms).
    pub expire_at: i64,
    /// `configured: {file}` or `downloaded by {host}`.
    pub source: String,
    /// When it was last downloaded (unix ms), for a downloaded one.
    pub fetched_at: Option<i64>,
}

/// The platform certificates of every v3 account: the configured files, then what the
/// database holds for the accounts that download theirs.
pub async fn list(
    accounts: &[AccountConfig],
    store: &dyn Store,
) -> Result<Vec<CertListing>, String> {
    let mut out = Vec::new();
    for a in accounts.iter().filter(|a| a.provider == "wechat-v3") {
        let mch_id = a.mch_id.clone().unwrap_or_default();
        for path in &a.platform_certs {
            for (serial, _, effective_at, expire_at) in read_certificates(path)? {
                out.push(CertListing {
                    account: a.name.clone(),
                    mch_id: mch_id.clone(),
                    serial,
                    effective_at,
                    expire_at,
                    source: format!("configured: {}", path.display()),
                    fetched_at: None,
                });
            }
        }
        if a.download_platform_certs {
            let rows = store
                .platform_certs()
                .platform_certs(Some(&mch_id))
                .await
                .map_err(|e| e.to_string())?;
            out.extend(rows.into_iter().map(|r| CertListing {
                account: a.name.clone(),
                mch_id: r.mch_id,
                serial: r.serial,
                effective_at: r.effective_at,
                expire_at: r.expire_at,
                source: r.source,
                fetched_at: Some(r.fetched_at),
            }));
        }
    }
    Ok(out)
}

//! What ops see of each handler type: the build serving, one loading, the last failure,
//! the staged candidate (or why it did not load), and whether a previous build is kept.

use serde::Serialize;

use super::files::{Paths, Stage};
use super::{breaker, duration_ms, Registry, Signer};
use crate::time::Millis;

/// What ops see for one type: the version serving and the last load error.
#[derive(Debug, Clone, Serialize)]
pub struct PluginStatus {
    /// Order type.
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// A version is serving.
    pub loaded: bool,
    /// A new version is being compiled, since when (the serving one, if any, serves meanwhile).
    pub loading_since: Option<Millis>,
    /// Name the build reports.
    pub name: Option<String>,
    /// Version the build reports.
    pub version: Option<String>,
    /// WIT version it was built against.
    pub world_version: Option<String>,
    /// SHA-256 of the serving file.
    pub sha256: Option<String>,
    /// Who signed the serving build (`None` when `allowed_signers` is not set).
    pub signer: Option<Signer>,
    /// Size of the serving file.
    pub size: Option<usize>,
    /// When the serving version was loaded.
    pub loaded_at: Option<Millis>,
    /// Collections granted.
    pub collections: Vec<String>,
    /// HTTP origins granted.
    pub http_origins: Vec<String>,
    /// The manifest lets `http` run inside the payment transaction (`http_in_payment`).
    pub http_in_payment: bool,
    /// The manifest grants the notify-key `crypto` operations (`crypto = true`).
    pub crypto: bool,
    /// The serving build exports `handle-refunded` (world `handler-with-refunds`).
    pub handles_refunds: bool,
    /// Wall-time limit of `run-task` calls, in ms.
    pub timeout_ms: Option<u64>,
    /// Wall-time limit of payment and refund calls, in ms.
    pub payment_timeout_ms: Option<u64>,
    /// Payment calls that timed out in a row, and until when the type fails fast.
    pub breaker: breaker::BreakerStatus,
    /// The last load failure for this type (the previous version keeps serving).
    pub last_error: Option<String>,
    /// When it failed.
    pub last_error_at: Option<Millis>,
    /// The staged candidate (`{type}.next.wasm`), loaded, loading or refused; `None` when
    /// nothing is staged.
    pub candidate: Option<CandidateStatus>,
    /// A previous build (`{type}.prev.wasm`) is kept: `paynotify plugins rollback` can put
    /// it back.
    pub has_previous: bool,
}

/// What ops see of a type's staged candidate.
#[derive(Debug, Clone, Serialize)]
pub struct CandidateStatus {
    /// The candidate is loaded (and can be promoted).
    pub loaded: bool,
    /// A new candidate file is being compiled, since when.
    pub loading_since: Option<Millis>,
    /// `type@version sha256:…` (and its signer) of the loaded candidate.
    pub build: Option<String>,
    /// Version it reports.
    pub version: Option<String>,
    /// SHA-256 of its `.wasm`.
    pub sha256: Option<String>,
    /// Who signed it.
    pub signer: Option<Signer>,
    /// When it was loaded.
    pub loaded_at: Option<Millis>,
    /// Collections its manifest grants.
    pub collections: Vec<String>,
    /// The last load failure of the candidate's files (the loaded candidate, if any,
    /// stays; the serving build is never affected).
    pub last_error: Option<String>,
    /// When it failed.
    pub last_error_at: Option<Millis>,
}

impl Registry {
    /// Status of every type that has a build serving, loading or refused, or a candidate.
    pub fn status(&self) -> Vec<PluginStatus> {
        let loaded = self.serving.loaded.load();
        let errors = self.serving.errors();
        let loading = self.serving.loading();
        let candidates = self.candidates.loaded.load();
        let candidate_errors = self.candidates.errors();
        let candidate_loading = self.candidates.loading();
        let mut types: Vec<&String> = loaded
            .keys()
            .chain(errors.keys())
            .chain(loading.keys())
            .chain(candidates.keys())
            .chain(candidate_errors.keys())
            .chain(candidate_loading.keys())
            .collect();
        types.sort();
        types.dedup();
        types
            .into_iter()
            .map(|t| {
                let p = loaded.get(t);
                let err = errors.get(t);
                let c = candidates.get(t);
                let c_err = candidate_errors.get(t);
                let c_loading = candidate_loading.get(t).copied();
                let candidate =
                    (c.is_some() || c_err.is_some() || c_loading.is_some()).then(|| {
                        CandidateStatus {
                            loaded: c.is_some(),
                            loading_since: c_loading,
                            build: c.map(|c| c.build_id()),
                            version: c.map(|c| c.metadata.version.clone()),
                            sha256: c.map(|c| c.sha256.clone()),
                            signer: c.and_then(|c| c.signer.clone()),
                            loaded_at: c.map(|c| c.loaded_at),
                            collections: c
                                .map(|c| c.manifest.collections.clone())
                                .unwrap_or_default(),
                            last_error: c_err.map(|e| e.message.clone()),
                            last_error_at: c_err.map(|e| e.at),
                        }
                    });
                PluginStatus {
                    plugin_type: t.clone(),
                    loaded: p.is_some(),
                    loading_since: loading.get(t).copied(),
                    name: p.map(|p| p.metadata.name.clone()),
                    version: p.map(|p| p.metadata.version.clone()),
                    world_version: p.map(|p| p.metadata.world_version.clone()),
                    sha256: p.map(|p| p.sha256.clone()),
                    signer: p.and_then(|p| p.signer.clone()),
                    size: p.map(|p| p.size),
                    loaded_at: p.map(|p| p.loaded_at),
                    collections: p
                        .map(|p| p.manifest.collections.clone())
                        .unwrap_or_default(),
                    http_origins: p
                        .map(|p| p.manifest.http_origins.clone())
                        .unwrap_or_default(),
                    http_in_payment: p.is_some_and(|p| p.manifest.http_in_payment),
                    crypto: p.is_some_and(|p| p.manifest.crypto),
                    handles_refunds: p.is_some_and(|p| p.compiled.handles_refunds()),
                    timeout_ms: p.map(|p| duration_ms(p.limits.timeout)),
                    payment_timeout_ms: p.map(|p| duration_ms(p.payment_limits.timeout)),
                    breaker: p.map(|p| p.breaker.status()).unwrap_or_default(),
                    last_error: err.map(|e| e.message.clone()),
                    last_error_at: err.map(|e| e.at),
                    candidate,
                    has_previous: self.has_previous(t),
                }
            })
            .collect()
    }

    /// Whether `{type}.prev.wasm` is there to roll back to.
    fn has_previous(&self, plugin_type: &str) -> bool {
        Paths::in_dir(&self.config.dir, plugin_type, Stage::Prev)
            .wasm
            .is_file()
    }
}

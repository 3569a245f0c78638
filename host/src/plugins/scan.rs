//! A scan of the plugins folder: loads every serving build (`{type}.wasm`) and every
//! candidate (`{type}.next.wasm`) whose files changed, keeps what loaded before when a new
//! file fails, and unloads the builds whose files are gone. Serving builds and candidates
//! go through the same code, each into its own [`Slot`]: nothing a candidate's files do
//! can change what serves.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::files::{self, FileStamp, Files};
use super::slot::Slot;
use super::{
    signer_text, AllowedSigners, LoadError, Plugin, Registry, ScanReport, Signers, CACHE_UNUSED_FOR,
};
use crate::store::PluginEventKind;
use crate::time::now_ms;

/// One type's files as a scan found them.
struct Found<'a> {
    plugin_type: &'a str,
    paths: files::Paths,
    /// What the filesystem said of them, before they were read.
    stamp: FileStamp,
}

/// What a scan does with one type's files.
enum Reload {
    Loaded(Box<Plugin>),
    Unchanged,
    /// With the files' fingerprint and the `.wasm`'s SHA-256, when they could be read.
    Failed(LoadError, Option<(String, String)>),
}

impl Registry {
    /// Loads every `{type}.wasm` (and `{type}.next.wasm` candidate) in the directory whose
    /// files changed (by what the filesystem says of them), keeps the loaded version of
    /// any that fails, and unloads types whose file is gone or whose signer is no longer
    /// allowed.
    pub async fn scan(&self) -> ScanReport {
        self.scan_with(false).await
    }

    /// [`Registry::scan`], but reading and hashing every file, so a replacement that
    /// the filesystem's stamps cannot show is still found (`plugins reload`).
    pub async fn rescan(&self) -> ScanReport {
        self.scan_with(true).await
    }

    async fn scan_with(&self, force: bool) -> ScanReport {
        let _one_at_a_time = self.scanning.lock().await;
        let mut report = ScanReport::default();
        let folder = match files::plugin_files(&self.config.dir) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(dir = %self.config.dir.display(), error = %e, "cannot read plugins directory");
                report.failed.push(("*".into(), e));
                return report;
            }
        };
        let signers = self.signers();
        for slot in [&self.serving, &self.candidates] {
            self.scan_slot(slot, folder.of(slot.stage), &signers, force, &mut report)
                .await;
        }
        if let Some(cache) = &self.cache {
            let (serving, candidates) = (self.serving.loaded.load(), self.candidates.loaded.load());
            let used: Vec<&str> = serving
                .values()
                .chain(candidates.values())
                .map(|p| p.sha256.as_str())
                .collect();
            cache.sweep(&used, CACHE_UNUSED_FOR);
        }
        report
    }

    /// Scans the files of one slot's stage (`files`, by type) into `slot`.
    async fn scan_slot(
        &self,
        slot: &Slot,
        files: &BTreeMap<String, PathBuf>,
        signers: &Signers,
        force: bool,
        report: &mut ScanReport,
    ) {
        let now = now_ms();
        let current = slot.loaded.load_full();
        let mut next: BTreeMap<String, Arc<Plugin>> = BTreeMap::new();
        for (plugin_type, wasm_path) in files {
            let label = slot.stage.label(plugin_type);
            let mut previous = current.get(plugin_type);
            if let (Some(p), Some(Ok(allowed))) = (previous, signers) {
                if p.signer
                    .as_ref()
                    .is_some_and(|s| !allowed.still_allows(s, now))
                {
                    // Loading it again below fails on the signature and says why.
                    tracing::warn!(plugin = %label, signer = %signer_text(p.signer.as_ref()), "the loaded build's signer is no longer allowed: unloading it");
                    previous = None;
                }
            }
            let paths = files::Paths::of(wasm_path);
            let found = Found {
                plugin_type,
                stamp: FileStamp::of(&paths),
                paths,
            };
            let outcome = self.reload(slot, &found, previous, signers, force).await;
            match outcome {
                Reload::Loaded(plugin) => {
                    tracing::info!(
                        plugin = %label,
                        version = %plugin.metadata.version,
                        sha256 = %plugin.sha256,
                        signer = %signer_text(plugin.signer.as_ref()),
                        "plugin loaded"
                    );
                    let kind = match previous {
                        Some(_) => PluginEventKind::Replaced,
                        None => PluginEventKind::Loaded,
                    };
                    self.record(kind, &label, Some(&plugin), None, None).await;
                    slot.clear_error(plugin_type);
                    crate::metrics::plugin_loaded(&label);
                    report.loaded.push(label);
                    next.insert(plugin_type.clone(), Arc::from(plugin));
                }
                Reload::Unchanged => {
                    report.unchanged.push(label);
                    if let Some(p) = previous {
                        next.insert(plugin_type.clone(), p.clone());
                    }
                }
                Reload::Failed(e, read) => {
                    let msg = format!("{}: {e}", wasm_path.display());
                    tracing::error!(plugin = %label, error = %msg, "plugin failed to load; the version loaded before (if any) stays");
                    let (fingerprint, sha256) = read.unzip();
                    self.record(
                        PluginEventKind::Refused,
                        &label,
                        None,
                        sha256.as_deref(),
                        Some(&msg),
                    )
                    .await;
                    slot.set_error(plugin_type, msg.clone(), found.stamp, fingerprint);
                    crate::metrics::plugin_load_failed(&label, e.kind());
                    report.failed.push((label, msg));
                    if let Some(p) = previous {
                        next.insert(plugin_type.clone(), p.clone());
                    }
                }
            }
        }
        for (t, gone) in current.iter() {
            if !files.contains_key(t) {
                let label = slot.stage.label(t);
                tracing::warn!(plugin = %label, "plugin file removed; unloaded");
                self.record(PluginEventKind::Unloaded, &label, Some(gone), None, None)
                    .await;
                report.removed.push(label);
            }
        }
        // A load error describes a file; once the file is gone, so is the problem
        // (otherwise /readyz would keep failing for a broken file that was deleted).
        slot.retain_errors(|t| files.contains_key(t));
        slot.loaded.store(Arc::new(next));
    }

    /// Decides what to do with one type's files: skip them if they did not change (or
    /// failed before as they are), else read, check and load them.
    async fn reload(
        &self,
        slot: &Slot,
        found: &Found<'_>,
        previous: Option<&Arc<Plugin>>,
        signers: &Signers,
        force: bool,
    ) -> Reload {
        let Found {
            plugin_type,
            paths,
            stamp,
        } = found;
        let failed = slot.failure(plugin_type);
        if !force {
            if previous.is_some_and(|p| &p.stamp() == stamp) {
                return Reload::Unchanged;
            }
            if failed.as_ref().is_some_and(|f| &f.stamp == stamp) {
                return Reload::Unchanged;
            }
        }
        let read = match Files::read(paths) {
            Ok(r) => r,
            Err(e) => return Reload::Failed(e, None),
        };
        let fingerprint = read.fingerprint();
        let sha256 = read.wasm_sha256();
        if previous.is_some_and(|p| p.fingerprint == fingerprint) {
            // The files are back to the build loaded: whatever failed in between is gone.
            slot.clear_error(plugin_type);
            return Reload::Unchanged;
        }
        if failed.is_some_and(|f| f.fingerprint.as_ref() == Some(&fingerprint)) {
            return Reload::Unchanged;
        }
        let allowed: Option<&AllowedSigners> = match signers {
            None => None,
            Some(Ok(s)) => Some(s),
            Some(Err(e)) => {
                return Reload::Failed(LoadError::Signers(e.clone()), Some((fingerprint, sha256)))
            }
        };
        match self
            .load(plugin_type, slot, read, stamp.clone(), allowed)
            .await
        {
            Ok(plugin) => Reload::Loaded(Box::new(plugin)),
            Err(e) => Reload::Failed(e, Some((fingerprint, sha256))),
        }
    }
}

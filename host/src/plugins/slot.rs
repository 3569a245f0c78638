//! One set of builds by type: the serving handlers (`{type}.wasm`) or the staged
//! candidates (`{type}.next.wasm`). Each has its own map, swapped atomically, its own load
//! errors and its own "loading" marks, so a candidate never hides, replaces or breaks what
//! serves.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::files::{FileStamp, Stage};
use super::Plugin;
use crate::time::{now_ms, Millis};

/// The builds of one [`Stage`], by type.
pub(super) struct Slot {
    /// Which files these builds come from.
    pub stage: Stage,
    /// The loaded builds; swapped whole, so a reader gets one consistent map.
    pub loaded: ArcSwap<BTreeMap<String, Arc<Plugin>>>,
    /// Last load failure per type (not retried until the files change).
    errors: Mutex<BTreeMap<String, Failure>>,
    /// Types being compiled now, since when: a large component (a JavaScript one) takes
    /// seconds, and ops and API clients should see it coming rather than a missing type.
    loading: Mutex<BTreeMap<String, Millis>>,
}

/// A type's last load failure.
#[derive(Debug, Clone)]
pub(super) struct Failure {
    /// What failed, naming the file.
    pub message: String,
    /// When.
    pub at: Millis,
    /// The files' stamp when they failed: an unforced scan skips them while it holds.
    pub stamp: FileStamp,
    /// Their fingerprint, when they could be read: a forced scan skips them while it holds.
    pub fingerprint: Option<String>,
}

impl Slot {
    /// An empty slot of `stage`.
    pub fn new(stage: Stage) -> Slot {
        Slot {
            stage,
            loaded: ArcSwap::from_pointee(BTreeMap::new()),
            errors: Mutex::new(BTreeMap::new()),
            loading: Mutex::new(BTreeMap::new()),
        }
    }

    /// The build of `plugin_type`, if one is loaded: one atomic load.
    pub fn get(&self, plugin_type: &str) -> Option<Arc<Plugin>> {
        self.loaded.load().get(plugin_type).cloned()
    }

    /// Records `plugin_type`'s load failure.
    pub fn set_error(
        &self,
        plugin_type: &str,
        message: String,
        stamp: FileStamp,
        fingerprint: Option<String>,
    ) {
        self.errors_lock().insert(
            plugin_type.to_owned(),
            Failure {
                message,
                at: now_ms(),
                stamp,
                fingerprint,
            },
        );
    }

    /// `plugin_type`'s last load failure, if its files are still the ones that failed.
    pub fn failure(&self, plugin_type: &str) -> Option<Failure> {
        self.errors_lock().get(plugin_type).cloned()
    }

    /// Forgets `plugin_type`'s load failure.
    pub fn clear_error(&self, plugin_type: &str) {
        self.errors_lock().remove(plugin_type);
    }

    /// Forgets the failures of types for which `keep` is false (their files are gone).
    pub fn retain_errors(&self, keep: impl Fn(&str) -> bool) {
        self.errors_lock().retain(|t, _| keep(t));
    }

    /// Every load failure, by type.
    pub fn errors(&self) -> BTreeMap<String, Failure> {
        self.errors_lock().clone()
    }

    /// When `plugin_type` started loading, if it is loading now.
    pub fn loading_since(&self, plugin_type: &str) -> Option<Millis> {
        self.loading_lock().get(plugin_type).copied()
    }

    /// Every type loading now, since when.
    pub fn loading(&self) -> BTreeMap<String, Millis> {
        self.loading_lock().clone()
    }

    /// Marks `plugin_type` as loading now.
    pub fn start_loading(&self, plugin_type: &str) {
        self.loading_lock().insert(plugin_type.to_owned(), now_ms());
    }

    /// Clears `plugin_type`'s loading mark.
    pub fn done_loading(&self, plugin_type: &str) {
        self.loading_lock().remove(plugin_type);
    }

    fn errors_lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Failure>> {
        self.errors.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn loading_lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Millis>> {
        self.loading.lock().unwrap_or_else(|p| p.into_inner())
    }
}

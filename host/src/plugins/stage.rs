//! Promote and roll back: make a type's staged candidate serve, or put its previous build
//! back, in the folder and in memory, under the scan lock.
//!
//! A promote checks that the candidate (`{type}.next.*`) is loaded and its files are the
//! ones it loaded from, then moves the serving files to `{type}.prev.*` and the candidate's
//! to `{type}.*` ([`moves::shift`]), and makes the candidate's already-compiled build serve.
//! A rollback loads `{type}.prev.*` as a scan would, then swaps `{type}.*` and
//! `{type}.prev.*` ([`moves::swap`]), so a second rollback returns to the build it replaced.
//! A failure before or while moving changes nothing; calls in flight finish on the build
//! they started on (they hold it), new calls get the new one.

use std::sync::Arc;

use serde::Serialize;

use super::files::{self, FileStamp, Files, Paths, Stage};
use super::moves;
use super::{Plugin, Registry};
use crate::store::PluginEventKind;
use crate::time::now_ms;

/// What a promote or a rollback did.
#[derive(Debug, Clone, Serialize)]
pub struct Swap {
    /// The type.
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// The build serving now (`type@version sha256:…`, and its signer).
    pub serving: String,
    /// The SHA-256 of its `.wasm`.
    pub serving_sha256: String,
    /// The build that served before, now `{type}.prev.*`; `None` if none served.
    pub previous: Option<String>,
    /// The SHA-256 of its `.wasm`.
    pub previous_sha256: Option<String>,
    /// The files moved, `from → to`, in order.
    pub moved: Vec<String>,
}

/// Why a promote or rollback did nothing.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// Not a plugin type's name.
    #[error("{0}")]
    BadType(String),
    /// Not possible now (nothing staged, a candidate that failed or changed, no previous
    /// build, one that does not load); nothing changed.
    #[error("{0}")]
    Conflict(String),
    /// Moving the files failed; what was moved was put back (the message says so, or
    /// names what could not be).
    #[error("{0}")]
    Files(String),
}

impl Registry {
    /// Makes the candidate of `plugin_type` serve: `{type}.wasm` & co. become
    /// `{type}.prev.*`, `{type}.next.*` become `{type}.*`, and the candidate's compiled
    /// build serves from now on. [`StageError::Conflict`] when there is no loaded candidate
    /// or its files changed since it loaded, or while its breaker fails it fast.
    pub async fn promote(&self, plugin_type: &str) -> Result<Swap, StageError> {
        check_type(plugin_type)?;
        let _one_at_a_time = self.scanning.lock().await;
        let dir = &self.config.dir;
        let next = Paths::in_dir(dir, plugin_type, Stage::Next);
        let candidate = self
            .candidates
            .get(plugin_type)
            .ok_or_else(|| StageError::Conflict(self.why_no_candidate(plugin_type, &next)))?;
        self.still_allowed(&candidate, "promote")?;
        let breaker = candidate.breaker.status();
        if let Some(until) = breaker.failing_fast_until {
            // Its calls (shadow runs) kept timing out: serving, it would fail payments.
            return Err(StageError::Conflict(format!(
                "{} is failing fast after {} timeouts in a row (until {}): promoted, its payments would fail; fix it and stage it again",
                candidate.build_id(),
                breaker.timeouts_in_a_row,
                crate::time::iso_time(until)
            )));
        }
        if candidate.stamp() != FileStamp::of(&next)
            && FileStamp::of_build(&next, &candidate.fingerprint).is_none()
        {
            return Err(StageError::Conflict(format!(
                "{} changed since {} loaded from it: wait for the rescan (or run `paynotify plugins reload`), check the build it loads, then promote it",
                files::name(&next.wasm),
                candidate.build_id()
            )));
        }
        let serving = Paths::in_dir(dir, plugin_type, Stage::Serving);
        let prev = Paths::in_dir(dir, plugin_type, Stage::Prev);
        let previous = self.serving.get(plugin_type);
        warn_unless_serving(&serving, &prev, previous.as_deref());
        let moves = moves::shift(&next, &serving, &prev)
            .map_err(|e| StageError::Files(format!("cannot promote `{plugin_type}`: {e}")))?;
        let moved = moves.moved();
        moves.commit();
        self.serve(plugin_type, &candidate, &serving);
        let mut candidates = (**self.candidates.loaded.load()).clone();
        candidates.remove(plugin_type);
        self.candidates.loaded.store(Arc::new(candidates));
        self.candidates.clear_error(plugin_type);
        let reason = format!(
            "promoted from {}; {}",
            files::name(&next.wasm),
            kept_as(previous.as_deref(), &prev)
        );
        tracing::info!(plugin = %plugin_type, serving = %candidate.build_id(), previous = ?previous.as_ref().map(|p| p.build_id()), "candidate promoted");
        self.record(
            PluginEventKind::Promoted,
            plugin_type,
            Some(&candidate),
            None,
            Some(&reason),
        )
        .await;
        Ok(Swap::new(
            plugin_type,
            &candidate,
            previous.as_deref(),
            moved,
        ))
    }

    /// Puts the previous build of `plugin_type` (`{type}.prev.*`) back: loads it as a scan
    /// would, then swaps `{type}.*` and `{type}.prev.*` and makes it serve. A staged
    /// candidate is left alone. [`StageError::Conflict`] when there is no previous build
    /// or it does not load.
    pub async fn rollback(&self, plugin_type: &str) -> Result<Swap, StageError> {
        check_type(plugin_type)?;
        let _one_at_a_time = self.scanning.lock().await;
        let dir = &self.config.dir;
        let serving = Paths::in_dir(dir, plugin_type, Stage::Serving);
        let prev = Paths::in_dir(dir, plugin_type, Stage::Prev);
        if !prev.wasm.is_file() {
            return Err(StageError::Conflict(format!(
                "no previous build of `{plugin_type}` to roll back to: there is no {} in {} (a promote keeps the build it replaces there)",
                files::name(&prev.wasm),
                dir.display()
            )));
        }
        let plugin = Arc::new(self.load_prev(plugin_type, &prev).await?);
        let previous = self.serving.get(plugin_type);
        warn_unless_serving(&serving, &prev, previous.as_deref());
        let moves = moves::swap(&serving, &prev)
            .map_err(|e| StageError::Files(format!("cannot roll back `{plugin_type}`: {e}")))?;
        let moved = moves.moved();
        moves.commit();
        self.serve(plugin_type, &plugin, &serving);
        let reason = format!(
            "rolled back to {}; {}",
            files::name(&prev.wasm),
            kept_as(previous.as_deref(), &prev)
        );
        tracing::info!(plugin = %plugin_type, serving = %plugin.build_id(), previous = ?previous.as_ref().map(|p| p.build_id()), "rolled back to the previous build");
        self.record(
            PluginEventKind::RolledBack,
            plugin_type,
            Some(&plugin),
            None,
            Some(&reason),
        )
        .await;
        Ok(Swap::new(plugin_type, &plugin, previous.as_deref(), moved))
    }

    /// Loads `{type}.prev.*` exactly as a scan loads a serving build (signatures, manifest,
    /// limits, the name check); a refusal is recorded in the history as `{type}.prev`.
    async fn load_prev(&self, plugin_type: &str, prev: &Paths) -> Result<Plugin, StageError> {
        let refused = |e: String| {
            StageError::Conflict(format!(
                "cannot roll back `{plugin_type}`: {} does not load, nothing changed: {e}",
                files::name(&prev.wasm)
            ))
        };
        let signers = match self.signers() {
            None => None,
            Some(Ok(s)) => Some(s),
            Some(Err(e)) => return Err(refused(e)),
        };
        let stamp = FileStamp::of(prev);
        let read = Files::read(prev).map_err(|e| refused(e.to_string()))?;
        let (fingerprint, sha256) = (read.fingerprint(), read.wasm_sha256());
        let loaded = self
            .load(plugin_type, &self.serving, read, stamp, signers.as_ref())
            .await;
        let plugin = match loaded {
            Ok(p) => p,
            Err(e) => {
                let label = Stage::Prev.label(plugin_type);
                let message = format!("{}: {e}", prev.wasm.display());
                self.record(
                    PluginEventKind::Refused,
                    &label,
                    None,
                    Some(&sha256),
                    Some(&message),
                )
                .await;
                return Err(refused(e.to_string()));
            }
        };
        // Compiling can take seconds: the files must still be the ones loaded.
        if FileStamp::of_build(prev, &fingerprint).is_none() {
            return Err(StageError::Conflict(format!(
                "cannot roll back `{plugin_type}`: {} changed while it loaded, nothing changed: try again",
                files::name(&prev.wasm)
            )));
        }
        Ok(plugin)
    }

    /// Makes `plugin` serve `plugin_type` from the files now at `serving`: stamped for
    /// them (so the next scan finds it unchanged) and swapped in atomically.
    fn serve(&self, plugin_type: &str, plugin: &Arc<Plugin>, serving: &Paths) {
        let stamp = FileStamp::of_build(serving, &plugin.fingerprint).unwrap_or_else(|| {
            // Someone wrote there while the files moved: the next scan reads them.
            tracing::warn!(plugin = %plugin_type, file = %serving.wasm.display(), "the moved files are not the build that now serves: the next scan reloads them");
            FileStamp::unknown()
        });
        plugin.restamp(stamp);
        let mut serving_now = (**self.serving.loaded.load()).clone();
        serving_now.insert(plugin_type.to_owned(), plugin.clone());
        self.serving.loaded.store(Arc::new(serving_now));
        // The failure was about the files that now are `{type}.prev.*`.
        self.serving.clear_error(plugin_type);
    }

    /// Why there is no candidate of `plugin_type` to promote, for the operator.
    fn why_no_candidate(&self, plugin_type: &str, next: &Paths) -> String {
        let file = files::name(&next.wasm);
        if let Some(f) = self.candidates.failure(plugin_type) {
            return format!(
                "the candidate of `{plugin_type}` failed to load, there is nothing to promote: {}",
                f.message
            );
        }
        if next.wasm.exists() {
            return format!(
                "{file} has not been loaded yet: wait for the rescan (or run `paynotify plugins reload`), check the build it loads, then promote it"
            );
        }
        format!(
            "nothing is staged for `{plugin_type}`: put {file} (with {}) in {}, check that it loads, then promote it",
            files::name(&next.manifest),
            self.config.dir.display()
        )
    }

    /// Refuses to make `plugin` serve when `allowed_signers` cannot be read or no longer
    /// allows its signer (a scan would unload it).
    fn still_allowed(&self, plugin: &Plugin, action: &str) -> Result<(), StageError> {
        match self.signers() {
            None => Ok(()),
            Some(Err(e)) => Err(StageError::Conflict(format!("cannot {action}: {e}"))),
            Some(Ok(allowed)) => match &plugin.signer {
                Some(s) if !allowed.still_allows(s, now_ms()) => {
                    Err(StageError::Conflict(format!(
                        "cannot {action} {}: its signer is no longer allowed by {}",
                        plugin.build_id(),
                        allowed.path().display()
                    )))
                }
                _ => Ok(()),
            },
        }
    }
}

impl Swap {
    fn new(plugin_type: &str, now: &Plugin, before: Option<&Plugin>, moved: Vec<String>) -> Swap {
        Swap {
            plugin_type: plugin_type.to_owned(),
            serving: now.build_id(),
            serving_sha256: now.sha256.clone(),
            previous: before.map(Plugin::build_id),
            previous_sha256: before.map(|p| p.sha256.clone()),
            moved,
        }
    }
}

/// A type name as the API and CLI take it.
fn check_type(plugin_type: &str) -> Result<(), StageError> {
    if crate::names::is_simple_name(plugin_type) {
        Ok(())
    } else {
        Err(StageError::BadType(format!(
            "`{plugin_type}` is not a plugin type: letters, digits, - and _ (the file's name without .wasm)"
        )))
    }
}

/// What the history says of the build that stopped serving.
fn kept_as(previous: Option<&Plugin>, prev: &Paths) -> String {
    match previous {
        Some(p) => format!("{} kept as {}", p.build_id(), files::name(&prev.wasm)),
        None => "no build served before".to_owned(),
    }
}

/// Logs when the serving files on disk are not the serving build's (a newer file failed
/// to load, or was never scanned): they become `{type}.prev.*` all the same, and a
/// rollback would load them, not the build that served.
fn warn_unless_serving(serving: &Paths, prev: &Paths, build: Option<&Plugin>) {
    let Some(build) = build else { return };
    if build.stamp() == FileStamp::of(serving)
        || FileStamp::of_build(serving, &build.fingerprint).is_some()
    {
        return;
    }
    tracing::warn!(
        file = %serving.wasm.display(),
        serving = %build.build_id(),
        "the serving files are not the serving build's; they are kept as {} all the same (a rollback loads them, not the build that served)",
        files::name(&prev.wasm)
    );
}

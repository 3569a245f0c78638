//! Hot reload: watches the plugins directory and rescans it once changes settle.
//!
//! A copy in progress produces a burst of events; the watcher waits until no event has
//! arrived for [`QUIET`] and every file's size and mtime stayed the same across one more
//! [`QUIET`], then scans. The scan compiles and validates before swapping, so even a file
//! that slips through half-written leaves the previous version serving, and the complete
//! file's own events reload it. A slow periodic rescan covers filesystems whose change
//! events get lost (network mounts, some container overlays).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify::{RecursiveMode, Watcher};

use super::Registry;

/// How long the directory must be quiet before a scan.
pub const QUIET: Duration = Duration::from_millis(150);
/// Rescan this often even without events.
const PERIODIC: Duration = Duration::from_secs(30);

/// Keeps the watch alive; dropping it stops watching.
pub struct WatchHandle {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts watching the registry's directory.
pub fn watch(registry: Arc<Registry>, dir: PathBuf) -> Result<WatchHandle, notify::Error> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(e) if touches_plugin_file(&e.paths) => {
                let _ = tx.send(());
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "plugin directory watch error"),
        })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let task = tokio::spawn(async move {
        loop {
            let woke = tokio::time::timeout(PERIODIC, rx.recv()).await;
            if matches!(woke, Ok(None)) {
                return;
            }
            if woke.is_ok() {
                settle(&mut rx, &dir).await;
            }
            let report = registry.scan().await;
            if !report.loaded.is_empty() || !report.failed.is_empty() || !report.removed.is_empty()
            {
                tracing::info!(
                    loaded = ?report.loaded,
                    failed = ?report.failed,
                    removed = ?report.removed,
                    "plugins directory rescanned"
                );
            }
        }
    });
    Ok(WatchHandle {
        _watcher: watcher,
        task,
    })
}

/// Waits for quiet: no events for [`QUIET`], and file sizes and mtimes unchanged.
async fn settle(rx: &mut tokio::sync::mpsc::UnboundedReceiver<()>, dir: &Path) {
    loop {
        while tokio::time::timeout(QUIET, rx.recv())
            .await
            .is_ok_and(|e| e.is_some())
        {}
        let before = stamps(dir);
        tokio::time::sleep(QUIET).await;
        let mut more = false;
        while rx.try_recv().is_ok() {
            more = true;
        }
        if !more && stamps(dir) == before {
            return;
        }
    }
}

/// (name, size, mtime) of every plugin file, sorted.
fn stamps(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| touches_plugin_file(&[e.path()]))
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((e.path(), m.len(), m.modified().ok()))
        })
        .collect();
    v.sort();
    v
}

fn touches_plugin_file(paths: &[PathBuf]) -> bool {
    paths.iter().any(|p| {
        let hidden = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        let ext = p.extension().and_then(|e| e.to_str());
        !hidden && matches!(ext, Some("wasm") | Some("toml") | Some("sig"))
    })
}

//! The plugin history: the registry writes every load, replacement, unload and refusal
//! to the database, so ops can still tell which build paid an order, and who signed it,
//! after the file was replaced or the host restarted.

use std::sync::Arc;
use std::time::Duration;

use super::Plugin;
use crate::store::{PluginEvent, PluginEventKind, Store};
use crate::time::now_ms;

/// Where a registry records its history, and as which host.
pub(super) struct History {
    store: Arc<dyn Store>,
    /// `{hostname}:{pid}`: on PostgreSQL several hosts share one history, and a restart
    /// shows as a new process.
    host: String,
    /// How long one write may take before it is given up.
    timeout: Duration,
}

impl History {
    /// Records into `store`, each write given up after `timeout`.
    pub(super) fn new(store: Arc<dyn Store>, timeout: Duration) -> History {
        History {
            store,
            host: host_label(),
            timeout,
        }
    }

    /// Writes one event about `plugin` (a build that loaded or stopped serving) or, for a
    /// refusal, about the file whose SHA-256 is `file_sha256`. A failure is logged, never
    /// returned: the registry serves its handlers whether or not the database takes note.
    pub(super) async fn record(
        &self,
        event: PluginEventKind,
        plugin_type: &str,
        plugin: Option<&Plugin>,
        file_sha256: Option<&str>,
        reason: Option<&str>,
    ) {
        let e = PluginEvent {
            at: now_ms(),
            plugin_type: plugin_type.to_owned(),
            event,
            sha256: plugin
                .map(|p| p.sha256.clone())
                .or_else(|| file_sha256.map(str::to_owned)),
            signer: plugin
                .and_then(|p| p.signer.as_ref())
                .map(ToString::to_string),
            version: plugin.map(|p| p.metadata.version.clone()),
            reason: reason.map(str::to_owned),
            host: self.host.clone(),
        };
        let written = crate::store::within(
            self.timeout,
            self.store.plugin_history().record_plugin_event(&e),
        )
        .await;
        if let Err(err) = written {
            tracing::warn!(
                plugin = %plugin_type,
                event = event.as_str(),
                error = %err,
                "cannot record the plugin event in the history"
            );
        }
    }
}

/// `{hostname}:{pid}`; the hostname from the kernel, else `$HOSTNAME`, else `unknown`.
pub(crate) fn host_label() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    format!("{name}:{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_label_names_this_process() {
        let label = host_label();
        let (name, pid) = label.rsplit_once(':').expect("name:pid");
        assert!(!name.is_empty() && !name.contains('\n'), "{label}");
        assert_eq!(pid, std::process::id().to_string());
    }
}

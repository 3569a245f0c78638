//! `log`: a handler's log lines, tagged with the call (plugin, order, notification, task)
//! and cut to a size a log pipeline takes. A shadow run's lines are debug lines.
//!
//! Configure: nothing to check. Prepare: the call's [`CallTags`](super::CallTags). Link:
//! interface `log`.

use wasmtime::component::{HasSelf, Linker};

use super::{CallContext, Capability, DbAccess, Getter};
use crate::plugins::world::since_v0_1::bindings::paynotify::plugin::log as wit;

/// The `log` capability.
pub(super) struct Log;

impl Capability for Log {
    fn link<T: Send + 'static>(linker: &mut Linker<T>, get: Getter<T>) -> wasmtime::Result<()> {
        wit::add_to_linker::<T, HasSelf<CallContext>>(linker, get)
    }
}

impl wit::Host for CallContext {
    async fn log(&mut self, level: wit::Level, message: String, fields: Vec<(String, String)>) {
        let message: String = message.chars().take(4096).collect();
        let fields = fields
            .iter()
            .take(32)
            .map(|(k, v)| format!("{k}={}", v.chars().take(512).collect::<String>()))
            .collect::<Vec<_>>()
            .join(" ");
        let t = &self.tags;
        // tracing's level is part of each macro's static callsite, so one arm per level.
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
        if matches!(self.db, DbAccess::Shadow(_)) {
            // A shadow run changed nothing: its "credited 500 fen" must not read like the
            // serving build's in the log ops watch.
            emit!(debug);
            return;
        }
        match level {
            wit::Level::Trace => emit!(trace),
            wit::Level::Debug => emit!(debug),
            wit::Level::Info => emit!(info),
            wit::Level::Warn => emit!(warn),
            wit::Level::Error => emit!(error),
        }
    }
}

//! `config`: the settings in the manifest's `[config]` table, read-only.
//!
//! Configure: nothing to check (any string map). Prepare: nothing beyond the manifest.
//! Link: interface `config`.

use wasmtime::component::{HasSelf, Linker};

use super::{CallContext, Capability, Getter};
use crate::plugins::world::since_v0_1::bindings::paynotify::plugin::config as wit;

/// The `config` capability.
pub(super) struct Config;

impl Capability for Config {
    fn link<T: Send + 'static>(linker: &mut Linker<T>, get: Getter<T>) -> wasmtime::Result<()> {
        wit::add_to_linker::<T, HasSelf<CallContext>>(linker, get)
    }
}

impl wit::Host for CallContext {
    async fn get(&mut self, key: String) -> Option<String> {
        self.manifest.config.get(&key).cloned()
    }
}

//! Test-only: allocates without bound. The host's per-call memory limit must stop it (the
//! allocation failure aborts the component) without hurting the host or other plugins.

use paynotify_plugin_sdk::{export_handler, Error, Handler, Notification, Order, Outcome};

struct Oom;

impl Handler for Oom {
    const NAME: &'static str = "oom";

    fn handle_paid(_order: Order, _notification: Notification) -> Result<Outcome, Error> {
        hoard()
    }
}

/// Keeps 1 MiB chunks forever, writing to every page of each so none is optimised away.
fn hoard() -> ! {
    const CHUNK: usize = 1 << 20;
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0u8; CHUNK];
        for i in (0..CHUNK).step_by(4096) {
            chunk[i] = 1;
        }
        hoard.push(std::hint::black_box(chunk));
    }
}

export_handler!(Oom);

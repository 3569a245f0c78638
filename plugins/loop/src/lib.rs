//! Test-only: never returns. The host's per-call time limit (epoch interruption) must stop
//! it without hanging the host or other plugins.

use paynotify_plugin_sdk::{export_handler, Error, Handler, Notification, Order, Outcome};

struct Loop;

impl Handler for Loop {
    const NAME: &'static str = "loop";

    fn handle_paid(_order: Order, _notification: Notification) -> Result<Outcome, Error> {
        spin()
    }
}

/// Counts forever; `black_box` keeps the optimiser from proving the loop does nothing.
fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

export_handler!(Loop);

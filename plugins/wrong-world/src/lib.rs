//! Test-only: the same world at another version (`wit/plugin.wit` here says `@0.2.0`), as a
//! handler built with a future SDK would be. The host must refuse it at load time with a
//! message saying which version it needs, and keep the previous version serving.

mod bindings {
    // Generated code; its lints are wit-bindgen's business.
    #![allow(clippy::all)]
    wit_bindgen::generate!({ path: "wit", world: "handler" });
}

use bindings::{export, Guest};

use bindings::paynotify::plugin::{db, types};

struct WrongWorld;

impl Guest for WrongWorld {
    fn metadata() -> types::Metadata {
        types::Metadata {
            name: "wrong-world".into(),
            version: "9.9.9".into(),
            world_version: "0.2.0".into(),
        }
    }

    fn handle_paid(
        order: types::Order,
        _n: types::Notification,
    ) -> Result<types::Outcome, types::Error> {
        // Imports a 0.2.0 interface, so the component's imports carry the version too.
        let _ = db::get("users", &order.user_id);
        Ok(types::Outcome {
            result: String::new(),
        })
    }

    fn run_task(_task: types::Task) -> Result<(), types::Error> {
        Ok(())
    }
}

export!(WrongWorld with_types_in bindings);

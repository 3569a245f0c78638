//! Write paynotify payment handlers in Rust.
//!
//! A handler is a WebAssembly component, one per order `type` (`recharge.wasm`,
//! `vip.wasm`, ...). The paynotify host calls it once, **inside the database transaction that
//! marks the order paid**: every [`db`] write and every [`tasks::enqueue`] it makes commits
//! together with the payment, or not at all. Returning an [`Error`] (or panicking) rolls the
//! payment back and makes the provider retry the notification later.
//!
//! This crate is everything a handler author needs:
//!
//! * the [`Handler`] trait and the [`export_handler!`] macro that turns a type into the
//!   component's exports,
//! * typed [`Order`], [`Notification`], [`Task`] and [`Outcome`] values,
//! * optionally, refunds: [`RefundHandler`] and `export_handler!(MyHandler, refunds)`,
//! * one [`Error`] type that every capability error converts into, so `?` just works,
//! * the host's capabilities: [`db`] (a JSON document store), [`log`], [`http`] (outbound, to
//!   allow-listed origins only, from [`Handler::run_task`] unless the manifest opts in),
//!   [`crypto`] (keyed by the merchant account's notify key, when the manifest grants it) and
//!   [`tasks`] (the transactional outbox for side effects after commit).
//!
//! Which collections a handler may touch, which origins it may call, and whether it may use
//! the notify key is not decided here but by the manifest the host reads beside the `.wasm`
//! file (`recharge.toml`):
//!
//! ```toml
//! collections = ["users"]
//! http_origins = []
//! # crypto = true            # crypto::aes_encrypt / aes_decrypt / sign with the notify key
//! # http_in_payment = true   # http from handle_paid / handle_refunded too: idempotent calls only
//! ```
//!
//! # Example
//!
//! A complete `recharge` handler: add `custom.recharge_balance` fen to the user's balance.
//!
//! ```
//! use paynotify_plugin_sdk::{db, export_handler, Error, Handler, Notification, Order, Outcome};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Custom {
//!     recharge_balance: i64,
//! }
//!
//! struct Recharge;
//!
//! impl Handler for Recharge {
//!     const NAME: &'static str = "recharge";
//!
//!     fn handle_paid(order: Order, _notification: Notification) -> Result<Outcome, Error> {
//!         let custom: Custom = order.custom()?;
//!         if custom.recharge_balance < 0 {
//!             return Err(Error::new("invalid-custom", "recharge_balance must not be negative"));
//!         }
//!         let balance = db::collection("users")
//!             .doc(&order.user_id)
//!             .inc("balance", custom.recharge_balance)?;
//!         Outcome::json(&serde_json::json!({ "balance": balance }))
//!     }
//! }
//!
//! export_handler!(Recharge);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` from a crate with
//! `crate-type = ["cdylib"]`; the resulting `.wasm` is already a component.
//!
//! # Side effects
//!
//! `handle_paid` may be called again for the same order if the payment transaction rolls
//! back (the provider retries), so anything outside the database (HTTP calls, messages)
//! belongs in a task: [`tasks::enqueue`] it in `handle_paid`, do it in
//! [`Handler::run_task`], which the host calls after commit and retries on error.
//!
//! # Panics
//!
//! A panic aborts the component (a wasm trap): the host rolls the payment back exactly as for
//! an [`Error`]. The SDK logs the panic message through [`log`] before that happens, so it is
//! visible in the host's logs. Prefer returning an [`Error`].

#![warn(missing_docs)]

// The refunds bindings name the shared bindings by absolute path, which must resolve both
// here and where the export macros expand (in the handler's crate).
extern crate self as paynotify_plugin_sdk;

/// Raw bindings generated from `wit/plugin.wit`. Not part of the public API: use the
/// wrappers in this crate instead.
#[doc(hidden)]
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "handler",
        pub_export_macro: true,
        default_bindings_module: "paynotify_plugin_sdk::bindings",
    });
}

/// Raw bindings of world `handler-with-refunds` (a handler that also exports `refunds`),
/// sharing [`bindings`]' imports and types. Not part of the public API.
#[doc(hidden)]
#[allow(missing_docs, clippy::all)]
pub mod refund_bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "handler-with-refunds",
        pub_export_macro: true,
        default_bindings_module: "paynotify_plugin_sdk::refund_bindings",
        with: {
            "paynotify:plugin/types@0.1.0": paynotify_plugin_sdk::bindings::paynotify::plugin::types,
            "paynotify:plugin/db@0.1.0": paynotify_plugin_sdk::bindings::paynotify::plugin::db,
            "paynotify:plugin/log@0.1.0": paynotify_plugin_sdk::bindings::paynotify::plugin::log,
            "paynotify:plugin/http@0.1.0": paynotify_plugin_sdk::bindings::paynotify::plugin::http,
            "paynotify:plugin/crypto@0.1.0": paynotify_plugin_sdk::bindings::paynotify::plugin::crypto,
            "paynotify:plugin/tasks@0.1.0": paynotify_plugin_sdk::bindings::paynotify::plugin::tasks,
            "paynotify:plugin/config@0.1.0": paynotify_plugin_sdk::bindings::paynotify::plugin::config,
        },
    });
}

pub mod config;
pub mod crypto;
pub mod db;
mod error;
pub mod http;
pub mod log;
mod refunds;
pub mod tasks;
mod types;

pub use error::Error;
pub use refunds::{Refund, RefundHandler};
pub use types::{Notification, Order, Outcome, Task};

/// `serde_json`, re-exported so handlers can use the exact version the SDK speaks.
pub use serde_json;

/// Version of the `paynotify:plugin` WIT package this SDK was built against. Reported to the
/// host by the `metadata` export; the host refuses a handler built against a version it
/// does not speak.
pub const WORLD_VERSION: &str = "0.1.0";

/// A paynotify business handler: what runs when an order of one `type` is paid.
///
/// Implement it on a unit struct and export it with [`export_handler!`].
pub trait Handler {
    /// The order `type` this handler serves. Must equal the file name the host loads it from
    /// (`recharge` for `recharge.wasm`); the host rejects a mismatch at load time.
    const NAME: &'static str;

    /// The handler's own version, shown to ops. Empty (the default) means the `version` in
    /// the handler crate's `Cargo.toml`, which [`export_handler!`] fills in.
    const VERSION: &'static str = "";

    /// Called once, inside the payment transaction, when `order` becomes paid by
    /// `notification`.
    ///
    /// `Ok` commits the payment together with every [`db`] write and [`tasks::enqueue`] made
    /// here, and stores the [`Outcome`] as the order's `handler_result`. `Err` rolls all of
    /// it back; the order stays unpaid and the provider retries later.
    ///
    /// [`http`] is refused here (`http-denied`) unless the manifest sets
    /// `http_in_payment = true`: enqueue a task and call out from [`Handler::run_task`].
    fn handle_paid(order: Order, notification: Notification) -> Result<Outcome, Error>;

    /// Runs a task this handler queued with [`tasks::enqueue`], after the payment committed.
    /// `Err` makes the host retry it later with backoff (see [`Task::attempt`]).
    ///
    /// The default rejects every task with the error `unknown task <name>`.
    fn run_task(task: Task) -> Result<(), Error> {
        Err(Error::new(
            "unknown-task",
            format!("unknown task {}", task.name),
        ))
    }
}

/// Exports a [`Handler`] as the component's `metadata`, `handle-paid` and `run-task`.
///
/// Use it exactly once per handler crate, at the crate root:
///
/// ```
/// # use paynotify_plugin_sdk::{Error, Handler, Notification, Order, Outcome};
/// struct Goods;
///
/// impl Handler for Goods {
///     const NAME: &'static str = "goods";
///     fn handle_paid(_order: Order, _n: Notification) -> Result<Outcome, Error> {
///         Ok(Outcome::none())
///     }
/// }
///
/// paynotify_plugin_sdk::export_handler!(Goods);
/// ```
///
/// A handler that also handles refunds ([`RefundHandler`]) is exported with `refunds`
/// after its type: `export_handler!(Recharge, refunds)`. The component then also exports
/// `handle-refunded` (world `handler-with-refunds`).
///
/// The `metadata` export reports [`Handler::NAME`], [`Handler::VERSION`] (or the calling
/// crate's `CARGO_PKG_VERSION`) and [`WORLD_VERSION`].
#[macro_export]
#[rustfmt::skip] // rustfmt re-indents `export!(.. with_types_in ..)` differently on every run
macro_rules! export_handler {
    ($handler:ty, refunds) => {
        const _: () = {
            struct __PaynotifyExport;

            impl $crate::refund_bindings::Guest for __PaynotifyExport {
                fn metadata() -> $crate::bindings::Metadata {
                    $crate::__private::metadata::<$handler>(::core::env!("CARGO_PKG_VERSION"))
                }

                fn handle_paid(
                    order: $crate::bindings::Order,
                    notification: $crate::bindings::Notification,
                ) -> ::core::result::Result<$crate::bindings::Outcome, $crate::bindings::Error>
                {
                    $crate::__private::handle_paid::<$handler>(order, notification)
                }

                fn run_task(
                    task: $crate::bindings::Task,
                ) -> ::core::result::Result<(), $crate::bindings::Error> {
                    $crate::__private::run_task::<$handler>(task)
                }
            }

            impl $crate::refund_bindings::exports::paynotify::plugin::refunds::Guest for __PaynotifyExport {
                fn handle_refunded(
                    order: $crate::bindings::Order,
                    refund: $crate::refund_bindings::exports::paynotify::plugin::refunds::Refund,
                ) -> ::core::result::Result<$crate::bindings::Outcome, $crate::bindings::Error>
                {
                    $crate::__private::handle_refunded::<$handler>(order, refund)
                }
            }

            $crate::refund_bindings::export!(__PaynotifyExport with_types_in $crate::refund_bindings);
        };
    };
    ($handler:ty) => {
        const _: () = {
            struct __PaynotifyExport;

            impl $crate::bindings::Guest for __PaynotifyExport {
                fn metadata() -> $crate::bindings::Metadata {
                    $crate::__private::metadata::<$handler>(::core::env!("CARGO_PKG_VERSION"))
                }

                fn handle_paid(
                    order: $crate::bindings::Order,
                    notification: $crate::bindings::Notification,
                ) -> ::core::result::Result<$crate::bindings::Outcome, $crate::bindings::Error>
                {
                    $crate::__private::handle_paid::<$handler>(order, notification)
                }

                fn run_task(
                    task: $crate::bindings::Task,
                ) -> ::core::result::Result<(), $crate::bindings::Error> {
                    $crate::__private::run_task::<$handler>(task)
                }
            }

            $crate::bindings::export!(__PaynotifyExport with_types_in $crate::bindings);
        };
    };
}

/// Glue called by [`export_handler!`]; not public API.
#[doc(hidden)]
pub mod __private {
    use crate::{
        bindings, refund_bindings, Error, Handler, Notification, Order, Outcome, Refund,
        RefundHandler, Task, WORLD_VERSION,
    };

    /// Builds the `metadata` record for `H`.
    pub fn metadata<H: Handler>(crate_version: &str) -> bindings::Metadata {
        let version = if H::VERSION.is_empty() {
            crate_version
        } else {
            H::VERSION
        };
        bindings::Metadata {
            name: H::NAME.to_string(),
            version: version.to_string(),
            world_version: WORLD_VERSION.to_string(),
        }
    }

    /// Runs `H::handle_paid` on the raw records.
    pub fn handle_paid<H: Handler>(
        order: bindings::Order,
        notification: bindings::Notification,
    ) -> Result<bindings::Outcome, bindings::Error> {
        install_panic_hook();
        H::handle_paid(Order::from(order), Notification::from(notification))
            .map(Outcome::into_raw)
            .map_err(Error::into_raw)
    }

    /// Runs `H::handle_refunded` on the raw records.
    pub fn handle_refunded<H: RefundHandler>(
        order: bindings::Order,
        refund: refund_bindings::exports::paynotify::plugin::refunds::Refund,
    ) -> Result<bindings::Outcome, bindings::Error> {
        install_panic_hook();
        H::handle_refunded(Order::from(order), Refund::from(refund))
            .map(Outcome::into_raw)
            .map_err(Error::into_raw)
    }

    /// Runs `H::run_task` on the raw record.
    pub fn run_task<H: Handler>(task: bindings::Task) -> Result<(), bindings::Error> {
        install_panic_hook();
        H::run_task(Task::from(task)).map_err(Error::into_raw)
    }

    /// Sends panic messages to the host's log before the component traps (there is no stderr
    /// worth reading in a handler).
    fn install_panic_hook() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            std::panic::set_hook(Box::new(|info| {
                crate::log::with(
                    crate::log::Level::Error,
                    format!("handler panicked: {info}"),
                    &[("panic", "true")],
                );
            }));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn world_version_matches_the_wit_package() {
        let wit = include_str!("../../wit/plugin.wit");
        let expected = format!("package paynotify:plugin@{WORLD_VERSION};");
        assert!(
            wit.lines().any(|line| line.trim() == expected),
            "wit/plugin.wit does not declare `{expected}`: update WORLD_VERSION"
        );
    }

    struct Versioned;
    impl Handler for Versioned {
        const NAME: &'static str = "versioned";
        const VERSION: &'static str = "9.9.9";
        fn handle_paid(_: Order, _: Notification) -> Result<Outcome, Error> {
            Ok(Outcome::none())
        }
    }

    struct Unversioned;
    impl Handler for Unversioned {
        const NAME: &'static str = "unversioned";
        fn handle_paid(_: Order, _: Notification) -> Result<Outcome, Error> {
            Ok(Outcome::none())
        }
    }

    #[test]
    fn metadata_fills_world_version_and_crate_version() {
        let m = __private::metadata::<Unversioned>("1.2.3");
        assert_eq!(m.name, "unversioned");
        assert_eq!(m.version, "1.2.3");
        assert_eq!(m.world_version, WORLD_VERSION);
        let m = __private::metadata::<Versioned>("1.2.3");
        assert_eq!(m.version, "9.9.9");
    }

    #[test]
    fn default_run_task_names_the_task() {
        let task = Task {
            id: 7,
            name: "frobnicate".into(),
            payload: "{}".into(),
            attempt: 1,
            out_trade_no: None,
        };
        let err = Unversioned::run_task(task).unwrap_err();
        assert_eq!(err.code(), "unknown-task");
        assert_eq!(err.message(), "unknown task frobnicate");
    }
}

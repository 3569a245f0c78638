//! `paynotify:plugin@0.1.0`: worlds `handler` and `handler-with-refunds` (`wit/plugin.wit`).
//!
//! The wasmtime bindings generated from the WIT, the exports as [`Export`] values, and the
//! conversions between the world's records and the host's types. The capabilities
//! implement this version's import traits (`bindings::paynotify::plugin::*::Host`).

use std::future::Future;

use wasmtime::component::{Component, InstancePre};
use wasmtime::{Engine, Store};

use super::{Call, Export, HandlerFailure, Instantiate, LoadError, Made, Metadata};

/// The version of the WIT package, as the components built against it import it.
pub const VERSION: &str = "0.1.0";

/// The exports of the `handler` world.
pub const EXPORTS: &[&str] = &["metadata", "handle-paid", "run-task"];

/// Interfaces of `paynotify:plugin` a handler may import.
pub const INTERFACES: &[&str] = &["types", "db", "log", "http", "crypto", "tasks", "config"];

/// The optional interface world `handler-with-refunds` adds, without its version.
const REFUNDS_INTERFACE: &str = "paynotify:plugin/refunds";

/// Host bindings of world `handler`.
// Generated from wit/plugin.wit, where every item is documented.
#[allow(missing_docs)]
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "handler",
        imports: { default: async },
        exports: { default: async },
    });
}

/// Host bindings of world `handler-with-refunds`: the `handler` world plus the optional
/// `refunds` export. Its imports are [`bindings`]' own, so one linker serves both.
#[allow(missing_docs)]
pub mod refund_bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "handler-with-refunds",
        imports: { default: async },
        exports: { default: async },
        with: {
            "paynotify:plugin/types": crate::plugins::world::since_v0_1::bindings::paynotify::plugin::types,
            "paynotify:plugin/db": crate::plugins::world::since_v0_1::bindings::paynotify::plugin::db,
            "paynotify:plugin/log": crate::plugins::world::since_v0_1::bindings::paynotify::plugin::log,
            "paynotify:plugin/http": crate::plugins::world::since_v0_1::bindings::paynotify::plugin::http,
            "paynotify:plugin/crypto": crate::plugins::world::since_v0_1::bindings::paynotify::plugin::crypto,
            "paynotify:plugin/tasks": crate::plugins::world::since_v0_1::bindings::paynotify::plugin::tasks,
            "paynotify:plugin/config": crate::plugins::world::since_v0_1::bindings::paynotify::plugin::config,
        },
    });

    /// What `handle-refunded` is given about the refund.
    pub use exports::paynotify::plugin::refunds::Refund;
}

use bindings::paynotify::plugin::types;
use bindings::{Handler, HandlerPre};
use refund_bindings::{HandlerWithRefunds, HandlerWithRefundsPre};

/// A component linked against this version's worlds, ready to instantiate.
pub struct Pre<T: 'static> {
    /// Seen through world `handler`.
    pub handler: HandlerPre<T>,
    /// Seen through world `handler-with-refunds`, when it exports `refunds`.
    pub refunds: Option<HandlerWithRefundsPre<T>>,
}

impl<T: Send + 'static> Pre<T> {
    /// Checks that `pre` (the component linked by the runtime) has the exports of world
    /// `handler`, and of `handler-with-refunds` if it exports `refunds`; a component
    /// without `refunds` is a plain `handler`, and still loads.
    pub fn new(
        engine: &Engine,
        component: &Component,
        pre: InstancePre<T>,
    ) -> Result<Self, LoadError> {
        let handler = HandlerPre::new(pre).map_err(|e| LoadError::Exports(format!("{e:#}")))?;
        let export = format!("{REFUNDS_INTERFACE}@{VERSION}");
        let exported = component
            .component_type()
            .exports(engine)
            .any(|(name, _)| name == export);
        let refunds = if exported {
            let pre = HandlerWithRefundsPre::new(handler.instance_pre().clone())
                .map_err(|e| LoadError::Exports(format!("its `{export}` export: {e:#}")))?;
            Some(pre)
        } else {
            None
        };
        Ok(Pre { handler, refunds })
    }
}

impl<T: Send + 'static> Instantiate<T> for HandlerPre<T> {
    type Instance = Handler;
    fn instantiate(&self, store: &mut Store<T>) -> impl Future<Output = Made<Handler>> + Send {
        HandlerPre::instantiate_async(self, store)
    }
}

impl<T: Send + 'static> Instantiate<T> for HandlerWithRefundsPre<T> {
    type Instance = HandlerWithRefunds;
    fn instantiate(
        &self,
        store: &mut Store<T>,
    ) -> impl Future<Output = Made<HandlerWithRefunds>> + Send {
        HandlerWithRefundsPre::instantiate_async(self, store)
    }
}

impl From<types::Error> for HandlerFailure {
    fn from(e: types::Error) -> Self {
        HandlerFailure::Error {
            code: e.code,
            message: e.message,
        }
    }
}

impl From<types::Metadata> for Metadata {
    fn from(m: types::Metadata) -> Self {
        Metadata {
            name: m.name,
            version: m.version,
            world_version: m.world_version,
        }
    }
}

/// What `handle-paid` and `handle-refunded` answer, in the host's terms. The outcome text
/// as JSON: empty is null; text that is not JSON is kept as a JSON string rather than
/// failing a payment that succeeded.
fn settled(
    answer: Result<types::Outcome, types::Error>,
) -> Result<serde_json::Value, HandlerFailure> {
    let text = answer?.result;
    if text.trim().is_empty() {
        return Ok(serde_json::Value::Null);
    }
    Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

/// Export `metadata`, called once at load.
pub struct GetMetadata;

impl<T: Send + 'static> Export<T, Handler> for GetMetadata {
    type Output = Metadata;
    const NAME: &'static str = "metadata";
    fn call<'a>(self, handler: &'a Handler, store: &'a mut Store<T>) -> Call<'a, Metadata> {
        Box::pin(async move { Ok(Ok(handler.call_metadata(store).await?.into())) })
    }
}

/// Export `handle-paid` with the order and the notification that paid it, inside the
/// payment transaction.
pub struct HandlePaid(pub types::Order, pub types::Notification);

impl<T: Send + 'static> Export<T, Handler> for HandlePaid {
    type Output = serde_json::Value;
    const NAME: &'static str = "handle_paid";
    fn call<'a>(self, handler: &'a Handler, store: &'a mut Store<T>) -> Call<'a, Self::Output> {
        let (order, notification) = (self.0, self.1);
        Box::pin(async move {
            let answer = handler.call_handle_paid(store, &order, &notification);
            Ok(settled(answer.await?))
        })
    }
}

/// Export `run-task`, after the payment committed.
pub struct RunTask(pub types::Task);

impl<T: Send + 'static> Export<T, Handler> for RunTask {
    type Output = ();
    const NAME: &'static str = "run_task";
    fn call<'a>(self, handler: &'a Handler, store: &'a mut Store<T>) -> Call<'a, ()> {
        Box::pin(async move {
            let answer = handler.call_run_task(store, &self.0).await?;
            Ok(answer.map_err(HandlerFailure::from))
        })
    }
}

/// Export `handle-refunded` of world `handler-with-refunds` with the order and the
/// refund, inside the refund transaction.
pub struct HandleRefunded(pub types::Order, pub refund_bindings::Refund);

impl<T: Send + 'static> Export<T, HandlerWithRefunds> for HandleRefunded {
    type Output = serde_json::Value;
    const NAME: &'static str = "handle_refunded";
    fn call<'a>(
        self,
        world: &'a HandlerWithRefunds,
        store: &'a mut Store<T>,
    ) -> Call<'a, Self::Output> {
        let refunds = world.paynotify_plugin_refunds();
        Box::pin(async move {
            Ok(settled(
                refunds
                    .call_handle_refunded(store, &self.0, &self.1)
                    .await?,
            ))
        })
    }
}

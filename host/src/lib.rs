//! paynotify: the host payment providers call when an order is paid. It verifies the
//! call, marks the order paid exactly once and runs that order type's WebAssembly handler.
//!
//! # Layout
//!
//! One paid notification passes through these modules, in this order (SPEC §5):
//!
//! 1. [`http`] (`http/notify.rs`): `POST /notify/{provider}[/{account}]`; unknown names answered 404
//!    unread, the body read up to its limit, the pipeline spawned under a deadline.
//! 2. [`pipeline`]: [`pipeline::Pipeline::receive`] stores the notification as received
//!    (`pipeline/raw.rs`, group commit in `pipeline/batch.rs`), checks its content type
//!    and verifies it with its provider.
//! 3. [`providers`]: the [`providers::Provider`] trait; one folder per provider parses,
//!    verifies and answers (`wechat_v2/`, `wechat_v3/`, `alipay/`, `cloudpay/`), its
//!    `api.rs` half queries and closes orders; [`providers::registry`] builds both.
//! 4. `pipeline/settle.rs`: in one transaction, lock the order, check amount and
//!    account, mark it paid only if unpaid, record the verdict; `pipeline/pay.rs` runs the
//!    handler inside that transaction; `pipeline/refund.rs` is the refund path.
//! 5. [`plugins`]: the registry of loaded handlers (hot reload in `watch.rs`; a handler's
//!    files read once in `files.rs`, their signatures checked against [`signers`], every load
//!    recorded in `history.rs`), the wasmtime runtime and its limits, the authenticated
//!    compile cache (`cache.rs`), the capabilities a handler may import (one module each
//!    under `capabilities/`), and the WIT worlds it may be built against (`world/`).
//! 6. [`store`]: the [`store::Store`] and [`store::Tx`] traits, with `sqlite/` and
//!    `postgres/` behind them; statements are text plus parameters beside their row mapping.
//!
//! Around that path: [`app`] wires the parts from the [`config`]; [`tasks`] runs the
//! handlers' outbox after commit; [`orders`] creates orders; [`payments`] places them, refunds and closes them at the provider; [`replay`], [`reconcile`],
//! [`expiry`], [`stuck`] and [`retention`] are the ops entry points and background jobs;
//! [`metrics`] and [`logging`] are what ops see; [`time`](mod@crate::time) and [`names`] are the small
//! shared rules; [`signers`] reads `allowed_signers` and checks handler signatures. The command line (`cli/`) belongs to the binary, not to this library.

#![deny(missing_docs)]

pub mod app;
pub mod config;
pub mod expiry;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod names;
pub mod orders;
pub mod payments;
pub mod pipeline;
pub mod plugins;
pub mod providers;
pub mod reconcile;
pub mod replay;
pub mod retention;
pub mod shadow;
pub mod signers;
pub mod store;
pub mod stuck;
pub mod tasks;
pub mod time;

pub use app::App;
pub use config::Config;

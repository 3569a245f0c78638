//! paynotify: the host payment providers call when an order is paid.
//!
//! Reading order for newcomers: [`http`] (routes) → [`pipeline`] (the one transaction)
//! → [`providers`] (parse + verify + answer) → [`store`] (SQLite / PostgreSQL) →
//! [`plugins`] (registry, runtime + limits, capabilities).

pub mod app;
pub mod config;
pub mod expiry;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod names;
pub mod orders;
pub mod pipeline;
pub mod plugins;
pub mod providers;
pub mod reconcile;
pub mod replay;
pub mod retention;
pub mod store;
pub mod stuck;
pub mod tasks;
pub mod time;

pub use app::App;
pub use config::Config;

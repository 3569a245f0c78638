//! The host side of the WIT imports, one module per capability: [`db`], [`tasks`],
//! [`http`], [`crypto`], [`log`], [`config`].
//!
//! Each capability takes the same three steps, after Spin's factors:
//!
//! | step | when | what |
//! | --- | --- | --- |
//! | configure | once, when a plugin loads | [`Capability::configure`]: checks the manifest keys it reads |
//! | prepare | per call | its part of the [`CallContext`], set through one [`CallBuilder`] |
//! | link | once, when the runtime starts | [`Capability::link`]: adds its WIT interface to the linker |
//!
//! Every call is checked against the plugin's manifest. A denied or malformed call is an
//! error value handed back to the handler, never a trap of the host. A failure of the
//! database itself also poisons the call ([`CallContext::poison`]): the transaction may be
//! unusable, so the handler's result is not trusted even if it returns `Ok`.

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use super::manifest::Manifest;
use super::world::since_v0_1::bindings::paynotify::plugin::types;
use crate::store::audit::{CallRef, CallWrites, Write};
use crate::store::{Store, StoreError, Tx};
pub use overlay::Overlay;
pub use record::Recording;

pub mod config;
pub mod crypto;
pub mod db;
pub mod http;
pub mod log;
pub mod overlay;
pub mod record;
pub mod tasks;

/// How the runtime reaches a call's context in its store's data.
pub type Getter<T> = fn(&mut T) -> &mut CallContext;

/// The steps every capability takes (see the table above); the prepare step is its
/// part of [`CallBuilder`].
pub trait Capability {
    /// Once per plugin load: checks the manifest keys this capability reads. An error
    /// fails the load and names the key.
    fn configure(_manifest: &Manifest) -> Result<(), String> {
        Ok(())
    }

    /// Once per runtime: adds the capability's interface to `linker`, its calls reaching
    /// the context through `get`.
    fn link<T: Send + 'static>(linker: &mut Linker<T>, get: Getter<T>) -> wasmtime::Result<()>;
}

/// Step 1 of every capability, for one manifest.
pub fn configure(manifest: &Manifest) -> Result<(), String> {
    db::Db::configure(manifest)?;
    tasks::Tasks::configure(manifest)?;
    http::Http::configure(manifest)?;
    crypto::Crypto::configure(manifest)?;
    log::Log::configure(manifest)?;
    config::Config::configure(manifest)
}

/// Step 3 of every capability: the `paynotify:plugin` imports, on `linker`.
pub fn link<T: Send + 'static>(linker: &mut Linker<T>, get: Getter<T>) -> wasmtime::Result<()> {
    types::add_to_linker::<T, HasSelf<CallContext>>(linker, get)?;
    db::Db::link(linker, get)?;
    tasks::Tasks::link(linker, get)?;
    http::Http::link(linker, get)?;
    crypto::Crypto::link(linker, get)?;
    log::Log::link(linker, get)?;
    config::Config::link(linker, get)
}

impl Manifest {
    /// Checks the manifest: step 1 of every capability. Written here so that the
    /// manifest, which the capabilities read, does not depend on them in turn.
    pub(crate) fn check(&self) -> Result<(), String> {
        configure(self)
    }
}

impl types::Host for CallContext {}

/// Who is calling: the plugin and, when there is one, the order and notification.
#[derive(Debug, Clone)]
pub struct CallTags {
    /// Plugin type.
    pub plugin: String,
    /// The plugin's own version string.
    pub version: String,
    /// The order being handled.
    pub out_trade_no: Option<String>,
    /// The notification being handled.
    pub notification_id: Option<i64>,
    /// The task being run.
    pub task_id: Option<i64>,
}

impl CallTags {
    /// Tags naming only the plugin type.
    pub fn plugin(plugin: &str) -> CallTags {
        CallTags {
            plugin: plugin.to_owned(),
            version: String::new(),
            out_trade_no: None,
            notification_id: None,
            task_id: None,
        }
    }
}

/// Where a call's `db` and `tasks` operations go.
pub enum DbAccess {
    /// Into the payment transaction: they commit with the payment or not at all.
    Tx(Box<dyn Tx>),
    /// Each operation in a short transaction of its own. Used by `run-task`, which runs
    /// after the payment and may wait on HTTP: holding a transaction (on SQLite, the
    /// database write lock) across that would stall every notification.
    Autocommit(Arc<dyn Store>),
    /// A shadow run's view: reads as the serving build saw the documents, writes kept
    /// in memory and never applied.
    Shadow(Box<Overlay>),
    /// No database (the `metadata` call at load).
    None,
}

impl DbAccess {
    /// The payment transaction, if that is what this is.
    pub fn into_tx(self) -> Option<Box<dyn Tx>> {
        match self {
            DbAccess::Tx(tx) => Some(tx),
            _ => None,
        }
    }
}

/// A host-side failure under a handler call.
#[derive(Debug, Clone)]
pub struct Poison {
    /// What failed.
    pub message: String,
    /// The database asked for the transaction to be retried (deadlock, serialization).
    pub transient: bool,
}

/// Everything one handler call may touch; moved into the wasmtime `Store` for the call
/// and taken back afterwards.
pub struct CallContext {
    /// Grants.
    pub manifest: Arc<Manifest>,
    /// Log tags.
    pub tags: CallTags,
    /// Where `db` and `tasks` operations go.
    pub db: DbAccess,
    /// The merchant account's notify key, for `crypto`.
    pub notify_key: Option<[u8; 32]>,
    /// The order's provider, stored on enqueued tasks.
    pub provider: Option<String>,
    /// The account name, stored on enqueued tasks.
    pub account: Option<String>,
    /// Shared outbound HTTP client.
    pub http: reqwest::Client,
    /// Set when a host-side failure makes the call's result untrustworthy.
    pub poisoned: Option<Poison>,
    /// What the call read and wrote, when it records (write audit, shadow runs).
    pub record: Option<Recording>,
    /// The call whose writes are recorded in each operation's own transaction (a task
    /// run's audit); a payment's or refund's are written by the pipeline instead.
    pub audit_each: Option<CallRef>,
}

impl CallContext {
    /// A context with no transaction and no account (used to call `metadata`).
    pub fn detached(manifest: Arc<Manifest>, tags: CallTags, http: reqwest::Client) -> Self {
        CallContext {
            manifest,
            tags,
            db: DbAccess::None,
            notify_key: None,
            provider: None,
            account: None,
            http,
            poisoned: None,
            record: None,
            audit_each: None,
        }
    }

    /// A fresh document id for `db.insert` without one: in a shadow run the serving
    /// build's id at the same place, so both builds' inserts compare.
    fn generate_id(&mut self) -> String {
        let reused = match &mut self.db {
            DbAccess::Shadow(view) => view.next_generated_id(),
            _ => None,
        };
        let id = reused.unwrap_or_else(|| hex::encode(rand::random::<[u8; 12]>()));
        if let Some(r) = &mut self.record {
            r.generated_ids.push(id.clone());
        }
        id
    }

    /// The call and `seq` of the next write, when writes are recorded per operation.
    fn audit_each_row(&self) -> Option<(CallRef, i64)> {
        let seq = self.record.as_ref().map_or(0, |r| r.writes.len());
        self.audit_each
            .clone()
            .map(|call| (call, i64::try_from(seq).unwrap_or(i64::MAX)))
    }

    /// Keeps a write in the call's recording.
    fn recorded(&mut self, write: Option<Write>) {
        if let (Some(r), Some(w)) = (&mut self.record, write) {
            r.push(w);
        }
    }

    /// Marks the call failed whatever the handler returns.
    pub fn poison(&mut self, why: String) {
        tracing::error!(plugin = %self.tags.plugin, error = %why, "host capability failed; call will fail");
        self.poisoned.get_or_insert(Poison {
            message: why,
            transient: false,
        });
    }

    /// Marks the call failed because of `e`; a transient database failure (deadlock,
    /// serialization) makes the whole transaction worth running again.
    fn poison_store(&mut self, e: &StoreError) {
        if e.is_transient() {
            tracing::warn!(plugin = %self.tags.plugin, error = %e, "transient database failure; the transaction will be retried");
            self.poisoned.get_or_insert(Poison {
                message: e.to_string(),
                transient: true,
            });
        } else {
            self.poison(e.to_string());
        }
    }

    /// The transaction for one operation: the payment's, or a fresh one in autocommit
    /// mode (ended by `OpTx::end`).
    async fn op_tx(&mut self) -> Result<OpTx<'_>, StoreError> {
        match &mut self.db {
            DbAccess::Tx(tx) => Ok(OpTx::Shared(tx.as_mut())),
            DbAccess::Autocommit(store) => Ok(OpTx::Own(store.begin().await?)),
            // A shadow run's operations go to its view before they get here.
            DbAccess::Shadow(_) | DbAccess::None => Err(StoreError::Invalid(
                "no database is available to this call".into(),
            )),
        }
    }
}

/// The transaction one `db`/`tasks` operation runs in.
enum OpTx<'a> {
    /// The call's shared transaction.
    Shared(&'a mut dyn Tx),
    /// A transaction of this operation's own, committed when it succeeds.
    Own(Box<dyn Tx>),
}

impl OpTx<'_> {
    fn tx(&mut self) -> &mut dyn Tx {
        match self {
            OpTx::Shared(t) => &mut **t,
            OpTx::Own(t) => t.as_mut(),
        }
    }

    /// Commits an own transaction if the operation succeeded (dropping rolls back).
    async fn end<T, E: From<StoreError>>(self, r: Result<T, E>) -> Result<T, E> {
        match (self, r) {
            (OpTx::Own(t), Ok(v)) => {
                t.commit().await?;
                Ok(v)
            }
            (_, r) => r,
        }
    }

    /// [`OpTx::end`] for a write: in an own transaction, its audit row (`each`: the call
    /// and the write's `seq`) is recorded in that transaction before it commits.
    async fn end_write<T>(
        self,
        r: Result<(T, Option<Write>), crate::store::DocError>,
        each: Option<(CallRef, i64)>,
    ) -> Result<(T, Option<Write>), crate::store::DocError> {
        match (self, r, each) {
            (OpTx::Own(mut t), Ok((value, Some(write))), Some((call, seq))) => {
                let row = CallWrites {
                    call,
                    writes: vec![write],
                    first_seq: seq,
                };
                t.record_writes(std::slice::from_ref(&row)).await?;
                t.commit().await?;
                Ok((value, row.writes.into_iter().next()))
            }
            (op, r, _) => op.end(r).await,
        }
    }
}

/// Step 2 of every capability: the context of one call, each capability's part set by
/// its own method. Start one with [`CallContext::builder`] (or the registry's and the
/// runtime's `call_context`).
pub struct CallBuilder {
    ctx: CallContext,
}

impl CallContext {
    /// A call of `plugin`'s handler (`version` names its build) with these grants, going
    /// out through `http`; no order, no account, no database until the builder sets them.
    pub fn builder(
        manifest: Arc<Manifest>,
        plugin: &str,
        version: &str,
        http: reqwest::Client,
    ) -> CallBuilder {
        let tags = CallTags {
            version: version.to_owned(),
            ..CallTags::plugin(plugin)
        };
        CallBuilder {
            ctx: CallContext::detached(manifest, tags, http),
        }
    }
}

impl CallBuilder {
    /// The order the call is about (log tags; stored on enqueued tasks).
    pub fn order(mut self, out_trade_no: impl Into<Option<String>>) -> Self {
        self.ctx.tags.out_trade_no = out_trade_no.into();
        self
    }

    /// The notification the call handles (log tags).
    pub fn notification(mut self, id: i64) -> Self {
        self.ctx.tags.notification_id = Some(id);
        self
    }

    /// The task the call runs (log tags).
    pub fn task(mut self, id: i64) -> Self {
        self.ctx.tags.task_id = Some(id);
        self
    }

    /// The merchant account: its provider and name, stored on enqueued tasks (`tasks`),
    /// and its notify key, for the keyed operations (`crypto`).
    pub fn account(
        mut self,
        provider: impl Into<Option<String>>,
        account: impl Into<Option<String>>,
        notify_key: Option<[u8; 32]>,
    ) -> Self {
        self.ctx.provider = provider.into();
        self.ctx.account = account.into();
        self.ctx.notify_key = notify_key;
        self
    }

    /// Where `db` and `tasks` operations go; also tells `http` whether the call runs
    /// inside a payment.
    pub fn db(mut self, db: DbAccess) -> Self {
        self.ctx.db = db;
        self
    }

    /// Records what the call reads and writes ([`Recording`]).
    pub fn record(mut self, on: bool) -> Self {
        self.ctx.record = on.then(Recording::default);
        self
    }

    /// Records each write in its operation's own transaction, as `call`'s (task runs).
    pub fn audit_each(mut self, call: Option<CallRef>) -> Self {
        if call.is_some() {
            self.ctx.record.get_or_insert_with(Recording::default);
        }
        self.ctx.audit_each = call;
        self
    }

    /// Only the log tags, for an instance made ahead of its call (`Runtime::prepare`).
    pub fn into_tags(self) -> CallTags {
        self.ctx.tags
    }

    /// The context, ready for a call.
    pub fn build(self) -> CallContext {
        self.ctx
    }
}

//! `tasks`: work a handler enqueues for `run-task`, committed with the payment (or, from
//! `run-task`, in a short transaction of its own).
//!
//! Configure: nothing to check. Prepare: the order's provider and account, stored on the
//! task ([`CallBuilder::account`](super::CallBuilder::account)), and [`DbAccess`](super::DbAccess).
//! Link: interface `tasks`.

use wasmtime::component::{HasSelf, Linker};

use super::db::MAX_JSON_BYTES;
use super::{CallContext, Capability, DbAccess, Getter};
use crate::plugins::world::since_v0_1::bindings::paynotify::plugin::tasks as wit;
use crate::store::audit::{Write, WriteOp};
use crate::store::{DocError, NewTask, StoreError};

/// The `tasks` capability.
pub(super) struct Tasks;

impl Capability for Tasks {
    fn link<T: Send + 'static>(linker: &mut Linker<T>, get: Getter<T>) -> wasmtime::Result<()> {
        wit::add_to_linker::<T, HasSelf<CallContext>>(linker, get)
    }
}

impl wit::Host for CallContext {
    async fn enqueue(
        &mut self,
        name: String,
        payload: String,
        delay_secs: u32,
    ) -> Result<i64, String> {
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(format!("`{name}` is not a valid task name"));
        }
        if payload.len() > MAX_JSON_BYTES {
            return Err(format!("task payload is over {MAX_JSON_BYTES} bytes"));
        }
        if let Err(e) = serde_json::from_str::<serde_json::Value>(&payload) {
            return Err(format!("task payload is not JSON: {e}"));
        }
        let task = NewTask {
            plugin: self.tags.plugin.clone(),
            name,
            payload,
            out_trade_no: self.tags.out_trade_no.clone(),
            provider: self.provider.clone(),
            account: self.account.clone(),
            run_at: crate::time::now_ms() + i64::from(delay_secs) * 1000,
        };
        if let DbAccess::Shadow(view) = &mut self.db {
            return Ok(view.enqueue(&task.name, &task.payload));
        }
        let each = self.audit_each_row();
        let result = match self.op_tx().await {
            Ok(mut op) => {
                let r = op.tx().enqueue_task(&task).await.map(|id| {
                    let write = Write {
                        op: WriteOp::Task,
                        collection: task.name.clone(),
                        doc_id: id.to_string(),
                        before: None,
                        after: Some(task.payload.clone()),
                    };
                    (id, Some(write))
                });
                op.end_write(r.map_err(DocError::Store), each).await
            }
            Err(e) => Err(DocError::Store(e)),
        };
        match result {
            Ok((id, write)) => {
                self.recorded(write);
                Ok(id)
            }
            Err(e) => {
                let e = match e {
                    DocError::Store(e) => e,
                    other => StoreError::Invalid(other.to_string()),
                };
                self.poison_store(&e);
                Err(e.to_string())
            }
        }
    }
}

//! Step 1: every notification is stored as it was received, committed before anything
//! else is done with it, so nothing received is ever lost. Notifications arriving
//! together share one transaction and one commit ([`super::batch`]).

use std::sync::Arc;

use super::batch::{Job, Queue, Worker};
use crate::store::{NewNotification, Store};

/// The queue of notifications waiting to be stored; answers each with its stored id.
pub(super) type RawQueue = Queue<Arc<NewNotification>, i64>;

/// Starts the storing loop. One loop: its batches are already one commit each, and a
/// second would only compete for the same writer.
pub(super) fn spawn(store: Arc<dyn Store>, max: usize) -> RawQueue {
    Queue::spawn("storage", 1, max, RawWriter { store })
}

/// Stores batches of received notifications.
struct RawWriter {
    store: Arc<dyn Store>,
}

impl Worker<Arc<NewNotification>, i64> for RawWriter {
    /// One transaction, one commit. If the batch cannot be stored, each notification is
    /// tried alone, so one bad row does not refuse the others.
    async fn run(&self, jobs: Vec<Job<Arc<NewNotification>, i64>>) {
        let rows: Vec<&NewNotification> = jobs.iter().map(|j| j.item.as_ref()).collect();
        match self.store.insert_notifications(&rows).await {
            Ok(ids) => {
                for (job, id) in jobs.into_iter().zip(ids) {
                    job.reply.send(Ok(id));
                }
            }
            Err(e) if jobs.len() == 1 => {
                for job in jobs {
                    job.reply.send(Err(e.to_string()));
                }
            }
            Err(_) => {
                for job in jobs {
                    let r = self.store.insert_notifications(&[job.item.as_ref()]).await;
                    let id = r.map_err(|e| e.to_string()).and_then(|ids| {
                        ids.first()
                            .copied()
                            .ok_or_else(|| "no id stored".to_owned())
                    });
                    job.reply.send(id);
                }
            }
        }
    }
}

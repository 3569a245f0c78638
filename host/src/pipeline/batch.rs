//! Group commit: many callers hand work to a few loops, each of which takes everything
//! queued (up to a maximum) and does it as one batch, so one database commit — one fsync
//! on SQLite, one round of commit work on PostgreSQL — serves many notifications.
//!
//! No artificial delay is added: under light load a batch is one item and latency is a
//! single commit; under heavy load items queue while the previous batch commits, and the
//! next batch takes them all.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, Mutex};

/// Starts `loops` workers that call `run` on batches of at most `max` queued items, and
/// returns the queue's sender. The loops end when every sender is dropped.
pub fn spawn<J, F, Fut>(loops: usize, max: usize, run: F) -> mpsc::Sender<J>
where
    J: Send + 'static,
    F: Fn(Vec<J>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let max = max.max(1);
    let (tx, rx) = mpsc::channel::<J>(max * loops.max(1) * 4);
    let rx = Arc::new(Mutex::new(rx));
    let run = Arc::new(run);
    for _ in 0..loops.max(1) {
        let rx = rx.clone();
        let run = run.clone();
        tokio::spawn(async move {
            loop {
                let batch = {
                    let mut rx = rx.lock().await;
                    let Some(first) = rx.recv().await else { return };
                    let mut batch = Vec::with_capacity(max);
                    batch.push(first);
                    while batch.len() < max {
                        match rx.try_recv() {
                            Ok(j) => batch.push(j),
                            Err(_) => break,
                        }
                    }
                    batch
                };
                run(batch).await;
            }
        });
    }
    tx
}

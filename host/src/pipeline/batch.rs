//! Group commit: many callers hand work to a few loops, each of which takes everything
//! queued (up to a maximum) and does it as one batch, so one database commit — one fsync
//! on SQLite, one round of commit work on PostgreSQL — serves many notifications.
//!
//! No artificial delay is added: under light load a batch is one item and latency is a
//! single commit; under heavy load items queue while the previous batch commits, and the
//! next batch takes them all.
//!
//! The loops run a named [`Worker`] (not a closure), so reading from a caller to the
//! database goes `Queue::submit` → the worker's `run`.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Mutex};

/// One item of work, and where its result goes.
pub(super) struct Job<T, R> {
    /// What to do.
    pub item: T,
    /// Where the caller waits for the result.
    pub reply: Reply<R>,
}

/// Where one caller waits for the result of its job.
pub(super) struct Reply<R>(oneshot::Sender<Result<R, String>>);

impl<R> Reply<R> {
    /// Sends the result; a caller that stopped waiting (its request timed out) is fine.
    pub fn send(self, result: Result<R, String>) {
        let _ = self.0.send(result);
    }
}

/// What the loops of a [`Queue`] run on each batch. It answers every job of the batch.
pub(super) trait Worker<T, R>: Send + Sync + 'static {
    /// Does one batch of at most the queue's maximum jobs, and answers each.
    fn run(&self, jobs: Vec<Job<T, R>>) -> impl Future<Output = ()> + Send;
}

/// The sending end of a group-commit queue; its loops end when it is dropped.
pub(super) struct Queue<T, R> {
    jobs: mpsc::Sender<Job<T, R>>,
    /// Named in the error when the loops are gone.
    name: &'static str,
}

impl<T: Send + 'static, R: Send + 'static> Queue<T, R> {
    /// Starts `loops` loops running `worker` on batches of at most `max` queued jobs
    /// (needs a tokio runtime).
    pub fn spawn<W: Worker<T, R>>(name: &'static str, loops: usize, max: usize, worker: W) -> Self {
        let max = max.max(1);
        let loops = loops.max(1);
        let (jobs, rx) = mpsc::channel::<Job<T, R>>(max * loops * 4);
        let rx = Arc::new(Mutex::new(rx));
        let worker = Arc::new(worker);
        for _ in 0..loops {
            tokio::spawn(run_loop(rx.clone(), worker.clone(), max));
        }
        Queue { jobs, name }
    }

    /// Queues `item` and waits for its batch to be done.
    pub async fn submit(&self, item: T) -> Result<R, String> {
        let (reply, result) = oneshot::channel();
        let job = Job {
            item,
            reply: Reply(reply),
        };
        if self.jobs.send(job).await.is_err() {
            return Err(format!("{} loop stopped", self.name));
        }
        result
            .await
            .unwrap_or_else(|_| Err(format!("{} loop stopped", self.name)))
    }
}

/// One loop: take what is queued (at least one job, at most `max`), run it, repeat.
async fn run_loop<T, R, W: Worker<T, R>>(
    rx: Arc<Mutex<mpsc::Receiver<Job<T, R>>>>,
    worker: Arc<W>,
    max: usize,
) {
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
        worker.run(batch).await;
    }
}

//! The host-side backstop of a handler call: the time after which the host stops waiting
//! for a call whose host function never returns (epoch interruption only stops guest
//! code).
//!
//! This is not `tokio::time::timeout` on purpose. Every call would register a timer 9 s
//! out, and registering a timer earlier than the parked time driver's next wake-up
//! unparks a thread: on a 2-vCPU VM that is two context switches (~25–30 µs each) per
//! call, measured with the dispatch bench. The runtime's epoch thread already wakes every
//! 10 ms, so it also wakes the few calls whose backstop has passed; watching a call costs
//! one uncontended lock when it first waits and one when it ends.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::{Poll, Waker};
use std::time::Instant;

/// The calls being waited on, each with its backstop and the waker of its task.
#[derive(Default)]
pub(super) struct Watchdog {
    waiting: Mutex<HashMap<u64, (Instant, Waker)>>,
    next_id: AtomicU64,
}

/// The backstop passed before the call ended.
#[derive(Debug)]
pub(super) struct Elapsed;

impl Watchdog {
    /// Wakes every call whose backstop has passed; called by the epoch thread each tick.
    pub(super) fn tick(&self) {
        let now = Instant::now();
        let due: Vec<Waker> = self
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|(deadline, _)| *deadline <= now)
            .map(|(_, waker)| waker.clone())
            .collect();
        // Woken outside the lock: a waker may run code that watches another call.
        due.into_iter().for_each(Waker::wake);
    }

    /// Runs `f` until it finishes or `deadline` passes (then `f` is dropped, with
    /// whatever it owned).
    pub(super) async fn within<F: Future>(
        &self,
        deadline: Instant,
        f: F,
    ) -> Result<F::Output, Elapsed> {
        let mut f = std::pin::pin!(f);
        let mut watch = Watch {
            dog: self,
            id: None,
            waker: None,
        };
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = f.as_mut().poll(cx) {
                return Poll::Ready(Ok(out));
            }
            if Instant::now() >= deadline {
                return Poll::Ready(Err(Elapsed));
            }
            watch.wait(deadline, cx.waker());
            Poll::Pending
        })
        .await
    }
}

/// One call's entry in the watchdog, removed when the call ends either way.
struct Watch<'a> {
    dog: &'a Watchdog,
    id: Option<u64>,
    waker: Option<Waker>,
}

impl Watch<'_> {
    fn wait(&mut self, deadline: Instant, waker: &Waker) {
        if self.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            return;
        }
        let id = *self
            .id
            .get_or_insert_with(|| self.dog.next_id.fetch_add(1, Ordering::Relaxed));
        self.waker = Some(waker.clone());
        self.dog
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, (deadline, waker.clone()));
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.dog
                .waiting
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_call_that_ends_in_time_gives_its_output_and_leaves_no_entry() {
        let dog = Watchdog::default();
        let out = dog
            .within(Instant::now() + Duration::from_secs(5), async {
                tokio::task::yield_now().await;
                7
            })
            .await;
        assert_eq!(out.ok(), Some(7));
        assert!(dog.waiting.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_stuck_call_is_abandoned_once_a_tick_finds_its_backstop_passed() {
        let dog = std::sync::Arc::new(Watchdog::default());
        let ticker = {
            let dog = dog.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    dog.tick();
                }
            })
        };
        let started = Instant::now();
        let out = dog
            .within(
                Instant::now() + Duration::from_millis(30),
                std::future::pending::<()>(),
            )
            .await;
        ticker.abort();
        assert!(out.is_err(), "a call that never ends must be abandoned");
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert!(dog.waiting.lock().unwrap().is_empty());
    }
}

//! Fail fast for a type whose payment calls keep timing out.
//!
//! A handler that loops until its limit inside a payment holds the payment's locks the
//! whole time (on SQLite, the one writer every other payment waits for), and the
//! provider resends the notification again and again. After `breaker_timeouts` payment
//! calls of one type time out in a row, the type fails fast for `breaker_cooldown_secs`:
//! its payments get the failure answer without running the handler (the provider
//! retries them later, nothing is lost). After the cool-down one call is let through;
//! if it times out too, the type fails fast again at once, and any other outcome closes
//! the breaker. A reload of the type (a new build or manifest) starts a new breaker.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::world::HandlerFailure;
use crate::time::{now_ms, Millis};

/// One type's breaker.
#[derive(Debug)]
pub struct Breaker {
    trip_after: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Payment calls that timed out since the last one that did not.
    timeouts_in_a_row: u32,
    /// While failing fast: until when (monotonic, and wall-clock for ops).
    open_until: Option<(Instant, Millis)>,
}

/// What ops see of a breaker.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct BreakerStatus {
    /// Payment calls that timed out in a row.
    pub timeouts_in_a_row: u32,
    /// Failing fast until this time (unix ms), if it is now.
    pub failing_fast_until: Option<Millis>,
}

impl Breaker {
    /// A closed breaker that opens after `trip_after` timeouts in a row, for `cooldown`.
    pub fn new(trip_after: u32, cooldown: Duration) -> Breaker {
        Breaker {
            trip_after: trip_after.max(1),
            cooldown,
            state: Mutex::new(State::default()),
        }
    }

    /// Whether a payment call may run now; the failure to record otherwise. Once the
    /// cool-down is over, the call that asks first is let through as the trial, and
    /// the breaker stays open for the others for another cool-down, so a trial that
    /// is never reported (its batch failed before the call) cannot leave it stuck.
    pub fn admit(&self) -> Result<(), HandlerFailure> {
        let mut s = self.lock();
        let Some((until, until_ms)) = s.open_until else {
            return Ok(());
        };
        let now = Instant::now();
        if now < until {
            return Err(HandlerFailure::FailingFast {
                timeouts: s.timeouts_in_a_row,
                until: until_ms,
            });
        }
        s.open_until = Some(self.reopen_at(now));
        Ok(())
    }

    /// Records how a payment call ended; true if this made the breaker open.
    pub fn record<T>(&self, result: &Result<T, HandlerFailure>) -> bool {
        let mut s = self.lock();
        match result {
            Err(HandlerFailure::Timeout(_)) => {
                s.timeouts_in_a_row = s.timeouts_in_a_row.saturating_add(1);
                if s.timeouts_in_a_row >= self.trip_after {
                    let was_open = s.open_until.is_some();
                    s.open_until = Some(self.reopen_at(Instant::now()));
                    return !was_open;
                }
                false
            }
            // Not the handler's doing: says nothing about whether it loops.
            Err(HandlerFailure::Transient(_) | HandlerFailure::FailingFast { .. }) => false,
            _ => {
                *s = State::default();
                false
            }
        }
    }

    /// The breaker as ops see it now.
    pub fn status(&self) -> BreakerStatus {
        let s = self.lock();
        BreakerStatus {
            timeouts_in_a_row: s.timeouts_in_a_row,
            failing_fast_until: s
                .open_until
                .filter(|(until, _)| Instant::now() < *until)
                .map(|(_, ms)| ms),
        }
    }

    fn reopen_at(&self, now: Instant) -> (Instant, Millis) {
        let ms = i64::try_from(self.cooldown.as_millis()).unwrap_or(i64::MAX / 2);
        (now + self.cooldown, now_ms().saturating_add(ms))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is two integers, consistent after any panic mid-update.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout() -> Result<(), HandlerFailure> {
        Err(HandlerFailure::Timeout(Duration::from_millis(5)))
    }

    #[test]
    fn opens_after_the_timeouts_in_a_row_and_lets_one_trial_through_after_the_cooldown() {
        let b = Breaker::new(3, Duration::from_millis(50));
        assert!(!b.record(&timeout()));
        assert!(!b.record(&timeout()));
        assert!(b.admit().is_ok());
        assert!(b.record(&timeout()), "the third timeout in a row opens it");
        match b.admit() {
            Err(HandlerFailure::FailingFast { timeouts: 3, .. }) => {}
            other => panic!("expected failing fast, got {other:?}"),
        }
        assert!(b.status().failing_fast_until.is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.admit().is_ok(), "one trial after the cool-down");
        assert!(b.admit().is_err(), "only one");
        // The trial timed out too: open again at once (already open: no new trip).
        assert!(!b.record(&timeout()));
        assert!(b.admit().is_err());
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.admit().is_ok());
        assert!(!b.record::<()>(&Ok(())));
        assert_eq!(b.status(), BreakerStatus::default(), "a success closes it");
        assert!(b.admit().is_ok() && b.admit().is_ok());
    }

    #[test]
    fn any_other_outcome_breaks_the_run_of_timeouts_but_transient_ones_do_not() {
        let b = Breaker::new(3, Duration::from_secs(60));
        b.record(&timeout());
        b.record(&timeout());
        b.record::<()>(&Err(HandlerFailure::Transient("deadlock".into())));
        assert_eq!(b.status().timeouts_in_a_row, 2);
        b.record::<()>(&Err(HandlerFailure::Trap("unreachable".into())));
        assert_eq!(b.status().timeouts_in_a_row, 0);
        b.record(&timeout());
        b.record(&timeout());
        assert!(b.admit().is_ok());
    }
}

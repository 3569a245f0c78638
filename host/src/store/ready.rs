//! Readiness: whether the database can commit now, as `/readyz` asks it.
//!
//! A read proves little: a PostgreSQL in recovery or read-only, or an SQLite file on a
//! full disk, still answers reads while every payment fails. So the check writes: each
//! backend's [`crate::store::Store::ready`] upserts the one row of the `health` table
//! and commits, and on SQLite also writes a few pages of new data next to the database
//! file (see `SqliteStore`), because SQLite can commit a small change into space its WAL
//! already holds when the disk has none left.
//!
//! The answer is bounded and cached: [`READY_TIMEOUT`] caps one check (a frozen server
//! never answers), and a result is reused for [`FRESH`], with one check at a time, so a
//! load balancer's flood of probes costs the database at most one write a second.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use super::StoreError;

/// Longest one check may take; past it the database is reported as not committing.
pub const READY_TIMEOUT: Duration = Duration::from_millis(1500);

/// How long a check's result is reused.
pub const FRESH: Duration = Duration::from_secs(1);

/// The check's write, the same on both backends: `$1` is now, in unix ms.
pub(super) const UPSERT_HEALTH: &str = "INSERT INTO health (id, checked_at) VALUES (1, $1) \
     ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at";

/// The last check's result, shared by every caller of one store.
#[derive(Default)]
pub struct ReadyCache {
    last: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl ReadyCache {
    /// The result of a check made less than [`FRESH`] ago, else of `probe` run now (at
    /// most one at a time: callers arriving meanwhile wait for its result). `Err` says why
    /// the database cannot commit.
    pub async fn check<F, Fut>(&self, probe: F) -> Result<(), String>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), StoreError>>,
    {
        // Waiting here means another check is running: it ends within READY_TIMEOUT.
        let Ok(mut last) = tokio::time::timeout(READY_TIMEOUT, self.last.lock()).await else {
            return Err(timed_out());
        };
        if let Some((at, result)) = last.as_ref() {
            if at.elapsed() < FRESH {
                return result.clone();
            }
        }
        let result = match tokio::time::timeout(READY_TIMEOUT, probe()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(timed_out()),
        };
        *last = Some((Instant::now(), result.clone()));
        result
    }
}

fn timed_out() -> String {
    format!(
        "no commit within {} ms (the database is down, frozen, or too busy)",
        READY_TIMEOUT.as_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn results_are_reused_for_a_second_and_slow_checks_time_out() {
        let cache = ReadyCache::default();
        assert_eq!(cache.check(|| async { Ok(()) }).await, Ok(()));
        // Fresh: the failing probe is not run.
        assert_eq!(
            cache
                .check(|| async { Err(StoreError::Unavailable("down".into())) })
                .await,
            Ok(())
        );
        let cache = ReadyCache::default();
        let started = Instant::now();
        let r = cache
            .check(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(())
            })
            .await;
        assert!(r.is_err_and(|e| e.contains("no commit within")));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

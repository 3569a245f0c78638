//! Nothing left behind: notifications left `received` are processed again.
//!
//! A notification is stored as `received` before anything else, and its verdict is
//! written when processing ends. If processing never ends — the process was killed, the
//! database went away between the two writes, the verdict itself could not be written —
//! the row stays `received` for good: the provider's retry, if it retries at all, is a row
//! of its own. This job finds notifications `received` for longer than [`STUCK_AFTER_MS`]
//! and runs each through [`crate::replay::replay`], the path of an ops replay: verified
//! again from its stored bytes, then settled exactly once (an order paid meanwhile makes it
//! a `duplicate`; nothing runs twice).
//!
//! Every host process runs the job. Notifications are claimed with a lease
//! ([`crate::store::Store::claim_stuck`]: `FOR UPDATE SKIP LOCKED` on PostgreSQL, one
//! conditional statement on SQLite's single writer), so one is re-driven by one process at
//! a time; one whose re-drive could not record a verdict (the database failed again) is
//! claimed again when its lease ends. Should a lease end while its holder is still at work
//! (a frozen database), a second re-drive is still exactly once, for the reason above.
//!
//! The minute leaves the notification's own processing time to finish first: milliseconds
//! normally, and it goes on after its answer when that was sent at
//! `server.notify_timeout_secs`. Those that remain are listed by `paynotify notifications
//! list --stuck` and on the console's "Needs attention" page; each re-drive is counted in
//! `paynotify_notifications_redriven_total`.

use std::time::Duration;

use crate::app::App;
use crate::store::{NotificationRecord, StoreError, Verdict};
use crate::time::{now_ms, Millis};

/// A notification still `received` this long after it arrived is stuck (ms).
pub const STUCK_AFTER_MS: Millis = 60_000;

/// How often each process looks for stuck notifications.
const EVERY: Duration = Duration::from_secs(10);

/// The first look after start: soon, so a restarted host finishes what its predecessor
/// left, but after the start-up work.
const FIRST_AFTER: Duration = Duration::from_secs(2);

/// How long a claimed notification is left to its claimer before another may take it (ms).
const LEASE_MS: Millis = 60_000;

/// Most notifications claimed by one statement.
const BATCH: u32 = 50;

/// Batches in a row before the job waits for its next turn.
const MAX_BATCHES_PER_TICK: usize = 20;

/// The receive time before which a notification still `received` now is stuck.
pub fn stuck_before(now: Millis) -> Millis {
    now.saturating_sub(STUCK_AFTER_MS)
}

/// What re-driving one notification did.
#[derive(Debug, Clone)]
pub struct Redriven {
    /// The notification.
    pub id: i64,
    /// Where it ended up now.
    pub verdict: Verdict,
}

/// Claims the stuck notifications due now and re-drives them, oldest first; what each
/// reached.
pub async fn redrive_stuck(app: &App) -> Result<Vec<Redriven>, StoreError> {
    let mut done = Vec::new();
    for _ in 0..MAX_BATCHES_PER_TICK {
        let now = now_ms();
        let claimed = app
            .store
            .claim_stuck(stuck_before(now), now, now.saturating_add(LEASE_MS), BATCH)
            .await?;
        for record in &claimed {
            done.push(redrive(app, record).await);
        }
        if claimed.len() < BATCH as usize {
            break;
        }
    }
    Ok(done)
}

/// Re-drives one claimed notification.
async fn redrive(app: &App, record: &NotificationRecord) -> Redriven {
    let p = crate::replay::replay(app, record).await;
    crate::metrics::redriven(&record.provider, p.verdict.as_str());
    tracing::warn!(
        id = record.id,
        provider = %record.provider,
        age_secs = (now_ms() - record.received_at) / 1000,
        verdict = p.verdict.as_str(),
        reason = p.reason.as_deref().unwrap_or(""),
        "notification left `received` processed again"
    );
    Redriven {
        id: record.id,
        verdict: p.verdict,
    }
}

/// Starts the job in the background. Abort the handle (or drop the runtime) to stop it.
pub fn start(app: &App) -> tokio::task::JoinHandle<()> {
    let app = app.clone();
    tokio::spawn(async move {
        tokio::time::sleep(FIRST_AFTER).await;
        loop {
            if let Err(e) = redrive_stuck(&app).await {
                tracing::error!(
                    error = %e,
                    "cannot look for stuck notifications; trying again later"
                );
            }
            tokio::time::sleep(EVERY).await;
        }
    })
}

//! What shadow runs found, kept where every host adds to it: counts per type and
//! candidate build (summed in memory, written once a second) and the first
//! [`KEEP_DIFFERENCES`] differences and failures of each build, written as they happen.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Compared, Served};
use crate::plugins::Plugin;
use crate::store::shadow::{NewDifference, ShadowBuild, ShadowCounts};
use crate::store::Store;

/// Differences (and failures) kept per candidate build.
pub const KEEP_DIFFERENCES: u32 = 20;

/// How often counts are written.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Shadow run results on their way to the database.
pub struct Report {
    store: Arc<dyn Store>,
    /// Counts not written yet.
    pending: Mutex<HashMap<ShadowBuild, ShadowCounts>>,
    /// Builds whose kept differences are full: not asked again.
    full: Mutex<HashSet<ShadowBuild>>,
}

impl Report {
    /// A report writing to `store`, flushed every second in the background.
    pub fn start(store: Arc<dyn Store>) -> Arc<Report> {
        let report = Arc::new(Report {
            store,
            pending: Mutex::new(HashMap::new()),
            full: Mutex::new(HashSet::new()),
        });
        let flusher = Arc::downgrade(&report);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FLUSH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match flusher.upgrade() {
                    Some(report) => report.flush().await,
                    None => return,
                }
            }
        });
        report
    }

    /// Counts one shadow run, and keeps it if it differs or failed (while the build's
    /// kept differences are not full).
    pub async fn add(&self, candidate: &Plugin, served: &Served, compared: Compared) {
        let build = ShadowBuild {
            plugin_type: served.plugin_type.clone(),
            candidate_sha256: candidate.sha256.clone(),
            candidate_build: candidate.build_id(),
            serving_build: served.build.clone(),
        };
        crate::metrics::shadow_run(&served.plugin_type, compared.as_str());
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let counts = pending.entry(build.clone()).or_default();
            counts.runs += 1;
            match &compared {
                Compared::Same => counts.same += 1,
                Compared::Different(_) => counts.different += 1,
                Compared::Failed(_) => counts.failed += 1,
            }
        }
        let diff = match &compared {
            Compared::Same => return,
            Compared::Different(d) | Compared::Failed(d) => d,
        };
        if self.is_full(&build) {
            return;
        }
        let d = NewDifference {
            build: &build,
            out_trade_no: &served.out_trade_no,
            call: served.call.kind(),
            notification_id: Some(served.notification_id),
            out_refund_no: served.out_refund_no.as_deref(),
            result: compared.as_str(),
            diff,
        };
        match self
            .store
            .shadow()
            .add_shadow_difference(&d, KEEP_DIFFERENCES)
            .await
        {
            Ok(true) => tracing::info!(
                plugin = %served.plugin_type,
                candidate = %build.candidate_build,
                order = %served.out_trade_no,
                result = compared.as_str(),
                "shadow run: the candidate differs from the serving build"
            ),
            Ok(false) => {
                self.full
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(build);
            }
            Err(e) => tracing::warn!(error = %e, "cannot record a shadow run's difference"),
        }
    }

    fn is_full(&self, build: &ShadowBuild) -> bool {
        self.full
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(build)
    }

    /// Writes the counts gathered since the last flush; counts that cannot be written
    /// now are kept for the next one.
    pub async fn flush(&self) {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        for (build, counts) in pending {
            if let Err(e) = self.store.shadow().add_shadow_counts(&build, counts).await {
                tracing::warn!(error = %e, plugin = %build.plugin_type, "cannot record shadow run counts; keeping them for the next try");
                let mut again = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                let c = again.entry(build).or_default();
                c.runs += counts.runs;
                c.same += counts.same;
                c.different += counts.different;
                c.failed += counts.failed;
            }
        }
    }
}

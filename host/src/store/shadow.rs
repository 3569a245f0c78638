//! Shadow runs in the database (migration 0014): `shadow_summaries` (runs, same,
//! different and failed per type and candidate build, added to by every host) and
//! `shadow_differences` (the first differences and failures of each build, readable).
//! The statements are the same on both backends.

use async_trait::async_trait;
use serde::Serialize;

use super::statement::{required, storable, storable_opt, Columns, On, Sql, Statement};
use super::StoreError;
use crate::time::{now_ms, Millis};

/// Which candidate build, beside which serving build.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ShadowBuild {
    /// The order type.
    pub plugin_type: String,
    /// SHA-256 of the candidate's `.wasm`.
    pub candidate_sha256: String,
    /// The candidate's build id (`type@version sha256:…`).
    pub candidate_build: String,
    /// The serving build's id.
    pub serving_build: String,
}

/// Counts of shadow runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ShadowCounts {
    /// Runs compared.
    pub runs: i64,
    /// Same outcome and same writes as the serving build.
    pub same: i64,
    /// A different outcome or different writes.
    pub different: i64,
    /// The candidate failed (error, trap, timeout, out of memory) where the serving
    /// build succeeded.
    pub failed: i64,
}

/// A candidate build's counts so far.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShadowSummary {
    /// Which.
    #[serde(flatten)]
    pub build: ShadowBuild,
    /// How its runs compared.
    #[serde(flatten)]
    pub counts: ShadowCounts,
    /// First run counted.
    pub first_at: Millis,
    /// Last run counted.
    pub last_at: Millis,
}

/// One difference (or failure) of a candidate, to keep.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDifference<'a> {
    /// Which build.
    pub build: &'a ShadowBuild,
    /// The order.
    pub out_trade_no: &'a str,
    /// `paid` or `refunded`.
    pub call: &'a str,
    /// The notification.
    pub notification_id: Option<i64>,
    /// The refund.
    pub out_refund_no: Option<&'a str>,
    /// `different` or `failed`.
    pub result: &'a str,
    /// Outcomes and differing writes, both versions.
    pub diff: &'a serde_json::Value,
}

/// A kept difference.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DifferenceRecord {
    /// Id.
    pub id: i64,
    /// The candidate's build id.
    pub candidate_build: String,
    /// The serving build's id.
    pub serving_build: String,
    /// The order.
    pub out_trade_no: String,
    /// `paid` or `refunded`.
    pub call: String,
    /// The notification.
    pub notification_id: Option<i64>,
    /// The refund.
    pub out_refund_no: Option<String>,
    /// `different` or `failed`.
    pub result: String,
    /// Outcomes and differing writes, both versions.
    pub diff: serde_json::Value,
    /// When.
    pub created_at: Millis,
}

/// Shadow run counts and differences.
#[async_trait]
pub trait ShadowStore: Send + Sync {
    /// Adds `counts` to the build's totals (creating them).
    async fn add_shadow_counts(
        &self,
        build: &ShadowBuild,
        counts: ShadowCounts,
    ) -> Result<(), StoreError>;
    /// Keeps a difference unless `keep` of this build's are kept already; true if kept.
    async fn add_shadow_difference(
        &self,
        d: &NewDifference<'_>,
        keep: u32,
    ) -> Result<bool, StoreError>;
    /// The candidate builds of `plugin_type` that ran, most recent first.
    async fn shadow_summaries(&self, plugin_type: &str) -> Result<Vec<ShadowSummary>, StoreError>;
    /// The kept differences of one candidate build, oldest first, at most `limit`.
    async fn shadow_differences(
        &self,
        plugin_type: &str,
        candidate_sha256: &str,
        limit: u32,
    ) -> Result<Vec<DifferenceRecord>, StoreError>;
}

fn summary_row(r: &dyn Columns) -> Result<ShadowSummary, StoreError> {
    let int = |name: &str| -> Result<i64, StoreError> { required(r.int8(name)?, name) };
    let text = |name: &str| -> Result<String, StoreError> { required(r.text(name)?, name) };
    Ok(ShadowSummary {
        build: ShadowBuild {
            plugin_type: text("plugin_type")?,
            candidate_sha256: text("candidate_sha256")?,
            candidate_build: text("candidate_build")?,
            serving_build: text("serving_build")?,
        },
        counts: ShadowCounts {
            runs: int("runs")?,
            same: int("same")?,
            different: int("different")?,
            failed: int("failed")?,
        },
        first_at: int("first_at")?,
        last_at: int("last_at")?,
    })
}

fn difference_row(r: &dyn Columns) -> Result<DifferenceRecord, StoreError> {
    let text = |name: &str| -> Result<String, StoreError> { required(r.text(name)?, name) };
    let diff = text("diff")?;
    Ok(DifferenceRecord {
        id: required(r.int8("id")?, "id")?,
        candidate_build: text("candidate_build")?,
        serving_build: text("serving_build")?,
        out_trade_no: text("out_trade_no")?,
        call: text("call_kind")?,
        notification_id: r.int8("notification_id")?,
        out_refund_no: r.text("out_refund_no")?,
        result: text("result")?,
        diff: serde_json::from_str(&diff)
            .map_err(|e| StoreError::Invalid(format!("stored shadow diff is not JSON: {e}")))?,
        created_at: required(r.int8("created_at")?, "created_at")?,
    })
}

#[async_trait]
impl<S: Sql> ShadowStore for S {
    async fn add_shadow_counts(&self, b: &ShadowBuild, c: ShadowCounts) -> Result<(), StoreError> {
        let st = Statement::new(
            "INSERT INTO shadow_summaries (plugin_type, candidate_sha256, candidate_build, \
             serving_build, runs, same, different, failed, first_at, last_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) \
             ON CONFLICT (plugin_type, candidate_sha256) DO UPDATE SET \
             runs = shadow_summaries.runs + excluded.runs, \
             same = shadow_summaries.same + excluded.same, \
             different = shadow_summaries.different + excluded.different, \
             failed = shadow_summaries.failed + excluded.failed, \
             candidate_build = excluded.candidate_build, \
             serving_build = excluded.serving_build, last_at = excluded.last_at",
        )
        .bind(b.plugin_type.as_str())
        .bind(b.candidate_sha256.as_str())
        .bind(storable(&b.candidate_build))
        .bind(storable(&b.serving_build))
        .bind(c.runs)
        .bind(c.same)
        .bind(c.different)
        .bind(c.failed)
        .bind(now_ms());
        self.execute(On::Write, &st).await?;
        Ok(())
    }

    async fn add_shadow_difference(
        &self,
        d: &NewDifference<'_>,
        keep: u32,
    ) -> Result<bool, StoreError> {
        // One conditional statement: hosts adding at once may keep a few more than
        // `keep` between them, never an unbounded number.
        let diff = d.diff.to_string();
        let st = Statement::new(
            "INSERT INTO shadow_differences (plugin_type, candidate_sha256, candidate_build, \
             serving_build, out_trade_no, call_kind, notification_id, out_refund_no, result, \
             diff, created_at) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 \
             WHERE (SELECT COUNT(*) FROM shadow_differences \
                    WHERE plugin_type = $1 AND candidate_sha256 = $2) < $12",
        )
        .bind(d.build.plugin_type.as_str())
        .bind(d.build.candidate_sha256.as_str())
        .bind(storable(&d.build.candidate_build))
        .bind(storable(&d.build.serving_build))
        .bind(storable(d.out_trade_no))
        .bind(d.call)
        .bind(d.notification_id)
        .bind(storable_opt(d.out_refund_no))
        .bind(d.result)
        .bind(storable(&diff).into_owned())
        .bind(now_ms())
        .bind(i64::from(keep));
        Ok(self.execute(On::Write, &st).await? == 1)
    }

    async fn shadow_summaries(&self, plugin_type: &str) -> Result<Vec<ShadowSummary>, StoreError> {
        let st = Statement::new(
            "SELECT plugin_type, candidate_sha256, candidate_build, serving_build, runs, same, \
             different, failed, first_at, last_at FROM shadow_summaries \
             WHERE plugin_type = $1 ORDER BY last_at DESC LIMIT 50",
        )
        .bind(plugin_type);
        self.fetch(On::Read, &st, summary_row).await
    }

    async fn shadow_differences(
        &self,
        plugin_type: &str,
        candidate_sha256: &str,
        limit: u32,
    ) -> Result<Vec<DifferenceRecord>, StoreError> {
        let st = Statement::new(
            "SELECT id, candidate_build, serving_build, out_trade_no, call_kind, \
             notification_id, out_refund_no, result, diff, created_at FROM shadow_differences \
             WHERE plugin_type = $1 AND candidate_sha256 = $2 ORDER BY id LIMIT $3",
        )
        .bind(plugin_type)
        .bind(candidate_sha256)
        .bind(i64::from(limit.min(500)));
        self.fetch(On::Read, &st, difference_row).await
    }
}

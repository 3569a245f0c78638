//! The plugin history in the database: the `plugin_history` table (migration 0010), one
//! row per load, replacement, unload and refusal of a handler build, only ever appended.
//!
//! The statements are the same on both backends. On SQLite the insert is one autocommit
//! statement taken under the writer's lock, like the other writes outside a payment.

use std::borrow::Cow;

use async_trait::async_trait;

use super::console::{newest_first, push_id_page};
use super::notifications::id_row;
use super::statement::{required, storable, Columns, On, Sql, Statement};
use super::traits::PluginHistoryStore;
use super::types::{Keyset, PluginEvent, PluginEventKind, PluginEventRecord};
use super::StoreError;

/// Most rows one read returns.
pub const MAX_PAGE: u32 = 500;

/// Longest `reason` kept, in characters: a load error can quote a whole WIT mismatch or
/// manifest, and the history is there to say what happened, not to store the file.
pub const MAX_REASON_CHARS: usize = 2000;

/// Longest of the other texts (version, signer, …), in characters: the version is what
/// the build says about itself, so it is bounded too.
const MAX_TEXT_CHARS: usize = 200;

/// Every column of `plugin_history` that [`event_row`] reads.
const COLUMNS: &str = "id, at, plugin_type, event, sha256, signer, version, reason, host";

/// `text` made storable ([`storable`]) and cut to `max` characters, the cut marked `…`.
fn capped(text: &str, max: usize) -> Cow<'_, str> {
    let text = storable(text);
    match text.char_indices().nth(max) {
        None => text,
        Some(_) => {
            let kept: String = text.chars().take(max.saturating_sub(1)).collect();
            Cow::Owned(kept + "…")
        }
    }
}

/// [`capped`] of an optional text.
fn capped_opt(text: &Option<String>, max: usize) -> Option<Cow<'_, str>> {
    text.as_deref().map(|t| capped(t, max))
}

/// The insert of one event, answering its id.
fn insert(e: &PluginEvent) -> Statement<'_> {
    Statement::new(
        "INSERT INTO plugin_history (at, plugin_type, event, sha256, signer, version, reason, host) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
    )
    .bind(e.at)
    .bind(capped(&e.plugin_type, MAX_TEXT_CHARS))
    .bind(e.event.as_str())
    .bind(capped_opt(&e.sha256, MAX_TEXT_CHARS))
    .bind(capped_opt(&e.signer, MAX_TEXT_CHARS))
    .bind(capped_opt(&e.version, MAX_TEXT_CHARS))
    .bind(capped_opt(&e.reason, MAX_REASON_CHARS))
    .bind(capped(&e.host, MAX_TEXT_CHARS))
}

/// A page of the history, of one type or of all, by id; true if newest first.
fn page<'a>(plugin_type: Option<&'a str>, page: &Keyset<i64>, limit: u32) -> (Statement<'a>, bool) {
    let mut st = Statement::build();
    st.push(&format!("SELECT {COLUMNS} FROM plugin_history WHERE TRUE"));
    if let Some(t) = plugin_type {
        st.push(" AND plugin_type = ").push_param(storable(t));
    }
    let older = push_id_page(&mut st, page);
    st.push_param(i64::from(limit.clamp(1, MAX_PAGE)));
    (st, older)
}

/// A row of [`COLUMNS`].
fn event_row(r: &dyn Columns) -> Result<PluginEventRecord, StoreError> {
    let event = required(r.text("event")?, "event")?;
    Ok(PluginEventRecord {
        id: required(r.int8("id")?, "id")?,
        at: required(r.int8("at")?, "at")?,
        plugin_type: required(r.text("plugin_type")?, "plugin_type")?,
        event: PluginEventKind::parse(&event)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown plugin event `{event}`")))?,
        sha256: r.text("sha256")?,
        signer: r.text("signer")?,
        version: r.text("version")?,
        reason: r.text("reason")?,
        host: required(r.text("host")?, "host")?,
    })
}

#[async_trait]
impl<S: Sql> PluginHistoryStore for S {
    async fn record_plugin_event(&self, event: &PluginEvent) -> Result<i64, StoreError> {
        self.fetch(On::Write, &insert(event), id_row)
            .await?
            .pop()
            .ok_or_else(|| StoreError::Invalid("the plugin event was not stored".into()))
    }

    async fn page_plugin_history(
        &self,
        plugin_type: Option<&str>,
        keyset: &Keyset<i64>,
        limit: u32,
    ) -> Result<Vec<PluginEventRecord>, StoreError> {
        let (st, older) = page(plugin_type, keyset, limit);
        Ok(newest_first(
            self.fetch(On::Read, &st, event_row).await?,
            older,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_texts_are_cut_and_marked_and_nul_is_replaced() {
        assert_eq!(capped("short", 10), "short");
        assert_eq!(capped("exactly10!", 10), "exactly10!");
        let cut = capped("é".repeat(2500).as_str(), MAX_REASON_CHARS).into_owned();
        assert_eq!(cut.chars().count(), MAX_REASON_CHARS);
        assert!(cut.ends_with("é…"), "{cut}");
        assert_eq!(capped("a\0b", 10), "a\u{FFFD}b");
    }

    #[test]
    fn a_page_of_one_type_is_one_index_range() {
        let (st, older) = page(Some("goods"), &Keyset::Older(7), 9999);
        assert!(older);
        assert_eq!(
            st.text,
            format!(
                "SELECT {COLUMNS} FROM plugin_history WHERE TRUE AND plugin_type = $1 \
                 AND id < $2 ORDER BY id DESC LIMIT $3"
            )
        );
        assert!(matches!(
            st.params[2],
            super::super::statement::Param::Int8(Some(500))
        ));
    }
}

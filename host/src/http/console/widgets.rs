//! What the console's list pages share: keyset paging, filters kept in links, badges,
//! links to an order, the CSRF field of a form.
//!
//! Big lists page by keyset ("older" / "newer" links carry the last / first row's key),
//! one row more than shown is read to know whether another page follows, and filters
//! travel in the links, so paging works with JavaScript off.

use maud::{html, Markup};

use super::Session;
use crate::store::Keyset;
use crate::store::{status, Verdict};

/// Rows per page unless `limit` says otherwise.
const PAGE: u32 = 50;
/// Most rows per page.
const MAX_PAGE: u32 = 200;

/// The rows per page a `limit` parameter asks for, within bounds.
pub fn page_size(limit: Option<u32>) -> u32 {
    limit.unwrap_or(PAGE).clamp(1, MAX_PAGE)
}

/// The page of a list keyed by id that `older` / `newer` ask for.
pub fn id_keyset(older: Option<i64>, newer: Option<i64>) -> Keyset<i64> {
    match (older, newer) {
        (Some(id), _) => Keyset::Older(id),
        (None, Some(id)) => Keyset::Newer(id),
        (None, None) => Keyset::Newest,
    }
}

/// A query parameter, with an empty value (a blank filter field) taken as absent.
pub fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// One page of a newest-first list, and whether there are pages either side.
pub struct Paged<T> {
    /// The rows shown, newest first.
    pub rows: Vec<T>,
    has_older: bool,
    has_newer: bool,
}

/// Cuts the extra row read past `limit` (at the far end from the cursor) and says which
/// neighbouring pages exist.
pub fn paged<T, C>(mut rows: Vec<T>, page: &Keyset<C>, limit: u32) -> Paged<T> {
    let limit = limit as usize;
    let more = rows.len() > limit;
    match page {
        Keyset::Newer(_) => {
            if more {
                rows.drain(..rows.len() - limit);
            }
            Paged {
                rows,
                has_older: true,
                has_newer: more,
            }
        }
        Keyset::Older(_) | Keyset::Newest => {
            rows.truncate(limit);
            Paged {
                rows,
                has_older: more,
                has_newer: matches!(page, Keyset::Older(_)),
            }
        }
    }
}

/// `?{filters}&{key}={value}`: a paging link that keeps the filters.
fn link(path: &str, filters: &[(&str, Option<&str>)], key: &str, value: &str) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in filters {
        if let Some(v) = v {
            q.append_pair(k, v);
        }
    }
    q.append_pair(key, value);
    format!("{path}?{}", q.finish())
}

impl<T> Paged<T> {
    /// The "newer / older" links under the list at `path`, keeping `filters` (`limit`
    /// among them when it was given); `key` is a row's cursor as the links carry it.
    pub fn pager(
        &self,
        path: &str,
        filters: &[(&str, Option<&str>)],
        limit: Option<u32>,
        key: impl Fn(&T) -> String,
    ) -> Markup {
        let limit = limit.map(|l| page_size(Some(l)).to_string());
        let mut filters = filters.to_vec();
        filters.push(("limit", limit.as_deref()));
        let to = |dir: &str, row: Option<&T>| row.map(|r| link(path, &filters, dir, &key(r)));
        let newer = self
            .has_newer
            .then(|| to("newer", self.rows.first()))
            .flatten();
        let older = self
            .has_older
            .then(|| to("older", self.rows.last()))
            .flatten();
        html! {
            nav.pager aria-label="pages" {
                @if let Some(h) = newer { a.newer rel="prev" href=(h) { "‹ Newer" } }
                @else { span.muted { "‹ Newer" } }
                " "
                @if let Some(h) = older { a.older rel="next" href=(h) { "Older ›" } }
                @else { span.muted { "Older ›" } }
            }
        }
    }
}

/// A filter's drop-down, `label` then "any" and each of `choices`, `chosen` selected.
pub fn choice<const N: usize>(
    label: &str,
    name: &str,
    choices: [&str; N],
    chosen: Option<&str>,
) -> Markup {
    html! {
        label { (label) " "
            select name=(name) {
                option value="" { "any" }
                @for c in choices {
                    option value=(c) selected[chosen == Some(c)] { (c) }
                }
            }
        }
    }
}

/// A hidden CSRF field for a form of this session.
pub fn csrf_field(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf_token); }
}

/// An order status as a badge.
pub fn status_badge(code: i32) -> Markup {
    let name = status::name(code);
    html! { span class={"badge status-" (name)} { (name) } }
}

/// A handler status as a badge.
pub fn handler_badge(s: &str) -> Markup {
    html! { span class={"badge handler-" (s)} { (s) } }
}

/// A verdict as a badge.
pub fn verdict_badge(v: Verdict) -> Markup {
    html! { span class={"badge verdict-" (v.as_str())} { (v.as_str()) } }
}

/// An order number linking to its page, or a dash when there is none.
pub fn order_link(no: Option<&str>) -> Markup {
    html! { @if let Some(no) = no { a href={"/console/orders/" (urlencode(no))} { (no) } } @else { span.muted { "—" } } }
}

/// A path segment, percent-encoded.
pub(super) fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_keep_the_rows_next_to_the_cursor() {
        // Older / first page: rows newest first, the extra one is the oldest.
        let p = paged(vec![9, 8, 7], &Keyset::<i64>::Newest, 2);
        assert_eq!(
            (p.rows, p.has_older, p.has_newer),
            (vec![9, 8], true, false)
        );
        let p = paged(vec![5, 4], &Keyset::Older(6), 2);
        assert_eq!(
            (p.rows, p.has_older, p.has_newer),
            (vec![5, 4], false, true)
        );
        // Newer page: the extra one is the newest, farthest from the cursor.
        let p = paged(vec![9, 8, 7], &Keyset::Newer(6), 2);
        assert_eq!((p.rows, p.has_older, p.has_newer), (vec![8, 7], true, true));
        let p = paged(vec![8, 7], &Keyset::Newer(6), 2);
        assert_eq!(
            (p.rows, p.has_older, p.has_newer),
            (vec![8, 7], true, false)
        );
    }

    #[test]
    fn a_choice_selects_the_chosen_one() {
        let html = choice("Status", "status", ["paid", "unpaid"], Some("unpaid")).into_string();
        assert_eq!(
            html,
            r#"<label>Status <select name="status"><option value="">any</option><option value="paid">paid</option><option value="unpaid" selected>unpaid</option></select></label>"#
        );
    }

    #[test]
    fn links_keep_filters_and_encode() {
        assert_eq!(
            link(
                "/console/orders",
                &[
                    ("status", Some("paid")),
                    ("user", None),
                    ("type", Some("a b&c"))
                ],
                "older",
                "17:R1"
            ),
            "/console/orders?status=paid&type=a+b%26c&older=17%3AR1"
        );
        assert_eq!(urlencode("R 1/2"), "R%201%2F2");
    }
}

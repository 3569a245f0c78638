//! Command output for people: tables and key-value text, with what comes from the
//! database or the wire cleaned for a terminal. (`--json` prints the values instead.)

use std::path::Path;

use serde_json::Value;

use paynotify::providers::wechat_v3::certs::CertListing;
use paynotify::store::{status, NotificationRecord, Order, PluginEventRecord, TaskRecord};
use paynotify::time::Millis;

/// A plain-text table: a header row and left-aligned columns two spaces apart.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&'static str]) -> Table {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (cells are cleaned of control characters).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows
            .push(cells.into_iter().map(|c| clean(&c, MAX_CELL)).collect());
    }

    /// The table as text, one line per row, ending with a newline.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                if i + 1 < row.len() {
                    line.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Longest cell shown in a table (reasons and errors can be long; `show` has them whole).
const MAX_CELL: usize = 72;

/// Text from the database or the wire, made safe and short for a terminal: control
/// characters (which could move the cursor or recolour the screen) become `?`, and
/// text past `max` characters is cut with `…`.
pub fn clean(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.chars().count() > max {
        out.pop();
        out.push('…');
    }
    out
}

/// Like [`clean`] for multi-line text shown whole: keeps newlines and tabs.
fn clean_block(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                '?'
            } else {
                c
            }
        })
        .collect()
}

/// A time for people: `2026-09-03 13:15:40` (UTC), or `-` when absent.
pub fn short_time(ms: Option<Millis>) -> String {
    let Some(ms) = ms else {
        return "-".into();
    };
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// A time shown on its own (not under a `(UTC)` header): `2026-09-03 13:15:40 UTC`.
pub fn utc_time(ms: Option<Millis>) -> String {
    match ms {
        Some(_) => format!("{} UTC", short_time(ms)),
        None => "-".into(),
    }
}

/// China Standard Time (UTC+8, no daylight saving since 1991): the zone WeChat Pay and
/// Alipay state their times in.
const SHANGHAI_OFFSET_MS: i64 = 8 * 3600 * 1000;

/// A time a provider gave (in Shanghai time), in UTC and as the provider said it:
/// `2026-09-03 05:15:40 UTC (13:15:40 Asia/Shanghai)`, the date repeated when it differs.
pub fn provider_time(ms: Option<Millis>) -> String {
    let Some(ms) = ms else {
        return "-".into();
    };
    let utc = short_time(Some(ms));
    let local = short_time(Some(ms.saturating_add(SHANGHAI_OFFSET_MS)));
    let local = match (utc.split_once(' '), local.split_once(' ')) {
        (Some((utc_day, _)), Some((day, clock))) if utc_day == day => clock.to_owned(),
        _ => local,
    };
    format!("{utc} UTC ({local} Asia/Shanghai)")
}

fn or_dash(v: Option<&str>) -> String {
    v.filter(|s| !s.is_empty()).unwrap_or("-").to_owned()
}

/// `1 (paid)`.
fn status_text(code: i32) -> String {
    format!("{code} ({})", status::name(code))
}

/// `paynotify orders list`.
pub fn orders_table(orders: &[Order]) -> String {
    let mut t = Table::new(&[
        "OUT_TRADE_NO",
        "TYPE",
        "STATUS",
        "FEE(fen)",
        "USER",
        "PROVIDER",
        "HANDLER",
        "CREATED (UTC)",
    ]);
    for o in orders {
        t.row(vec![
            o.out_trade_no.clone(),
            o.order_type.clone(),
            status_text(o.status),
            o.total_fee.to_string(),
            o.user_id.clone(),
            format!("{}/{}", o.provider, o.account),
            o.handler_status.clone(),
            short_time(Some(o.created_at)),
        ]);
    }
    t.render()
}

/// `paynotify orders show`.
pub fn order_text(o: &Order) -> String {
    let json = |v: &Option<Value>| v.as_ref().map_or("-".into(), Value::to_string);
    let lines: Vec<(&str, String)> = vec![
        ("out_trade_no", o.out_trade_no.clone()),
        ("type", o.order_type.clone()),
        ("status", status_text(o.status)),
        ("total_fee", format!("{} fen", o.total_fee)),
        ("user_id", o.user_id.clone()),
        (
            "provider",
            format!("{} (account {})", o.provider, o.account),
        ),
        ("sub_mchid", or_dash(o.sub_mchid.as_deref())),
        ("transaction_id", or_dash(o.transaction_id.as_deref())),
        ("pay_date", provider_time(o.pay_date)),
        ("notify_date", utc_time(o.notify_date)),
        ("handler_status", o.handler_status.clone()),
        ("handler_version", or_dash(o.handler_version.as_deref())),
        ("handler_result", json(&o.handler_result)),
        ("custom", o.custom.to_string()),
        (
            "paid_by",
            o.paid_notification_id
                .map_or("-".into(), |id| format!("notification {id}")),
        ),
        ("created_at", utc_time(Some(o.created_at))),
        ("updated_at", utc_time(Some(o.updated_at))),
    ];
    key_values(&lines)
}

fn key_values(lines: &[(&str, String)]) -> String {
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    lines
        .iter()
        .map(|(k, v)| format!("{k:width$}  {}\n", clean_block(v)))
        .collect()
}

/// `paynotify notifications list`.
pub fn notifications_table(list: &[NotificationRecord]) -> String {
    let mut t = Table::new(&[
        "ID",
        "RECEIVED (UTC)",
        "PROVIDER",
        "ACCOUNT",
        "ORDER",
        "VERDICT",
        "REASON",
    ]);
    for n in list {
        t.row(vec![
            n.id.to_string(),
            short_time(Some(n.received_at)),
            n.provider.clone(),
            or_dash(n.account.as_deref()),
            or_dash(n.out_trade_no.as_deref()),
            n.verdict.as_str().to_owned(),
            or_dash(n.reason.as_deref()),
        ]);
    }
    t.render()
}

/// `paynotify notifications show`.
pub fn notification_text(n: &NotificationRecord) -> String {
    let mut out = key_values(&[
        ("id", n.id.to_string()),
        ("provider", n.provider.clone()),
        ("account", or_dash(n.account.as_deref())),
        ("received_at", utc_time(Some(n.received_at))),
        ("remote_addr", or_dash(n.remote_addr.as_deref())),
        ("order", or_dash(n.out_trade_no.as_deref())),
        ("verdict", n.verdict.as_str().to_owned()),
        ("reason", or_dash(n.reason.as_deref())),
        ("processed_at", utc_time(n.processed_at)),
    ]);
    out.push_str("\nheaders:\n");
    for (k, v) in &n.headers {
        out.push_str(&format!("  {}: {}\n", clean(k, 200), clean(v, 2000)));
    }
    out.push_str(if n.truncated {
        "\nbody (cut at the size limit):\n"
    } else {
        "\nbody:\n"
    });
    out.push_str(&clean_block(&String::from_utf8_lossy(&n.body)));
    out.push('\n');
    out
}

/// `paynotify tasks list`.
pub fn tasks_table(list: &[TaskRecord]) -> String {
    let mut t = Table::new(&[
        "ID",
        "PLUGIN",
        "NAME",
        "STATUS",
        "ATTEMPTS",
        "RUN AT (UTC)",
        "ORDER",
        "LAST ERROR",
    ]);
    for task in list {
        t.row(vec![
            task.id.to_string(),
            task.plugin.clone(),
            task.name.clone(),
            task.status.clone(),
            task.attempts.to_string(),
            short_time(Some(task.run_at)),
            or_dash(task.out_trade_no.as_deref()),
            or_dash(task.last_error.as_deref()),
        ]);
    }
    t.render()
}

/// `paynotify providers certs`: one row a certificate, expired ones marked.
pub fn certs_table(list: &[CertListing], now: Millis) -> String {
    let mut t = Table::new(&[
        "ACCOUNT",
        "MCH_ID",
        "SERIAL",
        "EFFECTIVE (UTC)",
        "EXPIRES (UTC)",
        "SOURCE",
    ]);
    for c in list {
        let mut expires = short_time(Some(c.expire_at));
        if c.expire_at <= now {
            expires.push_str(" (expired)");
        }
        let source = match c.fetched_at {
            Some(at) => format!("{}, last at {}", c.source, short_time(Some(at))),
            None => c.source.clone(),
        };
        t.row(vec![
            c.account.clone(),
            c.mch_id.clone(),
            c.serial.clone(),
            short_time(Some(c.effective_at)),
            expires,
            clean(&source, 120),
        ]);
    }
    t.render()
}

/// `table`, then, when `list` filled a whole page of `limit`, how to ask for the next one
/// (`--before` the cursor of its last row).
pub fn with_next_page<T>(
    mut table: String,
    list: &[T],
    limit: u32,
    cursor: impl Fn(&T) -> String,
) -> String {
    if let Some(last) = list.last().filter(|_| list.len() as u32 >= limit.min(500)) {
        table.push_str(&format!(
            "\n{} shown; the next page: --before {}\n",
            list.len(),
            cursor(last)
        ));
    }
    table
}

/// `paynotify plugins list`, from `GET /api/admin/plugins`.
pub fn plugins_table(list: &Value) -> String {
    let text = |p: &Value, k: &str| p[k].as_str().map(str::to_owned);
    let mut t = Table::new(&[
        "TYPE",
        "SERVING",
        "VERSION",
        "SHA256",
        "SIGNED BY",
        "REFUNDS",
        "LOADED (UTC)",
        "FAILING FAST UNTIL (UTC)",
        "LAST LOAD ERROR",
        "CANDIDATE (.next)",
        "PREV",
    ]);
    for p in list.as_array().map(Vec::as_slice).unwrap_or_default() {
        t.row(vec![
            text(p, "type").unwrap_or_default(),
            match (p["loaded"] == true, p["loading_since"].is_i64()) {
                (true, false) => "yes",
                (true, true) => "yes (new build loading)",
                (false, true) => "loading",
                (false, false) => "NO",
            }
            .into(),
            or_dash(text(p, "version").as_deref()),
            text(p, "sha256").map_or("-".into(), |h| h.chars().take(12).collect()),
            match (
                p["signer"]["principal"].as_str(),
                p["signer"]["fingerprint"].as_str(),
            ) {
                (Some(who), Some(key)) => format!("{who} {key}"),
                _ => "-".into(),
            },
            if p["handles_refunds"] == true {
                "yes"
            } else {
                "-"
            }
            .into(),
            short_time(p["loaded_at"].as_i64()),
            match p["breaker"]["failing_fast_until"].as_i64() {
                Some(until) => format!(
                    "{} ({} timeouts)",
                    short_time(Some(until)),
                    p["breaker"]["timeouts_in_a_row"]
                ),
                None => "-".into(),
            },
            or_dash(text(p, "last_error").as_deref()),
            candidate_cell(&p["candidate"]),
            if p["has_previous"] == true {
                "yes"
            } else {
                "-"
            }
            .into(),
        ]);
    }
    t.render()
}

/// The candidate of a `plugins list` row: its version and hash, that a new file is
/// loading, or why it failed; `-` when nothing is staged.
fn candidate_cell(c: &Value) -> String {
    if c.is_null() {
        return "-".into();
    }
    let mut cell = match (c["version"].as_str(), c["sha256"].as_str()) {
        (Some(v), Some(h)) => format!("{v} {}", h.chars().take(12).collect::<String>()),
        _ => String::new(),
    };
    if c["loading_since"].is_i64() {
        cell.push_str(if cell.is_empty() {
            "loading"
        } else {
            " (new file loading)"
        });
    }
    if let Some(e) = c["last_error"].as_str() {
        if !cell.is_empty() {
            cell.push_str("; ");
        }
        cell.push_str("FAILED: ");
        cell.push_str(e);
    }
    cell
}

/// `paynotify plugins history`.
pub fn plugin_history_table(list: &[PluginEventRecord]) -> String {
    let mut t = Table::new(&[
        "ID", "AT (UTC)", "TYPE", "EVENT", "VERSION", "SHA256", "SIGNER", "HOST", "REASON",
    ]);
    for e in list {
        t.row(vec![
            e.id.to_string(),
            short_time(Some(e.at)),
            e.plugin_type.clone(),
            e.event.as_str().into(),
            or_dash(e.version.as_deref()),
            e.sha256
                .as_deref()
                .map_or("-".into(), |h| h.chars().take(12).collect()),
            or_dash(e.signer.as_deref()),
            e.host.clone(),
            or_dash(e.reason.as_deref()),
        ]);
    }
    t.render()
}

/// `paynotify plugins check FILE` for a file that loads: what it is, which manifest
/// (`manifest`, a line) and what it grants, the side-effect opt-ins spelled out, and the
/// limits of its calls.
pub fn plugin_check_text(
    file: &Path,
    manifest_line: &str,
    plugin: &paynotify::plugins::Plugin,
) -> String {
    let (metadata, sha256, manifest) = (&plugin.metadata, &plugin.sha256, &plugin.manifest);
    let list_or_none = |items: &[String]| {
        if items.is_empty() {
            "none".to_owned()
        } else {
            items.join(", ")
        }
    };
    let mut out = format!(
        "{}: ok, {} {} (paynotify:plugin@{}), sha256 {sha256}\n{}\n\
         collections: {}\nhttp origins: {}\n",
        file.display(),
        metadata.name,
        metadata.version,
        metadata.world_version,
        clean_block(manifest_line),
        list_or_none(&manifest.collections),
        list_or_none(&manifest.http_origins),
    );
    match &plugin.signer {
        Some(signer) => out.push_str(&format!("signed by: {signer}\n")),
        None => out.push_str("signed by: not checked (plugins.allowed_signers is not set)\n"),
    }
    out.push_str(if manifest.http_in_payment {
        "http in payment: yes (http_in_payment = true)\n"
    } else {
        "http in payment: no (run-task only)\n"
    });
    out.push_str(if manifest.crypto {
        "crypto (notify key): yes\n"
    } else {
        "crypto (notify key): no\n"
    });
    out.push_str(&format!(
        "limits: timeout {} ms, payment timeout {} ms, memory {} MiB\n",
        plugin.limits.timeout.as_millis(),
        plugin.payment_limits.timeout.as_millis(),
        plugin.limits.memory_bytes / (1024 * 1024)
    ));
    if manifest.http_in_payment {
        out.push_str("warning: ");
        out.push_str(paynotify::plugins::manifest::HTTP_IN_PAYMENT_WARNING);
        out.push('\n');
    }
    out
}

/// `paynotify plugins reload`, from `POST /api/admin/plugins/reload`.
pub fn reload_text(v: &Value) -> String {
    let names = |k: &str| -> String {
        let list: Vec<String> = v["report"][k]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|t| match t {
                // `failed` holds [type, reason] pairs.
                Value::Array(pair) => format!(
                    "{} ({})",
                    pair.first().and_then(Value::as_str).unwrap_or("?"),
                    pair.get(1).and_then(Value::as_str).unwrap_or("")
                ),
                other => other.as_str().unwrap_or("?").to_owned(),
            })
            .collect();
        if list.is_empty() {
            "-".into()
        } else {
            list.join(", ")
        }
    };
    let mut out = key_values(&[
        ("loaded", names("loaded")),
        ("unchanged", names("unchanged")),
        ("failed", names("failed")),
        ("removed", names("removed")),
    ]);
    out.push('\n');
    out.push_str(&plugins_table(&v["plugins"]));
    out
}

/// The masked configuration (see [`Config::masked`]) as TOML, in the file's section
/// order, under a comment saying where it came from.
pub fn config_toml(path: &Path, masked: &Value) -> Result<String, toml::ser::Error> {
    let mut out = format!(
        "# {}: valid. Effective configuration (file + PAYNOTIFY_… environment + secret files),\n\
         # secrets shown as ***.\n",
        path.display()
    );
    for section in [
        "server", "database", "plugins", "tasks", "orders", "accounts",
    ] {
        if let Some(v) = masked.get(section) {
            out.push('\n');
            out.push_str(&toml::to_string(&serde_json::json!({ section: v }))?);
        }
    }
    Ok(out)
}

/// `paynotify reconcile` as text: one line per order, then the totals.
pub fn reconcile_text(v: &Value) -> String {
    let mut t = Table::new(&[
        "ORDER",
        "PROVIDER",
        "OUTCOME",
        "STATE",
        "NOTIFICATION",
        "REASON",
    ]);
    for o in v["orders"].as_array().into_iter().flatten() {
        let s = |k: &str| o[k].as_str().map(|x| clean(x, 80)).unwrap_or_default();
        t.row(vec![
            s("out_trade_no"),
            s("provider"),
            s("outcome"),
            s("state"),
            o["notification_id"]
                .as_i64()
                .map(|i| i.to_string())
                .unwrap_or_default(),
            s("reason"),
        ]);
    }
    format!(
        "{}paid {}, unpaid {}, errors {}, skipped {}\n",
        if v["orders"].as_array().is_some_and(|a| !a.is_empty()) {
            t.render()
        } else {
            "no unpaid orders due for a query\n".into()
        },
        v["paid"],
        v["unpaid"],
        v["errors"],
        v["skipped"]
    )
}

/// `paynotify notifications replay --failed` as text.
pub fn replayed_text(v: &Value) -> String {
    let list = v["replayed"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return "no failed notifications for unpaid orders match\n".into();
    }
    let mut t = Table::new(&["ID", "ORDER", "VERDICT", "REASON"]);
    for r in &list {
        t.row(vec![
            r["id"].to_string(),
            r["out_trade_no"].as_str().unwrap_or("").to_owned(),
            r["verdict"].as_str().unwrap_or("?").to_owned(),
            r["reason"]
                .as_str()
                .map(|x| clean(x, 80))
                .unwrap_or_default(),
        ]);
    }
    t.render()
}

/// `paynotify notifications replay ID` as text: the verdict, and why.
pub fn replayed_one_text(id: i64, v: &Value) -> String {
    let reason = v["reason"]
        .as_str()
        .map(|r| format!(" ({})", clean(r, 500)))
        .unwrap_or_default();
    format!(
        "notification {id} replayed: {}{reason}\n",
        v["verdict"].as_str().unwrap_or("?")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_defuse_terminal_escapes() {
        let mut t = Table::new(&["A", "LONGER"]);
        t.row(vec!["wide cell".into(), "x".into()]);
        t.row(vec!["\u{1b}[31mred\nline".into(), "y".into()]);
        assert_eq!(
            t.render(),
            "A              LONGER\nwide cell      x\n?[31mred?line  y\n"
        );
        assert_eq!(clean("abcdef", 4), "abc…");
        assert_eq!(clean("abcd", 4), "abcd");
    }

    #[test]
    fn times_are_shown_in_utc_to_the_second() {
        assert_eq!(short_time(Some(1_788_441_340_999)), "2026-09-03 13:15:40");
        assert_eq!(short_time(None), "-");
        assert_eq!(utc_time(Some(1_788_441_340_999)), "2026-09-03 13:15:40 UTC");
        assert_eq!(utc_time(None), "-");
    }

    #[test]
    fn provider_times_are_shown_in_utc_and_in_shanghai_time() {
        // WeChat's time_end 20260903131540 (Shanghai) is 05:15:40 UTC.
        assert_eq!(
            provider_time(Some(1_788_412_540_000)),
            "2026-09-03 05:15:40 UTC (13:15:40 Asia/Shanghai)"
        );
        assert_eq!(
            provider_time(Some(1_788_441_340_000)),
            "2026-09-03 13:15:40 UTC (21:15:40 Asia/Shanghai)"
        );
        // From 16:00 UTC it is the next day in Shanghai: the date is shown.
        assert_eq!(
            provider_time(Some(1_788_454_800_000)),
            "2026-09-03 17:00:00 UTC (2026-09-04 01:00:00 Asia/Shanghai)"
        );
        assert_eq!(provider_time(None), "-");
    }

    #[test]
    fn orders_show_labels_every_time() {
        let order = Order {
            out_trade_no: "R1".into(),
            order_type: "recharge".into(),
            provider: "wechat-v2".into(),
            account: "default".into(),
            sub_mchid: None,
            total_fee: 1,
            user_id: "u1".into(),
            custom: serde_json::json!({}),
            status: 1,
            refund_fee: 0,
            transaction_id: Some("T1".into()),
            pay_date: Some(1_788_412_540_000),
            notify_date: Some(1_788_412_541_000),
            handler_status: "succeeded".into(),
            handler_result: None,
            handler_version: None,
            original_data: None,
            paid_notification_id: Some(1),
            created_at: 1_788_412_000_000,
            updated_at: 1_788_412_541_000,
        };
        let text = order_text(&order);
        assert!(
            text.lines().any(|l| l.starts_with("pay_date ")
                && l.ends_with(" 2026-09-03 05:15:40 UTC (13:15:40 Asia/Shanghai)")),
            "{text}"
        );
        for key in ["pay_date", "notify_date", "created_at", "updated_at"] {
            let line = text
                .lines()
                .find(|l| l.starts_with(key))
                .unwrap_or_else(|| panic!("{key}: {text}"));
            assert!(
                line.contains("2026-09-03 05:") && line.contains(" UTC"),
                "{line}"
            );
        }
    }
}

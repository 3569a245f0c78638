//! `plugins shadow TYPE`: what shadow runs of a type's staged candidates found, from the
//! running server's API (the counts are every host's, in the database).

use serde_json::Value;

use super::admin::AdminClient;
use super::render::{clean, short_time};
use paynotify::config::Config;

/// Prints the shadow report of `plugin_type`.
pub async fn run(config: &Config, json: bool, plugin_type: &str) -> anyhow::Result<()> {
    let client = AdminClient::new(config);
    let v = client
        .get(&format!("/api/admin/plugins/{plugin_type}/shadow"))
        .await?;
    if json {
        println!("{}", serde_json::to_string(&v)?);
    } else {
        print!("{}", report_text(&v));
    }
    Ok(())
}

/// A field as text (`-` when absent), cut and cleaned of control characters: build ids
/// and diffs carry what handlers wrote.
fn text(v: &Value, max: usize) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => clean(s, max),
        other => clean(&other.to_string(), max),
    }
}

/// The report for people: the builds, each candidate's counts, its first differences.
pub fn report_text(v: &Value) -> String {
    let mut out = format!(
        "{}: serving {}, candidate {} (sample {}%)\n",
        text(&v["type"], 64),
        text(&v["serving"], 120),
        text(&v["candidate"], 120),
        v["sample"].as_f64().map_or(0.0, |s| s * 100.0),
    );
    let builds = v["builds"].as_array().cloned().unwrap_or_default();
    if builds.is_empty() {
        out.push_str(
            "no shadow runs yet: stage a candidate as {type}.next.wasm and pay an order\n",
        );
    }
    for b in &builds {
        let staged = if b["staged"].as_bool() == Some(true) {
            " (staged now)"
        } else {
            ""
        };
        out.push_str(&format!(
            "\ncandidate {}{staged}\n  beside {}\n  runs {}  same {}  different {}  failed {}  ({} – {})\n",
            text(&b["candidate_build"], 120),
            text(&b["serving_build"], 120),
            b["runs"], b["same"], b["different"], b["failed"],
            short_time(b["first_at"].as_i64()),
            short_time(b["last_at"].as_i64()),
        ));
        for d in b["differences"].as_array().into_iter().flatten() {
            out.push_str(&difference_text(d));
        }
    }
    out
}

/// One kept difference: the call, then what differed, both versions.
fn difference_text(d: &Value) -> String {
    let mut out = format!(
        "  - order {} ({} notification {}{}): {}\n",
        text(&d["out_trade_no"], 64),
        text(&d["call"], 16),
        text(&d["notification_id"], 20),
        d["out_refund_no"]
            .as_str()
            .map(|r| format!(", refund {}", clean(r, 64)))
            .unwrap_or_default(),
        text(&d["result"], 16),
    );
    let diff = &d["diff"];
    if let Some(error) = diff["candidate"]["error"].as_str() {
        out.push_str(&format!("      candidate failed: {}\n", clean(error, 400)));
    }
    if diff.get("outcome").is_some() {
        out.push_str(&format!(
            "      outcome: serving {}  candidate {}\n",
            text(&diff["outcome"]["serving"], 400),
            text(&diff["outcome"]["candidate"], 400),
        ));
    }
    for w in diff["writes"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "      {}/{}: before {}\n        serving   {}\n        candidate {}\n",
            text(&w["collection"], 64),
            text(&w["id"], 128),
            text(&w["before"], 400),
            text(&w["serving"], 400),
            text(&w["candidate"], 400),
        ));
    }
    if diff.get("tasks").is_some() {
        out.push_str(&format!(
            "      tasks: serving {}  candidate {}\n",
            text(&diff["tasks"]["serving"], 400),
            text(&diff["tasks"]["candidate"], 400),
        ));
    }
    out
}

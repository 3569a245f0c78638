//! `paynotify plugins promote TYPE` and `plugins rollback TYPE`: through the running
//! server's admin API, which moves the files and swaps the build under its scan lock.

use serde_json::Value;

use super::admin::AdminClient;

/// What the command asks the server to do.
#[derive(Debug, Clone, Copy)]
pub enum Action {
    /// Make the staged candidate serve.
    Promote,
    /// Put the previous build back.
    Rollback,
}

impl Action {
    fn path(self, plugin_type: &str) -> String {
        let verb = match self {
            Action::Promote => "promote",
            Action::Rollback => "rollback",
        };
        format!("/api/admin/plugins/{plugin_type}/{verb}")
    }

    fn done(self) -> &'static str {
        match self {
            Action::Promote => "promoted",
            Action::Rollback => "rolled back",
        }
    }
}

/// Asks the server, prints what it did (or its refusal, as the command's error).
pub async fn run(
    client: &AdminClient,
    json: bool,
    action: Action,
    plugin_type: &str,
) -> anyhow::Result<()> {
    let v = client.post(&action.path(plugin_type)).await?;
    if json {
        println!("{}", serde_json::to_string(&v)?);
    } else {
        print!("{}", swap_text(action, &v));
    }
    Ok(())
}

/// The answer of a promote or rollback, for people.
fn swap_text(action: Action, v: &Value) -> String {
    let text = |k: &str| v[k].as_str().unwrap_or("-").to_owned();
    let moved: Vec<&str> = v["moved"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mut out = format!("{}: {}\n", text("type"), action.done());
    out.push_str(&format!("serving now: {}\n", text("serving")));
    out.push_str(&format!(
        "previous:    {}\n",
        v["previous"]
            .as_str()
            .map_or("none".to_owned(), |p| format!(
                "{p} (kept as {}.prev.wasm)",
                text("type")
            ))
    ));
    out.push_str("moved:\n");
    for m in moved {
        out.push_str(&format!("  {m}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_promote_names_both_builds_and_every_move() {
        let v = serde_json::json!({
            "type": "recharge",
            "serving": "recharge@1.1.0-double sha256:aaaaaaaaaaaa",
            "previous": "recharge@0.1.0 sha256:bbbbbbbbbbbb",
            "moved": ["recharge.wasm → recharge.prev.wasm", "recharge.next.wasm → recharge.wasm"],
        });
        let text = swap_text(Action::Promote, &v);
        assert_eq!(
            text,
            "recharge: promoted\n\
             serving now: recharge@1.1.0-double sha256:aaaaaaaaaaaa\n\
             previous:    recharge@0.1.0 sha256:bbbbbbbbbbbb (kept as recharge.prev.wasm)\n\
             moved:\n  recharge.wasm → recharge.prev.wasm\n  recharge.next.wasm → recharge.wasm\n"
        );
        let first = serde_json::json!({"type": "vip", "serving": "vip@1 sha256:c", "previous": null, "moved": []});
        assert!(swap_text(Action::Rollback, &first).contains("previous:    none\n"));
        assert_eq!(
            Action::Rollback.path("vip"),
            "/api/admin/plugins/vip/rollback"
        );
    }
}

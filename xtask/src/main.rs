//! `cargo xtask`: the project's automation, so a fresh machine needs two commands.
//!
//! - `cargo xtask run`     build the example plugins and serve them on embedded SQLite
//! - `cargo xtask test`    build every plugin, then run every test
//! - `cargo xtask plugins` only build the plugins (into `target/plugins/` and `plugins.d/`)

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The guest target handlers are built for.
const WASM_TARGET: &str = "wasm32-wasip2";

/// Example handlers: copied into `plugins.d/` for `xtask run`.
const EXAMPLES: &[&str] = &["goods", "recharge", "vip"];

/// Test-only handlers: built with the examples into `target/plugins/` for the tests.
const TEST_ONLY: &[&str] = &["fail-always", "trap", "loop", "oom", "nosy"];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    match args.first().map(String::as_str) {
        Some("plugins") => build_plugins(&root).map(|_| ()),
        Some("run") => run(&root, &args[1..]),
        Some("test") => test(&root, &args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n\
                 commands:\n  \
                 run [ARGS]   build the example plugins into plugins.d/ and run `paynotify serve`\n               \
                 with paynotify.example.toml (ARGS are passed to paynotify)\n  \
                 test [ARGS]  build every plugin, then run every test (ARGS go to cargo test)\n  \
                 plugins      only build the plugins"
            );
            bail!("unknown or missing command");
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn run_cmd(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {cmd:?}");
    let status = cmd.status().with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Installs the wasm target if rustup does not have it yet.
fn ensure_wasm_target() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("rustup is needed to install the wasm32-wasip2 target")?;
    if String::from_utf8_lossy(&installed.stdout).lines().any(|l| l.trim() == WASM_TARGET) {
        return Ok(());
    }
    run_cmd(Command::new("rustup").args(["target", "add", WASM_TARGET]))
}

/// Builds every plugin in one cargo invocation (shared deps compile once), copies the
/// components to `target/plugins/{type}.wasm` with their manifests, and the examples to
/// `plugins.d/`. Returns `target/plugins`.
fn build_plugins(root: &Path) -> Result<PathBuf> {
    ensure_wasm_target()?;
    let mut cmd = cargo();
    cmd.current_dir(root)
        .args(["build", "--profile", "plugin", "--target", WASM_TARGET]);
    for p in EXAMPLES.iter().chain(TEST_ONLY) {
        cmd.args(["-p", p]);
    }
    run_cmd(&mut cmd)?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let built = target_dir.join(WASM_TARGET).join("plugin");
    let out = target_dir.join("plugins");
    let examples = root.join("plugins.d");
    std::fs::create_dir_all(&out)?;
    std::fs::create_dir_all(&examples)?;
    for p in EXAMPLES.iter().chain(TEST_ONLY) {
        let wasm = built.join(format!("{}.wasm", p.replace('-', "_")));
        let manifest = root.join("plugins").join(p).join(format!("{p}.toml"));
        let mut dests = vec![&out];
        if EXAMPLES.contains(p) {
            dests.push(&examples);
        }
        for dest in dests {
            copy_atomically(&wasm, &dest.join(format!("{p}.wasm")))?;
            if manifest.exists() {
                copy_atomically(&manifest, &dest.join(format!("{p}.toml")))?;
            }
        }
    }
    eprintln!("xtask: plugins in {} (examples also in {})", out.display(), examples.display());
    Ok(out)
}

/// Copies via a temporary name and a rename, so a running host never sees half a file.
fn copy_atomically(from: &Path, to: &Path) -> Result<()> {
    let tmp = to.with_extension("partial");
    std::fs::copy(from, &tmp).with_context(|| format!("copy {} → {}", from.display(), tmp.display()))?;
    std::fs::rename(&tmp, to).with_context(|| format!("rename {} → {}", tmp.display(), to.display()))?;
    Ok(())
}

fn run(root: &Path, args: &[String]) -> Result<()> {
    build_plugins(root)?;
    let mut cmd = cargo();
    cmd.current_dir(root).args(["run", "-p", "paynotify", "--"]);
    if args.is_empty() {
        cmd.args(["--config", "paynotify.example.toml", "serve"]);
    } else {
        cmd.args(args);
    }
    run_cmd(&mut cmd)
}

fn test(root: &Path, args: &[String]) -> Result<()> {
    let plugins = build_plugins(root)?;
    let mut cmd = cargo();
    cmd.current_dir(root)
        .env("PAYNOTIFY_TEST_PLUGINS", &plugins)
        .args(["test", "--workspace"]);
    cmd.args(args);
    run_cmd(&mut cmd)
}

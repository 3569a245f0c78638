//! JavaScript handlers (`plugins/recharge-js`): `npm ci` when the lockfile changed, then the
//! project's `node build.mjs` (ComponentizeJS) when a source is newer than the component.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use anyhow::{Context, Result};

use crate::{copy_atomically, run_cmd};

/// JavaScript handler projects under `plugins/`, built into `target/plugins/{name}.wasm`.
pub const JS_PLUGINS: &[&str] = &["recharge-js"];

/// Builds every JS handler into `out` with its manifest.
pub fn build_js_plugins(root: &Path, out: &Path) -> Result<()> {
    for p in JS_PLUGINS {
        let dir = root.join("plugins").join(p);
        let wasm = out.join(format!("{p}.wasm"));
        npm_ci_if_stale(&dir)?;
        let inputs = inputs(&dir, &root.join("wit"))?;
        if newest(&inputs) > modified(&wasm) {
            run_cmd(
                Command::new("node")
                    .current_dir(&dir)
                    .arg("build.mjs")
                    .arg("--out")
                    .arg(&wasm),
            )
            .with_context(|| format!("building {p} needs Node.js >= 18 (node and npm on PATH)"))?;
        } else {
            eprintln!("xtask: {p}: up to date");
        }
        let manifest = dir.join(format!("{p}.toml"));
        if manifest.exists() {
            copy_atomically(&manifest, &out.join(format!("{p}.toml")))?;
        }
    }
    Ok(())
}

/// `npm ci` unless `node_modules` was installed from this very lockfile (npm writes
/// `node_modules/.package-lock.json` at the end of an install).
fn npm_ci_if_stale(dir: &Path) -> Result<()> {
    let installed = modified(&dir.join("node_modules/.package-lock.json"));
    if installed.is_some() && installed >= modified(&dir.join("package-lock.json")) {
        return Ok(());
    }
    run_cmd(
        Command::new("npm")
            .current_dir(dir)
            .args(["ci", "--no-audit", "--no-fund"]),
    )
    .with_context(|| {
        format!(
            "`npm ci` in {} (Node.js >= 18 and npm are needed)",
            dir.display()
        )
    })
}

/// What the component is built from: the sources, the build script, the package files and
/// the WIT.
fn inputs(dir: &Path, wit: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = ["build.mjs", "package.json", "package-lock.json"]
        .iter()
        .map(|f| dir.join(f))
        .collect();
    for d in [dir.join("src"), wit.to_path_buf()] {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let path = entry?.path();
            // The generated entry is rewritten by every build.
            let generated = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if path.is_file() && !generated {
                files.push(path);
            }
        }
    }
    Ok(files)
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn newest(paths: &[PathBuf]) -> Option<SystemTime> {
    paths.iter().filter_map(|p| modified(p)).max()
}

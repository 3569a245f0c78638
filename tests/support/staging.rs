//! Staged candidates in a test server's plugins folder: `{type}.next.wasm` (and its
//! manifest) written the way a deploy tool should, and a look at the folder's files.

use std::collections::BTreeMap;
use std::path::Path;

use crate::{plugin_manifest, plugin_wasm, sha256_hex};

/// Stages built plugin `name` as the candidate of `plugin_type`: `{type}.next.toml` (its
/// manifest; removed when it has none) first, then `{type}.next.wasm` through a temporary
/// file and a rename, so a watcher never sees half a file.
pub fn stage_candidate(dir: &Path, plugin_type: &str, name: &str) {
    let toml = dir.join(format!("{plugin_type}.next.toml"));
    match plugin_manifest(name) {
        Some(m) => {
            std::fs::copy(m, &toml).expect("stage the manifest");
        }
        None => {
            let _ = std::fs::remove_file(&toml);
        }
    }
    let tmp = dir.join(format!(".{plugin_type}.next.wasm.part"));
    std::fs::copy(plugin_wasm(name), &tmp).expect("copy the candidate");
    std::fs::rename(&tmp, dir.join(format!("{plugin_type}.next.wasm"))).expect("stage it");
}

/// Every file in `dir` (hidden ones included), by name, with the SHA-256 of its bytes.
pub fn folder_files(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .expect("read the plugins folder")
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| {
            let bytes = std::fs::read(e.path()).expect("read a plugin file");
            (
                e.file_name().to_string_lossy().into_owned(),
                sha256_hex(&bytes),
            )
        })
        .collect()
}

/// The SHA-256 of built plugin `name`'s `.wasm` and of its manifest (if any), as
/// [`folder_files`] shows them.
pub fn built_files(name: &str) -> (String, Option<String>) {
    let wasm = sha256_hex(&std::fs::read(plugin_wasm(name)).expect("read the plugin"));
    let manifest =
        plugin_manifest(name).map(|m| sha256_hex(&std::fs::read(m).expect("read the manifest")));
    (wasm, manifest)
}

//! Compiled handlers kept on disk: a restart loads the artefact of an unchanged plugin
//! instead of compiling it again.

use std::path::Path;

use wasmtime::component::Component;
use wasmtime::Engine;

use super::world::LoadError;

/// Loads the cached artefact at `cached` if there is one, else compiles `bytes` and
/// writes the artefact there (atomically; a failure to cache is only logged).
pub(super) fn compile_or_load(
    engine: &Engine,
    bytes: &[u8],
    cached: Option<&Path>,
) -> Result<Component, LoadError> {
    if let Some(path) = cached {
        if path.exists() {
            // SAFETY: the cache directory is created private to the host (0700) and its
            // files are written only by `Component::serialize` below, under a name that
            // includes the source's SHA-256 and the engine's compatibility hash.
            match unsafe { Component::deserialize_file(engine, path) } {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "ignoring unusable compiled cache entry")
                }
            }
        }
    }
    super::world::header(bytes)?;
    let component =
        Component::new(engine, bytes).map_err(|e| LoadError::Compile(format!("{e:#}")))?;
    if let Some(path) = cached {
        if let Err(e) = write_cache(path, &component) {
            tracing::warn!(file = %path.display(), error = %e, "cannot cache compiled plugin");
        }
    }
    Ok(component)
}

fn write_cache(path: &Path, component: &Component) -> Result<(), String> {
    let dir = path.parent().ok_or("cache path has no directory")?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| e.to_string())?;
    }
    let bytes = component.serialize().map_err(|e| e.to_string())?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, path).map_err(|e| e.to_string())
}

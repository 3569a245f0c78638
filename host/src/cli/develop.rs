//! What `paynotify try` and `paynotify plugins check` share, the commands a handler's
//! developer runs in their project: the compiled cache they use, the manifest they find,
//! and the line they print while a big component compiles.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use paynotify::plugins::Cache;
use paynotify::Config;

/// Where `try` and `plugins check` keep compiled components between runs.
///
/// With a configuration file, the server's cache (`[plugins] cache_dir`, else beside its
/// SQLite file) when this user may use it: a big handler the server compiled loads at
/// once. Without one (a developer in their project folder), the user's cache folder:
/// defaults would otherwise put `./data/compiled` (megabytes of native code) into the
/// project. `[plugins] cache_dir` set through the environment counts either way. `None`
/// (compile every run, with a note) when no folder can be used.
pub fn compiled_cache(config: &Config, config_file: bool) -> Option<Cache> {
    if config_file {
        if let Ok(Some(cache)) = paynotify::app::open_cache(config) {
            return Some(cache);
        }
    }
    let dir = Cache::default_dir(config.plugins.cache_dir.as_deref(), None)?;
    match Cache::open(&dir) {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("note: not caching compiled handlers: {e}");
            None
        }
    }
}

/// The manifest a handler file is tried or checked with, and the type it is tried as.
#[derive(Debug, Clone)]
pub struct FoundManifest {
    /// The manifest file; `None`: there is none (no grants, default limits).
    pub path: Option<PathBuf>,
    /// The order type: the `.wasm` file's name, or the manifest's when it was found under
    /// the package's name (see [`find_manifest`]).
    pub plugin_type: String,
    /// Where it was looked for, for the message when there is none.
    pub searched: PathBuf,
}

impl FoundManifest {
    /// `manifest: PATH`, or why there is none, for people.
    pub fn describe(&self) -> String {
        match &self.path {
            Some(p) => format!("manifest: {}", p.display()),
            None => format!(
                "manifest: none (no {}.toml beside the file or in {}): nothing granted, default limits",
                self.plugin_type,
                self.searched.display()
            ),
        }
    }
}

/// A manifest named with `--manifest` that does not exist.
#[derive(Debug, thiserror::Error)]
#[error("{0}: no such manifest")]
pub struct NoSuchManifest(pub PathBuf);

/// Finds the manifest of `wasm`: `named` (`--manifest`) when given; else `{type}.toml`
/// beside the file, where the server reads it; else, for a build output inside a
/// project, the first `{type}.toml` in the folders from the file's up to the project's
/// root (the nearest holding `Cargo.toml` or `package.json`), which is where
/// `new-plugin` puts it. `{type}` is the file's name; cargo names the artefact of package
/// `my-shop` `my_shop.wasm`, so in the project `my-shop.toml` is looked for too, and
/// then the type is `my-shop`, the name it is installed under.
pub fn find_manifest(wasm: &Path, named: Option<&Path>) -> Result<FoundManifest, NoSuchManifest> {
    let stem = wasm
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("plugin")
        .to_owned();
    let dir = match wasm.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let found = |path: PathBuf, plugin_type: String, searched: PathBuf| FoundManifest {
        path: Some(path),
        plugin_type,
        searched,
    };
    if let Some(named) = named {
        if !named.is_file() {
            return Err(NoSuchManifest(named.to_path_buf()));
        }
        return Ok(found(named.to_path_buf(), stem, dir));
    }
    let beside = dir.join(format!("{stem}.toml"));
    if beside.is_file() {
        return Ok(found(beside, stem, dir));
    }
    // Absolute, so the walk up does not stop at the end of a relative path.
    let start = std::path::absolute(&dir).unwrap_or_else(|_| dir.clone());
    let Some(root) = start
        .ancestors()
        .find(|d| d.join("Cargo.toml").is_file() || d.join("package.json").is_file())
    else {
        return Ok(FoundManifest {
            path: None,
            plugin_type: stem,
            searched: dir,
        });
    };
    let mut names = vec![stem.clone()];
    if stem.contains('_') {
        names.push(stem.replace('_', "-"));
    }
    for folder in start.ancestors() {
        for name in &names {
            let path = folder.join(format!("{name}.toml"));
            if path.is_file() {
                return Ok(found(path, name.clone(), root.to_path_buf()));
            }
        }
        if folder == root {
            break;
        }
    }
    Ok(FoundManifest {
        path: None,
        plugin_type: stem,
        searched: root.to_path_buf(),
    })
}

/// A private directory under the system's temporary folder, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// `paynotify-{what}-{pid}-{random}`, created 0700 by `create_dir` (a name someone
    /// else made first is an error, not a folder to use).
    pub fn new(what: &str) -> std::io::Result<TempDir> {
        let dir = std::env::temp_dir().join(format!(
            "paynotify-{what}-{}-{}",
            std::process::id(),
            hex::encode(rand::random::<[u8; 6]>())
        ));
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A handler file laid out the way the server reads it, `{type}.wasm` beside
/// `{type}.toml` (and their `.sig` files), so that `plugins check` checks exactly what
/// the server would load: the file itself when its manifest is beside it (or there is
/// none), else links to the file and the manifest found elsewhere, in a temporary folder.
pub struct Staged {
    /// The `.wasm` to check.
    pub wasm: PathBuf,
    /// The links' folder, when there are links.
    dir: Option<TempDir>,
    /// Staged path → the path the user knows, to put back into messages.
    names: Vec<(String, String)>,
}

impl Staged {
    /// Stages `wasm` with `found`.
    pub fn new(wasm: &Path, found: &FoundManifest) -> std::io::Result<Staged> {
        let plain = Staged {
            wasm: wasm.to_path_buf(),
            dir: None,
            names: Vec::new(),
        };
        let Some(manifest) = &found.path else {
            return Ok(plain);
        };
        if wasm.with_extension("toml") == *manifest {
            return Ok(plain);
        }
        let dir = TempDir::new("check")?;
        let mut names = Vec::new();
        let with_sig = |p: &Path| {
            let mut s = p.as_os_str().to_owned();
            s.push(".sig");
            PathBuf::from(s)
        };
        let t = &found.plugin_type;
        for (from, to) in [
            (wasm.to_path_buf(), format!("{t}.wasm")),
            (with_sig(wasm), format!("{t}.wasm.sig")),
            (manifest.clone(), format!("{t}.toml")),
            (with_sig(manifest), format!("{t}.toml.sig")),
        ] {
            if !from.is_file() {
                continue;
            }
            let to = dir.0.join(to);
            link(&std::path::absolute(&from)?, &to)?;
            names.push((to.display().to_string(), from.display().to_string()));
        }
        Ok(Staged {
            wasm: dir.0.join(format!("{t}.wasm")),
            names,
            dir: Some(dir),
        })
    }

    /// `message` with the staged paths replaced by the files they stand for.
    pub fn unstage(&self, message: &str) -> String {
        let mut message = message.to_owned();
        // Longest first: `x.toml.sig` before `x.toml`.
        let mut names = self.names.clone();
        names.sort_by_key(|(staged, _)| std::cmp::Reverse(staged.len()));
        for (staged, real) in &names {
            message = message.replace(staged.as_str(), real);
        }
        if let Some(dir) = &self.dir {
            message = message.replace(&dir.0.display().to_string(), "(staged)");
        }
        message
    }
}

/// A link at `to` to `from` (a copy where there are no symbolic links).
fn link(from: &Path, to: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(from, to)
    }
    #[cfg(not(unix))]
    {
        std::fs::copy(from, to).map(drop)
    }
}

/// Compile throughput of this host's engine, in bytes per second per core: the estimate
/// in the "compiling" line. The 12 MB JavaScript component took 8–11 s on two cores
/// (~15 s of CPU); a Rust handler compiles faster per byte, but is small.
const COMPILE_BYTES_PER_SEC_PER_CORE: f64 = 600_000.0;

/// A compile taking longer than this says so: a cached load is well under it.
const SAY_AFTER: Duration = Duration::from_secs(1);

/// Runs `work` (a compile of `file`, `size` bytes, possibly from `cache`) and, when it is
/// not done within a second, says on stderr what is compiling and roughly for how long:
/// a first compile of a JS component takes seconds, and silence looks like a hang.
pub async fn say_slow_compile<F: Future>(
    file: &Path,
    size: u64,
    cache: Option<&Cache>,
    work: F,
) -> F::Output {
    let mut work = std::pin::pin!(work);
    tokio::select! {
        out = &mut work => return out,
        _ = tokio::time::sleep(SAY_AFTER) => {}
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Said after a second already: never "~0 s" or "~1 s".
    let secs = (size as f64 / (COMPILE_BYTES_PER_SEC_PER_CORE * cores as f64))
        .ceil()
        .max(2.0);
    let name = file.file_name().map_or_else(
        || file.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    match cache {
        Some(c) => eprintln!(
            "compiling {name} (first time, ~{secs:.0} s; then cached in {})…",
            c.dir().display()
        ),
        None => eprintln!("compiling {name} (not cached: every run, ~{secs:.0} s)…"),
    }
    work.await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, "").expect("write");
    }

    #[test]
    fn the_manifest_is_found_beside_the_file_then_up_to_the_project_root() {
        let tmp = tempfile::tempdir().expect("tmp");
        let project = tmp.path().join("my-shop");
        let out = project.join("target/wasm32-wasip2/release");
        let wasm = out.join("my_shop.wasm");
        touch(&wasm);

        // Outside a project: only beside the file.
        let f = find_manifest(&wasm, None).expect("find");
        assert_eq!((f.path, f.plugin_type.as_str()), (None, "my_shop"));
        // A manifest above the project root is not the project's.
        touch(&tmp.path().join("my-shop.toml"));
        touch(&project.join("Cargo.toml"));
        let f = find_manifest(&wasm, None).expect("find");
        assert_eq!(f.path, None);
        assert_eq!(f.searched, project);

        // The project's, under the package's name: that is the type.
        touch(&project.join("my-shop.toml"));
        let f = find_manifest(&wasm, None).expect("find");
        assert_eq!(f.path, Some(project.join("my-shop.toml")));
        assert_eq!(f.plugin_type, "my-shop");

        // Beside the file wins, as on the server.
        touch(&out.join("my_shop.toml"));
        let f = find_manifest(&wasm, None).expect("find");
        assert_eq!(f.path, Some(out.join("my_shop.toml")));
        assert_eq!(f.plugin_type, "my_shop");

        // A named one wins, and must exist.
        let named = tmp.path().join("other.toml");
        assert!(find_manifest(&wasm, Some(&named)).is_err());
        touch(&named);
        let f = find_manifest(&wasm, Some(&named)).expect("find");
        assert_eq!(f.path, Some(named));
    }
}

//! Compiled handlers kept on disk: a restart loads the artefact of an unchanged plugin
//! instead of compiling it again.
//!
//! An artefact is native code that wasmtime maps and runs without checking it, so the
//! cache must never serve one the host did not make from that very `.wasm`. Three things
//! see to it: the cache lives outside the plugins folder (whoever deploys handlers need
//! not be able to write it), the host refuses a cache folder that another user owns or
//! others can write, and every artefact carries an HMAC-SHA256 under a key only this
//! host's user can read, over the source's hash, the engine's hash and the artefact's
//! bytes. A planted, edited or foreign artefact fails the MAC: it is discarded and the
//! wasm compiled again.

use std::io::Write;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use wasmtime::component::Component;
use wasmtime::Engine;

use super::world::LoadError;

/// Bytes that open every artefact file this host writes (format version 1).
const MAGIC: &[u8; 8] = b"PNCWASM1";
const TAG_LEN: usize = 32;
const KEY_FILE: &str = "cache.key";
const KEY_LEN: usize = 32;

/// Why the compiled cache cannot be used (the host refuses to start).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The folder cannot be created or read.
    #[error("compiled cache {}: {source}", dir.display())]
    Io {
        /// The cache folder (or file in it).
        dir: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Another user owns the folder or its key.
    #[error("compiled cache {} is owned by uid {owner}, not by this host's user (uid {me}): another user could plant native code there; use a folder of this user's ([plugins] cache_dir)", path.display())]
    NotOwned {
        /// The folder or key file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The host's effective uid.
        me: u32,
    },
    /// Group or others may write the folder, or read the key.
    #[error("compiled cache {} has mode {mode:o}: {why}; `chmod {fix} {}` it", path.display(), path.display())]
    OpenToOthers {
        /// The folder or key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// What that allows.
        why: &'static str,
        /// The mode to set.
        fix: &'static str,
    },
    /// The key file is not a key this host made.
    #[error("compiled cache key {}: {why} (delete it; the host makes a new one and recompiles)", path.display())]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// A compiled-artefact folder private to this host's user, and the key its artefacts
/// are authenticated with.
#[derive(Clone)]
pub struct Cache {
    dir: PathBuf,
    key: [u8; KEY_LEN],
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Cache {
    /// Where the cache lives when `[plugins] cache_dir` is not set: beside the SQLite
    /// database file, else in the user's cache folder (`$XDG_CACHE_HOME` or
    /// `~/.cache`, under `paynotify/compiled`); never inside the plugins folder.
    pub fn default_dir(configured: Option<&Path>, database_dir: Option<&Path>) -> Option<PathBuf> {
        if let Some(dir) = configured {
            return Some(dir.to_path_buf());
        }
        if let Some(dir) = database_dir {
            return Some(dir.join("compiled"));
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(base.join("paynotify").join("compiled"))
    }

    /// Opens (creating 0700 if needed) the cache folder and its key (created 0600 on
    /// first use), refusing a folder or key another user owns or others can write.
    pub fn open(dir: &Path) -> Result<Cache, CacheError> {
        let io = |source| CacheError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io)?;
            set_mode(dir, 0o700).map_err(io)?;
        }
        check_private(
            dir,
            0o022,
            "others can write it, and so plant native code",
            "700",
        )?;
        let key = load_or_create_key(&dir.join(KEY_FILE))?;
        Ok(Cache {
            dir: dir.to_path_buf(),
            key,
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// True if an artefact for this source and engine is on disk (not yet checked).
    pub(super) fn contains(&self, sha256: &str, engine_hash: &str) -> bool {
        self.artefact_path(sha256, engine_hash).is_file()
    }

    fn artefact_path(&self, sha256: &str, engine_hash: &str) -> PathBuf {
        self.dir.join(format!("{sha256}-{engine_hash}.cwasm"))
    }

    /// The artefact of `bytes` (whose SHA-256 is `sha256`) for an engine whose
    /// compatibility hash is `engine_hash`: loaded if a valid one is cached, else
    /// compiled and cached (a failure to cache is only logged).
    pub(super) fn compile_or_load(
        &self,
        engine: &Engine,
        bytes: &[u8],
        sha256: &str,
        engine_hash: &str,
    ) -> Result<Component, LoadError> {
        let path = self.artefact_path(sha256, engine_hash);
        match std::fs::read(&path) {
            Ok(file) => match self.open_artefact(&file, sha256, engine_hash) {
                // SAFETY: the bytes carry this host's MAC over the source's hash, the
                // engine's hash and themselves: they are what `Component::serialize`
                // produced here from this very source, on an engine of this shape.
                Some(artefact) => match unsafe { Component::deserialize(engine, artefact) } {
                    Ok(c) => {
                        // Marks it as in use, for `sweep` (a failure only shortens its life).
                        let _ = std::fs::File::options()
                            .write(true)
                            .open(&path)
                            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
                        return Ok(c);
                    }
                    Err(e) => {
                        tracing::warn!(file = %path.display(), error = %e, "ignoring unusable compiled cache entry")
                    }
                },
                None => {
                    crate::metrics::plugin_cache_rejected();
                    tracing::warn!(
                        file = %path.display(),
                        "compiled cache entry was not made by this host from this file (planted, edited or from another host): discarded, compiling again"
                    );
                    if let Err(e) = std::fs::remove_file(&path) {
                        tracing::warn!(file = %path.display(), error = %e, "cannot remove the rejected cache entry");
                    }
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read compiled cache entry")
            }
        }
        let component = compile(engine, bytes)?;
        if let Err(e) = self.write(&path, &component, sha256, engine_hash) {
            tracing::warn!(file = %path.display(), error = %e, "cannot cache compiled plugin");
        }
        Ok(component)
    }

    /// Deletes artefacts no build in `keep` (SHA-256s of the `.wasm` files serving) was
    /// made from and that no host has loaded or written for `unused_for`, and temporary
    /// files a crashed write left behind: without it every build ever deployed stays on
    /// disk. Another host on the same folder may still serve a deleted one; it then
    /// compiles it again at its next start, nothing worse. Returns how many went.
    pub fn sweep(&self, keep: &[&str], unused_for: std::time::Duration) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let now = std::time::SystemTime::now();
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let artefact = name.ends_with(".cwasm");
            let leftover = name.contains(".tmp");
            if !(artefact || leftover) || keep.iter().any(|k| name.starts_with(k)) {
                continue;
            }
            let age = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok());
            let limit = if artefact {
                unused_for
            } else {
                std::time::Duration::from_secs(3600)
            };
            if age.is_some_and(|a| a > limit) && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(dir = %self.dir.display(), removed, "compiled cache swept of artefacts no build uses");
        }
        removed
    }

    /// The artefact inside `file` if its tag is this host's, for this source and engine.
    fn open_artefact<'a>(
        &self,
        file: &'a [u8],
        sha256: &str,
        engine_hash: &str,
    ) -> Option<&'a [u8]> {
        let body = file.strip_prefix(MAGIC)?;
        let (tag, artefact) = body.split_at_checked(TAG_LEN)?;
        self.mac(sha256, engine_hash, artefact)
            .verify_slice(tag)
            .ok()?;
        Some(artefact)
    }

    fn mac(&self, sha256: &str, engine_hash: &str, artefact: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        // Lengths first, so no two (source, engine, artefact) triples feed the same bytes.
        for part in [sha256.as_bytes(), engine_hash.as_bytes()] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.update(artefact);
        mac
    }

    fn write(
        &self,
        path: &Path,
        component: &Component,
        sha256: &str,
        engine_hash: &str,
    ) -> Result<(), String> {
        let artefact = component.serialize().map_err(|e| e.to_string())?;
        let tag = self
            .mac(sha256, engine_hash, &artefact)
            .finalize()
            .into_bytes();
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut f = std::fs::File::create(&tmp).map_err(|e| e.to_string())?;
        f.write_all(MAGIC)
            .and_then(|()| f.write_all(&tag))
            .and_then(|()| f.write_all(&artefact))
            .map_err(|e| e.to_string())?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| e.to_string())
    }
}

/// Compiles `bytes` (after a cheap look at its header, so a non-component fails fast).
pub(super) fn compile(engine: &Engine, bytes: &[u8]) -> Result<Component, LoadError> {
    super::world::header(bytes)?;
    Component::new(engine, bytes).map_err(|e| LoadError::Compile(format!("{e:#}")))
}

/// The key at `path`, made (32 random bytes, 0600) if there is none. Two hosts starting
/// at once on one folder agree on one key: each writes its own file and links it in
/// place, and the loser reads the winner's.
fn load_or_create_key(path: &Path) -> Result<[u8; KEY_LEN], CacheError> {
    let io = |source| CacheError::Io {
        dir: path.to_path_buf(),
        source,
    };
    if !path.exists() {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let key: [u8; KEY_LEN] = rand::random();
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let _ = std::fs::remove_file(&tmp);
        let mut f = options.open(&tmp).map_err(io)?;
        f.write_all(&key).and_then(|()| f.sync_all()).map_err(io)?;
        drop(f);
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => return Ok(key),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(e)),
        }
    }
    check_private(
        path,
        0o077,
        "others can read the key, and so forge artefacts",
        "600",
    )?;
    let bytes = std::fs::read(path).map_err(io)?;
    bytes.try_into().map_err(|b: Vec<u8>| CacheError::BadKey {
        path: path.to_path_buf(),
        why: format!("{} bytes, not {KEY_LEN}", b.len()),
    })
}

/// Refuses `path` if another user owns it or its mode has any of `forbidden` bits.
#[cfg(unix)]
fn check_private(
    path: &Path,
    forbidden: u32,
    why: &'static str,
    fix: &'static str,
) -> Result<(), CacheError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|source| CacheError::Io {
        dir: path.to_path_buf(),
        source,
    })?;
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(CacheError::NotOwned {
            path: path.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & forbidden != 0 {
        return Err(CacheError::OpenToOthers {
            path: path.to_path_buf(),
            mode,
            why,
            fix,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_: &Path, _: u32, _: &'static str, _: &'static str) -> Result<(), CacheError> {
    Ok(())
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "paynotify-cache-{name}-{}-{}",
            std::process::id(),
            hex::encode(rand::random::<[u8; 4]>())
        ));
        dir
    }

    #[test]
    fn a_new_folder_is_private_and_keeps_its_key() {
        use std::os::unix::fs::MetadataExt;
        let dir = temp_dir("new");
        let a = Cache::open(&dir).expect("opens");
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        assert_eq!(
            std::fs::metadata(dir.join(KEY_FILE)).unwrap().mode() & 0o777,
            0o600
        );
        let b = Cache::open(&dir).expect("opens again");
        assert_eq!(a.key, b.key, "the key survives a restart");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn folders_and_keys_open_to_others_are_refused() {
        let dir = temp_dir("open");
        Cache::open(&dir).expect("opens");
        set_mode(&dir, 0o777).unwrap();
        let e = Cache::open(&dir)
            .expect_err("world-writable folder")
            .to_string();
        assert!(e.contains("mode 777") && e.contains("chmod 700"), "{e}");
        set_mode(&dir, 0o700).unwrap();
        set_mode(&dir.join(KEY_FILE), 0o644).unwrap();
        let e = Cache::open(&dir).expect_err("readable key").to_string();
        assert!(e.contains("mode 644") && e.contains("chmod 600"), "{e}");
        set_mode(&dir.join(KEY_FILE), 0o600).unwrap();
        std::fs::write(dir.join(KEY_FILE), b"short").unwrap();
        let e = Cache::open(&dir).expect_err("short key").to_string();
        assert!(e.contains("5 bytes"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_sweep_keeps_what_serves_and_what_was_used_lately() {
        let dir = temp_dir("sweep");
        let cache = Cache::open(&dir).expect("opens");
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(40 * 86_400);
        let file = |name: &str, when: std::time::SystemTime| {
            let p = dir.join(name);
            std::fs::write(&p, b"x").unwrap();
            std::fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(when)
                .unwrap();
        };
        file("aaaa-e.cwasm", old);
        file("bbbb-e.cwasm", old);
        file("cccc-e.cwasm", std::time::SystemTime::now());
        file("dddd-e.tmp123", old);
        let month = std::time::Duration::from_secs(30 * 86_400);
        assert_eq!(cache.sweep(&["aaaa"], month), 2);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["aaaa-e.cwasm", "cache.key", "cccc-e.cwasm"]);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn tags_bind_source_engine_and_bytes() {
        let dir = temp_dir("tags");
        let cache = Cache::open(&dir).expect("opens");
        let other = Cache::open(&temp_dir("other")).expect("opens");
        let artefact = b"native code".to_vec();
        let tag = cache.mac("aa", "e1", &artefact).finalize().into_bytes();
        let file = [&MAGIC[..], &tag[..], &artefact[..]].concat();
        assert_eq!(cache.open_artefact(&file, "aa", "e1"), Some(&artefact[..]));
        assert_eq!(
            cache.open_artefact(&file, "ab", "e1"),
            None,
            "another source"
        );
        assert_eq!(
            cache.open_artefact(&file, "aa", "e2"),
            None,
            "another engine"
        );
        assert_eq!(
            other.open_artefact(&file, "aa", "e1"),
            None,
            "another host's key"
        );
        let mut edited = file.clone();
        *edited.last_mut().unwrap() ^= 1;
        assert_eq!(cache.open_artefact(&edited, "aa", "e1"), None, "edited");
        assert_eq!(
            cache.open_artefact(&artefact, "aa", "e1"),
            None,
            "no header"
        );
        std::fs::remove_dir_all(&dir).ok();
        std::fs::remove_dir_all(other.dir()).ok();
    }
}

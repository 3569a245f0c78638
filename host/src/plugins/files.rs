//! A handler's files in the plugins folder: `{type}.wasm`, its manifest `{type}.toml`,
//! and their detached signatures `{type}.wasm.sig` / `{type}.toml.sig`; what they are
//! on disk (to notice a change cheaply) and what they hold (read once, then checked,
//! hashed, compiled and parsed from those same bytes).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::world::LoadError;

/// The four paths of one handler.
#[derive(Debug, Clone)]
pub(super) struct Paths {
    pub wasm: PathBuf,
    pub manifest: PathBuf,
    pub wasm_sig: PathBuf,
    pub manifest_sig: PathBuf,
}

impl Paths {
    /// The files beside `wasm`.
    pub fn of(wasm: &Path) -> Paths {
        let with_sig = |p: &Path| {
            let mut s = p.as_os_str().to_owned();
            s.push(".sig");
            PathBuf::from(s)
        };
        let manifest = wasm.with_extension("toml");
        Paths {
            wasm_sig: with_sig(wasm),
            manifest_sig: with_sig(&manifest),
            wasm: wasm.to_path_buf(),
            manifest,
        }
    }

    fn all(&self) -> [&Path; 4] {
        [
            &self.wasm,
            &self.manifest,
            &self.wasm_sig,
            &self.manifest_sig,
        ]
    }
}

/// What the filesystem says about a handler's files, to skip reading unchanged ones.
///
/// Size and mtime alone miss a replacement that keeps both (`cp -p`, `rsync -t`, tar);
/// a new file has a new inode, and writing or renaming onto a file moves its ctime,
/// which no user can set back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FileStamp(Vec<Option<Stat>>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stat {
    len: u64,
    mtime: Option<std::time::SystemTime>,
    dev: u64,
    ino: u64,
    ctime: (i64, i64),
}

impl FileStamp {
    /// The stamp of `paths` now (a missing file is part of the stamp too).
    pub fn of(paths: &Paths) -> FileStamp {
        FileStamp(paths.all().iter().map(|p| stat(p)).collect())
    }
}

#[cfg(unix)]
fn stat(path: &Path) -> Option<Stat> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stat {
        len: m.len(),
        mtime: m.modified().ok(),
        dev: m.dev(),
        ino: m.ino(),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

#[cfg(not(unix))]
fn stat(path: &Path) -> Option<Stat> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stat {
        len: m.len(),
        mtime: m.modified().ok(),
        dev: 0,
        ino: 0,
        ctime: (0, 0),
    })
}

/// The bytes of a handler's files, read once.
#[derive(Debug, Clone)]
pub(super) struct Files {
    pub paths: Paths,
    pub wasm: Vec<u8>,
    /// `None`: there is no manifest (no grants, default limits).
    pub manifest: Option<Vec<u8>>,
    pub wasm_sig: Option<Vec<u8>>,
    pub manifest_sig: Option<Vec<u8>>,
}

impl Files {
    /// Reads the files; only the `.wasm` must exist.
    pub fn read(paths: &Paths) -> Result<Files, LoadError> {
        let optional = |p: &Path| match std::fs::read(p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(LoadError::Compile(format!(
                "cannot read {}: {e}",
                p.display()
            ))),
        };
        Ok(Files {
            wasm: std::fs::read(&paths.wasm)
                .map_err(|e| LoadError::Compile(format!("cannot read: {e}")))?,
            manifest: optional(&paths.manifest)?,
            wasm_sig: optional(&paths.wasm_sig)?,
            manifest_sig: optional(&paths.manifest_sig)?,
            paths: paths.clone(),
        })
    }

    /// SHA-256 of the `.wasm`.
    pub fn wasm_sha256(&self) -> String {
        hex::encode(Sha256::digest(&self.wasm))
    }

    /// SHA-256 over all four files (each length-prefixed, absent ones marked): any change
    /// to any of them, a new signature included, is a new build to load.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for part in [
            Some(&self.wasm),
            self.manifest.as_ref(),
            self.wasm_sig.as_ref(),
            self.manifest_sig.as_ref(),
        ] {
            match part {
                Some(b) => {
                    h.update([1]);
                    h.update((b.len() as u64).to_be_bytes());
                    h.update(b);
                }
                None => h.update([0]),
            }
        }
        hex::encode(h.finalize())
    }
}

/// The file name of `path`, for messages.
pub(super) fn name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// `{type}.wasm` files in `dir`, by type. Hidden and editor temporary files are skipped.
pub(super) fn plugin_files(dir: &Path) -> Result<BTreeMap<String, PathBuf>, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut files = BTreeMap::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("wasm") || !path.is_file() {
            continue;
        }
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if stem.starts_with('.') || !crate::names::is_simple_name(stem) {
            continue;
        }
        files.insert(stem.to_owned(), path);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_same_size_same_mtime_replacement_changes_the_stamp() {
        let dir = std::env::temp_dir().join(format!(
            "paynotify-stamp-{}-{}",
            std::process::id(),
            hex::encode(rand::random::<[u8; 4]>())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let wasm = dir.join("goods.wasm");
        std::fs::write(&wasm, b"aaaa").unwrap();
        let paths = Paths::of(&wasm);
        assert_eq!(paths.wasm_sig, dir.join("goods.wasm.sig"));
        assert_eq!(paths.manifest_sig, dir.join("goods.toml.sig"));
        let before = FileStamp::of(&paths);
        let mtime = std::fs::metadata(&wasm).unwrap().modified().unwrap();
        // What `cp -p` does: new bytes, same size, the old mtime put back.
        let other = dir.join("other");
        std::fs::write(&other, b"bbbb").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&other)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        std::fs::rename(&other, &wasm).unwrap();
        let m = std::fs::metadata(&wasm).unwrap();
        assert_eq!((m.len(), m.modified().unwrap()), (4, mtime));
        assert_ne!(FileStamp::of(&paths), before);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn the_fingerprint_covers_every_file_and_their_absence() {
        let paths = Paths::of(Path::new("x.wasm"));
        let files = |m: Option<&[u8]>, s: Option<&[u8]>| Files {
            paths: paths.clone(),
            wasm: b"w".to_vec(),
            manifest: m.map(<[u8]>::to_vec),
            wasm_sig: s.map(<[u8]>::to_vec),
            manifest_sig: None,
        };
        let prints = [
            files(None, None).fingerprint(),
            files(Some(b""), None).fingerprint(),
            files(None, Some(b"")).fingerprint(),
            files(Some(b"a"), None).fingerprint(),
        ];
        for (i, a) in prints.iter().enumerate() {
            for b in &prints[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}

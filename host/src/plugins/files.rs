//! A handler's files in the plugins folder: `{type}.wasm`, its manifest `{type}.toml`,
//! and their detached signatures `{type}.wasm.sig` / `{type}.toml.sig`; what they are
//! on disk (to notice a change cheaply) and what they hold (read once, then checked,
//! hashed, compiled and parsed from those same bytes).
//!
//! A type has up to three such sets ([`Stage`]): the serving one, a staged candidate
//! `{type}.next.*`, and the previous build `{type}.prev.*` kept for a rollback.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::world::LoadError;
use crate::signers::{AllowedSigners, SignatureError, Signer};

/// Which of a type's file sets: what serves, what is staged, what served before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// `{type}.wasm`: loaded by every scan, serves the type's orders.
    Serving,
    /// `{type}.next.wasm`: loaded by every scan as the type's candidate; serves nothing
    /// until promoted.
    Next,
    /// `{type}.prev.wasm`: never loaded by a scan, only kept for a rollback.
    Prev,
}

impl Stage {
    /// What the stage adds to the type in file names: `""`, `".next"`, `".prev"`.
    pub fn suffix(self) -> &'static str {
        match self {
            Stage::Serving => "",
            Stage::Next => ".next",
            Stage::Prev => ".prev",
        }
    }

    /// The type as this stage's files name it (`recharge`, `recharge.next`, …): the
    /// label of its history events, metrics and scan report entries.
    pub fn label(self, plugin_type: &str) -> String {
        format!("{plugin_type}{}", self.suffix())
    }

    /// The type a label or file stem names: `recharge` for `recharge`, `recharge.next`
    /// and `recharge.prev`.
    pub fn type_of(label: &str) -> &str {
        [Stage::Next, Stage::Prev]
            .iter()
            .find_map(|s| label.strip_suffix(s.suffix()))
            .unwrap_or(label)
    }
}

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

    /// The files of `plugin_type`'s `stage` in `dir` (`{dir}/{type}{suffix}.wasm`, …).
    pub fn in_dir(dir: &Path, plugin_type: &str, stage: Stage) -> Paths {
        Paths::of(&dir.join(format!("{}.wasm", stage.label(plugin_type))))
    }

    /// The four paths, `.wasm` first; the other three are optional.
    pub fn all(&self) -> [&Path; 4] {
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

    /// A stamp no files on disk have: the next scan reads them whatever they are.
    pub fn unknown() -> FileStamp {
        FileStamp(Vec::new())
    }

    /// The stamp of `paths` now, if they hold the build whose fingerprint is
    /// `fingerprint` (read and hashed to make sure; the stamp is taken first, so a change
    /// after the read still shows as a new stamp).
    pub fn of_build(paths: &Paths, fingerprint: &str) -> Option<FileStamp> {
        let stamp = FileStamp::of(paths);
        let read = Files::read(paths).ok()?;
        (read.fingerprint() == fingerprint).then_some(stamp)
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

/// Largest `.wasm` read (a JavaScript component is ~12 MB): a bigger file is refused
/// rather than read whole into memory.
pub(super) const MAX_WASM_BYTES: u64 = 128 * 1024 * 1024;
/// Largest manifest read.
const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;
/// Largest signature read (an SSHSIG of an RSA-4096 key is under 2 KiB).
const MAX_SIG_BYTES: u64 = 64 * 1024;

impl Files {
    /// Reads the files; only the `.wasm` must exist. Whoever can write the folder chooses
    /// these files, so each is read only if it is a regular file of bounded size, and
    /// opened without blocking: a FIFO named `goods.wasm.sig` must not hang the scan.
    pub fn read(paths: &Paths) -> Result<Files, LoadError> {
        let read = |p: &Path, max: u64| {
            read_capped(p, max)
                .map_err(|e| LoadError::Unreadable(format!("cannot read {}: {e}", p.display())))
        };
        Ok(Files {
            wasm: read(&paths.wasm, MAX_WASM_BYTES)?.ok_or_else(|| {
                LoadError::Unreadable(format!("cannot read {}: it is gone", paths.wasm.display()))
            })?,
            manifest: read(&paths.manifest, MAX_MANIFEST_BYTES)?,
            wasm_sig: read(&paths.wasm_sig, MAX_SIG_BYTES)?,
            manifest_sig: read(&paths.manifest_sig, MAX_SIG_BYTES)?,
            paths: paths.clone(),
        })
    }

    /// Checks both signatures against `allowed` and says who signed the `.wasm`: its
    /// signature always, the manifest's whenever there is a manifest (it grants the
    /// capabilities), and no orphan manifest signature (a signed manifest that was removed
    /// would drop the grants, and the limits, ops vouched for).
    pub fn verify(&self, allowed: &AllowedSigners) -> Result<Signer, SignatureError> {
        let now = crate::time::now_ms();
        let check = |path: &Path, bytes: &[u8], sig: &Option<Vec<u8>>| {
            let file = name(path);
            let sig = sig
                .as_ref()
                .ok_or_else(|| SignatureError::Missing { file: file.clone() })?;
            allowed.verify(&file, bytes, sig, now)
        };
        let signer = check(&self.paths.wasm, &self.wasm, &self.wasm_sig)?;
        match &self.manifest {
            Some(manifest) => {
                check(&self.paths.manifest, manifest, &self.manifest_sig)?;
            }
            None if self.manifest_sig.is_some() => {
                return Err(SignatureError::Orphan {
                    file: name(&self.paths.manifest),
                })
            }
            None => {}
        }
        Ok(signer)
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

/// The bytes of `path`, `None` if there is no such file; an error if it is not a regular
/// file or is larger than `max` bytes.
fn read_capped(path: &Path, max: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(
        &mut options,
        rustix::fs::OFlags::NONBLOCK.bits() as i32,
    );
    let file = match options.open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // Checked on the open handle, so the file cannot be swapped after the check.
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if meta.len() > max {
        return Err(std::io::Error::other(format!(
            "{} bytes, more than the {max} a plugin file may have",
            meta.len()
        )));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::other(format!(
            "grew past the {max} bytes a plugin file may have while being read"
        )));
    }
    Ok(Some(bytes))
}

/// The file name of `path`, for messages.
pub(super) fn name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// The `.wasm` files of a plugins folder, by type and stage.
#[derive(Debug, Default)]
pub(super) struct Folder {
    /// `{type}.wasm`, by type.
    pub serving: BTreeMap<String, PathBuf>,
    /// `{type}.next.wasm`, by type.
    pub next: BTreeMap<String, PathBuf>,
}

impl Folder {
    /// The files of `stage` ([`Stage::Prev`] files are never listed: they never load).
    pub fn of(&self, stage: Stage) -> &BTreeMap<String, PathBuf> {
        static NONE: BTreeMap<String, PathBuf> = BTreeMap::new();
        match stage {
            Stage::Serving => &self.serving,
            Stage::Next => &self.next,
            Stage::Prev => &NONE,
        }
    }
}

/// The `{type}.wasm` and `{type}.next.wasm` files in `dir`. Hidden and editor temporary
/// files, `{type}.prev.wasm` and any other dotted name are skipped.
pub(super) fn plugin_files(dir: &Path) -> Result<Folder, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut folder = Folder::default();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("wasm") || !path.is_file() {
            continue;
        }
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let (plugin_type, stage) = match stem.strip_suffix(Stage::Next.suffix()) {
            Some(t) => (t, Stage::Next),
            None => (stem, Stage::Serving),
        };
        if plugin_type.starts_with('.') || !crate::names::is_simple_name(plugin_type) {
            continue;
        }
        let map = match stage {
            Stage::Next => &mut folder.next,
            _ => &mut folder.serving,
        };
        map.insert(plugin_type.to_owned(), path);
    }
    Ok(folder)
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
    fn fifos_and_oversized_files_are_refused_without_blocking() {
        let dir = std::env::temp_dir().join(format!(
            "paynotify-read-{}-{}",
            std::process::id(),
            hex::encode(rand::random::<[u8; 4]>())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let wasm = dir.join("goods.wasm");
        std::fs::write(&wasm, b"\0asm").unwrap();
        let paths = Paths::of(&wasm);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &paths.wasm_sig,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let e = Files::read(&paths)
            .expect_err("a FIFO is not read")
            .to_string();
        assert!(e.contains("goods.wasm.sig: not a regular file"), "{e}");
        std::fs::remove_file(&paths.wasm_sig).unwrap();
        std::fs::write(&paths.manifest_sig, vec![b'x'; 64 * 1024 + 1]).unwrap();
        let e = Files::read(&paths).expect_err("too big").to_string();
        assert!(e.contains("65537 bytes, more than the 65536"), "{e}");
        std::fs::remove_file(&paths.manifest_sig).unwrap();
        let files = Files::read(&paths).expect("reads");
        assert_eq!(
            (files.wasm.as_slice(), files.manifest.is_none()),
            (&b"\0asm"[..], true)
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_folder_lists_serving_builds_and_candidates_never_previous_builds() {
        let dir = std::env::temp_dir().join(format!(
            "paynotify-folder-{}-{}",
            std::process::id(),
            hex::encode(rand::random::<[u8; 4]>())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        for name in [
            "goods.wasm",
            "goods.next.wasm",
            "goods.prev.wasm",
            "vip.next.wasm",
            "a.b.wasm",
            ".next.wasm",
            ".goods.wasm.part",
            "goods.next.toml",
        ] {
            std::fs::write(dir.join(name), b"x").unwrap();
        }
        let folder = plugin_files(&dir).expect("listed");
        let keys = |m: &BTreeMap<String, PathBuf>| m.keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(folder.of(Stage::Serving)), ["goods"]);
        assert_eq!(keys(folder.of(Stage::Next)), ["goods", "vip"]);
        assert!(folder.of(Stage::Prev).is_empty());
        assert_eq!(folder.next["goods"], dir.join("goods.next.wasm"));
        let next = Paths::in_dir(&dir, "goods", Stage::Next);
        assert_eq!(next.manifest, dir.join("goods.next.toml"));
        assert_eq!(next.manifest_sig, dir.join("goods.next.toml.sig"));
        assert_eq!(Stage::Prev.label("goods"), "goods.prev");
        assert_eq!(Stage::type_of("goods.next"), "goods");
        assert_eq!(Stage::type_of("goods"), "goods");
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

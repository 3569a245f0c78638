//! A small disk for SQLite fault tests: a tmpfs of a few MiB mounted on a temporary
//! directory (needs root, or `CAP_SYS_ADMIN`), which a test fills up and frees again.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs; unmounted (lazily, in case a process still has files open) and
/// removed when dropped.
pub struct SmallDisk {
    dir: tempfile::TempDir,
    filler: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `mib` MiB; `Err` says why it cannot be had here.
    pub fn mount(mib: u32) -> Result<SmallDisk, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cannot mount a tmpfs (root needed): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let filler = dir.path().join("filler");
        Ok(SmallDisk { dir, filler })
    }

    /// The mounted directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file until the disk has no room left; returns the bytes it took.
    pub fn fill(&self) -> u64 {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.filler)
            .expect("filler file");
        let block = vec![0x5a_u8; 64 * 1024];
        let mut written = 0u64;
        // Whole blocks, then what fits of a last one, byte runs down to one.
        let mut size = block.len();
        while size > 0 {
            match f.write(&block[..size]) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(_) => size /= 2,
            }
        }
        let _ = f.sync_all();
        written
    }

    /// Gives the disk `mib` MiB in all (space freed as an operator would, whatever
    /// filled it).
    pub fn grow(&self, mib: u32) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={mib}m")])
            .arg(self.dir.path())
            .output()
            .expect("run mount");
        assert!(out.status.success(), "remount: {out:?}");
    }

    /// Removes what [`SmallDisk::fill`] wrote.
    pub fn free(&self) {
        let _ = std::fs::remove_file(&self.filler);
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

//! The file moves of a promote and a rollback: renames (and links) in the plugins folder,
//! journaled so that a failure half-way puts back everything already moved.
//!
//! Each of a handler's four files (`.wasm`, `.toml`, `.wasm.sig`, `.toml.sig`) moves on its
//! own, the `.wasm` last. The serving `{type}.wasm` is never missing while they move: it is
//! linked (or copied) to its new name first, then replaced by a rename, which is atomic on
//! POSIX, so a scan of another host sharing the folder sees the old or the new file, never
//! none. Files to be thrown away are first renamed to hidden names (no scan looks at them)
//! and deleted only once every move has succeeded.

use std::path::{Path, PathBuf};

use super::files::Paths;

/// One step done, and how to undo it.
#[derive(Debug)]
enum Step {
    /// `from` was renamed to `to`: undone by renaming it back.
    Renamed { from: PathBuf, to: PathBuf },
    /// `to` was made a second name (or a copy) of `from`: undone by removing `to`, or,
    /// when `from` has since been replaced and put back as missing, by renaming `to` back
    /// to `from`.
    Linked { from: PathBuf, to: PathBuf },
}

/// The moves done so far: [`Moves::commit`] keeps them, [`Moves::undo`] puts the folder
/// back as it was.
#[derive(Debug, Default)]
pub(super) struct Moves {
    done: Vec<Step>,
    /// Hidden files holding what the moves replaced: deleted on commit.
    discarded: Vec<PathBuf>,
}

/// A move failed; what was moved before was put back, or `undo` says what was not.
#[derive(Debug, thiserror::Error)]
#[error("{failed}{undo}")]
pub(super) struct MoveError {
    failed: String,
    /// Empty when everything was put back; else which files could not be.
    undo: String,
}

impl Moves {
    /// What was moved, `from → to`, by file name, in order (hidden names left out).
    pub fn moved(&self) -> Vec<String> {
        self.done
            .iter()
            .filter_map(|s| {
                let (Step::Renamed { from, to } | Step::Linked { from, to }) = s;
                (!hidden(from) && !hidden(to)).then(|| format!("{} → {}", name(from), name(to)))
            })
            .collect()
    }

    /// Keeps the moves: deletes the files they replaced (a failure there only leaves a
    /// hidden file behind, and is logged).
    pub fn commit(self) {
        for path in &self.discarded {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(file = %path.display(), error = %e, "cannot delete a replaced plugin file");
            }
        }
    }

    /// Puts back everything moved, newest first; what could not be put back, named.
    fn undo(self) -> Result<(), String> {
        let mut left = Vec::new();
        for step in self.done.into_iter().rev() {
            let undone = match &step {
                Step::Renamed { from, to } => std::fs::rename(to, from),
                Step::Linked { from, to } if from.exists() => std::fs::remove_file(to),
                Step::Linked { from, to } => std::fs::rename(to, from),
            };
            if let Err(e) = undone {
                let (Step::Renamed { from, to } | Step::Linked { from, to }) = &step;
                left.push(format!("{} (now {}): {e}", from.display(), to.display()));
            }
        }
        if left.is_empty() {
            Ok(())
        } else {
            Err(left.join("; "))
        }
    }

    fn rename(&mut self, from: &Path, to: &Path) -> Result<(), String> {
        std::fs::rename(from, to)
            .map_err(|e| format!("cannot rename {} to {}: {e}", from.display(), to.display()))?;
        self.done.push(Step::Renamed {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
        });
        Ok(())
    }

    /// Makes `to` a second name of `from` (a copy where the filesystem has no hard links).
    fn link(&mut self, from: &Path, to: &Path) -> Result<(), String> {
        if std::fs::hard_link(from, to).is_err() {
            std::fs::copy(from, to).map_err(|e| {
                // A partial copy must not stay behind.
                let _ = std::fs::remove_file(to);
                format!("cannot copy {} to {}: {e}", from.display(), to.display())
            })?;
        }
        self.done.push(Step::Linked {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
        });
        Ok(())
    }

    /// Renames `path` to a hidden name, deleted on commit.
    fn discard(&mut self, path: &Path, why: &str) -> Result<(), String> {
        let hidden = hidden_name(path, why);
        self.rename(path, &hidden)?;
        self.discarded.push(hidden);
        Ok(())
    }

    /// Undoes everything on `failed`, into the error to report.
    fn fail(self, failed: String) -> MoveError {
        tracing::error!(error = %failed, "moving plugin files failed; putting back what was moved");
        let undo = match self.undo() {
            Ok(()) => "; everything moved was put back".to_owned(),
            Err(left) => {
                tracing::error!(left = %left, "cannot put back every plugin file");
                format!("; could NOT put back: {left}")
            }
        };
        MoveError { failed, undo }
    }
}

/// A promote's moves: the `serving` files become the `prev` files (the old `prev` files
/// are deleted) and the `next` files become the `serving` ones. A file absent on one side
/// is absent on the other afterwards.
pub(super) fn shift(next: &Paths, serving: &Paths, prev: &Paths) -> Result<Moves, MoveError> {
    let mut moves = Moves::default();
    for i in wasm_last() {
        let (n, s, p) = (next.all()[i], serving.all()[i], prev.all()[i]);
        if let Err(e) = shift_one(&mut moves, n, s, p) {
            return Err(moves.fail(e));
        }
    }
    Ok(moves)
}

fn shift_one(moves: &mut Moves, next: &Path, serving: &Path, prev: &Path) -> Result<(), String> {
    if exists(prev) {
        moves.discard(prev, "replaced")?;
    }
    let was_serving = exists(serving);
    if was_serving {
        moves.link(serving, prev)?;
    }
    if exists(next) {
        moves.rename(next, serving)?;
    } else if was_serving {
        moves.discard(serving, "kept-as-prev")?;
    }
    Ok(())
}

/// A rollback's moves: the `serving` and `prev` files change places. A file absent on one
/// side is absent on the other afterwards.
pub(super) fn swap(serving: &Paths, prev: &Paths) -> Result<Moves, MoveError> {
    let mut moves = Moves::default();
    for i in wasm_last() {
        let (s, p) = (serving.all()[i], prev.all()[i]);
        if let Err(e) = swap_one(&mut moves, s, p) {
            return Err(moves.fail(e));
        }
    }
    Ok(moves)
}

fn swap_one(moves: &mut Moves, serving: &Path, prev: &Path) -> Result<(), String> {
    match (exists(serving), exists(prev)) {
        (true, true) => {
            let parked = hidden_name(serving, "swapping");
            moves.link(serving, &parked)?;
            moves.rename(prev, serving)?;
            moves.rename(&parked, prev)
        }
        (false, true) => moves.rename(prev, serving),
        (true, false) => moves.rename(serving, prev),
        (false, false) => Ok(()),
    }
}

/// The indexes of [`Paths::all`], the `.wasm` (index 0) last: its arrival is what tells a
/// watcher a new build is there.
fn wasm_last() -> [usize; 4] {
    [1, 2, 3, 0]
}

/// Whether there is something at `path` (a broken link counts: it must move too).
fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// `.{name}.{why}.{pid}` beside `path`: hidden, so no scan or watcher looks at it.
fn hidden_name(path: &Path, why: &str) -> PathBuf {
    path.with_file_name(format!(".{}.{why}.{}", name(path), std::process::id()))
}

fn hidden(path: &Path) -> bool {
    name(path).starts_with('.')
}

fn name(path: &Path) -> String {
    super::files::name(path)
}

#[cfg(test)]
mod tests {
    use super::super::files::Stage;
    use super::*;
    use std::collections::BTreeMap;

    fn folder() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "paynotify-moves-{}-{}",
            std::process::id(),
            hex::encode(rand::random::<[u8; 4]>())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Every file in `dir`, by name, with its content.
    fn listing(dir: &Path) -> BTreeMap<String, String> {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| {
                let content = std::fs::read_to_string(e.path()).unwrap_or_else(|_| "<dir>".into());
                (e.file_name().to_string_lossy().into_owned(), content)
            })
            .collect()
    }

    fn write(dir: &Path, files: &[(&str, &str)]) {
        for (n, c) in files {
            std::fs::write(dir.join(n), c).unwrap();
        }
    }

    fn expect(files: &[(&str, &str)]) -> BTreeMap<String, String> {
        files
            .iter()
            .map(|(n, c)| (n.to_string(), c.to_string()))
            .collect()
    }

    fn paths(dir: &Path) -> (Paths, Paths, Paths) {
        (
            Paths::in_dir(dir, "r", Stage::Next),
            Paths::in_dir(dir, "r", Stage::Serving),
            Paths::in_dir(dir, "r", Stage::Prev),
        )
    }

    #[test]
    fn a_promote_moves_every_file_and_leaves_no_stray_manifest() {
        let dir = folder();
        // The candidate has no manifest; the serving build has one, the old prev a
        // signature the serving build lacks.
        write(
            &dir,
            &[
                ("r.next.wasm", "N"),
                ("r.wasm", "S"),
                ("r.toml", "St"),
                ("r.prev.wasm", "P"),
                ("r.prev.toml", "Pt"),
                ("r.prev.wasm.sig", "Ps"),
            ],
        );
        let (n, s, p) = paths(&dir);
        let moves = shift(&n, &s, &p).expect("moves");
        assert!(moves.moved().contains(&"r.next.wasm → r.wasm".to_owned()));
        moves.commit();
        assert_eq!(
            listing(&dir),
            expect(&[("r.wasm", "N"), ("r.prev.wasm", "S"), ("r.prev.toml", "St")])
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_rollback_swaps_and_a_second_one_swaps_back() {
        let dir = folder();
        write(
            &dir,
            &[
                ("r.wasm", "N"),
                ("r.prev.wasm", "S"),
                ("r.prev.toml", "St"),
                ("r.wasm.sig", "Ns"),
            ],
        );
        let before = listing(&dir);
        let (_, s, p) = paths(&dir);
        swap(&s, &p).expect("swap").commit();
        assert_eq!(
            listing(&dir),
            expect(&[
                ("r.wasm", "S"),
                ("r.toml", "St"),
                ("r.prev.wasm", "N"),
                ("r.prev.wasm.sig", "Ns"),
            ])
        );
        swap(&s, &p).expect("swap back").commit();
        assert_eq!(listing(&dir), before);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_failure_half_way_puts_everything_back() {
        let dir = folder();
        write(
            &dir,
            &[
                ("r.next.wasm", "N"),
                ("r.next.toml", "Nt"),
                ("r.wasm", "S"),
                ("r.toml", "St"),
                ("r.prev.wasm", "P"),
            ],
        );
        // The `.wasm` moves last; a directory where its signature goes makes the step
        // before it fail after the manifests have moved.
        std::fs::create_dir(dir.join("r.wasm.sig")).unwrap();
        std::fs::write(dir.join("r.wasm.sig").join("x"), "keep me non-empty").unwrap();
        let before = listing(&dir);
        let (n, s, p) = paths(&dir);
        let e = shift(&n, &s, &p).expect_err("fails").to_string();
        assert!(e.contains("r.wasm.sig"), "{e}");
        assert!(e.contains("everything moved was put back"), "{e}");
        assert_eq!(listing(&dir), before);
        std::fs::remove_dir_all(&dir).ok();

        let dir = folder();
        write(
            &dir,
            &[
                ("r.wasm", "N"),
                ("r.toml", "Nt"),
                ("r.toml.sig", "Nts"),
                ("r.prev.wasm", "S"),
            ],
        );
        // A directory cannot replace a file: the manifest's signature fails to swap after
        // the manifest has moved.
        std::fs::create_dir(dir.join("r.prev.toml.sig")).unwrap();
        std::fs::write(dir.join("r.prev.toml.sig").join("x"), "keep me non-empty").unwrap();
        let before = listing(&dir);
        let (_, s, p) = paths(&dir);
        let e = swap(&s, &p).expect_err("fails").to_string();
        assert!(e.contains("r.prev.toml.sig"), "{e}");
        assert!(e.contains("everything moved was put back"), "{e}");
        assert_eq!(listing(&dir), before);
        std::fs::remove_dir_all(&dir).ok();
    }
}

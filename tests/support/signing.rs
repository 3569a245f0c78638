//! Handler signing as ops do it: keys made and files signed with the real `ssh-keygen`
//! (package `openssh-client`, which `cargo xtask test` installs).

use std::path::{Path, PathBuf};
use std::process::Command;

/// An ed25519 key pair made by ssh-keygen in `dir`.
pub struct Key {
    /// The private key file.
    pub private: PathBuf,
    /// The public key's line (`ssh-ed25519 AAAA… comment`), as `allowed_signers` lists it.
    pub public_line: String,
    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
}

/// Runs `ssh-keygen` with `args`; panics unless it succeeds.
pub fn ssh_keygen(args: &[&str]) -> std::process::Output {
    let out = Command::new("ssh-keygen")
        .args(args)
        .output()
        .expect("run ssh-keygen (package openssh-client; `cargo xtask test` installs it)");
    assert!(
        out.status.success(),
        "ssh-keygen {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A new ed25519 key pair `name` in `dir`, without a passphrase.
pub fn key(dir: &Path, name: &str) -> Key {
    let private = dir.join(name);
    let p = private.to_str().expect("utf-8 path");
    ssh_keygen(&["-q", "-t", "ed25519", "-N", "", "-C", name, "-f", p]);
    let public_line = std::fs::read_to_string(format!("{p}.pub")).expect("public key");
    let listed =
        String::from_utf8(ssh_keygen(&["-l", "-E", "sha256", "-f", p]).stdout).expect("utf-8");
    // `256 SHA256:… comment (ED25519)`
    let fingerprint = listed
        .split_whitespace()
        .nth(1)
        .expect("fingerprint")
        .to_owned();
    Key {
        private,
        public_line: public_line.trim().to_owned(),
        fingerprint,
    }
}

/// Signs `file` into `{file}.sig` under `namespace`.
pub fn sign_as(key: &Key, file: &Path, namespace: &str) {
    let sig = PathBuf::from(format!("{}.sig", file.display()));
    let _ = std::fs::remove_file(&sig);
    ssh_keygen(&[
        "-Y",
        "sign",
        "-n",
        namespace,
        "-f",
        key.private.to_str().expect("utf-8"),
        file.to_str().expect("utf-8"),
    ]);
}

/// Signs `file` into `{file}.sig` as handlers are signed (`-n paynotify-plugin`).
pub fn sign(key: &Key, file: &Path) {
    sign_as(key, file, "paynotify-plugin");
}

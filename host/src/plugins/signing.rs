//! Signed handlers: who signed a build, and whether that signer may run it.

use serde::Serialize;

/// The key that signed a handler's files, as ops listed it in `allowed_signers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Signer {
    /// The principal the `allowed_signers` line names for the key (e.g. `ops@example.com`).
    pub principal: String,
    /// The key's fingerprint, as `ssh-keygen -l` prints it (`SHA256:…`).
    pub fingerprint: String,
}

impl std::fmt::Display for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.principal, self.fingerprint)
    }
}

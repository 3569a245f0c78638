//! Signed handlers: which keys ops allow (`[plugins] allowed_signers`, OpenSSH's
//! `allowed_signers` format) and whether a file's detached SSHSIG signature
//! (`ssh-keygen -Y sign -n paynotify-plugin`) was made by one of them.
//!
//! Whoever can write the plugins folder chooses what runs on payments unless the host
//! checks who made the files; a signature ties each `.wasm` and manifest to a key that
//! ops listed. The check runs on the very bytes that are then compiled and parsed, so a
//! file swapped between the check and the load is never the one that runs.

use std::path::{Path, PathBuf};

use serde::Serialize;
use ssh_key::{HashAlg, PublicKey, SshSig};

use crate::time::Millis;

/// The SSHSIG namespace handlers are signed under (`ssh-keygen -Y sign -n …`): a
/// signature made for git or for another tool does not load a handler.
pub const NAMESPACE: &str = "paynotify-plugin";

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

/// Why an `allowed_signers` file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SignersError {
    /// The file cannot be read.
    #[error("cannot read allowed_signers {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line does not parse.
    #[error("{}:{line}: {why}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        why: String,
    },
    /// No line lists a key (every handler would be refused).
    #[error("{} lists no key: every handler would be refused", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// Why a file's signature does not let it load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// There is no `{file}.sig`.
    #[error("{file} is not signed (no {file}.sig); sign it with `ssh-keygen -Y sign -n {NAMESPACE} -f KEY {file}`")]
    Missing {
        /// The signed file's name.
        file: String,
    },
    /// The `.sig` file cannot be read or is not an SSH signature.
    #[error("{file}.sig is not a readable SSH signature: {why}")]
    Malformed {
        /// The signed file's name.
        file: String,
        /// What is wrong.
        why: String,
    },
    /// Signed for another purpose (`-n` other than `paynotify-plugin`).
    #[error("{file}.sig was made for namespace `{found}`, not `{NAMESPACE}`")]
    Namespace {
        /// The signed file's name.
        file: String,
        /// The namespace in the signature.
        found: String,
    },
    /// The key is not in `allowed_signers` (or not for this namespace, or not now).
    #[error("{file}.sig: key {fingerprint} is not an allowed signer{why}")]
    NotAllowed {
        /// The signed file's name.
        file: String,
        /// The signing key's fingerprint.
        fingerprint: String,
        /// Why a listed key does not count (empty when it is not listed at all).
        why: String,
    },
    /// The signature does not match the file's bytes.
    #[error("{file}.sig does not match {file} (changed after signing?), key {fingerprint}")]
    Mismatch {
        /// The signed file's name.
        file: String,
        /// The signing key's fingerprint.
        fingerprint: String,
    },
    /// `{file}.sig` is there but `{file}` is not.
    #[error("{file}.sig is there but {file} is not: a signed manifest was removed; remove its .sig too, or put it back")]
    Orphan {
        /// The missing file's name.
        file: String,
    },
    /// The signed build says it handles another order type.
    #[error("{file} is signed as a handler of type `{found}`, not `{expected}`")]
    WrongType {
        /// The file's name.
        file: String,
        /// The type the signed content names.
        found: String,
        /// The type its file name gives.
        expected: String,
    },
}

/// One `allowed_signers` line.
#[derive(Debug, Clone)]
struct Entry {
    principals: String,
    key: PublicKey,
    /// `namespaces="…"`: patterns the key may sign under; `None` = any.
    namespaces: Option<Vec<String>>,
    valid_after: Option<Millis>,
    valid_before: Option<Millis>,
}

/// The keys allowed to sign handlers, read from an OpenSSH `allowed_signers` file.
#[derive(Debug, Clone)]
pub struct AllowedSigners {
    path: PathBuf,
    entries: Vec<Entry>,
}

impl AllowedSigners {
    /// Reads and parses `path`; any line that does not parse is an error naming it.
    pub fn load(path: &Path) -> Result<AllowedSigners, SignersError> {
        let text = std::fs::read_to_string(path).map_err(|source| SignersError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        AllowedSigners::parse(path, &text)
    }

    /// Parses the text of an `allowed_signers` file read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<AllowedSigners, SignersError> {
        let mut entries = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let entry = parse_line(line).map_err(|why| SignersError::Line {
                path: path.to_path_buf(),
                line: i + 1,
                why,
            })?;
            entries.push(entry);
        }
        if entries.is_empty() {
            return Err(SignersError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(AllowedSigners {
            path: path.to_path_buf(),
            entries,
        })
    }

    /// The file the keys were read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks that `sig_text` (the content of `{file}.sig`) is a `paynotify-plugin`
    /// signature of `bytes` by a key allowed at `now`, and says whose.
    pub fn verify(
        &self,
        file: &str,
        bytes: &[u8],
        sig_text: &[u8],
        now: Millis,
    ) -> Result<Signer, SignatureError> {
        let sig = SshSig::from_pem(sig_text).map_err(|e| SignatureError::Malformed {
            file: file.to_owned(),
            why: e.to_string(),
        })?;
        if sig.namespace() != NAMESPACE {
            return Err(SignatureError::Namespace {
                file: file.to_owned(),
                found: printable(sig.namespace()),
            });
        }
        let fingerprint = sig.public_key().fingerprint(HashAlg::Sha256).to_string();
        let not_allowed = |why: String| SignatureError::NotAllowed {
            file: file.to_owned(),
            fingerprint: fingerprint.clone(),
            why,
        };
        let mut listed = self
            .entries
            .iter()
            .filter(|e| e.key.key_data() == sig.public_key())
            .peekable();
        if listed.peek().is_none() {
            return Err(not_allowed(format!(" (not in {})", self.path.display())));
        }
        let mut refusals = Vec::new();
        for entry in listed {
            if let Err(why) = entry.allows(now) {
                refusals.push(why);
                continue;
            }
            return match entry.key.verify(NAMESPACE, bytes, &sig) {
                Ok(()) => Ok(Signer {
                    principal: entry.principals.clone(),
                    fingerprint,
                }),
                Err(_) => Err(SignatureError::Mismatch {
                    file: file.to_owned(),
                    fingerprint,
                }),
            };
        }
        Err(not_allowed(format!(": {}", refusals.join("; "))))
    }

    /// True if `signer`'s key is still allowed at `now` (a key removed from the file,
    /// or past its `valid-before`, no longer runs the builds it signed).
    pub fn still_allows(&self, signer: &Signer, now: Millis) -> bool {
        self.entries.iter().any(|e| {
            e.key.fingerprint(HashAlg::Sha256).to_string() == signer.fingerprint
                && e.allows(now).is_ok()
        })
    }
}

impl Entry {
    /// Whether this line lets its key sign handlers at `now`.
    fn allows(&self, now: Millis) -> Result<(), String> {
        if let Some(patterns) = &self.namespaces {
            if !patterns.iter().any(|p| glob(p, NAMESPACE)) {
                return Err(format!(
                    "its line allows namespaces=\"{}\" only",
                    patterns.join(",")
                ));
            }
        }
        if self.valid_after.is_some_and(|t| now < t) {
            return Err("its line is not valid yet (valid-after)".into());
        }
        if self.valid_before.is_some_and(|t| now >= t) {
            return Err("its line has expired (valid-before)".into());
        }
        Ok(())
    }
}

/// `principals [options] keytype base64 [comment]`.
fn parse_line(line: &str) -> Result<Entry, String> {
    let mut rest = line;
    let principals = next_field(&mut rest).ok_or("no principals")?;
    if principals.is_empty() {
        return Err("no principals".into());
    }
    let mut field = next_field(&mut rest).ok_or("no key")?;
    let mut namespaces = None;
    let mut valid_after = None;
    let mut valid_before = None;
    if !looks_like_key_type(&field) {
        for option in split_options(&field)? {
            let (name, value) = match option.split_once('=') {
                Some((n, v)) => (n.to_ascii_lowercase(), Some(unquote(v)?)),
                None => (option.to_ascii_lowercase(), None),
            };
            match (name.as_str(), value) {
                ("namespaces", Some(v)) => {
                    namespaces = Some(v.split(',').map(|s| s.trim().to_owned()).collect())
                }
                ("valid-after", Some(v)) => valid_after = Some(parse_ssh_time(&v)?),
                ("valid-before", Some(v)) => valid_before = Some(parse_ssh_time(&v)?),
                ("cert-authority", None) => {
                    return Err(
                        "cert-authority lines are not supported: list the signing keys themselves"
                            .into(),
                    )
                }
                (other, _) => return Err(format!("unknown or malformed option `{other}`")),
            }
        }
        field = next_field(&mut rest).ok_or("no key after the options")?;
    }
    let data = next_field(&mut rest).ok_or("no key data after the key type")?;
    let key = PublicKey::from_openssh(&format!("{field} {data}"))
        .map_err(|e| format!("cannot read the {field} key: {e}"))?;
    Ok(Entry {
        principals,
        key,
        namespaces,
        valid_after,
        valid_before,
    })
}

/// The next whitespace-separated field, where double quotes may hold spaces.
fn next_field(rest: &mut &str) -> Option<String> {
    let s = rest.trim_start();
    if s.is_empty() {
        return None;
    }
    let mut in_quotes = false;
    let mut end = s.len();
    for (i, c) in s.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            c if c.is_whitespace() && !in_quotes => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    let (field, tail) = s.split_at(end);
    *rest = tail;
    Some(field.to_owned())
}

fn looks_like_key_type(field: &str) -> bool {
    ["ssh-", "ecdsa-", "sk-"]
        .iter()
        .any(|p| field.starts_with(p))
}

/// Options are comma-separated; commas inside quotes belong to the value.
fn split_options(field: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    for c in field.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                current.push(c);
            }
            ',' if !in_quotes => out.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    if in_quotes {
        return Err("unterminated quote in the options".into());
    }
    out.push(current);
    Ok(out)
}

fn unquote(v: &str) -> Result<String, String> {
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => Ok(inner.to_owned()),
        None if !v.contains('"') => Ok(v.to_owned()),
        None => Err(format!("badly quoted value {v}")),
    }
}

/// `YYYYMMDD[Z]` or `YYYYMMDDHHMM[SS][Z]`, as ssh-keygen writes them. Times without `Z`
/// are local time to ssh-keygen; the host reads every time as UTC (documented).
fn parse_ssh_time(v: &str) -> Result<Millis, String> {
    let digits = v.strip_suffix(['Z', 'z']).unwrap_or(v);
    let bad = || format!("bad time `{v}` (expected YYYYMMDD[HHMM[SS]][Z])");
    if !digits.bytes().all(|b| b.is_ascii_digit()) || ![8, 12, 14].contains(&digits.len()) {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| digits.get(r).and_then(|s| s.parse::<u32>().ok());
    let year = num(0..4).ok_or_else(bad)?;
    let month = num(4..6).ok_or_else(bad)?;
    let day = num(6..8).ok_or_else(bad)?;
    let hour = num(8..10).unwrap_or(0);
    let minute = num(10..12).unwrap_or(0);
    let second = num(12..14).unwrap_or(0);
    let month =
        time::Month::try_from(u8::try_from(month).map_err(|_| bad())?).map_err(|_| bad())?;
    let date = time::Date::from_calendar_date(
        i32::try_from(year).map_err(|_| bad())?,
        month,
        u8::try_from(day).map_err(|_| bad())?,
    )
    .map_err(|_| bad())?;
    let t = date
        .with_hms(
            u8::try_from(hour).map_err(|_| bad())?,
            u8::try_from(minute).map_err(|_| bad())?,
            u8::try_from(second).map_err(|_| bad())?,
        )
        .map_err(|_| bad())?
        .assume_utc();
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| bad())
}

/// `s` cut to 64 printable ASCII characters: a namespace comes from the file, and ends
/// up in logs, the console and the database.
fn printable(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// OpenSSH's pattern match: `*` any run, `?` one character.
fn glob(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some((b'*', rest)) => (0..=t.len()).any(|i| go(rest, &t[i..])),
            Some((b'?', rest)) => !t.is_empty() && go(rest, &t[1..]),
            Some((c, rest)) => t.first() == Some(c) && go(rest, &t[1..]),
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOZ+5MWRjgsxw0nqYN7PYu2ycrnnNSNn5RE51eYAVHGJ";

    fn parse(text: &str) -> Result<AllowedSigners, SignersError> {
        AllowedSigners::parse(Path::new("signers"), text)
    }

    #[test]
    fn lines_with_options_comments_and_quotes_parse() {
        let s = parse(&format!(
            "# ops\n\nops@example.com {KEY} laptop\n\"a b\",c namespaces=\"paynotify-plugin,git\",valid-after=20260101 {KEY}\n"
        ))
        .expect("parses");
        assert_eq!(s.entries.len(), 2);
        assert_eq!(s.entries[1].principals, "\"a b\",c");
        assert_eq!(
            s.entries[1].namespaces.as_deref(),
            Some(&["paynotify-plugin".to_owned(), "git".to_owned()][..])
        );
        assert!(s.entries[1].valid_after.is_some());
    }

    #[test]
    fn bad_lines_are_named() {
        for (text, why) in [
            (
                format!("ops {KEY}\nops cert-authority {KEY}"),
                "cert-authority",
            ),
            (format!("ops frobnicate {KEY}"), "frobnicate"),
            ("ops ssh-ed25519 AAAAnotakey".to_owned(), "cannot read"),
            (format!("ops valid-before=2026 {KEY}"), "bad time"),
            ("ops".to_owned(), "no key"),
        ] {
            let e = parse(&text).expect_err(&text).to_string();
            assert!(e.contains(why), "{text}: {e}");
            assert!(e.starts_with("signers:"), "{e}");
        }
        assert!(matches!(
            parse("# nothing\n"),
            Err(SignersError::Empty { .. })
        ));
    }

    #[test]
    fn lines_limit_namespace_and_time() {
        let s = parse(&format!(
            "a namespaces=\"git\" {KEY}\nb valid-before=20200101Z {KEY}\nc valid-after=20990101 {KEY}\n"
        ))
        .expect("parses");
        let now = crate::time::now_ms();
        assert!(s.entries[0].allows(now).unwrap_err().contains("namespaces"));
        assert!(s.entries[1].allows(now).unwrap_err().contains("expired"));
        assert!(s.entries[2]
            .allows(now)
            .unwrap_err()
            .contains("not valid yet"));
        assert!(parse(&format!("d namespaces=\"pay*\" {KEY}"))
            .expect("parses")
            .entries[0]
            .allows(now)
            .is_ok());
    }

    #[test]
    fn ssh_times_read_as_utc() {
        assert_eq!(parse_ssh_time("19700102").unwrap(), 86_400_000);
        assert_eq!(parse_ssh_time("197001010001Z").unwrap(), 60_000);
        assert_eq!(parse_ssh_time("19700101000001").unwrap(), 1_000);
        assert!(parse_ssh_time("19701301").is_err());
    }
}

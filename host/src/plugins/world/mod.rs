//! The handler world: what a component must be to load as a paynotify handler, and what
//! a call of it can end in, whatever the world's version.
//!
//! Each supported version of `paynotify:plugin` is a module of its own ([`since_v0_1`]):
//! its wasmtime bindings, its exports as [`Export`] values and the conversions between its
//! records and the host's types. The runtime only sees [`Instantiate`] and [`Export`], so a
//! `since_v0_2` comes as a new module here, its capability impls, and a line in
//! `Runtime::validate` choosing the world by the version the component imports.
//!
//! The checks below explain, in the world's terms, why a file is not a handler: not
//! WebAssembly, a core module instead of a component, an import this host does not
//! provide, a build for another world version, a missing export. `paynotify plugins check`
//! and the registry's load errors both say what [`header`] and [`shape`] find.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use wasmtime::component::types::Component as ComponentType;
use wasmtime::{Engine, Store};

pub mod since_v0_1;

use since_v0_1::{EXPORTS, INTERFACES};

/// The WIT package version this host implements.
pub const WORLD_VERSION: &str = since_v0_1::VERSION;

/// Why a plugin file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Not a valid component, or compilation failed.
    #[error("not a valid WebAssembly component: {0}")]
    Compile(String),
    /// Built against another version of `paynotify:plugin`.
    #[error("built for paynotify:plugin@{found}, this host implements @{WORLD_VERSION}; rebuild it against paynotify-plugin-sdk {WORLD_VERSION}")]
    WorldVersion {
        /// The version the component asked for.
        found: String,
    },
    /// It imports something the host does not provide (or does not grant).
    #[error("forbidden or unknown import {0}")]
    Imports(String),
    /// A required export is missing or has the wrong type.
    #[error("does not fit the handler world: {0}")]
    Exports(String),
    /// The `metadata` call failed.
    #[error("metadata() failed: {0}")]
    Metadata(String),
    /// The manifest is invalid.
    #[error("manifest: {0}")]
    Manifest(String),
    /// One of the handler's files cannot be read (gone, not a regular file, too large).
    #[error("{0}")]
    Unreadable(String),
    /// `allowed_signers` is set and a file's signature does not let it load.
    #[error("signature: {0}")]
    Signature(#[from] crate::signers::SignatureError),
    /// `allowed_signers` is set and cannot be read: nothing new loads until it can.
    #[error("allowed_signers: {0}")]
    Signers(String),
    /// The signer of the serving build is no longer allowed: the type is unloaded.
    #[error("revoked: {0}")]
    Revoked(String),
}

impl LoadError {
    /// A short word for the kind of failure (the `reason` label of the metric).
    pub fn kind(&self) -> &'static str {
        match self {
            LoadError::Compile(_) => "compile",
            LoadError::WorldVersion { .. } => "world",
            LoadError::Imports(_) | LoadError::Exports(_) => "world",
            LoadError::Metadata(_) => "metadata",
            LoadError::Manifest(_) => "manifest",
            LoadError::Unreadable(_) => "file",
            LoadError::Signature(_) | LoadError::Signers(_) => "signature",
            LoadError::Revoked(_) => "revoked",
        }
    }
}

/// What a handler build says about itself.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct Metadata {
    /// The handler's name.
    pub name: String,
    /// The handler's own version.
    pub version: String,
    /// The WIT version it was built against.
    pub world_version: String,
}

/// Why a call failed. Any of these rolls the payment back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerFailure {
    /// The handler returned an error.
    #[error("handler error [{code}]: {message}")]
    Error {
        /// Its code.
        code: String,
        /// Its message.
        message: String,
    },
    /// The handler trapped (panic, unreachable, bad memory access...).
    #[error("handler trapped: {0}")]
    Trap(String),
    /// The handler ran past its wall-time limit.
    #[error("handler ran past its {0:?} time limit")]
    Timeout(Duration),
    /// The handler asked for more memory than its limit.
    #[error("handler went over its memory limit of {0} MiB")]
    Memory(usize),
    /// A host capability failed underneath the handler (e.g. the database).
    #[error("host failure during the call: {0}")]
    Host(String),
    /// The database asked for the transaction to be run again (deadlock, serialization
    /// failure): not the handler's fault, and not an answer to give the provider yet.
    #[error("transient database failure during the call: {0}")]
    Transient(String),
    /// No handler is loaded for the order's type.
    #[error("no handler is loaded for type `{0}`")]
    NotLoaded(String),
    /// The type's payment calls timed out repeatedly: it is not run until the cool-down
    /// is over (see [`super::breaker`]).
    #[error("handler not run: its last {timeouts} payment calls timed out; failing fast until {}", crate::time::iso_time(*until))]
    FailingFast {
        /// Timeouts in a row.
        timeouts: u32,
        /// Until when (unix ms).
        until: crate::time::Millis,
    },
}

impl HandlerFailure {
    /// The failure as JSON, stored as the order's `handler_result`.
    pub fn to_json(&self) -> serde_json::Value {
        let kind = match self {
            HandlerFailure::Error { code, .. } => code.as_str(),
            HandlerFailure::Trap(_) => "trap",
            HandlerFailure::Timeout(_) => "timeout",
            HandlerFailure::Memory(_) => "memory",
            HandlerFailure::Host(_) => "host",
            HandlerFailure::Transient(_) => "transient",
            HandlerFailure::NotLoaded(_) => "not-loaded",
            HandlerFailure::FailingFast { .. } => "failing-fast",
        };
        serde_json::json!({ "error": kind, "message": self.to_string() })
    }
}

/// The `outcome` label of a handler call.
pub(crate) fn outcome<T>(result: &Result<T, HandlerFailure>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(HandlerFailure::Error { .. }) => "error",
        Err(HandlerFailure::Trap(_)) => "trap",
        Err(HandlerFailure::Timeout(_)) => "timeout",
        Err(HandlerFailure::Memory(_)) => "memory",
        Err(HandlerFailure::Host(_)) => "host",
        Err(HandlerFailure::Transient(_)) => "transient",
        Err(HandlerFailure::NotLoaded(_)) => "not_loaded",
        Err(HandlerFailure::FailingFast { .. }) => "failing_fast",
    }
}

/// A pre-instantiated component seen through one world, so that one call path serves
/// every world (and `handler` as well as `handler-with-refunds`).
pub trait Instantiate<T>: Sync {
    /// The instance's bindings.
    type Instance: Send + Sync;
    /// Instantiates it in `store`.
    fn instantiate(
        &self,
        store: &mut Store<T>,
    ) -> impl Future<Output = Made<Self::Instance>> + Send;
}

/// A new instance's bindings, or why it could not be made (a trap in an initialiser, a
/// full pool).
pub type Made<I> = wasmtime::Result<I>;

/// How an export's call ends: the outer error is a trap or an interrupt, the inner one
/// the handler's own answer.
pub type Answer<O> = wasmtime::Result<Result<O, HandlerFailure>>;

/// An export's call under way, borrowing the instance and its store.
pub type Call<'a, O> = Pin<Box<dyn Future<Output = Answer<O>> + Send + 'a>>;

/// One export of a world, called on an instance `I` of that world: the export's
/// arguments, and how its answer becomes the host's.
pub trait Export<T, I>: Send + 'static {
    /// What it answers, in the host's terms.
    type Output: Send;
    /// The export's `call` label in the metrics.
    const NAME: &'static str;
    /// Calls it on `instance`.
    fn call<'a>(self, instance: &'a I, store: &'a mut Store<T>) -> Call<'a, Self::Output>;
}

/// WASI packages the host links (so a Rust or JS standard library starts), granting nothing.
const WASI: &[&str] = &["cli", "io", "clocks", "random", "filesystem", "sockets"];
/// Checks the 8-byte header: WebAssembly at all, and a component rather than a core module.
/// Text (`(component ...)`, WAT) is left to the compiler.
pub fn header(bytes: &[u8]) -> Result<(), LoadError> {
    if bytes.first() == Some(&b'(') {
        return Ok(());
    }
    let not = |why: String| Err(LoadError::Compile(why));
    if bytes.is_empty() {
        return not("the file is empty".into());
    }
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        let start: String = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
        return not(format!(
            "not a WebAssembly file (it starts with bytes {start}, a .wasm file starts with 0061736d)"
        ));
    }
    match bytes[4..8] {
        [0x0d, 0x00, 0x01, 0x00] => Ok(()),
        [0x01, 0x00, 0x00, 0x00] => not(
            "this is a core WebAssembly module, not a component: build the handler for \
             wasm32-wasip2 (`cargo build --target wasm32-wasip2`, which emits a component), or \
             wrap a core module with `wasm-tools component new`"
                .into(),
        ),
        [a, b, c, d] => not(format!(
            "unknown WebAssembly header version {a:02x}{b:02x}{c:02x}{d:02x} (a component has 0d000100)"
        )),
        _ => not("truncated header".into()),
    }
}

/// Checks the component's imports and exports against the `handler` world, naming the
/// first import it cannot satisfy, or every missing export.
pub fn shape(ty: &ComponentType, engine: &Engine) -> Result<(), LoadError> {
    for (name, _) in ty.imports(engine) {
        import(name)?;
    }
    let exports: Vec<&str> = ty.exports(engine).map(|(n, _)| n).collect();
    let missing: Vec<&str> = EXPORTS
        .iter()
        .copied()
        .filter(|e| !exports.contains(e))
        .collect();
    if !missing.is_empty() {
        let found = if exports.is_empty() {
            "it exports nothing".to_owned()
        } else {
            format!("it exports {}", exports.join(", "))
        };
        return Err(LoadError::Exports(format!(
            "missing export{} {} ({found}); a handler exports {} of paynotify:plugin@{WORLD_VERSION}'s \
             `handler` world: use `export_handler!` (Rust SDK) or build.mjs (JS)",
            if missing.len() > 1 { "s" } else { "" },
            missing.join(", "),
            EXPORTS.join(", "),
        )));
    }
    Ok(())
}

/// One import name, e.g. `paynotify:plugin/db@0.1.0` or `wasi:http/types@0.2.0`.
fn import(name: &str) -> Result<(), LoadError> {
    let (path, version) = match name.split_once('@') {
        Some((p, v)) => (p, Some(v)),
        None => (name, None),
    };
    if let Some(iface) = path.strip_prefix("paynotify:plugin/") {
        let found = version.unwrap_or("(unversioned)");
        if found != WORLD_VERSION {
            return Err(LoadError::WorldVersion {
                found: found.to_owned(),
            });
        }
        if !INTERFACES.contains(&iface) {
            return Err(LoadError::Imports(format!(
                "`{name}`: paynotify:plugin@{WORLD_VERSION} has no interface `{iface}` (it has {})",
                INTERFACES.join(", ")
            )));
        }
        return Ok(());
    }
    if let Some(rest) = path.strip_prefix("wasi:") {
        let package = rest.split('/').next().unwrap_or(rest);
        if package == "http" {
            return Err(LoadError::Imports(format!(
                "`{name}` is not granted to handlers: make HTTP calls through \
                 paynotify:plugin/http, to the origins in the manifest's http_origins"
            )));
        }
        if WASI.contains(&package) {
            return Ok(());
        }
    }
    Err(LoadError::Imports(format!(
        "`{name}` is not provided by this host: a handler may import paynotify:plugin/{{{}}}@{WORLD_VERSION} \
         and WASI {} (with no access granted)",
        INTERFACES.join(","),
        WASI.join("/"),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> Engine {
        let mut c = wasmtime::Config::new();
        c.wasm_component_model(true);
        Engine::new(&c).expect("engine")
    }

    fn shape_of(wat: &str) -> Result<(), LoadError> {
        let engine = engine();
        let c = wasmtime::component::Component::new(&engine, wat).expect("test component compiles");
        shape(&c.component_type(), &engine)
    }

    #[test]
    fn header_names_garbage_core_modules_and_odd_versions() {
        let e = header(b"").unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let e = header(b"PK\x03\x04zipfile").unwrap_err().to_string();
        assert!(
            e.contains("not a WebAssembly file") && e.contains("504b0304"),
            "{e}"
        );
        let e = header(b"\0asm\x01\0\0\0").unwrap_err().to_string();
        assert!(
            e.contains("core WebAssembly module, not a component"),
            "{e}"
        );
        let e = header(b"\0asm this is not").unwrap_err().to_string();
        assert!(e.contains("unknown WebAssembly header version"), "{e}");
        assert!(e.starts_with("not a valid WebAssembly component"), "{e}");
        assert!(header(b"\0asm\x0d\0\x01\0").is_ok());
    }

    #[test]
    fn missing_exports_are_named() {
        let e = shape_of("(component)").unwrap_err().to_string();
        assert!(
            e.contains("missing exports metadata, handle-paid, run-task"),
            "{e}"
        );
        assert!(e.contains("it exports nothing"), "{e}");
        let e = shape_of(
            r#"(component
                 (core module $m (func (export "f") (result i32) i32.const 0))
                 (core instance $i (instantiate $m))
                 (func $f (result u32) (canon lift (core func $i "f")))
                 (export "metadata" (func $f)))"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("missing exports handle-paid, run-task"), "{e}");
        assert!(e.contains("it exports metadata"), "{e}");
    }

    #[test]
    fn imports_are_checked_by_name_and_version() {
        let e = shape_of(r#"(component (import "paynotify:plugin/db@0.2.0" (instance)))"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("built for paynotify:plugin@0.2.0") && e.contains("@0.1.0"),
            "{e}"
        );
        let e = shape_of(r#"(component (import "paynotify:plugin/secrets@0.1.0" (instance)))"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no interface `secrets`"), "{e}");
        let e = shape_of(r#"(component (import "wasi:http/outgoing-handler@0.2.0" (instance)))"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`wasi:http/outgoing-handler@0.2.0` is not granted"),
            "{e}"
        );
        let e = shape_of(r#"(component (import "evil:net/raw" (func)))"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`evil:net/raw` is not provided by this host"),
            "{e}"
        );
        // Allowed imports pass, and then the missing exports are what is reported.
        let e = shape_of(
            r#"(component (import "paynotify:plugin/log@0.1.0" (instance))
                          (import "wasi:cli/environment@0.2.0" (instance)))"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("missing exports"), "{e}");
    }
}

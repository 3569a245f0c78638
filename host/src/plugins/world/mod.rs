//! Explains, in the handler world's terms, why a file is not a paynotify handler: not
//! WebAssembly, a core module instead of a component, an import this host does not provide,
//! a build for another world version, a missing export. `paynotify plugins check` and the
//! registry's load errors both say what [`header`] and [`shape`] find.

use wasmtime::component::types::Component as ComponentType;
use wasmtime::Engine;

use super::super::runtime::{LoadError, WORLD_VERSION};

/// The exports of the `handler` world.
pub const EXPORTS: &[&str] = &["metadata", "handle-paid", "run-task"];

/// Interfaces of `paynotify:plugin` a handler may import.
const INTERFACES: &[&str] = &["types", "db", "log", "http", "crypto", "tasks", "config"];

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

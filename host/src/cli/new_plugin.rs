//! `paynotify new-plugin`: writes a handler project that builds on the first try, anywhere.
//!
//! Everything it writes is embedded in this binary: the templates under `host/templates/`,
//! and, so the project needs nothing from this repository, the WIT world plus (for Rust)
//! the SDK's sources or (for JavaScript) the JS SDK and build script of `plugins/recharge-js`.

use std::path::{Path, PathBuf};

/// The language of a new handler project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// A Rust crate built with `cargo build --target wasm32-wasip2`.
    Rust,
    /// An ES module built with ComponentizeJS (`npm run build`).
    Js,
}

/// Why a project could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The name is not a valid order type.
    #[error("`{name}` is not a valid handler name: {why}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        why: String,
    },
    /// The target directory exists; nothing was written.
    #[error("{0} already exists; choose another --dir (nothing was written)")]
    Exists(PathBuf),
    /// Writing failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Longest handler name: the template's `{name}_orders` collection must stay a valid name.
const MAX_NAME: usize = 50;

const WIT: &str = include_str!("../../../wit/plugin.wit");
const MANIFEST: &str = include_str!("../../templates/manifest.toml");
/// An order the template's handler pays (`paynotify try … --order order.json`).
const ORDER: &str = include_str!("../../templates/order.json");

const RUST_FILES: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        include_str!("../../templates/rust/Cargo.toml"),
    ),
    ("src/lib.rs", include_str!("../../templates/rust/lib.rs")),
    ("README.md", include_str!("../../templates/rust/README.md")),
    (".gitignore", include_str!("../../templates/rust/gitignore")),
    (
        "paynotify-plugin-sdk/Cargo.toml",
        include_str!("../../templates/rust/sdk-Cargo.toml"),
    ),
];

/// The SDK's sources, vendored as they are (its `path: "../wit"` finds the project's `wit/`).
const SDK_SOURCES: &[(&str, &str)] = &[
    ("lib.rs", include_str!("../../../plugin-sdk/src/lib.rs")),
    (
        "config.rs",
        include_str!("../../../plugin-sdk/src/config.rs"),
    ),
    (
        "crypto.rs",
        include_str!("../../../plugin-sdk/src/crypto.rs"),
    ),
    ("db.rs", include_str!("../../../plugin-sdk/src/db.rs")),
    ("error.rs", include_str!("../../../plugin-sdk/src/error.rs")),
    ("http.rs", include_str!("../../../plugin-sdk/src/http.rs")),
    ("log.rs", include_str!("../../../plugin-sdk/src/log.rs")),
    (
        "refunds.rs",
        include_str!("../../../plugin-sdk/src/refunds.rs"),
    ),
    ("tasks.rs", include_str!("../../../plugin-sdk/src/tasks.rs")),
    ("types.rs", include_str!("../../../plugin-sdk/src/types.rs")),
];

const JS_FILES: &[(&str, &str)] = &[
    (
        "package.json",
        include_str!("../../templates/js/package.json"),
    ),
    (
        "src/{{name}}.js",
        include_str!("../../templates/js/handler.js"),
    ),
    (
        "src/paynotify.js",
        include_str!("../../../plugins/recharge-js/src/paynotify.js"),
    ),
    (
        "build.mjs",
        include_str!("../../../plugins/recharge-js/build.mjs"),
    ),
    ("README.md", include_str!("../../templates/js/README.md")),
    (".gitignore", include_str!("../../templates/js/gitignore")),
];

/// The wit-bindgen the SDK is built with (the workspace's); checked by a unit test.
const WIT_BINDGEN: &str = "0.61";

/// Checks `name` as an order type that is also a valid Cargo package and JS file name.
pub fn check_name(name: &str) -> Result<(), ScaffoldError> {
    let bad = |why: &str| {
        Err(ScaffoldError::InvalidName {
            name: name.to_owned(),
            why: why.to_owned(),
        })
    };
    if name.is_empty() || name.len() > MAX_NAME {
        return bad(&format!("use 1 to {MAX_NAME} characters"));
    }
    if !paynotify::names::is_simple_name(name) {
        return bad(
            "use only ASCII letters, digits, - and _ (it names the .wasm file and the order type)",
        );
    }
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return bad("start with a letter");
    }
    const RESERVED: &[&str] = &[
        "as",
        "async",
        "await",
        "break",
        "const",
        "continue",
        "crate",
        "dyn",
        "else",
        "enum",
        "extern",
        "false",
        "fn",
        "for",
        "if",
        "impl",
        "in",
        "let",
        "loop",
        "match",
        "mod",
        "move",
        "mut",
        "pub",
        "ref",
        "return",
        "self",
        "static",
        "struct",
        "super",
        "trait",
        "true",
        "type",
        "unsafe",
        "use",
        "where",
        "while",
        "abstract",
        "become",
        "box",
        "do",
        "final",
        "macro",
        "override",
        "priv",
        "try",
        "typeof",
        "unsized",
        "virtual",
        "yield",
        "std",
        "core",
        "alloc",
        "test",
        "proc_macro",
        "paynotify",
        "paynotify-plugin-sdk",
    ];
    if RESERVED.contains(&name.replace('-', "_").as_str()) || RESERVED.contains(&name) {
        return bad("it is a Rust keyword or a reserved crate name");
    }
    Ok(())
}

/// Writes a new `lang` handler project for order type `name` into `dir` (default
/// `./{name}`), which must not exist yet. Returns the directory.
pub fn new_plugin(name: &str, lang: Lang, dir: Option<&Path>) -> Result<PathBuf, ScaffoldError> {
    check_name(name)?;
    let dir = dir
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() {
        return Err(ScaffoldError::Exists(dir));
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source: std::io::Error| ScaffoldError::Io { path, source }
    };
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    // create_dir, not create_dir_all: if something created it meanwhile, do not write into it.
    std::fs::create_dir(&dir).map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => ScaffoldError::Exists(dir.clone()),
        _ => ScaffoldError::Io {
            path: dir.clone(),
            source,
        },
    })?;
    for (path, text) in files(name, lang) {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&path, text).map_err(io(&path))?;
    }
    Ok(dir)
}

/// The project's files, relative path and content.
fn files(name: &str, lang: Lang) -> Vec<(String, String)> {
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{type_name}}", &type_name(name))
            .replace("{{collection}}", &format!("{name}_orders"))
            .replace("{{sdk_version}}", env!("CARGO_PKG_VERSION"))
            .replace("{{wit_bindgen}}", WIT_BINDGEN)
    };
    let mut out = vec![
        ("wit/plugin.wit".to_owned(), WIT.to_owned()),
        (format!("{name}.toml"), fill(MANIFEST)),
        ("order.json".to_owned(), ORDER.to_owned()),
    ];
    match lang {
        Lang::Rust => {
            out.extend(RUST_FILES.iter().map(|&(p, t)| (fill(p), fill(t))));
            out.extend(
                SDK_SOURCES
                    .iter()
                    .map(|(p, t)| (format!("paynotify-plugin-sdk/src/{p}"), (*t).to_owned())),
            );
        }
        Lang::Js => out.extend(JS_FILES.iter().map(|&(p, t)| (fill(p), fill(t)))),
    }
    out
}

/// `my-shop_vip` → `MyShopVip`: the handler's Rust type.
fn type_name(name: &str) -> String {
    name.split(['-', '_'])
        .map(|part| {
            let mut c = part.chars();
            match c.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

/// How to get `paynotify` on PATH, for a scaffold's user (who may be outside the repo).
const INSTALL_HINT: &str =
    "(no `paynotify` on your PATH? from a paynotify checkout: cargo install --path host --locked)";

/// What to do next, printed after the project is written. `try` finds `{name}.toml` in
/// the project by itself (and says so).
pub fn next_steps(name: &str, lang: Lang, dir: &Path) -> String {
    let d = dir.display();
    match lang {
        Lang::Rust => format!(
            "created {d} (Rust handler `{name}`)\n\nnext:\n  cd {d}\n  rustup target add wasm32-wasip2\n  \
             cargo build --release --target wasm32-wasip2\n  \
             paynotify try target/wasm32-wasip2/release/{}.wasm --order order.json\n  \
             {INSTALL_HINT}\n\n\
             then copy {name}.toml and the .wasm (as {name}.wasm) into the plugins directory; see {d}/README.md\n",
            name.replace('-', "_")
        ),
        Lang::Js => format!(
            "created {d} (JavaScript handler `{name}`)\n\nnext:\n  cd {d}\n  npm install\n  npm run build\n  \
             paynotify try dist/{name}.wasm --order order.json\n  \
             {INSTALL_HINT}\n\n\
             then copy {name}.toml and dist/{name}.wasm into the plugins directory; see {d}/README.md\n"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new SDK source file must be vendored too, or scaffolded projects stop building.
    #[test]
    fn every_sdk_source_is_vendored() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-sdk/src");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .expect("plugin-sdk/src")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".rs"))
            .collect();
        on_disk.sort();
        let mut vendored: Vec<String> = SDK_SOURCES.iter().map(|(n, _)| n.to_string()).collect();
        vendored.sort();
        assert_eq!(vendored, on_disk);
    }

    #[test]
    fn names_are_checked() {
        for ok in ["points", "my-shop", "vip_2", "A"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("", "1 to"),
            ("2fast", "start with a letter"),
            ("-x", "start with a letter"),
            ("a b", "letters, digits"),
            ("a/b", "letters, digits"),
            ("../x", "letters, digits"),
            ("héllo", "letters, digits"),
            ("fn", "keyword"),
            ("test", "reserved"),
        ] {
            let e = check_name(bad).expect_err(bad).to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(check_name(&"a".repeat(MAX_NAME)).is_ok());
        assert!(check_name(&"a".repeat(MAX_NAME + 1)).is_err());
        assert!(paynotify::names::is_simple_name(&format!(
            "{}_orders",
            "a".repeat(MAX_NAME)
        )));
    }

    #[test]
    fn type_names_are_camel_case() {
        assert_eq!(type_name("my-shop_vip"), "MyShopVip");
        assert_eq!(type_name("points"), "Points");
    }

    #[test]
    fn templates_fill_every_placeholder() {
        for lang in [Lang::Rust, Lang::Js] {
            for (path, text) in files("my-shop", lang) {
                assert!(!path.contains("{{"), "{path}");
                assert!(
                    !text.contains("{{name") && !text.contains("{{crate"),
                    "{path}"
                );
                assert!(
                    !text.contains("{{type_name") && !text.contains("{{collection"),
                    "{path}"
                );
                assert!(
                    !text.contains("{{sdk_version") && !text.contains("{{wit_bindgen"),
                    "{path}"
                );
            }
        }
        let rust = files("my-shop", Lang::Rust);
        let lib = &rust
            .iter()
            .find(|(p, _)| p == "src/lib.rs")
            .expect("lib.rs")
            .1;
        assert!(
            lib.contains("struct MyShop;")
                && lib.contains("const NAME: &'static str = \"my-shop\";")
        );
        let manifest = &rust
            .iter()
            .find(|(p, _)| p == "my-shop.toml")
            .expect("manifest")
            .1;
        let parsed: paynotify::plugins::Manifest =
            toml::from_str(manifest).expect("manifest parses");
        assert_eq!(parsed.collections, ["users", "my-shop_orders"]);
        for lang in [Lang::Rust, Lang::Js] {
            let files = files("my-shop", lang);
            let order = &files
                .iter()
                .find(|(p, _)| p == "order.json")
                .expect("order.json")
                .1;
            let order: serde_json::Value = serde_json::from_str(order).expect("order parses");
            // What the template's handler reads: a user and an integer `custom.points`.
            assert!(order["user_id"].as_str().is_some_and(|u| !u.is_empty()));
            assert!(order["total_fee"].as_i64().is_some_and(|f| f > 0));
            assert!(order["custom"]["points"].is_i64());
        }
    }

    #[test]
    fn vendored_sdk_uses_the_workspace_wit_bindgen() {
        let workspace = include_str!("../../../Cargo.toml");
        assert!(
            workspace.contains(&format!("wit-bindgen = \"{WIT_BINDGEN}\"")),
            "update WIT_BINDGEN in cli/new_plugin.rs to the workspace's wit-bindgen"
        );
    }

    #[test]
    fn refuses_an_existing_directory() {
        let dir = std::env::temp_dir().join(format!("paynotify-scaffold-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("keep.txt"), "mine").expect("write");
        let e = new_plugin("points", Lang::Rust, Some(&dir)).expect_err("exists");
        assert!(matches!(e, ScaffoldError::Exists(_)), "{e}");
        assert_eq!(
            std::fs::read_to_string(dir.join("keep.txt")).expect("kept"),
            "mine"
        );
        assert!(!dir.join("Cargo.toml").exists());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}

//! `cargo xtask`: the project's automation, so a fresh machine needs two commands.
//!
//! - `cargo xtask run`     build the example plugins and serve them on embedded SQLite
//! - `cargo xtask test`    build every plugin, then run every test on SQLite and the
//!   end-to-end tests again on PostgreSQL
//! - `cargo xtask plugins` only build the plugins (into `target/plugins/` and `plugins.d/`);
//!   the JavaScript ones (`plugins/recharge-js`) need Node.js 18+
//! - `cargo xtask soak [SCALE]` the soak test at SCALE × its CI size (default 10) on
//!   PostgreSQL

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

mod js;

/// The guest target handlers are built for.
const WASM_TARGET: &str = "wasm32-wasip2";

/// Example handlers: copied into `plugins.d/` for `xtask run`.
const EXAMPLES: &[&str] = &["goods", "recharge", "vip", "notify-backend"];

/// Test-only handlers: built with the examples into `target/plugins/` for the tests.
const TEST_ONLY: &[&str] = &[
    "fail-always",
    "trap",
    "loop",
    "oom",
    "nosy",
    "sidefx",
    "wrong-world",
    "recharge-double",
];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    match args.first().map(String::as_str) {
        Some("plugins") => build_plugins(&root).map(|_| ()),
        Some("run") => run(&root, &args[1..]),
        Some("test") => test(&root, &args[1..]),
        Some("bench") => bench(&root),
        Some("soak") => soak(&root, &args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n\
                 commands:\n  \
                 run [ARGS]   build the example plugins into plugins.d/ and run `paynotify serve`\n               \
                 with paynotify.example.toml (ARGS are passed to paynotify)\n  \
                 test [ARGS]  build every plugin, then run every test on SQLite and the end-to-end\n               \
                 tests again on PostgreSQL (ARGS go to cargo test)\n  \
                 plugins      only build the plugins\n  \
                 bench        build the plugins and the release binary, then print the benchmark\n               \
                 tables (dispatch, reload, throughput and latency per backend × provider,\n               \
                 a looping neighbour, idle order-event streams' CPU)\n  \
                 soak [SCALE] the soak test (two hosts on PostgreSQL, one killed mid-run) at\n               \
                 SCALE times its CI size (default 10)"
            );
            bail!("unknown or missing command");
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A `cargo` command without the variables the outer `cargo run` (the `cargo xtask` alias)
/// set for this process. Cargo compares build scripts' `rerun-if-env-changed` variables
/// with its own environment: `ring`'s names `CARGO_MANIFEST_DIR` and `CARGO_PKG_*`, so with
/// them inherited, every switch between `cargo xtask test` and a plain `cargo test` or
/// `cargo build` rebuilt ring, rustls, reqwest and the host.
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || [
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_RUSTC_CURRENT_DIR",
            ]
            .contains(&key.as_ref())
        {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd
}

/// A command as a shell would run it: its folder, the variables it sets, the program and
/// its arguments (not the variables it removes, see [`cargo`]).
fn shown(cmd: &Command) -> String {
    let mut s = String::new();
    if let Some(dir) = cmd.get_current_dir() {
        s += &format!("cd {dir:?} && ");
    }
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            s += &format!("{}={value:?} ", key.to_string_lossy());
        }
    }
    s += &format!("{:?}", cmd.get_program());
    for arg in cmd.get_args() {
        s += &format!(" {arg:?}");
    }
    s
}

fn run_cmd(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {}", shown(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", shown(cmd)))?;
    if !status.success() {
        bail!("{} failed with {status}", shown(cmd));
    }
    Ok(())
}

/// Installs the wasm target if rustup does not have it yet.
fn ensure_wasm_target() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("rustup is needed to install the wasm32-wasip2 target")?;
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == WASM_TARGET)
    {
        return Ok(());
    }
    run_cmd(Command::new("rustup").args(["target", "add", WASM_TARGET]))
}

/// Builds every plugin in one cargo invocation (shared deps compile once), copies the
/// components to `target/plugins/{type}.wasm` with their manifests, and the examples to
/// `plugins.d/`. Returns `target/plugins`.
fn build_plugins(root: &Path) -> Result<PathBuf> {
    ensure_wasm_target()?;
    let mut cmd = cargo();
    cmd.current_dir(root)
        .args(["build", "--profile", "plugin", "--target", WASM_TARGET]);
    for p in EXAMPLES.iter().chain(TEST_ONLY) {
        cmd.args(["-p", p]);
    }
    run_cmd(&mut cmd)?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let built = target_dir.join(WASM_TARGET).join("plugin");
    let out = target_dir.join("plugins");
    let examples = root.join("plugins.d");
    std::fs::create_dir_all(&out)?;
    std::fs::create_dir_all(&examples)?;
    for p in EXAMPLES.iter().chain(TEST_ONLY) {
        let wasm = built.join(format!("{}.wasm", p.replace('-', "_")));
        let manifest = root.join("plugins").join(p).join(format!("{p}.toml"));
        let mut dests = vec![&out];
        if EXAMPLES.contains(p) {
            dests.push(&examples);
        }
        for dest in dests {
            copy_atomically(&wasm, &dest.join(format!("{p}.wasm")))?;
            if manifest.exists() {
                copy_atomically(&manifest, &dest.join(format!("{p}.toml")))?;
            }
        }
    }
    js::build_js_plugins(root, &out)?;
    eprintln!(
        "xtask: plugins in {} (examples also in {})",
        out.display(),
        examples.display()
    );
    Ok(out)
}

/// Copies via a temporary name and a rename, so a running host never sees half a file.
fn copy_atomically(from: &Path, to: &Path) -> Result<()> {
    let tmp = to.with_extension("partial");
    std::fs::copy(from, &tmp)
        .with_context(|| format!("copy {} → {}", from.display(), tmp.display()))?;
    std::fs::rename(&tmp, to)
        .with_context(|| format!("rename {} → {}", tmp.display(), to.display()))?;
    Ok(())
}

/// Builds the example plugins and the `paynotify` binary, then runs it with ARGS (default
/// `--config paynotify.example.toml serve`) in the workspace root.
///
/// The binary is built by [`build_bin`], which resolves the same features as the tests'
/// build, so `run` after `test` (or the reverse) compiles nothing again; `cargo run -p
/// paynotify` would resolve others and compile wasmtime, sqlx and the host a second time.
fn run(root: &Path, args: &[String]) -> Result<()> {
    build_plugins(root)?;
    let bin = build_bin(root)?;
    let mut cmd = Command::new(&bin);
    cmd.current_dir(root);
    // `cargo xtask run -- --help`: cargo passes the `--` on.
    let args = args.strip_prefix(&["--".to_owned()]).unwrap_or(args);
    if args.is_empty() {
        cmd.args(["--config", "paynotify.example.toml", "serve"]);
    } else {
        cmd.args(args);
    }
    eprintln!("xtask: {}", shown(&cmd));
    #[cfg(unix)]
    {
        // The server replaces this process: Ctrl-C and the exit status are its own.
        use std::os::unix::process::CommandExt;
        let e = cmd.exec();
        Err(e).with_context(|| format!("cannot start {}", bin.display()))
    }
    #[cfg(not(unix))]
    {
        let status = cmd
            .status()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        std::process::exit(status.code().unwrap_or(1));
    }
}

/// The `cargo build` that makes the `paynotify` binary `run` starts: the whole workspace
/// selected, as `cargo test --workspace` selects it, so both resolve one feature set and
/// share every compiled dependency. (Dev-dependencies count only in the test build; the
/// `tests` package's normal dependencies carry the features they add, which
/// `tests::run_and_test_builds_resolve_the_same_features` checks.)
const BUILD_BIN: &[&str] = &["build", "--workspace", "--bin", "paynotify"];

/// Builds the `paynotify` binary with [`BUILD_BIN`]; returns its path, from cargo's JSON
/// messages.
fn build_bin(root: &Path) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.current_dir(root)
        .args(BUILD_BIN)
        .arg("--message-format=json-render-diagnostics");
    let artifacts = cargo_artifacts(&mut cmd)?;
    artifacts
        .into_iter()
        .find(|a| a.is("bin") && a.name == "paynotify" && !a.test)
        .map(|a| a.executable)
        .context("cargo built no `paynotify` binary")
}

/// An executable cargo reported building (`compiler-artifact` with an `executable`).
struct Artifact {
    name: String,
    kinds: Vec<String>,
    /// Built as a test harness (`profile.test`).
    test: bool,
    manifest: PathBuf,
    executable: PathBuf,
}

impl Artifact {
    fn is(&self, kind: &str) -> bool {
        self.kinds.iter().any(|k| k == kind)
    }
}

/// Runs a cargo build with `--message-format=json…` (diagnostics to the terminal) and
/// returns the executables it reported.
fn cargo_artifacts(cmd: &mut Command) -> Result<Vec<Artifact>> {
    eprintln!("xtask: {}", shown(cmd));
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start {}", shown(cmd)))?;
    if !out.status.success() {
        bail!("{} failed with {}", shown(cmd), out.status);
    }
    let mut artifacts = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(executable) = msg["executable"].as_str().map(PathBuf::from) else {
            continue;
        };
        artifacts.push(Artifact {
            name: msg["target"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            kinds: msg["target"]["kind"]
                .as_array()
                .map(|k| {
                    k.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            test: msg["profile"]["test"] == true,
            manifest: msg["manifest_path"]
                .as_str()
                .map(PathBuf::from)
                .unwrap_or_default(),
            executable,
        });
    }
    Ok(artifacts)
}

/// Every test on SQLite, then the end-to-end suite again on PostgreSQL and without an API
/// token (`PAYNOTIFY_TEST_NO_TOKEN=1`: both access modes run, at no extra cost; tests of
/// the token ask for one). The same build; the server is `PAYNOTIFY_TEST_POSTGRES_URL`,
/// default `postgres://postgres@127.0.0.1:5432/test`). Both run even if the first fails;
/// `PAYNOTIFY_TEST_SKIP_POSTGRES=1` skips the second. ARGS go to `cargo test` in the
/// first pass; in the second, only those after `--` (the test harness's) and any
/// `--test NAME` choosing end-to-end files.
fn test(root: &Path, args: &[String]) -> Result<()> {
    let plugins = build_plugins(root)?;
    let build = build_tests(root)?;
    let skip = std::env::var_os("PAYNOTIFY_TEST_SKIP_POSTGRES").is_some_and(|v| v == "1");
    let in_ci = std::env::var_os("CI").is_some_and(|v| v == "true");
    ensure_debian_packages(
        "the signed-handler tests",
        &[(SSH_KEYGEN, "openssh-client")],
    )?;
    if let Err(e) = ensure_debian_packages(
        "the deploying tests",
        &[(SQLITE3, "sqlite3"), (PSQL, "postgresql-client")],
    ) {
        eprintln!("xtask: {e:#}; the deploying tests will skip what needs them");
    }
    if let Err(e) = ensure_browser() {
        if in_ci {
            return Err(e.context("CI=true: the console's browser tests need Chromium"));
        }
        eprintln!("xtask: {e:#}; the console's browser tests will be skipped");
    }
    let mut sqlite = cargo();
    sqlite
        .current_dir(root)
        .env("PAYNOTIFY_TEST_PLUGINS", &plugins)
        .env("PAYNOTIFY_BIN", &build.bin)
        .env("PAYNOTIFY_TEST_DATABASE", "sqlite")
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(args);
    if !skip || in_ci {
        // The PostgreSQL-only tests (several hosts on one database) run once, in the
        // PostgreSQL pass below.
        sqlite.env("PAYNOTIFY_TEST_POSTGRES_PASS_FOLLOWS", "1");
    }
    let mut totals = Totals::default();
    let sqlite = run_counted(&mut sqlite, &mut totals);
    let postgres = if skip && !in_ci {
        eprintln!("xtask: PAYNOTIFY_TEST_SKIP_POSTGRES=1: not running the tests on PostgreSQL");
        Ok(())
    } else {
        if skip {
            eprintln!(
                "xtask: CI=true: PostgreSQL tests run even with PAYNOTIFY_TEST_SKIP_POSTGRES=1"
            );
        }
        drop_stale_test_schemas();
        postgres_pass(root, &build, &plugins, args, &mut totals)
    };
    // One closing line over both passes (cargo's own last line is a crate's empty doc-test run).
    println!("tests: {} passed, {} failed", totals.passed, totals.failed);
    match (sqlite, postgres) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) => Err(e.context("tests failed on SQLite")),
        (Ok(()), Err(e)) => Err(e.context("tests failed on PostgreSQL")),
        (Err(s), Err(p)) => bail!("tests failed on SQLite ({s:#}) and on PostgreSQL ({p:#})"),
    }
}

/// The end-to-end test executables again, on PostgreSQL. They are run directly, not
/// through `cargo test -p paynotify-tests`: any other package selection than the first
/// pass's resolves other features and would compile the host and every test a second
/// time (minutes of CPU and gigabytes of disk).
fn postgres_pass(
    root: &Path,
    build: &TestBuild,
    plugins: &Path,
    args: &[String],
    totals: &mut Totals,
) -> Result<()> {
    let (cargo_args, harness_args) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &[][..]),
    };
    let chosen: Vec<&str> = cargo_args
        .windows(2)
        .filter(|w| w[0] == "--test")
        .map(|w| w[1].as_str())
        .collect();
    let mut failed = Vec::new();
    for (name, exe) in &build.e2e {
        if !chosen.is_empty() && !chosen.contains(&name.as_str()) {
            continue;
        }
        let mut cmd = Command::new(exe);
        cmd.current_dir(root.join("tests"))
            .env("PAYNOTIFY_TEST_PLUGINS", plugins)
            .env("PAYNOTIFY_BIN", &build.bin)
            .env("PAYNOTIFY_TEST_DATABASE", "postgres")
            .env("PAYNOTIFY_TEST_NO_TOKEN", "1")
            .args(harness_args);
        if let Err(e) = run_counted(&mut cmd, totals) {
            eprintln!("xtask: {name} failed on PostgreSQL: {e:#}");
            failed.push(name.as_str());
        }
    }
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Debian's Chromium and its WebDriver, which the console's browser tests drive.
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Installs `chromium` and `chromium-driver` if either binary is missing.
fn ensure_browser() -> Result<()> {
    ensure_debian_packages(
        "the console's browser tests",
        &[(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")],
    )
}

/// `ssh-keygen`, with which the signed-handler tests make keys and sign files.
const SSH_KEYGEN: &str = "/usr/bin/ssh-keygen";

/// The `sqlite3` CLI that `deploy/backup-sqlite.sh` uses, and `psql`, which runs
/// `deploy/postgres-setup.sql` (tests/deploying.rs) and drops old test schemas.
const SQLITE3: &str = "/usr/bin/sqlite3";
const PSQL: &str = "/usr/bin/psql";

/// Installs Debian `packages` with apt-get if any of their `(binary, package)` binaries is
/// missing (with `sudo` unless already root; `apt-get update` first if the install fails).
fn ensure_debian_packages(why: &str, needs: &[(&str, &str)]) -> Result<()> {
    let missing = || needs.iter().any(|(bin, _)| !Path::new(bin).exists());
    if !missing() {
        return Ok(());
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let apt = |args: &[&str]| {
        let mut cmd = if root {
            Command::new("apt-get")
        } else {
            let mut sudo = Command::new("sudo");
            sudo.arg("apt-get");
            sudo
        };
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    let packages: Vec<&str> = needs.iter().map(|(_, p)| *p).collect();
    let install: Vec<&str> = ["install", "-y"]
        .into_iter()
        .chain(packages.iter().copied())
        .collect();
    eprintln!("xtask: installing {} for {why}", packages.join(" and "));
    if run_cmd(&mut apt(&install)).is_err() {
        run_cmd(&mut apt(&["update"]))?;
        run_cmd(&mut apt(&install))?;
    }
    if missing() {
        let bins: Vec<&str> = needs.iter().map(|(b, _)| *b).collect();
        bail!("{} still missing after apt-get install", bins.join(" or "));
    }
    Ok(())
}

/// What `cargo test --workspace --no-run` built.
struct TestBuild {
    /// The `paynotify` binary the multi-process, crash and soak tests start as child
    /// processes (passed to them as `PAYNOTIFY_BIN`).
    bin: PathBuf,
    /// The end-to-end test executables (package `paynotify-tests`) by name, sorted.
    e2e: Vec<(String, PathBuf)>,
}

/// Builds every test, and the binary with them, in the one build `cargo test --workspace`
/// uses (a `cargo build -p paynotify` would resolve other features and compile the host
/// a second time; [`BUILD_BIN`] resolves the same ones), and lists the executables from
/// cargo's JSON messages.
fn build_tests(root: &Path) -> Result<TestBuild> {
    let mut cmd = cargo();
    cmd.current_dir(root).args([
        "test",
        "--workspace",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    let e2e_manifest = root.join("tests").join("Cargo.toml");
    let mut bin = None;
    let mut e2e = Vec::new();
    for a in cargo_artifacts(&mut cmd)? {
        // The bin target is reported twice: its unit-test harness (`profile.test`) and
        // the program itself.
        if a.is("bin") && a.name == "paynotify" && !a.test {
            bin = Some(a.executable);
        } else if a.is("test") && a.manifest == e2e_manifest {
            e2e.push((a.name, a.executable));
        }
    }
    e2e.sort();
    let bin = bin.context("cargo built no `paynotify` binary")?;
    if e2e.is_empty() {
        bail!("cargo built no end-to-end tests (package paynotify-tests)");
    }
    Ok(TestBuild { bin, e2e })
}

/// The soak test at `SCALE` (first argument, default 10) times its CI size, on
/// PostgreSQL, with its figures printed.
fn soak(root: &Path, args: &[String]) -> Result<()> {
    let scale = args.first().map(String::as_str).unwrap_or("10");
    if scale.parse::<u32>().map_or(true, |s| s == 0) {
        bail!("soak SCALE must be a positive whole number, not `{scale}`");
    }
    let plugins = build_plugins(root)?;
    let build = build_tests(root)?;
    let exe = build
        .e2e
        .iter()
        .find(|(name, _)| name == "soak")
        .map(|(_, exe)| exe)
        .context("the soak test was not built")?;
    drop_stale_test_schemas();
    run_cmd(
        Command::new(exe)
            .current_dir(root.join("tests"))
            .env("PAYNOTIFY_TEST_PLUGINS", &plugins)
            .env("PAYNOTIFY_BIN", &build.bin)
            .env("PAYNOTIFY_TEST_DATABASE", "postgres")
            .env("PAYNOTIFY_SOAK_SCALE", scale)
            .arg("--nocapture"),
    )
}

/// Passed/failed counts summed over `cargo test` result lines.
#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
}

/// Runs tests (`cargo test` or a test executable), echoing their output as it comes, and
/// adds up its result lines.
fn run_counted(cmd: &mut Command, totals: &mut Totals) -> Result<()> {
    use std::io::{BufRead, BufReader, Write};
    eprintln!("xtask: {}", shown(cmd));
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", shown(cmd)))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        writeln!(out, "{line}")?;
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| {
                rest.split(';')
                    .find_map(|part| {
                        part.trim()
                            .strip_suffix(word)?
                            .trim()
                            .rsplit(' ')
                            .next()?
                            .parse::<u64>()
                            .ok()
                    })
                    .unwrap_or(0)
            };
            totals.passed += count("passed");
            totals.failed += count("failed");
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{} failed with {status}", shown(cmd));
    }
    Ok(())
}

/// Test servers leave their `t_…` schemas behind (a test may reopen one); nothing uses
/// them once a run is over, so each PostgreSQL pass starts by dropping the old ones.
/// Best effort: without `psql` they just stay.
fn drop_stale_test_schemas() {
    let url = std::env::var("PAYNOTIFY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let sql = "DO $$DECLARE s text; BEGIN \
               FOR s IN SELECT nspname FROM pg_namespace WHERE nspname LIKE 't\\_%' LOOP \
               EXECUTE format('DROP SCHEMA %I CASCADE', s); END LOOP; END$$;";
    match Command::new("psql")
        .args([url.as_str(), "-q", "-c", sql])
        .status()
    {
        Ok(s) if s.success() => {}
        Ok(s) => eprintln!("xtask: could not drop old test schemas (psql: {s}); continuing"),
        Err(e) => eprintln!("xtask: could not drop old test schemas (psql: {e}); continuing"),
    }
}

/// The dispatch + hot-reload table (in process), then the throughput, noisy-neighbour
/// and event-stream tables: the release `paynotify` binary as a child process under load
/// from the bench (`PAYNOTIFY_BENCH_*` variables choose backends, providers and scale; see
/// tests/benches/throughput.rs, noisy_neighbour.rs and event_streams.rs).
///
/// Every step names both packages: one feature set, so the host library is compiled once
/// in release for the binary and both benches (`cargo build -p paynotify` alone resolves
/// other features and would compile it a second time). `cargo bench` builds the package's
/// binary with the bench profile, which is the release profile.
fn bench(root: &Path) -> Result<()> {
    let plugins = build_plugins(root)?;
    let both = ["-p", "paynotify", "-p", "paynotify-tests"];
    run_cmd(
        cargo()
            .current_dir(root)
            .arg("bench")
            .args(both)
            .arg("--no-run"),
    )?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let bin = target_dir
        .join("release")
        .join(format!("paynotify{}", std::env::consts::EXE_SUFFIX));
    if !bin.is_file() {
        bail!("{} was not built", bin.display());
    }
    run_cmd(
        cargo()
            .current_dir(root)
            .env("PAYNOTIFY_BENCH_PLUGINS", &plugins)
            .arg("bench")
            .args(both)
            .args(["--bench", "dispatch"]),
    )?;
    for bench in ["throughput", "noisy_neighbour", "event_streams"] {
        run_cmd(
            cargo()
                .current_dir(root)
                .env("PAYNOTIFY_BENCH_PLUGINS", &plugins)
                .env("PAYNOTIFY_BENCH_BIN", &bin)
                .arg("bench")
                .args(both)
                .args(["--bench", bench]),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Every package's features as `cargo tree` resolves them for the workspace, with or
    /// without dev-dependencies: `package version (path)` → `[features]`.
    fn features(edges: &str) -> BTreeMap<String, String> {
        let out = cargo()
            .current_dir(workspace_root())
            .args(["tree", "--workspace", "--prefix", "none", "--no-dedupe"])
            .args(["-e", edges, "-f", "{p}|{f}"])
            .output()
            .expect("run cargo tree");
        assert!(
            out.status.success(),
            "cargo tree: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('|'))
            .map(|(p, f)| (p.trim_end_matches(" (*)").to_owned(), f.to_owned()))
            .collect()
    }

    /// `cargo xtask run` builds the binary without dev-dependencies ([`BUILD_BIN`]), the
    /// tests with them: every package the binary uses must get the same features in both,
    /// or `run` after `test` compiles the host (and whatever differs) a second time.
    #[test]
    fn run_and_test_builds_resolve_the_same_features() {
        assert_eq!(&BUILD_BIN[..2], ["build", "--workspace"]);
        let test_build = features("normal,build,dev");
        let run_build = features("normal,build");
        let differ: Vec<String> = run_build
            .iter()
            .filter(|(p, f)| test_build.get(*p) != Some(f))
            .map(|(p, f)| format!("{p}: run [{f}], test [{:?}]", test_build.get(p)))
            .collect();
        assert!(
            differ.is_empty(),
            "features differ between `cargo build --workspace` and `cargo test --workspace` \
             (a dev-dependency turns them on: add the same dependency with those features to \
             tests/Cargo.toml's [dependencies]):\n{}",
            differ.join("\n")
        );
    }
}

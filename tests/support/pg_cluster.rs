//! A private PostgreSQL cluster for fault tests: started by the test in a temporary
//! directory on a free port, so it can be frozen (SIGSTOP), stopped hard and restarted
//! without disturbing the shared test server.
//!
//! Needs PostgreSQL's server binaries (`initdb`, `pg_ctl`: found on `PATH` or under
//! `/usr/lib/postgresql/*/bin`). `initdb` refuses to run as root, so as root every
//! command runs as user `postgres` (through `runuser`), which then owns the directory.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running (or stopped, or frozen) cluster; stopped and removed when dropped.
pub struct PgCluster {
    bin: PathBuf,
    data: PathBuf,
    /// Where it listens.
    pub port: u16,
    frozen: bool,
    _dir: tempfile::TempDir,
}

/// Why a cluster cannot be had here (no PostgreSQL binaries, no `postgres` user).
#[derive(Debug)]
pub struct Unavailable(pub String);

impl PgCluster {
    /// Creates the cluster (trust authentication, `fsync` off: the faults are process
    /// faults, and the OS keeps what the server wrote) and starts it.
    pub fn start() -> Result<PgCluster, Unavailable> {
        let bin = server_bin_dir().ok_or_else(|| {
            Unavailable(
                "no PostgreSQL server binaries (initdb, pg_ctl) on PATH or under \
                 /usr/lib/postgresql/*/bin"
                    .into(),
            )
        })?;
        let dir = tempfile::tempdir().map_err(|e| Unavailable(format!("temp dir: {e}")))?;
        if is_root() {
            // The server runs as `postgres`: it must be able to reach and own its directory.
            let chown = Command::new("chown")
                .arg("postgres:")
                .arg(dir.path())
                .status();
            if !chown.is_ok_and(|s| s.success()) {
                return Err(Unavailable(
                    "cannot chown the cluster's directory to user postgres".into(),
                ));
            }
        }
        let data = dir.path().join("data");
        let mut cluster = PgCluster {
            bin,
            data,
            port: crate::process::free_port(),
            frozen: false,
            _dir: dir,
        };
        let initdb = cluster.run(
            "initdb",
            &[
                "-D",
                &cluster.data.display().to_string(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        initdb.map_err(Unavailable)?;
        cluster.start_server().map_err(Unavailable)?;
        Ok(cluster)
    }

    /// `postgres://postgres@127.0.0.1:{port}/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server (again, after [`PgCluster::stop_immediate`]) and waits until it
    /// accepts connections.
    pub fn start_server(&mut self) -> Result<(), String> {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off \
             -c max_connections=100",
            self.port,
            self.data.display()
        );
        self.pg_ctl(&["start", "-w", "-t", "60", "-o", &options])
    }

    /// `pg_ctl stop -m immediate`: every server process ends at once, without a
    /// checkpoint; the next start recovers from the WAL.
    pub fn stop_immediate(&mut self) -> Result<(), String> {
        self.thaw();
        self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "60"])
    }

    /// Freezes the server: SIGSTOP to the postmaster, then to each of its processes. The
    /// kernel still accepts TCP connections for it; nothing answers.
    pub fn freeze(&mut self) {
        let Some(postmaster) = self.postmaster_pid() else {
            return;
        };
        signal("STOP", postmaster);
        for child in children(postmaster) {
            signal("STOP", child);
        }
        self.frozen = true;
    }

    /// Undoes [`PgCluster::freeze`]: SIGCONT to its processes, then the postmaster.
    pub fn thaw(&mut self) {
        if !self.frozen {
            return;
        }
        if let Some(postmaster) = self.postmaster_pid() {
            for child in children(postmaster) {
                signal("CONT", child);
            }
            signal("CONT", postmaster);
        }
        self.frozen = false;
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.join("server.log")).unwrap_or_default()
    }

    fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), String> {
        let data = self.data.display().to_string();
        let log = self.data.join("server.log").display().to_string();
        let mut all = vec!["-D", &data, "-l", &log];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all)
    }

    /// Runs server binary `name` (as `postgres` when we are root); `Err` with its output.
    fn run(&self, name: &str, args: &[&str]) -> Result<(), String> {
        let program = self.bin.join(name);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let out = cmd
            .args(args)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{name} {args:?} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Never leave a frozen or running server behind, whatever the test did.
        self.thaw();
        let _ = self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "30"]);
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The directory holding `initdb` and `pg_ctl`.
fn server_bin_dir() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let mut versioned: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    // The newest version first.
    versioned.sort();
    versioned.reverse();
    on_path.into_iter().chain(versioned).find_map(|dir| {
        let initdb = std::fs::canonicalize(dir.join("initdb")).ok()?;
        let bin = initdb.parent()?.to_path_buf();
        bin.join("pg_ctl").is_file().then_some(bin)
    })
}

/// The processes whose parent is `pid` (from `/proc/*/stat`).
fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| parent_of(*child) == Some(pid))
        .collect()
}

/// The parent of process `pid`: the field after the `)` closing its name in `stat`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

fn signal(name: &str, pid: u32) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

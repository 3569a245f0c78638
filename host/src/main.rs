//! The `paynotify` binary: parses the command line, sets up logging and runs the command
//! (see [`cli`]).

mod cli;

use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command, LogFormat};

// glibc's malloc was ~12 % of the server's CPU under load (every notification allocates
// and frees its body, parsed fields, statements and a wasm call's buffers across worker
// threads, and frees often land on another thread's arena); mimalloc's per-thread free
// lists make those a few instructions.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Cli::parse();
    let backtraces =
        args.verbose || cli::backtrace_requested(std::env::var_os("PAYNOTIFY_BACKTRACE"));
    // Error backtraces are captured (std's `Backtrace::capture`, which anyhow and wasmtime
    // use) when RUST_LIB_BACKTRACE, else RUST_BACKTRACE, says so. Many Rust developers
    // keep RUST_BACKTRACE=1 set: a plain user error then printed ~30 frames, and every
    // handler error in the server paid for a capture. Ours is the one switch; panics
    // still follow RUST_BACKTRACE. Set before the runtime starts any thread.
    std::env::set_var("RUST_LIB_BACKTRACE", if backtraces { "1" } else { "0" });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprint!("{}", cli::error_text(&e, backtraces));
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Cli) -> anyhow::Result<()> {
    let json_logs = matches!(args.log_format, LogFormat::Json);
    let logs = match args.command {
        // It writes a project and says what to do next: nothing to log.
        Command::NewPlugin { .. } => None,
        // The handler's lines go to the report, the host's own warnings to stderr.
        Command::Try(_) => Some(cli::tryout::init_tracing(json_logs)),
        _ => {
            paynotify::logging::init(json_logs);
            None
        }
    };
    cli::run(args, logs.unwrap_or_default()).await
}

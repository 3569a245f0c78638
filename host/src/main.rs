//! The `paynotify` binary: parses the command line, sets up logging and runs the command
//! (see [`cli`]).

mod cli;

use clap::Parser;
use cli::{Cli, Command, LogFormat};

// glibc's malloc was ~12 % of the server's CPU under load (every notification allocates
// and frees its body, parsed fields, statements and a wasm call's buffers across worker
// threads, and frees often land on another thread's arena); mimalloc's per-thread free
// lists make those a few instructions.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Cli::parse();
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

//! `lotse`: the command line. Parses flags, sets up logging, hands over to the library.

use std::process::ExitCode;

use clap::Parser;

// mimalloc instead of glibc malloc: the intake path allocates many small buffers on several
// threads, where glibc's arenas showed up in profiles (malloc, free, consolidation).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = hub::cli::Cli::parse();
    // Commands that print their own report keep the log quiet unless RUST_LOG asks for more.
    let level = match cli.command {
        hub::cli::Command::Serve(_) | hub::cli::Command::Receiver(_) => "info",
        _ => "warn",
    };
    hub::telemetry::init(cli.log_json, level);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lotse: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(hub::cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lotse: {e:#}");
            ExitCode::from(2)
        }
    }
}

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
    // Blocking threads only wait for the XSD validator's workers (and read large bodies): a few
    // keep those workers busy. Tokio's default (512) let an overload start hundreds of threads,
    // each with its own allocator heap: 800 MB resident at 8,000/s offered.
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().max_blocking_threads(16).build() {
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

//! The `lotse` commands. Each command's flags are a clap struct next to the code that runs it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Lotse: the interoperability message hub for XÖV messages.
///
/// Partners POST cases (XÖV XML, its JSON form, or FIT-Connect metadata); Lotse reads their
/// header, validates them against their XSD, routes them by standard, message type, reader,
/// author, public service and trust level, stores them durably and delivers them to agency
/// endpoints, with retries, dead letters, status and replay. See README.md and docs/.
#[derive(Debug, Parser)]
#[command(name = "lotse", version, propagate_version = true)]
pub struct Cli {
    /// Log as JSON lines (for log shippers) instead of human-readable text.
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the hub with a config file.
    Serve(ServeArgs),
    /// Run the demo: hub, sample receiver and the shipped sample messages, in one process.
    Demo(crate::demo::DemoArgs),
    /// Send files to a hub as a partner would, and print each answer.
    Submit(crate::submit::SubmitArgs),
    /// Check XML messages against their XSD (exit 0: all valid, 1: some invalid).
    Validate(crate::check::ValidateArgs),
    /// Convert a message between XML and its JSON form (to stdout).
    Convert(crate::check::ConvertArgs),
    /// Print what Lotse reads from a message: standard, version, type, reader, author, ...
    Inspect(crate::check::InspectArgs),
    /// Run a sample agency receiver that stores what it receives in a folder.
    Receiver(crate::receiver::ReceiverArgs),
    /// The agency's side of a mailbox: fetch its deliveries into a folder and acknowledge them.
    Fetch(crate::fetch::FetchArgs),
    /// Load tool: send N submissions with C clients to a running hub and report rates.
    Bench(crate::bench::BenchArgs),
    /// Operator commands on deliveries (through the admin API).
    Deliveries(crate::api::admin_cli::DeliveriesArgs),
    /// Operator commands on endpoints: list, pause, resume (through the admin API).
    Endpoints(crate::api::admin_cli::EndpointsArgs),
    /// What a hub process says about itself (through the admin API): whether it takes
    /// submissions (and why not), its store, on RabbitMQ its link to the broker, counts per
    /// state, paused endpoints, and what each delivery worker is doing (on RabbitMQ with the
    /// endpoint's work held by the process). Exit 0 when it takes submissions, 1 when it does
    /// not, 2 when the admin API does not answer.
    Status(crate::api::admin_cli::StatusArgs),
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The config file (see docs/configuration.md).
    #[arg(long, short, default_value = "lotse.toml", env = "LOTSE_CONFIG")]
    pub config: PathBuf,
    /// Only check: read the config (every key, the TLS files) and compile the schemas as a
    /// start would, print a summary and exit (0: it would start), without opening the store or
    /// the ports. For a deployment pipeline before it rolls out a changed config.
    #[arg(long)]
    pub check: bool,
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => {
            let config = crate::config::Config::load(&args.config)?;
            if args.check {
                return crate::app::check(config, &args.config).await;
            }
            crate::app::serve(config).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => crate::demo::run(args).await,
        Command::Submit(args) => crate::submit::run(args).await,
        Command::Validate(args) => crate::check::validate(args).await,
        Command::Convert(args) => crate::check::convert(args).await,
        Command::Inspect(args) => crate::check::inspect(args).await,
        Command::Receiver(args) => crate::receiver::run(args).await,
        Command::Fetch(args) => crate::fetch::run(args).await,
        Command::Bench(args) => crate::bench::run(args).await,
        Command::Deliveries(args) => crate::api::admin_cli::run(args).await,
        Command::Endpoints(args) => crate::api::admin_cli::run_endpoints(args).await,
        Command::Status(args) => crate::api::admin_cli::run_status(args).await,
    }
}

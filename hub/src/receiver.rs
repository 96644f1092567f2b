//! A sample agency receiver. (Placeholder: being written.)

#[derive(Debug, clap::Args)]
pub struct ReceiverArgs {}

pub async fn run(_args: ReceiverArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("`lotse receiver` is not built yet")
}

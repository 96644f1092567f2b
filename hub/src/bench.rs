//! `lotse bench`: the load tool. (Placeholder: being written.)

#[derive(Debug, clap::Args)]
pub struct BenchArgs {}

pub async fn run(_args: BenchArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("`lotse bench` is not built yet")
}

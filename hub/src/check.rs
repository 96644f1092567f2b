//! `lotse validate | convert | inspect`. (Placeholder: being written.)

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {}
#[derive(Debug, clap::Args)]
pub struct ConvertArgs {}
#[derive(Debug, clap::Args)]
pub struct InspectArgs {}

pub async fn validate(_args: ValidateArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("`lotse validate` is not built yet")
}
pub async fn convert(_args: ConvertArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("`lotse convert` is not built yet")
}
pub async fn inspect(_args: InspectArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("`lotse inspect` is not built yet")
}

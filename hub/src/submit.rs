//! `lotse submit FILE... --to URL`: send files as a partner would and print each answer.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// XML (XÖV) or JSON files; `.json` files are sent as application/json, all others as
    /// application/xml.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Base URL of the hub's partner API, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "LOTSE_URL")]
    pub to: String,
    /// Bearer token of the partner (when the hub has `[[partners]]`).
    #[arg(long, env = "LOTSE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Idempotency-Key to send (only with a single file).
    #[arg(long)]
    pub idempotency_key: Option<String>,
}

pub async fn run(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    if args.idempotency_key.is_some() && args.files.len() != 1 {
        anyhow::bail!("--idempotency-key needs exactly one file");
    }
    // Bounded, so a hub that takes the connection and never answers is an error, not a hang:
    // 10 s to connect, and no more than 60 s without a byte moving either way.
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .read_timeout(std::time::Duration::from_secs(60))
        .build()
        .context("cannot build the HTTP client")?;
    let url = format!("{}/v1/submissions", args.to.trim_end_matches('/'));
    let mut all_ok = true;
    for file in &args.files {
        let body = std::fs::read(file).with_context(|| format!("cannot read `{}`", file.display()))?;
        let ct = if file.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) {
            "application/json"
        } else {
            "application/xml"
        };
        let mut req = client.post(&url).header("content-type", ct).body(body);
        if let Some(t) = &args.token {
            req = req.bearer_auth(t);
        }
        if let Some(k) = &args.idempotency_key {
            req = req.header("idempotency-key", k);
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status();
                let dup = resp.headers().contains_key("lotse-duplicate");
                let text = resp.text().await.unwrap_or_default();
                all_ok &= status.is_success();
                println!(
                    "{}: {}{} {}",
                    file.display(),
                    status.as_u16(),
                    if dup { " (duplicate)" } else { "" },
                    text.trim()
                );
            }
            Err(e) => {
                all_ok = false;
                println!("{}: cannot reach {url}: {e}", file.display());
            }
        }
    }
    Ok(if all_ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

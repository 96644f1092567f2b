//! Harness pieces for the RabbitMQ suites: the `[queue]` section for a unique prefix, restarting
//! the local broker (`rabbitmqctl stop_app` / `start_app`), and deleting a prefix's queues.
//!
//! Included by the suites with `#[path]` (this file is not a module of the harness library).

use std::time::Duration;

use anyhow::{Context, bail};

/// A prefix no other test run uses.
pub fn unique_prefix(test: &str) -> String {
    format!("lotse-e2e-{test}-{}", uuid::Uuid::new_v4().simple())
}

/// The `[queue]` section of a config.
pub fn queue_section(url: &str, prefix: &str) -> String {
    format!("[queue]\nkind = \"rabbitmq\"\nurl = \"{url}\"\nprefix = \"{prefix}\"\n")
}

/// Runs `rabbitmqctl <args>` with a bound on its run time.
pub async fn rabbitmqctl(args: &[&str]) -> anyhow::Result<()> {
    let run = tokio::process::Command::new("rabbitmqctl").args(args).kill_on_drop(true).output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .with_context(|| format!("`rabbitmqctl {}` took over 120 s", args.join(" ")))?
        .context("cannot run `rabbitmqctl` (is RabbitMQ installed here?)")?;
    if !out.status.success() {
        bail!("`rabbitmqctl {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Whether this machine can restart the broker (a local `rabbitmqctl` that reaches it).
pub async fn can_restart_broker() -> bool {
    rabbitmqctl(&["status"]).await.is_ok()
}

/// Deletes every queue of `prefix` for these endpoints.
pub async fn delete_queues(url: &str, prefix: &str, endpoints: &[&str]) {
    let endpoints: Vec<String> = endpoints.iter().map(|e| (*e).to_owned()).collect();
    if let Err(e) = hub::store::rabbitmq::RabbitStore::delete_topology(url, prefix, &endpoints).await {
        eprintln!("cannot delete the queues of `{prefix}`: {e:#}");
    }
}

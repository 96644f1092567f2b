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

/// A memory alarm on the local broker (its high watermark set near zero), so it blocks every
/// publishing connection; the watermark goes back when this is dropped (also after a failed
/// assertion). `None` (skip) without a local `rabbitmqctl`, unless CI is set.
pub struct MemoryAlarm {
    watermark: String,
}

impl MemoryAlarm {
    pub fn raise() -> Option<MemoryAlarm> {
        let read = std::process::Command::new("rabbitmqctl")
            .args(["eval", "vm_memory_monitor:get_vm_memory_high_watermark()."])
            .output();
        let watermark = match read {
            Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            failed => {
                assert!(!tests::in_ci(), "CI=true needs a local rabbitmqctl: {failed:?}");
                eprintln!("skipped: no local `rabbitmqctl` to raise a resource alarm ({failed:?})");
                return None;
            }
        };
        let set = std::process::Command::new("rabbitmqctl").args(["set_vm_memory_high_watermark", "0.000001"]).status();
        assert!(set.is_ok_and(|s| s.success()), "cannot set the memory watermark");
        Some(MemoryAlarm { watermark })
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        // A relative watermark prints as a float (`0.4`); an absolute one as `{absolute,N}`.
        let args: Vec<&str> = match self.watermark.strip_prefix("{absolute,").and_then(|w| w.strip_suffix('}')) {
            Some(bytes) => vec!["set_vm_memory_high_watermark", "absolute", bytes],
            None => vec!["set_vm_memory_high_watermark", &self.watermark],
        };
        let restored = std::process::Command::new("rabbitmqctl").args(&args).status();
        if !restored.is_ok_and(|s| s.success()) {
            eprintln!("could not set the broker's memory watermark back to {}", self.watermark);
        }
    }
}

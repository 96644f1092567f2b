//! `lotse serve` as a child process: config in a temp dir, bound ports from its first stdout line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a starting hub may take to print its `listening` line (debug build, cold disk).
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub fn resolve_bin(built: &str) -> PathBuf {
    match std::env::var_os("LOTSE_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(built),
    }
}

/// A temp folder holding one hub's config, data dir and logs. Kept across restarts.
pub struct HubDir {
    pub dir: tempfile::TempDir,
    pub bin: PathBuf,
    starts: u32,
}

impl HubDir {
    /// A fresh folder; `config` is written as `lotse.toml`, with `{data_dir}` replaced by `data`.
    pub fn new(bin: PathBuf, config: &str) -> anyhow::Result<HubDir> {
        let dir = tempfile::Builder::new().prefix("lotse-e2e-").tempdir().context("cannot create a temp dir")?;
        let text = config.replace("{data_dir}", "data");
        std::fs::write(dir.path().join("lotse.toml"), text).context("cannot write lotse.toml")?;
        Ok(HubDir { dir, bin, starts: 0 })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("lotse.toml")
    }

    /// Starts `lotse serve` on this folder's config and waits for its `listening` line.
    pub async fn start(&mut self) -> anyhow::Result<Hub> {
        self.starts += 1;
        let log = self.dir.path().join(format!("lotse-{}.log", self.starts));
        let log_file = std::fs::File::create(&log).context("cannot create the hub log")?;
        let mut child = Command::new(&self.bin)
            .arg("serve")
            .arg("--config")
            .arg(self.config_path())
            .env("RUST_LOG", std::env::var("LOTSE_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start `{}`", self.bin.display()))?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(START_TIMEOUT, lines.next_line()).await;
        let line = match first {
            Ok(Ok(Some(line))) => line,
            other => {
                let _ = child.kill().await;
                bail!("lotse printed no `listening` line ({other:?}); its log:\n{}", tail(&log));
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let (partner, admin) =
            parse_listening(&line).with_context(|| format!("unexpected first line `{line}`; log:\n{}", tail(&log)))?;
        Ok(Hub { child, partner, admin, log })
    }
}

/// Parses `listening partner=<ip:port> admin=<ip:port>`.
pub fn parse_listening(line: &str) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let rest = line.strip_prefix("listening ").context("line does not start with `listening `")?;
    let (mut partner, mut admin) = (None, None);
    for part in rest.split_whitespace() {
        if let Some(a) = part.strip_prefix("partner=") {
            partner = Some(a.parse().context("bad partner address")?);
        } else if let Some(a) = part.strip_prefix("admin=") {
            admin = Some(a.parse().context("bad admin address")?);
        }
    }
    Ok((partner.context("no partner=")?, admin.context("no admin=")?))
}

/// A running `lotse serve`. Dropping it kills the process (SIGKILL).
pub struct Hub {
    pub child: Child,
    pub partner: SocketAddr,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

impl Hub {
    pub fn partner_url(&self, path: &str) -> String {
        format!("http://{}{}", self.partner, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// `kill -9` (SIGKILL, what `Child::kill` sends) and reap the process.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        self.child.kill().await.context("cannot kill lotse")?;
        Ok(())
    }

    /// SIGTERM (a graceful stop: attempts in flight finish, the store closes) and wait up to
    /// 30 s for the exit; true when it exited 0.
    pub async fn terminate(&mut self) -> anyhow::Result<bool> {
        let pid = self.child.id().context("the process has ended")?.to_string();
        let sent = std::process::Command::new("kill").args(["-TERM", &pid]).status().context("kill -TERM")?;
        anyhow::ensure!(sent.success(), "kill -TERM {pid} failed");
        let status = tokio::time::timeout(std::time::Duration::from_secs(30), self.child.wait())
            .await
            .context("no exit within 30 s of SIGTERM")??;
        Ok(status.success())
    }

    /// The last lines of this process's log, for failure messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(40);
    lines[from..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_listening_line() {
        let (p, a) = parse_listening("listening partner=127.0.0.1:4001 admin=127.0.0.1:4002").expect("parses");
        assert_eq!(p.port(), 4001);
        assert_eq!(a.port(), 4002);
        assert!(parse_listening("listening partner=127.0.0.1:1").is_err());
        assert!(parse_listening("ready").is_err());
    }
}

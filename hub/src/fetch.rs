//! `lotse fetch`: the agency's side of a mailbox. Run inside the agency's network (no incoming
//! connections needed), it fetches each delivery from a hub's mailbox, writes it into a folder
//! the way a `kind = "file"` endpoint does (metadata, then the payload, each `fsync`ed and
//! renamed into place), and only then acknowledges it. A delivery it could not write is
//! rejected with `retry`, so the hub offers it again; one fetched but not acknowledged (the
//! process stopped in between) comes again after the mailbox's deadline and replaces its files.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::delivery::file::FileTransport;
use crate::delivery::retry::AttemptResult;
use crate::store::Lease;

#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    /// Base URL of the hub's partner API, e.g. `https://lotse.example:8080`.
    #[arg(long, env = "LOTSE_URL")]
    pub from: String,
    /// The mailbox: the endpoint's name in the hub's config.
    #[arg(long)]
    pub mailbox: String,
    /// The mailbox's bearer token.
    #[arg(long, env = "LOTSE_MAILBOX_TOKEN", hide_env_values = true)]
    pub token: String,
    /// The folder to write deliveries into (it must exist).
    #[arg(long)]
    pub into: PathBuf,
    /// Stop once the mailbox is empty, instead of waiting for more (for cron jobs and scripts).
    #[arg(long)]
    pub once: bool,
    /// How long one request waits for a delivery (long polling; at most 30 s).
    #[arg(long, default_value = "25s", value_parser = humantime::parse_duration)]
    pub wait: Duration,
}

/// Requests in a row that may fail (no connection, an error answer) before `--once` gives up.
const ONCE_ERRORS: u32 = 3;

pub async fn run(args: FetchArgs) -> anyhow::Result<ExitCode> {
    if !args.into.is_dir() {
        bail!("`--into {}` is not a folder", args.into.display());
    }
    // A folder it cannot write to would make it fetch and give back every delivery, each
    // counting as a failed attempt at the hub: find out before taking any.
    let probe = args.into.join(format!(".lotse-fetch-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").with_context(|| format!("cannot write into `{}`", args.into.display()))?;
    let _ = std::fs::remove_file(&probe);
    if args.wait > crate::api::mailbox::MAX_WAIT {
        bail!("`--wait` is at most 30s");
    }
    match reqwest::Url::parse(&args.from) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => {}
        _ => bail!("`--from` must be an http:// or https:// URL, like https://lotse.example:8080"),
    }
    let client = reqwest::Client::builder()
        .timeout(args.wait + Duration::from_secs(30))
        .build()
        .context("cannot build the HTTP client")?;
    let base = format!("{}/v1/mailboxes/{}", args.from.trim_end_matches('/'), args.mailbox);
    let next = format!("{base}/next?wait={}ms", args.wait.as_millis());
    let folder = FileTransport::new(args.into.clone());
    let mut errors = 0u32;
    let mut fetched = 0u64;
    loop {
        let asked = std::time::Instant::now();
        let failure = match client.get(&next).bearer_auth(&args.token).send().await {
            Err(e) => format!("cannot reach the hub: {}", crate::delivery::http::request_error(e)),
            Ok(resp) => match resp.status().as_u16() {
                204 if args.once => {
                    println!("mailbox `{}` is empty; {fetched} fetched", args.mailbox);
                    return Ok(ExitCode::SUCCESS);
                }
                204 => {
                    errors = 0;
                    // Answered at once (a paused mailbox, a short `--wait`): not again at once.
                    if asked.elapsed() < Duration::from_secs(1) {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    continue;
                }
                200 => match lease_of(resp, &args.mailbox).await {
                    // Cut off on the way: it comes again after the mailbox's deadline.
                    Err(e) => format!("{e:#}"),
                    Ok(lease) => match take(&client, &base, &args.token, &folder, lease).await {
                        Taken::Acknowledged(id) => {
                            errors = 0;
                            fetched += 1;
                            println!("{id}: written to `{}` and acknowledged", args.into.display());
                            continue;
                        }
                        // Every further delivery would fail the same way and count as a failed
                        // attempt at the hub.
                        Taken::Unwritable(failure) if args.once => {
                            eprintln!("{failure}");
                            return Ok(ExitCode::from(1));
                        }
                        Taken::Unwritable(failure) | Taken::NotAcknowledged(failure) => failure,
                    },
                },
                401 => bail!("mailbox `{}` refused the token (401)", args.mailbox),
                429 => {
                    let wait = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(1);
                    tokio::time::sleep(Duration::from_secs(wait.min(60))).await;
                    continue;
                }
                status => {
                    let body = resp.text().await.unwrap_or_default();
                    format!("the hub answered {status}: {}", body.chars().take(300).collect::<String>())
                }
            },
        };
        errors += 1;
        eprintln!("{failure}");
        if args.once && errors >= ONCE_ERRORS {
            return Ok(ExitCode::from(1));
        }
        tokio::time::sleep(Duration::from_secs(u64::from(errors.min(30)))).await;
    }
}

/// What became of one fetched delivery.
enum Taken {
    Acknowledged(crate::store::DeliveryId),
    /// Written, but the acknowledgement did not go through: it comes again.
    NotAcknowledged(String),
    /// Not written; given back to the hub (rejected with `retry`).
    Unwritable(String),
}

/// Writes one fetched delivery into the folder, then acknowledges it; one it cannot write it
/// gives back.
async fn take(client: &reqwest::Client, base: &str, token: &str, folder: &FileTransport, lease: Lease) -> Taken {
    let id = lease.delivery_id;
    match folder.send(&lease).await {
        AttemptResult::Delivered { .. } => {
            match client.post(format!("{base}/deliveries/{id}/ack")).bearer_auth(token).send().await {
                Ok(r) if r.status().as_u16() == 204 => Taken::Acknowledged(id),
                // Written all the same; the hub offers it again and the files are replaced
                // under the same names.
                Ok(r) => Taken::NotAcknowledged(format!(
                    "{id}: written, but the hub did not take the acknowledgement (HTTP {}); it will come again",
                    r.status().as_u16()
                )),
                Err(e) => Taken::NotAcknowledged(format!(
                    "{id}: written, but the acknowledgement did not reach the hub ({}); it will come again",
                    crate::delivery::http::request_error(e)
                )),
            }
        }
        AttemptResult::Transient { error, .. } | AttemptResult::Permanent { error } => {
            let reason = serde_json::json!({ "reason": error, "retry": true });
            let reject = client.post(format!("{base}/deliveries/{id}/reject")).bearer_auth(token).json(&reason);
            let _ = reject.send().await;
            Taken::Unwritable(format!("{id}: cannot write it: {error}; given back, the hub will offer it again"))
        }
    }
}

/// The delivery a `200` from `next` carries, as the file transport writes it.
async fn lease_of(resp: reqwest::Response, mailbox: &str) -> anyhow::Result<Lease> {
    let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let delivery_id = header("lotse-delivery-id").and_then(|v| v.parse().ok()).context("no Lotse-Delivery-Id")?;
    let submission_id = header("lotse-submission-id").and_then(|v| v.parse().ok()).context("no Lotse-Submission-Id")?;
    let attempt = header("lotse-attempt").and_then(|v| v.parse().ok()).unwrap_or(1);
    let message_id = header("lotse-message-id");
    let content_type = header("content-type").unwrap_or_else(|| "application/octet-stream".into());
    let payload = resp.bytes().await.context("the delivery's body did not arrive whole")?;
    Ok(Lease {
        delivery_id,
        submission_id,
        endpoint: mailbox.to_owned(),
        attempt,
        budget_attempt: attempt,
        message_id,
        content_type,
        payload,
        token: 0,
    })
}

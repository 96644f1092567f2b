//! `lotse demo`: the hub on the embedded store, a sample agency receiver in the same process,
//! and the sample messages the project ships sent through it over real HTTP, with a summary of
//! where each one went.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

use crate::config::Config;
use crate::receiver::{ReceiverOptions, spawn};

/// The demo's configuration (placeholders `{data_dir}` and `{receiver}`).
const DEMO_CONFIG: &str = include_str!("../../fixtures/demo.toml");

/// Sample messages, compiled in so the demo runs from any folder. Sources and licenses:
/// `fixtures/samples/README.md`.
const SAMPLES: &[(&str, &[u8])] = &[
    (
        "xbeteiligung-kommunal.Initiieren.0401.xml",
        include_bytes!("../../fixtures/samples/xbeteiligung-kommunal.Initiieren.0401.xml"),
    ),
    (
        "xwasser-vorgang.transportieren.2010.xml",
        include_bytes!("../../fixtures/samples/xwasser-vorgang.transportieren.2010.xml"),
    ),
    (
        "xwasser-administration.quittung.0020.xml",
        include_bytes!("../../fixtures/samples/xwasser-administration.quittung.0020.xml"),
    ),
    (
        "xdomea-4.0.0-Aussonderung.Aussonderung.0503.xml",
        include_bytes!("../../fixtures/samples/xdomea-4.0.0-Aussonderung.Aussonderung.0503.xml"),
    ),
    (
        "xdomea-3.0.0-Aussonderung.Anbieteverzeichnis.0501.xml",
        include_bytes!("../../fixtures/samples/xdomea-3.0.0-Aussonderung.Anbieteverzeichnis.0501.xml"),
    ),
];

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Folder for the demo's store (`data/`) and what the sample receiver got (`received/`).
    /// Both are emptied at start.
    #[arg(long, default_value = "lotse-demo")]
    pub dir: PathBuf,
    /// Keep the hub and the receiver running after the summary (stop with Ctrl-C), to explore
    /// the API with curl.
    #[arg(long)]
    pub keep_running: bool,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let data_dir = args.dir.join("data");
    let received = args.dir.join("received");
    for d in [&data_dir, &received] {
        if d.exists() {
            std::fs::remove_dir_all(d).with_context(|| format!("cannot empty `{}`", d.display()))?;
        }
    }
    std::fs::create_dir_all(&received).with_context(|| format!("cannot create `{}`", received.display()))?;
    let data_dir = std::path::absolute(&data_dir)?;
    let received = std::path::absolute(&received)?;

    let receiver = spawn(ReceiverOptions {
        listen: "127.0.0.1:0".parse()?,
        out_dir: Some(received.clone()),
        fail_first: 0,
        fail_status: 503,
        status: 200,
    })
    .await
    .context("cannot start the sample receiver")?;
    let text = DEMO_CONFIG
        .replace("{data_dir}", &data_dir.display().to_string().replace('\\', "/"))
        .replace("{receiver}", &receiver.url(""));
    let config = Config::parse(&text).context("the built-in demo config is invalid")?;
    let partner = crate::app::bind(config.raw.listen)?;
    let admin = crate::app::bind(config.raw.admin_listen)?;
    let store = crate::app::open_store(&config).await?;
    let hub = crate::app::start(config, store, partner, admin).await?;
    let base = format!("http://{}", hub.partner_addr);
    println!("Lotse demo");
    println!("  partner API  {base}   (POST /v1/submissions, GET /v1/submissions/{{id}})");
    println!("  admin API    http://{}", hub.admin_addr);
    println!("  receiver     {}   writing to {}", receiver.url(""), received.display());
    println!();

    let client = reqwest::Client::new();
    let mut sent = Vec::new();
    for (name, bytes) in SAMPLES {
        let resp = client
            .post(format!("{base}/v1/submissions"))
            .header("content-type", "application/xml")
            .body(bytes.to_vec())
            .send()
            .await
            .with_context(|| format!("cannot send {name}"))?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        println!("sent {name:<55} -> {status}");
        sent.push((name, status, body));
    }
    // Show two safety features on the way: an exact resend is stored once, and a DTD is refused.
    let (dup_name, dup_bytes) = SAMPLES[0];
    let resend = client
        .post(format!("{base}/v1/submissions"))
        .header("content-type", "application/xml")
        .body(dup_bytes.to_vec())
        .send()
        .await?;
    let dup = resend.headers().contains_key("lotse-duplicate");
    println!(
        "sent {dup_name} again                 -> {} {}",
        resend.status().as_u16(),
        if dup { "(duplicate: answered with the first receipt, stored once)" } else { "(NOT recognised as duplicate)" }
    );
    let dtd = client
        .post(format!("{base}/v1/submissions"))
        .header("content-type", "application/xml")
        .body("<?xml version=\"1.0\"?><!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><x>&e;</x>")
        .send()
        .await?;
    let dtd_status = dtd.status().as_u16();
    let dtd_body: Value = dtd.json().await.unwrap_or(Value::Null);
    println!(
        "sent a message with a DTD (XXE attempt)                  -> {dtd_status} {}",
        dtd_body["detail"].as_str().unwrap_or("")
    );
    println!();

    // Wait until every accepted submission has settled (delivered or dead).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut views: Vec<Option<Value>> = vec![None; sent.len()];
    loop {
        let mut pending = false;
        for (i, (_, status, body)) in sent.iter().enumerate() {
            let Some(id) = body["submission_id"].as_str().filter(|_| *status == 202) else { continue };
            let v: Value = client.get(format!("{base}/v1/submissions/{id}")).send().await?.json().await?;
            pending |= v["state"] == "in_progress";
            views[i] = Some(v);
        }
        if !pending || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    println!("{:<55} {:<6} {:<36} {:<24} {:<16} state", "message", "type", "reader", "route", "endpoint");
    let mut all_delivered = dup && dtd_status == 400;
    for ((name, status, body), view) in sent.iter().zip(&views) {
        let Some(v) = view else {
            all_delivered = false;
            println!("{name:<55} refused with {status}: {}", body["detail"].as_str().unwrap_or(""));
            continue;
        };
        let meta = &v["meta"];
        for d in v["deliveries"].as_array().into_iter().flatten() {
            let state = d["state"].as_str().unwrap_or("?");
            all_delivered &= state == "delivered";
            println!(
                "{:<55} {:<6} {:<36} {:<24} {:<16} {state} after {} attempt(s)",
                name,
                meta["message_type"].as_str().unwrap_or("-"),
                meta["reader"].as_str().unwrap_or("-"),
                v["route"].as_str().unwrap_or("-"),
                d["endpoint"].as_str().unwrap_or("-"),
                d["attempts"],
            );
        }
    }
    println!();
    println!("The receiver wrote what it got under {} (one folder per endpoint).", received.display());
    println!("Each submission's history: GET {base}/v1/submissions/<submission_id>");
    if args.keep_running {
        println!("Running until Ctrl-C.");
        let _ = tokio::signal::ctrl_c().await;
    }
    hub.stop().await;
    let _ = receiver.shutdown().await;
    if all_delivered {
        println!("demo ok: every sample was delivered");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("demo FAILED: not every sample was delivered (see above)");
        Ok(ExitCode::from(1))
    }
}

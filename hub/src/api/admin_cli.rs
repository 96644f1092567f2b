//! `lotse deliveries list | show | find | replay`, `lotse endpoints list | pause | resume` and
//! `lotse status`: operator commands, talking to the admin API.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

/// Where the admin API is: shared by every operator command.
#[derive(Debug, Args)]
pub struct AdminUrl {
    /// Base URL of the hub's admin API (it may hold a password: `--help` does not show the
    /// environment's value, and errors show the URL with the password as `***`).
    #[arg(
        long,
        global = true,
        default_value = "http://127.0.0.1:8081",
        env = "LOTSE_ADMIN_URL",
        hide_env_values = true
    )]
    pub admin: String,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub admin: AdminUrl,
}

#[derive(Debug, Args)]
pub struct DeliveriesArgs {
    #[command(flatten)]
    pub admin: AdminUrl,
    #[command(subcommand)]
    pub command: DeliveriesCommand,
}

#[derive(Debug, Subcommand)]
pub enum DeliveriesCommand {
    /// List deliveries, newest first.
    List {
        /// pending, delivered or dead.
        #[arg(long)]
        state: Option<String>,
        /// Only this endpoint's (its name in the hub's config).
        #[arg(long)]
        endpoint: Option<String>,
        /// At most this many (1 to 10,000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=10_000))]
        limit: u16,
    },
    /// Show one delivery and its submission's event log.
    Show { id: String },
    /// Find the deliveries of a case by the id the partner knows: the message id in its header
    /// (e.g. `nachrichtenUUID`) or the `Idempotency-Key` it sent.
    Find {
        #[arg(long, required_unless_present = "idempotency_key", conflicts_with = "idempotency_key")]
        message_id: Option<String>,
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Only this partner's (default: every partner the hub's config names).
        #[arg(long)]
        partner: Option<String>,
    },
    /// Send dead deliveries again (same bytes, same delivery id). Without ids, replays the newest
    /// dead deliveries (of `--endpoint`), at most `--limit`, and needs `--yes`; otherwise it only
    /// lists them (dry run). When more are dead than the limit took, it says so on stderr and
    /// exits 1 (also in a dry run): run it again for the rest (each run takes the newest still
    /// dead), or raise `--limit`. Exit 2 when the hub could not replay them all (the ones replayed
    /// before the error are printed).
    Replay {
        /// Exactly these deliveries; without ids, dead deliveries by filter.
        ids: Vec<String>,
        /// Without ids: only this endpoint's dead deliveries.
        #[arg(long, conflicts_with = "ids")]
        endpoint: Option<String>,
        /// Why; recorded in the audit log.
        #[arg(long)]
        reason: String,
        /// Without ids: take at most this many (1 to 10,000; default: the hub's, 1,000).
        #[arg(long, conflicts_with = "ids", value_parser = clap::value_parser!(u16).range(1..=10_000))]
        limit: Option<u16>,
        /// Really replay by filter (without it: dry run). The hub runs the query again: it
        /// replays what is dead at that moment, which may differ from what a dry run listed
        /// (deliveries dead since, or replayed since); to replay exactly the listed ones, pass
        /// their ids.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Args)]
pub struct EndpointsArgs {
    #[command(flatten)]
    pub admin: AdminUrl,
    #[command(subcommand)]
    pub command: EndpointsCommand,
}

#[derive(Debug, Subcommand)]
pub enum EndpointsCommand {
    /// List the hub's endpoints: kind, whether paused (since when, by whom, why) and, for a
    /// mailbox, how many deliveries its agency fetched and has not acknowledged yet (`held`).
    List,
    /// Pause an endpoint: its workers take no more deliveries and its mailbox hands none out
    /// (attempts under way finish); its deliveries wait for `lotse endpoints resume`
    /// (docs/api.md says how each store keeps a pause). Exit 1 when the hub has no endpoint of
    /// that name.
    Pause {
        /// The endpoint's name in the hub's config.
        name: String,
        /// Why; kept with the pause and shown by `lotse endpoints list`.
        #[arg(long)]
        reason: String,
        /// Who pauses, kept with the pause (default: the login name, `$USER` or `$LOGNAME`).
        #[arg(long)]
        actor: Option<String>,
    },
    /// Resume an endpoint: its deliveries go out again. Exit 1 when the hub has no endpoint of
    /// that name.
    Resume {
        /// The endpoint's name in the hub's config.
        name: String,
        /// Why; in the hub's log line of the resume.
        #[arg(long)]
        reason: Option<String>,
        /// Who resumes, in the hub's log line (default: the login name, `$USER` or `$LOGNAME`).
        #[arg(long)]
        actor: Option<String>,
    },
}

/// Bounded, so a hub that takes the connection and never answers is an error, not a hang:
/// 10 s to connect, and no more than 60 s without a byte moving either way.
fn client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .read_timeout(std::time::Duration::from_secs(60))
        .build()
        .context("cannot build the HTTP client")
}

/// Who runs the command, for the audit log: the login name (`USER`, else `LOGNAME`, which
/// cron and some service managers set instead), else `operator`.
fn login_name() -> String {
    ["USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
        .unwrap_or_else(|| "operator".into())
}

pub async fn run(args: DeliveriesArgs) -> anyhow::Result<ExitCode> {
    let client = client()?;
    let base = args.admin.admin.trim_end_matches('/');
    let actor = login_name();
    match args.command {
        DeliveriesCommand::List { state, endpoint, limit } => {
            let mut q = vec![("limit", limit.to_string())];
            if let Some(s) = state {
                q.push(("state", s));
            }
            if let Some(e) = endpoint {
                q.push(("endpoint", e));
            }
            let query: Vec<String> = q.iter().map(|(k, v)| format!("{k}={}", urlencode(v))).collect();
            let v = get(&client, &format!("{base}/v1/admin/deliveries?{}", query.join("&"))).await?;
            let list = v["deliveries"].as_array().cloned().unwrap_or_default();
            println!("{:<36}  {:<9}  {:>8}  {:<16}  last error", "delivery", "state", "attempts", "endpoint");
            for d in &list {
                println!(
                    "{:<36}  {:<9}  {:>8}  {:<16}  {}",
                    d["id"].as_str().unwrap_or(""),
                    d["state"].as_str().unwrap_or(""),
                    // As text: a JSON value's Display ignores the column's width.
                    d["attempts"].as_u64().map_or_else(String::new, |n| n.to_string()),
                    d["endpoint"].as_str().unwrap_or(""),
                    d["last_error"].as_str().unwrap_or("")
                );
            }
            println!("{} deliveries", list.len());
            Ok(ExitCode::SUCCESS)
        }
        DeliveriesCommand::Show { id } => {
            let d = get(&client, &format!("{base}/v1/admin/deliveries/{id}")).await?;
            let sid = d["submission_id"].as_str().unwrap_or_default().to_owned();
            let s = get(&client, &format!("{base}/v1/admin/submissions/{sid}")).await?;
            println!("{}", serde_json::to_string_pretty(&json!({ "delivery": d, "submission": s }))?);
            Ok(ExitCode::SUCCESS)
        }
        DeliveriesCommand::Find { message_id, idempotency_key, partner } => {
            let q: Vec<String> =
                [("message_id", message_id), ("idempotency_key", idempotency_key), ("partner", partner)]
                    .into_iter()
                    .filter_map(|(k, v)| Some(format!("{k}={}", urlencode(&v?))))
                    .collect();
            let v = get(&client, &format!("{base}/v1/admin/submissions?{}", q.join("&"))).await?;
            let found = v["submissions"].as_array().cloned().unwrap_or_default();
            for s in &found {
                println!(
                    "submission {}  partner {}  {}  received {}",
                    s["id"].as_str().unwrap_or(""),
                    s["partner"].as_str().unwrap_or(""),
                    s["state"].as_str().unwrap_or(""),
                    s["received_at"].as_str().unwrap_or("")
                );
                for d in s["deliveries"].as_array().into_iter().flatten() {
                    println!(
                        "  delivery {}  {:<9}  attempts {}  {}  {}",
                        d["id"].as_str().unwrap_or(""),
                        d["state"].as_str().unwrap_or(""),
                        d["attempts"],
                        d["endpoint"].as_str().unwrap_or(""),
                        d["last_error"].as_str().unwrap_or("")
                    );
                }
            }
            println!("{} submissions", found.len());
            Ok(if found.is_empty() { ExitCode::from(1) } else { ExitCode::SUCCESS })
        }
        DeliveriesCommand::Replay { ids, endpoint, reason, limit, yes } => {
            if ids.is_empty() {
                let body =
                    json!({ "actor": actor, "reason": reason, "endpoint": endpoint, "dry_run": !yes, "limit": limit });
                return replay_by_filter(&client, &format!("{base}/v1/admin/replay"), &body, yes).await;
            }
            let mut failed = false;
            for id in ids {
                let body = json!({ "actor": actor, "reason": reason });
                match post(&client, &format!("{base}/v1/admin/deliveries/{id}/replay"), &body).await {
                    Ok(_) => println!("{id}: replayed"),
                    Err(e) => {
                        failed = true;
                        println!("{id}: {e:#}");
                    }
                }
            }
            Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
        }
    }
}

pub async fn run_endpoints(args: EndpointsArgs) -> anyhow::Result<ExitCode> {
    let client = client()?;
    let base = args.admin.admin.trim_end_matches('/');
    let (name, verb, body) = match args.command {
        EndpointsCommand::List => return list_endpoints(&client, base).await,
        EndpointsCommand::Pause { name, reason, actor } => {
            let body = json!({ "actor": actor.unwrap_or_else(login_name), "reason": reason });
            (name, "pause", body)
        }
        EndpointsCommand::Resume { name, reason, actor } => {
            let body = json!({ "actor": actor.unwrap_or_else(login_name), "reason": reason });
            (name, "resume", body)
        }
    };
    let url = format!("{base}/v1/admin/endpoints/{}/{verb}", urlencode(&name));
    let resp = client.post(&url).json(&body).send().await.map_err(|e| unreachable(&url, e))?;
    let (status, v) = read(resp).await;
    if status == reqwest::StatusCode::NOT_FOUND {
        eprintln!("lotse: the hub has no endpoint `{}` (`lotse endpoints list` names its endpoints)", shown(&name));
        return Ok(ExitCode::from(1));
    }
    if !status.is_success() {
        anyhow::bail!("{status}: {}", v["detail"].as_str().unwrap_or("no detail"));
    }
    let done = if v["paused"] == Value::Bool(true) { "paused" } else { "resumed" };
    println!("endpoint `{}` {done} by {}", shown(&name), shown(v["actor"].as_str().unwrap_or("operator")));
    Ok(ExitCode::SUCCESS)
}

/// `lotse status`: what the hub process says about itself (`GET /v1/admin/overview`). Exit 0
/// when it takes submissions, 1 when it does not (the reason is printed).
pub async fn run_status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let client = client()?;
    let base = args.admin.admin.trim_end_matches('/');
    let v = get(&client, &format!("{base}/v1/admin/overview")).await?;
    let store = &v["store"];
    let kind = shown(store["kind"].as_str().unwrap_or("unknown"));
    let ready = store["ready"] == Value::Bool(true);
    if ready {
        println!("store     {kind}, ready");
    } else {
        let why = shown(store["not_ready_because"].as_str().unwrap_or("no reason given"));
        println!("store     {kind}, NOT READY (partners get 503): {why}");
    }
    let broker = &store["broker"];
    if broker.is_object() {
        let number = |key: &str| broker[key].as_u64().unwrap_or(0);
        let flag = |key: &str| broker[key] == Value::Bool(true);
        let mut link = vec![
            if flag("connected") { "connected" } else { "NOT CONNECTED" }.to_owned(),
            if flag("blocked") { "BLOCKED by a broker resource alarm" } else { "not blocked" }.to_owned(),
            format!("{} connection(s) since start", number("connections")),
            format!("event stream folded up to offset {}", number("stream_offset")),
        ];
        if flag("rereading") {
            link.push("READING THE EVENT STREAM AGAIN from its start".to_owned());
        }
        if number("rereads") > 0 {
            link.push(format!("read it again {} time(s) since start", number("rereads")));
        }
        if number("started_at_offset") > 0 {
            link.push(format!("started from its index snapshot at offset {}", number("started_at_offset")));
        }
        if number("unreadable_records") > 0 {
            link.push(format!(
                "SKIPPED {} event record(s) it cannot read (written by a later version? upgrade this process)",
                number("unreadable_records")
            ));
        }
        println!("broker    {}", link.join(", "));
    }
    let c = &v["counts"];
    println!(
        "counts    {} submissions; deliveries: {} pending, {} delivered, {} dead",
        c["submissions"], c["pending"], c["delivered"], c["dead"]
    );
    let paused: Vec<String> =
        v["paused_endpoints"].as_array().into_iter().flatten().filter_map(|e| e.as_str()).map(shown).collect();
    let paused = if paused.is_empty() { "none".to_owned() } else { paused.join(", ") };
    println!("paused    {paused} (`lotse endpoints list` says by whom and why)");
    for line in worker_lines(&v) {
        println!("{line}");
    }
    Ok(if ready { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// One line per delivery worker of the process (what it is doing, attempts in flight), with,
/// on RabbitMQ, the endpoint's work in this process (waiting for a lease, leased, received).
/// Work that waits here while its worker asks for work and none was taken for a minute is
/// called out (that should not happen): it is unacked at the broker, so no other process gets
/// it until this one leases it or ends.
fn worker_lines(v: &Value) -> Vec<String> {
    let seconds = |ms: u64| {
        let d = std::time::Duration::from_secs(ms / 1000);
        humantime::format_duration(d).to_string()
    };
    let work: Vec<&Value> = v["store"]["broker"]["work"].as_array().into_iter().flatten().collect();
    let work_of = |endpoint: &str| work.iter().find(|w| w["endpoint"] == endpoint).copied();
    let mut lines = Vec::new();
    let workers: Vec<&Value> = v["workers"].as_array().into_iter().flatten().collect();
    for w in &workers {
        let endpoint = w["endpoint"].as_str().unwrap_or("");
        let number = |key: &str| w[key].as_u64().unwrap_or(0);
        let mut parts = vec![
            format!("{} for {}", shown(w["doing"].as_str().unwrap_or("?")), seconds(number("for_ms"))),
            format!("{}/{} in flight", number("in_flight"), number("concurrency")),
        ];
        if number("failures_in_a_row") > 0 {
            parts.push(format!("{} transient failure(s) in a row", number("failures_in_a_row")));
        }
        if number("unrecorded_in_a_row") > 0 {
            parts.push(format!("{} attempt(s) in a row the store could not record", number("unrecorded_in_a_row")));
        }
        if let Some(ms) = w["lease_pending_ms"].as_u64().filter(|ms| *ms >= 60_000) {
            parts.push(format!(
                "STUCK? its lease of the store has not returned for {} (a bug: keep this output and the log, restart the process)",
                seconds(ms)
            ));
        }
        let idle = w["last_lease_ms_ago"].as_u64();
        parts.push(match idle {
            Some(ms) => format!("last lease {} ago", seconds(ms)),
            None => "no lease yet".to_owned(),
        });
        if let Some(h) = work_of(endpoint) {
            let waiting = h["waiting"].as_u64().unwrap_or(0);
            parts.push(format!(
                "broker work here: {waiting} waiting, {} leased, {} received",
                h["leased"].as_u64().unwrap_or(0),
                h["received"].as_u64().unwrap_or(0)
            ));
            let taken = h["last_lease_ms_ago"].as_u64();
            // Asking for work for a minute without a break (a breaker wait in between would
            // have reset `for_ms`), and none taken here meanwhile.
            let asking = w["doing"] == "leasing" && number("for_ms") >= 60_000;
            if waiting > 0 && asking && taken.is_none_or(|ms| ms >= 60_000) {
                parts.push(format!(
                    "STUCK? {waiting} work message(s) wait in this process, its worker asks for work, and none was taken for a minute \
                     (no other process gets them; restarting this one gives them back)"
                ));
            }
        }
        lines.push(format!("worker    {}: {}", shown(endpoint), parts.join(", ")));
    }
    lines
}

async fn list_endpoints(client: &reqwest::Client, base: &str) -> anyhow::Result<ExitCode> {
    let v = get(client, &format!("{base}/v1/admin/endpoints")).await?;
    let list = v["endpoints"].as_array().cloned().unwrap_or_default();
    println!("{:<16}  {:<8}  {:<6}  {:>4}  paused since, by, reason", "endpoint", "kind", "paused", "held");
    let mut paused = 0;
    for e in &list {
        let text = |key: &str| shown(e[key].as_str().unwrap_or(""));
        let held = e["held"].as_u64().map_or_else(|| "-".to_owned(), |n| n.to_string());
        let why = if e["paused"] == Value::Bool(true) {
            paused += 1;
            let reason = e["pause_reason"].as_str().map(|r| format!(": {}", shown(r))).unwrap_or_default();
            format!("{} by {}{reason}", text("paused_at"), text("paused_by"))
        } else {
            String::new()
        };
        let yes_no = if e["paused"] == Value::Bool(true) { "yes" } else { "no" };
        println!("{:<16}  {:<8}  {yes_no:<6}  {held:>4}  {why}", text("name"), text("kind"));
    }
    println!("{} endpoints, {paused} paused", list.len());
    Ok(ExitCode::SUCCESS)
}

/// Text from the hub (or the operator) for a terminal: control characters escaped, so a pause
/// reason with a line break or an escape sequence prints as one visible line.
fn shown(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `replay` without ids: prints the hub's answer; exit 1 when more were dead than the limit took
/// (a "replay every dead delivery" that stopped at 1,000 of 3,000 must not look done).
async fn replay_by_filter(client: &reqwest::Client, url: &str, body: &Value, yes: bool) -> anyhow::Result<ExitCode> {
    let resp = client.post(url).json(body).send().await.map_err(|e| unreachable(url, e))?;
    let (status, v) = read(resp).await;
    if !status.is_success() {
        // Stopped part way (a store error): those replayed before it are replayed for good.
        for id in v["replayed"].as_array().into_iter().flatten() {
            println!("{}: replayed", id.as_str().unwrap_or_default());
        }
        anyhow::bail!("{status}: {}", v["detail"].as_str().unwrap_or("no detail"));
    }
    println!("{}", serde_json::to_string_pretty(&v)?);
    if !yes {
        eprintln!(
            "dry run: nothing replayed; add --yes to replay what is dead then (the hub looks again), or pass these ids"
        );
    }
    if v["truncated"] == Value::Bool(true) {
        let taken = v["limit"].as_u64().map_or_else(|| "limit".to_owned(), |n| n.to_string());
        let what = if yes { "replayed; the rest are still dead" } else { "listed" };
        eprintln!(
            "more dead deliveries match than the {taken} this run took: only those were {what}; run the command again, or raise --limit (at most 10000)"
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn get(client: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    let resp = client.get(url).send().await.map_err(|e| unreachable(url, e))?;
    answer(resp).await
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> anyhow::Result<Value> {
    let resp = client.post(url).json(body).send().await.map_err(|e| unreachable(url, e))?;
    answer(resp).await
}

/// The admin API did not answer: the URL named with its password as `***` (the URL comes from
/// `LOTSE_ADMIN_URL`, which may hold the admin proxy's credentials), and reqwest's error without
/// the URL it would repeat (reqwest moves the credentials into a header and out of that URL
/// today; that is its choice, not a promise).
fn unreachable(url: &str, e: reqwest::Error) -> anyhow::Error {
    anyhow::Error::new(e.without_url())
        .context(format!("cannot reach the admin API at {}", crate::config::redacted_url(url)))
}

async fn answer(resp: reqwest::Response) -> anyhow::Result<Value> {
    let (status, v) = read(resp).await;
    if !status.is_success() {
        anyhow::bail!("{status}: {}", v["detail"].as_str().unwrap_or("no detail"));
    }
    Ok(v)
}

/// The status and JSON body (a problem's, on an error; null when there is none).
async fn read(resp: reqwest::Response) -> (reqwest::StatusCode, Value) {
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    fn overview(doing: &str, waiting: u64, taken_ms_ago: Option<u64>) -> serde_json::Value {
        overview_for(doing, 95_000, waiting, taken_ms_ago)
    }

    fn overview_for(doing: &str, for_ms: u64, waiting: u64, taken_ms_ago: Option<u64>) -> serde_json::Value {
        json!({
            "store": {"broker": {"work": [
                {"endpoint": "bauamt", "received": 70, "waiting": waiting, "leased": 0, "last_lease_ms_ago": taken_ms_ago}
            ]}},
            "workers": [{
                "endpoint": "bauamt", "doing": doing, "for_ms": for_ms, "in_flight": 0, "concurrency": 4,
                "failures_in_a_row": 0, "unrecorded_in_a_row": 0, "last_lease_ms_ago": 95_000
            }]
        })
    }

    /// Work that waits in the process while its worker asks for work and none was taken for a
    /// minute is called out; a worker in the breaker (which takes nothing on purpose), or work
    /// taken a moment ago, is not.
    #[test]
    fn work_waiting_while_its_worker_leases_nothing_is_called_out() {
        let lines = super::worker_lines(&overview("leasing", 64, Some(95_000)));
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        assert!(line.starts_with("worker    bauamt: leasing for 1m 35s, 0/4 in flight"), "{line}");
        assert!(line.contains("broker work here: 64 waiting, 0 leased, 70 received"), "{line}");
        assert!(line.contains("STUCK? 64 work message(s) wait in this process"), "{line}");

        for (doing, taken) in [("breaker wait", Some(95_000)), ("leasing", Some(200)), ("leasing", None)] {
            let waiting = if taken.is_none() { 0 } else { 64 };
            let lines = super::worker_lines(&overview(doing, waiting, taken));
            assert!(!lines[0].contains("STUCK"), "{doing} {taken:?}: {lines:?}");
        }
        // Just back from a long breaker wait: asking for a moment only.
        let back = super::worker_lines(&overview_for("leasing", 300, 64, Some(95_000)));
        assert!(!back[0].contains("STUCK"), "{back:?}");
        let mut hanging = overview_for("leasing", 300, 0, Some(95_000));
        hanging["workers"][0]["lease_pending_ms"] = json!(75_000);
        let hanging = super::worker_lines(&hanging);
        assert!(hanging[0].contains("STUCK? its lease of the store has not returned for 1m 15s"), "{hanging:?}");
        let stuck_never_taken = super::worker_lines(&overview("leasing", 3, None));
        assert!(stuck_never_taken[0].contains("STUCK? 3 work"), "{stuck_never_taken:?}");
    }
}

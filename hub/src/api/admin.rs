//! The admin API (own listener, never the partner port): deliveries, replay, endpoint pause,
//! metrics. Every state-changing call is recorded as an event, with the actor it names.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::problem::Problem;
use crate::store::{DeliveryFilter, DeliveryId, DeliveryState, ReplayOutcome, SubmissionId};

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/admin/overview", get(overview))
        .route("/v1/admin/deliveries", get(list_deliveries))
        .route("/v1/admin/deliveries/{id}", get(get_delivery))
        .route("/v1/admin/deliveries/{id}/replay", post(replay_one))
        .route("/v1/admin/replay", post(replay_many))
        .route("/v1/admin/submissions", get(find_submissions))
        .route("/v1/admin/submissions/{id}", get(get_submission))
        .route("/v1/admin/endpoints", get(endpoints))
        .route("/v1/admin/endpoints/{name}/pause", post(pause))
        .route("/v1/admin/endpoints/{name}/resume", post(resume))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", "no such resource") })
        .layer(axum::middleware::map_response(super::problem::every_error_as_problem))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    state: Option<String>,
    endpoint: Option<String>,
    submission: Option<String>,
    /// Text, read by [`query_limit`]: axum's own reading of a number would refuse `abc` or `-1`
    /// with a bare 400 rather than the `bad-filter` problem that names the range.
    limit: Option<String>,
}

fn filter_from(q: ListQuery) -> Result<DeliveryFilter, Problem> {
    let bad = Problem::bad_filter;
    let state = match q.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(
            DeliveryState::parse(s)
                .ok_or_else(|| bad(format!("unknown state `{s}`; use pending, delivered or dead")))?,
        ),
    };
    let submission_id = match q.submission.as_deref() {
        None | Some("") => None,
        Some(s) => Some(s.parse::<SubmissionId>().map_err(|_| bad(format!("`{s}` is not a submission id")))?),
    };
    Ok(DeliveryFilter {
        state,
        endpoint: q.endpoint.filter(|e| !e.is_empty()),
        submission_id,
        limit: limit(query_limit(q.limit.as_deref())?, DeliveryFilter::DEFAULT_LIMIT)?,
    })
}

/// A query string's `limit` as a number; anything else (`abc`, `-1`, nothing after `=`) is a
/// `bad-filter` naming the range, like a number out of it.
fn query_limit(given: Option<&str>) -> Result<Option<usize>, Problem> {
    let Some(text) = given else { return Ok(None) };
    text.parse().map(Some).map_err(|_| {
        Problem::bad_filter(format!("limit `{text}` is not a number: give 1 to {}", DeliveryFilter::MAX_LIMIT))
    })
}

/// A `limit` from a request: `default` when absent; 1 to [`DeliveryFilter::MAX_LIMIT`], else 400
/// (0 is not "everything": a listing or a bulk replay is always bounded).
fn limit(given: Option<usize>, default: usize) -> Result<usize, Problem> {
    match given {
        None => Ok(default),
        Some(n) if (1..=DeliveryFilter::MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => {
            Err(Problem::bad_filter(format!("limit {n} is out of range: give 1 to {}", DeliveryFilter::MAX_LIMIT)))
        }
    }
}

async fn overview(State(state): State<Arc<AppState>>) -> Result<Response, Problem> {
    let store = state.pipeline.store();
    let counts = store.counts().await?;
    // What an operator on call asks first: does this process take submissions, and (on a
    // shared store) is it linked to the broker and as far in the event stream as the others.
    let health = store.health();
    let status = json!({
        "kind": state.config.raw.queue.kind,
        "ready": health.is_ok(),
        "not_ready_because": health.err().map(|e| e.to_string()),
        "broker": store.broker(),
    });
    Ok(axum::Json(json!({
        "counts": counts,
        "paused_endpoints": state.paused.list(),
        "store": status,
        "workers": state.workers.views(),
    }))
    .into_response())
}

async fn list_deliveries(State(state): State<Arc<AppState>>, Query(q): Query<ListQuery>) -> Result<Response, Problem> {
    let filter = filter_from(q)?;
    let list = state.pipeline.store().deliveries(&filter).await?;
    Ok(axum::Json(json!({ "deliveries": list })).into_response())
}

async fn get_delivery(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Response, Problem> {
    let id: DeliveryId = id.parse().map_err(|_| Problem::not_found("delivery"))?;
    match state.pipeline.store().delivery(id).await? {
        Some(d) => Ok(axum::Json(d).into_response()),
        None => Err(Problem::not_found("delivery")),
    }
}

async fn get_submission(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Response, Problem> {
    let id: SubmissionId = id.parse().map_err(|_| Problem::not_found("submission"))?;
    match state.pipeline.store().submission(id).await? {
        Some(s) => Ok(axum::Json(s).into_response()),
        None => Err(Problem::not_found("submission")),
    }
}

/// Finds submissions by what the partner knows: the message id in its header (e.g.
/// `nachrichtenUUID`) or the `Idempotency-Key` it sent, of one partner or of every partner the
/// config names (and `anonymous`, the partner of an open hub). Each comes with its event log.
async fn find_submissions(
    State(state): State<Arc<AppState>>,
    Query(q): Query<super::FindQuery>,
) -> Result<Response, Problem> {
    let id_known = q.partner_ref()?;
    let partners: Vec<&str> = match q.partner.as_deref() {
        Some(p) if !p.is_empty() => vec![p],
        _ => state.config.raw.partners.iter().map(|p| p.name.as_str()).chain(["anonymous"]).collect(),
    };
    let store = state.pipeline.store();
    let mut found = Vec::new();
    for partner in partners {
        if let Some(id) = store.submission_by_key(&id_known.dedup_key(partner)).await?
            && let Some(view) = store.submission(id).await?
        {
            found.push(view);
        }
    }
    Ok(axum::Json(json!({ "submissions": found })).into_response())
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    /// Who asks; recorded in the event log.
    actor: Option<String>,
    reason: Option<String>,
}

fn actor_reason(b: &ReplayBody) -> Result<(String, String), Problem> {
    let actor = b.actor.clone().filter(|a| !a.trim().is_empty()).unwrap_or_else(|| "operator".to_owned());
    let reason = b.reason.clone().filter(|r| !r.trim().is_empty()).ok_or_else(|| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "reason-required",
            "Reason required",
            "a replay needs a `reason` for the audit log",
        )
    })?;
    Ok((actor, reason))
}

/// A JSON request body (`None` when empty), read under the partner API's bounds: at most 64 KiB,
/// complete within `read_timeout` (a client that never sends its body holds no connection).
async fn json_body<T: serde::de::DeserializeOwned>(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Option<T>, Problem> {
    let grace = state.config.raw.limits.read_timeout;
    let bytes = super::partner::read_body(body, headers, 64 * 1024, grace).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        Problem::new(StatusCode::BAD_REQUEST, "malformed", "Malformed request", format!("the JSON body: {e}"))
    })
}

async fn replay_one(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Response, Problem> {
    let id: DeliveryId = id.parse().map_err(|_| Problem::not_found("delivery"))?;
    let body: ReplayBody = json_body(&state, &headers, body).await?.unwrap_or_default();
    let (actor, reason) = actor_reason(&body)?;
    tracing::info!(delivery_id = %id, actor = %actor, reason = %reason, "replay requested");
    let Some(delivery) = state.pipeline.store().delivery(id).await? else {
        return Err(Problem::not_found("delivery"));
    };
    if !configured(&state, &delivery.endpoint) {
        return Err(unknown_endpoint(id, &delivery.endpoint));
    }
    match state.pipeline.store().replay(id, &actor, &reason).await? {
        ReplayOutcome::Replayed => {
            Ok((StatusCode::ACCEPTED, axum::Json(json!({ "result": "replayed", "id": id }))).into_response())
        }
        ReplayOutcome::NotFound => Err(Problem::not_found("delivery")),
        ReplayOutcome::NotDead { state } => Err(Problem::new(
            StatusCode::CONFLICT,
            "not-dead",
            "Only dead deliveries are replayed",
            format!("delivery {id} is {state:?}"),
        )),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayManyBody {
    actor: Option<String>,
    reason: Option<String>,
    endpoint: Option<String>,
    /// Default true: list what would be replayed, change nothing.
    dry_run: Option<bool>,
    limit: Option<usize>,
}

/// How many dead deliveries one bulk replay takes when the request names no `limit`.
const REPLAY_DEFAULT_LIMIT: usize = 1000;

/// Replays dead deliveries matching a filter; `dry_run` (the default) only lists them. The answer
/// says whether more matched than `limit` took (`truncated`), so "replay every dead delivery"
/// never stops at the limit silently.
async fn replay_many(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Response, Problem> {
    let Some(b) = json_body::<ReplayManyBody>(&state, &headers, body).await? else {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "malformed",
            "Malformed request",
            "a JSON body is required (`{\"dry_run\": true}` lists what would be replayed)",
        ));
    };
    let dry_run = b.dry_run.unwrap_or(true);
    let limit = limit(b.limit, REPLAY_DEFAULT_LIMIT)?;
    let (dead, truncated) = dead_deliveries(&state, b.endpoint.clone(), limit).await?;
    // Deliveries of endpoints the config no longer has would wait for ever: left out, and named.
    let (ids, skipped): (Vec<_>, Vec<_>) = dead.iter().partition(|d| configured(&state, &d.endpoint));
    let ids: Vec<DeliveryId> = ids.iter().map(|d| d.id).collect();
    let skipped: Vec<_> = skipped.iter().map(|d| json!({ "id": d.id, "endpoint": d.endpoint })).collect();
    if dry_run {
        return Ok(axum::Json(json!({
            "dry_run": true,
            "would_replay": ids,
            "skipped_unknown_endpoint": skipped,
            "limit": limit,
            "truncated": truncated,
        }))
        .into_response());
    }
    let (actor, reason) = actor_reason(&ReplayBody { actor: b.actor, reason: b.reason })?;
    let mut replayed = Vec::new();
    // Plain loop, stopped at the first store error: those before it are replayed (and in their
    // submissions' logs), so the answer and the audit line must name them rather than claim
    // nothing happened.
    let mut failure = None;
    for &id in &ids {
        match state.pipeline.store().replay(id, &actor, &reason).await {
            Ok(ReplayOutcome::Replayed) => replayed.push(id),
            // Replayed or settled by someone else since the listing: not ours to count.
            Ok(ReplayOutcome::NotDead { .. } | ReplayOutcome::NotFound) => {}
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let Some(e) = failure else {
        tracing::info!(count = replayed.len(), truncated, actor = %actor, reason = %reason, "bulk replay");
        return Ok((
            StatusCode::ACCEPTED,
            axum::Json(json!({
                "dry_run": false,
                "replayed": replayed,
                "skipped_unknown_endpoint": skipped,
                "limit": limit,
                "truncated": truncated,
            })),
        )
            .into_response());
    };
    tracing::warn!(
        count = replayed.len(),
        of = ids.len(),
        actor = %actor,
        reason = %reason,
        error = %e,
        "bulk replay stopped by a store error"
    );
    let mut problem = Problem::from(e);
    problem.detail = format!(
        "the store failed after {} of {} replays: those in `replayed` are replayed, the rest are still dead; ask again later for the rest",
        replayed.len(),
        ids.len()
    );
    Err(problem.with("replayed", json!(replayed)).with("skipped_unknown_endpoint", json!(skipped)))
}

/// The newest `limit` dead deliveries (of `endpoint`), and whether more are dead than that.
///
/// One more than the limit is asked for, so the listing itself tells; a store gives at most
/// [`DeliveryFilter::MAX_LIMIT`], so at that limit the dead count (one counter) decides. That
/// count is of every endpoint: with an `endpoint` it can say "truncated" when the rest are
/// another endpoint's, never the reverse.
async fn dead_deliveries(
    state: &AppState,
    endpoint: Option<String>,
    limit: usize,
) -> Result<(Vec<crate::store::DeliveryView>, bool), Problem> {
    let store = state.pipeline.store();
    let filter = DeliveryFilter {
        state: Some(DeliveryState::Dead),
        endpoint,
        submission_id: None,
        limit: (limit + 1).min(DeliveryFilter::MAX_LIMIT),
    };
    let mut dead = store.deliveries(&filter).await?;
    let truncated = if dead.len() > limit {
        dead.truncate(limit);
        true
    } else if dead.len() == DeliveryFilter::MAX_LIMIT {
        store.counts().await?.dead > dead.len() as u64
    } else {
        false
    };
    Ok((dead, truncated))
}

/// Whether this hub's config has the endpoint (and so a worker that delivers to it).
fn configured(state: &AppState, endpoint: &str) -> bool {
    state.config.raw.endpoints.iter().any(|e| e.name == endpoint)
}

/// A replay that would queue a delivery nobody sends: its endpoint left the config.
fn unknown_endpoint(id: DeliveryId, endpoint: &str) -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "endpoint-unknown",
        "The delivery's endpoint is not configured",
        format!(
            "delivery {id} goes to endpoint `{endpoint}`, which this hub's config no longer has: a replay would wait for ever; add the endpoint back to replay it"
        ),
    )
}

async fn endpoints(State(state): State<Arc<AppState>>) -> Response {
    let pauses = state.paused.all();
    let list: Vec<_> = state
        .config
        .raw
        .endpoints
        .iter()
        .map(|e| {
            json!({
                "name": e.name,
                "kind": format!("{:?}", e.kind).to_lowercase(),
                "url": (!e.url.is_empty()).then(|| crate::config::redacted_url(&e.url)),
                "path": e.path,
                "exchange": e.exchange,
                "routing_key": e.routing_key,
                "format": format!("{:?}", e.format).to_lowercase(),
                "paused": pauses.contains_key(&e.name),
                // Who paused it, when and why (any process's pause, on a store that shares them).
                "paused_by": pauses.get(&e.name).map(|p| &p.actor),
                "paused_at": pauses.get(&e.name).map(|p| crate::store::rfc3339(p.at)),
                "pause_reason": pauses.get(&e.name).and_then(|p| p.reason.as_ref()),
                // A mailbox's deliveries fetched and not acknowledged yet.
                "held": (e.kind == crate::config::EndpointKind::Mailbox).then(|| state.mailboxes.held_count(&e.name)),
            })
        })
        .collect();
    axum::Json(json!({ "endpoints": list })).into_response()
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PauseBody {
    /// Who asks; logged, and kept with the pause (shown by `GET /v1/admin/endpoints`).
    actor: Option<String>,
    /// Why, if they say (optional: a pause is often urgent).
    reason: Option<String>,
}

async fn pause(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Response, Problem> {
    set_paused(&state, &name, true, &headers, body).await
}

async fn resume(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Response, Problem> {
    set_paused(&state, &name, false, &headers, body).await
}

/// Pauses or resumes an endpoint: on every process that shares the store when it keeps pauses
/// (RabbitMQ), else on this one. Logged with the actor, as a replay is.
async fn set_paused(
    state: &AppState,
    name: &str,
    paused: bool,
    headers: &axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Response, Problem> {
    if state.config.endpoint(name).is_none() {
        return Err(Problem::not_found("endpoint"));
    }
    let body: PauseBody = json_body(state, headers, body).await?.unwrap_or_default();
    let actor = body.actor.filter(|a| !a.trim().is_empty()).unwrap_or_else(|| "operator".to_owned());
    let reason = body.reason.filter(|r| !r.trim().is_empty());
    if let Err(e) = state.paused.set(name, paused, &actor, reason.as_deref()).await {
        tracing::warn!(endpoint = %name, paused, actor = %actor, error = %e, "endpoint pause not changed: store error");
        return Err(e.into());
    }
    let what = if paused { "endpoint paused by operator" } else { "endpoint resumed by operator" };
    tracing::info!(endpoint = %name, paused, actor = %actor, reason = reason.as_deref().unwrap_or(""), "{what}");
    Ok(axum::Json(json!({ "endpoint": name, "paused": paused, "actor": actor })).into_response())
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    if let Ok(c) = state.pipeline.store().counts().await {
        metrics::gauge!("lotse_deliveries", "state" => "pending").set(c.pending as f64);
        metrics::gauge!("lotse_deliveries", "state" => "delivered").set(c.delivered as f64);
        metrics::gauge!("lotse_deliveries", "state" => "dead").set(c.dead as f64);
    }
    // What the partner port's `/healthz` answers, for an alert: 0 while the store is known not
    // to take submissions (a full disk, no broker, a broker resource alarm).
    for e in state.config.raw.endpoints.iter().filter(|e| e.kind == crate::config::EndpointKind::Mailbox) {
        let held = state.mailboxes.held_count(&e.name);
        metrics::gauge!("lotse_mailbox_held", "endpoint" => e.name.clone()).set(held as f64);
    }
    let ready = state.pipeline.store().health().is_ok();
    metrics::gauge!("lotse_store_ready").set(if ready { 1.0 } else { 0.0 });
    if let Some(b) = state.pipeline.store().broker() {
        // For alerts: a process cut off from the broker, blocked by it, or behind the others
        // in the event stream (compare the offsets of the processes).
        let flag = |on: bool| if on { 1.0 } else { 0.0 };
        metrics::gauge!("lotse_rabbitmq_connected").set(flag(b.connected));
        metrics::gauge!("lotse_rabbitmq_blocked").set(flag(b.blocked));
        metrics::counter!("lotse_rabbitmq_connections_total").absolute(b.connections);
        metrics::gauge!("lotse_event_stream_offset").set(b.stream_offset as f64);
        metrics::gauge!("lotse_event_stream_rereading").set(flag(b.rereading));
        // Work this process holds unacked: waiting for a lease, and leased.
        for w in &b.work {
            metrics::gauge!("lotse_rabbitmq_work_waiting", "endpoint" => w.endpoint.clone()).set(w.waiting as f64);
            metrics::gauge!("lotse_rabbitmq_work_leased", "endpoint" => w.endpoint.clone()).set(w.leased as f64);
        }
    }
    for w in state.workers.views() {
        metrics::gauge!("lotse_worker_in_flight", "endpoint" => w.endpoint.clone()).set(w.in_flight as f64);
    }
    if state.config.raw.queue.kind == crate::config::QueueKind::Embedded {
        // For an alert before the disk is full (then intake answers 503 until there is room).
        match rustix::fs::statvfs(&state.config.raw.data_dir) {
            Ok(fs) => {
                metrics::gauge!("lotse_data_dir_free_bytes").set(fs.f_bavail.saturating_mul(fs.f_frsize) as f64);
                metrics::gauge!("lotse_data_dir_size_bytes").set(fs.f_blocks.saturating_mul(fs.f_frsize) as f64);
            }
            Err(e) => tracing::debug!(error = %e, "cannot stat the data dir's filesystem"),
        }
    }
    match &state.metrics {
        Some(h) => ([("content-type", "text/plain; version=0.0.4")], h.render()).into_response(),
        None => (StatusCode::NOT_FOUND, "metrics recorder not installed").into_response(),
    }
}

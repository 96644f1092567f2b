//! The partner API: `POST /v1/submissions`, `GET /v1/submissions/{id}`, `GET /v1/submissions?message_id=`, `GET /healthz`,
//! and the agencies' mailboxes (`/v1/mailboxes/...`, see [`super::mailbox`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;

use super::AppState;
use super::problem::Problem;
use crate::intake::{IntakeError, Media, Submission};
use crate::store::{Intake, SubmissionId};

/// Bodies larger than this are prepared on a blocking thread, so one big message does not stall
/// the async workers.
const INLINE_PREPARE_BYTES: usize = 256 * 1024;

/// At most this many bodies above [`INLINE_PREPARE_BYTES`] are prepared (parsed, converted,
/// validated) at once; the others wait their turn with their bodies read. A JSON body's parsed
/// form (`serde_json::Value`) alone takes many times the body's size (about 400 MB for a 16 MiB
/// body of small items), so `max_in_flight` large JSON bodies at once could take all memory.
static LARGE_PREPARES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

pub fn router(state: Arc<AppState>) -> Router {
    // Load shedding: at most `max_in_flight` submissions are taken in at once; the rest get 503
    // at once instead of queueing (unbounded memory, latency for everybody).
    let in_flight = state.config.raw.limits.max_in_flight;
    let shed = tower::ServiceBuilder::new()
        .layer(axum::error_handling::HandleErrorLayer::new(|_: tower::BoxError| async {
            metrics::counter!("lotse_submissions_refused_total", "reason" => "overloaded").increment(1);
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "Hub overloaded",
                "too many submissions are being taken in right now; nothing was accepted, send it again shortly",
            )
            .retry_after(1)
            .into_response()
        }))
        .load_shed()
        .concurrency_limit(in_flight);
    Router::new()
        .route("/v1/submissions", post(post_submission).layer(shed).get(find_submission))
        .route("/v1/submissions/{id}", get(get_submission))
        .route("/healthz", get(healthz))
        .merge(super::mailbox::routes())
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", "no such resource") })
        .layer(axum::middleware::map_response(super::problem::every_error_as_problem))
        .with_state(state)
}

/// The partner behind a request: from the bearer token, or `anonymous` when no partners are
/// configured.
fn partner(state: &AppState, headers: &HeaderMap) -> Result<String, Problem> {
    if state.partners.is_empty() {
        return Ok("anonymous".to_owned());
    }
    match super::token_holder(&state.partners, headers) {
        Some(name) => Ok(name.clone()),
        None => Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            "a valid bearer token is required",
        )),
    }
}

/// The slowest a body may keep coming once `limits.read_timeout` has passed: 64 KiB/s (half a
/// megabit). A large message over a slow line still gets in; a client that trickles bytes to
/// hold a place among `max_in_flight` does not.
const MIN_BODY_RATE: f64 = 64.0 * 1024.0;

/// Reads the body, at most `limit` bytes, within `grace` plus one second per 64 KiB received.
pub(super) async fn read_body(
    mut body: Body,
    headers: &HeaderMap,
    limit: usize,
    grace: Duration,
) -> Result<Bytes, Problem> {
    use http_body_util::BodyExt;

    let too_large = || {
        Problem::from(IntakeError::TooLarge(format!("the body exceeds the limit of {limit} bytes")))
            .with("limit", serde_json::json!(limit))
    };
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let started = tokio::time::Instant::now();
    // The frames as they came: a body of one frame (the usual case) is returned without a copy.
    let mut frames: Vec<Bytes> = Vec::new();
    let mut received = 0usize;
    // One timer for the whole body, moved on as bytes come; frames already there are taken
    // first, so a body that is in (the usual case) never arms it.
    let timer = tokio::time::sleep_until(started + grace);
    tokio::pin!(timer);
    loop {
        timer.as_mut().reset(started + grace + Duration::from_secs_f64(received as f64 / MIN_BODY_RATE));
        let next = tokio::select! {
            biased;
            frame = body.frame() => Ok(frame),
            () = &mut timer => Err(()),
        };
        let frame = match next {
            Ok(None) => break,
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(e))) => {
                return Err(Problem::new(
                    StatusCode::BAD_REQUEST,
                    "malformed",
                    "Malformed request",
                    format!("cannot read the body: {e}"),
                ));
            }
            Err(_) => {
                metrics::counter!("lotse_submissions_refused_total", "reason" => "request-timeout").increment(1);
                return Err(Problem::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "request-timeout",
                    "Request timeout",
                    format!(
                        "the body stopped arriving ({} bytes in {:.1} s): it must start within {} and then come at 64 KiB/s at least; nothing was accepted",
                        received,
                        started.elapsed().as_secs_f64(),
                        humantime::format_duration(grace)
                    ),
                ));
            }
        };
        if let Ok(data) = frame.into_data() {
            received += data.len();
            if received > limit {
                return Err(too_large());
            }
            frames.push(data);
        }
    }
    Ok(match frames.len() {
        0 => Bytes::new(),
        1 => frames.swap_remove(0),
        _ => Bytes::from(frames.concat()),
    })
}

async fn post_submission(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let started = Instant::now();
    let partner = partner(&state, &headers)?;
    // This partner's share of the places in flight (the global cap is the layer above).
    let Some(_place) = state.partner_slots.take(&partner) else {
        metrics::counter!("lotse_submissions_refused_total", "reason" => "partner-overloaded").increment(1);
        return Err(Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "partner-overloaded",
            "Too many submissions in flight",
            format!(
                "partner `{partner}` has {} submissions being taken in already; nothing was accepted, send it again shortly",
                state.config.raw.limits.per_partner()
            ),
        )
        .retry_after(1));
    };
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let Some(media) = Media::from_content_type(ct) else {
        metrics::counter!("lotse_submissions_refused_total", "reason" => "media-type").increment(1);
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            format!(
                "Content-Type `{ct}` is not accepted; send application/xml (an XÖV message) or application/json (its JSON form)"
            ),
        ));
    };
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => match v.to_str() {
            Ok(k) if !k.is_empty() && k.len() <= 256 => Some(k.to_owned()),
            _ => {
                return Err(Problem::new(
                    StatusCode::BAD_REQUEST,
                    "malformed",
                    "Malformed request",
                    "Idempotency-Key must be 1 to 256 visible ASCII characters",
                ));
            }
        },
    };
    let limits = &state.config.raw.limits;
    let body = read_body(body, &headers, limits.max_body_bytes, limits.read_timeout).await?;
    let sub = Submission { partner: partner.clone(), media, idempotency_key, body };
    // XSD validation blocks on a libxml2 worker; large bodies take long to read. Either way keep
    // the async workers free.
    let prepared = if sub.body.len() > INLINE_PREPARE_BYTES || state.pipeline.validates() {
        let _turn = match sub.body.len() > INLINE_PREPARE_BYTES {
            // The semaphore is never closed.
            true => LARGE_PREPARES.acquire().await.ok(),
            false => None,
        };
        let st = state.clone();
        tokio::task::spawn_blocking(move || st.pipeline.prepare(sub)).await.map_err(|e| {
            // The log has what went wrong; a 5xx body carries no internals.
            tracing::error!(error = %e, "preparing a submission failed");
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
                "the submission could not be prepared; nothing was accepted",
            )
        })?
    } else {
        state.pipeline.prepare(sub)
    };
    let prepared = match prepared {
        Ok(p) => p,
        Err(e) => {
            metrics::counter!("lotse_submissions_refused_total", "reason" => refusal_reason(&e)).increment(1);
            tracing::info!(partner = %partner, error = %e, "submission refused");
            return Err(e.into());
        }
    };
    // In a task of its own: a partner that hangs up while the store takes the submission must
    // not cut the store's work in half (on RabbitMQ: a claim in the stream without its work
    // message, a submission `in_progress` until the partner sends it again). It is then stored
    // whole or not at all, and a resend finds it as a duplicate.
    let store = state.pipeline.store().clone();
    let intake = match tokio::spawn(async move { store.intake(prepared).await }).await {
        Ok(r) => r.map_err(IntakeError::from)?,
        Err(e) => {
            tracing::error!(error = %e, "taking a submission in failed");
            return Err(Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
                "the submission could not be stored; nothing was accepted",
            ));
        }
    };
    metrics::histogram!("lotse_intake_seconds").record(started.elapsed().as_secs_f64());
    let (receipt, duplicate) = match intake {
        Intake::Accepted(r) => (r, false),
        Intake::Duplicate(r) => (r, true),
    };
    metrics::counter!("lotse_submissions_total", "partner" => partner.clone(), "duplicate" => duplicate.to_string())
        .increment(1);
    let location = format!("/v1/submissions/{}", receipt.submission_id);
    let mut resp = (StatusCode::ACCEPTED, axum::Json(&receipt)).into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    if duplicate {
        h.insert("lotse-duplicate", HeaderValue::from_static("true"));
    }
    Ok(resp)
}

fn refusal_reason(e: &IntakeError) -> &'static str {
    match e {
        IntakeError::Malformed(_) => "malformed",
        IntakeError::Forbidden(_) | IntakeError::TrustLevel(_) => "forbidden",
        IntakeError::TooLarge(_) => "too-large",
        IntakeError::NoRoute { .. } => "no-route",
        IntakeError::Invalid { .. } => "invalid",
        IntakeError::Store(_) => "store",
    }
}

async fn get_submission(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let partner = partner(&state, &headers)?;
    let id: SubmissionId = id.parse().map_err(|_| Problem::not_found("submission"))?;
    let view = state.pipeline.store().submission(id).await?;
    match view {
        // A partner sees only its own submissions; others' look like missing ones.
        Some(v) if state.partners.is_empty() || v.partner == partner => Ok(axum::Json(v).into_response()),
        _ => Err(Problem::not_found("submission")),
    }
}

/// A partner's own submission by the id it knows: the message id of its header (e.g.
/// `nachrichtenUUID`) or the `Idempotency-Key` it sent. Only the calling partner's submissions
/// are found (the dedup keys are per partner).
async fn find_submission(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<super::FindQuery>,
) -> Result<Response, Problem> {
    let partner = partner(&state, &headers)?;
    if q.partner.is_some() {
        return Err(Problem::bad_filter("`partner` is the caller here; leave it out"));
    }
    let key = q.partner_ref()?.dedup_key(&partner);
    let store = state.pipeline.store();
    let Some(id) = store.submission_by_key(&key).await? else { return Err(Problem::not_found("submission")) };
    match store.submission(id).await? {
        Some(v) => {
            let mut resp = axum::Json(v).into_response();
            if let Ok(location) = HeaderValue::from_str(&format!("/v1/submissions/{id}")) {
                resp.headers_mut().insert(header::CONTENT_LOCATION, location);
            }
            Ok(resp)
        }
        None => Err(Problem::not_found("submission")),
    }
}

/// Readiness, for a load balancer in front of several processes: `200 ok` while the store takes
/// writes, `503` (problem+json, `Retry-After`) while it is known not to. (The admin port's
/// `/healthz` only says the process is up.)
async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    match state.pipeline.store().health() {
        Ok(()) => "ok".into_response(),
        Err(e) => Problem::from(e).into_response(),
    }
}

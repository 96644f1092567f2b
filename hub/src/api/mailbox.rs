//! Mailboxes (`kind = "mailbox"` endpoints): agency software that cannot take incoming
//! connections fetches its deliveries from the partner port and acknowledges each one.
//!
//! - `GET /v1/mailboxes/{name}/next?wait=20s`: the next delivery (the body is the payload; ids in
//!   `Lotse-*` headers, the acknowledgement deadline in `Lotse-Ack-By`), or `204` when none came
//!   within `wait` (at most [`MAX_WAIT`]; long polling).
//! - `POST /v1/mailboxes/{name}/deliveries/{id}/ack`: received and kept: delivered.
//! - `POST /v1/mailboxes/{name}/deliveries/{id}/reject` with `{"reason": "...", "retry": false}`:
//!   refused: dead at once, or (`"retry": true`) offered again later like a transient failure.
//!
//! A fetched delivery is held for the endpoint's `timeout`; not acknowledged by then, it counts
//! as a failed attempt and is offered again after the retry backoff (dead after
//! `retry.max_attempts`), so a client that crashed after fetching loses nothing. At most the
//! endpoint's `concurrency` deliveries are held or being fetched at once; beyond that `next`
//! answers `429`.
//!
//! Each mailbox has its own bearer token; a partner's token opens no mailbox. Held deliveries
//! live in the process that handed them out. With several processes (RabbitMQ), an answer that
//! reaches another process is relayed through the store's event stream to the one that holds the
//! delivery, which settles it ([`follow_verdicts`]); the answering process waits up to
//! [`RELAY_WAIT`] to see the delivery settled as answered (`204`), else `409` (nobody held it, or
//! its time ran out first: it was answered already, or it is offered again).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::time::Instant;

use super::problem::Problem;
use super::{AppState, token_digest};
use crate::config::Config;
use crate::delivery::retry::AttemptResult;
use crate::store::{
    DeliveryId, DeliveryState, Handover, Lease, MailboxVerdict, Millis, Outcome, Store, Verdict, now_millis,
};

/// Longest long poll of `next`.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// How often held deliveries are checked against their deadlines.
const SWEEP: Duration = Duration::from_millis(500);
/// A long poll waits for a delivery in slices this long, and stops after the slice in which its
/// client went away.
const POLL_SLICE: Duration = Duration::from_millis(500);
/// How long an answer relayed to another process waits to see the delivery settled.
pub const RELAY_WAIT: Duration = Duration::from_secs(5);

/// The mailbox routes, for the partner router.
pub fn routes() -> axum::Router<Arc<AppState>> {
    axum::Router::new()
        .route("/v1/mailboxes/{name}/next", get(next))
        .route("/v1/mailboxes/{name}/deliveries/{id}/ack", post(ack))
        .route("/v1/mailboxes/{name}/deliveries/{id}/reject", post(reject))
}

/// The mailboxes' tokens and the deliveries fetched and not yet acknowledged.
pub struct Mailboxes {
    /// sha256(token) -> mailbox (endpoint) name.
    tokens: HashMap<[u8; 32], String>,
    held: Mutex<HashMap<DeliveryId, Held>>,
    /// Fetches in progress per mailbox: they count toward its `concurrency` like held
    /// deliveries, so concurrent fetches cannot hold more than that between them.
    polling: Mutex<HashMap<String, usize>>,
    /// The hub is stopping: what is held was given back, and nothing more is handed out.
    closing: AtomicBool,
}

/// A fetch in progress, counted in [`Mailboxes::polling`] until dropped.
struct Polling {
    state: Arc<AppState>,
    mailbox: String,
}

impl Drop for Polling {
    fn drop(&mut self) {
        let mut polling = self.state.mailboxes.polling.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = polling.get_mut(&self.mailbox) {
            *n = n.saturating_sub(1);
        }
    }
}

struct Held {
    lease: Lease,
    until: Instant,
    /// Wall-clock time it was handed to this fetch: an answer relayed from before then was
    /// meant for an earlier attempt.
    fetched_at: Millis,
}

impl Mailboxes {
    pub fn for_config(config: &Config) -> Mailboxes {
        Mailboxes {
            tokens: config.mailbox_tokens.iter().map(|(t, n)| (token_digest(t), n.clone())).collect(),
            held: Mutex::default(),
            polling: Mutex::default(),
            closing: AtomicBool::new(false),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<DeliveryId, Held>> {
        // A poisoned lock means a panic elsewhere; the map itself is still consistent.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a fetch of `mailbox` if fewer than `max` deliveries are held or being fetched;
    /// otherwise how many there are and the earliest deadline among the held ones.
    fn start_fetch(state: &Arc<AppState>, mailbox: &str, max: usize) -> Result<Polling, (usize, Option<Instant>)> {
        let held = state.mailboxes.held();
        let mut polling = state.mailboxes.polling.lock().unwrap_or_else(|e| e.into_inner());
        let mine = held.values().filter(|h| h.lease.endpoint == mailbox);
        let (n, first) =
            mine.fold((0, None), |(n, first), h| (n + 1, Some(first.map_or(h.until, |f: Instant| f.min(h.until)))));
        let fetching = polling.entry(mailbox.to_owned()).or_default();
        if n + *fetching >= max {
            return Err((n + *fetching, first));
        }
        *fetching += 1;
        Ok(Polling { state: state.clone(), mailbox: mailbox.to_owned() })
    }

    /// How many deliveries of `mailbox` are fetched and not yet acknowledged (for operators).
    pub fn held_count(&self, mailbox: &str) -> usize {
        self.held().values().filter(|h| h.lease.endpoint == mailbox).count()
    }

    /// Takes a held delivery of `mailbox` out (to settle it).
    fn take(&self, mailbox: &str, id: DeliveryId) -> Option<Lease> {
        self.take_fetched_by(mailbox, id, Millis::MAX)
    }

    /// Takes a held delivery of `mailbox` out if it was fetched at or before `at`.
    fn take_fetched_by(&self, mailbox: &str, id: DeliveryId, at: Millis) -> Option<Lease> {
        let mut held = self.held();
        match held.get(&id) {
            Some(h) if h.lease.endpoint == mailbox && h.fetched_at <= at => held.remove(&id).map(|h| h.lease),
            _ => None,
        }
    }

    /// Takes out every held delivery whose deadline has passed (all of them with `all`).
    fn take_expired(&self, all: bool) -> Vec<Lease> {
        let now = Instant::now();
        let mut held = self.held();
        let expired: Vec<DeliveryId> = held.iter().filter(|(_, h)| all || h.until <= now).map(|(id, _)| *id).collect();
        expired.into_iter().filter_map(|id| held.remove(&id)).map(|h| h.lease).collect()
    }
}

/// Settles held deliveries whose deadline passed as failed attempts, until `shutdown`; then
/// gives back whatever is still held, due again at once (those deliveries are offered again).
pub async fn sweep(state: Arc<AppState>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(SWEEP) => *shutdown.borrow(),
            changed = shutdown.changed() => changed.is_err() || *shutdown.borrow(),
        };
        if stopping {
            // Before the holds are taken out: a fetch still waiting then hands nothing out
            // (see `next`), so nothing is held after they were given back.
            state.mailboxes.closing.store(true, Ordering::SeqCst);
        }
        for lease in state.mailboxes.take_expired(stopping) {
            if stopping {
                // Not the agency's failure: due again at once, never dead for it.
                let error = "the hub stopped before the mailbox acknowledged it".to_owned();
                let outcome = Outcome::Retry { not_before: now_millis(), error };
                let _ = state.pipeline.store().settle(lease, outcome).await;
                continue;
            }
            let timeout = state.config.endpoint(&lease.endpoint).map_or(Duration::ZERO, |e| e.timeout);
            let error = format!("not acknowledged within {}", humantime::format_duration(timeout));
            let result = AttemptResult::Transient { error, retry_after: None };
            settle(state.pipeline.store().as_ref(), &state, lease, result).await.ok();
        }
        if stopping {
            return;
        }
    }
}

/// Settles the deliveries this process holds when an agency's answer to them reached another
/// process (relayed through the store), until `shutdown`. Without a shared store: nothing to do.
pub async fn follow_verdicts(state: Arc<AppState>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let Some(mut verdicts) = state.pipeline.store().relayed_verdicts() else { return };
    loop {
        let v = tokio::select! {
            v = verdicts.recv() => v,
            _ = shutdown.changed() => return,
        };
        match v {
            Ok(v) => {
                // An answer written before this process handed the delivery out was meant for
                // an earlier attempt (the stream read again from its start replays every
                // answer): it must not settle this one. Clocks of different machines decide
                // here; one running behind can make a real answer look older, which is then
                // ignored and the delivery offered again after its deadline, never settled wrongly.
                let Some(lease) = state.mailboxes.take_fetched_by(&v.mailbox, v.delivery_id, v.at) else { continue };
                tracing::debug!(delivery_id = %v.delivery_id, mailbox = %v.mailbox, "settling an answer another process took");
                settle(state.pipeline.store().as_ref(), &state, lease, result_of(&v.mailbox, &v.verdict)).await.ok();
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(
                    missed = n,
                    "mailbox answers relayed by other processes were missed; those deliveries are offered again after their deadline"
                );
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// What an agency's answer means for the attempt.
fn result_of(mailbox: &str, verdict: &Verdict) -> AttemptResult {
    match verdict {
        Verdict::Ack => AttemptResult::Delivered { via: Handover::Mailbox },
        Verdict::Reject { reason, retry } => {
            let error = format!("rejected by mailbox `{mailbox}`: {reason}");
            if *retry {
                AttemptResult::Transient { error, retry_after: None }
            } else {
                AttemptResult::Permanent { error }
            }
        }
    }
}

/// Settles an agency's answer: here if this process holds the delivery, else through whichever
/// process does (see the module docs).
async fn answer(state: &Arc<AppState>, mailbox: &str, id: &str, verdict: Verdict) -> Result<Response, Problem> {
    let id: DeliveryId = id.parse().map_err(|_| not_held())?;
    if let Some(lease) = state.mailboxes.take(mailbox, id) {
        // In a task of its own, as `next` leases: the lease is out of the held map now, and a
        // client that hangs up while the store records the outcome (a publish to the broker can
        // take seconds) must not cancel the settle halfway, which would leave the delivery
        // pending with its message held by nobody until the broker connection closes.
        let task_state = state.clone();
        let result = result_of(mailbox, &verdict);
        let settled =
            tokio::spawn(async move { settle(task_state.pipeline.store().as_ref(), &task_state, lease, result).await });
        match settled.await {
            Ok(r) => r?,
            Err(e) => {
                return Err(Problem::from(crate::store::StoreError::Unavailable(format!("settle failed: {e}"))));
            }
        }
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let store = state.pipeline.store();
    // Only a delivery of this mailbox that is out for an attempt can be held elsewhere.
    let before = match store.delivery(id).await? {
        Some(d) if d.endpoint == mailbox && d.state == DeliveryState::Pending => d,
        _ => return Err(not_held()),
    };
    // What the holder's settlement looks like from here: an acknowledgement makes the delivery
    // delivered, a rejection dead (or, with `retry`, counts an attempt).
    let wanted = match &verdict {
        Verdict::Ack => Some(DeliveryState::Delivered),
        Verdict::Reject { retry: false, .. } => Some(DeliveryState::Dead),
        Verdict::Reject { retry: true, .. } => None,
    };
    let relay = MailboxVerdict { mailbox: mailbox.to_owned(), delivery_id: id, verdict, at: now_millis() };
    if !store.relay_verdict(relay).await? {
        return Err(not_held());
    }
    let deadline = Instant::now() + RELAY_WAIT;
    loop {
        let changed = match store.delivery(id).await? {
            None => return Err(not_held()),
            Some(d) => (d.attempts != before.attempts || d.state != before.state).then_some(d.state),
        };
        match (changed, wanted) {
            (Some(state), Some(wanted)) if state == wanted => return Ok(StatusCode::NO_CONTENT.into_response()),
            (Some(_), None) => return Ok(StatusCode::NO_CONTENT.into_response()),
            // Settled otherwise: its time ran out before the answer came (it is offered again).
            (Some(_), Some(_)) => return Err(not_held()),
            (None, _) if Instant::now() >= deadline => return Err(not_held()),
            (None, _) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Settles one held delivery with the retry policy, as a delivery worker settles an attempt.
async fn settle(store: &dyn Store, state: &AppState, lease: Lease, result: AttemptResult) -> Result<(), Problem> {
    let id = lease.delivery_id;
    crate::delivery::settle_attempt(store, &state.config.raw.retry, lease, result).await.map_err(|e| {
        tracing::error!(delivery_id = %id, error = %e, "cannot record a mailbox outcome; the delivery will be offered again");
        Problem::from(e)
    })
}

/// The mailbox `name` if the bearer token is its own; one answer for every other case, so a
/// caller learns nothing about which mailboxes exist.
fn authorize(state: &AppState, headers: &HeaderMap, name: &str) -> Result<(), Problem> {
    match super::token_holder(&state.mailboxes.tokens, headers) {
        Some(mailbox) if mailbox == name => Ok(()),
        _ => Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            "this mailbox needs its own bearer token",
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NextQuery {
    /// How long to wait for a delivery (`20s`); default: answer at once.
    wait: Option<String>,
}

async fn next(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    query: Result<Query<NextQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    authorize(&state, &headers, &name)?;
    let Query(query) = query.map_err(|e| Problem::bad_filter(e.body_text()))?;
    let wait = match query.wait.as_deref() {
        None => Duration::ZERO,
        Some(w) => match humantime::parse_duration(w) {
            Ok(d) if d <= MAX_WAIT => d,
            _ => {
                return Err(Problem::bad_filter(format!("`wait` must be a duration up to 30s, like `20s`; got `{w}`")));
            }
        },
    };
    let Some(endpoint) = state.config.endpoint(&name) else { return Err(Problem::not_found("mailbox")) };
    if state.paused.is_paused(&name) {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let polling = match Mailboxes::start_fetch(&state, &name, endpoint.concurrency) {
        Ok(p) => p,
        Err(busy) => return Err(busy_problem(busy)),
    };
    // Leased and held in a task of its own: a client that goes away while it waits must not
    // drop a lease half taken (it would stay leased, never offered again, until a restart).
    // The task waits in slices and stops at the next one once the client has gone, so an
    // abandoned poll neither keeps its place among the mailbox's `concurrency` for the rest of
    // its wait nor takes a delivery that nobody will see.
    let hung_up = HangUp::default();
    let gone = hung_up.0.clone();
    let timeout = endpoint.timeout;
    let task_state = state.clone();
    let leased = tokio::spawn(async move {
        let _polling = polling;
        let store = task_state.pipeline.store();
        let deadline = Instant::now() + wait;
        let lease = loop {
            // Paused meanwhile (here or, through the store, on another process): hand nothing
            // out for the rest of the wait.
            if gone.load(Ordering::SeqCst)
                || task_state.mailboxes.closing.load(Ordering::SeqCst)
                || task_state.paused.is_paused(&name)
            {
                return Ok(None);
            }
            let slice = deadline.saturating_duration_since(Instant::now()).min(POLL_SLICE);
            if let Some(lease) = store.lease(&name, 1, slice).await?.pop() {
                break lease;
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
        };
        let give_back = |error: &str| Outcome::Retry { not_before: now_millis(), error: error.to_owned() };
        if gone.load(Ordering::SeqCst) {
            // Taken in the last slice, with nobody left to hand it to: back, due at once.
            store.settle(lease, give_back("the mailbox's poll ended before the delivery could be handed out")).await?;
            return Ok(None);
        }
        // The agency's time to answer starts now that it has the delivery, not when its poll
        // began (a long poll may wait up to 30 s before something comes).
        let until = Instant::now() + timeout;
        let ack_by = time::OffsetDateTime::now_utc() + timeout;
        let shown = Fetched {
            headers: crate::delivery::lotse_headers(&lease),
            content_type: lease.content_type.clone(),
            payload: lease.payload.clone(),
            ack_by,
        };
        {
            // `closing` is read under the held lock, which the stopping sweep takes after
            // setting it: either this hold is in the map it gives back, or it is not made.
            let mut held = task_state.mailboxes.held();
            if !task_state.mailboxes.closing.load(Ordering::SeqCst) {
                held.insert(lease.delivery_id, Held { lease, until, fetched_at: now_millis() });
                return Ok(Some(shown));
            }
        }
        store.settle(lease, give_back("the hub stopped before the mailbox could fetch it")).await?;
        Ok::<_, crate::store::StoreError>(None)
    });
    let fetched = match leased.await {
        Ok(r) => r?,
        Err(e) => return Err(Problem::from(crate::store::StoreError::Unavailable(format!("lease failed: {e}")))),
    };
    drop(hung_up);
    let Some(f) = fetched else { return Ok(StatusCode::NO_CONTENT.into_response()) };
    let mut response = f.payload.into_response();
    let h = response.headers_mut();
    let mut put = |name: &'static str, value: &str| {
        // A value that cannot be a header (a message id with control characters) is left out.
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(HeaderName::from_static(name), v);
        }
    };
    put("content-type", &f.content_type);
    for (name, value) in &f.headers {
        put(name, value);
    }
    if let Ok(t) = f.ack_by.format(&time::format_description::well_known::Rfc3339) {
        put("lotse-ack-by", &t);
    }
    Ok(response)
}

/// `429`: `busy` deliveries held or being fetched, the first held one due back at the instant.
fn busy_problem((busy, first_due): (usize, Option<Instant>)) -> Problem {
    let seconds = first_due.map_or(1, |d| d.saturating_duration_since(Instant::now()).as_secs().max(1));
    Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "mailbox-busy",
        "Acknowledge first",
        format!(
            "{busy} deliveries are fetched and not acknowledged, or being fetched (the most this mailbox allows at once); acknowledge or reject them, or wait until their time runs out"
        ),
    )
    .retry_after(u32::try_from(seconds).unwrap_or(u32::MAX))
}

/// What `next` shows of a lease it holds.
struct Fetched {
    headers: Vec<(&'static str, String)>,
    content_type: String,
    payload: bytes::Bytes,
    /// When the agency's time to answer ends (`Lotse-Ack-By`).
    ack_by: time::OffsetDateTime,
}

/// Set when the request that polls is dropped (its client went away) before its fetch ended.
#[derive(Default)]
struct HangUp(Arc<AtomicBool>);

impl Drop for HangUp {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn not_held() -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "not-held",
        "Not held",
        "this mailbox holds no such delivery: it was never fetched here, was already acknowledged or rejected, or its time to acknowledge ran out (then it is offered again)",
    )
}

async fn ack(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    authorize(&state, &headers, &name)?;
    answer(&state, &name, &id, Verdict::Ack).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rejection {
    reason: String,
    /// Offer it again later (a passing problem on the agency's side) instead of dead at once.
    #[serde(default)]
    retry: bool,
}

/// Largest body of a rejection (a reason is kept to 1,000 characters).
const MAX_REJECTION_BYTES: usize = 64 * 1024;

async fn reject(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((name, id)): Path<(String, String)>,
    body: axum::body::Body,
) -> Result<Response, Problem> {
    // The token first, then the body, read under the same time and size bounds as a
    // submission's: a client that sends headers and then trickles (or never sends) its body
    // must not hold a connection on the partner port, least of all without a token.
    authorize(&state, &headers, &name)?;
    let grace = state.config.raw.limits.read_timeout;
    let bytes = super::partner::read_body(body, &headers, MAX_REJECTION_BYTES, grace).await?;
    let r: Rejection = serde_json::from_slice(&bytes).map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "malformed",
            "Malformed request",
            format!("expected {{\"reason\": \"...\", \"retry\": false}}: {e}"),
        )
    })?;
    let reason: String = r.reason.chars().take(1000).collect();
    answer(&state, &name, &id, Verdict::Reject { reason, retry: r.retry }).await
}

#[cfg(test)]
mod tests;

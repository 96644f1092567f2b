//! The background tasks of a RabbitMQ store: the connection supervisor, the stream fold, the
//! work pumps, and the group commit of stream records.

use super::*;

pub(super) async fn supervise(
    shared: Arc<Shared>,
    mut broken: mpsc::UnboundedReceiver<u64>,
    first: oneshot::Sender<Result<(), String>>,
) {
    let mut first = Some(first);
    let mut shutdown = shared.shutdown.subscribe();
    let mut backoff = Duration::from_millis(200);
    let started = Instant::now();
    let mut id = 0u64;
    loop {
        if *shutdown.borrow() {
            break;
        }
        id += 1;
        match open_session(&shared, id).await {
            // `open_session` made the session current (before its consumers started).
            Ok((session, tasks)) => {
                backoff = Duration::from_millis(200);
                tracing::info!(session = id, "connected to RabbitMQ");
                if let Some(f) = first.take() {
                    let _ = f.send(Ok(()));
                }
                if shared.catching_up.load(Ordering::SeqCst) {
                    tokio::spawn(catch_up(shared.clone()));
                }
                loop {
                    tokio::select! {
                        b = broken.recv() => match b {
                            Some(b) if b != id => continue,
                            _ => break,
                        },
                        _ = shutdown.changed() => break,
                    }
                }
                if let Ok(mut s) = shared.session.write() {
                    *s = None;
                }
                for t in &tasks {
                    t.abort();
                }
                if tokio::time::timeout(SESSION_CLOSE_WAIT, session.conn.close(200, "bye".into())).await.is_err() {
                    tracing::warn!(
                        session = id,
                        "RabbitMQ did not answer the close within {SESSION_CLOSE_WAIT:?}; dropping the connection"
                    );
                }
                if *shutdown.borrow() {
                    break;
                }
                tracing::warn!(session = id, "lost the RabbitMQ connection; reconnecting");
            }
            Err(e) => {
                if e.lasting {
                    tracing::error!(error = %e, retry_in = ?backoff, "RabbitMQ refuses this process until an operator acts");
                } else {
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot connect to RabbitMQ");
                }
                // A start gives up after 15 s of trying, or at once for what only an operator
                // can resolve; a running process tries on (the operator may be at it).
                if first.is_some() && (e.lasting || started.elapsed() > Duration::from_secs(15)) {
                    if let Some(f) = first.take() {
                        let _ = f.send(Err(e.message));
                    }
                    break;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

pub(super) type Tasks = Vec<tokio::task::JoinHandle<()>>;

pub(super) async fn open_session(shared: &Arc<Shared>, id: u64) -> Result<(Arc<Session>, Tasks), SessionError> {
    let props = ConnectionProperties::default()
        .with_connection_name(format!("lotse {} pid {}", shared.names.events(), std::process::id()).into());
    let connect = async {
        let runtime = lapin::runtime::default_runtime()?;
        lapin::Connect::connect_with_config(shared.url.as_str(), props, shared.tls.clone(), runtime).await
    };
    let conn = tokio::time::timeout(CONFIRM_TIMEOUT, connect)
        .await
        .map_err(|_| format!("no answer within {CONFIRM_TIMEOUT:?}"))?
        .map_err(|e| connect_failed(e, shared.url.starts_with("amqps://")))?;
    // Outside `setup`, so a failed setup can stop what it had started (the fold) at once
    // instead of leaving it to end with the connection.
    let mut tasks: Tasks = Vec::new();
    let setup = async {
        let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
        topology::declare(&ch, &shared.names, &shared.endpoints).await?;
        let _ = ch.close(200, "declared".into()).await;
        let mut publishers = Vec::new();
        for _ in 0..PUBLISH_CHANNELS {
            let c = conn.create_channel().await.map_err(|e| e.to_string())?;
            c.confirm_select(ConfirmSelectOptions::default()).await.map_err(|e| e.to_string())?;
            publishers.push(c);
        }
        // The stream, from the offset after the last one folded.
        let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
        ch.basic_qos(1000, BasicQosOptions::default()).await.map_err(|e| e.to_string())?;
        let mut args = FieldTable::default();
        let next = shared.next_offset.load(Ordering::SeqCst);
        // After a reconnect: from the last message folded, not after it, to check first that
        // the stream still holds it (see `check_resume`).
        let resume = next.checked_sub(1);
        args.insert("x-stream-offset".into(), AMQPValue::LongLongInt(resume.unwrap_or(0) as i64));
        let events = shared.names.events();
        let mut consumer = ch
            .basic_consume(short(&events)?, "".into(), BasicConsumeOptions::default(), args)
            .await
            .map_err(|e| format!("consume `{events}`: {e}"))?;
        if let Some(last) = resume {
            check_resume(shared, &mut consumer, last).await?;
        }
        tasks.push(tokio::spawn(fold(shared.clone(), id, ch, consumer)));
        let mut getters = HashMap::new();
        let mut consumers = Vec::new();
        for endpoint in &shared.endpoints {
            let Some(queue) = shared.queues.get(endpoint) else { continue };
            let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
            if shared.pulled.contains(endpoint) {
                getters.insert(endpoint.clone(), ch);
                continue;
            }
            ch.basic_qos(PREFETCH, BasicQosOptions::default()).await.map_err(|e| e.to_string())?;
            consumers.push((endpoint, ch, queue.tx.clone()));
        }
        Ok::<_, SessionError>((publishers, getters, consumers))
    };
    let set = match tokio::time::timeout(SETUP_TIMEOUT, setup).await {
        Ok(set) => set,
        Err(_) => Err(SessionError::from(format!("RabbitMQ did not finish setting up within {SETUP_TIMEOUT:?}"))),
    };
    let (publishers, getters, consumers) = match set {
        Ok(set) => set,
        Err(e) => {
            for t in &tasks {
                t.abort();
            }
            let _ = tokio::time::timeout(SESSION_CLOSE_WAIT, conn.close(200, "setup failed".into())).await;
            return Err(e);
        }
    };
    let session = Arc::new(Session { id, conn, publishers, next: AtomicUsize::new(0), getters });
    // The session is current before its first work message can arrive: a lease drops a message
    // of any other session (that channel is gone and the broker has put it back), so a message
    // that reached a lease before its session was current was dropped unacked on a live channel,
    // held by nobody until that connection ended (a broker restart left up to a prefetch of
    // deliveries undelivered, seen once in the cluster test).
    if let Ok(mut s) = shared.session.write() {
        *s = Some(session.clone());
    }
    // Counted as it becomes current: `broker()` never shows a connected session the count does
    // not include yet (the consumers below take a few more round trips).
    shared.connections.fetch_add(1, Ordering::SeqCst);
    for (endpoint, ch, tx) in consumers {
        let work = shared.names.work(endpoint);
        let consumed = match short(&work) {
            Ok(name) => {
                let consume = ch.basic_consume(name, "".into(), BasicConsumeOptions::default(), FieldTable::default());
                match tokio::time::timeout(CONFIRM_TIMEOUT, consume).await {
                    Ok(consumed) => consumed.map_err(|e| format!("consume `{work}`: {e}")),
                    Err(_) => Err(format!("consume `{work}`: no answer within {CONFIRM_TIMEOUT:?}")),
                }
            }
            Err(e) => Err(e),
        };
        match consumed {
            Ok(consumer) => tasks.push(tokio::spawn(pump(shared.clone(), id, ch, consumer, tx, endpoint.clone()))),
            Err(e) => {
                if let Ok(mut s) = shared.session.write()
                    && s.as_ref().is_some_and(|s| s.id == id)
                {
                    *s = None;
                }
                for t in &tasks {
                    t.abort();
                }
                let _ = tokio::time::timeout(SESSION_CLOSE_WAIT, session.conn.close(200, "setup failed".into())).await;
                return Err(SessionError::from(e));
            }
        }
    }
    Ok((session, tasks))
}

/// A failed connect. A login the broker refuses (403 `ACCESS_REFUSED`) or a virtual host it
/// does not let the user into (530 `NOT_ALLOWED`: none of that name, or no permissions there)
/// stays so until an operator changes the URL or the broker's users: lasting.
fn connect_failed(e: lapin::Error, tls: bool) -> SessionError {
    let lasting = |message: String| SessionError { message, lasting: true };
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 403 => lasting(format!(
            "RabbitMQ refused the login: check the user and password of `[queue] url` ({})",
            amqp.get_message()
        )),
        lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 530 => lasting(format!(
            "RabbitMQ does not let this user into the virtual host of `[queue] url`: it does not exist, or the \
             user has no permissions there ({})",
            amqp.get_message()
        )),
        // rustls reports a failed handshake (a certificate not trusted, none shown where the
        // broker wants one) as invalid data: only the operator can fix the files or the broker.
        lapin::ErrorKind::IOError(io) if tls && io.kind() == std::io::ErrorKind::InvalidData => lasting(format!(
            "the TLS handshake with RabbitMQ failed: check `[queue] tls_ca` (the CA of the broker's certificate) \
             and `tls_client_cert`/`tls_client_key` if the broker wants a client certificate ({io})"
        )),
        _ => SessionError::from(e.to_string()),
    }
}

/// After the index was dropped (see [`check_resume`]): the store reports itself not ready until
/// the fold has read the stream up to now again, as start-up waits before it serves.
async fn catch_up(shared: Arc<Shared>) {
    // Until it is done (here or by the task of a later session), or the store closes.
    while shared.catching_up.load(Ordering::SeqCst) && !*shared.shutdown.borrow() {
        match shared.read_up_to_now().await {
            Ok(_) => {
                shared.catching_up.store(false, Ordering::SeqCst);
                tracing::info!("read the event stream again up to now");
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the event stream again did not finish; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// The offset RabbitMQ gives a stream message it delivers (`x-stream-offset`).
fn stream_offset(delivery: &lapin::message::Delivery) -> Option<u64> {
    match delivery.properties.headers().as_ref()?.inner().get("x-stream-offset")? {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}

/// What the fold remembers of a stream message's bytes, to recognise it after a reconnect.
fn digest(body: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0x006c_6f74_7365).hash_one(body)
}

/// After a reconnect, before folding on: whether the stream still holds, at offset `last`, the
/// message this process folded last. A stream that lost its tail (a single broker that lost
/// power before its page cache reached the disk; a stream deleted and declared again) gives
/// the lost offsets to new records, and resuming after `last` would skip those records for good
/// while the index keeps the lost ones. So when the message there is another one, or none comes
/// within [`RESUME_CHECK`] (the stream now ends before `last`), the index is dropped and the
/// session fails: the next one reads the stream from its start, as a fresh process does.
async fn check_resume(shared: &Shared, consumer: &mut lapin::Consumer, last: u64) -> Result<(), String> {
    let expected = shared.last_digest.load(Ordering::SeqCst);
    let deadline = Instant::now() + RESUME_CHECK;
    let found = loop {
        let delivery = match tokio::time::timeout_at(deadline, consumer.next()).await {
            Ok(Some(Ok(d))) => d,
            Ok(Some(Err(e))) => return Err(format!("reading the event stream: {e}")),
            Ok(None) => return Err("the event stream consumer was cancelled".into()),
            Err(_) => break format!("nothing at offset {last} within {RESUME_CHECK:?}"),
        };
        let offset = stream_offset(&delivery);
        match tokio::time::timeout(ACK_WAIT, delivery.acker.ack(BasicAckOptions::default())).await {
            Ok(acked) => acked.map_err(|e| e.to_string())?,
            Err(_) => return Err(format!("RabbitMQ took no ack within {ACK_WAIT:?}")),
        };
        match offset {
            // The start of the chunk that holds `last`: folded before.
            Some(o) if o < last => continue,
            Some(o) if o == last && digest(&delivery.data) == expected => return Ok(()),
            Some(o) if o == last => break format!("another message at offset {last}"),
            Some(o) => break format!("offset {last} is gone (the stream starts at {o})"),
            None => break "a message without its offset".into(),
        }
    };
    let reason = format!("the event stream no longer holds what this process folded: {found}");
    tracing::error!(%reason, "reading the event stream again from its start");
    metrics::counter!("lotse_event_stream_rereads_total").increment(1);
    shared.rereads.fetch_add(1, Ordering::SeqCst);
    shared.forget_folded();
    Err(reason)
}

/// Applies the event stream to the index and wakes the writers waiting for their records.
pub(super) async fn fold(shared: Arc<Shared>, session: u64, _ch: Channel, mut consumer: lapin::Consumer) {
    // Every message comes after the last one folded: the session subscribed at offset 0, or at
    // the last one folded, which `check_resume` consumed with the chunk's earlier messages.
    while let Some(item) = consumer.next().await {
        let Ok(delivery) = item else { break };
        let offset = stream_offset(&delivery);
        match own_or_decoded(&shared, &delivery.data) {
            Ok((records, unreadable)) => {
                apply(&shared, records);
                for e in unreadable {
                    skipped(&shared, offset, &e);
                }
            }
            Err(e) => skipped(&shared, offset, &e),
        }
        if let Some(o) = offset {
            shared.last_digest.store(digest(&delivery.data), Ordering::SeqCst);
            shared.next_offset.store(o + 1, Ordering::SeqCst);
        }
        // Bounded: a fold that waited for ever would leave every writer of this process
        // waiting for its record (503s) and its status behind, without a reconnect.
        match tokio::time::timeout(ACK_WAIT, delivery.acker.ack(BasicAckOptions::default())).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => break,
            Err(_) => {
                tracing::warn!(session, "RabbitMQ took no ack of the event stream within {ACK_WAIT:?}; reconnecting");
                break;
            }
        }
    }
    let _ = shared.broken.send(session);
}

/// Applies the records of one stream message to the index, relays mailbox verdicts, and wakes
/// the writers waiting for these records.
fn apply(shared: &Shared, records: Vec<(Envelope, Bytes)>) {
    let mut applied = Vec::with_capacity(records.len());
    let mut verdicts = Vec::new();
    if let Ok(mut index) = shared.index.lock() {
        for (envelope, payload) in records {
            let rid = envelope.rid;
            if let Record::Verdict(v) = &envelope.record {
                verdicts.push(MailboxVerdict { at: envelope.at, ..v.clone() });
            }
            applied.push((rid, index.apply(envelope, payload)));
        }
    }
    for v in verdicts {
        // No receiver: no mailbox in this process.
        let _ = shared.verdicts.send(v);
    }
    if let Ok(mut waiters) = shared.waiters.lock() {
        for (rid, a) in applied {
            Shared::applied(&mut waiters, rid, a);
        }
    }
    shared.folded.notify_waiters();
}

/// The records of a stream message that could be read, and why the others could not.
type Read = (Vec<(Envelope, Bytes)>, Vec<String>);

/// A stream record (or message) this process cannot read is skipped, loudly: the others of its
/// message are applied, and `lotse status` and `/metrics` count what was skipped.
fn skipped(shared: &Shared, offset: Option<u64>, error: &str) {
    shared.unreadable.fetch_add(1, Ordering::SeqCst);
    metrics::counter!("lotse_event_records_unreadable_total").increment(1);
    tracing::error!(
        ?offset,
        error,
        "an event record this version cannot read was skipped (written by a later version?)"
    );
}

/// The records of one stream message, and why any of them could not be read (each such record
/// is left out; the rest are applied). Records this node wrote come from its waiters, as they
/// were before encoding (the same values the decoder would give back): a node skips decoding
/// its own writes, which on one node is every intake's claim. An `Err` is a message whose
/// framing is broken: none of its records can be told apart.
fn own_or_decoded(shared: &Shared, body: &[u8]) -> Result<Read, String> {
    let encoded = record::split(body)?;
    let mut own: Vec<Option<Envelope>> = Vec::with_capacity(encoded.len());
    if let Ok(mut waiters) = shared.waiters.lock() {
        for e in &encoded {
            let written = record::peek_rid(e).and_then(|rid| waiters.get_mut(&rid)).and_then(|w| w.envelope.take());
            own.push(written);
        }
    }
    own.resize_with(encoded.len(), || None);
    let mut out = Vec::with_capacity(encoded.len());
    let mut unreadable = Vec::new();
    for (e, written) in encoded.into_iter().zip(own) {
        match written {
            Some(envelope) => out.push((envelope, Bytes::new())),
            None => match record::decode(e) {
                Ok(r) => out.push(r),
                Err(error) => unreadable.push(error.to_string()),
            },
        }
    }
    Ok((out, unreadable))
}

/// Moves an endpoint's work messages from the broker into the local hand-out queue.
pub(super) async fn pump(
    shared: Arc<Shared>,
    session: u64,
    _ch: Channel,
    mut consumer: lapin::Consumer,
    tx: mpsc::Sender<Incoming>,
    endpoint: String,
) {
    let received = shared.queues.get(&endpoint).map(|q| &q.received);
    while let Some(item) = consumer.next().await {
        let Ok(delivery) = item else { break };
        if let Some(r) = received {
            r.fetch_add(1, Ordering::Relaxed);
        }
        if tx.send(Incoming { session, delivery }).await.is_err() {
            break;
        }
    }
    let _ = shared.broken.send(session);
}

/// The next group of a group commit: waits for a first item (the one carried over, else the
/// next to come) and for a free slot of `slots`, then takes what else waits in `rx` now, up to
/// `items` and (past the first) `bytes`; the one that would pass `bytes` is left in `carry` for
/// the next group. `None` when the store closes (or the senders are gone).
async fn next_group<T>(
    rx: &mut mpsc::UnboundedReceiver<T>,
    carry: &mut Option<T>,
    shutdown: &mut watch::Receiver<bool>,
    slots: &Arc<tokio::sync::Semaphore>,
    (items, bytes): (usize, usize),
    size_of: impl Fn(&T) -> usize,
) -> Option<(tokio::sync::OwnedSemaphorePermit, Vec<T>)> {
    let first = match carry.take() {
        Some(t) => t,
        None => tokio::select! {
            t = rx.recv() => t?,
            _ = shutdown.changed() => return None,
        },
    };
    let Ok(slot) = slots.clone().acquire_owned().await else { return None };
    let mut size = size_of(&first);
    let mut group = vec![first];
    while group.len() < items && size < bytes {
        match rx.try_recv() {
            Ok(t) if size + size_of(&t) > bytes => {
                *carry = Some(t);
                break;
            }
            Ok(t) => {
                size += size_of(&t);
                group.push(t);
            }
            Err(_) => break,
        }
    }
    Some((slot, group))
}

/// Group commit for the stream: gathers the records waiting, publishes them as one message, and
/// tells each writer the confirm's verdict.
pub(super) async fn append_batches(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Append>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT));
    let mut shutdown = shared.shutdown.subscribe();
    let mut carry: Option<Append> = None;
    let limits = (BATCH_RECORDS, BATCH_BYTES);
    while let Some((slot, batch)) =
        next_group(&mut rx, &mut carry, &mut shutdown, &slots, limits, |a| a.encoded.len()).await
    {
        let shared = shared.clone();
        tokio::spawn(async move {
            let (encoded, rids): (Vec<Vec<u8>>, Vec<Uuid>) = batch.into_iter().map(|a| (a.encoded, a.rid)).unzip();
            let body = record::frame(&encoded);
            let props = BasicProperties::default().with_delivery_mode(2);
            let result = shared.publish(&shared.names.events(), &body, props).await.map_err(|e| match e {
                StoreError::Unavailable(m) | StoreError::Corrupt(m) => m,
            });
            shared.confirmed(&rids, &result);
            drop(slot);
        });
    }
}

/// Writes the `Queued` marks gathered since the last flush as one record.
pub(super) async fn flush_queued(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(QUEUED_FLUSH) => {}
            _ = shutdown.changed() => break,
        }
        let ids = shared.queued.lock().map(|mut q| std::mem::take(&mut *q)).unwrap_or_default();
        if ids.is_empty() {
            continue;
        }
        if let Err(e) = shared.append_and_fold(Record::Queued { submission_ids: ids.clone() }, None).await {
            tracing::debug!(error = %e, "queued marks not written; kept for the next flush");
            if let Ok(mut q) = shared.queued.lock() {
                q.extend(ids);
            }
        }
    }
}

/// Group commit for a work queue: gathers intake's deliveries waiting for it, publishes them as
/// one pack (or alone, a work message as any other, when only one waits), and tells each
/// intake the confirm's verdict. Under light load every delivery goes alone and at once; packs
/// form while [`PACKS_IN_FLIGHT`] publishes wait for their confirms.
pub(super) async fn pack_work(shared: Arc<Shared>, endpoint: String, mut rx: mpsc::UnboundedReceiver<Packing>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(PACKS_IN_FLIGHT));
    let mut shutdown = shared.shutdown.subscribe();
    let queue = shared.names.work(&endpoint);
    let mut carry: Option<Packing> = None;
    while let Some((slot, pack)) =
        next_group(&mut rx, &mut carry, &mut shutdown, &slots, (PACK_PARTS, PACK_BYTES), |p| p.payload.len()).await
    {
        let shared = shared.clone();
        let queue = queue.clone();
        tokio::spawn(async move {
            let published = if let [one] = &pack[..] {
                match one.message.properties() {
                    Ok(props) => shared.publish(&queue, &one.payload, props).await,
                    Err(e) => Err(unavailable(e)),
                }
            } else {
                let (body, props) = work::pack(pack.iter().map(|p| (&p.message, &p.payload[..])));
                shared.publish(&queue, &body, props).await
            };
            drop(slot);
            for p in pack {
                let _ = p.done.send(published.clone());
            }
        });
    }
    // What is still waiting is answered: the store is closing.
    carry.into_iter().chain(std::iter::from_fn(|| rx.try_recv().ok())).for_each(|p| {
        let _ = p.done.send(Err(unavailable("the store is closing")));
    });
}

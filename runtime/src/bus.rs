//! The event bus: JetStream as Cadre's event log.
//!
//! Every publish carries `Nats-Msg-Id` = the event id (a retried publish is dropped as a
//! duplicate) and the current trace context; appends that protect an invariant also carry an
//! expected last sequence over a subject filter, so two writers cannot fork an aggregate.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::header;
use async_nats::jetstream::{self, context, stream};
use bytes::Bytes;
use cadre_proto::envelope::CONTENT_TYPE;
use cadre_proto::timers::{Timer, TimerMessage, When};
use cadre_proto::{DecodeError, Envelope, TenantId, streams};
use chrono::{DateTime, Utc};
use futures::StreamExt;

/// Header naming the subject filter that `Nats-Expected-Last-Subject-Sequence` applies to
/// (NATS server 2.11+). Without it the check would cover only the event's own subject.
pub const EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: &str =
    "Nats-Expected-Last-Subject-Sequence-Subject";

/// Most events in one atomic batch ([`EventBus::append_batch_after`]): the server's limit.
pub const MAX_BATCH: usize = 1000;

/// Most atomic batches one process has open at once: the server allows 50 per stream (all
/// replicas of the coordinator together), and refuses the batches beyond.
const BATCHES_IN_FLIGHT: usize = 16;

/// The error type of NATS calls whose kinds do not matter to the caller.
pub type NatsError = Box<dyn std::error::Error + Send + Sync>;

/// Connects to `urls` (one server URL, or several separated by commas: the servers of a
/// cluster), retrying until one answers (it may start after us in a pod). Returns once the
/// server has introduced itself, so its version is known.
pub async fn connect(urls: &str, client_name: &str) -> Result<async_nats::Client, NatsError> {
    let servers = urls
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::parse)
        .collect::<Result<Vec<async_nats::ServerAddr>, _>>()?;
    let client = async_nats::ConnectOptions::new()
        .name(client_name)
        .retry_on_initial_connect()
        .connect(servers)
        .await?;
    client.flush().await?;
    Ok(client)
}

/// Creates a stream, or brings an existing one to the settings in [`streams`].
async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Stream, NatsError> {
    match js.get_stream(&config.name).await {
        Ok(mut existing) => {
            let current = existing.info().await?.config.clone();
            if current.subjects != config.subjects
                || current.duplicate_window != config.duplicate_window
                || current.max_message_size != config.max_message_size
                || current.allow_message_schedules != config.allow_message_schedules
                || current.allow_atomic_publish != config.allow_atomic_publish
            {
                js.update_stream(config).await?;
            }
            Ok(existing)
        }
        Err(_) => Ok(js.get_or_create_stream(config).await?),
    }
}

/// Oldest NATS server with what Cadre relies on: expected last sequence over a subject filter
/// (2.11), pinned-client consumers (2.11), terminate reasons in advisories (2.11), message
/// schedules for durable timers (2.12) and cron schedules for workflow triggers (2.14).
pub const MIN_SERVER_VERSION: (u64, u64) = (2, 14);

fn check_server_version(version: &str) -> Result<(), NatsError> {
    let mut parts = version
        .trim_start_matches('v')
        .split('.')
        .map(|p| p.parse::<u64>().ok());
    let found = (parts.next().flatten(), parts.next().flatten());
    match found {
        (Some(major), Some(minor)) if (major, minor) >= MIN_SERVER_VERSION => Ok(()),
        _ => Err(format!(
            "NATS server {version} is too old: Cadre needs {}.{} or newer (scripts/ensure-nats.sh installs one)",
            MIN_SERVER_VERSION.0, MIN_SERVER_VERSION.1
        )
        .into()),
    }
}

/// Where an append may land.
#[derive(Debug, Clone)]
pub enum Append {
    /// Anywhere: the event is a fact whose id makes a repeat harmless.
    Any,
    /// Only if the last message on `filter` has this stream sequence (0: none yet).
    ExpectLast { filter: String, sequence: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Someone appended to the filter since we read it: re-read and decide again.
    #[error("another writer appended first (expected last sequence {expected} on {filter})")]
    Conflict { filter: String, expected: u64 },
    #[error("publish to NATS failed: {0}")]
    Nats(#[from] context::PublishError),
}

/// Whether NATS refused a publish because the message is too large: the client's check against
/// the server's `max_payload`, or JetStream's against the stream's maximum message size.
pub fn is_too_large(error: &context::PublishError) -> bool {
    if error.kind() == context::PublishErrorKind::MaxPayloadExceeded {
        return true;
    }
    let stream_refused = refused_with(error, jetstream::ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM);
    // Older clients and servers say it only in words.
    let text = error.to_string().to_lowercase();
    stream_refused
        || text.contains("maximum payload")
        || text.contains("message size exceeds maximum allowed")
}

impl PublishError {
    /// Whether the log refused the events as too large: a permanent condition, never an outage.
    pub fn is_too_large(&self) -> bool {
        matches!(self, Self::Nats(error) if is_too_large(error))
    }

    /// Whether the server refused a message schedule's expression: retrying cannot help.
    pub fn is_refused_schedule(&self) -> bool {
        const SCHEDULE_PATTERN_INVALID: u64 = 10189;
        let Self::Nats(error) = self else {
            return false;
        };
        refused_with(error, jetstream::ErrorCode(SCHEDULE_PATTERN_INVALID))
            || error.to_string().contains("schedules pattern is invalid")
    }
}

/// The events of a filter, and the sequence of its last message (0: none).
#[derive(Debug, Clone, Default)]
pub struct History {
    pub events: Vec<Stored>,
    pub last_sequence: u64,
}

/// A stored event and its stream sequence.
#[derive(Debug, Clone)]
pub struct Stored {
    pub sequence: u64,
    pub envelope: Envelope,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading the event log failed: {0}")]
    Nats(NatsError),
    #[error("stored event at sequence {sequence} cannot be decoded: {error}")]
    Decode { sequence: u64, error: DecodeError },
}

/// Publishes and reads Cadre events on the event stream, and hands steps to the workers.
/// Cheap to clone: every task that appends or reads holds one.
#[derive(Clone)]
pub struct EventBus(std::sync::Arc<Bus>);

struct Bus {
    js: jetstream::Context,
    /// Turns to have an atomic batch open (see [`BATCHES_IN_FLIGHT`]).
    batches: tokio::sync::Semaphore,
    stream: stream::Stream,
    /// Whether the log has a single replica, its leader, when the bus opened: a direct get is
    /// then answered by the leader, and [`EventBus::last_event`] takes that cheaper path. A log
    /// given more replicas later is read through the leader's API once the services restart.
    single_replica: bool,
    dispatch: stream::Stream,
    timers: stream::Stream,
}

impl EventBus {
    /// Connects to the event stream, creating it when absent.
    pub async fn open(js: jetstream::Context, replicas: usize) -> Result<Self, NatsError> {
        check_server_version(&js.client().server_info().version)?;
        let stream = ensure_stream(&js, streams::events_stream(replicas)).await?;
        let dispatch = ensure_stream(&js, streams::dispatch_stream(replicas)).await?;
        let timers = ensure_stream(&js, streams::timers_stream(replicas)).await?;
        let single_replica = stream.cached_info().config.num_replicas <= 1;
        Ok(Self(std::sync::Arc::new(Bus {
            js,
            batches: tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT),
            stream,
            single_replica,
            dispatch,
            timers,
        })))
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.0.js
    }

    /// The event log.
    pub fn stream(&self) -> &stream::Stream {
        &self.0.stream
    }

    /// The agent workers' queue.
    pub fn dispatch_stream(&self) -> &stream::Stream {
        &self.0.dispatch
    }

    /// The durable timers.
    pub fn timers_stream(&self) -> &stream::Stream {
        &self.0.timers
    }

    /// Arms `timer` to fire `when` (replacing an earlier schedule of the same timer) and waits
    /// until JetStream has stored the schedule.
    pub async fn arm_timer(
        &self,
        tenant: &TenantId,
        timer: &Timer,
        when: &When,
    ) -> Result<(), PublishError> {
        let body = serde_json::to_vec(&TimerMessage {
            tenant: tenant.clone(),
            timer: timer.clone(),
        })
        .unwrap_or_default();
        let mut headers = HeaderMap::new();
        headers.insert(header::NATS_SCHEDULE, when.header().as_str());
        headers.insert(
            header::NATS_SCHEDULE_TARGET,
            timer.fired_subject(tenant).as_str(),
        );
        headers.insert(
            header::NATS_SCHEDULE_TTL,
            format!("{}s", streams::FIRED_TIMER_TTL.as_secs()).as_str(),
        );
        crate::telemetry::inject(&mut headers);
        self.0
            .js
            .publish_with_headers(timer.schedule_subject(tenant), headers, body.into())
            .await?
            .await?;
        Ok(())
    }

    /// Disarms `timer`; nothing happens if it is not armed.
    pub async fn disarm_timer(&self, tenant: &TenantId, timer: &Timer) -> Result<(), NatsError> {
        self.0
            .timers
            .purge()
            .filter(timer.schedule_subject(tenant))
            .await?;
        Ok(())
    }

    /// Hands a scheduled step to the agent workers that offer `provider`. The copy keeps the
    /// event's id as its `Nats-Msg-Id`, so handing the same step twice within the duplicate
    /// window stores it once. `stored_at`, the log sequence of the very event the caller has
    /// just appended, goes in [`LOG_SEQUENCE_HEADER`](cadre_proto::streams::LOG_SEQUENCE_HEADER):
    /// a worker trusts a scheduling at that sequence that is still the run's latest event to be
    /// unsettled, which an event read back from the log does not vouch for (it may be a copy
    /// stored again into a run that has ended since).
    pub async fn dispatch(
        &self,
        envelope: &Envelope,
        stored_at: Option<u64>,
        provider: &str,
    ) -> Result<(), PublishError> {
        let subject = cadre_proto::subjects::dispatched_steps(provider, &envelope.meta.tenant);
        let mut copy = message(envelope);
        if let Some(sequence) = stored_at {
            copy = copy.header(
                cadre_proto::streams::LOG_SEQUENCE_HEADER,
                sequence.to_string().as_str(),
            );
        }
        self.0.js.send_publish(subject, copy).await?.await?;
        Ok(())
    }

    /// Hands a step to the agent workers again at `at`: a message schedule on
    /// `schedule_subject` (in the workers' queue, matched by no consumer) that the server
    /// publishes to `target` when due, with `payload` and `headers` (which it copies).
    /// `message_id` makes a repeated call one schedule.
    pub async fn dispatch_later(
        &self,
        schedule_subject: String,
        target: String,
        at: DateTime<Utc>,
        headers: &[(&str, String)],
        payload: Bytes,
        message_id: &str,
    ) -> Result<(), PublishError> {
        let mut map = HeaderMap::new();
        map.insert("Content-Type", CONTENT_TYPE);
        for (name, value) in headers {
            map.insert(*name, value.as_str());
        }
        map.insert(header::NATS_SCHEDULE, cadre_proto::timers::at(at).as_str());
        map.insert(header::NATS_SCHEDULE_TARGET, target.as_str());
        crate::telemetry::inject(&mut map);
        let message = jetstream::message::PublishMessage::build()
            .headers(map)
            .message_id(message_id)
            .payload(payload);
        self.0
            .js
            .send_publish(schedule_subject, message)
            .await?
            .await?;
        Ok(())
    }

    /// Appends one event and waits until JetStream has stored it.
    pub async fn publish(
        &self,
        envelope: &Envelope,
        append: Append,
    ) -> Result<jetstream::publish::PublishAck, PublishError> {
        let ack = self.send(envelope, &append).await?;
        ack.await.map_err(|error| classify(error, &append))
    }

    /// Appends `envelopes` in order after the message at `expected` on `filter`, each expecting
    /// the one before it; returns each one's sequence, in order (not consecutive: other
    /// subjects' events may land in between). On a conflict, the events before it are stored
    /// and the rest are not: the caller re-reads and decides again.
    pub async fn append_after(
        &self,
        envelopes: &[Envelope],
        filter: &str,
        expected: u64,
    ) -> Result<Vec<u64>, PublishError> {
        let mut sequences = Vec::with_capacity(envelopes.len());
        let mut last = expected;
        for envelope in envelopes {
            let append = Append::ExpectLast {
                filter: filter.to_owned(),
                sequence: last,
            };
            last = self.publish(envelope, append).await?.sequence;
            sequences.push(last);
        }
        Ok(sequences)
    }

    /// Appends `envelopes` as one JetStream atomic batch (ADR-50): all stored, at consecutive
    /// sequences, or none; the first expects the last message on `filter` to be at `expected`,
    /// so no other writer came in between. Returns the last one's sequence. One round trip
    /// however many events: the group commit of many commands on one aggregate.
    ///
    /// Atomic batches take no `Nats-Msg-Id`: a retried batch is refused by its expectation
    /// instead (a [`PublishError::Conflict`]: the caller reloads and finds its events stored).
    /// One event is appended as usual (with its `Nats-Msg-Id`, no batch). At most
    /// [`MAX_BATCH`] events; an event over the log's largest is refused before anything is
    /// sent (the kind [`is_too_large`] recognises). Event `i` carries the trace context of
    /// `spans[i]` (each event of a group commit its own request's), or the current span's.
    pub async fn append_batch_after(
        &self,
        envelopes: &[Envelope],
        spans: &[tracing::Span],
        filter: &str,
        expected: u64,
    ) -> Result<u64, PublishError> {
        use tracing::Instrument;
        let span_of = |index: usize| {
            spans
                .get(index)
                .cloned()
                .unwrap_or_else(tracing::Span::current)
        };
        if envelopes.len() <= 1 {
            return self
                .append_after(envelopes, filter, expected)
                .instrument(span_of(0))
                .await
                .map(|sequences| sequences.last().copied().unwrap_or(expected));
        }
        let payloads: Vec<Bytes> = envelopes
            .iter()
            .map(|envelope| Bytes::from(envelope.encode()))
            .collect();
        if payloads
            .iter()
            .any(|payload| payload.len() > streams::MAX_EVENT_BYTES as usize)
        {
            return Err(PublishError::Nats(context::PublishError::new(
                context::PublishErrorKind::MaxPayloadExceeded,
            )));
        }
        // The server keeps few batches open per stream: wait for a turn rather than be refused.
        let _turn = self.0.batches.acquire().await.map_err(|error| {
            context::PublishError::with_source(context::PublishErrorKind::Other, error)
        })?;
        let append = Append::ExpectLast {
            filter: filter.to_owned(),
            sequence: expected,
        };
        let batch = uuid::Uuid::now_v7().simple().to_string();
        let last = envelopes.len();
        for (index, (envelope, payload)) in envelopes.iter().zip(payloads).enumerate() {
            let mut headers = HeaderMap::new();
            headers.insert("Content-Type", CONTENT_TYPE);
            span_of(index).in_scope(|| crate::telemetry::inject(&mut headers));
            headers.insert("Nats-Batch-Id", batch.as_str());
            headers.insert("Nats-Batch-Sequence", (index + 1).to_string().as_str());
            if index == 0 {
                headers.insert(
                    header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                    expected.to_string().as_str(),
                );
                headers.insert(EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT, filter);
            }
            if index + 1 < last {
                // Held by the server until the commit, which answers for the whole batch.
                self.0
                    .js
                    .client()
                    .publish_with_headers(envelope.nats_subject(), headers, payload)
                    .await
                    .map_err(|error| {
                        let kind = match error.kind() {
                            async_nats::client::PublishErrorKind::MaxPayloadExceeded => {
                                context::PublishErrorKind::MaxPayloadExceeded
                            }
                            _ => context::PublishErrorKind::Other,
                        };
                        context::PublishError::with_source(kind, error)
                    })?;
                continue;
            }
            headers.insert("Nats-Batch-Commit", "1");
            let commit = jetstream::message::PublishMessage::build()
                .headers(headers)
                .payload(payload);
            let ack = self
                .0
                .js
                .send_publish(envelope.nats_subject(), commit)
                .await
                .map_err(|error| classify(error, &append))?;
            return Ok(ack
                .await
                .map_err(|error| classify(error, &append))?
                .sequence);
        }
        Ok(expected)
    }

    /// Appends events without expectations, all in flight at once, and waits until every one is
    /// stored. They are stored in the order given.
    pub async fn publish_all(
        &self,
        envelopes: &[Envelope],
    ) -> Result<Vec<jetstream::publish::PublishAck>, PublishError> {
        let mut pending = Vec::with_capacity(envelopes.len());
        for envelope in envelopes {
            pending.push(self.send(envelope, &Append::Any).await?);
        }
        let mut acks = Vec::with_capacity(pending.len());
        for ack in pending {
            acks.push(ack.await?);
        }
        Ok(acks)
    }

    async fn send(
        &self,
        envelope: &Envelope,
        append: &Append,
    ) -> Result<context::PublishAckFuture, PublishError> {
        let mut publish = message(envelope);
        if let Append::ExpectLast { filter, sequence } = append {
            publish = publish
                .expected_last_subject_sequence(*sequence)
                .header(EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT, filter.as_str());
        }
        self.0
            .js
            .send_publish(envelope.nats_subject(), publish)
            .await
            .map_err(|error| classify(error, append))
    }

    /// The last event stored on `filter` (wildcards allowed), if any, as the stream's leader
    /// has it. With a single replica that is a direct get; otherwise the leader's API answers,
    /// wrapping the message in JSON and base64 (measured on one machine: reading through the
    /// API cost 6% of the pipeline's CPU time and 7% of its steps per second).
    pub async fn last_event(&self, filter: &str) -> Result<Option<Stored>, ReadError> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        if self.0.single_replica {
            return self.peek_last_event(filter).await;
        }
        match self.0.stream.get_last_raw_message_by_subject(filter).await {
            Ok(message) => decode_stored(message.sequence, &message.payload).map(Some),
            Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(error) => Err(ReadError::Nats(Box::new(error))),
        }
    }

    /// [`EventBus::last_event`] answered by any replica of the stream, without the leader's
    /// JSON and base64 wrapping: much cheaper, but a replica may lag the leader by the last few
    /// appends. Only for checks that a stale answer cannot make wrong, just slower.
    pub async fn peek_last_event(&self, filter: &str) -> Result<Option<Stored>, ReadError> {
        use async_nats::jetstream::stream::DirectGetErrorKind;
        match self.0.stream.direct_get_last_for_subject(filter).await {
            Ok(message) => decode_stored(message.sequence, &message.payload).map(Some),
            Err(error) if error.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(error) => Err(ReadError::Nats(Box::new(error))),
        }
    }

    /// The log sequence and event id of the last message stored on `filter`, answered as
    /// [`EventBus::peek_last_event`] is, from the message's `Nats-Msg-Id` header without
    /// decoding the event: for a check of which event is the latest, not of what it says. The
    /// id is `None` for a message stored without that header (an atomic batch's).
    pub async fn peek_last_id(
        &self,
        filter: &str,
    ) -> Result<Option<(u64, Option<String>)>, NatsError> {
        use async_nats::jetstream::stream::DirectGetErrorKind;
        match self.0.stream.direct_get_last_for_subject(filter).await {
            Ok(message) => {
                let id = message
                    .headers
                    .get(header::NATS_MESSAGE_ID)
                    .map(|id| id.as_str().to_owned());
                Ok(Some((message.sequence, id)))
            }
            Err(error) if error.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(error) => Err(Box::new(error)),
        }
    }

    /// Whether `envelope`, stored at `sequence`, is a copy of an older event stored again:
    /// re-published with its `Nats-Msg-Id` after the duplicate window had forgotten it, so
    /// JetStream kept it twice. Exact when the event's subject is its own (an execution's
    /// start): the original is then the first message there. A copy of a later event on a
    /// shared subject (an agent's second registration) is not recognised. Any replica may
    /// answer: one that lags lacks only the newest messages, never an original older than its
    /// copy.
    pub async fn is_copy(&self, sequence: u64, envelope: &Envelope) -> Result<bool, ReadError> {
        use async_nats::jetstream::stream::DirectGetErrorKind;
        let first = self
            .0
            .stream
            .direct_get_next_for_subject(envelope.nats_subject(), Some(1))
            .await;
        match first {
            Ok(first) if first.sequence < sequence => {
                let first = decode_stored(first.sequence, &first.payload);
                Ok(first.is_ok_and(|first| first.envelope.meta.id == envelope.meta.id))
            }
            Ok(_) => Ok(false),
            Err(error) if error.kind() == DirectGetErrorKind::NotFound => Ok(false),
            Err(error) => Err(ReadError::Nats(Box::new(error))),
        }
    }

    /// Every event stored on `filter`, in order, as of the moment of the call.
    pub async fn read_all(&self, filter: &str) -> Result<Vec<Stored>, ReadError> {
        Ok(self.read_history(filter).await?.events)
    }

    /// Every event stored on `filter`, in order, and the sequence of the last message there.
    /// A message this build cannot decode (terminated by the consumers, recorded by the
    /// projector) is skipped with a warning: it must not make the events around it unreadable.
    pub async fn read_history(&self, filter: &str) -> Result<History, ReadError> {
        let nats = |e: NatsError| ReadError::Nats(e);
        let consumer = self
            .0
            .stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: filter.to_owned(),
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| nats(Box::new(e)))?;
        let mut history = History::default();
        let pending = consumer.cached_info().num_pending;
        if pending == 0 {
            return Ok(history);
        }
        let mut messages = consumer.messages().await.map_err(|e| nats(Box::new(e)))?;
        while let Some(message) = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .map_err(|e| nats(Box::new(e)))?
        {
            let message = message.map_err(|e| nats(Box::new(e)))?;
            let info = message.info().map_err(&nats)?;
            let (sequence, remaining) = (info.stream_sequence, info.pending);
            history.last_sequence = sequence;
            match decode_stored(sequence, &message.payload) {
                Ok(stored) => history.events.push(stored),
                Err(error) => tracing::warn!(%error, filter, "skipping an undecodable message"),
            }
            if remaining == 0 {
                break;
            }
        }
        Ok(history)
    }

    /// [`EventBus::last_event`] that looks past an undecodable last message to the last event
    /// before it; also returns the sequence of the last message (decodable or not), which an
    /// append must expect.
    pub async fn last_decodable_event(
        &self,
        filter: &str,
    ) -> Result<(Option<Stored>, u64), ReadError> {
        match self.last_event(filter).await {
            Ok(stored) => {
                let sequence = stored.as_ref().map_or(0, |s| s.sequence);
                Ok((stored, sequence))
            }
            Err(ReadError::Decode { .. }) => {
                let mut history = self.read_history(filter).await?;
                Ok((history.events.pop(), history.last_sequence))
            }
            Err(error) => Err(error),
        }
    }
}

/// The subjects of `stream` matching `filter` that hold a message now (for a KV bucket's
/// stream: its keys under a prefix): one stream-info request, no consumer.
pub async fn subjects_under(
    stream: &stream::Stream,
    filter: &str,
) -> Result<Vec<String>, NatsError> {
    use futures::TryStreamExt;
    let subjects: Vec<(String, usize)> = stream
        .info_with_subjects(filter)
        .await?
        .try_collect()
        .await?;
    Ok(subjects
        .into_iter()
        .filter(|(_, count)| *count > 0)
        .map(|(subject, _)| subject)
        .collect())
}

/// An event as a JetStream message: JSON CloudEvent, its id as `Nats-Msg-Id`, trace context.
fn message(envelope: &Envelope) -> jetstream::message::PublishMessage {
    let mut headers = HeaderMap::new();
    headers.insert("Content-Type", CONTENT_TYPE);
    crate::telemetry::inject(&mut headers);
    jetstream::message::PublishMessage::build()
        .headers(headers)
        .message_id(envelope.meta.id.to_string())
        .payload(Bytes::from(envelope.encode()))
}

fn decode_stored(sequence: u64, payload: &[u8]) -> Result<Stored, ReadError> {
    Envelope::decode(payload)
        .map(|envelope| Stored { sequence, envelope })
        .map_err(|error| ReadError::Decode { sequence, error })
}

fn classify(error: context::PublishError, append: &Append) -> PublishError {
    match append {
        Append::ExpectLast { filter, sequence } if refuses_expectation(&error) => {
            PublishError::Conflict {
                filter: filter.clone(),
                expected: *sequence,
            }
        }
        _ => PublishError::Nats(error),
    }
}

/// Whether JetStream refused an append for its expected last sequence: another message is last
/// on the filter (10071), or, on a cluster, another append expecting on the same filter is still
/// being replicated, so the server cannot check yet and refuses without naming a sequence
/// (10164). Either way the writer reads again and decides again.
fn refuses_expectation(error: &context::PublishError) -> bool {
    error.kind() == context::PublishErrorKind::WrongLastSequence
        || refused_with(
            error,
            jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT,
        )
}

/// Whether JetStream answered the publish with the API error `code`.
fn refused_with(error: &context::PublishError, code: jetstream::ErrorCode) -> bool {
    std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<jetstream::Error>())
        .is_some_and(|e| e.error_code() == code)
}

/// Where a message a stream copied from another (a stream source) was first stored: the
/// sequence in the source stream, read from the `Nats-Stream-Source` header the server adds
/// (`<source stream> <sequence> ...`). `None` for a message that was not copied.
pub fn source_sequence(message: &jetstream::Message) -> Option<u64> {
    let header = message.headers.as_ref()?.get("Nats-Stream-Source")?;
    header.as_str().split_whitespace().nth(1)?.parse().ok()
}

/// Stops redelivery of a message that can never be processed, recording why: the reason goes
/// to the log here and, on NATS 2.11+, into the server's `MSG_TERMINATED` advisory.
pub async fn terminate(message: &jetstream::Message, reason: &str) {
    let (sequence, consumer) = message
        .info()
        .map(|i| (i.stream_sequence, i.consumer.to_owned()))
        .unwrap_or_default();
    tracing::warn!(
        subject = %message.subject,
        sequence,
        consumer,
        reason,
        "terminating a message that cannot be processed"
    );
    if let Some(reply) = &message.reply {
        let body = Bytes::from(format!("+TERM {reason}"));
        if let Err(error) = message.context.client().publish(reply.clone(), body).await {
            tracing::warn!(%error, sequence, "could not send the terminate acknowledgement");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{
        Append, PublishError as AppendError, check_server_version, classify, is_too_large,
    };
    use async_nats::jetstream::{self, context::PublishError, context::PublishErrorKind};

    fn stream_error(code: u64, description: &str) -> PublishError {
        let error: jetstream::Error = serde_json::from_value(serde_json::json!({
            "code": 400, "err_code": code, "description": description
        }))
        .unwrap();
        PublishError::with_source(PublishErrorKind::Other, error)
    }

    #[test]
    fn every_refusal_of_an_expected_sequence_is_a_conflict_to_decide_again() {
        let expect = Append::ExpectLast {
            filter: "cadre.events.t.workflow.w.execution.e.>".to_owned(),
            sequence: 7,
        };
        let refusals = [
            // Another message is last on the filter (async-nats names the kind).
            PublishError::new(PublishErrorKind::WrongLastSequence),
            // A cluster still replicating another append that expects on the same filter.
            stream_error(10164, "wrong last sequence"),
        ];
        for error in refusals {
            let shown = error.to_string();
            assert!(
                matches!(
                    classify(error, &expect),
                    AppendError::Conflict { expected: 7, .. }
                ),
                "{shown}"
            );
        }
        let others = [
            PublishError::new(PublishErrorKind::TimedOut),
            stream_error(10008, "JetStream system temporarily unavailable"),
        ];
        for error in others {
            let shown = error.to_string();
            assert!(
                matches!(classify(error, &expect), AppendError::Nats(_)),
                "{shown}"
            );
        }
        // Without an expectation there is nothing to conflict with.
        assert!(matches!(
            classify(stream_error(10164, "wrong last sequence"), &Append::Any),
            AppendError::Nats(_)
        ));
    }

    #[test]
    fn a_message_too_large_is_told_apart_from_an_outage() {
        let refusals = [
            PublishError::with_source(
                PublishErrorKind::MaxPayloadExceeded,
                "Payload size limit of 1048576 exceeded by message size of 1200000",
            ),
            stream_error(10054, "message size exceeds maximum allowed"),
            PublishError::with_source(PublishErrorKind::Other, "nats: Maximum Payload Violation"),
        ];
        for error in &refusals {
            assert!(is_too_large(error), "{error}");
        }
        let outages = [
            PublishError::new(PublishErrorKind::TimedOut),
            PublishError::new(PublishErrorKind::StreamNotFound),
            stream_error(10008, "JetStream system temporarily unavailable"),
        ];
        for error in &outages {
            assert!(!is_too_large(error), "{error}");
        }
    }

    #[test]
    fn refuses_servers_without_the_features_cadre_needs() {
        for ok in ["2.14.0", "2.15.1", "3.0.0", "v2.14.3-beta"] {
            assert!(check_server_version(ok).is_ok(), "{ok}");
        }
        for old in [
            "2.9.10", "2.10.22", "2.11.9", "2.12.4", "2.13.0", "garbage", "",
        ] {
            let error = check_server_version(old).unwrap_err().to_string();
            assert!(error.contains("too old"), "{old}: {error}");
        }
    }
}

//! Reading the event stream in batches and handing each batch to the store.
//!
//! Postgres, not JetStream, knows how far each projection got: a session reads the checkpoints
//! of the projections this replica holds, reads the log once from the lowest of them through an
//! ephemeral consumer without acks (the checkpoints committed with the rows record progress),
//! and writes each batch for every projection held in one transaction. A replica that holds
//! every projection therefore does the work of a single projection; replicas that share them
//! each read the log once and write their own read models. A message lost in flight (a
//! reconnect drops what was on the wire, and nothing redelivers it) ends the session, and the
//! next one starts again from the checkpoints: it shows as a gap before the next message, or,
//! when none follows, as a consumer that delivered more than was received.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{self, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::{Message, stream};
use cadre_proto::{streams, subjects};
use cadre_runtime::bus::{EventBus, NatsError};
use cadre_runtime::telemetry;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::incoming::Incoming;
use crate::projection::Projection;
use crate::store::{Lease, STANDBY_POLL, retry_backoff, sleep_or_shutdown};

/// How often the projector checks, while no events arrive, that its Postgres session (and so
/// its locks) is alive and that the server has delivered nothing it did not receive.
const IDLE_CHECK: Duration = Duration::from_secs(5);

/// How long the server keeps a feed's consumer once nobody pulls from it (its replica gone):
/// well beyond a pull's expiry, so a live but idle feed keeps it.
const FEED_INACTIVE_THRESHOLD: Duration = Duration::from_secs(120);
/// How long a pull waits for messages before the client asks again, and how often the server
/// says a waiting pull is still alive (so a feed whose server went away notices).
const FEED_PULL_EXPIRY: Duration = Duration::from_secs(10);
const FEED_HEARTBEAT: Duration = Duration::from_secs(5);

/// What a projector has done so far.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Progress {
    /// Messages applied (events and rejected messages), copies and skips excluded.
    pub messages: u64,
    pub rejected: u64,
    /// The lowest checkpoint of the projections held.
    pub checkpoint: u64,
}

#[derive(Clone)]
pub(crate) struct Projector {
    pub bus: EventBus,
    pub database_url: String,
    /// Who writes: this replica's name, or `rebuild`.
    pub writer: String,
    pub max_batch: usize,
    /// Stop once the checkpoint reaches this sequence (a rebuild); `None` runs until shutdown.
    pub until: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    /// The session holding the locks failed: another replica may be writing by now.
    #[error("Postgres session lost: {0}")]
    Lease(#[from] sqlx::Error),
    #[error("NATS: {0}")]
    Nats(NatsError),
}

fn nats(error: impl Into<NatsError>) -> SessionError {
    SessionError::Nats(error.into())
}

/// Why a session ended without an error.
enum End {
    /// Shutdown, or the rebuild target was reached.
    Stopped,
    /// The subscription cannot go on (a gap, a stream error, a message lost): resubscribe from
    /// the lowest checkpoint, after a backoff.
    Resubscribe,
    /// The projections wanted or held changed: resubscribe at once.
    Reassigned,
}

impl Projector {
    /// Writes the projections `wanted` names, those of them no other replica holds, until
    /// shutdown or `until`: resubscribing after stream trouble or when the projections held
    /// change, asking every [`STANDBY_POLL`] for those wanted but held elsewhere, and
    /// connecting again when the Postgres session is lost. `lease` is a session already
    /// connected, if any.
    pub async fn run(
        &self,
        mut lease: Option<Lease>,
        mut wanted: watch::Receiver<BTreeSet<Projection>>,
        shutdown: &CancellationToken,
    ) -> Progress {
        let mut progress = Progress::default();
        let mut backoff = retry_backoff();
        loop {
            let held = match &mut lease {
                Some(held) => held,
                None => match Lease::connect(&self.database_url, &self.writer, shutdown).await {
                    Some(connected) => lease.insert(connected),
                    None => return progress,
                },
            };
            let wants = wanted.borrow_and_update().clone();
            if let Err(error) = held.hold(&wants).await {
                tracing::warn!(%error, "lost the Postgres session that held the projection locks");
                lease = None;
                continue;
            }
            // A rebuild writes every projection or none: one that reconnected while a projector
            // holds some waits for them rather than finish the others alone.
            let partial = self.until.is_some() && held.projections() != wants;
            if held.is_empty() || partial {
                // A standby: ask again for the projections wanted, or wait to be given some.
                tokio::select! {
                    () = shutdown.cancelled() => return progress,
                    changed = wanted.changed() => if changed.is_err() {
                        return progress;
                    },
                    () = tokio::time::sleep(STANDBY_POLL) => {}
                }
                continue;
            }
            let before = progress.checkpoint;
            let outcome = self
                .session(held, &mut wanted, shutdown, &mut progress)
                .await;
            if progress.checkpoint != before {
                backoff = retry_backoff();
            }
            match outcome {
                Ok(End::Stopped) => return progress,
                Ok(End::Reassigned) => continue,
                Ok(End::Resubscribe) => {}
                Err(SessionError::Nats(error)) => {
                    tracing::warn!(%error, "event stream unavailable; retrying");
                }
                Err(SessionError::Lease(error)) => {
                    tracing::warn!(%error, "lost the Postgres session that held the projection locks");
                    lease = None;
                    continue;
                }
            }
            let delay = backoff.next().unwrap_or(IDLE_CHECK);
            if sleep_or_shutdown(delay, shutdown).await {
                return progress;
            }
        }
    }

    fn reached(&self, checkpoint: u64) -> bool {
        self.until.is_some_and(|target| checkpoint >= target)
    }

    async fn session(
        &self,
        lease: &mut Lease,
        wanted: &mut watch::Receiver<BTreeSet<Projection>>,
        shutdown: &CancellationToken,
        progress: &mut Progress,
    ) -> Result<End, SessionError> {
        let checkpoint = lease.checkpoint();
        progress.checkpoint = checkpoint;
        if self.reached(checkpoint) {
            return Ok(End::Stopped);
        }
        let stream = self.bus.stream();
        let mut consumer = open_feed(stream, checkpoint).await.map_err(nats)?;
        let ended = self
            .follow(&mut consumer, lease, wanted, shutdown, progress)
            .await;
        // Gone after its inactive threshold anyway; at once is tidier.
        let name = consumer.cached_info().name.clone();
        let _ = stream.delete_consumer(&name).await;
        ended
    }

    /// Projects what `consumer` delivers until the session must end.
    async fn follow(
        &self,
        consumer: &mut PullConsumer,
        lease: &mut Lease,
        wanted: &mut watch::Receiver<BTreeSet<Projection>>,
        shutdown: &CancellationToken,
        progress: &mut Progress,
    ) -> Result<End, SessionError> {
        let stream = self.bus.stream();
        let checkpoint = lease.checkpoint();
        let messages = consumer
            .stream()
            .max_messages_per_batch(self.max_batch)
            .expires(FEED_PULL_EXPIRY)
            .heartbeat(FEED_HEARTBEAT)
            .messages()
            .await
            .map_err(nats)?;
        // Whatever has arrived while the previous batch was written forms the next batch.
        let mut chunks = messages.ready_chunks(self.max_batch);
        let mut cursor = Cursor { last: checkpoint };
        let mut idle_check =
            tokio::time::interval_at(tokio::time::Instant::now() + IDLE_CHECK, IDLE_CHECK);
        // Whether a chunk arrived since the last idle check, and whether that check found the
        // server ahead of what arrived (messages may be in the client's buffer for a moment:
        // only a second quiet check in a row says they are lost).
        let (mut received, mut behind) = (false, false);
        let mut standby_poll = tokio::time::interval(STANDBY_POLL);
        let projections = lease.projections();
        tracing::info!(?projections, checkpoint, "projecting events");
        loop {
            let wants = wanted.borrow().clone();
            let missing = lease.projections().len() < wants.len();
            let chunk = tokio::select! {
                () = shutdown.cancelled() => return Ok(End::Stopped),
                changed = wanted.changed() => {
                    return Ok(if changed.is_ok() { End::Reassigned } else { End::Stopped });
                }
                _ = idle_check.tick() => {
                    lease.ping().await?;
                    // Without acks nothing is redelivered: a message the server handed out but
                    // that never arrived (a connection lost with it in flight) is noticed by
                    // the gap it leaves before the next one, or, when none follows, here.
                    behind = if std::mem::take(&mut received) {
                        false
                    } else {
                        let delivered = consumer.info().await.map_err(nats)?.delivered.stream_sequence;
                        if delivered > cursor.last && behind {
                            tracing::warn!(delivered, received = cursor.last, "deliveries went missing");
                            return Ok(End::Resubscribe);
                        }
                        delivered > cursor.last
                    };
                    continue;
                }
                _ = standby_poll.tick(), if missing => {
                    // A projection wanted is held elsewhere: take it if it is free now.
                    if lease.hold(&wants).await? {
                        return Ok(End::Reassigned);
                    }
                    continue;
                }
                // Unconstrained: tokio's cooperative budget would otherwise cut every chunk at
                // about 128 messages however many are waiting.
                chunk = tokio::task::unconstrained(chunks.next()) => chunk,
            };
            let Some(chunk) = chunk else {
                tracing::warn!("the event subscription ended; resubscribing");
                return Ok(End::Resubscribe);
            };
            received = true;
            let (batch, interrupted) = admit(chunk, &mut cursor, stream).await.map_err(nats)?;
            if let Some(end) = self
                .commit(lease, batch, wanted, shutdown, progress)
                .await?
            {
                return Ok(end);
            }
            if self.reached(progress.checkpoint) {
                return Ok(End::Stopped);
            }
            if interrupted {
                return Ok(End::Resubscribe);
            }
        }
    }

    /// Writes the batch, retrying the same batch while the session lives. Returns how the
    /// session must end if something interrupted the retries: shutdown, or a change of the
    /// projections wanted (a batch that keeps failing must not keep them from their new writer).
    async fn commit(
        &self,
        lease: &mut Lease,
        batch: Batch,
        wanted: &mut watch::Receiver<BTreeSet<Projection>>,
        shutdown: &CancellationToken,
        progress: &mut Progress,
    ) -> Result<Option<End>, SessionError> {
        let (Some(first), Some(last)) = (batch.incoming.first(), batch.incoming.last()) else {
            return Ok(None);
        };
        let (first, last) = (first.sequence, last.sequence);
        let span = tracing::info_span!(
            "project_batch",
            first,
            last,
            messages = batch.incoming.len()
        );
        for event_span in &batch.spans {
            span.follows_from(event_span);
        }
        let mut backoff = retry_backoff();
        let started = Instant::now();
        let checkpoint = loop {
            match lease
                .project(&batch.incoming)
                .instrument(span.clone())
                .await
            {
                Ok(checkpoint) => {
                    tracing::debug!(first, last, messages = batch.incoming.len(), elapsed = ?started.elapsed(), "batch committed");
                    break checkpoint;
                }
                Err(error) => {
                    if lease.ping().await.is_err() {
                        return Err(SessionError::Lease(error));
                    }
                    let delay = backoff.next().unwrap_or(IDLE_CHECK);
                    tracing::warn!(%error, first, last, ?delay, "writing a batch failed; retrying it");
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(Some(End::Stopped)),
                        changed = wanted.changed() => {
                            return Ok(Some(if changed.is_ok() { End::Reassigned } else { End::Stopped }));
                        }
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        };
        // Every message that is not a readable event is now a row of rejected_events.
        if lease.projections().iter().any(|p| p.records_rejections()) {
            for incoming in &batch.incoming {
                if let Err(unreadable) = &incoming.content {
                    progress.rejected += 1;
                    tracing::warn!(
                        sequence = incoming.sequence,
                        subject = %incoming.subject,
                        reason = %unreadable.reason,
                        "recorded a message that is not a readable event in rejected_events"
                    );
                }
            }
        }
        progress.messages += batch.incoming.len() as u64;
        progress.checkpoint = checkpoint;
        Ok(None)
    }
}

/// Every event after `checkpoint`, in stream order, through an ephemeral consumer: nothing is
/// left on the server once this replica stops, and nothing is acked, since the checkpoints
/// committed with the rows are what records progress.
async fn open_feed(stream: &stream::Stream, checkpoint: u64) -> Result<PullConsumer, NatsError> {
    // Left by releases that kept one durable consumer for the projector; deleted at every
    // session, since a projector of such a release may recreate it while an upgrade rolls out.
    let _ = stream
        .delete_consumer(streams::RETIRED_PROJECTOR_CONSUMER)
        .await;
    Ok(stream
        .create_consumer(pull::Config {
            description: Some("projector: folds events into the Postgres read models".to_owned()),
            filter_subject: subjects::ALL_EVENTS.to_owned(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: checkpoint + 1,
            },
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: FEED_INACTIVE_THRESHOLD,
            num_replicas: 1,
            memory_storage: true,
            ..Default::default()
        })
        .await?)
}

/// Messages of one chunk to write together.
#[derive(Default)]
struct Batch {
    incoming: Vec<Incoming>,
    /// One span per message, a child of its publisher's trace; closed after the commit.
    spans: Vec<tracing::Span>,
}

/// The last stream sequence admitted: every message up to it is applied or in the batch.
struct Cursor {
    last: u64,
}

enum Admission {
    Apply,
    Skip,
    Gap,
}

impl Cursor {
    async fn admit(
        &mut self,
        sequence: u64,
        stream: &stream::Stream,
    ) -> Result<Admission, NatsError> {
        if sequence <= self.last {
            return Ok(Admission::Skip);
        }
        if sequence > self.last + 1 {
            // Sequences may only jump where the stream holds nothing; otherwise a delivery went
            // missing (a reconnect drops messages in flight) and nothing would redeliver it.
            let next = stream
                .get_first_raw_message_by_subject(subjects::ALL_EVENTS, self.last + 1)
                .await?;
            if next.sequence != sequence {
                tracing::warn!(
                    expected = self.last + 1,
                    got = sequence,
                    "a delivery went missing"
                );
                return Ok(Admission::Gap);
            }
        }
        self.last = sequence;
        Ok(Admission::Apply)
    }
}

type Delivery = Result<Message, pull::MessagesError>;

/// Sorts a chunk into the batch to write; true if the subscription must be renewed after it
/// (a gap or a stream error: later messages wait for the new subscription).
async fn admit(
    chunk: Vec<Delivery>,
    cursor: &mut Cursor,
    stream: &stream::Stream,
) -> Result<(Batch, bool), NatsError> {
    let mut batch = Batch::default();
    for delivery in chunk {
        let message = match delivery {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(%error, "event subscription failed; resubscribing");
                return Ok((batch, true));
            }
        };
        let (sequence, stored_at) = match message.info() {
            Ok(info) => {
                let nanos =
                    i64::try_from(info.published.unix_timestamp_nanos()).unwrap_or(i64::MAX);
                (
                    info.stream_sequence,
                    DateTime::<Utc>::from_timestamp_nanos(nanos),
                )
            }
            Err(error) => {
                tracing::warn!(%error, subject = %message.subject, "message without JetStream metadata");
                return Ok((batch, true));
            }
        };
        match cursor.admit(sequence, stream).await? {
            Admission::Apply => {
                let span =
                    tracing::info_span!("project_event", sequence, subject = %message.subject);
                telemetry::extract(message.headers.as_ref(), &span);
                let incoming = span.in_scope(|| {
                    Incoming::decode(
                        sequence,
                        message.subject.as_str(),
                        stored_at,
                        &message.payload,
                    )
                });
                batch.incoming.push(incoming);
                batch.spans.push(span);
            }
            Admission::Skip => {}
            Admission::Gap => return Ok((batch, true)),
        }
    }
    Ok((batch, false))
}

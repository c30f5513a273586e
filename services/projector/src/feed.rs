//! Reading the event stream in batches and handing each batch to the store.
//!
//! Postgres, not JetStream, knows how far the projection got: each session starts from the
//! committed checkpoint, skips what is at or below it, and acks a batch only after its commit.
//! The consumer's `AckPolicy::All` makes one ack cover the batch, so a message must never be
//! acked past one that was not applied: a gap in delivered sequences ends the session and the
//! consumer is recreated from the checkpoint.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::{Message, stream};
use cadre_proto::{streams, subjects};
use cadre_runtime::bus::{EventBus, NatsError};
use cadre_runtime::telemetry;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::incoming::Incoming;
use crate::projection::Projection;
use crate::store::{Lease, retry_backoff, sleep_or_shutdown};

/// How often the active projector checks that its Postgres session, and so its lock, is alive
/// while no events arrive.
const LEASE_CHECK: Duration = Duration::from_secs(5);

/// A batch at least this large means events arrive faster than the projection writes them:
/// its next commit then waits for the commit interval to have passed since this one started,
/// so that batches grow and Postgres commits (and rewrites busy rows) once per interval rather
/// than once per few events. Smaller batches (light load) are written at once, and so is the
/// batch after a full one (`max_batch`): a backlog, a catch-up or a replay cannot grow its
/// batches by waiting, only slow down.
const LOADED_BATCH: usize = 64;

/// The longest commit interval taken: longer would keep the feed from pulling for so long that
/// NATS may count the subscription idle.
pub(crate) const MAX_COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// Decoded messages shared by the projections of one process, by stream sequence: they read
/// the same messages within moments of each other, and each message is decoded once while it
/// is here. Bounded by the messages' size, and forgotten once none has read them for a while.
pub(crate) type Decoded = moka::future::Cache<u64, Arc<Incoming>>;

pub(crate) fn decoded_cache() -> Decoded {
    moka::future::Cache::builder()
        .weigher(|_, incoming: &Arc<Incoming>| u32::try_from(incoming.bytes).unwrap_or(u32::MAX))
        .max_capacity(64 * 1024 * 1024)
        .time_to_idle(Duration::from_secs(10))
        // Each message is read a few times, close together, and never again: the default
        // policy (TinyLFU) would refuse newcomers once the cache is full of well-read ones.
        .eviction_policy(moka::policy::EvictionPolicy::lru())
        .build()
}

/// What a projector has done so far.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Progress {
    /// Messages applied (events and rejected messages), copies and skips excluded.
    pub messages: u64,
    pub rejected: u64,
    pub checkpoint: u64,
}

#[derive(Clone)]
pub(crate) struct Projector {
    pub bus: EventBus,
    pub database_url: String,
    /// Who writes: this replica's name, or `rebuild`.
    pub writer: String,
    pub max_batch: usize,
    /// Under load, the least time from one commit's start to the next's (see
    /// [`LOADED_BATCH`]).
    pub commit_interval: Duration,
    /// Messages decoded by any projection of this process (see [`decoded_cache`]).
    pub decoded: Decoded,
    /// Stop once the checkpoint reaches this sequence (a rebuild); `None` runs until shutdown.
    pub until: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    /// The session holding the lock failed: another replica may be active by now.
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
    /// The subscription cannot go on (a gap, a stream error): resubscribe from the checkpoint.
    Resubscribe,
}

impl Projector {
    /// Projects until shutdown or `until`, resubscribing after stream trouble and taking the
    /// lock again (as a standby if need be) when its Postgres session is lost.
    pub async fn run(&self, mut lease: Lease, shutdown: &CancellationToken) -> Progress {
        let mut progress = Progress::default();
        let mut backoff = retry_backoff();
        loop {
            let before = progress.checkpoint;
            let outcome = self.session(&mut lease, shutdown, &mut progress).await;
            if progress.checkpoint != before {
                backoff = retry_backoff();
            }
            match outcome {
                Ok(End::Stopped) => return progress,
                Ok(End::Resubscribe) => {}
                Err(SessionError::Nats(error)) => {
                    tracing::warn!(%error, "event stream unavailable; retrying");
                }
                Err(SessionError::Lease(error)) => {
                    tracing::warn!(%error, "lost the Postgres session that held the projector lock");
                    match Lease::acquire(
                        &self.database_url,
                        lease.projection(),
                        &self.writer,
                        shutdown,
                    )
                    .await
                    {
                        Some(again) => lease = again,
                        None => return progress,
                    }
                    continue;
                }
            }
            let delay = backoff.next().unwrap_or(LEASE_CHECK);
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
        shutdown: &CancellationToken,
        progress: &mut Progress,
    ) -> Result<End, SessionError> {
        let checkpoint = lease.checkpoint().await?;
        progress.checkpoint = checkpoint;
        if self.reached(checkpoint) {
            return Ok(End::Stopped);
        }
        let stream = self.bus.stream();
        let projection = lease.projection();
        let consumer = open_consumer(stream, projection, checkpoint)
            .await
            .map_err(nats)?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(self.max_batch)
            .messages()
            .await
            .map_err(nats)?;
        // Whatever has arrived while the previous batch was written forms the next batch.
        let mut chunks = messages.ready_chunks(self.max_batch);
        let mut cursor = Cursor { last: checkpoint };
        let mut lease_check = tokio::time::interval(LEASE_CHECK);
        tracing::info!(%projection, checkpoint, "projecting events");
        let mut next_commit = tokio::time::Instant::now();
        loop {
            // Unconstrained: tokio's cooperative budget would otherwise cut every chunk at
            // about 128 messages however many are waiting.
            let next_chunk = async {
                tokio::time::sleep_until(next_commit).await;
                tokio::task::unconstrained(chunks.next()).await
            };
            let chunk = tokio::select! {
                () = shutdown.cancelled() => return Ok(End::Stopped),
                _ = lease_check.tick() => {
                    lease.ping().await?;
                    continue;
                }
                chunk = next_chunk => chunk,
            };
            let Some(chunk) = chunk else {
                tracing::warn!("the event subscription ended; resubscribing");
                return Ok(End::Resubscribe);
            };
            let started = tokio::time::Instant::now();
            let full = chunk.len() >= self.max_batch;
            let (batch, interrupted) = admit(chunk, &mut cursor, stream, &self.decoded).await?;
            next_commit = if batch.incoming.len() >= LOADED_BATCH && !full {
                started + self.commit_interval.min(MAX_COMMIT_INTERVAL)
            } else {
                started
            };
            if !self.commit(lease, batch, shutdown, progress).await? {
                return Ok(End::Stopped);
            }
            if self.reached(progress.checkpoint) {
                return Ok(End::Stopped);
            }
            if interrupted {
                return Ok(End::Resubscribe);
            }
        }
    }

    /// Writes the batch (retrying the same batch while the session lives) and then acks it.
    /// False if shutdown interrupted the retries; the batch is then not acked.
    async fn commit(
        &self,
        lease: &mut Lease,
        batch: Batch,
        shutdown: &CancellationToken,
        progress: &mut Progress,
    ) -> Result<bool, SessionError> {
        if let (Some(first), Some(last)) = (batch.incoming.first(), batch.incoming.last()) {
            let (first, last) = (first.sequence, last.sequence);
            let projection = lease.projection();
            let span = tracing::info_span!(
                "project_batch",
                %projection,
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
                        tracing::debug!(%projection, first, last, messages = batch.incoming.len(), elapsed = ?started.elapsed(), "batch committed");
                        break checkpoint;
                    }
                    Err(error) => {
                        if lease.ping().await.is_err() {
                            return Err(SessionError::Lease(error));
                        }
                        let delay = backoff.next().unwrap_or(LEASE_CHECK);
                        tracing::warn!(%error, %projection, first, last, ?delay, "writing a batch failed; retrying it");
                        if sleep_or_shutdown(delay, shutdown).await {
                            return Ok(false);
                        }
                    }
                }
            };
            // Every message that is not a readable event is now a row of rejected_events.
            if projection.records_rejections() {
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
        }
        // Ack after commit: a crash in between replays the batch, which the checkpoint skips.
        if let Some(message) = batch.ack
            && let Err(error) = message.ack().await
        {
            tracing::warn!(%error, "ack failed; the batch will be redelivered and skipped");
        }
        Ok(true)
    }
}

/// Creates the projection's durable consumer at the checkpoint, or reuses it if it has not handed out
/// anything beyond the checkpoint. Otherwise its position is wrong for this database (restored
/// from a backup, or rebuilt), or messages past the checkpoint are out with a previous owner and
/// would only come back after the ack wait; either way it is recreated from the checkpoint.
async fn open_consumer(
    stream: &stream::Stream,
    projection: Projection,
    checkpoint: u64,
) -> Result<PullConsumer, NatsError> {
    // Left by a release that folded every read model through one consumer; deleted at every
    // session, since a projector of that release may recreate it while an upgrade rolls out.
    let _ = stream
        .delete_consumer(streams::RETIRED_PROJECTOR_CONSUMER)
        .await;
    let mut config = streams::projector_consumer(projection.name());
    let name = streams::projector_consumer_name(projection.name());
    config.deliver_policy = if checkpoint == 0 {
        DeliverPolicy::All
    } else {
        DeliverPolicy::ByStartSequence {
            start_sequence: checkpoint + 1,
        }
    };
    let consumer: PullConsumer = stream.get_or_create_consumer(&name, config.clone()).await?;
    let delivered = consumer.cached_info().delivered.stream_sequence;
    if delivered <= checkpoint {
        return Ok(consumer);
    }
    tracing::info!(
        %projection,
        checkpoint,
        delivered,
        "recreating the projection's consumer at the checkpoint"
    );
    stream.delete_consumer(&name).await?;
    Ok(stream.create_consumer::<pull::Config>(config).await?)
}

/// Messages of one chunk to write together, and the message whose ack covers them.
#[derive(Default)]
struct Batch {
    incoming: Vec<Arc<Incoming>>,
    /// One span per message, a child of its publisher's trace; closed after the commit.
    spans: Vec<tracing::Span>,
    ack: Option<Message>,
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
            // Already applied: a redelivery, or a replay of a batch committed but not acked.
            return Ok(Admission::Skip);
        }
        if sequence > self.last + 1 {
            // Sequences may only jump where the stream holds nothing; otherwise a delivery went
            // missing (a reconnect drops messages in flight) and acking past it would lose it.
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
    decoded: &Decoded,
) -> Result<(Batch, bool), SessionError> {
    let mut batch = Batch::default();
    let mut highest_skipped = 0;
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
        match cursor.admit(sequence, stream).await.map_err(nats)? {
            Admission::Apply => {
                let span =
                    tracing::info_span!("project_event", sequence, subject = %message.subject);
                telemetry::extract(message.headers.as_ref(), &span);
                let decode = async {
                    span.in_scope(|| {
                        Arc::new(Incoming::decode(
                            sequence,
                            message.subject.as_str(),
                            stored_at,
                            &message.payload,
                        ))
                    })
                };
                let mut incoming = decoded.get_with(sequence, decode).await;
                if incoming.subject != message.subject.as_str() || incoming.stored_at != stored_at {
                    // Another message at this sequence: the stream was recreated meanwhile.
                    incoming = Arc::new(Incoming::decode(
                        sequence,
                        message.subject.as_str(),
                        stored_at,
                        &message.payload,
                    ));
                    decoded.insert(sequence, incoming.clone()).await;
                }
                batch.incoming.push(incoming);
                batch.spans.push(span);
                batch.ack = Some(message);
            }
            Admission::Skip => {
                // Its ack only matters when nothing new comes with it: ack the highest one.
                if batch.incoming.is_empty() && sequence > highest_skipped {
                    highest_skipped = sequence;
                    batch.ack = Some(message);
                }
            }
            Admission::Gap => return Ok((batch, true)),
        }
    }
    Ok((batch, false))
}

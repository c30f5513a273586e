//! Pulling steps from a provider's queue only for slots that are free.
//!
//! A step message that JetStream delivers has 30 s (the queue's `ack_wait`) before it goes to
//! another worker. A client that pulls ahead of its free slots keeps messages in a buffer while
//! its running calls take their time: past that deadline the step is delivered again elsewhere,
//! and when a slot here frees the buffered copy runs too, so both call the LLM. Meanwhile a
//! worker with free slots could have run it at once. So, as Temporal's pollers reserve a task
//! slot before they poll, each queue here first reserves slots, then asks the server for at most
//! that many messages with one pull request at a time; a message is always ours to start.
//!
//! A queue with nothing to do still holds the slot its waiting request reserved. When another
//! of the worker's queues finds no free slot, an idle queue lends its slot back; a step that
//! then reaches the idle queue takes a slot if one is free, or goes straight back to the server
//! for another worker.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::consumer::pull::BatchConfig;
use async_nats::jetstream::{self, AckKind};
use async_nats::{StatusCode, Subject, Subscriber};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::worker::Worker;

/// The most steps one pull request asks for; the slots it reserves wait for those steps.
const PULL_BATCH: usize = 32;
/// How long one pull request waits for steps before the worker asks again, and how often the
/// server says a waiting request is still alive.
const PULL_EXPIRY: Duration = Duration::from_secs(5);
const PULL_HEARTBEAT: Duration = Duration::from_secs(2);
/// Silence after which a pull request is taken as lost (a server restarted or a leader moved
/// without a word): two missed heartbeats.
const PULL_SILENCE: Duration = Duration::from_secs(4);
/// Pause before asking again when the server could not take a pull request.
const PULL_RETRY: Duration = Duration::from_secs(1);

/// What the worker shares between its queues: slots, running steps, and when to stop.
pub(crate) struct Slots {
    pub worker: Arc<Worker>,
    pub free: Arc<Semaphore>,
    /// How many queues wait for a slot; each new waiter pings `wanted`.
    pub waiting: AtomicUsize,
    pub wanted: watch::Sender<()>,
    pub steps: TaskTracker,
    /// Cancelled at the drain deadline: running steps hand their messages back.
    pub abandon: CancellationToken,
    pub shutdown: CancellationToken,
}

/// One provider's step queue, read through a subscription of its own.
pub(crate) struct StepQueue {
    consumer: PullConsumer,
    inbox: Subject,
    deliveries: Subscriber,
    context: jetstream::Context,
    wanted: watch::Receiver<()>,
}

/// How one pull request ended.
enum Round {
    /// The request delivered what it asked for, expired or failed: ask again.
    Ended { delivered: usize },
    /// The worker is stopping.
    Stopped,
}

impl StepQueue {
    pub async fn open(
        consumer: PullConsumer,
        context: &jetstream::Context,
        slots: &Slots,
    ) -> anyhow::Result<Self> {
        let client = context.client();
        let inbox = Subject::from(client.new_inbox());
        let deliveries = client
            .subscribe(inbox.clone())
            .await
            .context("subscribing to a step queue's deliveries")?;
        Ok(Self {
            consumer,
            inbox,
            deliveries,
            context: context.clone(),
            wanted: slots.wanted.subscribe(),
        })
    }

    /// Runs this queue's steps until shutdown; fails only when the queue cannot be read again
    /// (it was deleted or reconfigured beneath the worker).
    pub async fn pull(mut self, slots: &Slots) -> anyhow::Result<()> {
        // A queue that was idle holds one slot while it waits, not a batch of them, so the
        // worker's other queues keep the rest.
        let mut busy = false;
        loop {
            let Some(reserved) = reserve(slots, busy).await else {
                return Ok(());
            };
            let request = BatchConfig {
                batch: reserved.len(),
                expires: Some(PULL_EXPIRY),
                idle_heartbeat: PULL_HEARTBEAT,
                ..Default::default()
            };
            if let Err(error) = self
                .consumer
                .request_batch(request, self.inbox.clone())
                .await
            {
                tracing::warn!(%error, "could not ask for steps; retrying");
                drop(reserved);
                if slots
                    .shutdown
                    .run_until_cancelled(tokio::time::sleep(PULL_RETRY))
                    .await
                    .is_none()
                {
                    return Ok(());
                }
                continue;
            }
            match self.receive(reserved, slots).await? {
                Round::Ended { delivered } => busy = delivered > 0,
                Round::Stopped => return Ok(()),
            }
        }
    }

    /// Starts each step the pull request delivers in one of the `reserved` slots, until it has
    /// delivered as many as it asked for or ends; the slots left over are freed.
    async fn receive(
        &mut self,
        mut reserved: Vec<OwnedSemaphorePermit>,
        slots: &Slots,
    ) -> anyhow::Result<Round> {
        let asked = reserved.len();
        let mut delivered = 0;
        while delivered < asked {
            let next = tokio::select! {
                _ = slots.shutdown.cancelled() => return Ok(Round::Stopped),
                Ok(()) = self.wanted.changed(), if delivered == 0 && !reserved.is_empty() => {
                    if slots.waiting.load(Ordering::Relaxed) > 0 {
                        reserved.clear();
                    }
                    continue;
                }
                next = tokio::time::timeout(PULL_SILENCE, self.deliveries.next()) => next,
            };
            let Ok(next) = next else {
                tracing::warn!("the server went silent on a pull request; asking again");
                break;
            };
            let message = next.context("a step queue's subscription ended")?;
            match message.status {
                None | Some(StatusCode::OK) => {
                    let message = jetstream::Message {
                        message,
                        context: self.context.clone(),
                    };
                    delivered += 1;
                    let slot = reserved
                        .pop()
                        .or_else(|| slots.free.clone().try_acquire_owned().ok());
                    match slot {
                        Some(slot) => start(message, slot, slots),
                        // The slot was lent to a busier queue, or a request given up as lost
                        // was served after all: the step goes back for a free worker.
                        None => give_back(&message).await,
                    }
                }
                Some(StatusCode::IDLE_HEARTBEAT) => {}
                Some(StatusCode::REQUEST_TERMINATED) => {
                    let description = message.description.unwrap_or_default();
                    // These come back the same on every request: the queue is not ours to read.
                    if description == "Consumer Deleted"
                        || description == "Consumer is push based"
                        || description.starts_with("Exceeded MaxRequest")
                    {
                        anyhow::bail!("the step queue refused a pull request: {description}");
                    }
                    // A leader change, a server shutting down: ask again.
                    tracing::debug!(description, "a pull request ended early");
                    break;
                }
                // The request expired (408), or the server had nothing for it (404).
                Some(StatusCode::TIMEOUT | StatusCode::NOT_FOUND) => break,
                Some(status) => {
                    tracing::warn!(%status, description = ?message.description, "a pull request failed; asking again");
                    break;
                }
            }
        }
        Ok(Round::Ended { delivered })
    }
}

/// One free slot (waiting for it), and when the queue was `busy`, every other free slot up to
/// a batch; `None` once the worker stops.
async fn reserve(slots: &Slots, busy: bool) -> Option<Vec<OwnedSemaphorePermit>> {
    let first = match slots.free.clone().try_acquire_owned() {
        Ok(slot) => slot,
        Err(_) => {
            let _waiting = Waiting::new(slots);
            tokio::select! {
                _ = slots.shutdown.cancelled() => return None,
                slot = slots.free.clone().acquire_owned() => slot.ok()?,
            }
        }
    };
    let mut reserved = vec![first];
    while busy && reserved.len() < PULL_BATCH {
        match slots.free.clone().try_acquire_owned() {
            Ok(slot) => reserved.push(slot),
            Err(_) => break,
        }
    }
    Some(reserved)
}

/// Counts a queue as waiting for a slot while it lives, and asks idle queues to lend theirs.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(slots: &'a Slots) -> Self {
        slots.waiting.fetch_add(1, Ordering::Relaxed);
        slots.wanted.send_replace(());
        Self(&slots.waiting)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn start(message: jetstream::Message, slot: OwnedSemaphorePermit, slots: &Slots) {
    let (worker, abandon) = (slots.worker.clone(), slots.abandon.clone());
    slots.steps.spawn(async move {
        worker.handle(message, &abandon).await;
        drop(slot);
    });
}

async fn give_back(message: &jetstream::Message) {
    if let Err(error) = message.ack_with(AckKind::Nak(None)).await {
        // Its ack deadline returns it instead.
        tracing::warn!(%error, "could not hand back a step delivered beyond the free slots");
    }
}

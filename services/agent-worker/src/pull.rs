//! Pulling steps from a provider's queue only for slots that are free.
//!
//! A step message that JetStream delivers has 10 s (the queue's `ack_wait`,
//! [`cadre_proto::streams::AGENT_WORKER_ACK_WAIT`]) without word from its worker before it goes
//! to another worker. A client that pulls ahead of its free slots keeps messages in a buffer while
//! its running calls take their time: past that deadline the step is delivered again elsewhere,
//! and when a slot here frees the buffered copy runs too, so both call the LLM. Meanwhile a
//! worker with free slots could have run it. So each queue here sends one pull request at a
//! time, and asks only for what it can start:
//!
//! - A queue whose last request brought steps reserves the free slots (waiting for one), up to a
//!   batch, and asks for that many with `no_wait`: the server answers at once with the steps it
//!   has, so the slots are held for a round trip, not while steps are awaited.
//! - A queue that found nothing asks for one step and waits for it (5 s, then again), holding no
//!   slot, so that an idle provider costs the worker's busy ones nothing. The step takes a slot
//!   when it comes, or the queue waits with it for the next free one, keeping its delivery alive
//!   with in-progress acks as a running step does, rather than sending it back to the server
//!   (every delivery counts towards the queue's `max_deliver`, after which the step fails). So at
//!   most one step per provider queue waits on a worker while another may be idle, and the
//!   queue asks for nothing more meanwhile.
//!
//! Each request has a reply subject of its own, unsubscribed when the request ends: a request
//! given up as lost (a silent server, a reconnect) is then dropped by the server rather than
//! delivering into a later request, and its late status cannot end a later request.

use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::consumer::pull::BatchConfig;
use async_nats::jetstream::{self, AckKind};
use async_nats::{StatusCode, Subscriber};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::worker::{Worker, while_in_progress};

/// The most slots a busy queue reserves, and steps it asks for, at once.
const PULL_BATCH: usize = 32;
/// How long an idle queue's pull request waits for a step before the worker asks again.
const PULL_EXPIRY: Duration = Duration::from_secs(5);
/// How often the server says an idle queue's pull request is still alive.
const PULL_HEARTBEAT: Duration = Duration::from_secs(2);
/// Silence after which a pull request is taken as lost (a server restarted or a leader moved
/// without a word): for an idle queue's request, two missed heartbeats (the server sends them to
/// every open request, one partly served included); a `no_wait` request carries none, and this
/// only bounds an answer that never comes. Longer than the 2 s for which a server with gateways or leaf
/// nodes still serves a request whose reply subject lost its subscriber.
const PULL_SILENCE: Duration = Duration::from_secs(4);
/// Pause before asking again when the server could not take a pull request (disconnected, no
/// consumer leader yet), so that the worker does not spin.
const PULL_RETRY: Duration = Duration::from_secs(1);
/// How long a stopping worker spends handing back the steps already in a request's buffer.
const HAND_BACK_TIMEOUT: Duration = Duration::from_secs(1);

/// What the worker's queues share: its slots, its running steps, and when to stop.
pub(crate) struct Pulling {
    pub worker: Arc<Worker>,
    /// One permit per step the worker may run at once (`concurrency`).
    pub slots: Arc<Semaphore>,
    pub steps: TaskTracker,
    /// Cancelled at the drain deadline: running steps hand their messages back.
    pub abandon: CancellationToken,
    /// Stops the pulling: the worker stops, or one of its queues failed.
    pub shutdown: CancellationToken,
}

/// One provider's step queue.
pub(crate) struct StepQueue {
    consumer: PullConsumer,
    context: jetstream::Context,
}

/// How one pull request ended.
enum Round {
    /// It delivered what it asked for, expired, was lost, or (`no_wait`) the server had no more
    /// steps now (a 404, or a 408 when other requests claim them); `refused` when it could not
    /// be sent or the server answered it with an error status.
    Ended { delivered: usize, refused: bool },
    /// The worker is stopping.
    Stopped,
}

impl StepQueue {
    pub fn new(consumer: PullConsumer, context: &jetstream::Context) -> Self {
        Self {
            consumer,
            context: context.clone(),
        }
    }

    /// Runs this queue's steps until shutdown; fails only when the queue cannot be read again
    /// (it was deleted or reconfigured beneath the worker).
    pub async fn pull(mut self, pulling: &Pulling) -> anyhow::Result<()> {
        let mut busy = false;
        loop {
            let (reserved, request) = if busy {
                let Some(reserved) = reserve(pulling).await else {
                    return Ok(());
                };
                let request = BatchConfig {
                    batch: reserved.len(),
                    no_wait: true,
                    ..Default::default()
                };
                (reserved, request)
            } else {
                let request = BatchConfig {
                    batch: 1,
                    expires: Some(PULL_EXPIRY),
                    idle_heartbeat: PULL_HEARTBEAT,
                    ..Default::default()
                };
                (Vec::new(), request)
            };
            let asked = request.batch;
            let round = match self.request(request, pulling).await {
                Some(deliveries) => self.receive(deliveries, asked, reserved, pulling).await?,
                None if pulling.shutdown.is_cancelled() => Round::Stopped,
                None => {
                    drop(reserved);
                    Round::Ended {
                        delivered: 0,
                        refused: true,
                    }
                }
            };
            match round {
                Round::Ended { delivered, refused } => {
                    busy = delivered > 0;
                    if refused && delivered == 0 && !pause(pulling).await {
                        return Ok(());
                    }
                }
                Round::Stopped => return Ok(()),
            }
        }
    }

    /// Sends a pull `request` on a reply subject of its own, whose subscription it returns;
    /// `None` when disconnected, stopping, or it could not be sent.
    async fn request(&self, request: BatchConfig, pulling: &Pulling) -> Option<Subscriber> {
        let client = self.context.client();
        // Queued while disconnected, requests would all be sent at once on reconnect.
        if client.connection_state() != State::Connected {
            return None;
        }
        let inbox = client.new_inbox();
        let sent = async {
            let deliveries = client.subscribe(inbox.clone()).await?;
            self.consumer.request_batch(request, inbox.into()).await?;
            Ok::<_, async_nats::Error>(deliveries)
        };
        match pulling.shutdown.run_until_cancelled(sent).await? {
            Ok(deliveries) => Some(deliveries),
            Err(error) => {
                tracing::warn!(%error, "could not ask for steps; retrying");
                None
            }
        }
    }

    /// Starts each step the pull request for `asked` steps delivers in one of the `reserved`
    /// slots, or a free one, or (an idle queue's step) waits with it for the next free one, until
    /// it has delivered as many as it asked for or ends; the slots left over are freed.
    async fn receive(
        &mut self,
        mut deliveries: Subscriber,
        asked: usize,
        mut reserved: Vec<OwnedSemaphorePermit>,
        pulling: &Pulling,
    ) -> anyhow::Result<Round> {
        let mut delivered = 0;
        let mut silent_at = Instant::now() + PULL_SILENCE;
        while delivered < asked {
            let next = tokio::select! {
                biased;
                _ = pulling.shutdown.cancelled() => {
                    self.hand_back(deliveries).await;
                    return Ok(Round::Stopped);
                }
                next = tokio::time::timeout_at(silent_at, deliveries.next()) => next,
            };
            let Ok(next) = next else {
                tracing::warn!("the server went silent on a pull request; asking again");
                break;
            };
            silent_at = Instant::now() + PULL_SILENCE;
            let Some(message) = next else {
                anyhow::bail!("a step queue's subscription ended");
            };
            match message.status {
                None | Some(StatusCode::OK) => {
                    delivered += 1;
                    let step = self.step(message);
                    let free = || pulling.slots.clone().try_acquire_owned().ok();
                    let slot = match reserved.pop().or_else(free) {
                        Some(slot) => slot,
                        None => {
                            // Waited for here, not in the step's task: the queue's next request
                            // must not overtake this step nor bring another to wait.
                            let waited = pulling
                                .shutdown
                                .run_until_cancelled(pulling.slots.clone().acquire_owned());
                            match while_in_progress(&step, waited).await {
                                // A slot that frees as the worker stops starts nothing more.
                                Some(Ok(slot)) if !pulling.shutdown.is_cancelled() => {
                                    // Its last in-progress ack may be most of a period old,
                                    // and the run's first comes a period after it starts.
                                    if let Err(error) = step.ack_with(AckKind::Progress).await {
                                        tracing::warn!(%error, "could not extend the step's ack deadline");
                                    }
                                    slot
                                }
                                _ => {
                                    give_back(&step).await;
                                    self.hand_back(deliveries).await;
                                    return Ok(Round::Stopped);
                                }
                            }
                        }
                    };
                    start(step, slot, pulling);
                }
                Some(StatusCode::IDLE_HEARTBEAT) => {}
                // The request expired, or (`no_wait`) the queue has no more steps now.
                Some(StatusCode::TIMEOUT | StatusCode::NOT_FOUND) => break,
                Some(StatusCode::REQUEST_TERMINATED) => {
                    let description = message.description.unwrap_or_default();
                    // The queue is not ours to read any more.
                    if description == "Consumer Deleted"
                        || description == "Consumer is push based"
                        || description.starts_with("Exceeded MaxRequest")
                    {
                        anyhow::bail!("the step queue refused a pull request: {description}");
                    }
                    // A leader change, a server shutting down, too many waiting requests.
                    tracing::debug!(description, "a pull request ended early");
                    return Ok(Round::Ended {
                        delivered,
                        refused: true,
                    });
                }
                // No responders (no consumer leader yet), or a status this build does not know.
                Some(status) => {
                    tracing::warn!(%status, description = ?message.description, "a pull request failed; asking again");
                    return Ok(Round::Ended {
                        delivered,
                        refused: true,
                    });
                }
            }
        }
        Ok(Round::Ended {
            delivered,
            refused: false,
        })
    }

    fn step(&self, message: async_nats::Message) -> jetstream::Message {
        jetstream::Message {
            message,
            context: self.context.clone(),
        }
    }

    /// Stops a request's deliveries and hands back the steps already in its buffer, so that
    /// they go to another worker now rather than when their ack deadline passes. (A step the
    /// server sent before it saw the unsubscribe is dropped by the client, and waits for that
    /// deadline.)
    async fn hand_back(&self, mut deliveries: Subscriber) {
        let handed = async {
            if deliveries.unsubscribe().await.is_err() {
                return;
            }
            while let Some(message) = deliveries.next().await {
                if message.status.is_none_or(|status| status == StatusCode::OK) {
                    give_back(&self.step(message)).await;
                }
            }
        };
        let _ = tokio::time::timeout(HAND_BACK_TIMEOUT, handed).await;
    }
}

/// One free slot (waiting for it), and every other free slot up to a batch; `None` once the
/// worker stops.
async fn reserve(pulling: &Pulling) -> Option<Vec<OwnedSemaphorePermit>> {
    let first = pulling
        .shutdown
        .run_until_cancelled(pulling.slots.clone().acquire_owned())
        .await?;
    let mut reserved = vec![first.ok()?];
    while reserved.len() < PULL_BATCH {
        match pulling.slots.clone().try_acquire_owned() {
            Ok(slot) => reserved.push(slot),
            Err(_) => break,
        }
    }
    Some(reserved)
}

/// Waits [`PULL_RETRY`]; false when the worker stops meanwhile.
async fn pause(pulling: &Pulling) -> bool {
    pulling
        .shutdown
        .run_until_cancelled(tokio::time::sleep(PULL_RETRY))
        .await
        .is_some()
}

fn start(step: jetstream::Message, slot: OwnedSemaphorePermit, pulling: &Pulling) {
    let (worker, abandon) = (pulling.worker.clone(), pulling.abandon.clone());
    pulling.steps.spawn(async move {
        worker.handle(step, &abandon).await;
        drop(slot);
    });
}

async fn give_back(message: &jetstream::Message) {
    if let Err(error) = message.ack_with(AckKind::Nak(None)).await {
        // Its ack deadline returns it instead.
        tracing::debug!(%error, "could not hand back a step");
    }
}

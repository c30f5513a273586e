//! The one command path of every aggregate: load its state from the log, decide, append the
//! events expecting the last sequence the state has seen, and on a conflict (someone appended
//! in between) load again and decide again. The HTTP API and the event processor both use it.

use std::marker::PhantomData;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::Utc;

use cadre_proto::model::AgentProfile;
use cadre_proto::{AgentId, Envelope, Event, TenantId, subjects};
use cadre_runtime::bus::{self, EventBus, PublishError};

use crate::SOURCE;
use crate::domain::Decider;

/// How often a command is decided again after losing a race for the same aggregate.
const ATTEMPTS: usize = 8;

/// Which of an aggregate's stored events its state needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum History {
    /// Every event on the filter, in order.
    All,
    /// Only the last one: the state is a function of it (a workflow's last execution number).
    /// Unless it is a copy of an older event ([`bus::EventBus::is_copy`]): then all of them.
    Last,
}

/// An aggregate's state as of a stream sequence.
pub struct Aggregate<D: Decider> {
    pub tenant: TenantId,
    filter: String,
    history: History,
    pub state: D::State,
    /// Stream sequence of the last event folded into `state`; 0 before the first.
    pub version: u64,
    decider: PhantomData<D>,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error + 'static> {
    /// The domain said no: a client error, never retried.
    #[error(transparent)]
    Rejected(E),
    #[error(transparent)]
    Read(#[from] bus::ReadError),
    #[error(transparent)]
    Publish(PublishError),
    /// Other writers kept winning the race for this aggregate.
    #[error("the aggregate kept changing under {ATTEMPTS} attempts to decide on it")]
    Contended,
}

impl<D: Decider> Aggregate<D> {
    /// An aggregate with no events yet: a new id, whose first append expects an empty filter.
    pub fn empty(tenant: TenantId, filter: String, history: History) -> Self {
        Self {
            tenant,
            filter,
            history,
            state: D::State::default(),
            version: 0,
            decider: PhantomData,
        }
    }

    /// The aggregate as stored in the log now.
    pub async fn load(
        bus: &EventBus,
        tenant: TenantId,
        filter: String,
        history: History,
    ) -> Result<Self, bus::ReadError> {
        let mut aggregate = Self::empty(tenant, filter, history);
        aggregate.reload(bus).await?;
        Ok(aggregate)
    }

    async fn reload(&mut self, bus: &EventBus) -> Result<(), bus::ReadError> {
        // Messages this build cannot read are skipped (the consumers terminate them), but the
        // next append must still expect the last message there is.
        let (stored, last_sequence) = match self.history {
            History::All => {
                let history = bus.read_history(&self.filter).await?;
                (history.events, history.last_sequence)
            }
            History::Last => {
                let (last, sequence) = bus.last_decodable_event(&self.filter).await?;
                match last {
                    // A copy of an old event stored again would set the state back (a
                    // workflow's numbering to an old run's): read everything instead, where
                    // the copy is folded as the repeat it is.
                    Some(last) if bus.is_copy(last.sequence, &last.envelope).await? => {
                        let history = bus.read_history(&self.filter).await?;
                        (history.events, history.last_sequence)
                    }
                    last => (last.into_iter().collect(), sequence),
                }
            }
        };
        self.state = D::State::default();
        self.version = 0;
        for event in stored {
            self.fold(event.sequence, &event.envelope.event);
        }
        self.version = self.version.max(last_sequence);
        Ok(())
    }

    /// After losing a race for the aggregate: from the second time on, waits a turn of
    /// `backoff`; then reads the aggregate again, to decide again.
    async fn after_conflict(
        &mut self,
        bus: &EventBus,
        attempt: usize,
        backoff: &mut impl Iterator<Item = Duration>,
    ) -> Result<(), bus::ReadError> {
        tracing::debug!(filter = %self.filter, "append raced another writer; deciding again");
        if attempt > 0
            && let Some(delay) = backoff.next()
        {
            tokio::time::sleep(delay).await;
        }
        self.reload(bus).await
    }

    /// Folds an event read from the log at `sequence`; one already folded (a redelivery, or
    /// our own append coming back) changes nothing. Returns whether it was new.
    pub fn fold(&mut self, sequence: u64, event: &Event) -> bool {
        if sequence <= self.version {
            return false;
        }
        self.state = D::evolve(std::mem::take(&mut self.state), event);
        self.version = sequence;
        true
    }

    /// Decides `command` on the current state and appends the events; returns them as stored,
    /// each with its stream sequence.
    pub async fn execute(
        &mut self,
        bus: &EventBus,
        command: &D::Command,
    ) -> Result<Vec<(u64, Envelope)>, CommandError<D::Error>> {
        let mut backoff = contention_backoff();
        for attempt in 0..ATTEMPTS {
            let now = Utc::now();
            let events = D::decide(command, &self.state, now).map_err(CommandError::Rejected)?;
            if events.is_empty() {
                return Ok(Vec::new());
            }
            let envelopes: Vec<Envelope> = events
                .into_iter()
                .map(|event| Envelope::new(SOURCE, self.tenant.clone(), now, event))
                .collect();
            match bus
                .append_after(&envelopes, &self.filter, self.version)
                .await
            {
                Ok(sequences) => {
                    for envelope in &envelopes {
                        self.state = D::evolve(std::mem::take(&mut self.state), &envelope.event);
                    }
                    self.version = sequences.last().copied().unwrap_or(self.version);
                    return Ok(sequences.into_iter().zip(envelopes).collect());
                }
                Err(PublishError::Conflict { .. }) => {
                    self.after_conflict(bus, attempt, &mut backoff).await?;
                }
                Err(error) => return Err(CommandError::Publish(error)),
            }
        }
        Err(CommandError::Contended)
    }
}

impl<D: Decider> Aggregate<D>
where
    D::State: Clone,
{
    /// A group commit: decides `commands` one after another, each on the state the ones before
    /// it left, and appends all their events as one atomic batch ([`EventBus::append_batch_after`]),
    /// so many commands cost one round trip. Returns, per command in order, its events with
    /// their stream sequences, or the domain's refusal (which does not stop the others). A race
    /// with another writer decides them all again, as [`Self::execute`] does. At most
    /// [`bus::MAX_BATCH`] events in all. The events of `commands[i]` carry the trace context
    /// of `spans[i]` (the span of the request that asked for it), or the current span's.
    pub async fn execute_all(
        &mut self,
        bus: &EventBus,
        commands: &[D::Command],
        spans: &[tracing::Span],
    ) -> Result<Vec<Decided<D::Error>>, CommandError<D::Error>> {
        let mut backoff = contention_backoff();
        for attempt in 0..ATTEMPTS {
            let now = Utc::now();
            let mut state = self.state.clone();
            let mut envelopes = Vec::new();
            let mut envelope_spans = Vec::new();
            // Per command: how many of `envelopes` are its own, or its refusal.
            let mut counts = Vec::with_capacity(commands.len());
            for (index, command) in commands.iter().enumerate() {
                match D::decide(command, &state, now) {
                    Ok(events) => {
                        counts.push(Ok(events.len()));
                        for event in events {
                            state = D::evolve(state, &event);
                            envelopes.push(Envelope::new(SOURCE, self.tenant.clone(), now, event));
                            envelope_spans.push(
                                spans
                                    .get(index)
                                    .cloned()
                                    .unwrap_or_else(tracing::Span::current),
                            );
                        }
                    }
                    Err(refused) => counts.push(Err(refused)),
                }
            }
            let appended = match envelopes.len() {
                0 => Ok(self.version),
                _ => {
                    bus.append_batch_after(&envelopes, &envelope_spans, &self.filter, self.version)
                        .await
                }
            };
            match appended {
                Ok(last) => {
                    // An atomic batch is stored at consecutive sequences.
                    let first = last + 1 - envelopes.len() as u64;
                    let mut stored = (first..).zip(envelopes);
                    self.state = state;
                    self.version = last;
                    return Ok(counts
                        .into_iter()
                        .map(|count| count.map(|n| stored.by_ref().take(n).collect()))
                        .collect());
                }
                Err(PublishError::Conflict { .. }) => {
                    self.after_conflict(bus, attempt, &mut backoff).await?;
                }
                Err(error) => return Err(CommandError::Publish(error)),
            }
        }
        Err(CommandError::Contended)
    }
}

/// What [`Aggregate::execute_all`] did with one command: its events as stored, with their
/// stream sequences, or the domain's refusal.
pub type Decided<E> = Result<Vec<(u64, Envelope)>, E>;

/// The first conflict is decided again at once (usually a worker's event landed meanwhile);
/// from the second on, writers back off (jittered, growing) so two coordinators contending for
/// one aggregate do not keep colliding in lockstep.
fn contention_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(1))
        .with_max_delay(Duration::from_millis(100))
        .with_jitter()
        .with_max_times(ATTEMPTS)
        .build()
}

/// An agent as registered, read from the log (the read models may lag behind it).
pub async fn registered_agent(
    bus: &EventBus,
    tenant: &TenantId,
    id: AgentId,
) -> Result<Option<AgentProfile>, bus::ReadError> {
    let stored = bus
        .last_event(&subjects::agent(tenant, id, subjects::REGISTERED))
        .await?;
    Ok(stored.and_then(|s| match s.envelope.event {
        Event::AgentRegistered(e) => Some(e.agent),
        _ => None,
    }))
}

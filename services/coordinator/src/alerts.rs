//! The alert watcher: reads the event log and appends the alerts the pure [`Watch`]
//! ([`crate::domain::alerts`]) decides on how agents' attempts end. It also keeps each agent's
//! record ([`Records`]) from the same facts, for the starter to record in each run's start.
//!
//! It reads the log's step and run facts it folds ([`watched`]) from sequence 1 each time it
//! starts (an ordered consumer: nothing to ack), because an alert depends on everything an
//! agent did before. Each alert is appended to
//! a subject of its own (its agent, condition and crossing), only where nothing is stored yet,
//! with an id derived from the same: reading the log again after a restart, a second
//! coordinator watching beside this one, or an append retried after a lost answer all store
//! it once. An event is folded in only after its alerts are stored, so an outage of the log
//! delays alerts and loses none.

use std::time::Duration;

use async_nats::jetstream::consumer::{self, DeliverPolicy};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use cadre_proto::events::AlertRaised;
use cadre_proto::{Envelope, Event, TenantId, subjects};
use cadre_runtime::bus::{Append, EventBus, NatsError, PublishError};

use crate::domain::alerts::{Watch, alert_id};
use crate::starter::Records;

/// The longest wait between two tries of a failed append or a failed read of the log.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// Watches until `shutdown`, keeping `records`; a failed read of the log starts over from its
/// beginning.
pub async fn run(bus: EventBus, records: Records, shutdown: CancellationToken) {
    let mut delay = Duration::from_secs(1);
    loop {
        match watch(&bus, &records, &shutdown).await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(%error, ?delay, "reading the event log for alerts failed; starting over");
                if sleep_or_shutdown(delay, &shutdown).await {
                    return;
                }
                delay = (delay * 2).min(MAX_RETRY_DELAY);
            }
        }
    }
}

async fn watch(
    bus: &EventBus,
    records: &Records,
    shutdown: &CancellationToken,
) -> Result<(), NatsError> {
    let consumer = bus
        .stream()
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subjects: watched(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut watch = Watch::default();
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            next = messages.next() => match next {
                Some(message) => message?,
                None => return Err("the event log's consumer ended".into()),
            },
        };
        // The processor terminates what it cannot read, with the reason; nothing to add.
        let Ok(envelope) = Envelope::decode(&message.payload) else {
            continue;
        };
        let at = envelope.meta.time;
        for alert in watch.decide(&envelope.event, at) {
            if !append(bus, &envelope.meta.tenant, alert, at, shutdown).await {
                return Ok(());
            }
        }
        for agent in watch.evolve(&envelope.event, at) {
            if let Some(facts) = watch.facts(agent) {
                records.set(agent, facts.record());
            }
        }
    }
}

/// The step facts the watch folds: how steps are handed out and how their attempts end.
const STEP_FACTS: [&str; 6] = [
    subjects::SCHEDULED,
    subjects::COMPLETED,
    subjects::FAILED,
    subjects::TIMED_OUT,
    subjects::REVIEWED,
    subjects::ESCALATED,
];
/// The ends of runs the watch folds.
const RUN_ENDS: [&str; 3] = [subjects::COMPLETED, subjects::FAILED, subjects::CANCELLED];

/// The log's subjects of what the watch folds: the server sends it only those (under load
/// about a third of the log), not every event for it to skip.
fn watched() -> Vec<String> {
    let steps = STEP_FACTS.map(subjects::every_step_fact);
    let runs = RUN_ENDS.map(subjects::every_execution_fact);
    steps.into_iter().chain(runs).collect()
}

/// Appends `alert`, retrying until it is stored (or was before); false if `shutdown` came
/// first (the next start decides it again).
async fn append(
    bus: &EventBus,
    tenant: &TenantId,
    alert: AlertRaised,
    at: chrono::DateTime<chrono::Utc>,
    shutdown: &CancellationToken,
) -> bool {
    let envelope = Envelope::with_id(
        alert_id(&alert, at),
        crate::SOURCE,
        tenant.clone(),
        at,
        Event::AlertRaised(Box::new(alert)),
    );
    // Nothing may be stored on the alert's own subject yet: it is stored once.
    let only_once = Append::ExpectLast {
        filter: envelope.nats_subject(),
        sequence: 0,
    };
    let mut delay = Duration::from_secs(1);
    loop {
        match bus.publish(&envelope, only_once.clone()).await {
            Ok(_) => {
                if let Event::AlertRaised(alert) = &envelope.event {
                    tracing::info!(
                        agent_id = %alert.agent_id,
                        condition = alert.condition.as_str(),
                        crossing = alert.crossing,
                        message = alert.message,
                        "alert raised"
                    );
                }
                return true;
            }
            Err(PublishError::Conflict { .. }) => {
                tracing::debug!(subject = %envelope.nats_subject(), "alert stored before");
                return true;
            }
            Err(error) => {
                tracing::warn!(%error, ?delay, "could not append an alert; retrying");
                if sleep_or_shutdown(delay, shutdown).await {
                    return false;
                }
                delay = (delay * 2).min(MAX_RETRY_DELAY);
            }
        }
    }
}

/// Sleeps for `delay`; true if `shutdown` interrupted it.
async fn sleep_or_shutdown(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(delay) => false,
    }
}

#[cfg(test)]
mod tests {
    use cadre_proto::{ExecutionId, StepId, WorkflowId};

    use super::*;

    #[test]
    fn the_watch_reads_step_outcomes_and_run_ends_only() {
        let t = TenantId::default_tenant();
        let (w, e) = (WorkflowId::new(), ExecutionId::new());
        let s = StepId::parse("design").unwrap();
        let is_watched = |subject: &str| watched().iter().any(|f| subjects::selects(f, subject));
        for fact in STEP_FACTS {
            assert!(is_watched(&subjects::step(&t, w, e, &s, fact)), "{fact}");
        }
        for fact in RUN_ENDS {
            assert!(is_watched(&subjects::execution(&t, w, e, fact)), "{fact}");
        }
        for subject in [
            subjects::step(&t, w, e, &s, subjects::STARTED),
            subjects::step(&t, w, e, &s, subjects::HANDED_OFF),
            subjects::execution(&t, w, e, subjects::STARTED),
            subjects::execution(&t, w, e, subjects::ESCALATED),
            subjects::interactions(&t, w, e),
            subjects::knowledge(&t, w),
            subjects::workflow(&t, w, subjects::CREATED),
            subjects::alert_raised(&t, cadre_proto::AgentId::new(), "failure_rate", 1),
        ] {
            assert!(!is_watched(&subject), "{subject}");
        }
        // Every event the watch folds is stored under a watched subject.
        for event in cadre_proto::samples::every_event() {
            let folded = matches!(
                event,
                Event::StepScheduled(_)
                    | Event::StepCompleted(_)
                    | Event::StepFailed(_)
                    | Event::StepTimedOut(_)
                    | Event::StepReviewed(_)
                    | Event::StepEscalated(_)
                    | Event::ExecutionCompleted(_)
                    | Event::ExecutionFailed(_)
                    | Event::ExecutionCancelled(_)
            );
            let subject = event.nats_subject(&t);
            assert_eq!(is_watched(&subject), folded, "{subject}");
        }
    }
}

//! The LLM calls running on this worker, so that the coordinator can stop them: when an attempt
//! times out or its execution is cancelled or fails, it publishes a [`StopCalls`] that every
//! worker hears, which stops the attempt's own run and the answers teammates are giving to its
//! questions. Stopping is an optimisation, not a guarantee: the log already says the work is
//! moot, and whatever a call that was not stopped reports is ignored by the coordinator.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use cadre_proto::control::{self, StopCalls};
use cadre_proto::{EventId, ExecutionId, StepId};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// An attempt of a step, and `Some` assignment (the `QuestionAssigned` event's id) for an answer
/// to one of its questions, `None` for the attempt's own run.
type Key = (ExecutionId, StepId, u32, Option<EventId>);

/// One attempt's token, shared by every delivery of it running here (a redelivery can overlap
/// the delivery before it), how many those are, and whose turn it is to run it.
struct Running {
    token: CancellationToken,
    deliveries: usize,
    turn: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Clone, Default)]
pub struct RunningCalls(Arc<Mutex<HashMap<Key, Running>>>);

/// A registered call; it leaves the registry when dropped.
pub struct Registration {
    calls: RunningCalls,
    key: Key,
    pub token: CancellationToken,
    turn: Arc<tokio::sync::Mutex<()>>,
}

impl Registration {
    /// Waits until no other delivery of the same attempt runs here, and holds that turn until
    /// the guard drops. A delivery that overlaps one still running on this worker (the server
    /// handed the step out again: it restarted and forgot the first delivery, say) waits for it
    /// instead of asking the model a second time; then its check of the log finds the step
    /// done, or, if the first delivery failed, runs it.
    pub async fn turn(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.turn.clone().lock_owned().await
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut calls = self.calls.lock();
        if let Some(running) = calls.get_mut(&self.key) {
            running.deliveries -= 1;
            if running.deliveries == 0 {
                calls.remove(&self.key);
            }
        }
    }
}

impl RunningCalls {
    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Running>> {
        // Every change under the lock is a single insert, update or remove: a poisoned map is
        // sound.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers `attempt` of `step` while it runs. Every delivery of the same attempt gets
    /// the same token, so a stop reaches them all (a second registration used to replace the
    /// first's, and the first call ran on after its run was cancelled).
    pub fn register(&self, execution: ExecutionId, step: StepId, attempt: u32) -> Registration {
        self.register_key((execution, step, attempt, None))
    }

    /// Registers the answer to the question assigned by event `assignment`, which `attempt` of
    /// `step` asked, while it is being given; deliveries of the same assignment share it.
    pub fn register_answer(
        &self,
        execution: ExecutionId,
        step: StepId,
        attempt: u32,
        assignment: EventId,
    ) -> Registration {
        self.register_key((execution, step, attempt, Some(assignment)))
    }

    fn register_key(&self, key: Key) -> Registration {
        let mut calls = self.lock();
        let running = calls
            .entry(key.clone())
            .and_modify(|running| running.deliveries += 1)
            .or_insert_with(|| Running {
                token: CancellationToken::new(),
                deliveries: 1,
                turn: Arc::default(),
            });
        let (token, turn) = (running.token.clone(), running.turn.clone());
        drop(calls);
        Registration {
            calls: self.clone(),
            key,
            token,
            turn,
        }
    }

    /// Cancels every running call `request` covers; returns how many.
    pub fn stop(&self, request: &StopCalls) -> usize {
        let calls = self.lock();
        let mut stopped = 0;
        for ((execution, step, attempt, _), running) in calls.iter() {
            if request.covers(*execution, step, *attempt) {
                running.token.cancel();
                stopped += running.deliveries;
            }
        }
        stopped
    }

    /// Listens for stop requests until `shutdown`.
    pub async fn listen(
        self,
        client: async_nats::Client,
        shutdown: CancellationToken,
    ) -> Result<(), async_nats::SubscribeError> {
        let mut requests = client.subscribe(control::ALL_STOP_CALLS).await?;
        while let Some(Some(message)) = shutdown.run_until_cancelled(requests.next()).await {
            match serde_json::from_slice::<StopCalls>(&message.payload) {
                Ok(request) => {
                    let stopped = self.stop(&request);
                    if stopped > 0 {
                        tracing::info!(?request, stopped, "stopped running LLM calls");
                    }
                }
                Err(error) => tracing::warn!(%error, "ignoring an unreadable stop request"),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_reaches_the_calls_it_names_and_no_other() {
        let calls = RunningCalls::default();
        let (e1, e2) = (ExecutionId::new(), ExecutionId::new());
        let step = |s: &str| StepId::parse(s).unwrap();
        let a1 = calls.register(e1, step("a"), 1);
        let b1 = calls.register(e1, step("b"), 1);
        let other = calls.register(e2, step("a"), 1);

        let one = StopCalls {
            execution_id: e1,
            step_id: Some(step("a")),
            attempt: Some(2),
        };
        assert_eq!(calls.stop(&one), 0, "another attempt of the step");
        let one = StopCalls {
            attempt: Some(1),
            ..one
        };
        assert_eq!(calls.stop(&one), 1);
        assert!(a1.token.is_cancelled() && !b1.token.is_cancelled());

        let all = StopCalls {
            execution_id: e1,
            step_id: None,
            attempt: None,
        };
        assert_eq!(calls.stop(&all), 2);
        assert!(b1.token.is_cancelled() && !other.token.is_cancelled());

        drop((a1, b1));
        assert_eq!(calls.stop(&all), 0, "finished calls leave the registry");
    }

    #[test]
    fn deliveries_of_one_attempt_take_turns_and_answers_to_its_questions_have_their_own() {
        use futures::FutureExt;
        let calls = RunningCalls::default();
        let execution = ExecutionId::new();
        let step = StepId::parse("s1").unwrap();
        let first = calls.register(execution, step.clone(), 1);
        let second = calls.register(execution, step.clone(), 1);
        let asked = EventId::new();
        let answer = calls.register_answer(execution, step.clone(), 1, asked);
        let answer_again = calls.register_answer(execution, step, 1, asked);

        let running = first
            .turn()
            .now_or_never()
            .expect("the first delivery's turn");
        assert!(second.turn().now_or_never().is_none(), "the second waits");
        // The attempt waits for the answer to its question: the answer must not wait for it.
        let answering = answer.turn().now_or_never().expect("an answer's own turn");
        assert!(answer_again.turn().now_or_never().is_none());
        drop((running, answering));
        assert!(second.turn().now_or_never().is_some());
        assert!(answer_again.turn().now_or_never().is_some());

        let stop = StopCalls {
            execution_id: execution,
            step_id: None,
            attempt: Some(1),
        };
        assert_eq!(
            calls.stop(&stop),
            4,
            "the attempt's deliveries and the answers to it"
        );
        assert!(answer.token.is_cancelled() && answer_again.token.is_cancelled());
    }

    #[test]
    fn a_stop_reaches_every_delivery_of_the_attempt_running_here() {
        let calls = RunningCalls::default();
        let execution = ExecutionId::new();
        let step = StepId::parse("s64").unwrap();
        let first = calls.register(execution, step.clone(), 1);
        // Redelivered while the first delivery's call still runs.
        let second = calls.register(execution, step.clone(), 1);
        drop(second);
        let third = calls.register(execution, step, 1);
        let stop = StopCalls {
            execution_id: execution,
            step_id: None,
            attempt: None,
        };
        assert_eq!(calls.stop(&stop), 2);
        assert!(first.token.is_cancelled() && third.token.is_cancelled());
        drop((first, third));
        assert_eq!(calls.stop(&stop), 0, "finished calls leave the registry");
    }
}

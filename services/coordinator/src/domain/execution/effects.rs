//! What the world outside the log must do because an event of an execution is now stored.
//!
//! Effects follow from stored events, not from decisions: the coordinator performs them when it
//! reads the event back from the log and acks the event only afterwards, so the log is the
//! outbox and no effect is lost between an append and a crash. (A lane also hands the steps it
//! has just appended to the workers at once, and then skips that effect when it reads them
//! back.) Every effect is idempotent
//! (dispatch deduplicates by event id, a timer armed twice is one schedule, cancelling twice is
//! a no-op, a stop of a call that ended does nothing), so performing one again is harmless.

use cadre_proto::events::{ParentStep, StepAttempt};
use cadre_proto::timers::{Timer, When};
use cadre_proto::{Event, StepId};
use chrono::{DateTime, Utc};

use super::{Execution, State, StepState, Undoing};
use crate::domain::{ChildOutcome, Effect};

/// The effects `event`, stored at `stored_at`, calls for, given the execution's state after
/// folding it (or later: the state may already hold events stored after this one).
pub fn effects(state: &State, event: &Event, stored_at: DateTime<Utc>) -> Vec<Effect> {
    let State::Started(execution) = state else {
        return vec![];
    };
    match event {
        Event::ExecutionStarted(e) if !execution.status.is_finished() => {
            let mut effects: Vec<Effect> = e
                .deadline
                .map(|at| Effect::StartTimer {
                    timer: deadline(execution),
                    when: When::At(at),
                })
                .into_iter()
                .collect();
            // The time after which a person must look, from the same start.
            if let Some(minutes) = execution.escalation_policy().after_minutes {
                let started = e.started_at.unwrap_or(stored_at);
                effects.push(Effect::StartTimer {
                    timer: escalation_due(execution),
                    when: When::At(super::after_minutes(started, minutes)),
                });
            }
            effects
        }
        Event::StepScheduled(e) => {
            // A step's attempt, a coordinator agent's choice for one, a saga's undoing of one,
            // or its re-planning, still running.
            let choosing =
                |p: &super::StepProgress| p.state == StepState::Delegating { attempt: e.attempt };
            let running = execution
                .steps
                .get(&e.step.id)
                .is_some_and(|p| p.runs(e.attempt))
                || e.step
                    .id
                    .delegated()
                    .and_then(|step| execution.steps.get(&step))
                    .is_some_and(choosing)
                || execution.saga.as_ref().is_some_and(|saga| {
                    matches!(saga.current(), Some((step, Undoing::Scheduled { attempt, .. }))
                        if step.undo() == e.step.id && *attempt == e.attempt)
                        || e.step.id.as_str().starts_with(StepId::REPLAN_PREFIX)
                            && matches!(saga.replan, Some(Undoing::Scheduled { attempt, .. })
                                if attempt == e.attempt)
                });
            let mut effects = match e.step.child_workflow_id {
                // A child run takes the step instead of an agent (an agent reviews its work).
                Some(workflow_id) if e.review.is_none() => vec![Effect::StartChild {
                    workflow_id,
                    parent: ParentStep {
                        attempt: StepAttempt::of(e),
                        depth: execution.parent.as_ref().map_or(0, |p| p.depth) + 1,
                    },
                    input: execution.input.clone(),
                }],
                // An attempt that already ended needs no worker: this is a copy of its
                // scheduling stored again (re-published after the duplicate window). One that
                // still runs is handed over; read back, it carries no log sequence, so the
                // worker checks the step's and the run's facts before it runs it.
                _ if running => vec![Effect::Dispatch {
                    provider: e.agent.provider.clone(),
                }],
                _ => vec![],
            };
            // The asker is back at work: its questions' deadline has nothing left to guard.
            if !e.answers.is_empty() {
                effects.push(Effect::CancelTimer(question_deadline(
                    execution,
                    &e.step.id,
                    e.attempt - 1,
                )));
            }
            match (e.arms_step_timer, e.timeout_at) {
                (Some(true), _) => effects.extend(arm_deadlines_timer(execution)),
                // Stored by a release that armed one timer per attempt.
                (None, Some(at)) if running => effects.push(Effect::StartTimer {
                    timer: Timer::StepTimeout {
                        workflow_id: execution.workflow.id,
                        execution_id: execution.id,
                        step_id: e.step.id.clone(),
                        attempt: e.attempt,
                    },
                    when: When::At(at),
                }),
                _ => {}
            }
            effects
        }
        Event::StepDeadlinesChecked(_) => arm_deadlines_timer(execution).into_iter().collect(),
        // A question goes to the workers of its addressee's provider; its asker waits until the
        // deadline at most (one timer per asking attempt: arming it again changes nothing).
        Event::QuestionAssigned(e) => {
            let waiting = execution.steps.get(&e.step_id).is_some_and(|p| {
                p.attempt == e.attempt && matches!(p.state, StepState::AwaitingAnswers { .. })
            });
            if waiting {
                vec![
                    Effect::Dispatch {
                        provider: e.recipient.provider.clone(),
                    },
                    Effect::StartTimer {
                        timer: question_deadline(execution, &e.step_id, e.attempt),
                        when: When::At(e.deadline_at),
                    },
                ]
            } else {
                vec![]
            }
        }
        // The failed step's next attempt waits for its backoff, on a durable timer.
        Event::StepRetryScheduled(e) => {
            let waiting = execution.steps.get(&e.attempt.step_id).is_some_and(|p| {
                p.attempt == e.attempt.number && matches!(p.state, StepState::RetryWaiting { .. })
            });
            if waiting {
                vec![Effect::StartTimer {
                    timer: retry(execution, &e.attempt.step_id, e.attempt.number),
                    when: When::At(e.retry_at),
                }]
            } else {
                vec![]
            }
        }
        // A failing run's other attempts are moot: stop them before the undoings start (their
        // timers may still fire; what they guard no longer counts).
        Event::SagaStarted(e) => vec![Effect::StopCalls {
            execution_id: e.execution_id,
            step: None,
        }],
        Event::StepTimedOut(e) => vec![Effect::StopCalls {
            execution_id: execution.id,
            step: Some((e.attempt.step_id.clone(), e.attempt.number)),
        }],
        Event::ExecutionCompleted(e) => {
            let duration_ms = execution.started_at.map(|started| {
                u64::try_from((stored_at - started).num_milliseconds()).unwrap_or(0)
            });
            let mut effects = ended(execution, false);
            effects.push(Effect::StartDependants {
                upstream: execution.workflow.id,
                execution_id: execution.id,
            });
            effects.extend(report_to_parent(
                execution,
                ChildOutcome::Completed {
                    summary: format!(
                        "child run of workflow '{}' completed",
                        execution.workflow.name
                    ),
                    final_output: e.final_output.clone(),
                    duration_ms,
                },
            ));
            effects
        }
        Event::ExecutionFailed(e) => {
            let mut effects = ended(execution, true);
            effects.extend(report_to_parent(
                execution,
                ChildOutcome::Failed {
                    error: format!(
                        "child run of workflow '{}' failed: {}",
                        execution.workflow.name, e.error
                    ),
                },
            ));
            effects
        }
        Event::ExecutionCancelled(_) => {
            let mut effects = ended(execution, true);
            effects.extend(report_to_parent(
                execution,
                ChildOutcome::Failed {
                    error: format!(
                        "child run of workflow '{}' was cancelled",
                        execution.workflow.name
                    ),
                },
            ));
            effects
        }
        _ => vec![],
    }
}

/// A child run's end, for its parent step.
fn report_to_parent(execution: &Execution, outcome: ChildOutcome) -> Option<Effect> {
    execution
        .parent
        .clone()
        .map(|parent| Effect::ReportToParent { parent, outcome })
}

/// A finished execution needs no timer, and a failed or cancelled one no running call.
fn ended(execution: &Execution, stop_calls: bool) -> Vec<Effect> {
    // Attempts that ended left the step time-out timer armed; it goes with the run.
    let mut effects: Vec<Effect> = execution
        .step_timer
        .map(|due| Effect::CancelTimer(deadlines_timer(execution, due)))
        .into_iter()
        .collect();
    effects.extend(execution.steps.iter().filter_map(|(id, p)| match p.state {
        StepState::AwaitingAnswers { .. } => Some(Effect::CancelTimer(question_deadline(
            execution, id, p.attempt,
        ))),
        StepState::RetryWaiting { .. } => {
            Some(Effect::CancelTimer(retry(execution, id, p.attempt)))
        }
        _ => None,
    }));
    if execution
        .workflow
        .configuration
        .constraints
        .max_execution_time
        .is_some()
    {
        effects.push(Effect::CancelTimer(deadline(execution)));
    }
    if execution.escalation_policy().after_minutes.is_some() {
        effects.push(Effect::CancelTimer(escalation_due(execution)));
    }
    if stop_calls {
        effects.push(Effect::StopCalls {
            execution_id: execution.id,
            step: None,
        });
    }
    effects
}

/// Arms the execution's step time-out timer for the time the state says, while the run goes
/// on. That is the latest arming even when the state holds events stored after the one whose
/// effect this is: performing an earlier event's effect again never puts back an earlier
/// schedule over a later one (they share a subject).
fn arm_deadlines_timer(execution: &Execution) -> Option<Effect> {
    let due = execution.step_timer?;
    (!execution.status.is_finished()).then(|| Effect::StartTimer {
        timer: deadlines_timer(execution, due),
        when: When::At(due),
    })
}

fn deadlines_timer(execution: &Execution, due: DateTime<Utc>) -> Timer {
    Timer::StepDeadlines {
        workflow_id: execution.workflow.id,
        execution_id: execution.id,
        due,
    }
}

fn retry(execution: &Execution, step: &StepId, attempt: u32) -> Timer {
    Timer::StepRetry {
        workflow_id: execution.workflow.id,
        execution_id: execution.id,
        step_id: step.clone(),
        attempt,
    }
}

fn question_deadline(execution: &Execution, step: &StepId, attempt: u32) -> Timer {
    Timer::QuestionDeadline {
        workflow_id: execution.workflow.id,
        execution_id: execution.id,
        step_id: step.clone(),
        attempt,
    }
}

fn escalation_due(execution: &Execution) -> Timer {
    Timer::EscalationDue {
        workflow_id: execution.workflow.id,
        execution_id: execution.id,
    }
}

fn deadline(execution: &Execution) -> Timer {
    Timer::ExecutionDeadline {
        workflow_id: execution.workflow.id,
        execution_id: execution.id,
    }
}

//! Given events, when a command, then events — and properties over random workflows.

use cadre_proto::events::{
    AgentRecord, AskedQuestion, AssignmentReason, CallUsage, FailureCause, ParentStep,
    QuestionAnswered, QuestionsAsked, RecordFigure, Request, Resolution, StepAttempt,
    StepCompleted, StepFailed, StepReviewed, StepStarted, TaskHandedOff,
};
use cadre_proto::model::{
    AgentProfile, Constraints, Coordination, DecisionMaking, EscalationRung, MissedDeadline,
    ModelParameters, PhaseMode, RiskLead, StepResult, StepType, TokenUsage, TriggerReason,
    WorkflowConfiguration, WorkflowDefinition, WorkflowPhase, WorkflowStep, WorkflowType,
};
use cadre_proto::timers::{Timer, When};
use cadre_proto::{AgentId, Event, EventId, ExecutionId, StepId, TenantId, WorkflowId, subjects};
use proptest::prelude::*;

use chrono::{DateTime, TimeDelta, Utc};

use super::{Command, Start, State, Status, TransitionRefused, decide, effects, evolve, started};
use crate::domain::Effect;
use crate::domain::validation::validate_workflow;

/// The time of every decision in these tests: the core never reads a clock.
fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-29T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn agent(name: &str, skills: &[&str]) -> AgentProfile {
    AgentProfile {
        id: AgentId::new(),
        name: name.into(),
        role: name.to_lowercase(),
        backstory: String::new(),
        skills: skills.iter().map(|s| s.to_string()).collect(),
        provider: "offline".into(),
        model: "offline-1".into(),
        model_parameters: ModelParameters::default(),
        fallback: None,
    }
}

fn step(id: &str, deps: &[&str], skills: &[&str]) -> WorkflowStep {
    WorkflowStep {
        id: StepId::parse(id).unwrap(),
        name: format!("Step {id}"),
        description: String::new(),
        step_type: StepType::Analysis,
        assigned_agent_role: None,
        preferred_agent_id: None,
        required_skills: skills.iter().map(|s| s.to_string()).collect(),
        depends_on: deps.iter().map(|d| StepId::parse(*d).unwrap()).collect(),
        can_run_in_parallel: true,
        instructions: "do it".into(),
        expected_output: "it, done".into(),
        timeout_minutes: None,
        validation_criteria: vec![],
        review_required: false,
        reviewer_role: None,
        condition: None,
        child_workflow_id: None,
        risks: Vec::new(),
        compensation: None,
    }
}

fn workflow(agents: &[AgentProfile], steps: Vec<WorkflowStep>) -> WorkflowDefinition {
    WorkflowDefinition {
        id: WorkflowId::new(),
        name: "Ship it".into(),
        description: String::new(),
        workflow_type: WorkflowType::Pipeline,
        participating_agents: agents.iter().map(|a| a.id).collect(),
        coordinator_agent_id: None,
        configuration: WorkflowConfiguration {
            steps,
            phases: vec![],
            coordination: Coordination::default(),
            constraints: Constraints::default(),
            triggers: Default::default(),
            escalation: Default::default(),
            saga: Default::default(),
        },
    }
}

/// The log of a run of `workflow` that has just started.
fn start(workflow: &WorkflowDefinition, agents: &[AgentProfile]) -> Vec<Event> {
    let start = Start {
        execution_id: ExecutionId::new(),
        trigger_reason: TriggerReason::Manual,
        triggered_by: None,
        workflow: workflow.clone(),
        agents: agents.to_vec(),
        input: Some(serde_json::json!({"priority": "high", "tickets": 3})),
        parent: None,
        records: Default::default(),
    };
    vec![Event::ExecutionStarted(Box::new(started(&start, 1, now())))]
}

fn fold(events: &[Event]) -> State {
    events.iter().fold(State::NotStarted, evolve)
}

/// What the API loads for a command that does not read the run's steps: the events of `log`
/// that `subjects::execution_facts` selects (its trailing `*` is one more token).
fn run_facts(log: &[Event]) -> Vec<Event> {
    let tenant = TenantId::default_tenant();
    let Some(Event::ExecutionStarted(start)) = log.first() else {
        return vec![];
    };
    let filter = subjects::execution_facts(&tenant, start.workflow_id, start.execution_id);
    let prefix = filter.strip_suffix('*').unwrap();
    log.iter()
        .filter(|e| {
            e.nats_subject(&tenant)
                .strip_prefix(prefix)
                .is_some_and(|fact| !fact.contains('.'))
        })
        .cloned()
        .collect()
}

fn scheduled(events: &[Event]) -> Vec<(String, u32, AgentId)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::StepScheduled(s) => Some((s.step.id.to_string(), s.attempt, s.agent.id)),
            _ => None,
        })
        .collect()
}

/// The one `StepScheduled` of a decision (handoffs may come before it).
fn the_scheduled(events: &[Event]) -> &Event {
    let mut scheduled = events
        .iter()
        .filter(|e| matches!(e, Event::StepScheduled(_)));
    let (Some(one), None) = (scheduled.next(), scheduled.next()) else {
        panic!("expected one StepScheduled in {events:?}")
    };
    one
}

/// The handoffs of a decision, as the records its schedulings carry.
fn handoffs(events: &[Event]) -> Vec<TaskHandedOff> {
    events
        .iter()
        .flat_map(|e| match e {
            Event::StepScheduled(s) => s.handed_off().collect(),
            _ => Vec::new(),
        })
        .collect()
}

fn completed(of: &Event) -> Event {
    let Event::StepScheduled(s) = of else {
        panic!("not a StepScheduled: {of:?}")
    };
    Event::StepCompleted(Box::new(StepCompleted {
        attempt: StepAttempt::of(s),
        result: StepResult {
            summary: format!("did {}", s.step.id),
            output: format!("output of {}", s.step.id),
            ..StepResult::default()
        },
        provider: "offline".into(),
        model: "offline-1".into(),
        duration_ms: 1,
        cost_usd: None,
        knowledge_used: Vec::new(),
        knowledge_handed_on: Vec::new(),
        fallback_reason: None,
        told: vec![],
    }))
}

/// The attempt `of` asks `questions` (addressee, text) instead of completing.
fn asked(of: &Event, questions: &[(Option<&str>, &str)]) -> Event {
    let Event::StepScheduled(s) = of else {
        panic!("not a StepScheduled: {of:?}")
    };
    Event::QuestionsAsked(QuestionsAsked {
        attempt: StepAttempt::of(s),
        questions: questions
            .iter()
            .enumerate()
            .map(|(i, (to, text))| AskedQuestion {
                question_id: format!("q{}", i + 1),
                to: to.map(str::to_owned),
                text: (*text).to_owned(),
            })
            .collect(),
        usage: CallUsage {
            provider: "offline".into(),
            model: "offline-1".into(),
            tokens: TokenUsage::default(),
            cost_usd: None,
        },
    })
}

/// The teammate a `QuestionAssigned` went to answers it (or, with `None`, cannot).
fn answered(assigned: &Event, answer: Option<&str>) -> Event {
    let Event::QuestionAssigned(q) = assigned else {
        panic!("not a QuestionAssigned: {assigned:?}")
    };
    Event::QuestionAnswered(QuestionAnswered {
        execution_id: q.execution_id,
        workflow_id: q.workflow_id,
        step_id: q.step_id.clone(),
        attempt: q.attempt,
        question_id: q.question_id.clone(),
        agent_id: q.recipient.id,
        assigned_event_id: EventId::new(),
        answer: answer.map(str::to_owned),
        error: answer
            .is_none()
            .then(|| "HTTP 401 from the provider".to_owned()),
        usage: CallUsage {
            provider: "offline".into(),
            model: "offline-1".into(),
            tokens: TokenUsage::default(),
            cost_usd: None,
        },
    })
}

fn question_timer(assigned: &Event) -> Timer {
    let Event::QuestionAssigned(q) = assigned else {
        panic!("not a QuestionAssigned: {assigned:?}")
    };
    Timer::QuestionDeadline {
        workflow_id: q.workflow_id,
        execution_id: q.execution_id,
        step_id: q.step_id.clone(),
        attempt: q.attempt,
    }
}

fn failed(of: &Event, error: &str) -> Event {
    let Event::StepScheduled(s) = of else {
        panic!("not a StepScheduled: {of:?}")
    };
    Event::StepFailed(StepFailed {
        attempt: StepAttempt::of(s),
        retryable: true,
        error: error.into(),
        usage: None,
    })
}

fn advance(log: &[Event]) -> Vec<Event> {
    decide(&Command::Advance, &fold(log), now()).unwrap()
}

#[test]
fn the_records_a_run_started_with_break_a_tie_and_the_reason_says_so() {
    let team = vec![agent("Ada", &["rust"]), agent("Bo", &["rust"])];
    let wf = workflow(&team, vec![step("build", &[], &["rust"])]);
    let without_records = start(&wf, &team);
    let first = advance(&without_records);
    assert_eq!(
        scheduled(&first),
        vec![("build".into(), 1, team[0].id)],
        "no records: participation order"
    );

    let mut with_records = without_records;
    let Event::ExecutionStarted(started) = &mut with_records[0] else {
        unreachable!()
    };
    let record = |success: f64| AgentRecord {
        attempts: 4,
        task_success: Some(success),
        ..AgentRecord::default()
    };
    started.records = [(team[0].id, record(0.5)), (team[1].id, record(1.0))].into();
    let first = advance(&with_records);
    assert_eq!(scheduled(&first), vec![("build".into(), 1, team[1].id)]);
    let Event::StepScheduled(s) = the_scheduled(&first) else {
        unreachable!()
    };
    let AssignmentReason::SkillMatch {
        tie_break: Some(tie_break),
        ..
    } = &s.reason
    else {
        panic!("a skill match the records decided: {:?}", s.reason)
    };
    assert_eq!(tie_break.figure, RecordFigure::TaskSuccess);
    assert_eq!(
        s.reason.describe(),
        "best skill match (rust), 0 active step(s); its record broke the tie: \
         task success: Bo 100 % over 4 attempts, Ada 50 % over 4 attempts"
    );
}

#[test]
fn a_pipeline_runs_in_dependency_order_then_completes() {
    let team = vec![
        agent("Ada", &["design"]),
        agent("Bo", &["rust"]),
        agent("Cy", &["review"]),
    ];
    let wf = workflow(
        &team,
        vec![
            step("design", &[], &["design"]),
            step("build", &["design"], &["rust"]),
            step("review", &["build"], &["review"]),
        ],
    );
    let mut log = start(&wf, &team);

    let first = advance(&log);
    assert_eq!(scheduled(&first), vec![("design".into(), 1, team[0].id)]);
    let Event::StepScheduled(s) = &first[0] else {
        unreachable!()
    };
    assert!(matches!(s.reason, AssignmentReason::SkillMatch { .. }));
    log.extend(first.clone());
    assert!(
        advance(&log).is_empty(),
        "deciding again on the same state adds nothing"
    );

    log.push(completed(&first[0]));
    let second = advance(&log);
    assert_eq!(scheduled(&second), vec![("build".into(), 1, team[1].id)]);
    log.extend(second.clone());
    log.push(completed(the_scheduled(&second)));
    let third = advance(&log);
    assert_eq!(scheduled(&third), vec![("review".into(), 1, team[2].id)]);
    log.extend(third.clone());
    log.push(completed(the_scheduled(&third)));

    let end = advance(&log);
    let [Event::ExecutionCompleted(done)] = end.as_slice() else {
        panic!("expected completion, got {end:?}")
    };
    assert_eq!(
        done.final_output["review"]["summary"], "did review",
        "sinks only"
    );
    assert!(done.final_output.get("design").is_none());
    log.extend(end);
    assert!(
        advance(&log).is_empty(),
        "a finished execution decides nothing"
    );
}

#[test]
fn independent_steps_run_in_parallel_unless_the_workflow_forbids_it() {
    let team = vec![agent("Ada", &[]), agent("Bo", &[])];
    let steps = vec![
        step("a", &[], &[]),
        step("b", &[], &[]),
        step("c", &["a", "b"], &[]),
    ];
    let wf = workflow(&team, steps.clone());
    let log = start(&wf, &team);
    let ready = advance(&log);
    assert_eq!(
        scheduled(&ready),
        vec![("a".into(), 1, team[0].id), ("b".into(), 1, team[1].id)],
        "spread over the least loaded agents"
    );

    let mut serial = workflow(&team, steps);
    serial.configuration.constraints.allow_parallel_execution = Some(false);
    let mut log = start(&serial, &team);
    let first = advance(&log);
    assert_eq!(scheduled(&first).len(), 1);
    log.extend(first.clone());
    assert!(advance(&log).is_empty(), "b waits while a runs");
    log.push(completed(&first[0]));
    assert_eq!(
        scheduled(&advance(&log)),
        vec![("b".into(), 1, team[0].id)],
        "both idle again: participation order decides"
    );
}

/// The retry of a failed attempt: its backoff is recorded, its timer fires, and the next
/// decision hands out the next attempt (returned; the rest is appended to `log`).
fn after_backoff(log: &mut Vec<Event>) -> Vec<Event> {
    let waiting = advance(log);
    let [Event::StepRetryScheduled(retry)] = waiting.as_slice() else {
        panic!("expected a retry backoff, got {waiting:?}")
    };
    let timer = Timer::StepRetry {
        workflow_id: retry.attempt.workflow_id,
        execution_id: retry.attempt.execution_id,
        step_id: retry.attempt.step_id.clone(),
        attempt: retry.attempt.number,
    };
    log.extend(waiting.clone());
    assert!(advance(log).is_empty(), "nothing happens before the timer");
    let due = fire(log, timer);
    assert!(
        matches!(due.as_slice(), [Event::StepRetryDue(_)]),
        "{due:?}"
    );
    log.extend(due);
    advance(log)
}

#[test]
fn a_failed_step_waits_a_doubling_jittered_backoff_on_a_timer_between_attempts() {
    let team = vec![agent("Ada", &[])];
    let mut wf = workflow(&team, vec![step("only", &[], &[])]);
    wf.configuration.constraints.max_retries = Some(10);
    wf.configuration.constraints.retry_backoff = Some(cadre_proto::model::RetryBackoff {
        initial_seconds: 2.0,
        max_seconds: 10.0,
    });
    let mut log = start(&wf, &team);
    let mut attempt = advance(&log);
    log.extend(attempt.clone());
    let mut waits = Vec::new();
    for _ in 0..5 {
        log.push(failed(&attempt[0], "HTTP 503"));
        let decided = advance(&log);
        let [Event::StepRetryScheduled(retry)] = decided.as_slice() else {
            panic!("expected a retry backoff, got {decided:?}")
        };
        assert_eq!(retry.error, "HTTP 503");
        let timer = Timer::StepRetry {
            workflow_id: wf.id,
            execution_id: retry.attempt.execution_id,
            step_id: retry.attempt.step_id.clone(),
            attempt: retry.attempt.number,
        };
        assert_eq!(
            effects(&evolve(fold(&log), &decided[0]), &decided[0], now()),
            vec![Effect::StartTimer {
                timer: timer.clone(),
                when: When::At(retry.retry_at),
            }]
        );
        waits.push((retry.retry_at - now()).num_milliseconds());
        assert_eq!(advance(&log), decided, "the same decision every time");
        log.extend(decided);
        log.extend(fire(&log, timer));
        attempt = advance(&log);
        log.extend(attempt.clone());
    }
    // 2, 4, 8, 10, 10 s, each jittered down by up to half.
    for (wait, full) in waits.iter().zip([2_000, 4_000, 8_000, 10_000, 10_000]) {
        assert!((full / 2..=full).contains(wait), "{waits:?}");
    }

    // A run that ends while a step waits for its retry disarms the timer.
    log.push(failed(&attempt[0], "HTTP 503"));
    log.extend(advance(&log));
    let cancelled = decide(&Command::Cancel(Request::default()), &fold(&log), now()).unwrap();
    let state = evolve(fold(&log), &cancelled[0]);
    assert!(
        effects(&state, &cancelled[0], now())
            .iter()
            .any(|e| matches!(e, Effect::CancelTimer(Timer::StepRetry { attempt: 6, .. })))
    );
}

#[test]
fn a_failed_step_is_retried_then_fails_the_execution() {
    let team = vec![agent("Ada", &[])];
    let mut wf = workflow(&team, vec![step("only", &[], &[])]);
    wf.configuration.constraints.max_retries = Some(1);
    let mut log = start(&wf, &team);

    let first = advance(&log);
    log.extend(first.clone());
    log.push(failed(&first[0], "provider returned 400"));
    let retry = after_backoff(&mut log);
    assert_eq!(scheduled(&retry), vec![("only".into(), 2, team[0].id)]);
    log.extend(retry.clone());

    // The first attempt's late completion no longer counts.
    log.push(completed(&first[0]));
    assert!(advance(&log).is_empty());

    log.push(failed(&retry[0], "provider returned 400"));
    let end = advance(&log);
    let [Event::ExecutionFailed(failure)] = end.as_slice() else {
        panic!("expected failure, got {end:?}")
    };
    assert_eq!(
        failure.cause,
        FailureCause::StepFailed {
            step_id: StepId::parse("only").unwrap()
        }
    );
    assert!(
        failure
            .error
            .contains("after 2 attempt(s): provider returned 400")
    );
}

#[test]
fn an_error_no_retry_fixes_fails_the_execution_whatever_retries_are_left() {
    let team = vec![agent("Ada", &[])];
    let mut wf = workflow(&team, vec![step("only", &[], &[])]);
    wf.configuration.constraints.max_retries = Some(3);
    let mut log = start(&wf, &team);

    let first = advance(&log);
    log.extend(first.clone());
    let Event::StepFailed(mut refused) = failed(&first[0], "HTTP 401: invalid_api_key") else {
        unreachable!()
    };
    refused.retryable = false;
    log.push(Event::StepFailed(refused));
    let end = advance(&log);
    let [Event::ExecutionFailed(failure)] = end.as_slice() else {
        panic!("expected failure without a retry, got {end:?}")
    };
    assert!(
        failure
            .error
            .contains("an error another attempt cannot fix: HTTP 401: invalid_api_key"),
        "{}",
        failure.error
    );
}

#[test]
fn duplicates_and_strays_change_nothing() {
    let team = vec![agent("Ada", &[])];
    let wf = workflow(&team, vec![step("a", &[], &[]), step("b", &["a"], &[])]);
    let mut log = start(&wf, &team);
    let first = advance(&log);
    log.extend(first.clone());
    let Event::StepScheduled(s) = &first[0] else {
        unreachable!()
    };
    log.push(Event::StepStarted(StepStarted {
        attempt: StepAttempt::of(s),
        scheduled_event_id: EventId::new(),
        timeout_at: None,
    }));
    log.push(completed(&first[0]));
    let once = fold(&log);

    let mut twice = log.clone();
    twice.extend(first.clone()); // the StepScheduled again
    twice.push(completed(&first[0])); // and its completion again
    assert_eq!(fold(&twice), once);
    let advance_at = |state: &State| decide(&Command::Advance, state, now()).unwrap();
    assert_eq!(advance_at(&fold(&twice)), advance_at(&once));
    assert_eq!(
        fold(&[log.clone(), start(&wf, &team)].concat()),
        once,
        "a second start changes nothing"
    );
}

#[test]
fn a_scheduling_stored_again_after_its_attempt_ended_hands_nothing_to_the_workers() {
    let team = vec![agent("Ada", &[])];
    let wf = workflow(&team, vec![step("a", &[], &[]), step("b", &["a"], &[])]);
    let mut log = start(&wf, &team);
    let first = advance(&log);
    log.extend(first.clone());
    let scheduled = the_scheduled(&first).clone();
    let Event::StepScheduled(s) = &scheduled else {
        unreachable!()
    };
    let dispatch = Effect::Dispatch {
        provider: s.agent.provider.clone(),
    };
    assert!(effects(&fold(&log), &scheduled, now()).contains(&dispatch));

    // Its attempt completed, then a copy of the scheduling was stored again (re-published past
    // the duplicate window): read back, it must not reach a worker, which would find it the
    // step's latest event and run the attempt again.
    log.push(completed(&scheduled));
    log.push(scheduled.clone());
    assert!(!effects(&fold(&log), &scheduled, now()).contains(&dispatch));
}

fn fire(log: &[Event], timer: Timer) -> Vec<Event> {
    decide(&Command::TimerFired(timer), &fold(log), now()).unwrap()
}

/// The execution's step time-out timer, fired for the deadline of the attempt `of` schedules
/// (for the time it was scheduled, when it has none).
fn deadlines_timer(of: &Event) -> Timer {
    let Event::StepScheduled(s) = of else {
        panic!("not a StepScheduled: {of:?}")
    };
    Timer::StepDeadlines {
        workflow_id: s.workflow_id,
        execution_id: s.execution_id,
        due: s.timeout_at.unwrap_or_else(now),
    }
}

/// The timer of the attempt `of` schedules, as releases that armed one per attempt armed it.
fn attempt_timer(of: &Event) -> Timer {
    let Event::StepScheduled(s) = of else {
        panic!("not a StepScheduled: {of:?}")
    };
    Timer::StepTimeout {
        workflow_id: s.workflow_id,
        execution_id: s.execution_id,
        step_id: s.step.id.clone(),
        attempt: s.attempt,
    }
}

fn deadline_of(log: &[Event]) -> Timer {
    let Event::ExecutionStarted(e) = &log[0] else {
        panic!("not a start")
    };
    Timer::ExecutionDeadline {
        workflow_id: e.workflow_id,
        execution_id: e.execution_id,
    }
}

fn status(log: &[Event]) -> Status {
    match fold(log) {
        State::Started(e) => e.status,
        State::NotStarted => panic!("not started"),
    }
}

#[test]
fn an_attempt_that_runs_past_its_timeout_is_timed_out_then_retried_then_fails_the_run() {
    let team = vec![agent("Ada", &[])];
    let mut slow = step("slow", &[], &[]);
    slow.timeout_minutes = Some(0.5);
    let mut wf = workflow(&team, vec![slow]);
    wf.configuration.constraints.max_retries = Some(1);
    let mut log = start(&wf, &team);

    let first = advance(&log);
    let Event::StepScheduled(s) = &first[0] else {
        unreachable!()
    };
    assert_eq!(s.timeout_at, Some(now() + TimeDelta::seconds(30)));
    log.extend(first.clone());
    assert_eq!(
        effects(&fold(&log), &first[0], now()),
        vec![
            Effect::Dispatch {
                provider: s.agent.provider.clone()
            },
            Effect::StartTimer {
                timer: deadlines_timer(&first[0]),
                when: When::At(now() + TimeDelta::seconds(30))
            }
        ]
    );

    let timed_out = fire(&log, deadlines_timer(&first[0]));
    let [Event::StepTimedOut(t), Event::StepDeadlinesChecked(checked)] = timed_out.as_slice()
    else {
        panic!("expected a time-out and the check, got {timed_out:?}")
    };
    assert_eq!((t.attempt.number, t.timeout_minutes), (1, 0.5));
    assert_eq!(checked.next_at, None, "nothing else runs");
    log.extend(timed_out.clone());
    assert!(
        effects(&fold(&log), &timed_out[0], now()).contains(&Effect::StopCalls {
            execution_id: s.execution_id,
            step: Some((s.step.id.clone(), 1)),
        }),
        "the worker's call for the attempt is stopped"
    );
    assert!(
        fire(&log, deadlines_timer(&first[0])).is_empty(),
        "a timer firing twice changes nothing"
    );

    let retry = after_backoff(&mut log);
    assert_eq!(scheduled(&retry), vec![("slow".into(), 2, team[0].id)]);
    log.extend(retry.clone());
    log.push(completed(&first[0]));
    assert!(
        advance(&log).is_empty(),
        "the timed-out attempt's late answer is ignored"
    );
    assert!(
        fire(&log, attempt_timer(&first[0])).is_empty(),
        "attempt 1's timer, as a release before armed it, cannot time out attempt 2"
    );

    log.extend(fire(&log, deadlines_timer(&retry[0])));
    let end = advance(&log);
    let [Event::ExecutionFailed(failure)] = end.as_slice() else {
        panic!("expected failure, got {end:?}")
    };
    assert!(
        failure
            .error
            .contains("failed after 2 attempt(s): timed out after 30 s"),
        "{}",
        failure.error
    );
}

#[test]
fn a_timer_that_fires_after_its_step_ended_changes_nothing() {
    let team = vec![agent("Ada", &[])];
    let mut quick = step("quick", &[], &[]);
    quick.timeout_minutes = Some(1.0);
    let wf = workflow(&team, vec![quick, step("next", &["quick"], &[])]);
    let mut log = start(&wf, &team);
    let first = advance(&log);
    log.extend(first.clone());
    log.push(completed(&first[0]));
    assert_eq!(
        effects(&fold(&log), log.last().unwrap(), now()),
        vec![],
        "an attempt that ends leaves the timer armed: it may guard later attempts"
    );
    let checked = fire(&log, deadlines_timer(&first[0]));
    let [Event::StepDeadlinesChecked(c)] = checked.as_slice() else {
        panic!("expected only the check, got {checked:?}")
    };
    assert_eq!(c.next_at, None);
    log.extend(checked);
    assert!(fire(&log, deadlines_timer(&first[0])).is_empty());
    assert!(fire(&log, attempt_timer(&first[0])).is_empty());
}

/// The step time-out timer effects of every event of `log`, each on the state it was folded
/// into, as the coordinator performs them.
fn timer_effects(log: &[Event]) -> Vec<Effect> {
    (1..=log.len())
        .flat_map(|n| effects(&fold(&log[..n]), &log[n - 1], now()))
        .filter(|e| {
            matches!(
                e,
                Effect::StartTimer {
                    timer: Timer::StepDeadlines { .. },
                    ..
                } | Effect::CancelTimer(Timer::StepDeadlines { .. })
            )
        })
        .collect()
}

#[test]
fn one_timer_guards_a_pipeline_armed_once_and_purged_once() {
    let team = vec![agent("Ada", &[])];
    let steps: Vec<WorkflowStep> = ["a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let before = ["a", "b"];
            let mut s = step(id, if i == 0 { &[] } else { &before[i - 1..i] }, &[]);
            s.timeout_minutes = Some(1.0);
            s
        })
        .collect();
    let wf = workflow(&team, steps);
    let mut log = start(&wf, &team);
    let mut armed = vec![];
    for minute in 0..3 {
        let at = now() + TimeDelta::minutes(minute) / 60;
        let next = decide(&Command::Advance, &fold(&log), at).unwrap();
        let Event::StepScheduled(s) = &next[0] else {
            panic!("expected a scheduling, got {next:?}")
        };
        armed.push(s.arms_step_timer == Some(true));
        log.extend(next.clone());
        log.push(completed(&next[0]));
    }
    assert_eq!(
        armed,
        [true, false, false],
        "later deadlines are checked when the first fires"
    );
    log.extend(advance(&log));
    assert_eq!(status(&log), Status::Completed);
    let due = now() + TimeDelta::minutes(1);
    let timer = Timer::StepDeadlines {
        workflow_id: wf.id,
        execution_id: match &log[0] {
            Event::ExecutionStarted(e) => e.execution_id,
            _ => unreachable!(),
        },
        due,
    };
    assert_eq!(
        timer_effects(&log),
        vec![
            Effect::StartTimer {
                timer: timer.clone(),
                when: When::At(due)
            },
            Effect::CancelTimer(timer)
        ],
        "one arm and one purge for the run"
    );
}

#[test]
fn a_deadline_before_the_armed_one_arms_the_timer_again() {
    let team = vec![agent("Ada", &[]), agent("Bo", &[])];
    let mut long = step("long", &[], &[]);
    long.timeout_minutes = Some(10.0);
    let mut short = step("short", &[], &[]);
    short.timeout_minutes = Some(1.0);
    let mut log = start(&workflow(&team, vec![long, short]), &team);
    let both = advance(&log);
    let arms: Vec<(&str, Option<bool>)> = both
        .iter()
        .filter_map(|e| match e {
            Event::StepScheduled(s) => Some((s.step.id.as_str(), s.arms_step_timer)),
            _ => None,
        })
        .collect();
    assert_eq!(arms, [("long", Some(true)), ("short", Some(true))]);
    log.extend(both.clone());
    let State::Started(execution) = fold(&log) else {
        unreachable!()
    };
    let short_due = now() + TimeDelta::minutes(1);
    assert_eq!(execution.step_timer, Some(short_due));
    // The long step's arming performed again (a redelivery) after the short one's: the timer
    // is armed as the state says now, never back for the later deadline.
    assert_eq!(
        effects(&fold(&log), &both[0], now())
            .into_iter()
            .filter(|e| matches!(e, Effect::StartTimer { .. }))
            .collect::<Vec<_>>(),
        vec![Effect::StartTimer {
            timer: deadlines_timer(&both[1]),
            when: When::At(short_due)
        }]
    );
}

#[test]
fn a_scheduling_stored_by_a_release_before_arms_its_own_attempts_timer() {
    let team = vec![agent("Ada", &[])];
    let mut only = step("only", &[], &[]);
    only.timeout_minutes = Some(1.0);
    let mut log = start(&workflow(&team, vec![only]), &team);
    let mut first = advance(&log);
    let Event::StepScheduled(s) = &mut first[0] else {
        unreachable!()
    };
    s.arms_step_timer = None;
    log.extend(first.clone());
    assert!(
        effects(&fold(&log), &first[0], now()).contains(&Effect::StartTimer {
            timer: attempt_timer(&first[0]),
            when: When::At(now() + TimeDelta::minutes(1))
        })
    );
}

#[test]
fn a_firing_with_nothing_due_arms_the_timer_for_the_next_running_deadline() {
    let team = vec![agent("Ada", &[]), agent("Bo", &[])];
    let mut quick = step("quick", &[], &[]);
    quick.timeout_minutes = Some(1.0);
    let mut slow = step("slow", &[], &[]);
    slow.timeout_minutes = Some(5.0);
    let mut log = start(&workflow(&team, vec![quick, slow]), &team);
    let both = advance(&log);
    log.extend(both.clone());
    log.push(completed(&both[0]));

    let checked = fire(&log, deadlines_timer(&both[0]));
    let [Event::StepDeadlinesChecked(c)] = checked.as_slice() else {
        panic!("expected only the check, got {checked:?}")
    };
    let next = now() + TimeDelta::minutes(5);
    assert_eq!(c.next_at, Some(next), "slow still runs");
    log.extend(checked.clone());
    assert_eq!(
        effects(&fold(&log), &checked[0], now()),
        vec![Effect::StartTimer {
            timer: deadlines_timer(&both[1]),
            when: When::At(next)
        }]
    );
    assert!(
        fire(&log, deadlines_timer(&both[0])).is_empty(),
        "a firing checked already changes nothing"
    );
    let mut copied = log.clone();
    copied.push(checked[0].clone());
    assert_eq!(
        fold(&copied),
        fold(&log),
        "a copy of the check (stored again) leaves the timer as armed"
    );

    let due = fire(&log, deadlines_timer(&both[1]));
    assert!(
        matches!(due.as_slice(), [Event::StepTimedOut(t), Event::StepDeadlinesChecked(c)]
            if t.attempt.step_id.as_str() == "slow" && c.next_at.is_none()),
        "{due:?}"
    );
    assert!(
        matches!(
            fire(&log, attempt_timer(&both[1])).as_slice(),
            [Event::StepTimedOut(_)]
        ),
        "a timer a release before armed for the attempt times it out, and checks nothing else"
    );
}

#[test]
fn a_timer_due_longer_ago_than_a_fired_timer_is_kept_counts_as_not_armed() {
    let team = vec![agent("Ada", &[])];
    let mut first = step("first", &[], &[]);
    first.timeout_minutes = Some(1.0);
    let mut then = step("then", &["first"], &[]);
    then.timeout_minutes = Some(1.0);
    let mut log = start(&workflow(&team, vec![first, then]), &team);
    let a = advance(&log);
    log.extend(a.clone());
    log.push(completed(&a[0]));
    let much_later = now() + TimeDelta::days(2);
    let b = decide(&Command::Advance, &fold(&log), much_later).unwrap();
    let Event::StepScheduled(s) = &b[0] else {
        panic!("expected a scheduling, got {b:?}")
    };
    assert_eq!(
        s.arms_step_timer,
        Some(true),
        "the first deadline's firing may have expired unheard"
    );
}

#[test]
fn an_execution_past_its_time_limit_fails_with_reason_time_limit() {
    let team = vec![agent("Ada", &[])];
    let mut wf = workflow(&team, vec![step("a", &[], &[])]);
    wf.configuration.constraints.max_execution_time = Some(90);
    let mut log = start(&wf, &team);
    let Event::ExecutionStarted(e) = log[0].clone() else {
        unreachable!()
    };
    let at = now() + TimeDelta::seconds(90);
    assert_eq!(e.deadline, Some(at));
    assert_eq!(
        effects(&fold(&log), &log[0], now()),
        vec![Effect::StartTimer {
            timer: deadline_of(&log),
            when: When::At(at)
        }]
    );
    log.extend(advance(&log));

    let end = fire(&log, deadline_of(&log));
    let [Event::ExecutionFailed(failure)] = end.as_slice() else {
        panic!("expected failure, got {end:?}")
    };
    assert_eq!(
        failure.cause,
        FailureCause::TimeLimit {
            max_execution_seconds: 90
        }
    );
    assert!(failure.error.starts_with("time limit"));
    log.extend(end.clone());
    assert!(
        effects(&fold(&log), &end[0], now()).contains(&Effect::StopCalls {
            execution_id: e.execution_id,
            step: None
        }),
        "a failed run stops its running calls"
    );
    assert!(fire(&log, deadline_of(&log)).is_empty());
    assert!(advance(&log).is_empty());
}

#[test]
fn pause_lets_running_steps_finish_and_schedules_nothing_until_resumed() {
    let team = vec![agent("Ada", &[])];
    let wf = workflow(&team, vec![step("a", &[], &[]), step("b", &["a"], &[])]);
    let mut log = start(&wf, &team);
    let first = advance(&log);
    log.extend(first.clone());
    let control = |log: &[Event], command: Command| decide(&command, &fold(log), now());

    log.extend(control(&log, Command::Pause(Request::default())).unwrap());
    assert_eq!(status(&log), Status::Paused);
    assert_eq!(
        control(&log, Command::Pause(Request::default())),
        Err(TransitionRefused::Invalid {
            status: "paused",
            wanted: "paused"
        })
    );
    log.push(completed(&first[0]));
    assert!(advance(&log).is_empty(), "b waits while paused");

    log.extend(control(&log, Command::Resume(Request::default())).unwrap());
    assert_eq!(scheduled(&advance(&log)), vec![("b".into(), 1, team[0].id)]);
}

#[test]
fn cancel_ends_the_run_and_stops_its_calls_and_a_finished_run_refuses_control() {
    let team = vec![agent("Ada", &[])];
    let mut wf = workflow(&team, vec![step("a", &[], &[])]);
    wf.configuration.steps[0].timeout_minutes = Some(5.0);
    let mut log = start(&wf, &team);
    let first = advance(&log);
    log.extend(first.clone());
    let request = Request {
        requested_by: Some("ops".into()),
        reason: Some("wrong input".into()),
    };
    let cancelled = decide(&Command::Cancel(request), &fold(&log), now()).unwrap();
    log.extend(cancelled.clone());
    assert_eq!(status(&log), Status::Cancelled);
    let Event::StepScheduled(s) = &first[0] else {
        unreachable!()
    };
    assert_eq!(
        effects(&fold(&log), &cancelled[0], now()),
        vec![
            Effect::CancelTimer(deadlines_timer(&first[0])),
            Effect::StopCalls {
                execution_id: s.execution_id,
                step: None
            }
        ]
    );
    log.push(completed(&first[0]));
    assert!(advance(&log).is_empty(), "nothing follows a cancel");
    for command in [
        Command::Cancel(Request::default()),
        Command::Pause(Request::default()),
        Command::Resume(Request::default()),
    ] {
        assert!(matches!(
            decide(&command, &fold(&log), now()),
            Err(TransitionRefused::Invalid {
                status: "cancelled",
                ..
            })
        ));
    }
    assert_eq!(
        decide(
            &Command::Cancel(Request::default()),
            &State::NotStarted,
            now()
        ),
        Err(TransitionRefused::NotStarted)
    );
}

#[test]
fn a_run_that_cannot_go_on_fails_with_a_recorded_reason() {
    let wf = workflow(&[agent("Ada", &[])], vec![step("a", &[], &[])]);
    let log = start(&wf, &[]);
    let end = advance(&log);
    let [Event::ExecutionFailed(failure)] = end.as_slice() else {
        panic!("expected failure, got {end:?}")
    };
    assert_eq!(failure.cause, FailureCause::Stuck);
    assert!(failure.error.contains("no participating agent"));
}

fn skipped(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::StepSkipped(s) => Some(s.step_id.to_string()),
            _ => None,
        })
        .collect()
}

/// Runs the log to its end, completing every scheduled step; returns the log.
fn run_to_end(mut log: Vec<Event>) -> Vec<Event> {
    for _ in 0..100 {
        let decided = advance(&log);
        if decided.is_empty() {
            break;
        }
        let completions: Vec<Event> = decided
            .iter()
            .filter(|e| matches!(e, Event::StepScheduled(_)))
            .map(completed)
            .collect();
        log.extend(decided);
        log.extend(completions);
    }
    log
}

#[test]
fn a_false_condition_skips_its_step_and_its_dependants_go_on() {
    let team = vec![agent("Ada", &[])];
    let mut hotfix = step("hotfix", &["triage"], &[]);
    hotfix.condition =
        Some("input.priority == 'high' && steps.triage.status == 'completed'".into());
    let mut polish = step("polish", &["triage"], &[]);
    polish.condition = Some("input.tickets > 5".into());
    let wf = workflow(
        &team,
        vec![
            step("triage", &[], &[]),
            hotfix,
            polish,
            step("release", &["hotfix", "polish"], &[]),
        ],
    );
    let mut log = start(&wf, &team);
    let first = advance(&log);
    log.extend(first.clone());
    log.push(completed(&first[0]));

    let next = advance(&log);
    assert_eq!(skipped(&next), vec!["polish"], "skips come first");
    log.extend(next);
    let next = advance(&log);
    assert_eq!(scheduled(&next), vec![("hotfix".into(), 1, team[0].id)]);
    log.extend(next.clone());
    log.push(completed(&next[0]));
    let next = advance(&log);
    assert_eq!(
        scheduled(&next),
        vec![("release".into(), 1, team[0].id)],
        "a skipped dependency counts as done"
    );
    let log = run_to_end(log);
    let Some(Event::ExecutionCompleted(done)) = log.last() else {
        panic!("expected completion: {:?}", log.last())
    };
    assert!(done.final_output.get("release").is_some());
    assert!(done.final_output.get("polish").is_none());
}

#[test]
fn a_run_whose_last_step_is_skipped_delivers_what_came_before_it() {
    let team = vec![agent("Ada", &[])];
    let mut release = step("release", &["build"], &[]);
    release.condition = Some("input.tickets > 5".into());
    let wf = workflow(&team, vec![step("build", &[], &[]), release]);
    let log = run_to_end(start(&wf, &team));
    let Some(Event::ExecutionCompleted(done)) = log.last() else {
        panic!("expected completion: {:?}", log.last())
    };
    assert_eq!(done.final_output["build"]["output"], "output of build");
    assert!(done.final_output.get("release").is_none());
}

#[test]
fn a_condition_that_cannot_be_evaluated_fails_the_run_with_the_reason() {
    let team = vec![agent("Ada", &[])];
    let mut odd = step("odd", &[], &[]);
    odd.condition = Some("input.priority".into());
    let log = start(&workflow(&team, vec![odd]), &team);
    let end = advance(&log);
    let [Event::ExecutionFailed(failure)] = end.as_slice() else {
        panic!("expected failure, got {end:?}")
    };
    assert_eq!(
        failure.cause,
        FailureCause::ConditionFailed {
            step_id: StepId::parse("odd").unwrap()
        }
    );
    assert!(
        failure
            .error
            .starts_with("the condition of step 'Step odd' gave"),
        "{}",
        failure.error
    );
}

#[test]
fn phases_run_one_after_another_in_their_mode() {
    let team = vec![agent("Ada", &[]), agent("Bo", &[])];
    let mut wf = workflow(
        &team,
        vec![
            step("design", &[], &[]),
            step("threats", &[], &[]),
            step("build", &[], &[]),
            step("test", &[], &[]),
            step("docs", &[], &[]),
        ],
    );
    wf.configuration.phases = vec![
        WorkflowPhase {
            name: "Analysis & Design".into(),
            mode: PhaseMode::Parallel,
            steps: vec![
                StepId::parse("design").unwrap(),
                StepId::parse("threats").unwrap(),
            ],
        },
        WorkflowPhase {
            name: "Core Implementation".into(),
            mode: PhaseMode::Sequential,
            steps: vec![
                StepId::parse("build").unwrap(),
                StepId::parse("test").unwrap(),
            ],
        },
    ];
    let mut log = start(&wf, &team);
    let first = advance(&log);
    let mut names: Vec<String> = scheduled(&first).into_iter().map(|s| s.0).collect();
    names.sort();
    assert_eq!(
        names,
        vec!["design", "docs", "threats"],
        "phase 1 in parallel, and the step in no phase"
    );
    log.extend(first.clone());
    log.push(completed(&first[0]));
    assert!(
        scheduled(&advance(&log)).is_empty(),
        "phase 2 waits for all of phase 1"
    );
    for event in &first[1..] {
        log.push(completed(event));
    }
    let second = advance(&log);
    assert_eq!(scheduled(&second), vec![("build".into(), 1, team[0].id)]);
    assert_eq!(
        handoffs(&second)[0].context.dependencies,
        [
            "design (Step design): completed by Ada",
            "threats (Step threats): completed by Bo"
        ],
        "a phase's steps wait for every step of the phase before"
    );
    log.extend(second.clone());
    log.push(completed(the_scheduled(&second)));
    assert_eq!(
        scheduled(&advance(&log)),
        vec![("test".into(), 1, team[0].id)],
        "sequential: one after the other"
    );
}

#[test]
fn a_child_step_starts_a_child_run_and_a_child_run_reports_to_its_parent() {
    let team = vec![agent("Ada", &[])];
    let child_workflow = WorkflowId::new();
    let mut nested = step("nested", &[], &[]);
    nested.child_workflow_id = Some(child_workflow);
    let wf = workflow(&team, vec![nested]);
    let mut log = start(&wf, &team);
    let first = advance(&log);
    log.extend(first.clone());
    let Event::StepScheduled(s) = &first[0] else {
        unreachable!()
    };
    let parent = ParentStep {
        attempt: StepAttempt::of(s),
        depth: 1,
    };
    assert_eq!(
        effects(&fold(&log), &first[0], now()),
        vec![Effect::StartChild {
            workflow_id: child_workflow,
            parent: parent.clone(),
            input: Some(serde_json::json!({"priority": "high", "tickets": 3})),
        }],
        "no agent is asked: the child run takes the step"
    );

    // The child run: started as the child of that attempt, it reports how it ended.
    let child = workflow(&team, vec![step("inner", &[], &[])]);
    let mut child_log = vec![Event::ExecutionStarted(Box::new(started(
        &Start {
            execution_id: ExecutionId::new(),
            trigger_reason: TriggerReason::Dependency,
            triggered_by: None,
            workflow: child,
            agents: team.clone(),
            input: None,
            parent: Some(parent.clone()),
            records: Default::default(),
        },
        1,
        now(),
    )))];
    let Event::ExecutionStarted(e) = &child_log[0] else {
        unreachable!()
    };
    assert_eq!(e.parent.as_ref().map(|p| p.depth), Some(1));
    let inner = advance(&child_log);
    child_log.extend(inner.clone());
    child_log.push(completed(&inner[0]));
    let end = advance(&child_log);
    child_log.extend(end.clone());
    let reported = effects(&fold(&child_log), &end[0], now() + TimeDelta::seconds(2));
    assert!(
        reported.contains(&Effect::ReportToParent {
            parent,
            outcome: crate::domain::ChildOutcome::Completed {
                summary: "child run of workflow 'Ship it' completed".into(),
                final_output: serde_json::json!({"inner": {"agentId": team[0].id, "summary": "did inner", "output": "output of inner"}}),
                duration_ms: Some(2000),
            }
        }),
        "{reported:?}"
    );
}

fn reviewed(of: &Event, approved: bool, feedback: &str) -> Event {
    let Event::StepScheduled(s) = of else {
        panic!("not a StepScheduled: {of:?}")
    };
    let review = s.review.as_ref().expect("a review attempt");
    Event::StepReviewed(StepReviewed {
        attempt: StepAttempt::of(s),
        round: review.round,
        author_agent_id: review.author_agent_id,
        approved,
        feedback: feedback.into(),
        ballot: review.ballot,
        usage: None,
    })
}

fn review_team() -> (Vec<AgentProfile>, WorkflowDefinition) {
    let mut author = agent("Ada", &["design"]);
    author.role = "architect".into();
    let mut critic = agent("Cy", &[]);
    critic.role = "reviewer".into();
    let team = vec![author, agent("Bo", &[]), critic];
    let mut design = step("design", &[], &["design"]);
    design.review_required = true;
    design.reviewer_role = Some("Reviewer".into());
    let wf = workflow(&team, vec![design, step("build", &["design"], &[])]);
    (team, wf)
}

#[test]
fn a_review_rejected_once_returns_the_step_to_its_author_with_the_feedback() {
    let (team, wf) = review_team();
    let mut log = start(&wf, &team);
    let work = advance(&log);
    log.extend(work.clone());
    log.push(completed(&work[0]));

    let review = advance(&log);
    let Event::StepScheduled(r) = &review[0] else {
        panic!("expected a review, got {review:?}")
    };
    assert_eq!(r.agent.name, "Cy", "an agent of the reviewer role");
    assert_eq!(r.attempt, 2);
    let request = r.review.as_ref().unwrap();
    assert_eq!((request.round, request.author_agent_id), (1, team[0].id));
    assert_eq!(request.output, "output of design");
    assert!(matches!(r.reason, AssignmentReason::Reviewer { .. }));
    log.extend(review.clone());
    log.push(reviewed(&review[0], false, "Name the error codes."));

    let rework = advance(&log);
    let Event::StepScheduled(w) = &rework[0] else {
        panic!("expected a rework, got {rework:?}")
    };
    assert_eq!(w.agent.id, team[0].id, "back to its author");
    assert_eq!(w.reason, AssignmentReason::Rework);
    assert_eq!(w.feedback.as_deref(), Some("Name the error codes."));
    assert!(w.review.is_none());
    log.extend(rework.clone());
    log.push(completed(&rework[0]));

    let second = advance(&log);
    let Event::StepScheduled(r2) = &second[0] else {
        panic!("expected a second review, got {second:?}")
    };
    assert_eq!(r2.review.as_ref().unwrap().round, 2);
    log.extend(second.clone());
    log.push(reviewed(&second[0], true, "Good."));
    assert_eq!(
        scheduled(&advance(&log)),
        vec![("build".into(), 1, team[0].id)],
        "approved: the step is done and its dependants go on"
    );
}

#[test]
fn reviews_that_keep_rejecting_fail_the_step_with_the_last_feedback() {
    let (team, mut wf) = review_team();
    wf.configuration.constraints.max_review_rounds = Some(1);
    let mut log = start(&wf, &team);
    let work = advance(&log);
    log.extend(work.clone());
    log.push(completed(&work[0]));
    let review = advance(&log);
    log.extend(review.clone());
    log.push(reviewed(&review[0], false, "Still vague."));
    let end = advance(&log);
    let [Event::ExecutionFailed(failure)] = end.as_slice() else {
        panic!("expected failure, got {end:?}")
    };
    assert!(
        failure
            .error
            .ends_with("was rejected by its reviewer in 1 review round(s), all that maxReviewRounds allows; the last feedback: Still vague."),
        "{}",
        failure.error
    );
}

#[test]
fn a_failed_review_is_retried_as_a_review() {
    let (team, mut wf) = review_team();
    wf.configuration.constraints.max_retries = Some(1);
    let mut log = start(&wf, &team);
    let work = advance(&log);
    log.extend(work.clone());
    log.push(completed(&work[0]));
    let review = advance(&log);
    log.extend(review.clone());
    log.push(failed(&review[0], "provider said 503"));
    let again = after_backoff(&mut log);
    let Event::StepScheduled(r) = &again[0] else {
        panic!("expected a review again, got {again:?}")
    };
    assert_eq!(
        r.review.as_ref().unwrap().round,
        1,
        "the same round, tried again"
    );
    assert_eq!(r.attempt, 3);
}

/// A team of three: the asker (Ada, a writer), an architect and a tester.
fn question_team() -> (Vec<AgentProfile>, WorkflowDefinition) {
    let team = vec![
        agent("Writer", &["write"]),
        agent("Architect", &[]),
        agent("Tester", &[]),
    ];
    let wf = workflow(
        &team,
        vec![step("a", &[], &["write"]), step("b", &["a"], &["write"])],
    );
    (team, wf)
}

#[test]
fn questions_go_to_their_addressees_and_the_asker_finishes_with_the_answers() {
    let (team, wf) = question_team();
    let mut log = start(&wf, &team);
    let first = advance(&log);
    log.extend(first.clone());
    log.push(asked(
        &first[0],
        &[
            (Some("architect"), "Which database?"),
            (None, "Anything I missed?"),
            (Some("Nobody"), "Are you there?"),
        ],
    ));

    // Asked: the step waits, holding no worker, and the questions are handed out: one to the
    // architect (by role), one to each teammate (a broadcast), none to an unknown name.
    let handed_out = advance(&log);
    let recipients: Vec<(String, AgentId, bool)> = handed_out
        .iter()
        .map(|e| match e {
            Event::QuestionAssigned(q) => (q.question_id.clone(), q.recipient.id, q.broadcast),
            other => panic!("expected only questions, got {other:?}"),
        })
        .collect();
    assert_eq!(
        recipients,
        vec![
            ("q1".to_owned(), team[1].id, false),
            ("q2".to_owned(), team[1].id, true),
            ("q2".to_owned(), team[2].id, true),
        ]
    );
    let Event::QuestionAssigned(q1) = &handed_out[0] else {
        unreachable!()
    };
    assert_eq!(q1.asker.id, team[0].id);
    assert_eq!(q1.deadline_at, now() + TimeDelta::seconds(300));
    let state = fold(&log);
    let handing_out = effects(&state, &handed_out[0], now());
    assert!(handing_out.contains(&Effect::Dispatch {
        provider: "offline".into()
    }));
    assert!(handing_out.contains(&Effect::StartTimer {
        timer: question_timer(&handed_out[0]),
        when: When::At(q1.deadline_at),
    }));
    log.extend(handed_out.clone());
    assert!(advance(&log).is_empty(), "waiting is not being stuck");

    // Answers come in; the last one brings the asker back with all of them.
    log.push(answered(&handed_out[0], Some("Postgres")));
    log.push(answered(&handed_out[1], Some("The rollback plan")));
    assert!(advance(&log).is_empty(), "one answer is still missing");
    log.push(answered(&handed_out[2], None));
    let next = advance(&log);
    assert_eq!(scheduled(&next), vec![("a".into(), 2, team[0].id)]);
    let Event::StepScheduled(again) = &next[0] else {
        unreachable!()
    };
    assert_eq!(again.reason, AssignmentReason::Answered);
    let answers: Vec<(&str, &str, Option<&str>)> = again
        .answers
        .iter()
        .map(|a| (a.question.as_str(), a.asked.as_str(), a.answer.as_deref()))
        .collect();
    assert_eq!(
        answers,
        vec![
            ("Which database?", "Architect", Some("Postgres")),
            ("Anything I missed?", "Architect", Some("The rollback plan")),
            ("Anything I missed?", "Tester", None),
            ("Are you there?", "Nobody", None),
        ]
    );
    assert!(
        again.answers[2]
            .note
            .as_deref()
            .unwrap()
            .contains("HTTP 401")
    );
    assert!(
        again.answers[3]
            .note
            .as_deref()
            .unwrap()
            .contains("no participant")
    );
    let teammates: Vec<AgentId> = again.team.iter().map(|t| t.id).collect();
    assert_eq!(teammates, vec![team[1].id, team[2].id]);
    log.extend(next.clone());
    assert!(
        effects(&fold(&log), &next[0], now())
            .contains(&Effect::CancelTimer(question_timer(&handed_out[0]))),
        "the asker is back: the deadline has nothing left to guard"
    );

    // An answer after the asker went on changes nothing; the step completes as usual.
    log.push(answered(&handed_out[2], Some("too late")));
    assert!(advance(&log).is_empty());
    log.push(completed(&next[0]));
    assert_eq!(scheduled(&advance(&log)), vec![("b".into(), 1, team[0].id)]);
}

#[test]
fn a_missed_deadline_lets_the_step_proceed_or_fails_the_attempt_as_configured() {
    for policy in [MissedDeadline::Proceed, MissedDeadline::Fail] {
        let (team, mut wf) = question_team();
        wf.configuration.coordination.questions.on_missed_deadline = policy;
        wf.configuration.constraints.max_retries = Some(1);
        let mut log = start(&wf, &team);
        let first = advance(&log);
        log.extend(first.clone());
        log.push(asked(&first[0], &[(Some("tester"), "Which browsers?")]));
        let handed_out = advance(&log);
        log.extend(handed_out.clone());

        let expired = fire(&log, question_timer(&handed_out[0]));
        let [Event::QuestionsExpired(e)] = expired.as_slice() else {
            panic!("expected the deadline recorded, got {expired:?}")
        };
        assert_eq!(e.unanswered.len(), 1);
        assert_eq!(e.unanswered[0].agent_id, team[2].id);
        assert_eq!(e.failed, policy == MissedDeadline::Fail);
        log.extend(expired.clone());
        assert!(
            fire(&log, question_timer(&handed_out[0])).is_empty(),
            "a deadline fires once"
        );

        let next = match policy {
            MissedDeadline::Proceed => advance(&log),
            MissedDeadline::Fail => after_backoff(&mut log),
        };
        assert_eq!(scheduled(&next), vec![("a".into(), 2, team[0].id)]);
        let Event::StepScheduled(again) = &next[0] else {
            unreachable!()
        };
        match policy {
            // The step goes on, told which answer never came.
            MissedDeadline::Proceed => {
                assert_eq!(again.reason, AssignmentReason::Answered);
                assert_eq!(again.answers.len(), 1);
                assert_eq!(again.answers[0].answer, None);
                assert!(
                    again.answers[0]
                        .note
                        .as_deref()
                        .unwrap()
                        .contains("deadline")
                );
            }
            // A failed attempt, retried from scratch within maxRetries.
            MissedDeadline::Fail => {
                assert_ne!(again.reason, AssignmentReason::Answered);
                assert!(again.answers.is_empty());
                let State::Started(run) = fold(&log) else {
                    unreachable!()
                };
                assert_eq!(run.steps[&StepId::parse("a").unwrap()].failures, 1);
            }
        }
    }
}

#[test]
fn a_broadcast_in_a_team_of_one_goes_on_at_once_and_a_step_asks_one_round_only() {
    let solo = vec![agent("Writer", &["write"])];
    let wf = workflow(&solo, vec![step("a", &[], &["write"])]);
    let mut log = start(&wf, &solo);
    let first = advance(&log);
    log.extend(first.clone());
    log.push(asked(&first[0], &[(Some("everyone"), "Anyone?")]));
    let next = advance(&log);
    let Event::StepScheduled(again) = &next[0] else {
        panic!("expected the asker back at once, got {next:?}")
    };
    assert!(
        again.answers[0]
            .note
            .as_deref()
            .unwrap()
            .contains("nobody else")
    );
    log.extend(next.clone());
    // The attempt with its answers cannot wait again (the worker never asks from it; were
    // such questions recorded, the state would not take them), so two agents cannot keep
    // asking each other.
    let before = fold(&log);
    log.push(asked(&next[0], &[(Some("everyone"), "Anyone now?")]));
    assert_eq!(fold(&log), before);
}

#[test]
fn validation_names_the_offending_fields() {
    let team = vec![agent("Ada", &[])];
    let mut wf = workflow(
        &team,
        vec![
            step("a", &["c"], &[]),
            step("a", &[], &[]),
            step("b", &["nope"], &[]),
        ],
    );
    wf.configuration.steps[2].preferred_agent_id = Some(AgentId::new());
    let errors = validate_workflow(&wf);
    let pointers: Vec<&str> = errors.iter().map(|e| e.pointer.as_str()).collect();
    assert_eq!(
        pointers,
        vec![
            "/configuration/steps/1/id",
            "/configuration/steps/2/preferredAgentId",
            "/configuration/steps/0/dependsOn/0",
            "/configuration/steps/2/dependsOn/0",
        ]
    );
    assert_eq!(errors[0].message, "duplicate step id 'a'");

    let cyclic = workflow(
        &team,
        vec![
            step("a", &["c"], &[]),
            step("b", &["a"], &[]),
            step("c", &["b"], &[]),
        ],
    );
    let errors = validate_workflow(&cyclic);
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].message,
        "dependsOn forms a cycle: a -> b -> c -> a"
    );
}

/// A random DAG: step i may depend on any earlier step.
fn dag() -> impl Strategy<Value = Vec<Vec<usize>>> {
    (1usize..12).prop_flat_map(|n| {
        (0..n)
            .map(|i| proptest::sample::subsequence((0..i).collect::<Vec<_>>(), 0..=i.min(3)))
            .collect::<Vec<_>>()
    })
}

fn dag_workflow(deps: &[Vec<usize>], team: &[AgentProfile]) -> WorkflowDefinition {
    let names: Vec<String> = (0..deps.len()).map(|i| format!("s{i}")).collect();
    let steps = deps
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let d: Vec<&str> = d.iter().map(|j| names[*j].as_str()).collect();
            step(&names[i], &d, &[])
        })
        .collect();
    workflow(team, steps)
}

proptest! {
    /// Whatever the DAG and whatever order agents finish in, every step is scheduled exactly
    /// once, only after its dependencies completed, and the execution then completes.
    #[test]
    fn any_valid_dag_runs_every_step_exactly_once(deps in dag(), picks in proptest::collection::vec(any::<prop::sample::Index>(), 64)) {
        let team = vec![agent("Ada", &[]), agent("Bo", &[])];
        let wf = dag_workflow(&deps, &team);
        prop_assert!(validate_workflow(&wf).is_empty());
        let mut log = start(&wf, &team);
        let mut in_flight: Vec<Event> = Vec::new();
        let mut order: Vec<String> = Vec::new();
        let mut picks = picks.into_iter().cycle();
        loop {
            let decided = advance(&log);
            if let Some(Event::ExecutionCompleted(_)) = decided.first() {
                break;
            }
            // A handoff travels in its step's first scheduling, from another agent, once each.
            for event in &decided {
                if let Event::StepScheduled(s) = event {
                    let from: Vec<_> = s.handed_off().map(|h| h.from_agent).collect();
                    prop_assert!(from.is_empty() || s.attempt == 1);
                    prop_assert_eq!(from.iter().collect::<std::collections::HashSet<_>>().len(), from.len());
                    prop_assert!(!from.contains(&s.agent.id));
                }
            }
            in_flight.extend(decided.iter().filter(|e| matches!(e, Event::StepScheduled(_))).cloned());
            log.extend(decided);
            prop_assert!(!in_flight.is_empty(), "stalled with steps left");
            let pick = picks.next().unwrap().index(in_flight.len());
            let done = in_flight.remove(pick);
            let Event::StepScheduled(s) = &done else { unreachable!() };
            for dependency in &s.step.depends_on {
                prop_assert!(order.contains(&dependency.to_string()), "ran before its dependency");
            }
            order.push(s.step.id.to_string());
            log.push(completed(&done));
        }
        let mut unique = order.clone();
        unique.sort();
        unique.dedup();
        prop_assert_eq!(unique.len(), deps.len());
        prop_assert_eq!(order.len(), deps.len());
    }

    /// Folding the same log twice gives the same state, and so the same decision.
    #[test]
    fn replay_is_deterministic(deps in dag(), cut in any::<prop::sample::Index>()) {
        let team = vec![agent("Ada", &[])];
        let wf = dag_workflow(&deps, &team);
        let mut log = start(&wf, &team);
        for _ in 0..deps.len() {
            let decided = advance(&log);
            let completions: Vec<Event> = decided.iter().filter(|e| matches!(e, Event::StepScheduled(_))).map(completed).collect();
            log.extend(decided);
            log.extend(completions);
        }
        let prefix = &log[..cut.index(log.len()) + 1];
        prop_assert_eq!(fold(prefix), fold(prefix));
        prop_assert_eq!(advance(prefix), advance(prefix));
    }

    /// Whatever the DAG, and whatever happens to each attempt (it completes, fails, times
    /// out, or asks teammates questions that are answered or miss their deadline), to the
    /// run (paused, resumed, cancelled), on the escalation ladder and to the escalations and
    /// approvals a person resolves (retry, reassign, skip, provide the output, abort, approve,
    /// reject), to risky steps handing the lead over, to reviews and a panel's votes (under
    /// each `decisionMaking`), and to the sagas of failing runs (their
    /// undoings, and re-plans valid or not), the run reaches a terminal state; no step starts before its dependencies
    /// completed; nothing but a saga's undoings is scheduled after an abort; and replaying the log gives the state
    /// that was built event by event.
    #[test]
    fn every_run_ends_whatever_happens(
        deps in dag(),
        conditions in proptest::collection::vec(0u8..4, 12),
        retries in 0u32..3,
        ladder in 0usize..4,
        moves in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..20), 200),
    ) {
        let team = vec![agent("Ada", &[]), agent("Bo", &[]), agent("Cy", &[])];
        let mut wf = dag_workflow(&deps, &team);
        wf.configuration.constraints.max_retries = Some(retries);
        wf.configuration.coordination.decision_making =
            [DecisionMaking::Coordinator, DecisionMaking::Majority, DecisionMaking::Coordinator, DecisionMaking::Consensus][ladder];
        wf.configuration.escalation.ladder = [
            vec![],
            vec![EscalationRung::Person],
            vec![EscalationRung::Reassign, EscalationRung::Person],
            vec![EscalationRung::Reassign],
        ][ladder]
            .clone();
        wf.configuration.escalation.leads = vec![RiskLead { risk: "security".into(), role: "bo".into() }];
        wf.configuration.escalation.after_minutes = Some(30.0);
        wf.coordinator_agent_id = Some(team[0].id);
        wf.configuration.saga.replan = ladder % 2 == 0;
        for (s, condition) in wf.configuration.steps.iter_mut().zip(conditions) {
            s.timeout_minutes = Some(1.0);
            s.condition = match condition {
                0 => Some("input.priority == 'low'".into()),
                1 => Some("input.tickets >= 3".into()),
                _ => None,
            };
            if condition == 3 {
                s.step_type = StepType::Approval;
            }
            if condition == 2 {
                s.risks = vec!["security".into()];
            }
            if condition == 1 {
                s.compensation = Some("Undo it.".into());
                s.review_required = true;
            }
        }
        let mut log = start(&wf, &team);
        let mut state = fold(&log);
        let mut in_flight: Vec<Event> = Vec::new();
        let mut moves = moves.into_iter().cycle();
        let append = |log: &mut Vec<Event>, state: &mut State, events: Vec<Event>| {
            for event in events {
                *state = evolve(std::mem::take(state), &event);
                // Read back, whatever was scheduled is handed out: to a worker, or as a child run.
                if let Event::StepScheduled(s) = &event {
                    assert!(
                        effects(state, &event, now()).iter().any(|effect| matches!(
                            effect,
                            Effect::Dispatch { .. } | Effect::StartChild { .. }
                        )),
                        "{} attempt {} was scheduled but not handed out",
                        s.step.id,
                        s.attempt
                    );
                }
                log.push(event);
            }
        };
        let mut aborted = false;
        for _ in 0..2_000 {
            let decided = decide(&Command::Advance, &state, now()).unwrap();
            // After an abort only a saga's undoings are handed out.
            prop_assert!(
                !(aborted && decided.iter().any(|e| matches!(e, Event::StepScheduled(s) if !s.step.id.as_str().starts_with(StepId::UNDO_PREFIX)))),
                "scheduled after an abort"
            );
            in_flight.extend(decided.iter().filter(|e| match e {
                Event::StepEscalated(e) => e.escalation_id.is_some(),
                Event::ExecutionEscalated(_) => true,
                e => matches!(e, Event::StepScheduled(_) | Event::QuestionAssigned(_) | Event::StepRetryScheduled(_)),
            }).cloned());
            append(&mut log, &mut state, decided);
            if state.is_finished() {
                break;
            }
            let (pick, roll) = moves.next().unwrap();
            let control = match roll {
                0 => Some(Command::Cancel(Request::default())),
                1 => Some(Command::Pause(Request::default())),
                2 | 3 => Some(Command::Resume(Request::default())),
                4 => Some(Command::TimerFired(Timer::EscalationDue {
                    workflow_id: wf.id,
                    execution_id: match &state {
                        State::Started(e) => e.id,
                        State::NotStarted => unreachable!(),
                    },
                })),
                _ => None,
            };
            if let Some(command) = control {
                // Decided on the run's own facts, as the API does, the same.
                if !command.reads_steps() {
                    prop_assert_eq!(
                        decide(&command, &fold(&run_facts(&log)), now()),
                        decide(&command, &state, now())
                    );
                }
                // A refused transition is a valid outcome; it must not change anything.
                let events = decide(&command, &state, now()).unwrap_or_default();
                append(&mut log, &mut state, events);
                continue;
            }
            if in_flight.is_empty() {
                // Paused with nothing running: only a resume (or a cancel) moves it on.
                let events = decide(&Command::Resume(Request::default()), &state, now()).unwrap_or_default();
                append(&mut log, &mut state, events);
                continue;
            }
            let attempt = in_flight.remove(pick.index(in_flight.len()));
            if let Event::ExecutionEscalated(e) = &attempt {
                let resolution = if roll % 4 == 0 { Resolution::Abort } else { Resolution::Continue };
                let abort = resolution == Resolution::Abort;
                let command = Command::Resolve {
                    escalation_id: e.escalation_id,
                    resolution,
                    request: Request::default(),
                };
                let events = decide(&command, &state, now()).unwrap_or_default();
                // Only an abort the run took: one refused (the run ended under it) is none.
                aborted |= abort && !events.is_empty();
                append(&mut log, &mut state, events);
                continue;
            }
            if let Event::StepEscalated(e) = &attempt {
                let resolution = match (e.approval, roll % 5) {
                    (true, 0) | (false, 4) => Resolution::Abort,
                    (true, 1) => Resolution::Reject,
                    (true, _) => Resolution::Approve,
                    (false, 0) => Resolution::Retry,
                    (false, 1) => Resolution::Reassign { agent_id: team[usize::from(roll) % 2].id },
                    (false, 2) => Resolution::Skip,
                    (false, _) => Resolution::ProvideOutput { summary: "s".into(), output: "o".into() },
                };
                let abort = matches!(resolution, Resolution::Abort | Resolution::Reject);
                let command = Command::Resolve {
                    escalation_id: e.escalation_id.unwrap(),
                    resolution,
                    request: Request::default(),
                };
                // Refused once the run ended (a cancel) or a re-plan dropped the step: that
                // changes nothing, and is no abort.
                let events = decide(&command, &state, now()).unwrap_or_default();
                aborted |= abort && !events.is_empty();
                append(&mut log, &mut state, events);
                continue;
            }
            if let Event::StepRetryScheduled(r) = &attempt {
                let timer = Timer::StepRetry {
                    workflow_id: r.attempt.workflow_id,
                    execution_id: r.attempt.execution_id,
                    step_id: r.attempt.step_id.clone(),
                    attempt: r.attempt.number,
                };
                let due = decide(&Command::TimerFired(timer), &state, now()).unwrap();
                append(&mut log, &mut state, due);
                continue;
            }
            if let Event::QuestionAssigned(_) = &attempt {
                let outcome = if roll % 2 == 0 {
                    vec![answered(&attempt, Some("yes"))]
                } else {
                    decide(&Command::TimerFired(question_timer(&attempt)), &state, now()).unwrap()
                };
                append(&mut log, &mut state, outcome);
                continue;
            }
            let Event::StepScheduled(s) = &attempt else { unreachable!() };
            // An attempt of the run's current plan (one handed out before a re-plan may be stale).
            if let State::Started(e) = &state && e.steps.get(&s.step.id).is_some_and(|p| p.attempt == s.attempt) {
                for dependency in &s.step.depends_on {
                    prop_assert!(e.steps[dependency].state.is_done(), "ran before its dependency");
                }
            }
            let outcome = match roll % 4 {
                // A re-planning proposes one step, valid or not as the roll goes.
                0 if s.step.id.as_str().starts_with(StepId::REPLAN_PREFIX) => {
                    let Event::StepCompleted(mut done) = completed(&attempt) else { unreachable!() };
                    done.result.output = format!(r#"{{"steps": [{{"id": "again", "name": "Again", "description": "", "type": "analysis", "dependsOn": [{}], "instructions": "Do.", "expectedOutput": "It."}}]}}"#, if roll % 8 == 0 { "\"ghost\"" } else { "" });
                    vec![Event::StepCompleted(done)]
                }
                // A review (or a vote): approved or sent back as the roll goes.
                0 | 3.. if s.review.is_some() => vec![reviewed(&attempt, roll % 3 != 0, "fb")],
                0 => vec![completed(&attempt)],
                1 => vec![failed(&attempt, "boom")],
                2 => decide(&Command::TimerFired(deadlines_timer(&attempt)), &state, now()).unwrap(),
                _ if s.answers.is_empty() => vec![asked(&attempt, &[(Some("bo"), "why?"), (None, "anyone?")])],
                _ => vec![completed(&attempt)],
            };
            append(&mut log, &mut state, outcome);
        }
        prop_assert!(state.is_finished(), "the run did not end: {:?}", state);
        prop_assert_eq!(fold(&log), state.clone());
        if let State::Started(e) = &state && e.status == Status::Completed {
            let all_done = e.steps.values().all(|p| p.state.is_done());
            prop_assert!(all_done);
        }
    }
}

#[test]
fn a_step_taken_over_from_another_agent_is_handed_off_in_its_scheduling() {
    let team = vec![agent("Ada", &["design"]), agent("Bo", &["rust"])];
    let mut build = step("build", &["design"], &["rust"]);
    build.instructions = "Build what was designed.".into();
    build.expected_output = "A working build".into();
    build.validation_criteria = vec!["compiles".into(), "tests pass".into()];
    build.timeout_minutes = Some(10.0);
    build.can_run_in_parallel = false;
    let mut wf = workflow(&team, vec![step("design", &[], &["design"]), build]);
    wf.configuration.constraints.max_retries = Some(2);
    wf.configuration.constraints.max_execution_time = Some(3600);
    let mut log = start(&wf, &team);

    let first = advance(&log);
    assert!(
        handoffs(&first).is_empty(),
        "the first step takes over from nobody"
    );
    log.extend(first.clone());
    let Event::StepCompleted(mut done) = completed(&first[0]) else {
        unreachable!()
    };
    done.result.summary = "x".repeat(1000);
    log.push(Event::StepCompleted(done));

    let second = advance(&log);
    let handed = handoffs(&second);
    let ([Event::StepScheduled(s)], [h]) = (second.as_slice(), handed.as_slice()) else {
        panic!("expected one scheduling, with one handoff: {second:?}")
    };
    assert_eq!((h.from_agent, h.to_agent), (team[0].id, team[1].id));
    assert_eq!(
        (h.task_id.as_str(), h.task_name.as_str()),
        ("build", "Step build")
    );
    assert_eq!(s.agent.id, h.to_agent);
    let quoted = format!("Step design: {}…", "x".repeat(300));
    assert_eq!(h.context.completed_work, quoted, "each summary is cut");
    assert_eq!(h.context.remaining_work, "Build what was designed.");
    assert_eq!(
        h.context.dependencies,
        ["design (Step design): completed by Ada"]
    );
    assert_eq!(
        h.context.constraints,
        [
            "each attempt may take at most 10 minute(s) from when it is handed to the workers \
             (timeoutMinutes)",
            "runs alone: no other step of the execution runs at the same time \
             (canRunInParallel: false)",
            "the execution must end by 2026-11-29T13:00:00Z (maxExecutionTime: 3600 s)",
        ]
    );
    assert_eq!(
        h.success_criteria,
        "A working build\nValidation criteria: compiles; tests pass"
    );
    assert_eq!(h.estimated_time, Some(10.0), "minutes, from the time-out");
    assert_eq!(
        h.escalation_conditions,
        [
            "an attempt still running after 10 minute(s) times out and counts as a failed attempt",
            "a failed attempt is retried; after 3 failed attempts the execution fails \
             (maxRetries: 2)",
            "an error no retry fixes (a refused key, a spent quota, an invalid request) fails \
             the execution at once",
            "the execution fails with 'time limit' if it is still running at \
             2026-11-29T13:00:00Z (maxExecutionTime: 3600 s)",
        ]
    );
    log.extend(second.clone());
    assert!(advance(&log).is_empty(), "recorded once");
    let State::Started(execution) = fold(&log) else {
        unreachable!()
    };
    assert_eq!(
        execution.steps[&StepId::parse("build").unwrap()].handoffs,
        [(team[0].id, team[1].id)]
    );
}

#[test]
fn work_from_several_agents_is_handed_off_once_per_agent() {
    let team = vec![
        agent("Ada", &["design"]),
        agent("Bo", &["research"]),
        agent("Cy", &["rust"]),
    ];
    let wf = workflow(
        &team,
        vec![
            step("design", &[], &["design"]),
            step("research", &[], &["research"]),
            step("build", &["design", "research"], &["rust"]),
            step("polish", &["build"], &["rust"]),
        ],
    );
    let mut log = start(&wf, &team);
    let first = advance(&log);
    log.extend(first.clone());
    for scheduled in &first {
        log.push(completed(scheduled));
    }
    let next = advance(&log);
    let handed = handoffs(&next);
    let pairs: Vec<_> = handed.iter().map(|h| (h.from_agent, h.to_agent)).collect();
    assert_eq!(pairs, [(team[0].id, team[2].id), (team[1].id, team[2].id)]);
    assert_eq!(handed[0].context.completed_work, "Step design: did design");
    assert_eq!(
        handed[1].context.completed_work,
        "Step research: did research"
    );
    for h in &handed {
        assert_eq!(
            h.context.dependencies,
            [
                "design (Step design): completed by Ada",
                "research (Step research): completed by Bo"
            ]
        );
        assert_eq!(h.estimated_time, None, "no time-out, no estimate");
        assert_eq!(
            h.escalation_conditions[0],
            "a failed attempt fails the execution (maxRetries: 0)"
        );
    }
    // The same agent goes on with the next step: nothing to hand over.
    log.extend(next.clone());
    log.push(completed(the_scheduled(&next)));
    let last = advance(&log);
    assert_eq!(scheduled(&last), vec![("polish".into(), 1, team[2].id)]);
    assert!(handoffs(&last).is_empty());
}

#[test]
fn retries_reviews_and_reworks_hand_nothing_over() {
    let (team, mut wf) = review_team();
    wf.configuration.constraints.max_retries = Some(1);
    // Build needs Bo's skills, so the reviewed design goes from Ada to Bo.
    wf.configuration.steps[1].required_skills = vec!["rust".into()];
    let mut team = team;
    team[1].skills = vec!["rust".into()];
    wf.participating_agents = team.iter().map(|a| a.id).collect();
    let mut log = start(&wf, &team);
    let work = advance(&log);
    log.extend(work.clone());
    log.push(completed(&work[0]));
    let review = advance(&log);
    assert!(handoffs(&review).is_empty(), "a review is not a handoff");
    log.extend(review.clone());
    log.push(reviewed(&review[0], false, "More detail."));
    let rework = advance(&log);
    assert!(handoffs(&rework).is_empty(), "nor is a rework");
    log.extend(rework.clone());
    log.push(completed(&rework[0]));
    let second = advance(&log);
    log.extend(second.clone());
    log.push(reviewed(&second[0], true, "Good."));

    let build = advance(&log);
    let handed = handoffs(&build);
    assert_eq!(handed.len(), 1, "{build:?}");
    assert_eq!(
        (handed[0].from_agent, handed[0].to_agent),
        (team[0].id, team[1].id),
        "from the author, not the reviewer"
    );
    assert!(
        handed[0]
            .context
            .constraints
            .iter()
            .all(|c| !c.contains("reviewRequired")),
        "build itself is not reviewed"
    );
    log.extend(build.clone());
    log.push(failed(the_scheduled(&build), "provider said 503"));
    let retry = after_backoff(&mut log);
    assert_eq!(scheduled(&retry), vec![("build".into(), 2, team[1].id)]);
    assert!(handoffs(&retry).is_empty(), "a retry is not a handoff");
}

/// Logs written before handoffs travelled in the scheduling hold them as events of their own,
/// stored before the scheduling: one stored without it (the coordinator stopped, or lost a
/// race, in between) is not recorded again.
#[test]
fn a_handoff_recorded_on_its_own_is_not_recorded_again() {
    let team = vec![agent("Ada", &["design"]), agent("Bo", &["rust"])];
    let mut build = step("build", &["design"], &["rust"]);
    build.review_required = true;
    let wf = workflow(&team, vec![step("design", &[], &["design"]), build]);
    let mut log = start(&wf, &team);
    let first = advance(&log);
    log.extend(first.clone());
    log.push(completed(&first[0]));
    let decided = advance(&log);
    let [h] = handoffs(&decided).try_into().expect("one handoff");
    assert!(
        h.context.constraints.contains(
            &"the work counts as done only once another agent approves it \
                       (reviewRequired)"
                .to_owned()
        )
    );
    assert!(
        h.escalation_conditions.contains(
            &"a reviewer may send the work back 2 time(s) (maxReviewRounds); then the step fails \
          with the last feedback, and the execution with it"
                .to_owned()
        )
    );

    log.push(Event::TaskHandedOff(Box::new(h)));
    let again = advance(&log);
    assert_eq!(scheduled(&again), vec![("build".into(), 1, team[1].id)]);
    assert!(handoffs(&again).is_empty(), "already recorded: {again:?}");
}

mod escalation;
mod voting;

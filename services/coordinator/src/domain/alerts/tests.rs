//! Given a log of step outcomes, when one more event comes, then these alerts (or none).

use cadre_proto::events::{
    AssignmentReason, EscalationContext, ExecutionCompleted, FailedAttempt, ReviewRequest,
    StepCompleted, StepEscalated, StepFailed, StepReviewed, StepScheduled, StepTimedOut,
};
use cadre_proto::model::{AgentProfile, EscalationRung, StepResult, WorkflowStep};
use chrono::Duration;

use super::*;

/// A log being written: each event a minute after the one before, decided on and folded in.
struct Log {
    watch: Watch,
    clock: DateTime<Utc>,
    workflow: WorkflowId,
    agent: AgentProfile,
    raised: Vec<(EventId, AlertRaised)>,
    /// Every event fed, with its time.
    fed: Vec<(Event, DateTime<Utc>)>,
}

fn agent(name: &str) -> AgentProfile {
    AgentProfile {
        id: AgentId::new(),
        name: name.to_owned(),
        role: "analyst".to_owned(),
        backstory: String::new(),
        skills: vec![],
        provider: "offline".to_owned(),
        model: "m".to_owned(),
        model_parameters: Default::default(),
        fallback: None,
    }
}

fn step(id: &str, step_type: StepType, timeout_minutes: Option<f64>) -> WorkflowStep {
    WorkflowStep {
        id: StepId::parse(id).unwrap(),
        name: id.to_owned(),
        description: String::new(),
        step_type,
        assigned_agent_role: None,
        preferred_agent_id: None,
        required_skills: vec![],
        depends_on: vec![],
        can_run_in_parallel: true,
        instructions: String::new(),
        expected_output: String::new(),
        timeout_minutes,
        validation_criteria: vec![],
        review_required: false,
        reviewer_role: None,
        condition: None,
        child_workflow_id: None,
        risks: Vec::new(),
        compensation: None,
    }
}

impl Log {
    fn new() -> Self {
        Self {
            watch: Watch::default(),
            clock: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            workflow: WorkflowId::new(),
            agent: agent("Ada"),
            raised: Vec::new(),
            fed: Vec::new(),
        }
    }

    /// Decides on `event`, then folds it in; returns what it raised.
    fn feed(&mut self, event: Event) -> Vec<AlertRaised> {
        self.clock += Duration::minutes(1);
        let alerts = self.watch.decide(&event, self.clock);
        self.watch.evolve(&event, self.clock);
        self.fed.push((event, self.clock));
        for alert in &alerts {
            self.raised
                .push((alert_id(alert, self.clock), alert.clone()));
        }
        alerts
    }

    fn attempt(&self, run: ExecutionId, step: &WorkflowStep, by: AgentId, n: u32) -> StepAttempt {
        StepAttempt {
            execution_id: run,
            workflow_id: self.workflow,
            step_id: step.id.clone(),
            step_name: step.name.clone(),
            number: n,
            agent_id: by,
        }
    }

    fn scheduled(&self, run: ExecutionId, step: &WorkflowStep, by: &AgentProfile, n: u32) -> Event {
        Event::StepScheduled(Box::new(StepScheduled {
            execution_id: run,
            workflow_id: self.workflow,
            workflow_name: "W".to_owned(),
            step: step.clone(),
            attempt: n,
            agent: by.clone(),
            reason: AssignmentReason::Rework,
            coordinator_agent_id: None,
            knowledge_sharing: false,
            communication_style: Default::default(),
            knowledge_watermark: 0,
            input: None,
            review: None,
            feedback: None,
            timeout_at: None,
            arms_step_timer: Some(false),
            team: vec![],
            answers: vec![],
            earlier_failures: vec![],
            handoff: None,
        }))
    }

    fn review_scheduled(
        &self,
        run: ExecutionId,
        step: &WorkflowStep,
        by: &AgentProfile,
        n: u32,
    ) -> Event {
        let mut event = self.scheduled(run, step, by, n);
        if let Event::StepScheduled(s) = &mut event {
            s.review = Some(ReviewRequest {
                round: 1,
                author_agent_id: self.agent.id,
                summary: String::new(),
                output: String::new(),
                ballot: None,
            });
        }
        event
    }

    fn completed(&self, run: ExecutionId, step: &WorkflowStep, by: AgentId, n: u32) -> Event {
        Event::StepCompleted(Box::new(StepCompleted {
            attempt: self.attempt(run, step, by, n),
            result: StepResult::default(),
            provider: "offline".to_owned(),
            model: "m".to_owned(),
            duration_ms: 5,
            cost_usd: None,
            knowledge_used: vec![],
            knowledge_handed_on: vec![],
            fallback_reason: None,
            told: vec![],
        }))
    }

    fn failed(&self, run: ExecutionId, step: &WorkflowStep, by: AgentId, n: u32) -> Event {
        Event::StepFailed(StepFailed {
            attempt: self.attempt(run, step, by, n),
            retryable: true,
            error: "HTTP 500".to_owned(),
            usage: None,
        })
    }

    fn timed_out(&self, run: ExecutionId, step: &WorkflowStep, by: AgentId, n: u32) -> Event {
        Event::StepTimedOut(StepTimedOut {
            attempt: self.attempt(run, step, by, n),
            timeout_minutes: step.timeout_minutes.unwrap_or(1.0),
        })
    }

    fn reviewed(
        &self,
        run: ExecutionId,
        step: &WorkflowStep,
        by: AgentId,
        n: u32,
        approved: bool,
    ) -> Event {
        Event::StepReviewed(StepReviewed {
            attempt: self.attempt(run, step, by, n),
            round: 1,
            author_agent_id: self.agent.id,
            approved,
            feedback: String::new(),
            ballot: None,
            usage: None,
        })
    }

    fn escalated(
        &self,
        run: ExecutionId,
        step: &WorkflowStep,
        failed: u32,
        approval: bool,
    ) -> Event {
        Event::StepEscalated(Box::new(StepEscalated {
            execution_id: run,
            workflow_id: self.workflow,
            step_id: step.id.clone(),
            step_name: step.name.clone(),
            attempt: failed,
            rung: EscalationRung::Reassign,
            agent: None,
            escalation_id: None,
            approval,
            reason: "retries spent".to_owned(),
            context: EscalationContext {
                failures: vec![FailedAttempt {
                    attempt: failed,
                    agent_id: self.agent.id,
                    error: "HTTP 500".to_owned(),
                }],
                tried: vec![],
                outputs: Default::default(),
            },
        }))
    }

    fn ended(&self, run: ExecutionId) -> Event {
        Event::ExecutionCompleted(ExecutionCompleted {
            execution_id: run,
            workflow_id: self.workflow,
            final_output: serde_json::Value::Null,
        })
    }

    /// A run of one step whose single attempt by the agent fails (or completes).
    fn one_attempt(&mut self, fails: bool) -> Vec<AlertRaised> {
        let run = ExecutionId::new();
        let work = step("work", StepType::Analysis, None);
        let agent = self.agent.clone();
        let mut raised = self.feed(self.scheduled(run, &work, &agent, 1));
        let outcome = if fails {
            self.failed(run, &work, agent.id, 1)
        } else {
            self.completed(run, &work, agent.id, 1)
        };
        raised.extend(self.feed(outcome));
        raised.extend(self.feed(self.ended(run)));
        raised
    }
}

fn conditions(alerts: &[AlertRaised]) -> Vec<(AlertCondition, u32)> {
    alerts.iter().map(|a| (a.condition, a.crossing)).collect()
}

#[test]
fn failures_below_the_minimum_of_attempts_raise_nothing() {
    let mut log = Log::new();
    for _ in 0..MIN_ATTEMPTS - 1 {
        assert_eq!(
            log.one_attempt(true),
            [],
            "one failure of one is not an alert"
        );
    }
    let facts = log.watch.facts(log.agent.id).unwrap();
    assert_eq!(
        (facts.attempts, facts.failed),
        (MIN_ATTEMPTS - 1, MIN_ATTEMPTS - 1)
    );
}

#[test]
fn a_failure_rate_over_a_fifth_raises_an_alert_once_while_it_holds() {
    let mut log = Log::new();
    for _ in 0..MIN_ATTEMPTS - 1 {
        log.one_attempt(true);
    }
    let raised = log.one_attempt(true);
    assert_eq!(conditions(&raised), [(AlertCondition::FailureRate, 1)]);
    let alert = &raised[0];
    assert_eq!(alert.agent_id, log.agent.id);
    assert_eq!(
        (alert.value, alert.threshold, alert.sample),
        (100.0, 20.0, 5)
    );
    assert_eq!(alert.task_type, None);
    assert_eq!(alert.step_id.as_str(), "work");
    assert!(
        alert.message.contains("5 of its 5 ended attempts"),
        "{}",
        alert.message
    );

    assert_eq!(log.one_attempt(true), [], "still holding: not raised again");
}

#[test]
fn a_failure_rate_of_exactly_a_fifth_is_not_over_it() {
    let mut log = Log::new();
    log.one_attempt(true);
    for _ in 0..4 {
        assert_eq!(log.one_attempt(false), []);
    }
    assert_eq!(
        log.watch.facts(log.agent.id).unwrap().failure_rate(),
        Some(20.0)
    );
    let raised = log.one_attempt(true);
    assert_eq!(
        conditions(&raised),
        [(AlertCondition::FailureRate, 1)],
        "2 of 6"
    );
}

#[test]
fn a_condition_that_cleared_is_raised_again_as_its_next_crossing() {
    let mut log = Log::new();
    for _ in 0..MIN_ATTEMPTS {
        log.one_attempt(true);
    }
    // 5 failures of 25 attempts: 20 %, no longer over the limit.
    for _ in 0..20 {
        assert_eq!(log.one_attempt(false), []);
    }
    let raised = log.one_attempt(true);
    assert_eq!(conditions(&raised), [(AlertCondition::FailureRate, 2)]);
    let ids: HashSet<EventId> = log.raised.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), 2, "each crossing has its own id");
}

#[test]
fn timeouts_count_as_failures_and_a_late_report_counts_nothing() {
    let mut log = Log::new();
    let agent = log.agent.clone();
    let work = step("work", StepType::Testing, Some(1.0));
    let run = ExecutionId::new();
    log.feed(log.scheduled(run, &work, &agent, 1));
    log.feed(log.timed_out(run, &work, agent.id, 1));
    // The first attempt's worker finishes after its time-out: the coordinator ignored it.
    log.feed(log.completed(run, &work, agent.id, 1));
    let facts = log.watch.facts(agent.id).unwrap();
    assert_eq!(
        (facts.attempts, facts.timed_out, facts.tasks_completed),
        (1, 1, 0)
    );
    log.feed(log.scheduled(run, &work, &agent, 2));
    log.feed(log.completed(run, &work, agent.id, 2));
    let facts = log.watch.facts(agent.id).unwrap();
    assert_eq!(
        (facts.attempts, facts.tasks, facts.tasks_completed),
        (2, 1, 1)
    );
    // Handed out at minute 1, completed at minute 5: 4 minutes for a 1-minute estimate.
    assert_eq!(facts.time_against_estimate(), Some(400.0));
    log.feed(log.ended(run));
    assert_eq!(log.watch.runs_going(), 0, "an ended run is forgotten");
    log.feed(log.failed(run, &work, agent.id, 3));
    assert_eq!(
        log.watch.facts(agent.id).unwrap().attempts,
        2,
        "nor is a report after its end counted"
    );
}

/// A task of a step with a `timeout` minute estimate that its first attempt times out and its
/// second completes.
fn slow_task(log: &mut Log, timeout: f64) -> Vec<AlertRaised> {
    let agent = log.agent.clone();
    let work = step("work", StepType::Implementation, Some(timeout));
    let run = ExecutionId::new();
    let mut raised = log.feed(log.scheduled(run, &work, &agent, 1));
    raised.extend(log.feed(log.timed_out(run, &work, agent.id, 1)));
    raised.extend(log.feed(log.scheduled(run, &work, &agent, 2)));
    raised.extend(log.feed(log.completed(run, &work, agent.id, 2)));
    raised.extend(log.feed(log.ended(run)));
    raised
}

#[test]
fn completion_time_over_one_and_a_half_estimates_raises_an_alert() {
    let mut log = Log::new();
    // Each task: handed out, then 3 minutes to its completion; an estimate of 1.5 minutes.
    for _ in 0..MIN_ESTIMATED_TASKS - 1 {
        assert_eq!(slow_task(&mut log, 1.5), [], "too few tasks to judge");
    }
    // Its time-outs also make its failure rate an alert (3 of 6 attempts).
    let raised: Vec<_> = slow_task(&mut log, 1.5)
        .into_iter()
        .filter(|a| a.condition != AlertCondition::FailureRate)
        .collect();
    assert_eq!(conditions(&raised), [(AlertCondition::SlowCompletion, 1)]);
    assert_eq!((raised[0].value, raised[0].sample), (200.0, 3));
}

#[test]
fn completion_time_within_one_and_a_half_estimates_raises_nothing() {
    let mut log = Log::new();
    for _ in 0..MIN_ESTIMATED_TASKS + 2 {
        // 3 minutes for a 2-minute estimate: exactly 150 %.
        let raised = slow_task(&mut log, 2.0);
        assert!(
            raised
                .iter()
                .all(|a| a.condition != AlertCondition::SlowCompletion),
            "{raised:?}"
        );
    }
    let facts = log.watch.facts(log.agent.id).unwrap();
    assert_eq!(facts.time_against_estimate(), Some(150.0));
    assert_eq!(facts.average_completion_minutes(), Some(3.0));
}

/// A task of type `step_type` that fails and escalates (or an approval waiting for a person).
fn escalated_task(log: &mut Log, step_type: StepType, approval: bool) -> Vec<AlertRaised> {
    let agent = log.agent.clone();
    let work = step("work", step_type, None);
    let run = ExecutionId::new();
    let mut raised = log.feed(log.scheduled(run, &work, &agent, 1));
    if !approval {
        raised.extend(log.feed(log.failed(run, &work, agent.id, 1)));
    }
    raised.extend(log.feed(log.escalated(run, &work, 1, approval)));
    // A second rung for the same task and agent: still one escalated task.
    raised.extend(log.feed(log.escalated(run, &work, 1, approval)));
    raised.extend(log.feed(log.ended(run)));
    raised
}

#[test]
fn repeated_escalations_of_one_task_type_raise_an_alert_for_that_type() {
    let mut log = Log::new();
    assert_eq!(escalated_task(&mut log, StepType::Review, false), []);
    assert_eq!(
        escalated_task(&mut log, StepType::Testing, false),
        [],
        "another type"
    );
    assert_eq!(
        escalated_task(&mut log, StepType::Approval, true),
        [],
        "approvals are no failures"
    );
    let raised: Vec<_> = escalated_task(&mut log, StepType::Review, false)
        .into_iter()
        .filter(|a| a.condition == AlertCondition::RepeatedEscalations)
        .collect();
    assert_eq!(raised.len(), 1, "{raised:?}");
    assert_eq!(raised[0].task_type, Some(StepType::Review));
    assert_eq!((raised[0].value, raised[0].sample), (2.0, 2));
    let facts = log.watch.facts(log.agent.id).unwrap();
    assert_eq!(facts.tasks_escalated(), 3);
    assert_eq!(facts.escalation_rate(), Some(75.0));
    let again = escalated_task(&mut log, StepType::Review, false);
    assert!(
        again
            .iter()
            .all(|a| a.condition != AlertCondition::RepeatedEscalations),
        "escalations never clear: one alert per type"
    );
}

/// The agent's work on one step, reviewed by Bo: approved or not.
fn reviewed_task(log: &mut Log, approved: bool) -> Vec<AlertRaised> {
    let (author, reviewer) = (log.agent.clone(), agent("Bo"));
    let work = step("work", StepType::Implementation, None);
    let run = ExecutionId::new();
    let mut raised = log.feed(log.scheduled(run, &work, &author, 1));
    raised.extend(log.feed(log.completed(run, &work, author.id, 1)));
    raised.extend(log.feed(log.review_scheduled(run, &work, &reviewer, 2)));
    raised.extend(log.feed(log.reviewed(run, &work, reviewer.id, 2, approved)));
    raised.extend(log.feed(log.ended(run)));
    raised
}

#[test]
fn quality_under_seven_raises_an_alert_once_enough_reviews_judged_it() {
    let mut log = Log::new();
    assert_eq!(reviewed_task(&mut log, true), []);
    assert_eq!(
        reviewed_task(&mut log, false),
        [],
        "too few reviews to judge"
    );
    let raised = reviewed_task(&mut log, false);
    assert_eq!(conditions(&raised), [(AlertCondition::LowQuality, 1)]);
    let alert = &raised[0];
    assert_eq!(
        alert.agent_id, log.agent.id,
        "the author's quality, not the reviewer's"
    );
    assert!((alert.value - 10.0 / 3.0).abs() < 1e-9, "{}", alert.value);
    assert_eq!((alert.threshold, alert.sample), (7.0, 3));
    let facts = log.watch.facts(log.agent.id).unwrap();
    assert_eq!((facts.reviews, facts.approvals, facts.attempts), (3, 1, 3));
}

#[test]
fn quality_at_seven_or_more_raises_nothing_and_clears_an_alert() {
    let mut log = Log::new();
    for approved in [false, false, false] {
        reviewed_task(&mut log, approved);
    }
    // 7 approvals of 10: 7.0, no longer under 7.
    for _ in 0..7 {
        assert_eq!(reviewed_task(&mut log, true), []);
    }
    assert_eq!(
        log.watch.facts(log.agent.id).unwrap().quality_score(),
        Some(7.0)
    );
    let raised = reviewed_task(&mut log, false);
    assert_eq!(conditions(&raised), [(AlertCondition::LowQuality, 2)]);
}

#[test]
fn a_reviewers_attempt_counts_for_the_reviewer_and_its_verdict_for_the_author() {
    let mut log = Log::new();
    reviewed_task(&mut log, false);
    let bo = log
        .watch
        .agents
        .iter()
        .find(|(id, _)| **id != log.agent.id)
        .map(|(_, w)| w.facts.clone())
        .unwrap();
    assert_eq!((bo.attempts, bo.tasks, bo.reviews), (1, 0, 0));
}

#[test]
fn a_completed_attempts_cost_counts_once_for_its_agent() {
    let mut log = Log::new();
    let agent = log.agent.clone();
    let work = step("work", StepType::Implementation, None);
    let run = ExecutionId::new();
    let completed = |log: &Log, n: u32, cost_usd: Option<f64>| {
        let mut event = log.completed(run, &work, agent.id, n);
        if let Event::StepCompleted(c) = &mut event {
            c.cost_usd = cost_usd;
        }
        event
    };
    log.feed(log.scheduled(run, &work, &agent, 1));
    log.feed(completed(&log, 1, Some(0.25)));
    // A second report of the same attempt is ignored, cost and all.
    log.feed(completed(&log, 1, Some(9.0)));
    log.feed(log.scheduled(run, &work, &agent, 2));
    // A model without a price: completed, not costed.
    log.feed(completed(&log, 2, None));
    log.feed(log.scheduled(run, &work, &agent, 3));
    log.feed(completed(&log, 3, Some(0.75)));
    let facts = log.watch.facts(agent.id).unwrap();
    assert_eq!((facts.attempts, facts.costed_completions), (3, 2));
    assert_eq!(facts.average_cost_usd(), Some(0.5));
}

#[test]
fn evolving_says_whose_facts_changed() {
    let mut log = Log::new();
    let (author, reviewer) = (log.agent.clone(), agent("Bo"));
    let work = step("work", StepType::Implementation, None);
    let run = ExecutionId::new();
    let events = [
        log.scheduled(run, &work, &author, 1),
        log.completed(run, &work, author.id, 1),
        log.review_scheduled(run, &work, &reviewer, 2),
        log.reviewed(run, &work, reviewer.id, 2, true),
        log.ended(run),
    ];
    let changed: Vec<Vec<AgentId>> = events
        .iter()
        .map(|event| log.watch.evolve(event, log.clock))
        .collect();
    assert_eq!(
        changed,
        [
            vec![author.id],
            vec![author.id],
            vec![],
            // The reviewer ended an attempt; the author's work was reviewed.
            vec![reviewer.id, author.id],
            vec![],
        ]
    );
}

#[test]
fn replaying_the_log_raises_the_same_alerts_with_the_same_ids() {
    let mut log = Log::new();
    for fails in [true, true, false, true, true, true, false] {
        log.one_attempt(fails);
    }
    for _ in 0..3 {
        reviewed_task(&mut log, false);
    }
    assert_eq!(log.raised.len(), 2, "{:?}", log.raised);
    // A restart: a fresh watch reads the same log from its start.
    let mut watch = Watch::default();
    let mut replayed = Vec::new();
    for (event, at) in &log.fed {
        for alert in watch.decide(event, *at) {
            replayed.push((alert_id(&alert, *at), alert));
        }
        watch.evolve(event, *at);
    }
    assert_eq!(replayed, log.raised);
}

#[test]
fn an_alerts_id_is_derived_from_its_agent_key_and_crossing() {
    let mut log = Log::new();
    for _ in 0..MIN_ATTEMPTS {
        log.one_attempt(true);
    }
    let (id, alert) = log.raised[0].clone();
    let at = log.clock - Duration::minutes(1);
    assert_eq!(alert_id(&alert, at), id);
    let next = AlertRaised {
        crossing: 2,
        ..alert.clone()
    };
    assert_ne!(alert_id(&next, at), id);
    let other_type = AlertRaised {
        task_type: Some(StepType::Review),
        ..alert
    };
    assert_ne!(alert_id(&other_type, at), id);
}

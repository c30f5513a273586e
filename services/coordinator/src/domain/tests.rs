//! Given events, when a command, then events — and properties over random workflows.

use cadre_proto::events::{AssignmentReason, StepCompleted, StepFailed, StepStarted};
use cadre_proto::model::{
    AgentProfile, Constraints, Coordination, ModelParameters, StepResult, StepType, TriggerReason,
    WorkflowConfiguration, WorkflowDefinition, WorkflowStep, WorkflowType,
};
use cadre_proto::{AgentId, Event, EventId, ExecutionId, StepId, WorkflowId};
use proptest::prelude::*;

use super::execution::{Command, DomainError, Start, State, decide, evolve};
use super::validation::validate_workflow;

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
            coordination: Coordination::default(),
            constraints: Constraints::default(),
        },
    }
}

fn start(workflow: &WorkflowDefinition, agents: &[AgentProfile]) -> Command {
    Command::Start(Box::new(Start {
        execution_id: ExecutionId::new(),
        execution_number: 1,
        trigger_reason: TriggerReason::Manual,
        triggered_by: None,
        workflow: workflow.clone(),
        agents: agents.to_vec(),
    }))
}

fn fold(events: &[Event]) -> State {
    events.iter().fold(State::NotStarted, evolve)
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

fn completed(of: &Event) -> Event {
    let Event::StepScheduled(s) = of else {
        panic!("not a StepScheduled: {of:?}")
    };
    Event::StepCompleted(Box::new(StepCompleted {
        execution_id: s.execution_id,
        workflow_id: s.workflow_id,
        step_id: s.step.id.clone(),
        step_name: s.step.name.clone(),
        attempt: s.attempt,
        agent_id: s.agent.id,
        result: StepResult {
            summary: format!("did {}", s.step.id),
            output: format!("output of {}", s.step.id),
            ..StepResult::default()
        },
        provider: "offline".into(),
        model: "offline-1".into(),
        duration_ms: 1,
    }))
}

fn failed(of: &Event, error: &str) -> Event {
    let Event::StepScheduled(s) = of else {
        panic!("not a StepScheduled: {of:?}")
    };
    Event::StepFailed(StepFailed {
        execution_id: s.execution_id,
        workflow_id: s.workflow_id,
        step_id: s.step.id.clone(),
        step_name: s.step.name.clone(),
        attempt: s.attempt,
        agent_id: s.agent.id,
        error: error.into(),
    })
}

fn advance(log: &[Event]) -> Vec<Event> {
    decide(
        &Command::Advance {
            watermark: log.len() as u64,
        },
        &fold(log),
    )
    .unwrap()
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
    let mut log = decide(&start(&wf, &team), &State::NotStarted).unwrap();

    let first = advance(&log);
    assert_eq!(scheduled(&first), vec![("design".into(), 1, team[0].id)]);
    let Event::StepScheduled(s) = &first[0] else {
        unreachable!()
    };
    assert_eq!(
        s.knowledge_watermark, 1,
        "the watermark is the state's last sequence"
    );
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
    log.push(completed(&second[0]));
    let third = advance(&log);
    assert_eq!(scheduled(&third), vec![("review".into(), 1, team[2].id)]);
    log.extend(third.clone());
    log.push(completed(&third[0]));

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
    let log = decide(&start(&wf, &team), &State::NotStarted).unwrap();
    let ready = advance(&log);
    assert_eq!(
        scheduled(&ready),
        vec![("a".into(), 1, team[0].id), ("b".into(), 1, team[1].id)],
        "spread over the least loaded agents"
    );

    let mut serial = workflow(&team, steps);
    serial.configuration.constraints.allow_parallel_execution = Some(false);
    let mut log = decide(&start(&serial, &team), &State::NotStarted).unwrap();
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

#[test]
fn a_failed_step_is_retried_then_fails_the_execution() {
    let team = vec![agent("Ada", &[])];
    let mut wf = workflow(&team, vec![step("only", &[], &[])]);
    wf.configuration.constraints.max_retries = Some(1);
    let mut log = decide(&start(&wf, &team), &State::NotStarted).unwrap();

    let first = advance(&log);
    log.extend(first.clone());
    log.push(failed(&first[0], "provider returned 400"));
    let retry = advance(&log);
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
    assert_eq!(failure.failed_step_id, Some(StepId::parse("only").unwrap()));
    assert!(
        failure
            .error
            .contains("after 2 attempt(s): provider returned 400")
    );
}

#[test]
fn duplicates_and_strays_change_nothing() {
    let team = vec![agent("Ada", &[])];
    let wf = workflow(&team, vec![step("a", &[], &[]), step("b", &["a"], &[])]);
    let mut log = decide(&start(&wf, &team), &State::NotStarted).unwrap();
    let first = advance(&log);
    log.extend(first.clone());
    let Event::StepScheduled(s) = &first[0] else {
        unreachable!()
    };
    log.push(Event::StepStarted(StepStarted {
        execution_id: s.execution_id,
        workflow_id: s.workflow_id,
        step_id: s.step.id.clone(),
        step_name: s.step.name.clone(),
        attempt: 1,
        agent_id: s.agent.id,
        scheduled_event_id: EventId::new(),
    }));
    log.push(completed(&first[0]));
    let once = fold(&log);

    let mut twice = log.clone();
    twice.extend(first.clone()); // the StepScheduled again
    twice.push(completed(&first[0])); // and its completion again
    assert_eq!(fold(&twice), once);
    let advance_at = |state: &State| decide(&Command::Advance { watermark: 9 }, state).unwrap();
    assert_eq!(advance_at(&fold(&twice)), advance_at(&once));

    assert!(matches!(
        decide(&start(&wf, &team), &once),
        Err(DomainError::AlreadyStarted(_))
    ));
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
        let mut log = decide(&start(&wf, &team), &State::NotStarted).unwrap();
        let mut in_flight: Vec<Event> = Vec::new();
        let mut order: Vec<String> = Vec::new();
        let mut picks = picks.into_iter().cycle();
        loop {
            let decided = advance(&log);
            if let Some(Event::ExecutionCompleted(_)) = decided.first() {
                break;
            }
            in_flight.extend(decided.iter().cloned());
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
        let mut log = decide(&start(&wf, &team), &State::NotStarted).unwrap();
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
}

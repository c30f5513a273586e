//! The escalation ladder, a person in the loop, approval steps, lead rules, the time after
//! which a run needs a person, sagas (compensation and re-planning), and the coordinator
//! agent's choice of who takes a step.

use cadre_proto::events::{
    AssignmentReason, EscalationResolved, FailureCause, LeadTaken, Request, Resolution, RiskSource,
    StepEscalated,
};
use cadre_proto::model::{EscalationRung, ModelChoice, RiskLead, StepType, WorkflowDefinition};
use cadre_proto::timers::{Timer, When};
use cadre_proto::{AgentId, EscalationId, Event, StepId};
use chrono::TimeDelta;

use super::*;
use crate::domain::execution::StepState;

fn escalated(events: &[Event]) -> &StepEscalated {
    match events {
        [Event::StepEscalated(e)] => e,
        other => panic!("expected one StepEscalated, got {other:?}"),
    }
}

/// A person's `resolution` of the escalation `decided` opened, by Pat.
fn resolve(
    log: &[Event],
    id: EscalationId,
    resolution: Resolution,
) -> Result<Event, TransitionRefused> {
    let request = Request {
        requested_by: Some("Pat".into()),
        reason: Some("looked into it".into()),
    };
    decide(
        &Command::Resolve {
            escalation_id: id,
            resolution,
            request,
        },
        &fold(log),
        now(),
    )
    .map(|events| {
        let [event] = <[Event; 1]>::try_from(events).expect("one event");
        event
    })
}

fn ladder_team() -> (Vec<AgentProfile>, WorkflowDefinition) {
    let team = vec![
        agent("Ada", &["rust"]),
        agent("Bo", &["rust"]),
        agent("Cy", &["planning"]),
    ];
    let mut wf = workflow(
        &team,
        vec![
            step("design", &[], &["planning"]),
            step("build", &["design"], &["rust"]),
        ],
    );
    wf.coordinator_agent_id = Some(team[2].id);
    wf.configuration.escalation.ladder = vec![
        EscalationRung::Reassign,
        EscalationRung::StrongerModel,
        EscalationRung::Coordinator,
        EscalationRung::Person,
    ];
    wf.configuration.escalation.stronger_model = Some(ModelChoice {
        provider: "big".into(),
        model: "big-1".into(),
    });
    (team, wf)
}

#[test]
fn a_step_past_its_retries_climbs_the_ladder_one_attempt_per_rung_then_waits_for_a_person() {
    let (team, wf) = ladder_team();
    assert!(
        validate_workflow(&wf).is_empty(),
        "{:?}",
        validate_workflow(&wf)
    );
    let mut log = run_to_step(&wf, &team, "build");
    let first = advance(&log);
    assert_eq!(scheduled(&first), [("build".into(), 1, team[0].id)]);
    log.extend(first.clone());
    log.push(failed(the_scheduled(&first), "HTTP 500 from ada's model"));

    // maxRetries 0: the first failure climbs the first rung, to the other rust agent.
    let up = advance(&log);
    let e = escalated(&up);
    assert_eq!(
        (e.rung, e.attempt, e.agent.as_ref().map(|a| a.id)),
        (EscalationRung::Reassign, 1, Some(team[1].id))
    );
    assert!(e.escalation_id.is_none(), "an agent takes it, not a person");
    assert!(
        e.reason.contains("HTTP 500 from ada's model"),
        "{}",
        e.reason
    );
    assert_eq!(e.context.failures.len(), 1);
    log.extend(up);
    let second = advance(&log);
    let Event::StepScheduled(s) = the_scheduled(&second) else {
        unreachable!()
    };
    assert_eq!((s.attempt, s.agent.id), (2, team[1].id));
    assert_eq!(
        s.reason,
        AssignmentReason::Escalated {
            rung: EscalationRung::Reassign
        }
    );
    log.extend(second.clone());
    log.push(failed(the_scheduled(&second), "HTTP 500 from bo's model"));

    // Then Bo again, on the stronger model.
    let up = advance(&log);
    let e = escalated(&up);
    let taker = e.agent.clone().unwrap();
    assert_eq!(e.rung, EscalationRung::StrongerModel);
    assert_eq!(
        (taker.id, taker.provider.as_str(), taker.model.as_str()),
        (team[1].id, "big", "big-1")
    );
    assert_eq!(e.context.tried, [EscalationRung::Reassign]);
    log.extend(up);
    let third = advance(&log);
    let Event::StepScheduled(s) = the_scheduled(&third) else {
        unreachable!()
    };
    assert_eq!((s.attempt, s.agent.provider.as_str()), (3, "big"));
    log.extend(third.clone());
    log.push(failed(the_scheduled(&third), "still failing"));

    // Then the coordinator agent.
    let up = advance(&log);
    let e = escalated(&up);
    assert_eq!(
        (e.rung, e.agent.as_ref().map(|a| a.id)),
        (EscalationRung::Coordinator, Some(team[2].id))
    );
    log.extend(up);
    let fourth = advance(&log);
    assert_eq!(scheduled(&fourth), [("build".into(), 4, team[2].id)]);
    log.extend(fourth.clone());
    log.push(failed(the_scheduled(&fourth), "the coordinator failed too"));

    // Then a person, with the whole context.
    let up = advance(&log);
    let e = escalated(&up).clone();
    assert_eq!(e.rung, EscalationRung::Person);
    assert_eq!(
        e.escalation_id,
        Some(EscalationId::of(e.execution_id, &e.step_id, 4))
    );
    assert!(e.agent.is_none());
    let errors: Vec<&str> = e
        .context
        .failures
        .iter()
        .map(|f| f.error.as_str())
        .collect();
    assert_eq!(
        errors,
        [
            "HTTP 500 from ada's model",
            "HTTP 500 from bo's model",
            "still failing",
            "the coordinator failed too"
        ]
    );
    assert_eq!(
        e.context.tried,
        [
            EscalationRung::Reassign,
            EscalationRung::StrongerModel,
            EscalationRung::Coordinator
        ]
    );
    assert_eq!(
        e.context.outputs.len(),
        1,
        "the design's summary: {:?}",
        e.context.outputs
    );
    log.extend(up);

    // Waiting costs nothing: no decision, no timer, and the run does not count as stuck.
    assert!(advance(&log).is_empty());
    let State::Started(execution) = fold(&log) else {
        unreachable!()
    };
    assert_eq!(execution.steps[&s.step.id].state.name(), "escalated");
    assert!(effects(&fold(&log), log.last().unwrap(), now()).is_empty());
}

/// The log of a run of `wf` in which every step before `until` completed.
fn run_to_step(wf: &WorkflowDefinition, team: &[AgentProfile], until: &str) -> Vec<Event> {
    let mut log = start(wf, team);
    loop {
        let decided = advance(&log);
        let next = scheduled(&decided);
        let approval = decided
            .iter()
            .any(|e| matches!(e, Event::StepEscalated(e) if e.step_id.as_str() == until));
        if next.iter().any(|(step, ..)| step == until) || approval || decided.is_empty() {
            return log;
        }
        let completions: Vec<Event> = decided
            .iter()
            .filter(|e| matches!(e, Event::StepScheduled(_)))
            .map(completed)
            .collect();
        log.extend(decided);
        log.extend(completions);
    }
}

/// A run of the ladder team whose `build` step waits for a person after `failures` failures.
fn waiting_for_a_person(
    ladder: Vec<EscalationRung>,
) -> (Vec<AgentProfile>, Vec<Event>, StepEscalated) {
    let (team, mut wf) = ladder_team();
    wf.configuration.escalation.ladder = ladder;
    wf.configuration.escalation.stronger_model = None;
    let mut log = run_to_step(&wf, &team, "build");
    loop {
        let decided = advance(&log);
        if let [Event::StepEscalated(e)] = decided.as_slice()
            && e.rung == EscalationRung::Person
        {
            let e = e.as_ref().clone();
            log.extend(decided);
            return (team, log, e);
        }
        let failures: Vec<Event> = decided
            .iter()
            .filter(|e| matches!(e, Event::StepScheduled(_)))
            .map(|s| failed(s, "boom"))
            .collect();
        log.extend(decided);
        log.extend(failures);
    }
}

#[test]
fn a_persons_retry_goes_to_the_last_agent_and_its_failure_comes_back_to_a_person() {
    let (team, mut log, e) = waiting_for_a_person(vec![EscalationRung::Person]);
    let id = e.escalation_id.unwrap();
    let resolved = resolve(&log, id, Resolution::Retry).unwrap();
    log.push(resolved);
    let retry = advance(&log);
    let Event::StepScheduled(s) = the_scheduled(&retry) else {
        unreachable!()
    };
    assert_eq!((s.attempt, s.agent.id), (2, team[0].id));
    assert_eq!(
        s.reason,
        AssignmentReason::PersonDecided {
            by: Some("Pat".into())
        }
    );
    log.extend(retry.clone());

    // The same escalation cannot be resolved twice.
    assert!(matches!(
        resolve(&log, id, Resolution::Skip),
        Err(TransitionRefused::NotOpen { .. })
    ));

    log.push(failed(the_scheduled(&retry), "boom again"));
    let again = advance(&log);
    let e2 = escalated(&again);
    assert_eq!(e2.rung, EscalationRung::Person);
    assert_ne!(
        e2.escalation_id,
        Some(id),
        "a new escalation for a new attempt"
    );
    assert_eq!(e2.context.failures.len(), 2);
}

#[test]
fn an_escalation_resolved_before_the_run_ended_is_refused_as_resolved_not_as_ended() {
    let (_, mut log, e) = waiting_for_a_person(vec![EscalationRung::Person]);
    let id = e.escalation_id.unwrap();
    let cancel =
        |log: &[Event]| decide(&Command::Cancel(Request::default()), &fold(log), now()).unwrap();
    // Cancelled while a person was to decide: the run's end is the answer.
    let mut cancelled = log.clone();
    cancelled.extend(cancel(&cancelled));
    assert!(matches!(
        resolve(&cancelled, id, Resolution::Skip),
        Err(TransitionRefused::Invalid {
            status: "cancelled",
            ..
        })
    ));
    // Resolved, then the run ended: the escalation is what is not open any more.
    log.push(resolve(&log, id, Resolution::Skip).unwrap());
    log.extend(cancel(&log));
    assert!(matches!(
        resolve(&log, id, Resolution::Retry),
        Err(TransitionRefused::NotOpen { .. })
    ));
}

#[test]
fn a_person_reassigns_provides_the_output_skips_or_aborts() {
    // Reassign: the agent named takes the next attempt.
    let (team, log, e) = waiting_for_a_person(vec![EscalationRung::Person]);
    let id = e.escalation_id.unwrap();
    let mut reassigned = log.clone();
    reassigned.push(
        resolve(
            &log,
            id,
            Resolution::Reassign {
                agent_id: team[2].id,
            },
        )
        .unwrap(),
    );
    assert_eq!(
        scheduled(&advance(&reassigned)),
        [("build".into(), 2, team[2].id)]
    );
    let outsider = AgentId::new();
    let refused = resolve(&log, id, Resolution::Reassign { agent_id: outsider });
    assert!(
        matches!(&refused, Err(TransitionRefused::Unfit { field: "agentId", why }) if why.contains("does not take part")),
        "{refused:?}"
    );

    // Provide the output: the step completes with it, and the run with it.
    let mut provided = log.clone();
    provided.push(
        resolve(
            &log,
            id,
            Resolution::ProvideOutput {
                summary: "built by hand".into(),
                output: "the binary".into(),
            },
        )
        .unwrap(),
    );
    let end = advance(&provided);
    let [Event::ExecutionCompleted(done)] = end.as_slice() else {
        panic!("expected the run to complete, got {end:?}")
    };
    assert_eq!(done.final_output["build"]["summary"], "built by hand");
    assert!(
        done.final_output["build"]["agentId"].is_null(),
        "a person, not an agent"
    );

    // Skip: done for its dependants, as a false condition is.
    let mut skipped = log.clone();
    skipped.push(resolve(&log, id, Resolution::Skip).unwrap());
    assert!(matches!(
        advance(&skipped).as_slice(),
        [Event::ExecutionCompleted(_)]
    ));

    // Abort: the run fails, naming who and why.
    let mut aborted = log.clone();
    aborted.push(resolve(&log, id, Resolution::Abort).unwrap());
    let end = advance(&aborted);
    let [Event::ExecutionFailed(f)] = end.as_slice() else {
        panic!("expected the run to fail, got {end:?}")
    };
    assert_eq!(
        f.cause,
        FailureCause::Aborted {
            step_id: Some(e.step_id.clone()),
            escalation_id: id
        }
    );
    assert_eq!(
        f.error,
        "Pat aborted the run at step 'Step build': looked into it"
    );
    aborted.extend(end);
    assert!(
        advance(&aborted).is_empty(),
        "nothing is scheduled after an abort"
    );
    // Its escalation was resolved by the abort: that is what a second resolution hears.
    assert!(matches!(
        resolve(&aborted, id, Resolution::Retry),
        Err(TransitionRefused::NotOpen { .. })
    ));

    // Approving a failure is not an action it takes.
    assert!(matches!(
        resolve(&log, id, Resolution::Approve),
        Err(TransitionRefused::Unfit {
            field: "action",
            ..
        })
    ));
}

#[test]
fn rungs_that_cannot_apply_are_passed_over_and_named() {
    // One agent: nobody to reassign to, no stronger model, no coordinator set.
    let team = vec![agent("Ada", &[])];
    let mut wf = workflow(&team, vec![step("only", &[], &[])]);
    wf.configuration.escalation.ladder = vec![
        EscalationRung::Reassign,
        EscalationRung::StrongerModel,
        EscalationRung::Person,
    ];
    let mut log = start(&wf, &team);
    let first = advance(&log);
    log.extend(first.clone());
    log.push(failed(&first[0], "boom"));
    let up = advance(&log);
    let e = escalated(&up);
    assert_eq!(e.rung, EscalationRung::Person);
    assert!(
        e.reason.contains("passed over: reassign (every participating agent has failed it); strongerModel (neither escalation.strongerModel nor the agent's fallback names another model)"),
        "{}",
        e.reason
    );
}

#[test]
fn an_error_no_retry_fixes_climbs_at_once_and_a_ladder_without_a_person_ends_in_failure() {
    let team = vec![agent("Ada", &[]), agent("Bo", &[])];
    let mut wf = workflow(&team, vec![step("only", &[], &[])]);
    wf.configuration.constraints.max_retries = Some(5);
    wf.configuration.escalation.ladder = vec![EscalationRung::Reassign];
    let mut log = start(&wf, &team);
    let first = advance(&log);
    log.extend(first.clone());
    let Event::StepFailed(mut refused) = failed(&first[0], "HTTP 401: invalid_api_key") else {
        unreachable!()
    };
    refused.retryable = false;
    log.push(Event::StepFailed(refused));
    let up = advance(&log);
    assert_eq!(
        escalated(&up).rung,
        EscalationRung::Reassign,
        "retries left do not help"
    );
    log.extend(up);
    let second = advance(&log);
    assert_eq!(scheduled(&second), [("only".into(), 2, team[1].id)]);
    log.extend(second.clone());
    log.push(failed(the_scheduled(&second), "HTTP 500"));
    let end = advance(&log);
    let [Event::ExecutionFailed(f)] = end.as_slice() else {
        panic!("expected failure, got {end:?}")
    };
    assert!(
        f.error.contains("past its escalation ladder (reassign)"),
        "{}",
        f.error
    );
}

#[test]
fn an_approval_step_waits_for_a_person_who_approves_or_rejects_it() {
    let team = vec![agent("Ada", &[])];
    let mut approve = step("approve", &["build"], &[]);
    approve.step_type = StepType::Approval;
    approve.instructions = "Sign off the release".into();
    let wf = workflow(
        &team,
        vec![
            step("build", &[], &[]),
            approve,
            step("release", &["approve"], &[]),
        ],
    );
    assert!(validate_workflow(&wf).is_empty());
    let mut log = run_to_step(&wf, &team, "approve");
    let asked = advance(&log);
    let e = escalated(&asked).clone();
    assert!(e.approval);
    assert_eq!((e.rung, e.attempt), (EscalationRung::Person, 1));
    assert!(e.reason.contains("Sign off the release"), "{}", e.reason);
    assert_eq!(e.context.outputs.len(), 1, "what is to be approved");
    log.extend(asked);
    assert!(
        advance(&log).is_empty(),
        "nothing runs until a person answers"
    );
    let id = e.escalation_id.unwrap();
    assert!(matches!(
        resolve(&log, id, Resolution::Retry),
        Err(TransitionRefused::Unfit {
            field: "action",
            ..
        })
    ));

    let mut approved = log.clone();
    approved.push(resolve(&log, id, Resolution::Approve).unwrap());
    let next = advance(&approved);
    assert_eq!(scheduled(&next), [("release".into(), 1, team[0].id)]);
    let State::Started(execution) = fold(&approved) else {
        unreachable!()
    };
    let StepState::Completed { agent, summary, .. } = &execution.steps[&e.step_id].state else {
        panic!("approved is completed")
    };
    assert_eq!((agent, summary.as_str()), (&None, "Approved by Pat"));

    let mut rejected = log.clone();
    rejected.push(resolve(&log, id, Resolution::Reject).unwrap());
    let end = advance(&rejected);
    let [Event::ExecutionFailed(f)] = end.as_slice() else {
        panic!("expected failure, got {end:?}")
    };
    assert_eq!(
        f.error,
        "Pat rejected the approval of step 'Step approve': looked into it"
    );
}

#[test]
fn an_escalated_step_holds_its_place_in_a_one_at_a_time_run() {
    let team = vec![agent("Ada", &[])];
    let mut wf = workflow(&team, vec![step("a", &[], &[]), step("b", &[], &[])]);
    wf.configuration.constraints.allow_parallel_execution = Some(false);
    wf.configuration.escalation.ladder = vec![EscalationRung::Person];
    let mut log = start(&wf, &team);
    let first = advance(&log);
    log.extend(first.clone());
    log.push(failed(&first[0], "boom"));
    let up = advance(&log);
    let id = escalated(&up).escalation_id.unwrap();
    log.extend(up);
    assert!(advance(&log).is_empty(), "b waits: a holds the run");
    log.push(resolve(&log, id, Resolution::Skip).unwrap());
    assert_eq!(scheduled(&advance(&log)), [("b".into(), 1, team[0].id)]);
}

#[test]
fn validation_names_ladder_and_approval_mistakes() {
    let team = vec![agent("Ada", &[])];
    let mut approve = step("ok", &[], &[]);
    approve.step_type = StepType::Approval;
    approve.review_required = true;
    let mut wf = workflow(&team, vec![approve]);
    wf.configuration.escalation.ladder = vec![
        EscalationRung::Person,
        EscalationRung::Coordinator,
        EscalationRung::Person,
    ];
    wf.configuration.escalation.stronger_model = Some(ModelChoice {
        provider: "Big Model".into(),
        model: String::new(),
    });
    let pointers: Vec<String> = validate_workflow(&wf)
        .into_iter()
        .map(|e| e.pointer)
        .collect();
    for expected in [
        "/configuration/steps/0/reviewRequired",
        "/configuration/escalation/ladder/1",
        "/configuration/escalation/ladder/2",
        "/configuration/escalation/strongerModel/provider",
        "/configuration/escalation/strongerModel/model",
        "/configuration/escalation/strongerModel",
    ] {
        assert!(
            pointers.iter().any(|p| p == expected),
            "{expected} missing from {pointers:?}"
        );
    }
}

#[test]
fn the_escalation_events_survive_a_replay_and_a_stray_resolution_changes_nothing() {
    let (_, log, e) = waiting_for_a_person(vec![EscalationRung::Reassign, EscalationRung::Person]);
    assert_eq!(fold(&log), fold(&log));
    let stray = Event::EscalationResolved(Box::new(EscalationResolved {
        execution_id: e.execution_id,
        workflow_id: e.workflow_id,
        step_id: Some(e.step_id.clone()),
        step_name: Some(e.step_name.clone()),
        attempt: 1,
        escalation_id: EscalationId::of(e.execution_id, &e.step_id, 1),
        resolution: Resolution::Skip,
        request: Request::default(),
    }));
    let mut with_stray = log.clone();
    with_stray.push(stray);
    assert_eq!(fold(&with_stray), fold(&log));
}

fn lead_team() -> Vec<AgentProfile> {
    let mut sam = agent("Sam", &["rust"]);
    sam.role = "Security".into();
    let mut dana = agent("Dana", &["rust"]);
    dana.role = "database".into();
    vec![agent("Ada", &["rust"]), sam, dana]
}

fn lead_workflow(team: &[AgentProfile], steps: Vec<WorkflowStep>) -> WorkflowDefinition {
    let mut wf = workflow(team, steps);
    wf.configuration.escalation.leads = vec![
        RiskLead {
            risk: "security".into(),
            role: "security".into(),
        },
        RiskLead {
            risk: "data-corruption".into(),
            role: "database".into(),
        },
    ];
    assert!(
        validate_workflow(&wf).is_empty(),
        "{:?}",
        validate_workflow(&wf)
    );
    wf
}

fn lead_taken(events: &[Event]) -> &LeadTaken {
    match events {
        [Event::LeadTaken(lead)] => lead,
        other => panic!("expected one LeadTaken, got {other:?}"),
    }
}

#[test]
fn a_step_that_declares_a_risk_hands_the_lead_to_the_rules_role_once_it_is_ready() {
    let team = lead_team();
    let mut fix = step("fix", &["triage"], &["rust"]);
    fix.risks = vec!["Security".into()];
    let mut pinned = step("notify", &["fix"], &["rust"]);
    pinned.preferred_agent_id = Some(team[0].id);
    let wf = lead_workflow(
        &team,
        vec![
            step("triage", &[], &["rust"]),
            fix,
            step("deploy", &["fix"], &["rust"]),
            pinned,
        ],
    );
    let mut log = start(&wf, &team);
    let first = advance(&log);
    assert_eq!(
        scheduled(&first),
        [("triage".into(), 1, team[0].id)],
        "no lead before the risky step is ready"
    );
    log.extend(first.clone());
    log.push(completed(&first[0]));

    let lead = advance(&log);
    let taken = lead_taken(&lead);
    assert_eq!(
        (
            taken.risk.as_str(),
            taken.agent.as_ref().map(|a| a.id),
            taken.step_id.as_str(),
            taken.shown_by
        ),
        ("security", Some(team[1].id), "fix", RiskSource::Declared)
    );
    log.extend(lead);
    let fix = advance(&log);
    let Event::StepScheduled(s) = the_scheduled(&fix) else {
        unreachable!()
    };
    assert_eq!(s.agent.id, team[1].id);
    assert_eq!(
        s.reason,
        AssignmentReason::Lead {
            risk: "security".into()
        }
    );
    log.extend(fix.clone());
    log.push(completed(the_scheduled(&fix)));
    let rest = advance(&log);
    let mut after = scheduled(&rest);
    after.sort();
    assert_eq!(
        after,
        [
            ("deploy".into(), 1, team[1].id),
            ("notify".into(), 1, team[0].id)
        ],
        "the lead takes what follows, except a step's own preferred agent"
    );
}

#[test]
fn a_result_that_carries_a_risk_hashtag_hands_the_lead_and_a_rule_applies_once() {
    let team = lead_team();
    let wf = lead_workflow(
        &team,
        vec![
            step("investigate", &[], &["rust"]),
            step("repair", &["investigate"], &["rust"]),
        ],
    );
    let mut log = start(&wf, &team);
    let first = advance(&log);
    log.extend(first.clone());
    let Event::StepCompleted(mut done) = completed(&first[0]) else {
        unreachable!()
    };
    done.result.summary = "Rows were overwritten: #Data-Corruption.".into();
    log.push(Event::StepCompleted(done));
    let lead = advance(&log);
    let taken = lead_taken(&lead);
    assert_eq!(
        (
            taken.risk.as_str(),
            taken.agent.as_ref().map(|a| a.name.as_str()),
            taken.shown_by
        ),
        ("data-corruption", Some("Dana"), RiskSource::Result)
    );
    log.extend(lead);
    assert_eq!(
        scheduled(&advance(&log)),
        [("repair".into(), 1, team[2].id)]
    );
}

#[test]
fn a_lead_rule_with_nobody_of_its_role_is_recorded_and_changes_no_assignment() {
    let team = vec![agent("Ada", &["rust"]), agent("Bo", &["rust"])];
    let mut risky = step("a", &[], &["rust"]);
    risky.risks = vec!["security".into()];
    let wf = lead_workflow(&team, vec![risky]);
    let mut log = start(&wf, &team);
    let lead = advance(&log);
    assert!(lead_taken(&lead).agent.is_none());
    log.extend(lead);
    let next = advance(&log);
    assert_eq!(scheduled(&next), [("a".into(), 1, team[0].id)]);
    assert!(
        !next.iter().any(|e| matches!(e, Event::LeadTaken(_))),
        "once"
    );
}

fn escalation_timer(log: &[Event]) -> Timer {
    let State::Started(execution) = fold(log) else {
        unreachable!()
    };
    Timer::EscalationDue {
        workflow_id: execution.workflow.id,
        execution_id: execution.id,
    }
}

#[test]
fn a_run_past_its_time_for_a_person_stops_handing_out_steps_until_one_lets_it_continue() {
    let team = vec![agent("Ada", &[])];
    let mut wf = workflow(&team, vec![step("a", &[], &[]), step("b", &["a"], &[])]);
    wf.configuration.escalation.after_minutes = Some(60.0);
    assert!(validate_workflow(&wf).is_empty());
    let mut log = start(&wf, &team);
    let armed = effects(&fold(&log), &log[0], now());
    assert!(
        armed.contains(&Effect::StartTimer {
            timer: escalation_timer(&log),
            when: When::At(now() + TimeDelta::minutes(60)),
        }),
        "{armed:?}"
    );
    let first = advance(&log);
    log.extend(first.clone());

    let due = fire(&log, escalation_timer(&log));
    let [Event::ExecutionEscalated(e)] = due.as_slice() else {
        panic!("expected the run to escalate, got {due:?}")
    };
    assert!(
        e.reason.contains("a (scheduled), b (waiting)"),
        "{}",
        e.reason
    );
    let id = e.escalation_id;
    log.extend(due);
    assert_eq!(status(&log), Status::Escalated);
    assert!(fire(&log, escalation_timer(&log)).is_empty(), "once");

    // The running step finishes; nothing new is handed out; pause and resume do not apply.
    log.push(completed(&first[0]));
    assert!(advance(&log).is_empty());
    for command in [
        Command::Pause(Request::default()),
        Command::Resume(Request::default()),
    ] {
        assert!(matches!(
            decide(&command, &fold(&log), now()),
            Err(TransitionRefused::Invalid {
                status: "escalated",
                ..
            })
        ));
    }
    assert!(matches!(
        resolve(&log, id, Resolution::Retry),
        Err(TransitionRefused::Unfit { why, .. }) if why.contains("continue or abort")
    ));

    let mut aborted = log.clone();
    aborted.push(resolve(&log, id, Resolution::Abort).unwrap());
    let end = advance(&aborted);
    let [Event::ExecutionFailed(f)] = end.as_slice() else {
        panic!("expected the run to fail, got {end:?}")
    };
    assert_eq!(
        f.cause,
        FailureCause::Aborted {
            step_id: None,
            escalation_id: id
        }
    );
    assert_eq!(
        f.error,
        "Pat aborted the run when it escalated for its time: looked into it"
    );

    let resolved = resolve(&log, id, Resolution::Continue).unwrap();
    let Event::EscalationResolved(r) = &resolved else {
        unreachable!()
    };
    assert_eq!((r.step_id.as_ref(), r.attempt), (None, 0));
    log.push(resolved);
    assert_eq!(status(&log), Status::Running);
    assert_eq!(scheduled(&advance(&log)), [("b".into(), 1, team[0].id)]);
    assert!(matches!(
        resolve(&log, id, Resolution::Continue),
        Err(TransitionRefused::NotOpen { .. })
    ));
}

#[test]
fn a_paused_run_past_its_time_asks_a_person_once_resumed_and_continuing_keeps_it_running() {
    let team = vec![agent("Ada", &[])];
    let mut wf = workflow(&team, vec![step("a", &[], &[]), step("b", &["a"], &[])]);
    wf.configuration.escalation.after_minutes = Some(60.0);
    let mut log = start(&wf, &team);
    let first = advance(&log);
    log.extend(first);
    log.extend(decide(&Command::Pause(Request::default()), &fold(&log), now()).unwrap());
    assert_eq!(status(&log), Status::Paused);

    // The person who paused it holds it: the timer asks no one, and a pause stays a pause.
    let later = now() + TimeDelta::minutes(61);
    let timer = escalation_timer(&log);
    assert!(
        decide(&Command::TimerFired(timer), &fold(&log), later)
            .unwrap()
            .is_empty()
    );
    assert!(
        decide(&Command::Advance, &fold(&log), later)
            .unwrap()
            .is_empty()
    );

    // Resumed past its time, it waits for a person at once; `continue` lets it run.
    log.extend(decide(&Command::Resume(Request::default()), &fold(&log), later).unwrap());
    assert_eq!(status(&log), Status::Running);
    let due = decide(&Command::Advance, &fold(&log), later).unwrap();
    let [Event::ExecutionEscalated(e)] = due.as_slice() else {
        panic!("expected the run to escalate once resumed, got {due:?}")
    };
    let id = e.escalation_id;
    log.extend(due);
    assert_eq!(status(&log), Status::Escalated);
    log.push(resolve(&log, id, Resolution::Continue).unwrap());
    assert_eq!(status(&log), Status::Running);
    assert!(
        decide(&Command::Advance, &fold(&log), later)
            .unwrap()
            .is_empty(),
        "asked once"
    );
}

fn saga_workflow(team: &[AgentProfile]) -> WorkflowDefinition {
    let mut a = step("a", &[], &["rust"]);
    a.compensation = Some("Drop the table a created.".into());
    let mut b = step("b", &["a"], &["rust"]);
    b.compensation = Some("Roll the deployment b made back.".into());
    let wf = workflow(
        team,
        vec![
            a,
            b,
            step("notes", &["b"], &["rust"]),
            step("c", &["notes"], &["rust"]),
        ],
    );
    assert!(
        validate_workflow(&wf).is_empty(),
        "{:?}",
        validate_workflow(&wf)
    );
    wf
}

#[test]
fn a_failing_run_undoes_its_completed_steps_in_reverse_order_then_fails() {
    let team = vec![agent("Ada", &["rust"]), agent("Bo", &["rust"])];
    let wf = saga_workflow(&team);
    let mut log = run_to_step(&wf, &team, "c");
    let c = advance(&log);
    log.extend(c.clone());
    log.push(failed(the_scheduled(&c), "the migration broke"));

    let start = advance(&log);
    let [Event::SagaStarted(saga)] = start.as_slice() else {
        panic!("expected a saga, got {start:?}")
    };
    let order: Vec<&str> = saga.steps.iter().map(StepId::as_str).collect();
    assert_eq!(
        order,
        ["b", "a"],
        "in reverse, and only steps with a compensation"
    );
    assert_eq!(
        saga.cause,
        FailureCause::StepFailed {
            step_id: StepId::parse("c").unwrap()
        }
    );
    log.extend(start);

    let undo_b = advance(&log);
    let Event::StepScheduled(s) = the_scheduled(&undo_b) else {
        unreachable!()
    };
    assert_eq!(s.step.id.as_str(), "undo-b");
    assert_eq!(s.step.instructions, "Roll the deployment b made back.");
    assert_eq!(
        s.reason,
        AssignmentReason::Compensates {
            step_id: StepId::parse("b").unwrap()
        }
    );
    let State::Started(execution) = fold(&log) else {
        unreachable!()
    };
    let StepState::Completed {
        agent: b_author, ..
    } = execution.steps[&StepId::parse("b").unwrap()].state
    else {
        unreachable!()
    };
    assert_eq!(Some(s.agent.id), b_author, "whoever did it undoes it");
    log.extend(undo_b.clone());
    assert!(advance(&log).is_empty(), "one undoing at a time");
    log.push(completed(the_scheduled(&undo_b)));

    let undo_a = advance(&log);
    assert_eq!(scheduled(&undo_a)[0].0, "undo-a");
    log.extend(undo_a.clone());
    log.push(failed(the_scheduled(&undo_a), "the table is locked"));

    let end = advance(&log);
    let [Event::ExecutionFailed(f)] = end.as_slice() else {
        panic!("expected the run to fail, got {end:?}")
    };
    assert!(
        f.error
            .ends_with("; compensated: b, a (not undone: the table is locked)"),
        "{}",
        f.error
    );
    assert!(f.error.contains("the migration broke"), "{}", f.error);
}

#[test]
fn a_person_who_aborts_a_run_starts_its_saga_and_a_cancel_stops_it() {
    let team = vec![agent("Ada", &["rust"])];
    let mut wf = saga_workflow(&team);
    wf.configuration.escalation.ladder = vec![EscalationRung::Person];
    let mut log = run_to_step(&wf, &team, "c");
    let c = advance(&log);
    log.extend(c.clone());
    log.push(failed(the_scheduled(&c), "boom"));
    let up = advance(&log);
    let id = escalated(&up).escalation_id.unwrap();
    log.extend(up);
    log.push(resolve(&log, id, Resolution::Abort).unwrap());
    let start = advance(&log);
    let [Event::SagaStarted(saga)] = start.as_slice() else {
        panic!("expected a saga, got {start:?}")
    };
    assert!(matches!(saga.cause, FailureCause::Aborted { .. }));
    log.extend(start);
    let undo = advance(&log);
    log.extend(undo);
    let cancel = decide(&Command::Cancel(Request::default()), &fold(&log), now()).unwrap();
    log.extend(cancel);
    assert_eq!(status(&log), Status::Cancelled);
    assert!(advance(&log).is_empty());
}

#[test]
fn an_undoing_that_runs_past_its_steps_time_out_is_timed_out() {
    let team = vec![agent("Ada", &["rust"])];
    let mut wf = saga_workflow(&team);
    wf.configuration.steps[1].timeout_minutes = Some(5.0);
    let mut log = run_to_step(&wf, &team, "c");
    let c = advance(&log);
    log.extend(c.clone());
    log.push(failed(the_scheduled(&c), "boom"));
    let start = advance(&log);
    log.extend(start);
    let undo_b = advance(&log);
    log.extend(undo_b.clone());
    // The timer b's attempt armed (b's deadline is the undoing's, on this test's clock) still
    // guards the undoing.
    let State::Started(execution) = fold(&log) else {
        unreachable!()
    };
    assert_eq!(
        execution.step_timer,
        Some(now() + TimeDelta::minutes(5)),
        "b's attempt ended but its timer stays armed"
    );
    let timed_out = fire(&log, deadlines_timer(&undo_b[0]));
    assert!(
        matches!(timed_out.as_slice(), [Event::StepTimedOut(t), Event::StepDeadlinesChecked(_)] if t.attempt.step_id.as_str() == "undo-b"),
        "{timed_out:?}"
    );
    log.extend(timed_out);
    assert_eq!(scheduled(&advance(&log))[0].0, "undo-a", "the saga goes on");
}

#[test]
fn validation_reserves_the_undo_prefix_and_bounds_ids_with_a_compensation() {
    let team = vec![agent("Ada", &[])];
    let mut reserved = step("undo-x", &[], &[]);
    reserved.compensation = Some(" ".into());
    let mut long = step(&"x".repeat(64), &[], &[]);
    long.compensation = Some("Revert.".into());
    let wf = workflow(&team, vec![reserved, long]);
    let pointers: Vec<String> = validate_workflow(&wf)
        .into_iter()
        .map(|e| e.pointer)
        .collect();
    for expected in [
        "/configuration/steps/0/id",
        "/configuration/steps/0/compensation",
        "/configuration/steps/1/id",
    ] {
        assert!(
            pointers.iter().any(|p| p == expected),
            "{expected} missing from {pointers:?}"
        );
    }
}

/// `of` completes with this output.
fn completed_with(of: &Event, output: &str) -> Event {
    let Event::StepCompleted(mut done) = completed(of) else {
        unreachable!()
    };
    done.result.summary = "Smaller steps that avoid the broken migration.".into();
    done.result.output = output.to_owned();
    Event::StepCompleted(done)
}

fn replanning_team() -> (Vec<AgentProfile>, WorkflowDefinition) {
    let team = vec![agent("Ada", &["rust"]), agent("Cy", &["planning"])];
    let mut wf = saga_workflow(&team);
    wf.coordinator_agent_id = Some(team[1].id);
    wf.configuration.saga.replan = true;
    assert!(validate_workflow(&wf).is_empty());
    (team, wf)
}

/// A replanning run's log up to the coordinator's re-planning attempt, which is returned.
fn up_to_replanning(wf: &WorkflowDefinition, team: &[AgentProfile]) -> (Vec<Event>, Event) {
    let mut log = run_to_step(wf, team, "c");
    let c = advance(&log);
    log.extend(c.clone());
    log.push(failed(the_scheduled(&c), "the migration broke"));
    loop {
        let decided = advance(&log);
        log.extend(decided.clone());
        match decided.as_slice() {
            [Event::SagaStarted(s)] => assert!(s.replan),
            [Event::StepScheduled(s)] if s.step.id.as_str().starts_with("undo-") => {
                log.push(completed(&decided[0]));
            }
            [Event::StepScheduled(s)] if s.step.id.as_str() == "replan-1" => {
                return (log, decided[0].clone());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn after_its_undoings_a_failing_run_re_plans_with_its_coordinator_and_goes_on() {
    let (team, wf) = replanning_team();
    let (mut log, planning) = up_to_replanning(&wf, &team);
    let Event::StepScheduled(s) = &planning else {
        unreachable!()
    };
    assert_eq!(s.agent.id, team[1].id, "the coordinator agent re-plans");
    assert_eq!(s.reason, AssignmentReason::Replans);
    assert!(s.step.instructions.contains("the migration broke"));
    assert!(s.step.instructions.contains("compensated: b, a"));
    assert!(
        s.step.instructions.contains("\"id\": \"notes\""),
        "the steps as JSON"
    );

    let plan = r#"Here is the plan:
```json
{"steps": [
  {"id": "c-small", "name": "Migrate in batches", "description": "Smaller migration.",
   "type": "implementation", "requiredSkills": ["rust"], "dependsOn": [], "assignedAgentRole": "ada",
   "instructions": "Migrate 1,000 rows at a time.", "expectedOutput": "Migrated rows."},
  {"id": "c", "name": "Step c", "description": "Again.", "type": "implementation", "assignedAgentRole": "ada",
   "dependsOn": ["c-small"], "instructions": "Finish.", "expectedOutput": "Done."}
]}
```"#;
    log.push(completed_with(&planning, plan));
    let replanned = advance(&log);
    let [Event::ExecutionReplanned(r)] = replanned.as_slice() else {
        panic!("expected the run to re-plan, got {replanned:?}")
    };
    assert_eq!((r.replan, r.agent_id), (1, team[1].id));
    let ids: Vec<&str> = r.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["c-small", "c"]);
    assert!(r.error.contains("the migration broke"));
    log.extend(replanned);
    assert_eq!(status(&log), Status::Running);

    let next = advance(&log);
    assert_eq!(scheduled(&next), [("c-small".into(), 1, team[0].id)]);
    log.extend(next.clone());
    log.push(completed(&next[0]));
    let c = advance(&log);
    assert_eq!(
        scheduled(&c)[0].1,
        2,
        "a step kept by the new plan counts on"
    );
    log.extend(c.clone());
    log.push(completed(&c[0]));
    let end = advance(&log);
    let [Event::ExecutionCompleted(done)] = end.as_slice() else {
        panic!("expected the run to complete, got {end:?}")
    };
    assert_eq!(
        done.final_output
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["c"]
    );
}

#[test]
fn a_proposal_that_is_no_valid_workflow_fails_the_run_with_why() {
    let (team, wf) = replanning_team();
    let (log, planning) = up_to_replanning(&wf, &team);
    for (output, why) in [
        ("I would rather not.", "holds no JSON object"),
        (
            r#"{"steps": [{"id": "x", "name": "X", "description": "", "type": "analysis",
               "dependsOn": ["ghost"], "instructions": "Do.", "expectedOutput": "It."}]}"#,
            "its steps are not valid: /configuration/steps/0/dependsOn/0",
        ),
        (r#"{"steps": []}"#, "it proposed no step"),
    ] {
        let mut log = log.clone();
        log.push(completed_with(&planning, output));
        let end = advance(&log);
        let [Event::ExecutionFailed(f)] = end.as_slice() else {
            panic!("expected failure for {output}, got {end:?}")
        };
        assert!(
            f.error
                .contains("the migration broke; compensated: b, a; re-planning failed: "),
            "{}",
            f.error
        );
        assert!(f.error.contains(why), "{why} not in {}", f.error);
    }
}

#[test]
fn a_run_re_plans_at_most_max_replans_times() {
    let (team, wf) = replanning_team();
    let (mut log, planning) = up_to_replanning(&wf, &team);
    let plan = r#"{"steps": [{"id": "retry", "name": "Retry", "description": "", "type": "analysis", "assignedAgentRole": "ada",
        "instructions": "Do.", "expectedOutput": "It."}]}"#;
    log.push(completed_with(&planning, plan));
    let replanned = advance(&log);
    log.extend(replanned);
    let next = advance(&log);
    log.extend(next.clone());
    log.push(failed(&next[0], "broke again"));
    let end = advance(&log);
    let [Event::ExecutionFailed(f)] = end.as_slice() else {
        panic!("no second re-planning: {end:?}")
    };
    assert!(f.error.contains("broke again"), "{}", f.error);
}

fn delegation_team() -> (Vec<AgentProfile>, WorkflowDefinition) {
    let team = vec![
        agent("Ada", &["rust"]),
        agent("Bo", &["rust"]),
        agent("Cy", &["planning"]),
    ];
    let mut build = step("build", &[], &["rust"]);
    build.timeout_minutes = Some(2.0);
    let mut pinned = step("docs", &[], &["writing"]);
    pinned.assigned_agent_role = Some("ada".into());
    let mut wf = workflow(&team, vec![build, pinned]);
    wf.coordinator_agent_id = Some(team[2].id);
    assert!(validate_workflow(&wf).is_empty());
    (team, wf)
}

/// The run up to the coordinator's choice for `build`, which is returned.
fn asked_to_choose(wf: &WorkflowDefinition, team: &[AgentProfile]) -> (Vec<Event>, Event) {
    let mut log = start(wf, team);
    let first = advance(&log);
    let mut handed = scheduled(&first);
    handed.sort();
    assert_eq!(
        handed,
        [
            ("delegate-build".into(), 1, team[2].id),
            ("docs".into(), 1, team[0].id),
        ],
        "a step with a role is not delegated"
    );
    let choosing = first
        .iter()
        .find(|e| matches!(e, Event::StepScheduled(s) if s.step.id.as_str() == "delegate-build"))
        .unwrap()
        .clone();
    let Event::StepScheduled(s) = &choosing else {
        unreachable!()
    };
    assert_eq!(
        s.reason,
        AssignmentReason::Chooses {
            step_id: StepId::parse("build").unwrap()
        }
    );
    assert!(
        s.step
            .instructions
            .contains(&format!("- {}: Bo (bo)", team[1].id))
    );
    log.extend(first);
    (log, choosing)
}

#[test]
fn the_coordinator_agent_chooses_who_takes_a_step_and_its_reasoning_is_recorded() {
    let (team, wf) = delegation_team();
    let (log, choosing) = asked_to_choose(&wf, &team);
    for named in [team[1].id.to_string(), "bo".to_owned()] {
        let mut log = log.clone();
        let answer =
            format!(r#"{{"agentId": "{named}", "reasoning": "Bo wrote the build scripts."}}"#);
        log.push(completed_with(&choosing, &answer));
        let next = advance(&log);
        let Event::StepScheduled(s) = the_scheduled(&next) else {
            unreachable!()
        };
        assert_eq!((s.step.id.as_str(), s.agent.id), ("build", team[1].id));
        assert_eq!(
            s.reason,
            AssignmentReason::Delegated {
                reasoning: "Bo wrote the build scripts.".into()
            }
        );
    }
}

#[test]
fn a_choice_that_cannot_be_taken_falls_back_to_the_usual_rules_and_says_why() {
    let (team, wf) = delegation_team();
    let (log, choosing) = asked_to_choose(&wf, &team);
    let Event::StepScheduled(s) = &choosing else {
        unreachable!()
    };
    let failed_choice = Event::StepFailed(StepFailed {
        attempt: StepAttempt::of(s),
        retryable: true,
        error: "HTTP 500".into(),
        usage: None,
    });
    let timed_out = fire(&log, deadlines_timer(&choosing));
    assert!(
        matches!(timed_out.as_slice(), [Event::StepTimedOut(_), ..]),
        "{timed_out:?}"
    );
    for (outcome, why) in [
        (
            completed_with(&choosing, "Bo, clearly."),
            "holds no JSON object",
        ),
        (
            completed_with(&choosing, r#"{"agentId": "Zed"}"#),
            "it chose 'Zed', who does not take part",
        ),
        (failed_choice, "HTTP 500"),
        (timed_out[0].clone(), "timed out after 2 minute(s)"),
    ] {
        let mut log = log.clone();
        log.push(outcome);
        let next = advance(&log);
        let Event::StepScheduled(s) = the_scheduled(&next) else {
            unreachable!()
        };
        assert_eq!(s.step.id.as_str(), "build");
        let AssignmentReason::NotDelegated {
            why: said,
            fallback,
        } = &s.reason
        else {
            panic!("{:?}", s.reason)
        };
        assert!(said.contains(why), "{why} not in {said}");
        assert!(
            matches!(fallback.as_ref(), AssignmentReason::SkillMatch { .. }),
            "{fallback:?}"
        );
    }
}

#[test]
fn a_ladder_whose_rungs_all_pass_over_fails_the_run_saying_why_and_a_persons_attempt_goes_back_to_a_person()
 {
    let team = vec![agent("Ada", &[])];
    let mut wf = workflow(&team, vec![step("only", &[], &[])]);
    wf.configuration.escalation.ladder =
        vec![EscalationRung::Reassign, EscalationRung::StrongerModel];
    let mut log = start(&wf, &team);
    let first = advance(&log);
    log.extend(first.clone());
    log.push(failed(&first[0], "boom"));
    let end = advance(&log);
    let [Event::ExecutionFailed(f)] = end.as_slice() else {
        panic!("expected failure, got {end:?}")
    };
    assert!(
        f.error.contains(
            "rungs passed over: reassign (every participating agent has failed it); strongerModel"
        ),
        "{}",
        f.error
    );

    // A person's attempt that fails goes back to a person, before the rungs after `person`.
    let (_, log, e) = waiting_for_a_person(vec![EscalationRung::Person, EscalationRung::Reassign]);
    let mut log = log;
    log.push(resolve(&log, e.escalation_id.unwrap(), Resolution::Retry).unwrap());
    let retry = advance(&log);
    log.extend(retry.clone());
    log.push(failed(the_scheduled(&retry), "boom again"));
    assert_eq!(escalated(&advance(&log)).rung, EscalationRung::Person);
}

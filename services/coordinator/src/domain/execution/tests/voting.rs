//! `decisionMaking` consensus and majority: a panel votes on a step's work, one voter at a
//! time, and the ballot closes as soon as its outcome is settled.

use cadre_proto::events::{AssignmentReason, Ballot, VotesTallied};
use cadre_proto::model::{DecisionMaking, EscalationRung, StepType};

use super::*;
use crate::domain::execution::StepState;

/// Ada decides; Bo, Cy and Di can vote. `rule` decides; `voters` seats are asked for.
fn panel_team(
    rule: DecisionMaking,
    voters: Option<u32>,
) -> (Vec<AgentProfile>, WorkflowDefinition) {
    let team = vec![
        agent("Ada", &["design"]),
        agent("Bo", &[]),
        agent("Cy", &[]),
        agent("Di", &[]),
    ];
    let mut decide = step("decide", &[], &["design"]);
    decide.step_type = StepType::Decision;
    let mut wf = workflow(&team, vec![decide, step("build", &["decide"], &[])]);
    wf.configuration.coordination.decision_making = rule;
    wf.configuration.coordination.voters = voters;
    assert_eq!(validate_workflow(&wf), vec![]);
    (team, wf)
}

fn the_tally(events: &[Event]) -> &VotesTallied {
    match events {
        [Event::VotesTallied(t)] => t,
        other => panic!("expected one VotesTallied, got {other:?}"),
    }
}

/// The next voter's attempt: its ballot, and who votes.
fn voter(events: &[Event]) -> (Ballot, AgentId) {
    let Event::StepScheduled(s) = the_scheduled(events) else {
        unreachable!()
    };
    let ballot = s.review.as_ref().and_then(|r| r.ballot).expect("a vote");
    let AssignmentReason::Voter {
        ballot: reason,
        author_agent_id,
        ..
    } = &s.reason
    else {
        panic!("expected a voter's reason, got {:?}", s.reason)
    };
    assert_eq!(*reason, ballot);
    assert_ne!(*author_agent_id, s.agent.id, "the author does not vote");
    (ballot, s.agent.id)
}

/// Runs the author's work, then the votes in order, and returns the log and the voters.
fn vote(log: &mut Vec<Event>, votes: &[bool]) -> Vec<AgentId> {
    let mut voters = Vec::new();
    for (seat, approved) in votes.iter().enumerate() {
        let next = advance(log);
        let (ballot, agent) = voter(&next);
        assert_eq!(ballot.seat, seat as u32 + 1);
        voters.push(agent);
        log.extend(next.clone());
        log.push(reviewed(
            &next[0],
            *approved,
            if *approved {
                "Sound."
            } else {
                "Weigh the cost."
            },
        ));
    }
    voters
}

fn authored(log: &mut Vec<Event>) {
    let work = advance(log);
    log.extend(work.clone());
    log.push(completed(&work[0]));
}

#[test]
fn a_majority_asks_each_seat_once_and_approves_with_more_than_half() {
    let (team, wf) = panel_team(DecisionMaking::Majority, None);
    let mut log = start(&wf, &team);
    authored(&mut log);
    let voters = vote(&mut log, &[false, true, true]);
    let mut distinct = voters.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "three different voters: {voters:?}");
    assert!(!voters.contains(&team[0].id));

    let tallied = advance(&log);
    let tally = the_tally(&tallied);
    assert!(tally.approved);
    assert_eq!(
        (tally.round, tally.seats, tally.rule),
        (1, 3, DecisionMaking::Majority)
    );
    assert_eq!(tally.votes.len(), 3);
    assert_eq!(tally.approvals(), 2);
    assert_eq!(tally.author_agent_id, team[0].id);
    log.extend(tallied.clone());

    assert_eq!(
        scheduled(&advance(&log)),
        vec![("build".into(), 1, team[0].id)],
        "approved: the decision is made and its dependants go on"
    );
    let State::Started(e) = fold(&log) else {
        unreachable!()
    };
    let StepState::Completed { agent, output, .. } =
        &e.steps[&StepId::parse("decide").unwrap()].state
    else {
        panic!("not completed")
    };
    assert_eq!(
        (*agent, output.as_str()),
        (Some(team[0].id), "output of decide")
    );
    // Deciding again on the same log tallies nothing twice.
    assert!(
        !advance(&log)
            .iter()
            .any(|e| matches!(e, Event::VotesTallied(_)))
    );
}

#[test]
fn a_majority_closes_as_soon_as_the_outcome_is_settled() {
    for (votes, approved) in [(vec![true, true], true), (vec![false, false], false)] {
        let (team, wf) = panel_team(DecisionMaking::Majority, None);
        let mut log = start(&wf, &team);
        authored(&mut log);
        vote(&mut log, &votes);
        let tally = the_tally(&advance(&log)).clone();
        assert_eq!(tally.approved, approved);
        assert_eq!(tally.votes.len(), 2, "the third seat is never asked");
    }

    // An even panel split in two rejects: more than half must approve.
    let (team, wf) = panel_team(DecisionMaking::Majority, Some(2));
    let mut log = start(&wf, &team);
    authored(&mut log);
    vote(&mut log, &[true, false]);
    assert!(!the_tally(&advance(&log)).approved);
}

#[test]
fn a_consensus_is_rejected_by_one_vote_and_the_author_reworks_with_the_dissent() {
    let (team, wf) = panel_team(DecisionMaking::Consensus, None);
    let mut log = start(&wf, &team);
    authored(&mut log);
    vote(&mut log, &[true, false]);
    let tallied = advance(&log);
    let tally = the_tally(&tallied);
    assert!(!tally.approved);
    assert_eq!(
        tally.feedback(),
        "Weigh the cost.",
        "the dissent, not the approval"
    );
    log.extend(tallied);

    let rework = advance(&log);
    let Event::StepScheduled(w) = the_scheduled(&rework) else {
        unreachable!()
    };
    assert_eq!(w.agent.id, team[0].id, "back to its author");
    assert_eq!(w.reason, AssignmentReason::Rework);
    assert_eq!(w.feedback.as_deref(), Some("Weigh the cost."));
    log.extend(rework.clone());
    log.push(completed(&rework[0]));

    // Round two: a fresh panel, every seat approves.
    vote(&mut log, &[true, true, true]);
    let tally = the_tally(&advance(&log)).clone();
    assert!(tally.approved);
    assert_eq!(tally.round, 2);
}

#[test]
fn a_panel_that_keeps_rejecting_fails_the_step_with_its_dissent() {
    let (team, mut wf) = panel_team(DecisionMaking::Consensus, Some(2));
    wf.configuration.constraints.max_review_rounds = Some(1);
    let mut log = start(&wf, &team);
    authored(&mut log);
    vote(&mut log, &[false]);
    let tallied = advance(&log);
    assert!(!the_tally(&tallied).approved);
    log.extend(tallied);
    let end = advance(&log);
    let [Event::ExecutionFailed(failure)] = end.as_slice() else {
        panic!("expected failure, got {end:?}")
    };
    assert!(
        failure.error.ends_with(
            "was rejected by its panel in 1 review round(s), all that maxReviewRounds allows; \
             the last feedback: Weigh the cost."
        ),
        "{}",
        failure.error
    );
}

#[test]
fn a_failed_vote_is_asked_again_for_the_same_seat() {
    let (team, mut wf) = panel_team(DecisionMaking::Majority, None);
    wf.configuration.constraints.max_retries = Some(1);
    let mut log = start(&wf, &team);
    authored(&mut log);
    let first = vote(&mut log, &[true]);
    let next = advance(&log);
    assert_eq!(voter(&next).0.seat, 2);
    log.extend(next.clone());
    log.push(failed(&next[0], "provider said 503"));
    let again = after_backoff(&mut log);
    let (ballot, agent) = voter(&again);
    assert_eq!(ballot.seat, 2, "the same seat, asked again");
    assert_ne!(agent, first[0], "never a voter who already voted");
}

#[test]
fn a_review_step_and_a_required_review_are_voted_on_but_other_work_is_not() {
    let (team, mut wf) = panel_team(DecisionMaking::Majority, None);
    wf.configuration.steps[0].step_type = StepType::Review;
    wf.configuration.steps[1].review_required = true;
    let mut log = start(&wf, &team);
    authored(&mut log);
    vote(&mut log, &[true, true]);
    let tallied = advance(&log);
    assert!(the_tally(&tallied).approved);
    log.extend(tallied);
    authored(&mut log);
    vote(&mut log, &[true, true]);
    log.extend(advance(&log));
    assert!(matches!(
        advance(&log).as_slice(),
        [Event::ExecutionCompleted(_)]
    ));

    // Under `coordinator` a decision step is done when its agent is.
    let (team, mut wf) = panel_team(DecisionMaking::Majority, None);
    wf.configuration.coordination = Coordination::default();
    let mut log = start(&wf, &team);
    authored(&mut log);
    assert_eq!(
        scheduled(&advance(&log)),
        vec![("build".into(), 1, team[0].id)]
    );
}

#[test]
fn a_failed_judge_is_replaced_by_one_who_may_judge_never_the_author_nor_a_voter() {
    let (team, mut wf) = panel_team(DecisionMaking::Consensus, None);
    wf.configuration.constraints.max_retries = Some(1);
    wf.configuration.escalation.ladder = vec![EscalationRung::Reassign, EscalationRung::Person];
    let mut log = start(&wf, &team);
    authored(&mut log);
    let first = vote(&mut log, &[true])[0];

    // Seat 2 fails, then its retry goes to someone who has not failed it.
    let next = advance(&log);
    let (_, failing) = voter(&next);
    log.extend(next.clone());
    log.push(failed(&next[0], "provider said 400"));
    let again = after_backoff(&mut log);
    let (ballot, retried) = voter(&again);
    assert_eq!(ballot.seat, 2);
    assert!(
        ![team[0].id, first, failing].contains(&retried),
        "not the author, not a voter, not the one that failed"
    );

    // Out of retries: the reassign rung finds nobody left who may judge, and a person is asked.
    log.extend(again.clone());
    log.push(failed(&again[0], "provider said 400"));
    let climbed = advance(&log);
    let Some(Event::StepEscalated(e)) = climbed.first() else {
        panic!("expected an escalation, got {climbed:?}")
    };
    let escalation_id = e.escalation_id.expect("a person is asked");
    log.extend(climbed);
    for barred in [team[0].id, first] {
        let refused = decide(
            &Command::Resolve {
                escalation_id,
                resolution: Resolution::Reassign { agent_id: barred },
                request: Request::default(),
            },
            &fold(&log),
            now(),
        );
        let Err(TransitionRefused::Unfit { field, why }) = refused else {
            panic!("a person may not give the vote to {barred}: {refused:?}")
        };
        assert_eq!(field, "agentId");
        assert!(
            why.contains("wrote the work under review, or already voted"),
            "{why}"
        );
    }
}

#[test]
fn a_child_workflow_steps_work_is_reviewed_by_an_agent_not_run_again() {
    let team = vec![agent("Ada", &[]), agent("Bo", &[])];
    let mut nested = step("nested", &[], &[]);
    nested.child_workflow_id = Some(WorkflowId::new());
    nested.review_required = true;
    let wf = workflow(&team, vec![nested, step("after", &["nested"], &[])]);
    let mut log = start(&wf, &team);
    authored(&mut log);
    let review = advance(&log);
    let Event::StepScheduled(r) = the_scheduled(&review) else {
        unreachable!()
    };
    assert!(r.review.is_some());
    log.extend(review.clone());
    assert!(
        matches!(
            effects(&fold(&log), &review[0], now()).as_slice(),
            [crate::domain::Effect::Dispatch { .. }, ..]
        ),
        "an agent reviews the child's result; no second child run"
    );
    log.push(reviewed(&review[0], true, "Good."));
    assert_eq!(
        scheduled(&advance(&log))
            .into_iter()
            .map(|(id, ..)| id)
            .collect::<Vec<_>>(),
        vec!["after".to_owned()]
    );
}

//! Control flow end to end: fan-out and fan-in with steps running at the same time, phases,
//! a condition that skips a branch, answers too large for an event (claim checks), a review
//! and a panel's votes.

// Test code: a panic is the failure report, in helpers as in tests.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cadre_proto::{Event, ExecutionId, TenantId, WorkflowId, subjects};
use cadre_tests::api::agent;
use cadre_tests::fake_llm::review_feedback;
use cadre_tests::stack::FAKE_PROVIDER;
use cadre_tests::{Stack, StackOptions};
use serde_json::{Value, json};

const FINISH: Duration = Duration::from_secs(90);

fn step(id: &str, depends_on: &[&str]) -> Value {
    json!({
        "id": id, "name": format!("Step {id}"), "description": "A part of the work.",
        "type": "analysis", "requiredSkills": ["research"], "dependsOn": depends_on,
        "instructions": format!("Do {id}."), "expectedOutput": "It, done."
    })
}

/// Two agents on the fake LLM and a workflow with these steps and configuration extras.
async fn workflow(stack: &Stack, steps: Vec<Value>, extra: Value) -> String {
    let mut ids = Vec::new();
    for name in ["Ada", "Bo"] {
        let created = stack
            .api
            .register_agent(&agent(name, "analyst", &["research"], FAKE_PROVIDER))
            .await;
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    let mut configuration = json!({ "steps": steps });
    for (key, value) in extra.as_object().unwrap() {
        configuration[key] = value.clone();
    }
    let body = json!({
        "name": "Flow", "description": "Control flow.", "workflowType": "conditional",
        "participatingAgents": ids, "configuration": configuration
    });
    stack.api.create_workflow(&body).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Runs the workflow once to its end; returns the execution view and its events.
async fn run(
    stack: &Stack,
    workflow_id: &str,
    input: Value,
) -> (Value, Vec<(Event, chrono::DateTime<chrono::Utc>)>) {
    let reply = stack
        .api
        .post(
            &format!("/v1/workflows/{workflow_id}/executions"),
            &json!({ "input": input }),
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let id = reply.body["executionId"].as_str().unwrap().to_owned();
    let view = stack.wait_until_finished(&id, FINISH).await;
    let events = stack
        .bus
        .read_all(&subjects::execution_state(
            &TenantId::default_tenant(),
            WorkflowId(workflow_id.parse().unwrap()),
            ExecutionId(id.parse().unwrap()),
        ))
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.envelope.event, s.envelope.meta.time))
        .collect();
    (view, events)
}

/// The most steps that were running at once, from their start and end events.
fn max_overlap(events: &[(Event, chrono::DateTime<chrono::Utc>)]) -> usize {
    let (mut running, mut most) = (0usize, 0usize);
    for (event, _) in events {
        match event {
            Event::StepStarted(_) => {
                running += 1;
                most = most.max(running);
            }
            Event::StepCompleted(_) | Event::StepFailed(_) => running = running.saturating_sub(1),
            _ => {}
        }
    }
    most
}

fn order_of(events: &[(Event, chrono::DateTime<chrono::Utc>)], kind: &str) -> Vec<String> {
    events
        .iter()
        .filter_map(|(event, _)| match (kind, event) {
            ("started", Event::StepStarted(s)) => Some(s.attempt.step_id.to_string()),
            ("completed", Event::StepCompleted(c)) => Some(c.attempt.step_id.to_string()),
            ("skipped", Event::StepSkipped(s)) => Some(s.step_id.to_string()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn fan_out_runs_steps_at_the_same_time_and_fan_in_waits_for_all() {
    let stack = Stack::start().await;
    // Each answer takes a while, so steps that may overlap do.
    stack.llm.set_latency(Duration::from_millis(400));
    let steps = vec![
        step("plan", &[]),
        step("a", &["plan"]),
        step("b", &["plan"]),
        step("c", &["plan"]),
        step("merge", &["a", "b", "c"]),
    ];
    let workflow_id = workflow(&stack, steps, json!({})).await;
    let (view, events) = run(&stack, &workflow_id, json!({})).await;
    assert_eq!(view["status"], "completed", "{view:#}");
    let overlap = max_overlap(&events);
    println!("fan-out: at most {overlap} steps ran at once");
    assert_eq!(overlap, 3, "the three branches ran at the same time");
    let started = order_of(&events, "started");
    let completed = order_of(&events, "completed");
    assert_eq!(started.first().unwrap(), "plan");
    assert_eq!(started.last().unwrap(), "merge");
    let merge_started = events
        .iter()
        .position(
            |(e, _)| matches!(e, Event::StepStarted(s) if s.attempt.step_id.as_str() == "merge"),
        )
        .unwrap();
    for branch in ["a", "b", "c"] {
        let done = events
            .iter()
            .position(|(e, _)| matches!(e, Event::StepCompleted(c) if c.attempt.step_id.as_str() == branch))
            .unwrap();
        assert!(
            done < merge_started,
            "merge started before {branch} completed"
        );
    }
    assert_eq!(completed.len(), 5);
    stack.stop().await;
}

#[tokio::test]
async fn phases_run_in_order_each_in_its_mode() {
    let stack = Stack::start().await;
    stack.llm.set_latency(Duration::from_millis(200));
    let steps = vec![
        step("design", &[]),
        step("threats", &[]),
        step("build", &[]),
        step("test", &[]),
    ];
    let phases = json!({"phases": [
        {"name": "Phase 1: Analysis & Design", "mode": "parallel", "steps": ["design", "threats"]},
        {"name": "Phase 2: Core Implementation", "mode": "sequential", "steps": ["build", "test"]}
    ]});
    let workflow_id = workflow(&stack, steps, phases).await;
    let (view, events) = run(&stack, &workflow_id, json!({})).await;
    assert_eq!(view["status"], "completed", "{view:#}");
    let started = order_of(&events, "started");
    assert_eq!(&started[2..], ["build", "test"], "{started:?}");
    let position = |kind: &str, id: &str| {
        events
            .iter()
            .position(|(e, _)| match (kind, e) {
                ("started", Event::StepStarted(s)) => s.attempt.step_id.as_str() == id,
                ("completed", Event::StepCompleted(c)) => c.attempt.step_id.as_str() == id,
                _ => false,
            })
            .unwrap()
    };
    assert!(position("completed", "design") < position("started", "build"));
    assert!(position("completed", "threats") < position("started", "build"));
    assert!(position("completed", "build") < position("started", "test"));
    assert!(
        position("started", "threats") < position("completed", "design"),
        "phase 1 runs in parallel"
    );
    stack.stop().await;
}

#[tokio::test]
async fn a_false_condition_skips_its_branch_and_the_run_completes() {
    let stack = Stack::start().await;
    let mut hotfix = step("hotfix", &["triage"]);
    hotfix["condition"] = json!("input.severity == 'critical'");
    let mut polish = step("polish", &["triage"]);
    polish["condition"] = json!("input.severity != 'critical'");
    let steps = vec![
        step("triage", &[]),
        hotfix,
        polish,
        step("report", &["hotfix", "polish"]),
    ];
    let workflow_id = workflow(&stack, steps, json!({})).await;
    let (view, events) = run(&stack, &workflow_id, json!({"severity": "critical"})).await;
    assert_eq!(view["status"], "completed", "{view:#}");
    assert_eq!(order_of(&events, "skipped"), vec!["polish"]);
    assert_eq!(
        order_of(&events, "completed"),
        vec!["triage", "hotfix", "report"]
    );
    assert_eq!(view["stepResults"]["polish"]["status"], "skipped");
    // Its result is not "not completed yet": it never will be, and the answer says why.
    let detail = stack
        .api
        .no_result(view["id"].as_str().unwrap(), "polish")
        .await;
    assert!(
        detail.ends_with("it was skipped: its condition 'input.severity != 'critical'' was false"),
        "{detail}"
    );
    assert_eq!(view["executionContext"]["severity"], "critical");
    // The agent saw the input as quoted data.
    assert!(stack.llm.requests().iter().all(
        |r| r.user.contains("Execution Input") && r.user.contains("\"severity\": \"critical\"")
    ));
    let bad = stack
        .api
        .post(
            "/v1/workflows",
            &json!({"name": "Bad", "description": "", "participatingAgents": [view["id"]],
                    "configuration": {"steps": [{"id": "x", "name": "X", "description": "", "type": "analysis",
                    "instructions": "i", "expectedOutput": "o", "condition": "input.severity =="}]}}),
        )
        .await;
    assert_eq!(bad.status, 422, "{}", bad.body);
    assert_eq!(
        bad.body["errors"][0]["pointer"],
        "/configuration/steps/0/condition"
    );
    stack.stop().await;
}

#[tokio::test]
async fn answers_too_large_for_an_event_go_by_reference_and_the_run_completes() {
    let stack = Stack::start_with(StackOptions::default()).await;
    // Three parallel sinks of ~380 KB each: together far over the log's 1 MiB per event.
    stack.llm.set_output_padding(380 * 1024);
    let steps = vec![step("a", &[]), step("b", &[]), step("c", &[])];
    let workflow_id = workflow(&stack, steps, json!({})).await;
    let (view, _) = run(&stack, &workflow_id, json!({})).await;
    assert_eq!(view["status"], "completed", "{view:#}");
    let entry = &view["stepResults"]["a"];
    assert!(
        entry["output"]
            .as_str()
            .unwrap()
            .contains("[preview: 2000 of"),
        "{entry:#}"
    );
    assert_eq!(entry["fullResult"]["bucket"], "CADRE_RESULTS");
    assert!(view["finalOutput"]["b"]["fullResult"].is_object());
    let whole = stack
        .api
        .get(&format!(
            "/v1/executions/{}/steps/a/result",
            view["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(whole.status, 200, "{}", whole.body);
    let output = whole.body["result"]["output"].as_str().unwrap();
    assert!(output.len() > 380 * 1024, "{}", output.len());
    assert!(output.starts_with("Deliverable of Step a"));
    // A step the run does not have is told apart from one that has not completed.
    let unknown = stack
        .api
        .get(&format!(
            "/v1/executions/{}/steps/nope/result",
            view["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    let detail = unknown.body["detail"].as_str().unwrap();
    assert!(detail.contains("no such step (its steps: a"), "{detail}");
    stack.stop().await;
}

/// A one-step workflow whose step runs `child` as a child execution (or asks an agent).
async fn nesting(stack: &Stack, agent_id: &str, name: &str, child: Option<&str>) -> String {
    let mut only = step("only", &[]);
    if let Some(child) = child {
        only["childWorkflowId"] = json!(child);
    }
    let body = json!({
        "name": name, "description": "Nested.", "workflowType": "recursive",
        "participatingAgents": [agent_id], "configuration": {"steps": [only]}
    });
    stack.api.create_workflow(&body).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_step_runs_another_workflow_as_a_child_and_nesting_is_bounded() {
    let stack = Stack::start().await;
    let ada = stack
        .api
        .register_agent(&agent("Ada", "analyst", &["research"], FAKE_PROVIDER))
        .await;
    let ada = ada["id"].as_str().unwrap();
    let leaf = nesting(&stack, ada, "Leaf", None).await;
    let parent = nesting(&stack, ada, "Parent", Some(&leaf)).await;
    let (view, _) = run(&stack, &parent, json!({"ticket": 7})).await;
    assert_eq!(view["status"], "completed", "{view:#}");
    let entry = &view["stepResults"]["only"];
    assert_eq!(entry["provider"], "cadre");
    assert!(
        entry["output"]
            .as_str()
            .unwrap()
            .contains("Fake LLM completed Step only"),
        "the child's final output is the step's output: {entry:#}"
    );
    let children = stack
        .api
        .get(&format!("/v1/workflows/{leaf}/executions"))
        .await
        .body;
    let child = &children.as_array().unwrap()[0];
    assert_eq!(child["status"], "completed");
    assert_eq!(child["triggerReason"], "dependency");
    assert_eq!(
        child["executionContext"]["ticket"], 7,
        "the child gets the parent's input"
    );

    // Seven levels where five are allowed: the sixth child is refused and the failure rises.
    let mut chain = leaf.clone();
    for level in 0..6 {
        chain = nesting(&stack, ada, &format!("Level {level}"), Some(&chain)).await;
    }
    let (view, _) = run(&stack, &chain, json!({})).await;
    assert_eq!(view["status"], "failed", "{view:#}");
    let error = view["errorMessage"].as_str().unwrap();
    assert!(
        error.contains("levels deep is over the limit of 5"),
        "{error}"
    );
    stack.stop().await;
}

#[tokio::test]
async fn a_review_rejected_once_then_accepted_sends_the_work_back_with_feedback() {
    let stack = Stack::start().await;
    stack.llm.reject_reviews(1);
    let author = stack
        .api
        .register_agent(&agent("Ada", "architect", &["research"], FAKE_PROVIDER))
        .await;
    let critic = stack
        .api
        .register_agent(&agent("Cy", "reviewer", &["code review"], FAKE_PROVIDER))
        .await;
    let mut design = step("design", &[]);
    design["reviewRequired"] = json!(true);
    design["reviewerRole"] = json!("reviewer");
    let body = json!({
        "name": "Reviewed", "description": "Reviewed work.",
        "participatingAgents": [author["id"], critic["id"]],
        "configuration": {"steps": [design, step("build", &["design"])]}
    });
    let workflow_id = stack.api.create_workflow(&body).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (view, events) = run(&stack, &workflow_id, json!({})).await;
    assert_eq!(view["status"], "completed", "{view:#}");
    let verdicts: Vec<(u32, bool)> = events
        .iter()
        .filter_map(|(e, _)| match e {
            Event::StepReviewed(r) => Some((r.round, r.approved)),
            _ => None,
        })
        .collect();
    assert_eq!(verdicts, vec![(1, false), (2, true)]);
    let entry = &view["stepResults"]["design"];
    assert_eq!(entry["status"], "completed");
    assert_eq!(entry["agentId"], author["id"], "the work is the author's");
    assert_eq!(entry["review"]["approved"], true);
    // The author's second attempt was asked to address the feedback.
    let rework = stack
        .llm
        .requests()
        .into_iter()
        .filter(|r| r.user.contains("Reviewer Feedback"))
        .collect::<Vec<_>>();
    assert_eq!(rework.len(), 1);
    assert!(rework[0].user.contains(review_feedback(true)));
    // The step after reads design's work, though reviews followed it in the log.
    let accepted = events
        .iter()
        .rev()
        .find_map(|(e, _)| match e {
            Event::StepCompleted(c) if c.attempt.step_id.as_str() == "design" => {
                Some(c.result.summary.clone())
            }
            _ => None,
        })
        .unwrap();
    let build = stack
        .llm
        .requests()
        .into_iter()
        .find(|r| r.step_name() == Some("Step build"))
        .unwrap();
    assert!(
        build.user.contains(&accepted),
        "{accepted:?} not in {}",
        build.user
    );
    let interactions = stack
        .api
        .get(&format!(
            "/v1/executions/{}/interactions",
            view["id"].as_str().unwrap()
        ))
        .await
        .body;
    let feedback: Vec<&Value> = interactions
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["interactionType"] == "feedback")
        .collect();
    assert_eq!(feedback.len(), 2, "{interactions:#}");
    assert!(
        feedback
            .iter()
            .all(|i| i["fromAgentId"] == critic["id"] && i["toAgentId"] == author["id"])
    );
    stack.stop().await;
}

#[tokio::test]
async fn a_panel_votes_on_a_decision_and_one_dissent_breaks_a_consensus() {
    let stack = Stack::start().await;
    // The first vote cast rejects; every later vote approves.
    stack.llm.reject_reviews(1);
    let mut ids = Vec::new();
    for (name, role) in [
        ("Ada", "architect"),
        ("Bo", "analyst"),
        ("Cy", "analyst"),
        ("Di", "analyst"),
    ] {
        let created = stack
            .api
            .register_agent(&agent(name, role, &["research"], FAKE_PROVIDER))
            .await;
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    let mut decide = step("decide", &[]);
    decide["type"] = json!("decision");
    decide["assignedAgentRole"] = json!("architect");
    let body = json!({
        "name": "Decided together", "description": "A decision a panel agrees on.",
        "participatingAgents": ids,
        "configuration": {
            "steps": [decide, step("build", &["decide"])],
            "coordination": {"decisionMaking": "consensus", "voters": 3}
        }
    });
    let workflow_id = stack.api.create_workflow(&body).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (view, events) = run(&stack, &workflow_id, json!({})).await;
    assert_eq!(view["status"], "completed", "{view:#}");

    // Round 1 closes at the first rejection; round 2 asks all three seats.
    let tallies: Vec<(u32, bool, usize)> = events
        .iter()
        .filter_map(|(e, _)| match e {
            Event::VotesTallied(t) => Some((t.round, t.approved, t.votes.len())),
            _ => None,
        })
        .collect();
    assert_eq!(tallies, vec![(1, false, 1), (2, true, 3)]);
    let voters: Vec<String> = events
        .iter()
        .filter_map(|(e, _)| match e {
            Event::StepReviewed(r) if r.ballot.is_some() => Some(r.attempt.agent_id.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(voters.len(), 4);
    assert!(
        !voters.contains(&ids[0]),
        "the author never votes: {voters:?}"
    );
    let mut round_two = voters[1..].to_vec();
    round_two.sort();
    round_two.dedup();
    assert_eq!(round_two.len(), 3, "three different voters in round 2");

    let entry = &view["stepResults"]["decide"];
    assert_eq!(entry["status"], "completed");
    assert_eq!(
        entry["agentId"],
        ids[0].as_str(),
        "the decision is its author's"
    );
    assert_eq!(entry["ballot"]["rule"], "consensus");
    assert_eq!(entry["ballot"]["votes"].as_array().unwrap().len(), 3);

    // Each voter was told it votes alone; the author reworked with the dissent.
    let requests = stack.llm.requests();
    let votes = requests
        .iter()
        .filter(|r| {
            r.user
                .contains("You are one of 3 voters on this work (consensus decides)")
        })
        .count();
    assert_eq!(votes, 4);
    let rework: Vec<_> = requests
        .iter()
        .filter(|r| r.user.contains("Reviewer Feedback"))
        .collect();
    assert_eq!(rework.len(), 1);
    assert!(rework[0].user.contains(review_feedback(true)));

    let interactions = stack
        .api
        .get(&format!(
            "/v1/executions/{}/interactions",
            view["id"].as_str().unwrap()
        ))
        .await
        .body;
    let tallied: Vec<&str> = interactions
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["message"].as_str())
        .filter(|m| m.starts_with("Votes on"))
        .collect();
    assert_eq!(tallied.len(), 2, "{interactions:#}");
    assert!(tallied[1].contains("3 approved, 0 rejected"), "{tallied:?}");
    stack.stop().await;
}

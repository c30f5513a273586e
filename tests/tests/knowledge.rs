//! Knowledge end to end: what a step shares reaches a later step's prompt under a handle, the
//! completion counts its use, and an agent's confirmation lands in the read model.

// Test code: a panic is the failure report, in helpers as in tests.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cadre_tests::fake_llm::{confirm_line, insight_line};
use cadre_tests::stack::FAKE_PROVIDER;
use cadre_tests::{Stack, eventually};
use serde_json::{Value, json};
use uuid::Uuid;

const FINISH: Duration = Duration::from_secs(60);

/// Runs the 2-step pipeline on the fake LLM; returns the agents (in step order) and the
/// workflow id.
async fn run_two_steps(stack: &Stack) -> (Vec<String>, Uuid) {
    let (agents, workflow_id) = stack.api.team_and_pipeline(FAKE_PROVIDER, 2).await;
    let (execution_id, _) = stack.api.start_execution(&workflow_id).await;
    let execution = stack.api.wait_until_finished(&execution_id, FINISH).await;
    assert_eq!(execution["status"], "completed", "{execution:#}");
    (agents, Uuid::parse_str(&workflow_id).unwrap())
}

/// The workflow's knowledge, per step: id, usage count, confirming agents, content.
async fn knowledge(stack: &Stack, workflow: Uuid) -> Vec<(String, Uuid, i32, Value, String)> {
    sqlx::query_as(
        "SELECT step_id, id, usage_count, validated_by_agents, content \
         FROM collaboration_knowledge WHERE workflow_id = $1 ORDER BY event_sequence",
    )
    .bind(workflow)
    .fetch_all(&stack.db.pool)
    .await
    .unwrap()
}

fn handle(id: Uuid) -> String {
    let hex = id.simple().to_string();
    format!("K-{}", &hex[24..])
}

/// The prompt the fake LLM received for the step named `name`.
fn prompt_of(stack: &Stack, name: &str) -> String {
    let request = stack
        .llm
        .requests()
        .into_iter()
        .find(|r| r.step_name() == Some(name))
        .unwrap_or_else(|| panic!("no request for {name}"));
    format!("{}\n{}", request.system, request.user)
}

#[tokio::test]
async fn a_later_step_reads_the_earlier_steps_knowledge_and_counts_its_use() {
    let stack = Stack::start().await;
    let (_, workflow) = run_two_steps(&stack).await;

    let rows = eventually(FINISH, "step 1's knowledge to be used once", || async {
        let rows = knowledge(&stack, workflow).await;
        let first: Vec<_> = rows.iter().filter(|r| r.0 == "step-1").collect();
        (first.len() == 2 && first.iter().all(|r| r.2 == 1)).then_some(rows)
    })
    .await;

    let first = prompt_of(&stack, "Analyse requirements");
    let second = prompt_of(&stack, "Implement the change");
    assert!(!first.contains("[K-"), "nothing to show the first step");
    assert!(second.contains(&insight_line("Analyse requirements")));
    for (step, id, usage, validated, _) in &rows {
        if step == "step-1" {
            // Shown under its handle, in the prompt's `- [K-…] Title (type): content` shape.
            assert!(
                second.contains(&format!("- [{}] ", handle(*id))),
                "{id} not in {second}"
            );
        } else {
            assert_eq!(*usage, 0, "no step read {step}'s knowledge");
        }
        assert_eq!(validated, &json!([]), "the default answers confirm nothing");
    }
    stack.stop().await;
}

#[tokio::test]
async fn an_agent_confirms_knowledge_its_prompt_showed() {
    let stack = Stack::start().await;
    stack.llm.confirm_knowledge();
    let (agents, workflow) = run_two_steps(&stack).await;

    let second_agent = json!([agents[1]]);
    let rows = eventually(
        FINISH,
        "step 2's agent to confirm step 1's knowledge",
        || async {
            let rows = knowledge(&stack, workflow).await;
            let first: Vec<_> = rows.iter().filter(|r| r.0 == "step-1").collect();
            (first.len() == 2 && first.iter().all(|r| r.3 == second_agent)).then_some(rows)
        },
    )
    .await;

    // Step 2's insights carry its confirmations, as knowledge of their own.
    let step_two_insights = rows
        .iter()
        .find(|r| r.0 == "step-2" && r.4.contains(&insight_line("Implement the change")))
        .unwrap();
    for (step, id, _, _, _) in rows.iter().filter(|r| r.0 == "step-1") {
        assert!(
            step_two_insights
                .4
                .contains(&confirm_line(&handle(*id), "Implement the change")),
            "{step}: {}",
            step_two_insights.4
        );
    }
    assert_eq!(step_two_insights.3, json!([]), "nobody confirmed step 2's");
    stack.stop().await;
}

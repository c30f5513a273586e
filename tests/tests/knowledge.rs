//! Knowledge end to end: what a step shares reaches a later step's prompt under a handle, the
//! completion counts its use, and an agent's confirmation, supersession or conflict lands in
//! the read models.

// Test code: a panic is the failure report, in helpers as in tests.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cadre_tests::fake_llm::{insight_line, verdict_line};
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
    let execution = stack.wait_until_finished(&execution_id, FINISH).await;
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
    // The API names each item by the handle prompts use.
    let listed = stack
        .api
        .get(&format!("/v1/workflows/{workflow}/knowledge"))
        .await;
    for item in listed.body.as_array().unwrap() {
        let id = Uuid::parse_str(item["id"].as_str().unwrap()).unwrap();
        assert_eq!(item["handle"], handle(id), "{item:#}");
    }
    stack.stop().await;
}

#[tokio::test]
async fn an_agent_confirms_knowledge_its_prompt_showed() {
    let stack = Stack::start().await;
    stack.llm.judge_knowledge("confirms");
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
            step_two_insights.4.contains(&verdict_line(
                "confirms",
                &handle(*id),
                "Implement the change"
            )),
            "{step}: {}",
            step_two_insights.4
        );
    }
    assert_eq!(step_two_insights.3, json!([]), "nobody confirmed step 2's");
    stack.stop().await;
}

#[tokio::test]
async fn an_agent_supersedes_knowledge_and_the_old_item_is_no_longer_offered() {
    let stack = Stack::start().await;
    stack.llm.judge_knowledge("supersedes");
    let (_, workflow) = run_two_steps(&stack).await;

    // Step 2 replaced what step 1 shared with its own insights: the old items are inactive,
    // each pointing at its replacement, which stays active.
    let rows: Vec<(String, Uuid, bool, Option<Uuid>, String)> =
        eventually(FINISH, "step 1's knowledge to be superseded", || async {
            let rows: Vec<(String, Uuid, bool, Option<Uuid>, String)> = sqlx::query_as(
                "SELECT step_id, id, is_active, superseded_by, knowledge_type \
                 FROM collaboration_knowledge WHERE workflow_id = $1 ORDER BY event_sequence",
            )
            .bind(workflow)
            .fetch_all(&stack.db.pool)
            .await
            .unwrap();
            let old = rows.iter().filter(|r| r.0 == "step-1");
            (old.clone().count() == 2 && old.clone().all(|r| !r.2)).then_some(rows)
        })
        .await;
    let replacement = rows
        .iter()
        .find(|r| r.0 == "step-2" && r.4 == "insight")
        .unwrap();
    assert!(replacement.2, "the replacement is active");
    for old in rows.iter().filter(|r| r.0 == "step-1") {
        assert_eq!(old.3, Some(replacement.1), "{old:?}");
    }

    // A third run's first step is shown only what is still active.
    let (execution_id, _) = stack.api.start_execution(&workflow.to_string()).await;
    stack.wait_until_finished(&execution_id, FINISH).await;
    let third = stack
        .llm
        .requests()
        .into_iter()
        .rfind(|r| r.step_name() == Some("Analyse requirements"))
        .unwrap();
    let prompt = format!("{}\n{}", third.system, third.user);
    // (As items, `- [K-…] `: the replacement's own text names the handles it replaced.)
    let shown = |id: Uuid| prompt.contains(&format!("- [{}] ", handle(id)));
    for old in rows.iter().filter(|r| r.0 == "step-1") {
        assert!(!shown(old.1), "superseded {} shown in {prompt}", old.1);
    }
    assert!(shown(replacement.1));
    stack.stop().await;
}

#[tokio::test]
async fn a_result_that_contradicts_an_active_constraint_is_flagged_as_a_conflict() {
    let stack = Stack::start().await;
    stack
        .llm
        .share_constraint("No new dependencies this quarter.");
    stack.llm.judge_knowledge("conflicts");
    let (agents, workflow) = run_two_steps(&stack).await;

    let constraint: Uuid = sqlx::query_scalar(
        "SELECT id FROM collaboration_knowledge \
         WHERE workflow_id = $1 AND step_id = 'step-1' AND knowledge_type = 'constraint'",
    )
    .bind(workflow)
    .fetch_one(&stack.db.pool)
    .await
    .unwrap();
    let flagged: Vec<(Uuid, bool, Value)> =
        eventually(FINISH, "the conflict interaction", || async {
            let rows: Vec<(Uuid, bool, Value)> = sqlx::query_as(
                "SELECT from_agent_id, requires_response, context_data FROM agent_interactions \
                 WHERE interaction_type = 'coordination' AND context_data ->> 'conflict' = 'true' \
                   AND context_data ->> 'knowledgeId' = $1",
            )
            .bind(constraint.to_string())
            .fetch_all(&stack.db.pool)
            .await
            .unwrap();
            (!rows.is_empty()).then_some(rows)
        })
        .await;
    assert_eq!(flagged.len(), 1);
    let (from, requires_response, context) = &flagged[0];
    assert_eq!(from.to_string(), agents[1], "step 2's agent flagged it");
    assert!(requires_response);
    assert_eq!(context["knowledgeType"], "constraint");
    assert_eq!(context["knowledge"], "No new dependencies this quarter.");
    stack.stop().await;
}

//! Questions between agents end to end: an agent's answer asks a teammate (by role) and the
//! whole team; the step waits, holding no worker, while the questions reach the teammates as
//! work on their providers' queues; the answers are recorded on the question interactions and
//! the asker finishes the step with them. A teammate too slow for the deadline is recorded as
//! such, and the step goes on without its answer.

// Test code: a panic is the failure report, in helpers as in tests.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cadre_proto::{Event, ExecutionId, TenantId, WorkflowId, subjects};
use cadre_tests::api::{PIPELINE_SKILLS, pipeline};
use cadre_tests::fake_llm::question_answer;
use cadre_tests::stack::FAKE_PROVIDER;
use cadre_tests::{Stack, eventually};
use serde_json::Value;
use uuid::Uuid;

const FINISH: Duration = Duration::from_secs(60);

/// Registers Ada (analyst), Linus (engineer) and Grace (reviewer) and starts a run of a
/// `steps`-step pipeline of theirs, with `questions` as its question policy when given.
/// Returns the agents' ids and the execution's.
async fn run_team(stack: &Stack, steps: usize, questions: Option<Value>) -> ([Uuid; 3], String) {
    let mut ids = Vec::new();
    for agent in cadre_tests::api::team(FAKE_PROVIDER) {
        ids.push(
            stack.api.register_agent(&agent).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let mut body = pipeline("Questions", &ids, &PIPELINE_SKILLS, steps);
    if let Some(questions) = questions {
        body["configuration"]["coordination"]["questions"] = questions;
    }
    let workflow = stack.api.create_workflow(&body).await;
    let (execution, _) = stack
        .api
        .start_execution(workflow["id"].as_str().unwrap())
        .await;
    let agents = [0, 1, 2].map(|i| Uuid::parse_str(&ids[i]).unwrap());
    (agents, execution)
}

/// The question interactions of an execution, in log order: from, to, step, whether
/// answered, the answer, the response data.
type QuestionRow = (Uuid, Uuid, String, bool, Option<String>, Option<Value>);

async fn questions(stack: &Stack, execution: &str) -> Vec<QuestionRow> {
    sqlx::query_as(
        "SELECT from_agent_id, to_agent_id, related_step_id, response_received, \
                response_message, response_data \
         FROM agent_interactions \
         WHERE workflow_execution_id = $1 AND interaction_type = 'question' AND requires_response \
         ORDER BY event_sequence",
    )
    .bind(Uuid::parse_str(execution).unwrap())
    .fetch_all(&stack.db.pool)
    .await
    .unwrap()
}

/// The prompts the fake LLM received for the step named `name`, in order.
fn prompts_of(stack: &Stack, name: &str) -> Vec<String> {
    stack
        .llm
        .requests()
        .into_iter()
        .filter(|r| r.step_name() == Some(name))
        .map(|r| format!("{}\n{}", r.system, r.user))
        .collect()
}

#[tokio::test]
async fn teammates_answer_and_the_asker_finishes_its_step_with_their_answers() {
    let stack = Stack::start().await;
    stack.llm.ask_questions(&[
        "- @engineer: Which database should we use?",
        "- @everyone: Any risk I missed?",
    ]);
    let ([ada, linus, grace], execution) = run_team(&stack, 2, None).await;
    let finished = stack.wait_until_finished(&execution, FINISH).await;
    assert_eq!(finished["status"], "completed", "{finished:#}");

    // Step 1 (Ada's): the engineer by role, then each teammate for the broadcast. Step 2
    // (Linus's): nobody else is an engineer, so only the broadcast goes out, to Ada and Grace.
    let rows = eventually(
        FINISH,
        "every question answered in the read model",
        || async {
            let rows = questions(&stack, &execution).await;
            (rows.len() == 5 && rows.iter().all(|r| r.3)).then_some(rows)
        },
    )
    .await;
    let asked: Vec<(Uuid, Uuid, &str)> = rows.iter().map(|r| (r.0, r.1, r.2.as_str())).collect();
    assert_eq!(
        asked,
        vec![
            (ada, linus, "step-1"),
            (ada, linus, "step-1"),
            (ada, grace, "step-1"),
            (linus, ada, "step-2"),
            (linus, grace, "step-2"),
        ]
    );
    assert_eq!(
        rows[0].4.as_deref(),
        Some(question_answer("Linus", "Ada").as_str())
    );
    assert_eq!(
        rows[2].4.as_deref(),
        Some(question_answer("Grace", "Ada").as_str())
    );
    // The API shows the question with its answer and deadline.
    let listed = stack
        .api
        .get(&format!(
            "/v1/executions/{execution}/interactions?limit=1000"
        ))
        .await;
    let question = listed
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["interactionType"] == "question" && i["requiresResponse"] == true)
        .unwrap()
        .clone();
    assert_eq!(question["responseReceived"], true, "{question:#}");
    assert_eq!(question["responseMessage"], question_answer("Linus", "Ada"));
    assert!(question["responseDeadline"].is_string() && question["respondedAt"].is_string());

    // Each step was asked twice: the first answer asked, the second finished with the answers
    // (quoted), and asked nothing more.
    let first = prompts_of(&stack, "Analyse requirements");
    assert_eq!(first.len(), 2, "one round of questions per step");
    assert!(first[0].contains("Your Teammates:\n- Linus (engineer)\n- Grace (reviewer)"));
    assert!(!first[0].contains("Answers to your questions"));
    assert!(first[1].contains("You asked Linus: Which database should we use?"));
    assert!(first[1].contains(&question_answer("Grace", "Ada")));
    let second = prompts_of(&stack, "Implement the change");
    assert!(
        second[1].contains("no participant of this execution has the id, name or role 'engineer'"),
        "{}",
        second[1]
    );
    // The question prompts carried the answering agent's persona.
    let question_prompts: Vec<_> = stack
        .llm
        .requests()
        .into_iter()
        .filter(|r| r.user.starts_with("Question from "))
        .collect();
    assert_eq!(question_prompts.len(), 5);
    assert!(
        question_prompts
            .iter()
            .any(|r| r.system.starts_with("You are Grace, a reviewer."))
    );

    // What the answers cost counts, for the teammates who answered.
    let answered_tokens: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(total_tokens), 0)::int8 FROM token_usage \
         WHERE execution_id = $1 AND agent_id = $2",
    )
    .bind(Uuid::parse_str(&execution).unwrap())
    .bind(grace)
    .fetch_one(&stack.db.pool)
    .await
    .unwrap();
    assert!(
        answered_tokens > 0,
        "Grace answered two questions and ran no step"
    );

    // A question handed to the workers again after it was answered (a redelivery, a copy)
    // asks the model nothing: the worker finds the answer in the log.
    let tenant = TenantId::default_tenant();
    let assigned = stack
        .bus
        .read_all(&subjects::execution_state(
            &tenant,
            workflow_of(&stack, &execution).await,
            ExecutionId(execution.parse().unwrap()),
        ))
        .await
        .unwrap()
        .into_iter()
        .find(|stored| matches!(stored.envelope.event, Event::QuestionAssigned(_)))
        .unwrap();
    let queued = stack.hand_to_workers_again(&assigned, FAKE_PROVIDER).await;
    eventually(FINISH, "the copy settled", || async {
        let info = stack.provider_queue(FAKE_PROVIDER).await?;
        (info.ack_floor.stream_sequence >= queued).then_some(())
    })
    .await;
    let asked = stack
        .llm
        .requests()
        .into_iter()
        .filter(|r| r.user.starts_with("Question from "))
        .count();
    assert_eq!(asked, 5, "no second answer to a question answered");
    stack.stop().await;
}

/// The workflow of `execution`, as the API shows it.
async fn workflow_of(stack: &Stack, execution: &str) -> WorkflowId {
    let shown = stack.api.get(&format!("/v1/executions/{execution}")).await;
    WorkflowId(shown.body["workflowId"].as_str().unwrap().parse().unwrap())
}

#[tokio::test]
async fn a_teammate_too_slow_for_the_deadline_is_recorded_and_the_step_goes_on() {
    let stack = Stack::start().await;
    stack
        .llm
        .ask_questions(&["- @reviewer: Is the plan testable?"]);
    stack.llm.set_question_delay(Duration::from_secs(4));
    let policy = serde_json::json!({ "deadlineSeconds": 1, "onMissedDeadline": "proceed" });
    let (_, execution) = run_team(&stack, 1, Some(policy)).await;
    let finished = stack.wait_until_finished(&execution, FINISH).await;
    assert_eq!(finished["status"], "completed", "{finished:#}");

    let prompts = prompts_of(&stack, "Analyse requirements");
    assert_eq!(prompts.len(), 2);
    assert!(
        prompts[1].contains(
            "You asked Grace: Is the plan testable?\n(no answer: did not answer by the deadline)"
        ),
        "{}",
        prompts[1]
    );
    // The late answer is still recorded, marked as too late for the asker.
    let rows = eventually(FINISH, "the late answer in the read model", || async {
        let rows = questions(&stack, &execution).await;
        (rows.len() == 1 && rows[0].3).then_some(rows)
    })
    .await;
    assert_eq!(rows[0].5.as_ref().unwrap()["missedDeadline"], true);
    stack.stop().await;
}

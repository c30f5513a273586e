//! A workflow end to end: coordinator → JetStream → agent worker → projector → Postgres.

// Test code: a panic is the failure report, in helpers as in tests.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use cadre_coordinator::partitions;
use cadre_proto::streams::{
    COORDINATORS_BUCKET, PROJECTIONS, PROJECTORS_BUCKET, agent_worker_consumer_name,
};
use cadre_proto::subjects;
use cadre_proto::{Event, TenantId};
use cadre_runtime::bus;
use cadre_runtime::projection::read_checkpoints;
use cadre_tests::audit;
use cadre_tests::fake_llm::insight_line;
use cadre_tests::stack::FAKE_PROVIDER;
use cadre_tests::{Stack, eventually};
use futures::TryStreamExt;
use serde_json::Value;
use sqlx::Row;

const FINISH: Duration = Duration::from_secs(60);

/// The demo team on the fake LLM, and the 3-step pipeline.
async fn team_and_pipeline(stack: &Stack) -> (Vec<String>, String) {
    stack.api.team_and_pipeline(FAKE_PROVIDER, 3).await
}

async fn count(stack: &Stack, sql: &str, id: &str) -> i64 {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(uuid::Uuid::parse_str(id).unwrap())
        .fetch_one(&stack.db.pool)
        .await
        .unwrap()
        .get(0)
}

async fn interaction_and_knowledge_rows(
    stack: &Stack,
    execution_id: &str,
    workflow_id: &str,
) -> (i64, i64) {
    (
        count(
            stack,
            "SELECT count(*) FROM agent_interactions WHERE workflow_execution_id = $1",
            execution_id,
        )
        .await,
        count(
            stack,
            "SELECT count(*) FROM collaboration_knowledge WHERE workflow_id = $1",
            workflow_id,
        )
        .await,
    )
}

/// Creates the pipeline and runs it once; returns `(workflowId, executionId)` once every
/// consumer has caught up.
async fn run_to_completion(stack: &Stack) -> (String, String) {
    let (_, workflow_id) = team_and_pipeline(stack).await;
    let (execution_id, _) = stack.api.start_execution(&workflow_id).await;
    let execution = stack.wait_until_finished(&execution_id, FINISH).await;
    assert_eq!(execution["status"], "completed", "{execution:#}");
    settle(stack).await;
    (workflow_id, execution_id)
}

/// Waits until every consumer has processed everything stored so far.
/// A run of the team's pipeline whose first step's call to the model is held (release it with
/// `stack.llm.release_answers()`), once the call is made: `(workflow id, execution id)`.
async fn run_held_at_step_one(stack: &Stack) -> (String, String) {
    let (_, workflow_id) = team_and_pipeline(stack).await;
    stack.llm.hold_answers();
    let (execution_id, _) = stack.api.start_execution(&workflow_id).await;
    eventually(FINISH, "step-1's call to be held", || async {
        (stack.llm.requests().len() == 1).then_some(())
    })
    .await;
    (workflow_id, execution_id)
}

/// Step `step-1`'s latest `StepScheduled` in the log of run `execution_id`, once there is one.
async fn step_one_scheduled(stack: &Stack, workflow_id: &str, execution_id: &str) -> bus::Stored {
    let filter = subjects::step(
        &TenantId::default_tenant(),
        cadre_proto::WorkflowId(workflow_id.parse().unwrap()),
        cadre_proto::ExecutionId(execution_id.parse().unwrap()),
        &cadre_proto::StepId::parse("step-1").unwrap(),
        subjects::SCHEDULED,
    );
    eventually(FINISH, "step-1 to be scheduled", || async {
        stack.bus.last_event(&filter).await.ok().flatten()
    })
    .await
}

/// Stores `stored` in the log again, as a copy re-published after JetStream's duplicate window
/// had forgotten its id would be: a new message id, the same event. Returns the copy's sequence.
async fn store_again(stack: &Stack, stored: &bus::Stored) -> u64 {
    let copy = async_nats::jetstream::message::PublishMessage::build()
        .message_id(format!("{}-copy", stored.envelope.meta.id))
        .payload(stored.envelope.encode().into());
    stack
        .bus
        .jetstream()
        .send_publish(stored.envelope.nats_subject(), copy)
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence
}

async fn settle(stack: &Stack) {
    let last = stack.log_state().await.last_sequence;
    eventually(FINISH, "the consumers to catch up", || async {
        let (offline_queue, fake_queue) = (
            agent_worker_consumer_name("offline"),
            agent_worker_consumer_name(FAKE_PROVIDER),
        );
        if partitions::backlog(stack.bus.jetstream()).await.ok()? > 0 {
            return None;
        }
        let consumers = [
            (stack.bus.dispatch_stream(), &offline_queue),
            (stack.bus.dispatch_stream(), &fake_queue),
        ];
        for (stream, name) in consumers {
            let info = stream.consumer_info(name.as_str()).await.ok()?;
            if info.num_pending > 0 || info.num_ack_pending > 0 {
                return None;
            }
        }
        let checkpoint = read_checkpoints(&stack.db.pool).await.ok()?.read_models();
        (checkpoint >= last).then_some(())
    })
    .await
}

#[tokio::test]
async fn a_three_step_pipeline_runs_end_to_end_and_shares_knowledge() {
    let stack = Stack::start().await;
    let (agents, workflow_id) = team_and_pipeline(&stack).await;

    let (execution_id, number) = stack.api.start_execution(&workflow_id).await;
    assert_eq!(number, 1);
    let execution = stack.wait_until_finished(&execution_id, FINISH).await;
    assert_eq!(execution["status"], "completed", "{execution:#}");

    // Each step went to the agent whose skills match, in dependsOn order.
    for (step, agent) in ["step-1", "step-2", "step-3"].iter().zip(&agents) {
        let result = &execution["stepResults"][step];
        assert_eq!(result["status"], "completed", "{step}: {result}");
        assert_eq!(&execution["agentAssignments"][step]["agentId"], agent);
        assert!(!result["summary"].as_str().unwrap().is_empty());
    }
    assert_eq!(
        execution["finalOutput"]["step-3"]["agentId"], agents[2],
        "the final output is the last step's"
    );

    // The fake LLM saw the steps in order, and each later prompt carried what the earlier
    // steps shared with the team.
    let requests = stack.llm.requests();
    let names: Vec<&str> = requests.iter().filter_map(|r| r.step_name()).collect();
    assert_eq!(
        names,
        vec![
            "Analyse requirements",
            "Implement the change",
            "Review the implementation"
        ]
    );
    assert!(!requests[0].system.contains("Insight from"));
    assert!(
        requests[1]
            .system
            .contains(&insight_line("Analyse requirements"))
    );
    assert!(
        requests[2]
            .system
            .contains(&insight_line("Analyse requirements"))
    );
    assert!(
        requests[2]
            .system
            .contains(&insight_line("Implement the change"))
    );
    assert!(requests[0].system.contains("You are Ada, a analyst"));

    // Read models, through the API.
    let interactions = stack
        .api
        .get(&format!("/v1/executions/{execution_id}/interactions"))
        .await;
    assert_eq!(interactions.status, 200);
    let kinds: Vec<&str> = interactions
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["interactionType"].as_str().unwrap())
        .collect();
    for (kind, expected) in [
        ("task_delegation", 3),
        ("coordination", 6),
        ("knowledge_sharing", 6),
        ("question", 3),
    ] {
        assert_eq!(
            kinds.iter().filter(|k| **k == kind).count(),
            expected,
            "{kind} in {kinds:?}"
        );
    }
    let knowledge = stack
        .api
        .get(&format!("/v1/workflows/{workflow_id}/knowledge"))
        .await;
    let knowledge = knowledge.body.as_array().unwrap().clone();
    assert_eq!(knowledge.len(), 6, "insights and decisions of three steps");
    assert!(
        knowledge
            .iter()
            .all(|k| k["workflowId"] == workflow_id.as_str())
    );

    let workflow = stack
        .api
        .get(&format!("/v1/workflows/{workflow_id}"))
        .await
        .body;
    assert_eq!(workflow["status"], "completed");
    assert_eq!(workflow["executionCount"], 1);

    // Knowledge belongs to the workflow: the next execution starts with it.
    let (second, number) = stack.api.start_execution(&workflow_id).await;
    assert_eq!(number, 2);
    let done = stack.wait_until_finished(&second, FINISH).await;
    assert_eq!(done["status"], "completed");
    let first_step_of_second_run = &stack.llm.requests()[3];
    assert_eq!(
        first_step_of_second_run.step_name(),
        Some("Analyse requirements")
    );
    assert!(first_step_of_second_run.system.contains("Insight from"));
    let listed = stack
        .api
        .get(&format!("/v1/workflows/{workflow_id}/executions"))
        .await
        .body;
    let numbers: Vec<u64> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["executionNumber"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, vec![2, 1]);

    // Every row carries the tenant.
    for table in [
        "agents",
        "collaboration_workflows",
        "workflow_executions",
        "agent_interactions",
        "collaboration_knowledge",
    ] {
        let untenanted: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {table} WHERE tenant_id <> 'default'"
        )))
        .fetch_one(&stack.db.pool)
        .await
        .unwrap();
        assert_eq!(untenanted, 0, "{table}");
    }
    stack.stop().await;
}

#[tokio::test]
async fn a_step_delivered_twice_completes_once_and_writes_no_duplicates() {
    let stack = Stack::start().await;
    let (workflow_id, execution_id) = run_to_completion(&stack).await;

    let tenant = TenantId::default_tenant();
    let execution = cadre_proto::ExecutionId(execution_id.parse().unwrap());
    let workflow = cadre_proto::WorkflowId(workflow_id.parse().unwrap());
    let filter = subjects::execution_state(&tenant, workflow, execution);
    let events = stack.bus.read_all(&filter).await.unwrap();
    let completions = |events: &[cadre_runtime::bus::Stored]| {
        events.iter().filter(|s| matches!(&s.envelope.event, Event::StepCompleted(c) if c.attempt.step_id.as_str() == "step-1")).count()
    };
    assert_eq!(completions(&events), 1);
    let scheduled = events
        .iter()
        .find(|s| matches!(&s.envelope.event, Event::StepScheduled(s) if s.step.id.as_str() == "step-1"))
        .unwrap();

    let before = interaction_and_knowledge_rows(&stack, &execution_id, &workflow_id).await;
    let calls_before = stack.llm.requests().len();

    // The same StepScheduled again, as a copy stored after JetStream's duplicate window would
    // have forgotten its id.
    store_again(&stack, scheduled).await;
    settle(&stack).await;

    // And the original scheduling handed straight to the workers again, naming where it is
    // stored, as a redelivery of the first hand-over past the duplicate window would: it is no
    // longer the run's latest event, so the worker checks each outcome and finds the completion.
    let Event::StepScheduled(step) = &scheduled.envelope.event else {
        unreachable!()
    };
    stack
        .hand_to_workers_again(scheduled, &step.agent.provider)
        .await;
    settle(&stack).await;

    let events = stack.bus.read_all(&filter).await.unwrap();
    assert_eq!(completions(&events), 1, "no second completion");
    assert_eq!(
        stack.llm.requests().len(),
        calls_before,
        "no second LLM call for a finished step"
    );
    assert_eq!(
        interaction_and_knowledge_rows(&stack, &execution_id, &workflow_id).await,
        before,
        "no duplicate rows"
    );
    let execution = stack
        .api
        .get(&format!("/v1/executions/{execution_id}"))
        .await
        .body;
    assert_eq!(execution["status"], "completed");
    stack.stop().await;
}

/// A copy of a scheduling stored again past the duplicate window, into a run cancelled while
/// the step ran, is the run's latest event, the condition on which a worker starts a step
/// without looking anything up: nothing may run on it. (The coordinator reading it back finds
/// the attempt ended with the run; a copy it does hand over carries no log sequence, so the
/// worker checks the step's and the run's facts first.)
#[tokio::test]
async fn a_copy_of_a_scheduling_stored_again_into_a_cancelled_run_runs_nothing() {
    let stack = Stack::start().await;
    let (workflow_id, execution_id) = run_held_at_step_one(&stack).await;
    let cancelled = stack
        .api
        .post(
            &format!("/v1/executions/{execution_id}/cancel"),
            &serde_json::json!({"reason": "wrong input"}),
        )
        .await;
    assert_eq!(cancelled.status, 202, "{}", cancelled.body);
    let done = stack.wait_until_finished(&execution_id, FINISH).await;
    assert_eq!(done["status"], "cancelled", "{done:#}");
    stack.llm.release_answers();
    settle(&stack).await;

    let scheduled = step_one_scheduled(&stack, &workflow_id, &execution_id).await;
    let calls_before = stack.llm.requests().len();
    let copied_at = store_again(&stack, &scheduled).await;
    settle(&stack).await;

    assert_eq!(
        stack.llm.requests().len(),
        calls_before,
        "no call for the copy"
    );
    let tenant = TenantId::default_tenant();
    let execution = cadre_proto::ExecutionId(execution_id.parse().unwrap());
    let workflow = cadre_proto::WorkflowId(workflow_id.parse().unwrap());
    let run_state = subjects::execution_state(&tenant, workflow, execution);
    let after: Vec<_> = stack
        .bus
        .read_all(&run_state)
        .await
        .unwrap()
        .into_iter()
        .filter(|stored| stored.sequence > copied_at)
        .map(|stored| stored.envelope.event.type_name())
        .collect();
    assert_eq!(after, Vec::<&str>::new(), "nothing follows the copy");
    stack.stop().await;
}

#[tokio::test]
async fn a_step_delivered_twice_while_running_still_completes_once() {
    let stack = Stack::start().await;
    let (_, workflow_id) = team_and_pipeline(&stack).await;
    stack.llm.set_latency(Duration::from_millis(400));
    let (execution_id, _) = stack.api.start_execution(&workflow_id).await;
    let tenant = TenantId::default_tenant();
    let execution = cadre_proto::ExecutionId(execution_id.parse().unwrap());
    let workflow = cadre_proto::WorkflowId(workflow_id.parse().unwrap());
    let step = cadre_proto::StepId::parse("step-1").unwrap();

    // As soon as the first step is scheduled, store a copy of it: both copies reach workers
    // while the LLM call is still running.
    let scheduled = step_one_scheduled(&stack, &workflow_id, &execution_id).await;
    store_again(&stack, &scheduled).await;

    assert_eq!(
        stack.wait_until_finished(&execution_id, FINISH).await["status"],
        "completed"
    );
    settle(&stack).await;
    let events = stack
        .bus
        .read_all(&subjects::execution_state(&tenant, workflow, execution))
        .await
        .unwrap();
    let step_one_completions = events
        .iter()
        .filter(
            |s| matches!(&s.envelope.event, Event::StepCompleted(c) if c.attempt.step_id == step),
        )
        .count();
    assert_eq!(step_one_completions, 1);
    let knowledge = count(
        &stack,
        "SELECT count(*) FROM collaboration_knowledge WHERE workflow_id = $1",
        &workflow_id,
    )
    .await;
    assert_eq!(knowledge, 6, "two items per step, none twice");
    let delegations = count(&stack, "SELECT count(*) FROM agent_interactions WHERE workflow_execution_id = $1 AND interaction_type = 'task_delegation'", &execution_id).await;
    assert_eq!(delegations, 3);
    stack.stop().await;
}

#[tokio::test]
async fn a_step_handed_to_a_worker_again_while_it_runs_there_asks_the_model_once() {
    let stack = Stack::start().await;
    let (workflow_id, execution_id) = run_held_at_step_one(&stack).await;

    // The step handed to the workers again while its call runs, as after a NATS server that
    // restarted and forgot the first delivery: the same worker, the only one, takes it.
    let scheduled = step_one_scheduled(&stack, &workflow_id, &execution_id).await;
    stack.hand_to_workers_again(&scheduled, FAKE_PROVIDER).await;
    eventually(FINISH, "both deliveries on the worker", || async {
        let info = stack.provider_queue(FAKE_PROVIDER).await?;
        (info.num_ack_pending == 2).then_some(())
    })
    .await;

    stack.llm.release_answers();
    let done = stack.wait_until_finished(&execution_id, FINISH).await;
    assert_eq!(done["status"], "completed", "{done:#}");
    settle(&stack).await;
    let asked = stack
        .llm
        .requests()
        .iter()
        .filter(|request| request.step_name() == Some("Analyse requirements"))
        .count();
    assert_eq!(
        asked, 1,
        "the second delivery waited for the first call, not ran its own"
    );
    assert_eq!(stack.llm.requests().len(), 3, "one call per step");
    stack.stop().await;
}

#[tokio::test]
async fn malformed_messages_are_terminated_with_a_reason_and_block_nothing() {
    let stack = Stack::start().await;
    let client = async_nats::connect(&stack.nats.url).await.unwrap();
    let mut advisories = client
        .subscribe("$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.>")
        .await
        .unwrap();
    let js = stack.bus.jetstream();
    let (w, e) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let garbage = [
        (format!("cadre.events.default.workflow.{w}.execution.{e}.step.x.scheduled"), "{not json".to_owned()),
        (format!("cadre.events.default.workflow.{w}.execution.{e}.started"), r#"{"specversion":"1.0","id":"01900000-0000-7000-8000-000000000000","source":"/x","type":"dev.cadre.execution.exploded.v1","time":"2026-01-01T00:00:00Z","tenantid":"default","data":{}}"#.to_owned()),
        (format!("cadre.events.default.agent.{w}.registered"), "\u{0}\u{1}binary".to_owned()),
    ];
    for (subject, payload) in &garbage {
        js.publish(subject.clone(), payload.clone().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // And on the workers' own queue.
    let offline_queue = subjects::dispatched_steps("offline", &TenantId::default_tenant());
    js.publish(offline_queue, "{\"specversion\":".into())
        .await
        .unwrap()
        .await
        .unwrap();

    // The consumers keep going: a whole workflow runs behind the garbage.
    run_to_completion(&stack).await;

    // Each consumer that received garbage terminated it, and the server recorded why.
    let mut reasons = Vec::new();
    while reasons.len() < 3 {
        let advisory = tokio::time::timeout(
            Duration::from_secs(10),
            futures::StreamExt::next(&mut advisories),
        )
        .await
        .expect("a MSG_TERMINATED advisory")
        .unwrap();
        let body: Value = serde_json::from_slice(&advisory.payload).unwrap();
        reasons.push((
            body["consumer"].as_str().unwrap().to_owned(),
            body["reason"].as_str().unwrap_or_default().to_owned(),
        ));
    }
    // The coordinator terminates what it cannot read among execution events (it ignores the
    // agent garbage: not its business); the worker what it cannot read in its queue.
    reasons.sort();
    assert_eq!(reasons[0].0, agent_worker_consumer_name("offline"));
    assert!(
        reasons[0].1.contains("not a CloudEvents JSON envelope"),
        "{reasons:?}"
    );
    // The coordinator reads execution events in its partitioned inbox.
    assert!(reasons[1].0.starts_with("coordinator-p"), "{reasons:?}");
    assert!(reasons[2].0.starts_with("coordinator-p"), "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|(_, r)| r.contains("not a CloudEvents JSON envelope")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|(_, r)| r.contains("unknown event type \"dev.cadre.execution.exploded.v1\"")),
        "{reasons:?}"
    );

    // The projector keeps its rejections, with the reason, in Postgres.
    let rejected: Vec<(String, String)> =
        sqlx::query_as("SELECT subject, reason FROM rejected_events ORDER BY stream_sequence")
            .fetch_all(&stack.db.pool)
            .await
            .unwrap();
    assert_eq!(rejected.len(), 3, "{rejected:?}");
    assert_eq!(rejected[0].0, garbage[0].0);
    assert!(rejected[1].1.contains("unknown event type"));
    stack.stop().await;
}

/// Every read-model row, as JSON, in a stable order.
async fn snapshot(stack: &Stack) -> Vec<Value> {
    let mut tables = Vec::new();
    for table in [
        "agents",
        "collaboration_workflows",
        "workflow_executions",
        "agent_interactions",
        "collaboration_knowledge",
        "projected_events",
        "rejected_events",
    ] {
        let rows: Option<Value> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT jsonb_agg(to_jsonb(t) ORDER BY to_jsonb(t)::text) FROM {table} t"
        )))
        .fetch_one(&stack.db.pool)
        .await
        .unwrap();
        tables.push(serde_json::json!({ "table": table, "rows": rows }));
    }
    tables
}

#[tokio::test]
async fn a_rebuild_replays_the_log_into_the_same_read_models() {
    let mut stack = Stack::start().await;
    let (_, workflow_id) = team_and_pipeline(&stack).await;
    for _ in 0..2 {
        let (id, _) = stack.api.start_execution(&workflow_id).await;
        assert_eq!(
            stack.wait_until_finished(&id, FINISH).await["status"],
            "completed"
        );
    }
    stack
        .bus
        .jetstream()
        .publish("cadre.events.default.agent.x.registered", "junk".into())
        .await
        .unwrap()
        .await
        .unwrap();
    settle(&stack).await;
    let live = snapshot(&stack).await;
    stack.stop_services().await;

    let rebuilding: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&stack.db.pool)
        .await
        .unwrap();
    let report = cadre_projector::rebuild(stack.projector_config(7))
        .await
        .unwrap();
    assert_eq!(
        report.final_checkpoint,
        stack.log_state().await.last_sequence
    );
    assert_eq!(report.rejected, 1);
    let rebuilt = snapshot(&stack).await;
    assert_eq!(rebuilt, live);
    // The planner has statistics of what the rebuild wrote, before any query needs them.
    let unanalyzed: Vec<String> = sqlx::query_scalar(
        "SELECT relname::text FROM pg_stat_user_tables
         WHERE relname IN ('execution_steps', 'agent_interactions', 'collaboration_knowledge',
                           'projected_events')
           AND (last_analyze IS NULL OR last_analyze < $1)
           AND (last_autoanalyze IS NULL OR last_autoanalyze < $1)",
    )
    .bind(rebuilding)
    .fetch_all(&stack.db.pool)
    .await
    .unwrap();
    assert_eq!(unanalyzed, Vec::<String>::new());
}

#[tokio::test]
async fn two_coordinators_starting_at_once_never_reuse_an_execution_number() {
    let stack = Stack::start().await;
    let (_, workflow_id) = team_and_pipeline(&stack).await;
    // A second coordinator on the same log and read models, as a second replica would be.
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (second, other) = stack.second_coordinator(shutdown.clone()).await;

    let starts = (0..24).map(|i| {
        let api = if i % 2 == 0 {
            stack.api.clone()
        } else {
            other.clone()
        };
        let workflow_id = workflow_id.clone();
        async move { api.start_execution(&workflow_id).await }
    });
    let started = futures::future::join_all(starts).await;
    let mut numbers: Vec<u64> = started.iter().map(|(_, n)| *n).collect();
    numbers.sort_unstable();
    assert_eq!(
        numbers,
        (1..=24).collect::<Vec<u64>>(),
        "consecutive and unique"
    );
    for (id, _) in &started {
        assert_eq!(
            stack.wait_until_finished(id, FINISH).await["status"],
            "completed"
        );
    }
    shutdown.cancel();
    second.wait().await.unwrap();
    stack.stop().await;
}

#[tokio::test]
async fn a_copy_of_an_old_start_stored_again_neither_restarts_its_run_nor_rewinds_the_numbering() {
    let stack = Stack::start().await;
    let (_, workflow_id) = team_and_pipeline(&stack).await;
    let (first, number) = stack.api.start_execution(&workflow_id).await;
    assert_eq!(number, 1);
    stack.wait_until_finished(&first, FINISH).await;
    let (second_run, _) = stack.api.start_execution(&workflow_id).await;
    stack.wait_until_finished(&second_run, FINISH).await;

    // The first run's ExecutionStarted re-published with a new message id, as after the duplicate window:
    // JetStream keeps it a second time, the last start on the workflow's subjects.
    let started = stack
        .bus
        .last_event(&subjects::execution_started_in_any_workflow(
            &TenantId::default_tenant(),
            first
                .parse::<uuid::Uuid>()
                .map(cadre_proto::ExecutionId)
                .unwrap(),
        ))
        .await
        .unwrap()
        .unwrap();
    let original = stack
        .bus
        .stream()
        .get_raw_message(started.sequence)
        .await
        .unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", uuid::Uuid::now_v7().to_string().as_str());
    stack
        .bus
        .jetstream()
        .publish_with_headers(original.subject.to_string(), headers, original.payload)
        .await
        .unwrap()
        .await
        .unwrap();

    // A replica that has not started this workflow yet numbers from the log.
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (second, other) = stack.second_coordinator(shutdown.clone()).await;
    let (next, number) = other.start_execution(&workflow_id).await;
    assert_eq!(number, 3, "numbered after the highest, not after the copy");
    stack.wait_until_finished(&next, FINISH).await;
    let listed = stack
        .api
        .get(&format!("/v1/executions?workflowId={workflow_id}"))
        .await;
    assert_eq!(
        listed.body.as_array().unwrap().len(),
        3,
        "{:#}",
        listed.body
    );
    let events = stack.execution_events(&workflow_id, &first).await;
    let scheduled = events
        .iter()
        .filter(|e| matches!(e, Event::StepScheduled(_)))
        .count();
    assert_eq!(
        scheduled, 3,
        "one per step: the copy did not start the finished run over"
    );
    shutdown.cancel();
    second.wait().await.unwrap();
    stack.stop().await;
}

#[tokio::test]
async fn a_step_whose_llm_refuses_the_request_fails_the_execution_without_a_pointless_retry() {
    let stack = Stack::start().await;
    let (_, workflow_id) = team_and_pipeline(&stack).await;
    // The pipeline allows one retry, but a rejected request is rejected again: not retried.
    stack.llm.fail_next(2, 400);
    let (execution_id, _) = stack.api.start_execution(&workflow_id).await;
    let execution = stack.wait_until_finished(&execution_id, FINISH).await;
    assert_eq!(execution["status"], "failed", "{execution:#}");
    let error = execution["errorMessage"].as_str().unwrap();
    assert!(
        error.contains(
            "step 'Analyse requirements' failed with an error another attempt cannot fix"
        ),
        "{error}"
    );
    assert!(error.contains("400"), "{error}");
    assert_eq!(execution["stepResults"]["step-1"]["status"], "failed");
    assert_eq!(execution["stepResults"]["step-1"]["attempt"], 1);
    assert!(
        execution["stepResults"].get("step-2").is_none(),
        "nothing ran after the failure"
    );
    assert_eq!(stack.llm.requests().len(), 1);

    let interactions = stack
        .api
        .get(&format!("/v1/executions/{execution_id}/interactions"))
        .await
        .body;
    let failures = interactions
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| {
            i["message"]
                .as_str()
                .unwrap()
                .starts_with("Step failed: Analyse requirements")
        })
        .count();
    assert_eq!(failures, 1, "one attempt");
    let workflow = stack
        .api
        .get(&format!("/v1/workflows/{workflow_id}"))
        .await
        .body;
    assert_eq!(workflow["status"], "failed");
    stack.stop().await;
}

#[tokio::test]
async fn a_standby_coordinator_takes_over_a_running_execution() {
    let mut stack = Stack::start().await;
    let (_, workflow_id) = team_and_pipeline(&stack).await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (standby, standby_api) = stack.second_coordinator(shutdown.clone()).await;

    // Slow steps, so that the active coordinator stops while the first one runs.
    stack.llm.set_latency(Duration::from_millis(300));
    let (execution_id, _) = stack.api.start_execution(&workflow_id).await;
    let tenant = TenantId::default_tenant();
    let execution = cadre_proto::ExecutionId(execution_id.parse().unwrap());
    let workflow = cadre_proto::WorkflowId(workflow_id.parse().unwrap());
    let first = cadre_proto::StepId::parse("step-1").unwrap();
    eventually(FINISH, "step-1 to start", || async {
        stack
            .bus
            .last_event(&subjects::step(
                &tenant,
                workflow,
                execution,
                &first,
                subjects::STARTED,
            ))
            .await
            .ok()
            .flatten()
    })
    .await;
    stack.stop_service("coordinator").await;

    // The standby rebuilds the execution from the log and carries it to the end.
    let done = standby_api.wait_until_finished(&execution_id, FINISH).await;
    assert_eq!(done["status"], "completed", "{done:#}");
    let events = stack
        .bus
        .read_all(&subjects::execution_state(&tenant, workflow, execution))
        .await
        .unwrap();
    let scheduled: Vec<String> = events
        .iter()
        .filter_map(|s| match &s.envelope.event {
            Event::StepScheduled(e) => Some(e.step.id.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(
        scheduled,
        vec!["step-1", "step-2", "step-3"],
        "each step scheduled once"
    );
    shutdown.cancel();
    standby.wait().await.unwrap();
    stack.stop().await;
}

#[tokio::test]
async fn runs_go_on_when_the_nats_server_restarts() {
    let mut stack = Stack::start().await;
    // The first step's call is held until NATS has gone, so that it ends during the outage.
    let (workflow_id, running) = run_held_at_step_one(&stack).await;
    let tenant = TenantId::default_tenant();
    let workflow = cadre_proto::WorkflowId(workflow_id.parse().unwrap());

    // What the server kept in memory (the replicas' membership and the worker registry)
    // is gone after this; the log, the queues and the read models' positions are on disk.
    stack.nats.stop().await;
    stack.llm.release_answers();
    // Meanwhile the coordinator refuses a command before sending it: NATS's client would hold
    // its event and store it once back, after the answer said the command had failed.
    eventually(FINISH, "NATS's clients to notice it gone", || async {
        let state = stack.bus.jetstream().client().connection_state();
        (state != async_nats::connection::State::Connected).then_some(())
    })
    .await;
    let ghost = cadre_tests::api::agent("Ghost", "analyst", &["research"], FAKE_PROVIDER);
    let refused = stack.api.post("/v1/agents", &ghost).await;
    assert_eq!(refused.status, 503, "{:#}", refused.body);
    let detail = refused.body["detail"].as_str().unwrap();
    assert!(detail.contains("nothing was written"), "{detail}");
    // Longer than a publish waits for its acknowledgement (5 s): the worker whose call ended
    // meanwhile keeps trying to record its answer rather than have the step run again.
    tokio::time::sleep(Duration::from_secs(6)).await;
    stack.nats.start_again().await;

    // The run in flight finishes, and runs started afterwards run too.
    let done = stack.wait_until_finished(&running, FINISH).await;
    assert_eq!(done["status"], "completed", "{done:#}");
    let started = cadre_tests::api::start_until_acknowledged(
        &reqwest::Client::new(),
        stack.api.base(),
        &workflow_id,
        "after-the-restart",
        &serde_json::json!({}),
        FINISH,
    )
    .await
    .unwrap();
    let done = stack.wait_until_finished(&started, FINISH).await;
    assert_eq!(done["status"], "completed", "{done:#}");
    settle(&stack).await;

    // No answer was thrown away: each step asked the model once.
    assert_eq!(
        stack.llm.requests().len(),
        6,
        "each step asked the model once"
    );
    // The replicas are members again, and the worker offers its providers again.
    let workers: Value = eventually(FINISH, "the worker to announce itself again", || async {
        let workers = stack.api.get("/v1/workers").await.body;
        (workers.as_array()?.len() == 1).then_some(workers)
    })
    .await;
    assert_eq!(workers[0]["workerId"], "agent-worker", "{workers:#}");
    let agents = stack.api.get("/v1/agents?limit=1000").await.body;
    let names: Vec<&str> = agents
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|agent| agent["name"].as_str())
        .collect();
    assert!(
        !names.contains(&"Ghost"),
        "a refused command stored nothing: {names:?}"
    );
    for bucket in [COORDINATORS_BUCKET, PROJECTORS_BUCKET] {
        let members: Vec<String> =
            eventually(FINISH, "the replicas to be members again", || async {
                let bucket = stack.bus.jetstream().get_key_value(bucket).await.ok()?;
                let members: Vec<String> = bucket.keys().await.ok()?.try_collect().await.ok()?;
                (!members.is_empty()).then_some(members)
            })
            .await;
        assert_eq!(members.len(), 1, "{bucket}: {members:?}");
    }
    for run in [&running, &started] {
        let execution = cadre_proto::ExecutionId(run.parse().unwrap());
        let events = stack
            .bus
            .read_all(&subjects::execution_state(&tenant, workflow, execution))
            .await
            .unwrap();
        let completed = events
            .iter()
            .filter(|s| matches!(s.envelope.event, Event::StepCompleted(_)))
            .count();
        assert_eq!(completed, 3, "each step completed once in {run}");
    }
    stack.stop().await;
}

#[tokio::test]
async fn coordinators_share_the_partitions_and_one_takes_over_those_of_one_that_leaves() {
    let mut stack = Stack::start().await;
    let (_, workflow_id) = team_and_pipeline(&stack).await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (second, second_api) = stack.second_coordinator(shutdown.clone()).await;
    let all = usize::from(cadre_proto::streams::EXECUTION_PARTITIONS);
    // Each sees the other within a heartbeat; then each works its own share, and every
    // partition has one owner.
    eventually(FINISH, "the partitions to be shared", || async {
        let first = stack.coordinator_partitions.borrow().clone();
        let second = second.partitions().borrow().clone();
        let shared = !first.is_empty()
            && !second.is_empty()
            && first.is_disjoint(&second)
            && first.len() + second.len() == all;
        shared.then_some(())
    })
    .await;

    let starts = (0..16).map(|i| {
        let api = if i % 2 == 0 {
            stack.api.clone()
        } else {
            second_api.clone()
        };
        let workflow_id = workflow_id.clone();
        async move { api.start_execution(&workflow_id).await.0 }
    });
    let runs = futures::future::join_all(starts).await;
    for run in &runs {
        let done = stack.wait_until_finished(run, FINISH).await;
        assert_eq!(done["status"], "completed", "{done:#}");
    }

    // The first leaves: the second takes all of its partitions and runs what comes next.
    stack.stop_service("coordinator").await;
    eventually(
        FINISH,
        "the second coordinator to own every partition",
        || async { (second.partitions().borrow().len() == all).then_some(()) },
    )
    .await;
    let (after, _) = second_api.start_execution(&workflow_id).await;
    let done = second_api.wait_until_finished(&after, FINISH).await;
    assert_eq!(done["status"], "completed", "{done:#}");
    shutdown.cancel();
    second.wait().await.unwrap();
    stack.stop().await;
}

/// Which replica writes each projection now, by the session names the projector gives them
/// (`cadre-projector <projections> <replica>`).
async fn projection_writers(stack: &Stack) -> BTreeMap<String, String> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT application_name::text FROM pg_stat_activity
         WHERE datname = current_database() AND application_name LIKE 'cadre-projector %'",
    )
    .fetch_all(&stack.db.pool)
    .await
    .unwrap();
    let mut writers = BTreeMap::new();
    for name in &names {
        let mut words = name.split(' ').skip(1);
        if let (Some(projections), Some(replica)) = (words.next(), words.next()) {
            for projection in projections.split(',').filter(|p| *p != "-") {
                writers.insert(projection.to_owned(), replica.to_owned());
            }
        }
    }
    writers
}

#[tokio::test]
async fn projectors_share_the_projections_and_one_takes_over_those_of_one_that_leaves() {
    let mut stack = Stack::start().await;
    let (_, workflow_id) = team_and_pipeline(&stack).await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let second = tokio::spawn(cadre_projector::run(
        cadre_projector::Config {
            replica_id: "projector-b".to_owned(),
            ..stack.projector_config(100)
        },
        shutdown.clone(),
    ));
    // Each sees the other within a heartbeat; then each writes half of the projections.
    let shared = eventually(FINISH, "the projections to be shared", || async {
        let writers = projection_writers(&stack).await;
        let of = |replica: &str| writers.values().filter(|w| *w == replica).count();
        (writers.len() == PROJECTIONS.len() && of("projector-a") == 2 && of("projector-b") == 2)
            .then_some(writers)
    })
    .await;
    println!("writers: {shared:?}");

    // The read models are whole although two replicas wrote them.
    let runs = futures::future::join_all(
        (0..8).map(|_| async { stack.api.start_execution(&workflow_id).await.0 }),
    )
    .await;
    for run in &runs {
        let done = stack.wait_until_finished(run, FINISH).await;
        assert_eq!(done["status"], "completed", "{done:#}");
        assert_eq!(
            count(&stack, "SELECT count(*) FROM agent_interactions WHERE workflow_execution_id = $1 AND interaction_type = 'task_delegation'", run).await,
            3,
        );
    }

    // The first leaves: the second writes every projection and the next run shows up whole.
    stack.stop_service("projector").await;
    eventually(
        FINISH,
        "the second projector to write every projection",
        || async {
            let writers = projection_writers(&stack).await;
            (writers.len() == PROJECTIONS.len() && writers.values().all(|w| w == "projector-b"))
                .then_some(())
        },
    )
    .await;
    let (after, _) = stack.api.start_execution(&workflow_id).await;
    let done = stack.wait_until_finished(&after, FINISH).await;
    assert_eq!(done["status"], "completed", "{done:#}");
    settle(&stack).await;

    // Nothing was applied twice or skipped in the handovers: a rebuild gives the same rows.
    let live = audit::table_hashes(&stack.db.pool).await.unwrap();
    shutdown.cancel();
    second.await.unwrap().unwrap();
    stack.stop_services().await;
    cadre_projector::rebuild(stack.projector_config(50))
        .await
        .unwrap();
    let rebuilt = audit::table_hashes(&stack.db.pool).await.unwrap();
    assert_eq!(rebuilt, live);
}

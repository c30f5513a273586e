//! Test helpers: a workflow with an agent whose events a test can write one line each, and a
//! fresh Postgres database with the read-model schema.

#![allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got

use cadre_proto::events::{
    AgentRegistered, AgentStatusReported, EscalationContext, EscalationResolved,
    ExecutionCancelled, ExecutionCompleted, ExecutionFailed, ExecutionPaused, ExecutionResumed,
    ExecutionStarted, FailedAttempt, FailureCause, HandoffContext, InteractionRecorded,
    KnowledgeShared, KnowledgeSuperseded, KnowledgeValidated, Request, Resolution, StepAttempt,
    StepCompleted, StepDeferred, StepEscalated, StepFailed, StepScheduled, StepStarted,
    StepTimedOut, SupportRequest, TaskHandedOff, TemplateRegistered, WorkflowCreated,
    WorkflowPaused, WorkflowResumed,
};
use cadre_proto::model::{
    AgentProfile, EscalationRung, InteractionType, KnowledgeType, StepResult, StepType,
    TemplateCategory, TokenUsage, WorkflowConfiguration, WorkflowDefinition, WorkflowStep,
    WorkflowTemplate,
};
use cadre_proto::{
    AgentId, Envelope, EscalationId, Event, EventId, ExecutionId, KnowledgeId, StepId, TemplateId,
    TenantId, WorkflowId,
};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::incoming::Incoming;
use crate::plan::{Plan, plan};
use crate::projection::Projection;
use crate::store::Lease;

/// One workflow, one agent, one execution at a time; `step` is the step the step events are
/// about (see [`Fixture::on`]).
#[derive(Clone)]
pub(crate) struct Fixture {
    pub workflow: WorkflowId,
    pub execution: ExecutionId,
    pub agent: AgentProfile,
    pub steps: Vec<WorkflowStep>,
    pub step: WorkflowStep,
    pub clock: DateTime<Utc>,
    pub sequence: u64,
}

fn workflow_step(id: &str) -> WorkflowStep {
    let mut name = id.to_owned();
    if let Some(first) = name.get_mut(..1) {
        first.make_ascii_uppercase();
    }
    WorkflowStep {
        id: StepId::parse(id).unwrap(),
        name,
        description: format!("{id} the thing"),
        step_type: StepType::Analysis,
        assigned_agent_role: None,
        preferred_agent_id: None,
        required_skills: vec!["rust".to_owned()],
        depends_on: vec![],
        can_run_in_parallel: true,
        instructions: "Think".to_owned(),
        expected_output: "A design".to_owned(),
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

impl Fixture {
    /// A workflow of one step, `design`.
    pub fn new() -> Self {
        Self::with_steps(&["design"])
    }

    /// A workflow of independent steps; the step events are about the first one.
    pub fn with_steps(ids: &[&str]) -> Self {
        let steps: Vec<_> = ids.iter().map(|id| workflow_step(id)).collect();
        Self {
            workflow: WorkflowId::new(),
            execution: ExecutionId::new(),
            agent: AgentProfile {
                id: AgentId::new(),
                name: "Ada".to_owned(),
                role: "architect".to_owned(),
                backstory: "Designs systems".to_owned(),
                skills: vec!["rust".to_owned()],
                provider: "offline".to_owned(),
                model: "echo".to_owned(),
                model_parameters: Default::default(),
                fallback: None,
            },
            step: steps[0].clone(),
            steps,
            clock: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            sequence: 0,
        }
    }

    /// The same fixture with its step events about step `id`.
    pub fn on(&self, id: &str) -> Self {
        let step = self
            .steps
            .iter()
            .find(|s| s.id.as_str() == id)
            .unwrap()
            .clone();
        Self {
            step,
            ..self.clone()
        }
    }

    /// The next message of the stream, carrying `event`, one second after the previous one.
    pub fn message(&mut self, event: Event) -> Incoming {
        self.message_with_id(EventId::new(), event)
    }

    /// [`Self::message`] with the event id `id`.
    pub fn message_with_id(&mut self, id: EventId, event: Event) -> Incoming {
        self.clock += chrono::Duration::seconds(1);
        self.sequence += 1;
        let envelope = Envelope::with_id(
            id,
            "/cadre/test",
            TenantId::default_tenant(),
            self.clock,
            event,
        );
        Incoming::decode(
            self.sequence,
            envelope.nats_subject(),
            self.clock,
            &envelope.encode(),
        )
    }

    /// Messages carrying `events`, in order.
    pub fn messages(&mut self, events: impl IntoIterator<Item = Event>) -> Vec<Incoming> {
        events.into_iter().map(|e| self.message(e)).collect()
    }

    pub fn definition(&self) -> WorkflowDefinition {
        WorkflowDefinition {
            id: self.workflow,
            name: "Build".to_owned(),
            description: "Build it".to_owned(),
            workflow_type: Default::default(),
            participating_agents: vec![self.agent.id],
            coordinator_agent_id: None,
            configuration: WorkflowConfiguration {
                steps: self.steps.clone(),
                phases: vec![],
                coordination: Default::default(),
                constraints: Default::default(),
                triggers: Default::default(),
                escalation: Default::default(),
                saga: Default::default(),
            },
        }
    }

    pub fn registered(&self) -> Event {
        Event::AgentRegistered(AgentRegistered {
            agent: self.agent.clone(),
        })
    }

    /// Knowledge from this fixture's step.
    pub fn shared(&self, content: &str) -> Event {
        Event::KnowledgeShared(KnowledgeShared {
            knowledge_id: KnowledgeId::new(),
            workflow_id: self.workflow,
            execution_id: self.execution,
            step_id: self.step.id.clone(),
            title: format!("Insights from {}", self.step.name),
            content: content.to_owned(),
            knowledge_type: KnowledgeType::Insight,
            created_by_agent_id: self.agent.id,
            relevance_score: 0.8,
            tags: vec![self.step.id.to_string()],
        })
    }

    /// A question from this fixture's agent to the team.
    pub fn question(&self, message: &str) -> Event {
        Event::InteractionRecorded(InteractionRecorded {
            execution_id: self.execution,
            workflow_id: self.workflow,
            from_agent_id: self.agent.id,
            to_agent_id: None,
            interaction_type: InteractionType::Question,
            message: message.to_owned(),
            context_data: Value::Null,
            related_step_id: Some(self.step.id.clone()),
            requires_response: true,
        })
    }

    pub fn created(&self) -> Event {
        Event::WorkflowCreated(WorkflowCreated {
            workflow: self.definition(),
            template_id: None,
        })
    }

    /// The user template this fixture's workflows may be created from: its steps, with the
    /// agent's role; the same for every fixture cloned from this one.
    pub fn template(&self) -> WorkflowTemplate {
        let mut configuration = self.definition().configuration;
        for step in &mut configuration.steps {
            step.assigned_agent_role = Some(self.agent.role.clone());
        }
        WorkflowTemplate {
            id: TemplateId(Uuid::new_v5(&self.agent.id.0, b"template")),
            name: "Build from a template".to_owned(),
            description: "Build it, by role".to_owned(),
            category: TemplateCategory::Development,
            workflow_type: Default::default(),
            template_definition: configuration,
            required_agent_roles: vec![self.agent.role.clone()],
            recommended_agent_count: 1,
            is_system_template: false,
            created_by: Some("tester".to_owned()),
            revision: 1,
        }
    }

    pub fn template_registered(&self) -> Event {
        self.registration_of(self.template())
    }

    pub fn registration_of(&self, template: WorkflowTemplate) -> Event {
        Event::TemplateRegistered(Box::new(TemplateRegistered { template }))
    }

    /// This fixture's workflow, created from [`Fixture::template`].
    pub fn created_from_template(&self) -> Event {
        Event::WorkflowCreated(WorkflowCreated {
            workflow: self.definition(),
            template_id: Some(self.template().id),
        })
    }

    pub fn started(&self, number: u32) -> Event {
        Event::ExecutionStarted(Box::new(ExecutionStarted {
            execution_id: self.execution,
            workflow_id: self.workflow,
            execution_number: number,
            trigger_reason: Default::default(),
            triggered_by: Some("tester".to_owned()),
            workflow: self.definition(),
            agents: vec![self.agent.clone()],
            input: None,
            parent: None,
            started_at: None,
            deadline: None,
            records: Default::default(),
        }))
    }

    pub fn scheduled(&self, attempt: u32) -> Event {
        Event::StepScheduled(Box::new(StepScheduled {
            execution_id: self.execution,
            workflow_id: self.workflow,
            workflow_name: "Build".to_owned(),
            step: self.step.clone(),
            attempt,
            agent: self.agent.clone(),
            reason: cadre_proto::events::AssignmentReason::RoleMatch {
                role: "architect".to_owned(),
                tie_break: None,
            },
            coordinator_agent_id: None,
            knowledge_sharing: true,
            communication_style: Default::default(),
            knowledge_watermark: 0,
            input: None,
            review: None,
            feedback: None,
            timeout_at: None,
            arms_step_timer: Some(false),
            team: Vec::new(),
            answers: Vec::new(),
            earlier_failures: Vec::new(),
            handoff: None,
        }))
    }

    pub fn attempt(&self, number: u32) -> StepAttempt {
        StepAttempt {
            execution_id: self.execution,
            workflow_id: self.workflow,
            step_id: self.step.id.clone(),
            step_name: self.step.name.clone(),
            number,
            agent_id: self.agent.id,
        }
    }

    pub fn step_started(&self, attempt: u32) -> Event {
        Event::StepStarted(StepStarted {
            attempt: self.attempt(attempt),
            scheduled_event_id: EventId::new(),
            timeout_at: None,
        })
    }

    pub fn step_completed(&self, attempt: u32) -> Event {
        Event::StepCompleted(Box::new(StepCompleted {
            attempt: self.attempt(attempt),
            result: StepResult {
                summary: "Designed".to_owned(),
                output: "The design".to_owned(),
                insights: vec!["Keep it small".to_owned()],
                decisions: vec![],
                questions: vec![],
                raw_response: "...".to_owned(),
                tokens: TokenUsage {
                    prompt: 10,
                    completion: 5,
                    total: 15,
                },
                full: None,
            },
            provider: "offline".to_owned(),
            model: "echo".to_owned(),
            duration_ms: 42,
            cost_usd: None,
            knowledge_used: vec![],
            knowledge_handed_on: Vec::new(),
            fallback_reason: None,
            told: vec![],
        }))
    }

    /// A completion of attempt 1 whose prompt carried `knowledge`.
    pub fn step_completed_using(&self, knowledge: &[KnowledgeId]) -> Event {
        let mut event = self.step_completed(1);
        if let Event::StepCompleted(completed) = &mut event {
            completed.knowledge_used = knowledge.to_vec();
        }
        event
    }

    /// `agent` confirmed `knowledge` during this fixture's step.
    pub fn validated(&self, knowledge: KnowledgeId, agent: AgentId) -> Event {
        Event::KnowledgeValidated(KnowledgeValidated {
            knowledge_id: knowledge,
            workflow_id: self.workflow,
            execution_id: self.execution,
            step_id: self.step.id.clone(),
            agent_id: agent,
        })
    }

    /// This fixture's agent replaced `old` with `new`.
    pub fn superseded(&self, old: KnowledgeId, new: KnowledgeId) -> Event {
        Event::KnowledgeSuperseded(KnowledgeSuperseded {
            knowledge_id: old,
            superseded_by: new,
            workflow_id: self.workflow,
            execution_id: self.execution,
            step_id: self.step.id.clone(),
            agent_id: self.agent.id,
            reason: "newer findings".to_owned(),
        })
    }

    /// The attempt waits for its provider until a minute after the fixture's clock.
    pub fn step_deferred(&self, attempt: u32) -> Event {
        Event::StepDeferred(StepDeferred {
            attempt: self.attempt(attempt),
            error: "provider said 429".to_owned(),
            retry_at: self.clock + chrono::Duration::minutes(1),
            deferral: 1,
            waiting_since: self.clock,
        })
    }

    /// `from` hands this fixture's step to this fixture's agent.
    pub fn handed_off(&self, from: AgentId, completed_work: &str) -> Event {
        Event::TaskHandedOff(Box::new(TaskHandedOff {
            execution_id: self.execution,
            workflow_id: self.workflow,
            from_agent: from,
            to_agent: self.agent.id,
            task_id: self.step.id.clone(),
            task_name: self.step.name.clone(),
            context: HandoffContext {
                completed_work: completed_work.to_owned(),
                remaining_work: self.step.instructions.clone(),
                constraints: vec!["runs alone".to_owned()],
                dependencies: vec!["research (Research): completed by Bo".to_owned()],
            },
            success_criteria: self.step.expected_output.clone(),
            estimated_time: Some(5.0),
            escalation_conditions: vec!["a failed attempt fails the execution".to_owned()],
        }))
    }

    /// This fixture's agent reports on attempt 1 of this fixture's step.
    pub fn status_reported(
        &self,
        progress: u8,
        blockers: &[&str],
        requested_support: Vec<SupportRequest>,
    ) -> Event {
        Event::AgentStatusReported(Box::new(AgentStatusReported {
            agent_id: self.agent.id,
            current_task: Some(self.attempt(1)),
            progress,
            estimated_completion: None,
            blockers: blockers.iter().map(|b| (*b).to_owned()).collect(),
            requested_support,
        }))
    }

    pub fn step_failed(&self, attempt: u32) -> Event {
        Event::StepFailed(StepFailed {
            attempt: self.attempt(attempt),
            retryable: true,
            error: "provider said 500".to_owned(),
            usage: None,
        })
    }

    pub fn step_timed_out(&self, attempt: u32, timeout_minutes: u32) -> Event {
        Event::StepTimedOut(StepTimedOut {
            attempt: self.attempt(attempt),
            timeout_minutes: f64::from(timeout_minutes),
        })
    }

    /// The escalation id of `attempt` of this fixture's step.
    pub fn escalation(&self, attempt: u32) -> EscalationId {
        EscalationId::of(self.execution, &self.step.id, attempt)
    }

    /// Attempt `attempt` failed with its retries spent and the step climbs `rung`: a person
    /// decides, or this fixture's agent takes the next attempt on a stronger model.
    pub fn escalated(&self, attempt: u32, rung: EscalationRung) -> Event {
        let person = rung == EscalationRung::Person;
        Event::StepEscalated(Box::new(StepEscalated {
            execution_id: self.execution,
            workflow_id: self.workflow,
            step_id: self.step.id.clone(),
            step_name: self.step.name.clone(),
            attempt,
            rung,
            agent: (!person).then(|| AgentProfile {
                model: "stronger".to_owned(),
                ..self.agent.clone()
            }),
            escalation_id: person.then(|| self.escalation(attempt)),
            approval: false,
            reason: "retries spent: provider said 500".to_owned(),
            context: EscalationContext {
                failures: vec![FailedAttempt {
                    attempt,
                    agent_id: self.agent.id,
                    error: "provider said 500".to_owned(),
                }],
                tried: vec![],
                outputs: [(StepId::parse("research").unwrap(), "Researched".to_owned())].into(),
            },
        }))
    }

    /// This fixture's step is an approval, waiting for a person's sign-off.
    pub fn approval_requested(&self, attempt: u32) -> Event {
        Event::StepEscalated(Box::new(StepEscalated {
            execution_id: self.execution,
            workflow_id: self.workflow,
            step_id: self.step.id.clone(),
            step_name: self.step.name.clone(),
            attempt,
            rung: EscalationRung::Person,
            agent: None,
            escalation_id: Some(self.escalation(attempt)),
            approval: true,
            reason: "approval required".to_owned(),
            context: EscalationContext::default(),
        }))
    }

    /// `ops` resolved the escalation of `attempt`, commenting "looked at it".
    pub fn resolved(&self, attempt: u32, resolution: Resolution) -> Event {
        Event::EscalationResolved(Box::new(EscalationResolved {
            execution_id: self.execution,
            workflow_id: self.workflow,
            step_id: Some(self.step.id.clone()),
            step_name: Some(self.step.name.clone()),
            attempt,
            escalation_id: self.escalation(attempt),
            resolution,
            request: request(Some("ops"), Some("looked at it")),
        }))
    }

    /// The execution failed because a person aborted it at the escalation of `attempt`.
    pub fn aborted(&self, attempt: u32) -> Event {
        Event::ExecutionFailed(ExecutionFailed {
            execution_id: self.execution,
            workflow_id: self.workflow,
            cause: FailureCause::Aborted {
                step_id: Some(self.step.id.clone()),
                escalation_id: self.escalation(attempt),
            },
            error: format!("ops aborted the run at step '{}'", self.step.name),
        })
    }

    pub fn completed(&self) -> Event {
        Event::ExecutionCompleted(ExecutionCompleted {
            execution_id: self.execution,
            workflow_id: self.workflow,
            final_output: json!({ "design": "The design" }),
        })
    }

    /// The execution failed because this fixture's step did.
    pub fn failed(&self) -> Event {
        Event::ExecutionFailed(ExecutionFailed {
            execution_id: self.execution,
            workflow_id: self.workflow,
            cause: FailureCause::StepFailed {
                step_id: self.step.id.clone(),
            },
            error: format!("step '{}' failed after 1 attempt(s)", self.step.name),
        })
    }

    /// The coordinator agent re-planned the failing run: this fixture's step is all that is
    /// left to do.
    pub fn replanned(&self) -> Event {
        Event::ExecutionReplanned(Box::new(cadre_proto::events::ExecutionReplanned {
            execution_id: self.execution,
            workflow_id: self.workflow,
            replan: 1,
            agent_id: self.agent.id,
            summary: "Try the design again".to_owned(),
            steps: vec![self.step.clone()],
            error: format!("step '{}' failed after 1 attempt(s)", self.step.name),
        }))
    }

    pub fn cancelled(&self, requested_by: Option<&str>, reason: Option<&str>) -> Event {
        Event::ExecutionCancelled(ExecutionCancelled {
            execution_id: self.execution,
            workflow_id: self.workflow,
            request: request(requested_by, reason),
        })
    }

    pub fn paused(&self) -> Event {
        Event::ExecutionPaused(ExecutionPaused {
            execution_id: self.execution,
            workflow_id: self.workflow,
            request: request(Some("ops"), None),
        })
    }

    pub fn resumed(&self) -> Event {
        Event::ExecutionResumed(ExecutionResumed {
            execution_id: self.execution,
            workflow_id: self.workflow,
            request: request(Some("ops"), None),
        })
    }

    pub fn workflow_paused(&self) -> Event {
        Event::WorkflowPaused(WorkflowPaused {
            workflow_id: self.workflow,
            request: request(Some("ops"), Some("maintenance")),
        })
    }

    pub fn workflow_resumed(&self) -> Event {
        Event::WorkflowResumed(WorkflowResumed {
            workflow_id: self.workflow,
            request: request(Some("ops"), None),
        })
    }
}

fn request(requested_by: Option<&str>, reason: Option<&str>) -> Request {
    Request {
        requested_by: requested_by.map(str::to_owned),
        reason: reason.map(str::to_owned),
    }
}

/// The message's envelope, encoded again.
pub(crate) fn payload(incoming: &Incoming) -> Vec<u8> {
    incoming.content.as_ref().unwrap().encode()
}

/// The plan of a batch whose events are all new to the projection.
pub(crate) fn plan_all(batch: &[Incoming]) -> Plan {
    plan(batch, None, &Projection::ALL)
}

/// A fresh database with the read-model schema, dropped when the value is.
pub(crate) struct TestDb {
    pub url: String,
    name: String,
    admin_url: String,
}

impl TestDb {
    /// On `CADRE_ADMIN_DATABASE_URL`'s server, else the local one (as the end-to-end tests do).
    pub async fn create() -> Self {
        Self::create_to(None).await
    }

    /// Migrated up to migration `version` included (every one when `None`): the schema of an
    /// earlier release, to test an upgrade from it.
    pub async fn create_to(version: Option<i64>) -> Self {
        let admin_url = std::env::var("CADRE_ADMIN_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("cadre_projector_test_{}", Uuid::now_v7().simple());
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("Postgres at {admin_url}: {e} (run `make test`)"));
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        let url = match admin_url.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{name}"),
            None => format!("{admin_url}/{name}"),
        };
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        match version {
            None => crate::migrate(&pool).await.unwrap(),
            Some(version) => sqlx::migrate!("./migrations")
                .run_to(version, &pool)
                .await
                .unwrap(),
        }
        pool.close().await;
        Self {
            url,
            name,
            admin_url,
        }
    }

    pub async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url).await.unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs outside async: a thread with its own runtime, joined so that the database
        // is gone when the test ends.
        let dropper = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                        .execute(&mut admin)
                        .await;
                }
            });
        });
        let _ = dropper.join();
    }
}

/// A lease on every projection of the test database.
pub(crate) async fn lease(db: &TestDb) -> Lease {
    let mut lease = Lease::connect(&db.url, "test", &CancellationToken::new())
        .await
        .unwrap();
    lease.hold(&Projection::ALL.into()).await.unwrap();
    assert_eq!(lease.projections().len(), Projection::ALL.len());
    lease
}

/// Projects `messages` in batches of `size`.
pub(crate) async fn project(lease: &mut Lease, messages: &[Incoming], size: usize) {
    for batch in messages.chunks(size) {
        lease.project(batch).await.unwrap();
    }
}

/// Every row of `table` once `log` is projected in batches of each of `sizes` into a fresh
/// database, and once more after a reset and a replay there; asserts that every cut, and every
/// replay, gives the same rows.
pub(crate) async fn rows_however_cut(log: &[Incoming], sizes: &[usize], table: &str) -> Value {
    let mut snapshots = Vec::new();
    for &size in sizes {
        let db = TestDb::create().await;
        let mut lease = lease(&db).await;
        let mut conn = db.connect().await;
        project(&mut lease, log, size).await;
        let projected = rows(&mut conn, table).await;
        lease.reset().await.unwrap();
        project(&mut lease, log, size).await;
        assert_eq!(
            rows(&mut conn, table).await,
            projected,
            "{table} replayed in batches of {size}"
        );
        snapshots.push((size, projected));
    }
    let (_, first) = snapshots.remove(0);
    for (size, snapshot) in snapshots {
        assert_eq!(snapshot, first, "{table} in batches of {size}");
    }
    first
}

/// Every row of `table` as JSON, in a stable order.
pub(crate) async fn rows(conn: &mut PgConnection, table: &str) -> Value {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY to_jsonb(t)::text), '[]') FROM {table} t"
    )))
    .fetch_one(conn)
    .await
    .unwrap()
}

/// The row of `rows` (a JSON array, as [`rows`] gives) whose `id` is `id`.
pub(crate) fn row_with_id(rows: &Value, id: impl serde::Serialize) -> Value {
    let id = serde_json::json!(id);
    rows.as_array()
        .into_iter()
        .flatten()
        .find(|row| row["id"] == id)
        .unwrap_or_else(|| panic!("no row {id} in {rows:#}"))
        .clone()
}

pub(crate) async fn execution(conn: &mut PgConnection, id: ExecutionId) -> Value {
    sqlx::query_scalar("SELECT to_jsonb(e) FROM workflow_executions e WHERE id = $1")
        .bind(id.0)
        .fetch_one(conn)
        .await
        .unwrap()
}

pub(crate) async fn workflow_status(conn: &mut PgConnection, f: &Fixture) -> String {
    sqlx::query_scalar("SELECT status FROM collaboration_workflows WHERE id = $1")
        .bind(f.workflow.0)
        .fetch_one(conn)
        .await
        .unwrap()
}

//! `collaboration_workflows`: one row per workflow, its definition and how its runs went.
//!
//! A workflow's status is `draft` until its first run, then follows its latest run (`active`,
//! then how the run ended), except while the workflow is paused: then it stays `paused` until
//! resumed (`active`).

use std::collections::HashMap;

use cadre_proto::events::ExecutionStarted;
use cadre_proto::model::WorkflowDefinition;
use cadre_proto::{TemplateId, WorkflowId};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use super::executions::{self, Outcome};
use super::{columns, wire_name};
use crate::plan::Origin;

const ACTIVE: &str = "active";
const PAUSED: &str = "paused";

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WorkflowRow {
    pub id: Uuid,
    pub tenant_id: String,
    pub name: String,
    pub description: String,
    pub workflow_type: String,
    pub configuration: Value,
    pub participating_agents: Value,
    pub coordinator_agent_id: Option<Uuid>,
    pub total_steps: i32,
    /// The template it was created from, if any.
    pub template_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

/// Changes to one workflow row, folded over the batch.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WorkflowPatch {
    pub workflow_id: Uuid,
    pub status: WorkflowStatus,
    pub started_at: Option<DateTime<Utc>>,
    pub execution_count: Option<i32>,
    pub completed_at: Option<DateTime<Utc>>,
    pub duration: Option<Duration>,
    pub updated_at: DateTime<Utc>,
}

/// What a batch does to a workflow's `status`, for a stored status of `paused` and for any
/// other; `None` keeps the stored one. Folding both outcomes lets a batch be planned without
/// reading the stored row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct WorkflowStatus {
    pub if_paused: Option<&'static str>,
    pub otherwise: Option<&'static str>,
}

/// An event that moves a workflow's status.
#[derive(Debug, Clone, Copy)]
enum Control {
    RunStarted,
    RunEnded(Outcome),
    Paused,
    Resumed,
}

impl WorkflowStatus {
    fn apply(&mut self, control: Control) {
        fn after(
            status: Option<&'static str>,
            paused_before: bool,
            control: Control,
        ) -> Option<&'static str> {
            let paused = status.map_or(paused_before, |s| s == PAUSED);
            match (paused, control) {
                (true, Control::Resumed) => Some(ACTIVE),
                // Runs go on while their workflow is paused; their outcome must not unpause it.
                (true, _) | (false, Control::Resumed) => status,
                (false, Control::RunStarted) => Some(ACTIVE),
                (false, Control::RunEnded(outcome)) => Some(outcome.status()),
                (false, Control::Paused) => Some(PAUSED),
            }
        }
        self.if_paused = after(self.if_paused, true, control);
        self.otherwise = after(self.otherwise, false, control);
    }
}

/// `actual_duration` of a completed run: from `started_at` (the batch's own start, or the stored
/// one when the run started in an earlier batch) to `completed_at`. Postgres does the
/// subtraction in both cases, so the result does not depend on where a batch was cut.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Duration {
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: DateTime<Utc>,
}

/// The batch's new workflows, and its changes to workflows.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    pub rows: Vec<WorkflowRow>,
    pub patches: Vec<WorkflowPatch>,
    index: HashMap<Uuid, usize>,
}

impl Changes {
    pub fn created(
        &mut self,
        origin: &Origin<'_>,
        workflow: &WorkflowDefinition,
        template: Option<TemplateId>,
    ) {
        self.rows.push(WorkflowRow {
            id: workflow.id.0,
            tenant_id: origin.tenant.to_owned(),
            name: workflow.name.clone(),
            description: workflow.description.clone(),
            workflow_type: wire_name(&workflow.workflow_type),
            configuration: json!(workflow.configuration),
            participating_agents: json!(workflow.participating_agents),
            coordinator_agent_id: workflow.coordinator_agent_id.map(|id| id.0),
            total_steps: i32::try_from(workflow.configuration.steps.len()).unwrap_or(i32::MAX),
            template_id: template.map(|id| id.0),
            created_at: origin.at,
        });
    }

    pub fn paused(&mut self, origin: &Origin<'_>, workflow: WorkflowId) {
        self.patch(workflow, origin.at)
            .status
            .apply(Control::Paused);
    }

    pub fn resumed(&mut self, origin: &Origin<'_>, workflow: WorkflowId) {
        self.patch(workflow, origin.at)
            .status
            .apply(Control::Resumed);
    }

    pub fn run_started(&mut self, origin: &Origin<'_>, e: &ExecutionStarted) {
        let number = executions::number(e);
        let workflow = self.patch(e.workflow_id, origin.at);
        workflow.status.apply(Control::RunStarted);
        workflow.started_at = Some(origin.at);
        workflow.execution_count = Some(workflow.execution_count.map_or(number, |n| n.max(number)));
    }

    pub fn run_ended(&mut self, origin: &Origin<'_>, workflow: WorkflowId, outcome: Outcome) {
        let workflow = self.patch(workflow, origin.at);
        workflow.status.apply(Control::RunEnded(outcome));
        workflow.completed_at = Some(origin.at);
        if outcome == Outcome::Completed {
            workflow.duration = Some(Duration {
                started_at: workflow.started_at,
                completed_at: origin.at,
            });
        }
    }

    /// The batch's patch of a workflow, touched at `at`.
    fn patch(&mut self, workflow: WorkflowId, at: DateTime<Utc>) -> &mut WorkflowPatch {
        let patches = &mut self.patches;
        let index = *self.index.entry(workflow.0).or_insert_with(|| {
            patches.push(WorkflowPatch {
                workflow_id: workflow.0,
                status: WorkflowStatus::default(),
                started_at: None,
                execution_count: None,
                completed_at: None,
                duration: None,
                updated_at: at,
            });
            patches.len() - 1
        });
        let patch = &mut patches[index];
        patch.updated_at = at;
        patch
    }

    /// Inserts first, so that patches of workflows created in the same batch find them.
    pub async fn write(self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        insert(tx, self.rows).await?;
        update(tx, self.patches).await
    }
}

/// A workflow created twice (two different events with one id) keeps the first: the event
/// index already keeps an event from being applied twice, and such a clash must not fail the
/// batch on every retry.
async fn insert(tx: &mut PgConnection, rows: Vec<WorkflowRow>) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    columns!(for r in rows => id, tenant_id, name, description, workflow_type, configuration,
             participating_agents, coordinator_agent_id, total_steps, template_id, created_at);
    sqlx::query!(
        "INSERT INTO collaboration_workflows (id, tenant_id, name, description, workflow_type,
             configuration, participating_agents, coordinator_agent_id, status, total_steps,
             template_id, created_at, updated_at)
         SELECT id, tenant_id, name, description, workflow_type, configuration,
                participating_agents, coordinator_agent_id, 'draft', total_steps, template_id,
                created_at, created_at
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[],
                     $7::jsonb[], $8::uuid[], $9::int[], $10::uuid[], $11::timestamptz[])
              AS w(id, tenant_id, name, description, workflow_type, configuration,
                   participating_agents, coordinator_agent_id, total_steps, template_id,
                   created_at)
         ON CONFLICT DO NOTHING",
        &id,
        &tenant_id,
        &name,
        &description,
        &workflow_type,
        &configuration,
        &participating_agents,
        coordinator_agent_id as _,
        &total_steps,
        template_id as _,
        &created_at,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The workflow's status moves by the batch's [`WorkflowStatus`] from the stored one.
async fn update(tx: &mut PgConnection, rows: Vec<WorkflowPatch>) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    columns!(for r in rows => workflow_id, started_at, execution_count, completed_at, updated_at,
             if_paused = r.status.if_paused.map(str::to_owned),
             otherwise = r.status.otherwise.map(str::to_owned),
             run_started_at = r.duration.and_then(|d| d.started_at),
             run_completed_at = r.duration.map(|d| d.completed_at));
    // In SET, `w.started_at` is the stored value: the start of a run begun in an earlier batch.
    sqlx::query!(
        "UPDATE collaboration_workflows w SET
             status = CASE WHEN w.status = 'paused' THEN coalesce(p.if_paused, w.status)
                           ELSE coalesce(p.otherwise, w.status) END,
             started_at = coalesce(p.started_at, w.started_at),
             execution_count = greatest(w.execution_count, coalesce(p.execution_count, 0)),
             completed_at = coalesce(p.completed_at, w.completed_at),
             actual_duration = CASE WHEN p.run_completed_at IS NULL THEN w.actual_duration
                 ELSE trunc(extract(epoch FROM
                     p.run_completed_at - coalesce(p.run_started_at, w.started_at)))::int END,
             updated_at = p.updated_at
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::int[],
                     $6::timestamptz[], $7::timestamptz[], $8::timestamptz[], $9::timestamptz[])
              AS p(id, if_paused, otherwise, started_at, execution_count, completed_at,
                   run_started_at, run_completed_at, updated_at)
         WHERE w.id = p.id",
        &workflow_id,
        if_paused as _,
        otherwise as _,
        started_at as _,
        execution_count as _,
        completed_at as _,
        run_started_at as _,
        run_completed_at as _,
        &updated_at,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

pub(crate) async fn reset(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query!("TRUNCATE collaboration_workflows")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got
mod tests {
    use cadre_proto::Event;

    use super::*;
    use crate::testing::{Fixture, TestDb, execution, lease, plan_all, project, workflow_status};

    #[test]
    fn a_paused_workflow_stays_paused_while_its_runs_start_and_end() {
        let mut f = Fixture::new();
        let e = f.clone();
        let mut status = |events: Vec<Event>| {
            let plan = plan_all(&f.messages(events));
            assert_eq!(plan.workflows.patches.len(), 1);
            plan.workflows.patches[0].status
        };
        let unless_paused = |otherwise| WorkflowStatus {
            if_paused: None,
            otherwise,
        };
        assert_eq!(
            status(vec![e.workflow_paused()]),
            unless_paused(Some("paused"))
        );
        assert_eq!(
            status(vec![e.workflow_paused(), e.started(2), e.completed()]),
            unless_paused(Some("paused"))
        );
        assert_eq!(
            status(vec![e.started(2), e.completed()]),
            unless_paused(Some("completed"))
        );
        assert_eq!(
            status(vec![e.workflow_resumed()]),
            WorkflowStatus {
                if_paused: Some("active"),
                otherwise: None,
            },
            "resuming a workflow that is not paused changes nothing"
        );
        assert_eq!(
            status(vec![e.workflow_resumed(), e.failed()]),
            WorkflowStatus {
                if_paused: Some("failed"),
                otherwise: Some("failed"),
            }
        );
        assert_eq!(
            status(vec![e.workflow_paused(), e.workflow_resumed()]),
            WorkflowStatus {
                if_paused: Some("active"),
                otherwise: Some("active"),
            }
        );
    }

    #[tokio::test]
    async fn a_paused_workflow_stays_paused_across_batches_until_resumed() {
        let db = TestDb::create().await;
        let mut lease = lease(&db).await;
        let mut conn = db.connect().await;
        let mut f = Fixture::new();
        let e = f.clone();
        for (events, status) in [
            (vec![e.created()], "draft"),
            (vec![e.started(1)], "active"),
            (vec![e.workflow_paused()], "paused"),
            (vec![e.completed()], "paused"),
            (vec![e.workflow_resumed()], "active"),
            (vec![e.workflow_resumed()], "active"),
        ] {
            project(&mut lease, &f.messages(events), 1).await;
            assert_eq!(workflow_status(&mut conn, &f).await, status);
        }
        let row = execution(&mut conn, f.execution).await;
        assert_eq!(row["status"], "completed");
        assert_eq!(row["final_output"], json!({ "design": "The design" }));
    }
}

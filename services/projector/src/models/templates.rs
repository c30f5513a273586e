//! `workflow_templates`: one row per template, its latest registration, and how the workflows
//! created from it did: how many there are, how many runs they had, how many of those ended
//! and completed (`success_rate` is computed from the last two by Postgres).
//!
//! A run's events name its workflow, not the workflow's template: a batch counts runs per
//! workflow, and the statement that writes them credits each workflow's template through
//! `collaboration_workflows.template_id` (written earlier in the same transaction, so a
//! workflow created in the batch is found). Counts are increments: the event index applies
//! each event once, and a rebuild empties the table first.

use std::collections::HashMap;

use cadre_proto::model::WorkflowTemplate;
use cadre_proto::{TemplateId, WorkflowId};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use super::executions::Outcome;
use super::{columns, wire_name};
use crate::plan::Origin;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TemplateRow {
    pub id: Uuid,
    pub tenant_id: String,
    pub name: String,
    pub description: String,
    pub category: String,
    pub workflow_type: String,
    pub template_definition: Value,
    pub required_agent_roles: Value,
    pub recommended_agent_count: i32,
    pub is_system_template: bool,
    pub created_by: Option<String>,
    pub revision: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Workflows created from one template in the batch.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Creations {
    pub template_id: Uuid,
    pub workflows: i32,
    pub at: DateTime<Utc>,
}

/// Runs of one workflow that started, ended and completed in the batch.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Runs {
    pub workflow_id: Uuid,
    pub started: i32,
    pub ended: i32,
    pub completed: i32,
    pub at: DateTime<Utc>,
}

/// The batch's registrations (one row per template, the last one) and tallies.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    pub rows: Vec<TemplateRow>,
    index: HashMap<Uuid, usize>,
    pub creations: Vec<Creations>,
    creation_index: HashMap<Uuid, usize>,
    pub runs: Vec<Runs>,
    run_index: HashMap<Uuid, usize>,
}

fn count(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

impl Changes {
    /// A template registered again (a system template's new revision) takes the new
    /// definition and keeps its first `created_at` and its counts.
    pub fn registered(&mut self, origin: &Origin<'_>, template: &WorkflowTemplate) {
        let row = TemplateRow {
            id: template.id.0,
            tenant_id: origin.tenant.to_owned(),
            name: template.name.clone(),
            description: template.description.clone(),
            category: template.category.as_str().to_owned(),
            workflow_type: wire_name(&template.workflow_type),
            template_definition: json!(template.template_definition),
            required_agent_roles: json!(template.required_agent_roles),
            recommended_agent_count: count(template.recommended_agent_count),
            is_system_template: template.is_system_template,
            created_by: template.created_by.clone(),
            revision: count(template.revision),
            created_at: origin.at,
            updated_at: origin.at,
        };
        match self.index.get(&row.id) {
            Some(&i) => {
                // The first creation and the latest update, as the upsert keeps them over the
                // stored row (hosts' clocks may disagree with the log's order).
                let TemplateRow {
                    created_at,
                    updated_at,
                    ..
                } = self.rows[i];
                self.rows[i] = TemplateRow {
                    created_at,
                    updated_at: updated_at.max(row.updated_at),
                    ..row
                };
            }
            None => {
                self.index.insert(row.id, self.rows.len());
                self.rows.push(row);
            }
        }
    }

    /// A workflow was created from `template`.
    pub fn workflow_created(&mut self, origin: &Origin<'_>, template: TemplateId) {
        let creations = &mut self.creations;
        let i = *self.creation_index.entry(template.0).or_insert_with(|| {
            creations.push(Creations {
                template_id: template.0,
                workflows: 0,
                at: origin.at,
            });
            creations.len() - 1
        });
        creations[i].workflows += 1;
        creations[i].at = origin.at;
    }

    /// A run of `workflow` started: a use of its template, if it has one.
    pub fn run_started(&mut self, origin: &Origin<'_>, workflow: WorkflowId) {
        self.runs_of(workflow, origin.at).started += 1;
    }

    /// A run of `workflow` ended as `outcome`.
    pub fn run_ended(&mut self, origin: &Origin<'_>, workflow: WorkflowId, outcome: Outcome) {
        let runs = self.runs_of(workflow, origin.at);
        runs.ended += 1;
        if outcome == Outcome::Completed {
            runs.completed += 1;
        }
    }

    fn runs_of(&mut self, workflow: WorkflowId, at: DateTime<Utc>) -> &mut Runs {
        let runs = &mut self.runs;
        let i = *self.run_index.entry(workflow.0).or_insert_with(|| {
            runs.push(Runs {
                workflow_id: workflow.0,
                started: 0,
                ended: 0,
                completed: 0,
                at,
            });
            runs.len() - 1
        });
        runs[i].at = at;
        &mut runs[i]
    }

    /// Registrations first, so that the counts of a template registered in the same batch
    /// find its row. Needs the batch's workflows written (`collaboration_workflows`).
    pub async fn write(self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        register(tx, self.rows).await?;
        count_workflows(tx, self.creations).await?;
        count_runs(tx, self.runs).await
    }
}

async fn register(tx: &mut PgConnection, rows: Vec<TemplateRow>) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    columns!(for r in rows => id, tenant_id, name, description, category, workflow_type,
             template_definition, required_agent_roles, recommended_agent_count,
             is_system_template, created_by, revision, created_at, updated_at);
    sqlx::query!(
        "INSERT INTO workflow_templates (id, tenant_id, name, description, category,
             workflow_type, template_definition, required_agent_roles, recommended_agent_count,
             is_system_template, created_by, revision, created_at, updated_at)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                              $6::text[], $7::jsonb[], $8::jsonb[], $9::int[], $10::bool[],
                              $11::text[], $12::int[], $13::timestamptz[], $14::timestamptz[])
         ON CONFLICT (id) DO UPDATE SET
             name = excluded.name, description = excluded.description,
             category = excluded.category, workflow_type = excluded.workflow_type,
             template_definition = excluded.template_definition,
             required_agent_roles = excluded.required_agent_roles,
             recommended_agent_count = excluded.recommended_agent_count,
             is_system_template = excluded.is_system_template,
             created_by = excluded.created_by, revision = excluded.revision,
             updated_at = greatest(workflow_templates.updated_at, excluded.updated_at)",
        &id,
        &tenant_id,
        &name,
        &description,
        &category,
        &workflow_type,
        &template_definition,
        &required_agent_roles,
        &recommended_agent_count,
        &is_system_template,
        created_by as _,
        &revision,
        &created_at,
        &updated_at,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn count_workflows(tx: &mut PgConnection, rows: Vec<Creations>) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    columns!(for r in rows => template_id, workflows, at);
    sqlx::query!(
        "UPDATE workflow_templates t SET
             workflow_count = t.workflow_count + c.workflows,
             updated_at = greatest(t.updated_at, c.at)
         FROM UNNEST($1::uuid[], $2::int[], $3::timestamptz[]) AS c(template_id, workflows, at)
         WHERE t.id = c.template_id",
        &template_id,
        &workflows,
        &at,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Credits each workflow's runs to its template; runs of workflows without one count for
/// nothing.
async fn count_runs(tx: &mut PgConnection, rows: Vec<Runs>) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    columns!(for r in rows => workflow_id, started, ended, completed, at);
    sqlx::query!(
        "UPDATE workflow_templates t SET
             usage_count = t.usage_count + r.started,
             ended_runs = t.ended_runs + r.ended,
             completed_runs = t.completed_runs + r.completed,
             updated_at = greatest(t.updated_at, r.at)
         FROM (SELECT w.template_id, sum(p.started)::int AS started, sum(p.ended)::int AS ended,
                      sum(p.completed)::int AS completed, max(p.at) AS at
               FROM UNNEST($1::uuid[], $2::int[], $3::int[], $4::int[], $5::timestamptz[])
                    AS p(workflow_id, started, ended, completed, at)
               JOIN collaboration_workflows w ON w.id = p.workflow_id
               WHERE w.template_id IS NOT NULL
               GROUP BY w.template_id) AS r
         WHERE t.id = r.template_id",
        &workflow_id,
        &started,
        &ended,
        &completed,
        &at,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

pub(crate) async fn reset(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query!("TRUNCATE workflow_templates")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got
mod tests {
    use cadre_proto::ExecutionId;

    use super::*;
    use crate::incoming::Incoming;
    use crate::testing::{Fixture, TestDb, lease, plan_all, project, rows};

    #[test]
    fn a_template_registered_twice_in_a_batch_keeps_its_first_creation_time() {
        let mut f = Fixture::new();
        let mut revised = f.template();
        revised.revision = 2;
        revised.description = "Revised".to_owned();
        let batch = f.messages([f.template_registered(), f.registration_of(revised)]);
        let plan = plan_all(&batch);
        let rows = &plan.templates.rows;
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].revision, rows[0].description.as_str()),
            (2, "Revised")
        );
        assert_eq!(
            rows[0].created_at + chrono::Duration::seconds(1),
            rows[0].updated_at
        );
        assert_eq!(rows[0].category, "development");
        assert_eq!(rows[0].required_agent_roles, json!(["architect"]));
    }

    /// A template, two workflows created from it and one written out whole, and runs of each:
    /// the template's workflows have three ended runs (one completed) and one still going.
    fn runs_log() -> (Fixture, Vec<Incoming>) {
        let mut f = Fixture::new();
        let other = Fixture {
            workflow: WorkflowId::new(),
            ..f.clone()
        };
        let second = Fixture {
            workflow: WorkflowId::new(),
            ..f.clone()
        };
        // A run of `fixture`'s workflow, ended as `end` (`None` while it goes on).
        let run = |fixture: &Fixture, number: u32, end: Option<Outcome>| {
            let run = Fixture {
                execution: ExecutionId::new(),
                ..fixture.clone()
            };
            let mut events = vec![run.started(number)];
            events.extend(end.map(|outcome| match outcome {
                Outcome::Completed => run.completed(),
                Outcome::Failed => run.failed(),
                Outcome::Cancelled => run.cancelled(None, Some("not needed")),
            }));
            events
        };
        let mut events = vec![
            f.registered(),
            f.template_registered(),
            f.created_from_template(),
            second.created_from_template(),
            other.created(),
        ];
        events.extend(run(&f, 1, Some(Outcome::Completed)));
        events.extend(run(&other, 1, Some(Outcome::Completed)));
        events.extend(run(&second, 1, Some(Outcome::Failed)));
        events.extend(run(&f, 2, Some(Outcome::Cancelled)));
        events.extend(run(&f, 3, None));
        let log = f.messages(events);
        (f, log)
    }

    #[tokio::test]
    async fn usage_and_success_come_from_runs_the_same_however_the_log_is_cut_or_replayed() {
        let (f, log) = runs_log();
        let mut snapshots = Vec::new();
        for size in [log.len(), 1, 4] {
            let db = TestDb::create().await;
            let mut lease = lease(&db).await;
            project(&mut lease, &log, size).await;
            let mut conn = db.connect().await;
            let templates = rows(&mut conn, "workflow_templates").await;
            let workflows = rows(&mut conn, "collaboration_workflows").await;
            if size == log.len() {
                let template = &templates[0];
                assert_eq!(template["id"], json!(f.template().id), "{templates:#}");
                assert_eq!(template["workflow_count"], 2);
                assert_eq!(template["usage_count"], 4, "four runs of its workflows");
                assert_eq!(template["ended_runs"], 3);
                assert_eq!(template["completed_runs"], 1);
                assert!(
                    (template["success_rate"].as_f64().unwrap() - 100.0 / 3.0).abs() < 1e-9,
                    "{template:#}"
                );
                assert_eq!(template["is_system_template"], false);
                let from_template = workflows
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|w| w["template_id"] == json!(f.template().id))
                    .count();
                assert_eq!(from_template, 2);

                // Copies of the whole log change nothing; a rebuild gives the same rows.
                project(&mut lease, &log, 5).await;
                assert_eq!(rows(&mut conn, "workflow_templates").await, templates);
                lease.reset().await.unwrap();
                assert_eq!(rows(&mut conn, "workflow_templates").await, json!([]));
                project(&mut lease, &log, 3).await;
                assert_eq!(rows(&mut conn, "workflow_templates").await, templates);
            }
            snapshots.push((size, templates, workflows));
        }
        let (_, templates, workflows) = &snapshots[0];
        for (size, t, w) in &snapshots[1..] {
            assert_eq!((t, w), (templates, workflows), "batches of {size}");
        }
    }

    #[tokio::test]
    async fn a_template_registered_again_keeps_the_latest_time_however_cut() {
        let mut f = Fixture::new();
        let mut log = vec![f.message(f.template_registered())];
        // The hosts' clocks disagree with the log's order.
        f.clock -= chrono::Duration::seconds(10);
        log.push(f.message(f.template_registered()));
        crate::testing::rows_however_cut(&log, &[1, 2], "workflow_templates").await;
    }
}

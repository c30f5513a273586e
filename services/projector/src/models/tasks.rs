//! `agent_tasks`: one row per task, a step of a run handed to an agent (a `StepScheduled` that
//! is not a review), kept from its first handout: its type, its estimate (the step's
//! `timeoutMinutes`) and when it was handed out. When the agent completed it and whether its
//! failure escalated it are filled in by [`super::history`], from the attempt outcomes it
//! records. Agent performance and the runs' efficiency are counted from these rows.

use std::collections::HashSet;

use cadre_proto::events::StepScheduled;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::columns;
use crate::plan::Origin;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TaskRow {
    pub tenant_id: String,
    pub execution_id: Uuid,
    pub step_id: String,
    pub agent_id: Uuid,
    pub workflow_id: Uuid,
    pub step_type: &'static str,
    pub estimate_minutes: Option<f64>,
    pub handed_out_at: DateTime<Utc>,
    pub event_sequence: i64,
}

type Key = (String, Uuid, String, Uuid);

/// The batch's new tasks, the first handout of each.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    pub rows: Vec<TaskRow>,
    keys: HashSet<Key>,
}

impl Changes {
    /// A retry, a rework or the attempt after answers hand out a task already handed out:
    /// the first handout is kept.
    pub fn step_scheduled(&mut self, origin: &Origin<'_>, e: &StepScheduled) {
        if e.review.is_some() {
            return;
        }
        let row = TaskRow {
            tenant_id: origin.tenant.to_owned(),
            execution_id: e.execution_id.0,
            step_id: e.step.id.to_string(),
            agent_id: e.agent.id.0,
            workflow_id: e.workflow_id.0,
            step_type: e.step.step_type.as_str(),
            estimate_minutes: e.step.timeout_minutes,
            handed_out_at: origin.at,
            event_sequence: origin.sequence,
        };
        let key = (
            row.tenant_id.clone(),
            row.execution_id,
            row.step_id.clone(),
            row.agent_id,
        );
        if self.keys.insert(key) {
            self.rows.push(row);
        }
    }

    /// A task handed out in an earlier batch keeps its row.
    pub async fn write(self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        let rows = self.rows;
        if rows.is_empty() {
            return Ok(());
        }
        columns!(for r in rows => tenant_id, execution_id, step_id, agent_id, workflow_id,
                 estimate_minutes, handed_out_at, event_sequence,
                 step_type = r.step_type.to_owned());
        sqlx::query!(
            "INSERT INTO agent_tasks (tenant_id, execution_id, step_id, agent_id, workflow_id,
                 step_type, estimate_minutes, handed_out_at, event_sequence)
             SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::uuid[], $5::uuid[],
                                  $6::text[], $7::float8[], $8::timestamptz[], $9::bigint[])
             ON CONFLICT DO NOTHING",
            &tenant_id,
            &execution_id,
            &step_id,
            &agent_id,
            &workflow_id,
            &step_type,
            &estimate_minutes as _,
            &handed_out_at,
            &event_sequence,
        )
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

pub(crate) async fn reset(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query!("TRUNCATE agent_tasks")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

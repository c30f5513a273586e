//! `alerts`: one row per `AlertRaised`, an agent's performance crossing one of the alert
//! conditions, for `GET /v1/alerts`.

use cadre_proto::events::AlertRaised;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::columns;
use crate::plan::Origin;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AlertRow {
    pub id: Uuid,
    pub tenant_id: String,
    pub agent_id: Uuid,
    pub condition: &'static str,
    pub task_type: Option<&'static str>,
    pub crossing: i32,
    pub value: f64,
    pub threshold: f64,
    pub sample: i64,
    pub message: String,
    pub workflow_id: Uuid,
    pub execution_id: Uuid,
    pub step_id: String,
    pub raised_at: DateTime<Utc>,
    pub event_sequence: i64,
}

#[derive(Debug, Default)]
pub(crate) struct Changes {
    pub rows: Vec<AlertRow>,
}

impl Changes {
    pub fn raised(&mut self, origin: &Origin<'_>, e: &AlertRaised) {
        self.rows.push(AlertRow {
            id: origin.event_id,
            tenant_id: origin.tenant.to_owned(),
            agent_id: e.agent_id.0,
            condition: e.condition.as_str(),
            task_type: e.task_type.map(|t| t.as_str()),
            crossing: i32::try_from(e.crossing).unwrap_or(i32::MAX),
            value: e.value,
            threshold: e.threshold,
            sample: i64::try_from(e.sample).unwrap_or(i64::MAX),
            message: e.message.clone(),
            workflow_id: e.workflow_id.0,
            execution_id: e.execution_id.0,
            step_id: e.step_id.to_string(),
            raised_at: origin.at,
            event_sequence: origin.sequence,
        });
    }

    /// An alert already stored (by id, or for its crossing) is kept: the coordinator appends
    /// each crossing once, and a clash must not fail the batch on every retry.
    pub async fn write(self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        let rows = self.rows;
        if rows.is_empty() {
            return Ok(());
        }
        columns!(for r in rows => id, tenant_id, agent_id, crossing, value, threshold, sample,
                 message, workflow_id, execution_id, step_id, raised_at, event_sequence,
                 condition = r.condition.to_owned(),
                 task_type = r.task_type.map(str::to_owned));
        sqlx::query!(
            "INSERT INTO alerts (id, tenant_id, agent_id, condition, task_type, crossing, value,
                 threshold, sample, message, workflow_id, execution_id, step_id, raised_at,
                 event_sequence)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::text[],
                                  $6::int4[], $7::float8[], $8::float8[], $9::int8[],
                                  $10::text[], $11::uuid[], $12::uuid[], $13::text[],
                                  $14::timestamptz[], $15::bigint[])
             ON CONFLICT DO NOTHING",
            &id,
            &tenant_id,
            &agent_id,
            &condition,
            &task_type as _,
            &crossing,
            &value,
            &threshold,
            &sample,
            &message,
            &workflow_id,
            &execution_id,
            &step_id,
            &raised_at,
            &event_sequence,
        )
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

pub(crate) async fn reset(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query!("TRUNCATE alerts").execute(&mut *tx).await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got
mod tests {
    use cadre_proto::Event;
    use cadre_proto::events::AlertCondition;
    use cadre_proto::model::StepType;
    use serde_json::json;

    use super::*;
    use crate::testing::{Fixture, TestDb, lease, project, rows};

    fn alert(f: &Fixture, condition: AlertCondition, crossing: u32) -> Event {
        Event::AlertRaised(Box::new(AlertRaised {
            agent_id: f.agent.id,
            condition,
            task_type: (condition == AlertCondition::RepeatedEscalations)
                .then_some(StepType::Review),
            crossing,
            value: 60.0,
            threshold: 20.0,
            sample: 5,
            message: "3 of its 5 ended attempts failed or timed out".to_owned(),
            workflow_id: f.workflow,
            execution_id: f.execution,
            step_id: f.step.id.clone(),
        }))
    }

    #[tokio::test]
    async fn each_crossing_is_one_row_however_often_it_is_recorded_or_replayed() {
        let mut f = Fixture::new();
        let log = f.messages([
            alert(&f, AlertCondition::FailureRate, 1),
            alert(&f, AlertCondition::RepeatedEscalations, 1),
            // The same crossing under another id (appended twice by mistake): kept once.
            alert(&f, AlertCondition::FailureRate, 1),
            alert(&f, AlertCondition::FailureRate, 2),
        ]);
        let db = TestDb::create().await;
        let mut lease = lease(&db).await;
        let mut conn = db.connect().await;
        project(&mut lease, &log, 2).await;
        let projected = rows(&mut conn, "alerts").await;
        let mut kept: Vec<(String, String, i64)> = projected
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["condition"].as_str().unwrap().to_owned(),
                    a["task_type"].as_str().unwrap_or("").to_owned(),
                    a["crossing"].as_i64().unwrap(),
                )
            })
            .collect();
        kept.sort();
        assert_eq!(
            kept,
            [
                ("failure_rate".to_owned(), String::new(), 1),
                ("failure_rate".to_owned(), String::new(), 2),
                ("repeated_escalations".to_owned(), "review".to_owned(), 1),
            ]
        );
        let first = projected
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == json!(log[0].content.as_ref().unwrap().meta.id))
            .unwrap();
        assert_eq!(first["agent_id"], json!(f.agent.id));
        assert_eq!(first["value"].as_f64(), Some(60.0));
        assert_eq!(first["sample"], 5);
        assert_eq!(first["step_id"], "design");

        lease.reset().await.unwrap();
        project(&mut lease, &log, 1).await;
        assert_eq!(rows(&mut conn, "alerts").await, projected, "replayed");
    }
}

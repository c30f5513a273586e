//! `task_handoffs`: the seed's `TaskHandoff`, one row per handoff a `StepScheduled` carries (or,
//! in logs written before handoffs travelled in the scheduling, per `TaskHandedOff`), for
//! `GET /v1/executions/{id}/handoffs`.
//!
//! A row is keyed by what it is about (tenant, execution, step, handing agent), not by the event
//! id: a handoff recorded again (in older logs, a decision taken again after only part of it
//! was stored) replaces the older record.

use std::collections::HashMap;

use cadre_proto::EventId;
use cadre_proto::events::{StepScheduled, TaskHandedOff};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use super::columns;
use crate::plan::Origin;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HandoffRow {
    pub tenant_id: String,
    pub execution_id: Uuid,
    pub task_id: String,
    pub from_agent_id: Uuid,
    /// The handoff's id (the API's `id`): derived from the id of the `StepScheduled` that
    /// carries it, or a `TaskHandedOff` event's own.
    pub id: Uuid,
    /// The event the row comes from.
    pub event_id: Uuid,
    pub workflow_id: Uuid,
    pub to_agent_id: Uuid,
    pub task_name: String,
    pub completed_work: String,
    pub remaining_work: String,
    pub constraints: Value,
    pub dependencies: Value,
    pub success_criteria: String,
    pub estimated_time: Option<f64>,
    pub escalation_conditions: Value,
    pub created_at: DateTime<Utc>,
    pub event_sequence: i64,
}

type Key = (String, Uuid, String, Uuid);

/// The batch's handoffs, one row per key (the last in stream order): one statement cannot
/// upsert a row twice.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    pub rows: Vec<HandoffRow>,
    index: HashMap<Key, usize>,
}

impl Changes {
    /// The handoffs `e` carries, each with an id of its own derived from the event's (several
    /// agents may hand one step over).
    pub fn scheduled(&mut self, origin: &Origin<'_>, e: &StepScheduled) {
        for handoff in e.handed_off() {
            let label = format!("handoff/{}", handoff.from_agent);
            let id = EventId(origin.event_id).child(&label).0;
            self.record(origin, &handoff, id);
        }
    }

    /// A handoff stored as an event of its own (logs written before handoffs travelled in the
    /// scheduling): its id is the event's.
    pub fn handed_off(&mut self, origin: &Origin<'_>, e: &TaskHandedOff) {
        self.record(origin, e, origin.event_id);
    }

    fn record(&mut self, origin: &Origin<'_>, e: &TaskHandedOff, id: Uuid) {
        let row = HandoffRow {
            tenant_id: origin.tenant.to_owned(),
            execution_id: e.execution_id.0,
            task_id: e.task_id.to_string(),
            from_agent_id: e.from_agent.0,
            id,
            event_id: origin.event_id,
            workflow_id: e.workflow_id.0,
            to_agent_id: e.to_agent.0,
            task_name: e.task_name.clone(),
            completed_work: e.context.completed_work.clone(),
            remaining_work: e.context.remaining_work.clone(),
            constraints: json!(e.context.constraints),
            dependencies: json!(e.context.dependencies),
            success_criteria: e.success_criteria.clone(),
            estimated_time: e.estimated_time,
            escalation_conditions: json!(e.escalation_conditions),
            created_at: origin.at,
            event_sequence: origin.sequence,
        };
        let key = (
            row.tenant_id.clone(),
            row.execution_id,
            row.task_id.clone(),
            row.from_agent_id,
        );
        match self.index.get(&key) {
            Some(&at) => self.rows[at] = row,
            None => {
                self.index.insert(key, self.rows.len());
                self.rows.push(row);
            }
        }
    }

    /// The newer record of a handoff replaces the older; an older one (a replay over rows
    /// already there) changes nothing.
    pub async fn write(self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        let rows = self.rows;
        if rows.is_empty() {
            return Ok(());
        }
        columns!(for r in rows => tenant_id, execution_id, task_id, from_agent_id, id, event_id,
                 workflow_id, to_agent_id, task_name, completed_work, remaining_work,
                 constraints, dependencies, success_criteria, estimated_time,
                 escalation_conditions, created_at, event_sequence);
        sqlx::query!(
            "INSERT INTO task_handoffs (tenant_id, execution_id, task_id, from_agent_id, id,
                 event_id, workflow_id, to_agent_id, task_name, completed_work, remaining_work, constraints,
                 dependencies, success_criteria, estimated_time, escalation_conditions,
                 created_at, event_sequence)
             SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::uuid[], $5::uuid[],
                                  $6::uuid[], $7::uuid[], $8::uuid[], $9::text[], $10::text[],
                                  $11::text[], $12::jsonb[], $13::jsonb[], $14::text[],
                                  $15::float8[], $16::jsonb[], $17::timestamptz[],
                                  $18::bigint[])
             ON CONFLICT (tenant_id, execution_id, task_id, from_agent_id) DO UPDATE SET
                 id = excluded.id, event_id = excluded.event_id, workflow_id = excluded.workflow_id,
                 to_agent_id = excluded.to_agent_id, task_name = excluded.task_name,
                 completed_work = excluded.completed_work,
                 remaining_work = excluded.remaining_work, constraints = excluded.constraints,
                 dependencies = excluded.dependencies,
                 success_criteria = excluded.success_criteria,
                 estimated_time = excluded.estimated_time,
                 escalation_conditions = excluded.escalation_conditions,
                 created_at = excluded.created_at, event_sequence = excluded.event_sequence
             WHERE task_handoffs.event_sequence < excluded.event_sequence",
            &tenant_id,
            &execution_id,
            &task_id,
            &from_agent_id,
            &id,
            &event_id,
            &workflow_id,
            &to_agent_id,
            &task_name,
            &completed_work,
            &remaining_work,
            &constraints,
            &dependencies,
            &success_criteria,
            &estimated_time as _,
            &escalation_conditions,
            &created_at,
            &event_sequence,
        )
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

pub(crate) async fn reset(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query!("TRUNCATE task_handoffs")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got
mod tests {
    use cadre_proto::events::{HandingAgent, Handoff};
    use cadre_proto::{AgentId, Event};
    use serde_json::json;

    use super::HandoffRow;
    use crate::incoming::Incoming;
    use crate::testing::{Fixture, TestDb, lease, plan_all, project, rows};

    #[test]
    fn a_handoff_is_one_row_in_the_seeds_shape() {
        let mut f = Fixture::new();
        let bo = AgentId::new();
        let batch = vec![f.message(f.handed_off(bo, "Research: found three options"))];
        let plan = plan_all(&batch);
        let [row] = plan.handoffs.rows.as_slice() else {
            panic!("one row: {:?}", plan.handoffs.rows)
        };
        assert_eq!((row.from_agent_id, row.to_agent_id), (bo.0, f.agent.id.0));
        assert_eq!(
            (row.task_id.as_str(), row.task_name.as_str()),
            ("design", "Design")
        );
        assert_eq!(row.completed_work, "Research: found three options");
        assert_eq!(row.remaining_work, "Think");
        assert_eq!(row.constraints, json!(["runs alone"]));
        assert_eq!(
            row.dependencies,
            json!(["research (Research): completed by Bo"])
        );
        assert_eq!(row.success_criteria, "A design");
        assert_eq!(row.estimated_time, Some(5.0));
        let event_id = batch[0].content.as_ref().unwrap().meta.id.0;
        assert_eq!((row.id, row.event_id), (event_id, event_id), "the event's");
    }

    #[test]
    fn each_handoff_a_scheduling_carries_is_a_row_with_an_id_of_its_own() {
        let mut f = Fixture::new();
        let (bo, cy) = (AgentId::new(), AgentId::new());
        let Event::TaskHandedOff(alone) = f.handed_off(bo, "Research: found three options") else {
            unreachable!()
        };
        let Event::StepScheduled(mut scheduled) = f.scheduled(1) else {
            unreachable!()
        };
        let context = &alone.context;
        scheduled.handoff = Some(Handoff {
            from: [bo, cy]
                .map(|agent_id| HandingAgent {
                    agent_id,
                    completed_work: context.completed_work.clone(),
                })
                .into(),
            remaining_work: context.remaining_work.clone(),
            constraints: context.constraints.clone(),
            dependencies: context.dependencies.clone(),
            success_criteria: alone.success_criteria.clone(),
            escalation_conditions: alone.escalation_conditions.clone(),
        });
        let batch = vec![f.message(Event::StepScheduled(scheduled))];
        let plan = plan_all(&batch);
        let [first, second] = plan.handoffs.rows.as_slice() else {
            panic!("two rows: {:?}", plan.handoffs.rows)
        };
        assert_eq!((first.from_agent_id, second.from_agent_id), (bo.0, cy.0));
        let event_id = batch[0].content.as_ref().unwrap().meta.id.0;
        for row in [first, second] {
            // The record the handoff would have been as an event of its own, but for its ids.
            let expected = HandoffRow {
                from_agent_id: row.from_agent_id,
                ..plan_all(&[f.message(Event::TaskHandedOff(alone.clone()))])
                    .handoffs
                    .rows[0]
                    .clone()
            };
            assert_eq!(
                (
                    &row.to_agent_id,
                    &row.task_id,
                    &row.completed_work,
                    &row.constraints
                ),
                (
                    &expected.to_agent_id,
                    &expected.task_id,
                    &expected.completed_work,
                    &expected.constraints
                )
            );
            assert_eq!(
                (
                    &row.remaining_work,
                    &row.dependencies,
                    &row.success_criteria,
                    &row.escalation_conditions
                ),
                (
                    &expected.remaining_work,
                    &expected.dependencies,
                    &expected.success_criteria,
                    &expected.escalation_conditions
                )
            );
            assert_eq!(
                row.estimated_time, f.step.timeout_minutes,
                "the step's time-out"
            );
            assert_eq!(row.event_sequence, batch[0].sequence as i64);
            assert_eq!(row.event_id, event_id, "the event it comes from");
        }
        let ids = [first.id, second.id];
        assert!(ids[0] != ids[1] && !ids.contains(&event_id), "{ids:?}");
        // A replay derives the same ids, so it writes the same rows.
        let again = plan_all(&batch);
        assert_eq!(
            again.handoffs.rows.iter().map(|r| r.id).collect::<Vec<_>>(),
            ids
        );
    }

    #[tokio::test]
    async fn a_handoff_recorded_again_replaces_the_older_record_and_never_the_newer() {
        let mut f = Fixture::new();
        let bo = AgentId::new();
        let log = f.messages([
            f.handed_off(bo, "first record"),
            f.handed_off(bo, "second record"),
            f.handed_off(AgentId::new(), "from someone else"),
        ]);
        let db = TestDb::create().await;
        let mut lease = lease(&db).await;
        let mut conn = db.connect().await;
        // In one batch, the last record of a handoff wins.
        project(&mut lease, &log[..2], 2).await;
        let table = rows(&mut conn, "task_handoffs").await;
        assert_eq!(table.as_array().unwrap().len(), 1, "{table}");
        assert_eq!(table[0]["completed_work"], "second record");
        // An older record arriving later changes nothing; another agent's is a row of its own.
        let mut copy = log[0].content.as_ref().unwrap().clone();
        copy.meta.id = cadre_proto::EventId::new();
        let older = Incoming::decode(
            log[0].sequence,
            log[0].subject.clone(),
            log[0].stored_at,
            &copy.encode(),
        );
        project(&mut lease, &[older], 1).await;
        project(&mut lease, &log[2..], 1).await;
        let table = rows(&mut conn, "task_handoffs").await;
        assert_eq!(table.as_array().unwrap().len(), 2, "{table}");
        let works: Vec<_> = table
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["completed_work"].as_str().unwrap())
            .collect();
        assert!(works.contains(&"second record"), "{works:?}");
        assert!(works.contains(&"from someone else"), "{works:?}");
    }
}

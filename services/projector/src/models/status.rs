//! `agent_status`: the seed's `AgentStatus`, one row per agent, its latest status, for
//! `GET /v1/agents/{id}/status`.
//!
//! Most of it is projected from facts recorded anyway, so a step costs no event for its status:
//! `StepStarted` (working, 0 %, done by the attempt's time-out at the latest), `StepDeferred`
//! (blocked by its provider), `StepCompleted` and `StepReviewed` (completed, 100 %), `StepFailed`
//! and `StepTimedOut` (failed, the error as blocker). `AgentStatusReported` adds what only the
//! agent can say: its blockers and the support it asks for. The latest event wins, in stream
//! order; an agent working on several steps at once shows the one it last reported on. When a
//! run ends (completed, failed, cancelled), an agent still shown working or blocked on it is
//! idle again: its attempt was stopped with the run, and no event of the attempt will say so.

use std::collections::HashMap;

use cadre_proto::ExecutionId;
use cadre_proto::events::{
    AgentStatusReported, StepAttempt, StepCompleted, StepDeferred, StepFailed, StepReviewed,
    StepStarted, StepTimedOut,
};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use super::columns;
use crate::plan::Origin;

/// What an agent is doing, as the status read model says it.
pub(crate) mod state {
    /// Nothing to do: no step yet, or the run of its last one ended while it was on it.
    pub const IDLE: &str = "idle";
    /// A step attempt started, or the agent reported progress with nothing in its way.
    pub const WORKING: &str = "working";
    /// Something stops the agent: its provider cannot answer now, or it says so itself.
    pub const BLOCKED: &str = "blocked";
    pub const COMPLETED: &str = "completed";
    pub const FAILED: &str = "failed";
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StatusRow {
    pub tenant_id: String,
    pub agent_id: Uuid,
    pub state: &'static str,
    pub workflow_id: Option<Uuid>,
    pub execution_id: Option<Uuid>,
    pub step_id: Option<String>,
    pub current_task: Option<String>,
    pub attempt: Option<i32>,
    pub progress: i16,
    pub estimated_completion: Option<DateTime<Utc>>,
    pub blockers: Value,
    pub requested_support: Value,
    pub updated_at: DateTime<Utc>,
    pub event_id: Uuid,
    pub event_sequence: i64,
}

impl StatusRow {
    fn of(
        origin: &Origin<'_>,
        agent: Uuid,
        task: Option<&StepAttempt>,
        state: &'static str,
    ) -> Self {
        Self {
            tenant_id: origin.tenant.to_owned(),
            agent_id: agent,
            state,
            workflow_id: task.map(|t| t.workflow_id.0),
            execution_id: task.map(|t| t.execution_id.0),
            step_id: task.map(|t| t.step_id.to_string()),
            current_task: task.map(|t| t.step_name.clone()),
            attempt: task.map(|t| i32::try_from(t.number).unwrap_or(i32::MAX)),
            progress: 0,
            estimated_completion: None,
            blockers: json!([]),
            requested_support: json!([]),
            updated_at: origin.at,
            event_id: origin.event_id,
            event_sequence: origin.sequence,
        }
    }

    fn attempt(origin: &Origin<'_>, attempt: &StepAttempt, state: &'static str) -> Self {
        Self::of(origin, attempt.agent_id.0, Some(attempt), state)
    }

    fn is_busy(&self) -> bool {
        matches!(self.state, state::WORKING | state::BLOCKED)
    }
}

/// A run that ended or was re-planned (its steps under way dropped), with the event that says so.
#[derive(Debug)]
struct StepsDropped {
    tenant_id: String,
    execution_id: Uuid,
    at: DateTime<Utc>,
    event_id: Uuid,
    event_sequence: i64,
}

/// The batch's statuses, the last per agent: one statement cannot upsert a row twice.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    pub rows: Vec<StatusRow>,
    index: HashMap<(String, Uuid), usize>,
    /// Runs whose steps under way the batch dropped, for the rows stored before it.
    dropped: Vec<StepsDropped>,
}

impl Changes {
    pub fn step_started(&mut self, origin: &Origin<'_>, e: &StepStarted) {
        self.set(StatusRow {
            estimated_completion: e.timeout_at,
            ..StatusRow::attempt(origin, &e.attempt, state::WORKING)
        });
    }

    pub fn step_deferred(&mut self, origin: &Origin<'_>, e: &StepDeferred) {
        let until = e.retry_at.to_rfc3339_opts(SecondsFormat::Secs, true);
        self.set(StatusRow {
            blockers: json!([format!(
                "waiting for its LLM provider until {until}: {}",
                e.error
            )]),
            ..StatusRow::attempt(origin, &e.attempt, state::BLOCKED)
        });
    }

    pub fn step_completed(&mut self, origin: &Origin<'_>, e: &StepCompleted) {
        self.finished(origin, &e.attempt);
    }

    pub fn step_reviewed(&mut self, origin: &Origin<'_>, e: &StepReviewed) {
        self.finished(origin, &e.attempt);
    }

    /// Done: 100 %, and the estimate is when it was done.
    fn finished(&mut self, origin: &Origin<'_>, attempt: &StepAttempt) {
        self.set(StatusRow {
            progress: 100,
            estimated_completion: Some(origin.at),
            ..StatusRow::attempt(origin, attempt, state::COMPLETED)
        });
    }

    pub fn step_failed(&mut self, origin: &Origin<'_>, e: &StepFailed) {
        self.set(StatusRow {
            blockers: json!([e.error]),
            ..StatusRow::attempt(origin, &e.attempt, state::FAILED)
        });
    }

    pub fn step_timed_out(&mut self, origin: &Origin<'_>, e: &StepTimedOut) {
        self.set(StatusRow {
            blockers: json!([e.error()]),
            ..StatusRow::attempt(origin, &e.attempt, state::FAILED)
        });
    }

    /// What the agent says about itself: blocked while anything is in its way or it waits for
    /// support, else working (completed at 100 %).
    pub fn reported(&mut self, origin: &Origin<'_>, e: &AgentStatusReported) {
        let progress = e.progress.min(100);
        let state = if !e.blockers.is_empty() || !e.requested_support.is_empty() {
            state::BLOCKED
        } else if progress == 100 {
            state::COMPLETED
        } else {
            state::WORKING
        };
        self.set(StatusRow {
            progress: i16::from(progress),
            estimated_completion: e.estimated_completion,
            blockers: json!(e.blockers),
            requested_support: json!(e.requested_support),
            ..StatusRow::of(origin, e.agent_id.0, e.current_task.as_ref(), state)
        });
    }

    /// The run ended, or a re-plan dropped its steps under way: whoever is still on one of
    /// them, in the batch or stored, is idle (the new plan's steps start after this).
    pub fn steps_dropped(&mut self, origin: &Origin<'_>, execution: ExecutionId) {
        for row in &mut self.rows {
            if row.execution_id == Some(execution.0) && row.is_busy() {
                *row = StatusRow::of(origin, row.agent_id, None, state::IDLE);
            }
        }
        // The first drop idles the stored rows of the run; a later one in the same batch (a
        // re-plan, then the run's end) would find them idle already, and two source rows for
        // one stored row would leave the statement to pick either.
        if self.dropped.iter().any(|d| d.execution_id == execution.0) {
            return;
        }
        self.dropped.push(StepsDropped {
            tenant_id: origin.tenant.to_owned(),
            execution_id: execution.0,
            at: origin.at,
            event_id: origin.event_id,
            event_sequence: origin.sequence,
        });
    }

    fn set(&mut self, row: StatusRow) {
        let key = (row.tenant_id.clone(), row.agent_id);
        match self.index.get(&key) {
            Some(&at) => self.rows[at] = row,
            None => {
                self.index.insert(key, self.rows.len());
                self.rows.push(row);
            }
        }
    }

    /// The batch's own rows (already folded with the runs' ends), then the stored rows the
    /// runs' ends leave idle: in that order, an agent whose step finished in the batch keeps
    /// that status rather than being idled through its older stored row. A status replaces
    /// the agent's row only if it is newer (a replay over rows already there changes nothing).
    pub async fn write(self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        upsert(tx, self.rows).await?;
        idle_after_steps_dropped(tx, self.dropped).await
    }
}

async fn upsert(tx: &mut PgConnection, rows: Vec<StatusRow>) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    columns!(for r in rows => tenant_id, agent_id, workflow_id, execution_id, step_id,
             current_task, attempt, progress, estimated_completion, blockers,
             requested_support, updated_at, event_id, event_sequence,
             state = r.state.to_owned());
    sqlx::query!(
        "INSERT INTO agent_status (tenant_id, agent_id, state, workflow_id, execution_id,
             step_id, current_task, attempt, progress, estimated_completion, blockers,
             requested_support, updated_at, event_id, event_sequence)
         SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::uuid[], $5::uuid[],
                              $6::text[], $7::text[], $8::int4[], $9::int2[],
                              $10::timestamptz[], $11::jsonb[], $12::jsonb[],
                              $13::timestamptz[], $14::uuid[], $15::bigint[])
         ON CONFLICT (tenant_id, agent_id) DO UPDATE SET
             state = excluded.state, workflow_id = excluded.workflow_id,
             execution_id = excluded.execution_id, step_id = excluded.step_id,
             current_task = excluded.current_task, attempt = excluded.attempt,
             progress = excluded.progress,
             estimated_completion = excluded.estimated_completion,
             blockers = excluded.blockers, requested_support = excluded.requested_support,
             updated_at = excluded.updated_at, event_id = excluded.event_id,
             event_sequence = excluded.event_sequence
         WHERE agent_status.event_sequence < excluded.event_sequence",
        &tenant_id,
        &agent_id,
        &state,
        &workflow_id as _,
        &execution_id as _,
        &step_id as _,
        &current_task as _,
        &attempt as _,
        &progress,
        &estimated_completion as _,
        &blockers,
        &requested_support,
        &updated_at,
        &event_id,
        &event_sequence,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Rows stored before their run ended or was re-planned that still show the agent busy on it.
async fn idle_after_steps_dropped(
    tx: &mut PgConnection,
    dropped: Vec<StepsDropped>,
) -> Result<(), sqlx::Error> {
    if dropped.is_empty() {
        return Ok(());
    }
    columns!(for e in dropped => tenant_id, execution_id, at, event_id, event_sequence);
    sqlx::query!(
        "UPDATE agent_status s SET state = $6, workflow_id = NULL, execution_id = NULL,
             step_id = NULL, current_task = NULL, attempt = NULL, progress = 0,
             estimated_completion = NULL, blockers = '[]', requested_support = '[]',
             updated_at = e.at, event_id = e.event_id, event_sequence = e.event_sequence
         FROM UNNEST($1::text[], $2::uuid[], $3::timestamptz[], $4::uuid[], $5::bigint[])
              AS e(tenant_id, execution_id, at, event_id, event_sequence)
         WHERE s.tenant_id = e.tenant_id AND s.execution_id = e.execution_id
           AND s.state IN ($7, $8) AND s.event_sequence < e.event_sequence",
        &tenant_id,
        &execution_id,
        &at,
        &event_id,
        &event_sequence,
        state::IDLE,
        state::WORKING,
        state::BLOCKED,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

pub(crate) async fn reset(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query!("TRUNCATE agent_status")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got
mod tests {
    use cadre_proto::events::{SupportRequest, Urgency};
    use cadre_proto::{AgentId, Event};
    use serde_json::json;

    use super::*;
    use crate::testing::{Fixture, TestDb, lease, plan_all, project, rows};

    /// The agent's status after `event`, as the plan of a batch holding only it.
    fn after(f: &mut Fixture, event: Event) -> StatusRow {
        let plan = plan_all(&[f.message(event)]);
        let [row] = plan.status.rows.as_slice() else {
            panic!("one status per agent: {:?}", plan.status.rows)
        };
        row.clone()
    }

    #[test]
    fn an_agents_status_follows_its_attempts_with_no_event_of_its_own() {
        let mut f = Fixture::new();
        let timeout_at = f.clock + chrono::Duration::minutes(10);
        let mut started = f.step_started(1);
        if let Event::StepStarted(s) = &mut started {
            s.timeout_at = Some(timeout_at);
        }
        let working = after(&mut f, started);
        assert_eq!(working.agent_id, f.agent.id.0);
        assert_eq!(working.state, "working");
        assert_eq!(working.current_task.as_deref(), Some("Design"));
        assert_eq!(
            (working.step_id.as_deref(), working.attempt),
            (Some("design"), Some(1))
        );
        assert_eq!(working.execution_id, Some(f.execution.0));
        assert_eq!(working.progress, 0);
        assert_eq!(working.estimated_completion, Some(timeout_at));
        assert_eq!(working.blockers, json!([]));

        let deferred = f.step_deferred(1);
        let blocked = after(&mut f, deferred);
        assert_eq!(blocked.state, "blocked");
        let until = (f.clock - chrono::Duration::seconds(1) + chrono::Duration::minutes(1))
            .to_rfc3339_opts(SecondsFormat::Secs, true);
        assert_eq!(
            blocked.blockers,
            json!([format!(
                "waiting for its LLM provider until {until}: provider said 429"
            )])
        );
        assert_eq!(blocked.requested_support, json!([]));

        let completed = f.step_completed(1);
        let done = after(&mut f, completed);
        assert_eq!((done.state, done.progress), ("completed", 100));
        assert_eq!(done.estimated_completion, Some(f.clock), "when it was done");
        assert_eq!(done.blockers, json!([]));

        let failed = f.step_failed(1);
        let failed = after(&mut f, failed);
        assert_eq!((failed.state, failed.progress), ("failed", 0));
        assert_eq!(failed.blockers, json!(["provider said 500"]));
        let timed_out = f.step_timed_out(1, 5);
        let timed_out = after(&mut f, timed_out);
        assert_eq!(timed_out.state, "failed");
        assert_eq!(timed_out.blockers, json!(["timed out after 5 minute(s)"]));
    }

    #[test]
    fn what_an_agent_reports_itself_adds_blockers_and_requested_support() {
        let mut f = Fixture::new();
        let teammate = AgentId::new();
        let asked = vec![SupportRequest {
            from_agent: Some(teammate),
            reason: "Which schema version?".to_owned(),
            urgency: Urgency::Critical,
        }];
        let report = f.status_reported(150, &["waiting for Bo"], asked);
        let blocked = after(&mut f, report);
        assert_eq!((blocked.state, blocked.progress), ("blocked", 100));
        assert_eq!(blocked.blockers, json!(["waiting for Bo"]));
        assert_eq!(
            blocked.requested_support,
            json!([{ "fromAgent": teammate, "reason": "Which schema version?", "urgency": "critical" }])
        );
        let report = f.status_reported(40, &[], vec![]);
        let working = after(&mut f, report);
        assert_eq!((working.state, working.progress), ("working", 40));
        assert_eq!(working.current_task.as_deref(), Some("Design"));
    }

    #[test]
    fn a_batch_keeps_each_agents_last_status() {
        let mut f = Fixture::new();
        let mut other = f.clone();
        other.agent.id = AgentId::new();
        let batch = vec![
            f.message(f.step_started(1)),
            f.message(other.step_started(1)),
            f.message(f.step_completed(1)),
        ];
        let plan = plan_all(&batch);
        let states: Vec<_> = plan
            .status
            .rows
            .iter()
            .map(|r| (r.agent_id, r.state))
            .collect();
        assert_eq!(
            states,
            [(f.agent.id.0, "completed"), (other.agent.id.0, "working")]
        );
    }

    #[tokio::test]
    async fn an_agent_on_a_run_that_ends_or_re_plans_is_idle_in_the_batch_and_in_stored_rows() {
        for replans in [false, true] {
            agents_on_dropped_steps_are_idle(replans).await;
        }
    }

    /// The run ends (or, `replans`, a re-plan drops its steps under way) while agents work.
    async fn agents_on_dropped_steps_are_idle(replans: bool) {
        let mut f = Fixture::new();
        let mut other = f.clone();
        other.agent.id = AgentId::new();
        let mut elsewhere = f.clone();
        elsewhere.agent.id = AgentId::new();
        elsewhere.execution = cadre_proto::ExecutionId::new();
        let mut finisher = f.clone();
        finisher.agent.id = AgentId::new();
        let earlier = vec![
            f.message(f.step_started(1)),
            f.message(other.step_started(1)),
            f.message(other.step_completed(1)),
            f.message(elsewhere.step_started(1)),
            f.message(finisher.step_started(1)),
        ];
        // The same batch: a start, a step finished (its agent's start stored before), then
        // the run's end.
        let mut third = f.clone();
        third.agent.id = AgentId::new();
        let later = vec![
            f.message(third.step_started(1)),
            f.message(finisher.step_completed(1)),
            f.message(if replans {
                f.replanned()
            } else {
                f.cancelled(Some("ops"), None)
            }),
        ];
        let db = TestDb::create().await;
        let mut lease = lease(&db).await;
        project(&mut lease, &earlier, 10).await;
        project(&mut lease, &later, 10).await;
        let mut conn = db.connect().await;
        let table = rows(&mut conn, "agent_status").await;
        let state_of = |agent: AgentId| {
            let row = table
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["agent_id"] == json!(agent.0))
                .unwrap();
            (
                row["state"].as_str().unwrap().to_owned(),
                row["current_task"].clone(),
            )
        };
        assert_eq!(
            state_of(f.agent.id),
            ("idle".to_owned(), Value::Null),
            "stored, re-planned: {replans}"
        );
        assert_eq!(
            state_of(third.agent.id),
            ("idle".to_owned(), Value::Null),
            "in the batch"
        );
        assert_eq!(
            state_of(other.agent.id).0,
            "completed",
            "done before the end"
        );
        assert_eq!(
            state_of(finisher.agent.id).0,
            "completed",
            "done in the batch that ended the run"
        );
        assert_eq!(state_of(elsewhere.agent.id).0, "working", "on another run");

        // A replay of the earlier events changes nothing.
        project(&mut lease, &earlier, 10).await;
        let again = rows(&mut conn, "agent_status").await;
        assert_eq!(again, table);
    }

    #[tokio::test]
    async fn a_status_older_than_the_agents_row_changes_nothing() {
        let mut f = Fixture::new();
        let log = f.messages([f.step_started(1), f.step_completed(1)]);
        let db = TestDb::create().await;
        let mut lease = lease(&db).await;
        // The completion first, then the older start (a replay over rows already there).
        project(&mut lease, &log[1..], 1).await;
        project(&mut lease, &log[..1], 1).await;
        let mut conn = db.connect().await;
        let table = rows(&mut conn, "agent_status").await;
        assert_eq!(table.as_array().unwrap().len(), 1, "{table}");
        assert_eq!(table[0]["state"], "completed");
        assert_eq!(table[0]["progress"], 100);
        assert_eq!(table[0]["event_sequence"], 2);
    }

    /// With other agents' rows (a table of some size) Postgres hash-joins the stored rows with
    /// the batch's drops, and one stored row met two of them (a re-plan, then the run's end).
    #[tokio::test]
    async fn a_replan_and_the_runs_end_in_one_batch_idle_the_agent_as_one_at_a_time() {
        let mut f = Fixture::new();
        let log = f.messages([
            f.started(1),
            f.scheduled(1),
            f.step_started(1),
            f.replanned(),
            f.failed(),
        ]);
        let mut statuses = Vec::new();
        for size in [1, 3] {
            let db = TestDb::create().await;
            let mut lease = lease(&db).await;
            let mut conn = db.connect().await;
            sqlx::raw_sql(
                "INSERT INTO agent_status (tenant_id, agent_id, state, execution_id, progress,
                     updated_at, event_id, event_sequence)
                 SELECT 'default', gen_random_uuid(), 'working', gen_random_uuid(), 0, now(),
                        gen_random_uuid(), 0
                 FROM generate_series(1, 5000);
                 ANALYZE agent_status;",
            )
            .execute(&mut conn)
            .await
            .unwrap();
            project(&mut lease, &log, size).await;
            let status: serde_json::Value =
                sqlx::query_scalar("SELECT to_jsonb(s) FROM agent_status s WHERE agent_id = $1")
                    .bind(f.agent.id.0)
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
            statuses.push(status);
        }
        assert_eq!(statuses[0]["state"], "idle");
        assert_eq!(
            statuses[1], statuses[0],
            "batches of 3 against one at a time"
        );
    }
}

//! `execution_history`: the seed's execution records (`ExecutionRecord`: timestamp, step,
//! agent, action, result, duration), one row per record: how each attempt ended (`completed`,
//! `failed`, `timed_out`; a review `approved` or `changes_requested`), a step `escalated`,
//! `skipped` or `resolved` by a person. For `GET /v1/executions/{id}/history` and the metrics
//! counted from it.
//!
//! An attempt has one outcome, its first, as for the coordinator: a worker that reports after
//! its attempt timed out is not recorded (a unique index keeps the first across batches). The
//! outcomes recorded for the first time complete and escalate the agents' tasks in
//! `agent_tasks` ([`super::tasks`]), in the same statement, so a task is completed only by an
//! outcome that counts. Runs that end get their `actual_duration` here too.

use std::collections::HashSet;

use cadre_proto::events::{
    EscalationResolved, StepAttempt, StepCompleted, StepEscalated, StepFailed, StepReviewed,
    StepSkipped, StepTimedOut,
};
use cadre_proto::{ExecutionId, StepId, WorkflowId};
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::columns;
use crate::plan::Origin;

/// What a record says happened.
pub(crate) mod action {
    pub const COMPLETED: &str = "completed";
    pub const FAILED: &str = "failed";
    pub const TIMED_OUT: &str = "timed_out";
    pub const APPROVED: &str = "approved";
    pub const CHANGES_REQUESTED: &str = "changes_requested";
    /// The step climbed its escalation ladder (or, as an approval, waits for a person).
    pub const ESCALATED: &str = "escalated";
    pub const SKIPPED: &str = "skipped";
    /// A person resolved the step's escalation.
    pub const RESOLVED: &str = "resolved";
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HistoryRow {
    pub event_id: Uuid,
    pub tenant_id: String,
    pub workflow_id: Uuid,
    pub execution_id: Uuid,
    pub step_id: String,
    pub step_name: String,
    pub attempt: i32,
    pub agent_id: Option<Uuid>,
    pub author_agent_id: Option<Uuid>,
    pub action: &'static str,
    pub result: String,
    pub duration_ms: Option<i64>,
    pub recorded_at: DateTime<Utc>,
    pub event_sequence: i64,
}

impl HistoryRow {
    #[allow(clippy::too_many_arguments)] // every column a record has
    fn new(
        origin: &Origin<'_>,
        workflow: WorkflowId,
        execution: ExecutionId,
        step: &StepId,
        step_name: &str,
        attempt: u32,
        agent: Option<Uuid>,
        action: &'static str,
        result: String,
    ) -> Self {
        Self {
            event_id: origin.event_id,
            tenant_id: origin.tenant.to_owned(),
            workflow_id: workflow.0,
            execution_id: execution.0,
            step_id: step.to_string(),
            step_name: step_name.to_owned(),
            attempt: i32::try_from(attempt).unwrap_or(i32::MAX),
            agent_id: agent,
            author_agent_id: None,
            action,
            result,
            duration_ms: None,
            recorded_at: origin.at,
            event_sequence: origin.sequence,
        }
    }

    fn outcome(origin: &Origin<'_>, a: &StepAttempt, action: &'static str, result: String) -> Self {
        Self::new(
            origin,
            a.workflow_id,
            a.execution_id,
            &a.step_id,
            &a.step_name,
            a.number,
            Some(a.agent_id.0),
            action,
            result,
        )
    }
}

/// An attempt: (tenant, execution, step, attempt).
type Attempt = (String, Uuid, String, i32);

/// The batch's records, in stream order, each attempt's first outcome only; and the runs that
/// ended.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    pub rows: Vec<HistoryRow>,
    pub ended: Vec<Uuid>,
    outcomes: HashSet<Attempt>,
}

impl Changes {
    pub fn step_completed(&mut self, origin: &Origin<'_>, e: &StepCompleted) {
        let row = HistoryRow {
            duration_ms: Some(i64::try_from(e.duration_ms).unwrap_or(i64::MAX)),
            ..HistoryRow::outcome(
                origin,
                &e.attempt,
                action::COMPLETED,
                e.result.summary.clone(),
            )
        };
        self.outcome(row);
    }

    pub fn step_failed(&mut self, origin: &Origin<'_>, e: &StepFailed) {
        let row = HistoryRow::outcome(origin, &e.attempt, action::FAILED, e.error.clone());
        self.outcome(row);
    }

    pub fn step_timed_out(&mut self, origin: &Origin<'_>, e: &StepTimedOut) {
        let row = HistoryRow {
            // It ran as long as it was allowed to.
            duration_ms: Some((e.timeout_minutes * 60_000.0).round() as i64),
            ..HistoryRow::outcome(origin, &e.attempt, action::TIMED_OUT, e.error())
        };
        self.outcome(row);
    }

    /// The reviewer's attempt; `author_agent_id` says whose work it judged.
    pub fn step_reviewed(&mut self, origin: &Origin<'_>, e: &StepReviewed) {
        let verdict = if e.approved {
            action::APPROVED
        } else {
            action::CHANGES_REQUESTED
        };
        let row = HistoryRow {
            author_agent_id: Some(e.author_agent_id.0),
            ..HistoryRow::outcome(origin, &e.attempt, verdict, e.feedback.clone())
        };
        self.outcome(row);
    }

    /// Credited to the agent whose failed attempt escalated the step; an approval has none.
    pub fn step_escalated(&mut self, origin: &Origin<'_>, e: &StepEscalated) {
        let failing = (!e.approval)
            .then(|| {
                e.context
                    .failures
                    .iter()
                    .rev()
                    .find(|f| f.attempt == e.attempt)
            })
            .flatten()
            .map(|f| f.agent_id.0);
        self.rows.push(HistoryRow::new(
            origin,
            e.workflow_id,
            e.execution_id,
            &e.step_id,
            &e.step_name,
            e.attempt,
            failing,
            action::ESCALATED,
            e.reason.clone(),
        ));
    }

    pub fn step_skipped(&mut self, origin: &Origin<'_>, e: &StepSkipped) {
        self.rows.push(HistoryRow::new(
            origin,
            e.workflow_id,
            e.execution_id,
            &e.step_id,
            &e.step_name,
            0,
            None,
            action::SKIPPED,
            format!("its condition was false: {}", e.condition),
        ));
    }

    /// A person's decision on a step (a run's own escalation is no step's record).
    pub fn escalation_resolved(&mut self, origin: &Origin<'_>, e: &EscalationResolved) {
        let Some(step_id) = &e.step_id else {
            return;
        };
        let by = e.request.requested_by.as_deref().unwrap_or("a person");
        let result = match &e.request.reason {
            Some(reason) => format!("{} by {by}: {reason}", e.resolution.as_str()),
            None => format!("{} by {by}", e.resolution.as_str()),
        };
        self.rows.push(HistoryRow::new(
            origin,
            e.workflow_id,
            e.execution_id,
            step_id,
            e.step_name.as_deref().unwrap_or_default(),
            e.attempt,
            None,
            action::RESOLVED,
            result,
        ));
    }

    /// The run ended (completed, failed or cancelled): its `actual_duration` is set.
    pub fn execution_ended(&mut self, execution: ExecutionId) {
        self.ended.push(execution.0);
    }

    fn outcome(&mut self, row: HistoryRow) {
        let attempt = (
            row.tenant_id.clone(),
            row.execution_id,
            row.step_id.clone(),
            row.attempt,
        );
        if self.outcomes.insert(attempt) {
            self.rows.push(row);
        }
    }

    /// After the tasks ([`super::tasks`]) and the executions: the records complete and
    /// escalate tasks handed out in this batch or before, and a run's duration is read from
    /// its ended row.
    pub async fn write(self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        insert(tx, self.rows).await?;
        if !self.ended.is_empty() {
            sqlx::query!(
                "UPDATE executions
                 SET actual_duration = trunc(extract(epoch FROM completed_at - started_at))::int
                 WHERE id = ANY($1) AND completed_at IS NOT NULL",
                &self.ended,
            )
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }
}

/// Inserts the records; those stored for the first time (not an attempt's second outcome, not
/// a copy) complete the agents' tasks (the first completion, in stream order) and mark them
/// escalated.
async fn insert(tx: &mut PgConnection, rows: Vec<HistoryRow>) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    columns!(for r in rows => event_id, tenant_id, workflow_id, execution_id, step_id,
             step_name, attempt, agent_id, author_agent_id, result, duration_ms, recorded_at,
             event_sequence, action = r.action.to_owned());
    sqlx::query!(
        "WITH recorded AS (
             INSERT INTO execution_history (event_id, tenant_id, workflow_id, execution_id,
                 step_id, step_name, attempt, agent_id, author_agent_id, action, result,
                 duration_ms, recorded_at, event_sequence)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::text[],
                                  $6::text[], $7::int4[], $8::uuid[], $9::uuid[], $10::text[],
                                  $11::text[], $12::int8[], $13::timestamptz[], $14::bigint[])
             ON CONFLICT DO NOTHING
             RETURNING tenant_id, execution_id, step_id, agent_id, action, recorded_at,
                       event_sequence
         )
         UPDATE agent_tasks t SET
             completed_at = coalesce(t.completed_at, r.completed_at),
             escalated_at = coalesce(t.escalated_at, r.escalated_at)
         FROM (SELECT tenant_id, execution_id, step_id, agent_id,
                      (array_agg(recorded_at ORDER BY event_sequence)
                           FILTER (WHERE action = 'completed'))[1] AS completed_at,
                      (array_agg(recorded_at ORDER BY event_sequence)
                           FILTER (WHERE action = 'escalated'))[1] AS escalated_at
               FROM recorded WHERE agent_id IS NOT NULL AND action IN ('completed', 'escalated')
               GROUP BY tenant_id, execution_id, step_id, agent_id) r
         WHERE t.tenant_id = r.tenant_id AND t.execution_id = r.execution_id
           AND t.step_id = r.step_id AND t.agent_id = r.agent_id",
        &event_id,
        &tenant_id,
        &workflow_id,
        &execution_id,
        &step_id,
        &step_name,
        &attempt,
        &agent_id as _,
        &author_agent_id as _,
        &action,
        &result,
        &duration_ms as _,
        &recorded_at,
        &event_sequence,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

pub(crate) async fn reset(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query!("TRUNCATE execution_history")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got
mod tests {
    use cadre_proto::events::{ReviewRequest, StepReviewed};
    use cadre_proto::model::EscalationRung;
    use cadre_proto::{AgentId, Event, ExecutionId};
    use serde_json::{Value, json};

    use super::*;
    use crate::incoming::Incoming;
    use crate::testing::{Fixture, TestDb, execution, lease, plan_all, project, rows};

    fn reviewed(f: &Fixture, reviewer: AgentId, attempt: u32, approved: bool) -> Event {
        Event::StepReviewed(StepReviewed {
            attempt: StepAttempt {
                agent_id: reviewer,
                ..f.attempt(attempt)
            },
            round: 1,
            author_agent_id: f.agent.id,
            approved,
            feedback: "add tests".to_owned(),
            ballot: None,
            usage: None,
        })
    }

    fn review_scheduled(f: &Fixture, reviewer: AgentId, attempt: u32) -> Event {
        let mut event = f.scheduled(attempt);
        if let Event::StepScheduled(s) = &mut event {
            s.agent.id = reviewer;
            s.review = Some(ReviewRequest {
                round: 1,
                author_agent_id: f.agent.id,
                summary: "Designed".to_owned(),
                output: "The design".to_owned(),
                ballot: None,
            });
        }
        event
    }

    /// A run whose `design` step (a 2-minute estimate) times out, is reported late, completes
    /// at its second attempt and is sent back by a reviewer; its `review` step fails and
    /// escalates; then the run ends. And a second run, cancelled before anything ended.
    fn log() -> (Fixture, Vec<ExecutionId>, AgentId, Vec<Incoming>) {
        let mut f = Fixture::with_steps(&["design", "review"]);
        f.steps[0].timeout_minutes = Some(2.0);
        let reviewer = AgentId::new();
        let (design, review) = (f.on("design"), f.on("review"));
        let mut log = f.messages([
            design.created(),
            design.started(1),
            design.scheduled(1),
            review.scheduled(1),
            design.step_timed_out(1, 2),
            // The timed-out attempt's worker reports after all: not the attempt's outcome.
            design.step_completed(1),
            design.scheduled(2),
            design.step_completed(2),
            review_scheduled(&design, reviewer, 3),
            reviewed(&design, reviewer, 3, false),
            review.step_failed(1),
            review.escalated(1, EscalationRung::Person),
            review.escalated(1, EscalationRung::Person),
            design.completed(),
        ]);
        let first = f.execution;
        f.execution = ExecutionId::new();
        let second = f.on("design");
        log.extend(f.messages([
            second.started(2),
            second.scheduled(1),
            second.cancelled(Some("ops"), None),
        ]));
        (f, vec![first, second.execution], reviewer, log)
    }

    #[test]
    fn an_attempt_is_recorded_once_by_its_first_outcome() {
        let (f, _, reviewer, log) = log();
        let plan = plan_all(&log);
        let records: Vec<(&str, i32, &str)> = plan
            .history
            .rows
            .iter()
            .map(|r| (r.step_id.as_str(), r.attempt, r.action))
            .collect();
        assert_eq!(
            records,
            [
                ("design", 1, "timed_out"),
                ("design", 2, "completed"),
                ("design", 3, "changes_requested"),
                ("review", 1, "failed"),
                ("review", 1, "escalated"),
                ("review", 1, "escalated"),
            ]
        );
        let review = &plan.history.rows[2];
        assert_eq!(review.agent_id, Some(reviewer.0));
        assert_eq!(review.author_agent_id, Some(f.agent.id.0));
        assert_eq!(review.result, "add tests");
        assert_eq!(plan.history.rows[0].duration_ms, Some(120_000));
        assert_eq!(plan.history.rows[1].duration_ms, Some(42));
        assert_eq!(
            plan.history.rows[4].agent_id,
            Some(f.agent.id.0),
            "the agent whose failure escalated it"
        );
        let tasks: Vec<(&str, Uuid)> = plan
            .tasks
            .rows
            .iter()
            .map(|t| (t.step_id.as_str(), t.agent_id))
            .collect();
        assert_eq!(
            tasks,
            [
                ("design", f.agent.id.0),
                ("review", f.agent.id.0),
                ("design", f.agent.id.0),
            ],
            "one task per step, run and agent; the review is none"
        );
        assert_eq!(plan.tasks.rows[0].estimate_minutes, Some(2.0));
        assert_eq!(plan.tasks.rows[0].step_type, "analysis");
        assert_eq!(plan.history.ended.len(), 2);
    }

    /// The rows of the tables this module and `tasks` write, and the runs' durations.
    async fn snapshot(conn: &mut PgConnection, runs: &[ExecutionId]) -> Vec<Value> {
        let mut tables = vec![
            rows(conn, "agent_tasks").await,
            rows(conn, "execution_history").await,
        ];
        for run in runs {
            tables.push(execution(conn, *run).await["actual_duration"].clone());
        }
        tables
    }

    #[tokio::test]
    async fn tasks_and_records_are_the_same_however_the_log_is_cut_and_when_replayed() {
        let (f, runs, _, log) = log();
        let mut snapshots = Vec::new();
        for size in [log.len(), 1, 2, 5] {
            let db = TestDb::create().await;
            let mut lease = lease(&db).await;
            let mut conn = db.connect().await;
            project(&mut lease, &log, size).await;
            let projected = snapshot(&mut conn, &runs).await;
            // Copies of every event (a re-publish past JetStream's duplicate window).
            let copies: Vec<Incoming> = log
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let envelope = m.content.as_ref().unwrap();
                    Incoming::decode(
                        (log.len() + i + 1) as u64,
                        m.subject.clone(),
                        m.stored_at,
                        &envelope.encode(),
                    )
                })
                .collect();
            project(&mut lease, &copies, size).await;
            assert_eq!(
                snapshot(&mut conn, &runs).await,
                projected,
                "copies, batches of {size}"
            );
            lease.reset().await.unwrap();
            project(&mut lease, &log, size).await;
            assert_eq!(
                snapshot(&mut conn, &runs).await,
                projected,
                "replayed in batches of {size}"
            );
            snapshots.push((size, projected));
        }
        let (_, whole) = &snapshots[0];
        for (size, snapshot) in &snapshots[1..] {
            assert_eq!(snapshot, whole, "batches of {size}");
        }

        let tasks = whole[0].as_array().unwrap();
        let task = |step: &str, run: ExecutionId| {
            tasks
                .iter()
                .find(|t| t["step_id"] == step && t["execution_id"] == json!(run))
                .unwrap()
        };
        let at = |i: usize| Some(log[i].content.as_ref().unwrap().meta.time);
        let time = |v: &Value| {
            v.as_str()
                .map(|t| DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc))
        };
        let design = task("design", runs[0]);
        assert_eq!(time(&design["handed_out_at"]), at(2));
        assert_eq!(
            time(&design["completed_at"]),
            at(7),
            "completed by its second attempt, not the late report of its first"
        );
        assert_eq!(design["escalated_at"], Value::Null);
        let review = task("review", runs[0]);
        assert_eq!(review["completed_at"], Value::Null);
        assert_eq!(
            time(&review["escalated_at"]),
            at(11),
            "its first escalation"
        );
        assert_eq!(review["agent_id"], json!(f.agent.id));
        assert_eq!(task("design", runs[1])["completed_at"], Value::Null);
        assert_eq!(whole[1].as_array().unwrap().len(), 6);
        // Started at message 1, ended at message 13: one second apart each.
        assert_eq!(whole[2], 12);
        assert_eq!(whole[3], 2, "a cancelled run took time too");
    }
}

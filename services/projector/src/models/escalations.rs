//! `escalations`: one row per step escalation a person resolves (rung `person`, or an approval
//! step), for `GET /v1/escalations`. A row is `open` until a person resolves it (`resolved`,
//! with their action) or its execution ends first (`closed`, saying how it ended). A re-plan
//! closes its execution's step escalations too: it replaces every step not done, so nothing
//! waits on them any more (the run's own escalation stays open).
//!
//! Only the first resolution of an escalation counts, and nothing changes a row once it is no
//! longer open: the batch's fold and the SQL follow the same rule, so a batch gives what
//! applying its events one at a time would.

use std::collections::{HashMap, HashSet};

use cadre_proto::events::{
    EscalationKind, EscalationResolved, ExecutionEscalated, ExecutionReplanned, StepEscalated,
};
use cadre_proto::{EscalationId, ExecutionId};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use super::columns;
use super::executions::Outcome;
use crate::plan::Origin;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EscalationRow {
    pub id: Uuid,
    pub tenant_id: String,
    pub execution_id: Uuid,
    pub workflow_id: Uuid,
    pub kind: EscalationKind,
    pub step_id: Option<String>,
    pub step_name: Option<String>,
    pub attempt: i32,
    pub approval: bool,
    pub reason: String,
    pub context: Value,
    pub created_at: DateTime<Utc>,
    /// `None` while open.
    pub settled: Option<Settled>,
}

/// How an escalation stopped being open.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Settled {
    Resolved(Resolution),
    Closed(Closing),
}

/// A person's resolution.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Resolution {
    /// `retry`, `reassign`, `skip`, `provideOutput`, `abort`, `approve` or `reject`.
    pub action: &'static str,
    /// The whole resolution as on the wire (`{"action": "reassign", "agentId": ...}`).
    pub resolution: Value,
    pub resolved_by: Option<String>,
    pub comment: Option<String>,
    pub resolved_at: DateTime<Utc>,
}

/// The end of an execution, closing its escalations still open, or its re-plan, closing those
/// of its steps.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Closing {
    pub tenant_id: String,
    pub execution_id: Uuid,
    /// `execution completed`, `execution failed`, `execution cancelled` or `execution
    /// re-planned`.
    pub reason: String,
    /// Only the step escalations (a re-plan), not the run's own.
    pub steps_only: bool,
    pub closed_at: DateTime<Utc>,
}

impl EscalationRow {
    fn status(&self) -> &'static str {
        match self.settled {
            None => "open",
            Some(Settled::Resolved(_)) => "resolved",
            Some(Settled::Closed(_)) => "closed",
        }
    }
}

/// The batch's new escalations (with what became of them within the batch), the resolutions of
/// escalations stored earlier, and the executions re-planned or ended.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    pub rows: Vec<EscalationRow>,
    /// Escalation id -> the first resolution of a row stored by an earlier batch (or perhaps
    /// stored: a batch's row may record an escalation again).
    pub resolutions: Vec<(Uuid, Resolution)>,
    /// The first end of each execution that ended in the batch.
    pub closings: Vec<Closing>,
    /// The first re-plan of each execution re-planned in the batch (each closes what was
    /// stored before the batch: later rows are the batch's own, folded here).
    pub replans: Vec<Closing>,
    index: HashMap<Uuid, usize>,
    resolved: HashSet<Uuid>,
    ended: HashSet<Uuid>,
    replanned: HashSet<Uuid>,
}

impl Changes {
    /// Only an escalation a person decides has an id, and so a row: the other rungs hand the
    /// step to an agent.
    pub fn escalated(&mut self, origin: &Origin<'_>, e: &StepEscalated) {
        let Some(EscalationId(id)) = e.escalation_id else {
            return;
        };
        // The id is derived from the attempt: a decision recorded again names the same one,
        // and the first record stays (as the stored row does, see `write`).
        self.add(EscalationRow {
            id,
            tenant_id: origin.tenant.to_owned(),
            execution_id: e.execution_id.0,
            workflow_id: e.workflow_id.0,
            kind: if e.approval {
                EscalationKind::Approval
            } else {
                EscalationKind::Failure
            },
            step_id: Some(e.step_id.to_string()),
            step_name: Some(e.step_name.clone()),
            attempt: i32::try_from(e.attempt).unwrap_or(i32::MAX),
            approval: e.approval,
            reason: e.reason.clone(),
            context: json!(e.context),
            created_at: origin.at,
            settled: None,
        });
    }

    /// A run past `escalation.afterMinutes`: an escalation of the whole run.
    pub fn execution_escalated(&mut self, origin: &Origin<'_>, e: &ExecutionEscalated) {
        self.add(EscalationRow {
            id: e.escalation_id.0,
            tenant_id: origin.tenant.to_owned(),
            execution_id: e.execution_id.0,
            workflow_id: e.workflow_id.0,
            kind: EscalationKind::Execution,
            step_id: None,
            step_name: None,
            attempt: 0,
            approval: false,
            reason: e.reason.clone(),
            context: json!(e.context),
            created_at: origin.at,
            settled: None,
        });
    }

    fn add(&mut self, row: EscalationRow) {
        if self.index.contains_key(&row.id) {
            return;
        }
        self.index.insert(row.id, self.rows.len());
        self.rows.push(row);
    }

    pub fn resolved(&mut self, origin: &Origin<'_>, e: &EscalationResolved) {
        // After its execution ended, or (a step's) after a re-plan (defensive: the coordinator
        // refuses both) the escalation is closed, or was settled before. An escalation of the
        // new plan's steps is the batch's own row, settled in the fold below.
        let replaced = e.step_id.is_some()
            && self.replanned.contains(&e.execution_id.0)
            && !self.index.contains_key(&e.escalation_id.0);
        if self.ended.contains(&e.execution_id.0) || replaced {
            return;
        }
        let id = e.escalation_id.0;
        let resolution = Resolution {
            action: e.resolution.as_str(),
            resolution: json!(e.resolution),
            resolved_by: e.request.requested_by.clone(),
            comment: e.request.reason.clone(),
            resolved_at: origin.at,
        };
        match self.index.get(&id) {
            Some(&at) => {
                let row = &mut self.rows[at];
                if row.settled.is_none() {
                    row.settled = Some(Settled::Resolved(resolution.clone()));
                    // The batch's row may record again one stored before (its insert then
                    // changes nothing): the stored row, if still open, takes the resolution,
                    // unless a re-plan of the batch closed it first (defensive: the coordinator
                    // records no escalation of a step the re-plan replaced).
                    let execution = self.rows[at].execution_id;
                    if !self.replanned.contains(&execution) && self.resolved.insert(id) {
                        self.resolutions.push((id, resolution));
                    }
                }
            }
            None => {
                if self.resolved.insert(id) {
                    self.resolutions.push((id, resolution));
                }
            }
        }
    }

    /// Closes the execution's escalations still open: nobody can resolve them any more.
    pub fn execution_ended(&mut self, origin: &Origin<'_>, execution: ExecutionId, ended: Outcome) {
        if !self.ended.insert(execution.0) {
            return;
        }
        let closing = self.close_open(
            origin,
            execution,
            format!("execution {}", ended.status()),
            false,
        );
        self.closings.push(closing);
    }

    /// Closes the execution's step escalations still open: the re-plan replaced their steps.
    pub fn replanned(&mut self, origin: &Origin<'_>, e: &ExecutionReplanned) {
        // Defensive: the coordinator re-plans only a run that has not ended.
        if self.ended.contains(&e.execution_id.0) {
            return;
        }
        let closing = self.close_open(
            origin,
            e.execution_id,
            "execution re-planned".to_owned(),
            true,
        );
        if self.replanned.insert(e.execution_id.0) {
            self.replans.push(closing);
        }
    }

    /// Closes the batch's open rows of `execution` (its step escalations alone if
    /// `steps_only`), and returns the closing for the rows stored before.
    fn close_open(
        &mut self,
        origin: &Origin<'_>,
        execution: ExecutionId,
        reason: String,
        steps_only: bool,
    ) -> Closing {
        let closing = Closing {
            tenant_id: origin.tenant.to_owned(),
            execution_id: execution.0,
            reason,
            closed_at: origin.at,
            steps_only,
        };
        for row in &mut self.rows {
            if row.execution_id == execution.0
                && row.settled.is_none()
                && (row.step_id.is_some() || !steps_only)
            {
                row.settled = Some(Settled::Closed(closing.clone()));
            }
        }
        closing
    }

    /// Resolutions first, then re-plans, then ends: a resolution the fold kept for a stored row
    /// came before its escalation's re-plan or its execution's end, and a re-plan comes before
    /// the end. The
    /// batch's own rows come last, already folded, so no statement touches them. An escalation
    /// recorded again (the same id) keeps the first row.
    pub async fn write(self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        resolve(tx, self.resolutions).await?;
        close(tx, self.replans).await?;
        close(tx, self.closings).await?;
        insert(tx, self.rows).await
    }
}

async fn resolve(
    tx: &mut PgConnection,
    resolutions: Vec<(Uuid, Resolution)>,
) -> Result<(), sqlx::Error> {
    if resolutions.is_empty() {
        return Ok(());
    }
    columns!(for r in resolutions => id = r.0,
             action = r.1.action.to_owned(),
             resolution = r.1.resolution,
             resolved_by = r.1.resolved_by,
             comment = r.1.comment,
             resolved_at = r.1.resolved_at);
    sqlx::query!(
        "UPDATE escalations e SET status = 'resolved', action = r.action,
             resolution = r.resolution, resolved_by = r.resolved_by, comment = r.comment,
             resolved_at = r.resolved_at
         FROM UNNEST($1::uuid[], $2::text[], $3::jsonb[], $4::text[], $5::text[],
                     $6::timestamptz[])
              AS r(id, action, resolution, resolved_by, comment, resolved_at)
         WHERE e.id = r.id AND e.status = 'open'",
        &id,
        &action,
        &resolution,
        resolved_by as _,
        comment as _,
        &resolved_at,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn close(tx: &mut PgConnection, closings: Vec<Closing>) -> Result<(), sqlx::Error> {
    if closings.is_empty() {
        return Ok(());
    }
    columns!(for c in closings => tenant_id, execution_id, reason, closed_at, steps_only);
    sqlx::query!(
        "UPDATE escalations e SET status = 'closed', closed_reason = c.reason,
             closed_at = c.closed_at
         FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::timestamptz[], $5::bool[])
              AS c(tenant_id, execution_id, reason, closed_at, steps_only)
         WHERE e.tenant_id = c.tenant_id AND e.execution_id = c.execution_id
           AND e.status = 'open' AND (e.step_id IS NOT NULL OR NOT c.steps_only)",
        &tenant_id,
        &execution_id,
        &reason,
        &closed_at,
        &steps_only,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn insert(tx: &mut PgConnection, rows: Vec<EscalationRow>) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    // The settled columns: NULL where the row is open, or settled the other way.
    let (mut action, mut resolution, mut resolved_by, mut comment, mut resolved_at) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut closed_reason, mut closed_at) = (Vec::new(), Vec::new());
    let mut status = Vec::with_capacity(rows.len());
    for row in &rows {
        status.push(row.status().to_owned());
        let (resolved, closed) = match &row.settled {
            Some(Settled::Resolved(r)) => (Some(r), None),
            Some(Settled::Closed(c)) => (None, Some(c)),
            None => (None, None),
        };
        action.push(resolved.map(|r| r.action.to_owned()));
        resolution.push(resolved.map(|r| r.resolution.clone()));
        resolved_by.push(resolved.and_then(|r| r.resolved_by.clone()));
        comment.push(resolved.and_then(|r| r.comment.clone()));
        resolved_at.push(resolved.map(|r| r.resolved_at));
        closed_reason.push(closed.map(|c| c.reason.clone()));
        closed_at.push(closed.map(|c| c.closed_at));
    }
    columns!(for r in rows => id, tenant_id, execution_id, workflow_id, step_id, step_name,
             attempt, approval, reason, context, created_at,
             kind = kind_name(r.kind).to_owned());
    sqlx::query!(
        "INSERT INTO escalations (id, tenant_id, execution_id, workflow_id, step_id, step_name,
             attempt, approval, status, reason, context, created_at, resolved_at, action,
             resolution, resolved_by, comment, closed_at, closed_reason, kind)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::text[],
                              $6::text[], $7::int[], $8::bool[], $9::text[], $10::text[],
                              $11::jsonb[], $12::timestamptz[], $13::timestamptz[], $14::text[],
                              $15::jsonb[], $16::text[], $17::text[], $18::timestamptz[],
                              $19::text[], $20::text[])
         ON CONFLICT DO NOTHING",
        &id,
        &tenant_id,
        &execution_id,
        &workflow_id,
        step_id as _,
        step_name as _,
        &attempt,
        &approval,
        &status,
        &reason,
        &context,
        &created_at,
        resolved_at as _,
        action as _,
        resolution as _,
        resolved_by as _,
        comment as _,
        closed_at as _,
        closed_reason as _,
        &kind,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The `kind` column's value.
fn kind_name(kind: EscalationKind) -> &'static str {
    match kind {
        EscalationKind::Failure => "failure",
        EscalationKind::Approval => "approval",
        EscalationKind::Execution => "execution",
    }
}

pub(crate) async fn reset(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query!("TRUNCATE escalations")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got
mod tests {
    use cadre_proto::Event;
    use cadre_proto::events::Resolution;
    use cadre_proto::model::EscalationRung;
    use sqlx::PgConnection;

    use super::*;
    use crate::incoming::Incoming;
    use crate::testing::{Fixture, TestDb, lease, plan_all, project, rows_however_cut};

    fn time(message: &Incoming) -> DateTime<Utc> {
        message.content.as_ref().unwrap().meta.time
    }

    /// A time as `to_jsonb` writes it (`+00:00`, not `Z`), read back.
    fn stored_time(value: &Value) -> DateTime<Utc> {
        serde_json::from_value(value.clone()).unwrap()
    }

    async fn execution_status(conn: &mut PgConnection, id: ExecutionId) -> String {
        sqlx::query_scalar("SELECT status FROM workflow_executions WHERE id = $1")
            .bind(id.0)
            .fetch_one(conn)
            .await
            .unwrap()
    }

    async fn escalation(conn: &mut PgConnection, id: EscalationId) -> Value {
        sqlx::query_scalar("SELECT to_jsonb(e) FROM escalations e WHERE id = $1")
            .bind(id.0)
            .fetch_one(conn)
            .await
            .unwrap()
    }

    #[test]
    fn only_an_escalation_a_person_decides_has_a_row() {
        let mut f = Fixture::with_steps(&["design", "review"]);
        let (design, review) = (f.on("design"), f.on("review"));
        let batch = f.messages([
            design.escalated(1, EscalationRung::Reassign),
            design.escalated(2, EscalationRung::Coordinator),
            design.escalated(3, EscalationRung::Person),
            review.approval_requested(1),
        ]);
        let plan = plan_all(&batch);
        let rows = &plan.escalations.rows;
        assert_eq!(rows.len(), 2, "{rows:?}");
        let row = &rows[0];
        assert_eq!(row.id, design.escalation(3).0);
        assert_eq!(row.step_id.as_deref(), Some("design"));
        assert_eq!(row.step_name.as_deref(), Some("Design"));
        assert_eq!(row.attempt, 3);
        assert!(!row.approval);
        assert_eq!(row.status(), "open");
        assert_eq!(row.reason, "retries spent: provider said 500");
        assert_eq!(
            row.context,
            json!({
                "failures": [{ "attempt": 3, "agentId": f.agent.id, "error": "provider said 500" }],
                "tried": [],
                "outputs": { "research": "Researched" },
            })
        );
        assert_eq!(row.created_at, time(&batch[2]));
        assert!(rows[1].approval);
    }

    #[tokio::test]
    async fn a_resolution_settles_an_escalation_once_and_an_end_closes_the_open_ones() {
        let db = TestDb::create().await;
        let mut lease = lease(&db).await;
        let mut conn = db.connect().await;
        let mut f = Fixture::with_steps(&["design", "review"]);
        let (design, review) = (f.on("design"), f.on("review"));
        let reassign_to = cadre_proto::AgentId::new();
        let log = f.messages([
            design.escalated(1, EscalationRung::Person),
            review.escalated(1, EscalationRung::Person),
            design.resolved(
                1,
                Resolution::Reassign {
                    agent_id: reassign_to,
                },
            ),
            // Defensive: a second resolution of the same escalation changes nothing.
            design.resolved(1, Resolution::Abort),
            design.cancelled(Some("ops"), None),
            // Nor does one after the execution ended.
            review.resolved(1, Resolution::Skip),
        ]);
        for (i, message) in log.iter().enumerate() {
            project(&mut lease, std::slice::from_ref(message), 1).await;
            let status = escalation(&mut conn, design.escalation(1)).await["status"].clone();
            let expected = if i < 2 { "open" } else { "resolved" };
            assert_eq!(status, expected, "after event {i}");
        }
        let resolved = escalation(&mut conn, design.escalation(1)).await;
        assert_eq!(resolved["action"], "reassign");
        assert_eq!(
            resolved["resolution"],
            json!({ "action": "reassign", "agentId": reassign_to })
        );
        assert_eq!(resolved["resolved_by"], "ops");
        assert_eq!(resolved["comment"], "looked at it");
        assert_eq!(stored_time(&resolved["resolved_at"]), time(&log[2]));
        assert_eq!(resolved["closed_at"], Value::Null);

        let closed = escalation(&mut conn, review.escalation(1)).await;
        assert_eq!(closed["status"], "closed");
        assert_eq!(closed["closed_reason"], "execution cancelled");
        assert_eq!(stored_time(&closed["closed_at"]), time(&log[4]));
        assert_eq!(closed["action"], Value::Null);
        assert_eq!(closed["resolved_at"], Value::Null);
    }

    #[tokio::test]
    async fn a_run_escalated_for_its_time_waits_escalated_until_a_person_lets_it_continue() {
        let db = TestDb::create().await;
        let mut lease = lease(&db).await;
        let mut conn = db.connect().await;
        let mut f = Fixture::new();
        let id = EscalationId::of_execution(f.execution);
        let escalated = Event::ExecutionEscalated(Box::new(ExecutionEscalated {
            execution_id: f.execution,
            workflow_id: f.workflow,
            escalation_id: id,
            after_minutes: 60.0,
            reason: "over an hour".into(),
            context: cadre_proto::events::EscalationContext::default(),
        }));
        let resolved = Event::EscalationResolved(Box::new(EscalationResolved {
            execution_id: f.execution,
            workflow_id: f.workflow,
            step_id: None,
            step_name: None,
            attempt: 0,
            escalation_id: id,
            resolution: Resolution::Continue,
            request: cadre_proto::events::Request {
                requested_by: Some("ops".into()),
                reason: None,
            },
        }));
        let log = f.messages([f.started(1), escalated, resolved]);
        project(&mut lease, &log[..2], 2).await;
        assert_eq!(execution_status(&mut conn, f.execution).await, "escalated");
        let row = escalation(&mut conn, id).await;
        assert_eq!(
            (&row["kind"], &row["step_id"], &row["status"]),
            (&json!("execution"), &Value::Null, &json!("open"))
        );
        project(&mut lease, &log[2..], 1).await;
        assert_eq!(execution_status(&mut conn, f.execution).await, "running");
        let row = escalation(&mut conn, id).await;
        assert_eq!(
            (&row["status"], &row["action"]),
            (&json!("resolved"), &json!("continue"))
        );
    }

    /// Every order of settling, within a batch and across batches, and a replay from the start
    /// (`rebuild`), give the same rows.
    #[tokio::test]
    async fn escalations_are_the_same_however_the_log_is_cut_and_when_replayed() {
        let mut f = Fixture::with_steps(&["design", "review", "test"]);
        let (design, review, test) = (f.on("design"), f.on("review"), f.on("test"));
        let mut log = f.messages([
            design.escalated(1, EscalationRung::Person),
            review.escalated(1, EscalationRung::Person),
            design.resolved(1, Resolution::Retry),
            design.escalated(2, EscalationRung::Person),
            test.approval_requested(1),
            test.resolved(1, Resolution::Approve),
            design.resolved(2, Resolution::Skip),
            review.resolved(1, Resolution::Abort),
            design.resolved(2, Resolution::Retry),
            review.aborted(1),
            review.resolved(1, Resolution::Skip),
        ]);
        let first = f.execution;
        f.execution = cadre_proto::ExecutionId::new();
        let second = f.on("design");
        log.extend(f.messages([
            second.escalated(1, EscalationRung::Person),
            second.completed(),
            second.resolved(1, Resolution::Retry),
            second.escalated(2, EscalationRung::Person),
        ]));
        // A re-plan replaces the steps not done: their escalations close, and the run's own
        // and those of the new plan's steps stay open.
        f.execution = cadre_proto::ExecutionId::new();
        let third = (f.on("design"), f.on("review"));
        let run_escalated = Event::ExecutionEscalated(Box::new(ExecutionEscalated {
            execution_id: f.execution,
            workflow_id: f.workflow,
            escalation_id: EscalationId::of_execution(f.execution),
            after_minutes: 60.0,
            reason: "over an hour".into(),
            context: cadre_proto::events::EscalationContext::default(),
        }));
        let run_resolved = Event::EscalationResolved(Box::new(EscalationResolved {
            execution_id: f.execution,
            workflow_id: f.workflow,
            step_id: None,
            step_name: None,
            attempt: 0,
            escalation_id: EscalationId::of_execution(f.execution),
            resolution: Resolution::Continue,
            request: cadre_proto::events::Request::default(),
        }));
        log.extend(f.messages([
            third.0.escalated(1, EscalationRung::Person),
            third.1.approval_requested(1),
            run_escalated,
            third.0.replanned(),
            // Defensive (the coordinator refuses it): a replaced step's escalation resolved.
            third.1.resolved(1, Resolution::Approve),
            third.0.escalated(2, EscalationRung::Person),
            third.0.replanned(),
            run_resolved,
            third.0.escalated(3, EscalationRung::Person),
            third.0.failed(),
            // Defensive: a re-plan after the end.
            third.0.replanned(),
        ]));
        let whole = &rows_however_cut(&log, &[log.len(), 1, 2, 3, 5], "escalations").await;

        let by_id = |id: EscalationId| crate::testing::row_with_id(whole, id);
        let status = |id: EscalationId| by_id(id)["status"].clone();
        assert_eq!(status(design.escalation(1)), "resolved");
        assert_eq!(by_id(design.escalation(2))["action"], "skip");
        assert_eq!(by_id(review.escalation(1))["action"], "abort");
        assert_eq!(by_id(test.escalation(1))["action"], "approve");
        assert_eq!(by_id(test.escalation(1))["approval"], true);
        assert_eq!(by_id(test.escalation(1))["execution_id"], json!(first));
        assert_eq!(status(second.escalation(1)), "closed");
        assert_eq!(
            by_id(second.escalation(1))["closed_reason"],
            "execution completed"
        );
        assert_eq!(
            status(second.escalation(2)),
            "open",
            "defensive: escalated after the end, nothing closes it"
        );
        for replaced in [third.0.escalation(1), third.1.escalation(1)] {
            assert_eq!(status(replaced), "closed");
            assert_eq!(by_id(replaced)["closed_reason"], "execution re-planned");
        }
        assert_eq!(
            by_id(third.0.escalation(2))["closed_reason"],
            "execution re-planned",
            "the first new plan's, replaced by the second"
        );
        assert_eq!(
            by_id(third.0.escalation(3))["closed_reason"],
            "execution failed",
            "the last plan's, open until the run ended"
        );
        assert_eq!(
            by_id(EscalationId::of_execution(f.execution))["action"],
            "continue",
            "the run's own, resolved after the re-plans"
        );
    }

    #[tokio::test]
    async fn an_escalation_recorded_again_then_resolved_is_resolved_however_cut() {
        let mut f = Fixture::new();
        let log = f.messages([
            f.started(1),
            f.escalated(1, EscalationRung::Person),
            // The same decision recorded again: its batch's row is one stored already.
            f.escalated(1, EscalationRung::Person),
            f.resolved(1, Resolution::Retry),
        ]);
        let rows = rows_however_cut(&log, &[log.len(), 1, 2], "escalations").await;
        assert_eq!(rows[0]["status"], "resolved", "{rows:#}");
    }
}

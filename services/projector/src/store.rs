//! Postgres: the lease that makes one projector the writer, and the thin code that writes a
//! [`Plan`] with one set-based statement per table.

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use serde_json::{Value, json};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::plan::{Incoming, Plan, plan};

/// The row of `projection_checkpoints` this projector owns.
const PROJECTION: &str = "read_models";

/// Key of the session advisory lock held by the one active projector ("cadrePRJ").
const LOCK_KEY: i64 = 0x6361_6472_6550_524a;

/// How often a standby asks for the lock.
const STANDBY_POLL: Duration = Duration::from_secs(1);

/// The `NOTIFY` channel on which each commit announces the new checkpoint.
const NOTIFY_CHANNEL: &str = "cadre_projection";

/// A Postgres session that holds the projector's advisory lock. Every write goes through this
/// session, so a committed batch proves the lock was still held: if the session dies, Postgres
/// releases the lock and our next write fails before another projector can be overwritten.
pub(crate) struct Lease {
    conn: PgConnection,
}

impl Lease {
    /// Waits until this process holds the lock; `None` if `shutdown` came first.
    pub async fn acquire(database_url: &str, shutdown: &CancellationToken) -> Option<Self> {
        let mut backoff = retry_backoff();
        let mut announced = false;
        loop {
            match Self::try_acquire(database_url).await {
                Ok(Some(lease)) => {
                    tracing::info!("holding the projector lock; this replica is active");
                    return Some(lease);
                }
                Ok(None) => {
                    if !announced {
                        tracing::info!("another projector holds the lock; waiting as standby");
                        announced = true;
                    }
                    backoff = retry_backoff();
                    if sleep_or_shutdown(STANDBY_POLL, shutdown).await {
                        return None;
                    }
                }
                Err(error) => {
                    let delay = backoff.next().unwrap_or(STANDBY_POLL);
                    tracing::warn!(%error, ?delay, "cannot reach Postgres to take the projector lock");
                    if sleep_or_shutdown(delay, shutdown).await {
                        return None;
                    }
                }
            }
        }
    }

    async fn try_acquire(database_url: &str) -> Result<Option<Self>, sqlx::Error> {
        let mut conn = PgConnectOptions::from_str(database_url)?
            .application_name("cadre-projector")
            .connect()
            .await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LOCK_KEY)
            .fetch_one(&mut conn)
            .await?;
        // A standby closes its session between polls: an idle connection per replica buys nothing.
        Ok(locked.then_some(Self { conn }))
    }

    /// The last stream sequence whose effects are committed.
    pub async fn checkpoint(&mut self) -> Result<u64, sqlx::Error> {
        let sequence: Option<i64> = sqlx::query_scalar(
            "SELECT stream_sequence FROM projection_checkpoints WHERE projection = $1",
        )
        .bind(PROJECTION)
        .fetch_optional(&mut self.conn)
        .await?;
        Ok(sequence.map_or(0, |s| u64::try_from(s).unwrap_or(0)))
    }

    /// Fails once the session (and with it the lock) is gone.
    pub async fn ping(&mut self) -> Result<(), sqlx::Error> {
        self.conn.ping().await
    }

    /// Applies a batch in one transaction: rows, rejections, checkpoint and notification commit
    /// together or not at all. Returns the plan it wrote.
    pub async fn project(&mut self, batch: &[Incoming]) -> Result<Plan, sqlx::Error> {
        let mut tx = self.conn.begin().await?;
        let fresh = register_events(&mut tx, batch).await?;
        let plan = plan(batch, &fresh);
        write(&mut tx, &plan).await?;
        tx.commit().await?;
        Ok(plan)
    }

    /// Empties every read model and moves the checkpoint back to the start of the log.
    pub async fn reset(&mut self) -> Result<(), sqlx::Error> {
        let mut tx = self.conn.begin().await?;
        sqlx::query(
            "TRUNCATE agents, collaboration_workflows, workflow_executions, agent_interactions, \
             collaboration_knowledge, projected_events, rejected_events",
        )
        .execute(&mut *tx)
        .await?;
        set_checkpoint(&mut tx, 0).await?;
        tx.commit().await
    }
}

pub(crate) fn retry_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Sleeps for `delay`; true if `shutdown` interrupted it.
pub(crate) async fn sleep_or_shutdown(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(delay) => false,
    }
}

/// Records the batch's event ids; returns those recorded for the first time. An id already
/// there belongs to an event applied before (a copy re-published beyond JetStream's duplicate
/// window) and must change nothing.
async fn register_events(
    tx: &mut PgConnection,
    batch: &[Incoming],
) -> Result<HashSet<Uuid>, sqlx::Error> {
    let (mut ids, mut tenants, mut sequences) = (Vec::new(), Vec::new(), Vec::new());
    for incoming in batch {
        if let Ok(envelope) = &incoming.content {
            ids.push(envelope.meta.id.0);
            tenants.push(envelope.meta.tenant.as_str());
            sequences.push(i64::try_from(incoming.sequence).unwrap_or(i64::MAX));
        }
    }
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    let fresh: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO projected_events (event_id, tenant_id, event_sequence)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::bigint[])
         ON CONFLICT (event_id) DO NOTHING
         RETURNING event_id",
    )
    .bind(ids)
    .bind(tenants)
    .bind(sequences)
    .fetch_all(&mut *tx)
    .await?;
    Ok(fresh.into_iter().collect())
}

async fn set_checkpoint(tx: &mut PgConnection, sequence: u64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO projection_checkpoints (projection, stream_sequence, updated_at)
         VALUES ($1, $2, now())
         ON CONFLICT (projection) DO UPDATE
         SET stream_sequence = excluded.stream_sequence, updated_at = excluded.updated_at",
    )
    .bind(PROJECTION)
    .bind(i64::try_from(sequence).unwrap_or(i64::MAX))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Writes `plan` inside the caller's transaction. Inserts come first so that patches of rows
/// created in the same batch find them. Inserts ignore rows that already exist: the event index
/// already keeps an event from being applied twice, and a clash between two different events
/// must not fail the batch on every retry.
async fn write(tx: &mut PgConnection, plan: &Plan) -> Result<(), sqlx::Error> {
    insert_agents(tx, plan).await?;
    insert_workflows(tx, plan).await?;
    insert_executions(tx, plan).await?;
    patch_executions(tx, plan).await?;
    patch_workflows(tx, plan).await?;
    insert_interactions(tx, plan).await?;
    insert_knowledge(tx, plan).await?;
    insert_rejections(tx, plan).await?;
    set_checkpoint(tx, plan.last_sequence).await?;
    // Delivered on commit: workers waiting for a knowledge watermark wake up then.
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(NOTIFY_CHANNEL)
        .bind(plan.last_sequence.to_string())
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The `Vec` of one field over `rows`, ready to bind as a Postgres array.
macro_rules! column {
    ($rows:expr, |$row:ident| $value:expr) => {
        $rows.iter().map(|$row| $value).collect::<Vec<_>>()
    };
}

async fn insert_agents(tx: &mut PgConnection, plan: &Plan) -> Result<(), sqlx::Error> {
    let rows = &plan.agents;
    if rows.is_empty() {
        return Ok(());
    }
    // A repeated registration updates the profile and keeps the first creation time.
    sqlx::query(
        "INSERT INTO agents (id, tenant_id, name, role, backstory, skills, provider, model,
                             model_parameters, created_at, updated_at)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                              $6::jsonb[], $7::text[], $8::text[], $9::jsonb[],
                              $10::timestamptz[], $11::timestamptz[])
         ON CONFLICT (id) DO UPDATE SET
             name = excluded.name, role = excluded.role, backstory = excluded.backstory,
             skills = excluded.skills, provider = excluded.provider, model = excluded.model,
             model_parameters = excluded.model_parameters, updated_at = excluded.updated_at",
    )
    .bind(column!(rows, |r| r.id))
    .bind(column!(rows, |r| r.tenant_id.as_str()))
    .bind(column!(rows, |r| r.name.as_str()))
    .bind(column!(rows, |r| r.role.as_str()))
    .bind(column!(rows, |r| r.backstory.as_str()))
    .bind(column!(rows, |r| &r.skills))
    .bind(column!(rows, |r| r.provider.as_str()))
    .bind(column!(rows, |r| r.model.as_str()))
    .bind(column!(rows, |r| &r.model_parameters))
    .bind(column!(rows, |r| r.created_at))
    .bind(column!(rows, |r| r.updated_at))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn insert_workflows(tx: &mut PgConnection, plan: &Plan) -> Result<(), sqlx::Error> {
    let rows = &plan.workflows;
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO collaboration_workflows (id, tenant_id, name, description, workflow_type,
             configuration, participating_agents, coordinator_agent_id, status, total_steps,
             created_at, updated_at)
         SELECT id, tenant_id, name, description, workflow_type, configuration,
                participating_agents, coordinator_agent_id, 'draft', total_steps, created_at,
                created_at
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[],
                     $7::jsonb[], $8::uuid[], $9::int[], $10::timestamptz[])
              AS w(id, tenant_id, name, description, workflow_type, configuration,
                   participating_agents, coordinator_agent_id, total_steps, created_at)
         ON CONFLICT DO NOTHING",
    )
    .bind(column!(rows, |r| r.id))
    .bind(column!(rows, |r| r.tenant_id.as_str()))
    .bind(column!(rows, |r| r.name.as_str()))
    .bind(column!(rows, |r| r.description.as_str()))
    .bind(column!(rows, |r| r.workflow_type.as_str()))
    .bind(column!(rows, |r| &r.configuration))
    .bind(column!(rows, |r| &r.participating_agents))
    .bind(column!(rows, |r| r.coordinator_agent_id))
    .bind(column!(rows, |r| r.total_steps))
    .bind(column!(rows, |r| r.created_at))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn insert_executions(tx: &mut PgConnection, plan: &Plan) -> Result<(), sqlx::Error> {
    let rows = &plan.executions;
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO workflow_executions (id, tenant_id, workflow_id, execution_number,
             trigger_reason, triggered_by, status, started_at, updated_at)
         SELECT id, tenant_id, workflow_id, execution_number, trigger_reason, triggered_by,
                'running', started_at, started_at
         FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::int[], $5::text[], $6::text[],
                     $7::timestamptz[])
              AS e(id, tenant_id, workflow_id, execution_number, trigger_reason, triggered_by,
                   started_at)
         ON CONFLICT DO NOTHING",
    )
    .bind(column!(rows, |r| r.id))
    .bind(column!(rows, |r| r.tenant_id.as_str()))
    .bind(column!(rows, |r| r.workflow_id))
    .bind(column!(rows, |r| r.execution_number))
    .bind(column!(rows, |r| r.trigger_reason.as_str()))
    .bind(column!(rows, |r| r.triggered_by.as_deref()))
    .bind(column!(rows, |r| r.started_at))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// One statement for every execution the batch touched. Step entries merge with the stored ones
/// by the rule of `plan::merge_step` (later attempt replaces, earlier is ignored, same attempt
/// overwrites the named fields unless it ended). The status moves by the batch's
/// `ExecutionStatus` from the stored one, and the batch's ending applies only if that ends the
/// execution now. `active_steps` lists the steps now scheduled or running, the stored ones first
/// (scheduled earlier), then those this batch scheduled, then any other (defensive: a step that
/// started without being scheduled); `current_step_id` is the last of them and `active_agents`
/// the agents of the running ones. Both are empty once the execution ended.
async fn patch_executions(tx: &mut PgConnection, plan: &Plan) -> Result<(), sqlx::Error> {
    let rows = &plan.execution_patches;
    if rows.is_empty() {
        return Ok(());
    }
    let steps = column!(rows, |r| Value::Object(
        r.steps
            .iter()
            .map(|(step, entry)| (step.clone(), Value::Object(entry.clone())))
            .collect()
    ));
    sqlx::query(
        "WITH patch AS (
             SELECT * FROM UNNEST($1::uuid[], $2::jsonb[], $3::jsonb[], $4::jsonb[], $5::text[],
                                  $6::text[], $7::text[], $8::jsonb[], $9::jsonb[], $10::jsonb[],
                                  $11::timestamptz[], $12::timestamptz[])
                  AS p(id, steps, assignments, scheduled, if_running, if_paused, error_message,
                       failure_cause, final_output, context, completed_at, updated_at)
         ), merged AS (
             SELECT p.*, e.active_steps AS was_active,
                 CASE e.status WHEN 'running' THEN p.if_running
                               WHEN 'paused' THEN p.if_paused
                               ELSE e.status END AS status,
                 e.status IN ('running', 'paused') AND p.completed_at IS NOT NULL AS ends,
                 e.step_results || coalesce((
                     SELECT jsonb_object_agg(s.key, CASE
                         WHEN coalesce((e.step_results -> s.key ->> 'attempt')::bigint, 0)
                              > (s.value ->> 'attempt')::bigint THEN e.step_results -> s.key
                         WHEN coalesce((e.step_results -> s.key ->> 'attempt')::bigint, 0)
                              < (s.value ->> 'attempt')::bigint THEN s.value
                         WHEN e.step_results -> s.key ->> 'status'
                              IN ('completed', 'failed', 'timed_out') THEN e.step_results -> s.key
                         ELSE coalesce(e.step_results -> s.key, '{}'::jsonb) || s.value
                     END)
                     FROM jsonb_each(p.steps) AS s), '{}'::jsonb) AS step_results
             FROM patch p JOIN workflow_executions e ON e.id = p.id
         ), derived AS (
             SELECT m.*,
                 CASE WHEN m.status NOT IN ('running', 'paused') THEN '[]'::jsonb
                 ELSE (SELECT coalesce(jsonb_agg(a.step ORDER BY a.rank, a.position, a.step),
                                       '[]'::jsonb)
                       FROM (SELECT w.step, 0 AS rank, w.position
                             FROM jsonb_array_elements_text(m.was_active)
                                  WITH ORDINALITY AS w(step, position)
                             WHERE NOT m.scheduled ? w.step
                             UNION ALL
                             SELECT n.step, 1, n.position
                             FROM jsonb_array_elements_text(m.scheduled)
                                  WITH ORDINALITY AS n(step, position)
                             UNION ALL
                             SELECT k.step, 2, 0
                             FROM jsonb_object_keys(m.step_results) AS k(step)
                             WHERE NOT m.was_active ? k.step AND NOT m.scheduled ? k.step
                            ) AS a
                       WHERE m.step_results -> a.step ->> 'status' IN ('scheduled', 'running'))
                 END AS active_steps
             FROM merged m
         )
         UPDATE workflow_executions e SET
             step_results = d.step_results,
             active_steps = d.active_steps,
             current_step_id = d.active_steps ->> -1,
             active_agents = CASE WHEN d.status NOT IN ('running', 'paused') THEN '[]'::jsonb
                 ELSE (SELECT coalesce(jsonb_agg(DISTINCT r.value -> 'agentId'), '[]'::jsonb)
                       FROM jsonb_each(d.step_results) AS r
                       WHERE r.value ->> 'status' = 'running') END,
             agent_assignments = e.agent_assignments || d.assignments,
             status = d.status,
             error_message = CASE WHEN d.ends THEN d.error_message ELSE e.error_message END,
             failure_cause = CASE WHEN d.ends THEN d.failure_cause ELSE e.failure_cause END,
             final_output = CASE WHEN d.ends THEN d.final_output ELSE e.final_output END,
             execution_context = CASE WHEN d.ends THEN e.execution_context || d.context
                                      ELSE e.execution_context END,
             completed_at = CASE WHEN d.ends THEN d.completed_at ELSE e.completed_at END,
             updated_at = d.updated_at
         FROM derived d
         WHERE e.id = d.id",
    )
    .bind(column!(rows, |r| r.execution_id))
    .bind(steps)
    .bind(column!(rows, |r| Value::Object(r.assignments.clone())))
    .bind(column!(rows, |r| json!(r.scheduled)))
    .bind(column!(rows, |r| r.status.if_running))
    .bind(column!(rows, |r| r.status.if_paused))
    .bind(column!(rows, |r| r
        .ending
        .as_ref()
        .and_then(|e| e.error_message.as_deref())))
    .bind(column!(rows, |r| r
        .ending
        .as_ref()
        .and_then(|e| e.failure_cause.as_ref())))
    .bind(column!(rows, |r| r
        .ending
        .as_ref()
        .and_then(|e| e.final_output.as_ref())))
    .bind(column!(rows, |r| Value::Object(
        r.ending
            .as_ref()
            .map(|e| e.context.clone())
            .unwrap_or_default()
    )))
    .bind(column!(rows, |r| r.ending.as_ref().map(|e| e.completed_at)))
    .bind(column!(rows, |r| r.updated_at))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The workflow's status moves by the batch's `WorkflowStatus` from the stored one.
async fn patch_workflows(tx: &mut PgConnection, plan: &Plan) -> Result<(), sqlx::Error> {
    let rows = &plan.workflow_patches;
    if rows.is_empty() {
        return Ok(());
    }
    // In SET, `w.started_at` is the stored value: the start of a run begun in an earlier batch.
    sqlx::query(
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
    )
    .bind(column!(rows, |r| r.workflow_id))
    .bind(column!(rows, |r| r.status.if_paused))
    .bind(column!(rows, |r| r.status.otherwise))
    .bind(column!(rows, |r| r.started_at))
    .bind(column!(rows, |r| r.execution_count))
    .bind(column!(rows, |r| r.completed_at))
    .bind(column!(rows, |r| r.duration.and_then(|d| d.started_at)))
    .bind(column!(rows, |r| r.duration.map(|d| d.completed_at)))
    .bind(column!(rows, |r| r.updated_at))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn insert_interactions(tx: &mut PgConnection, plan: &Plan) -> Result<(), sqlx::Error> {
    let rows = &plan.interactions;
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO agent_interactions (id, tenant_id, workflow_execution_id, from_agent_id,
             to_agent_id, interaction_type, message, context_data, related_step_id,
             requires_response, created_at, event_sequence)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::uuid[],
                              $6::text[], $7::text[], $8::jsonb[], $9::text[], $10::bool[],
                              $11::timestamptz[], $12::bigint[])
         ON CONFLICT DO NOTHING",
    )
    .bind(column!(rows, |r| r.id))
    .bind(column!(rows, |r| r.tenant_id.as_str()))
    .bind(column!(rows, |r| r.workflow_execution_id))
    .bind(column!(rows, |r| r.from_agent_id))
    .bind(column!(rows, |r| r.to_agent_id))
    .bind(column!(rows, |r| r.interaction_type))
    .bind(column!(rows, |r| r.message.as_str()))
    .bind(column!(rows, |r| &r.context_data))
    .bind(column!(rows, |r| r.related_step_id.as_deref()))
    .bind(column!(rows, |r| r.requires_response))
    .bind(column!(rows, |r| r.created_at))
    .bind(column!(rows, |r| r.event_sequence))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn insert_knowledge(tx: &mut PgConnection, plan: &Plan) -> Result<(), sqlx::Error> {
    let rows = &plan.knowledge;
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO collaboration_knowledge (id, tenant_id, workflow_id, execution_id, step_id,
             title, content, knowledge_type, created_by_agent_id, relevance_score, tags,
             created_at, updated_at, event_sequence)
         SELECT id, tenant_id, workflow_id, execution_id, step_id, title, content,
                knowledge_type, created_by_agent_id, relevance_score, tags, created_at,
                created_at, event_sequence
         FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::text[], $6::text[],
                     $7::text[], $8::text[], $9::uuid[], $10::float8[], $11::jsonb[],
                     $12::timestamptz[], $13::bigint[])
              AS k(id, tenant_id, workflow_id, execution_id, step_id, title, content,
                   knowledge_type, created_by_agent_id, relevance_score, tags, created_at,
                   event_sequence)
         ON CONFLICT DO NOTHING",
    )
    .bind(column!(rows, |r| r.id))
    .bind(column!(rows, |r| r.tenant_id.as_str()))
    .bind(column!(rows, |r| r.workflow_id))
    .bind(column!(rows, |r| r.execution_id))
    .bind(column!(rows, |r| r.step_id.as_str()))
    .bind(column!(rows, |r| r.title.as_str()))
    .bind(column!(rows, |r| r.content.as_str()))
    .bind(column!(rows, |r| r.knowledge_type))
    .bind(column!(rows, |r| r.created_by_agent_id))
    .bind(column!(rows, |r| r.relevance_score))
    .bind(column!(rows, |r| &r.tags))
    .bind(column!(rows, |r| r.created_at))
    .bind(column!(rows, |r| r.event_sequence))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn insert_rejections(tx: &mut PgConnection, plan: &Plan) -> Result<(), sqlx::Error> {
    let rows = &plan.rejections;
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO rejected_events (stream_sequence, subject, reason, payload, rejected_at)
         SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::bytea[],
                              $5::timestamptz[])
         ON CONFLICT (stream_sequence) DO NOTHING",
    )
    .bind(column!(rows, |r| r.stream_sequence))
    .bind(column!(rows, |r| r.subject.as_str()))
    .bind(column!(rows, |r| r.reason.as_str()))
    .bind(column!(rows, |r| r.payload.as_slice()))
    .bind(column!(rows, |r| r.rejected_at))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got
mod tests {
    use cadre_proto::{Event, ExecutionId};
    use serde_json::Value;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::testing::{Fixture, TestDb};

    async fn lease(db: &TestDb) -> Lease {
        Lease::acquire(&db.url, &CancellationToken::new())
            .await
            .unwrap()
    }

    /// Projects `messages` in batches of `size`.
    async fn project(lease: &mut Lease, messages: &[Incoming], size: usize) {
        for batch in messages.chunks(size) {
            lease.project(batch).await.unwrap();
        }
    }

    /// Every row of `table` as JSON, in a stable order.
    async fn rows(conn: &mut PgConnection, table: &str) -> Value {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY to_jsonb(t)::text), '[]') FROM {table} t"
        )))
        .fetch_one(conn)
        .await
        .unwrap()
    }

    async fn execution(conn: &mut PgConnection, id: ExecutionId) -> Value {
        sqlx::query_scalar("SELECT to_jsonb(e) FROM workflow_executions e WHERE id = $1")
            .bind(id.0)
            .fetch_one(conn)
            .await
            .unwrap()
    }

    async fn workflow_status(conn: &mut PgConnection, f: &Fixture) -> String {
        sqlx::query_scalar("SELECT status FROM collaboration_workflows WHERE id = $1")
            .bind(f.workflow.0)
            .fetch_one(conn)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn every_scheduled_or_running_step_is_listed_while_the_execution_runs() {
        let db = TestDb::create().await;
        let mut lease = lease(&db).await;
        let mut conn = db.connect().await;
        let mut f = Fixture::with_steps(&["design", "review", "test"]);
        let (design, review, test) = (f.on("design"), f.on("review"), f.on("test"));
        let mut step = async |events: Vec<Event>| {
            project(&mut lease, &f.messages(events), 1).await;
            let row = execution(&mut conn, f.execution).await;
            (
                row["active_steps"].clone(),
                row["current_step_id"].clone(),
                row["active_agents"].clone(),
            )
        };
        let agents = json!([design.agent.id]);

        let (active, current, working) = step(vec![
            design.created(),
            design.started(1),
            design.scheduled(1),
            review.scheduled(1),
            test.scheduled(1),
        ])
        .await;
        assert_eq!(active, json!(["design", "review", "test"]));
        assert_eq!(current, "test", "the most recently scheduled");
        assert_eq!(working, json!([]), "none has started");

        let (active, current, working) =
            step(vec![design.step_started(1), review.step_started(1)]).await;
        assert_eq!(active, json!(["design", "review", "test"]));
        assert_eq!(current, "test");
        assert_eq!(working, agents);

        let (active, current, _) = step(vec![review.step_completed(1)]).await;
        assert_eq!(active, json!(["design", "test"]));
        assert_eq!(current, "test");

        let (active, current, _) = step(vec![design.step_timed_out(1, 5)]).await;
        assert_eq!(active, json!(["test"]));
        assert_eq!(current, "test");

        let (active, current, working) = step(vec![design.scheduled(2)]).await;
        assert_eq!(active, json!(["test", "design"]));
        assert_eq!(current, "design", "the retry is the latest scheduled");
        assert_eq!(working, json!([]));

        let (active, current, _) = step(vec![test.step_started(1), test.step_failed(1)]).await;
        assert_eq!(active, json!(["design"]));
        assert_eq!(current, "design");

        // A step still scheduled when the execution ends is not active any more.
        let (active, current, working) = step(vec![test.failed()]).await;
        assert_eq!(active, json!([]));
        assert_eq!(current, Value::Null);
        assert_eq!(working, json!([]));
    }

    #[tokio::test]
    async fn a_batch_adds_the_steps_it_schedules_after_the_stored_ones() {
        let db = TestDb::create().await;
        let mut lease = lease(&db).await;
        let mut conn = db.connect().await;
        let mut f = Fixture::with_steps(&["design", "review", "test"]);
        let (design, review, test) = (f.on("design"), f.on("review"), f.on("test"));
        let first = f.messages([design.started(1), design.scheduled(1), review.scheduled(1)]);
        project(&mut lease, &first, 10).await;
        let second = f.messages([
            test.scheduled(1),
            review.step_failed(1),
            review.scheduled(2),
        ]);
        project(&mut lease, &second, 10).await;
        let row = execution(&mut conn, f.execution).await;
        assert_eq!(row["active_steps"], json!(["design", "test", "review"]));
        assert_eq!(row["current_step_id"], "review");
    }

    #[tokio::test]
    async fn a_report_after_a_timeout_changes_nothing_in_a_later_batch() {
        let db = TestDb::create().await;
        let mut lease = lease(&db).await;
        let mut conn = db.connect().await;
        let mut f = Fixture::new();
        let e = f.clone();
        let log = f.messages([
            e.started(1),
            e.scheduled(1),
            e.step_started(1),
            e.step_timed_out(1, 2),
            e.step_completed(1),
        ]);
        project(&mut lease, &log, 1).await;
        let row = execution(&mut conn, f.execution).await;
        let step = &row["step_results"]["design"];
        assert_eq!(step["status"], "timed_out");
        assert_eq!(step["error"], "timed out after 2 minute(s)");
        assert_eq!(
            step["startedAt"],
            json!(log[2].content.as_ref().unwrap().meta.time)
        );
        assert_eq!(
            step["completedAt"],
            json!(log[3].content.as_ref().unwrap().meta.time)
        );
        assert_eq!(step.get("summary"), None);
        assert_eq!(row["active_steps"], json!([]));
        assert_eq!(
            row["status"], "running",
            "the coordinator decides what comes next"
        );
    }

    /// A run through every kind of event, late and out-of-place ones included.
    fn eventful_log() -> (Fixture, Vec<ExecutionId>, Vec<Incoming>) {
        let mut f = Fixture::with_steps(&["design", "review", "test"]);
        let (design, review, test) = (f.on("design"), f.on("review"), f.on("test"));
        let mut log = f.messages([
            design.created(),
            design.started(1),
            design.scheduled(1),
            review.scheduled(1),
            test.scheduled(1),
            design.step_started(1),
            review.step_started(1),
            review.step_completed(1),
            design.step_timed_out(1, 5),
            test.step_started(1),
            design.scheduled(2),
            design.paused(),
            design.step_started(2),
            // The first attempt's worker reports after its timeout.
            design.step_completed(1),
            design.workflow_paused(),
            design.resumed(),
            design.step_completed(2),
            test.step_failed(1),
            test.failed(),
            // Defensive: nothing reopens an ended execution.
            design.resumed(),
            design.paused(),
            design.cancelled(Some("ops"), None),
        ]);
        let mut executions = vec![f.execution];
        // A run that ends while its workflow is paused leaves it paused.
        f.execution = ExecutionId::new();
        let second = f.on("design");
        log.extend(f.messages([
            second.started(2),
            second.scheduled(1),
            second.cancelled(None, Some("not needed")),
            second.workflow_resumed(),
        ]));
        executions.push(f.execution);
        f.execution = ExecutionId::new();
        let third = f.on("design");
        log.extend(f.messages([
            third.started(3),
            third.scheduled(1),
            third.paused(),
            third.cancelled(Some("ops"), Some("superseded")),
        ]));
        executions.push(f.execution);
        (f, executions, log)
    }

    #[tokio::test]
    async fn lifecycle_events_give_the_same_rows_however_the_log_is_cut() {
        let (f, executions, log) = eventful_log();
        let mut snapshots = Vec::new();
        for size in [log.len(), 1, 3, 7] {
            let db = TestDb::create().await;
            let mut lease = lease(&db).await;
            project(&mut lease, &log, size).await;
            let mut conn = db.connect().await;
            let mut snapshot = Vec::new();
            for table in [
                "collaboration_workflows",
                "workflow_executions",
                "agent_interactions",
            ] {
                snapshot.push(rows(&mut conn, table).await);
            }
            if size == log.len() {
                check_eventful_rows(&mut conn, &f, &executions).await;
            }
            snapshots.push((size, snapshot));
        }
        let (_, whole) = &snapshots[0];
        for (size, snapshot) in &snapshots[1..] {
            assert_eq!(snapshot, whole, "batches of {size}");
        }
    }

    async fn check_eventful_rows(conn: &mut PgConnection, f: &Fixture, executions: &[ExecutionId]) {
        let first = execution(conn, executions[0]).await;
        assert_eq!(first["status"], "failed");
        assert_eq!(
            first["failure_cause"],
            json!({ "kind": "stepFailed", "stepId": "test" })
        );
        assert_eq!(
            first["execution_context"],
            json!({}),
            "the late cancel is ignored"
        );
        assert_eq!(first["active_steps"], json!([]));
        assert_eq!(first["current_step_id"], Value::Null);
        let steps = &first["step_results"];
        assert_eq!(steps["design"]["status"], "completed");
        assert_eq!(steps["design"]["attempt"], 2);
        assert!(steps["design"]["startedAt"].is_string(), "{steps}");
        assert_eq!(steps["review"]["status"], "completed");
        assert_eq!(steps["test"]["status"], "failed");
        assert!(steps["test"]["startedAt"].is_string(), "{steps}");

        let second = execution(conn, executions[1]).await;
        assert_eq!(second["status"], "cancelled");
        assert_eq!(second["error_message"], "not needed");
        assert_eq!(
            second["execution_context"],
            json!({ "cancellation": { "reason": "not needed" } })
        );
        assert!(second["completed_at"].is_string());

        let third = execution(conn, executions[2]).await;
        assert_eq!(
            third["status"], "cancelled",
            "a paused execution can be cancelled"
        );
        assert_eq!(third["error_message"], "superseded");
        assert_eq!(
            third["execution_context"]["cancellation"]["requestedBy"],
            "ops"
        );
        assert_eq!(workflow_status(conn, f).await, "cancelled");
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

    #[tokio::test]
    async fn a_resume_never_reopens_an_ended_execution() {
        let db = TestDb::create().await;
        let mut lease = lease(&db).await;
        let mut conn = db.connect().await;
        let mut f = Fixture::new();
        let e = f.clone();
        for (events, status) in [
            (vec![e.started(1)], "running"),
            (vec![e.paused()], "paused"),
            (vec![e.paused()], "paused"),
            (vec![e.resumed()], "running"),
            (vec![e.completed()], "completed"),
            (vec![e.resumed()], "completed"),
            (vec![e.paused(), e.resumed()], "completed"),
            (vec![e.cancelled(Some("ops"), None)], "completed"),
        ] {
            project(&mut lease, &f.messages(events), 10).await;
            assert_eq!(execution(&mut conn, f.execution).await["status"], status);
        }
        let row = execution(&mut conn, f.execution).await;
        assert_eq!(row["error_message"], Value::Null);
        assert_eq!(row["execution_context"], json!({}));
    }
}

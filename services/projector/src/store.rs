//! Postgres: the lease that makes one projector the writer, and the thin code that writes a
//! [`Plan`] with one set-based statement per table.

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
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
/// overwrites the named fields); `active_agents` is derived from the steps now running.
async fn patch_executions(tx: &mut PgConnection, plan: &Plan) -> Result<(), sqlx::Error> {
    let rows = &plan.execution_patches;
    if rows.is_empty() {
        return Ok(());
    }
    let steps = column!(rows, |r| serde_json::Value::Object(
        r.steps
            .iter()
            .map(|(step, entry)| (step.clone(), serde_json::Value::Object(entry.clone())))
            .collect()
    ));
    sqlx::query(
        "WITH patch AS (
             SELECT * FROM UNNEST($1::uuid[], $2::jsonb[], $3::jsonb[], $4::bool[], $5::text[],
                                  $6::text[], $7::text[], $8::jsonb[], $9::timestamptz[],
                                  $10::timestamptz[])
                  AS p(id, steps, assignments, sets_current_step, current_step_id, status,
                       error_message, final_output, completed_at, updated_at)
         ), merged AS (
             SELECT p.*, e.step_results || coalesce((
                 SELECT jsonb_object_agg(s.key, CASE
                     WHEN coalesce((e.step_results -> s.key ->> 'attempt')::bigint, 0)
                          > (s.value ->> 'attempt')::bigint THEN e.step_results -> s.key
                     WHEN coalesce((e.step_results -> s.key ->> 'attempt')::bigint, 0)
                          < (s.value ->> 'attempt')::bigint THEN s.value
                     ELSE coalesce(e.step_results -> s.key, '{}'::jsonb) || s.value
                 END)
                 FROM jsonb_each(p.steps) AS s), '{}'::jsonb) AS step_results
             FROM patch p JOIN workflow_executions e ON e.id = p.id
         )
         UPDATE workflow_executions e SET
             step_results = m.step_results,
             active_agents = (
                 SELECT coalesce(jsonb_agg(DISTINCT r.value -> 'agentId'), '[]'::jsonb)
                 FROM jsonb_each(m.step_results) AS r
                 WHERE r.value ->> 'status' = 'running'),
             agent_assignments = e.agent_assignments || m.assignments,
             current_step_id = CASE WHEN m.sets_current_step THEN m.current_step_id
                                    ELSE e.current_step_id END,
             status = coalesce(m.status, e.status),
             error_message = coalesce(m.error_message, e.error_message),
             final_output = coalesce(m.final_output, e.final_output),
             completed_at = coalesce(m.completed_at, e.completed_at),
             updated_at = m.updated_at
         FROM merged m
         WHERE e.id = m.id",
    )
    .bind(column!(rows, |r| r.execution_id))
    .bind(steps)
    .bind(column!(rows, |r| serde_json::Value::Object(
        r.assignments.clone()
    )))
    .bind(column!(rows, |r| r.current_step_id.is_some()))
    .bind(column!(rows, |r| r.current_step_id.clone().flatten()))
    .bind(column!(rows, |r| r.status))
    .bind(column!(rows, |r| r.error_message.as_deref()))
    .bind(column!(rows, |r| r.final_output.as_ref()))
    .bind(column!(rows, |r| r.completed_at))
    .bind(column!(rows, |r| r.updated_at))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn patch_workflows(tx: &mut PgConnection, plan: &Plan) -> Result<(), sqlx::Error> {
    let rows = &plan.workflow_patches;
    if rows.is_empty() {
        return Ok(());
    }
    // In SET, `w.started_at` is the stored value: the start of a run begun in an earlier batch.
    sqlx::query(
        "UPDATE collaboration_workflows w SET
             status = coalesce(p.status, w.status),
             started_at = coalesce(p.started_at, w.started_at),
             execution_count = greatest(w.execution_count, coalesce(p.execution_count, 0)),
             completed_at = coalesce(p.completed_at, w.completed_at),
             actual_duration = CASE WHEN p.run_completed_at IS NULL THEN w.actual_duration
                 ELSE trunc(extract(epoch FROM
                     p.run_completed_at - coalesce(p.run_started_at, w.started_at)))::int END,
             updated_at = p.updated_at
         FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[], $4::int[], $5::timestamptz[],
                     $6::timestamptz[], $7::timestamptz[], $8::timestamptz[])
              AS p(id, status, started_at, execution_count, completed_at, run_started_at,
                   run_completed_at, updated_at)
         WHERE w.id = p.id",
    )
    .bind(column!(rows, |r| r.workflow_id))
    .bind(column!(rows, |r| r.status))
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

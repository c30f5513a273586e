//! The worker's read of the workflow's shared knowledge, from the projector's read models.
//!
//! A step must see the knowledge its dependencies shared. The coordinator stamps each
//! `StepScheduled` with a knowledge watermark (a stream sequence); the projector commits its
//! checkpoint with its rows and announces it with `NOTIFY cadre_projection`. The view follows that
//! checkpoint (with [`ProjectionWatermark`], shared with the coordinator) so a step can wait,
//! bounded, until the read models have caught up before asking.

use std::time::Duration;

use cadre_proto::{ExecutionId, StepId, TenantId, WorkflowId};
use cadre_runtime::projection::ProjectionWatermark;
use sqlx::PgPool;

use crate::prompt::{DependencyOutput, KnowledgeItem};

pub struct KnowledgeView {
    pool: PgPool,
    read_models: ProjectionWatermark,
}

impl KnowledgeView {
    /// Starts following the projection checkpoint in the background.
    pub fn start(pool: PgPool) -> Self {
        Self {
            read_models: ProjectionWatermark::start(pool.clone()),
            pool,
        }
    }

    /// The stream sequence the read models have been seen to cover.
    pub fn checkpoint(&self) -> u64 {
        self.read_models.checkpoint()
    }

    /// Waits until the read models cover `watermark`; false if `timeout` passed first. It
    /// waits through a Postgres outage: a step must not read knowledge older than its watermark
    /// just because Postgres came back a moment before the watcher noticed.
    pub async fn wait_until(&self, watermark: u64, timeout: Duration) -> bool {
        self.read_models.wait_until(watermark, timeout).await
    }

    /// The workflow's most relevant active knowledge, newest first among equals (the seed's
    /// `gatherRelevantKnowledge`).
    pub async fn relevant(
        &self,
        tenant: &TenantId,
        workflow: WorkflowId,
        limit: u32,
    ) -> Result<Vec<KnowledgeItem>, sqlx::Error> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT title, knowledge_type, content FROM collaboration_knowledge \
             WHERE tenant_id = $1 AND workflow_id = $2 AND is_active \
             ORDER BY relevance_score DESC, event_sequence DESC LIMIT $3",
        )
        .bind(tenant.as_str())
        .bind(workflow.0)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(title, knowledge_type, content)| KnowledgeItem {
                title,
                knowledge_type,
                content,
            })
            .collect())
    }

    /// The results of `steps` (a step's dependencies) in `execution`, in the order given, as
    /// the read models show them; a step not completed there (skipped, say) is left out.
    pub async fn dependency_outputs(
        &self,
        tenant: &TenantId,
        execution: ExecutionId,
        steps: &[StepId],
    ) -> Result<Vec<DependencyOutput>, sqlx::Error> {
        if steps.is_empty() {
            return Ok(vec![]);
        }
        let ids: Vec<&str> = steps.iter().map(StepId::as_str).collect();
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT r.key, coalesce(r.value ->> 'summary', ''), coalesce(r.value ->> 'output', '') \
             FROM workflow_executions e, jsonb_each(e.step_results) AS r \
             WHERE e.tenant_id = $1 AND e.id = $2 AND r.key = ANY($3) \
               AND r.value ->> 'status' = 'completed' \
             ORDER BY array_position($3, r.key)",
        )
        .bind(tenant.as_str())
        .bind(execution.0)
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(step_id, summary, output)| DependencyOutput {
                step_id,
                summary,
                output,
            })
            .collect())
    }
}

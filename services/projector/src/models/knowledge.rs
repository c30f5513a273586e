//! `collaboration_knowledge`: what agents shared with their workflow, for every later step of
//! any of its executions to read.

use cadre_proto::events::KnowledgeShared;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use super::columns;
use crate::plan::Origin;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct KnowledgeRow {
    pub id: Uuid,
    pub tenant_id: String,
    pub workflow_id: Uuid,
    pub execution_id: Uuid,
    pub step_id: String,
    pub title: String,
    pub content: String,
    pub knowledge_type: &'static str,
    pub created_by_agent_id: Uuid,
    pub relevance_score: f64,
    pub tags: Value,
    pub created_at: DateTime<Utc>,
    pub event_sequence: i64,
}

/// The batch's new knowledge, in stream order.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    pub rows: Vec<KnowledgeRow>,
}

impl Changes {
    pub fn shared(&mut self, origin: &Origin<'_>, e: &KnowledgeShared) {
        self.rows.push(KnowledgeRow {
            id: e.knowledge_id.0,
            tenant_id: origin.tenant.to_owned(),
            workflow_id: e.workflow_id.0,
            execution_id: e.execution_id.0,
            step_id: e.step_id.to_string(),
            title: e.title.clone(),
            content: e.content.clone(),
            knowledge_type: e.knowledge_type.as_str(),
            created_by_agent_id: e.created_by_agent_id.0,
            relevance_score: e.relevance_score,
            tags: json!(e.tags),
            created_at: origin.at,
            event_sequence: origin.sequence,
        });
    }

    /// Knowledge already stored under an id (two different events with one id) is kept: the
    /// event index already keeps an event from being applied twice, and such a clash must not
    /// fail the batch on every retry.
    pub async fn write(self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        let rows = self.rows;
        if rows.is_empty() {
            return Ok(());
        }
        columns!(for r in rows => id, tenant_id, workflow_id, execution_id, step_id, title,
                 content, created_by_agent_id, relevance_score, tags, created_at, event_sequence,
                 knowledge_type = r.knowledge_type.to_owned());
        sqlx::query!(
            "INSERT INTO collaboration_knowledge (id, tenant_id, workflow_id, execution_id,
                 step_id, title, content, knowledge_type, created_by_agent_id, relevance_score,
                 tags, created_at, updated_at, event_sequence)
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
            &id,
            &tenant_id,
            &workflow_id,
            &execution_id,
            &step_id,
            &title,
            &content,
            &knowledge_type,
            &created_by_agent_id,
            &relevance_score,
            &tags,
            &created_at,
            &event_sequence,
        )
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

pub(crate) async fn reset(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query!("TRUNCATE collaboration_knowledge")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

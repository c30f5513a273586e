//! `token_usage`: what LLM calls used and cost, one row per event that reports calls (a
//! `StepCompleted`; a `QuestionsAsked`, whose call ended in questions; a `QuestionAnswered`,
//! counted for the teammate who answered, under the asking step), for the read API to sum per
//! step, agent, execution and workflow.

use cadre_proto::events::{QuestionAnswered, QuestionsAsked, StepAttempt, StepCompleted};
use cadre_proto::model::TokenUsage;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::columns;
use crate::plan::Origin;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UsageRow {
    pub event_id: Uuid,
    pub tenant_id: String,
    pub workflow_id: Uuid,
    pub execution_id: Uuid,
    pub step_id: String,
    pub attempt: i32,
    pub agent_id: Uuid,
    pub provider: String,
    pub model: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
    pub cost_usd: Option<f64>,
    pub recorded_at: DateTime<Utc>,
}

#[derive(Debug, Default)]
pub(crate) struct Changes {
    pub rows: Vec<UsageRow>,
}

/// What one event says its LLM calls used.
struct Call<'a> {
    provider: &'a str,
    model: &'a str,
    tokens: &'a TokenUsage,
    cost_usd: Option<f64>,
}

impl Changes {
    pub fn completed(&mut self, origin: &Origin<'_>, e: &StepCompleted) {
        let call = Call {
            provider: &e.provider,
            model: &e.model,
            tokens: &e.result.tokens,
            cost_usd: e.cost_usd,
        };
        self.attempt(origin, &e.attempt, &call);
    }

    pub fn asked(&mut self, origin: &Origin<'_>, e: &QuestionsAsked) {
        let call = Call {
            provider: &e.provider,
            model: &e.model,
            tokens: &e.tokens,
            cost_usd: e.cost_usd,
        };
        self.attempt(origin, &e.attempt, &call);
    }

    pub fn answered(&mut self, origin: &Origin<'_>, e: &QuestionAnswered) {
        let call = Call {
            provider: &e.provider,
            model: &e.model,
            tokens: &e.tokens,
            cost_usd: e.cost_usd,
        };
        let answerer = StepAttempt {
            execution_id: e.execution_id,
            workflow_id: e.workflow_id,
            step_id: e.step_id.clone(),
            step_name: String::new(),
            number: e.attempt,
            agent_id: e.agent_id,
        };
        self.attempt(origin, &answerer, &call);
    }

    fn attempt(&mut self, origin: &Origin<'_>, a: &StepAttempt, call: &Call<'_>) {
        let tokens = call.tokens;
        self.rows.push(UsageRow {
            event_id: origin.event_id,
            tenant_id: origin.tenant.to_owned(),
            workflow_id: a.workflow_id.0,
            execution_id: a.execution_id.0,
            step_id: a.step_id.to_string(),
            attempt: i32::try_from(a.number).unwrap_or(i32::MAX),
            agent_id: a.agent_id.0,
            provider: call.provider.to_owned(),
            model: call.model.to_owned(),
            prompt_tokens: i64::from(tokens.prompt),
            completion_tokens: i64::from(tokens.completion),
            total_tokens: i64::from(tokens.total),
            cost_usd: call.cost_usd,
            recorded_at: origin.at,
        });
    }

    /// One row per event: a copy of an event is already kept out by the event index, and the
    /// key makes a clash harmless.
    pub async fn write(self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        let rows = self.rows;
        if rows.is_empty() {
            return Ok(());
        }
        columns!(for r in rows => event_id, tenant_id, workflow_id, execution_id, step_id,
                 attempt, agent_id, provider, model, prompt_tokens, completion_tokens,
                 total_tokens, cost_usd, recorded_at);
        sqlx::query!(
            "INSERT INTO token_usage (event_id, tenant_id, workflow_id, execution_id, step_id,
                 attempt, agent_id, provider, model, prompt_tokens, completion_tokens,
                 total_tokens, cost_usd, recorded_at)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::text[],
                                  $6::int4[], $7::uuid[], $8::text[], $9::text[], $10::int8[],
                                  $11::int8[], $12::int8[], $13::float8[], $14::timestamptz[])
             ON CONFLICT DO NOTHING",
            &event_id,
            &tenant_id,
            &workflow_id,
            &execution_id,
            &step_id,
            &attempt,
            &agent_id,
            &provider,
            &model,
            &prompt_tokens,
            &completion_tokens,
            &total_tokens,
            &cost_usd as _,
            &recorded_at,
        )
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

pub(crate) async fn reset(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query!("TRUNCATE token_usage")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

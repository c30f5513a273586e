//! `token_usage`: what LLM calls used and cost, one row per event that reports calls (a
//! `StepCompleted`; a `StepFailed` or `StepReviewed` whose model answered; a `QuestionsAsked`,
//! whose call ended in questions; a `QuestionAnswered`, counted for the teammate who answered,
//! under the asking step), for the read API to sum per step, agent, execution and workflow.

use cadre_proto::events::{CallUsage, QuestionAnswered, StepAttempt, StepCompleted};
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

impl Changes {
    pub fn completed(&mut self, origin: &Origin<'_>, e: &StepCompleted) {
        let call = CallUsage {
            provider: e.provider.clone(),
            model: e.model.clone(),
            tokens: e.result.tokens,
            cost_usd: e.cost_usd,
        };
        self.call(origin, &e.attempt, &call);
    }

    /// A failed attempt's or a review's calls, when the event reports them.
    pub fn attempt(&mut self, origin: &Origin<'_>, a: &StepAttempt, usage: Option<&CallUsage>) {
        if let Some(usage) = usage {
            self.call(origin, a, usage);
        }
    }

    /// A teammate's answer, counted for the teammate, under the asking step.
    pub fn answered(&mut self, origin: &Origin<'_>, e: &QuestionAnswered) {
        let answerer = StepAttempt {
            execution_id: e.execution_id,
            workflow_id: e.workflow_id,
            step_id: e.step_id.clone(),
            step_name: String::new(),
            number: e.attempt,
            agent_id: e.agent_id,
        };
        self.call(origin, &answerer, &e.usage);
    }

    fn call(&mut self, origin: &Origin<'_>, a: &StepAttempt, call: &CallUsage) {
        let tokens = &call.tokens;
        self.rows.push(UsageRow {
            event_id: origin.event_id,
            tenant_id: origin.tenant.to_owned(),
            workflow_id: a.workflow_id.0,
            execution_id: a.execution_id.0,
            step_id: a.step_id.to_string(),
            attempt: i32::try_from(a.number).unwrap_or(i32::MAX),
            agent_id: a.agent_id.0,
            provider: call.provider.clone(),
            model: call.model.clone(),
            prompt_tokens: i64::from(tokens.prompt),
            completion_tokens: i64::from(tokens.completion),
            total_tokens: i64::from(tokens.total),
            cost_usd: call.cost_usd,
            recorded_at: origin.at,
        });
    }

    /// One row per event: the key makes a copy of an event (written before the event index
    /// finds it, and rolled back) or a clash harmless.
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

#[cfg(test)]
mod tests {
    use cadre_proto::Event;
    use cadre_proto::events::StepFailed;
    use cadre_proto::model::TokenUsage;

    use super::*;
    use crate::testing::{Fixture, plan_all};

    #[test]
    fn a_failed_attempt_counts_what_its_calls_used_and_one_without_calls_nothing() {
        let mut f = Fixture::new();
        let usage = CallUsage {
            provider: "openai".to_owned(),
            model: "gpt-4o-mini".to_owned(),
            tokens: TokenUsage {
                prompt: 900,
                completion: 300,
                total: 1200,
            },
            cost_usd: Some(0.0042),
        };
        let unstructured = Event::StepFailed(StepFailed {
            attempt: f.attempt(1),
            retryable: true,
            error: "answered without the required structure twice".to_owned(),
            usage: Some(usage),
        });
        let batch = f.messages([unstructured, f.step_failed(2)]);
        let rows = plan_all(&batch).usage.rows;
        assert_eq!(rows.len(), 1, "the provider error cost nothing");
        assert_eq!(rows[0].attempt, 1);
        assert_eq!(rows[0].total_tokens, 1200);
        assert_eq!(rows[0].cost_usd, Some(0.0042));
        assert_eq!(rows[0].model, "gpt-4o-mini");
    }
}

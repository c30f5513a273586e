//! `agents`: one row per registered agent, its latest profile.

use std::collections::HashMap;

use cadre_proto::model::AgentProfile;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use super::columns;
use crate::plan::Origin;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AgentRow {
    pub id: Uuid,
    pub tenant_id: String,
    pub name: String,
    pub role: String,
    pub backstory: String,
    pub skills: Value,
    pub provider: String,
    pub model: String,
    pub model_parameters: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The batch's agents, one row per agent.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    pub rows: Vec<AgentRow>,
    index: HashMap<Uuid, usize>,
}

impl Changes {
    /// A registration of a known agent updates its profile; it keeps its first `created_at`.
    pub fn registered(&mut self, origin: &Origin<'_>, agent: &AgentProfile) {
        let row = AgentRow {
            id: agent.id.0,
            tenant_id: origin.tenant.to_owned(),
            name: agent.name.clone(),
            role: agent.role.clone(),
            backstory: agent.backstory.clone(),
            skills: json!(agent.skills),
            provider: agent.provider.clone(),
            model: agent.model.clone(),
            model_parameters: json!(agent.model_parameters),
            created_at: origin.at,
            updated_at: origin.at,
        };
        match self.index.get(&row.id) {
            Some(&index) => {
                let created_at = self.rows[index].created_at;
                self.rows[index] = AgentRow { created_at, ..row };
            }
            None => {
                self.index.insert(row.id, self.rows.len());
                self.rows.push(row);
            }
        }
    }

    pub async fn write(self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        let rows = self.rows;
        if rows.is_empty() {
            return Ok(());
        }
        columns!(for r in rows => id, tenant_id, name, role, backstory, skills, provider, model,
                 model_parameters, created_at, updated_at);
        // A repeated registration updates the profile and keeps the first creation time.
        sqlx::query!(
            "INSERT INTO agents (id, tenant_id, name, role, backstory, skills, provider, model,
                                 model_parameters, created_at, updated_at)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::jsonb[], $7::text[], $8::text[], $9::jsonb[],
                                  $10::timestamptz[], $11::timestamptz[])
             ON CONFLICT (id) DO UPDATE SET
                 name = excluded.name, role = excluded.role, backstory = excluded.backstory,
                 skills = excluded.skills, provider = excluded.provider, model = excluded.model,
                 model_parameters = excluded.model_parameters, updated_at = excluded.updated_at",
            &id,
            &tenant_id,
            &name,
            &role,
            &backstory,
            &skills,
            &provider,
            &model,
            &model_parameters,
            &created_at,
            &updated_at,
        )
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

pub(crate) async fn reset(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query!("TRUNCATE agents").execute(&mut *tx).await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got
mod tests {
    use cadre_proto::Event;
    use cadre_proto::events::AgentRegistered;

    use super::*;
    use crate::testing::{Fixture, plan_all};

    #[test]
    fn agent_registered_twice_keeps_first_creation_time() {
        let mut f = Fixture::new();
        let mut renamed = f.agent.clone();
        renamed.name = "Ada Lovelace".to_owned();
        let register = |agent: AgentProfile| Event::AgentRegistered(AgentRegistered { agent });
        let batch = vec![
            f.message(register(f.agent.clone())),
            f.message(register(renamed)),
        ];
        let plan = plan_all(&batch);
        let agents = &plan.agents.rows;
        assert_eq!(agents.len(), 1);
        assert_eq!(agents[0].name, "Ada Lovelace");
        assert_eq!(
            agents[0].created_at + chrono::Duration::seconds(1),
            agents[0].updated_at
        );
    }
}

//! `collaboration_knowledge`: what agents shared with their workflow, for every later step of
//! any of its executions to read; how often steps used it, which agents confirmed it, and what
//! replaced it.

use std::collections::BTreeMap;

use cadre_proto::events::{
    KnowledgeShared, KnowledgeSuperseded, KnowledgeValidated, StepCompleted,
};
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
    /// Its place among the rows of its event (see [`Origin::position`]).
    pub event_position: i16,
}

/// A key of the maps below: the tenant and the knowledge id, so an event of one tenant never
/// changes another tenant's rows.
type Key = (String, Uuid);

/// The batch's changes to knowledge, in stream order. Rows are inserted before the others are
/// applied, so an item shared and used in one batch is counted.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    pub rows: Vec<KnowledgeRow>,
    /// How many completed steps used each item.
    pub uses: BTreeMap<Key, i32>,
    /// The agents that confirmed each item, in stream order, each once.
    pub validations: BTreeMap<Key, Validation>,
    /// What replaced each item: the last supersession wins, as it would one batch at a time.
    pub supersessions: BTreeMap<Key, Supersession>,
}

/// The agents that confirmed an item, each with the time of its first confirmation: a later
/// one changes nothing, whichever batch it falls in.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Validation {
    pub agents: Vec<(Uuid, DateTime<Utc>)>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Supersession {
    pub superseded_by: Uuid,
    pub at: DateTime<Utc>,
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
            event_position: origin.position,
        });
    }

    pub fn used(&mut self, origin: &Origin<'_>, e: &StepCompleted) {
        for id in &e.knowledge_used {
            *self
                .uses
                .entry((origin.tenant.to_owned(), id.0))
                .or_default() += 1;
        }
    }

    pub fn validated(&mut self, origin: &Origin<'_>, e: &KnowledgeValidated) {
        let validation = self
            .validations
            .entry((origin.tenant.to_owned(), e.knowledge_id.0))
            .or_default();
        if !validation.agents.iter().any(|(a, _)| *a == e.agent_id.0) {
            validation.agents.push((e.agent_id.0, origin.at));
        }
    }

    pub fn superseded(&mut self, origin: &Origin<'_>, e: &KnowledgeSuperseded) {
        // An item cannot replace itself: it would vanish with nothing in its place.
        if e.knowledge_id == e.superseded_by {
            return;
        }
        // The last replacement wins; the time is the latest, as the statement's `greatest`
        // keeps it over the stored one (hosts' clocks may disagree with the log's order).
        let key = (origin.tenant.to_owned(), e.knowledge_id.0);
        let at = self
            .supersessions
            .get(&key)
            .map_or(origin.at, |earlier| earlier.at.max(origin.at));
        self.supersessions.insert(
            key,
            Supersession {
                superseded_by: e.superseded_by.0,
                at,
            },
        );
    }

    pub async fn write(self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        insert(self.rows, tx).await?;
        count_uses(self.uses, tx).await?;
        add_validations(self.validations, tx).await?;
        supersede(self.supersessions, tx).await
    }
}

/// Knowledge already stored under an id (two different events with one id) is kept: the
/// event index already keeps an event from being applied twice, and such a clash must not
/// fail the batch on every retry.
async fn insert(rows: Vec<KnowledgeRow>, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    columns!(for r in rows => id, tenant_id, workflow_id, execution_id, step_id, title,
                 content, created_by_agent_id, relevance_score, tags, created_at, event_sequence,
                 event_position, knowledge_type = r.knowledge_type.to_owned());
    sqlx::query!(
        "INSERT INTO collaboration_knowledge (id, tenant_id, workflow_id, execution_id,
                 step_id, title, content, knowledge_type, created_by_agent_id, relevance_score,
                 tags, created_at, updated_at, event_sequence, event_position)
             SELECT id, tenant_id, workflow_id, execution_id, step_id, title, content,
                    knowledge_type, created_by_agent_id, relevance_score, tags, created_at,
                    created_at, event_sequence, event_position
             FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::text[], $6::text[],
                         $7::text[], $8::text[], $9::uuid[], $10::float8[], $11::jsonb[],
                         $12::timestamptz[], $13::bigint[], $14::int2[])
                  AS k(id, tenant_id, workflow_id, execution_id, step_id, title, content,
                       knowledge_type, created_by_agent_id, relevance_score, tags, created_at,
                       event_sequence, event_position)
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
        &event_position,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Usage counts only ever add up: the event index applies each completion once.
async fn count_uses(uses: BTreeMap<Key, i32>, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    if uses.is_empty() {
        return Ok(());
    }
    let (keys, uses): (Vec<Key>, Vec<i32>) = uses.into_iter().unzip();
    let (tenant_id, id): (Vec<String>, Vec<Uuid>) = keys.into_iter().unzip();
    sqlx::query!(
        "UPDATE collaboration_knowledge k SET usage_count = k.usage_count + u.uses
         FROM UNNEST($1::text[], $2::uuid[], $3::int4[]) AS u(tenant_id, id, uses)
         WHERE k.id = u.id AND k.tenant_id = u.tenant_id",
        &tenant_id,
        &id,
        &uses,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Appends each agent not yet in the item's `validated_by_agents`: confirming twice counts once.
async fn add_validations(
    validations: BTreeMap<Key, Validation>,
    tx: &mut PgConnection,
) -> Result<(), sqlx::Error> {
    if validations.is_empty() {
        return Ok(());
    }
    let (mut tenant_id, mut id, mut agent, mut at) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((tenant, knowledge), validation) in validations {
        for (by, first) in validation.agents {
            tenant_id.push(tenant.clone());
            id.push(knowledge);
            agent.push(by);
            at.push(first);
        }
    }
    sqlx::query!(
        "UPDATE collaboration_knowledge k
         SET validated_by_agents = k.validated_by_agents || v.agents,
             updated_at = greatest(k.updated_at, v.at)
         FROM (SELECT x.tenant_id, x.id, jsonb_agg(to_jsonb(x.agent) ORDER BY x.ord) AS agents,
                      max(x.at) AS at
               FROM UNNEST($1::text[], $2::uuid[], $3::uuid[], $4::timestamptz[])
                    WITH ORDINALITY AS x(tenant_id, id, agent, at, ord)
               JOIN collaboration_knowledge c ON c.id = x.id AND c.tenant_id = x.tenant_id
               WHERE NOT c.validated_by_agents @> jsonb_build_array(x.agent)
               GROUP BY x.tenant_id, x.id) AS v
         WHERE k.id = v.id AND k.tenant_id = v.tenant_id",
        &tenant_id,
        &id,
        &agent,
        &at,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A superseded item stays for the record but is no longer offered to steps.
async fn supersede(
    supersessions: BTreeMap<Key, Supersession>,
    tx: &mut PgConnection,
) -> Result<(), sqlx::Error> {
    if supersessions.is_empty() {
        return Ok(());
    }
    let (mut tenant_id, mut id, mut superseded_by, mut at) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((tenant, knowledge), s) in supersessions {
        tenant_id.push(tenant);
        id.push(knowledge);
        superseded_by.push(s.superseded_by);
        at.push(s.at);
    }
    sqlx::query!(
        "UPDATE collaboration_knowledge k
         SET is_active = false, superseded_by = s.superseded_by,
             updated_at = greatest(k.updated_at, s.at)
         FROM UNNEST($1::text[], $2::uuid[], $3::uuid[], $4::timestamptz[])
              AS s(tenant_id, id, superseded_by, at)
         WHERE k.id = s.id AND k.tenant_id = s.tenant_id",
        &tenant_id,
        &id,
        &superseded_by,
        &at,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

pub(crate) async fn reset(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query!("TRUNCATE collaboration_knowledge")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got
mod tests {
    use cadre_proto::{AgentId, Event, KnowledgeId};
    use serde_json::{Value, json};
    use sqlx::PgConnection;

    use crate::testing::{Fixture, TestDb, lease, project, rows};

    fn id(event: &Event) -> KnowledgeId {
        match event {
            Event::KnowledgeShared(k) => k.knowledge_id,
            other => panic!("not knowledge: {other:?}"),
        }
    }

    async fn row(conn: &mut PgConnection, id: KnowledgeId) -> Value {
        sqlx::query_scalar(
            "SELECT jsonb_build_object('usage', usage_count, 'validatedBy', validated_by_agents, \
                 'active', is_active, 'supersededBy', superseded_by) \
             FROM collaboration_knowledge WHERE id = $1",
        )
        .bind(id.0)
        .fetch_one(conn)
        .await
        .unwrap()
    }

    /// The same log gives the same rows whether projected in one batch or one event at a time
    /// (and copies of applied events change nothing).
    async fn project_both_ways(f: &mut Fixture, events: Vec<Event>) -> Vec<(TestDb, PgConnection)> {
        let log = f.messages(events);
        let mut out = Vec::new();
        for size in [log.len(), 1] {
            let db = TestDb::create().await;
            let mut lease = lease(&db).await;
            project(&mut lease, &log, size).await;
            let copies: Vec<_> = log
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    crate::incoming::Incoming::decode(
                        (log.len() + i + 1) as u64,
                        m.subject.clone(),
                        m.stored_at,
                        &crate::testing::payload(m),
                    )
                })
                .collect();
            project(&mut lease, &copies, 3).await;
            let conn = db.connect().await;
            out.push((db, conn));
        }
        out
    }

    async fn assert_same_rows(dbs: &mut [(TestDb, PgConnection)]) {
        let mut tables = Vec::new();
        for (_, conn) in dbs.iter_mut() {
            tables.push(rows(conn, "collaboration_knowledge").await);
        }
        assert_eq!(tables[0], tables[1], "one batch or one event at a time");
    }

    #[tokio::test]
    async fn each_completion_that_used_an_item_counts_once() {
        let mut f = Fixture::new();
        let (a, b) = (f.shared("- a"), f.shared("- b"));
        let (ka, kb) = (id(&a), id(&b));
        let events = vec![
            a,
            b,
            f.step_completed_using(&[ka, kb]),
            f.step_completed_using(&[ka]),
            // Knowledge no row holds (never shared, or another tenant's) is ignored.
            f.step_completed_using(&[KnowledgeId::new()]),
        ];
        let mut dbs = project_both_ways(&mut f, events).await;
        for (_, conn) in dbs.iter_mut() {
            let conn = &mut *conn;
            assert_eq!(row(conn, ka).await["usage"], 2);
            assert_eq!(row(conn, kb).await["usage"], 1);
        }
        assert_same_rows(&mut dbs).await;
    }

    #[tokio::test]
    async fn an_agent_confirms_an_item_once() {
        let mut f = Fixture::new();
        let shared = f.shared("- a");
        let k = id(&shared);
        let (bob, eve) = (AgentId::new(), AgentId::new());
        let events = vec![
            shared,
            f.validated(k, bob),
            f.validated(k, bob),
            f.validated(k, eve),
            f.validated(k, bob),
        ];
        let mut dbs = project_both_ways(&mut f, events).await;
        for (_, conn) in dbs.iter_mut() {
            let conn = &mut *conn;
            assert_eq!(row(conn, k).await["validatedBy"], json!([bob, eve]));
        }
        assert_same_rows(&mut dbs).await;
    }

    #[tokio::test]
    async fn a_superseded_item_becomes_inactive_and_names_its_successor() {
        let mut f = Fixture::new();
        let (old, new, other) = (f.shared("- REST"), f.shared("- gRPC"), f.shared("- x"));
        let (k_old, k_new, k_other) = (id(&old), id(&new), id(&other));
        let events = vec![
            old,
            new,
            other,
            f.superseded(k_old, k_new),
            // An item cannot replace itself.
            f.superseded(k_other, k_other),
        ];
        let mut dbs = project_both_ways(&mut f, events).await;
        for (_, conn) in dbs.iter_mut() {
            let conn = &mut *conn;
            assert_eq!(
                row(conn, k_old).await,
                json!({"usage": 0, "validatedBy": [], "active": false, "supersededBy": k_new})
            );
            assert_eq!(row(conn, k_new).await["active"], true);
            assert_eq!(row(conn, k_other).await["active"], true);
        }
        assert_same_rows(&mut dbs).await;
    }

    #[tokio::test]
    async fn an_item_superseded_twice_keeps_the_latest_time_however_cut() {
        let mut f = Fixture::new();
        let (a, b, c) = (f.shared("- a"), f.shared("- b"), f.shared("- c"));
        let id = |e: &Event| match e {
            Event::KnowledgeShared(k) => k.knowledge_id,
            other => panic!("not knowledge: {other:?}"),
        };
        let (ka, kb, kc) = (id(&a), id(&b), id(&c));
        let mut log = f.messages([a, b, c]);
        // The hosts' clocks disagree with the log's order.
        f.clock += chrono::Duration::seconds(100);
        log.push(f.message(f.superseded(ka, kb)));
        f.clock -= chrono::Duration::seconds(50);
        log.push(f.message(f.superseded(ka, kc)));
        crate::testing::rows_however_cut(&log, &[log.len(), 1, 2, 4], "collaboration_knowledge")
            .await;
    }
}

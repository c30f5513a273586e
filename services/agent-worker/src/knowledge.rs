//! The worker's read of the workflow's shared knowledge, from the projector's read models.
//!
//! A step must see the knowledge its dependencies shared: that it reads from the log, with
//! their results (each `StepCompleted` repeats what its step shared), so no step waits for the
//! projector. The rest of the team's knowledge (other branches, other runs) is read here as
//! the read models show it when the step starts: its order against this step is not causal,
//! and waiting for the projector to catch up put a whole projection lag on every step's
//! critical path (about 200 ms a step at 600 steps/s).
//!
//! Ranking a workflow's knowledge for a step is the costliest read of a step, and the steps of
//! many executions of one workflow ask the same question of the same knowledge: the view keeps
//! each ranking until the knowledge projection moves past the checkpoint it was read at (see
//! [`KnowledgeView::relevant`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use cadre_proto::model::WorkflowStep;
use cadre_proto::streams::KNOWLEDGE_PROJECTION;
use cadre_proto::{KnowledgeId, TenantId, WorkflowId};
use cadre_runtime::projection::ProjectionWatermark;
use moka::future::Cache;
use moka::ops::compute::{CompResult, Op};
use sqlx::PgPool;
use uuid::Uuid;

use crate::llm::estimate_tokens;
use crate::prompt::KnowledgeItem;

/// Most tokens of knowledge a step's prompt carries.
pub const KNOWLEDGE_TOKEN_BUDGET: u32 = 2_000;

/// How many of a workflow's newest active knowledge items are ranked for a step.
pub const RANKING_WINDOW: i64 = 64;

/// Most distinct words of a step's text its knowledge query asks for.
const QUERY_WORDS: usize = 64;
/// Longer "words" (a pasted hash, say) match nothing useful; Postgres would ignore them anyway.
const LONGEST_QUERY_WORD: usize = 40;

/// Most rankings kept: one per workflow step (and tenant) in use. A ranking holds what fits one
/// prompt's knowledge budget (some 10 KB of text at 2,000 tokens), so about 10 MB at most.
const RANKINGS_KEPT: u64 = 1_024;
/// How long a ranking is kept however quiet the log is. Freshness does not rest on it (the
/// checkpoint does): it lets the recency factor follow the clock, and forgets the steps of
/// workflows no longer run.
const RANKING_LIFETIME: Duration = Duration::from_secs(30);

/// The ranking of [`KnowledgeView::relevant`]: `$1` tenant, `$2` workflow, `$3` the step's
/// [`search_terms`], `$4` how many items to return, `$5` the [`RANKING_WINDOW`]. Returns
/// `(id, title, knowledge_type, content)`, best first.
///
/// `q` and `ranked` MATERIALIZED: inlined, the planner parsed the step's text (`to_tsquery`) again for
/// every item and ranked every item twice (once per sort key), some 4 ms per ranking and nearly
/// half of Postgres's time under load. `recent`'s order is that of the index
/// `collaboration_knowledge_newest`, so it reads the window's rows and no more (or, planned
/// before the table has statistics, it may walk the index of every item backwards, passing
/// over the superseded among the newest).
const RANKING: &str = "WITH q AS MATERIALIZED (SELECT to_tsquery('english', $3) AS query), \
     recent AS ( \
         SELECT id, title, knowledge_type, content, search, relevance_score, \
                created_at, event_sequence, event_position \
         FROM collaboration_knowledge \
         WHERE tenant_id = $1 AND workflow_id = $2 AND is_active \
         ORDER BY event_sequence DESC, event_position DESC, id DESC LIMIT $5), \
     ranked AS MATERIALIZED ( \
         SELECT k.*, ts_rank(k.search, q.query, 32) AS text_rank FROM recent k, q) \
     SELECT id, title, knowledge_type, content FROM ranked \
     ORDER BY text_rank > 0 DESC, \
         text_rank * relevance_score \
             / (1 + greatest(extract(epoch FROM now() - created_at), 0) / 86400) DESC, \
         relevance_score DESC, event_sequence DESC, event_position DESC, id DESC \
     LIMIT $4";

pub struct KnowledgeView {
    pool: PgPool,
    read_models: ProjectionWatermark,
    rankings: Cache<RankingKey, Ranking>,
}

/// Everything a ranking depends on besides the read models.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RankingKey {
    tenant: TenantId,
    workflow: WorkflowId,
    /// The step's [`search_terms`], rather than its id: a workflow whose step text changes
    /// asks a new question.
    terms: String,
    limit: u32,
    token_budget: u32,
}

/// A step's knowledge as ranked once the read models covered `checkpoint`: it shows at least
/// everything projected up to there.
#[derive(Debug, Clone)]
struct Ranking {
    checkpoint: u64,
    items: Arc<[KnowledgeItem]>,
}

impl KnowledgeView {
    /// Starts following the projection checkpoint in the background.
    pub fn start(pool: PgPool) -> Self {
        Self {
            read_models: ProjectionWatermark::start(pool.clone()),
            pool,
            rankings: Cache::builder()
                .max_capacity(RANKINGS_KEPT)
                .time_to_live(RANKING_LIFETIME)
                .build(),
        }
    }

    /// The workflow's active knowledge most relevant to `step`: at most `limit` items whose
    /// lines fit `token_budget` (estimated as [`estimate_tokens`] does), best first. An item
    /// that does not fit is passed over for the next that does.
    ///
    /// Items matching the step's text come first. The query ORs the words of the step's name,
    /// description, instructions, expected output and required skills
    /// ([`search_terms`]) against the item's title, tags and content (the generated `search`
    /// column, `english` configuration: stems, no stop words), and a matching item scores
    ///
    /// `ts_rank(search, query, 32) × relevance_score / (1 + age in days)`
    ///
    /// (a frequency rank squashed into `[0, 1)`, weighted title > tags > content: measured at
    /// under a fifth of the cost of `ts_rank_cd`'s cover density, which made ranking the
    /// costliest part of a step; the author's relevance score; a day-old item counts half as
    /// much as a new one). The items
    /// that match nothing still qualify after them (a workflow's knowledge is all somewhat
    /// relevant to its steps), by relevance score then recency, as the seed ordered everything.
    ///
    /// Only the workflow's [`RANKING_WINDOW`] newest active items are ranked: a busy workflow
    /// gathers thousands, ranking costs about 8 µs of Postgres time per item for every step,
    /// and the oldest are what the recency factor would rank last anyway.
    ///
    /// A ranking is reused, not read again, while the knowledge projection (the read model of
    /// `collaboration_knowledge` alone) has not moved past the checkpoint it had reached when
    /// it was read: the steps of many executions of one workflow ask the same question of the
    /// same knowledge, and ranking it again for each of them was the costliest part of a step.
    /// Every change to the knowledge moves that checkpoint, an item superseded included, so
    /// staleness is bounded by the knowledge version, not by time: a step never gets a ranking
    /// older than the checkpoint this worker has seen, which trails the projector's commits by
    /// a notification (or, if one is missed, a one-second poll).
    /// Concurrent steps that find no current ranking wait for one of them to read it.
    ///
    /// The key is the projection's checkpoint, not a per-workflow version: it costs no query, and
    /// while a busy workflow shares knowledge at nearly every commit (as every step of the
    /// benchmark does) a per-workflow version would move as often. Steps of many workflows
    /// that each run rarely share fewer rankings.
    pub async fn relevant(
        &self,
        tenant: &TenantId,
        workflow: WorkflowId,
        step: &WorkflowStep,
        limit: u32,
        token_budget: u32,
    ) -> Result<Vec<KnowledgeItem>, sqlx::Error> {
        let key = RankingKey {
            tenant: tenant.clone(),
            workflow,
            terms: search_terms(step),
            limit,
            token_budget,
        };
        let seen = self.read_models.checkpoint_of(KNOWLEDGE_PROJECTION);
        // `>=`, not `==`: a step that saw the checkpoint a moment before another step ranked
        // at a later one must not replace the newer ranking with an older one. (A projector
        // rebuild restarts the checkpoint at 0: rankings read before it stand until the replay
        // passes their checkpoint, at which it has the same rows again, or their lifetime ends.)
        if let Some(ranking) = self.rankings.get(&key).await
            && ranking.checkpoint >= seen
        {
            return Ok(ranking.items.to_vec());
        }
        let computed = self
            .rankings
            .entry_by_ref(&key)
            .and_try_compute_with(|current| async {
                if let Some(current) = current
                    && current.value().checkpoint >= seen
                {
                    return Ok(Op::Nop);
                }
                // Read before the query: the ranking shows at least what this covers.
                let checkpoint = self.read_models.checkpoint_of(KNOWLEDGE_PROJECTION);
                let items = self.rank(&key).await?;
                Ok::<_, sqlx::Error>(Op::Put(Ranking {
                    checkpoint,
                    items: items.into(),
                }))
            })
            .await?;
        Ok(match computed {
            CompResult::Inserted(entry)
            | CompResult::ReplacedWith(entry)
            | CompResult::Unchanged(entry) => entry.into_value().items.to_vec(),
            // Only `Op::Remove` removes, and only an entry can be left unchanged.
            CompResult::StillNone(_) | CompResult::Removed(_) => vec![],
        })
    }

    /// Ranks the workflow's knowledge for `key`'s question in Postgres, as
    /// [`Self::relevant`] describes.
    async fn rank(&self, key: &RankingKey) -> Result<Vec<KnowledgeItem>, sqlx::Error> {
        let RankingKey {
            tenant,
            workflow,
            terms,
            limit,
            token_budget,
        } = key;
        // Twice the limit from each part: room to pass over items too large for the budget.
        let candidates = i64::from(*limit).saturating_mul(2);
        let rows: Vec<(Uuid, String, String, String)> = sqlx::query_as(RANKING)
            .bind(tenant.as_str())
            .bind(workflow.0)
            .bind(terms)
            .bind(candidates)
            .bind(RANKING_WINDOW)
            .fetch_all(&self.pool)
            .await?;
        let items = rows
            .into_iter()
            .map(|(id, title, knowledge_type, content)| KnowledgeItem {
                id: KnowledgeId(id),
                title,
                knowledge_type,
                content,
            });
        Ok(within_budget(items, *limit, *token_budget))
    }
}

/// The step's text as a `to_tsquery` OR of its distinct words: `design | the | api | ...`.
/// Each word is a run of letters and digits, so nothing in the step's text can act as a
/// tsquery operator; the string is bound as a parameter, never spliced into SQL. Stemming and
/// stop words are Postgres's (`english`). Empty when the step has no words: it matches nothing.
pub(crate) fn search_terms(step: &WorkflowStep) -> String {
    let texts = [
        step.name.as_str(),
        step.description.as_str(),
        step.instructions.as_str(),
        step.expected_output.as_str(),
    ]
    .into_iter()
    .chain(step.required_skills.iter().map(String::as_str));
    let mut seen = HashSet::new();
    let words: Vec<String> = texts
        .flat_map(|text| text.split(|c: char| !c.is_alphanumeric()))
        .filter(|word| !word.is_empty() && word.chars().count() <= LONGEST_QUERY_WORD)
        .map(str::to_lowercase)
        .filter(|word| seen.insert(word.clone()))
        .take(QUERY_WORDS)
        .collect();
    words.join(" | ")
}

/// A step's knowledge: what its dependencies shared (`dependencies`, from the log) first, then
/// the team's `ranked` items not among them; at most `limit` items fitting `token_budget`.
pub fn for_step(
    dependencies: Vec<KnowledgeItem>,
    ranked: Vec<KnowledgeItem>,
    limit: u32,
    token_budget: u32,
) -> Vec<KnowledgeItem> {
    let mut seen = HashSet::new();
    let items = dependencies
        .into_iter()
        .chain(ranked)
        .filter(|item| seen.insert(item.id));
    within_budget(items, limit, token_budget)
}

/// The first `limit` of `items` (best first) whose prompt lines fit `token_budget` together.
fn within_budget(
    items: impl IntoIterator<Item = KnowledgeItem>,
    limit: u32,
    token_budget: u32,
) -> Vec<KnowledgeItem> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut left = token_budget;
    let mut chosen = Vec::new();
    for item in items {
        if chosen.len() >= limit {
            break;
        }
        let cost = estimate_tokens(&item.title)
            .saturating_add(estimate_tokens(&item.content))
            // The handle and the type.
            .saturating_add(4);
        if cost <= left {
            left -= cost;
            chosen.push(item);
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use sqlx::{Connection, PgConnection};

    use super::*;

    #[test]
    fn the_query_is_the_steps_distinct_words_ored() {
        let mut step = crate::fixtures::step();
        step.instructions =
            "List the endpoints (all of them) & the API's errors: 'quoted' | !x".into();
        let terms = search_terms(&step);
        assert_eq!(
            terms,
            "design | the | api | public | http | list | endpoints | all | of | them | s | \
             errors | quoted | x | an | endpoint | table | architecture"
        );
        assert!(!terms.contains(['&', '!', '(', ')', ':', '\'', '*', '<']));
        let silent = WorkflowStep {
            name: "…".into(),
            description: String::new(),
            instructions: String::new(),
            expected_output: String::new(),
            required_skills: vec![],
            ..crate::fixtures::step()
        };
        assert_eq!(search_terms(&silent), "");
    }

    fn item(title: &str, words: usize) -> KnowledgeItem {
        KnowledgeItem {
            id: KnowledgeId::new(),
            title: title.to_owned(),
            knowledge_type: "insight".to_owned(),
            content: vec!["word"; words].join(" "),
        }
    }

    #[test]
    fn items_are_cut_to_the_limit_and_the_token_budget() {
        let titles = |items: Vec<KnowledgeItem>| -> Vec<String> {
            items.into_iter().map(|i| i.title).collect()
        };
        // Title, content and 4 for the rest of the line: "A" costs 2 + 2 + 4 tokens, "B b"
        // 3 + 134 + 4, "C c" 3 + 14 + 4.
        let items = || vec![item("A", 1), item("B b", 100), item("C c", 10)];
        assert_eq!(
            titles(within_budget(items(), 5, 1_000)),
            ["A", "B b", "C c"]
        );
        assert_eq!(titles(within_budget(items(), 2, 1_000)), ["A", "B b"]);
        assert_eq!(
            titles(within_budget(items(), 5, 40)),
            ["A", "C c"],
            "an item over the budget is passed over for the next"
        );
        assert!(within_budget(items(), 0, 1_000).is_empty());
    }

    #[test]
    fn the_dependencies_knowledge_comes_first_and_once() {
        let from_dependency = item("A", 1);
        let (ranked, also_ranked) = (item("B b", 100), item("C c", 10));
        let ids = |items: Vec<KnowledgeItem>| -> Vec<KnowledgeId> {
            items.into_iter().map(|i| i.id).collect()
        };
        let ranked_list = vec![ranked.clone(), from_dependency.clone(), also_ranked.clone()];
        assert_eq!(
            ids(for_step(
                vec![from_dependency.clone()],
                ranked_list.clone(),
                5,
                1_000
            )),
            [from_dependency.id, ranked.id, also_ranked.id],
            "an item the read models also rank is shown once, where its dependency put it"
        );
        assert_eq!(
            ids(for_step(vec![from_dependency.clone()], ranked_list, 5, 40)),
            [from_dependency.id, also_ranked.id],
            "the limit and the budget hold for both together"
        );
    }

    /// A fresh database with the projector's schema, dropped at the end of the test.
    struct Db {
        admin: String,
        name: String,
        pool: PgPool,
    }

    impl Db {
        async fn create() -> Self {
            let admin = std::env::var("CADRE_ADMIN_DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
            let name = format!("cadre_worker_test_{}", Uuid::now_v7().simple());
            let mut conn = PgConnection::connect(&admin).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut conn)
                .await
                .unwrap();
            let url = match admin.rsplit_once('/') {
                Some((server, _)) => format!("{server}/{name}"),
                None => format!("{admin}/{name}"),
            };
            let pool = PgPool::connect(&url).await.unwrap();
            sqlx::migrate!("../projector/migrations")
                .run(&pool)
                .await
                .unwrap();
            Self { admin, name, pool }
        }

        async fn drop(self) {
            self.pool.close().await;
            let mut conn = PgConnection::connect(&self.admin).await.unwrap();
            let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
                .unwrap();
        }
    }

    struct Row<'a> {
        title: &'a str,
        content: &'a str,
        tags: &'a [&'a str],
        relevance: f64,
        age_days: i64,
        sequence: i64,
        active: bool,
    }

    const ROW: Row<'static> = Row {
        title: "Insights from Research",
        content: "",
        tags: &[],
        relevance: 1.0,
        age_days: 0,
        sequence: 1,
        active: true,
    };

    async fn insert(pool: &PgPool, tenant: &TenantId, workflow: WorkflowId, row: Row<'_>) -> Uuid {
        let id = Uuid::now_v7();
        let now: DateTime<Utc> = Utc::now() - chrono::Duration::days(row.age_days);
        sqlx::query(
            "INSERT INTO collaboration_knowledge (id, tenant_id, workflow_id, execution_id, \
                 step_id, title, content, knowledge_type, created_by_agent_id, relevance_score, \
                 tags, is_active, created_at, updated_at, event_sequence) \
             VALUES ($1, $2, $3, $4, 'research', $5, $6, 'insight', $4, $7, $8, $9, $10, $10, $11)",
        )
        .bind(id)
        .bind(tenant.as_str())
        .bind(workflow.0)
        .bind(Uuid::now_v7())
        .bind(row.title)
        .bind(row.content)
        .bind(row.relevance)
        .bind(serde_json::json!(row.tags))
        .bind(row.active)
        .bind(now)
        .bind(row.sequence)
        .execute(pool)
        .await
        .unwrap();
        id
    }

    #[tokio::test]
    async fn relevant_knowledge_matches_the_step_then_ranks_by_score_and_recency() {
        let db = Db::create().await;
        let view = KnowledgeView::start(db.pool.clone());
        let tenant = TenantId::default_tenant();
        let workflow = WorkflowId::new();
        // The step: "Design the API", "List the endpoints.", skills architecture and http.
        let step = crate::fixtures::step();
        let pool = &db.pool;
        let unrelated_but_valued = insert(
            pool,
            &tenant,
            workflow,
            Row {
                content: "- The budget is tight",
                relevance: 5.0,
                sequence: 1,
                ..ROW
            },
        )
        .await;
        let unrelated_newer = insert(
            pool,
            &tenant,
            workflow,
            Row {
                content: "- Meetings are on Tuesdays",
                sequence: 2,
                ..ROW
            },
        )
        .await;
        let weak_match = insert(
            pool,
            &tenant,
            workflow,
            Row {
                content: "- Twelve endpoints exist today",
                sequence: 3,
                ..ROW
            },
        )
        .await;
        let strong_match = insert(
            pool,
            &tenant,
            workflow,
            Row {
                title: "API design notes",
                content: "- Designing the API: list every endpoint and its HTTP errors",
                tags: &["architecture"],
                sequence: 4,
                ..ROW
            },
        )
        .await;
        let stale_strong_match = insert(
            pool,
            &tenant,
            workflow,
            Row {
                title: "API design notes",
                content: "- Designing the API: list every endpoint and its HTTP errors",
                tags: &["architecture"],
                age_days: 1,
                sequence: 5,
                ..ROW
            },
        )
        .await;
        let superseded = insert(
            pool,
            &tenant,
            workflow,
            Row {
                title: "API design",
                content: "- Design the API endpoints over HTTP",
                sequence: 6,
                active: false,
                ..ROW
            },
        )
        .await;
        let other_workflow = insert(
            pool,
            &tenant,
            WorkflowId::new(),
            Row {
                title: "API design",
                ..ROW
            },
        )
        .await;

        let ids = |items: Vec<KnowledgeItem>| -> Vec<Uuid> {
            items.into_iter().map(|i| i.id.0).collect()
        };
        let all = ids(view
            .relevant(&tenant, workflow, &step, 10, 10_000)
            .await
            .unwrap());
        assert_eq!(
            all,
            [
                strong_match,
                stale_strong_match,
                weak_match,
                unrelated_but_valued,
                unrelated_newer
            ]
        );
        assert!(!all.contains(&superseded) && !all.contains(&other_workflow));
        let top = view
            .relevant(&tenant, workflow, &step, 2, 10_000)
            .await
            .unwrap();
        assert_eq!(ids(top), [strong_match, stale_strong_match]);
        let other_tenant = TenantId::parse("other").unwrap();
        assert!(
            view.relevant(&other_tenant, workflow, &step, 10, 10_000)
                .await
                .unwrap()
                .is_empty()
        );
        drop(view);
        db.drop().await;
    }

    /// The rows of `collaboration_knowledge` each scan of `plan` (an `EXPLAIN (ANALYZE, FORMAT
    /// JSON)` node) read, those its filter removed included, summed over its loops.
    fn knowledge_rows_read(plan: &serde_json::Value) -> Vec<f64> {
        let mut read = Vec::new();
        if plan["Relation Name"] == "collaboration_knowledge" {
            let rows = ["Actual Rows", "Rows Removed by Filter"]
                .iter()
                .filter_map(|count| plan[count].as_f64())
                .sum::<f64>();
            read.push(rows * plan["Actual Loops"].as_f64().unwrap_or(1.0));
        }
        for child in plan["Plans"].as_array().into_iter().flatten() {
            read.extend(knowledge_rows_read(child));
        }
        read
    }

    #[tokio::test]
    async fn a_ranking_reads_the_newest_window_however_much_the_workflow_knows() {
        let db = Db::create().await;
        let pool = &db.pool;
        let tenant = TenantId::default_tenant();
        let workflow = WorkflowId::new();
        // A busy workflow's knowledge, several items per event as a step's completion gives,
        // some superseded; and another workflow's.
        for (workflow, items) in [(workflow, 3_000), (WorkflowId::new(), 500)] {
            sqlx::query(
                "INSERT INTO collaboration_knowledge (id, tenant_id, workflow_id, execution_id, \
                     step_id, title, content, knowledge_type, created_by_agent_id, \
                     relevance_score, tags, is_active, created_at, updated_at, event_sequence, \
                     event_position) \
                 SELECT gen_random_uuid(), $1, $2, gen_random_uuid(), 'research', \
                     'API design ' || i, 'Design the API endpoints over HTTP', 'insight', \
                     gen_random_uuid(), 0.8, '[]', i % 7 <> 0, now(), now(), i / 3, i % 3 \
                 FROM generate_series(1, $3) AS i",
            )
            .bind(tenant.as_str())
            .bind(workflow.0)
            .bind(items)
            .execute(pool)
            .await
            .unwrap();
        }
        let explain = format!("EXPLAIN (ANALYZE, FORMAT JSON) {RANKING}");
        let terms = search_terms(&crate::fixtures::step());
        // Right after a burst of writes (no statistics yet, which made the planner sort the
        // whole workflow) and once the table is analyzed; each planned for the values bound,
        // and generic, as Postgres may plan a statement a connection keeps prepared.
        let mut conn = pool.acquire().await.unwrap();
        for (analyzed, generic) in [(false, false), (false, true), (true, false), (true, true)] {
            if analyzed {
                sqlx::query("ANALYZE collaboration_knowledge")
                    .execute(&mut *conn)
                    .await
                    .unwrap();
            }
            let mode = if generic {
                "force_generic_plan"
            } else {
                "auto"
            };
            sqlx::query(sqlx::AssertSqlSafe(format!("SET plan_cache_mode = {mode}")))
                .execute(&mut *conn)
                .await
                .unwrap();
            let plan: serde_json::Value = sqlx::query_scalar(sqlx::AssertSqlSafe(explain.as_str()))
                .bind(tenant.as_str())
                .bind(workflow.0)
                .bind(&terms)
                .bind(10_i64)
                .bind(RANKING_WINDOW)
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            // Bounded by the window, not by the 3,000 items: an index of every item read
            // backwards passes over the superseded among the newest (a seventh here).
            let read = knowledge_rows_read(&plan[0]["Plan"]);
            let bound = 2.0 * RANKING_WINDOW as f64;
            assert!(
                !read.is_empty() && read.iter().all(|&rows| rows <= bound),
                "analyzed: {analyzed}, generic: {generic}: rows read per scan {read:?}, more than twice the window \
                 of {RANKING_WINDOW}: {plan:#}"
            );
        }
        drop(conn);
        db.drop().await;
    }

    /// What the projector does when it commits: moves its checkpoint and announces it.
    async fn commit_checkpoint(pool: &PgPool, checkpoint: i64) {
        sqlx::query("UPDATE projection_checkpoints SET stream_sequence = $1")
            .bind(checkpoint)
            .execute(pool)
            .await
            .unwrap();
        sqlx::query(
            "SELECT pg_notify('cadre_projection', projection || ':' || $1)
             FROM projection_checkpoints",
        )
        .bind(checkpoint.to_string())
        .execute(pool)
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_ranking_stands_until_the_read_models_move_on() {
        let db = Db::create().await;
        let pool = &db.pool;
        let view = KnowledgeView::start(pool.clone());
        let tenant = TenantId::default_tenant();
        let workflow = WorkflowId::new();
        let step = crate::fixtures::step();
        let relevant = || async {
            let items = view
                .relevant(&tenant, workflow, &step, 5, 10_000)
                .await
                .unwrap();
            items.into_iter().map(|i| i.id.0).collect::<Vec<_>>()
        };
        let old = insert(
            pool,
            &tenant,
            workflow,
            Row {
                title: "API design notes",
                sequence: 1,
                ..ROW
            },
        )
        .await;
        commit_checkpoint(pool, 1).await;
        assert!(
            view.read_models
                .wait_until(1, Duration::from_secs(10))
                .await
        );
        assert_eq!(relevant().await, [old]);

        // Rows written behind the checkpoint's back (no projector does) show that the ranking
        // read at checkpoint 1 is reused while the checkpoint stays there...
        let new = insert(
            pool,
            &tenant,
            workflow,
            Row {
                title: "API design",
                content: "- Design the API endpoints over HTTP",
                sequence: 2,
                ..ROW
            },
        )
        .await;
        sqlx::query(
            "UPDATE collaboration_knowledge SET is_active = false, superseded_by = $2 \
             WHERE id = $1",
        )
        .bind(old)
        .bind(new)
        .execute(pool)
        .await
        .unwrap();
        assert_eq!(relevant().await, [old]);

        // ...and no longer once the checkpoint covers them: the superseded item is gone.
        commit_checkpoint(pool, 2).await;
        assert!(
            view.read_models
                .wait_until(2, Duration::from_secs(10))
                .await
        );
        assert_eq!(relevant().await, [new]);
        drop(view);
        db.drop().await;
    }
}

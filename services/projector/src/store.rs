//! Postgres: the lease that makes one projector replica the writer of the projections it
//! holds, the transaction each batch is written in, each projection's index of applied event
//! ids and its checkpoint. What the rows are is up to the read models ([`crate::models`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use cadre_runtime::projection::PROJECTION_CHANNEL;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::analyze::Analyzer;
use crate::incoming::Incoming;
use crate::models;
use crate::plan::{Applied, Plan, plan, sequence};
use crate::projection::Projection;

/// Key of the advisory lock that the single projector of earlier releases held exclusively
/// ("cadrePRJ"). Every projection's writer holds it shared, so neither release writes while the
/// other does during an upgrade.
const SINGLE_PROJECTOR_LOCK_KEY: i64 = 0x6361_6472_6550_524a;

/// How often a replica asks for the locks of projections it should write but another holds.
pub(crate) const STANDBY_POLL: Duration = Duration::from_secs(1);

/// A Postgres session that holds the advisory locks of the projections this replica writes,
/// with each one's checkpoint. Every write goes through this session, so a committed batch
/// proves the locks were still held: if the session dies, Postgres releases them and our next
/// write fails before another replica can be overwritten.
pub(crate) struct Lease {
    conn: PgConnection,
    writer: String,
    /// The projections whose locks the session holds, each with its checkpoint.
    held: BTreeMap<Projection, u64>,
    analyzer: Analyzer,
}

impl Lease {
    /// Connects, holding no projection yet. The session's `application_name` names the writer
    /// and the projections it holds (`cadre-projector runs,catalog <writer>`, `-` for none; cut
    /// at 63 bytes), so `pg_stat_activity` shows who writes what. Waits while a projector of the
    /// release before projections holds its single lock; `None` if `shutdown` came first.
    pub async fn connect(
        database_url: &str,
        writer: &str,
        shutdown: &CancellationToken,
    ) -> Option<Self> {
        let mut backoff = retry_backoff();
        let mut announced = false;
        loop {
            match Self::try_connect(database_url, writer).await {
                Ok(Some(lease)) => return Some(lease),
                Ok(None) => {
                    if !announced {
                        tracing::info!(
                            "a projector of an earlier release is writing; waiting for it to stop"
                        );
                        announced = true;
                    }
                    backoff = retry_backoff();
                    if sleep_or_shutdown(STANDBY_POLL, shutdown).await {
                        return None;
                    }
                }
                Err(error) => {
                    let delay = backoff.next().unwrap_or(STANDBY_POLL);
                    tracing::warn!(%error, ?delay, "cannot reach Postgres to take the projection locks");
                    if sleep_or_shutdown(delay, shutdown).await {
                        return None;
                    }
                }
            }
        }
    }

    async fn try_connect(database_url: &str, writer: &str) -> Result<Option<Self>, sqlx::Error> {
        let mut conn = PgConnectOptions::from_str(database_url)?
            .application_name(&format!("cadre-projector - {writer}"))
            .connect()
            .await?;
        let allowed = sqlx::query_scalar!(
            r#"SELECT pg_try_advisory_lock_shared($1) AS "locked!""#,
            SINGLE_PROJECTOR_LOCK_KEY,
        )
        .fetch_one(&mut conn)
        .await?;
        // Closed otherwise: an idle connection per waiting replica buys nothing.
        Ok(allowed.then_some(Self {
            conn,
            writer: writer.to_owned(),
            held: BTreeMap::new(),
            analyzer: Analyzer::new(database_url),
        }))
    }

    /// Makes the projections held those of `wanted` that no other replica holds: releases the
    /// locks of those not wanted (between batches, so what they wrote is committed), and takes
    /// the free ones of those wanted, reading their checkpoints. True if what is held changed.
    pub async fn hold(&mut self, wanted: &BTreeSet<Projection>) -> Result<bool, sqlx::Error> {
        let mut changed = false;
        let unwanted: Vec<Projection> = self
            .held
            .keys()
            .filter(|projection| !wanted.contains(projection))
            .copied()
            .collect();
        for projection in unwanted {
            sqlx::query_scalar!(
                r#"SELECT pg_advisory_unlock($1) AS "unlocked!""#,
                projection.lock_key()
            )
            .fetch_one(&mut self.conn)
            .await?;
            self.held.remove(&projection);
            changed = true;
            tracing::info!(%projection, "gave the projection up");
        }
        for &projection in wanted {
            if self.held.contains_key(&projection) {
                continue;
            }
            let locked = sqlx::query_scalar!(
                r#"SELECT pg_try_advisory_lock($1) AS "locked!""#,
                projection.lock_key()
            )
            .fetch_one(&mut self.conn)
            .await?;
            if !locked {
                continue;
            }
            let checkpoint = sqlx::query_scalar!(
                "SELECT stream_sequence FROM projection_checkpoints WHERE projection = $1",
                projection.name()
            )
            .fetch_optional(&mut self.conn)
            .await?
            .map_or(0, |s| u64::try_from(s).unwrap_or(0));
            self.held.insert(projection, checkpoint);
            changed = true;
            tracing::info!(%projection, checkpoint, "holding the projection's lock; this replica writes it");
        }
        if changed {
            let held: Vec<&str> = self.held.keys().map(|p| p.name()).collect();
            let held = if held.is_empty() {
                "-".to_owned()
            } else {
                held.join(",")
            };
            sqlx::query_scalar!(
                r#"SELECT set_config('application_name', $1, false) AS "name!""#,
                format!("cadre-projector {held} {}", self.writer)
            )
            .fetch_one(&mut self.conn)
            .await?;
        }
        Ok(changed)
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The projections held.
    pub fn projections(&self) -> BTreeSet<Projection> {
        self.held.keys().copied().collect()
    }

    /// The lowest checkpoint of the projections held: every stream sequence up to it has been
    /// applied to all of them.
    pub fn checkpoint(&self) -> u64 {
        self.held.values().copied().min().unwrap_or(0)
    }

    /// Fails once the session (and with it the locks) is gone.
    pub async fn ping(&mut self) -> Result<(), sqlx::Error> {
        self.conn.ping().await
    }

    /// Applies a batch (in stream order) to every projection held, each from the events after
    /// its own checkpoint, in one transaction: rows, applied event ids, rejections, checkpoints
    /// and notifications commit together or not at all. Returns the lowest new checkpoint.
    ///
    /// Nearly always every event is new to the projections it changes, so the rows are written
    /// first and the events recorded after them, with the checkpoints, in one statement: at low
    /// load a batch is a handful of statements, each a round trip, and recording first took
    /// one of its own. When that statement finds a copy of an event applied before (one
    /// re-published beyond JetStream's duplicate window), the transaction is rolled back and
    /// written again in the other order, each projection folded without its copies.
    pub async fn project(&mut self, batch: &[Incoming]) -> Result<u64, sqlx::Error> {
        let before = self.checkpoint();
        let mut unapplied = Vec::new();
        for (&projection, &checkpoint) in &self.held {
            let events = &batch[batch.partition_point(|m| m.sequence <= checkpoint)..];
            if !events.is_empty() {
                unapplied.push((projection, events));
            }
        }
        if unapplied.is_empty() {
            return Ok(before);
        }
        let mut plans: Vec<(Projection, Plan)> = unapplied
            .iter()
            .map(|&(projection, events)| (projection, plan(events, None, &[projection])))
            .collect();
        let books = Bookkeeping::of(&mut plans);
        let mut tx = self.conn.begin().await?;
        for (_, plan_of) in plans {
            plan_of.write(&mut tx).await?;
        }
        let fresh = books.record(&mut tx).await?;
        if books.all_fresh(&fresh) {
            tx.commit().await?;
        } else {
            tracing::info!(
                first = batch.first().map(|m| m.sequence),
                "the batch holds copies of events applied before; writing it again without them"
            );
            tx.rollback().await?;
            let mut tx = self.conn.begin().await?;
            let fresh = books.record(&mut tx).await?;
            let none = HashSet::new();
            for &(projection, events) in &unapplied {
                let fresh = fresh.get(&projection).unwrap_or(&none);
                plan(events, Some(fresh), &[projection])
                    .write(&mut tx)
                    .await?;
            }
            tx.commit().await?;
        }
        self.held.extend(books.checkpoints);
        let now = self.checkpoint();
        self.analyzer.moved(before, now);
        Ok(now)
    }

    /// Empties the read models of every projection held and moves their checkpoints back to
    /// the start of the log.
    pub async fn reset(&mut self) -> Result<(), sqlx::Error> {
        let mut tx = self.conn.begin().await?;
        for &projection in self.held.keys() {
            models::reset(&mut tx, projection).await?;
            sqlx::query!(
                "DELETE FROM projected_events WHERE projection = $1",
                projection.name()
            )
            .execute(&mut *tx)
            .await?;
        }
        let moved = Bookkeeping {
            events: Vec::new(),
            checkpoints: self.held.keys().map(|p| (*p, 0)).collect(),
        };
        moved.record(&mut tx).await?;
        tx.commit().await?;
        self.held.extend(moved.checkpoints);
        Ok(())
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

/// What a batch records beside its rows: the events each projection applied (the ones that
/// change one of its read models; a copy of any other changes nothing anyway) and each
/// projection's new checkpoint.
struct Bookkeeping {
    events: Vec<(Projection, Applied)>,
    checkpoints: Vec<(Projection, u64)>,
}

impl Bookkeeping {
    /// Takes what `plans` applied, leaving them their rows to write.
    fn of(plans: &mut [(Projection, Plan)]) -> Self {
        Bookkeeping {
            events: plans
                .iter_mut()
                .flat_map(|(projection, plan_of)| {
                    let projection = *projection;
                    std::mem::take(&mut plan_of.applied)
                        .into_iter()
                        .map(move |applied| (projection, applied))
                })
                .collect(),
            checkpoints: plans
                .iter()
                .map(|(projection, plan_of)| (*projection, plan_of.last_sequence))
                .collect(),
        }
    }

    /// Records the applied events in each projection's index and moves the checkpoints,
    /// announcing each on `cadre_projection` (delivered on commit: readers waiting for the read
    /// models to cover a position wake up then; see `cadre_runtime::projection`), in one
    /// statement. Returns, by projection, the ids recorded for the first time: an id already
    /// there belongs to an event the projection applied before and must change nothing.
    async fn record(
        &self,
        tx: &mut PgConnection,
    ) -> Result<HashMap<Projection, HashSet<Uuid>>, sqlx::Error> {
        let (mut projections, mut ids, mut tenants, mut sequences) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (projection, event) in &self.events {
            projections.push(projection.name().to_owned());
            ids.push(event.event_id);
            tenants.push(event.tenant.clone());
            sequences.push(event.sequence);
        }
        let names: Vec<String> = self
            .checkpoints
            .iter()
            .map(|(p, _)| p.name().to_owned())
            .collect();
        let checkpoints: Vec<i64> = self.checkpoints.iter().map(|(_, c)| sequence(*c)).collect();
        // `announced` is read so that it runs: a plain `SELECT` in a `WITH` runs only where
        // it is read (the inserts run whether read or not). The ids and their projections are
        // aggregated in one pass, so that they pair up.
        let recorded = sqlx::query!(
            r#"WITH recorded AS (
                   INSERT INTO projected_events (projection, event_id, tenant_id, event_sequence)
                   SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::bigint[])
                   ON CONFLICT (projection, event_id) DO NOTHING
                   RETURNING projection, event_id
               ), moved AS (
                   INSERT INTO projection_checkpoints (projection, stream_sequence, updated_at)
                   SELECT projection, stream_sequence, now()
                   FROM UNNEST($5::text[], $6::bigint[]) AS c(projection, stream_sequence)
                   ON CONFLICT (projection) DO UPDATE
                   SET stream_sequence = excluded.stream_sequence, updated_at = excluded.updated_at
                   RETURNING projection, stream_sequence
               ), announced AS (
                   SELECT pg_notify($7, projection || ':' || stream_sequence) FROM moved
               )
               SELECT (SELECT count(*) FROM announced) AS "announced!",
                      coalesce(r.projections, '{}') AS "projections!",
                      coalesce(r.event_ids, '{}') AS "event_ids!"
               FROM (SELECT array_agg(projection) AS projections, array_agg(event_id) AS event_ids
                     FROM recorded) r"#,
            &projections,
            &ids,
            &tenants,
            &sequences,
            &names,
            &checkpoints,
            PROJECTION_CHANNEL,
        )
        .fetch_one(&mut *tx)
        .await?;
        debug_assert_eq!(
            usize::try_from(recorded.announced).ok(),
            Some(self.checkpoints.len()),
            "one notification per checkpoint"
        );
        let mut fresh: HashMap<Projection, HashSet<Uuid>> = HashMap::new();
        for (name, id) in recorded.projections.iter().zip(recorded.event_ids) {
            if let Some(projection) = Projection::named(name) {
                fresh.entry(projection).or_default().insert(id);
            }
        }
        Ok(fresh)
    }

    /// Whether every event recorded was new to its projection (`fresh`, from [`Self::record`]).
    fn all_fresh(&self, fresh: &HashMap<Projection, HashSet<Uuid>>) -> bool {
        fresh.values().map(HashSet::len).sum::<usize>() == self.events.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got
mod tests {
    use cadre_proto::events::Resolution;
    use cadre_proto::model::EscalationRung;
    use cadre_proto::{ExecutionId, WorkflowId};
    use chrono::Utc;
    use serde_json::{Value, json};
    use sqlx::PgConnection;

    use crate::analyze::FIRST;
    use crate::incoming::Incoming;
    use crate::testing::{
        Fixture, TestDb, execution, lease, payload, project, rows, rows_however_cut,
        workflow_status,
    };

    /// A run through every kind of event, late and out-of-place ones included.
    fn eventful_log() -> (Fixture, Vec<ExecutionId>, Vec<Incoming>) {
        let mut f = Fixture::with_steps(&["design", "review", "test"]);
        let (design, review, test) = (f.on("design"), f.on("review"), f.on("test"));
        let mut log = f.messages([
            design.registered(),
            design.created(),
            design.started(1),
            design.scheduled(1),
            review.scheduled(1),
            test.scheduled(1),
            design.step_started(1),
            review.step_started(1),
            review.question("Which format?"),
            review.shared("Reviews go faster with a checklist"),
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
        // A run of another workflow whose steps climb to a person, and one a person rejects.
        let escalating = Fixture {
            workflow: WorkflowId::new(),
            execution: ExecutionId::new(),
            ..f.clone()
        };
        let (design, review, test) = (
            escalating.on("design"),
            escalating.on("review"),
            escalating.on("test"),
        );
        log.extend(f.messages([
            design.created(),
            design.started(1),
            design.scheduled(1),
            design.step_failed(1),
            design.escalated(1, EscalationRung::Person),
            // The failed attempt's worker reports late.
            design.step_completed(1),
            design.resolved(
                1,
                Resolution::ProvideOutput {
                    summary: "Done by hand".to_owned(),
                    output: "The design".to_owned(),
                },
            ),
            review.scheduled(1),
            review.step_failed(1),
            review.escalated(1, EscalationRung::StrongerModel),
            review.scheduled(2),
            review.step_failed(2),
            review.escalated(2, EscalationRung::Person),
            test.approval_requested(1),
            test.resolved(1, Resolution::Reject),
            test.aborted(1),
        ]));
        executions.push(escalating.execution);
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
                "escalations",
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

        let fourth = execution(conn, executions[3]).await;
        assert_eq!(fourth["status"], "failed");
        assert_eq!(fourth["failure_cause"]["kind"], "aborted");
        let steps = &fourth["step_results"];
        assert_eq!(steps["design"]["status"], "completed", "{steps:#}");
        assert_eq!(steps["design"]["summary"], "Done by hand");
        assert_eq!(steps["design"]["providedBy"], "ops");
        assert_eq!(steps["review"]["status"], "cancelled");
        assert_eq!(steps["review"]["cancelledWhile"], "escalated");
        assert_eq!(steps["review"]["attempt"], 2);
        assert_eq!(steps["test"]["status"], "aborted");
        let mut escalations: Vec<(Value, Value, Value)> = rows(conn, "escalations")
            .await
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["step_id"].clone(),
                    e["status"].clone(),
                    e["attempt"].clone(),
                )
            })
            .collect();
        escalations.sort_by_key(|e| e.0.to_string());
        assert_eq!(
            escalations,
            [
                (json!("design"), json!("resolved"), json!(1)),
                (json!("review"), json!("closed"), json!(2)),
                (json!("test"), json!("resolved"), json!(1)),
            ]
        );
    }

    #[tokio::test]
    async fn a_reset_empties_every_read_model_and_a_replay_fills_them_again() {
        let (_, _, log) = eventful_log();
        let db = TestDb::create().await;
        let mut lease = lease(&db).await;
        let mut conn = db.connect().await;
        let junk = Incoming::decode(log.len() as u64 + 1, "cadre.events.x", Utc::now(), b"junk");
        project(&mut lease, &log, 5).await;
        project(&mut lease, std::slice::from_ref(&junk), 1).await;
        let mut before = Vec::new();
        for table in TABLES {
            before.push(rows(&mut conn, table).await);
        }
        assert!(before.iter().all(|rows| rows != &json!([])), "{before:?}");

        lease.reset().await.unwrap();
        for table in TABLES {
            assert_eq!(rows(&mut conn, table).await, json!([]), "{table}");
        }
        assert_eq!(lease.checkpoint(), 0);

        project(&mut lease, &log, 5).await;
        project(&mut lease, std::slice::from_ref(&junk), 1).await;
        let mut after = Vec::new();
        for table in TABLES {
            after.push(rows(&mut conn, table).await);
        }
        assert_eq!(after, before);
    }

    #[tokio::test]
    async fn the_read_models_are_analyzed_as_their_position_in_the_log_doubles() {
        let db = TestDb::create().await;
        let mut lease = lease(&db).await;
        let mut conn = db.connect().await;
        let message = |sequence: u64| {
            Incoming::decode(sequence, "cadre.events.x", Utc::now(), b"not an event")
        };
        project(&mut lease, &[message(FIRST - 24)], 1).await;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(
            !analyzed(&mut conn, "rejected_events").await,
            "before the first position"
        );
        // The read models' position crosses the first: they are analyzed in the background.
        project(&mut lease, &[message(FIRST + 6)], 1).await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !analyzed(&mut conn, "rejected_events").await {
            assert!(
                std::time::Instant::now() < deadline,
                "not analyzed after crossing the first position"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        // An empty table is left as never analyzed: the planner then assumes a few pages,
        // where an analyzed empty table would be planned as staying empty.
        assert!(!analyzed(&mut conn, "escalations").await);
    }

    async fn analyzed(conn: &mut PgConnection, table: &str) -> bool {
        sqlx::query_scalar::<_, bool>(
            "SELECT analyze_count > 0 FROM pg_stat_user_tables WHERE relname = $1",
        )
        .bind(table)
        .fetch_one(conn)
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn copies_of_applied_events_stored_again_change_no_row() {
        let (_, _, log) = eventful_log();
        let db = TestDb::create().await;
        let mut lease = lease(&db).await;
        let mut conn = db.connect().await;
        project(&mut lease, &log, 5).await;
        let mut before = Vec::new();
        for table in TABLES {
            before.push(rows(&mut conn, table).await);
        }
        // Re-published after JetStream's duplicate window: the same events at new sequences,
        // cut into batches that start and end elsewhere than the originals'.
        let end = log.len() as u64;
        let copies: Vec<Incoming> = (1..)
            .zip(&log)
            .map(|(offset, original)| {
                Incoming::decode(
                    end + offset,
                    original.subject.clone(),
                    Utc::now(),
                    &payload(original),
                )
            })
            .collect();
        project(&mut lease, &copies, 3).await;
        let mut after = Vec::new();
        for table in TABLES {
            after.push(rows(&mut conn, table).await);
        }
        assert_eq!(after, before);
        assert_eq!(lease.checkpoint(), 2 * end);
    }

    #[tokio::test]
    async fn runs_are_the_same_however_the_log_is_cut_into_batches() {
        // Among them: an escalated step's late report, then a person's resolution, in one
        // batch after the escalation's.
        let (_, _, log) = eventful_log();
        rows_however_cut(&log, &[log.len(), 1, 2, 3, 4, 5], "workflow_executions").await;
    }

    #[tokio::test]
    async fn a_batch_mixing_copies_and_new_events_applies_only_the_new_ones() {
        let (_, _, log) = eventful_log();
        let half = log.len() / 2;
        let at = |sequence: u64, original: &Incoming| {
            Incoming::decode(
                sequence,
                original.subject.clone(),
                Utc::now(),
                &payload(original),
            )
        };
        // After the first half, at new sequences: each event of the second half with a copy of
        // one of the first half before it (re-published beyond the duplicate window).
        let end = half as u64;
        let mixed: Vec<Incoming> = (log[half..].iter().enumerate())
            .flat_map(|(i, new)| {
                let sequence = end + 1 + 2 * i as u64;
                [at(sequence, &log[i % half]), at(sequence + 1, new)]
            })
            .collect();
        let only_new: Vec<Incoming> = (mixed.iter().skip(1).step_by(2))
            .map(|new| at(new.sequence, new))
            .collect();
        let mut tables = Vec::new();
        for later in [&mixed, &only_new] {
            let db = TestDb::create().await;
            let mut lease = lease(&db).await;
            project(&mut lease, &log[..half], 5).await;
            project(&mut lease, later, 4).await;
            assert_eq!(lease.checkpoint(), mixed.last().unwrap().sequence);
            let mut conn = db.connect().await;
            let mut rows_of = Vec::new();
            for table in TABLES {
                rows_of.push(rows(&mut conn, table).await);
            }
            tables.push(rows_of);
        }
        assert_eq!(tables[0], tables[1]);
    }

    /// Every read model the eventful log fills, the event index and the rejections.
    const TABLES: [&str; 12] = [
        "agents",
        "agent_status",
        "collaboration_workflows",
        "workflow_executions",
        "execution_history",
        "agent_tasks",
        "agent_interactions",
        "escalations",
        "collaboration_knowledge",
        "token_usage",
        "projected_events",
        "rejected_events",
    ];
}

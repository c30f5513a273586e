//! What the fault suite checks once a system has drained: the log's facts about every step
//! handed out and every run accepted, the read models against those facts, and the read models
//! against a rebuild of them from sequence 1. Each check returns what it found wrong, in words.

use std::collections::{BTreeMap, HashMap, HashSet};

use cadre_proto::{Envelope, Event};
use cadre_runtime::bus::EventBus;
use sqlx::{PgPool, Row};

/// One attempt of one step of one run: `(execution id, step id, attempt)`.
pub type Attempt = (String, String, u32);

/// How a run ended in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Completed,
    Failed,
    Cancelled,
}

impl Ending {
    /// The status the read models give a run that ended so.
    pub fn status(self) -> &'static str {
        match self {
            Ending::Completed => "completed",
            Ending::Failed => "failed",
            Ending::Cancelled => "cancelled",
        }
    }
}

/// What the log says, folded event by event. Sets of event ids, not counts: a copy of an event
/// (a redelivery, or one re-published past the duplicate window) is the same fact.
#[derive(Debug, Default)]
pub struct LogFacts {
    pub event_ids: HashSet<String>,
    /// Stream sequences of the readable events.
    pub event_sequences: HashSet<i64>,
    /// Every attempt handed out (`StepScheduled` stored: its dispatch is the coordinator's to
    /// do), with the ids of the events that handed it out.
    pub scheduled: HashMap<Attempt, HashSet<String>>,
    pub started: HashMap<Attempt, HashSet<String>>,
    /// An attempt's outcome: completed, failed or timed out.
    pub outcomes: HashMap<Attempt, HashSet<String>>,
    /// `StepFailed` events, by attempt.
    pub failed: HashMap<Attempt, HashSet<String>>,
    pub executions_started: HashSet<String>,
    pub endings: HashMap<String, HashMap<String, Ending>>,
}

impl LogFacts {
    /// Every readable event of the log, from sequence 1.
    pub async fn read(bus: &EventBus) -> anyhow::Result<Self> {
        let history = bus.read_history(cadre_proto::subjects::ALL_EVENTS).await?;
        let mut facts = Self::default();
        for stored in &history.events {
            facts.apply(stored.sequence, &stored.envelope);
        }
        Ok(facts)
    }

    pub fn apply(&mut self, sequence: u64, envelope: &Envelope) {
        let id = envelope.meta.id.to_string();
        self.event_ids.insert(id.clone());
        self.event_sequences
            .insert(i64::try_from(sequence).unwrap_or(i64::MAX));
        let attempt = |a: &cadre_proto::events::StepAttempt| {
            (a.execution_id.to_string(), a.step_id.to_string(), a.number)
        };
        let mut ended = |execution: String, ending: Ending| {
            self.endings
                .entry(execution)
                .or_default()
                .insert(id.clone(), ending);
        };
        match &envelope.event {
            Event::ExecutionStarted(e) => {
                self.executions_started.insert(e.execution_id.to_string());
            }
            Event::ExecutionCompleted(e) => ended(e.execution_id.to_string(), Ending::Completed),
            Event::ExecutionFailed(e) => ended(e.execution_id.to_string(), Ending::Failed),
            Event::ExecutionCancelled(e) => ended(e.execution_id.to_string(), Ending::Cancelled),
            Event::StepScheduled(e) => {
                let key = (e.execution_id.to_string(), e.step.id.to_string(), e.attempt);
                self.scheduled.entry(key).or_default().insert(id);
            }
            Event::StepStarted(e) => {
                self.started
                    .entry(attempt(&e.attempt))
                    .or_default()
                    .insert(id);
            }
            Event::StepCompleted(e) => {
                self.outcomes
                    .entry(attempt(&e.attempt))
                    .or_default()
                    .insert(id);
            }
            Event::StepFailed(e) => {
                let key = attempt(&e.attempt);
                self.failed
                    .entry(key.clone())
                    .or_default()
                    .insert(id.clone());
                self.outcomes.entry(key).or_default().insert(id);
            }
            Event::StepTimedOut(e) => {
                self.outcomes
                    .entry(attempt(&e.attempt))
                    .or_default()
                    .insert(id);
            }
            _ => {}
        }
    }

    /// Attempts handed out that have no outcome yet.
    pub fn in_flight(&self) -> Vec<Attempt> {
        self.scheduled
            .keys()
            .filter(|a| !self.outcomes.contains_key(*a))
            .cloned()
            .collect()
    }

    /// How a run ended, if it did (the first ending when there are several, which
    /// [`check_log`] reports).
    pub fn ending(&self, execution: &str) -> Option<Ending> {
        self.endings
            .get(execution)
            .and_then(|endings| endings.values().next().copied())
    }
}

/// What a check counted.
#[derive(Debug, Default)]
pub struct Findings {
    /// Handed-out attempts or accepted runs with no terminal state.
    pub lost: usize,
    /// Attempts or runs with more than one terminal state, steps handed out or started twice,
    /// duplicate terminal rows.
    pub duplicated: usize,
    /// Every invariant that failed, in words (`lost` and `duplicated` included).
    pub violations: Vec<String>,
}

impl Findings {
    fn lost(&mut self, what: String) {
        self.lost += 1;
        self.violations.push(what);
    }

    fn duplicated(&mut self, what: String) {
        self.duplicated += 1;
        self.violations.push(what);
    }
}

/// The log against the ledger: every accepted run ended once and completed; every attempt
/// handed out was handed out and started by one event each and has exactly one outcome.
pub fn check_log(facts: &LogFacts, accepted: &[String], findings: &mut Findings) {
    for execution in accepted {
        let endings = facts.endings.get(execution).map_or(0, HashMap::len);
        match endings {
            0 => findings.lost(format!("run {execution} accepted but never ended")),
            1 => {}
            n => findings.duplicated(format!("run {execution} ended {n} times")),
        }
        if let Some(ending) = facts.ending(execution)
            && ending != Ending::Completed
        {
            findings
                .violations
                .push(format!("run {execution} {}", ending.status()));
        }
    }
    for (attempt, ids) in &facts.scheduled {
        let (execution, step, number) = attempt;
        let what = format!("step {step} attempt {number} of run {execution}");
        if ids.len() > 1 {
            findings.duplicated(format!("{what} handed out by {} events", ids.len()));
        }
        if let Some(started) = facts.started.get(attempt)
            && started.len() > 1
        {
            findings.duplicated(format!("{what} started by {} events", started.len()));
        }
        match facts.outcomes.get(attempt).map_or(0, HashSet::len) {
            0 => findings.lost(format!("{what} handed out but has no outcome")),
            1 => {}
            n => findings.duplicated(format!("{what} has {n} outcomes")),
        }
    }
}

/// The read models against the log: one row per accepted run, in the state the log ended it
/// in; one outcome row per attempt that has an outcome; every row's source event in the log.
pub async fn check_read_models(
    pool: &PgPool,
    facts: &LogFacts,
    accepted: &[String],
    findings: &mut Findings,
) -> anyhow::Result<()> {
    let statuses: HashMap<String, String> =
        sqlx::query("SELECT id::text AS id, status FROM workflow_executions")
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|row| (row.get("id"), row.get("status")))
            .collect();
    for execution in accepted {
        match (statuses.get(execution), facts.ending(execution)) {
            (None, _) => findings.lost(format!("run {execution} has no row")),
            (Some(status), Some(ending)) if status != ending.status() => {
                findings.violations.push(format!(
                    "run {execution} is {status} in the read models but {} in the log",
                    ending.status()
                ));
            }
            _ => {}
        }
    }
    for execution in statuses.keys() {
        if !facts.executions_started.contains(execution) {
            findings
                .violations
                .push(format!("run {execution} has a row but no ExecutionStarted"));
        }
    }

    // An attempt has one outcome, its first (a review's verdict is its outcome).
    let outcome_rows: HashMap<Attempt, i64> = sqlx::query(
        "SELECT execution_id::text AS execution, step_id, attempt, count(*) AS n \
         FROM execution_history \
         WHERE action IN ('completed', 'failed', 'timed_out', 'approved', 'changes_requested') \
         GROUP BY 1, 2, 3",
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| {
        let attempt: i32 = row.get("attempt");
        (
            (
                row.get("execution"),
                row.get("step_id"),
                u32::try_from(attempt).unwrap_or(0),
            ),
            row.get("n"),
        )
    })
    .collect();
    for attempt in facts.outcomes.keys() {
        let (execution, step, number) = attempt;
        match outcome_rows.get(attempt).copied().unwrap_or(0) {
            0 => findings.lost(format!(
                "step {step} attempt {number} of run {execution} has an outcome but no row"
            )),
            1 => {}
            n => findings.duplicated(format!(
                "step {step} attempt {number} of run {execution} has {n} outcome rows"
            )),
        }
    }
    for (attempt, _) in outcome_rows
        .iter()
        .filter(|(a, _)| !facts.outcomes.contains_key(*a))
    {
        findings.violations.push(format!(
            "an outcome row for {attempt:?} without an outcome event"
        ));
    }

    // Every row that names its source event (by id or by stream sequence) names one in the log.
    for (table, column) in source_columns(pool).await? {
        let sql = format!("SELECT {column}::text AS source FROM {table}");
        let sources: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|row| row.get("source"))
            .collect();
        let orphans = sources
            .iter()
            .filter(|source| {
                if column == "event_id" {
                    !facts.event_ids.contains(*source)
                } else {
                    source
                        .parse::<i64>()
                        .map_or(true, |sequence| !facts.event_sequences.contains(&sequence))
                }
            })
            .count();
        if orphans > 0 {
            findings.violations.push(format!(
                "{orphans} row(s) of {table} name a {column} that is no event of the log"
            ));
        }
    }
    Ok(())
}

/// The read models' tables and their columns that name a row's source event.
async fn source_columns(pool: &PgPool) -> anyhow::Result<Vec<(String, String)>> {
    Ok(sqlx::query(
        "SELECT table_name::text AS t, column_name::text AS c FROM information_schema.columns \
         WHERE table_schema = 'public' AND column_name IN ('event_id', 'event_sequence') \
         ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| (row.get("t"), row.get("c")))
    .collect())
}

/// Columns that record when the projector wrote a row rather than anything of the log, so a
/// rebuild legitimately differs there.
const TIME_OF_PROJECTION: [(&str, &str); 2] = [
    ("rejected_events", "rejected_at"),
    ("projection_checkpoints", "updated_at"),
];

/// Per read-model table: its row count and an MD5 of its rows (sorted, as text), without the
/// columns of [`TIME_OF_PROJECTION`].
pub async fn table_hashes(pool: &PgPool) -> anyhow::Result<BTreeMap<String, (i64, String)>> {
    let columns = sqlx::query(
        "SELECT c.table_name::text AS t, c.column_name::text AS c \
         FROM information_schema.columns c \
         JOIN information_schema.tables t \
           ON t.table_schema = c.table_schema AND t.table_name = c.table_name \
         WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE' \
           AND c.table_name NOT LIKE '\\_sqlx%' \
         ORDER BY c.table_name, c.ordinal_position",
    )
    .fetch_all(pool)
    .await?;
    let mut tables: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for row in columns {
        let (table, column): (String, String) = (row.get("t"), row.get("c"));
        if !TIME_OF_PROJECTION.contains(&(table.as_str(), column.as_str())) {
            tables
                .entry(table)
                .or_default()
                .push(format!("\"{column}\""));
        }
    }
    let mut hashes = BTreeMap::new();
    for (table, columns) in tables {
        let sql = format!(
            "SELECT count(*) AS n, md5(coalesce(string_agg(r::text, E'\\n' ORDER BY r::text), '')) AS h \
             FROM (SELECT {} FROM \"{table}\") r",
            columns.join(", ")
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_one(pool)
            .await?;
        hashes.insert(table, (row.get("n"), row.get("h")));
    }
    Ok(hashes)
}

/// The tables whose hashes differ between `live` and `other`, in words.
pub fn compare_hashes(
    live: &BTreeMap<String, (i64, String)>,
    other: &BTreeMap<String, (i64, String)>,
    other_name: &str,
    skip: &[&str],
) -> Vec<String> {
    live.keys()
        .chain(other.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|table| !skip.contains(&table.as_str()))
        .filter_map(|table| match (live.get(table), other.get(table)) {
            (Some(a), Some(b)) if a == b => None,
            (a, b) => Some(format!(
                "table {table} differs from {other_name}: {} rows (md5 {}) live, {} rows (md5 {}) in {other_name}",
                a.map_or(0, |a| a.0),
                a.map_or("-", |a| a.1.as_str()),
                b.map_or(0, |b| b.0),
                b.map_or("-", |b| b.1.as_str()),
            )),
        })
        .collect()
}

//! What a worker records about a step, as data: the events it publishes and whether a delivery
//! still needs work. Pure, so redelivery behaviour is testable without a bus.
//!
//! Every event id is derived from the `StepScheduled` event id, so a second delivery of the same
//! step republishes identical ids and JetStream drops the copies.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use cadre_proto::events::{
    AgentStatusReported, AskedQuestion, CallUsage, InteractionRecorded, KnowledgeShared,
    KnowledgeSuperseded, KnowledgeValidated, QuestionAnswered, QuestionAssigned, QuestionsAsked,
    ReviewRequest, SharedKnowledge, StepAttempt, StepCompleted, StepDeferred, StepFailed,
    StepReviewed, StepScheduled, StepStarted, SupportRequest, Told, ToldEvent, Urgency,
    is_everyone,
};
use cadre_proto::model::{InteractionType, KnowledgeType, ModelChoice, StepResult};
use cadre_proto::{Envelope, Event, EventId, KnowledgeId, TenantId};
use chrono::{DateTime, Utc};

use crate::prompt::KnowledgeItem;

/// The CloudEvents `source` of everything a worker publishes.
pub const SOURCE: &str = "/cadre/agent-worker";

/// The seed's default relevance of new knowledge.
const KNOWLEDGE_RELEVANCE: f64 = 1.0;

/// Longest delay before a delivery interrupted by an infrastructure failure is tried again,
/// and longest backoff between two calls of a provider that failed transiently without saying
/// when to come back.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

/// Headers a waiting step carries from one deferral to the next (copied by the server from the
/// message schedule to the message it fires).
pub const WAITING_SINCE_HEADER: &str = "Cadre-Waiting-Since";
pub const DEFERRALS_HEADER: &str = "Cadre-Deferrals";

mod label {
    pub const STARTED: &str = "started";
    pub const QUESTIONS: &str = "interaction/questions";
    pub const INSIGHTS: &str = "knowledge/insights";
    pub const DECISIONS: &str = "knowledge/decisions";
    pub const INSIGHTS_ID: &str = "knowledge-id/insights";
    pub const DECISIONS_ID: &str = "knowledge-id/decisions";
    pub const CONFIRMS: &str = "knowledge/confirms";
    pub const SUPERSEDES: &str = "knowledge/supersedes";
    pub const CONFLICTS: &str = "knowledge/conflicts";
    pub const COMPLETED: &str = "completed";
    pub const FEEDBACK: &str = "interaction/feedback";
    pub const REVIEWED: &str = "reviewed";
    pub const FAILED: &str = "failed";
    pub const DEFERRED: &str = "deferred";
    pub const ASKED: &str = "questions-asked";
    pub const ANSWERED: &str = "answered";
    pub const STATUS: &str = "status";
}

/// Longest addressee an `@name:` prefix may have: a name or role, not a sentence.
const LONGEST_ADDRESSEE: usize = 64;

/// A delivered `StepScheduled` with the envelope attributes the answers inherit.
#[derive(Debug, Clone)]
pub struct ScheduledStep {
    pub event_id: EventId,
    pub tenant: TenantId,
    pub scheduled: StepScheduled,
}

impl ScheduledStep {
    fn envelope(&self, label: &str, now: DateTime<Utc>, event: Event) -> Envelope {
        Envelope::with_id(
            self.event_id.child(label),
            SOURCE,
            self.tenant.clone(),
            now,
            event,
        )
    }

    /// What the step tells its team, with the id its `label` derives.
    fn told(&self, label: &str, event: ToldEvent) -> Told {
        Told {
            id: self.event_id.child(label),
            event,
        }
    }

    /// `told` as an event of its own, for what the step tells without completing.
    pub fn told_apart(&self, told: Told, now: DateTime<Utc>) -> Envelope {
        Envelope::with_id(told.id, SOURCE, self.tenant.clone(), now, told.event.into())
    }

    pub fn started(&self, now: DateTime<Utc>) -> Envelope {
        let s = &self.scheduled;
        self.envelope(
            label::STARTED,
            now,
            Event::StepStarted(StepStarted {
                attempt: StepAttempt::of(s),
                scheduled_event_id: self.event_id,
                timeout_at: s.timeout_at,
            }),
        )
    }

    /// The questions of `result` the agent needs answered before it can finish the step: its
    /// lines addressed `@name:` (a teammate by name or role, or `@everyone`). None for a
    /// review, and none when this attempt already has its answers: one round per step, so
    /// two agents cannot keep asking each other.
    pub fn questions_to_ask(&self, result: &StepResult) -> Vec<AskedQuestion> {
        let s = &self.scheduled;
        if s.review.is_some() || !s.answers.is_empty() {
            return vec![];
        }
        result
            .questions
            .iter()
            .filter_map(|line| addressed(line))
            .enumerate()
            .map(|(i, (to, text))| AskedQuestion {
                question_id: format!("q{}", i + 1),
                to: Some(to.to_owned()),
                text: text.to_owned(),
            })
            .collect()
    }

    /// The attempt waits for answers to `questions` (see [`Self::questions_to_ask`]); the
    /// call that wrote them used `usage`.
    pub fn asked(
        &self,
        questions: Vec<AskedQuestion>,
        usage: CallUsage,
        now: DateTime<Utc>,
    ) -> Envelope {
        self.envelope(
            label::ASKED,
            now,
            Event::QuestionsAsked(QuestionsAsked {
                attempt: StepAttempt::of(&self.scheduled),
                questions,
                usage,
            }),
        )
    }

    /// The agent's questions and concerns for the team, as one `question` interaction that
    /// waits for nobody; `None` without any.
    pub fn concerns(&self, lines: Vec<&String>) -> Option<Told> {
        if lines.is_empty() {
            return None;
        }
        let s = &self.scheduled;
        Some(self.told(
            label::QUESTIONS,
            ToldEvent::InteractionRecorded(InteractionRecorded {
                execution_id: s.execution_id,
                workflow_id: s.workflow_id,
                from_agent_id: s.agent.id,
                to_agent_id: None,
                interaction_type: InteractionType::Question,
                message: format!(
                    "Questions/concerns from {} on {}:\n{}",
                    s.agent.name,
                    s.step.name,
                    lines
                        .iter()
                        .map(|line| line.as_str())
                        .collect::<Vec<_>>()
                        .join("\n")
                ),
                context_data: serde_json::json!({
                    "stepId": s.step.id,
                    "attempt": s.attempt,
                    "questions": lines,
                }),
                related_step_id: Some(s.step.id.clone()),
                requires_response: false,
            }),
        ))
    }

    /// The agent's status while it waits for the answers to `questions`: blocked on them,
    /// asking each addressee (the team, for a broadcast or a name nobody has) for support.
    /// Half done: a draft exists, and the answers finish it.
    pub fn waiting_for_answers(&self, questions: &[AskedQuestion], now: DateTime<Utc>) -> Envelope {
        let team = &self.scheduled.team;
        let requested = questions
            .iter()
            .map(|q| SupportRequest {
                from_agent: q
                    .to
                    .as_deref()
                    .filter(|to| !is_everyone(Some(to)))
                    .and_then(|to| team.iter().find(|t| t.is_addressed_by(to)))
                    .map(|t| t.id),
                reason: q.text.clone(),
                urgency: Urgency::Medium,
            })
            .collect();
        let blocker = format!(
            "waiting for teammates' answers to {} question(s)",
            questions.len()
        );
        self.status_reported("questions", 50, vec![blocker], requested, now)
    }

    /// What the agent tells the team before it reports the step done: its questions and
    /// concerns, which wait for nobody (see [`Self::questions_to_ask`] for those that do), and
    /// (when the workflow shares knowledge) its insights and decisions, as the
    /// seed's `shareKnowledge` did, then what those lines say about the `knowledge` its prompt
    /// showed (see [`knowledge_verdict`]): an item confirmed, or superseded by the new insights
    /// or decisions that carry the line.
    pub fn shared(&self, result: &StepResult, knowledge: &[KnowledgeItem]) -> Vec<Told> {
        let s = &self.scheduled;
        let mut events: Vec<Told> = self
            .concerns(result.questions.iter().collect())
            .into_iter()
            .collect();
        if s.knowledge_sharing {
            let kinds = [
                (
                    &result.insights,
                    "Insights",
                    KnowledgeType::Insight,
                    label::INSIGHTS,
                    label::INSIGHTS_ID,
                ),
                (
                    &result.decisions,
                    "Decisions",
                    KnowledgeType::Decision,
                    label::DECISIONS,
                    label::DECISIONS_ID,
                ),
            ];
            let tags = |lines: &[&String]| knowledge_tags(&s.step.required_skills, lines);
            for (lines, heading, knowledge_type, event_label, id_label) in kinds {
                // A line marked as a kind of its own (a constraint, a resource, a best
                // practice) is shared apart, as that kind; the rest together, as the section's.
                let (marked, plain): (Vec<&String>, Vec<&String>) = lines
                    .iter()
                    .partition(|line| knowledge_kind(line).is_some());
                if !plain.is_empty() {
                    let content: Vec<&str> = plain.iter().map(|line| line.as_str()).collect();
                    events.push(self.knowledge(
                        (event_label, id_label),
                        format!("{heading} from {}", s.step.name),
                        content.join("\n"),
                        knowledge_type,
                        tags(&plain),
                    ));
                }
                for (i, line) in marked.into_iter().enumerate() {
                    let Some((kind, text)) = knowledge_kind(line) else {
                        continue;
                    };
                    events.push(self.knowledge(
                        (&format!("{event_label}/{i}"), &format!("{id_label}/{i}")),
                        format!("{} from {}", kind_title(kind), s.step.name),
                        text.to_owned(),
                        kind,
                        tags(&[line]),
                    ));
                }
            }
            events.extend(self.verdicts(result, knowledge));
        }
        events
    }

    /// One piece of knowledge the step shares; `labels` derive its event id and its id.
    fn knowledge(
        &self,
        (event_label, id_label): (&str, &str),
        title: String,
        content: String,
        knowledge_type: KnowledgeType,
        tags: Vec<String>,
    ) -> Told {
        let s = &self.scheduled;
        self.told(
            event_label,
            ToldEvent::KnowledgeShared(KnowledgeShared {
                knowledge_id: KnowledgeId(self.event_id.child(id_label).0),
                workflow_id: s.workflow_id,
                execution_id: s.execution_id,
                step_id: s.step.id.clone(),
                title,
                content,
                knowledge_type,
                created_by_agent_id: s.agent.id,
                relevance_score: KNOWLEDGE_RELEVANCE,
                tags,
            }),
        )
    }

    /// The confirmations, supersessions and conflicts in the answer's insights and decisions,
    /// once per item and verdict, for items the prompt showed under an unambiguous handle. A
    /// conflict (the agent's result contradicts an item, an active constraint say) is flagged
    /// to the team as a coordination interaction that requires a response.
    fn verdicts(&self, result: &StepResult, knowledge: &[KnowledgeItem]) -> Vec<Told> {
        let s = &self.scheduled;
        // Two items whose handles collide cannot be told apart: neither is named.
        let mut shown: HashMap<String, Option<&KnowledgeItem>> = HashMap::new();
        for item in knowledge {
            shown
                .entry(item.handle())
                .and_modify(|item| *item = None)
                .or_insert(Some(item));
        }
        let mut seen = HashSet::new();
        let mut events = Vec::new();
        for (lines, id_label) in [
            (&result.insights, label::INSIGHTS_ID),
            (&result.decisions, label::DECISIONS_ID),
        ] {
            let new_id = KnowledgeId(self.event_id.child(id_label).0);
            for line in lines {
                let Some((verdict, handle, reason)) = knowledge_verdict(line) else {
                    continue;
                };
                let Some(Some(item)) = shown.get(&handle).copied() else {
                    continue;
                };
                let old_id = item.id;
                if !seen.insert((verdict, old_id)) {
                    continue;
                }
                let event = match verdict {
                    Verdict::Confirms => ToldEvent::KnowledgeValidated(KnowledgeValidated {
                        knowledge_id: old_id,
                        workflow_id: s.workflow_id,
                        execution_id: s.execution_id,
                        step_id: s.step.id.clone(),
                        agent_id: s.agent.id,
                    }),
                    Verdict::Supersedes => ToldEvent::KnowledgeSuperseded(KnowledgeSuperseded {
                        knowledge_id: old_id,
                        superseded_by: new_id,
                        workflow_id: s.workflow_id,
                        execution_id: s.execution_id,
                        step_id: s.step.id.clone(),
                        agent_id: s.agent.id,
                        reason: reason.to_owned(),
                    }),
                    Verdict::Conflicts => ToldEvent::InteractionRecorded(InteractionRecorded {
                        execution_id: s.execution_id,
                        workflow_id: s.workflow_id,
                        from_agent_id: s.agent.id,
                        to_agent_id: None,
                        interaction_type: InteractionType::Coordination,
                        message: format!(
                            "Conflict: {} on {} reports that its result contradicts the team's \
                             {} [{handle}] {}: {reason}",
                            s.agent.name, s.step.name, item.knowledge_type, item.title
                        ),
                        context_data: serde_json::json!({
                            "conflict": true,
                            "stepId": s.step.id,
                            "attempt": s.attempt,
                            "knowledgeId": old_id,
                            "knowledgeType": item.knowledge_type,
                            "knowledge": item.content,
                            "reason": reason,
                        }),
                        related_step_id: Some(s.step.id.clone()),
                        requires_response: true,
                    }),
                };
                let event_label = match verdict {
                    Verdict::Confirms => label::CONFIRMS,
                    Verdict::Supersedes => label::SUPERSEDES,
                    Verdict::Conflicts => label::CONFLICTS,
                };
                events.push(self.told(&format!("{event_label}/{}", old_id.0), event));
            }
        }
        events
    }

    /// A review's outcome: the reviewer's feedback to the author (a `feedback` interaction),
    /// then the verdict.
    pub fn reviewed(
        &self,
        review: &ReviewRequest,
        approved: bool,
        feedback: String,
        usage: CallUsage,
        now: DateTime<Utc>,
    ) -> Vec<Envelope> {
        let s = &self.scheduled;
        let verdict = if approved {
            "approved"
        } else {
            "changes requested"
        };
        vec![
            self.envelope(
                label::FEEDBACK,
                now,
                Event::InteractionRecorded(InteractionRecorded {
                    execution_id: s.execution_id,
                    workflow_id: s.workflow_id,
                    from_agent_id: s.agent.id,
                    to_agent_id: Some(review.author_agent_id),
                    interaction_type: InteractionType::Feedback,
                    message: format!(
                        "Review of {} (round {}) by {}: {verdict}\n{feedback}",
                        s.step.name, review.round, s.agent.name
                    ),
                    context_data: serde_json::json!({
                        "stepId": s.step.id,
                        "round": review.round,
                        "approved": approved,
                    }),
                    related_step_id: Some(s.step.id.clone()),
                    requires_response: !approved,
                }),
            ),
            self.envelope(
                label::REVIEWED,
                now,
                Event::StepReviewed(StepReviewed {
                    attempt: StepAttempt::of(s),
                    round: review.round,
                    author_agent_id: review.author_agent_id,
                    approved,
                    feedback,
                    ballot: review.ballot,
                    usage: Some(usage),
                }),
            ),
        ]
    }

    /// The attempt's result, as `answered` says who gave it; `knowledge_used` is the
    /// knowledge its prompt carried, `handed_on` what it hands on to the steps that depend on
    /// it (see [`handed_on`]), `told` what it tells the team (see [`Self::shared`]).
    #[allow(clippy::too_many_arguments)] // the parts of a completion, each from elsewhere
    pub fn completed(
        &self,
        result: StepResult,
        answered: Answered,
        knowledge_used: Vec<KnowledgeId>,
        handed_on: Vec<SharedKnowledge>,
        told: Vec<Told>,
        duration: Duration,
        now: DateTime<Utc>,
    ) -> Envelope {
        let s = &self.scheduled;
        self.envelope(
            label::COMPLETED,
            now,
            Event::StepCompleted(Box::new(StepCompleted {
                attempt: StepAttempt::of(s),
                result,
                provider: answered.by.provider,
                model: answered.by.model,
                duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
                cost_usd: answered.cost_usd,
                knowledge_used,
                knowledge_handed_on: handed_on,
                fallback_reason: answered.fallback_reason,
                told,
            })),
        )
    }

    /// The step waits for its provider until `wait.retry_at`. One id per deferral: the n-th
    /// wait of a redelivered attempt is the same event.
    pub fn deferred(&self, error: String, wait: &Wait, now: DateTime<Utc>) -> Envelope {
        let s = &self.scheduled;
        self.envelope(
            &format!("{}/{}", label::DEFERRED, wait.deferral),
            now,
            Event::StepDeferred(StepDeferred {
                attempt: StepAttempt::of(s),
                error,
                retry_at: wait.retry_at,
                deferral: wait.deferral,
                waiting_since: wait.since,
            }),
        )
    }

    /// The agent's own word on the attempt, for what no other event says: what blocks it and
    /// the support it asks its team for. Its start, waits, completion and failure need no such
    /// report: the status read model is projected from `StepStarted`, `StepDeferred`,
    /// `StepCompleted` and `StepFailed`, so a step costs no extra event. `label` tells this
    /// report from the attempt's others (`question/1`): a redelivery republishes the same id.
    /// `progress` is a percentage (above 100 counts as 100); the estimated completion is the
    /// attempt's time-out, when it has one.
    pub fn status_reported(
        &self,
        label: &str,
        progress: u8,
        blockers: Vec<String>,
        requested_support: Vec<SupportRequest>,
        now: DateTime<Utc>,
    ) -> Envelope {
        let s = &self.scheduled;
        self.envelope(
            &format!("{}/{label}", label::STATUS),
            now,
            Event::AgentStatusReported(Box::new(AgentStatusReported {
                agent_id: s.agent.id,
                current_task: Some(StepAttempt::of(s)),
                progress: progress.min(100),
                estimated_completion: s.timeout_at,
                blockers,
                requested_support,
            })),
        )
    }

    /// The attempt failed; `retryable`: whether another attempt may succeed; `usage`: what its
    /// calls used, when a model answered before it failed.
    pub fn failed(
        &self,
        error: String,
        retryable: bool,
        usage: Option<CallUsage>,
        now: DateTime<Utc>,
    ) -> Envelope {
        let s = &self.scheduled;
        self.envelope(
            label::FAILED,
            now,
            Event::StepFailed(StepFailed {
                attempt: StepAttempt::of(s),
                retryable,
                error,
                usage,
            }),
        )
    }
}

/// Who gave a step's result: the agent's model, or its fallback and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Answered {
    pub by: ModelChoice,
    /// What its calls cost, by the price table.
    pub cost_usd: Option<f64>,
    /// Why the agent's own model did not answer, when its fallback did.
    pub fallback_reason: Option<String>,
}

/// A question handed to this worker's agent, with the envelope attributes its answer inherits.
#[derive(Debug, Clone)]
pub struct AssignedQuestion {
    pub event_id: EventId,
    pub tenant: TenantId,
    pub assigned: QuestionAssigned,
}

impl AssignedQuestion {
    /// The teammate's answer, or (`Err`) why it has none. One id per assignment: a redelivered
    /// question answers with the same event, which JetStream drops.
    pub fn answered(
        &self,
        answer: Result<String, String>,
        usage: CallUsage,
        now: DateTime<Utc>,
    ) -> Envelope {
        let q = &self.assigned;
        let (answer, error) = match answer {
            Ok(answer) => (Some(answer), None),
            Err(error) => (None, Some(error)),
        };
        Envelope::with_id(
            self.event_id.child(label::ANSWERED),
            SOURCE,
            self.tenant.clone(),
            now,
            Event::QuestionAnswered(QuestionAnswered {
                execution_id: q.execution_id,
                workflow_id: q.workflow_id,
                step_id: q.step_id.clone(),
                attempt: q.attempt,
                question_id: q.question_id.clone(),
                agent_id: q.recipient.id,
                assigned_event_id: self.event_id,
                answer,
                error,
                usage,
            }),
        )
    }
}

/// A question line addressed to someone: `@name: text` (the name may hold spaces, up to
/// [`LONGEST_ADDRESSEE`] characters) or `@name text` (one word), after any list bullet.
/// Returns the addressee and the question.
pub fn addressed(line: &str) -> Option<(&str, &str)> {
    let line = line
        .trim_start()
        .trim_start_matches(['-', '*', '•'])
        .trim_start();
    let rest = line.strip_prefix('@')?;
    let (to, text) = match rest.split_once(':') {
        Some((to, text)) if to.chars().count() <= LONGEST_ADDRESSEE && !to.contains('\n') => {
            (to, text)
        }
        _ => rest.split_once(char::is_whitespace)?,
    };
    let (to, text) = (to.trim(), text.trim());
    let named = !to.is_empty() && to.chars().count() <= LONGEST_ADDRESSEE && !to.contains(':');
    (named && !text.is_empty()).then_some((to, text))
}

/// The kind a line of insights or decisions marks itself as: `[constraint]`, `[resource]`
/// or `[best practice]` first (after any bullet); returns it with the rest of the line.
pub fn knowledge_kind(line: &str) -> Option<(KnowledgeType, &str)> {
    let line = line
        .trim_start()
        .trim_start_matches(['-', '*', '•'])
        .trim_start();
    let (inside, rest) = line.strip_prefix('[')?.split_once(']')?;
    let kind = match inside
        .trim()
        .to_ascii_lowercase()
        .replace(['-', '_'], " ")
        .as_str()
    {
        "constraint" => KnowledgeType::Constraint,
        "resource" => KnowledgeType::Resource,
        "best practice" => KnowledgeType::BestPractice,
        _ => return None,
    };
    let text = rest.trim_start_matches([':', ' ']).trim();
    (!text.is_empty()).then_some((kind, text))
}

fn kind_title(kind: KnowledgeType) -> &'static str {
    match kind {
        KnowledgeType::Insight => "Insight",
        KnowledgeType::Decision => "Decision",
        KnowledgeType::Resource => "Resource",
        KnowledgeType::Constraint => "Constraint",
        KnowledgeType::BestPractice => "Best practice",
    }
}

/// Most tags a piece of knowledge carries.
const MAX_TAGS: usize = 10;

/// The tags of knowledge shared from `lines` by a step that requires `skills`: the skills,
/// then the lines' `#hashtags`, lowercased, each once, at most [`MAX_TAGS`]. They are searched
/// with the knowledge (weighted between its title and its content).
pub fn knowledge_tags(skills: &[String], lines: &[&String]) -> Vec<String> {
    let hashtags = lines
        .iter()
        .flat_map(|line| cadre_proto::model::hashtags(line));
    let mut tags: Vec<String> = Vec::new();
    for tag in skills
        .iter()
        .map(|s| s.trim().to_lowercase())
        .chain(hashtags)
    {
        if !tag.is_empty() && !tags.contains(&tag) && tags.len() < MAX_TAGS {
            tags.push(tag);
        }
    }
    tags
}

/// What a line of an answer says about an item of the knowledge its prompt showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    Confirms,
    Supersedes,
    /// The agent's result contradicts the item (an active constraint, typically).
    Conflicts,
}

/// Reads the convention the prompt teaches: an insight or decision line that starts (after
/// its bullet) with `[confirms K-1a2b3c4d]`, `[supersedes K-1a2b3c4d]` or
/// `[conflicts K-1a2b3c4d]`. Returns the verdict,
/// the handle as the prompt writes it (`K-` and 8 lowercase hex digits) and the rest of the
/// line (why, or the new knowledge).
pub fn knowledge_verdict(line: &str) -> Option<(Verdict, String, &str)> {
    let line = line
        .trim_start()
        .trim_start_matches(['-', '*', '•'])
        .trim_start();
    let (inside, rest) = line.strip_prefix('[')?.split_once(']')?;
    let mut words = inside.split_whitespace();
    let verdict = match words.next()?.to_ascii_lowercase().as_str() {
        "confirms" | "confirm" => Verdict::Confirms,
        "supersedes" | "supersede" => Verdict::Supersedes,
        "conflicts" | "conflict" | "contradicts" => Verdict::Conflicts,
        _ => return None,
    };
    let handle = words.next()?;
    if words.next().is_some() {
        return None;
    }
    let hex = handle
        .strip_prefix("K-")
        .or_else(|| handle.strip_prefix("k-"))?;
    if hex.len() != 8 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let reason = rest.trim_start_matches([':', ' ']).trim();
    Some((verdict, format!("K-{}", hex.to_ascii_lowercase()), reason))
}

/// Why a delivery of `scheduled` needs no work, given one of the latest events of its step:
/// the attempt already ended (an earlier delivery finished but its ack was lost), a later
/// attempt replaced it, or it waits for its provider and this is a stale copy (`waited` says
/// which of the attempt's waits brought this delivery; the schedule of a later one will hand
/// the step back).
pub fn already_handled(
    scheduled: &StepScheduled,
    waited: Option<Waited>,
    latest: &Event,
) -> Option<String> {
    let attempt = scheduled.attempt;
    match latest {
        Event::StepDeferred(wait)
            if wait.attempt.number == attempt
                && wait.deferral > waited.map_or(0, |w| w.deferrals) =>
        {
            Some(format!(
                "the attempt waits for its provider until {}",
                wait.retry_at
            ))
        }
        Event::StepCompleted(done) if done.attempt.number >= attempt => {
            Some(format!("attempt {} already completed", done.attempt.number))
        }
        Event::StepFailed(failed) if failed.attempt.number >= attempt => {
            Some(format!("attempt {} already failed", failed.attempt.number))
        }
        Event::QuestionsAsked(asked) if asked.attempt.number >= attempt => Some(format!(
            "attempt {} already asked its questions",
            asked.attempt.number
        )),
        Event::StepReviewed(done) if done.attempt.number >= attempt => {
            Some(format!("attempt {} already reviewed", done.attempt.number))
        }
        Event::StepTimedOut(late) if late.attempt.number >= attempt => {
            Some(format!("attempt {} already timed out", late.attempt.number))
        }
        Event::StepScheduled(later) if later.attempt > attempt => {
            Some(format!("superseded by attempt {}", later.attempt))
        }
        Event::ExecutionCancelled(_) => Some("the execution was cancelled".to_owned()),
        Event::ExecutionFailed(failed) => Some(format!("the execution failed: {}", failed.error)),
        _ => None,
    }
}

/// Why a delivery of `scheduled` needs no work because its run gave up the steps it had
/// scheduled: a saga (the run is failing; it stops the attempts under way and schedules only
/// its undoings and its re-planning after it) or a re-plan (the run goes on with new steps,
/// scheduled after it) stored after this scheduling. `latest` holds the run's and the step's
/// latest events with their log sequences; this scheduling is stored at `stored_at`, or, for a
/// copy that does not say, where `latest` finds the step's scheduling of this attempt. A
/// scheduling whose place is unknown is not given up.
pub fn given_up(
    scheduled: &StepScheduled,
    stored_at: Option<u64>,
    latest: &[(u64, Event)],
) -> Option<String> {
    let at = stored_at.or_else(|| {
        latest.iter().find_map(|(sequence, event)| match event {
            Event::StepScheduled(s)
                if s.step.id == scheduled.step.id && s.attempt == scheduled.attempt =>
            {
                Some(*sequence)
            }
            _ => None,
        })
    })?;
    latest
        .iter()
        .filter(|(sequence, _)| *sequence > at)
        .find_map(|(_, event)| match event {
            Event::SagaStarted(saga) => Some(format!(
                "the run is failing and undoing its steps ({})",
                saga.error
            )),
            Event::ExecutionReplanned(replan) => Some(format!(
                "the run was re-planned (re-plan {}) after this step was scheduled",
                replan.replan
            )),
            _ => None,
        })
}

/// How long to wait before delivery `delivered + 1`: 1 s, 2 s, 4 s, ... up to a minute.
pub fn retry_delay(delivered: i64) -> Duration {
    backoff(u32::try_from(delivered).unwrap_or(u32::MAX))
}

/// The `n`-th delay of a doubling backoff from 1 s, capped at [`MAX_RETRY_DELAY`].
fn backoff(n: u32) -> Duration {
    let exponent = n.saturating_sub(1).min(16);
    Duration::from_secs(1u64 << exponent).min(MAX_RETRY_DELAY)
}

/// How long a step attempt has been waiting for its provider, from the headers of its
/// delivery: `None` on a first delivery.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Waited {
    pub since: DateTime<Utc>,
    pub deferrals: u32,
}

impl Waited {
    pub fn from_headers(headers: Option<&async_nats::HeaderMap>) -> Option<Self> {
        let headers = headers?;
        let since = headers.get(WAITING_SINCE_HEADER)?.as_str();
        Some(Self {
            since: DateTime::parse_from_rfc3339(since)
                .ok()?
                .with_timezone(&Utc),
            deferrals: headers.get(DEFERRALS_HEADER)?.as_str().parse().ok()?,
        })
    }
}

/// The next wait of a step whose provider failed transiently.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Wait {
    pub retry_at: DateTime<Utc>,
    /// 1 for the attempt's first wait.
    pub deferral: u32,
    pub since: DateTime<Utc>,
}

impl Wait {
    pub fn headers(&self) -> [(&'static str, String); 2] {
        [
            (WAITING_SINCE_HEADER, self.since.to_rfc3339()),
            (DEFERRALS_HEADER, self.deferral.to_string()),
        ]
    }
}

/// When to call a provider again after a transient failure: when it said (`Retry-After`, a
/// little later so a fleet told the same time does not arrive at once), else after a doubling
/// backoff with jitter. `None` when that is beyond the attempt's retry `budget`, counted in time
/// from its first transient failure. `jitter` is uniform in `[0, 1)`.
pub fn next_wait(
    waited: Option<Waited>,
    hint: Option<Duration>,
    budget: Duration,
    now: DateTime<Utc>,
    jitter: f64,
) -> Option<Wait> {
    let (since, deferral) = waited.map_or((now, 1), |w| (w.since, w.deferrals.saturating_add(1)));
    let delay = match hint {
        Some(hint) => hint.max(Duration::from_secs(1)).mul_f64(1.0 + 0.1 * jitter),
        // "Equal jitter": never less than half the backoff, so waits still grow.
        None => backoff(deferral).mul_f64(0.5 + 0.5 * jitter),
    };
    let retry_at = now + chrono::Duration::from_std(delay).ok()?;
    let waited_then = (retry_at - since).to_std().unwrap_or_default();
    (waited_then <= budget).then_some(Wait {
        retry_at,
        deferral,
        since,
    })
}

/// What a step hands on to the steps that depend on it: the knowledge it shared (in what it
/// told, `shared`), then each item its dependencies `handed` it that its prompt showed
/// (`shown`), once, unless the step superseded it.
pub fn handed_on(
    handed: Vec<SharedKnowledge>,
    shown: &HashSet<KnowledgeId>,
    shared: &[Told],
) -> Vec<SharedKnowledge> {
    let own: Vec<SharedKnowledge> = shared
        .iter()
        .filter_map(|told| match &told.event {
            ToldEvent::KnowledgeShared(knowledge) => Some(knowledge.into()),
            _ => None,
        })
        .collect();
    let mut left_out: HashSet<KnowledgeId> = shared
        .iter()
        .filter_map(|told| match &told.event {
            ToldEvent::KnowledgeShared(own) => Some(own.knowledge_id),
            ToldEvent::KnowledgeSuperseded(replaced) => Some(replaced.knowledge_id),
            _ => None,
        })
        .collect();
    let passed_on = handed
        .into_iter()
        .filter(|item| shown.contains(&item.knowledge_id) && left_out.insert(item.knowledge_id));
    own.into_iter().chain(passed_on).collect()
}

#[cfg(test)]
mod tests {
    use cadre_proto::events::{AssignmentReason, StepTimedOut};
    use cadre_proto::model::{TokenUsage, WorkflowStep};
    use cadre_proto::{ExecutionId, WorkflowId};
    use serde_json::json;

    use super::*;

    fn step(knowledge_sharing: bool) -> ScheduledStep {
        ScheduledStep {
            event_id: EventId::new(),
            tenant: TenantId::default_tenant(),
            scheduled: StepScheduled {
                execution_id: ExecutionId::new(),
                workflow_id: WorkflowId::new(),
                workflow_name: "Launch".to_owned(),
                step: WorkflowStep {
                    name: "Design".to_owned(),
                    ..crate::fixtures::step()
                },
                attempt: 2,
                agent: crate::fixtures::agent(),
                reason: AssignmentReason::PreferredAgent,
                coordinator_agent_id: None,
                knowledge_sharing,
                communication_style: Default::default(),
                knowledge_watermark: 0,
                input: None,
                review: None,
                feedback: None,
                timeout_at: None,
                arms_step_timer: Some(false),
                team: Vec::new(),
                answers: Vec::new(),
                earlier_failures: Vec::new(),
                handoff: None,
            },
        }
    }

    fn result() -> StepResult {
        StepResult {
            summary: "s".to_owned(),
            output: "o".to_owned(),
            insights: vec!["- i1".to_owned(), "- i2".to_owned()],
            decisions: vec!["- d1".to_owned()],
            questions: vec!["- q1".to_owned()],
            raw_response: "raw".to_owned(),
            tokens: TokenUsage::default(),
            full: None,
        }
    }

    fn own() -> ModelChoice {
        ModelChoice {
            provider: "offline".to_owned(),
            model: "m".to_owned(),
        }
    }

    fn answered() -> Answered {
        Answered {
            by: own(),
            cost_usd: None,
            fallback_reason: None,
        }
    }

    fn ids(told: &[Told]) -> Vec<EventId> {
        told.iter().map(|t| t.id).collect()
    }

    #[test]
    fn a_redelivery_republishes_the_same_ids() {
        let step = step(true);
        let (early, late) = (Utc::now(), Utc::now() + chrono::Duration::seconds(90));
        assert_eq!(step.started(early).meta.id, step.started(late).meta.id);
        assert_eq!(
            ids(&step.shared(&result(), &[])),
            ids(&step.shared(&result(), &[]))
        );
        let knowledge_ids = |told: Vec<Told>| -> Vec<KnowledgeId> {
            told.into_iter()
                .filter_map(|t| match t.event {
                    ToldEvent::KnowledgeShared(k) => Some(k.knowledge_id),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(
            knowledge_ids(step.shared(&result(), &[])),
            knowledge_ids(step.shared(&result(), &[]))
        );
        let completed = |at| {
            step.completed(
                result(),
                answered(),
                vec![],
                vec![],
                vec![],
                Duration::from_millis(5),
                at,
            )
            .meta
            .id
        };
        assert_eq!(completed(early), completed(late));
        assert_eq!(
            step.failed("x".to_owned(), true, None, early).meta.id,
            step.failed("y".to_owned(), true, None, late).meta.id
        );

        // Distinct events get distinct ids, and another step gets others.
        let mut all = ids(&step.shared(&result(), &[]));
        all.extend([
            step.started(early).meta.id,
            completed(early),
            step.failed("x".to_owned(), true, None, early).meta.id,
        ]);
        let unique: std::collections::BTreeSet<_> = all.iter().collect();
        assert_eq!(unique.len(), all.len());
        assert_ne!(
            self::step(true).started(early).meta.id,
            step.started(early).meta.id
        );
    }

    #[test]
    fn shares_questions_insights_and_decisions_like_the_seed() {
        let step = step(true);
        let events = step.shared(&result(), &[]);
        assert_eq!(events.len(), 3);
        let ToldEvent::InteractionRecorded(question) = &events[0].event else {
            panic!("questions first");
        };
        assert_eq!(question.interaction_type, InteractionType::Question);
        assert!(
            !question.requires_response,
            "a concern without an addressee waits for nobody"
        );
        assert_eq!(question.to_agent_id, None);
        assert!(question.message.contains("- q1"));
        let ToldEvent::KnowledgeShared(insights) = &events[1].event else {
            panic!("insights second");
        };
        assert_eq!(insights.title, "Insights from Design");
        assert_eq!(insights.content, "- i1\n- i2");
        assert_eq!(insights.knowledge_type, KnowledgeType::Insight);
        let ToldEvent::KnowledgeShared(decisions) = &events[2].event else {
            panic!("decisions third");
        };
        assert_eq!(decisions.title, "Decisions from Design");
        assert_eq!(decisions.knowledge_type, KnowledgeType::Decision);
        // Told apart (the questions of a step that waits for answers), each keeps its id.
        for told in &events {
            let apart = step.told_apart(told.clone(), Utc::now());
            assert_eq!(apart.meta.id, told.id);
            assert_eq!(apart.meta.source, SOURCE);
            assert_eq!(apart.meta.tenant, step.tenant);
            assert_eq!(apart.event, Event::from(told.event.clone()));
        }
    }

    #[test]
    fn shares_only_what_there_is_and_what_the_workflow_allows() {
        let quiet = StepResult {
            insights: vec![],
            questions: vec![],
            ..result()
        };
        let events = step(true).shared(&quiet, &[]);
        assert_eq!(events.len(), 1);
        assert!(
            matches!(&events[0].event, ToldEvent::KnowledgeShared(k) if k.knowledge_type == KnowledgeType::Decision)
        );

        let events = step(false).shared(&result(), &[]);
        assert_eq!(events.len(), 1);
        assert!(matches!(events[0].event, ToldEvent::InteractionRecorded(_)));
    }

    #[test]
    fn reads_addressed_questions_in_the_shapes_models_write_them() {
        for (line, expected) in [
            (
                "@Architect: which database?",
                Some(("Architect", "which database?")),
            ),
            (
                "- @architect: which database?",
                Some(("architect", "which database?")),
            ),
            (
                "* @Security Agent: is the token stored?",
                Some(("Security Agent", "is the token stored?")),
            ),
            (
                "@everyone: any blockers?",
                Some(("everyone", "any blockers?")),
            ),
            (
                "@tester which browsers?",
                Some(("tester", "which browsers?")),
            ),
            (
                "  • @QA:what about mobile?",
                Some(("QA", "what about mobile?")),
            ),
            // A concern, not a question for anyone: nobody waits for it.
            ("should a person review this?", None),
            ("email me@example.com: when?", None),
            ("@: empty addressee", None),
            ("@architect:", None),
            ("@architect", None),
        ] {
            assert_eq!(addressed(line), expected, "{line}");
        }
        let long = format!("@{}: why?", "x".repeat(80));
        assert_eq!(
            addressed(&long),
            None,
            "a sentence with a colon is no addressee, and no word follows it"
        );
    }

    #[test]
    fn addressed_questions_wait_once_per_step_and_never_in_a_review() {
        let mut step = step(true);
        let mut with_questions = result();
        with_questions.questions = vec![
            "- should a person review this?".to_owned(),
            "- @architect: which database?".to_owned(),
            "- @everyone: any blockers?".to_owned(),
        ];
        let asked = step.questions_to_ask(&with_questions);
        let ids: Vec<(&str, Option<&str>, &str)> = asked
            .iter()
            .map(|q| (q.question_id.as_str(), q.to.as_deref(), q.text.as_str()))
            .collect();
        assert_eq!(
            ids,
            vec![
                ("q1", Some("architect"), "which database?"),
                ("q2", Some("everyone"), "any blockers?"),
            ]
        );
        let usage = CallUsage {
            provider: "offline".to_owned(),
            model: "m".to_owned(),
            tokens: TokenUsage::default(),
            cost_usd: None,
        };
        let event = step.asked(asked, usage.clone(), Utc::now());
        assert_eq!(
            event.meta.id,
            step.asked(vec![], usage, Utc::now()).meta.id,
            "a redelivered attempt asks with the same event id"
        );

        step.scheduled.answers = vec![cadre_proto::events::QuestionAnswer {
            question: "which database?".to_owned(),
            asked: "Ada".to_owned(),
            answer: Some("Postgres".to_owned()),
            note: None,
        }];
        assert!(
            step.questions_to_ask(&with_questions).is_empty(),
            "the attempt that has its answers finishes the step"
        );
        step.scheduled.answers.clear();
        step.scheduled.review = Some(ReviewRequest {
            round: 1,
            author_agent_id: cadre_proto::AgentId::new(),
            summary: "s".to_owned(),
            output: "o".to_owned(),
            ballot: None,
        });
        assert!(step.questions_to_ask(&with_questions).is_empty());
    }

    #[test]
    fn an_agent_waiting_for_answers_is_blocked_and_asks_its_addressees_for_support() {
        let mut step = step(true);
        let grace = cadre_proto::events::Teammate {
            id: cadre_proto::AgentId::new(),
            name: "Grace".to_owned(),
            role: "tester".to_owned(),
        };
        step.scheduled.team = vec![grace.clone()];
        let question = |to: &str, text: &str| AskedQuestion {
            question_id: "q".to_owned(),
            to: Some(to.to_owned()),
            text: text.to_owned(),
        };
        let asked = [
            question("Tester", "Which browsers?"),
            question("everyone", "Any blockers?"),
            question("Nobody", "Hello?"),
        ];
        let Event::AgentStatusReported(status) = step.waiting_for_answers(&asked, Utc::now()).event
        else {
            panic!("a status report");
        };
        assert_eq!(status.agent_id, step.scheduled.agent.id);
        assert_eq!(status.blockers.len(), 1);
        let from: Vec<Option<cadre_proto::AgentId>> = status
            .requested_support
            .iter()
            .map(|r| r.from_agent)
            .collect();
        assert_eq!(from, vec![Some(grace.id), None, None]);
        assert_eq!(status.requested_support[0].reason, "Which browsers?");
    }

    #[test]
    fn reads_confirm_and_supersede_lines() {
        assert_eq!(
            knowledge_verdict("- [confirms K-1a2b3c4d] matches what I measured"),
            Some((
                Verdict::Confirms,
                "K-1a2b3c4d".to_owned(),
                "matches what I measured"
            ))
        );
        assert_eq!(
            knowledge_verdict("* [Supersedes k-DEADBEEF]: use gRPC, not REST"),
            Some((
                Verdict::Supersedes,
                "K-deadbeef".to_owned(),
                "use gRPC, not REST"
            ))
        );
        assert_eq!(
            knowledge_verdict("[confirm K-00000000]"),
            Some((Verdict::Confirms, "K-00000000".to_owned(), ""))
        );
        for not_one in [
            "- Insight from Design: later steps can build on this.",
            "- I [confirms K-1a2b3c4d] in the middle of a line",
            "- [confirms K-1a2b3c4] seven digits",
            "- [confirms K-1a2b3c4d5] nine digits",
            "- [confirms K-1a2b3c4g] not hex",
            "- [confirms 1a2b3c4d] no prefix",
            "- [refutes K-1a2b3c4d] unknown verb",
            "- [confirms K-1a2b3c4d K-deadbeef] two handles",
            "- [confirms K-1a2b3c4d no closing bracket",
        ] {
            assert_eq!(knowledge_verdict(not_one), None, "{not_one}");
        }
    }

    fn item(id: &str, title: &str) -> KnowledgeItem {
        KnowledgeItem {
            id: KnowledgeId(id.parse().unwrap()),
            title: title.to_owned(),
            knowledge_type: "insight".to_owned(),
            content: "c".to_owned(),
        }
    }

    #[test]
    fn confirms_and_supersedes_only_knowledge_the_prompt_showed() {
        let step = step(true);
        let shown = [
            item("0190a1b2-c3d4-7e5f-8a6b-00001a2b3c4d", "Old"),
            item("0190a1b2-c3d4-7e5f-8a6b-0000deadbeef", "Other"),
            // Two items with one handle: neither can be named.
            item("0190a1b2-c3d4-7e5f-8a6b-000100000001", "Twin 1"),
            item("0190a1b2-c3d4-7e5f-8a6b-000200000001", "Twin 2"),
        ];
        let answer = StepResult {
            insights: vec![
                "- [confirms K-deadbeef] still true".to_owned(),
                "- [confirms K-DEADBEEF] said twice".to_owned(),
                "- [confirms K-99999999] never shown".to_owned(),
                "- [confirms K-00000001] ambiguous".to_owned(),
                "- plain insight".to_owned(),
            ],
            decisions: vec!["- [supersedes K-1a2b3c4d] use gRPC".to_owned()],
            questions: vec![],
            ..result()
        };
        let events = step.shared(&answer, &shown);
        let verdicts: Vec<&ToldEvent> = events
            .iter()
            .map(|e| &e.event)
            .filter(|e| {
                matches!(
                    e,
                    ToldEvent::KnowledgeValidated(_) | ToldEvent::KnowledgeSuperseded(_)
                )
            })
            .collect();
        assert_eq!(verdicts.len(), 2, "{verdicts:#?}");
        let ToldEvent::KnowledgeValidated(confirmed) = verdicts[0] else {
            panic!("the confirmation first");
        };
        assert_eq!(confirmed.knowledge_id, shown[1].id);
        assert_eq!(confirmed.agent_id, step.scheduled.agent.id);
        assert_eq!(confirmed.step_id, step.scheduled.step.id);
        let ToldEvent::KnowledgeSuperseded(superseded) = verdicts[1] else {
            panic!("then the supersession");
        };
        assert_eq!(superseded.knowledge_id, shown[0].id);
        assert_eq!(superseded.reason, "use gRPC");
        let decisions = events
            .iter()
            .find_map(|e| match &e.event {
                ToldEvent::KnowledgeShared(k) if k.knowledge_type == KnowledgeType::Decision => {
                    Some(k.knowledge_id)
                }
                _ => None,
            })
            .unwrap();
        assert_eq!(
            superseded.superseded_by, decisions,
            "replaced by the decisions that carry the line"
        );
        // The same ids on a redelivery; none without knowledge sharing.
        assert_eq!(ids(&events), ids(&step.shared(&answer, &shown)));
        let quiet = self::step(false).shared(&answer, &shown);
        assert!(quiet.iter().all(|e| !matches!(
            e.event,
            ToldEvent::KnowledgeValidated(_) | ToldEvent::KnowledgeSuperseded(_)
        )));
    }

    #[test]
    fn marked_lines_are_shared_as_their_kind_with_tags() {
        let mut step = step(true);
        step.scheduled.step.required_skills = vec!["Security".to_owned(), "rust".to_owned()];
        let answer = StepResult {
            insights: vec![
                "- plain insight #Perf".to_owned(),
                "- [constraint] Tokens expire after 15 minutes #auth #security.".to_owned(),
                "- [Best-Practice]: rotate keys monthly".to_owned(),
                "- [resource] https://example.com/runbook".to_owned(),
                "- [constraint]".to_owned(),
            ],
            decisions: vec![],
            questions: vec![],
            ..result()
        };
        let shared: Vec<(KnowledgeType, String, String, Vec<String>)> = step
            .shared(&answer, &[])
            .into_iter()
            .filter_map(|e| match e.event {
                ToldEvent::KnowledgeShared(k) => {
                    Some((k.knowledge_type, k.title, k.content, k.tags))
                }
                _ => None,
            })
            .collect();
        let tags = |extra: &[&str]| {
            ["security", "rust"]
                .iter()
                .chain(extra)
                .map(|t| (*t).to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            shared,
            vec![
                (
                    KnowledgeType::Insight,
                    "Insights from Design".to_owned(),
                    // An empty marker marks nothing: the line stays an insight.
                    "- plain insight #Perf\n- [constraint]".to_owned(),
                    tags(&["perf"]),
                ),
                (
                    KnowledgeType::Constraint,
                    "Constraint from Design".to_owned(),
                    "Tokens expire after 15 minutes #auth #security.".to_owned(),
                    tags(&["auth"]),
                ),
                (
                    KnowledgeType::BestPractice,
                    "Best practice from Design".to_owned(),
                    "rotate keys monthly".to_owned(),
                    tags(&[]),
                ),
                (
                    KnowledgeType::Resource,
                    "Resource from Design".to_owned(),
                    "https://example.com/runbook".to_owned(),
                    tags(&[]),
                ),
            ]
        );
    }

    #[test]
    fn a_result_that_contradicts_a_shown_constraint_is_flagged_as_a_conflict() {
        let step = step(true);
        let constraint = KnowledgeItem {
            knowledge_type: "constraint".to_owned(),
            content: "No new dependencies this quarter".to_owned(),
            ..item(
                "0190a1b2-c3d4-7e5f-8a6b-00001a2b3c4d",
                "Constraint from Plan",
            )
        };
        let answer = StepResult {
            decisions: vec![
                "- [conflicts K-1a2b3c4d] the parser needs a new crate".to_owned(),
                "- [contradicts K-1a2b3c4d] said twice".to_owned(),
            ],
            insights: vec![],
            questions: vec![],
            ..result()
        };
        let conflicts: Vec<InteractionRecorded> = step
            .shared(&answer, std::slice::from_ref(&constraint))
            .into_iter()
            .filter_map(|e| match e.event {
                ToldEvent::InteractionRecorded(i) if i.context_data["conflict"] == true => Some(i),
                _ => None,
            })
            .collect();
        assert_eq!(conflicts.len(), 1, "one flag per item");
        let conflict = &conflicts[0];
        assert_eq!(conflict.interaction_type, InteractionType::Coordination);
        assert!(conflict.requires_response, "a conflict needs resolving");
        assert_eq!(conflict.context_data["knowledgeId"], json!(constraint.id));
        assert_eq!(conflict.context_data["knowledgeType"], "constraint");
        assert_eq!(
            conflict.context_data["reason"],
            "the parser needs a new crate"
        );
        assert!(
            conflict
                .message
                .contains("contradicts the team's constraint [K-1a2b3c4d] Constraint from Plan"),
            "{}",
            conflict.message
        );
    }

    #[test]
    fn the_completion_records_the_knowledge_used_and_hands_on_what_was_shared_and_passed_on() {
        let step = step(true);
        let used = vec![KnowledgeId::new(), KnowledgeId::new()];
        let shared = step.shared(&result(), &[]);
        let passed_on = SharedKnowledge {
            knowledge_id: KnowledgeId::new(),
            title: "Insights from Design".to_owned(),
            knowledge_type: KnowledgeType::Insight,
            content: "- earlier".to_owned(),
        };
        let Event::StepCompleted(done) = step
            .completed(
                result(),
                answered(),
                used.clone(),
                handed_on(
                    vec![passed_on.clone()],
                    &[passed_on.knowledge_id].into(),
                    &shared,
                ),
                shared.clone(),
                Duration::ZERO,
                Utc::now(),
            )
            .event
        else {
            panic!("a StepCompleted");
        };
        assert_eq!(done.knowledge_used, used);
        assert_eq!(done.told, shared, "what the step told its team, in order");
        let mut told: Vec<SharedKnowledge> = shared
            .iter()
            .filter_map(|told| match &told.event {
                ToldEvent::KnowledgeShared(knowledge) => Some(knowledge.into()),
                _ => None,
            })
            .collect();
        assert!(!told.is_empty(), "the fixture's result shares knowledge");
        told.push(passed_on);
        assert_eq!(
            done.knowledge_handed_on, told,
            "its own first, then what it passes on"
        );
    }

    #[test]
    fn a_step_hands_on_what_it_was_shown_once_and_not_what_it_replaced() {
        let step = step(true);
        let item = |content: &str| SharedKnowledge {
            knowledge_id: KnowledgeId::new(),
            title: "Insights from Design".to_owned(),
            knowledge_type: KnowledgeType::Insight,
            content: content.to_owned(),
        };
        let (kept, unseen, replaced) = (item("kept"), item("not shown"), item("replaced"));
        // A diamond hands the same item on twice.
        let handed = vec![kept.clone(), unseen.clone(), replaced.clone(), kept.clone()];
        let shown: HashSet<KnowledgeId> = [kept.knowledge_id, replaced.knowledge_id].into();
        let supersedes = step.told(
            "superseded",
            ToldEvent::KnowledgeSuperseded(KnowledgeSuperseded {
                knowledge_id: replaced.knowledge_id,
                superseded_by: KnowledgeId::new(),
                workflow_id: step.scheduled.workflow_id,
                execution_id: step.scheduled.execution_id,
                step_id: step.scheduled.step.id.clone(),
                agent_id: step.scheduled.agent.id,
                reason: "newer".to_owned(),
            }),
        );
        assert_eq!(handed_on(handed, &shown, &[supersedes]), vec![kept]);
    }

    #[test]
    fn recognises_deliveries_that_need_no_work() {
        let step = step(true);
        let s = &step.scheduled;
        let now = Utc::now();
        let completed = |attempt| {
            let mut e = step
                .completed(
                    result(),
                    answered(),
                    vec![],
                    vec![],
                    vec![],
                    Duration::ZERO,
                    now,
                )
                .event;
            if let Event::StepCompleted(c) = &mut e {
                c.attempt.number = attempt;
            }
            e
        };
        assert!(already_handled(s, None, &completed(2)).is_some());
        assert!(already_handled(s, None, &completed(3)).is_some());
        assert!(already_handled(s, None, &completed(1)).is_none());
        assert!(
            already_handled(s, None, &step.failed("x".to_owned(), true, None, now).event).is_some()
        );
        let timed_out = Event::StepTimedOut(StepTimedOut {
            attempt: StepAttempt::of(s),
            timeout_minutes: 1.0,
        });
        assert!(already_handled(s, None, &timed_out).is_some());
        // A started attempt that never finished (the worker died) is run again.
        assert!(already_handled(s, None, &step.started(now).event).is_none());
        assert!(already_handled(s, None, &Event::StepScheduled(Box::new(s.clone()))).is_none());
        let later = StepScheduled {
            attempt: 3,
            ..s.clone()
        };
        assert!(already_handled(s, None, &Event::StepScheduled(Box::new(later))).is_some());

        // Waiting for the provider: only the delivery the latest wait's schedule brings runs.
        let first = next_wait(None, None, Duration::from_secs(60), now, 0.5).unwrap();
        let waiting = step.deferred("503".to_owned(), &first, now).event;
        assert!(already_handled(s, None, &waiting).is_some());
        let brought = Waited {
            since: first.since,
            deferrals: first.deferral,
        };
        assert!(already_handled(s, Some(brought), &waiting).is_none());
        let other_attempt = StepScheduled {
            attempt: 3,
            ..s.clone()
        };
        assert!(already_handled(&other_attempt, None, &waiting).is_none());
    }

    /// A saga or a re-plan stored after the scheduling gives it up; one stored before it (the
    /// undoings', the re-planning's and the new plan's own steps) does not.
    #[test]
    fn a_saga_or_a_re_plan_after_a_scheduling_gives_it_up() {
        let sample = |wanted: fn(&Event) -> bool| {
            cadre_proto::samples::every_event()
                .into_iter()
                .find(wanted)
                .unwrap()
        };
        let saga = sample(|e| matches!(e, Event::SagaStarted(_)));
        let replan = sample(|e| matches!(e, Event::ExecutionReplanned(_)));
        let step = step(false);
        let s = &step.scheduled;
        for after in [&saga, &replan] {
            assert!(
                given_up(s, Some(10), &[(11, after.clone())]).is_some(),
                "{after:?}"
            );
            assert!(
                given_up(s, Some(10), &[(9, after.clone())]).is_none(),
                "{after:?}"
            );
        }
        // A copy that does not say where it is stored: where the step's latest scheduling of
        // this attempt is, if it is this attempt's.
        let this = Event::StepScheduled(Box::new(s.clone()));
        assert!(given_up(s, None, &[(10, this.clone()), (11, replan.clone())]).is_some());
        assert!(given_up(s, None, &[(12, this), (11, replan.clone())]).is_none());
        let later = Event::StepScheduled(Box::new(StepScheduled {
            attempt: s.attempt + 1,
            ..s.clone()
        }));
        assert!(
            given_up(s, None, &[(10, later), (11, replan)]).is_none(),
            "its place is unknown"
        );
    }

    #[test]
    fn a_status_report_names_its_attempt_and_asks_for_support() {
        let mut step = step(true);
        let timeout_at = Utc::now() + chrono::Duration::minutes(5);
        step.scheduled.timeout_at = Some(timeout_at);
        let teammate = cadre_proto::AgentId::new();
        let asked = vec![SupportRequest {
            from_agent: Some(teammate),
            reason: "Which schema version?".to_owned(),
            urgency: cadre_proto::events::Urgency::High,
        }];
        let report = |label: &str, at| {
            step.status_reported(
                label,
                140,
                vec!["waiting for an answer".to_owned()],
                asked.clone(),
                at,
            )
        };
        let (early, late) = (Utc::now(), Utc::now() + chrono::Duration::seconds(30));
        let first = report("question/1", early);
        assert_eq!(first.meta.id, report("question/1", late).meta.id);
        assert_ne!(first.meta.id, report("question/2", early).meta.id);
        assert_ne!(first.meta.id, step.started(early).meta.id);
        let Event::AgentStatusReported(status) = first.event else {
            panic!("a status report");
        };
        assert_eq!(status.agent_id, step.scheduled.agent.id);
        assert_eq!(status.current_task, Some(StepAttempt::of(&step.scheduled)));
        assert_eq!(status.progress, 100, "a percentage");
        assert_eq!(status.estimated_completion, Some(timeout_at));
        assert_eq!(status.blockers, ["waiting for an answer"]);
        assert_eq!(status.requested_support, asked);
    }

    #[test]
    fn the_start_carries_the_attempts_time_out() {
        let mut step = step(true);
        let Event::StepStarted(started) = step.started(Utc::now()).event else {
            panic!("a StepStarted");
        };
        assert_eq!(started.timeout_at, None);
        let timeout_at = Utc::now() + chrono::Duration::minutes(10);
        step.scheduled.timeout_at = Some(timeout_at);
        let Event::StepStarted(started) = step.started(Utc::now()).event else {
            panic!("a StepStarted");
        };
        assert_eq!(started.timeout_at, Some(timeout_at));
    }

    #[test]
    fn retry_delays_grow_and_are_capped() {
        let delays: Vec<u64> = (1..=8).map(|d| retry_delay(d).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(retry_delay(0), Duration::from_secs(1));
        assert_eq!(retry_delay(i64::MAX), MAX_RETRY_DELAY);
    }

    #[test]
    fn a_provider_that_says_when_is_called_no_sooner() {
        let now = Utc::now();
        let budget = Duration::from_secs(600);
        let hint = Some(Duration::from_secs(30));
        for jitter in [0.0, 0.5, 0.999] {
            let wait = next_wait(None, hint, budget, now, jitter).unwrap();
            let delay = (wait.retry_at - now).to_std().unwrap();
            assert!(delay >= Duration::from_secs(30), "{delay:?}");
            assert!(delay <= Duration::from_secs(33), "{delay:?}");
            assert_eq!((wait.deferral, wait.since), (1, now));
        }
        // A hint under a second still waits a second: schedules fire on whole seconds.
        let wait = next_wait(None, Some(Duration::from_millis(20)), budget, now, 0.0).unwrap();
        assert_eq!(wait.retry_at - now, chrono::Duration::seconds(1));
    }

    #[test]
    fn waits_without_a_hint_double_with_jitter_and_the_budget_is_time() {
        let start = Utc::now();
        let budget = Duration::from_secs(60);
        let mut waited = None;
        let mut now = start;
        let mut delays = Vec::new();
        while let Some(wait) = next_wait(waited, None, budget, now, 0.999) {
            assert_eq!(wait.since, start);
            delays.push((wait.retry_at - now).num_milliseconds());
            waited = Some(Waited {
                since: wait.since,
                deferrals: wait.deferral,
            });
            now = wait.retry_at;
        }
        // 1, 2, 4, 8, 16 s (less a hair of jitter): 31 s; the next, 32 s, would pass 60 s.
        assert_eq!(delays.len(), 5, "{delays:?}");
        assert!(delays.windows(2).all(|d| d[1] > d[0]), "{delays:?}");
        assert!((now - start).to_std().unwrap() <= budget);
        // Half the backoff at least, whatever the jitter.
        let low = next_wait(None, None, budget, start, 0.0).unwrap();
        assert_eq!(low.retry_at - start, chrono::Duration::milliseconds(500));
        // A hint beyond the budget gives up at once.
        assert!(next_wait(None, Some(Duration::from_secs(61)), budget, start, 0.0).is_none());
    }

    #[test]
    fn the_wait_travels_in_headers_and_each_deferral_is_one_event() {
        let now = Utc::now();
        let wait = next_wait(None, None, Duration::from_secs(60), now, 0.3).unwrap();
        let mut headers = async_nats::HeaderMap::new();
        for (name, value) in wait.headers() {
            headers.insert(name, value.as_str());
        }
        let waited = Waited::from_headers(Some(&headers)).unwrap();
        assert_eq!(waited.deferrals, 1);
        assert_eq!(waited.since, now);
        assert_eq!(Waited::from_headers(None), None);
        assert_eq!(
            Waited::from_headers(Some(&async_nats::HeaderMap::new())),
            None
        );

        let step = step(true);
        let second = next_wait(Some(waited), None, Duration::from_secs(60), now, 0.3).unwrap();
        let first_id = step.deferred("429".to_owned(), &wait, now).meta.id;
        assert_eq!(
            first_id,
            step.deferred("503".to_owned(), &wait, now).meta.id
        );
        let Event::StepDeferred(deferred) = step.deferred("429".to_owned(), &second, now).event
        else {
            panic!("a deferral is a StepDeferred");
        };
        assert_eq!((deferred.deferral, deferred.waiting_since), (2, now));
        assert_ne!(
            first_id,
            step.deferred("429".to_owned(), &second, now).meta.id
        );
    }
}

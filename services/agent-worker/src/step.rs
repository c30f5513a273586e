//! What a worker records about a step, as data: the events it publishes and whether a delivery
//! still needs work. Pure, so redelivery behaviour is testable without a bus.
//!
//! Every event id is derived from the `StepScheduled` event id, so a second delivery of the same
//! step republishes identical ids and JetStream drops the copies.

use std::time::Duration;

use cadre_proto::events::{
    InteractionRecorded, KnowledgeShared, ReviewRequest, StepAttempt, StepCompleted, StepFailed,
    StepReviewed, StepScheduled, StepStarted,
};
use cadre_proto::model::{InteractionType, KnowledgeType, StepResult};
use cadre_proto::{Envelope, Event, EventId, KnowledgeId, TenantId};
use chrono::{DateTime, Utc};

/// The CloudEvents `source` of everything a worker publishes.
pub const SOURCE: &str = "/cadre/agent-worker";

/// The seed's default relevance of new knowledge.
const KNOWLEDGE_RELEVANCE: f64 = 1.0;

/// Longest delay before a step whose provider failed transiently is tried again.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

mod label {
    pub const STARTED: &str = "started";
    pub const QUESTIONS: &str = "interaction/questions";
    pub const INSIGHTS: &str = "knowledge/insights";
    pub const DECISIONS: &str = "knowledge/decisions";
    pub const INSIGHTS_ID: &str = "knowledge-id/insights";
    pub const DECISIONS_ID: &str = "knowledge-id/decisions";
    pub const COMPLETED: &str = "completed";
    pub const FEEDBACK: &str = "interaction/feedback";
    pub const REVIEWED: &str = "reviewed";
    pub const FAILED: &str = "failed";
}

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

    pub fn started(&self, now: DateTime<Utc>) -> Envelope {
        let s = &self.scheduled;
        self.envelope(
            label::STARTED,
            now,
            Event::StepStarted(StepStarted {
                attempt: StepAttempt::of(s),
                scheduled_event_id: self.event_id,
            }),
        )
    }

    /// What the agent tells the team before it reports the step done: its questions, to
    /// everyone, and (when the workflow shares knowledge) its insights and decisions, as the
    /// seed's `shareKnowledge` did.
    pub fn shared(&self, result: &StepResult, now: DateTime<Utc>) -> Vec<Envelope> {
        let s = &self.scheduled;
        let mut events = Vec::new();
        if !result.questions.is_empty() {
            events.push(self.envelope(
                label::QUESTIONS,
                now,
                Event::InteractionRecorded(InteractionRecorded {
                    execution_id: s.execution_id,
                    workflow_id: s.workflow_id,
                    from_agent_id: s.agent.id,
                    to_agent_id: None,
                    interaction_type: InteractionType::Question,
                    message: format!(
                        "Questions/concerns from {} on {}:\n{}",
                        s.agent.name,
                        s.step.name,
                        result.questions.join("\n")
                    ),
                    context_data: serde_json::json!({
                        "stepId": s.step.id,
                        "attempt": s.attempt,
                        "questions": result.questions,
                    }),
                    related_step_id: Some(s.step.id.clone()),
                    requires_response: true,
                }),
            ));
        }
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
            for (lines, heading, knowledge_type, event_label, id_label) in kinds {
                if lines.is_empty() {
                    continue;
                }
                events.push(self.envelope(
                    event_label,
                    now,
                    Event::KnowledgeShared(KnowledgeShared {
                        knowledge_id: KnowledgeId(self.event_id.child(id_label).0),
                        workflow_id: s.workflow_id,
                        execution_id: s.execution_id,
                        step_id: s.step.id.clone(),
                        title: format!("{heading} from {}", s.step.name),
                        content: lines.join("\n"),
                        knowledge_type,
                        created_by_agent_id: s.agent.id,
                        relevance_score: KNOWLEDGE_RELEVANCE,
                        tags: Vec::new(),
                    }),
                ));
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
                }),
            ),
        ]
    }

    pub fn completed(
        &self,
        result: StepResult,
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
                provider: s.agent.provider.clone(),
                model: s.agent.model.clone(),
                duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
            })),
        )
    }

    pub fn failed(&self, error: String, now: DateTime<Utc>) -> Envelope {
        let s = &self.scheduled;
        self.envelope(
            label::FAILED,
            now,
            Event::StepFailed(StepFailed {
                attempt: StepAttempt::of(s),
                error,
            }),
        )
    }
}

/// Why a delivery of `scheduled` needs no work, given one of the latest events of its step:
/// the attempt already ended (an earlier delivery finished but its ack was lost), or a later
/// attempt replaced it.
pub fn already_handled(scheduled: &StepScheduled, latest: &Event) -> Option<String> {
    let attempt = scheduled.attempt;
    match latest {
        Event::StepCompleted(done) if done.attempt.number >= attempt => {
            Some(format!("attempt {} already completed", done.attempt.number))
        }
        Event::StepFailed(failed) if failed.attempt.number >= attempt => {
            Some(format!("attempt {} already failed", failed.attempt.number))
        }
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

/// How long to wait before delivery `delivered + 1`: 1 s, 2 s, 4 s, ... up to a minute.
pub fn retry_delay(delivered: i64) -> Duration {
    let exponent = u32::try_from(delivered.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
    Duration::from_secs(1u64 << exponent).min(MAX_RETRY_DELAY)
}

#[cfg(test)]
mod tests {
    use cadre_proto::events::{AssignmentReason, StepTimedOut};
    use cadre_proto::model::{TokenUsage, WorkflowStep};
    use cadre_proto::{ExecutionId, WorkflowId};

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
                knowledge_watermark: 7,
                input: None,
                review: None,
                feedback: None,
                timeout_at: None,
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

    fn ids(events: &[Envelope]) -> Vec<EventId> {
        events.iter().map(|e| e.meta.id).collect()
    }

    #[test]
    fn a_redelivery_republishes_the_same_ids() {
        let step = step(true);
        let (early, late) = (Utc::now(), Utc::now() + chrono::Duration::seconds(90));
        assert_eq!(step.started(early).meta.id, step.started(late).meta.id);
        assert_eq!(
            ids(&step.shared(&result(), early)),
            ids(&step.shared(&result(), late))
        );
        let knowledge_ids = |events: Vec<Envelope>| -> Vec<KnowledgeId> {
            events
                .into_iter()
                .filter_map(|e| match e.event {
                    Event::KnowledgeShared(k) => Some(k.knowledge_id),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(
            knowledge_ids(step.shared(&result(), early)),
            knowledge_ids(step.shared(&result(), late))
        );
        let completed = |at| {
            step.completed(result(), Duration::from_millis(5), at)
                .meta
                .id
        };
        assert_eq!(completed(early), completed(late));
        assert_eq!(
            step.failed("x".to_owned(), early).meta.id,
            step.failed("y".to_owned(), late).meta.id
        );

        // Distinct events get distinct ids, and another step gets others.
        let mut all = ids(&step.shared(&result(), early));
        all.extend([
            step.started(early).meta.id,
            completed(early),
            step.failed("x".to_owned(), early).meta.id,
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
        let events = step.shared(&result(), Utc::now());
        assert_eq!(events.len(), 3);
        let Event::InteractionRecorded(question) = &events[0].event else {
            panic!("questions first");
        };
        assert_eq!(question.interaction_type, InteractionType::Question);
        assert!(question.requires_response);
        assert_eq!(question.to_agent_id, None);
        assert!(question.message.contains("- q1"));
        let Event::KnowledgeShared(insights) = &events[1].event else {
            panic!("insights second");
        };
        assert_eq!(insights.title, "Insights from Design");
        assert_eq!(insights.content, "- i1\n- i2");
        assert_eq!(insights.knowledge_type, KnowledgeType::Insight);
        let Event::KnowledgeShared(decisions) = &events[2].event else {
            panic!("decisions third");
        };
        assert_eq!(decisions.title, "Decisions from Design");
        assert_eq!(decisions.knowledge_type, KnowledgeType::Decision);
        for event in &events {
            assert_eq!(event.meta.source, SOURCE);
            assert_eq!(event.meta.tenant, step.tenant);
        }
    }

    #[test]
    fn shares_only_what_there_is_and_what_the_workflow_allows() {
        let quiet = StepResult {
            insights: vec![],
            questions: vec![],
            ..result()
        };
        let events = step(true).shared(&quiet, Utc::now());
        assert_eq!(events.len(), 1);
        assert!(
            matches!(&events[0].event, Event::KnowledgeShared(k) if k.knowledge_type == KnowledgeType::Decision)
        );

        let events = step(false).shared(&result(), Utc::now());
        assert_eq!(events.len(), 1);
        assert!(matches!(events[0].event, Event::InteractionRecorded(_)));
    }

    #[test]
    fn recognises_deliveries_that_need_no_work() {
        let step = step(true);
        let s = &step.scheduled;
        let now = Utc::now();
        let completed = |attempt| {
            let mut e = step.completed(result(), Duration::ZERO, now).event;
            if let Event::StepCompleted(c) = &mut e {
                c.attempt.number = attempt;
            }
            e
        };
        assert!(already_handled(s, &completed(2)).is_some());
        assert!(already_handled(s, &completed(3)).is_some());
        assert!(already_handled(s, &completed(1)).is_none());
        assert!(already_handled(s, &step.failed("x".to_owned(), now).event).is_some());
        let timed_out = Event::StepTimedOut(StepTimedOut {
            attempt: StepAttempt::of(s),
            timeout_minutes: 1.0,
        });
        assert!(already_handled(s, &timed_out).is_some());
        // A started attempt that never finished (the worker died) is run again.
        assert!(already_handled(s, &step.started(now).event).is_none());
        assert!(already_handled(s, &Event::StepScheduled(Box::new(s.clone()))).is_none());
        let later = StepScheduled {
            attempt: 3,
            ..s.clone()
        };
        assert!(already_handled(s, &Event::StepScheduled(Box::new(later))).is_some());
    }

    #[test]
    fn retry_delays_grow_and_are_capped() {
        let delays: Vec<u64> = (1..=8).map(|d| retry_delay(d).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(retry_delay(0), Duration::from_secs(1));
        assert_eq!(retry_delay(i64::MAX), MAX_RETRY_DELAY);
    }
}

//! What Cadre measures about how agents and teams work, and the scores it derives from the
//! measurements. Each score is defined here once, as a function of counted facts: the API serves
//! them (from counts over the projector's read models) and the alert decider ([`super::alerts`])
//! watches the same definitions. A score with no facts behind it is `None` (null in the API),
//! never a default.
//!
//! The facts, as the events record them:
//! - an **attempt** ended when its first outcome was recorded: `StepCompleted`, `StepReviewed`
//!   (a reviewer's attempt), `StepFailed` or `StepTimedOut`. A later report of the same attempt
//!   (a worker finishing after its time-out) is ignored, as the coordinator ignores it.
//! - a **task** is a step of a run handed to an agent (`StepScheduled`, not a review), once per
//!   step, run and agent. It began when its first attempt was handed out and is completed at the
//!   agent's first `StepCompleted` of it; its **estimate** is the step's `timeoutMinutes` (the
//!   same figure handoffs give as `estimatedTime`; a step declares no other). A task is
//!   **escalated** when a `StepEscalated` names a failed attempt of the agent's (approvals are
//!   not failures).
//! - a **review** is a `StepReviewed`: it counts for the author of the work reviewed.
//! - a **cost** is the `costUsd` of a counted `StepCompleted` (absent when the model has no
//!   price): it counts for the agent that completed the attempt.
//! - a **question** is one handed to a teammate (`QuestionAssigned`), answered when the teammate
//!   gave an answer (`QuestionAnswered` with one); a **handoff** is one of a `StepScheduled`'s
//!   handing agents (a `TaskHandedOff` in older logs), completed when the receiving agent
//!   completed the task.
//!
//! The seed's `userSatisfaction` is left out: no event records what a user thought of the work,
//! so there is nothing to measure it from.

use std::collections::BTreeMap;

use cadre_proto::events::AgentRecord;
use cadre_proto::model::StepType;

/// `part` of `whole` as a fraction; `None` when there is no whole.
fn share(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// 10 × the share of the requests between agents that were fulfilled: questions answered and
/// handoffs whose task the receiving agent completed, of all questions and handoffs.
fn collaboration(answered: u64, asked: u64, handoffs_completed: u64, handoffs: u64) -> Option<f64> {
    share(answered + handoffs_completed, asked + handoffs).map(|s| 10.0 * s)
}

/// 10 × the share of reviews that approved the work.
fn quality(approvals: u64, reviews: u64) -> Option<f64> {
    share(approvals, reviews).map(|s| 10.0 * s)
}

/// Percent of the estimates that completed tasks took: 100 is exactly on estimate.
fn time_against_estimate(actual_seconds: f64, estimate_seconds: f64, tasks: u64) -> Option<f64> {
    (tasks > 0 && estimate_seconds > 0.0).then(|| 100.0 * actual_seconds / estimate_seconds)
}

/// One agent's facts (seed 002's `AgentPerformanceMetrics` is derived from them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentFacts {
    /// Attempts the agent ended (completed, reviewed, failed or timed out).
    pub attempts: u64,
    /// Of them, failed (`StepFailed`).
    pub failed: u64,
    /// Of them, timed out (`StepTimedOut`).
    pub timed_out: u64,
    /// Tasks handed to the agent.
    pub tasks: u64,
    pub tasks_completed: u64,
    /// Seconds from each completed task's first handout to its completion, summed.
    pub completion_seconds: f64,
    /// Completed tasks whose step has an estimate.
    pub estimated_tasks: u64,
    /// Seconds those tasks took, summed.
    pub estimated_actual_seconds: f64,
    /// Their estimates in seconds, summed.
    pub estimate_seconds: f64,
    /// Tasks escalated, by the step's type.
    pub escalations_by_type: BTreeMap<StepType, u64>,
    /// Reviews of the agent's work, and how many approved it.
    pub reviews: u64,
    pub approvals: u64,
    /// Questions handed to the agent, and how many it answered.
    pub questions_received: u64,
    pub questions_answered: u64,
    /// Handoffs to the agent, and how many of their tasks it completed.
    pub handoffs_received: u64,
    pub handoffs_completed: u64,
    /// Completed attempts (`StepCompleted`) that carried a cost, and their costs in US dollars,
    /// summed.
    pub costed_completions: u64,
    pub completion_cost_usd: f64,
}

impl AgentFacts {
    /// Ended attempts that did not fail or time out.
    pub fn succeeded(&self) -> u64 {
        self.attempts.saturating_sub(self.failed + self.timed_out)
    }

    pub fn tasks_escalated(&self) -> u64 {
        self.escalations_by_type.values().sum()
    }

    /// Succeeded / ended attempts, 0 to 1.
    pub fn success_share(&self) -> Option<f64> {
        share(self.succeeded(), self.attempts)
    }

    /// `taskSuccess`, percent: succeeded / ended attempts.
    pub fn task_success(&self) -> Option<f64> {
        self.success_share().map(|s| 100.0 * s)
    }

    /// Percent of ended attempts that failed or timed out (100 − `taskSuccess`).
    pub fn failure_rate(&self) -> Option<f64> {
        share(self.failed + self.timed_out, self.attempts).map(|s| 100.0 * s)
    }

    /// `avgCompletionTime`, minutes: from a task's first handout to its completion, averaged
    /// over the completed tasks.
    pub fn average_completion_minutes(&self) -> Option<f64> {
        (self.tasks_completed > 0)
            .then(|| self.completion_seconds / self.tasks_completed as f64 / 60.0)
    }

    /// Percent of their estimates the completed tasks with an estimate took, together.
    pub fn time_against_estimate(&self) -> Option<f64> {
        time_against_estimate(
            self.estimated_actual_seconds,
            self.estimate_seconds,
            self.estimated_tasks,
        )
    }

    /// `escalationRate`, percent: escalated / handed tasks.
    pub fn escalation_rate(&self) -> Option<f64> {
        share(self.tasks_escalated(), self.tasks).map(|s| 100.0 * s)
    }

    /// `qualityScore`, 0 to 10: 10 × the share of reviews of its work that approved it.
    pub fn quality_score(&self) -> Option<f64> {
        quality(self.approvals, self.reviews)
    }

    /// The share of reviews of its work that approved it, 0 to 1.
    pub fn review_pass_rate(&self) -> Option<f64> {
        share(self.approvals, self.reviews)
    }

    /// US dollars per completed attempt, averaged over those that carried a cost.
    pub fn average_cost_usd(&self) -> Option<f64> {
        (self.costed_completions > 0)
            .then(|| self.completion_cost_usd / self.costed_completions as f64)
    }

    /// The record assignment weighs (recorded in `ExecutionStarted.records`).
    pub fn record(&self) -> AgentRecord {
        AgentRecord {
            attempts: self.attempts,
            task_success: self.success_share(),
            reviews: self.reviews,
            review_pass_rate: self.review_pass_rate(),
            tasks_completed: self.tasks_completed,
            average_completion_minutes: self.average_completion_minutes(),
            costed_completions: self.costed_completions,
            average_cost_usd: self.average_cost_usd(),
        }
    }

    /// `collaborationScore`, 0 to 10: 10 × the share of the questions put to it that it
    /// answered and of the tasks handed off to it that it completed.
    pub fn collaboration_score(&self) -> Option<f64> {
        collaboration(
            self.questions_answered,
            self.questions_received,
            self.handoffs_completed,
            self.handoffs_received,
        )
    }
}

/// A run's, or all of a workflow's runs', facts (the seed's `CollaborationMetrics` is derived
/// from them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TeamFacts {
    /// Entries of the interaction log (`GET /v1/executions/{id}/interactions`).
    pub interactions: u64,
    /// Questions handed to teammates, how many were answered, and the seconds from each
    /// question to its answer, summed over the answered ones.
    pub questions: u64,
    pub answers: u64,
    pub response_seconds: f64,
    /// Knowledge items shared (`KnowledgeShared`).
    pub knowledge_items: u64,
    pub handoffs: u64,
    pub handoffs_completed: u64,
    pub reviews: u64,
    pub approvals: u64,
    /// Ended attempts, and how many failed or timed out.
    pub attempts: u64,
    pub failed_attempts: u64,
    pub tasks_completed: u64,
    /// Completed tasks with an estimate, the seconds they took and their estimates, summed.
    pub estimated_tasks: u64,
    pub estimated_actual_seconds: f64,
    pub estimate_seconds: f64,
}

impl TeamFacts {
    /// `averageResponseTime`, minutes: from a question being handed to a teammate to its
    /// answer, averaged over the answered questions.
    pub fn average_response_minutes(&self) -> Option<f64> {
        (self.answers > 0).then(|| self.response_seconds / self.answers as f64 / 60.0)
    }

    /// Percent of their estimates the completed tasks with an estimate took, together.
    pub fn time_against_estimate(&self) -> Option<f64> {
        time_against_estimate(
            self.estimated_actual_seconds,
            self.estimate_seconds,
            self.estimated_tasks,
        )
    }

    /// `efficiencyRating`, 0 to 10: 10 when the tasks took at most their estimates together,
    /// else 10 × estimate / time taken (5 when they took twice as long).
    pub fn efficiency_rating(&self) -> Option<f64> {
        self.time_against_estimate().map(|percent| {
            if percent <= 100.0 {
                10.0
            } else {
                1000.0 / percent
            }
        })
    }

    /// `qualityScore`, 0 to 10: 10 × the share of reviews that approved the work.
    pub fn quality_score(&self) -> Option<f64> {
        quality(self.approvals, self.reviews)
    }

    /// `collaborationScore`, 0 to 10: 10 × the share of questions answered and of handoffs
    /// whose task the receiving agent completed.
    pub fn collaboration_score(&self) -> Option<f64> {
        collaboration(
            self.answers,
            self.questions,
            self.handoffs_completed,
            self.handoffs,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_score_without_facts_is_none_not_a_default() {
        let agent = AgentFacts::default();
        assert_eq!(agent.task_success(), None);
        assert_eq!(agent.failure_rate(), None);
        assert_eq!(agent.average_completion_minutes(), None);
        assert_eq!(agent.time_against_estimate(), None);
        assert_eq!(agent.escalation_rate(), None);
        assert_eq!(agent.quality_score(), None);
        assert_eq!(agent.collaboration_score(), None);
        assert_eq!(agent.average_cost_usd(), None);
        assert_eq!(
            agent.record(),
            AgentRecord::default(),
            "every figure of the record is absent"
        );
        let team = TeamFacts::default();
        assert_eq!(team.average_response_minutes(), None);
        assert_eq!(team.efficiency_rating(), None);
        assert_eq!(team.quality_score(), None);
        assert_eq!(team.collaboration_score(), None);
    }

    #[test]
    fn scores_follow_their_definitions() {
        let agent = AgentFacts {
            attempts: 10,
            failed: 2,
            timed_out: 1,
            tasks: 8,
            tasks_completed: 4,
            completion_seconds: 480.0,
            estimated_tasks: 2,
            estimated_actual_seconds: 900.0,
            estimate_seconds: 600.0,
            escalations_by_type: [(StepType::Review, 2)].into(),
            reviews: 4,
            approvals: 3,
            questions_received: 3,
            questions_answered: 2,
            handoffs_received: 1,
            handoffs_completed: 1,
            costed_completions: 2,
            completion_cost_usd: 0.5,
        };
        assert_eq!(agent.succeeded(), 7);
        assert_eq!(agent.task_success(), Some(70.0));
        assert_eq!(agent.failure_rate(), Some(30.0));
        assert_eq!(agent.average_completion_minutes(), Some(2.0));
        assert_eq!(agent.time_against_estimate(), Some(150.0));
        assert_eq!(agent.escalation_rate(), Some(25.0));
        assert_eq!(agent.quality_score(), Some(7.5));
        assert_eq!(agent.collaboration_score(), Some(7.5));
        assert_eq!(agent.average_cost_usd(), Some(0.25));
        assert_eq!(
            agent.record(),
            AgentRecord {
                attempts: 10,
                task_success: Some(0.7),
                reviews: 4,
                review_pass_rate: Some(0.75),
                tasks_completed: 4,
                average_completion_minutes: Some(2.0),
                costed_completions: 2,
                average_cost_usd: Some(0.25),
            }
        );

        let team = TeamFacts {
            answers: 2,
            questions: 4,
            response_seconds: 240.0,
            handoffs: 4,
            handoffs_completed: 4,
            reviews: 5,
            approvals: 1,
            estimated_tasks: 3,
            estimated_actual_seconds: 1200.0,
            estimate_seconds: 600.0,
            ..TeamFacts::default()
        };
        assert_eq!(team.average_response_minutes(), Some(2.0));
        assert_eq!(team.time_against_estimate(), Some(200.0));
        assert_eq!(team.efficiency_rating(), Some(5.0));
        assert_eq!(team.quality_score(), Some(2.0));
        assert_eq!(team.collaboration_score(), Some(7.5));
        let on_time = TeamFacts {
            estimated_actual_seconds: 60.0,
            ..team
        };
        assert_eq!(on_time.efficiency_rating(), Some(10.0));
    }
}

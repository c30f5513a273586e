//! Durable timers, as JetStream message schedules (ADR-51) in the timers stream.
//!
//! A timer is one schedule message on its own subject
//! `cadre.timers.<tenant>.schedule.<scope>.<key>` (the scope is the execution, or for a
//! workflow's schedule the workflow), published with `Nats-Schedule: @at <RFC 3339 time>` (once)
//! or a cron expression (repeating), and `Nats-Schedule-Target` =
//! `cadre.timers.<tenant>.fired.<scope>.<key>`. When it is due the server publishes the body to
//! the target, and the coordinator's inbox hands it to the execution's decider, or
//! starts a run of the scheduled workflow. Ticks of a schedule that fire while no coordinator
//! consumes them coalesce into one (one message per subject).
//! Arming a timer again replaces it (the last message of a subject is the schedule); cancelling
//! one purges its subject. A timer that fires late, twice, or after what it guards has ended
//! changes nothing: the decider checks it against the execution's state.

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{ExecutionId, StepId, TenantId, WorkflowId};

/// The first tokens of every timer subject.
pub const PREFIX: &str = "cadre.timers";
/// Every subject of the timers stream.
pub const ALL: &str = "cadre.timers.>";
/// Every fired timer, of every tenant: what the coordinator consumes (through its partitioned
/// inbox, keyed by the scope: the second wildcard).
pub const ALL_FIRED: &str = "cadre.timers.*.fired.*.>";

/// What a timer guards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    tag = "kind"
)]
pub enum Timer {
    /// The execution's running attempts that have a time-out (`timeoutMinutes`) are checked:
    /// `due`, the time it was armed for (the earliest deadline when it was armed; that attempt
    /// may have ended since), has come. One timer guards every attempt of an execution (see
    /// `StepScheduled::arms_step_timer`).
    StepDeadlines {
        workflow_id: WorkflowId,
        execution_id: ExecutionId,
        due: DateTime<Utc>,
    },
    /// One attempt of a step must end by the time the timer fires: armed by releases that
    /// armed one timer per attempt, it may still fire for an attempt they handed out.
    StepTimeout {
        workflow_id: WorkflowId,
        execution_id: ExecutionId,
        step_id: StepId,
        attempt: u32,
    },
    /// The execution must end by the time the timer fires (`maxExecutionTime`).
    ExecutionDeadline {
        workflow_id: WorkflowId,
        execution_id: ExecutionId,
    },
    /// The run has gone on for its workflow's `escalation.afterMinutes`: a person must look.
    EscalationDue {
        workflow_id: WorkflowId,
        execution_id: ExecutionId,
    },
    /// The workflow's `triggers.schedule` ticked: start a run.
    Schedule { workflow_id: WorkflowId },
    /// A failed step is tried again when the timer fires (its retry backoff).
    StepRetry {
        workflow_id: WorkflowId,
        execution_id: ExecutionId,
        step_id: StepId,
        /// The attempt that failed.
        attempt: u32,
    },
    /// The questions an attempt of a step asked its teammates must be answered by the time the
    /// timer fires (`coordination.questions.deadlineSeconds`).
    QuestionDeadline {
        workflow_id: WorkflowId,
        execution_id: ExecutionId,
        step_id: StepId,
        attempt: u32,
    },
}

/// When a timer fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum When {
    /// Once, at this time.
    At(DateTime<Utc>),
    /// On every tick of this cron expression (6 fields, seconds first, UTC; or `@hourly`,
    /// `@daily`, `@every 5m` ...).
    Cron(String),
}

impl When {
    /// The `Nats-Schedule` header value.
    pub fn header(&self) -> String {
        match self {
            Self::At(time) => at(*time),
            Self::Cron(expression) => expression.clone(),
        }
    }
}

/// The body of a schedule message, and so of the message it fires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TimerMessage {
    pub tenant: TenantId,
    pub timer: Timer,
}

impl Timer {
    /// The execution the timer guards; `None` for a workflow's schedule.
    pub fn execution_id(&self) -> Option<ExecutionId> {
        match self {
            Self::StepTimeout { execution_id, .. }
            | Self::StepDeadlines { execution_id, .. }
            | Self::ExecutionDeadline { execution_id, .. }
            | Self::EscalationDue { execution_id, .. }
            | Self::QuestionDeadline { execution_id, .. }
            | Self::StepRetry { execution_id, .. } => Some(*execution_id),
            Self::Schedule { .. } => None,
        }
    }

    pub fn workflow_id(&self) -> WorkflowId {
        match self {
            Self::StepTimeout { workflow_id, .. }
            | Self::StepDeadlines { workflow_id, .. }
            | Self::ExecutionDeadline { workflow_id, .. }
            | Self::EscalationDue { workflow_id, .. }
            | Self::QuestionDeadline { workflow_id, .. }
            | Self::StepRetry { workflow_id, .. }
            | Self::Schedule { workflow_id } => *workflow_id,
        }
    }

    /// The id the timer's subjects are scoped by: its execution, else its workflow.
    fn scope(&self) -> String {
        self.execution_id()
            .map_or_else(|| self.workflow_id().to_string(), |e| e.to_string())
    }

    /// The timer's name within its execution: one schedule for the steps' time-outs, one per
    /// step for its retry or its questions (a later attempt re-arms it), one deadline.
    fn key(&self) -> String {
        match self {
            Self::StepTimeout { step_id, .. } => format!("step.{step_id}"),
            Self::StepDeadlines { .. } => "steps".to_owned(),
            Self::ExecutionDeadline { .. } => "deadline".to_owned(),
            Self::EscalationDue { .. } => "escalation".to_owned(),
            Self::Schedule { .. } => "schedule".to_owned(),
            Self::QuestionDeadline { step_id, .. } => format!("questions.{step_id}"),
            Self::StepRetry { step_id, .. } => format!("retry.{step_id}"),
        }
    }

    /// The subject holding the timer's schedule.
    pub fn schedule_subject(&self, tenant: &TenantId) -> String {
        format!("{PREFIX}.{tenant}.schedule.{}.{}", self.scope(), self.key())
    }

    /// Where the server publishes the timer when it is due.
    pub fn fired_subject(&self, tenant: &TenantId) -> String {
        format!("{PREFIX}.{tenant}.fired.{}.{}", self.scope(), self.key())
    }
}

/// The `Nats-Schedule` value that fires once at `at`, rounded up to the whole second (the
/// format has no fractions, and a timer must not fire early).
pub fn at(at: DateTime<Utc>) -> String {
    let whole = at.trunc_subsecs(0);
    let due = if whole < at {
        whole + chrono::TimeDelta::seconds(1)
    } else {
        whole
    };
    format!("@at {}", due.to_rfc3339_opts(SecondsFormat::Secs, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timer_has_its_own_schedule_and_target_subjects() {
        let t = TenantId::default_tenant();
        let (w, e) = (WorkflowId::new(), ExecutionId::new());
        let step = Timer::StepTimeout {
            workflow_id: w,
            execution_id: e,
            step_id: StepId::parse("review").unwrap(),
            attempt: 2,
        };
        let deadline = Timer::ExecutionDeadline {
            workflow_id: w,
            execution_id: e,
        };
        assert_eq!(
            step.schedule_subject(&t),
            format!("cadre.timers.{t}.schedule.{e}.step.review")
        );
        let steps = Timer::StepDeadlines {
            workflow_id: w,
            execution_id: e,
            due: Utc::now(),
        };
        assert_eq!(
            steps.schedule_subject(&t),
            format!("cadre.timers.{t}.schedule.{e}.steps"),
            "one schedule per execution, whenever it is due"
        );
        assert_eq!(
            deadline.fired_subject(&t),
            format!("cadre.timers.{t}.fired.{e}.deadline")
        );
        let body = serde_json::to_string(&TimerMessage {
            tenant: t.clone(),
            timer: step.clone(),
        })
        .unwrap();
        let back: TimerMessage = serde_json::from_str(&body).unwrap();
        assert_eq!(back.timer, step);
        let when = DateTime::parse_from_rfc3339("2026-11-29T21:00:05.250Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(at(when), "@at 2026-11-29T21:00:06Z");
    }
}

//! What a batch of stream messages does to the read models, decided without I/O.
//!
//! [`plan`] folds a batch in stream order into one change per row: several events for the same
//! execution or workflow become one patch, so that each read model (see [`crate::models`])
//! writes a whole batch with one set-based statement per kind of change. The routing below says,
//! projection by projection (see [`Projection`]), which read models each event changes; each
//! model's module says how. Events no read model reads (webhook subscriptions and deliveries,
//! which are read from the log itself; a retry coming due, which the next attempt's scheduling
//! says all about) fall through every projection.

use std::collections::HashSet;

use cadre_proto::events::{StepCompleted, ToldEvent};
use cadre_proto::{Envelope, Event};
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::incoming::Incoming;
use crate::models::executions::Outcome;
use crate::models::{
    agents, alerts, escalations, executions, handoffs, history, interactions, knowledge,
    rejections, status, tasks, templates, usage, workflows,
};
use crate::projection::Projection;

/// Every read model's changes from one batch.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// The batch's last stream sequence: the checkpoint once the plan is written.
    pub last_sequence: u64,
    /// The events that change a read model of the plan's projections, in stream order: what
    /// the projections must record as applied.
    pub applied: Vec<Applied>,
    pub agents: agents::Changes,
    pub workflows: workflows::Changes,
    pub executions: executions::Changes,
    pub interactions: interactions::Changes,
    pub knowledge: knowledge::Changes,
    pub usage: usage::Changes,
    pub handoffs: handoffs::Changes,
    pub escalations: escalations::Changes,
    pub status: status::Changes,
    pub templates: templates::Changes,
    pub tasks: tasks::Changes,
    pub history: history::Changes,
    pub alerts: alerts::Changes,
    pub rejections: rejections::Changes,
}

/// An event a projection applied.
#[derive(Debug)]
pub(crate) struct Applied {
    pub event_id: Uuid,
    pub tenant: String,
    pub sequence: i64,
}

/// Where a derived row came from.
pub(crate) struct Origin<'a> {
    pub event_id: Uuid,
    pub tenant: &'a str,
    pub at: DateTime<Utc>,
    /// The event's stream sequence: the order of the interaction log and of knowledge.
    pub sequence: i64,
    /// The row's place among the rows of one event, after `sequence`: 0 but for what a
    /// completion told (0, 1, ... in the order told) and the completion's own entry (last).
    pub position: i16,
}

/// What a step's completion told its team, each with the origin of the event it stands for:
/// its own id, and the completion's tenant, time and stream sequence. Read models apply each
/// as that event, so they hold the same rows as for a log that stored them apart.
fn told<'a>(
    origin: &'a Origin<'a>,
    e: &'a StepCompleted,
) -> impl Iterator<Item = (Origin<'a>, &'a ToldEvent)> {
    e.told.iter().zip(0..).map(|(told, position)| {
        (
            Origin {
                event_id: told.id.0,
                position,
                ..*origin
            },
            &told.event,
        )
    })
}

pub(crate) fn sequence(stream_sequence: u64) -> i64 {
    // Stream sequences count stored messages; they stay far below i64::MAX.
    i64::try_from(stream_sequence).unwrap_or(i64::MAX)
}

/// Folds `batch` into the row changes of `projections`. `fresh` holds the ids of the batch's
/// events that those projections had not applied before, if known (`None` takes every event
/// as new); any other event is a re-published copy and changes nothing.
pub(crate) fn plan(
    batch: &[Incoming],
    fresh: Option<&HashSet<Uuid>>,
    projections: &[Projection],
) -> Plan {
    let mut plan = Plan::default();
    let mut seen = HashSet::new();
    let records_rejections = projections.iter().any(|p| p.records_rejections());
    for incoming in batch {
        plan.last_sequence = plan.last_sequence.max(incoming.sequence);
        match &incoming.content {
            Ok(envelope) => {
                let id = envelope.meta.id.0;
                // `seen` catches two copies inside one batch: both ids were new to the table.
                if fresh.is_none_or(|fresh| fresh.contains(&id))
                    && seen.insert(id)
                    && plan.apply(projections, incoming.sequence, envelope)
                {
                    plan.applied.push(Applied {
                        event_id: id,
                        tenant: envelope.meta.tenant.as_str().to_owned(),
                        sequence: sequence(incoming.sequence),
                    });
                }
            }
            Err(unreadable) if records_rejections => plan.rejections.rejected(incoming, unreadable),
            Err(_) => {}
        }
    }
    plan
}

impl Plan {
    /// Hands the event to every read model of `projections` it changes; false if it changes
    /// none.
    fn apply(
        &mut self,
        projections: &[Projection],
        stream_sequence: u64,
        envelope: &Envelope,
    ) -> bool {
        let origin = &Origin {
            event_id: envelope.meta.id.0,
            tenant: envelope.meta.tenant.as_str(),
            at: envelope.meta.time,
            sequence: sequence(stream_sequence),
            position: 0,
        };
        let event = &envelope.event;
        let mut applied = false;
        for projection in projections {
            applied |= match projection {
                Projection::Runs => self.runs(origin, event),
                Projection::Interactions => self.interactions(origin, event),
                Projection::Knowledge => self.knowledge(origin, event),
                Projection::Catalog => self.catalog(origin, event),
            };
        }
        applied
    }

    /// Executions with their steps, escalations, agents' tasks and the execution history.
    fn runs(&mut self, origin: &Origin, event: &Event) -> bool {
        match event {
            Event::ExecutionStarted(e) => self.executions.started(origin, e),
            Event::StepScheduled(e) => {
                self.executions.step_scheduled(origin, e);
                self.tasks.step_scheduled(origin, e);
            }
            Event::StepStarted(e) => self.executions.step_started(origin, e),
            Event::StepDeferred(e) => self.executions.step_deferred(origin, e),
            Event::StepCompleted(e) => {
                self.executions.step_completed(origin, e);
                self.history.step_completed(origin, e);
            }
            Event::StepFailed(e) => {
                self.executions.step_failed(origin, e);
                self.history.step_failed(origin, e);
            }
            Event::StepTimedOut(e) => {
                self.executions.step_timed_out(origin, e);
                self.history.step_timed_out(origin, e);
            }
            Event::StepReviewed(e) => {
                self.executions.step_reviewed(origin, e);
                self.history.step_reviewed(origin, e);
            }
            Event::QuestionsAsked(e) => self.executions.questions_asked(origin, e),
            Event::StepRetryScheduled(e) => self.executions.retry_scheduled(origin, e),
            Event::StepEscalated(e) => {
                self.executions.step_escalated(origin, e);
                self.escalations.escalated(origin, e);
                self.history.step_escalated(origin, e);
            }
            Event::EscalationResolved(e) => {
                self.executions.escalation_resolved(origin, e);
                self.escalations.resolved(origin, e);
                self.history.escalation_resolved(origin, e);
            }
            Event::QuestionsExpired(e) => self.executions.questions_expired(origin, e),
            Event::StepSkipped(e) => {
                self.executions.step_skipped(origin, e);
                self.history.step_skipped(origin, e);
            }
            Event::VotesTallied(e) => self.executions.votes_tallied(origin, e),
            Event::ExecutionEscalated(e) => {
                self.executions.execution_escalated(origin, e.execution_id);
                self.escalations.execution_escalated(origin, e);
            }
            Event::ExecutionReplanned(e) => {
                self.executions.replanned(origin, e);
                self.escalations.replanned(origin, e);
            }
            Event::ExecutionPaused(e) => self.executions.paused(origin, e.execution_id),
            Event::ExecutionResumed(e) => self.executions.resumed(origin, e.execution_id),
            Event::ExecutionCompleted(e) => {
                self.executions.completed(origin, e);
                self.escalations
                    .execution_ended(origin, e.execution_id, Outcome::Completed);
                self.history.execution_ended(e.execution_id);
            }
            Event::ExecutionFailed(e) => {
                self.executions.failed(origin, e);
                self.escalations
                    .execution_ended(origin, e.execution_id, Outcome::Failed);
                self.history.execution_ended(e.execution_id);
            }
            Event::ExecutionCancelled(e) => {
                self.executions.cancelled(origin, e);
                self.escalations
                    .execution_ended(origin, e.execution_id, Outcome::Cancelled);
                self.history.execution_ended(e.execution_id);
            }
            _ => return false,
        }
        true
    }

    /// The interaction timeline and task handoffs.
    fn interactions(&mut self, origin: &Origin, event: &Event) -> bool {
        match event {
            Event::KnowledgeShared(e) => self.interactions.knowledge_shared(origin, e),
            Event::StepScheduled(e) => {
                self.interactions.step_scheduled(origin, e);
                self.handoffs.scheduled(origin, e);
            }
            Event::TaskHandedOff(e) => self.handoffs.handed_off(origin, e),
            Event::StepStarted(e) => self.interactions.step_started(origin, e),
            Event::StepDeferred(e) => self.interactions.step_deferred(origin, e),
            Event::InteractionRecorded(e) => self.interactions.recorded(origin, e),
            Event::StepCompleted(e) => {
                for (origin, told) in told(origin, e) {
                    match told {
                        ToldEvent::InteractionRecorded(t) => self.interactions.recorded(&origin, t),
                        ToldEvent::KnowledgeShared(t) => {
                            self.interactions.knowledge_shared(&origin, t);
                        }
                        ToldEvent::KnowledgeValidated(_) | ToldEvent::KnowledgeSuperseded(_) => {}
                    }
                }
                // After what it told, as the log that stored those apart had it.
                let position = i16::try_from(e.told.len()).unwrap_or(i16::MAX);
                self.interactions.step_completed(
                    &Origin {
                        position,
                        ..*origin
                    },
                    e,
                );
            }
            Event::StepFailed(e) => self.interactions.step_failed(origin, e),
            Event::StepTimedOut(e) => self.interactions.step_timed_out(origin, e),
            Event::QuestionsAsked(e) => self.interactions.questions_asked(origin, e),
            Event::QuestionAssigned(e) => self.interactions.question_assigned(origin, e),
            Event::StepRetryScheduled(e) => self.interactions.retry_scheduled(origin, e),
            Event::StepEscalated(e) => self.interactions.step_escalated(origin, e),
            Event::EscalationResolved(e) => self.interactions.escalation_resolved(origin, e),
            Event::QuestionAnswered(e) => self.interactions.question_answered(origin, e),
            Event::QuestionsExpired(e) => self.interactions.questions_expired(origin, e),
            Event::StepSkipped(e) => self.interactions.step_skipped(origin, e),
            Event::LeadTaken(e) => self.interactions.lead_taken(origin, e),
            Event::VotesTallied(e) => self.interactions.votes_tallied(origin, e),
            Event::SagaStarted(e) => self.interactions.saga_started(origin, e),
            Event::ExecutionReplanned(e) => self.interactions.replanned(origin, e),
            Event::ExecutionEscalated(e) => self.interactions.execution_escalated(origin, e),
            Event::ExecutionCompleted(e) => {
                self.interactions
                    .execution_ended(origin, e.execution_id, Outcome::Completed);
            }
            Event::ExecutionFailed(e) => {
                self.interactions
                    .execution_ended(origin, e.execution_id, Outcome::Failed);
            }
            Event::ExecutionCancelled(e) => {
                self.interactions
                    .execution_ended(origin, e.execution_id, Outcome::Cancelled);
            }
            _ => return false,
        }
        true
    }

    /// The team's knowledge and what used it.
    fn knowledge(&mut self, origin: &Origin, event: &Event) -> bool {
        match event {
            Event::KnowledgeShared(e) => self.knowledge.shared(origin, e),
            Event::KnowledgeValidated(e) => self.knowledge.validated(origin, e),
            Event::KnowledgeSuperseded(e) => self.knowledge.superseded(origin, e),
            Event::StepCompleted(e) => {
                for (origin, told) in told(origin, e) {
                    match told {
                        ToldEvent::KnowledgeShared(t) => self.knowledge.shared(&origin, t),
                        ToldEvent::KnowledgeValidated(t) => self.knowledge.validated(&origin, t),
                        ToldEvent::KnowledgeSuperseded(t) => self.knowledge.superseded(&origin, t),
                        ToldEvent::InteractionRecorded(_) => {}
                    }
                }
                self.knowledge.used(origin, e);
            }
            _ => return false,
        }
        true
    }

    /// Agents and their status, workflows, templates, token usage and alerts.
    fn catalog(&mut self, origin: &Origin, event: &Event) -> bool {
        match event {
            Event::AgentRegistered(e) => self.agents.registered(origin, &e.agent),
            Event::AgentStatusReported(e) => self.status.reported(origin, e),
            Event::AlertRaised(e) => self.alerts.raised(origin, e),
            Event::WorkflowCreated(e) => {
                self.workflows.created(origin, &e.workflow, e.template_id);
                if let Some(template) = e.template_id {
                    self.templates.workflow_created(origin, template);
                }
            }
            Event::TemplateRegistered(e) => self.templates.registered(origin, &e.template),
            Event::WorkflowPaused(e) => self.workflows.paused(origin, e.workflow_id),
            Event::WorkflowResumed(e) => self.workflows.resumed(origin, e.workflow_id),
            Event::ExecutionStarted(e) => {
                self.workflows.run_started(origin, e);
                self.templates.run_started(origin, e.workflow_id);
            }
            Event::ExecutionReplanned(e) => self.status.steps_dropped(origin, e.execution_id),
            Event::StepStarted(e) => self.status.step_started(origin, e),
            Event::StepDeferred(e) => self.status.step_deferred(origin, e),
            Event::StepCompleted(e) => {
                self.usage.completed(origin, e);
                self.status.step_completed(origin, e);
            }
            Event::StepFailed(e) => {
                self.usage.attempt(origin, &e.attempt, e.usage.as_ref());
                self.status.step_failed(origin, e);
            }
            Event::StepTimedOut(e) => self.status.step_timed_out(origin, e),
            Event::StepReviewed(e) => {
                self.usage.attempt(origin, &e.attempt, e.usage.as_ref());
                self.status.step_reviewed(origin, e);
            }
            Event::QuestionsAsked(e) => self.usage.attempt(origin, &e.attempt, Some(&e.usage)),
            Event::QuestionAnswered(e) => self.usage.answered(origin, e),
            Event::ExecutionCompleted(e) => {
                self.workflows
                    .run_ended(origin, e.workflow_id, Outcome::Completed);
                self.templates
                    .run_ended(origin, e.workflow_id, Outcome::Completed);
                self.status.steps_dropped(origin, e.execution_id);
            }
            Event::ExecutionFailed(e) => {
                self.workflows
                    .run_ended(origin, e.workflow_id, Outcome::Failed);
                self.templates
                    .run_ended(origin, e.workflow_id, Outcome::Failed);
                self.status.steps_dropped(origin, e.execution_id);
            }
            Event::ExecutionCancelled(e) => {
                self.workflows
                    .run_ended(origin, e.workflow_id, Outcome::Cancelled);
                self.templates
                    .run_ended(origin, e.workflow_id, Outcome::Cancelled);
                self.status.steps_dropped(origin, e.execution_id);
            }
            _ => return false,
        }
        true
    }

    /// Writes every read model's changes inside the caller's transaction. The tables are
    /// independent (no foreign keys), so the order between models does not matter. The rows
    /// move into the statements' arrays: a batch retried is planned again. A batch is written
    /// before its events are found new (see `Lease::project`), so every statement must accept
    /// a copy of an event applied before without failing: the batch is then rolled back.
    pub async fn write(self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        self.agents.write(tx).await?;
        self.workflows.write(tx).await?;
        self.executions.write(tx).await?;
        self.interactions.write(tx).await?;
        self.knowledge.write(tx).await?;
        self.usage.write(tx).await?;
        self.handoffs.write(tx).await?;
        self.escalations.write(tx).await?;
        self.status.write(tx).await?;
        // After the workflows: runs are credited to templates through their workflow's row.
        self.templates.write(tx).await?;
        // Tasks before the records that complete them, both after the executions whose ends
        // give the runs' durations.
        self.tasks.write(tx).await?;
        self.history.write(tx).await?;
        self.alerts.write(tx).await?;
        self.rejections.write(tx).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got
mod tests {
    use cadre_proto::events::{ExecutionCompleted, Told};
    use cadre_proto::{EventId, KnowledgeId};
    use serde_json::json;

    use super::*;
    use crate::models::executions::ExecutionStatus;
    use crate::models::workflows::{Duration, WorkflowStatus};
    use crate::testing::{Fixture, payload, plan_all};

    /// The rows of `table` as JSON by id, without the columns that say when and at which
    /// position of the log a row was written; and their ids in the order lists show them.
    async fn rows_by_id(
        conn: &mut sqlx::PgConnection,
        table: &str,
    ) -> (serde_json::Value, serde_json::Value) {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT coalesce(jsonb_agg(to_jsonb(t) - 'event_sequence' - 'event_position' \
                 - 'created_at' - 'updated_at' ORDER BY t.id), '[]'), \
                 coalesce(jsonb_agg(t.id ORDER BY event_sequence, event_position, t.id), '[]') \
             FROM {table} t"
        )))
        .fetch_one(conn)
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn a_completion_gives_the_rows_of_what_its_step_told_stored_apart() {
        let mut f = Fixture::new();
        let (rest, cache) = (f.shared("- REST"), f.shared("- cache"));
        let knowledge = |e: &Event| match e {
            Event::KnowledgeShared(k) => k.knowledge_id,
            other => panic!("not knowledge: {other:?}"),
        };
        let (k_rest, k_cache) = (knowledge(&rest), knowledge(&cache));
        let grpc = f.shared("- gRPC");
        let k_grpc = knowledge(&grpc);
        let told: Vec<Told> = [
            f.question("- which schema?"),
            grpc,
            f.validated(k_cache, f.agent.id),
            f.superseded(k_rest, k_grpc),
        ]
        .into_iter()
        .map(|event| Told {
            id: EventId::new(),
            event: match event {
                Event::InteractionRecorded(e) => ToldEvent::InteractionRecorded(e),
                Event::KnowledgeShared(e) => ToldEvent::KnowledgeShared(e),
                Event::KnowledgeValidated(e) => ToldEvent::KnowledgeValidated(e),
                Event::KnowledgeSuperseded(e) => ToldEvent::KnowledgeSuperseded(e),
                other => panic!("not told: {other:?}"),
            },
        })
        .collect();
        let (question_id, grpc_id) = (told[0].id, told[1].id);
        let earlier = [(EventId::new(), rest), (EventId::new(), cache)];
        let earlier_again = |f: &mut Fixture| -> Vec<_> {
            earlier
                .iter()
                .map(|(id, e)| f.message_with_id(*id, e.clone()))
                .collect()
        };
        let (done, done_id) = (f.step_completed(1), EventId::new());

        // As logs wrote it before a step's end was one event: each apart, then the completion.
        let mut apart = earlier_again(&mut f);
        for t in &told {
            apart.push(f.message_with_id(t.id, t.event.clone().into()));
        }
        apart.push(f.message_with_id(done_id, done.clone()));
        // As one completion that carries them.
        let mut folded = earlier_again(&mut f);
        let Event::StepCompleted(mut carrying) = done else {
            unreachable!()
        };
        carrying.told = told;
        folded.push(f.message_with_id(done_id, Event::StepCompleted(carrying)));

        let mut tables = Vec::new();
        for log in [apart, folded] {
            let db = crate::testing::TestDb::create().await;
            let mut lease = crate::testing::lease(&db).await;
            crate::testing::project(&mut lease, &log, log.len()).await;
            let mut conn = db.connect().await;
            let knowledge = rows_by_id(&mut conn, "collaboration_knowledge").await;
            let interactions = rows_by_id(&mut conn, "agent_interactions").await;
            tables.push((knowledge, interactions));
        }
        let ((knowledge, _), (interactions, listed)) = &tables[1];
        assert_eq!(knowledge.as_array().unwrap().len(), 3, "{knowledge:#}");
        let by_id = |id: KnowledgeId| crate::testing::row_with_id(knowledge, id);
        assert_eq!(by_id(k_rest)["is_active"], false);
        assert_eq!(by_id(k_rest)["superseded_by"], json!(k_grpc));
        assert_eq!(by_id(k_cache)["validated_by_agents"], json!([f.agent.id]));
        // Knowledge shared twice before, then the question, the new knowledge and the
        // completion, each a row of the timeline.
        assert_eq!(
            interactions.as_array().unwrap().len(),
            5,
            "{interactions:#}"
        );
        assert_eq!(
            listed.as_array().unwrap()[2..],
            [json!(question_id), json!(grpc_id), json!(done_id)],
            "what the step told, in order, then its completion"
        );
        assert_eq!(
            tables[0], tables[1],
            "the same rows, listed in the same order"
        );
    }

    #[test]
    fn events_for_one_execution_fold_into_one_patch_in_order() {
        let mut f = Fixture::new();
        let batch = vec![
            f.message(Event::WorkflowCreated(
                cadre_proto::events::WorkflowCreated {
                    workflow: f.definition(),
                    template_id: None,
                },
            )),
            f.message(f.started(1)),
            f.message(f.scheduled(1)),
            f.message(f.step_started(1)),
            f.message(f.step_completed(1)),
            f.message(Event::ExecutionCompleted(ExecutionCompleted {
                execution_id: f.execution,
                workflow_id: f.workflow,
                final_output: json!({ "design": "The design" }),
            })),
        ];
        let plan = plan_all(&batch);

        assert_eq!(plan.last_sequence, 6);
        assert_eq!(plan.workflows.rows.len(), 1);
        assert_eq!(plan.workflows.rows[0].total_steps, 1);
        assert_eq!(plan.workflows.rows[0].workflow_type, "pipeline");
        assert_eq!(plan.executions.rows.len(), 1);
        assert_eq!(plan.executions.rows[0].trigger_reason, "manual");

        assert_eq!(plan.executions.patches.len(), 1);
        let patch = &plan.executions.patches[0];
        let step = &patch.steps["design"].entry;
        assert_eq!(step["status"], "completed");
        assert_eq!(step["attempt"], 1);
        assert_eq!(step["agentId"], json!(f.agent.id));
        assert_eq!(step["summary"], "Designed");
        assert_eq!(step["tokens"]["total"], 15);
        assert_eq!(step["durationMs"], 42);
        let assignment = patch.steps["design"].assignment.as_ref().unwrap();
        assert_eq!(assignment["agentName"], "Ada");
        assert_eq!(assignment["reason"]["kind"], "roleMatch");
        assert!(patch.steps["design"].scheduled_sequence.is_some());
        assert_eq!(
            patch.status,
            ExecutionStatus {
                if_running: "completed",
                if_paused: "completed",
                if_escalated: "completed"
            }
        );
        let ending = patch.ending.as_ref().unwrap();
        assert_eq!(ending.final_output, Some(json!({ "design": "The design" })));
        assert_eq!(ending.completed_at, f.clock);
        assert_eq!(patch.controlled_at, Some(f.clock));

        assert_eq!(plan.workflows.patches.len(), 1);
        let workflow = &plan.workflows.patches[0];
        let started_at = batch[1].content.as_ref().unwrap().meta.time;
        assert_eq!(
            workflow.status,
            WorkflowStatus {
                if_paused: None,
                otherwise: Some("completed")
            },
            "a paused workflow stays paused"
        );
        assert_eq!(workflow.started_at, Some(started_at));
        assert_eq!(workflow.execution_count, Some(1));
        assert_eq!(
            workflow.duration,
            Some(Duration {
                started_at: Some(started_at),
                completed_at: f.clock
            })
        );

        let messages: Vec<_> = plan
            .interactions
            .rows
            .iter()
            .map(|i| i.message.as_str())
            .collect();
        assert_eq!(
            messages,
            [
                "Assigned Design to Ada: role matches 'architect'",
                "Starting step: Design",
                "Completed step: Design",
            ]
        );
        let delegation = &plan.interactions.rows[0];
        assert_eq!(delegation.interaction_type, "task_delegation");
        assert_eq!(delegation.from_agent_id, None);
        assert_eq!(delegation.to_agent_id, Some(f.agent.id.0));
        assert_eq!(delegation.event_sequence, 3);
        assert_eq!(delegation.id, batch[2].content.as_ref().unwrap().meta.id.0);
        assert_eq!(plan.interactions.rows[2].context_data["tokensUsed"], 15);
    }

    #[test]
    fn copies_of_applied_events_change_nothing() {
        let mut f = Fixture::new();
        let first = f.message(f.scheduled(1));
        let copy = Incoming::decode(2, first.subject.clone(), f.clock, &payload(&first));
        let batch = vec![first, copy];
        let both_new = plan_all(&batch);
        assert_eq!(
            both_new.interactions.rows.len(),
            1,
            "a copy inside the batch is dropped"
        );
        assert_eq!(both_new.last_sequence, 2);

        let both_applied = plan(&batch, Some(&HashSet::new()), &Projection::ALL);
        assert!(
            both_applied.executions.patches.is_empty() && both_applied.interactions.rows.is_empty()
        );
        assert_eq!(
            both_applied.last_sequence, 2,
            "the checkpoint still moves past them"
        );
    }
}

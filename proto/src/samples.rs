//! Sample events of every type, with every field filled in: for the round-trip tests of the
//! wire contract here, and for tests elsewhere that check what subscribers receive (feature
//! `samples`). Not for production use: the ids are random and the texts placeholders.

use chrono::Utc;

use crate::envelope::Envelope;
use crate::events::*;
use crate::ids::{
    AgentId, EscalationId, EventId, ExecutionId, KnowledgeId, StepId, SubscriptionId, TemplateId,
    TenantId, WorkflowId,
};
use crate::model::*;

fn step_id(id: &str) -> StepId {
    StepId::parse(id).unwrap_or_else(|_| unreachable!("sample step ids are valid"))
}

pub(crate) fn attempt() -> StepAttempt {
    StepAttempt {
        execution_id: ExecutionId::new(),
        workflow_id: WorkflowId::new(),
        step_id: step_id("review"),
        step_name: "Review".to_owned(),
        number: 1,
        agent_id: AgentId::new(),
    }
}

/// One of each kind of event a step's completion may carry.
fn told(workflow_id: WorkflowId, execution_id: ExecutionId) -> Vec<Told> {
    let knowledge_id = KnowledgeId::new();
    let agent_id = AgentId::new();
    [
        ToldEvent::InteractionRecorded(InteractionRecorded {
            execution_id,
            workflow_id,
            from_agent_id: agent_id,
            to_agent_id: None,
            interaction_type: InteractionType::Question,
            message: "Questions/concerns from Ada on Design:\n- which schema?".into(),
            context_data: serde_json::json!({"stepId": "a", "attempt": 1}),
            related_step_id: Some(step_id("a")),
            requires_response: false,
        }),
        ToldEvent::KnowledgeShared(KnowledgeShared {
            knowledge_id,
            workflow_id,
            execution_id,
            step_id: step_id("a"),
            title: "Insights from Design".into(),
            content: "i".into(),
            knowledge_type: KnowledgeType::Insight,
            created_by_agent_id: agent_id,
            relevance_score: 1.0,
            tags: vec!["design".into()],
        }),
        ToldEvent::KnowledgeValidated(KnowledgeValidated {
            knowledge_id: KnowledgeId::new(),
            workflow_id,
            execution_id,
            step_id: step_id("a"),
            agent_id,
        }),
        ToldEvent::KnowledgeSuperseded(KnowledgeSuperseded {
            knowledge_id: KnowledgeId::new(),
            superseded_by: knowledge_id,
            workflow_id,
            execution_id,
            step_id: step_id("a"),
            agent_id,
            reason: "newer measurements".into(),
        }),
    ]
    .into_iter()
    .map(|event| Told {
        id: EventId::new(),
        event,
    })
    .collect()
}

fn agent() -> AgentProfile {
    AgentProfile {
        id: AgentId::new(),
        name: "Ada".into(),
        role: "analyst".into(),
        backstory: "b".into(),
        skills: vec!["research".into()],
        provider: "offline".into(),
        model: "m".into(),
        model_parameters: ModelParameters {
            temperature: Some(0.5),
            max_tokens: Some(100),
        },
        fallback: Some(ModelChoice {
            provider: "anthropic".into(),
            model: "claude-haiku".into(),
        }),
    }
}

pub(crate) fn workflow() -> WorkflowDefinition {
    WorkflowDefinition {
        id: WorkflowId::new(),
        name: "W".into(),
        description: "d".into(),
        workflow_type: WorkflowType::Pipeline,
        participating_agents: vec![AgentId::new()],
        coordinator_agent_id: None,
        configuration: WorkflowConfiguration {
            steps: vec![WorkflowStep {
                id: step_id("a"),
                name: "A".into(),
                description: "d".into(),
                step_type: StepType::Analysis,
                assigned_agent_role: Some("analyst".into()),
                preferred_agent_id: None,
                required_skills: vec!["research".into()],
                depends_on: vec![],
                can_run_in_parallel: true,
                instructions: "i".into(),
                expected_output: "o".into(),
                timeout_minutes: Some(3.0),
                validation_criteria: vec![],
                review_required: false,
                reviewer_role: None,
                condition: Some("input.ticket > 1".into()),
                child_workflow_id: None,
                risks: vec!["security".into()],
                compensation: Some("Revert it.".into()),
            }],
            phases: vec![WorkflowPhase {
                name: "Analysis".into(),
                mode: PhaseMode::Sequential,
                steps: vec![step_id("a")],
            }],
            coordination: Coordination::default(),
            constraints: Constraints::default(),
            triggers: Triggers {
                schedule: Some("@hourly".into()),
                events: true,
                after_workflows: vec![WorkflowId::new()],
            },
            escalation: EscalationPolicy {
                ladder: vec![EscalationRung::Reassign, EscalationRung::Person],
                stronger_model: None,
                leads: vec![RiskLead {
                    risk: "security".into(),
                    role: "security".into(),
                }],
                after_minutes: Some(60.0),
            },
            saga: SagaPolicy {
                replan: true,
                max_replans: Some(2),
            },
        },
    }
}

/// One event of every type, each field filled in.
pub fn every_event() -> Vec<Event> {
    let (w, e) = (WorkflowId::new(), ExecutionId::new());
    let request = Request {
        requested_by: Some("ops".into()),
        reason: Some("why".into()),
    };
    let scheduled = StepScheduled {
        execution_id: e,
        workflow_id: w,
        workflow_name: "W".into(),
        step: workflow().configuration.steps[0].clone(),
        attempt: 1,
        agent: agent(),
        reason: AssignmentReason::SkillMatch {
            matched: vec!["research".into()],
            active_steps: 0,
            tie_break: Some(RecordTieBreak {
                figure: RecordFigure::TaskSuccess,
                detail: "task success: Ada 100 % over 3 attempts, Bo 50 % over 2 attempts".into(),
            }),
        },
        coordinator_agent_id: None,
        knowledge_sharing: true,
        communication_style: CommunicationStyle::Formal,
        knowledge_watermark: 0,
        input: Some(serde_json::json!({"ticket": 42})),
        review: Some(ReviewRequest {
            round: 1,
            author_agent_id: AgentId::new(),
            summary: "s".into(),
            output: "o".into(),
            ballot: Some(Ballot {
                rule: DecisionMaking::Majority,
                seat: 2,
                seats: 3,
            }),
        }),
        feedback: Some("tighten it".into()),
        timeout_at: Some(Utc::now()),
        arms_step_timer: Some(true),
        team: vec![Teammate::of(&agent())],
        answers: vec![QuestionAnswer {
            question: "which database?".into(),
            asked: "Ada".into(),
            answer: None,
            note: Some("did not answer by the deadline".into()),
        }],
        earlier_failures: vec![FailedAttempt {
            attempt: 1,
            agent_id: AgentId::new(),
            error: "HTTP 400".into(),
        }],
        handoff: Some(Handoff {
            from: vec![HandingAgent {
                agent_id: AgentId::new(),
                completed_work: "A: the design".into(),
            }],
            remaining_work: "build it".into(),
            constraints: vec!["one attempt may take at most 5 minute(s)".into()],
            dependencies: vec!["a (A): completed by Ada".into()],
            success_criteria: "a build".into(),
            escalation_conditions: vec!["a failed attempt fails the execution".into()],
        }),
    };
    let tokens = TokenUsage {
        prompt: 1,
        completion: 2,
        total: 3,
    };
    vec![
        Event::AgentRegistered(AgentRegistered { agent: agent() }),
        Event::WorkflowCreated(WorkflowCreated {
            workflow: workflow(),
            template_id: Some(TemplateId::new()),
        }),
        Event::SubscriptionCreated(SubscriptionCreated {
            subscription_id: SubscriptionId::new(),
            url: "https://hooks.example.com/cadre".into(),
            event_types: vec!["dev.cadre.execution.*".into()],
            description: Some("ops dashboard".into()),
        }),
        Event::SubscriptionDeleted(SubscriptionDeleted {
            subscription_id: SubscriptionId::new(),
        }),
        Event::WebhookDelivered(WebhookDelivery {
            subscription_id: SubscriptionId::new(),
            event_id: EventId::new(),
            event_type: types::EXECUTION_COMPLETED.into(),
            attempt: 3,
            status: Some(204),
            duration_ms: 12,
        }),
        Event::WebhookDeliveryFailed(Box::new(WebhookDeliveryFailed {
            delivery: WebhookDelivery {
                subscription_id: SubscriptionId::new(),
                event_id: EventId::new(),
                event_type: types::EXECUTION_COMPLETED.into(),
                attempt: 1,
                status: Some(503),
                duration_ms: 40,
            },
            error: "HTTP 503 Service Unavailable".into(),
            retry_in_seconds: Some(2),
        })),
        Event::TemplateRegistered(Box::new(TemplateRegistered {
            template: WorkflowTemplate {
                id: TemplateId::system(&TenantId::default_tenant(), "t"),
                name: "T".into(),
                description: "d".into(),
                category: TemplateCategory::Development,
                workflow_type: WorkflowType::Parallel,
                template_definition: workflow().configuration,
                required_agent_roles: vec!["analyst".into(), "security".into()],
                recommended_agent_count: 2,
                is_system_template: true,
                created_by: Some("ops".into()),
                revision: 3,
            },
        })),
        Event::WorkflowPaused(WorkflowPaused {
            workflow_id: w,
            request: request.clone(),
        }),
        Event::WorkflowResumed(WorkflowResumed {
            workflow_id: w,
            request: Request::default(),
        }),
        Event::KnowledgeShared(KnowledgeShared {
            knowledge_id: KnowledgeId::new(),
            workflow_id: w,
            execution_id: e,
            step_id: step_id("a"),
            title: "t".into(),
            content: "c".into(),
            knowledge_type: KnowledgeType::Insight,
            created_by_agent_id: AgentId::new(),
            relevance_score: 0.5,
            tags: vec!["x".into()],
        }),
        Event::AgentStatusReported(Box::new(AgentStatusReported {
            agent_id: AgentId::new(),
            current_task: Some(attempt()),
            progress: 40,
            estimated_completion: Some(Utc::now()),
            blockers: vec!["waiting for an answer".into()],
            requested_support: vec![SupportRequest {
                from_agent: Some(AgentId::new()),
                reason: "which schema?".into(),
                urgency: Urgency::High,
            }],
        })),
        Event::AlertRaised(Box::new(AlertRaised {
            agent_id: AgentId::new(),
            condition: AlertCondition::RepeatedEscalations,
            task_type: Some(StepType::Review),
            crossing: 1,
            value: 2.0,
            threshold: 2.0,
            sample: 2,
            message: "2 review tasks escalated".into(),
            workflow_id: w,
            execution_id: e,
            step_id: step_id("a"),
        })),
        Event::KnowledgeValidated(KnowledgeValidated {
            knowledge_id: KnowledgeId::new(),
            workflow_id: w,
            execution_id: e,
            step_id: step_id("b"),
            agent_id: AgentId::new(),
        }),
        Event::KnowledgeSuperseded(KnowledgeSuperseded {
            knowledge_id: KnowledgeId::new(),
            superseded_by: KnowledgeId::new(),
            workflow_id: w,
            execution_id: e,
            step_id: step_id("b"),
            agent_id: AgentId::new(),
            reason: "newer measurements".into(),
        }),
        Event::ExecutionStarted(Box::new(ExecutionStarted {
            execution_id: e,
            workflow_id: w,
            execution_number: 3,
            trigger_reason: TriggerReason::Manual,
            triggered_by: Some("me".into()),
            workflow: workflow(),
            agents: vec![agent()],
            input: Some(serde_json::json!({"ticket": 42})),
            parent: Some(ParentStep {
                attempt: attempt(),
                depth: 1,
            }),
            started_at: Some(Utc::now()),
            deadline: Some(Utc::now()),
            records: [(
                agent().id,
                AgentRecord {
                    attempts: 4,
                    task_success: Some(0.75),
                    reviews: 0,
                    review_pass_rate: None,
                    tasks_completed: 3,
                    average_completion_minutes: Some(2.5),
                    costed_completions: 3,
                    average_cost_usd: Some(0.012),
                },
            )]
            .into(),
        })),
        Event::StepScheduled(Box::new(scheduled)),
        Event::TaskHandedOff(Box::new(TaskHandedOff {
            execution_id: e,
            workflow_id: w,
            from_agent: AgentId::new(),
            to_agent: AgentId::new(),
            task_id: step_id("b"),
            task_name: "B".into(),
            context: HandoffContext {
                completed_work: "A: the design".into(),
                remaining_work: "build it".into(),
                constraints: vec!["one attempt may take at most 5 minute(s)".into()],
                dependencies: vec!["a (A): completed by Ada".into()],
            },
            success_criteria: "a build".into(),
            estimated_time: Some(5.0),
            escalation_conditions: vec!["a failed attempt fails the execution".into()],
        })),
        Event::StepStarted(StepStarted {
            attempt: attempt(),
            scheduled_event_id: EventId::new(),
            timeout_at: Some(Utc::now()),
        }),
        Event::StepDeferred(StepDeferred {
            attempt: attempt(),
            error: "HTTP 429".into(),
            retry_at: Utc::now(),
            deferral: 1,
            waiting_since: Utc::now(),
        }),
        Event::InteractionRecorded(InteractionRecorded {
            execution_id: e,
            workflow_id: w,
            from_agent_id: AgentId::new(),
            to_agent_id: Some(AgentId::new()),
            interaction_type: InteractionType::Question,
            message: "m".into(),
            context_data: serde_json::json!({"k": 1}),
            related_step_id: Some(step_id("a")),
            requires_response: true,
        }),
        Event::StepCompleted(Box::new(StepCompleted {
            attempt: attempt(),
            result: StepResult {
                summary: "s".into(),
                output: "o".into(),
                insights: vec!["i".into()],
                decisions: vec![],
                questions: vec![],
                raw_response: "r".into(),
                tokens: TokenUsage {
                    prompt: 1,
                    completion: 2,
                    total: 3,
                },
                full: Some(ObjectRef {
                    bucket: "CADRE_RESULTS".into(),
                    name: "t/e/a/1".into(),
                    size: 400_000,
                }),
            },
            provider: "offline".into(),
            model: "m".into(),
            duration_ms: 12,
            cost_usd: None,
            knowledge_used: vec![KnowledgeId::new()],
            knowledge_handed_on: vec![SharedKnowledge {
                knowledge_id: KnowledgeId::new(),
                title: "Insights from Design".into(),
                knowledge_type: KnowledgeType::Insight,
                content: "i".into(),
            }],
            fallback_reason: None,
            told: told(w, e),
        })),
        Event::StepFailed(StepFailed {
            attempt: attempt(),
            retryable: true,
            error: "provider said 400".into(),
            usage: None,
        }),
        Event::StepTimedOut(StepTimedOut {
            attempt: attempt(),
            timeout_minutes: 0.5,
        }),
        Event::StepReviewed(StepReviewed {
            attempt: attempt(),
            round: 1,
            author_agent_id: AgentId::new(),
            approved: false,
            feedback: "name the risks".into(),
            ballot: None,
            usage: Some(CallUsage {
                provider: "offline".into(),
                model: "m".into(),
                tokens,
                cost_usd: None,
            }),
        }),
        Event::QuestionsAsked(QuestionsAsked {
            attempt: attempt(),
            questions: vec![AskedQuestion {
                question_id: "q1".into(),
                to: Some("architect".into()),
                text: "which database?".into(),
            }],
            usage: CallUsage {
                provider: "offline".into(),
                model: "m".into(),
                tokens,
                cost_usd: Some(0.001),
            },
        }),
        Event::QuestionAssigned(Box::new(QuestionAssigned {
            execution_id: e,
            workflow_id: w,
            step_id: step_id("a"),
            step_name: "A".into(),
            attempt: 1,
            question_id: "q1".into(),
            question: "which database?".into(),
            asker: Teammate::of(&agent()),
            recipient: agent(),
            broadcast: false,
            deadline_at: Utc::now(),
            communication_style: CommunicationStyle::Technical,
        })),
        Event::QuestionAnswered(QuestionAnswered {
            execution_id: e,
            workflow_id: w,
            step_id: step_id("a"),
            attempt: 1,
            question_id: "q1".into(),
            agent_id: AgentId::new(),
            assigned_event_id: EventId::new(),
            answer: Some("Postgres".into()),
            error: None,
            usage: CallUsage {
                provider: "offline".into(),
                model: "m".into(),
                tokens,
                cost_usd: None,
            },
        }),
        Event::QuestionsExpired(QuestionsExpired {
            attempt: attempt(),
            unanswered: vec![Unanswered {
                question_id: "q1".into(),
                agent_id: AgentId::new(),
            }],
            failed: false,
        }),
        Event::StepRetryScheduled(StepRetryScheduled {
            attempt: attempt(),
            failures: 1,
            retry_at: Utc::now(),
            error: "HTTP 503".into(),
        }),
        Event::StepRetryDue(StepRetryDue { attempt: attempt() }),
        Event::StepEscalated(Box::new(StepEscalated {
            execution_id: e,
            workflow_id: w,
            step_id: step_id("a"),
            step_name: "A".into(),
            attempt: 3,
            rung: EscalationRung::Person,
            agent: None,
            escalation_id: Some(EscalationId::of(e, &step_id("a"), 3)),
            approval: false,
            reason: "retries spent".into(),
            context: EscalationContext {
                failures: vec![FailedAttempt {
                    attempt: 3,
                    agent_id: AgentId::new(),
                    error: "HTTP 503".into(),
                }],
                tried: vec![EscalationRung::Reassign],
                outputs: [(step_id("b"), "done".to_owned())].into(),
            },
        })),
        Event::ExecutionEscalated(Box::new(ExecutionEscalated {
            execution_id: e,
            workflow_id: w,
            escalation_id: EscalationId::of_execution(e),
            after_minutes: 60.0,
            reason: "over an hour".into(),
            context: EscalationContext::default(),
        })),
        Event::SagaStarted(Box::new(SagaStarted {
            execution_id: e,
            workflow_id: w,
            cause: FailureCause::StepFailed {
                step_id: step_id("b"),
            },
            error: "step 'B' failed".into(),
            steps: vec![step_id("a")],
            replan: true,
        })),
        Event::ExecutionReplanned(Box::new(ExecutionReplanned {
            execution_id: e,
            workflow_id: w,
            replan: 1,
            agent_id: AgentId::new(),
            summary: "smaller steps".into(),
            steps: workflow().configuration.steps,
            error: "step 'B' failed".into(),
        })),
        Event::EscalationResolved(Box::new(EscalationResolved {
            execution_id: e,
            workflow_id: w,
            step_id: Some(step_id("a")),
            step_name: Some("A".into()),
            attempt: 3,
            escalation_id: EscalationId::of(e, &step_id("a"), 3),
            resolution: Resolution::ProvideOutput {
                summary: "s".into(),
                output: "o".into(),
            },
            request: request.clone(),
        })),
        Event::LeadTaken(Box::new(LeadTaken {
            execution_id: e,
            workflow_id: w,
            risk: "security".into(),
            role: "security".into(),
            agent: Some(Teammate {
                id: AgentId::new(),
                name: "Sam".into(),
                role: "security".into(),
            }),
            step_id: step_id("a"),
            shown_by: RiskSource::Result,
        })),
        Event::VotesTallied(Box::new(VotesTallied {
            execution_id: e,
            workflow_id: w,
            step_id: step_id("a"),
            step_name: "A".into(),
            attempt: 4,
            round: 1,
            rule: DecisionMaking::Consensus,
            seats: 3,
            votes: vec![Vote {
                agent_id: AgentId::new(),
                approved: false,
                feedback: "name the risks".into(),
            }],
            approved: false,
            author_agent_id: AgentId::new(),
        })),
        Event::StepSkipped(StepSkipped {
            execution_id: e,
            workflow_id: w,
            step_id: step_id("a"),
            step_name: "A".into(),
            condition: "false".into(),
        }),
        Event::StepDeadlinesChecked(StepDeadlinesChecked {
            execution_id: e,
            workflow_id: w,
            due: Utc::now(),
            next_at: Some(Utc::now()),
        }),
        Event::ExecutionPaused(ExecutionPaused {
            execution_id: e,
            workflow_id: w,
            request: request.clone(),
        }),
        Event::ExecutionResumed(ExecutionResumed {
            execution_id: e,
            workflow_id: w,
            request: Request::default(),
        }),
        Event::ExecutionCompleted(ExecutionCompleted {
            execution_id: e,
            workflow_id: w,
            final_output: serde_json::json!({"a": {"summary": "s"}}),
        }),
        Event::ExecutionFailed(ExecutionFailed {
            execution_id: e,
            workflow_id: w,
            cause: FailureCause::TimeLimit {
                max_execution_seconds: 5,
            },
            error: "time limit".into(),
        }),
        Event::ExecutionCancelled(ExecutionCancelled {
            execution_id: e,
            workflow_id: w,
            request,
        }),
    ]
}

/// `event` as the agent worker stores it, now.
pub fn wrap(event: Event) -> Envelope {
    Envelope::new(
        "/cadre/agent-worker",
        TenantId::default_tenant(),
        Utc::now(),
        event,
    )
}

//! Subject builders: the only place where a subject is spelled.
//!
//! Layout (tokens after `cadre.events.<tenant>`):
//! - `agent.<agent>.{registered,status_reported}`, `agent.<agent>.alert_raised.<alert key>.<crossing>`
//! - `workflow.<workflow>.{created,paused,resumed}`, `workflow.<workflow>.knowledge.{shared,validated,superseded}`
//! - `workflow.<workflow>.execution.<execution>.{started,paused,resumed,completed,failed,cancelled,lead_taken,escalated,escalation_resolved,saga_started,replanned,step_deadlines_checked}`
//! - `workflow.<workflow>.execution.<execution>.step.<step>.{handed_off,scheduled,started,deferred,completed,failed,timed_out,skipped,reviewed}`
//! - `workflow.<workflow>.execution.<execution>.step.<step>.{questions_asked,question_assigned,question_answered,questions_expired}`
//! - `workflow.<workflow>.execution.<execution>.step.<step>.{retry_scheduled,retry_due}`
//! - `workflow.<workflow>.execution.<execution>.step.<step>.{escalated,escalation_resolved}`
//! - `workflow.<workflow>.interactions.<execution>.recorded`
//! - `template.<template>.registered`
//!
//! Everything under `execution.<execution>.>` is the execution's state and is appended with an
//! expected last sequence over that filter. Interactions live beside it, not inside it, so an
//! agent chatting never makes the coordinator's optimistic append retry.
//!
//! Beside the log: `cadre.dispatch.>` (work for agent workers), `cadre.timers.>` (durable
//! timers), `cadre.triggers.>` (CloudEvents that start runs), `cadre.partition.>` (the
//! coordinators' inbox: copies of execution events and fired timers, by partition) and
//! `cadre.live.>` (tokens as a model writes them, not stored).

use crate::ids::{AgentId, ExecutionId, StepId, SubscriptionId, TemplateId, TenantId, WorkflowId};

pub const PREFIX: &str = "cadre.events";
/// Every Cadre event.
pub const ALL_EVENTS: &str = "cadre.events.>";
/// Every subject of the agent workers' queue: work handed to them (copies of `StepScheduled`
/// and `QuestionAssigned` events) and steps waiting to be handed to them again later (message
/// schedules).
pub const ALL_DISPATCHED_STEPS: &str = "cadre.dispatch.>";

pub const REGISTERED: &str = "registered";
pub const CREATED: &str = "created";
pub const SCHEDULED: &str = "scheduled";
pub const STARTED: &str = "started";
pub const COMPLETED: &str = "completed";
pub const FAILED: &str = "failed";
pub const TIMED_OUT: &str = "timed_out";
pub const SKIPPED: &str = "skipped";
pub const REVIEWED: &str = "reviewed";
pub const TALLIED: &str = "tallied";
pub const DEFERRED: &str = "deferred";
pub const HANDED_OFF: &str = "handed_off";
pub const STATUS_REPORTED: &str = "status_reported";
pub const PAUSED: &str = "paused";
pub const RESUMED: &str = "resumed";
pub const CANCELLED: &str = "cancelled";
pub const SHARED: &str = "shared";
pub const VALIDATED: &str = "validated";
pub const SUPERSEDED: &str = "superseded";
pub const QUESTIONS_ASKED: &str = "questions_asked";
pub const QUESTION_ASSIGNED: &str = "question_assigned";
pub const QUESTION_ANSWERED: &str = "question_answered";
pub const QUESTIONS_EXPIRED: &str = "questions_expired";
pub const RETRY_SCHEDULED: &str = "retry_scheduled";
pub const RETRY_DUE: &str = "retry_due";
pub const ESCALATED: &str = "escalated";
pub const LEAD_TAKEN: &str = "lead_taken";
pub const SAGA_STARTED: &str = "saga_started";
pub const REPLANNED: &str = "replanned";
pub const STEP_DEADLINES_CHECKED: &str = "step_deadlines_checked";
pub const ESCALATION_RESOLVED: &str = "escalation_resolved";
pub const ALERT_RAISED: &str = "alert_raised";
pub const DELETED: &str = "deleted";
pub const DELIVERED: &str = "delivered";
pub const DELIVERY_FAILED: &str = "delivery_failed";

/// Where the coordinator hands a tenant's scheduled steps to the agent workers that offer the
/// step agent's LLM `provider`: steps are routed by capability, so a worker only ever takes
/// work it can do. `provider` is a single subject token (see [`is_provider_name`]).
pub fn dispatched_steps(provider: &str, tenant: &TenantId) -> String {
    format!("cadre.dispatch.{provider}.{tenant}.steps")
}

/// Every step of every tenant for `provider`: what the workers offering it consume.
pub fn dispatched_steps_for(provider: &str) -> String {
    format!("cadre.dispatch.{provider}.*.steps")
}

/// Where a step waits (a message schedule) until it is handed to the workers again, for
/// example after its provider answered "429, retry after 30 s". One per step attempt: waiting
/// again replaces the schedule. Never matched by [`dispatched_steps_for`].
pub fn deferred_step(
    provider: &str,
    tenant: &TenantId,
    execution: ExecutionId,
    step: &StepId,
    attempt: u32,
) -> String {
    format!("cadre.dispatch.{provider}.{tenant}.deferred.{execution}.{step}.{attempt}")
}

/// Whether `name` can name an LLM provider: it is a subject token and a consumer name, and
/// the workers' environment configuration (`CADRE_PROVIDERS__<NAME>__…`) lowercases it, so
/// lowercase letters, digits, `-` and `_` only.
pub fn is_provider_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Every live token stream (core NATS, kept by no stream: the monitor's, not the log's).
pub const ALL_LIVE_TOKENS: &str = "cadre.live.>";

/// Where a worker streams the text of a step's answer as the model writes it, one JSON
/// message `{"attempt", "index", "text"}` per piece (see [`crate::workers::TokenDelta`]). The
/// final result goes to the log as usual; a subscriber that missed pieces reads it there.
pub fn live_tokens(tenant: &TenantId, execution: ExecutionId, step: &StepId) -> String {
    format!("cadre.live.{tenant}.execution.{execution}.step.{step}")
}

/// Every trigger subject: CloudEvents that start runs of workflows.
pub const ALL_TRIGGERS: &str = "cadre.triggers.>";

/// Where a CloudEvent (JSON, structured mode) starts a run of `workflow`, if its
/// `configuration.triggers.events` is on. Publish with `Nats-Msg-Id` = the event's `id`.
pub fn trigger(tenant: &TenantId, workflow: WorkflowId) -> String {
    format!("cadre.triggers.{tenant}.workflow.{workflow}")
}

/// The workflow a trigger subject names, with its tenant.
pub fn parse_trigger(subject: &str) -> Option<(TenantId, WorkflowId)> {
    let mut tokens = subject.split('.');
    let (Some("cadre"), Some("triggers"), Some(tenant), Some("workflow"), Some(workflow), None) = (
        tokens.next(),
        tokens.next(),
        tokens.next(),
        tokens.next(),
        tokens.next(),
        tokens.next(),
    ) else {
        return None;
    };
    Some((TenantId::parse(tenant).ok()?, workflow.parse().ok()?))
}

/// The key recording that `downstream` starts when a run of `upstream` completes (in the
/// workflow links bucket).
pub fn after_link(tenant: &TenantId, upstream: WorkflowId, downstream: WorkflowId) -> String {
    format!("{tenant}.after.{upstream}.{downstream}")
}

/// The filter of every link from `upstream` (KV keys, as subjects of the bucket's stream).
pub fn after_links_of(tenant: &TenantId, upstream: WorkflowId) -> String {
    format!("{tenant}.after.{upstream}.*")
}

/// Whether `subject` is a workflow's own fact (created, paused, resumed).
pub fn is_workflow_lifecycle(subject: &str) -> bool {
    let tokens: Vec<&str> = subject.split('.').collect();
    tokens.len() == 6 && tokens[3] == "workflow" && matches!(tokens[5], CREATED | PAUSED | RESUMED)
}

/// Whether `subject` holds an execution's state event (what the coordinator folds).
pub fn is_execution_state(subject: &str) -> bool {
    let mut tokens = subject.split('.');
    tokens.nth(3) == Some("workflow") && tokens.nth(1) == Some("execution")
}

/// Every execution's state events, of every tenant and workflow (see [`is_execution_state`]);
/// the execution id is the third wildcard.
pub const ALL_EXECUTION_STATES: &str = "cadre.events.*.workflow.*.execution.*.>";
/// Every execution's own fact `fact` (`completed`, `failed`, ...), of every tenant and workflow.
pub fn every_execution(fact: &str) -> String {
    format!("{PREFIX}.*.workflow.*.execution.*.{fact}")
}

/// Every workflow's own facts (created, paused, resumed); the workflow id is the second wildcard.
pub const ALL_WORKFLOW_LIFECYCLES: &str = "cadre.events.*.workflow.*.*";

/// One fact (`completed`, say) of every step, of every tenant, workflow and execution.
pub fn every_step_fact(fact: &str) -> String {
    format!("{PREFIX}.*.workflow.*.execution.*.step.*.{fact}")
}

/// One fact of every execution, its own and not its steps', of every tenant and workflow.
pub fn every_execution_fact(fact: &str) -> String {
    format!("{PREFIX}.*.workflow.*.execution.*.{fact}")
}

/// Whether the filter `filter` selects `subject`, by NATS's rule: `*` is one token, a final `>`
/// one or more.
pub fn selects(filter: &str, subject: &str) -> bool {
    let mut subject = subject.split('.');
    for token in filter.split('.') {
        match (token, subject.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (token, Some(s)) if token == s => {}
            _ => return false,
        }
    }
    subject.next().is_none()
}

/// Every message of one partition of the coordinator's inbox.
pub fn partition(partition: u16) -> String {
    format!("cadre.partition.{partition}.>")
}

/// The partition of a message in the coordinator's inbox and the subject it was stored on
/// (in the event log or the timers stream); `None` for any other subject.
pub fn parse_partitioned(subject: &str) -> Option<(u16, &str)> {
    let rest = subject.strip_prefix("cadre.partition.")?;
    let (partition, original) = rest.split_once('.')?;
    Some((partition.parse().ok()?, original))
}

/// The inbox subject a message stored on `source` (with `*` and `>` wildcards) goes to, as a
/// JetStream subject transform: the partition is the server's hash of the `key`-th wildcard
/// token, so everything keyed by one id (an execution's events and timers, a workflow's own
/// facts) lands in one partition, in order.
pub fn partitioning(source: &str, key: usize, partitions: u16) -> String {
    let mut wildcard = 0;
    let tokens: Vec<String> = source
        .split('.')
        .map(|token| match token {
            "*" => {
                wildcard += 1;
                format!("{{{{wildcard({wildcard})}}}}")
            }
            other => other.to_owned(),
        })
        .collect();
    format!(
        "cadre.partition.{{{{partition({partitions},{key})}}}}.{}",
        tokens.join(".")
    )
}

pub fn agent(tenant: &TenantId, agent: AgentId, fact: &str) -> String {
    format!("{PREFIX}.{tenant}.agent.{agent}.{fact}")
}

/// A workflow template's facts (`registered`): the filter of its optimistic-concurrency check,
/// so a template is registered once however many coordinators start at once.
pub fn template(tenant: &TenantId, template: TemplateId, fact: &str) -> String {
    format!("{PREFIX}.{tenant}.template.{template}.{fact}")
}

/// Where the alert of `crossing` for `key` (a condition, with a task type where it has one:
/// see `AlertRaised::alert_key`) of `agent` is stored. One subject per alert, so that it is
/// appended only where nothing is stored yet and a replay never stores it twice.
pub fn alert_raised(tenant: &TenantId, agent: AgentId, key: &str, crossing: u32) -> String {
    format!("{PREFIX}.{tenant}.agent.{agent}.{ALERT_RAISED}.{key}.{crossing}")
}

/// A webhook subscription's facts (`created`, `deleted`, `delivered`, `delivery_failed`).
pub fn subscription(tenant: &TenantId, subscription: SubscriptionId, fact: &str) -> String {
    format!("{PREFIX}.{tenant}.subscription.{subscription}.{fact}")
}

/// Every subscription's `fact` in `tenant`.
pub fn tenant_subscriptions(tenant: &TenantId, fact: &str) -> String {
    format!("{PREFIX}.{tenant}.subscription.*.{fact}")
}

/// Every subscription's `fact`, in every tenant.
pub fn all_subscriptions(fact: &str) -> String {
    format!("{PREFIX}.*.subscription.*.{fact}")
}

/// Whether `subject` is a webhook subscription's own fact: never delivered to a subscription,
/// so that a delivery's record cannot cause another delivery.
pub fn is_subscription_fact(subject: &str) -> bool {
    subject.split('.').nth(3) == Some("subscription")
}

/// Every event of a tenant.
pub fn tenant_events(tenant: &TenantId) -> String {
    format!("{PREFIX}.{tenant}.>")
}

/// Every event of a workflow: its own facts and its executions'.
pub fn workflow_events(tenant: &TenantId, workflow: WorkflowId) -> String {
    format!("{PREFIX}.{tenant}.workflow.{workflow}.>")
}

pub fn workflow(tenant: &TenantId, workflow: WorkflowId, fact: &str) -> String {
    format!("{PREFIX}.{tenant}.workflow.{workflow}.{fact}")
}

/// A workflow's own facts (created, paused, resumed), not its executions': the filter of the
/// workflow's optimistic-concurrency check and of its replay.
pub fn workflow_lifecycle(tenant: &TenantId, workflow: WorkflowId) -> String {
    format!("{PREFIX}.{tenant}.workflow.{workflow}.*")
}

pub fn knowledge(tenant: &TenantId, workflow: WorkflowId) -> String {
    knowledge_fact(tenant, workflow, SHARED)
}

/// What happened to the workflow's knowledge: `shared`, `validated` or `superseded`.
pub fn knowledge_fact(tenant: &TenantId, workflow: WorkflowId, fact: &str) -> String {
    format!("{PREFIX}.{tenant}.workflow.{workflow}.knowledge.{fact}")
}

pub fn interactions(tenant: &TenantId, workflow: WorkflowId, execution: ExecutionId) -> String {
    format!("{PREFIX}.{tenant}.workflow.{workflow}.interactions.{execution}.recorded")
}

pub fn execution(
    tenant: &TenantId,
    workflow: WorkflowId,
    execution: ExecutionId,
    fact: &str,
) -> String {
    format!("{PREFIX}.{tenant}.workflow.{workflow}.execution.{execution}.{fact}")
}

pub fn step(
    tenant: &TenantId,
    workflow: WorkflowId,
    execution: ExecutionId,
    step: &StepId,
    fact: &str,
) -> String {
    format!("{PREFIX}.{tenant}.workflow.{workflow}.execution.{execution}.step.{step}.{fact}")
}

/// Every event of one step of an execution, whatever its fact.
pub fn step_events(
    tenant: &TenantId,
    workflow: WorkflowId,
    execution: ExecutionId,
    step: &StepId,
) -> String {
    format!("{PREFIX}.{tenant}.workflow.{workflow}.execution.{execution}.step.{step}.>")
}

/// All of one execution's state events: the filter of its optimistic-concurrency check and of
/// its replay.
pub fn execution_state(tenant: &TenantId, workflow: WorkflowId, execution: ExecutionId) -> String {
    format!("{PREFIX}.{tenant}.workflow.{workflow}.execution.{execution}.>")
}

/// One execution's own facts (started, paused, resumed, escalated, ended, ...), without its
/// steps': all a run's status is folded from. A person's cancel, pause or resume expects only
/// these, so workers reporting on the run's steps meanwhile do not make it decide again.
pub fn execution_facts(tenant: &TenantId, workflow: WorkflowId, execution: ExecutionId) -> String {
    format!("{PREFIX}.{tenant}.workflow.{workflow}.execution.{execution}.*")
}

/// The `started` events of all executions of a workflow: the last one holds the last
/// execution number, and appending the next one expects it to still be the last.
pub fn execution_starts(tenant: &TenantId, workflow: WorkflowId) -> String {
    format!("{PREFIX}.{tenant}.workflow.{workflow}.execution.*.{STARTED}")
}

/// The start of an execution whose workflow is not known to the reader.
pub fn execution_started_in_any_workflow(tenant: &TenantId, execution: ExecutionId) -> String {
    format!("{PREFIX}.{tenant}.workflow.*.execution.{execution}.{STARTED}")
}

/// The subjects (ids as wildcards) under which events of the CloudEvents type `type_name` are
/// stored: in the whole tenant, or in one workflow's events when `workflow` is given (where a
/// type stored outside workflows has none). `None` for a type this build does not know. A
/// live feed that wants a few types asks the log for these, so it is never sent the others.
/// The filters of two types never overlap, as a consumer's filters must not.
pub fn of_type(
    tenant: &TenantId,
    workflow: Option<WorkflowId>,
    type_name: &str,
) -> Option<Vec<String>> {
    use crate::events::types as ty;
    let tenant_wide = |rest: String| match workflow {
        Some(_) => vec![],
        None => vec![format!("{PREFIX}.{tenant}.{rest}")],
    };
    let in_workflow = |rest: String| match workflow {
        Some(w) => vec![format!("{PREFIX}.{tenant}.workflow.{w}.{rest}")],
        None => vec![format!("{PREFIX}.{tenant}.workflow.*.{rest}")],
    };
    let execution = |fact: &str| in_workflow(format!("execution.*.{fact}"));
    let step = |fact: &str| in_workflow(format!("execution.*.step.*.{fact}"));
    Some(match type_name {
        ty::AGENT_REGISTERED => tenant_wide(format!("agent.*.{REGISTERED}")),
        ty::AGENT_STATUS_REPORTED => tenant_wide(format!("agent.*.{STATUS_REPORTED}")),
        ty::ALERT_RAISED => tenant_wide(format!("agent.*.{ALERT_RAISED}.*.*")),
        ty::TEMPLATE_REGISTERED => tenant_wide(format!("template.*.{REGISTERED}")),
        ty::SUBSCRIPTION_CREATED => tenant_wide(format!("subscription.*.{CREATED}")),
        ty::SUBSCRIPTION_DELETED => tenant_wide(format!("subscription.*.{DELETED}")),
        ty::WEBHOOK_DELIVERED => tenant_wide(format!("subscription.*.{DELIVERED}")),
        ty::WEBHOOK_DELIVERY_FAILED => tenant_wide(format!("subscription.*.{DELIVERY_FAILED}")),
        ty::WORKFLOW_CREATED => in_workflow(CREATED.to_owned()),
        ty::WORKFLOW_PAUSED => in_workflow(PAUSED.to_owned()),
        ty::WORKFLOW_RESUMED => in_workflow(RESUMED.to_owned()),
        ty::KNOWLEDGE_SHARED => in_workflow(format!("knowledge.{SHARED}")),
        ty::KNOWLEDGE_VALIDATED => in_workflow(format!("knowledge.{VALIDATED}")),
        ty::KNOWLEDGE_SUPERSEDED => in_workflow(format!("knowledge.{SUPERSEDED}")),
        ty::INTERACTION_RECORDED => in_workflow("interactions.*.recorded".to_owned()),
        ty::EXECUTION_STARTED => execution(STARTED),
        ty::EXECUTION_ESCALATED => execution(ESCALATED),
        ty::LEAD_TAKEN => execution(LEAD_TAKEN),
        ty::SAGA_STARTED => execution(SAGA_STARTED),
        ty::EXECUTION_REPLANNED => execution(REPLANNED),
        ty::STEP_DEADLINES_CHECKED => execution(STEP_DEADLINES_CHECKED),
        ty::EXECUTION_PAUSED => execution(PAUSED),
        ty::EXECUTION_RESUMED => execution(RESUMED),
        ty::EXECUTION_COMPLETED => execution(COMPLETED),
        ty::EXECUTION_FAILED => execution(FAILED),
        ty::EXECUTION_CANCELLED => execution(CANCELLED),
        // Resolving a step's escalation is the step's fact; a run's (over its time), the run's.
        ty::ESCALATION_RESOLVED => {
            [execution(ESCALATION_RESOLVED), step(ESCALATION_RESOLVED)].concat()
        }
        ty::STEP_SCHEDULED => step(SCHEDULED),
        ty::TASK_HANDED_OFF => step(HANDED_OFF),
        ty::STEP_STARTED => step(STARTED),
        ty::STEP_DEFERRED => step(DEFERRED),
        ty::STEP_COMPLETED => step(COMPLETED),
        ty::STEP_FAILED => step(FAILED),
        ty::STEP_TIMED_OUT => step(TIMED_OUT),
        ty::STEP_SKIPPED => step(SKIPPED),
        ty::STEP_RETRY_SCHEDULED => step(RETRY_SCHEDULED),
        ty::STEP_RETRY_DUE => step(RETRY_DUE),
        ty::STEP_ESCALATED => step(ESCALATED),
        ty::STEP_REVIEWED => step(REVIEWED),
        ty::VOTES_TALLIED => step(TALLIED),
        ty::QUESTIONS_ASKED => step(QUESTIONS_ASKED),
        ty::QUESTION_ASSIGNED => step(QUESTION_ASSIGNED),
        ty::QUESTION_ANSWERED => step(QUESTION_ANSWERED),
        ty::QUESTIONS_EXPIRED => step(QUESTIONS_EXPIRED),
        _ => return None,
    })
}

/// The key under which a start's idempotency key is claimed (in the idempotency bucket): the
/// client's key is hashed, so any text is a valid key and none is stored.
pub fn idempotency_key(tenant: &TenantId, workflow: WorkflowId, key: &str) -> String {
    let hashed = uuid::Uuid::new_v5(&workflow.0, key.as_bytes());
    format!("{tenant}.{workflow}.{hashed}")
}

/// All state events of one step of one execution.
pub fn step_state(
    tenant: &TenantId,
    workflow: WorkflowId,
    execution: ExecutionId,
    step: &StepId,
) -> String {
    format!("{PREFIX}.{tenant}.workflow.{workflow}.execution.{execution}.step.{step}.*")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_select_exactly_their_events() {
        let t = TenantId::default_tenant();
        let (w, e) = (WorkflowId::new(), ExecutionId::new());
        let s = StepId::parse("design").unwrap();
        let scheduled = step(&t, w, e, &s, SCHEDULED);
        let started = execution(&t, w, e, STARTED);
        let chat = interactions(&t, w, e);
        let know = knowledge(&t, w);

        let handed_off = step(&t, w, e, &s, HANDED_OFF);
        for subject in [&scheduled, &started, &handed_off] {
            assert!(is_execution_state(subject));
            assert!(selects(&execution_state(&t, w, e), subject));
        }
        assert!(selects(&execution_facts(&t, w, e), &started));
        assert!(selects(
            &execution_facts(&t, w, e),
            &execution(&t, w, e, CANCELLED)
        ));
        assert!(!selects(&execution_facts(&t, w, e), &scheduled));
        assert!(!selects(&execution_facts(&t, w, e), &handed_off));
        for subject in [
            &chat,
            &know,
            &workflow(&t, w, CREATED),
            &agent(&t, AgentId::new(), REGISTERED),
            &agent(&t, AgentId::new(), STATUS_REPORTED),
            &template(&t, TemplateId::new(), REGISTERED),
            &alert_raised(&t, AgentId::new(), "failure_rate", 1),
        ] {
            assert!(!is_execution_state(subject), "{subject}");
            assert!(!selects(&execution_state(&t, w, e), subject));
            assert!(selects(ALL_EVENTS, subject));
        }
        assert!(!is_workflow_lifecycle(&template(
            &t,
            TemplateId::new(),
            REGISTERED
        )));
        assert!(selects(&execution_starts(&t, w), &started));
        assert!(!selects(
            &execution_starts(&t, w),
            &step(&t, w, e, &s, STARTED)
        ));
        assert!(selects(&step_state(&t, w, e, &s), &scheduled));
    }

    #[test]
    fn a_types_filters_select_its_events_and_no_others() {
        let t = TenantId::default_tenant();
        let other = WorkflowId::new();
        let filters = |workflow, type_name| of_type(&t, workflow, type_name).expect("a known type");
        for event in crate::samples::every_event() {
            let subject = event.nats_subject(&t);
            let tokens: Vec<&str> = subject.split('.').collect();
            let workflow: Option<WorkflowId> = (tokens[3] == "workflow")
                .then(|| tokens[4].parse().map(WorkflowId).expect("a workflow id"));
            for type_name in crate::events::types::ALL {
                let own = *type_name == event.type_name();
                let in_tenant = filters(None, type_name)
                    .iter()
                    .any(|f| selects(f, &subject));
                assert_eq!(in_tenant, own, "{type_name} and {subject}");
                if let Some(w) = workflow {
                    let in_workflow = filters(Some(w), type_name)
                        .iter()
                        .any(|f| selects(f, &subject));
                    assert_eq!(
                        in_workflow, own,
                        "{type_name} in its workflow and {subject}"
                    );
                }
                let elsewhere = filters(Some(other), type_name)
                    .iter()
                    .any(|f| selects(f, &subject));
                assert!(!elsewhere, "{type_name} in another workflow and {subject}");
            }
        }
        assert_eq!(of_type(&t, None, "dev.cadre.execution.finished.v1"), None);
    }

    #[test]
    fn workers_take_only_their_providers_steps_and_never_a_waiting_one() {
        let t = TenantId::default_tenant();
        let (e, s) = (ExecutionId::new(), StepId::parse("design").unwrap());
        let quirk = dispatched_steps("quirk", &t);
        assert!(selects(&dispatched_steps_for("quirk"), &quirk));
        assert!(!selects(&dispatched_steps_for("offline"), &quirk));
        assert!(selects(ALL_DISPATCHED_STEPS, &quirk));
        let waiting = deferred_step("quirk", &t, e, &s, 2);
        assert!(selects(ALL_DISPATCHED_STEPS, &waiting));
        assert!(!selects(&dispatched_steps_for("quirk"), &waiting));

        for good in ["offline", "open-ai", "llama_cpp", "anthropic2"] {
            assert!(is_provider_name(good), "{good}");
        }
        for bad in ["", "a.b", "a*", ">", "a b", "ä", "Quirk"] {
            assert!(!is_provider_name(bad), "{bad}");
        }
    }
}

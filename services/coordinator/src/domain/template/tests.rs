//! Templates: the system ones are valid workflows that run to completion in the pure core;
//! registration is idempotent; a team maps onto a template's roles, or the request is told
//! which role or agent is wrong.

use std::collections::BTreeMap;

use cadre_proto::events::{Request, Resolution, StepAttempt, StepCompleted, StepReviewed};
use cadre_proto::model::{
    AgentProfile, EscalationRung, ModelParameters, PhaseMode, RiskLead, StepResult, StepType,
    TriggerReason,
};
use cadre_proto::{AgentId, ExecutionId, StepId, TenantId};
use chrono::{DateTime, Utc};
use serde_json::json;

use super::system::{self, CRITICAL_PRODUCTION_BUG, IMPLEMENT_A_FEATURE, PERFORMANCE_OPTIMISATION};
use super::*;
use crate::domain::execution::{self, Start};

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-29T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn system_template(slug: &str) -> WorkflowTemplate {
    let tenant = TenantId::default_tenant();
    system::templates(&tenant)
        .unwrap()
        .into_iter()
        .find(|t| t.id == system::id(&tenant, slug))
        .unwrap()
}

fn agent(name: &str, role: &str) -> AgentProfile {
    AgentProfile {
        id: AgentId::new(),
        name: name.into(),
        role: role.into(),
        backstory: String::new(),
        skills: vec!["debugging".into(), "performance optimisation".into()],
        provider: "offline".into(),
        model: "offline-1".into(),
        model_parameters: ModelParameters::default(),
        fallback: None,
    }
}

/// One agent per role the template needs, each of that role.
fn team_for(template: &WorkflowTemplate) -> BTreeMap<String, AgentProfile> {
    template
        .required_agent_roles
        .iter()
        .map(|role| (role.clone(), agent(&format!("{role} agent"), role)))
        .collect()
}

fn request(agents: BTreeMap<String, AgentProfile>) -> Instantiation {
    Instantiation {
        workflow_id: WorkflowId::new(),
        name: None,
        description: None,
        agents,
        coordinator_agent_id: None,
    }
}

fn pointers(errors: &[FieldError]) -> Vec<&str> {
    errors.iter().map(|e| e.pointer.as_str()).collect()
}

#[test]
fn system_templates_are_written_with_known_fields_only_and_validate() {
    for source in system::SOURCES {
        let mut unknown = Vec::new();
        let draft: TemplateDraft = serde_ignored::deserialize(
            &mut serde_json::Deserializer::from_str(source.json),
            |path| unknown.push(path.to_string()),
        )
        .unwrap();
        assert!(unknown.is_empty(), "{}: unknown {unknown:?}", source.slug);
        assert_eq!(draft.validate(), vec![], "{}", source.slug);
    }
    let names: Vec<String> = system::templates(&TenantId::default_tenant())
        .unwrap()
        .into_iter()
        .map(|t| {
            assert!(t.is_system_template && t.revision >= 1 && t.created_by.is_none());
            t.name
        })
        .collect();
    assert_eq!(
        names,
        [
            "Implement a feature",
            "Critical production bug resolution",
            "System performance optimisation"
        ]
    );
}

#[test]
fn the_feature_template_has_the_seeds_four_phases_and_a_person_approves_the_production_deploy() {
    let template = system_template(IMPLEMENT_A_FEATURE);
    assert_eq!(
        template.required_agent_roles,
        [
            "security", "database", "frontend", "api", "testing", "devops"
        ]
    );
    let phases: Vec<(&str, PhaseMode)> = template
        .template_definition
        .phases
        .iter()
        .map(|p| (p.name.as_str(), p.mode))
        .collect();
    assert_eq!(
        phases,
        [
            ("Analysis & Design", PhaseMode::Parallel),
            ("Core Implementation", PhaseMode::Sequential),
            ("Integration & Deployment", PhaseMode::Parallel),
            ("Production Release", PhaseMode::Sequential),
        ]
    );
    let workflow = instantiate(&template, request(team_for(&template))).unwrap();
    let deploy = workflow
        .step(&StepId::parse("deploy-production").unwrap())
        .unwrap();
    let approval = workflow
        .step(&StepId::parse("production-approval").unwrap())
        .unwrap();
    assert_eq!(approval.step_type, StepType::Approval);
    assert!(
        workflow.dependencies(deploy).contains(&&approval.id),
        "the production deploy waits for the approval"
    );
}

#[test]
fn the_bug_template_is_time_boxed_and_escalates_as_the_seed_says() {
    let template = system_template(CRITICAL_PRODUCTION_BUG);
    let config = &template.template_definition;
    let boxes: Vec<(&str, Vec<Option<f64>>)> = config
        .phases
        .iter()
        .map(|phase| {
            let minutes = phase
                .steps
                .iter()
                .map(|id| config.steps.iter().find(|s| &s.id == id).unwrap())
                .map(|s| s.timeout_minutes)
                .collect();
            (phase.name.as_str(), minutes)
        })
        .collect();
    assert_eq!(
        boxes,
        [
            ("Triage", vec![Some(5.0); 2]),
            ("Investigation", vec![Some(15.0); 3]),
            ("Solution Implementation", vec![Some(30.0); 3]),
            ("Validation & Deployment", vec![Some(15.0); 3]),
        ]
    );
    assert_eq!(
        config.phases.iter().map(|p| p.steps.len()).sum::<usize>(),
        config.steps.len(),
        "every step is in a phase"
    );
    let escalation = &config.escalation;
    assert_eq!(escalation.after_minutes, Some(60.0));
    assert_eq!(
        escalation.ladder,
        [EscalationRung::Reassign, EscalationRung::Person]
    );
    let lead = |risk: &str, role: &str| RiskLead {
        risk: risk.into(),
        role: role.into(),
    };
    assert_eq!(
        escalation.leads,
        [
            lead("security", "security"),
            lead("data-corruption", "database")
        ]
    );
    assert_eq!(
        template.required_agent_roles,
        ["meta", "devops", "database", "testing", "security"]
    );
}

#[test]
fn the_performance_template_implements_by_impact_high_first() {
    let template = system_template(PERFORMANCE_OPTIMISATION);
    let implementation = &template.template_definition.phases[2];
    assert_eq!(implementation.mode, PhaseMode::Sequential);
    let order: Vec<&str> = implementation.steps.iter().map(StepId::as_str).collect();
    assert_eq!(order, ["high-impact", "medium-impact", "low-impact"]);
    assert_eq!(
        template.required_agent_roles,
        ["database", "frontend", "api", "devops", "testing", "meta"]
    );
}

/// The attempt's outcome: a review approves, any other attempt completes.
fn completed(scheduled: &cadre_proto::events::StepScheduled) -> Event {
    if let Some(review) = &scheduled.review {
        return Event::StepReviewed(StepReviewed {
            attempt: StepAttempt::of(scheduled),
            round: review.round,
            author_agent_id: review.author_agent_id,
            approved: true,
            feedback: "Clear and complete.".into(),
            ballot: review.ballot,
            usage: None,
        });
    }
    Event::StepCompleted(Box::new(StepCompleted {
        attempt: StepAttempt::of(scheduled),
        result: StepResult {
            summary: format!("did {}", scheduled.step.name),
            output: format!("output of {}", scheduled.step.id),
            ..StepResult::default()
        },
        provider: "offline".into(),
        model: "offline-1".into(),
        duration_ms: 1,
        cost_usd: None,
        knowledge_used: Vec::new(),
        knowledge_handed_on: Vec::new(),
        fallback_reason: None,
        told: vec![],
    }))
}

/// Runs `workflow` with `agents` in the pure core, completing every step an agent gets and
/// approving every review and approval; returns the step ids in the order they were handed out (an
/// approval when it was approved) and the final event.
fn run(workflow: &WorkflowDefinition, agents: Vec<AgentProfile>) -> (Vec<String>, Event) {
    let start = Start {
        execution_id: ExecutionId::new(),
        trigger_reason: TriggerReason::Manual,
        triggered_by: None,
        workflow: workflow.clone(),
        agents,
        input: Some(json!({ "feature": "real-time inspection collaboration" })),
        parent: None,
        records: Default::default(),
    };
    let mut log = vec![Event::ExecutionStarted(Box::new(execution::started(
        &start,
        1,
        now(),
    )))];
    let mut order = Vec::new();
    for _ in 0..200 {
        let state = log
            .iter()
            .fold(execution::State::NotStarted, execution::evolve);
        let decided = execution::decide(&execution::Command::Advance, &state, now()).unwrap();
        if let Some(end) = decided
            .iter()
            .find(|e| matches!(e, Event::ExecutionCompleted(_) | Event::ExecutionFailed(_)))
        {
            return (order, end.clone());
        }
        let mut answers = Vec::new();
        for event in &decided {
            match event {
                Event::StepScheduled(s) => {
                    // A review is another attempt of a step already handed out.
                    if s.review.is_none() {
                        order.push(s.step.id.to_string());
                    }
                    answers.push(completed(s));
                }
                Event::StepEscalated(e) if e.approval => {
                    let state = log
                        .iter()
                        .chain(&decided)
                        .fold(execution::State::NotStarted, execution::evolve);
                    let approve = execution::Command::Resolve {
                        escalation_id: e.escalation_id.unwrap(),
                        resolution: Resolution::Approve,
                        request: Request {
                            requested_by: Some("release manager".into()),
                            reason: Some("audit and tests are clean".into()),
                        },
                    };
                    order.push(e.step_id.to_string());
                    answers.extend(execution::decide(&approve, &state, now()).unwrap());
                }
                _ => {}
            }
        }
        assert!(
            !decided.is_empty() || !answers.is_empty(),
            "the run is stuck after {order:?}"
        );
        log.extend(decided);
        log.extend(answers);
    }
    panic!("the run did not end: {order:?}");
}

#[test]
fn every_system_template_runs_to_completion_in_phase_order() {
    for source in system::SOURCES {
        let template = system_template(source.slug);
        let team = team_for(&template);
        let agents: Vec<AgentProfile> = team.values().cloned().collect();
        let workflow = instantiate(&template, request(team)).unwrap();
        assert_eq!(validate_workflow(&workflow), vec![], "{}", source.slug);
        let (order, end) = run(&workflow, agents);
        assert!(
            matches!(end, Event::ExecutionCompleted(_)),
            "{}: {end:?}",
            source.slug
        );
        let position = |id: &str| order.iter().position(|s| s == id);
        let config = &template.template_definition;
        for pair in config.phases.windows(2) {
            let last_of_earlier = pair[0]
                .steps
                .iter()
                .filter_map(|s| position(s.as_str()))
                .max();
            let first_of_later = pair[1]
                .steps
                .iter()
                .filter_map(|s| position(s.as_str()))
                .min();
            assert!(
                last_of_earlier < first_of_later,
                "{}: phase '{}' began before '{}' ended: {order:?}",
                source.slug,
                pair[1].name,
                pair[0].name
            );
        }
        let run_steps = order.len();
        let skipped: Vec<&str> = config
            .steps
            .iter()
            .filter(|s| position(s.id.as_str()).is_none())
            .map(|s| s.id.as_str())
            .collect();
        assert_eq!(run_steps + skipped.len(), config.steps.len());
        // Only the bug template's security review is conditional, and an ordinary triage
        // raises no security concern.
        let expected_skips: &[&str] = if source.slug == CRITICAL_PRODUCTION_BUG {
            &["security-review"]
        } else {
            &[]
        };
        assert_eq!(skipped, expected_skips, "{}", source.slug);
    }
    let feature = system_template(IMPLEMENT_A_FEATURE);
    let workflow = instantiate(&feature, request(team_for(&feature))).unwrap();
    let (order, _) = run(&workflow, team_for(&feature).into_values().collect());
    assert_eq!(
        &order[order.len() - 4..],
        [
            "deploy-staging",
            "smoke-tests",
            "production-approval",
            "deploy-production"
        ]
    );
}

#[test]
fn a_system_template_is_registered_once_and_replaced_only_by_a_higher_revision() {
    let template = system_template(IMPLEMENT_A_FEATURE);
    let register = |t: &WorkflowTemplate| Command::Register(Box::new(t.clone()));
    let first = Template::decide(&register(&template), &State::Unknown, now()).unwrap();
    assert_eq!(first.len(), 1);
    let state = Template::evolve(State::Unknown, &first[0]);
    assert_eq!(state.template(), Some(&template));

    assert_eq!(
        Template::decide(&register(&template), &state, now()).unwrap(),
        vec![],
        "a restart registers nothing"
    );
    let mut changed = template.clone();
    changed.description = "An older build's".into();
    assert_eq!(
        Template::decide(&register(&changed), &state, now()).unwrap(),
        vec![],
        "the same revision is not a change"
    );
    changed.revision = template.revision + 1;
    let second = Template::decide(&register(&changed), &state, now()).unwrap();
    let state = Template::evolve(state, &second[0]);
    assert_eq!(state.template(), Some(&changed));
    assert_eq!(
        Template::decide(&register(&template), &state, now()).unwrap(),
        vec![],
        "an older revision does not take it back"
    );

    let mut user = template.clone();
    user.is_system_template = false;
    let registered = Template::decide(&register(&user), &State::Unknown, now()).unwrap();
    let state = Template::evolve(State::Unknown, &registered[0]);
    assert_eq!(
        Template::decide(&register(&user), &state, now()),
        Err(Error::AlreadyExists(user.id))
    );
}

fn draft(configuration: serde_json::Value) -> TemplateDraft {
    serde_json::from_value(json!({
        "name": "Review a change",
        "description": "Two reviewers look at a change.",
        "category": "review",
        "templateDefinition": configuration,
    }))
    .unwrap()
}

fn step(id: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut step = json!({
        "id": id, "name": format!("Step {id}"), "description": "A part of the work.",
        "type": "review", "requiredSkills": ["code review"],
        "instructions": format!("Do {id}."), "expectedOutput": "It, done."
    });
    for (key, value) in extra.as_object().unwrap() {
        step[key] = value.clone();
    }
    step
}

#[test]
fn a_users_template_takes_the_roles_it_lists_and_those_its_steps_name() {
    let mut draft = draft(json!({
        "steps": [
            step("read", json!({ "assignedAgentRole": "Reviewer" })),
            step("check", json!({ "assignedAgentRole": "reviewer ", "reviewRequired": true, "reviewerRole": "lead" })),
        ],
        "escalation": { "leads": [{ "risk": "security", "role": "auditor" }] }
    }));
    draft.required_agent_roles = vec!["scribe".into(), "LEAD".into()];
    assert_eq!(draft.validate(), vec![]);
    let template = draft.into_template(TemplateId::new(), false, 1);
    assert_eq!(
        template.required_agent_roles,
        ["scribe", "LEAD", "Reviewer", "auditor"],
        "listed first, then named, each once whatever its case"
    );
    assert_eq!(template.recommended_agent_count, 4);
    assert!(!template.is_system_template);
}

#[test]
fn a_template_must_name_roles_not_agents_and_be_a_valid_workflow() {
    let mut bad = draft(json!({
        "steps": [
            step("read", json!({ "preferredAgentId": AgentId::new(), "dependsOn": ["nowhere"] })),
            step("read", json!({ "childWorkflowId": WorkflowId::new() })),
        ],
        "triggers": { "afterWorkflows": [WorkflowId::new()] },
        "escalation": { "ladder": ["coordinator"] }
    }));
    bad.required_agent_roles = vec!["a".into(), " A".into(), String::new()];
    bad.recommended_agent_count = Some(0);
    let errors = bad.validate();
    assert_eq!(
        pointers(&errors),
        [
            "/templateDefinition/steps/0/preferredAgentId",
            "/templateDefinition/steps/1/childWorkflowId",
            "/templateDefinition/triggers/afterWorkflows",
            "/templateDefinition/steps/1/id",
            "/templateDefinition/steps/0/dependsOn/0",
            "/requiredAgentRoles/2",
            "/requiredAgentRoles/1",
            "/recommendedAgentCount",
        ],
        "{errors:#?}"
    );
    assert!(
        errors[3].message.contains("duplicate step id"),
        "{errors:#?}"
    );

    let roleless = draft(json!({ "steps": [step("read", json!({}))] }));
    let errors = roleless.validate();
    assert_eq!(pointers(&errors), ["/requiredAgentRoles"]);
    assert!(errors[0].message.contains("at least one role"));
}

#[test]
fn a_team_maps_onto_the_roles_and_each_role_becomes_its_agents_own() {
    let template = system_template(CRITICAL_PRODUCTION_BUG);
    // Five roles, three agents: Max covers meta and devops, Sec covers security and testing.
    let (max, dana, sec) = (
        agent("Max", "Site reliability"),
        agent("Dana", "database"),
        agent("Sec", "appsec"),
    );
    let agents = BTreeMap::from([
        ("meta".to_owned(), max.clone()),
        ("DevOps".to_owned(), max.clone()),
        ("database".to_owned(), dana.clone()),
        ("testing".to_owned(), sec.clone()),
        ("security".to_owned(), sec.clone()),
    ]);
    let coordinator = agent("Cora", "coordinator");
    let workflow = instantiate(
        &template,
        Instantiation {
            name: Some("Fix the login outage".into()),
            coordinator_agent_id: Some(coordinator.id),
            ..request(agents)
        },
    )
    .unwrap();
    assert_eq!(workflow.name, "Fix the login outage");
    assert_eq!(workflow.description, template.description);
    assert_eq!(
        workflow.participating_agents,
        [max.id, dana.id, sec.id, coordinator.id],
        "in the order of the template's roles, each once, then the coordinator"
    );
    assert_eq!(workflow.coordinator_agent_id, Some(coordinator.id));
    let role_of = |id: &str| {
        workflow
            .step(&StepId::parse(id).unwrap())
            .unwrap()
            .assigned_agent_role
            .clone()
    };
    assert_eq!(role_of("triage").as_deref(), Some("Site reliability"));
    assert_eq!(role_of("mitigation").as_deref(), Some("Site reliability"));
    assert_eq!(role_of("impact-assessment").as_deref(), Some("database"));
    assert_eq!(role_of("security-review").as_deref(), Some("appsec"));
    assert_eq!(
        role_of("root-cause"),
        None,
        "a step without a role keeps none"
    );
    let leads: Vec<&str> = workflow
        .configuration
        .escalation
        .leads
        .iter()
        .map(|l| l.role.as_str())
        .collect();
    assert_eq!(leads, ["appsec", "database"]);
    assert_eq!(validate_workflow(&workflow), vec![]);
}

#[test]
fn an_unmapped_an_unknown_or_a_twice_mapped_role_is_named_with_its_pointer() {
    let template = system_template(IMPLEMENT_A_FEATURE);
    let mut agents = team_for(&template);
    agents.remove("security");
    agents.insert("DATABASE".into(), agent("Dee", "database"));
    agents.insert("ops/sec~1".into(), agent("Oz", "ops"));
    let errors = instantiate(&template, request(agents)).unwrap_err();
    assert_eq!(
        pointers(&errors),
        [
            "/agents/database",
            "/agents/ops~1sec~01",
            "/agents/security"
        ],
        "{errors:#?}"
    );
    assert!(errors[0].message.contains("mapped twice"));
    assert!(errors[1].message.contains("no role 'ops/sec~1'"));
    assert!(errors[1].message.contains("security, database, frontend"));
    assert!(
        errors[2]
            .message
            .contains("needs an agent for the role 'security'")
    );

    let mut coordinated = draft(json!({
        "steps": [step("read", json!({ "assignedAgentRole": "reviewer" }))],
        "escalation": { "ladder": ["coordinator"] }
    }))
    .into_template(TemplateId::new(), false, 1);
    let team = BTreeMap::from([("reviewer".to_owned(), agent("Rae", "reviewer"))]);
    let errors = instantiate(&coordinated, request(team.clone())).unwrap_err();
    assert_eq!(pointers(&errors), ["/coordinatorAgentId"]);
    coordinated.template_definition.escalation.ladder.clear();
    assert!(instantiate(&coordinated, request(team)).is_ok());
}

#[test]
fn roles_mapped_to_agents_that_share_a_registered_role_keep_their_steps_apart() {
    let template = system_template(CRITICAL_PRODUCTION_BUG);
    let mut agents = team_for(&template);
    // The database and devops roles go to two agents both registered as `dev`.
    let (alice, bob) = (agent("Alice", "dev"), agent("Bob", "dev"));
    agents.insert("database".to_owned(), alice.clone());
    agents.insert("devops".to_owned(), bob.clone());
    let workflow = instantiate(&template, request(agents)).unwrap();
    let pinned = |id: &str| {
        workflow
            .step(&StepId::parse(id).unwrap())
            .unwrap()
            .preferred_agent_id
    };
    assert_eq!(pinned("impact-assessment"), Some(alice.id));
    assert_eq!(pinned("mitigation"), Some(bob.id));
    assert_eq!(pinned("triage"), None, "an unshared role needs no pin");
    assert_eq!(validate_workflow(&workflow), vec![]);
}

#[test]
fn a_template_that_re_plans_names_its_coordinator_when_a_workflow_is_made_of_it() {
    let draft = draft(json!({
        "steps": [step("review", json!({ "assignedAgentRole": "reviewer" }))],
        "saga": { "replan": true }
    }));
    assert_eq!(draft.validate(), vec![], "the coordinator is named later");
    let template = draft.into_template(TemplateId::new(), false, 1);
    let agents = BTreeMap::from([("reviewer".to_owned(), agent("Rae", "reviewer"))]);
    let errors = instantiate(&template, request(agents)).unwrap_err();
    assert_eq!(pointers(&errors), ["/coordinatorAgentId"]);
}

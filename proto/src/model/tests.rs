//! Staffing a template: the participants come in the order of its roles, each role becomes its
//! agent's registered role, and agents that share a registered role get their steps pinned.

use super::*;
use crate::samples;

/// The sample workflow's step, as `id`, assigned to `role` and reviewed by `reviewer`.
fn step(id: &str, role: Option<&str>, reviewer: Option<&str>) -> WorkflowStep {
    WorkflowStep {
        id: StepId::parse(id).unwrap(),
        assigned_agent_role: role.map(str::to_owned),
        reviewer_role: reviewer.map(str::to_owned),
        review_required: reviewer.is_some(),
        ..samples::workflow().configuration.steps.remove(0)
    }
}

/// A template of five roles: `read` and `check` by a reviewer (`check` reviewed by the lead),
/// `fix` by a developer, `note` by nobody in particular, a security lead rule for the auditor,
/// and a scribe no step names.
fn template() -> WorkflowTemplate {
    WorkflowTemplate {
        id: TemplateId::new(),
        name: "Review a change".into(),
        description: "Reviewers look at a change.".into(),
        category: TemplateCategory::Review,
        workflow_type: WorkflowType::default(),
        template_definition: WorkflowConfiguration {
            steps: vec![
                step("read", Some("Reviewer"), None),
                step("check", Some("reviewer "), Some("LEAD")),
                step("fix", Some("developer"), None),
                step("note", None, None),
            ],
            phases: vec![],
            escalation: EscalationPolicy {
                leads: vec![RiskLead {
                    risk: "security".into(),
                    role: "auditor".into(),
                }],
                ..EscalationPolicy::default()
            },
            ..samples::workflow().configuration
        },
        required_agent_roles: ["scribe", "lead", "Reviewer", "developer", "auditor"]
            .map(str::to_owned)
            .to_vec(),
        recommended_agent_count: 5,
        is_system_template: false,
        created_by: None,
        revision: 1,
    }
}

fn member(role: &str) -> TeamMember {
    TeamMember {
        id: AgentId::new(),
        role: role.to_owned(),
    }
}

fn team(members: &[(&str, &TeamMember)]) -> BTreeMap<String, TeamMember> {
    members
        .iter()
        .map(|(role, member)| ((*role).to_owned(), (*member).clone()))
        .collect()
}

fn assigned(staffing: &Staffing, step: &str) -> (Option<String>, Option<AgentId>) {
    let step = staffing
        .configuration
        .steps
        .iter()
        .find(|s| s.id.as_str() == step)
        .unwrap();
    (step.assigned_agent_role.clone(), step.preferred_agent_id)
}

#[test]
fn roles_are_compared_without_case_or_surrounding_spaces() {
    assert_eq!(role_key("  Reviewer "), "reviewer");
    assert_eq!(role_key("DevOps"), role_key("devops"));
}

#[test]
fn each_role_becomes_the_registered_role_of_its_agent() {
    let (scribe, lead, reviewer, dev) = (
        member("Writer"),
        member("Tech lead"),
        member("code reviewer"),
        member("backend"),
    );
    // The reviewer also audits; the coordinator is the scribe too.
    let team = team(&[
        ("SCRIBE", &scribe),
        ("lead", &lead),
        ("reviewer", &reviewer),
        (" Developer", &dev),
        ("auditor", &reviewer),
    ]);
    let staffing = template().staff(&team, Some(scribe.id));
    assert_eq!(
        staffing.participating_agents,
        [scribe.id, lead.id, reviewer.id, dev.id],
        "in the order of the template's roles, each once, the coordinator not twice"
    );
    assert_eq!(
        assigned(&staffing, "read"),
        (Some("code reviewer".into()), None)
    );
    assert_eq!(
        assigned(&staffing, "check"),
        (Some("code reviewer".into()), None)
    );
    assert_eq!(assigned(&staffing, "fix"), (Some("backend".into()), None));
    assert_eq!(assigned(&staffing, "note"), (None, None));
    let check = &staffing.configuration.steps[1];
    assert_eq!(check.reviewer_role.as_deref(), Some("Tech lead"));
    assert_eq!(
        staffing.configuration.escalation.leads[0].role,
        "code reviewer"
    );
}

#[test]
fn the_coordinator_comes_last() {
    let one = member("generalist");
    let coordinator = AgentId::new();
    let team = team(&[
        ("scribe", &one),
        ("lead", &one),
        ("reviewer", &one),
        ("developer", &one),
        ("auditor", &one),
    ]);
    let staffing = template().staff(&team, Some(coordinator));
    assert_eq!(staffing.participating_agents, [one.id, coordinator]);
    assert!(
        staffing
            .configuration
            .steps
            .iter()
            .all(|s| s.preferred_agent_id.is_none()),
        "one agent shares its role with no other"
    );
}

#[test]
fn agents_that_share_a_registered_role_have_their_steps_pinned() {
    let (alice, bob, lead) = (member("dev"), member("DEV "), member("lead"));
    let team = team(&[
        ("scribe", &lead),
        ("lead", &lead),
        ("reviewer", &alice),
        ("developer", &bob),
        ("auditor", &lead),
    ]);
    let staffing = template().staff(&team, None);
    assert_eq!(
        assigned(&staffing, "read"),
        (Some("dev".into()), Some(alice.id))
    );
    assert_eq!(
        assigned(&staffing, "check"),
        (Some("dev".into()), Some(alice.id))
    );
    assert_eq!(
        assigned(&staffing, "fix"),
        (Some("DEV ".into()), Some(bob.id))
    );
    assert_eq!(assigned(&staffing, "note"), (None, None));
}

#[test]
fn an_unmapped_role_stays_as_written_and_brings_no_agent() {
    let (reviewer, stranger) = (member("code reviewer"), member("stranger"));
    let team = team(&[("reviewer", &reviewer), ("janitor", &stranger)]);
    let staffing = template().staff(&team, None);
    assert_eq!(staffing.participating_agents, [reviewer.id]);
    assert_eq!(assigned(&staffing, "fix"), (Some("developer".into()), None));
    assert_eq!(
        staffing.configuration.steps[1].reviewer_role.as_deref(),
        Some("LEAD")
    );
}

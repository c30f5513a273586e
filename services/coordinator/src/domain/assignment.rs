//! Which participating agent takes a step: the preferred agent, else an agent of the requested
//! role, else the best skill match, else the least loaded. Load (steps an agent is already doing
//! in this execution) breaks ties, then the order of `participatingAgents`.

use std::collections::HashMap;

use cadre_proto::AgentId;
use cadre_proto::events::{AssignmentReason, Ballot};
use cadre_proto::model::{AgentProfile, WorkflowStep};

/// The seed's fuzzy rule: a skill matches when either name contains the other, ignoring case.
fn skill_matches(required: &str, offered: &str) -> bool {
    let (required, offered) = (required.to_lowercase(), offered.to_lowercase());
    required.contains(&offered) || offered.contains(&required)
}

/// Picks the agent for `step` among `candidates` (in participation order). `None` only when
/// there are no candidates.
pub fn assign<'a>(
    step: &WorkflowStep,
    candidates: &'a [AgentProfile],
    load: &HashMap<AgentId, u32>,
) -> Option<(&'a AgentProfile, AssignmentReason)> {
    let load_of = |agent: &AgentProfile| load.get(&agent.id).copied().unwrap_or(0);
    let least_loaded = |agents: &mut dyn Iterator<Item = &'a AgentProfile>| {
        // min_by_key keeps the first of equals: participation order breaks ties.
        agents.min_by_key(|a| load_of(a))
    };

    if let Some(preferred) = step.preferred_agent_id
        && let Some(agent) = candidates.iter().find(|a| a.id == preferred)
    {
        return Some((agent, AssignmentReason::PreferredAgent));
    }

    if let Some(role) = step.assigned_agent_role.as_deref() {
        let mut of_role = candidates
            .iter()
            .filter(|a| a.role.trim().eq_ignore_ascii_case(role.trim()));
        if let Some(agent) = least_loaded(&mut of_role) {
            return Some((
                agent,
                AssignmentReason::RoleMatch {
                    role: agent.role.clone(),
                },
            ));
        }
    }

    let matched_skills = |agent: &AgentProfile| -> Vec<String> {
        step.required_skills
            .iter()
            .filter(|required| agent.skills.iter().any(|s| skill_matches(required, s)))
            .cloned()
            .collect()
    };
    let best = candidates
        .iter()
        .map(|agent| (agent, matched_skills(agent)))
        .filter(|(_, matched)| !matched.is_empty())
        // Most skills first, then least load; `min_by_key` keeps participation order on ties.
        .min_by_key(|(agent, matched)| (std::cmp::Reverse(matched.len()), load_of(agent)));
    if let Some((agent, matched)) = best {
        return Some((
            agent,
            AssignmentReason::SkillMatch {
                matched,
                active_steps: load_of(agent),
            },
        ));
    }

    least_loaded(&mut candidates.iter()).map(|agent| {
        (
            agent,
            AssignmentReason::LeastLoaded {
                active_steps: load_of(agent),
            },
        )
    })
}

/// Picks the reviewer of `author`'s work on `step`: the least loaded agent of the step's
/// `reviewerRole` other than the author, else the least loaded other participant, else (a team
/// of one) the author. With a `ballot` it picks a voter of a panel the same way, among those
/// not in `voted` (who already voted this round). `None` only when there are no candidates.
pub fn assign_reviewer<'a>(
    step: &WorkflowStep,
    candidates: &'a [AgentProfile],
    load: &HashMap<AgentId, u32>,
    author: AgentId,
    ballot: Option<(Ballot, &[AgentId])>,
) -> Option<(&'a AgentProfile, AssignmentReason)> {
    let load_of = |agent: &&AgentProfile| load.get(&agent.id).copied().unwrap_or(0);
    let role = step.reviewer_role.as_deref().map(str::trim);
    let voted = ballot.map(|(_, voted)| voted).unwrap_or_default();
    let others = || {
        candidates
            .iter()
            .filter(|a| a.id != author && !voted.contains(&a.id))
    };
    let of_role = others()
        .filter(|a| role.is_some_and(|r| a.role.trim().eq_ignore_ascii_case(r)))
        .min_by_key(load_of);
    let agent = of_role
        .or_else(|| others().min_by_key(load_of))
        .or_else(|| candidates.iter().find(|a| a.id == author))?;
    let role = role.filter(|_| of_role.is_some()).map(str::to_owned);
    let reason = match ballot {
        Some((ballot, _)) => AssignmentReason::Voter {
            role,
            author_agent_id: author,
            ballot,
        },
        None => AssignmentReason::Reviewer {
            role,
            author_agent_id: author,
        },
    };
    Some((agent, reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cadre_proto::StepId;
    use cadre_proto::model::{ModelParameters, StepType};

    fn agent(name: &str, role: &str, skills: &[&str]) -> AgentProfile {
        AgentProfile {
            id: AgentId::new(),
            name: name.into(),
            role: role.into(),
            backstory: String::new(),
            skills: skills.iter().map(|s| s.to_string()).collect(),
            provider: "offline".into(),
            model: "m".into(),
            model_parameters: ModelParameters::default(),
            fallback: None,
        }
    }

    fn step(skills: &[&str]) -> WorkflowStep {
        WorkflowStep {
            id: StepId::parse("s").unwrap(),
            name: "S".into(),
            description: String::new(),
            step_type: StepType::Analysis,
            assigned_agent_role: None,
            preferred_agent_id: None,
            required_skills: skills.iter().map(|s| s.to_string()).collect(),
            depends_on: vec![],
            can_run_in_parallel: true,
            instructions: "do".into(),
            expected_output: "done".into(),
            timeout_minutes: None,
            validation_criteria: vec![],
            review_required: false,
            reviewer_role: None,
            condition: None,
            child_workflow_id: None,
            risks: Vec::new(),
            compensation: None,
        }
    }

    #[test]
    fn preferred_then_role_then_skills_then_load() {
        let team = vec![
            agent("Ada", "architect", &["system design", "rust"]),
            agent("Bo", "reviewer", &["code review"]),
            agent("Cy", "Reviewer", &["testing"]),
        ];
        let none = HashMap::new();

        let mut s = step(&["review"]);
        s.preferred_agent_id = Some(team[2].id);
        assert_eq!(
            assign(&s, &team, &none).unwrap().1,
            AssignmentReason::PreferredAgent
        );

        let mut s = step(&[]);
        s.assigned_agent_role = Some("reviewer".into());
        let busy_bo = HashMap::from([(team[1].id, 2)]);
        let (who, why) = assign(&s, &team, &busy_bo).unwrap();
        assert_eq!(who.name, "Cy", "the less loaded of two reviewers");
        assert!(matches!(why, AssignmentReason::RoleMatch { .. }));

        let (who, why) = assign(&step(&["Design", "Rust", "review"]), &team, &none).unwrap();
        assert_eq!(who.name, "Ada");
        assert_eq!(
            why,
            AssignmentReason::SkillMatch {
                matched: vec!["Design".into(), "Rust".into()],
                active_steps: 0
            }
        );

        let busy_ada = HashMap::from([(team[0].id, 1)]);
        let (who, why) = assign(&step(&["cooking"]), &team, &busy_ada).unwrap();
        assert_eq!(who.name, "Bo");
        assert_eq!(why, AssignmentReason::LeastLoaded { active_steps: 0 });

        assert!(assign(&step(&[]), &[], &none).is_none());
    }
}

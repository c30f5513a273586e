//! Which participating agent takes a step: the preferred agent, else an agent of the requested
//! role, else the best skill match, else the least loaded. Ties go to the less loaded (steps an
//! agent is already doing in this execution), then to the better record (how its earlier work
//! went: the run's `ExecutionStarted.records`), then to the order of `participatingAgents`.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

use cadre_proto::AgentId;
use cadre_proto::events::{AgentRecord, AssignmentReason, Ballot, RecordFigure, RecordTieBreak};
use cadre_proto::model::{AgentProfile, WorkflowStep};

/// The seed's fuzzy rule: a skill matches when either name contains the other, ignoring case.
fn skill_matches(required: &str, offered: &str) -> bool {
    let (required, offered) = (required.to_lowercase(), offered.to_lowercase());
    required.contains(&offered) || offered.contains(&required)
}

/// Which way a figure of a record is better.
#[derive(Clone, Copy)]
enum Better {
    Higher,
    Lower,
}

/// The figures of a record in the order they break ties: work goes where it succeeds, then
/// where reviewers pass it, then where it is done sooner, then cheaper.
const RECORD_RANKING: [(RecordFigure, Better); 4] = [
    (RecordFigure::TaskSuccess, Better::Higher),
    (RecordFigure::ReviewPassRate, Better::Higher),
    (RecordFigure::AverageCompletionMinutes, Better::Lower),
    (RecordFigure::AverageCostUsd, Better::Lower),
];

fn figure(record: &AgentRecord, figure: RecordFigure) -> Option<f64> {
    match figure {
        RecordFigure::TaskSuccess => record.task_success,
        RecordFigure::ReviewPassRate => record.review_pass_rate,
        RecordFigure::AverageCompletionMinutes => record.average_completion_minutes,
        RecordFigure::AverageCostUsd => record.average_cost_usd,
    }
}

/// What a figure weighs in a comparison. A share (task success, review pass rate) is taken
/// with Laplace's rule of succession, (successes + 1) / (trials + 2): an agent never tried
/// weighs 0.5, so it goes after a good record and before a poor one, and one lucky attempt
/// does not outweigh a long good record. A time or a cost nobody recorded is `None`.
fn weight(record: Option<&AgentRecord>, f: RecordFigure) -> Option<f64> {
    let record = record.cloned().unwrap_or_default();
    let succession = |share: Option<f64>, trials: u64| {
        let trials = trials as f64;
        Some((share.unwrap_or(0.0) * trials + 1.0) / (trials + 2.0))
    };
    match f {
        RecordFigure::TaskSuccess => succession(record.task_success, record.attempts),
        RecordFigure::ReviewPassRate => succession(record.review_pass_rate, record.reviews),
        RecordFigure::AverageCompletionMinutes | RecordFigure::AverageCostUsd => figure(&record, f),
    }
}

/// How `a`'s record ranks against `b`'s (`Less`: `a` takes the work), and the figure that
/// decided; `None` when they rank the same. See [`weight`]: an untried agent ranks between
/// good and poor records on success and review; a time or cost nobody recorded ranks after
/// a known one.
fn compare_records(
    a: Option<&AgentRecord>,
    b: Option<&AgentRecord>,
) -> Option<(RecordFigure, Ordering)> {
    RECORD_RANKING.iter().find_map(|&(f, better)| {
        let value = |record: Option<&AgentRecord>| weight(record, f);
        let order = match (value(a), value(b), better) {
            (Some(x), Some(y), Better::Higher) => y.total_cmp(&x),
            (Some(x), Some(y), Better::Lower) => x.total_cmp(&y),
            (Some(_), None, _) => Ordering::Less,
            (None, Some(_), _) => Ordering::Greater,
            (None, None, _) => Ordering::Equal,
        };
        order.is_ne().then_some((f, order))
    })
}

/// One figure of an agent's record, for people: the value and the facts behind it.
fn show(f: RecordFigure, record: Option<&AgentRecord>) -> String {
    let record = record.cloned().unwrap_or_default();
    let value = figure(&record, f);
    let (value, count, facts) = match f {
        RecordFigure::TaskSuccess => (
            value.map(|share| format!("{:.0} %", 100.0 * share)),
            record.attempts,
            "attempts",
        ),
        RecordFigure::ReviewPassRate => (
            value.map(|share| format!("{:.0} %", 100.0 * share)),
            record.reviews,
            "reviews",
        ),
        RecordFigure::AverageCompletionMinutes => (
            // Seconds under a minute, so two different figures never read the same.
            value.map(|minutes| {
                if minutes < 1.0 {
                    format!("{:.3} s", minutes * 60.0)
                } else {
                    format!("{minutes:.1} min")
                }
            }),
            record.tasks_completed,
            "completed tasks",
        ),
        RecordFigure::AverageCostUsd => (
            value.map(|usd| format!("${usd:.4}")),
            record.costed_completions,
            "costed completions",
        ),
    };
    match value {
        Some(value) => format!("{value} over {count} {facts}"),
        None => format!("unknown (no {facts})"),
    }
}

fn figure_name(f: RecordFigure) -> &'static str {
    match f {
        RecordFigure::TaskSuccess => "task success",
        RecordFigure::ReviewPassRate => "review pass rate",
        RecordFigure::AverageCompletionMinutes => "average completion time",
        RecordFigure::AverageCostUsd => "average cost per completed attempt",
    }
}

/// The first of `candidates` with the least `key` (what the rule weighs: skills matched, load),
/// ties going to the better record; with the records' tie break when they set it apart from
/// the next best agent of the same key (not when participation order did).
fn best<'a, K: Ord>(
    candidates: impl Iterator<Item = &'a AgentProfile> + Clone,
    key: impl Fn(&AgentProfile) -> K,
    records: &BTreeMap<AgentId, AgentRecord>,
) -> Option<(&'a AgentProfile, Option<RecordTieBreak>)> {
    let record = |agent: &AgentProfile| records.get(&agent.id);
    let rank = |a: &&AgentProfile, b: &&AgentProfile| {
        key(a).cmp(&key(b)).then_with(|| {
            compare_records(record(a), record(b)).map_or(Ordering::Equal, |(_, order)| order)
        })
    };
    // `min_by` keeps the first of equals: participation order breaks the last ties.
    let chosen = candidates.clone().min_by(rank)?;
    let next_best = candidates
        .filter(|a| !std::ptr::eq(*a, chosen) && key(a) == key(chosen))
        .min_by(rank);
    let tie_break = next_best.and_then(|other| {
        let (f, _) = compare_records(record(chosen), record(other))?;
        Some(RecordTieBreak {
            figure: f,
            detail: format!(
                "{}: {} {}, {} {}",
                figure_name(f),
                chosen.name,
                show(f, record(chosen)),
                other.name,
                show(f, record(other)),
            ),
        })
    });
    Some((chosen, tie_break))
}

/// Picks the agent for `step` among `candidates` (in participation order), weighing their
/// `load` (active steps in this execution) and their `records`. `None` only when there are no
/// candidates.
pub fn assign<'a>(
    step: &WorkflowStep,
    candidates: &'a [AgentProfile],
    load: &HashMap<AgentId, u32>,
    records: &BTreeMap<AgentId, AgentRecord>,
) -> Option<(&'a AgentProfile, AssignmentReason)> {
    let load_of = |agent: &AgentProfile| load.get(&agent.id).copied().unwrap_or(0);

    if let Some(preferred) = step.preferred_agent_id
        && let Some(agent) = candidates.iter().find(|a| a.id == preferred)
    {
        return Some((agent, AssignmentReason::PreferredAgent));
    }

    if let Some(role) = step.assigned_agent_role.as_deref() {
        let of_role = candidates
            .iter()
            .filter(|a| a.role.trim().eq_ignore_ascii_case(role.trim()));
        if let Some((agent, tie_break)) = best(of_role, load_of, records) {
            return Some((
                agent,
                AssignmentReason::RoleMatch {
                    role: agent.role.clone(),
                    tie_break,
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
    let matching = candidates
        .iter()
        .filter(|agent| !matched_skills(agent).is_empty());
    // Most skills first, then least load.
    let skills_then_load = |agent: &AgentProfile| {
        (
            std::cmp::Reverse(matched_skills(agent).len()),
            load_of(agent),
        )
    };
    if let Some((agent, tie_break)) = best(matching, skills_then_load, records) {
        return Some((
            agent,
            AssignmentReason::SkillMatch {
                matched: matched_skills(agent),
                active_steps: load_of(agent),
                tie_break,
            },
        ));
    }

    best(candidates.iter(), load_of, records).map(|(agent, tie_break)| {
        (
            agent,
            AssignmentReason::LeastLoaded {
                active_steps: load_of(agent),
                tie_break,
            },
        )
    })
}

/// Who judges a step's work, and who may not or should not.
pub struct Judging<'a> {
    /// Whose work it is: never its judge, unless the team is that agent alone.
    pub author: AgentId,
    /// The seat to fill when a panel votes; `None` for a lone reviewer.
    pub ballot: Option<Ballot>,
    /// Voters who voted this round: not asked again.
    pub voted: &'a [AgentId],
    /// Agents whose attempts at the step failed: asked only when nobody else can be.
    pub failed: &'a [AgentId],
}

/// Picks the reviewer of the author's work on `step` (or, with a ballot, a voter of its
/// panel): the least loaded agent of the step's `reviewerRole`, else the least loaded other
/// participant, never the author nor one who voted this round, and one whose attempt at the
/// step failed only when nobody else is left; else (a team of one) the author. `None` only
/// when there are no candidates.
pub fn assign_reviewer<'a>(
    step: &WorkflowStep,
    candidates: &'a [AgentProfile],
    load: &HashMap<AgentId, u32>,
    judging: Judging<'_>,
) -> Option<(&'a AgentProfile, AssignmentReason)> {
    let Judging {
        author,
        ballot,
        voted,
        failed,
    } = judging;
    // A failed judge goes after every other, then the least loaded.
    let rank = |agent: &&AgentProfile| {
        (
            failed.contains(&agent.id),
            load.get(&agent.id).copied().unwrap_or(0),
        )
    };
    let role = step.reviewer_role.as_deref().map(str::trim);
    let others = || {
        candidates
            .iter()
            .filter(|a| a.id != author && !voted.contains(&a.id))
    };
    let of_role = others()
        .filter(|a| role.is_some_and(|r| a.role.trim().eq_ignore_ascii_case(r)))
        .min_by_key(rank);
    let agent = of_role
        .or_else(|| others().min_by_key(rank))
        .or_else(|| candidates.iter().find(|a| a.id == author))?;
    let role = role.filter(|_| of_role.is_some()).map(str::to_owned);
    let reason = match ballot {
        Some(ballot) => AssignmentReason::Voter {
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

    /// A record with these figures, each backed by two facts when known.
    fn record(
        success: Option<f64>,
        pass_rate: Option<f64>,
        minutes: Option<f64>,
        cost: Option<f64>,
    ) -> AgentRecord {
        let backed = |figure: Option<f64>| if figure.is_some() { 2 } else { 0 };
        AgentRecord {
            attempts: backed(success),
            task_success: success,
            reviews: backed(pass_rate),
            review_pass_rate: pass_rate,
            tasks_completed: backed(minutes),
            average_completion_minutes: minutes,
            costed_completions: backed(cost),
            average_cost_usd: cost,
        }
    }

    fn records(of: &[(&AgentProfile, AgentRecord)]) -> BTreeMap<AgentId, AgentRecord> {
        of.iter().map(|(a, r)| (a.id, r.clone())).collect()
    }

    fn tie_break(reason: &AssignmentReason) -> Option<&RecordTieBreak> {
        match reason {
            AssignmentReason::SkillMatch { tie_break, .. }
            | AssignmentReason::RoleMatch { tie_break, .. }
            | AssignmentReason::LeastLoaded { tie_break, .. } => tie_break.as_ref(),
            _ => None,
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
        let no_records = BTreeMap::new();

        let mut s = step(&["review"]);
        s.preferred_agent_id = Some(team[2].id);
        assert_eq!(
            assign(&s, &team, &none, &no_records).unwrap().1,
            AssignmentReason::PreferredAgent
        );

        let mut s = step(&[]);
        s.assigned_agent_role = Some("reviewer".into());
        let busy_bo = HashMap::from([(team[1].id, 2)]);
        let (who, why) = assign(&s, &team, &busy_bo, &no_records).unwrap();
        assert_eq!(who.name, "Cy", "the less loaded of two reviewers");
        assert!(matches!(why, AssignmentReason::RoleMatch { .. }));

        let (who, why) = assign(
            &step(&["Design", "Rust", "review"]),
            &team,
            &none,
            &no_records,
        )
        .unwrap();
        assert_eq!(who.name, "Ada");
        assert_eq!(
            why,
            AssignmentReason::SkillMatch {
                matched: vec!["Design".into(), "Rust".into()],
                active_steps: 0,
                tie_break: None,
            }
        );

        let busy_ada = HashMap::from([(team[0].id, 1)]);
        let (who, why) = assign(&step(&["cooking"]), &team, &busy_ada, &no_records).unwrap();
        assert_eq!(who.name, "Bo");
        assert_eq!(
            why,
            AssignmentReason::LeastLoaded {
                active_steps: 0,
                tie_break: None
            }
        );

        assert!(assign(&step(&[]), &[], &none, &no_records).is_none());
    }

    #[test]
    fn each_figure_of_the_record_breaks_a_tie_left_by_the_figures_before_it() {
        let (ada, bo) = (
            agent("Ada", "dev", &["rust"]),
            agent("Bo", "dev", &["rust"]),
        );
        let team = [ada.clone(), bo.clone()];
        // Bo, second in participation order, is better only at the figure named.
        let cases = [
            (
                RecordFigure::TaskSuccess,
                record(Some(0.5), Some(1.0), Some(1.0), Some(0.01)),
                record(Some(0.9), Some(0.1), Some(9.0), Some(9.0)),
            ),
            (
                RecordFigure::ReviewPassRate,
                record(Some(0.9), Some(0.5), Some(1.0), Some(0.01)),
                record(Some(0.9), Some(0.8), Some(9.0), Some(9.0)),
            ),
            (
                RecordFigure::AverageCompletionMinutes,
                record(Some(0.9), Some(0.8), Some(9.0), Some(0.01)),
                record(Some(0.9), Some(0.8), Some(2.5), Some(9.0)),
            ),
            (
                RecordFigure::AverageCostUsd,
                record(Some(0.9), None, Some(2.5), Some(0.02)),
                record(Some(0.9), None, Some(2.5), Some(0.01)),
            ),
        ];
        for (figure, of_ada, of_bo) in cases {
            let records = records(&[(&ada, of_ada), (&bo, of_bo)]);
            let (who, why) = assign(&step(&["rust"]), &team, &HashMap::new(), &records).unwrap();
            assert_eq!(who.name, "Bo", "{figure:?}");
            assert_eq!(tie_break(&why).map(|t| t.figure), Some(figure));
        }
    }

    #[test]
    fn the_tie_break_says_both_agents_figures() {
        let (ada, bo) = (agent("Ada", "dev", &[]), agent("Bo", "dev", &[]));
        let records = records(&[
            (&ada, record(Some(0.5), None, None, None)),
            (&bo, record(Some(1.0), None, None, None)),
        ]);
        let team = [ada, bo];
        let (who, why) = assign(&step(&[]), &team, &HashMap::new(), &records).unwrap();
        assert_eq!(who.name, "Bo");
        assert_eq!(
            why,
            AssignmentReason::LeastLoaded {
                active_steps: 0,
                tie_break: Some(RecordTieBreak {
                    figure: RecordFigure::TaskSuccess,
                    detail: "task success: Bo 100 % over 2 attempts, Ada 50 % over 2 attempts"
                        .into(),
                }),
            }
        );
    }

    #[test]
    fn an_untried_agent_goes_after_a_good_record_and_before_a_poor_one() {
        let (ada, bo, cy) = (
            agent("Ada", "dev", &[]),
            agent("Bo", "dev", &[]),
            agent("Cy", "dev", &[]),
        );
        let mut s = step(&[]);
        s.assigned_agent_role = Some("dev".into());
        // Ada has no record at all; Bo's is poor (10 % of 2 attempts): Ada is the better bet.
        let team = [bo.clone(), ada.clone()];
        let poor = records(&[(&bo, record(Some(0.1), None, None, None))]);
        let (who, why) = assign(&s, &team, &HashMap::new(), &poor).unwrap();
        assert_eq!(who.name, "Ada");
        assert_eq!(
            tie_break(&why).unwrap().detail,
            "task success: Ada unknown (no attempts), Bo 10 % over 2 attempts"
        );
        // A good record (100 % of 2) goes before none.
        let good = records(&[(&bo, record(Some(1.0), None, None, None))]);
        assert_eq!(
            assign(&s, &team, &HashMap::new(), &good).unwrap().0.name,
            "Bo"
        );
        // One lucky attempt does not outweigh a long good record.
        let mut lucky = record(Some(1.0), None, None, None);
        lucky.attempts = 1;
        let mut steady = record(Some(0.9), None, None, None);
        steady.attempts = 20;
        let team = [ada.clone(), bo.clone()];
        let known = records(&[(&ada, lucky), (&bo, steady)]);
        assert_eq!(
            assign(&s, &team, &HashMap::new(), &known).unwrap().0.name,
            "Bo"
        );
        // Equal on success, Cy's work was never reviewed and Bo's mostly failed review.
        let team = [bo.clone(), cy.clone()];
        let known = records(&[
            (&cy, record(Some(1.0), None, Some(1.0), None)),
            (&bo, record(Some(1.0), Some(0.2), Some(9.0), None)),
        ]);
        let (who, why) = assign(&s, &team, &HashMap::new(), &known).unwrap();
        assert_eq!(who.name, "Cy");
        assert_eq!(
            tie_break(&why).map(|t| t.figure),
            Some(RecordFigure::ReviewPassRate)
        );
        // A completion time nobody recorded goes after a known one.
        let team = [ada.clone(), bo.clone()];
        let known = records(&[(&bo, record(None, None, Some(0.0002), None))]);
        let (who, why) = assign(&s, &team, &HashMap::new(), &known).unwrap();
        assert_eq!(who.name, "Bo");
        assert_eq!(
            tie_break(&why).unwrap().detail,
            "average completion time: Bo 0.012 s over 2 completed tasks, Ada unknown (no \
             completed tasks)"
        );
    }

    #[test]
    fn without_records_or_with_equal_ones_participation_order_decides() {
        let (ada, bo) = (
            agent("Ada", "dev", &["rust"]),
            agent("Bo", "dev", &["rust"]),
        );
        let team = [ada.clone(), bo.clone()];
        let same = record(Some(0.8), Some(1.0), Some(3.0), Some(0.05));
        for records in [
            BTreeMap::new(),
            records(&[(&ada, same.clone()), (&bo, same)]),
        ] {
            let (who, why) = assign(&step(&["rust"]), &team, &HashMap::new(), &records).unwrap();
            assert_eq!(who.name, "Ada");
            assert_eq!(tie_break(&why), None, "the records did not decide");
        }
    }

    #[test]
    fn the_record_never_outweighs_more_skills_or_less_load() {
        let (ada, bo, cy) = (
            agent("Ada", "dev", &["rust", "sql"]),
            agent("Bo", "dev", &["rust"]),
            agent("Cy", "dev", &["rust", "sql"]),
        );
        let poor = record(Some(0.1), Some(0.1), Some(60.0), Some(1.0));
        let great = record(Some(1.0), Some(1.0), Some(1.0), Some(0.01));
        let records = records(&[(&ada, poor.clone()), (&bo, great.clone()), (&cy, poor)]);
        let none = HashMap::new();

        let team = [ada.clone(), bo.clone()];
        let (who, why) = assign(&step(&["rust", "sql"]), &team, &none, &records).unwrap();
        assert_eq!(who.name, "Ada", "two skills beat one, whatever the record");
        assert_eq!(tie_break(&why), None);

        let busy_bo = HashMap::from([(bo.id, 1)]);
        let (who, why) = assign(&step(&["rust"]), &team, &busy_bo, &records).unwrap();
        assert_eq!(who.name, "Ada", "less load beats a better record");
        assert_eq!(tie_break(&why), None);

        // Among the two with both skills, equal records: participation order, not Bo's record.
        let team = [ada, bo, cy];
        let (who, why) = assign(&step(&["rust", "sql"]), &team, &none, &records).unwrap();
        assert_eq!(who.name, "Ada");
        assert_eq!(tie_break(&why), None);
    }
}

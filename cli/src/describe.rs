//! `cadre describe` for people (`-o table`, the default) where the whole object is too much to
//! read: a template as its phases, an execution as how the team worked. `-o yaml|json` print
//! the API's answer whole instead.

use std::collections::HashMap;

use serde_json::Value;

use cadre_proto::events::AssignmentReason;

use crate::client::{ApiError, Client};
use crate::output::{cell, short, time};

/// The knowledge items an execution summary lists; the rest are counted.
const KNOWLEDGE_SHOWN: usize = 12;

/// A step's status, with its attempt when the step was tried again (a failure or time-out
/// retried, a rework): a review's attempt, which follows the author's, is no second try.
fn step_status(result: &Value) -> String {
    let review = result.get("review").is_some();
    match (result["status"].as_str(), result["attempt"].as_u64()) {
        (None, _) => "not run".to_owned(),
        (Some(status), Some(attempt @ 2..)) if !review => format!("{status} (attempt {attempt})"),
        (Some(status), _) => status.to_owned(),
    }
}

/// A template: what it is for, its roles and its steps, phase by phase.
pub fn template(template: &Value) -> String {
    let mut lines = vec![format!(
        "Template \"{}\" ({}, {}, revision {})",
        cell(template, "name"),
        cell(template, "category"),
        if template["isSystemTemplate"] == true {
            "system"
        } else {
            "user"
        },
        cell(template, "revision"),
    )];
    lines.push(format!("  {}", short(text(&template["description"]), 150)));
    lines.push(format!("  roles: {}", cell(template, "requiredAgentRoles")));
    lines.push(format!(
        "  used by {} workflow(s), {} run(s), completed: {}",
        cell(template, "workflowCount"),
        cell(template, "usageCount"),
        crate::output::success_rate(template),
    ));
    for group in phases(&template["templateDefinition"]) {
        lines.push(format!("  {}: {}", group.title, group.steps.join(", ")));
    }
    lines.join("\n")
}

/// An execution read back from the read models: its state, each phase's steps with who did
/// them and why, the review rounds, the handoffs, the knowledge passed on, what waited for a
/// person, and the LLM usage.
pub async fn execution(client: &Client, execution: &Value) -> Result<String, ApiError> {
    let id = text(&execution["id"]);
    let workflow: Value = client
        .get(&format!("/v1/workflows/{}", text(&execution["workflowId"])))
        .await?;
    let names: HashMap<String, String> = client
        .list_all("/v1/agents")
        .await?
        .iter()
        .map(|a| (text(&a["id"]).to_owned(), text(&a["name"]).to_owned()))
        .collect();
    let name = |id: &Value| {
        names
            .get(text(id))
            .cloned()
            .unwrap_or_else(|| "-".to_owned())
    };

    let mut lines = vec![format!(
        "Execution {id} (#{}) of \"{}\"",
        cell(execution, "executionNumber"),
        cell(&workflow, "name")
    )];
    lines.push(format!("  status: {}", cell(execution, "status")));
    // The seed's `errorMessage` says why a run ended: a failure's error, a cancel's reason.
    if let Some(why) = execution["errorMessage"].as_str() {
        let label = if text(&execution["status"]) == "cancelled" {
            "cancelled because"
        } else {
            "error"
        };
        lines.push(format!("  {label}: {}", short(why, 150)));
    }
    lines.push(format!(
        "  started {}, ended {}{}",
        time(execution, "startedAt"),
        time(execution, "completedAt"),
        execution["actualDuration"]
            .as_i64()
            .map(|s| format!(" ({s} s)"))
            .unwrap_or_default()
    ));

    lines.push(String::new());
    lines.push("How the team worked: each step, who did it and why".to_owned());
    let results = &execution["stepResults"];
    let assignments = &execution["agentAssignments"];
    let mut listed = Vec::new();
    let mut groups = phases(&workflow["configuration"]);
    // Steps the run added (re-planning, undoing, delegating) are in no phase.
    let others: Vec<String> = results
        .as_object()
        .into_iter()
        .flatten()
        .map(|(step, _)| step.clone())
        .filter(|step| !groups.iter().any(|g| g.steps.contains(step)))
        .collect();
    if !others.is_empty() {
        groups.push(Group {
            title: "Steps the run added".to_owned(),
            steps: others,
        });
    }
    // At least 10 wide, and one wider than the widest status, so that the columns after it
    // line up and stay two spaces apart.
    let status_width = results
        .as_object()
        .into_iter()
        .flat_map(|results| results.values())
        .map(|result| step_status(result).len() + 1)
        .fold(10, usize::max);
    for group in groups {
        lines.push(format!("  {}", group.title));
        for step in group.steps {
            let result = &results[&step];
            let who = match result["providedBy"].as_str() {
                Some(person) => format!("{person} (a person)"),
                None if result["agentId"].is_string() => name(&result["agentId"]),
                None => "-".to_owned(),
            };
            // The latest assignment: the author's, or its reviewer's once the step was reviewed.
            let assignment = &assignments[&step];
            let why = if assignment["reason"]["kind"] == "reviewer" {
                format!(
                    "reviewed by {} ({})",
                    name(&assignment["agentId"]),
                    reason(&assignment["reason"])
                )
            } else {
                reason(&assignment["reason"])
            };
            lines.push(format!(
                "    {step:<20} {:<status_width$} {who:<26} {why}",
                step_status(result)
            ));
            // Why its last attempt failed, timed out or waits for a retry.
            if let Some(error) = result["error"].as_str() {
                lines.push(format!("      error: {}", short(error, 150)));
            }
            // A step no live worker can take waits, and says so.
            if let Some(waiting) = execution["waiting"]
                .as_array()
                .and_then(|waiting| waiting.iter().find(|w| w["stepId"] == step.as_str()))
            {
                lines.push(format!("      waiting: {}", text(&waiting["reason"])));
            }
            listed.push(step);
        }
    }

    let interactions = client
        .list_all(&format!("/v1/executions/{id}/interactions"))
        .await?;
    let reviews: Vec<&Value> = interactions
        .iter()
        .filter(|i| i["interactionType"] == "feedback")
        .collect();
    lines.push(String::new());
    lines.push(format!("Review rounds ({})", reviews.len()));
    for i in reviews {
        lines.push(format!(
            "  {} -> {}: {}",
            name(&i["fromAgentId"]),
            name(&i["toAgentId"]),
            short(text(&i["message"]), 110)
        ));
    }

    let handoffs = client
        .list_all(&format!("/v1/executions/{id}/handoffs"))
        .await?;
    lines.push(String::new());
    lines.push(format!("Handoffs ({})", handoffs.len()));
    // One line per task taken over: who handed it on, to whom.
    let mut taken: Vec<(String, String, Vec<String>)> = Vec::new();
    for h in &handoffs {
        let (task, to, from) = (
            text(&h["taskName"]),
            name(&h["toAgent"]),
            name(&h["fromAgent"]),
        );
        match taken.iter_mut().find(|(t, a, _)| t == task && *a == to) {
            Some((_, _, froms)) => froms.push(from),
            None => taken.push((task.to_owned(), to, vec![from])),
        }
    }
    for (task, to, from) in taken {
        lines.push(format!(
            "  {to} took \"{task}\" on from {}",
            from.join(", ")
        ));
    }

    let knowledge: Vec<Value> = client
        .list_all(&format!(
            "/v1/workflows/{}/knowledge",
            text(&execution["workflowId"])
        ))
        .await?
        .into_iter()
        .filter(|k| k["executionId"].as_str() == Some(id))
        .collect();
    lines.push(String::new());
    lines.push(format!("Knowledge passed on ({})", knowledge.len()));
    for k in knowledge.iter().take(KNOWLEDGE_SHOWN) {
        lines.push(format!(
            "  {} ({}, by {}, used {}x): {}",
            text(&k["handle"]),
            text(&k["knowledgeType"]),
            name(&k["createdByAgentId"]),
            cell(k, "usageCount"),
            short(text(&k["title"]), 110)
        ));
    }
    if knowledge.len() > KNOWLEDGE_SHOWN {
        lines.push(format!(
            "  ... and {} more",
            knowledge.len() - KNOWLEDGE_SHOWN
        ));
    }

    let escalations = client
        .list_all(&format!("/v1/escalations?executionId={id}"))
        .await?;
    lines.push(String::new());
    lines.push(format!("Waited for a person ({})", escalations.len()));
    for e in &escalations {
        let outcome = match text(&e["status"]) {
            "resolved" => format!(
                "{} by {}{}",
                cell(e, "action"),
                cell(e, "resolvedBy"),
                e["comment"]
                    .as_str()
                    .map(|c| format!(" ({})", short(c, 80)))
                    .unwrap_or_default()
            ),
            "closed" => format!("closed: {}", cell(e, "closedReason")),
            status => status.to_owned(),
        };
        // A run's own escalation (its time for a person) is of no step.
        let what = match e["stepId"].as_str() {
            Some(step) => format!("{} of {step}", text(&e["kind"])),
            None => "the run, past its time".to_owned(),
        };
        lines.push(format!("  {what}: {outcome}"));
    }

    let usage: Value = client.get(&format!("/v1/executions/{id}/usage")).await?;
    lines.push(String::new());
    lines.push(format!(
        "LLM usage: {} call(s), {} tokens",
        usage["total"]["calls"], usage["total"]["totalTokens"]
    ));
    Ok(lines.join("\n"))
}

/// A heading and the step ids under it.
struct Group {
    title: String,
    steps: Vec<String>,
}

/// A workflow configuration's steps, phase by phase; one group of them all when it has no
/// phases.
fn phases(configuration: &Value) -> Vec<Group> {
    let phases = configuration["phases"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if phases.is_empty() {
        let steps = configuration["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| text(&s["id"]).to_owned())
            .collect();
        return vec![Group {
            title: "Steps".to_owned(),
            steps,
        }];
    }
    phases
        .iter()
        .enumerate()
        .map(|(n, phase)| Group {
            title: format!(
                "Phase {}: {} ({})",
                n + 1,
                text(&phase["name"]),
                phase["mode"].as_str().unwrap_or("parallel")
            ),
            steps: phase["steps"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| text(s).to_owned())
                .collect(),
        })
        .collect()
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("")
}

/// Why an agent got a step, in the words the run's log uses; `-` for no assignment (a step a
/// person approved, or one never scheduled).
fn reason(reason: &Value) -> String {
    serde_json::from_value::<AssignmentReason>(reason.clone())
        .map(|reason| reason.describe())
        .unwrap_or_else(|_| "-".to_owned())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::step_status;

    #[test]
    fn a_step_tried_again_names_its_attempt() {
        for (result, shown) in [
            (json!(null), "not run"),
            (json!({"status": "completed", "attempt": 1}), "completed"),
            (
                json!({"status": "timed_out", "attempt": 3}),
                "timed_out (attempt 3)",
            ),
            (json!({"status": "completed"}), "completed"),
            // Approved in review: the reviewer's attempt follows the author's.
            (
                json!({"status": "completed", "attempt": 2, "review": {"approved": true}}),
                "completed",
            ),
            (
                json!({"status": "running", "attempt": 3}),
                "running (attempt 3)",
            ),
        ] {
            assert_eq!(step_status(&result), shown);
        }
    }
}

//! The demo client: drives a running Cadre through its HTTP API, as a user would: it runs the
//! system template "Implement a feature" (seed 002's four phases) with seed 002's team,
//! signs off its production release as the person in the loop, and prints how the team worked,
//! read back from the Postgres read models.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cadre_proto::events::AssignmentReason;
use cadre_tests::api::{Api, seed_team};
use clap::Parser;
use serde_json::{Value, json};

#[derive(Parser)]
#[command(
    about = "Runs Cadre's demo (the \"Implement a feature\" template) against a running coordinator"
)]
struct Args {
    /// The coordinator's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    api: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("")
}

fn first_line(value: &Value) -> String {
    let line = text(value).lines().next().unwrap_or("");
    if line.chars().count() > 110 {
        format!("{}...", line.chars().take(110).collect::<String>())
    } else {
        line.to_owned()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let api = Api::new(args.api.trim_end_matches('/'));
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    while api_is_down(&api).await {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the coordinator at {} never became ready",
            args.api
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    println!("\n== The team (offline LLM provider)");
    let mut names = BTreeMap::new();
    let mut by_role = serde_json::Map::new();
    let mut ids = Vec::new();
    for agent in seed_team("offline") {
        let created = api.register_agent(&agent).await;
        println!(
            "  {:<6} {:<9} skills: {}",
            text(&created["name"]),
            text(&created["role"]),
            created["skills"]
        );
        let id = text(&created["id"]).to_owned();
        names.insert(id.clone(), text(&created["name"]).to_owned());
        by_role.insert(text(&created["role"]).to_owned(), Value::String(id.clone()));
        ids.push(id);
    }

    let templates = api.get("/v1/templates").await.body;
    let template = templates
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["name"] == TEMPLATE)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no system template named '{TEMPLATE}'"))?;
    let template_id = text(&template["id"]).to_owned();
    println!("\n== Template \"{TEMPLATE}\" (system, seed 002), its phases:");
    for (n, phase) in template["templateDefinition"]["phases"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let steps: Vec<&str> = phase["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .map(text)
            .collect();
        println!(
            "  Phase {}: {} ({}): {}",
            n + 1,
            text(&phase["name"]),
            text(&phase["mode"]),
            steps.join(", ")
        );
    }

    // The coordinator agent leads; every role the template names maps to the team member.
    let meta = by_role.remove("meta").unwrap_or_default();
    let roles: serde_json::Map<String, Value> = template["requiredAgentRoles"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|role| Some((text(role).to_owned(), by_role.get(text(role))?.clone())))
        .collect();
    let reply = api
        .post(
            &format!("/v1/templates/{template_id}/workflows"),
            &json!({ "name": "Real-time inspection collaboration", "agents": roles,
                     "coordinatorAgentId": meta }),
        )
        .await;
    anyhow::ensure!(
        reply.status == 201,
        "the workflow could not be made from the template: {}",
        reply.body
    );
    let workflow_id = text(&reply.body["id"]).to_owned();
    println!("\n== Workflow {workflow_id} made from the template, roles mapped to the team");

    let start = api
        .post(
            &format!("/v1/workflows/{workflow_id}/executions"),
            &json!({ "input": { "feature": "Inspectors edit one inspection together, live" } }),
        )
        .await;
    anyhow::ensure!(start.status == 202, "the run was refused: {}", start.body);
    let execution_id = text(&start.body["executionId"]).to_owned();
    println!(
        "\n== Execution #{} ({execution_id}) accepted; progress:",
        start.body["executionNumber"]
    );
    // The interaction log is in log order: printing what is new at each poll tells the run as
    // it happened.
    let mut printed = 0;
    let mut resolved = Vec::new();
    let execution = loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the execution did not finish in time"
        );
        let reply = api.get(&format!("/v1/executions/{execution_id}")).await;
        if reply.status == 200 {
            let execution = reply.body;
            let all = api
                .get(&format!(
                    "/v1/executions/{execution_id}/interactions?limit=1000"
                ))
                .await
                .body;
            for i in all.as_array().into_iter().flatten().skip(printed) {
                printed += 1;
                if i["interactionType"] != "knowledge_sharing" {
                    println!(
                        "  [{:<15}] {}",
                        text(&i["interactionType"]),
                        first_line(&i["message"])
                    );
                }
            }
            // The demo is the person in the loop: it signs off what waits for one.
            resolved.extend(resolve_open(&api, &execution_id).await);
            if matches!(
                text(&execution["status"]),
                "completed" | "failed" | "cancelled"
            ) {
                break execution;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    println!("\n== Final state, read back from Postgres");
    println!("  status: {}", text(&execution["status"]));
    if let Some(error) = execution["errorMessage"].as_str() {
        println!("  error: {error}");
    }
    println!(
        "  started {} / completed {}",
        text(&execution["startedAt"]),
        text(&execution["completedAt"])
    );

    println!("\n== How the team worked: phases, who did what and why");
    for (n, phase) in template["templateDefinition"]["phases"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        println!(
            "  Phase {}: {} ({})",
            n + 1,
            text(&phase["name"]),
            text(&phase["mode"])
        );
        for step in phase["steps"].as_array().into_iter().flatten().map(text) {
            let result = &execution["stepResults"][step];
            let who = match result["providedBy"].as_str() {
                Some(person) => format!("{person} (a person)"),
                None => names
                    .get(text(&result["agentId"]))
                    .cloned()
                    .unwrap_or_default(),
            };
            // The latest assignment: the author's, or its reviewer's when the step was reviewed.
            let assignment = &execution["agentAssignments"][step];
            let why = if assignment["reason"]["kind"] == "reviewer" {
                let reviewer = names.get(text(&assignment["agentId"])).cloned();
                format!(
                    "reviewed by {} ({})",
                    reviewer.unwrap_or_default(),
                    reason(&assignment["reason"])
                )
            } else {
                reason(&assignment["reason"])
            };
            println!(
                "    {step:<20} {:<10} {who:<26} {why}",
                text(&result["status"])
            );
        }
    }

    let interactions = api
        .get(&format!(
            "/v1/executions/{execution_id}/interactions?limit=1000"
        ))
        .await
        .body;
    let interactions = interactions.as_array().cloned().unwrap_or_default();
    let reviews: Vec<&Value> = interactions
        .iter()
        .filter(|i| i["interactionType"] == "feedback")
        .collect();
    println!("\n== Review rounds ({})", reviews.len());
    for i in reviews {
        println!(
            "  {} -> {}: {}",
            names
                .get(text(&i["fromAgentId"]))
                .cloned()
                .unwrap_or_default(),
            names
                .get(text(&i["toAgentId"]))
                .cloned()
                .unwrap_or_default(),
            first_line(&i["message"])
        );
    }

    let name_of = |id: &Value| names.get(text(id)).cloned().unwrap_or_default();
    let handoffs = api
        .get(&format!("/v1/executions/{execution_id}/handoffs"))
        .await
        .body;
    let handoffs = handoffs.as_array().cloned().unwrap_or_default();
    println!("\n== Handoffs ({})", handoffs.len());
    for h in &handoffs {
        println!(
            "  {} -> {}: {}",
            name_of(&h["fromAgent"]),
            name_of(&h["toAgent"]),
            text(&h["taskName"]),
        );
    }

    let knowledge = api
        .get(&format!("/v1/workflows/{workflow_id}/knowledge"))
        .await
        .body;
    let knowledge = knowledge.as_array().cloned().unwrap_or_default();
    println!("\n== Knowledge passed on ({})", knowledge.len());
    for k in knowledge.iter().take(12) {
        println!(
            "  {} ({}, by {}, used {}x): {}",
            text(&k["handle"]),
            text(&k["knowledgeType"]),
            name_of(&k["createdByAgentId"]),
            k["usageCount"],
            first_line(&k["title"])
        );
    }
    if knowledge.len() > 12 {
        println!("  ... and {} more", knowledge.len() - 12);
    }

    let escalations = api
        .get(&format!("/v1/escalations?executionId={execution_id}"))
        .await
        .body;
    println!(
        "\n== Escalations ({})",
        escalations.as_array().map_or(0, Vec::len)
    );
    for e in escalations.as_array().into_iter().flatten() {
        println!(
            "  {} {} ({}): {} by {}",
            text(&e["kind"]),
            text(&e["stepId"]),
            text(&e["status"]),
            text(&e["action"]),
            text(&e["resolvedBy"])
        );
    }

    let usage = api
        .get(&format!("/v1/executions/{execution_id}/usage"))
        .await
        .body;
    println!(
        "\n== Usage: {} LLM calls, {} tokens",
        usage["total"]["calls"], usage["total"]["totalTokens"]
    );
    println!();
    anyhow::ensure!(
        text(&execution["status"]) == "completed",
        "the execution did not complete"
    );
    anyhow::ensure!(!resolved.is_empty(), "no escalation was resolved");
    Ok(())
}

/// The system template the demo runs.
const TEMPLATE: &str = "Implement a feature";

/// Approves what waits for a person in the execution (its production release); returns the
/// escalations it resolved.
async fn resolve_open(api: &Api, execution_id: &str) -> Vec<String> {
    let open = api
        .get(&format!(
            "/v1/escalations?status=open&executionId={execution_id}"
        ))
        .await
        .body;
    let mut resolved = Vec::new();
    for e in open.as_array().into_iter().flatten() {
        let action = if e["kind"] == "approval" {
            "approve"
        } else {
            "retry"
        };
        let id = text(&e["id"]);
        let reply = api
            .post(
                &format!("/v1/escalations/{id}/resolve"),
                &json!({ "action": action, "requestedBy": "Release manager",
                         "reason": "staging and smoke tests are green" }),
            )
            .await;
        println!(
            "  -> the release manager resolves the {} of {}: {action} ({})",
            text(&e["kind"]),
            text(&e["stepId"]),
            reply.status
        );
        if reply.status == 202 {
            resolved.push(id.to_owned());
        }
    }
    resolved
}

async fn api_is_down(api: &Api) -> bool {
    reqwest::get(format!("{}/readyz", api.base()))
        .await
        .map(|r| !r.status().is_success())
        .unwrap_or(true)
}

/// Why an agent got a step, in the words the interaction log uses; empty for no assignment
/// (an approval).
fn reason(reason: &Value) -> String {
    serde_json::from_value::<AssignmentReason>(reason.clone())
        .map(|reason| reason.describe())
        .unwrap_or_default()
}

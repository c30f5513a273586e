//! The demo client: drives a running Cadre through its HTTP API, as a user would, and prints
//! what happened, read back from the Postgres read models.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cadre_tests::api::{Api, PIPELINE_SKILLS, pipeline, team};
use clap::Parser;
use serde_json::Value;

#[derive(Parser)]
#[command(about = "Runs Cadre's demo workflow against a running coordinator")]
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

    println!("\n== Registering the team (offline LLM provider)");
    let mut names = BTreeMap::new();
    let mut ids = Vec::new();
    for agent in team("offline") {
        let created = api.register_agent(&agent).await;
        println!(
            "  {:<6} {:<9} skills: {}",
            text(&created["name"]),
            text(&created["role"]),
            created["skills"]
        );
        names.insert(
            text(&created["id"]).to_owned(),
            text(&created["name"]).to_owned(),
        );
        ids.push(text(&created["id"]).to_owned());
    }

    println!("\n== Creating a 3-step pipeline");
    let workflow = api
        .create_workflow(&pipeline(
            "Real-time collaboration feature",
            &ids,
            &PIPELINE_SKILLS,
            3,
        ))
        .await;
    let workflow_id = text(&workflow["id"]).to_owned();
    for step in workflow["configuration"]["steps"]
        .as_array()
        .into_iter()
        .flatten()
    {
        println!(
            "  {:<7} {:<28} needs {}",
            text(&step["id"]),
            text(&step["name"]),
            step["requiredSkills"]
        );
    }

    let (execution_id, number) = api.start_execution(&workflow_id).await;
    println!("\n== Execution #{number} ({execution_id}) accepted; progress:");
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let execution = loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the execution did not finish in time"
        );
        let reply = api.get(&format!("/v1/executions/{execution_id}")).await;
        if reply.status == 200 {
            let execution = reply.body;
            for (step, result) in execution["stepResults"].as_object().into_iter().flatten() {
                let status = text(&result["status"]).to_owned();
                if seen.get(step) != Some(&status) {
                    let agent = names
                        .get(text(&result["agentId"]))
                        .cloned()
                        .unwrap_or_default();
                    let why = &execution["agentAssignments"][step]["reason"];
                    match status.as_str() {
                        "scheduled" => println!("  {step}: assigned to {agent} ({})", reason(why)),
                        "running" => println!("  {step}: {agent} is working"),
                        "completed" => println!(
                            "  {step}: completed by {agent}: {}",
                            first_line(&result["summary"])
                        ),
                        other => println!("  {step}: {other} {}", text(&result["error"])),
                    }
                    seen.insert(step.clone(), status);
                }
            }
            if matches!(text(&execution["status"]), "completed" | "failed") {
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
    for step in ["step-1", "step-2", "step-3"] {
        let result = &execution["stepResults"][step];
        let agent = names
            .get(text(&result["agentId"]))
            .cloned()
            .unwrap_or_default();
        println!("  {step} by {agent}: {}", first_line(&result["summary"]));
        println!("         tokens: {}", result["tokens"]["total"]);
    }

    let interactions = api
        .get(&format!("/v1/executions/{execution_id}/interactions"))
        .await
        .body;
    let interactions = interactions.as_array().cloned().unwrap_or_default();
    println!("\n== Interactions ({})", interactions.len());
    for i in &interactions {
        let from = names
            .get(text(&i["fromAgentId"]))
            .cloned()
            .unwrap_or_else(|| "coordinator".into());
        println!(
            "  [{:<17}] {:<11} {}",
            text(&i["interactionType"]),
            from,
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
            "  {} -> {}: {} (success: {})",
            name_of(&h["fromAgent"]),
            name_of(&h["toAgent"]),
            text(&h["taskName"]),
            first_line(&h["successCriteria"])
        );
        println!(
            "         completed work: {}",
            first_line(&h["context"]["completedWork"])
        );
    }

    println!("\n== Agent status");
    for id in &ids {
        let status = api.get(&format!("/v1/agents/{id}/status")).await.body;
        println!(
            "  {:<6} {:<9} {:>3}% {}",
            names.get(id).cloned().unwrap_or_default(),
            text(&status["state"]),
            status["progress"],
            text(&status["currentTask"])
        );
    }

    let knowledge = api
        .get(&format!("/v1/workflows/{workflow_id}/knowledge"))
        .await
        .body;
    let knowledge = knowledge.as_array().cloned().unwrap_or_default();
    println!(
        "\n== Shared knowledge of the workflow ({})",
        knowledge.len()
    );
    for k in &knowledge {
        let by = names
            .get(text(&k["createdByAgentId"]))
            .cloned()
            .unwrap_or_default();
        println!(
            "  {} ({}, by {by}): {}",
            text(&k["title"]),
            text(&k["knowledgeType"]),
            first_line(&k["content"])
        );
    }
    println!();
    anyhow::ensure!(
        text(&execution["status"]) == "completed",
        "the execution did not complete"
    );
    Ok(())
}

async fn api_is_down(api: &Api) -> bool {
    reqwest::get(format!("{}/readyz", api.base()))
        .await
        .map(|r| !r.status().is_success())
        .unwrap_or(true)
}

fn reason(reason: &Value) -> String {
    match text(&reason["kind"]) {
        "preferredAgent" => "preferred agent".into(),
        "roleMatch" => format!("role {}", text(&reason["role"])),
        "skillMatch" => format!("skills {}", reason["matched"]),
        "leastLoaded" => "least loaded".into(),
        other => other.into(),
    }
}

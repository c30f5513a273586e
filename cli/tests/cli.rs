//! The `cadre` binary against the three services on a real NATS JetStream and Postgres:
//! apply (then apply again), run --follow to the end, act on an escalation, cancel a followed
//! run, and the errors a person sees for a bad file and for a workflow the API refuses; and
//! `make demo`'s team file: a workflow made from a template, applied, run with its approval
//! resolved by id (`-q`), and described as the team worked.

// Test code: a panic is the failure report, in helpers as in tests.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use cadre_tests::{Stack, eventually};
use serde_json::Value;
use tokio::process::Command;

const CADRE: &str = env!("CARGO_BIN_EXE_cadre");

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
        .display()
        .to_string()
}

fn command(api: &str, args: &[&str]) -> Command {
    let mut command = Command::new(CADRE);
    command
        .arg("--api")
        .arg(api)
        .args(args)
        .env_remove("CADRE_API")
        .env("USER", "tester")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Runs `cadre` to its end, within a minute.
async fn cadre(api: &str, args: &[&str]) -> Output {
    tokio::time::timeout(Duration::from_secs(60), command(api, args).output())
        .await
        .unwrap_or_else(|_| panic!("cadre {args:?} did not end within a minute"))
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(output)))
}

fn write(dir: &Path, name: &str, content: &str) -> String {
    let path: PathBuf = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path.display().to_string()
}

/// A workflow whose second step waits for a person's sign-off.
const GATE: &str = "\
kind: Workflow
name: Gate
description: Prepare, then wait for a sign-off
participatingAgents: [Ada]
configuration:
  steps:
    - id: prepare
      name: Prepare
      description: Get it ready
      type: analysis
      instructions: Prepare the release notes.
      expectedOutput: Release notes.
    - id: sign-off
      name: Sign off
      description: A person approves
      type: approval
      dependsOn: [prepare]
      instructions: Approve the release.
      expectedOutput: An approval.
";

/// The open escalation of the workflow's latest run, once the read models show it.
async fn open_escalation(api: &str) -> Value {
    eventually(Duration::from_secs(30), "an open escalation", || async {
        let listed = json(&cadre(api, &["escalations", "-o", "json"]).await);
        listed.as_array().unwrap().first().cloned()
    })
    .await
}

#[tokio::test]
async fn apply_run_follow_resolve_cancel_and_api_problems() {
    let stack = Stack::start().await;
    let api = stack.api.base().to_owned();
    let api = api.as_str();
    let dir = tempfile::tempdir().unwrap();
    let team = example("team.yaml");

    // Apply creates every document; applying the same files again changes nothing.
    let applied = cadre(api, &["apply", "-f", &team]).await;
    let shown = text(&applied);
    assert!(applied.status.success(), "{shown}");
    for line in [
        "agent/Ada created",
        "agent/Grace created",
        "agent/Linus created",
        "workflow/Research brief created",
    ] {
        assert!(shown.contains(line), "{line} in:\n{shown}");
    }
    let again = cadre(api, &["apply", "-f", &team, "-o", "json"]).await;
    assert!(again.status.success(), "{}", text(&again));
    let results: Vec<String> = json(&again)
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["result"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(results, ["unchanged"; 4]);

    // A changed agent under a registered name is refused, naming what differs; the others go on.
    let changed = write(
        dir.path(),
        "changed.yaml",
        "kind: Agent\nname: Ada\nrole: critic\nskills: [research, analysis]\n\
         backstory: Reads widely and checks every claim.\nprovider: offline\n\
         model: offline-deterministic\n---\nkind: Agent\nname: Ada2\nrole: critic\n\
         provider: offline\nmodel: offline-deterministic\n",
    );
    let refused = cadre(api, &["apply", "-f", &changed]).await;
    let shown = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{shown}");
    assert!(shown.contains("agent/Ada refused"), "{shown}");
    assert!(shown.contains("differs in role"), "{shown}");
    assert!(shown.contains("agent/Ada2 created"), "{shown}");

    // A run followed to its end: progress, assignments, outcomes, exit code 0.
    let input = example("input.json");
    let run = cadre(
        api,
        &["run", "Research brief", "--input", &input, "--follow"],
    )
    .await;
    let shown = text(&run);
    assert!(run.status.success(), "{shown}");
    for line in [
        "execution #1 of 'Research brief' started (3 steps",
        "[research] attempt 1 assigned to Ada",
        "[draft] attempt 1 assigned to Grace: preferred agent of the step",
        "[research] completed by Ada",
        "(1/3 steps done)",
        "(3/3 steps done)",
        "execution completed (3/3 steps done)",
    ] {
        assert!(shown.contains(line), "{line} in:\n{shown}");
    }
    assert!(
        !shown.contains('\u{1b}'),
        "no terminal codes when not a terminal"
    );

    // The run as listed (once the read models caught up), and its log afterwards.
    let runs = eventually(
        Duration::from_secs(30),
        "the run listed as completed",
        || async {
            let args = [
                "get",
                "executions",
                "--workflow",
                "Research brief",
                "-o",
                "json",
            ];
            let runs = json(&cadre(api, &args).await);
            (runs[0]["status"] == "completed").then_some(runs)
        },
    )
    .await;
    let execution = runs[0]["id"].as_str().unwrap().to_owned();
    let table = text(&cadre(api, &["get", "executions"]).await);
    assert!(
        table.contains("Research brief") && table.contains("completed"),
        "{table}"
    );
    let args = ["get", "executions", "--status", "completed", "--since"];
    let since = runs[0]["startedAt"].as_str().unwrap();
    let filtered = json(
        &cadre(
            api,
            &[&args[..], &[since, "--limit", "1", "-o", "json"]].concat(),
        )
        .await,
    );
    assert_eq!(filtered.as_array().unwrap().len(), 1, "{filtered}");
    // Refused as a usage error naming the flag, before the API is asked.
    let refused = cadre(api, &["get", "executions", "--until", "soon"]).await;
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        text(&refused).contains("invalid value 'soon' for '--until <UNTIL>'"),
        "{}",
        text(&refused)
    );
    let logs = cadre(api, &["logs", &execution]).await;
    assert!(logs.status.success());
    assert!(
        text(&logs).contains("execution completed"),
        "{}",
        text(&logs)
    );
    // Whole, as the API sent them: CloudEvents, one document each.
    let logs = cadre(api, &["logs", &execution, "-o", "json"]).await;
    assert!(logs.status.success(), "{}", text(&logs));
    let events: Vec<Value> = serde_json::Deserializer::from_slice(&logs.stdout)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("not JSON documents ({e}): {}", text(&logs)));
    assert_eq!(
        events.first().map(|e| e["type"].clone()),
        Some(Value::from("dev.cadre.execution.started.v1"))
    );
    assert_eq!(
        events.last().map(|e| e["type"].clone()),
        Some(Value::from("dev.cadre.execution.completed.v1"))
    );
    let logs = cadre(api, &["logs", &execution, "-o", "yaml"]).await;
    assert!(
        text(&logs).contains("---")
            && text(&logs).contains("type: dev.cadre.execution.completed.v1"),
        "{}",
        text(&logs)
    );
    let described = cadre(
        api,
        &["describe", "workflow", "Research brief", "-o", "yaml"],
    )
    .await;
    assert!(
        text(&described).contains("name: Research brief"),
        "{}",
        text(&described)
    );

    // An approval waits for a person: listed, then approved.
    let gate = write(dir.path(), "gate.yaml", GATE);
    let applied = cadre(api, &["apply", "-f", &gate]).await;
    assert!(applied.status.success(), "{}", text(&applied));
    let started = cadre(api, &["run", "Gate", "-o", "json"]).await;
    assert!(started.status.success(), "{}", text(&started));
    let escalation = open_escalation(api).await;
    assert_eq!(escalation["kind"], "approval");
    let listed = text(&cadre(api, &["escalations"]).await);
    assert!(listed.contains("sign-off"), "{listed}");
    let id = escalation["id"].as_str().unwrap();
    let resolved = cadre(
        api,
        &[
            "resolve",
            id,
            "--action",
            "approve",
            "--reason",
            "looks good",
        ],
    )
    .await;
    assert!(resolved.status.success(), "{}", text(&resolved));
    assert!(
        text(&resolved).contains("resolved: approve"),
        "{}",
        text(&resolved)
    );

    // A followed run that is cancelled ends the follower with exit code 4.
    let follower = command(api, &["run", "Gate", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let escalation = open_escalation(api).await;
    let execution = escalation["executionId"].as_str().unwrap();
    let cancelled = cadre(api, &["cancel", execution, "--reason", "not today"]).await;
    assert!(cancelled.status.success(), "{}", text(&cancelled));
    let followed = tokio::time::timeout(Duration::from_secs(60), follower.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let shown = text(&followed);
    assert_eq!(followed.status.code(), Some(4), "{shown}");
    assert!(
        shown.contains("[sign-off] approval waits for a person"),
        "{shown}"
    );
    assert!(shown.contains("execution cancelled: not today"), "{shown}");
    // Its reason reads as the cancel's, not as an error.
    let described = eventually(Duration::from_secs(30), "the cancel to show", || async {
        let shown = text(&cadre(api, &["describe", "execution", execution]).await);
        shown.contains("status: cancelled").then_some(shown)
    })
    .await;
    assert!(
        described.contains("cancelled because: not today"),
        "{described}"
    );
    // A step whose provider no worker offers waits, and describe says why.
    let unserved = write(
        dir.path(),
        "unserved.yaml",
        &format!(
            "kind: Agent\nname: Nemo\nrole: analyst\nskills: [research]\nprovider: nobody\n\
             model: m\n---\n{}",
            GATE.replace("name: Gate", "name: Unserved")
                .replace("participatingAgents: [Ada]", "participatingAgents: [Nemo]")
        ),
    );
    let applied = cadre(api, &["apply", "-f", &unserved]).await;
    assert!(applied.status.success(), "{}", text(&applied));
    let started = json(&cadre(api, &["run", "Unserved", "-o", "json"]).await);
    let waiting = started["executionId"].as_str().unwrap().to_owned();
    let described = eventually(Duration::from_secs(30), "the step to wait", || async {
        let shown = text(&cadre(api, &["describe", "execution", &waiting]).await);
        shown.contains("waiting: ").then_some(shown)
    })
    .await;
    assert!(
        described.contains("waiting: no live agent worker offers provider \"nobody\""),
        "{described}"
    );
    let cancelled = cadre(api, &["cancel", &waiting]).await;
    assert!(cancelled.status.success(), "{}", text(&cancelled));

    // Cancelling it again is a problem the API explains.
    let again = cadre(api, &["cancel", execution]).await;
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again).contains("current status: cancelled"),
        "{}",
        text(&again)
    );

    // A workflow the API refuses: its problem, each pointer with its place in the file.
    let unknown = write(
        dir.path(),
        "unknown-step.yaml",
        &GATE.replace("name: Gate", "name: Unknown step").replace(
            "      type: analysis\n",
            "      type: analysis\n      dependsOn: [nowhere]\n",
        ),
    );
    let refused = cadre(api, &["apply", "-f", &unknown]).await;
    let shown = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{shown}");
    assert!(shown.contains("workflow/Unknown step failed"), "{shown}");
    assert!(shown.contains("The request is not valid (422)"), "{shown}");
    assert!(
        shown.contains(&format!(
            "{unknown}:11:19: configuration.steps[0].dependsOn[0]: "
        )),
        "{shown}"
    );
    assert!(
        shown.contains("(pointer /configuration/steps/0/dependsOn/0)"),
        "{shown}"
    );

    stack.stop().await;
}

#[tokio::test]
async fn a_file_error_names_file_line_and_field_and_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.yaml",
        &GATE.replace(
            "      type: approval\n",
            "      type: approval\n      timeoutMinutes: soon\n",
        ),
    );
    // Nothing listens there: a file error is found before the API is asked anything.
    let output = cadre("http://127.0.0.1:9", &["apply", "-f", &bad]).await;
    let shown = text(&output);
    assert_eq!(output.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains(&format!(
            "{bad}:17:7: configuration.steps[1].timeoutMinutes: expected a number, got the \
             string \"soon\""
        )),
        "{shown}"
    );
    assert!(shown.contains("nothing was applied"), "{shown}");

    // Flags are checked, and named as typed, before the API is asked: a usage error (exit 2).
    for (args, said) in [
        (
            &["get", "executions", "--since", "yesterday"][..],
            "invalid value 'yesterday' for '--since <SINCE>': not an RFC 3339 time",
        ),
        (
            &["get", "executions", "--until", "2025-01-31 09:30"][..],
            "for '--until <UNTIL>': not an RFC 3339 time",
        ),
        (
            &[
                "get",
                "executions",
                "--since",
                "2025-02-01T00:00:00Z",
                "--until",
                "2025-01-31T10:30:00+01:00",
            ][..],
            "--since 2025-02-01T00:00:00Z is not before --until 2025-01-31T10:30:00+01:00",
        ),
        (
            &[
                "get",
                "executions",
                "--since",
                "2025-02-01T00:00:00Z",
                "--until",
                "2025-02-01T01:00:00+01:00",
            ][..],
            "--since 2025-02-01T00:00:00Z is not before --until 2025-02-01T01:00:00+01:00",
        ),
        (
            &["get", "agents", "--since", "2025-02-01T00:00:00Z"][..],
            "--since does not filter this list",
        ),
        (
            &["get", "workflows", "--workflow", "Ship"][..],
            "--workflow does not filter this list",
        ),
        (
            &["logs", "nonsense"][..],
            "'nonsense' is not an execution id (a UUID)",
        ),
        (
            &["cancel", "nonsense"][..],
            "'nonsense' is not an execution id (a UUID)",
        ),
        (
            &["describe", "execution", "nonsense"][..],
            "'nonsense' is not an execution id (a UUID)",
        ),
        (
            &["resolve", "nonsense", "--action", "skip"][..],
            "'nonsense' is not an escalation id (a UUID)",
        ),
        (
            &[
                "resolve",
                "0196b4a2-7e0c-7d21-9f3a-2b5c8d1e4f60",
                "--action",
                "reassign",
            ][..],
            "--action reassign needs --agent <name or id>",
        ),
        (
            &[
                "resolve",
                "0196b4a2-7e0c-7d21-9f3a-2b5c8d1e4f60",
                "--action",
                "provide-output",
            ][..],
            "--action provide-output needs --output-file <file>",
        ),
        (
            &[
                "resolve",
                "0196b4a2-7e0c-7d21-9f3a-2b5c8d1e4f60",
                "--action",
                "skip",
                "--agent",
                "Ada",
            ][..],
            "--agent goes only with --action reassign",
        ),
        (
            &[
                "resolve",
                "0196b4a2-7e0c-7d21-9f3a-2b5c8d1e4f60",
                "--action",
                "skip",
                "--summary",
                "s",
            ][..],
            "--summary goes only with --action provide-output",
        ),
        (
            &[
                "resolve",
                "0196b4a2-7e0c-7d21-9f3a-2b5c8d1e4f60",
                "--action",
                "skip",
                "--by",
                " ",
            ][..],
            "--by names no one",
        ),
    ] {
        let output = cadre("http://127.0.0.1:9", args).await;
        assert_eq!(output.status.code(), Some(2), "{args:?}: a usage error");
        assert!(text(&output).contains(said), "{args:?}: {}", text(&output));
    }

    // An address that is no URL is a usage error too.
    let output = cadre("notaurl", &["get", "agents"]).await;
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains("--api (or CADRE_API) 'notaurl' is not a URL"),
        "{}",
        text(&output)
    );

    // The API unreachable is said so, with where it was looked for.
    let output = cadre("http://127.0.0.1:9", &["get", "agents"]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output).contains("cannot reach the Cadre API at http://127.0.0.1:9"),
        "{}",
        text(&output)
    );
}

/// Every line of `cadre ... -q`: the ids.
fn ids(output: &Output) -> Vec<String> {
    assert!(output.status.success(), "{}", text(output));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn a_workflow_from_a_template_is_applied_run_and_described() {
    let stack = Stack::start().await;
    let api = stack.api.base().to_owned();
    let api = api.as_str();
    let dir = tempfile::tempdir().unwrap();
    let team = example("feature-team.yaml");
    let workflow = "Real-time inspection collaboration";

    // The team and the workflow its roles make of the template; again, nothing changes.
    let applied = cadre(api, &["apply", "-f", &team]).await;
    let shown = text(&applied);
    assert!(applied.status.success(), "{shown}");
    for line in [
        "agent/Sasha created",
        "agent/Meta created",
        "workflow/Real-time inspection collaboration created",
    ] {
        assert!(shown.contains(line), "{line} in:\n{shown}");
    }
    let again = cadre(api, &["apply", "-f", &team, "-o", "json"]).await;
    let results: Vec<String> = json(&again)
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["result"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(results, ["unchanged"; 8], "{}", text(&again));
    let made = json(&cadre(api, &["describe", "workflow", workflow, "-o", "json"]).await);
    assert!(made["templateId"].is_string(), "{made}");

    // Two roles swapped between the same agents: the same participants, another workflow.
    let swapped = write(
        dir.path(),
        "swapped.yaml",
        &std::fs::read_to_string(&team)
            .unwrap()
            .replace("security: Sasha", "security: Ari")
            .replace("api: Ari", "api: Sasha"),
    );
    let refused = cadre(api, &["apply", "-f", &swapped]).await;
    let shown = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("workflow/Real-time inspection collaboration refused"),
        "{shown}"
    );
    assert!(
        shown.contains("differs in participatingAgents, configuration"),
        "{shown}"
    );
    // A template nobody registered is named at its line.
    let unknown = write(
        dir.path(),
        "unknown.yaml",
        "kind: Workflow\nname: Elsewhere\ntemplate: Build a bridge\nagents: {security: Sasha}\n",
    );
    let refused = cadre(api, &["apply", "-f", &unknown]).await;
    let shown = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains(&format!(
            "{unknown}:3:1: template: no template is named 'Build a bridge'"
        )),
        "{shown}"
    );

    // The template for people: its phases.
    let described = text(&cadre(api, &["describe", "template", "Implement a feature"]).await);
    for line in [
        "Template \"Implement a feature\" (development, system",
        "Phase 1: Analysis & Design (parallel): threat-model, schema-design, ux-requirements",
        "Phase 4: Production Release (sequential): deploy-staging, smoke-tests, \
         production-approval, deploy-production",
    ] {
        assert!(described.contains(line), "{line} in:\n{described}");
    }

    // Followed to its end, while its sign-off is found by id and approved.
    let input = example("feature-input.json");
    let follower = command(api, &["run", workflow, "--input", &input, "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let escalation = eventually(Duration::from_secs(120), "the release to wait", || async {
        let args = [
            "get",
            "escalations",
            "--workflow",
            workflow,
            "--status",
            "open",
            "-q",
        ];
        ids(&cadre(api, &args).await).into_iter().next()
    })
    .await;
    let resolved = cadre(
        api,
        &[
            "resolve",
            &escalation,
            "--action",
            "approve",
            "--by",
            "Release manager",
        ],
    )
    .await;
    assert!(resolved.status.success(), "{}", text(&resolved));
    let followed = tokio::time::timeout(Duration::from_secs(120), follower.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let shown = text(&followed);
    assert!(followed.status.success(), "{shown}");
    assert!(
        shown.contains("[production-approval] resolved by Release manager: approve"),
        "{shown}"
    );

    // Right after the follower ended, the read models show the run as it ended.
    let runs = ids(&cadre(api, &["get", "executions", "--workflow", workflow, "-q"]).await);
    assert_eq!(runs.len(), 1, "{runs:?}");
    let described = text(&cadre(api, &["describe", "execution", &runs[0]]).await);
    for line in [
        "of \"Real-time inspection collaboration\"",
        "status: completed",
        "  Phase 1: Analysis & Design (parallel)",
        "    threat-model         completed  Sasha",
        "role matches 'security'",
        "  Phase 4: Production Release (sequential)",
        "    production-approval  completed  Release manager (a person)",
        "Review rounds (",
        "Dev took \"Deploy to production\" on from",
        "Knowledge passed on (",
        "approval of production-approval: approve by Release manager",
        "LLM usage: ",
    ] {
        assert!(described.contains(line), "{line} in:\n{described}");
    }
    let whole = json(&cadre(api, &["describe", "execution", &runs[0], "-o", "json"]).await);
    assert_eq!(whole["status"], "completed");

    stack.stop().await;
}

/// `examples/escalation.yaml` as its comments tell: a worker offering the offline provider set
/// to fail, the build climbing the ladder to a person, who provides its output; the run then
/// completes.
#[tokio::test]
async fn the_escalation_example_climbs_to_a_person_who_provides_the_output() {
    let mut stack = Stack::start().await;
    let broken = std::collections::BTreeMap::from([(
        "broken".to_owned(),
        cadre_agent_worker::ProviderConfig::Offline {
            latency_ms: 0,
            answer: cadre_agent_worker::OfflineAnswer::Fail,
        },
    )]);
    stack.run_worker("broken", stack.worker_config("broken", broken));
    let api = stack.api.base().to_owned();
    let api = api.as_str();
    let applied = cadre(api, &["apply", "-f", &example("escalation.yaml")]).await;
    assert!(applied.status.success(), "{}", text(&applied));
    let started = json(&cadre(api, &["run", "Fragile release", "-o", "json"]).await);
    let execution = started["executionId"].as_str().unwrap().to_owned();

    let escalation = open_escalation(api).await;
    assert_eq!(escalation["stepId"], "build", "{escalation:#}");
    let failures = escalation["context"]["failures"].as_array().unwrap();
    assert_eq!(
        failures.len(),
        2,
        "Cy's attempt, then Dee's: {escalation:#}"
    );
    let dir = tempfile::tempdir().unwrap();
    let output = write(dir.path(), "build.txt", "v1.2.0 built by hand\n");
    let resolved = cadre(
        api,
        &[
            "resolve",
            escalation["id"].as_str().unwrap(),
            "--action",
            "provide-output",
            "--output-file",
            &output,
            "--summary",
            "Built by hand",
        ],
    )
    .await;
    assert!(resolved.status.success(), "{}", text(&resolved));
    let done = stack
        .wait_until_finished(&execution, Duration::from_secs(60))
        .await;
    assert_eq!(done["status"], "completed", "{done:#}");
    assert_eq!(
        done["stepResults"]["build"]["output"],
        "v1.2.0 built by hand\n"
    );
    stack.stop().await;
}

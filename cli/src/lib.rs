//! `cadre`, the command line for Cadre: agents and workflows kept as YAML files applied to the
//! coordinator's HTTP API, runs started and followed live, executions and escalations read and
//! acted on.
//!
//! It speaks only the public HTTP API (the address from `--api` or `CADRE_API`), so it works
//! against any deployment; it never reads NATS or Postgres. Exit codes: 0 success; 1 the
//! command could not be done (a file error, an API problem, the API unreachable, a document
//! apply refused); 2 a usage error; 3 the followed run failed; 4 it was cancelled.

pub mod apply;
pub mod client;
pub mod describe;
pub mod follow;
pub mod manifest;
pub mod output;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};

use cadre_proto::{EscalationId, ExecutionId, WorkflowId};

use crate::client::Client;
use crate::follow::{Outcome, Until};
use crate::output::Format;

pub const EXIT_FAILED_RUN: u8 = 3;
pub const EXIT_CANCELLED_RUN: u8 = 4;

#[derive(Debug, Parser)]
#[command(
    name = "cadre",
    version,
    about = "Run teams of AI agents as workflows on Cadre"
)]
pub struct Cli {
    /// The coordinator's HTTP API.
    #[arg(
        long,
        env = "CADRE_API",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub api: String,
    /// How to print what the API answers.
    #[arg(short, long, value_enum, default_value_t = Format::Table, global = true)]
    pub output: Format,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Register the agents and create the workflows of YAML files (`kind: Agent` /
    /// `kind: Workflow` documents); what exists with the same name and fields is left as is.
    Apply {
        /// A YAML file (`-` for standard input); repeat for several.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<String>,
    },
    /// Start a run of a workflow (by name or id).
    Run {
        workflow: String,
        /// A JSON file with the run's input (an object).
        #[arg(long)]
        input: Option<PathBuf>,
        /// Watch the run until it ends: progress, assignments, interactions, outcomes; exit 0
        /// when it completed, 3 when it failed, 4 when it was cancelled.
        #[arg(short, long)]
        follow: bool,
    },
    /// List agents, workflows, executions, escalations or templates.
    Get {
        #[arg(value_enum)]
        kind: ListKind,
        /// Executions and escalations: only those of this workflow (name or id).
        #[arg(long)]
        workflow: Option<String>,
        /// Only those in this status. Escalations: `open`, `resolved` or `closed`; executions:
        /// `running`, `paused`, `escalated`, `completed`, `failed`, `cancelled`; workflows:
        /// `draft`, `active`, `paused`, `completed`, `failed`, `cancelled` (several
        /// comma-separated for executions and workflows).
        #[arg(long)]
        status: Option<String>,
        /// Executions: only those started at or after this time (RFC 3339, such as
        /// 2025-01-31T09:30:00Z).
        #[arg(long, value_parser = rfc3339)]
        since: Option<String>,
        /// Executions: only those started before this time (RFC 3339).
        #[arg(long, value_parser = rfc3339)]
        until: Option<String>,
        /// At most this many items (default: all, page after page).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
        /// Only the ids, one a line (for scripts).
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show one agent, workflow, execution, escalation or template: an execution as how its
    /// team worked and a template as its phases (`-o yaml` for them whole), the others whole.
    Describe {
        #[arg(value_enum)]
        kind: OneKind,
        /// A name (agents, workflows, templates) or an id.
        name: String,
    },
    /// An execution's events in order: assignments, interactions, outcomes.
    Logs {
        #[arg(value_parser = execution_id)]
        execution: ExecutionId,
        /// Keep watching until the run ends (else: what has happened so far).
        #[arg(short, long)]
        follow: bool,
    },
    /// Cancel a running execution (its running LLM calls are stopped).
    Cancel(Control),
    /// Pause an execution: running steps finish, nothing new starts.
    Pause(Control),
    /// Resume a paused execution.
    Resume(Control),
    /// What waits for a person (open escalations; `--all` for every one).
    Escalations {
        #[arg(long)]
        all: bool,
        /// Only the ids, one a line (for scripts).
        #[arg(short, long)]
        quiet: bool,
    },
    /// Decide about an escalation.
    Resolve {
        escalation: String,
        #[arg(long, value_enum)]
        action: Action,
        /// `reassign`: the participating agent (name or id) to take the step.
        #[arg(long)]
        agent: Option<String>,
        /// `provide-output`: a file with the step's output.
        #[arg(long = "output-file", alias = "result")]
        output_file: Option<PathBuf>,
        /// `provide-output`: a one-line summary of it.
        #[arg(long)]
        summary: Option<String>,
        /// Why (kept with the resolution).
        #[arg(long)]
        reason: Option<String>,
        /// Who decides (default: $USER).
        #[arg(long)]
        by: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct Control {
    #[arg(value_parser = execution_id)]
    pub execution: ExecutionId,
    #[arg(long)]
    pub reason: Option<String>,
    /// Who asks (default: $USER).
    #[arg(long)]
    pub by: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListKind {
    #[value(alias = "agent")]
    Agents,
    #[value(alias = "workflow")]
    Workflows,
    #[value(alias = "execution")]
    Executions,
    #[value(alias = "escalation")]
    Escalations,
    #[value(alias = "template")]
    Templates,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OneKind {
    #[value(alias = "agents")]
    Agent,
    #[value(alias = "workflows")]
    Workflow,
    #[value(alias = "executions")]
    Execution,
    #[value(alias = "escalations")]
    Escalation,
    #[value(alias = "templates")]
    Template,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Action {
    Retry,
    Reassign,
    Skip,
    ProvideOutput,
    Abort,
    Approve,
    Reject,
    Continue,
}

impl Action {
    fn api_name(self) -> &'static str {
        match self {
            Self::Retry => "retry",
            Self::Reassign => "reassign",
            Self::Skip => "skip",
            Self::ProvideOutput => "provideOutput",
            Self::Abort => "abort",
            Self::Approve => "approve",
            Self::Reject => "reject",
            Self::Continue => "continue",
        }
    }
}

/// Runs one command; the exit code to leave with.
impl Cli {
    /// What the arguments mean together, checked before anything is asked of the API: a flag
    /// the list does not take, a time range no run can fall in, a resolution's flags that do
    /// not go with its action, or an id that is no UUID where only an id will do, is a usage
    /// error (exit 2).
    pub fn check(&self) -> Result<(), clap::Error> {
        let usage = |message: String| {
            <Self as clap::CommandFactory>::command()
                .error(clap::error::ErrorKind::ArgumentConflict, message)
        };
        let invalid = |message: String| {
            <Self as clap::CommandFactory>::command()
                .error(clap::error::ErrorKind::InvalidValue, message)
        };
        if reqwest::Url::parse(&self.api).is_err() {
            return Err(invalid(format!(
                "--api (or CADRE_API) '{}' is not a URL: give the coordinator's, such as \
                 http://127.0.0.1:8080",
                self.api
            )));
        }
        match &self.command {
            Command::Resolve {
                escalation,
                action,
                agent,
                output_file,
                summary,
                by,
                ..
            } => {
                parse_id::<EscalationId>(escalation, "escalation")
                    .map_err(|error| invalid(error.to_string()))?;
                let flags = [
                    ("--agent <name or id>", agent.is_some(), Action::Reassign),
                    (
                        "--output-file <file>",
                        output_file.is_some(),
                        Action::ProvideOutput,
                    ),
                ];
                if summary.is_some() && *action != Action::ProvideOutput {
                    return Err(usage(
                        "--summary goes only with --action provide-output".to_owned(),
                    ));
                }
                for (flag, given, needed_by) in flags {
                    // As typed on the command line (`provide-output`).
                    let name = clap::ValueEnum::to_possible_value(&needed_by).map_or_else(
                        || needed_by.api_name().to_owned(),
                        |v| v.get_name().to_owned(),
                    );
                    if *action == needed_by && !given {
                        return Err(usage(format!("--action {name} needs {flag}")));
                    }
                    if *action != needed_by && given {
                        let flag = flag.split(' ').next().unwrap_or(flag);
                        return Err(usage(format!("{flag} goes only with --action {name}")));
                    }
                }
                // A person's decision is kept with their name: never recorded as nobody's.
                if by.as_deref().is_some_and(|by| by.trim().is_empty()) {
                    return Err(usage(
                        "--by names no one: give the name of who decides".to_owned(),
                    ));
                }
                if user(by.clone()).is_none() {
                    return Err(usage(
                        "say who decides with --by <name> (neither $USER nor $LOGNAME is set)"
                            .to_owned(),
                    ));
                }
                Ok(())
            }
            Command::Describe { kind, name } => {
                let id = match kind {
                    OneKind::Execution => parse_id::<ExecutionId>(name, "execution").map(drop),
                    OneKind::Escalation => parse_id::<EscalationId>(name, "escalation").map(drop),
                    OneKind::Agent | OneKind::Workflow | OneKind::Template => Ok(()),
                };
                id.map_err(|error| invalid(error.to_string()))
            }
            Command::Get {
                kind,
                workflow,
                status,
                since,
                until,
                ..
            } => check_list(kind, workflow, status, since, until, usage),
            _ => Ok(()),
        }
    }
}

/// The filters of `cadre get <kind>` together (see [`Cli::check`]).
fn check_list(
    kind: &ListKind,
    workflow: &Option<String>,
    status: &Option<String>,
    since: &Option<String>,
    until: &Option<String>,
    usage: impl Fn(String) -> clap::Error,
) -> Result<(), clap::Error> {
    let filters = match kind {
        ListKind::Agents | ListKind::Templates => &[][..],
        ListKind::Workflows => &["status"][..],
        ListKind::Escalations => &["workflow", "status"][..],
        ListKind::Executions => &["workflow", "status", "since", "until"][..],
    };
    let given = [
        ("workflow", workflow.is_some()),
        ("status", status.is_some()),
        ("since", since.is_some()),
        ("until", until.is_some()),
    ];
    if let Some((flag, _)) = given
        .iter()
        .find(|(flag, given)| *given && !filters.contains(flag))
    {
        return Err(usage(format!("--{flag} does not filter this list")));
    }
    if let (Some(since), Some(until)) = (since, until) {
        let at = chrono::DateTime::parse_from_rfc3339;
        // Both parsed already (`rfc3339`); the range includes --since and excludes --until.
        if matches!((at(since), at(until)), (Ok(since), Ok(until)) if since >= until) {
            return Err(usage(format!(
                "--since {since} is not before --until {until}: no run can match (runs \
                 started at or after --since and before --until are listed)"
            )));
        }
    }
    Ok(())
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let client = Client::new(&cli.api);
    let format = cli.output;
    match cli.command {
        Command::Apply { files } => {
            let applied = apply::apply(&client, &files, |applied| {
                if format == Format::Table {
                    crate::outln!("{}", applied.line());
                }
            })
            .await?;
            match applied {
                Err(errors) => {
                    for error in &errors {
                        eprintln!("{error}");
                    }
                    eprintln!(
                        "error: {} problem(s) in the files; nothing was applied",
                        errors.len()
                    );
                    Ok(ExitCode::FAILURE)
                }
                Ok(applied) => {
                    if format != Format::Table {
                        output::print_one(format, &serde_json::to_value(&applied)?);
                    }
                    Ok(if applied.iter().all(apply::Applied::ok) {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    })
                }
            }
        }
        Command::Run {
            workflow,
            input,
            follow,
        } => {
            let workflow = workflow_id(&client, &workflow).await?;
            let mut body = json!({ "triggeredBy": user(None) });
            if let Some(path) = input {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
                body["input"] = serde_json::from_str(&text).map_err(|e| {
                    anyhow::anyhow!(
                        "{}:{}:{}: not JSON: {e}",
                        path.display(),
                        e.line(),
                        e.column()
                    )
                })?;
            }
            let started: Value = client
                .post(&format!("/v1/workflows/{workflow}/executions"), &body)
                .await?;
            let execution: ExecutionId = started["executionId"]
                .as_str()
                .and_then(|id| id.parse().ok())
                .ok_or_else(|| anyhow::anyhow!("the API answered no executionId: {started}"))?;
            if !follow {
                match format {
                    Format::Table => crate::outln!(
                        "execution {execution} (#{}) {}",
                        started["executionNumber"],
                        output::cell(&started, "status")
                    ),
                    _ => output::print_one(format, &started),
                }
                return Ok(ExitCode::SUCCESS);
            }
            match format {
                Format::Table => {
                    crate::outln!("execution {execution} (#{})", started["executionNumber"]);
                }
                // Then its events, each a document of its own.
                _ => output::print_one(format, &started),
            }
            let outcome = follow::follow(&client, execution, Until::End, format).await?;
            Ok(exit_for(outcome))
        }
        Command::Logs { execution, follow } => {
            let view: Value = client.get(&format!("/v1/executions/{execution}")).await?;
            let ended = matches!(
                view["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            );
            let until = if follow || ended {
                Until::End
            } else {
                Until::Quiet(Duration::from_secs(1))
            };
            let outcome = follow::follow(&client, execution, until, format).await?;
            if outcome.is_none() && format == Format::Table {
                crate::outln!(
                    "(the run goes on: `cadre logs {execution} --follow` to watch it to its end)"
                );
            }
            Ok(if follow {
                exit_for(outcome)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Get {
            kind,
            workflow,
            status,
            since,
            until,
            limit,
            quiet,
        } => {
            let filters = Filters {
                workflow,
                status,
                since,
                until,
                limit: limit.and_then(|l| usize::try_from(l).ok()),
            };
            get(&client, listing(format, quiet), kind, filters).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Describe { kind, name } => {
            let path = match kind {
                OneKind::Agent => format!("/v1/agents/{}", agent_id(&client, &name).await?),
                OneKind::Workflow => {
                    format!("/v1/workflows/{}", workflow_id(&client, &name).await?)
                }
                OneKind::Execution => format!(
                    "/v1/executions/{}",
                    parse_id::<ExecutionId>(&name, "execution")?
                ),
                OneKind::Escalation => {
                    format!(
                        "/v1/escalations/{}",
                        parse_id::<EscalationId>(&name, "escalation")?
                    )
                }
                OneKind::Template => format!(
                    "/v1/templates/{}",
                    by_name(&client, "/v1/templates", "template", &name).await?
                ),
            };
            let value: Value = client.get(&path).await?;
            match (format, kind) {
                (Format::Table, OneKind::Execution) => {
                    crate::outln!("{}", describe::execution(&client, &value).await?);
                }
                (Format::Table, OneKind::Template) => {
                    crate::outln!("{}", describe::template(&value))
                }
                _ => output::print_one(format, &value),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Cancel(control) => self::control(&client, format, "cancel", control).await,
        Command::Pause(control) => self::control(&client, format, "pause", control).await,
        Command::Resume(control) => self::control(&client, format, "resume", control).await,
        Command::Escalations { all, quiet } => {
            let filters = Filters {
                workflow: None,
                status: (!all).then(|| "open".to_owned()),
                since: None,
                until: None,
                limit: None,
            };
            get(
                &client,
                listing(format, quiet),
                ListKind::Escalations,
                filters,
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Resolve {
            escalation,
            action,
            agent,
            output_file,
            summary,
            reason,
            by,
        } => {
            // `Cli::check` made sure of the id, the flags and the person.
            let escalation: EscalationId = parse_id(&escalation, "escalation")?;
            let person = user(by).unwrap_or_default();
            let mut body = json!({ "action": action.api_name(), "requestedBy": person });
            if let Some(reason) = reason {
                body["reason"] = json!(reason);
            }
            if let Some(agent) = agent {
                body["agentId"] = json!(agent_id(&client, &agent).await?.to_string());
            }
            if let Some(path) = output_file {
                body["output"] = json!(
                    std::fs::read_to_string(&path)
                        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?
                );
                if let Some(summary) = summary {
                    body["summary"] = json!(summary);
                }
            }
            let resolved: Value = client
                .post(&format!("/v1/escalations/{escalation}/resolve"), &body)
                .await?;
            match format {
                Format::Table => {
                    // A run's own escalation (its time for a person) names no step.
                    let step = match resolved["stepId"].as_str() {
                        Some(step) => {
                            format!("step {step}: {}, ", output::cell(&resolved, "stepStatus"))
                        }
                        None => String::new(),
                    };
                    crate::outln!(
                        "escalation {escalation} resolved: {} ({step}execution {}: {})",
                        output::cell(&resolved, "action"),
                        output::cell(&resolved, "executionId"),
                        output::cell(&resolved, "executionStatus"),
                    );
                }
                _ => output::print_one(format, &resolved),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn exit_for(outcome: Option<Outcome>) -> ExitCode {
    match outcome {
        Some(Outcome::Completed) | None => ExitCode::SUCCESS,
        Some(Outcome::Failed(_)) => ExitCode::from(EXIT_FAILED_RUN),
        Some(Outcome::Cancelled) => ExitCode::from(EXIT_CANCELLED_RUN),
    }
}

/// Who a request is from: `--by`, else the user's login name (`$USER`, else `$LOGNAME`); none
/// when neither is set, never an empty name.
fn user(by: Option<String>) -> Option<String> {
    let named = |name: String| Some(name).filter(|n| !n.trim().is_empty());
    by.and_then(named).or_else(|| {
        ["USER", "LOGNAME"]
            .into_iter()
            .find_map(|variable| std::env::var(variable).ok().and_then(named))
    })
}

async fn control(
    client: &Client,
    format: Format,
    verb: &str,
    control: Control,
) -> anyhow::Result<ExitCode> {
    let mut body = json!({ "requestedBy": user(control.by) });
    if let Some(reason) = control.reason {
        body["reason"] = json!(reason);
    }
    let answer: Value = client
        .post(
            &format!("/v1/executions/{}/{verb}", control.execution),
            &body,
        )
        .await?;
    match format {
        Format::Table => crate::outln!(
            "execution {} {}",
            control.execution,
            output::cell(&answer, "status")
        ),
        _ => output::print_one(format, &answer),
    }
    Ok(ExitCode::SUCCESS)
}

/// An execution id given on the command line, with the same words as [`parse_id`].
fn execution_id(raw: &str) -> Result<ExecutionId, String> {
    parse_id(raw, "execution").map_err(|error| error.to_string())
}

fn parse_id<T: std::str::FromStr>(raw: &str, what: &str) -> anyhow::Result<T> {
    raw.parse()
        .map_err(|_| anyhow::anyhow!("'{raw}' is not an {what} id (a UUID)"))
}

/// The id of the item of `path` (a list) named `name`, or `name` itself when it is an id.
async fn by_name(
    client: &Client,
    path: &str,
    what: &str,
    name: &str,
) -> anyhow::Result<uuid::Uuid> {
    if let Ok(id) = name.parse() {
        return Ok(id);
    }
    let items = client.list_all(path).await?;
    let ids: Vec<&str> = items
        .iter()
        .filter(|item| item["name"].as_str() == Some(name))
        .filter_map(|item| item["id"].as_str())
        .collect();
    match ids.as_slice() {
        [id] => parse_id(id, what),
        [] => anyhow::bail!("no {what} is named '{name}'"),
        several => anyhow::bail!(
            "several {what}s are named '{name}': name one by its id ({})",
            several.join(", ")
        ),
    }
}

async fn workflow_id(client: &Client, name: &str) -> anyhow::Result<WorkflowId> {
    by_name(client, "/v1/workflows", "workflow", name)
        .await
        .map(WorkflowId)
}

async fn agent_id(client: &Client, name: &str) -> anyhow::Result<cadre_proto::AgentId> {
    by_name(client, "/v1/agents", "agent", name)
        .await
        .map(cadre_proto::AgentId)
}

/// What `cadre get` lists: the filters given, each passed to the API where the list takes it.
struct Filters {
    workflow: Option<String>,
    status: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<usize>,
}

/// A time given on the command line, checked before anything is asked of the API, which would
/// name its own query parameter rather than the flag the user typed.
fn rfc3339(raw: &str) -> Result<String, String> {
    chrono::DateTime::parse_from_rfc3339(raw)
        .map(|_| raw.to_owned())
        .map_err(|_| {
            "not an RFC 3339 time, such as 2025-01-31T09:30:00Z or 2025-01-31T10:30:00+01:00"
                .to_owned()
        })
}

/// `path` with the query `pairs` whose values are given, percent-encoded.
fn with_query(path: &str, pairs: &[(&str, Option<&str>)]) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        if let Some(value) = value {
            query.append_pair(name, value);
        }
    }
    match query.finish() {
        query if query.is_empty() => path.to_owned(),
        query => format!("{path}?{query}"),
    }
}

/// How a list is printed: as `-o` says, or only the ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listing {
    As(Format),
    Ids,
}

/// `-q` prints only the ids; otherwise the list is printed as `-o` says.
fn listing(format: Format, quiet: bool) -> Listing {
    if quiet {
        Listing::Ids
    } else {
        Listing::As(format)
    }
}

async fn get(
    client: &Client,
    listing: Listing,
    kind: ListKind,
    filters: Filters,
) -> anyhow::Result<()> {
    let workflow = match &filters.workflow {
        Some(name) => Some(workflow_id(client, name).await?.to_string()),
        None => None,
    };
    let (workflow, status) = (workflow.as_deref(), filters.status.as_deref());
    let (path, columns) = match kind {
        ListKind::Agents | ListKind::Templates => {
            if kind == ListKind::Agents {
                ("/v1/agents".to_owned(), output::AGENTS)
            } else {
                ("/v1/templates".to_owned(), output::TEMPLATES)
            }
        }
        ListKind::Workflows => {
            let path = with_query("/v1/workflows", &[("status", status)]);
            (path, output::WORKFLOWS)
        }
        ListKind::Escalations => {
            let pairs = [("status", status), ("workflowId", workflow)];
            (with_query("/v1/escalations", &pairs), output::ESCALATIONS)
        }
        ListKind::Executions => {
            let pairs = [
                ("workflowId", workflow),
                ("status", status),
                ("startedAfter", filters.since.as_deref()),
                ("startedBefore", filters.until.as_deref()),
            ];
            (with_query("/v1/executions", &pairs), output::EXECUTIONS)
        }
    };
    let mut items = client.list(&path, filters.limit).await?;
    if kind == ListKind::Executions && listing == Listing::As(Format::Table) {
        // The table names each run's workflow; runs carry only its id.
        let workflows = client.list_all("/v1/workflows").await?;
        let names: std::collections::HashMap<&str, &Value> = workflows
            .iter()
            .filter_map(|w| Some((w["id"].as_str()?, &w["name"])))
            .collect();
        for run in &mut items {
            if let Some(name) = run["workflowId"].as_str().and_then(|id| names.get(id)) {
                run["workflowName"] = (*name).clone();
            }
        }
    }
    match listing {
        Listing::As(format) => output::print(format, &Value::Array(items.clone()), &items, columns),
        Listing::Ids => {
            for item in &items {
                crate::outln!("{}", output::cell(item, "id"));
            }
        }
    }
    Ok(())
}

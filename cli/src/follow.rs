//! Watching a run as it happens: its events from the log, as server-sent events, shown as one
//! line each (assignments, interactions, step outcomes) under a progress bar.
//!
//! The execution's own feed (`GET /v1/executions/{id}/events`) carries its events and its
//! interactions, from its start, and ends after the event that ends the run. A dropped
//! connection is reopened after the last event seen (`Last-Event-ID`), so nothing is lost or
//! shown twice. Once the run ended, following waits (briefly) for the read models to show its
//! end, so that a `cadre get` or `cadre describe` right after reads the run as it ended.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use cadre_proto::events::{
    Event, InteractionRecorded, KnowledgeShared, Resolution, TaskHandedOff, ToldEvent,
};
use cadre_proto::{AgentId, Envelope, ExecutionId, StepId};

use crate::client::Client;
use crate::output::{self, Format};

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Failed(String),
    Cancelled,
}

/// When to stop reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// The event that ends the run.
    End,
    /// The end, or the feed being quiet this long: what has happened so far.
    Quiet(Duration),
}

/// Reconnections in a row without a new event before giving up.
const MAX_RECONNECTS: u32 = 10;

/// Shows `execution`'s events from its start until `until`: as lines (`Format::Table`), or each
/// event whole as the API sent it, a CloudEvent (`-o json`: one JSON document each; `-o yaml`:
/// one YAML document each). The outcome once it ended.
pub async fn follow(
    client: &Client,
    execution: ExecutionId,
    until: Until,
    format: Format,
) -> anyhow::Result<Option<Outcome>> {
    let lines = format == Format::Table;
    let mut view = View::new(lines && std::io::stdout().is_terminal());
    let path = format!("/v1/executions/{execution}/events");
    // Nothing seen yet: the feed starts at the run's start.
    let mut last_id: Option<String> = None;
    let mut failures = 0;
    loop {
        let response = match client.events(&path, last_id.as_deref()).await {
            Ok(response) => response,
            Err(error) if failures < MAX_RECONNECTS && error.problem().is_none() => {
                failures += 1;
                view.note(&format!("(reconnecting: {error})"));
                tokio::time::sleep(backoff(failures)).await;
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        let mut feed = response.bytes_stream().eventsource();
        loop {
            let next = match until {
                Until::End => feed.next().await,
                Until::Quiet(quiet) => match tokio::time::timeout(quiet, feed.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        view.finish();
                        return Ok(None);
                    }
                },
            };
            let sse = match next {
                Some(Ok(sse)) => sse,
                Some(Err(error)) => {
                    view.note(&format!("(the feed broke: {error}; reconnecting)"));
                    break;
                }
                // The coordinator closed the feed (it stops): another replica goes on.
                None => break,
            };
            if sse.id.is_empty() {
                continue;
            }
            last_id = Some(sse.id.clone());
            failures = 0;
            let Ok(envelope) = Envelope::decode(sse.data.as_bytes()) else {
                continue;
            };
            let outcome = if lines {
                view.show(&envelope.event)
            } else {
                let whole: serde_json::Value = serde_json::from_str(&sse.data)?;
                if format == Format::Yaml {
                    crate::outln!("---");
                }
                output::print_one(format, &whole);
                ended(&envelope.event)
            };
            if let Some(outcome) = outcome {
                view.finish();
                settle(client, execution).await;
                return Ok(Some(outcome));
            }
        }
        failures += 1;
        if failures > MAX_RECONNECTS {
            anyhow::bail!("the event feed keeps closing; gave up after {MAX_RECONNECTS} tries");
        }
        tokio::time::sleep(backoff(failures)).await;
    }
}

/// How long a run that ended is waited for in the read models.
const SETTLE: Duration = Duration::from_secs(15);

/// Waits until the read models show `execution` ended, for at most [`SETTLE`]. The projector
/// applies the log in order, so by then they hold the rest of the run too (its interactions,
/// knowledge, escalations, usage).
async fn settle(client: &Client, execution: ExecutionId) {
    let deadline = Instant::now() + SETTLE;
    let path = format!("/v1/executions/{execution}");
    while Instant::now() < deadline {
        if let Ok(view) = client.get::<serde_json::Value>(&path).await
            && matches!(
                view["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            )
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn backoff(failures: u32) -> Duration {
    Duration::from_millis(250 * 2u64.pow(failures.min(5)))
}

/// What is known of the run so far, and where its lines go.
struct View {
    bar: Option<ProgressBar>,
    names: HashMap<AgentId, String>,
    steps: Vec<StepId>,
    done: HashSet<StepId>,
    /// What the bar says the run is doing: each step an agent works on, or that waits for a
    /// person, by step; and whether the run itself waits for one.
    activity: BTreeMap<StepId, String>,
    run_waits: bool,
}

impl View {
    fn new(terminal: bool) -> Self {
        let bar = terminal.then(|| {
            // Drawn once the run's steps are known: before, it would read "0/0 steps".
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{bar:30}] {pos}/{len} steps  {elapsed}  {wide_msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Self {
            bar,
            names: HashMap::new(),
            steps: Vec::new(),
            done: HashSet::new(),
            activity: BTreeMap::new(),
            run_waits: false,
        }
    }

    fn note(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => crate::outln!("{line}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    fn agent(&self, id: AgentId) -> String {
        self.names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| id.to_string())
    }

    fn interaction(&self, e: &InteractionRecorded) -> String {
        format!(
            "  {} -> {} ({}): {}",
            self.agent(e.from_agent_id),
            e.to_agent_id
                .map(|a| self.agent(a))
                .unwrap_or_else(|| "team".to_owned()),
            e.interaction_type.as_str(),
            one_line(&e.message)
        )
    }

    fn knowledge_shared(&self, e: &KnowledgeShared) -> String {
        format!(
            "  {} shared {}: {}",
            self.agent(e.created_by_agent_id),
            serde_json::to_value(e.knowledge_type)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| "knowledge".to_owned()),
            one_line(&e.title)
        )
    }

    fn handed_off(&self, handoff: &TaskHandedOff) -> String {
        format!(
            "[{}] handed off from {} to {}",
            handoff.task_id,
            self.agent(handoff.from_agent),
            self.agent(handoff.to_agent)
        )
    }

    fn progress(&self) -> String {
        format!("{}/{}", self.done.len(), self.steps.len())
    }

    fn set_done(&mut self, step: &StepId, done: bool) {
        if !self.steps.contains(step) {
            return; // undo-, replan- and delegate- steps are not the workflow's
        }
        if done {
            self.done.insert(step.clone());
        } else {
            self.done.remove(step);
        }
        if let Some(bar) = &self.bar {
            bar.set_position(self.done.len() as u64);
        }
    }

    /// The run's steps: the workflow's at its start, then each re-plan's. A re-plan runs every
    /// one of its steps, a step that keeps its id and was done before included, so nothing
    /// counts as done under it yet.
    fn set_steps(&mut self, steps: Vec<StepId>) {
        self.done.clear();
        self.steps = steps;
        if let Some(bar) = &self.bar {
            bar.set_length(self.steps.len() as u64);
            bar.set_position(self.done.len() as u64);
            if bar.is_hidden() {
                bar.set_draw_target(ProgressDrawTarget::stdout());
            }
        }
    }

    /// Follows what the run is doing from `event`, for the bar.
    fn track(&mut self, event: &Event) {
        match event {
            Event::StepStarted(e) => {
                let doing = format!(
                    "{} working on {}",
                    self.agent(e.attempt.agent_id),
                    e.attempt.step_id
                );
                self.activity.insert(e.attempt.step_id.clone(), doing);
            }
            Event::StepEscalated(e) if e.escalation_id.is_some() => {
                let waits = format!("{} waits for a person", e.step_id);
                self.activity.insert(e.step_id.clone(), waits);
            }
            Event::StepCompleted(e) => {
                self.activity.remove(&e.attempt.step_id);
            }
            Event::StepFailed(e) => {
                self.activity.remove(&e.attempt.step_id);
            }
            Event::StepTimedOut(e) => {
                self.activity.remove(&e.attempt.step_id);
            }
            Event::StepReviewed(e) => {
                self.activity.remove(&e.attempt.step_id);
            }
            Event::StepSkipped(e) => {
                self.activity.remove(&e.step_id);
            }
            Event::EscalationResolved(e) => match &e.step_id {
                Some(step) => {
                    self.activity.remove(step);
                }
                None => self.run_waits = false,
            },
            Event::ExecutionEscalated(_) => self.run_waits = true,
            // The new plan replaced every step under way: none of them waits or works any more.
            Event::ExecutionReplanned(_) => self.activity.clear(),
            _ => return,
        }
        if let Some(bar) = &self.bar {
            let run = self
                .run_waits
                .then(|| "the run waits for a person".to_owned());
            let doing: Vec<String> = run
                .into_iter()
                .chain(self.activity.values().cloned())
                .collect();
            bar.set_message(doing.join("; "));
        }
    }

    /// Shows one of the run's events; the outcome when it ends the run.
    fn show(&mut self, event: &Event) -> Option<Outcome> {
        let (line, outcome) = self.describe(event);
        if let Some(line) = line {
            self.note(&line);
        }
        self.track(event);
        outcome
    }

    fn describe(&mut self, event: &Event) -> (Option<String>, Option<Outcome>) {
        let line = match event {
            Event::ExecutionStarted(e) => {
                for agent in &e.agents {
                    self.names.insert(agent.id, agent.name.clone());
                }
                self.set_steps(
                    e.workflow
                        .configuration
                        .steps
                        .iter()
                        .map(|s| s.id.clone())
                        .collect(),
                );
                format!(
                    "execution #{} of '{}' started ({} steps, {})",
                    e.execution_number,
                    e.workflow.name,
                    self.steps.len(),
                    serde_json::to_value(e.trigger_reason)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                )
            }
            Event::StepScheduled(e) => {
                self.names.insert(e.agent.id, e.agent.name.clone());
                let mut line = match &e.review {
                    Some(review) => format!(
                        "[{}] review round {} by {} (of {}'s work)",
                        e.step.id,
                        review.round,
                        e.agent.name,
                        self.agent(review.author_agent_id)
                    ),
                    None => format!(
                        "[{}] attempt {} assigned to {}: {}",
                        e.step.id,
                        e.attempt,
                        e.agent.name,
                        e.reason.describe()
                    ),
                };
                for handoff in e.handed_off() {
                    line.push('\n');
                    line.push_str(&self.handed_off(&handoff));
                }
                line
            }
            Event::StepStarted(e) => format!(
                "[{}] started by {}",
                e.attempt.step_id,
                self.agent(e.attempt.agent_id)
            ),
            Event::StepDeferred(e) => format!(
                "[{}] waits for its provider until {}: {}",
                e.attempt.step_id,
                e.retry_at.format("%H:%M:%S"),
                one_line(&e.error)
            ),
            // Logs written before handoffs travelled in the scheduling.
            Event::TaskHandedOff(e) => self.handed_off(e),
            // Logs written before a step's end was one event.
            Event::InteractionRecorded(e) => self.interaction(e),
            Event::KnowledgeShared(e) => self.knowledge_shared(e),
            Event::StepCompleted(e) => {
                self.set_done(&e.attempt.step_id, true);
                // What the agent told its team first, as the log of separate events showed it.
                let mut lines: Vec<String> =
                    e.told
                        .iter()
                        .filter_map(|told| match &told.event {
                            ToldEvent::InteractionRecorded(i) => Some(self.interaction(i)),
                            ToldEvent::KnowledgeShared(k) => Some(self.knowledge_shared(k)),
                            ToldEvent::KnowledgeValidated(_)
                            | ToldEvent::KnowledgeSuperseded(_) => None,
                        })
                        .collect();
                lines.push(format!(
                    "[{}] completed by {} in {:.1} s ({} steps done): {}",
                    e.attempt.step_id,
                    self.agent(e.attempt.agent_id),
                    e.duration_ms as f64 / 1000.0,
                    self.progress(),
                    one_line(&e.result.summary)
                ));
                lines.join("\n")
            }
            Event::StepReviewed(e) => {
                if e.ballot.is_none() {
                    self.set_done(&e.attempt.step_id, e.approved);
                }
                format!(
                    "[{}] {} by {}{}",
                    e.attempt.step_id,
                    if e.approved {
                        "approved"
                    } else {
                        "changes requested"
                    },
                    self.agent(e.attempt.agent_id),
                    if e.approved {
                        String::new()
                    } else {
                        format!(": {}", one_line(&e.feedback))
                    }
                )
            }
            Event::VotesTallied(e) => {
                self.set_done(&e.step_id, e.approved);
                format!(
                    "[{}] vote: {} of {} approved, {}",
                    e.step_id,
                    e.approvals(),
                    e.votes.len(),
                    if e.approved { "approved" } else { "rejected" }
                )
            }
            Event::StepFailed(e) => format!(
                "[{}] attempt {} failed{}: {}",
                e.attempt.step_id,
                e.attempt.number,
                if e.retryable {
                    ""
                } else {
                    " (no retry can fix it)"
                },
                one_line(&e.error)
            ),
            Event::StepTimedOut(e) => format!(
                "[{}] attempt {} {}",
                e.attempt.step_id,
                e.attempt.number,
                e.error()
            ),
            Event::StepRetryScheduled(e) => format!(
                "[{}] retry at {}",
                e.attempt.step_id,
                e.retry_at.format("%H:%M:%S")
            ),
            Event::StepRetryDue(_) => return (None, None),
            Event::StepSkipped(e) => {
                self.set_done(&e.step_id, true);
                format!(
                    "[{}] skipped: its condition is false ({})",
                    e.step_id, e.condition
                )
            }
            Event::StepEscalated(e) => match (&e.escalation_id, &e.agent) {
                (Some(id), _) => format!(
                    "[{}] {} waits for a person: {} (escalation {id}; act on it with \
                     `cadre resolve {id} --action ...`)",
                    e.step_id,
                    if e.approval { "approval" } else { "escalated" },
                    one_line(&e.reason)
                ),
                (None, Some(agent)) => format!(
                    "[{}] escalated ({}) to {}: {}",
                    e.step_id,
                    e.rung.as_str(),
                    agent.name,
                    one_line(&e.reason)
                ),
                (None, None) => format!("[{}] escalated: {}", e.step_id, one_line(&e.reason)),
            },
            Event::ExecutionEscalated(e) => format!(
                "execution waits for a person after {} min (escalation {}): {}",
                e.after_minutes,
                e.escalation_id,
                one_line(&e.reason)
            ),
            Event::EscalationResolved(e) => {
                if let Some(step) = &e.step_id
                    && matches!(
                        e.resolution,
                        Resolution::Skip | Resolution::ProvideOutput { .. } | Resolution::Approve
                    )
                {
                    self.set_done(step, true);
                }
                format!(
                    "{} resolved by {}: {}{}",
                    e.step_id
                        .as_ref()
                        .map(|s| format!("[{s}]"))
                        .unwrap_or_else(|| "execution".to_owned()),
                    e.request.requested_by.as_deref().unwrap_or("a person"),
                    e.resolution.as_str(),
                    e.request
                        .reason
                        .as_deref()
                        .map(|r| format!(" ({})", one_line(r)))
                        .unwrap_or_default()
                )
            }
            Event::LeadTaken(e) => format!(
                "lead for '{}' goes to {}",
                e.risk,
                e.agent
                    .as_ref()
                    .map(|a| a.name.clone())
                    .unwrap_or_else(|| format!("nobody (no agent has the role '{}')", e.role))
            ),
            Event::QuestionsAsked(e) => format!(
                "[{}] {} asks {} question(s) and waits",
                e.attempt.step_id,
                self.agent(e.attempt.agent_id),
                e.questions.len()
            ),
            Event::QuestionAssigned(_) | Event::QuestionAnswered(_) => return (None, None),
            Event::QuestionsExpired(e) => format!(
                "[{}] {} question(s) unanswered at the deadline",
                e.attempt.step_id,
                e.unanswered.len()
            ),
            Event::SagaStarted(e) => format!(
                "run failing ({}); undoing {} step(s)",
                one_line(&e.error),
                e.steps.len()
            ),
            Event::ExecutionReplanned(e) => {
                self.set_steps(e.steps.iter().map(|s| s.id.clone()).collect());
                format!(
                    "re-planned by {}: {}",
                    self.agent(e.agent_id),
                    one_line(&e.summary)
                )
            }
            Event::ExecutionPaused(_) => "execution paused".to_owned(),
            Event::ExecutionResumed(_) => "execution resumed".to_owned(),
            Event::ExecutionCompleted(_) => {
                return (
                    Some(format!(
                        "execution completed ({} steps done)",
                        self.progress()
                    )),
                    ended(event),
                );
            }
            Event::ExecutionFailed(e) => {
                return (
                    Some(format!("execution failed: {}", one_line(&e.error))),
                    ended(event),
                );
            }
            Event::ExecutionCancelled(e) => {
                return (
                    Some(format!(
                        "execution cancelled{}",
                        e.request
                            .reason
                            .as_deref()
                            .map(|r| format!(": {}", one_line(r)))
                            .unwrap_or_default()
                    )),
                    ended(event),
                );
            }
            _ => return (None, None),
        };
        (Some(line), None)
    }
}

/// How the run ended, if `event` ends it.
fn ended(event: &Event) -> Option<Outcome> {
    match event {
        Event::ExecutionCompleted(_) => Some(Outcome::Completed),
        Event::ExecutionFailed(e) => Some(Outcome::Failed(e.error.clone())),
        Event::ExecutionCancelled(_) => Some(Outcome::Cancelled),
        _ => None,
    }
}

/// A text on one line (its lines joined, spaces collapsed), cut to fit a terminal line.
fn one_line(text: &str) -> String {
    const MAX: usize = 160;
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.chars().count() > MAX {
        format!("{}…", joined.chars().take(MAX).collect::<String>())
    } else {
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cadre_proto::samples::every_event;

    fn sample(type_name: &str) -> Event {
        every_event()
            .into_iter()
            .find(|e| e.type_name() == type_name)
            .unwrap_or_else(|| panic!("no sample {type_name}"))
    }

    #[test]
    fn the_bar_says_what_each_step_does_and_what_waits_for_a_person() {
        use cadre_proto::events::types;
        let mut view = View::new(false);
        let Event::StepEscalated(mut escalated) = sample(types::STEP_ESCALATED) else {
            unreachable!()
        };
        escalated.escalation_id = Some(cadre_proto::EscalationId::new());
        let step = escalated.step_id.clone();
        view.track(&Event::StepEscalated(escalated));
        assert_eq!(
            view.activity.get(&step).map(String::as_str),
            Some(format!("{step} waits for a person").as_str())
        );
        let Event::EscalationResolved(mut resolved) = sample(types::ESCALATION_RESOLVED) else {
            unreachable!()
        };
        resolved.step_id = Some(step.clone());
        view.track(&Event::EscalationResolved(resolved.clone()));
        assert!(view.activity.is_empty(), "{:?}", view.activity);

        let started = sample(types::STEP_STARTED);
        view.track(&started);
        assert_eq!(view.activity.len(), 1);
        view.track(&sample(types::STEP_COMPLETED));
        assert!(view.activity.is_empty(), "{:?}", view.activity);

        view.track(&started);
        view.track(&sample(types::EXECUTION_REPLANNED));
        assert!(view.activity.is_empty(), "{:?}", view.activity);
        // A step done before the re-plan runs again if the new plan keeps its id.
        let kept = StepId::parse("design").unwrap();
        view.set_steps(vec![kept.clone()]);
        view.set_done(&kept, true);
        assert_eq!(view.progress(), "1/1");
        view.set_steps(vec![kept]);
        assert_eq!(
            view.progress(),
            "0/1",
            "kept by the next plan, to be done again"
        );

        view.track(&sample(types::EXECUTION_ESCALATED));
        assert!(view.run_waits);
        resolved.step_id = None;
        view.track(&Event::EscalationResolved(resolved));
        assert!(!view.run_waits);
    }
}

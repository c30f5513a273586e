//! One delivery of a `StepScheduled`, from decoding to acknowledgement.
//!
//! The handler decides a [`Disposition`] and [`settle`] carries it out: ack only once every
//! event of the step is stored; nak (with a delay) when the infrastructure failed transiently;
//! terminate, with the reason, what can never be processed. A provider that fails transiently
//! (rate limited, overloaded, unreachable) does not hold the delivery: the step is recorded as
//! waiting (`StepDeferred`), handed back to the queue by a message schedule at the time the
//! provider named (or after a jittered backoff), and acked; it fails once its retry budget,
//! counted in time, runs out.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::object_store::ObjectStore;
use async_nats::jetstream::{self, AckKind};
use backon::{ExponentialBuilder, Retryable};
use cadre_proto::events::{CallUsage, SharedKnowledge};
use cadre_proto::model::{AgentProfile, ModelChoice, ObjectRef, StepResult, TokenUsage};
use cadre_proto::workers::TokenDelta;
use cadre_proto::{Envelope, Event, KnowledgeId, StepId, events::types, streams, subjects};
use cadre_runtime::bus::{self, Append, EventBus, PublishError, ReadError, Stored};
use chrono::Utc;
use tracing::Instrument;

use crate::calls::RunningCalls;
use crate::claim;
use crate::config::Price;
use crate::knowledge::{KNOWLEDGE_TOKEN_BUDGET, KnowledgeView, for_step};
use crate::llm::{ChatRequest, Completion, LlmError, Providers};
use crate::prompt::{
    DependencyOutput, KnowledgeItem, StepContext, StepPrompt, has_system_role, parse_answer,
    parse_review, question_prompt, repair_prompt, review_prompt, step_prompt, step_result_schema,
};
use crate::step::{
    Answered, AssignedQuestion, ScheduledStep, Waited, addressed, already_handled, given_up,
    handed_on, next_wait, retry_delay,
};

/// Longest a question waits for its recipient's provider between two deliveries: a question
/// has a deadline, and a later answer is of no use to its asker.
const MAX_QUESTION_DELAY: Duration = Duration::from_secs(30);

/// How often a running step tells JetStream it is still being worked on: three times per
/// [`streams::AGENT_WORKER_ACK_WAIT`], so one late or lost in-progress ack does not get the step
/// handed to another worker.
const PROGRESS_INTERVAL: Duration = streams::AGENT_WORKER_ACK_WAIT.checked_div(3).unwrap();

/// How long a worker keeps trying to record what a step produced while NATS is away or slow,
/// before it hands the step back to be run again: the model's answer is paid for. Well inside
/// JetStream's duplicate window (2 min), so a try that was stored but not confirmed is dropped
/// when tried again: a deadline on the whole, since each try may wait 5 s for its
/// acknowledgement on top of the backoff's pauses.
const RECORD_PATIENCE: Duration = Duration::from_secs(60);

/// An answer and the model that gave it (the agent's own, or its fallback, and then why).
struct Answer {
    completion: Completion,
    answered_by: ModelChoice,
    /// Why the agent's own model did not answer, when its fallback did.
    fallback_reason: Option<String>,
}

/// What a step's dependencies handed on (see [`Worker::dependencies`]).
#[derive(Default)]
struct Dependencies {
    outputs: Vec<DependencyOutput>,
    knowledge: Vec<SharedKnowledge>,
}

/// What to tell JetStream about a delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    /// Done: every event the step produced is stored (or it needed no work).
    Ack,
    /// Deliver it again after `delay`.
    Nak { delay: Duration },
    /// It can never be processed; stop redelivering and record why.
    Terminate(String),
}

pub struct Worker {
    pub bus: EventBus,
    /// Where results too large for an event are kept (claim checks).
    pub results: ObjectStore,
    pub calls: RunningCalls,
    pub providers: Providers,
    pub knowledge: KnowledgeView,
    pub knowledge_limit: u32,
    /// How long a step attempt may wait for a provider that keeps failing transiently.
    pub retry_budget: Duration,
    /// Most characters of the dependencies' results a step's prompt carries.
    pub dependency_budget: usize,
    /// Model prices, for each step's cost.
    pub prices: BTreeMap<String, Price>,
}

impl Worker {
    /// Handles one delivery inside a span joined to the publisher's trace, and settles it.
    /// `abandon` hands the step back (nak) when shutdown could not wait for it any longer.
    pub async fn handle(
        &self,
        message: jetstream::Message,
        abandon: &tokio_util::sync::CancellationToken,
    ) {
        let span = tracing::info_span!(
            "step",
            subject = %message.subject,
            execution_id = tracing::field::Empty,
            step_id = tracing::field::Empty,
            attempt = tracing::field::Empty,
            delivered = tracing::field::Empty,
        );
        cadre_runtime::telemetry::extract(message.headers.as_ref(), &span);
        async {
            let work = while_in_progress(&message, self.process(&message));
            let disposition = match abandon.run_until_cancelled(work).await {
                Some(disposition) => disposition,
                None => {
                    tracing::warn!("shutting down before the step finished; handing it back");
                    Disposition::Nak {
                        delay: Duration::ZERO,
                    }
                }
            };
            settle(&message, disposition).await;
        }
        .instrument(span)
        .await
    }

    async fn process(&self, message: &jetstream::Message) -> Disposition {
        let envelope = match Envelope::decode(&message.payload) {
            Ok(envelope) => envelope,
            Err(error) => return Disposition::Terminate(error.to_string()),
        };
        let delivered = match message.info() {
            Ok(info) => info.delivered,
            Err(error) => {
                return Disposition::Terminate(format!("not a JetStream delivery: {error}"));
            }
        };
        let scheduled = match envelope.event {
            Event::StepScheduled(scheduled) => scheduled,
            Event::QuestionAssigned(assigned) => {
                let question = AssignedQuestion {
                    event_id: envelope.meta.id,
                    tenant: envelope.meta.tenant,
                    assigned: *assigned,
                };
                return self.answer(&question, delivered).await;
            }
            other => {
                return Disposition::Terminate(format!(
                    "expected a {} or {} event, got {}",
                    types::STEP_SCHEDULED,
                    types::QUESTION_ASSIGNED,
                    other.type_name()
                ));
            }
        };
        let span = tracing::Span::current();
        span.record(
            "execution_id",
            tracing::field::display(scheduled.execution_id),
        );
        span.record("step_id", tracing::field::display(&scheduled.step.id));
        span.record("attempt", scheduled.attempt);
        span.record("delivered", delivered);
        let step = ScheduledStep {
            event_id: envelope.meta.id,
            tenant: envelope.meta.tenant,
            scheduled: *scheduled,
        };
        let waited = Waited::from_headers(message.headers.as_ref());
        let stored_at = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(streams::LOG_SEQUENCE_HEADER))
            .and_then(|sequence| sequence.as_str().parse().ok());
        let last_delivery = delivered >= streams::AGENT_WORKER_MAX_DELIVER;

        let call = self.calls.register(
            step.scheduled.execution_id,
            step.scheduled.step.id.clone(),
            step.scheduled.attempt,
        );
        let run = async {
            let _turn = call.turn().await;
            self.run_step(&step, message, waited, stored_at).await
        };
        let Some(outcome) = call.token.run_until_cancelled(run).await else {
            // The coordinator recorded why (a time-out, a cancel) before it asked.
            tracing::info!("the coordinator stopped this step; nothing more to record");
            return Disposition::Ack;
        };
        match outcome {
            Ok(disposition) => disposition,
            Err(error) if last_delivery => {
                // No delivery is left to retry: report the step failed rather than leave the
                // execution waiting for an answer that will never come.
                tracing::error!(
                    error = format!("{error:#}"),
                    "step failed on its last delivery"
                );
                self.fail(
                    &step,
                    format!("gave up after {delivered} deliveries: {error:#}"),
                    true,
                    None,
                )
                .await
                .unwrap_or_else(|error| self.retry_later(&error, delivered))
            }
            Err(error) => self.retry_later(&error, delivered),
        }
    }

    /// The step's latest scheduling, completion, failure and time-out, and its execution's end:
    /// what [`Worker::run_step`] checks when its first try, starting the step on the condition
    /// that nothing happened in the run since it was scheduled, found something had. Looked up
    /// per fact rather than as the step's single latest event: a copy of the `StepScheduled`
    /// re-published after the duplicate window would otherwise hide a completion stored before
    /// it. Any replica may answer: one that lags can only say "not done yet", and a step run
    /// twice is deduplicated.
    ///
    /// When the delivery says where its `StepScheduled` is stored (`stored_at`) and that event
    /// is still the latest of the step, nothing has happened to the step since it was
    /// scheduled, and one lookup stands for the seven: every outcome of this attempt or a later
    /// one, and any copy stored again, would be stored after it (and the coordinator hands out
    /// no copy of a scheduling whose attempt had ended).
    async fn latest_outcomes(
        &self,
        step: &ScheduledStep,
        stored_at: Option<u64>,
    ) -> anyhow::Result<Vec<(u64, Event)>> {
        let s = &step.scheduled;
        // Whether the scheduling is still the step's latest event: by its sequence and id,
        // without decoding it. A scheduling stored without its id (an atomic batch's) takes
        // the precise lookups below.
        let untouched = async {
            let Some(stored_at) = stored_at else {
                return Ok::<_, ReadError>(false);
            };
            let step_events =
                subjects::step_events(&step.tenant, s.workflow_id, s.execution_id, &s.step.id);
            let latest = self
                .bus
                .peek_last_id(&step_events)
                .await
                .map_err(ReadError::Nats)?;
            Ok(latest.is_some_and(|(sequence, id)| {
                sequence == stored_at && id.is_some_and(|id| id == step.event_id.to_string())
            }))
        };
        // An execution that ended (cancelled, or failed by another step) needs no more work,
        // nor one that gave up the steps it had scheduled (a saga, a re-plan).
        let execution_ends = [
            subjects::CANCELLED,
            subjects::FAILED,
            subjects::SAGA_STARTED,
            subjects::REPLANNED,
        ]
        .map(|fact| subjects::execution(&step.tenant, s.workflow_id, s.execution_id, fact));
        let (mut lookups, untouched) = tokio::join!(
            futures::future::join_all(execution_ends.iter().map(|f| self.bus.peek_last_event(f))),
            untouched
        );
        if !untouched.context("reading the step's latest event")? {
            lookups.extend(self.step_facts(step).await);
        }
        let mut latest = Vec::new();
        for lookup in lookups {
            match lookup {
                Ok(Some(stored)) => latest.push((stored.sequence, stored.envelope.event)),
                Ok(None) => {}
                // Only our own events matter here; one this build cannot read is not one.
                Err(error @ ReadError::Decode { .. }) => {
                    tracing::warn!(%error, "ignoring an unreadable event of the step");
                }
                Err(error) => return Err(error).context("reading the step's latest events"),
            }
        }
        Ok(latest)
    }

    /// Records the step's start, unless something settled it already or ended its run (`Err`
    /// with why). First tries to record it on the condition that its scheduling (stored at
    /// `stored_at`) is still the run's latest event: then nothing can have settled the step or
    /// ended the run (a coordinator names `stored_at` only for a scheduling it has just
    /// appended, expecting the run's last event, so to a run that had not ended; one read back
    /// from the log, perhaps a copy stored again, comes without it), and the check costs no
    /// round trip of its own; a first delivery of a pipeline's step, the usual case, looks
    /// nothing up before it starts. Anything else in the run since (a sibling step's events, a
    /// redelivery's own start, stored or found a duplicate) takes the checks of
    /// [`Worker::latest_outcomes`].
    async fn start(
        &self,
        step: &ScheduledStep,
        waited: Option<Waited>,
        stored_at: Option<u64>,
    ) -> anyhow::Result<Result<(), String>> {
        let s = &step.scheduled;
        if let Some(stored_at) = stored_at {
            let if_unchanged = Append::ExpectLast {
                filter: subjects::execution_state(&step.tenant, s.workflow_id, s.execution_id),
                sequence: stored_at,
            };
            match self
                .bus
                .publish(&step.started(Utc::now()), if_unchanged)
                .await
            {
                // A duplicate is an earlier delivery's start (its id derives from the step's):
                // that delivery may have finished the step since.
                Ok(stored) if !stored.duplicate => return Ok(Ok(())),
                Ok(_) | Err(PublishError::Conflict { .. }) => {}
                Err(error) => return Err(error).context("publishing StepStarted"),
            }
        }
        let latest = self.latest_outcomes(step, stored_at).await?;
        if let Some(why) = latest
            .iter()
            .find_map(|(_, latest)| already_handled(s, waited, latest))
            .or_else(|| given_up(s, stored_at, &latest))
        {
            return Ok(Err(why));
        }
        self.bus
            .publish(&step.started(Utc::now()), Append::Any)
            .await
            .context("publishing StepStarted")?;
        Ok(Ok(()))
    }

    /// The latest event of each fact that can settle the step, one lookup per fact.
    async fn step_facts(&self, step: &ScheduledStep) -> Vec<Result<Option<Stored>, ReadError>> {
        let s = &step.scheduled;
        let step_facts = [
            subjects::SCHEDULED,
            subjects::DEFERRED,
            subjects::COMPLETED,
            subjects::FAILED,
            subjects::TIMED_OUT,
            subjects::REVIEWED,
            subjects::QUESTIONS_ASKED,
        ]
        .map(|fact| {
            subjects::step(
                &step.tenant,
                s.workflow_id,
                s.execution_id,
                &s.step.id,
                fact,
            )
        });
        futures::future::join_all(step_facts.iter().map(|f| self.bus.peek_last_event(f))).await
    }

    /// What the step's dependencies handed on, read from the log (what completed each, see
    /// [`Worker::completion`]), in the order the step lists them: each one's result, and the knowledge
    /// it hands on (its own, then what it was handed). A dependency without a completion
    /// (skipped, say) is left out. Read from the log rather than the read models so that no
    /// step waits for the projector: the log has them the moment the coordinator schedules
    /// this step.
    async fn dependencies(&self, step: &ScheduledStep) -> anyhow::Result<Dependencies> {
        let completions = futures::future::try_join_all(
            step.scheduled
                .step
                .depends_on
                .iter()
                .map(|dependency| self.completion(step, dependency)),
        )
        .await
        .context("reading the results of the step's dependencies")?;
        let mut dependencies = Dependencies::default();
        for (dependency, completion) in step.scheduled.step.depends_on.iter().zip(completions) {
            match completion.map(|stored| stored.envelope.event) {
                Some(Event::StepCompleted(done)) => {
                    dependencies.outputs.push(DependencyOutput {
                        step_id: dependency.to_string(),
                        summary: done.result.summary.clone(),
                        output: done.result.output.clone(),
                    });
                    dependencies
                        .knowledge
                        .extend(done.knowledge_handed_on.iter().cloned());
                }
                Some(Event::EscalationResolved(resolved)) => {
                    if let Some((summary, output)) = resolved.result() {
                        dependencies.outputs.push(DependencyOutput {
                            step_id: dependency.to_string(),
                            summary,
                            output,
                        });
                    }
                }
                _ => {}
            }
        }
        Ok(dependencies)
    }

    /// What completed `dependency` of the step: its agent's `StepCompleted` or a person's
    /// resolution with its output (an escalation, an approval), the later of the two; `None`
    /// if neither. Usually the dependency's latest event, one lookup; when something followed
    /// it (a review), the latest of each. From the stream's leader: a replica that lags could
    /// miss a completion the coordinator has seen, and the step would run without that
    /// dependency's work.
    async fn completion(
        &self,
        step: &ScheduledStep,
        dependency: &StepId,
    ) -> Result<Option<Stored>, ReadError> {
        let s = &step.scheduled;
        let subject = |fact| {
            subjects::step(
                &step.tenant,
                s.workflow_id,
                s.execution_id,
                dependency,
                fact,
            )
        };
        let completes = |stored: &Stored| match &stored.envelope.event {
            Event::StepCompleted(_) => true,
            Event::EscalationResolved(resolved) => resolved.result().is_some(),
            _ => false,
        };
        let all = subjects::step_events(&step.tenant, s.workflow_id, s.execution_id, dependency);
        let latest = match self.bus.last_event(&all).await {
            Ok(latest) => latest.filter(completes),
            // One of another kind, from a later release say: read each way below.
            Err(ReadError::Decode { .. }) => None,
            Err(error) => return Err(error),
        };
        if latest.is_some() {
            return Ok(latest);
        }
        let ways = [subjects::COMPLETED, subjects::ESCALATION_RESOLVED].map(subject);
        let mut completion: Option<Stored> = None;
        for lookup in
            futures::future::join_all(ways.iter().map(|way| self.bus.last_event(way))).await
        {
            if let Some(stored) = lookup?.filter(completes)
                && completion
                    .as_ref()
                    .is_none_or(|latest| latest.sequence < stored.sequence)
            {
                completion = Some(stored);
            }
        }
        Ok(completion)
    }

    /// Stores `events`, in order, trying again with backoff while NATS is away or slow, for up
    /// to [`RECORD_PATIENCE`]: they say what a paid model call produced, and giving up would
    /// have the step run, and the model paid, again. Their ids derive from the step's, so a
    /// try stored but not confirmed is dropped when tried again. A refusal no other try can
    /// change (too large) is returned at once.
    async fn record(&self, events: &[Envelope]) -> Result<(), PublishError> {
        let patience = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(5))
            .without_max_times();
        let tries = (|| async { self.bus.publish_all(events).await.map(drop) })
            .retry(patience)
            .when(|error| !error.is_too_large())
            .notify(|error, after| {
                tracing::warn!(%error, ?after, "could not record the step's events; trying again");
            });
        tokio::time::timeout(RECORD_PATIENCE, tries)
            .await
            .unwrap_or_else(|_| {
                Err(PublishError::Nats(
                    async_nats::jetstream::context::PublishError::with_source(
                        async_nats::jetstream::context::PublishErrorKind::TimedOut,
                        format!("not recorded within {}s", RECORD_PATIENCE.as_secs()),
                    ),
                ))
            })
    }

    fn retry_later(&self, error: &anyhow::Error, delivered: i64) -> Disposition {
        let delay = retry_delay(delivered);
        tracing::warn!(
            error = format!("{error:#}"),
            ?delay,
            "step interrupted; it will be redelivered"
        );
        Disposition::Nak { delay }
    }

    /// Runs the step. An `Err` is an infrastructure failure: the step is worth another delivery.
    async fn run_step(
        &self,
        step: &ScheduledStep,
        message: &jetstream::Message,
        waited: Option<Waited>,
        stored_at: Option<u64>,
    ) -> anyhow::Result<Disposition> {
        let s = &step.scheduled;
        // Whether the step is still to do, and then its start, from the log; meanwhile the
        // rest of the team's knowledge, as the read models show it now: ranking it was the
        // longest part of a step at low load. (A delivery of a step already done wastes the
        // query.)
        let start = async {
            let started_at = Instant::now();
            let (started, dependencies) =
                tokio::join!(self.start(step, waited, stored_at), self.dependencies(step));
            if let Err(why) = started? {
                return Ok(Err(why));
            }
            anyhow::Ok(Ok((dependencies?, started_at)))
        };
        let team = self.knowledge.relevant(
            &step.tenant,
            s.workflow_id,
            &s.step,
            self.knowledge_limit,
            KNOWLEDGE_TOKEN_BUDGET,
        );
        let (started, team) = tokio::join!(start, team);
        let (dependencies, started_at) = match started? {
            Ok(started) => started,
            Err(why) => {
                tracing::info!(why, "step already handled; skipping this delivery");
                return Ok(Disposition::Ack);
            }
        };
        // What the dependencies shared comes first.
        let team = team.context("reading the workflow's knowledge")?;
        let knowledge = for_step(
            dependencies
                .knowledge
                .iter()
                .cloned()
                .map(KnowledgeItem::from)
                .collect(),
            team,
            self.knowledge_limit,
            KNOWLEDGE_TOKEN_BUDGET,
        );
        let shown: HashSet<KnowledgeId> = knowledge.iter().map(|item| item.id).collect();
        let handed = dependencies.knowledge;
        let dependencies = dependencies.outputs;

        let prompt = match &s.review {
            Some(review) => review_prompt(&s.agent, &s.step, s.communication_style, review),
            None => step_prompt(
                &s.agent,
                &s.step,
                s.communication_style,
                &StepContext {
                    knowledge: &knowledge,
                    dependencies: &dependencies,
                    dependency_budget: self.dependency_budget,
                    input: s.input.as_ref(),
                    feedback: s.feedback.as_deref(),
                    team: &s.team,
                    answers: &s.answers,
                    earlier_failures: &s.earlier_failures,
                },
            ),
        };
        let schema = s.review.is_none().then(step_result_schema);
        tracing::info!(
            provider = s.agent.provider,
            model = s.agent.model,
            knowledge_items = knowledge.len(),
            dependencies = dependencies.len(),
            "calling the agent's LLM"
        );
        let Answer {
            completion,
            answered_by,
            fallback_reason,
        } = match self
            .call(step, message, waited, &prompt, schema.as_ref())
            .await?
        {
            Ok(answer) => answer,
            Err(settled) => return Ok(settled),
        };

        if let Some(review) = &s.review {
            let Some((approved, feedback)) = parse_review(&completion.text) else {
                let reason = format!(
                    "the review by {} gave no verdict: its answer has no '## Verdict' section \
                     saying APPROVED or CHANGES REQUESTED",
                    s.agent.name
                );
                let usage = self.usage(&answered_by, completion.usage);
                return self.fail(step, reason, true, Some(usage)).await;
            };
            // The feedback interaction first: the verdict moves the step on.
            let usage = self.usage(&answered_by, completion.usage);
            let events = step.reviewed(review, approved, feedback, usage, Utc::now());
            self.bus
                .publish_all(&events)
                .await
                .context("publishing the review")?;
            tracing::info!(approved, round = review.round, "step reviewed");
            return Ok(Disposition::Ack);
        }
        let result = match parse_answer(&s.step.name, &completion.text, completion.usage) {
            Ok(result) => result,
            Err(unstructured) => {
                tracing::warn!(%unstructured, "asking once for the answer in the required structure");
                let repair = repair_prompt(&prompt, &completion.text);
                let again = match self
                    .call(step, message, waited, &repair, schema.as_ref())
                    .await?
                {
                    Ok(again) => again.completion,
                    Err(settled) => return Ok(settled),
                };
                let usage = completion.usage.plus(again.usage);
                match parse_answer(&s.step.name, &again.text, usage) {
                    Ok(result) => result,
                    Err(still) => {
                        let reason = format!(
                            "agent {} answered without the required structure twice (one repair \
                             request): {still}",
                            s.agent.name
                        );
                        let usage = self.usage(&answered_by, usage);
                        return self.fail(step, reason, true, Some(usage)).await;
                    }
                }
            }
        };
        let usage = self.usage(&answered_by, result.tokens);
        let cost = usage.cost_usd;
        let questions = step.questions_to_ask(&result);
        if !questions.is_empty() {
            // The step waits for its teammates, holding no worker: the coordinator hands the
            // questions out and schedules the next attempt with the answers.
            let count = questions.len();
            let now = Utc::now();
            let status = step.waiting_for_answers(&questions, now);
            let asked = step.asked(questions, usage, now);
            // Its concerns are the team's now: the answer that finishes the step may not
            // repeat them.
            let concerns = result
                .questions
                .iter()
                .filter(|line| addressed(line).is_none())
                .collect();
            let mut events = vec![asked, status];
            events.extend(
                step.concerns(concerns)
                    .map(|told| step.told_apart(told, now)),
            );
            self.record(&events)
                .await
                .context("publishing QuestionsAsked and the agent's status")?;
            tracing::info!(questions = count, "step waits for its teammates' answers");
            return Ok(Disposition::Ack);
        }
        let tokens = result.tokens.total;
        let result = if claim::too_large(&result) {
            self.claim_check(step, result).await?
        } else {
            result
        };
        let told = step.shared(&result, &knowledge);
        let handed_on = handed_on(handed, &shown, &told);
        let used = knowledge.iter().map(|item| item.id).collect();
        let answered = Answered {
            by: answered_by,
            cost_usd: cost,
            fallback_reason,
        };
        let completed = step.completed(
            result,
            answered,
            used,
            handed_on,
            told,
            started_at.elapsed(),
            Utc::now(),
        );
        self.record(std::slice::from_ref(&completed))
            .await
            .context("publishing StepCompleted")?;
        tracing::info!(tokens, "step completed");
        Ok(Disposition::Ack)
    }

    /// Keeps the whole result in the results store and returns what the event carries.
    async fn claim_check(
        &self,
        step: &ScheduledStep,
        result: StepResult,
    ) -> anyhow::Result<StepResult> {
        let s = &step.scheduled;
        // One object per attempt: a redelivered attempt rewrites its own.
        let name = format!(
            "{}/{}/{}/{}",
            step.tenant, s.execution_id, s.step.id, s.attempt
        );
        let whole = claim::encode(&result);
        self.results
            .put(name.as_str(), &mut whole.as_slice())
            .await
            .context("storing a large result in the results store")?;
        tracing::info!(bytes = whole.len(), name, "result kept by reference");
        let reference = ObjectRef {
            bucket: streams::RESULTS_BUCKET.to_owned(),
            name,
            size: whole.len() as u64,
        };
        let whole_at = format!(
            "GET /v1/executions/{}/steps/{}/result",
            s.execution_id, s.step.id
        );
        Ok(claim::shrink(result, reference, &whole_at))
    }

    /// Asks the agent's model, then (if it fails and this worker offers it) the agent's
    /// fallback. `Ok(Err(disposition))`: both failed and the step is settled (it waits for the
    /// provider, or failed for good, as the agent's own provider's error says); `Err`: recording
    /// that failed, so the delivery is worth another try.
    async fn call(
        &self,
        step: &ScheduledStep,
        message: &jetstream::Message,
        waited: Option<Waited>,
        prompt: &StepPrompt,
        schema: Option<&serde_json::Value>,
    ) -> anyhow::Result<Result<Answer, Disposition>> {
        let agent = &step.scheduled.agent;
        let own = ModelChoice {
            provider: agent.provider.clone(),
            model: agent.model.clone(),
        };
        let live = Some(live_subject(step));
        let error = match self.ask(agent, live.clone(), &own, prompt, schema).await {
            Ok(answer) => return Ok(Ok(answer)),
            Err(error) => error,
        };
        if let Some(fallback) = &agent.fallback
            && self.providers.get(&fallback.provider).is_ok()
        {
            tracing::warn!(%error, provider = fallback.provider, model = fallback.model, "the agent's provider failed; asking its fallback");
            match self.ask(agent, live, fallback, prompt, schema).await {
                Ok(answer) => {
                    return Ok(Ok(Answer {
                        fallback_reason: Some(error.to_string()),
                        ..answer
                    }));
                }
                Err(also) => tracing::warn!(error = %also, "the fallback failed too"),
            }
        }
        if error.is_retryable() {
            self.defer(step, message, waited, &error).await.map(Err)
        } else {
            self.fail(step, llm_failure(step, &error), false, None)
                .await
                .map(Err)
        }
    }

    /// One call of `choice` with `agent`'s sampling settings, the prompt placed for the model;
    /// a streaming provider's pieces go to `live` (subject, attempt) as the model writes them.
    async fn ask(
        &self,
        agent: &AgentProfile,
        live: Option<(String, u32)>,
        choice: &ModelChoice,
        prompt: &StepPrompt,
        schema: Option<&serde_json::Value>,
    ) -> Result<Answer, LlmError> {
        let provider = self.providers.get(&choice.provider)?;
        let placed = if has_system_role(&choice.model) {
            prompt.clone()
        } else {
            prompt.clone().without_system_role()
        };
        let request = ChatRequest {
            model: choice.model.clone(),
            json_schema: schema.cloned(),
            ..ChatRequest::for_agent(agent, placed)
        };
        let completion = if let Some((subject, attempt)) = live.filter(|_| provider.streams()) {
            let (pieces, forwarded) = live_tokens(self.bus.jetstream().client(), subject, attempt);
            let sink = move |text: &str| {
                // Fails only when the forwarder is gone, and then nobody is listening.
                let _ = pieces.send(text.to_owned());
            };
            let completion = provider.complete_streaming(&request, Some(&sink)).await;
            drop(sink);
            // The pieces go out before the result is recorded: the monitor never sees them late.
            let _ = forwarded.await;
            completion?
        } else {
            provider.complete(&request).await?
        };
        Ok(Answer {
            completion,
            answered_by: choice.clone(),
            fallback_reason: None,
        })
    }

    /// The provider failed transiently: the step waits on a message schedule (holding no
    /// worker and no delivery) until the provider's `Retry-After` or a jittered backoff, unless
    /// that is beyond the retry budget, when the attempt fails with what was tried.
    async fn defer(
        &self,
        step: &ScheduledStep,
        message: &jetstream::Message,
        waited: Option<Waited>,
        error: &LlmError,
    ) -> anyhow::Result<Disposition> {
        let reason = llm_failure(step, error);
        let now = Utc::now();
        let budget = self.retry_budget;
        let Some(wait) = next_wait(waited, error.retry_after(), budget, now, fastrand::f64())
        else {
            let (since, calls) = waited.map_or((now, 1), |w| (w.since, w.deferrals + 1));
            let gave_up = format!(
                "{reason} (gave up after {calls} call(s) over {}s: waiting longer would pass the \
                 retry budget of {}s)",
                (now - since).num_seconds(),
                budget.as_secs()
            );
            return self.fail(step, gave_up, true, None).await;
        };
        let s = &step.scheduled;
        let provider = &s.agent.provider;
        // The schedule before the event: a delivery that finds the event skips itself, so the
        // event must never exist without the schedule that brings the step back.
        self.bus
            .dispatch_later(
                subjects::deferred_step(
                    provider,
                    &step.tenant,
                    s.execution_id,
                    &s.step.id,
                    s.attempt,
                ),
                subjects::dispatched_steps(provider, &step.tenant),
                wait.retry_at,
                &wait.headers(),
                message.payload.clone(),
                &format!("{}/deferred/{}", step.event_id, wait.deferral),
            )
            .await
            .context("scheduling the step's next call")?;
        tracing::warn!(error = reason, retry_at = %wait.retry_at, deferral = wait.deferral, "the provider failed transiently; the step waits");
        self.bus
            .publish(&step.deferred(reason, &wait, now), Append::Any)
            .await
            .context("publishing StepDeferred")?;
        Ok(Disposition::Ack)
    }

    /// Answers a teammate's question as its recipient: the agent's model, else its fallback.
    /// A provider that fails transiently gets the question back later (a delayed redelivery,
    /// at its `Retry-After` or a backoff) until the deliveries run out; then, or for an error
    /// no retry fixes, the answer records why there is none, so the asker never waits for it
    /// past what it must.
    async fn answer(&self, question: &AssignedQuestion, delivered: i64) -> Disposition {
        let q = &question.assigned;
        let span = tracing::Span::current();
        span.record("execution_id", tracing::field::display(q.execution_id));
        span.record("step_id", tracing::field::display(&q.step_id));
        span.record("attempt", q.attempt);
        span.record("delivered", delivered);
        let call = self.calls.register_answer(
            q.execution_id,
            q.step_id.clone(),
            q.attempt,
            question.event_id,
        );
        let answering = async {
            // Another delivery of this question running here answers it first.
            let _turn = call.turn().await;
            match self.answer_stored(question).await {
                Ok(true) => {
                    tracing::info!(question = q.question_id, "question already answered");
                    Disposition::Ack
                }
                Ok(false) => self.give_answer(question, delivered).await,
                Err(error) => {
                    tracing::warn!(%error, "could not read whether the question was answered; it comes back");
                    Disposition::Nak {
                        delay: retry_delay(delivered),
                    }
                }
            }
        };
        call.token
            .run_until_cancelled(answering)
            .await
            .unwrap_or_else(|| {
                // The asking attempt is over (timed out, cancelled): no one waits for the answer.
                tracing::info!("the coordinator stopped the asking attempt; not answering");
                Disposition::Ack
            })
    }

    /// Whether the answer to `question` (to this assignment of it) is in the log already: a
    /// delivery of a question answered before asks the model nothing.
    async fn answer_stored(&self, question: &AssignedQuestion) -> Result<bool, ReadError> {
        let q = &question.assigned;
        let answers = subjects::step(
            &question.tenant,
            q.workflow_id,
            q.execution_id,
            &q.step_id,
            subjects::QUESTION_ANSWERED,
        );
        Ok(self.bus.read_all(&answers).await?.iter().any(|stored| {
            matches!(&stored.envelope.event, Event::QuestionAnswered(answered)
                if answered.assigned_event_id == question.event_id)
        }))
    }

    /// Asks the recipient's model (or its fallback) and records the answer.
    async fn give_answer(&self, question: &AssignedQuestion, delivered: i64) -> Disposition {
        let q = &question.assigned;
        let agent = &q.recipient;
        let prompt = question_prompt(q);
        let mut answered_by = ModelChoice {
            provider: agent.provider.clone(),
            model: agent.model.clone(),
        };
        let mut outcome = self.ask(agent, None, &answered_by, &prompt, None).await;
        if let (Err(error), Some(fallback)) = (&outcome, &agent.fallback)
            && self.providers.get(&fallback.provider).is_ok()
        {
            tracing::warn!(%error, provider = fallback.provider, "the agent's provider failed; asking its fallback");
            if let Ok(answer) = self.ask(agent, None, fallback, &prompt, None).await {
                answered_by = fallback.clone();
                outcome = Ok(answer);
            }
        }
        let now = Utc::now();
        let event = match outcome {
            Ok(Answer {
                completion,
                answered_by,
                ..
            }) => question.answered(
                Ok(completion.text.trim().to_owned()),
                self.usage(&answered_by, completion.usage),
                now,
            ),
            Err(error) if error.is_retryable() && delivered < streams::AGENT_WORKER_MAX_DELIVER => {
                let delay = error
                    .retry_after()
                    .unwrap_or_else(|| retry_delay(delivered))
                    .min(MAX_QUESTION_DELAY);
                tracing::warn!(%error, ?delay, "the provider failed transiently; the question comes back later");
                return Disposition::Nak { delay };
            }
            Err(error) => question.answered(
                Err(format!("agent {}: {error}", agent.name)),
                self.usage(&answered_by, TokenUsage::default()),
                now,
            ),
        };
        match self.record(std::slice::from_ref(&event)).await {
            Ok(_) => {
                tracing::info!(question = q.question_id, "question answered");
                Disposition::Ack
            }
            Err(error) => {
                tracing::warn!(%error, "could not record the answer; the question comes back");
                Disposition::Nak {
                    delay: retry_delay(delivered),
                }
            }
        }
    }

    /// What a call of `model` (by `provider`) that used `tokens` cost, by the price table.
    fn usage(&self, answered_by: &ModelChoice, tokens: TokenUsage) -> CallUsage {
        CallUsage {
            provider: answered_by.provider.clone(),
            model: answered_by.model.clone(),
            tokens,
            cost_usd: self
                .prices
                .get(&answered_by.model)
                .map(|price| price.cost(&tokens)),
        }
    }

    /// Records the attempt failed; `retryable`: whether another attempt may succeed (the
    /// coordinator retries it within `maxRetries` only then).
    async fn fail(
        &self,
        step: &ScheduledStep,
        error: String,
        retryable: bool,
        usage: Option<CallUsage>,
    ) -> anyhow::Result<Disposition> {
        tracing::warn!(error, retryable, "step failed");
        self.record(&[step.failed(error, retryable, usage, Utc::now())])
            .await
            .context("publishing StepFailed")?;
        Ok(Disposition::Ack)
    }
}

/// Where a step attempt's answer streams live, with the attempt.
fn live_subject(step: &ScheduledStep) -> (String, u32) {
    let s = &step.scheduled;
    (
        subjects::live_tokens(&step.tenant, s.execution_id, &s.step.id),
        s.attempt,
    )
}

/// The error names the provider, model and URL; this adds whose call it was.
fn llm_failure(step: &ScheduledStep, error: &LlmError) -> String {
    format!("agent {}: {error}", step.scheduled.agent.name)
}

/// A channel for the pieces of an answer and the task that publishes them, in order, on
/// `subject` (core NATS: live, outside the log); the task ends when the sender is dropped.
fn live_tokens(
    client: async_nats::Client,
    subject: String,
    attempt: u32,
) -> (
    tokio::sync::mpsc::UnboundedSender<String>,
    tokio::task::JoinHandle<()>,
) {
    let (pieces, mut received) = tokio::sync::mpsc::unbounded_channel::<String>();
    let forwarded = tokio::spawn(async move {
        let mut index = 0;
        while let Some(text) = received.recv().await {
            let delta = TokenDelta {
                attempt,
                index,
                text,
            };
            let body = serde_json::to_vec(&delta).unwrap_or_default();
            if let Err(error) = client.publish(subject.clone(), body.into()).await {
                tracing::debug!(%error, "could not stream a piece of the answer");
            }
            index += 1;
        }
    });
    (pieces, forwarded)
}

/// Runs `work` while telling JetStream every [`PROGRESS_INTERVAL`] that the message is still
/// being worked on, so that a long LLM call, or a wait for a free slot, does not get the step
/// redelivered elsewhere.
pub(crate) async fn while_in_progress<F: Future>(
    message: &jetstream::Message,
    work: F,
) -> F::Output {
    let mut progress = tokio::time::interval_at(
        tokio::time::Instant::now() + PROGRESS_INTERVAL,
        PROGRESS_INTERVAL,
    );
    tokio::pin!(work);
    loop {
        tokio::select! {
            output = &mut work => return output,
            _ = progress.tick() => {
                if let Err(error) = message.ack_with(AckKind::Progress).await {
                    tracing::warn!(%error, "could not extend the step's ack deadline");
                }
            }
        }
    }
}

async fn settle(message: &jetstream::Message, disposition: Disposition) {
    let acked = match disposition {
        Disposition::Ack => message.ack().await,
        Disposition::Nak { delay } => message.ack_with(AckKind::Nak(Some(delay))).await,
        Disposition::Terminate(reason) => {
            bus::terminate(message, &reason).await;
            Ok(())
        }
    };
    if let Err(error) = acked {
        // The step's events are stored; a redelivery will find them and skip.
        tracing::warn!(%error, "could not acknowledge the step message");
    }
}

-- Team metrics and alerts: the facts the collaboration metrics and agent performance are counted
-- from (the API sums them; the scores' definitions are in the coordinator's
-- domain/performance.rs), and the alerts raised on agents.

-- One row per task: a step of a run handed to an agent (StepScheduled, not a review), kept from
-- its first handout. completed_at is the agent's first completion of it (StepCompleted, the
-- attempt's first outcome); escalated_at the first escalation naming a failed attempt of the
-- agent's (StepEscalated, not an approval).
CREATE TABLE agent_tasks (
    tenant_id        text             NOT NULL,
    execution_id     uuid             NOT NULL,
    step_id          text             NOT NULL,
    agent_id         uuid             NOT NULL,
    workflow_id      uuid             NOT NULL,
    -- the step's type (analysis, implementation, review, ...)
    step_type        text             NOT NULL,
    -- minutes: the step's timeoutMinutes (a step declares no other estimate); NULL without one
    estimate_minutes double precision,
    handed_out_at    timestamptz      NOT NULL,
    completed_at     timestamptz,
    escalated_at     timestamptz,
    -- stream sequence of the first handout
    event_sequence   bigint           NOT NULL,
    PRIMARY KEY (tenant_id, execution_id, step_id, agent_id)
);
CREATE INDEX agent_tasks_by_workflow ON agent_tasks (tenant_id, workflow_id);
CREATE INDEX agent_tasks_by_agent ON agent_tasks (tenant_id, agent_id);

-- The seed's execution_history (ExecutionRecord: timestamp, stepId, agentId, action, result,
-- duration), one row per record: an attempt's outcome (completed, failed, timed_out, and a
-- review's approved or changes_requested), a step escalated, skipped, or resolved by a person.
-- An attempt has one outcome, its first: a report after its time-out is not recorded.
CREATE TABLE execution_history (
    event_id        uuid        PRIMARY KEY,
    tenant_id       text        NOT NULL,
    workflow_id     uuid        NOT NULL,
    execution_id    uuid        NOT NULL,
    step_id         text        NOT NULL,
    step_name       text        NOT NULL,
    -- the attempt (0 for a skipped step, which had none)
    attempt         integer     NOT NULL,
    -- who acted: the attempt's agent (the reviewer for a review), the agent whose failed
    -- attempt escalated the step; NULL for a person or the coordinator
    agent_id        uuid,
    -- a review's author: whose work was approved or sent back
    author_agent_id uuid,
    action          text        NOT NULL,
    -- the summary, the error, the reviewer's feedback, the escalation's reason, ...
    result          text        NOT NULL,
    -- milliseconds the attempt took, where the event says (completed, timed out)
    duration_ms     bigint,
    recorded_at     timestamptz NOT NULL,
    event_sequence  bigint      NOT NULL
);
CREATE UNIQUE INDEX execution_history_one_outcome_per_attempt
    ON execution_history (tenant_id, execution_id, step_id, attempt)
    WHERE action IN ('completed', 'failed', 'timed_out', 'approved', 'changes_requested');
CREATE INDEX execution_history_by_execution ON execution_history (tenant_id, execution_id, event_sequence);
CREATE INDEX execution_history_by_workflow ON execution_history (tenant_id, workflow_id, event_sequence);
CREATE INDEX execution_history_by_agent ON execution_history (tenant_id, agent_id);
CREATE INDEX execution_history_by_author ON execution_history (tenant_id, author_agent_id)
    WHERE author_agent_id IS NOT NULL;

-- Seconds from an execution's start to its end (completed, failed or cancelled); NULL while it
-- runs. Executions projected before this column stay NULL until the next rebuild.
ALTER TABLE workflow_executions ADD COLUMN actual_duration integer;

-- One row per alert (AlertRaised): an agent's performance crossed one of seed 002's alert
-- conditions. One per agent, condition (and task type) and crossing.
CREATE TABLE alerts (
    id             uuid             PRIMARY KEY,
    tenant_id      text             NOT NULL,
    agent_id       uuid             NOT NULL,
    -- failure_rate, slow_completion, repeated_escalations, low_quality
    condition      text             NOT NULL,
    task_type      text,
    crossing       integer          NOT NULL,
    value          double precision NOT NULL,
    threshold      double precision NOT NULL,
    sample         bigint           NOT NULL,
    message        text             NOT NULL,
    workflow_id    uuid             NOT NULL,
    execution_id   uuid             NOT NULL,
    step_id        text             NOT NULL,
    raised_at      timestamptz      NOT NULL,
    event_sequence bigint           NOT NULL
);
CREATE UNIQUE INDEX alerts_one_per_crossing
    ON alerts (tenant_id, agent_id, condition, coalesce(task_type, ''), crossing);
CREATE INDEX alerts_newest ON alerts (tenant_id, event_sequence DESC);

-- What the metrics count, per agent and per run: questions put to an agent, knowledge and
-- handoffs of a run or to an agent.
CREATE INDEX agent_interactions_questions_to ON agent_interactions (tenant_id, to_agent_id)
    WHERE interaction_type = 'question' AND requires_response;
CREATE INDEX collaboration_knowledge_by_execution ON collaboration_knowledge (tenant_id, execution_id);
CREATE INDEX task_handoffs_to ON task_handoffs (tenant_id, to_agent_id);

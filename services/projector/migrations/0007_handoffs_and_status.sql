-- Agents that collaborate: the seed's TaskHandoff and AgentStatus as read models.

-- One row per handoff (TaskHandedOff): the agent that completed work a step depends on hands
-- the step to the agent its first attempt is assigned to. Keyed by what the handoff is about, so
-- a handoff recorded again (a coordinator decision taken again after part of it was stored)
-- replaces the earlier row instead of adding one; event_id is the event the row comes from.
CREATE TABLE task_handoffs (
    tenant_id             text             NOT NULL,
    execution_id          uuid             NOT NULL,
    task_id               text             NOT NULL,
    from_agent_id         uuid             NOT NULL,
    event_id              uuid             NOT NULL,
    workflow_id           uuid             NOT NULL,
    to_agent_id           uuid             NOT NULL,
    task_name             text             NOT NULL,
    completed_work        text             NOT NULL,
    remaining_work        text             NOT NULL,
    constraints           jsonb            NOT NULL DEFAULT '[]',
    dependencies          jsonb            NOT NULL DEFAULT '[]',
    success_criteria      text             NOT NULL,
    -- minutes (the step's timeoutMinutes); NULL when the step has none
    estimated_time        double precision,
    escalation_conditions jsonb            NOT NULL DEFAULT '[]',
    created_at            timestamptz      NOT NULL,
    -- stream sequence of the event: the list's order, and the newer of two records wins
    event_sequence        bigint           NOT NULL,
    PRIMARY KEY (tenant_id, execution_id, task_id, from_agent_id)
);
CREATE INDEX task_handoffs_execution ON task_handoffs (tenant_id, execution_id, event_sequence);

-- One row per agent: its latest status, projected from the events of its step attempts
-- (started, waiting for its provider, completed, reviewed, failed, timed out) and from the
-- statuses it reports itself (AgentStatusReported). A status older than the row's
-- (event_sequence) never replaces it.
CREATE TABLE agent_status (
    tenant_id            text        NOT NULL,
    agent_id             uuid        NOT NULL,
    -- working, blocked, completed or failed (the API says idle for an agent with no row)
    state                text        NOT NULL,
    workflow_id          uuid,
    execution_id         uuid,
    step_id              text,
    -- the step's name (the seed's currentTask)
    current_task         text,
    attempt              integer,
    -- percent, 0 to 100
    progress             smallint    NOT NULL CHECK (progress BETWEEN 0 AND 100),
    estimated_completion timestamptz,
    blockers             jsonb       NOT NULL DEFAULT '[]',
    -- [{fromAgent?, reason, urgency: low|medium|high|critical}]
    requested_support    jsonb       NOT NULL DEFAULT '[]',
    updated_at           timestamptz NOT NULL,
    event_id             uuid        NOT NULL,
    event_sequence       bigint      NOT NULL,
    PRIMARY KEY (tenant_id, agent_id)
);

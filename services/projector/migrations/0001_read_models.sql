-- Cadre read models: Postgres projections of the event log (the source of truth).
--
-- Names follow the seed schema; types are Postgres' own (uuid, jsonb, timestamptz). Every row
-- carries tenant_id. There are no foreign keys: integrity is enforced where events are decided,
-- and a projection must accept events in log order and be truncated and rebuilt table by table.

CREATE TABLE agents (
    id               uuid PRIMARY KEY,
    tenant_id        text        NOT NULL,
    name             text        NOT NULL,
    role             text        NOT NULL,
    backstory        text        NOT NULL,
    skills           jsonb       NOT NULL DEFAULT '[]',
    provider         text        NOT NULL,
    model            text        NOT NULL,
    model_parameters jsonb       NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);
CREATE INDEX agents_tenant ON agents (tenant_id, created_at);

CREATE TABLE collaboration_workflows (
    id                    uuid PRIMARY KEY,
    tenant_id             text        NOT NULL,
    name                  text        NOT NULL,
    description           text        NOT NULL,
    workflow_type         text        NOT NULL,
    configuration         jsonb       NOT NULL,
    participating_agents  jsonb       NOT NULL,
    coordinator_agent_id  uuid,
    -- draft until its first execution; then the status of its latest execution's outcome.
    status                text        NOT NULL DEFAULT 'draft',
    total_steps           integer     NOT NULL,
    execution_count       integer     NOT NULL DEFAULT 0,
    started_at            timestamptz,
    completed_at          timestamptz,
    actual_duration       integer,
    created_at            timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL
);
CREATE INDEX collaboration_workflows_tenant ON collaboration_workflows (tenant_id, created_at);

CREATE TABLE workflow_executions (
    id                uuid PRIMARY KEY,
    tenant_id         text        NOT NULL,
    workflow_id       uuid        NOT NULL,
    execution_number  integer     NOT NULL,
    trigger_reason    text        NOT NULL,
    triggered_by      text,
    current_step_id   text,
    execution_context jsonb       NOT NULL DEFAULT '{}',
    -- step id -> { status, attempt, agentId, summary, output, insights, decisions, questions, tokens, error, ... }
    step_results      jsonb       NOT NULL DEFAULT '{}',
    -- agent ids working on a step right now
    active_agents     jsonb       NOT NULL DEFAULT '[]',
    -- step id -> { agentId, reason, attempt }
    agent_assignments jsonb       NOT NULL DEFAULT '{}',
    status            text        NOT NULL,
    error_message     text,
    final_output      jsonb,
    started_at        timestamptz NOT NULL,
    completed_at      timestamptz,
    updated_at        timestamptz NOT NULL,
    UNIQUE (workflow_id, execution_number)
);
CREATE INDEX workflow_executions_workflow ON workflow_executions (tenant_id, workflow_id, execution_number DESC);

CREATE TABLE agent_interactions (
    id                    uuid PRIMARY KEY,
    tenant_id             text        NOT NULL,
    workflow_execution_id uuid        NOT NULL,
    -- NULL when Cadre's coordinator service itself acted (no coordinator agent in the workflow)
    from_agent_id         uuid,
    to_agent_id           uuid,
    interaction_type      text        NOT NULL,
    message               text        NOT NULL,
    context_data          jsonb       NOT NULL DEFAULT '{}',
    related_step_id       text,
    related_task_id       text,
    requires_response     boolean     NOT NULL DEFAULT false,
    response_deadline     timestamptz,
    response_received     boolean     NOT NULL DEFAULT false,
    response_message      text,
    response_data         jsonb,
    created_at            timestamptz NOT NULL,
    responded_at          timestamptz,
    -- stream sequence of the event the row came from: the interaction log's order
    event_sequence        bigint      NOT NULL
);
CREATE INDEX agent_interactions_execution ON agent_interactions (tenant_id, workflow_execution_id, event_sequence);

CREATE TABLE collaboration_knowledge (
    id                  uuid PRIMARY KEY,
    tenant_id           text        NOT NULL,
    workflow_id         uuid        NOT NULL,
    execution_id        uuid        NOT NULL,
    step_id             text        NOT NULL,
    title               text        NOT NULL,
    content             text        NOT NULL,
    knowledge_type      text        NOT NULL,
    created_by_agent_id uuid        NOT NULL,
    validated_by_agents jsonb       NOT NULL DEFAULT '[]',
    relevance_score     double precision NOT NULL DEFAULT 1.0,
    usage_count         integer     NOT NULL DEFAULT 0,
    tags                jsonb       NOT NULL DEFAULT '[]',
    is_active           boolean     NOT NULL DEFAULT true,
    superseded_by       uuid,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    event_sequence      bigint      NOT NULL
);
-- What a worker asks before each step: the workflow's most relevant active knowledge.
CREATE INDEX collaboration_knowledge_active
    ON collaboration_knowledge (tenant_id, workflow_id, relevance_score DESC, event_sequence DESC)
    WHERE is_active;

-- Every event id the projection has applied: a copy of an event re-published after JetStream's
-- duplicate window is recognised here and changes nothing.
CREATE TABLE projected_events (
    event_id       uuid PRIMARY KEY,
    tenant_id      text   NOT NULL,
    event_sequence bigint NOT NULL
);

-- Messages on the bus that are not events this build understands, with the reason.
CREATE TABLE rejected_events (
    stream_sequence bigint PRIMARY KEY,
    subject         text        NOT NULL,
    reason          text        NOT NULL,
    payload         bytea       NOT NULL,
    rejected_at     timestamptz NOT NULL DEFAULT now()
);

-- How far the projection has read: committed in the same transaction as the rows it covers.
CREATE TABLE projection_checkpoints (
    projection      text PRIMARY KEY,
    stream_sequence bigint      NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
INSERT INTO projection_checkpoints (projection, stream_sequence) VALUES ('read_models', 0);

-- One row per completed step attempt: the tokens its LLM calls used and what they cost (in US
-- dollars, from the workers' price table; NULL when the model has no price). The read API sums
-- them per step, agent, execution and workflow.
CREATE TABLE token_usage (
    event_id          uuid             PRIMARY KEY,
    tenant_id         text             NOT NULL,
    workflow_id       uuid             NOT NULL,
    execution_id      uuid             NOT NULL,
    step_id           text             NOT NULL,
    attempt           integer          NOT NULL,
    agent_id          uuid             NOT NULL,
    provider          text             NOT NULL,
    model             text             NOT NULL,
    prompt_tokens     bigint           NOT NULL,
    completion_tokens bigint           NOT NULL,
    total_tokens      bigint           NOT NULL,
    cost_usd          double precision,
    recorded_at       timestamptz      NOT NULL
);
CREATE INDEX token_usage_by_execution ON token_usage (tenant_id, execution_id);
CREATE INDEX token_usage_by_workflow ON token_usage (tenant_id, workflow_id);
CREATE INDEX token_usage_by_agent ON token_usage (tenant_id, agent_id);

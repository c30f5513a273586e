-- What waits for a person: one row per escalation a person resolves (a step past its
-- escalation ladder's automatic rungs, rung person, or an approval step, from StepEscalated
-- events that carry an escalation id; or a whole run past escalation.afterMinutes, from
-- ExecutionEscalated, with no step). The other rungs are visible in step_results and the
-- interaction log only.
--
-- A row is open until a person resolves it (EscalationResolved: resolved, with their action)
-- or its execution ends first (closed, closed_reason saying how the execution ended).
-- workflow_executions.step_results may now have status escalated (waiting for a person),
-- escalating (waiting for the attempt a rung or a person chose) and aborted (a person aborted
-- the run, or rejected an approval).
CREATE TABLE escalations (
    -- the EscalationId: derived from execution, step and attempt
    id            uuid        PRIMARY KEY,
    tenant_id     text        NOT NULL,
    execution_id  uuid        NOT NULL,
    workflow_id   uuid        NOT NULL,
    -- failure (a step past its ladder), approval (an approval step) or execution (the run,
    -- past escalation.afterMinutes: no step)
    kind          text        NOT NULL CHECK (kind IN ('failure', 'approval', 'execution')),
    step_id       text,
    step_name     text,
    -- the attempt that failed; for an approval, the attempt the approval is; 0 for a run
    attempt       integer     NOT NULL,
    approval      boolean     NOT NULL,
    -- open, resolved or closed
    status        text        NOT NULL CHECK (status IN ('open', 'resolved', 'closed')),
    reason        text        NOT NULL,
    -- {failures: [{attempt, agentId, error}], tried: [rung], outputs: {stepId: summary}}
    context       jsonb       NOT NULL,
    -- when the step was escalated (the event's time)
    created_at    timestamptz NOT NULL,
    -- resolved only: when, the action (retry, reassign, skip, provideOutput, abort, approve,
    -- reject, continue), the whole resolution ({action, ...}), who and their comment
    resolved_at   timestamptz,
    action        text,
    resolution    jsonb,
    resolved_by   text,
    comment       text,
    -- closed only: when, and why ('execution completed', 'execution failed',
    -- 'execution cancelled')
    closed_at     timestamptz,
    closed_reason text
);
-- What waits for a person, oldest first.
CREATE INDEX escalations_open ON escalations (tenant_id, created_at, id) WHERE status = 'open';
CREATE INDEX escalations_tenant ON escalations (tenant_id, created_at, id);
CREATE INDEX escalations_execution ON escalations (tenant_id, execution_id, created_at, id);
CREATE INDEX escalations_workflow ON escalations (tenant_id, workflow_id, created_at, id);

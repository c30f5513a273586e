-- Each step of a run gets its own row (execution_steps), and workflow_executions becomes a view
-- that assembles the same columns as before from it, so readers see no change.
--
-- Why: the projector rewrote a busy execution's whole row (its step_results jsonb, compressed
-- and stored out of line) at every batch that moved one of its steps: 35% of Postgres time and
-- most of the projection lag in `make bench`. A step's move now writes that step's small row;
-- the execution's own row changes only when its status does (pause, resume, escalation, end).
--
-- A projector of the previous release fails its batches on the new schema (they write
-- workflow_executions' old columns) and retries them until it is replaced; it applies nothing
-- meanwhile, and the new projector starts from the checkpoint both share. Coordinators of the
-- previous release read the view as they read the table.
--
-- Runs projected before this migration keep the order and times they were shown with; their
-- step rows differ from what a replay writes (the sequences of their events were not kept), so
-- compare such a database with a rebuild only after `cadre-projector rebuild`. The dropped
-- columns' space is reclaimed by the rows' next update or a VACUUM FULL.

LOCK TABLE workflow_executions IN ACCESS EXCLUSIVE MODE;

ALTER TABLE workflow_executions RENAME TO executions;
ALTER INDEX workflow_executions_pkey RENAME TO executions_pkey;

-- One row per step of a run that an event has named (a step not reached yet has none). No foreign
-- key: its check would lock the run's row at every write; the projector writes steps only of
-- runs it has.
CREATE TABLE execution_steps (
    execution_id       uuid        NOT NULL,
    step_id            text        NOT NULL,
    -- The step's latest attempt: { status, attempt, agentId, summary, output, ... }, as
    -- step_results held it.
    entry              jsonb       NOT NULL,
    -- Its latest assignment: { agentId, agentName, provider, reason, attempt }.
    assignment         jsonb,
    -- The log sequence of its latest scheduling, and of the first event about it: the steps
    -- under way (active_steps) are in the order of the first, or of the second for a step
    -- never scheduled (an approval waiting for a person).
    scheduled_sequence bigint,
    first_sequence     bigint      NOT NULL,
    -- When the last event about this step was written.
    updated_at         timestamptz NOT NULL,
    PRIMARY KEY (execution_id, step_id)
) WITH (fillfactor = 80);
-- Room on each page lets a step's next move be a HOT update (only the key is indexed).
ALTER TABLE execution_steps ALTER COLUMN entry SET COMPRESSION lz4;

-- Steps under way keep the order they were listed in (the sequences of their events are not
-- recorded in the old columns): negative positions, before every later event's sequence.
INSERT INTO execution_steps (execution_id, step_id, entry, assignment, first_sequence,
                             updated_at)
SELECT e.id, s.key, s.value, e.agent_assignments -> s.key, coalesce(a.position, 0), e.updated_at
FROM executions e
CROSS JOIN LATERAL jsonb_each(e.step_results) AS s
LEFT JOIN LATERAL (
    SELECT w.position - jsonb_array_length(e.active_steps) - 1 AS position
    FROM jsonb_array_elements_text(e.active_steps) WITH ORDINALITY AS w(step, position)
    WHERE w.step = s.key
) a ON true;

ALTER TABLE executions
    DROP COLUMN step_results,
    DROP COLUMN active_steps,
    DROP COLUMN current_step_id,
    DROP COLUMN active_agents,
    DROP COLUMN agent_assignments;

-- workflow_executions as before: step_results (step id -> entry), agent_assignments (step id
-- -> assignment), active_steps (the steps scheduled, running or waiting, in the order of their
-- latest scheduling, or of their first event if never scheduled), current_step_id (the last of
-- them), active_agents (the agents of the running ones); the last three are empty once the run
-- ended. updated_at is the latest write about the run or any of its steps (the latest by the
-- writers' clocks, where it was the last in the log).
CREATE VIEW workflow_executions AS
SELECT e.id, e.tenant_id, e.workflow_id, e.execution_number, e.trigger_reason, e.triggered_by,
       CASE WHEN e.status IN ('running', 'paused', 'escalated') THEN s.active_steps ->> -1 END
           AS current_step_id,
       e.execution_context,
       coalesce(s.step_results, '{}') AS step_results,
       CASE WHEN e.status IN ('running', 'paused', 'escalated')
            THEN coalesce(s.active_agents, '[]') ELSE '[]' END AS active_agents,
       coalesce(s.agent_assignments, '{}') AS agent_assignments,
       e.status, e.error_message, e.final_output, e.started_at, e.completed_at,
       greatest(e.updated_at, s.updated_at) AS updated_at,
       e.failure_cause,
       CASE WHEN e.status IN ('running', 'paused', 'escalated')
            THEN coalesce(s.active_steps, '[]') ELSE '[]' END AS active_steps,
       e.actual_duration
FROM executions e
LEFT JOIN LATERAL (
    SELECT jsonb_object_agg(step_id, entry) AS step_results,
           jsonb_object_agg(step_id, assignment) FILTER (WHERE assignment IS NOT NULL)
               AS agent_assignments,
           jsonb_agg(step_id ORDER BY coalesce(scheduled_sequence, first_sequence), step_id) FILTER (
               WHERE entry ->> 'status' IN ('scheduled', 'running', 'waiting',
                                            'awaiting_answers', 'retry_waiting', 'escalated',
                                            'escalating')) AS active_steps,
           jsonb_agg(DISTINCT entry -> 'agentId') FILTER (WHERE entry ->> 'status' = 'running')
               AS active_agents,
           max(updated_at) AS updated_at
    FROM execution_steps
    WHERE execution_id = e.id
) s ON true;

-- The planner's statistics for the new table, and for the old one rewritten.
ANALYZE executions, execution_steps;

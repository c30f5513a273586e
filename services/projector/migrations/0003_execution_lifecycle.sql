-- Executions that time out, pause, resume and are cancelled; workflows that pause and resume.
--
-- workflow_executions.status is now running, paused, completed, failed or cancelled; an ended
-- execution (completed, failed, cancelled) never changes status again.
-- collaboration_workflows.status may now be paused (until resumed, then active) or cancelled (its
-- latest execution was); while paused, executions ending do not change it.
-- A step's entry in step_results may now have status timed_out, and records startedAt (when a
-- worker began the attempt) and completedAt (when the attempt ended, whatever the outcome).

-- Why the execution failed, as the event's FailureCause ({"kind": "stepFailed", "stepId": ...}).
-- Executions projected before this column stay NULL until the next rebuild.
ALTER TABLE workflow_executions ADD COLUMN failure_cause jsonb;

-- Every step scheduled or running, in the order they were last scheduled; empty once the
-- execution ended. current_step_id is its last element (the most recently scheduled).
ALTER TABLE workflow_executions ADD COLUMN active_steps jsonb NOT NULL DEFAULT '[]';

-- Executions still going when this runs: their active steps from their step results (the order
-- they were scheduled in is not recorded there; the step id orders them).
UPDATE workflow_executions SET active_steps = coalesce((
    SELECT jsonb_agg(s.key ORDER BY s.key)
    FROM jsonb_each(step_results) AS s
    WHERE s.value ->> 'status' IN ('scheduled', 'running')), '[]')
WHERE status = 'running';
UPDATE workflow_executions SET current_step_id = CASE
    WHEN active_steps ? current_step_id THEN current_step_id
    ELSE active_steps ->> -1 END
WHERE status = 'running';
-- An ended execution has no current step and no agent at work on it.
UPDATE workflow_executions SET current_step_id = NULL, active_agents = '[]'
WHERE status <> 'running';

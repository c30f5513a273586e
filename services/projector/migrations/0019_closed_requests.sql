-- A question or an escalation of a run that ended (or of a step a re-plan replaced) can no
-- longer be answered: the projector now closes its interaction (`response_received` false,
-- `response_message` "execution cancelled", `response_data.closed`), where before it stayed
-- waiting for a response forever.

-- The requests still waiting, by run: what each run's end looks up (nearly always none), kept
-- small by holding only the rows that wait.
CREATE INDEX agent_interactions_awaiting
    ON agent_interactions (tenant_id, workflow_execution_id, event_sequence)
    WHERE requires_response AND responded_at IS NULL;

-- Runs that ended before this release, as a replay now leaves them. (Steps replaced by a
-- re-plan before it are marked `replaced` by a rebuild: `cadre-projector rebuild`.)
UPDATE agent_interactions i SET response_received = false,
    response_message = 'execution ' || e.status,
    response_data = coalesce(i.response_data, '{}') || jsonb_build_object('closed', true),
    responded_at = e.completed_at
FROM executions e
WHERE e.id = i.workflow_execution_id AND e.tenant_id = i.tenant_id
  AND e.status IN ('completed', 'failed', 'cancelled') AND e.completed_at IS NOT NULL
  AND i.requires_response AND i.responded_at IS NULL;

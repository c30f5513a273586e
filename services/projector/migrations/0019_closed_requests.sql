-- A question or an escalation of a run that ended (or of a step a re-plan replaced) can no
-- longer get an answer its run would take: the projector now closes its interaction
-- (`response_received` false, `response_message` "execution <status>" or "execution
-- re-planned", `response_data.closed`), where before it stayed waiting for a response forever.
-- Runs that ended before this release keep their requests waiting, and their steps replaced by
-- a re-plan their last status, until the read models are rebuilt (`cadre-projector rebuild`):
-- what a replay gives depends on where in the log each request, re-plan and end came.

-- The requests still waiting, by run: what each run's end looks up (nearly always none), kept
-- small by holding only the rows that wait.
CREATE INDEX agent_interactions_awaiting
    ON agent_interactions (tenant_id, workflow_execution_id, event_sequence)
    WHERE requires_response AND responded_at IS NULL;

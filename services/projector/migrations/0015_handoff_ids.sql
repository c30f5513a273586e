-- A handoff's own id. Handoffs now travel in their step's StepScheduled, one per handing agent,
-- so one event may record several and event_id (the event a row comes from) no longer names
-- one. A handoff recorded as an event of its own (TaskHandedOff, in older logs) keeps that
-- event's id.
ALTER TABLE task_handoffs ADD COLUMN id uuid;
UPDATE task_handoffs SET id = event_id;
ALTER TABLE task_handoffs ALTER COLUMN id SET NOT NULL;

-- A row's place among the rows one event gives: a step's completion carries what its agent told
-- the team (its concerns, the knowledge it shared) in the order told, and its own timeline entry
-- comes after them. Lists order by (event_sequence, event_position, id), so those rows keep the
-- order of the log that stored each as an event of its own; rows of an event that gives one
-- keep 0.
ALTER TABLE agent_interactions ADD COLUMN event_position smallint NOT NULL DEFAULT 0;
ALTER TABLE collaboration_knowledge ADD COLUMN event_position smallint NOT NULL DEFAULT 0;

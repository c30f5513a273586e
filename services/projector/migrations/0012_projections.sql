-- The read models are folded as projections (runs, interactions, knowledge, catalog; see
-- cadre_proto::streams::PROJECTIONS), each with its own checkpoint and its own index of the
-- event ids it applied, so that each commits on its own and replicas can share them.

-- A projector of the previous release may still be running: keep it from committing while the
-- index and the checkpoint are copied (its batches wait, then fail on the new schema), so that
-- both copies cover exactly the same events. Its own order of locking, so no deadlock.
LOCK TABLE projected_events, projection_checkpoints IN SHARE ROW EXCLUSIVE MODE;

-- Every event applied so far was applied by every projection.
CREATE TABLE projected_events_by_projection (
    projection     text   NOT NULL,
    event_id       uuid   NOT NULL,
    tenant_id      text   NOT NULL,
    event_sequence bigint NOT NULL,
    PRIMARY KEY (projection, event_id)
);
INSERT INTO projected_events_by_projection (projection, event_id, tenant_id, event_sequence)
SELECT p.name, e.event_id, e.tenant_id, e.event_sequence
FROM projected_events e
CROSS JOIN unnest(ARRAY['runs', 'interactions', 'knowledge', 'catalog']) AS p(name);
DROP TABLE projected_events;
ALTER TABLE projected_events_by_projection RENAME TO projected_events;
ALTER TABLE projected_events RENAME CONSTRAINT projected_events_by_projection_pkey
    TO projected_events_pkey;

-- Each starts where the single projection had got to.
INSERT INTO projection_checkpoints (projection, stream_sequence, updated_at)
SELECT p.name, c.stream_sequence, c.updated_at
FROM projection_checkpoints c
CROSS JOIN unnest(ARRAY['runs', 'interactions', 'knowledge', 'catalog']) AS p(name)
WHERE c.projection = 'read_models';
DELETE FROM projection_checkpoints WHERE projection = 'read_models';

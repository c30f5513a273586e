-- Knowledge chosen for a step by what the step is about.
--
-- A worker ranks the workflow's active knowledge by full-text match against the step's text
-- (name, description, instructions, expected output, required skills), then by relevance score
-- and recency. usage_count, validated_by_agents, superseded_by and is_active already exist
-- (0001); from now on they change: a step's completion counts each item its prompt carried,
-- an agent confirming an item is added to validated_by_agents once, and a superseded item
-- becomes inactive and names its successor.

-- The `english` configuration rather than `simple`: prompts and answers are English prose, and
-- the worker's query ORs the step's words together, so stemming ("caching" finds "cache") and
-- dropping stop words (without it "the" alone would match every item) matter more than exact
-- identifiers. Title weighs most, then tags, then content. jsonb_to_tsvector with an explicit
-- configuration is immutable, as a generated column requires.
ALTER TABLE collaboration_knowledge ADD COLUMN search tsvector GENERATED ALWAYS AS (
    setweight(to_tsvector('english', title), 'A')
    || setweight(jsonb_to_tsvector('english', tags, '["string"]'), 'B')
    || setweight(to_tsvector('english', content), 'C')
) STORED;

CREATE INDEX collaboration_knowledge_search ON collaboration_knowledge USING GIN (search);

-- The worker ranks only a workflow's newest active items: this finds them without a sort.
CREATE INDEX collaboration_knowledge_recent
    ON collaboration_knowledge (tenant_id, workflow_id, event_sequence DESC)
    WHERE is_active;

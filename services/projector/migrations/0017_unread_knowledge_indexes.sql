-- Two indexes of collaboration_knowledge that no query reads, kept up to date by every item a
-- step shares: the GIN index on `search` (the worker ranks only a workflow's newest active items,
-- found through collaboration_knowledge_recent, and reads `search` from those rows; nothing
-- searches the whole table) and the index by relevance score (the order of the seed's query,
-- before ranking by the step's text). The GIN index was the table's largest, as large as the
-- projections' event index, and its updates a good part of the cost of each item's insert.
DROP INDEX IF EXISTS collaboration_knowledge_search;
DROP INDEX IF EXISTS collaboration_knowledge_active;

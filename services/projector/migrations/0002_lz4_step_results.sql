-- An execution's step_results is rewritten whenever one of its steps moves; it is compressed
-- each time it exceeds the TOAST threshold. lz4 compresses several times faster than the
-- default pglz, which showed in the projector's batches (PostgreSQL 14+).
ALTER TABLE workflow_executions ALTER COLUMN step_results SET COMPRESSION lz4;
ALTER TABLE workflow_executions ALTER COLUMN final_output SET COMPRESSION lz4;

-- The API's lists are paged by keyset: each is read in an order of columns that never change
-- (its sort key), and a page starts after the sort key of the previous page's last row. These
-- indexes let each page start with one index descent, however deep into the list it is.

-- Agents oldest first, workflows newest first (a B-tree reads both ways): (created_at, id).
DROP INDEX agents_tenant;
CREATE INDEX agents_tenant ON agents (tenant_id, created_at, id);
DROP INDEX collaboration_workflows_tenant;
CREATE INDEX collaboration_workflows_tenant ON collaboration_workflows (tenant_id, created_at, id);

-- Every run of the tenant, or of one workflow, newest first: (started_at, id). A workflow's own
-- list keeps execution_number (workflow_executions_workflow).
CREATE INDEX workflow_executions_started ON workflow_executions (tenant_id, started_at, id);
CREATE INDEX workflow_executions_workflow_started
    ON workflow_executions (tenant_id, workflow_id, started_at, id);

-- A workflow's knowledge in the order shared, inactive items included (the index of 0004 has
-- only the active ones).
CREATE INDEX collaboration_knowledge_workflow
    ON collaboration_knowledge (tenant_id, workflow_id, event_sequence);

-- Templates: system ones first, then by first registration. usage_count changes as runs start,
-- so it no longer orders the list.
DROP INDEX workflow_templates_usage;
CREATE INDEX workflow_templates_listed
    ON workflow_templates (tenant_id, (NOT is_system_template), created_at, id);

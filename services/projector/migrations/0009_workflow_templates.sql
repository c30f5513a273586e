-- Workflow templates (the seed's workflow_templates): reusable workflows whose steps name roles,
-- one row per template from its TemplateRegistered events (the latest registration's
-- definition; a system template is registered again only with a higher revision). And which
-- template each workflow was created from.
--
-- The usage figures come from real runs, never from the template's own events:
-- workflow_count counts the workflows created from the template (WorkflowCreated with its
-- templateId), usage_count the runs of those workflows (ExecutionStarted), ended_runs those
-- that ended (ExecutionCompleted, ExecutionFailed, ExecutionCancelled) and completed_runs those
-- that completed. success_rate is the percentage of ended runs that completed (the seed's
-- "percentage of successful executions"), 0 while none has ended.
CREATE TABLE workflow_templates (
    id                      uuid        PRIMARY KEY,
    tenant_id               text        NOT NULL,
    name                    text        NOT NULL,
    description             text        NOT NULL,
    -- the seed's TemplateCategory
    category                text        NOT NULL
        CHECK (category IN ('development', 'review', 'analysis', 'research', 'testing')),
    -- the workflowType of the workflows created from it
    workflow_type           text        NOT NULL,
    -- the configuration of the workflows created from it, roles not yet mapped to agents
    template_definition     jsonb       NOT NULL,
    -- ["role", ...]: each mapped to an agent when a workflow is created from the template
    required_agent_roles    jsonb       NOT NULL,
    recommended_agent_count integer     NOT NULL,
    is_system_template      boolean     NOT NULL,
    -- who registered it, as they said (there are no user accounts yet)
    created_by              text,
    revision                integer     NOT NULL,
    workflow_count          integer     NOT NULL DEFAULT 0,
    usage_count             integer     NOT NULL DEFAULT 0,
    completed_runs          integer     NOT NULL DEFAULT 0,
    ended_runs              integer     NOT NULL DEFAULT 0,
    success_rate            double precision GENERATED ALWAYS AS (
        CASE WHEN ended_runs = 0 THEN 0 ELSE 100.0 * completed_runs / ended_runs END
    ) STORED,
    -- first registration
    created_at              timestamptz NOT NULL,
    -- the latest registration, workflow created from it, or run start or end
    updated_at              timestamptz NOT NULL
);
-- The seed lists templates by usage.
CREATE INDEX workflow_templates_usage ON workflow_templates (tenant_id, usage_count DESC, created_at, id);

-- NULL for a workflow written out whole (and every workflow created before templates).
ALTER TABLE collaboration_workflows ADD COLUMN template_id uuid;
-- Run outcomes are credited to templates through this.
CREATE INDEX collaboration_workflows_template ON collaboration_workflows (template_id)
    WHERE template_id IS NOT NULL;

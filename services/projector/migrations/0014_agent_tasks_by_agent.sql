-- An agent's tasks, looked up by the agent (the metrics) or by the task itself (the history
-- completing them): the index names the whole task after the agent, so that either lookup
-- finds one row. With only (tenant_id, agent_id), a planner without statistics yet (a new
-- database, or a table that grew since its last ANALYZE) completed each task by walking all of
-- its agent's tasks: a batch's history statement took 15-30 ms after ten seconds of `make
-- bench`, and more with every task.
DROP INDEX agent_tasks_by_agent;
CREATE INDEX agent_tasks_by_agent ON agent_tasks (tenant_id, agent_id, execution_id, step_id);

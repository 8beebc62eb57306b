-- The Postgres read model, version 3: a task_runs row no longer carries its graph node and
-- position. The row is rewritten at each of its task's events, and every rewrite copied the node
-- too (replay spent a third of its server time there). A run's graph is now the nodes of the
-- events that added to it (its RunScheduled, each GraphExtended the run took), which `events`
-- keeps anyway: `graph_parts` names those events, in graph order. A run written before this
-- version keeps its nodes here. A task still pending has no task_runs row from now on: its row
-- is made from its node when read (a run of 5,000 tasks is scheduled with one row, not 5,001).
CREATE TABLE graph_parts (
    run_id text   NOT NULL,
    seq    bigint NOT NULL,  -- the event whose nodes joined the graph (0: `nodes` holds them)
    nodes  jsonb,            -- only for runs written before version 3
    PRIMARY KEY (run_id, seq)
);
INSERT INTO graph_parts (run_id, seq, nodes)
    SELECT run_id, 0, jsonb_agg(node ORDER BY position) FROM task_runs GROUP BY run_id;
ALTER TABLE task_runs DROP COLUMN node, DROP COLUMN position;

-- Events are read by run only: one index, (run_id, seq), instead of two. Sequences stay unique
-- by the checkpoint (an entry at or below it is never written again).
ALTER TABLE events DROP CONSTRAINT events_pkey;
DROP INDEX events_by_run;
ALTER TABLE events ADD PRIMARY KEY (run_id, seq);

-- A run's RunScheduled holds its whole graph (a 5,000-task run: ~1.4 MB): lz4 compresses it
-- several times faster than the default pglz. A server built without lz4 keeps pglz.
DO $$
BEGIN
    ALTER TABLE events ALTER COLUMN body SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
    NULL;
END $$;

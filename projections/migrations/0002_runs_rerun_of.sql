-- The Postgres read model, version 2: a run that reruns an earlier one names it
-- (core.events.RunScheduled.rerun_of, projections.views.RunRow.rerun_of). NULL for every other
-- run, and for the rows of runs applied before this version (none of them was a linked rerun).
ALTER TABLE runs ADD COLUMN rerun_of text;

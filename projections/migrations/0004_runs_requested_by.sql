-- The Postgres read model, version 4: who scheduled a run, when a person or a token did
-- (core.events.RunScheduled.requested_by, projections.views.RunRow.requested_by). NULL for runs
-- of an open UI, of triggers and cron, and for the rows of runs applied before this version
-- (a replay into a fresh schema fills it from their events).
ALTER TABLE runs ADD COLUMN requested_by text;

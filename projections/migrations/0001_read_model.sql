-- The Postgres read model (projections/postgres.py), version 1.
-- Every row is derived from CX_EVENTS: `cyclonetix replay --into postgresql://... --reset` rebuilds
-- it. Rows mirror projections/views.py; jsonb columns hold what the UI reads whole.

-- The last stream sequence applied, written in the same transaction as the rows it covers.
-- `epoch` grows at each reset, so a store instance knows when its cache of open runs is stale.
CREATE TABLE checkpoint (
    id       integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    last_seq bigint  NOT NULL DEFAULT 0,
    epoch    bigint  NOT NULL DEFAULT 0
);
INSERT INTO checkpoint (id) VALUES (1);

CREATE TABLE runs (
    run_id           text        PRIMARY KEY,
    kind             text        NOT NULL,
    target           text        NOT NULL,
    name             text        NOT NULL,
    status           text        NOT NULL,
    trigger          text        NOT NULL,
    context_id       text,
    idempotency_key  text,
    counts           jsonb       NOT NULL,  -- task status -> count, every status present
    tasks_total      integer     NOT NULL,
    failed_tasks     jsonb       NOT NULL,  -- array of node ids
    cancel_requested boolean     NOT NULL,
    cancel_reason    text        NOT NULL,
    cancelled_by     text        NOT NULL,
    scheduled_at     timestamptz NOT NULL,
    started_at       timestamptz,
    ended_at         timestamptz,
    scheduled_seq    bigint      NOT NULL UNIQUE,  -- the list order and its cursor
    last_seq         bigint      NOT NULL,
    definitions      jsonb       NOT NULL DEFAULT '[]'  -- the task definitions in its graph
) WITH (fillfactor = 50);
-- Lists are newest first by scheduled_seq, with a keyset cursor (scheduled_seq < $cursor): each
-- common filter has an index that walks in that order and stops after one page.
CREATE INDEX runs_by_status ON runs (status, scheduled_seq DESC);
CREATE INDEX runs_by_target ON runs (target, scheduled_seq DESC);
CREATE INDEX runs_by_trigger ON runs (trigger, scheduled_seq DESC);
CREATE INDEX runs_by_kind ON runs (kind, scheduled_seq DESC);
CREATE INDEX runs_by_time ON runs (scheduled_at);
CREATE INDEX runs_by_definition ON runs USING gin (definitions jsonb_path_ops);

-- Runs per status, kept in the same statement as the runs (the dashboard's counts without a scan).
CREATE TABLE run_counts (
    status text   PRIMARY KEY,
    runs   bigint NOT NULL
);

CREATE TABLE task_runs (
    run_id           text             NOT NULL,
    task_id          text             NOT NULL,
    position         integer          NOT NULL,  -- graph order (evaluation points append)
    node             jsonb            NOT NULL,  -- its core.snapshots.TaskNode
    definition       text             NOT NULL,
    name             text             NOT NULL,
    queue            text             NOT NULL,
    status           text             NOT NULL,
    attempt          integer          NOT NULL,
    max_attempts     integer          NOT NULL,
    agent_id         text             NOT NULL,
    delivery         integer          NOT NULL,
    queued_at        timestamptz,
    started_at       timestamptz,
    ended_at         timestamptz,
    not_before       timestamptz,
    exit_code        integer,
    duration_ms      double precision,
    reason           text             NOT NULL,
    message          text             NOT NULL,
    evaluation_point boolean          NOT NULL,
    last_seq         bigint           NOT NULL,
    PRIMARY KEY (run_id, task_id)
) WITH (fillfactor = 50);

CREATE TABLE attempts (
    run_id      text             NOT NULL,
    task_id     text             NOT NULL,
    attempt     integer          NOT NULL,
    status      text             NOT NULL,
    queue       text             NOT NULL,
    agent_id    text             NOT NULL,
    host        text             NOT NULL,
    delivery    integer          NOT NULL,
    queued_at   timestamptz      NOT NULL,
    started_at  timestamptz,
    ended_at    timestamptz,
    exit_code   integer,
    duration_ms double precision,
    reason      text             NOT NULL,
    message     text             NOT NULL,
    last_seq    bigint           NOT NULL,
    PRIMARY KEY (run_id, task_id, attempt)
) WITH (fillfactor = 50);

-- The raw history, kept past CX_EVENTS' retention: every event of every run, as stored. `body` is
-- json, not jsonb: it keeps the log's own bytes (jsonb would reorder keys and rewrite numbers),
-- and json still answers ->/->> (cast to jsonb for an index on a field).
CREATE TABLE events (
    seq     bigint      PRIMARY KEY,
    run_id  text        NOT NULL,
    type    text        NOT NULL,
    ts      timestamptz NOT NULL,
    task_id text,
    attempt integer,
    body    json        NOT NULL
);
CREATE INDEX events_by_run ON events (run_id, seq);

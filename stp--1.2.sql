/* stp--1.2.sql: install script of the stp extension */

\echo Use "CREATE EXTENSION stp" to load this file. \quit

CREATE SCHEMA stp;
GRANT USAGE ON SCHEMA stp TO PUBLIC;

-- One row per job.  The expressions are deparsed with search_path =
-- pg_catalog, so they are fully qualified.  state is what the job should
-- do: running or stopped.  settings holds the creating session's values
-- of the settings that change what the job's expressions evaluate to
-- (TimeZone, DateStyle, lc_time, ...), as name=value; workers run with them.
CREATE TABLE stp.jobs (
    job_id        serial PRIMARY KEY,
    job_name      text NOT NULL UNIQUE,
    owner         regrole NOT NULL,
    query         text NOT NULL,
    source        regclass NOT NULL,
    order_column  name NOT NULL,
    sequence      regclass NOT NULL,
    result_table  regclass NOT NULL,
    partitions    int NOT NULL CHECK (partitions BETWEEN 1 AND 64),
    batch_size    bigint NOT NULL CHECK (batch_size > 0),
    poll_interval interval NOT NULL,
    timezone      text NOT NULL,
    key_names     text[] NOT NULL,
    key_exprs     text[] NOT NULL,
    agg_names     text[] NOT NULL,
    agg_kinds     text[] NOT NULL,
    agg_args      text[] NOT NULL,
    where_clause  text,
    state         text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'stopped')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    settings      text[] NOT NULL DEFAULT '{}'
);

-- One row per job partition: its progress commits with its results.
CREATE TABLE stp.partitions (
    job_id         int NOT NULL REFERENCES stp.jobs ON DELETE CASCADE,
    partition      int NOT NULL,
    processed_upto bigint NOT NULL,
    rows_processed bigint NOT NULL DEFAULT 0,
    last_batch_at  timestamptz,
    failed         boolean NOT NULL DEFAULT false,
    error_count    int NOT NULL DEFAULT 0,
    last_error     text,
    PRIMARY KEY (job_id, partition)
) WITH (fillfactor = 50);

SELECT pg_catalog.pg_extension_config_dump('stp.jobs', '');
SELECT pg_catalog.pg_extension_config_dump('stp.jobs_job_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('stp.partitions', '');

GRANT SELECT ON stp.jobs, stp.partitions TO PUBLIC;

CREATE FUNCTION stp.partition_of(nparts int, VARIADIC keys "any")
RETURNS int
AS 'MODULE_PATHNAME', 'stp_partition_of'
LANGUAGE C IMMUTABLE PARALLEL SAFE;

CREATE FUNCTION stp.in_partition_support(internal)
RETURNS internal
AS 'MODULE_PATHNAME', 'stp_in_partition_support'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION stp.in_partition(partition int, nparts int, VARIADIC keys "any")
RETURNS boolean
AS 'MODULE_PATHNAME', 'stp_in_partition'
LANGUAGE C IMMUTABLE PARALLEL SAFE
SUPPORT stp.in_partition_support;

CREATE FUNCTION stp.worker_slots(OUT job_id int, OUT partition int,
                                 OUT pid int, OUT state text, OUT note text)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'stp_worker_slots'
LANGUAGE C VOLATILE;

CREATE FUNCTION stp.sequence_last_value(regclass)
RETURNS bigint
AS 'MODULE_PATHNAME', 'stp_sequence_last_value_sql'
LANGUAGE C STRICT VOLATILE;

CREATE FUNCTION stp_start_job(job_name text,
                              query text,
                              result_table text,
                              partitions int DEFAULT 1,
                              order_column text DEFAULT NULL,
                              start_from text DEFAULT 'beginning',
                              batch_size int DEFAULT 1000000,
                              poll_interval interval DEFAULT '50 ms')
RETURNS int
AS 'MODULE_PATHNAME', 'stp_start_job'
LANGUAGE C VOLATILE;

CREATE FUNCTION stp_stop_job(job_name text)
RETURNS void
AS 'MODULE_PATHNAME', 'stp_stop_job'
LANGUAGE C VOLATILE;

CREATE FUNCTION stp_resume_job(job_name text)
RETURNS void
AS 'MODULE_PATHNAME', 'stp_resume_job'
LANGUAGE C VOLATILE;

CREATE FUNCTION stp_drop_job(job_name text, drop_result boolean DEFAULT false)
RETURNS void
AS 'MODULE_PATHNAME', 'stp_drop_job'
LANGUAGE C VOLATILE;

CREATE FUNCTION stp_wait(job_name text, timeout interval DEFAULT '1 minute')
RETURNS boolean
AS 'MODULE_PATHNAME', 'stp_wait'
LANGUAGE C VOLATILE;

-- ---- Query shapes (FILTER, result views, more aggregates) ----

-- The FILTER condition of each aggregate in agg_names, NULL where it has
-- none; the whole column is NULL for jobs created without it.
ALTER TABLE stp.jobs ADD COLUMN agg_filters text[];

-- The view that presents the output of a job whose query computes with its
-- aggregates, filters (HAVING) or orders its groups, or has no GROUP BY;
-- result_table is then the table that keeps the state of its groups.  NULL
-- when the result table is the query's output itself.
ALTER TABLE stp.jobs ADD COLUMN result_view regclass;

-- The partial state of PostgreSQL's float8 variance and stddev aggregates,
-- {N, Sx, Sxx}: a job keeps it per group, merges it with float8_combine and
-- presents it with the aggregate's own final function.
CREATE AGGREGATE stp.float8_accum_state(float8) (
    SFUNC = pg_catalog.float8_accum,
    STYPE = pg_catalog.float8[],
    INITCOND = '{0,0,0}',
    COMBINEFUNC = pg_catalog.float8_combine,
    PARALLEL = SAFE
);

-- ==== operability: dump and restore, waiting without a snapshot, monitoring ====

-- Where the job was created: "system identifier/database OID/source OID".
-- A dump keeps this text as it is, while a restore resolves source,
-- sequence and result_table to their new OIDs; so a worker that finds
-- another origin knows the job came from a restore, and waits until the
-- restore is complete (state "restored" in stp.job_status).  NULL for a
-- job restored from a 1.0 dump: its workers check it once and record it.
ALTER TABLE stp.jobs ADD COLUMN origin text;

-- The jobs that exist already (created under 1.0) run where they are.
UPDATE stp.jobs
SET origin = (SELECT system_identifier FROM pg_catalog.pg_control_system())::text
             OPERATOR(pg_catalog.||) '/' OPERATOR(pg_catalog.||)
             (SELECT oid FROM pg_catalog.pg_database
              WHERE datname OPERATOR(pg_catalog.=) pg_catalog.current_database())::text
             OPERATOR(pg_catalog.||) '/' OPERATOR(pg_catalog.||) source::pg_catalog.oid::text;

-- Per partition with a worker since the server started: rows committed in
-- the last minute, when it last had nothing to do, and whom it waits for.
CREATE FUNCTION stp.worker_activity(OUT job_id int, OUT partition int,
                                    OUT rows_last_minute bigint,
                                    OUT caught_up_at timestamptz,
                                    OUT waiting_for_pid int)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'stp_worker_activity'
LANGUAGE C VOLATILE;

-- One row per job partition: its worker, state, progress, lag, rate over
-- the last minute, seconds_behind (0 when caught up, else the time since
-- the partition last had nothing to do) and waiting_for_pid (while blocked).
CREATE VIEW stp.job_status AS
SELECT j.job_name,
       j.job_id,
       p.partition,
       w.pid,
       CASE WHEN j.state = 'stopped' THEN 'stopped'
            WHEN p.failed THEN 'failed'
            WHEN w.state IS NOT NULL THEN w.state
            ELSE 'waiting' END AS state,
       p.processed_upto,
       p.rows_processed,
       b.rows_behind,
       p.last_batch_at,
       COALESCE(p.last_error, w.note) AS last_error,
       round(COALESCE(a.rows_last_minute, 0) / 60.0, 1) AS rows_per_second,
       CASE WHEN b.rows_behind = 0 OR w.state = 'idle' THEN 0
            ELSE round(extract(epoch FROM clock_timestamp()
                               - COALESCE(a.caught_up_at, p.last_batch_at, j.created_at))::numeric, 1)
       END AS seconds_behind,
       a.waiting_for_pid
FROM stp.jobs j
JOIN stp.partitions p ON p.job_id = j.job_id
-- The sequence is read once per partition, for both columns.
CROSS JOIN LATERAL (
    SELECT GREATEST(COALESCE(stp.sequence_last_value(j.sequence), p.processed_upto)
                    - p.processed_upto, 0) AS rows_behind) b
LEFT JOIN stp.worker_slots() w ON w.job_id = p.job_id AND w.partition = p.partition
LEFT JOIN stp.worker_activity() a ON a.job_id = p.job_id AND a.partition = p.partition
ORDER BY j.job_name, p.partition;

-- One row per job: its definition, owner, state and totals.  state is the
-- worst of its partitions' states, in this order: stopped, failed,
-- restored, blocked, retrying, waiting, starting, running, idle.
CREATE VIEW stp.job_overview AS
SELECT j.job_name,
       j.job_id,
       j.owner,
       CASE WHEN j.state = 'stopped' THEN 'stopped'
            ELSE (ARRAY['failed', 'restored', 'blocked', 'retrying', 'waiting',
                        'starting', 'running', 'idle'])[
                   min(array_position(ARRAY['failed', 'restored', 'blocked', 'retrying',
                                            'waiting', 'starting', 'running', 'idle'], s.state))]
       END AS state,
       count(*) FILTER (WHERE s.state = 'failed') AS failed_partitions,
       j.partitions,
       j.query,
       j.source,
       j.result_table,
       j.batch_size,
       j.poll_interval,
       j.created_at,
       sum(s.rows_processed)::bigint AS rows_processed,
       sum(s.rows_per_second) AS rows_per_second,
       max(s.rows_behind) AS rows_behind,
       max(s.seconds_behind) AS seconds_behind,
       max(s.last_batch_at) AS last_batch_at,
       min(s.last_error) AS last_error
FROM stp.jobs j
JOIN stp.job_status s ON s.job_id = j.job_id
GROUP BY j.job_id
ORDER BY j.job_name;

GRANT SELECT ON stp.job_status, stp.job_overview TO PUBLIC;

-- Waits as stp_wait does, but commits between its looks at the job's
-- progress, so that it holds no snapshot while it sleeps and does not hold
-- back VACUUM.  CALL it outside a transaction block.
CREATE PROCEDURE stp_await(job_name text,
                           timeout interval DEFAULT '1 minute',
                           INOUT caught_up boolean DEFAULT NULL)
AS 'MODULE_PATHNAME', 'stp_await'
LANGUAGE C;

-- ==== end of operability ====

-- ==== partitioned sources read leaf by leaf, and resizing a running job ====

-- The partitions of a source partitioned BY HASH on group keys, in the
-- order of their hash bounds: partition p of the job reads the i-th with
-- i mod partitions = p, directly and with no routing per row.  NULL when
-- the job reads its source (plain, or partitioned otherwise) and routes
-- each row.
ALTER TABLE stp.jobs ADD COLUMN leaves regclass[];

-- A resize that stp_alter_job recorded and that has not happened yet: the
-- partition count the job gets once every partition has reached its
-- stop_at, the common cut.
ALTER TABLE stp.jobs ADD COLUMN resize_to int CHECK (resize_to BETWEEN 1 AND 64);

-- The common cut of a pending resize: the partition processes up to this
-- id and no further, until the job has its new partitions.
ALTER TABLE stp.partitions ADD COLUMN stop_at bigint;

-- stp.job_overview: a job whose partitions wait at the cut of a resize is
-- 'resizing', after 'waiting' and before 'starting' in urgency.
CREATE OR REPLACE VIEW stp.job_overview AS
SELECT j.job_name,
       j.job_id,
       j.owner,
       CASE WHEN j.state = 'stopped' THEN 'stopped'
            ELSE (ARRAY['failed', 'restored', 'blocked', 'retrying', 'waiting', 'resizing',
                        'starting', 'running', 'idle'])[
                   min(array_position(ARRAY['failed', 'restored', 'blocked', 'retrying',
                                            'waiting', 'resizing', 'starting', 'running', 'idle'],
                                      s.state))]
       END AS state,
       count(*) FILTER (WHERE s.state = 'failed') AS failed_partitions,
       j.partitions,
       j.query,
       j.source,
       j.result_table,
       j.batch_size,
       j.poll_interval,
       j.created_at,
       sum(s.rows_processed)::bigint AS rows_processed,
       sum(s.rows_per_second) AS rows_per_second,
       max(s.rows_behind) AS rows_behind,
       max(s.seconds_behind) AS seconds_behind,
       max(s.last_batch_at) AS last_batch_at,
       min(s.last_error) AS last_error
FROM stp.jobs j
JOIN stp.job_status s ON s.job_id = j.job_id
GROUP BY j.job_id
ORDER BY j.job_name;

-- Change a job: its partition count (at a common cut: every partition
-- processes up to the same id, then the new partitions start from it),
-- its batch size or its poll interval.  NULL leaves a setting as it is.
CREATE FUNCTION stp_alter_job(job_name text,
                              partitions int DEFAULT NULL,
                              batch_size int DEFAULT NULL,
                              poll_interval interval DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'stp_alter_job'
LANGUAGE C VOLATILE;

-- ==== end of partitioned sources and resizing ====

-- ==== hop: hopping windows with panes ====

-- The starts of the hopping windows of size "size", sliding by "slide"
-- from "origin", that hold ts: a row lies in the windows
-- [start, start + size) with start = origin + k * slide.  Written in FROM,
-- FROM events, stp.hop(ts, '1 minute', '10 seconds') AS w, and grouped by.
CREATE FUNCTION stp.hop(ts timestamptz, size interval, slide interval,
                        origin timestamptz DEFAULT '1970-01-01 00:00:00+00')
RETURNS SETOF timestamptz
AS 'MODULE_PATHNAME', 'stp_hop'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE ROWS 6;

CREATE FUNCTION stp.hop(ts timestamp, size interval, slide interval,
                        origin timestamp DEFAULT '1970-01-01 00:00:00')
RETURNS SETOF timestamp
AS 'MODULE_PATHNAME', 'stp_hop'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE ROWS 6;

-- The pane of ts: the bin of width gcd(size, slide) from origin, which a
-- job keeps per group and combines into windows when its result is read.
CREATE FUNCTION stp.hop_pane(ts timestamptz, size interval, slide interval,
                             origin timestamptz DEFAULT '1970-01-01 00:00:00+00')
RETURNS timestamptz
AS 'MODULE_PATHNAME', 'stp_hop_pane'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION stp.hop_pane(ts timestamp, size interval, slide interval,
                             origin timestamp DEFAULT '1970-01-01 00:00:00')
RETURNS timestamp
AS 'MODULE_PATHNAME', 'stp_hop_pane'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

-- Merges the float8 variance states {N, Sx, Sxx} of a window's panes.
CREATE AGGREGATE stp.float8_merge_state(float8[]) (
    SFUNC = pg_catalog.float8_combine,
    STYPE = pg_catalog.float8[],
    INITCOND = '{0,0,0}',
    COMBINEFUNC = pg_catalog.float8_combine,
    PARALLEL = SAFE
);

-- ==== end of hop ====

-- ==== logical replication slot source (issue 9) ====

-- Where a job reads its source's changes from: 'table' reads new rows of
-- an append-only table in the order of its order column; 'slot' decodes
-- INSERT, UPDATE and DELETE from one logical replication slot per
-- partition (named stp_<database OID>_<job id>_<partition>).  A slot job
-- has no order column and no sequence (order_column '' and sequence 0),
-- and its partitions' processed_upto is the WAL position up to which its
-- result is applied (0: not built yet).
ALTER TABLE stp.jobs ADD COLUMN source_kind text NOT NULL DEFAULT 'table'
    CHECK (source_kind IN ('table', 'slot'));

-- The rows a partition worker of a slot job decoded in its current batch,
-- as rows of the source's type: the batch statement reads them.  Empty in
-- every other backend.
CREATE FUNCTION stp.slot_changes(anyelement)
RETURNS SETOF anyelement
AS 'MODULE_PATHNAME', 'stp_slot_changes'
LANGUAGE C VOLATILE;

-- The same, old rows only (of UPDATEs and DELETEs) when old is true, new
-- rows only when it is false: a retracting merge adds the ones and
-- subtracts the others.
CREATE FUNCTION stp.slot_changes(anyelement, old boolean)
RETURNS SETOF anyelement
AS 'MODULE_PATHNAME', 'stp_slot_changes'
LANGUAGE C VOLATILE;

-- stp.job_status of 1.2: mode ('leaves' or 'route') and the leaves each
-- partition reads; state 'resizing' for a partition that waits at the
-- cut of a resize; and two columns for slot jobs (NULL for table jobs):
-- wal_bytes_behind, the WAL between the partition's applied position and
-- the current WAL position, and wal_retained_bytes, the WAL that its slot
-- keeps from being removed (NULL once it was invalidated).
CREATE OR REPLACE VIEW stp.job_status AS
SELECT j.job_name,
       j.job_id,
       p.partition,
       w.pid,
       CASE WHEN j.state = 'stopped' THEN 'stopped'
            WHEN p.failed THEN 'failed'
            WHEN p.stop_at IS NOT NULL AND p.processed_upto >= p.stop_at THEN 'resizing'
            WHEN w.state IS NOT NULL THEN w.state
            ELSE 'waiting' END AS state,
       p.processed_upto,
       p.rows_processed,
       b.rows_behind,
       p.last_batch_at,
       COALESCE(p.last_error, w.note) AS last_error,
       round(COALESCE(a.rows_last_minute, 0) / 60.0, 1) AS rows_per_second,
       CASE WHEN COALESCE(b.rows_behind, l.wal_bytes_behind) = 0 OR w.state = 'idle' THEN 0
            ELSE round(extract(epoch FROM clock_timestamp()
                               - COALESCE(a.caught_up_at, p.last_batch_at, j.created_at))::numeric, 1)
       END AS seconds_behind,
       a.waiting_for_pid,
       CASE WHEN j.leaves IS NOT NULL THEN 'leaves' ELSE 'route' END AS mode,
       ARRAY(SELECT l.leaf FROM unnest(j.leaves) WITH ORDINALITY AS l(leaf, i)
             WHERE (l.i - 1) % j.partitions = p.partition ORDER BY l.i) AS leaves,
       l.wal_bytes_behind,
       l.wal_retained_bytes
FROM stp.jobs j
JOIN stp.partitions p ON p.job_id = j.job_id
-- The sequence is read once per partition, for both columns.
CROSS JOIN LATERAL (
    SELECT CASE WHEN j.source_kind = 'table'
                THEN GREATEST(COALESCE(stp.sequence_last_value(j.sequence), p.processed_upto)
                              - p.processed_upto, 0) END AS rows_behind) b
LEFT JOIN stp.worker_slots() w ON w.job_id = p.job_id AND w.partition = p.partition
LEFT JOIN stp.worker_activity() a ON a.job_id = p.job_id AND a.partition = p.partition
-- A slot job's partition: how far its applied position (or its slot's
-- confirmed position, which moves over WAL without changes for it) is
-- behind, and how much WAL its slot retains.
LEFT JOIN LATERAL (
    SELECT GREATEST(pg_current_wal_lsn()
                    - GREATEST('0/0'::pg_lsn + p.processed_upto::numeric,
                               s.confirmed_flush_lsn), 0) AS wal_bytes_behind,
           pg_current_wal_lsn() - s.restart_lsn AS wal_retained_bytes
    FROM (SELECT 1) one
    LEFT JOIN pg_replication_slots s
      ON s.slot_name = 'stp_' || (SELECT d.oid FROM pg_database d
                                  WHERE d.datname = current_database())
                       || '_' || j.job_id || '_' || p.partition
    WHERE j.source_kind = 'slot') l ON true
ORDER BY j.job_name, p.partition;

-- ==== end of logical replication slot source ====

-- ==== row mode (strategy => 'groups' | 'rows' | 'auto') ====

-- How a job's partitions share the work: 'groups' (each owns the groups that
-- xxhash(key) mod partitions gives it) or 'rows' (each owns every N-th id
-- range, batch_size / partitions ids wide, and merges all of its groups into
-- the shared result rows under their row locks).  stp_start_job resolves
-- 'auto' to one of them when it creates the job.
ALTER TABLE stp.jobs ADD COLUMN strategy text NOT NULL DEFAULT 'groups'
    CHECK (strategy IN ('groups', 'rows'));

-- stp_start_job of 1.2, with the source (see the slot source above) and
-- the strategy.
DROP FUNCTION stp_start_job(text, text, text, int, text, text, int, interval);
CREATE FUNCTION stp_start_job(job_name text,
                              query text,
                              result_table text,
                              partitions int DEFAULT 1,
                              order_column text DEFAULT NULL,
                              start_from text DEFAULT 'beginning',
                              batch_size int DEFAULT 1000000,
                              poll_interval interval DEFAULT '50 ms',
                              source text DEFAULT 'table',
                              strategy text DEFAULT 'auto')
RETURNS int
AS 'MODULE_PATHNAME', 'stp_start_job'
LANGUAGE C VOLATILE;

-- ==== end of row mode ====

-- ==== combinable aggregates (issue 10) ====

-- For each aggregate of agg_names: the aggregate that stp merges with its
-- combine function (agg_kinds 'combine' or 'combine_final'), or NULL for
-- stp's own kinds.  A regprocedure, which pg_dump writes by name.
ALTER TABLE stp.jobs ADD COLUMN agg_functions regprocedure[];

-- ==== end of combinable aggregates ====

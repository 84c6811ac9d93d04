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

-- ==== issue 8 part B2: row mode (strategy => 'groups' | 'rows' | 'auto') ====

-- How a job's partitions share the work: 'groups' (each owns the groups that
-- xxhash(key) mod partitions gives it) or 'rows' (each owns every N-th id
-- range, batch_size / partitions ids wide, and merges all of its groups into
-- the shared result rows under their row locks).  stp_start_job resolves
-- 'auto' to one of them when it creates the job.
ALTER TABLE stp.jobs ADD COLUMN strategy text NOT NULL DEFAULT 'groups'
    CHECK (strategy IN ('groups', 'rows'));

DROP FUNCTION stp_start_job(text, text, text, int, text, text, int, interval);
CREATE FUNCTION stp_start_job(job_name text,
                              query text,
                              result_table text,
                              partitions int DEFAULT 1,
                              order_column text DEFAULT NULL,
                              start_from text DEFAULT 'beginning',
                              batch_size int DEFAULT 1000000,
                              poll_interval interval DEFAULT '50 ms',
                              strategy text DEFAULT 'auto')
RETURNS int
AS 'MODULE_PATHNAME', 'stp_start_job'
LANGUAGE C VOLATILE;

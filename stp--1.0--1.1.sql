/* stp--1.0--1.1.sql: upgrade of the stp extension from 1.0 to 1.1 */

\echo Use "ALTER EXTENSION stp UPDATE TO '1.1'" to load this file. \quit

-- Running workers lock stp.partitions and stp.jobs in their steps, in
-- either order.  An update that took one table's ACCESS EXCLUSIVE lock and
-- then waited for the other could deadlock with a worker that holds the
-- other and waits for the first.  So the update takes both at once, and
-- only when both are free, before it changes either; each worker then
-- waits for it at its first look at the catalog.
DO $$
BEGIN
    LOOP
        BEGIN
            LOCK TABLE stp.jobs, stp.partitions IN ACCESS EXCLUSIVE MODE NOWAIT;
            EXIT;
        EXCEPTION WHEN lock_not_available THEN
            PERFORM pg_catalog.pg_sleep(0.01);
        END;
    END LOOP;
END $$;

-- The creating session's values of the settings that change what a job's
-- expressions evaluate to.  Jobs created under 1.0 recorded only their
-- TimeZone, which stays in stp.jobs.timezone.
ALTER TABLE stp.jobs ADD COLUMN settings text[] NOT NULL DEFAULT '{}';

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

-- stp.job_status gains rows_per_second (over the last minute),
-- seconds_behind (0 when caught up, else the time since the partition last
-- had nothing to do) and waiting_for_pid (while blocked).
CREATE OR REPLACE VIEW stp.job_status AS
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

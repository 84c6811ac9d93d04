/* stp--1.1--1.2.sql: upgrade of the stp extension from 1.1 to 1.2 */

\echo Use "ALTER EXTENSION stp UPDATE TO '1.2'" to load this file. \quit

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

/* stp--1.1--1.2.sql: upgrade of the stp extension from 1.1 to 1.2 */

\echo Use "ALTER EXTENSION stp UPDATE TO '1.2'" to load this file. \quit

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

DROP FUNCTION stp_start_job(text, text, text, int, text, text, int, interval);
CREATE FUNCTION stp_start_job(job_name text,
                              query text,
                              result_table text,
                              partitions int DEFAULT 1,
                              order_column text DEFAULT NULL,
                              start_from text DEFAULT 'beginning',
                              batch_size int DEFAULT 1000000,
                              poll_interval interval DEFAULT '50 ms',
                              source text DEFAULT 'table')
RETURNS int
AS 'MODULE_PATHNAME', 'stp_start_job'
LANGUAGE C VOLATILE;

-- stp.job_status, with two columns more for slot jobs (NULL for table
-- jobs): wal_bytes_behind, the WAL between the partition's applied
-- position and the current WAL position, and wal_retained_bytes, the WAL
-- that its slot keeps from being removed (NULL once it was invalidated).
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
       CASE WHEN COALESCE(b.rows_behind, l.wal_bytes_behind) = 0 OR w.state = 'idle' THEN 0
            ELSE round(extract(epoch FROM clock_timestamp()
                               - COALESCE(a.caught_up_at, p.last_batch_at, j.created_at))::numeric, 1)
       END AS seconds_behind,
       a.waiting_for_pid,
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

-- Waiting without a snapshot (stp_await), the monitoring views, and a
-- job's origin.
CREATE TABLE op_src (id bigserial PRIMARY KEY, k int, v int);
INSERT INTO op_src (k, v) SELECT g % 3, g FROM generate_series(1, 600) g;
SELECT stp_start_job('op_job', 'SELECT k, count(*) AS n, sum(v) AS s FROM op_src GROUP BY k',
                     'op_r', partitions => 2, batch_size => 100) > 0 AS started;

-- The procedure answers in caught_up.
CALL stp_await('op_job', '60 s');
CALL stp_await('op_job', caught_up => NULL);
SELECT stp_test_diff('op_r', 'k, n, s', 'SELECT k, count(*), sum(v) FROM op_src GROUP BY k');

-- A procedure that calls it outside a transaction block may commit too.
CREATE PROCEDURE op_wait_twice(INOUT ok boolean DEFAULT NULL) LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO op_src (k, v) VALUES (1, 1);
    COMMIT;
    CALL stp_await('op_job', '60 s', ok);
END $$;
CALL op_wait_twice();
SELECT n FROM op_r WHERE k = 1;

-- The workers report the table statistics of their writes, as backends
-- do: autovacuum learns of the result table's updates only from them.
DO $$
BEGIN
    FOR i IN 1 .. 600 LOOP
        PERFORM pg_stat_clear_snapshot();
        EXIT WHEN (SELECT n_tup_ins = 3 AND n_tup_upd > 0 FROM pg_stat_user_tables
                   WHERE relid = 'op_r'::regclass);
        PERFORM pg_sleep(0.1);
    END LOOP;
END $$;
SELECT n_tup_ins AS groups_inserted, n_tup_upd > 0 AS updated, n_tup_hot_upd > 0 AS hot
FROM pg_stat_user_tables WHERE relid = 'op_r'::regclass;

-- Refused inside a transaction block, and with bad arguments.
BEGIN;
CALL stp_await('op_job');
ROLLBACK;
CALL stp_await('nope');
CALL stp_await(NULL);
CALL stp_await('op_job', NULL);
CALL stp_await('op_job', '-1 s');
SELECT stp_stop_job('op_job');
CALL stp_await('op_job', '1 s');
SELECT stp_resume_job('op_job');

-- The status views, once the resumed workers have processed new rows.
INSERT INTO op_src (k, v) SELECT g % 3, g FROM generate_series(1, 30) g;
CALL stp_await('op_job', '60 s');
SELECT job_name, partition, state IN ('idle', 'running') AS alive, rows_behind,
       seconds_behind, waiting_for_pid
FROM stp.job_status WHERE job_name = 'op_job';
SELECT sum(rows_per_second) > 0 AS counted FROM stp.job_status WHERE job_name = 'op_job';
SELECT job_name, owner = current_user::regrole AS mine, state IN ('idle', 'running') AS alive,
       failed_partitions, partitions, query, source, result_table, batch_size, poll_interval,
       rows_processed, rows_behind, seconds_behind, last_error
FROM stp.job_overview WHERE job_name = 'op_job';

-- The job records where it was created.
SELECT origin = (SELECT system_identifier FROM pg_control_system())::text || '/' ||
       (SELECT oid FROM pg_database WHERE datname = current_database()) || '/' ||
       'op_src'::regclass::oid AS origin_is_here
FROM stp.jobs WHERE job_name = 'op_job';

SELECT stp_drop_job('op_job', true);
DROP PROCEDURE op_wait_twice;
DROP TABLE op_src;

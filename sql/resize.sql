-- stp_alter_job: resizing a running job at a common cut, and changing its
-- batch size and poll interval.

-- Wait until a job's pending resize is done and the job has caught up.
CREATE PROCEDURE rs_settle(job text) LANGUAGE plpgsql AS $$
DECLARE
    ok boolean;
BEGIN
    FOR i IN 1..1200 LOOP
        IF (SELECT resize_to IS NULL FROM stp.jobs WHERE job_name = job) THEN
            EXIT;
        END IF;
        COMMIT;
        PERFORM pg_sleep(0.05);
    END LOOP;
    COMMIT;
    CALL stp_await(job, '60 s', ok);
    IF NOT ok THEN
        RAISE EXCEPTION 'job % did not catch up', job;
    END IF;
END $$;

CREATE TABLE rs_src (id bigserial PRIMARY KEY, k int, v int);
INSERT INTO rs_src (k, v) SELECT g % 97, g FROM generate_series(1, 5000) g;
SELECT stp_start_job('rs_job', 'SELECT k, count(*) AS n, sum(v) AS s, min(v) AS lo FROM rs_src GROUP BY k',
                     'rs_r', partitions => 2, batch_size => 400) > 0 AS started;

-- Up, while rows arrive: every old partition stops at the cut, the new
-- ones start from it.
INSERT INTO rs_src (k, v) SELECT g % 97, g FROM generate_series(1, 2000) g;
SELECT stp_alter_job('rs_job', partitions => 3);
INSERT INTO rs_src (k, v) SELECT g % 89, g FROM generate_series(1, 2000) g;
CALL rs_settle('rs_job');
SELECT partitions, resize_to FROM stp.jobs WHERE job_name = 'rs_job';
SELECT count(*) AS partitions, count(DISTINCT partition) AS distinct_partitions,
       bool_and(stop_at IS NULL) AS no_cut
FROM stp.partitions p JOIN stp.jobs j USING (job_id) WHERE job_name = 'rs_job';
SELECT stp_test_diff('rs_r', 'k, n, s, lo', 'SELECT k, count(*), sum(v), min(v) FROM rs_src GROUP BY k');
SELECT sum(rows_processed) = (SELECT count(*) FROM rs_src) AS every_row_once
FROM stp.job_status WHERE job_name = 'rs_job';

-- Down, with the batch size and poll interval.
SELECT stp_alter_job('rs_job', partitions => 1, batch_size => 250, poll_interval => '20 ms');
INSERT INTO rs_src (k, v) SELECT g % 101, g FROM generate_series(1, 1500) g;
CALL rs_settle('rs_job');
SELECT partitions, batch_size, poll_interval FROM stp.jobs WHERE job_name = 'rs_job';
SELECT partition, state IN ('idle', 'running') AS alive FROM stp.job_status WHERE job_name = 'rs_job';
SELECT stp_test_diff('rs_r', 'k, n, s, lo', 'SELECT k, count(*), sum(v), min(v) FROM rs_src GROUP BY k');
SELECT sum(rows_processed) = (SELECT count(*) FROM rs_src) AS every_row_once
FROM stp.job_status WHERE job_name = 'rs_job';

-- The same count: nothing to do.  Only batch size: no cut.
SELECT stp_alter_job('rs_job', partitions => 1);
SELECT stp_alter_job('rs_job', batch_size => 1000);
SELECT partitions, resize_to, batch_size FROM stp.jobs WHERE job_name = 'rs_job';

-- A stopped job is resized when it runs again.
SELECT stp_stop_job('rs_job');
INSERT INTO rs_src (k, v) SELECT g % 50, g FROM generate_series(1, 700) g;
SELECT stp_alter_job('rs_job', partitions => 4);
SELECT partitions FROM stp.jobs WHERE job_name = 'rs_job';
SELECT stp_resume_job('rs_job');
INSERT INTO rs_src (k, v) SELECT g % 50, g FROM generate_series(1, 700) g;
CALL rs_settle('rs_job');
SELECT partitions FROM stp.jobs WHERE job_name = 'rs_job';
SELECT stp_test_diff('rs_r', 'k, n, s, lo', 'SELECT k, count(*), sum(v), min(v) FROM rs_src GROUP BY k');

-- A hash-partitioned source: leaves move between the workers.
CREATE TABLE rs_hash (id bigserial, k int, v int) PARTITION BY HASH (k);
CREATE TABLE rs_hash_0 PARTITION OF rs_hash FOR VALUES WITH (MODULUS 4, REMAINDER 0);
CREATE TABLE rs_hash_1 PARTITION OF rs_hash FOR VALUES WITH (MODULUS 4, REMAINDER 1);
CREATE TABLE rs_hash_2 PARTITION OF rs_hash FOR VALUES WITH (MODULUS 4, REMAINDER 2);
CREATE TABLE rs_hash_3 PARTITION OF rs_hash FOR VALUES WITH (MODULUS 4, REMAINDER 3);
INSERT INTO rs_hash (k, v) SELECT g % 60, g FROM generate_series(1, 3000) g;
SELECT stp_start_job('rs_hjob', 'SELECT k, count(*) AS n, sum(v) AS s FROM rs_hash GROUP BY k',
                     'rs_hr', batch_size => 500) > 0 AS started;
SELECT partition, leaves FROM stp.job_status WHERE job_name = 'rs_hjob';
SELECT stp_alter_job('rs_hjob', partitions => 4);
INSERT INTO rs_hash (k, v) SELECT g % 60, g FROM generate_series(1, 1000) g;
CALL rs_settle('rs_hjob');
SELECT partition, leaves FROM stp.job_status WHERE job_name = 'rs_hjob';
SELECT stp_test_diff('rs_hr', 'k, n, s', 'SELECT k, count(*), sum(v) FROM rs_hash GROUP BY k');
SELECT stp_alter_job('rs_hjob', partitions => 2);
INSERT INTO rs_hash_2 (k, v) SELECT k, 7 FROM (SELECT DISTINCT k FROM rs_hash_2) d;
CALL rs_settle('rs_hjob');
SELECT partition, leaves FROM stp.job_status WHERE job_name = 'rs_hjob';
SELECT stp_test_diff('rs_hr', 'k, n, s', 'SELECT k, count(*), sum(v) FROM rs_hash GROUP BY k');

-- Bad input: an error with SQLSTATE and hint, and nothing changes.
CREATE FUNCTION rs_error(stmt text, OUT code text, OUT message text, OUT hint text)
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE stmt;
    code := 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, message = MESSAGE_TEXT,
                            hint = PG_EXCEPTION_HINT;
END $$;
\pset null '(none)'
SELECT * FROM rs_error($q$SELECT stp_alter_job(NULL, partitions => 2)$q$);
SELECT * FROM rs_error($q$SELECT stp_alter_job('nope', partitions => 2)$q$);
SELECT * FROM rs_error($q$SELECT stp_alter_job('rs_job', partitions => 0)$q$);
SELECT * FROM rs_error($q$SELECT stp_alter_job('rs_job', partitions => 65)$q$);
SELECT * FROM rs_error($q$SELECT stp_alter_job('rs_job', batch_size => 0)$q$);
SELECT * FROM rs_error($q$SELECT stp_alter_job('rs_job', poll_interval => '0 s')$q$);
SELECT * FROM rs_error($q$SELECT stp_alter_job('rs_job', poll_interval => '1 month')$q$);
SELECT * FROM rs_error($q$SELECT stp_alter_job('rs_hjob', partitions => 5)$q$);
CREATE TABLE rs_all (id bigserial, v int);
SELECT stp_start_job('rs_global', 'SELECT count(*) AS n FROM rs_all', 'rs_global_r') > 0 AS started;
SELECT * FROM rs_error($q$SELECT stp_alter_job('rs_global', partitions => 2)$q$);
-- Only the owner (or a member of its role) may alter a job.
CREATE ROLE regress_stp_resizer LOGIN;
SET ROLE regress_stp_resizer;
SELECT * FROM rs_error($q$SELECT stp_alter_job('rs_job', partitions => 2)$q$);
RESET ROLE;
-- A failed partition never reaches a cut.
SELECT stp_stop_job('rs_hjob');
UPDATE stp.partitions SET failed = true WHERE partition = 0
  AND job_id = (SELECT job_id FROM stp.jobs WHERE job_name = 'rs_hjob');
SELECT * FROM rs_error($q$SELECT stp_alter_job('rs_hjob', partitions => 1)$q$);
SELECT job_name, partitions, resize_to, batch_size FROM stp.jobs WHERE job_name LIKE 'rs%' ORDER BY 1;

SELECT stp_drop_job(job_name, true) FROM stp.jobs WHERE job_name LIKE 'rs%';
DROP TABLE rs_src, rs_hash, rs_all;
DROP ROLE regress_stp_resizer;
DROP PROCEDURE rs_settle;
DROP FUNCTION rs_error;

-- Jobs whose source is a logical replication slot: INSERT, UPDATE and DELETE.
CREATE TABLE acct (id int PRIMARY KEY, grp text, sub int, amount numeric, f float8);
ALTER TABLE acct REPLICA IDENTITY FULL;
INSERT INTO acct SELECT i, 'g' || (i % 3), i % 2, i * 1.5, i / 4.0 FROM generate_series(1, 30) i;

-- What the job's query returns as a batch SELECT.
CREATE VIEW acct_batch AS
SELECT grp, sub, count(*) AS n, sum(amount) AS total, avg(amount) AS mean,
       min(amount) AS lo, max(amount) AS hi, count(f) AS nf, sum(f) AS sf
FROM acct WHERE id <> 13 GROUP BY grp, sub;

SELECT stp_start_job('acct_sums',
    $$SELECT grp, sub, count(*) AS n, sum(amount) AS total, avg(amount) AS mean,
             min(amount) AS lo, max(amount) AS hi, count(f) AS nf, sum(f) AS sf
      FROM acct WHERE id <> 13 GROUP BY grp, sub$$,
    'acct_sums', partitions => 2, source => 'slot') > 0 AS started;
-- Rows of the result that differ from the batch query, either way.
CREATE FUNCTION acct_diff() RETURNS TABLE (side text, grp text, sub int, n bigint, total numeric,
                                           mean numeric, lo numeric, hi numeric, nf bigint, sf float8)
LANGUAGE sql AS $$
    (SELECT 'job', grp, sub, n, total, mean, lo, hi, nf, sf FROM acct_sums
     EXCEPT SELECT 'job', * FROM acct_batch)
    UNION ALL
    (SELECT 'batch', * FROM acct_batch
     EXCEPT SELECT 'batch', grp, sub, n, total, mean, lo, hi, nf, sf FROM acct_sums)
    ORDER BY 1, 2, 3
$$;

SELECT source_kind, order_column, sequence, partitions FROM stp.jobs WHERE job_name = 'acct_sums';

-- The rows present at the start count once.
SELECT stp_wait('acct_sums');
SELECT count(*) AS groups FROM acct_sums;
SELECT * FROM acct_diff();

-- One slot per partition, named from the database, job and partition.
SELECT regexp_replace(slot_name, '^stp_[0-9]+_[0-9]+_', 'stp_DB_JOB_') AS slot, plugin, slot_type,
       database = current_database() AS here, temporary
FROM pg_replication_slots ORDER BY slot_name;

-- Inserts, an update that leaves the key alone, updates that move rows
-- between groups (and partitions), deletes.
INSERT INTO acct VALUES (31, 'g0', 0, 100, NULL), (32, 'g9', 1, 7, 1.5), (33, NULL, NULL, 2, 2);
UPDATE acct SET amount = amount + 1 WHERE id IN (1, 2);
UPDATE acct SET grp = 'g2', sub = 0 WHERE id IN (3, 4, 5);
DELETE FROM acct WHERE id IN (6, 7);
SELECT stp_wait('acct_sums');
SELECT * FROM acct_diff();
SELECT grp, sub, n, total, lo, hi FROM acct_sums ORDER BY grp, sub;

-- Deleting the current minimum and maximum of a group.
SELECT lo, hi FROM acct_sums WHERE grp = 'g0' AND sub = 0;
DELETE FROM acct WHERE grp = 'g0' AND sub = 0
    AND (amount = (SELECT min(amount) FROM acct WHERE grp = 'g0' AND sub = 0 AND id <> 13)
         OR amount = (SELECT max(amount) FROM acct WHERE grp = 'g0' AND sub = 0 AND id <> 13));
UPDATE acct SET amount = 0.5 WHERE id = 12;
SELECT stp_wait('acct_sums');
SELECT lo, hi FROM acct_sums WHERE grp = 'g0' AND sub = 0;
SELECT * FROM acct_diff();

-- A group whose rows are all gone, by DELETE or by UPDATE, leaves the
-- result; a row the job's WHERE drops changes nothing.
DELETE FROM acct WHERE grp = 'g9';
UPDATE acct SET grp = 'g1' WHERE grp IS NULL;
UPDATE acct SET amount = 1000 WHERE id = 13;
SELECT stp_wait('acct_sums');
SELECT count(*) FILTER (WHERE grp = 'g9' OR grp IS NULL) AS gone, count(*) AS groups FROM acct_sums;
SELECT * FROM acct_diff();

-- A rolled-back transaction contributes nothing; a subtransaction rolled
-- back inside a committed one neither.
BEGIN;
INSERT INTO acct VALUES (40, 'rollback', 1, 1, 1);
DELETE FROM acct WHERE grp = 'g1';
ROLLBACK;
BEGIN;
INSERT INTO acct VALUES (41, 'kept', 1, 1, 1);
SAVEPOINT s;
INSERT INTO acct VALUES (42, 'undone', 1, 1, 1);
ROLLBACK TO SAVEPOINT s;
COMMIT;
SELECT stp_wait('acct_sums');
SELECT grp FROM acct_sums WHERE grp IN ('rollback', 'kept', 'undone');
SELECT * FROM acct_diff();

-- A TRUNCATE empties the result; new rows count again.
TRUNCATE acct;
INSERT INTO acct VALUES (1, 'after', 1, 5, 5);
SELECT stp_wait('acct_sums');
SELECT grp, sub, n, total FROM acct_sums;
SELECT * FROM acct_diff();

-- stp.job_status: WAL behind and WAL retained per partition; stp_wait
-- returns once every partition's slot has passed the WAL at the call.
SELECT stp_wait('acct_sums');
SELECT partition, rows_behind, wal_bytes_behind IS NOT NULL AS has_behind,
       wal_retained_bytes >= 0 AS retains
FROM stp.job_status WHERE job_name = 'acct_sums';

-- The WAL insert position right after a page header: a position no record
-- ends at.  Non-transactional messages, sized to end the last record on a
-- page boundary, put it there (the block fails if they do not); the job
-- still catches up to it.  WAL that another process writes in between
-- only moves the position on.
DO $$
DECLARE
	before pg_lsn;
	probe int;
	room int;
BEGIN
	FOR attempt IN 1..50 LOOP
		before := pg_current_wal_insert_lsn();
		PERFORM pg_logical_emit_message(false, 'stp', repeat('x', 1000));
		probe := (pg_current_wal_insert_lsn() - before)::int;
		room := 8192 - ((pg_current_wal_insert_lsn() - '0/0') % 8192)::int;
		-- probe is the size of a 1000-byte message unless it crossed a page.
		IF (before - '0/0') % 8192 + probe < 8192 AND room >= 600 THEN
			PERFORM pg_logical_emit_message(false, 'stp', repeat('x', room - (probe - 1000)));
		END IF;
		IF (pg_current_wal_insert_lsn() - '0/0') % 8192 IN (24, 40) THEN
			RETURN;
		END IF;
	END LOOP;
	RAISE EXCEPTION 'the WAL insert position did not land after a page header';
END
$$;
SELECT stp_wait('acct_sums', '20 seconds');
SELECT partition, last_error FROM stp.job_status WHERE job_name = 'acct_sums';

-- The errors.
SELECT stp_start_job('bad', 'SELECT grp, count(*) AS n FROM acct GROUP BY grp', 'bad', source => 'wal');
SELECT stp_start_job('bad', 'SELECT grp, count(*) AS n FROM acct GROUP BY grp', 'bad', source => NULL);
SELECT stp_start_job('bad', 'SELECT grp, count(*) AS n FROM acct GROUP BY grp', 'bad',
                     source => 'slot', order_column => 'id');
SELECT stp_start_job('bad', 'SELECT grp, count(*) AS n FROM acct GROUP BY grp', 'bad',
                     source => 'slot', start_from => 'now');
SELECT stp_start_job('bad', 'SELECT count(*) AS n FROM acct', 'bad', source => 'slot');
SELECT stp_start_job('bad', 'SELECT grp, count(DISTINCT sub) AS n FROM acct GROUP BY grp', 'bad',
                     source => 'slot');
SELECT stp_start_job('bad', 'SELECT grp, sum(DISTINCT sub) AS n FROM acct GROUP BY grp', 'bad',
                     source => 'slot');
CREATE TABLE ev_hop (id int PRIMARY KEY, ts timestamptz, k int);
ALTER TABLE ev_hop REPLICA IDENTITY FULL;
SELECT stp_start_job('bad', $$SELECT k, w, count(*) AS n FROM ev_hop, stp.hop(ts, '1 minute', '30 seconds') AS w
                              GROUP BY k, w$$, 'bad', source => 'slot');
CREATE TABLE parted (id int, k int) PARTITION BY HASH (k);
CREATE TABLE parted_0 PARTITION OF parted FOR VALUES WITH (MODULUS 1, REMAINDER 0);
SELECT stp_start_job('bad', 'SELECT k, count(*) AS n FROM parted GROUP BY k', 'bad', source => 'slot');
SELECT stp_start_job('bad', 'SELECT grp, count(*) AS n FROM acct GROUP BY grp', 'bad',
                     source => 'slot', partitions => 2, strategy => 'rows');
DROP TABLE ev_hop, parted;
-- The partition count of a slot job cannot change; its batch size can.
SELECT stp_alter_job('acct_sums', partitions => 3);
SELECT stp_alter_job('acct_sums', batch_size => 5000);
CREATE TABLE plain (id int PRIMARY KEY, k int);
SELECT stp_start_job('bad', 'SELECT k, count(*) AS n FROM plain GROUP BY k', 'bad', source => 'slot');
ALTER TABLE plain REPLICA IDENTITY FULL;
SELECT stp_start_job('bad', 'SELECT k, count(*) AS n FROM plain GROUP BY k', 'bad',
                     source => 'slot', partitions => 64);
CREATE ROLE regress_stp_slot_user LOGIN;
GRANT SELECT ON plain TO regress_stp_slot_user;
GRANT CREATE ON SCHEMA public TO regress_stp_slot_user;
SET ROLE regress_stp_slot_user;
SELECT stp_start_job('bad', 'SELECT k, count(*) AS n FROM plain GROUP BY k', 'bad', source => 'slot');
RESET ROLE;
REVOKE CREATE ON SCHEMA public FROM regress_stp_slot_user;
REVOKE SELECT ON plain FROM regress_stp_slot_user;
DROP ROLE regress_stp_slot_user;
SELECT count(*) AS refused_jobs_left FROM stp.jobs WHERE job_name = 'bad';
SELECT to_regclass('bad') IS NULL AS no_result_table;

-- REPLICA IDENTITY changed under a running job fails it with the reason.
SELECT stp_start_job('plain_counts', 'SELECT k, count(*) AS n FROM plain GROUP BY k',
                     'plain_counts', source => 'slot') > 0 AS started;
SELECT stp_wait('plain_counts');
ALTER TABLE plain REPLICA IDENTITY DEFAULT;
INSERT INTO plain VALUES (1, 1);
SELECT stp_wait('plain_counts');
SELECT state, last_error FROM stp.job_status WHERE job_name = 'plain_counts';

-- A column type that changes under a running job fails it, whether the
-- job decodes rows written after the change or before it.  alt_warm steps
-- only when stp_wait wakes it: it decodes the rows from before and after
-- the change in one step, with the catalog caches of its last step, which
-- saw the old types.
CREATE TABLE alt (id int PRIMARY KEY, k int, x int);
ALTER TABLE alt REPLICA IDENTITY FULL;
INSERT INTO alt VALUES (1, 1, 10);
SELECT stp_start_job('alt_live', 'SELECT k, sum(x) AS s FROM alt GROUP BY k', 'alt_live',
                     source => 'slot') > 0 AS started;
SELECT stp_start_job('alt_lag', 'SELECT k, count(*) AS n FROM alt GROUP BY k', 'alt_lag',
                     source => 'slot') > 0 AS started;
SELECT stp_start_job('alt_warm', 'SELECT k, count(*) AS n FROM alt GROUP BY k', 'alt_warm',
                     source => 'slot', poll_interval => '1 hour') > 0 AS started;
SELECT stp_wait('alt_live'), stp_wait('alt_lag'), stp_wait('alt_warm');
SELECT stp_stop_job('alt_lag');
INSERT INTO alt VALUES (2, 1, 20);
SELECT stp_wait('alt_live');
ALTER TABLE alt ALTER x TYPE numeric;
INSERT INTO alt VALUES (3, 1, 30);
SELECT stp_resume_job('alt_lag');
SELECT stp_wait('alt_live');
SELECT stp_wait('alt_lag');
SELECT stp_wait('alt_warm');
SELECT job_name, state, last_error FROM stp.job_status WHERE job_name LIKE 'alt%' ORDER BY 1;
SELECT * FROM alt_live;
SELECT stp_drop_job('alt_live', drop_result => true);
SELECT stp_drop_job('alt_lag', drop_result => true);
SELECT stp_drop_job('alt_warm', drop_result => true);

-- Routing in the plugin's change callback: with group keys that are plain
-- columns (numeric, hashed by its hash function: 1.0 and 1.00 are one
-- group; text; NULL keys), each partition keeps only its own groups' rows,
-- so the partitions' rows_processed add up to the decoded rows once (an
-- UPDATE counts its old and its new row).  With an expression key the
-- batch statement routes, and each partition counts every row.
CREATE TABLE routed (id int PRIMARY KEY, k numeric, t text, v int);
ALTER TABLE routed REPLICA IDENTITY FULL;
CREATE VIEW routed_batch AS
SELECT k, t, count(*) AS n, sum(v) AS s, min(v) AS lo FROM routed GROUP BY k, t;
SELECT stp_start_job('routed_cols', 'SELECT k, t, count(*) AS n, sum(v) AS s, min(v) AS lo FROM routed GROUP BY k, t',
                     'routed_cols', partitions => 3, source => 'slot') > 0 AS started;
SELECT stp_start_job('routed_expr', 'SELECT v % 7 AS m, count(*) AS n FROM routed GROUP BY v % 7',
                     'routed_expr', partitions => 3, source => 'slot') > 0 AS started;
SELECT stp_wait('routed_cols'), stp_wait('routed_expr');
INSERT INTO routed SELECT i, (i % 11) + 0.5, CASE WHEN i % 13 = 0 THEN NULL ELSE 't' || (i % 5) END, i
FROM generate_series(1, 300) i;
INSERT INTO routed VALUES (301, 1.0, 'x', 1), (303, 1.00, 'x', 2), (305, NULL, NULL, 3);
UPDATE routed SET k = k + 1 WHERE id % 10 = 0;
UPDATE routed SET v = v + 1 WHERE id % 10 = 1;
DELETE FROM routed WHERE id % 10 = 2;
SELECT stp_wait('routed_cols'), stp_wait('routed_expr');
-- 303 inserted rows, 61 updates (two rows each), 30 deletes: 455 rows.
SELECT job_name, sum(rows_processed) AS rows_kept, count(*) AS partitions
FROM stp.job_status WHERE job_name LIKE 'routed%' GROUP BY job_name ORDER BY 1;
SELECT k = 1 AS one, t, n FROM routed_cols WHERE k = 1;
(SELECT k, t, n, s, lo FROM routed_cols EXCEPT SELECT * FROM routed_batch)
UNION ALL (SELECT * FROM routed_batch EXCEPT SELECT k, t, n, s, lo FROM routed_cols);
SELECT count(*) AS groups, (SELECT count(*) FROM routed_batch) AS batch_groups FROM routed_cols;
(SELECT m, n FROM routed_expr EXCEPT SELECT v % 7, count(*) FROM routed GROUP BY v % 7)
UNION ALL (SELECT v % 7, count(*) FROM routed GROUP BY v % 7 EXCEPT SELECT m, n FROM routed_expr);
SELECT stp_drop_job('routed_cols', drop_result => true);
SELECT stp_drop_job('routed_expr', drop_result => true);
DROP VIEW routed_batch;
DROP TABLE routed;

-- Batches of new rows only are merged without reading the source; any
-- other batch recomputes the groups it touched, under a snapshot that may
-- already see transactions decoded later.  Those must be recomputed, not
-- merged, or they would count twice: one-row batches, and transactions
-- that each delete one row of a group and insert two, then insert only.
CREATE TABLE dbl (id int PRIMARY KEY, k int, v int);
ALTER TABLE dbl REPLICA IDENTITY FULL;
INSERT INTO dbl SELECT i, i % 3, i FROM generate_series(1, 30) i;
CREATE VIEW dbl_batch AS
SELECT k, count(*) AS n, sum(v) AS s, min(v) AS lo, max(v) AS hi FROM dbl GROUP BY k;
SELECT stp_start_job('dbl_sums', 'SELECT k, count(*) AS n, sum(v) AS s, min(v) AS lo, max(v) AS hi FROM dbl GROUP BY k',
                     'dbl_sums', source => 'slot', batch_size => 1) > 0 AS started;
SELECT stp_wait('dbl_sums');
CREATE PROCEDURE dbl_writes(n int) LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1 .. n LOOP
        DELETE FROM dbl WHERE id = (SELECT min(id) FROM dbl WHERE k = i % 3);
        INSERT INTO dbl VALUES (1000 + 2 * i, i % 3, i), (1001 + 2 * i, i % 3, -i);
        COMMIT;
        INSERT INTO dbl VALUES (5000 + i, i % 3, 7 * i);
        COMMIT;
        PERFORM pg_sleep(0.002);
    END LOOP;
END $$;
CALL dbl_writes(300);
INSERT INTO dbl SELECT 9000 + i, i % 4, i FROM generate_series(1, 100) i;
SELECT stp_wait('dbl_sums');
(SELECT * FROM dbl_sums EXCEPT SELECT * FROM dbl_batch)
UNION ALL (SELECT * FROM dbl_batch EXCEPT SELECT * FROM dbl_sums);
SELECT count(*) AS groups FROM dbl_sums;
SELECT stp_drop_job('dbl_sums', drop_result => true);
DROP PROCEDURE dbl_writes;
DROP VIEW dbl_batch;
DROP TABLE dbl;

-- A job whose aggregates are counts, and sums and averages of integers,
-- takes an old row back by subtracting it, and does not read the touched
-- groups from the source.  Its result keeps each sum's count
-- of values (_stp_<name>_count) and, without count(*), each group's row
-- count (_stp_rows).  A sum whose last value is deleted or set to NULL
-- becomes NULL; a group whose last row goes leaves the result, NULL keys
-- included; FILTER applies to old rows as to new ones.  Float and numeric
-- sums cannot be subtracted exactly (a numeric sum shows the largest scale
-- of its values, and a NaN cannot be taken back): that job computes its
-- touched groups again.  The results are compared as text, which tells
-- 1.0 from 1.00.
CREATE TABLE ret (id int PRIMARY KEY, k int, t text, i4 int, i8 bigint, num numeric(12, 4), f float8, u numeric);
ALTER TABLE ret REPLICA IDENTITY FULL;
INSERT INTO ret SELECT i, i % 4, CASE WHEN i % 5 = 0 THEN NULL ELSE 't' || (i % 2) END,
                       i, i * 1000000000000, i / 8.0, i / 3.0, i / 8.0
FROM generate_series(1, 40) i;
CREATE VIEW ret_batch AS
SELECT k, t, count(*) AS n, count(num) AS cn, sum(i4) AS s4, sum(i8) AS s8,
       sum(i4) FILTER (WHERE i4 % 2 = 0) AS sne, avg(i8) AS av, avg(i4) AS a4
FROM ret GROUP BY k, t;
CREATE VIEW ret2_batch AS
SELECT t, sum(i8) AS s, count(i4) FILTER (WHERE k > 0) AS c FROM ret GROUP BY t;
CREATE VIEW ret3_batch AS SELECT k, sum(f) AS sf, sum(num) AS su, avg(u) AS au FROM ret GROUP BY k;
SELECT stp_start_job('ret_sums', 'SELECT k, t, count(*) AS n, count(num) AS cn, sum(i4) AS s4, sum(i8) AS s8,
                                  sum(i4) FILTER (WHERE i4 % 2 = 0) AS sne, avg(i8) AS av, avg(i4) AS a4
                                  FROM ret GROUP BY k, t',
                     'ret_sums', partitions => 2, source => 'slot') > 0 AS started;
SELECT stp_start_job('ret_nocount', 'SELECT t, sum(i8) AS s, count(i4) FILTER (WHERE k > 0) AS c FROM ret GROUP BY t',
                     'ret_nocount', source => 'slot', batch_size => 3) > 0 AS started;
SELECT stp_start_job('ret_float', 'SELECT k, sum(f) AS sf, sum(num) AS su, avg(u) AS au FROM ret GROUP BY k',
                     'ret_float', source => 'slot') > 0 AS started;
SELECT attrelid::regclass AS result, attname FROM pg_attribute
WHERE attrelid IN ('ret_sums'::regclass, 'ret_nocount'::regclass, 'ret_float'::regclass)
  AND attname LIKE '\_stp\_%' ORDER BY 1, 2;
CREATE FUNCTION ret_diff() RETURNS TABLE (side text, r text) LANGUAGE sql AS $$
    (SELECT 'job', ROW(k, t, n, cn, s4, s8, sne, av, a4)::text FROM ret_sums
     EXCEPT SELECT 'job', ROW(b.*)::text FROM ret_batch b)
    UNION ALL (SELECT 'batch', ROW(b.*)::text FROM ret_batch b
     EXCEPT SELECT 'batch', ROW(k, t, n, cn, s4, s8, sne, av, a4)::text FROM ret_sums)
    UNION ALL (SELECT 'job2', ROW(t, s, c)::text FROM ret_nocount
     EXCEPT SELECT 'job2', ROW(b.*)::text FROM ret2_batch b)
    UNION ALL (SELECT 'batch2', ROW(b.*)::text FROM ret2_batch b
     EXCEPT SELECT 'batch2', ROW(t, s, c)::text FROM ret_nocount)
    UNION ALL (SELECT 'job3', ROW(k, sf, su, au)::text FROM ret_float
     EXCEPT SELECT 'job3', ROW(b.*)::text FROM ret3_batch b)
    UNION ALL (SELECT 'batch3', ROW(b.*)::text FROM ret3_batch b
     EXCEPT SELECT 'batch3', ROW(k, sf, su, au)::text FROM ret_float)
    ORDER BY 1, 2
$$;
SELECT stp_wait('ret_sums') AND stp_wait('ret_nocount') AND stp_wait('ret_float') AS caught_up;
SELECT * FROM ret_diff();
UPDATE ret SET num = NULL WHERE k = 1;
UPDATE ret SET u = NULL WHERE id = 1;
UPDATE ret SET i4 = i4 + 1, i8 = -i8 WHERE k = 2;
UPDATE ret SET k = 5 WHERE id IN (3, 7);
UPDATE ret SET t = NULL WHERE id = 6;
DELETE FROM ret WHERE k = 0;
INSERT INTO ret VALUES (100, NULL, NULL, NULL, NULL, NULL, NULL, NULL), (101, 6, 'x', 1, 1, 1.5, 1, 1.5);
DELETE FROM ret WHERE id = 101;
INSERT INTO ret VALUES (102, 2, 't0', 2, 2, 'NaN', 1, 1);
DELETE FROM ret WHERE id = 102;
-- A new group whose only value goes in the same transaction: its sums are NULL.
BEGIN;
INSERT INTO ret VALUES (103, 7, 'y', NULL, NULL, NULL, NULL, NULL), (104, 7, 'y', 4, 4, 4, 4, 4);
DELETE FROM ret WHERE id = 104;
COMMIT;
BEGIN;
DELETE FROM ret;
ROLLBACK;
SELECT stp_wait('ret_sums') AND stp_wait('ret_nocount') AND stp_wait('ret_float') AS caught_up;
SELECT * FROM ret_diff();
SELECT k, t, n, cn, s4, sne, av FROM ret_sums ORDER BY k, t;
SELECT * FROM ret_nocount ORDER BY t;
-- Every row goes, then one comes back.
DELETE FROM ret;
SELECT stp_wait('ret_sums') AND stp_wait('ret_nocount') AND stp_wait('ret_float') AS caught_up;
SELECT (SELECT count(*) FROM ret_sums) AS sums, (SELECT count(*) FROM ret_nocount) AS nocount,
       (SELECT count(*) FROM ret_float) AS float;
INSERT INTO ret VALUES (1, 1, 'a', NULL, NULL, NULL, NULL, NULL);
SELECT stp_wait('ret_sums') AND stp_wait('ret_nocount') AND stp_wait('ret_float') AS caught_up;
SELECT * FROM ret_diff();
SELECT * FROM ret_nocount;
-- A TRUNCATE builds the groups again, state columns included.
INSERT INTO ret SELECT i, i % 3, 't', i, i, i, i, i FROM generate_series(2, 20) i;
TRUNCATE ret;
INSERT INTO ret SELECT i, i % 2, 'u', i, NULL, i, i, i FROM generate_series(1, 9) i;
SELECT stp_wait('ret_sums') AND stp_wait('ret_nocount') AND stp_wait('ret_float') AS caught_up;
DELETE FROM ret WHERE id > 6;
UPDATE ret SET i4 = NULL WHERE id = 2;
SELECT stp_wait('ret_sums') AND stp_wait('ret_nocount') AND stp_wait('ret_float') AS caught_up;
SELECT * FROM ret_diff();
SELECT * FROM ret_nocount;
-- A job whose aggregates all retract never reads its source once its
-- groups are built: not in the first batch after its worker starts again,
-- nor after a TRUNCATE, which empties its groups at that point of the
-- stream.  The source's scan counters do not move while the job catches
-- up; the worker reports its statistics when it goes idle, and the test
-- waits for the result table's to move first.
CREATE TABLE ret_blind_src (id int PRIMARY KEY, k int, v int);
ALTER TABLE ret_blind_src REPLICA IDENTITY FULL;
INSERT INTO ret_blind_src SELECT i, i % 3, i FROM generate_series(1, 30) i;
CREATE VIEW ret_blind_batch AS
SELECT k, count(*) AS n, sum(v) AS s, avg(v) AS a FROM ret_blind_src GROUP BY k;
SELECT stp_start_job('ret_blind', 'SELECT k, count(*) AS n, sum(v) AS s, avg(v) AS a FROM ret_blind_src GROUP BY k',
                     'ret_blind', partitions => 2, source => 'slot') > 0 AS started;
SELECT stp_wait('ret_blind') AS caught_up;
SELECT stp_stop_job('ret_blind');
CREATE FUNCTION ret_blind_reads() RETURNS bigint LANGUAGE sql AS $$
    SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables
    WHERE relid = 'ret_blind_src'::regclass
$$;
CREATE FUNCTION ret_blind_writes() RETURNS bigint LANGUAGE sql AS $$
    SELECT n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_user_tables
    WHERE relid = 'ret_blind'::regclass
$$;
-- Once the job caught up and its worker reported writes to its result:
-- how many scans of the source were reported since.
CREATE FUNCTION ret_blind_caught_up(reads bigint, writes bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT stp_wait('ret_blind') THEN
        RAISE EXCEPTION 'job ret_blind did not catch up';
    END IF;
    FOR i IN 1 .. 600 LOOP
        PERFORM pg_stat_clear_snapshot();
        IF ret_blind_writes() > writes THEN
            RETURN ret_blind_reads() - reads;
        END IF;
        PERFORM pg_sleep(0.05);
    END LOOP;
    RAISE EXCEPTION 'the worker reported no writes to its result';
END $$;
CREATE FUNCTION ret_blind_diff() RETURNS TABLE (side text, k int, n bigint, s bigint, a numeric)
LANGUAGE sql AS $$
    (SELECT 'job', k, n, s, a FROM ret_blind EXCEPT SELECT 'job', * FROM ret_blind_batch)
    UNION ALL
    (SELECT 'batch', * FROM ret_blind_batch EXCEPT SELECT 'batch', k, n, s, a FROM ret_blind)
$$;
UPDATE ret_blind_src SET k = k + 1 WHERE id % 4 = 0;
DELETE FROM ret_blind_src WHERE id % 5 = 0;
INSERT INTO ret_blind_src VALUES (31, NULL, 7);
SELECT pg_stat_force_next_flush();
SELECT ret_blind_reads() AS reads, ret_blind_writes() AS writes \gset
SELECT stp_resume_job('ret_blind');
SELECT ret_blind_caught_up(:reads, :writes) AS source_reads;
SELECT * FROM ret_blind_diff();
SELECT stp_stop_job('ret_blind');
BEGIN;
INSERT INTO ret_blind_src VALUES (40, 9, 9);
UPDATE ret_blind_src SET v = v + 1 WHERE id = 1;
TRUNCATE ret_blind_src;
INSERT INTO ret_blind_src SELECT i, i % 2, i FROM generate_series(1, 6) i;
UPDATE ret_blind_src SET k = 5 WHERE id = 1;
COMMIT;
DELETE FROM ret_blind_src WHERE id = 2;
SELECT pg_stat_force_next_flush();
SELECT ret_blind_reads() AS reads, ret_blind_writes() AS writes \gset
SELECT stp_resume_job('ret_blind');
SELECT ret_blind_caught_up(:reads, :writes) AS source_reads;
SELECT * FROM ret_blind_diff();
SELECT k, n, s FROM ret_blind ORDER BY k;
SELECT stp_drop_job('ret_blind', drop_result => true);
DROP FUNCTION ret_blind_caught_up, ret_blind_diff, ret_blind_reads, ret_blind_writes;
DROP VIEW ret_blind_batch;
DROP TABLE ret_blind_src;
SELECT stp_drop_job('ret_sums', drop_result => true);
SELECT stp_drop_job('ret_nocount', drop_result => true);
SELECT stp_drop_job('ret_float', drop_result => true);
DROP FUNCTION ret_diff;
DROP VIEW ret_batch, ret2_batch, ret3_batch;
DROP TABLE ret;

-- Catalog changes while a slot job runs.  Its worker keeps its catalog
-- caches from one step to the next while no catalog change can lie
-- between decoding and its own statements, and drops them otherwise.
-- Columns are added to and dropped from the source, alone and in
-- transactions that also write rows; other tables are created in
-- transactions that write rows.  Each row must decode with the columns it
-- was written with, and the result must equal the batch query.
CREATE TABLE ddl_src (id int PRIMARY KEY, k int, v int);
ALTER TABLE ddl_src REPLICA IDENTITY FULL;
CREATE VIEW ddl_batch AS
SELECT k, count(*) AS n, sum(v) AS s, min(v) AS lo, max(v) AS hi FROM ddl_src GROUP BY k;
SELECT stp_start_job('ddl_sums', 'SELECT k, count(*) AS n, sum(v) AS s, min(v) AS lo, max(v) AS hi FROM ddl_src GROUP BY k',
                     'ddl_sums', source => 'slot') > 0 AS started;
CREATE PROCEDURE ddl_writes(n int) LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1 .. n LOOP
        INSERT INTO ddl_src VALUES (4 * i, i % 5, i);
        COMMIT;
        EXECUTE format('ALTER TABLE ddl_src ADD COLUMN c%s text DEFAULT %L', i, repeat('x', i));
        INSERT INTO ddl_src (id, k, v) VALUES (4 * i + 1, i % 5, 2 * i);
        COMMIT;
        UPDATE ddl_src SET v = v + 1 WHERE id = 4 * i;
        EXECUTE format('CREATE TABLE ddl_other%s (x int)', i);
        INSERT INTO ddl_src (id, k, v) VALUES (4 * i + 2, (i + 1) % 5, 3 * i);
        COMMIT;
        IF i % 2 = 0 THEN
            EXECUTE format('ALTER TABLE ddl_src DROP COLUMN c%s', i - 1);
            DELETE FROM ddl_src WHERE id = 4 * (i - 1) + 1;
            COMMIT;
        END IF;
        PERFORM pg_sleep(0.01);
    END LOOP;
END $$;
CALL ddl_writes(40);
SELECT stp_wait('ddl_sums');
SELECT state <> 'failed' AS healthy, last_error FROM stp.job_status WHERE job_name = 'ddl_sums';
(SELECT * FROM ddl_sums EXCEPT SELECT * FROM ddl_batch)
UNION ALL (SELECT * FROM ddl_batch EXCEPT SELECT * FROM ddl_sums);
SELECT count(*) AS groups, sum(n) AS n FROM ddl_sums;
SELECT stp_drop_job('ddl_sums', drop_result => true);
DO $$
BEGIN
    FOR i IN 1 .. 40 LOOP
        EXECUTE format('DROP TABLE ddl_other%s', i);
    END LOOP;
END $$;
DROP PROCEDURE ddl_writes;
DROP VIEW ddl_batch;
DROP TABLE ddl_src;

-- Dropping the jobs drops their slots.
SELECT stp_drop_job('plain_counts', drop_result => true);
SELECT stp_drop_job('acct_sums', drop_result => true);
SELECT count(*) AS slots_left FROM pg_replication_slots WHERE slot_name LIKE 'stp\_%';

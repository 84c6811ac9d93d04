-- Partitioned sources: a source partitioned BY HASH on group keys is read
-- leaf by leaf (mode "leaves"); any other partitioned source is read
-- through its parent and routed per row (mode "route").

-- Hash on the group key, a bigserial order column: rows inserted through
-- the parent and straight into a leaf (the leaves inherit the default and
-- share the parent's sequence).
CREATE TABLE lv_hash (id bigserial, k int, v int) PARTITION BY HASH (k);
CREATE TABLE lv_hash_0 PARTITION OF lv_hash FOR VALUES WITH (MODULUS 4, REMAINDER 0);
CREATE TABLE lv_hash_1 PARTITION OF lv_hash FOR VALUES WITH (MODULUS 4, REMAINDER 1);
CREATE TABLE lv_hash_2 PARTITION OF lv_hash FOR VALUES WITH (MODULUS 4, REMAINDER 2);
CREATE TABLE lv_hash_3 PARTITION OF lv_hash FOR VALUES WITH (MODULUS 4, REMAINDER 3);
INSERT INTO lv_hash (k, v) SELECT g % 50, g FROM generate_series(1, 3000) g;
SELECT stp_start_job('lv_job', 'SELECT k, count(*) AS n, sum(v) AS s FROM lv_hash GROUP BY k',
                     'lv_r', partitions => 3, batch_size => 700) > 0 AS started;
SELECT partition, mode, leaves FROM stp.job_status WHERE job_name = 'lv_job' ORDER BY partition;
SELECT leaves FROM stp.jobs WHERE job_name = 'lv_job';
-- Straight into leaves, with the leaf's inherited default, and through the parent.
INSERT INTO lv_hash_0 (k, v) SELECT k, 1 FROM (SELECT DISTINCT k FROM lv_hash_0) d;
INSERT INTO lv_hash_3 (k, v) SELECT k, 2 FROM (SELECT DISTINCT k FROM lv_hash_3) d;
INSERT INTO lv_hash (k, v) SELECT g % 70, g FROM generate_series(1, 2000) g;
CALL stp_await('lv_job', '60 s');
SELECT stp_test_diff('lv_r', 'k, n, s', 'SELECT k, count(*), sum(v) FROM lv_hash GROUP BY k');
SELECT sum(n) AS counted, (SELECT count(*) FROM lv_hash) AS rows FROM lv_r;
-- A leaf renamed under the job is read by its new name.
ALTER TABLE lv_hash_1 RENAME TO lv_hash_one;
INSERT INTO lv_hash (k, v) SELECT g % 70, g FROM generate_series(1, 500) g;
CALL stp_await('lv_job', '60 s');
SELECT stp_test_diff('lv_r', 'k, n, s', 'SELECT k, count(*), sum(v) FROM lv_hash GROUP BY k');
SELECT partition, leaves FROM stp.job_status WHERE job_name = 'lv_job' ORDER BY partition;
ALTER TABLE lv_hash_one RENAME TO lv_hash_1;
-- Each partition read only its own leaves: every row once.
SELECT sum(rows_processed) = (SELECT count(*) FROM lv_hash) AS once
FROM stp.job_status WHERE job_name = 'lv_job';

-- An identity column on a partitioned parent is not inherited by its
-- leaves on PostgreSQL 15: inserts through the parent draw ids, a direct
-- leaf INSERT must give one and fails without.
CREATE TABLE lv_ident (id bigint GENERATED ALWAYS AS IDENTITY, k text, v int) PARTITION BY HASH (k);
CREATE TABLE lv_ident_0 PARTITION OF lv_ident FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE lv_ident_1 PARTITION OF lv_ident FOR VALUES WITH (MODULUS 2, REMAINDER 1);
INSERT INTO lv_ident (k, v) SELECT 'k' || (g % 20), g FROM generate_series(1, 1000) g;
SELECT stp_start_job('lv_ident_job', 'SELECT k, count(*) AS n, max(v) AS m FROM lv_ident GROUP BY k',
                     'lv_ident_r', partitions => 2, batch_size => 300) > 0 AS started;
INSERT INTO lv_ident_0 (k, v) VALUES ('k1', 5);
INSERT INTO lv_ident (k, v) SELECT 'k' || (g % 30), g FROM generate_series(1, 500) g;
CALL stp_await('lv_ident_job', '60 s');
SELECT stp_test_diff('lv_ident_r', 'k, n, m', 'SELECT k, count(*), max(v) FROM lv_ident GROUP BY k');
SELECT partition, mode, leaves FROM stp.job_status WHERE job_name = 'lv_ident_job' ORDER BY partition;

-- More partitions than leaves are refused.
SELECT stp_start_job('lv_many', 'SELECT k, count(*) AS n FROM lv_ident GROUP BY k', 'lv_many_r', partitions => 3);

-- Partitioned otherwise: read through the parent, routed, with a NOTICE.
-- A range-partitioned source whose leaves hold time ranges, with rows
-- straight into a leaf, and a leaf created while the job runs.
CREATE TABLE lv_range (id bigserial, ts timestamp, k int) PARTITION BY RANGE (ts);
CREATE TABLE lv_range_1 PARTITION OF lv_range FOR VALUES FROM ('2026-01-01') TO ('2026-02-01');
CREATE TABLE lv_range_2 PARTITION OF lv_range FOR VALUES FROM ('2026-02-01') TO ('2026-03-01');
INSERT INTO lv_range (ts, k) SELECT '2026-01-01'::timestamp + g * interval '1 hour', g % 7
FROM generate_series(0, 1000) g;
SELECT stp_start_job('lv_range_job',
                     $$SELECT k, date_trunc('month', ts) AS month, count(*) AS n FROM lv_range GROUP BY k, month$$,
                     'lv_range_r', partitions => 2, batch_size => 300) > 0 AS started;
SELECT DISTINCT mode, leaves FROM stp.job_status WHERE job_name = 'lv_range_job';
INSERT INTO lv_range_2 (ts, k) VALUES ('2026-02-10', 3), ('2026-02-11', 4);
CREATE TABLE lv_range_3 PARTITION OF lv_range FOR VALUES FROM ('2026-03-01') TO ('2026-04-01');
INSERT INTO lv_range (ts, k) SELECT '2026-02-20'::timestamp + g * interval '1 hour', g % 9
FROM generate_series(0, 500) g;
CALL stp_await('lv_range_job', '60 s');
SELECT stp_test_diff('lv_range_r', 'k, month, n',
                     $$SELECT k, date_trunc('month', ts), count(*) FROM lv_range GROUP BY 1, 2$$);
SELECT bool_and(state IN ('idle', 'running')) AS alive FROM stp.job_status WHERE job_name = 'lv_range_job';

-- Hash on a column the GROUP BY lacks, and list partitioning: routed.
CREATE TABLE lv_other (id bigserial, k int, j int) PARTITION BY HASH (j);
CREATE TABLE lv_other_0 PARTITION OF lv_other FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE lv_other_1 PARTITION OF lv_other FOR VALUES WITH (MODULUS 2, REMAINDER 1);
INSERT INTO lv_other (k, j) SELECT g % 11, g FROM generate_series(1, 800) g;
SELECT stp_start_job('lv_other_job', 'SELECT k, count(*) AS n FROM lv_other GROUP BY k',
                     'lv_other_r', partitions => 2) > 0 AS started;
CALL stp_await('lv_other_job', '60 s');
SELECT stp_test_diff('lv_other_r', 'k, n', 'SELECT k, count(*) FROM lv_other GROUP BY k');
SELECT DISTINCT mode FROM stp.job_status WHERE job_name = 'lv_other_job';
CREATE TABLE lv_list (id bigserial, k int) PARTITION BY LIST (k);
CREATE TABLE lv_list_a PARTITION OF lv_list FOR VALUES IN (1, 2);
SELECT stp_start_job('lv_list_job', 'SELECT k, count(*) AS n FROM lv_list GROUP BY k', 'lv_list_r') > 0 AS started;
CREATE TABLE lv_expr (id bigserial, k text) PARTITION BY HASH (lower(k));
CREATE TABLE lv_expr_0 PARTITION OF lv_expr FOR VALUES WITH (MODULUS 1, REMAINDER 0);
SELECT stp_start_job('lv_expr_job', 'SELECT k, count(*) AS n FROM lv_expr GROUP BY k', 'lv_expr_r') > 0 AS started;
CREATE TABLE lv_coll (id bigserial, k text) PARTITION BY HASH (k COLLATE "C");
CREATE TABLE lv_coll_0 PARTITION OF lv_coll FOR VALUES WITH (MODULUS 1, REMAINDER 0);
SELECT stp_start_job('lv_coll_job', 'SELECT k, count(*) AS n FROM lv_coll GROUP BY k', 'lv_coll_r') > 0 AS started;
SELECT stp_drop_job('lv_list_job', true), stp_drop_job('lv_expr_job', true), stp_drop_job('lv_coll_job', true);

-- Leaves that change under a job.  Leaves mode: any change fails the job.
ALTER TABLE lv_hash DETACH PARTITION lv_hash_3;
SELECT * FROM stp_test_failed('lv_job');
ALTER TABLE lv_hash ATTACH PARTITION lv_hash_3 FOR VALUES WITH (MODULUS 4, REMAINDER 3);
SELECT stp_resume_job('lv_job');
CALL stp_await('lv_job', '60 s');
SELECT stp_test_diff('lv_r', 'k, n, s', 'SELECT k, count(*), sum(v) FROM lv_hash GROUP BY k');
-- An unlogged leaf.
ALTER TABLE lv_ident_1 SET UNLOGGED;
SELECT * FROM stp_test_failed('lv_ident_job');
-- Route mode: ATTACH, DETACH and DROP of a leaf fail the job, TRUNCATE too.
CREATE TABLE lv_range_x (id bigint NOT NULL DEFAULT nextval('lv_range_id_seq'), ts timestamp, k int);
INSERT INTO lv_range_x (ts, k) VALUES ('2026-04-02', 1);
ALTER TABLE lv_range ATTACH PARTITION lv_range_x FOR VALUES FROM ('2026-04-01') TO ('2026-05-01');
SELECT * FROM stp_test_failed('lv_range_job');
SELECT stp_resume_job('lv_range_job');
DROP TABLE lv_range_x;
SELECT * FROM stp_test_failed('lv_range_job');
SELECT stp_resume_job('lv_range_job');
ALTER TABLE lv_range DETACH PARTITION lv_range_3;
SELECT * FROM stp_test_failed('lv_range_job');
SELECT stp_resume_job('lv_range_job');
-- (the message names the partitioned table the job reads)
TRUNCATE lv_range_1;
SELECT * FROM stp_test_failed('lv_range_job');

SELECT stp_drop_job(job_name, true) FROM stp.jobs WHERE job_name LIKE 'lv%';
DROP TABLE lv_hash, lv_ident, lv_range, lv_range_3, lv_other, lv_list, lv_expr, lv_coll;

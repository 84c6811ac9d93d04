-- DISTINCT aggregates in the chunk layout: one row per group and batch,
-- holding the batch's new values as a sorted array.  Each job's result
-- equals its batch query, at 1 and 3 partitions, over small batches whose
-- values repeat across batches and groups.
SET stp.distinct_layout = chunks;
CREATE TABLE dsc (
    id bigint GENERATED ALWAYS AS IDENTITY,
    grp int, sub text, v int4, y numeric, t text, f float8
);
CREATE COLLATION dsc_ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
INSERT INTO dsc (grp, sub, v, y, t, f)
SELECT CASE WHEN g % 29 = 0 THEN NULL ELSE g % 5 END,
       CASE WHEN g % 7 = 0 THEN NULL ELSE 's' || (g % 3) END,
       CASE WHEN g % 11 = 0 THEN NULL ELSE g % 17 END,
       -- 1.0 and 1.00 are one value, as are 2.5 and 2.50
       CASE WHEN g % 13 = 0 THEN NULL WHEN g % 2 = 0 THEN (g % 4)::numeric(4,1)
            ELSE (g % 4)::numeric(5,2) END,
       CASE WHEN g % 3 = 0 THEN 'Tag' || (g % 4) ELSE 'tAG' || (g % 4) END,
       -- 0 and -0 are one value, NaN is one value
       CASE g % 5 WHEN 0 THEN 0.0 WHEN 1 THEN -0.0 WHEN 2 THEN 'NaN' ELSE g % 3 END
FROM generate_series(1, 300) g;

-- Two keys, both with NULLs, one of them under a nondeterministic collation.
SELECT stp_start_job('dsc_count' || p, $$
    SELECT grp, sub COLLATE dsc_ci AS sub,
           count(DISTINCT v) AS n_v,
           count(DISTINCT y) AS n_y,
           count(DISTINCT v) FILTER (WHERE t LIKE 'T%') AS n_v_t,
           count(DISTINCT t COLLATE dsc_ci) AS n_t_ci,
           count(DISTINCT t) AS n_t,
           count(DISTINCT f) AS n_f,
           count(*) AS n
    FROM dsc GROUP BY grp, sub COLLATE dsc_ci$$, 'dsc_count' || p,
    partitions => p, batch_size => 7) > 0 AS started
FROM (VALUES (1), (3)) v(p);

-- sum(DISTINCT x) and avg(DISTINCT x).
SELECT stp_start_job('dsc_sum' || p, $$
    SELECT grp, sum(DISTINCT v) AS s_v, sum(DISTINCT y) AS s_y,
           avg(DISTINCT v) AS a_v, avg(DISTINCT y) AS a_y,
           avg(DISTINCT v::float8) FILTER (WHERE sub <> 's2') AS a_f,
           count(DISTINCT v) AS n_v, sum(v) AS sum_v
    FROM dsc GROUP BY grp$$, 'dsc_sum' || p, partitions => p, batch_size => 7) > 0 AS started
FROM (VALUES (1), (3)) v(p);

-- Five keys, more than the NULL patterns stp probes one by one.
SELECT stp_start_job('dsc_five', $$
    SELECT grp, sub, v % 2 AS a, y, t, count(DISTINCT f) AS n_f
    FROM dsc GROUP BY grp, sub, v % 2, y, t$$, 'dsc_five', batch_size => 11) > 0 AS started;

-- Rows that arrive after the jobs run; values seen before count once.
INSERT INTO dsc (grp, sub, v, y, t, f)
SELECT g % 6, 's' || (g % 4), g % 23, (g % 5)::numeric(6,3), 'TAG' || (g % 6),
       CASE WHEN g % 2 = 0 THEN -0.0 ELSE 'NaN' END
FROM generate_series(1, 200) g;

SELECT stp_wait('dsc_count1', '60 s'), stp_wait('dsc_count3', '60 s'),
       stp_wait('dsc_five', '60 s');
SELECT p, stp_test_diff(('dsc_count' || p)::regclass,
    'grp, sub, n_v, n_y, n_v_t, n_t_ci, n_t, n_f, n',
    $$SELECT grp, sub COLLATE dsc_ci, count(DISTINCT v), count(DISTINCT y),
           count(DISTINCT v) FILTER (WHERE t LIKE 'T%'),
           count(DISTINCT t COLLATE dsc_ci), count(DISTINCT t), count(DISTINCT f), count(*)
      FROM dsc GROUP BY grp, sub COLLATE dsc_ci$$) AS diff
FROM (VALUES (1), (3)) v(p);
SELECT * FROM dsc_count3 ORDER BY grp NULLS FIRST, sub NULLS FIRST;
SELECT stp_test_diff('dsc_five', 'grp, sub, a, y, t, n_f',
    $$SELECT grp, sub, v % 2, y, t, count(DISTINCT f) FROM dsc GROUP BY grp, sub, v % 2, y, t$$) AS diff;
SELECT stp_wait('dsc_sum1', '60 s'), stp_wait('dsc_sum3', '60 s');
SELECT p, stp_test_diff(('dsc_sum' || p)::regclass,
    's_v, s_y, a_v, a_y, round(a_f::numeric, 9), n_v, sum_v',
    $$SELECT sum(DISTINCT v), sum(DISTINCT y), avg(DISTINCT v), avg(DISTINCT y),
           round((avg(DISTINCT v::float8) FILTER (WHERE sub <> 's2'))::numeric, 9),
           count(DISTINCT v), sum(v)
      FROM dsc GROUP BY grp$$) AS diff
FROM (VALUES (1), (3)) v(p);
SELECT grp, s_v, a_v, n_v FROM dsc_sum1 ORDER BY grp NULLS FIRST;

-- The distinct tables: the keys and an array of values, stored without
-- compression, with a plain index on the keys.
SELECT * FROM stp_test_types('dsc_count1_state_distinct_2');
SELECT attname, attstorage FROM pg_attribute
WHERE attrelid = 'dsc_count1_state_distinct_2'::regclass AND attname = '_stp_values';
SELECT c.relname, pg_catalog.pg_get_indexdef(i.indexrelid)
FROM pg_class c JOIN pg_index i ON i.indrelid = c.oid
WHERE c.relname LIKE 'dsc_count1_state_distinct_%' ORDER BY 1;
-- Every (group, value) once over all chunks, each chunk sorted, no NULLs.
SELECT sum(cardinality(_stp_values)) = (SELECT count(*) FROM (SELECT DISTINCT grp, sub COLLATE dsc_ci, v
           FROM dsc WHERE v IS NOT NULL) d) AS each_once,
       bool_and(_stp_values = ARRAY(SELECT u FROM unnest(_stp_values) u ORDER BY u)) AS sorted,
       bool_and(array_position(_stp_values, NULL) IS NULL) AS no_nulls
FROM dsc_count1_state_distinct_0;
SELECT stp_drop_job(j, true) FROM unnest(ARRAY['dsc_count1', 'dsc_count3', 'dsc_five', 'dsc_sum1', 'dsc_sum3']) j;
SELECT count(*) AS left_over FROM pg_class WHERE relname LIKE 'dsc\_count%' OR relname LIKE 'dsc\_sum%';

-- Batch by batch: a value seen in batch 1 comes again in batch 3 of the
-- same group; one value in two groups; a group with a NULL key in three
-- batches.  Each batch is one stp_wait.
CREATE TABLE dsb (id bigint GENERATED ALWAYS AS IDENTITY, k int, v int);
SELECT stp_start_job('dsb_count', $$
    SELECT k, count(DISTINCT v) AS n, sum(DISTINCT v) AS s, count(*) AS c
    FROM dsb GROUP BY k$$, 'dsb_count', batch_size => 1000) > 0 AS started;
INSERT INTO dsb (k, v) VALUES (1, 10), (1, 11), (2, 10), (NULL, 10), (NULL, 12);
SELECT stp_wait('dsb_count', '60 s');
INSERT INTO dsb (k, v) VALUES (1, 12), (2, 11), (NULL, 13), (NULL, NULL);
SELECT stp_wait('dsb_count', '60 s');
INSERT INTO dsb (k, v) VALUES (1, 10), (1, 11), (1, 13), (2, 10), (2, 12), (NULL, 10), (NULL, 12), (NULL, 14);
SELECT stp_wait('dsb_count', '60 s');
SELECT * FROM dsb_count ORDER BY k NULLS FIRST;
SELECT stp_test_diff('dsb_count', 'k, n, s, c',
    'SELECT k, count(DISTINCT v), sum(DISTINCT v), count(*) FROM dsb GROUP BY k') AS diff;
-- A chunk per group and batch, each with only the values new to the
-- group: none empty, none repeated.
SELECT k, array_agg(_stp_values::text ORDER BY _stp_values) AS chunks
FROM dsb_count_state_distinct_0 GROUP BY k ORDER BY k NULLS FIRST;
SELECT stp_drop_job('dsb_count', true);

-- stp.distinct_layout 'auto' (the default) keeps chunks for a job whose
-- group key is a time bucket, and pairs otherwise; a query without GROUP
-- BY has one group for ever, and keeps pairs whatever the setting.
RESET stp.distinct_layout;
SHOW stp.distinct_layout;
ALTER TABLE dsb ADD COLUMN ts timestamptz DEFAULT '2024-01-01 10:00:00+00';
SELECT stp_start_job('dsb_minute', $$
    SELECT k, date_bin('1 minute', ts, 'epoch') AS m, count(DISTINCT v) AS n
    FROM dsb GROUP BY k, m$$, 'dsb_minute') > 0 AS started;
SELECT stp_start_job('dsb_hour', $$
    SELECT date_trunc('hour', ts) AS h, count(DISTINCT v) AS n
    FROM dsb GROUP BY h$$, 'dsb_hour') > 0 AS started;
SELECT stp_start_job('dsb_key', $$
    SELECT k, count(DISTINCT v) AS n FROM dsb GROUP BY k$$, 'dsb_key') > 0 AS started;
SET stp.distinct_layout = chunks;
SELECT stp_start_job('dsb_total', $$
    SELECT count(DISTINCT v) AS n FROM dsb$$, 'dsb_total') > 0 AS started;
SET stp.distinct_layout = pairs;
SELECT stp_start_job('dsb_minute_pairs', $$
    SELECT k, date_bin('1 minute', ts, 'epoch') AS m, count(DISTINCT v) AS n
    FROM dsb GROUP BY k, m$$, 'dsb_minute_pairs') > 0 AS started;
SELECT c.relname, a.attname
FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
WHERE c.relname LIKE 'dsb\_%\_state\_distinct\_0' AND a.attname LIKE '\_stp\_value%'
ORDER BY 1;
SELECT stp_wait(j, '60 s') FROM unnest(ARRAY['dsb_minute', 'dsb_hour', 'dsb_key', 'dsb_total', 'dsb_minute_pairs']) j;
SELECT stp_test_diff('dsb_minute', 'k, m, n',
    $$SELECT k, date_bin('1 minute', ts, 'epoch'), count(DISTINCT v) FROM dsb GROUP BY 1, 2$$) AS diff;
SELECT stp_test_diff('dsb_minute_pairs', 'k, m, n',
    $$SELECT k, date_bin('1 minute', ts, 'epoch'), count(DISTINCT v) FROM dsb GROUP BY 1, 2$$) AS diff;
SELECT stp_test_diff('dsb_hour', 'h, n',
    $$SELECT date_trunc('hour', ts), count(DISTINCT v) FROM dsb GROUP BY 1$$) AS diff;
SELECT n FROM dsb_total;
SELECT stp_drop_job(j, true) FROM unnest(ARRAY['dsb_minute', 'dsb_hour', 'dsb_key', 'dsb_total', 'dsb_minute_pairs']) j;
SET stp.distinct_layout = 'sometimes';
RESET stp.distinct_layout;
DROP TABLE dsb, dsc;
DROP COLLATION dsc_ci;

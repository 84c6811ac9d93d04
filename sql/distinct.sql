-- count(DISTINCT x): each job's result equals its batch query, at 1 and 3
-- partitions, over many small batches whose values repeat across batches.
CREATE TABLE dst (
    id bigint GENERATED ALWAYS AS IDENTITY,
    grp int, sub text, v int4, y numeric, t text
);
CREATE COLLATION dst_ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
INSERT INTO dst (grp, sub, v, y, t)
SELECT CASE WHEN g % 29 = 0 THEN NULL ELSE g % 5 END,
       CASE WHEN g % 7 = 0 THEN NULL ELSE 's' || (g % 3) END,
       CASE WHEN g % 11 = 0 THEN NULL ELSE g % 17 END,
       -- 1.0 and 1.00 are one value, as are 2.5 and 2.50
       CASE WHEN g % 13 = 0 THEN NULL WHEN g % 2 = 0 THEN (g % 4)::numeric(4,1)
            ELSE (g % 4)::numeric(5,2) END,
       CASE WHEN g % 3 = 0 THEN 'Tag' || (g % 4) ELSE 'tAG' || (g % 4) END
FROM generate_series(1, 300) g;

SELECT stp_start_job('dst_count' || p, $$
    SELECT grp,
           count(DISTINCT v) AS n_v,
           count(DISTINCT y) AS n_y,
           count(DISTINCT v) FILTER (WHERE sub = 's1') AS n_v_s1,
           count(DISTINCT t COLLATE dst_ci) AS n_t_ci,
           count(DISTINCT t) AS n_t,
           count(*) AS n,
           sum(v) AS sum_v
    FROM dst GROUP BY grp$$, 'dst_count' || p, partitions => p, batch_size => 7) > 0 AS started
FROM (VALUES (1), (3)) v(p);

-- A query without GROUP BY, with HAVING and arithmetic on the count.
SELECT stp_start_job('dst_total', $$
    SELECT count(DISTINCT v) AS n_v, count(DISTINCT v) * 2 AS twice, count(*) AS n
    FROM dst HAVING count(DISTINCT sub) > 0$$, 'dst_total', batch_size => 7) > 0 AS started;

-- sum(DISTINCT x) and avg(DISTINCT x), from the same distinct tables.
SELECT stp_start_job('dst_sum' || p, $$
    SELECT grp, sum(DISTINCT v) AS s_v, sum(DISTINCT y) AS s_y,
           avg(DISTINCT v) AS a_v, avg(DISTINCT y) AS a_y,
           avg(DISTINCT v::float8) FILTER (WHERE sub <> 's2') AS a_f,
           sum(DISTINCT v) FILTER (WHERE sub = 's1') AS s_v_s1,
           count(DISTINCT v) AS n_v, sum(v) AS sum_v
    FROM dst GROUP BY grp$$, 'dst_sum' || p, partitions => p, batch_size => 7) > 0 AS started
FROM (VALUES (1), (3)) v(p);
SELECT stp_start_job('dst_sum_total', $$
    SELECT sum(DISTINCT v) - avg(DISTINCT v) AS d, avg(DISTINCT y::float4) AS a
    FROM dst$$, 'dst_sum_total', batch_size => 7) > 0 AS started;

-- Rows that arrive after the jobs run; values seen before count once.
INSERT INTO dst (grp, sub, v, y, t)
SELECT g % 6, 's' || (g % 4), g % 23, (g % 5)::numeric(6,3), 'TAG' || (g % 6)
FROM generate_series(1, 200) g;

SELECT stp_wait('dst_count1', '60 s'), stp_wait('dst_count3', '60 s'),
       stp_wait('dst_total', '60 s');
SELECT * FROM stp_test_types('dst_count3');
SELECT p, stp_test_diff(('dst_count' || p)::regclass,
    'grp, n_v, n_y, n_v_s1, n_t_ci, n_t, n, sum_v',
    $$SELECT grp, count(DISTINCT v), count(DISTINCT y),
           count(DISTINCT v) FILTER (WHERE sub = 's1'),
           count(DISTINCT t COLLATE dst_ci), count(DISTINCT t), count(*), sum(v)
      FROM dst GROUP BY grp$$) AS diff
FROM (VALUES (1), (3)) v(p);
SELECT * FROM stp_test_types('dst_total');
SELECT stp_test_diff('dst_total', 'n_v, twice, n',
    $$SELECT count(DISTINCT v), count(DISTINCT v) * 2, count(*)
      FROM dst HAVING count(DISTINCT sub) > 0$$) AS diff;
SELECT * FROM dst_count3 ORDER BY grp NULLS FIRST;
SELECT stp_wait('dst_sum1', '60 s'), stp_wait('dst_sum3', '60 s'),
       stp_wait('dst_sum_total', '60 s');
SELECT * FROM stp_test_types('dst_sum1');
SELECT p, stp_test_diff(('dst_sum' || p)::regclass,
    's_v, s_y, a_v, a_y, round(a_f::numeric, 9), s_v_s1, n_v, sum_v',
    $$SELECT sum(DISTINCT v), sum(DISTINCT y), avg(DISTINCT v), avg(DISTINCT y),
           round((avg(DISTINCT v::float8) FILTER (WHERE sub <> 's2'))::numeric, 9),
           sum(DISTINCT v) FILTER (WHERE sub = 's1'), count(DISTINCT v), sum(v)
      FROM dst GROUP BY grp$$) AS diff
FROM (VALUES (1), (3)) v(p);
SELECT stp_test_diff('dst_sum_total', 'd, round(a::numeric, 9)',
    $$SELECT sum(DISTINCT v) - avg(DISTINCT v), round(avg(DISTINCT y::float4)::numeric, 9)
      FROM dst$$) AS diff;
SELECT grp, s_v, a_v, s_v_s1, n_v FROM dst_sum1 ORDER BY grp NULLS FIRST;
SELECT stp_drop_job(j, true) FROM unnest(ARRAY['dst_sum1', 'dst_sum3', 'dst_sum_total']) j;

-- The distinct tables: one row per group and value, NULLs not kept.
SELECT c.relname, pg_catalog.pg_get_indexdef(i.indexrelid)
FROM pg_class c JOIN pg_index i ON i.indrelid = c.oid
WHERE c.relname LIKE 'dst_count1_state_distinct_%' ORDER BY 1;
SELECT count(*) = (SELECT count(DISTINCT (grp, v)) FROM dst WHERE v IS NOT NULL) AS one_row_each
FROM dst_count1_state_distinct_0;

-- A worker fails clearly when a distinct table is dropped.
DROP TABLE dst_count1_state_distinct_0;
INSERT INTO dst (grp, v) VALUES (1, 1000);
SELECT * FROM stp_test_failed('dst_count1');

-- stp_drop_job drops the distinct tables with the result.
SELECT stp_drop_job(j, true) FROM unnest(ARRAY['dst_count1', 'dst_count3', 'dst_total']) j;
SELECT count(*) AS left_over FROM pg_class WHERE relname LIKE 'dst\_count%' OR relname LIKE 'dst\_total%';

-- Still refused: other DISTINCT aggregates, and types without btree equality.
SELECT stp_start_job('j', 'SELECT grp, max(DISTINCT v) AS s FROM dst GROUP BY grp', 'r');
SELECT stp_start_job('j', 'SELECT grp, count(DISTINCT point(v, v)) AS s FROM dst GROUP BY grp', 'r');
DROP TABLE dst;
DROP COLLATION dst_ci;

-- 1 and 3 partitions give the same result; each group is owned by exactly
-- one partition, and routing agrees with GROUP BY's equality.
CREATE TABLE sales (id bigserial, shop int, item text, qty int);
INSERT INTO sales (shop, item, qty)
SELECT g % 17, 'item' || (g % 13), g % 5 FROM generate_series(1, 3000) g;

SELECT stp_start_job('sales_1', $$SELECT shop, item, count(*) AS n, sum(qty) AS q FROM sales GROUP BY shop, item$$,
                     'sales_1', partitions => 1, batch_size => 500) > 0 AS started;
SELECT stp_start_job('sales_3', $$SELECT shop, item, count(*) AS n, sum(qty) AS q FROM sales GROUP BY shop, item$$,
                     'sales_3', partitions => 3, batch_size => 500) > 0 AS started;
SELECT stp_wait('sales_1', '30 s'), stp_wait('sales_3', '30 s');

SELECT count(*) AS groups FROM sales_3;
SELECT count(*) AS differences FROM (
    (SELECT * FROM sales_1 EXCEPT SELECT * FROM sales_3)
    UNION ALL (SELECT * FROM sales_3 EXCEPT SELECT * FROM sales_1)) d;
SELECT stp_test_diff('sales_3', 'shop, item, n, q',
       'SELECT shop, item, count(*), sum(qty) FROM sales GROUP BY shop, item');

-- Every partition aggregated exactly the rows of the groups it owns.
SELECT s.partition, s.rows_processed = (
           SELECT count(*) FROM sales WHERE stp.partition_of(3, shop, item) = s.partition) AS own_rows_only,
       s.rows_processed > 0 AS has_rows
FROM stp.job_status s WHERE s.job_name = 'sales_3' ORDER BY s.partition;
SELECT sum(rows_processed) FROM stp.job_status WHERE job_name = 'sales_3';

-- Routing agrees with equality.
SELECT stp.partition_of(7, 0.0::float8) = stp.partition_of(7, '-0'::float8) AS float_zero,
       stp.partition_of(7, 'NaN'::float8) = stp.partition_of(7, 'NaN'::float8) AS float_nan,
       stp.partition_of(7, 1.0::numeric) = stp.partition_of(7, 1.00::numeric) AS numeric_scale,
       stp.partition_of(7, 'ab '::char(5)) = stp.partition_of(7, 'ab'::char(3)) AS bpchar_padding,
       stp.partition_of(7, NULL::int) = stp.partition_of(7, NULL::int) AS null_key;
SELECT count(DISTINCT stp.partition_of(4, g)) AS partitions_used FROM generate_series(1, 1000) g;
SELECT min(p), max(p) FROM (SELECT stp.partition_of(5, g::text, g) AS p FROM generate_series(1, 1000) g) s;

-- Text under a nondeterministic collation: 'a' and 'A' are one group.
CREATE COLLATION stp_ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
SELECT stp.partition_of(5, 'Hello'::text COLLATE stp_ci) = stp.partition_of(5, 'hELLO'::text COLLATE stp_ci) AS ci_equal;
CREATE TABLE tags (id bigserial, tag text COLLATE stp_ci);
INSERT INTO tags (tag) SELECT CASE WHEN g % 2 = 0 THEN 'Tag' || (g % 5) ELSE 'tAG' || (g % 5) END
FROM generate_series(1, 200) g;
SELECT stp_start_job('tags_ci', $$SELECT tag, count(*) AS n FROM tags GROUP BY tag$$,
                     'tags_ci', partitions => 3, batch_size => 15) > 0 AS started;
SELECT stp_wait('tags_ci', '30 s');
SELECT count(*) AS groups, sum(n) AS rows FROM tags_ci;
SELECT stp_test_diff('tags_ci', 'tag, n', 'SELECT tag, count(*) FROM tags GROUP BY tag');

SELECT stp_drop_job('sales_1', true);
SELECT stp_drop_job('sales_3', true);
SELECT stp_drop_job('tags_ci', true);
DROP TABLE sales, tags;
DROP COLLATION stp_ci;

-- The routing of every key type is pinned: these sums of partition * value
-- were computed before the routing filter was made faster, and a job's
-- groups stay where they were counted only if they never change.
SELECT n,
  sum(stp.partition_of(n, g::int)::bigint * g) i4, sum(stp.partition_of(n, g::bigint)::bigint * g) i8,
  sum(stp.partition_of(n, g::smallint)::bigint * g) i2,
  sum(stp.partition_of(n, g::text)::bigint * g) t, sum(stp.partition_of(n, (g/7.0)::numeric)::bigint * g) nu,
  sum(stp.partition_of(n, (g/7.0)::float8)::bigint * g) f8, sum(stp.partition_of(n, g::int, g::text, NULL::int)::bigint * g) multi,
  sum(stp.partition_of(n, ROW(g::text COLLATE "C", g::text COLLATE "POSIX"))::bigint * g) r,
  sum(stp.partition_of(n, g % 2 = 0)::bigint * g) b, sum(stp.partition_of(n, ('2024-01-01'::date + g))::bigint * g) d,
  sum(stp.partition_of(n, ('2024-01-01 00:00:00+00'::timestamptz + g * interval '1 s'))::bigint * g) ts,
  sum(stp.partition_of(n, lpad(g::text, 300, 'x'))::bigint * g) longt
FROM generate_series(1, 20000) g, (VALUES (2), (3), (4), (7), (8)) v(n) GROUP BY n ORDER BY n;

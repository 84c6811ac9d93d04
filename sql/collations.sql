-- Group keys with different explicit collations, at partitions > 1: each
-- key is hashed under its own collation, so routing agrees with equality,
-- and the result equals the batch query.
CREATE COLLATION stp_coll_ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
CREATE TABLE ct (id bigserial, a text, b text, c text, v int);
INSERT INTO ct (a, b, c, v)
SELECT 'a' || (g % 7), CASE WHEN g % 11 = 0 THEN NULL ELSE 'B' || (g % 5) END,
       CASE WHEN g % 2 = 0 THEN 'Tag' || (g % 6) ELSE 'tAG' || (g % 6) END, g
FROM generate_series(1, 900) g;

-- The plain query runs.
SELECT count(*) AS groups FROM (
    SELECT a COLLATE "C" AS a, b COLLATE "POSIX" AS b, count(*) FROM ct GROUP BY 1, 2) q;

SELECT stp_start_job('coll_cp',
    $$SELECT a COLLATE "C" AS a, b COLLATE "POSIX" AS b, count(*) AS n, sum(v) AS s FROM ct GROUP BY 1, 2$$,
    'coll_cp', partitions => 3, batch_size => 100) > 0 AS started;
-- One key under a nondeterministic collation: 'Tag1' and 'tAG1' are one group.
SELECT stp_start_job('coll_ci',
    $$SELECT a COLLATE "C" AS a, c COLLATE stp_coll_ci AS c, count(*) AS n, min(v) AS mn FROM ct GROUP BY 1, 2$$,
    'coll_ci', partitions => 3, batch_size => 70) > 0 AS started;
INSERT INTO ct (a, b, c, v)
SELECT 'a' || (g % 9), 'B' || (g % 4), CASE WHEN g % 3 = 0 THEN 'TAG' || (g % 8) ELSE 'tag' || (g % 8) END, -g
FROM generate_series(1, 600) g;
SELECT stp_wait('coll_cp', '60 s'), stp_wait('coll_ci', '60 s');

SELECT stp_test_diff('coll_cp', 'a, b, n, s',
    $$SELECT a COLLATE "C", b COLLATE "POSIX", count(*), sum(v) FROM ct GROUP BY 1, 2$$) AS cp_differences;
SELECT stp_test_diff('coll_ci', 'a, c, n, mn',
    $$SELECT a COLLATE "C", c COLLATE stp_coll_ci, count(*), min(v) FROM ct GROUP BY 1, 2$$) AS ci_differences;
SELECT count(*) AS groups, sum(n) AS rows FROM coll_ci;

-- Every partition aggregated exactly the rows of the groups it owns.
SELECT s.partition, s.rows_processed = (
           SELECT count(*) FROM ct
           WHERE stp.partition_of(3, ROW(a COLLATE "C", b COLLATE "POSIX")) = s.partition) AS own_rows_only,
       s.rows_processed > 0 AS has_rows
FROM stp.job_status s WHERE s.job_name = 'coll_cp' ORDER BY s.partition;

-- Keys in a ROW route as the same keys passed one by one, and values
-- equal under the nondeterministic collation route together.
SELECT bool_and(stp.partition_of(5, a, b, v) = stp.partition_of(5, ROW(a, b, v))) AS row_as_args
FROM ct;
SELECT count(*) AS split_groups FROM (
    SELECT a COLLATE "C", c COLLATE stp_coll_ci FROM ct GROUP BY 1, 2
    HAVING count(DISTINCT stp.partition_of(5, ROW(a COLLATE "C", c COLLATE stp_coll_ci))) > 1) g;

SELECT stp_drop_job('coll_cp', true);
SELECT stp_drop_job('coll_ci', true);
DROP TABLE ct;
DROP COLLATION stp_coll_ci;

-- The StpRoute custom scan: the routing filter stp.in_partition(p, N, keys)
-- of a batch statement, taken over by a node that hashes the keys without
-- a function call per row.  It must keep exactly the rows that the
-- function keeps, for every key type, with stp.route_scan on or off.
SET max_parallel_workers_per_gather = 0;

-- route_check(from, keys, args, nparts): for each partition p, the keys of
-- the rows that "stp.in_partition(p, nparts, args)" keeps, with the node
-- and without: whether each plan has the node, the number of rows, and
-- whether both plans keep the same rows.
CREATE FUNCTION route_check(src text, keys text, args text, nparts int)
RETURNS TABLE (p int, node_on boolean, node_off boolean, kept bigint, same boolean)
LANGUAGE plpgsql AS $$
DECLARE
    q text;
    line text;
    rows_on text[];
    rows_off text[];
BEGIN
    FOR i IN 0 .. nparts - 1 LOOP
        p := i;
        q := format('SELECT %s FROM %s WHERE stp.in_partition(%s, %s, %s)',
                    keys, src, i, nparts, args);
        node_on := false;
        node_off := false;
        PERFORM set_config('stp.route_scan', 'on', true);
        FOR line IN EXECUTE 'EXPLAIN (COSTS OFF) ' || q LOOP
            node_on := node_on OR line LIKE '%StpRoute%';
        END LOOP;
        EXECUTE format('SELECT array_agg(x::text ORDER BY x::text COLLATE "C") FROM (%s) x', q)
            INTO rows_on;
        PERFORM set_config('stp.route_scan', 'off', true);
        FOR line IN EXECUTE 'EXPLAIN (COSTS OFF) ' || q LOOP
            node_off := node_off OR line LIKE '%StpRoute%';
        END LOOP;
        EXECUTE format('SELECT array_agg(x::text ORDER BY x::text COLLATE "C") FROM (%s) x', q)
            INTO rows_off;
        PERFORM set_config('stp.route_scan', 'on', true);
        kept := coalesce(cardinality(rows_on), 0);
        same := rows_on IS NOT DISTINCT FROM rows_off;
        RETURN NEXT;
    END LOOP;
END $$;

-- route_split(from, keys, grp, args, nparts): groups (as GROUP BY grp, over
-- the keys' aliases, forms them) whose rows the node sends to more than one
-- partition; must be 0.
CREATE FUNCTION route_split(src text, keys text, grp text, args text, nparts int)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    q text := '';
    n bigint;
BEGIN
    FOR i IN 0 .. nparts - 1 LOOP
        q := q || CASE WHEN i > 0 THEN ' UNION ALL ' ELSE '' END ||
             format('SELECT %s AS p, %s FROM %s WHERE stp.in_partition(%s, %s, %s)',
                    i, keys, src, i, nparts, args);
    END LOOP;
    EXECUTE format('SELECT count(*) FROM (SELECT 1 FROM (%s) u GROUP BY %s '
                   'HAVING count(DISTINCT p) > 1) s', q, grp) INTO n;
    RETURN n;
END $$;

CREATE TABLE route_src (
    id bigserial PRIMARY KEY,
    ts timestamptz,
    i int,
    t text,
    n numeric,
    f float8,
    b bigint
);
CREATE COLLATION route_ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
INSERT INTO route_src (ts, i, t, n, f, b)
SELECT '2024-01-01'::timestamptz + g * interval '7 minutes',
       CASE WHEN g % 17 = 0 THEN NULL ELSE g % 40 END,
       CASE WHEN g % 13 = 0 THEN NULL
            WHEN g % 3 = 0 THEN upper('key' || (g % 11))
            WHEN g % 3 = 1 THEN 'key' || (g % 11)
            ELSE initcap('key' || (g % 11)) END,
       CASE WHEN g % 19 = 0 THEN NULL
            WHEN g % 2 = 0 THEN round((g % 9)::numeric, 1)
            ELSE round((g % 9)::numeric, 3) END,
       CASE WHEN g % 23 = 0 THEN NULL
            WHEN g % 5 = 0 THEN 0.0::float8
            WHEN g % 5 = 1 THEN '-0'::float8
            WHEN g % 5 = 2 THEN 'NaN'::float8
            ELSE (g % 7)::float8 / 2 END,
       (g % 30)::bigint * 10000000000
FROM generate_series(1, 3000) g;
ANALYZE route_src;

-- A batch-like statement: the node sits above the scan of the id range,
-- with its partition and keys, and the scan has no routing filter left.
EXPLAIN (COSTS OFF)
SELECT i AS k0, count(*) AS a0 FROM route_src
WHERE id > 100 AND id <= 2000 AND stp.in_partition(1, 3, i) GROUP BY i;
EXPLAIN (COSTS OFF)
SELECT i AS k0, count(*) AS a0 FROM route_src
WHERE id > 0 AND stp.in_partition(0, 2, i) GROUP BY i;
EXPLAIN (COSTS OFF, VERBOSE)
SELECT date_bin('1 hour', ts, '2024-01-01') AS k0, t COLLATE route_ci AS k1, sum(f) AS a0
FROM route_src
WHERE stp.in_partition(2, 3, ROW(date_bin('1 hour', ts, '2024-01-01'), t COLLATE route_ci))
GROUP BY 1, 2;
EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF)
SELECT count(*) FROM route_src WHERE stp.in_partition(0, 2, i);
-- Off: the plain function filter.
SET stp.route_scan = off;
EXPLAIN (COSTS OFF)
SELECT i AS k0, count(*) AS a0 FROM route_src
WHERE id > 100 AND id <= 2000 AND stp.in_partition(1, 3, i) GROUP BY i;
RESET stp.route_scan;

-- Identical rows with and without the node, at 1, 2 and 3 partitions, and
-- no group on two partitions: int with NULLs; text under a nondeterministic
-- collation ('key1', 'KEY1', 'Key1' are one group); numeric 1.0 = 1.000;
-- float 0.0 = -0.0 and NaN; bigint; several keys one by one and as a ROW;
-- an expression key.
SELECT * FROM route_check('route_src', 'i', 'i', 3);
SELECT * FROM route_check('route_src', 'i', 'i', 1);
SELECT * FROM route_check('route_src', 't COLLATE route_ci', 't COLLATE route_ci', 3);
SELECT * FROM route_check('route_src', 'n', 'n', 3);
SELECT * FROM route_check('route_src', 'f', 'f', 2);
SELECT * FROM route_check('route_src', 'b', 'b', 3);
SELECT * FROM route_check('route_src', 'i, n, f', 'i, n, f', 3);
SELECT * FROM route_check('route_src', 'i, t COLLATE route_ci, n',
                          'ROW(i, t COLLATE route_ci, n)', 3);
SELECT * FROM route_check('route_src', 'date_bin(''1 hour'', ts, ''2024-01-01'')',
                          'date_bin(''1 hour'', ts, ''2024-01-01'')', 3);
SELECT route_split('route_src', 'i AS k', 'k', 'i', 3) AS int_split,
       route_split('route_src', 't COLLATE route_ci AS k', 'k', 't COLLATE route_ci', 3) AS ci_split,
       route_split('route_src', 'n AS k', 'k', 'n', 3) AS numeric_split,
       route_split('route_src', 'f AS k', 'k', 'f', 2) AS float_split,
       route_split('route_src', 'i AS k0, t COLLATE route_ci AS k1, n AS k2', 'k0, k1, k2',
                   'ROW(i, t COLLATE route_ci, n)', 3) AS row_split,
       route_split('route_src', 'date_bin(''1 hour'', ts, ''2024-01-01'') AS k', 'k',
                   'date_bin(''1 hour'', ts, ''2024-01-01'')', 3) AS expr_split;
-- The splits are counted over groups that do exist.
SELECT count(DISTINCT t COLLATE route_ci) AS ci_groups, count(DISTINCT t) AS c_groups,
       count(DISTINCT n) AS numeric_groups, count(DISTINCT n::text) AS numeric_spellings,
       count(DISTINCT f) AS float_groups, count(DISTINCT f::text) AS float_spellings
FROM route_src;
-- The groups themselves land where stp.partition_of says.
SELECT count(*) AS misplaced FROM (
    SELECT t COLLATE route_ci AS k FROM route_src WHERE stp.in_partition(1, 3, t COLLATE route_ci)
) s WHERE stp.partition_of(3, k COLLATE route_ci) <> 1;

-- A prepared statement with a generic plan, as a worker prepares its
-- batch: the id range is $1/$2 in the child scan.
SET plan_cache_mode = force_generic_plan;
PREPARE route_batch(bigint, bigint) AS
SELECT n AS k0, count(*) AS a0, sum(f) AS a1 FROM route_src
WHERE id > $1 AND id <= $2 AND stp.in_partition(1, 2, n) GROUP BY n;
EXPLAIN (COSTS OFF) EXECUTE route_batch(0, 1000);
CREATE TEMP TABLE route_on AS EXECUTE route_batch(0, 3000);
CREATE TEMP TABLE route_on2 AS EXECUTE route_batch(1000, 2000);
SET stp.route_scan = off;
PREPARE route_batch_off(bigint, bigint) AS
SELECT n AS k0, count(*) AS a0, sum(f) AS a1 FROM route_src
WHERE id > $1 AND id <= $2 AND stp.in_partition(1, 2, n) GROUP BY n;
EXPLAIN (COSTS OFF) EXECUTE route_batch_off(0, 1000);
CREATE TEMP TABLE route_off AS EXECUTE route_batch_off(0, 3000);
CREATE TEMP TABLE route_off2 AS EXECUTE route_batch_off(1000, 2000);
RESET stp.route_scan;
RESET plan_cache_mode;
SELECT (SELECT count(*) FROM route_on) AS groups_on,
       (SELECT sum(a0) FROM route_on) AS rows_on,
       (SELECT sum(a0) FROM route_on2) AS rows_on2,
       (SELECT count(*) FROM ((TABLE route_on EXCEPT ALL TABLE route_off)
                              UNION ALL (TABLE route_off EXCEPT ALL TABLE route_on)) d) AS differ,
       (SELECT count(*) FROM ((TABLE route_on2 EXCEPT ALL TABLE route_off2)
                              UNION ALL (TABLE route_off2 EXCEPT ALL TABLE route_on2)) d) AS differ2;
DEALLOCATE route_batch;
DEALLOCATE route_batch_off;

-- Rescanned under a correlated subquery, the node starts its child again.
SELECT g, (SELECT count(*) FROM route_src WHERE i = g AND stp.in_partition(0, 2, i)) AS on_0,
       (SELECT count(*) FROM route_src WHERE i = g AND stp.in_partition(1, 2, i)) AS on_1,
       (SELECT count(*) FROM route_src WHERE i = g) AS all_rows
FROM generate_series(1, 4) g ORDER BY g;

-- Above a parallel scan, each process filters its own share.
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SET max_parallel_workers_per_gather = 2;
EXPLAIN (COSTS OFF)
SELECT i, count(*) FROM route_src WHERE stp.in_partition(1, 3, i) GROUP BY i;
SELECT * FROM route_check('route_src', 'i', 'i', 3);
RESET parallel_setup_cost;
RESET parallel_tuple_cost;
RESET min_parallel_table_scan_size;
SET max_parallel_workers_per_gather = 0;

-- Not where rows are locked or modified: the function filter stays.
EXPLAIN (COSTS OFF)
SELECT id FROM route_src WHERE stp.in_partition(0, 2, i) FOR UPDATE;
EXPLAIN (COSTS OFF)
DELETE FROM route_src WHERE stp.in_partition(0, 2, i);
-- Nor when the count is not a positive constant: the function's own
-- errors stay.
SELECT count(*) FROM route_src WHERE stp.in_partition(0, 0, i);
SELECT count(*) FROM route_src WHERE stp.in_partition(0, NULL, i);
-- A partition out of range keeps no row, with the node as without.
SELECT count(*) FROM route_src WHERE stp.in_partition(5, 3, i);
SET stp.route_scan = off;
SELECT count(*) FROM route_src WHERE stp.in_partition(5, 3, i);
RESET stp.route_scan;

-- A dropped column, and a column added with a default that older rows
-- lack: the child scan cannot return the table's row as it is stored, and
-- returns the columns that the node and its parent read.
ALTER TABLE route_src DROP COLUMN b;
ALTER TABLE route_src ADD COLUMN extra int DEFAULT 7;
INSERT INTO route_src (ts, i, t, n, f, extra)
SELECT '2025-01-01'::timestamptz + g * interval '7 minutes', g % 40, 'key' || (g % 11),
       (g % 9)::numeric, g::float8, g % 3
FROM generate_series(1, 600) g;
EXPLAIN (COSTS OFF, VERBOSE)
SELECT i, extra, count(*) FROM route_src WHERE stp.in_partition(1, 3, i, extra) GROUP BY 1, 2;
SELECT * FROM route_check('route_src', 'i, extra', 'i, extra', 3);
SELECT * FROM route_check('route_src', '*', 'extra', 2);
SELECT route_split('route_src', 'i AS k0, extra AS k1', 'k0, k1', 'i, extra', 3) AS split;

DROP TABLE route_src;
DROP FUNCTION route_check(text, text, text, int);
DROP FUNCTION route_split(text, text, text, text, int);
DROP COLLATION route_ci;

-- The OID of stp.in_partition is cached per backend, and looked up again
-- when pg_proc changes.  In a database of its own: a function of the same
-- name and signature that is not the extension's is left alone; then the
-- node once the extension exists, and again after DROP and CREATE
-- EXTENSION gave the function a new OID.
SELECT current_database() AS route_orig_db \gset
CREATE DATABASE stp_route_db;
\c stp_route_db
CREATE TABLE r (id int, k int);
INSERT INTO r SELECT g, g % 10 FROM generate_series(1, 100) g;
CREATE SCHEMA stp;
CREATE FUNCTION stp.in_partition(int, int, VARIADIC "any") RETURNS boolean
AS '$libdir/stp', 'stp_in_partition' LANGUAGE C;
EXPLAIN (COSTS OFF) SELECT count(*) FROM r WHERE stp.in_partition(0, 2, k);
SELECT count(*) FROM r WHERE stp.in_partition(0, 2, k);
DROP SCHEMA stp CASCADE;
CREATE EXTENSION stp;
EXPLAIN (COSTS OFF) SELECT count(*) FROM r WHERE stp.in_partition(0, 2, k);
SELECT count(*) FROM r WHERE stp.in_partition(0, 2, k);
DROP EXTENSION stp;
CREATE EXTENSION stp;
EXPLAIN (COSTS OFF) SELECT count(*) FROM r WHERE stp.in_partition(0, 2, k);
SELECT count(*) FROM r WHERE stp.in_partition(0, 2, k);
\c :route_orig_db
DROP DATABASE stp_route_db;

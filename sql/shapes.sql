-- Query shapes beyond plain keys and aggregates: each job's result returns
-- exactly what its query returns as a batch SELECT, at 1 and 3 partitions.
CREATE TABLE shp (
    id bigint GENERATED ALWAYS AS IDENTITY,
    grp int, sub text, x int4, y numeric, f float8, b boolean, bits int4
);
INSERT INTO shp (grp, sub, x, y, f, b, bits)
SELECT g % 5, CASE WHEN g % 7 = 0 THEN NULL ELSE 's' || (g % 3) END,
       CASE WHEN g % 11 = 0 THEN NULL ELSE g END,
       CASE WHEN g % 13 = 0 THEN NULL ELSE g / 4.0 END,
       CASE WHEN g % 17 = 0 THEN NULL ELSE g * 0.25 END,
       CASE WHEN g % 19 = 0 THEN NULL ELSE g % 3 = 0 END,
       CASE WHEN g % 23 = 0 THEN NULL ELSE g % 64 END
FROM generate_series(1, 400) g;
-- a group whose filtered arguments are all NULL or filtered out
INSERT INTO shp (grp, sub, x) VALUES (7, 'z', NULL), (7, 'z', 5);

-- FILTER on every supported aggregate.
SELECT stp_start_job('shp_filter' || p, $$
    SELECT grp,
           count(*) FILTER (WHERE x > 100) AS n_big,
           count(y) FILTER (WHERE sub = 's1') AS n_y,
           sum(x) FILTER (WHERE x % 2 = 0) AS sum_even,
           sum(y) FILTER (WHERE x IS NULL OR x > 7) AS sum_y,
           min(f) FILTER (WHERE b) AS min_f,
           max(sub) FILTER (WHERE y > 10) AS max_sub,
           avg(x) FILTER (WHERE sub IS NOT NULL) AS avg_x,
           avg(f) FILTER (WHERE x < 300) AS avg_f,
           count(*) AS n
    FROM shp GROUP BY grp$$, 'shp_filter' || p, partitions => p, batch_size => 37) > 0 AS started
FROM (VALUES (1), (3)) v(p);
SELECT stp_wait('shp_filter1', '60 s'), stp_wait('shp_filter3', '60 s');
SELECT * FROM stp_test_types('shp_filter3');
SELECT p, stp_test_diff(('shp_filter' || p)::regclass,
    'grp, n_big, n_y, sum_even, sum_y, min_f, max_sub, avg_x, avg_f, n',
    $$SELECT grp,
           count(*) FILTER (WHERE x > 100), count(y) FILTER (WHERE sub = 's1'),
           sum(x) FILTER (WHERE x % 2 = 0), sum(y) FILTER (WHERE x IS NULL OR x > 7),
           min(f) FILTER (WHERE b), max(sub) FILTER (WHERE y > 10),
           avg(x) FILTER (WHERE sub IS NOT NULL), avg(f) FILTER (WHERE x < 300), count(*)
    FROM shp GROUP BY grp$$) AS mismatches
FROM (VALUES (1), (3)) v(p);
SELECT * FROM shp_filter3 WHERE grp = 7;
SELECT agg_names, agg_filters FROM stp.jobs WHERE job_name = 'shp_filter1';

-- stp_test_same_types(result, batch view): do the result's column names
-- and types equal those of a view of the batch query, in order?
CREATE FUNCTION stp_test_same_types(result regclass, batch regclass)
RETURNS boolean LANGUAGE sql AS $$
    SELECT (SELECT array_agg(row(col, type)::text) FROM stp_test_types(result))
           IS NOT DISTINCT FROM
           (SELECT array_agg(row(col, type)::text) FROM stp_test_types(batch))
$$;

-- Expressions over aggregates, HAVING, a key grouped on but not selected,
-- keys after aggregates, a constant column and ORDER BY: a view over the
-- state table presents them.
CREATE VIEW batch_expr AS
    SELECT sum(x) / NULLIF(count(x), 0) AS ratio, grp,
           0.2 * avg(y) AS fifth, sum(y) / sum(x) AS per_x,
           max(f) - min(f) AS spread, count(*) + 1 AS n1, 'const'::text AS label,
           grp * 10 AS grp10, avg(x) FILTER (WHERE b) AS avg_b,
           upper(sub) AS sub_up
    FROM shp GROUP BY grp, sub HAVING count(*) > 3 AND sum(x) IS NOT NULL
    ORDER BY grp DESC, sub NULLS FIRST, count(*);
SELECT stp_start_job('shp_expr' || p, pg_get_viewdef('batch_expr'),
                     'shp_expr' || p, partitions => p, batch_size => 41) > 0 AS started
FROM (VALUES (1), (3)) v(p);
SELECT stp_wait('shp_expr1', '60 s'), stp_wait('shp_expr3', '60 s');
SELECT relname, relkind FROM pg_class WHERE relname LIKE 'shp_expr%' ORDER BY relname;
SELECT * FROM stp_test_types('shp_expr1');
SELECT p, stp_test_same_types(('shp_expr' || p)::regclass, 'batch_expr') AS same_types,
       stp_test_diff(('shp_expr' || p)::regclass, '*', 'SELECT * FROM batch_expr') AS mismatches
FROM (VALUES (1), (3)) v(p);
-- the view orders its rows as the query does
SELECT (SELECT array_agg(t ORDER BY n) FROM (SELECT row_number() OVER () n, t FROM shp_expr3 t) r)::text
     = (SELECT array_agg(t ORDER BY n) FROM (SELECT row_number() OVER () n, t FROM batch_expr t) r)::text
       AS same_order;
SELECT * FROM stp_test_types('shp_expr1_state');
SELECT result_table, result_view FROM stp.jobs WHERE job_name = 'shp_expr1';

-- A query without GROUP BY: one row, even before any source row.
CREATE TABLE shp_empty (id bigserial, x int, f float8);
SELECT stp_start_job('shp_total', $$
    SELECT count(*) AS n, count(x) AS nx, sum(x) AS s, avg(x) AS a, min(f) AS lo,
           max(x) FILTER (WHERE x > 2) AS big, count(*) * 2 AS n2, var_pop(f) AS vp,
           bool_and(x > 0) AS pos
    FROM shp_empty$$, 'shp_total') > 0 AS started;
SELECT * FROM shp_total;
SELECT stp_wait('shp_total', '60 s');
SELECT stp_test_diff('shp_total', '*', $$SELECT count(*), count(x), sum(x), avg(x), min(f),
       max(x) FILTER (WHERE x > 2), count(*) * 2, var_pop(f), bool_and(x > 0)
       FROM shp_empty$$) AS mismatches;
INSERT INTO shp_empty (x, f) VALUES (NULL, NULL), (1, 0.5), (3, NULL), (NULL, -1.5);
SELECT stp_wait('shp_total', '60 s');
SELECT * FROM shp_total;
SELECT stp_test_diff('shp_total', '*', $$SELECT count(*), count(x), sum(x), avg(x), min(f),
       max(x) FILTER (WHERE x > 2), count(*) * 2, var_pop(f), bool_and(x > 0)
       FROM shp_empty$$) AS mismatches;

-- A global aggregate over the big table, with HAVING that keeps no row.
SELECT stp_start_job('shp_global', $$
    SELECT sum(y) / count(*) AS mean_y, count(*) FILTER (WHERE b) AS nb,
           bool_or(b) AS any_b, round(stddev(f)::numeric, 6) AS sd
    FROM shp WHERE grp <> 2$$, 'shp_global', batch_size => 53) > 0 AS started;
SELECT stp_start_job('shp_none', $$SELECT count(*) AS n FROM shp HAVING count(*) > 100000$$,
                     'shp_none') > 0 AS started;
SELECT stp_wait('shp_global', '60 s'), stp_wait('shp_none', '60 s');
SELECT stp_test_diff('shp_global', '*', $$SELECT sum(y) / count(*), count(*) FILTER (WHERE b),
       bool_or(b), round(stddev(f)::numeric, 6) FROM shp WHERE grp <> 2$$) AS mismatches;
SELECT count(*) FROM shp_none;

-- Rows that arrive later are merged into the same state.
INSERT INTO shp (grp, sub, x, y, f, b, bits)
SELECT g % 6, 's' || (g % 4), g, g / 3.0, g * 0.125, g % 2 = 0, g % 32
FROM generate_series(1, 150) g;
SELECT stp_wait('shp_expr1', '60 s'), stp_wait('shp_expr3', '60 s'), stp_wait('shp_global', '60 s');
SELECT p, stp_test_diff(('shp_expr' || p)::regclass, '*', 'SELECT * FROM batch_expr') AS mismatches
FROM (VALUES (1), (3)) v(p);
SELECT stp_test_diff('shp_global', '*', $$SELECT sum(y) / count(*), count(*) FILTER (WHERE b),
       bool_or(b), round(stddev(f)::numeric, 6) FROM shp WHERE grp <> 2$$) AS mismatches;

-- bool_and, bool_or, every, bit_and and bit_or, NULL where all inputs are.
SELECT stp_start_job('shp_bits' || p, $$
    SELECT grp, bool_and(b) AS all_b, bool_or(b) AS any_b, every(x > 3) AS every_x,
           bit_and(bits) AS and_bits, bit_or(bits::int2) AS or_bits2,
           bit_or(bits::int8) FILTER (WHERE x % 2 = 0) AS or_even,
           bool_or(b) FILTER (WHERE sub = 's2') AS any_s2
    FROM shp GROUP BY grp$$, 'shp_bits' || p, partitions => p, batch_size => 29) > 0 AS started
FROM (VALUES (1), (3)) v(p);
SELECT stp_wait('shp_bits1', '60 s'), stp_wait('shp_bits3', '60 s');
SELECT * FROM stp_test_types('shp_bits1');
SELECT p, stp_test_diff(('shp_bits' || p)::regclass, '*', $$
    SELECT grp, bool_and(b), bool_or(b), every(x > 3), bit_and(bits), bit_or(bits::int2),
           bit_or(bits::int8) FILTER (WHERE x % 2 = 0), bool_or(b) FILTER (WHERE sub = 's2')
    FROM shp GROUP BY grp$$) AS mismatches
FROM (VALUES (1), (3)) v(p);
SELECT * FROM shp_bits3 WHERE grp = 7;

-- Variance and standard deviation over floats, kept as PostgreSQL's
-- float8[] state; they may differ from the batch only by summation order.
CREATE VIEW batch_var AS
    SELECT grp, stddev(f) AS sd, stddev_pop(f) AS sdp, stddev_samp(f::float4) AS sds,
           variance(f) AS v, var_pop(f) FILTER (WHERE b) AS vp, var_samp(x::float8) AS vs,
           stddev(f) / NULLIF(avg(f), 0) AS cv
    FROM shp GROUP BY grp;
SELECT stp_start_job('shp_var' || p, pg_get_viewdef('batch_var'), 'shp_var' || p,
                     partitions => p, batch_size => 31) > 0 AS started
FROM (VALUES (1), (3)) v(p);
SELECT stp_wait('shp_var1', '60 s'), stp_wait('shp_var3', '60 s');
SELECT * FROM stp_test_types('shp_var1_state');
SELECT stp_test_same_types('shp_var1', 'batch_var') AS same_types;
-- close: equal within 1e-12 relative, or both NULL
CREATE FUNCTION shp_close(a float8, b float8) RETURNS boolean LANGUAGE sql AS
    'SELECT (a IS NULL AND b IS NULL) OR abs(a - b) <= 1e-12 * greatest(abs(a), abs(b))';
SELECT p, count(*) AS groups,
       count(*) FILTER (WHERE shp_close(r.sd, q.sd) AND shp_close(r.sdp, q.sdp)
                          AND shp_close(r.sds, q.sds) AND shp_close(r.v, q.v)
                          AND shp_close(r.vp, q.vp) AND shp_close(r.vs, q.vs)
                          AND shp_close(r.cv, q.cv)) AS close
FROM (VALUES (1), (3)) v(p),
     LATERAL (SELECT * FROM shp_var1 WHERE p = 1 UNION ALL SELECT * FROM shp_var3 WHERE p = 3) r
     FULL JOIN batch_var q USING (grp)
GROUP BY p ORDER BY p;
SELECT grp, sd IS NULL AS sd_null, vp IS NULL AS vp_null FROM shp_var1 WHERE grp = 7;

-- What a shaped query still cannot do.
CREATE FUNCTION shp_error(stmt text, OUT code text, OUT message text, OUT hint text)
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE stmt;
    code := 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, message = MESSAGE_TEXT,
                            hint = PG_EXCEPTION_HINT;
END $$;
CREATE TABLE shp_pk (id int PRIMARY KEY GENERATED ALWAYS AS IDENTITY, name text, v int);
\x on
SELECT * FROM shp_error($q$SELECT stp_start_job('bad', 'SELECT id, name, sum(v) AS s FROM shp_pk GROUP BY id', 'bad')$q$);
SELECT * FROM shp_error($q$SELECT stp_start_job('bad', 'SELECT count(*) AS n FROM shp', 'bad', partitions => 2, strategy => 'groups')$q$);
SELECT * FROM shp_error($q$SELECT stp_start_job('bad', 'SELECT grp, count(*) AS n FROM shp GROUP BY grp ORDER BY n LIMIT 3', 'bad')$q$);
SELECT * FROM shp_error($q$SELECT stp_start_job('bad', 'SELECT grp, count(*) AS n FROM shp GROUP BY grp OFFSET 1', 'bad')$q$);
SELECT * FROM shp_error($q$SELECT stp_start_job('bad', 'SELECT sub, count(*) AS n FROM shp GROUP BY sub ORDER BY sub USING ~<~', 'bad')$q$);
SELECT * FROM shp_error($q$SELECT stp_start_job('bad', 'SELECT grp, count(*) + 1 AS n FROM shp GROUP BY grp', 'shp_filter1')$q$);
SELECT * FROM shp_error($q$SELECT stp_start_job('bad', 'SELECT x FROM shp', 'bad')$q$);
SELECT * FROM shp_error($q$SELECT stp_start_job('bad', 'SELECT grp, max(DISTINCT x) AS n FROM shp GROUP BY grp', 'bad')$q$);
SELECT * FROM shp_error($q$SELECT stp_start_job('bad', 'SELECT grp, stddev(x) AS sd FROM shp GROUP BY grp', 'bad')$q$);
SELECT * FROM shp_error($q$SELECT stp_start_job('bad', 'SELECT grp, variance(y) AS v FROM shp GROUP BY grp', 'bad')$q$);
SELECT * FROM shp_error($q$SELECT stp_start_job('bad', 'SELECT grp, array_agg(bits) AS x FROM shp GROUP BY grp', 'bad')$q$);
\x off

-- The view only presents the state: dropping it leaves the job running;
-- dropping the state table fails the job with the reason.
SELECT stp_start_job('shp_fault', 'SELECT grp, sum(x) * 2 AS s2 FROM shp GROUP BY grp',
                     'shp_fault') > 0 AS started;
SELECT stp_wait('shp_fault', '60 s');
DROP VIEW shp_fault;
INSERT INTO shp (grp, x) VALUES (1, 1);
SELECT stp_wait('shp_fault', '60 s');
SELECT stp_test_diff('shp_fault_state', 'grp, _stp_a0',
                     'SELECT grp, sum(x) FROM shp GROUP BY grp') AS mismatches;
DROP TABLE shp_fault_state;
INSERT INTO shp (grp, x) VALUES (1, 1);
DO $$
BEGIN
    FOR i IN 1..600 LOOP
        EXIT WHEN NOT EXISTS (SELECT 1 FROM stp.job_status
                              WHERE job_name = 'shp_fault' AND state <> 'failed');
        PERFORM pg_sleep(0.05);
    END LOOP;
END $$;
SELECT DISTINCT state, last_error FROM stp.job_status WHERE job_name = 'shp_fault';
SELECT stp_drop_job('shp_fault', true);

-- Dropping a job with its result drops the view and the state table.
SELECT stp_drop_job('shp_expr' || p, true) FROM (VALUES (1), (3)) v(p);
SELECT stp_drop_job(j, true) FROM unnest(ARRAY['shp_filter1', 'shp_filter3', 'shp_total',
                                                'shp_global', 'shp_none', 'shp_bits1', 'shp_bits3',
                                                'shp_var1', 'shp_var3']) j;
SELECT count(*) AS left_behind FROM pg_class WHERE relname LIKE 'shp\_%' AND relname NOT IN ('shp_empty', 'shp_pk', 'shp_empty_id_seq', 'shp_pk_pkey', 'shp_pk_id_seq', 'shp_id_seq');
DROP VIEW batch_expr, batch_var;
DROP TABLE shp, shp_empty, shp_pk;
DROP FUNCTION stp_test_same_types, shp_error, shp_close;

-- Any aggregate with a combine function and a storable state, built in or
-- user-defined (combine.c): each job's result returns exactly what its
-- query returns as a batch SELECT, at 1 and 3 partitions, across batches,
-- restarts and global groups; everything else is refused with a hint.
CREATE FUNCTION cmb_error(stmt text, OUT code text, OUT message text,
                          OUT detail text, OUT hint text)
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE stmt;
    code := 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, message = MESSAGE_TEXT,
                            detail = PG_EXCEPTION_DETAIL, hint = PG_EXCEPTION_HINT;
END $$;

CREATE TABLE cmb (
    id bigint GENERATED ALWAYS AS IDENTITY,
    grp int, x int4, f float8, g float8, bits int4, iv interval
);
CREATE FUNCTION cmb_fill(n int) RETURNS void LANGUAGE sql AS $$
    INSERT INTO cmb (grp, x, f, g, bits, iv)
    SELECT s % 5,
           CASE WHEN s % 11 = 0 THEN NULL ELSE s % 97 END,
           CASE WHEN s % 13 = 0 THEN NULL ELSE (s % 10) * 0.5 END,
           (s % 7) * 1.5 + (s % 3),
           CASE WHEN s % 17 = 0 THEN NULL ELSE s % 256 END,
           CASE WHEN s % 19 = 0 THEN NULL ELSE (s % 60) * interval '1 second' END
    FROM generate_series((SELECT coalesce(max(id), 0) + 1 FROM cmb),
                         (SELECT coalesce(max(id), 0) + n FROM cmb)) s
$$;
SELECT cmb_fill(400);
-- a group whose arguments are all NULL
INSERT INTO cmb (grp) VALUES (9), (9);

-- User-defined aggregates: a strict combine function without a final
-- function or initial condition; PostgreSQL's avg(int4) state with its
-- final function; non-strict functions; a composite state; and an
-- initial condition whose final value is not NULL.
CREATE AGGREGATE cmb_sum(int4) (SFUNC = int4pl, STYPE = int4, COMBINEFUNC = int4pl);
CREATE AGGREGATE cmb_avg(int4) (SFUNC = int4_avg_accum, STYPE = int8[],
    COMBINEFUNC = int4_avg_combine, FINALFUNC = int8_avg, INITCOND = '{0,0}');
CREATE FUNCTION cmb_cnt_step(s int8, x int4) RETURNS int8 LANGUAGE sql IMMUTABLE
    AS $$SELECT CASE WHEN x IS NULL THEN s ELSE coalesce(s, 0) + 1 END$$;
CREATE FUNCTION cmb_cnt_merge(a int8, b int8) RETURNS int8 LANGUAGE sql IMMUTABLE
    AS $$SELECT CASE WHEN a IS NULL THEN b WHEN b IS NULL THEN a ELSE a + b END$$;
CREATE AGGREGATE cmb_cnt(int4) (SFUNC = cmb_cnt_step, STYPE = int8,
    COMBINEFUNC = cmb_cnt_merge);
-- Workers run the aggregate's functions with search_path = pg_catalog,
-- pg_temp: a SQL function's body names its type with its schema.
CREATE TYPE cmb_span AS (lo int4, hi int4);
CREATE FUNCTION cmb_span_step(s cmb_span, x int4) RETURNS cmb_span LANGUAGE sql IMMUTABLE
    AS $$SELECT CASE WHEN x IS NULL THEN s WHEN s IS NULL THEN ROW(x, x)::public.cmb_span
                ELSE ROW(least(s.lo, x), greatest(s.hi, x))::public.cmb_span END$$;
CREATE FUNCTION cmb_span_merge(a cmb_span, b cmb_span) RETURNS cmb_span LANGUAGE sql IMMUTABLE
    AS $$SELECT CASE WHEN a IS NULL THEN b WHEN b IS NULL THEN a
                ELSE ROW(least(a.lo, b.lo), greatest(a.hi, b.hi))::public.cmb_span END$$;
CREATE FUNCTION cmb_span_width(s cmb_span) RETURNS int4 LANGUAGE sql IMMUTABLE
    AS $$SELECT s.hi - s.lo$$;
CREATE AGGREGATE cmb_width(int4) (SFUNC = cmb_span_step, STYPE = cmb_span,
    COMBINEFUNC = cmb_span_merge, FINALFUNC = cmb_span_width);
CREATE FUNCTION cmb_label(n int8) RETURNS text LANGUAGE sql IMMUTABLE
    AS $$SELECT 'n=' || n$$;
CREATE AGGREGATE cmb_count_label(float8, float8) (SFUNC = int8inc_float8_float8,
    STYPE = int8, INITCOND = '0', COMBINEFUNC = int8pl, FINALFUNC = cmb_label);

-- Plain jobs: the result table keeps each value, and the hidden state of
-- each aggregate with a final function.
SELECT stp_start_job('cmb_plain' || p, $$
    SELECT grp, cmb_sum(x) AS s, cmb_avg(x) AS a, cmb_cnt(x) FILTER (WHERE x % 3 = 0) AS c3,
           cmb_width(x) AS w, cmb_count_label(f, g) AS lbl, bit_xor(bits) AS bx,
           avg(iv) AS aiv, cmb_sum(x) FILTER (WHERE false) AS none
    FROM cmb GROUP BY grp$$, 'cmb_plain' || p, partitions => p, batch_size => 37) > 0 AS started
FROM (VALUES (1), (3)) v(p);
SELECT stp_wait('cmb_plain1', '60 s'), stp_wait('cmb_plain3', '60 s');
SELECT * FROM stp_test_types('cmb_plain3');
SELECT agg_names, agg_kinds, agg_functions FROM stp.jobs WHERE job_name = 'cmb_plain1';
CREATE VIEW cmb_plain_batch AS
    SELECT grp, cmb_sum(x) AS s, cmb_avg(x) AS a, cmb_cnt(x) FILTER (WHERE x % 3 = 0) AS c3,
           cmb_width(x) AS w, cmb_count_label(f, g) AS lbl, bit_xor(bits) AS bx,
           avg(iv) AS aiv, cmb_sum(x) FILTER (WHERE false) AS none
    FROM cmb GROUP BY grp;
SELECT p, stp_test_diff(('cmb_plain' || p)::regclass, 'grp, s, a, c3, w, lbl, bx, aiv, none',
                        'SELECT * FROM cmb_plain_batch') AS mismatches
FROM (VALUES (1), (3)) v(p);
SELECT grp, s, a, c3, w, lbl, bx, aiv, none, _stp_a_state, _stp_w_state, _stp_lbl_state
FROM cmb_plain3 ORDER BY grp;

-- Floats: regr_*, covar and corr keep PostgreSQL's float8[] state, whose
-- merged sums may differ from one pass in the last bits only.
SELECT stp_start_job('cmb_float' || p, $$
    SELECT grp, regr_slope(f, g) AS slope, regr_intercept(f, g) AS icpt,
           regr_count(f, g) AS n, regr_r2(f, g) AS r2, covar_pop(f, g) AS cp,
           covar_samp(f, g) AS cs, corr(f, g) AS r, regr_avgx(f, g) AS ax
    FROM cmb GROUP BY grp$$, 'cmb_float' || p, partitions => p, batch_size => 41) > 0 AS started
FROM (VALUES (1), (3)) v(p);
SELECT stp_wait('cmb_float1', '60 s'), stp_wait('cmb_float3', '60 s');
SELECT * FROM stp_test_types('cmb_float1');
SELECT p, stp_test_diff(('cmb_float' || p)::regclass,
    'grp, round(slope::numeric, 9), round(icpt::numeric, 9), n, round(r2::numeric, 9), '
    'round(cp::numeric, 9), round(cs::numeric, 9), round(r::numeric, 9), round(ax::numeric, 9)',
    $$SELECT grp, round(regr_slope(f, g)::numeric, 9), round(regr_intercept(f, g)::numeric, 9),
             regr_count(f, g), round(regr_r2(f, g)::numeric, 9), round(covar_pop(f, g)::numeric, 9),
             round(covar_samp(f, g)::numeric, 9), round(corr(f, g)::numeric, 9),
             round(regr_avgx(f, g)::numeric, 9)
      FROM cmb GROUP BY grp$$) AS mismatches
FROM (VALUES (1), (3)) v(p);

-- HAVING, expressions over the aggregates, a key grouped on but not
-- selected, ORDER BY: a view over the state table presents them.
CREATE VIEW cmb_shaped_batch AS
    SELECT cmb_avg(x) - cmb_sum(x) / 10 AS mix, grp % 2 AS half,
           cmb_cnt(x) * 2 AS twice, cmb_width(x) + bit_xor(bits) AS wb
    FROM cmb GROUP BY grp % 2, grp
    HAVING cmb_sum(x) > 1000 AND cmb_width(x) IS NOT NULL
    ORDER BY half, mix;
SELECT stp_start_job('cmb_shaped' || p, pg_get_viewdef('cmb_shaped_batch'),
                     'cmb_shaped' || p, partitions => p, batch_size => 53) > 0 AS started
FROM (VALUES (1), (3)) v(p);
SELECT stp_wait('cmb_shaped1', '60 s'), stp_wait('cmb_shaped3', '60 s');
SELECT (SELECT array_agg(row(col, type)::text) FROM stp_test_types('cmb_shaped1'))
       IS NOT DISTINCT FROM
       (SELECT array_agg(row(col, type)::text) FROM stp_test_types('cmb_shaped_batch')) AS same_types;
SELECT p, stp_test_diff(('cmb_shaped' || p)::regclass, 'mix, half, twice, wb',
                        'SELECT * FROM cmb_shaped_batch') AS mismatches
FROM (VALUES (1), (3)) v(p);
SELECT * FROM cmb_shaped3;

-- Row mode merges the partitions' states into the same rows.
SELECT stp_start_job('cmb_rows', 'SELECT grp, cmb_sum(x) AS s, cmb_avg(x) AS a, cmb_width(x) AS w FROM cmb GROUP BY grp',
                     'cmb_rows', partitions => 2, batch_size => 60, strategy => 'rows') > 0 AS started;
SELECT stp_wait('cmb_rows', '60 s');
SELECT stp_test_diff('cmb_rows', 'grp, s, a, w',
                     'SELECT grp, cmb_sum(x), cmb_avg(x), cmb_width(x) FROM cmb GROUP BY grp') AS mismatches;

-- A query without GROUP BY over an empty table returns one row, which the
-- job returns before any row arrives: the initial conditions, and the
-- final functions of them.
CREATE TABLE cmb_empty (id bigint GENERATED ALWAYS AS IDENTITY, x int4, f float8, g float8);
CREATE VIEW cmb_global_batch AS
    SELECT cmb_sum(x) AS s, cmb_avg(x) AS a, cmb_cnt(x) AS c, cmb_width(x) AS w,
           cmb_count_label(f, g) AS lbl, bit_xor(x) AS bx, regr_count(f, g) AS n
    FROM cmb_empty;
SELECT stp_start_job('cmb_global', pg_get_viewdef('cmb_global_batch'), 'cmb_global') > 0 AS started;
SELECT stp_wait('cmb_global', '60 s');
SELECT * FROM cmb_global;
SELECT * FROM cmb_global_batch;
SELECT stp_test_diff('cmb_global', 's, a, c, w, lbl, bx, n', 'SELECT * FROM cmb_global_batch') AS mismatches;
INSERT INTO cmb_empty (x, f, g) VALUES (NULL, NULL, 1), (4, 1, 2), (7, 2, NULL), (-3, 3, 4);
SELECT stp_wait('cmb_global', '60 s');
SELECT * FROM cmb_global;
SELECT stp_test_diff('cmb_global', 's, a, c, w, lbl, bx, n', 'SELECT * FROM cmb_global_batch') AS mismatches;

-- Stopped and resumed, the workers make their temporary aggregates again
-- and go on with the rows that arrived meanwhile.
SELECT stp_stop_job('cmb_plain' || p) FROM (VALUES (1), (3)) v(p);
SELECT stp_stop_job('cmb_shaped3');
SELECT cmb_fill(300);
SELECT stp_resume_job('cmb_plain' || p) FROM (VALUES (1), (3)) v(p);
SELECT stp_resume_job('cmb_shaped3');
SELECT stp_wait('cmb_plain1', '60 s'), stp_wait('cmb_plain3', '60 s'), stp_wait('cmb_shaped3', '60 s'),
       stp_wait('cmb_float3', '60 s'), stp_wait('cmb_rows', '60 s');
SELECT p, stp_test_diff(('cmb_plain' || p)::regclass, 'grp, s, a, c3, w, lbl, bx, aiv, none',
                        'SELECT * FROM cmb_plain_batch') AS mismatches
FROM (VALUES (1), (3)) v(p);
SELECT stp_test_diff('cmb_shaped3', 'mix, half, twice, wb', 'SELECT * FROM cmb_shaped_batch') AS mismatches;
SELECT stp_test_diff('cmb_rows', 'grp, s, a, w',
                     'SELECT grp, cmb_sum(x), cmb_avg(x), cmb_width(x) FROM cmb GROUP BY grp') AS mismatches;
-- A changed batch size reloads the job in the running workers, which make
-- their temporary aggregates again.
SELECT stp_alter_job('cmb_plain3', batch_size => 29);
SELECT cmb_fill(200);
SELECT stp_wait('cmb_plain3', '60 s');
SELECT stp_test_diff('cmb_plain3', 'grp, s, a, c3, w, lbl, bx, aiv, none',
                     'SELECT * FROM cmb_plain_batch') AS mismatches;
SELECT count(*) AS failed FROM stp.job_status WHERE job_name LIKE 'cmb%' AND state = 'failed';

-- Refused, each with the reason and what to do instead.
\x on
-- states of type internal
SELECT * FROM cmb_error($q$SELECT stp_start_job('bad', 'SELECT grp, string_agg(x::text, '','') AS s FROM cmb GROUP BY grp', 'bad')$q$);
SELECT * FROM cmb_error($q$SELECT stp_start_job('bad', 'SELECT grp, array_agg(x) AS s FROM cmb GROUP BY grp', 'bad')$q$);
SELECT * FROM cmb_error($q$SELECT stp_start_job('bad', 'SELECT grp, stddev(x) AS s FROM cmb GROUP BY grp', 'bad')$q$);
-- ordered-set aggregates
SELECT * FROM cmb_error($q$SELECT stp_start_job('bad', 'SELECT grp, percentile_cont(0.5) WITHIN GROUP (ORDER BY f) AS p FROM cmb GROUP BY grp', 'bad')$q$);
-- no combine function
CREATE AGGREGATE cmb_nocombine(int4) (SFUNC = int4pl, STYPE = int4);
SELECT * FROM cmb_error($q$SELECT stp_start_job('bad', 'SELECT grp, cmb_nocombine(x) AS s FROM cmb GROUP BY grp', 'bad')$q$);
-- a polymorphic state
CREATE FUNCTION cmb_first(s anyelement, x anyelement) RETURNS anyelement LANGUAGE sql IMMUTABLE
    AS $$SELECT coalesce(s, x)$$;
CREATE AGGREGATE cmb_any(anyelement) (SFUNC = cmb_first, STYPE = anyelement, COMBINEFUNC = cmb_first);
SELECT * FROM cmb_error($q$SELECT stp_start_job('bad', 'SELECT grp, cmb_any(x) AS s FROM cmb GROUP BY grp', 'bad')$q$);
-- a final function with extra arguments
CREATE FUNCTION cmb_extra_final(s int4, x int4) RETURNS int4 LANGUAGE sql IMMUTABLE AS $$SELECT s$$;
CREATE AGGREGATE cmb_extra(int4) (SFUNC = int4pl, STYPE = int4, COMBINEFUNC = int4pl,
    FINALFUNC = cmb_extra_final, FINALFUNC_EXTRA);
SELECT * FROM cmb_error($q$SELECT stp_start_job('bad', 'SELECT grp, cmb_extra(x) AS s FROM cmb GROUP BY grp', 'bad')$q$);
-- DISTINCT, a hopping window, a slot source
SELECT * FROM cmb_error($q$SELECT stp_start_job('bad', 'SELECT grp, cmb_sum(DISTINCT x) AS s FROM cmb GROUP BY grp', 'bad')$q$);
CREATE TABLE cmb_ts (id bigint GENERATED ALWAYS AS IDENTITY, ts timestamptz, x int4);
SELECT * FROM cmb_error($q$SELECT stp_start_job('bad', 'SELECT w, cmb_avg(x) AS a FROM cmb_ts, stp.hop(ts, ''1 minute'', ''10 seconds'') AS w GROUP BY w', 'bad')$q$);
SELECT * FROM cmb_error($q$SELECT stp_start_job('bad', 'SELECT grp, cmb_sum(x) AS s FROM cmb GROUP BY grp', 'bad', source => 'slot')$q$);
-- a name too long for the state column
SELECT * FROM cmb_error($q$SELECT stp_start_job('bad', 'SELECT grp, cmb_avg(x) AS a234567890123456789012345678901234567890123456789012345 FROM cmb GROUP BY grp', 'bad')$q$);

-- A role that may not execute the aggregate's functions, or create
-- temporary objects, cannot create a job with it; nothing is left behind.
CREATE ROLE regress_stp_cmb LOGIN;
GRANT SELECT ON cmb TO regress_stp_cmb;
GRANT CREATE ON SCHEMA public TO regress_stp_cmb;
CREATE FUNCTION cmb_secret_step(s int4, x int4) RETURNS int4 LANGUAGE sql IMMUTABLE STRICT
    AS $$SELECT s + x$$;
REVOKE EXECUTE ON FUNCTION cmb_secret_step(int4, int4) FROM PUBLIC;
CREATE AGGREGATE cmb_secret(int4) (SFUNC = cmb_secret_step, STYPE = int4, COMBINEFUNC = int4pl);
SET ROLE regress_stp_cmb;
SELECT cmb_secret(x) > 0 AS the_aggregate_works FROM cmb;
SELECT * FROM cmb_error($q$SELECT stp_start_job('bad', 'SELECT grp, cmb_secret(x) AS s FROM cmb GROUP BY grp', 'bad')$q$);
RESET ROLE;
SELECT format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database()) \gexec
SET ROLE regress_stp_cmb;
SELECT * FROM cmb_error($q$SELECT stp_start_job('bad', 'SELECT grp, cmb_avg(x) AS a FROM cmb GROUP BY grp', 'bad')$q$);
-- every combinable aggregate merges through temporary aggregates
SELECT * FROM cmb_error($q$SELECT stp_start_job('bad', 'SELECT grp, cmb_sum(x) AS s FROM cmb GROUP BY grp', 'bad')$q$);
RESET ROLE;
SELECT format('GRANT TEMPORARY ON DATABASE %I TO PUBLIC', current_database()) \gexec
\x off
SELECT count(*) AS left_behind FROM pg_class WHERE relname = 'bad';
-- With the privileges, the role's job runs in its own name.
SET ROLE regress_stp_cmb;
SELECT stp_start_job('cmb_owned', 'SELECT grp, cmb_avg(x) AS a, cmb_sum(x) AS s FROM cmb GROUP BY grp',
                     'cmb_owned', partitions => 2) > 0 AS started;
RESET ROLE;
SELECT stp_wait('cmb_owned', '60 s');
SELECT stp_test_diff('cmb_owned', 'grp, a, s', 'SELECT grp, cmb_avg(x), cmb_sum(x) FROM cmb GROUP BY grp') AS mismatches;
SELECT DISTINCT usename FROM pg_stat_activity WHERE backend_type = 'stp worker' AND usename = 'regress_stp_cmb';
-- A worker whose owner lost TEMPORARY fails its partition with the reason;
-- with it back, the resumed job catches up.
SELECT stp_stop_job('cmb_owned');
SELECT format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database()) \gexec
SELECT cmb_fill(100);
SELECT stp_resume_job('cmb_owned');
SELECT * FROM stp_test_failed('cmb_owned');
SELECT format('GRANT TEMPORARY ON DATABASE %I TO PUBLIC', current_database()) \gexec
SELECT stp_resume_job('cmb_owned');
SELECT stp_wait('cmb_owned', '60 s');
SELECT stp_test_diff('cmb_owned', 'grp, a, s', 'SELECT grp, cmb_avg(x), cmb_sum(x) FROM cmb GROUP BY grp') AS mismatches;

SELECT stp_drop_job(job_name, true) FROM stp.jobs WHERE job_name LIKE 'cmb%' ORDER BY job_name;
DROP TABLE cmb_ts;
REVOKE ALL ON cmb FROM regress_stp_cmb;
REVOKE CREATE ON SCHEMA public FROM regress_stp_cmb;
DROP ROLE regress_stp_cmb;

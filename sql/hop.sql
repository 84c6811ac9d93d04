-- Hopping windows: stp.hop() in FROM, kept as panes of width
-- gcd(size, slide) and combined into windows by the result view.  Each
-- job's result equals its query as a batch SELECT, and the same query
-- written with generate_series, at 1 and 3 partitions.

-- stp.hop() returns the starts of the windows [start, start + size) that
-- hold ts, start = origin + k * slide; the same as generate_series.
CREATE FUNCTION hop_series(ts timestamptz, size interval, slide interval, origin timestamptz)
RETURNS SETOF timestamptz LANGUAGE sql IMMUTABLE AS $$
    SELECT s FROM (SELECT ts WHERE isfinite(ts)) t,
                  generate_series(date_bin(slide, t.ts - size, origin), t.ts, slide) s
    WHERE s <= t.ts AND t.ts < s + size
$$;
SELECT * FROM stp.hop('2024-01-01 00:00:05+00', '1 minute', '10 seconds');
SELECT * FROM stp.hop('2024-01-01 00:00:05', '1 minute', '25 seconds', '2024-01-01 00:00:07');
SELECT count(*) AS stamps,
       count(*) FILTER (WHERE (SELECT array_agg(h) FROM stp.hop(ts, size, slide, origin) h)
                              = (SELECT array_agg(h) FROM hop_series(ts, size, slide, origin) h))
         AS equal
FROM generate_series(timestamptz '1969-12-31 23:58:00+00', '1970-01-01 00:03:00+00', '1.7 seconds') ts,
     (VALUES (interval '1 minute', interval '10 seconds', timestamptz '1970-01-01 00:00:00+00'),
             ('1 minute', '25 seconds', '1970-01-01 00:00:07+00'),
             ('30 seconds', '30 seconds', '1969-01-01 00:00:00.5+00'),
             ('1 day', '1 hour', '2000-01-01 00:00:00+00')) p(size, slide, origin);
-- the panes: bins of width gcd(size, slide)
SELECT stp.hop_pane('2024-01-01 00:00:33+00', '1 minute', '25 seconds', '2024-01-01 00:00:07+00'),
       stp.hop_pane('1969-12-31 23:59:59.5', '1 minute', '10 seconds'),
       stp.hop_pane('infinity'::timestamptz, '1 minute', '10 seconds');
SELECT count(*) FROM stp.hop('infinity'::timestamptz, '1 minute', '10 seconds');
SELECT count(*) FROM stp.hop(NULL::timestamptz, '1 minute', '10 seconds');

CREATE FUNCTION hop_error(stmt text, OUT code text, OUT message text, OUT hint text)
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE stmt;
    code := 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, message = MESSAGE_TEXT,
                            hint = PG_EXCEPTION_HINT;
END $$;
\x on
SELECT * FROM hop_error($q$SELECT stp.hop(now(), '1 month', '1 day')$q$);
SELECT * FROM hop_error($q$SELECT stp.hop(now(), '1 minute', '0 seconds')$q$);
SELECT * FROM hop_error($q$SELECT stp.hop(now(), '-1 minute', '10 seconds')$q$);
SELECT * FROM hop_error($q$SELECT stp.hop(now(), '1 minute', '2 minutes')$q$);
SELECT * FROM hop_error($q$SELECT stp.hop(now(), '1 day', '1 second')$q$);
SELECT * FROM hop_error($q$SELECT stp.hop(now(), '1 minute', '1 second', '-infinity')$q$);
\x off

-- Rows over a few minutes, some with a NULL or an infinite timestamp, in
-- small batches, so that windows hop across batch boundaries.
CREATE TABLE hp (
    id bigint GENERATED ALWAYS AS IDENTITY,
    k int, ts timestamptz, lts timestamp, x int4, y numeric, f float8, b boolean,
    bits int4, s text
);
CREATE FUNCTION hp_insert(n int, seed int) RETURNS void LANGUAGE sql AS $$
    INSERT INTO hp (k, ts, lts, x, y, f, b, bits, s)
    SELECT g % 4,
           CASE WHEN g % 97 = 0 THEN NULL
                WHEN g % 251 = 0 THEN 'infinity'
                ELSE timestamptz '2024-01-01 00:00:00+00' + (g * 7 % 400) * interval '0.75 s' END,
           timestamp '2024-01-01 00:00:00' + (g * 13 % 300) * interval '1 s',
           CASE WHEN g % 11 = 0 THEN NULL ELSE g % 50 END,
           CASE WHEN g % 13 = 0 THEN NULL ELSE g / 4.0 END,
           CASE WHEN g % 17 = 0 THEN NULL ELSE (g % 64) * 0.25 END,
           CASE WHEN g % 19 = 0 THEN NULL ELSE g % 3 = 0 END,
           CASE WHEN g % 23 = 0 THEN NULL ELSE g % 64 END,
           CASE WHEN g % 7 = 0 THEN NULL ELSE 's' || (g % 5) END
    FROM generate_series(seed, seed + n - 1) g
$$;
SELECT hp_insert(1500, 1);

-- Every aggregate that combines from panes, grouped by a key and the
-- window: 1 minute sliding by 10 seconds.
CREATE VIEW hp_batch_all AS
    SELECT k, w AS win, count(*) AS n, count(x) AS nx, sum(x) AS sx, sum(y) AS sy,
           sum(f) AS sf, min(x) AS lo, max(s) AS hi, avg(x) AS ax, avg(f) AS af,
           avg(y) AS ay, bool_and(b) AS all_b, bool_or(b) AS any_b, bit_and(bits) AS and_bits,
           bit_or(bits) AS or_bits, var_pop(f) AS vp, stddev(f) AS sd
    FROM hp, stp.hop(ts, '1 minute', '10 seconds') AS w
    GROUP BY k, w;
SELECT stp_start_job('hop_all' || p, pg_get_viewdef('hp_batch_all'), 'hop_all' || p,
                     partitions => p, batch_size => 37) > 0 AS started
FROM (VALUES (1), (3)) v(p);

-- FILTER, HAVING, ORDER BY, expressions over the window and the
-- aggregates, a row WHERE; 1 minute sliding by 25 seconds from an origin
-- (panes of 5 seconds).
CREATE VIEW hp_batch_shaped AS
    SELECT w + interval '1 minute' AS win_end, k, w AS win,
           count(*) FILTER (WHERE x > 10) AS n_big, sum(y) FILTER (WHERE s IS NULL) AS sy_null,
           avg(x) FILTER (WHERE b) AS ax_b, max(x) - min(x) AS spread,
           sum(x)::numeric / NULLIF(count(*), 0) AS ratio
    FROM hp, stp.hop(ts, '1 minute', '25 seconds', '2024-01-01 00:00:07+00') AS w
    WHERE k <> 2
    GROUP BY k, w HAVING count(*) > 5
    ORDER BY w DESC, k;
SELECT stp_start_job('hop_shaped' || p, pg_get_viewdef('hp_batch_shaped'), 'hop_shaped' || p,
                     partitions => p, batch_size => 41) > 0 AS started
FROM (VALUES (1), (3)) v(p);

-- Timestamps without time zone, the window alone as key, not selected.
CREATE VIEW hp_batch_lts AS
    SELECT count(*) AS n, sum(x) AS sx
    FROM hp, LATERAL stp.hop(lts, '2 minutes', '30 seconds') AS w(start)
    GROUP BY start;
SELECT stp_start_job('hop_lts', pg_get_viewdef('hp_batch_lts'), 'hop_lts',
                     batch_size => 53) > 0 AS started;

SELECT stp_wait('hop_all1', '60 s'), stp_wait('hop_all3', '60 s'),
       stp_wait('hop_shaped1', '60 s'), stp_wait('hop_shaped3', '60 s'),
       stp_wait('hop_lts', '60 s');

-- Compare with the batch query; floats may differ by summation order only.
CREATE FUNCTION hp_check() RETURNS TABLE (job text, groups bigint, mismatches bigint)
LANGUAGE sql AS $$
    SELECT 'hop_all' || p, (SELECT count(*) FROM hp_batch_all),
           stp_test_diff(('hop_all' || p)::regclass,
               'k, win, n, nx, sx, sy, round(sf::numeric, 6), lo, hi, ax, round(af::numeric, 9), ay, '
               'all_b, any_b, and_bits, or_bits, round(vp::numeric, 9), round(sd::numeric, 9)',
               'SELECT k, win, n, nx, sx, sy, round(sf::numeric, 6), lo, hi, ax, round(af::numeric, 9), ay, '
               'all_b, any_b, and_bits, or_bits, round(vp::numeric, 9), round(sd::numeric, 9) FROM hp_batch_all')
    FROM (VALUES (1), (3)) v(p)
    UNION ALL
    SELECT 'hop_shaped' || p, (SELECT count(*) FROM hp_batch_shaped),
           stp_test_diff(('hop_shaped' || p)::regclass, '*', 'SELECT * FROM hp_batch_shaped')
    FROM (VALUES (1), (3)) v(p)
    UNION ALL
    SELECT 'hop_lts', (SELECT count(*) FROM hp_batch_lts),
           stp_test_diff('hop_lts', '*', 'SELECT * FROM hp_batch_lts')
$$;
SELECT * FROM hp_check();
-- the same windows as generate_series gives
SELECT stp_test_diff('hop_shaped3', '*', $$
    SELECT w + interval '1 minute', k, w, count(*) FILTER (WHERE x > 10),
           sum(y) FILTER (WHERE s IS NULL), avg(x) FILTER (WHERE b), max(x) - min(x),
           sum(x)::numeric / NULLIF(count(*), 0)
    FROM hp, LATERAL hop_series(ts, '1 minute', '25 seconds', '2024-01-01 00:00:07+00') AS w
    WHERE k <> 2 GROUP BY k, w HAVING count(*) > 5$$) AS mismatches;
-- the view returns the rows in the query's order
SELECT (SELECT array_agg(t ORDER BY n) FROM (SELECT row_number() OVER () n, t FROM hop_shaped3 t) r)::text
     = (SELECT array_agg(t ORDER BY n) FROM (SELECT row_number() OVER () n, t FROM hp_batch_shaped t) r)::text
       AS same_order;
SELECT * FROM stp_test_types('hop_all1');
SELECT * FROM stp_test_types('hop_shaped1_state');
SELECT key_names, key_exprs FROM stp.jobs WHERE job_name = 'hop_shaped1';
SELECT * FROM hop_shaped1 WHERE k = 1 ORDER BY win LIMIT 3;
-- the state keeps one row per group and pane: 5 s panes of a 1 minute window
SELECT count(*) = count(DISTINCT (k, win)) AS one_row_per_pane,
       count(*) FILTER (WHERE extract(epoch FROM win - '2024-01-01 00:00:07+00') % 5 <> 0) AS unaligned
FROM hop_shaped1_state WHERE win <> 'infinity';

-- Rows that arrive later fall into windows whose panes are partly counted.
SELECT hp_insert(700, 5000);
SELECT stp_wait('hop_all1', '60 s'), stp_wait('hop_all3', '60 s'),
       stp_wait('hop_shaped1', '60 s'), stp_wait('hop_shaped3', '60 s'),
       stp_wait('hop_lts', '60 s');
SELECT * FROM hp_check();

-- What a query with stp.hop() cannot do.
\x on
SELECT * FROM hop_error($q$SELECT stp_start_job('bad', 'SELECT w, count(DISTINCT x) AS n FROM hp, stp.hop(ts, ''1 minute'', ''10 seconds'') w GROUP BY w', 'bad')$q$);
SELECT * FROM hop_error($q$SELECT stp_start_job('bad', 'SELECT k, count(*) AS n FROM hp, stp.hop(ts, ''1 minute'', ''10 seconds'') w GROUP BY k', 'bad')$q$);
SELECT * FROM hop_error($q$SELECT stp_start_job('bad', 'SELECT w, count(*) AS n FROM hp, stp.hop(ts, ''1 minute'', ''10 seconds'') w WHERE w > ''2024-01-01'' GROUP BY w', 'bad')$q$);
SELECT * FROM hop_error($q$SELECT stp_start_job('bad', 'SELECT w, max(w) AS n FROM hp, stp.hop(ts, ''1 minute'', ''10 seconds'') w GROUP BY w', 'bad')$q$);
SELECT * FROM hop_error($q$SELECT stp_start_job('bad', 'SELECT date_trunc(''hour'', w) AS h, count(*) AS n FROM hp, stp.hop(ts, ''1 minute'', ''10 seconds'') w GROUP BY 1', 'bad')$q$);
SELECT * FROM hop_error($q$SELECT stp_start_job('bad', 'SELECT w, count(*) AS n FROM hp, stp.hop(ts, make_interval(secs => x), ''10 seconds'') w GROUP BY w', 'bad')$q$);
SELECT * FROM hop_error($q$SELECT stp_start_job('bad', 'SELECT w, count(*) AS n FROM hp, stp.hop(ts, ''1 minute'', ''2 minutes'') w GROUP BY w', 'bad')$q$);
SELECT * FROM hop_error($q$SELECT stp_start_job('bad', 'SELECT w, count(*) AS n FROM hp, stp.hop(ts, ''1 month'', ''1 day'') w GROUP BY w', 'bad')$q$);
SELECT * FROM hop_error($q$SELECT stp_start_job('bad', 'SELECT g, count(*) AS n FROM hp, generate_series(1, 3) g GROUP BY g', 'bad')$q$);
SELECT * FROM hop_error($q$SELECT stp_start_job('bad', 'SELECT w, count(*) AS n FROM hp, stp.hop(ts, ''1 minute'', ''10 seconds'') WITH ORDINALITY w GROUP BY w', 'bad')$q$);
SELECT * FROM hop_error($q$SELECT stp_start_job('bad', 'SELECT w, count(*) AS n FROM hp JOIN LATERAL stp.hop(ts, ''1 minute'', ''10 seconds'') w ON true GROUP BY w', 'bad')$q$);
\x off
SELECT count(*) AS jobs FROM stp.jobs WHERE job_name = 'bad';

SELECT stp_drop_job(job_name, true) FROM stp.jobs WHERE job_name LIKE 'hop%' ORDER BY job_name;
SELECT count(*) AS left_over FROM pg_class WHERE relname LIKE 'hop\_%';

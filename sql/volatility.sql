-- Functions whose value depends on when or where they run are refused:
-- a job reads each row once, at a time of its own.  Built-in functions
-- that are STABLE only because they read TimeZone, DateStyle or a locale
-- are accepted, and the job's result equals the batch query.
SET timezone = 'America/New_York';
SET datestyle = 'ISO, YMD';
CREATE TABLE vt (id bigserial, ts timestamptz, k int, v numeric, s text);
INSERT INTO vt (ts, k, v, s)
SELECT '2024-03-09 20:00:00+00'::timestamptz + g * interval '7 minutes 13 seconds',
       g % 5, g / 7.0, to_char(date '2024-03-01' + g % 11, 'YYYY-MM-DD')
FROM generate_series(1, 1500) g;
CREATE FUNCTION vol_stable(int) RETURNS int LANGUAGE sql STABLE AS 'SELECT $1 + 1';
CREATE FUNCTION vol_immutable(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT $1 + 1';

-- Refused: the clock, the session, settings, the catalog, and user-defined
-- STABLE functions, wherever they appear.
SELECT stp_start_job('v', $$SELECT k, count(*) AS n FROM vt WHERE ts > now() - interval '2 seconds' GROUP BY k$$, 'v');
SELECT stp_start_job('v', $$SELECT k, count(*) AS n FROM vt WHERE ts::date = current_date GROUP BY k$$, 'v');
SELECT stp_start_job('v', $$SELECT k, count(*) AS n FROM vt WHERE ts < CURRENT_TIMESTAMP GROUP BY k$$, 'v');
SELECT stp_start_job('v', $$SELECT k, count(*) AS n FROM vt WHERE ts::timestamp < LOCALTIMESTAMP GROUP BY k$$, 'v');
SELECT stp_start_job('v', $$SELECT k, count(*) AS n FROM vt WHERE s = current_setting('application_name') GROUP BY k$$, 'v');
SELECT stp_start_job('v', $$SELECT k, count(*) AS n FROM vt WHERE s <> CURRENT_USER GROUP BY k$$, 'v');
SELECT stp_start_job('v', $$SELECT k, count(*) AS n FROM vt WHERE ts > statement_timestamp() GROUP BY k$$, 'v');
SELECT stp_start_job('v', $$SELECT age(ts) AS a, count(*) AS n FROM vt GROUP BY a$$, 'v');
SELECT stp_start_job('v', $$SELECT k, sum(extract(epoch FROM transaction_timestamp() - ts)) AS n FROM vt GROUP BY k$$, 'v');
SELECT stp_start_job('v', $$SELECT current_database() AS db, count(*) AS n FROM vt GROUP BY db$$, 'v');
SELECT stp_start_job('v', $$SELECT k, count(*) AS n FROM vt WHERE to_regclass(s) IS NULL GROUP BY k$$, 'v');
SELECT stp_start_job('v', $$SELECT k, count(*) AS n FROM vt WHERE has_table_privilege('vt', 'SELECT') GROUP BY k$$, 'v');
SELECT stp_start_job('v', $$SELECT pg_backend_pid() AS p, count(*) AS n FROM vt GROUP BY p$$, 'v');
SELECT stp_start_job('v', $$SELECT vol_stable(k) AS k1, count(*) AS n FROM vt GROUP BY k1$$, 'v');
SELECT stp_start_job('v', $$SELECT k, max(vol_stable(k)) AS n FROM vt GROUP BY k$$, 'v');
SELECT stp_start_job('v', $$SELECT k, count(*) AS n FROM vt WHERE vol_stable(k) > 2 GROUP BY k$$, 'v');
SELECT stp_start_job('v', $$SELECT to_tsvector(s) AS t, count(*) AS n FROM vt GROUP BY t$$, 'v');
SELECT stp_start_job('v', $$SELECT concat(s, ROW(k, s)) AS c, count(*) AS n FROM vt GROUP BY c$$, 'v');
SELECT count(*) AS jobs FROM stp.jobs;
SELECT count(*) AS tables FROM pg_class WHERE relname = 'v';

-- Accepted: an IMMUTABLE function, and built-in functions that read
-- TimeZone, DateStyle or a locale only.
SELECT stp_start_job('v_windows',
    $$SELECT date_trunc('hour', ts) AS h, date_part('dow', ts) AS dow, extract(epoch FROM date_trunc('day', ts)) AS day_epoch,
             date_bin('15 minutes', ts, '2024-01-01') AS q, count(*) AS n, sum(v) AS sv
      FROM vt GROUP BY h, dow, day_epoch, q$$,
    'v_windows', partitions => 2, batch_size => 200) > 0 AS started;
SELECT stp_start_job('v_labels',
    $$SELECT to_char(ts, 'YYYY-MM-DD') AS day, to_char(ts, 'HH24:MI') AS minute, to_char(v, 'FM999990.00') AS vl,
             'k' || k AS kl, concat(k, '/', s) AS ks, format('%s-%s', k, s) AS kf, count(*) AS n
      FROM vt GROUP BY day, minute, vl, kl, ks, kf$$,
    'v_labels', partitions => 3, batch_size => 300) > 0 AS started;
SELECT stp_start_job('v_casts',
    $$SELECT ts::date AS d, (ts + interval '90 minutes')::timestamp AS local, ts::text AS t,
             (ts - interval '1 day')::time AS tm, s::timestamptz AS st, to_date(s, 'YYYY-MM-DD') AS sd,
             age(ts, '2024-03-01 00:00+00') AS ag, ts AT TIME ZONE 'Asia/Tokyo' AS tokyo,
             vol_immutable(k) AS k1, count(*) AS n
      FROM vt
      WHERE ts >= '2024-03-10'::date AND ts < to_timestamp('2024-03-15', 'YYYY-MM-DD')
        AND ts < make_timestamptz(2024, 3, 16, 0, 0, 0) AND ts::timestamp > '2024-03-10 02:00'
      GROUP BY d, local, t, tm, st, sd, ag, tokyo, k1$$,
    'v_casts', partitions => 2, batch_size => 250) > 0 AS started;
INSERT INTO vt (ts, k, v, s)
SELECT '2024-03-12 00:00:00+00'::timestamptz + g * interval '11 minutes 3 seconds',
       g % 7, g / 3.0, to_char(date '2024-03-05' + g % 13, 'YYYY-MM-DD')
FROM generate_series(1, 700) g;
SELECT stp_wait('v_windows', '60 s'), stp_wait('v_labels', '60 s'), stp_wait('v_casts', '60 s');
SELECT stp_test_diff('v_windows', 'h, dow, day_epoch, q, n, sv',
    $$SELECT date_trunc('hour', ts), date_part('dow', ts), extract(epoch FROM date_trunc('day', ts)),
             date_bin('15 minutes', ts, '2024-01-01'), count(*), sum(v)
      FROM vt GROUP BY 1, 2, 3, 4$$) AS windows_differences;
SELECT stp_test_diff('v_labels', 'day, minute, vl, kl, ks, kf, n',
    $$SELECT to_char(ts, 'YYYY-MM-DD'), to_char(ts, 'HH24:MI'), to_char(v, 'FM999990.00'),
             'k' || k, concat(k, '/', s), format('%s-%s', k, s), count(*)
      FROM vt GROUP BY 1, 2, 3, 4, 5, 6$$) AS labels_differences;
SELECT stp_test_diff('v_casts', 'd, local, t, tm, st, sd, ag, tokyo, k1, n',
    $$SELECT ts::date, (ts + interval '90 minutes')::timestamp, ts::text,
             (ts - interval '1 day')::time, s::timestamptz, to_date(s, 'YYYY-MM-DD'),
             age(ts, '2024-03-01 00:00+00'), ts AT TIME ZONE 'Asia/Tokyo', vol_immutable(k), count(*)
      FROM vt
      WHERE ts >= '2024-03-10'::date AND ts < to_timestamp('2024-03-15', 'YYYY-MM-DD')
        AND ts < make_timestamptz(2024, 3, 16, 0, 0, 0) AND ts::timestamp > '2024-03-10 02:00'
      GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9$$) AS casts_differences;
SELECT (SELECT count(*) FROM v_windows) > 100 AS windows_groups,
       (SELECT count(*) FROM v_labels) > 100 AS labels_groups,
       (SELECT sum(n) FROM v_casts) > 100 AS casts_rows;

SELECT stp_drop_job('v_windows', true);
SELECT stp_drop_job('v_labels', true);
SELECT stp_drop_job('v_casts', true);
DROP TABLE vt;
DROP FUNCTION vol_stable(int), vol_immutable(int);
RESET timezone;
RESET datestyle;

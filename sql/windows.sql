-- Tumbling event-time windows: date_bin and date_trunc as group keys,
-- with a WHERE clause.
SET timezone = 'UTC';
CREATE TABLE events (id bigserial, ts timestamptz NOT NULL, kind text, page text, bytes int);
INSERT INTO events (ts, kind, page, bytes)
SELECT '2026-03-01 00:00:00+00'::timestamptz + g * interval '7 seconds',
       CASE WHEN g % 3 = 0 THEN 'click' ELSE 'view' END, 'page' || (g % 3), g
FROM generate_series(0, 1999) g;

SELECT stp_start_job('views_per_minute', $$
    SELECT page, date_bin('1 minute', ts, 'epoch') AS minute,
           count(*) AS views, sum(bytes) AS bytes, max(bytes) AS biggest
    FROM events WHERE kind = 'view'
    GROUP BY page, minute$$, 'views_per_minute', partitions => 2, batch_size => 250) > 0 AS started;
SELECT stp_start_job('clicks_per_hour', $$
    SELECT date_trunc('hour', ts) AS hour, count(*) AS clicks
    FROM events WHERE kind = 'click' AND bytes % 2 = 0
    GROUP BY 1$$, 'clicks_per_hour', batch_size => 300) > 0 AS started;
SELECT stp_wait('views_per_minute', '30 s'), stp_wait('clicks_per_hour', '30 s');

SELECT * FROM stp_test_types('views_per_minute');
SELECT count(*) AS windows FROM views_per_minute;
SELECT * FROM views_per_minute ORDER BY minute, page LIMIT 4;
SELECT * FROM clicks_per_hour ORDER BY hour;
SELECT stp_test_diff('views_per_minute', 'page, minute, views, bytes, biggest',
    $$SELECT page, date_bin('1 minute', ts, 'epoch'), count(*), sum(bytes), max(bytes)
      FROM events WHERE kind = 'view' GROUP BY 1, 2$$);
SELECT stp_test_diff('clicks_per_hour', 'hour, clicks',
    $$SELECT date_trunc('hour', ts), count(*) FROM events
      WHERE kind = 'click' AND bytes % 2 = 0 GROUP BY 1$$);

-- The worker uses the creating session's time zone for stable functions.
SET timezone = 'America/New_York';
SELECT stp_start_job('clicks_per_day_ny', $$
    SELECT date_trunc('day', ts) AS day, count(*) AS clicks FROM events GROUP BY 1$$,
    'clicks_per_day_ny') > 0 AS started;
SELECT stp_wait('clicks_per_day_ny', '30 s');
SELECT stp_test_diff('clicks_per_day_ny', 'day, clicks',
    $$SELECT date_trunc('day', ts), count(*) FROM events GROUP BY 1$$);
RESET timezone;

SELECT stp_drop_job('views_per_minute', true);
SELECT stp_drop_job('clicks_per_hour', true);
SELECT stp_drop_job('clicks_per_day_ny', true);
DROP TABLE events;

-- Constants in a job's query mean the same in its workers, whatever the
-- creating session's DateStyle, IntervalStyle and extra_float_digits.
CREATE TABLE styled (id bigserial, ts timestamptz, f float8);
INSERT INTO styled (ts, f) VALUES ('2024-01-02 10:30+00', 0.30000000000000004),
    ('2024-01-02 10:30+00', 0.3), ('2024-02-01 23:30+00', 0.3);
BEGIN;
SET LOCAL DateStyle = 'SQL, DMY';
SET LOCAL IntervalStyle = 'sql_standard';
SET LOCAL extra_float_digits = 0;
SET LOCAL TimeZone = 'UTC';
SELECT stp_start_job('styled_dates', $$SELECT ts::date AS d, count(*) AS n FROM styled
                     WHERE ts < '2024-01-05 00:00+00' GROUP BY d$$, 'styled_dates') > 0 AS started;
SELECT stp_start_job('styled_intervals', $$SELECT date_trunc('hour', ts + '-1 day -2 hours'::interval) AS h,
                     count(*) AS n FROM styled GROUP BY h$$, 'styled_intervals') > 0 AS started;
SELECT stp_start_job('styled_floats', $$SELECT f, count(*) AS n FROM styled
                     WHERE f < '0.30000000000000004'::float8 GROUP BY f$$, 'styled_floats') > 0 AS started;
COMMIT;
SET TimeZone = 'UTC';
SELECT stp_wait('styled_dates', '30 s'), stp_wait('styled_intervals', '30 s'), stp_wait('styled_floats', '30 s');
SELECT * FROM styled_dates ORDER BY d;
SELECT * FROM styled_intervals ORDER BY h;
SELECT * FROM styled_floats ORDER BY f;
SELECT stp_drop_job('styled_dates', true);
SELECT stp_drop_job('styled_intervals', true);
SELECT stp_drop_job('styled_floats', true);
DROP TABLE styled;
RESET timezone;

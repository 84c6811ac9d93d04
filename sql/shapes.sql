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

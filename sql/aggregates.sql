-- Every aggregate over every supported type: values and result types equal
-- the batch query's.  Small batches make the workers merge many times.
CREATE TABLE measures (
    id bigint GENERATED ALWAYS AS IDENTITY,
    grp int,
    i2 int2, i4 int4, i8 int8, num numeric, f4 float4, f8 float8, t text
);
INSERT INTO measures (grp, i2, i4, i8, num, f4, f8, t)
SELECT g % 4, (g % 100)::int2, g * 1000, g::int8 * 1000000000000, g / 8.0,
       (g % 16) * 0.25, g * 0.5, 'v' || lpad((g * 7 % 101)::text, 3, '0')
FROM generate_series(1, 500) g;
-- int8 sums that exceed int8 stay exact as numeric
INSERT INTO measures (grp, i8) VALUES (9, 9223372036854775807), (9, 9223372036854775807);

SELECT stp_start_job('all_aggs', $$
    SELECT grp,
           count(*) AS n, count(i2) AS n_i2, count(t) AS n_t,
           sum(i2) AS sum_i2, sum(i4) AS sum_i4, sum(i8) AS sum_i8, sum(num) AS sum_num,
           sum(f4) AS sum_f4, sum(f8) AS sum_f8,
           min(i2) AS min_i2, min(i4) AS min_i4, min(i8) AS min_i8, min(num) AS min_num,
           min(f4) AS min_f4, min(f8) AS min_f8, min(t) AS min_t,
           max(i2) AS max_i2, max(i4) AS max_i4, max(i8) AS max_i8, max(num) AS max_num,
           max(f4) AS max_f4, max(f8) AS max_f8, max(t) AS max_t,
           avg(i2) AS avg_i2, avg(i4) AS avg_i4, avg(i8) AS avg_i8, avg(num) AS avg_num,
           avg(f4) AS avg_f4, avg(f8) AS avg_f8
    FROM measures GROUP BY grp$$, 'all_aggs', partitions => 3, batch_size => 37) > 0 AS started;
SELECT stp_wait('all_aggs', '60 s');

SELECT * FROM stp_test_types('all_aggs');

SELECT stp_test_diff('all_aggs',
    'grp, n, n_i2, n_t, sum_i2, sum_i4, sum_i8, sum_num, sum_f4, sum_f8,
     min_i2, min_i4, min_i8, min_num, min_f4, min_f8, min_t,
     max_i2, max_i4, max_i8, max_num, max_f4, max_f8, max_t,
     avg_i2, avg_i4, avg_i8, avg_num, avg_f4, avg_f8',
    $$SELECT grp,
           count(*), count(i2), count(t),
           sum(i2), sum(i4), sum(i8), sum(num), sum(f4), sum(f8),
           min(i2), min(i4), min(i8), min(num), min(f4), min(f8), min(t),
           max(i2), max(i4), max(i8), max(num), max(f4), max(f8), max(t),
           avg(i2), avg(i4), avg(i8), avg(num), avg(f4), avg(f8)
    FROM measures GROUP BY grp$$) AS mismatches;

SELECT grp, n, sum_i8, avg_i8, avg_num, avg_f8, min_t, max_t FROM all_aggs ORDER BY grp;

-- A job without aggregates keeps the distinct groups.
SELECT stp_start_job('groups_only', $$SELECT grp, i2 AS bucket FROM measures WHERE i2 < 3 GROUP BY grp, i2$$,
                     'groups_only', batch_size => 50) > 0 AS started;
SELECT stp_wait('groups_only', '60 s');
SELECT * FROM groups_only ORDER BY grp, bucket;

SELECT stp_drop_job('all_aggs', true);
SELECT stp_drop_job('groups_only', true);
DROP TABLE measures;

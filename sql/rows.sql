-- Row mode (strategy 'rows'): the partitions own id ranges, batch_size /
-- partitions ids wide, taken in turn, and each merges all of its groups
-- into the shared result rows.  The results must equal the batch query
-- exactly, with 1, 2 and 3 partitions, few groups, a NULL group and a
-- query without GROUP BY.
CREATE TABLE ev (id bigserial, k int, v int, f float8, b bool);
INSERT INTO ev (k, v, f, b)
SELECT g % 3, g % 101, (g % 7) / 4.0, g % 5 = 0 FROM generate_series(1, 5000) g;
INSERT INTO ev (k, v) SELECT NULL, g FROM generate_series(1, 50) g;

SELECT stp_start_job('rows_' || p,
       $$SELECT k, count(*) AS n, sum(v) AS s, min(v) AS lo, max(v) AS hi, avg(v) AS a,
                bool_or(b) AS any_b, sum(f) AS sf, count(*) FILTER (WHERE b) AS nb
         FROM ev GROUP BY k$$,
       'rows_' || p, partitions => p, batch_size => 700, strategy => 'rows') > 0 AS started
FROM generate_series(1, 3) p;
-- Without GROUP BY, and with HAVING: a state table and a view.
SELECT stp_start_job('rows_global',
       $$SELECT count(*) AS n, sum(v) AS s, min(f) AS lo, max(v) AS hi, avg(f) AS a FROM ev$$,
       'rows_global', partitions => 3, batch_size => 300) > 0 AS started;
SELECT stp_start_job('rows_having',
       $$SELECT k, sum(v) / count(*) AS m FROM ev GROUP BY k HAVING count(*) > 100$$,
       'rows_having', partitions => 2, batch_size => 1000, strategy => 'rows') > 0 AS started;
-- 'auto' takes row mode for few groups per batch, and groups mode for many.
SELECT stp_start_job('auto_few', $$SELECT k, count(*) AS n FROM ev GROUP BY k$$,
       'auto_few', partitions => 2, batch_size => 1000) > 0 AS started;
SELECT stp_start_job('auto_many', $$SELECT v, count(*) AS n FROM ev GROUP BY v$$,
       'auto_many', partitions => 2, batch_size => 1000) > 0 AS started;
SELECT stp_start_job('auto_one', $$SELECT v, count(*) AS n FROM ev GROUP BY v$$,
       'auto_one', partitions => 1, batch_size => 1000) > 0 AS started;
SELECT job_name, partitions, strategy FROM stp.jobs ORDER BY job_name;

SELECT stp_wait(job_name, '60 s') FROM stp.jobs ORDER BY job_name;
SELECT p, stp_test_diff(('rows_' || p)::regclass, 'k, n, s, lo, hi, a, any_b, sf, nb',
       $$SELECT k, count(*), sum(v), min(v), max(v), avg(v), bool_or(b), sum(f),
                count(*) FILTER (WHERE b) FROM ev GROUP BY k$$) AS differences
FROM generate_series(1, 3) p;
SELECT * FROM rows_3 ORDER BY k;
SELECT n, s, lo, hi, round(a::numeric, 12) AS a FROM rows_global;
SELECT count(*), sum(v), min(f), max(v), round(avg(f)::numeric, 12) FROM ev;
SELECT * FROM rows_having ORDER BY k;
SELECT stp_test_diff('rows_having', 'k, m',
       'SELECT k, sum(v) / count(*) FROM ev GROUP BY k HAVING count(*) > 100') AS differences;
SELECT stp_test_diff('auto_few', 'k, n', 'SELECT k, count(*) FROM ev GROUP BY k') AS differences;
SELECT stp_test_diff('auto_many', 'v, n', 'SELECT v, count(*) FROM ev GROUP BY v') AS differences;

-- Each partition read its own ranges and no other: ranges of 234 ids,
-- range r = (id - 1) / 234 belongs to partition r % 3.
SELECT s.partition, s.rows_processed,
       s.rows_processed = (SELECT count(*) FROM ev WHERE ((id - 1) / 234) % 3 = s.partition) AS own_ranges_only,
       s.processed_upto = (SELECT max(id) FROM ev) AS caught_up
FROM stp.job_status s WHERE s.job_name = 'rows_3' ORDER BY s.partition;

-- New rows while the jobs run: ranges that start in the middle of the
-- table's last range, and ranges of partitions that were idle.
INSERT INTO ev (k, v, f, b)
SELECT g % 4, g % 13, (g % 3) / 2.0, g % 2 = 0 FROM generate_series(1, 2500) g;
SELECT stp_wait(job_name, '60 s') FROM stp.jobs ORDER BY job_name;
SELECT p, stp_test_diff(('rows_' || p)::regclass, 'k, n, s, lo, hi, a, any_b, sf, nb',
       $$SELECT k, count(*), sum(v), min(v), max(v), avg(v), bool_or(b), sum(f),
                count(*) FILTER (WHERE b) FROM ev GROUP BY k$$) AS differences
FROM generate_series(1, 3) p;
SELECT n, s, lo, hi, round(a::numeric, 12) AS a FROM rows_global;
SELECT count(*), sum(v), min(f), max(v), round(avg(f)::numeric, 12) FROM ev;
SELECT * FROM rows_having ORDER BY k;
SELECT stp_test_diff('rows_having', 'k, m',
       'SELECT k, sum(v) / count(*) FROM ev GROUP BY k HAVING count(*) > 100') AS differences;
SELECT sum(rows_processed) AS rows_read, count(*) FILTER (WHERE rows_processed > 0) AS partitions_with_rows
FROM stp.job_status WHERE job_name = 'rows_3';

-- The partition count of a job in row mode cannot change.
SELECT stp_alter_job('rows_3', partitions => 2);

SELECT stp_drop_job(job_name, true) FROM stp.jobs ORDER BY job_name;

-- Row mode refuses DISTINCT aggregates, and sources that give each
-- worker partitions of its own.
SELECT stp_start_job('bad', 'SELECT k, sum(DISTINCT v) AS n FROM ev GROUP BY k', 'bad',
                     partitions => 2, strategy => 'rows');
CREATE TABLE ev_h (id bigserial, k int, v int) PARTITION BY HASH (k);
CREATE TABLE ev_h0 PARTITION OF ev_h FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE ev_h1 PARTITION OF ev_h FOR VALUES WITH (MODULUS 2, REMAINDER 1);
SELECT stp_start_job('bad', 'SELECT k, count(*) AS n FROM ev_h GROUP BY k', 'bad',
                     partitions => 2, strategy => 'rows');
-- 'auto' reads such a source leaf by leaf.
SELECT stp_start_job('auto_h', 'SELECT k, count(*) AS n FROM ev_h GROUP BY k', 'auto_h',
                     partitions => 2) > 0 AS started;
SELECT strategy, leaves IS NOT NULL AS reads_leaves FROM stp.jobs WHERE job_name = 'auto_h';
SELECT stp_drop_job('auto_h', true);
DROP TABLE ev, ev_h;

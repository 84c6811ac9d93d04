-- NULL keys, NULL values, and keys that GROUP BY treats as equal although
-- their bytes differ.  Every batch holds two rows, so every group is merged
-- into an existing result row many times.
CREATE TABLE readings (id bigserial, k int, v int, f float8);
INSERT INTO readings (k, v, f) VALUES
    (NULL, 1, 1.5), (NULL, NULL, NULL), (1, NULL, NULL), (1, NULL, NULL),
    (2, 5, 2.5), (NULL, 3, NULL), (2, NULL, 0.5), (3, NULL, NULL),
    (1, NULL, NULL), (NULL, NULL, 4.0), (3, NULL, NULL), (2, 0, 0);

SELECT stp_start_job('nullish', $$
    SELECT k, count(*) AS n, count(v) AS nv, sum(v) AS sv, min(v) AS mnv, max(v) AS mxv,
           avg(v) AS av, sum(f) AS sf, avg(f) AS af
    FROM readings GROUP BY k$$, 'nullish', partitions => 3, batch_size => 2) > 0 AS started;
SELECT stp_wait('nullish', '30 s');
-- groups 1 and 3 never saw a non-NULL value: sum, min, max and avg are NULL, count is 0
SELECT k, n, nv, sv, mnv, mxv, av, sf, af FROM nullish ORDER BY k NULLS FIRST;
SELECT stp_test_diff('nullish', 'k, n, nv, sv, mnv, mxv, av, sf, af',
    'SELECT k, count(*), count(v), sum(v), min(v), max(v), avg(v), sum(f), avg(f) FROM readings GROUP BY k');

-- Equal keys with different bytes: one group each, on one partition.
CREATE TABLE odd_keys (id bigserial, f float8, n numeric, c text COLLATE "C");
INSERT INTO odd_keys (f, n, c) VALUES
    (0.0, 1.0, 'a'), ('-0.0', 1.00, 'a'), ('NaN', 1.000, 'b'), ('NaN', 2, 'b'),
    (0.0, 2.0, NULL), ('-0.0', NULL, NULL), (NULL, 2.00, 'a'), ('Infinity', NULL, 'a');
SELECT stp_start_job('by_float', $$SELECT f, count(*) AS n FROM odd_keys GROUP BY f$$,
                     'by_float', partitions => 3, batch_size => 1) > 0 AS started;
SELECT stp_start_job('by_numeric', $$SELECT n, count(*) AS cnt FROM odd_keys GROUP BY n$$,
                     'by_numeric', partitions => 3, batch_size => 1) > 0 AS started;
SELECT stp_start_job('by_pair', $$SELECT n, c, count(*) AS cnt FROM odd_keys GROUP BY n, c$$,
                     'by_pair', partitions => 2, batch_size => 3) > 0 AS started;
SELECT stp_wait('by_float', '30 s'), stp_wait('by_numeric', '30 s'), stp_wait('by_pair', '30 s');
SELECT f, n FROM by_float ORDER BY f NULLS FIRST;
SELECT n = 1 AS is_one, cnt FROM by_numeric ORDER BY n NULLS FIRST;
SELECT stp_test_diff('by_float', 'f, n', 'SELECT f, count(*) FROM odd_keys GROUP BY f');
SELECT stp_test_diff('by_numeric', 'n, cnt', 'SELECT n, count(*) FROM odd_keys GROUP BY n');
SELECT stp_test_diff('by_pair', 'n, c, cnt', 'SELECT n, c, count(*) FROM odd_keys GROUP BY n, c');

SELECT stp_drop_job('nullish', true);
SELECT stp_drop_job('by_float', true);
SELECT stp_drop_job('by_numeric', true);
SELECT stp_drop_job('by_pair', true);
DROP TABLE readings, odd_keys;

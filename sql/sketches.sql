-- Sketches of the optional extensions hll and tdigest (Debian's
-- postgresql-15-hll and postgresql-15-tdigest), kept as their own types and
-- merged with their own union functions.  test/run installs them, and
-- test/cassert-build copies Debian's into the assert-enabled build, where
-- they load too.  Where they are not installed the file stops here, with
-- the output in sketches_1.out.
SELECT count(*) = 2 AS sketches FROM pg_available_extensions
WHERE name IN ('hll', 'tdigest') \gset
\if :sketches
\else
\echo hll or tdigest is not installed: sketches are not tested
\quit
\endif
CREATE EXTENSION hll;
CREATE EXTENSION tdigest;

CREATE TABLE sk (
    id bigint GENERATED ALWAYS AS IDENTITY,
    k int, u int, t text, lat float8, ts timestamptz, hh hll
);
CREATE FUNCTION sk_insert(n int, seed int) RETURNS void LANGUAGE sql AS $$
    INSERT INTO sk (k, u, t, lat, ts, hh)
    SELECT g % 4,
           CASE WHEN g % 31 = 0 THEN NULL ELSE (g::bigint * 7919) % 3000 END,
           'user' || (g::bigint * 104729) % 500,
           CASE WHEN g % 37 = 0 THEN NULL ELSE ((g * 13) % 1000) / 10.0 END,
           timestamptz '2024-01-01 00:00:00+00' + (g * 7 % 300) * interval '1 s',
           hll_add(hll_empty(), hll_hash_integer(g % 700))
    FROM generate_series(seed, seed + n - 1) g
$$;
SELECT sk_insert(6000, 1);

-- hll: a plain result table of hll columns, with FILTER and parameters,
-- and hll_union_agg over an hll column of the source.
SELECT stp_start_job('sk_hll' || p, $$
    SELECT k, hll_add_agg(hll_hash_integer(u)) AS h,
           hll_add_agg(hll_hash_text(t), 12, 5) FILTER (WHERE lat > 50) AS h_t,
           hll_union_agg(hh) AS h_u, count(*) AS n
    FROM sk GROUP BY k$$, 'sk_hll' || p, partitions => p, batch_size => 97) > 0 AS started
FROM (VALUES (1), (3)) v(p);
-- hll_cardinality over the sketches: a view; no GROUP BY; a hopping window.
SELECT stp_start_job('sk_card', $$
    SELECT hll_cardinality(hll_add_agg(hll_hash_integer(u))) AS users,
           round(hll_cardinality(hll_union_agg(hh))) AS hh_users, count(*) AS n
    FROM sk$$, 'sk_card', batch_size => 211) > 0 AS started;
SELECT stp_start_job('sk_hop', $$
    SELECT w AS win, hll_cardinality(hll_add_agg(hll_hash_integer(u))) AS users,
           hll_add_agg(hll_hash_text(t)) AS h_t
    FROM sk, stp.hop(ts, '1 minute', '20 seconds') AS w GROUP BY w$$, 'sk_hop',
                     batch_size => 301) > 0 AS started;
-- tdigest: the digest per group.
SELECT stp_start_job('sk_td' || p, $$
    SELECT k, tdigest(lat, 100) AS d, count(lat) AS n
    FROM sk GROUP BY k$$, 'sk_td' || p, partitions => p, batch_size => 89) > 0 AS started
FROM (VALUES (1), (3)) v(p);

SELECT stp_wait('sk_hll1', '60 s'), stp_wait('sk_hll3', '60 s'), stp_wait('sk_card', '60 s'),
       stp_wait('sk_hop', '60 s'), stp_wait('sk_td1', '60 s'), stp_wait('sk_td3', '60 s');

-- The union of the batches' hlls is the hll of all rows, exactly: the same
-- value (hll's equality), so the same cardinality.
CREATE FUNCTION sk_check() RETURNS TABLE (job text, groups bigint, mismatches bigint)
LANGUAGE sql AS $$
    SELECT 'sk_hll' || p, (SELECT count(*) FROM sk_hll1),
           stp_test_diff(('sk_hll' || p)::regclass, 'k, h::text, h_t::text, h_u::text, n',
               $q$SELECT k, hll_add_agg(hll_hash_integer(u))::text,
                         (hll_add_agg(hll_hash_text(t), 12, 5) FILTER (WHERE lat > 50))::text,
                         hll_union_agg(hh)::text, count(*) FROM sk GROUP BY k$q$)
    FROM (VALUES (1), (3)) v(p)
    UNION ALL
    SELECT 'sk_card', 1, stp_test_diff('sk_card', '*',
        'SELECT hll_cardinality(hll_add_agg(hll_hash_integer(u))), '
        'round(hll_cardinality(hll_union_agg(hh))), count(*) FROM sk')
    UNION ALL
    SELECT 'sk_hop', (SELECT count(*) FROM sk_hop), stp_test_diff('sk_hop', 'win, users, h_t::text',
        $q$SELECT w, hll_cardinality(hll_add_agg(hll_hash_integer(u))), hll_add_agg(hll_hash_text(t))::text
           FROM sk, stp.hop(ts, '1 minute', '20 seconds') AS w GROUP BY w$q$)
$$;
SELECT * FROM sk_check();
SELECT * FROM stp_test_types('sk_hll1');
SELECT * FROM stp_test_types('sk_card_state');
SELECT users, hh_users, n FROM sk_card;

-- A t-digest merged from batches is not the digest of all rows, but its
-- counts are exact and its percentiles close: each of p = 0.01, 0.5, 0.9
-- and 0.99 lies between the exact percentiles at p - 0.01 and p + 0.01.
SELECT * FROM stp_test_types('sk_td1');
CREATE FUNCTION sk_td_check(result regclass) RETURNS TABLE (groups bigint, counts_equal bigint, within bigint)
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY EXECUTE format($q$
        SELECT count(*), count(*) FILTER (WHERE tdigest_count(r.d) = e.n AND r.n = e.n),
               count(*) FILTER (WHERE (SELECT bool_and(x.v BETWEEN lo AND hi)
                                       FROM unnest(ARRAY[0.01, 0.5, 0.9, 0.99]) p,
                                            LATERAL (SELECT tdigest_percentile(dd, p) AS v
                                                     FROM (VALUES (r.d)) w(dd)) x,
                                            LATERAL (SELECT percentile_cont(greatest(p - 0.01, 0)) WITHIN GROUP (ORDER BY lat) AS lo,
                                                            percentile_cont(least(p + 0.01, 1)) WITHIN GROUP (ORDER BY lat) AS hi
                                                     FROM sk WHERE sk.k = r.k) b))
        FROM %s r JOIN (SELECT k, count(lat) AS n FROM sk GROUP BY k) e USING (k)$q$, result);
END $$;
SELECT * FROM sk_td_check('sk_td1');
SELECT * FROM sk_td_check('sk_td3');

-- More rows; the sketches merge them in.
SELECT sk_insert(3000, 20000);
SELECT stp_wait('sk_hll1', '60 s'), stp_wait('sk_hll3', '60 s'), stp_wait('sk_card', '60 s'),
       stp_wait('sk_hop', '60 s'), stp_wait('sk_td1', '60 s'), stp_wait('sk_td3', '60 s');
SELECT * FROM sk_check();
SELECT * FROM sk_td_check('sk_td1');
SELECT * FROM sk_td_check('sk_td3');

-- tdigest's percentile aggregates compute a number that batches cannot
-- merge: refused, with the form that keeps the digest.
SELECT stp_start_job('bad', 'SELECT k, tdigest_percentile(lat, 100, 0.99) AS p99 FROM sk GROUP BY k', 'bad');
SELECT stp_drop_job(job_name, true) FROM stp.jobs WHERE job_name LIKE 'sk%' ORDER BY job_name;
DROP TABLE sk;
DROP FUNCTION sk_insert(int, int);
DROP EXTENSION tdigest;
DROP EXTENSION hll;

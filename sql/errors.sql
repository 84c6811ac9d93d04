-- Every kind of bad input gets a specific error, and none of them changes
-- the catalog or creates a table.
\set VERBOSITY default
-- stp_test_error runs a statement and shows the error it raises: its
-- SQLSTATE, message and hint.
CREATE FUNCTION stp_test_error(stmt text, OUT code text, OUT message text, OUT hint text)
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE stmt;
    code := 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, message = MESSAGE_TEXT,
                            hint = PG_EXCEPTION_HINT;
END $$;
\pset null '(none)'
CREATE TABLE src (id bigserial, k int, v int, t text, iv interval);
CREATE TABLE src2 (id bigserial, k int);
INSERT INTO src (k, v, t) VALUES (1, 1, 'a');
SELECT count(*) AS tables_before FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace \gset

-- NULL options
SELECT * FROM stp_test_error($q$SELECT stp_start_job(NULL, 'SELECT k, count(*) AS n FROM src GROUP BY k', 'r')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', NULL, 'r')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM src GROUP BY k', NULL)$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM src GROUP BY k', 'r', partitions => NULL)$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM src GROUP BY k', 'r', start_from => NULL)$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM src GROUP BY k', 'r', batch_size => NULL)$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM src GROUP BY k', 'r', poll_interval => NULL)$q$);

-- Out-of-range options
SELECT * FROM stp_test_error($q$SELECT stp_start_job('', 'SELECT k, count(*) AS n FROM src GROUP BY k', 'r')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job(repeat('x', 64), 'SELECT k, count(*) AS n FROM src GROUP BY k', 'r')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM src GROUP BY k', 'r', partitions => 0)$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM src GROUP BY k', 'r', partitions => -2)$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM src GROUP BY k', 'r', partitions => 65)$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM src GROUP BY k', 'r', batch_size => 0)$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM src GROUP BY k', 'r', poll_interval => '0')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM src GROUP BY k', 'r', poll_interval => '1 month')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM src GROUP BY k', 'r', start_from => 'yesterday')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM src GROUP BY k', 'r', order_column => '')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM src GROUP BY k', 'r', strategy => NULL)$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM src GROUP BY k', 'r', strategy => 'hash')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(DISTINCT v) AS n FROM src GROUP BY k', 'r', partitions => 2, strategy => 'rows')$q$);

-- Queries that are not one SELECT
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELEC k FROM src', 'r')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'INSERT INTO src (k) VALUES (1)', 'r')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT 1; SELECT 2', 'r')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n INTO x FROM src GROUP BY k', 'r')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM src GROUP BY k UNION SELECT 1, 2', 'r')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'VALUES (1)', 'r')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'WITH s AS (SELECT * FROM src) SELECT k, count(*) AS n FROM s GROUP BY k', 'r')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k FROM src GROUP BY k FOR UPDATE', 'r')$q$);

-- Unsupported clauses
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM src GROUP BY k LIMIT 5', 'r')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT DISTINCT k, count(*) AS n FROM src GROUP BY k', 'r')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT src.k, count(*) AS n FROM src JOIN src2 USING (id) GROUP BY src.k', 'r')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n, rank() OVER () AS r FROM src GROUP BY k', 'r')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM src WHERE k IN (SELECT k FROM src2) GROUP BY k', 'r')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM (SELECT * FROM src) s GROUP BY k', 'r')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM generate_series(1, 3) k GROUP BY k', 'r')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, generate_series(1, 2) AS g FROM src GROUP BY k', 'r')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM src WHERE random() > 0.5 GROUP BY k', 'r')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM src GROUP BY GROUPING SETS ((k), ())', 'r')$q$);

-- Unsupported aggregates and output columns
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, string_agg(t, '','') AS s FROM src GROUP BY k', 'r')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, max(DISTINCT v) AS n FROM src GROUP BY k', 'r')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, array_agg(iv) AS a FROM src GROUP BY k', 'r')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, sum(t) AS s FROM src GROUP BY k', 'r')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT count(*) AS n FROM src', 'r', partitions => 2, strategy => 'groups')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k FROM src', 'r')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM src GROUP BY k OFFSET 1', 'r')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) + 0 FROM src GROUP BY k', 'r')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, 1 + 1, count(*) AS n FROM src GROUP BY k', 'r')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS _stp_n FROM src GROUP BY k', 'r')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS k FROM src GROUP BY k', 'r')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, avg(v) AS ' || repeat('a', 53) || ' FROM src GROUP BY k', 'r')$q$);

-- Sources that are not an append-only table with an order column
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM no_such_table GROUP BY k', 'r')$q$);
CREATE VIEW src_view AS SELECT * FROM src;
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM src_view GROUP BY k', 'r')$q$);
CREATE MATERIALIZED VIEW src_mv AS SELECT * FROM src;
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM src_mv GROUP BY k', 'r')$q$);
CREATE TEMP TABLE src_temp (id bigserial, k int);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM src_temp GROUP BY k', 'r')$q$);
CREATE TABLE src_rls (id bigserial, k int);
ALTER TABLE src_rls ENABLE ROW LEVEL SECURITY;
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM src_rls GROUP BY k', 'r')$q$);
CREATE TABLE src_part (id bigserial, k int) PARTITION BY HASH (k);
CREATE TABLE src_part_0 PARTITION OF src_part FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE src_part_1 PARTITION OF src_part FOR VALUES WITH (MODULUS 2, REMAINDER 1);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM src_part GROUP BY k', 'r', partitions => 3)$q$);
CREATE TABLE src_noid (id bigint, k int);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM src_noid GROUP BY k', 'r')$q$);
CREATE TABLE src_twoseq (a bigserial, b bigserial, k int);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM src_twoseq GROUP BY k', 'r')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM src GROUP BY k', 'r', order_column => 'nope')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM src GROUP BY k', 'r', order_column => 'k')$q$);
CREATE TABLE src_cached (id bigint GENERATED ALWAYS AS IDENTITY (CACHE 20), k int);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM src_cached GROUP BY k', 'r')$q$);
CREATE TABLE src_cycle (id bigint GENERATED ALWAYS AS IDENTITY (CYCLE), k int);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM src_cycle GROUP BY k', 'r')$q$);
CREATE TABLE src_down (id bigint GENERATED ALWAYS AS IDENTITY (INCREMENT -1), k int);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM src_down GROUP BY k', 'r')$q$);

-- Result tables that do not fit
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM src GROUP BY k', 'src')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM src GROUP BY k', 'no_schema.r')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM src GROUP BY k', 'two words')$q$);
CREATE TABLE r_type (k int, n int);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM src GROUP BY k', 'r_type')$q$);
CREATE TABLE r_cols (k int);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM src GROUP BY k', 'r_cols')$q$);
CREATE TABLE r_noindex (k int, n bigint);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM src GROUP BY k', 'r_noindex')$q$);
CREATE TABLE r_full (k int, n bigint);
CREATE UNIQUE INDEX ON r_full (k) NULLS NOT DISTINCT;
INSERT INTO r_full VALUES (1, 1);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM src GROUP BY k', 'r_full')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('j', 'SELECT k, count(*) AS n FROM src GROUP BY k', 'src_view')$q$);

-- Duplicate job name
SELECT stp_start_job('dup', 'SELECT k, count(*) AS n FROM src GROUP BY k', 'r_dup') > 0 AS started;
SELECT * FROM stp_test_error($q$SELECT stp_start_job('dup', 'SELECT k, count(*) AS n FROM src GROUP BY k', 'r_dup2')$q$);
SELECT stp_drop_job('dup', true);

-- Managing jobs that do not exist, or with bad arguments
SELECT * FROM stp_test_error($q$SELECT stp_stop_job('nope')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_resume_job('nope')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_drop_job('nope')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_wait('nope')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_stop_job(NULL)$q$);
SELECT * FROM stp_test_error($q$SELECT stp_drop_job('nope', NULL)$q$);
SELECT * FROM stp_test_error($q$SELECT stp_wait('nope', NULL)$q$);
SELECT * FROM stp_test_error($q$SELECT stp_wait('nope', '-1 s')$q$);

-- Nothing was created by any of the refused calls.
SELECT count(*) AS jobs FROM stp.jobs;
SELECT count(*) AS partitions FROM stp.partitions;
SELECT count(*) - :tables_before AS new_tables FROM pg_class
WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace
  AND relname NOT IN ('src_rls', 'src_part_0', 'src_part_1', 'src_noid', 'src_twoseq', 'src_cached', 'src_cycle',
                      'src_down', 'r_type', 'r_cols', 'r_noindex', 'r_full');
SELECT to_regclass('r'), to_regclass('r_dup2');

-- Quotes, spaces and semicolons in names work.
CREATE TABLE "odd ""name"";" ("the id" bigserial, "we;ird" text, "v a l" int);
INSERT INTO "odd ""name"";" ("we;ird", "v a l") VALUES ('x', 1), ('y', 2), ('x', 3);
SELECT stp_start_job('odd ''job'' "name";',
    $$SELECT "we;ird", sum("v a l") AS "total ""v"";" FROM "odd ""name"";" GROUP BY "we;ird"$$,
    '"odd ""result"";"') > 0 AS started;
SELECT stp_wait('odd ''job'' "name";', '30 s');
SELECT * FROM "odd ""result"";" ORDER BY 1;
SELECT stp_drop_job('odd ''job'' "name";', true);

-- Another role cannot manage someone else's job.
CREATE ROLE regress_stp_owner LOGIN;
CREATE ROLE regress_stp_other LOGIN;
CREATE ROLE regress_stp_nologin NOLOGIN;
GRANT SELECT ON src TO regress_stp_owner;
GRANT CREATE ON SCHEMA public TO regress_stp_owner;
SET ROLE regress_stp_owner;
SELECT stp_start_job('owned', 'SELECT k, count(*) AS n FROM src GROUP BY k', 'r_owned') > 0 AS started;
SELECT stp_wait('owned', '30 s');
SELECT * FROM r_owned;
SET ROLE regress_stp_other;
SELECT * FROM stp_test_error($q$SELECT stp_stop_job('owned')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_resume_job('owned')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_drop_job('owned')$q$);
SELECT * FROM stp_test_error($q$SELECT stp_start_job('not_mine', 'SELECT k, count(*) AS n FROM src GROUP BY k', 'r_not_mine')$q$);
SET ROLE regress_stp_nologin;
SELECT * FROM stp_test_error($q$SELECT stp_start_job('no_login', 'SELECT k, count(*) AS n FROM src GROUP BY k', 'r_nologin')$q$);
RESET ROLE;
-- the job's workers run as its owner, not as a superuser
SELECT DISTINCT usename FROM pg_stat_activity WHERE backend_type = 'stp worker';
SELECT stp_drop_job('owned', true);
REVOKE CREATE ON SCHEMA public FROM regress_stp_owner;
DROP OWNED BY regress_stp_owner;
DROP ROLE regress_stp_owner, regress_stp_other, regress_stp_nologin;

DROP VIEW src_view;
DROP MATERIALIZED VIEW src_mv;
DROP TABLE src, src2, src_temp, src_rls, src_part, src_noid, src_twoseq, src_cached, src_cycle,
           src_down, r_type, r_cols, r_noindex, r_full, "odd ""name"";";

-- stp.sequence_last_value shows only the sequences of jobs.
CREATE SEQUENCE not_a_job_seq;
SELECT * FROM stp_test_error($q$SELECT stp.sequence_last_value('not_a_job_seq')$q$);
DROP SEQUENCE not_a_job_seq;
DROP FUNCTION stp_test_error(text);

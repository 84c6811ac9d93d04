-- Changes to a job's tables, sequence, settings and owner that used to
-- leave a healthy-looking job with a wrong result.  Each one now either
-- keeps the result exact or fails the job with the reason.
SET client_min_messages = warning;

-- The state of a job's partitions, right now.
CREATE FUNCTION stp_test_state(job text) RETURNS TABLE (state text, last_error text)
LANGUAGE sql AS $$
    SELECT DISTINCT state, last_error FROM stp.job_status WHERE job_name = job
$$;

------------------------------------------------------------------------
-- The order column's sequence changes after the job starts.
------------------------------------------------------------------------
CREATE TABLE h_cache (id bigserial, k int, v int);
CREATE TABLE h_default (id bigserial, k int, v int);
CREATE SEQUENCE h_other START 1000000;
CREATE TABLE h_restart (id bigint GENERATED ALWAYS AS IDENTITY, k int, v int);
CREATE TABLE h_setval (id bigserial, k int, v int);
INSERT INTO h_cache (k, v) SELECT g % 3, g FROM generate_series(1, 50) g;
INSERT INTO h_default (k, v) SELECT g % 3, g FROM generate_series(1, 50) g;
INSERT INTO h_restart (k, v) SELECT g % 3, g FROM generate_series(1, 50) g;
INSERT INTO h_setval (k, v) SELECT g % 3, g FROM generate_series(1, 50) g;
SELECT stp_start_job('j_cache', 'SELECT k, sum(v) AS s FROM h_cache GROUP BY k', 'r_cache') > 0 AS started;
SELECT stp_start_job('j_default', 'SELECT k, sum(v) AS s FROM h_default GROUP BY k', 'r_default') > 0 AS started;
SELECT stp_start_job('j_restart', 'SELECT k, sum(v) AS s FROM h_restart GROUP BY k', 'r_restart') > 0 AS started;
SELECT stp_start_job('j_setval', 'SELECT k, sum(v) AS s FROM h_setval GROUP BY k', 'r_setval') > 0 AS started;
SELECT stp_wait('j_cache'), stp_wait('j_default'), stp_wait('j_restart'), stp_wait('j_setval');

-- A cache hands out ids out of order: the ALTER itself fails the job.
ALTER SEQUENCE h_cache_id_seq CACHE 10;
SELECT * FROM stp_test_state('j_cache');
SELECT stp_wait('j_cache', '1 s');
-- The column's default now draws from another sequence.
ALTER TABLE h_default ALTER COLUMN id SET DEFAULT nextval('h_other');
SELECT * FROM stp_test_state('j_default');
-- RESTART below the ids already handed out, even ahead of the job.
ALTER TABLE h_restart ALTER COLUMN id RESTART WITH 10;
SELECT * FROM stp_test_state('j_restart');
-- setval backwards is seen by the worker before its next batch.
SELECT setval('h_setval_id_seq', 5);
SELECT * FROM stp_test_failed('j_setval');
-- Nothing was merged after any of these changes.
SELECT stp_test_diff('r_setval', 'k, s', 'SELECT k, sum(v) FROM h_setval GROUP BY k');
-- Fixing the cause and resuming goes on exactly.
ALTER SEQUENCE h_cache_id_seq CACHE 1;
INSERT INTO h_cache (k, v) VALUES (1, 1000);
SELECT stp_resume_job('j_cache');
SELECT stp_wait('j_cache', '30 s');
SELECT stp_test_diff('r_cache', 'k, s', 'SELECT k, sum(v) FROM h_cache GROUP BY k');
-- A resumed job whose sequence still went back fails again, with the reason.
SELECT stp_resume_job('j_setval');
SELECT * FROM stp_test_failed('j_setval');

-- An unlogged source loses its rows in a crash while the result keeps them.
CREATE UNLOGGED TABLE h_unlogged (id bigserial, k int, v int);
SELECT stp_start_job('j_unlogged', 'SELECT k, sum(v) AS s FROM h_unlogged GROUP BY k', 'r_unlogged');
ALTER TABLE h_cache SET UNLOGGED;
SELECT * FROM stp_test_state('j_cache');

------------------------------------------------------------------------
-- Pre-created result tables that would round or merge groups.
------------------------------------------------------------------------
CREATE TABLE h_num (id bigserial, k numeric, v numeric, t text);
INSERT INTO h_num (k, v, t) VALUES (1.25, 1.25, 'a'), (1.25, 2.5, 'A'), (2, 0.75, 'b');
CREATE TABLE r_num_typmod (k numeric(10,1), s numeric(10,0));
CREATE UNIQUE INDEX ON r_num_typmod (k, s) NULLS NOT DISTINCT;
DROP INDEX r_num_typmod_k_s_idx;
CREATE UNIQUE INDEX ON r_num_typmod (k) NULLS NOT DISTINCT;
SELECT stp_start_job('j_num', 'SELECT k, sum(v) AS s FROM h_num GROUP BY k', 'r_num_typmod');
CREATE COLLATION h_ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
CREATE TABLE r_coll (t text COLLATE h_ci, n bigint);
CREATE UNIQUE INDEX ON r_coll (t) NULLS NOT DISTINCT;
SELECT stp_start_job('j_coll', 'SELECT t, count(*) AS n FROM h_num GROUP BY t', 'r_coll');
-- The column's collation is right but the index's is not.
CREATE TABLE r_coll_index (t text, n bigint);
CREATE UNIQUE INDEX ON r_coll_index (t COLLATE h_ci) NULLS NOT DISTINCT;
SELECT stp_start_job('j_coll', 'SELECT t, count(*) AS n FROM h_num GROUP BY t', 'r_coll_index');
-- A deferrable unique index cannot serve ON CONFLICT.
CREATE TABLE r_deferrable (t text, n bigint,
    CONSTRAINT r_deferrable_t UNIQUE NULLS NOT DISTINCT (t) DEFERRABLE);
SELECT stp_start_job('j_coll', 'SELECT t, count(*) AS n FROM h_num GROUP BY t', 'r_deferrable');
-- A matching table is accepted, and the groups stay apart.
CREATE TABLE r_coll_ok (t text, n bigint);
CREATE UNIQUE INDEX ON r_coll_ok (t) NULLS NOT DISTINCT;
SELECT stp_start_job('j_coll', 'SELECT t, count(*) AS n FROM h_num GROUP BY t', 'r_coll_ok') > 0 AS started;
SELECT stp_wait('j_coll');
SELECT * FROM r_coll_ok ORDER BY t COLLATE "C";
-- Altering the result table's type modifier after the start fails the job.
SELECT stp_start_job('j_num', 'SELECT k, sum(v) AS s FROM h_num GROUP BY k', 'r_num') > 0 AS started;
SELECT stp_wait('j_num');
ALTER TABLE r_num ALTER COLUMN s TYPE numeric(10,0);
INSERT INTO h_num (k, v, t) VALUES (1.25, 0.25, 'c');
SELECT * FROM stp_test_failed('j_num');
SELECT * FROM r_num ORDER BY k;

------------------------------------------------------------------------
-- Settings that change what the stored query means.
------------------------------------------------------------------------
CREATE TABLE h_str (id bigserial, s text);
INSERT INTO h_str (s) VALUES (E'a\\b'), ('a\b'), ('ab'), (E'a\bb');
SET standard_conforming_strings = off;
-- In this session 'a\\b' is a, one backslash, b.
SELECT stp_start_job('j_str', $$SELECT s, count(*) AS n FROM h_str WHERE s = 'a\\b' GROUP BY s$$, 'r_str') > 0 AS started;
RESET standard_conforming_strings;
SELECT stp_wait('j_str');
SELECT * FROM r_str;
-- A role setting reaches a new worker, and must not change the job.
SELECT stp_start_job('j_str2', $$SELECT s, count(*) AS n FROM h_str WHERE s = 'a\b' GROUP BY s$$, 'r_str2') > 0 AS started;
SELECT stp_wait('j_str2');
DO $$BEGIN EXECUTE format('ALTER ROLE %I SET standard_conforming_strings = off', current_user); END$$;
SELECT stp_stop_job('j_str2');
SELECT stp_resume_job('j_str2');
INSERT INTO h_str (s) VALUES ('a\b');
SELECT stp_wait('j_str2');
SELECT * FROM r_str2;
DO $$BEGIN EXECUTE format('ALTER ROLE %I RESET standard_conforming_strings', current_user); END$$;
-- The creator's DateStyle and lc settings are the job's, whatever the worker's.
SET DateStyle = 'SQL, DMY';
SET extra_float_digits = 0;
CREATE TABLE h_dates (id bigserial, d date, f float8);
INSERT INTO h_dates (d, f) VALUES ('2024-03-01', 0.1), ('2024-03-01', 0.2), ('2024-12-31', 1.0 / 3);
SELECT stp_start_job('j_dates', 'SELECT d::text AS day, f::text AS ft, count(*) AS n FROM h_dates GROUP BY 1, 2', 'r_dates') > 0 AS started;
SELECT stp_wait('j_dates');
SELECT stp_test_diff('r_dates', 'day, ft, n', 'SELECT d::text, f::text, count(*) FROM h_dates GROUP BY 1, 2');
SELECT day FROM r_dates ORDER BY 1;
RESET DateStyle;
RESET extra_float_digits;

------------------------------------------------------------------------
-- TRUNCATE that does not name the source.
------------------------------------------------------------------------
CREATE TABLE h_dim (d int PRIMARY KEY);
INSERT INTO h_dim VALUES (1), (2);
CREATE TABLE h_fact (id bigserial, d int REFERENCES h_dim, v int);
INSERT INTO h_fact (d, v) VALUES (1, 10), (2, 20);
CREATE TABLE h_parent (id bigint, k int, v int);
CREATE TABLE h_child (id bigserial, k int, v int);
ALTER TABLE h_child INHERIT h_parent;
INSERT INTO h_child (k, v) VALUES (1, 1), (2, 2);
SELECT stp_start_job('j_fact', 'SELECT d, sum(v) AS s FROM h_fact GROUP BY d', 'r_fact') > 0 AS started;
SELECT stp_start_job('j_child', 'SELECT k, sum(v) AS s FROM h_child GROUP BY k', 'r_child') > 0 AS started;
SELECT stp_wait('j_fact'), stp_wait('j_child');
TRUNCATE h_dim CASCADE;
SELECT * FROM stp_test_state('j_fact');
TRUNCATE h_parent;
SELECT * FROM stp_test_state('j_child');

------------------------------------------------------------------------
-- A dropped source: the status view keeps working for every job.
------------------------------------------------------------------------
CREATE TABLE h_gone (id bigserial, k int);
INSERT INTO h_gone (k) VALUES (1);
SELECT stp_start_job('j_gone', 'SELECT k, count(*) AS n FROM h_gone GROUP BY k', 'r_gone') > 0 AS started;
SELECT stp_wait('j_gone');
DROP TABLE h_gone;
SELECT job_name, state, last_error FROM stp.job_status
WHERE job_name IN ('j_gone', 'j_coll') ORDER BY 1;
SELECT stp_wait('j_gone', '1 s');

------------------------------------------------------------------------
-- A renamed source, and a new table under its old name.
------------------------------------------------------------------------
CREATE TABLE h_ren (id bigserial, k int, v int);
INSERT INTO h_ren (k, v) VALUES (1, 1), (2, 2);
SELECT stp_start_job('j_ren', 'SELECT k, sum(v) AS s FROM h_ren GROUP BY k', 'r_ren', partitions => 2) > 0 AS started;
SELECT stp_wait('j_ren');
ALTER TABLE h_ren RENAME TO h_ren_old;
ALTER TABLE r_ren RENAME TO r_ren_old;
CREATE TABLE h_ren (id bigserial, k int, v int);
CREATE TABLE r_ren (k int, s bigint);
INSERT INTO h_ren (k, v) VALUES (1, 100), (3, 300);
INSERT INTO h_ren_old (k, v) VALUES (1, 10), (4, 40);
SELECT stp_wait('j_ren', '30 s');
SELECT stp_test_diff('r_ren_old', 'k, s', 'SELECT k, sum(v) FROM h_ren_old GROUP BY k');
SELECT count(*) AS untouched FROM r_ren;

------------------------------------------------------------------------
-- stp_wait in a transaction that wrote to the source.
------------------------------------------------------------------------
BEGIN;
INSERT INTO h_ren_old (k, v) VALUES (5, 5);
SELECT stp_wait('j_ren', '10 s');
ROLLBACK;
BEGIN;
SELECT nextval(pg_get_serial_sequence('h_ren_old', 'id')) > 0 AS drew;
SELECT stp_wait('j_ren', '10 s');
ROLLBACK;

------------------------------------------------------------------------
-- The owner loses LOGIN, is reassigned, is dropped.
------------------------------------------------------------------------
CREATE ROLE regress_stp_owner LOGIN;
CREATE ROLE regress_stp_heir LOGIN;
GRANT CREATE ON SCHEMA public TO regress_stp_owner, regress_stp_heir;
CREATE TABLE h_own (id bigserial, k int, v int);
INSERT INTO h_own (k, v) VALUES (1, 1), (2, 2);
GRANT SELECT ON h_own TO regress_stp_owner, regress_stp_heir;
SET ROLE regress_stp_owner;
SELECT stp_start_job('j_own', 'SELECT k, sum(v) AS s FROM h_own GROUP BY k', 'r_own') > 0 AS started;
SELECT stp_start_job('j_own2', 'SELECT k, sum(v) AS s FROM h_own GROUP BY k', 'r_own2') > 0 AS started;
RESET ROLE;
SELECT stp_wait('j_own'), stp_wait('j_own2');
-- A worker that must connect again finds the role without LOGIN: the
-- partition fails with the reason instead of starting forever.
ALTER ROLE regress_stp_owner NOLOGIN;
SELECT pg_terminate_backend(pid) FROM stp.job_status WHERE job_name = 'j_own';
SELECT * FROM stp_test_failed('j_own');
SELECT stp_wait('j_own', '1 s');
SELECT stp_resume_job('j_own');
ALTER ROLE regress_stp_owner LOGIN;
SELECT stp_resume_job('j_own');
SELECT stp_wait('j_own', '30 s');
-- DROP ROLE is refused while the role owns a job.
DROP ROLE regress_stp_owner;
-- REASSIGN OWNED hands the jobs over; they go on, as the new owner.
REASSIGN OWNED BY regress_stp_owner TO regress_stp_heir;
SELECT job_name, owner FROM stp.jobs WHERE job_name LIKE 'j_own%' ORDER BY 1;
INSERT INTO h_own (k, v) VALUES (1, 100);
SELECT stp_wait('j_own', '30 s');
SELECT stp_test_diff('r_own', 'k, s', 'SELECT k, sum(v) FROM h_own GROUP BY k');
DO $$
BEGIN
    FOR i IN 1..600 LOOP
        EXIT WHEN EXISTS (SELECT 1 FROM pg_stat_activity a JOIN stp.job_status s ON s.pid = a.pid
                          WHERE s.job_name = 'j_own');
        PERFORM pg_sleep(0.05);
    END LOOP;
END $$;
SELECT DISTINCT a.usename FROM pg_stat_activity a JOIN stp.job_status s ON s.pid = a.pid
WHERE s.job_name = 'j_own';
-- DROP OWNED drops the role's jobs with its tables.
DROP OWNED BY regress_stp_heir;
SELECT job_name FROM stp.jobs WHERE job_name LIKE 'j_own%';
DROP OWNED BY regress_stp_owner;
DROP ROLE regress_stp_owner;
DROP ROLE regress_stp_heir;

------------------------------------------------------------------------
-- Clean up.
------------------------------------------------------------------------
SELECT count(stp_drop_job(job_name)) AS dropped FROM stp.jobs WHERE job_name LIKE 'j\_%';
DROP TABLE h_cache, h_default, h_restart, h_setval, h_unlogged, h_num, h_str, h_dates,
    h_fact, h_dim, h_parent, h_child, h_ren, h_ren_old, h_own;
DROP SEQUENCE h_other;
DROP TABLE r_cache, r_default, r_restart, r_setval, r_num_typmod, r_coll, r_coll_index,
    r_deferrable, r_coll_ok, r_num, r_str, r_str2, r_dates, r_fact, r_child, r_gone,
    r_ren, r_ren_old;
DROP COLLATION h_ci;
DROP FUNCTION stp_test_state(text);

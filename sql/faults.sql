-- Changes to a job's tables while it runs end in a failed state that
-- carries the reason; nothing is merged wrongly, and other jobs go on.
SET client_min_messages = warning;

CREATE TABLE f_alter (id bigserial, k int, v int);
CREATE TABLE f_trunc (id bigserial, k int, v int);
CREATE TABLE f_drop (id bigserial, k int, v int);
CREATE TABLE f_rls (id bigserial, k int, v int);
CREATE TABLE f_revoke (id bigserial, k int, v int);
CREATE TABLE f_ok (id bigserial, k int, v int);
INSERT INTO f_alter (k, v) SELECT g % 3, g FROM generate_series(1, 100) g;
INSERT INTO f_trunc (k, v) SELECT g % 3, g FROM generate_series(1, 100) g;
INSERT INTO f_drop (k, v) SELECT g % 3, g FROM generate_series(1, 100) g;
INSERT INTO f_rls (k, v) SELECT g % 3, g FROM generate_series(1, 100) g;
INSERT INTO f_revoke (k, v) SELECT g % 3, g FROM generate_series(1, 100) g;
INSERT INTO f_ok (k, v) SELECT g % 3, g FROM generate_series(1, 100) g;
CREATE ROLE regress_stp_revoked LOGIN;
GRANT SELECT ON f_revoke TO regress_stp_revoked;
GRANT CREATE ON SCHEMA public TO regress_stp_revoked;

SELECT stp_start_job('j_alter', 'SELECT k, sum(v) AS s FROM f_alter GROUP BY k', 'r_alter') > 0 AS started;
SELECT stp_start_job('j_trunc', 'SELECT k, sum(v) AS s FROM f_trunc GROUP BY k', 'r_trunc', partitions => 2) > 0 AS started;
SELECT stp_start_job('j_drop', 'SELECT k, sum(v) AS s FROM f_drop GROUP BY k', 'r_drop') > 0 AS started;
SELECT stp_start_job('j_rls', 'SELECT k, sum(v) AS s FROM f_rls GROUP BY k', 'r_rls') > 0 AS started;
SELECT stp_start_job('j_ok', 'SELECT k, sum(v) AS s FROM f_ok GROUP BY k', 'r_ok') > 0 AS started;
SET ROLE regress_stp_revoked;
SELECT stp_start_job('j_revoke', 'SELECT k, sum(v) AS s FROM f_revoke GROUP BY k', 'r_revoke') > 0 AS started;
RESET ROLE;
SELECT stp_wait('j_alter'), stp_wait('j_trunc'), stp_wait('j_drop'), stp_wait('j_rls'),
       stp_wait('j_revoke'), stp_wait('j_ok');

-- A column the job uses changes type: sum(bigint) is numeric, which the
-- result table's bigint column would silently round.
ALTER TABLE f_alter ALTER COLUMN v TYPE bigint;
INSERT INTO f_alter (k, v) VALUES (1, 1000);
SELECT * FROM stp_test_failed('j_alter');
-- The source is truncated: the job fails in the truncating transaction.
TRUNCATE f_trunc;
SELECT * FROM stp_test_failed('j_trunc');
-- The result table is dropped.
DROP TABLE r_drop;
INSERT INTO f_drop (k, v) VALUES (1, 1);
SELECT * FROM stp_test_failed('j_drop');
-- Row-level security is enabled on the source.
ALTER TABLE f_rls ENABLE ROW LEVEL SECURITY;
INSERT INTO f_rls (k, v) VALUES (1, 1);
SELECT * FROM stp_test_failed('j_rls');
-- The owner loses SELECT on the source.
REVOKE SELECT ON f_revoke FROM regress_stp_revoked;
INSERT INTO f_revoke (k, v) VALUES (1, 1);
SELECT * FROM stp_test_failed('j_revoke');

-- stp_wait reports the failure.
SELECT stp_wait('j_alter', '1 s');
SELECT job_name, partition, state FROM stp.job_status WHERE state = 'failed' ORDER BY 1, 2;
-- Nothing was merged after the change.
SELECT * FROM r_alter ORDER BY k;

-- The other job was not affected.
INSERT INTO f_ok (k, v) VALUES (1, 1);
SELECT stp_wait('j_ok', '30 s');
SELECT stp_test_diff('r_ok', 'k, s', 'SELECT k, sum(v) FROM f_ok GROUP BY k');

-- Once the cause is fixed, resume picks up where the job stopped.
ALTER TABLE f_alter ALTER COLUMN v TYPE int;
SELECT stp_resume_job('j_alter');
SELECT stp_wait('j_alter', '30 s');
SELECT stp_test_diff('r_alter', 'k, s', 'SELECT k, sum(v) FROM f_alter GROUP BY k');

SELECT stp_drop_job(job_name, true) FROM stp.jobs WHERE job_name <> 'j_drop';
SELECT stp_drop_job('j_drop');
DROP TABLE f_alter, f_trunc, f_drop, f_rls, f_revoke, f_ok;
REVOKE CREATE ON SCHEMA public FROM regress_stp_revoked;
DROP ROLE regress_stp_revoked;
